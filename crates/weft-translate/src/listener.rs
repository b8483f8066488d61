//! LDS: the capture listeners (`virtualOutbound` 15001 with a filter chain per service
//! `VIP:port`, `virtualInbound` 15006 with a chain per inbound port), bind-mode listeners
//! (`BIND_PORT`) for Sidecar egress/ingress listeners with `bind` or `captureMode: NONE`, and the
//! API listeners (`HOST:PORT`) proxyless gRPC clients ask for.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, UpgradeConfig},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use weft_istio::{Address, Cidr, Protocol};

use crate::index::Service;
use crate::naming::{
    inbound_cluster, outbound_cluster, resolve_host, INBOUND_PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND,
    VIRTUAL_INBOUND_PORT, VIRTUAL_OUTBOUND, VIRTUAL_OUTBOUND_PORT,
};
use crate::pb;
use crate::route::{catch_all_cluster, fault_filter_config, l4_destinations};
use crate::scope::{PortService, Scope};

/// How a port's traffic is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    Http,
    /// TLS passthrough, routed by SNI.
    Tls,
    Tcp,
    /// Undeclared: HTTP when the first bytes look like HTTP, TCP otherwise (Istio's sniffing).
    Sniffed,
}

pub fn port_kind(p: &Protocol) -> PortKind {
    match p {
        p if p.is_http() => PortKind::Http,
        Protocol::Https | Protocol::Tls => PortKind::Tls,
        Protocol::Unsupported(_) => PortKind::Sniffed,
        _ => PortKind::Tcp,
    }
}

fn typed_filter<M: prost::Message + prost::Name>(name: &str, msg: &M) -> Filter {
    Filter { name: name.to_string(), config_type: Some(filter::ConfigType::TypedConfig(pb::any(msg))) }
}

fn listener_filter<M: prost::Message + prost::Name>(name: &str, msg: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pb::any(msg))),
        ..Default::default()
    }
}

fn http_filters(with_fault: bool) -> Vec<HttpFilter> {
    let mut out = Vec::new();
    if with_fault {
        let fault = fault_filter_config();
        out.push(HttpFilter {
            name: fault.name,
            config_type: fault.typed_config.map(http_filter::ConfigType::TypedConfig),
            ..Default::default()
        });
    }
    out.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pb::any(&Router::default()))),
        ..Default::default()
    });
    out
}

/// An HTTP connection manager that takes its routes over ADS (RDS `route_name`).
pub fn hcm_rds(stat_prefix: &str, route_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(pb::ads()),
            route_config_name: route_name.to_string(),
        })),
        http_filters: http_filters(true),
        use_remote_address: Some(pb::boolv(false)),
        upgrade_configs: vec![UpgradeConfig { upgrade_type: "websocket".into(), ..Default::default() }],
        ..Default::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    typed_filter("envoy.filters.network.http_connection_manager", hcm)
}

/// A TCP proxy to one cluster, or to weighted clusters.
pub fn tcp_proxy_filter(stat_prefix: &str, clusters: &[(String, u32)]) -> Filter {
    let specifier = match clusters {
        [(only, _)] => tcp_proxy::ClusterSpecifier::Cluster(only.clone()),
        many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    typed_filter(
        "envoy.filters.network.tcp_proxy",
        &TcpProxy { stat_prefix: stat_prefix.to_string(), cluster_specifier: Some(specifier), ..Default::default() },
    )
}

fn cidr_ranges(addresses: &[Cidr]) -> Vec<CidrRange> {
    addresses
        .iter()
        .map(|c| CidrRange { address_prefix: c.addr.to_string(), prefix_len: Some(pb::u32v(c.prefix_len as u32)) })
        .collect()
}

fn addr_label(a: &Cidr) -> String {
    let full = if a.addr.is_ipv4() { 32 } else { 128 };
    if a.prefix_len == full {
        a.addr.to_string()
    } else {
        a.to_string()
    }
}

/// Where a service's TCP traffic on a port goes: the first TCP route of its VirtualService that
/// applies to this port and proxy, else the service's own cluster.
pub(crate) fn tcp_targets(scope: &Scope, s: &Service, port: u16) -> Vec<(String, u32)> {
    if let Some(vs) = scope.virtual_service(&s.host) {
        for r in &vs.spec.tcp {
            let applies = r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    m.port.map_or(true, |p| p == port)
                        && m.source_labels.iter().all(|(k, v)| scope.proxy.labels.get(k) == Some(v))
                        && m.source_namespace.as_ref().map_or(true, |ns| *ns == scope.proxy.namespace)
                        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                });
            if applies {
                let targets = l4_destinations(scope, &vs.namespace, &r.route, port);
                if !targets.is_empty() {
                    return targets;
                }
            }
        }
    }
    vec![(outbound_cluster(port, "", &s.host), 100)]
}

/// SNI names and the weighted clusters they go to.
type SniRoute = (Vec<String>, Vec<(String, u32)>);

/// SNI chains of a TLS service port: one per applicable TLS route match (its `sniHosts`), else
/// the service host itself.
fn tls_targets(scope: &Scope, s: &Service, port: u16) -> Vec<SniRoute> {
    let mut out = Vec::new();
    if let Some(vs) = scope.virtual_service(&s.host) {
        for r in &vs.spec.tls {
            let targets = l4_destinations(scope, &vs.namespace, &r.route, port);
            if targets.is_empty() {
                continue;
            }
            for m in &r.matches {
                let applies = m.port.map_or(true, |p| p == port)
                    && m.source_labels.iter().all(|(k, v)| scope.proxy.labels.get(k) == Some(v))
                    && m.source_namespace.as_ref().map_or(true, |ns| *ns == scope.proxy.namespace)
                    && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"));
                if applies {
                    let names =
                        m.sni_hosts.iter().map(|h| resolve_host(h, &vs.namespace, &scope.opts.domain_suffix)).collect();
                    out.push((names, targets.clone()));
                }
            }
        }
    }
    if out.is_empty() {
        out.push((vec![s.host.clone()], vec![(outbound_cluster(port, "", &s.host), 100)]));
    }
    out
}

/// Builds filter chains, skipping any whose match repeats an earlier one (Envoy rejects
/// duplicates; the first service, in host order, keeps it).
#[derive(Default)]
struct Chains {
    chains: Vec<FilterChain>,
    seen: BTreeSet<String>,
    sni: bool,
    sniff: bool,
}

impl Chains {
    fn push(&mut self, name: String, m: FilterChainMatch, filters: Vec<Filter>) {
        if !self.seen.insert(format!("{m:?}")) {
            tracing::debug!(chain = %name, "filter chain match already taken; skipped");
            return;
        }
        self.sni |= !m.server_names.is_empty();
        self.sniff |= !m.application_protocols.is_empty();
        let filter_chain_match = (m != FilterChainMatch::default()).then_some(m);
        self.chains.push(FilterChain { name, filter_chain_match, filters, ..Default::default() });
    }

    fn listener_filters(&self) -> Vec<ListenerFilter> {
        let mut out = Vec::new();
        if self.sni {
            out.push(listener_filter("envoy.filters.listener.tls_inspector", &TlsInspector::default()));
        }
        if self.sniff {
            out.push(listener_filter("envoy.filters.listener.http_inspector", &HttpInspector::default()));
        }
        out
    }
}

const SNIFFED_HTTP: [&str; 2] = ["http/1.1", "h2c"];

/// The chains of one port for its services. In capture mode chains match the destination port
/// and the service addresses; in bind mode (the listener is the port) they match nothing but SNI.
fn port_chains(scope: &Scope, port: u16, services: &[PortService], capture: bool, label: &str, chains: &mut Chains) {
    let route_name = port.to_string();
    let dport = capture.then(|| pb::u32v(port as u32));
    let mut http_without_vip = false;
    let mut sniffed_without_vip = false;
    let mut http_any = false;
    for ps in services {
        let s = &ps.service;
        let Some(sp) = s.port(port) else { continue };
        let kind = port_kind(&sp.protocol);
        let ranges = if capture { cidr_ranges(&s.addresses) } else { Vec::new() };
        let name_prefix = match s.addresses.first() {
            Some(a) if capture => addr_label(a),
            _ => label.to_string(),
        };
        match kind {
            PortKind::Http | PortKind::Sniffed => {
                http_any = true;
                if ranges.is_empty() {
                    http_without_vip = true;
                    sniffed_without_vip |= kind == PortKind::Sniffed;
                    if kind == PortKind::Http {
                        continue;
                    }
                }
                let hcm = hcm_filter(&hcm_rds(&format!("outbound_{name_prefix}_{port}"), &route_name));
                if kind == PortKind::Http && !ranges.is_empty() {
                    let m = FilterChainMatch { destination_port: dport, prefix_ranges: ranges, ..Default::default() };
                    chains.push(format!("{name_prefix}_{port}"), m, vec![hcm]);
                } else if kind == PortKind::Sniffed {
                    let m = FilterChainMatch {
                        destination_port: dport,
                        prefix_ranges: ranges.clone(),
                        application_protocols: SNIFFED_HTTP.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    };
                    if !ranges.is_empty() {
                        chains.push(format!("{name_prefix}_{port}-http"), m, vec![hcm]);
                    }
                    let tcp = tcp_proxy_filter(&outbound_cluster(port, "", &s.host), &tcp_targets(scope, s, port));
                    let m = FilterChainMatch { destination_port: dport, prefix_ranges: ranges, ..Default::default() };
                    chains.push(format!("{name_prefix}_{port}-tcp"), m, vec![tcp]);
                }
            }
            PortKind::Tls => {
                for (names, targets) in tls_targets(scope, s, port) {
                    let stat = targets.first().map(|t| t.0.clone()).unwrap_or_default();
                    // A VIP identifies the service already; SNI picks among routes and serves
                    // services without a VIP.
                    let m = FilterChainMatch {
                        destination_port: dport,
                        prefix_ranges: ranges.clone(),
                        server_names: names,
                        ..Default::default()
                    };
                    chains.push(format!("{name_prefix}_{port}-tls"), m, vec![tcp_proxy_filter(&stat, &targets)]);
                }
            }
            PortKind::Tcp => {
                let targets = tcp_targets(scope, s, port);
                let m = FilterChainMatch { destination_port: dport, prefix_ranges: ranges, ..Default::default() };
                chains.push(format!("{name_prefix}_{port}"), m, vec![tcp_proxy_filter(&targets[0].0, &targets)]);
            }
        }
    }
    // HTTP services without an address (and, in bind mode, every HTTP service) share one chain
    // that routes by Host through RDS.
    if http_without_vip || (!capture && http_any) {
        let prefix = if capture { "0.0.0.0" } else { label };
        let hcm = hcm_filter(&hcm_rds(&format!("outbound_{prefix}_{port}"), &route_name));
        // With a sniffed service among them, only traffic that looks like HTTP takes this chain;
        // the rest goes to that service's TCP chain.
        let application_protocols =
            if sniffed_without_vip { SNIFFED_HTTP.iter().map(|s| s.to_string()).collect() } else { Vec::new() };
        let m = FilterChainMatch { destination_port: dport, application_protocols, ..Default::default() };
        chains.push(format!("{prefix}_{port}"), m, vec![hcm]);
    }
}

fn socket_listener(name: String, address: &str, port: u16, direction: TrafficDirection) -> Listener {
    let address = match address.strip_prefix("unix://") {
        Some(path) => pb::pipe(path),
        None => pb::socket(address, port),
    };
    Listener { name, address: Some(address), traffic_direction: direction as i32, ..Default::default() }
}

/// `virtualOutbound`: a chain per visible service address and port, unknown destinations to
/// the Passthrough (ALLOW_ANY) or BlackHole (REGISTRY_ONLY) cluster.
pub fn virtual_outbound(scope: &Scope) -> Listener {
    let mut chains = Chains::default();
    for (port, services) in &scope.ports {
        let captured: Vec<PortService> =
            services.iter().filter(|ps| !scope.egress[ps.egress].bind_mode()).cloned().collect();
        if !captured.is_empty() {
            port_chains(scope, *port, &captured, true, "0.0.0.0", &mut chains);
        }
    }
    let catch_all = catch_all_cluster(scope.outbound_mode);
    let mut l = socket_listener(VIRTUAL_OUTBOUND.into(), "0.0.0.0", VIRTUAL_OUTBOUND_PORT, TrafficDirection::Outbound);
    l.use_original_dst = Some(pb::boolv(true));
    l.listener_filters = chains.listener_filters();
    l.filter_chains = chains.chains;
    l.default_filter_chain = Some(FilterChain {
        name: catch_all.to_string(),
        filters: vec![tcp_proxy_filter(catch_all, &[(catch_all.to_string(), 100)])],
        ..Default::default()
    });
    l
}

/// Bind-mode egress listeners: `BIND_PORT` for each port an egress listener in bind mode imports.
pub fn bind_outbound(scope: &Scope) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (port, services) in &scope.ports {
        let mut by_egress: std::collections::BTreeMap<usize, Vec<PortService>> = Default::default();
        for ps in services.iter().filter(|ps| scope.egress[ps.egress].bind_mode()) {
            by_egress.entry(ps.egress).or_default().push(ps.clone());
        }
        for (egress, services) in by_egress {
            let bind = scope.egress[egress].bind_address();
            let name = format!("{bind}_{port}");
            if !seen.insert(name.clone()) {
                continue;
            }
            let mut chains = Chains::default();
            // In bind mode an HTTP port is one HCM; TCP goes to the first service on the port.
            let has_http = services.iter().any(|ps| {
                ps.service
                    .port(*port)
                    .is_some_and(|p| matches!(port_kind(&p.protocol), PortKind::Http | PortKind::Sniffed))
            });
            if has_http {
                let hcm = hcm_filter(&hcm_rds(&format!("outbound_{bind}_{port}"), &port.to_string()));
                chains.push(name.clone(), FilterChainMatch::default(), vec![hcm]);
            } else {
                port_chains(scope, *port, &services, false, &bind, &mut chains);
                // TCP on a bound port: the first service only (one chain without a match).
                if !chains.sni {
                    chains.chains.truncate(1);
                }
            }
            let mut l = socket_listener(name, &bind, *port, TrafficDirection::Outbound);
            l.listener_filters = chains.listener_filters();
            l.filter_chains = chains.chains;
            out.push(l);
        }
    }
    out
}

/// One port of the proxy's own workload.
#[derive(Clone, Debug)]
pub struct InboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// Where the application listens.
    pub target: Address,
    pub target_port: u16,
    /// `Some(address)` for a Sidecar ingress listener in bind mode.
    pub bind: Option<String>,
}

/// The HTTP connection manager of an inbound port: everything to the local application.
fn inbound_hcm(stat_prefix: &str, port: u16) -> HttpConnectionManager {
    let cluster = inbound_cluster(port);
    let route = Route {
        name: "default".into(),
        r#match: Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
            path_specifier: Some(envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                "/".into(),
            )),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
            timeout: Some(pb::secs(0)),
            ..Default::default()
        })),
        ..Default::default()
    };
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: cluster,
            virtual_hosts: vec![VirtualHost {
                name: format!("inbound|http|{port}"),
                domains: vec!["*".into()],
                routes: vec![route],
                ..Default::default()
            }],
            validate_clusters: Some(pb::boolv(false)),
            ..Default::default()
        })),
        http_filters: http_filters(false),
        use_remote_address: Some(pb::boolv(false)),
        upgrade_configs: vec![UpgradeConfig { upgrade_type: "websocket".into(), ..Default::default() }],
        ..Default::default()
    }
}

fn inbound_filters(p: &InboundPort, stat_prefix: &str) -> Vec<Filter> {
    match port_kind(&p.protocol) {
        PortKind::Http => vec![hcm_filter(&inbound_hcm(stat_prefix, p.port))],
        _ => vec![tcp_proxy_filter(&inbound_cluster(p.port), &[(inbound_cluster(p.port), 100)])],
    }
}

/// `virtualInbound`: a chain per captured inbound port to `inbound|PORT||`, the rest to
/// `InboundPassthroughCluster`.
pub fn virtual_inbound(ports: &[InboundPort]) -> Listener {
    let mut chains = Chains::default();
    for p in ports.iter().filter(|p| p.bind.is_none()) {
        let m = FilterChainMatch { destination_port: Some(pb::u32v(p.port as u32)), ..Default::default() };
        chains.push(inbound_cluster(p.port), m, inbound_filters(p, &format!("inbound_0.0.0.0_{}", p.port)));
    }
    let mut l = socket_listener(VIRTUAL_INBOUND.into(), "0.0.0.0", VIRTUAL_INBOUND_PORT, TrafficDirection::Inbound);
    l.listener_filters = vec![listener_filter("envoy.filters.listener.original_dst", &OriginalDst::default())];
    l.filter_chains = chains.chains;
    l.default_filter_chain = Some(FilterChain {
        name: INBOUND_PASSTHROUGH_CLUSTER.into(),
        filters: vec![tcp_proxy_filter(INBOUND_PASSTHROUGH_CLUSTER, &[(INBOUND_PASSTHROUGH_CLUSTER.to_string(), 100)])],
        ..Default::default()
    });
    l
}

/// Bind-mode ingress listeners (`BIND_PORT`).
pub fn bind_inbound(ports: &[InboundPort]) -> Vec<Listener> {
    ports
        .iter()
        .filter_map(|p| {
            let bind = p.bind.as_ref()?;
            let name = format!("{bind}_{}", p.port);
            let mut l = socket_listener(name.clone(), bind, p.port, TrafficDirection::Inbound);
            l.filter_chains = vec![FilterChain {
                name,
                filters: inbound_filters(p, &format!("inbound_{bind}_{}", p.port)),
                ..Default::default()
            }];
            Some(l)
        })
        .collect()
}

/// The API listener a proxyless gRPC client asks for as `HOST:PORT` (`name`), reading its
/// routes from RDS `route_name`.
pub fn grpc_listener(name: &str, route_name: &str) -> Listener {
    let name = name.to_string();
    let mut hcm = hcm_rds(&name, route_name);
    hcm.upgrade_configs.clear();
    hcm.use_remote_address = None;
    Listener { name, api_listener: Some(ApiListener { api_listener: Some(pb::any(&hcm)) }), ..Default::default() }
}

/// Parses a Sidecar ingress `defaultEndpoint` (`127.0.0.1:8080`, `0.0.0.0:8080`, `[::1]:8080`,
/// `unix:///path`); `0.0.0.0` means the instance address (`instance_ip`).
pub fn parse_default_endpoint(s: &str, instance_ip: Option<IpAddr>) -> Option<(Address, u16)> {
    if let Some(path) = s.strip_prefix("unix://") {
        return Some((Address::Unix(path.to_string()), 0));
    }
    let sa: std::net::SocketAddr = s.parse().ok()?;
    let ip = if sa.ip().is_unspecified() { instance_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])) } else { sa.ip() };
    Some((Address::Ip(ip), sa.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints_parse() {
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let cases: [(&str, Option<(Address, u16)>); 5] = [
            ("127.0.0.1:8080", Some((Address::Ip("127.0.0.1".parse().unwrap()), 8080))),
            ("0.0.0.0:9090", Some((Address::Ip(ip), 9090))),
            ("[::1]:80", Some((Address::Ip("::1".parse().unwrap()), 80))),
            ("unix:///var/run/app.sock", Some((Address::Unix("/var/run/app.sock".into()), 0))),
            ("nonsense", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_default_endpoint(s, Some(ip)), want, "{s}");
        }
    }

    #[test]
    fn port_kinds() {
        let cases = [
            (Protocol::Http, PortKind::Http),
            (Protocol::Grpc, PortKind::Http),
            (Protocol::Https, PortKind::Tls),
            (Protocol::Tls, PortKind::Tls),
            (Protocol::Mysql, PortKind::Tcp),
            (Protocol::Tcp, PortKind::Tcp),
            (Protocol::Unsupported(String::new()), PortKind::Sniffed),
        ];
        for (p, want) in cases {
            assert_eq!(port_kind(&p), want, "{p:?}");
        }
    }
}
