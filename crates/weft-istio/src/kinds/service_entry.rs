//! ServiceEntry and WorkloadEntry (also a ServiceEntry's inline endpoints).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

use super::{cidrs, export_to, port_protocol, workload_selector};
use crate::meta::ObjectMeta;
use crate::spec::{Address, Locality, Location, Resolution, ServiceEntry, ServicePort, WorkloadEntry};
use crate::walk::{check_dns1123_subdomain, check_host, check_label_value, check_port_name, index, is_fqdn, join, Ctx};

const SE_FIELDS: &[&str] = &[
    "hosts",
    "addresses",
    "ports",
    "location",
    "resolution",
    "endpoints",
    "workloadSelector",
    "exportTo",
    "subjectAltNames",
];
const PORT_FIELDS: &[&str] = &["number", "protocol", "name", "targetPort"];
const WE_FIELDS: &[&str] = &["address", "ports", "labels", "network", "locality", "weight", "serviceAccount"];

pub(super) fn service_entry(cx: &mut Ctx, v: &Value, meta: &ObjectMeta) -> ServiceEntry {
    let mut se = ServiceEntry {
        hosts: vec![],
        addresses: vec![],
        ports: vec![],
        location: Location::MeshExternal,
        resolution: Resolution::None,
        endpoints: vec![],
        workload_selector: None,
        export_to: vec![],
        subject_alt_names: vec![],
    };
    let Some(o) = cx.object("spec", v, SE_FIELDS, &[]) else { return se };

    se.hosts = cx.string_list(&o, "hosts");
    if se.hosts.is_empty() {
        cx.err(o.at("hosts"), "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        if let Err(m) = check_host(h, false) {
            cx.err(index(&o.at("hosts"), i), m);
        }
    }
    se.addresses = cidrs(cx, &o, "addresses");
    se.location = cx
        .enumeration(
            &o,
            "location",
            &[("MESH_EXTERNAL", Location::MeshExternal), ("MESH_INTERNAL", Location::MeshInternal)],
        )
        .unwrap_or_default();
    se.resolution = cx
        .enumeration(
            &o,
            "resolution",
            &[
                ("NONE", Resolution::None),
                ("STATIC", Resolution::Static),
                ("DNS", Resolution::Dns),
                ("DNS_ROUND_ROBIN", Resolution::DnsRoundRobin),
            ],
        )
        .unwrap_or_default();

    // Ports: unique names and numbers.
    let ports_path = o.at("ports");
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in cx.opt_list(&o, "ports").iter().enumerate() {
        let path = index(&ports_path, i);
        let Some(po) = cx.object(&path, p, PORT_FIELDS, &[]) else { continue };
        let number = po.get("number").and_then(|n| cx.port(&po.at("number"), n));
        if !po.has("number") {
            cx.err(po.at("number"), "required");
        }
        let name = cx.req_string(&po, "name").unwrap_or_default();
        if !name.is_empty() {
            if let Err(m) = check_port_name(&name) {
                cx.err(po.at("name"), m);
            }
            if !names.insert(name.clone()) {
                cx.err(po.at("name"), format!("port name {name:?} is already defined"));
            }
        }
        if let Some(n) = number {
            if !numbers.insert(n) {
                cx.err(po.at("number"), format!("port {n} is already defined"));
            }
        }
        let protocol = port_protocol(cx, &po, &name);
        let target_port = cx.opt_port(&po, "targetPort");
        se.ports.push(ServicePort { number: number.unwrap_or_default(), protocol, name, target_port });
    }

    // Endpoints (WorkloadEntry shape).
    let ep_path = o.at("endpoints");
    for (i, e) in cx.opt_list(&o, "endpoints").iter().enumerate() {
        let path = index(&ep_path, i);
        let we = workload_entry(cx, &path, e);
        for name in we.ports.keys() {
            if !names.contains(name) {
                cx.err(join(&join(&path, "ports"), name), format!("port {name:?} is not a port of this ServiceEntry"));
            }
        }
        match (&we.address, se.resolution) {
            (Some(Address::Hostname(h)), Resolution::Static) => cx.err(
                join(&path, "address"),
                format!("{h:?} is not an IP address (resolution STATIC needs IPs or unix sockets)"),
            ),
            (Some(Address::Unix(_)), _) if se.ports.len() != 1 => {
                cx.err(join(&path, "address"), "a unix socket endpoint needs exactly one service port")
            }
            _ => {}
        }
        se.endpoints.push(we);
    }
    se.workload_selector = workload_selector(cx, &o, "workloadSelector");
    se.export_to = export_to(cx, &o, &meta.namespace, true);
    se.subject_alt_names = cx.string_list(&o, "subjectAltNames");

    // Istio's resolution rules.
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        cx.err("spec", "only one of workloadSelector or endpoints may be set");
    }
    let has_cidr = se.addresses.iter().any(|c| c.prefix_len != if c.addr.is_ipv4() { 32 } else { 128 });
    match se.resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                cx.err(o.at("endpoints"), "endpoints are not allowed with resolution NONE");
            }
        }
        Resolution::Static => {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                cx.err("spec", "resolution STATIC needs endpoints or a workloadSelector");
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if has_cidr {
                cx.err(o.at("addresses"), "CIDR addresses are only allowed with resolution NONE or STATIC");
            }
            if se.endpoints.is_empty() {
                for (i, h) in se.hosts.iter().enumerate() {
                    if check_host(h, false).is_ok() && !is_fqdn(h) {
                        cx.err(
                            index(&o.at("hosts"), i),
                            format!("{h:?} must be a fully qualified name when resolution is DNS without endpoints"),
                        );
                    }
                }
            }
            if se.resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                cx.err(o.at("endpoints"), "resolution DNS_ROUND_ROBIN allows at most one endpoint");
            }
        }
    }
    if se.resolution != Resolution::None && se.hosts.len() > 1 {
        if let Some(p) = se
            .ports
            .iter()
            .find(|p| !p.protocol.is_http() && !matches!(p.protocol, crate::Protocol::Https | crate::Protocol::Tls))
        {
            cx.err(
                o.at("hosts"),
                format!("several hosts cannot share non-HTTP, non-TLS port {} unless resolution is NONE", p.number),
            );
        }
    }
    se
}

/// A WorkloadEntry's spec (path `spec`).
pub(super) fn workload_entry_spec(cx: &mut Ctx, v: &Value) -> WorkloadEntry {
    let we = workload_entry(cx, "spec", v);
    if let Some(Address::Hostname(h)) = &we.address {
        // A standalone WorkloadEntry may name a DNS host (Istio allows FQDN addresses).
        if !is_fqdn(h) {
            cx.err("spec.address", format!("{h:?} is not an IP address or a fully qualified name"));
        }
    }
    we
}

/// The WorkloadEntry shape at `path`.
pub(super) fn workload_entry(cx: &mut Ctx, path: &str, v: &Value) -> WorkloadEntry {
    let mut we = WorkloadEntry::default();
    let Some(o) = cx.object(path, v, WE_FIELDS, &[]) else { return we };
    we.network = cx.opt_string(&o, "network");
    if let Some(n) = &we.network {
        if let Err(m) = check_label_value(n) {
            cx.err(o.at("network"), m);
        }
    }
    match cx.opt_string(&o, "address") {
        None if we.network.is_none() => cx.err(o.at("address"), "required (unless network is set)"),
        None => {}
        Some(a) => we.address = address(cx, &o.at("address"), &a),
    }
    let mut ports = BTreeMap::new();
    if let Some(pv) = o.get("ports") {
        let ppath = o.at("ports");
        match pv.as_object() {
            None => cx.err(&ppath, "must be a map of port name to number"),
            Some(map) => {
                for (name, n) in map {
                    let p = join(&ppath, name);
                    if let Err(m) = check_port_name(name) {
                        cx.err(&p, m);
                    }
                    if let Some(n) = cx.port(&p, n) {
                        ports.insert(name.clone(), n);
                    }
                }
            }
        }
    }
    if matches!(we.address, Some(Address::Unix(_))) && !ports.is_empty() {
        cx.err(o.at("ports"), "a unix socket endpoint must not have ports");
    }
    we.ports = ports;
    we.labels = cx.labels(&o, "labels");
    if let Some(l) = cx.opt_string(&o, "locality") {
        match Locality::parse(&l) {
            Ok(loc) => we.locality = Some(loc),
            Err(m) => cx.err(o.at("locality"), m),
        }
    }
    if let Some(w) = o.get("weight") {
        // Istio: uint32; Envoy's endpoint weight must be at least 1 (0 means "not set").
        we.weight = cx.int(&o.at("weight"), w, 0, u32::MAX as i64).filter(|w| *w > 0).map(|w| w as u32);
    }
    if let Some(sa) = cx.opt_string(&o, "serviceAccount") {
        if let Err(m) = check_dns1123_subdomain(&sa) {
            cx.err(o.at("serviceAccount"), m);
        }
        we.service_account = Some(sa);
    }
    we
}

/// An IP, `unix:///abs/path` (or `unix://@abstract`), or a DNS name.
fn address(cx: &mut Ctx, path: &str, a: &str) -> Option<Address> {
    if let Some(p) = a.strip_prefix("unix://") {
        let ok = p.starts_with('@') && p.len() > 1 || p.starts_with('/') && !p.ends_with('/');
        if !ok {
            cx.err(path, format!("{a:?} is not a unix socket path (unix:///absolute/path)"));
            return None;
        }
        return Some(Address::Unix(p.to_string()));
    }
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Some(Address::Ip(ip));
    }
    if !is_fqdn(a) {
        cx.err(path, format!("{a:?} is not an IP address or a host name"));
        return None;
    }
    Some(Address::Hostname(a.to_string()))
}
