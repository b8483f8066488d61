//! Kinds Weft stores but does not apply yet (Gateway, WorkloadGroup, AuthorizationPolicy,
//! PeerAuthentication): their spec stays JSON after structural checks, so an obviously broken
//! resource is still rejected at apply time.

use serde_json::Value;

use crate::walk::{check_host, index, join, Ctx, Obj};

pub(super) fn gateway(cx: &mut Ctx, v: &Value) -> Value {
    if let Some(o) = cx.object("spec", v, &["servers", "selector"], &[]) {
        string_map_field(cx, &o, "selector");
        let path = o.at("servers");
        let servers = cx.opt_list(&o, "servers");
        if servers.is_empty() {
            cx.err(&path, "at least one server is required");
        }
        for (i, s) in servers.iter().enumerate() {
            let p = index(&path, i);
            let Some(so) = cx.object(&p, s, &["port", "bind", "hosts", "tls", "name", "defaultEndpoint"], &[]) else {
                continue;
            };
            match so.get("port") {
                None => cx.err(so.at("port"), "required"),
                Some(pv) => {
                    if let Some(po) = cx.object(&so.at("port"), pv, &["number", "protocol", "name", "targetPort"], &[])
                    {
                        if let Some(n) = po.get("number") {
                            cx.int(&po.at("number"), n, 0, 65535);
                        }
                        cx.req_string(&po, "name");
                        cx.req_string(&po, "protocol");
                        if po.has("targetPort") {
                            cx.err(po.at("targetPort"), "has no effect on Gateways (Istio rejects it too)");
                        }
                    }
                }
            }
            let hosts = cx.string_list(&so, "hosts");
            if hosts.is_empty() {
                cx.err(so.at("hosts"), "at least one host is required");
            }
            for (j, h) in hosts.iter().enumerate() {
                let host = h.split_once('/').map(|(_, h)| h).unwrap_or(h);
                if let Err(m) = check_host(host, true) {
                    cx.err(index(&so.at("hosts"), j), m);
                }
            }
        }
    }
    v.clone()
}

pub(super) fn workload_group(cx: &mut Ctx, v: &Value) -> Value {
    if let Some(o) = cx.object("spec", v, &["metadata", "template", "probe"], &[]) {
        if let Some(m) = o.get("metadata") {
            if let Some(mo) = cx.object(&o.at("metadata"), m, &["labels", "annotations"], &[]) {
                cx.labels(&mo, "labels");
                cx.string_map(&mo, "annotations");
            }
        }
        match o.get("template") {
            None => cx.err(o.at("template"), "required"),
            Some(t) => {
                cx.object(
                    &o.at("template"),
                    t,
                    &["address", "ports", "labels", "network", "locality", "weight", "serviceAccount"],
                    &[],
                );
            }
        }
        if let Some(p) = o.get("probe") {
            cx.object(
                &o.at("probe"),
                p,
                &[
                    "initialDelaySeconds",
                    "timeoutSeconds",
                    "periodSeconds",
                    "successThreshold",
                    "failureThreshold",
                    "httpGet",
                    "tcpSocket",
                    "exec",
                    "grpc",
                ],
                &[],
            );
        }
    }
    v.clone()
}

pub(super) fn authorization_policy(cx: &mut Ctx, v: &Value) -> Value {
    if let Some(o) = cx.object("spec", v, &["selector", "targetRef", "targetRefs", "action", "provider", "rules"], &[])
    {
        selector(cx, &o);
        let action = cx
            .enumeration(
                &o,
                "action",
                &[("ALLOW", "ALLOW"), ("DENY", "DENY"), ("AUDIT", "AUDIT"), ("CUSTOM", "CUSTOM")],
            )
            .unwrap_or("ALLOW");
        let rules_path = o.at("rules");
        let rules = cx.opt_list(&o, "rules");
        for (i, r) in rules.iter().enumerate() {
            cx.object(&index(&rules_path, i), r, &["from", "to", "when"], &[]);
        }
        if (action == "DENY" || action == "CUSTOM") && !o.has("rules") {
            cx.err(&rules_path, format!("required for action {action} (use [{{}}] to match every request)"));
        }
        if action == "CUSTOM" {
            let name = o.get("provider").and_then(|p| p.get("name")).and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                cx.err(o.at("provider.name"), "required for action CUSTOM");
            }
        } else if o.has("provider") {
            cx.err(o.at("provider"), "is only allowed with action CUSTOM");
        }
        if o.has("selector") as u8 + o.has("targetRef") as u8 + o.has("targetRefs") as u8 > 1 {
            cx.err("spec", "only one of selector, targetRef or targetRefs may be set");
        }
    }
    v.clone()
}

pub(super) fn peer_authentication(cx: &mut Ctx, v: &Value) -> Value {
    const MODES: &[(&str, ())] = &[("UNSET", ()), ("DISABLE", ()), ("PERMISSIVE", ()), ("STRICT", ())];
    if let Some(o) = cx.object("spec", v, &["selector", "mtls", "portLevelMtls"], &[]) {
        let has_selector = selector(cx, &o);
        if let Some(m) = o.get("mtls") {
            if let Some(mo) = cx.object(&o.at("mtls"), m, &["mode"], &[]) {
                cx.enumeration(&mo, "mode", MODES);
            }
        }
        if let Some(p) = o.get("portLevelMtls") {
            let path = o.at("portLevelMtls");
            match p.as_object() {
                None => cx.err(&path, "must be a map of port to mtls settings"),
                Some(map) => {
                    if !has_selector {
                        cx.err(&path, "needs a workload selector (not allowed mesh- or namespace-wide)");
                    }
                    if map.is_empty() {
                        cx.err(&path, "must have at least one port");
                    }
                    for (port, m) in map {
                        let pp = join(&path, port);
                        if !port.parse::<u16>().is_ok_and(|n| n > 0) {
                            cx.err(&pp, format!("{port:?} is not a port number (1..65535)"));
                        }
                        if let Some(mo) = cx.object(&pp, m, &["mode"], &[]) {
                            cx.enumeration(&mo, "mode", MODES);
                        }
                    }
                }
            }
        }
    }
    v.clone()
}

/// `selector: {matchLabels}`; returns whether it selects by at least one label.
fn selector(cx: &mut Ctx, o: &Obj) -> bool {
    let Some(s) = o.get("selector") else { return false };
    let Some(so) = cx.object(&o.at("selector"), s, &["matchLabels"], &[]) else { return false };
    let labels = cx.labels(&so, "matchLabels");
    for (k, val) in &labels {
        if k.contains('*') || val.contains('*') {
            cx.err(join(&so.at("matchLabels"), k), "wildcards are not supported in selectors");
        }
    }
    !labels.is_empty()
}

fn string_map_field(cx: &mut Ctx, o: &Obj, key: &str) {
    cx.string_map(o, key);
}
