//! HTTP-proxy mode in the translation: the `127.0.0.1_PORT` listener, the `http_proxy` routes and
//! the forward proxy cluster, only for proxies whose node metadata asks (`HTTP_PROXY_PORT`).

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use weft_xds::envoy_types::pb::envoy::config::core::v3::{address, Node};
use weft_xds::envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use weft_xds::envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier, RouteConfiguration, VirtualHost,
};
use weft_xds::envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use weft_xds::envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use weft_xds::{type_url, NodeInfo, ResourceSet};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [10.90.0.1]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 9080, name: http-alt, protocol: HTTP}]
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.90.0.2]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.1.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: anything, namespace: shop}
spec:
  hosts: ["*.partner.example"]
  resolution: NONE
  ports: [{number: 8080, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
    name: v2
  - route: [{destination: {host: reviews}}]
    name: rest
"#;

const REGISTRY_ONLY: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;

fn mesh(yaml: &str) -> Mesh {
    let resources = weft_istio::parse_yaml("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let resources = resources.into_iter().map(Arc::new).collect();
    Mesh::build(Input { resources, options: Options::default(), ..Default::default() }).0
}

fn node(port: Option<&str>) -> NodeInfo {
    let metadata = port.map(|p| Struct {
        fields: [(weft_xds::HTTP_PROXY_PORT.to_string(), Value { kind: Some(Kind::StringValue(p.into())) })]
            .into_iter()
            .collect(),
    });
    NodeInfo::from_node(&Node {
        id: "sidecar~10.9.9.9~web-1.shop~shop.svc.cluster.local".into(),
        metadata,
        ..Default::default()
    })
    .unwrap()
}

fn names(set: &ResourceSet, ty: &str) -> BTreeSet<String> {
    set.of_type(ty).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn decode<M: Message + Default>(set: &ResourceSet, ty: &str, name: &str) -> M {
    M::decode(set.get(ty, name).unwrap_or_else(|| panic!("no {name}")).body.value.as_slice()).unwrap()
}

fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no virtual host {name}"))
}

/// `(route name, connect?, cluster)` of each route of a virtual host.
fn routes(vh: &VirtualHost) -> Vec<(String, bool, String)> {
    vh.routes
        .iter()
        .map(|r| {
            let connect = matches!(
                r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()),
                Some(PathSpecifier::ConnectMatcher(_))
            );
            let cluster = match &r.action {
                Some(Action::Route(ra)) => match &ra.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => c.clone(),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            };
            (r.name.clone(), connect, cluster)
        })
        .collect()
}

#[test]
fn only_proxies_that_ask_get_the_http_proxy_listener() {
    let m = mesh(MESH);
    let plain = m.generate(&node(None));
    assert!(!names(&plain, type_url::ROUTE).contains("http_proxy"));
    assert!(!names(&plain, type_url::CLUSTER).contains("HttpProxyPassthroughCluster"));
    assert!(!names(&plain, type_url::LISTENER).iter().any(|l| l.starts_with("127.0.0.1_")));

    let asked = m.generate(&node(Some("15080")));
    assert!(names(&asked, type_url::ROUTE).contains("http_proxy"));
    assert!(names(&asked, type_url::CLUSTER).contains("HttpProxyPassthroughCluster"));
    assert!(names(&asked, type_url::LISTENER).contains("127.0.0.1_15080"));
    // Everything else is the same as for a proxy without the port.
    for ty in [type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER, type_url::ENDPOINT] {
        let extra: BTreeSet<String> = names(&asked, ty).difference(&names(&plain, ty)).cloned().collect();
        let want: &[&str] = match ty {
            t if t == type_url::LISTENER => &["127.0.0.1_15080"],
            t if t == type_url::ROUTE => &["http_proxy"],
            t if t == type_url::CLUSTER => &["HttpProxyPassthroughCluster"],
            _ => &[],
        };
        assert_eq!(extra, want.iter().map(|s| s.to_string()).collect(), "{ty}");
        assert!(names(&plain, ty).is_subset(&names(&asked, ty)), "{ty}");
    }
    // Proxies that ask share their scope's routes; the listener follows each one's port.
    let other = m.generate(&node(Some("18080")));
    assert!(names(&other, type_url::LISTENER).contains("127.0.0.1_18080"));
    assert!(Arc::ptr_eq(
        asked.get(type_url::ROUTE, "http_proxy").unwrap(),
        other.get(type_url::ROUTE, "http_proxy").unwrap()
    ));
    assert_eq!(m.cached_scopes(), 2, "with and without the HTTP proxy");
}

#[test]
fn the_listener_takes_absolute_urls_and_connect_on_loopback() {
    let set = mesh(MESH).generate(&node(Some("15080")));
    let l: Listener = decode(&set, type_url::LISTENER, "127.0.0.1_15080");
    let Some(address::Address::SocketAddress(sa)) = l.address.as_ref().and_then(|a| a.address.as_ref()) else {
        panic!("socket address")
    };
    assert_eq!(sa.address, "127.0.0.1");
    assert_eq!(format!("{:?}", sa.port_specifier), "Some(PortValue(15080))");
    assert_eq!(l.filter_chains.len(), 1);
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else { panic!() };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else { panic!("rds") };
    assert_eq!(rds.route_config_name, "http_proxy");
    assert_eq!(
        hcm.http_protocol_options.as_ref().and_then(|o| o.allow_absolute_url.as_ref()).map(|b| b.value),
        Some(true)
    );
    let upgrades: Vec<&str> = hcm.upgrade_configs.iter().map(|u| u.upgrade_type.as_str()).collect();
    assert_eq!(upgrades, ["websocket", "CONNECT"]);
    let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        ["envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.fault", "envoy.filters.http.router"]
    );
    assert!(hcm.http_filters.iter().all(|f| matches!(f.config_type, Some(http_filter::ConfigType::TypedConfig(_)))));

    let c: Cluster = decode(&set, type_url::CLUSTER, "HttpProxyPassthroughCluster");
    let Some(ClusterDiscoveryType::ClusterType(t)) = &c.cluster_discovery_type else { panic!("custom cluster type") };
    assert_eq!(t.name, "envoy.clusters.dynamic_forward_proxy");
}

#[test]
fn routes_name_every_service_port_and_tunnel_connect_to_the_service() {
    let set = mesh(MESH).generate(&node(Some("15080")));
    let rc: RouteConfiguration = decode(&set, type_url::ROUTE, "http_proxy");
    let r80 = vhost(&rc, "reviews.shop.svc.cluster.local:80");
    for d in ["reviews.shop.svc.cluster.local", "reviews", "reviews:80", "reviews.shop:80", "10.90.0.1", "10.90.0.1:80"]
    {
        assert!(r80.domains.iter().any(|x| x == d), "port 80 answers {d}: {:?}", r80.domains);
    }
    let r9080 = vhost(&rc, "reviews.shop.svc.cluster.local:9080");
    assert!(r9080.domains.iter().all(|d| d.ends_with(":9080")), "other ports only with the port: {:?}", r9080.domains);
    assert!(r9080.domains.iter().any(|d| d == "reviews:9080"));
    // The VirtualService's routes, then the tunnel to the port's own cluster.
    assert_eq!(
        routes(r9080),
        [
            ("v2".into(), false, "outbound|9080||reviews.shop.svc.cluster.local".into()),
            ("rest".into(), false, "outbound|9080||reviews.shop.svc.cluster.local".into()),
            ("connect".into(), true, "outbound|9080||reviews.shop.svc.cluster.local".into()),
        ]
    );
    let db = vhost(&rc, "db.shop.svc.cluster.local:5432");
    assert!(db.domains.iter().any(|d| d == "db:5432") && db.domains.iter().all(|d| d.ends_with(":5432")));
    assert_eq!(routes(db), [("connect".into(), true, "outbound|5432||db.shop.svc.cluster.local".into())]);
    assert_eq!(
        routes(vhost(&rc, "api.example.com:443")),
        [("connect".into(), true, "outbound|443||api.example.com".into())]
    );
    // A service without addresses of its own (ORIGINAL_DST) goes through the forward proxy: on
    // this listener the connection's destination is the proxy itself.
    let partner = vhost(&rc, "*.partner.example:8080");
    assert_eq!(partner.domains, ["*.partner.example:8080"]);
    assert!(routes(partner).iter().all(|(_, _, c)| c == "HttpProxyPassthroughCluster"), "{:?}", routes(partner));

    let any = rc.virtual_hosts.last().unwrap();
    assert_eq!(any.domains, ["*"]);
    assert_eq!(
        routes(any),
        [
            ("allow_any".into(), false, "HttpProxyPassthroughCluster".into()),
            ("connect".into(), true, "HttpProxyPassthroughCluster".into()),
        ]
    );
    // No domain appears twice.
    let all: Vec<&String> = rc.virtual_hosts.iter().flat_map(|v| v.domains.iter()).collect();
    assert_eq!(all.len(), all.iter().collect::<BTreeSet<_>>().len(), "{all:?}");
}

#[test]
fn registry_only_sends_unknown_destinations_to_the_black_hole() {
    let set = mesh(&format!("{MESH}{REGISTRY_ONLY}")).generate(&node(Some("15080")));
    let rc: RouteConfiguration = decode(&set, type_url::ROUTE, "http_proxy");
    let any = rc.virtual_hosts.last().unwrap();
    assert_eq!(any.name, "block_all");
    assert_eq!(
        routes(any),
        [("block_all".into(), false, "BlackHoleCluster".into()), ("connect".into(), true, "BlackHoleCluster".into())]
    );
    // Registered services are still reachable, ORIGINAL_DST ones through the forward proxy.
    assert!(routes(vhost(&rc, "*.partner.example:8080")).iter().all(|(_, _, c)| c == "HttpProxyPassthroughCluster"));
}

#[test]
fn grpc_clients_never_get_the_listener() {
    let mut n = node(Some("15080"));
    n.generator = weft_xds::Generator::Grpc;
    let set = mesh(MESH).generate(&n);
    assert!(!names(&set, type_url::LISTENER).contains("127.0.0.1_15080"));
    assert!(!names(&set, type_url::ROUTE).contains("http_proxy"));
}
