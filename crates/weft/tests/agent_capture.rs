//! `weft agent` in capture mode, for real, in two network namespaces the test creates (root
//! only; the host's own rules are never touched): H runs the agent (its application, the
//! capture rules, its proxy as uid 1337), P runs the control plane and another service.
//!
//! The agent installs capture at start, its proxy runs as the proxy uid, an application on H
//! calling a mesh VIP is captured and reaches P through the proxy, a call from P to H's service
//! port passes H's sidecar inbound, and SIGTERM deregisters and leaves H's rules and routes
//! exactly as before.

mod common;

use std::time::Duration;

use common::{curl_backend, netns_backend, WEFT};
use weft_test::netns::{self, wait_until, Netns};
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
    let before = h.rules_and_routes(false);

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
    let _ratings = netns_backend(&p, "0.0.0.0:8080", "ratings");
    let _reviews = netns_backend(&h, "0.0.0.0:9080", "reviews");

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
    wait_until("registered with the proxy up", WAIT, || {
        last = status(&h, &status_addr);
        last["services"][0]["registration"]["state"] == "registered"
            && last["children"][0]["running"] == true
            && last["capture"]["installed"] == true
    });
    let pid = last["children"][0]["pid"].as_u64().expect("proxy pid");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proxy /proc status");
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_string();
    assert_eq!(uid_line.split_whitespace().nth(1), Some("1337"), "{uid_line}");
    assert_ne!(h.rules_and_routes(false), before, "capture rules are in place");

    // Outbound: an application on H calls the VIP; captured, routed by its sidecar to P.
    let mut r = (0, String::new());
    wait_until("captured outbound call to the VIP", WAIT, || {
        r = curl_backend(&h, "http://240.240.9.9:8080/");
        r == (200, "ratings".to_string())
    });
    // Inbound: P calls H's service port; captured into H's sidecar, then the local app.
    wait_until("captured inbound call", WAIT, || {
        curl_backend(&p, "http://10.78.0.1:9080/") == (200, "reviews".to_string())
    });
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
    assert_eq!(h.rules_and_routes(false), before, "stopping the agent leaves rules and routes as before");
    let mut cmd = p.command("curl");
    cmd.args(["-sS", "-m", "5", &format!("http://{API}/v1/instances")]);
    let list = netns::run_command(cmd, WAIT).stdout;
    assert!(list.contains("\"items\": []"), "deregistered: {list}");
}
