//! The DNS name table (NDS) per proxy: every form of a name, VIPs, scoping by tenant, exportTo
//! and Sidecar, sharing between proxies of one scope, and that it is generated only on request.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::Node;
use weft_xds::nds::NameTable;
use weft_xds::{type_url, NodeInfo};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  addresses: [10.90.0.1]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.1.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: other}
spec:
  hosts: [ratings.other.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.1.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: greeter, namespace: rpc}
spec:
  hosts: [com.example.Greeter, api.example.com]
  resolution: STATIC
  ports: [{number: 50051, name: grpc}]
  endpoints: [{address: 10.1.0.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: other}
spec:
  hosts: [private.other.svc.cluster.local]
  addresses: [10.90.0.9]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.1.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.storage.example.org"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dual, namespace: shop}
spec:
  hosts: [dual.example.com]
  addresses: [10.90.0.7, "fd00::7", 10.90.8.0/24]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.1.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: shop}
spec:
  hosts: [reviews.shop]
  addresses: [10.90.0.8]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.1.0.8}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tenant-b, namespace: shop, labels: {weft.io/tenant: b}}
spec:
  hosts: [secret.shop.svc.cluster.local]
  addresses: [10.90.1.1]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.1.1.1}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: narrow, namespace: narrow}
spec:
  egress:
  - hosts: ["./*", "rpc/*"]
"#;

fn vips() -> BTreeMap<(String, String), std::net::IpAddr> {
    [
        (("default".to_string(), "ratings.other.svc.cluster.local".to_string()), [240, 240, 0, 2]),
        (("default".to_string(), "com.example.greeter".to_string()), [240, 240, 0, 3]),
        (("default".to_string(), "api.example.com".to_string()), [240, 240, 0, 3]),
    ]
    .into_iter()
    .map(|(k, ip)| (k, std::net::IpAddr::from(ip)))
    .collect()
}

fn mesh() -> Mesh {
    let resources = weft_istio::parse_yaml("dns.yaml", MESH).unwrap_or_else(|e| panic!("{e}"));
    let input = Input {
        resources: resources.into_iter().map(Arc::new).collect(),
        vips: vips(),
        options: Options::default(),
        ..Default::default()
    };
    Mesh::build(input).0
}

fn node(ns: &str, tenant: &str) -> NodeInfo {
    let mut n = NodeInfo::from_node(&Node {
        id: format!("sidecar~10.0.0.1~dns-1.{ns}~{ns}.svc.cluster.local"),
        ..Default::default()
    })
    .unwrap();
    n.tenant = tenant.to_string();
    n
}

fn table(mesh: &Mesh, ns: &str, tenant: &str) -> NameTable {
    let r = mesh.name_table(&node(ns, tenant));
    assert_eq!(r.type_url(), type_url::NAME_TABLE);
    assert_eq!(r.name, "");
    NameTable::decode(r.body.value.as_slice()).unwrap()
}

/// Every name the table answers for a proxy, with its addresses: keys and alt hosts.
fn names(t: &NameTable) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (host, info) in &t.table {
        out.insert(host.clone(), info.ips.clone());
        for alt in &info.alt_hosts {
            assert!(out.insert(alt.clone(), info.ips.clone()).is_none(), "{alt} listed twice");
        }
    }
    out
}

#[test]
fn every_form_of_a_name_resolves_to_the_vip() {
    let mesh = mesh();
    // (proxy namespace, tenant, name, want addresses; empty: the name is not in the table)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("shop", "default", "reviews.shop.svc.cluster.local", &["10.90.0.1"]),
        ("shop", "default", "reviews.shop.svc", &["10.90.0.1"]),
        ("shop", "default", "reviews", &["10.90.0.1"]),
        ("other", "default", "reviews.shop.svc", &["10.90.0.1"]),
        ("other", "default", "reviews", &[]),
        ("other", "default", "ratings", &["240.240.0.2"]),
        ("shop", "default", "ratings.other", &["240.240.0.2"]),
        ("shop", "default", "ratings", &[]),
        // A ServiceEntry host named like a short form is its own entry, and wins.
        ("shop", "default", "reviews.shop", &["10.90.0.8"]),
        // Interface-style and external hosts as written (lowercase), the allocated VIP.
        ("shop", "default", "com.example.greeter", &["240.240.0.3"]),
        ("shop", "default", "api.example.com", &["240.240.0.3"]),
        ("shop", "default", "com.example", &[]),
        // Host addresses only (no CIDR), both families.
        ("shop", "default", "dual.example.com", &["10.90.0.7", "fd00::7"]),
        // exportTo ".": only its own namespace sees it.
        ("other", "default", "private.other.svc.cluster.local", &["10.90.0.9"]),
        ("other", "default", "private", &["10.90.0.9"]),
        ("shop", "default", "private.other.svc.cluster.local", &[]),
        // Wildcard hosts have no entry.
        ("shop", "default", "*.storage.example.org", &[]),
        // Tenants never see each other's names.
        ("shop", "default", "secret.shop.svc.cluster.local", &[]),
        ("shop", "b", "secret.shop.svc.cluster.local", &["10.90.1.1"]),
        ("shop", "b", "secret", &["10.90.1.1"]),
        ("shop", "b", "reviews.shop.svc.cluster.local", &[]),
        // The Sidecar of namespace narrow imports its own namespace and rpc only.
        ("narrow", "default", "com.example.greeter", &["240.240.0.3"]),
        ("narrow", "default", "reviews.shop.svc.cluster.local", &[]),
        ("narrow", "default", "ratings.other", &[]),
    ];
    for (ns, tenant, name, want) in cases {
        let got = names(&table(&mesh, ns, tenant));
        let got: Vec<&str> = got.get(*name).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
        assert_eq!(got, *want, "{name} for a proxy in {ns} (tenant {tenant})");
    }
}

#[test]
fn kubernetes_hosts_carry_istio_short_name_fields() {
    let t = table(&mesh(), "shop", "default");
    let r = &t.table["reviews.shop.svc.cluster.local"];
    assert_eq!((r.registry.as_str(), r.shortname.as_str(), r.namespace.as_str()), ("Kubernetes", "reviews", "shop"));
    // reviews.shop is a host of its own, so it is not an alternative name here.
    assert_eq!(r.alt_hosts, ["reviews", "reviews.shop.svc"]);
    let g = &t.table["com.example.greeter"];
    assert_eq!((g.registry.as_str(), g.shortname.as_str(), g.alt_hosts.len()), ("External", "", 0));
}

#[test]
fn proxies_of_one_scope_share_the_table_and_other_types_cost_nothing() {
    let mesh = mesh();
    let a = mesh.name_table(&node("shop", "default"));
    let mut other = node("shop", "default");
    other.id = "sidecar~10.0.0.2~dns-2.shop~shop.svc.cluster.local".into();
    other.labels.insert("app".into(), "x".into());
    assert!(Arc::ptr_eq(&a, &mesh.name_table(&other)), "same namespace and Sidecar share one table");
    assert!(!Arc::ptr_eq(&a, &mesh.name_table(&node("other", "default"))));
    assert_eq!(mesh.cached_name_tables(), 2);

    // A DNS client subscribes only to the name table: no listeners or clusters are built.
    let dns_only = mesh.generate_for(&node("rpc", "default"), &[type_url::NAME_TABLE]);
    assert_eq!(dns_only.by_type.keys().collect::<Vec<_>>(), [type_url::NAME_TABLE]);
    assert_eq!(mesh.cached_scopes(), 0, "no outbound scope was generated");
    // A proxy that does not ask for it gets no table, and none is built.
    let before = mesh.cached_name_tables();
    let proxy = mesh.generate_for(&node("narrow", "default"), &[type_url::CLUSTER, type_url::LISTENER]);
    assert!(proxy.of_type(type_url::NAME_TABLE).is_none());
    assert!(proxy.of_type(type_url::CLUSTER).is_some());
    assert_eq!(mesh.cached_name_tables(), before);
    // Both at once.
    let both = mesh.generate_for(&node("narrow", "default"), &[type_url::CLUSTER, type_url::NAME_TABLE]);
    assert_eq!(both.of_type(type_url::NAME_TABLE).map(|m| m.len()), Some(1));
    assert_eq!(both.of_type(type_url::CLUSTER), proxy.of_type(type_url::CLUSTER));
}

#[test]
fn equal_tables_have_equal_versions() {
    let (a, b) = (mesh(), mesh());
    assert_eq!(a.name_table(&node("shop", "default")).version, b.name_table(&node("shop", "default")).version);
    assert_ne!(a.name_table(&node("shop", "default")).version, a.name_table(&node("other", "default")).version);
}

/// What a name table costs beside a proxy's full resources, for docs/performance.md:
/// `cargo test --release -p weft-translate --test dns -- --ignored --nocapture measure`.
/// Prints figures; asserts nothing about time.
#[test]
#[ignore]
fn measure_name_table_cost() {
    use std::time::Instant;
    let services = 2000;
    let mut yaml = String::new();
    for i in 0..services {
        let ns = format!("ns{}", i % 20);
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}, namespace: {ns}}}\n\
             spec:\n  hosts: [s{i}]\n  addresses: [10.{}.{}.{}]\n  resolution: STATIC\n  ports: [{{number: 80, name: http}}]\n  \
             endpoints: [{{address: 10.200.{}.{}}}]\n---\n",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            (i / 256) % 256,
            i % 256
        ));
    }
    let resources = weft_istio::parse_yaml("bench.yaml", &yaml).unwrap();
    let input = Input {
        resources: resources.into_iter().map(Arc::new).collect(),
        options: Options::default(),
        ..Default::default()
    };
    let fresh = || Mesh::build(input.clone()).0;
    let n = node("ns0", "default");
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let mesh = fresh();
    let full = time(&|| {
        mesh.generate_for(&n, &[type_url::CLUSTER, type_url::ENDPOINT, type_url::LISTENER, type_url::ROUTE]);
    });
    let mesh = fresh();
    let table = time(&|| {
        mesh.generate_for(&n, &[type_url::NAME_TABLE]);
    });
    let cached = time(&|| {
        mesh.generate_for(&n, &[type_url::NAME_TABLE]);
    });
    let size = mesh.name_table(&n).body.value.len();
    println!(
        "{services} services: full proxy resources {full:?}; name table first {table:?}, cached {cached:?}; \
         table {size} bytes"
    );
}
