//! Admin (`/ready`, `/stats`, `/stats/prometheus`, `/config_dump`, `/clusters`, `/listeners`,
//! `/drain`, `/logging`), the Istio-style health port (`/healthz/ready`) and metrics port.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::{ControlCmd, Shared};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Health,
    Metrics,
}

/// Serves one admin-style port until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, role: Role, shared: Arc<Shared>, ctl: mpsc::Sender<ControlCmd>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                let ctl = ctl.clone();
                async move { Ok::<_, Infallible>(handle(role, &shared, &ctl, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(300), conn).await;
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

async fn handle(
    role: Role,
    shared: &Arc<Shared>,
    ctl: &mpsc::Sender<ControlCmd>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let ready = || {
        if shared.draining.load(Relaxed) {
            text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
        } else if !shared.ready.load(Relaxed) {
            text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
        } else {
            text(StatusCode::OK, "LIVE\n")
        }
    };
    match (role, path.as_str()) {
        (Role::Health, "/healthz/ready") | (Role::Admin, "/ready") => ready(),
        (Role::Metrics, "/stats/prometheus") | (Role::Admin, "/stats/prometheus") | (Role::Admin, "/metrics") => {
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", shared.prometheus())
        }
        (Role::Admin, "/stats") => text(StatusCode::OK, shared.stats_text()),
        (Role::Admin, "/config_dump") => match shared.config_dump() {
            Ok(j) => reply(StatusCode::OK, "application/json", j),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (Role::Admin, "/clusters") => {
            if query(&req, "format") == Some("json") {
                reply(StatusCode::OK, "application/json", shared.clusters_json())
            } else {
                text(StatusCode::OK, shared.clusters_text())
            }
        }
        (Role::Admin, "/listeners") => {
            let map: serde_json::Map<String, serde_json::Value> =
                shared.listener_addrs().into_iter().map(|(n, a)| (n, serde_json::Value::String(a.to_string()))).collect();
            reply(StatusCode::OK, "application/json", serde_json::Value::Object(map).to_string())
        }
        (Role::Admin, "/drain") | (Role::Admin, "/drain_listeners") => {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
            }
            // Not ready from the moment this answers, not when the control loop gets to it.
            shared.draining.store(true, Relaxed);
            let _ = ctl.send(ControlCmd::DrainListeners).await;
            text(StatusCode::OK, "OK\n")
        }
        (Role::Admin, "/logging") => {
            let Some(level) = query(&req, "level") else {
                return text(StatusCode::OK, "usage: POST /logging?level=<filter> (e.g. info, debug, weft_proxy=trace)\n");
            };
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
            }
            match &shared.log_control {
                Some(f) => match f(level) {
                    Ok(()) => text(StatusCode::OK, format!("log level set to {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                None => text(StatusCode::NOT_IMPLEMENTED, "logging is not adjustable in this process\n"),
            }
        }
        (Role::Admin, "/") => text(
            StatusCode::OK,
            "weft proxy admin\n  /ready\n  /stats\n  /stats/prometheus\n  /config_dump\n  /clusters[?format=json]\n  /listeners\n  POST /drain\n  POST /logging?level=...\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

impl Shared {
    /// Envoy-like `name: value` lines.
    pub fn stats_text(&self) -> String {
        let snap = self.snapshot.load();
        let mut out = String::new();
        let _ = writeln!(out, "server.downstream_cx_active: {}", self.downstream_cx_active.load(Relaxed));
        let _ = writeln!(out, "server.downstream_cx_total: {}", self.metrics.downstream_cx_total.get());
        let _ = writeln!(out, "server.downstream_rq_total: {}", self.metrics.downstream_rq_total.get());
        let _ = writeln!(out, "server.config_reloads: {}", self.metrics.config_reloads_ok.get());
        let _ = writeln!(out, "server.config_reload_failures: {}", self.metrics.config_reloads_failed.get());
        let _ = writeln!(out, "server.draining: {}", u8::from(self.draining.load(Relaxed)));
        for m in self.extra_metrics() {
            // `weft_xds_updates_total{type="CDS"}` → `xds.updates_total.CDS`
            let base = m.name.strip_prefix("weft_").unwrap_or(m.name).replacen('_', ".", 1);
            let suffix: String =
                m.labels.iter().filter(|(k, _)| *k != "server").map(|(_, v)| format!(".{v}")).collect();
            let _ = writeln!(out, "{base}{suffix}: {}", m.value);
        }
        let mut names: Vec<&String> = snap.clusters.keys().collect();
        names.sort();
        for n in names {
            let s = &snap.clusters[n].stats;
            let rows: [(&str, u64); 16] = [
                ("upstream_rq_total", s.rq_total.load(Relaxed)),
                ("upstream_rq_active", s.rq_active.load(Relaxed) as u64),
                ("upstream_rq_retry", s.rq_retry.load(Relaxed)),
                ("upstream_rq_retry_success", s.rq_retry_success.load(Relaxed)),
                ("upstream_rq_retry_overflow", s.rq_retry_overflow.load(Relaxed)),
                ("upstream_rq_timeout", s.rq_timeout.load(Relaxed)),
                ("upstream_rq_pending_overflow", s.rq_overflow.load(Relaxed)),
                ("upstream_cx_active", s.cx_active.load(Relaxed) as u64),
                ("upstream_cx_total", s.cx_total.load(Relaxed)),
                ("upstream_cx_connect_fail", s.cx_connect_fail.load(Relaxed)),
                ("upstream_cx_overflow", s.cx_overflow.load(Relaxed)),
                ("outlier_detection.ejections_total", s.ejections_total.load(Relaxed)),
                ("outlier_detection.ejections_active", s.ejections_active.load(Relaxed) as u64),
                ("health_check.failure", s.hc_failures.load(Relaxed)),
                ("membership_healthy", s.membership_healthy.load(Relaxed) as u64),
                ("membership_total", s.membership_total.load(Relaxed) as u64),
            ];
            for (k, v) in rows {
                let _ = writeln!(out, "cluster.{n}.{k}: {v}");
            }
        }
        out
    }

    /// Envoy's `/clusters` text: one line per host attribute.
    pub fn clusters_text(&self) -> String {
        let snap = self.snapshot.load();
        let mut out = String::new();
        let mut names: Vec<&String> = snap.clusters.keys().collect();
        names.sort();
        for n in names {
            let c = &snap.clusters[n];
            let set = c.set.load();
            let _ = writeln!(out, "{n}::panic_mode::{}", set.balancer.in_panic());
            for h in &set.hosts {
                let a = h.addr;
                let flags = health_flags(h);
                let _ = writeln!(out, "{n}::{a}::health_flags::{flags}");
                let _ = writeln!(out, "{n}::{a}::weight::{}", h.weight);
                let _ = writeln!(out, "{n}::{a}::priority::{}", h.priority);
                let _ = writeln!(out, "{n}::{a}::rq_active::{}", h.active_requests.load(Relaxed));
                let _ = writeln!(out, "{n}::{a}::rq_total::{}", h.rq_total.load(Relaxed));
                let _ = writeln!(out, "{n}::{a}::rq_error::{}", h.rq_error.load(Relaxed));
                let _ = writeln!(out, "{n}::{a}::cx_connect_fail::{}", h.cx_connect_fail.load(Relaxed));
            }
        }
        out
    }

    pub fn clusters_json(&self) -> String {
        let snap = self.snapshot.load();
        let mut clusters: Vec<serde_json::Value> = Vec::new();
        let mut names: Vec<&String> = snap.clusters.keys().collect();
        names.sort();
        for n in names {
            let c = &snap.clusters[n];
            let set = c.set.load();
            let hosts: Vec<serde_json::Value> = set
                .hosts
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "address": h.addr.to_string(),
                        "healthy": h.healthy(),
                        "health_flags": health_flags(h),
                        "ejected": h.ejected(),
                        "weight": h.weight,
                        "priority": h.priority,
                        "rq_active": h.active_requests.load(Relaxed),
                        "rq_total": h.rq_total.load(Relaxed),
                        "rq_error": h.rq_error.load(Relaxed),
                    })
                })
                .collect();
            clusters.push(serde_json::json!({
                "name": n,
                "panic_mode": set.balancer.in_panic(),
                "priority_load": set.balancer.priority_load(),
                "hosts": hosts,
            }));
        }
        serde_json::json!({ "clusters": clusters }).to_string()
    }
}

fn health_flags(h: &crate::cluster::Host) -> String {
    let mut f: Vec<&str> = Vec::new();
    if h.hc_failed.load(Relaxed) {
        f.push("/failed_active_hc");
    }
    if h.ejected() {
        f.push("/failed_outlier_check");
    }
    if h.eds_health != weft_config::EndpointHealth::Healthy {
        f.push("/failed_eds_health");
    }
    if f.is_empty() {
        "healthy".to_string()
    } else {
        f.concat()
    }
}

/// Binds an admin-style port (fails the start when it cannot).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}
