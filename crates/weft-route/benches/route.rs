//! `RouteTable::select` over 1,000 virtual hosts × 10 routes (prefix, exact + header, regex,
//! catch-all), the size of a large mesh's outbound route table.
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use weft_route::{RequestView, RouteTable};

fn big_table() -> RouteTable {
    let mut y = String::from(
        "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\n\
         listeners:\n  - name: l\n    address: 127.0.0.1:1\n    http:\n      virtual_hosts:\n",
    );
    for i in 0..1000 {
        // One in ten hosts is a suffix wildcard; their lengths vary, as real domains do.
        let domains = if i % 10 == 0 {
            format!("\"*.wild{i}.example.com\"")
        } else {
            format!("\"svc-{i}.ns.svc.cluster.local\", \"svc-{i}.ns.svc.cluster.local:80\", \"svc-{i}\"")
        };
        y.push_str(&format!("        - name: vh{i}\n          domains: [{domains}]\n          routes:\n"));
        for r in 0..9 {
            let m = match r % 3 {
                0 => format!("{{prefix: /p{r}/}}"),
                1 => format!("{{path: /exact{r}, headers: [{{name: x-user, exact: u{r}}}]}}"),
                _ => format!("{{regex: \"/re{r}/[0-9]+\"}}"),
            };
            y.push_str(&format!("            - {{match: {m}, route: {{cluster: c}}}}\n"));
        }
        y.push_str("            - {match: {prefix: /}, route: {cluster: c}}\n");
    }
    let b = weft_config::parse_str(&y, "bench.yaml").expect("bench config");
    let weft_config::ChainAction::Http(h) = &b.config.listeners[0].filter_chains[0].action else { unreachable!() };
    let weft_config::RouteSource::Inline(rc) = &h.routes else { unreachable!() };
    RouteTable::new(Arc::clone(rc))
}

fn bench(c: &mut Criterion) {
    let t = big_table();
    let none = HeaderMap::new();
    let mut user = HeaderMap::new();
    user.insert("x-user", HeaderValue::from_static("u7"));
    user.insert("user-agent", HeaderValue::from_static("bench"));
    let view = |authority: &'static str, path: &'static str, headers: &'static HeaderMap| RequestView {
        authority,
        path,
        method: "GET",
        headers,
        is_grpc: false,
        port: 80,
        exact_authority: false,
    };
    // `'static` views: leak the two small maps once.
    let none: &'static HeaderMap = Box::leak(Box::new(none));
    let user: &'static HeaderMap = Box::leak(Box::new(user));

    let cases = [
        ("exact_domain_first_route", view("svc-501.ns.svc.cluster.local", "/p0/x", none), "vh501"),
        ("exact_domain_with_port", view("svc-501.ns.svc.cluster.local:80", "/p0/x", none), "vh501"),
        ("wildcard_domain_first_route", view("api.wild500.example.com", "/p0/x", none), "vh500"),
        ("exact_domain_last_route", view("svc-999", "/zzz?q=1", none), "vh999"),
        ("exact_domain_header_route", view("svc-999", "/exact7", user), "vh999"),
        ("wildcard_domain_last_route", view("x.wild990.example.com", "/zzz", none), "vh990"),
    ];
    for (name, req, want) in &cases {
        let s = t.select(req).expect("bench request must route");
        assert_eq!(s.vhost.name, *want, "{name}");
        c.bench_function(&format!("select/{name}"), |b| b.iter(|| black_box(t.select(black_box(req)).is_some())));
    }
    // The virtual host lookup alone, to separate domain cost from route-matching cost.
    for (name, authority) in [("exact", "svc-501.ns.svc.cluster.local"), ("wildcard", "api.wild500.example.com")] {
        c.bench_function(&format!("select_vhost/{name}"), |b| {
            b.iter(|| black_box(t.select_vhost(black_box(authority), black_box(80))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
