//! `weft proxy --xds`: a real proxy process fed by a tiny in-test ADS server (tonic, loopback),
//! routing to real backends. It waits for a complete config before it is ready, follows
//! endpoint changes, NACKs a bad cluster while the old one keeps serving, keeps serving while the
//! control plane is gone, and resynchronises when it comes back.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_test::ads::{any, ScriptedAds, Seen};
use weft_test::{http_get, wait_for, HttpBackend, WeftProcess};

// ---- the mesh it serves -----------------------------------------------------------------------

const CLUSTER: &str = "outbound|80||svc.default.svc.cluster.local";
const NODE: &str = "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local";

fn sock(addr: SocketAddr) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(addr.port() as u32)),
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

fn eds_cluster() -> cl::Cluster {
    cl::Cluster {
        name: CLUSTER.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(cl::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: ads_source(),
            service_name: String::new(),
        }),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    }
}

/// The same cluster asking for TLS to its upstreams, which weft cannot do yet.
fn tls_cluster() -> cl::Cluster {
    cl::Cluster {
        transport_socket: Some(core::TransportSocket { name: "envoy.transport_sockets.tls".into(), config_type: None }),
        ..eds_cluster()
    }
}

fn assignment(backend: SocketAddr) -> ep::ClusterLoadAssignment {
    ep::ClusterLoadAssignment {
        cluster_name: CLUSTER.into(),
        endpoints: vec![ep::LocalityLbEndpoints {
            lb_endpoints: vec![ep::LbEndpoint {
                host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                    address: sock(backend),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Listener "web" on a free loopback port, routes from RDS "80".
fn listener() -> li::Listener {
    let h = hcm::HttpConnectionManager {
        stat_prefix: "web".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: ads_source(),
            route_config_name: "80".into(),
        })),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    li::Listener {
        name: "web".into(),
        address: sock("127.0.0.1:0".parse().unwrap()),
        filter_chains: vec![li::FilterChain {
            filters: vec![li::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(li::filter::ConfigType::TypedConfig(any(&h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route() -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "svc".into(),
            domains: vec!["*".into()],
            routes: vec![rt::Route {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(rt::route::Action::Route(rt::RouteAction {
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(CLUSTER.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A STATIC cluster with one endpoint, optionally connecting from `source`.
fn static_cluster(name: &str, backend: SocketAddr, source: Option<&str>) -> cl::Cluster {
    let mut la = assignment(backend);
    la.cluster_name = name.into();
    cl::Cluster {
        name: name.into(),
        load_assignment: Some(la),
        upstream_bind_config: source.map(|ip| core::BindConfig {
            source_address: Some(core::SocketAddress {
                address: ip.into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A listener whose HTTP-looking connections take the connection manager (RDS "80") and the
/// rest a TCP proxy to `tcp_cluster`; `inspect` adds the http_inspector that tells them apart.
fn sniffing_listener(name: &str, tcp_cluster: &str, inspect: bool) -> li::Listener {
    use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    let mut l = listener();
    l.name = name.into();
    l.filter_chains[0].filter_chain_match = Some(li::FilterChainMatch {
        application_protocols: vec!["http/1.1".into(), "h2c".into()],
        ..Default::default()
    });
    let t = tcp::TcpProxy {
        stat_prefix: tcp_cluster.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(tcp_cluster.into())),
        ..Default::default()
    };
    l.default_filter_chain = Some(li::FilterChain {
        filters: vec![li::Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(li::filter::ConfigType::TypedConfig(any(&t))),
        }],
        ..Default::default()
    });
    if inspect {
        l.listener_filters = vec![li::ListenerFilter {
            name: "envoy.filters.listener.http_inspector".into(),
            config_type: Some(li::listener_filter::ConfigType::TypedConfig(any(&HttpInspector::default()))),
            ..Default::default()
        }];
    }
    l
}

/// An HTTP/1.1 server that answers every request with the client's address in `x-peer`.
async fn peer_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the peer echo");
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nx-peer: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    peer.ip()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// Which backend answers a GET on a fresh connection ("" when the proxy fails it).
async fn backend_now(addr: SocketAddr) -> String {
    match http_get(addr, "/", &[]).await {
        Ok(r) if r.status == 200 => backend_of(&r),
        _ => String::new(),
    }
}

async fn prometheus(weft: &WeftProcess) -> String {
    admin_get(weft, "/stats/prometheus").await
}

// ---- the test ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_follows_the_control_plane_rejects_bad_resources_and_outlives_it() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let ads = ScriptedAds::new();
    ads.set(CLUSTER, &eds_cluster());
    ads.set(CLUSTER, &assignment(a.addr()));
    ads.set("web", &listener());
    // The route configuration is held back: the proxy must not be ready without it.
    ads.silent_on_absent(true);
    let server = ads.serve("127.0.0.1:0".parse().unwrap()).await;

    let admin = dead_addr();
    let builder = WeftProcess::builder(WEFT);
    let bootstrap = builder.write_file("bootstrap.yaml", format!("admin: {{ address: \"{admin}\" }}\n"));
    let start = builder
        .arg("proxy")
        .arg("--config")
        .arg(&bootstrap)
        .args(["--xds", &server.to_string(), "--node-id", NODE, "--labels", "app=web,version=v1"])
        .args(["--concurrency", "1"])
        .start();
    let starting = tokio::spawn(start);
    let not_ready = wait_for(Duration::from_secs(10), || async {
        matches!(http_get(admin, "/ready", &[]).await, Ok(r) if r.status == 503 && r.text().contains("PRE_INITIALIZING"))
    })
    .await;
    assert!(not_ready, "admin /ready must answer 503 PRE_INITIALIZING while the route configuration is missing");
    ads.set("80", &route());
    let weft = starting.await.expect("weft start task");
    let web = weft.listener("web");
    assert_eq!(backend_now(web).await, "a");
    let r = http_get(admin, "/ready", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // /config_dump shows the xDS state and every resource's version.
    let dump: serde_json::Value = serde_json::from_str(&admin_get(&weft, "/config_dump").await).unwrap();
    let xds = &dump["xds"];
    assert_eq!(xds["connected"], true, "{xds}");
    assert_eq!(xds["protocol"], "delta");
    assert_eq!(xds["node_id"], NODE);
    for (ty, name) in [("CDS", CLUSTER), ("EDS", CLUSTER), ("LDS", "web"), ("RDS", "80")] {
        assert!(xds["resources"][ty][name]["version"].is_string(), "{ty} {name}: {xds}");
    }
    assert_eq!(dump["node"]["app"], "web");

    // Endpoints move: traffic follows.
    ads.set(CLUSTER, &assignment(b.addr()));
    let moved = wait_for(Duration::from_secs(10), || async { backend_now(web).await == "b" }).await;
    assert!(moved, "traffic must move to the new endpoint\n{}", weft.output_report());

    // A cluster weft cannot honour is NACKed with the reason; the last good one keeps serving.
    ads.set(CLUSTER, &tls_cluster());
    let want = format!("Cluster {CLUSTER:?}: transport_socket: not supported");
    let nacked = wait_for(Duration::from_secs(10), || async {
        ads.seen().iter().any(|s| s.error.as_deref() == Some(want.as_str()))
    })
    .await;
    assert!(nacked, "no NACK with {want:?}: {:?}", ads.seen());
    let nack = ads.seen().into_iter().find(|s| s.error.is_some()).unwrap();
    assert_eq!(nack.type_url, weft_xds::type_url::CLUSTER);
    for _ in 0..5 {
        assert_eq!(backend_now(web).await, "b");
    }
    let prom = prometheus(&weft).await;
    assert_eq!(prom_sum(&prom, "weft_xds_rejects_total", &[("type", "CDS")]), 1.0, "{prom}");
    assert!(prom_sum(&prom, "weft_xds_updates_total", &[("type", "EDS")]) >= 2.0, "{prom}");
    let dump: serde_json::Value = serde_json::from_str(&admin_get(&weft, "/config_dump").await).unwrap();
    assert_eq!(dump["xds"]["rejected"][0]["error"], want.as_str());

    // The control plane goes away: the proxy keeps serving what it has.
    ads.shutdown();
    let down = wait_for(Duration::from_secs(10), || async {
        prom_sum(&prometheus(&weft).await, "weft_xds_connected", &[]) == 0.0
    })
    .await;
    assert!(down, "weft_xds_connected must drop to 0");
    for _ in 0..5 {
        assert_eq!(backend_now(web).await, "b");
    }

    // It comes back (same address) with a good cluster and the first endpoint: the proxy
    // reconnects, tells it what it holds, and converges.
    ads.set(CLUSTER, &eds_cluster());
    ads.set(CLUSTER, &assignment(a.addr()));
    let before = ads.seen().len();
    ads.serve(server).await;
    let back = wait_for(Duration::from_secs(20), || async { backend_now(web).await == "a" }).await;
    assert!(back, "traffic must follow the control plane after it returns\n{}", weft.output_report());
    let resync: Vec<Seen> = ads.seen().into_iter().skip(before).collect();
    let cds =
        resync.iter().find(|s| s.type_url == weft_xds::type_url::CLUSTER).expect("a CDS request after reconnecting");
    assert!(cds.initial_versions.contains_key(CLUSTER), "{cds:?}");
    let prom = prometheus(&weft).await;
    assert_eq!(prom_sum(&prom, "weft_xds_connected", &[]), 1.0);
    assert!(prom_sum(&prom, "weft_xds_connects_total", &[]) >= 2.0);
    let stats = admin_get(&weft, "/stats").await;
    assert_eq!(stat(&stats, "xds.connected"), 1, "{stats}");

    // SIGTERM drains and exits as in static mode, with the ADS stream open.
    let mut weft = weft;
    weft.signal(weft_test::SIGTERM);
    let status = weft.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", weft.output_report());
}

#[tokio::test]
async fn xds_flags_are_checked() {
    let cases: &[(&[&str], &str)] = &[
        (&["proxy", "--xds", "127.0.0.1:1"], "--node-id"),
        (&["proxy", "--xds", "127.0.0.1", "--node-id", "n"], r#"--xds: xDS server address "127.0.0.1""#),
        (
            &["proxy", "--xds", "127.0.0.1:1", "--node-id", "gateway~1.2.3.4~a.b~b.svc.cluster.local"],
            "unknown proxy type",
        ),
        (
            &["proxy", "--xds", "127.0.0.1:1", "--node-id", "n", "--labels", "novalue"],
            r#"--labels: "novalue" is not KEY=VALUE"#,
        ),
        (&["proxy"], "--config"),
    ];
    for (args, want) in cases {
        let mut cmd = std::process::Command::new(WEFT);
        cmd.args(*args);
        let out = run_blocking(cmd, Duration::from_secs(20)).await;
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(out.stderr.contains(want), "{args:?}: stderr must contain {want:?}, got {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inspection_picks_chains_and_clusters_bind_their_source_address() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let echo = peer_echo().await;
    let ads = ScriptedAds::new();
    ads.set(CLUSTER, &eds_cluster());
    ads.set(CLUSTER, &assignment(a.addr()));
    ads.set("raw", &static_cluster("raw", b.addr(), None));
    ads.set("from6", &static_cluster("from6", echo, Some("127.0.0.6")));
    ads.set("sniff", &sniffing_listener("sniff", "raw", true));
    ads.set("plain", &sniffing_listener("plain", "raw", false));
    let mut bound = listener();
    bound.name = "bound".into();
    ads.set("bound", &bound);
    let mut r = route();
    let mut peer_route = r.virtual_hosts[0].routes[0].clone();
    peer_route.r#match = Some(rt::RouteMatch {
        path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/peer".into())),
        ..Default::default()
    });
    peer_route.action = Some(rt::route::Action::Route(rt::RouteAction {
        cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster("from6".into())),
        ..Default::default()
    }));
    r.virtual_hosts[0].routes.insert(0, peer_route);
    ads.set("80", &r);
    let server = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    let builder = WeftProcess::builder(WEFT);
    let bootstrap = builder.write_file("bootstrap.yaml", "admin: { address: \"127.0.0.1:0\" }\n");
    let weft = builder
        .arg("proxy")
        .arg("--config")
        .arg(&bootstrap)
        .args(["--xds", &server.to_string(), "--node-id", NODE, "--concurrency", "1"])
        .start()
        .await;

    // With the inspector, HTTP takes the connection manager (routes to a); without it, the
    // connection is not known to be HTTP and takes the TCP chain (straight to b).
    assert_eq!(backend_now(weft.listener("sniff")).await, "a");
    assert_eq!(backend_now(weft.listener("plain")).await, "b");
    let h2 = weft_test::h2c_get(weft.listener("sniff"), "/", &[]).await.expect("h2c through the sniffing listener");
    assert_eq!(backend_of(&h2), "a");

    // Connections of the cluster come from its bind address.
    let resp = http_get(weft.listener("bound"), "/peer", &[]).await.expect("GET /peer");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-peer"), Some("127.0.0.6"));
}
