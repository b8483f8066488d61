//! An HTTP/1.1 + h2c echo backend with failure injection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::server::{serve_http, BoxError, ConnFn, Handler, Injected, RawConn, RespBody, ServerHandle, Stats};

/// Longest delay `x-backend-delay-ms` can ask for.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// How long a stalled request is held before the backend gives up on it
/// (tests time out long before this; shutdown ends it at once).
const STALL: Duration = Duration::from_secs(600);
/// Largest body `x-backend-body-size` can ask for.
const MAX_BODY_SIZE: usize = 1 << 30;
/// Requests remembered by [`HttpBackend::requests`].
const MAX_RECORDED: usize = 10_000;
/// What `x-backend-garbage: 1` writes instead of a response.
pub(crate) const GARBAGE: &[u8] = b"NOT-HTTP garbage\r\n\r\n";

/// How a backend treats every request, whatever its headers say.
/// Switch with [`HttpBackend::set_mode`] (or [`crate::GrpcBackend::set_mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve normally; per-request control headers apply.
    Normal,
    /// Answer every request with this status (HTTP) or gRPC status code
    /// (gRPC), after the usual delay.
    Status(u16),
    /// Drop every request without replying: HTTP/1 connections are closed,
    /// h2 streams are reset.
    Reset,
    /// Hold every request without replying until the client gives up or the
    /// backend shuts down.
    Stall,
}

impl Mode {
    fn encode(self) -> u32 {
        match self {
            Mode::Normal => 0,
            Mode::Reset => 1,
            Mode::Stall => 2,
            Mode::Status(code) => 0x1_0000 | u32::from(code),
        }
    }

    fn decode(v: u32) -> Mode {
        match v {
            0 => Mode::Normal,
            1 => Mode::Reset,
            2 => Mode::Stall,
            v => Mode::Status((v & 0xffff) as u16),
        }
    }
}

/// Lock-free holder of a [`Mode`].
#[derive(Default)]
pub(crate) struct ModeCell(AtomicU32);

impl ModeCell {
    pub fn get(&self) -> Mode {
        Mode::decode(self.0.load(Ordering::SeqCst))
    }
    pub fn set(&self, mode: Mode) {
        self.0.store(mode.encode(), Ordering::SeqCst);
    }
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `:authority` for h2, else the `Host` header.
    pub host: Option<String>,
    /// `"HTTP/1.1"`, `"HTTP/2.0"`, ...
    pub version: String,
    /// Header names are lowercase, in arrival order, duplicates kept.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    pub(crate) fn from_parts(
        method: &http::Method,
        uri: &http::Uri,
        version: Version,
        headers: &HeaderMap,
    ) -> RecordedRequest {
        let host = uri.authority().map(|a| a.to_string()).or_else(|| header_str(headers, "host"));
        RecordedRequest {
            method: method.to_string(),
            path: uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".to_string()),
            host,
            version: format!("{version:?}"),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        }
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    fn headers_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, value) in &self.headers {
            match map.get_mut(name) {
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(value);
                }
                _ => {
                    map.insert(name.clone(), serde_json::Value::String(value.clone()));
                }
            }
        }
        serde_json::Value::Object(map)
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_flag(headers: &HeaderMap, name: &str) -> bool {
    matches!(headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim), Some("1") | Some("true") | Some("yes"))
}

pub(crate) fn full_body(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

struct Inner {
    name: String,
    mode: ModeCell,
    stats: Arc<Stats>,
    requests: Mutex<VecDeque<RecordedRequest>>,
}

/// An HTTP/1.1 and h2c (prior knowledge) backend on one port.
///
/// Default reply: `200`, header `x-backend: NAME`, JSON body
/// `{"backend","method","path","host","version","headers","body_len"}`.
///
/// Request headers that change the reply (applied in this order):
/// * `x-backend-delay-ms: N`: wait N ms (at most 30 s) first. The request
///   body is always read fully before anything else.
/// * `x-backend-garbage: 1`: write `NOT-HTTP garbage\r\n\r\n` straight to the
///   socket and close it. Hyper owns the connection, so the backend keeps a
///   duplicate of the socket's descriptor for this (on h2 the garbage lands
///   between frames, which the client sees as a protocol error).
/// * `x-backend-reset: 1`: no reply; HTTP/1 closes the connection, h2 resets
///   the stream (`INTERNAL_ERROR`).
/// * `x-backend-status: N`: reply with status N.
/// * `x-backend-header: name=value` (repeatable): add that response header.
/// * `x-backend-body-size: N`: body of N bytes of `x` instead of the JSON.
/// * `x-backend-echo-body: 1`: body is the request body instead of the JSON.
///
/// [`HttpBackend::set_mode`] overrides all of these for every request.
pub struct HttpBackend {
    inner: Arc<Inner>,
    server: ServerHandle,
}

impl HttpBackend {
    /// Start a backend named `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> HttpBackend {
        let stats = Arc::new(Stats::default());
        let inner = Arc::new(Inner {
            name: name.to_string(),
            mode: ModeCell::default(),
            stats: stats.clone(),
            requests: Mutex::new(VecDeque::new()),
        });
        let handler_inner = inner.clone();
        let handler: Handler = Arc::new(move |req, raw| {
            let inner = handler_inner.clone();
            Box::pin(async move { inner.handle(req, raw).await })
        });
        let on_conn: ConnFn = Arc::new(move |stream, _peer| {
            let handler = handler.clone();
            Box::pin(serve_http(stream, handler))
        });
        let server = ServerHandle::start(stats, on_conn);
        HttpBackend { inner, server }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Requests received so far (including failed and stalled ones).
    pub fn hits(&self) -> u64 {
        self.server.hits()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }

    /// The requests received so far (the last 10 000).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().unwrap().iter().cloned().collect()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.inner.requests.lock().unwrap().back().cloned()
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode.get()
    }

    /// Change how every following request is treated; takes effect at once.
    pub fn set_mode(&self, mode: Mode) {
        self.inner.mode.set(mode);
    }

    /// Close the listener (new connects are refused) and all open
    /// connections.
    pub async fn shutdown(&mut self) {
        self.server.shutdown().await;
    }
}

impl Inner {
    async fn handle(&self, req: Request<Incoming>, raw: Arc<RawConn>) -> Result<Response<RespBody>, BoxError> {
        self.stats.hit();
        let record = RecordedRequest::from_parts(req.method(), req.uri(), req.version(), req.headers());
        {
            let mut log = self.requests.lock().unwrap();
            if log.len() >= MAX_RECORDED {
                log.pop_front();
            }
            log.push_back(record.clone());
        }
        let h2 = req.version() == Version::HTTP_2;
        let mode = self.mode.get();
        match mode {
            Mode::Reset => return Err(reset(&raw, h2)),
            Mode::Stall => {
                tokio::time::sleep(STALL).await;
                return Err(Box::new(Injected("stall")));
            }
            Mode::Normal | Mode::Status(_) => {}
        }

        let (parts, body) = req.into_parts();
        let headers = &parts.headers;
        let body = body.collect().await?.to_bytes();

        if let Some(ms) = header_u64(headers, "x-backend-delay-ms") {
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await;
        }
        if header_flag(headers, "x-backend-garbage") {
            raw.write_raw_and_close(GARBAGE);
            return Err(Box::new(Injected("garbage")));
        }
        if header_flag(headers, "x-backend-reset") {
            return Err(reset(&raw, h2));
        }

        let status = match mode {
            Mode::Status(code) => Some(u64::from(code)),
            _ => header_u64(headers, "x-backend-status"),
        };
        let status = match status {
            None => StatusCode::OK,
            Some(code) => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        let mut resp = Response::builder().status(status).header("x-backend", self.name.as_str());
        for value in headers.get_all("x-backend-header") {
            let Ok(value) = value.to_str() else { continue };
            if let Some((name, value)) = value.split_once('=') {
                resp = resp.header(name.trim(), value.trim());
            }
        }

        let reply = if header_flag(headers, "x-backend-echo-body") {
            resp.header("content-type", "application/octet-stream").body(full_body(body))
        } else if let Some(size) = header_u64(headers, "x-backend-body-size") {
            let size = usize::try_from(size).unwrap_or(MAX_BODY_SIZE).min(MAX_BODY_SIZE);
            resp.header("content-type", "application/octet-stream").body(full_body(vec![b'x'; size]))
        } else {
            let json = serde_json::json!({
                "backend": self.name,
                "method": record.method,
                "path": record.path,
                "host": record.host,
                "version": record.version,
                "headers": record.headers_json(),
                "body_len": body.len(),
            });
            resp.header("content-type", "application/json").body(full_body(json.to_string()))
        };
        // Only an invalid x-backend-header can make the builder fail.
        Ok(reply.unwrap_or_else(|e| {
            let mut r = Response::new(full_body(format!("bad control header: {e}\n")));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }))
    }
}

/// Fail the request with no reply: on HTTP/1 the connection is closed, on h2
/// hyper resets the stream.
fn reset(raw: &RawConn, h2: bool) -> BoxError {
    if !h2 {
        raw.close();
    }
    Box::new(Injected("reset"))
}
