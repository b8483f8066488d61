//! The ADS server of `weft control`: state-of-the-world and delta xDS v3 over one gRPC stream per
//! proxy, for any resource type a [`Source`] generates.
//!
//! Each stream is its own task. It remembers only what it sent and what the proxy ACKed (the
//! resources themselves are `Arc`s shared with the generated sets), regenerates the proxy's
//! resources when the proxy connects, when its subscriptions change and when a new mesh is
//! published, and sends only what differs from what it sent before. Published meshes reach the
//! streams through a watch channel, so a slow proxy sees the newest mesh and never a backlog;
//! a proxy that stops reading its responses is cut off after `send_timeout` instead of holding
//! anyone up. The protocol behaviour is written down in docs/xds.md.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Request, Response, Status, Streaming};
use weft_xds::{Generator, NodeInfo, ResourceSet};

mod delta;
mod serve;
pub mod sim;
mod sotw;
mod stream;
mod subscription;
mod view;

pub use stream::ResponseStream;
pub use subscription::WILDCARD;

/// Where a stream's resources come from: the translator's view of the mesh for one proxy.
///
/// `generate` may be expensive; the server calls it on a blocking thread, at most
/// `AdsOptions::max_concurrent_generations` at a time, and only when a proxy connects, changes
/// its subscriptions, or a new source is published. Returning the same `Arc<Resource>`s for
/// unchanged resources keeps the server's memory per proxy small.
pub trait Source: Send + Sync + 'static {
    fn generate(&self, node: &NodeInfo) -> Arc<ResourceSet>;

    /// The resources of the types a stream subscribes to (`types`, sorted, never empty): the
    /// server only looks at those. A source with types that are costly to build and that few
    /// proxies ask for (a DNS name table) builds them only when they appear here; the default
    /// builds everything.
    fn generate_types(&self, node: &NodeInfo, types: &[String]) -> Arc<ResourceSet> {
        let _ = types;
        self.generate(node)
    }
}

impl<F> Source for F
where
    F: Fn(&NodeInfo) -> Arc<ResourceSet> + Send + Sync + 'static,
{
    fn generate(&self, node: &NodeInfo) -> Arc<ResourceSet> {
        self(node)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    #[error("ADS listener {addr}: {source}")]
    Listener { addr: String, source: std::io::Error },
    #[error("xDS client {node:?}: connecting to {endpoint}: {message}")]
    Connect { node: String, endpoint: String, message: String },
    #[error("xDS client {node:?}: stream ended: {status}")]
    Stream { node: String, status: Status },
    #[error("xDS client {node:?}: {what} not reached within {timeout:?}")]
    Timeout { node: String, what: String, timeout: Duration },
}

/// Limits and timeouts of the server. Every field has a default (`AdsOptions::default()`).
#[derive(Clone, Debug)]
pub struct AdsOptions {
    /// How long one response may wait for the proxy to take it; a proxy that does not read for
    /// this long is disconnected (its stream ends with UNAVAILABLE).
    pub send_timeout: Duration,
    /// How long a new stream may take to send its first request (which names the node).
    pub first_request_timeout: Duration,
    /// Streams served at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Resource types one stream may subscribe to.
    pub max_types_per_stream: usize,
    /// Names one stream may subscribe to per type.
    pub max_names_per_type: usize,
    /// `Source::generate` calls running at once (on blocking threads).
    pub max_concurrent_generations: NonZeroUsize,
    /// `ControlPlane.identifier` in every response.
    pub control_plane_id: String,
    /// [`AdsServer::serve`] only: TCP connections accepted at once.
    pub max_connections: usize,
    /// [`AdsServer::serve`] only: HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// [`AdsServer::serve`] only: HTTP/2 PING interval, and how long a PING may go unanswered
    /// before the connection is closed (finds proxies that vanished without a FIN).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// [`AdsServer::serve`] only: after shutdown, how long connections get to finish.
    pub shutdown_grace: Duration,
}

impl Default for AdsOptions {
    fn default() -> AdsOptions {
        AdsOptions {
            send_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(15),
            max_streams: 20_000,
            max_types_per_stream: 16,
            max_names_per_type: 100_000,
            max_concurrent_generations: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            control_plane_id: "weft".to_string(),
            max_connections: 20_000,
            max_streams_per_connection: 16,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Which flavour of ADS a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `StreamAggregatedResources`: every response carries the complete set of a type.
    Sotw,
    /// `DeltaAggregatedResources`: responses carry changed and removed resources only.
    Delta,
}

/// One connected proxy as the server sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub stream_id: u64,
    pub node_id: String,
    pub tenant: String,
    pub namespace: String,
    pub generator: Generator,
    pub peer: Option<SocketAddr>,
    #[serde(serialize_with = "unix_ms")]
    pub connected_at: SystemTime,
    pub protocol: Protocol,
    /// The published mesh (the count of `publish` calls) whose resources this stream has pushed.
    pub generation: u64,
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

/// Subscription, last response, last ACK and last NACK of one type on one stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TypeStatus {
    pub wildcard: bool,
    /// Names subscribed explicitly.
    pub names: Vec<String>,
    pub sent: Option<Sent>,
    pub acked: Option<Acked>,
    /// The last NACK on this stream (it stays after a later ACK; compare versions).
    pub nack: Option<Nack>,
    /// NACKs on this stream.
    pub nacks: u64,
    /// The last response was ACKed.
    pub in_sync: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sent {
    pub version: String,
    pub nonce: String,
    /// Resources of this type the proxy holds once it applies the response.
    pub resources: usize,
    #[serde(serialize_with = "unix_ms")]
    pub at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Acked {
    pub version: String,
    pub resources: usize,
    #[serde(serialize_with = "unix_ms")]
    pub at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Nack {
    /// The version that was rejected.
    pub version: String,
    pub nonce: String,
    /// `error_detail.message` as the proxy sent it.
    pub message: String,
    /// `error_detail.code` (a gRPC status code).
    pub code: i32,
    /// Names in the rejected response.
    pub resources: Vec<String>,
    #[serde(serialize_with = "unix_ms")]
    pub at: SystemTime,
}

fn unix_ms<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    s.serialize_u64(ms)
}

/// Counters since the server started (plain numbers; the binary exports them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AdsMetrics {
    /// Streams with a valid node, now.
    pub streams_connected: u64,
    /// Streams with a valid node, ever.
    pub streams_total: u64,
    /// Streams refused: bad or missing node, no first request in time, over `max_streams`.
    pub streams_rejected: u64,
    /// Streams closed because the proxy did not read its responses within `send_timeout`.
    pub streams_stalled: u64,
    pub publishes: u64,
    /// `Source::generate` calls.
    pub generations: u64,
    /// Responses sent.
    pub pushes: u64,
    /// Resources in responses (a SotW response counts all it carries).
    pub resources_sent: u64,
    /// Names in delta `removed_resources`.
    pub resources_removed: u64,
    pub acks: u64,
    pub nacks: u64,
}

#[derive(Default)]
struct Counters {
    streams_total: AtomicU64,
    streams_rejected: AtomicU64,
    streams_stalled: AtomicU64,
    publishes: AtomicU64,
    generations: AtomicU64,
    pushes: AtomicU64,
    resources_sent: AtomicU64,
    resources_removed: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The published mesh: a source and its sequence number.
#[derive(Clone)]
struct Mesh {
    seq: u64,
    source: Arc<dyn Source>,
}

struct Inner {
    opts: AdsOptions,
    mesh: watch::Sender<Mesh>,
    /// Set once: every stream ends and new ones are refused.
    closing: watch::Sender<bool>,
    conns: Mutex<HashMap<u64, Arc<stream::Conn>>>,
    /// Stream tasks running (with or without a valid node yet), against `max_streams`.
    active: AtomicUsize,
    generations: Semaphore,
    counters: Counters,
    next_stream: AtomicU64,
    next_nonce: AtomicU64,
}

impl Inner {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<stream::Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nonce(&self) -> String {
        format!("{:x}", self.next_nonce.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// The ADS server. Cloning shares it.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

impl AdsServer {
    pub fn new(source: Arc<dyn Source>, opts: AdsOptions) -> AdsServer {
        let (mesh, _) = watch::channel(Mesh { seq: 0, source });
        let (closing, _) = watch::channel(false);
        let generations = Semaphore::new(opts.max_concurrent_generations.get());
        AdsServer {
            inner: Arc::new(Inner {
                opts,
                mesh,
                closing,
                conns: Mutex::new(HashMap::new()),
                active: AtomicUsize::new(0),
                generations,
                counters: Counters::default(),
                next_stream: AtomicU64::new(0),
                next_nonce: AtomicU64::new(0),
            }),
        }
    }

    /// Makes `source` the mesh every stream serves. Each stream regenerates its proxy's
    /// resources and pushes what changed; a stream still busy with an older mesh skips straight
    /// to this one.
    pub fn publish(&self, source: Arc<dyn Source>) {
        self.inner.mesh.send_modify(|m| {
            m.seq += 1;
            m.source = source;
        });
        bump(&self.inner.counters.publishes, 1);
    }

    /// The gRPC service, for `tonic::transport::Server::add_service`. A tonic server's graceful
    /// shutdown waits for open streams: call [`AdsServer::close_streams`] first.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService { inner: self.inner.clone() })
    }

    /// Serves ADS on `listener` (HTTP/2 with prior knowledge) until `shutdown` completes; then
    /// closes every stream (as [`AdsServer::close_streams`]: the server refuses streams from then
    /// on), lets connections finish for `shutdown_grace` and drops the rest. Fails only when the
    /// listener itself fails; per-process accept errors (out of descriptors) are retried.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AdsError> {
        serve::serve(self.clone(), listener, shutdown).await
    }

    /// Ends every stream with UNAVAILABLE and refuses new ones (proxies reconnect elsewhere).
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Every connected proxy, by node id then stream.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let conns: Vec<Arc<stream::Conn>> = self.inner.conns().values().cloned().collect();
        let mut out: Vec<ProxyStatus> = conns.iter().map(|c| c.status()).collect();
        out.sort_by(|a, b| (&a.node_id, a.stream_id).cmp(&(&b.node_id, b.stream_id)));
        out
    }

    /// The resources the proxy with this node id has ACKed, on its newest stream.
    pub fn acked(&self, node_id: &str) -> Option<ResourceSet> {
        let conn = self.inner.conns().values().filter(|c| c.node.id == node_id).max_by_key(|c| c.id).cloned()?;
        Some(conn.acked())
    }

    pub fn metrics(&self) -> AdsMetrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AdsMetrics {
            streams_connected: self.inner.conns().len() as u64,
            streams_total: get(&c.streams_total),
            streams_rejected: get(&c.streams_rejected),
            streams_stalled: get(&c.streams_stalled),
            publishes: get(&c.publishes),
            generations: get(&c.generations),
            pushes: get(&c.pushes),
            resources_sent: get(&c.resources_sent),
            resources_removed: get(&c.resources_removed),
            acks: get(&c.acks),
            nacks: get(&c.nacks),
        }
    }
}

/// The peer address of a stream, put into request extensions by [`AdsServer::serve`].
#[derive(Clone, Copy, Debug)]
struct PeerAddr(SocketAddr);

/// The tonic service behind [`AdsServer::service`].
#[derive(Clone)]
pub struct AdsService {
    inner: Arc<Inner>,
}

impl AdsService {
    fn open<Req, Resp>(&self, request: Request<Streaming<Req>>) -> Result<stream::Opened<Req, Resp>, Status> {
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0).or_else(|| request.remote_addr());
        let slot = stream::Slot::take(&self.inner)?;
        let (tx, rx) = mpsc::channel(stream::RESPONSE_QUEUE);
        let end = Arc::new(Mutex::new(None));
        let responses = ResponseStream::new(rx, end.clone());
        Ok(stream::Opened { slot, requests: request.into_inner(), peer, tx, end, responses })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let opened = self.open(request)?;
        Ok(Response::new(sotw::spawn(self.inner.clone(), opened)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let opened = self.open(request)?;
        Ok(Response::new(delta::spawn(self.inner.clone(), opened)))
    }
}
