//! Random but valid Istio input for the Envoy validation property test.
//!
//! A [`Plan`] is what proptest generates and shrinks: services, workloads, instances and the
//! policies over them, with cross references as `Index`es that [`Plan::render`] resolves against
//! what exists (a VirtualService destination picks one of the generated services, a match port
//! one of that service's ports, ...). Rendering applies Istio's validation rules (resolution
//! NONE has no endpoints, weights sum to 100, ...) so that nearly every plan is a file
//! `weft apply` accepts; the rest are filtered out by the test.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

pub const NAMESPACES: [&str; 2] = ["shop", "web"];
const PORT_NUMBERS: [u16; 8] = [80, 443, 3306, 5000, 7070, 8080, 9080, 9090];
/// Istio protocol names, as written in a port's `protocol`.
const PROTOCOLS: [&str; 12] =
    ["HTTP", "HTTP2", "GRPC", "GRPC-Web", "HTTPS", "TLS", "TCP", "Mongo", "Redis", "MySQL", "UDP", "HTTP_PROXY"];
const LOCALITIES: [&str; 5] =
    ["us-east", "us-east/us-east-1a", "us-east/us-east-1b/r1", "eu-west/eu-west-1a", "ap-south"];
const SUBSETS: [&str; 3] = ["v1", "v2", "v3"];
const MATCH_HEADERS: [&str; 5] = ["end-user", "x-canary", "cookie", ":authority", "x-Request-Id"];
const OP_HEADERS: [&str; 4] = ["x-weft", "x-route", "x-envoy-upstream-rq-timeout-ms", "set-cookie"];
const STRINGS: [&str; 5] = ["/", "/api", "jason", "/reviews/v1", "a b"];
const REGEXES: [&str; 8] =
    ["/api/v[0-9]+/.*", "^/(a|b)$", ".*\\.png", "[a-z]+", "(?i)jason", "\\d{3}-\\w+", "(?i:ab)+c?", "\\p{Greek}+"];
const DURATIONS: [&str; 6] = ["0s", "1ms", "250ms", "1s", "15s", "1h"];
const RETRY_ON: [&str; 8] =
    ["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "unavailable", "503"];
const EGRESS_HOSTS: [&str; 9] =
    ["./*", "*/*", "shop/*", "web/*", "~/*", "istio-system/*", "*/*.example.com", "*/api0.example.com", "./svc1"];

fn pick<T: Copy>(list: &[T], i: &Index) -> T {
    list[i.index(list.len())]
}

/// The proxies a plan is generated for.
#[derive(Clone, Debug)]
pub struct NodePlan {
    pub capture_ns: usize,
    pub capture_ip: Index,
    pub bind_ns: usize,
    pub proxy_ns: usize,
}

#[derive(Clone, Debug)]
pub struct PortPlan {
    number: Index,
    protocol: Index,
    /// 0: `protocol` field; 1: protocol from the name prefix; 2: no protocol (sniffed).
    style: u8,
    target_port: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct EndpointPlan {
    host: u8,
    hostname: bool,
    unix: bool,
    version: Option<Index>,
    locality: Option<Index>,
    weight: Option<u32>,
    port: Option<(Index, u16)>,
}

#[derive(Clone, Debug)]
pub struct ServicePlan {
    ns: usize,
    /// 0 short name, 1 Kubernetes FQDN, 2 external name, 3 wildcard.
    host_form: u8,
    second_host: bool,
    /// 0 none (allocated VIP), 1 one VIP, 2 two VIPs, 3 a CIDR.
    addresses: u8,
    ports: Vec<PortPlan>,
    /// 0 NONE, 1 STATIC, 2 DNS, 3 DNS_ROUND_ROBIN.
    resolution: u8,
    internal: bool,
    endpoints: Vec<EndpointPlan>,
    export_to: u8,
}

#[derive(Clone, Debug)]
pub struct WorkloadPlan {
    service: Index,
    ns_of_service: bool,
    ns: usize,
    host: u8,
    version: Option<Index>,
    locality: Option<Index>,
    weight: Option<u32>,
    port: Option<(Index, u16)>,
}

#[derive(Clone, Debug)]
pub struct InstancePlan {
    workload: WorkloadPlan,
    healthy: bool,
    /// Declares its own service (`service: {host, ports}`) instead of being selected.
    declares: Option<Vec<PortPlan>>,
    service_hosts: bool,
}

#[derive(Clone, Debug)]
pub enum StringMatchPlan {
    Exact(Index),
    Prefix(Index),
    Regex(Index),
    Present,
}

#[derive(Clone, Debug)]
pub struct MatchPlan {
    uri: Option<StringMatchPlan>,
    scheme: Option<StringMatchPlan>,
    method: Option<StringMatchPlan>,
    authority: Option<StringMatchPlan>,
    headers: Vec<(Index, StringMatchPlan)>,
    query_params: Vec<(u8, StringMatchPlan)>,
    without_headers: Vec<(Index, StringMatchPlan)>,
    port: Option<Index>,
    source_labels: bool,
    source_namespace: Option<usize>,
    ignore_uri_case: bool,
    gateways_mesh: bool,
}

#[derive(Clone, Debug)]
pub struct HeadersPlan {
    request: Vec<(u8, Index, u8)>,
    response: Vec<(u8, Index, u8)>,
}

#[derive(Clone, Debug)]
pub struct DestinationPlan {
    service: Index,
    /// 0 as the service writes it, 1 FQDN of a short name, 2 a host that no service defines.
    host_ref: u8,
    subset: Option<Index>,
    port: Option<Index>,
    headers: Option<HeadersPlan>,
}

#[derive(Clone, Debug)]
pub enum ActionPlan {
    Route(Vec<(DestinationPlan, u32)>),
    Redirect { uri: bool, authority: bool, port: u8, scheme: Option<bool>, code: Option<Index> },
    DirectResponse { status: Index, body: u8 },
    Delegate,
}

#[derive(Clone, Debug)]
pub struct RetryPlan {
    attempts: u32,
    per_try_timeout: Option<Index>,
    retry_on: Vec<Index>,
    remote_localities: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct FaultPlan {
    delay: Option<(Index, Option<f64>)>,
    abort: Option<(bool, u16, Option<f64>)>,
}

#[derive(Clone, Debug)]
pub struct HttpRoutePlan {
    name: bool,
    matches: Vec<MatchPlan>,
    action: ActionPlan,
    rewrite: Option<(u8, Index)>,
    timeout: Option<Index>,
    retries: Option<RetryPlan>,
    fault: Option<FaultPlan>,
    mirrors: Vec<(DestinationPlan, Option<f64>)>,
    legacy_mirror: bool,
    headers: Option<HeadersPlan>,
}

#[derive(Clone, Debug)]
pub struct L4RoutePlan {
    port: Option<Index>,
    subnet: bool,
    source_labels: bool,
    route: Vec<(DestinationPlan, u32)>,
}

#[derive(Clone, Debug)]
pub struct VirtualServicePlan {
    ns: usize,
    hosts: Vec<Index>,
    unknown_host: bool,
    http: Vec<HttpRoutePlan>,
    tcp: Vec<L4RoutePlan>,
    tls: Vec<L4RoutePlan>,
    export_to: u8,
    /// 0 none, 1 `mesh`, 2 `mesh` and a gateway, 3 a gateway only.
    gateways: u8,
}

#[derive(Clone, Debug)]
pub enum LbPlan {
    Simple(Index),
    Hash { key: u8, algorithm: u8 },
}

#[derive(Clone, Debug)]
pub struct LocalityPlan {
    /// 0 distribute, 1 failover, 2 failoverPriority, 3 only `enabled`.
    kind: u8,
    enabled: Option<bool>,
}

/// maxConnections, connectTimeout, tcpKeepalive, maxConnectionDuration, idleTimeout.
type TcpPoolPlan = (Option<u32>, Option<Index>, bool, Option<Index>, Option<Index>);
/// http1MaxPendingRequests, http2MaxRequests, maxRequestsPerConnection, maxRetries, idleTimeout,
/// h2UpgradePolicy (with useClientProtocol), maxConcurrentStreams.
type HttpPoolPlan = (Option<u32>, Option<u32>, Option<u32>, Option<u32>, Option<Index>, u8, Option<u32>);
/// A `portLevelSettings` entry.
type PortPolicyPlan = (Index, Option<LbPlan>, Option<PoolPlan>, Option<OutlierPlan>);

#[derive(Clone, Debug)]
pub struct PoolPlan {
    tcp: Option<TcpPoolPlan>,
    http: Option<HttpPoolPlan>,
}

#[derive(Clone, Debug)]
pub struct OutlierPlan {
    consecutive_5xx: Option<u32>,
    gateway: Option<u32>,
    legacy: Option<u32>,
    interval: Option<Index>,
    base_ejection: Option<Index>,
    max_ejection: Option<u32>,
    min_health: Option<u32>,
    local_origin: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct PolicyPlan {
    lb: Option<LbPlan>,
    locality: Option<LocalityPlan>,
    warmup: Option<Index>,
    pool: Option<PoolPlan>,
    outlier: Option<OutlierPlan>,
    ports: Vec<PortPolicyPlan>,
}

#[derive(Clone, Debug)]
pub struct DestinationRulePlan {
    ns: usize,
    service: Index,
    host_ref: u8,
    policy: Option<PolicyPlan>,
    subsets: Vec<(Index, Option<PolicyPlan>)>,
    export_to: u8,
    selector: bool,
}

#[derive(Clone, Debug)]
pub struct EgressPlan {
    port: Option<Index>,
    bind: Option<u8>,
    capture_none: bool,
    hosts: Vec<Index>,
}

#[derive(Clone, Debug)]
pub struct IngressPlan {
    port: Index,
    protocol: Index,
    bind: bool,
    capture: u8,
    default_endpoint: u8,
}

#[derive(Clone, Debug)]
pub struct SidecarPlan {
    ns: usize,
    selector: bool,
    egress: Vec<EgressPlan>,
    catch_all: Option<Vec<Index>>,
    ingress: Vec<IngressPlan>,
    policy: Option<(bool, bool)>,
}

/// One generated mesh.
#[derive(Clone, Debug)]
pub struct Plan {
    services: Vec<ServicePlan>,
    workloads: Vec<WorkloadPlan>,
    instances: Vec<InstancePlan>,
    virtual_services: Vec<VirtualServicePlan>,
    destination_rules: Vec<DestinationRulePlan>,
    sidecars: Vec<SidecarPlan>,
    bind_sidecar: SidecarPlan,
    pub nodes: NodePlan,
    /// Mesh options: `registry_only`, `no_default_retry`, `no_locality_lb` (golden `option`s).
    pub options: (bool, bool, bool),
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn ns() -> impl Strategy<Value = usize> {
    0..NAMESPACES.len()
}

fn port_plan() -> impl Strategy<Value = PortPlan> {
    (any::<Index>(), any::<Index>(), 0u8..3, prop::option::weighted(0.2, 8000u16..8010))
        .prop_map(|(number, protocol, style, target_port)| PortPlan { number, protocol, style, target_port })
}

fn endpoint_plan() -> impl Strategy<Value = EndpointPlan> {
    (
        0u8..6,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.05),
        prop::option::of(any::<Index>()),
        prop::option::of(any::<Index>()),
        prop::option::weighted(0.3, 1u32..5),
        prop::option::weighted(0.3, (any::<Index>(), 8100u16..8110)),
    )
        .prop_map(|(host, hostname, unix, version, locality, weight, port)| EndpointPlan {
            host,
            hostname,
            unix,
            version,
            locality,
            weight,
            port,
        })
}

fn service_plan() -> BoxedStrategy<ServicePlan> {
    (
        ns(),
        0u8..5,
        prop::bool::weighted(0.2),
        0u8..6,
        prop::collection::vec(port_plan(), 1..4),
        0u8..4,
        any::<bool>(),
        prop::collection::vec(endpoint_plan(), 0..4),
        0u8..4,
    )
        .prop_map(|(ns, host_form, second_host, addresses, ports, resolution, internal, endpoints, export_to)| {
            ServicePlan { ns, host_form, second_host, addresses, ports, resolution, internal, endpoints, export_to }
        })
        .boxed()
}

fn workload_plan() -> BoxedStrategy<WorkloadPlan> {
    (
        any::<Index>(),
        prop::bool::weighted(0.8),
        ns(),
        0u8..6,
        prop::option::of(any::<Index>()),
        prop::option::of(any::<Index>()),
        prop::option::weighted(0.3, 1u32..5),
        prop::option::weighted(0.3, (any::<Index>(), 8100u16..8110)),
    )
        .prop_map(|(service, ns_of_service, ns, host, version, locality, weight, port)| WorkloadPlan {
            service,
            ns_of_service,
            ns,
            host,
            version,
            locality,
            weight,
            port,
        })
        .boxed()
}

fn instance_plan() -> BoxedStrategy<InstancePlan> {
    (
        workload_plan(),
        prop::bool::weighted(0.8),
        prop::option::weighted(0.3, prop::collection::vec(port_plan(), 1..3)),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(workload, healthy, declares, service_hosts)| InstancePlan {
            workload,
            healthy,
            declares,
            service_hosts,
        })
        .boxed()
}

fn string_match() -> impl Strategy<Value = StringMatchPlan> {
    prop_oneof![
        any::<Index>().prop_map(StringMatchPlan::Exact),
        any::<Index>().prop_map(StringMatchPlan::Prefix),
        any::<Index>().prop_map(StringMatchPlan::Regex),
        Just(StringMatchPlan::Present),
    ]
}

fn opt_match(p: f64) -> impl Strategy<Value = Option<StringMatchPlan>> {
    prop::option::weighted(p, string_match())
}

fn match_plan() -> BoxedStrategy<MatchPlan> {
    (
        (opt_match(0.6), opt_match(0.1), opt_match(0.2), opt_match(0.2)),
        prop::collection::vec((any::<Index>(), string_match()), 0..3),
        prop::collection::vec((0u8..3, string_match()), 0..2),
        prop::collection::vec((any::<Index>(), string_match()), 0..2),
        prop::option::weighted(0.3, any::<Index>()),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.15, ns()),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(
                (uri, scheme, method, authority),
                headers,
                query_params,
                without_headers,
                port,
                source_labels,
                source_namespace,
                ignore_uri_case,
                gateways_mesh,
            )| MatchPlan {
                uri,
                scheme,
                method,
                authority,
                headers,
                query_params,
                without_headers,
                port,
                source_labels,
                source_namespace,
                ignore_uri_case,
                gateways_mesh,
            },
        )
        .boxed()
}

fn header_ops() -> impl Strategy<Value = Vec<(u8, Index, u8)>> {
    prop::collection::vec((0u8..3, any::<Index>(), 0u8..6), 0..3)
}

fn headers_plan() -> impl Strategy<Value = HeadersPlan> {
    (header_ops(), header_ops()).prop_map(|(request, response)| HeadersPlan { request, response })
}

fn destination_plan() -> BoxedStrategy<DestinationPlan> {
    (
        any::<Index>(),
        prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        prop::option::weighted(0.4, any::<Index>()),
        prop::option::weighted(0.3, any::<Index>()),
        prop::option::weighted(0.15, headers_plan()),
    )
        .prop_map(|(service, host_ref, subset, port, headers)| DestinationPlan {
            service,
            host_ref,
            subset,
            port,
            headers,
        })
        .boxed()
}

/// 1..=3 destinations with weights that sum to 100 (a lone one sometimes without weight: 0).
fn weighted_destinations() -> impl Strategy<Value = Vec<(DestinationPlan, u32)>> {
    prop_oneof![
        destination_plan().prop_map(|d| vec![(d, 0)]),
        (destination_plan(), destination_plan(), 0u32..=100).prop_map(|(a, b, w)| vec![(a, w), (b, 100 - w)]),
        (destination_plan(), destination_plan(), destination_plan(), 0u32..=50, 0u32..=50)
            .prop_map(|(a, b, c, x, y)| vec![(a, x), (b, y), (c, 100 - x - y)]),
    ]
}

fn action_plan() -> impl Strategy<Value = ActionPlan> {
    prop_oneof![
        8 => weighted_destinations().prop_map(ActionPlan::Route),
        1 => (any::<bool>(), any::<bool>(), 0u8..4, prop::option::of(any::<bool>()), prop::option::of(any::<Index>()))
            .prop_map(|(uri, authority, port, scheme, code)| ActionPlan::Redirect { uri, authority, port, scheme, code }),
        1 => (any::<Index>(), 0u8..3).prop_map(|(status, body)| ActionPlan::DirectResponse { status, body }),
        1 => Just(ActionPlan::Delegate),
    ]
}

fn retry_plan() -> impl Strategy<Value = RetryPlan> {
    (
        0u32..5,
        prop::option::of(any::<Index>()),
        prop::collection::vec(any::<Index>(), 0..3),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(attempts, per_try_timeout, retry_on, remote_localities)| RetryPlan {
            attempts,
            per_try_timeout,
            retry_on,
            remote_localities,
        })
}

fn percentage() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![Just(0.0), Just(0.1), Just(50.0), Just(100.0), 0.0f64..100.0])
}

fn fault_plan() -> impl Strategy<Value = FaultPlan> {
    (prop::option::of((any::<Index>(), percentage())), prop::option::of((any::<bool>(), 0u16..17, percentage())))
        .prop_map(|(delay, abort)| FaultPlan { delay, abort })
}

fn http_route_plan() -> BoxedStrategy<HttpRoutePlan> {
    (
        any::<bool>(),
        prop::collection::vec(match_plan(), 0..3),
        action_plan(),
        prop::option::weighted(0.2, (0u8..4, any::<Index>())),
        prop::option::weighted(0.3, any::<Index>()),
        prop::option::weighted(0.3, retry_plan()),
        prop::option::weighted(0.2, fault_plan()),
        prop::collection::vec((destination_plan(), percentage()), 0..2),
        any::<bool>(),
        prop::option::weighted(0.2, headers_plan()),
    )
        .prop_map(|(name, matches, action, rewrite, timeout, retries, fault, mirrors, legacy_mirror, headers)| {
            HttpRoutePlan { name, matches, action, rewrite, timeout, retries, fault, mirrors, legacy_mirror, headers }
        })
        .boxed()
}

fn l4_route_plan() -> BoxedStrategy<L4RoutePlan> {
    (
        prop::option::weighted(0.3, any::<Index>()),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        weighted_destinations(),
    )
        .prop_map(|(port, subnet, source_labels, route)| L4RoutePlan { port, subnet, source_labels, route })
        .boxed()
}

fn virtual_service_plan() -> BoxedStrategy<VirtualServicePlan> {
    (
        ns(),
        prop::collection::vec(any::<Index>(), 1..3),
        prop::bool::weighted(0.1),
        prop::collection::vec(http_route_plan(), 0..4),
        prop::collection::vec(l4_route_plan(), 0..2),
        prop::collection::vec(l4_route_plan(), 0..2),
        0u8..4,
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
    )
        .prop_map(|(ns, hosts, unknown_host, http, tcp, tls, export_to, gateways)| VirtualServicePlan {
            ns,
            hosts,
            unknown_host,
            http,
            tcp,
            tls,
            export_to,
            gateways,
        })
        .boxed()
}

fn lb_plan() -> impl Strategy<Value = LbPlan> {
    prop_oneof![
        any::<Index>().prop_map(LbPlan::Simple),
        (0u8..4, 0u8..4).prop_map(|(key, algorithm)| LbPlan::Hash { key, algorithm }),
    ]
}

fn pool_plan() -> BoxedStrategy<PoolPlan> {
    let small = || prop::option::of(prop_oneof![Just(0u32), Just(1u32), 2u32..1000]);
    let d = || prop::option::of(any::<Index>());
    (
        prop::option::of((small(), d(), any::<bool>(), d(), d())),
        prop::option::of((small(), small(), small(), small(), d(), 0u8..3, small())),
    )
        .prop_filter("a pool needs tcp or http", |(t, h)| t.is_some() || h.is_some())
        .prop_map(|(tcp, http)| PoolPlan { tcp, http })
        .boxed()
}

fn outlier_plan() -> BoxedStrategy<OutlierPlan> {
    let small = || prop::option::of(0u32..10);
    let d = || prop::option::of(any::<Index>());
    (small(), small(), small(), d(), d(), prop::option::of(0u32..=100), prop::option::of(0u32..=100), small())
        .prop_map(
            |(consecutive_5xx, gateway, legacy, interval, base_ejection, max_ejection, min_health, local_origin)| {
                OutlierPlan {
                    consecutive_5xx,
                    gateway,
                    legacy,
                    interval,
                    base_ejection,
                    max_ejection,
                    min_health,
                    local_origin,
                }
            },
        )
        .boxed()
}

fn policy_plan() -> BoxedStrategy<PolicyPlan> {
    (
        prop::option::weighted(0.5, lb_plan()),
        prop::option::weighted(0.3, (0u8..4, prop::option::of(any::<bool>()))),
        prop::option::weighted(0.1, any::<Index>()),
        prop::option::weighted(0.4, pool_plan()),
        prop::option::weighted(0.4, outlier_plan()),
        prop::collection::vec(
            (
                any::<Index>(),
                prop::option::weighted(0.5, lb_plan()),
                prop::option::weighted(0.5, pool_plan()),
                prop::option::weighted(0.5, outlier_plan()),
            ),
            0..2,
        ),
    )
        .prop_map(|(lb, locality, warmup, pool, outlier, ports)| PolicyPlan {
            lb,
            locality: locality.map(|(kind, enabled)| LocalityPlan { kind, enabled }),
            warmup,
            pool,
            outlier,
            ports,
        })
        .boxed()
}

fn destination_rule_plan() -> BoxedStrategy<DestinationRulePlan> {
    (
        ns(),
        any::<Index>(),
        prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        prop::option::weighted(0.7, policy_plan()),
        prop::collection::vec((any::<Index>(), prop::option::weighted(0.3, policy_plan())), 0..4),
        0u8..4,
        prop::bool::weighted(0.15),
    )
        .prop_map(|(ns, service, host_ref, policy, subsets, export_to, selector)| DestinationRulePlan {
            ns,
            service,
            host_ref,
            policy,
            subsets,
            export_to,
            selector,
        })
        .boxed()
}

fn egress_plan() -> impl Strategy<Value = EgressPlan> {
    (
        prop::option::weighted(0.6, any::<Index>()),
        prop::option::weighted(0.5, 1u8..20),
        any::<bool>(),
        prop::collection::vec(any::<Index>(), 1..3),
    )
        .prop_map(|(port, bind, capture_none, hosts)| EgressPlan { port, bind, capture_none, hosts })
}

fn ingress_plan() -> impl Strategy<Value = IngressPlan> {
    (any::<Index>(), any::<Index>(), any::<bool>(), 0u8..3, 0u8..4).prop_map(
        |(port, protocol, bind, capture, default_endpoint)| IngressPlan {
            port,
            protocol,
            bind,
            capture,
            default_endpoint,
        },
    )
}

fn sidecar_plan() -> BoxedStrategy<SidecarPlan> {
    (
        ns(),
        any::<bool>(),
        prop::collection::vec(egress_plan(), 0..3),
        prop::option::of(prop::collection::vec(any::<Index>(), 1..3)),
        prop::collection::vec(ingress_plan(), 0..2),
        prop::option::weighted(0.4, (any::<bool>(), prop::bool::weighted(0.3))),
    )
        .prop_map(|(ns, selector, egress, catch_all, ingress, policy)| SidecarPlan {
            ns,
            selector,
            egress,
            catch_all,
            ingress,
            policy,
        })
        .boxed()
}

/// The bind-mode proxy's Sidecar: port-specific egress listeners bound to loopback addresses,
/// no capture.
fn bind_sidecar_plan() -> BoxedStrategy<SidecarPlan> {
    (
        prop::collection::vec(
            (any::<Index>(), 1u8..20, prop::collection::vec(any::<Index>(), 1..3)).prop_map(|(port, bind, hosts)| {
                EgressPlan { port: Some(port), bind: Some(bind), capture_none: true, hosts }
            }),
            1..4,
        ),
        prop::option::weighted(0.3, prop::collection::vec(any::<Index>(), 1..3)),
        prop::collection::vec(ingress_plan(), 0..2),
        prop::option::weighted(0.3, (any::<bool>(), prop::bool::weighted(0.3))),
    )
        .prop_map(|(egress, catch_all, ingress, policy)| SidecarPlan {
            ns: 0,
            selector: true,
            egress,
            catch_all,
            ingress,
            policy,
        })
        .boxed()
}

pub fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(service_plan(), 1..6),
        prop::collection::vec(workload_plan(), 0..4),
        prop::collection::vec(instance_plan(), 0..4),
        prop::collection::vec(virtual_service_plan(), 0..4),
        prop::collection::vec(destination_rule_plan(), 0..4),
        prop::collection::vec(sidecar_plan(), 0..3),
        bind_sidecar_plan(),
        (ns(), any::<Index>(), ns(), ns()),
        (prop::bool::weighted(0.15), prop::bool::weighted(0.15), prop::bool::weighted(0.15)),
    )
        .prop_map(
            |(
                services,
                workloads,
                instances,
                virtual_services,
                destination_rules,
                sidecars,
                bind_sidecar,
                (capture_ns, capture_ip, bind_ns, proxy_ns),
                options,
            )| Plan {
                services,
                workloads,
                instances,
                virtual_services,
                destination_rules,
                sidecars,
                bind_sidecar,
                nodes: NodePlan { capture_ns, capture_ip, bind_ns, proxy_ns },
                options,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// A service as rendered: what other resources refer to.
struct Rendered {
    ns: &'static str,
    /// Hosts as written in the ServiceEntry.
    hosts: Vec<String>,
    /// Port numbers, names and `protocol` fields (empty: from the name).
    ports: Vec<(u16, String, String)>,
    index: usize,
}

/// The rendered mesh: Istio YAML (several documents) and registry instances as JSON.
pub struct Mesh {
    pub yaml: String,
    pub instances: Vec<Value>,
    /// The addresses of workloads (for the captured proxy's own address).
    pub workload_ips: Vec<String>,
}

fn doc(kind: &str, name: &str, ns: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

fn render_ports(ports: &[PortPlan]) -> Vec<(u16, Value, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (k, p) in ports.iter().enumerate() {
        let number = pick(&PORT_NUMBERS, &p.number);
        if !seen.insert(number) {
            continue;
        }
        let protocol = pick(&PROTOCOLS, &p.protocol);
        let prefix = protocol.to_ascii_lowercase().replace('_', "-");
        let (name, field) = match p.style {
            0 => (format!("port-{k}"), Some(protocol)),
            1 => (format!("{prefix}-{k}"), None),
            _ => (format!("port-{k}"), None),
        };
        let mut v = json!({"number": number, "name": name});
        if let Some(f) = field {
            v["protocol"] = json!(f);
        }
        if let Some(t) = p.target_port {
            v["targetPort"] = json!(t);
        }
        out.push((number, v, name));
    }
    out
}

/// Whether a port (as rendered) carries a protocol that several hosts may share with
/// resolution other than NONE (HTTP family, HTTPS, TLS).
fn shareable(port: &Value) -> bool {
    let name = port["name"].as_str().unwrap_or_default();
    let proto = match port.get("protocol").and_then(Value::as_str) {
        Some(p) => weft_istio::Protocol::parse(p),
        None => weft_istio::Protocol::infer(None, None, name),
    };
    proto.is_http() || matches!(proto, weft_istio::Protocol::Https | weft_istio::Protocol::Tls)
}

fn duration(i: &Index) -> &'static str {
    pick(&DURATIONS, i)
}

/// A non-zero duration (fields that take whole milliseconds and reject 0).
fn positive_duration(i: &Index) -> &'static str {
    pick(&DURATIONS[1..], i)
}

fn string_match_value(m: &StringMatchPlan) -> Value {
    match m {
        StringMatchPlan::Exact(i) => json!({"exact": pick(&STRINGS, i)}),
        StringMatchPlan::Prefix(i) => json!({"prefix": pick(&STRINGS, i)}),
        StringMatchPlan::Regex(i) => json!({"regex": pick(&REGEXES, i)}),
        StringMatchPlan::Present => json!({}),
    }
}

fn header_ops_value(ops: &[(u8, Index, u8)], request: bool) -> Value {
    let mut set = Map::new();
    let mut add = Map::new();
    let mut remove = Vec::new();
    for (op, name, value) in ops {
        let name = pick(&OP_HEADERS, name).to_string();
        let value = ["weft", "", "a=b; Path=/", "100%", "%DOWNSTREAM_REMOTE_ADDRESS%", "50%%"][*value as usize % 6];
        match op {
            0 => drop(set.insert(name, json!(value))),
            1 => drop(add.insert(name, json!(value))),
            _ => remove.push(json!(name)),
        }
    }
    if request && ops.iter().any(|(op, _, _)| *op == 0) && set.len() == 1 {
        // Requests may also set the authority.
        set.insert(":authority".into(), json!("rewritten.example.com"));
    }
    let mut o = Map::new();
    if !set.is_empty() {
        o.insert("set".into(), Value::Object(set));
    }
    if !add.is_empty() {
        o.insert("add".into(), Value::Object(add));
    }
    if !remove.is_empty() {
        o.insert("remove".into(), Value::Array(remove));
    }
    Value::Object(o)
}

fn headers_value(h: &HeadersPlan) -> Value {
    json!({"request": header_ops_value(&h.request, true), "response": header_ops_value(&h.response, false)})
}

fn export_to(choice: u8, allow_none: bool) -> Option<Value> {
    match choice {
        1 => Some(json!(["."])),
        2 => Some(json!(["*"])),
        3 if allow_none => Some(json!(["~"])),
        3 => Some(json!(["shop", "web"])),
        _ => None,
    }
}

impl Plan {
    pub fn render(&self) -> Mesh {
        let mut docs = Vec::new();
        let mut services = Vec::new();
        let mut workload_ips = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let (doc, rendered, ips) = self.service_entry(i, s);
            docs.push(doc);
            services.push(rendered);
            workload_ips.extend(ips);
        }
        for (i, w) in self.workloads.iter().enumerate() {
            let (d, ip) = workload_entry(i, w, &services);
            docs.push(d);
            workload_ips.push(ip);
        }
        let mut instances = Vec::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let (v, ip) = instance(i, inst, &services);
            instances.push(v);
            workload_ips.push(ip);
        }
        for (i, vs) in self.virtual_services.iter().enumerate() {
            if let Some(d) = virtual_service(i, vs, &services) {
                docs.push(d);
            }
        }
        for (i, dr) in self.destination_rules.iter().enumerate() {
            docs.push(destination_rule(i, dr, &services));
        }
        for (i, sc) in self.sidecars.iter().enumerate() {
            if let Some(d) = sidecar(&format!("sidecar-{i}"), NAMESPACES[sc.ns], sc, "client", &services) {
                docs.push(d);
            }
        }
        let bind_ns = NAMESPACES[self.nodes.bind_ns];
        if let Some(d) = sidecar("bind-mode", bind_ns, &self.bind_sidecar, "bound", &services) {
            docs.push(d);
        }
        let yaml =
            docs.iter().map(|d| serde_yaml::to_string(d).expect("YAML from JSON")).collect::<Vec<_>>().join("---\n");
        Mesh { yaml, instances, workload_ips }
    }

    fn service_entry(&self, i: usize, s: &ServicePlan) -> (Value, Rendered, Vec<String>) {
        let ns = NAMESPACES[s.ns];
        let ports = render_ports(&s.ports);
        let mut resolution = ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"][s.resolution as usize % 4];
        let mut host = match s.host_form {
            0 => format!("svc{i}"),
            1 => format!("svc{i}.{ns}.svc.cluster.local"),
            2 => format!("api{i}.example.com"),
            3 => format!("*.w{i}.example.com"),
            // Several ServiceEntries may define one host.
            _ => "shared.example.com".to_string(),
        };
        let mut hosts = vec![host.clone()];
        // Several hosts share a port only when it is HTTP or TLS (unless resolution is NONE).
        if s.second_host && (resolution == "NONE" || ports.iter().all(|(_, p, _)| shareable(p))) {
            hosts.push(format!("alt{i}.example.com"));
        }
        let mut spec = json!({
            "hosts": hosts,
            "ports": ports.iter().map(|(_, p, _)| p.clone()).collect::<Vec<_>>(),
            "location": if s.internal { "MESH_INTERNAL" } else { "MESH_EXTERNAL" },
        });
        let mut endpoints = Vec::new();
        let mut ips = Vec::new();
        let names: Vec<&String> = ports.iter().map(|(_, _, n)| n).collect();
        for (k, e) in s.endpoints.iter().enumerate() {
            let mut ep = Map::new();
            let address = if e.unix && ports.len() == 1 && resolution == "STATIC" {
                format!("unix:///var/run/svc{i}-{k}.sock")
            } else if e.hostname && resolution != "STATIC" {
                format!("ep{k}.svc{i}.example.com")
            } else if e.host == 5 {
                let ip = format!("2001:db8:{}::{}", s.ns + 1, i * 8 + k + 1);
                ips.push(ip.clone());
                ip
            } else {
                let ip = format!("10.{}.{i}.{}", s.ns + 1, e.host + 1);
                ips.push(ip.clone());
                ip
            };
            let unix = address.starts_with("unix://");
            ep.insert("address".into(), json!(address));
            if let (Some((p, n)), false) = (&e.port, unix) {
                ep.insert("ports".into(), json!({ names[p.index(names.len())].clone(): n }));
            }
            let mut labels = Map::new();
            labels.insert("app".into(), json!(format!("svc{i}")));
            if let Some(v) = &e.version {
                labels.insert("version".into(), json!(pick(&SUBSETS, v)));
            }
            ep.insert("labels".into(), Value::Object(labels));
            if let Some(l) = &e.locality {
                ep.insert("locality".into(), json!(pick(&LOCALITIES, l)));
            }
            if let Some(w) = e.weight {
                ep.insert("weight".into(), json!(w));
            }
            endpoints.push(Value::Object(ep));
        }
        if resolution == "DNS_ROUND_ROBIN" {
            endpoints.truncate(1);
        }
        // NONE takes no endpoints; STATIC needs endpoints or a selector.
        match resolution {
            "NONE" => {}
            "STATIC" if endpoints.is_empty() => {
                spec["workloadSelector"] = json!({"labels": {"app": format!("svc{i}")}});
            }
            _ if endpoints.is_empty() && host.contains('*') => resolution = "NONE",
            "DNS" | "DNS_ROUND_ROBIN" if endpoints.is_empty() && !host.contains('.') => {
                // DNS without endpoints resolves the host itself: it must be a full name.
                host = format!("svc{i}.{ns}.svc.cluster.local");
                spec["hosts"][0] = json!(host);
            }
            _ => spec["endpoints"] = Value::Array(endpoints),
        }
        if resolution != "NONE" && hosts.len() > 1 && !ports.iter().all(|(_, p, _)| shareable(p)) {
            spec["hosts"] = json!([host]);
        }
        spec["resolution"] = json!(resolution);
        match s.addresses {
            1 => spec["addresses"] = json!([format!("10.96.{}.{}", s.ns, i + 1)]),
            2 => spec["addresses"] = json!([format!("10.96.{}.{}", s.ns, i + 1), format!("10.97.{}.{}", s.ns, i + 1)]),
            3 if resolution == "NONE" || resolution == "STATIC" => {
                spec["addresses"] = json!([format!("10.{}.0.0/16", 100 + i)])
            }
            // One VIP for several services.
            4 => spec["addresses"] = json!(["10.96.9.9"]),
            5 => spec["addresses"] = json!([format!("2001:db8:96::{}", i + 1)]),
            _ => {}
        }
        if let Some(e) = export_to(s.export_to, true) {
            spec["exportTo"] = e;
        }
        let final_hosts: Vec<String> =
            spec["hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect();
        let rendered = Rendered {
            ns,
            hosts: final_hosts,
            ports: ports
                .iter()
                .map(|(n, p, name)| (*n, name.clone(), p["protocol"].as_str().unwrap_or_default().to_string()))
                .collect(),
            index: i,
        };
        (doc("ServiceEntry", &format!("se-{i}"), ns, spec), rendered, ips)
    }
}

fn workload_labels(w: &WorkloadPlan, service: &Rendered) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert("app".into(), json!(format!("svc{}", service.index)));
    if let Some(v) = &w.version {
        labels.insert("version".into(), json!(pick(&SUBSETS, v)));
    }
    labels
}

fn workload_entry(i: usize, w: &WorkloadPlan, services: &[Rendered]) -> (Value, String) {
    let s = &services[w.service.index(services.len())];
    let ns = if w.ns_of_service { s.ns } else { NAMESPACES[w.ns] };
    let ip = format!("10.50.{i}.{}", w.host + 1);
    let mut spec = json!({"labels": workload_labels(w, s)});
    if w.host == 5 {
        // Reached through its network's gateway, no address of its own.
        spec["network"] = json!("net-2");
    } else {
        spec["address"] = json!(ip);
    }
    if let Some(l) = &w.locality {
        spec["locality"] = json!(pick(&LOCALITIES, l));
    }
    if let Some(wt) = w.weight {
        spec["weight"] = json!(wt);
    }
    if let Some((p, n)) = &w.port {
        spec["ports"] = json!({ s.ports[p.index(s.ports.len())].1.clone(): n });
    }
    (doc("WorkloadEntry", &format!("we-{i}"), ns, spec), ip)
}

fn instance(i: usize, inst: &InstancePlan, services: &[Rendered]) -> (Value, String) {
    let w = &inst.workload;
    let s = &services[w.service.index(services.len())];
    let ns = if w.ns_of_service { s.ns } else { NAMESPACES[w.ns] };
    let ip = format!("10.60.{i}.{}", w.host + 1);
    let mut v = json!({
        "name": format!("inst-{i}"),
        "namespace": ns,
        "address": ip,
        "labels": workload_labels(w, s),
        "healthy": inst.healthy,
    });
    if let Some(l) = &w.locality {
        v["locality"] = json!(pick(&LOCALITIES, l));
    }
    if let Some(wt) = w.weight {
        v["weight"] = json!(wt);
    }
    if let Some((p, n)) = &w.port {
        v["ports"] = json!({ s.ports[p.index(s.ports.len())].1.clone(): n });
    }
    if let Some(ports) = &inst.declares {
        let ports: Vec<Value> = render_ports(ports)
            .into_iter()
            .map(|(number, p, name)| {
                let mut d = json!({"name": name, "number": number});
                if let Some(proto) = p.get("protocol") {
                    d["protocol"] = proto.clone();
                }
                d
            })
            .collect();
        // Two instances of the same index range declare the same host now and then.
        v["service"] = json!({"host": format!("inst{}", i % 2), "ports": ports});
    } else if inst.service_hosts {
        v["serviceHosts"] = json!([s.hosts[0]]);
    }
    (v, ip)
}

/// A destination's host as written: the service's own spelling, the FQDN of a short name, or
/// a name no service defines. Wildcard hosts are not valid destinations: their concrete names are.
fn destination_host<'a>(d: &DestinationPlan, services: &'a [Rendered]) -> (String, &'a Rendered) {
    let s = &services[d.service.index(services.len())];
    let written = s.hosts[0].replace('*', "any");
    let host = match d.host_ref {
        0 => written,
        1 if !written.contains('.') => format!("{written}.{}.svc.cluster.local", s.ns),
        1 => written,
        _ => "nowhere.example.org".to_string(),
    };
    (host, s)
}

fn destination_value(d: &DestinationPlan, services: &[Rendered]) -> Value {
    let (host, s) = destination_host(d, services);
    let mut v = json!({"host": host});
    if let Some(sub) = &d.subset {
        v["subset"] = json!(pick(&SUBSETS, sub));
    }
    if let Some(p) = &d.port {
        v["port"] = json!({"number": s.ports[p.index(s.ports.len())].0});
    }
    v
}

fn weighted(route: &[(DestinationPlan, u32)], services: &[Rendered], with_headers: bool) -> Vec<Value> {
    route
        .iter()
        .map(|(d, w)| {
            let mut v = json!({"destination": destination_value(d, services)});
            if route.len() > 1 || *w > 0 {
                v["weight"] = json!(if route.len() == 1 { 100 } else { *w });
            }
            if let (true, Some(h)) = (with_headers, &d.headers) {
                v["headers"] = headers_value(h);
            }
            v
        })
        .collect()
}

fn match_value(m: &MatchPlan, ports: &[(u16, String, String)]) -> Value {
    let mut o = Map::new();
    for (key, sm) in [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
        if let Some(sm) = sm {
            o.insert(key.into(), string_match_value(sm));
        }
    }
    let map = |entries: Vec<(String, &StringMatchPlan)>| -> Value {
        Value::Object(entries.into_iter().map(|(k, sm)| (k, string_match_value(sm))).collect())
    };
    if !m.headers.is_empty() {
        o.insert("headers".into(), map(m.headers.iter().map(|(n, sm)| (pick(&MATCH_HEADERS, n).into(), sm)).collect()));
    }
    if !m.query_params.is_empty() {
        let q = m.query_params.iter().map(|(n, sm)| (["id", "debug", "v"][*n as usize % 3].to_string(), sm)).collect();
        o.insert("queryParams".into(), map(q));
    }
    if !m.without_headers.is_empty() {
        let w = m.without_headers.iter().map(|(n, sm)| (pick(&MATCH_HEADERS, n).into(), sm)).collect();
        o.insert("withoutHeaders".into(), map(w));
    }
    if let Some(p) = &m.port {
        o.insert("port".into(), json!(ports[p.index(ports.len())].0));
    }
    if m.source_labels {
        o.insert("sourceLabels".into(), json!({"app": "client"}));
    }
    if let Some(n) = m.source_namespace {
        o.insert("sourceNamespace".into(), json!(NAMESPACES[n]));
    }
    if m.ignore_uri_case {
        o.insert("ignoreUriCase".into(), json!(true));
    }
    if m.gateways_mesh {
        o.insert("gateways".into(), json!(["mesh"]));
    }
    Value::Object(o)
}

fn http_route_value(k: usize, r: &HttpRoutePlan, ports: &[(u16, String, String)], services: &[Rendered]) -> Value {
    let mut o = Map::new();
    if r.name {
        o.insert("name".into(), json!(format!("route-{k}")));
    }
    if !r.matches.is_empty() {
        o.insert("match".into(), Value::Array(r.matches.iter().map(|m| match_value(m, ports)).collect()));
    }
    let redirect = matches!(r.action, ActionPlan::Redirect { .. });
    match &r.action {
        ActionPlan::Route(route) => drop(o.insert("route".into(), Value::Array(weighted(route, services, true)))),
        ActionPlan::Redirect { uri, authority, port, scheme, code } => {
            let mut rd = Map::new();
            if *uri || (!authority && *port == 0 && scheme.is_none()) {
                rd.insert("uri".into(), json!("/moved"));
            }
            if *authority {
                rd.insert("authority".into(), json!("elsewhere.example.com"));
            }
            match port {
                1 => drop(rd.insert("port".into(), json!(8443))),
                2 => drop(rd.insert("derivePort".into(), json!("FROM_PROTOCOL_DEFAULT"))),
                3 => drop(rd.insert("derivePort".into(), json!("FROM_REQUEST_PORT"))),
                _ => {}
            }
            if let Some(https) = scheme {
                rd.insert("scheme".into(), json!(if *https { "https" } else { "http" }));
            }
            if let Some(c) = code {
                rd.insert("redirectCode".into(), json!(pick(&[301, 302, 303, 307, 308], c)));
            }
            o.insert("redirect".into(), Value::Object(rd));
        }
        ActionPlan::Delegate => drop(o.insert("delegate".into(), json!({"name": "vs-0", "namespace": "shop"}))),
        ActionPlan::DirectResponse { status, body } => {
            let mut d = json!({"status": pick(&[200, 204, 404, 503], status)});
            match body {
                1 => d["body"] = json!({"string": "not here\n"}),
                2 => d["body"] = json!({"bytes": "aGVsbG8="}),
                _ => {}
            }
            o.insert("directResponse".into(), d);
        }
    }
    if let (Some((kind, pattern)), false) = (&r.rewrite, redirect) {
        let rw = match kind {
            0 => json!({"uri": "/v2"}),
            1 => json!({"authority": "backend.example.com"}),
            2 => json!({"uri": "/", "authority": "backend.example.com"}),
            _ => json!({"uriRegexRewrite": {"match": pick(&REGEXES, pattern), "rewrite": "/\\1"}}),
        };
        o.insert("rewrite".into(), rw);
    }
    if let Some(t) = &r.timeout {
        o.insert("timeout".into(), json!(duration(t)));
    }
    if let Some(rt) = &r.retries {
        let mut v = json!({"attempts": rt.attempts});
        if rt.attempts > 0 {
            if let Some(t) = &rt.per_try_timeout {
                v["perTryTimeout"] = json!(positive_duration(t));
            }
            if !rt.retry_on.is_empty() {
                let on: BTreeSet<&str> = rt.retry_on.iter().map(|i| pick(&RETRY_ON, i)).collect();
                v["retryOn"] = json!(on.into_iter().collect::<Vec<_>>().join(","));
            }
            if let Some(b) = rt.remote_localities {
                v["retryRemoteLocalities"] = json!(b);
            }
        }
        o.insert("retries".into(), v);
    }
    if let (Some(f), false) = (&r.fault, redirect) {
        let mut v = Map::new();
        if let Some((d, pct)) = &f.delay {
            let mut dv = json!({"fixedDelay": positive_duration(d)});
            if let Some(p) = pct {
                dv["percentage"] = json!({"value": p});
            }
            v.insert("delay".into(), dv);
        }
        if let Some((grpc, code, pct)) = &f.abort {
            let mut av = if *grpc {
                json!({"grpcStatus": (["UNAVAILABLE", "NOT_FOUND", "14", "0"][*code as usize % 4])})
            } else {
                json!({"httpStatus": ([503, 400, 200, 599][*code as usize % 4])})
            };
            if let Some(p) = pct {
                av["percentage"] = json!({"value": p});
            }
            v.insert("abort".into(), av);
        }
        if v.is_empty() {
            v.insert("abort".into(), json!({"httpStatus": 500}));
        }
        o.insert("fault".into(), Value::Object(v));
    }
    if r.legacy_mirror && r.mirrors.len() == 1 {
        let (d, pct) = &r.mirrors[0];
        o.insert("mirror".into(), destination_value(d, services));
        if let Some(p) = pct {
            o.insert("mirrorPercentage".into(), json!({"value": p}));
        }
    } else if !r.mirrors.is_empty() {
        let m: Vec<Value> = r
            .mirrors
            .iter()
            .map(|(d, pct)| {
                let mut v = json!({"destination": destination_value(d, services)});
                if let Some(p) = pct {
                    v["percentage"] = json!({"value": p});
                }
                v
            })
            .collect();
        o.insert("mirrors".into(), Value::Array(m));
    }
    if let Some(h) = &r.headers {
        o.insert("headers".into(), headers_value(h));
    }
    Value::Object(o)
}

fn virtual_service(i: usize, vs: &VirtualServicePlan, services: &[Rendered]) -> Option<Value> {
    let ns = NAMESPACES[vs.ns];
    let mut hosts: Vec<String> = Vec::new();
    let mut ports: Vec<(u16, String, String)> = Vec::new();
    for h in &vs.hosts {
        let s = &services[h.index(services.len())];
        let host = s.hosts[0].clone();
        // No two hosts of one VirtualService may overlap.
        let overlaps = hosts.iter().any(|x| {
            let covers = |a: &str, b: &str| a == b || a.strip_prefix('*').is_some_and(|sfx| b.ends_with(sfx));
            covers(x, &host) || covers(&host, x)
        });
        if !overlaps {
            hosts.push(host);
            ports.extend(s.ports.iter().cloned());
        }
    }
    if vs.unknown_host {
        hosts.push(format!("unknown{i}.example.org"));
    }
    if ports.is_empty() {
        ports.push((80, "http".into(), String::new()));
    }
    let mut spec = json!({"hosts": hosts});
    let http: Vec<Value> = vs.http.iter().enumerate().map(|(k, r)| http_route_value(k, r, &ports, services)).collect();
    let l4 = |r: &L4RoutePlan, sni: Option<&str>| {
        let mut m = Map::new();
        if let Some(sni) = sni {
            m.insert("sniHosts".into(), json!([sni]));
        }
        if let Some(p) = &r.port {
            m.insert("port".into(), json!(ports[p.index(ports.len())].0));
        }
        if r.subnet {
            m.insert("destinationSubnets".into(), json!(["10.96.0.0/16"]));
        }
        if r.source_labels {
            m.insert("sourceLabels".into(), json!({"app": "client"}));
        }
        let mut v = json!({"route": weighted(&r.route, services, false)});
        if !m.is_empty() {
            v["match"] = json!([Value::Object(m)]);
        }
        v
    };
    let tcp: Vec<Value> = vs.tcp.iter().map(|r| l4(r, None)).collect();
    let tls: Vec<Value> = vs
        .tls
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let host = &hosts[k % hosts.len()];
            let sni = host.replace('*', "tls");
            l4(r, Some(&sni))
        })
        .collect();
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        return None;
    }
    if !http.is_empty() {
        spec["http"] = Value::Array(http);
    }
    if !tcp.is_empty() {
        spec["tcp"] = Value::Array(tcp);
    }
    if !tls.is_empty() {
        spec["tls"] = Value::Array(tls);
    }
    if let Some(e) = export_to(vs.export_to, false) {
        spec["exportTo"] = e;
    }
    match vs.gateways {
        1 => spec["gateways"] = json!(["mesh"]),
        2 => spec["gateways"] = json!(["mesh", "shop/edge"]),
        3 => spec["gateways"] = json!(["shop/edge"]),
        _ => {}
    }
    Some(doc("VirtualService", &format!("vs-{i}"), ns, spec))
}

fn lb_value(lb: &LbPlan) -> Value {
    match lb {
        LbPlan::Simple(i) => {
            json!({"simple": pick(&["ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "UNSPECIFIED"], i)})
        }
        LbPlan::Hash { key, algorithm } => {
            let mut h = match key {
                0 => json!({"httpHeaderName": "x-user"}),
                1 => json!({"httpCookie": {"name": "session", "ttl": "60s", "path": "/"}}),
                2 => json!({"useSourceIp": true}),
                _ => json!({"httpQueryParameterName": "id"}),
            };
            match algorithm {
                1 => h["ringHash"] = json!({"minimumRingSize": 1024}),
                2 => h["maglev"] = json!({"tableSize": 65537}),
                3 => h["minimumRingSize"] = json!(64),
                _ => {}
            }
            json!({"consistentHash": h})
        }
    }
}

fn pool_value(p: &PoolPlan) -> Value {
    let mut o = Map::new();
    if let Some((max, connect, keepalive, duration_, idle)) = &p.tcp {
        let mut t = Map::new();
        if let Some(m) = max {
            t.insert("maxConnections".into(), json!(m));
        }
        if let Some(c) = connect {
            t.insert("connectTimeout".into(), json!(positive_duration(c)));
        }
        if *keepalive {
            t.insert("tcpKeepalive".into(), json!({"probes": 3, "time": "7200s", "interval": "75s"}));
        }
        if let Some(d) = duration_ {
            t.insert("maxConnectionDuration".into(), json!(positive_duration(d)));
        }
        if let Some(d) = idle {
            t.insert("idleTimeout".into(), json!(duration(d)));
        }
        o.insert("tcp".into(), Value::Object(t));
    }
    if let Some((pending, h2, per_conn, retries, idle, upgrade, streams)) = &p.http {
        let mut h = Map::new();
        for (k, v) in [
            ("http1MaxPendingRequests", pending),
            ("http2MaxRequests", h2),
            ("maxRequestsPerConnection", per_conn),
            ("maxRetries", retries),
            ("maxConcurrentStreams", streams),
        ] {
            if let Some(v) = v {
                h.insert(k.into(), json!(v));
            }
        }
        if let Some(d) = idle {
            h.insert("idleTimeout".into(), json!(positive_duration(d)));
        }
        match upgrade {
            1 => drop(h.insert("h2UpgradePolicy".into(), json!("UPGRADE"))),
            2 => {
                h.insert("h2UpgradePolicy".into(), json!("DO_NOT_UPGRADE"));
                h.insert("useClientProtocol".into(), json!(true));
            }
            _ => {}
        }
        o.insert("http".into(), Value::Object(h));
    }
    Value::Object(o)
}

fn outlier_value(od: &OutlierPlan) -> Value {
    let mut o = Map::new();
    for (k, v) in [
        ("consecutive5xxErrors", od.consecutive_5xx),
        ("consecutiveGatewayErrors", od.gateway),
        ("consecutiveErrors", od.legacy),
        ("maxEjectionPercent", od.max_ejection),
        ("minHealthPercent", od.min_health),
    ] {
        if let Some(v) = v {
            o.insert(k.into(), json!(v));
        }
    }
    if let Some(d) = &od.interval {
        o.insert("interval".into(), json!(positive_duration(d)));
    }
    if let Some(d) = &od.base_ejection {
        o.insert("baseEjectionTime".into(), json!(positive_duration(d)));
    }
    if let Some(n) = od.local_origin {
        o.insert("splitExternalLocalOriginErrors".into(), json!(true));
        o.insert("consecutiveLocalOriginFailures".into(), json!(n));
    }
    Value::Object(o)
}

fn locality_value(l: &LocalityPlan) -> Value {
    let mut v = match l.kind {
        0 => json!({"distribute": [{"from": "us-east/*", "to": {"us-east/us-east-1a": 70, "eu-west/*": 30}}]}),
        1 => json!({"failover": [{"from": "us-east", "to": "eu-west"}]}),
        2 => json!({"failoverPriority": ["topology.kubernetes.io/region", "version"]}),
        _ => json!({}),
    };
    if let Some(e) = l.enabled {
        v["enabled"] = json!(e);
    }
    v
}

fn policy_value(p: &PolicyPlan, ports: &[(u16, String, String)]) -> Value {
    let mut o = Map::new();
    let mut lb = p.lb.as_ref().map(lb_value);
    if let Some(l) = &p.locality {
        lb.get_or_insert_with(|| json!({}))["localityLbSetting"] = locality_value(l);
    }
    if let Some(w) = &p.warmup {
        lb.get_or_insert_with(|| json!({}))["warmupDurationSecs"] = json!(positive_duration(w));
    }
    if let Some(lb) = lb {
        o.insert("loadBalancer".into(), lb);
    }
    if let Some(pool) = &p.pool {
        o.insert("connectionPool".into(), pool_value(pool));
    }
    if let Some(od) = &p.outlier {
        o.insert("outlierDetection".into(), outlier_value(od));
    }
    let mut seen = BTreeSet::new();
    let mut levels = Vec::new();
    for (port, lb, pool, od) in &p.ports {
        let number = ports[port.index(ports.len())].0;
        if !seen.insert(number) {
            continue;
        }
        let mut l = json!({"port": {"number": number}});
        if let Some(lb) = lb {
            l["loadBalancer"] = lb_value(lb);
        }
        if let Some(pool) = pool {
            l["connectionPool"] = pool_value(pool);
        }
        if let Some(od) = od {
            l["outlierDetection"] = outlier_value(od);
        }
        if lb.is_none() && pool.is_none() && od.is_none() {
            l["loadBalancer"] = json!({"simple": "ROUND_ROBIN"});
        }
        levels.push(l);
    }
    if !levels.is_empty() {
        o.insert("portLevelSettings".into(), Value::Array(levels));
    }
    if o.is_empty() {
        o.insert("loadBalancer".into(), json!({"simple": "RANDOM"}));
    }
    Value::Object(o)
}

fn destination_rule(i: usize, dr: &DestinationRulePlan, services: &[Rendered]) -> Value {
    let ns = NAMESPACES[dr.ns];
    let d = DestinationPlan { service: dr.service, host_ref: dr.host_ref, subset: None, port: None, headers: None };
    let (mut host, s) = destination_host(&d, services);
    if dr.host_ref == 0 {
        // A rule may also name a wildcard host.
        host = s.hosts[0].clone();
    }
    let mut spec = json!({"host": host});
    if let Some(p) = &dr.policy {
        spec["trafficPolicy"] = policy_value(p, &s.ports);
    }
    let mut names = BTreeSet::new();
    let subsets: Vec<Value> = dr
        .subsets
        .iter()
        .filter_map(|(name, policy)| {
            let name = pick(&SUBSETS, name);
            if !names.insert(name) {
                return None;
            }
            let mut v = json!({"name": name, "labels": {"version": name}});
            if let Some(p) = policy {
                v["trafficPolicy"] = policy_value(p, &s.ports);
            }
            Some(v)
        })
        .collect();
    if !subsets.is_empty() {
        spec["subsets"] = Value::Array(subsets);
    }
    if dr.selector {
        spec["workloadSelector"] = json!({"labels": {"app": "client"}});
    } else if let Some(e) = export_to(dr.export_to, false) {
        spec["exportTo"] = e;
    }
    doc("DestinationRule", &format!("dr-{i}"), ns, spec)
}

fn sidecar(name: &str, ns: &str, sc: &SidecarPlan, app: &str, services: &[Rendered]) -> Option<Value> {
    // Every port number some service has, with the first such port's name and protocol.
    let mut all_ports: BTreeMap<u16, (String, String)> = BTreeMap::new();
    for (n, name, protocol) in services.iter().flat_map(|s| s.ports.iter()) {
        all_ports.entry(*n).or_insert_with(|| (name.clone(), protocol.clone()));
    }
    let ports: Vec<(u16, String, String)> = all_ports.into_iter().map(|(n, (a, b))| (n, a, b)).collect();
    let hosts = |hs: &[Index]| -> Vec<&'static str> {
        let set: BTreeSet<&str> = hs.iter().map(|h| pick(&EGRESS_HOSTS, h)).collect();
        set.into_iter().collect()
    };
    let mut egress = Vec::new();
    let mut used = BTreeSet::new();
    for (k, e) in sc.egress.iter().enumerate() {
        let mut v = json!({"hosts": hosts(&e.hosts)});
        match &e.port {
            Some(p) => {
                let (number, name, protocol) = &ports[p.index(ports.len())];
                if !used.insert(*number) {
                    continue;
                }
                v["port"] = json!({"number": number, "name": name});
                if !protocol.is_empty() {
                    v["port"]["protocol"] = json!(protocol);
                }
            }
            // Only the last listener may omit the port: give this one a port of its own.
            None => v["port"] = json!({"number": 10000 + k as u16, "protocol": "HTTP", "name": "http-extra"}),
        }
        match e.bind {
            Some(19) => {
                v["bind"] = json!(format!("unix:///var/run/weft-egress-{k}.sock"));
                v["port"] = json!({"number": 0, "protocol": "HTTP", "name": "http-uds"});
            }
            Some(b) => v["bind"] = json!(format!("127.0.{}.{b}", 90 + k)),
            None => {}
        }
        if e.capture_none {
            v["captureMode"] = json!("NONE");
        }
        egress.push(v);
    }
    if let Some(hs) = &sc.catch_all {
        egress.push(json!({"hosts": hosts(hs)}));
    }
    let mut ingress = Vec::new();
    let mut in_used = BTreeSet::new();
    for i in &sc.ingress {
        let (number, _, _) = &ports[i.port.index(ports.len())];
        if !in_used.insert(*number) {
            continue;
        }
        let mut v = json!({"port": {"number": number, "protocol": pick(&PROTOCOLS, &i.protocol), "name": format!("in-{number}")}});
        if i.bind {
            // Now and then the address of the first egress listener's bind (127.0.90.1).
            v["bind"] = json!(if i.default_endpoint == 0 { "127.0.90.1" } else { "10.70.0.1" });
        }
        match i.capture {
            1 => v["captureMode"] = json!("NONE"),
            2 => v["captureMode"] = json!("IPTABLES"),
            _ => {}
        }
        match i.default_endpoint {
            1 => v["defaultEndpoint"] = json!("127.0.0.1:8080"),
            2 => v["defaultEndpoint"] = json!("0.0.0.0:8081"),
            3 => v["defaultEndpoint"] = json!("unix:///var/run/app.sock"),
            _ => {}
        }
        ingress.push(v);
    }
    let mut spec = Map::new();
    if sc.selector {
        spec.insert("workloadSelector".into(), json!({"labels": {"app": app}}));
    }
    if !egress.is_empty() {
        spec.insert("egress".into(), Value::Array(egress));
    }
    if !ingress.is_empty() {
        spec.insert("ingress".into(), Value::Array(ingress));
    }
    if let Some((registry_only, egress_proxy)) = sc.policy {
        let mut p = json!({"mode": if registry_only { "REGISTRY_ONLY" } else { "ALLOW_ANY" }});
        if egress_proxy && !registry_only {
            p["egressProxy"] = json!({"host": "egress.example.com", "port": {"number": 3128}});
        }
        spec.insert("outboundTrafficPolicy".into(), p);
    }
    if spec.is_empty() || (spec.len() == 1 && spec.contains_key("workloadSelector")) {
        return None;
    }
    Some(doc("Sidecar", name, ns, Value::Object(spec)))
}
