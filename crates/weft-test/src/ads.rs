//! A small scripted ADS server (tonic, loopback) for testing xDS clients: the test sets the
//! resources, the server answers both state-of-the-world and delta streams from them, and every
//! request a client sends is recorded for the test to look at.
//!
//! ```no_run
//! # async fn demo() {
//! use envoy_types::pb::envoy::config::cluster::v3::Cluster;
//! let ads = weft_test::ads::ScriptedAds::new();
//! let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
//! ads.set("c1", &Cluster { name: "c1".into(), ..Default::default() });
//! // ... point a client at `addr`, then look at what it sent:
//! let nacks = ads.seen().into_iter().filter(|s| s.error.is_some()).count();
//! # let _ = nacks;
//! ads.shutdown();
//! # }
//! ```
//!
//! Versions are a hash of each resource's bytes (delta) or of the set (SotW, `v-` prefixed), so
//! an unchanged resource is never sent twice on one stream. A delta subscription to a name that
//! does not exist is answered once in `removed_resources`, as servers do (unless
//! [`ScriptedAds::silent_on_absent`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::{Message, Name};
use tokio::sync::{mpsc, watch};

/// One request a client sent, as tests look at it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub type_url: String,
    pub nonce: String,
    /// The NACK's error detail message.
    pub error: Option<String>,
    /// Delta: names subscribed by this request; SotW: `resource_names`.
    pub names: Vec<String>,
    pub unsubscribed: Vec<String>,
    pub initial_versions: BTreeMap<String, String>,
    /// SotW only.
    pub version_info: String,
    pub has_node: bool,
}

#[derive(Default)]
struct State {
    resources: BTreeMap<String, BTreeMap<String, Any>>,
    seen: Vec<Seen>,
    refuse_delta: bool,
    silent_on_absent: bool,
}

/// The server; cheap to clone, every clone is the same server.
#[derive(Clone)]
pub struct ScriptedAds {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

impl Default for ScriptedAds {
    fn default() -> Self {
        ScriptedAds::new()
    }
}

/// The content version of one resource (FNV-1a of its bytes).
pub fn version_of(a: &Any) -> String {
    format!("{:x}", a.value.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3)))
}

/// `msg` packed as an `Any` of its own type.
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any { type_url: M::type_url(), value: msg.encode_to_vec() }
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Responses queued per stream; a client that stops reading holds up only its own stream.
const STREAM_QUEUE: usize = 16;

fn out_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> Out<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) }))
}

impl ScriptedAds {
    pub fn new() -> ScriptedAds {
        ScriptedAds { state: Default::default(), changed: watch::channel(0).0, stop: watch::channel(false).0 }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces resource `name` of `M`'s type; open streams are told.
    pub fn set<M: Message + Name>(&self, name: &str, msg: &M) {
        self.lock().resources.entry(M::type_url()).or_default().insert(name.to_string(), any(msg));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Removes resource `name` of `type_url`; open streams are told.
    pub fn remove(&self, type_url: &str, name: &str) {
        if let Some(m) = self.lock().resources.get_mut(type_url) {
            m.remove(name);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// From now on delta streams are refused with UNIMPLEMENTED (a SotW-only server).
    pub fn refuse_delta(&self, refuse: bool) {
        self.lock().refuse_delta = refuse;
    }

    /// From now on a delta subscription to a name that does not exist gets no answer (the
    /// server holds it back until it exists) instead of `removed_resources`.
    pub fn silent_on_absent(&self, silent: bool) {
        self.lock().silent_on_absent = silent;
    }

    /// The resources of one type.
    pub fn snapshot(&self, type_url: &str) -> BTreeMap<String, Any> {
        self.lock().resources.get(type_url).cloned().unwrap_or_default()
    }

    /// Serves on `addr` (port 0 for any) until [`ScriptedAds::shutdown`]; returns the bound address.
    pub async fn serve(&self, addr: SocketAddr) -> SocketAddr {
        self.stop.send_replace(false);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the ADS server");
        let local = listener.local_addr().expect("ADS server address");
        let mut stop = self.stop.subscribe();
        let svc = AggregatedDiscoveryServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        local
    }

    /// Ends every stream and stops listening: the control plane is gone.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    fn record(&self, seen: Seen) {
        self.lock().seen.push(seen);
    }
}

/// The SotW answer for one subscribed type, or `None` if the client already has this set.
fn sotw_response(
    ads: &ScriptedAds,
    ty: &str,
    names: &[String],
    sent: &mut Option<String>,
    nonce: &mut u64,
) -> Option<DiscoveryResponse> {
    let chosen: Vec<Any> =
        ads.snapshot(ty).into_iter().filter(|(n, _)| names.is_empty() || names.contains(n)).map(|(_, a)| a).collect();
    let version = chosen.iter().map(version_of).collect::<Vec<_>>().join(".");
    if sent.as_deref() == Some(version.as_str()) {
        return None;
    }
    *sent = Some(version.clone());
    *nonce += 1;
    Some(DiscoveryResponse {
        version_info: format!("v-{version}"),
        resources: chosen,
        type_url: ty.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    })
}

/// What one delta stream has subscribed to and what the client holds.
#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    known: BTreeMap<String, String>,
}

/// The delta answer for one subscribed type: what changed since the client's versions.
fn delta_response(ads: &ScriptedAds, ty: &str, sub: &mut DeltaSub, nonce: &mut u64) -> Option<DeltaDiscoveryResponse> {
    let all = ads.snapshot(ty);
    let mut resources = Vec::new();
    for (n, a) in all.iter().filter(|(n, _)| sub.wildcard || sub.names.contains(*n)) {
        let v = version_of(a);
        if sub.known.get(n) != Some(&v) {
            sub.known.insert(n.clone(), v.clone());
            resources.push(Resource { name: n.clone(), version: v, resource: Some(a.clone()), ..Default::default() });
        }
    }
    let removed: Vec<String> = sub.known.keys().filter(|n| !all.contains_key(*n)).cloned().collect();
    for n in &removed {
        sub.known.remove(n);
    }
    if resources.is_empty() && removed.is_empty() {
        return None;
    }
    *nonce += 1;
    Some(DeltaDiscoveryResponse {
        resources,
        removed_resources: removed,
        type_url: ty.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ScriptedAds {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ads = self.clone();
        tokio::spawn(async move {
            let (mut changed, mut stop) = (ads.changed.subscribe(), ads.stop.subscribe());
            // type → (subscribed names, last version_info sent)
            let mut subs: HashMap<String, (Vec<String>, Option<String>)> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    m = input.message() => {
                        let Ok(Some(r)) = m else { return };
                        ads.record(Seen {
                            type_url: r.type_url.clone(),
                            nonce: r.response_nonce.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                            names: r.resource_names.clone(),
                            unsubscribed: vec![],
                            initial_versions: BTreeMap::new(),
                            version_info: r.version_info.clone(),
                            has_node: r.node.is_some(),
                        });
                        let e = subs.entry(r.type_url.clone()).or_default();
                        if e.0 != r.resource_names || r.response_nonce.is_empty() {
                            e.0 = r.resource_names.clone();
                            e.1 = None;
                        }
                    }
                    _ = changed.changed() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                for (ty, (names, sent)) in subs.iter_mut() {
                    if let Some(resp) = sotw_response(&ads, ty, names, sent, &mut nonce) {
                        if tx.send(resp).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(out_stream(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        if self.lock().refuse_delta {
            return Err(tonic::Status::unimplemented("this server speaks state-of-the-world xDS only"));
        }
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let ads = self.clone();
        tokio::spawn(async move {
            let (mut changed, mut stop) = (ads.changed.subscribe(), ads.stop.subscribe());
            let mut subs: HashMap<String, DeltaSub> = HashMap::new();
            let mut nonce = 0u64;
            let mut not_found: Option<DeltaDiscoveryResponse> = None;
            loop {
                tokio::select! {
                    m = input.message() => {
                        let Ok(Some(r)) = m else { return };
                        ads.record(Seen {
                            type_url: r.type_url.clone(),
                            nonce: r.response_nonce.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                            names: r.resource_names_subscribe.clone(),
                            unsubscribed: r.resource_names_unsubscribe.clone(),
                            initial_versions: r.initial_resource_versions.clone().into_iter().collect(),
                            version_info: String::new(),
                            has_node: r.node.is_some(),
                        });
                        let first = !subs.contains_key(&r.type_url);
                        let sub = subs.entry(r.type_url.clone()).or_default();
                        if first {
                            sub.wildcard = r.resource_names_subscribe.is_empty();
                            sub.known = r.initial_resource_versions.clone().into_iter().collect();
                        }
                        sub.names.extend(r.resource_names_subscribe.iter().cloned());
                        for n in &r.resource_names_unsubscribe {
                            sub.names.remove(n);
                            sub.known.remove(n);
                        }
                        let all = ads.snapshot(&r.type_url);
                        let absent: Vec<String> =
                            r.resource_names_subscribe.iter().filter(|n| !all.contains_key(*n)).cloned().collect();
                        if !absent.is_empty() && !ads.lock().silent_on_absent {
                            nonce += 1;
                            not_found = Some(DeltaDiscoveryResponse {
                                removed_resources: absent,
                                type_url: r.type_url.clone(),
                                nonce: nonce.to_string(),
                                ..Default::default()
                            });
                        }
                    }
                    _ = changed.changed() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Some(resp) = not_found.take() {
                    if tx.send(resp).await.is_err() {
                        return;
                    }
                }
                for (ty, sub) in subs.iter_mut() {
                    if let Some(resp) = delta_response(&ads, ty, sub, &mut nonce) {
                        if tx.send(resp).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(out_stream(rx)))
    }
}
