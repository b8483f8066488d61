//! `weft capture` for real, in network namespaces the tests create (root only; never on the
//! host's own rules):
//!
//! * install then uninstall leaves `iptables-save`, `ip6tables-save`, `nft list ruleset` and the
//!   routes exactly as before, in both modes, with and without pre-existing rules; a second
//!   install changes nothing; switching modes replaces;
//! * missing tools, missing privilege and a failing half of an install change nothing;
//! * traffic: a `weft proxy` running as uid 1337 behind the rules — a client calling a VIP is
//!   captured and reaches the backend through the proxy, non-captured ports and excluded uids
//!   pass untouched, the proxy's own upstream traffic is not captured again, inbound to a
//!   service port goes through 15006; over IPv4 and IPv6, with iptables and with nftables;
//! * the same with the control plane: `weft control` with a ServiceEntry, `weft proxy --xds`;
//! * DNS capture to a resolver on 127.0.0.1:15053, with exempt uids.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{netns_backend, WEFT};
use weft_test::netns::{self, wait_until, Background, Netns, Output};
use weft_test::tools::{require_root, require_tool};
use weft_test::WeftProcess;

/// The proxy's uid (the default `--proxy-uid`).
const PROXY_UID: &str = "1337";
/// Longest a process in a namespace may take to answer.
const WAIT: Duration = Duration::from_secs(15);
/// A uid standing for a non-mesh service (`--exclude-uid`).
const OTHER_UID: &str = "2000";

/// Root, plus the tools these tests use; false when root tests are skipped.
fn prerequisites() -> bool {
    if !require_root() {
        return false;
    }
    for tool in ["ip", "iptables-save", "iptables-restore", "ip6tables-save", "nft", "curl", "setpriv"] {
        require_tool(tool);
    }
    true
}

fn capture(ns: &Netns, args: &[&str]) -> Output {
    let mut cmd = ns.command(WEFT);
    cmd.arg("capture").args(args);
    netns::run_command(cmd, Duration::from_secs(60))
}

fn capture_ok(ns: &Netns, args: &[&str]) -> Output {
    let out = capture(ns, args);
    assert!(out.success(), "weft capture {} failed ({}):\n{}{}", args.join(" "), out.status, out.stdout, out.stderr);
    out
}

/// Rules a host may already have: the capture must leave them exactly as they are.
fn add_host_rules(ns: &Netns) {
    ns.must(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
    ns.must(&["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.88.0.0/16", "-j", "MASQUERADE"]);
    ns.must(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-d",
        "10.66.0.1",
        "-p",
        "tcp",
        "-j",
        "DNAT",
        "--to",
        "10.66.0.2",
    ]);
    ns.must(&["ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
    let mut nft = ns.command("nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped());
    let script = "table inet site {\n chain input {\n  type filter hook input priority 0; policy accept;\n  \
                  tcp dport 8443 counter accept\n }\n}\n";
    pipe_to(nft, script);
    ns.must(&["ip", "route", "add", "local", "10.55.0.0/24", "dev", "lo", "table", "local"]);
}

fn pipe_to(mut cmd: Command, input: &str) {
    use std::io::Write;
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = wait_child(child, Duration::from_secs(30));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait_child(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("output")
}

// ---- flags and dry runs (no changes anywhere) ----------------------------------------------------

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    // --dry-run never touches the system, so these are safe to run anywhere.
    let cases: [(&[&str], &str); 9] = [
        (&["--vip-cidr", "10.0.0.0/33"], "--vip-cidr"),
        (&["--vip-cidr", "0.0.0.0/0"], "--vip-cidr: 0.0.0.0/0 is wider than /8"),
        (&["--outbound-ports", "80,0"], "--outbound-ports"),
        (&["--inbound-ports", "9080,15006"], "--inbound-ports: 15006 is a capture port"),
        (&["--mode", "ebtables"], "--mode"),
        (&["--exclude-uid", "www-data"], "--exclude-uid: \"www-data\" is not a numeric id"),
        (&["--outbound-cidr", "fd00::/64"], "--outbound-cidr: fd00::/64 is IPv6; IPv6 rules need ipv6 (--ipv6)"),
        (&["--proxy-uid=-1"], "--proxy-uid: \"-1\" is not a numeric id"),
        (&["--dns", "--dns-port", "15001"], "--dns-port: must differ"),
    ];
    for (args, want) in cases {
        let out = Command::new(WEFT).args(["capture", "install", "--dry-run"]).args(args).output().expect("run weft");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: want {want:?} in {stderr}");
    }
}

#[test]
fn dry_run_prints_the_rules() {
    let cases: [(&str, &[&str]); 2] = [
        (
            "iptables",
            &[
                "*nat\n",
                ":WEFT_OUTPUT - [0:0]\n",
                "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN\n",
                "-A WEFT_OUTPUT -d 240.240.0.0/16 -j WEFT_REDIRECT\n",
                "-A WEFT_INBOUND -p tcp --dport 9080 -j WEFT_IN_REDIRECT\n",
                "-A OUTPUT -j WEFT_OUTPUT\n",
                "# ip6tables-restore --noflush\n",
                "-A WEFT_OUTPUT -d ::1/128 -j RETURN\n",
            ],
        ),
        (
            "nftables",
            &[
                "table inet weft {\n",
                "meta skuid 1337 return\n",
                "ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :15001\n",
                "tcp dport 9080 redirect to :15006\n",
            ],
        ),
    ];
    for (mode, wants) in cases {
        let out = Command::new(WEFT)
            .args(["capture", "install", "--dry-run", "--mode", mode, "--inbound-ports", "9080", "--ipv6"])
            .output()
            .expect("run weft");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        for want in wants {
            assert!(stdout.contains(want), "{mode}: want {want:?} in\n{stdout}");
        }
    }
}

// ---- install / uninstall leave the host as it was ------------------------------------------------

fn install_args(mode: &str, extra: &[&'static str]) -> Vec<String> {
    let mut args: Vec<String> = ["install", "--mode", mode, "--inbound-ports", "9080,9090", "--outbound-ports", "8080"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--exclude-uid", OTHER_UID, "--exclude-cidr", "10.77.0.9", "--dns"].iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Install twice, check status, uninstall: the snapshot after the second install equals the one
/// after the first, and after uninstall equals the one before.
fn roundtrip(ns: &Netns, mode: &str, extra: &[&'static str]) {
    let before = ns.rules_and_routes(true);
    let st = capture(ns, &["status"]);
    assert_eq!(st.status.code(), Some(3), "status before install: {}{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("capture: not installed"), "{}", st.stdout);

    let args = install_args(mode, extra);
    let out = capture_ok(ns, &strs(&args));
    assert!(out.stdout.contains(&format!("capture installed ({mode}")), "{}", out.stdout);
    let first = ns.rules_and_routes(true);
    assert_ne!(first, before, "{mode}: install changed nothing");
    let st = capture_ok(ns, &["status"]);
    assert!(st.stdout.contains(&format!("mode: {mode}")), "{}", st.stdout);
    assert!(st.stdout.contains("route: local 240.240.0.0/16 dev lo table local proto 87"), "{}", st.stdout);

    let out = capture_ok(ns, &strs(&args));
    assert!(out.stdout.contains(&format!("capture replaced ({mode}")), "{}", out.stdout);
    assert_eq!(ns.rules_and_routes(true), first, "{mode}: a second install changed the rules");

    let out = capture_ok(ns, &["uninstall"]);
    assert!(out.stdout.contains("removed: route local 240.240.0.0/16"), "{}", out.stdout);
    assert_eq!(ns.rules_and_routes(true), before, "{mode}: uninstall did not restore the rules exactly");
    let st = capture(ns, &["status"]);
    assert_eq!(st.status.code(), Some(3), "status after uninstall: {}", st.stdout);
    let out = capture_ok(ns, &["uninstall"]);
    assert!(out.stdout.contains("nothing installed"), "{}", out.stdout);
}

#[test]
fn iptables_install_is_idempotent_and_uninstall_restores_exactly() {
    if !prerequisites() {
        return;
    }
    let fresh = Netns::new("cap-ipt-fresh");
    roundtrip(&fresh, "iptables", &[]);
    roundtrip(&fresh, "iptables", &["--ipv6", "--vip-cidr", "240.240.0.0/16,fd00:240::/64"]);
    let busy = Netns::new("cap-ipt-busy");
    add_host_rules(&busy);
    roundtrip(&busy, "iptables", &[]);
    roundtrip(&busy, "iptables", &["--ipv6", "--vip-cidr", "240.240.0.0/16,fd00:240::/64"]);
}

#[test]
fn nftables_install_is_idempotent_and_uninstall_restores_exactly() {
    if !prerequisites() {
        return;
    }
    let fresh = Netns::new("cap-nft-fresh");
    roundtrip(&fresh, "nftables", &[]);
    roundtrip(&fresh, "nftables", &["--ipv6", "--vip-cidr", "240.240.0.0/16,fd00:240::/64"]);
    let busy = Netns::new("cap-nft-busy");
    add_host_rules(&busy);
    roundtrip(&busy, "nftables", &[]);
}

#[test]
fn switching_modes_replaces_the_other_modes_rules() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("cap-switch");
    add_host_rules(&ns);
    let before = ns.rules_and_routes(true);
    capture_ok(&ns, &strs(&install_args("iptables", &[])));
    capture_ok(&ns, &strs(&install_args("nftables", &[])));
    let st = capture_ok(&ns, &["status"]);
    assert!(st.stdout.contains("mode: nftables (table ip weft)"), "{}", st.stdout);
    assert!(!st.stdout.contains("mode: iptables"), "iptables rules left behind:\n{}", st.stdout);
    capture_ok(&ns, &strs(&install_args("iptables", &["--no-vip-route"])));
    let st = capture_ok(&ns, &["status"]);
    assert!(!st.stdout.contains("mode: nftables"), "nftables table left behind:\n{}", st.stdout);
    assert!(st.stdout.contains("route: none"), "a route no longer wanted was kept:\n{}", st.stdout);
    capture_ok(&ns, &["uninstall"]);
    assert_eq!(ns.rules_and_routes(true), before);
}

// ---- failures change nothing ---------------------------------------------------------------------

/// A directory for PATH holding links to the named tools only (and scripts written by the test).
fn tool_dir(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for t in tools {
        let path = require_tool(t);
        std::os::unix::fs::symlink(&path, dir.path().join(t)).expect("link tool");
    }
    dir
}

fn script(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

fn capture_with_path(ns: &Netns, path: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = ns.command(WEFT);
    cmd.arg("capture").args(args).env("PATH", path);
    netns::run_command(cmd, Duration::from_secs(60))
}

#[test]
fn missing_tools_are_named_and_nothing_is_installed() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("cap-missing");
    add_host_rules(&ns);
    let before = ns.rules_and_routes(true);
    let only_ip = tool_dir(&["ip"]);
    let cases: [(&str, &str); 3] = [
        ("iptables", "iptables-save not found on PATH (install the iptables package); nothing was changed"),
        ("nftables", "nft not found on PATH (install the nftables package); nothing was changed"),
        ("auto", "neither nft nor iptables-restore is usable here"),
    ];
    for (mode, want) in cases {
        let out = capture_with_path(&ns, only_ip.path(), &["install", "--mode", mode, "--inbound-ports", "9080"]);
        assert_eq!(out.status.code(), Some(1), "{mode}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(want), "{mode}: want {want:?} in {}", out.stderr);
        assert_eq!(ns.rules_and_routes(true), before, "{mode}: a failed install changed something");
    }
    // Without `ip`, a VIP route cannot be added: refused before any rule is written.
    let no_ip = tool_dir(&["nft"]);
    let out = capture_with_path(&ns, no_ip.path(), &["install", "--mode", "nftables"]);
    assert!(out.stderr.contains("ip not found on PATH (install the iproute2 package)"), "{}", out.stderr);
    assert_eq!(ns.rules_and_routes(true), before);
}

#[test]
fn without_cap_net_admin_nothing_is_installed() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("cap-nopriv");
    let before = ns.rules_and_routes(true);
    for args in [&["install", "--mode", "iptables"][..], &["install"], &["uninstall"], &["status"]] {
        let mut cmd = ns.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", WEFT, "capture"]).args(args);
        let out = netns::run_command(cmd, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("needs CAP_NET_ADMIN (run as root)"), "{args:?}: {}", out.stderr);
    }
    assert_eq!(ns.rules_and_routes(true), before);
}

#[test]
fn a_failed_install_leaves_the_previous_state() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("cap-fail");
    add_host_rules(&ns);
    let before = ns.rules_and_routes(true);
    let tools = ["ip", "iptables-save", "ip6tables-save", "ip6tables-restore", "nft"];

    // The rules cannot be written: the route added for them is taken back.
    let dir = tool_dir(&tools);
    script(dir.path(), "iptables-restore", "cat >/dev/null; echo 'iptables-restore: line 3 failed' >&2; exit 1");
    let out = capture_with_path(&ns, dir.path(), &["install", "--mode", "iptables"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("capture was not installed"), "{}", out.stderr);
    assert!(out.stderr.contains("line 3 failed"), "{}", out.stderr);
    assert_eq!(ns.rules_and_routes(true), before, "the failed install left something behind");

    // The IPv6 half fails after the IPv4 half was written: the IPv4 half is taken back, to
    // nothing on a first install, and to the previous install on a second one.
    let dir = tool_dir(&["ip", "iptables-save", "iptables-restore", "ip6tables-save", "nft"]);
    script(dir.path(), "ip6tables-restore", "cat >/dev/null; echo 'no IPv6 nat here' >&2; exit 2");
    let v6 = ["install", "--mode", "iptables", "--ipv6", "--inbound-ports", "9090"];
    let out = capture_with_path(&ns, dir.path(), &v6);
    assert!(out.stderr.contains("no IPv6 nat here"), "{}", out.stderr);
    assert_eq!(ns.rules_and_routes(true), before, "the IPv4 half of a failed install was left behind");

    capture_ok(&ns, &["install", "--mode", "iptables", "--inbound-ports", "9080"]);
    let installed = ns.rules_and_routes(true);
    let out = capture_with_path(&ns, dir.path(), &v6);
    assert_eq!(out.status.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert_eq!(ns.rules_and_routes(true), installed, "a failed re-install did not put the previous rules back");
    capture_ok(&ns, &["uninstall"]);
    assert_eq!(ns.rules_and_routes(true), before);
}

// ---- real traffic ----------------------------------------------------------------------------------

/// How connect() to `ip:port` from inside `ns` (as `uid`) fails, by bash's `/dev/tcp`:
/// `None` when it connects.
fn connect_error(ns: &Netns, uid: Option<&str>, ip: &str, port: u16) -> Option<String> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let out = match uid {
        Some(uid) => ns.run(&[
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "bash",
            "-c",
            &script,
        ]),
        None => ns.run(&["bash", "-c", &script]),
    };
    (!out.success()).then_some(out.stderr)
}

/// A stat of the proxy in `ns` (admin on 127.0.0.1:15000 there).
fn stat(ns: &Netns, name: &str) -> u64 {
    let r = ns.curl(None, "http://127.0.0.1:15000/stats", &[]);
    assert_eq!(r.status, 200, "admin /stats in {}: {}", ns.name(), r.error);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no stat {name} in\n{}", r.body))
        .trim()
        .parse()
        .expect("stat value")
}

/// Starts `weft ARGS` in `ns` as the proxy uid, waiting for its ready file.
async fn start_as_proxy_uid(ns: &Netns, config_name: &str, config: &str, args: &[&str]) -> WeftProcess {
    let mut builder = WeftProcess::builder("ip");
    let path = builder.write_file(config_name, config);
    {
        use std::os::unix::fs::PermissionsExt;
        // The proxy (uid 1337) reads its config and writes its ready file here.
        std::fs::set_permissions(builder.dir(), std::fs::Permissions::from_mode(0o777)).expect("chmod test dir");
    }
    builder = builder
        .args(ns.exec_prefix())
        .args(["setpriv", &format!("--reuid={PROXY_UID}"), &format!("--regid={PROXY_UID}"), "--clear-groups"])
        .arg(WEFT)
        .args(args)
        .arg("-c")
        .arg(path);
    builder.start().await
}

/// The static sidecar config of the traffic test: outbound capture on 15001 (v4 and v6) with a
/// chain for the `reviews` VIP:port and a passthrough default, inbound capture on 15006 with a
/// chain for the app's port 9080.
fn sidecar_yaml() -> String {
    let outbound_chains = r#"
    filter_chains:
      - name: reviews
        match: { destination_ips: ["240.240.0.10/32", "fd00:240::10/128"], destination_port: 80 }
        http:
          virtual_hosts:
            - name: reviews
              domains: ["*"]
              response_headers_to_add: [{ name: x-weft-capture, value: outbound }]
              routes: [{ match: { prefix: / }, route: { cluster: reviews } }]
    default_chain:
      tcp: { cluster: passthrough }"#;
    let inbound_chains = r#"
    filter_chains:
      - name: app
        match: { destination_port: 9080 }
        http:
          virtual_hosts:
            - name: app
              domains: ["*"]
              response_headers_to_add: [{ name: x-weft-capture, value: inbound }]
              routes: [{ match: { prefix: / }, route: { cluster: app } }]
    default_chain:
      tcp: { cluster: passthrough }"#;
    format!(
        r#"admin: {{ address: "127.0.0.1:15000" }}
access_log: off
listeners:
  - name: virtualOutbound
    address: "0.0.0.0:15001"
    use_original_dst: true{outbound_chains}
  - name: virtualOutbound6
    address: "[::]:15001"
    use_original_dst: true{outbound_chains}
  - name: virtualInbound
    address: "0.0.0.0:15006"
    use_original_dst: true{inbound_chains}
  - name: virtualInbound6
    address: "[::]:15006"
    use_original_dst: true{inbound_chains}
clusters:
  - {{ name: reviews, endpoints: ["10.77.0.2:8080"] }}
  - {{ name: app, endpoints: ["127.0.0.1:9080"] }}
  - {{ name: passthrough, type: original_dst, connect_timeout: 2s }}
"#
    )
}

/// Host H (capture, proxy, app, clients) and peer P (the `reviews` backend, a non-mesh server,
/// a remote client), joined by a veth pair; H has no default route.
struct Hosts {
    h: Netns,
    p: Netns,
}

fn hosts(tag: &str) -> Hosts {
    let h = Netns::new(&format!("{tag}-h"));
    let p = Netns::new(&format!("{tag}-p"));
    netns::link(&h, "10.77.0.1/24", &p, "10.77.0.2/24");
    h.must(&["ip", "-6", "addr", "add", "fd00:77::1/64", "dev", "veth0", "nodad"]);
    p.must(&["ip", "-6", "addr", "add", "fd00:77::2/64", "dev", "veth0", "nodad"]);
    Hosts { h, p }
}

async fn captured_traffic_flows_through_the_proxy(mode: &str) {
    let Hosts { h, p } = hosts(&format!("cap-{}", &mode[..3]));
    let _reviews = netns_backend(&p, "0.0.0.0:8080", "reviews");
    let _direct = netns_backend(&p, "0.0.0.0:9999", "direct");
    let _app = netns_backend(&h, "0.0.0.0:9080", "app");
    let _other = netns_backend(&h, "0.0.0.0:9081", "other");
    let _proxy = start_as_proxy_uid(&h, "sidecar.yaml", &sidecar_yaml(), &["proxy", "--concurrency", "1"]).await;

    // Without capture (and without a default route) a VIP is unreachable.
    let e = connect_error(&h, None, "240.240.0.10", 80).expect("a VIP answered before capture was installed");
    assert!(e.contains("Network is unreachable"), "{e}");

    let args = [
        "install",
        "--mode",
        mode,
        "--ipv6",
        "--vip-cidr",
        "240.240.0.0/16,fd00:240::/64",
        "--inbound-ports",
        "9080",
        "--outbound-ports",
        "8080",
        "--exclude-uid",
        OTHER_UID,
    ];
    capture_ok(&h, &args);

    // A client calling the VIP is captured and routed by the proxy to the backend on P, over
    // IPv4 and IPv6. The proxy's own upstream connection goes to port 8080, which is captured
    // for everyone else: had it been captured again, the request would loop.
    for url in ["http://240.240.0.10/hello", "http://[fd00:240::10]/hello"] {
        let r = h.curl(None, url, &[]);
        assert_eq!(r.status, 200, "{url}: {}", r.error);
        assert_eq!(r.headers.get("x-weft-capture").map(String::as_str), Some("outbound"), "{url}");
        assert_eq!(r.headers.get("x-backend").map(String::as_str), Some("reviews"), "{url}");
        assert!(r.body.contains("\"path\":\"/hello\""), "{url}: {}", r.body);
    }

    // Port 8080 on any address is captured (no chain matches: passthrough to the original
    // destination); a port that is not listed passes untouched.
    let passthrough = "cluster.passthrough.upstream_cx_total";
    let before = stat(&h, passthrough);
    let r = h.curl(None, "http://10.77.0.2:8080/", &[]);
    assert_eq!((r.status, r.headers.get("x-backend").map(String::as_str)), (200, Some("reviews")), "{}", r.error);
    assert_eq!(stat(&h, passthrough), before + 1, "port 8080 was not captured");
    let r = h.curl(None, "http://10.77.0.2:9999/", &[]);
    assert_eq!((r.status, r.headers.get("x-backend").map(String::as_str)), (200, Some("direct")), "{}", r.error);
    assert_eq!(stat(&h, passthrough), before + 1, "a port that is not listed was captured");

    // An excluded uid (a non-mesh process) passes untouched: port 8080 goes straight out, and
    // a VIP is refused at once by the local route instead of reaching the proxy.
    let r = h.curl(Some(OTHER_UID), "http://10.77.0.2:8080/", &[]);
    assert_eq!(r.status, 200, "{}", r.error);
    assert_eq!(stat(&h, passthrough), before + 1, "an excluded uid was captured");
    let e = connect_error(&h, Some(OTHER_UID), "240.240.0.10", 80).expect("an excluded uid reached a VIP");
    assert!(e.contains("Connection refused"), "{e}");

    // Inbound: a service port goes through 15006 to the app; another port reaches its server
    // directly; over IPv4 and IPv6.
    for (url, want) in [
        ("http://10.77.0.1:9080/in", Some("inbound")),
        ("http://[fd00:77::1]:9080/in", Some("inbound")),
        ("http://10.77.0.1:9081/in", None),
    ] {
        let r = p.curl(None, url, &[]);
        assert_eq!(r.status, 200, "{url}: {}", r.error);
        assert_eq!(r.headers.get("x-weft-capture").map(String::as_str), want, "{url}");
    }
    // Local clients of the app are not inbound traffic.
    let r = h.curl(None, "http://10.77.0.1:9080/", &[]);
    assert_eq!((r.status, r.headers.get("x-weft-capture")), (200, None), "{}", r.error);

    // After uninstall nothing is captured any more.
    capture_ok(&h, &["uninstall"]);
    let e = connect_error(&h, None, "240.240.0.10", 80).expect("a VIP answered after uninstall");
    assert!(e.contains("Network is unreachable"), "{e}");
    let r = p.curl(None, "http://10.77.0.1:9080/", &[]);
    assert_eq!((r.status, r.headers.get("x-weft-capture")), (200, None), "{}", r.error);
}

#[tokio::test]
async fn iptables_capture_sends_traffic_through_the_proxy() {
    if !prerequisites() {
        return;
    }
    captured_traffic_flows_through_the_proxy("iptables").await;
}

#[tokio::test]
async fn nftables_capture_sends_traffic_through_the_proxy() {
    if !prerequisites() {
        return;
    }
    captured_traffic_flows_through_the_proxy("nftables").await;
}

// ---- with the control plane ------------------------------------------------------------------------

/// The control plane's API, on P.
const API: &str = "10.77.0.2:15014";

const MESH_YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{ number: 9080, name: http }]
  resolution: STATIC
  endpoints: [{ address: 10.77.0.2, ports: { http: 8080 } }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: frontend, namespace: shop }
spec:
  hosts: [frontend.shop.svc.cluster.local]
  ports: [{ number: 9080, name: http }]
  resolution: STATIC
  endpoints: [{ address: 10.77.0.1 }]
"#;

#[tokio::test]
async fn control_plane_config_serves_captured_traffic() {
    if !prerequisites() {
        return;
    }
    let Hosts { h, p } = hosts("cap-xds");
    // The control plane and the reviews backend live on P; H runs the sidecar and the app.
    let data = tempfile::tempdir().expect("data dir");
    let control = WeftProcess::builder("ip")
        .args(p.exec_prefix())
        .arg(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--xds-listen", "10.77.0.2:15010", "--api-listen", "10.77.0.2:15014", "--debounce", "20ms"])
        .start()
        .await;
    let file = data.path().join("mesh.yaml");
    std::fs::write(&file, MESH_YAML).expect("write mesh");
    let mut apply = p.command(WEFT);
    apply.args(["apply", "-f"]).arg(&file).env("WEFT_SERVER", API);
    let out = netns::run_command(apply, Duration::from_secs(30));
    assert!(out.success(), "weft apply: {}{}", out.stdout, out.stderr);

    let _direct = netns_backend(&p, "0.0.0.0:9999", "direct");
    let _reviews = netns_backend(&p, "0.0.0.0:8080", "reviews");
    let _app = netns_backend(&h, "0.0.0.0:9080", "frontend");
    let node = "sidecar~10.77.0.1~frontend-1.shop~shop.svc.cluster.local";
    let boot = "admin: { address: \"127.0.0.1:15000\" }\n";
    let _proxy = start_as_proxy_uid(
        &h,
        "boot.yaml",
        boot,
        &["proxy", "--xds", "10.77.0.2:15010", "--node-id", node, "--concurrency", "1"],
    )
    .await;
    capture_ok(&h, &["install", "--inbound-ports", "9080", "--outbound-ports", "9999"]);

    // The VIP the control plane allocated for reviews, as the sidecar's routes show it.
    let mut cmd = p.command(WEFT);
    cmd.args(["proxy-config", "routes", node, "-o", "json"]).env("WEFT_SERVER", API);
    let routes = netns::run_command(cmd, Duration::from_secs(30));
    assert!(routes.success(), "{}", routes.stderr);
    let json: serde_json::Value = serde_json::from_str(&routes.stdout).expect("proxy-config JSON");
    let detail = json["resources"][0]["detail"].as_str().expect("route detail");
    let vhost = detail.find("name: \"reviews.shop.svc.cluster.local:9080\"").expect("reviews virtual host");
    let at = vhost + detail[vhost..].find("\"240.240.").expect("reviews VIP") + 1;
    let vip: String = detail[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();

    // By VIP and by name (Host header): captured, routed by the control plane's routes to P.
    let r = h.curl(None, &format!("http://{vip}:9080/xds"), &[]);
    assert_eq!(r.status, 200, "{vip}: {}", r.error);
    assert_eq!(r.headers.get("x-backend").map(String::as_str), Some("reviews"));
    let r = h.curl(None, &format!("http://{vip}:9080/xds"), &["-H", "Host: reviews.shop.svc.cluster.local"]);
    assert_eq!((r.status, r.headers.get("x-backend").map(String::as_str)), (200, Some("reviews")), "{}", r.error);
    assert!(stat(&h, "cluster.outbound|9080||reviews.shop.svc.cluster.local.upstream_rq_total") >= 2);

    // Inbound to the frontend's port goes through virtualInbound to the local app.
    let r = p.curl(None, "http://10.77.0.1:9080/in", &[]);
    assert_eq!((r.status, r.headers.get("x-backend").map(String::as_str)), (200, Some("frontend")), "{}", r.error);
    assert!(stat(&h, "cluster.inbound|9080||.upstream_rq_total") >= 1, "inbound request did not pass the sidecar");

    // Port 9999 is captured but no service has it: ALLOW_ANY passes it through to the original
    // destination; a Sidecar with REGISTRY_ONLY sends it to the BlackHoleCluster instead.
    let r = h.curl(None, "http://10.77.0.2:9999/", &[]);
    assert_eq!((r.status, r.headers.get("x-backend").map(String::as_str)), (200, Some("direct")), "{}", r.error);
    assert_eq!(stat(&h, "cluster.PassthroughCluster.upstream_cx_total"), 1);
    let sidecar = data.path().join("sidecar.yaml");
    std::fs::write(
        &sidecar,
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: { name: default, namespace: shop }\n\
         spec: { outboundTrafficPolicy: { mode: REGISTRY_ONLY } }\n",
    )
    .expect("write sidecar");
    let mut apply = p.command(WEFT);
    apply.args(["apply", "-f"]).arg(&sidecar).env("WEFT_SERVER", API);
    let out = netns::run_command(apply, Duration::from_secs(30));
    assert!(out.success(), "weft apply: {}{}", out.stdout, out.stderr);
    wait_until("REGISTRY_ONLY", WAIT, || h.curl(None, "http://10.77.0.2:9999/", &[]).status != 200);
    let passed = stat(&h, "cluster.PassthroughCluster.upstream_cx_total");
    let r = h.curl(None, "http://10.77.0.2:9999/", &[]);
    assert_ne!(r.status, 200, "REGISTRY_ONLY let traffic through");
    assert_eq!(stat(&h, "cluster.PassthroughCluster.upstream_cx_total"), passed);
    let r = h.curl(None, &format!("http://{vip}:9080/after"), &[]);
    assert_eq!((r.status, r.headers.get("x-backend").map(String::as_str)), (200, Some("reviews")), "{}", r.error);

    // The control plane is not captured: the CLI on H reaches its API directly.
    let mut cmd = h.command(WEFT);
    cmd.args(["get", "se", "-A"]).env("WEFT_SERVER", API);
    let out = netns::run_command(cmd, Duration::from_secs(30));
    assert!(out.success() && out.stdout.contains("reviews"), "{}{}", out.stdout, out.stderr);
    drop(control);
}

// ---- DNS capture -----------------------------------------------------------------------------------

/// dnsmasq answering `reviews.mesh.test` with `answer`, on `listen:port` inside `ns`.
fn dnsmasq(ns: &Netns, dir: &std::path::Path, listen: &str, port: u16, answer: &str) -> Background {
    let pid_file = dir.join(format!("dnsmasq-{port}.pid"));
    let bg = ns.spawn(&[
        require_tool("dnsmasq").to_str().expect("dnsmasq path"),
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={listen}"),
        &format!("--port={port}"),
        &format!("--address=/reviews.mesh.test/{answer}"),
        &format!("--pid-file={}", pid_file.display()),
    ]);
    let server = format!("@{listen}");
    let port = port.to_string();
    wait_until("dnsmasq", WAIT, || dig(ns, None, &[&server, "-p", &port]) == answer);
    bg
}

/// `dig +short reviews.mesh.test` inside `ns` (as `uid`), with `args`; the answer or "".
fn dig(ns: &Netns, uid: Option<&str>, args: &[&str]) -> String {
    let mut cmd: Vec<String> = Vec::new();
    if let Some(uid) = uid {
        cmd.extend(["setpriv".into(), format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]);
    }
    cmd.extend(["dig", "+short", "+time=2", "+tries=1", "reviews.mesh.test"].map(String::from));
    cmd.extend(args.iter().map(|s| s.to_string()));
    ns.run(&strs(&cmd)).stdout.trim().to_string()
}

#[test]
fn dns_is_redirected_to_the_local_resolver_except_for_exempt_uids() {
    if !prerequisites() {
        return;
    }
    require_tool("dig");
    let Hosts { h, p } = hosts("cap-dns");
    let dir = tempfile::tempdir().expect("temporary directory");
    // H's local resolver stands for `weft dns`; P's is the site's resolver.
    let _local = dnsmasq(&h, dir.path(), "127.0.0.1", 15053, "240.240.0.10");
    let _site = dnsmasq(&p, dir.path(), "10.77.0.2", 53, "10.99.0.1");
    let site = ["@10.77.0.2"];
    assert_eq!(dig(&h, None, &site), "10.99.0.1");

    for mode in ["iptables", "nftables"] {
        capture_ok(&h, &["install", "--mode", mode, "--dns", "--dns-exempt-uid", OTHER_UID]);
        // Apps' queries, over UDP and TCP, are answered by the local resolver whatever server
        // they ask; the proxy's uid and the exempt uid reach the server they asked.
        let cases: [(Option<&str>, &[&str], &str); 5] = [
            (None, &site, "240.240.0.10"),
            (None, &["@10.77.0.2", "+tcp"], "240.240.0.10"),
            (Some("3000"), &site, "240.240.0.10"),
            (Some(PROXY_UID), &site, "10.99.0.1"),
            (Some(OTHER_UID), &["@10.77.0.2", "+tcp"], "10.99.0.1"),
        ];
        for (uid, args, want) in cases {
            assert_eq!(dig(&h, uid, args), want, "{mode}: uid {uid:?} dig {args:?}");
        }
        capture_ok(&h, &["uninstall"]);
        assert_eq!(dig(&h, None, &site), "10.99.0.1", "{mode}: DNS still captured after uninstall");
    }
}
