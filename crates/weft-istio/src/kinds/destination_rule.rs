//! DestinationRule: traffic policies (load balancing, connection pools, outlier detection).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{export_to, port_selector, shapes, workload_selector};
use crate::meta::ObjectMeta;
use crate::spec::*;
use crate::walk::{check_host, index, is_dns1123_label, join, Ctx, Obj};

const DR_FIELDS: &[&str] = &["host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"];
const TP_FIELDS: &[&str] = &["loadBalancer", "connectionPool", "outlierDetection", "portLevelSettings"];
/// Istio traffic-policy fields Weft accepts but does not apply yet.
const TP_NOT_APPLIED: &[&str] = &["tls", "proxyProtocol", "tunnel", "retryBudget"];
const PORT_TP_FIELDS: &[&str] = &["port", "loadBalancer", "connectionPool", "outlierDetection"];
const PORT_TP_NOT_APPLIED: &[&str] = &["tls"];
const LB_FIELDS: &[&str] = &["simple", "consistentHash", "localityLbSetting", "warmupDurationSecs"];
const LB_NOT_APPLIED: &[&str] = &["warmup"];
const OUTLIER_FIELDS: &[&str] = &[
    "consecutiveErrors",
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
    "splitExternalLocalOriginErrors",
    "consecutiveLocalOriginFailures",
];

pub(super) fn destination_rule(cx: &mut Ctx, v: &Value, meta: &ObjectMeta) -> DestinationRule {
    let mut dr = DestinationRule {
        host: String::new(),
        traffic_policy: None,
        subsets: vec![],
        export_to: vec![],
        workload_selector: None,
    };
    let Some(o) = cx.object("spec", v, DR_FIELDS, &[]) else { return dr };
    if let Some(h) = cx.req_string(&o, "host") {
        if let Err(m) = check_host(&h, false) {
            cx.err(o.at("host"), m);
        }
        dr.host = h;
    }
    dr.traffic_policy = o.get("trafficPolicy").and_then(|tp| traffic_policy(cx, &o.at("trafficPolicy"), tp));
    let spath = o.at("subsets");
    let mut names = BTreeSet::new();
    for (i, s) in cx.opt_list(&o, "subsets").iter().enumerate() {
        let p = index(&spath, i);
        let Some(so) = cx.object(&p, s, &["name", "labels", "trafficPolicy"], &[]) else { continue };
        let name = cx.req_string(&so, "name").unwrap_or_default();
        if !name.is_empty() {
            if !is_dns1123_label(&name) {
                cx.err(so.at("name"), format!("subset name {name:?} is not a DNS-1123 label"));
            }
            if !names.insert(name.clone()) {
                cx.err(so.at("name"), format!("duplicate subset name {name:?}"));
            }
        }
        let labels = cx.labels(&so, "labels");
        let tp = so.get("trafficPolicy").and_then(|tp| traffic_policy(cx, &so.at("trafficPolicy"), tp));
        dr.subsets.push(Subset { name, labels, traffic_policy: tp });
    }
    dr.workload_selector = workload_selector(cx, &o, "workloadSelector");
    dr.export_to = export_to(cx, &o, &meta.namespace, false);
    if dr.workload_selector.is_some() && dr.export_to.iter().any(|e| e != "." && e != &meta.namespace) {
        cx.err(o.at("exportTo"), "a DestinationRule with a workloadSelector cannot be exported beyond its namespace");
    }
    dr
}

fn traffic_policy(cx: &mut Ctx, path: &str, v: &Value) -> Option<TrafficPolicy> {
    let o = cx.object(path, v, TP_FIELDS, TP_NOT_APPLIED)?;
    shapes::check(cx, &o, "tls", shapes::client_tls);
    shapes::check(cx, &o, "proxyProtocol", shapes::proxy_protocol);
    shapes::check(cx, &o, "tunnel", shapes::tunnel);
    shapes::check(cx, &o, "retryBudget", shapes::retry_budget);
    if o.map.values().all(Value::is_null) {
        cx.err(path, "a traffic policy needs at least one field");
    }
    if o.has("tunnel") && o.has("proxyProtocol") {
        cx.err(path, "tunnel and proxyProtocol cannot be set together");
    }
    let mut tp = TrafficPolicy {
        load_balancer: load_balancer(cx, &o),
        connection_pool: connection_pool(cx, &o),
        outlier_detection: outlier_detection(cx, &o),
        port_level_settings: vec![],
    };
    let ppath = o.at("portLevelSettings");
    let mut ports = BTreeSet::new();
    for (i, p) in cx.opt_list(&o, "portLevelSettings").iter().enumerate() {
        let pp = index(&ppath, i);
        let Some(po) = cx.object(&pp, p, PORT_TP_FIELDS, PORT_TP_NOT_APPLIED) else { continue };
        shapes::check(cx, &po, "tls", shapes::client_tls);
        let port = port_selector(cx, &po, "port");
        if !po.has("port") {
            cx.err(po.at("port"), "required");
        }
        if let Some(n) = port {
            if !ports.insert(n) {
                cx.err(po.at("port"), format!("port {n} has more than one entry"));
            }
        }
        if ["loadBalancer", "connectionPool", "outlierDetection", "tls"].iter().all(|k| !po.has(k)) {
            cx.err(&pp, "a port traffic policy needs at least one setting");
        }
        tp.port_level_settings.push(PortTrafficPolicy {
            port: port.unwrap_or_default(),
            load_balancer: load_balancer(cx, &po),
            connection_pool: connection_pool(cx, &po),
            outlier_detection: outlier_detection(cx, &po),
        });
    }
    Some(tp)
}

fn load_balancer(cx: &mut Ctx, o: &Obj) -> Option<LoadBalancer> {
    let v = o.get("loadBalancer")?;
    let lo = cx.object(&o.at("loadBalancer"), v, LB_FIELDS, LB_NOT_APPLIED)?;
    shapes::check(cx, &lo, "warmup", shapes::warmup);
    let mut lb = LoadBalancer::default();
    if lo.has("simple") && lo.has("consistentHash") {
        cx.err(o.at("loadBalancer"), "only one of simple or consistentHash may be set");
    }
    let simple = cx.enumeration(
        &lo,
        "simple",
        &[
            ("UNSPECIFIED", None),
            ("LEAST_CONN", Some(SimpleLb::LeastRequest)),
            ("RANDOM", Some(SimpleLb::Random)),
            ("PASSTHROUGH", Some(SimpleLb::Passthrough)),
            ("ROUND_ROBIN", Some(SimpleLb::RoundRobin)),
            ("LEAST_REQUEST", Some(SimpleLb::LeastRequest)),
        ],
    );
    lb.policy = simple.flatten().map(LbPolicy::Simple);
    if let Some(ch) = lo.get("consistentHash") {
        lb.policy = consistent_hash(cx, &lo.at("consistentHash"), ch).map(LbPolicy::ConsistentHash);
    }
    if let Some(l) = lo.get("localityLbSetting") {
        lb.locality_lb_setting = locality_lb(cx, &lo.at("localityLbSetting"), l);
    }
    if let Some(w) = lo.get("warmupDurationSecs") {
        lb.warmup_duration = cx.duration(&lo.at("warmupDurationSecs"), w);
    }
    if lo.has("warmup") && lo.has("warmupDurationSecs") {
        cx.err(o.at("loadBalancer"), "only one of warmup or warmupDurationSecs may be set");
    }
    Some(lb)
}

fn consistent_hash(cx: &mut Ctx, path: &str, v: &Value) -> Option<ConsistentHash> {
    let o = cx.object(
        path,
        v,
        &[
            "httpHeaderName",
            "httpCookie",
            "useSourceIp",
            "httpQueryParameterName",
            "ringHash",
            "maglev",
            "minimumRingSize",
        ],
        &[],
    )?;
    let keys: Vec<&str> = ["httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"]
        .into_iter()
        .filter(|k| o.has(k))
        .collect();
    if keys.len() > 1 {
        cx.err(path, format!("only one hash key may be set (found {})", keys.join(", ")));
    }
    let key = match keys.first().copied() {
        None => {
            cx.err(path, "a hash key is required: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName");
            None
        }
        Some("httpHeaderName") => cx.req_string(&o, "httpHeaderName").map(HashKey::HttpHeaderName),
        Some("httpQueryParameterName") => {
            cx.req_string(&o, "httpQueryParameterName").map(HashKey::HttpQueryParameterName)
        }
        Some("useSourceIp") => match cx.opt_bool(&o, "useSourceIp") {
            Some(true) => Some(HashKey::UseSourceIp),
            Some(false) => {
                cx.err(o.at("useSourceIp"), "must be true when it is the hash key");
                None
            }
            None => None,
        },
        Some(_) => {
            let cpath = o.at("httpCookie");
            let c = o.get("httpCookie").and_then(|c| cx.object(&cpath, c, &["name", "path", "ttl"], &["attributes"]));
            if let Some(c) = &c {
                shapes::check(cx, c, "attributes", shapes::cookie_attributes);
            }
            c.map(|c| HashKey::HttpCookie {
                name: cx.req_string(&c, "name").unwrap_or_default(),
                path: cx.opt_string(&c, "path"),
                ttl: cx.opt_duration(&c, "ttl"),
            })
        }
    };
    let algos = ["ringHash", "maglev"].into_iter().filter(|k| o.has(k)).count();
    if algos > 1 {
        cx.err(path, "only one of ringHash or maglev may be set");
    }
    if algos > 0 && o.has("minimumRingSize") {
        cx.err(o.at("minimumRingSize"), "cannot be combined with ringHash or maglev");
    }
    let mut algorithm = HashAlgorithm::RingHash { minimum_ring_size: None };
    if let Some(min) = o.get("minimumRingSize") {
        let n = cx.int(&o.at("minimumRingSize"), min, 0, 8_388_608).filter(|n| *n > 0);
        algorithm = HashAlgorithm::RingHash { minimum_ring_size: n.map(|n| n as u64) };
    }
    if let Some(r) = o.get("ringHash") {
        if let Some(ro) = cx.object(&o.at("ringHash"), r, &["minimumRingSize"], &[]) {
            let n = ro.get("minimumRingSize").and_then(|m| cx.int(&ro.at("minimumRingSize"), m, 0, 8_388_608));
            algorithm = HashAlgorithm::RingHash { minimum_ring_size: n.filter(|n| *n > 0).map(|n| n as u64) };
        }
    }
    if let Some(m) = o.get("maglev") {
        if let Some(mo) = cx.object(&o.at("maglev"), m, &["tableSize"], &[]) {
            let size = match mo.get("tableSize") {
                None => {
                    cx.err(mo.at("tableSize"), "required");
                    None
                }
                Some(t) => cx.int(&mo.at("tableSize"), t, 1, 5_000_010).map(|t| t as u64),
            };
            if let Some(s) = size {
                if !is_prime(s) {
                    cx.err(mo.at("tableSize"), format!("{s} is not a prime number"));
                }
            }
            algorithm = HashAlgorithm::Maglev { table_size: size };
        }
    }
    key.map(|key| ConsistentHash { key, algorithm })
}

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    if x < 4 {
        return true;
    }
    if x % 2 == 0 {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x % f == 0 {
            return false;
        }
        f += 2;
    }
    true
}

fn locality_lb(cx: &mut Ctx, path: &str, v: &Value) -> Option<LocalityLbSetting> {
    let o = cx.object(path, v, &["distribute", "failover", "failoverPriority", "enabled"], &[])?;
    let mut l = LocalityLbSetting { enabled: cx.opt_bool(&o, "enabled"), ..Default::default() };
    let dpath = o.at("distribute");
    for (i, d) in cx.opt_list(&o, "distribute").iter().enumerate() {
        let p = index(&dpath, i);
        let Some(dobj) = cx.object(&p, d, &["from", "to"], &[]) else { continue };
        let from = cx.req_string(&dobj, "from").unwrap_or_default();
        if let Err(m) = locality_pattern(&from) {
            cx.err(dobj.at("from"), m);
        }
        let mut to = BTreeMap::new();
        let tpath = dobj.at("to");
        match dobj.get("to").map(|t| t.as_object()) {
            None => cx.err(&tpath, "required"),
            Some(None) => cx.err(&tpath, "must be a map of locality to weight"),
            Some(Some(map)) => {
                for (loc, w) in map {
                    let lp = join(&tpath, loc);
                    if let Err(m) = locality_pattern(loc) {
                        cx.err(&lp, m);
                    }
                    if let Some(w) = cx.int(&lp, w, 0, 100) {
                        to.insert(loc.clone(), w as u32);
                    }
                }
                let sum: u32 = to.values().sum();
                if to.len() == map.len() && sum != 100 {
                    cx.err(&tpath, format!("weights must sum to 100 (they sum to {sum})"));
                }
            }
        }
        l.distribute.push(LocalityDistribute { from, to });
    }
    let fpath = o.at("failover");
    for (i, f) in cx.opt_list(&o, "failover").iter().enumerate() {
        let p = index(&fpath, i);
        let Some(fo) = cx.object(&p, f, &["from", "to"], &[]) else { continue };
        let from = cx.req_string(&fo, "from").unwrap_or_default();
        let to = cx.req_string(&fo, "to").unwrap_or_default();
        for (k, r) in [("from", &from), ("to", &to)] {
            if r.contains('/') || r.contains('*') {
                cx.err(fo.at(k), format!("{r:?} must be a region (no '/' or '*')"));
            }
        }
        if !from.is_empty() && from == to {
            cx.err(&p, "from and to must be different regions");
        }
        l.failover.push(LocalityFailover { from, to });
    }
    l.failover_priority = cx.string_list(&o, "failoverPriority");
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        cx.err(path, "only one of distribute or failover may be set");
    }
    Some(l)
}

/// `region/zone/subzone` where a `*` may only stand for the whole last segment.
fn locality_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("locality must not be empty".into());
    }
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 3 {
        return Err(format!("locality {s:?} has more than 3 segments"));
    }
    for (i, p) in parts.iter().enumerate() {
        if p.contains('*') && (*p != "*" || i != parts.len() - 1) {
            return Err(format!("locality {s:?}: '*' may only be the whole last segment"));
        }
        if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("locality {s:?} has an empty or invalid segment"));
        }
    }
    Ok(())
}

fn connection_pool(cx: &mut Ctx, o: &Obj) -> Option<ConnectionPool> {
    let v = o.get("connectionPool")?;
    connection_pool_at(cx, &o.at("connectionPool"), v)
}

/// Also used by Sidecar ingress listeners.
pub(super) fn connection_pool_at(cx: &mut Ctx, path: &str, v: &Value) -> Option<ConnectionPool> {
    let co = cx.object(path, v, &["tcp", "http"], &[])?;
    if !co.has("tcp") && !co.has("http") {
        cx.err(path, "a connection pool needs tcp and/or http settings");
    }
    let mut pool = ConnectionPool::default();
    if let Some(t) = co.get("tcp") {
        let tpath = co.at("tcp");
        if let Some(to) = cx.object(
            &tpath,
            t,
            &["maxConnections", "connectTimeout", "tcpKeepalive", "maxConnectionDuration", "idleTimeout"],
            &[],
        ) {
            let mut tcp = TcpSettings {
                max_connections: nonneg(cx, &to, "maxConnections"),
                connect_timeout: cx.opt_duration_ms(&to, "connectTimeout"),
                max_connection_duration: cx.opt_duration_ms(&to, "maxConnectionDuration"),
                ..Default::default()
            };
            // `0s` disables the idle timeout (Istio allows it explicitly).
            tcp.idle_timeout = match to.get("idleTimeout") {
                Some(d)
                    if d.as_str().and_then(|s| crate::walk::parse_duration(s).ok())
                        == Some(std::time::Duration::ZERO) =>
                {
                    Some(std::time::Duration::ZERO)
                }
                Some(_) => cx.opt_duration_ms(&to, "idleTimeout"),
                None => None,
            };
            if let Some(k) = to.get("tcpKeepalive") {
                if let Some(ko) = cx.object(&to.at("tcpKeepalive"), k, &["probes", "time", "interval"], &[]) {
                    tcp.tcp_keepalive = Some(TcpKeepalive {
                        probes: cx.opt_u32(&ko, "probes"),
                        time: cx.opt_duration_ms(&ko, "time"),
                        interval: cx.opt_duration_ms(&ko, "interval"),
                    });
                }
            }
            pool.tcp = Some(tcp);
        }
    }
    if let Some(h) = co.get("http") {
        let hpath = co.at("http");
        if let Some(ho) = cx.object(
            &hpath,
            h,
            &[
                "http1MaxPendingRequests",
                "http2MaxRequests",
                "maxRequestsPerConnection",
                "maxRetries",
                "idleTimeout",
                "h2UpgradePolicy",
                "useClientProtocol",
                "maxConcurrentStreams",
            ],
            &["http2KeepAlive"],
        ) {
            if let Some(k) = ho.get("http2KeepAlive") {
                if let Some(ko) = cx.object(&ho.at("http2KeepAlive"), k, &["interval", "timeout"], &[]) {
                    cx.opt_duration_ms(&ko, "interval");
                    cx.opt_duration_ms(&ko, "timeout");
                }
            }
            let http = HttpSettings {
                http1_max_pending_requests: nonneg(cx, &ho, "http1MaxPendingRequests"),
                http2_max_requests: nonneg(cx, &ho, "http2MaxRequests"),
                max_requests_per_connection: nonneg(cx, &ho, "maxRequestsPerConnection"),
                max_retries: nonneg(cx, &ho, "maxRetries"),
                idle_timeout: cx.opt_duration_ms(&ho, "idleTimeout"),
                h2_upgrade_policy: cx
                    .enumeration(
                        &ho,
                        "h2UpgradePolicy",
                        &[
                            ("DEFAULT", H2UpgradePolicy::Default),
                            ("DO_NOT_UPGRADE", H2UpgradePolicy::DoNotUpgrade),
                            ("UPGRADE", H2UpgradePolicy::Upgrade),
                        ],
                    )
                    .unwrap_or_default(),
                use_client_protocol: cx.opt_bool(&ho, "useClientProtocol").unwrap_or(false),
                max_concurrent_streams: nonneg(cx, &ho, "maxConcurrentStreams"),
            };
            if http.h2_upgrade_policy == H2UpgradePolicy::Upgrade && http.use_client_protocol {
                cx.err(&hpath, "useClientProtocol cannot be true when h2UpgradePolicy is UPGRADE");
            }
            pool.http = Some(http);
        }
    }
    Some(pool)
}

/// An int32 field that must not be negative.
fn nonneg(cx: &mut Ctx, o: &Obj, key: &str) -> Option<u32> {
    let v = o.get(key)?;
    cx.int(&o.at(key), v, 0, i32::MAX as i64).map(|n| n as u32)
}

fn outlier_detection(cx: &mut Ctx, o: &Obj) -> Option<OutlierDetection> {
    let v = o.get("outlierDetection")?;
    let oo = cx.object(&o.at("outlierDetection"), v, OUTLIER_FIELDS, &[])?;
    let mut od = OutlierDetection {
        consecutive_5xx_errors: nonneg(cx, &oo, "consecutive5xxErrors"),
        consecutive_gateway_errors: nonneg(cx, &oo, "consecutiveGatewayErrors"),
        interval: cx.opt_duration_ms(&oo, "interval"),
        base_ejection_time: cx.opt_duration_ms(&oo, "baseEjectionTime"),
        max_ejection_percent: oo
            .get("maxEjectionPercent")
            .and_then(|p| cx.int(&oo.at("maxEjectionPercent"), p, 0, 100))
            .map(|p| p as u32),
        min_health_percent: oo
            .get("minHealthPercent")
            .and_then(|p| cx.int(&oo.at("minHealthPercent"), p, 0, 100))
            .map(|p| p as u32),
        split_external_local_origin_errors: cx.opt_bool(&oo, "splitExternalLocalOriginErrors").unwrap_or(false),
        consecutive_local_origin_failures: nonneg(cx, &oo, "consecutiveLocalOriginFailures"),
    };
    // Deprecated `consecutiveErrors` counts gateway errors and turns the 5xx rule off (Istio).
    if let Some(n) = nonneg(cx, &oo, "consecutiveErrors").filter(|n| *n > 0) {
        if od.consecutive_gateway_errors.is_none() {
            od.consecutive_gateway_errors = Some(n);
        }
        if od.consecutive_5xx_errors.is_none() {
            od.consecutive_5xx_errors = Some(0);
        }
    }
    if od.consecutive_local_origin_failures.is_some_and(|n| n > 0) && !od.split_external_local_origin_errors {
        cx.err(oo.at("consecutiveLocalOriginFailures"), "needs splitExternalLocalOriginErrors: true");
    }
    Some(od)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_for_maglev() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
        assert!(!is_prime(9));
    }

    #[test]
    fn locality_patterns() {
        assert!(locality_pattern("us-west/zone1/*").is_ok());
        assert!(locality_pattern("*").is_ok());
        assert!(locality_pattern("us-west/*/sub").is_err());
        assert!(locality_pattern("a/b/c/d").is_err());
        assert!(locality_pattern("us-*").is_err());
    }
}
