//! Three hosts join the mesh, for real (root only): A, B and C are network namespaces on one
//! LAN (a bridge in a namespace of its own), the control plane and the site's DNS resolver (a
//! dnsmasq that knows one non-mesh name) live in a fourth. Every host runs `weft agent` in
//! capture mode with `weft dns` and DNS capture: A with nftables rules, B with iptables, C with
//! nftables. B and C each run a `reviews` service their agent registers on port 9080 with an
//! HTTP health check; A runs only a client and a non-mesh server, and C a non-mesh server too.
//!
//! In order:
//! 1. curl on A calls `http://reviews:9080/` by name: resolv.conf's search domains expand it,
//!    the query is captured to A's `weft dns`, which answers the VIP; the connection is captured
//!    to A's sidecar and reaches B's and C's services through their sidecars' inbound listeners.
//! 2. A non-mesh name (only dnsmasq knows it) resolves through A's `weft dns` forwarding, and a
//!    non-mesh process on A reaches C's non-mesh port with no sidecar accepting the connection
//!    on either side; B reaches A's non-mesh server the same way.
//! 3. B's service is killed: its instance turns unhealthy in the control plane, and once A's
//!    sidecar has dropped the endpoint every request reaches C.
//! 4. SIGTERM to C's agent removes C's instance from the registry.
//! 5. Every agent's stop leaves its host's rules and routes exactly as they were before.

mod common;

use std::time::{Duration, Instant};

use common::{curl_backend, netns_backend, WEFT};
use weft_test::netns::{self, wait_until, Background, Netns};
use weft_test::tools::{require_root, require_tool};
use weft_test::WeftProcess;

/// Longest any single step may take to converge.
const WAIT: Duration = Duration::from_secs(30);
const CP: &str = "10.79.0.2";
const API: &str = "10.79.0.2:15014";
const XDS: &str = "10.79.0.2:15010";
/// Resolvable only through the site's resolver (dnsmasq), to C's address.
const LEGACY_NAME: &str = "legacy.corp.test";
/// The non-mesh servers' port on A and C; never captured.
const LEGACY_PORT: u16 = 7070;
const REVIEWS_PORT: u16 = 9080;
/// The proxy's admin and `weft dns`'s admin, on each host's loopback (the agent's defaults).
const PROXY_ADMIN: &str = "127.0.0.1:15000";
const DNS_ADMIN: &str = "127.0.0.1:15054";

fn prerequisites() -> bool {
    if !require_root() {
        return false;
    }
    for tool in ["ip", "curl", "dig", "dnsmasq", "nft", "iptables-restore", "iptables-save"] {
        require_tool(tool);
    }
    true
}

/// The body of `GET url` inside `ns`; panics unless it succeeds.
fn get(ns: &Netns, url: &str) -> String {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "-f", "-m", "5", url]);
    let out = netns::run_command(cmd, Duration::from_secs(20));
    assert!(out.success(), "GET {url} in {}: {}", ns.name(), out.stderr);
    out.stdout
}

/// `name: value` (the proxy's `/stats`) or `name value` (Prometheus text) from `text`.
fn value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ").or_else(|| v.strip_prefix(' '))))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a number ({e}) in\n{text}"))
}

fn proxy_stat(ns: &Netns, name: &str) -> u64 {
    value(&get(ns, &format!("http://{PROXY_ADMIN}/stats")), name)
}

fn dns_answers(ns: &Netns, result: &str) -> u64 {
    let text = get(ns, &format!("http://{DNS_ADMIN}/stats/prometheus"));
    value(&text, &format!("weft_dns_answers_total{{result=\"{result}\"}}"))
}

/// The control plane's registry: `(instance name, healthy)` of every instance.
fn instances(cp: &Netns) -> Vec<(String, bool)> {
    let text = get(cp, &format!("http://{API}/v1/instances"));
    let list: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let mut out: Vec<(String, bool)> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {text}"))
        .iter()
        .map(|i| (i["name"].as_str().unwrap_or_default().to_string(), i["instance"]["healthy"] != false))
        .collect();
    out.sort();
    out
}

/// One host of the test: its namespace, address and capture backend.
struct Host {
    ns: Netns,
    addr: &'static str,
    name: &'static str,
    capture: &'static str,
}

impl Host {
    /// The agent's file: capture mode, `weft dns` with DNS capture, and `reviews` when `serves`.
    fn agent_file(&self, state: &std::path::Path, serves: bool) -> String {
        let services = if serves {
            format!(
                r#"
  - name: reviews
    ports: [{{ name: http, number: {REVIEWS_PORT}, protocol: HTTP }}]
    labels: {{ app: reviews }}
    healthCheck: {{ http: {{ port: {REVIEWS_PORT}, path: / }}, interval: 300ms, unhealthyThreshold: 2 }}"#
            )
        } else {
            " []".to_string()
        };
        format!(
            r#"
control: {{ api: "{API}", xds: "{XDS}" }}
host: {{ address: {addr}, name: {name}, namespace: shop }}
services:{services}
leaseTtl: 5s
heartbeat: 1s
proxy: {{ mode: capture, uid: 1337, concurrency: 1 }}
dns: {{ enabled: true }}
capture: {{ enabled: true, mode: {capture}, dns: true }}
status: {{ listen: "127.0.0.1:0" }}
stateDir: "{state}"
"#,
            addr = self.addr,
            name = self.name,
            capture = self.capture,
            state = state.display(),
        )
    }

    async fn start_agent(&self, state: std::path::PathBuf, serves: bool) -> WeftProcess {
        let b = WeftProcess::builder("ip");
        let file = b.write_file("agent.yaml", self.agent_file(&state, serves));
        b.args(self.ns.exec_prefix()).arg(WEFT).arg("agent").arg("-c").arg(file).ready_timeout(WAIT).start().await
    }

    /// The agent's status document.
    fn status(&self, agent: &WeftProcess) -> serde_json::Value {
        let text = get(&self.ns, &format!("http://{}/status", agent.admin()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// `weft agent status` against the agent, run on the host.
    fn agent_status_command(&self, agent: &WeftProcess) -> netns::Output {
        let mut cmd = self.ns.command(WEFT);
        cmd.args(["agent", "status", "--agent", &agent.admin().to_string()]);
        netns::run_command(cmd, WAIT)
    }

    /// Waits until the agent's instances are registered, its proxy and dns run and capture is in.
    fn wait_up(&self, agent: &WeftProcess) {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = self.status(agent);
            let registered = last["services"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["registration"]["state"] == "registered"));
            let children =
                last["children"].as_array().is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["running"] == true));
            if registered && children && last["capture"]["installed"] == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent on {} not up within {WAIT:?}: {last:#}\n{}",
                self.name,
                agent.output_report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the agent; it must exit 0 and leave the host's rules and routes as `before`.
    async fn stop_agent(&self, mut agent: WeftProcess, before: &str) {
        agent.signal(weft_test::SIGTERM);
        let exit = agent.wait_exit(WAIT).await;
        assert!(exit.success(), "agent on {}: {exit}\n{}", self.name, agent.output_report());
        assert_eq!(
            self.ns.rules_and_routes(false),
            before,
            "{}: the agent's stop left rules or routes behind",
            self.name
        );
    }
}

/// The site's resolver: dnsmasq on CP:53 inside `ns`, knowing only `LEGACY_NAME` (→ C), logging
/// every question to `log`.
fn dnsmasq(ns: &Netns, dir: &std::path::Path, log: &std::path::Path) -> Background {
    let pid_file = dir.join("dnsmasq.pid");
    let bg = ns.spawn_with_stderr(
        &[
            require_tool("dnsmasq").to_str().expect("dnsmasq path"),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={CP}"),
            "--port=53",
            "--user=root",
            "--log-queries",
            "--log-facility=-",
            &format!("--address=/{LEGACY_NAME}/10.79.0.13"),
            &format!("--pid-file={}", pid_file.display()),
        ],
        std::fs::File::create(log).expect("dnsmasq log").into(),
    );
    wait_until("dnsmasq", WAIT, || {
        let out = ns.run(&["dig", "+short", "+time=1", "+tries=1", &format!("@{CP}"), LEGACY_NAME]);
        out.stdout.trim() == "10.79.0.13"
    });
    bg
}

#[tokio::test]
async fn three_hosts_join_the_mesh_by_name_with_capture_and_dns() {
    if !prerequisites() {
        return;
    }
    let started = Instant::now();
    let lan = Netns::new("hosts-lan");
    let cp = Netns::new("hosts-cp");
    let a = Host { ns: Netns::new("hosts-a"), addr: "10.79.0.11", name: "host-a", capture: "nftables" };
    let b = Host { ns: Netns::new("hosts-b"), addr: "10.79.0.12", name: "host-b", capture: "iptables" };
    let c = Host { ns: Netns::new("hosts-c"), addr: "10.79.0.13", name: "host-c", capture: "nftables" };
    netns::bridge(
        &lan,
        &[(&cp, "10.79.0.2/24"), (&a.ns, "10.79.0.11/24"), (&b.ns, "10.79.0.12/24"), (&c.ns, "10.79.0.13/24")],
    );
    let before: Vec<String> = [&a, &b, &c].iter().map(|h| h.ns.rules_and_routes(false)).collect();
    // Each host asks the site's resolver and expands short names within the mesh namespace.
    for h in [&a, &b, &c] {
        h.ns.etc_file(
            "resolv.conf",
            &format!("nameserver {CP}\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions timeout:2 attempts:2\n"),
        );
    }

    let data = tempfile::tempdir().expect("data dir");
    // The proxies and dns (uid 1337) must reach their directories under the state dirs.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dns_log = data.path().join("dnsmasq.log");
    let _dnsmasq = dnsmasq(&cp, data.path(), &dns_log);
    let _control = WeftProcess::builder("ip")
        .args(cp.exec_prefix())
        .arg(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data.path().join("cp"))
        .args(["--xds-listen", XDS, "--api-listen", API, "--debounce", "20ms"])
        .start()
        .await;

    let mut reviews_b = Some(netns_backend(&b.ns, &format!("0.0.0.0:{REVIEWS_PORT}"), "reviews-b"));
    let _reviews_c = netns_backend(&c.ns, &format!("0.0.0.0:{REVIEWS_PORT}"), "reviews-c");
    let _legacy_a = netns_backend(&a.ns, &format!("0.0.0.0:{LEGACY_PORT}"), "legacy-a");
    let _legacy_c = netns_backend(&c.ns, &format!("0.0.0.0:{LEGACY_PORT}"), "legacy-c");

    let (agent_a, agent_b, agent_c) = tokio::join!(
        a.start_agent(data.path().join("state-a"), false),
        b.start_agent(data.path().join("state-b"), true),
        c.start_agent(data.path().join("state-c"), true),
    );
    for ((h, agent), before) in [(&a, &agent_a), (&b, &agent_b), (&c, &agent_c)].into_iter().zip(&before) {
        h.wait_up(agent);
        assert_ne!(&h.ns.rules_and_routes(false), before, "{}: capture rules are in place", h.name);
    }
    assert_eq!(instances(&cp), [("reviews-host-b".to_string(), true), ("reviews-host-c".to_string(), true)]);
    let out = a.agent_status_command(&agent_a);
    assert!(out.success() && out.stdout.contains("no services: nothing is registered"), "{}{}", out.stdout, out.stderr);
    eprintln!("hosts: three agents up after {:?}", started.elapsed());

    // 1. By name from A, through A's sidecar and the serving host's sidecar, to B and C.
    let reviews = format!("http://reviews:{REVIEWS_PORT}/");
    let mut r = (0, String::new());
    wait_until("reviews by name from A", WAIT, || {
        r = curl_backend(&a.ns, &reviews);
        r.0 == 200
    });
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(r.1.clone());
    for _ in 0..40 {
        if seen.len() == 2 {
            break;
        }
        let r = curl_backend(&a.ns, &reviews);
        assert_eq!(r.0, 200, "reviews by name from A: {}", r.1);
        seen.insert(r.1);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["reviews-b", "reviews-c"], "both hosts serve reviews");
    let vip = a.ns.run(&["dig", "+short", "+search", "+time=2", "+tries=1", "reviews"]).stdout.trim().to_string();
    assert!(vip.starts_with("240.240."), "reviews resolves to a mesh VIP on A: {vip:?}");
    assert!(dns_answers(&a.ns, "mesh") >= 1, "A's weft dns answered the mesh name");
    let outbound = format!("cluster.outbound|{REVIEWS_PORT}||reviews.shop.svc.cluster.local.upstream_rq_total");
    assert!(proxy_stat(&a.ns, &outbound) >= 2, "the calls passed A's sidecar");
    for h in [&b, &c] {
        let inbound = proxy_stat(&h.ns, &format!("cluster.inbound|{REVIEWS_PORT}||.upstream_rq_total"));
        assert!(inbound >= 1, "the calls passed {}'s sidecar inbound", h.name);
    }
    eprintln!("hosts: 1. by name through both sidecars after {:?}", started.elapsed());

    // 2. A non-mesh name and non-mesh ports: forwarded by weft dns, never captured.
    let accepted = |h: &Host| proxy_stat(&h.ns, "server.downstream_cx_total");
    let (forwarded, cx_a, cx_b, cx_c) = (dns_answers(&a.ns, "forwarded"), accepted(&a), accepted(&b), accepted(&c));
    let r = curl_backend(&a.ns, &format!("http://{LEGACY_NAME}:{LEGACY_PORT}/"));
    assert_eq!(r, (200, "legacy-c".to_string()), "a non-mesh process on A reaches C's non-mesh port by name");
    let r = curl_backend(&b.ns, &format!("http://{}:{LEGACY_PORT}/", a.addr));
    assert_eq!(r, (200, "legacy-a".to_string()), "B reaches A's non-mesh server");
    assert!(dns_answers(&a.ns, "forwarded") > forwarded, "A's weft dns forwarded the non-mesh name");
    let log = std::fs::read_to_string(&dns_log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains(&format!("{LEGACY_NAME} from {}", a.addr))),
        "the site's resolver answered A's question:\n{log}"
    );
    assert_eq!(
        (accepted(&a), accepted(&b), accepted(&c)),
        (cx_a, cx_b, cx_c),
        "a sidecar accepted a non-mesh connection (A, B, C)"
    );
    eprintln!("hosts: 2. non-mesh traffic untouched after {:?}", started.elapsed());

    // 3. B's service dies: B's instance turns unhealthy, and A's sidecar sends everything to C.
    drop(reviews_b.take());
    wait_until("B's instance unhealthy in the registry", WAIT, || {
        instances(&cp) == [("reviews-host-b".to_string(), false), ("reviews-host-c".to_string(), true)]
    });
    let out = b.agent_status_command(&agent_b);
    assert_eq!(out.status.code(), Some(1), "`weft agent status` on B fails while it is unhealthy:\n{}", out.stdout);
    assert!(out.stdout.contains("reviews-host-b: unhealthy"), "{}", out.stdout);
    let cluster = format!("outbound|{REVIEWS_PORT}||reviews.shop.svc.cluster.local::");
    wait_until("A's sidecar has only C's endpoint", WAIT, || {
        let text = get(&a.ns, &format!("http://{PROXY_ADMIN}/clusters"));
        let hosts: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&cluster))
            .filter_map(|l| l.split("::").next())
            .filter(|h| *h != "panic_mode")
            .collect();
        hosts.into_iter().collect::<Vec<_>>() == [format!("{}:{REVIEWS_PORT}", c.addr)]
    });
    for i in 0..10 {
        let r = curl_backend(&a.ns, &reviews);
        assert_eq!(r, (200, "reviews-c".to_string()), "request {i} after B's service died");
    }
    eprintln!("hosts: 3. B unhealthy, traffic on C after {:?}", started.elapsed());

    // 4. C's agent stops: C's instance is deregistered (not left to its lease).
    c.stop_agent(agent_c, &before[2]).await;
    assert_eq!(instances(&cp), [("reviews-host-b".to_string(), false)], "C deregistered on SIGTERM");
    eprintln!("hosts: 4. C deregistered after {:?}", started.elapsed());

    // 5. The other agents stop: every host's rules and routes are as before.
    b.stop_agent(agent_b, &before[1]).await;
    a.stop_agent(agent_a, &before[0]).await;
    assert_eq!(instances(&cp), [], "every instance deregistered");
    eprintln!("hosts: 5. every host clean after {:?}", started.elapsed());
}
