//! `weft agent`: a VM or bare-metal host joins the mesh.
//!
//! ```text
//!  agent.yaml ──► config (validated) ──► Agent::start
//!                                          ├─ status endpoint (127.0.0.1:15020, GET /status)
//!                                          ├─ capture rules (capture mode)
//!                                          ├─ supervise: weft proxy --xds ..., weft dns --xds ...
//!                                          ├─ per service: health check ──verdict──► registration
//!                                          │      PUT /v1/instances/NS/NAME (lease), renew every
//!                                          │      heartbeat, PUT again on a health change
//!                                          └─ WorkloadGroup: read the template, then the same
//!  SIGTERM ──► Agent::stop: deregister (DELETE) ► stop children (SIGTERM, drain) ► remove capture
//! ```
//!
//! Everything that talks to the network retries with bounded, jittered backoff and never gives
//! up while the agent runs; the proxy and DNS keep serving their last config meanwhile.
//! docs/agent.md describes the file and the behaviour.

#![deny(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod capture;
pub mod config;
pub mod health;
pub mod instance;
pub mod register;
pub mod status;
pub mod supervise;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::config::{AgentConfig, ProxyMode};
use crate::status::{AgentStatus, ChildStatus, ServiceStatus, Shared};
use crate::supervise::ChildSpec;

pub use crate::config::{ConfigError, ConfigErrors};

/// How long deregistration may take on stop (all instances at once).
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("control plane API {addr}: {message}")]
    Api { addr: String, message: String },
    #[error("state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("status.listen {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("proxy.uid {uid}: {reason}")]
    ProxyUid { uid: u32, reason: String },
    #[error("capture: {0}")]
    Capture(String),
    #[error("{0}")]
    Other(String),
}

/// Run-time settings that are not in the file.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `weft` binary started as `weft proxy` and `weft dns` (the file's `weftBinary` wins).
    pub weft_binary: PathBuf,
}

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    api: Api,
    status: Shared,
    status_addr: SocketAddr,
    /// Stops registrations, health checks and WorkloadGroup lookups.
    stop_work: watch::Sender<bool>,
    /// Stops the children.
    stop_children: watch::Sender<bool>,
    /// Stops the status endpoint.
    stop_status: watch::Sender<bool>,
    work: Vec<JoinHandle<()>>,
    children: Vec<JoinHandle<()>>,
    status_task: JoinHandle<()>,
    /// (namespace, name) of every instance this agent registers.
    instances: Vec<(String, String)>,
}

impl Agent {
    /// Prepares the state directory, binds the status endpoint, starts the children and begins
    /// registering. Fails only on local problems (state directory, status address, proxy uid);
    /// an unreachable control plane is retried in the background.
    pub async fn start(config: AgentConfig, opts: Options) -> Result<Agent, Error> {
        let weft = config.weft_binary.clone().unwrap_or(opts.weft_binary);
        let state_dir = config.state_dir.clone();
        create_dir(&state_dir)?;
        let proxy_uid = proxy_uid(&config)?;
        let listener = tokio::net::TcpListener::bind(config.status_listen)
            .await
            .map_err(|source| Error::Bind { addr: config.status_listen, source })?;
        let status_addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.status_listen, source })?;

        let mut children = Vec::new();
        if config.proxy.enabled {
            children.push(proxy_spec(&config, &weft, proxy_uid)?);
        }
        if config.dns.enabled {
            children.push(dns_spec(&config, &weft, proxy_uid)?);
        }
        let status = Shared::new(initial_status(&config, &children));
        let api = Api::new(config.control.api.clone());
        if config.capture.enabled {
            install_capture(&config, &status).await?;
        }

        let (stop_status, status_rx) = watch::channel(false);
        let status_task = tokio::spawn(status::serve(listener, status.clone(), status_rx));
        let (stop_children, children_rx) = watch::channel(false);
        let children = children
            .into_iter()
            .enumerate()
            .map(|(i, spec)| tokio::spawn(supervise::run(spec, status.clone(), i, children_rx.clone())))
            .collect();

        let (stop_work, work_rx) = watch::channel(false);
        let mut work = Vec::new();
        let mut instances = Vec::new();
        for (i, svc) in config.services.iter().enumerate() {
            let inst = instance::for_service(svc, &config.host, config.lease_ttl, true);
            instances.push((inst.namespace.clone(), inst.name.clone()));
            let health = spawn_health(svc.health_check.clone(), &status, i, &work_rx, &mut work);
            let reg = register::Registration {
                api: api.clone(),
                instance: inst,
                lease_ttl: config.lease_ttl,
                heartbeat: config.heartbeat,
                health,
                status: status.clone(),
                index: i,
            };
            work.push(tokio::spawn(reg.run(work_rx.clone())));
        }
        if let Some(group) = &config.workload_group {
            let index = config.services.len();
            instances.push((config.host.namespace.clone(), instance::instance_name(group, &config.host)));
            work.push(tokio::spawn(group_registration(
                config.clone(),
                group.clone(),
                api.clone(),
                status.clone(),
                index,
                work_rx.clone(),
            )));
        }
        tracing::info!(
            status = %status_addr,
            control = %config.control.api,
            services = config.services.len(),
            workload_group = config.workload_group.as_deref().unwrap_or(""),
            "agent started"
        );
        Ok(Agent {
            config,
            api,
            status,
            status_addr,
            stop_work,
            stop_children,
            stop_status,
            work,
            children,
            status_task,
            instances,
        })
    }

    /// Where the status endpoint listens.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    pub fn status(&self) -> AgentStatus {
        self.status.snapshot()
    }

    /// The ready file the supervised proxy writes (its admin and listener addresses).
    pub fn proxy_ready_file(&self) -> PathBuf {
        proxy_dir(&self.config).join("ready.json")
    }

    /// The ready file the supervised `weft dns` writes.
    pub fn dns_ready_file(&self) -> PathBuf {
        dns_dir(&self.config).join("ready.json")
    }

    /// Deregisters every instance, stops the children (they drain), and stops serving status.
    pub async fn stop(self) {
        let _ = self.stop_work.send(true);
        for t in self.work {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
                abort.abort();
            }
        }
        let deletes = self.instances.iter().cloned().map(|(ns, name)| {
            let api = self.api.clone();
            async move {
                let result = tokio::time::timeout(DEREGISTER_TIMEOUT, api.delete_instance(&ns, &name)).await;
                (ns, name, result)
            }
        });
        for (ns, name, result) in futures_join(deletes).await {
            match result {
                Ok(Ok(true)) => tracing::info!(instance = %format!("{ns}/{name}"), "deregistered"),
                Ok(Ok(false)) => tracing::info!(instance = %format!("{ns}/{name}"), "was not registered"),
                Ok(Err(e)) => {
                    tracing::warn!(instance = %format!("{ns}/{name}"), error = %e, "deregistration failed; the lease will expire")
                }
                Err(_) => {
                    tracing::warn!(instance = %format!("{ns}/{name}"), "deregistration timed out; the lease will expire")
                }
            }
        }
        self.status.update(|s| {
            for svc in &mut s.services {
                svc.registration.state = "deregistered".into();
                svc.registration.lease_expires_unix_ms = None;
            }
        });
        let _ = self.stop_children.send(true);
        for t in self.children {
            let _ = t.await;
        }
        if self.config.capture.enabled {
            uninstall_capture(&self.status).await;
        }
        let _ = self.stop_status.send(true);
        let _ = self.status_task.await;
        tracing::info!("agent stopped");
    }
}

/// Resolves once `stop` says true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Installs the capture rules (before the children start, as Istio's init container does); on
/// failure weft-capture has changed nothing and the agent does not start.
async fn install_capture(config: &AgentConfig, status: &Shared) -> Result<(), Error> {
    let plan = capture::plan(config).map_err(Error::Capture)?;
    let installed = tokio::task::spawn_blocking(move || weft_capture::install(&plan))
        .await
        .map_err(|e| Error::Capture(format!("install task: {e}")))?
        .map_err(|e| Error::Capture(e.to_string()))?;
    for w in &installed.warnings {
        tracing::warn!(warning = %w, "capture installed with a warning");
    }
    let mut detail = vec![format!("{} rules{}", installed.mode, if installed.ipv6 { " (IPv4 and IPv6)" } else { "" })];
    detail.extend(installed.routes.iter().map(|r| format!("local route {r}")));
    tracing::info!(mode = %installed.mode, replaced = installed.replaced, "capture installed");
    status.update(|s| {
        s.capture.installed = true;
        s.capture.detail = detail;
    });
    Ok(())
}

async fn uninstall_capture(status: &Shared) {
    match tokio::task::spawn_blocking(weft_capture::uninstall).await {
        Ok(Ok(removed)) => {
            tracing::info!(empty = removed.is_empty(), "capture removed");
            status.update(|s| s.capture.installed = false);
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "capture could not be removed completely");
            status.update(|s| s.capture.error = Some(e.to_string()));
        }
        Err(e) => tracing::error!(error = %e, "capture removal task failed"),
    }
}

/// Awaits all futures concurrently (they are few: one per instance).
async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<JoinHandle<F::Output>> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Starts the health check of service `index` (if any) and returns its verdict channel; without
/// a check the verdict is healthy from the start.
fn spawn_health(
    check: Option<config::HealthCheck>,
    status: &Shared,
    index: usize,
    stop: &watch::Receiver<bool>,
    work: &mut Vec<JoinHandle<()>>,
) -> watch::Receiver<Option<bool>> {
    match check {
        None => {
            let (tx, rx) = watch::channel(Some(true));
            // The sender lives as long as the receiver needs it: leaked into a task that ends on stop.
            let mut stop = stop.clone();
            work.push(tokio::spawn(async move {
                let _keep = tx;
                crate::stopped(&mut stop).await;
            }));
            rx
        }
        Some(check) => {
            let (tx, rx) = watch::channel(None);
            work.push(tokio::spawn(health::run(check, tx, status.clone(), index, stop.clone())));
            rx
        }
    }
}

/// Reads the WorkloadGroup (retrying until the control plane has it), then checks and registers
/// like a service.
async fn group_registration(
    config: AgentConfig,
    group: String,
    api: Api,
    status: Shared,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let ns = config.host.namespace.clone();
    let mut backoff = backoff::Backoff::new(register::RETRY_INITIAL, register::RETRY_MAX.min(config.heartbeat));
    let template = loop {
        let problem = match api.get_resource("WorkloadGroup", &ns, &group).await {
            Ok(Some(r)) => match instance::parse_group(&r.body, config.host.address) {
                Ok(t) => break t,
                Err(e) => format!("WorkloadGroup {ns}/{group}: {e}"),
            },
            Ok(None) => format!("WorkloadGroup {ns}/{group} not found"),
            Err(e) => e.to_string(),
        };
        status.update(|s| {
            if let Some(r) = s.services.get_mut(index).map(|s| &mut s.registration) {
                r.last_error = Some(problem.clone());
                r.consecutive_failures += 1;
            }
        });
        let delay = backoff.next_delay();
        tracing::warn!(error = %problem, retry_ms = delay.as_millis() as u64, "cannot read the WorkloadGroup yet");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = crate::stopped(&mut stop) => return,
        }
    };
    let inst = instance::for_group(&group, &template, &config.host, config.lease_ttl, true);
    status.update(|s| {
        if let Some(svc) = s.services.get_mut(index) {
            svc.ports = inst.ports.iter().map(|(n, p)| format!("{n}:{p}")).collect();
            svc.health.check = health::describe(template.health_check.as_ref());
        }
    });
    let mut tasks = Vec::new();
    let health = spawn_health(template.health_check.clone(), &status, index, &stop, &mut tasks);
    let reg = register::Registration {
        api,
        instance: inst,
        lease_ttl: config.lease_ttl,
        heartbeat: config.heartbeat,
        health,
        status,
        index,
    };
    reg.run(stop.clone()).await;
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), t).await.is_err() {
            abort.abort();
        }
    }
}

fn initial_status(config: &AgentConfig, children: &[ChildSpec]) -> AgentStatus {
    let mut services: Vec<ServiceStatus> = config
        .services
        .iter()
        .map(|s| ServiceStatus {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            instance: instance::instance_name(&s.name, &config.host),
            host: s.host(),
            ports: s
                .ports
                .iter()
                .map(|p| {
                    if p.target_port == p.number {
                        format!("{}:{}", p.name, p.number)
                    } else {
                        format!("{}:{}->{}", p.name, p.number, p.target_port)
                    }
                })
                .collect(),
            registration: status::RegistrationStatus { state: "registering".into(), ..Default::default() },
            health: status::HealthStatus { check: health::describe(s.health_check.as_ref()), ..Default::default() },
        })
        .collect();
    if let Some(g) = &config.workload_group {
        services.push(ServiceStatus {
            name: format!("WorkloadGroup {g}"),
            namespace: config.host.namespace.clone(),
            instance: instance::instance_name(g, &config.host),
            registration: status::RegistrationStatus { state: "registering".into(), ..Default::default() },
            health: status::HealthStatus { check: "none".into(), ..Default::default() },
            ..Default::default()
        });
    }
    for s in services.iter_mut().filter(|s| s.health.check == "none") {
        s.health.healthy = Some(true);
        s.health.last_result = Some("no health check".into());
    }
    let mode = if config.proxy.enabled { config.proxy.mode.as_str() } else { "none" };
    let mut detail = Vec::new();
    if config.proxy.enabled && config.proxy.mode == ProxyMode::HttpProxy {
        detail = http_proxy_env(config);
    }
    AgentStatus {
        started_unix_ms: status::now_unix_ms(),
        host: config.host.name.clone(),
        address: config.host.address.to_string(),
        tenant: config.host.tenant.clone(),
        control_api: config.control.api.clone(),
        heartbeat_ms: config.heartbeat.as_millis() as u64,
        lease_ttl_ms: config.lease_ttl.as_millis() as u64,
        services,
        children: children
            .iter()
            .map(|c| ChildStatus { name: c.name.clone(), command: c.command_line(), ..Default::default() })
            .collect(),
        capture: status::CaptureStatus {
            mode: mode.into(),
            enabled: config.capture.enabled,
            installed: false,
            detail,
            error: None,
        },
        ..Default::default()
    }
}

/// The environment applications on the host use in HTTP-proxy mode.
pub fn http_proxy_env(config: &AgentConfig) -> Vec<String> {
    let proxy = format!("http://127.0.0.1:{}", config.proxy.http_proxy_port);
    let control_host = config.control.api.rsplit_once(':').map(|(h, _)| h).unwrap_or(&config.control.api);
    vec![
        format!("HTTP_PROXY={proxy}"),
        format!("HTTPS_PROXY={proxy}"),
        format!("NO_PROXY=localhost,127.0.0.1,::1,{}", control_host.trim_matches(['[', ']'])),
    ]
}

fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::StateDir { path: path.to_path_buf(), source })
}

fn proxy_dir(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("proxy")
}

fn dns_dir(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("dns")
}

/// The uid children run as: the proxy uid in capture mode, else none (the agent's own). Running
/// as another uid needs root; nothing is created on the host (no user account is needed).
fn proxy_uid(config: &AgentConfig) -> Result<Option<u32>, Error> {
    if !config.proxy.enabled || config.proxy.mode != ProxyMode::Capture {
        return Ok(None);
    }
    let uid = config.proxy.uid;
    let me = current_uid();
    if uid == me {
        return Ok(None);
    }
    if me != 0 {
        return Err(Error::ProxyUid {
            uid,
            reason: format!(
                "the agent runs as uid {me}; starting the proxy as another uid needs root (run the agent as root, or set proxy.uid to {me} and exclude that uid from capture)"
            ),
        });
    }
    if uid == 0 {
        return Err(Error::ProxyUid {
            uid,
            reason: "the proxy must not run as root in capture mode: its traffic would be exempt only by uid 0, as every root process's".into(),
        });
    }
    Ok(Some(uid))
}

fn current_uid() -> u32 {
    // /proc/self/status `Uid:` line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).and_then(|e| e.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// Istio's node id of this host's proxy: `sidecar~ADDRESS~HOSTNAME.NAMESPACE~NAMESPACE.svc.cluster.local`.
pub fn node_id(config: &AgentConfig) -> String {
    let h = &config.host;
    format!("sidecar~{}~{}.{}~{}.svc.cluster.local", h.address, h.name, h.namespace, h.namespace)
}

/// The proxy's labels: `host.labels`, else the first service's.
pub fn proxy_labels(config: &AgentConfig) -> Vec<String> {
    let labels = if !config.host.labels.is_empty() {
        &config.host.labels
    } else {
        match config.services.first() {
            Some(s) => &s.labels,
            None => &config.host.labels,
        }
    };
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn prepare_child_dir(dir: &Path, uid: Option<u32>) -> Result<(), Error> {
    create_dir(dir)?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))
            .map_err(|source| Error::StateDir { path: dir.to_path_buf(), source })?;
    }
    Ok(())
}

fn proxy_spec(config: &AgentConfig, weft: &Path, uid: Option<u32>) -> Result<ChildSpec, Error> {
    let dir = proxy_dir(config);
    prepare_child_dir(&dir, uid)?;
    let boot = dir.join("boot.yaml");
    let text = format!("# Written by weft agent at every start.\nadmin: {{ address: \"{}\" }}\n", config.proxy.admin);
    std::fs::write(&boot, text).map_err(|source| Error::StateDir { path: boot.clone(), source })?;
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut args = vec![
        "proxy".to_string(),
        "--config".into(),
        boot.display().to_string(),
        "--xds".into(),
        config.control.xds.clone().unwrap_or_default(),
        "--node-id".into(),
        node_id(config),
        "--namespace".into(),
        config.host.namespace.clone(),
        "--tenant".into(),
        config.host.tenant.clone(),
        "--instance-ips".into(),
        config.host.address.to_string(),
        "--concurrency".into(),
        config.proxy.concurrency.to_string(),
        "--ready-file".into(),
        ready.display().to_string(),
        // The last applied config, served after a restart until the control plane answers.
        "--xds-cache".into(),
        dir.join("xds-cache").display().to_string(),
    ];
    let labels = proxy_labels(config);
    if !labels.is_empty() {
        args.push("--labels".into());
        args.push(labels.join(","));
    }
    if config.proxy.mode == ProxyMode::HttpProxy {
        args.push("--http-proxy-port".into());
        args.push(config.proxy.http_proxy_port.to_string());
    }
    Ok(ChildSpec { name: "proxy".into(), program: weft.to_path_buf(), args, uid })
}

fn dns_spec(config: &AgentConfig, weft: &Path, uid: Option<u32>) -> Result<ChildSpec, Error> {
    let dir = dns_dir(config);
    prepare_child_dir(&dir, uid)?;
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut args = vec![
        "dns".to_string(),
        "--listen".into(),
        config.dns.listen.to_string(),
        "--admin".into(),
        config.dns.admin.to_string(),
        "--xds".into(),
        config.control.xds.clone().unwrap_or_default(),
        "--node-id".into(),
        node_id(config),
        "--namespace".into(),
        config.host.namespace.clone(),
        "--tenant".into(),
        config.host.tenant.clone(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--ready-file".into(),
        ready.display().to_string(),
    ];
    let labels = proxy_labels(config);
    if !labels.is_empty() {
        args.push("--labels".into());
        args.push(labels.join(","));
    }
    if !config.dns.upstreams.is_empty() {
        args.push("--upstream".into());
        args.push(config.dns.upstreams.join(","));
    }
    Ok(ChildSpec { name: "dns".into(), program: weft.to_path_buf(), args, uid })
}
