//! Two `weft control` replicas sharing one real etcd (`--store etcd://…`): a change applied to
//! one reaches a proxy connected to the other; while etcd is down both keep serving their last
//! mesh and refuse applies with a clear 503; after etcd returns they follow each other again; and
//! when one replica dies the other keeps serving and accepting applies.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use weft_test::{http_request, wait_for, EtcdServer, HttpBackend, HttpVersion, WeftProcess};

const WAIT: Duration = Duration::from_secs(30);

async fn start_control(store: &str) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .arg("control")
        .args(["--store", store])
        .args(["--xds-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--debounce", "20ms"])
        .start()
        .await
}

fn weft_cli(control: &WeftProcess, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(WEFT);
    cmd.args(args).env("WEFT_SERVER", control.listener("api").to_string());
    cmd
}

async fn try_apply(control: &WeftProcess, yaml: &str) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    run_blocking(weft_cli(control, &["apply", "-f", file.to_str().unwrap()]), Duration::from_secs(30)).await
}

async fn apply(control: &WeftProcess, yaml: &str) {
    let out = try_apply(control, yaml).await;
    assert!(out.status.success(), "weft apply failed:\n{}\n{}", out.stdout, out.stderr);
}

/// reviews with two versions, routed entirely to `subset`; the weft sidecar binds `bind`.
fn mesh(v1: &HttpBackend, v2: &HttpBackend, bind: &str, subset: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{{ number: 9080, name: http }}]
  resolution: STATIC
  endpoints:
    - {{ address: 127.0.0.1, ports: {{ http: {p1} }}, labels: {{ version: v1 }} }}
    - {{ address: 127.0.0.1, ports: {{ http: {p2} }}, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: reviews, namespace: shop }}
spec:
  host: reviews.shop.svc.cluster.local
  subsets:
    - {{ name: v1, labels: {{ version: v1 }} }}
    - {{ name: v2, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
    - route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: {subset} }} }}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: frontend, namespace: shop }}
spec:
  egress:
    - port: {{ number: 9080, protocol: HTTP, name: http }}
      bind: {bind}
      captureMode: NONE
      hosts: ["./*"]
"#,
        p1 = v1.addr().port(),
        p2 = v2.addr().port(),
    )
}

async fn start_sidecar(control: &WeftProcess) -> WeftProcess {
    let b = WeftProcess::builder(WEFT);
    let boot = b.write_file("boot.yaml", "admin: { address: \"127.0.0.1:0\" }\n");
    b.arg("proxy")
        .arg("-c")
        .arg(&boot)
        .args(["--xds", &control.listener("xds").to_string()])
        .args(["--node-id", "sidecar~127.0.0.9~frontend-1.shop~shop.svc.cluster.local"])
        .args(["--concurrency", "1"])
        .start()
        .await
}

/// Which backend answers `GET /` through the sidecar (`None` on any failure).
async fn backend(addr: SocketAddr) -> Option<String> {
    let resp = http_request(addr, HttpVersion::Http1, http::Method::GET, "/", &[("host", "reviews")], "").await.ok()?;
    (resp.status == 200).then(|| backend_of(&resp))
}

async fn wait_for_backend(addr: SocketAddr, want: &str, what: &str, procs: &[&WeftProcess]) {
    let ok = wait_for(WAIT, || async { backend(addr).await.as_deref() == Some(want) }).await;
    if !ok {
        let reports: Vec<String> = procs.iter().map(|p| p.output_report()).collect();
        panic!("{what}: requests never reached {want} (last: {:?})\n{}", backend(addr).await, reports.join("\n"));
    }
}

#[tokio::test]
async fn two_replicas_on_one_etcd_share_config_survive_an_etcd_restart_and_each_other() {
    let mut etcd = tokio::task::spawn_blocking(|| EtcdServer::start().expect("start etcd")).await.unwrap();
    let url = etcd.url("ha-e2e");
    let v1 = HttpBackend::start("v1").await;
    let v2 = HttpBackend::start("v2").await;
    let bind = "127.0.84.1";
    let addr: SocketAddr = format!("{bind}:9080").parse().unwrap();

    let mut r1 = start_control(&url).await;
    let r2 = start_control(&url).await;
    apply(&r1, &mesh(&v1, &v2, bind, "v1")).await;
    let proxy = start_sidecar(&r2).await;
    wait_for_backend(addr, "v1", "applied to replica 1, served by replica 2", &[&r1, &r2, &proxy]).await;

    // etcd goes away: both replicas keep serving their mesh, and refuse writes clearly.
    etcd.kill();
    let out = try_apply(&r1, &mesh(&v1, &v2, bind, "v2")).await;
    assert!(!out.status.success(), "an apply without etcd must fail:\n{}", out.stdout);
    assert!(
        out.stderr.contains("unavailable") && out.stderr.contains(&url),
        "the error says the store is unavailable and names it:\n{}",
        out.stderr
    );
    for _ in 0..20 {
        assert_eq!(backend(addr).await.as_deref(), Some("v1"), "the proxy keeps routing while etcd is down");
    }
    let out = run_blocking(weft_cli(&r2, &["check"]), Duration::from_secs(20)).await;
    assert!(out.status.success(), "weft check answers from the served mesh while etcd is down:\n{}", out.stderr);

    // etcd is back: a change applied to replica 1 reaches replica 2's proxy again (its watch
    // reconnected on its own).
    etcd.restart().expect("restart etcd");
    let applied = wait_for(WAIT, || async { try_apply(&r1, &mesh(&v1, &v2, bind, "v2")).await.status.success() }).await;
    assert!(applied, "replica 1 accepts applies again after etcd returned\n{}", r1.output_report());
    wait_for_backend(addr, "v2", "applied to replica 1 after the etcd restart", &[&r1, &r2, &proxy]).await;

    // Replica 1 dies: replica 2 keeps serving and takes applies.
    r1.kill();
    assert_eq!(backend(addr).await.as_deref(), Some("v2"));
    apply(&r2, &mesh(&v1, &v2, bind, "v1")).await;
    wait_for_backend(addr, "v1", "applied to replica 2 after replica 1 died", &[&r2, &proxy]).await;

    // A replica started now serves the same config from etcd alone.
    let r3 = start_control(&url).await;
    let out = run_blocking(weft_cli(&r3, &["get", "vs", "-A", "-o", "yaml"]), Duration::from_secs(20)).await;
    assert!(out.status.success() && out.stdout.contains("subset: v1"), "{}\n{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn a_bad_store_url_exits_64_and_an_unreachable_etcd_fails_the_start_clearly() {
    let mut cmd = std::process::Command::new(WEFT);
    cmd.args([
        "control",
        "--store",
        "http://127.0.0.1:2379",
        "--api-listen",
        "127.0.0.1:0",
        "--xds-listen",
        "127.0.0.1:0",
    ]);
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("--store") && out.stderr.contains("etcd://HOST:PORT"), "{}", out.stderr);

    let url = format!("etcd://{}/nowhere", dead_addr());
    let mut cmd = std::process::Command::new(WEFT);
    cmd.args(["control", "--store", &url, "--api-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0"]);
    let out = run_blocking(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&url) && out.stderr.contains("unreachable"), "{}", out.stderr);
}
