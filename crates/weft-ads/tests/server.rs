//! The server's edges: refused nodes and streams, proxies that stop reading, shutdown, the
//! service mounted in a tonic server, and the simulated clients of the load bench.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use tonic::Code;
use weft_ads::sim::{push_latency, SimClient, SimConfig};
use weft_ads::{AdsOptions, Protocol, Source};
use weft_xds::{NodeInfo, ResourceSet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_node_is_refused_with_invalid_argument() {
    let server = TestServer::start(Mesh::default().source(), AdsOptions::default()).await;
    let bad = Node { id: "gateway~10.0.0.1~gw.infra~infra.svc.cluster.local".into(), ..Default::default() };

    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&bad), CLUSTER, &[])]).await;
    let e = c.recv_err().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("unknown proxy type \"gateway\""), "{}", e.message());

    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(None, CLUSTER, &[])]).await;
    let e = c.recv_err().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("must carry the node"), "{}", e.message());

    let bad_ip = Node { id: "sidecar~not-an-ip~a.b~b.svc.cluster.local".into(), ..Default::default() };
    let mut d = DeltaClient::connect(&server.endpoint, vec![delta_request(Some(&bad_ip), CLUSTER, &[], &[])]).await;
    let e = d.recv_err().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not an IP address"), "{}", e.message());

    let m = server.ads.metrics();
    assert_eq!((m.streams_rejected, m.streams_total, m.streams_connected), (3, 0, 0));
    assert!(server.ads.status().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_type_and_streams_over_the_limit_are_refused() {
    let opts = AdsOptions { max_streams: 1, ..Default::default() };
    let server = TestServer::start(Mesh::default().with("shop", vec![cluster("c1", "")]).source(), opts).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut first = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&n), CLUSTER, &[])]).await;
    first.recv().await;

    let mut client =
        envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(
            channel(&server.endpoint).await,
        );
    let over = client
        .stream_aggregated_resources(futures_util::stream::iter(vec![sotw_request(Some(&n), CLUSTER, &[])]))
        .await;
    assert_eq!(over.unwrap_err().code(), Code::ResourceExhausted);

    first.send(sotw_request(None, "", &[])).await;
    let e = first.recv_err().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("type_url"), "{}", e.message());
    eventually("stream gone", || server.ads.status().is_empty()).await;
}

/// A mesh with one big cluster whose content changes with every publish.
struct Big(u64);

impl Source for Big {
    fn generate(&self, _: &NodeInfo) -> Arc<ResourceSet> {
        let stat = format!("{}{}", "x".repeat(256 * 1024), self.0);
        set(vec![cluster("big", &stat)])
    }
}

fn big_version(n: u64) -> String {
    Big(n).generate(&NodeInfo::from_node(&node("10.0.0.1", "x", "y")).unwrap()).type_version(CLUSTER)
}

/// Publishes bigger and bigger meshes until the proxy that does not read is behind; the other
/// proxy must get every one of them meanwhile.
async fn publish_until_stalled(
    server: &TestServer,
    reader: &SimClient,
    stalled_id: &str,
    stop: impl Fn() -> bool,
) -> u64 {
    for i in 1..=40u64 {
        server.ads.publish(Arc::new(Big(i)));
        let want = big_version(i);
        reader
            .wait_until(WAIT, "latest big cluster", |s| s.version(CLUSTER) == Some(want.as_str()))
            .await
            .expect("the reading proxy gets every publish");
        let behind = server.status_of(stalled_id).first().map(|p| i.saturating_sub(p.generation)).unwrap_or(i);
        if stop() || behind >= 3 {
            return i;
        }
    }
    panic!("the proxy that does not read never fell behind");
}

async fn stalled_client(server: &TestServer, n: &Node) -> SotwClient {
    // It asks for clusters and never reads a response.
    SotwClient::open(small_window_channel(&server.endpoint).await, vec![sotw_request(Some(n), CLUSTER, &[])]).await
}

fn cds_only(protocol: Protocol) -> SimConfig {
    SimConfig { subscriptions: vec![(CLUSTER.to_string(), vec![])], ..SimConfig::wildcard(protocol) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_read_does_not_delay_the_others() {
    let opts = AdsOptions { send_timeout: Duration::from_secs(60), ..Default::default() };
    let server = TestServer::start(Arc::new(Big(0)), opts).await;
    let stuck = node("10.0.0.1", "stuck", "shop");
    let _stuck = stalled_client(&server, &stuck).await;
    server.wait_status(&stuck.id, "connected", |p| p.types.contains_key(CLUSTER)).await;
    let reader = SimClient::connect(&server.endpoint, node("10.0.0.2", "reader", "shop"), cds_only(Protocol::Sotw))
        .await
        .unwrap();
    let last = publish_until_stalled(&server, &reader, &stuck.id, || false).await;
    let p = server.status_of(&stuck.id).pop().expect("the stuck proxy is still connected (send_timeout is long)");
    assert!(p.generation + 3 <= last, "stuck at {} while the other proxy got {last}", p.generation);
    assert_eq!(server.ads.metrics().streams_stalled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_read_is_disconnected_after_the_send_timeout() {
    let opts = AdsOptions { send_timeout: Duration::from_millis(300), ..Default::default() };
    let server = TestServer::start(Arc::new(Big(0)), opts).await;
    let stuck = node("10.0.0.1", "stuck", "shop");
    let mut stuck_client = stalled_client(&server, &stuck).await;
    server.wait_status(&stuck.id, "connected", |p| p.types.contains_key(CLUSTER)).await;
    let reader = SimClient::connect(&server.endpoint, node("10.0.0.2", "reader", "shop"), cds_only(Protocol::Delta))
        .await
        .unwrap();
    let ads = server.ads.clone();
    publish_until_stalled(&server, &reader, &stuck.id, || ads.metrics().streams_stalled > 0).await;
    eventually("stalled stream closed", || server.ads.metrics().streams_stalled == 1).await;
    eventually("stalled proxy gone from status", || server.status_of(&stuck.id).is_empty()).await;
    assert_eq!(server.ads.status().len(), 1, "the reading proxy stays");

    // When it reads again it finds the reason after what was already on its way.
    let e = stuck_client.recv_err().await;
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("not read"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_serve_returns() {
    let mut server =
        TestServer::start(Mesh::default().with("shop", vec![cluster("c1", "")]).source(), AdsOptions::default()).await;
    let n = node("10.0.0.1", "shop-1", "shop");
    let mut c = SotwClient::connect(&server.endpoint, vec![sotw_request(Some(&n), CLUSTER, &[])]).await;
    c.recv().await;
    server.stop().await.unwrap();
    let e = c.recv_err().await;
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("shutting down"), "{}", e.message());
    assert!(server.ads.status().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mounts_in_a_tonic_server() {
    let ads =
        weft_ads::AdsServer::new(Mesh::default().with("shop", vec![cluster("c1", "")]).source(), AdsOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let closer = ads.clone();
    let task =
        tokio::spawn(tonic::transport::Server::builder().add_service(ads.service()).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                let _ = stopped.await;
                // Streams never end on their own; a graceful shutdown needs them closed.
                closer.close_streams();
            },
        ));
    let n = node("10.0.0.1", "shop-1", "shop");
    let sim = SimClient::connect(&endpoint, n.clone(), cds_only(Protocol::Sotw)).await.unwrap();
    let s = sim.wait_until(WAIT, "clusters", |s| s.names(CLUSTER) == ["c1"]).await.unwrap();
    assert_eq!(s.types[CLUSTER].responses, 1);
    let p = ads.status();
    assert_eq!(p[0].node_id, n.id);
    assert!(p[0].peer.unwrap().ip().is_loopback(), "tonic's peer address is used");
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task).await.expect("tonic server stops").unwrap().unwrap();
}

/// A source that counts its calls.
struct Counting {
    mesh: Mesh,
    calls: Arc<AtomicU64>,
}

impl Source for Counting {
    fn generate(&self, node: &NodeInfo) -> Arc<ResourceSet> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.mesh.generate(node)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_clients_measure_push_latency_and_generation_is_not_per_request() {
    let shop = |stat: &str| {
        Mesh::default()
            .with("shop", vec![cluster("c1", stat), endpoints("c1", ""), listener("l1", ""), route("r1", "")])
    };
    let calls = Arc::new(AtomicU64::new(0));
    let server =
        TestServer::start(Arc::new(Counting { mesh: shop("1"), calls: calls.clone() }), AdsOptions::default()).await;
    let mut clients = Vec::new();
    for i in 0..20u8 {
        let protocol = if i % 2 == 0 { Protocol::Sotw } else { Protocol::Delta };
        let n = node(&format!("127.0.1.{i}"), &format!("p{i}"), "shop");
        clients.push(SimClient::connect(&server.endpoint, n, SimConfig::wildcard(protocol)).await.unwrap());
    }
    for c in &clients {
        let s = c.wait_until(WAIT, "all four types", |s| s.types.len() == 4).await.unwrap();
        assert_eq!(s.names(ENDPOINT), ["c1"]);
        assert_eq!(s.names(ROUTE), ["r1"]);
    }
    // The four first requests of each client are answered by one generation.
    assert_eq!(calls.load(Ordering::Relaxed), 20);
    // An ACK the server reads after its next push answers an older nonce and is stale, so the
    // first ACKs are counted before anything changes.
    eventually("the first ACKs counted", || server.ads.metrics().acks >= 20 * 4).await;

    let want = shop("2").get("shop").type_version(CLUSTER);
    let report = push_latency(
        &clients,
        || server.ads.publish(Arc::new(Counting { mesh: shop("2"), calls: calls.clone() })),
        |_, s| s.version(CLUSTER) == Some(want.as_str()),
        WAIT,
    )
    .await;
    assert_eq!((report.clients, report.reached), (20, 20), "{report:?}");
    assert!(report.p50 <= report.p99 && report.p99 <= report.max);
    for c in &clients {
        let s = c.state();
        assert_eq!(s.types[CLUSTER].responses, 2, "{}: only CDS changed", c.node_id());
        assert_eq!(s.types[LISTENER].responses, 1);
    }
    assert_eq!(calls.load(Ordering::Relaxed), 40, "one generation per proxy per publish");
    eventually("all ACKs counted", || server.ads.metrics().acks >= 20 * 5).await;
    let m = server.ads.metrics();
    assert_eq!(m.acks, 20 * 5, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_first_request_is_closed() {
    let opts = AdsOptions { first_request_timeout: Duration::from_millis(200), ..Default::default() };
    let server = TestServer::start(Mesh::default().source(), opts).await;
    let mut c = SotwClient::connect(&server.endpoint, vec![]).await;
    let e = c.recv_err().await;
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("no first request"), "{}", e.message());
    assert_eq!(server.ads.metrics().streams_rejected, 1);
}
