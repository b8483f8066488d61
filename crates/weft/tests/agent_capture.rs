//! `weft agent` in capture mode, for real, in two network namespaces the test creates (root
//! only; the host's own rules are never touched): H runs the agent (its application, the
//! capture rules, its proxy as uid 1337), P runs the control plane and another service.
//!
//! The agent installs capture at start, its proxy runs as the proxy uid, an application on H
//! calling a mesh VIP is captured and reaches P through the proxy, a call from P to H's service
//! port passes H's sidecar inbound, and SIGTERM deregisters and leaves H's rules and routes
//! exactly as before.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::WEFT;
use weft_test::netns::{self, Netns};
use weft_test::tools::{require_root, require_tool};
use weft_test::WeftProcess;

const WAIT: Duration = Duration::from_secs(30);
const API: &str = "10.78.0.2:15014";

fn prerequisites() -> bool {
    if !require_root() {
        return false;
    }
    for tool in ["ip", "curl"] {
        require_tool(tool);
    }
    assert!(
        weft_test::tools::find_on_path("nft").is_some() || weft_test::tools::find_on_path("iptables-restore").is_some(),
        "capture needs nft or iptables-restore (scripts/test.sh installs both)"
    );
    true
}

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backend(ns: &Netns, listen: &str, name: &str) -> Bg {
    let mut cmd = ns.command(WEFT);
    cmd.args(["demo-backend", "--listen", listen, "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let bg = Bg(cmd.spawn().expect("spawn demo-backend"));
    let url = format!("http://{}/", listen.replace("0.0.0.0", "127.0.0.1"));
    wait(&format!("backend {name}"), || curl(ns, &url).0 == 200);
    bg
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (status, x-backend) of one GET by curl inside `ns`; status 0 when it failed.
fn curl(ns: &Netns, url: &str) -> (u16, String) {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "-i", "-m", "5", "--connect-timeout", "3", url]);
    let out = netns::run_command(cmd, Duration::from_secs(20));
    if !out.success() {
        return (0, out.stderr);
    }
    let text = out.stdout.replace("\r\n", "\n");
    let status = text.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let backend = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-backend:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (status.unwrap_or(0), backend)
}

/// Rules and routes of `ns`, without counters and comments.
fn snapshot(ns: &Netns) -> String {
    let mut s = String::new();
    let mut cmds: Vec<&[&str]> = vec![&["ip", "-4", "route", "show", "table", "all"]];
    if weft_test::tools::find_on_path("iptables-save").is_some() {
        cmds.push(&["iptables-save"]);
    }
    if weft_test::tools::find_on_path("nft").is_some() {
        cmds.push(&["nft", "list", "ruleset"]);
    }
    for args in cmds {
        let out = ns.must(args);
        s.push_str(&format!("==== {}\n", args.join(" ")));
        for line in out.stdout.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let line = match (line.starts_with(':'), line.find(" [")) {
                (true, Some(at)) => &line[..at],
                _ => line,
            };
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

fn status(ns: &Netns, addr: &str) -> serde_json::Value {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "-m", "5", &format!("http://{addr}/status")]);
    let out = netns::run_command(cmd, Duration::from_secs(20));
    assert!(out.success(), "agent status: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("status JSON")
}

#[tokio::test]
async fn an_agent_in_capture_mode_captures_runs_the_proxy_as_its_uid_and_cleans_up() {
    if !prerequisites() {
        return;
    }
    let h = Netns::new("agent-cap-h");
    let p = Netns::new("agent-cap-p");
    netns::link(&h, "10.78.0.1/24", &p, "10.78.0.2/24");
    let before = snapshot(&h);

    let data = tempfile::tempdir().expect("data dir");
    let _control = WeftProcess::builder("ip")
        .args(p.exec_prefix())
        .arg(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data.path().join("cp"))
        .args(["--xds-listen", "10.78.0.2:15010", "--api-listen", API, "--debounce", "20ms"])
        .start()
        .await;
    let mesh = data.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ratings, namespace: shop }
spec:
  hosts: [ratings.shop.svc.cluster.local]
  addresses: [240.240.9.9]
  ports: [{ number: 8080, name: http, protocol: HTTP }]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{ address: 10.78.0.2 }]
"#,
    )
    .unwrap();
    let mut apply = p.command(WEFT);
    apply.args(["apply", "-f"]).arg(&mesh).env("WEFT_SERVER", API);
    let out = netns::run_command(apply, WAIT);
    assert!(out.success(), "weft apply: {}{}", out.stdout, out.stderr);
    let _ratings = backend(&p, "0.0.0.0:8080", "ratings");
    let _reviews = backend(&h, "0.0.0.0:9080", "reviews");

    // The proxy (uid 1337) must reach its directory under the state dir.
    let state = data.path().join("state");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut agent = {
        let b = WeftProcess::builder("ip");
        let file = b.write_file(
            "agent.yaml",
            format!(
                r#"
control: {{ api: "{API}", xds: "10.78.0.2:15010" }}
host: {{ address: 10.78.0.1, name: vm-h, namespace: shop }}
services:
  - name: reviews
    ports: [{{ name: http, number: 9080, protocol: HTTP }}]
    labels: {{ app: reviews }}
    healthCheck: {{ tcp: {{ port: 9080 }}, interval: 500ms }}
leaseTtl: 5s
heartbeat: 1s
proxy: {{ mode: capture, uid: 1337, concurrency: 1 }}
capture: {{ enabled: true }}
stateDir: "{}"
"#,
                state.display()
            ),
        );
        b.args(h.exec_prefix()).arg(WEFT).arg("agent").arg("-c").arg(file).start().await
    };
    let status_addr = agent.admin().to_string();

    // Registered, healthy, the proxy running as the proxy uid, capture installed.
    let mut last = serde_json::Value::Null;
    wait("registered with the proxy up", || {
        last = status(&h, &status_addr);
        last["services"][0]["registration"]["state"] == "registered"
            && last["children"][0]["running"] == true
            && last["capture"]["installed"] == true
    });
    let pid = last["children"][0]["pid"].as_u64().expect("proxy pid");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proxy /proc status");
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_string();
    assert_eq!(uid_line.split_whitespace().nth(1), Some("1337"), "{uid_line}");
    assert_ne!(snapshot(&h), before, "capture rules are in place");

    // Outbound: an application on H calls the VIP; captured, routed by its sidecar to P.
    let mut r = (0, String::new());
    wait("captured outbound call to the VIP", || {
        r = curl(&h, "http://240.240.9.9:8080/");
        r == (200, "ratings".to_string())
    });
    // Inbound: P calls H's service port; captured into H's sidecar, then the local app.
    wait("captured inbound call", || curl(&p, "http://10.78.0.1:9080/") == (200, "reviews".to_string()));
    let mut cmd = h.command("curl");
    cmd.args(["-sS", "-m", "5", "http://127.0.0.1:15000/stats"]);
    let stats = netns::run_command(cmd, WAIT).stdout;
    let inbound = stats
        .lines()
        .find_map(|l| l.strip_prefix("cluster.inbound|9080||.upstream_rq_total: "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(inbound.is_some_and(|n| n >= 1), "the inbound call did not pass the sidecar:\n{stats}");

    agent.signal(weft_test::SIGTERM);
    let exit = agent.wait_exit(WAIT).await;
    assert!(exit.success(), "{exit}\n{}", agent.output_report());
    assert_eq!(snapshot(&h), before, "stopping the agent leaves rules and routes as before");
    let mut cmd = p.command("curl");
    cmd.args(["-sS", "-m", "5", &format!("http://{API}/v1/instances")]);
    let list = netns::run_command(cmd, WAIT).stdout;
    assert!(list.contains("\"items\": []"), "deregistered: {list}");
}
