//! The Envoy bootstraps of `weft_test::envoy`, checked by Envoy itself.

use std::process::Command;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use weft_test::envoy::{static_bootstrap, validate, AdsApi, AdsBootstrap};
use weft_test::tools::envoy_bin;

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A listener whose routes come over RDS (`routes`), an EDS cluster and, when asked, the
/// route table and the cluster's endpoints.
fn resources(with_routes: bool, with_endpoints: bool) -> Vec<Any> {
    let hcm = HttpConnectionManager {
        stat_prefix: "http".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: "routes".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: "http".into(),
        address: Some(socket("127.0.0.1", 10080)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let cluster = Cluster {
        name: "backend".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        ..Default::default()
    };
    let mut out = vec![any(&listener), any(&cluster)];
    if with_routes {
        // A route to a cluster nobody defines: fine over RDS, so fine inline too.
        let routes = RouteConfiguration {
            name: "routes".into(),
            virtual_hosts: vec![VirtualHost { name: "all".into(), domains: vec!["*".into()], ..Default::default() }],
            ..Default::default()
        };
        out.push(any(&routes));
    }
    if with_endpoints {
        let cla = ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket("127.0.0.1", 9)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        out.push(any(&cla));
    }
    out
}

#[test]
fn static_bootstraps_inline_routes_and_endpoints_and_envoy_accepts_them() {
    let b = static_bootstrap("n", &resources(true, true)).unwrap();
    let s = b.static_resources.as_ref().unwrap();
    let c = &s.clusters[0];
    assert_eq!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)));
    assert!(c.eds_cluster_config.is_none());
    assert_eq!(c.load_assignment.as_ref().unwrap().endpoints.len(), 1);
    let Some(filter::ConfigType::TypedConfig(hcm)) = &s.listeners[0].filter_chains[0].filters[0].config_type else {
        panic!("no connection manager")
    };
    let hcm = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else { panic!("routes not inline") };
    assert_eq!(rc.validate_clusters.map(|v| v.value), Some(false), "as over RDS");

    let dir = tempfile::tempdir().unwrap();
    validate(&envoy_bin(), dir.path(), "inline", &b).unwrap();
}

#[test]
fn static_bootstraps_refuse_references_the_set_cannot_satisfy() {
    let e = static_bootstrap("n", &resources(false, true)).unwrap_err();
    assert!(e.contains("route table \"routes\""), "{e}");
    let e = static_bootstrap("n", &resources(true, false)).unwrap_err();
    assert!(e.contains("endpoints \"backend\""), "{e}");
}

#[test]
fn ads_bootstraps_are_valid_envoy_bootstraps() {
    let dir = tempfile::tempdir().unwrap();
    let xds = "127.0.0.1:15010".parse().unwrap();
    let plain = AdsBootstrap::new("sidecar~127.0.0.8~a.shop~shop.svc.cluster.local", xds).api(AdsApi::Sotw);
    let full = AdsBootstrap::new("sidecar~127.0.0.9~b.shop~shop.svc.cluster.local", xds)
        .cluster("web")
        .namespace("shop")
        .label("app", "web")
        .label("version", "v1")
        .metadata("HTTP_PROXY_PORT", "15080")
        .admin();
    for (name, b) in [("plain", plain), ("full", full)] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, b.to_yaml()).unwrap();
        let out = Command::new(envoy_bin())
            .args(["--mode", "validate", "--disable-hot-restart", "--log-level", "error", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}:\n{}\n{}", b.to_yaml(), String::from_utf8_lossy(&out.stderr));
    }
}
