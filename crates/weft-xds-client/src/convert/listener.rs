//! `envoy.config.listener.v3.Listener` (with its HTTP connection manager and TCP proxy
//! filters) → [`ListenerSpec`].

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use weft_config::{
    ChainAction, ChainMatch, ClusterSpecifier, DownstreamCodec, FilterChain, HttpConnectionManager, HttpLimits,
    Listener, RouteSource, TcpProxy, Transport, WeightedCluster,
};

use super::cluster::ads_source;
use super::common::*;
use super::route::route_config_in;

/// A converted listener and the route configurations it needs over RDS.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub listener: Listener,
    /// `route_config_name`s of its connection managers (RDS subscriptions), sorted, no repeats.
    pub rds: Vec<String>,
}

pub const HCM: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
pub const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const FORWARD_PROXY: &str = "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
/// HTTP filters that only produce statistics or act on things weft does not have; ignored.
const IGNORED_HTTP_FILTERS: &[&str] = &[
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    // A CORS filter does nothing without a per-route CORS policy, and those are rejected.
    "envoy.extensions.filters.http.cors.v3.Cors",
];

/// Envoy's default `listener_filters_timeout`.
const DETECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Converts one listener. `Ok(None)`: an API listener (proxyless gRPC), which a proxy ignores.
pub fn listener(l: &pb::Listener) -> R<Option<ListenerSpec>> {
    let ctx = Ctx::new("Listener", &l.name);
    if l.name.is_empty() {
        return Err(ctx.err("name", "must not be empty"));
    }
    if l.api_listener.is_some() {
        return Ok(None);
    }
    if l.listener_specifier.is_some() {
        return Err(ctx.unsupported("internal_listener"));
    }
    if l.bind_to_port.as_ref().is_some_and(|b| !b.value) {
        return Err(ctx.err("bind_to_port", "false is not supported (use filter chains on the capture listener)"));
    }
    if !l.additional_addresses.is_empty() {
        return Err(ctx.unsupported("additional_addresses"));
    }
    if l.fcds_config.is_some() {
        return Err(ctx.unsupported("fcds_config"));
    }
    if l.filter_chain_matcher.is_some() {
        return Err(ctx.unsupported("filter_chain_matcher"));
    }
    if l.transparent.as_ref().is_some_and(|t| t.value) {
        return Err(ctx.unsupported("transparent"));
    }
    if l.udp_listener_config.is_some() {
        return Err(ctx.unsupported("udp_listener_config"));
    }
    let address = socket_address(&ctx, "address", &l.address)?;
    let mut use_original_dst = l.use_original_dst.as_ref().is_some_and(|b| b.value);
    let mut http_inspection = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let field = format!("listener_filters[{i}]");
        use pb::listener_filter::ConfigType as C;
        let kind = match &f.config_type {
            Some(C::TypedConfig(any)) => type_name(&any.type_url).to_string(),
            Some(C::ConfigDiscovery(_)) => return Err(ctx.unsupported(format!("{field}.config_discovery"))),
            None => match f.name.as_str() {
                "envoy.filters.listener.tls_inspector" => TLS_INSPECTOR.to_string(),
                "envoy.filters.listener.original_dst" => ORIGINAL_DST.to_string(),
                "envoy.filters.listener.http_inspector" => HTTP_INSPECTOR.to_string(),
                other => other.to_string(),
            },
        };
        if f.filter_disabled.is_some() {
            return Err(ctx.unsupported(format!("{field}.filter_disabled")));
        }
        match kind.as_str() {
            // weft reads the ClientHello whenever a chain matches on SNI, ALPN or transport.
            TLS_INSPECTOR => {}
            HTTP_INSPECTOR => http_inspection = true,
            ORIGINAL_DST => use_original_dst = true,
            other => return Err(ctx.err(field, format!("listener filter {other:?} is not supported"))),
        }
    }
    let detection_timeout =
        match timeout(&ctx, "listener_filters_timeout", &l.listener_filters_timeout, Some(DETECTION_TIMEOUT))? {
            Some(d) => d,
            // Zero disables Envoy's timeout; weft keeps a bound on every wait.
            None => Duration::from_secs(60),
        };

    let mut rds = Vec::new();
    let mut filter_chains: Vec<FilterChain> = Vec::with_capacity(l.filter_chains.len());
    for (i, c) in l.filter_chains.iter().enumerate() {
        let field = format!("filter_chains[{i}]");
        let chain = filter_chain(&ctx, &field, c, &l.name, i, &mut rds)?;
        if filter_chains.iter().any(|x| x.matcher == chain.matcher) {
            return Err(ctx.err(format!("{field}.filter_chain_match"), "two filter chains have the same match"));
        }
        filter_chains.push(chain);
    }
    let default_chain = match &l.default_filter_chain {
        None => None,
        Some(c) => {
            if c.filter_chain_match.is_some() {
                return Err(ctx.err("default_filter_chain.filter_chain_match", "must be empty"));
            }
            let mut chain = filter_chain(&ctx, "default_filter_chain", c, &l.name, usize::MAX, &mut rds)?;
            if c.name.is_empty() {
                chain.name = "default".into();
            }
            Some(chain)
        }
    };
    if filter_chains.is_empty() && default_chain.is_none() {
        return Err(ctx.err("filter_chains", "a listener needs filter_chains or a default_filter_chain"));
    }
    rds.sort();
    rds.dedup();
    Ok(Some(ListenerSpec {
        listener: Listener {
            name: l.name.clone(),
            address,
            use_original_dst,
            detection_timeout,
            http_inspection,
            filter_chains,
            default_chain,
        },
        rds,
    }))
}

fn filter_chain(
    ctx: &Ctx,
    field: &str,
    c: &pb::FilterChain,
    listener: &str,
    index: usize,
    rds: &mut Vec<String>,
) -> R<FilterChain> {
    if c.use_proxy_proto.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.unsupported(format!("{field}.use_proxy_proto")));
    }
    plaintext_socket(ctx, &format!("{field}.transport_socket"), &c.transport_socket)?;
    let matcher = match &c.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => chain_match(ctx, &format!("{field}.filter_chain_match"), m)?,
    };
    // The last network filter terminates the chain; weft has no other network filters.
    let Some((last, rest)) = c.filters.split_last() else {
        return Err(
            ctx.err(format!("{field}.filters"), "a filter chain needs an http_connection_manager or tcp_proxy filter")
        );
    };
    if let Some(extra) = rest.first() {
        return Err(ctx.err(
            format!("{field}.filters[0]"),
            format!("network filter {:?} is not supported (only one http_connection_manager or tcp_proxy)", extra.name),
        ));
    }
    let ff = format!("{field}.filters[{}]", c.filters.len() - 1);
    use pb::filter::ConfigType as C;
    let any = match &last.config_type {
        Some(C::TypedConfig(any)) => any,
        Some(C::ConfigDiscovery(_)) => return Err(ctx.unsupported(format!("{ff}.config_discovery"))),
        None => return Err(ctx.err(format!("{ff}.typed_config"), "required")),
    };
    let action = match type_name(&any.type_url) {
        HCM => {
            let h: hcm::HttpConnectionManager = unpack(ctx, &format!("{ff}.typed_config"), any)?;
            let (h, name) = http_connection_manager(ctx, &format!("{ff}.typed_config"), &h, listener)?;
            rds.extend(name);
            ChainAction::Http(Arc::new(h))
        }
        TCP_PROXY => {
            let t: tcp::TcpProxy = unpack(ctx, &format!("{ff}.typed_config"), any)?;
            ChainAction::Tcp(tcp_proxy(ctx, &format!("{ff}.typed_config"), &t, listener)?)
        }
        other => return Err(ctx.err(ff, format!("network filter {other:?} is not supported"))),
    };
    let name = if !c.name.is_empty() {
        c.name.clone()
    } else if index == usize::MAX {
        "default".into()
    } else {
        format!("chain-{index}")
    };
    Ok(FilterChain { name, matcher, action })
}

fn chain_match(ctx: &Ctx, f: &str, m: &pb::FilterChainMatch) -> R<ChainMatch> {
    if !m.direct_source_prefix_ranges.is_empty() {
        return Err(ctx.unsupported(format!("{f}.direct_source_prefix_ranges")));
    }
    if m.source_type != 0 {
        return Err(ctx.unsupported(format!("{f}.source_type")));
    }
    if !m.source_ports.is_empty() {
        return Err(ctx.unsupported(format!("{f}.source_ports")));
    }
    if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        return Err(ctx.unsupported(format!("{f}.address_suffix")));
    }
    let destination_port = match &m.destination_port {
        None => None,
        Some(p) if (1..=65535).contains(&p.value) => Some(p.value as u16),
        Some(p) => return Err(ctx.err(format!("{f}.destination_port"), format!("{} is not a port", p.value))),
    };
    let destination_ips = m
        .prefix_ranges
        .iter()
        .enumerate()
        .map(|(i, c)| cidr(ctx, &format!("{f}.prefix_ranges[{i}]"), c))
        .collect::<R<Vec<_>>>()?;
    let source_ips = m
        .source_prefix_ranges
        .iter()
        .enumerate()
        .map(|(i, c)| cidr(ctx, &format!("{f}.source_prefix_ranges[{i}]"), c))
        .collect::<R<Vec<_>>>()?;
    let transport = match m.transport_protocol.as_str() {
        "" => None,
        "tls" => Some(Transport::Tls),
        "raw_buffer" => Some(Transport::RawBuffer),
        other => {
            return Err(
                ctx.err(format!("{f}.transport_protocol"), format!("unknown value {other:?} (tls or raw_buffer)"))
            )
        }
    };
    let mut server_names = Vec::with_capacity(m.server_names.len());
    for (i, n) in m.server_names.iter().enumerate() {
        let n = n.to_ascii_lowercase();
        let rest = n.strip_prefix("*.").unwrap_or(&n);
        if rest.is_empty()
            || rest.contains('*')
            || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(ctx.err(format!("{f}.server_names[{i}]"), format!("invalid server name {n:?}")));
        }
        server_names.push(n);
    }
    Ok(ChainMatch {
        destination_port,
        destination_ips,
        source_ips,
        server_names,
        transport,
        alpn: m.application_protocols.clone(),
    })
}

/// Envoy's defaults where a field is absent: stream idle 5 min, connection idle 1 h, no request
/// timeout, request ids generated, `use_remote_address` false.
pub(crate) fn http_connection_manager(
    ctx: &Ctx,
    f: &str,
    h: &hcm::HttpConnectionManager,
    listener: &str,
) -> R<(HttpConnectionManager, Option<String>)> {
    reject_hcm_fields(ctx, f, h)?;
    let codec = match h.codec_type {
        0 => DownstreamCodec::Auto,
        1 => DownstreamCodec::Http1,
        2 => DownstreamCodec::Http2,
        other => {
            return Err(ctx.err(format!("{f}.codec_type"), format!("{other}: only AUTO, HTTP1 and HTTP2 are supported")))
        }
    };
    http_filters(ctx, f, &h.http_filters)?;
    use hcm::http_connection_manager::RouteSpecifier as RS;
    let (routes, rds) = match &h.route_specifier {
        Some(RS::Rds(r)) => {
            ads_source(ctx, &format!("{f}.rds.config_source"), &r.config_source)?;
            if r.route_config_name.is_empty() {
                return Err(ctx.err(format!("{f}.rds.route_config_name"), "must not be empty"));
            }
            (RouteSource::Named(r.route_config_name.clone()), Some(r.route_config_name.clone()))
        }
        Some(RS::RouteConfig(rc)) => {
            (RouteSource::Inline(Arc::new(route_config_in(ctx, &format!("{f}.route_config"), rc)?)), None)
        }
        Some(RS::ScopedRoutes(_)) => return Err(ctx.unsupported(format!("{f}.scoped_routes"))),
        None => return Err(ctx.err(f, "rds or route_config is required")),
    };
    let common = h.common_http_protocol_options.as_ref();
    let mut websocket = false;
    let mut connect = false;
    for (i, u) in h.upgrade_configs.iter().enumerate() {
        let enabled = u.enabled.as_ref().map(|b| b.value).unwrap_or(true);
        if !u.filters.is_empty() {
            return Err(ctx.unsupported(format!("{f}.upgrade_configs[{i}].filters")));
        }
        if u.upgrade_type.eq_ignore_ascii_case("websocket") {
            websocket = enabled;
        } else if u.upgrade_type.eq_ignore_ascii_case("CONNECT") {
            connect = enabled;
        } else if enabled {
            return Err(ctx.err(
                format!("{f}.upgrade_configs[{i}].upgrade_type"),
                format!("{:?} is not supported", u.upgrade_type),
            ));
        }
    }
    let limits = HttpLimits {
        max_request_headers_bytes: h.max_request_headers_kb.as_ref().map(|v| v.value).unwrap_or(60) as usize * 1024,
        max_headers_count: common.and_then(|c| c.max_headers_count.as_ref()).map(|v| v.value).unwrap_or(100) as usize,
        ..HttpLimits::default()
    };
    if limits.max_request_headers_bytes == 0 || limits.max_request_headers_bytes > 8 * 1024 * 1024 {
        return Err(ctx.err(format!("{f}.max_request_headers_kb"), "must be between 1 and 8192"));
    }
    if limits.max_headers_count == 0 || limits.max_headers_count > 10_000 {
        return Err(
            ctx.err(format!("{f}.common_http_protocol_options.max_headers_count"), "must be between 1 and 10000")
        );
    }
    let model = HttpConnectionManager {
        stat_prefix: if h.stat_prefix.is_empty() { listener.to_string() } else { h.stat_prefix.clone() },
        codec,
        routes,
        request_timeout: timeout(ctx, &format!("{f}.request_timeout"), &h.request_timeout, None)?,
        stream_idle_timeout: timeout(
            ctx,
            &format!("{f}.stream_idle_timeout"),
            &h.stream_idle_timeout,
            Some(Duration::from_secs(300)),
        )?,
        idle_timeout: timeout(
            ctx,
            &format!("{f}.common_http_protocol_options.idle_timeout"),
            &common.and_then(|c| c.idle_timeout),
            Some(Duration::from_secs(3600)),
        )?,
        websocket,
        connect,
        generate_request_id: h.generate_request_id.as_ref().map(|b| b.value).unwrap_or(true),
        use_remote_address: h.use_remote_address.as_ref().map(|b| b.value).unwrap_or(false),
        limits,
        forwarded_proto: "http".into(),
        server_name: if h.server_name.is_empty() { "weft".into() } else { h.server_name.clone() },
    };
    Ok((model, rds))
}

fn reject_hcm_fields(ctx: &Ctx, f: &str, h: &hcm::HttpConnectionManager) -> R<()> {
    let checks: [(bool, &str); 16] = [
        (h.local_reply_config.is_some(), "local_reply_config"),
        (!h.via.is_empty(), "via"),
        (h.always_set_request_id_in_response, "always_set_request_id_in_response"),
        (h.skip_xff_append, "skip_xff_append"),
        (!h.original_ip_detection_extensions.is_empty(), "original_ip_detection_extensions"),
        (!h.early_header_mutation_extensions.is_empty(), "early_header_mutation_extensions"),
        (h.strip_matching_host_port, "strip_matching_host_port"),
        (
            h.http_protocol_options.as_ref().and_then(|o| o.allow_absolute_url.as_ref()).is_some_and(|b| !b.value),
            "http_protocol_options.allow_absolute_url (false)",
        ),
        (h.strip_port_mode.is_some(), "strip_any_host_port"),
        (h.http3_protocol_options.is_some(), "http3_protocol_options"),
        (h.append_x_forwarded_port, "append_x_forwarded_port"),
        (h.forward_proto_config.is_some(), "forward_proto_config"),
        (h.proxy_status_config.is_some(), "proxy_status_config"),
        (h.scheme_header_transformation.is_some(), "scheme_header_transformation"),
        (
            h.common_http_protocol_options.as_ref().is_some_and(|c| c.headers_with_underscores_action != 0),
            "common_http_protocol_options.headers_with_underscores_action",
        ),
        (
            h.common_http_protocol_options
                .as_ref()
                .and_then(|c| c.max_stream_duration.as_ref())
                .is_some_and(|d| d.seconds != 0 || d.nanos != 0),
            "common_http_protocol_options.max_stream_duration",
        ),
    ];
    match checks.iter().find(|(bad, _)| *bad) {
        Some((_, field)) => Err(ctx.unsupported(format!("{f}.{field}"))),
        None => Ok(()),
    }
}

/// Checks the HTTP filter list: fault (with an empty filter-level config: faults come per route)
/// and router, which must be last. Optional or statistics-only filters are ignored.
fn http_filters(ctx: &Ctx, f: &str, filters: &[hcm::HttpFilter]) -> R<()> {
    let mut router_at = None;
    for (i, hf) in filters.iter().enumerate() {
        let field = format!("{f}.http_filters[{i}]");
        if hf.disabled {
            continue;
        }
        use hcm::http_filter::ConfigType as C;
        let kind = match &hf.config_type {
            Some(C::TypedConfig(any)) => type_name(&any.type_url).to_string(),
            Some(C::ConfigDiscovery(_)) if hf.is_optional => continue,
            Some(C::ConfigDiscovery(_)) => return Err(ctx.unsupported(format!("{field}.config_discovery"))),
            None => match hf.name.as_str() {
                "envoy.filters.http.router" | "envoy.router" => ROUTER.to_string(),
                "envoy.filters.http.fault" | "envoy.fault" => FAULT.to_string(),
                "envoy.filters.http.dynamic_forward_proxy" => FORWARD_PROXY.to_string(),
                other => other.to_string(),
            },
        };
        match kind.as_str() {
            ROUTER => {
                if let Some(C::TypedConfig(any)) = &hf.config_type {
                    let r: Router = unpack(ctx, &format!("{field}.typed_config"), any)?;
                    if !r.upstream_http_filters.is_empty() {
                        return Err(ctx.unsupported(format!("{field}.typed_config.upstream_http_filters")));
                    }
                }
                router_at = Some(i);
            }
            FAULT => {
                if let Some(C::TypedConfig(any)) = &hf.config_type {
                    let fc: HttpFault = unpack(ctx, &format!("{field}.typed_config"), any)?;
                    if fc.delay.is_some() || fc.abort.is_some() || fc.response_rate_limit.is_some() {
                        return Err(ctx.err(
                            format!("{field}.typed_config"),
                            "filter-level faults are not supported: configure them per route (typed_per_filter_config)",
                        ));
                    }
                }
            }
            // The forward proxy clusters resolve the authority themselves; the filter's DNS cache
            // settings are checked like theirs.
            FORWARD_PROXY => {
                use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3 as dfp;
                let Some(C::TypedConfig(any)) = &hf.config_type else {
                    return Err(ctx.err(format!("{field}.typed_config"), "required"));
                };
                let tf = format!("{field}.typed_config");
                let fc: dfp::FilterConfig = unpack(ctx, &tf, any)?;
                if fc.allow_dynamic_host_from_filter_state {
                    return Err(ctx.unsupported(format!("{tf}.allow_dynamic_host_from_filter_state")));
                }
                use dfp::filter_config::ImplementationSpecifier as S;
                match &fc.implementation_specifier {
                    Some(S::DnsCacheConfig(d)) => {
                        super::cluster::dns_cache(ctx, &format!("{tf}.dns_cache_config"), d)?;
                    }
                    Some(S::SubClusterConfig(_)) => return Err(ctx.unsupported(format!("{tf}.sub_cluster_config"))),
                    None => return Err(ctx.err(format!("{tf}.dns_cache_config"), "required")),
                }
            }
            k if IGNORED_HTTP_FILTERS.contains(&k) => {}
            _ if hf.is_optional => {}
            other => return Err(ctx.err(field, format!("http filter {:?} ({other}) is not supported", hf.name))),
        }
    }
    match router_at {
        Some(i) if i + 1 == filters.len() => Ok(()),
        Some(i) => Err(ctx.err(format!("{f}.http_filters[{i}]"), "the router must be the last http filter")),
        None => Err(ctx.err(format!("{f}.http_filters"), "the router filter is required")),
    }
}

fn tcp_proxy(ctx: &Ctx, f: &str, t: &tcp::TcpProxy, listener: &str) -> R<TcpProxy> {
    if t.on_demand.is_some() {
        return Err(ctx.unsupported(format!("{f}.on_demand")));
    }
    if t.metadata_match.is_some() {
        return Err(ctx.unsupported(format!("{f}.metadata_match")));
    }
    if t.tunneling_config.is_some() {
        return Err(ctx.unsupported(format!("{f}.tunneling_config")));
    }
    if !t.proxy_protocol_tlvs.is_empty() {
        return Err(ctx.unsupported(format!("{f}.proxy_protocol_tlvs")));
    }
    use tcp::tcp_proxy::ClusterSpecifier as C;
    let cluster = match &t.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterSpecifier::Single(c.clone()),
        Some(C::Cluster(_)) | None => {
            return Err(ctx.err(format!("{f}.cluster"), "a cluster or weighted_clusters is required"))
        }
        Some(C::WeightedClusters(w)) => {
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                let cf = format!("{f}.weighted_clusters.clusters[{i}]");
                if c.metadata_match.is_some() {
                    return Err(ctx.unsupported(format!("{cf}.metadata_match")));
                }
                if c.name.is_empty() {
                    return Err(ctx.err(format!("{cf}.name"), "must not be empty"));
                }
                out.push(WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight,
                    request_headers: Default::default(),
                    response_headers: Default::default(),
                    host_rewrite: None,
                });
            }
            if out.iter().map(|c| c.weight as u64).sum::<u64>() == 0 {
                return Err(ctx.err(format!("{f}.weighted_clusters"), "total weight must be greater than 0"));
            }
            ClusterSpecifier::Weighted(out)
        }
    };
    Ok(TcpProxy {
        stat_prefix: if t.stat_prefix.is_empty() { listener.to_string() } else { t.stat_prefix.clone() },
        cluster,
        idle_timeout: timeout(ctx, &format!("{f}.idle_timeout"), &t.idle_timeout, Some(Duration::from_secs(3600)))?,
    })
}
