//! The latest accepted xDS resources, converted, and their assembly into one
//! [`ProxyConfig`]. Pure: no I/O, no clocks.
//!
//! A resource that fails conversion is recorded as rejected and the previously accepted version
//! of it (if any) stays. Resources whose name collides with a resource of the static bootstrap,
//! or a listener whose address another listener holds, are rejected the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as PbAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as PbRoute;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use weft_config::{LocalityEndpoints, ProxyConfig, RouteConfig};
use weft_xds::type_url;

use crate::convert::{self, ClusterSpec, ListenerSpec};

/// The four resource types a proxy consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn url(self) -> &'static str {
        match self {
            Kind::Cluster => type_url::CLUSTER,
            Kind::Endpoint => type_url::ENDPOINT,
            Kind::Listener => type_url::LISTENER,
            Kind::Route => type_url::ROUTE,
        }
    }

    pub fn from_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.url() == url)
    }

    /// `CDS`, `EDS`, `LDS`, `RDS`.
    pub fn short(self) -> &'static str {
        type_url::short(self.url())
    }

    /// Clusters and listeners are subscribed as a whole (wildcard); endpoints and routes by name.
    pub fn wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An accepted resource: the version the server gave it and its converted form.
#[derive(Clone, Debug)]
pub struct Entry<T> {
    pub version: String,
    pub value: T,
    /// The resource as received, kept when the store persists its config (`--xds-cache`).
    pub raw: Option<Arc<Any>>,
}

/// Why a resource is not serving at the version the server sent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub version: String,
    pub error: String,
}

/// A decoded resource, ready to be converted.
pub enum Decoded {
    Cluster(Box<PbCluster>),
    Endpoint(Box<PbAssignment>),
    Listener(Box<PbListener>),
    Route(Box<PbRoute>),
}

impl Decoded {
    /// Decodes `body`, which must be of type `kind`.
    pub fn decode(kind: Kind, body: &Any) -> Result<Decoded, String> {
        if body.type_url != kind.url() {
            return Err(format!("resource of type {} in a {} response", body.type_url, kind.short()));
        }
        let bytes = body.value.as_slice();
        let err = |e: prost::DecodeError| format!("cannot decode {}: {e}", kind.short());
        Ok(match kind {
            Kind::Cluster => Decoded::Cluster(Box::new(PbCluster::decode(bytes).map_err(err)?)),
            Kind::Endpoint => Decoded::Endpoint(Box::new(PbAssignment::decode(bytes).map_err(err)?)),
            Kind::Listener => Decoded::Listener(Box::new(PbListener::decode(bytes).map_err(err)?)),
            Kind::Route => Decoded::Route(Box::new(PbRoute::decode(bytes).map_err(err)?)),
        })
    }

    /// The resource's own name (a cluster load assignment is named by its cluster).
    pub fn name(&self) -> &str {
        match self {
            Decoded::Cluster(c) => &c.name,
            Decoded::Endpoint(e) => &e.cluster_name,
            Decoded::Listener(l) => &l.name,
            Decoded::Route(r) => &r.name,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    /// Static resources from the bootstrap file; always part of the config, never replaced.
    base: Arc<ProxyConfig>,
    clusters: BTreeMap<String, Entry<ClusterSpec>>,
    endpoints: BTreeMap<String, Entry<Vec<LocalityEndpoints>>>,
    /// `None`: an API listener (proxyless gRPC), accepted and ignored.
    listeners: BTreeMap<String, Entry<Option<ListenerSpec>>>,
    routes: BTreeMap<String, Entry<Arc<RouteConfig>>>,
    /// Listeners as last applied, to fall back to when the proxy cannot bind a new version.
    applied_listeners: BTreeMap<String, Entry<Option<ListenerSpec>>>,
    rejected: BTreeMap<(Kind, String), Rejection>,
    /// Endpoints and routes the server said do not exist: not waited for.
    absent: BTreeSet<(Kind, String)>,
    /// Keep each resource as received (for the persisted config).
    keep_raw: bool,
}

/// What changed in the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PutResult {
    pub changed: bool,
}

impl Store {
    pub fn new(base: Arc<ProxyConfig>) -> Store {
        Store { base, ..Store::default() }
    }

    /// Keeps every resource accepted from now on as received, for [`Store::raw_resources`].
    pub fn keep_raw(&mut self) {
        self.keep_raw = true;
    }

    /// Decodes and accepts (or rejects) one resource as received; the message of an error names
    /// the type and resource.
    pub fn put_any(&mut self, kind: Kind, name: &str, version: &str, body: &Any) -> Result<PutResult, String> {
        let decoded = Decoded::decode(kind, body).map_err(|e| format!("{} {name:?}: {e}", kind.short()))?;
        let r = self.put(kind, name, version, decoded)?;
        if self.keep_raw && (r.changed || self.raw(kind, name).is_none()) {
            let raw = Some(Arc::new(body.clone()));
            match kind {
                Kind::Cluster => self.clusters.get_mut(name).map(|e| e.raw = raw),
                Kind::Endpoint => self.endpoints.get_mut(name).map(|e| e.raw = raw),
                Kind::Listener => self.listeners.get_mut(name).map(|e| e.raw = raw),
                Kind::Route => self.routes.get_mut(name).map(|e| e.raw = raw),
            };
        }
        Ok(r)
    }

    fn raw(&self, kind: Kind, name: &str) -> Option<&Arc<Any>> {
        match kind {
            Kind::Cluster => self.clusters.get(name)?.raw.as_ref(),
            Kind::Endpoint => self.endpoints.get(name)?.raw.as_ref(),
            Kind::Listener => self.listeners.get(name)?.raw.as_ref(),
            Kind::Route => self.routes.get(name)?.raw.as_ref(),
        }
    }

    /// Every accepted resource kept as received: `(type, name, version, body)`, by type and name.
    pub fn raw_resources(&self) -> Vec<(Kind, String, String, Arc<Any>)> {
        fn collect<T>(kind: Kind, m: &BTreeMap<String, Entry<T>>, out: &mut Vec<(Kind, String, String, Arc<Any>)>) {
            for (n, e) in m {
                if let Some(raw) = &e.raw {
                    out.push((kind, n.clone(), e.version.clone(), raw.clone()));
                }
            }
        }
        let mut out = Vec::new();
        collect(Kind::Cluster, &self.clusters, &mut out);
        collect(Kind::Endpoint, &self.endpoints, &mut out);
        collect(Kind::Listener, &self.listeners, &mut out);
        collect(Kind::Route, &self.routes, &mut out);
        out
    }

    /// Version of `name` as accepted, if it is.
    pub fn version(&self, kind: Kind, name: &str) -> Option<&str> {
        match kind {
            Kind::Cluster => self.clusters.get(name).map(|e| e.version.as_str()),
            Kind::Endpoint => self.endpoints.get(name).map(|e| e.version.as_str()),
            Kind::Listener => self.listeners.get(name).map(|e| e.version.as_str()),
            Kind::Route => self.routes.get(name).map(|e| e.version.as_str()),
        }
    }

    /// Accepted names and versions of one type.
    pub fn versions(&self, kind: Kind) -> BTreeMap<String, String> {
        fn vs<T>(m: &BTreeMap<String, Entry<T>>) -> BTreeMap<String, String> {
            m.iter().map(|(k, e)| (k.clone(), e.version.clone())).collect()
        }
        match kind {
            Kind::Cluster => vs(&self.clusters),
            Kind::Endpoint => vs(&self.endpoints),
            Kind::Listener => vs(&self.listeners),
            Kind::Route => vs(&self.routes),
        }
    }

    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.versions(kind).into_keys().collect()
    }

    pub fn rejected(&self) -> &BTreeMap<(Kind, String), Rejection> {
        &self.rejected
    }

    /// Accepts or rejects one resource. `Err` carries the message for the NACK; the previously
    /// accepted version (if any) stays in that case.
    pub fn put(&mut self, kind: Kind, name: &str, version: &str, decoded: Decoded) -> Result<PutResult, String> {
        if self.version(kind, name) == Some(version) {
            self.rejected.remove(&(kind, name.to_string()));
            return Ok(PutResult { changed: false });
        }
        match self.convert(kind, name, decoded) {
            Ok(()) => {
                self.absent.remove(&(kind, name.to_string()));
                self.set_version(kind, name, version);
                self.rejected.remove(&(kind, name.to_string()));
                Ok(PutResult { changed: true })
            }
            Err(e) => {
                self.rejected
                    .insert((kind, name.to_string()), Rejection { version: version.to_string(), error: e.clone() });
                Err(e)
            }
        }
    }

    fn set_version(&mut self, kind: Kind, name: &str, version: &str) {
        let v = version.to_string();
        match kind {
            Kind::Cluster => self.clusters.get_mut(name).map(|e| e.version = v),
            Kind::Endpoint => self.endpoints.get_mut(name).map(|e| e.version = v),
            Kind::Listener => self.listeners.get_mut(name).map(|e| e.version = v),
            Kind::Route => self.routes.get_mut(name).map(|e| e.version = v),
        };
    }

    fn convert(&mut self, kind: Kind, name: &str, decoded: Decoded) -> Result<(), String> {
        let own = decoded.name();
        if own != name {
            return Err(format!("{} {name:?}: its name is {own:?}", kind_message(kind)));
        }
        let clash = |what: &str| Err(format!("{} {name:?}: name: a static {what} has this name", kind_message(kind)));
        match decoded {
            Decoded::Cluster(c) => {
                if self.base.clusters.contains_key(name) {
                    return clash("cluster");
                }
                let spec = convert::cluster(&c).map_err(|e| e.to_string())?;
                self.clusters.insert(name.to_string(), Entry { version: String::new(), value: spec, raw: None });
            }
            Decoded::Endpoint(a) => {
                let spec = convert::endpoints(&a).map_err(|e| e.to_string())?;
                self.endpoints
                    .insert(name.to_string(), Entry { version: String::new(), value: spec.localities, raw: None });
            }
            Decoded::Listener(l) => {
                if self.base.listeners.iter().any(|x| x.name == name) {
                    return clash("listener");
                }
                let spec = convert::listener(&l).map_err(|e| e.to_string())?;
                if let Some(s) = &spec {
                    let addr = s.listener.address;
                    let taken = self
                        .listeners
                        .iter()
                        .filter(|(n, _)| n.as_str() != name)
                        .filter_map(|(n, e)| e.value.as_ref().map(|v| (n.as_str(), v.listener.address)))
                        .chain(self.base.listeners.iter().map(|x| (x.name.as_str(), x.address)))
                        .find(|(_, a)| addr.port() != 0 && *a == addr);
                    if let Some((other, _)) = taken {
                        return Err(format!("Listener {name:?}: address: {addr} is used by listener {other:?}"));
                    }
                }
                self.listeners.insert(name.to_string(), Entry { version: String::new(), value: spec, raw: None });
            }
            Decoded::Route(r) => {
                if self.base.route_configs.contains_key(name) {
                    return clash("route configuration");
                }
                let rc = convert::route_configuration(&r).map_err(|e| e.to_string())?;
                self.routes.insert(name.to_string(), Entry { version: String::new(), value: Arc::new(rc), raw: None });
            }
        }
        Ok(())
    }

    /// Removes a resource the server deleted (or says does not exist). Returns whether it was
    /// there.
    pub fn remove(&mut self, kind: Kind, name: &str) -> bool {
        self.rejected.remove(&(kind, name.to_string()));
        if !kind.wildcard() {
            self.absent.insert((kind, name.to_string()));
        }
        match kind {
            Kind::Cluster => self.clusters.remove(name).is_some(),
            Kind::Endpoint => self.endpoints.remove(name).is_some(),
            Kind::Listener => self.listeners.remove(name).is_some(),
            Kind::Route => self.routes.remove(name).is_some(),
        }
    }

    /// Assignments the EDS clusters need (their subscriptions).
    pub fn eds_wanted(&self) -> BTreeSet<String> {
        self.clusters.values().filter_map(|e| e.value.eds_service.clone()).collect()
    }

    /// Route configurations the listeners fetch over RDS (static ones excluded).
    pub fn rds_wanted(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|e| e.value.as_ref())
            .flat_map(|s| s.rds.iter().cloned())
            .filter(|n| !self.base.route_configs.contains_key(n))
            .collect()
    }

    /// Forgets endpoints and routes no cluster or listener needs any more. Returns whether any
    /// were dropped.
    pub fn drop_unwanted(&mut self) -> bool {
        let eds = self.eds_wanted();
        let rds = self.rds_wanted();
        let before = self.endpoints.len() + self.routes.len();
        self.endpoints.retain(|n, _| eds.contains(n));
        self.routes.retain(|n, _| rds.contains(n));
        let wanted = |k: &Kind, n: &String| match k {
            Kind::Endpoint => eds.contains(n),
            Kind::Route => rds.contains(n),
            _ => true,
        };
        self.rejected.retain(|(k, n), _| wanted(k, n));
        self.absent.retain(|(k, n)| wanted(k, n));
        before != self.endpoints.len() + self.routes.len()
    }

    /// What the accepted resources refer to but the store does not have yet (and the server has
    /// not said does not exist).
    pub fn missing(&self) -> Vec<(Kind, String)> {
        let eds =
            self.eds_wanted().into_iter().filter(|n| !self.endpoints.contains_key(n)).map(|n| (Kind::Endpoint, n));
        let rds = self.rds_wanted().into_iter().filter(|n| !self.routes.contains_key(n)).map(|n| (Kind::Route, n));
        eds.chain(rds).filter(|k| !self.absent.contains(k)).collect()
    }

    /// A content fingerprint of everything accepted (and the static part): equal fingerprints,
    /// equal configs.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        let mut eat = |b: &[u8]| {
            for x in b.iter().chain(b"\0") {
                h ^= *x as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        };
        eat(self.base.version.as_bytes());
        for kind in Kind::ALL {
            eat(kind.short().as_bytes());
            for (n, v) in self.versions(kind) {
                eat(n.as_bytes());
                eat(v.as_bytes());
            }
        }
        format!("xds-{h:016x}")
    }

    /// The whole traffic config: static resources, then the accepted dynamic ones, with EDS
    /// assignments filled into their clusters.
    pub fn assemble(&self) -> ProxyConfig {
        let mut cfg = (*self.base).clone();
        cfg.version = self.fingerprint();
        for (name, e) in &self.clusters {
            let spec = &e.value;
            let mut cluster = spec.cluster.clone();
            if let Some(service) = &spec.eds_service {
                if let Some(a) = self.endpoints.get(service) {
                    let mut localities = a.value.clone();
                    convert::weigh_localities(&mut localities, spec.locality_weighted);
                    cluster.localities = localities;
                }
            }
            cfg.clusters.insert(name.clone(), Arc::new(cluster));
        }
        for (name, e) in &self.routes {
            cfg.route_configs.insert(name.clone(), e.value.clone());
        }
        for e in self.listeners.values() {
            if let Some(s) = &e.value {
                cfg.listeners.push(Arc::new(s.listener.clone()));
            }
        }
        cfg
    }

    /// Remembers the listeners as applied (the fallback for [`Store::revert_listener`]).
    pub fn mark_applied(&mut self) {
        self.applied_listeners = self.listeners.clone();
    }

    /// The proxy could not put listener `name` in place: go back to the version last applied
    /// (or drop it) and record why. Returns false when the store has no such listener.
    pub fn revert_listener(&mut self, name: &str, error: String) -> bool {
        let Some(current) = self.listeners.get(name) else { return false };
        let version = current.version.clone();
        match self.applied_listeners.get(name) {
            Some(prev) if prev.version != version => {
                self.listeners.insert(name.to_string(), prev.clone());
            }
            _ => {
                self.listeners.remove(name);
            }
        }
        self.rejected.insert((Kind::Listener, name.to_string()), Rejection { version, error });
        true
    }
}

fn kind_message(kind: Kind) -> &'static str {
    match kind {
        Kind::Cluster => "Cluster",
        Kind::Endpoint => "ClusterLoadAssignment",
        Kind::Listener => "Listener",
        Kind::Route => "RouteConfiguration",
    }
}
