//! Sidecar: a workload's listeners (bind mode, capture mode) and the hosts it imports.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use super::{destination, port_protocol, shapes, workload_selector};
use crate::meta::ObjectMeta;
use crate::spec::*;
use crate::walk::{check_host, check_port_name, index, is_dns1123_label, Ctx, Obj};

const SIDECAR_FIELDS: &[&str] = &["workloadSelector", "ingress", "egress", "outboundTrafficPolicy"];
const SIDECAR_NOT_APPLIED: &[&str] = &["inboundConnectionPool"];
const INGRESS_FIELDS: &[&str] = &["port", "bind", "captureMode", "defaultEndpoint"];
const INGRESS_NOT_APPLIED: &[&str] = &["tls", "connectionPool"];
const EGRESS_FIELDS: &[&str] = &["port", "bind", "captureMode", "hosts"];
const CAPTURE_MODES: &[(&str, CaptureMode)] =
    &[("DEFAULT", CaptureMode::Default), ("IPTABLES", CaptureMode::Iptables), ("NONE", CaptureMode::None)];

pub(super) fn sidecar(cx: &mut Ctx, v: &Value, _meta: &ObjectMeta) -> Sidecar {
    let mut sc = Sidecar { workload_selector: None, ingress: vec![], egress: vec![], outbound_traffic_policy: None };
    let Some(o) = cx.object("spec", v, SIDECAR_FIELDS, SIDECAR_NOT_APPLIED) else { return sc };
    shapes::check(cx, &o, "inboundConnectionPool", shapes::connection_pool);
    sc.workload_selector = workload_selector(cx, &o, "workloadSelector");
    if ["ingress", "egress", "outboundTrafficPolicy", "inboundConnectionPool"].iter().all(|k| !o.has(k)) {
        cx.err(
            "spec",
            "a Sidecar needs at least one of ingress, egress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }

    let ipath = o.at("ingress");
    let mut ingress_ports = BTreeSet::new();
    for (i, l) in cx.opt_list(&o, "ingress").iter().enumerate() {
        let p = index(&ipath, i);
        let Some(lo) = cx.object(&p, l, INGRESS_FIELDS, INGRESS_NOT_APPLIED) else { continue };
        shapes::check(cx, &lo, "tls", shapes::server_tls);
        shapes::check(cx, &lo, "connectionPool", shapes::connection_pool);
        let Some(port) = sidecar_port(cx, &lo, true) else {
            if !lo.has("port") {
                cx.err(lo.at("port"), "required");
            }
            continue;
        };
        if !ingress_ports.insert(port.number) {
            cx.err(lo.at("port"), format!("port {} is used by another ingress listener", port.number));
        }
        let bind = bind_ip(cx, &lo);
        let capture_mode = cx.enumeration(&lo, "captureMode", CAPTURE_MODES).unwrap_or_default();
        let default_endpoint = cx.opt_string(&lo, "defaultEndpoint");
        if let Some(e) = &default_endpoint {
            if let Err(m) = check_default_endpoint(e) {
                cx.err(lo.at("defaultEndpoint"), m);
            }
        }
        sc.ingress.push(IngressListener { port, bind, capture_mode, default_endpoint });
    }

    let epath = o.at("egress");
    let egress = cx.opt_list(&o, "egress");
    let mut egress_ports = BTreeSet::new();
    let mut unix_binds = BTreeSet::new();
    for (i, l) in egress.iter().enumerate() {
        let p = index(&epath, i);
        let Some(lo) = cx.object(&p, l, EGRESS_FIELDS, &[]) else { continue };
        let capture_mode = cx.enumeration(&lo, "captureMode", CAPTURE_MODES).unwrap_or_default();
        let bind = cx.opt_string(&lo, "bind");
        let unix = bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
        let port = if lo.has("port") { sidecar_port(cx, &lo, !unix) } else { None };
        match (&port, lo.has("port")) {
            (_, false) if i + 1 != egress.len() => {
                cx.err(&p, "only the last egress listener may omit the port (the catch-all listener)")
            }
            (Some(sp), true) if sp.number != 0 && !egress_ports.insert(sp.number) => {
                cx.err(lo.at("port"), format!("port {} is used by another egress listener", sp.number))
            }
            _ => {}
        }
        match &bind {
            Some(b) if unix => {
                let path = &b["unix://".len()..];
                if !(path.starts_with('@') && path.len() > 1 || path.starts_with('/') && !path.ends_with('/')) {
                    cx.err(lo.at("bind"), format!("{b:?} is not a unix socket path (unix:///absolute/path)"));
                }
                if !unix_binds.insert(b.clone()) {
                    cx.err(lo.at("bind"), "unix socket binds must be unique");
                }
                if capture_mode == CaptureMode::Iptables {
                    cx.err(lo.at("captureMode"), "must be DEFAULT or NONE for a unix socket listener");
                }
            }
            Some(b) => {
                if b.parse::<IpAddr>().is_err() {
                    cx.err(lo.at("bind"), format!("{b:?} is not an IP address"));
                }
            }
            None => {
                if port.as_ref().is_some_and(|p| p.number == 0) {
                    cx.err(lo.at("port.number"), "port 0 needs a unix:// bind address");
                }
            }
        }
        let hosts = egress_hosts(cx, &lo);
        sc.egress.push(EgressListener { port, bind, capture_mode, hosts });
    }

    if let Some(t) = o.get("outboundTrafficPolicy") {
        let tpath = o.at("outboundTrafficPolicy");
        if let Some(to) = cx.object(&tpath, t, &["mode", "egressProxy"], &[]) {
            let mode = cx
                .enumeration(
                    &to,
                    "mode",
                    &[("ALLOW_ANY", OutboundMode::AllowAny), ("REGISTRY_ONLY", OutboundMode::RegistryOnly)],
                )
                .unwrap_or_default();
            let egress_proxy = to.get("egressProxy").map(|e| destination(cx, &to.at("egressProxy"), e));
            if let Some(ep) = &egress_proxy {
                if mode != OutboundMode::AllowAny {
                    cx.err(to.at("egressProxy"), "is only allowed with mode ALLOW_ANY");
                }
                if ep.port.is_none() {
                    cx.err(to.at("egressProxy.port"), "required");
                }
                if !ep.host.is_empty() && ep.host.contains('*') {
                    cx.err(to.at("egressProxy.host"), "must be a fully qualified name");
                }
            }
            sc.outbound_traffic_policy = Some(OutboundTrafficPolicy { mode, egress_proxy });
        }
    }
    sc
}

/// A Sidecar listener's `port: {number, protocol, name}`; number 0 is allowed for unix binds.
fn sidecar_port(cx: &mut Ctx, o: &Obj, require_number: bool) -> Option<SidecarPort> {
    let v = o.get("port")?;
    let po = cx.object(&o.at("port"), v, &["number", "protocol", "name", "targetPort"], &[])?;
    if po.has("targetPort") {
        cx.err(po.at("targetPort"), "has no effect on Sidecar ports (Istio rejects it too)");
    }
    let number = match po.get("number") {
        Some(n) if !require_number && n.as_i64() == Some(0) => Some(0),
        Some(n) => cx.port(&po.at("number"), n),
        None if require_number => {
            cx.err(po.at("number"), "required");
            None
        }
        None => Some(0),
    };
    let name = cx.opt_string(&po, "name").unwrap_or_default();
    if !name.is_empty() {
        if let Err(m) = check_port_name(&name) {
            cx.err(po.at("name"), m);
        }
    }
    let protocol = port_protocol(cx, &po, &name);
    number.map(|number| SidecarPort { number, protocol, name })
}

/// An ingress `bind`: an IP address.
fn bind_ip(cx: &mut Ctx, o: &Obj) -> Option<String> {
    let b = cx.opt_string(o, "bind")?;
    if b.parse::<IpAddr>().is_err() {
        cx.err(o.at("bind"), format!("{b:?} is not an IP address"));
    }
    Some(b)
}

/// Istio: `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT` or `unix:///path`.
fn check_default_endpoint(e: &str) -> Result<(), String> {
    if let Some(p) = e.strip_prefix("unix://") {
        return if p.starts_with('@') && p.len() > 1 || p.starts_with('/') && !p.ends_with('/') {
            Ok(())
        } else {
            Err(format!("{e:?} is not a unix socket path"))
        };
    }
    let bad = || format!("{e:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix:///path");
    let addr: SocketAddr = e.parse().map_err(|_| bad())?;
    let ok_ip = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback() && ip.octets() == [127, 0, 0, 1] || ip.is_unspecified(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_unspecified(),
    };
    if !ok_ip || addr.port() == 0 {
        return Err(bad());
    }
    Ok(())
}

/// Egress `hosts`: `namespace/dnsName` with `*`, `.` and `~` namespaces.
fn egress_hosts(cx: &mut Ctx, o: &Obj) -> Vec<SidecarHost> {
    let path = o.at("hosts");
    let list = cx.string_list(o, "hosts");
    if list.is_empty() {
        cx.err(&path, "at least one host (namespace/dnsName) is required");
    }
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let p = index(&path, i);
        let Some((ns, host)) = h.split_once('/') else {
            cx.err(
                p,
                format!("{h:?} must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\", \"*/api.example.com\")"),
            );
            continue;
        };
        if !(ns == "*" || ns == "." || ns == "~" || is_dns1123_label(ns)) {
            cx.err(&p, format!("{ns:?} is not a namespace, \"*\", \".\" or \"~\""));
        }
        if let Err(m) = check_host(host, true) {
            cx.err(&p, m);
        }
        out.push(SidecarHost { namespace: ns.to_string(), host: host.to_string() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints_follow_istio() {
        for ok in ["127.0.0.1:8080", "0.0.0.0:80", "[::1]:9000", "[::]:9000", "unix:///var/run/app.sock", "unix://@abs"]
        {
            assert!(check_default_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.1:8080", "127.0.0.1", "127.0.0.1:0", "localhost:80", "unix://relative", "unix:///dir/"] {
            assert!(check_default_endpoint(bad).is_err(), "{bad}");
        }
    }
}
