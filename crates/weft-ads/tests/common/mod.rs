//! Test support: a mesh per namespace, a server on loopback, and raw SotW and delta clients
//! that let a test choose every request (ACK, NACK, names) and check for silence.
#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};
use weft_ads::{AdsOptions, AdsServer, ProxyStatus, Source};
use weft_xds::{NodeInfo, Resource, ResourceSet};

pub use weft_xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Bound on every wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test listens to be sure nothing more arrives.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn cluster(name: &str, stat: &str) -> Resource {
    Resource::new(name, &Cluster { name: name.into(), alt_stat_name: stat.into(), ..Default::default() })
}

pub fn endpoints(name: &str, zone: &str) -> Resource {
    let locality = Locality { zone: zone.into(), ..Default::default() };
    let lb = LocalityLbEndpoints { locality: Some(locality), ..Default::default() };
    Resource::new(name, &ClusterLoadAssignment { cluster_name: name.into(), endpoints: vec![lb], ..Default::default() })
}

pub fn listener(name: &str, stat: &str) -> Resource {
    Resource::new(name, &Listener { name: name.into(), stat_prefix: stat.into(), ..Default::default() })
}

pub fn route(name: &str, vhost: &str) -> Resource {
    let vh = VirtualHost { name: vhost.into(), domains: vec!["*".into()], ..Default::default() };
    Resource::new(name, &RouteConfiguration { name: name.into(), virtual_hosts: vec![vh], ..Default::default() })
}

pub fn set(resources: Vec<Resource>) -> Arc<ResourceSet> {
    let mut s = ResourceSet::default();
    for r in resources {
        s.insert(r);
    }
    Arc::new(s)
}

/// A mesh that gives each namespace its own resources.
#[derive(Clone, Default)]
pub struct Mesh {
    pub by_namespace: BTreeMap<String, Arc<ResourceSet>>,
}

impl Mesh {
    pub fn with(mut self, namespace: &str, resources: Vec<Resource>) -> Mesh {
        self.by_namespace.insert(namespace.to_string(), set(resources));
        self
    }

    pub fn get(&self, namespace: &str) -> Arc<ResourceSet> {
        self.by_namespace.get(namespace).cloned().unwrap_or_default()
    }

    pub fn source(self) -> Arc<dyn Source> {
        Arc::new(self)
    }
}

impl Source for Mesh {
    fn generate(&self, node: &NodeInfo) -> Arc<ResourceSet> {
        self.get(&node.namespace)
    }
}

pub struct TestServer {
    pub ads: AdsServer,
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), weft_ads::AdsError>>>,
}

impl TestServer {
    pub async fn start(source: Arc<dyn Source>, opts: AdsOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let ads = AdsServer::new(source, opts);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = ads.clone();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        TestServer { ads, endpoint, stop: Some(stop), task: Some(task) }
    }

    /// Stops serving and waits for `serve` to return.
    pub async fn stop(&mut self) -> Result<(), weft_ads::AdsError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server running");
        tokio::time::timeout(WAIT, task).await.expect("serve returns after shutdown").unwrap()
    }

    pub fn status_of(&self, node_id: &str) -> Vec<ProxyStatus> {
        self.ads.status().into_iter().filter(|p| p.node_id == node_id).collect()
    }

    /// Waits until the newest stream of `node_id` satisfies `pred`.
    pub async fn wait_status(&self, node_id: &str, what: &str, pred: impl Fn(&ProxyStatus) -> bool) -> ProxyStatus {
        for _ in 0..400 {
            if let Some(p) = self.status_of(node_id).pop() {
                if pred(&p) {
                    return p;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{node_id}: {what}: not reached; status: {:#?}", self.status_of(node_id));
    }

    /// Waits until the node's newest stream has pushed mesh `generation`.
    pub async fn wait_generation(&self, node_id: &str, generation: u64) -> ProxyStatus {
        self.wait_status(node_id, &format!("generation {generation}"), |p| p.generation >= generation).await
    }
}

/// Waits (bounded) until `f` holds.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached: {what}");
}

pub fn node(ip: &str, name: &str, namespace: &str) -> Node {
    let ip: IpAddr = ip.parse().unwrap();
    weft_ads::sim::sidecar_node(ip, name, namespace, &BTreeMap::new())
}

pub fn grpc_node(ip: &str, name: &str, namespace: &str) -> Node {
    let ip: IpAddr = ip.parse().unwrap();
    Node {
        id: format!("sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(weft_xds::node_metadata(namespace, &BTreeMap::new(), &[ip], Some("grpc"))),
        ..Default::default()
    }
}

/// Field 1 of a resource: its name, for every type used here.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

pub fn names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|a| NameOnly::decode(a.value.as_slice()).unwrap().name).collect()
}

pub fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

struct Requests<T>(mpsc::Receiver<T>);

impl<T> Stream for Requests<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

pub async fn channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_string()).unwrap().connect_timeout(WAIT).connect().await.unwrap()
}

/// A channel whose HTTP/2 windows are small, so a client that does not read stalls quickly.
pub async fn small_window_channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(WAIT)
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap()
}

pub fn sotw_request(node: Option<&Node>, type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node.cloned(),
        type_url: type_url.to_string(),
        resource_names: strings(names),
        ..Default::default()
    }
}

/// A state-of-the-world client driven by hand.
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl SotwClient {
    /// Opens a stream with `first` requests already queued (they reach the server together).
    pub async fn open(channel: Channel, first: Vec<DiscoveryRequest>) -> SotwClient {
        let (tx, rx) = mpsc::channel(64);
        for r in first {
            tx.try_send(r).unwrap();
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let resp = tokio::time::timeout(WAIT, client.stream_aggregated_resources(Requests(rx)))
            .await
            .expect("response headers in time")
            .expect("stream opened");
        SotwClient { tx, rx: resp.into_inner() }
    }

    pub async fn connect(endpoint: &str, first: Vec<DiscoveryRequest>) -> SotwClient {
        SotwClient::open(channel(endpoint).await, first).await
    }

    pub async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(s)) => panic!("stream failed: {s:?}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    pub async fn recv_err(&mut self) -> Status {
        for _ in 0..1000 {
            match tokio::time::timeout(WAIT, self.rx.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("stream ended without an error"),
                Ok(Err(s)) => return s,
                Err(_) => panic!("no error within {WAIT:?}"),
            }
        }
        panic!("no error after 1000 responses");
    }

    /// Asserts that nothing arrives for a while.
    pub async fn quiet(&mut self, what: &str) {
        if let Ok(m) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("{what}: expected nothing, got {m:?}");
        }
    }

    pub async fn ack(&self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: resp.version_info.clone(),
            resource_names: strings(names),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, resp: &DiscoveryResponse, accepted_version: &str, names: &[&str], message: &str) {
        self.send(DiscoveryRequest {
            version_info: accepted_version.to_string(),
            resource_names: strings(names),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(rpc::Status { code: 3, message: message.to_string(), details: vec![] }),
            ..Default::default()
        })
        .await;
    }
}

pub fn delta_request(
    node: Option<&Node>,
    type_url: &str,
    subscribe: &[&str],
    initial: &[(&str, &str)],
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node.cloned(),
        type_url: type_url.to_string(),
        resource_names_subscribe: strings(subscribe),
        initial_resource_versions: initial
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// A delta client driven by hand.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn connect(endpoint: &str, first: Vec<DeltaDiscoveryRequest>) -> DeltaClient {
        let (tx, rx) = mpsc::channel(64);
        for r in first {
            tx.try_send(r).unwrap();
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel(endpoint).await);
        let resp = tokio::time::timeout(WAIT, client.delta_aggregated_resources(Requests(rx)))
            .await
            .expect("response headers in time")
            .expect("stream opened");
        DeltaClient { tx, rx: resp.into_inner() }
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(s)) => panic!("stream failed: {s:?}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    pub async fn recv_err(&mut self) -> Status {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Err(s)) => s,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    pub async fn quiet(&mut self, what: &str) {
        if let Ok(m) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("{what}: expected nothing, got {m:?}");
        }
    }

    pub async fn ack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, resp: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(rpc::Status { code: 3, message: message.to_string(), details: vec![] }),
            ..Default::default()
        })
        .await;
    }
}
