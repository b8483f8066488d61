//! `weft demo`: a local mesh on loopback with no setup. Two versions of a `reviews` backend sit
//! behind an inbound sidecar; an outbound sidecar splits traffic 90/10 between them with retries
//! and outlier detection; a built-in client sends steady traffic and prints a live summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Requests per second the demo client sends.
    #[arg(long, default_value_t = 50)]
    rps: u32,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Directory for the generated configs and logs (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Serves the demo backend until the process ends.
pub fn run_backend(listen: SocketAddr, name: String) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => backend_loop(l, Arc::from(name.as_str())).await,
            Err(e) => {
                eprintln!("weft: demo backend {listen}: {e}");
                ExitCode::from(1)
            }
        }
    })
}

async fn backend_loop(l: tokio::net::TcpListener, name: Arc<str>) -> ExitCode {
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    let body = format!("{{\"backend\":\"{}\",\"path\":\"{}\"}}\n", name, req.uri().path());
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut().insert(
                        "x-backend",
                        http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("backend")),
                    );
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so sidecars drain, then make sure.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.0 {
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

fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

pub fn run(a: DemoArgs) -> ExitCode {
    match run_inner(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(a: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let dir = match a.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            let d = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            d
        }
    };
    let exe = std::env::current_exe()?;
    let [v1, v2, b_in1, b_in2, b_admin, a_out, a_admin] = [(); 7].map(|_| free_port().unwrap_or(0));
    if [v1, v2, b_in1, b_in2, b_admin, a_out, a_admin].contains(&0) {
        return Err("no free loopback ports".into());
    }
    let inbound = format!(
        r#"# Inbound sidecar of the reviews workload: one listener per version, each to its local app.
node: {{ id: reviews-sidecar, workload: reviews, namespace: demo, app: reviews }}
admin: {{ address: 127.0.0.1:{b_admin} }}
listeners:
  - name: inbound-v1
    address: 127.0.0.1:{b_in1}
    http: {{ virtual_hosts: [{{ name: local, domains: ["*"], routes: [{{ route: {{ cluster: app-v1 }} }}] }}] }}
  - name: inbound-v2
    address: 127.0.0.1:{b_in2}
    http: {{ virtual_hosts: [{{ name: local, domains: ["*"], routes: [{{ route: {{ cluster: app-v2 }} }}] }}] }}
clusters:
  - {{ name: app-v1, endpoints: ["127.0.0.1:{v1}"], metadata: {{ service: reviews.demo, workload: reviews-v1, version: v1 }} }}
  - {{ name: app-v2, endpoints: ["127.0.0.1:{v2}"], metadata: {{ service: reviews.demo, workload: reviews-v2, version: v2 }} }}
"#
    );
    let outbound = format!(
        r#"# Outbound sidecar of the demo client. Edit and send SIGHUP (or restart) to change routing.
node: {{ id: client-sidecar, workload: client, namespace: demo, app: client }}
admin: {{ address: 127.0.0.1:{a_admin} }}
listeners:
  - name: outbound
    address: 127.0.0.1:{a_out}
    http:
      virtual_hosts:
        - name: reviews
          domains: ["reviews", "reviews:*", "*"]
          routes:
            - match: {{ prefix: / }}
              route:
                weighted_clusters: [{{ name: reviews-v1, weight: 90 }}, {{ name: reviews-v2, weight: 10 }}]
                timeout: 2s
                retry_policy: {{ retry_on: "5xx,connect-failure,reset", num_retries: 2, per_try_timeout: 500ms }}
clusters:
  - name: reviews-v1
    endpoints: ["127.0.0.1:{b_in1}"]
    outlier_detection: {{ consecutive_5xx: 5, interval: 5s, base_ejection_time: 30s }}
    metadata: {{ service: reviews.demo, version: v1 }}
  - name: reviews-v2
    endpoints: ["127.0.0.1:{b_in2}"]
    outlier_detection: {{ consecutive_5xx: 5, interval: 5s, base_ejection_time: 30s }}
    metadata: {{ service: reviews.demo, version: v2 }}
"#
    );
    let in_path = write(&dir, "inbound-sidecar.yaml", &inbound)?;
    let out_path = write(&dir, "outbound-sidecar.yaml", &outbound)?;
    let log = |n: &str| -> std::io::Result<Stdio> { Ok(Stdio::from(std::fs::File::create(dir.join(n))?)) };
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(&exe)
            .args(["demo-backend", "--listen", &format!("127.0.0.1:{v1}"), "--name", "reviews-v1"])
            .stdout(Stdio::null())
            .stderr(log("backend-v1.log")?)
            .spawn()?,
    );
    procs.0.push(
        Command::new(&exe)
            .args(["demo-backend", "--listen", &format!("127.0.0.1:{v2}"), "--name", "reviews-v2"])
            .stdout(Stdio::null())
            .stderr(log("backend-v2.log")?)
            .spawn()?,
    );
    let ready_b = dir.join("inbound.ready");
    let ready_a = dir.join("outbound.ready");
    let _ = std::fs::remove_file(&ready_a);
    let _ = std::fs::remove_file(&ready_b);
    procs.0.push(
        Command::new(&exe)
            .args(["proxy", "--concurrency", "1", "--config"])
            .arg(&in_path)
            .arg("--ready-file")
            .arg(&ready_b)
            .stdout(Stdio::null())
            .stderr(log("inbound-sidecar.log")?)
            .spawn()?,
    );
    procs.0.push(
        Command::new(&exe)
            .args(["proxy", "--concurrency", "1", "--config"])
            .arg(&out_path)
            .arg("--ready-file")
            .arg(&ready_a)
            .stdout(Stdio::null())
            .stderr(log("outbound-sidecar.log")?)
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(ready_a.exists() && ready_b.exists()) {
        if Instant::now() > deadline {
            return Err(format!("sidecars did not become ready; see the logs in {}", dir.display()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    println!("weft demo: a local mesh on 127.0.0.1");
    println!("  client -> outbound sidecar 127.0.0.1:{a_out} (90/10 split, retries, outlier detection)");
    println!("         -> inbound sidecar 127.0.0.1:{b_in1}/{b_in2} -> reviews-v1 :{v1} / reviews-v2 :{v2}");
    println!("  try:    curl -s -H 'Host: reviews' http://127.0.0.1:{a_out}/reviews/1");
    println!("  admin:  http://127.0.0.1:{a_admin}/stats/prometheus   http://127.0.0.1:{a_admin}/clusters   http://127.0.0.1:{b_admin}/config_dump");
    println!("  config: {} and {}", out_path.display(), in_path.display());
    println!("          edit, then `kill -HUP <pid>` (pids below) to reload without dropping traffic");
    println!("  pids:   outbound sidecar {}, inbound sidecar {}", procs.0[3].id(), procs.0[2].id());
    println!("  Ctrl-C stops everything.\n");

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc_flag(stop);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let target: SocketAddr = format!("127.0.0.1:{a_out}").parse()?;
    rt.block_on(traffic(target, a.rps.max(1), a.duration, stop));
    drop(procs);
    Ok(())
}

/// Installs SIGINT/SIGTERM handling that sets `stop` (the demo then cleans up its children).
fn ctrlc_flag(stop: Arc<AtomicBool>) -> std::io::Result<()> {
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

#[derive(Default)]
struct Window {
    ok: u64,
    failed: u64,
    by_version: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

async fn traffic(target: SocketAddr, rps: u32, duration: u64, stop: Arc<AtomicBool>) {
    let win = Arc::new(Mutex::new(Window::default()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps as f64));
    let mut report = tokio::time::interval(Duration::from_secs(2));
    report.tick().await;
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    println!("{:>6}  {:>7}  {:>8}  {:>9}  version split", "time", "rps", "success", "p99 ms");
    loop {
        if stop.load(Ordering::SeqCst) || (duration > 0 && started.elapsed() >= Duration::from_secs(duration)) {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                if sender.as_ref().map(|s| s.is_closed()).unwrap_or(true) {
                    sender = connect(target).await;
                }
                let Some(tx) = sender.as_mut() else {
                    win.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
                    continue;
                };
                if tx.ready().await.is_err() {
                    sender = None;
                    continue;
                }
                let req = hyper::Request::get("/reviews/1").header("host", "reviews").body(Full::new(Bytes::new()));
                let Ok(req) = req else { continue };
                let t0 = Instant::now();
                let fut = tx.send_request(req);
                let win = win.clone();
                tokio::spawn(async move {
                    let r = tokio::time::timeout(Duration::from_secs(5), fut).await;
                    let mut w = win.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(Ok(resp)) if resp.status().is_success() => {
                            let v = resp.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                            drop(w);
                            let _ = resp.into_body().collect().await;
                            let mut w = win.lock().unwrap_or_else(|e| e.into_inner());
                            w.ok += 1;
                            *w.by_version.entry(v).or_default() += 1;
                            w.latencies_us.push(t0.elapsed().as_micros() as u64);
                        }
                        _ => w.failed += 1,
                    }
                });
            }
            _ = report.tick() => {
                let mut w = std::mem::take(&mut *win.lock().unwrap_or_else(|e| e.into_inner()));
                let total = w.ok + w.failed;
                w.latencies_us.sort_unstable();
                let p99 = w.latencies_us.get(((w.latencies_us.len() as f64 * 0.99) as usize).min(w.latencies_us.len().saturating_sub(1))).copied().unwrap_or(0);
                let split: Vec<String> = w.by_version.iter().map(|(k, v)| format!("{k} {:.0}%", *v as f64 * 100.0 / w.ok.max(1) as f64)).collect();
                println!(
                    "{:>5}s  {:>7.1}  {:>7.1}%  {:>9.2}  {}",
                    started.elapsed().as_secs(),
                    total as f64 / 2.0,
                    if total == 0 { 0.0 } else { w.ok as f64 * 100.0 / total as f64 },
                    p99 as f64 / 1000.0,
                    split.join(", ")
                );
            }
        }
    }
}

async fn connect(target: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(target)).await.ok()?.ok()?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.ok()?;
    tokio::spawn(conn);
    Some(tx)
}
