//! `envoy.config.cluster.v3.Cluster` → [`ClusterSpec`].

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::google::protobuf::value::Kind;
use weft_config::{
    CircuitBreakers, Cluster, Discovery, HealthCheck, HealthCheckKind, Labels, LbPolicy, OutlierDetection, PoolConfig,
    UpstreamProtocol,
};

use super::common::*;
use super::endpoint::{assignment, Assignment};

/// A converted cluster plus what assembling it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// For EDS clusters `localities` stays empty: the assignment arrives separately.
    pub cluster: Cluster,
    /// EDS: the `ClusterLoadAssignment` to subscribe to (`service_name`, else the cluster name).
    pub eds_service: Option<String>,
    /// Locality weights apply only with `common_lb_config.locality_weighted_lb_config`.
    pub locality_weighted: bool,
}

const DFP_CLUSTER: &str = "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig";

/// Envoy's dynamic forward proxy cluster (`cluster_type` `envoy.clusters.dynamic_forward_proxy`):
/// hosts come from each request's authority. Only its DNS cache settings weft can honour are
/// accepted: the refresh rate (how long answers are kept) and `max_hosts`.
fn forward_proxy(ctx: &Ctx, c: &pb::Cluster) -> R<Discovery> {
    use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3 as dfp;
    let f = "cluster_type.typed_config";
    let Some(pb::cluster::ClusterDiscoveryType::ClusterType(ct)) = &c.cluster_discovery_type else {
        return Err(ctx.err("cluster_type", "required"));
    };
    let Some(any) = &ct.typed_config else { return Err(ctx.err(f, "required")) };
    let cfg: dfp::ClusterConfig = unpack(ctx, f, any)?;
    if cfg.allow_coalesced_connections {
        return Err(ctx.unsupported(format!("{f}.allow_coalesced_connections")));
    }
    if c.load_assignment.as_ref().is_some_and(|la| !la.endpoints.is_empty()) {
        return Err(ctx.err("load_assignment", "a dynamic forward proxy cluster takes its hosts from requests"));
    }
    use dfp::cluster_config::ClusterImplementationSpecifier as S;
    let cache = match &cfg.cluster_implementation_specifier {
        Some(S::DnsCacheConfig(d)) => d,
        Some(S::SubClustersConfig(_)) => return Err(ctx.unsupported(format!("{f}.sub_clusters_config"))),
        None => return Err(ctx.err(format!("{f}.dns_cache_config"), "required")),
    };
    dns_cache(ctx, &format!("{f}.dns_cache_config"), cache)
}

/// A dynamic forward proxy DNS cache config (shared by the cluster and the HTTP filter).
pub(crate) fn dns_cache(
    ctx: &Ctx,
    f: &str,
    d: &envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig,
) -> R<Discovery> {
    if d.name.is_empty() {
        return Err(ctx.err(format!("{f}.name"), "must not be empty"));
    }
    let unsupported: [(bool, &str); 5] = [
        (!d.preresolve_hostnames.is_empty(), "preresolve_hostnames"),
        (d.typed_dns_resolver_config.is_some(), "typed_dns_resolver_config"),
        (d.dns_cache_circuit_breaker.is_some(), "dns_cache_circuit_breaker"),
        (d.key_value_config.is_some(), "key_value_config"),
        (d.dns_query_timeout.is_some_and(|t| t.seconds > 5), "dns_query_timeout (above 5s)"),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(format!("{f}.{field}")));
    }
    let refresh = dur_or(ctx, &format!("{f}.dns_refresh_rate"), &d.dns_refresh_rate, Duration::from_secs(60))?;
    if refresh.is_zero() {
        return Err(ctx.err(format!("{f}.dns_refresh_rate"), "must be greater than 0"));
    }
    let max_hosts = d.max_hosts.as_ref().map(|v| v.value).unwrap_or(1024);
    if max_hosts == 0 || max_hosts > 65_536 {
        return Err(ctx.err(format!("{f}.max_hosts"), "must be between 1 and 65536"));
    }
    Ok(Discovery::DynamicForwardProxy { refresh, max_hosts })
}

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's default upstream connection idle timeout.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Converts one cluster; errors name it and the field.
pub fn cluster(c: &pb::Cluster) -> R<ClusterSpec> {
    let ctx = Ctx::new("Cluster", &c.name);
    if c.name.is_empty() {
        return Err(ctx.err("name", "must not be empty"));
    }
    reject_unsupported(&ctx, c)?;

    use pb::cluster::ClusterDiscoveryType as T;
    use pb::cluster::DiscoveryType as D;
    let kind = match &c.cluster_discovery_type {
        None => Some(D::Static),
        Some(T::Type(t)) => Some(D::try_from(*t).map_err(|_| ctx.err("type", format!("unknown value {t}")))?),
        Some(T::ClusterType(ct)) => match ct.typed_config.as_ref().map(|a| type_name(&a.type_url)) {
            Some(DFP_CLUSTER) => None,
            _ => return Err(ctx.err("cluster_type", format!("{:?} is not supported", ct.name))),
        },
    };
    let dns_refresh = dur_or(&ctx, "dns_refresh_rate", &c.dns_refresh_rate, Duration::from_secs(5))?;
    if dns_refresh.is_zero() {
        return Err(ctx.err("dns_refresh_rate", "must be greater than 0"));
    }
    let (discovery, eds_service) = match kind {
        None => (forward_proxy(&ctx, c)?, None),
        Some(kind) => match kind {
            D::Static => (Discovery::Static, None),
            D::StrictDns => (Discovery::StrictDns { refresh: dns_refresh }, None),
            D::LogicalDns => (Discovery::LogicalDns { refresh: dns_refresh }, None),
            D::OriginalDst => (Discovery::OriginalDst, None),
            D::Eds => {
                let Some(eds) = &c.eds_cluster_config else {
                    return Err(ctx.err("eds_cluster_config", "required for type EDS"));
                };
                ads_source(&ctx, "eds_cluster_config.eds_config", &eds.eds_config)?;
                let name = if eds.service_name.is_empty() { c.name.clone() } else { eds.service_name.clone() };
                (Discovery::Eds, Some(name))
            }
        },
    };

    let common = c.common_lb_config.as_ref();
    use pb::cluster::common_lb_config::LocalityConfigSpecifier as L;
    let locality_weighted =
        matches!(common.and_then(|x| x.locality_config_specifier.as_ref()), Some(L::LocalityWeightedLbConfig(_)));
    let panic_threshold_percent =
        percent(&ctx, "common_lb_config.healthy_panic_threshold", &common.and_then(|x| x.healthy_panic_threshold))?
            .unwrap_or(50.0);

    let localities = match (&discovery, &c.load_assignment) {
        (Discovery::Eds | Discovery::OriginalDst | Discovery::DynamicForwardProxy { .. }, _) | (_, None) => Vec::new(),
        (d, Some(la)) => {
            let dns = matches!(d, Discovery::StrictDns { .. } | Discovery::LogicalDns { .. });
            let Assignment { localities } = assignment(&ctx, "load_assignment", la, dns, locality_weighted)?;
            localities
        }
    };
    if let Discovery::StrictDns { .. } | Discovery::LogicalDns { .. } = discovery {
        let n: usize = localities.iter().map(|l| l.endpoints.len()).sum();
        if n == 0 {
            return Err(ctx.err("load_assignment", "a DNS cluster needs at least one endpoint"));
        }
        if matches!(discovery, Discovery::LogicalDns { .. }) && n != 1 {
            return Err(ctx.err("load_assignment", "a LOGICAL_DNS cluster takes exactly one endpoint"));
        }
    }

    let lb_policy = lb_policy(&ctx, c, &discovery)?;
    let connect_timeout = dur_or(&ctx, "connect_timeout", &c.connect_timeout, Duration::from_secs(5))?;
    if connect_timeout.is_zero() {
        return Err(ctx.err("connect_timeout", "must be greater than 0"));
    }
    let (protocol, pool) = protocol(&ctx, c)?;
    let circuit_breakers = circuit_breakers(&ctx, &c.circuit_breakers)?;
    let outlier_detection = c.outlier_detection.as_ref().map(|o| outlier(&ctx, o)).transpose()?;
    let health_checks =
        c.health_checks.iter().enumerate().map(|(i, h)| health_check(&ctx, i, h, &c.name)).collect::<R<Vec<_>>>()?;

    Ok(ClusterSpec {
        cluster: Cluster {
            name: c.name.clone(),
            discovery,
            lb_policy,
            localities,
            connect_timeout,
            protocol,
            pool,
            circuit_breakers,
            outlier_detection,
            health_checks,
            panic_threshold_percent,
            metadata: cluster_labels(&c.metadata),
            source_address: source_address(&ctx, &c.upstream_bind_config)?,
        },
        eds_service,
        locality_weighted,
    })
}

/// Fields whose behaviour weft cannot reproduce: the cluster is rejected rather than served
/// differently from what the control plane asked for.
fn reject_unsupported(ctx: &Ctx, c: &pb::Cluster) -> R<()> {
    plaintext_socket(ctx, "transport_socket", &c.transport_socket)?;
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        plaintext_socket(ctx, &format!("transport_socket_matches[{i}].transport_socket"), &m.transport_socket)?;
    }
    if c.transport_socket_matcher.is_some() {
        return Err(ctx.unsupported("transport_socket_matcher"));
    }
    if !c.filters.is_empty() {
        return Err(ctx.unsupported("filters"));
    }
    if c.load_balancing_policy.is_some() {
        return Err(ctx.unsupported("load_balancing_policy"));
    }
    if c.lb_subset_config.as_ref().is_some_and(|s| !s.subset_selectors.is_empty()) {
        return Err(ctx.unsupported("lb_subset_config"));
    }
    if c.upstream_config.is_some() {
        return Err(ctx.unsupported("upstream_config"));
    }
    if !c.dns_resolvers.is_empty() {
        return Err(ctx.unsupported("dns_resolvers"));
    }
    if c.circuit_breakers.as_ref().is_some_and(|cb| !cb.per_host_thresholds.is_empty()) {
        return Err(ctx.unsupported("circuit_breakers.per_host_thresholds"));
    }
    if c.upstream_http_protocol_options.as_ref().is_some_and(|u| u.auto_sni || u.auto_san_validation) {
        return Err(ctx.unsupported("upstream_http_protocol_options"));
    }
    Ok(())
}

/// The config source of EDS (or RDS): only the ADS stream this client runs.
pub(crate) fn ads_source(ctx: &Ctx, field: &str, src: &Option<core::ConfigSource>) -> R<()> {
    use core::config_source::ConfigSourceSpecifier as S;
    match src.as_ref().and_then(|s| s.config_source_specifier.as_ref()) {
        Some(S::Ads(_)) | Some(S::Self_(_)) => Ok(()),
        None => Err(ctx.err(field, "required (ads)")),
        Some(_) => Err(ctx.err(field, "only ads (or self) is supported: this proxy has one ADS stream")),
    }
}

fn lb_policy(ctx: &Ctx, c: &pb::Cluster, discovery: &Discovery) -> R<LbPolicy> {
    use pb::cluster::LbConfig as C;
    use pb::cluster::LbPolicy as P;
    let policy =
        P::try_from(c.lb_policy).map_err(|_| ctx.err("lb_policy", format!("unknown value {}", c.lb_policy)))?;
    let cfg = c.lb_config.as_ref();
    Ok(match policy {
        P::RoundRobin => {
            if let Some(C::RoundRobinLbConfig(r)) = cfg {
                if r.slow_start_config.is_some() {
                    return Err(ctx.unsupported("round_robin_lb_config.slow_start_config"));
                }
            }
            LbPolicy::RoundRobin
        }
        P::LeastRequest => {
            let mut choice_count = 2;
            if let Some(C::LeastRequestLbConfig(l)) = cfg {
                if l.slow_start_config.is_some() {
                    return Err(ctx.unsupported("least_request_lb_config.slow_start_config"));
                }
                choice_count = l.choice_count.as_ref().map(|v| v.value).unwrap_or(2);
                if choice_count < 2 {
                    return Err(ctx.err("least_request_lb_config.choice_count", "must be at least 2"));
                }
            }
            LbPolicy::LeastRequest { choice_count }
        }
        P::Random => LbPolicy::Random,
        P::RingHash => {
            let (mut min, mut max) = (1024u64, 8 * 1024 * 1024u64);
            if let Some(C::RingHashLbConfig(r)) = cfg {
                min = r.minimum_ring_size.as_ref().map(|v| v.value).unwrap_or(min);
                max = r.maximum_ring_size.as_ref().map(|v| v.value).unwrap_or(max);
            }
            if min == 0 || min > max || max > 8 * 1024 * 1024 {
                return Err(
                    ctx.err("ring_hash_lb_config", "need 0 < minimum_ring_size <= maximum_ring_size <= 8388608")
                );
            }
            LbPolicy::RingHash { min_ring_size: min, max_ring_size: max }
        }
        P::Maglev => {
            let mut t = 65537u64;
            if let Some(C::MaglevLbConfig(m)) = cfg {
                t = m.table_size.as_ref().map(|v| v.value).unwrap_or(t);
            }
            if !is_prime(t) || t > 5_000_011 {
                return Err(
                    ctx.err("maglev_lb_config.table_size", format!("{t} must be a prime no larger than 5000011"))
                );
            }
            LbPolicy::Maglev { table_size: t }
        }
        P::ClusterProvided => {
            if !matches!(discovery, Discovery::OriginalDst | Discovery::DynamicForwardProxy { .. }) {
                return Err(ctx.err(
                    "lb_policy",
                    "CLUSTER_PROVIDED is supported only for ORIGINAL_DST and dynamic forward proxy clusters",
                ));
            }
            LbPolicy::RoundRobin
        }
        P::LoadBalancingPolicyConfig => return Err(ctx.unsupported("lb_policy")),
    })
    .and_then(|p| {
        if let Some(C::OriginalDstLbConfig(o)) = cfg {
            if o.use_http_header || o.upstream_port_override.is_some() || o.metadata_key.is_some() {
                return Err(ctx.unsupported("original_dst_lb_config"));
            }
        }
        Ok(p)
    })
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

/// Upstream protocol and pool settings, from the typed `HttpProtocolOptions` extension or the
/// deprecated cluster-level fields.
fn protocol(ctx: &Ctx, c: &pb::Cluster) -> R<(UpstreamProtocol, PoolConfig)> {
    let mut pool = PoolConfig { idle_timeout: UPSTREAM_IDLE_TIMEOUT, ..PoolConfig::default() };
    let mut protocol = UpstreamProtocol::Http1;
    let mut typed_common: Option<core::HttpProtocolOptions> = None;
    let mut max_rpc = c.max_requests_per_connection.as_ref().map(|v| v.value);

    // Deprecated cluster-level protocol selection.
    if let Some(h2) = &c.http2_protocol_options {
        protocol = if c.protocol_selection == 1 { UpstreamProtocol::SameAsDownstream } else { UpstreamProtocol::Http2 };
        if let Some(m) = &h2.max_concurrent_streams {
            pool.max_concurrent_streams = m.value.max(1);
        }
    }

    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    keys.sort();
    for key in keys {
        let any = &c.typed_extension_protocol_options[key];
        let field = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS && type_name(&any.type_url) != HTTP_PROTOCOL_OPTIONS {
            return Err(ctx.unsupported(field));
        }
        let o: upstream_http::HttpProtocolOptions = unpack(ctx, &field, any)?;
        if !o.http_filters.is_empty() {
            return Err(ctx.unsupported(format!("{field}.http_filters")));
        }
        if o.outlier_detection.is_some() {
            return Err(ctx.unsupported(format!("{field}.outlier_detection")));
        }
        if !o.request_mirror_policies.is_empty() || !o.hash_policy.is_empty() || o.retry_policy.is_some() {
            return Err(ctx.unsupported(format!("{field}.retry_policy/hash_policy/request_mirror_policies")));
        }
        if o.upstream_http_protocol_options.as_ref().is_some_and(|u| u.auto_sni || u.auto_san_validation) {
            return Err(ctx.unsupported(format!("{field}.upstream_http_protocol_options")));
        }
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig as E;
        use upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
        match &o.upstream_protocol_options {
            None => {}
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                None | Some(E::HttpProtocolOptions(_)) => protocol = UpstreamProtocol::Http1,
                Some(E::Http2ProtocolOptions(h2)) => {
                    protocol = UpstreamProtocol::Http2;
                    if let Some(m) = &h2.max_concurrent_streams {
                        pool.max_concurrent_streams = m.value.max(1);
                    }
                }
                Some(E::Http3ProtocolOptions(_)) => {
                    return Err(ctx.unsupported(format!("{field}.explicit_http_config.http3_protocol_options")))
                }
            },
            Some(U::UseDownstreamProtocolConfig(d)) => {
                if d.http3_protocol_options.is_some() {
                    return Err(
                        ctx.unsupported(format!("{field}.use_downstream_protocol_config.http3_protocol_options"))
                    );
                }
                // Without HTTP/2 options Envoy sends everything upstream as HTTP/1.1.
                protocol = match &d.http2_protocol_options {
                    Some(h2) => {
                        if let Some(m) = &h2.max_concurrent_streams {
                            pool.max_concurrent_streams = m.value.max(1);
                        }
                        UpstreamProtocol::SameAsDownstream
                    }
                    None => UpstreamProtocol::Http1,
                };
            }
            Some(U::AutoConfig(_)) => {
                return Err(ctx.err(format!("{field}.auto_config"), "not supported (needs TLS with ALPN)"))
            }
        }
        if o.common_http_protocol_options.is_some() {
            typed_common = o.common_http_protocol_options;
        }
    }
    if let Some(co) = typed_common.as_ref().or(c.common_http_protocol_options.as_ref()) {
        let field = "common_http_protocol_options";
        if let Some(d) = &co.idle_timeout {
            let d = duration(ctx, &format!("{field}.idle_timeout"), d)?;
            // Zero disables the idle timeout; the pool still needs a bound, so use a day.
            pool.idle_timeout = if d.is_zero() { Duration::from_secs(86_400) } else { d };
        }
        if let Some(m) = &co.max_requests_per_connection {
            max_rpc = Some(m.value);
        }
    }
    pool.max_requests_per_connection = max_rpc.filter(|n| *n > 0);
    Ok((protocol, pool))
}

fn circuit_breakers(ctx: &Ctx, cb: &Option<pb::CircuitBreakers>) -> R<CircuitBreakers> {
    let d = CircuitBreakers::default();
    // Only the DEFAULT routing priority exists in weft; HIGH thresholds are not used.
    let Some(t) = cb.as_ref().and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0)) else { return Ok(d) };
    let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, dflt: u32| {
        x.as_ref().map(|v| v.value).unwrap_or(dflt)
    };
    let (retry_budget_percent, retry_budget_min_concurrency) = match &t.retry_budget {
        None => (None, d.retry_budget_min_concurrency),
        Some(rb) => (
            Some(
                percent(ctx, "circuit_breakers.thresholds.retry_budget.budget_percent", &rb.budget_percent)?
                    .unwrap_or(20.0),
            ),
            v(&rb.min_retry_concurrency, 3),
        ),
    };
    Ok(CircuitBreakers {
        max_connections: v(&t.max_connections, d.max_connections),
        max_pending_requests: v(&t.max_pending_requests, d.max_pending_requests),
        max_requests: v(&t.max_requests, d.max_requests),
        max_retries: v(&t.max_retries, d.max_retries),
        retry_budget_percent,
        retry_budget_min_concurrency,
    })
}

fn outlier(ctx: &Ctx, o: &pb::OutlierDetection) -> R<OutlierDetection> {
    let f = "outlier_detection";
    let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>| x.as_ref().map(|v| v.value);
    // Enforcement is a probability in Envoy; weft ejects always or never.
    let enforcing = |name: &str, x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, dflt: u32| -> R<bool> {
        match v(x).unwrap_or(dflt) {
            0 => Ok(false),
            100 => Ok(true),
            n => Err(ctx.err(format!("{f}.{name}"), format!("{n}: only 0 or 100 is supported"))),
        }
    };
    if o.split_external_local_origin_errors {
        return Err(ctx.unsupported(format!("{f}.split_external_local_origin_errors")));
    }
    if o.success_rate_minimum_hosts.is_some()
        || o.success_rate_request_volume.is_some()
        || o.success_rate_stdev_factor.is_some()
        || v(&o.enforcing_success_rate).is_some_and(|n| n > 0)
    {
        return Err(ctx.err(format!("{f}.success_rate"), "success-rate ejection is not supported"));
    }
    if o.failure_percentage_threshold.is_some() || v(&o.enforcing_failure_percentage).is_some_and(|n| n > 0) {
        return Err(ctx.err(format!("{f}.failure_percentage"), "failure-percentage ejection is not supported"));
    }
    if !o.monitors.is_empty() {
        return Err(ctx.unsupported(format!("{f}.monitors")));
    }
    let d = OutlierDetection::default();
    let consecutive_5xx = if enforcing("enforcing_consecutive_5xx", &o.enforcing_consecutive_5xx, 100)? {
        v(&o.consecutive_5xx).unwrap_or(5)
    } else {
        0
    };
    let consecutive_gateway_failure =
        if enforcing("enforcing_consecutive_gateway_failure", &o.enforcing_consecutive_gateway_failure, 0)? {
            v(&o.consecutive_gateway_failure).unwrap_or(5)
        } else {
            0
        };
    let od = OutlierDetection {
        consecutive_5xx,
        consecutive_gateway_failure,
        consecutive_local_origin_failure: v(&o.consecutive_local_origin_failure)
            .unwrap_or(d.consecutive_local_origin_failure),
        interval: dur_or(ctx, &format!("{f}.interval"), &o.interval, d.interval)?,
        base_ejection_time: dur_or(
            ctx,
            &format!("{f}.base_ejection_time"),
            &o.base_ejection_time,
            d.base_ejection_time,
        )?,
        max_ejection_time: dur_or(ctx, &format!("{f}.max_ejection_time"), &o.max_ejection_time, d.max_ejection_time)?,
        max_ejection_percent: v(&o.max_ejection_percent).unwrap_or(d.max_ejection_percent),
    };
    if od.max_ejection_percent > 100 {
        return Err(ctx.err(format!("{f}.max_ejection_percent"), "must be at most 100"));
    }
    if od.interval.is_zero() || od.base_ejection_time.is_zero() {
        return Err(ctx.err(format!("{f}.interval"), "interval and base_ejection_time must be greater than 0"));
    }
    Ok(od)
}

fn health_check(ctx: &Ctx, i: usize, h: &core::HealthCheck, cluster: &str) -> R<HealthCheck> {
    use core::health_check::HealthChecker as H;
    let f = format!("health_checks[{i}]");
    if h.alt_port.is_some() {
        return Err(ctx.unsupported(format!("{f}.alt_port")));
    }
    if h.tls_options.is_some() || h.transport_socket_match_criteria.is_some() {
        return Err(ctx.unsupported(format!("{f}.tls_options")));
    }
    let kind = match &h.health_checker {
        Some(H::HttpHealthCheck(hh)) => {
            let hf = format!("{f}.http_health_check");
            if hh.send.is_some() || !hh.receive.is_empty() {
                return Err(ctx.unsupported(format!("{hf}.send/receive")));
            }
            if !hh.request_headers_to_add.is_empty() || !hh.request_headers_to_remove.is_empty() {
                return Err(ctx.unsupported(format!("{hf}.request_headers_to_add")));
            }
            if hh.codec_client_type != 0 {
                return Err(ctx.err(format!("{hf}.codec_client_type"), "only HTTP1 is supported"));
            }
            if hh.method != 0 && hh.method != 1 {
                return Err(ctx.err(format!("{hf}.method"), "only GET is supported"));
            }
            let path = if hh.path.is_empty() { "/".to_string() } else { hh.path.clone() };
            if !path.starts_with('/') {
                return Err(ctx.err(format!("{hf}.path"), "must start with '/'"));
            }
            let mut ranges = Vec::new();
            for (j, r) in hh.expected_statuses.iter().enumerate() {
                // Int64Range is [start, end).
                if !(100..=599).contains(&r.start) || r.end <= r.start || r.end > 600 {
                    return Err(ctx.err(
                        format!("{hf}.expected_statuses[{j}]"),
                        format!("invalid range [{}, {})", r.start, r.end),
                    ));
                }
                ranges.push((r.start as u16, (r.end - 1) as u16));
            }
            if ranges.is_empty() {
                ranges.push((200, 200));
            }
            // Envoy sends the cluster name as Host when none is configured.
            let host = if hh.host.is_empty() { cluster.to_string() } else { hh.host.clone() };
            HealthCheckKind::Http { path, host: Some(host), expected_statuses: ranges }
        }
        Some(H::TcpHealthCheck(t)) => {
            if t.send.is_some() || !t.receive.is_empty() || t.proxy_protocol_config.is_some() {
                return Err(
                    ctx.err(format!("{f}.tcp_health_check"), "only connect checks (no send/receive) are supported")
                );
            }
            HealthCheckKind::Tcp
        }
        Some(H::GrpcHealthCheck(_)) => return Err(ctx.unsupported(format!("{f}.grpc_health_check"))),
        Some(H::CustomHealthCheck(_)) => return Err(ctx.unsupported(format!("{f}.custom_health_check"))),
        None => return Err(ctx.err(&f, "a health checker (http_health_check or tcp_health_check) is required")),
    };
    let interval = dur_or(ctx, &format!("{f}.interval"), &h.interval, Duration::from_secs(5))?;
    let timeout = dur_or(ctx, &format!("{f}.timeout"), &h.timeout, Duration::from_secs(1))?;
    if interval.is_zero() || timeout.is_zero() {
        return Err(ctx.err(format!("{f}.interval"), "interval and timeout must be greater than 0"));
    }
    Ok(HealthCheck {
        kind,
        interval,
        timeout,
        unhealthy_threshold: h.unhealthy_threshold.as_ref().map(|v| v.value).unwrap_or(3).max(1),
        healthy_threshold: h.healthy_threshold.as_ref().map(|v| v.value).unwrap_or(1).max(1),
    })
}

/// Istio's cluster metadata (`filter_metadata.istio.services[0]`) as destination labels.
fn cluster_labels(md: &Option<core::Metadata>) -> Labels {
    let mut out = Labels::new();
    if let Some(Kind::ListValue(list)) = metadata_field(md, "istio", "services") {
        if let Some(Kind::StructValue(s)) = list.values.first().and_then(|v| v.kind.as_ref()) {
            for (from, to) in [("host", "service"), ("name", "service_name"), ("namespace", "namespace")] {
                if let Some(Kind::StringValue(v)) = s.fields.get(from).and_then(|v| v.kind.as_ref()) {
                    out.insert(to.to_string(), v.clone());
                }
            }
        }
    }
    out
}

/// `upstream_bind_config`: the local IP upstream connections come from (port chosen by the system).
fn source_address(ctx: &Ctx, b: &Option<core::BindConfig>) -> R<Option<std::net::IpAddr>> {
    let Some(b) = b else { return Ok(None) };
    let f = "upstream_bind_config";
    if b.freebind.as_ref().is_some_and(|v| v.value)
        || !b.socket_options.is_empty()
        || !b.extra_source_addresses.is_empty()
        || !b.additional_source_addresses.is_empty()
        || b.local_address_selector.is_some()
    {
        return Err(ctx.err(f, "only source_address is supported"));
    }
    let Some(sa) = &b.source_address else { return Ok(None) };
    let addr = core::Address { address: Some(core::address::Address::SocketAddress(sa.clone())) };
    let ip = socket_address(ctx, &format!("{f}.source_address"), &Some(addr))?;
    if ip.port() != 0 {
        return Err(ctx.err(format!("{f}.source_address.port_value"), "must be 0 (the system picks the port)"));
    }
    Ok(Some(ip.ip()))
}
