//! Istio resources and registry instances translated into xDS v3 resources for one proxy.
//!
//! [`Mesh::build`] indexes a snapshot of the model once (per tenant: services by host with
//! their endpoints, VirtualServices, DestinationRules, Sidecars) and reports what it cannot
//! apply as [`Warning`]s. [`Mesh::generate`] is a pure function of the mesh and a proxy's
//! [`NodeInfo`]: Envoy-shaped listeners, routes, clusters and endpoints (Istio's names and
//! shapes, so stock Envoy, weft proxy and proxyless gRPC clients all understand them). The
//! outbound part depends only on the proxy's *scope* (tenant, namespace, Sidecar, generator,
//! matching label selectors, locality) and is cached inside the mesh, so proxies sharing a
//! scope share the same `Arc<Resource>`s. docs/translation.md lists every rule.
#![forbid(unsafe_code)]

mod cluster;
mod dns;
mod grpc;
mod http_proxy;
mod index;
mod listener;
pub mod naming;
mod pb;
pub mod render;
mod route;
mod scope;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use weft_istio::registry::Instance;
use weft_istio::{Address, CaptureMode, Key, OutboundMode, Resolution, Resource, Spec};
use weft_xds::{Generator, NodeInfo, ResourceSet};

use crate::index::Tenant;
use crate::listener::InboundPort;
use crate::naming::{inbound_cluster, outbound_cluster, resolve_host};
use crate::scope::{matching_selectors, proxy_locality, select_sidecar, Scope, ScopeKey, ScopeProxy};

pub use crate::dns::{REGISTRY_EXTERNAL, REGISTRY_KUBERNETES};
pub use crate::route::{DEFAULT_RETRIABLE_STATUS, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON};

/// Istio's default DNS domain suffix.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";
/// At most this many scopes are cached per mesh; past it the cache starts over.
pub const MAX_CACHED_SCOPES: usize = 4096;

/// Everything the translation reads: one consistent snapshot.
#[derive(Clone, Debug, Default)]
pub struct Input {
    pub resources: Vec<Arc<Resource>>,
    pub instances: Vec<weft_istio::registry::Instance>,
    /// Allocated VIPs for ServiceEntry hosts without addresses, by (tenant, host).
    pub vips: BTreeMap<(String, String), IpAddr>,
    pub options: Options,
}

/// Mesh-wide settings (Istio's MeshConfig equivalents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The DNS suffix of Kubernetes-style hosts (`cluster.local`).
    pub domain_suffix: String,
    /// Routes without `retries` get Istio's default retry policy (2 attempts on connect
    /// failures, refused streams, gRPC unavailable/cancelled and 503).
    pub default_retry: bool,
    /// Where unknown destinations go when the proxy's Sidecar does not say.
    pub outbound_mode: OutboundMode,
    /// Istio's mesh default `localityLbSetting: {enabled: true}`: with outlier detection on,
    /// endpoints get failover priorities relative to the proxy's locality.
    pub locality_lb: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            domain_suffix: DEFAULT_DOMAIN_SUFFIX.to_string(),
            default_retry: true,
            outbound_mode: OutboundMode::AllowAny,
            locality_lb: true,
        }
    }
}

/// Something in the model that is not applied as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub resource: Subject,
    pub message: String,
}

/// What a warning is about, and where a service comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// A stored Istio resource.
    Resource(Key),
    /// One registry instance.
    Instance { namespace: String, name: String },
    /// A service built from the instances of one namespace that declare its host.
    Service { namespace: String, host: String },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Resource(key) => key.fmt(f),
            Subject::Instance { namespace, name } => write!(f, "Instance {namespace}/{name}"),
            Subject::Service { namespace, host } => write!(f, "Service {namespace}/{host} (declared by instances)"),
        }
    }
}

impl Warning {
    pub fn new(resource: &Key, message: String) -> Warning {
        Warning { resource: Subject::Resource(resource.clone()), message }
    }

    pub fn about(subject: Subject, message: String) -> Warning {
        Warning { resource: subject, message }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.resource, self.message)
    }
}

/// An immutable, indexed snapshot of the mesh, with a cache of generated resources per scope.
pub struct Mesh {
    options: Options,
    tenants: BTreeMap<String, Tenant>,
    empty: Tenant,
    cache: Mutex<HashMap<ScopeKey, Arc<ResourceSet>>>,
    /// Name tables (NDS), built on first request per tenant, namespace and Sidecar.
    dns_cache: dns::DnsCache,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("options", &self.options)
            .field("tenants", &self.tenants.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Mesh {
    /// Indexes the input. Never fails: what cannot be applied is left out and reported.
    pub fn build(input: Input) -> (Mesh, Vec<Warning>) {
        let mut warnings = Vec::new();
        let tenants = index::build(&input, &mut warnings);
        warnings.sort();
        warnings.dedup();
        let mesh = Mesh {
            options: input.options,
            tenants,
            empty: Tenant::default(),
            cache: Mutex::new(HashMap::new()),
            dns_cache: Default::default(),
        };
        (mesh, warnings)
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Tenants that have at least one resource.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// The resources for one proxy: only its tenant's, only what its Sidecar imports.
    pub fn generate(&self, node: &NodeInfo) -> ResourceSet {
        let tenant = self.tenants.get(&node.tenant).unwrap_or(&self.empty);
        let sidecar = select_sidecar(tenant, &node.namespace, &node.labels);
        let locality = proxy_locality(tenant, node);
        let grpc = node.generator == Generator::Grpc;
        let key = ScopeKey {
            tenant: node.tenant.clone(),
            namespace: node.namespace.clone(),
            sidecar: sidecar.as_ref().map(|s| s.key.clone()),
            grpc,
            selectors: matching_selectors(tenant, &node.labels),
            locality: locality.clone(),
            labels: failover_labels(tenant, node),
            http_proxy: node.http_proxy_port.is_some() && !grpc,
        };
        let proxy = ScopeProxy { namespace: node.namespace.clone(), labels: node.labels.clone(), locality };
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let outbound = match cached {
            Some(set) => set,
            None => {
                let scope = Scope::new(tenant, &self.options, proxy.clone(), sidecar.clone());
                let set = Arc::new(if grpc { grpc::resources(&scope) } else { outbound_resources(&scope) });
                let set = if key.http_proxy { with_http_proxy(&scope, set) } else { set };
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= MAX_CACHED_SCOPES {
                        cache.clear();
                    }
                    cache.insert(key, set.clone());
                }
                set
            }
        };
        let mut out = (*outbound).clone();
        if !grpc {
            let scope = Scope::new_bare(tenant, &self.options, proxy, sidecar);
            inbound_resources(&scope, node, &mut out);
            if let Some(port) = node.http_proxy_port {
                let l = http_proxy::listener(port);
                insert(&mut out, &l.name.clone(), &l);
            }
        }
        out
    }

    /// How many scopes are cached (for tests and metrics).
    pub fn cached_scopes(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Hosts that need an allocated VIP, as `(tenant, host)` with short hosts resolved in their
    /// namespace under `cluster.local`: ServiceEntry hosts without `addresses`, not wildcards,
    /// with a resolution other than NONE (as Istio's auto-allocation), and hosts that registry
    /// instances declare (`Instance::service`) and no ServiceEntry of the tenant defines. A host
    /// drops out of the list when its last declaring instance is gone.
    pub fn hosts_needing_vips(resources: &[Arc<Resource>], instances: &[Instance]) -> Vec<(String, String)> {
        Self::hosts_needing_vips_in(resources, instances, DEFAULT_DOMAIN_SUFFIX)
    }

    /// [`Mesh::hosts_needing_vips`] for another DNS suffix.
    pub fn hosts_needing_vips_in(
        resources: &[Arc<Resource>],
        instances: &[Instance],
        domain_suffix: &str,
    ) -> Vec<(String, String)> {
        let mut out = BTreeSet::new();
        let mut defined = BTreeSet::new();
        for r in resources {
            let Spec::ServiceEntry(se) = &r.spec else { continue };
            for h in &se.hosts {
                let host = resolve_host(h, &r.meta.namespace, domain_suffix);
                defined.insert((r.tenant().to_string(), host.clone()));
                if se.addresses.is_empty() && se.resolution != Resolution::None && !host.starts_with('*') {
                    out.insert((r.tenant().to_string(), host));
                }
            }
        }
        for i in instances {
            let Some(service) = &i.service else { continue };
            let key = (i.tenant.clone(), resolve_host(&service.host, &i.namespace, domain_suffix));
            if !key.1.starts_with('*') && !defined.contains(&key) {
                out.insert(key);
            }
        }
        out.into_iter().collect()
    }

    /// Distinct service hosts per tenant (from ServiceEntries and from instances).
    pub fn service_count(&self) -> usize {
        self.tenants.values().map(|t| t.services.len()).sum()
    }
}

/// Values of the proxy labels that `failoverPriority` settings of its tenant look at.
fn failover_labels(tenant: &Tenant, node: &NodeInfo) -> Vec<(String, String)> {
    tenant.failover_labels.iter().filter_map(|k| node.labels.get(k).map(|v| (k.clone(), v.clone()))).collect()
}

fn insert<M: prost::Message + prost::Name>(set: &mut ResourceSet, name: &str, msg: &M) {
    set.insert(weft_xds::Resource::new(name, msg));
}

/// The scope's outbound resources plus what the HTTP-proxy listener needs: its routes
/// (`http_proxy`) and the forward proxy cluster.
fn with_http_proxy(scope: &Scope, set: Arc<ResourceSet>) -> Arc<ResourceSet> {
    let mut set = Arc::unwrap_or_clone(set);
    let rc = http_proxy::routes(scope, &set);
    insert(&mut set, &rc.name.clone(), &rc);
    let c = http_proxy::passthrough_cluster();
    insert(&mut set, &c.name.clone(), &c);
    Arc::new(set)
}

/// CDS and EDS for every visible service port and subset.
fn add_service_clusters(scope: &Scope, set: &mut ResourceSet) {
    for s in scope.services.values() {
        let rule = scope.destination_rule(s);
        for p in &s.ports {
            for built in cluster::service_port_clusters(scope, s, p, rule.as_ref()) {
                if let Some(cla) = &built.assignment {
                    insert(set, &cla.cluster_name, cla);
                }
                insert(set, &built.cluster.name.clone(), &built.cluster);
            }
        }
    }
}

/// The outbound resources of an Envoy/weft proxy scope.
fn outbound_resources(scope: &Scope) -> ResourceSet {
    let mut set = ResourceSet::default();
    add_service_clusters(scope, &mut set);
    for c in [cluster::passthrough(), cluster::blackhole(), cluster::inbound_passthrough()] {
        insert(&mut set, &c.name.clone(), &c);
    }
    for (port, services) in &scope.ports {
        let http = services.iter().any(|ps| {
            ps.service.port(*port).is_some_and(|p| {
                matches!(listener::port_kind(&p.protocol), listener::PortKind::Http | listener::PortKind::Sniffed)
            })
        });
        if http {
            let rc = route::port_routes(scope, *port, services);
            insert(&mut set, &rc.name.clone(), &rc);
        }
    }
    if !scope.egress.iter().all(|e| e.listener.capture_mode == CaptureMode::None) {
        let l = listener::virtual_outbound(scope);
        insert(&mut set, &l.name.clone(), &l);
    }
    for l in listener::bind_outbound(scope) {
        insert(&mut set, &l.name.clone(), &l);
    }
    set
}

/// The ports of the proxy's own workload: its Sidecar's ingress listeners when it has any,
/// else the service ports of every endpoint at one of the proxy's addresses.
fn inbound_ports(scope: &Scope, node: &NodeInfo) -> Vec<InboundPort> {
    let mut out: Vec<InboundPort> = Vec::new();
    let ingress = scope.sidecar.as_ref().map(|s| s.spec.ingress.as_slice()).unwrap_or_default();
    if !ingress.is_empty() {
        for l in ingress {
            let (target, target_port) = l
                .default_endpoint
                .as_deref()
                .and_then(|e| listener::parse_default_endpoint(e, node.ips.first().copied()))
                .unwrap_or((Address::Ip(IpAddr::from([127, 0, 0, 1])), l.port.number));
            let bind_mode = l.bind.is_some() || l.capture_mode == CaptureMode::None;
            out.push(InboundPort {
                port: l.port.number,
                protocol: l.port.protocol.clone(),
                target,
                target_port,
                // Without `bind`, a captureMode NONE ingress listener binds the workload's own
                // address (its first INSTANCE_IPS entry), as Istio does, so that several
                // workloads on one host can serve the same port.
                bind: bind_mode.then(|| {
                    l.bind
                        .clone()
                        .unwrap_or_else(|| node.ips.first().map_or("0.0.0.0".to_string(), |ip| ip.to_string()))
                }),
            });
        }
        return out;
    }
    for ip in &node.ips {
        for s in scope.tenant.by_ip.get(ip).into_iter().flatten() {
            for e in s.endpoints.iter().filter(|e| e.address == Address::Ip(*ip)) {
                for p in &s.ports {
                    let target = e.target_port(p);
                    if out.iter().any(|x| x.port == target) {
                        continue;
                    }
                    out.push(InboundPort {
                        port: target,
                        protocol: p.protocol.clone(),
                        target: Address::Ip(IpAddr::from([127, 0, 0, 1])),
                        target_port: target,
                        bind: None,
                    });
                }
            }
        }
    }
    out.sort_by_key(|p| p.port);
    out
}

/// The inbound resources of one proxy (they depend on its addresses, so they are not cached).
fn inbound_resources(scope: &Scope, node: &NodeInfo, set: &mut ResourceSet) {
    let ports = inbound_ports(scope, node);
    for p in &ports {
        let name = inbound_cluster(p.port);
        let c = cluster::inbound(&name, &p.target, p.target_port, &p.protocol);
        insert(set, &name, &c);
    }
    let ingress = scope.sidecar.as_ref().map(|s| s.spec.ingress.as_slice()).unwrap_or_default();
    let egress_none =
        scope.sidecar.is_some() && scope.egress.iter().all(|e| e.listener.capture_mode == CaptureMode::None);
    let inbound_captured =
        if ingress.is_empty() { !egress_none } else { ingress.iter().any(|l| l.capture_mode != CaptureMode::None) };
    if inbound_captured {
        let l = listener::virtual_inbound(&ports);
        insert(set, &l.name.clone(), &l);
    }
    for l in listener::bind_inbound(&ports) {
        insert(set, &l.name.clone(), &l);
    }
}

/// The cluster name of a service port (for callers outside the generators, e.g. `weft check`).
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    outbound_cluster(port, subset.unwrap_or(""), host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mesh_is_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Mesh>();
    }
}
