//! Shape checks for Istio fields Weft accepts but does not apply yet: their field names, enums
//! and basic types are checked so a typo is still an error, although nothing is translated.

use serde_json::Value;

use super::{destination_rule::connection_pool_at, string_match};
use crate::walk::{index, Ctx, Obj};

/// Runs the shape check for `key` of `o` when it is present.
pub(super) fn check(cx: &mut Ctx, o: &Obj, key: &str, f: fn(&mut Ctx, &str, &Value)) {
    if let Some(v) = o.get(key) {
        f(cx, &o.at(key), v);
    }
}

pub(super) fn cors_policy(cx: &mut Ctx, path: &str, v: &Value) {
    let fields = [
        "allowOrigins",
        "allowOrigin",
        "allowMethods",
        "allowHeaders",
        "exposeHeaders",
        "maxAge",
        "allowCredentials",
        "unmatchedPreflights",
    ];
    let Some(o) = cx.object(path, v, &fields, &[]) else { return };
    let opath = o.at("allowOrigins");
    for (i, m) in cx.opt_list(&o, "allowOrigins").iter().enumerate() {
        string_match(cx, &index(&opath, i), m);
    }
    for k in ["allowOrigin", "allowMethods", "allowHeaders", "exposeHeaders"] {
        cx.string_list(&o, k);
    }
    cx.opt_duration(&o, "maxAge");
    cx.opt_bool(&o, "allowCredentials");
    cx.enumeration(&o, "unmatchedPreflights", &[("UNSPECIFIED", ()), ("FORWARD", ()), ("IGNORE", ())]);
}

/// DestinationRule `tls` (ClientTLSSettings).
pub(super) fn client_tls(cx: &mut Ctx, path: &str, v: &Value) {
    let fields = [
        "mode",
        "clientCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "subjectAltNames",
        "sni",
        "insecureSkipVerify",
        "caCrl",
    ];
    let Some(o) = cx.object(path, v, &fields, &[]) else { return };
    cx.enumeration(&o, "mode", &[("DISABLE", ()), ("SIMPLE", ()), ("MUTUAL", ()), ("ISTIO_MUTUAL", ())]);
    for k in ["clientCertificate", "privateKey", "caCertificates", "credentialName", "sni", "caCrl"] {
        cx.opt_string(&o, k);
    }
    cx.string_list(&o, "subjectAltNames");
    cx.opt_bool(&o, "insecureSkipVerify");
}

/// Sidecar ingress `tls` (ServerTLSSettings).
pub(super) fn server_tls(cx: &mut Ctx, path: &str, v: &Value) {
    let fields = [
        "httpsRedirect",
        "mode",
        "serverCertificate",
        "privateKey",
        "caCertificates",
        "caCrl",
        "credentialName",
        "credentialNames",
        "tlsCertificates",
        "subjectAltNames",
        "verifyCertificateSpki",
        "verifyCertificateHash",
        "minProtocolVersion",
        "maxProtocolVersion",
        "cipherSuites",
    ];
    let Some(o) = cx.object(path, v, &fields, &[]) else { return };
    cx.enumeration(
        &o,
        "mode",
        &[
            ("PASSTHROUGH", ()),
            ("SIMPLE", ()),
            ("MUTUAL", ()),
            ("AUTO_PASSTHROUGH", ()),
            ("ISTIO_MUTUAL", ()),
            ("OPTIONAL_MUTUAL", ()),
        ],
    );
    let versions = [("TLS_AUTO", ()), ("TLSV1_0", ()), ("TLSV1_1", ()), ("TLSV1_2", ()), ("TLSV1_3", ())];
    cx.enumeration(&o, "minProtocolVersion", &versions);
    cx.enumeration(&o, "maxProtocolVersion", &versions);
    for k in ["credentialNames", "subjectAltNames", "verifyCertificateSpki", "verifyCertificateHash", "cipherSuites"] {
        cx.string_list(&o, k);
    }
}

pub(super) fn proxy_protocol(cx: &mut Ctx, path: &str, v: &Value) {
    if let Some(o) = cx.object(path, v, &["version"], &[]) {
        cx.enumeration(&o, "version", &[("V1", ()), ("V2", ())]);
    }
}

pub(super) fn tunnel(cx: &mut Ctx, path: &str, v: &Value) {
    if let Some(o) = cx.object(path, v, &["protocol", "targetHost", "targetPort"], &[]) {
        if let Some(p) = cx.opt_string(&o, "protocol") {
            if p != "CONNECT" && p != "POST" {
                cx.err(o.at("protocol"), "must be CONNECT or POST");
            }
        }
        cx.req_string(&o, "targetHost");
        match o.get("targetPort") {
            None => cx.err(o.at("targetPort"), "required"),
            Some(p) => {
                cx.port(&o.at("targetPort"), p);
            }
        }
    }
}

pub(super) fn retry_budget(cx: &mut Ctx, path: &str, v: &Value) {
    if let Some(o) = cx.object(path, v, &["percent", "minRetryConcurrency"], &[]) {
        if let Some(p) = o.get("percent") {
            cx.percent_msg(&o.at("percent"), p);
        }
        cx.opt_u32(&o, "minRetryConcurrency");
    }
}

pub(super) fn warmup(cx: &mut Ctx, path: &str, v: &Value) {
    if let Some(o) = cx.object(path, v, &["duration", "minimumPercent", "aggression"], &[]) {
        if o.has("duration") {
            cx.opt_duration_ms(&o, "duration");
        } else {
            cx.err(o.at("duration"), "required");
        }
        if let Some(p) = o.get("minimumPercent") {
            cx.percent(&o.at("minimumPercent"), p);
        }
        if let Some(a) = o.get("aggression") {
            let ok = a.as_f64().is_some_and(|a| a >= 1.0);
            if !ok {
                cx.err(o.at("aggression"), "must be a number of at least 1");
            }
        }
    }
}

pub(super) fn duration(cx: &mut Ctx, path: &str, v: &Value) {
    cx.duration(path, v);
}

pub(super) fn boolean(cx: &mut Ctx, path: &str, v: &Value) {
    if !v.is_boolean() {
        cx.err(path, "must be true or false");
    }
}

pub(super) fn string(cx: &mut Ctx, path: &str, v: &Value) {
    cx.string(path, v);
}

pub(super) fn connection_pool(cx: &mut Ctx, path: &str, v: &Value) {
    connection_pool_at(cx, path, v);
}

/// `httpCookie.attributes[]{name, value}`.
pub(super) fn cookie_attributes(cx: &mut Ctx, path: &str, v: &Value) {
    for (i, a) in cx.list(path, v).iter().enumerate() {
        if let Some(o) = cx.object(&index(path, i), a, &["name", "value"], &[]) {
            cx.req_string(&o, "name");
            cx.opt_string(&o, "value");
        }
    }
}
