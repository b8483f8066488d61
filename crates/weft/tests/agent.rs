//! `weft agent` end to end with real processes on loopback (no root): `weft control`, a
//! `weft demo-backend` standing for the host's application, and the agent with its supervised
//! bind-mode `weft proxy`. Each test has its own 127.0.6x.0/24 addresses: `.1` is where the
//! sidecar's bind listener is, `.2` the host's address (backend and instance).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use weft_test::{http_get, http_request, wait_for, HttpVersion, ReadyInfo, WeftProcess};

const WAIT: Duration = Duration::from_secs(30);
const HOST: &str = "reviews.shop.svc.cluster.local";

/// A port on `ip` where nothing listens (bound, then released).
fn free_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).expect("bind a throwaway port");
    l.local_addr().unwrap().port()
}

/// `weft demo-backend`, killed when dropped.
struct Backend {
    child: Child,
}

impl Backend {
    async fn start(addr: SocketAddr) -> Backend {
        let child = Command::new(WEFT)
            .args(["demo-backend", "--listen", &addr.to_string(), "--name", "reviews-vm"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weft demo-backend");
        let up = wait_for(WAIT, || async { tokio::net::TcpStream::connect(addr).await.is_ok() }).await;
        assert!(up, "demo-backend on {addr} did not listen within {WAIT:?}");
        Backend { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn start_control(dir: &Path, api: &str, xds: &str) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(dir)
        .args(["--xds-listen", xds, "--api-listen", api, "--debounce", "20ms"])
        .start()
        .await
}

/// The namespace's Sidecar: bind mode on `bind:9080`, everything of the namespace imported.
async fn apply_sidecar(api: SocketAddr, bind: &str) {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: default, namespace: shop }}
spec:
  egress:
    - port: {{ number: 9080, protocol: HTTP, name: http }}
      bind: {bind}
      captureMode: NONE
      hosts: ["./*"]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(WEFT);
    cmd.args(["apply", "-f", file.to_str().unwrap()]).env("WEFT_SERVER", api.to_string());
    let out = run_blocking(cmd, WAIT).await;
    assert!(out.status.success(), "weft apply: {}\n{}", out.stdout, out.stderr);
}

struct Net {
    bind: String,
    host: String,
}

impl Net {
    fn new(third: u8) -> Net {
        Net { bind: format!("127.0.{third}.1"), host: format!("127.0.{third}.2") }
    }
}

/// The agent's `proxy:` section for a bind-mode sidecar.
const BIND_PROXY: &str = r#"{ mode: bind, admin: "127.0.0.1:0", concurrency: 1 }"#;

fn agent_file(api: SocketAddr, xds: SocketAddr, net: &Net, backend_port: u16, state: &Path) -> String {
    agent_file_with(api, xds, net, backend_port, state, BIND_PROXY)
}

/// One host on loopback: a control plane with the namespace's Sidecar applied, the host's
/// application on a free port of the host's address, and the agent registering it.
struct Rig {
    net: Net,
    control: WeftProcess,
    api: SocketAddr,
    /// The application's address.
    addr: SocketAddr,
    backend: Backend,
    agent: WeftProcess,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(third: u8) -> Rig {
        Rig::start_with(third, BIND_PROXY).await
    }

    async fn start_with(third: u8, proxy: &str) -> Rig {
        let net = Net::new(third);
        let dir = tempfile::tempdir().unwrap();
        let control = start_control(&dir.path().join("cp"), "127.0.0.1:0", "127.0.0.1:0").await;
        let (api, xds) = (control.listener("api"), control.listener("xds"));
        apply_sidecar(api, &net.bind).await;
        let port = free_port(&net.host);
        let addr: SocketAddr = format!("{}:{port}", net.host).parse().unwrap();
        let backend = Backend::start(addr).await;
        let agent = start_agent(&agent_file_with(api, xds, &net, port, &dir.path().join("state"), proxy)).await;
        Rig { net, control, api, addr, backend, agent, _dir: dir }
    }
}

fn agent_file_with(
    api: SocketAddr,
    xds: SocketAddr,
    net: &Net,
    backend_port: u16,
    state: &Path,
    proxy: &str,
) -> String {
    format!(
        r#"
control: {{ api: "{api}", xds: "{xds}" }}
host: {{ address: {host}, name: vm-1, namespace: shop }}
services:
  - name: reviews
    ports: [{{ name: http, number: 9080, protocol: HTTP, targetPort: {backend_port} }}]
    labels: {{ app: reviews }}
    healthCheck: {{ http: {{ port: {backend_port}, path: /health }}, interval: 200ms, timeout: 200ms, unhealthyThreshold: 2 }}
leaseTtl: 3s
heartbeat: 500ms
proxy: {proxy}
status: {{ listen: "127.0.0.1:0" }}
stateDir: "{state}"
"#,
        host = net.host,
        state = state.display()
    )
}

async fn start_agent(yaml: &str) -> WeftProcess {
    let b = WeftProcess::builder(WEFT);
    let file = b.write_file("agent.yaml", yaml);
    b.arg("agent").arg("-c").arg(file).start().await
}

async fn agent_status(agent: &WeftProcess) -> serde_json::Value {
    let r = http_get(agent.admin(), "/status", &[]).await.expect("GET /status");
    assert_eq!(r.status, 200);
    r.json()
}

/// Polls the agent's status until `f` holds.
async fn wait_status(agent: &WeftProcess, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = agent_status(agent).await;
        if f(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}; status: {s:#}\n{}",
            agent.output_report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn instances(api: SocketAddr) -> serde_json::Value {
    let r = http_get(api, "/v1/instances", &[]).await.expect("GET /v1/instances");
    assert_eq!(r.status, 200);
    r.json()
}

async fn wait_instances(api: SocketAddr, what: &str, f: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list = instances(api).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if f(&items) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {WAIT:?}; instances: {list:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The supervised proxy's ready file (written once it has its whole config from xDS).
async fn proxy_ready(agent: &WeftProcess) -> ReadyInfo {
    let path = PathBuf::from(agent.ready().raw["proxy_ready_file"].as_str().expect("proxy_ready_file"));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(info) = std::fs::read_to_string(&path).ok().and_then(|t| ReadyInfo::parse(&t).ok()) {
            return info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the supervised proxy did not become ready within {WAIT:?}\n{}",
            agent.output_report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_reviews(bind: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = format!("{bind}:9080").parse().unwrap();
    let r = http_request(addr, HttpVersion::Http1, http::Method::GET, "/", &[("host", HOST)], "").await.ok()?;
    Some((r.status.as_u16(), r.header("x-backend").unwrap_or("").to_string()))
}

async fn wait_reviews(bind: &str, what: &str, f: impl Fn(Option<(u16, String)>) -> bool, agent: &WeftProcess) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = get_reviews(bind).await;
        if f(r.clone()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}; last answer {r:?}\n{}",
            agent.output_report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn served_by_backend(r: Option<(u16, String)>) -> bool {
    r.is_some_and(|(s, b)| s == 200 && b == "reviews-vm")
}

fn weft_agent_status(agent: &WeftProcess) -> Command {
    let mut cmd = Command::new(WEFT);
    cmd.args(["agent", "status", "--agent", &agent.admin().to_string()]);
    cmd
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test]
async fn a_registered_service_is_reachable_through_the_sidecar_and_sigterm_deregisters_it() {
    let Rig { _dir, net, api, mut agent, control: _control, backend: _backend, .. } = Rig::start(61).await;

    wait_instances(api, "registered", |items| items.len() == 1 && items[0]["instance"]["healthy"] == true).await;
    let proxy = proxy_ready(&agent).await;
    assert!(http_get(proxy.admin, "/ready", &[]).await.is_ok_and(|r| r.status == 200), "the proxy's admin is up");
    wait_reviews(&net.bind, "a request through the sidecar", served_by_backend, &agent).await;

    let out = run_blocking(weft_agent_status(&agent), WAIT).await;
    assert!(out.status.success(), "weft agent status:\n{}\n{}", out.stdout, out.stderr);
    for want in ["reviews.shop", "reviews-vm-1", "registered", "healthy", "proxy", "running", "no problems"] {
        assert!(out.stdout.contains(want), "{want:?} not in\n{}", out.stdout);
    }
    let status = agent_status(&agent).await;
    let proxy_pid = status["children"][0]["pid"].as_u64().expect("proxy pid");

    agent.signal(weft_test::SIGTERM);
    let exit = agent.wait_exit(WAIT).await;
    assert!(exit.success(), "agent exit {exit}\n{}", agent.output_report());
    assert_eq!(instances(api).await["items"], serde_json::json!([]), "deregistered before exiting");
    assert!(!pid_alive(proxy_pid), "the proxy stopped with the agent");
    assert!(agent.stderr_text().contains("deregistered"), "{}", agent.output_report());
}

#[tokio::test]
async fn a_failing_health_check_takes_the_instance_out_of_eds_until_it_passes_again() {
    let Rig { _dir, net, api, addr, mut backend, agent, control: _control, .. } = Rig::start(62).await;
    proxy_ready(&agent).await;
    wait_reviews(&net.bind, "served while healthy", served_by_backend, &agent).await;
    let node = format!("sidecar~{}~vm-1.shop~shop.svc.cluster.local", net.host);
    let endpoints = |api: SocketAddr, node: String| async move {
        let path = format!("/v1/proxies/{node}/config?type=endpoints");
        let r = http_get(api, &path, &[]).await.expect("proxy-config endpoints");
        r.text()
    };
    // (The proxy may serve before the server has read its ACK: wait for the ACKed view.)
    let ok = wait_for(WAIT, || {
        let (api, node) = (api, node.clone());
        async move { endpoints(api, node).await.contains(&addr.to_string()) }
    })
    .await;
    assert!(ok, "the instance is not in the proxy's EDS: {}", endpoints(api, node.clone()).await);

    backend.stop();
    wait_status(&agent, "unhealthy", |s| s["services"][0]["health"]["healthy"] == false).await;
    wait_instances(api, "reported unhealthy", |items| items.len() == 1 && items[0]["instance"]["healthy"] == false)
        .await;
    let ok = wait_for(WAIT, || {
        let (api, node) = (api, node.clone());
        async move { !endpoints(api, node).await.contains(&addr.to_string()) }
    })
    .await;
    assert!(ok, "the unhealthy instance is still in the proxy's EDS: {}", endpoints(api, node.clone()).await);
    wait_reviews(&net.bind, "no traffic to the unhealthy instance", |r| r.is_some_and(|(s, _)| s == 503), &agent).await;
    let out = run_blocking(weft_agent_status(&agent), WAIT).await;
    assert_eq!(out.status.code(), Some(1), "weft agent status must fail while unhealthy:\n{}", out.stdout);
    assert!(out.stdout.contains("reviews-vm-1: unhealthy"), "{}", out.stdout);

    let _backend = Backend::start(addr).await;
    wait_status(&agent, "healthy again", |s| s["services"][0]["health"]["healthy"] == true).await;
    wait_reviews(&net.bind, "served again", served_by_backend, &agent).await;
    let ok = wait_for(WAIT, || {
        let (api, node) = (api, node.clone());
        async move { endpoints(api, node).await.contains(&addr.to_string()) }
    })
    .await;
    assert!(ok, "the healthy instance is back in the proxy's EDS");
}

#[tokio::test]
async fn a_killed_agent_s_instance_disappears_when_its_lease_expires() {
    let Rig { _dir, api, control, mut agent, net: _net, backend: _backend, .. } = Rig::start(63).await;
    wait_instances(api, "registered", |items| items.len() == 1).await;
    let s = wait_status(&agent, "proxy started", |s| s["children"][0]["pid"].is_u64()).await;
    let proxy_pid = s["children"][0]["pid"].as_u64().unwrap();

    agent.kill(); // SIGKILL: no deregistration
    assert_eq!(instances(api).await["items"].as_array().map(Vec::len), Some(1), "still there right after");
    wait_instances(api, "gone after the lease (3s)", |items| items.is_empty()).await;
    let gone = wait_for(WAIT, || async { !pid_alive(proxy_pid) }).await;
    assert!(gone, "the proxy outlived its agent");
    assert!(control.stderr_text().contains("lease expired"), "{}", control.output_report());
}

#[tokio::test]
async fn a_bad_file_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        "control: {api: 127.0.0.1:15014, xds: 127.0.0.1:15010}\nhost: {address: 127.0.64.2, name: vm-1}\nservices:\n  - name: reviews\n    ports: [{name: http, number: 9080, protocol: htp}]\n  - name: ratings\n    ports: [{name: http, number: 9080}]\nheartbeat: 1 minute\n",
    )
    .unwrap();
    let mut cmd = Command::new(WEFT);
    cmd.args(["agent", "-c"]).arg(&file);
    let out = run_blocking(cmd, WAIT).await;
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let f = file.display();
    for want in [
        format!("{f}: heartbeat: invalid duration \"1 minute\""),
        format!("{f}: services[0].ports[0].protocol: unknown value \"htp\" (expected one of HTTP, HTTP2,"),
        format!("{f}: services[1].ports[0].number: port 9080 is already used by services[0].ports[0]"),
    ] {
        assert!(out.stderr.contains(&want), "{want:?} not in\n{}", out.stderr);
    }

    std::fs::write(
        &file,
        "control: {api: 127.0.0.1:15014, xds: 127.0.0.1:15010}\nhost: {address: 127.0.64.2, name: vm-1}\nservices: [{name: reviews, ports: [{name: http, number: 9080}]}]\n",
    )
    .unwrap();
    let mut cmd = Command::new(WEFT);
    cmd.args(["agent", "--check", "-c"]).arg(&file);
    let out = run_blocking(cmd, WAIT).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("service reviews.default.svc.cluster.local as instance reviews-vm-1"),
        "{}",
        out.stdout
    );

    let mut cmd = Command::new(WEFT);
    cmd.args(["agent", "-c"]).arg(dir.path().join("missing.yaml"));
    let out = run_blocking(cmd, WAIT).await;
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("missing.yaml: cannot read"), "{}", out.stderr);
}

#[tokio::test]
async fn the_agent_keeps_retrying_while_the_control_plane_is_down_and_registers_when_it_comes_up() {
    let net = Net::new(65);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let xds: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let port = free_port(&net.host);
    let _backend = Backend::start(format!("{}:{port}", net.host).parse().unwrap()).await;
    let agent = start_agent(&agent_file(api, xds, &net, port, &dir.path().join("state"))).await;
    let s = wait_status(&agent, "failed attempts", |s| {
        s["services"][0]["registration"]["consecutive_failures"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    assert_eq!(s["services"][0]["registration"]["state"], "registering");
    let out = run_blocking(weft_agent_status(&agent), WAIT).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("reviews-vm-1: not registered"), "{}", out.stdout);
    // The proxy waits for its config, it does not crash.
    assert_eq!(s["children"][0]["restarts"], 0, "{s:#}");

    let control = start_control(&dir.path().join("cp"), &api.to_string(), &xds.to_string()).await;
    apply_sidecar(control.listener("api"), &net.bind).await;
    wait_instances(api, "registered once the control plane is up", |items| items.len() == 1).await;
    proxy_ready(&agent).await;
    wait_reviews(&net.bind, "served", served_by_backend, &agent).await;
    let s = agent_status(&agent).await;
    assert_eq!(s["problems"], serde_json::json!([]), "{s:#}");
}

#[tokio::test]
async fn a_killed_proxy_is_restarted() {
    let Rig { _dir, net, agent, control: _control, api: _api, backend: _backend, .. } = Rig::start(66).await;
    proxy_ready(&agent).await;
    wait_reviews(&net.bind, "served", served_by_backend, &agent).await;
    let s = agent_status(&agent).await;
    let pid = s["children"][0]["pid"].as_u64().expect("proxy pid");

    let rc = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
    assert!(rc.success());
    let s = wait_status(&agent, "restarted", |s| {
        let c = &s["children"][0];
        c["restarts"] == 1 && c["running"] == true && c["pid"].as_u64().is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(s["children"][0]["last_exit"], "killed by signal 9");
    wait_reviews(&net.bind, "served by the new proxy", served_by_backend, &agent).await;
    assert!(agent.stderr_text().contains("exited; restarting"), "{}", agent.output_report());
}

#[tokio::test]
async fn a_proxy_restarted_while_the_control_plane_is_down_serves_its_last_config() {
    let Rig { _dir, net, mut control, agent, api: _api, backend: _backend, .. } = Rig::start(67).await;
    proxy_ready(&agent).await;
    wait_reviews(&net.bind, "served", served_by_backend, &agent).await;
    let pid = agent_status(&agent).await["children"][0]["pid"].as_u64().expect("proxy pid");

    control.kill();
    wait_status(&agent, "renewals failing", |s| {
        s["services"][0]["registration"]["consecutive_failures"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let rc = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
    assert!(rc.success());
    wait_status(&agent, "proxy restarted", |s| {
        s["children"][0]["restarts"] == 1 && s["children"][0]["running"] == true
    })
    .await;
    // No control plane: the new proxy serves what it last applied (its --xds-cache).
    wait_reviews(&net.bind, "served from the persisted config", served_by_backend, &agent).await;
}

#[tokio::test]
async fn in_http_proxy_mode_applications_reach_the_service_through_the_proxy_port() {
    let proxy_port = free_port("127.0.0.1");
    let proxy = format!(r#"{{ mode: http-proxy, httpProxyPort: {proxy_port}, admin: "127.0.0.1:0", concurrency: 1 }}"#);
    let Rig { _dir, agent, net: _net, control: _control, api: _api, backend: _backend, .. } =
        Rig::start_with(68, &proxy).await;
    proxy_ready(&agent).await;
    let s = agent_status(&agent).await;
    assert_eq!(s["capture"]["mode"], "http-proxy");
    let env = s["capture"]["detail"].to_string();
    assert!(env.contains(&format!("HTTP_PROXY=http://127.0.0.1:{proxy_port}")), "{env}");

    let curl = || {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-x"])
            .arg(format!("http://127.0.0.1:{proxy_port}"))
            .arg(format!("http://{HOST}:9080/"));
        cmd
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = run_blocking(curl(), WAIT).await;
        if out.stdout.trim() == "200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "curl -x through the HTTP-proxy port: {} {}\n{}",
            out.stdout,
            out.stderr,
            agent.output_report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
