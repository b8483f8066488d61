//! Health checks of the host's services: HTTP, TCP or a command, every `interval`, each under
//! its `timeout`; the verdict flips only after the configured number of consecutive results.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::config::{HealthCheck, Probe};
use crate::status::{now_unix_ms, Shared};

/// The verdict from consecutive results. The first result decides at once (a service that
/// answers is healthy from its first check, one that does not is unhealthy); afterwards a healthy
/// service turns unhealthy after `unhealthy_threshold` failures in a row, an unhealthy one
/// healthy after `healthy_threshold` successes in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    pub state: Option<bool>,
    pub successes: u32,
    pub failures: u32,
}

impl Tracker {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Tracker {
        Tracker {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            state: None,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; returns the new verdict when it changed (including the first).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match self.state {
            None => Some(ok),
            Some(true) if !ok && self.failures >= self.unhealthy_threshold => Some(false),
            Some(false) if ok && self.successes >= self.healthy_threshold => Some(true),
            _ => None,
        };
        if next.is_some() {
            self.state = next;
        }
        next
    }
}

/// How the check reads in the status (`http GET 10.0.0.5:8080/health`).
pub fn describe(check: Option<&HealthCheck>) -> String {
    match check.map(|c| &c.probe) {
        None => "none".into(),
        Some(Probe::Http { address, path }) => format!("http GET {address}{path}"),
        Some(Probe::Tcp { address }) => format!("tcp {address}"),
        Some(Probe::Command(argv)) => format!("command {}", argv.join(" ")),
    }
}

/// Runs one probe under `timeout`: Ok, or why it failed.
pub async fn probe(p: &Probe, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(p)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", crate::config::fmt_duration(timeout))),
    }
}

async fn probe_inner(p: &Probe) -> Result<(), String> {
    match p {
        Probe::Tcp { address } => {
            tokio::net::TcpStream::connect(address).await.map(|_| ()).map_err(|e| format!("connect {address}: {e}"))
        }
        Probe::Http { address, path } => {
            let stream =
                tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
            let conn = tokio::spawn(conn);
            let req = http::Request::builder()
                .uri(path.as_str())
                .header(http::header::HOST, address.to_string())
                .header(http::header::USER_AGENT, "weft-agent-health")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            let resp = tx.send_request(req).await.map_err(|e| format!("GET {path}: {e}"));
            conn.abort();
            let status = resp?.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("GET {path}: status {}", status.as_u16()))
            }
        }
        Probe::Command(argv) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
            let status = cmd.status().await.map_err(|e| format!("{}: {e}", argv[0]))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{} exited with {status}", argv[0]))
            }
        }
    }
}

/// Checks forever (until `stop`), publishing each verdict change on `verdict` and every result
/// in the status of service `index`.
pub async fn run(
    check: HealthCheck,
    verdict: watch::Sender<Option<bool>>,
    status: Shared,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut tracker = Tracker::new(check.healthy_threshold, check.unhealthy_threshold);
    loop {
        let result = probe(&check.probe, check.timeout).await;
        let changed = tracker.record(result.is_ok());
        let message = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        status.update(|s| {
            if let Some(svc) = s.services.get_mut(index) {
                let h = &mut svc.health;
                h.healthy = tracker.state;
                h.last_check_unix_ms = Some(now_unix_ms());
                h.last_result = Some(message.clone());
                h.consecutive_successes = tracker.successes;
                h.consecutive_failures = tracker.failures;
            }
        });
        if let Some(healthy) = changed {
            if healthy {
                tracing::info!(service = index, "health check passes; instance healthy");
            } else {
                tracing::warn!(service = index, reason = %message, "health check fails; instance unhealthy");
            }
            verdict.send_replace(Some(healthy));
        }
        tokio::select! {
            _ = tokio::time::sleep(check.interval) => {}
            _ = crate::stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_thresholds() {
        // (healthy_threshold, unhealthy_threshold, results, verdict changes)
        let cases: Vec<(u32, u32, &str, Vec<Option<bool>>)> = vec![
            (1, 3, "+", vec![Some(true)]),
            (1, 3, "-", vec![Some(false)]),
            (1, 3, "+--", vec![Some(true), None, None]),
            (1, 3, "+---", vec![Some(true), None, None, Some(false)]),
            (1, 3, "+--+---", vec![Some(true), None, None, None, None, None, Some(false)]),
            (2, 1, "+-+-++", vec![Some(true), Some(false), None, None, None, Some(true)]),
            (1, 1, "-+-", vec![Some(false), Some(true), Some(false)]),
        ];
        for (ht, ut, results, want) in cases {
            let mut t = Tracker::new(ht, ut);
            let got: Vec<Option<bool>> = results.chars().map(|c| t.record(c == '+')).collect();
            assert_eq!(got, want, "healthy {ht}, unhealthy {ut}, results {results}");
        }
    }

    #[tokio::test]
    async fn probes_report_success_and_why_they_fail() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let code = if req.uri().path() == "/ok" { 200 } else { 503 };
                        let mut r = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                });
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(probe(&Probe::Tcp { address: open }, t).await, Ok(()));
        assert!(probe(&Probe::Tcp { address: closed }, t).await.unwrap_err().starts_with(&format!("connect {closed}")));
        assert_eq!(probe(&Probe::Http { address: open, path: "/ok".into() }, t).await, Ok(()));
        assert_eq!(
            probe(&Probe::Http { address: open, path: "/down".into() }, t).await,
            Err("GET /down: status 503".into())
        );
        assert_eq!(probe(&Probe::Command(vec!["true".into()]), t).await, Ok(()));
        assert!(probe(&Probe::Command(vec!["false".into()]), t).await.unwrap_err().starts_with("false exited with"));
        assert_eq!(
            probe(&Probe::Command(vec!["sleep".into(), "5".into()]), Duration::from_millis(100)).await,
            Err("no answer within 100ms".into())
        );
    }
}
