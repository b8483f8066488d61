//! Table-driven behaviour tests of the translation: naming, scoping, visibility, subsets,
//! weights, defaults, caching and tenant isolation.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::{address, Node};
use weft_xds::envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use weft_xds::envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, RouteConfiguration,
};
use weft_xds::{type_url, Generator, NodeInfo, ResourceSet};

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: ns1}
spec:
  hosts: [a.ns1.svc.cluster.local]
  addresses: [10.90.0.1]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1}}
  - {address: 10.1.0.2, labels: {version: v2}, weight: 4}
  - {address: 10.1.0.3, labels: {version: v2, canary: "yes"}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: ns2}
spec:
  hosts: [b.ns2.svc.cluster.local]
  addresses: [10.90.0.2]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 5432, name: tcp}]
  endpoints: [{address: 10.2.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: ns2}
spec:
  hosts: [private.ns2.svc.cluster.local]
  addresses: [10.90.0.3]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.2.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: ns2}
spec:
  hosts: [ext.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: ns1}
spec:
  host: a
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: canary, labels: {version: v2, canary: "yes"}}
"#;

fn parse(yaml: &str) -> Vec<Arc<weft_istio::Resource>> {
    weft_istio::parse_yaml("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}")).into_iter().map(Arc::new).collect()
}

fn mesh(yaml: &str) -> (Mesh, Vec<weft_translate::Warning>) {
    Mesh::build(Input { resources: parse(yaml), options: Options::default(), ..Default::default() })
}

fn node(ns: &str, labels: &[(&str, &str)]) -> NodeInfo {
    let mut n = NodeInfo::from_node(&Node {
        id: format!("sidecar~10.9.9.9~p.{ns}~{ns}.svc.cluster.local"),
        ..Default::default()
    })
    .unwrap();
    n.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    n
}

fn names(set: &ResourceSet, ty: &str) -> BTreeSet<String> {
    set.of_type(ty).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn route_config(set: &ResourceSet, name: &str) -> RouteConfiguration {
    RouteConfiguration::decode(set.get(type_url::ROUTE, name).expect("route config").body.value.as_slice()).unwrap()
}

fn endpoint_ips(set: &ResourceSet, cluster: &str) -> Vec<String> {
    let r = set.get(type_url::ENDPOINT, cluster).unwrap_or_else(|| panic!("no EDS {cluster}"));
    let cla = ClusterLoadAssignment::decode(r.body.value.as_slice()).unwrap();
    let mut out = Vec::new();
    for g in &cla.endpoints {
        for e in &g.lb_endpoints {
            if let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier {
                if let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref())
                {
                    out.push(sa.address.clone());
                }
            }
        }
    }
    out
}

#[test]
fn cluster_names_follow_istio() {
    let (m, _) = mesh(SERVICES);
    let set = m.generate(&node("ns1", &[]));
    let clusters = names(&set, type_url::CLUSTER);
    for want in [
        "outbound|80||a.ns1.svc.cluster.local",
        "outbound|80|v1|a.ns1.svc.cluster.local",
        "outbound|80|canary|a.ns1.svc.cluster.local",
        "outbound|5432||b.ns2.svc.cluster.local",
        "outbound|443||ext.example.com",
        "PassthroughCluster",
        "BlackHoleCluster",
        "InboundPassthroughCluster",
    ] {
        assert!(clusters.contains(want), "{want} missing from {clusters:?}");
    }
    assert!(!clusters.contains("outbound|80||private.ns2.svc.cluster.local"), "exportTo . hides it from ns1");
    // EDS only for EDS clusters (STATIC), not for the DNS one.
    let eds = names(&set, type_url::ENDPOINT);
    assert!(eds.contains("outbound|80||a.ns1.svc.cluster.local"));
    assert!(!eds.contains("outbound|443||ext.example.com"));
    assert_eq!(names(&set, type_url::LISTENER), BTreeSet::from(["virtualInbound".into(), "virtualOutbound".into()]));
    assert_eq!(names(&set, type_url::ROUTE), BTreeSet::from(["80".to_string()]));
}

#[test]
fn subsets_select_endpoints_by_labels() {
    let (m, _) = mesh(SERVICES);
    let set = m.generate(&node("ns1", &[]));
    let cases = [
        ("outbound|80||a.ns1.svc.cluster.local", vec!["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        ("outbound|80|v1|a.ns1.svc.cluster.local", vec!["10.1.0.1"]),
        ("outbound|80|v2|a.ns1.svc.cluster.local", vec!["10.1.0.2", "10.1.0.3"]),
        ("outbound|80|canary|a.ns1.svc.cluster.local", vec!["10.1.0.3"]),
    ];
    for (cluster, want) in cases {
        assert_eq!(endpoint_ips(&set, cluster), want, "{cluster}");
    }
}

#[test]
fn export_to_and_namespaces_decide_visibility() {
    let (m, _) = mesh(SERVICES);
    let cases: [(&str, &str, bool); 4] = [
        ("ns1", "outbound|80||private.ns2.svc.cluster.local", false),
        ("ns2", "outbound|80||private.ns2.svc.cluster.local", true),
        ("ns1", "outbound|80||b.ns2.svc.cluster.local", true),
        ("other", "outbound|80||a.ns1.svc.cluster.local", true),
    ];
    for (ns, cluster, want) in cases {
        let set = m.generate(&node(ns, &[]));
        assert_eq!(names(&set, type_url::CLUSTER).contains(cluster), want, "{ns} sees {cluster}");
    }
}

#[test]
fn sidecar_egress_hosts_limit_what_a_proxy_receives() {
    let sidecars = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ns1}
spec:
  egress:
  - hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: special, namespace: ns1}
spec:
  workloadSelector: {labels: {app: special}}
  egress:
  - hosts: ["ns2/b.ns2.svc.cluster.local", "*/ext.example.com"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress:
  - hosts: ["ns2/*"]
"#;
    let (m, _) = mesh(&format!("{SERVICES}{sidecars}"));
    let hosts = |ns: &str, labels: &[(&str, &str)]| -> BTreeSet<String> {
        names(&m.generate(&node(ns, labels)), type_url::CLUSTER)
            .into_iter()
            .filter(|c| c.starts_with("outbound|") && c.split('|').nth(2) == Some(""))
            .map(|c| c.rsplit('|').next().unwrap().to_string())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // Namespace default Sidecar: own namespace only.
    assert_eq!(hosts("ns1", &[]), set(&["a.ns1.svc.cluster.local"]));
    // Selector Sidecar wins over the namespace default.
    assert_eq!(hosts("ns1", &[("app", "special")]), set(&["b.ns2.svc.cluster.local", "ext.example.com"]));
    // No Sidecar in the namespace: the root namespace's.
    assert_eq!(
        hosts("ns3", &[]),
        set(&["b.ns2.svc.cluster.local", "ext.example.com"]),
        "private is exported to ns2 only"
    );
    assert_eq!(
        hosts("ns2", &[]),
        set(&["b.ns2.svc.cluster.local", "ext.example.com", "private.ns2.svc.cluster.local"])
    );
}

#[test]
fn virtual_hosts_answer_to_short_names_in_the_proxy_namespace() {
    let (m, _) = mesh(SERVICES);
    let domains = |ns: &str| -> Vec<String> {
        let rc = route_config(&m.generate(&node(ns, &[])), "80");
        rc.virtual_hosts.iter().find(|v| v.name == "a.ns1.svc.cluster.local:80").unwrap().domains.clone()
    };
    let own = domains("ns1");
    for d in ["a", "a:80", "a.ns1", "a.ns1.svc:80", "a.ns1.svc.cluster.local", "10.90.0.1", "10.90.0.1:80"] {
        assert!(own.contains(&d.to_string()), "{d} missing in {own:?}");
    }
    let other = domains("ns2");
    assert!(!other.contains(&"a".to_string()) && other.contains(&"a.ns1".to_string()), "{other:?}");
    // The catch-all comes last.
    let rc = route_config(&m.generate(&node("ns1", &[])), "80");
    assert_eq!(rc.virtual_hosts.last().unwrap().name, "allow_any");
}

#[test]
fn routes_default_and_weights() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: ns1}
spec:
  hosts: [a]
  http:
  - match: [{sourceLabels: {app: tester}}]
    route: [{destination: {host: a, subset: canary}}]
  - route:
    - {destination: {host: a, subset: v1}, weight: 70}
    - {destination: {host: a, subset: v2}, weight: 30}
    - {destination: {host: a, subset: canary}, weight: 0}
"#;
    let (m, warnings) = mesh(&format!("{SERVICES}{vs}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let actions = |labels: &[(&str, &str)]| -> Vec<String> {
        let rc = route_config(&m.generate(&node("ns1", labels)), "80");
        let vh = rc.virtual_hosts.iter().find(|v| v.name == "a.ns1.svc.cluster.local:80").unwrap();
        vh.routes
            .iter()
            .map(|r| match &r.action {
                Some(Action::Route(ra)) => match &ra.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => c.clone(),
                    Some(ClusterSpecifier::WeightedClusters(w)) => w
                        .clusters
                        .iter()
                        .map(|c| format!("{}={}", c.name.split('|').nth(2).unwrap(), c.weight.as_ref().unwrap().value))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect()
    };
    // sourceLabels: only the tester gets the first route; weight-0 destinations are dropped.
    assert_eq!(actions(&[("app", "tester")]), ["outbound|80|canary|a.ns1.svc.cluster.local", "v1=70,v2=30"]);
    assert_eq!(actions(&[]), ["v1=70,v2=30"]);
    // Without a VirtualService: one default route with Istio's retry policy.
    let rc = route_config(&m.generate(&node("ns1", &[])), "80");
    let b = rc.virtual_hosts.iter().find(|v| v.name == "b.ns2.svc.cluster.local:80").unwrap();
    assert_eq!(b.routes.len(), 1);
    let Some(Action::Route(ra)) = &b.routes[0].action else { panic!() };
    let retry = ra.retry_policy.as_ref().unwrap();
    assert_eq!(
        (retry.retry_on.as_str(), retry.num_retries.as_ref().unwrap().value),
        (weft_translate::DEFAULT_RETRY_ON, 2)
    );
    assert_eq!(ra.timeout.as_ref().map(|t| t.seconds), Some(0), "Istio's default: no route timeout");
}

#[test]
fn no_default_retry_option_drops_the_retry_policy() {
    let opts = Options { default_retry: false, ..Default::default() };
    let (m, _) = Mesh::build(Input { resources: parse(SERVICES), options: opts, ..Default::default() });
    let rc = route_config(&m.generate(&node("ns1", &[])), "80");
    let Some(Action::Route(ra)) = &rc.virtual_hosts[0].routes[0].action else { panic!() };
    assert!(ra.retry_policy.is_none());
}

#[test]
fn proxies_of_one_scope_share_resources() {
    let (m, _) = mesh(SERVICES);
    let a = m.generate(&node("ns1", &[("pod", "1")]));
    let b = m.generate(&node("ns1", &[("pod", "2")]));
    assert_eq!(m.cached_scopes(), 1, "labels nothing selects on do not split the scope");
    let ra = a.get(type_url::ROUTE, "80").unwrap();
    let rb = b.get(type_url::ROUTE, "80").unwrap();
    assert!(Arc::ptr_eq(ra, rb), "same Arc for the same scope");
    m.generate(&node("ns2", &[]));
    assert_eq!(m.cached_scopes(), 2);
    let mut grpc = node("ns1", &[]);
    grpc.generator = Generator::Grpc;
    let g = m.generate(&grpc);
    assert_eq!(m.cached_scopes(), 3);
    assert!(g.get(type_url::LISTENER, "a.ns1.svc.cluster.local:80").is_some());
    assert!(g.get(type_url::LISTENER, "virtualOutbound").is_none());
}

#[test]
fn tenants_never_see_each_other() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: red, labels: {weft.io/tenant: red}}
spec:
  hosts: [shared.internal]
  addresses: [10.50.0.1]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.51.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: only-blue, labels: {weft.io/tenant: blue}}
spec:
  hosts: [blue.internal]
  addresses: [10.50.0.2]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.52.0.1}]
"#;
    let (m, _) = mesh(yaml);
    let mut n = node("default", &[]);
    n.tenant = "red".into();
    let red = m.generate(&n);
    n.tenant = "blue".into();
    let blue = m.generate(&n);
    assert!(names(&red, type_url::CLUSTER).contains("outbound|80||shared.internal"));
    assert!(!names(&red, type_url::CLUSTER).contains("outbound|80||blue.internal"));
    assert!(!names(&blue, type_url::CLUSTER).contains("outbound|80||shared.internal"));
    assert_eq!(endpoint_ips(&red, "outbound|80||shared.internal"), ["10.51.0.1"]);
    n.tenant = "nobody".into();
    let none = m.generate(&n);
    assert!(names(&none, type_url::CLUSTER).iter().all(|c| !c.starts_with("outbound|")));
}

#[test]
fn vips_are_needed_for_hosts_without_addresses() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x, namespace: shop}
spec:
  hosts: [api.example.com, short]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: w, namespace: shop}
spec:
  hosts: ["*.wild.example.com"]
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 10.3.3.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: y, namespace: shop}
spec:
  hosts: [passthrough.example.com]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: z, namespace: shop}
spec:
  hosts: [fixed.example.com]
  addresses: [10.1.1.1]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;
    let need = Mesh::hosts_needing_vips(&parse(yaml), &[]);
    assert_eq!(
        need,
        [
            ("default".to_string(), "api.example.com".to_string()),
            ("default".to_string(), "short.shop.svc.cluster.local".to_string())
        ]
    );
}

#[test]
fn warnings_name_the_resource() {
    let yaml = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad, namespace: ns1}
spec:
  hosts: [a]
  http:
  - route: [{destination: {host: a, subset: nope}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost, namespace: ns1}
spec:
  hosts: [ghost.example.com]
  http:
  - route: [{destination: {host: ghost.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: vm, namespace: ns1}
spec:
  ingress:
  - {port: {number: 80, name: http}, bind: 127.0.0.2, captureMode: NONE}
  egress:
  - {port: {number: 80, name: http}, bind: 127.0.0.2, captureMode: NONE, hosts: ["*/*"]}
"#;
    let (_, warnings) = mesh(&format!("{SERVICES}{yaml}"));
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    let want = [
        "VirtualService ns1/bad: destination a.ns1.svc.cluster.local subset nope is not defined by any DestinationRule",
        "VirtualService ns1/ghost: destination host ghost.example.com is not a known service",
        "VirtualService ns1/ghost: host ghost.example.com matches no ServiceEntry host; its routes are not applied",
        "Sidecar ns1/vm: ingress and egress listeners both bind 127.0.0.2:80; only the ingress listener is served",
    ];
    for w in want {
        assert!(text.iter().any(|t| t == w), "{w:?} not in {text:#?}");
    }
}

#[test]
fn inbound_ports_come_from_the_proxys_own_endpoints() {
    let (m, _) = mesh(SERVICES);
    let mut n = node("ns1", &[]);
    n.ips = vec!["10.1.0.2".parse().unwrap()];
    let set = m.generate(&n);
    assert!(names(&set, type_url::CLUSTER).contains("inbound|80||"));
    n.ips = vec!["10.200.0.1".parse().unwrap()];
    let set = m.generate(&n);
    assert!(!names(&set, type_url::CLUSTER).iter().any(|c| c.starts_with("inbound|")));
}

#[test]
fn sniffed_services_without_address_share_a_port_chain_by_protocol() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: ns1}
spec:
  hosts: [legacy.example.com]
  resolution: DNS
  ports: [{number: 7000, name: legacy}]
"#;
    let (m, _) = mesh(yaml);
    let set = m.generate(&node("ns1", &[]));
    let r = set.get(type_url::LISTENER, "virtualOutbound").unwrap();
    let l = weft_xds::envoy_types::pb::envoy::config::listener::v3::Listener::decode(r.body.value.as_slice()).unwrap();
    let matches: Vec<(Option<u32>, Vec<String>)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (m.destination_port.map(|p| p.value), m.application_protocols)
        })
        .collect();
    assert_eq!(matches, [(Some(7000), vec![]), (Some(7000), vec!["http/1.1".to_string(), "h2c".to_string()])]);
    assert_eq!(l.listener_filters.len(), 1, "http_inspector");
}

#[test]
fn bind_mode_ingress_without_bind_listens_on_the_workload_address() {
    let yaml = format!(
        "{SERVICES}---\n{}",
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: a, namespace: ns1}
spec:
  ingress:
  - port: {number: 80, protocol: HTTP, name: http}
    captureMode: NONE
    defaultEndpoint: 0.0.0.0:8080
  - port: {number: 81, protocol: HTTP, name: http2}
    bind: 127.0.0.7
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:8081
"#
    );
    let (m, _) = mesh(&yaml);
    let mut with_ip = node("ns1", &[]);
    with_ip.ips = vec!["10.1.0.1".parse().unwrap()];
    let mut without_ip = node("ns1", &[]);
    without_ip.ips.clear();
    for (n, want) in [(&with_ip, ["10.1.0.1_80", "127.0.0.7_81"]), (&without_ip, ["0.0.0.0_80", "127.0.0.7_81"])] {
        let got = names(&m.generate(n), type_url::LISTENER);
        for w in want {
            assert!(got.contains(w), "{w} not in {got:?}");
        }
        assert!(!got.contains("virtualInbound"), "{got:?}");
    }
}

#[test]
fn authority_header_operations_become_host_rewrites() {
    // Envoy refuses header operations on `:authority`/`host` (found by tests/envoy_validate.rs):
    // Istio turns them into host rewrites, the destination's over `rewrite.authority` over the
    // route's own.
    use weft_xds::envoy_types::pb::envoy::config::route::v3::{
        route_action::HostRewriteSpecifier, weighted_cluster::cluster_weight,
    };
    let yaml = format!(
        "{SERVICES}---\n{}",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: ns1}
spec:
  hosts: [a]
  http:
  - match: [{uri: {prefix: /route}}]
    headers: {request: {set: {":authority": route.example.com, x-kept: "1"}}}
    route: [{destination: {host: a}}]
  - match: [{uri: {prefix: /rewrite}}]
    headers: {request: {set: {host: route.example.com}}}
    rewrite: {authority: rewrite.example.com}
    route: [{destination: {host: a}}]
  - match: [{uri: {prefix: /dest}}]
    rewrite: {authority: rewrite.example.com}
    route: [{destination: {host: a}, headers: {request: {add: {Host: dest.example.com}}}}]
  - match: [{uri: {prefix: /split}}]
    headers: {request: {set: {":authority": route.example.com}}}
    route:
    - {destination: {host: a, subset: v1}, weight: 50, headers: {request: {set: {":authority": v1.example.com}}}}
    - {destination: {host: a, subset: v2}, weight: 50}
  - headers: {request: {set: {":authority": route.example.com}}}
    redirect: {uri: /moved}
"#
    );
    let (m, _) = mesh(&yaml);
    let rc = route_config(&m.generate(&node("ns1", &[])), "80");
    let vh = rc.virtual_hosts.iter().find(|v| v.domains.iter().any(|d| d == "a.ns1.svc.cluster.local")).unwrap();
    for r in &vh.routes {
        for h in r.request_headers_to_add.iter().filter_map(|h| h.header.as_ref()) {
            assert!(!h.key.starts_with(':') && !h.key.eq_ignore_ascii_case("host"), "{h:?} in {}", r.name);
        }
    }
    let rewrite = |i: usize| match &vh.routes[i].action {
        Some(Action::Route(a)) => match &a.host_rewrite_specifier {
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => h.clone(),
            other => format!("{other:?}"),
        },
        other => panic!("route {i}: {other:?}"),
    };
    assert_eq!(rewrite(0), "route.example.com");
    assert_eq!(vh.routes[0].request_headers_to_add.len(), 1, "x-kept stays a header operation");
    assert_eq!(rewrite(1), "rewrite.example.com");
    assert_eq!(rewrite(2), "dest.example.com");
    assert_eq!(rewrite(3), "route.example.com");
    let Some(Action::Route(split)) = &vh.routes[3].action else { panic!() };
    let Some(ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else { panic!() };
    assert_eq!(
        w.clusters[0].host_rewrite_specifier,
        Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral("v1.example.com".into()))
    );
    assert_eq!(w.clusters[1].host_rewrite_specifier, None);
    assert!(matches!(vh.routes[4].action, Some(Action::Redirect(_))));
}

#[test]
fn dns_subsets_without_endpoints_have_no_cluster() {
    // Envoy rejects a LOGICAL_DNS cluster without exactly one endpoint (found by
    // tests/envoy_validate.rs); Istio leaves such subset clusters of DNS services out.
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: ns1}
spec:
  hosts: [db.example.com]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 5432, name: tcp}]
  endpoints: [{address: db-1.example.com, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: ns1}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: ns1}
spec:
  host: db.example.com
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: ns1}
spec:
  host: api.example.com
  subsets: [{name: v1, labels: {version: v1}}]
"#;
    let (m, _) = mesh(yaml);
    let clusters = names(&m.generate(&node("ns1", &[])), type_url::CLUSTER);
    for (name, present) in [
        ("outbound|5432||db.example.com", true),
        ("outbound|5432|v1|db.example.com", true),
        ("outbound|5432|v2|db.example.com", false),
        // A DNS service without endpoints resolves its own host, but its subsets select nothing.
        ("outbound|80||api.example.com", true),
        ("outbound|80|v1|api.example.com", false),
    ] {
        assert_eq!(clusters.contains(name), present, "{name} in {clusters:?}");
    }
}
