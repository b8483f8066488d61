//! JSON-lines access log, written by its own thread through a bounded queue so a slow disk never
//! blocks a worker (lines are dropped and counted instead).

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use serde::Serialize;
use weft_config::AccessLog;

use crate::record::Record;

pub struct AccessLogger {
    tx: SyncSender<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    start_time: String,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'a str,
    response_code: u16,
    grpc_status: Option<u16>,
    response_flags: String,
    duration_ms: f64,
    upstream_host: Option<String>,
    upstream_cluster: Option<&'a str>,
    route_name: &'a str,
    bytes_received: u64,
    bytes_sent: u64,
    attempts: u32,
    x_request_id: &'a str,
    downstream_remote_address: String,
    user_agent: &'a str,
}

impl AccessLogger {
    /// None when logging is off. Fails if the log file cannot be opened.
    pub fn new(cfg: &AccessLog) -> std::io::Result<Option<AccessLogger>> {
        let out: Box<dyn Write + Send> = match cfg {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, rx) = sync_channel::<String>(16 * 1024);
        std::thread::Builder::new().name("weft-access-log".into()).spawn(move || {
            let mut w = std::io::BufWriter::new(out);
            while let Ok(line) = rx.recv() {
                let _ = w.write_all(line.as_bytes());
                // Flush whenever the queue is drained, so lines appear promptly but writes batch under load.
                while let Ok(more) = rx.try_recv() {
                    let _ = w.write_all(more.as_bytes());
                }
                let _ = w.flush();
            }
        })?;
        Ok(Some(AccessLogger { tx }))
    }

    /// Queues one line; returns false when it was dropped.
    pub fn log(&self, rec: &Record, duration_ms: f64) -> bool {
        let line = Line {
            start_time: rfc3339_now(rec),
            method: rec.method.as_str(),
            authority: &rec.authority,
            path: &rec.path,
            protocol: rec.protocol,
            response_code: rec.status,
            grpc_status: rec.grpc_status,
            response_flags: rec.flags.to_string(),
            duration_ms,
            upstream_host: rec.upstream.map(|a| a.to_string()),
            upstream_cluster: rec.cluster.as_ref().map(|c| c.cfg.name.as_str()),
            route_name: &rec.route,
            bytes_received: rec.bytes_received(),
            bytes_sent: rec.bytes_sent,
            attempts: rec.attempts,
            x_request_id: rec.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            downstream_remote_address: rec.peer.to_string(),
            user_agent: &rec.user_agent,
        };
        let Ok(mut s) = serde_json::to_string(&line) else { return false };
        s.push('\n');
        !matches!(self.tx.try_send(s), Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)))
    }
}

/// The request's start as RFC 3339 UTC with milliseconds.
fn rfc3339_now(rec: &Record) -> String {
    let now = std::time::SystemTime::now();
    let start = now.checked_sub(rec.start.elapsed()).unwrap_or(now);
    let d = start.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, (rem / 60) % 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
