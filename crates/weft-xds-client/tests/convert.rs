//! Envoy resources in, weft's model out: table-driven, with the exact messages of rejections.
//! The shapes are the ones weft's translator (and istiod) emit.

// Deprecated Envoy fields are part of what is converted.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as fault_common;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{DownstreamTlsContext, UpstreamTlsContext};
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uh;
use envoy_types::pb::envoy::r#type::matcher::v3 as m;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, Int64Range, Percent};
use envoy_types::pb::google::protobuf::{self as pbuf, value::Kind, Any, BoolValue, Struct, UInt32Value, Value};
use prost::{Message, Name};
use weft_config::*;
use weft_xds_client::convert::{self, ClusterSpec, ListenerSpec};

// ---- proto builders ---------------------------------------------------------------------------

fn any<M: Message + Name>(msg: &M) -> Any {
    Any { type_url: M::type_url(), value: msg.encode_to_vec() }
}
fn dur(ms: u64) -> pbuf::Duration {
    pbuf::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}
fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}
fn yes() -> Option<BoolValue> {
    Some(BoolValue { value: true })
}
fn no() -> Option<BoolValue> {
    Some(BoolValue { value: false })
}
fn sock(ip: &str, port: u32) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}
fn ads() -> Option<core::ConfigSource> {
    Some(core::ConfigSource {
        resource_api_version: 2,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
        ..Default::default()
    })
}
fn million(n: u32) -> Option<FractionalPercent> {
    Some(FractionalPercent { numerator: n, denominator: 2 })
}
fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}
fn err_of<T: std::fmt::Debug>(r: Result<T, weft_xds_client::Error>) -> String {
    r.expect_err("must be rejected").to_string()
}

fn lb_endpoint(ip: &str, port: u32) -> ep::LbEndpoint {
    ep::LbEndpoint {
        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
            address: sock(ip, port),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cla(name: &str, localities: Vec<ep::LocalityLbEndpoints>) -> ep::ClusterLoadAssignment {
    ep::ClusterLoadAssignment { cluster_name: name.into(), endpoints: localities, ..Default::default() }
}

fn eds_cluster(name: &str) -> cl::Cluster {
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(cl::cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig { eds_config: ads(), service_name: String::new() }),
        connect_timeout: Some(dur(10_000)),
        ..Default::default()
    }
}

fn typed(kind: cl::cluster::DiscoveryType) -> Option<cl::cluster::ClusterDiscoveryType> {
    Some(cl::cluster::ClusterDiscoveryType::Type(kind as i32))
}

fn http2_options() -> HashMap<String, Any> {
    use uh::http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    };
    let o = uh::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(dur(30_000)),
            max_requests_per_connection: u32v(100),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(core::Http2ProtocolOptions {
                max_concurrent_streams: u32v(50),
                ..Default::default()
            })),
        })),
        ..Default::default()
    };
    [("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(), any(&o))].into()
}

fn istio_services(host: &str, name: &str, ns: &str) -> Option<core::Metadata> {
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
    let svc =
        Struct { fields: [("host".into(), s(host)), ("name".into(), s(name)), ("namespace".into(), s(ns))].into() };
    let list = Value {
        kind: Some(Kind::ListValue(pbuf::ListValue { values: vec![Value { kind: Some(Kind::StructValue(svc)) }] })),
    };
    let istio = Struct { fields: [("services".to_string(), list)].into() };
    Some(core::Metadata { filter_metadata: [("istio".to_string(), istio)].into(), ..Default::default() })
}

fn base_cluster(name: &str, discovery: Discovery) -> Cluster {
    Cluster {
        name: name.into(),
        discovery,
        lb_policy: LbPolicy::RoundRobin,
        localities: vec![],
        connect_timeout: Duration::from_secs(5),
        protocol: UpstreamProtocol::Http1,
        pool: PoolConfig { idle_timeout: Duration::from_secs(3600), ..PoolConfig::default() },
        circuit_breakers: CircuitBreakers::default(),
        outlier_detection: None,
        health_checks: vec![],
        panic_threshold_percent: 50.0,
        metadata: Labels::new(),
        source_address: None,
    }
}

fn locality(priority: u32, weight: Option<u32>, zone: &str, eps: Vec<Endpoint>) -> LocalityEndpoints {
    LocalityEndpoints {
        locality: Locality { region: "r".into(), zone: zone.into(), sub_zone: String::new() },
        priority,
        weight,
        endpoints: eps,
    }
}

fn endpoint(addr: &str, weight: u32, health: EndpointHealth) -> Endpoint {
    Endpoint { address: EndpointAddress::Socket(sa(addr)), weight, health, metadata: Labels::new() }
}

// ---- clusters ---------------------------------------------------------------------------------

#[test]
fn clusters_convert() {
    let name = "outbound|9080||reviews.default.svc.cluster.local";
    let mut full_eds = eds_cluster(name);
    full_eds.lb_policy = cl::cluster::LbPolicy::LeastRequest as i32;
    full_eds.circuit_breakers = Some(cl::CircuitBreakers {
        thresholds: vec![
            cl::circuit_breakers::Thresholds {
                max_connections: u32v(100),
                max_pending_requests: u32v(10),
                max_requests: u32v(200),
                max_retries: u32v(5),
                ..Default::default()
            },
            // HIGH priority: weft routes everything at DEFAULT.
            cl::circuit_breakers::Thresholds { priority: 1, max_connections: u32v(1), ..Default::default() },
        ],
        ..Default::default()
    });
    full_eds.outlier_detection = Some(cl::OutlierDetection {
        consecutive_5xx: u32v(3),
        interval: Some(dur(5_000)),
        base_ejection_time: Some(dur(60_000)),
        max_ejection_percent: u32v(50),
        enforcing_success_rate: u32v(0),
        consecutive_gateway_failure: u32v(2),
        enforcing_consecutive_gateway_failure: u32v(100),
        ..Default::default()
    });
    full_eds.typed_extension_protocol_options = http2_options();
    full_eds.common_lb_config = Some(cl::cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        locality_config_specifier: Some(
            cl::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                cl::cluster::common_lb_config::LocalityWeightedLbConfig {},
            ),
        ),
        ..Default::default()
    });
    full_eds.metadata = istio_services("reviews.default.svc.cluster.local", "reviews", "default");
    full_eds.health_checks = vec![
        core::HealthCheck {
            interval: Some(dur(2_000)),
            timeout: Some(dur(500)),
            unhealthy_threshold: u32v(2),
            healthy_threshold: u32v(1),
            health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
                core::health_check::HttpHealthCheck {
                    path: "/healthz".into(),
                    expected_statuses: vec![Int64Range { start: 200, end: 300 }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
        core::HealthCheck {
            health_checker: Some(core::health_check::HealthChecker::TcpHealthCheck(Default::default())),
            ..Default::default()
        },
    ];
    let full_eds_want = ClusterSpec {
        cluster: Cluster {
            lb_policy: LbPolicy::LeastRequest { choice_count: 2 },
            connect_timeout: Duration::from_secs(10),
            protocol: UpstreamProtocol::Http2,
            pool: PoolConfig {
                idle_timeout: Duration::from_secs(30),
                max_requests_per_connection: Some(100),
                max_concurrent_streams: 50,
                ..PoolConfig::default()
            },
            circuit_breakers: CircuitBreakers {
                max_connections: 100,
                max_pending_requests: 10,
                max_requests: 200,
                max_retries: 5,
                ..CircuitBreakers::default()
            },
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 3,
                consecutive_gateway_failure: 2,
                interval: Duration::from_secs(5),
                base_ejection_time: Duration::from_secs(60),
                max_ejection_percent: 50,
                ..OutlierDetection::default()
            }),
            health_checks: vec![
                HealthCheck {
                    kind: HealthCheckKind::Http {
                        path: "/healthz".into(),
                        host: Some(name.into()),
                        expected_statuses: vec![(200, 299)],
                    },
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_millis(500),
                    unhealthy_threshold: 2,
                    healthy_threshold: 1,
                },
                HealthCheck {
                    kind: HealthCheckKind::Tcp,
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                    unhealthy_threshold: 3,
                    healthy_threshold: 1,
                },
            ],
            panic_threshold_percent: 0.0,
            metadata: [
                ("namespace", "default"),
                ("service", "reviews.default.svc.cluster.local"),
                ("service_name", "reviews"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..base_cluster(name, Discovery::Eds)
        },
        eds_service: Some(name.into()),
        locality_weighted: true,
    };

    let mut service_name = eds_cluster("outbound|80|v1|x");
    service_name.eds_cluster_config.as_mut().unwrap().service_name = "x-v1".into();
    service_name.connect_timeout = None;

    let mut dns = cl::Cluster {
        name: "outbound|443||api.example.com".into(),
        cluster_discovery_type: typed(cl::cluster::DiscoveryType::StrictDns),
        dns_refresh_rate: Some(dur(30_000)),
        load_assignment: Some(cla(
            "outbound|443||api.example.com",
            vec![ep::LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint("api.example.com", 443)],
                ..Default::default()
            }],
        )),
        ..Default::default()
    };
    dns.lb_policy = cl::cluster::LbPolicy::Random as i32;
    let dns_want = |discovery| ClusterSpec {
        cluster: Cluster {
            lb_policy: LbPolicy::Random,
            localities: vec![LocalityEndpoints {
                locality: Locality::default(),
                priority: 0,
                weight: None,
                endpoints: vec![Endpoint {
                    address: EndpointAddress::Dns { host: "api.example.com".into(), port: 443 },
                    weight: 1,
                    health: EndpointHealth::Healthy,
                    metadata: Labels::new(),
                }],
            }],
            ..base_cluster("outbound|443||api.example.com", discovery)
        },
        eds_service: None,
        locality_weighted: false,
    };
    let mut logical = dns.clone();
    logical.cluster_discovery_type = typed(cl::cluster::DiscoveryType::LogicalDns);

    let passthrough = cl::Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: typed(cl::cluster::DiscoveryType::OriginalDst),
        lb_policy: cl::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    let inbound_passthrough = cl::Cluster {
        name: "InboundPassthroughCluster".into(),
        cluster_discovery_type: typed(cl::cluster::DiscoveryType::OriginalDst),
        lb_policy: cl::cluster::LbPolicy::ClusterProvided as i32,
        upstream_bind_config: Some(core::BindConfig {
            source_address: Some(core::SocketAddress {
                address: "127.0.0.6".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let blackhole = cl::Cluster { name: "BlackHoleCluster".into(), ..Default::default() };
    let inbound = cl::Cluster {
        name: "inbound|9080||".into(),
        load_assignment: Some(cla(
            "inbound|9080||",
            vec![ep::LocalityLbEndpoints { lb_endpoints: vec![lb_endpoint("127.0.0.1", 9080)], ..Default::default() }],
        )),
        ..Default::default()
    };
    let mut ring = eds_cluster("ring");
    ring.connect_timeout = None;
    ring.lb_policy = cl::cluster::LbPolicy::RingHash as i32;
    ring.lb_config = Some(cl::cluster::LbConfig::RingHashLbConfig(cl::cluster::RingHashLbConfig {
        minimum_ring_size: Some(pbuf::UInt64Value { value: 2048 }),
        ..Default::default()
    }));
    let mut maglev = eds_cluster("maglev");
    maglev.connect_timeout = None;
    maglev.lb_policy = cl::cluster::LbPolicy::Maglev as i32;
    let mut same = eds_cluster("same");
    same.connect_timeout = None;
    {
        use uh::http_protocol_options::{UpstreamProtocolOptions, UseDownstreamHttpConfig};
        let o = uh::HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                UseDownstreamHttpConfig { http2_protocol_options: Some(Default::default()), ..Default::default() },
            )),
            ..Default::default()
        };
        same.typed_extension_protocol_options =
            [("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), any(&o))].into();
    }

    let eds = |name: &str, f: &dyn Fn(&mut Cluster)| {
        let mut c = base_cluster(name, Discovery::Eds);
        f(&mut c);
        ClusterSpec { cluster: c, eds_service: Some(name.into()), locality_weighted: false }
    };
    let cases: Vec<(&str, cl::Cluster, ClusterSpec)> = vec![
        ("EDS with every policy", full_eds, full_eds_want),
        (
            "EDS service_name",
            service_name,
            ClusterSpec {
                cluster: base_cluster("outbound|80|v1|x", Discovery::Eds),
                eds_service: Some("x-v1".into()),
                locality_weighted: false,
            },
        ),
        ("STRICT_DNS", dns, dns_want(Discovery::StrictDns { refresh: Duration::from_secs(30) })),
        ("LOGICAL_DNS", logical, dns_want(Discovery::LogicalDns { refresh: Duration::from_secs(30) })),
        (
            "ORIGINAL_DST passthrough",
            passthrough,
            ClusterSpec {
                cluster: base_cluster("PassthroughCluster", Discovery::OriginalDst),
                eds_service: None,
                locality_weighted: false,
            },
        ),
        (
            "ORIGINAL_DST from 127.0.0.6 (inbound passthrough)",
            inbound_passthrough,
            ClusterSpec {
                cluster: Cluster {
                    source_address: Some("127.0.0.6".parse().unwrap()),
                    ..base_cluster("InboundPassthroughCluster", Discovery::OriginalDst)
                },
                eds_service: None,
                locality_weighted: false,
            },
        ),
        (
            "STATIC without endpoints (black hole)",
            blackhole,
            ClusterSpec {
                cluster: base_cluster("BlackHoleCluster", Discovery::Static),
                eds_service: None,
                locality_weighted: false,
            },
        ),
        (
            "STATIC inbound",
            inbound,
            ClusterSpec {
                cluster: Cluster {
                    localities: vec![LocalityEndpoints {
                        locality: Locality::default(),
                        priority: 0,
                        weight: None,
                        endpoints: vec![endpoint("127.0.0.1:9080", 1, EndpointHealth::Healthy)],
                    }],
                    ..base_cluster("inbound|9080||", Discovery::Static)
                },
                eds_service: None,
                locality_weighted: false,
            },
        ),
        (
            "RING_HASH",
            ring,
            eds("ring", &|c| c.lb_policy = LbPolicy::RingHash { min_ring_size: 2048, max_ring_size: 8 * 1024 * 1024 }),
        ),
        ("MAGLEV", maglev, eds("maglev", &|c| c.lb_policy = LbPolicy::Maglev { table_size: 65537 })),
        ("use_downstream_protocol with http2", same, eds("same", &|c| c.protocol = UpstreamProtocol::SameAsDownstream)),
    ];
    for (what, input, want) in cases {
        let got = convert::cluster(&input).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn clusters_that_would_behave_differently_are_rejected() {
    let x = "outbound|9080||x";
    let with = |f: &dyn Fn(&mut cl::Cluster)| {
        let mut c = eds_cluster(x);
        f(&mut c);
        c
    };
    let tls = core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&UpstreamTlsContext::default()))),
    };
    let cases: Vec<(cl::Cluster, String)> = vec![
        (with(&|c| c.transport_socket = Some(tls.clone())), format!("Cluster {x:?}: transport_socket: not supported")),
        (
            with(&|c| {
                c.transport_socket_matches =
                    vec![cl::cluster::TransportSocketMatch { name: "tlsMode-istio".into(), transport_socket: Some(tls.clone()), ..Default::default() }]
            }),
            format!("Cluster {x:?}: transport_socket_matches[0].transport_socket: not supported"),
        ),
        (
            with(&|c| {
                c.eds_cluster_config.as_mut().unwrap().eds_config = Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Path("/etc/eds".into())),
                    ..Default::default()
                })
            }),
            format!("Cluster {x:?}: eds_cluster_config.eds_config: only ads (or self) is supported: this proxy has one ADS stream"),
        ),
        (with(&|c| c.eds_cluster_config = None), format!("Cluster {x:?}: eds_cluster_config: required for type EDS")),
        (
            with(&|c| {
                c.lb_policy = cl::cluster::LbPolicy::Maglev as i32;
                c.lb_config = Some(cl::cluster::LbConfig::MaglevLbConfig(cl::cluster::MaglevLbConfig {
                    table_size: Some(pbuf::UInt64Value { value: 1000 }),
                }));
            }),
            format!("Cluster {x:?}: maglev_lb_config.table_size: 1000 must be a prime no larger than 5000011"),
        ),
        (
            with(&|c| c.lb_policy = cl::cluster::LbPolicy::ClusterProvided as i32),
            format!("Cluster {x:?}: lb_policy: CLUSTER_PROVIDED is supported only for ORIGINAL_DST and dynamic forward proxy clusters"),
        ),
        (
            with(&|c| c.typed_extension_protocol_options = [("envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".into(), Any::default())].into()),
            format!(r#"Cluster {x:?}: typed_extension_protocol_options["envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"]: not supported"#),
        ),
        (
            with(&|c| {
                c.outlier_detection = Some(cl::OutlierDetection { enforcing_consecutive_5xx: u32v(50), ..Default::default() })
            }),
            format!("Cluster {x:?}: outlier_detection.enforcing_consecutive_5xx: 50: only 0 or 100 is supported"),
        ),
        (
            with(&|c| c.outlier_detection = Some(cl::OutlierDetection { success_rate_minimum_hosts: u32v(3), ..Default::default() })),
            format!("Cluster {x:?}: outlier_detection.success_rate: success-rate ejection is not supported"),
        ),
        (
            with(&|c| {
                c.health_checks = vec![core::HealthCheck {
                    health_checker: Some(core::health_check::HealthChecker::GrpcHealthCheck(Default::default())),
                    ..Default::default()
                }]
            }),
            format!("Cluster {x:?}: health_checks[0].grpc_health_check: not supported"),
        ),
        (
            cl::Cluster {
                name: x.into(),
                cluster_discovery_type: typed(cl::cluster::DiscoveryType::LogicalDns),
                load_assignment: Some(cla(
                    x,
                    vec![ep::LocalityLbEndpoints {
                        lb_endpoints: vec![lb_endpoint("a.example.com", 80), lb_endpoint("b.example.com", 80)],
                        ..Default::default()
                    }],
                )),
                ..Default::default()
            },
            format!("Cluster {x:?}: load_assignment: a LOGICAL_DNS cluster takes exactly one endpoint"),
        ),
        (
            cl::Cluster {
                name: x.into(),
                load_assignment: Some(cla(
                    x,
                    vec![ep::LocalityLbEndpoints { lb_endpoints: vec![lb_endpoint("a.example.com", 80)], ..Default::default() }],
                )),
                ..Default::default()
            },
            format!(
                r#"Cluster {x:?}: load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "a.example.com": not an IP address (host names need STRICT_DNS or LOGICAL_DNS)"#
            ),
        ),
        (
            cl::Cluster { name: x.into(), cluster_discovery_type: typed(cl::cluster::DiscoveryType::StrictDns), ..Default::default() },
            format!("Cluster {x:?}: load_assignment: a DNS cluster needs at least one endpoint"),
        ),
        (
            with(&|c| {
                c.cluster_discovery_type =
                    Some(cl::cluster::ClusterDiscoveryType::ClusterType(cl::cluster::CustomClusterType {
                        name: "envoy.clusters.aggregate".into(),
                        typed_config: None,
                    }))
            }),
            format!(r#"Cluster {x:?}: cluster_type: "envoy.clusters.aggregate" is not supported"#),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(err_of(convert::cluster(&input)), want);
    }
}

// ---- endpoints --------------------------------------------------------------------------------

#[test]
fn assignments_keep_priorities_weights_and_health() {
    let loc = |zone: &str, priority: u32, weight: Option<u32>, eps: Vec<ep::LbEndpoint>| ep::LocalityLbEndpoints {
        locality: Some(core::Locality { region: "r".into(), zone: zone.into(), sub_zone: String::new() }),
        lb_endpoints: eps,
        load_balancing_weight: weight.and_then(u32v),
        priority,
        ..Default::default()
    };
    let with = |e: ep::LbEndpoint, health: core::HealthStatus, weight: Option<u32>| ep::LbEndpoint {
        health_status: health as i32,
        load_balancing_weight: weight.and_then(u32v),
        ..e
    };
    let mut meta_ep = lb_endpoint("10.0.0.4", 9080);
    meta_ep.metadata = Some(core::Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: [(
                    "workload".to_string(),
                    Value { kind: Some(Kind::StringValue("reviews-v2;default;reviews;v2;Kubernetes".into())) },
                )]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    });
    let input = cla(
        "outbound|9080||reviews",
        vec![
            // Out of priority order on purpose: the result is sorted.
            loc("b", 1, Some(1), vec![lb_endpoint("10.0.1.1", 9080)]),
            loc(
                "a",
                0,
                Some(3),
                vec![
                    with(lb_endpoint("10.0.0.1", 9080), core::HealthStatus::Healthy, Some(5)),
                    with(lb_endpoint("10.0.0.2", 9080), core::HealthStatus::Unhealthy, None),
                    with(lb_endpoint("10.0.0.3", 9080), core::HealthStatus::Draining, None),
                    meta_ep,
                ],
            ),
        ],
    );
    let got = convert::endpoints(&input).unwrap();
    let mut workload = Labels::new();
    for (k, v) in [
        ("workload", "reviews-v2"),
        ("namespace", "default"),
        ("app", "reviews"),
        ("version", "v2"),
        ("cluster", "Kubernetes"),
    ] {
        workload.insert(k.into(), v.into());
    }
    let want = vec![
        locality(
            0,
            Some(3),
            "a",
            vec![
                endpoint("10.0.0.1:9080", 5, EndpointHealth::Healthy),
                endpoint("10.0.0.2:9080", 1, EndpointHealth::Unhealthy),
                endpoint("10.0.0.3:9080", 1, EndpointHealth::Draining),
                Endpoint { metadata: workload, ..endpoint("10.0.0.4:9080", 1, EndpointHealth::Healthy) },
            ],
        ),
        locality(1, Some(1), "b", vec![endpoint("10.0.1.1:9080", 1, EndpointHealth::Healthy)]),
    ];
    assert_eq!(got.localities, want);

    // Locality weights count only for clusters with locality-weighted balancing.
    let mut unweighted = got.localities.clone();
    convert::weigh_localities(&mut unweighted, false);
    assert!(unweighted.iter().all(|l| l.weight.is_none()));
}

#[test]
fn assignments_weft_cannot_honour_are_rejected() {
    let name = "outbound|9080||x";
    let one =
        |e: ep::LbEndpoint| cla(name, vec![ep::LocalityLbEndpoints { lb_endpoints: vec![e], ..Default::default() }]);
    let mut overprovisioned = one(lb_endpoint("10.0.0.1", 80));
    overprovisioned.policy =
        Some(ep::cluster_load_assignment::Policy { overprovisioning_factor: u32v(200), ..Default::default() });
    let cases: Vec<(ep::ClusterLoadAssignment, String)> = vec![
        (
            overprovisioned,
            format!("ClusterLoadAssignment {name:?}: policy.overprovisioning_factor: 200: only the default 140 is supported"),
        ),
        (
            one(ep::LbEndpoint { health_status: core::HealthStatus::Degraded as i32, ..lb_endpoint("10.0.0.1", 80) }),
            format!("ClusterLoadAssignment {name:?}: endpoints[0].lb_endpoints[0].health_status: DEGRADED is not supported"),
        ),
        (
            one(lb_endpoint("reviews.default", 80)),
            format!(
                r#"ClusterLoadAssignment {name:?}: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "reviews.default": not an IP address (host names need STRICT_DNS or LOGICAL_DNS)"#
            ),
        ),
        (
            one(ep::LbEndpoint { load_balancing_weight: u32v(0), ..lb_endpoint("10.0.0.1", 80) }),
            format!("ClusterLoadAssignment {name:?}: endpoints[0].lb_endpoints[0].load_balancing_weight: must be at least 1"),
        ),
        (
            one(lb_endpoint("10.0.0.1", 70000)),
            format!("ClusterLoadAssignment {name:?}: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: 70000 is not a port"),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(err_of(convert::endpoints(&input)), want);
    }
}

// ---- listeners --------------------------------------------------------------------------------

fn hcm_rds(route: &str) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{route}"),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: ads(),
            route_config_name: route.into(),
        })),
        http_filters: vec![fault_filter(fault::HttpFault::default()), router_filter()],
        use_remote_address: no(),
        ..Default::default()
    }
}

fn fault_filter(cfg: fault::HttpFault) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.fault".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&cfg))),
        ..Default::default()
    }
}

fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    }
}

fn filter<M: Message + Name>(name: &str, msg: &M) -> li::Filter {
    li::Filter { name: name.into(), config_type: Some(li::filter::ConfigType::TypedConfig(any(msg))) }
}

fn http_chain(h: hcm::HttpConnectionManager, matcher: Option<li::FilterChainMatch>) -> li::FilterChain {
    li::FilterChain {
        filter_chain_match: matcher,
        filters: vec![filter("envoy.filters.network.http_connection_manager", &h)],
        ..Default::default()
    }
}

fn tcp_chain(cluster: &str, matcher: Option<li::FilterChainMatch>) -> li::FilterChain {
    let t = tcp::TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    li::FilterChain {
        filter_chain_match: matcher,
        filters: vec![filter("envoy.filters.network.tcp_proxy", &t)],
        ..Default::default()
    }
}

fn vip(ip: &str, port: u32) -> Option<li::FilterChainMatch> {
    Some(li::FilterChainMatch {
        destination_port: u32v(port),
        prefix_ranges: vec![core::CidrRange { address_prefix: ip.into(), prefix_len: u32v(32) }],
        ..Default::default()
    })
}

fn listener_filter<M: Message + Name>(name: &str, msg: &M) -> li::ListenerFilter {
    li::ListenerFilter {
        name: name.into(),
        config_type: Some(li::listener_filter::ConfigType::TypedConfig(any(msg))),
        ..Default::default()
    }
}

fn model_hcm(route: &str) -> Arc<HttpConnectionManager> {
    Arc::new(HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{route}"),
        codec: DownstreamCodec::Auto,
        routes: RouteSource::Named(route.into()),
        request_timeout: None,
        stream_idle_timeout: Some(Duration::from_secs(300)),
        idle_timeout: Some(Duration::from_secs(3600)),
        websocket: false,
        connect: false,
        generate_request_id: true,
        use_remote_address: false,
        limits: HttpLimits::default(),
        forwarded_proto: "http".into(),
        server_name: "weft".into(),
    })
}

fn model_tcp(cluster: &str) -> ChainAction {
    ChainAction::Tcp(TcpProxy {
        stat_prefix: cluster.into(),
        cluster: ClusterSpecifier::Single(cluster.into()),
        idle_timeout: Some(Duration::from_secs(3600)),
    })
}

#[test]
fn listeners_convert() {
    use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
    use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    let outbound = li::Listener {
        name: "virtualOutbound".into(),
        address: sock("0.0.0.0", 15001),
        use_original_dst: yes(),
        listener_filters: vec![
            listener_filter("envoy.filters.listener.original_dst", &OriginalDst::default()),
            listener_filter("envoy.filters.listener.tls_inspector", &TlsInspector::default()),
            listener_filter("envoy.filters.listener.http_inspector", &HttpInspector::default()),
        ],
        filter_chains: vec![
            http_chain(hcm_rds("9080"), vip("240.240.0.1", 9080)),
            // Istio's protocol sniffing: HTTP-looking traffic to port 8000 takes the HCM.
            http_chain(
                hcm_rds("8000"),
                Some(li::FilterChainMatch {
                    destination_port: u32v(8000),
                    application_protocols: vec!["http/1.1".into(), "h2c".into()],
                    ..Default::default()
                }),
            ),
            tcp_chain("outbound|3306||db.default.svc.cluster.local", vip("240.240.0.2", 3306)),
            li::FilterChain {
                name: "sni-example".into(),
                filter_chain_match: Some(li::FilterChainMatch {
                    destination_port: u32v(443),
                    server_names: vec!["*.Example.com".into()],
                    transport_protocol: "tls".into(),
                    application_protocols: vec!["h2".into()],
                    ..Default::default()
                }),
                ..tcp_chain("outbound|443||www.example.com", None)
            },
        ],
        default_filter_chain: Some(li::FilterChain {
            name: "PassthroughFilterChain".into(),
            ..tcp_chain("PassthroughCluster", None)
        }),
        ..Default::default()
    };
    let outbound_want = Listener {
        name: "virtualOutbound".into(),
        address: sa("0.0.0.0:15001"),
        use_original_dst: true,
        detection_timeout: Duration::from_secs(15),
        http_inspection: true,
        filter_chains: vec![
            FilterChain {
                name: "chain-0".into(),
                matcher: ChainMatch {
                    destination_port: Some(9080),
                    destination_ips: vec![Cidr { addr: "240.240.0.1".parse().unwrap(), prefix_len: 32 }],
                    ..ChainMatch::default()
                },
                action: ChainAction::Http(model_hcm("9080")),
            },
            FilterChain {
                name: "chain-1".into(),
                matcher: ChainMatch {
                    destination_port: Some(8000),
                    alpn: vec!["http/1.1".into(), "h2c".into()],
                    ..ChainMatch::default()
                },
                action: ChainAction::Http(model_hcm("8000")),
            },
            FilterChain {
                name: "chain-2".into(),
                matcher: ChainMatch {
                    destination_port: Some(3306),
                    destination_ips: vec![Cidr { addr: "240.240.0.2".parse().unwrap(), prefix_len: 32 }],
                    ..ChainMatch::default()
                },
                action: model_tcp("outbound|3306||db.default.svc.cluster.local"),
            },
            FilterChain {
                name: "sni-example".into(),
                matcher: ChainMatch {
                    destination_port: Some(443),
                    server_names: vec!["*.example.com".into()],
                    transport: Some(Transport::Tls),
                    alpn: vec!["h2".into()],
                    ..ChainMatch::default()
                },
                action: model_tcp("outbound|443||www.example.com"),
            },
        ],
        default_chain: Some(FilterChain {
            name: "PassthroughFilterChain".into(),
            matcher: ChainMatch::default(),
            action: model_tcp("PassthroughCluster"),
        }),
    };

    let mut bind_hcm = hcm_rds("9080");
    bind_hcm.codec_type = 1;
    bind_hcm.stream_idle_timeout = Some(dur(0));
    bind_hcm.request_timeout = Some(dur(30_000));
    bind_hcm.use_remote_address = yes();
    bind_hcm.common_http_protocol_options =
        Some(core::HttpProtocolOptions { idle_timeout: Some(dur(60_000)), ..Default::default() });
    bind_hcm.upgrade_configs =
        vec![hcm::http_connection_manager::UpgradeConfig { upgrade_type: "websocket".into(), ..Default::default() }];
    bind_hcm.http_filters.insert(
        1,
        hcm::HttpFilter {
            name: "istio.stats".into(),
            is_optional: true,
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(),
                value: vec![],
            })),
            ..Default::default()
        },
    );
    let bind = li::Listener {
        name: "127.0.0.2_9080".into(),
        address: sock("127.0.0.2", 9080),
        listener_filters_timeout: Some(dur(1_000)),
        filter_chains: vec![http_chain(bind_hcm, None)],
        ..Default::default()
    };
    let bind_want = Listener {
        name: "127.0.0.2_9080".into(),
        address: sa("127.0.0.2:9080"),
        use_original_dst: false,
        detection_timeout: Duration::from_secs(1),
        http_inspection: false,
        filter_chains: vec![FilterChain {
            name: "chain-0".into(),
            matcher: ChainMatch::default(),
            action: ChainAction::Http(Arc::new(HttpConnectionManager {
                codec: DownstreamCodec::Http1,
                request_timeout: Some(Duration::from_secs(30)),
                stream_idle_timeout: None,
                idle_timeout: Some(Duration::from_secs(60)),
                websocket: true,
                use_remote_address: true,
                ..(*model_hcm("9080")).clone()
            })),
        }],
        default_chain: None,
    };

    let cases: Vec<(&str, li::Listener, ListenerSpec)> = vec![
        (
            "capture listener",
            outbound,
            ListenerSpec { listener: outbound_want, rds: vec!["8000".into(), "9080".into()] },
        ),
        ("bind listener", bind, ListenerSpec { listener: bind_want, rds: vec!["9080".into()] }),
    ];
    for (what, input, want) in cases {
        let got = convert::listener(&input).unwrap_or_else(|e| panic!("{what}: {e}")).expect("a bound listener");
        assert_eq!(got, want, "{what}");
    }

    // Proxyless gRPC listeners are API listeners; a proxy skips them.
    let api = li::Listener {
        name: "reviews.default.svc.cluster.local:9080".into(),
        api_listener: Some(li::ApiListener {
            api_listener: Some(any(&hcm_rds("reviews.default.svc.cluster.local:9080"))),
        }),
        ..Default::default()
    };
    assert_eq!(convert::listener(&api).unwrap(), None);
}

#[test]
fn inline_route_configs_convert_with_the_listener() {
    let mut h = hcm_rds("unused");
    h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rt::RouteConfiguration {
        name: "inline".into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![route_to("/", "c")],
            ..Default::default()
        }],
        ..Default::default()
    }));
    let l = li::Listener {
        name: "l".into(),
        address: sock("127.0.0.1", 0),
        filter_chains: vec![http_chain(h, None)],
        ..Default::default()
    };
    let got = convert::listener(&l).unwrap().unwrap();
    assert!(got.rds.is_empty());
    let ChainAction::Http(h) = &got.listener.filter_chains[0].action else { panic!("http chain") };
    let RouteSource::Inline(rc) = &h.routes else { panic!("inline routes") };
    assert_eq!(rc.name, "inline");
    assert_eq!(rc.virtual_hosts[0].routes[0].action, RouteAction::Forward(forward_to("c")));
}

#[test]
fn listeners_that_would_behave_differently_are_rejected() {
    let l = "virtualOutbound";
    let with_hcm = |f: &dyn Fn(&mut hcm::HttpConnectionManager)| {
        let mut h = hcm_rds("9080");
        f(&mut h);
        li::Listener {
            name: l.into(),
            address: sock("0.0.0.0", 15001),
            filter_chains: vec![http_chain(h, None)],
            ..Default::default()
        }
    };
    let with = |f: &dyn Fn(&mut li::Listener)| {
        let mut x = with_hcm(&|_| {});
        f(&mut x);
        x
    };
    let hf = "filter_chains[0].filters[0].typed_config";
    let tls = core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&DownstreamTlsContext::default()))),
    };
    let lua = hcm::HttpFilter {
        name: "envoy.filters.http.lua".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua".into(),
            value: vec![],
        })),
        ..Default::default()
    };
    let cases: Vec<(li::Listener, String)> = vec![
        (with(&|x| x.filter_chains[0].transport_socket = Some(tls.clone())), format!("Listener {l:?}: filter_chains[0].transport_socket: not supported")),
        (
            with_hcm(&|h| h.http_filters.insert(0, lua.clone())),
            format!(r#"Listener {l:?}: {hf}.http_filters[0]: http filter "envoy.filters.http.lua" (envoy.extensions.filters.http.lua.v3.Lua) is not supported"#),
        ),
        (with_hcm(&|h| h.http_filters.reverse()), format!("Listener {l:?}: {hf}.http_filters[0]: the router must be the last http filter")),
        (with_hcm(&|h| h.http_filters.truncate(1)), format!("Listener {l:?}: {hf}.http_filters: the router filter is required")),
        (
            with_hcm(&|h| {
                h.http_filters[0] = fault_filter(fault::HttpFault {
                    abort: Some(fault::FaultAbort {
                        error_type: Some(fault::fault_abort::ErrorType::HttpStatus(503)),
                        percentage: million(1_000_000),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            format!("Listener {l:?}: {hf}.http_filters[0].typed_config: filter-level faults are not supported: configure them per route (typed_per_filter_config)"),
        ),
        (
            with_hcm(&|h| {
                h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                    config_source: Some(core::ConfigSource {
                        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::ApiConfigSource(Default::default())),
                        ..Default::default()
                    }),
                    route_config_name: "9080".into(),
                }))
            }),
            format!("Listener {l:?}: {hf}.rds.config_source: only ads (or self) is supported: this proxy has one ADS stream"),
        ),
        (with_hcm(&|h| h.codec_type = 3), format!("Listener {l:?}: {hf}.codec_type: 3: only AUTO, HTTP1 and HTTP2 are supported")),
        (with_hcm(&|h| h.via = "weft".into()), format!("Listener {l:?}: {hf}.via: not supported")),
        (
            with(&|x| x.filter_chains.push(x.filter_chains[0].clone())),
            format!("Listener {l:?}: filter_chains[1].filter_chain_match: two filter chains have the same match"),
        ),
        (
            with(&|x| {
                x.filter_chains[0].filters.insert(
                    0,
                    li::Filter {
                        name: "envoy.filters.network.rbac".into(),
                        config_type: Some(li::filter::ConfigType::TypedConfig(Any {
                            type_url: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC".into(),
                            value: vec![],
                        })),
                    },
                )
            }),
            format!(
                r#"Listener {l:?}: filter_chains[0].filters[0]: network filter "envoy.filters.network.rbac" is not supported (only one http_connection_manager or tcp_proxy)"#
            ),
        ),
        (
            with(&|x| {
                x.listener_filters = vec![li::ListenerFilter { name: "envoy.filters.listener.proxy_protocol".into(), ..Default::default() }]
            }),
            format!(r#"Listener {l:?}: listener_filters[0]: listener filter "envoy.filters.listener.proxy_protocol" is not supported"#),
        ),
        (with(&|x| x.bind_to_port = no()), format!("Listener {l:?}: bind_to_port: false is not supported (use filter chains on the capture listener)")),
        (with(&|x| x.address = sock("localhost", 80)), format!(r#"Listener {l:?}: address.socket_address.address: "localhost": not an IP address (host names need STRICT_DNS or LOGICAL_DNS)"#)),
        (with(&|x| x.filter_chains.clear()), format!("Listener {l:?}: filter_chains: a listener needs filter_chains or a default_filter_chain")),
    ];
    for (input, want) in cases {
        assert_eq!(err_of(convert::listener(&input)), want);
    }
}

// ---- routes -----------------------------------------------------------------------------------

fn route_to(prefix: &str, cluster: &str) -> rt::Route {
    rt::Route {
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(rt::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn forward_to(cluster: &str) -> Forward {
    Forward {
        cluster: ClusterSpecifier::Single(cluster.into()),
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: None,
        timeout: Some(Duration::from_secs(15)),
        idle_timeout: None,
        retry: None,
        hash_policy: vec![],
        mirrors: vec![],
        max_grpc_timeout: None,
    }
}

fn header_value(k: &str, v: &str, append: Option<bool>, action: i32) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue { key: k.into(), value: v.into(), ..Default::default() }),
        append: append.map(|value| BoolValue { value }),
        append_action: action,
        ..Default::default()
    }
}

fn fault_config(delay_ms: u64, delay_ppm: u32, abort: u32, abort_ppm: u32) -> Any {
    any(&fault::HttpFault {
        delay: Some(fault_common::FaultDelay {
            percentage: million(delay_ppm),
            fault_delay_secifier: Some(fault_common::fault_delay::FaultDelaySecifier::FixedDelay(dur(delay_ms))),
        }),
        abort: Some(fault::FaultAbort {
            percentage: million(abort_ppm),
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(abort)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn string_matcher(p: m::string_matcher::MatchPattern, ignore_case: bool) -> m::StringMatcher {
    m::StringMatcher { ignore_case, match_pattern: Some(p) }
}

fn header(name: &str, spec: Option<rt::header_matcher::HeaderMatchSpecifier>, invert: bool) -> rt::HeaderMatcher {
    rt::HeaderMatcher { name: name.into(), invert_match: invert, header_match_specifier: spec, ..Default::default() }
}

#[test]
fn route_configurations_convert() {
    use m::string_matcher::MatchPattern as P;
    use rt::header_matcher::HeaderMatchSpecifier as H;
    use rt::route_match::PathSpecifier as PS;

    let istio_retry = rt::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
        num_retries: u32v(2),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![rt::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: None,
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    let full_action = rt::RouteAction {
        cluster_specifier: Some(rt::route_action::ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
            clusters: vec![
                rt::weighted_cluster::ClusterWeight {
                    name: "outbound|9080|v1|reviews".into(),
                    weight: u32v(90),
                    request_headers_to_add: vec![header_value("x-subset", "v1", None, 2)],
                    host_rewrite_specifier: Some(
                        rt::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                            "v1.reviews.internal".into(),
                        ),
                    ),
                    ..Default::default()
                },
                rt::weighted_cluster::ClusterWeight {
                    name: "outbound|9080|v2|reviews".into(),
                    weight: u32v(10),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })),
        regex_rewrite: Some(m::RegexMatchAndSubstitute {
            pattern: Some(m::RegexMatcher { regex: "^/v1/(.*)$".into(), ..Default::default() }),
            substitution: "/\\1".into(),
        }),
        host_rewrite_specifier: Some(rt::route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "reviews.internal".into(),
        )),
        timeout: Some(dur(0)),
        idle_timeout: Some(dur(20_000)),
        retry_policy: Some(rt::RetryPolicy {
            per_try_timeout: Some(dur(2_000)),
            retry_back_off: Some(rt::retry_policy::RetryBackOff { base_interval: Some(dur(100)), max_interval: None }),
            retriable_headers: vec![header("x-retry", Some(H::PresentMatch(true)), false)],
            ..istio_retry.clone()
        }),
        hash_policy: vec![
            rt::route_action::HashPolicy {
                policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::Header(
                    rt::route_action::hash_policy::Header { header_name: "X-User".into(), regex_rewrite: None },
                )),
                terminal: true,
            },
            rt::route_action::HashPolicy {
                policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::Cookie(
                    rt::route_action::hash_policy::Cookie {
                        name: "session".into(),
                        ttl: Some(dur(60_000)),
                        path: "/".into(),
                        ..Default::default()
                    },
                )),
                terminal: false,
            },
            rt::route_action::HashPolicy {
                policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                    rt::route_action::hash_policy::ConnectionProperties { source_ip: true },
                )),
                terminal: false,
            },
            rt::route_action::HashPolicy {
                policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::QueryParameter(
                    rt::route_action::hash_policy::QueryParameter { name: "u".into() },
                )),
                terminal: false,
            },
        ],
        request_mirror_policies: vec![rt::route_action::RequestMirrorPolicy {
            cluster: "outbound|9080||mirror".into(),
            runtime_fraction: Some(core::RuntimeFractionalPercent {
                default_value: Some(FractionalPercent { numerator: 25, denominator: 0 }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        }],
        max_stream_duration: Some(rt::route_action::MaxStreamDuration {
            grpc_timeout_header_max: Some(dur(5_000)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let full_route = rt::Route {
        name: "full".into(),
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(PS::SafeRegex(m::RegexMatcher { regex: "/v1/.*".into(), ..Default::default() })),
            case_sensitive: no(),
            headers: vec![
                header(
                    ":method",
                    Some(H::StringMatch(string_matcher(
                        P::SafeRegex(m::RegexMatcher { regex: "GET|HEAD".into(), ..Default::default() }),
                        false,
                    ))),
                    false,
                ),
                header("x-exact", Some(H::ExactMatch("a".into())), false),
                header("x-ci", Some(H::StringMatch(string_matcher(P::Exact("Yes".into()), true))), false),
                header("x-prefix", Some(H::StringMatch(string_matcher(P::Prefix("p".into()), false))), false),
                header("x-suffix", Some(H::StringMatch(string_matcher(P::Suffix("s".into()), false))), false),
                header("x-contains", Some(H::StringMatch(string_matcher(P::Contains("c".into()), false))), false),
                header("x-absent", Some(H::PresentMatch(false)), false),
                header("x-present", None, false),
                header("x-not", Some(H::StringMatch(string_matcher(P::Exact("no".into()), false))), true),
            ],
            query_parameters: vec![
                rt::QueryParameterMatcher {
                    name: "q".into(),
                    query_parameter_match_specifier: Some(
                        rt::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(string_matcher(
                            P::Exact("1".into()),
                            false,
                        )),
                    ),
                },
                rt::QueryParameterMatcher {
                    name: "debug".into(),
                    query_parameter_match_specifier: Some(
                        rt::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
                    ),
                },
            ],
            grpc: Some(Default::default()),
            ..Default::default()
        }),
        action: Some(rt::route::Action::Route(full_action)),
        typed_per_filter_config: [("envoy.filters.http.fault".to_string(), fault_config(5_000, 500_000, 503, 100_000))]
            .into(),
        response_headers_to_add: vec![header_value("x-route", "full", Some(false), 0)],
        request_headers_to_remove: vec!["X-Internal".into()],
        ..Default::default()
    };
    let redirect = rt::Route {
        r#match: Some(rt::RouteMatch { path_specifier: Some(PS::Path("/old".into())), ..Default::default() }),
        action: Some(rt::route::Action::Redirect(rt::RedirectAction {
            host_redirect: "new.example.com".into(),
            port_redirect: 8443,
            response_code: 4,
            strip_query: true,
            scheme_rewrite_specifier: Some(rt::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)),
            path_rewrite_specifier: Some(rt::redirect_action::PathRewriteSpecifier::PrefixRewrite("/new".into())),
        })),
        // Disables the virtual host's fault for this route.
        typed_per_filter_config: [(
            "envoy.filters.http.fault".to_string(),
            any(&rt::FilterConfig { disabled: true, ..Default::default() }),
        )]
        .into(),
        ..Default::default()
    };
    let direct = rt::Route {
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(PS::PathSeparatedPrefix("/health".into())),
            ..Default::default()
        }),
        action: Some(rt::route::Action::DirectResponse(rt::DirectResponseAction {
            status: 200,
            body: Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString("ok".into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut plain = route_to("/", "outbound|9080||reviews");
    if let Some(rt::route::Action::Route(ra)) = &mut plain.action {
        ra.prefix_rewrite = "/api".into();
    }
    // An optional config for a filter weft does not have is ignored.
    plain.typed_per_filter_config = [(
        "istio.stats".to_string(),
        any(&rt::FilterConfig {
            is_optional: true,
            config: Some(Any { type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(), value: vec![] }),
            ..Default::default()
        }),
    )]
    .into();

    let input = rt::RouteConfiguration {
        name: "9080".into(),
        virtual_hosts: vec![
            rt::VirtualHost {
                name: "reviews.default.svc.cluster.local:9080".into(),
                domains: vec!["reviews.default.svc.cluster.local".into(), "Reviews".into(), "240.240.0.1:9080".into()],
                routes: vec![full_route, redirect, direct, plain],
                retry_policy: Some(istio_retry),
                typed_per_filter_config: [(
                    "envoy.filters.http.fault".to_string(),
                    fault_config(1_000, 1_000_000, 500, 0),
                )]
                .into(),
                request_headers_to_add: vec![
                    header_value("x-vhost", "1", None, 0),
                    header_value("x-share", "100%%", None, 0),
                ],
                ..Default::default()
            },
            rt::VirtualHost {
                name: "allow_any".into(),
                domains: vec!["*".into()],
                routes: vec![route_to("/", "PassthroughCluster")],
                ..Default::default()
            },
        ],
        response_headers_to_remove: vec!["x-envoy-upstream-service-time".into()],
        validate_clusters: no(),
        ..Default::default()
    };

    let istio_retry_model = RetryPolicy {
        retry_on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            grpc_unavailable: true,
            grpc_cancelled: true,
            retriable_status_codes: true,
            ..RetryOn::default()
        },
        num_retries: 2,
        retriable_status_codes: vec![503],
        ..RetryPolicy::default()
    };
    let hm = |name: &str, rule: HeaderRule, invert: bool| HeaderMatcher { name: name.into(), rule, invert };
    let full_want = Route {
        name: "full".into(),
        matcher: RouteMatch {
            path: PathMatch::Regex(Pattern::full("/v1/.*").unwrap()),
            case_sensitive: false,
            headers: vec![
                hm(":method", HeaderRule::Value(StringMatch::Regex(Pattern::full("GET|HEAD").unwrap())), false),
                hm("x-exact", HeaderRule::Value(StringMatch::Exact("a".into())), false),
                hm("x-ci", HeaderRule::Value(StringMatch::Regex(Pattern::full("(?i)Yes").unwrap())), false),
                hm("x-prefix", HeaderRule::Value(StringMatch::Prefix("p".into())), false),
                hm("x-suffix", HeaderRule::Value(StringMatch::Suffix("s".into())), false),
                hm("x-contains", HeaderRule::Value(StringMatch::Contains("c".into())), false),
                hm("x-absent", HeaderRule::Present(false), false),
                hm("x-present", HeaderRule::Present(true), false),
                hm("x-not", HeaderRule::Value(StringMatch::Exact("no".into())), true),
            ],
            query: vec![
                QueryMatcher { name: "q".into(), value: Some(StringMatch::Exact("1".into())) },
                QueryMatcher { name: "debug".into(), value: None },
            ],
            grpc: true,
            connect: false,
        },
        action: RouteAction::Forward(Forward {
            cluster: ClusterSpecifier::Weighted(vec![
                WeightedCluster {
                    name: "outbound|9080|v1|reviews".into(),
                    weight: 90,
                    request_headers: HeaderOps {
                        add: vec![HeaderValueOp { name: "x-subset".into(), value: "v1".into(), append: false }],
                        remove: vec![],
                    },
                    response_headers: HeaderOps::default(),
                    host_rewrite: Some("v1.reviews.internal".into()),
                },
                WeightedCluster {
                    name: "outbound|9080|v2|reviews".into(),
                    weight: 10,
                    request_headers: HeaderOps::default(),
                    response_headers: HeaderOps::default(),
                    host_rewrite: None,
                },
            ]),
            prefix_rewrite: None,
            regex_rewrite: Some(RegexRewrite {
                pattern: Pattern::unanchored("^/v1/(.*)$").unwrap(),
                substitution: "/\\1".into(),
            }),
            host_rewrite: Some("reviews.internal".into()),
            timeout: None,
            idle_timeout: Some(Duration::from_secs(20)),
            retry: Some(RetryPolicy {
                per_try_timeout: Some(Duration::from_secs(2)),
                retriable_headers: vec![hm("x-retry", HeaderRule::Present(true), false)],
                backoff_base: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                ..istio_retry_model.clone()
            }),
            hash_policy: vec![
                HashPolicy::Header { name: "x-user".into(), terminal: true },
                HashPolicy::Cookie {
                    name: "session".into(),
                    ttl: Some(Duration::from_secs(60)),
                    path: Some("/".into()),
                    terminal: false,
                },
                HashPolicy::SourceIp { terminal: false },
                HashPolicy::QueryParameter { name: "u".into(), terminal: false },
            ],
            mirrors: vec![Mirror { cluster: "outbound|9080||mirror".into(), fraction_per_million: 250_000 }],
            max_grpc_timeout: Some(Duration::from_secs(5)),
        }),
        request_headers: HeaderOps { add: vec![], remove: vec!["x-internal".into()] },
        response_headers: HeaderOps {
            add: vec![HeaderValueOp { name: "x-route".into(), value: "full".into(), append: false }],
            remove: vec![],
        },
        fault: Some(Fault {
            delay: Some(FaultDelay { fixed: Duration::from_secs(5), fraction_per_million: 500_000 }),
            abort: Some(FaultAbort { status: AbortStatus::Http(503), fraction_per_million: 100_000 }),
        }),
        metadata: Labels::new(),
    };
    let vhost_fault = Fault {
        delay: Some(FaultDelay { fixed: Duration::from_secs(1), fraction_per_million: 1_000_000 }),
        abort: Some(FaultAbort { status: AbortStatus::Http(500), fraction_per_million: 0 }),
    };
    let plain_route = |matcher: RouteMatch, action: RouteAction, fault: Option<Fault>| Route {
        name: String::new(),
        matcher,
        action,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        fault,
        metadata: Labels::new(),
    };
    let want = RouteConfig {
        name: "9080".into(),
        virtual_hosts: vec![
            VirtualHost {
                name: "reviews.default.svc.cluster.local:9080".into(),
                domains: vec!["reviews.default.svc.cluster.local".into(), "reviews".into(), "240.240.0.1:9080".into()],
                routes: vec![
                    full_want,
                    plain_route(
                        RouteMatch { path: PathMatch::Exact("/old".into()), ..RouteMatch::default() },
                        RouteAction::Redirect(Redirect {
                            scheme: Some("https".into()),
                            host: Some("new.example.com".into()),
                            port: Some(8443),
                            path: None,
                            prefix_rewrite: Some("/new".into()),
                            strip_query: true,
                            status: 308,
                        }),
                        None,
                    ),
                    plain_route(
                        RouteMatch { path: PathMatch::PathSeparatedPrefix("/health".into()), ..RouteMatch::default() },
                        RouteAction::Direct(DirectResponse { status: 200, body: "ok".into() }),
                        Some(vhost_fault.clone()),
                    ),
                    plain_route(
                        RouteMatch::default(),
                        RouteAction::Forward(Forward {
                            prefix_rewrite: Some("/api".into()),
                            ..forward_to("outbound|9080||reviews")
                        }),
                        Some(vhost_fault),
                    ),
                ],
                request_headers: HeaderOps {
                    add: vec![
                        HeaderValueOp { name: "x-vhost".into(), value: "1".into(), append: true },
                        // Envoy's `%%` is a literal percent sign.
                        HeaderValueOp { name: "x-share".into(), value: "100%".into(), append: true },
                    ],
                    remove: vec![],
                },
                response_headers: HeaderOps::default(),
                retry: Some(istio_retry_model),
            },
            VirtualHost {
                name: "allow_any".into(),
                domains: vec!["*".into()],
                routes: vec![plain_route(
                    RouteMatch::default(),
                    RouteAction::Forward(forward_to("PassthroughCluster")),
                    None,
                )],
                ..VirtualHost::default()
            },
        ],
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps { add: vec![], remove: vec!["x-envoy-upstream-service-time".into()] },
    };
    let got = convert::route_configuration(&input).unwrap();
    for (g, w) in got.virtual_hosts.iter().zip(&want.virtual_hosts) {
        for (gr, wr) in g.routes.iter().zip(&w.routes) {
            assert_eq!(gr, wr, "route {:?} of {}", wr.name, w.name);
        }
    }
    assert_eq!(got, want);
}

#[test]
fn route_configurations_that_would_behave_differently_are_rejected() {
    use rt::header_matcher::HeaderMatchSpecifier as H;
    let n = "9080";
    let with_route = |f: &dyn Fn(&mut rt::Route)| {
        let mut r = route_to("/", "c");
        f(&mut r);
        rt::RouteConfiguration {
            name: n.into(),
            virtual_hosts: vec![rt::VirtualHost {
                name: "v".into(),
                domains: vec!["*".into()],
                routes: vec![r],
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    let action = |f: &dyn Fn(&mut rt::RouteAction)| {
        with_route(&|r| {
            if let Some(rt::route::Action::Route(ra)) = &mut r.action {
                f(ra)
            }
        })
    };
    let rf = "virtual_hosts[0].routes[0]";
    let cases: Vec<(rt::RouteConfiguration, String)> = vec![
        (
            with_route(&|r| {
                r.typed_per_filter_config = [(
                    "envoy.filters.http.ext_authz".to_string(),
                    Any { type_url: "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute".into(), value: vec![] },
                )]
                .into()
            }),
            format!(
                r#"RouteConfiguration {n:?}: {rf}.typed_per_filter_config["envoy.filters.http.ext_authz"]: config envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute is not supported"#
            ),
        ),
        (
            with_route(&|r| r.request_headers_to_add = vec![header_value("x-client", "%DOWNSTREAM_REMOTE_ADDRESS%", None, 0)]),
            format!("RouteConfiguration {n:?}: {rf}.request_headers_to_add[0].header.value: command operators (%...%) are not supported"),
        ),
        (
            with_route(&|r| r.request_headers_to_add = vec![header_value("x-a", "1", None, 1)]),
            format!("RouteConfiguration {n:?}: {rf}.request_headers_to_add[0].append_action: ADD_IF_ABSENT is not supported"),
        ),
        (
            with_route(&|r| {
                r.r#match.as_mut().unwrap().headers =
                    vec![header("x-n", Some(H::RangeMatch(Int64Range { start: 1, end: 2 })), false)]
            }),
            format!("RouteConfiguration {n:?}: {rf}.match.headers[0].range_match: not supported"),
        ),
        (action(&|ra| ra.cors = Some(Default::default())), format!("RouteConfiguration {n:?}: {rf}.route.cors: not supported")),
        (
            action(&|ra| ra.retry_policy = Some(rt::RetryPolicy { retry_on: "5xx,envoy-ratelimited".into(), ..Default::default() })),
            format!(r#"RouteConfiguration {n:?}: {rf}.route.retry_policy.retry_on: unknown retry condition "envoy-ratelimited""#),
        ),
        (
            with_route(&|r| {
                r.r#match = Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::SafeRegex(m::RegexMatcher { regex: "(".into(), ..Default::default() })),
                    ..Default::default()
                })
            }),
            "regex parse error".into(),
        ),
        (
            rt::RouteConfiguration {
                name: n.into(),
                virtual_hosts: vec![
                    rt::VirtualHost { name: "a".into(), domains: vec!["x".into()], ..Default::default() },
                    rt::VirtualHost { name: "b".into(), domains: vec!["X".into()], ..Default::default() },
                ],
                ..Default::default()
            },
            format!(r#"RouteConfiguration {n:?}: virtual_hosts[1].domains[0]: domain "x" appears in two virtual hosts"#),
        ),
        (
            action(&|ra| {
                ra.cluster_specifier = Some(rt::route_action::ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
                    clusters: vec![rt::weighted_cluster::ClusterWeight { name: "a".into(), weight: u32v(0), ..Default::default() }],
                    ..Default::default()
                }))
            }),
            format!("RouteConfiguration {n:?}: {rf}.route.weighted_clusters.clusters: total weight must be greater than 0"),
        ),
        (
            with_route(&|r| {
                r.typed_per_filter_config = [(
                    "envoy.filters.http.fault".to_string(),
                    any(&fault::HttpFault { headers: vec![header("x-fault", None, false)], ..Default::default() }),
                )]
                .into()
            }),
            format!(r#"RouteConfiguration {n:?}: {rf}.typed_per_filter_config["envoy.filters.http.fault"].headers: not supported"#),
        ),
    ];
    for (input, want) in cases {
        let got = err_of(convert::route_configuration(&input));
        assert!(got.contains(&want), "got {got}\nwant {want}");
        assert!(got.starts_with(&format!("RouteConfiguration {n:?}: ")), "{got}");
    }
}
