//! Routing through `weft proxy`: cluster choice, matches, rewrites, redirects, direct responses,
//! header manipulation, forwarding headers, faults and mirroring.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use weft_test::{http_get, wait_for, HttpBackend, HttpConn, HttpVersion, WeftProcess};

/// Two backends `a` and `b`, and `m` for mirroring, behind one listener with the routes below.
struct Routing {
    a: HttpBackend,
    b: HttpBackend,
    m: HttpBackend,
    weft: WeftProcess,
}

async fn routing() -> Routing {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let m = HttpBackend::start("m").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    http: {{ route_config: main }}
route_configs:
  - name: main
    request_headers_to_add: [{{ name: x-table-added, value: table }}]
    response_headers_to_add: [{{ name: x-table-resp, value: table }}]
    virtual_hosts:
      - name: beta
        domains: ["beta.test"]
        routes:
          - {{ match: {{ prefix: / }}, route: {{ cluster: b }} }}
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: /, headers: [{{ name: x-version, exact: v2 }}] }}
            route: {{ cluster: b }}
          - match: {{ path: /exact }}
            route: {{ cluster: b }}
          - match: {{ prefix: /q, query_parameters: [{{ name: canary, exact: "1" }}] }}
            route: {{ cluster: b }}
          - match: {{ prefix: /api/ }}
            route: {{ cluster: a, prefix_rewrite: /v1/ }}
          - match: {{ prefix: /rehost }}
            route: {{ cluster: a, host_rewrite: upstream.internal }}
          - match: {{ prefix: /cw-rehost }}
            route:
              host_rewrite: upstream.internal
              weighted_clusters: [{{ name: a, weight: 1, host_rewrite: a.internal }}, {{ name: b, weight: 0 }}]
          - match: {{ path: /old }}
            redirect: {{ path: /new, response_code: 302 }}
          - match: {{ prefix: /secure }}
            redirect: {{ scheme: https, host: secure.example.com }}
          - match: {{ path: /teapot }}
            direct_response: {{ status: 418, body: "short and stout" }}
          - match: {{ prefix: /headers }}
            route: {{ cluster: a }}
            request_headers_to_add: [{{ name: x-route-added, value: "yes" }}]
            request_headers_to_remove: [x-remove-me]
            response_headers_to_add: [{{ name: x-route-resp, value: r }}]
            response_headers_to_remove: [x-backend-secret]
          - match: {{ prefix: /weighted }}
            route: {{ weighted_clusters: [{{ name: a, weight: 80 }}, {{ name: b, weight: 20 }}] }}
          - match: {{ prefix: /fault/abort }}
            route: {{ cluster: a }}
            fault: {{ abort: {{ http_status: 503, percent: 100 }} }}
          - match: {{ prefix: /fault/delay }}
            route: {{ cluster: a }}
            fault: {{ delay: {{ fixed: 20ms, percent: 100 }} }}
          - match: {{ prefix: /mirror }}
            route: {{ cluster: a, request_mirror_policies: [{{ cluster: m, percent: 100 }}] }}
          - match: {{ prefix: / }}
            route: {{ cluster: a }}
clusters:
  - {{ name: a, endpoints: [{a}] }}
  - {{ name: b, endpoints: [{b}] }}
  - {{ name: m, endpoints: [{m}] }}
"#,
        a = q(a.addr()),
        b = q(b.addr()),
        m = q(m.addr()),
    );
    let weft = start_weft(&yaml).await;
    Routing { a, b, m, weft }
}

async fn get(r: &Routing, path: &str, headers: &[(&str, &str)]) -> weft_test::HttpResponse {
    http_get(r.weft.listener("main"), path, headers).await.unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

#[tokio::test]
async fn weighted_clusters_split_traffic_by_weight() {
    let r = routing().await;
    let mut conn = HttpConn::connect(r.weft.listener("main"), HttpVersion::Http1).await.unwrap();
    const N: usize = 400;
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..N {
        let resp = conn.request(Method::GET, "/weighted", &[], "").await.unwrap();
        assert_eq!(resp.status, 200);
        match backend_of(&resp).as_str() {
            "a" => to_a += 1,
            "b" => to_b += 1,
            other => panic!("unexpected backend {other:?}"),
        }
    }
    // 80/20 of 400: a expects 320 (sd 8); ±50 is more than 6 standard deviations.
    assert!((270..=370).contains(&to_a), "a got {to_a} of {N}, b got {to_b}");
    assert!(to_b > 0, "b never chosen");
    assert_eq!(r.a.hits() + r.b.hits(), N as u64);
}

#[tokio::test]
async fn a_virtual_host_is_chosen_by_host_header() {
    let r = routing().await;
    assert_eq!(backend_of(&get(&r, "/", &[("host", "beta.test")]).await), "b");
    assert_eq!(backend_of(&get(&r, "/", &[("host", "other.test")]).await), "a");
}

#[tokio::test]
async fn a_header_match_selects_its_route() {
    let r = routing().await;
    assert_eq!(backend_of(&get(&r, "/x", &[("x-version", "v2")]).await), "b");
    assert_eq!(backend_of(&get(&r, "/x", &[("x-version", "v3")]).await), "a");
    assert_eq!(backend_of(&get(&r, "/x", &[]).await), "a");
}

#[tokio::test]
async fn an_exact_path_match_does_not_match_longer_paths() {
    let r = routing().await;
    assert_eq!(backend_of(&get(&r, "/exact", &[]).await), "b");
    assert_eq!(backend_of(&get(&r, "/exact?x=1", &[]).await), "b", "the query is not part of the path");
    assert_eq!(backend_of(&get(&r, "/exact/more", &[]).await), "a");
    assert_eq!(backend_of(&get(&r, "/exactly", &[]).await), "a");
}

#[tokio::test]
async fn a_query_parameter_match_selects_its_route() {
    let r = routing().await;
    assert_eq!(backend_of(&get(&r, "/q?canary=1", &[]).await), "b");
    assert_eq!(backend_of(&get(&r, "/q?x=2&canary=1", &[]).await), "b");
    assert_eq!(backend_of(&get(&r, "/q?canary=0", &[]).await), "a");
    assert_eq!(backend_of(&get(&r, "/q", &[]).await), "a");
}

#[tokio::test]
async fn prefix_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
    let r = routing().await;
    let resp = get(&r, "/api/users/7?verbose=1", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/v1/users/7?verbose=1");
    assert_eq!(r.a.last_request().unwrap().path, "/v1/users/7?verbose=1");
}

#[tokio::test]
async fn host_rewrite_changes_the_upstream_host() {
    let r = routing().await;
    let resp = get(&r, "/rehost", &[("host", "public.test")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(r.a.last_request().unwrap().host.as_deref(), Some("upstream.internal"));
    // A weighted cluster's own rewrite wins over the route's.
    let resp = get(&r, "/cw-rehost", &[("host", "public.test")]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(r.a.last_request().unwrap().host.as_deref(), Some("a.internal"));
}

#[tokio::test]
async fn a_redirect_route_answers_with_location_and_no_upstream_request() {
    let r = routing().await;
    let resp = get(&r, "/old?keep=1", &[("host", "shop.test")]).await;
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("location"), Some("http://shop.test/new?keep=1"));

    let resp = get(&r, "/secure/page", &[("host", "shop.test:8080")]).await;
    assert_eq!(resp.status, 301, "the default redirect code");
    assert_eq!(resp.header("location"), Some("https://secure.example.com/secure/page"));
    assert_eq!(r.a.hits() + r.b.hits(), 0);
}

#[tokio::test]
async fn a_direct_response_is_served_without_an_upstream() {
    let r = routing().await;
    let resp = get(&r, "/teapot", &[]).await;
    assert_eq!(resp.status, 418);
    assert_eq!(resp.text(), "short and stout");
    assert_eq!(resp.header("x-table-resp"), Some("table"), "route table response headers apply");
    assert_eq!(r.a.hits() + r.b.hits(), 0);
}

#[tokio::test]
async fn request_and_response_headers_are_added_and_removed() {
    let r = routing().await;
    let resp = get(
        &r,
        "/headers",
        &[("x-remove-me", "secret"), ("x-keep-me", "kept"), ("x-backend-header", "x-backend-secret=s3cr3t")],
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = r.a.last_request().unwrap();
    assert_eq!(seen.header("x-route-added"), Some("yes"));
    assert_eq!(seen.header("x-table-added"), Some("table"));
    assert_eq!(seen.header("x-remove-me"), None);
    assert_eq!(seen.header("x-keep-me"), Some("kept"));
    assert_eq!(resp.header("x-route-resp"), Some("r"));
    assert_eq!(resp.header("x-table-resp"), Some("table"));
    assert_eq!(resp.header("x-backend-secret"), None, "removed from the response");
    assert_eq!(backend_of(&resp), "a", "other response headers stay");
}

#[tokio::test]
async fn x_forwarded_for_and_proto_are_set_for_the_upstream() {
    let r = routing().await;
    get(&r, "/", &[]).await;
    let seen = r.a.last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    get(&r, "/", &[("x-forwarded-for", "203.0.113.9")]).await;
    let seen = r.a.last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"), "the peer is appended");

    get(&r, "/", &[("x-forwarded-proto", "https")]).await;
    let seen = r.a.last_request().unwrap();
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"], "a client cannot claim https");
}

fn looks_like_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[tokio::test]
async fn x_request_id_is_generated_when_absent_and_kept_when_present() {
    let r = routing().await;
    get(&r, "/", &[]).await;
    let first = r.a.last_request().unwrap().header("x-request-id").map(str::to_string);
    get(&r, "/", &[]).await;
    let second = r.a.last_request().unwrap().header("x-request-id").map(str::to_string);
    let (first, second) = (first.expect("an id was generated"), second.expect("an id was generated"));
    assert!(looks_like_uuid(&first), "{first}");
    assert_ne!(first, second, "each request gets its own id");

    get(&r, "/", &[("x-request-id", "caller-chosen-42")]).await;
    let seen = r.a.last_request().unwrap();
    assert_eq!(seen.header_all("x-request-id"), ["caller-chosen-42"]);
}

#[tokio::test]
async fn attempt_count_goes_upstream_and_upstream_service_time_comes_back() {
    let r = routing().await;
    let resp = get(&r, "/", &[]).await;
    assert_eq!(r.a.last_request().unwrap().header("x-weft-attempt-count"), Some("1"));
    let ust = resp.header("x-weft-upstream-service-time").expect("x-weft-upstream-service-time");
    assert!(ust.parse::<u64>().is_ok(), "{ust:?} is not a number of milliseconds");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let r = routing().await;
    let request = "GET /hop HTTP/1.1\r\n\
                   Host: hop.test\r\n\
                   Connection: close, x-private-hop\r\n\
                   X-Private-Hop: only-for-the-proxy\r\n\
                   Keep-Alive: timeout=5\r\n\
                   Proxy-Connection: keep-alive\r\n\
                   TE: gzip\r\n\
                   X-End-To-End: kept\r\n\
                   x-backend-header: connection=x-resp-hop\r\n\
                   x-backend-header: x-resp-hop=1\r\n\
                   x-backend-header: keep-alive=timeout=99\r\n\
                   x-backend-header: x-resp-end-to-end=kept\r\n\
                   \r\n";
    let reply = raw_exchange(r.weft.listener("main"), request.as_bytes()).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());
    let seen = r.a.last_request().unwrap();
    for name in ["x-private-hop", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream: {:?}", seen.headers);
    }
    assert!(seen.header("connection").map(|v| !v.contains("x-private-hop")).unwrap_or(true));
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));

    // And on the way back: the upstream's hop-by-hop headers stop at the proxy.
    let resp = &reply.responses()[0];
    assert_eq!(resp.header("x-resp-hop"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("keep-alive"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("x-resp-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn trace_context_headers_pass_through_unchanged() {
    let r = routing().await;
    let trace = [
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "vendor=opaque"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ];
    get(&r, "/", &trace).await;
    let seen = r.a.last_request().unwrap();
    for (name, value) in trace {
        assert_eq!(seen.header_all(name), [value], "{name}");
    }
}

#[tokio::test]
async fn a_fault_abort_answers_with_its_status_and_the_fi_flag() {
    let r = routing().await;
    for _ in 0..5 {
        let resp = get(&r, "/fault/abort", &[]).await;
        assert_eq!(resp.status, 503);
        assert!(flags_of(&resp).split(',').any(|f| f == "FI"), "flags {}", flags_of(&resp));
    }
    assert_eq!(r.a.hits(), 0, "an aborted request never reaches the upstream");
}

#[tokio::test]
async fn a_fault_delay_still_forwards_and_carries_the_di_flag() {
    let r = routing().await;
    let resp = get(&r, "/fault/delay", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(backend_of(&resp), "a");
    assert!(flags_of(&resp).split(',').any(|f| f == "DI"), "flags {}", flags_of(&resp));
    assert_eq!(r.a.hits(), 1);
}

#[tokio::test]
async fn mirrored_requests_reach_the_shadow_cluster_and_the_caller_gets_the_primary() {
    let r = routing().await;
    const N: u64 = 5;
    for i in 0..N {
        let resp = get(&r, &format!("/mirror/{i}"), &[("host", "shop.test")]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(backend_of(&resp), "a", "the caller gets the primary's answer");
    }
    assert!(wait_for(Duration::from_secs(10), || async { r.m.hits() >= N }).await, "mirror saw {} of {N}", r.m.hits());
    let shadowed = r.m.requests();
    assert_eq!(shadowed.len() as u64, N);
    for req in &shadowed {
        assert_eq!(req.host.as_deref(), Some("shop.test-shadow"), "{req:?}");
        assert!(req.path.starts_with("/mirror/"), "{req:?}");
    }
    assert_eq!(r.a.hits(), N);
    assert_eq!(r.b.hits(), 0);
}
