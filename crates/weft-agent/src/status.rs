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
}
