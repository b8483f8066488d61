//! What the agent knows about itself, served as JSON on its local status endpoint
//! (`GET /status`; `GET /healthz/ready` answers 200 only when nothing is wrong) and printed by
//! `weft agent status`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The whole status document.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// When this document was produced.
    pub now_unix_ms: u64,
    pub started_unix_ms: u64,
    pub host: String,
    pub address: String,
    pub tenant: String,
    pub control_api: String,
    pub heartbeat_ms: u64,
    pub lease_ttl_ms: u64,
    pub services: Vec<ServiceStatus>,
    pub children: Vec<ChildStatus>,
    pub capture: CaptureStatus,
    /// Everything that makes the agent unhealthy (empty: all is well).
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// The service name (or `WorkloadGroup NAME`).
    pub name: String,
    pub namespace: String,
    /// The registered instance's name.
    pub instance: String,
    /// The service host declared, empty for WorkloadGroup registrations.
    pub host: String,
    pub ports: Vec<String>,
    pub registration: RegistrationStatus,
    pub health: HealthStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RegistrationStatus {
    /// `registering`, `registered` or `deregistered`.
    pub state: String,
    /// Store revision of the last registration.
    pub revision: u64,
    pub lease_expires_unix_ms: Option<u64>,
    pub last_renewal_unix_ms: Option<u64>,
    /// The health verdict the control plane holds.
    pub healthy_registered: Option<bool>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthStatus {
    /// `http GET ADDR/PATH`, `tcp ADDR`, `command ...`, or `none` (always healthy).
    pub check: String,
    /// None until the first check.
    pub healthy: Option<bool>,
    pub last_check_unix_ms: Option<u64>,
    /// `ok` or why the last check failed.
    pub last_result: Option<String>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ChildStatus {
    pub name: String,
    pub command: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u64,
    pub started_unix_ms: Option<u64>,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CaptureStatus {
    /// The proxy mode: `capture`, `bind` or `http-proxy` (`none` without a proxy).
    pub mode: String,
    pub enabled: bool,
    pub installed: bool,
    /// What was installed (rule mode), or the environment settings for HTTP-proxy mode.
    pub detail: Vec<String>,
    pub error: Option<String>,
}

impl AgentStatus {
    /// What is wrong, each as a sentence; computed from the document alone.
    pub fn compute_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.services {
            let r = &s.registration;
            let expired = r.lease_expires_unix_ms.is_some_and(|t| t <= self.now_unix_ms);
            if r.state != "registered" {
                out.push(format!(
                    "{}: not registered{}",
                    s.instance,
                    r.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            } else if expired {
                out.push(format!("{}: lease expired without renewal", s.instance));
            }
            if s.health.healthy == Some(false) {
                out.push(format!(
                    "{}: unhealthy ({})",
                    s.instance,
                    s.health.last_result.as_deref().unwrap_or("failing")
                ));
            }
        }
        for c in &self.children {
            if !c.running {
                out.push(format!(
                    "{}: not running{}",
                    c.name,
                    c.last_exit.as_deref().or(c.last_error.as_deref()).map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            }
        }
        if let Some(e) = &self.capture.error {
            out.push(format!("capture: {e}"));
        }
        out
    }
}

/// The live document, shared by the agent's tasks (never locked across an await).
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<AgentStatus>>);

impl Shared {
    pub fn new(s: AgentStatus) -> Shared {
        Shared(Arc::new(Mutex::new(s)))
    }

    pub fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }

    /// A copy with `now` and `problems` filled in.
    pub fn snapshot(&self) -> AgentStatus {
        let mut s = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        s.now_unix_ms = now_unix_ms();
        s.problems = s.compute_problems();
        s
    }
}

/// Serves `GET /status` and `GET /healthz/ready` until `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, status: Shared, mut stop: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "status: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = crate::stopped(&mut stop) => break,
        };
        if conns.len() >= 64 {
            continue; // a local endpoint: a handful of readers at most
        }
        let status = status.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(answer(&status, req.method(), req.uri().path())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
    conns.abort_all();
}

fn answer(status: &Shared, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (code, body) = match (method, path) {
        (&Method::GET, "/status") => {
            let s = status.snapshot();
            (StatusCode::OK, serde_json::to_vec_pretty(&s).unwrap_or_default())
        }
        (&Method::GET, "/healthz/ready") => {
            let problems = status.snapshot().problems;
            if problems.is_empty() {
                (StatusCode::OK, b"ok\n".to_vec())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", problems.join("\n")).into_bytes())
            }
        }
        _ => (StatusCode::NOT_FOUND, b"GET /status or /healthz/ready\n".to_vec()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

/// Reads the status document of the agent at `addr` (`HOST:PORT`).
pub async fn fetch(addr: &str) -> Result<AgentStatus, crate::Error> {
    use http_body_util::{BodyExt, Empty, Limited};
    let err = |m: String| crate::Error::Other(format!("agent status at {addr}: {m}"));
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| err(format!("connect: {e}")))?;
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| err(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("/status")
            .header(http::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let resp = tx.send_request(req).await.map_err(|e| err(e.to_string()))?;
        let code = resp.status();
        let body = Limited::new(resp.into_body(), 4 << 20).collect().await.map_err(|e| err(e.to_string()))?.to_bytes();
        conn.abort();
        if !code.is_success() {
            return Err(err(format!("status {code}")));
        }
        serde_json::from_slice::<AgentStatus>(&body).map_err(|e| err(format!("not a status document: {e}")))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| err("no answer within 10s".into()))?
}

/// `5s`, `3m12s`, `2h5m`: a readable span.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The document as `weft agent status` prints it.
pub fn render(s: &AgentStatus) -> String {
    let now = s.now_unix_ms;
    let mut out = format!(
        "host {} ({}), tenant {}, control plane {}, heartbeat {}, lease {}\n\n",
        s.host,
        s.address,
        s.tenant,
        s.control_api,
        span(s.heartbeat_ms),
        span(s.lease_ttl_ms)
    );
    if s.services.is_empty() {
        out.push_str("no services: nothing is registered (the host only calls the mesh)\n");
    } else {
        out.push_str(&service_tables(s));
    }
    if !s.children.is_empty() {
        out.push('\n');
        let mut rows = vec![["CHILD", "PID", "STATE", "RESTARTS", "UPTIME", "LAST EXIT"].map(String::from).to_vec()];
        for c in &s.children {
            rows.push(vec![
                c.name.clone(),
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if c.running { "running".into() } else { "DOWN".into() },
                c.restarts.to_string(),
                match (c.running, c.started_unix_ms) {
                    (true, Some(t)) => span(now.saturating_sub(t)),
                    _ => "-".into(),
                },
                c.last_exit.clone().or_else(|| c.last_error.clone()).unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&table(&rows));
    }
    let cap = &s.capture;
    out.push_str(&format!(
        "\nproxy mode {}; capture {}{}\n",
        cap.mode,
        if !cap.enabled {
            "off".to_string()
        } else if cap.installed {
            "installed".to_string()
        } else {
            "not installed".to_string()
        },
        if cap.detail.is_empty() { String::new() } else { format!(": {}", cap.detail.join(", ")) }
    ));
    if s.problems.is_empty() {
        out.push_str("\nno problems\n");
    } else {
        out.push_str("\nproblems:\n");
        for p in &s.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

/// The registration and health tables, one row per instance.
fn service_tables(s: &AgentStatus) -> String {
    let now = s.now_unix_ms;
    let ago = |t: Option<u64>| t.map(|t| format!("{} ago", span(now.saturating_sub(t)))).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    let mut rows = vec![["SERVICE", "INSTANCE", "PORTS", "REGISTRATION", "REVISION", "LEASE", "RENEWED", "LAST ERROR"]
        .map(String::from)
        .to_vec()];
    for svc in &s.services {
        let r = &svc.registration;
        let lease = match r.lease_expires_unix_ms {
            Some(t) if t > now => format!("expires in {}", span(t - now)),
            Some(_) => "expired".into(),
            None => "-".into(),
        };
        rows.push(vec![
            format!("{}.{}", svc.name, svc.namespace),
            svc.instance.clone(),
            if svc.ports.is_empty() { "-".into() } else { svc.ports.join(",") },
            r.state.clone(),
            if r.revision == 0 { "-".into() } else { r.revision.to_string() },
            lease,
            ago(r.last_renewal_unix_ms),
            match &r.last_error {
                Some(e) => format!("{e} ({} failures)", r.consecutive_failures),
                None => "-".into(),
            },
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![["INSTANCE", "HEALTH", "CHECK", "LAST CHECK", "RESULT", "IN A ROW"].map(String::from).to_vec()];
    for svc in &s.services {
        let h = &svc.health;
        rows.push(vec![
            svc.instance.clone(),
            match h.healthy {
                Some(true) => "healthy".into(),
                Some(false) => "UNHEALTHY".into(),
                None => "unknown".into(),
            },
            h.check.clone(),
            ago(h.last_check_unix_ms),
            h.last_result.clone().unwrap_or_else(|| "-".into()),
            if h.consecutive_failures > 0 {
                format!("{} failed", h.consecutive_failures)
            } else {
                format!("{} ok", h.consecutive_successes)
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(state: &str, expires: Option<u64>, healthy: Option<bool>) -> ServiceStatus {
        ServiceStatus {
            instance: "reviews-vm-1".into(),
            registration: RegistrationStatus {
                state: state.into(),
                lease_expires_unix_ms: expires,
                last_error: Some("connect: refused".into()).filter(|_| state != "registered"),
                ..Default::default()
            },
            health: HealthStatus { healthy, last_result: Some("connect: refused".into()), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn problems_name_what_is_wrong() {
        let child = |running| ChildStatus {
            name: "proxy".into(),
            running,
            last_exit: Some("signal 9".into()),
            ..Default::default()
        };
        let cases: Vec<(Vec<ServiceStatus>, Vec<ChildStatus>, Vec<&str>)> = vec![
            (vec![service("registered", Some(2000), Some(true))], vec![child(true)], vec![]),
            (vec![service("registered", None, None)], vec![], vec![]),
            (vec![service("registering", None, None)], vec![], vec!["reviews-vm-1: not registered (connect: refused)"]),
            (
                vec![service("registered", Some(1000), Some(true))],
                vec![],
                vec!["reviews-vm-1: lease expired without renewal"],
            ),
            (
                vec![service("registered", Some(2000), Some(false))],
                vec![child(false)],
                vec!["reviews-vm-1: unhealthy (connect: refused)", "proxy: not running (signal 9)"],
            ),
        ];
        for (services, children, want) in cases {
            let s = AgentStatus { now_unix_ms: 1500, services, children, ..Default::default() };
            assert_eq!(s.compute_problems(), want);
        }
    }

    #[test]
    fn the_printed_status_shows_registration_health_children_and_problems() {
        let mut s = AgentStatus {
            now_unix_ms: 100_000,
            host: "vm-1".into(),
            address: "10.0.0.5".into(),
            tenant: "default".into(),
            control_api: "127.0.0.1:15014".into(),
            heartbeat_ms: 10_000,
            lease_ttl_ms: 30_000,
            services: vec![ServiceStatus {
                name: "reviews".into(),
                namespace: "shop".into(),
                instance: "reviews-vm-1".into(),
                host: "reviews.shop.svc.cluster.local".into(),
                ports: vec!["http:9080->8080".into()],
                registration: RegistrationStatus {
                    state: "registered".into(),
                    revision: 42,
                    lease_expires_unix_ms: Some(125_000),
                    last_renewal_unix_ms: Some(95_000),
                    healthy_registered: Some(false),
                    ..Default::default()
                },
                health: HealthStatus {
                    check: "http GET 10.0.0.5:8080/health".into(),
                    healthy: Some(false),
                    last_check_unix_ms: Some(99_000),
                    last_result: Some("GET /health: status 503".into()),
                    consecutive_failures: 4,
                    ..Default::default()
                },
            }],
            children: vec![ChildStatus {
                name: "proxy".into(),
                pid: Some(4242),
                running: true,
                restarts: 1,
                started_unix_ms: Some(40_000),
                last_exit: Some("killed by signal 9".into()),
                ..Default::default()
            }],
            capture: CaptureStatus { mode: "bind".into(), ..Default::default() },
            ..Default::default()
        };
        s.problems = s.compute_problems();
        let text = render(&s);
        for want in [
            "host vm-1 (10.0.0.5), tenant default, control plane 127.0.0.1:15014, heartbeat 10s, lease 30s",
            "reviews.shop  reviews-vm-1  http:9080->8080  registered    42        expires in 25s  5s ago   -",
            "reviews-vm-1  UNHEALTHY  http GET 10.0.0.5:8080/health  1s ago      GET /health: status 503  4 failed",
            "proxy  4242  running  1         1m0s    killed by signal 9",
            "proxy mode bind; capture off",
            "problems:\n  reviews-vm-1: unhealthy (GET /health: status 503)",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn a_host_without_services_says_so_instead_of_empty_tables() {
        let s = AgentStatus {
            host: "client".into(),
            address: "10.0.0.6".into(),
            children: vec![ChildStatus { name: "dns".into(), pid: Some(7), running: true, ..Default::default() }],
            capture: CaptureStatus { mode: "capture".into(), enabled: true, installed: true, ..Default::default() },
            ..Default::default()
        };
        let text = render(&s);
        assert!(text.contains("no services: nothing is registered (the host only calls the mesh)\n"), "{text}");
        assert!(!text.contains("SERVICE") && !text.contains("INSTANCE"), "{text}");
        assert!(text.contains("dns    7    running") && text.contains("capture installed"), "{text}");
        assert!(s.compute_problems().is_empty());
    }
}
