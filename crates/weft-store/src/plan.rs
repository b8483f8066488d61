//! What each write does, as pure functions of what is stored: both backends read, call these, and
//! write the result in one transaction, so the rules (no-op on unchanged, revisions, quiet lease
//! moves, lowest free VIPs) are the same whichever holds the data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{time, vip, Applied, Instance, ObjKey, Object, StoreError, MAX_RECORD_BYTES, VIP_RANGE};

/// A stored object as encoded (JSON) under its key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ObjectRecord {
    pub tenant: String,
    pub body: Value,
    pub revision: u64,
    pub created_revision: u64,
    pub created_at: String,
}

impl ObjectRecord {
    pub fn into_object(self, key: ObjKey) -> Object {
        Object {
            key,
            tenant: self.tenant,
            body: self.body,
            revision: self.revision,
            created_revision: self.created_revision,
            created_at: self.created_at,
        }
    }
}

/// A stored instance as encoded (JSON) under its key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub tenant: String,
    pub body: Value,
    pub lease_expires_unix_ms: Option<u64>,
    pub revision: u64,
}

impl InstanceRecord {
    pub fn into_instance(self, key: ObjKey) -> Instance {
        Instance {
            key,
            tenant: self.tenant,
            body: self.body,
            lease_expires_unix_ms: self.lease_expires_unix_ms,
            revision: self.revision,
        }
    }
}

/// What a write changed, which decides whether it commits and whether watchers hear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing: nothing is written.
    Nothing,
    /// Written, but no input to the translator changed (lease renewals, VIP bookkeeping).
    Quiet,
    /// Written at this new store revision; watchers are told.
    Revision(u64),
}

pub(crate) fn encode_record(op: &'static str, key: &ObjKey, record: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    let bytes =
        serde_json::to_vec(record).map_err(|e| StoreError::Encode { op, key: key.clone(), reason: e.to_string() })?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge { op, key: key.clone(), size: bytes.len(), limit: MAX_RECORD_BYTES });
    }
    Ok(bytes)
}

/// The store revision after `current`.
pub(crate) fn next_revision(store: &str, op: &'static str, current: u64) -> Result<u64, StoreError> {
    current.checked_add(1).ok_or_else(|| StoreError::Corrupt {
        store: store.to_owned(),
        op,
        table: "meta",
        key: "revision".into(),
        reason: "revision overflow".into(),
    })
}

/// Encoded records to write, by key.
pub(crate) type Writes = Vec<(ObjKey, Vec<u8>)>;

/// `apply`: the results per object and the records to write (empty when every object is
/// unchanged). `old` holds the stored record of each object, in the same order.
pub(crate) fn apply(
    objs: Vec<(ObjKey, String, Value)>,
    old: Vec<Option<ObjectRecord>>,
    next: u64,
) -> Result<(Vec<Applied>, Writes), StoreError> {
    const OP: &str = "apply";
    let mut applied = Vec::with_capacity(objs.len());
    let mut writes = Vec::new();
    for ((key, tenant, body), old) in objs.into_iter().zip(old) {
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
            None => {
                ObjectRecord { tenant, body, revision: next, created_revision: next, created_at: time::now_rfc3339() }
            }
        };
        let bytes = encode_record(OP, &key, &record)?;
        let created = record.created_revision == next;
        applied.push(Applied { key: key.clone(), revision: next, created, unchanged: false });
        writes.push((key, bytes));
    }
    Ok((applied, writes))
}

/// What `put_instance` writes.
pub(crate) enum PutInstance {
    /// Tenant, body and lease as stored: nothing; the instance's revision.
    Unchanged(u64),
    /// Only the lease moved: this record, quietly; the instance keeps its revision.
    LeaseOnly(Vec<u8>, u64),
    /// Tenant or body changed (or it is new): this record at the next store revision.
    Changed(Vec<u8>),
}

pub(crate) fn put_instance(
    key: &ObjKey,
    old: Option<InstanceRecord>,
    tenant: &str,
    body: Value,
    lease_expires_unix_ms: Option<u64>,
    next: u64,
) -> Result<PutInstance, StoreError> {
    const OP: &str = "put_instance";
    match old {
        Some(old) if old.tenant == tenant && old.body == body => {
            if old.lease_expires_unix_ms == lease_expires_unix_ms {
                return Ok(PutInstance::Unchanged(old.revision));
            }
            let revision = old.revision;
            let record = InstanceRecord { lease_expires_unix_ms, ..old };
            Ok(PutInstance::LeaseOnly(encode_record(OP, key, &record)?, revision))
        }
        _ => {
            let record = InstanceRecord { tenant: tenant.to_owned(), body, lease_expires_unix_ms, revision: next };
            Ok(PutInstance::Changed(encode_record(OP, key, &record)?))
        }
    }
}

/// What `renew_lease` writes.
pub(crate) enum Renew {
    /// No such instance, or it holds no lease.
    NoLease,
    /// The lease already ends then.
    Same,
    /// This record, quietly.
    Write(Vec<u8>),
}

pub(crate) fn renew(
    key: &ObjKey,
    old: Option<InstanceRecord>,
    lease_expires_unix_ms: u64,
) -> Result<Renew, StoreError> {
    let Some(old) = old.filter(|r| r.lease_expires_unix_ms.is_some()) else {
        return Ok(Renew::NoLease);
    };
    if old.lease_expires_unix_ms == Some(lease_expires_unix_ms) {
        return Ok(Renew::Same);
    }
    let record = InstanceRecord { lease_expires_unix_ms: Some(lease_expires_unix_ms), ..old };
    Ok(Renew::Write(encode_record("renew_lease", key, &record)?))
}

/// Whether an instance's lease has run out at `now_unix_ms`.
pub(crate) fn expired(record: &InstanceRecord, now_unix_ms: u64) -> bool {
    record.lease_expires_unix_ms.is_some_and(|at| at <= now_unix_ms)
}

pub(crate) type Host = (String, String);

/// `allocate_vips`: every wanted host's address, and the new allocations among them (lowest free
/// addresses, in `(tenant, host)` order). Fails, allocating nothing, when the range cannot hold
/// every new host.
#[allow(clippy::type_complexity)]
pub(crate) fn allocate(
    store: &str,
    wanted: &BTreeSet<&Host>,
    existing: &BTreeMap<Host, u32>,
) -> Result<(BTreeMap<Host, Ipv4Addr>, Vec<(Host, u32)>), StoreError> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for &host in wanted {
        match existing.get(host) {
            Some(addr) => {
                out.insert(host.clone(), Ipv4Addr::from(*addr));
            }
            None => missing.push(host),
        }
    }
    if missing.is_empty() {
        return Ok((out, Vec::new()));
    }
    let used: BTreeSet<u32> = existing.values().copied().collect();
    let fresh = vip::lowest_free(&used, missing.len()).map_err(|free| StoreError::VipsExhausted {
        store: store.to_owned(),
        range: VIP_RANGE,
        requested: missing.len(),
        free,
    })?;
    let mut new = Vec::with_capacity(missing.len());
    for (host, addr) in missing.into_iter().zip(fresh) {
        out.insert(host.clone(), Ipv4Addr::from(addr));
        new.push((host.clone(), addr));
    }
    Ok((out, new))
}

/// `release_vips`: the allocations whose host is not in `keep`.
pub(crate) fn release(existing: &BTreeMap<Host, u32>, keep: &BTreeSet<Host>) -> Vec<(Host, u32)> {
    existing.iter().filter(|(host, _)| !keep.contains(*host)).map(|(h, a)| (h.clone(), *a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(tenant: &str, body: Value, revision: u64) -> ObjectRecord {
        ObjectRecord { tenant: tenant.into(), body, revision, created_revision: 1, created_at: "t".into() }
    }

    #[test]
    fn apply_writes_only_what_changed() {
        let k = |n: &str| ObjKey::new("K", "ns", n);
        let objs = vec![
            (k("same"), "t".to_string(), json!(1)),
            (k("body"), "t".to_string(), json!(2)),
            (k("tenant"), "u".to_string(), json!(3)),
            (k("new"), "t".to_string(), json!(4)),
        ];
        let old = vec![Some(rec("t", json!(1), 3)), Some(rec("t", json!(1), 3)), Some(rec("t", json!(3), 3)), None];
        let (applied, writes) = apply(objs, old, 9).unwrap();
        let got: Vec<_> = applied.iter().map(|a| (a.key.name.as_str(), a.revision, a.created, a.unchanged)).collect();
        assert_eq!(
            got,
            [("same", 3, false, true), ("body", 9, false, false), ("tenant", 9, false, false), ("new", 9, true, false)]
        );
        let written: Vec<_> = writes.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(written, ["body", "tenant", "new"]);
        let kept: ObjectRecord = serde_json::from_slice(&writes[0].1).unwrap();
        assert_eq!((kept.created_revision, kept.created_at.as_str()), (1, "t"), "an update keeps creation data");
    }

    #[test]
    fn instance_writes_by_what_moved() {
        let key = ObjKey::new("WorkloadEntry", "ns", "vm");
        let old =
            || Some(InstanceRecord { tenant: "t".into(), body: json!(1), lease_expires_unix_ms: Some(5), revision: 2 });
        assert!(matches!(put_instance(&key, old(), "t", json!(1), Some(5), 7).unwrap(), PutInstance::Unchanged(2)));
        assert!(matches!(put_instance(&key, old(), "t", json!(1), Some(6), 7).unwrap(), PutInstance::LeaseOnly(_, 2)));
        assert!(matches!(put_instance(&key, old(), "t", json!(2), Some(5), 7).unwrap(), PutInstance::Changed(_)));
        assert!(matches!(put_instance(&key, None, "t", json!(1), None, 7).unwrap(), PutInstance::Changed(_)));
        assert!(matches!(renew(&key, None, 9).unwrap(), Renew::NoLease));
        assert!(matches!(renew(&key, old(), 5).unwrap(), Renew::Same));
        assert!(matches!(renew(&key, old(), 9).unwrap(), Renew::Write(_)));
        let permanent = InstanceRecord { tenant: "t".into(), body: json!(1), lease_expires_unix_ms: None, revision: 2 };
        assert!(matches!(renew(&key, Some(permanent.clone()), 9).unwrap(), Renew::NoLease));
        assert!(!expired(&permanent, u64::MAX));
        assert!(expired(&old().unwrap(), 5) && !expired(&old().unwrap(), 4));
    }

    #[test]
    fn vips_keep_existing_and_take_the_lowest_free() {
        let h = |s: &str| ("t".to_string(), s.to_string());
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        let existing: BTreeMap<Host, u32> = [(h("a"), ip("240.240.0.2")), (h("gone"), ip("240.240.0.1"))].into();
        let (wa, wb, wc) = (h("a"), h("b"), h("c"));
        let wanted: BTreeSet<&Host> = [&wc, &wa, &wb].into();
        let (out, new) = allocate("s", &wanted, &existing).unwrap();
        assert_eq!(out[&h("a")], Ipv4Addr::new(240, 240, 0, 2));
        assert_eq!(new, [(h("b"), ip("240.240.0.3")), (h("c"), ip("240.240.0.4"))]);
        let keep: BTreeSet<Host> = [h("a"), h("b")].into();
        assert_eq!(release(&existing, &keep), [(h("gone"), ip("240.240.0.1"))]);
    }
}
