//! The HTTP-proxy listener's resources (as weft-translate emits them, which Envoy accepts) in
//! weft's model, and the variants weft cannot honour, rejected with the field named.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3 as dfp_cluster;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3 as dfp_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{value::Kind, BoolValue, Struct, Value};
use prost::{Message, Name};
use weft_config::{ChainAction, Discovery, RouteAction};
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::Node;
use weft_xds::{type_url, NodeInfo, ResourceSet};
use weft_xds_client::convert;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.90.0.2]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}, {number: 80, name: http}]
  endpoints: [{address: 10.1.0.2}]
"#;

fn generated() -> ResourceSet {
    let resources = weft_istio::parse_yaml("t.yaml", MESH).unwrap().into_iter().map(Arc::new).collect();
    let mesh = Mesh::build(Input { resources, options: Options::default(), ..Default::default() }).0;
    let meta = Struct {
        fields: [(weft_xds::HTTP_PROXY_PORT.to_string(), Value { kind: Some(Kind::StringValue("15080".into())) })]
            .into_iter()
            .collect(),
    };
    let node = Node {
        id: "sidecar~10.9.9.9~web.shop~shop.svc.cluster.local".into(),
        metadata: Some(meta),
        ..Default::default()
    };
    mesh.generate(&NodeInfo::from_node(&node).unwrap())
}

fn decode<M: Message + Default>(set: &ResourceSet, ty: &str, name: &str) -> M {
    M::decode(set.get(ty, name).unwrap_or_else(|| panic!("no {name}")).body.value.as_slice()).unwrap()
}

fn hcm_of(l: &li::Listener) -> hcm::HttpConnectionManager {
    let Some(li::filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else { panic!() };
    hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap()
}

fn with_hcm(l: &li::Listener, change: impl FnOnce(&mut hcm::HttpConnectionManager)) -> li::Listener {
    let mut h = hcm_of(l);
    change(&mut h);
    let mut l = l.clone();
    l.filter_chains[0].filters[0].config_type =
        Some(li::filter::ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
            type_url: hcm::HttpConnectionManager::type_url(),
            value: h.encode_to_vec(),
        }));
    l
}

#[test]
fn the_generated_listener_routes_and_cluster_convert() {
    let set = generated();
    let l: li::Listener = decode(&set, type_url::LISTENER, "127.0.0.1_15080");
    let spec = convert::listener(&l).unwrap().expect("a socket listener");
    assert_eq!(spec.listener.address.to_string(), "127.0.0.1:15080");
    assert_eq!(spec.rds, ["http_proxy"]);
    let ChainAction::Http(h) = &spec.listener.filter_chains[0].action else { panic!("http") };
    assert!(h.connect && h.websocket);

    let rc: rt::RouteConfiguration = decode(&set, type_url::ROUTE, "http_proxy");
    let rc = convert::route_configuration(&rc).unwrap();
    let db = rc.virtual_hosts.iter().find(|v| v.name == "db.shop.svc.cluster.local:5432").unwrap();
    assert_eq!(db.routes.len(), 1);
    assert!(db.routes[0].matcher.connect);
    let RouteAction::Forward(fw) = &db.routes[0].action else { panic!("forward") };
    assert_eq!(fw.cluster.names(), ["outbound|5432||db.shop.svc.cluster.local"]);
    let any = rc.virtual_hosts.last().unwrap();
    assert_eq!(any.routes.iter().map(|r| r.matcher.connect).collect::<Vec<_>>(), [false, true]);

    let c: cl::Cluster = decode(&set, type_url::CLUSTER, "HttpProxyPassthroughCluster");
    let spec = convert::cluster(&c).unwrap();
    assert_eq!(
        spec.cluster.discovery,
        Discovery::DynamicForwardProxy { refresh: Duration::from_secs(60), max_hosts: 1024 }
    );
    assert!(spec.cluster.localities.is_empty());
}

#[test]
fn what_weft_cannot_honour_is_rejected_with_the_field() {
    let set = generated();
    let l: li::Listener = decode(&set, type_url::LISTENER, "127.0.0.1_15080");
    let rc: rt::RouteConfiguration = decode(&set, type_url::ROUTE, "http_proxy");
    let c: cl::Cluster = decode(&set, type_url::CLUSTER, "HttpProxyPassthroughCluster");

    let listener_err = |l: li::Listener| convert::listener(&l).unwrap_err().to_string();
    let e = listener_err(with_hcm(&l, |h| {
        h.http_protocol_options.as_mut().unwrap().allow_absolute_url = Some(BoolValue { value: false })
    }));
    assert!(e.contains("allow_absolute_url"), "{e}");
    let e = listener_err(with_hcm(&l, |h| {
        let f = &mut h.http_filters[0];
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &mut f.config_type else { panic!() };
        let mut fc = dfp_filter::FilterConfig::decode(any.value.as_slice()).unwrap();
        fc.implementation_specifier =
            Some(dfp_filter::filter_config::ImplementationSpecifier::SubClusterConfig(Default::default()));
        any.value = fc.encode_to_vec();
    }));
    assert!(e.contains("http_filters[0].typed_config.sub_cluster_config"), "{e}");

    // A CONNECT route must say it terminates the tunnel (Envoy would otherwise forward the
    // CONNECT request itself upstream).
    let mut no_terminate = rc.clone();
    let last = no_terminate.virtual_hosts.last_mut().unwrap();
    let Some(rt::route::Action::Route(ra)) = &mut last.routes[1].action else { panic!() };
    ra.upgrade_configs[0].connect_config = None;
    let e = convert::route_configuration(&no_terminate).unwrap_err().to_string();
    assert!(e.contains("connect_config") && e.contains("terminates CONNECT"), "{e}");
    let mut stray = rc.clone();
    let last = stray.virtual_hosts.last_mut().unwrap();
    let Some(rt::route::Action::Route(ra)) = &mut last.routes[0].action else { panic!() };
    ra.upgrade_configs.push(rt::route_action::UpgradeConfig { upgrade_type: "CONNECT".into(), ..Default::default() });
    let e = convert::route_configuration(&stray).unwrap_err().to_string();
    assert!(e.contains("needs a route with connect_matcher"), "{e}");

    let cluster_err = |change: &dyn Fn(&mut dfp_cluster::ClusterConfig)| {
        let mut c = c.clone();
        let Some(cl::cluster::ClusterDiscoveryType::ClusterType(ct)) = &mut c.cluster_discovery_type else { panic!() };
        let any = ct.typed_config.as_mut().unwrap();
        let mut cfg = dfp_cluster::ClusterConfig::decode(any.value.as_slice()).unwrap();
        change(&mut cfg);
        any.value = cfg.encode_to_vec();
        convert::cluster(&c).unwrap_err().to_string()
    };
    let e = cluster_err(&|cfg| cfg.allow_coalesced_connections = true);
    assert!(e.contains("allow_coalesced_connections"), "{e}");
    let e = cluster_err(&|cfg| {
        let Some(dfp_cluster::cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(d)) =
            &mut cfg.cluster_implementation_specifier
        else {
            panic!()
        };
        d.preresolve_hostnames.push(Default::default());
    });
    assert!(e.contains("dns_cache_config.preresolve_hostnames"), "{e}");
    let e = cluster_err(&|cfg| {
        cfg.cluster_implementation_specifier =
            Some(dfp_cluster::cluster_config::ClusterImplementationSpecifier::SubClustersConfig(Default::default()))
    });
    assert!(e.contains("sub_clusters_config"), "{e}");
    let mut other_type = c.clone();
    other_type.cluster_discovery_type =
        Some(cl::cluster::ClusterDiscoveryType::ClusterType(cl::cluster::CustomClusterType {
            name: "envoy.clusters.redis".into(),
            typed_config: None,
        }));
    let e = convert::cluster(&other_type).unwrap_err().to_string();
    assert!(e.contains("cluster_type") && e.contains("redis"), "{e}");
}
