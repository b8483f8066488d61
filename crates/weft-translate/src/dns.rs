//! The DNS name table of one proxy (Istio's NDS): every name its clients may ask for a visible
//! service, with the service's stable virtual IPs. Built only for nodes that subscribe to it.
//!
//! For a host `NAME.NS.svc.SUFFIX` the table key is the host and `alt_hosts` carries `NAME.NS.svc`,
//! `NAME.NS` and, for proxies in `NS`, `NAME`; other hosts (ServiceEntry hosts such as
//! `api.example.com` or an RPC interface name `com.example.greeter`) are keys as written. Which
//! services are visible follows the proxy's other config: its tenant, `exportTo`, and its
//! Sidecar's egress hosts. Wildcard hosts and services without a VIP have no entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use weft_istio::Key;
use weft_xds::nds::{NameInfo, NameTable, RESOURCE_NAME};
use weft_xds::{type_url, NodeInfo, Resource, ResourceSet};

use crate::naming::short_names;
use crate::scope::{select_sidecar, Scope, ScopeProxy};
use crate::{Mesh, MAX_CACHED_SCOPES};

/// `registry` of hosts in the Kubernetes form (clients may derive short names from them).
pub const REGISTRY_KUBERNETES: &str = "Kubernetes";
/// `registry` of every other host.
pub const REGISTRY_EXTERNAL: &str = "External";

/// What a proxy's name table depends on: proxies with equal keys share the table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DnsKey {
    tenant: String,
    namespace: String,
    sidecar: Option<Key>,
}

/// Name tables built for a mesh, by key.
#[derive(Default)]
pub(crate) struct DnsCache(Mutex<HashMap<DnsKey, Arc<Resource>>>);

impl DnsCache {
    fn get(&self, key: &DnsKey) -> Option<Arc<Resource>> {
        self.0.lock().ok()?.get(key).cloned()
    }

    fn insert(&self, key: DnsKey, r: Arc<Resource>) {
        if let Ok(mut c) = self.0.lock() {
            if c.len() >= MAX_CACHED_SCOPES {
                c.clear();
            }
            c.insert(key, r);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// The name table of the services a scope sees. Pure.
pub fn name_table(scope: &Scope) -> NameTable {
    let suffix = &scope.opts.domain_suffix;
    let mut table = BTreeMap::new();
    for s in scope.services.values() {
        if s.is_wildcard() {
            continue;
        }
        let ips: BTreeSet<String> = s
            .addresses
            .iter()
            .filter(|c| c.prefix_len == if c.addr.is_ipv4() { 32 } else { 128 })
            .map(|c| c.addr.to_string())
            .collect();
        if ips.is_empty() {
            continue;
        }
        let (registry, shortname, namespace) = match kubernetes_parts(&s.host, suffix) {
            Some((name, ns)) => (REGISTRY_KUBERNETES, name, ns),
            None => (REGISTRY_EXTERNAL, "", ""),
        };
        let info = NameInfo {
            ips: ips.into_iter().collect(),
            registry: registry.to_string(),
            shortname: shortname.to_string(),
            namespace: namespace.to_string(),
            alt_hosts: Vec::new(),
        };
        table.insert(s.host.clone(), info);
    }
    // Short forms, unless they are a host of their own or already another host's.
    let mut claimed: BTreeSet<String> = table.keys().cloned().collect();
    for (host, info) in table.iter_mut() {
        for alt in short_names(host, &scope.proxy.namespace, suffix) {
            if claimed.insert(alt.clone()) {
                info.alt_hosts.push(alt);
            }
        }
    }
    NameTable { table, name_info: None }
}

/// `(NAME, NS)` of a host `NAME.NS.svc.SUFFIX`.
fn kubernetes_parts<'a>(host: &'a str, suffix: &str) -> Option<(&'a str, &'a str)> {
    let head = host.strip_suffix(suffix)?.strip_suffix(".svc.")?;
    let (name, ns) = head.split_once('.')?;
    (!name.is_empty() && !ns.is_empty() && !ns.contains('.')).then_some((name, ns))
}

impl Mesh {
    /// The name table resource of a proxy (type [`type_url::NAME_TABLE`], named
    /// [`RESOURCE_NAME`]), shared by proxies of the same tenant, namespace and Sidecar.
    pub fn name_table(&self, node: &NodeInfo) -> Arc<Resource> {
        let tenant = self.tenants.get(&node.tenant).unwrap_or(&self.empty);
        let sidecar = select_sidecar(tenant, &node.namespace, &node.labels);
        let key = DnsKey {
            tenant: node.tenant.clone(),
            namespace: node.namespace.clone(),
            sidecar: sidecar.as_ref().map(|s| s.key.clone()),
        };
        if let Some(r) = self.dns_cache.get(&key) {
            return r;
        }
        // Visibility depends on the namespace and the Sidecar only, not on labels or locality.
        let proxy = ScopeProxy { namespace: node.namespace.clone(), labels: Default::default(), locality: None };
        let scope = Scope::new(tenant, &self.options, proxy, sidecar);
        let r = Arc::new(Resource::new(RESOURCE_NAME, &name_table(&scope)));
        self.dns_cache.insert(key, r.clone());
        r
    }

    /// The resources of the types a proxy subscribes to: the name table only when it asks for
    /// it, and the listeners, routes, clusters and endpoints only when it asks for any other
    /// type, so a DNS client costs one cached table and a proxy without DNS costs no table.
    pub fn generate_for<S: AsRef<str>>(&self, node: &NodeInfo, types: &[S]) -> ResourceSet {
        let wants = |t: &str| types.iter().any(|x| x.as_ref() == t);
        let mut set = if types.iter().any(|t| t.as_ref() != type_url::NAME_TABLE) {
            self.generate(node)
        } else {
            Default::default()
        };
        if wants(type_url::NAME_TABLE) {
            let r = self.name_table(node);
            set.by_type.entry(type_url::NAME_TABLE.to_string()).or_default().insert(r.name.clone(), r);
        }
        set
    }

    /// How many name tables are cached (for tests and metrics).
    pub fn cached_name_tables(&self) -> usize {
        self.dns_cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_hosts_are_recognised() {
        let cases = [
            ("reviews.shop.svc.cluster.local", "cluster.local", Some(("reviews", "shop"))),
            ("reviews.shop.svc.corp.local", "cluster.local", None),
            ("a.b.c.svc.cluster.local", "cluster.local", None),
            ("api.example.com", "cluster.local", None),
            ("shop.svc.cluster.local", "cluster.local", None),
            ("com.example.greeter", "cluster.local", None),
        ];
        for (host, suffix, want) in cases {
            assert_eq!(kubernetes_parts(host, suffix), want, "{host}");
        }
    }
}
