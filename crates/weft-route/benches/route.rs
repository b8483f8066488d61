//! Route selection over 1,000 virtual hosts × 10 routes.
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use weft_route::{RequestView, RouteTable};

fn big_table() -> RouteTable {
    let mut y = String::from("clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners:\n  - name: l\n    address: 127.0.0.1:1\n    http:\n      virtual_hosts:\n");
    for i in 0..1000 {
        let domain = if i % 10 == 0 { format!("\"*.wild{i}.example.com\"") } else { format!("svc-{i}.mesh.local") };
        y.push_str(&format!("        - name: vh{i}\n          domains: [{domain}]\n          routes:\n"));
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
    let h = HeaderMap::new();
    let view = |authority: &'static str, path: &'static str| RequestView {
        authority,
        path,
        method: "GET",
        headers: &h,
        is_grpc: false,
        port: 80,
    };
    c.bench_function("route/exact_domain_first_route", |b| {
        b.iter(|| black_box(t.select(black_box(&view("svc-501.mesh.local", "/p0/x"))).is_some()))
    });
    c.bench_function("route/wildcard_domain", |b| {
        b.iter(|| black_box(t.select(black_box(&view("a.wild500.example.com", "/p0/x"))).is_some()))
    });
    c.bench_function("route/last_route_of_vhost", |b| {
        b.iter(|| black_box(t.select(black_box(&view("svc-999.mesh.local", "/zzz"))).is_some()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
