//! `weft demo`: a local mesh on loopback with nothing to install. It starts `weft control` on an
//! embedded store, three applications (reviews v1 and v2 over HTTP, ratings over gRPC) and the
//! client, each behind its own weft sidecar in bind mode on its own 127.0.0.x address, applies
//! Istio YAML (a 90/10 canary with retries and outlier detection), sends steady traffic and prints
//! a live summary read from the client sidecar's metrics. Ctrl-C stops every process it started.

pub mod backend;
mod files;
mod traffic;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use files::Workload;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Requests per second the demo client sends to each service.
    #[arg(long, default_value_t = 20)]
    rps: u32,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Directory for the YAML, the store and the logs (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// First of the four loopback addresses the workloads take (client, reviews-v1, reviews-v2,
    /// ratings-v1).
    #[arg(long, default_value = "127.0.0.10")]
    base_ip: Ipv4Addr,
    /// Share of requests reviews-v2 answers with 503, to show retries at work.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    v2_fail_percent: u8,
    /// The control plane's xDS address (another free port is taken when it is busy; port 0: any).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_listen: SocketAddr,
    /// The control plane's API address, for `weft apply --server` (same fallback).
    #[arg(long, default_value = "127.0.0.1:15014")]
    api_listen: SocketAddr,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 2)]
    interval: u64,
}

pub fn run(a: DemoArgs) -> ExitCode {
    match run_inner(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Child processes, stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn spawn(&mut self, dir: &Path, name: &str, cmd: &mut Command) -> anyhow::Result<u32> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }

    /// Fails when a child already exited (naming it and its log).
    fn check(&mut self, dir: &Path) -> anyhow::Result<()> {
        for (name, c) in &mut self.0 {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("{name} exited ({status}); see {}", dir.join(format!("{name}.log")).display());
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // Sidecars first (they drain), then the applications and the control plane.
        for (_, c) in self.0.iter().rev() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// `preferred` when it is free, else port 0 (any free port) on the same address.
fn pick(preferred: SocketAddr) -> anyhow::Result<SocketAddr> {
    if std::net::TcpListener::bind(preferred).is_ok() {
        return Ok(preferred);
    }
    Ok(SocketAddr::new(preferred.ip(), 0))
}

/// Checks that the demo's fixed addresses are free, so a clash is reported up front.
fn check_free(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for a in addrs {
        if let Err(e) = std::net::TcpListener::bind(a) {
            bail!("{a}: {e} (is another `weft demo` running? `--base-ip` picks other addresses)");
        }
    }
    Ok(())
}

fn wait_file(path: &Path, what: &str, procs: &mut Procs, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        procs.check(dir)?;
        if Instant::now() > deadline {
            bail!("{what} did not become ready in 20s; see the logs in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wait_listening(addr: SocketAddr, what: &str, procs: &mut Procs, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        procs.check(dir)?;
        if Instant::now() > deadline {
            bail!("{what} ({addr}) did not start listening in 20s; see the logs in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn run_inner(a: DemoArgs) -> anyhow::Result<()> {
    let dir = match a.dir.clone() {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("weft-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let exe = std::env::current_exe()?;
    let workloads = files::workloads(a.base_ip);
    let client = &workloads[0];
    let reviews_out = SocketAddr::from((client.ip, files::REVIEWS_PORT));
    let ratings_out = SocketAddr::from((client.ip, files::RATINGS_PORT));
    let mut fixed = vec![reviews_out, ratings_out];
    for w in &workloads {
        fixed.push(SocketAddr::from((w.ip, 15000)));
        fixed.push(SocketAddr::from((w.ip, 15090)));
        if w.app_port != 0 {
            fixed.push(SocketAddr::from((w.ip, w.app_port)));
            let port = if w.protocol == "grpc" { files::RATINGS_PORT } else { files::REVIEWS_PORT };
            fixed.push(SocketAddr::from((w.ip, port)));
        }
    }
    check_free(&fixed)?;

    let mesh = write(&dir, "mesh.yaml", &files::mesh_yaml(&workloads))?;
    let reviews = write(&dir, "reviews.yaml", &files::reviews_yaml())?;
    let ratings = write(&dir, "ratings.yaml", &files::ratings_yaml())?;

    let mut procs = Procs(Vec::new());
    let xds = pick(a.xds_listen)?;
    let api = pick(a.api_listen)?;
    let control_ready = dir.join("control.ready");
    let _ = std::fs::remove_file(&control_ready);
    let control_pid = procs.spawn(
        &dir,
        "control",
        Command::new(&exe)
            .arg("control")
            .arg("--data-dir")
            .arg(dir.join("store"))
            .args(["--xds-listen", &xds.to_string(), "--api-listen", &api.to_string()])
            .arg("--ready-file")
            .arg(&control_ready),
    )?;
    for w in workloads.iter().filter(|w| w.app_port != 0) {
        let fail = if w.name == "reviews-v2" { a.v2_fail_percent } else { 0 };
        procs.spawn(
            &dir,
            w.name,
            Command::new(&exe)
                .arg("demo-backend")
                .args(["--listen", &SocketAddr::from((w.ip, w.app_port)).to_string()])
                .args(["--name", w.name, "--protocol", w.protocol, "--fail-percent", &fail.to_string()]),
        )?;
    }
    wait_file(&control_ready, "the control plane", &mut procs, &dir)?;
    // The addresses the control plane took (ports 0 and races with other programs included).
    let ready: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&control_ready)?)?;
    let listener = |name: &str| -> anyhow::Result<SocketAddr> {
        let addr = ready["listeners"][name].as_str().unwrap_or_default();
        addr.parse().with_context(|| format!("the control plane's ready file: listeners.{name}: {addr:?}"))
    };
    let (xds, api) = (listener("xds")?, listener("api")?);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let server = crate::cli::ServerArg { server: api.to_string() };
    let apply = crate::cli::ApplyArgs {
        files: [&mesh, &reviews, &ratings].iter().map(|p| p.display().to_string()).collect(),
        dry_run: false,
        server: server.clone(),
    };
    rt.block_on(crate::cli::apply(apply)).context("applying the demo's YAML")?;

    let mut sidecar_pids = Vec::new();
    for w in &workloads {
        let boot = write(&dir, &format!("{}-sidecar-boot.yaml", w.name), &files::boot_yaml(w))?;
        let ready = dir.join(format!("{}-sidecar.ready", w.name));
        let _ = std::fs::remove_file(&ready);
        let pid = procs.spawn(
            &dir,
            &format!("{}-sidecar", w.name),
            Command::new(&exe)
                .args(["proxy", "--concurrency", "1", "-c"])
                .arg(&boot)
                .args(["--xds", &xds.to_string(), "--node-id", &files::node_id(w)])
                .args(["--namespace", files::NAMESPACE])
                .arg(format!("--labels=app={},version={}", w.app, w.version))
                .args(["--instance-ips", &w.ip.to_string()])
                .arg("--ready-file")
                .arg(&ready),
        )?;
        sidecar_pids.push((w.name, pid));
        wait_file(&ready, &format!("the {} sidecar", w.name), &mut procs, &dir)?;
    }
    for w in workloads.iter().filter(|w| w.app_port != 0) {
        let port = if w.protocol == "grpc" { files::RATINGS_PORT } else { files::REVIEWS_PORT };
        wait_listening(SocketAddr::from((w.ip, port)), &format!("the {} sidecar", w.name), &mut procs, &dir)?;
    }
    wait_listening(reviews_out, "the client sidecar", &mut procs, &dir)?;
    wait_listening(ratings_out, "the client sidecar", &mut procs, &dir)?;

    print_banner(&a, &dir, api, xds, control_pid, &workloads, &sidecar_pids, [&mesh, &reviews, &ratings]);

    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone())?;
    let errors = Arc::new(traffic::ClientErrors::default());
    let rps = a.rps.max(1);
    let duration = Duration::from_secs(a.duration);
    let metrics = SocketAddr::from((client.ip, 15090));
    let every = Duration::from_secs(a.interval.max(1));
    rt.block_on(async {
        let h = tokio::spawn(traffic::http_load(
            reviews_out,
            format!("reviews:{}", files::REVIEWS_PORT),
            rps,
            stop.clone(),
            errors.clone(),
        ));
        let g = tokio::spawn(traffic::grpc_load(
            ratings_out,
            format!("ratings:{}", files::RATINGS_PORT),
            rps,
            stop.clone(),
            errors.clone(),
        ));
        traffic::summary(metrics, every, duration, stop.clone(), errors.clone()).await;
        stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            let _ = h.await;
            let _ = g.await;
        })
        .await;
    });
    println!("\nweft demo: stopping (the YAML, store and logs stay in {})", dir.display());
    drop(procs);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_banner(
    a: &DemoArgs,
    dir: &Path,
    api: SocketAddr,
    xds: SocketAddr,
    control_pid: u32,
    workloads: &[Workload],
    sidecars: &[(&str, u32)],
    yaml: [&PathBuf; 3],
) {
    let server = if api.to_string() == "127.0.0.1:15014" { String::new() } else { format!(" --server {api}") };
    let client = &workloads[0];
    println!("\nweft demo: a local mesh on loopback (files, store and logs in {})", dir.display());
    println!("  control plane  api {api}  xds {xds}  (pid {control_pid})");
    for w in workloads {
        let pid = sidecars.iter().find(|(n, _)| *n == w.name).map_or(0, |(_, p)| *p);
        let app = if w.app_port == 0 {
            "the demo client".to_string()
        } else {
            format!("{} app {}:{}", w.protocol, w.ip, w.app_port)
        };
        println!("  {:<15} sidecar admin http://{}:15000/  (pid {pid}), {app}", w.name, w.ip);
    }
    println!(
        "  traffic        {} rps each: http://{}:{}/ (Host: reviews) and gRPC to {}:{} (ratings), through the client sidecar",
        a.rps,
        client.ip,
        files::REVIEWS_PORT,
        client.ip,
        files::RATINGS_PORT
    );
    println!("  try            curl -s -H 'Host: reviews' http://{}:{}/reviews/1", client.ip, files::REVIEWS_PORT);
    println!(
        "                 weft check{server}      weft proxy-config endpoints{server} '{}'",
        files::node_id(client)
    );
    println!("  edit & apply   weft apply{server} -f {}   (e.g. the weights 90/10 -> 50/50)", yaml[1].display());
    println!("                 also {} and {}", yaml[2].display(), yaml[0].display());
    println!("  metrics        http://{}:15090/stats/prometheus   Ctrl-C stops everything.\n", client.ip);
}

/// Sets `stop` on SIGINT or SIGTERM (the demo then stops its children).
fn stop_on_signals(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new().name("weft-demo-signals".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
        });
    })?;
    Ok(())
}
