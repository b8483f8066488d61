//! A gRPC backend (`weft.test.Echo`) and a matching client.
//!
//! There is no protoc on the build machines, so the messages are written by
//! hand with prost's derive, and the service is dispatched by path with
//! tonic's low-level `server::Grpc` / `client::Grpc`. The equivalent proto:
//!
//! ```proto
//! package weft.test;
//! message SayRequest { string message = 1; }
//! message SayReply   { string message = 1; string backend = 2; }
//! service Echo {
//!   rpc Say(SayRequest) returns (SayReply);
//!   rpc SayStream(SayRequest) returns (stream SayReply);
//! }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tonic::codegen::{tokio_stream, BoxFuture, Service};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::http_backend::{Mode, ModeCell, RecordedRequest};
use crate::server::{serve_http, BoxError, ConnFn, Handler, Injected, RespBody, ServerHandle, Stats};

/// Path of the unary method.
pub const GRPC_SAY_PATH: &str = "/weft.test.Echo/Say";
/// Path of the server-streaming method.
pub const GRPC_SAY_STREAM_PATH: &str = "/weft.test.Echo/SayStream";

const MAX_DELAY: Duration = Duration::from_secs(30);
const STALL: Duration = Duration::from_secs(600);
const MAX_STREAM_COUNT: u64 = 1000;
const MAX_RECORDED: usize = 10_000;

/// `weft.test.SayRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `weft.test.SayReply`
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub backend: String,
}

struct Inner {
    name: String,
    mode: ModeCell,
    stats: Arc<Stats>,
    requests: Mutex<VecDeque<RecordedRequest>>,
}

/// A tonic gRPC server (h2c) for `weft.test.Echo`.
///
/// * `Say` replies `{message: <the request's>, backend: NAME}`.
/// * `SayStream` replies `x-stream-count` messages (default 3, at most
///   1000), `"<message> #<i>"` for i = 0, 1, ...
///
/// Every reply carries the metadata `x-backend: NAME`. Request metadata:
/// * `x-delay-ms: N`: wait N ms (at most 30 s) before answering.
/// * `x-grpc-status: N`: fail with gRPC status code N instead.
///
/// [`GrpcBackend::set_mode`]: `Mode::Status(code)` fails every call with
/// that gRPC code, `Reset` resets every stream, `Stall` never answers.
/// Unknown methods get `UNIMPLEMENTED`.
pub struct GrpcBackend {
    inner: Arc<Inner>,
    server: ServerHandle,
}

impl GrpcBackend {
    /// Start a backend named `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> GrpcBackend {
        let stats = Arc::new(Stats::default());
        let inner = Arc::new(Inner {
            name: name.to_string(),
            mode: ModeCell::default(),
            stats: stats.clone(),
            requests: Mutex::new(VecDeque::new()),
        });
        let handler_inner = inner.clone();
        let handler: Handler = Arc::new(move |req, _raw| {
            let inner = handler_inner.clone();
            Box::pin(async move { inner.handle(req).await })
        });
        let on_conn: ConnFn = Arc::new(move |stream, _peer| {
            let handler = handler.clone();
            Box::pin(serve_http(stream, handler))
        });
        let server = ServerHandle::start(stats, on_conn);
        GrpcBackend { inner, server }
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

    /// Calls received so far (HTTP requests, including failed ones).
    pub fn hits(&self) -> u64 {
        self.server.hits()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }

    /// The requests received so far (the last 10 000), as HTTP requests.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().unwrap().iter().cloned().collect()
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode.get()
    }

    /// Change how every following call is treated; takes effect at once.
    pub fn set_mode(&self, mode: Mode) {
        self.inner.mode.set(mode);
    }

    /// Close the listener (new connects are refused) and all open
    /// connections.
    pub async fn shutdown(&mut self) {
        self.server.shutdown().await;
    }
}

fn metadata_u64(md: &MetadataMap, name: &str) -> Option<u64> {
    md.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Inner {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<RespBody>, BoxError> {
        self.stats.hit();
        {
            let record = RecordedRequest::from_parts(req.method(), req.uri(), req.version(), req.headers());
            let mut log = self.requests.lock().unwrap();
            if log.len() >= MAX_RECORDED {
                log.pop_front();
            }
            log.push_back(record);
        }
        match self.mode.get() {
            Mode::Reset => return Err(Box::new(Injected("reset"))),
            Mode::Stall => {
                tokio::time::sleep(STALL).await;
                return Err(Box::new(Injected("stall")));
            }
            Mode::Normal | Mode::Status(_) => {}
        }
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<SayReply, SayRequest>::default());
        let resp = match req.uri().path() {
            GRPC_SAY_PATH => grpc.unary(Say(self.clone()), req).await,
            GRPC_SAY_STREAM_PATH => grpc.server_streaming(SayStream(self.clone()), req).await,
            other => Status::unimplemented(format!("weft-test: no method {other}")).into_http(),
        };
        Ok(resp.map(|body| body.map_err(|s| Box::new(s) as BoxError).boxed_unsync()))
    }

    /// What every method does first: the delay, then injected failures.
    async fn prologue(&self, md: &MetadataMap) -> Result<(), Status> {
        if let Some(ms) = metadata_u64(md, "x-delay-ms") {
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await;
        }
        let code = match self.mode.get() {
            Mode::Status(code) => Some(u64::from(code)),
            _ => metadata_u64(md, "x-grpc-status"),
        };
        match code {
            Some(code) if code != 0 => Err(Status::new(
                Code::from(i32::try_from(code).unwrap_or(2)),
                format!("injected by backend {}", self.name),
            )),
            _ => Ok(()),
        }
    }

    fn reply_metadata(&self, md: &mut MetadataMap) {
        if let Ok(v) = MetadataValue::try_from(self.name.as_str()) {
            md.insert("x-backend", v);
        }
    }
}

struct Say(Arc<Inner>);

impl Service<tonic::Request<SayRequest>> for Say {
    type Response = tonic::Response<SayReply>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<SayRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            inner.prologue(req.metadata()).await?;
            let mut resp =
                tonic::Response::new(SayReply { message: req.into_inner().message, backend: inner.name.clone() });
            inner.reply_metadata(resp.metadata_mut());
            Ok(resp)
        })
    }
}

type ReplyStream = tokio_stream::Iter<std::vec::IntoIter<Result<SayReply, Status>>>;

struct SayStream(Arc<Inner>);

impl Service<tonic::Request<SayRequest>> for SayStream {
    type Response = tonic::Response<ReplyStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<SayRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            inner.prologue(req.metadata()).await?;
            let count = metadata_u64(req.metadata(), "x-stream-count").unwrap_or(3).min(MAX_STREAM_COUNT);
            let message = req.into_inner().message;
            let replies: Vec<_> = (0..count)
                .map(|i| Ok(SayReply { message: format!("{message} #{i}"), backend: inner.name.clone() }))
                .collect();
            let mut resp = tonic::Response::new(tokio_stream::iter(replies));
            inner.reply_metadata(resp.metadata_mut());
            Ok(resp)
        })
    }
}

/// A client for `weft.test.Echo` over one h2c channel, e.g. to a proxy's
/// listener. Transport failures come back as `UNAVAILABLE`.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

fn target_uri(target: &str) -> String {
    if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    }
}

impl GrpcClient {
    /// Connect to `target`: `127.0.0.1:PORT`, a `SocketAddr`, or an
    /// `http://` URI.
    pub async fn connect(target: impl ToString) -> Result<GrpcClient, Status> {
        Self::connect_with_authority(target, None).await
    }

    /// Like [`GrpcClient::connect`], but send `authority` as `:authority`
    /// (for host-based routing through a proxy).
    pub async fn connect_with_authority(target: impl ToString, authority: Option<&str>) -> Result<GrpcClient, Status> {
        let uri = target_uri(&target.to_string());
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Status::invalid_argument(format!("bad gRPC target {uri}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if let Some(authority) = authority {
            let origin: Uri = format!("http://{authority}")
                .parse()
                .map_err(|e| Status::invalid_argument(format!("bad authority {authority}: {e}")))?;
            endpoint = endpoint.origin(origin);
        }
        let channel =
            endpoint.connect().await.map_err(|e| Status::unavailable(format!("connect {uri}: {}", error_chain(&e))))?;
        Ok(GrpcClient { grpc: tonic::client::Grpc::new(channel) })
    }

    /// Call `Say`; the whole response, with its metadata.
    pub async fn say(&mut self, message: &str, metadata: &[(&str, &str)]) -> Result<tonic::Response<SayReply>, Status> {
        let req = request(message, metadata)?;
        self.ready().await?;
        self.grpc
            .unary(req, PathAndQuery::from_static(GRPC_SAY_PATH), ProstCodec::<SayRequest, SayReply>::default())
            .await
    }

    /// Call `SayStream` and collect every reply.
    pub async fn say_stream(&mut self, message: &str, metadata: &[(&str, &str)]) -> Result<Vec<SayReply>, Status> {
        let req = request(message, metadata)?;
        self.ready().await?;
        let mut stream = self
            .grpc
            .server_streaming(
                req,
                PathAndQuery::from_static(GRPC_SAY_STREAM_PATH),
                ProstCodec::<SayRequest, SayReply>::default(),
            )
            .await?
            .into_inner();
        let mut replies = Vec::new();
        while let Some(reply) = stream.message().await? {
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {}", error_chain(&e))))
    }
}

fn request(message: &str, metadata: &[(&str, &str)]) -> Result<tonic::Request<SayRequest>, Status> {
    let mut req = tonic::Request::new(SayRequest { message: message.to_string() });
    for (name, value) in metadata {
        let key = MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("bad metadata name {name:?}")))?;
        let value = MetadataValue::try_from(*value)
            .map_err(|_| Status::invalid_argument(format!("bad metadata value {value:?}")))?;
        req.metadata_mut().append(key, value);
    }
    Ok(req)
}

/// One `Say` call on a fresh connection to `target` (`127.0.0.1:PORT`, a
/// `SocketAddr` or an `http://` URI), with the given request metadata.
pub async fn grpc_say(target: impl ToString, message: &str, metadata: &[(&str, &str)]) -> Result<SayReply, Status> {
    let mut client = GrpcClient::connect(target).await?;
    Ok(client.say(message, metadata).await?.into_inner())
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
