//! The embedded backend: one redb file, locked while open, every write a redb transaction
//! committed with `Durability::Immediate`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::plan::{self, Change, Host, InstanceRecord, ObjectRecord, PutInstance, Renew};
use crate::{Applied, Backend, Instance, ObjKey, Object, StoreError, FILE_NAME, SCHEMA_VERSION};

/// `"kind\0namespace\0name"` → JSON of [`ObjectRecord`].
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// `"kind\0namespace\0name"` → JSON of [`InstanceRecord`].
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// `"tenant\0host"` → IPv4 address as a big-endian `u32`.
const VIPS: TableDefinition<&str, u32> = TableDefinition::new("vips");
/// The reverse of [`VIPS`], so that the used addresses can be read in order without decoding names.
const VIP_ADDRS: TableDefinition<u32, &str> = TableDefinition::new("vip_addrs");
/// `schema_version` and `revision`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_SCHEMA: &str = "schema_version";
const META_REVISION: &str = "revision";

pub(crate) struct Redb {
    db: Database,
    file: PathBuf,
    name: String,
}

/// Opens (creating when missing) `dir/weft.redb`; returns the backend and the stored revision.
pub(crate) fn open(dir: &Path) -> Result<(Redb, u64), StoreError> {
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
    let name = file.display().to_string();
    Ok((Redb { db, file, name }, revision))
}

impl Backend for Redb {
    fn name(&self) -> &str {
        &self.name
    }

    fn file(&self) -> Option<&Path> {
        Some(&self.file)
    }

    fn apply(&self, objs: Vec<(ObjKey, String, Value)>) -> Result<(Vec<Applied>, Change), StoreError> {
        const OP: &str = "apply";
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(OBJECTS).map_err(self.db_err(OP))?;
            let next = plan::next_revision(&self.name, OP, self.read_revision(OP, &meta)?)?;
            let mut old = Vec::with_capacity(objs.len());
            for (key, _, _) in &objs {
                old.push(self.read_record::<ObjectRecord>(OP, &table, "objects", &key.encode())?);
            }
            let (applied, writes) = plan::apply(objs, old, next)?;
            if writes.is_empty() {
                return Ok((applied, Change::Nothing));
            }
            for (key, bytes) in &writes {
                table.insert(key.encode().as_str(), bytes.as_slice()).map_err(self.db_err(OP))?;
            }
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((applied, Change::Revision(next)))
        })
    }

    fn delete(&self, keys: &[ObjKey]) -> Result<(Vec<bool>, Change), StoreError> {
        const OP: &str = "delete";
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
            let next = plan::next_revision(&self.name, OP, self.read_revision(OP, &meta)?)?;
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((out, Change::Revision(next)))
        })
    }

    fn get(&self, key: &ObjKey) -> Result<Option<Object>, StoreError> {
        const OP: &str = "get";
        let txn = self.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(OBJECTS).map_err(self.db_err(OP))?;
        let record: Option<ObjectRecord> = self.read_record(OP, &table, "objects", &key.encode())?;
        Ok(record.map(|r| r.into_object(key.clone())))
    }

    fn list(&self, kind: Option<&str>) -> Result<Vec<Object>, StoreError> {
        const OP: &str = "list";
        let txn = self.db.begin_read().map_err(self.db_err(OP))?;
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
            out.push(record.into_object(key));
        }
        Ok(out)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        const OP: &str = "revision";
        let txn = self.db.begin_read().map_err(self.db_err(OP))?;
        let meta = txn.open_table(META).map_err(self.db_err(OP))?;
        self.read_revision(OP, &meta)
    }

    fn put_instance(
        &self,
        key: ObjKey,
        tenant: &str,
        body: Value,
        lease_expires_unix_ms: Option<u64>,
    ) -> Result<(u64, Change), StoreError> {
        const OP: &str = "put_instance";
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            let enc = key.encode();
            let old: Option<InstanceRecord> = self.read_record(OP, &table, "instances", &enc)?;
            let next = plan::next_revision(&self.name, OP, self.read_revision(OP, &meta)?)?;
            let (bytes, revision, change) =
                match plan::put_instance(&key, old, tenant, body, lease_expires_unix_ms, next)? {
                    PutInstance::Unchanged(revision) => return Ok((revision, Change::Nothing)),
                    PutInstance::LeaseOnly(bytes, revision) => (bytes, revision, Change::Quiet),
                    PutInstance::Changed(bytes) => {
                        meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
                        (bytes, next, Change::Revision(next))
                    }
                };
            table.insert(enc.as_str(), bytes.as_slice()).map_err(self.db_err(OP))?;
            Ok((revision, change))
        })
    }

    fn renew_lease(&self, key: &ObjKey, lease_expires_unix_ms: u64) -> Result<(bool, Change), StoreError> {
        const OP: &str = "renew_lease";
        self.write(OP, |txn| {
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            let enc = key.encode();
            let old: Option<InstanceRecord> = self.read_record(OP, &table, "instances", &enc)?;
            match plan::renew(key, old, lease_expires_unix_ms)? {
                Renew::NoLease => Ok((false, Change::Nothing)),
                Renew::Same => Ok((true, Change::Nothing)),
                Renew::Write(bytes) => {
                    table.insert(enc.as_str(), bytes.as_slice()).map_err(self.db_err(OP))?;
                    Ok((true, Change::Quiet))
                }
            }
        })
    }

    fn remove_instance(&self, key: &ObjKey) -> Result<(bool, Change), StoreError> {
        const OP: &str = "remove_instance";
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            if table.remove(key.encode().as_str()).map_err(self.db_err(OP))?.is_none() {
                return Ok((false, Change::Nothing));
            }
            let next = plan::next_revision(&self.name, OP, self.read_revision(OP, &meta)?)?;
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((true, Change::Revision(next)))
        })
    }

    fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        const OP: &str = "list_instances";
        let txn = self.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(self.db_err(OP))? {
            let (k, v) = entry.map_err(self.db_err(OP))?;
            let (key, r) = self.decode_entry::<InstanceRecord>(OP, "instances", k.value(), v.value())?;
            out.push(r.into_instance(key));
        }
        Ok(out)
    }

    fn expire_leases(&self, now_unix_ms: u64) -> Result<(Vec<ObjKey>, Change), StoreError> {
        const OP: &str = "expire_leases";
        self.write(OP, |txn| {
            let mut meta = txn.open_table(META).map_err(self.db_err(OP))?;
            let mut table = txn.open_table(INSTANCES).map_err(self.db_err(OP))?;
            let mut expired = Vec::new();
            for entry in table.iter().map_err(self.db_err(OP))? {
                let (k, v) = entry.map_err(self.db_err(OP))?;
                let (key, r) = self.decode_entry::<InstanceRecord>(OP, "instances", k.value(), v.value())?;
                if plan::expired(&r, now_unix_ms) {
                    expired.push(key);
                }
            }
            if expired.is_empty() {
                return Ok((expired, Change::Nothing));
            }
            for key in &expired {
                table.remove(key.encode().as_str()).map_err(self.db_err(OP))?;
            }
            let next = plan::next_revision(&self.name, OP, self.read_revision(OP, &meta)?)?;
            meta.insert(META_REVISION, next).map_err(self.db_err(OP))?;
            Ok((expired, Change::Revision(next)))
        })
    }

    fn allocate_vips(&self, wanted: &BTreeSet<&Host>) -> Result<(BTreeMap<Host, Ipv4Addr>, Change), StoreError> {
        const OP: &str = "allocate_vips";
        self.write(OP, |txn| {
            let mut vips = txn.open_table(VIPS).map_err(self.db_err(OP))?;
            let mut addrs = txn.open_table(VIP_ADDRS).map_err(self.db_err(OP))?;
            let existing = self.read_vips(OP, &vips)?;
            let (out, new) = plan::allocate(&self.name, wanted, &existing)?;
            if new.is_empty() {
                return Ok((out, Change::Nothing));
            }
            for (host, addr) in new {
                let enc = vip_key(&host);
                vips.insert(enc.as_str(), addr).map_err(self.db_err(OP))?;
                addrs.insert(addr, enc.as_str()).map_err(self.db_err(OP))?;
            }
            Ok((out, Change::Quiet))
        })
    }

    fn release_vips(&self, keep: &BTreeSet<Host>, at_revision: Option<u64>) -> Result<Option<usize>, StoreError> {
        const OP: &str = "release_vips";
        self.write(OP, |txn| {
            if let Some(expected) = at_revision {
                let meta = txn.open_table(META).map_err(self.db_err(OP))?;
                if self.read_revision(OP, &meta)? != expected {
                    return Ok((None, Change::Nothing));
                }
            }
            let mut vips = txn.open_table(VIPS).map_err(self.db_err(OP))?;
            let mut addrs = txn.open_table(VIP_ADDRS).map_err(self.db_err(OP))?;
            let release = plan::release(&self.read_vips(OP, &vips)?, keep);
            for (host, addr) in &release {
                vips.remove(vip_key(host).as_str()).map_err(self.db_err(OP))?;
                addrs.remove(addr).map_err(self.db_err(OP))?;
            }
            let change = if release.is_empty() { Change::Nothing } else { Change::Quiet };
            Ok((Some(release.len()), change))
        })
        .map(|(released, _)| released)
    }

    fn vips(&self) -> Result<BTreeMap<Host, Ipv4Addr>, StoreError> {
        const OP: &str = "vips";
        let txn = self.db.begin_read().map_err(self.db_err(OP))?;
        let table = txn.open_table(VIPS).map_err(self.db_err(OP))?;
        Ok(self.read_vips(OP, &table)?.into_iter().map(|(h, a)| (h, Ipv4Addr::from(a))).collect())
    }
}

impl Redb {
    /// Runs `f` in a write transaction that commits with `Durability::Immediate` (fsync before
    /// `commit` returns) unless `f` fails or reports that nothing changed.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<(T, Change), StoreError>,
    ) -> Result<(T, Change), StoreError> {
        let mut txn = self.db.begin_write().map_err(self.db_err(op))?;
        txn.set_durability(Durability::Immediate);
        match f(&txn) {
            Ok((value, Change::Nothing)) => {
                txn.abort().map_err(self.db_err(op))?;
                Ok((value, Change::Nothing))
            }
            Ok((value, change)) => {
                txn.commit().map_err(self.db_err(op))?;
                Ok((value, change))
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(file = %self.file.display(), op, error = %abort, "store: abort failed");
                }
                Err(e)
            }
        }
    }

    fn db_err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Db { file: self.file.clone(), op, source: Box::new(e.into()) }
    }

    fn corrupt(&self, op: &'static str, table: &'static str, key: &str, reason: String) -> StoreError {
        StoreError::Corrupt { store: self.name.clone(), op, table, key: key.replace('\0', "/"), reason }
    }

    fn read_revision(&self, op: &'static str, meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, StoreError> {
        Ok(read_meta(meta, META_REVISION).map_err(self.db_err(op))?.unwrap_or(0))
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

    fn read_vips(
        &self,
        op: &'static str,
        table: &impl ReadableTable<&'static str, u32>,
    ) -> Result<BTreeMap<Host, u32>, StoreError> {
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(self.db_err(op))? {
            let (k, v) = entry.map_err(self.db_err(op))?;
            let (tenant, host) = k
                .value()
                .split_once('\0')
                .ok_or_else(|| self.corrupt(op, "vips", k.value(), "key is not tenant/host".into()))?;
            out.insert((tenant.to_owned(), host.to_owned()), v.value());
        }
        Ok(out)
    }
}

fn vip_key((tenant, host): &Host) -> String {
    format!("{tenant}\0{host}")
}

pub(crate) fn read_meta(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<Option<u64>, redb::StorageError> {
    Ok(meta.get(name)?.map(|g| g.value()))
}

/// Checks the schema version before writing anything, then creates missing tables. Returns the
/// store revision.
fn init_schema(db: &Database, file: &Path) -> Result<u64, StoreError> {
    const OP: &str = "open";
    let db_err = |e: redb::Error| StoreError::Db { file: file.to_owned(), op: OP, source: Box::new(e) };
    let store = file.display().to_string();
    let read = db.begin_read().map_err(|e| db_err(e.into()))?;
    let fresh = match read.open_table(META) {
        Ok(meta) => match read_meta(&meta, META_SCHEMA).map_err(|e| db_err(e.into()))? {
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew { store, found, supported: SCHEMA_VERSION })
            }
            Some(found) if found == SCHEMA_VERSION => false,
            other => {
                return Err(StoreError::Corrupt {
                    store,
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
    use crate::Store;

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
