//! A small etcd v3 client: the KV service's `Range` and `Txn` and the `Watch` service, over gRPC
//! (tonic) with the messages declared by hand in [`pb`], so building it needs no protobuf compiler.
//!
//! Every unary call is bounded by [`ClientOptions::request_timeout`]; a watch is bounded while it
//! is being created and then kept honest by HTTP/2 keep-alive pings, so a dead server ends it with
//! an error instead of a silent stall. Connections are made lazily and made again after a server
//! comes back; with several endpoints the calls go to the ones that answer.

#![forbid(unsafe_code)]

pub mod pb;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";
const WATCH: &str = "/etcdserverpb.Watch/Watch";
/// Largest message sent or read.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Errors of the client. Each names the endpoints and the call.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("etcd at {endpoints}: {op}: unreachable: {reason}")]
    Unavailable { endpoints: Arc<str>, op: &'static str, reason: String },
    #[error("etcd at {endpoints}: {op}: no answer within {}ms", timeout.as_millis())]
    Timeout { endpoints: Arc<str>, op: &'static str, timeout: Duration },
    #[error("etcd at {endpoints}: {op}: refused ({code:?}): {message}")]
    Rejected { endpoints: Arc<str>, op: &'static str, code: tonic::Code, message: String },
    #[error("etcd at {endpoints}: {op}: {reason}")]
    Protocol { endpoints: Arc<str>, op: &'static str, reason: String },
}

impl EtcdError {
    /// The server could not be reached or did not answer in time: the request may be retried
    /// once it is back. Everything else is an answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unavailable { .. } | EtcdError::Timeout { .. })
    }

    /// The server refused a request for exceeding its limits on one transaction
    /// (`--max-txn-ops`) or one request (`--max-request-bytes`).
    pub fn is_too_large(&self) -> bool {
        match self {
            EtcdError::Rejected { message, .. } => {
                message.contains("too many operations in txn request") || message.contains("request is too large")
            }
            _ => false,
        }
    }
}

/// Timeouts of a [`Client`].
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Longest one unary call (or the creation of a watch) may take, connecting included.
    pub request_timeout: Duration,
    /// Longest a TCP connection attempt to one endpoint may take.
    pub connect_timeout: Duration,
    /// Interval of HTTP/2 pings on an open connection; an unanswered ping within the same time
    /// closes it (and ends its watches with an error).
    pub keep_alive: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            keep_alive: Duration::from_secs(5),
        }
    }
}

/// A client for one etcd cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
    endpoints: Arc<str>,
    opts: ClientOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `endpoints` (`host:port`, plain HTTP/2). Connects lazily: no call is made
    /// here, so this succeeds while the servers are down. Must be called within a tokio runtime,
    /// which then runs the connections.
    pub fn new(endpoints: &[String], opts: ClientOptions) -> Result<Client, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint { endpoint: String::new(), reason: "no endpoint given".into() });
        }
        let mut list = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let uri = format!("http://{ep}");
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| EtcdError::BadEndpoint { endpoint: ep.clone(), reason: e.to_string() })?
                .connect_timeout(opts.connect_timeout)
                .timeout(opts.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(opts.keep_alive)
                .keep_alive_timeout(opts.keep_alive)
                .keep_alive_while_idle(true);
            list.push(endpoint);
        }
        let channel =
            if list.len() == 1 { list.remove(0).connect_lazy() } else { Channel::balance_list(list.into_iter()) };
        // A page of a range read may hold large records; the store pages by key count and asks
        // for smaller pages when one is still over this.
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client { grpc, endpoints: endpoints.join(",").into(), opts })
    }

    /// The endpoints, comma-separated, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// `KV.Range`.
    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.unary("range", RANGE, req).await
    }

    /// `KV.Txn`.
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.unary("txn", TXN, req).await
    }

    /// Opens a watch and waits (bounded) for the server to confirm it.
    pub async fn watch(&self, create: pb::WatchCreateRequest) -> Result<Watch, EtcdError> {
        const OP: &str = "watch";
        let req = pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) };
        // The request stream stays open for as long as the watch: the server ends a watch stream
        // whose client has finished sending.
        let outbound = futures_util::stream::once(async move { req }).chain(futures_util::stream::pending());
        let mut grpc = self.grpc.clone();
        let open = async {
            grpc.ready().await.map_err(|e| self.unavailable(OP, &e))?;
            let codec = ProstCodec::<pb::WatchRequest, pb::WatchResponse>::default();
            let mut stream = grpc
                .streaming(tonic::Request::new(outbound), PathAndQuery::from_static(WATCH), codec)
                .await
                .map_err(|s| self.status(OP, s))?
                .into_inner();
            let first = stream.message().await.map_err(|s| self.status(OP, s))?;
            match first {
                Some(r) if r.created && !r.canceled => Ok(Watch { stream, client: self.clone(), first: Some(r) }),
                Some(r) => Err(self.protocol(OP, format!("watch not created: {}", r.cancel_reason))),
                None => Err(self.protocol(OP, "the server closed the watch stream at once".into())),
            }
        };
        tokio::time::timeout(self.opts.request_timeout, open).await.map_err(|_| self.timeout(OP))?
    }

    async fn unary<Req, Resp>(&self, op: &'static str, path: &'static str, req: Req) -> Result<Resp, EtcdError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready().await.map_err(|e| self.unavailable(op, &e))?;
            let codec = ProstCodec::<Req, Resp>::default();
            grpc.unary(tonic::Request::new(req), PathAndQuery::from_static(path), codec)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| self.status(op, s))
        };
        tokio::time::timeout(self.opts.request_timeout, call).await.map_err(|_| self.timeout(op))?
    }

    fn unavailable(&self, op: &'static str, e: &dyn std::error::Error) -> EtcdError {
        EtcdError::Unavailable { endpoints: self.endpoints.clone(), op, reason: error_chain(e) }
    }

    fn timeout(&self, op: &'static str) -> EtcdError {
        EtcdError::Timeout { endpoints: self.endpoints.clone(), op, timeout: self.opts.request_timeout }
    }

    fn protocol(&self, op: &'static str, reason: String) -> EtcdError {
        EtcdError::Protocol { endpoints: self.endpoints.clone(), op, reason }
    }

    fn status(&self, op: &'static str, s: tonic::Status) -> EtcdError {
        let endpoints = self.endpoints.clone();
        match s.code() {
            // Transport failures, a member without a leader, a request that timed out inside
            // the cluster: all mean "try again when it is back".
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                let mut reason = s.message().to_string();
                if let Some(source) = std::error::Error::source(&s) {
                    reason = format!("{reason}: {}", error_chain(source));
                }
                EtcdError::Unavailable { endpoints, op, reason }
            }
            // tonic reports a connection that broke mid-call as Unknown with a transport source.
            tonic::Code::Unknown if std::error::Error::source(&s).is_some() => {
                EtcdError::Unavailable { endpoints, op, reason: error_chain(&s) }
            }
            code => EtcdError::Rejected { endpoints, op, code, message: s.message().to_string() },
        }
    }
}

/// An open watch. Dropping it ends the watch.
pub struct Watch {
    stream: tonic::Streaming<pb::WatchResponse>,
    client: Client,
    first: Option<pb::WatchResponse>,
}

impl Watch {
    /// The next answer: events, a progress notice, or a cancellation. `None` when the server
    /// closed the stream. Waits without a time limit (watches are quiet while nothing changes);
    /// a dead connection ends it through the keep-alive pings.
    pub async fn message(&mut self) -> Result<Option<pb::WatchResponse>, EtcdError> {
        if let Some(first) = self.first.take() {
            if !first.events.is_empty() {
                return Ok(Some(first));
            }
        }
        self.stream.message().await.map_err(|s| self.client.status("watch", s))
    }
}

/// The end of the range of every key starting with `prefix` (etcd's convention: the prefix with
/// its last byte below 0xff incremented; `\0`, meaning "to the end", when there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Builders for transaction operations and guards.
pub mod op {
    use super::pb;

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> pb::RequestOp {
        let put = pb::PutRequest { key: key.into(), value: value.into() };
        pb::RequestOp { request: Some(pb::request_op::Request::Put(put)) }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> pb::RequestOp {
        let del = pb::DeleteRangeRequest { key: key.into(), range_end: Vec::new() };
        pb::RequestOp { request: Some(pb::request_op::Request::DeleteRange(del)) }
    }

    pub fn get(key: impl Into<Vec<u8>>) -> pb::RequestOp {
        let range = pb::RangeRequest { key: key.into(), ..Default::default() };
        pb::RequestOp { request: Some(pb::request_op::Request::Range(range)) }
    }

    fn compare(key: impl Into<Vec<u8>>, target: pb::CompareTarget, value: pb::compare::TargetUnion) -> pb::Compare {
        pb::Compare {
            result: pb::CompareResult::Equal as i32,
            target: target as i32,
            key: key.into(),
            target_union: Some(value),
            range_end: Vec::new(),
        }
    }

    /// Holds when the key was last changed at `revision` (0: the key does not exist).
    pub fn mod_revision_is(key: impl Into<Vec<u8>>, revision: i64) -> pb::Compare {
        compare(key, pb::CompareTarget::Mod, pb::compare::TargetUnion::ModRevision(revision))
    }

    /// Holds when the key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> pb::Compare {
        compare(key, pb::CompareTarget::Version, pb::compare::TargetUnion::Version(0))
    }

    /// Holds when the key exists with exactly this value.
    pub fn value_is(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> pb::Compare {
        compare(key, pb::CompareTarget::Value, pb::compare::TargetUnion::Value(value.into()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let s = source.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = source.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn prefix_end_follows_etcds_convention() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"/weft/objects/", b"/weft/objects0"),
            (b"a", b"b"),
            (b"a\xff", b"b"),
            (b"\xff\xff", b"\0"),
            (b"", b"\0"),
        ];
        for (prefix, want) in cases {
            assert_eq!(prefix_end(prefix), *want, "{prefix:?}");
        }
    }

    /// Known encodings, worked out by hand from the field numbers in etcd's rpc.proto.
    #[test]
    fn messages_encode_with_etcds_field_numbers() {
        let range = pb::RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), limit: 2, ..Default::default() };
        assert_eq!(range.encode_to_vec(), [0x0a, 1, b'k', 0x12, 1, b'l', 0x18, 2]);

        let cmp = op::mod_revision_is("k", 5);
        // result EQUAL (0) and target MOD (2): field 2 = 2; key field 3; mod_revision field 6.
        assert_eq!(cmp.encode_to_vec(), [0x10, 2, 0x1a, 1, b'k', 0x30, 5]);
        let absent = op::absent("k");
        // version field 4 = 0 is still written, because it is a member of a oneof.
        assert_eq!(absent.encode_to_vec(), [0x1a, 1, b'k', 0x20, 0]);

        let txn = pb::TxnRequest { compare: vec![], success: vec![op::put("k", "v")], failure: vec![] };
        // success (2) { request_put (2) { key (1), value (2) } }
        assert_eq!(txn.encode_to_vec(), [0x12, 8, 0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);

        let mut compare = op::value_is("k", "1");
        compare.range_end = b"z".to_vec();
        let bytes = compare.encode_to_vec();
        // range_end is field 64: tag (64 << 3 | 2) = 514 as a varint.
        assert!(bytes.ends_with(&[0x82, 0x04, 1, b'z']), "{bytes:x?}");
    }

    #[test]
    fn answers_decode_with_etcds_field_numbers() {
        // header { revision: 7 }, kvs [{ key: "k", mod_revision: 3, version: 1, value: "v" }], count 1
        let bytes = [0x0a, 2, 0x18, 7, 0x12, 10, 0x0a, 1, b'k', 0x18, 3, 0x20, 1, 0x2a, 1, b'v', 0x20, 1];
        let r = pb::RangeResponse::decode(&bytes[..]).unwrap();
        assert_eq!(r.header.unwrap().revision, 7);
        assert_eq!(r.count, 1);
        let kv = &r.kvs[0];
        assert_eq!((kv.key.as_slice(), kv.mod_revision, kv.version, kv.value.as_slice()), (&b"k"[..], 3, 1, &b"v"[..]));
    }

    #[test]
    fn bad_endpoints_are_named() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let err = Client::new(&["bad host:1".to_string()], ClientOptions::default()).unwrap_err();
        assert!(err.to_string().contains("bad host:1"), "{err}");
        assert!(Client::new(&[], ClientOptions::default()).is_err());
    }
}
