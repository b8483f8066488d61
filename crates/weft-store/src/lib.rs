//! The control plane's durable store: applied config objects, registry instances with leases and
//! stable virtual IPs, every write durable before it returns.
//!
//! Two backends keep the same data with the same semantics: an embedded redb file (the default:
//! one control plane, nothing to install) and etcd (several control planes sharing one store for
//! high availability; each write an etcd transaction committed by a quorum). What a write does is
//! decided by the pure functions in `plan`, so both backends agree on it.
//!
//! The store is generic: objects are JSON bodies under a `(kind, namespace, name)` key and a tenant;
//! parsing and validating Istio resources happens before they get here. All calls block on I/O;
//! async callers run them on `tokio::task::spawn_blocking`. The layout is described in
//! `docs/control-store.md`.

#![forbid(unsafe_code)]

mod embedded;
mod etcd;
mod plan;
mod time;
mod vip;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

pub use etcd::{EtcdConfig, DEFAULT_PREFIX};
pub use vip::{is_allocatable, VIP_CAPACITY, VIP_RANGE};

use plan::{Change, Host};

/// The file inside the store dir.
pub const FILE_NAME: &str = "weft.redb";

/// The schema this build writes. A store with a newer one is refused on open.
pub const SCHEMA_VERSION: u64 = 1;

/// Largest encoded record (body plus bookkeeping) one object or instance may take; etcd's default
/// request limit, so config that fits Kubernetes fits here.
pub const MAX_RECORD_BYTES: usize = 1_572_864;

/// Longest kind, namespace, name, tenant or host accepted, in bytes.
pub const MAX_KEY_PART_BYTES: usize = 512;

/// Errors of the store. Each names the store (its file, or its etcd URL) and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store dir {}: cannot create: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error("store dir {}: cannot sync after creating the store file: {source}", dir.display())]
    SyncDir { dir: PathBuf, source: std::io::Error },
    #[error(
        "store file {}: already open: another process (a running `weft control`?) or another Store in this \
         process holds its lock",
        file.display()
    )]
    Locked { file: PathBuf },
    #[error("store file {}: open: {source}", file.display())]
    Open { file: PathBuf, source: Box<redb::Error> },
    #[error(
        "store {store}: schema version {found} was written by a newer weft; this build reads up to version {supported}"
    )]
    SchemaTooNew { store: String, found: u64, supported: u64 },
    #[error("store file {}: {op}: {source}", file.display())]
    Db { file: PathBuf, op: &'static str, source: Box<redb::Error> },
    #[error("store {store}: {op}: {table}, key {key:?}: {reason}")]
    Corrupt { store: String, op: &'static str, table: &'static str, key: String, reason: String },
    #[error("{op}: {field} {value:?}: {reason}")]
    InvalidInput { op: &'static str, field: &'static str, value: String, reason: &'static str },
    #[error("{op}: {key} appears more than once in one call")]
    DuplicateKey { op: &'static str, key: ObjKey },
    #[error("{op}: {key}: cannot encode: {reason}")]
    Encode { op: &'static str, key: ObjKey, reason: String },
    #[error("{op}: {key}: the encoded record is {size} bytes, over the limit of {limit}")]
    TooLarge { op: &'static str, key: ObjKey, size: usize, limit: usize },
    #[error(
        "store {store}: allocate_vips: the range {range} is exhausted: {requested} new hosts, {free} free addresses"
    )]
    VipsExhausted { store: String, range: &'static str, requested: usize, free: usize },
    #[error("store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("store {store}: {op}: {source}")]
    Etcd { store: String, op: &'static str, source: weft_etcd::EtcdError },
    #[error(
        "store {store}: {op}: {changes} changes do not fit in one etcd transaction ({source}); etcd bounds one \
         atomic write by its --max-txn-ops (default 128) and --max-request-bytes (default 1.5 MiB): split the \
         change or raise those limits"
    )]
    TxnTooLarge { store: String, op: &'static str, changes: usize, source: weft_etcd::EtcdError },
    #[error("store {store}: {op}: still conflicting with other writers after {attempts} attempts")]
    Contended { store: String, op: &'static str, attempts: usize },
}

impl StoreError {
    /// The store could not be reached (etcd down, partitioned, without a leader, or too busy):
    /// nothing was written, and the same call may succeed later. An API answers 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Etcd { source, .. } => source.is_unavailable(),
            StoreError::Contended { .. } => true,
            _ => false,
        }
    }

    /// The caller's input was refused (bad key, duplicate, oversized record or transaction):
    /// nothing was written, and the same call will fail again. An API answers 4xx.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidInput { .. }
                | StoreError::DuplicateKey { .. }
                | StoreError::Encode { .. }
                | StoreError::TooLarge { .. }
                | StoreError::TxnTooLarge { .. }
        )
    }
}

/// Which object: kind, namespace and name. Ordered by kind, then namespace, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> ObjKey {
        ObjKey { kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }

    /// Kind and name must be non-empty; the namespace may be empty (cluster-scoped kinds).
    fn validate(&self, op: &'static str) -> Result<(), StoreError> {
        check_part(op, "kind", &self.kind, false)?;
        check_part(op, "namespace", &self.namespace, true)?;
        check_part(op, "name", &self.name, false)
    }

    /// `kind\0namespace\0name`: no part holds a NUL, so the encoding is unambiguous and sorts like
    /// the key itself.
    pub(crate) fn encode(&self) -> String {
        format!("{}\0{}\0{}", self.kind, self.namespace, self.name)
    }

    pub(crate) fn decode(s: &str) -> Option<ObjKey> {
        let mut parts = s.splitn(3, '\0');
        let (kind, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(ObjKey::new(kind, namespace, name))
    }
}

impl fmt::Display for ObjKey {
    /// `Kind ns/name`, or `Kind name` without a namespace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

fn check_part(op: &'static str, field: &'static str, value: &str, may_be_empty: bool) -> Result<(), StoreError> {
    let reason = if !may_be_empty && value.is_empty() {
        "must not be empty"
    } else if value.contains('\0') {
        "must not contain a NUL character"
    } else if value.len() > MAX_KEY_PART_BYTES {
        "is longer than 512 bytes"
    } else {
        return Ok(());
    };
    let shown: String = value.chars().take(64).collect();
    Err(StoreError::InvalidInput { op, field, value: shown, reason })
}

/// A stored config object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub key: ObjKey,
    pub tenant: String,
    pub body: Value,
    /// Store revision at which the object last changed.
    pub revision: u64,
    /// Store revision at which it was created (again, after a delete).
    pub created_revision: u64,
    /// RFC 3339 UTC, set when it was created.
    pub created_at: String,
}

/// What `apply` did to one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub key: ObjKey,
    /// The object's revision after the call: the new store revision, or the old one when unchanged.
    pub revision: u64,
    pub created: bool,
    /// Tenant and body were identical to what was stored: nothing was written.
    pub unchanged: bool,
}

/// A registry instance (a VM's workload, an API-registered endpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub key: ObjKey,
    pub tenant: String,
    pub body: Value,
    /// `None`: stays until removed. `Some`: removed by `expire_leases` once the time has passed.
    pub lease_expires_unix_ms: Option<u64>,
    /// Store revision at which tenant or body last changed (lease renewals do not count).
    pub revision: u64,
}

/// Where a store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An embedded redb file, `DIR/weft.redb`.
    Dir(PathBuf),
    /// An etcd cluster, under a key prefix.
    Etcd(EtcdConfig),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.join(FILE_NAME).display()),
            Location::Etcd(cfg) => write!(f, "{}", cfg.url()),
        }
    }
}

/// What each backend does. Inputs arrive validated; each write reports what it changed, and the
/// [`Store`] tells watchers.
trait Backend: Send + Sync {
    /// The file path or the etcd URL, for messages.
    fn name(&self) -> &str;
    fn file(&self) -> Option<&Path>;
    fn apply(&self, objs: Vec<(ObjKey, String, Value)>) -> Result<(Vec<Applied>, Change), StoreError>;
    fn delete(&self, keys: &[ObjKey]) -> Result<(Vec<bool>, Change), StoreError>;
    fn get(&self, key: &ObjKey) -> Result<Option<Object>, StoreError>;
    fn list(&self, kind: Option<&str>) -> Result<Vec<Object>, StoreError>;
    fn revision(&self) -> Result<u64, StoreError>;
    fn put_instance(
        &self,
        key: ObjKey,
        tenant: &str,
        body: Value,
        lease_expires_unix_ms: Option<u64>,
    ) -> Result<(u64, Change), StoreError>;
    fn renew_lease(&self, key: &ObjKey, lease_expires_unix_ms: u64) -> Result<(bool, Change), StoreError>;
    fn remove_instance(&self, key: &ObjKey) -> Result<(bool, Change), StoreError>;
    fn list_instances(&self) -> Result<Vec<Instance>, StoreError>;
    fn expire_leases(&self, now_unix_ms: u64) -> Result<(Vec<ObjKey>, Change), StoreError>;
    fn allocate_vips(&self, wanted: &BTreeSet<&Host>) -> Result<(BTreeMap<Host, Ipv4Addr>, Change), StoreError>;
    /// `None` when `at_revision` is given and the store revision is no longer it.
    fn release_vips(&self, keep: &BTreeSet<Host>, at_revision: Option<u64>) -> Result<Option<usize>, StoreError>;
    fn vips(&self) -> Result<BTreeMap<Host, Ipv4Addr>, StoreError>;
}

struct Inner {
    backend: Box<dyn Backend>,
    revision: Arc<watch::Sender<u64>>,
}

/// The store. Cheap to clone; all clones share one open file or one etcd client.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("at", &self.inner.backend.name()).finish_non_exhaustive()
    }
}

/// Moves the watched revision forward (never back: two writers, or a local write and the etcd
/// watch, may report revisions out of order).
pub(crate) fn advance(revision: &watch::Sender<u64>, to: u64) {
    revision.send_if_modified(|current| {
        let newer = to > *current;
        if newer {
            *current = to;
        }
        newer
    });
}

impl Store {
    /// Opens (creating when missing) the embedded store `dir/weft.redb`. The file is locked for
    /// as long as any clone lives; a second open, from this process or another, fails with
    /// [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let (backend, revision) = embedded::open(dir)?;
        let (tx, _) = watch::channel(revision);
        tracing::debug!(file = %backend.name(), revision, "store opened");
        Ok(Store { inner: Arc::new(Inner { backend: Box::new(backend), revision: Arc::new(tx) }) })
    }

    /// Opens the store kept in etcd under `cfg.prefix`, writing the schema version when the
    /// prefix is empty. Any number of stores (processes) may share one etcd prefix; each one's
    /// [`Store::watch`] follows the writes of all of them. Fails when etcd does not answer within
    /// the request timeout.
    pub fn open_etcd(cfg: &EtcdConfig) -> Result<Store, StoreError> {
        let (tx, _) = watch::channel(0);
        let tx = Arc::new(tx);
        let backend = etcd::open(cfg, tx.clone())?;
        tracing::debug!(store = %backend.name(), revision = *tx.borrow(), "store opened");
        Ok(Store { inner: Arc::new(Inner { backend: Box::new(backend), revision: tx }) })
    }

    /// Opens the store at `location`.
    pub fn open_at(location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::Dir(dir) => Store::open(dir),
            Location::Etcd(cfg) => Store::open_etcd(cfg),
        }
    }

    /// The embedded store's file; `None` for etcd.
    pub fn file(&self) -> Option<&Path> {
        self.inner.backend.file()
    }

    /// Where the store lives: the file path, or the etcd URL.
    pub fn location(&self) -> &str {
        self.inner.backend.name()
    }

    fn told<T>(&self, (value, change): (T, Change)) -> T {
        if let Change::Revision(revision) = change {
            advance(&self.inner.revision, revision);
        }
        value
    }

    /// Creates or replaces objects in one transaction: all of them are stored durably, or none.
    /// An object whose tenant and body equal what is stored is left alone (`unchanged`); if every
    /// object is unchanged nothing is written and the revision stays.
    pub fn apply(&self, objs: Vec<(ObjKey, String, Value)>) -> Result<Vec<Applied>, StoreError> {
        const OP: &str = "apply";
        let mut seen = BTreeSet::new();
        for (key, tenant, _) in &objs {
            key.validate(OP)?;
            check_part(OP, "tenant", tenant, true)?;
            if !seen.insert(key) {
                return Err(StoreError::DuplicateKey { op: OP, key: key.clone() });
            }
        }
        if objs.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.backend.apply(objs).map(|r| self.told(r))
    }

    /// Deletes objects in one durable transaction; `true` for each key that was there.
    pub fn delete(&self, keys: &[ObjKey]) -> Result<Vec<bool>, StoreError> {
        for key in keys {
            key.validate("delete")?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.backend.delete(keys).map(|r| self.told(r))
    }

    pub fn get(&self, key: &ObjKey) -> Result<Option<Object>, StoreError> {
        key.validate("get")?;
        self.inner.backend.get(key)
    }

    /// All objects, or those of one kind, sorted by key.
    pub fn list(&self, kind: Option<&str>) -> Result<Vec<Object>, StoreError> {
        if let Some(kind) = kind {
            check_part("list", "kind", kind, false)?;
        }
        self.inner.backend.list(kind)
    }

    /// The store revision: bumped once by every committed change to objects or instances.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.inner.backend.revision()
    }

    /// Registers or replaces an instance. Returns its revision: a new store revision when tenant or
    /// body changed, the old one when only the lease did (which is written, quietly).
    pub fn put_instance(
        &self,
        key: ObjKey,
        tenant: &str,
        body: Value,
        lease_expires_unix_ms: Option<u64>,
    ) -> Result<u64, StoreError> {
        const OP: &str = "put_instance";
        key.validate(OP)?;
        check_part(OP, "tenant", tenant, true)?;
        self.inner.backend.put_instance(key, tenant, body, lease_expires_unix_ms).map(|r| self.told(r))
    }

    /// Moves a leased instance's expiry. `false` when there is no such instance or it holds no
    /// lease: the agent should register again with [`Store::put_instance`]. Durable, but quiet: the
    /// revision does not move and watchers are not woken.
    pub fn renew_lease(&self, key: &ObjKey, lease_expires_unix_ms: u64) -> Result<bool, StoreError> {
        key.validate("renew_lease")?;
        self.inner.backend.renew_lease(key, lease_expires_unix_ms).map(|r| self.told(r))
    }

    /// Removes an instance; `true` when it was there.
    pub fn remove_instance(&self, key: &ObjKey) -> Result<bool, StoreError> {
        key.validate("remove_instance")?;
        self.inner.backend.remove_instance(key).map(|r| self.told(r))
    }

    /// All instances, sorted by key.
    pub fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.inner.backend.list_instances()
    }

    /// Removes every instance whose lease expired at or before `now_unix_ms`, and returns their
    /// keys (sorted). In one durable transaction (on etcd, in transactions of at most 100
    /// instances each); two control planes sweeping at once never both remove one instance.
    pub fn expire_leases(&self, now_unix_ms: u64) -> Result<Vec<ObjKey>, StoreError> {
        self.inner.backend.expire_leases(now_unix_ms).map(|r| self.told(r))
    }

    /// Addresses for service hosts that have none, from [`VIP_RANGE`]. A host that already has one
    /// keeps it; new hosts (in `(tenant, host)` order) take the lowest free addresses. New
    /// allocations are durable before this returns; the revision does not move (VIPs are derived
    /// by the translator, not input to it). Fails, allocating nothing, when the range cannot hold
    /// every new host. Two stores sharing one etcd never hand one address to two hosts.
    pub fn allocate_vips(
        &self,
        hosts: &[(String, String)],
    ) -> Result<BTreeMap<(String, String), Ipv4Addr>, StoreError> {
        const OP: &str = "allocate_vips";
        for (tenant, host) in hosts {
            check_part(OP, "tenant", tenant, true)?;
            check_part(OP, "host", host, false)?;
        }
        let wanted: BTreeSet<&Host> = hosts.iter().collect();
        self.inner.backend.allocate_vips(&wanted).map(|r| self.told(r))
    }

    /// Frees every allocation whose `(tenant, host)` is not in `keep`; returns how many.
    pub fn release_vips(&self, keep: &BTreeSet<(String, String)>) -> Result<usize, StoreError> {
        Ok(self.inner.backend.release_vips(keep, None)?.unwrap_or(0))
    }

    /// Like [`Store::release_vips`], but only while the store revision is still `revision` (the
    /// one `keep` was computed at); `None`, releasing nothing, once it has moved on. With several
    /// control planes on one store, a replica that has not yet seen a newer change must not free
    /// the address another replica just gave to a host of that change.
    pub fn release_vips_at(
        &self,
        keep: &BTreeSet<(String, String)>,
        revision: u64,
    ) -> Result<Option<usize>, StoreError> {
        self.inner.backend.release_vips(keep, Some(revision))
    }

    /// Every allocated VIP.
    pub fn vips(&self) -> Result<BTreeMap<(String, String), Ipv4Addr>, StoreError> {
        self.inner.backend.vips()
    }

    /// The store revision, updated after every committed change to objects or instances (on etcd,
    /// also the changes other control planes commit, through an etcd watch). The channel keeps
    /// only the newest value, so a slow reader skips revisions but never sees one go backwards.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding_round_trips_and_sorts_like_the_key() {
        let keys = [
            ObjKey::new("A", "", "x"),
            ObjKey::new("A", "ns", "x"),
            ObjKey::new("A", "ns", "x-1"),
            ObjKey::new("A", "ns-1", "a"),
            ObjKey::new("AB", "", "a"),
            ObjKey::new("B", "a", "b"),
        ];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].encode() < pair[1].encode(), "{} vs {}", pair[0], pair[1]);
        }
        for key in &keys {
            assert_eq!(ObjKey::decode(&key.encode()).as_ref(), Some(key));
        }
    }

    #[test]
    fn key_validation() {
        let long = "x".repeat(MAX_KEY_PART_BYTES + 1);
        let cases = [
            (ObjKey::new("K", "ns", "n"), None),
            (ObjKey::new("K", "", "n"), None),
            (ObjKey::new("", "ns", "n"), Some("kind")),
            (ObjKey::new("K", "ns", ""), Some("name")),
            (ObjKey::new("K\0", "ns", "n"), Some("kind")),
            (ObjKey::new("K", "n\0s", "n"), Some("namespace")),
            (ObjKey::new("K", "ns", long.as_str()), Some("name")),
        ];
        for (key, bad_field) in cases {
            match (key.validate("test"), bad_field) {
                (Ok(()), None) => {}
                (Err(StoreError::InvalidInput { field, .. }), Some(want)) => assert_eq!(field, want, "{key:?}"),
                (got, want) => panic!("{key:?}: got {got:?}, want bad field {want:?}"),
            }
        }
    }

    #[test]
    fn store_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Store>();
    }

    #[test]
    fn display_names_kind_namespace_and_name() {
        assert_eq!(ObjKey::new("VirtualService", "shop", "cart").to_string(), "VirtualService shop/cart");
        assert_eq!(ObjKey::new("Tenant", "", "acme").to_string(), "Tenant acme");
    }
}
