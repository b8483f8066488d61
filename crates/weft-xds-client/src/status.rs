//! What the xDS client shows about itself: `/config_dump` (server, protocol, connection, every
//! resource's version, rejections) and metrics (`weft_xds_*`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::session::Protocol;
use crate::store::{Kind, Store};

/// One sample for the proxy's metrics endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    /// Counter (monotonic) or gauge.
    pub counter: bool,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

#[derive(Default)]
struct Snapshot {
    resources: BTreeMap<&'static str, BTreeMap<String, String>>,
    rejected: Vec<Value>,
    applied_version: String,
    last_error: String,
    cache_error: String,
}

/// Shared between the client task (writer) and the admin endpoints (readers). Locks are held
/// only to copy small values, never across an await.
pub struct Status {
    server: String,
    node_id: String,
    connected: AtomicBool,
    ready: AtomicBool,
    /// 0 = delta, 1 = state of the world.
    protocol: AtomicU8,
    connects: AtomicU64,
    updates: [AtomicU64; 4],
    rejects: [AtomicU64; 4],
    applies: AtomicU64,
    apply_failures: AtomicU64,
    cache_loaded: AtomicU64,
    cache_writes: AtomicU64,
    cache_write_failures: AtomicU64,
    snapshot: Mutex<Snapshot>,
}

impl Status {
    pub fn new(server: &str, node_id: &str, protocol: Protocol) -> Status {
        Status {
            server: server.to_string(),
            node_id: node_id.to_string(),
            connected: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            protocol: AtomicU8::new(protocol_code(protocol)),
            connects: AtomicU64::new(0),
            updates: Default::default(),
            rejects: Default::default(),
            applies: AtomicU64::new(0),
            apply_failures: AtomicU64::new(0),
            cache_loaded: AtomicU64::new(0),
            cache_writes: AtomicU64::new(0),
            cache_write_failures: AtomicU64::new(0),
            snapshot: Mutex::new(Snapshot::default()),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// A complete config has been applied at least once.
    pub fn ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        if up {
            self.connects.fetch_add(1, Relaxed);
        }
        self.connected.store(up, Relaxed);
    }

    pub(crate) fn set_protocol(&self, p: Protocol) {
        self.protocol.store(protocol_code(p), Relaxed);
    }

    pub(crate) fn response(&self, kind: Kind, accepted: bool, rejected: usize) {
        if accepted {
            self.updates[kind.index()].fetch_add(1, Relaxed);
        }
        self.rejects[kind.index()].fetch_add(rejected as u64, Relaxed);
    }

    pub(crate) fn rejected_late(&self, kind: Kind, n: usize) {
        self.rejects[kind.index()].fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn applied(&self, version: &str) {
        self.applies.fetch_add(1, Relaxed);
        self.ready.store(true, Relaxed);
        self.lock().applied_version = version.to_string();
    }

    pub(crate) fn apply_failed(&self) {
        self.apply_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn cache_loaded(&self, n: usize) {
        self.cache_loaded.store(n as u64, Relaxed);
    }

    pub(crate) fn cache_written(&self) {
        self.cache_writes.fetch_add(1, Relaxed);
        self.lock().cache_error.clear();
    }

    pub(crate) fn cache_write_failed(&self, e: &str) {
        self.cache_write_failures.fetch_add(1, Relaxed);
        self.cache_error(e);
    }

    pub(crate) fn cache_error(&self, e: &str) {
        self.lock().cache_error = e.to_string();
    }

    pub(crate) fn error(&self, e: &str) {
        self.lock().last_error = e.to_string();
    }

    /// Copies the store's versions and rejections for `/config_dump`.
    pub(crate) fn record(&self, store: &Store) {
        let mut resources = BTreeMap::new();
        for kind in Kind::ALL {
            resources.insert(kind.short(), store.versions(kind));
        }
        let rejected = store
            .rejected()
            .iter()
            .map(|((k, n), r)| json!({ "type": k.short(), "name": n, "version": r.version, "error": r.error }))
            .collect();
        let mut s = self.lock();
        s.resources = resources;
        s.rejected = rejected;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `xds` section of `/config_dump`.
    pub fn dump(&self) -> Value {
        let s = self.lock();
        let resources: serde_json::Map<String, Value> = s
            .resources
            .iter()
            .map(|(k, m)| {
                let m: serde_json::Map<String, Value> =
                    m.iter().map(|(n, v)| (n.clone(), json!({ "version": v }))).collect();
                (k.to_string(), Value::Object(m))
            })
            .collect();
        json!({
            "server": self.server,
            "node_id": self.node_id,
            "protocol": protocol_name(self.protocol.load(Relaxed)),
            "connected": self.connected(),
            "ready": self.ready(),
            "applied_version": s.applied_version,
            "last_error": s.last_error,
            "resources": resources,
            "rejected": s.rejected,
            "cache": {
                "loaded_resources": self.cache_loaded.load(Relaxed),
                "writes": self.cache_writes.load(Relaxed),
                "write_failures": self.cache_write_failures.load(Relaxed),
                "error": s.cache_error,
            },
        })
    }

    /// `weft_xds_*` metrics.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = vec![
            Metric {
                name: "weft_xds_connected",
                help: "1 while the ADS stream to the control plane is up",
                counter: false,
                labels: vec![("server", self.server.clone())],
                value: u64::from(self.connected()),
            },
            Metric {
                name: "weft_xds_connects_total",
                help: "ADS streams opened",
                counter: true,
                labels: vec![],
                value: self.connects.load(Relaxed),
            },
            Metric {
                name: "weft_xds_config_applies_total",
                help: "Assembled xDS configs applied to the proxy",
                counter: true,
                labels: vec![],
                value: self.applies.load(Relaxed),
            },
            Metric {
                name: "weft_xds_config_apply_failures_total",
                help: "Assembled xDS configs the proxy could not apply (a listener could not bind)",
                counter: true,
                labels: vec![],
                value: self.apply_failures.load(Relaxed),
            },
            Metric {
                name: "weft_xds_cache_loaded_resources",
                help: "Resources of the persisted config accepted at start (--xds-cache)",
                counter: false,
                labels: vec![],
                value: self.cache_loaded.load(Relaxed),
            },
            Metric {
                name: "weft_xds_cache_writes_total",
                help: "Applied configs persisted (--xds-cache)",
                counter: true,
                labels: vec![],
                value: self.cache_writes.load(Relaxed),
            },
            Metric {
                name: "weft_xds_cache_write_failures_total",
                help: "Applied configs that could not be persisted (--xds-cache)",
                counter: true,
                labels: vec![],
                value: self.cache_write_failures.load(Relaxed),
            },
        ];
        for kind in Kind::ALL {
            out.push(Metric {
                name: "weft_xds_updates_total",
                help: "xDS responses with accepted changes, by type",
                counter: true,
                labels: vec![("type", kind.short().to_string())],
                value: self.updates[kind.index()].load(Relaxed),
            });
        }
        for kind in Kind::ALL {
            out.push(Metric {
                name: "weft_xds_rejects_total",
                help: "xDS resources rejected (NACKed), by type",
                counter: true,
                labels: vec![("type", kind.short().to_string())],
                value: self.rejects[kind.index()].load(Relaxed),
            });
        }
        out
    }
}

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::Delta => 0,
        Protocol::Sotw => 1,
    }
}

fn protocol_name(c: u8) -> &'static str {
    if c == 0 {
        "delta"
    } else {
        "sotw"
    }
}
