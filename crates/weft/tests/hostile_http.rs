//! Hostile and broken HTTP through `weft proxy`, over raw sockets: request smuggling attempts,
//! malformed framing, oversized or too many headers, control characters, a missing Host, and
//! upstreams that send garbage or reset.

mod common;

use common::*;
use http::Method;
use weft_test::{HttpBackend, HttpConn, HttpVersion, WeftProcess};

struct Setup {
    backend: HttpBackend,
    weft: WeftProcess,
}

/// `main` has the default limits; `strict` allows 16 KiB of request headers and 20 headers.
async fn setup() -> Setup {
    let backend = HttpBackend::start("b").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    http: {{ route_config: all }}
  - name: strict
    address: "127.0.0.1:0"
    http: {{ route_config: all, max_request_headers_kb: 16, max_headers_count: 20 }}
route_configs:
  - name: all
    virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: b }} }}] }}]
clusters:
  - {{ name: b, endpoints: [{b}] }}
"#,
        b = q(backend.addr())
    );
    let weft = start_weft(&yaml).await;
    Setup { backend, weft }
}

impl Setup {
    fn smuggled(&self) -> usize {
        self.backend.requests().iter().filter(|r| r.path.starts_with("/smuggled")).count()
    }
}

/// The request smuggled behind a broken first request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: evil.test\r\n\r\n";

fn assert_rejected(reply: &RawReply, allowed: &[u16], what: &str) {
    let statuses = reply.statuses();
    assert_eq!(statuses.len(), 1, "{what}: expected exactly one response, got {statuses:?}:\n{}", reply.text());
    assert!(allowed.contains(&statuses[0]), "{what}: status {} not in {allowed:?}:\n{}", statuses[0], reply.text());
    assert!(reply.closed, "{what}: the connection must be closed after the rejection");
}

/// Content-Length and Transfer-Encoding together, in both orders, with a request behind them.
fn cl_te_requests() -> [String; 2] {
    let (cl, te) = ("Content-Length: 4\r\n", "Transfer-Encoding: chunked\r\n");
    [(cl, te), (te, cl)].map(|(first, second)| {
        format!("POST /cl-te HTTP/1.1\r\nHost: a.test\r\n{first}{second}\r\n0\r\n\r\n{SMUGGLED}")
    })
}

#[tokio::test]
async fn content_length_with_transfer_encoding_smuggles_nothing_and_closes_the_connection() {
    let s = setup().await;
    for request in cl_te_requests() {
        let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
        assert!(reply.closed, "the connection must be closed after an ambiguously framed request");
        assert!(reply.statuses().len() <= 1, "nothing after the first request is answered:\n{}", reply.text());
    }
    assert_eq!(s.smuggled(), 0, "a smuggled request reached the backend");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected_with_400() {
    let s = setup().await;
    for request in cl_te_requests() {
        let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
        assert_rejected(&reply, &[400], "CL + TE");
    }
    assert_eq!(s.backend.hits(), 0, "a request with ambiguous framing must not be forwarded");
    assert_eq!(s.smuggled(), 0, "a smuggled request reached the backend");
}

#[tokio::test]
async fn two_different_content_lengths_are_rejected() {
    let s = setup().await;
    let request = format!(
        "POST /cl-cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde{SMUGGLED}"
    );
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    assert_rejected(&reply, &[400], "two Content-Length values");
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn a_malformed_chunk_size_closes_the_connection_without_a_second_request() {
    let s = setup().await;
    let request = format!(
        "POST /bad-chunk HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    assert!(reply.closed, "the connection must be closed:\n{}", reply.text());
    let statuses = reply.statuses();
    assert!(statuses.len() <= 1, "at most one response on a broken connection: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 400), "a broken body is the client's error: {statuses:?}");
    assert_eq!(s.smuggled(), 0, "a smuggled request reached the backend");
}

#[tokio::test]
async fn an_oversized_request_line_is_rejected() {
    let s = setup().await;
    let long_path = format!("/{}", "a".repeat(32 * 1024));
    let request = format!("GET {long_path} HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let reply = raw_exchange(s.weft.listener("strict"), request.as_bytes()).await;
    assert_rejected(&reply, &[400, 414, 431], "32 KiB request line");
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn headers_beyond_max_request_headers_kb_are_rejected() {
    let s = setup().await;
    // Within the 16 KiB limit: accepted.
    let ok = format!(
        "GET /small HTTP/1.1\r\nHost: a.test\r\nx-filler: {}\r\nConnection: close\r\n\r\n",
        "f".repeat(8 * 1024)
    );
    let reply = raw_exchange(s.weft.listener("strict"), ok.as_bytes()).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());

    let big = format!(
        "GET /big HTTP/1.1\r\nHost: a.test\r\nx-filler-1: {f}\r\nx-filler-2: {f}\r\n\r\n",
        f = "f".repeat(12 * 1024)
    );
    let reply = raw_exchange(s.weft.listener("strict"), big.as_bytes()).await;
    assert_rejected(&reply, &[400, 431], "24 KiB of headers");
    assert_eq!(s.backend.hits(), 1, "only the small request got through");
}

#[tokio::test]
async fn too_many_headers_are_rejected_with_431() {
    let s = setup().await;
    let headers = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();
    let ok = format!("GET /few HTTP/1.1\r\nHost: a.test\r\n{}Connection: close\r\n\r\n", headers(10));
    let reply = raw_exchange(s.weft.listener("strict"), ok.as_bytes()).await;
    assert_eq!(reply.statuses(), [200], "{}", reply.text());

    let many = format!("GET /many HTTP/1.1\r\nHost: a.test\r\n{}\r\n", headers(40));
    let reply = raw_exchange(s.weft.listener("strict"), many.as_bytes()).await;
    assert_rejected(&reply, &[431], "40 headers with max_headers_count 20");
    assert_eq!(s.backend.hits(), 1);
}

#[tokio::test]
async fn control_characters_in_a_header_value_are_rejected() {
    let s = setup().await;
    for (what, value) in [("SOH", "a\x01b"), ("NUL", "a\x00b"), ("bare CR", "a\rb"), ("DEL", "a\x7fb")] {
        let request = format!("GET /ctl HTTP/1.1\r\nHost: a.test\r\nx-bad: {value}\r\n\r\n");
        let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
        assert_rejected(&reply, &[400], what);
    }
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn http11_without_host_is_rejected() {
    let s = setup().await;
    let reply = raw_exchange(s.weft.listener("main"), b"GET /no-host HTTP/1.1\r\nx-other: 1\r\n\r\n").await;
    assert_rejected(&reply, &[400], "no Host");
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn two_host_headers_are_rejected() {
    let s = setup().await;
    let request = "GET /two-hosts HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    assert_rejected(&reply, &[400], "two Host headers");
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn garbage_from_the_upstream_gives_502_with_upe() {
    let s = setup().await;
    let mut conn = HttpConn::connect(s.weft.listener("main"), HttpVersion::Http1).await.unwrap();
    let resp = conn.request(Method::GET, "/garbage", &[("x-backend-garbage", "1")], "").await.unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(flags_of(&resp).split(',').any(|f| f == "UPE"), "flags {}", flags_of(&resp));

    let resp = conn.request(Method::GET, "/after-garbage", &[], "").await.unwrap();
    assert_eq!(resp.status, 200, "the client connection stays usable");
    assert_eq!(resp.json()["path"], "/after-garbage");
}

#[tokio::test]
async fn an_upstream_reset_gives_503_and_the_client_connection_stays_in_sync() {
    let s = setup().await;
    let mut conn = HttpConn::connect(s.weft.listener("main"), HttpVersion::Http1).await.unwrap();
    for i in 0..3 {
        let resp = conn.request(Method::GET, &format!("/reset/{i}"), &[("x-backend-reset", "1")], "").await.unwrap();
        assert_eq!(resp.status, 503, "{}", resp.text());
        let flags = flags_of(&resp);
        assert!(flags.split(',').any(|f| f == "UR" || f == "UC"), "flags {flags}");

        let resp = conn.request(Method::GET, &format!("/after-reset/{i}"), &[], "").await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["path"], format!("/after-reset/{i}"), "responses stay paired with requests");
    }
    // The same over a raw socket: two requests in one write, the first one reset upstream.
    let request = "GET /reset HTTP/1.1\r\nHost: a.test\r\nx-backend-reset: 1\r\n\r\n\
                   GET /next HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(s.weft.listener("main"), request.as_bytes()).await;
    let responses = reply.responses();
    assert_eq!(responses.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 200], "{}", reply.text());
    assert!(responses[1].body_text().contains("\"/next\""));
}

/// One backend behind a route that retries resets and 5xx, with outlier detection that ejects
/// after two consecutive failures.
async fn retrying_setup() -> Setup {
    let backend = HttpBackend::start("b").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    http:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{ prefix: / }}
              route: {{ cluster: b, retry_policy: {{ retry_on: "5xx,reset,connect-failure", num_retries: 2 }} }}
clusters:
  - name: b
    endpoints: [{b}]
    outlier_detection: {{ consecutive_5xx: 2, consecutive_gateway_failure: 2, max_ejection_percent: 100 }}
"#,
        b = q(backend.addr())
    );
    let weft = start_weft(&yaml).await;
    Setup { backend, weft }
}

/// A chunked body that breaks after its first chunk.
const BROKEN_BODY: &str = "POST /broken HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\
                           x-backend-echo-body: 1\r\n\r\n5\r\nhello\r\nzz\r\n world\r\n0\r\n\r\n";

#[tokio::test]
async fn a_broken_request_body_is_never_retried_as_a_shorter_complete_one() {
    let s = retrying_setup().await;
    let reply = raw_exchange(s.weft.listener("main"), BROKEN_BODY.as_bytes()).await;
    assert!(reply.closed, "the connection must be closed:\n{}", reply.text());
    let responses = reply.responses();
    assert!(responses.len() <= 1, "{}", reply.text());
    for r in &responses {
        assert_eq!(r.status, 400, "not answered as the client's error:\n{}", reply.text());
        assert_eq!(r.header("x-weft-response-flags"), Some("DPE"));
    }
    assert!(s.backend.hits() <= 1, "a request whose body failed was sent again ({} attempts)", s.backend.hits());
}

#[tokio::test]
async fn broken_request_bodies_do_not_eject_a_healthy_upstream() {
    let s = retrying_setup().await;
    for _ in 0..5 {
        let reply = raw_exchange(s.weft.listener("main"), BROKEN_BODY.as_bytes()).await;
        assert!(reply.closed);
    }
    let host = cluster_host(&s.weft, "b", s.backend.addr()).await;
    assert_eq!(host["health_flags"], "healthy", "a client's broken bodies were blamed on the upstream: {host}");
    assert_eq!(stat_now(&s.weft, "cluster.b.outlier_detection.ejections_total").await, 0);
    let resp = weft_test::http_get(s.weft.listener("main"), "/after", &[]).await.unwrap();
    assert_eq!(resp.status, 200);
}
