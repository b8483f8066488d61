//! The name table subscription against weft-ads on loopback: a table that cannot be read is
//! NACKed and the last good one keeps answering; a good one is applied, ACKed and saved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weft_ads::{AdsOptions as ServerOptions, AdsServer, Source};
use weft_dns::ads::{AdsOptions, AdsStatus};
use weft_dns::state::StateDir;
use weft_dns::{Config, Dns};
use weft_xds::nds::{NameInfo, NameTable, RESOURCE_NAME};
use weft_xds::type_url::NAME_TABLE;
use weft_xds::{NodeInfo, Resource, ResourceSet};

struct Table(&'static str);

impl Source for Table {
    fn generate(&self, _node: &NodeInfo) -> Arc<ResourceSet> {
        let mut t = NameTable::default();
        t.table.insert(
            "reviews.shop.svc.cluster.local".into(),
            NameInfo { ips: vec![self.0.to_string()], alt_hosts: vec!["reviews".into()], ..Default::default() },
        );
        let mut set = ResourceSet::default();
        set.insert(Resource::new(RESOURCE_NAME, &t));
        Arc::new(set)
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tables_are_nacked_and_good_ones_applied_acked_and_saved() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(Arc::new(Table("not-an-ip")), ServerOptions::default());
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = server.clone();
    tokio::spawn(async move {
        let _ = s
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });

    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let dns = Dns::new(Config::default());
    let node = weft_ads::sim::sidecar_node("10.0.0.1".parse().unwrap(), "vm-1", "shop", &BTreeMap::new());
    let node_id = node.id.clone();
    let opts = AdsOptions::new(&addr.to_string(), node).unwrap();
    let status = Arc::new(AdsStatus::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(weft_dns::ads::run(opts, dns.clone(), Some(state.clone()), status.clone(), stop_rx));

    eventually("the bad table is rejected", || status.snapshot().rejected >= 1).await;
    assert!(dns.table().is_none(), "nothing applied");
    let snap = status.snapshot();
    assert!(snap.connected);
    assert!(snap.last_error.as_deref().unwrap_or("").contains("ips[0]"), "{snap:?}");
    eventually("the server records the NACK", || {
        server.status().iter().any(|p| p.node_id == node_id && p.types.get(NAME_TABLE).is_some_and(|t| t.nacks >= 1))
    })
    .await;

    server.publish(Arc::new(Table("240.240.0.7")));
    eventually("the good table is applied", || dns.table().is_some_and(|t| t.get("reviews").is_some())).await;
    eventually("and ACKed", || {
        server.status().iter().any(|p| p.node_id == node_id && p.types.get(NAME_TABLE).is_some_and(|t| t.in_sync))
    })
    .await;
    let saved = state.load().unwrap().expect("saved");
    assert_eq!(saved.get("reviews").unwrap().v4, ["240.240.0.7".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(status.snapshot().updates, 1);

    // A bad table after a good one: NACKed, the good one keeps answering.
    server.publish(Arc::new(Table("also-not-an-ip")));
    eventually("the second bad table is rejected", || status.snapshot().rejected >= 2).await;
    assert!(dns.table().unwrap().get("reviews").is_some());

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    let _ = stop_server.send(());
}
