//! Control-plane load bench: `weft control` (a real process) with N services × E endpoints and P
//! simulated proxies as real delta-xDS clients over loopback.
//!
//! ```sh
//! cargo bench -p weft --bench control_load -- --services 1000 --proxies 1000 [--unscoped]
//! bench/control/run.sh            # the matrix recorded in docs/performance.md
//! ```
//!
//! Services are spread over namespaces of `--per-namespace` services; each proxy belongs to one
//! namespace, and (unless `--unscoped`) a Sidecar per namespace limits its proxies to their own
//! namespace's services, as a large mesh would. Reported (one JSON line on stdout):
//! - `apply_s`: `weft apply` of every ServiceEntry (durable when it returns);
//! - `full_push_s`: from the first proxy connecting until every proxy holds its complete config;
//! - `change_*`: one endpoint registered (the control API, as `weft agent` does) until each
//!   affected proxy has ACKed the new endpoints — p50/p99/max over `--changes` changes;
//! - `rss_mib`, `rss_peak_mib`, `cpu_s`: the control plane process's resident memory and CPU;
//! - `bytes_per_proxy`: xDS bytes each proxy received for its initial config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use weft_ads::sim::{sidecar_node, SimClient, SimConfig};
use weft_ads::Protocol;
use weft_xds::type_url;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Args {
    services: usize,
    endpoints: usize,
    proxies: usize,
    per_namespace: usize,
    scoped: bool,
    changes: usize,
    connect_parallel: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        services: 1000,
        endpoints: 10,
        proxies: 1000,
        per_namespace: 100,
        scoped: true,
        changes: 5,
        connect_parallel: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num =
            || -> usize { it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number")) };
        match flag.as_str() {
            "--services" => a.services = num(),
            "--endpoints" => a.endpoints = num(),
            "--proxies" => a.proxies = num(),
            "--per-namespace" => a.per_namespace = num(),
            "--changes" => a.changes = num(),
            "--connect-parallel" => a.connect_parallel = num(),
            "--unscoped" => a.scoped = false,
            // cargo bench passes `--bench`.
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn namespaces(a: &Args) -> usize {
    a.services.div_ceil(a.per_namespace).max(1)
}

/// One file per namespace: its ServiceEntries (and its Sidecar when scoped).
fn write_mesh(dir: &Path, a: &Args) -> PathBuf {
    let mesh = dir.join("mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    for ns in 0..namespaces(a) {
        let mut y = String::new();
        let first = ns * a.per_namespace;
        for svc in first..(first + a.per_namespace).min(a.services) {
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{svc}, namespace: ns-{ns}}}\n\
                 spec:\n  hosts: [svc-{svc}.ns-{ns}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
                 \x20 ports: [{{number: 8080, name: http}}]\n  endpoints:\n"
            ));
            for e in 0..a.endpoints {
                let n = svc * a.endpoints + e;
                y.push_str(&format!("  - {{address: 10.{}.{}.{}}}\n", (n >> 16) & 255, (n >> 8) & 255, n & 255));
            }
            y.push_str("---\n");
        }
        if a.scoped {
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: ns-{ns}}}\n\
                 spec:\n  egress: [{{hosts: [\"./*\"]}}]\n"
            ));
        }
        std::fs::write(mesh.join(format!("ns-{ns}.yaml")), y).unwrap();
    }
    mesh
}

struct Control {
    child: Child,
    api: SocketAddr,
    xds: SocketAddr,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_control(dir: &Path) -> Control {
    let ready = dir.join("control.ready");
    let child = Command::new(WEFT)
        .arg("control")
        .arg("--data-dir")
        .arg(dir.join("store"))
        .args(["--xds-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("control.log")).unwrap())
        .spawn()
        .expect("start weft control");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "weft control did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let addr = |n: &str| v["listeners"][n].as_str().unwrap().parse().unwrap();
    Control { api: addr("api"), xds: addr("xds"), child }
}

/// (resident, peak resident) in MiB and CPU seconds (user + system) of a process.
fn usage(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0, (ticks(11) + ticks(12)) / hz)
}

fn raise_fd_limit() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
}

async fn api_put(api: SocketAddr, path: &str, body: serde_json::Value) {
    let out = weft_test::http_request(
        api,
        weft_test::HttpVersion::Http1,
        http::Method::PUT,
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
    .expect("control API");
    assert_eq!(out.status, 200, "{path}: {}", out.text());
}

fn pct(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) * p) / 100].as_secs_f64() * 1000.0
}

fn main() {
    let a = parse_args();
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let mesh = write_mesh(dir.path(), &a);
    let control = start_control(dir.path());
    let t = Instant::now();
    let out = Command::new(WEFT)
        .args(["apply", "--server", &control.api.to_string(), "-f"])
        .arg(&mesh)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "weft apply: {}", String::from_utf8_lossy(&out.stderr));
    let apply_s = t.elapsed().as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = rt.block_on(async {
        let endpoint = format!("http://{}", control.xds);
        let n_ns = namespaces(&a);
        let visible = if a.scoped { a.per_namespace.min(a.services) } else { a.services };
        // Wait for the mesh to be built: one probe proxy sees every visible service.
        let probe = SimClient::connect(
            &endpoint,
            sidecar_node("10.255.0.1".parse().unwrap(), "probe", "ns-0", &Default::default()),
            SimConfig::wildcard(Protocol::Delta),
        )
        .await
        .unwrap();
        probe
            .wait_ack_time(Duration::from_secs(600), |s| {
                s.types.get(type_url::ENDPOINT).is_some_and(|t| t.resources.len() >= visible)
            })
            .await
            .expect("the probe proxy got every service");
        // Then until the control plane is quiet (VIP allocation and rebuilds after a large apply
        // go on for a while): no new response to the probe for 3 s.
        let quiet_deadline = Instant::now() + Duration::from_secs(600);
        let mut seen = probe.inspect(|s| s.responses);
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = probe.inspect(|s| s.responses);
            if now == seen || Instant::now() > quiet_deadline {
                break;
            }
            seen = now;
        }
        drop(probe);

        let t = Instant::now();
        let mut clients = Vec::with_capacity(a.proxies);
        let mut pending = FuturesUnordered::new();
        let mut next = 0usize;
        let cfg = SimConfig { timeout: Duration::from_secs(600), ..SimConfig::wildcard(Protocol::Delta) };
        while next < a.proxies || !pending.is_empty() {
            while next < a.proxies && pending.len() < a.connect_parallel {
                let i = next;
                next += 1;
                let ip: std::net::IpAddr = format!("10.254.{}.{}", i >> 8, i & 255).parse().unwrap();
                let node = sidecar_node(ip, &format!("p{i}"), &format!("ns-{}", i % n_ns), &Default::default());
                let (endpoint, cfg) = (endpoint.clone(), cfg.clone());
                pending.push(async move {
                    let c = SimClient::connect(&endpoint, node, cfg).await.expect("connect");
                    let full = c
                        .wait_ack_time(Duration::from_secs(900), |s| {
                            s.types.len() == 4
                                && s.types.get(type_url::ENDPOINT).is_some_and(|t| t.resources.len() >= visible)
                        })
                        .await;
                    if full.is_none() {
                        let (closed, counts) = c.inspect(|s| {
                            (s.closed.clone(), s.types.iter().map(|(t, v)| (t.clone(), v.resources.len())).collect::<Vec<_>>())
                        });
                        panic!("proxy {i}: no full config (want {visible} endpoints); closed: {closed:?}; held: {counts:?}");
                    }
                    (i, c)
                });
            }
            if let Some(c) = pending.next().await {
                clients.push(c);
            }
        }
        let full_push_s = t.elapsed().as_secs_f64();
        // Back in proxy order: proxy i is in namespace i % namespaces.
        clients.sort_by_key(|(i, _)| *i);
        let clients: Vec<SimClient> = clients.into_iter().map(|(_, c)| c).collect();
        let bytes_per_proxy = clients.iter().map(|c| c.inspect(|s| s.bytes)).sum::<u64>() / clients.len().max(1) as u64;
        let (rss_synced, _, cpu_synced) = usage(control.child.id());
        if std::env::var_os("WEFT_BENCH_DEBUG").is_some() {
            let held = clients[0].inspect(|s| {
                s.types.iter().map(|(t, v)| (type_url::short(t).to_string(), v.resources.len(), v.responses)).collect::<Vec<_>>()
            });
            eprintln!("proxy 0 holds (type, resources, responses): {held:?}");
        }

        // Endpoint changes in svc-0.ns-0: an instance joins (registered through the API).
        let cluster = "outbound|8080||svc-0.ns-0.svc.cluster.local";
        let affected: Vec<&SimClient> =
            clients.iter().enumerate().filter(|(i, _)| !a.scoped || i % n_ns == 0).map(|(_, c)| c).collect();
        let mut lat = Vec::new();
        let mut reached = 0;
        for k in 0..a.changes {
            let before: Vec<String> = affected
                .iter()
                .map(|c| {
                    c.inspect(|s| s.types.get(type_url::ENDPOINT).and_then(|t| t.resources.get(cluster)).cloned())
                        .unwrap_or_default()
                })
                .collect();
            let before = Arc::new(before);
            let body = serde_json::json!({
                "instance": {
                    "name": format!("vm-{k}"), "namespace": "ns-0",
                    "serviceHosts": ["svc-0.ns-0.svc.cluster.local"],
                    "address": format!("10.253.0.{}", k + 1), "ports": {"http": 8080},
                },
            });
            let start = Instant::now();
            api_put(control.api, &format!("/v1/instances/ns-0/vm-{k}"), body).await;
            let mut waits: FuturesUnordered<_> = affected
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let before = before.clone();
                    async move {
                        c.wait_ack_time(Duration::from_secs(120), move |s| {
                            s.types
                                .get(type_url::ENDPOINT)
                                .and_then(|t| t.resources.get(cluster))
                                .is_some_and(|v| *v != before[i])
                        })
                        .await
                    }
                })
                .collect();
            while let Some(r) = waits.next().await {
                if let Some(Some(at)) = r {
                    lat.push(at.saturating_duration_since(start));
                    reached += 1;
                }
            }
        }
        lat.sort();
        let (rss, rss_peak, cpu) = usage(control.child.id());
        serde_json::json!({
            "services": a.services, "endpoints_per_service": a.endpoints, "proxies": a.proxies,
            "scoped": a.scoped, "visible_services_per_proxy": visible,
            "apply_s": (apply_s * 100.0).round() / 100.0,
            "full_push_s": (full_push_s * 100.0).round() / 100.0,
            "change_affected_proxies": affected.len(), "change_acks": reached, "changes": a.changes,
            "change_p50_ms": pct(&lat, 50).round(), "change_p99_ms": pct(&lat, 99).round(),
            "change_max_ms": lat.last().map_or(f64::NAN, |d| (d.as_secs_f64() * 1000.0).round()),
            "rss_mib_synced": rss_synced.round(), "rss_mib": rss.round(), "rss_peak_mib": rss_peak.round(),
            "cpu_s_synced": (cpu_synced * 10.0).round() / 10.0, "cpu_s": (cpu * 10.0).round() / 10.0,
            "bytes_per_proxy": bytes_per_proxy,
        })
    });
    println!("{report}");
}
