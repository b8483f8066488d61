//! The immutable, per-tenant index the generators read: services with their endpoints, and the
//! VirtualServices, DestinationRules and Sidecars that apply to them. Built once per snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use weft_istio::registry::Instance;
use weft_istio::{
    Address, Cidr, DestinationRule, Key, Kind, Labels, Locality, Protocol, Resolution, Resource, ServicePort, Sidecar,
    Spec, VirtualService, WorkloadEntry,
};

use crate::naming::{exported_to, host_matches, resolve_host};
use crate::{Input, Options, Subject, Warning};

/// The order Istio uses to settle conflicts: oldest first (resources without a creation time
/// count as newest), then namespace, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    missing: bool,
    created: String,
    namespace: String,
    name: String,
}

impl Age {
    pub fn of(r: &Resource) -> Age {
        Age {
            missing: r.meta.creation_timestamp.is_none(),
            created: r.meta.creation_timestamp.clone().unwrap_or_default(),
            namespace: r.meta.namespace.clone(),
            name: r.meta.name.clone(),
        }
    }
}

/// One service: a host of a ServiceEntry, or a host that registry instances declare.
#[derive(Debug)]
pub struct Service {
    /// The ServiceEntry, or [`Subject::Service`] for a service built from instances.
    pub key: Subject,
    pub host: String,
    pub namespace: String,
    /// SE addresses, else the allocated VIP.
    pub addresses: Vec<Cidr>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub export_to: Vec<String>,
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// The single address used in domains and `VIP/32` filter chain matches (a plain IP).
    pub fn vip(&self) -> Option<IpAddr> {
        self.addresses.iter().find(|c| c.prefix_len == if c.addr.is_ipv4() { 32 } else { 128 }).map(|c| c.addr)
    }

    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with('*')
    }

    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// One endpoint of a service (inline SE endpoint, selected WorkloadEntry or registry instance).
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub address: Address,
    pub ports: BTreeMap<String, u16>,
    pub labels: Labels,
    pub locality: Option<Locality>,
    pub weight: u32,
    pub healthy: bool,
    /// The workload's name (WorkloadEntry or instance name; empty for inline endpoints) and
    /// namespace, for the destination labels of the proxies' metrics.
    pub workload: String,
    pub namespace: String,
}

impl Endpoint {
    fn from_entry(we: &WorkloadEntry, healthy: bool, workload: &str, namespace: &str) -> Option<Endpoint> {
        Some(Endpoint {
            workload: workload.to_string(),
            namespace: namespace.to_string(),
            address: we.address.clone()?,
            ports: we.ports.clone(),
            labels: we.labels.clone(),
            locality: we.locality.clone(),
            weight: we.weight.unwrap_or(1).max(1),
            healthy,
        })
    }

    /// The port this endpoint receives a service port's traffic on: its own port of that name,
    /// else the service port's `targetPort`, else the service port's number (Istio's order).
    pub fn target_port(&self, port: &ServicePort) -> u16 {
        self.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number)
    }
}

#[derive(Debug)]
pub struct VsEntry {
    pub key: Key,
    pub namespace: String,
    /// Hosts resolved to FQDNs (wildcards kept).
    pub hosts: Vec<String>,
    pub spec: VirtualService,
}

#[derive(Debug)]
pub struct DrEntry {
    pub key: Key,
    pub namespace: String,
    pub host: String,
    pub spec: DestinationRule,
}

#[derive(Debug)]
pub struct SidecarEntry {
    pub key: Key,
    pub namespace: String,
    pub spec: Sidecar,
}

/// Everything of one tenant.
#[derive(Debug, Default)]
pub struct Tenant {
    /// Host → its services (one per namespace that defines it), oldest first.
    pub services: BTreeMap<String, Vec<Arc<Service>>>,
    /// Oldest first; only those that apply to sidecars (gateway `mesh`).
    pub virtual_services: Vec<Arc<VsEntry>>,
    /// Oldest first.
    pub destination_rules: Vec<Arc<DrEntry>>,
    /// Oldest first.
    pub sidecars: Vec<Arc<SidecarEntry>>,
    /// Endpoint address → services that have an endpoint there (finds a proxy's own workload).
    pub by_ip: BTreeMap<IpAddr, Vec<Arc<Service>>>,
    /// Distinct label selectors (VirtualService `sourceLabels`, DestinationRule
    /// `workloadSelector`) whose outcome for a proxy changes what it receives.
    pub selectors: Vec<Labels>,
    /// Label names that `failoverPriority` settings compare between proxy and endpoints.
    pub failover_labels: BTreeSet<String>,
}

/// Builds the per-tenant index and reports what could not be applied.
pub fn build(input: &Input, warnings: &mut Vec<Warning>) -> BTreeMap<String, Tenant> {
    let opts = &input.options;
    let mut resources: Vec<&Arc<Resource>> = input.resources.iter().collect();
    resources.sort_by_key(|r| (r.tenant().to_string(), Age::of(r), r.kind));

    let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
    let mut entries_by_ns: BTreeMap<(String, String), Vec<(Key, &WorkloadEntry)>> = BTreeMap::new();
    for r in &resources {
        if let Spec::WorkloadEntry(we) = &r.spec {
            entries_by_ns.entry((r.tenant().to_string(), r.meta.namespace.clone())).or_default().push((r.key(), we));
        }
    }
    let mut instances_by_ns: BTreeMap<(String, String), Vec<&Instance>> = BTreeMap::new();
    for i in &input.instances {
        instances_by_ns.entry((i.tenant.clone(), i.namespace.clone())).or_default().push(i);
    }
    let mut used_entries: BTreeSet<Key> = BTreeSet::new();

    for r in &resources {
        let tenant = tenants.entry(r.tenant().to_string()).or_default();
        let key = r.key();
        let ns = r.meta.namespace.clone();
        match &r.spec {
            Spec::ServiceEntry(se) => {
                let mut seen_hosts = BTreeSet::new();
                for host in &se.hosts {
                    let fqdn = resolve_host(host, &ns, &opts.domain_suffix);
                    if !seen_hosts.insert(fqdn.clone()) {
                        continue;
                    }
                    let addresses = if se.addresses.is_empty() {
                        input
                            .vips
                            .get(&(r.tenant().to_string(), fqdn.clone()))
                            .map(|ip| vec![Cidr { addr: *ip, prefix_len: if ip.is_ipv4() { 32 } else { 128 } }])
                            .unwrap_or_default()
                    } else {
                        se.addresses.clone()
                    };
                    let mut endpoints: Vec<Endpoint> =
                        se.endpoints.iter().filter_map(|we| Endpoint::from_entry(we, true, "", &ns)).collect();
                    let tenant_ns = (r.tenant().to_string(), ns.clone());
                    if let Some(sel) = se.workload_selector.as_ref().filter(|s| !s.labels.is_empty()) {
                        for (we_key, we) in entries_by_ns.get(&tenant_ns).into_iter().flatten() {
                            if sel.matches(&we.labels) {
                                used_entries.insert(we_key.clone());
                                endpoints.extend(Endpoint::from_entry(we, true, &we_key.name, &ns));
                            }
                        }
                    }
                    for inst in instances_by_ns.get(&tenant_ns).into_iter().flatten() {
                        let by_label = se.workload_selector.as_ref().is_some_and(|s| inst.selected_by(s));
                        let by_host =
                            inst.service_hosts.iter().any(|h| resolve_host(h, &ns, &opts.domain_suffix) == fqdn);
                        let declared = inst
                            .service
                            .as_ref()
                            .is_some_and(|d| resolve_host(&d.host, &ns, &opts.domain_suffix) == fqdn);
                        if declared {
                            port_conflicts_with_entry(inst, &key, &fqdn, &se.ports, warnings);
                        }
                        if by_label || by_host || declared {
                            endpoints.extend(Endpoint::from_entry(
                                &inst.to_workload_entry(),
                                inst.healthy,
                                &inst.name,
                                &ns,
                            ));
                        }
                    }
                    if se.resolution == Resolution::Static
                        && endpoints.iter().any(|e| !matches!(e.address, Address::Ip(_) | Address::Unix(_)))
                    {
                        warnings.push(Warning::new(
                            &key,
                            format!(
                                "host {fqdn}: STATIC resolution needs IP endpoints; host-name endpoints are left out"
                            ),
                        ));
                        endpoints.retain(|e| matches!(e.address, Address::Ip(_) | Address::Unix(_)));
                    }
                    let service = Arc::new(Service {
                        key: Subject::Resource(key.clone()),
                        host: fqdn.clone(),
                        namespace: ns.clone(),
                        addresses,
                        ports: se.ports.clone(),
                        resolution: se.resolution,
                        export_to: se.export_to.clone(),
                        endpoints,
                    });
                    let list = tenant.services.entry(fqdn.clone()).or_default();
                    if let Some(first) = list.iter().find(|s| s.namespace == ns) {
                        warnings.push(Warning::new(
                            &key,
                            format!(
                                "host {fqdn} is already defined in namespace {ns} by {}; this one is ignored",
                                first.key
                            ),
                        ));
                        continue;
                    }
                    list.push(service);
                }
            }
            Spec::VirtualService(vs) => {
                if !vs.applies_to_mesh() {
                    warnings.push(Warning::new(
                        &key,
                        format!(
                            "gateways {:?} do not include \"mesh\": gateways are not applied yet, so this VirtualService has no effect",
                            vs.gateways
                        ),
                    ));
                    continue;
                }
                let other: Vec<&String> = vs.gateways.iter().filter(|g| g.as_str() != "mesh").collect();
                if !other.is_empty() {
                    warnings.push(Warning::new(
                        &key,
                        format!("gateways {other:?} are not applied yet; the routes apply to sidecars (mesh) only"),
                    ));
                }
                for (i, h) in vs.http.iter().enumerate() {
                    if matches!(h.action, weft_istio::HttpAction::Delegate { .. }) {
                        warnings.push(Warning::new(
                            &key,
                            format!("http[{i}]: delegate is not applied; the route is left out"),
                        ));
                    }
                }
                let hosts = vs.hosts.iter().map(|h| resolve_host(h, &ns, &opts.domain_suffix)).collect();
                tenant.virtual_services.push(Arc::new(VsEntry { key, namespace: ns, hosts, spec: vs.clone() }));
            }
            Spec::DestinationRule(dr) => {
                tenant.destination_rules.push(Arc::new(DrEntry {
                    key,
                    namespace: ns.clone(),
                    host: resolve_host(&dr.host, &ns, &opts.domain_suffix),
                    spec: dr.clone(),
                }));
            }
            Spec::Sidecar(sc) => {
                // Listeners are named by address and port: an ingress and an egress listener on
                // the same bind address and port would be one listener, the ingress one.
                for l in &sc.ingress {
                    let Some(bind) = &l.bind else { continue };
                    let clash = sc.egress.iter().any(|e| {
                        e.bind.as_ref() == Some(bind) && e.port.as_ref().is_some_and(|p| p.number == l.port.number)
                    });
                    if clash {
                        warnings.push(Warning::new(
                            &key,
                            format!(
                                "ingress and egress listeners both bind {bind}:{}; only the ingress listener is served",
                                l.port.number
                            ),
                        ));
                    }
                }
                tenant.sidecars.push(Arc::new(SidecarEntry { key, namespace: ns, spec: sc.clone() }));
            }
            Spec::WorkloadEntry(_) | Spec::Opaque(_) => {}
        }
    }

    for r in &resources {
        if let Spec::Opaque(_) = r.spec {
            warnings.push(Warning::new(&r.key(), format!("{} resources are stored but not applied yet", r.kind)));
        }
        if r.kind == Kind::WorkloadEntry && !used_entries.contains(&r.key()) {
            warnings.push(Warning::new(&r.key(), "no ServiceEntry in its namespace selects this WorkloadEntry".into()));
        }
    }

    add_instance_services(input, &mut tenants, warnings);

    for tenant in tenants.values_mut() {
        index_tenant(tenant, opts, warnings);
    }
    tenants
}

/// Services for hosts that instances declare and no ServiceEntry of their tenant defines: one
/// per (tenant, namespace, host), MESH_INTERNAL with STATIC endpoints from the instances, the
/// allocated VIP, and the ports the instances declare (the first declaration of a port number
/// or name wins; a different one is a warning). Where a ServiceEntry defines the host, instances
/// of its namespace have joined it already; those of other namespaces are reported.
fn add_instance_services(input: &Input, tenants: &mut BTreeMap<String, Tenant>, warnings: &mut Vec<Warning>) {
    let opts = &input.options;
    let mut sorted: Vec<&Instance> = input.instances.iter().filter(|i| i.service.is_some()).collect();
    sorted.sort_by(|a, b| (&a.tenant, &a.namespace, &a.name).cmp(&(&b.tenant, &b.namespace, &b.name)));
    // (tenant, host) → namespace → instances, in name order.
    let mut declared: BTreeMap<(String, String), BTreeMap<String, Vec<&Instance>>> = BTreeMap::new();
    for inst in sorted {
        let Some(service) = &inst.service else { continue };
        let host = resolve_host(&service.host, &inst.namespace, &opts.domain_suffix);
        declared.entry((inst.tenant.clone(), host)).or_default().entry(inst.namespace.clone()).or_default().push(inst);
    }
    for ((tenant_name, host), by_ns) in declared {
        let tenant = tenants.entry(tenant_name.clone()).or_default();
        if let Some(defined) = tenant.services.get(&host) {
            for (ns, instances) in &by_ns {
                if defined.iter().any(|s| &s.namespace == ns) {
                    continue;
                }
                let owners: Vec<String> = defined.iter().map(|s| s.key.to_string()).collect();
                for inst in instances {
                    warnings.push(Warning::about(
                        instance_subject(inst),
                        format!(
                            "declares host {host}, which {} defines; instances join ServiceEntries of their own namespace only, so this one is not an endpoint",
                            owners.join(", ")
                        ),
                    ));
                }
            }
            continue;
        }
        let mut services = Vec::new();
        for (ns, instances) in by_ns {
            let mut ports: Vec<(ServicePort, &str)> = Vec::new();
            for inst in &instances {
                for p in inst.service.iter().flat_map(|s| &s.ports) {
                    let port = p.to_service_port();
                    match ports.iter().find(|(q, _)| q.number == port.number || q.name == port.name) {
                        Some((q, _)) if q == &port => {}
                        Some((q, first)) => warnings.push(Warning::about(
                            instance_subject(inst),
                            format!(
                                "declares port {} {} ({}) for host {host}, but Instance {ns}/{first} declared {} {} ({}) first; the first declaration applies",
                                port.name, port.number, port.protocol, q.name, q.number, q.protocol
                            ),
                        )),
                        None => ports.push((port, &inst.name)),
                    }
                }
            }
            let mut ports: Vec<ServicePort> = ports.into_iter().map(|(p, _)| p).collect();
            ports.sort_by_key(|p| p.number);
            let endpoints = instances
                .iter()
                .filter_map(|i| Endpoint::from_entry(&i.to_workload_entry(), i.healthy, &i.name, &ns))
                .collect();
            let addresses = input
                .vips
                .get(&(tenant_name.clone(), host.clone()))
                .map(|ip| vec![Cidr { addr: *ip, prefix_len: if ip.is_ipv4() { 32 } else { 128 } }])
                .unwrap_or_default();
            services.push(Arc::new(Service {
                key: Subject::Service { namespace: ns.clone(), host: host.clone() },
                host: host.clone(),
                namespace: ns,
                addresses,
                ports,
                resolution: Resolution::Static,
                export_to: Vec::new(),
                endpoints,
            }));
        }
        tenant.services.insert(host, services);
    }
}

fn instance_subject(inst: &Instance) -> Subject {
    Subject::Instance { namespace: inst.namespace.clone(), name: inst.name.clone() }
}

/// An instance that declares a host a ServiceEntry defines joins it with the entry's ports;
/// declared ports the entry lacks or defines otherwise are reported.
fn port_conflicts_with_entry(
    inst: &Instance,
    entry: &Key,
    host: &str,
    entry_ports: &[ServicePort],
    warnings: &mut Vec<Warning>,
) {
    for p in inst.service.iter().flat_map(|s| &s.ports) {
        let port = p.to_service_port();
        let problem = match entry_ports.iter().find(|q| q.number == port.number) {
            None => format!("{entry} has no port {}", port.number),
            Some(q) if q.name != port.name || q.protocol != port.protocol => {
                format!("{entry} defines port {} as {} ({})", q.number, q.name, q.protocol)
            }
            Some(_) => continue,
        };
        warnings.push(Warning::about(
            instance_subject(inst),
            format!(
                "declares port {} {} ({}) for host {host}, but {problem}; the ServiceEntry's ports apply",
                port.name, port.number, port.protocol
            ),
        ));
    }
}

fn index_tenant(tenant: &mut Tenant, opts: &Options, warnings: &mut Vec<Warning>) {
    // Endpoint addresses, for finding a proxy's own workload.
    for services in tenant.services.values() {
        for s in services {
            for e in &s.endpoints {
                if let Address::Ip(ip) = e.address {
                    let list = tenant.by_ip.entry(ip).or_default();
                    if !list.iter().any(|x| Arc::ptr_eq(x, s)) {
                        list.push(s.clone());
                    }
                }
            }
        }
    }

    // Label selectors that make two proxies of one namespace see different config.
    let mut selectors: BTreeSet<Labels> = BTreeSet::new();
    for vs in &tenant.virtual_services {
        for h in &vs.spec.http {
            for m in &h.matches {
                if !m.source_labels.is_empty() {
                    selectors.insert(m.source_labels.clone());
                }
            }
        }
        for m in vs.spec.tcp.iter().flat_map(|t| &t.matches) {
            if !m.source_labels.is_empty() {
                selectors.insert(m.source_labels.clone());
            }
        }
        for m in vs.spec.tls.iter().flat_map(|t| &t.matches) {
            if !m.source_labels.is_empty() {
                selectors.insert(m.source_labels.clone());
            }
        }
    }
    for dr in &tenant.destination_rules {
        if let Some(sel) = &dr.spec.workload_selector {
            selectors.insert(sel.labels.clone());
        }
    }
    tenant.selectors = selectors.into_iter().collect();
    for dr in &tenant.destination_rules {
        let Some(tp) = &dr.spec.traffic_policy else { continue };
        let mut lbs: Vec<&weft_istio::LoadBalancer> = tp.load_balancer.iter().collect();
        lbs.extend(tp.port_level_settings.iter().filter_map(|p| p.load_balancer.as_ref()));
        for s in &dr.spec.subsets {
            if let Some(stp) = &s.traffic_policy {
                lbs.extend(stp.load_balancer.iter());
                lbs.extend(stp.port_level_settings.iter().filter_map(|p| p.load_balancer.as_ref()));
            }
        }
        for lb in lbs {
            if let Some(l) = &lb.locality_lb_setting {
                tenant.failover_labels.extend(l.failover_priority.iter().cloned());
            }
        }
    }

    // VirtualService conflicts: two claiming one host, the oldest wins (for proxies that can see both).
    let mut claims: BTreeMap<&str, Vec<&VsEntry>> = BTreeMap::new();
    for vs in &tenant.virtual_services {
        for h in &vs.hosts {
            claims.entry(h.as_str()).or_default().push(vs);
        }
    }
    for (host, list) in &claims {
        if let Some((winner, losers)) = list.split_first() {
            for loser in losers {
                warnings.push(Warning::new(
                    &loser.key,
                    format!(
                        "host {host} is also claimed by {} (older); that one wins where both are visible",
                        winner.key
                    ),
                ));
            }
        }
    }
    for vs in &tenant.virtual_services {
        for h in &vs.hosts {
            let matched = tenant.services.keys().any(|s| host_matches(h, s) || host_matches(s, h));
            if !matched {
                warnings.push(Warning::new(
                    &vs.key,
                    format!("host {h} matches no ServiceEntry host; its routes are not applied"),
                ));
            }
        }
        for dest in destinations(&vs.spec) {
            let host = resolve_host(&dest.host, &vs.namespace, &opts.domain_suffix);
            let Some(services) = tenant.services.get(&host) else {
                warnings.push(Warning::new(&vs.key, format!("destination host {host} is not a known service")));
                continue;
            };
            if let Some(subset) = &dest.subset {
                let known = tenant
                    .destination_rules
                    .iter()
                    .any(|dr| host_matches(&dr.host, &host) && dr.spec.subsets.iter().any(|s| &s.name == subset));
                if !known {
                    warnings.push(Warning::new(
                        &vs.key,
                        format!("destination {host} subset {subset} is not defined by any DestinationRule"),
                    ));
                }
            }
            if let Some(port) = dest.port {
                if !services.iter().any(|s| s.port(port).is_some()) {
                    warnings.push(Warning::new(&vs.key, format!("destination {host} has no port {port}")));
                }
            }
        }
    }

    // DestinationRules: more than one for a host in one namespace are merged (Istio), subsets
    // with a name taken already are dropped.
    let mut by_ns_host: BTreeMap<(String, String, bool), Vec<&DrEntry>> = BTreeMap::new();
    for dr in &tenant.destination_rules {
        by_ns_host
            .entry((dr.namespace.clone(), dr.host.clone(), dr.spec.workload_selector.is_some()))
            .or_default()
            .push(dr);
    }
    for list in by_ns_host.values() {
        let mut names = BTreeSet::new();
        for (i, dr) in list.iter().enumerate() {
            if i > 0 && dr.spec.traffic_policy.is_some() {
                warnings.push(Warning::new(
                    &dr.key,
                    format!(
                        "{} for the same host is older; this trafficPolicy is ignored (subsets are merged)",
                        list[0].key
                    ),
                ));
            }
            for s in &dr.spec.subsets {
                if !names.insert(s.name.clone()) {
                    warnings.push(Warning::new(
                        &dr.key,
                        format!("subset {} is already defined for host {}; ignored", s.name, dr.host),
                    ));
                }
            }
        }
    }
    for dr in &tenant.destination_rules {
        if !tenant.services.keys().any(|s| host_matches(&dr.host, s)) {
            warnings.push(Warning::new(&dr.key, format!("host {} matches no ServiceEntry host", dr.host)));
        }
    }

    // Services sharing an address on a port cannot both get a filter chain.
    // (One host defined in several namespaces is one service to any proxy, which sees the
    // definition of its own namespace or the oldest exported one.)
    let mut vip_ports: BTreeMap<(Cidr, u16), &Service> = BTreeMap::new();
    for services in tenant.services.values() {
        for s in services {
            for a in &s.addresses {
                for p in &s.ports {
                    if let Some(first) = vip_ports.get(&(*a, p.number)) {
                        if first.host != s.host {
                            warnings.push(Warning::about(
                                s.key.clone(),
                                format!(
                                    "host {} shares address {a} port {} with {} ({}); only one gets the filter chain",
                                    s.host, p.number, first.host, first.key
                                ),
                            ));
                        }
                    } else {
                        vip_ports.insert((*a, p.number), s);
                    }
                }
            }
        }
    }
    for services in tenant.services.values() {
        for s in services {
            if matches!(s.resolution, Resolution::DnsRoundRobin) && s.endpoints.len() > 1 {
                warnings.push(Warning::about(
                    s.key.clone(),
                    format!("host {}: DNS_ROUND_ROBIN uses only the first endpoint (Envoy LOGICAL_DNS)", s.host),
                ));
            }
            if s.is_wildcard() && !matches!(s.resolution, Resolution::None) {
                warnings.push(Warning::about(
                    s.key.clone(),
                    format!("host {}: a wildcard host needs resolution NONE; treated as NONE", s.host),
                ));
            }
            for p in &s.ports {
                if matches!(p.protocol, Protocol::Udp) {
                    warnings.push(Warning::about(
                        s.key.clone(),
                        format!("host {} port {}: UDP is not proxied", s.host, p.number),
                    ));
                }
            }
        }
    }
}

/// Every destination a VirtualService names (routes and mirrors).
pub fn destinations(vs: &VirtualService) -> Vec<&weft_istio::Destination> {
    let mut out = Vec::new();
    for h in &vs.http {
        if let weft_istio::HttpAction::Route(dests) = &h.action {
            out.extend(dests.iter().map(|d| &d.destination));
        }
        out.extend(h.mirrors.iter().map(|m| &m.destination));
    }
    out.extend(vs.tcp.iter().flat_map(|t| t.route.iter().map(|d| &d.destination)));
    out.extend(vs.tls.iter().flat_map(|t| t.route.iter().map(|d| &d.destination)));
    out
}

impl Tenant {
    /// The service a proxy in `namespace` means by `host`: the one defined in its own namespace,
    /// else the oldest exported to it.
    pub fn service_for(&self, host: &str, namespace: &str) -> Option<&Arc<Service>> {
        let list = self.services.get(host)?;
        list.iter()
            .find(|s| s.namespace == namespace && exported_to(&s.export_to, &s.namespace, namespace))
            .or_else(|| list.iter().find(|s| exported_to(&s.export_to, &s.namespace, namespace)))
    }
}
