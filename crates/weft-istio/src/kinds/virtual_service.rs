//! VirtualService: hosts, HTTP/TLS/TCP routes and their Istio rules.

use std::collections::BTreeMap;

use serde_json::Value;

use super::shapes;
use super::{
    cidrs, destination, export_to, gateway_names, headers, match_header_name, regex, source_namespace, string_match,
};
use crate::meta::ObjectMeta;
use crate::spec::*;
use crate::walk::{check_host, index, join, Ctx, Obj};

const VS_FIELDS: &[&str] = &["hosts", "gateways", "http", "tls", "tcp", "exportTo"];
const HTTP_FIELDS: &[&str] = &[
    "name",
    "match",
    "route",
    "redirect",
    "directResponse",
    "delegate",
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "mirrorPercent",
    "headers",
];
/// Istio fields Weft accepts on an HTTP route but does not apply yet.
const HTTP_NOT_APPLIED: &[&str] = &["corsPolicy"];
const MATCH_FIELDS: &[&str] = &[
    "name",
    "uri",
    "scheme",
    "method",
    "authority",
    "headers",
    "port",
    "sourceLabels",
    "gateways",
    "queryParams",
    "ignoreUriCase",
    "withoutHeaders",
    "sourceNamespace",
];
const MATCH_NOT_APPLIED: &[&str] = &["statPrefix"];
const RETRY_FIELDS: &[&str] = &["attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities"];
const RETRY_NOT_APPLIED: &[&str] = &["retryIgnorePreviousHosts", "backoff"];

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions Istio accepts.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names (as in Istio's `grpcStatus`) → codes.
const GRPC_STATUS: &[(&str, u32)] = &[
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

pub(super) fn virtual_service(cx: &mut Ctx, v: &Value, meta: &ObjectMeta) -> VirtualService {
    let mut vs =
        VirtualService { hosts: vec![], gateways: vec![], http: vec![], tls: vec![], tcp: vec![], export_to: vec![] };
    let Some(o) = cx.object("spec", v, VS_FIELDS, &[]) else { return vs };
    vs.gateways = gateway_names(cx, &o, "gateways");
    let to_mesh = vs.applies_to_mesh();
    vs.hosts = cx.string_list(&o, "hosts");
    if vs.hosts.is_empty() {
        cx.err(o.at("hosts"), "at least one host is required (delegate VirtualServices are not supported yet)");
    }
    let mut hosts_ok = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let path = index(&o.at("hosts"), i);
        if h == "*" && to_mesh {
            cx.err(path, "the wildcard host \"*\" is not allowed for VirtualServices bound to the mesh");
            hosts_ok = false;
        } else if h.parse::<std::net::IpAddr>().is_err() {
            // Istio also allows IP addresses (meaningful for gateways).
            if let Err(m) = check_host(h, true) {
                cx.err(path, m);
                hosts_ok = false;
            }
        }
    }
    if hosts_ok {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if host_covers(&vs.hosts[i], &vs.hosts[j]) || host_covers(&vs.hosts[j], &vs.hosts[i]) {
                    cx.err(o.at("hosts"), format!("duplicate hosts {:?} and {:?}", vs.hosts[i], vs.hosts[j]));
                }
            }
        }
    }

    let http_path = o.at("http");
    for (i, r) in cx.opt_list(&o, "http").iter().enumerate() {
        vs.http.push(http_route(cx, &index(&http_path, i), r));
    }
    let tls_path = o.at("tls");
    for (i, r) in cx.opt_list(&o, "tls").iter().enumerate() {
        vs.tls.push(tls_route(cx, &index(&tls_path, i), r, &vs.hosts));
    }
    let tcp_path = o.at("tcp");
    for (i, r) in cx.opt_list(&o, "tcp").iter().enumerate() {
        vs.tcp.push(tcp_route(cx, &index(&tcp_path, i), r));
    }
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        cx.err("spec", "at least one of http, tls or tcp routes is required");
    }
    vs.export_to = export_to(cx, &o, &meta.namespace, false);
    vs
}

/// Whether host pattern `a` matches every name `b` matches (`*.com` covers `*.foo.com`).
pub(crate) fn host_covers(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a == b || a == "*" {
        return true;
    }
    match a.strip_prefix('*') {
        Some(suffix) => b.ends_with(suffix) && b.len() > suffix.len(),
        None => false,
    }
}

fn http_route(cx: &mut Ctx, path: &str, v: &Value) -> HttpRoute {
    let mut route = HttpRoute {
        name: None,
        matches: vec![],
        action: HttpAction::Route(vec![]),
        rewrite: None,
        timeout: None,
        retries: None,
        fault: None,
        mirrors: vec![],
        headers: Headers::default(),
    };
    let Some(o) = cx.object(path, v, HTTP_FIELDS, HTTP_NOT_APPLIED) else { return route };
    shapes::check(cx, &o, "corsPolicy", shapes::cors_policy);
    route.name = cx.opt_string(&o, "name");
    let match_path = o.at("match");
    for (i, m) in cx.opt_list(&o, "match").iter().enumerate() {
        route.matches.push(http_match(cx, &index(&match_path, i), m));
    }

    // Exactly one action.
    let actions: Vec<&str> =
        ["route", "redirect", "directResponse", "delegate"].into_iter().filter(|k| o.has(k)).collect();
    if actions.len() > 1 {
        cx.err(
            path,
            format!(
                "only one of route, redirect, directResponse or delegate may be set (found {})",
                actions.join(", ")
            ),
        );
    }
    route.action = match actions.first().copied() {
        None => {
            cx.err(path, "one of route, redirect, directResponse or delegate is required");
            HttpAction::Route(vec![])
        }
        Some("route") => HttpAction::Route(http_destinations(cx, &o)),
        Some("redirect") => HttpAction::Redirect(redirect(cx, &o)),
        Some("directResponse") => HttpAction::DirectResponse(direct_response(cx, &o)),
        Some(_) => {
            cx.not_applied.push(o.at("delegate"));
            delegate(cx, &o)
        }
    };
    let redirecting = matches!(route.action, HttpAction::Redirect(_));
    if redirecting && o.has("fault") {
        cx.err(o.at("fault"), "cannot be combined with redirect");
    }
    if redirecting && o.has("rewrite") {
        cx.err(o.at("rewrite"), "cannot be combined with redirect");
    }

    route.rewrite = rewrite(cx, &o);
    if let Some(t) = o.get("timeout") {
        // `0s` disables the timeout; otherwise whole milliseconds from 1ms.
        route.timeout = cx.duration(&o.at("timeout"), t);
        if let Some(d) = route.timeout {
            if !d.is_zero() && (d.as_nanos() % 1_000_000 != 0) {
                cx.err(o.at("timeout"), "only whole milliseconds are supported");
            }
        }
    }
    route.retries = retries(cx, &o);
    route.fault = fault(cx, &o);
    route.mirrors = mirrors(cx, &o);
    route.headers = headers(cx, &o, "headers");
    route
}

fn http_match(cx: &mut Ctx, path: &str, v: &Value) -> HttpMatch {
    let mut m = HttpMatch::default();
    let Some(o) = cx.object(path, v, MATCH_FIELDS, MATCH_NOT_APPLIED) else { return m };
    shapes::check(cx, &o, "statPrefix", shapes::string);
    m.name = cx.opt_string(&o, "name");
    m.uri = o.get("uri").map(|u| string_match(cx, &o.at("uri"), u));
    m.scheme = o.get("scheme").map(|u| string_match(cx, &o.at("scheme"), u));
    m.method = o.get("method").map(|u| string_match(cx, &o.at("method"), u));
    m.authority = o.get("authority").map(|u| string_match(cx, &o.at("authority"), u));
    m.headers = match_map(cx, &o, "headers", true);
    m.query_params = match_map(cx, &o, "queryParams", false);
    m.without_headers = match_map(cx, &o, "withoutHeaders", true);
    m.port = cx.opt_port(&o, "port");
    m.source_labels = cx.labels(&o, "sourceLabels");
    m.source_namespace = source_namespace(cx, &o);
    m.gateways = gateway_names(cx, &o, "gateways");
    m.ignore_uri_case = cx.opt_bool(&o, "ignoreUriCase").unwrap_or(false);
    m
}

/// `headers`/`queryParams`/`withoutHeaders`: name → StringMatch (`{}` or null: present).
fn match_map(cx: &mut Ctx, o: &Obj, key: &str, header_names: bool) -> BTreeMap<String, StringMatch> {
    let mut out = BTreeMap::new();
    let Some(v) = o.map.get(key) else { return out };
    let path = o.at(key);
    if v.is_null() {
        return out;
    }
    let Some(map) = v.as_object() else {
        cx.err(path, "must be a map of name to match");
        return out;
    };
    for (name, m) in map {
        let p = join(&path, name);
        if header_names {
            if let Err(msg) = match_header_name(name) {
                cx.err(&p, msg);
            }
        } else if name.is_empty() {
            cx.err(&p, "query parameter name cannot be empty");
        }
        let sm = if m.is_null() { StringMatch::Present } else { string_match(cx, &p, m) };
        // Header names are case-insensitive; Envoy matches them lower-cased.
        let key = if header_names { name.to_ascii_lowercase() } else { name.clone() };
        out.insert(key, sm);
    }
    out
}

fn http_destinations(cx: &mut Ctx, o: &Obj) -> Vec<HttpRouteDestination> {
    let path = o.at("route");
    let items = cx.opt_list(o, "route");
    if items.is_empty() {
        cx.err(&path, "at least one destination is required");
    }
    let mut out = Vec::new();
    let mut weights = Vec::new();
    for (i, d) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(dobj) = cx.object(&p, d, &["destination", "weight", "headers"], &[]) else { continue };
        let dest = match cx.required(&dobj, "destination") {
            Some(dv) => destination(cx, &dobj.at("destination"), dv),
            None => Destination { host: String::new(), subset: None, port: None },
        };
        let weight = dobj.get("weight").map(|w| cx.int(&dobj.at("weight"), w, 0, 100).map(|w| w as u32));
        weights.push(weight);
        let headers = headers(cx, &dobj, "headers");
        out.push(HttpRouteDestination { destination: dest, weight: 0, headers });
    }
    let resolved = resolve_weights(cx, &path, &weights);
    for (d, w) in out.iter_mut().zip(resolved) {
        d.weight = w;
    }
    out
}

/// Istio's weight rules: a lone destination takes all traffic; several must sum to 100.
/// `weights` holds, per destination, None when absent and Some(None) when invalid.
fn resolve_weights(cx: &mut Ctx, path: &str, weights: &[Option<Option<u32>>]) -> Vec<u32> {
    if weights.len() <= 1 {
        return vec![100; weights.len()];
    }
    if weights.iter().any(|w| matches!(w, Some(None))) {
        return vec![0; weights.len()];
    }
    let resolved: Vec<u32> = weights.iter().map(|w| w.flatten().unwrap_or(0)).collect();
    let sum: u32 = resolved.iter().sum();
    if sum != 100 {
        cx.err(path, format!("destination weights must sum to 100 (they sum to {sum})"));
    }
    resolved
}

fn redirect(cx: &mut Ctx, o: &Obj) -> HttpRedirect {
    let mut r = HttpRedirect { uri: None, authority: None, port: None, scheme: None, redirect_code: 301 };
    let Some(v) = o.get("redirect") else { return r };
    let Some(ro) =
        cx.object(&o.at("redirect"), v, &["uri", "authority", "port", "derivePort", "scheme", "redirectCode"], &[])
    else {
        return r;
    };
    r.uri = cx.opt_string(&ro, "uri");
    r.authority = cx.opt_string(&ro, "authority");
    r.scheme = cx.opt_string(&ro, "scheme");
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            cx.err(ro.at("scheme"), "must be \"http\" or \"https\"");
        }
    }
    if ro.has("port") && ro.has("derivePort") {
        cx.err(ro.at("port"), "only one of port or derivePort may be set");
    }
    r.port = cx.opt_port(&ro, "port").map(RedirectPort::Number).or_else(|| {
        cx.enumeration(
            &ro,
            "derivePort",
            &[
                ("FROM_PROTOCOL_DEFAULT", RedirectPort::FromProtocolDefault),
                ("FROM_REQUEST_PORT", RedirectPort::FromRequestPort),
            ],
        )
    });
    if let Some(c) = ro.get("redirectCode") {
        if c.as_i64() != Some(0) {
            r.redirect_code = cx.int(&ro.at("redirectCode"), c, 300, 399).map(|c| c as u16).unwrap_or(301);
        }
    }
    if r.uri.is_none() && r.authority.is_none() && r.port.is_none() && r.scheme.is_none() {
        cx.err(o.at("redirect"), "must set at least one of uri, authority, scheme, port or derivePort");
    }
    r
}

fn direct_response(cx: &mut Ctx, o: &Obj) -> DirectResponse {
    let mut d = DirectResponse { status: 200, body: None };
    let Some(v) = o.get("directResponse") else { return d };
    let Some(dobj) = cx.object(&o.at("directResponse"), v, &["status", "body"], &[]) else { return d };
    if let Some(s) = cx.required(&dobj, "status") {
        d.status = cx.int(&dobj.at("status"), s, 200, 599).map(|s| s as u16).unwrap_or(200);
    }
    if let Some(b) = dobj.get("body") {
        let bpath = dobj.at("body");
        if let Some(bo) = cx.object(&bpath, b, &["string", "bytes"], &[]) {
            match (bo.get("string"), bo.get("bytes")) {
                (Some(_), Some(_)) => cx.err(&bpath, "only one of string or bytes may be set"),
                (Some(s), None) => d.body = cx.string(&bo.at("string"), s).map(String::into_bytes),
                (None, Some(b)) => {
                    if let Some(text) = cx.string(&bo.at("bytes"), b) {
                        match base64_decode(&text) {
                            Some(bytes) => d.body = Some(bytes),
                            None => cx.err(bo.at("bytes"), "is not valid base64"),
                        }
                    }
                }
                (None, None) => cx.err(&bpath, "one of string or bytes is required"),
            }
        }
        if d.body.as_ref().is_some_and(|b| b.len() > 1024 * 1024) {
            cx.err(&bpath, "must be smaller than 1MB");
        }
    }
    d
}

/// Standard base64 (protobuf JSON `bytes`), padding optional; URL-safe letters accepted too.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    let trimmed = s.trim_end_matches('=');
    if s.len() - trimmed.len() > 2 {
        return None;
    }
    for c in trimmed.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // A single leftover symbol cannot encode a byte.
    if trimmed.len() % 4 == 1 {
        return None;
    }
    Some(out)
}

fn delegate(cx: &mut Ctx, o: &Obj) -> HttpAction {
    let mut name = String::new();
    let mut namespace = None;
    if let Some(v) = o.get("delegate") {
        if let Some(d) = cx.object(&o.at("delegate"), v, &["name", "namespace"], &[]) {
            name = cx.req_string(&d, "name").unwrap_or_default();
            namespace = cx.opt_string(&d, "namespace");
        }
    }
    HttpAction::Delegate { name, namespace }
}

fn rewrite(cx: &mut Ctx, o: &Obj) -> Option<HttpRewrite> {
    let v = o.get("rewrite")?;
    let ro = cx.object(&o.at("rewrite"), v, &["uri", "authority", "uriRegexRewrite"], &[])?;
    let mut r = HttpRewrite {
        uri: cx.opt_string(&ro, "uri"),
        authority: cx.opt_string(&ro, "authority"),
        ..Default::default()
    };
    if let Some(rr) = ro.get("uriRegexRewrite") {
        let path = ro.at("uriRegexRewrite");
        if let Some(rro) = cx.object(&path, rr, &["match", "rewrite"], &[]) {
            let pattern = regex(cx, &rro, "match");
            let replacement = cx.req_string(&rro, "rewrite");
            if let (Some(pattern), Some(rewrite)) = (pattern, replacement) {
                r.uri_regex_rewrite = Some(RegexRewrite { pattern, rewrite });
            }
        }
    }
    if r.uri.is_some() && ro.has("uriRegexRewrite") {
        cx.err(o.at("rewrite"), "only one of uri or uriRegexRewrite may be set");
    }
    if r.uri.is_none() && !ro.has("uriRegexRewrite") && r.authority.is_none() {
        cx.err(o.at("rewrite"), "must set at least one of uri, uriRegexRewrite or authority");
    }
    Some(r)
}

fn retries(cx: &mut Ctx, o: &Obj) -> Option<HttpRetry> {
    let v = o.get("retries")?;
    let ro = cx.object(&o.at("retries"), v, RETRY_FIELDS, RETRY_NOT_APPLIED)?;
    shapes::check(cx, &ro, "backoff", shapes::duration);
    shapes::check(cx, &ro, "retryIgnorePreviousHosts", shapes::boolean);
    let attempts =
        ro.get("attempts").and_then(|a| cx.int(&ro.at("attempts"), a, 0, i32::MAX as i64)).unwrap_or(0) as u32;
    let per_try_timeout = cx.opt_duration_ms(&ro, "perTryTimeout");
    let mut retry_on = Vec::new();
    let mut retriable_status_codes = Vec::new();
    if let Some(on) = cx.opt_string(&ro, "retryOn") {
        for cond in on.split(',').map(str::trim) {
            if RETRY_ON.contains(&cond) {
                retry_on.push(cond.to_string());
            } else if let Some(code) = cond.parse::<u16>().ok().filter(|c| (100..=599).contains(c)) {
                retriable_status_codes.push(code);
            } else {
                cx.err(ro.at("retryOn"), format!("{cond:?} is not a retry condition or an HTTP status code"));
            }
        }
    }
    let retry_remote_localities = cx.opt_bool(&ro, "retryRemoteLocalities");
    let configured = per_try_timeout.is_some() || ro.has("retryOn") || retry_remote_localities.is_some();
    if attempts == 0 && configured {
        cx.err(o.at("retries"), "retry settings are given but attempts is 0 (retries disabled)");
    }
    Some(HttpRetry { attempts, per_try_timeout, retry_on, retriable_status_codes, retry_remote_localities })
}

fn fault(cx: &mut Ctx, o: &Obj) -> Option<HttpFault> {
    let v = o.get("fault")?;
    let fo = cx.object(&o.at("fault"), v, &["delay", "abort"], &[])?;
    let mut f = HttpFault::default();
    if let Some(d) = fo.get("delay") {
        let dpath = fo.at("delay");
        if let Some(dobj) = cx.object(&dpath, d, &["fixedDelay", "percentage", "percent", "exponentialDelay"], &[]) {
            let percentage = fault_percentage(cx, &dobj);
            if dobj.has("exponentialDelay") {
                cx.err(dobj.at("exponentialDelay"), "is not supported (Istio rejects it too); use fixedDelay");
            }
            match cx.opt_duration_ms(&dobj, "fixedDelay") {
                Some(fixed_delay) => f.delay = Some(FaultDelay { fixed_delay, percentage }),
                None if !dobj.has("fixedDelay") && !dobj.has("exponentialDelay") => {
                    cx.err(dobj.at("fixedDelay"), "required")
                }
                None => {}
            }
        }
    }
    if let Some(a) = fo.get("abort") {
        let apath = fo.at("abort");
        if let Some(aobj) = cx.object(&apath, a, &["httpStatus", "grpcStatus", "percentage", "http2Error"], &[]) {
            let percentage = fault_percentage(cx, &aobj);
            let status = match (aobj.get("httpStatus"), aobj.get("grpcStatus")) {
                (Some(_), Some(_)) => {
                    cx.err(&apath, "only one of httpStatus or grpcStatus may be set");
                    None
                }
                (Some(h), None) => cx.int(&aobj.at("httpStatus"), h, 200, 599).map(|s| AbortStatus::Http(s as u16)),
                (None, Some(g)) => grpc_status(cx, &aobj.at("grpcStatus"), g),
                (None, None) if aobj.has("http2Error") => {
                    cx.err(
                        aobj.at("http2Error"),
                        "is not supported (Istio rejects it too); use httpStatus or grpcStatus",
                    );
                    None
                }
                (None, None) => {
                    cx.err(&apath, "one of httpStatus or grpcStatus is required");
                    None
                }
            };
            if let Some(status) = status {
                f.abort = Some(FaultAbort { status, percentage });
            }
        }
    }
    if !fo.has("delay") && !fo.has("abort") {
        cx.err(o.at("fault"), "needs a delay and/or an abort");
    }
    Some(f)
}

/// `percentage: {value}` (or the deprecated integer `percent`); 100 when neither is given.
fn fault_percentage(cx: &mut Ctx, o: &Obj) -> f64 {
    if o.has("percentage") && o.has("percent") {
        cx.err(o.at("percent"), "only one of percentage or percent may be set");
    }
    if let Some(p) = o.get("percentage") {
        return cx.percent_msg(&o.at("percentage"), p).unwrap_or(0.0);
    }
    if let Some(p) = o.get("percent") {
        return cx.int(&o.at("percent"), p, 0, 100).map(|p| p as f64).unwrap_or(0.0);
    }
    100.0
}

fn grpc_status(cx: &mut Ctx, path: &str, v: &Value) -> Option<AbortStatus> {
    let s = cx.string(path, v)?;
    let code = GRPC_STATUS
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, c)| *c)
        .or_else(|| s.parse::<u32>().ok().filter(|c| *c <= 16));
    if code.is_none() {
        cx.err(path, format!("{s:?} is not a gRPC status (e.g. UNAVAILABLE, NOT_FOUND)"));
    }
    code.map(AbortStatus::Grpc)
}

fn mirrors(cx: &mut Ctx, o: &Obj) -> Vec<HttpMirror> {
    let mut out = Vec::new();
    if o.has("mirror") && o.has("mirrors") {
        cx.err(o.at("mirrors"), "cannot be combined with mirror");
    }
    if o.has("mirrorPercentage") && o.has("mirrorPercent") {
        cx.err(o.at("mirrorPercent"), "only one of mirrorPercentage or mirrorPercent may be set");
    }
    if let Some(m) = o.get("mirror") {
        let dest = destination(cx, &o.at("mirror"), m);
        let percentage = match (o.get("mirrorPercentage"), o.get("mirrorPercent")) {
            (Some(p), _) => cx.percent_msg(&o.at("mirrorPercentage"), p),
            (None, Some(p)) => cx.int(&o.at("mirrorPercent"), p, 0, 100).map(|p| p as f64),
            (None, None) => None,
        };
        out.push(HttpMirror { destination: dest, percentage });
    } else if o.has("mirrorPercentage") || o.has("mirrorPercent") {
        let key = if o.has("mirrorPercentage") { "mirrorPercentage" } else { "mirrorPercent" };
        cx.err(o.at(key), "needs mirror");
    }
    let path = o.at("mirrors");
    for (i, m) in cx.opt_list(o, "mirrors").iter().enumerate() {
        let p = index(&path, i);
        let Some(mo) = cx.object(&p, m, &["destination", "percentage"], &[]) else { continue };
        let dest = match cx.required(&mo, "destination") {
            Some(d) => destination(cx, &mo.at("destination"), d),
            None => continue,
        };
        let percentage = mo.get("percentage").and_then(|pv| cx.percent_msg(&mo.at("percentage"), pv));
        out.push(HttpMirror { destination: dest, percentage });
    }
    out
}

fn route_destinations(cx: &mut Ctx, o: &Obj, what: &str) -> Vec<RouteDestination> {
    let path = o.at("route");
    let items = cx.opt_list(o, "route");
    if items.is_empty() {
        cx.err(&path, format!("{what} route needs at least one destination"));
    }
    let mut out = Vec::new();
    let mut weights = Vec::new();
    for (i, d) in items.iter().enumerate() {
        let p = index(&path, i);
        let Some(dobj) = cx.object(&p, d, &["destination", "weight"], &[]) else { continue };
        let dest = match cx.required(&dobj, "destination") {
            Some(dv) => destination(cx, &dobj.at("destination"), dv),
            None => Destination { host: String::new(), subset: None, port: None },
        };
        weights.push(dobj.get("weight").map(|w| cx.int(&dobj.at("weight"), w, 0, 100).map(|w| w as u32)));
        out.push(RouteDestination { destination: dest, weight: 0 });
    }
    let resolved = resolve_weights(cx, &path, &weights);
    for (d, w) in out.iter_mut().zip(resolved) {
        d.weight = w;
    }
    out
}

fn tcp_route(cx: &mut Ctx, path: &str, v: &Value) -> TcpRoute {
    let mut r = TcpRoute { matches: vec![], route: vec![] };
    let Some(o) = cx.object(path, v, &["match", "route"], &[]) else { return r };
    let mpath = o.at("match");
    for (i, m) in cx.opt_list(&o, "match").iter().enumerate() {
        let p = index(&mpath, i);
        let Some(mo) = cx.object(
            &p,
            m,
            &["destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace"],
            &["sourceSubnet"],
        ) else {
            continue;
        };
        shapes::check(cx, &mo, "sourceSubnet", shapes::string);
        r.matches.push(L4Match {
            destination_subnets: cidrs(cx, &mo, "destinationSubnets"),
            port: cx.opt_port(&mo, "port"),
            source_labels: cx.labels(&mo, "sourceLabels"),
            source_namespace: source_namespace(cx, &mo),
            gateways: gateway_names(cx, &mo, "gateways"),
        });
    }
    r.route = route_destinations(cx, &o, "a TCP");
    r
}

fn tls_route(cx: &mut Ctx, path: &str, v: &Value, hosts: &[String]) -> TlsRoute {
    let mut r = TlsRoute { matches: vec![], route: vec![] };
    let Some(o) = cx.object(path, v, &["match", "route"], &[]) else { return r };
    let mpath = o.at("match");
    let items = cx.opt_list(&o, "match");
    if items.is_empty() {
        cx.err(&mpath, "a TLS route needs at least one match");
    }
    for (i, m) in items.iter().enumerate() {
        let p = index(&mpath, i);
        let Some(mo) = cx.object(
            &p,
            m,
            &["sniHosts", "destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace"],
            &["sourceSubnet"],
        ) else {
            continue;
        };
        shapes::check(cx, &mo, "sourceSubnet", shapes::string);
        let sni_hosts = cx.string_list(&mo, "sniHosts");
        if sni_hosts.is_empty() {
            cx.err(mo.at("sniHosts"), "at least one SNI host is required");
        }
        for (j, sni) in sni_hosts.iter().enumerate() {
            let sp = index(&mo.at("sniHosts"), j);
            if let Err(m) = check_host(sni, true) {
                cx.err(sp, m);
            } else if !hosts.iter().any(|h| host_covers(h, sni)) {
                cx.err(sp, format!("SNI host {sni:?} is not within the VirtualService's hosts"));
            }
        }
        r.matches.push(TlsMatch {
            sni_hosts,
            destination_subnets: cidrs(cx, &mo, "destinationSubnets"),
            port: cx.opt_port(&mo, "port"),
            source_labels: cx.labels(&mo, "sourceLabels"),
            source_namespace: source_namespace(cx, &mo),
            gateways: gateway_names(cx, &mo, "gateways"),
        });
    }
    r.route = route_destinations(cx, &o, "a TLS");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_standard_and_unpadded() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("a"), None);
        assert_eq!(base64_decode("a$=="), None);
    }

    #[test]
    fn host_patterns_cover_narrower_ones() {
        assert!(host_covers("*.example.com", "api.example.com"));
        assert!(host_covers("*.com", "*.example.com"));
        assert!(host_covers("*", "anything"));
        assert!(!host_covers("*.example.com", "example.com"));
        assert!(!host_covers("api.example.com", "*.example.com"));
        assert!(host_covers("Reviews", "reviews"));
    }
}
