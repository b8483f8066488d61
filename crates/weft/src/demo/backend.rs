//! The demo's applications: an HTTP backend that answers with its name as JSON (and fails a
//! chosen share of requests with 503, so retries have something to do), and a gRPC backend that
//! answers any unary call with its name. Both also serve the benchmarks and tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// `weft demo-backend` arguments.
#[derive(clap::Args)]
pub struct BackendArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long, default_value = "backend")]
    pub name: String,
    /// `http` (JSON echo) or `grpc` (any unary method; the reply is a message with the name).
    #[arg(long, default_value = "http", value_parser = ["http", "grpc"])]
    pub protocol: String,
    /// Percentage of requests answered with 503 (HTTP) or UNAVAILABLE (gRPC).
    #[arg(long, default_value_t = 0)]
    pub fail_percent: u8,
}

/// Serves until the process ends.
pub fn run(a: BackendArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let l = match tokio::net::TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("weft: demo backend {}: {e}", a.listen);
                return ExitCode::from(1);
            }
        };
        let app =
            Arc::new(App { name: a.name, grpc: a.protocol == "grpc", fail_percent: a.fail_percent, seq: 0.into() });
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let app = app.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    })
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct App {
    name: String,
    grpc: bool,
    fail_percent: u8,
    seq: AtomicU64,
}

impl App {
    /// Every `100 / fail_percent`-th request fails: an even spread the demo's numbers can show.
    fn fails(&self) -> bool {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.fail_percent > 0 && (n * self.fail_percent as u64) % 100 + self.fail_percent as u64 >= 100
    }

    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
        if self.grpc {
            return self.grpc(req).await;
        }
        let path = req.uri().path().to_string();
        let fail = self.fails();
        let body = format!("{{\"backend\":\"{}\",\"path\":\"{}\"}}\n", self.name, path.replace('"', "%22"));
        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
        if fail {
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        let h = resp.headers_mut();
        h.insert(
            "x-backend",
            http::HeaderValue::from_str(&self.name).unwrap_or(http::HeaderValue::from_static("backend")),
        );
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        resp
    }

    async fn grpc(&self, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
        // The request message is read and dropped; any method answers.
        let _ = req.into_body().collect().await;
        let mut trailers = http::HeaderMap::new();
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
        if self.fails() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            trailers
                .insert("grpc-message", http::HeaderValue::from_static("the%20demo%20backend%20fails%20this%20call"));
        } else {
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::data(grpc_frame(&reply_message(&self.name)))));
        }
        frames.push(Ok(Frame::trailers(trailers)));
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut resp = hyper::Response::new(BodyExt::boxed(body));
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        h.insert(
            "x-backend",
            http::HeaderValue::from_str(&self.name).unwrap_or(http::HeaderValue::from_static("backend")),
        );
        resp
    }
}

/// A protobuf message with one string field (number 1): the backend's name.
pub fn reply_message(name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0x0a);
    put_varint(&mut b, name.len() as u64);
    b.put_slice(name.as_bytes());
    b.freeze()
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

/// Reads the string field 1 of [`reply_message`]'s encoding.
#[cfg(test)]
fn read_reply(mut msg: &[u8]) -> Option<String> {
    use bytes::Buf;
    if msg.first() != Some(&0x0a) {
        return None;
    }
    msg.advance(1);
    let mut len = 0u64;
    for shift in (0..35).step_by(7) {
        let byte = *msg.first()?;
        msg.advance(1);
        len |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            break;
        }
    }
    let s = msg.get(..len as usize)?;
    String::from_utf8(s.to_vec()).ok()
}

/// gRPC's length-prefixed message framing (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// The first message of a gRPC response body.
#[cfg(test)]
fn grpc_unframe(body: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?) as usize;
    if body[0] != 0 {
        return None;
    }
    body.get(5..5 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_messages_round_trip() {
        for name in ["", "ratings-v1", &"x".repeat(300)] {
            let framed = grpc_frame(&reply_message(name));
            assert_eq!(read_reply(grpc_unframe(&framed).unwrap()).as_deref(), Some(name));
        }
        assert_eq!(grpc_unframe(&[0, 0, 0]), None);
        assert_eq!(read_reply(&[0x0a, 5, b'a']), None);
    }

    #[test]
    fn failures_are_spread_evenly() {
        for pct in [0u8, 5, 10, 50, 100] {
            let app = App { name: String::new(), grpc: false, fail_percent: pct, seq: 0.into() };
            let failed = (0..1000).filter(|_| app.fails()).count();
            assert_eq!(failed, pct as usize * 10, "{pct}%");
        }
    }
}
