//! HTTP-proxy mode and the persisted xDS config end to end: `weft control`, `weft apply`, a
//! `weft proxy --http-proxy-port` and a stock Envoy asking for the same listener (node metadata
//! `HTTP_PROXY_PORT`), real backends, curl.
//!
//! * The same proxy requests through weft and Envoy give the same answers: mesh HTTP services
//!   by name (VirtualService routes included), CONNECT to a TCP service, destinations outside
//!   the mesh under ALLOW_ANY, and their refusal once a Sidecar says REGISTRY_ONLY.
//! * `--xds-cache`: a proxy restarted while the control plane is down serves its persisted
//!   config, then resynchronises when the control plane returns; a damaged cache is ignored.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_test::envoy::AdsBootstrap;
use weft_test::tools::require_tool;
use weft_test::{wait_for, HttpBackend, WeftProcess};

async fn start_control(data_dir: &std::path::Path, xds: &str) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--xds-listen", xds, "--api-listen", "127.0.0.1:0", "--debounce", "20ms"])
        .start()
        .await
}

async fn apply(control: &WeftProcess, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(WEFT);
    cmd.args(["apply", "-f", file.to_str().unwrap()]).env("WEFT_SERVER", control.listener("api").to_string());
    let out = run_blocking(cmd, Duration::from_secs(30)).await;
    assert!(out.status.success(), "weft apply failed:\n{}\n{}", out.stdout, out.stderr);
}

/// A TCP server that reads one line (or until the client half-closes), then answers
/// `echo:<what it read>` and closes. (Envoy ends an HTTP/1 CONNECT tunnel when the client
/// half-closes, so the comparison does not rely on half-close; weft passes it on, which the
/// static-config tests check.)
async fn start_tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut b = [0u8; 1];
                loop {
                    match s.read(&mut b).await {
                        Ok(1) if b[0] != b'\n' => got.push(b[0]),
                        Ok(_) => break,
                        Err(_) => return,
                    }
                }
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&got);
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn mesh_yaml(reviews: &HttpBackend, db: SocketAddr, header: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{{ number: 9080, name: http }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {rp} }} }}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: db, namespace: shop }}
spec:
  hosts: [db.shop.svc.cluster.local]
  ports: [{{ number: 5432, name: tcp, protocol: TCP }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1, ports: {{ tcp: {dp} }} }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  http:
    - match: [{{ uri: {{ prefix: /v2 }} }}]
      headers: {{ response: {{ set: {{ x-route: "{header}" }} }} }}
      route: [{{ destination: {{ host: reviews }} }}]
    - route: [{{ destination: {{ host: reviews }} }}]
"#,
        rp = reviews.addr().port(),
        dp = db.port(),
    )
}

/// A Sidecar for the proxies labelled `proxy: NAME`: bind mode (no capture listeners, so the
/// tests' proxies never compete for 15001/15006) on `bind`, with the outbound `mode`.
fn sidecar(name: &str, bind: &str, mode: &str) -> String {
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: {name}, namespace: shop }}
spec:
  workloadSelector: {{ labels: {{ proxy: {name} }} }}
  egress: [{{ hosts: ["./*"], bind: {bind}, captureMode: NONE }}]
  outboundTrafficPolicy: {{ mode: {mode} }}
"#
    )
}

/// A port on 127.0.0.1 that is free now (the proxies bind it themselves).
fn free_port() -> u16 {
    dead_addr().port()
}

async fn start_weft_proxy(
    control_xds: SocketAddr,
    proxy_port: u16,
    cache: Option<&std::path::Path>,
    name: &str,
) -> WeftProcess {
    let b = WeftProcess::builder(WEFT);
    let boot = b.write_file("boot.yaml", "admin: { address: \"127.0.0.1:0\" }\n");
    let mut b = b
        .arg("proxy")
        .arg("-c")
        .arg(&boot)
        .args(["--xds", &control_xds.to_string()])
        .args(["--node-id", "sidecar~127.0.0.7~web-weft.shop~shop.svc.cluster.local"])
        .args(["--labels", &format!("app=web,proxy={name}"), "--concurrency", "1"])
        .args(["--http-proxy-port", &proxy_port.to_string()]);
    if let Some(dir) = cache {
        b = b.arg("--xds-cache").arg(dir);
    }
    b.start().await
}

fn envoy_bootstrap(xds: SocketAddr, proxy_port: u16) -> String {
    AdsBootstrap::new("sidecar~127.0.0.8~web-envoy.shop~shop.svc.cluster.local", xds)
        .cluster("web")
        .namespace("shop")
        .label("app", "web")
        .label("proxy", "envoy")
        .metadata("HTTP_PROXY_PORT", &proxy_port.to_string())
        .admin()
        .to_yaml()
}

fn curl() -> Command {
    let mut cmd = Command::new(require_tool("curl"));
    for v in
        ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"]
    {
        cmd.env_remove(v);
    }
    cmd.args(["--silent", "--show-error", "--max-time", "10", "-o", "/dev/null", "-D", "-"]);
    cmd
}

/// What a proxied request came to: status, the backend that answered, the `x-route` header.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Answer {
    status: u16,
    backend: String,
    x_route: String,
}

/// `curl [-p] -x http://127.0.0.1:PORT URL`.
async fn through(proxy_port: u16, url: &str, tunnel: bool) -> Answer {
    let mut cmd = curl();
    if tunnel {
        cmd.arg("-p");
    }
    cmd.args(["-x", &format!("http://127.0.0.1:{proxy_port}"), url]);
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    // Through a tunnel curl prints the proxy's answer to CONNECT, then the server's; a refused
    // tunnel makes curl fail (exit 56) after printing the proxy's answer. The last one counts.
    let head = out.stdout;
    let last_status = head
        .lines()
        .filter(|l| l.starts_with("HTTP/"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u16>().ok())
        .next_back()
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .next_back()
            .unwrap_or_default()
    };
    Answer { status: last_status, backend: header("x-backend"), x_route: header("x-route") }
}

/// CONNECT to `target`, send `payload`, read the answer until the server closes.
async fn tunnel_echo(proxy_port: u16, target: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let mut c = TcpStream::connect(("127.0.0.1", proxy_port)).await.unwrap();
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    let status = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
    if !status.contains(" 200 ") {
        return (status, Vec::new());
    }
    c.write_all(payload).await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back)).await;
    (status, back)
}

#[tokio::test]
async fn weft_and_envoy_serve_the_http_proxy_port_the_same_way() {
    let reviews = HttpBackend::start("reviews").await;
    let outside = HttpBackend::start("outside").await;
    let db = start_tcp_echo().await;
    let data = tempfile::tempdir().unwrap();
    let control = start_control(data.path(), "127.0.0.1:0").await;
    let sidecars =
        |mode: &str| format!("{}{}", sidecar("weft", "127.0.82.1", mode), sidecar("envoy", "127.0.82.2", mode));
    apply(&control, &format!("{}{}", mesh_yaml(&reviews, db, "v2"), sidecars("ALLOW_ANY"))).await;

    let (weft_port, envoy_port) = (free_port(), free_port());
    let weft = start_weft_proxy(control.listener("xds"), weft_port, None, "weft").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, envoy_bootstrap(control.listener("xds"), envoy_port)).unwrap();
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
    for (who, port) in [("weft", weft_port), ("envoy", envoy_port)] {
        let ready = wait_for(Duration::from_secs(30), || async {
            through(port, "http://reviews:9080/ready", false).await.status == 200
        })
        .await;
        if let Ok(Some(status)) = envoy.try_wait() {
            panic!("envoy exited with {status}:\n{}", envoy_log());
        }
        assert!(ready, "{who} never served its HTTP-proxy port\n{}\n{}", weft.output_report(), envoy_log());
    }
    assert!(!envoy_log().contains("rejected"), "Envoy rejected a resource:\n{}", envoy_log());

    let out = outside.addr().port();
    let cases: Vec<(&str, String, bool, Answer)> = vec![
        (
            "mesh service by short name",
            "http://reviews:9080/a".into(),
            false,
            Answer { status: 200, backend: "reviews".into(), x_route: String::new() },
        ),
        (
            "VirtualService route by FQDN",
            "http://reviews.shop.svc.cluster.local:9080/v2/x".into(),
            false,
            Answer { status: 200, backend: "reviews".into(), x_route: "v2".into() },
        ),
        (
            "CONNECT to a mesh HTTP service",
            "http://reviews:9080/t".into(),
            true,
            Answer { status: 200, backend: "reviews".into(), x_route: String::new() },
        ),
        (
            "outside the mesh by name (ALLOW_ANY)",
            format!("http://localhost:{out}/ext"),
            false,
            Answer { status: 200, backend: "outside".into(), x_route: String::new() },
        ),
        (
            "CONNECT outside the mesh (ALLOW_ANY)",
            format!("http://127.0.0.1:{out}/ext"),
            true,
            Answer { status: 200, backend: "outside".into(), x_route: String::new() },
        ),
    ];
    for (what, url, tunnel, want) in &cases {
        for (who, port) in [("weft", weft_port), ("envoy", envoy_port)] {
            assert_eq!(&through(port, url, *tunnel).await, want, "{who}: {what}");
        }
    }
    for (who, port) in [("weft", weft_port), ("envoy", envoy_port)] {
        let (status, back) = tunnel_echo(port, "db:5432", b"select 1\n").await;
        assert!(status.contains(" 200 "), "{who}: {status}");
        assert_eq!(back, b"echo:select 1", "{who}: bytes both ways through the tunnel");
    }

    // REGISTRY_ONLY: destinations outside the mesh are refused by both, the mesh still works.
    apply(&control, &sidecars("REGISTRY_ONLY")).await;
    for (who, port) in [("weft", weft_port), ("envoy", envoy_port)] {
        let refused = wait_for(Duration::from_secs(20), || async {
            through(port, &format!("http://localhost:{out}/blocked"), false).await.status == 503
        })
        .await;
        assert!(refused, "{who} still forwards outside the mesh under REGISTRY_ONLY");
    }
    let hits = outside.hits();
    for (who, port) in [("weft", weft_port), ("envoy", envoy_port)] {
        let blocked = through(port, &format!("http://localhost:{out}/blocked"), false).await;
        assert_eq!(blocked.status, 503, "{who}");
        let (status, _) = tunnel_echo(port, &format!("127.0.0.1:{out}"), b"x\n").await;
        assert!(status.contains(" 503 "), "{who}: CONNECT outside the mesh: {status}");
        assert_eq!(through(port, "http://reviews:9080/still", false).await.status, 200, "{who}");
    }
    assert_eq!(outside.hits(), hits, "nothing reaches the outside service under REGISTRY_ONLY");
    envoy.kill().await.unwrap();
}

#[tokio::test]
async fn a_restarted_proxy_serves_its_persisted_config_until_the_control_plane_returns() {
    let reviews = HttpBackend::start("reviews").await;
    let db = start_tcp_echo().await;
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let xds = dead_addr();
    let mut control = start_control(data.path(), &xds.to_string()).await;
    let side = sidecar("cached", "127.0.82.3", "ALLOW_ANY");
    apply(&control, &format!("{}{side}", mesh_yaml(&reviews, db, "first"))).await;
    let port = free_port();
    let mut proxy = start_weft_proxy(xds, port, Some(cache.path()), "cached").await;
    let first = Answer { status: 200, backend: "reviews".into(), x_route: "first".into() };
    assert_eq!(through(port, "http://reviews:9080/v2/a", false).await, first);
    let file = cache.path().join("xds-cache.bin");
    assert!(wait_for(Duration::from_secs(10), || async { file.exists() }).await, "the config is persisted");

    // Control plane and proxy both go away; the proxy comes back first.
    control.kill();
    proxy.signal(libc::SIGTERM);
    proxy.wait_exit(Duration::from_secs(20)).await;
    let mut proxy = start_weft_proxy(xds, port, Some(cache.path()), "cached").await;
    assert_eq!(through(port, "http://reviews:9080/v2/b", false).await, first, "the persisted routes serve");
    let (status, back) = tunnel_echo(port, "db:5432", b"q\n").await;
    assert!(status.contains(" 200 ") && back == b"echo:q", "{status}");
    let dump: serde_json::Value = serde_json::from_str(&admin_get(&proxy, "/config_dump").await).unwrap();
    assert_eq!(dump["xds"]["connected"], false);
    assert!(dump["xds"]["cache"]["loaded_resources"].as_u64().unwrap_or(0) > 0, "{}", dump["xds"]);

    // The control plane returns on the same address: the proxy resyncs and later changes apply.
    let control = start_control(data.path(), &xds.to_string()).await;
    let connected = wait_for(Duration::from_secs(60), || async {
        let d: serde_json::Value = serde_json::from_str(&admin_get(&proxy, "/config_dump").await).unwrap();
        d["xds"]["connected"] == true
    })
    .await;
    assert!(connected, "the proxy reconnected\n{}", proxy.output_report());
    apply(&control, &format!("{}{side}", mesh_yaml(&reviews, db, "second"))).await;
    let changed = wait_for(Duration::from_secs(20), || async {
        through(port, "http://reviews:9080/v2/c", false).await.x_route == "second"
    })
    .await;
    assert!(changed, "a change after the resync applies\n{}", proxy.output_report());

    // A damaged cache is reported and ignored; the proxy starts from the control plane.
    proxy.signal(libc::SIGTERM);
    proxy.wait_exit(Duration::from_secs(20)).await;
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    let proxy = start_weft_proxy(xds, port, Some(cache.path()), "cached").await;
    assert!(proxy.stderr_text().contains("persisted xDS config ignored"), "{}", proxy.output_report());
    let second = Answer { status: 200, backend: "reviews".into(), x_route: "second".into() };
    assert_eq!(through(port, "http://reviews:9080/v2/d", false).await, second);
    drop(control);
}
