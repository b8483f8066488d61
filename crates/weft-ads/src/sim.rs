//! A simulated xDS client, for tests and the control-plane load bench: it connects as one node
//! (its own TCP connection, like a real proxy), subscribes, ACKs every response, and records what
//! it holds and when it ACKed, so a bench can measure the time from a publish to the proxies'
//! ACKs ([`push_latency`]).
//!
//! Resource names are read from protobuf field 1 of each resource, where every Envoy resource
//! type keeps its name (`ClusterLoadAssignment.cluster_name` included), without decoding the
//! rest.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use weft_xds::type_url;

use crate::subscription::{wildcard_capable, WILDCARD};
use crate::{AdsError, Protocol};

/// How a simulated client subscribes.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub protocol: Protocol,
    /// Type URL and names, in the order the first requests go out. No names = wildcard (an
    /// empty list where xDS allows it, `*` for routes and endpoints).
    pub subscriptions: Vec<(String, Vec<String>)>,
    /// Bound on connecting, on the response headers and on queueing each request.
    pub timeout: Duration,
}

impl SimConfig {
    /// All of clusters, endpoints, listeners and routes, as wildcards.
    pub fn wildcard(protocol: Protocol) -> SimConfig {
        SimConfig {
            protocol,
            subscriptions: type_url::PUSH_ORDER.iter().map(|t| (t.to_string(), Vec::new())).collect(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a simulated client holds, after its latest ACK.
#[derive(Clone, Debug, Default)]
pub struct SimState {
    pub responses: u64,
    /// Encoded size of every response received.
    pub bytes: u64,
    pub last_ack_at: Option<Instant>,
    /// By type URL.
    pub types: BTreeMap<String, SimType>,
    /// Why the stream ended, once it has.
    pub closed: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct SimType {
    /// `version_info` (SotW) or `system_version_info` (delta) of the last response.
    pub version: String,
    /// Names held, with their version (delta) or an empty string (SotW carries none).
    pub resources: BTreeMap<String, String>,
    pub responses: u64,
    pub acked_at: Option<Instant>,
}

impl SimState {
    pub fn version(&self, type_url: &str) -> Option<&str> {
        self.types.get(type_url).map(|t| t.version.as_str())
    }

    pub fn names(&self, type_url: &str) -> Vec<&str> {
        self.types.get(type_url).map(|t| t.resources.keys().map(String::as_str).collect()).unwrap_or_default()
    }
}

/// One simulated proxy. Dropping it closes its stream.
pub struct SimClient {
    node_id: String,
    state: watch::Receiver<SimState>,
    task: JoinHandle<()>,
}

impl Drop for SimClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An Istio-style sidecar node: id `sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local` and
/// metadata NAMESPACE, LABELS, INSTANCE_IPS (and GENERATOR when given).
pub fn sidecar_node(ip: IpAddr, name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Node {
    Node {
        id: format!("sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(weft_xds::node_metadata(namespace, labels, &[ip], None)),
        ..Default::default()
    }
}

impl SimClient {
    /// Connects to `endpoint` (`http://host:port`) as `node` and sends the first requests.
    pub async fn connect(endpoint: &str, node: Node, config: SimConfig) -> Result<SimClient, AdsError> {
        let node_id = node.id.clone();
        let connect_err =
            |message: String| AdsError::Connect { node: node_id.clone(), endpoint: endpoint.to_string(), message };
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(config.timeout)
            .connect()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let (state_tx, state) = watch::channel(SimState::default());
        let task = match config.protocol {
            Protocol::Sotw => sotw(channel, node, &config, state_tx).await,
            Protocol::Delta => delta(channel, node, &config, state_tx).await,
        }
        .map_err(|s| connect_err(s.to_string()))?;
        Ok(SimClient { node_id, state, task })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn state(&self) -> SimState {
        self.state.borrow().clone()
    }

    /// Waits until `pred` holds for the client's state (checked after every ACK).
    /// Like [`SimClient::wait_until`], but returns only the time of the last ACK (no copy of
    /// the state, which matters with thousands of clients holding thousands of names each).
    /// `None` on timeout or when the stream closed first.
    pub async fn wait_ack_time(&self, timeout: Duration, pred: impl Fn(&SimState) -> bool) -> Option<Option<Instant>> {
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| pred(s) || s.closed.is_some()).await.ok().map(|s| pred(&s).then_some(s.last_ack_at))
        })
        .await;
        waited.ok().flatten().flatten()
    }

    /// Reads the state without copying it.
    pub fn inspect<T>(&self, f: impl FnOnce(&SimState) -> T) -> T {
        f(&self.state.borrow())
    }

    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&SimState) -> bool,
    ) -> Result<SimState, AdsError> {
        let mut rx = self.state.clone();
        let timed_out = || AdsError::Timeout { node: self.node_id.clone(), what: what.to_string(), timeout };
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| pred(s) || s.closed.is_some()).await.map(|s| s.clone())
        })
        .await;
        match waited {
            Err(_) | Ok(Err(_)) => Err(timed_out()),
            Ok(Ok(s)) if pred(&s) => Ok(s),
            Ok(Ok(s)) => Err(AdsError::Stream {
                node: self.node_id.clone(),
                status: tonic::Status::unavailable(s.closed.unwrap_or_default()),
            }),
        }
    }
}

/// Latency from a publish to the clients' ACKs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    pub clients: usize,
    /// Clients that reached the wanted state within the timeout.
    pub reached: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Calls `publish`, then waits (up to `timeout`) until `done(index, state)` holds for every
/// client, and reports the time from the publish to each client's last ACK.
pub async fn push_latency(
    clients: &[SimClient],
    publish: impl FnOnce(),
    done: impl Fn(usize, &SimState) -> bool,
    timeout: Duration,
) -> PushReport {
    let start = Instant::now();
    publish();
    let done = &done;
    let mut waits: FuturesUnordered<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| async move { c.wait_ack_time(timeout, |s| done(i, s)).await })
        .collect();
    let mut latencies = Vec::with_capacity(clients.len());
    while let Some(r) = waits.next().await {
        if let Some(at) = r {
            latencies.push(at.map_or(Duration::ZERO, |t| t.saturating_duration_since(start)));
        }
    }
    latencies.sort();
    let pct = |p: usize| {
        if latencies.is_empty() {
            Duration::ZERO
        } else {
            latencies[((latencies.len() - 1) * p) / 100]
        }
    };
    PushReport {
        clients: clients.len(),
        reached: latencies.len(),
        p50: pct(50),
        p90: pct(90),
        p99: pct(99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

/// The name of an xDS resource: field 1 of its message.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

fn resource_name(body: &[u8]) -> String {
    NameOnly::decode(body).map(|n| n.name).unwrap_or_default()
}

fn first_names(type_url: &str, names: &[String]) -> Vec<String> {
    if names.is_empty() && !wildcard_capable(type_url) {
        vec![WILDCARD.to_string()]
    } else {
        names.to_vec()
    }
}

/// The request half of a simulated stream.
struct Requests<T>(mpsc::Receiver<T>);

impl<T> Stream for Requests<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

const REQUEST_QUEUE: usize = 16;

async fn sotw(
    channel: Channel,
    node: Node,
    config: &SimConfig,
    state: watch::Sender<SimState>,
) -> Result<JoinHandle<()>, tonic::Status> {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE.max(config.subscriptions.len()));
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for (i, (t, n)) in config.subscriptions.iter().enumerate() {
        let n = first_names(t, n);
        names.insert(t.clone(), n.clone());
        let req = DiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: t.clone(),
            resource_names: n,
            ..Default::default()
        };
        tx.try_send(req).map_err(|_| tonic::Status::internal("request queue full"))?;
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut inbound = tokio::time::timeout(config.timeout, client.stream_aggregated_resources(Requests(rx)))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no response headers"))??
        .into_inner();
    let timeout = config.timeout;
    Ok(tokio::spawn(async move {
        let closed = loop {
            let resp: DiscoveryResponse = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => break "stream ended".to_string(),
                Err(s) => break s.to_string(),
            };
            let ack = DiscoveryRequest {
                version_info: resp.version_info.clone(),
                resource_names: names.get(&resp.type_url).cloned().unwrap_or_default(),
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if tokio::time::timeout(timeout, tx.send(ack)).await.map_or(true, |r| r.is_err()) {
                break "could not queue an ACK".to_string();
            }
            let now = Instant::now();
            let size = resp.encoded_len() as u64;
            state.send_modify(|s| {
                s.responses += 1;
                s.bytes += size;
                s.last_ack_at = Some(now);
                let t = s.types.entry(resp.type_url.clone()).or_default();
                t.version = resp.version_info.clone();
                t.resources = resp.resources.iter().map(|a| (resource_name(&a.value), String::new())).collect();
                t.responses += 1;
                t.acked_at = Some(now);
            });
        };
        state.send_modify(|s| s.closed = Some(closed));
    }))
}

async fn delta(
    channel: Channel,
    node: Node,
    config: &SimConfig,
    state: watch::Sender<SimState>,
) -> Result<JoinHandle<()>, tonic::Status> {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE.max(config.subscriptions.len()));
    for (i, (t, n)) in config.subscriptions.iter().enumerate() {
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: t.clone(),
            resource_names_subscribe: first_names(t, n),
            ..Default::default()
        };
        tx.try_send(req).map_err(|_| tonic::Status::internal("request queue full"))?;
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut inbound = tokio::time::timeout(config.timeout, client.delta_aggregated_resources(Requests(rx)))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no response headers"))??
        .into_inner();
    let timeout = config.timeout;
    Ok(tokio::spawn(async move {
        let closed = loop {
            let resp: DeltaDiscoveryResponse = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => break "stream ended".to_string(),
                Err(s) => break s.to_string(),
            };
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if tokio::time::timeout(timeout, tx.send(ack)).await.map_or(true, |r| r.is_err()) {
                break "could not queue an ACK".to_string();
            }
            let now = Instant::now();
            let size = resp.encoded_len() as u64;
            state.send_modify(|s| {
                s.responses += 1;
                s.bytes += size;
                s.last_ack_at = Some(now);
                let t = s.types.entry(resp.type_url.clone()).or_default();
                t.version = resp.system_version_info.clone();
                for r in &resp.resources {
                    t.resources.insert(r.name.clone(), r.version.clone());
                }
                for name in &resp.removed_resources {
                    t.resources.remove(name);
                }
                t.responses += 1;
                t.acked_at = Some(now);
            });
        };
        state.send_modify(|s| s.closed = Some(closed));
    }))
}
