//! Spec validators, one module per kind, and the pieces several kinds share.

mod destination_rule;
mod opaque;
mod service_entry;
mod shapes;
mod sidecar;
mod virtual_service;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::meta::{Kind, ObjectMeta, Spec};
use crate::spec::{Cidr, Destination, HeaderOperations, Headers, Protocol, Regex, StringMatch, WorkloadSelector};
use crate::walk::{check_host, index, is_dns1123_label, join, Ctx, Obj};

/// Validates `spec` of a resource of `kind` (path `spec`). Errors go to `cx`; the returned
/// spec is only meaningful when there are none.
pub(crate) fn spec(cx: &mut Ctx, kind: Kind, v: &Value, meta: &ObjectMeta) -> Spec {
    match kind {
        Kind::ServiceEntry => Spec::ServiceEntry(service_entry::service_entry(cx, v, meta)),
        Kind::WorkloadEntry => Spec::WorkloadEntry(service_entry::workload_entry_spec(cx, v)),
        Kind::VirtualService => Spec::VirtualService(virtual_service::virtual_service(cx, v, meta)),
        Kind::DestinationRule => Spec::DestinationRule(destination_rule::destination_rule(cx, v, meta)),
        Kind::Sidecar => Spec::Sidecar(sidecar::sidecar(cx, v, meta)),
        Kind::Gateway => Spec::Opaque(opaque::gateway(cx, v)),
        Kind::WorkloadGroup => Spec::Opaque(opaque::workload_group(cx, v)),
        Kind::AuthorizationPolicy => Spec::Opaque(opaque::authorization_policy(cx, v)),
        Kind::PeerAuthentication => Spec::Opaque(opaque::peer_authentication(cx, v)),
    }
}

/// `workloadSelector: {labels: {...}}`; Istio rejects `*` in keys or values.
fn workload_selector(cx: &mut Ctx, o: &Obj, key: &str) -> Option<WorkloadSelector> {
    let v = o.get(key)?;
    let s = cx.object(&o.at(key), v, &["labels"], &[])?;
    let labels = cx.labels(&s, "labels");
    for (k, val) in &labels {
        if k.contains('*') || val.contains('*') {
            cx.err(join(&s.at("labels"), k), "wildcards are not supported in selectors");
        }
    }
    Some(WorkloadSelector { labels })
}

/// `exportTo`: `.`, `*`, `~` (ServiceEntry only) or namespace names; no duplicates; `*` and `~`
/// stand alone.
fn export_to(cx: &mut Ctx, o: &Obj, namespace: &str, allow_none: bool) -> Vec<String> {
    let list = cx.string_list(o, "exportTo");
    let path = o.at("exportTo");
    let mut seen = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        let valid = e == "." || e == "*" || (e == "~" && allow_none) || is_dns1123_label(e);
        if !valid {
            let what =
                if e == "~" { "\"~\" is only allowed in ServiceEntry" } else { "is not \".\", \"*\" or a namespace" };
            cx.err(index(&path, i), format!("{e:?} {what}"));
        }
        let key = if e == "." { namespace } else { e.as_str() };
        if !seen.insert(key.to_string()) {
            cx.err(index(&path, i), format!("duplicate entry {e:?}"));
        }
    }
    if list.len() > 1 && (list.iter().any(|e| e == "*") || list.iter().any(|e| e == "~")) {
        cx.err(path, "\"*\" and \"~\" cannot be combined with other entries");
    }
    list
}

/// Istio's Destination: host (not `*`), subset (DNS label), port {number}.
fn destination(cx: &mut Ctx, path: &str, v: &Value) -> Destination {
    let mut d = Destination { host: String::new(), subset: None, port: None };
    let Some(o) = cx.object(path, v, &["host", "subset", "port"], &[]) else { return d };
    if let Some(h) = cx.req_string(&o, "host") {
        if let Err(m) = check_host(&h, false) {
            cx.err(o.at("host"), m);
        }
        d.host = h;
    }
    if let Some(s) = cx.opt_string(&o, "subset") {
        if !is_dns1123_label(&s) {
            cx.err(o.at("subset"), format!("subset name {s:?} is not a DNS-1123 label"));
        }
        d.subset = Some(s);
    }
    d.port = port_selector(cx, &o, "port");
    d
}

/// `port: {number: N}`.
fn port_selector(cx: &mut Ctx, o: &Obj, key: &str) -> Option<u16> {
    let v = o.get(key)?;
    let p = cx.object(&o.at(key), v, &["number"], &[])?;
    match p.get("number") {
        None => {
            cx.err(p.at("number"), "required");
            None
        }
        Some(n) => cx.port(&p.at("number"), n),
    }
}

/// Istio's StringMatch: exactly one of exact/prefix/regex, or `{}` (present / any).
fn string_match(cx: &mut Ctx, path: &str, v: &Value) -> StringMatch {
    let Some(o) = cx.object(path, v, &["exact", "prefix", "regex"], &[]) else { return StringMatch::Present };
    let set: Vec<&str> = ["exact", "prefix", "regex"].into_iter().filter(|k| o.has(k)).collect();
    if set.len() > 1 {
        cx.err(path, format!("only one of exact, prefix or regex may be set (found {})", set.join(", ")));
        return StringMatch::Present;
    }
    match set.first() {
        None => StringMatch::Present,
        Some(&"exact") => StringMatch::Exact(cx.opt_string(&o, "exact").unwrap_or_default()),
        Some(&"prefix") => match cx.opt_string(&o, "prefix") {
            Some(p) => StringMatch::Prefix(p),
            None => {
                cx.err(o.at("prefix"), "must not be empty");
                StringMatch::Present
            }
        },
        Some(_) => regex(cx, &o, "regex").map(StringMatch::Regex).unwrap_or(StringMatch::Present),
    }
}

/// A required regex field (Istio caps the source at 1024 bytes for Envoy's RE2 program size).
fn regex(cx: &mut Ctx, o: &Obj, key: &str) -> Option<Regex> {
    let src = cx.req_string(o, key)?;
    if src.len() > 1024 {
        cx.err(o.at(key), "regex is too large (at most 1024 bytes)");
        return None;
    }
    match Regex::new(&src) {
        Ok(r) => Some(r),
        Err(m) => {
            cx.err(o.at(key), m);
            None
        }
    }
}

/// `headers: {request: {set, add, remove}, response: {...}}` with Istio's name and value rules.
fn headers(cx: &mut Ctx, o: &Obj, key: &str) -> Headers {
    let mut h = Headers::default();
    let Some(v) = o.get(key) else { return h };
    let Some(ho) = cx.object(&o.at(key), v, &["request", "response"], &[]) else { return h };
    h.request = header_ops(cx, &ho, "request", true);
    h.response = header_ops(cx, &ho, "response", false);
    h
}

fn header_ops(cx: &mut Ctx, o: &Obj, key: &str, request: bool) -> HeaderOperations {
    let mut ops = HeaderOperations::default();
    let Some(v) = o.get(key) else { return ops };
    let Some(x) = cx.object(&o.at(key), v, &["set", "add", "remove"], &[]) else { return ops };
    for field in ["set", "add"] {
        let map = cx.string_map(&x, field);
        for (name, value) in &map {
            let path = join(&x.at(field), name);
            // Requests may set the authority (`:authority`/`host`); nothing else internal.
            let authority = name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host");
            if let Err(m) = header_op_name(name, request && authority) {
                cx.err(&path, m);
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                cx.err(&path, "header value contains control characters");
            }
        }
        if field == "set" {
            ops.set = map;
        } else {
            ops.add = map;
        }
    }
    ops.remove = cx.string_list(&x, "remove");
    for (i, name) in ops.remove.iter().enumerate() {
        if let Err(m) = header_op_name(name, false) {
            cx.err(index(&x.at("remove"), i), m);
        }
    }
    if request {
        let set_authority = ops.set.keys().chain(ops.add.keys()).filter(|k| is_authority(k)).count();
        if set_authority > 1 {
            cx.err(o.at(key), "the authority header cannot be set more than once");
        }
    }
    ops
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn header_op_name(name: &str, authority_ok: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if authority_ok {
        return Ok(());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err("the Host header cannot be changed here".into());
    }
    if name.starts_with(':') {
        return Err(format!("header {name:?} cannot have a \":\" prefix"));
    }
    if !is_token(name) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    Ok(())
}

/// RFC 7230 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name in a match: a token or a pseudo-header (Istio also allows JWT claim routing
/// keys `@request.auth.claims...`, which apply to gateways only).
fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if matches!(name, ":method" | ":scheme" | ":authority" | ":path" | ":status") || is_token(name) {
        Ok(())
    } else if name.starts_with("@request.auth.claims") {
        Err("JWT claim based routing is only supported for gateways".into())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

/// `addresses`/`destinationSubnets`: IPs or CIDRs.
fn cidrs(cx: &mut Ctx, o: &Obj, key: &str) -> Vec<Cidr> {
    let path = o.at(key);
    let list = cx.string_list(o, key);
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| match Cidr::parse(s) {
            Some(c) => Some(c),
            None => {
                cx.err(index(&path, i), format!("{s:?} is not an IP address or CIDR"));
                None
            }
        })
        .collect()
}

/// A port's protocol: the `protocol` field (must be one Istio knows), else the name prefix.
fn port_protocol(cx: &mut Ctx, o: &Obj, name: &str) -> Protocol {
    match cx.opt_string(o, "protocol") {
        Some(p) => {
            let parsed = Protocol::parse(&p);
            if matches!(parsed, Protocol::Unsupported(_)) {
                cx.err(
                    o.at("protocol"),
                    format!("unsupported protocol {p:?} (HTTP, HTTPS, HTTP2, GRPC, GRPC-Web, TLS, TCP, UDP, Mongo, Redis, MySQL)"),
                );
            }
            parsed
        }
        None => Protocol::infer(None, None, name),
    }
}

/// Gateway references: `mesh`, `namespace/name`, or a legacy FQDN-style name.
fn gateway_names(cx: &mut Ctx, o: &Obj, key: &str) -> Vec<String> {
    let path = o.at(key);
    let list = cx.string_list(o, key);
    for (i, g) in list.iter().enumerate() {
        let ok = match g.split_once('/') {
            Some((ns, name)) => is_dns1123_label(ns) && is_dns1123_label(name),
            None => check_host(g, false).is_ok(),
        };
        if !ok {
            cx.err(index(&path, i), format!("invalid gateway {g:?} (use namespace/name or mesh)"));
        }
    }
    list
}

/// `sourceNamespace`: a DNS label.
fn source_namespace(cx: &mut Ctx, o: &Obj) -> Option<String> {
    let ns = cx.opt_string(o, "sourceNamespace")?;
    if !is_dns1123_label(&ns) {
        cx.err(o.at("sourceNamespace"), format!("{ns:?} is not a valid namespace"));
    }
    Some(ns)
}
