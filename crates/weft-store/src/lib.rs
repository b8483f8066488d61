//! The control plane's durable store: applied config objects, registry instances with leases and
//! stable virtual IPs, in one embedded redb file that every write reaches durably before it returns.
//!
//! The store is generic: objects are JSON bodies under a `(kind, namespace, name)` key and a tenant;
//! parsing and validating Istio resources happens before they get here. All calls block on disk I/O;
//! async callers run them on `tokio::task::spawn_blocking`. The layout is described in
//! `docs/control-store.md`.

#![forbid(unsafe_code)]

mod time;
mod vip;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

pub use vip::{is_allocatable, VIP_CAPACITY, VIP_RANGE};

/// The file inside the store dir.
pub const FILE_NAME: &str = "weft.redb";

/// The schema this build writes. A file with a newer one is refused on open.
pub const SCHEMA_VERSION: u64 = 1;

/// Largest encoded record (body plus bookkeeping) one object or instance may take; etcd's default
/// request limit, so config that fits Kubernetes fits here.
pub const MAX_RECORD_BYTES: usize = 1_572_864;

/// Longest kind, namespace, name, tenant or host accepted, in bytes.
pub const MAX_KEY_PART_BYTES: usize = 512;

/// `"kind\0namespace\0name"` → JSON of [`ObjectRecord`].
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// `"kind\0namespace\0name"` → JSON of [`InstanceRecord`].
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// `"tenant\0host"` → IPv4 address as a big-endian `u32`.
const VIPS: TableDefinition<&str, u32> = TableDefinition::new("vips");
/// The reverse of [`VIPS`], so that the used addresses can be read in order without decoding names.
const VIP_ADDRS: TableDefinition<u32, &str> = TableDefinition::new("vip_addrs");
/// `schema_version` and `revision`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema_version";
const META_REVISION: &str = "revision";

/// Errors of the store. Each names the file (or dir) and the operation.
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
        "store file {}: schema version {found} was written by a newer weft; this build reads up to version \
         {supported}",
        file.display()
    )]
    SchemaTooNew { file: PathBuf, found: u64, supported: u64 },
    #[error("store file {}: {op}: {source}", file.display())]
    Db { file: PathBuf, op: &'static str, source: Box<redb::Error> },
    #[error("store file {}: {op}: table {table}, key {key:?}: {reason}", file.display())]
    Corrupt { file: PathBuf, op: &'static str, table: &'static str, key: String, reason: String },
    #[error("{op}: {field} {value:?}: {reason}")]
    InvalidInput { op: &'static str, field: &'static str, value: String, reason: &'static str },
    #[error("{op}: {key} appears more than once in one call")]
    DuplicateKey { op: &'static str, key: ObjKey },
    #[error("{op}: {key}: cannot encode: {reason}")]
    Encode { op: &'static str, key: ObjKey, reason: String },
    #[error("{op}: {key}: the encoded record is {size} bytes, over the limit of {limit}")]
    TooLarge { op: &'static str, key: ObjKey, size: usize, limit: usize },
    #[error(
        "store file {}: allocate_vips: the range {range} is exhausted: {requested} new hosts, {free} free addresses",
        file.display()
    )]
    VipsExhausted { file: PathBuf, range: &'static str, requested: usize, free: usize },
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
    fn encode(&self) -> String {
        format!("{}\0{}\0{}", self.kind, self.namespace, self.name)
    }

    fn decode(s: &str) -> Option<ObjKey> {
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

#[derive(Serialize, Deserialize)]
struct ObjectRecord {
    tenant: String,
    body: Value,
    revision: u64,
    created_revision: u64,
    created_at: String,
}

#[derive(Serialize, Deserialize)]
struct InstanceRecord {
    tenant: String,
    body: Value,
    lease_expires_unix_ms: Option<u64>,
    revision: u64,
}

/// What a write transaction changed, which decides whether it commits and whether watchers hear.
enum Change {
    /// Nothing: the transaction is aborted.
    Nothing,
    /// Committed, but no input to the translator changed (lease renewals, VIP bookkeeping).
    Quiet,
    /// Committed at this new store revision; watchers are told.
    Revision(u64),
}

struct Inner {
    db: Database,
    file: PathBuf,
    revision: watch::Sender<u64>,
}

/// The store. Cheap to clone; all clones share one open file.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("file", &self.inner.file).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when missing) `dir/weft.redb`. The file is locked for as long as any clone
    /// lives; a second open, from this process or another, fails with [`StoreError::Locked`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { dir: dir.to_owned(), source })?;
        let file = dir.join(FILE_NAME);
        let existed = file.exists();
        let db = Database::create(&file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { file: file.clone() },
            other => StoreError::Open { file: file.clone(), source: Box::new(other.into()) },
        })?;
        let revision = init_schema(&db, &file)?;
        if !existed {
            // redb syncs the file's contents; the new directory entry needs its own fsync to
            // survive a power loss.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::SyncDir { dir: dir.to_owned(), source })?;
        }
        let (tx, _) = watch::channel(revision);
        tracing::debug!(file = %file.display(), revision, "store opened");
        Ok(Store { inner: Arc::new(Inner { db, file, revision: tx }) })
    }

    /// The file this store lives in.
    pub fn file(&self) -> &Path {
        &self.inner.file
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
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(OBJECTS).map_err(self.db_err(OP))?;
            let next = self.next_revision(OP, &meta)?;
            let mut applied = Vec::with_capacity(objs.len());
            let mut changed = false;
            for (key, tenant, body) in objs {
                let enc = key.encode();
                let old: Option<ObjectRecord> = self.read_record(OP, &table, "objects", &enc)?;
                let record = match old {
                    Some(old) if old.tenant == tenant && old.body == body => {
                        applied.push(Applied { key, revision: old.revision, created: false, unchanged: true });
                        continue;
                    }
                    Some(old) => ObjectRecord {
                        tenant,
                        body,
                        revision: next,
                        created_revision: old.created_revision,
                        created_at: old.created_at,
                    },
                    None => ObjectRecord {
                        tenant,
                        body,
                        revision: next,
                        created_revision: next,
                        created_at: time::now_rfc3339(),
                    },
                };
                let bytes = encode_record(OP, &key, &record)?;
                table.insert(enc.as_str(), bytes.as_slice()).map_err(self.db_err(OP))?;
                let created = record.created_revision == next;
                applied.push(Applied { key, revision: next, created, unchanged: false });
                changed = true;
            }
            if !changed {
                return Ok((applied, Change::Nothing));
            }
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((applied, Change::Revision(next)))
        })
    }

    /// Deletes objects in one durable transaction; `true` for each key that was there.
    pub fn delete(&self, keys: &[ObjKey]) -> Result<Vec<bool>, StoreError> {
        const OP: &str = "delete";
        for key in keys {
            key.validate(OP)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(OBJECTS).map_err(self.db_err(OP))?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let removed = table.remove(key.encode().as_str()).map_err(self.db_err(OP))?.is_some();
                out.push(removed);
            }
            if !out.contains(&true) {
                return Ok((out, Change::Nothing));
            }
            let next = self.next_revision(OP, &meta)?;
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((out, Change::Revision(next)))
        })
    }

    pub fn get(&self, key: &ObjKey) -> Result<Option<Object>, StoreError> {
        const OP: &str = "get";
        key.validate(OP)?;
        let txn = self.inner.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(OBJECTS).map_err(self.db_err(OP))?;
        let record: Option<ObjectRecord> = self.read_record(OP, &table, "objects", &key.encode())?;
        Ok(record.map(|r| object(key.clone(), r)))
    }

    /// All objects, or those of one kind, sorted by key.
    pub fn list(&self, kind: Option<&str>) -> Result<Vec<Object>, StoreError> {
        const OP: &str = "list";
        if let Some(kind) = kind {
            check_part(OP, "kind", kind, false)?;
        }
        let txn = self.inner.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(OBJECTS).map_err(self.db_err(OP))?;
        let range = match kind {
            // Every key of `kind` starts with `kind\0`; the next possible prefix is `kind\x01`.
            Some(kind) => {
                let (from, to) = (format!("{kind}\0"), format!("{kind}\u{1}"));
                table.range(from.as_str()..to.as_str())
            }
            None => table.range::<&str>(..),
        }
        .map_err(self.db_err(OP))?;
        let mut out = Vec::new();
        for entry in range {
            let (k, v) = entry.map_err(self.db_err(OP))?;
            let (key, record) = self.decode_entry::<ObjectRecord>(OP, "objects", k.value(), v.value())?;
            out.push(object(key, record));
        }
        Ok(out)
    }

    /// The store revision: bumped once by every committed change to objects or instances.
    pub fn revision(&self) -> Result<u64, StoreError> {
        const OP: &str = "revision";
        let txn = self.inner.db.begin_read().map_err(self.db_err(OP))?;
        let meta = txn.open_table(META).map_err(self.db_err(OP))?;
        read_meta(&meta, META_REVISION).map_err(self.db_err(OP)).map(|r| r.unwrap_or(0))
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
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            let enc = key.encode();
            let old: Option<InstanceRecord> = self.read_record(OP, &table, "instances", &enc)?;
            let (record, change) = match old {
                Some(old) if old.tenant == tenant && old.body == body => {
                    if old.lease_expires_unix_ms == lease_expires_unix_ms {
                        return Ok((old.revision, Change::Nothing));
                    }
                    (InstanceRecord { lease_expires_unix_ms, ..old }, Change::Quiet)
                }
                _ => {
                    let next = self.next_revision(OP, &meta)?;
                    meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
                    let record =
                        InstanceRecord { tenant: tenant.to_owned(), body, lease_expires_unix_ms, revision: next };
                    (record, Change::Revision(next))
                }
            };
            let bytes = encode_record(OP, &key, &record)?;
            table.insert(enc.as_str(), bytes.as_slice()).map_err(self.db_err(OP))?;
            Ok((record.revision, change))
        })
    }

    /// Moves a leased instance's expiry. `false` when there is no such instance or it holds no
    /// lease: the agent should register again with [`Store::put_instance`]. Durable, but quiet: the
    /// revision does not move and watchers are not woken.
    pub fn renew_lease(&self, key: &ObjKey, lease_expires_unix_ms: u64) -> Result<bool, StoreError> {
        const OP: &str = "renew_lease";
        key.validate(OP)?;
        self.write(OP, |txn| {
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            let enc = key.encode();
            let old: Option<InstanceRecord> = self.read_record(OP, &table, "instances", &enc)?;
            let Some(old) = old.filter(|r| r.lease_expires_unix_ms.is_some()) else {
                return Ok((false, Change::Nothing));
            };
            if old.lease_expires_unix_ms == Some(lease_expires_unix_ms) {
                return Ok((true, Change::Nothing));
            }
            let record = InstanceRecord { lease_expires_unix_ms: Some(lease_expires_unix_ms), ..old };
            let bytes = encode_record(OP, key, &record)?;
            table.insert(enc.as_str(), bytes.as_slice()).map_err(self.db_err(OP))?;
            Ok((true, Change::Quiet))
        })
    }

    /// Removes an instance; `true` when it was there.
    pub fn remove_instance(&self, key: &ObjKey) -> Result<bool, StoreError> {
        const OP: &str = "remove_instance";
        key.validate(OP)?;
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            if table.remove(key.encode().as_str()).map_err(self.db_err(OP))?.is_none() {
                return Ok((false, Change::Nothing));
            }
            let next = self.next_revision(OP, &meta)?;
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((true, Change::Revision(next)))
        })
    }

    /// All instances, sorted by key.
    pub fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        const OP: &str = "list_instances";
        let txn = self.inner.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(self.db_err(OP))? {
            let (k, v) = entry.map_err(self.db_err(OP))?;
            let (key, r) = self.decode_entry::<InstanceRecord>(OP, "instances", k.value(), v.value())?;
            out.push(Instance {
                key,
                tenant: r.tenant,
                body: r.body,
                lease_expires_unix_ms: r.lease_expires_unix_ms,
                revision: r.revision,
            });
        }
        Ok(out)
    }

    /// Removes, in one durable transaction, every instance whose lease expired at or before
    /// `now_unix_ms`, and returns their keys (sorted).
    pub fn expire_leases(&self, now_unix_ms: u64) -> Result<Vec<ObjKey>, StoreError> {
        const OP: &str = "expire_leases";
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            let mut expired = Vec::new();
            for entry in table.iter().map_err(self.db_err(OP))? {
                let (k, v) = entry.map_err(self.db_err(OP))?;
                let (key, r) = self.decode_entry::<InstanceRecord>(OP, "instances", k.value(), v.value())?;
                if r.lease_expires_unix_ms.is_some_and(|at| at <= now_unix_ms) {
                    expired.push(key);
                }
            }
            if expired.is_empty() {
                return Ok((expired, Change::Nothing));
            }
            for key in &expired {
                table.remove(key.encode().as_str()).map_err(self.db_err(OP))?;
            }
            let next = self.next_revision(OP, &meta)?;
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((expired, Change::Revision(next)))
        })
    }

    /// Addresses for service hosts that have none, from [`VIP_RANGE`]. A host that already has one
    /// keeps it; new hosts (in `(tenant, host)` order) take the lowest free addresses. New
    /// allocations are durable before this returns; the revision does not move (VIPs are derived
    /// by the translator, not input to it). Fails, allocating nothing, when the range cannot hold
    /// every new host.
    pub fn allocate_vips(
        &self,
        hosts: &[(String, String)],
    ) -> Result<BTreeMap<(String, String), Ipv4Addr>, StoreError> {
        const OP: &str = "allocate_vips";
        for (tenant, host) in hosts {
            check_part(OP, "tenant", tenant, true)?;
            check_part(OP, "host", host, false)?;
        }
        let wanted: BTreeSet<&(String, String)> = hosts.iter().collect();
        self.write(OP, |txn| {
            let mut vips = txn.open_table(VIPS).map_err(self.db_err(OP))?;
            let mut addrs = txn.open_table(VIP_ADDRS).map_err(self.db_err(OP))?;
            let mut out = BTreeMap::new();
            let mut missing = Vec::new();
            for pair in wanted {
                let enc = vip_key(pair);
                match vips.get(enc.as_str()).map_err(self.db_err(OP))? {
                    Some(addr) => {
                        out.insert(pair.clone(), Ipv4Addr::from(addr.value()));
                    }
                    None => missing.push((pair, enc)),
                }
            }
            if missing.is_empty() {
                return Ok((out, Change::Nothing));
            }
            let mut used = BTreeSet::new();
            for entry in addrs.iter().map_err(self.db_err(OP))? {
                used.insert(entry.map_err(self.db_err(OP))?.0.value());
            }
            let fresh = vip::lowest_free(&used, missing.len()).map_err(|free| StoreError::VipsExhausted {
                file: self.inner.file.clone(),
                range: VIP_RANGE,
                requested: missing.len(),
                free,
            })?;
            for ((pair, enc), addr) in missing.into_iter().zip(fresh) {
                vips.insert(enc.as_str(), addr).map_err(self.db_err(OP))?;
                addrs.insert(addr, enc.as_str()).map_err(self.db_err(OP))?;
                out.insert(pair.clone(), Ipv4Addr::from(addr));
            }
            Ok((out, Change::Quiet))
        })
    }

    /// Frees every allocation whose `(tenant, host)` is not in `keep`; returns how many.
    pub fn release_vips(&self, keep: &BTreeSet<(String, String)>) -> Result<usize, StoreError> {
        const OP: &str = "release_vips";
        self.write(OP, |txn| {
            let mut vips = txn.open_table(VIPS).map_err(self.db_err(OP))?;
            let mut addrs = txn.open_table(VIP_ADDRS).map_err(self.db_err(OP))?;
            let mut release = Vec::new();
            for entry in vips.iter().map_err(self.db_err(OP))? {
                let (k, v) = entry.map_err(self.db_err(OP))?;
                let pair = self.decode_vip_key(OP, k.value())?;
                if !keep.contains(&pair) {
                    release.push((k.value().to_owned(), v.value()));
                }
            }
            for (enc, addr) in &release {
                vips.remove(enc.as_str()).map_err(self.db_err(OP))?;
                addrs.remove(addr).map_err(self.db_err(OP))?;
            }
            let change = if release.is_empty() { Change::Nothing } else { Change::Quiet };
            Ok((release.len(), change))
        })
    }

    /// Every allocated VIP.
    pub fn vips(&self) -> Result<BTreeMap<(String, String), Ipv4Addr>, StoreError> {
        const OP: &str = "vips";
        let txn = self.inner.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(VIPS).map_err(self.db_err(OP))?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(self.db_err(OP))? {
            let (k, v) = entry.map_err(self.db_err(OP))?;
            out.insert(self.decode_vip_key(OP, k.value())?, Ipv4Addr::from(v.value()));
        }
        Ok(out)
    }

    /// The store revision, updated after every committed change to objects or instances. The
    /// channel keeps only the newest value, so a slow reader skips revisions but never sees one
    /// go backwards.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    /// Runs `f` in a write transaction that commits with `Durability::Immediate` (fsync before
    /// `commit` returns) unless `f` fails or reports that nothing changed.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, Change), StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.inner.db.begin_write().map_err(self.db_err(op))?;
        txn.set_durability(Durability::Immediate);
        match f(&txn) {
            Ok((value, Change::Nothing)) => {
                txn.abort().map_err(self.db_err(op))?;
                Ok(value)
            }
            Ok((value, change)) => {
                txn.commit().map_err(self.db_err(op))?;
                if let Change::Revision(revision) = change {
                    // Two writers may reach this point out of commit order; keep the maximum.
                    self.inner.revision.send_if_modified(|current| {
                        let newer = revision > *current;
                        if newer {
                            *current = revision;
                        }
                        newer
                    });
                }
                Ok(value)
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(file = %self.inner.file.display(), op, error = %abort, "store: abort failed");
                }
                Err(e)
            }
        }
    }

    fn db_err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Db { file: self.inner.file.clone(), op, source: Box::new(e.into()) }
    }

    fn corrupt(&self, op: &'static str, table: &'static str, key: &str, reason: String) -> StoreError {
        StoreError::Corrupt { file: self.inner.file.clone(), op, table, key: key.replace('\0', "/"), reason }
    }

    fn next_revision(&self, op: &'static str, meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, StoreError> {
        let current = read_meta(meta, META_REVISION).map_err(self.db_err(op))?.unwrap_or(0);
        current.checked_add(1).ok_or_else(|| self.corrupt(op, "meta", META_REVISION, "revision overflow".into()))
    }

    fn read_record<R: DeserializeOwned>(
        &self,
        op: &'static str,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        name: &'static str,
        enc: &str,
    ) -> Result<Option<R>, StoreError> {
        let Some(guard) = table.get(enc).map_err(self.db_err(op))? else {
            return Ok(None);
        };
        serde_json::from_slice(guard.value()).map(Some).map_err(|e| self.corrupt(op, name, enc, e.to_string()))
    }

    fn decode_entry<R: DeserializeOwned>(
        &self,
        op: &'static str,
        table: &'static str,
        enc: &str,
        bytes: &[u8],
    ) -> Result<(ObjKey, R), StoreError> {
        let key = ObjKey::decode(enc).ok_or_else(|| self.corrupt(op, table, enc, "key is not kind/ns/name".into()))?;
        let record = serde_json::from_slice(bytes).map_err(|e| self.corrupt(op, table, enc, e.to_string()))?;
        Ok((key, record))
    }

    fn decode_vip_key(&self, op: &'static str, enc: &str) -> Result<(String, String), StoreError> {
        let (tenant, host) =
            enc.split_once('\0').ok_or_else(|| self.corrupt(op, "vips", enc, "key is not tenant/host".into()))?;
        Ok((tenant.to_owned(), host.to_owned()))
    }
}

fn object(key: ObjKey, r: ObjectRecord) -> Object {
    Object {
        key,
        tenant: r.tenant,
        body: r.body,
        revision: r.revision,
        created_revision: r.created_revision,
        created_at: r.created_at,
    }
}

fn vip_key((tenant, host): &(String, String)) -> String {
    format!("{tenant}\0{host}")
}

fn encode_record(op: &'static str, key: &ObjKey, record: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    let bytes =
        serde_json::to_vec(record).map_err(|e| StoreError::Encode { op, key: key.clone(), reason: e.to_string() })?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge { op, key: key.clone(), size: bytes.len(), limit: MAX_RECORD_BYTES });
    }
    Ok(bytes)
}

fn read_meta(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<Option<u64>, redb::StorageError> {
    Ok(meta.get(name)?.map(|g| g.value()))
}

/// Checks the schema version before writing anything, then creates missing tables. Returns the
/// store revision.
fn init_schema(db: &Database, file: &Path) -> Result<u64, StoreError> {
    const OP: &str = "open";
    let db_err = |e: redb::Error| StoreError::Db { file: file.to_owned(), op: OP, source: Box::new(e) };
    let read = db.begin_read().map_err(|e| db_err(e.into()))?;
    let fresh = match read.open_table(META) {
        Ok(meta) => match read_meta(&meta, META_SCHEMA).map_err(|e| db_err(e.into()))? {
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew { file: file.to_owned(), found, supported: SCHEMA_VERSION })
            }
            Some(found) if found == SCHEMA_VERSION => false,
            other => {
                return Err(StoreError::Corrupt {
                    file: file.to_owned(),
                    op: OP,
                    table: "meta",
                    key: META_SCHEMA.into(),
                    reason: format!("schema version {other:?} is not one weft ever wrote"),
                })
            }
        },
        Err(TableError::TableDoesNotExist(_)) => true,
        Err(e) => return Err(db_err(e.into())),
    };
    drop(read);

    let mut txn = db.begin_write().map_err(|e| db_err(e.into()))?;
    txn.set_durability(Durability::Immediate);
    let revision = {
        let mut meta = txn.open_table(META).map_err(|e| db_err(e.into()))?;
        if fresh {
            meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(|e| db_err(e.into()))?;
            meta.insert(META_REVISION, 0).map_err(|e| db_err(e.into()))?;
        }
        txn.open_table(OBJECTS).map_err(|e| db_err(e.into()))?;
        txn.open_table(INSTANCES).map_err(|e| db_err(e.into()))?;
        txn.open_table(VIPS).map_err(|e| db_err(e.into()))?;
        txn.open_table(VIP_ADDRS).map_err(|e| db_err(e.into()))?;
        read_meta(&meta, META_REVISION).map_err(|e| db_err(e.into()))?.unwrap_or(0)
    };
    txn.commit().map_err(|e| db_err(e.into()))?;
    Ok(revision)
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

    #[test]
    fn a_newer_schema_is_refused_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let file = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&file).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(META_SCHEMA, SCHEMA_VERSION + 1).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()) && msg.contains("newer"), "{msg}");
        let db = Database::create(&file).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(OBJECTS).is_ok(), "tables of the first open are still there");
        assert_eq!(read_meta(&txn.open_table(META).unwrap(), META_SCHEMA).unwrap(), Some(SCHEMA_VERSION + 1));
    }

    #[test]
    fn a_foreign_meta_table_without_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&file).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("something", 7).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { table: "meta", .. }), "{err:?}");
    }
}
