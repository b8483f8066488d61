//! RDS: one RouteConfiguration per outbound port (named by the port) with a virtual host per
//! visible service, routes from the VirtualService's `http` rules, and the catch-all
//! `allow_any`/`block_all` host; for proxyless gRPC, one RouteConfiguration per service port.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::{retry_host_predicate, retry_priority, RetryHostPredicate, RetryPriority},
    route::Action,
    route_action::{self, hash_policy, ClusterSpecifier, HashPolicy, HostRewriteSpecifier, RequestMirrorPolicy},
    route_match::PathSpecifier,
    weighted_cluster::{cluster_weight, ClusterWeight},
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort, HttpFault as PbFault};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use weft_istio::{
    AbortStatus, Destination, HashKey, HeaderOperations, HttpAction, HttpMatch, HttpRetry, HttpRoute, LbPolicy,
    OutboundMode, RedirectPort, StringMatch,
};

use crate::cluster::policy_for;
use crate::index::{Service, VsEntry};
use crate::naming::{outbound_cluster, resolve_host, short_names, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use crate::pb;
use crate::scope::{PortService, Scope};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// Istio's default retry conditions for routes without `retries`.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRIABLE_STATUS: u32 = 503;

/// The RouteConfiguration named by the port: one virtual host per service visible on it, then
/// the catch-all host.
pub fn port_routes(scope: &Scope, port: u16, services: &[PortService]) -> RouteConfiguration {
    let mut used = BTreeSet::new();
    let mut hosts: Vec<VirtualHost> = Vec::new();
    for ps in services {
        let s = &ps.service;
        let domains: Vec<String> = domains(scope, s, port).into_iter().filter(|d| used.insert(d.clone())).collect();
        if domains.is_empty() {
            continue;
        }
        hosts.push(virtual_host(scope, s, port, domains));
    }
    hosts.push(catch_all(scope.outbound_mode));
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts: hosts,
        validate_clusters: Some(pb::boolv(false)),
        ..Default::default()
    }
}

/// The RouteConfiguration `name` of a proxyless gRPC client's API listeners for one service
/// port: one virtual host answering every name of the service (gRPC matches the channel
/// target's authority, e.g. `reviews:9080`, against the domains).
pub fn grpc_routes(scope: &Scope, s: &Service, port: u16, name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![virtual_host(scope, s, port, domains(scope, s, port))],
        validate_clusters: Some(pb::boolv(false)),
        ..Default::default()
    }
}

/// The names a service answers to on a port: its host, the short forms for the proxy's
/// namespace, the VIP, each alone and with `:port`.
pub fn domains(scope: &Scope, s: &Service, port: u16) -> Vec<String> {
    let mut names = vec![s.host.clone()];
    names.extend(short_names(&s.host, &scope.proxy.namespace, &scope.opts.domain_suffix));
    if let Some(vip) = s.vip() {
        names.push(match vip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    let mut out = Vec::with_capacity(names.len() * 2);
    for n in names {
        out.push(format!("{n}:{port}"));
        out.push(n);
    }
    out
}

pub(crate) fn virtual_host(scope: &Scope, s: &Service, port: u16, domains: Vec<String>) -> VirtualHost {
    let routes = match scope.virtual_service(&s.host) {
        Some(vs) => vs_routes(scope, vs, port),
        None => vec![default_route(scope, s, port)],
    };
    VirtualHost {
        name: format!("{}:{port}", s.host),
        domains,
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

fn catch_all(mode: OutboundMode) -> VirtualHost {
    let (name, action) = match mode {
        OutboundMode::AllowAny => (
            "allow_any",
            Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.into())),
                timeout: Some(pb::secs(0)),
                ..Default::default()
            }),
        ),
        OutboundMode::RegistryOnly => (
            "block_all",
            Action::DirectResponse(DirectResponseAction { status: 502, body: None, ..Default::default() }),
        ),
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(prefix_match("/")),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn prefix_match(p: &str) -> RouteMatch {
    RouteMatch { path_specifier: Some(PathSpecifier::Prefix(p.into())), ..Default::default() }
}

/// No VirtualService: everything to the service's cluster, with the default retry policy.
fn default_route(scope: &Scope, s: &Service, port: u16) -> Route {
    let cluster = outbound_cluster(port, "", &s.host);
    let hash = hash_policies(scope, &[(s, port, None)]);
    let retry = scope.opts.default_retry.then(|| default_retry_policy(!hash.is_empty()));
    Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(pb::secs(0)),
            retry_policy: retry,
            hash_policy: hash,
            max_stream_duration: Some(grpc_timeout(None)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Istio lets the client's `grpc-timeout` header bound the request, capped by the route timeout.
fn grpc_timeout(timeout: Option<std::time::Duration>) -> route_action::MaxStreamDuration {
    let d = pb::duration(timeout.unwrap_or_default());
    route_action::MaxStreamDuration {
        max_stream_duration: Some(d),
        grpc_timeout_header_max: Some(d),
        ..Default::default()
    }
}

/// Istio's default: 2 attempts on connection failures, refused streams, gRPC `unavailable` and
/// `cancelled`, and 503; other hosts preferred for retries unless consistent hashing is used.
pub fn default_retry_policy(hashing: bool) -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(pb::u32v(DEFAULT_RETRY_ATTEMPTS)),
        retriable_status_codes: vec![DEFAULT_RETRIABLE_STATUS],
        retry_host_predicate: if hashing { Vec::new() } else { vec![previous_hosts()] },
        host_selection_retry_max_attempts: if hashing { 0 } else { 5 },
        ..Default::default()
    }
}

fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pb::any(&PreviousHostsPredicate {}))),
    }
}

/// Istio's `retries`: attempts 0 disables; `retryOn` replaces the default conditions (status
/// codes in it enable `retriable-status-codes`); `retryRemoteLocalities` prefers other priorities.
pub fn retry_policy(r: Option<&HttpRetry>, default_retry: bool, hashing: bool) -> Option<RetryPolicy> {
    let Some(r) = r else { return default_retry.then(|| default_retry_policy(hashing)) };
    if r.attempts == 0 {
        return None;
    }
    let mut out = default_retry_policy(hashing);
    out.num_retries = Some(pb::u32v(r.attempts));
    if !r.retry_on.is_empty() || !r.retriable_status_codes.is_empty() {
        let mut on: Vec<String> = r.retry_on.clone();
        if !r.retriable_status_codes.is_empty() && !on.iter().any(|c| c == "retriable-status-codes") {
            on.push("retriable-status-codes".into());
        }
        out.retry_on = on.join(",");
        out.retriable_status_codes = r.retriable_status_codes.iter().map(|c| *c as u32).collect();
    }
    out.per_try_timeout = r.per_try_timeout.map(pb::duration);
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(retry_priority::ConfigType::TypedConfig(pb::any(&PreviousPrioritiesConfig {
                update_frequency: 2,
            }))),
        });
    }
    Some(out)
}

/// Whether a match applies to this proxy and listener port (others are left out, as Istio).
fn match_applies(scope: &Scope, m: &HttpMatch, port: u16) -> bool {
    m.port.map_or(true, |p| p == port)
        && m.source_labels.iter().all(|(k, v)| scope.proxy.labels.get(k) == Some(v))
        && m.source_namespace.as_ref().map_or(true, |ns| *ns == scope.proxy.namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
}

/// The routes of a VirtualService for one service port, in order; one Envoy route per match.
fn vs_routes(scope: &Scope, vs: &VsEntry, port: u16) -> Vec<Route> {
    let mut out = Vec::new();
    for h in &vs.spec.http {
        if matches!(h.action, HttpAction::Delegate { .. }) {
            continue;
        }
        if h.matches.is_empty() {
            out.extend(http_route(scope, vs, port, h, None));
            continue;
        }
        for m in h.matches.iter().filter(|m| match_applies(scope, m, port)) {
            out.extend(http_route(scope, vs, port, h, Some(m)));
        }
    }
    out
}

/// The cluster a destination names, with the port resolved as Istio does: the given port,
/// else the service's only port, else the listener's port.
pub fn destination_cluster(
    scope: &Scope,
    vs_namespace: &str,
    d: &Destination,
    listener_port: u16,
) -> (String, Option<(std::sync::Arc<Service>, u16)>) {
    let host = resolve_host(&d.host, vs_namespace, &scope.opts.domain_suffix);
    let service = scope.tenant.service_for(&host, &scope.proxy.namespace).cloned();
    let port = d.port.unwrap_or_else(|| match service.as_ref().map(|s| s.ports.as_slice()) {
        Some([only]) => only.number,
        _ => listener_port,
    });
    let cluster = outbound_cluster(port, d.subset.as_deref().unwrap_or(""), &host);
    (cluster, service.map(|s| (s, port)))
}

fn http_route(scope: &Scope, vs: &VsEntry, port: u16, h: &HttpRoute, m: Option<&HttpMatch>) -> Option<Route> {
    let mut route = Route { name: route_name(h, m), r#match: Some(route_match(m)), ..Default::default() };
    // The authority set by the route's header operations: a host rewrite where the route forwards
    // (redirects and direct responses have no upstream request to rewrite).
    let route_authority =
        add_header_ops(&mut route.request_headers_to_add, &mut route.request_headers_to_remove, &h.headers.request);
    add_header_ops(&mut route.response_headers_to_add, &mut route.response_headers_to_remove, &h.headers.response);
    match &h.action {
        HttpAction::Delegate { .. } => return None,
        HttpAction::Redirect(r) => {
            let scheme = r.scheme.clone();
            route.action = Some(Action::Redirect(RedirectAction {
                host_redirect: r.authority.clone().unwrap_or_default(),
                port_redirect: match r.port {
                    Some(RedirectPort::Number(n)) => n as u32,
                    Some(RedirectPort::FromProtocolDefault) => {
                        if scheme.as_deref() == Some("https") {
                            443
                        } else {
                            80
                        }
                    }
                    Some(RedirectPort::FromRequestPort) | None => 0,
                },
                response_code: match r.redirect_code {
                    302 => RedirectResponseCode::Found,
                    303 => RedirectResponseCode::SeeOther,
                    307 => RedirectResponseCode::TemporaryRedirect,
                    308 => RedirectResponseCode::PermanentRedirect,
                    _ => RedirectResponseCode::MovedPermanently,
                } as i32,
                scheme_rewrite_specifier: scheme.map(SchemeRewriteSpecifier::SchemeRedirect),
                path_rewrite_specifier: r.uri.clone().map(PathRewriteSpecifier::PathRedirect),
                ..Default::default()
            }));
        }
        HttpAction::DirectResponse(d) => {
            route.action = Some(Action::DirectResponse(DirectResponseAction {
                status: d.status as u32,
                body: d.body.as_ref().map(|b| DataSource {
                    specifier: Some(match String::from_utf8(b.clone()) {
                        Ok(s) => data_source::Specifier::InlineString(s),
                        Err(e) => data_source::Specifier::InlineBytes(e.into_bytes()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }));
        }
        HttpAction::Route(dests) => {
            let dests: Vec<_> = dests.iter().filter(|d| d.weight > 0).collect();
            let resolved: Vec<_> =
                dests.iter().map(|d| destination_cluster(scope, &vs.namespace, &d.destination, port)).collect();
            let hash_targets: Vec<(&Service, u16, Option<&str>)> = resolved
                .iter()
                .zip(&dests)
                .filter_map(|((_, svc), d)| {
                    svc.as_ref().map(|(svc, p)| (svc.as_ref(), *p, d.destination.subset.as_deref()))
                })
                .collect();
            let hash = if hash_targets.len() == dests.len() { hash_policies(scope, &hash_targets) } else { Vec::new() };
            let mut action = RouteAction {
                timeout: Some(pb::duration(h.timeout.unwrap_or_default())),
                retry_policy: retry_policy(h.retries.as_ref(), scope.opts.default_retry, !hash.is_empty()),
                max_stream_duration: Some(grpc_timeout(h.timeout)),
                hash_policy: hash,
                ..Default::default()
            };
            // Istio's precedence: the route's headers, then `rewrite.authority`, then the headers
            // of a lone destination.
            let mut authority = h.rewrite.as_ref().and_then(|rw| rw.authority.clone()).or(route_authority);
            if let [only] = dests.as_slice() {
                action.cluster_specifier = Some(ClusterSpecifier::Cluster(resolved[0].0.clone()));
                let dest_authority = add_header_ops(
                    &mut route.request_headers_to_add,
                    &mut route.request_headers_to_remove,
                    &only.headers.request,
                );
                authority = dest_authority.or(authority);
                add_header_ops(
                    &mut route.response_headers_to_add,
                    &mut route.response_headers_to_remove,
                    &only.headers.response,
                );
            } else if dests.is_empty() {
                // Every destination has weight 0: nothing can be routed (Istio answers 503).
                route.action = Some(Action::DirectResponse(DirectResponseAction { status: 503, ..Default::default() }));
                return Some(route);
            } else {
                let clusters = dests
                    .iter()
                    .zip(&resolved)
                    .map(|(d, (name, _))| {
                        let mut cw = ClusterWeight {
                            name: name.clone(),
                            weight: Some(pb::u32v(d.weight)),
                            ..Default::default()
                        };
                        let dest_authority = add_header_ops(
                            &mut cw.request_headers_to_add,
                            &mut cw.request_headers_to_remove,
                            &d.headers.request,
                        );
                        cw.host_rewrite_specifier =
                            dest_authority.map(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral);
                        add_header_ops(
                            &mut cw.response_headers_to_add,
                            &mut cw.response_headers_to_remove,
                            &d.headers.response,
                        );
                        cw
                    })
                    .collect();
                action.cluster_specifier =
                    Some(ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }));
            }
            if let Some(rw) = &h.rewrite {
                if let Some(uri) = &rw.uri {
                    action.prefix_rewrite = uri.clone();
                }
                if let Some(re) = &rw.uri_regex_rewrite {
                    action.regex_rewrite = Some(RegexMatchAndSubstitute {
                        pattern: Some(regex(re.pattern.as_str())),
                        substitution: re.rewrite.clone(),
                    });
                }
            }
            action.host_rewrite_specifier = authority.map(HostRewriteSpecifier::HostRewriteLiteral);
            action.request_mirror_policies = h
                .mirrors
                .iter()
                .map(|mirror| RequestMirrorPolicy {
                    cluster: destination_cluster(scope, &vs.namespace, &mirror.destination, port).0,
                    runtime_fraction: mirror.percentage.map(|p| RuntimeFractionalPercent {
                        default_value: Some(pb::per_million(p)),
                        ..Default::default()
                    }),
                    trace_sampled: Some(pb::boolv(false)),
                    ..Default::default()
                })
                .collect();
            route.action = Some(Action::Route(action));
        }
    }
    if let Some(fault) = &h.fault {
        route.typed_per_filter_config.insert(FAULT_FILTER.into(), pb::any(&fault_config(fault)));
    }
    Some(route)
}

fn route_name(h: &HttpRoute, m: Option<&HttpMatch>) -> String {
    match (h.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
        (Some(r), Some(m)) => format!("{r}.{m}"),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => String::new(),
    }
}

fn regex(src: &str) -> RegexMatcher {
    RegexMatcher { regex: src.to_string(), ..Default::default() }
}

fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = match m {
        StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(r) => MatchPattern::SafeRegex(regex(r.as_str())),
        StringMatch::Present => return None,
    };
    Some(StringMatcher { match_pattern: Some(pattern), ignore_case: false })
}

/// A header condition; `Present` means the header must be there (any value).
fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match string_matcher(m) {
            Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

/// Istio's HTTPMatchRequest as an Envoy RouteMatch (no match: prefix `/`).
pub fn route_match(m: Option<&HttpMatch>) -> RouteMatch {
    let Some(m) = m else { return prefix_match("/") };
    let mut out = RouteMatch {
        path_specifier: Some(match &m.uri {
            Some(StringMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
            Some(StringMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
            Some(StringMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r.as_str())),
            Some(StringMatch::Present) | None => PathSpecifier::Prefix("/".into()),
        }),
        case_sensitive: m.ignore_uri_case.then(|| pb::boolv(false)),
        ..Default::default()
    };
    for (name, sm) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(sm) = sm.as_ref().filter(|sm| !matches!(sm, StringMatch::Present)) {
            out.headers.push(header_matcher(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers.push(header_matcher(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match string_matcher(sm) {
                Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        });
    }
    out
}

/// Adds Istio's header operations to an Envoy route or weighted cluster. Envoy refuses to change
/// `:authority`/`host` through header operations, so (as Istio does) a request operation on the
/// authority is not added; its value is returned for the caller to apply as a host rewrite.
fn add_header_ops(
    add: &mut Vec<HeaderValueOption>,
    remove: &mut Vec<String>,
    ops: &HeaderOperations,
) -> Option<String> {
    let header = |k: &str, v: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue { key: k.to_string(), value: envoy_header_value(v), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut authority = None;
    let ops_in_order = ops
        .set
        .iter()
        .map(|(k, v)| (k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(ops.add.iter().map(|(k, v)| (k, v, HeaderAppendAction::AppendIfExistsOrAdd)));
    for (k, v, action) in ops_in_order {
        if is_authority(k) {
            authority = Some(v.clone());
        } else {
            add.push(header(k, v, action));
        }
    }
    remove.extend(ops.remove.iter().cloned());
    authority
}

/// Envoy reads a `%` in a header value as the start of a command operator (`%REQ(x-user)%`,
/// `%DOWNSTREAM_REMOTE_ADDRESS%`) and rejects the whole route table when one is malformed. Istio
/// passes values through, so operators keep working here too; a `%` that cannot start one (as in
/// `100%`) is written `%%`, Envoy's literal percent sign.
fn envoy_header_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let len = if rest.starts_with("%%") { 2 } else { operator_len(rest).unwrap_or(0) };
        if len == 0 {
            out.push_str("%%");
            rest = &rest[1..];
        } else {
            out.push_str(&rest[..len]);
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    out
}

/// The length of the command operator `s` starts with: `%NAME%`, `%NAME(ARGS)%` or
/// `%NAME(ARGS):LENGTH%`, NAME in upper case, digits and `_`.
fn operator_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    if !b.get(i)?.is_ascii_uppercase() {
        return None;
    }
    while b.get(i).is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_') {
        i += 1;
    }
    if b.get(i) == Some(&b'(') {
        i += s[i..].find(')')? + 1;
        if b.get(i) == Some(&b':') {
            i += 1;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
    }
    (b.get(i) == Some(&b'%')).then_some(i + 1)
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Istio's HTTPFaultInjection as the fault filter's per-route config (percentages in parts
/// per million).
pub fn fault_config(f: &weft_istio::HttpFault) -> PbFault {
    PbFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            percentage: Some(pb::per_million(d.percentage)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(pb::duration(d.fixed_delay))),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(pb::per_million(a.percentage)),
            error_type: Some(match a.status {
                AbortStatus::Http(code) => fault_abort::ErrorType::HttpStatus(code as u32),
                AbortStatus::Grpc(code) => fault_abort::ErrorType::GrpcStatus(code),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The hash policy of the destinations' consistent-hash load balancer, when they all agree.
fn hash_policies(scope: &Scope, targets: &[(&Service, u16, Option<&str>)]) -> Vec<HashPolicy> {
    let mut found: Option<HashKey> = None;
    for (i, (s, port, subset)) in targets.iter().enumerate() {
        let rule = scope.destination_rule(s);
        let policy = policy_for(rule.as_ref(), *port, *subset);
        let key = match policy.lb.and_then(|lb| lb.policy) {
            Some(LbPolicy::ConsistentHash(ch)) => Some(ch.key),
            _ => None,
        };
        if i == 0 {
            found = key;
        } else if found != key {
            return Vec::new();
        }
    }
    let Some(key) = found else { return Vec::new() };
    let specifier = match key {
        HashKey::HttpHeaderName(name) => {
            hash_policy::PolicySpecifier::Header(hash_policy::Header { header_name: name, ..Default::default() })
        }
        HashKey::HttpCookie { name, path, ttl } => hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name,
            path: path.unwrap_or_default(),
            ttl: ttl.map(pb::duration),
            ..Default::default()
        }),
        HashKey::UseSourceIp => {
            hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
        }
        HashKey::HttpQueryParameterName(name) => {
            hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name })
        }
    };
    vec![HashPolicy { policy_specifier: Some(specifier), terminal: false }]
}

/// The typed config of the fault filter in an HTTP filter chain (no faults of its own).
pub fn fault_filter_config() -> TypedExtensionConfig {
    TypedExtensionConfig { name: FAULT_FILTER.into(), typed_config: Some(pb::any(&PbFault::default())) }
}

/// Cluster names and weights of a TCP/TLS route's destinations (weight-0 ones left out).
pub fn l4_destinations(
    scope: &Scope,
    vs_namespace: &str,
    dests: &[weft_istio::RouteDestination],
    port: u16,
) -> Vec<(String, u32)> {
    dests
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| (destination_cluster(scope, vs_namespace, &d.destination, port).0, d.weight))
        .collect()
}

/// Re-exported for the listener generator: blackhole name for REGISTRY_ONLY TCP defaults.
pub fn catch_all_cluster(mode: OutboundMode) -> &'static str {
    match mode {
        OutboundMode::AllowAny => PASSTHROUGH_CLUSTER,
        OutboundMode::RegistryOnly => BLACKHOLE_CLUSTER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use weft_istio::{FaultAbort as IFaultAbort, FaultDelay as IFaultDelay, HttpFault, Regex};

    #[test]
    fn retry_policies_follow_istio() {
        let r = |attempts, on: &[&str], codes: &[u16]| HttpRetry {
            attempts,
            per_try_timeout: Some(Duration::from_millis(500)),
            retry_on: on.iter().map(|s| s.to_string()).collect(),
            retriable_status_codes: codes.to_vec(),
            retry_remote_localities: None,
        };
        let none = retry_policy(None, true, false).unwrap();
        assert_eq!(none.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(none.num_retries.unwrap().value, 2);
        assert_eq!(none.retriable_status_codes, [503]);
        assert_eq!(none.retry_host_predicate.len(), 1);
        assert!(retry_policy(None, false, false).is_none(), "default retries switched off");
        assert!(retry_policy(Some(&r(0, &[], &[])), true, false).is_none(), "attempts 0 disables");
        let given = retry_policy(Some(&r(3, &["5xx", "gateway-error"], &[])), true, true).unwrap();
        assert_eq!(given.retry_on, "5xx,gateway-error");
        assert_eq!(given.num_retries.unwrap().value, 3);
        assert!(given.retriable_status_codes.is_empty());
        assert!(given.retry_host_predicate.is_empty(), "no host avoidance with consistent hashing");
        assert_eq!(given.per_try_timeout.unwrap().nanos, 500_000_000);
        let codes = retry_policy(Some(&r(1, &["connect-failure"], &[502, 504])), true, false).unwrap();
        assert_eq!(codes.retry_on, "connect-failure,retriable-status-codes");
        assert_eq!(codes.retriable_status_codes, [502, 504]);
        let defaults_kept = retry_policy(Some(&r(4, &[], &[])), true, false).unwrap();
        assert_eq!(defaults_kept.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(defaults_kept.retriable_status_codes, [503]);
    }

    #[test]
    fn matches_translate_to_envoy() {
        let m = HttpMatch {
            uri: Some(StringMatch::Regex(Regex::new("/api/v[0-9]+/.*").unwrap())),
            method: Some(StringMatch::Exact("GET".into())),
            authority: Some(StringMatch::Prefix("shop".into())),
            headers: BTreeMap::from([("x-user".to_string(), StringMatch::Present)]),
            without_headers: BTreeMap::from([("x-canary".to_string(), StringMatch::Exact("no".into()))]),
            query_params: BTreeMap::from([("debug".to_string(), StringMatch::Exact("1".into()))]),
            ignore_uri_case: true,
            ..Default::default()
        };
        let rm = route_match(Some(&m));
        assert_eq!(rm.path_specifier, Some(PathSpecifier::SafeRegex(regex("/api/v[0-9]+/.*"))));
        assert_eq!(rm.case_sensitive, Some(pb::boolv(false)));
        let headers: Vec<(&str, bool, String)> = rm
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.invert_match, format!("{:?}", h.header_match_specifier)))
            .collect();
        assert_eq!(headers.len(), 4);
        assert_eq!(headers[0].0, ":method");
        assert!(headers[0].2.contains("Exact(\"GET\")"));
        assert_eq!(headers[1].0, ":authority");
        assert!(headers[1].2.contains("Prefix(\"shop\")"));
        assert_eq!((headers[2].0, headers[2].1, headers[2].2.as_str()), ("x-user", false, "Some(PresentMatch(true))"));
        assert_eq!((headers[3].0, headers[3].1), ("x-canary", true));
        assert_eq!(rm.query_parameters.len(), 1);
        assert_eq!(route_match(None).path_specifier, Some(PathSpecifier::Prefix("/".into())));
        let exact = HttpMatch { uri: Some(StringMatch::Exact("/login".into())), ..Default::default() };
        assert_eq!(route_match(Some(&exact)).path_specifier, Some(PathSpecifier::Path("/login".into())));
    }

    #[test]
    fn header_values_keep_operators_and_escape_other_percent_signs() {
        let cases = [
            ("weft", "weft"),
            ("100%", "100%%"),
            ("50%%", "50%%"),
            ("%DOWNSTREAM_REMOTE_ADDRESS%", "%DOWNSTREAM_REMOTE_ADDRESS%"),
            ("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 5%", "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 5%%"),
            ("%REQ(x-user)%", "%REQ(x-user)%"),
            ("%REQ(x-user):10%", "%REQ(x-user):10%"),
            ("a%b%c", "a%%b%%c"),
            ("%REQ(x-user%", "%%REQ(x-user%%"),
            ("%", "%%"),
            ("%%%", "%%%%"),
        ];
        for (given, want) in cases {
            assert_eq!(envoy_header_value(given), want, "{given}");
        }
    }

    #[test]
    fn faults_use_parts_per_million() {
        let f = HttpFault {
            delay: Some(IFaultDelay { fixed_delay: Duration::from_secs(7), percentage: 0.1 }),
            abort: Some(IFaultAbort { status: AbortStatus::Grpc(14), percentage: 100.0 }),
        };
        let pbf = fault_config(&f);
        let d = pbf.delay.unwrap();
        assert_eq!(d.percentage.unwrap().numerator, 1000);
        assert_eq!(d.fault_delay_secifier, Some(fault_delay::FaultDelaySecifier::FixedDelay(pb::secs(7))));
        let a = pbf.abort.unwrap();
        assert_eq!(a.error_type, Some(fault_abort::ErrorType::GrpcStatus(14)));
        assert_eq!(a.percentage.unwrap().numerator, 1_000_000);
    }
}
