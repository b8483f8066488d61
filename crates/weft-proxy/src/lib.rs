//! Weft's data plane: listeners, HTTP/1.1, HTTP/2, gRPC, WebSocket and TCP proxying, routing,
//! load balancing, retries, timeouts, circuit breaking, outlier ejection, health checks, admin,
//! metrics and access logs.
//!
//! Lifecycle: `run` starts the control runtime (admin, signals, health checks, DNS) and N worker
//! threads; a config becomes an immutable [`snapshot::Snapshot`] that is swapped atomically; SIGHUP
//! reloads (invalid config keeps the old one); SIGTERM drains and exits.
#![deny(unsafe_code)]

mod accesslog;
pub mod admin;
pub mod body;
pub mod chain;
pub mod cluster;
pub mod flags;
pub mod h1client;
mod h1codec;
pub mod h1guard;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod record;
pub mod snapshot;
pub mod tcp;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use weft_config::{Bootstrap, ProxyConfig};

use crate::accesslog::AccessLogger;
use crate::listener::ListenerManager;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::snapshot::Snapshot;

/// Changes the log filter at run time (`/logging?level=`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
/// Re-reads and validates the config (SIGHUP).
pub type Reloader = Box<dyn Fn() -> Result<Bootstrap, String> + Send + Sync>;

pub struct Options {
    /// Worker threads (Envoy's `--concurrency`).
    pub concurrency: usize,
    /// Written atomically once listening: `{"admin": ADDR, "listeners": {NAME: ADDR}}`.
    pub ready_file: Option<PathBuf>,
    pub log_control: Option<LogControl>,
    /// A dynamic config source (xDS). With one, the proxy is ready (and writes the ready file)
    /// only once the source has applied its first config.
    pub dynamic: Option<DynamicConfig>,
}

/// A dynamic source of traffic config, plugged in by the binary (weft proxy knows nothing of
/// its protocol). It runs on the control runtime and applies configs through a
/// [`ConfigHandle`], which takes the same path as a reload.
pub struct DynamicConfig {
    pub start: StartSource,
    /// Its state, shown under `"xds"` in `/config_dump`.
    pub dump: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Its metrics, added to `/stats/prometheus` and `/stats`.
    pub metrics: Arc<dyn Fn() -> Vec<ExtraMetric> + Send + Sync>,
}

/// Starts a dynamic config source: given the handle, the future that runs it.
pub type StartSource = Box<dyn FnOnce(ConfigHandle) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A metric sample from outside the proxy's registry.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraMetric {
    pub name: &'static str,
    pub help: &'static str,
    /// Counter (else gauge).
    pub counter: bool,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

/// Why a config given to [`ConfigHandle::apply`] is not running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("listener {name:?}: {message}")]
    Listener { name: String, message: String },
    #[error("the proxy is shutting down")]
    Stopped,
}

type ApplyRequest = (Arc<ProxyConfig>, oneshot::Sender<Result<(), ApplyError>>);

/// Applies configs to the running proxy from a dynamic source.
#[derive(Clone)]
pub struct ConfigHandle {
    tx: mpsc::Sender<ApplyRequest>,
}

impl ConfigHandle {
    /// Builds the snapshot, reconciles listeners and swaps, like a reload; on error nothing
    /// changes. Waits for the control loop (which also handles signals and admin commands).
    pub async fn apply(&self, config: Arc<ProxyConfig>) -> Result<(), ApplyError> {
        let (done, result) = oneshot::channel();
        self.tx.send((config, done)).await.map_err(|_| ApplyError::Stopped)?;
        result.await.unwrap_or(Err(ApplyError::Stopped))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("{what} {addr}: {source}")]
    AdminBind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("ready file {path}: {source}")]
    ReadyFile { path: String, source: std::io::Error },
}

/// Commands for the control loop (from signals and the admin API).
pub enum ControlCmd {
    DrainListeners,
}

/// Process-wide state shared by workers and the control runtime.
pub struct Shared {
    pub bootstrap: ArcSwap<Bootstrap>,
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    access_log: Option<AccessLogger>,
    pub draining: AtomicBool,
    pub ready: AtomicBool,
    drain_tx: watch::Sender<bool>,
    pub drain_rx: watch::Receiver<bool>,
    pub downstream_cx_active: AtomicU64,
    pub log_control: Option<LogControl>,
    listener_addrs: Mutex<Vec<(String, SocketAddr)>>,
    dynamic_dump: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
    dynamic_metrics: Option<Arc<dyn Fn() -> Vec<ExtraMetric> + Send + Sync>>,
}

impl Shared {
    /// The `logging` phase: metrics and the access log for one finished request.
    pub fn finish_request(&self, rec: &Record) {
        let ms = rec.start.elapsed().as_secs_f64() * 1000.0;
        self.metrics.downstream_rq_total.inc();
        self.metrics.observe(rec, ms);
        if let Some(log) = &self.access_log {
            if !log.log(rec, ms) {
                self.metrics.access_log_dropped.inc();
            }
        }
    }

    /// Whether requests are access-logged (the request path skips copying strings otherwise).
    pub fn logs_requests(&self) -> bool {
        self.access_log.is_some()
    }

    pub fn prometheus(&self) -> String {
        let snap = self.snapshot.load();
        let extra =
            [("weft_downstream_cx_active", "Open downstream connections", self.downstream_cx_active.load(Relaxed))];
        let mut more = String::new();
        if let Some(m) = &self.dynamic_metrics {
            render_extra(&mut more, &m());
        }
        self.metrics.render(&snap, &extra, &more)
    }

    /// The `/config_dump` document: node, admin, access log, traffic config, and the dynamic
    /// source's state under `"xds"`.
    pub fn config_dump(&self) -> Result<String, serde_json::Error> {
        let boot = self.bootstrap.load();
        let mut doc = serde_json::to_value(&**boot)?;
        if let (Some(dump), serde_json::Value::Object(map)) = (&self.dynamic_dump, &mut doc) {
            map.insert("xds".to_string(), dump());
        }
        serde_json::to_string_pretty(&doc)
    }

    /// The dynamic source's metrics (for `/stats`).
    pub fn extra_metrics(&self) -> Vec<ExtraMetric> {
        self.dynamic_metrics.as_ref().map(|m| m()).unwrap_or_default()
    }

    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listener_addrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs the proxy until SIGTERM/SIGINT and the drain that follows.
pub fn run(boot: Bootstrap, opts: Options, reload: Option<Reloader>) -> Result<(), ProxyError> {
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weft-control")
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    let workers = opts.concurrency.max(1);
    worker::init(control.handle().clone(), workers);
    control.block_on(run_async(boot, opts, reload, workers))
}

async fn run_async(
    boot: Bootstrap,
    mut opts: Options,
    reload: Option<Reloader>,
    workers: usize,
) -> Result<(), ProxyError> {
    let dynamic = opts.dynamic.take();
    let access_log = AccessLogger::new(&boot.access_log).map_err(ProxyError::AccessLog)?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let snap = Snapshot::build(boot.config.clone(), &Snapshot::empty()).await;
    let shared = Arc::new(Shared {
        metrics: Metrics::new(&boot.node),
        bootstrap: ArcSwap::from_pointee(boot.clone()),
        snapshot: ArcSwap::from_pointee(snap),
        access_log,
        draining: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        drain_tx,
        drain_rx,
        downstream_cx_active: AtomicU64::new(0),
        log_control: opts.log_control.clone(),
        listener_addrs: Mutex::new(Vec::new()),
        dynamic_dump: dynamic.as_ref().map(|d| d.dump.clone()),
        dynamic_metrics: dynamic.as_ref().map(|d| d.metrics.clone()),
    });

    // Admin-style ports first, so a bad admin address fails the start before traffic flows.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlCmd>(16);
    let mut admin_addr = None;
    for (what, addr, role) in [
        ("admin address", boot.admin.address, admin::Role::Admin),
        ("health address", boot.admin.health_address, admin::Role::Health),
        ("metrics address", boot.admin.metrics_address, admin::Role::Metrics),
    ] {
        let Some(addr) = addr else { continue };
        let l = admin::bind(addr).map_err(|e| ProxyError::AdminBind { what, addr, source: e })?;
        let local = l.local_addr().unwrap_or(addr);
        if role == admin::Role::Admin {
            admin_addr = Some(local);
        }
        let l = tokio::net::TcpListener::from_std(l).map_err(ProxyError::Runtime)?;
        tokio::spawn(admin::serve(l, role, shared.clone(), ctl_tx.clone()));
    }

    // Workers: one single-threaded runtime each.
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for i in 0..workers {
        let (tx, rx) = mpsc::channel(64);
        senders.push(tx);
        let shared = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("weft-worker-{i}"))
            .spawn(move || {
                worker::set_current(i + 1);
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(listener::worker_main(shared, rx)),
                    Err(e) => tracing::error!(error = %e, "worker runtime failed to start"),
                }
            })
            .map_err(ProxyError::Runtime)?;
        threads.push(t);
    }
    let mut listeners = ListenerManager::new(senders);
    listeners.reconcile(&boot.config.listeners).await?;
    *shared.listener_addrs.lock().unwrap_or_else(|e| e.into_inner()) = listeners.addresses();
    // With a dynamic source, readiness waits for its first config.
    let (apply_tx, mut apply_rx) = mpsc::channel::<ApplyRequest>(1);
    match dynamic {
        None => {
            drop(apply_tx);
            shared.ready.store(true, Relaxed);
            if let Some(path) = &opts.ready_file {
                write_ready_file(path, admin_addr, &listeners.addresses())?;
            }
            tracing::info!(workers, version = %boot.config.version, "weft proxy ready");
        }
        Some(d) => {
            tokio::spawn((d.start)(ConfigHandle { tx: apply_tx }));
            tracing::info!(workers, "weft proxy started; waiting for its first dynamic config");
        }
    }

    let mut hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(ProxyError::Runtime)?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ProxyError::Runtime)?;
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(ProxyError::Runtime)?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let Some(reload) = &reload else { continue };
                match reload() {
                    Ok(new) => match apply(&shared, &mut listeners, new.config.clone()).await {
                        Ok(()) => {
                            let mut b = (**shared.bootstrap.load()).clone();
                            b.config = new.config;
                            shared.bootstrap.store(Arc::new(b));
                            if let Some(path) = &opts.ready_file {
                                let _ = write_ready_file(path, admin_addr, &listeners.addresses());
                            }
                        }
                        Err(e) => {
                            shared.metrics.config_reloads_failed.inc();
                            tracing::error!(error = %e, "config reload failed; the previous config keeps running");
                        }
                    },
                    Err(e) => {
                        shared.metrics.config_reloads_failed.inc();
                        tracing::error!(error = %e, "config reload rejected; the previous config keeps running");
                    }
                }
            }
            Some((config, done)) = apply_rx.recv() => {
                let result = match apply(&shared, &mut listeners, config.clone()).await {
                    Ok(()) => {
                        let mut b = (**shared.bootstrap.load()).clone();
                        b.config = config;
                        shared.bootstrap.store(Arc::new(b));
                        if let Some(path) = &opts.ready_file {
                            if let Err(e) = write_ready_file(path, admin_addr, &listeners.addresses()) {
                                tracing::error!(error = %e, "cannot write the ready file");
                            }
                        }
                        if !shared.ready.swap(true, Relaxed) {
                            tracing::info!(workers, "weft proxy ready");
                        }
                        Ok(())
                    }
                    Err(e) => {
                        shared.metrics.config_reloads_failed.inc();
                        Err(ApplyError::Listener { name: e.name.clone(), message: format!("cannot listen on {}: {}", e.addr, e.source) })
                    }
                };
                let _ = done.send(result);
            }
            Some(cmd) = ctl_rx.recv() => match cmd {
                ControlCmd::DrainListeners => {
                    shared.draining.store(true, Relaxed);
                    listeners.stop_all();
                    tracing::info!("listeners drained by admin request");
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    // Drain: stop accepting, ask connections to finish (Connection: close / GOAWAY), wait.
    let drain_timeout = boot.admin.drain_timeout;
    tracing::info!(timeout_ms = drain_timeout.as_millis() as u64, "draining");
    shared.draining.store(true, Relaxed);
    listeners.stop_all();
    let _ = shared.drain_tx.send(true);
    let deadline = Instant::now() + drain_timeout;
    while shared.downstream_cx_active.load(Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.downstream_cx_active.load(Relaxed);
    tracing::info!(connections_left = left, "drained; exiting");
    drop(listeners);
    Ok(())
}

/// Validated config → new snapshot → listeners reconciled → swap. On error nothing changes.
async fn apply(
    shared: &Arc<Shared>,
    listeners: &mut ListenerManager,
    config: Arc<ProxyConfig>,
) -> Result<(), listener::BindError> {
    let old = shared.snapshot.load_full();
    let snap = Snapshot::build(config.clone(), &old).await;
    // Swap before binding new listeners so their first connection sees the new snapshot;
    // restore the old one if binding fails.
    shared.snapshot.store(Arc::new(snap));
    // After `/drain` the listeners stay closed; the new config still applies to open connections.
    if shared.draining.load(Relaxed) {
        shared.metrics.config_reloads_ok.inc();
        return Ok(());
    }
    if let Err(e) = listeners.reconcile(&config.listeners).await {
        shared.snapshot.store(old);
        return Err(e);
    }
    *shared.listener_addrs.lock().unwrap_or_else(|e| e.into_inner()) = listeners.addresses();
    shared.metrics.config_reloads_ok.inc();
    tracing::info!(version = %config.version, "config applied");
    Ok(())
}

fn write_ready_file(
    path: &std::path::Path,
    admin: Option<SocketAddr>,
    listeners: &[(String, SocketAddr)],
) -> Result<(), ProxyError> {
    let map: serde_json::Map<String, serde_json::Value> =
        listeners.iter().map(|(n, a)| (n.clone(), serde_json::Value::String(a.to_string()))).collect();
    let body =
        serde_json::json!({ "admin": admin.map(|a| a.to_string()), "listeners": map, "pid": std::process::id() });
    let tmp = path.with_extension("tmp");
    let err = |e| ProxyError::ReadyFile { path: path.display().to_string(), source: e };
    std::fs::write(&tmp, body.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Prometheus text for samples from outside the registry, grouped by name.
fn render_extra(out: &mut String, samples: &[ExtraMetric]) {
    use std::fmt::Write as _;
    let mut seen: Vec<&str> = Vec::new();
    for m in samples {
        if seen.contains(&m.name) {
            continue;
        }
        seen.push(m.name);
        let kind = if m.counter { "counter" } else { "gauge" };
        // OpenMetrics names a counter family without its `_total` suffix.
        let family = if m.counter { m.name.strip_suffix("_total").unwrap_or(m.name) } else { m.name };
        let _ = writeln!(out, "# HELP {family} {}\n# TYPE {family} {kind}", m.help);
        for s in samples.iter().filter(|s| s.name == m.name) {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", s.name, s.value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", s.name, labels.join(","), s.value);
            }
        }
    }
}
