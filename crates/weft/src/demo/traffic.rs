//! The demo's client (steady HTTP and gRPC calls through its sidecar) and the live summary,
//! computed from the client sidecar's Prometheus metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::backend;

/// Calls that failed in the client itself (no connection, timeout): the sidecar never saw them.
#[derive(Default)]
pub struct ClientErrors {
    pub http: AtomicU64,
    pub grpc: AtomicU64,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `rps` HTTP requests per second to `reviews` through the sidecar at `target` until `stop`.
pub async fn http_load(
    target: SocketAddr,
    authority: String,
    rps: u32,
    stop: Arc<AtomicBool>,
    errors: Arc<ClientErrors>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect_h1(target).await;
        }
        let Some(tx) = sender.as_mut() else {
            errors.http.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if tokio::time::timeout(CALL_TIMEOUT, tx.ready()).await.map_or(true, |r| r.is_err()) {
            sender = None;
            errors.http.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        n += 1;
        let req = hyper::Request::get(format!("/reviews/{}", n % 100))
            .header(http::header::HOST, authority.as_str())
            .body(Full::new(Bytes::new()));
        let Ok(req) = req else { continue };
        let fut = tx.send_request(req);
        let errors = errors.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(Ok(resp)) => {
                    let _ = tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect()).await;
                }
                _ => {
                    errors.http.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

async fn connect_h1(target: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(target)).await.ok()?.ok()?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// Sends `rps` unary gRPC calls per second to `ratings` through the sidecar at `target` (h2c).
pub async fn grpc_load(
    target: SocketAddr,
    authority: String,
    rps: u32,
    stop: Arc<AtomicBool>,
    errors: Arc<ClientErrors>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>> = None;
    let body = backend::grpc_frame(&backend::reply_message("productpage"));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect_h2(target).await;
        }
        let Some(tx) = sender.as_mut() else {
            errors.grpc.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let req = hyper::Request::post(format!("http://{authority}/demo.Ratings/Get"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("grpc-timeout", "2S")
            .body(Full::new(body.clone()));
        let Ok(req) = req else { continue };
        let fut = tx.send_request(req);
        let errors = errors.clone();
        tokio::spawn(async move {
            let ok = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(Ok(resp)) => {
                    tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect()).await.is_ok_and(|b| b.is_ok())
                }
                _ => false,
            };
            if !ok {
                errors.grpc.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

async fn connect_h2(target: SocketAddr) -> Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(target)).await.ok()?.ok()?;
    let (tx, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(s)).await.ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus' text format (comments skipped; malformed lines ignored).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            return Some(Sample { name: name.to_string(), labels: BTreeMap::new(), value });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
            chars.next();
        }
        let (start, c) = chars.next()?;
        if c == '}' {
            let value = rest[start + 1..].split_whitespace().next()?.parse().ok()?;
            return Some(Sample { name: name.to_string(), labels, value });
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].trim().to_string();
        while chars.peek().is_some_and(|(i, _)| *i <= eq) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}

/// Request counts and latency buckets of one destination service, from the client sidecar.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceStats {
    pub requests: f64,
    pub failed: f64,
    pub by_version: BTreeMap<String, f64>,
    /// `le` (ms) → cumulative count.
    pub buckets: BTreeMap<u64, f64>,
    pub retries: f64,
}

/// Per service (short name), what the client sidecar counted.
pub fn service_stats(samples: &[Sample]) -> BTreeMap<String, ServiceStats> {
    let mut out: BTreeMap<String, ServiceStats> = BTreeMap::new();
    let label = |s: &Sample, k: &str| s.labels.get(k).cloned().unwrap_or_default();
    for s in samples {
        if label(s, "reporter") == "destination" {
            continue;
        }
        match s.name.as_str() {
            "istio_requests_total" => {
                let st = out.entry(label(s, "destination_service_name")).or_default();
                st.requests += s.value;
                let code: u16 = label(s, "response_code").parse().unwrap_or(0);
                let grpc = s.labels.get("grpc_response_status").filter(|v| !v.is_empty());
                if !(200..400).contains(&code) || grpc.is_some_and(|g| g != "0") {
                    st.failed += s.value;
                }
                *st.by_version.entry(label(s, "destination_version")).or_default() += s.value;
            }
            "istio_request_duration_milliseconds_bucket" => {
                let st = out.entry(label(s, "destination_service_name")).or_default();
                let le = label(s, "le");
                let le = if le == "+Inf" { u64::MAX } else { le.parse::<f64>().map_or(u64::MAX, |v| v.ceil() as u64) };
                *st.buckets.entry(le).or_default() += s.value;
            }
            _ => {}
        }
    }
    for s in samples.iter().filter(|s| s.name == "weft_cluster_upstream_rq_retry") {
        let cluster = s.labels.values().find(|v| v.starts_with("outbound|")).cloned().unwrap_or_default();
        // outbound|PORT|SUBSET|NAME.NAMESPACE.svc.cluster.local
        let service = cluster.rsplit('|').next().and_then(|h| h.split('.').next()).unwrap_or_default().to_string();
        if let Some(st) = out.get_mut(&service) {
            st.retries += s.value;
        }
    }
    out
}

impl ServiceStats {
    /// What happened between `earlier` and `self` (counters only grow unless the sidecar
    /// restarted; then everything counts as new).
    pub fn since(&self, earlier: &ServiceStats) -> ServiceStats {
        if self.requests < earlier.requests {
            return self.clone();
        }
        fn sub<K: Ord + Clone>(a: &BTreeMap<K, f64>, b: &BTreeMap<K, f64>) -> BTreeMap<K, f64> {
            a.iter().map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0))).collect()
        }
        ServiceStats {
            requests: self.requests - earlier.requests,
            failed: self.failed - earlier.failed,
            by_version: sub(&self.by_version, &earlier.by_version),
            buckets: sub(&self.buckets, &earlier.buckets),
            retries: (self.retries - earlier.retries).max(0.0),
        }
    }

    /// The upper bound (ms) of the bucket holding the 99th percentile.
    pub fn p99_ms(&self) -> Option<u64> {
        let total = self.buckets.get(&u64::MAX).copied().or_else(|| self.buckets.values().last().copied())?;
        if total <= 0.0 {
            return None;
        }
        self.buckets.iter().find(|(_, c)| **c >= total * 0.99).map(|(le, _)| *le)
    }
}

/// Fetches the sidecar's metrics (bounded by a timeout).
pub async fn scrape(addr: SocketAddr) -> Option<Vec<Sample>> {
    let fetch = async {
        let s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/stats/prometheus")
            .header(http::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = tx.send_request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(parse_prometheus(&String::from_utf8_lossy(&body)))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch).await.ok()?
}

/// Prints a block of summary lines every `every` until `stop` or `duration` (0: no limit).
pub async fn summary(
    metrics: SocketAddr,
    every: Duration,
    duration: Duration,
    stop: Arc<AtomicBool>,
    errors: Arc<ClientErrors>,
) {
    let started = Instant::now();
    let mut last: BTreeMap<String, ServiceStats> = BTreeMap::new();
    let mut last_errors = (0, 0);
    println!(
        "{:>6}  {:<8} {:>7} {:>9} {:>8} {:>8}  version split",
        "time", "service", "rps", "success", "p99 ms", "retries"
    );
    loop {
        let wait = tokio::time::sleep(every);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
        let now = match scrape(metrics).await {
            Some(samples) => service_stats(&samples),
            None => {
                println!(
                    "{:>5}s  (the client sidecar's metrics at {metrics} did not answer)",
                    started.elapsed().as_secs()
                );
                continue;
            }
        };
        let errs = (errors.http.load(Ordering::Relaxed), errors.grpc.load(Ordering::Relaxed));
        for (i, (service, stats)) in now.iter().filter(|(s, _)| !s.is_empty()).enumerate() {
            let w = stats.since(last.get(service).unwrap_or(&ServiceStats::default()));
            let client_errors = match service.as_str() {
                "reviews" => errs.0 - last_errors.0,
                "ratings" => errs.1 - last_errors.1,
                _ => 0,
            } as f64;
            let calls = w.requests + client_errors;
            let success = if calls > 0.0 { 100.0 * (w.requests - w.failed) / calls } else { 0.0 };
            let split: Vec<String> = w
                .by_version
                .iter()
                .filter(|(_, n)| **n > 0.0)
                .map(|(v, n)| format!("{} {:.0}%", if v.is_empty() { "?" } else { v }, 100.0 * n / w.requests.max(1.0)))
                .collect();
            let time = if i == 0 { format!("{}s", started.elapsed().as_secs()) } else { String::new() };
            println!(
                "{time:>6}  {service:<8} {:>7.1} {:>8.1}% {:>8} {:>8}  {}",
                calls / every.as_secs_f64(),
                success,
                w.p99_ms().map_or("-".to_string(), |p| if p == u64::MAX { ">max".into() } else { p.to_string() }),
                w.retries,
                split.join(", ")
            );
        }
        last_errors = errs;
        last = now;
        if !duration.is_zero() && started.elapsed() >= duration {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_requests Requests handled by the proxy
# TYPE istio_requests counter
istio_requests_total{reporter="source",destination_service_name="reviews",destination_version="v1",response_code="200"} 90
istio_requests_total{reporter="source",destination_service_name="reviews",destination_version="v2",response_code="200"} 9
istio_requests_total{reporter="source",destination_service_name="reviews",destination_version="v2",response_code="503"} 1
istio_requests_total{reporter="source",destination_service_name="ratings",destination_version="v1",response_code="200",grpc_response_status="14"} 2
istio_requests_total{reporter="destination",destination_service_name="reviews",destination_version="v1",response_code="200"} 1000
istio_request_duration_milliseconds_bucket{reporter="source",destination_service_name="reviews",le="1.0"} 50
istio_request_duration_milliseconds_bucket{reporter="source",destination_service_name="reviews",le="5.0"} 99
istio_request_duration_milliseconds_bucket{reporter="source",destination_service_name="reviews",le="+Inf"} 100
weft_cluster_upstream_rq_retry{cluster="outbound|9080|v2|reviews.demo.svc.cluster.local"} 3
odd{a="x\"y",b="z\\"} 1.5
broken{a=} 1
"#;

    #[test]
    fn prometheus_text_parses() {
        let s = parse_prometheus(TEXT);
        assert_eq!(s.len(), 10, "{s:?}");
        let odd = s.iter().find(|s| s.name == "odd").unwrap();
        assert_eq!(odd.labels["a"], "x\"y");
        assert_eq!(odd.labels["b"], "z\\");
        assert_eq!(odd.value, 1.5);
    }

    #[test]
    fn stats_per_service() {
        let stats = service_stats(&parse_prometheus(TEXT));
        let r = &stats["reviews"];
        assert_eq!((r.requests, r.failed, r.retries), (100.0, 1.0, 3.0));
        assert_eq!(r.by_version["v1"], 90.0);
        assert_eq!(r.p99_ms(), Some(5));
        assert_eq!(stats["ratings"].failed, 2.0, "gRPC status 14 is a failure");
        let later = ServiceStats { requests: 150.0, ..r.clone() };
        assert_eq!(later.since(r).requests, 50.0);
        let restarted = ServiceStats { requests: 5.0, ..Default::default() };
        assert_eq!(restarted.since(r).requests, 5.0);
    }
}
