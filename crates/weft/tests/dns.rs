//! `weft dns` end to end with real parts: `dig` as the client, a real dnsmasq (started by the
//! test on its own loopback address and port) as the upstream resolver, `weft control` serving
//! the name table over ADS. Never a public resolver.
//!
//! * every form of a mesh name, search-domain expansions, NODATA for other types, NXDOMAIN for
//!   unknown names of the mesh domain, forwarding over UDP and TCP;
//! * a ServiceEntry applied to the control plane becomes resolvable; `weft check` shows the
//!   DNS client's stream;
//! * the cache honours TTLs and negative TTLs (dnsmasq's query log counts what reached it);
//! * a restart with the control plane down answers from the saved table;
//! * bad flags exit 64; a query storm, malformed packets and idle TCP connections do not take
//!   it down.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use weft_test::{http_get, wait_for, WeftProcess};

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} not found: install the Debian package {package} (scripts/test.sh does)");
}

fn dnsmasq_bin() -> String {
    for d in ["/usr/sbin/dnsmasq", "/sbin/dnsmasq", "/usr/bin/dnsmasq"] {
        if Path::new(d).is_file() {
            return d.to_string();
        }
    }
    "dnsmasq".to_string()
}

/// One `dig` answer: status, flags, and records as (section, name, ttl, type, data).
#[derive(Debug)]
struct Dig {
    status: String,
    flags: String,
    records: Vec<(String, String, u32, String, String)>,
}

impl Dig {
    fn answers(&self, rtype: &str) -> Vec<String> {
        self.records.iter().filter(|r| r.0 == "ANSWER" && r.3 == rtype).map(|r| r.4.clone()).collect()
    }

    fn has(&self, section: &str, rtype: &str) -> bool {
        self.records.iter().any(|r| r.0 == section && r.3 == rtype)
    }
}

async fn dig(server: SocketAddr, name: &str, qtype: &str, tcp: bool) -> Dig {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip())).args(["-p", &server.port().to_string(), name, qtype]).args([
        "+noall",
        "+comments",
        "+answer",
        "+authority",
        "+tries=1",
        "+time=5",
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = run_blocking(cmd, Duration::from_secs(20)).await;
    let mut d = Dig { status: String::new(), flags: String::new(), records: Vec::new() };
    let mut section = String::new();
    for line in out.stdout.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").to_string();
        } else if let Some(s) = line.strip_prefix(";; ").and_then(|l| l.strip_suffix(" SECTION:")) {
            section = s.to_string();
        } else if !line.starts_with(';') && !line.trim().is_empty() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                let ttl = f[1].parse().unwrap_or(0);
                d.records.push((section.clone(), f[0].to_string(), ttl, f[3].to_string(), f[4..].join(" ")));
            }
        }
    }
    assert!(!d.status.is_empty(), "dig {name} {qtype} got no answer:\n{}\n{}", out.stdout, out.stderr);
    d
}

/// A dnsmasq on `ip` and a free port, logging every query it receives.
struct Dnsmasq {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    async fn start(ip: &str, extra: &[&str]) -> Dnsmasq {
        require("dnsmasq", "dnsmasq-base");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dnsmasq.log");
        for _ in 0..5 {
            let port = free_port(ip);
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let child = Command::new(dnsmasq_bin())
                .args(["-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
                .arg(format!("--listen-address={ip}"))
                .arg(format!("--port={port}"))
                .args(["--log-queries", "--log-facility=-", "--pid-file=", "--user=root"])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start dnsmasq");
            let mut m = Dnsmasq { child, addr, log: log.clone(), _dir: tempfile::tempdir().unwrap() };
            let started = wait_for(Duration::from_secs(5), || async { m.log_text().contains("started") }).await;
            if started && m.child.try_wait().unwrap().is_none() {
                m._dir = dir;
                return m;
            }
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        panic!("dnsmasq did not start on {ip}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Questions of type `qtype` for `name` that reached dnsmasq.
    fn asked(&self, qtype: &str, name: &str) -> usize {
        let needle = format!("[{qtype}] {name} from");
        self.log_text().lines().filter(|l| l.contains(&needle)).count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free for both UDP and TCP on `ip` (released before use; dnsmasq retries on a clash).
fn free_port(ip: &str) -> u16 {
    loop {
        let u = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(format!("{ip}:{port}")).is_ok() {
            return port;
        }
    }
}

async fn start_control(data_dir: &Path) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--xds-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--debounce", "20ms"])
        .start()
        .await
}

fn weft_cli(control: &WeftProcess, args: &[&str]) -> Command {
    let mut cmd = Command::new(WEFT);
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

const NODE: &str = "sidecar~10.0.0.1~vm-1.shop~shop.svc.cluster.local";

async fn start_dns(args: &[&str]) -> WeftProcess {
    WeftProcess::builder(WEFT)
        .args(["dns", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--resolv-conf", "/dev/null"])
        .args(args)
        .start()
        .await
}

/// Waits (bounded) until `name` resolves to an A record through `dns`.
async fn wait_resolves(dns: &WeftProcess, name: &str) -> Dig {
    let addr = dns.listener("dns");
    for _ in 0..100 {
        let d = dig(addr, name, "A", false).await;
        if !d.answers("A").is_empty() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never resolved through weft dns\n{}", dns.output_report());
}

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  addresses: [10.96.0.10]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.0.0.31}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: greeter, namespace: rpc}
spec:
  hosts: [com.example.Greeter]
  resolution: STATIC
  ports: [{number: 50051, name: grpc}]
  endpoints: [{address: 10.0.0.32}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_names_in_every_form_and_forwarding_through_dnsmasq() {
    require("dig", "dnsutils");
    let upstream = Dnsmasq::start("127.0.53.1", &["--address=/fwd.test/192.0.2.10", "--local-ttl=60"]).await;
    let data = tempfile::tempdir().unwrap();
    let control = start_control(data.path()).await;
    apply(&control, MESH).await;
    let state = tempfile::tempdir().unwrap();
    let dns = start_dns(&[
        "--xds",
        &control.listener("xds").to_string(),
        "--node-id",
        NODE,
        "--search",
        "corp.example",
        "--upstream",
        &upstream.addr.to_string(),
        "--state-dir",
        state.path().to_str().unwrap(),
    ])
    .await;
    let addr = dns.listener("dns");
    wait_resolves(&dns, "reviews.shop.svc.cluster.local").await;

    // Every form of the name, over UDP and TCP, answered with authority.
    for (name, tcp) in [
        ("reviews.shop.svc.cluster.local", false),
        ("reviews.shop.svc", false),
        ("reviews.shop", true),
        ("reviews", false),
        ("Reviews.Shop.", false),
    ] {
        let d = dig(addr, name, "A", tcp).await;
        assert_eq!((d.status.as_str(), d.answers("A")), ("NOERROR", vec!["10.96.0.10".to_string()]), "{name}: {d:?}");
        assert!(d.flags.contains("aa"), "{name}: {d:?}");
    }
    // A search-domain expansion: CNAME to the service's host, then its address.
    let d = dig(addr, "reviews.corp.example", "A", false).await;
    assert_eq!(d.answers("CNAME"), ["reviews.shop.svc.cluster.local."], "{d:?}");
    assert_eq!(d.answers("A"), ["10.96.0.10"], "{d:?}");
    // The RPC interface name resolves to the VIP the control plane allocated.
    let d = dig(addr, "com.example.Greeter", "A", false).await;
    let vip = d.answers("A");
    assert!(vip.len() == 1 && vip[0].starts_with("240.240."), "{d:?}");
    // Other types of a mesh name: NODATA with the zone's SOA; unknown mesh names: NXDOMAIN.
    for qtype in ["AAAA", "TXT", "MX"] {
        let d = dig(addr, "reviews.shop.svc.cluster.local", qtype, false).await;
        assert_eq!(
            (d.status.as_str(), d.records.iter().filter(|r| r.0 == "ANSWER").count()),
            ("NOERROR", 0),
            "{qtype}"
        );
        assert!(d.has("AUTHORITY", "SOA"), "{qtype}: {d:?}");
    }
    let d = dig(addr, "ratings.shop.svc.cluster.local", "A", false).await;
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");
    assert!(d.has("AUTHORITY", "SOA") && d.flags.contains("aa"), "{d:?}");
    assert_eq!(upstream.asked("A", "ratings.shop.svc.cluster.local"), 0, "mesh-domain names are not forwarded");
    // Everything else goes to dnsmasq, over UDP and TCP.
    for tcp in [false, true] {
        let d = dig(addr, "www.fwd.test", "A", tcp).await;
        assert_eq!((d.status.as_str(), d.answers("A")), ("NOERROR", vec!["192.0.2.10".to_string()]), "{d:?}");
    }
    assert_eq!(upstream.asked("A", "www.fwd.test"), 1, "the second question came from the cache");
    let d = dig(addr, "other.example", "A", false).await;
    assert_eq!(d.status, "REFUSED", "dnsmasq's own answer is relayed: {d:?}");

    // A new ServiceEntry becomes resolvable.
    apply(
        &control,
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  addresses: [10.96.0.11]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.0.0.33}]
"#,
    )
    .await;
    let d = wait_resolves(&dns, "ratings").await;
    assert_eq!(d.answers("A"), ["10.96.0.11"]);

    // The control plane shows the DNS client's stream like any proxy's.
    let mut synced = false;
    for _ in 0..50 {
        let out = run_blocking(weft_cli(&control, &["check"]), Duration::from_secs(20)).await;
        if out.stdout.lines().any(|l| l.starts_with(NODE) && l.contains("SYNCED")) && out.stdout.contains("NDS") {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(synced, "weft check does not show {NODE} with its name table SYNCED");
    let metrics = http_get(dns.admin(), "/stats/prometheus", &[]).await.unwrap().text();
    assert!(metrics.contains("weft_dns_xds_connected 1"), "{metrics}");
    assert!(prom_sum(&metrics, "weft_dns_answers_total", &[("result", "mesh")]) >= 7.0, "{metrics}");
    assert!(state.path().join("nametable.pb").is_file(), "the table is saved");
}

/// dnsmasq authoritative for `neg.test`: `www.neg.test` has an address, other names are
/// NXDOMAIN and other types NODATA, both with the zone's SOA; everything lives `ttl` seconds.
/// (dnsmasq answers with authority only on an interface's own address, hence 127.0.0.1.)
async fn zone(ttl: u32) -> Dnsmasq {
    let ip = "127.0.0.1";
    let server = format!("--auth-server=ns.neg.test,{ip}");
    let ttl = format!("--auth-ttl={ttl}");
    Dnsmasq::start(ip, &["--auth-zone=neg.test", &server, &ttl, "--host-record=www.neg.test,192.0.2.20"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_honours_ttls_and_negative_ttls() {
    require("dig", "dnsutils");
    // Long TTLs: the second question of each kind is answered from the cache.
    let upstream = zone(300).await;
    let dns = start_dns(&["--upstream", &upstream.addr.to_string()]).await;
    let addr = dns.listener("dns");
    for _ in 0..2 {
        let d = dig(addr, "www.neg.test", "A", false).await;
        assert_eq!(d.answers("A"), ["192.0.2.20"], "{d:?}");
        assert!(d.records[0].2 <= 300, "{d:?}");
        let nx = dig(addr, "nope.neg.test", "A", false).await;
        assert_eq!(nx.status, "NXDOMAIN", "{nx:?}");
        assert!(nx.has("AUTHORITY", "SOA"), "{nx:?}");
        let nodata = dig(addr, "www.neg.test", "AAAA", true).await;
        assert_eq!((nodata.status.as_str(), nodata.answers("AAAA").len()), ("NOERROR", 0), "{nodata:?}");
    }
    assert_eq!(upstream.asked("A", "www.neg.test"), 1, "positive answer cached\n{}", upstream.log_text());
    assert_eq!(upstream.asked("A", "nope.neg.test"), 1, "NXDOMAIN cached for the SOA minimum");
    assert_eq!(upstream.asked("AAAA", "www.neg.test"), 1, "NODATA cached for the SOA minimum");
    let metrics = http_get(dns.admin(), "/stats/prometheus", &[]).await.unwrap().text();
    assert_eq!(prom_sum(&metrics, "weft_dns_answers_total", &[("result", "cache_hit")]), 3.0, "{metrics}");
    // The upstream gone, cached answers keep coming.
    drop(upstream);
    let d = dig(addr, "www.neg.test", "A", false).await;
    assert_eq!(d.answers("A"), ["192.0.2.20"], "{d:?}");
    assert_eq!(dig(addr, "nope.neg.test", "A", false).await.status, "NXDOMAIN");

    // One-second TTLs: once they have run out, the questions go upstream again.
    let upstream = zone(1).await;
    let dns = start_dns(&["--upstream", &upstream.addr.to_string()]).await;
    let addr = dns.listener("dns");
    let mut asked_again = false;
    for _ in 0..100 {
        dig(addr, "www.neg.test", "A", false).await;
        dig(addr, "nope.neg.test", "A", false).await;
        if upstream.asked("A", "www.neg.test") >= 2 && upstream.asked("A", "nope.neg.test") >= 2 {
            asked_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(asked_again, "expired answers were not asked again:\n{}", upstream.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_control_plane_down_answers_from_the_saved_table() {
    require("dig", "dnsutils");
    let data = tempfile::tempdir().unwrap();
    let mut control = start_control(data.path()).await;
    apply(&control, MESH).await;
    let state = tempfile::tempdir().unwrap();
    let xds = control.listener("xds").to_string();
    let args = ["--xds", &xds, "--node-id", NODE, "--state-dir", state.path().to_str().unwrap()];
    let mut dns = start_dns(&args).await;
    wait_resolves(&dns, "reviews").await;
    dns.kill();
    control.kill();

    // Nothing listens on the control plane's address now.
    let dns = start_dns(&args).await;
    let ready = http_get(dns.admin(), "/ready", &[]).await.unwrap();
    assert_eq!(ready.status, 200, "ready from the saved table: {}", ready.text());
    let d = dig(dns.listener("dns"), "reviews", "A", false).await;
    assert_eq!(d.answers("A"), ["10.96.0.10"], "{d:?}\n{}", dns.output_report());
    let d = dig(dns.listener("dns"), "com.example.greeter", "A", false).await;
    assert_eq!(d.answers("A").len(), 1);
    let table = http_get(dns.admin(), "/nametable", &[]).await.unwrap().text();
    assert!(table.contains("\"connected\": false"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_64_with_the_flag_named() {
    let cases: &[(&[&str], &str)] = &[
        (&["--upstream", "dns.example"], "--upstream"),
        (&["--listen", "127.0.0.1:15053", "--upstream", "127.0.0.1:15053"], "loop"),
        (&["--xds", "127.0.0.1:1", "--node-id", "gateway~1.2.3.4~a.b~b.svc.cluster.local"], "--node-id"),
        (&["--xds", "127.0.0.1:1", "--node-id", NODE, "--labels", "nokey"], "--labels"),
        (&["--xds", "not a url", "--node-id", NODE], "--xds"),
        (&["--search", "bad domain"], "--search"),
        (&["--threads", "0"], "--threads"),
        (&["--upstream-timeout", "0s"], "--upstream-timeout"),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(WEFT);
        cmd.args(["dns", "--resolv-conf", "/dev/null", "--admin", "127.0.0.1:0"]).args(*args);
        let out = run_blocking(cmd, Duration::from_secs(20)).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_storm_malformed_packets_and_idle_tcp_do_not_take_it_down() {
    require("dig", "dnsutils");
    // A saved table, and an upstream that never answers.
    let state = tempfile::tempdir().unwrap();
    let mut t = weft_xds::nds::NameTable::default();
    t.table.insert(
        "reviews.shop.svc.cluster.local".into(),
        weft_xds::nds::NameInfo {
            ips: vec!["10.96.0.10".into()],
            alt_hosts: vec!["reviews".into()],
            ..Default::default()
        },
    );
    weft_dns::state::StateDir::open(state.path()).unwrap().save(&t).unwrap();
    let silent = std::net::UdpSocket::bind("127.0.53.3:0").unwrap();
    let dns = start_dns(&[
        "--upstream",
        &silent.local_addr().unwrap().to_string(),
        "--upstream-timeout",
        "200ms",
        "--max-inflight",
        "16",
        "--max-tcp",
        "4",
        "--state-dir",
        state.path().to_str().unwrap(),
    ])
    .await;
    let addr = dns.listener("dns");

    // 2000 distinct forwarded questions at once, and 300 packets that are not questions.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut garbage = vec![vec![], vec![0u8], vec![0xff; 11], vec![0xff; 12], vec![0x41; 512]];
    for i in 0..295u32 {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        p.extend_from_slice(&[63; 1]);
        p.extend(std::iter::repeat_n((i % 251) as u8, (i % 80) as usize));
        garbage.push(p);
    }
    for (i, g) in garbage.iter().enumerate() {
        client.send_to(g, addr).await.unwrap();
        if i % 50 == 49 {
            // Within the kernel's socket buffers.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Sent in batches, so that the kernel's socket buffers (not the server) set no limit.
    let mut servfail = 0;
    let mut buf = vec![0u8; 2048];
    for batch in 0..40u32 {
        for i in batch * 50..(batch + 1) * 50 {
            client.send_to(&query(i as u16, &format!("n{i}.storm.test")), addr).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut got = 0;
        while got < 50 {
            match tokio::time::timeout_at(deadline, client.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) if n >= 4 && buf[2] & 0x80 != 0 && u16::from_be_bytes([buf[0], buf[1]]) < 2000 => {
                    got += 1;
                    if buf[3] & 0x0f == 2 {
                        servfail += 1;
                    }
                }
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
    }
    assert!(servfail >= 1900, "only {servfail} SERVFAILs for 2000 questions upstream could not answer");

    // Idle TCP connections beyond --max-tcp are closed; the server answers throughout.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let d = dig(addr, "reviews", "A", false).await;
    assert_eq!(d.answers("A"), ["10.96.0.10"], "{d:?}");
    let metrics = http_get(dns.admin(), "/stats/prometheus", &[]).await.unwrap().text();
    assert!(prom_sum(&metrics, "weft_dns_answers_total", &[("result", "overloaded")]) > 0.0, "{metrics}");
    assert!(stat_prom(&metrics, "weft_dns_malformed_total") >= 300.0, "{metrics}");
    let mut rejected = false;
    for _ in 0..50 {
        let m = http_get(dns.admin(), "/stats/prometheus", &[]).await.unwrap().text();
        if stat_prom(&m, "weft_dns_tcp_connections_rejected_total") >= 6.0 {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rejected, "connections over --max-tcp were not refused");
    drop(idle);
    let d = dig(addr, "reviews", "A", true).await;
    assert_eq!(d.answers("A"), ["10.96.0.10"], "TCP again once the idle connections are gone: {d:?}");
}

fn stat_prom(text: &str, metric: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(metric).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A query for `name` (type A) with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}
