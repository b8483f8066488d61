//! The `weft` process over its life: config errors and `weft validate`, reloads on SIGHUP (good
//! and bad), draining on SIGTERM and `POST /drain`, the admin endpoints and the access log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use http::Method;
use weft_test::{http_get, wait_for, HttpBackend, HttpConn, HttpVersion, WeftProcess, SIGHUP, SIGTERM};

const BAD_LB_POLICY: &str = r#"
clusters:
  - { name: x, endpoints: ["127.0.0.1:1"], lb_policy: fastest }
"#;

/// Listener `main` routing `/abort` to a fault and everything else to `target` (`alpha` or
/// `beta`), with the admin on an ephemeral port and `extra` top-level YAML.
fn config(alpha: &HttpBackend, beta: &HttpBackend, target: &str, extra: &str) -> String {
    format!(
        r#"
node: {{ id: test-node, namespace: shop, workload: frontend-v1, app: frontend, version: v1 }}
admin: {{ address: "127.0.0.1:0" }}
{extra}
listeners:
  - name: main
    address: "127.0.0.1:0"
    http:
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - match: {{ prefix: /abort }}
              route: {{ cluster: {target} }}
              fault: {{ abort: {{ http_status: 503, percent: 100 }} }}
            - {{ match: {{ prefix: / }}, route: {{ cluster: {target} }} }}
clusters:
  - name: alpha
    endpoints: [{a}]
    metadata: {{ service: reviews.shop.svc.cluster.local, namespace: shop }}
  - {{ name: beta, endpoints: [{b}] }}
"#,
        a = q(alpha.addr()),
        b = q(beta.addr()),
    )
}

struct Setup {
    alpha: HttpBackend,
    beta: HttpBackend,
    weft: WeftProcess,
}

async fn setup() -> Setup {
    let alpha = HttpBackend::start("alpha").await;
    let beta = HttpBackend::start("beta").await;
    let weft = start_weft(&config(&alpha, &beta, "alpha", "")).await;
    Setup { alpha, beta, weft }
}

/// One GET on a fresh connection (a connection keeps the config it was accepted with).
async fn backend_now(weft: &WeftProcess) -> String {
    backend_of(&http_get(weft.listener("main"), "/", &[]).await.unwrap())
}

// ---- config errors ----------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_config_exits_64_naming_file_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, BAD_LB_POLICY).unwrap();
    let mut cmd = Command::new(WEFT);
    cmd.arg("proxy").arg("--config").arg(&path);
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(64), "stderr: {}", out.stderr);
    let want = format!(r#"{}: cluster "x": lb_policy: unknown value "fastest""#, path.display());
    assert!(out.stderr.contains(&want), "stderr must contain\n  {want}\ngot\n  {}", out.stderr);
}

#[tokio::test]
async fn a_missing_config_file_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.yaml");
    let mut cmd = Command::new(WEFT);
    cmd.arg("proxy").arg("--config").arg(&path);
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(64), "stderr: {}", out.stderr);
    assert!(out.stderr.contains(&path.display().to_string()), "{}", out.stderr);
}

#[tokio::test]
async fn validate_accepts_a_good_config_and_rejects_a_bad_one() {
    let alpha = HttpBackend::start("alpha").await;
    let beta = HttpBackend::start("beta").await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&good, config(&alpha, &beta, "alpha", "")).unwrap();
    std::fs::write(&bad, BAD_LB_POLICY).unwrap();

    let mut cmd = Command::new(WEFT);
    cmd.arg("validate").arg("-c").arg(&good);
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("ok (1 listeners, 0 route configs, 2 clusters"), "{}", out.stdout);

    let mut cmd = Command::new(WEFT);
    cmd.arg("validate").arg("-c").arg(&bad);
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stderr.contains(r#"cluster "x": lb_policy: unknown value "fastest""#), "{}", out.stderr);
    assert_eq!(alpha.hits() + beta.hits(), 0, "validate never sends traffic");
}

// ---- reloads ----------------------------------------------------------------------------------

#[tokio::test]
async fn sighup_with_a_changed_config_switches_routing_on_the_same_port() {
    let s = setup().await;
    let before = s.weft.listener("main");
    assert_eq!(backend_now(&s.weft).await, "alpha");

    std::fs::write(config_path(&s.weft), config(&s.alpha, &s.beta, "beta", "")).unwrap();
    s.weft.signal(SIGHUP);
    let mut switched = false;
    for _ in 0..200 {
        if backend_now(&s.weft).await == "beta" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "routing never switched to beta\n{}", s.weft.output_report());
    for _ in 0..5 {
        assert_eq!(backend_now(&s.weft).await, "beta", "once switched, it stays switched");
    }
    let stats = admin_get(&s.weft, "/stats").await;
    assert_eq!(stat(&stats, "server.config_reloads"), 1);
    assert_eq!(stat(&stats, "server.config_reload_failures"), 0);
    let mut weft = s.weft;
    assert_eq!(weft.reread_ready().unwrap().listeners["main"], before, "the listener kept its port");
}

/// Listener `main` using the named route table `main`, which routes everything to `target`.
fn named_routes_config(alpha: &HttpBackend, beta: &HttpBackend, target: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - {{ name: main, address: "127.0.0.1:0", http: {{ route_config: main }} }}
route_configs:
  - name: main
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {target} }} }}] }}
clusters:
  - {{ name: alpha, endpoints: [{a}] }}
  - {{ name: beta, endpoints: [{b}] }}
"#,
        a = q(alpha.addr()),
        b = q(beta.addr()),
    )
}

#[tokio::test]
async fn an_open_connection_follows_a_route_table_change() {
    let alpha = HttpBackend::start("alpha").await;
    let beta = HttpBackend::start("beta").await;
    let weft = start_weft(&named_routes_config(&alpha, &beta, "alpha")).await;
    let mut conn = HttpConn::connect(weft.listener("main"), HttpVersion::Http1).await.unwrap();
    let resp = conn.request(Method::GET, "/", &[], "").await.unwrap();
    assert_eq!(backend_of(&resp), "alpha");

    std::fs::write(config_path(&weft), named_routes_config(&alpha, &beta, "beta")).unwrap();
    weft.signal(SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || async { stat_now(&weft, "server.config_reloads").await == 1 }).await,
        "{}",
        weft.output_report()
    );
    // The same keep-alive connection, accepted under the old config, now routes to beta.
    let resp = conn.request(Method::GET, "/", &[], "").await.unwrap();
    assert_eq!(backend_of(&resp), "beta", "{:?}", resp.headers);
}

#[tokio::test]
async fn sighup_can_add_a_listener_and_the_ready_file_names_it() {
    let s = setup().await;
    let second = "  - name: second\n    address: \"127.0.0.1:0\"\n    http: { virtual_hosts: [{ name: b, domains: [\"*\"], routes: [{ match: { prefix: / }, route: { cluster: beta } }] }] }\n";
    let text = config(&s.alpha, &s.beta, "alpha", "").replace("clusters:\n", &format!("{second}clusters:\n"));
    std::fs::write(config_path(&s.weft), text).unwrap();
    let mut weft = s.weft;
    weft.signal(SIGHUP);
    let mut listed = false;
    for _ in 0..200 {
        if weft.reread_ready().map(|r| r.listeners.contains_key("second")).unwrap_or(false) {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed, "the ready file never listed the new listener\n{}", weft.output_report());
    let resp = http_get(weft.listener("second"), "/", &[]).await.unwrap();
    assert_eq!(backend_of(&resp), "beta");
    assert_eq!(backend_now(&weft).await, "alpha", "the old listener is untouched");
    let prom = admin_get(&weft, "/stats/prometheus").await;
    assert!(prom.lines().any(|l| l == "weft_config_reloads_total 1"), "{prom}");
}

#[tokio::test]
async fn sighup_with_an_invalid_config_keeps_the_old_one_serving() {
    let s = setup().await;
    assert_eq!(backend_now(&s.weft).await, "alpha");

    std::fs::write(config_path(&s.weft), BAD_LB_POLICY).unwrap();
    s.weft.signal(SIGHUP);
    let failed = wait_for(Duration::from_secs(10), || async {
        admin_get(&s.weft, "/stats/prometheus").await.lines().any(|l| l == "weft_config_reload_failures_total 1")
    })
    .await;
    assert!(failed, "{}", admin_get(&s.weft, "/stats/prometheus").await);
    for _ in 0..5 {
        assert_eq!(backend_now(&s.weft).await, "alpha", "the previous config keeps serving");
    }
    let stderr = s.weft.stderr_text();
    assert!(stderr.contains(r#"cluster "x": lb_policy: unknown value "fastest""#), "the reason is logged:\n{stderr}");
    assert_eq!(stat_now(&s.weft, "server.config_reloads").await, 0);
}

// ---- draining ---------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let s = setup().await;
    let addr = s.weft.listener("main");
    let in_flight = tokio::spawn(async move { http_get(addr, "/slow", &[("x-backend-delay-ms", "500")]).await });
    assert!(wait_for(Duration::from_secs(10), || async { s.alpha.hits() == 1 }).await, "the request never arrived");

    let mut weft = s.weft;
    weft.signal(SIGTERM);
    let resp = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/slow");
    let status = weft.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", weft.output_report());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_h2_request_finish_then_exits_0() {
    let s = setup().await;
    let addr = s.weft.listener("main");
    let in_flight = tokio::spawn(async move {
        let mut conn = HttpConn::connect(addr, HttpVersion::H2c).await?;
        conn.request(Method::GET, "/slow-h2", &[("x-backend-delay-ms", "500")], "").await
    });
    assert!(wait_for(Duration::from_secs(10), || async { s.alpha.hits() == 1 }).await, "the request never arrived");

    let mut weft = s.weft;
    weft.signal(SIGTERM);
    let resp = in_flight.await.unwrap().expect("the in-flight h2 request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/slow-h2");
    let status = weft.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", weft.output_report());
}

#[tokio::test]
async fn a_keep_alive_connection_in_flight_at_sigterm_is_answered_then_closed() {
    let s = setup().await;
    let addr = s.weft.listener("main");
    let mut conn = HttpConn::connect(addr, HttpVersion::Http1).await.unwrap();
    let resp = conn.request(Method::GET, "/before", &[], "").await.unwrap();
    assert_eq!(resp.header("connection"), None, "keep-alive before the drain");
    let in_flight = tokio::spawn(async move {
        let resp = conn.request(Method::GET, "/during", &[("x-backend-delay-ms", "500")], "").await;
        let next = conn.request(Method::GET, "/after", &[], "").await;
        (resp, next)
    });
    assert!(wait_for(Duration::from_secs(10), || async { s.alpha.hits() == 2 }).await);
    let mut weft = s.weft;
    weft.signal(SIGTERM);
    let (resp, next) = in_flight.await.unwrap();
    let resp = resp.expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"), "{:?}", resp.headers);
    assert!(next.is_err(), "the connection is closed after the drain");
    assert_eq!(s.alpha.hits(), 2);
    assert_eq!(weft.wait_exit(Duration::from_secs(15)).await.code(), Some(0));
}

#[tokio::test]
async fn post_drain_makes_ready_fail_and_stops_accepting() {
    let s = setup().await;
    let ready = http_get(s.weft.admin(), "/ready", &[]).await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());

    let drained = admin_post(&s.weft, "/drain").await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    let ready = http_get(s.weft.admin(), "/ready", &[]).await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(stat_now(&s.weft, "server.draining").await == 1);

    let addr = s.weft.listener("main");
    let refused =
        wait_for(Duration::from_secs(10), || async { tokio::net::TcpStream::connect(addr).await.is_err() }).await;
    assert!(refused, "the listener still accepts connections after a drain");
}

// ---- admin ------------------------------------------------------------------------------------

#[tokio::test]
async fn stats_and_prometheus_count_requests_with_istio_labels() {
    let s = setup().await;
    for _ in 0..3 {
        assert_eq!(http_get(s.weft.listener("main"), "/", &[]).await.unwrap().status, 200);
    }
    let resp = http_get(s.weft.listener("main"), "/", &[("x-backend-status", "503")]).await.unwrap();
    assert_eq!(resp.status, 503);

    let service = [("destination_service", "reviews.shop.svc.cluster.local")];
    let counted = wait_for(Duration::from_secs(5), || async {
        let prom = admin_get(&s.weft, "/stats/prometheus").await;
        prom_sum(&prom, "istio_requests_total", &service) == 4.0
    })
    .await;
    let prom = admin_get(&s.weft, "/stats/prometheus").await;
    assert!(counted, "{prom}");
    let ok = [
        ("response_code", "200"),
        ("destination_service", "reviews.shop.svc.cluster.local"),
        ("destination_service_namespace", "shop"),
        ("source_workload", "frontend-v1"),
        ("source_app", "frontend"),
    ];
    assert_eq!(prom_sum(&prom, "istio_requests_total", &ok), 3.0, "{prom}");
    assert_eq!(prom_sum(&prom, "istio_requests_total", &[("response_code", "503")]), 1.0, "{prom}");
    assert!(prom.contains("istio_request_duration_milliseconds_bucket{"), "{prom}");

    let stats = admin_get(&s.weft, "/stats").await;
    assert_eq!(stat(&stats, "cluster.alpha.upstream_rq_total"), 4);
    assert_eq!(stat(&stats, "cluster.beta.upstream_rq_total"), 0);
    assert_eq!(stat(&stats, "server.downstream_rq_total"), 4);
}

#[tokio::test]
async fn config_dump_contains_the_clusters() {
    let s = setup().await;
    let text = admin_get(&s.weft, "/config_dump").await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("/config_dump is JSON");
    let clusters = &json["config"]["clusters"];
    assert!(clusters.get("alpha").is_some() && clusters.get("beta").is_some(), "{text}");
    assert!(text.contains(&s.alpha.addr().to_string()), "endpoints are dumped: {text}");
}

#[tokio::test]
async fn clusters_json_lists_every_host_with_health_and_counts() {
    let s = setup().await;
    for _ in 0..2 {
        http_get(s.weft.listener("main"), "/", &[]).await.unwrap();
    }
    let alpha = cluster_host(&s.weft, "alpha", s.alpha.addr()).await;
    assert_eq!(alpha["health_flags"], "healthy", "{alpha}");
    assert_eq!(alpha["healthy"], true);
    assert_eq!(alpha["rq_total"], 2, "{alpha}");
    let beta = cluster_host(&s.weft, "beta", s.beta.addr()).await;
    assert_eq!(beta["rq_total"], 0, "{beta}");
}

#[tokio::test]
async fn the_access_log_has_a_json_line_per_request_with_request_id_and_flags() {
    let alpha = HttpBackend::start("alpha").await;
    let beta = HttpBackend::start("beta").await;
    let builder = WeftProcess::builder(WEFT);
    let log = builder.dir().join("access.log");
    let extra = format!("access_log: {:?}", log.display().to_string());
    let cfg = builder.write_file(CONFIG_NAME, config(&alpha, &beta, "alpha", &extra));
    let weft = builder.arg("proxy").arg("--config").arg(&cfg).start().await;

    let addr = weft.listener("main");
    assert_eq!(http_get(addr, "/ok", &[("x-request-id", "req-ok-1")]).await.unwrap().status, 200);
    assert_eq!(http_get(addr, "/abort", &[("x-request-id", "req-abort-2")]).await.unwrap().status, 503);
    assert_eq!(http_get(addr, "/generated", &[]).await.unwrap().status, 200);
    let generated = alpha.last_request().unwrap().header("x-request-id").unwrap().to_string();

    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || async { read().lines().count() >= 3 }).await,
        "access log: {:?}",
        read()
    );
    let lines: Vec<serde_json::Value> =
        read().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let by_id = |id: &str| {
        lines.iter().find(|l| l["x_request_id"] == id).unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
    };
    let ok = by_id("req-ok-1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["path"], "/ok");
    assert_eq!(ok["upstream_cluster"], "alpha");
    let abort = by_id("req-abort-2");
    assert_eq!(abort["response_code"], 503);
    assert_eq!(abort["response_flags"], "FI");
    assert_eq!(by_id(&generated)["path"], "/generated", "the generated id is logged too");
}
