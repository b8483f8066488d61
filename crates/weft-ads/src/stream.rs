//! What both ADS flavours share: the per-stream record the status pages read, the stream's
//! life (first request and node, registration, end), sending with a timeout, and generation.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures_util::{FutureExt, Stream};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status, Streaming};
use weft_xds::{type_url, NodeInfo, Resource, ResourceSet};

use crate::subscription::Subscription;
use crate::view::{self, Res};
use crate::{bump, Acked, Inner, Mesh, Nack, Protocol, ProxyStatus, Sent, TypeStatus};

/// Responses waiting for the transport per stream. Small on purpose: the transport has its own
/// buffers, and a proxy that does not read must fill them quickly so its send times out.
pub const RESPONSE_QUEUE: usize = 2;

/// Requests handled together (one generation, responses in push order).
const MAX_BATCH: usize = 32;

/// Delta responses remembered while waiting for their ACK.
const MAX_PENDING: usize = 8;

/// The response half of a stream, handed to tonic. It ends with the status the stream task left
/// in `end` (nothing means OK), after the responses queued before it.
pub struct ResponseStream<T> {
    // Boxed: the channel allocates its slots in blocks, and a response is a large struct.
    rx: mpsc::Receiver<Box<T>>,
    end: EndSlot,
    done: bool,
}

pub type EndSlot = Arc<Mutex<Option<Status>>>;

impl<T> ResponseStream<T> {
    pub(crate) fn new(rx: mpsc::Receiver<Box<T>>, end: EndSlot) -> ResponseStream<T> {
        ResponseStream { rx, end, done: false }
    }
}

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(Ok(*m))),
            Poll::Ready(None) => {
                self.done = true;
                let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                Poll::Ready(end.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream accepted by the service, before its task starts.
pub struct Opened<Req, Resp> {
    pub slot: Slot,
    pub requests: Streaming<Req>,
    pub peer: Option<SocketAddr>,
    pub tx: mpsc::Sender<Box<Resp>>,
    pub end: EndSlot,
    pub responses: crate::ResponseStream<Resp>,
}

/// A place among `max_streams`, held by the stream task.
pub struct Slot {
    inner: Arc<Inner>,
}

impl Slot {
    pub fn take(inner: &Arc<Inner>) -> Result<Slot, Status> {
        if *inner.closing.borrow() {
            bump(&inner.counters.streams_rejected, 1);
            return Err(Status::unavailable("the control plane is shutting down"));
        }
        let before = inner.active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot { inner: inner.clone() };
        if before >= inner.opts.max_streams {
            bump(&inner.counters.streams_rejected, 1);
            return Err(Status::resource_exhausted(format!(
                "ADS server is at its limit of {} streams",
                inner.opts.max_streams
            )));
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One stream of one proxy: identity, and per type what it asked for, was sent and ACKed.
pub struct Conn {
    pub id: u64,
    pub node: NodeInfo,
    pub peer: Option<SocketAddr>,
    pub connected_at: SystemTime,
    pub protocol: Protocol,
    state: Mutex<ConnState>,
}

#[derive(Default)]
pub struct ConnState {
    pub generation: u64,
    pub types: BTreeMap<String, TypeState>,
}

pub struct TypeState {
    pub sub: Subscription,
    /// What the proxy holds once it applies what was sent: the last response (SotW) or the
    /// sum of all responses (delta). Always the subscription's view at the time of sending.
    pub known: Res,
    pub sent: Option<Sent>,
    pub acked: Option<Acked>,
    pub acked_res: Res,
    pub nack: Option<Nack>,
    pub nacks: u64,
    /// Delta: responses waiting for their ACK, oldest first.
    pub pending: VecDeque<Pending>,
}

impl Default for TypeState {
    fn default() -> TypeState {
        TypeState {
            sub: Subscription::default(),
            known: view::empty(),
            sent: None,
            acked: None,
            acked_res: view::empty(),
            nack: None,
            nacks: 0,
            pending: VecDeque::new(),
        }
    }
}

pub struct Pending {
    pub nonce: String,
    pub version: String,
    pub upserts: Vec<Arc<Resource>>,
    pub removed: Vec<String>,
}

impl TypeState {
    pub fn remember_pending(&mut self, p: Pending) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(p);
    }
}

impl Conn {
    pub fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> ProxyStatus {
        let st = self.lock();
        let types = st
            .types
            .iter()
            .map(|(t, ts)| {
                let in_sync = match (&ts.sent, &ts.acked) {
                    (Some(s), Some(a)) => s.version == a.version,
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                let status = TypeStatus {
                    wildcard: ts.sub.wildcard,
                    names: ts.sub.names.iter().cloned().collect(),
                    sent: ts.sent.clone(),
                    acked: ts.acked.clone(),
                    nack: ts.nack.clone(),
                    nacks: ts.nacks,
                    in_sync: in_sync && (ts.pending.is_empty() || self.protocol == Protocol::Sotw),
                };
                (t.clone(), status)
            })
            .collect();
        ProxyStatus {
            stream_id: self.id,
            node_id: self.node.id.clone(),
            tenant: self.node.tenant.clone(),
            namespace: self.node.namespace.clone(),
            generator: self.node.generator,
            peer: self.peer,
            connected_at: self.connected_at,
            protocol: self.protocol,
            generation: st.generation,
            types,
        }
    }

    pub fn acked(&self) -> ResourceSet {
        let st = self.lock();
        let mut set = ResourceSet::default();
        for (t, ts) in &st.types {
            if ts.acked_res.is_empty() {
                continue;
            }
            let m = ts.acked_res.iter().map(|r| (r.name.clone(), r.clone())).collect();
            set.by_type.insert(t.clone(), m);
        }
        set
    }
}

/// Removes the stream from the server's registry when the task ends.
pub struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.conns().remove(&self.id);
    }
}

/// Why a stream ends.
pub enum Close {
    /// The proxy ended its request stream.
    ClientDone,
    /// The proxy went away (reset, connection closed): nothing to tell it.
    Gone,
    /// The proxy did not take a response within `send_timeout`.
    Stalled,
    /// End with this status.
    Status(Status),
}

impl Close {
    /// A request stream error: the proxy went away, or sent something tonic could not decode.
    pub fn from_request_error(s: Status) -> Close {
        match s.code() {
            Code::Cancelled | Code::Unknown | Code::Unavailable => Close::Gone,
            _ => Close::Status(s),
        }
    }
}

pub trait HasNode {
    fn node(&self) -> Option<&Node>;
}

impl HasNode for DiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

impl HasNode for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
}

/// Reads the first request and the node it names, and registers the stream.
pub async fn open<Req: HasNode>(
    inner: &Arc<Inner>,
    requests: &mut Streaming<Req>,
    peer: Option<SocketAddr>,
    protocol: Protocol,
) -> Result<(Arc<Conn>, Registration, Req), Close> {
    let reject = |status: Status| {
        bump(&inner.counters.streams_rejected, 1);
        Close::Status(status)
    };
    let first = match tokio::time::timeout(inner.opts.first_request_timeout, requests.message()).await {
        Err(_) => {
            return Err(reject(Status::deadline_exceeded(format!(
                "no first request within {:?}",
                inner.opts.first_request_timeout
            ))))
        }
        Ok(Ok(None)) => return Err(Close::ClientDone),
        Ok(Err(s)) => return Err(Close::from_request_error(s)),
        Ok(Ok(Some(r))) => r,
    };
    let Some(node) = first.node() else {
        return Err(reject(Status::invalid_argument("the first request of an ADS stream must carry the node")));
    };
    let node = match NodeInfo::from_node(node) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(peer = ?peer, error = %e, "ADS stream refused: bad node");
            return Err(reject(Status::invalid_argument(e.to_string())));
        }
    };
    let id = inner.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
    let conn = Arc::new(Conn {
        id,
        node,
        peer,
        connected_at: SystemTime::now(),
        protocol,
        state: Mutex::new(ConnState::default()),
    });
    inner.conns().insert(id, conn.clone());
    bump(&inner.counters.streams_total, 1);
    tracing::info!(node = %conn.node.id, stream = id, peer = ?peer, protocol = ?protocol, "ADS stream opened");
    Ok((conn, Registration { inner: inner.clone(), id }, first))
}

/// Leaves the stream's final status for its response half and logs why it ended.
pub fn finish(inner: &Inner, end: &EndSlot, node: Option<&str>, close: Close) {
    let status = match close {
        Close::ClientDone | Close::Gone => None,
        Close::Stalled => {
            bump(&inner.counters.streams_stalled, 1);
            tracing::warn!(
                node = node.unwrap_or(""),
                timeout = ?inner.opts.send_timeout,
                "ADS stream closed: the proxy did not read its responses"
            );
            Some(Status::unavailable(format!(
                "ADS stream closed: responses not read for {:?}",
                inner.opts.send_timeout
            )))
        }
        Close::Status(s) => Some(s),
    };
    if let Some(node) = node {
        tracing::info!(node, status = ?status.as_ref().map(|s| s.code()), "ADS stream ended");
    }
    *end.lock().unwrap_or_else(|e| e.into_inner()) = status;
}

/// The first request and those already waiting behind it, so that one generation answers them
/// all and the responses go out in push order. The `Close` is the end of the request stream
/// found while reading ahead.
pub fn batch<Req>(requests: &mut Streaming<Req>, first: Req) -> (Vec<Req>, Option<Close>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        // `message` keeps its progress in the stream, so dropping the unfinished future is fine.
        match requests.message().now_or_never() {
            Some(Ok(Some(r))) => batch.push(r),
            Some(Ok(None)) => return (batch, Some(Close::ClientDone)),
            Some(Err(s)) => return (batch, Some(Close::from_request_error(s))),
            None => break,
        }
    }
    (batch, None)
}

/// Type URLs in the order responses go out: clusters, endpoints, listeners, routes, then any
/// other type by name.
pub fn push_order<'a>(types: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = types.cloned().collect();
    out.sort_by_key(|t| (type_url::PUSH_ORDER.iter().position(|p| p == t).unwrap_or(usize::MAX), t.clone()));
    out
}

/// What a stream task wakes up for.
pub enum Event<Req> {
    Request(Req),
    Published,
    Close(Close),
}

/// Waits for the next request, a newly published mesh, or shutdown. A published mesh waits
/// behind requests already there, so ACKs are read before pushing.
pub async fn next_event<Req, Resp>(requests: &mut Streaming<Req>, ctx: &mut Ctx<Resp>) -> Event<Req> {
    let shutting_down = || Event::Close(Close::Status(Status::unavailable("the control plane is shutting down")));
    tokio::select! {
        biased;
        _ = ctx.closing.wait_for(|c| *c) => shutting_down(),
        m = requests.message() => match m {
            Ok(Some(r)) => Event::Request(r),
            Ok(None) => Event::Close(Close::ClientDone),
            Err(s) => Event::Close(Close::from_request_error(s)),
        },
        changed = ctx.mesh.changed() => match changed {
            Ok(()) => Event::Published,
            Err(_) => shutting_down(),
        },
    }
}

/// The running half of a stream: its record, the response sender and the mesh it follows.
pub struct Ctx<Resp> {
    pub inner: Arc<Inner>,
    pub conn: Arc<Conn>,
    tx: mpsc::Sender<Box<Resp>>,
    pub mesh: watch::Receiver<Mesh>,
    pub closing: watch::Receiver<bool>,
}

impl<Resp> Ctx<Resp> {
    pub fn new(inner: Arc<Inner>, conn: Arc<Conn>, tx: mpsc::Sender<Box<Resp>>) -> Ctx<Resp> {
        let mesh = inner.mesh.subscribe();
        let closing = inner.closing.subscribe();
        Ctx { inner, conn, tx, mesh, closing }
    }

    pub async fn send(&self, resp: Resp) -> Result<(), Close> {
        match tokio::time::timeout(self.inner.opts.send_timeout, self.tx.send(Box::new(resp))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::Gone),
            Err(_) => Err(Close::Stalled),
        }
    }

    pub fn control_plane(&self) -> Option<ControlPlane> {
        Some(ControlPlane { identifier: self.inner.opts.control_plane_id.clone() })
    }

    /// The proxy's resources from the newest published mesh (which counts as seen from now).
    pub async fn generate(&mut self) -> Result<(u64, Arc<ResourceSet>), Close> {
        let (seq, source) = {
            let m = self.mesh.borrow_and_update();
            (m.seq, m.source.clone())
        };
        let _permit = self
            .inner
            .generations
            .acquire()
            .await
            .map_err(|_| Close::Status(Status::unavailable("the control plane is shutting down")))?;
        let conn = self.conn.clone();
        let types: Vec<String> =
            self.conn.lock().types.iter().filter(|(_, ts)| !ts.sub.is_empty()).map(|(t, _)| t.clone()).collect();
        let set = tokio::task::spawn_blocking(move || {
            if types.is_empty() {
                Arc::new(ResourceSet::default())
            } else {
                source.generate_types(&conn.node, &types)
            }
        })
        .await
        .map_err(|e| {
            tracing::error!(node = %self.conn.node.id, error = %e, "generating resources failed");
            Close::Status(Status::internal(format!("generating resources for node {:?} failed", self.conn.node.id)))
        })?;
        bump(&self.inner.counters.generations, 1);
        Ok((seq, set))
    }

    pub fn sent(&self, resources: u64, removed: u64) {
        let c = &self.inner.counters;
        bump(&c.pushes, 1);
        bump(&c.resources_sent, resources);
        bump(&c.resources_removed, removed);
    }

    /// Checks the per-stream limits before a request of `type_url` adds to the state.
    pub fn check_limits(&self, st: &ConnState, type_url: &str, names: usize) -> Result<(), Close> {
        let opts = &self.inner.opts;
        if type_url.is_empty() {
            return Err(Close::Status(Status::invalid_argument(
                "request without type_url (ADS needs one on every request)",
            )));
        }
        if !st.types.contains_key(type_url) && st.types.len() >= opts.max_types_per_stream {
            return Err(Close::Status(Status::resource_exhausted(format!(
                "{type_url}: more than {} resource types on one stream",
                opts.max_types_per_stream
            ))));
        }
        if names > opts.max_names_per_type {
            return Err(Close::Status(Status::resource_exhausted(format!(
                "{type_url}: more than {} resource names subscribed",
                opts.max_names_per_type
            ))));
        }
        Ok(())
    }

    /// Records an ACK of the response `version`, whose resources the proxy now holds.
    pub fn ack(&self, ts: &mut TypeState, version: String, resources: Res) {
        bump(&self.inner.counters.acks, 1);
        ts.acked = Some(Acked { version, resources: resources.len(), at: SystemTime::now() });
        ts.acked_res = resources;
    }

    /// Records a NACK; it is logged once per rejected version and message.
    pub fn nack(&self, type_url: &str, ts: &mut TypeState, nack: Nack) {
        bump(&self.inner.counters.nacks, 1);
        ts.nacks += 1;
        let repeated = ts.nack.as_ref().is_some_and(|n| n.version == nack.version && n.message == nack.message);
        if repeated {
            tracing::debug!(node = %self.conn.node.id, r#type = type_url::short(type_url), version = %nack.version, "NACK repeated");
        } else {
            tracing::warn!(
                node = %self.conn.node.id,
                r#type = type_url::short(type_url),
                version = %nack.version,
                nonce = %nack.nonce,
                error = %nack.message,
                "proxy rejected config (NACK)"
            );
        }
        ts.nack = Some(nack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_go_out_in_push_order() {
        let types: Vec<String> = [
            type_url::ROUTE,
            "type.googleapis.com/weft.dns.v1.NameTable",
            type_url::LISTENER,
            type_url::ENDPOINT,
            "type.googleapis.com/a.Extra",
            type_url::CLUSTER,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let want = [
            type_url::CLUSTER,
            type_url::ENDPOINT,
            type_url::LISTENER,
            type_url::ROUTE,
            "type.googleapis.com/a.Extra",
            "type.googleapis.com/weft.dns.v1.NameTable",
        ];
        assert_eq!(push_order(types.iter()), want);
    }

    #[tokio::test]
    async fn response_stream_ends_with_the_status_left_by_the_task() {
        use futures_util::StreamExt;
        let (tx, rx) = mpsc::channel(2);
        let end: EndSlot = Arc::default();
        let mut s = ResponseStream::new(rx, end.clone());
        tx.send(Box::new(1u32)).await.unwrap();
        *end.lock().unwrap() = Some(Status::unavailable("bye"));
        drop(tx);
        assert_eq!(s.next().await.map(|r| r.unwrap()), Some(1), "queued responses first");
        let e = s.next().await.unwrap().unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unavailable, "bye"));
        assert!(s.next().await.is_none());
    }
}
