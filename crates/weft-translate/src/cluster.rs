//! CDS and EDS: one cluster per service port and DestinationRule subset, its traffic policy
//! (merged subset > port-level > top-level, as Istio), and its endpoints with locality
//! priorities and weights.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self as pbc, ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy as PbLb,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, CircuitBreakers, Cluster, OutlierDetection as PbOutlier, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, HealthStatus, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttp,
    Locality as PbLocality, SocketAddress, TcpKeepalive,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::v3::Percent;
use weft_istio::{
    Address, ConnectionPool, H2UpgradePolicy, HashAlgorithm, Labels, LbPolicy, LoadBalancer, Locality,
    LocalityLbSetting, OutlierDetection, Protocol, Resolution, ServicePort, SimpleLb, Subset, TrafficPolicy,
};

use crate::index::{Endpoint, Service};
use crate::naming::{outbound_cluster, BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER};
use crate::pb;
use crate::scope::{MergedRule, Scope};

/// Istio's default connect timeout (mesh `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The traffic policy in force for one cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub lb: Option<LoadBalancer>,
    pub pool: Option<ConnectionPool>,
    pub outlier: Option<OutlierDetection>,
}

/// Istio's merge: the rule's top-level settings, replaced by its port-level settings for the
/// port, replaced by the subset's (top-level, then port-level). Each of load balancer,
/// connection pool and outlier detection is replaced whole, never merged field by field.
pub fn merge_policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> Policy {
    let mut out = Policy::default();
    for tp in [top, subset].into_iter().flatten() {
        let port_level = tp.port_level_settings.iter().find(|pl| pl.port == port);
        let lb = port_level.and_then(|pl| pl.load_balancer.clone()).or_else(|| tp.load_balancer.clone());
        let pool = port_level.and_then(|pl| pl.connection_pool.clone()).or_else(|| tp.connection_pool.clone());
        let outlier = port_level.and_then(|pl| pl.outlier_detection.clone()).or_else(|| tp.outlier_detection.clone());
        if lb.is_some() {
            out.lb = lb;
        }
        if pool.is_some() {
            out.pool = pool;
        }
        if outlier.is_some() {
            out.outlier = outlier;
        }
    }
    out
}

/// The policy for a service port and subset under a proxy's DestinationRule.
pub fn policy_for(rule: Option<&MergedRule>, port: u16, subset: Option<&str>) -> Policy {
    let Some(rule) = rule else { return Policy::default() };
    let subset_policy =
        subset.and_then(|name| rule.subsets.iter().find(|s| s.name == name)).and_then(|s| s.traffic_policy.as_ref());
    merge_policy(rule.traffic_policy.as_ref(), subset_policy, port)
}

/// A cluster and, for EDS clusters, its load assignment.
pub struct Built {
    pub cluster: Cluster,
    pub assignment: Option<ClusterLoadAssignment>,
}

/// Every cluster (and assignment) of a service port: the default one and one per subset. As in
/// Istio, a subset of a DNS-resolved service that selects no endpoint has no cluster: a DNS
/// cluster needs something to resolve (Envoy rejects a LOGICAL_DNS cluster without exactly one
/// endpoint), and routes to the missing cluster answer 503 like routes to an unknown subset.
pub fn service_port_clusters(scope: &Scope, s: &Service, port: &ServicePort, rule: Option<&MergedRule>) -> Vec<Built> {
    let mut out: Vec<Built> = outbound(scope, s, port, None, rule).into_iter().collect();
    if let Some(rule) = rule {
        for subset in &rule.subsets {
            out.extend(outbound(scope, s, port, Some(subset), Some(rule)));
        }
    }
    out
}

fn outbound(
    scope: &Scope,
    s: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    rule: Option<&MergedRule>,
) -> Option<Built> {
    let name = outbound_cluster(port.number, subset.map(|s| s.name.as_str()).unwrap_or(""), &s.host);
    let policy = policy_for(rule, port.number, subset.map(|s| s.name.as_str()));
    let simple = match policy.lb.as_ref().and_then(|lb| lb.policy.as_ref()) {
        Some(LbPolicy::Simple(simple)) => Some(*simple),
        _ => None,
    };
    let original_dst =
        matches!(s.resolution, Resolution::None) || s.is_wildcard() || simple == Some(SimpleLb::Passthrough);
    let mut c = base_cluster(&name);
    c.metadata = Some(service_metadata(s, &scope.opts.domain_suffix));
    apply_connection_pool(&mut c, policy.pool.as_ref(), &port.protocol);
    // Unhealthy instances are left out, as Istio does by default: marked UNHEALTHY instead, they
    // would still get traffic whenever a proxy's panic threshold kicks in.
    let endpoints: Vec<&Endpoint> = s
        .endpoints
        .iter()
        .filter(|e| e.healthy)
        .filter(|e| subset.map_or(true, |sub| sub.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .collect();
    let mut assignment = None;
    if original_dst {
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32));
        c.lb_policy = PbLb::ClusterProvided as i32;
    } else {
        apply_lb(&mut c, policy.lb.as_ref());
        apply_outlier(&mut c, policy.outlier.as_ref());
        // A DNS service without endpoints resolves its own host name.
        let dns_host = Endpoint {
            address: Address::Hostname(s.host.clone()),
            ports: BTreeMap::new(),
            labels: Labels::new(),
            locality: None,
            weight: 1,
            healthy: true,
            workload: String::new(),
            namespace: String::new(),
        };
        let targets: Vec<(&Endpoint, u16)> = if matches!(s.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && endpoints.is_empty()
            && subset.is_none()
        {
            vec![(&dns_host, port.number)]
        } else {
            endpoints.iter().map(|e| (*e, e.target_port(port))).collect()
        };
        let targets: Vec<(&Endpoint, u16)> = match s.resolution {
            Resolution::DnsRoundRobin => targets.into_iter().take(1).collect(),
            _ => targets,
        };
        if targets.is_empty() && matches!(s.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return None;
        }
        let locality_setting = locality_setting(scope, policy.lb.as_ref());
        let mut cla = load_assignment(&name, &targets);
        if let Some(setting) = &locality_setting {
            let weighted = apply_locality(&mut cla, &targets, scope, setting, policy.outlier.is_some());
            if weighted {
                c.common_lb_config.get_or_insert_with(Default::default).locality_config_specifier =
                    Some(pbc::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        pbc::common_lb_config::LocalityWeightedLbConfig {},
                    ));
            }
        }
        match s.resolution {
            Resolution::Dns | Resolution::DnsRoundRobin => {
                let ty =
                    if s.resolution == Resolution::Dns { DiscoveryType::StrictDns } else { DiscoveryType::LogicalDns };
                c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(ty as i32));
                c.dns_lookup_family = pbc::DnsLookupFamily::V4Only as i32;
                c.load_assignment = Some(cla);
            }
            Resolution::Static | Resolution::None => {
                c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
                c.eds_cluster_config =
                    Some(EdsClusterConfig { eds_config: Some(pb::ads()), service_name: name.clone() });
                assignment = Some(cla);
            }
        }
    }
    Some(Built { cluster: c, assignment })
}

/// Istio's defaults every outbound cluster starts from.
fn base_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(pb::duration(DEFAULT_CONNECT_TIMEOUT)),
        lb_policy: PbLb::LeastRequest as i32,
        circuit_breakers: Some(CircuitBreakers { thresholds: vec![default_thresholds()], ..Default::default() }),
        ..Default::default()
    }
}

/// Istio leaves the breakers wide open unless a connectionPool says otherwise.
fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: Some(pb::u32v(u32::MAX)),
        max_pending_requests: Some(pb::u32v(u32::MAX)),
        max_requests: Some(pb::u32v(u32::MAX)),
        max_retries: Some(pb::u32v(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    }
}

fn apply_connection_pool(c: &mut Cluster, pool: Option<&ConnectionPool>, protocol: &Protocol) {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    if let Some(tcp) = tcp {
        if let Some(t) = tcp.connect_timeout {
            c.connect_timeout = Some(pb::duration(t));
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: ka.probes.map(pb::u32v),
                    keepalive_time: ka.time.map(|d| pb::u32v(d.as_secs().min(u32::MAX as u64) as u32)),
                    keepalive_interval: ka.interval.map(|d| pb::u32v(d.as_secs().min(u32::MAX as u64) as u32)),
                }),
                ..Default::default()
            });
        }
    }
    // As in Istio, 0 leaves a limit at its default (wide open): it does not mean "none allowed".
    let positive = |n: Option<u32>| n.filter(|n| *n > 0).map(pb::u32v);
    if let Some(t) = c.circuit_breakers.as_mut().and_then(|cb| cb.thresholds.first_mut()) {
        if let Some(n) = positive(tcp.and_then(|t| t.max_connections)) {
            t.max_connections = Some(n);
        }
        if let Some(n) = positive(http.and_then(|h| h.http1_max_pending_requests)) {
            t.max_pending_requests = Some(n);
        }
        if let Some(n) = positive(http.and_then(|h| h.http2_max_requests)) {
            t.max_requests = Some(n);
        }
        if let Some(n) = positive(http.and_then(|h| h.max_retries)) {
            t.max_retries = Some(n);
        }
    }
    if let Some(opts) = http_protocol_options(protocol, pool) {
        c.typed_extension_protocol_options.insert(HTTP_OPTIONS_KEY.to_string(), pb::any(&opts));
    }
}

/// `HttpProtocolOptions` for HTTP ports: HTTP/2 for http2/grpc ports (and HTTP ports with
/// `h2UpgradePolicy: UPGRADE`), the client's protocol with `useClientProtocol` or for ports of
/// undeclared protocol, plus idle timeout and requests per connection. None for TCP ports and
/// plain HTTP/1 ports without settings.
fn http_protocol_options(protocol: &Protocol, pool: Option<&ConnectionPool>) -> Option<HttpProtocolOptions> {
    let is_http = protocol.is_http() || matches!(protocol, Protocol::Unsupported(_));
    if !is_http {
        return None;
    }
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let h2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
        || (matches!(protocol, Protocol::Http)
            && http.is_some_and(|h| h.h2_upgrade_policy == H2UpgradePolicy::Upgrade));
    let downstream = http.is_some_and(|h| h.use_client_protocol) || matches!(protocol, Protocol::Unsupported(_));
    let h2_options = Http2ProtocolOptions {
        // 0 is Istio's "default" (Envoy's own limit); Envoy rejects 0 here.
        max_concurrent_streams: http.and_then(|h| h.max_concurrent_streams).filter(|n| *n > 0).map(pb::u32v),
        ..Default::default()
    };
    let common = CommonHttp {
        idle_timeout: http.and_then(|h| h.idle_timeout).map(pb::duration),
        max_requests_per_connection: http.and_then(|h| h.max_requests_per_connection).filter(|n| *n > 0).map(pb::u32v),
        max_connection_duration: tcp.and_then(|t| t.max_connection_duration).map(pb::duration),
        ..Default::default()
    };
    let has_common = common != CommonHttp::default();
    let upstream = if downstream {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(h2_options),
            ..Default::default()
        })
    } else if h2 {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2_options)),
        })
    } else if has_common {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())),
        })
    } else {
        return None;
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: has_common.then_some(common),
        upstream_protocol_options: Some(upstream),
        ..Default::default()
    })
}

fn apply_lb(c: &mut Cluster, lb: Option<&LoadBalancer>) {
    let warmup = lb
        .and_then(|l| l.warmup_duration)
        .map(|d| pbc::SlowStartConfig { slow_start_window: Some(pb::duration(d)), ..Default::default() });
    match lb.and_then(|l| l.policy.as_ref()) {
        None | Some(LbPolicy::Simple(SimpleLb::LeastRequest)) => {
            c.lb_policy = PbLb::LeastRequest as i32;
            if let Some(w) = warmup {
                c.lb_config = Some(LbConfig::LeastRequestLbConfig(pbc::LeastRequestLbConfig {
                    slow_start_config: Some(w),
                    ..Default::default()
                }));
            }
        }
        Some(LbPolicy::Simple(SimpleLb::RoundRobin)) => {
            c.lb_policy = PbLb::RoundRobin as i32;
            if let Some(w) = warmup {
                c.lb_config =
                    Some(LbConfig::RoundRobinLbConfig(pbc::RoundRobinLbConfig { slow_start_config: Some(w) }));
            }
        }
        Some(LbPolicy::Simple(SimpleLb::Random)) => c.lb_policy = PbLb::Random as i32,
        Some(LbPolicy::Simple(SimpleLb::Passthrough)) => c.lb_policy = PbLb::ClusterProvided as i32,
        Some(LbPolicy::ConsistentHash(ch)) => match ch.algorithm {
            HashAlgorithm::RingHash { minimum_ring_size } => {
                c.lb_policy = PbLb::RingHash as i32;
                c.lb_config = Some(LbConfig::RingHashLbConfig(pbc::RingHashLbConfig {
                    // Istio's default ring of 1024 entries.
                    minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: minimum_ring_size.unwrap_or(1024),
                    }),
                    ..Default::default()
                }));
            }
            HashAlgorithm::Maglev { table_size } => {
                c.lb_policy = PbLb::Maglev as i32;
                if let Some(size) = table_size {
                    c.lb_config = Some(LbConfig::MaglevLbConfig(pbc::MaglevLbConfig {
                        table_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: size }),
                    }));
                }
            }
        },
    }
}

/// Istio's outlier detection: success-rate ejection off, each rule enforced at 100% when its
/// threshold is set and above zero, `minHealthPercent` (default 0) as the panic threshold.
fn apply_outlier(c: &mut Cluster, od: Option<&OutlierDetection>) {
    let Some(od) = od else { return };
    let mut out = PbOutlier { enforcing_success_rate: Some(pb::u32v(0)), ..Default::default() };
    if let Some(n) = od.consecutive_5xx_errors {
        out.consecutive_5xx = Some(pb::u32v(n));
        out.enforcing_consecutive_5xx = Some(pb::u32v(if n > 0 { 100 } else { 0 }));
    }
    if let Some(n) = od.consecutive_gateway_errors.filter(|n| *n > 0) {
        out.consecutive_gateway_failure = Some(pb::u32v(n));
        out.enforcing_consecutive_gateway_failure = Some(pb::u32v(100));
    }
    out.interval = od.interval.map(pb::duration);
    out.base_ejection_time = od.base_ejection_time.map(pb::duration);
    out.max_ejection_percent = od.max_ejection_percent.map(pb::u32v);
    if od.split_external_local_origin_errors {
        out.split_external_local_origin_errors = true;
        if let Some(n) = od.consecutive_local_origin_failures.filter(|n| *n > 0) {
            out.consecutive_local_origin_failure = Some(pb::u32v(n));
            out.enforcing_consecutive_local_origin_failure = Some(pb::u32v(100));
        }
    }
    c.outlier_detection = Some(out);
    c.common_lb_config.get_or_insert_with(CommonLbConfig::default).healthy_panic_threshold =
        Some(Percent { value: od.min_health_percent.unwrap_or(0) as f64 });
}

/// The locality setting in force: the rule's (unless it disables it), else the mesh default
/// (enabled, no explicit failover or distribution).
fn locality_setting(scope: &Scope, lb: Option<&LoadBalancer>) -> Option<LocalityLbSetting> {
    match lb.and_then(|l| l.locality_lb_setting.as_ref()) {
        Some(s) if s.enabled == Some(false) => None,
        Some(s) => Some(s.clone()),
        None if scope.opts.locality_lb => Some(LocalityLbSetting::default()),
        None => None,
    }
}

fn pb_locality(l: &Locality) -> PbLocality {
    PbLocality { region: l.region.clone(), zone: l.zone.clone(), sub_zone: l.subzone.clone() }
}

fn endpoint_address(e: &Endpoint, port: u16) -> envoy_types::pb::envoy::config::core::v3::Address {
    match &e.address {
        Address::Ip(ip) => pb::socket(&ip.to_string(), port),
        Address::Hostname(h) => pb::socket(h, port),
        Address::Unix(path) => pb::pipe(path),
    }
}

/// Istio's endpoint metadata `istio.workload`: `NAME;NAMESPACE;CANONICAL_NAME;REVISION;CLUSTER`,
/// which proxies turn into the `destination_workload`, `destination_app` and
/// `destination_version` labels of their metrics.
fn workload_metadata(e: &Endpoint) -> Option<envoy_types::pb::envoy::config::core::v3::Metadata> {
    if e.namespace.is_empty() {
        return None;
    }
    let label = |keys: &[&str]| keys.iter().find_map(|k| e.labels.get(*k)).cloned();
    let canonical = label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
        .unwrap_or_else(|| e.workload.clone());
    let revision =
        label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]).unwrap_or_default();
    let value = format!("{};{};{};{};", e.workload, e.namespace, canonical, revision);
    Some(pb::metadata("istio", [("workload", pb::string_value(value))]))
}

/// Istio's cluster metadata `istio.services`: the destination service of the cluster's traffic.
fn service_metadata(s: &Service, domain_suffix: &str) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    let name = s.host.strip_suffix(&format!(".{}.svc.{domain_suffix}", s.namespace)).unwrap_or(&s.host);
    let service = pb::struct_value([
        ("host", pb::string_value(s.host.clone())),
        ("name", pb::string_value(name.to_string())),
        ("namespace", pb::string_value(s.namespace.clone())),
    ]);
    pb::metadata("istio", [("services", pb::list_value(vec![service]))])
}

fn lb_endpoint(e: &Endpoint, port: u16) -> LbEndpoint {
    LbEndpoint {
        metadata: workload_metadata(e),
        health_status: if e.healthy { HealthStatus::Healthy } else { HealthStatus::Unhealthy } as i32,
        load_balancing_weight: Some(pb::u32v(e.weight)),
        host_identifier: Some(HostIdentifier::Endpoint(PbEndpoint {
            address: Some(endpoint_address(e, port)),
            ..Default::default()
        })),
    }
}

/// Endpoints grouped by locality (sorted), each group weighted by the sum of its endpoints'.
pub fn load_assignment(name: &str, targets: &[(&Endpoint, u16)]) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<Option<Locality>, Vec<LbEndpoint>> = BTreeMap::new();
    for (e, port) in targets {
        groups.entry(e.locality.clone()).or_default().push(lb_endpoint(e, *port));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: groups
            .into_iter()
            .map(|(loc, eps)| LocalityLbEndpoints {
                locality: loc.as_ref().map(pb_locality),
                load_balancing_weight: Some(pb::u32v(group_weight(&eps))),
                lb_endpoints: eps,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn group_weight(eps: &[LbEndpoint]) -> u32 {
    eps.iter().map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value)).fold(0u32, u32::saturating_add).max(1)
}

/// Applies `distribute` (locality weights) or failover priorities, as Istio: distribution when
/// given; otherwise failover, only when outlier detection is on (without it Envoy would never
/// move to a lower priority). Returns whether locality weights were set.
fn apply_locality(
    cla: &mut ClusterLoadAssignment,
    targets: &[(&Endpoint, u16)],
    scope: &Scope,
    setting: &LocalityLbSetting,
    outlier: bool,
) -> bool {
    let Some(proxy) = scope.proxy.locality.as_ref().filter(|l| !l.region.is_empty()) else { return false };
    if !setting.distribute.is_empty() {
        return apply_distribute(cla, proxy, setting);
    }
    if !outlier {
        return false;
    }
    if !setting.failover_priority.is_empty() && !scope.proxy.labels.is_empty() {
        split_by_failover_priority(cla, targets, &scope.proxy.labels, &setting.failover_priority);
        if !setting.failover.is_empty() {
            apply_failover(cla, proxy, setting);
        }
    } else {
        apply_failover(cla, proxy, setting);
    }
    false
}

/// Istio's `LbPriority`: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere.
pub fn locality_priority(proxy: &Locality, ep: Option<&PbLocality>) -> u32 {
    let (region, zone, sub) =
        ep.map(|l| (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str())).unwrap_or(("", "", ""));
    if proxy.region != region {
        3
    } else if proxy.zone != zone {
        2
    } else if proxy.subzone != sub {
        1
    } else {
        0
    }
}

fn apply_failover(cla: &mut ClusterLoadAssignment, proxy: &Locality, setting: &LocalityLbSetting) {
    for group in &mut cla.endpoints {
        let mut p = locality_priority(proxy, group.locality.as_ref());
        if p == 3 {
            // An explicit failover target for the proxy's region: other regions drop below it.
            if let Some(f) = setting.failover.iter().find(|f| f.from == proxy.region) {
                if group.locality.as_ref().map(|l| l.region.as_str()) != Some(f.to.as_str()) {
                    p = 4;
                }
            }
        }
        group.priority = group.priority * 5 + p;
    }
    compact_priorities(cla);
}

/// Renumbers priorities 0..N without gaps, keeping their order.
fn compact_priorities(cla: &mut ClusterLoadAssignment) {
    let mut used: Vec<u32> = cla.endpoints.iter().map(|g| g.priority).collect();
    used.sort_unstable();
    used.dedup();
    for g in &mut cla.endpoints {
        g.priority = used.iter().position(|p| *p == g.priority).unwrap_or(0) as u32;
    }
}

/// `failoverPriority`: within each locality, endpoints matching all the listed labels of the
/// proxy first, then those matching all but the last, and so on.
fn split_by_failover_priority(
    cla: &mut ClusterLoadAssignment,
    targets: &[(&Endpoint, u16)],
    proxy_labels: &Labels,
    keys: &[String],
) {
    let lowest = keys.len() as u32;
    let mut groups: BTreeMap<(Option<Locality>, u32), Vec<LbEndpoint>> = BTreeMap::new();
    for (e, port) in targets {
        let mut priority = 0;
        for (j, k) in keys.iter().enumerate() {
            match proxy_labels.get(k) {
                Some(v) if e.labels.get(k) == Some(v) => {}
                _ => {
                    priority = lowest - j as u32;
                    break;
                }
            }
        }
        groups.entry((e.locality.clone(), priority)).or_default().push(lb_endpoint(e, *port));
    }
    cla.endpoints = groups
        .into_iter()
        .map(|((loc, priority), eps)| LocalityLbEndpoints {
            locality: loc.as_ref().map(pb_locality),
            load_balancing_weight: Some(pb::u32v(group_weight(&eps))),
            lb_endpoints: eps,
            priority,
            ..Default::default()
        })
        .collect();
    compact_priorities(cla);
}

/// Istio's `LocalityMatch`: `*` or an empty zone/subzone in the pattern match anything.
pub fn locality_matches(l: Option<&PbLocality>, pattern: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    let (r, z, s) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (lr, lz, ls) = l.map(|l| (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str())).unwrap_or(("", "", ""));
    (r == "*" || r == lr) && (z == "*" || z.is_empty() || z == lz) && (s == "*" || s.is_empty() || s == ls)
}

fn apply_distribute(cla: &mut ClusterLoadAssignment, proxy: &Locality, setting: &LocalityLbSetting) -> bool {
    let proxy_pb = pb_locality(proxy);
    let Some(rule) = setting.distribute.iter().find(|d| locality_matches(Some(&proxy_pb), &d.from)) else {
        return false;
    };
    let mut unmatched: Vec<bool> = vec![true; cla.endpoints.len()];
    for (pattern, weight) in &rule.to {
        let mut members: Vec<(usize, u32)> = Vec::new();
        for (i, g) in cla.endpoints.iter().enumerate() {
            if unmatched[i] && locality_matches(g.locality.as_ref(), pattern) {
                unmatched[i] = false;
                members.push((i, g.load_balancing_weight.as_ref().map_or(1, |w| w.value)));
            }
        }
        let total: u64 = members.iter().map(|(_, w)| *w as u64).sum();
        for (i, original) in members {
            // A pattern's weight is shared among its localities in proportion to their size.
            let share = (original as u64 * *weight as u64).div_ceil(total.max(1));
            if share > 0 {
                cla.endpoints[i].load_balancing_weight = Some(pb::u32v(share.min(u32::MAX as u64) as u32));
            }
        }
    }
    let mut i = 0;
    cla.endpoints.retain(|_| {
        let keep = !unmatched[i];
        i += 1;
        keep
    });
    true
}

/// `PassthroughCluster`: forwards to the original destination, speaking the client's protocol.
pub fn passthrough() -> Cluster {
    let mut c = base_cluster(PASSTHROUGH_CLUSTER);
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32));
    c.lb_policy = PbLb::ClusterProvided as i32;
    c.typed_extension_protocol_options.insert(HTTP_OPTIONS_KEY.to_string(), pb::any(&downstream_protocol()));
    c
}

/// `InboundPassthroughCluster`: inbound traffic to undeclared ports, sent from 127.0.0.6 so the
/// capture rules let it through to the application.
pub fn inbound_passthrough() -> Cluster {
    let mut c = passthrough();
    c.name = INBOUND_PASSTHROUGH_CLUSTER.to_string();
    c.upstream_bind_config = Some(BindConfig {
        source_address: Some(SocketAddress {
            address: "127.0.0.6".into(),
            port_specifier: Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// `BlackHoleCluster`: no endpoints, every request fails.
pub fn blackhole() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        connect_timeout: Some(pb::duration(DEFAULT_CONNECT_TIMEOUT)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    }
}

/// `inbound|PORT||`: the local application, STATIC at `address:port` (or a Unix socket).
pub fn inbound(name: &str, target: &Address, port: u16, protocol: &Protocol) -> Cluster {
    let mut c = base_cluster(name);
    c.lb_policy = PbLb::RoundRobin as i32;
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    let e = Endpoint {
        address: target.clone(),
        ports: BTreeMap::new(),
        labels: Labels::new(),
        locality: None,
        weight: 1,
        healthy: true,
        workload: String::new(),
        namespace: String::new(),
    };
    let mut cla = load_assignment(name, &[(&e, port)]);
    cla.endpoints.iter_mut().for_each(|g| g.load_balancing_weight = None);
    c.load_assignment = Some(cla);
    if protocol.is_http() || matches!(protocol, Protocol::Unsupported(_)) {
        c.typed_extension_protocol_options.insert(HTTP_OPTIONS_KEY.to_string(), pb::any(&downstream_protocol()));
    }
    c
}

fn downstream_protocol() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_istio::{HttpSettings, LocalityDistribute, LocalityFailover, PortTrafficPolicy};

    fn loc(s: &str) -> Locality {
        Locality::parse(s).unwrap()
    }

    fn ep(ip: &str, locality: &str, weight: u32, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            address: Address::Ip(ip.parse().unwrap()),
            ports: BTreeMap::new(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            locality: (!locality.is_empty()).then(|| loc(locality)),
            weight,
            healthy: true,
            workload: String::new(),
            namespace: String::new(),
        }
    }

    fn priorities(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
        cla.endpoints
            .iter()
            .map(|g| {
                let l =
                    g.locality.as_ref().map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone)).unwrap_or_default();
                (l, g.priority)
            })
            .collect()
    }

    #[test]
    fn policies_merge_subset_over_port_over_top() {
        let pool = |n: u32| ConnectionPool {
            http: Some(HttpSettings { http2_max_requests: Some(n), ..Default::default() }),
            ..Default::default()
        };
        let lb = |p: SimpleLb| LoadBalancer { policy: Some(LbPolicy::Simple(p)), ..Default::default() };
        let top = TrafficPolicy {
            load_balancer: Some(lb(SimpleLb::Random)),
            connection_pool: Some(pool(1)),
            outlier_detection: None,
            port_level_settings: vec![PortTrafficPolicy {
                port: 9080,
                load_balancer: None,
                connection_pool: Some(pool(2)),
                outlier_detection: Some(OutlierDetection::default()),
            }],
        };
        let subset = TrafficPolicy { load_balancer: Some(lb(SimpleLb::RoundRobin)), ..Default::default() };
        let cases: [(Option<&TrafficPolicy>, u16, Policy); 4] = [
            (None, 80, Policy { lb: Some(lb(SimpleLb::Random)), pool: Some(pool(1)), outlier: None }),
            (
                None,
                9080,
                Policy {
                    lb: Some(lb(SimpleLb::Random)),
                    pool: Some(pool(2)),
                    outlier: Some(OutlierDetection::default()),
                },
            ),
            (
                Some(&subset),
                9080,
                Policy {
                    lb: Some(lb(SimpleLb::RoundRobin)),
                    pool: Some(pool(2)),
                    outlier: Some(OutlierDetection::default()),
                },
            ),
            (Some(&subset), 80, Policy { lb: Some(lb(SimpleLb::RoundRobin)), pool: Some(pool(1)), outlier: None }),
        ];
        for (i, (sub, port, want)) in cases.into_iter().enumerate() {
            assert_eq!(merge_policy(Some(&top), sub, port), want, "case {i}");
        }
    }

    #[test]
    fn failover_priorities_follow_the_proxy_locality() {
        let eps = [
            ep("10.0.0.1", "us-east/a/r1", 1, &[]),
            ep("10.0.0.2", "us-east/a/r2", 1, &[]),
            ep("10.0.0.3", "us-east/b/r1", 1, &[]),
            ep("10.0.0.4", "eu-west/a/r1", 1, &[]),
            ep("10.0.0.5", "ap-south/a/r1", 1, &[]),
        ];
        let targets: Vec<(&Endpoint, u16)> = eps.iter().map(|e| (e, 80)).collect();
        let proxy = loc("us-east/a/r1");
        // Default failover: subzone, zone, region, elsewhere.
        let mut cla = load_assignment("c", &targets);
        apply_failover(&mut cla, &proxy, &LocalityLbSetting::default());
        assert_eq!(
            priorities(&cla),
            [
                ("ap-south/a/r1".to_string(), 3),
                ("eu-west/a/r1".to_string(), 3),
                ("us-east/a/r1".to_string(), 0),
                ("us-east/a/r2".to_string(), 1),
                ("us-east/b/r1".to_string(), 2),
            ]
        );
        // Explicit failover us-east → eu-west puts other regions last.
        let setting = LocalityLbSetting {
            failover: vec![LocalityFailover { from: "us-east".into(), to: "eu-west".into() }],
            ..Default::default()
        };
        let mut cla = load_assignment("c", &targets);
        apply_failover(&mut cla, &proxy, &setting);
        assert_eq!(priorities(&cla)[0], ("ap-south/a/r1".to_string(), 4));
        assert_eq!(priorities(&cla)[1], ("eu-west/a/r1".to_string(), 3));
        // Priorities stay dense when some levels are empty.
        let mut cla = load_assignment("c", &targets[3..]);
        apply_failover(&mut cla, &proxy, &LocalityLbSetting::default());
        assert_eq!(priorities(&cla), [("ap-south/a/r1".to_string(), 0), ("eu-west/a/r1".to_string(), 0)]);
    }

    #[test]
    fn failover_priority_labels_split_localities() {
        let eps = [
            ep("10.0.0.1", "r/z/s", 1, &[("net", "n1"), ("rack", "k1")]),
            ep("10.0.0.2", "r/z/s", 1, &[("net", "n1"), ("rack", "k2")]),
            ep("10.0.0.3", "r/z/s", 1, &[("net", "n2"), ("rack", "k1")]),
        ];
        let targets: Vec<(&Endpoint, u16)> = eps.iter().map(|e| (e, 80)).collect();
        let proxy_labels: Labels =
            [("net".to_string(), "n1".to_string()), ("rack".to_string(), "k1".to_string())].into();
        let mut cla = load_assignment("c", &targets);
        split_by_failover_priority(&mut cla, &targets, &proxy_labels, &["net".to_string(), "rack".to_string()]);
        let by_priority: Vec<(u32, usize)> = cla.endpoints.iter().map(|g| (g.priority, g.lb_endpoints.len())).collect();
        assert_eq!(by_priority, [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn distribute_sets_locality_weights_and_drops_the_rest() {
        let eps = [
            ep("10.0.0.1", "us/z1/a", 1, &[]),
            ep("10.0.0.2", "us/z2/a", 1, &[]),
            ep("10.0.0.3", "us/z2/b", 3, &[]),
            ep("10.0.0.4", "eu/z1/a", 1, &[]),
        ];
        let targets: Vec<(&Endpoint, u16)> = eps.iter().map(|e| (e, 80)).collect();
        let setting = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: "us/z1/*".into(),
                to: [("us/z1/*".to_string(), 80), ("us/z2/*".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        let mut cla = load_assignment("c", &targets);
        assert!(apply_distribute(&mut cla, &loc("us/z1/a"), &setting));
        let weights: Vec<(String, u32)> = cla
            .endpoints
            .iter()
            .map(|g| {
                (
                    g.locality.as_ref().unwrap().sub_zone.clone() + "@" + &g.locality.as_ref().unwrap().zone,
                    g.load_balancing_weight.as_ref().unwrap().value,
                )
            })
            .collect();
        // z2's 20 is shared 1:3 between its two localities (rounded up, as Istio).
        assert_eq!(weights, [("a@z1".to_string(), 80), ("a@z2".to_string(), 5), ("b@z2".to_string(), 15)]);
        // A proxy outside every `from` keeps the plain assignment.
        let mut cla = load_assignment("c", &targets);
        assert!(!apply_distribute(&mut cla, &loc("eu/z1/a"), &setting));
        assert_eq!(cla.endpoints.len(), 4);
    }

    #[test]
    fn locality_patterns() {
        let l = pb_locality(&loc("us/z1/a"));
        let cases = [
            ("*", true),
            ("us", true),
            ("us/*", true),
            ("us/z1", true),
            ("us/z1/a", true),
            ("us/z2", false),
            ("eu/*", false),
            ("us/z1/b", false),
        ];
        for (pattern, want) in cases {
            assert_eq!(locality_matches(Some(&l), pattern), want, "{pattern}");
        }
    }

    #[test]
    fn protocol_options_by_port_protocol() {
        let h2 = |o: Option<HttpProtocolOptions>| match o.and_then(|o| o.upstream_protocol_options) {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
            })) => "h2",
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(_)) => "h1",
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => "downstream",
            Some(_) => "other",
            None => "none",
        };
        let upgrade = ConnectionPool {
            http: Some(HttpSettings { h2_upgrade_policy: H2UpgradePolicy::Upgrade, ..Default::default() }),
            ..Default::default()
        };
        let idle = ConnectionPool {
            http: Some(HttpSettings { idle_timeout: Some(Duration::from_secs(5)), ..Default::default() }),
            ..Default::default()
        };
        let cases = [
            (Protocol::Http, None, "none"),
            (Protocol::Http, Some(&idle), "h1"),
            (Protocol::Http, Some(&upgrade), "h2"),
            (Protocol::Grpc, None, "h2"),
            (Protocol::Http2, None, "h2"),
            (Protocol::Tcp, Some(&idle), "none"),
            (Protocol::Unsupported(String::new()), None, "downstream"),
        ];
        for (proto, pool, want) in cases {
            assert_eq!(h2(http_protocol_options(&proto, pool)), want, "{proto:?}");
        }
    }

    #[test]
    fn zero_pool_limits_keep_the_defaults() {
        // Istio reads 0 as "not set"; Envoy rejects max_concurrent_streams 0 outright.
        let zero = ConnectionPool {
            tcp: Some(weft_istio::TcpSettings { max_connections: Some(0), ..Default::default() }),
            http: Some(HttpSettings {
                http1_max_pending_requests: Some(0),
                http2_max_requests: Some(0),
                max_retries: Some(0),
                max_concurrent_streams: Some(0),
                use_client_protocol: true,
                ..Default::default()
            }),
        };
        let mut c = base_cluster("c");
        apply_connection_pool(&mut c, Some(&zero), &Protocol::Http);
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        let want = Some(pb::u32v(u32::MAX));
        assert_eq!(
            [&t.max_connections, &t.max_pending_requests, &t.max_requests, &t.max_retries],
            [&want, &want, &want, &want]
        );
        let opts = http_protocol_options(&Protocol::Http, Some(&zero)).unwrap();
        let Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) = opts.upstream_protocol_options else {
            panic!("useClientProtocol: {opts:?}");
        };
        assert_eq!(d.http2_protocol_options.unwrap().max_concurrent_streams, None);

        let one = ConnectionPool {
            tcp: Some(weft_istio::TcpSettings { max_connections: Some(1), ..Default::default() }),
            http: Some(HttpSettings { max_concurrent_streams: Some(1), ..Default::default() }),
        };
        let mut c = base_cluster("c");
        apply_connection_pool(&mut c, Some(&one), &Protocol::Http2);
        assert_eq!(c.circuit_breakers.unwrap().thresholds[0].max_connections, Some(pb::u32v(1)));
    }
}
