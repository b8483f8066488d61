//! The etcd backend: several control planes share one store. Every write is one etcd transaction
//! (committed by a quorum before it returns) guarded by compare-and-swap on the mod revisions of
//! the keys its decision rests on, and retried from a fresh read when another writer got there
//! first. The store revision is a counter key of its own, so it moves exactly as in the embedded
//! store (quiet writes leave it alone); an etcd watch on that key wakes every replica.
//!
//! The store API blocks; etcd's client is async. The backend runs the client on a runtime of its
//! own, on a thread of its own, and each call waits for one request, bounded by a timeout, so
//! callers on a blocking pool or a plain thread both work.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use weft_etcd::{op, pb, prefix_end, Client, ClientOptions, EtcdError};

use crate::plan::{self, Change, Host, InstanceRecord, ObjectRecord, PutInstance, Renew};
use crate::{advance, Applied, Backend, Instance, ObjKey, Object, StoreError, SCHEMA_VERSION};

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "weft";

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one write that keeps losing compare-and-swap races before it gives up.
const MAX_ATTEMPTS: usize = 64;
/// Operations in one transaction stay below etcd's default `--max-txn-ops` of 128.
const MAX_TXN_OPS: usize = 128;
/// Instances removed per transaction by a lease sweep (a compare and a delete each).
const EXPIRE_BATCH: usize = 100;
/// VIP allocations or releases per transaction (two keys each).
const VIP_BATCH: usize = 60;
/// Keys per page of a range read.
const PAGE: i64 = 256;

const META_SCHEMA: &str = "schema_version";
const META_REVISION: &str = "revision";
const META_VIPS: &str = "vips";

/// Where an etcd store lives: `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Every key of the store starts with `/PREFIX/`.
    pub prefix: String,
    /// Bound on every etcd call.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (prefix `weft` when absent).
    pub fn from_url(url: &str) -> Result<EtcdConfig, StoreError> {
        let bad = |reason: String| StoreError::BadUrl { url: url.to_owned(), reason };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("must start with etcd:// (etcd://HOST:PORT[,HOST:PORT...][/PREFIX])".into()))?;
        if rest.contains(['?', '#', '@']) {
            return Err(bad("user info, query strings and fragments are not supported".into()));
        }
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut endpoints = Vec::new();
        for ep in hosts.split(',') {
            endpoints.push(parse_endpoint(ep).map_err(|reason| bad(format!("endpoint {ep:?}: {reason}")))?);
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { DEFAULT_PREFIX } else { prefix };
        if prefix.split('/').any(str::is_empty) {
            return Err(bad(format!("prefix {prefix:?} has an empty segment")));
        }
        if !prefix.chars().all(|c| c.is_ascii_graphic()) {
            return Err(bad(format!("prefix {prefix:?}: only printable ASCII without spaces")));
        }
        Ok(EtcdConfig { endpoints, prefix: prefix.to_owned(), request_timeout: DEFAULT_REQUEST_TIMEOUT })
    }

    /// The canonical URL.
    pub fn url(&self) -> String {
        format!("etcd://{}/{}", self.endpoints.join(","), self.prefix)
    }
}

fn parse_endpoint(ep: &str) -> Result<String, &'static str> {
    let (host, port) = ep.rsplit_once(':').ok_or("must be HOST:PORT")?;
    let port: u16 = port.parse().map_err(|_| "the port is not a number from 1 to 65535")?;
    if port == 0 {
        return Err("the port is not a number from 1 to 65535");
    }
    let ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    if !ok {
        return Err("the host is not a name, an IPv4 address or a bracketed IPv6 address");
    }
    Ok(ep.to_owned())
}

/// The store's keys under `/PREFIX/`.
struct Keys {
    root: String,
}

impl Keys {
    fn meta(&self, name: &str) -> Vec<u8> {
        format!("{}meta/{name}", self.root).into_bytes()
    }

    fn objects(&self) -> Vec<u8> {
        format!("{}objects/", self.root).into_bytes()
    }

    fn object(&self, key: &ObjKey) -> Vec<u8> {
        format!("{}objects/{}", self.root, key.encode()).into_bytes()
    }

    fn instances(&self) -> Vec<u8> {
        format!("{}instances/", self.root).into_bytes()
    }

    fn instance(&self, key: &ObjKey) -> Vec<u8> {
        format!("{}instances/{}", self.root, key.encode()).into_bytes()
    }

    fn vips(&self) -> Vec<u8> {
        format!("{}vips/", self.root).into_bytes()
    }

    fn vip(&self, (tenant, host): &Host) -> Vec<u8> {
        format!("{}vips/{tenant}\0{host}", self.root).into_bytes()
    }

    fn vip_addr(&self, addr: u32) -> Vec<u8> {
        format!("{}vip_addrs/{addr:08x}", self.root).into_bytes()
    }
}

pub(crate) struct Etcd {
    client: Client,
    keys: Keys,
    name: String,
    handle: tokio::runtime::Handle,
    call_timeout: Duration,
    /// Dropped with the backend: the runtime's thread then ends, and with it the watch.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Connects, checks or writes the schema version, and starts following the revision key.
pub(crate) fn open(cfg: &EtcdConfig, revision: Arc<watch::Sender<u64>>) -> Result<Etcd, StoreError> {
    let name = cfg.url();
    let (handle, stop) = start_runtime().map_err(|e| StoreError::Etcd {
        store: name.clone(),
        op: "open",
        source: EtcdError::Protocol { endpoints: cfg.endpoints.join(",").into(), op: "open", reason: e },
    })?;
    let opts = ClientOptions { request_timeout: cfg.request_timeout, ..ClientOptions::default() };
    let client = {
        let _guard = handle.enter();
        Client::new(&cfg.endpoints, opts).map_err(|source| StoreError::Etcd {
            store: name.clone(),
            op: "open",
            source,
        })?
    };
    let etcd = Etcd {
        client,
        keys: Keys { root: format!("/{}/", cfg.prefix) },
        name,
        handle,
        call_timeout: cfg.request_timeout + Duration::from_secs(1),
        _stop: stop,
    };
    let current = etcd.init_schema()?;
    advance(&revision, current);
    etcd.handle.spawn(follow_revision(etcd.client.clone(), etcd.keys.meta(META_REVISION), revision, etcd.name.clone()));
    Ok(etcd)
}

/// A current-thread runtime on a thread of its own, running until the returned sender drops.
fn start_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), String> {
    let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("weft-store-etcd".into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => {
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Either a send (never made) or the sender's drop ends the wait.
                let _ = rt.block_on(stop_rx);
            }
            Err(e) => {
                let _ = handle_tx.send(Err(format!("cannot start the etcd client's runtime: {e}")));
            }
        })
        .map_err(|e| format!("cannot start the etcd client's thread: {e}"))?;
    let handle = handle_rx.recv().map_err(|_| "the etcd client's thread ended at start".to_string())??;
    Ok((handle, stop_tx))
}

/// Follows the revision key: after every (re)connection, reads it, then watches it from the
/// revision of that read, so no change in between is missed.
async fn follow_revision(client: Client, key: Vec<u8>, revision: Arc<watch::Sender<u64>>, name: String) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    let mut backoff = FIRST_BACKOFF;
    let mut broken = false;
    loop {
        let mut connected = false;
        let result = follow_once(&client, &key, &revision, &mut connected).await;
        if connected {
            if broken {
                tracing::info!(store = %name, "store: revision watch re-established");
            }
            broken = false;
            backoff = FIRST_BACKOFF;
        }
        let error = match result {
            Ok(()) => "the server closed the watch".to_string(),
            Err(e) => e.to_string(),
        };
        if !broken {
            tracing::warn!(store = %name, %error, "store: revision watch lost; reconnecting");
            broken = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow_once(
    client: &Client,
    key: &[u8],
    revision: &watch::Sender<u64>,
    connected: &mut bool,
) -> Result<(), EtcdError> {
    let read = client.range(pb::RangeRequest { key: key.to_vec(), ..Default::default() }).await?;
    let at = read.header.as_ref().map_or(0, |h| h.revision);
    if let Some(value) = read.kvs.first().and_then(|kv| parse_u64(&kv.value)) {
        advance(revision, value);
    }
    let create = pb::WatchCreateRequest {
        key: key.to_vec(),
        start_revision: at + 1,
        progress_notify: true,
        ..Default::default()
    };
    let mut watch = client.watch(create).await?;
    *connected = true;
    loop {
        let Some(msg) = watch.message().await? else { return Ok(()) };
        if msg.canceled {
            return Err(EtcdError::Protocol {
                endpoints: client.endpoints().into(),
                op: "watch",
                reason: format!(
                    "canceled by the server: {} (compacted to {})",
                    msg.cancel_reason, msg.compact_revision
                ),
            });
        }
        for event in msg.events {
            if event.r#type != pb::EventType::Put as i32 {
                continue;
            }
            if let Some(value) = event.kv.and_then(|kv| parse_u64(&kv.value)) {
                advance(revision, value);
            }
        }
    }
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A short, growing, jittered pause after losing a compare-and-swap race, so that two replicas
/// retrying at once drift apart.
fn backoff(attempt: usize) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let base = 1u64 << attempt.min(5);
    std::thread::sleep(Duration::from_millis(base + u64::from(nanos) % (base + 1)));
}

fn put(key: Vec<u8>, value: impl Into<Vec<u8>>) -> pb::RequestOp {
    op::put(key, value)
}

impl Etcd {
    /// Runs one request on the client's runtime and waits for it (bounded).
    fn call<T, F>(&self, op: &'static str, f: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, EtcdError>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(self.call_timeout) {
            Ok(result) => result.map_err(|source| self.etcd_err(op, source)),
            Err(_) => Err(self.etcd_err(
                op,
                EtcdError::Timeout { endpoints: self.client.endpoints().into(), op, timeout: self.call_timeout },
            )),
        }
    }

    fn etcd_err(&self, op: &'static str, source: EtcdError) -> StoreError {
        StoreError::Etcd { store: self.name.clone(), op, source }
    }

    fn corrupt(&self, op: &'static str, table: &'static str, key: &[u8], reason: String) -> StoreError {
        let key = String::from_utf8_lossy(key).replace('\0', "/");
        StoreError::Corrupt { store: self.name.clone(), op, table, key, reason }
    }

    fn txn(&self, op: &'static str, req: pb::TxnRequest) -> Result<pb::TxnResponse, StoreError> {
        self.call(op, move |c| async move { c.txn(req).await })
    }

    /// Commits a write transaction; `false` when a guard failed (another writer was first).
    fn commit(&self, op: &'static str, req: pb::TxnRequest, changes: usize) -> Result<Option<i64>, StoreError> {
        match self.call(op, move |c| async move { c.txn(req).await }) {
            Ok(r) if r.succeeded => Ok(Some(r.header.map_or(0, |h| h.revision))),
            Ok(_) => Ok(None),
            Err(StoreError::Etcd { source, .. }) if source.is_too_large() => {
                Err(StoreError::TxnTooLarge { store: self.name.clone(), op, changes, source })
            }
            Err(e) => Err(e),
        }
    }

    /// Point reads of several keys, at one etcd revision per batch of [`MAX_TXN_OPS`].
    fn get_many(&self, op: &'static str, keys: &[Vec<u8>]) -> Result<Vec<Option<pb::KeyValue>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let req = pb::TxnRequest {
                compare: Vec::new(),
                success: chunk.iter().map(|k| op::get(k.clone())).collect(),
                failure: Vec::new(),
            };
            let resp = self.txn(op, req)?;
            if resp.responses.len() != chunk.len() {
                return Err(self.etcd_err(
                    op,
                    EtcdError::Protocol {
                        endpoints: self.client.endpoints().into(),
                        op,
                        reason: format!("{} answers to {} reads", resp.responses.len(), chunk.len()),
                    },
                ));
            }
            for r in resp.responses {
                let kv = match r.response {
                    Some(pb::response_op::Response::Range(mut range)) => range.kvs.pop(),
                    _ => None,
                };
                out.push(kv);
            }
        }
        Ok(out)
    }

    /// Every key starting with `prefix` (or in `[prefix, end)`), in key order, read page by page
    /// at the revision of the first page so the result is one consistent picture.
    fn scan(&self, op: &'static str, from: Vec<u8>, end: Vec<u8>) -> Result<Vec<pb::KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut key = from;
        let mut at = 0;
        let mut limit = PAGE;
        loop {
            let req = pb::RangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                limit,
                revision: at,
                ..Default::default()
            };
            let page = match self.call(op, move |c| async move { c.range(req).await }) {
                Ok(page) => page,
                // A page of large records over the client's message limit: ask for fewer.
                Err(StoreError::Etcd { source: EtcdError::Rejected { code, .. }, .. })
                    if limit > 1 && matches!(code, tonic_code::OUT_OF_RANGE | tonic_code::RESOURCE_EXHAUSTED) =>
                {
                    limit /= 8;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if at == 0 {
                at = page.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                key = last.key.clone();
                key.push(0);
            }
            out.extend(page.kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    fn decode<R: DeserializeOwned>(
        &self,
        op: &'static str,
        table: &'static str,
        kv: &pb::KeyValue,
    ) -> Result<R, StoreError> {
        serde_json::from_slice(&kv.value).map_err(|e| self.corrupt(op, table, &kv.key, e.to_string()))
    }

    /// The `kind\0ns\0name` part of a key under `prefix`.
    fn obj_key(
        &self,
        op: &'static str,
        table: &'static str,
        prefix: &[u8],
        kv: &pb::KeyValue,
    ) -> Result<ObjKey, StoreError> {
        std::str::from_utf8(&kv.key[prefix.len()..])
            .ok()
            .and_then(ObjKey::decode)
            .ok_or_else(|| self.corrupt(op, table, &kv.key, "key is not kind/ns/name".into()))
    }

    /// A counter under `meta/`: its value and the revision it was last written at.
    fn counter(&self, op: &'static str, name: &str, kv: Option<&pb::KeyValue>) -> Result<(u64, i64), StoreError> {
        let key = self.keys.meta(name);
        let kv = kv.ok_or_else(|| self.corrupt(op, "meta", &key, "missing".into()))?;
        let value = parse_u64(&kv.value).ok_or_else(|| self.corrupt(op, "meta", &key, "not a number".into()))?;
        Ok((value, kv.mod_revision))
    }

    fn read_counter(&self, op: &'static str, name: &str) -> Result<(u64, i64), StoreError> {
        let kvs = self.get_many(op, &[self.keys.meta(name)])?;
        self.counter(op, name, kvs[0].as_ref())
    }

    fn init_schema(&self) -> Result<u64, StoreError> {
        const OP: &str = "open";
        let keys = [self.keys.meta(META_SCHEMA), self.keys.meta(META_REVISION), self.keys.meta(META_VIPS)];
        for attempt in 0..MAX_ATTEMPTS {
            let kvs = self.get_many(OP, &keys)?;
            if let Some(kv) = &kvs[0] {
                let found = parse_u64(&kv.value)
                    .ok_or_else(|| self.corrupt(OP, "meta", &keys[0], "the schema version is not a number".into()))?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        store: self.name.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if found != SCHEMA_VERSION {
                    let reason = format!("schema version {found} is not one weft ever wrote");
                    return Err(self.corrupt(OP, "meta", &keys[0], reason));
                }
                self.counter(OP, META_VIPS, kvs[2].as_ref())?;
                return Ok(self.counter(OP, META_REVISION, kvs[1].as_ref())?.0);
            }
            // No schema version: the prefix must be empty, or it holds something else's keys.
            let root = self.keys.root.as_bytes().to_vec();
            let end = prefix_end(&root);
            let req = pb::RangeRequest { key: root.clone(), range_end: end, count_only: true, ..Default::default() };
            let count = self.call(OP, move |c| async move { c.range(req).await })?.count;
            if count > 0 {
                let reason = format!("{count} keys under the prefix, but no schema version: not a weft store");
                return Err(self.corrupt(OP, "meta", &keys[0], reason));
            }
            let req = pb::TxnRequest {
                compare: vec![op::absent(keys[0].clone())],
                success: vec![
                    put(keys[0].clone(), SCHEMA_VERSION.to_string()),
                    put(keys[1].clone(), "0"),
                    put(keys[2].clone(), "0"),
                ],
                failure: Vec::new(),
            };
            if self.commit(OP, req, 0)?.is_some() {
                return Ok(0);
            }
            // Another replica initialised it first: read what it wrote.
            backoff(attempt);
        }
        Err(StoreError::Contended { store: self.name.clone(), op: OP, attempts: MAX_ATTEMPTS })
    }

    fn contended(&self, op: &'static str) -> StoreError {
        StoreError::Contended { store: self.name.clone(), op, attempts: MAX_ATTEMPTS }
    }

    /// Every allocation, with the VIP guard's value and mod revision: every VIP write bumps the
    /// guard, so a write guarded by it knows nobody allocated or released in between.
    fn read_vips(&self, op: &'static str) -> Result<(u64, i64, BTreeMap<Host, u32>), StoreError> {
        let (gen, guard) = self.read_counter(op, META_VIPS)?;
        let prefix = self.keys.vips();
        let mut out = BTreeMap::new();
        for kv in self.scan(op, prefix.clone(), prefix_end(&prefix))? {
            let host = std::str::from_utf8(&kv.key[prefix.len()..])
                .ok()
                .and_then(|s| s.split_once('\0'))
                .map(|(t, h)| (t.to_owned(), h.to_owned()))
                .ok_or_else(|| self.corrupt(op, "vips", &kv.key, "key is not tenant/host".into()))?;
            let addr = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| self.corrupt(op, "vips", &kv.key, "value is not an IPv4 address".into()))?;
            out.insert(host, u32::from(addr));
        }
        Ok((gen, guard, out))
    }
}

impl Backend for Etcd {
    fn name(&self) -> &str {
        &self.name
    }

    fn file(&self) -> Option<&Path> {
        None
    }

    fn apply(&self, objs: Vec<(ObjKey, String, Value)>) -> Result<(Vec<Applied>, Change), StoreError> {
        const OP: &str = "apply";
        let rev_key = self.keys.meta(META_REVISION);
        let mut keys = vec![rev_key.clone()];
        keys.extend(objs.iter().map(|(k, _, _)| self.keys.object(k)));
        for attempt in 0..MAX_ATTEMPTS {
            let kvs = self.get_many(OP, &keys)?;
            let (current, guard) = self.counter(OP, META_REVISION, kvs[0].as_ref())?;
            let mut old = Vec::with_capacity(objs.len());
            for kv in &kvs[1..] {
                old.push(kv.as_ref().map(|kv| self.decode::<ObjectRecord>(OP, "objects", kv)).transpose()?);
            }
            let next = plan::next_revision(&self.name, OP, current)?;
            let (applied, writes) = plan::apply(objs.clone(), old, next)?;
            if writes.is_empty() {
                return Ok((applied, Change::Nothing));
            }
            let changes = writes.len();
            let mut success: Vec<_> = writes.into_iter().map(|(k, bytes)| put(self.keys.object(&k), bytes)).collect();
            success.push(put(rev_key.clone(), next.to_string()));
            let req = pb::TxnRequest {
                compare: vec![op::mod_revision_is(rev_key.clone(), guard)],
                success,
                failure: Vec::new(),
            };
            if self.commit(OP, req, changes)?.is_some() {
                return Ok((applied, Change::Revision(next)));
            }
            backoff(attempt);
        }
        Err(self.contended(OP))
    }

    fn delete(&self, keys: &[ObjKey]) -> Result<(Vec<bool>, Change), StoreError> {
        const OP: &str = "delete";
        let rev_key = self.keys.meta(META_REVISION);
        let mut read = vec![rev_key.clone()];
        read.extend(keys.iter().map(|k| self.keys.object(k)));
        for attempt in 0..MAX_ATTEMPTS {
            let kvs = self.get_many(OP, &read)?;
            let (current, guard) = self.counter(OP, META_REVISION, kvs[0].as_ref())?;
            // A key named twice is deleted once: the first mention reports it.
            let mut seen = BTreeSet::new();
            let out: Vec<bool> = keys.iter().zip(&kvs[1..]).map(|(k, kv)| kv.is_some() && seen.insert(k)).collect();
            if !out.contains(&true) {
                return Ok((out, Change::Nothing));
            }
            let next = plan::next_revision(&self.name, OP, current)?;
            let mut success: Vec<_> = keys
                .iter()
                .zip(&out)
                .filter(|(_, gone)| **gone)
                .map(|(k, _)| op::delete(self.keys.object(k)))
                .collect();
            let changes = success.len();
            success.push(put(rev_key.clone(), next.to_string()));
            let req = pb::TxnRequest {
                compare: vec![op::mod_revision_is(rev_key.clone(), guard)],
                success,
                failure: Vec::new(),
            };
            if self.commit(OP, req, changes)?.is_some() {
                return Ok((out, Change::Revision(next)));
            }
            backoff(attempt);
        }
        Err(self.contended(OP))
    }

    fn get(&self, key: &ObjKey) -> Result<Option<Object>, StoreError> {
        const OP: &str = "get";
        let kvs = self.get_many(OP, &[self.keys.object(key)])?;
        let Some(kv) = &kvs[0] else { return Ok(None) };
        Ok(Some(self.decode::<ObjectRecord>(OP, "objects", kv)?.into_object(key.clone())))
    }

    fn list(&self, kind: Option<&str>) -> Result<Vec<Object>, StoreError> {
        const OP: &str = "list";
        let prefix = self.keys.objects();
        let (from, end) = match kind {
            // Every key of `kind` starts with `kind\0`; the next possible prefix is `kind\x01`.
            Some(kind) => {
                let mut from = prefix.clone();
                from.extend_from_slice(kind.as_bytes());
                let mut end = from.clone();
                from.push(0);
                end.push(1);
                (from, end)
            }
            None => (prefix.clone(), prefix_end(&prefix)),
        };
        let mut out = Vec::new();
        for kv in self.scan(OP, from, end)? {
            let key = self.obj_key(OP, "objects", &prefix, &kv)?;
            out.push(self.decode::<ObjectRecord>(OP, "objects", &kv)?.into_object(key));
        }
        Ok(out)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.read_counter("revision", META_REVISION)?.0)
    }

    fn put_instance(
        &self,
        key: ObjKey,
        tenant: &str,
        body: Value,
        lease_expires_unix_ms: Option<u64>,
    ) -> Result<(u64, Change), StoreError> {
        const OP: &str = "put_instance";
        let rev_key = self.keys.meta(META_REVISION);
        let inst_key = self.keys.instance(&key);
        for attempt in 0..MAX_ATTEMPTS {
            let kvs = self.get_many(OP, &[rev_key.clone(), inst_key.clone()])?;
            let (current, guard) = self.counter(OP, META_REVISION, kvs[0].as_ref())?;
            let old = kvs[1].as_ref().map(|kv| self.decode::<InstanceRecord>(OP, "instances", kv)).transpose()?;
            let inst_mod = kvs[1].as_ref().map_or(0, |kv| kv.mod_revision);
            let next = plan::next_revision(&self.name, OP, current)?;
            let (req, result) = match plan::put_instance(&key, old, tenant, body.clone(), lease_expires_unix_ms, next)?
            {
                PutInstance::Unchanged(revision) => return Ok((revision, Change::Nothing)),
                PutInstance::LeaseOnly(bytes, revision) => {
                    let req = pb::TxnRequest {
                        compare: vec![op::mod_revision_is(inst_key.clone(), inst_mod)],
                        success: vec![put(inst_key.clone(), bytes)],
                        failure: Vec::new(),
                    };
                    (req, (revision, Change::Quiet))
                }
                PutInstance::Changed(bytes) => {
                    let req = pb::TxnRequest {
                        compare: vec![
                            op::mod_revision_is(rev_key.clone(), guard),
                            op::mod_revision_is(inst_key.clone(), inst_mod),
                        ],
                        success: vec![put(inst_key.clone(), bytes), put(rev_key.clone(), next.to_string())],
                        failure: Vec::new(),
                    };
                    (req, (next, Change::Revision(next)))
                }
            };
            if self.commit(OP, req, 1)?.is_some() {
                return Ok(result);
            }
            backoff(attempt);
        }
        Err(self.contended(OP))
    }

    fn renew_lease(&self, key: &ObjKey, lease_expires_unix_ms: u64) -> Result<(bool, Change), StoreError> {
        const OP: &str = "renew_lease";
        let inst_key = self.keys.instance(key);
        for attempt in 0..MAX_ATTEMPTS {
            let kvs = self.get_many(OP, std::slice::from_ref(&inst_key))?;
            let old = kvs[0].as_ref().map(|kv| self.decode::<InstanceRecord>(OP, "instances", kv)).transpose()?;
            let inst_mod = kvs[0].as_ref().map_or(0, |kv| kv.mod_revision);
            let bytes = match plan::renew(key, old, lease_expires_unix_ms)? {
                Renew::NoLease => return Ok((false, Change::Nothing)),
                Renew::Same => return Ok((true, Change::Nothing)),
                Renew::Write(bytes) => bytes,
            };
            let req = pb::TxnRequest {
                compare: vec![op::mod_revision_is(inst_key.clone(), inst_mod)],
                success: vec![put(inst_key.clone(), bytes)],
                failure: Vec::new(),
            };
            if self.commit(OP, req, 1)?.is_some() {
                return Ok((true, Change::Quiet));
            }
            backoff(attempt);
        }
        Err(self.contended(OP))
    }

    fn remove_instance(&self, key: &ObjKey) -> Result<(bool, Change), StoreError> {
        const OP: &str = "remove_instance";
        let rev_key = self.keys.meta(META_REVISION);
        let inst_key = self.keys.instance(key);
        for attempt in 0..MAX_ATTEMPTS {
            let kvs = self.get_many(OP, &[rev_key.clone(), inst_key.clone()])?;
            let (current, guard) = self.counter(OP, META_REVISION, kvs[0].as_ref())?;
            if kvs[1].is_none() {
                return Ok((false, Change::Nothing));
            }
            let next = plan::next_revision(&self.name, OP, current)?;
            // Registration and removal move the revision key, so its guard alone proves the
            // instance is still there; a renewal in between changes nothing about removing it.
            let req = pb::TxnRequest {
                compare: vec![op::mod_revision_is(rev_key.clone(), guard)],
                success: vec![op::delete(inst_key.clone()), put(rev_key.clone(), next.to_string())],
                failure: Vec::new(),
            };
            if self.commit(OP, req, 1)?.is_some() {
                return Ok((true, Change::Revision(next)));
            }
            backoff(attempt);
        }
        Err(self.contended(OP))
    }

    fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        const OP: &str = "list_instances";
        let prefix = self.keys.instances();
        let mut out = Vec::new();
        for kv in self.scan(OP, prefix.clone(), prefix_end(&prefix))? {
            let key = self.obj_key(OP, "instances", &prefix, &kv)?;
            out.push(self.decode::<InstanceRecord>(OP, "instances", &kv)?.into_instance(key));
        }
        Ok(out)
    }

    fn expire_leases(&self, now_unix_ms: u64) -> Result<(Vec<ObjKey>, Change), StoreError> {
        const OP: &str = "expire_leases";
        let rev_key = self.keys.meta(META_REVISION);
        let prefix = self.keys.instances();
        let mut gone = Vec::new();
        let mut last = None;
        let mut conflicts = 0;
        loop {
            let (current, guard) = self.read_counter(OP, META_REVISION)?;
            let mut batch = Vec::new();
            for kv in self.scan(OP, prefix.clone(), prefix_end(&prefix))? {
                let record = self.decode::<InstanceRecord>(OP, "instances", &kv)?;
                if plan::expired(&record, now_unix_ms) {
                    batch.push((self.obj_key(OP, "instances", &prefix, &kv)?, kv.key, kv.mod_revision));
                    if batch.len() == EXPIRE_BATCH {
                        break;
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let next = plan::next_revision(&self.name, OP, current)?;
            // A renewal since the read changes the instance's mod revision and voids the removal.
            let mut compare = vec![op::mod_revision_is(rev_key.clone(), guard)];
            compare.extend(batch.iter().map(|(_, k, m)| op::mod_revision_is(k.clone(), *m)));
            let mut success: Vec<_> = batch.iter().map(|(_, k, _)| op::delete(k.clone())).collect();
            success.push(put(rev_key.clone(), next.to_string()));
            let changes = batch.len();
            if self.commit(OP, pb::TxnRequest { compare, success, failure: Vec::new() }, changes)?.is_some() {
                gone.extend(batch.into_iter().map(|(k, _, _)| k));
                last = Some(next);
                continue;
            }
            conflicts += 1;
            if conflicts == MAX_ATTEMPTS {
                return Err(self.contended(OP));
            }
            backoff(conflicts);
        }
        gone.sort();
        Ok((gone, last.map_or(Change::Nothing, Change::Revision)))
    }

    fn allocate_vips(&self, wanted: &BTreeSet<&Host>) -> Result<(BTreeMap<Host, Ipv4Addr>, Change), StoreError> {
        const OP: &str = "allocate_vips";
        let guard_key = self.keys.meta(META_VIPS);
        'attempt: for attempt in 0..MAX_ATTEMPTS {
            let (mut gen, mut guard, existing) = self.read_vips(OP)?;
            let (out, new) = plan::allocate(&self.name, wanted, &existing)?;
            if new.is_empty() {
                return Ok((out, Change::Nothing));
            }
            for chunk in new.chunks(VIP_BATCH) {
                gen += 1;
                let mut success = Vec::with_capacity(chunk.len() * 2 + 1);
                for (host, addr) in chunk {
                    success.push(put(self.keys.vip(host), Ipv4Addr::from(*addr).to_string()));
                    success.push(put(self.keys.vip_addr(*addr), format!("{}\0{}", host.0, host.1)));
                }
                success.push(put(guard_key.clone(), gen.to_string()));
                let req = pb::TxnRequest {
                    compare: vec![op::mod_revision_is(guard_key.clone(), guard)],
                    success,
                    failure: Vec::new(),
                };
                match self.commit(OP, req, chunk.len())? {
                    Some(revision) => guard = revision,
                    None => {
                        // Another replica allocated or released: start over from what it wrote
                        // (the batches already committed are now existing allocations).
                        backoff(attempt);
                        continue 'attempt;
                    }
                }
            }
            return Ok((out, Change::Quiet));
        }
        Err(self.contended(OP))
    }

    fn release_vips(&self, keep: &BTreeSet<Host>, at_revision: Option<u64>) -> Result<Option<usize>, StoreError> {
        const OP: &str = "release_vips";
        let guard_key = self.keys.meta(META_VIPS);
        let rev_key = self.keys.meta(META_REVISION);
        'attempt: for attempt in 0..MAX_ATTEMPTS {
            if let Some(expected) = at_revision {
                if self.read_counter(OP, META_REVISION)?.0 != expected {
                    return Ok(None);
                }
            }
            let (mut gen, mut guard, existing) = self.read_vips(OP)?;
            let release = plan::release(&existing, keep);
            for chunk in release.chunks(VIP_BATCH) {
                gen += 1;
                let mut compare = vec![op::mod_revision_is(guard_key.clone(), guard)];
                if let Some(expected) = at_revision {
                    compare.push(op::value_is(rev_key.clone(), expected.to_string()));
                }
                let mut success = Vec::with_capacity(chunk.len() * 2 + 1);
                for (host, addr) in chunk {
                    success.push(op::delete(self.keys.vip(host)));
                    success.push(op::delete(self.keys.vip_addr(*addr)));
                }
                success.push(put(guard_key.clone(), gen.to_string()));
                match self.commit(OP, pb::TxnRequest { compare, success, failure: Vec::new() }, chunk.len())? {
                    Some(revision) => guard = revision,
                    None => {
                        backoff(attempt);
                        continue 'attempt;
                    }
                }
            }
            return Ok(Some(release.len()));
        }
        Err(self.contended(OP))
    }

    fn vips(&self) -> Result<BTreeMap<Host, Ipv4Addr>, StoreError> {
        let (_, _, existing) = self.read_vips("vips")?;
        Ok(existing.into_iter().map(|(h, a)| (h, Ipv4Addr::from(a))).collect())
    }
}

/// The gRPC codes a too-large answer comes back with.
mod tonic_code {
    pub const OUT_OF_RANGE: tonic::Code = tonic::Code::OutOfRange;
    pub const RESOURCE_EXHAUSTED: tonic::Code = tonic::Code::ResourceExhausted;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_endpoints_and_prefix() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("etcd://127.0.0.1:2379", &["127.0.0.1:2379"], "weft"),
            ("etcd://127.0.0.1:2379/", &["127.0.0.1:2379"], "weft"),
            ("etcd://a:1,b.example:2/mesh/prod", &["a:1", "b.example:2"], "mesh/prod"),
            ("etcd://[::1]:2379/x/", &["[::1]:2379"], "x"),
        ];
        for (url, endpoints, prefix) in cases {
            let cfg = EtcdConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(cfg.endpoints, *endpoints, "{url}");
            assert_eq!(cfg.prefix, *prefix, "{url}");
            assert_eq!(EtcdConfig::from_url(&cfg.url()).unwrap(), cfg, "{url}: the canonical URL parses back");
        }
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let cases = [
            ("http://127.0.0.1:2379", "etcd://"),
            ("etcd://", "HOST:PORT"),
            ("etcd://127.0.0.1", "HOST:PORT"),
            ("etcd://127.0.0.1:0", "port"),
            ("etcd://127.0.0.1:99999", "port"),
            ("etcd://a:1,,b:2", "HOST:PORT"),
            ("etcd://bad host:1", "host"),
            ("etcd://::1:2379", "host"),
            ("etcd://a:1/x//y", "empty segment"),
            ("etcd://a:1/x y", "printable"),
            ("etcd://a:1/p?x=1", "query"),
        ];
        for (url, want) in cases {
            match EtcdConfig::from_url(url) {
                Err(e @ StoreError::BadUrl { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(url) && msg.contains(want), "{url}: {msg}");
                }
                other => panic!("{url}: want BadUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn keys_sort_by_kind_namespace_name_and_address() {
        let keys = Keys { root: "/weft/".into() };
        assert_eq!(keys.object(&ObjKey::new("K", "ns", "n")), b"/weft/objects/K\0ns\0n");
        assert_eq!(keys.vip_addr(u32::from(Ipv4Addr::new(240, 240, 1, 2))), b"/weft/vip_addrs/f0f00102");
        assert!(keys.vip_addr(0xf0f0_00ff) < keys.vip_addr(0xf0f0_0100));
        assert_eq!(keys.meta(META_REVISION), b"/weft/meta/revision");
    }
}
