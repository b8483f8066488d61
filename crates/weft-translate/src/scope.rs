//! What one proxy sees: its Sidecar (egress listeners, outbound mode), the services visible on
//! each port, and the VirtualService and DestinationRule that apply to each service. Everything
//! here depends only on the scope key (tenant, namespace, Sidecar, generator, which label
//! selectors match the proxy, locality), so proxies sharing a key share the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_istio::{
    CaptureMode, EgressListener, Key, Labels, Locality, OutboundMode, Subset, TrafficPolicy, WorkloadSelector,
};
use weft_xds::NodeInfo;

use crate::index::{DrEntry, Service, SidecarEntry, Tenant, VsEntry};
use crate::naming::{exported_to, host_matches, resolve_host, specificity, ROOT_NAMESPACE};
use crate::Options;

/// The cache key of a scope: proxies with equal keys receive identical outbound resources.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    pub tenant: String,
    pub namespace: String,
    pub sidecar: Option<Key>,
    pub grpc: bool,
    /// Indices (into `Tenant::selectors`) of the label selectors the proxy's labels satisfy.
    pub selectors: Vec<u16>,
    pub locality: Option<Locality>,
    /// The proxy's values of the labels named by `failoverPriority` settings.
    pub labels: Vec<(String, String)>,
    /// The proxy asked for an HTTP-proxy listener: its routes and cluster are part of the set.
    pub http_proxy: bool,
}

/// The proxy identity a scope is computed from (only what the key captures).
#[derive(Clone, Debug)]
pub struct ScopeProxy {
    pub namespace: String,
    pub labels: Labels,
    pub locality: Option<Locality>,
}

/// One egress listener of the effective Sidecar (or the default "everything" listener).
#[derive(Clone, Debug)]
pub struct Egress {
    pub listener: EgressListener,
    /// The namespace of the Sidecar it comes from (for `./host`).
    pub namespace: String,
}

impl Egress {
    /// Bind mode: the application connects to `bind:port` itself (explicit bind, or captureMode
    /// NONE, which binds 127.0.0.1 when no address is given, as Istio does).
    pub fn bind_mode(&self) -> bool {
        self.listener.bind.is_some() || self.listener.capture_mode == CaptureMode::None
    }

    pub fn bind_address(&self) -> String {
        self.listener.bind.clone().unwrap_or_else(|| "127.0.0.1".to_string())
    }

    /// Whether the listener's `hosts` import a service.
    pub fn imports(&self, s: &Service, domain_suffix: &str) -> bool {
        self.listener.hosts.iter().any(|h| {
            let ns_ok = match h.namespace.as_str() {
                "*" => true,
                "~" => false,
                "." => s.namespace == self.namespace,
                ns => s.namespace == ns,
            };
            if !ns_ok {
                return false;
            }
            let pattern = match h.namespace.as_str() {
                "*" | "~" => h.host.to_ascii_lowercase(),
                "." => resolve_host(&h.host, &self.namespace, domain_suffix),
                ns => resolve_host(&h.host, ns, domain_suffix),
            };
            host_matches(&pattern, &s.host)
        })
    }
}

/// A service visible on one port, with the egress listener that imports it there.
#[derive(Clone, Debug)]
pub struct PortService {
    pub service: Arc<Service>,
    pub egress: usize,
}

/// The computed view of a scope.
pub struct Scope<'a> {
    pub tenant: &'a Tenant,
    pub opts: &'a Options,
    pub proxy: ScopeProxy,
    pub sidecar: Option<Arc<SidecarEntry>>,
    pub egress: Vec<Egress>,
    pub outbound_mode: OutboundMode,
    /// Port → services visible on it (sorted by host).
    pub ports: BTreeMap<u16, Vec<PortService>>,
    /// Host → the visible service (all ports).
    pub services: BTreeMap<String, Arc<Service>>,
}

/// Picks the Sidecar of a proxy: one in its namespace whose selector matches its labels, else
/// the namespace's Sidecar without selector, else the root namespace's (oldest first).
pub fn select_sidecar(tenant: &Tenant, namespace: &str, labels: &Labels) -> Option<Arc<SidecarEntry>> {
    let in_ns = |ns: &str, want_selector: bool| {
        tenant
            .sidecars
            .iter()
            .find(|s| {
                s.namespace == ns
                    && match &s.spec.workload_selector {
                        Some(sel) if !sel.labels.is_empty() => want_selector && sel.matches(labels),
                        _ => !want_selector,
                    }
            })
            .cloned()
    };
    in_ns(namespace, true).or_else(|| in_ns(namespace, false)).or_else(|| in_ns(ROOT_NAMESPACE, false))
}

/// The locality a proxy is in: the locality of its own endpoint (an instance or WorkloadEntry
/// with one of its addresses), else Kubernetes topology labels (`topology.kubernetes.io/region`,
/// `topology.kubernetes.io/zone`, `topology.istio.io/subzone`), else Istio's `istio-locality`
/// label (`region.zone.subzone`).
pub fn proxy_locality(tenant: &Tenant, node: &NodeInfo) -> Option<Locality> {
    for ip in &node.ips {
        for s in tenant.by_ip.get(ip).into_iter().flatten() {
            for e in &s.endpoints {
                if e.address == weft_istio::Address::Ip(*ip) {
                    if let Some(l) = &e.locality {
                        return Some(l.clone());
                    }
                }
            }
        }
    }
    let label = |k: &str| node.labels.get(k).cloned().unwrap_or_default();
    let region = label("topology.kubernetes.io/region");
    if !region.is_empty() {
        return Some(Locality {
            region,
            zone: label("topology.kubernetes.io/zone"),
            subzone: label("topology.istio.io/subzone"),
        });
    }
    let istio = label("istio-locality");
    if !istio.is_empty() {
        let mut parts = istio.splitn(3, '.').map(str::to_string);
        return Some(Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        });
    }
    None
}

/// Which of the tenant's label selectors a proxy's labels satisfy.
pub fn matching_selectors(tenant: &Tenant, labels: &Labels) -> Vec<u16> {
    tenant
        .selectors
        .iter()
        .enumerate()
        .filter(|(_, sel)| WorkloadSelector { labels: (*sel).clone() }.matches(labels))
        .map(|(i, _)| i as u16)
        .collect()
}

impl<'a> Scope<'a> {
    pub fn new(tenant: &'a Tenant, opts: &'a Options, proxy: ScopeProxy, sidecar: Option<Arc<SidecarEntry>>) -> Self {
        let mut scope = Scope::new_bare(tenant, opts, proxy, sidecar);
        scope.compute_ports();
        scope
    }

    /// The scope without the per-port service view (enough for the inbound side).
    pub fn new_bare(
        tenant: &'a Tenant,
        opts: &'a Options,
        proxy: ScopeProxy,
        sidecar: Option<Arc<SidecarEntry>>,
    ) -> Self {
        let egress: Vec<Egress> = match &sidecar {
            Some(sc) if !sc.spec.egress.is_empty() => {
                sc.spec.egress.iter().map(|l| Egress { listener: l.clone(), namespace: sc.namespace.clone() }).collect()
            }
            _ => vec![Egress {
                listener: EgressListener {
                    port: None,
                    bind: None,
                    capture_mode: CaptureMode::Default,
                    hosts: vec![weft_istio::SidecarHost { namespace: "*".into(), host: "*".into() }],
                },
                namespace: proxy.namespace.clone(),
            }],
        };
        let outbound_mode = sidecar
            .as_ref()
            .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
            .map(|p| p.mode)
            .unwrap_or(opts.outbound_mode);
        Scope { tenant, opts, proxy, sidecar, egress, outbound_mode, ports: BTreeMap::new(), services: BTreeMap::new() }
    }

    fn compute_ports(&mut self) {
        let catch_all = self.egress.iter().position(|e| e.listener.port.is_none());
        for host in self.tenant.services.keys() {
            let Some(s) = self.tenant.service_for(host, &self.proxy.namespace) else { continue };
            let mut visible = false;
            for p in &s.ports {
                let specific =
                    self.egress.iter().position(|e| e.listener.port.as_ref().map(|lp| lp.number) == Some(p.number));
                let Some(idx) = specific.or(catch_all) else { continue };
                if self.egress[idx].imports(s, &self.opts.domain_suffix) {
                    visible = true;
                    self.ports.entry(p.number).or_default().push(PortService { service: s.clone(), egress: idx });
                }
            }
            if visible {
                self.services.insert(host.clone(), s.clone());
            }
        }
    }

    /// The VirtualService for a host: exported to the proxy's namespace, an exact host claim
    /// before a wildcard one (the most specific), the oldest among equals.
    pub fn virtual_service(&self, host: &str) -> Option<&'a Arc<VsEntry>> {
        let mut best: Option<(&'a Arc<VsEntry>, usize)> = None;
        for vs in &self.tenant.virtual_services {
            if !exported_to(&vs.spec.export_to, &vs.namespace, &self.proxy.namespace) {
                continue;
            }
            let spec = vs.hosts.iter().filter(|h| host_matches(h, host)).map(|h| specificity(h)).max();
            if let Some(spec) = spec {
                if best.map_or(true, |(_, b)| spec > b) {
                    best = Some((vs, spec));
                }
            }
        }
        best.map(|(vs, _)| vs)
    }

    /// The DestinationRule for a host, in Istio's lookup order: the proxy's namespace (a rule
    /// whose workloadSelector matches the proxy first), the service's namespace, the root
    /// namespace, then any other namespace exporting one. Within a step the most specific host
    /// wins; rules of one namespace for the same host are merged (oldest first: its traffic
    /// policy, and the subsets of all).
    pub fn destination_rule(&self, service: &Service) -> Option<MergedRule> {
        let proxy_ns = self.proxy.namespace.as_str();
        let candidates = |pred: &dyn Fn(&DrEntry) -> bool| -> Vec<&'a Arc<DrEntry>> {
            let matching: Vec<&Arc<DrEntry>> = self
                .tenant
                .destination_rules
                .iter()
                .filter(|d| host_matches(&d.host, &service.host) && pred(d))
                .collect();
            let Some(best) = matching.iter().map(|d| specificity(&d.host)).max() else { return Vec::new() };
            let best_ns: Option<String> =
                matching.iter().find(|d| specificity(&d.host) == best).map(|d| d.namespace.clone());
            matching
                .into_iter()
                .filter(|d| specificity(&d.host) == best && Some(&d.namespace) == best_ns.as_ref())
                .collect()
        };
        let selected = |d: &DrEntry| d.spec.workload_selector.as_ref().is_some_and(|s| s.matches(&self.proxy.labels));
        let no_selector = |d: &DrEntry| d.spec.workload_selector.is_none();
        let exported = |d: &DrEntry| exported_to(&d.spec.export_to, &d.namespace, proxy_ns);
        let steps: [&dyn Fn(&DrEntry) -> bool; 5] = [
            &|d| d.namespace == proxy_ns && selected(d),
            &|d| d.namespace == proxy_ns && no_selector(d),
            &|d| d.namespace == service.namespace && no_selector(d) && exported(d),
            &|d| d.namespace == ROOT_NAMESPACE && no_selector(d) && exported(d),
            &|d| no_selector(d) && exported(d),
        ];
        for step in steps {
            let found = candidates(step);
            if let Some((first, rest)) = found.split_first() {
                let mut subsets: Vec<Subset> = first.spec.subsets.clone();
                for dr in rest {
                    for s in &dr.spec.subsets {
                        if !subsets.iter().any(|x| x.name == s.name) {
                            subsets.push(s.clone());
                        }
                    }
                }
                return Some(MergedRule { traffic_policy: first.spec.traffic_policy.clone(), subsets });
            }
        }
        None
    }
}

/// A DestinationRule as it applies to one host for one proxy.
#[derive(Clone, Debug)]
pub struct MergedRule {
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn proxy_locality_comes_from_labels_when_no_endpoint_has_it() {
        let tenant = Tenant::default();
        let mut node = weft_xds::NodeInfo::from_node(&weft_xds::envoy_types::pb::envoy::config::core::v3::Node {
            id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(proxy_locality(&tenant, &node), None);
        node.labels = labels(&[("topology.kubernetes.io/region", "eu"), ("topology.kubernetes.io/zone", "eu-1")]);
        assert_eq!(
            proxy_locality(&tenant, &node),
            Some(Locality { region: "eu".into(), zone: "eu-1".into(), subzone: String::new() })
        );
        node.labels = labels(&[("istio-locality", "us.us-2.rack1")]);
        assert_eq!(
            proxy_locality(&tenant, &node),
            Some(Locality { region: "us".into(), zone: "us-2".into(), subzone: "rack1".into() })
        );
    }
}
