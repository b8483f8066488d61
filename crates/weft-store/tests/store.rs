//! The store against both backends — a real redb file in a temporary dir and a real etcd server
//! on loopback — with one suite: round trips, reopening, atomicity, leases, VIPs, concurrent
//! writers, and a writer killed with SIGKILL in the middle of its writes. Backend-specific
//! behaviour (the file lock; several stores sharing one etcd, etcd going away) follows.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_store::{EtcdConfig, Location, ObjKey, Store, StoreError, FILE_NAME, MAX_RECORD_BYTES, VIP_CAPACITY};
use weft_test::EtcdServer;

/// Where one test's store lives; [`Harness::open`] opens it (again). Each holds what must live
/// as long as the test: the temporary dir, or the etcd server (killed when dropped).
enum Harness {
    Redb(tempfile::TempDir),
    Etcd(#[allow(dead_code)] EtcdServer, String),
}

impl Harness {
    fn redb() -> Harness {
        Harness::Redb(tempfile::tempdir().unwrap())
    }

    fn etcd() -> Harness {
        let server = EtcdServer::start().expect("start etcd");
        let url = server.url("test");
        Harness::Etcd(server, url)
    }

    fn location(&self) -> Location {
        match self {
            Harness::Redb(dir) => Location::Dir(dir.path().to_owned()),
            Harness::Etcd(_, url) => Location::Etcd(EtcdConfig::from_url(url).unwrap()),
        }
    }

    fn open(&self) -> Store {
        let location = self.location();
        Store::open_at(&location).unwrap_or_else(|e| panic!("open {location}: {e}"))
    }
}

/// Runs each listed `fn(&Harness)` as a test against redb (`redb::NAME`) and etcd (`etcd::NAME`).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $( #[test] fn $name() { super::$name(&super::Harness::redb()); } )*
        }
        mod etcd {
            $( #[test] fn $name() { super::$name(&super::Harness::etcd()); } )*
        }
    };
}

on_both_backends!(
    apply_get_list_delete_round_trip,
    reopen_after_drop_keeps_everything,
    apply_is_all_or_nothing,
    unchanged_apply_does_not_bump_the_revision,
    watch_reports_every_committed_change,
    instances_with_leases_expire,
    vips_are_unique_lowest_free_and_stable_across_reopen,
    release_at_a_revision_frees_nothing_once_the_store_moved_on,
    vip_exhaustion_is_an_error_that_allocates_nothing,
    store_is_usable_from_blocking_tasks_of_a_runtime,
);

fn key(kind: &str, ns: &str, name: &str) -> ObjKey {
    ObjKey::new(kind, ns, name)
}

fn obj(kind: &str, ns: &str, name: &str, body: Value) -> (ObjKey, String, Value) {
    (key(kind, ns, name), "acme".to_owned(), body)
}

fn pair(tenant: &str, host: &str) -> (String, String) {
    (tenant.to_owned(), host.to_owned())
}

fn apply_get_list_delete_round_trip(h: &Harness) {
    let store = h.open();
    assert_eq!(store.revision().unwrap(), 0);
    assert_eq!(store.location(), h.location().to_string());

    let applied = store
        .apply(vec![
            obj("VirtualService", "shop", "cart", json!({"hosts": ["cart"]})),
            obj("DestinationRule", "shop", "cart", json!({"host": "cart"})),
            obj("VirtualService", "default", "web", json!({"hosts": ["web"]})),
        ])
        .unwrap();
    assert_eq!(applied.len(), 3);
    assert!(applied.iter().all(|a| a.created && !a.unchanged && a.revision == 1), "{applied:?}");
    assert_eq!(store.revision().unwrap(), 1);

    let cart = store.get(&key("VirtualService", "shop", "cart")).unwrap().unwrap();
    assert_eq!(cart.body, json!({"hosts": ["cart"]}));
    assert_eq!(cart.tenant, "acme");
    assert_eq!((cart.revision, cart.created_revision), (1, 1));
    assert!(cart.created_at.ends_with('Z') && cart.created_at.len() == 20, "{}", cart.created_at);
    assert_eq!(store.get(&key("VirtualService", "shop", "nope")).unwrap(), None);

    let names = |objs: Vec<weft_store::Object>| objs.into_iter().map(|o| o.key.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(store.list(None).unwrap()),
        ["DestinationRule shop/cart", "VirtualService default/web", "VirtualService shop/cart"]
    );
    assert_eq!(
        names(store.list(Some("VirtualService")).unwrap()),
        ["VirtualService default/web", "VirtualService shop/cart"]
    );
    assert!(store.list(Some("Virtual")).unwrap().is_empty(), "a kind prefix is not a kind");

    // An update keeps the creation data and moves the revision.
    let applied = store.apply(vec![obj("VirtualService", "shop", "cart", json!({"hosts": ["cart", "c"]}))]).unwrap();
    assert_eq!((applied[0].created, applied[0].unchanged, applied[0].revision), (false, false, 2));
    let updated = store.get(&key("VirtualService", "shop", "cart")).unwrap().unwrap();
    assert_eq!((updated.revision, updated.created_revision, &updated.created_at), (2, 1, &cart.created_at));

    let deleted = store
        .delete(&[key("VirtualService", "shop", "cart"), key("VirtualService", "shop", "cart"), key("X", "a", "b")])
        .unwrap();
    assert_eq!(deleted, [true, false, false]);
    assert_eq!(store.revision().unwrap(), 3);
    assert_eq!(store.get(&key("VirtualService", "shop", "cart")).unwrap(), None);
    assert_eq!(store.delete(&[key("X", "a", "b")]).unwrap(), [false]);
    assert_eq!(store.revision().unwrap(), 3, "deleting nothing does not move the revision");

    // Created again after a delete: a new creation revision.
    let applied = store.apply(vec![obj("VirtualService", "shop", "cart", json!({}))]).unwrap();
    assert!(applied[0].created);
    let again = store.get(&key("VirtualService", "shop", "cart")).unwrap().unwrap();
    assert_eq!((again.revision, again.created_revision), (4, 4));
}

fn reopen_after_drop_keeps_everything(h: &Harness) {
    let (objects, instances, vips, revision) = {
        let store = h.open();
        store.apply(vec![obj("ServiceEntry", "ns", "a", json!({"hosts": ["a.example"]}))]).unwrap();
        store.apply(vec![obj("ServiceEntry", "ns", "b", json!({"hosts": ["b.example"]}))]).unwrap();
        store.put_instance(key("WorkloadEntry", "ns", "vm1"), "acme", json!({"address": "127.0.0.2"}), None).unwrap();
        store
            .put_instance(key("WorkloadEntry", "ns", "vm2"), "acme", json!({"address": "127.0.0.3"}), Some(5))
            .unwrap();
        store.allocate_vips(&[pair("acme", "a.example"), pair("acme", "b.example")]).unwrap();
        let clone = store.clone();
        drop(store);
        (clone.list(None).unwrap(), clone.list_instances().unwrap(), clone.vips().unwrap(), clone.revision().unwrap())
    };
    assert_eq!(revision, 4);
    let store = h.open();
    assert_eq!(store.list(None).unwrap(), objects);
    assert_eq!(store.list_instances().unwrap(), instances);
    assert_eq!(store.vips().unwrap(), vips);
    assert_eq!(store.revision().unwrap(), revision);
    assert_eq!(*store.watch().borrow(), revision, "watch starts at the stored revision");
    let applied = store.apply(vec![obj("ServiceEntry", "ns", "c", json!({}))]).unwrap();
    assert_eq!(applied[0].revision, revision + 1, "revisions continue after a reopen");
}

fn apply_is_all_or_nothing(h: &Harness) {
    let store = h.open();
    store.apply(vec![obj("Gateway", "ns", "gw", json!({"v": 1}))]).unwrap();
    let before = store.list(None).unwrap();
    let mut rx = store.watch();
    rx.mark_unchanged();

    // The oversized body is the last one: the first two were already written into the
    // transaction when it fails.
    let huge = json!({"blob": "x".repeat(MAX_RECORD_BYTES)});
    let err = store
        .apply(vec![
            obj("Gateway", "ns", "gw", json!({"v": 2})),
            obj("Gateway", "ns", "new", json!({})),
            obj("Gateway", "ns", "huge", huge),
        ])
        .unwrap_err();
    match &err {
        StoreError::TooLarge { op: "apply", key, size, limit } => {
            assert_eq!(key.to_string(), "Gateway ns/huge");
            assert!(size > limit);
        }
        other => panic!("want TooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("Gateway ns/huge"), "{err}");
    assert_eq!(store.list(None).unwrap(), before);
    assert_eq!(store.revision().unwrap(), 1);
    assert!(!rx.has_changed().unwrap(), "a failed apply wakes nobody");

    // Invalid input is refused before anything is written, naming the field.
    let bad = [
        vec![obj("Gateway", "ns", "ok", json!({})), obj("Gateway", "n\0s", "x", json!({}))],
        vec![obj("Gateway", "ns", "ok", json!({})), obj("", "ns", "x", json!({}))],
        vec![obj("Gateway", "ns", "dup", json!({})), obj("Gateway", "ns", "dup", json!({"b": 1}))],
        vec![(key("Gateway", "ns", "ok"), "ten\0ant".to_owned(), json!({}))],
    ];
    for objs in bad {
        let err = store.apply(objs).unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput { .. } | StoreError::DuplicateKey { .. }), "{err:?}");
    }
    assert_eq!(store.list(None).unwrap(), before);

    // The rejected batch did not poison the store: the same changes without the huge body commit.
    let applied =
        store.apply(vec![obj("Gateway", "ns", "gw", json!({"v": 2})), obj("Gateway", "ns", "new", json!({}))]).unwrap();
    assert!(applied.iter().all(|a| a.revision == 2));
}

fn unchanged_apply_does_not_bump_the_revision(h: &Harness) {
    let store = h.open();
    let batch =
        vec![obj("Sidecar", "ns", "a", json!({"egress": [{"hosts": ["./*"]}]})), obj("Sidecar", "ns", "b", json!({}))];
    store.apply(batch.clone()).unwrap();
    let mut rx = store.watch();
    rx.mark_unchanged();

    let applied = store.apply(batch.clone()).unwrap();
    assert!(applied.iter().all(|a| a.unchanged && !a.created && a.revision == 1), "{applied:?}");
    assert_eq!(store.revision().unwrap(), 1);
    assert!(!rx.has_changed().unwrap());

    // One changed object among unchanged ones: only it moves.
    let mut mixed = batch.clone();
    mixed[1].2 = json!({"changed": true});
    let applied = store.apply(mixed).unwrap();
    assert_eq!((applied[0].unchanged, applied[0].revision), (true, 1));
    assert_eq!((applied[1].unchanged, applied[1].revision), (false, 2));
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 2);

    // A tenant change is a change even with the same body.
    let mut moved = batch;
    moved.truncate(1);
    moved[0].1 = "other".to_owned();
    let applied = store.apply(moved).unwrap();
    assert_eq!((applied[0].unchanged, applied[0].revision), (false, 3));
    assert_eq!(store.get(&key("Sidecar", "ns", "a")).unwrap().unwrap().tenant, "other");
}

fn watch_reports_every_committed_change(h: &Harness) {
    let store = h.open();
    let mut rx = store.watch();
    assert_eq!(*rx.borrow_and_update(), 0);
    store.apply(vec![obj("K", "ns", "a", json!(1))]).unwrap();
    assert_eq!(*rx.borrow_and_update(), 1);
    store.put_instance(key("WorkloadEntry", "ns", "vm"), "acme", json!({}), Some(10)).unwrap();
    assert_eq!(*rx.borrow_and_update(), 2);
    assert!(store.renew_lease(&key("WorkloadEntry", "ns", "vm"), 20).unwrap());
    store.allocate_vips(&[pair("acme", "h")]).unwrap();
    assert!(!rx.has_changed().unwrap(), "lease renewals and VIPs are quiet");
    store.delete(&[key("K", "ns", "a")]).unwrap();
    assert_eq!(*rx.borrow_and_update(), 3);
    store.remove_instance(&key("WorkloadEntry", "ns", "vm")).unwrap();
    assert_eq!(*rx.borrow_and_update(), 4);
}

fn instances_with_leases_expire(h: &Harness) {
    let store = h.open();
    let vm = |n: &str| key("WorkloadEntry", "ns", n);
    let r1 = store.put_instance(vm("leased"), "acme", json!({"address": "127.0.0.2"}), Some(1_000)).unwrap();
    let r2 = store.put_instance(vm("permanent"), "acme", json!({"address": "127.0.0.3"}), None).unwrap();
    let r3 = store.put_instance(vm("short"), "acme", json!({"address": "127.0.0.4"}), Some(500)).unwrap();
    assert_eq!((r1, r2, r3), (1, 2, 3));

    // Same body, new lease: quiet, same revision.
    assert_eq!(store.put_instance(vm("leased"), "acme", json!({"address": "127.0.0.2"}), Some(1_500)).unwrap(), 1);
    assert_eq!(store.revision().unwrap(), 3);
    // New body: new revision.
    assert_eq!(store.put_instance(vm("short"), "acme", json!({"address": "127.0.0.5"}), Some(500)).unwrap(), 4);

    assert!(store.renew_lease(&vm("leased"), 2_000).unwrap());
    assert!(!store.renew_lease(&vm("permanent"), 2_000).unwrap(), "no lease to renew");
    assert!(!store.renew_lease(&vm("missing"), 2_000).unwrap());
    assert_eq!(store.revision().unwrap(), 4);

    assert!(store.expire_leases(499).unwrap().is_empty());
    assert_eq!(store.revision().unwrap(), 4);
    assert_eq!(store.expire_leases(500).unwrap(), [vm("short")], "expiry at the instant itself");
    assert_eq!(store.revision().unwrap(), 5);
    assert!(store.expire_leases(1_999).unwrap().is_empty(), "the renewal moved the lease");
    drop(store);

    // Leases survive a restart: expiry after reopening still removes the leased one only.
    let store = h.open();
    let listed = store.list_instances().unwrap();
    let leases: Vec<_> = listed.iter().map(|i| (i.key.name.as_str(), i.lease_expires_unix_ms)).collect();
    assert_eq!(leases, [("leased", Some(2_000)), ("permanent", None)]);
    assert_eq!(store.expire_leases(u64::MAX).unwrap(), [vm("leased")]);
    let left: Vec<_> = store.list_instances().unwrap().into_iter().map(|i| i.key.name).collect();
    assert_eq!(left, ["permanent"]);
    assert!(store.remove_instance(&vm("permanent")).unwrap());
    assert!(!store.remove_instance(&vm("permanent")).unwrap());
    assert!(store.list_instances().unwrap().is_empty());
}

fn vips_are_unique_lowest_free_and_stable_across_reopen(h: &Harness) {
    let hosts: Vec<(String, String)> = (0..300).map(|i| pair("acme", &format!("svc{i:03}.example"))).collect();
    let first = {
        let store = h.open();
        let got = store.allocate_vips(&hosts).unwrap();
        assert_eq!(got.len(), 300);
        let unique: BTreeSet<Ipv4Addr> = got.values().copied().collect();
        assert_eq!(unique.len(), 300, "every host has its own address");
        assert!(got.values().all(|a| weft_store::is_allocatable(*a)));
        // Allocation follows (tenant, host) order and skips .255 and .0 at the /24 boundary.
        assert_eq!(got[&pair("acme", "svc000.example")], Ipv4Addr::new(240, 240, 0, 1));
        assert_eq!(got[&pair("acme", "svc253.example")], Ipv4Addr::new(240, 240, 0, 254));
        assert_eq!(got[&pair("acme", "svc254.example")], Ipv4Addr::new(240, 240, 1, 1));
        // The same host in another tenant is another allocation.
        let other = store.allocate_vips(&[pair("other", "svc000.example")]).unwrap();
        assert_eq!(other[&pair("other", "svc000.example")], Ipv4Addr::new(240, 240, 1, 47));
        got
    };

    let store = h.open();
    let mut asked = hosts.clone();
    asked.reverse();
    asked.push(pair("acme", "new.example"));
    let again = store.allocate_vips(&asked).unwrap();
    for (host, addr) in &first {
        assert_eq!(again[host], *addr, "{host:?} kept its address across a reopen");
    }
    assert_eq!(again[&pair("acme", "new.example")], Ipv4Addr::new(240, 240, 1, 48));

    // Releasing frees addresses; the lowest freed one is taken next.
    let keep: BTreeSet<_> = hosts.iter().filter(|(_, h)| h != "svc005.example").cloned().collect();
    assert_eq!(store.release_vips(&keep).unwrap(), 3, "svc005, new and other's svc000");
    assert_eq!(store.release_vips(&keep).unwrap(), 0);
    let next = store.allocate_vips(&[pair("b", "late.example")]).unwrap();
    assert_eq!(next[&pair("b", "late.example")], Ipv4Addr::new(240, 240, 0, 6));
    assert_eq!(store.revision().unwrap(), 0, "VIP bookkeeping does not move the revision");

    let bad = store.allocate_vips(&[pair("acme", "")]).unwrap_err();
    assert!(matches!(bad, StoreError::InvalidInput { field: "host", .. }), "{bad:?}");
}

fn release_at_a_revision_frees_nothing_once_the_store_moved_on(h: &Harness) {
    let store = h.open();
    store.allocate_vips(&[pair("t", "a"), pair("t", "b")]).unwrap();
    let at = store.revision().unwrap();
    let keep: BTreeSet<_> = [pair("t", "a")].into();
    store.apply(vec![obj("ServiceEntry", "ns", "b", json!({"hosts": ["b"]}))]).unwrap();
    assert_eq!(store.release_vips_at(&keep, at).unwrap(), None, "a newer change may need b's address");
    assert_eq!(store.vips().unwrap().len(), 2);
    let now = store.revision().unwrap();
    assert_eq!(store.release_vips_at(&keep, now).unwrap(), Some(1));
    assert_eq!(store.vips().unwrap().keys().collect::<Vec<_>>(), [&pair("t", "a")]);
}

fn vip_exhaustion_is_an_error_that_allocates_nothing(h: &Harness) {
    let store = h.open();
    let hosts: Vec<(String, String)> = (0..VIP_CAPACITY - 1).map(|i| pair("t", &format!("h{i}"))).collect();
    assert_eq!(store.allocate_vips(&hosts).unwrap().len(), VIP_CAPACITY - 1);

    let err = store.allocate_vips(&[pair("t", "x"), pair("t", "y")]).unwrap_err();
    match &err {
        StoreError::VipsExhausted { requested: 2, free: 1, .. } => {}
        other => panic!("want VipsExhausted, got {other:?}"),
    }
    assert!(err.to_string().contains("240.240.0.0/16") && err.to_string().contains(store.location()), "{err}");
    assert_eq!(store.vips().unwrap().len(), VIP_CAPACITY - 1, "nothing of the failed call was kept");

    let last = store.allocate_vips(&[pair("t", "x")]).unwrap();
    assert_eq!(last[&pair("t", "x")], Ipv4Addr::new(240, 240, 255, 254));
    assert!(matches!(store.allocate_vips(&[pair("t", "y")]), Err(StoreError::VipsExhausted { free: 0, .. })));
}

#[test]
fn redb_store_lives_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.file(), Some(dir.path().join(FILE_NAME).as_path()));
    assert_eq!(store.location(), dir.path().join(FILE_NAME).display().to_string());
}

#[test]
fn a_second_open_fails_clearly_until_every_clone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let clone = store.clone();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(&err, StoreError::Locked { file } if *file == dir.path().join(FILE_NAME)), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
    drop(store);
    assert!(matches!(Store::open(dir.path()), Err(StoreError::Locked { .. })), "a clone still holds the lock");
    drop(clone);
    Store::open(dir.path()).unwrap();
}

#[test]
fn open_creates_missing_dirs_and_names_a_dir_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/weft-data");
    Store::open(&nested).unwrap();
    assert!(nested.join(FILE_NAME).is_file());

    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a dir").unwrap();
    let err = Store::open(&blocker.join("sub")).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains(&blocker.join("sub").display().to_string()), "{err}");
}

fn store_is_usable_from_blocking_tasks_of_a_runtime(h: &Harness) {
    let store = h.open();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut rx = store.watch();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                store.apply(vec![obj("K", "ns", &format!("o{i}"), json!({"i": i}))])
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r == 8)).await.unwrap().unwrap();
    });
    let revisions: BTreeSet<u64> = store.list(None).unwrap().iter().map(|o| o.revision).collect();
    assert_eq!(revisions, (1..=8).collect(), "concurrent applies serialize into distinct revisions");
}

// ---------------------------------------------------------------------------------------------
// Crash test: a child process applies and acknowledges; the parent kills it with SIGKILL.

/// Set in the writer child: the store's dir, or its etcd URL.
const WRITER_ENV: &str = "WEFT_STORE_CRASH_WRITER_STORE";
/// Acknowledgements the parent waits for before it kills the writer.
const ACKS_BEFORE_KILL: usize = 25;
/// Upper bound on the writer's applies, so that it ends even if nobody kills it.
const WRITER_MAX_APPLIES: u64 = 100_000;
const WRITER_MAX_TIME: Duration = Duration::from_secs(60);
const PARENT_WAIT: Duration = Duration::from_secs(60);

/// Each apply writes a pair of objects; both carry the loop index.
fn crash_batch(i: u64) -> Vec<(ObjKey, String, Value)> {
    vec![
        obj("Crash", "ns", &format!("a{i:06}"), json!({"i": i, "pad": "p".repeat(512)})),
        obj("Crash", "ns", &format!("b{i:06}"), json!({"i": i})),
    ]
}

fn location(s: &str) -> Location {
    if s.starts_with("etcd://") {
        Location::Etcd(EtcdConfig::from_url(s).unwrap())
    } else {
        Location::Dir(s.into())
    }
}

fn run_writer(at: &str) {
    let store = Store::open_at(&location(at)).expect("writer: open");
    let started = Instant::now();
    for i in 0..WRITER_MAX_APPLIES {
        if started.elapsed() > WRITER_MAX_TIME {
            break;
        }
        let applied = store.apply(crash_batch(i)).expect("writer: apply");
        // Printed only after apply returned: this line is the acknowledgement.
        println!("ack {i} {}", applied[0].revision);
    }
}

#[test]
fn acknowledged_applies_survive_sigkill_redb() {
    if let Ok(at) = std::env::var(WRITER_ENV) {
        return run_writer(&at);
    }
    crash_test("acknowledged_applies_survive_sigkill_redb", &Harness::redb());
}

#[test]
fn acknowledged_applies_survive_sigkill_etcd() {
    if let Ok(at) = std::env::var(WRITER_ENV) {
        return run_writer(&at);
    }
    crash_test("acknowledged_applies_survive_sigkill_etcd", &Harness::etcd());
}

fn crash_test(name: &str, h: &Harness) {
    let at = match h {
        Harness::Redb(dir) => dir.path().display().to_string(),
        Harness::Etcd(_, url) => url.clone(),
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(WRITER_ENV, &at)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::sync_channel::<(u64, u64)>(1024);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            if words.next() != Some("ack") {
                continue;
            }
            let parsed = words.next().and_then(|i| i.parse().ok()).zip(words.next().and_then(|r| r.parse().ok()));
            if let Some(ack) = parsed {
                if tx.send(ack).is_err() {
                    break;
                }
            }
        }
    });

    let deadline = Instant::now() + PARENT_WAIT;
    let mut acks = Vec::new();
    while acks.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                let _ = child.kill();
                panic!("writer gave {} acknowledgements before {e:?}", acks.len());
            }
        }
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) takes plain integers; `pid` is our own child, not yet reaped (we have not
    // waited on it), so the id cannot have been reused by another process.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the writer was killed, not finished: {status:?}");
    // Acknowledgements printed before the kill may still sit in the pipe; the reader ends at EOF
    // and drops its sender, which ends this loop.
    acks.extend(rx.iter());
    reader.join().unwrap();

    let store = h.open();
    let objects: BTreeMap<String, Value> =
        store.list(Some("Crash")).unwrap().into_iter().map(|o| (o.key.name, o.body)).collect();
    let (last_i, last_rev) = *acks.last().unwrap();
    for (i, rev) in &acks {
        for prefix in ["a", "b"] {
            let name = format!("{prefix}{i:06}");
            let body = objects.get(&name).unwrap_or_else(|| panic!("acknowledged {name} (revision {rev}) is lost"));
            assert_eq!(body["i"], json!(i));
        }
    }
    assert!(store.revision().unwrap() >= last_rev);
    // Applies are atomic across the crash too: an unacknowledged one is whole or absent.
    let indices: BTreeSet<&str> = objects.keys().map(|n| &n[1..]).collect();
    for i in indices {
        assert!(objects.contains_key(&format!("a{i}")) && objects.contains_key(&format!("b{i}")), "half of apply {i}");
    }
    assert!(objects.len() / 2 >= usize::try_from(last_i + 1).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Several stores on one etcd: what high availability rests on.

fn etcd_pair() -> (EtcdServer, Store, Store) {
    let server = EtcdServer::start().expect("start etcd");
    let cfg = EtcdConfig::from_url(&server.url("ha")).unwrap();
    let a = Store::open_etcd(&cfg).unwrap();
    let b = Store::open_etcd(&cfg).unwrap();
    (server, a, b)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Waits (bounded) until `rx` shows at least `revision`.
fn wait_for_revision(rx: &mut tokio::sync::watch::Receiver<u64>, revision: u64) {
    runtime().block_on(async {
        let seen = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|r| *r >= revision)).await.is_ok();
        assert!(seen, "revision {revision} not seen within 20s; the watch shows {}", *rx.borrow());
    });
}

#[test]
fn etcd_watch_sees_the_writes_of_another_store() {
    let (_server, a, b) = etcd_pair();
    let mut rx = b.watch();
    let applied = a.apply(vec![obj("VirtualService", "ns", "r", json!({"hosts": ["r"]}))]).unwrap();
    wait_for_revision(&mut rx, applied[0].revision);
    assert_eq!(b.get(&key("VirtualService", "ns", "r")).unwrap().unwrap().body, json!({"hosts": ["r"]}));

    // Instances and removals wake it too; renewals and VIPs stay quiet on both.
    let r = a.put_instance(key("WorkloadEntry", "ns", "vm"), "acme", json!({}), Some(10)).unwrap();
    wait_for_revision(&mut rx, r);
    rx.mark_unchanged();
    assert!(a.renew_lease(&key("WorkloadEntry", "ns", "vm"), 20).unwrap());
    a.allocate_vips(&[pair("acme", "h")]).unwrap();
    assert!(a.remove_instance(&key("WorkloadEntry", "ns", "vm")).unwrap());
    wait_for_revision(&mut rx, r + 1);
    assert_eq!(*rx.borrow(), r + 1, "the renewal and the VIP did not move the revision");
    assert_eq!(b.vips().unwrap()[&pair("acme", "h")], Ipv4Addr::new(240, 240, 0, 1));
}

#[test]
fn etcd_concurrent_vip_allocation_from_two_stores_never_double_allocates() {
    let (_server, a, b) = etcd_pair();
    // Overlapping host sets, allocated in rounds from both stores at once.
    let hosts = |from: usize, to: usize| (from..to).map(|i| pair("t", &format!("h{i:03}"))).collect::<Vec<_>>();
    let run = |store: Store, rounds: Vec<Vec<(String, String)>>| {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for round in rounds {
                seen.push(store.allocate_vips(&round).unwrap());
            }
            seen
        })
    };
    let ta = run(a.clone(), vec![hosts(0, 70), hosts(50, 150), hosts(140, 200)]);
    let tb = run(b.clone(), vec![hosts(30, 120), hosts(100, 180), hosts(0, 200)]);
    let mut all: BTreeMap<(String, String), Ipv4Addr> = BTreeMap::new();
    for got in ta.join().unwrap().into_iter().chain(tb.join().unwrap()) {
        for (host, addr) in got {
            let before = all.insert(host.clone(), addr);
            assert!(before.is_none() || before == Some(addr), "{host:?} got {before:?} and {addr}");
        }
    }
    assert_eq!(all.len(), 200);
    let addrs: BTreeSet<Ipv4Addr> = all.values().copied().collect();
    assert_eq!(addrs.len(), 200, "no address was handed to two hosts");
    assert_eq!(a.vips().unwrap(), all, "the store holds exactly what the callers were told");
    // Lowest free: the 200 addresses are the first 200 of the range.
    assert_eq!(addrs.iter().max().copied(), Some(Ipv4Addr::new(240, 240, 0, 200)));
}

#[test]
fn etcd_two_stores_applying_at_once_serialize_into_distinct_revisions() {
    let (_server, a, b) = etcd_pair();
    let writer = |store: Store, side: &'static str| {
        std::thread::spawn(move || {
            (0..15)
                .map(|i| store.apply(vec![obj("K", side, &format!("o{i}"), json!(i))]).unwrap()[0].revision)
                .collect::<Vec<_>>()
        })
    };
    let (ra, rb) = (writer(a.clone(), "a"), writer(b.clone(), "b"));
    let mut revisions: Vec<u64> = ra.join().unwrap().into_iter().chain(rb.join().unwrap()).collect();
    revisions.sort();
    assert_eq!(revisions, (1..=30).collect::<Vec<_>>());
    assert_eq!(b.revision().unwrap(), 30);
    assert_eq!(b.list(Some("K")).unwrap().len(), 30);
}

#[test]
fn etcd_two_stores_expiring_leases_at_once_remove_each_instance_once() {
    let (_server, a, b) = etcd_pair();
    for i in 0..150 {
        a.put_instance(key("WorkloadEntry", "ns", &format!("vm{i:03}")), "t", json!({"i": i}), Some(100)).unwrap();
    }
    a.put_instance(key("WorkloadEntry", "ns", "later"), "t", json!({}), Some(10_000)).unwrap();
    let sweep = |store: Store| std::thread::spawn(move || store.expire_leases(5_000).unwrap());
    let (ga, gb) = (sweep(a.clone()), sweep(b.clone()));
    let (ga, gb) = (ga.join().unwrap(), gb.join().unwrap());
    assert_eq!(ga.len() + gb.len(), 150, "every expired instance removed by exactly one store");
    let both: BTreeSet<_> = ga.iter().chain(&gb).collect();
    assert_eq!(both.len(), 150);
    let left: Vec<_> = b.list_instances().unwrap().into_iter().map(|i| i.key.name).collect();
    assert_eq!(left, ["later"]);
}

#[test]
fn etcd_prefixes_keep_stores_apart() {
    let server = EtcdServer::start().expect("start etcd");
    let one = Store::open_etcd(&EtcdConfig::from_url(&server.url("one")).unwrap()).unwrap();
    let two = Store::open_etcd(&EtcdConfig::from_url(&server.url("one/two")).unwrap()).unwrap();
    one.apply(vec![obj("K", "ns", "a", json!(1))]).unwrap();
    assert!(two.list(None).unwrap().is_empty());
    assert_eq!(two.revision().unwrap(), 0);
}

#[test]
fn etcd_unreachable_fails_as_unavailable_and_recovers_after_a_restart() {
    let mut server = EtcdServer::start().expect("start etcd");
    let url = server.url("outage");
    let cfg = EtcdConfig { request_timeout: Duration::from_secs(2), ..EtcdConfig::from_url(&url).unwrap() };
    let a = Store::open_etcd(&cfg).unwrap();
    let b = Store::open_etcd(&cfg).unwrap();
    a.apply(vec![obj("K", "ns", "before", json!(1))]).unwrap();

    server.kill();
    let err = a.apply(vec![obj("K", "ns", "during", json!(2))]).unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains(&url), "the error names the store: {err}");
    assert!(a.list(None).unwrap_err().is_unavailable());
    assert!(a.allocate_vips(&[pair("t", "h")]).unwrap_err().is_unavailable());

    server.restart().expect("restart etcd");
    let mut rx = b.watch();
    let applied = a.apply(vec![obj("K", "ns", "after", json!(3))]).unwrap();
    assert_eq!(applied[0].revision, 2, "nothing of the failed apply was written");
    wait_for_revision(&mut rx, 2);
    let names: Vec<_> = b.list(None).unwrap().into_iter().map(|o| o.key.name).collect();
    assert_eq!(names, ["after", "before"]);
}

#[test]
fn etcd_open_fails_clearly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("etcd://127.0.0.1:{port}/x");
    let cfg = EtcdConfig { request_timeout: Duration::from_secs(1), ..EtcdConfig::from_url(&url).unwrap() };
    let err = Store::open_etcd(&cfg).unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
}

/// Writes raw keys next to a store's, as another program (or a newer weft) would.
fn raw_put(server: &EtcdServer, key: &str, value: &str) {
    runtime().block_on(async {
        let client = weft_etcd::Client::new(&[server.endpoint()], Default::default()).unwrap();
        let txn = weft_etcd::pb::TxnRequest {
            compare: vec![],
            success: vec![weft_etcd::op::put(key, value)],
            failure: vec![],
        };
        client.txn(txn).await.unwrap();
    });
}

#[test]
fn etcd_a_newer_schema_or_a_foreign_prefix_is_refused() {
    let server = EtcdServer::start().expect("start etcd");
    let newer = EtcdConfig::from_url(&server.url("newer")).unwrap();
    drop(Store::open_etcd(&newer).unwrap());
    raw_put(&server, "/newer/meta/schema_version", "2");
    let err = Store::open_etcd(&newer).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("newer"), "{err}");

    raw_put(&server, "/foreign/something", "x");
    let err = Store::open_etcd(&EtcdConfig::from_url(&server.url("foreign")).unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a weft store"), "{err}");
}
