//! Resilience through `weft proxy`: retries (5xx, connect failure, retriable headers, exhaustion),
//! per-try and route timeouts, circuit breaking, outlier ejection, active health checks and the
//! no-healthy-upstream answer.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Method;
use weft_test::{
    http_get, wait_for, GrpcBackend, GrpcClient, HttpBackend, HttpConn, HttpResponse, HttpVersion, Mode, WeftProcess,
};

/// One listener, one catch-all route to cluster `c` with `route_extra` added to the route action,
/// and cluster `c` over `endpoints` with `cluster_extra` added.
async fn start(endpoints: &[SocketAddr], route_extra: &str, cluster_extra: &str) -> WeftProcess {
    let eps: Vec<String> = endpoints.iter().map(|a| q(*a)).collect();
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
              route: {{ cluster: c {route_extra} }}
clusters:
  - name: c
    endpoints: [{eps}]
    {cluster_extra}
"#,
        eps = eps.join(", ")
    );
    start_weft(&yaml).await
}

/// `n` sequential GETs of `path` on one connection.
async fn send(weft: &WeftProcess, n: usize, path: &str, headers: &[(&str, &str)]) -> Vec<HttpResponse> {
    let mut conn = HttpConn::connect(weft.listener("main"), HttpVersion::Http1).await.unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(conn.request(Method::GET, path, headers, "").await.unwrap());
    }
    out
}

fn has_flag(resp: &HttpResponse, flag: &str) -> bool {
    flags_of(resp).split(',').any(|f| f == flag)
}

/// Requests the backend received other than active health checks.
fn traffic(b: &HttpBackend) -> usize {
    b.requests().iter().filter(|r| r.path != "/healthz").count()
}

// ---- retries ----------------------------------------------------------------------------------

#[tokio::test]
async fn retries_on_5xx_hide_a_failing_endpoint() {
    let good = HttpBackend::start("good").await;
    let bad = HttpBackend::start("bad").await;
    bad.set_mode(Mode::Status(503));
    let weft = start(&[good.addr(), bad.addr()], ", retry_policy: { retry_on: 5xx, num_retries: 2 }", "").await;

    for resp in send(&weft, 40, "/", &[]).await {
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(backend_of(&resp), "good");
    }
    assert!(bad.hits() >= 1, "round robin never tried the bad endpoint");
    let stats = admin_get(&weft, "/stats").await;
    assert_eq!(stat(&stats, "cluster.c.upstream_rq_retry"), bad.hits(), "one retry per failed first attempt");
    assert_eq!(stat(&stats, "cluster.c.upstream_rq_retry_success"), bad.hits());
    let second_attempts =
        good.requests().iter().filter(|r| r.header("x-weft-attempt-count") == Some("2")).count() as u64;
    assert_eq!(second_attempts, bad.hits(), "retries carry x-weft-attempt-count: 2");
}

#[tokio::test]
async fn a_retried_request_sends_its_whole_body_again() {
    let good = HttpBackend::start("good").await;
    let bad = HttpBackend::start("bad").await;
    bad.set_mode(Mode::Status(503));
    let weft = start(&[bad.addr(), good.addr()], ", retry_policy: { retry_on: 5xx, num_retries: 2 }", "").await;

    let body: Vec<u8> = (0..20_000u32).map(|i| b'0' + (i % 10) as u8).collect();
    let mut conn = HttpConn::connect(weft.listener("main"), HttpVersion::Http1).await.unwrap();
    for _ in 0..6 {
        let resp = conn.request(Method::POST, "/upload", &[("x-backend-echo-body", "1")], body.clone()).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(backend_of(&resp), "good");
        assert!(resp.body == body, "the body that reached the backend differs ({} bytes)", resp.body.len());
    }
    assert!(bad.hits() >= 1, "no request was retried");
}

#[tokio::test]
async fn a_body_larger_than_the_retry_buffer_is_still_forwarded_whole() {
    let good = HttpBackend::start("good").await;
    let weft = start(&[good.addr()], ", retry_policy: { retry_on: 5xx, num_retries: 2 }", "").await;
    // The default replay buffer is 64 KiB; this body streams past it.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut conn = HttpConn::connect(weft.listener("main"), HttpVersion::Http1).await.unwrap();
    let resp = conn.request(Method::POST, "/big", &[("x-backend-echo-body", "1")], body.clone()).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body == body, "the body that reached the backend differs ({} bytes)", resp.body.len());
}

#[tokio::test]
async fn grpc_unavailable_is_retried_on_another_endpoint() {
    let good = GrpcBackend::start("good").await;
    let bad = GrpcBackend::start("bad").await;
    bad.set_mode(Mode::Status(14));
    let weft = start(
        &[good.addr(), bad.addr()],
        ", retry_policy: { retry_on: unavailable, num_retries: 2 }",
        "protocol: http2",
    )
    .await;
    let mut client = GrpcClient::connect(weft.listener("main")).await.unwrap();
    for i in 0..20 {
        let reply = client.say(&format!("m{i}"), &[]).await.unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
        assert_eq!(reply.into_inner().backend, "good");
    }
    assert!(bad.hits() >= 1, "round robin never tried the failing endpoint");
    assert_eq!(stat_now(&weft, "cluster.c.upstream_rq_retry").await, bad.hits());
}

#[tokio::test]
async fn a_connect_failure_is_retried_on_another_endpoint() {
    let good = HttpBackend::start("good").await;
    let weft =
        start(&[dead_addr(), good.addr()], ", retry_policy: { retry_on: connect-failure, num_retries: 2 }", "").await;

    for resp in send(&weft, 20, "/", &[]).await {
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let stats = admin_get(&weft, "/stats").await;
    let failed = stat(&stats, "cluster.c.upstream_cx_connect_fail");
    assert!(failed >= 1, "round robin never tried the dead endpoint");
    assert_eq!(stat(&stats, "cluster.c.upstream_rq_retry"), failed);
    assert_eq!(good.hits(), 20);
}

#[tokio::test]
async fn a_response_header_named_in_retriable_headers_triggers_a_retry() {
    let b = HttpBackend::start("b").await;
    let weft = start(
        &[b.addr()],
        r#", retry_policy: { retry_on: retriable-headers, num_retries: 2, retriable_headers: [{ name: x-try-again, exact: "yes" }] }"#,
        "",
    )
    .await;

    let resp = &send(&weft, 1, "/", &[("x-backend-header", "x-try-again=yes")]).await[0];
    assert_eq!(b.hits(), 3, "the first attempt and two retries");
    assert_eq!(resp.status, 200, "the last attempt's response is returned");
    assert_eq!(resp.header("x-try-again"), Some("yes"));
    assert!(has_flag(resp, "URX"), "flags {}", flags_of(resp));

    let resp = &send(&weft, 1, "/", &[("x-backend-header", "x-try-again=no")]).await[0];
    assert_eq!(b.hits(), 4, "a non-matching value is not retried");
    assert_eq!(flags_of(resp), "-");
    assert_eq!(stat_now(&weft, "cluster.c.upstream_rq_retry").await, 2);
}

#[tokio::test]
async fn exhausted_retries_return_the_last_failure_with_urx() {
    let b = HttpBackend::start("b").await;
    b.set_mode(Mode::Status(503));
    let weft = start(&[b.addr()], ", retry_policy: { retry_on: 5xx, num_retries: 2 }", "").await;

    let resp = &send(&weft, 1, "/", &[]).await[0];
    assert_eq!(resp.status, 503);
    assert_eq!(backend_of(resp), "b", "the upstream's own 503 is passed on");
    assert!(has_flag(resp, "URX"), "flags {}", flags_of(resp));
    assert_eq!(b.hits(), 3);
    assert_eq!(stat_now(&weft, "cluster.c.upstream_rq_retry").await, 2);
}

// ---- timeouts ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_per_try_timeout_gives_504_with_ut_after_every_attempt() {
    let b = HttpBackend::start("b").await;
    let weft =
        start(&[b.addr()], ", retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 200ms }", "").await;

    let resp = &send(&weft, 1, "/", &[("x-backend-delay-ms", "5000")]).await[0];
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(has_flag(resp, "UT"), "flags {}", flags_of(resp));
    assert!(wait_for(Duration::from_secs(5), || async { b.hits() >= 2 }).await, "the retry never arrived");
    assert_eq!(b.hits(), 2, "one try and one retry");
}

#[tokio::test]
async fn a_route_timeout_gives_504_with_ut() {
    let b = HttpBackend::start("b").await;
    let weft = start(&[b.addr()], ", timeout: 300ms", "").await;

    let resp = &send(&weft, 1, "/", &[("x-backend-delay-ms", "5000")]).await[0];
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(has_flag(resp, "UT"), "flags {}", flags_of(resp));
    assert_eq!(stat_now(&weft, "cluster.c.upstream_rq_timeout").await, 1);

    let resp = &send(&weft, 1, "/", &[("x-backend-delay-ms", "10")]).await[0];
    assert_eq!(resp.status, 200, "a request within the timeout succeeds");
}

// ---- circuit breaking -------------------------------------------------------------------------

#[tokio::test]
async fn the_max_requests_circuit_breaker_overflows_with_503_uo() {
    let b = HttpBackend::start("b").await;
    let weft = start(&[b.addr()], "", "circuit_breakers: { max_requests: 1 }").await;
    let addr = weft.listener("main");

    const N: usize = 8;
    let tasks: Vec<_> = (0..N)
        .map(|_| tokio::spawn(async move { http_get(addr, "/", &[("x-backend-delay-ms", "1000")]).await.unwrap() }))
        .collect();
    let (mut ok, mut overflow) = (0, 0);
    for t in tasks {
        let resp = t.await.unwrap();
        match resp.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert!(has_flag(&resp, "UO"), "a 503 without UO: {} {}", flags_of(&resp), resp.text());
                overflow += 1;
            }
            s => panic!("unexpected status {s}: {}", resp.text()),
        }
    }
    assert!(ok >= 1, "nothing got through");
    assert!(overflow >= 1, "the breaker never opened ({ok} succeeded)");
    assert_eq!(stat_now(&weft, "cluster.c.upstream_rq_pending_overflow").await, overflow);
    assert_eq!(b.hits(), ok, "overflowed requests never reach the upstream");
}

// ---- outlier detection ------------------------------------------------------------------------

const OUTLIER: &str =
    "outlier_detection: { consecutive_5xx: 3, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50 }";

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_retries_hide_it() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let weft = start(&[a.addr(), b.addr()], ", retry_policy: { retry_on: 5xx, num_retries: 2 }", OUTLIER).await;

    let mut failed = 0;
    for resp in send(&weft, 10, "/", &[]).await {
        failed += usize::from(resp.status != 200);
    }
    assert!(b.hits() >= 1, "b was not in rotation before failing");
    b.set_mode(Mode::Status(500));
    for resp in send(&weft, 40, "/", &[]).await {
        failed += usize::from(resp.status != 200);
    }
    assert_eq!(failed, 0, "the retry policy must cover every failure");

    let host = cluster_host(&weft, "c", b.addr()).await;
    assert!(host["health_flags"].as_str().unwrap().contains("failed_outlier_check"), "{host}");
    assert_eq!(host["ejected"], true);
    assert!(stat_now(&weft, "cluster.c.outlier_detection.ejections_total").await >= 1);
    assert_eq!(cluster_host(&weft, "c", a.addr()).await["health_flags"], "healthy");

    let before = b.hits();
    for resp in send(&weft, 20, "/", &[]).await {
        assert_eq!(resp.status, 200);
        assert_eq!(backend_of(&resp), "a");
    }
    assert_eq!(b.hits(), before, "an ejected endpoint gets no traffic");
}

#[tokio::test]
async fn outlier_detection_ejects_an_endpoint_that_went_away() {
    let a = HttpBackend::start("a").await;
    let mut b = HttpBackend::start("b").await;
    let weft = start(
        &[a.addr(), b.addr()],
        ", retry_policy: { retry_on: \"5xx,connect-failure,reset\", num_retries: 2 }",
        OUTLIER,
    )
    .await;

    let mut failed = 0;
    for resp in send(&weft, 10, "/", &[]).await {
        failed += usize::from(resp.status != 200);
    }
    b.shutdown().await;
    for resp in send(&weft, 40, "/", &[]).await {
        failed += usize::from(resp.status != 200);
    }
    assert_eq!(failed, 0, "the retry policy must cover every failure");
    assert!(
        wait_for_health_flag(&weft, "c", b.addr(), "failed_outlier_check", Duration::from_secs(5)).await,
        "{}",
        admin_get(&weft, "/clusters").await
    );
    assert!(stat_now(&weft, "cluster.c.outlier_detection.ejections_total").await >= 1);
}

// ---- health ------------------------------------------------------------------------------------

const HEALTH_CHECK: &str = "health_checks: [{ http: { path: /healthz }, interval: 100ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }]";

#[tokio::test]
async fn an_active_health_check_marks_a_host_unhealthy_and_traffic_avoids_it() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let weft = start(&[a.addr(), b.addr()], "", HEALTH_CHECK).await;
    let health_checks = |be: &HttpBackend| be.requests().iter().filter(|r| r.path == "/healthz").count();
    assert!(wait_for(Duration::from_secs(10), || async { health_checks(&a) >= 1 && health_checks(&b) >= 1 }).await);

    for resp in send(&weft, 10, "/", &[]).await {
        assert_eq!(resp.status, 200);
    }
    assert!(traffic(&b) >= 1, "b was not in rotation while healthy");

    b.set_mode(Mode::Status(503));
    assert!(
        wait_for_health_flag(&weft, "c", b.addr(), "failed_active_hc", Duration::from_secs(10)).await,
        "{}",
        admin_get(&weft, "/clusters").await
    );
    let before = traffic(&b);
    for resp in send(&weft, 30, "/", &[]).await {
        assert_eq!(resp.status, 200);
        assert_eq!(backend_of(&resp), "a");
    }
    assert_eq!(traffic(&b), before, "an unhealthy host gets no traffic");
    assert!(stat_now(&weft, "cluster.c.health_check.failure").await >= 2);

    // Healthy again after one passing check: back in rotation.
    b.set_mode(Mode::Normal);
    assert!(
        wait_for(Duration::from_secs(10), || async {
            cluster_host(&weft, "c", b.addr()).await["health_flags"] == "healthy"
        })
        .await
    );
    for resp in send(&weft, 20, "/", &[]).await {
        assert_eq!(resp.status, 200);
    }
    assert!(traffic(&b) > before, "a recovered host gets traffic again");
}

#[tokio::test]
async fn no_healthy_upstream_gives_503_uh() {
    let b = HttpBackend::start("b").await;
    let eps = [b.addr()];
    // Static health: the only endpoint is unhealthy, and panic mode (which would use it anyway)
    // is off.
    let yaml_eps = format!("{{ address: {}, health: unhealthy }}", q(eps[0]));
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    http:
      virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: c }} }}] }}]
clusters:
  - {{ name: c, endpoints: [{yaml_eps}], panic_threshold: 0 }}
"#
    );
    let weft = start_weft(&yaml).await;
    let resp = &send(&weft, 1, "/", &[]).await[0];
    assert_eq!(resp.status, 503);
    assert!(has_flag(resp, "UH"), "flags {}", flags_of(resp));
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_failing_health_check_on_the_only_host_gives_503_uh() {
    let b = HttpBackend::start("b").await;
    b.set_mode(Mode::Status(503));
    let weft = start(&[b.addr()], "", &format!("{HEALTH_CHECK}\n    panic_threshold: 0")).await;
    assert!(wait_for_health_flag(&weft, "c", b.addr(), "failed_active_hc", Duration::from_secs(10)).await);
    let resp = &send(&weft, 1, "/", &[]).await[0];
    assert_eq!(resp.status, 503);
    assert!(has_flag(resp, "UH"), "flags {}", flags_of(resp));
    assert_eq!(traffic(&b), 0, "the request never reached the unhealthy host");
}

/// An upstream that answers with headers and part of its body, then goes silent (holding the
/// connection open) must not hold the client forever: the stream idle timeout ends it.
#[tokio::test]
async fn a_response_body_that_stalls_is_cut_by_the_stream_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let stall = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial").await.unwrap();
        // Hold the connection open, sending nothing more, for far longer than the idle timeout.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let weft = start(&[up_addr], ", idle_timeout: 300ms", "").await;
    let mut s = tokio::net::TcpStream::connect(weft.listener("main")).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    // The client must see the connection end well before this bound (which would mean a hang).
    let reply = read_until_close(&mut s, Duration::from_secs(20)).await;
    assert!(reply.closed, "the proxy must end a stalled stream, not hang:\n{}", reply.text());
    let text = reply.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert_eq!(body, "partial", "the client gets what arrived, then the stream is cut (100 bytes were announced)");
    stall.abort();
}
