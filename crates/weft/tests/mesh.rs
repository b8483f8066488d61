//! The mesh end to end with real processes: `weft control`, `weft apply`, a `weft proxy` and a
//! stock Envoy fed by the same control plane over ADS, and real backends.
//!
//! * A differential table: the same Istio resources, the same requests through weft and through
//!   Envoy; every outcome (status, backend, path seen upstream, redirects, direct responses,
//!   faults, retries) must be equal.
//! * The control plane killed with SIGKILL under load: no request fails, and after a restart on
//!   the same data directory the proxy resynchronises.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use weft_test::envoy::AdsBootstrap;
use weft_test::{http_request, wait_for, HttpBackend, HttpVersion, WeftProcess};

/// Control plane with its store in `data_dir`, xDS on `xds` (port 0: ephemeral).
async fn start_control_on(data_dir: &std::path::Path, xds: &str) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--xds-listen", xds, "--api-listen", "127.0.0.1:0", "--debounce", "20ms"])
        .start()
        .await
}

async fn start_control(data_dir: &std::path::Path) -> WeftProcess {
    start_control_on(data_dir, "127.0.0.1:0").await
}

fn weft_cli(control: &WeftProcess, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(WEFT);
    cmd.args(args).env("WEFT_SERVER", control.listener("api").to_string());
    cmd
}

async fn apply(control: &WeftProcess, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = run_blocking(weft_cli(control, &["apply", "-f", file.to_str().unwrap()]), Duration::from_secs(30)).await;
    assert!(out.status.success(), "weft apply failed:\n{}\n{}", out.stdout, out.stderr);
}

/// A weft sidecar fed by `control`, labelled `proxy: weft`.
async fn start_weft_sidecar(control: &WeftProcess, ip: &str) -> WeftProcess {
    let b = WeftProcess::builder(WEFT);
    let boot = b.write_file("boot.yaml", "admin: { address: \"127.0.0.1:0\" }\n");
    b.arg("proxy")
        .arg("-c")
        .arg(&boot)
        .args(["--xds", &control.listener("xds").to_string()])
        .args(["--node-id", &format!("sidecar~{ip}~frontend-weft.shop~shop.svc.cluster.local")])
        .args(["--labels", "app=frontend,proxy=weft", "--concurrency", "1"])
        .start()
        .await
}

/// The mesh, with the weft and Envoy sidecars' bind addresses (distinct per test).
fn mesh_yaml(v1: &HttpBackend, v2: &HttpBackend, weft_bind: &str, envoy_bind: &str) -> String {
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
    - match: [{{ headers: {{ end-user: {{ exact: jason }} }} }}]
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v2 }} }}]
    - match: [{{ uri: {{ prefix: /old }} }}]
      redirect: {{ uri: /new, redirectCode: 301 }}
    - match: [{{ uri: {{ prefix: /api/ }} }}]
      rewrite: {{ uri: /v1/ }}
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v1 }} }}]
    - match: [{{ uri: {{ exact: /teapot }} }}]
      directResponse: {{ status: 418, body: {{ string: "short and stout" }} }}
    - match: [{{ uri: {{ prefix: /broken }} }}]
      fault: {{ abort: {{ httpStatus: 503, percentage: {{ value: 100 }} }} }}
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v1 }} }}]
    - match: [{{ uri: {{ regex: "/items/[0-9]+" }} }}]
      headers: {{ response: {{ set: {{ x-route: items }} }} }}
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v2 }} }}]
    - match: [{{ method: {{ exact: DELETE }} }}]
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v2 }} }}]
    - match: [{{ queryParams: {{ debug: {{ exact: "1" }} }} }}]
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v2 }} }}]
    - match: [{{ uri: {{ prefix: /flaky }} }}]
      retries: {{ attempts: 2, retryOn: 5xx }}
      route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v1 }} }}]
    - match: [{{ uri: {{ prefix: /split }} }}]
      route:
        - {{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v1 }}, weight: 0 }}
        - {{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v2 }}, weight: 100 }}
    - route: [{{ destination: {{ host: reviews.shop.svc.cluster.local, subset: v1 }} }}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: weft, namespace: shop }}
spec:
  workloadSelector: {{ labels: {{ proxy: weft }} }}
  egress:
    - port: {{ number: 9080, protocol: HTTP, name: http }}
      bind: {weft_bind}
      captureMode: NONE
      hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: envoy, namespace: shop }}
spec:
  workloadSelector: {{ labels: {{ proxy: envoy }} }}
  egress:
    - port: {{ number: 9080, protocol: HTTP, name: http }}
      bind: {envoy_bind}
      captureMode: NONE
      hosts: ["./*"]
"#,
        p1 = v1.addr().port(),
        p2 = v2.addr().port(),
    )
}

fn envoy_bootstrap(xds: std::net::SocketAddr) -> String {
    AdsBootstrap::new("sidecar~127.0.0.8~frontend-envoy.shop~shop.svc.cluster.local", xds)
        .cluster("frontend")
        .namespace("shop")
        .label("app", "frontend")
        .label("proxy", "envoy")
        .admin()
        .to_yaml()
}

/// What a request's outcome is made of, compared between the two proxies.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Outcome {
    status: u16,
    backend: String,
    upstream_path: String,
    location: String,
    x_route: String,
    body: String,
    upstream_hits: u64,
}

async fn outcome(
    addr: std::net::SocketAddr,
    v1: &HttpBackend,
    v2: &HttpBackend,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Outcome> {
    let before = v1.hits() + v2.hits();
    let mut h = vec![("host", "reviews")];
    h.extend_from_slice(headers);
    let resp = http_request(addr, HttpVersion::Http1, method, path, &h, "").await?;
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    let direct = if body.is_null() { resp.text() } else { String::new() };
    Ok(Outcome {
        status: resp.status.as_u16(),
        backend: resp.header("x-backend").unwrap_or("-").to_string(),
        upstream_path: body.get("path").and_then(|p| p.as_str()).unwrap_or("-").to_string(),
        location: resp.header("location").unwrap_or("-").to_string(),
        x_route: resp.header("x-route").unwrap_or("-").to_string(),
        body: direct,
        upstream_hits: v1.hits() + v2.hits() - before,
    })
}

#[tokio::test]
async fn weft_and_envoy_route_the_same_istio_config_the_same_way() {
    let v1 = HttpBackend::start("v1").await;
    let v2 = HttpBackend::start("v2").await;
    let data = tempfile::tempdir().unwrap();
    let control = start_control(data.path()).await;
    apply(&control, &mesh_yaml(&v1, &v2, "127.0.81.1", "127.0.81.2")).await;
    let weft = start_weft_sidecar(&control, "127.0.0.7").await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, envoy_bootstrap(control.listener("xds"))).unwrap();
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let mut envoy = tokio::process::Command::new(weft_test::tools::envoy_bin())
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "--log-level", "warn", "--concurrency", "1", "--base-id-path"])
        .arg(dir.path().join("base-id"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("envoy starts");
    let envoy_log = || std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();

    let weft_addr: std::net::SocketAddr = "127.0.81.1:9080".parse().unwrap();
    let envoy_addr: std::net::SocketAddr = "127.0.81.2:9080".parse().unwrap();
    for (who, addr) in [("weft", weft_addr), ("envoy", envoy_addr)] {
        let ready = wait_for(Duration::from_secs(30), || async {
            matches!(outcome(addr, &v1, &v2, http::Method::GET, "/", &[]).await, Ok(o) if o.status == 200)
        })
        .await;
        if let Ok(Some(status)) = envoy.try_wait() {
            panic!("envoy exited with {status}:\n{}", envoy_log());
        }
        assert!(ready, "{who} never served the bind-mode listener\n{}\n{}", weft.output_report(), envoy_log());
    }

    type Case = (&'static str, http::Method, &'static str, &'static [(&'static str, &'static str)]);
    let cases: &[Case] = &[
        ("default route", http::Method::GET, "/reviews/1", &[]),
        ("header match", http::Method::GET, "/reviews/1", &[("end-user", "jason")]),
        ("header mismatch", http::Method::GET, "/reviews/1", &[("end-user", "jasonx")]),
        ("redirect", http::Method::GET, "/old/page", &[]),
        ("prefix rewrite", http::Method::GET, "/api/list?x=1", &[]),
        ("direct response", http::Method::GET, "/teapot", &[]),
        ("exact is exact", http::Method::GET, "/teapot/more", &[]),
        ("fault abort", http::Method::GET, "/broken", &[]),
        ("regex + response header", http::Method::GET, "/items/42", &[]),
        ("regex is anchored", http::Method::GET, "/items/42/x", &[]),
        ("method match", http::Method::DELETE, "/anything", &[]),
        ("query match", http::Method::GET, "/q?debug=1", &[]),
        ("query mismatch", http::Method::GET, "/q?debug=2", &[]),
        ("retries on 5xx", http::Method::GET, "/flaky", &[("x-backend-status", "503")]),
        ("no retry on 4xx", http::Method::GET, "/flaky", &[("x-backend-status", "404")]),
        ("weights 0/100", http::Method::GET, "/split", &[]),
    ];
    let mut diffs = Vec::new();
    for (name, method, path, headers) in cases {
        let w = outcome(weft_addr, &v1, &v2, method.clone(), path, headers).await.unwrap();
        let e = outcome(envoy_addr, &v1, &v2, method.clone(), path, headers).await.unwrap();
        if w != e {
            diffs.push(format!("{name} ({method} {path}):\n  weft:  {w:?}\n  envoy: {e:?}"));
        }
    }
    assert!(diffs.is_empty(), "weft and envoy disagree:\n{}", diffs.join("\n"));
    // Spot checks, so that agreeing on something wrong fails too.
    let w = |path, headers| outcome(weft_addr, &v1, &v2, http::Method::GET, path, headers);
    assert_eq!(w("/reviews/1", &[("end-user", "jason")]).await.unwrap().backend, "v2");
    assert_eq!(w("/api/list?x=1", &[]).await.unwrap().upstream_path, "/v1/list?x=1");
    assert_eq!(w("/teapot", &[]).await.unwrap().status, 418);
    assert_eq!(w("/flaky", &[("x-backend-status", "503")]).await.unwrap().upstream_hits, 3);
    assert_eq!(w("/broken", &[]).await.unwrap().upstream_hits, 0);
    envoy.kill().await.unwrap();
}

#[tokio::test]
async fn a_killed_control_plane_costs_no_request_and_the_proxy_resyncs_after_restart() {
    let v1 = HttpBackend::start("v1").await;
    let v2 = HttpBackend::start("v2").await;
    let data = tempfile::tempdir().unwrap();
    // A fixed xDS port, so that the restarted control plane is where the proxy looks for it.
    let xds = dead_addr().to_string();
    let mut control = start_control_on(data.path(), &xds).await;
    apply(&control, &mesh_yaml(&v1, &v2, "127.0.82.1", "127.0.82.2")).await;
    let weft = start_weft_sidecar(&control, "127.0.0.9").await;
    let addr: std::net::SocketAddr = "127.0.82.1:9080".parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || async {
            matches!(outcome(addr, &v1, &v2, http::Method::GET, "/", &[]).await, Ok(o) if o.status == 200)
        })
        .await,
        "{}",
        weft.output_report()
    );

    // Steady traffic (bounded: 600 requests or 60 s) while the control plane dies and returns.
    let load =
        tokio::spawn(async move {
            let mut results: BTreeMap<u16, u32> = BTreeMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for _ in 0..600 {
                if tokio::time::Instant::now() > deadline {
                    break;
                }
                let status =
                    match http_request(addr, HttpVersion::Http1, http::Method::GET, "/", &[("host", "reviews")], "")
                        .await
                    {
                        Ok(r) => r.status.as_u16(),
                        Err(_) => 0,
                    };
                *results.entry(status).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            results
        });
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let control = start_control_on(data.path(), &xds).await;
    let results = load.await.unwrap();
    assert_eq!(results.keys().copied().collect::<Vec<_>>(), [200], "every request succeeded: {results:?}");

    // The restarted control plane has everything that was applied and the proxy syncs again.
    let synced = wait_for(Duration::from_secs(30), || async {
        let out = run_blocking(weft_cli(&control, &["check"]), Duration::from_secs(20)).await;
        out.stdout.lines().any(|l| l.contains("frontend-weft") && l.matches("SYNCED").count() == 4)
    })
    .await;
    let out = run_blocking(weft_cli(&control, &["check"]), Duration::from_secs(20)).await;
    assert!(synced, "the proxy did not resync:\n{}\n{}\n{}", out.stdout, out.stderr, weft.output_report());
}
