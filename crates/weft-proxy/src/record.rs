//! The `logging` phase: what is known about a request, finished exactly once when its response
//! body ends (or is dropped), feeding metrics and the access log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::cluster::{ClusterRt, Host};
use crate::flags::Flags;
use crate::http::ActiveGuard;
use crate::Shared;

pub struct Record {
    pub start: Instant,
    pub method: Method,
    pub authority: String,
    pub path: String,
    pub protocol: &'static str,
    pub request_id: Option<http::HeaderValue>,
    pub peer: SocketAddr,
    pub reporter: &'static str,
    pub user_agent: String,
    pub route: String,
    pub cluster: Option<Arc<ClusterRt>>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub flags: Flags,
    pub grpc_status: Option<u16>,
    pub attempts: u32,
    pub close_connection: bool,
    pub bytes_sent: u64,
    /// The request body's byte count, read at the end.
    pub rx_bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
    active: Option<RqActive>,
}

/// Counts the request against its cluster's `max_requests` until the record is finished.
struct RqActive(Arc<ClusterRt>);

impl Drop for RqActive {
    fn drop(&mut self) {
        self.0.stats.rq_active.fetch_sub(1, Relaxed);
    }
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        start: Instant,
        method: Method,
        authority: &str,
        path: &str,
        protocol: &'static str,
        request_id: Option<http::HeaderValue>,
        peer: SocketAddr,
        reporter: &'static str,
    ) -> Record {
        Record {
            start,
            method,
            authority: authority.to_string(),
            path: path.to_string(),
            protocol,
            request_id,
            peer,
            reporter,
            user_agent: String::new(),
            route: String::new(),
            cluster: None,
            upstream: None,
            status: 0,
            flags: Flags::EMPTY,
            grpc_status: None,
            attempts: 0,
            close_connection: false,
            bytes_sent: 0,
            rx_bytes: None,
            active: None,
        }
    }

    pub fn track_active(&mut self, c: &Arc<ClusterRt>) {
        c.stats.rq_active.fetch_add(1, Relaxed);
        self.active = Some(RqActive(c.clone()));
    }

    pub fn bytes_received(&self) -> u64 {
        self.rx_bytes.as_ref().map(|c| c.load(Relaxed)).unwrap_or(0)
    }
}

/// The upstream side a response body holds on to until it ends.
pub struct Upstream {
    pub cluster: Arc<ClusterRt>,
    pub host: Arc<Host>,
    pub _active: ActiveGuard,
}

pub struct TrackedBody {
    inner: ProxyBody,
    rec: Option<Box<Record>>,
    shared: Arc<Shared>,
    up: Option<Upstream>,
    /// Stream idle timeout: how long the upstream may send nothing, and its timer, armed only
    /// when a poll actually waits (so bodies whose bytes are already there never touch the timer
    /// wheel) and kept for reuse.
    idle: Option<IdleTimer>,
    idle_fired: bool,
    errored: bool,
}

impl TrackedBody {
    /// Wraps a response so that its end (or abandonment) finishes the record.
    pub fn wrap(
        resp: Response<ProxyBody>,
        rec: Record,
        shared: Arc<Shared>,
        up: Option<Upstream>,
    ) -> Response<ProxyBody> {
        TrackedBody::wrap_idle(resp, rec, shared, up, None)
    }

    /// As `wrap`, ending the body with an error (flag SI) when no frame comes for `idle`.
    pub fn wrap_idle(
        resp: Response<ProxyBody>,
        mut rec: Record,
        shared: Arc<Shared>,
        up: Option<Upstream>,
        idle: Option<Duration>,
    ) -> Response<ProxyBody> {
        if rec.status == 0 {
            rec.status = resp.status().as_u16();
        }
        let (parts, inner) = resp.into_parts();
        let mut body = TrackedBody {
            inner,
            rec: Some(Box::new(rec)),
            shared,
            up,
            idle: idle.map(|limit| IdleTimer { limit, sleep: None, armed: false }),
            idle_fired: false,
            errored: false,
        };
        if body.inner.is_end_stream() {
            body.finish(true);
        }
        Response::from_parts(parts, crate::body::boxed(body))
    }

    fn finish(&mut self, complete: bool) {
        let Some(mut rec) = self.rec.take() else { return };
        self.up = None;
        if self.errored && self.idle_fired {
            rec.flags.insert(Flags::STREAM_IDLE_TIMEOUT);
        } else if self.errored {
            rec.flags.insert(Flags::UPSTREAM_CONNECTION_TERMINATION);
        } else if !complete {
            rec.flags.insert(Flags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
        self.shared.finish_request(&rec);
    }
}

struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    /// Starts the wait if it is not running, and polls it.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.limit;
            match self.sleep.as_mut() {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match self.sleep.as_mut() {
            Some(s) => s.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else { return Poll::Pending };
                if idle.poll_expired(cx).is_pending() {
                    return Poll::Pending;
                }
                this.idle_fired = true;
                this.errored = true;
                this.finish(false);
                Poll::Ready(Some(Err("stream idle timeout".into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.errored = true;
                this.finish(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.armed = false;
                }
                if let Some(rec) = this.rec.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        rec.bytes_sent += d.len() as u64;
                    } else if let Some(t) = frame.trailers_ref() {
                        if let Some(code) =
                            t.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
                        {
                            rec.grpc_status = Some(code);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}
