//! Which VirtualService routes a host when several claim it (Istio's rule for the mesh: the
//! oldest by `metadata.creationTimestamp` wins, ties broken by namespace then name; the others
//! are ignored for that host and reported).

use std::collections::BTreeMap;

use crate::meta::{Key, Kind, Resource, Spec};
use crate::parse::parse_rfc3339;

/// A host claimed by more than one mesh VirtualService of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub tenant: String,
    /// The fully qualified host (`reviews` in namespace `default` is
    /// `reviews.default.svc.cluster.local` with domain suffix `cluster.local`).
    pub host: String,
    pub winner: Key,
    /// Oldest first.
    pub losers: Vec<Key>,
}

/// A host within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub tenant: String,
    pub host: String,
}

/// The outcome: for each (tenant, host), the VirtualService whose routes apply, and the conflicts.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<'a> {
    pub winners: BTreeMap<HostKey, &'a Resource>,
    pub conflicts: Vec<Conflict>,
}

/// Istio's short-name rule: a host without a dot is a Kubernetes-style service name in the
/// resource's namespace (`reviews` → `reviews.default.svc.cluster.local`); others stay as given
/// (lower-cased, since DNS names are case-insensitive).
pub fn qualify_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host == "*" {
        host
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

/// Resolves mesh VirtualServices (gateways empty or including `mesh`) host by host. Resources of
/// other kinds and gateway-only VirtualServices are ignored. A resource without a
/// creationTimestamp (never stored) counts as newer than every stored one.
pub fn resolve_virtual_services<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    domain_suffix: &str,
) -> Resolved<'a> {
    let mut claims: BTreeMap<HostKey, Vec<&'a Resource>> = BTreeMap::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else { continue };
        if r.kind != Kind::VirtualService || !vs.applies_to_mesh() {
            continue;
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &vs.hosts {
            let host = qualify_host(h, &r.meta.namespace, domain_suffix);
            if seen.insert(host.clone()) {
                claims.entry(HostKey { tenant: r.tenant().to_string(), host }).or_default().push(r);
            }
        }
    }
    let mut winners = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (hk, mut rs) in claims {
        rs.sort_by_key(|r| age_key(r));
        if rs.len() > 1 {
            conflicts.push(Conflict {
                tenant: hk.tenant.clone(),
                host: hk.host.clone(),
                winner: rs[0].key(),
                losers: rs[1..].iter().map(|r| r.key()).collect(),
            });
        }
        winners.insert(hk, rs[0]);
    }
    Resolved { winners, conflicts }
}

/// Oldest first; unstamped last; then namespace, name.
fn age_key(r: &Resource) -> (bool, (i64, u32), String, String) {
    let ts = r.meta.creation_timestamp.as_deref().and_then(parse_rfc3339);
    (ts.is_none(), ts.unwrap_or((0, 0)), r.meta.namespace.clone(), r.meta.name.clone())
}
