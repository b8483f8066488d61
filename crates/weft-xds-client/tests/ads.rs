//! The ADS client against a tiny in-test ADS server (tonic, loopback): delta and state of the
//! world, ACK/NACK with versions and nonces, subscriptions that follow the resources, the
//! fallback to state of the world, and resynchronisation after the server restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_config::{ProxyConfig, RouteSource};
use weft_test::ads::{any, ScriptedAds, Seen};
use weft_xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use weft_xds_client::{ApplyError, Options, Protocol, Status};

// ---- resources --------------------------------------------------------------------------------

fn sock(ip: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn ads_source() -> Option<core::ConfigSource> {
    Some(core::ConfigSource {
        resource_api_version: 2,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(Default::default())),
        ..Default::default()
    })
}

fn eds_cluster(name: &str) -> cl::Cluster {
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(cl::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: ads_source(),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn bad_cluster(name: &str) -> cl::Cluster {
    cl::Cluster {
        transport_socket: Some(core::TransportSocket { name: "envoy.transport_sockets.tls".into(), config_type: None }),
        ..eds_cluster(name)
    }
}

fn assignment(name: &str, port: u32) -> ep::ClusterLoadAssignment {
    ep::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![ep::LocalityLbEndpoints {
            lb_endpoints: vec![ep::LbEndpoint {
                host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                    address: sock("127.0.0.1", port),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(name: &str, route: &str) -> li::Listener {
    let h = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: ads_source(),
            route_config_name: route.into(),
        })),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    li::Listener {
        name: name.into(),
        address: sock("127.0.0.1", 0),
        filter_chains: vec![li::FilterChain {
            filters: vec![li::Filter {
                name: "hcm".into(),
                config_type: Some(li::filter::ConfigType::TypedConfig(any(&h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(name: &str, cluster: &str) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![rt::Route {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(rt::route::Action::Route(rt::RouteAction {
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A mesh with one listener → route "r1" → EDS cluster "c1" (endpoint port `port`).
fn publish(ads: &ScriptedAds, port: u32) {
    ads.set("c1", &eds_cluster("c1"));
    ads.set("c1", &assignment("c1", port));
    ads.set("l1", &listener("l1", "r1"));
    ads.set("r1", &route("r1", "c1"));
}

// ---- the client under test ------------------------------------------------------------------

/// Configs the client applied, newest last.
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<Arc<ProxyConfig>>>>);

impl Applied {
    fn last(&self) -> Option<Arc<ProxyConfig>> {
        self.0.lock().unwrap().last().cloned()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn start_client(server: SocketAddr, protocol: Protocol, refuse: Option<&'static str>) -> (Applied, Arc<Status>) {
    let node = weft_xds_client::node(
        "sidecar~127.0.0.1~test.default~default.svc.cluster.local",
        None,
        &BTreeMap::new(),
        &[],
        None,
    )
    .unwrap();
    let mut opts = Options::new(&server.to_string(), node, Arc::new(ProxyConfig::default()));
    opts.protocol = protocol;
    opts.backoff_min = Duration::from_millis(50);
    opts.backoff_max = Duration::from_millis(200);
    // Longer than any wait in these tests: nothing is applied because a wait ran out.
    opts.initial_fetch_timeout = Duration::from_secs(60);
    let status = Arc::new(Status::new(&server.to_string(), "test", protocol));
    let applied = Applied::default();
    let sink = applied.clone();
    tokio::spawn(weft_xds_client::run(opts, status.clone(), move |cfg: Arc<ProxyConfig>| {
        let sink = sink.clone();
        async move {
            // Simulates a listener the proxy cannot bind.
            if let Some(bad) = refuse {
                if cfg.listeners.iter().any(|l| l.name == bad) {
                    return Err(ApplyError::Listener { name: bad.into(), message: "address in use".into() });
                }
            }
            sink.0.lock().unwrap().push(cfg);
            Ok(())
        }
    }));
    (applied, status)
}

/// Polls (every 10 ms, at most 10 s) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn endpoint_port(cfg: &ProxyConfig, cluster: &str) -> Option<u16> {
    let c = cfg.clusters.get(cluster)?;
    match &c.localities.first()?.endpoints.first()?.address {
        weft_config::EndpointAddress::Socket(a) => Some(a.port()),
        _ => None,
    }
}

// ---- tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn delta_applies_a_complete_config_then_follows_updates_and_nacks_bad_resources_alone() {
    let ads = ScriptedAds::new();
    publish(&ads, 8001);
    let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let (applied, status) = start_client(addr, Protocol::Delta, None);

    // The first config is applied only once it is complete: listener, its routes, the
    // cluster and its endpoints.
    eventually("first config", || applied.count() > 0).await;
    let first = applied.last().unwrap();
    assert_eq!(first.listeners.len(), 1);
    assert!(first.route_configs.contains_key("r1"));
    assert_eq!(endpoint_port(&first, "c1"), Some(8001));
    let routes = match &first.listeners[0].filter_chains[0].action {
        weft_config::ChainAction::Http(h) => h.routes.clone(),
        _ => panic!("http chain"),
    };
    assert_eq!(routes, RouteSource::Named("r1".into()));
    assert!(status.ready());

    // Wildcard CDS/LDS (empty subscription), named EDS/RDS; node only on the first request.
    let seen = ads.seen();
    assert!(seen[0].has_node && seen.iter().skip(1).all(|s| !s.has_node), "{seen:?}");
    let first_of = |t: &str| seen.iter().find(|s| s.type_url == t).cloned().unwrap();
    assert!(first_of(CLUSTER).names.is_empty() && first_of(LISTENER).names.is_empty());
    assert_eq!(first_of(ENDPOINT).names, vec!["c1".to_string()]);
    assert_eq!(first_of(ROUTE).names, vec!["r1".to_string()]);
    // Every response is acknowledged with its nonce, without error.
    eventually("ACKs", || ads.seen().iter().filter(|s| !s.nonce.is_empty()).count() >= 4).await;
    assert!(ads.seen().iter().all(|s| s.error.is_none()));

    // Endpoints move.
    ads.set("c1", &assignment("c1", 8002));
    eventually("new endpoint", || applied.last().and_then(|c| endpoint_port(&c, "c1")) == Some(8002)).await;

    // A bad cluster is NACKed alone; its last good version keeps serving, other changes apply.
    let before = applied.count();
    ads.set("c1", &bad_cluster("c1"));
    ads.set("c2", &eds_cluster("c2"));
    ads.set("c2", &assignment("c2", 8003));
    eventually("NACK", || ads.seen().iter().any(|s| s.error.is_some())).await;
    let nack = ads.seen().into_iter().find(|s| s.error.is_some()).unwrap();
    assert_eq!(nack.type_url, CLUSTER);
    assert_eq!(nack.error.as_deref(), Some(r#"Cluster "c1": transport_socket: not supported"#));
    eventually("c2 applied", || applied.last().is_some_and(|c| endpoint_port(&c, "c2") == Some(8003))).await;
    let cfg = applied.last().unwrap();
    assert_eq!(endpoint_port(&cfg, "c1"), Some(8002), "the old c1 keeps serving");
    assert!(applied.count() > before);
    let dump = status.dump();
    assert_eq!(dump["rejected"][0]["name"], "c1", "{dump}");
    assert!(status.metrics().iter().any(|m| m.name == "weft_xds_rejects_total" && m.value == 1));

    // Removing the cluster unsubscribes its endpoints.
    ads.remove(CLUSTER, "c2");
    eventually("c2 gone", || applied.last().is_some_and(|c| !c.clusters.contains_key("c2"))).await;
    eventually("EDS unsubscribe", || {
        ads.seen().iter().any(|s| s.type_url == ENDPOINT && s.unsubscribed == vec!["c2".to_string()])
    })
    .await;
}

#[tokio::test]
async fn after_a_restart_the_client_resyncs_with_the_versions_it_holds() {
    let ads = ScriptedAds::new();
    publish(&ads, 8001);
    let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let (applied, status) = start_client(addr, Protocol::Delta, None);
    eventually("first config", || applied.count() > 0).await;
    eventually("connected", || status.connected()).await;

    ads.shutdown();
    eventually("disconnected", || !status.connected()).await;
    let count = applied.count();
    let requests_before = ads.seen().len();

    // Same port, one endpoint changed while the client was away.
    ads.set("c1", &assignment("c1", 8009));
    ads.serve(addr).await;
    eventually("resynced endpoint", || applied.last().and_then(|c| endpoint_port(&c, "c1")) == Some(8009)).await;
    assert!(applied.count() > count);
    let reopened: Vec<Seen> = ads.seen().into_iter().skip(requests_before).collect();
    let cds = reopened.iter().find(|s| s.type_url == CLUSTER).expect("CDS after reconnect");
    assert!(cds.has_node);
    assert!(cds.initial_versions.contains_key("c1"), "{cds:?}");
    let eds = reopened.iter().find(|s| s.type_url == ENDPOINT).expect("EDS after reconnect");
    assert_eq!(eds.names, vec!["c1".to_string()]);
    assert!(eds.initial_versions.contains_key("c1"), "{eds:?}");
    assert!(status.metrics().iter().any(|m| m.name == "weft_xds_connects_total" && m.value >= 2));
}

#[tokio::test]
async fn state_of_the_world_works_and_is_the_fallback_when_delta_is_unimplemented() {
    let ads = ScriptedAds::new();
    ads.refuse_delta(true);
    publish(&ads, 8001);
    let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let (applied, status) = start_client(addr, Protocol::Delta, None);
    eventually("first config", || applied.count() > 0).await;
    assert_eq!(status.dump()["protocol"], "sotw");
    assert_eq!(endpoint_port(&applied.last().unwrap(), "c1"), Some(8001));

    // ACKs carry the response's version_info and nonce; EDS/RDS requests name their resources.
    eventually("EDS ACK", || {
        ads.seen().iter().any(|s| s.type_url == ENDPOINT && !s.nonce.is_empty() && s.version_info.starts_with("v-"))
    })
    .await;
    let seen = ads.seen();
    assert!(seen.iter().filter(|s| s.type_url == ROUTE).all(|s| s.names == vec!["r1".to_string()]));

    // A bad listener is NACKed with the previous version_info; the rest of the response applies.
    let good_version =
        seen.iter().rev().find(|s| s.type_url == LISTENER && !s.nonce.is_empty()).unwrap().version_info.clone();
    let mut bad = listener("l2", "r1");
    bad.bind_to_port = Some(Default::default());
    ads.set("l2", &bad);
    ads.set("l3", &listener("l3", "r1"));
    eventually("LDS NACK", || ads.seen().iter().any(|s| s.type_url == LISTENER && s.error.is_some())).await;
    let nack = ads.seen().into_iter().find(|s| s.type_url == LISTENER && s.error.is_some()).unwrap();
    assert_eq!(nack.version_info, good_version);
    assert!(nack.error.as_deref().unwrap().starts_with(r#"Listener "l2": bind_to_port"#), "{nack:?}");
    eventually("l3 applied", || applied.last().is_some_and(|c| c.listeners.iter().any(|l| l.name == "l3"))).await;

    // Removing a listener from the state of the world removes it.
    ads.remove(LISTENER, "l3");
    eventually("l3 removed", || applied.last().is_some_and(|c| !c.listeners.iter().any(|l| l.name == "l3"))).await;
}

#[tokio::test]
async fn a_listener_the_proxy_cannot_bind_is_nacked_and_the_rest_applies() {
    let ads = ScriptedAds::new();
    publish(&ads, 8001);
    let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let (applied, _status) = start_client(addr, Protocol::Delta, Some("l-busy"));
    eventually("first config", || applied.count() > 0).await;
    ads.set("l-busy", &listener("l-busy", "r1"));
    eventually("LDS NACK", || ads.seen().iter().any(|s| s.type_url == LISTENER && s.error.is_some())).await;
    let nack = ads.seen().into_iter().find(|s| s.error.is_some()).unwrap();
    assert_eq!(nack.error.as_deref(), Some(r#"Listener "l-busy": address in use"#));
    // The config without it stays applied; the listener that was there keeps serving.
    let cfg = applied.last().unwrap();
    assert!(cfg.listeners.iter().any(|l| l.name == "l1"));
    assert!(!cfg.listeners.iter().any(|l| l.name == "l-busy"));
}

#[tokio::test]
async fn a_route_the_server_says_does_not_exist_is_not_waited_for() {
    let ads = ScriptedAds::new();
    publish(&ads, 8001);
    ads.set("l2", &listener("l2", "nope"));
    let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let (applied, _status) = start_client(addr, Protocol::Delta, None);
    eventually("first config", || applied.count() > 0).await;
    let cfg = applied.last().unwrap();
    assert!(cfg.listeners.iter().any(|l| l.name == "l2"));
    assert!(!cfg.route_configs.contains_key("nope"));
    // It arrives later: applied as it comes.
    ads.set("nope", &route("nope", "c1"));
    eventually("late route", || applied.last().is_some_and(|c| c.route_configs.contains_key("nope"))).await;
}

#[test]
fn backoff_doubles_with_jitter_within_bounds() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
    let mut b = weft_xds_client::Backoff::new(min, max);
    let mut ceiling = min;
    for _ in 0..20 {
        let d = b.next_delay(&mut rng);
        assert!(d >= min && d <= ceiling && d >= ceiling / 2, "{d:?} for ceiling {ceiling:?}");
        ceiling = (ceiling * 2).min(max);
    }
    b.reset();
    assert_eq!(b.next_delay(&mut rng), min);
}

#[test]
fn server_addresses_are_checked() {
    use weft_xds_client::client::server_uri;
    assert_eq!(server_uri("127.0.0.1:15010").unwrap(), "http://127.0.0.1:15010");
    assert_eq!(server_uri("http://istiod.istio-system:15010").unwrap(), "http://istiod.istio-system:15010");
    for bad in ["127.0.0.1", "https://x:15012", "::1"] {
        assert!(server_uri(bad).is_err(), "{bad}");
    }
}

/// A client persisting its config in `dir`; the handle stops it.
fn start_cached_client(
    server: SocketAddr,
    dir: &std::path::Path,
) -> (Applied, Arc<Status>, tokio::task::JoinHandle<()>) {
    let node = weft_xds_client::node(
        "sidecar~127.0.0.1~test.default~default.svc.cluster.local",
        None,
        &BTreeMap::new(),
        &[],
        None,
    )
    .unwrap();
    let mut opts = Options::new(&server.to_string(), node, Arc::new(ProxyConfig::default()));
    opts.backoff_min = Duration::from_millis(50);
    opts.backoff_max = Duration::from_millis(200);
    opts.initial_fetch_timeout = Duration::from_secs(60);
    opts.cache_dir = Some(dir.to_path_buf());
    let status = Arc::new(Status::new(&server.to_string(), "test", Protocol::Delta));
    let applied = Applied::default();
    let sink = applied.clone();
    let task = tokio::spawn(weft_xds_client::run(opts, status.clone(), move |cfg: Arc<ProxyConfig>| {
        let sink = sink.clone();
        async move {
            sink.0.lock().unwrap().push(cfg);
            Ok(())
        }
    }));
    (applied, status, task)
}

fn metric(status: &Status, name: &str) -> u64 {
    status.metrics().iter().find(|m| m.name == name).map(|m| m.value).unwrap_or(0)
}

#[tokio::test]
async fn a_persisted_config_serves_before_the_server_answers_and_the_client_resyncs_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let ads = ScriptedAds::new();
    publish(&ads, 8001);
    let addr = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let (applied, status, task) = start_cached_client(addr, dir.path());
    eventually("first config", || applied.count() > 0).await;
    eventually("config persisted", || metric(&status, "weft_xds_cache_writes_total") >= 1).await;
    let served = applied.last().unwrap();
    task.abort();
    ads.shutdown();

    // The control plane is away: a new client serves the persisted config at once.
    let (applied, status, task) = start_cached_client(addr, dir.path());
    eventually("cached config", || applied.count() > 0).await;
    let cached = applied.last().unwrap();
    assert_eq!(cached.listeners, served.listeners);
    assert_eq!(cached.route_configs, served.route_configs);
    assert_eq!(endpoint_port(&cached, "c1"), Some(8001));
    assert_eq!(cached.version, served.version, "the same resources at the same versions");
    assert!(status.ready() && !status.connected());
    assert_eq!(metric(&status, "weft_xds_cache_loaded_resources"), 4);

    // The server comes back with a change: the client resyncs from the versions it loaded.
    let requests_before = ads.seen().len();
    ads.set("c1", &assignment("c1", 8002));
    ads.serve(addr).await;
    eventually("resynced", || applied.last().and_then(|c| endpoint_port(&c, "c1")) == Some(8002)).await;
    let cds = ads.seen().into_iter().skip(requests_before).find(|s| s.type_url == CLUSTER).unwrap();
    assert!(cds.initial_versions.contains_key("c1"), "{cds:?}");
    eventually("new config persisted", || metric(&status, "weft_xds_cache_writes_total") >= 1).await;
    task.abort();
    ads.shutdown();
    let node = "sidecar~127.0.0.1~test.default~default.svc.cluster.local";
    let on_disk = weft_xds_client::cache::read(dir.path(), node).unwrap().unwrap();
    assert_eq!(on_disk.len(), 4);

    // A damaged file is reported and ignored: nothing is applied until a server answers.
    let file = weft_xds_client::cache::path_in(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let (applied, status, task) = start_cached_client(addr, dir.path());
    eventually("cache error reported", || !status.dump()["cache"]["error"].as_str().unwrap_or("").is_empty()).await;
    let err = status.dump()["cache"]["error"].as_str().unwrap().to_string();
    assert!(err.contains("not a weft xDS cache"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(applied.count(), 0);
    assert!(!status.ready());
    task.abort();

    // So is a cache another node wrote.
    let other = weft_xds_client::cache::encode("sidecar~127.0.0.9~other.default~default.svc.cluster.local", &[]);
    weft_xds_client::cache::write(dir.path(), &other).unwrap();
    let (applied, status, task) = start_cached_client(addr, dir.path());
    eventually("foreign cache reported", || !status.dump()["cache"]["error"].as_str().unwrap_or("").is_empty()).await;
    assert!(status.dump()["cache"]["error"].as_str().unwrap().contains("written for node"));
    assert_eq!(applied.count(), 0);
    task.abort();
}
