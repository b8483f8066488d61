//! Delta ADS over real gRPC on loopback.

mod common;

use common::*;
use weft_ads::{AdsOptions, Protocol};

fn shop(c2_stat: &str, with_c3: bool) -> Vec<weft_xds::Resource> {
    let mut r = vec![cluster("c1", ""), cluster("c2", c2_stat), endpoints("c1", "z1")];
    if with_c3 {
        r.push(cluster("c3", ""));
    }
    r
}

fn version_of(r: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse, name: &str) -> String {
    r.resources.iter().find(|x| x.name == name).map(|x| x.version.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_change_removal_and_reconnect_with_known_versions() {
    let server =
        TestServer::start(Mesh::default().with("shop", shop("v1", true)).source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = DeltaClient::connect(
        &server.endpoint,
        vec![delta_request(Some(&n), CLUSTER, &[], &[]), delta_request(None, ENDPOINT, &["c1", "missing"], &[])],
    )
    .await;

    // Initial: every cluster (legacy wildcard), the named endpoints, and "missing" as removed.
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(delta_names(&cds), ["c1", "c2", "c3"]);
    assert!(cds.removed_resources.is_empty());
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(delta_names(&eds), ["c1"]);
    assert_eq!(eds.removed_resources, ["missing"], "a name that does not exist is answered as removed");
    c.ack(&cds).await;
    c.ack(&eds).await;
    let p = server.wait_status(&n.id, "ACKed", |p| p.types.values().all(|t| t.in_sync)).await;
    assert_eq!(p.protocol, Protocol::Delta);
    assert_eq!(p.types[CLUSTER].acked.as_ref().unwrap().resources, 3);
    let c1_version = version_of(&cds, "c1");

    // A change: only the changed cluster.
    server.ads.publish(Mesh::default().with("shop", shop("v2", true)).source());
    let r = c.recv().await;
    assert_eq!((r.type_url.as_str(), delta_names(&r)), (CLUSTER, vec!["c2".to_string()]));
    assert!(r.removed_resources.is_empty());
    let c2_v2 = version_of(&r, "c2");
    c.ack(&r).await;
    server.wait_generation(&n.id, 1).await;
    c.quiet("endpoints did not change").await;

    // A removal.
    server.ads.publish(Mesh::default().with("shop", shop("v2", false)).source());
    let r = c.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["c3"]);
    c.ack(&r).await;
    let p = server.wait_status(&n.id, "removal ACKed", |p| p.types[CLUSTER].in_sync).await;
    assert_eq!(p.types[CLUSTER].acked.as_ref().unwrap().resources, 2);
    let acked = server.ads.acked(&n.id).unwrap();
    assert_eq!(acked.of_type(CLUSTER).unwrap().keys().collect::<Vec<_>>(), ["c1", "c2"]);
    assert_eq!(acked.get(CLUSTER, "c2").unwrap().version, c2_v2);
    assert!(acked.get(ENDPOINT, "c1").is_some());
    drop(c);

    // Reconnect knowing c1 (current), c2 (stale) and c3 (gone): only c2 is sent, c3 removed.
    let mut c = DeltaClient::connect(
        &server.endpoint,
        vec![delta_request(Some(&n), CLUSTER, &[], &[("c1", &c1_version), ("c2", "old"), ("c3", "x")])],
    )
    .await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c2"]);
    assert_eq!(r.removed_resources, ["c3"]);
    c.ack(&r).await;
    drop(c);

    // Reconnect knowing everything current: nothing to send.
    let mut c = DeltaClient::connect(
        &server.endpoint,
        vec![delta_request(Some(&n), CLUSTER, &[], &[("c1", &c1_version), ("c2", &c2_v2)])],
    )
    .await;
    server.wait_status(&n.id, "reconnected", |p| p.types.contains_key(CLUSTER) && p.generation == 2).await;
    c.quiet("a reconnect with current versions resends nothing").await;
    let p = server.status_of(&n.id).pop().unwrap();
    assert_eq!(p.types[CLUSTER].acked.as_ref().unwrap().resources, 2, "what the client kept counts as ACKed");
    assert!(p.types[CLUSTER].sent.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_by_name() {
    let mesh = |zone: &str| Mesh::default().with("shop", vec![endpoints("c1", zone), endpoints("c2", zone)]);
    let server = TestServer::start(mesh("a").source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = DeltaClient::connect(&server.endpoint, vec![delta_request(Some(&n), ENDPOINT, &["c1"], &[])]).await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c1"]);
    c.ack(&r).await;

    // Adding c2 sends c2 alone.
    c.send(delta_request(None, ENDPOINT, &["c2"], &[])).await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c2"]);
    c.ack(&r).await;

    // After unsubscribing c1, its changes are not sent.
    let mut unsub = delta_request(None, ENDPOINT, &[], &[]);
    unsub.resource_names_unsubscribe = strings(&["c1"]);
    c.send(unsub).await;
    server.wait_status(&n.id, "unsubscribed", |p| p.types[ENDPOINT].names == ["c2"]).await;
    c.quiet("unsubscribing owes no response").await;
    server.ads.publish(mesh("b").source());
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c2"]);
    assert!(r.removed_resources.is_empty(), "an unsubscribed name is not 'removed'");
    c.ack(&r).await;
    let acked = server.ads.acked(&n.id).unwrap();
    assert_eq!(acked.of_type(ENDPOINT).unwrap().keys().collect::<Vec<_>>(), ["c2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nack_keeps_the_acked_versions_per_resource() {
    let server =
        TestServer::start(Mesh::default().with("shop", shop("v1", false)).source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = DeltaClient::connect(&server.endpoint, vec![delta_request(Some(&n), CLUSTER, &[], &[])]).await;
    let r = c.recv().await;
    let c2_v1 = version_of(&r, "c2");
    c.ack(&r).await;
    server.ads.publish(Mesh::default().with("shop", shop("v2", false)).source());
    let r = c.recv().await;
    c.nack(&r, "c2: bad").await;
    let p = server.wait_status(&n.id, "NACK", |p| p.types[CLUSTER].nack.is_some()).await;
    let nack = p.types[CLUSTER].nack.clone().unwrap();
    assert_eq!((nack.message.as_str(), nack.resources.clone()), ("c2: bad", vec!["c2".to_string()]));
    assert_eq!(nack.version, r.system_version_info);
    assert_eq!(server.ads.acked(&n.id).unwrap().get(CLUSTER, "c2").unwrap().version, c2_v1);
    assert_eq!(server.ads.metrics().nacks, 1);
    server.wait_generation(&n.id, 1).await;
    c.quiet("the rejected resource is not resent").await;
}
