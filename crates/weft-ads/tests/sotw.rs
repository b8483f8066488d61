//! State-of-the-world ADS over real gRPC on loopback.

mod common;

use common::*;
use weft_ads::AdsOptions;

fn shop(c1_stat: &str, all_stat: &str) -> Vec<weft_xds::Resource> {
    vec![
        cluster("c1", c1_stat),
        cluster("c2", all_stat),
        endpoints("c1", all_stat),
        endpoints("c2", all_stat),
        listener("l1", all_stat),
        route("r1", all_stat),
    ]
}

fn blog() -> Vec<weft_xds::Resource> {
    vec![cluster("b1", ""), endpoints("b1", ""), listener("lb", ""), route("rb", "")]
}

/// Connects a node that asks for all four types (in the wrong order, all at once) and ACKs
/// the four responses, which must arrive clusters, endpoints, listeners, routes.
async fn connect_envoy_like(
    server: &TestServer,
    n: &envoy_types::pb::envoy::config::core::v3::Node,
    eds: &[&str],
    rds: &[&str],
) -> SotwClient {
    let mut c = SotwClient::connect(
        &server.endpoint,
        vec![
            sotw_request(Some(n), LISTENER, &[]),
            sotw_request(None, ROUTE, rds),
            sotw_request(None, ENDPOINT, eds),
            sotw_request(None, CLUSTER, &[]),
        ],
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let r = c.recv().await;
        let subscribed: &[&str] = match r.type_url.as_str() {
            ENDPOINT => eds,
            ROUTE => rds,
            _ => &[],
        };
        c.ack(&r, subscribed).await;
        order.push(r.type_url.clone());
    }
    assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE], "initial push order");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_push_in_order_then_changes_go_only_to_affected_nodes_and_types() {
    let mesh = Mesh::default().with("shop", shop("v1", "")).with("blog", blog());
    let server = TestServer::start(mesh.clone().source(), AdsOptions::default()).await;
    let shop_node = node("10.0.0.1", "shop-1", "shop");
    let blog_node = node("10.0.0.2", "blog-1", "blog");
    let mut a = connect_envoy_like(&server, &shop_node, &["c1", "c2"], &["r1"]).await;
    let mut b = connect_envoy_like(&server, &blog_node, &["b1"], &["rb"]).await;
    let before = server.wait_status(&shop_node.id, "all ACKed", |p| p.types.values().all(|t| t.in_sync)).await;
    let cds_v1 = before.types[CLUSTER].acked.clone().unwrap().version;
    server.wait_status(&blog_node.id, "all ACKed", |p| p.types.values().all(|t| t.in_sync)).await;

    // One cluster of the shop changes.
    let mesh2 = Mesh::default().with("shop", shop("v2", "")).with("blog", blog());
    server.ads.publish(mesh2.clone().source());
    let r = a.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    assert_eq!(names(&r), ["c1", "c2"], "SotW sends the whole cluster set");
    assert_ne!(r.version_info, cds_v1);
    assert_eq!(r.version_info, mesh2.get("shop").type_version(CLUSTER));
    a.ack(&r, &[]).await;
    server.wait_generation(&shop_node.id, 1).await;
    a.quiet("shop node after a cluster change: only CDS").await;
    server.wait_generation(&blog_node.id, 1).await;
    b.quiet("blog node is not affected").await;

    // Everything of the shop changes: responses follow the push order.
    let mesh3 = Mesh::default().with("shop", shop("v2", "x")).with("blog", blog());
    server.ads.publish(mesh3.source());
    let mut order = Vec::new();
    for _ in 0..4 {
        let r = a.recv().await;
        order.push(r.type_url.clone());
    }
    assert_eq!(order, [CLUSTER, ENDPOINT, LISTENER, ROUTE]);
    server.wait_generation(&blog_node.id, 2).await;
    b.quiet("blog node is still not affected").await;

    let m = server.ads.metrics();
    assert_eq!(m.streams_connected, 2);
    assert_eq!(m.publishes, 2);
    assert_eq!(m.pushes, 4 + 4 + 1 + 4);
    assert!(m.acks >= 9, "{m:?}");
    assert_eq!(m.nacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_recorded_and_the_previous_version_stays_acked() {
    let mesh = Mesh::default().with("shop", shop("v1", ""));
    let server = TestServer::start(mesh.clone().source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&n), CLUSTER, &[])]).await;
    let v1 = c.recv().await;
    c.ack(&v1, &[]).await;
    server.wait_status(&n.id, "v1 ACKed", |p| p.types[CLUSTER].in_sync).await;

    let mesh2 = Mesh::default().with("shop", shop("v2", ""));
    server.ads.publish(mesh2.source());
    let v2 = c.recv().await;
    c.nack(&v2, &v1.version_info, &[], "cluster c1: unsupported field").await;
    let p = server.wait_status(&n.id, "NACK recorded", |p| p.types[CLUSTER].nack.is_some()).await;
    let t = &p.types[CLUSTER];
    let nack = t.nack.as_ref().unwrap();
    assert_eq!(nack.message, "cluster c1: unsupported field");
    assert_eq!(nack.version, v2.version_info);
    assert_eq!(nack.nonce, v2.nonce);
    assert_eq!(nack.resources, ["c1", "c2"]);
    assert_eq!(t.acked.as_ref().unwrap().version, v1.version_info, "the previous version stays ACKed");
    assert_eq!(t.sent.as_ref().unwrap().version, v2.version_info);
    assert!(!t.in_sync);
    assert_eq!(t.nacks, 1);
    assert_eq!(server.ads.metrics().nacks, 1);

    let acked = server.ads.acked(&n.id).expect("node connected");
    assert_eq!(acked.get(CLUSTER, "c1").unwrap().version, cluster("c1", "v1").version, "acked() has v1's c1");

    let json = serde_json::to_value(server.ads.status()).unwrap();
    let j = &json[0]["types"][CLUSTER];
    assert_eq!(j["nack"]["message"], "cluster c1: unsupported field");
    assert_eq!(json[0]["protocol"], "sotw");
    assert!(json[0]["connected_at"].as_u64().unwrap() > 0);

    // No resend of the rejected version; a fixed mesh goes out and is ACKed.
    server.wait_generation(&n.id, 1).await;
    c.quiet("a NACK does not trigger a resend").await;
    server.ads.publish(Mesh::default().with("shop", shop("v3", "")).source());
    let v3 = c.recv().await;
    c.ack(&v3, &[]).await;
    let p = server.wait_status(&n.id, "v3 ACKed", |p| p.types[CLUSTER].in_sync).await;
    assert_eq!(p.types[CLUSTER].acked.as_ref().unwrap().version, v3.version_info);
    assert_eq!(p.types[CLUSTER].nack.as_ref().unwrap().version, v2.version_info, "the last NACK stays visible");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscriptions_like_grpc_lds() {
    let listeners = |a: &str, b: &str| vec![listener("a.shop:80", a), listener("b.shop:80", b)];
    let server =
        TestServer::start(Mesh::default().with("shop", listeners("1", "1")).source(), AdsOptions::default()).await;
    let n = grpc_node("10.0.0.9", "client-1", "shop");
    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&n), LISTENER, &["a.shop:80"])]).await;
    let r = c.recv().await;
    assert_eq!(names(&r), ["a.shop:80"], "only the named listener");
    c.ack(&r, &["a.shop:80"]).await;
    let p = server.wait_status(&n.id, "ACKed", |p| p.types[LISTENER].in_sync).await;
    assert_eq!(p.generator, weft_xds::Generator::Grpc);
    assert!(!p.types[LISTENER].wildcard);
    assert_eq!(p.types[LISTENER].names, ["a.shop:80"]);

    server.ads.publish(Mesh::default().with("shop", listeners("1", "2")).source());
    server.wait_generation(&n.id, 1).await;
    c.quiet("a change to a listener not subscribed").await;

    server.ads.publish(Mesh::default().with("shop", listeners("2", "2")).source());
    let r2 = c.recv().await;
    assert_eq!(names(&r2), ["a.shop:80"]);
    c.ack(&r2, &["a.shop:80"]).await;

    // Subscribing to one more name (with the ACK of the last response) answers at once.
    c.ack(&r2, &["a.shop:80", "b.shop:80", "missing:80"]).await;
    let r3 = c.recv().await;
    assert_eq!(names(&r3), ["a.shop:80", "b.shop:80"]);
    c.ack(&r3, &["a.shop:80", "b.shop:80", "missing:80"]).await;
    server.wait_status(&n.id, "ACKed", |p| p.types[LISTENER].in_sync).await;
    c.quiet("an ACK with unchanged names gets no answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_types_are_sent() {
    let server = TestServer::start(Mesh::default().with("shop", shop("v1", "")).source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&n), CLUSTER, &[])]).await;
    let r = c.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    c.ack(&r, &[]).await;
    server.wait_generation(&n.id, 0).await;
    c.quiet("no other type without a subscription").await;

    // Listeners and routes change; the client has not asked for them.
    server.ads.publish(Mesh::default().with("shop", shop("v1", "changed")).source());
    let r = c.recv().await;
    assert_eq!(r.type_url, CLUSTER, "c2 changed");
    c.ack(&r, &[]).await;
    server.wait_generation(&n.id, 1).await;
    c.quiet("nothing for listeners, routes or endpoints").await;
    assert_eq!(server.status_of(&n.id)[0].types.keys().collect::<Vec<_>>(), [CLUSTER]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_nonces_are_ignored_and_an_empty_named_list_is_not_answered() {
    let server = TestServer::start(Mesh::default().with("shop", shop("v1", "")).source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&n), ENDPOINT, &["c1"])]).await;
    let first = c.recv().await;
    assert_eq!(names(&first), ["c1"]);
    server.ads.publish(Mesh::default().with("shop", shop("v1", "x")).source());
    let second = c.recv().await;
    // The ACK of the first response arrives after the second was sent: stale, changes nothing,
    // even though it names another resource.
    c.ack(&first, &["c2"]).await;
    c.ack(&second, &["c1"]).await;
    let p = server.wait_status(&n.id, "second ACKed", |p| p.types[ENDPOINT].in_sync).await;
    assert_eq!(p.types[ENDPOINT].names, ["c1"]);
    assert_eq!(p.types[ENDPOINT].acked.as_ref().unwrap().version, second.version_info);
    c.quiet("stale request is not answered").await;

    // Unsubscribing from every endpoint owes no response.
    c.ack(&second, &[]).await;
    server.wait_status(&n.id, "unsubscribed", |p| p.types[ENDPOINT].names.is_empty()).await;
    c.quiet("empty EDS list").await;
}
