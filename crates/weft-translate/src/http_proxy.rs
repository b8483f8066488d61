//! HTTP-proxy mode (Istio's `proxyHttpPort`): for a proxy whose node metadata asks for it
//! (`HTTP_PROXY_PORT`), a listener `127.0.0.1_PORT` on 127.0.0.1 that takes absolute-form
//! requests (`GET http://reviews:9080/x`) and `CONNECT host:port`, routed by the requested
//! authority through the RouteConfiguration `http_proxy`: a virtual host per visible service
//! port (domains `host:port`, short names and VIP with the port; bare names too for port 80),
//! with the service's HTTP routes and a CONNECT route to its cluster; then the catch-all, which
//! sends unknown destinations to `HttpProxyPassthroughCluster` (Envoy's dynamic forward proxy:
//! the authority's name resolved with the system resolver) under ALLOW_ANY, or to
//! `BlackHoleCluster` (503 `UH`) under REGISTRY_ONLY.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, CustomClusterType, DiscoveryType, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action,
    route_action::{upgrade_config::ConnectConfig, ClusterSpecifier, UpgradeConfig as RouteUpgrade},
    route_match::{ConnectMatcher, PathSpecifier},
    weighted_cluster::ClusterWeight,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{
    cluster_config, ClusterConfig as DfpCluster,
};
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::{
    filter_config, FilterConfig as DfpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::UpgradeConfig, http_filter, HttpFilter,
};
use prost::Message;
use weft_istio::OutboundMode;
use weft_xds::{type_url, ResourceSet};

use crate::listener::{hcm_rds, port_kind, tcp_targets, PortKind};
use crate::naming::{outbound_cluster, BLACKHOLE_CLUSTER};
use crate::pb;
use crate::route::{domains, virtual_host};
use crate::scope::Scope;

/// The RouteConfiguration of the HTTP-proxy listener (Istio's name).
pub const ROUTE_NAME: &str = "http_proxy";
/// Where the HTTP-proxy listener sends destinations outside the mesh (and services whose
/// cluster is ORIGINAL_DST, which has no original destination to use on this listener).
pub const PASSTHROUGH_CLUSTER: &str = "HttpProxyPassthroughCluster";
/// Name of the DNS cache the forward proxy filter and cluster share.
const DNS_CACHE: &str = "http_proxy_dns_cache";
/// Addresses the listener binds: the proxy port is for local applications only.
const LISTEN_ADDRESS: &str = "127.0.0.1";

/// The listener's name for `port`: `127.0.0.1_15080`.
pub fn listener_name(port: u16) -> String {
    format!("{LISTEN_ADDRESS}_{port}")
}

/// The DNS cache of the forward proxy: the system's answers kept 60 s, at most 1024 names, IPv4
/// preferred (Envoy's defaults, with a bounded cache).
fn dns_cache() -> DnsCacheConfig {
    DnsCacheConfig {
        name: DNS_CACHE.to_string(),
        dns_lookup_family: envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily::V4Preferred as i32,
        dns_refresh_rate: Some(pb::duration(Duration::from_secs(60))),
        max_hosts: Some(pb::u32v(1024)),
        ..Default::default()
    }
}

/// `HttpProxyPassthroughCluster`: a dynamic forward proxy cluster.
pub fn passthrough_cluster() -> Cluster {
    let config = DfpCluster {
        cluster_implementation_specifier: Some(cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(
            dns_cache(),
        )),
        ..Default::default()
    };
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        connect_timeout: Some(pb::duration(crate::cluster::DEFAULT_CONNECT_TIMEOUT)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        cluster_discovery_type: Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
            name: "envoy.clusters.dynamic_forward_proxy".to_string(),
            typed_config: Some(pb::any(&config)),
        })),
        ..Default::default()
    }
}

/// The listener `127.0.0.1_PORT`: one HTTP connection manager (RDS `http_proxy`) accepting
/// absolute URLs, WebSocket and CONNECT upgrades, with the forward proxy filter before fault
/// and router.
pub fn listener(port: u16) -> Listener {
    let name = listener_name(port);
    let mut hcm = hcm_rds(&format!("outbound_{name}"), ROUTE_NAME);
    hcm.http_protocol_options =
        Some(Http1ProtocolOptions { allow_absolute_url: Some(pb::boolv(true)), ..Default::default() });
    hcm.upgrade_configs.push(UpgradeConfig { upgrade_type: "CONNECT".into(), ..Default::default() });
    let dfp = DfpFilter {
        implementation_specifier: Some(filter_config::ImplementationSpecifier::DnsCacheConfig(dns_cache())),
        ..Default::default()
    };
    hcm.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.dynamic_forward_proxy".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pb::any(&dfp))),
            ..Default::default()
        },
    );
    let filter = Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pb::any(&hcm))),
    };
    Listener {
        name: name.clone(),
        address: Some(pb::socket(LISTEN_ADDRESS, port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain { name, filters: vec![filter], ..Default::default() }],
        ..Default::default()
    }
}

/// A route for CONNECT requests, tunnelled (terminated: Envoy opens a TCP connection to the
/// cluster's host) to `clusters` (weighted when more than one).
fn connect_route(clusters: &[(String, u32)]) -> Route {
    let cluster_specifier = match clusters {
        [(only, _)] => ClusterSpecifier::Cluster(only.clone()),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: Some(pb::u32v(*weight)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        name: "connect".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::ConnectMatcher(ConnectMatcher {})),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: Some(pb::secs(0)),
            upgrade_configs: vec![RouteUpgrade {
                upgrade_type: "CONNECT".into(),
                connect_config: Some(ConnectConfig::default()),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Names of the ORIGINAL_DST clusters in `set`: on the HTTP-proxy listener the connection has no
/// original destination, so routes to them go to the forward proxy instead.
fn original_dst_clusters(set: &ResourceSet) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in set.of_type(type_url::CLUSTER).into_iter().flat_map(|m| m.values()) {
        if let Ok(c) = Cluster::decode(r.body.value.as_slice()) {
            if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)) {
                out.insert(c.name);
            }
        }
    }
    out
}

/// Points every route (and mirror) of `vh` that names one of `original_dst` at the forward
/// proxy cluster.
fn use_forward_proxy(vh: &mut VirtualHost, original_dst: &BTreeSet<String>) {
    let swap = |name: &mut String| {
        if original_dst.contains(name.as_str()) {
            *name = PASSTHROUGH_CLUSTER.to_string();
        }
    };
    for r in &mut vh.routes {
        let Some(Action::Route(ra)) = &mut r.action else { continue };
        match &mut ra.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => swap(c),
            Some(ClusterSpecifier::WeightedClusters(w)) => w.clusters.iter_mut().for_each(|c| swap(&mut c.name)),
            _ => {}
        }
        for m in &mut ra.request_mirror_policies {
            swap(&mut m.cluster);
        }
    }
}

/// The catch-all: the forward proxy (ALLOW_ANY) or the black hole (REGISTRY_ONLY), for plain
/// requests and CONNECT alike.
fn catch_all(mode: OutboundMode) -> VirtualHost {
    let (name, cluster) = match mode {
        OutboundMode::AllowAny => ("allow_any", PASSTHROUGH_CLUSTER),
        OutboundMode::RegistryOnly => ("block_all", BLACKHOLE_CLUSTER),
    };
    let plain = Route {
        name: name.into(),
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            timeout: Some(pb::secs(0)),
            ..Default::default()
        })),
        ..Default::default()
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![plain, connect_route(&[(cluster.to_string(), 100)])],
        ..Default::default()
    }
}

/// The RouteConfiguration `http_proxy` for a scope whose other outbound resources are `set`.
pub fn routes(scope: &Scope, set: &ResourceSet) -> RouteConfiguration {
    let original_dst = original_dst_clusters(set);
    let mut used = BTreeSet::new();
    let mut hosts = Vec::new();
    for (port, services) in &scope.ports {
        for ps in services {
            let s = &ps.service;
            let Some(sp) = s.port(*port) else { continue };
            let suffix = format!(":{port}");
            // A forward-proxy request names its port; a URL without one means 80.
            let domains: Vec<String> = domains(scope, s, *port)
                .into_iter()
                .filter(|d| d.ends_with(&suffix) || *port == 80)
                .filter(|d| used.insert(d.clone()))
                .collect();
            if domains.is_empty() {
                continue;
            }
            let service_cluster = outbound_cluster(*port, "", &s.host);
            let mut vh = match port_kind(&sp.protocol) {
                PortKind::Http | PortKind::Sniffed => {
                    let mut vh = virtual_host(scope, s, *port, domains);
                    vh.routes.push(connect_route(&[(service_cluster, 100)]));
                    vh
                }
                PortKind::Tcp => VirtualHost {
                    name: format!("{}:{port}", s.host),
                    domains,
                    routes: vec![connect_route(&tcp_targets(scope, s, *port))],
                    ..Default::default()
                },
                // The proxy does not look inside the tunnel: SNI routes cannot apply.
                PortKind::Tls => VirtualHost {
                    name: format!("{}:{port}", s.host),
                    domains,
                    routes: vec![connect_route(&[(service_cluster, 100)])],
                    ..Default::default()
                },
            };
            use_forward_proxy(&mut vh, &original_dst);
            hosts.push(vh);
        }
    }
    hosts.push(catch_all(scope.outbound_mode));
    RouteConfiguration {
        name: ROUTE_NAME.to_string(),
        virtual_hosts: hosts,
        validate_clusters: Some(pb::boolv(false)),
        ..Default::default()
    }
}
