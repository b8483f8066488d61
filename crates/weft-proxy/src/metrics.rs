//! Metrics with Istio's standard names and labels, plus the proxy's own counters.
//!
//! Label sets are built once per (cluster, host, status, flags, ...) and their handles cached,
//! so a request costs a small map lookup and two atomic updates. Per-cluster internals are read
//! from the clusters' atomic counters at scrape time, only for clusters that saw traffic.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use weft_config::{Labels, Node};

use crate::cluster::ClusterRt;
use crate::record::Record;
use crate::snapshot::Snapshot;

type LabelSet = Vec<(&'static str, String)>;

/// Istio's default duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub flags: u32,
    pub grpc: Option<u16>,
    pub protocol: &'static str,
    pub reporter: &'static str,
}

/// Per-cluster cache of label sets (lives in the cluster, so it goes away with it).
#[derive(Default)]
pub struct Cache(Mutex<HashMap<RequestKey, Handles, BuildHasherDefault<KeyHasher>>>);

/// A multiply-rotate hash for the cache's small keys (a few integers and two static strings):
/// the standard SipHash costs more than everything else in a lookup. The map is bounded (it is
/// cleared past 10,000 keys), so colliding keys cannot make it grow without limit.
#[derive(Default)]
pub struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Handles = (Counter, Histogram, Histogram, Histogram);

pub struct Metrics {
    registry: Registry,
    requests: Family<LabelSet, Counter>,
    duration: Family<LabelSet, Histogram, fn() -> Histogram>,
    request_bytes: Family<LabelSet, Histogram, fn() -> Histogram>,
    response_bytes: Family<LabelSet, Histogram, fn() -> Histogram>,
    tcp_opened: Family<LabelSet, Counter>,
    tcp_closed: Family<LabelSet, Counter>,
    tcp_sent: Family<LabelSet, Counter>,
    tcp_received: Family<LabelSet, Counter>,
    source: LabelSet,
    no_cluster: Cache,
    pub config_reloads_ok: Counter,
    pub config_reloads_failed: Counter,
    pub downstream_cx_total: Counter,
    pub downstream_rq_total: Counter,
    pub access_log_dropped: Counter,
}

fn bytes_histogram() -> Histogram {
    Histogram::new([1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0])
}

impl Metrics {
    pub fn new(node: &Node) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<LabelSet, Counter>::default();
        let duration = Family::<LabelSet, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let request_bytes = Family::<LabelSet, Histogram, fn() -> Histogram>::new_with_constructor(
            bytes_histogram as fn() -> Histogram,
        );
        let response_bytes = Family::<LabelSet, Histogram, fn() -> Histogram>::new_with_constructor(
            bytes_histogram as fn() -> Histogram,
        );
        let tcp_opened = Family::<LabelSet, Counter>::default();
        let tcp_closed = Family::<LabelSet, Counter>::default();
        let tcp_sent = Family::<LabelSet, Counter>::default();
        let tcp_received = Family::<LabelSet, Counter>::default();
        registry.register("istio_requests", "Requests handled by the proxy", requests.clone());
        registry.register("istio_request_duration_milliseconds", "Request duration", duration.clone());
        registry.register("istio_request_bytes", "Request body sizes", request_bytes.clone());
        registry.register("istio_response_bytes", "Response body sizes", response_bytes.clone());
        registry.register("istio_tcp_connections_opened", "TCP connections opened", tcp_opened.clone());
        registry.register("istio_tcp_connections_closed", "TCP connections closed", tcp_closed.clone());
        registry.register("istio_tcp_sent_bytes", "Bytes sent to the client on TCP connections", tcp_sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP connections",
            tcp_received.clone(),
        );
        let config_reloads_ok = Counter::default();
        let config_reloads_failed = Counter::default();
        let downstream_cx_total = Counter::default();
        let downstream_rq_total = Counter::default();
        let access_log_dropped = Counter::default();
        registry.register("weft_config_reloads", "Configuration versions applied", config_reloads_ok.clone());
        registry.register(
            "weft_config_reload_failures",
            "Configuration versions rejected",
            config_reloads_failed.clone(),
        );
        registry.register("weft_downstream_cx", "Downstream connections accepted", downstream_cx_total.clone());
        registry.register("weft_downstream_rq", "Downstream requests", downstream_rq_total.clone());
        registry.register(
            "weft_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let or_unknown = |s: &str| if s.is_empty() { "unknown".to_string() } else { s.to_string() };
        let source = vec![
            ("source_workload", or_unknown(&node.workload)),
            ("source_workload_namespace", or_unknown(&node.namespace)),
            ("source_principal", or_unknown(&node.principal)),
            ("source_app", or_unknown(&node.app)),
            ("source_version", or_unknown(&node.version)),
            ("source_cluster", or_unknown(&node.cluster)),
        ];
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            source,
            no_cluster: Cache::default(),
            config_reloads_ok,
            config_reloads_failed,
            downstream_cx_total,
            downstream_rq_total,
            access_log_dropped,
        }
    }

    fn destination(cluster: Option<&ClusterRt>, host_md: Option<&Labels>) -> LabelSet {
        let get = |k: &str| -> String {
            host_md
                .and_then(|m| m.get(k))
                .or_else(|| cluster.and_then(|c| c.cfg.metadata.get(k)))
                .cloned()
                .unwrap_or_else(|| "unknown".to_string())
        };
        let service = match cluster.and_then(|c| c.cfg.metadata.get("service")) {
            Some(s) => s.clone(),
            None => cluster.map(|c| c.cfg.name.clone()).unwrap_or_else(|| "unknown".into()),
        };
        let service_name = cluster
            .and_then(|c| c.cfg.metadata.get("service_name"))
            .cloned()
            .unwrap_or_else(|| service.split('.').next().unwrap_or("unknown").to_string());
        vec![
            ("destination_workload", get("workload")),
            ("destination_workload_namespace", get("namespace")),
            ("destination_principal", get("principal")),
            ("destination_app", get("app")),
            ("destination_version", get("version")),
            ("destination_service", service),
            ("destination_service_name", service_name),
            ("destination_service_namespace", get("namespace")),
            ("destination_cluster", get("cluster")),
        ]
    }

    fn labels(&self, key: &RequestKey, cluster: Option<&ClusterRt>, host_md: Option<&Labels>, flags: &str) -> LabelSet {
        let mut l = Vec::with_capacity(21);
        l.push(("reporter", key.reporter.to_string()));
        l.extend(self.source.iter().cloned());
        l.extend(Self::destination(cluster, host_md));
        l.push(("request_protocol", key.protocol.to_string()));
        l.push(("response_code", key.status.to_string()));
        l.push(("grpc_response_status", key.grpc.map(|g| g.to_string()).unwrap_or_default()));
        l.push(("response_flags", flags.to_string()));
        l.push(("connection_security_policy", "none".to_string()));
        l
    }

    /// Records one finished request.
    pub fn observe(&self, rec: &Record, duration_ms: f64) {
        let key = RequestKey {
            upstream: rec.upstream,
            status: rec.status,
            flags: rec.flags.bits(),
            grpc: rec.grpc_status,
            protocol: rec.protocol,
            reporter: rec.reporter,
        };
        let cluster = rec.cluster.as_deref();
        let cache = cluster.map(|c| &c.metrics).unwrap_or(&self.no_cluster);
        // Observed under the cache's lock (per cluster, never held across an await), so the
        // handles need no clone per request.
        let mut m = cache.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        let handles = m.entry(key).or_insert_with(|| {
            let host_md = cluster.and_then(|c| {
                rec.upstream.and_then(|a| c.set.load().hosts.iter().find(|h| h.addr == a).map(|h| h.metadata.clone()))
            });
            let labels = self.labels(&key, cluster, host_md.as_ref(), &rec.flags.to_string());
            (
                self.requests.get_or_create(&labels).clone(),
                self.duration.get_or_create(&labels).clone(),
                self.request_bytes.get_or_create(&labels).clone(),
                self.response_bytes.get_or_create(&labels).clone(),
            )
        });
        handles.0.inc();
        handles.1.observe(duration_ms);
        handles.2.observe(rec.bytes_received() as f64);
        handles.3.observe(rec.bytes_sent as f64);
    }

    pub fn tcp_labels(&self, reporter: &'static str, cluster: Option<&ClusterRt>) -> LabelSet {
        let mut l = Vec::with_capacity(18);
        l.push(("reporter", reporter.to_string()));
        l.extend(self.source.iter().cloned());
        l.extend(Self::destination(cluster, None));
        l.push(("response_flags", "-".to_string()));
        l.push(("connection_security_policy", "none".to_string()));
        l
    }

    pub fn tcp_opened(&self, l: &LabelSet) {
        self.tcp_opened.get_or_create(l).inc();
    }

    pub fn tcp_closed(&self, l: &LabelSet, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(l).inc();
        self.tcp_sent.get_or_create(l).inc_by(sent);
        self.tcp_received.get_or_create(l).inc_by(received);
    }

    /// The Prometheus text exposition: Istio metrics plus per-cluster internals.
    /// `more` is already-formatted text (metrics of a dynamic config source) placed before the end.
    pub fn render(&self, snap: &Snapshot, extra: &[(&str, &str, u64)], more: &str) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        // `encode` ends with "# EOF"; internals go before it.
        if let Some(i) = out.rfind("# EOF") {
            out.truncate(i);
        }
        for (name, help, v) in extra {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        type Gauge = (&'static str, &'static str, fn(&ClusterRt) -> u64);
        let gauges: &[Gauge] = &[
            ("weft_cluster_upstream_rq_total", "Upstream request attempts", |c| c.stats.rq_total.load(Relaxed)),
            ("weft_cluster_upstream_rq_active", "Active requests", |c| c.stats.rq_active.load(Relaxed) as u64),
            ("weft_cluster_upstream_rq_retry", "Retries", |c| c.stats.rq_retry.load(Relaxed)),
            ("weft_cluster_upstream_rq_retry_success", "Requests that succeeded after a retry", |c| {
                c.stats.rq_retry_success.load(Relaxed)
            }),
            ("weft_cluster_upstream_rq_retry_overflow", "Retries refused by the retry limit or budget", |c| {
                c.stats.rq_retry_overflow.load(Relaxed)
            }),
            ("weft_cluster_upstream_rq_timeout", "Requests that timed out", |c| c.stats.rq_timeout.load(Relaxed)),
            ("weft_cluster_upstream_rq_pending_overflow", "Requests refused by a circuit breaker", |c| {
                c.stats.rq_overflow.load(Relaxed)
            }),
            ("weft_cluster_upstream_cx_active", "Open upstream connections", |c| {
                c.stats.cx_active.load(Relaxed) as u64
            }),
            ("weft_cluster_upstream_cx_total", "Upstream connections opened", |c| c.stats.cx_total.load(Relaxed)),
            ("weft_cluster_upstream_cx_connect_fail", "Upstream connect failures", |c| {
                c.stats.cx_connect_fail.load(Relaxed)
            }),
            ("weft_cluster_upstream_cx_overflow", "Connections refused by max_connections", |c| {
                c.stats.cx_overflow.load(Relaxed)
            }),
            ("weft_cluster_outlier_detection_ejections_total", "Outlier ejections", |c| {
                c.stats.ejections_total.load(Relaxed)
            }),
            ("weft_cluster_outlier_detection_ejections_active", "Hosts ejected now", |c| {
                c.stats.ejections_active.load(Relaxed) as u64
            }),
            ("weft_cluster_outlier_detection_ejections_overflow", "Ejections refused by max_ejection_percent", |c| {
                c.stats.ejections_overflow.load(Relaxed)
            }),
            ("weft_cluster_health_check_failure", "Failed active health checks", |c| c.stats.hc_failures.load(Relaxed)),
            ("weft_cluster_membership_healthy", "Healthy hosts", |c| c.stats.membership_healthy.load(Relaxed) as u64),
            ("weft_cluster_membership_total", "Hosts", |c| c.stats.membership_total.load(Relaxed) as u64),
        ];
        let mut names: Vec<&String> = snap.clusters.keys().collect();
        names.sort();
        // Only clusters that have seen traffic: thousands of idle clusters cost nothing here.
        let active: Vec<&ClusterRt> = names
            .iter()
            .map(|n| &*snap.clusters[*n])
            .filter(|c| {
                c.stats.rq_total.load(Relaxed) > 0
                    || c.stats.cx_total.load(Relaxed) > 0
                    || c.stats.hc_failures.load(Relaxed) > 0
            })
            .collect();
        for (name, help, f) in gauges {
            if active.is_empty() {
                break;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for c in &active {
                let _ = writeln!(out, "{name}{{cluster_name=\"{}\"}} {}", escape(&c.cfg.name), f(c));
            }
        }
        out.push_str(more);
        out.push_str("# EOF\n");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
