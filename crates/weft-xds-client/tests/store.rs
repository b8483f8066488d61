//! The store of accepted resources: rejections keep the last good version, names and addresses
//! may not collide, EDS assignments fill their clusters, missing resources are reported, and a
//! listener the proxy cannot bind goes back to its applied version.

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::{Message, Name};
use weft_config::{EndpointAddress, ProxyConfig};
use weft_xds_client::store::{Decoded, Kind, Store};

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn sock(ip: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn ads() -> Option<core::ConfigSource> {
    Some(core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(Default::default())),
        ..Default::default()
    })
}

fn eds_cluster(name: &str, weighted: bool) -> cl::Cluster {
    use cl::cluster::common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig};
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(cl::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig { eds_config: ads(), service_name: String::new() }),
        common_lb_config: weighted.then(|| cl::cluster::CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                LocalityWeightedLbConfig {},
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn assignment(name: &str, port: u32, locality_weight: u32) -> ep::ClusterLoadAssignment {
    ep::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![ep::LocalityLbEndpoints {
            lb_endpoints: vec![ep::LbEndpoint {
                host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                    address: sock("10.0.0.1", port),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            load_balancing_weight: Some(UInt32Value { value: locality_weight }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(name: &str, port: u32, route: &str) -> li::Listener {
    let h = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: ads(),
            route_config_name: route.into(),
        })),
        http_filters: vec![hcm::HttpFilter {
            name: "router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    li::Listener {
        name: name.into(),
        address: sock("127.0.0.1", port),
        filter_chains: vec![li::FilterChain {
            filters: vec![li::Filter {
                name: "hcm".into(),
                config_type: Some(li::filter::ConfigType::TypedConfig(any(&h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn put<M: Message + Name>(s: &mut Store, kind: Kind, name: &str, version: &str, m: &M) -> Result<bool, String> {
    let d = Decoded::decode(kind, &any(m))?;
    s.put(kind, name, version, d).map(|r| r.changed)
}

fn port_of(cfg: &ProxyConfig, cluster: &str) -> Option<u16> {
    match &cfg.clusters.get(cluster)?.localities.first()?.endpoints.first()?.address {
        EndpointAddress::Socket(a) => Some(a.port()),
        EndpointAddress::Dns { .. } => None,
    }
}

#[test]
fn eds_assignments_fill_their_clusters_and_locality_weights_follow_the_cluster() {
    let mut s = Store::new(Default::default());
    put(&mut s, Kind::Cluster, "plain", "1", &eds_cluster("plain", false)).unwrap();
    put(&mut s, Kind::Cluster, "weighted", "1", &eds_cluster("weighted", true)).unwrap();
    assert_eq!(s.eds_wanted().into_iter().collect::<Vec<_>>(), ["plain", "weighted"]);
    assert_eq!(s.missing(), vec![(Kind::Endpoint, "plain".to_string()), (Kind::Endpoint, "weighted".to_string())]);
    put(&mut s, Kind::Endpoint, "plain", "1", &assignment("plain", 80, 3)).unwrap();
    put(&mut s, Kind::Endpoint, "weighted", "1", &assignment("weighted", 81, 3)).unwrap();
    assert!(s.missing().is_empty());
    let cfg = s.assemble();
    assert_eq!(port_of(&cfg, "plain"), Some(80));
    assert_eq!(cfg.clusters["plain"].localities[0].weight, None);
    assert_eq!(cfg.clusters["weighted"].localities[0].weight, Some(3));
}

#[test]
fn a_rejected_update_keeps_the_last_good_version_until_a_good_one_comes() {
    let mut s = Store::new(Default::default());
    put(&mut s, Kind::Cluster, "c", "1", &eds_cluster("c", false)).unwrap();
    put(&mut s, Kind::Endpoint, "c", "1", &assignment("c", 80, 1)).unwrap();
    let before = s.fingerprint();
    let mut bad = assignment("c", 80, 1);
    bad.policy =
        Some(ep::cluster_load_assignment::Policy { drop_overloads: vec![Default::default()], ..Default::default() });
    let e = put(&mut s, Kind::Endpoint, "c", "2", &bad).unwrap_err();
    assert_eq!(e, r#"ClusterLoadAssignment "c": policy.drop_overloads: not supported"#);
    assert_eq!(s.version(Kind::Endpoint, "c"), Some("1"));
    assert_eq!(s.fingerprint(), before);
    assert_eq!(s.rejected()[&(Kind::Endpoint, "c".to_string())].version, "2");
    // The same version again changes nothing; a good one replaces the old and clears the rejection.
    assert_eq!(put(&mut s, Kind::Endpoint, "c", "1", &assignment("c", 80, 1)), Ok(false));
    assert_eq!(put(&mut s, Kind::Endpoint, "c", "3", &assignment("c", 90, 1)), Ok(true));
    assert!(s.rejected().is_empty());
    assert_eq!(port_of(&s.assemble(), "c"), Some(90));
    assert_ne!(s.fingerprint(), before);
}

#[test]
fn names_and_addresses_may_not_collide() {
    let base = weft_config::parse_str(
        r#"
listeners:
  - { name: admin-ish, address: "127.0.0.1:9100", tcp: { cluster: static } }
clusters:
  - { name: static, endpoints: ["127.0.0.1:1"] }
"#,
        "bootstrap.yaml",
    )
    .unwrap();
    let mut s = Store::new(base.config);
    let cases: Vec<(Kind, &str, Result<bool, String>)> = vec![
        (Kind::Cluster, "static", put(&mut s, Kind::Cluster, "static", "1", &eds_cluster("static", false))),
        (Kind::Listener, "a", put(&mut s, Kind::Listener, "a", "1", &listener("a", 9000, "r"))),
        (Kind::Listener, "b", put(&mut s, Kind::Listener, "b", "1", &listener("b", 9000, "r"))),
        (Kind::Listener, "c", put(&mut s, Kind::Listener, "c", "1", &listener("c", 9100, "r"))),
        // The delta resource name must be the resource's own name.
        (Kind::Cluster, "other", put(&mut s, Kind::Cluster, "other", "1", &eds_cluster("x", false))),
    ];
    let want = [
        Err(r#"Cluster "static": name: a static cluster has this name"#.to_string()),
        Ok(true),
        Err(r#"Listener "b": address: 127.0.0.1:9000 is used by listener "a""#.to_string()),
        Err(r#"Listener "c": address: 127.0.0.1:9100 is used by listener "admin-ish""#.to_string()),
        Err(r#"Cluster "other": its name is "x""#.to_string()),
    ];
    for ((kind, name, got), want) in cases.into_iter().zip(want) {
        assert_eq!(got, want, "{kind:?} {name}");
    }
    // Static resources are part of every assembled config.
    let cfg = s.assemble();
    assert!(cfg.clusters.contains_key("static"));
    assert_eq!(cfg.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["admin-ish", "a"]);
}

#[test]
fn routes_are_wanted_while_a_listener_uses_them_and_absent_ones_are_not_waited_for() {
    let mut s = Store::new(Default::default());
    put(&mut s, Kind::Listener, "l", "1", &listener("l", 0, "r")).unwrap();
    assert_eq!(s.missing(), vec![(Kind::Route, "r".to_string())]);
    // The server says "r" does not exist.
    assert!(!s.remove(Kind::Route, "r"));
    assert!(s.missing().is_empty());
    let route = rt::RouteConfiguration { name: "r".into(), ..Default::default() };
    put(&mut s, Kind::Route, "r", "1", &route).unwrap();
    assert!(s.assemble().route_configs.contains_key("r"));
    // Once no listener uses it, it is dropped.
    assert!(s.remove(Kind::Listener, "l"));
    assert!(s.drop_unwanted());
    assert!(s.assemble().route_configs.is_empty());
}

#[test]
fn a_listener_that_cannot_bind_goes_back_to_its_applied_version() {
    let mut s = Store::new(Default::default());
    put(&mut s, Kind::Listener, "l", "1", &listener("l", 9000, "r")).unwrap();
    s.mark_applied();
    put(&mut s, Kind::Listener, "l", "2", &listener("l", 9001, "r")).unwrap();
    put(&mut s, Kind::Listener, "new", "1", &listener("new", 9002, "r")).unwrap();
    assert!(s.revert_listener("l", "port busy".into()));
    assert!(s.revert_listener("new", "port busy".into()));
    assert!(!s.revert_listener("unknown", "x".into()));
    assert_eq!(s.version(Kind::Listener, "l"), Some("1"));
    assert_eq!(s.version(Kind::Listener, "new"), None);
    let cfg = s.assemble();
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(cfg.listeners[0].address.port(), 9000);
    assert_eq!(s.rejected()[&(Kind::Listener, "l".to_string())].version, "2");
}
