//! Services declared by registry instances (VM agents): built when no ServiceEntry defines the
//! host, joined to the ServiceEntry when one does, with VIPs, health and conflicts.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;
use weft_istio::registry::Instance;
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::{address, socket_address, Node};
use weft_xds::envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use weft_xds::{type_url, NodeInfo, ResourceSet};

fn parse(yaml: &str) -> Vec<Arc<weft_istio::Resource>> {
    weft_istio::parse_yaml("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}")).into_iter().map(Arc::new).collect()
}

/// An instance of `host` at `ip`; `extra` is merged into the JSON.
fn inst(name: &str, ip: &str, host: &str, ports: serde_json::Value, extra: serde_json::Value) -> Instance {
    let mut v = serde_json::json!({
        "name": name, "namespace": "vms", "address": ip,
        "service": {"host": host, "ports": ports},
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    Instance::from_json("test", v).unwrap_or_else(|e| panic!("{e}"))
}

fn http_9080() -> serde_json::Value {
    serde_json::json!([{"name": "http", "number": 9080, "protocol": "HTTP"}])
}

fn build(yaml: &str, instances: Vec<Instance>) -> (Mesh, Vec<String>) {
    let resources = parse(yaml);
    let mut vips = std::collections::BTreeMap::new();
    for (i, key) in Mesh::hosts_needing_vips(&resources, &instances).into_iter().enumerate() {
        vips.insert(key, std::net::IpAddr::from([240, 240, 0, 1 + i as u8]));
    }
    let (mesh, warnings) = Mesh::build(Input { resources, instances, vips, options: Options::default() });
    (mesh, warnings.iter().map(|w| w.to_string()).collect())
}

fn node(ns: &str, tenant: &str) -> NodeInfo {
    let mut n = NodeInfo::from_node(&Node {
        id: format!("sidecar~10.9.9.9~p.{ns}~{ns}.svc.cluster.local"),
        ..Default::default()
    })
    .unwrap();
    n.tenant = tenant.to_string();
    n
}

fn names(set: &ResourceSet, ty: &str) -> BTreeSet<String> {
    set.of_type(ty).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// `IP:PORT` of every endpoint of a cluster's EDS resource.
fn endpoints(set: &ResourceSet, cluster: &str) -> Vec<String> {
    let r = set
        .get(type_url::ENDPOINT, cluster)
        .unwrap_or_else(|| panic!("no EDS {cluster} in {:?}", names(set, type_url::ENDPOINT)));
    let cla = ClusterLoadAssignment::decode(r.body.value.as_slice()).unwrap();
    let mut out = Vec::new();
    for e in cla.endpoints.iter().flat_map(|g| &g.lb_endpoints) {
        if let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier {
            if let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                let port = match sa.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                };
                out.push(format!("{}:{port}", sa.address));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn instances_bring_their_service_into_the_mesh() {
    let (m, warnings) = build(
        "",
        vec![
            inst("reviews-vm-1", "10.3.0.1", "reviews", http_9080(), serde_json::json!({"ports": {"http": 9081}})),
            inst("reviews-vm-2", "10.3.0.2", "reviews.vms.svc.cluster.local", http_9080(), serde_json::json!({})),
        ],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(m.service_count(), 1);
    let set = m.generate(&node("vms", "default"));
    let cluster = "outbound|9080||reviews.vms.svc.cluster.local";
    assert!(names(&set, type_url::CLUSTER).contains(cluster));
    assert_eq!(endpoints(&set, cluster), ["10.3.0.1:9081", "10.3.0.2:9080"], "own port of the name, else the number");
    // Visible from other namespaces too (no exportTo restriction), under its VIP.
    let other = m.generate(&node("shop", "default"));
    assert!(names(&other, type_url::CLUSTER).contains(cluster));
    let rendered = weft_translate::render::render_set(&other);
    assert!(rendered.contains("\"240.240.0.1:9080\""), "the VIP is a route domain:\n{rendered}");
    // Another tenant sees nothing of it.
    assert!(!names(&m.generate(&node("vms", "acme")), type_url::CLUSTER).contains(cluster));
}

#[test]
fn unhealthy_instances_are_left_out_of_eds() {
    let cases: [(&[bool], &[&str]); 4] = [
        (&[true, true], &["10.3.0.1:9080", "10.3.0.2:9080"]),
        (&[true, false], &["10.3.0.1:9080"]),
        (&[false, true], &["10.3.0.2:9080"]),
        (&[false, false], &[]),
    ];
    for (health, want) in cases {
        let instances = health
            .iter()
            .enumerate()
            .map(|(i, h)| {
                inst(
                    &format!("reviews-vm-{}", i + 1),
                    &format!("10.3.0.{}", i + 1),
                    "reviews",
                    http_9080(),
                    serde_json::json!({"healthy": h}),
                )
            })
            .collect();
        let (m, _) = build("", instances);
        let set = m.generate(&node("vms", "default"));
        assert_eq!(endpoints(&set, "outbound|9080||reviews.vms.svc.cluster.local"), want, "health {health:?}");
    }
}

#[test]
fn vips_are_needed_for_declared_hosts_that_no_service_entry_defines() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: vms}
spec:
  hosts: [details]
  addresses: [10.100.0.5]
  ports: [{number: 8080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: details}}
"#;
    let details = serde_json::json!([{"name": "http", "number": 8080}]);
    // (registered instances, expected warnings as (subject, message part))
    type Case<'a> = (Vec<Instance>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec![], vec![]),
        (
            vec![inst("reviews-vm-1", "10.3.0.1", "reviews", http_9080(), serde_json::json!({}))],
            vec![("default", "reviews.vms.svc.cluster.local")],
        ),
        (vec![inst("details-vm-1", "10.3.0.5", "details", details.clone(), serde_json::json!({}))], vec![]),
        (
            vec![
                inst("a-1", "10.3.0.1", "a.example.com", http_9080(), serde_json::json!({"tenant": "acme"})),
                inst("a-2", "10.3.0.2", "a.example.com", http_9080(), serde_json::json!({})),
                inst("a-3", "10.3.0.3", "a.example.com", http_9080(), serde_json::json!({"namespace": "other"})),
            ],
            vec![("acme", "a.example.com"), ("default", "a.example.com")],
        ),
    ];
    for (instances, want) in cases {
        let got = Mesh::hosts_needing_vips(&parse(yaml), &instances);
        let want: Vec<(String, String)> = want.iter().map(|(t, h)| (t.to_string(), h.to_string())).collect();
        assert_eq!(got, want, "{:?}", instances.iter().map(|i| i.id()).collect::<Vec<_>>());
    }
}

#[test]
fn a_service_entry_for_the_host_wins_and_instances_of_its_namespace_join_it() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: vms}
spec:
  hosts: [details.vms.svc.cluster.local]
  addresses: [10.100.0.5]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
"#;
    let ports = serde_json::json!([{"name": "http", "number": 8080, "protocol": "HTTP"}]);
    let (m, warnings) = build(
        yaml,
        vec![
            inst("details-vm-1", "10.3.0.5", "details", ports.clone(), serde_json::json!({})),
            inst(
                "details-vm-2",
                "10.3.0.6",
                "details.vms.svc.cluster.local",
                ports.clone(),
                serde_json::json!({"namespace": "elsewhere"}),
            ),
        ],
    );
    assert_eq!(
        warnings,
        ["Instance elsewhere/details-vm-2: declares host details.vms.svc.cluster.local, which ServiceEntry vms/details defines; instances join ServiceEntries of their own namespace only, so this one is not an endpoint"]
    );
    assert_eq!(m.service_count(), 1);
    let set = m.generate(&node("vms", "default"));
    assert_eq!(endpoints(&set, "outbound|8080||details.vms.svc.cluster.local"), ["10.3.0.5:8080"]);
    let rendered = weft_translate::render::render_set(&set);
    assert!(rendered.contains("\"10.100.0.5:8080\""), "the ServiceEntry's address is used");
}

#[test]
fn conflicting_port_declarations_are_warnings() {
    let se = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: vms}
spec:
  hosts: [details]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: legacy}}
"#;
    let j = |v: serde_json::Value| v;
    let cases: Vec<(&str, Vec<Instance>, Vec<&str>)> = vec![
        (
            "",
            vec![
                inst("r-1", "10.3.0.1", "reviews", http_9080(), j(serde_json::json!({}))),
                inst("r-2", "10.3.0.2", "reviews", j(serde_json::json!([{"name": "http", "number": 9080}])), j(serde_json::json!({}))),
            ],
            vec![],
        ),
        (
            "",
            vec![
                inst("r-1", "10.3.0.1", "reviews", http_9080(), j(serde_json::json!({}))),
                inst("r-2", "10.3.0.2", "reviews", j(serde_json::json!([{"name": "tcp", "number": 9080}])), j(serde_json::json!({}))),
                inst("r-3", "10.3.0.3", "reviews", j(serde_json::json!([{"name": "http", "number": 9081}])), j(serde_json::json!({}))),
                inst("r-4", "10.3.0.4", "reviews", j(serde_json::json!([{"name": "http", "number": 9080, "protocol": "HTTP2"}])), j(serde_json::json!({}))),
            ],
            vec![
                "Instance vms/r-2: declares port tcp 9080 (TCP) for host reviews.vms.svc.cluster.local, but Instance vms/r-1 declared http 9080 (HTTP) first; the first declaration applies",
                "Instance vms/r-3: declares port http 9081 (HTTP) for host reviews.vms.svc.cluster.local, but Instance vms/r-1 declared http 9080 (HTTP) first; the first declaration applies",
                "Instance vms/r-4: declares port http 9080 (HTTP2) for host reviews.vms.svc.cluster.local, but Instance vms/r-1 declared http 9080 (HTTP) first; the first declaration applies",
            ],
        ),
        (
            se,
            vec![
                inst("d-1", "10.3.0.5", "details", j(serde_json::json!([{"name": "http", "number": 8080}])), j(serde_json::json!({}))),
                inst("d-2", "10.3.0.6", "details", j(serde_json::json!([{"name": "web", "number": 8080}, {"name": "tcp-x", "number": 8081}])), j(serde_json::json!({}))),
            ],
            vec![
                "Instance vms/d-2: declares port tcp-x 8081 (TCP) for host details.vms.svc.cluster.local, but ServiceEntry vms/details has no port 8081; the ServiceEntry's ports apply",
                "Instance vms/d-2: declares port web 8080 (UNSUPPORTED) for host details.vms.svc.cluster.local, but ServiceEntry vms/details defines port 8080 as http (HTTP); the ServiceEntry's ports apply",
            ],
        ),
    ];
    for (yaml, instances, want) in cases {
        let (_, warnings) = build(yaml, instances);
        assert_eq!(warnings, want);
    }
}

#[test]
fn each_namespace_declaring_a_host_gets_its_own_service() {
    let (m, warnings) = build(
        "",
        vec![
            inst("a-1", "10.3.0.1", "api.example.com", http_9080(), serde_json::json!({})),
            inst("a-2", "10.3.0.2", "api.example.com", http_9080(), serde_json::json!({"namespace": "shop"})),
        ],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let cluster = "outbound|9080||api.example.com";
    assert_eq!(endpoints(&m.generate(&node("vms", "default")), cluster), ["10.3.0.1:9080"]);
    assert_eq!(endpoints(&m.generate(&node("shop", "default")), cluster), ["10.3.0.2:9080"]);
}

#[test]
fn a_proxy_at_an_instance_address_gets_inbound_for_the_declared_ports() {
    let (m, _) = build(
        "",
        vec![inst(
            "reviews-vm-1",
            "10.3.0.1",
            "reviews",
            serde_json::json!([{"name": "http", "number": 9080}, {"name": "grpc", "number": 7070}]),
            serde_json::json!({"ports": {"http": 9081}}),
        )],
    );
    let mut n = node("vms", "default");
    n.ips = vec!["10.3.0.1".parse().unwrap()];
    let inbound: BTreeSet<String> =
        names(&m.generate(&n), type_url::CLUSTER).into_iter().filter(|c| c.starts_with("inbound|")).collect();
    assert_eq!(inbound, BTreeSet::from(["inbound|7070||".to_string(), "inbound|9081||".to_string()]));
}
