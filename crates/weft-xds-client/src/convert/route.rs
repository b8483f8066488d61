//! `envoy.config.route.v3.RouteConfiguration` → [`RouteConfig`], including per-route faults
//! from `typed_per_filter_config["envoy.filters.http.fault"]`.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use envoy_types::pb::google::protobuf::Any;
use weft_config::{
    AbortStatus, ClusterSpecifier, DirectResponse, Fault, FaultAbort, FaultDelay, Forward, HashPolicy, HeaderMatcher,
    HeaderRule, Mirror, PathMatch, Pattern, QueryMatcher, Redirect, RegexRewrite, RetryOn, RetryPolicy, Route,
    RouteAction, RouteConfig, RouteMatch, StringMatch, VirtualHost, WeightedCluster,
};

use super::common::*;
use super::listener::FAULT;

const FILTER_CONFIG: &str = "envoy.config.route.v3.FilterConfig";
const PREVIOUS_PRIORITIES: &str = "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig";
const PREVIOUS_HOSTS: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Converts an RDS resource.
pub fn route_configuration(rc: &pb::RouteConfiguration) -> R<RouteConfig> {
    let ctx = Ctx::new("RouteConfiguration", &rc.name);
    if rc.name.is_empty() {
        return Err(ctx.err("name", "must not be empty"));
    }
    route_config_in(&ctx, "", rc)
}

/// Converts a route configuration inside another resource (an inline `route_config`), with
/// fields named under `field`.
pub(crate) fn route_config_in(ctx: &Ctx, field: &str, rc: &pb::RouteConfiguration) -> R<RouteConfig> {
    let checks: [(bool, &str); 6] = [
        (rc.vhds.is_some(), "vhds"),
        (rc.most_specific_header_mutations_wins, "most_specific_header_mutations_wins"),
        (rc.ignore_port_in_host_matching, "ignore_port_in_host_matching"),
        (!rc.vhost_header.is_empty(), "vhost_header"),
        (!rc.cluster_specifier_plugins.is_empty(), "cluster_specifier_plugins"),
        (!rc.route_specifiers.is_empty(), "route_specifiers"),
    ];
    if let Some((_, f)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(join(field, f)));
    }
    let rc_fault = per_filter_fault(ctx, field, &rc.typed_per_filter_config)?;
    let rc_mirrors = mirrors(ctx, field, &rc.request_mirror_policies)?;
    let request_headers = header_ops(ctx, field, &rc.request_headers_to_add, &rc.request_headers_to_remove, "request")?;
    let response_headers =
        header_ops(ctx, field, &rc.response_headers_to_add, &rc.response_headers_to_remove, "response")?;
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    let mut names = HashSet::new();
    let mut all_domains = BTreeSet::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vf = join(field, &format!("virtual_hosts[{i}]"));
        if !names.insert(vh.name.as_str()) {
            return Err(ctx.err(format!("{vf}.name"), format!("duplicate virtual host name {:?}", vh.name)));
        }
        virtual_hosts.push(virtual_host(ctx, &vf, vh, &mut all_domains, &rc_fault, &rc_mirrors)?);
    }
    Ok(RouteConfig { name: rc.name.clone(), virtual_hosts, request_headers, response_headers })
}

/// A fault for routes below: `None` = nothing said at this level, `Some(None)` = disabled here.
type FaultLevel = Option<Option<Fault>>;

fn virtual_host(
    ctx: &Ctx,
    f: &str,
    vh: &pb::VirtualHost,
    all_domains: &mut BTreeSet<String>,
    parent_fault: &FaultLevel,
    parent_mirrors: &[Mirror],
) -> R<VirtualHost> {
    if vh.name.is_empty() {
        return Err(ctx.err(format!("{f}.name"), "must not be empty"));
    }
    let checks: [(bool, &str); 8] = [
        (vh.matcher.is_some(), "matcher"),
        (vh.require_tls != 0, "require_tls"),
        (!vh.rate_limits.is_empty(), "rate_limits"),
        (vh.cors.is_some(), "cors"),
        (vh.retry_policy_typed_config.is_some(), "retry_policy_typed_config"),
        (vh.hedge_policy.is_some(), "hedge_policy"),
        (vh.include_attempt_count_in_response, "include_attempt_count_in_response"),
        (!vh.route_specifiers.is_empty(), "route_specifiers"),
    ];
    if let Some((_, field)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(format!("{f}.{field}")));
    }
    if vh.domains.is_empty() {
        return Err(ctx.err(format!("{f}.domains"), "at least one domain is required (\"*\" for any)"));
    }
    let mut domains = Vec::with_capacity(vh.domains.len());
    for (i, d) in vh.domains.iter().enumerate() {
        let d = d.to_ascii_lowercase();
        let stars = d.matches('*').count();
        let ok = d == "*" || stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*')));
        if !ok || d.is_empty() {
            return Err(ctx.err(
                format!("{f}.domains[{i}]"),
                format!("invalid domain {d:?} (a wildcard only as prefix or suffix)"),
            ));
        }
        if !all_domains.insert(d.clone()) {
            return Err(ctx.err(format!("{f}.domains[{i}]"), format!("domain {d:?} appears in two virtual hosts")));
        }
        domains.push(d);
    }
    let own_fault = per_filter_fault(ctx, f, &vh.typed_per_filter_config)?;
    let fault_here = if own_fault.is_some() { own_fault } else { parent_fault.clone() };
    let own_mirrors = mirrors(ctx, f, &vh.request_mirror_policies)?;
    let mirrors_here = if own_mirrors.is_empty() { parent_mirrors.to_vec() } else { own_mirrors };
    let retry = vh.retry_policy.as_ref().map(|r| retry_policy(ctx, &format!("{f}.retry_policy"), r)).transpose()?;
    let request_headers = header_ops(ctx, f, &vh.request_headers_to_add, &vh.request_headers_to_remove, "request")?;
    let response_headers = header_ops(ctx, f, &vh.response_headers_to_add, &vh.response_headers_to_remove, "response")?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(ctx, &format!("{f}.routes[{i}]"), r, &fault_here, &mirrors_here))
        .collect::<R<Vec<_>>>()?;
    Ok(VirtualHost { name: vh.name.clone(), domains, routes, request_headers, response_headers, retry })
}

fn route(ctx: &Ctx, f: &str, r: &pb::Route, parent_fault: &FaultLevel, parent_mirrors: &[Mirror]) -> R<Route> {
    if !r.route_specifiers.is_empty() {
        return Err(ctx.unsupported(format!("{f}.route_specifiers")));
    }
    let Some(m) = &r.r#match else { return Err(ctx.err(format!("{f}.match"), "required")) };
    let matcher = route_match(ctx, &format!("{f}.match"), m)?;
    use pb::route::Action as A;
    let action = match &r.action {
        Some(A::Route(ra)) => {
            connect_upgrade(ctx, &format!("{f}.route"), ra, matcher.connect)?;
            RouteAction::Forward(forward(ctx, &format!("{f}.route"), ra, parent_mirrors)?)
        }
        Some(A::Redirect(rd)) => RouteAction::Redirect(redirect(ctx, &format!("{f}.redirect"), rd)?),
        Some(A::DirectResponse(d)) => RouteAction::Direct(direct(ctx, &format!("{f}.direct_response"), d)?),
        Some(A::FilterAction(_)) => return Err(ctx.unsupported(format!("{f}.filter_action"))),
        Some(A::NonForwardingAction(_)) => return Err(ctx.unsupported(format!("{f}.non_forwarding_action"))),
        None => return Err(ctx.err(f, "a route needs route, redirect or direct_response")),
    };
    let own_fault = per_filter_fault(ctx, f, &r.typed_per_filter_config)?;
    let fault = own_fault.or_else(|| parent_fault.clone()).flatten();
    let mut metadata = metadata_strings(&r.metadata, "istio");
    metadata.retain(|k, _| k == "config");
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        request_headers: header_ops(ctx, f, &r.request_headers_to_add, &r.request_headers_to_remove, "request")?,
        response_headers: header_ops(ctx, f, &r.response_headers_to_add, &r.response_headers_to_remove, "response")?,
        fault,
        metadata,
    })
}

fn route_match(ctx: &Ctx, f: &str, m: &pb::RouteMatch) -> R<RouteMatch> {
    use pb::route_match::PathSpecifier as P;
    let mut connect = false;
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(regex(ctx, &format!("{f}.safe_regex"), r)?),
        Some(P::PathSeparatedPrefix(p)) => {
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
                return Err(ctx.err(format!("{f}.path_separated_prefix"), "must start with '/' and not end with '/'"));
            }
            PathMatch::PathSeparatedPrefix(p.clone())
        }
        Some(P::ConnectMatcher(_)) => {
            connect = true;
            PathMatch::Prefix("/".into())
        }
        Some(P::PathMatchPolicy(_)) => return Err(ctx.unsupported(format!("{f}.path_match_policy"))),
        None => return Err(ctx.err(f, "prefix, path, safe_regex or path_separated_prefix is required")),
    };
    if let Some(rf) = &m.runtime_fraction {
        if runtime_fraction(ctx, &format!("{f}.runtime_fraction"), &Some(rf.clone()))? < 1_000_000 {
            return Err(ctx.err(format!("{f}.runtime_fraction"), "matching a fraction of requests is not supported"));
        }
    }
    let checks: [(bool, &str); 4] = [
        (!m.cookies.is_empty(), "cookies"),
        (m.tls_context.is_some(), "tls_context"),
        (!m.dynamic_metadata.is_empty(), "dynamic_metadata"),
        (!m.filter_state.is_empty(), "filter_state"),
    ];
    if let Some((_, field)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(format!("{f}.{field}")));
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(ctx, &format!("{f}.headers[{i}]"), h))
        .collect::<R<Vec<_>>>()?;
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        let qf = format!("{f}.query_parameters[{i}]");
        use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let value = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => Some(string_match(ctx, &format!("{qf}.string_match"), s)?),
            Some(Q::PresentMatch(true)) => None,
            Some(Q::PresentMatch(false)) => {
                return Err(ctx.err(format!("{qf}.present_match"), "only present_match: true is supported"))
            }
            None => return Err(ctx.err(&qf, "string_match or present_match is required")),
        };
        query.push(QueryMatcher { name: q.name.clone(), value });
    }
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().map(|b| b.value).unwrap_or(true),
        headers,
        query,
        grpc: m.grpc.is_some(),
        connect,
    })
}

pub(crate) fn header_matcher(ctx: &Ctx, f: &str, h: &pb::HeaderMatcher) -> R<HeaderMatcher> {
    let name = h.name.to_ascii_lowercase();
    if name.is_empty()
        || (http::HeaderName::from_bytes(name.as_bytes()).is_err()
            && !matches!(name.as_str(), ":method" | ":authority" | ":path" | ":scheme"))
    {
        return Err(ctx.err(format!("{f}.name"), format!("invalid header name {:?}", h.name)));
    }
    if h.treat_missing_header_as_empty {
        return Err(ctx.unsupported(format!("{f}.treat_missing_header_as_empty")));
    }
    use pb::header_matcher::HeaderMatchSpecifier as S;
    let rule = match &h.header_match_specifier {
        None => HeaderRule::Present(true),
        Some(S::PresentMatch(p)) => HeaderRule::Present(*p),
        Some(S::ExactMatch(s)) => HeaderRule::Value(StringMatch::Exact(s.clone())),
        Some(S::PrefixMatch(s)) => HeaderRule::Value(StringMatch::Prefix(s.clone())),
        Some(S::SuffixMatch(s)) => HeaderRule::Value(StringMatch::Suffix(s.clone())),
        Some(S::ContainsMatch(s)) => HeaderRule::Value(StringMatch::Contains(s.clone())),
        Some(S::SafeRegexMatch(r)) => {
            HeaderRule::Value(StringMatch::Regex(regex(ctx, &format!("{f}.safe_regex_match"), r)?))
        }
        Some(S::StringMatch(s)) => HeaderRule::Value(string_match(ctx, &format!("{f}.string_match"), s)?),
        Some(S::RangeMatch(_)) => return Err(ctx.unsupported(format!("{f}.range_match"))),
    };
    Ok(HeaderMatcher { name, rule, invert: h.invert_match })
}

/// weft terminates CONNECT (a TCP connection to the cluster's host carries the tunnel): a route
/// with `connect_matcher` must say so with a CONNECT upgrade config that has a `connect_config`
/// (without one Envoy would pass the CONNECT on to the upstream instead). Other routes take no
/// CONNECT upgrade.
fn connect_upgrade(ctx: &Ctx, f: &str, ra: &pb::RouteAction, connect: bool) -> R<()> {
    let mut terminate = false;
    for (i, u) in ra.upgrade_configs.iter().enumerate() {
        if !u.upgrade_type.eq_ignore_ascii_case("CONNECT") || u.enabled.as_ref().is_some_and(|b| !b.value) {
            continue;
        }
        let uf = format!("{f}.upgrade_configs[{i}]");
        if !connect {
            return Err(ctx.err(uf, "a CONNECT upgrade needs a route with connect_matcher"));
        }
        match &u.connect_config {
            None => {
                return Err(ctx.err(
                    format!("{uf}.connect_config"),
                    "required: weft terminates CONNECT and does not forward it to an upstream proxy",
                ))
            }
            Some(c) if c.allow_post => return Err(ctx.unsupported(format!("{uf}.connect_config.allow_post"))),
            Some(c) if c.proxy_protocol_config.is_some() => {
                return Err(ctx.unsupported(format!("{uf}.connect_config.proxy_protocol_config")))
            }
            Some(_) => terminate = true,
        }
    }
    if connect && !terminate {
        return Err(ctx.err(
            format!("{f}.upgrade_configs"),
            "a connect_matcher route needs a CONNECT upgrade with connect_config (weft terminates CONNECT)",
        ));
    }
    Ok(())
}

fn forward(ctx: &Ctx, f: &str, ra: &pb::RouteAction, parent_mirrors: &[Mirror]) -> R<Forward> {
    let checks: [(bool, &str); 14] = [
        (ra.cluster_not_found_response_code != 0, "cluster_not_found_response_code"),
        (ra.metadata_match.is_some(), "metadata_match"),
        (ra.path_rewrite_policy.is_some(), "path_rewrite_policy"),
        (!ra.path_rewrite.is_empty(), "path_rewrite"),
        (ra.append_x_forwarded_host, "append_x_forwarded_host"),
        (ra.retry_policy_typed_config.is_some(), "retry_policy_typed_config"),
        (!ra.rate_limits.is_empty(), "rate_limits"),
        (ra.cors.is_some(), "cors"),
        (ra.internal_redirect_policy.is_some(), "internal_redirect_policy"),
        (ra.internal_redirect_action != 0, "internal_redirect_action"),
        (ra.hedge_policy.is_some(), "hedge_policy"),
        (ra.early_data_policy.is_some(), "early_data_policy"),
        (
            ra.upgrade_configs.iter().any(|u| {
                !u.upgrade_type.eq_ignore_ascii_case("websocket")
                    && !u.upgrade_type.eq_ignore_ascii_case("CONNECT")
                    && u.enabled.as_ref().is_none_or(|b| b.value)
            }),
            "upgrade_configs",
        ),
        (ra.max_internal_redirects.is_some(), "max_internal_redirects"),
    ];
    if let Some((_, field)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(format!("{f}.{field}")));
    }
    use pb::route_action::ClusterSpecifier as C;
    let cluster = match &ra.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterSpecifier::Single(c.clone()),
        Some(C::Cluster(_)) => return Err(ctx.err(format!("{f}.cluster"), "must not be empty")),
        Some(C::WeightedClusters(w)) => weighted(ctx, &format!("{f}.weighted_clusters"), w)?,
        Some(C::ClusterHeader(_)) => return Err(ctx.unsupported(format!("{f}.cluster_header"))),
        Some(_) => return Err(ctx.unsupported(format!("{f}.cluster_specifier_plugin"))),
        None => return Err(ctx.err(format!("{f}.cluster"), "a cluster or weighted_clusters is required")),
    };
    let prefix_rewrite = (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone());
    let regex_rewrite = match &ra.regex_rewrite {
        None => None,
        Some(rr) => {
            let Some(p) = &rr.pattern else { return Err(ctx.err(format!("{f}.regex_rewrite.pattern"), "required")) };
            Some(RegexRewrite {
                pattern: Pattern::unanchored(&p.regex)
                    .map_err(|e| ctx.err(format!("{f}.regex_rewrite.pattern.regex"), format!("invalid regex: {e}")))?,
                substitution: rr.substitution.clone(),
            })
        }
    };
    if prefix_rewrite.is_some() && regex_rewrite.is_some() {
        return Err(ctx.err(format!("{f}.prefix_rewrite"), "use either prefix_rewrite or regex_rewrite, not both"));
    }
    use pb::route_action::HostRewriteSpecifier as H;
    let host_rewrite = match &ra.host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) if h.is_empty() => None,
        Some(H::HostRewriteLiteral(h)) => {
            if http::HeaderValue::from_str(h).is_err() {
                return Err(ctx.err(format!("{f}.host_rewrite_literal"), format!("invalid host {h:?}")));
            }
            Some(h.clone())
        }
        Some(H::AutoHostRewrite(b)) if !b.value => None,
        Some(H::AutoHostRewrite(_)) => return Err(ctx.unsupported(format!("{f}.auto_host_rewrite"))),
        Some(_) => return Err(ctx.unsupported(format!("{f}.host_rewrite_specifier"))),
    };
    let retry = ra.retry_policy.as_ref().map(|r| retry_policy(ctx, &format!("{f}.retry_policy"), r)).transpose()?;
    let hash_policy = ra
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash(ctx, &format!("{f}.hash_policy[{i}]"), h))
        .collect::<R<Vec<_>>>()?;
    let own_mirrors = mirrors(ctx, f, &ra.request_mirror_policies)?;
    let mirrors = if own_mirrors.is_empty() { parent_mirrors.to_vec() } else { own_mirrors };
    // Envoy honours `grpc-timeout` only when a cap is configured; 0 = no cap.
    let grpc_cap = ra.max_stream_duration.as_ref().and_then(|m| m.grpc_timeout_header_max).or(ra.max_grpc_timeout);
    let max_grpc_timeout = match grpc_cap {
        None => None,
        Some(d) => Some(duration(ctx, &format!("{f}.max_stream_duration.grpc_timeout_header_max"), &d)?)
            .filter(|d| !d.is_zero()),
    };
    Ok(Forward {
        cluster,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        timeout: timeout(ctx, &format!("{f}.timeout"), &ra.timeout, Some(Duration::from_secs(15)))?,
        idle_timeout: timeout(ctx, &format!("{f}.idle_timeout"), &ra.idle_timeout, None)?,
        retry,
        hash_policy,
        mirrors,
        max_grpc_timeout,
    })
}

fn weighted(ctx: &Ctx, f: &str, w: &pb::WeightedCluster) -> R<ClusterSpecifier> {
    if w.random_value_specifier.is_some() {
        return Err(ctx.unsupported(format!("{f}.header_name")));
    }
    if w.clusters.is_empty() {
        return Err(ctx.err(format!("{f}.clusters"), "must not be empty"));
    }
    let mut out = Vec::with_capacity(w.clusters.len());
    for (i, c) in w.clusters.iter().enumerate() {
        let cf = format!("{f}.clusters[{i}]");
        if !c.cluster_header.is_empty() {
            return Err(ctx.unsupported(format!("{cf}.cluster_header")));
        }
        if c.name.is_empty() {
            return Err(ctx.err(format!("{cf}.name"), "must not be empty"));
        }
        if c.metadata_match.is_some() {
            return Err(ctx.unsupported(format!("{cf}.metadata_match")));
        }
        use pb::weighted_cluster::cluster_weight::HostRewriteSpecifier as CH;
        let host_rewrite = match &c.host_rewrite_specifier {
            None => None,
            Some(CH::HostRewriteLiteral(h)) if h.is_empty() => None,
            Some(CH::HostRewriteLiteral(h)) => {
                if http::HeaderValue::from_str(h).is_err() {
                    return Err(ctx.err(format!("{cf}.host_rewrite_literal"), format!("invalid host {h:?}")));
                }
                Some(h.clone())
            }
        };
        if per_filter_fault(ctx, &cf, &c.typed_per_filter_config)?.is_some() {
            return Err(
                ctx.err(format!("{cf}.typed_per_filter_config"), "faults per weighted cluster are not supported")
            );
        }
        out.push(WeightedCluster {
            name: c.name.clone(),
            weight: c.weight.as_ref().map(|v| v.value).unwrap_or(0),
            request_headers: header_ops(ctx, &cf, &c.request_headers_to_add, &c.request_headers_to_remove, "request")?,
            response_headers: header_ops(
                ctx,
                &cf,
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                "response",
            )?,
            host_rewrite,
        });
    }
    if out.iter().map(|c| c.weight as u64).sum::<u64>() == 0 {
        return Err(ctx.err(format!("{f}.clusters"), "total weight must be greater than 0"));
    }
    Ok(ClusterSpecifier::Weighted(out))
}

pub(crate) fn retry_policy(ctx: &Ctx, f: &str, r: &pb::RetryPolicy) -> R<RetryPolicy> {
    if let Some(p) = &r.retry_priority {
        use pb::retry_policy::retry_priority::ConfigType as C;
        let kind = match &p.config_type {
            Some(C::TypedConfig(any)) => type_name(&any.type_url),
            None => p.name.as_str(),
        };
        // Istio adds this with locality failover. weft approximates it: a retry avoids the hosts
        // already tried (and so moves on to the next priority once a level's hosts are used up).
        if kind != PREVIOUS_PRIORITIES && kind != "envoy.retry_priorities.previous_priorities" {
            return Err(ctx.err(format!("{f}.retry_priority"), format!("{kind:?} is not supported")));
        }
    }
    let checks: [(bool, &str); 3] = [
        (r.rate_limited_retry_back_off.is_some(), "rate_limited_retry_back_off"),
        (!r.retriable_request_headers.is_empty(), "retriable_request_headers"),
        (!r.retry_options_predicates.is_empty(), "retry_options_predicates"),
    ];
    if let Some((_, field)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(format!("{f}.{field}")));
    }
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        use pb::retry_policy::retry_host_predicate::ConfigType as C;
        let kind = match &p.config_type {
            Some(C::TypedConfig(any)) => type_name(&any.type_url),
            None => p.name.as_str(),
        };
        // weft always prefers hosts not tried yet, which is what previous_hosts asks for.
        if kind != PREVIOUS_HOSTS && kind != "envoy.retry_host_predicates.previous_hosts" {
            return Err(ctx.err(format!("{f}.retry_host_predicate[{i}]"), format!("{kind:?} is not supported")));
        }
    }
    let retry_on = RetryOn::parse(&r.retry_on).map_err(|e| ctx.err(format!("{f}.retry_on"), e))?;
    for (i, c) in r.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            return Err(ctx.err(format!("{f}.retriable_status_codes[{i}]"), format!("{c} is not an HTTP status")));
        }
    }
    let retriable_headers = r
        .retriable_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(ctx, &format!("{f}.retriable_headers[{i}]"), h))
        .collect::<R<Vec<_>>>()?;
    let d = RetryPolicy::default();
    let (backoff_base, backoff_max) = match &r.retry_back_off {
        None => (d.backoff_base, d.backoff_max),
        Some(b) => {
            let base = dur_or(ctx, &format!("{f}.retry_back_off.base_interval"), &b.base_interval, d.backoff_base)?;
            let max = dur_or(ctx, &format!("{f}.retry_back_off.max_interval"), &b.max_interval, base * 10)?;
            if base.is_zero() {
                return Err(ctx.err(format!("{f}.retry_back_off.base_interval"), "must be greater than 0"));
            }
            if max < base {
                return Err(ctx.err(format!("{f}.retry_back_off.max_interval"), "must not be less than base_interval"));
            }
            (base, max)
        }
    };
    Ok(RetryPolicy {
        retry_on,
        num_retries: r.num_retries.as_ref().map(|v| v.value).unwrap_or(1),
        per_try_timeout: timeout(ctx, &format!("{f}.per_try_timeout"), &r.per_try_timeout, None)?,
        retriable_status_codes: r.retriable_status_codes.iter().map(|c| *c as u16).collect(),
        retriable_headers,
        backoff_base,
        backoff_max,
    })
}

fn hash(ctx: &Ctx, f: &str, h: &pb::route_action::HashPolicy) -> R<HashPolicy> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    let terminal = h.terminal;
    match &h.policy_specifier {
        Some(P::Header(hd)) => {
            if hd.regex_rewrite.is_some() {
                return Err(ctx.unsupported(format!("{f}.header.regex_rewrite")));
            }
            if hd.header_name.is_empty() {
                return Err(ctx.err(format!("{f}.header.header_name"), "must not be empty"));
            }
            Ok(HashPolicy::Header { name: hd.header_name.to_ascii_lowercase(), terminal })
        }
        Some(P::Cookie(c)) => {
            if c.name.is_empty() {
                return Err(ctx.err(format!("{f}.cookie.name"), "must not be empty"));
            }
            Ok(HashPolicy::Cookie {
                name: c.name.clone(),
                ttl: timeout(ctx, &format!("{f}.cookie.ttl"), &c.ttl, None)?,
                path: (!c.path.is_empty()).then(|| c.path.clone()),
                terminal,
            })
        }
        Some(P::ConnectionProperties(cp)) if cp.source_ip => Ok(HashPolicy::SourceIp { terminal }),
        Some(P::ConnectionProperties(_)) => {
            Err(ctx.err(format!("{f}.connection_properties.source_ip"), "must be true"))
        }
        Some(P::QueryParameter(q)) if !q.name.is_empty() => {
            Ok(HashPolicy::QueryParameter { name: q.name.clone(), terminal })
        }
        Some(P::QueryParameter(_)) => Err(ctx.err(format!("{f}.query_parameter.name"), "must not be empty")),
        Some(P::FilterState(_)) => Err(ctx.unsupported(format!("{f}.filter_state"))),
        None => Err(ctx.err(f, "a hash policy needs header, cookie, connection_properties or query_parameter")),
    }
}

fn mirrors(ctx: &Ctx, f: &str, ms: &[pb::route_action::RequestMirrorPolicy]) -> R<Vec<Mirror>> {
    let mut out = Vec::with_capacity(ms.len());
    for (i, m) in ms.iter().enumerate() {
        let mf = join(f, &format!("request_mirror_policies[{i}]"));
        let checks: [(bool, &str); 4] = [
            (!m.cluster_header.is_empty(), "cluster_header"),
            (m.disable_shadow_host_suffix_append, "disable_shadow_host_suffix_append"),
            (!m.request_headers_mutations.is_empty(), "request_headers_mutations"),
            (!m.host_rewrite_literal.is_empty(), "host_rewrite_literal"),
        ];
        if let Some((_, field)) = checks.iter().find(|(bad, _)| *bad) {
            return Err(ctx.unsupported(format!("{mf}.{field}")));
        }
        if m.cluster.is_empty() {
            return Err(ctx.err(format!("{mf}.cluster"), "must not be empty"));
        }
        out.push(Mirror {
            cluster: m.cluster.clone(),
            fraction_per_million: runtime_fraction(ctx, &format!("{mf}.runtime_fraction"), &m.runtime_fraction)?,
        });
    }
    Ok(out)
}

fn redirect(ctx: &Ctx, f: &str, rd: &pb::RedirectAction) -> R<Redirect> {
    use pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match rd.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        n => return Err(ctx.err(format!("{f}.response_code"), format!("unknown value {n}"))),
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        None | Some(S::HttpsRedirect(false)) => None,
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if s.is_empty() => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let (path, prefix_rewrite) = match &rd.path_rewrite_specifier {
        None => (None, None),
        Some(P::PathRedirect(p)) => (Some(p.clone()), None),
        Some(P::PrefixRewrite(p)) => (None, Some(p.clone())),
        Some(P::RegexRewrite(_)) => return Err(ctx.unsupported(format!("{f}.regex_rewrite"))),
        Some(_) => return Err(ctx.unsupported(format!("{f}.path_rewrite"))),
    };
    let port = match rd.port_redirect {
        0 => None,
        p if p <= 65535 => Some(p as u16),
        p => return Err(ctx.err(format!("{f}.port_redirect"), format!("{p} is not a port"))),
    };
    Ok(Redirect {
        scheme,
        host: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.clone()),
        port,
        path,
        prefix_rewrite,
        strip_query: rd.strip_query,
        status,
    })
}

fn direct(ctx: &Ctx, f: &str, d: &pb::DirectResponseAction) -> R<DirectResponse> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as S;
    if !(200..=599).contains(&d.status) {
        return Err(ctx.err(format!("{f}.status"), format!("{} is not a valid status", d.status)));
    }
    if d.body_format.is_some() {
        return Err(ctx.unsupported(format!("{f}.body_format")));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => String::new(),
        Some(S::InlineString(s)) => s.clone(),
        Some(S::InlineBytes(b)) => {
            String::from_utf8(b.clone()).map_err(|_| ctx.err(format!("{f}.body.inline_bytes"), "not UTF-8"))?
        }
        Some(S::Filename(_)) => return Err(ctx.unsupported(format!("{f}.body.filename"))),
        Some(S::EnvironmentVariable(_)) => return Err(ctx.unsupported(format!("{f}.body.environment_variable"))),
    };
    Ok(DirectResponse { status: d.status as u16, body })
}

/// The fault in a `typed_per_filter_config` map, if one is configured at this level.
fn per_filter_fault(ctx: &Ctx, f: &str, m: &std::collections::HashMap<String, Any>) -> R<FaultLevel> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut out = None;
    for key in keys {
        let field = join(f, &format!("typed_per_filter_config[{key:?}]"));
        let mut any = &m[key];
        let mut optional = false;
        let wrapped;
        if type_name(&any.type_url) == FILTER_CONFIG {
            let fc: pb::FilterConfig = unpack(ctx, &field, any)?;
            if fc.disabled {
                // Turning a filter off for this level: for the fault filter, no fault here.
                if key == "envoy.filters.http.fault"
                    || fc.config.as_ref().is_some_and(|c| type_name(&c.type_url) == FAULT)
                {
                    out = Some(None);
                }
                continue;
            }
            optional = fc.is_optional;
            let Some(inner) = fc.config else { return Err(ctx.err(format!("{field}.config"), "required")) };
            wrapped = inner;
            any = &wrapped;
        }
        if type_name(&any.type_url) == FAULT {
            let hf: HttpFault = unpack(ctx, &field, any)?;
            out = Some(fault(ctx, &field, &hf)?);
        } else if !optional {
            return Err(ctx.err(field, format!("config {} is not supported", type_name(&any.type_url))));
        }
    }
    Ok(out)
}

fn fault(ctx: &Ctx, f: &str, hf: &HttpFault) -> R<Option<Fault>> {
    let checks: [(bool, &str); 4] = [
        (!hf.upstream_cluster.is_empty(), "upstream_cluster"),
        (!hf.headers.is_empty(), "headers"),
        (!hf.downstream_nodes.is_empty(), "downstream_nodes"),
        (hf.response_rate_limit.is_some(), "response_rate_limit"),
    ];
    if let Some((_, field)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(ctx.unsupported(format!("{f}.{field}")));
    }
    let delay = match &hf.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fd)) => Some(FaultDelay {
                fixed: duration(ctx, &format!("{f}.delay.fixed_delay"), fd)?,
                fraction_per_million: fraction(ctx, &format!("{f}.delay.percentage"), &d.percentage)?,
            }),
            Some(FaultDelaySecifier::HeaderDelay(_)) => return Err(ctx.unsupported(format!("{f}.delay.header_delay"))),
            None => return Err(ctx.err(format!("{f}.delay.fixed_delay"), "required")),
        },
    };
    let abort = match &hf.abort {
        None => None,
        Some(a) => {
            if !a.response_body.is_empty() {
                return Err(ctx.unsupported(format!("{f}.abort.response_body")));
            }
            let status = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) if (200..=599).contains(s) => AbortStatus::Http(*s as u16),
                Some(ErrorType::HttpStatus(s)) => {
                    return Err(ctx.err(format!("{f}.abort.http_status"), format!("{s} is not a valid status")))
                }
                Some(ErrorType::GrpcStatus(g)) if *g <= 16 => AbortStatus::Grpc(*g),
                Some(ErrorType::GrpcStatus(g)) => {
                    return Err(
                        ctx.err(format!("{f}.abort.grpc_status"), format!("{g} is not a gRPC status code (0..16)"))
                    )
                }
                Some(ErrorType::HeaderAbort(_)) => return Err(ctx.unsupported(format!("{f}.abort.header_abort"))),
                None => return Err(ctx.err(format!("{f}.abort"), "http_status or grpc_status is required")),
            };
            Some(FaultAbort {
                status,
                fraction_per_million: fraction(ctx, &format!("{f}.abort.percentage"), &a.percentage)?,
            })
        }
    };
    Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
}
