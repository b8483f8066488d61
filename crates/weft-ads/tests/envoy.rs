//! Real Envoy against the ADS server, over SotW and delta: Envoy must ACK clusters, endpoints,
//! listeners and routes, and its NACK of a broken listener must be recorded with the previous
//! version still ACKed.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::{Message, Name};
use weft_ads::{AdsOptions, Protocol, Source};
use weft_test::envoy::{AdsApi, AdsBootstrap};
use weft_xds::{NodeInfo, Resource, ResourceSet};

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// One cluster (EDS over ADS), its endpoints, an HTTP listener whose routes come over ADS, and
/// the route table. `listener_ok: false` leaves the listener without an address, which Envoy
/// rejects.
struct EnvoyMesh {
    listener_ok: bool,
}

impl Source for EnvoyMesh {
    fn generate(&self, _: &NodeInfo) -> Arc<ResourceSet> {
        let cluster = Cluster {
            name: "backend".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), ..Default::default() }),
            connect_timeout: Some(PbDuration { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        let endpoint = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket("127.0.0.1", 9)),
                ..Default::default()
            })),
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![LocalityLbEndpoints { lb_endpoints: vec![endpoint], ..Default::default() }],
            ..Default::default()
        };
        let hcm = HttpConnectionManager {
            stat_prefix: "http".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: "r1".into(),
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
            address: self.listener_ok.then(|| socket("127.0.0.1", 0)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let routes = RouteConfiguration {
            name: "r1".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("backend".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        set(vec![
            Resource::new("backend", &cluster),
            Resource::new("backend", &cla),
            Resource::new("http", &listener),
            Resource::new("r1", &routes),
        ])
    }
}

fn bootstrap(node_id: &str, ads_port: u16, protocol: Protocol) -> String {
    let api = match protocol {
        Protocol::Sotw => AdsApi::Sotw,
        Protocol::Delta => AdsApi::Delta,
    };
    AdsBootstrap::new(node_id, std::net::SocketAddr::from(([127, 0, 0, 1], ads_port)))
        .cluster("shop")
        .api(api)
        .to_yaml()
}

async fn envoy_acks_everything_and_its_nack_is_recorded(protocol: Protocol) {
    let server = TestServer::start(Arc::new(EnvoyMesh { listener_ok: true }), AdsOptions::default()).await;
    let port: u16 = server.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node_id = "sidecar~127.0.0.1~envoy-1.shop~shop.svc.cluster.local";
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap(node_id, port, protocol)).unwrap();
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let mut envoy = tokio::process::Command::new(weft_test::tools::envoy_bin())
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "--log-level", "info", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("envoy starts");
    let envoy_log = || std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();

    let all_in_sync = |p: &weft_ads::ProxyStatus| {
        p.types.len() == 4
            && p.types
                .values()
                .all(|t| t.in_sync && t.nack.is_none() && t.acked.as_ref().is_some_and(|a| a.resources == 1))
    };
    let mut synced = None;
    for _ in 0..600 {
        if let Some(p) = server.status_of(node_id).pop().filter(all_in_sync) {
            synced = Some(p);
            break;
        }
        if let Ok(Some(status)) = envoy.try_wait() {
            panic!("envoy exited with {status}:\n{}", envoy_log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = synced.unwrap_or_else(|| {
        panic!("envoy did not ACK all four types: {:#?}\n{}", server.status_of(node_id), envoy_log())
    });
    assert_eq!(p.protocol, protocol);
    let listener_v1 = p.types[LISTENER].acked.clone().unwrap().version;

    server.ads.publish(Arc::new(EnvoyMesh { listener_ok: false }));
    let mut nacked = None;
    for _ in 0..400 {
        if let Some(n) = server.status_of(node_id).pop().and_then(|p| p.types[LISTENER].nack.clone().map(|n| (p, n))) {
            nacked = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (p, nack) = nacked.unwrap_or_else(|| panic!("no NACK: {:#?}\n{}", server.status_of(node_id), envoy_log()));
    eprintln!("{protocol:?}: envoy's NACK: {}", nack.message);
    assert!(nack.message.contains("http"), "the NACK names the listener: {}", nack.message);
    assert_eq!(nack.resources, ["http"]);
    assert_eq!(p.types[LISTENER].acked.as_ref().unwrap().version, listener_v1, "the good listener stays ACKed");
    assert_eq!(server.ads.metrics().nacks, 1, "{}", nack.message);
    for t in [CLUSTER, ENDPOINT, ROUTE] {
        assert!(p.types[t].in_sync && p.types[t].nack.is_none(), "{t}: {:?}", p.types[t]);
    }
    envoy.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_sotw() {
    envoy_acks_everything_and_its_nack_is_recorded(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_delta() {
    envoy_acks_everything_and_its_nack_is_recorded(Protocol::Delta).await;
}
