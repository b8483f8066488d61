//! The ADS conversation as a pure state machine: which requests to send on a new stream, how a
//! response changes the [`Store`], which subscriptions follow, and the ACK or NACK that answers
//! it. The same machine speaks delta xDS and state-of-the-world; [`crate::client`] drives it
//! over a real stream.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource as PbResource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::{Message, Name};

use crate::store::{Decoded, Kind, Store};

/// Which variant of the xDS protocol a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `DeltaAggregatedResources`: incremental updates, per-resource versions.
    Delta,
    /// `StreamAggregatedResources`: every response carries the whole set of its type.
    Sotw,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Delta(DeltaDiscoveryRequest),
    Sotw(DiscoveryRequest),
}

impl Request {
    pub fn type_url(&self) -> &str {
        match self {
            Request::Delta(r) => &r.type_url,
            Request::Sotw(r) => &r.type_url,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Delta(DeltaDiscoveryResponse),
    Sotw(DiscoveryResponse),
}

/// google.rpc.Code INVALID_ARGUMENT, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;

#[derive(Clone, Debug, Default)]
struct TypeState {
    /// Names wanted (endpoints and routes; wildcard types use none).
    names: BTreeSet<String>,
    /// Delta: names the server was told about on this stream.
    told: BTreeSet<String>,
    /// The first request of this type went out on this stream.
    started: bool,
    /// Nonce of the last response of this type on this stream.
    nonce: String,
    /// State of the world: version_info of the last accepted response.
    version_info: String,
    /// A response of this type has been received (on any stream).
    responded: bool,
}

/// What a response did.
#[derive(Debug, Default, PartialEq)]
pub struct Handled {
    pub kind: Option<Kind>,
    pub nonce: String,
    /// Resources accepted or removed: the config needs assembling again.
    pub changed: bool,
    /// Resources accepted (new or updated versions).
    pub accepted: usize,
    /// One message per rejected resource.
    pub errors: Vec<String>,
    /// State of the world: the version to ACK.
    pub version_info: String,
}

pub struct Session {
    protocol: Protocol,
    node: Node,
    types: [TypeState; 4],
    /// The node goes only in the first request of a stream.
    node_sent: bool,
}

impl Session {
    pub fn new(protocol: Protocol, node: Node) -> Session {
        Session { protocol, node, types: Default::default(), node_sent: false }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Switches protocol (the server does not implement delta); takes effect on the next stream.
    pub fn set_protocol(&mut self, p: Protocol) {
        self.protocol = p;
    }

    /// Whether a response of `kind` has ever arrived.
    pub fn responded(&self, kind: Kind) -> bool {
        self.types[kind.index()].responded
    }

    fn node_once(&mut self) -> Option<Node> {
        if self.node_sent {
            None
        } else {
            self.node_sent = true;
            Some(self.node.clone())
        }
    }

    /// The requests that open a new stream: clusters and listeners as wildcards, then the
    /// endpoints and routes already known. Delta streams send the versions held
    /// (`initial_resource_versions`) so the server sends only what changed.
    pub fn open(&mut self, store: &Store) -> Vec<Request> {
        self.node_sent = false;
        for t in self.types.iter_mut() {
            t.told.clear();
            t.started = false;
            t.nonce.clear();
        }
        self.types[Kind::Endpoint.index()].names = store.eds_wanted();
        self.types[Kind::Route.index()].names = store.rds_wanted();
        let mut out = Vec::new();
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if !kind.wildcard() && self.types[kind.index()].names.is_empty() {
                continue;
            }
            out.push(self.initial(kind, store));
        }
        out
    }

    fn initial(&mut self, kind: Kind, store: &Store) -> Request {
        let node = self.node_once();
        let t = &mut self.types[kind.index()];
        t.started = true;
        match self.protocol {
            Protocol::Delta => {
                let versions = store.versions(kind);
                let initial_resource_versions: HashMap<String, String> = if kind.wildcard() {
                    versions.into_iter().collect()
                } else {
                    versions.into_iter().filter(|(n, _)| t.names.contains(n)).collect()
                };
                t.told = t.names.clone();
                Request::Delta(DeltaDiscoveryRequest {
                    node,
                    type_url: kind.url().to_string(),
                    // Empty on a wildcard type: the legacy wildcard every server understands.
                    resource_names_subscribe: t.names.iter().cloned().collect(),
                    initial_resource_versions,
                    ..Default::default()
                })
            }
            Protocol::Sotw => Request::Sotw(DiscoveryRequest {
                node,
                version_info: t.version_info.clone(),
                resource_names: t.names.iter().cloned().collect(),
                type_url: kind.url().to_string(),
                ..Default::default()
            }),
        }
    }

    /// Applies one response to the store. The caller answers with [`Session::ack`].
    pub fn handle(&mut self, resp: Response, store: &mut Store) -> Handled {
        match resp {
            Response::Delta(r) => self.handle_delta(r, store),
            Response::Sotw(r) => self.handle_sotw(r, store),
        }
    }

    fn handle_delta(&mut self, r: DeltaDiscoveryResponse, store: &mut Store) -> Handled {
        let mut h = Handled { nonce: r.nonce.clone(), ..Handled::default() };
        let Some(kind) = Kind::from_url(&r.type_url) else {
            h.errors.push(format!("unsupported type {:?}", r.type_url));
            return h;
        };
        h.kind = Some(kind);
        let t = &mut self.types[kind.index()];
        t.nonce = r.nonce.clone();
        t.responded = true;
        for res in &r.resources {
            let Some(body) = &res.resource else {
                // A resource without a body only refreshes a TTL; weft does not use TTLs.
                continue;
            };
            put(store, kind, &res.name, &res.version, body, &mut h);
        }
        for name in r.removed_resources.iter().chain(r.removed_resource_names.iter().map(|n| &n.name)) {
            if store.remove(kind, name) {
                h.changed = true;
            }
        }
        h
    }

    fn handle_sotw(&mut self, r: DiscoveryResponse, store: &mut Store) -> Handled {
        let mut h = Handled { nonce: r.nonce.clone(), version_info: r.version_info.clone(), ..Handled::default() };
        let Some(kind) = Kind::from_url(&r.type_url) else {
            h.errors.push(format!("unsupported type {:?}", r.type_url));
            return h;
        };
        h.kind = Some(kind);
        {
            let t = &mut self.types[kind.index()];
            t.nonce = r.nonce.clone();
            t.responded = true;
        }
        let mut seen = BTreeSet::new();
        // A resource whose name cannot be read might be one already held: then nothing is removed.
        let mut unnamed = false;
        for (i, any) in r.resources.iter().enumerate() {
            // Resources may come wrapped in `envoy.service.discovery.v3.Resource`.
            let (name, body) = if any.type_url == PbResource::type_url() {
                match PbResource::decode(any.value.as_slice()) {
                    Ok(PbResource { resource: Some(body), name, .. }) => (Some(name).filter(|n| !n.is_empty()), body),
                    Ok(_) => continue,
                    Err(e) => {
                        h.errors.push(format!("{} resources[{i}]: cannot decode Resource: {e}", kind.short()));
                        unnamed = true;
                        continue;
                    }
                }
            } else {
                (None, any.clone())
            };
            let name = match name {
                Some(n) => n,
                None => match Decoded::decode(kind, &body) {
                    Ok(d) => d.name().to_string(),
                    Err(e) => {
                        h.errors.push(format!("{} resources[{i}]: {e}", kind.short()));
                        unnamed = true;
                        continue;
                    }
                },
            };
            seen.insert(name.clone());
            // Versions per resource come from content: unchanged resources are not converted again.
            let version = content_version(&body);
            put(store, kind, &name, &version, &body, &mut h);
        }
        // For clusters and listeners a response is the whole set: what is absent is gone.
        if kind.wildcard() && !unnamed {
            for name in store.names(kind) {
                if !seen.contains(&name) && store.remove(kind, &name) {
                    h.changed = true;
                }
            }
        }
        h
    }

    /// The ACK (no errors) or NACK for a handled response; `extra` are errors found later (the
    /// proxy could not bind a listener of this response).
    pub fn ack(&mut self, h: &Handled, extra: &[String]) -> Option<Request> {
        let kind = h.kind?;
        let errors: Vec<&String> = h.errors.iter().chain(extra).collect();
        let error_detail = (!errors.is_empty()).then(|| RpcStatus {
            code: INVALID_ARGUMENT,
            message: errors.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
            details: vec![],
        });
        let t = &mut self.types[kind.index()];
        Some(match self.protocol {
            Protocol::Delta => Request::Delta(DeltaDiscoveryRequest {
                type_url: kind.url().to_string(),
                response_nonce: h.nonce.clone(),
                error_detail,
                ..Default::default()
            }),
            Protocol::Sotw => {
                if error_detail.is_none() {
                    t.version_info = h.version_info.clone();
                }
                Request::Sotw(DiscoveryRequest {
                    version_info: t.version_info.clone(),
                    resource_names: t.names.iter().cloned().collect(),
                    type_url: kind.url().to_string(),
                    response_nonce: h.nonce.clone(),
                    error_detail,
                    ..Default::default()
                })
            }
        })
    }

    /// A NACK of `kind`'s latest response for errors found after it was acknowledged.
    pub fn late_nack(&mut self, kind: Kind, errors: &[String]) -> Option<Request> {
        let t = &self.types[kind.index()];
        if t.nonce.is_empty() || errors.is_empty() {
            return None;
        }
        let h = Handled {
            kind: Some(kind),
            nonce: t.nonce.clone(),
            version_info: t.version_info.clone(),
            ..Handled::default()
        };
        self.ack(&h, errors)
    }

    /// Subscribes to the endpoints and routes the store's clusters and listeners now name,
    /// unsubscribes from the rest, and drops what is no longer wanted from the store.
    pub fn resubscribe(&mut self, store: &mut Store) -> Vec<Request> {
        let mut out = Vec::new();
        for (kind, wanted) in [(Kind::Endpoint, store.eds_wanted()), (Kind::Route, store.rds_wanted())] {
            let t = &mut self.types[kind.index()];
            if t.names == wanted && t.started {
                continue;
            }
            if !t.started && wanted.is_empty() {
                t.names = wanted;
                continue;
            }
            t.names = wanted;
            match self.protocol {
                Protocol::Delta => {
                    let subscribe: Vec<String> = t.names.difference(&t.told).cloned().collect();
                    let unsubscribe: Vec<String> = t.told.difference(&t.names).cloned().collect();
                    if subscribe.is_empty() && unsubscribe.is_empty() {
                        continue;
                    }
                    t.told = t.names.clone();
                    let first = !t.started;
                    t.started = true;
                    let node = if first { self.node_once() } else { None };
                    out.push(Request::Delta(DeltaDiscoveryRequest {
                        node,
                        type_url: kind.url().to_string(),
                        resource_names_subscribe: subscribe,
                        resource_names_unsubscribe: unsubscribe,
                        ..Default::default()
                    }));
                }
                Protocol::Sotw => {
                    t.started = true;
                    let (version_info, nonce, names) = (t.version_info.clone(), t.nonce.clone(), t.names.clone());
                    let node = self.node_once();
                    out.push(Request::Sotw(DiscoveryRequest {
                        node,
                        version_info,
                        resource_names: names.into_iter().collect(),
                        type_url: kind.url().to_string(),
                        response_nonce: nonce,
                        ..Default::default()
                    }));
                }
            }
        }
        store.drop_unwanted();
        out
    }
}

fn put(store: &mut Store, kind: Kind, name: &str, version: &str, body: &Any, h: &mut Handled) {
    match store.put_any(kind, name, version, body) {
        Ok(r) => {
            if r.changed {
                h.changed = true;
                h.accepted += 1;
            }
        }
        Err(e) => h.errors.push(e),
    }
}

/// A stable version from a resource's bytes (state of the world has no per-resource versions).
fn content_version(body: &Any) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body.value.iter() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}
