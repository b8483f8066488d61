//! Static file → validated model. Every error names the file, the resource and the field.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::model::*;
use crate::raw;
use crate::{parse_duration, ConfigError};

/// Reads and validates a static config file.
pub fn load_file(path: &std::path::Path) -> Result<Bootstrap, ConfigError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Io { file: file.clone(), message: e.to_string() })?;
    parse_str(&text, &file)
}

/// Parses and validates config text; `source` names it in errors.
pub fn parse_str(text: &str, source: &str) -> Result<Bootstrap, ConfigError> {
    // serde_yaml's messages already carry the path (`clusters[0]: unknown field ...`) and line.
    let file: raw::File = serde_yaml::from_str(text)
        .map_err(|e| ConfigError::Syntax { file: source.to_string(), message: e.to_string() })?;
    let mut v = Validator { file: source, resource: String::new() };
    let boot = v.file(file)?;
    let mut config = (*boot.config).clone();
    config.version = version_of(text);
    Ok(Bootstrap { config: Arc::new(config), ..boot })
}

fn version_of(text: &str) -> String {
    // FNV-1a: a stable content fingerprint so dumps show which file revision is live.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("file-{h:016x}")
}

struct Validator<'a> {
    file: &'a str,
    resource: String,
}

type R<T> = Result<T, ConfigError>;

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            resource: self.resource.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn dur(&self, field: &str, v: &Option<raw::Scalar>, default: Duration) -> R<Duration> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(&s.0).map_err(|m| self.err(field, m)),
        }
    }

    /// A duration where zero (or absence with a None default) means "disabled".
    fn opt_dur(&self, field: &str, v: &Option<raw::Scalar>, default: Option<Duration>) -> R<Option<Duration>> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = parse_duration(&s.0).map_err(|m| self.err(field, m))?;
                Ok(if d.is_zero() { None } else { Some(d) })
            }
        }
    }

    fn addr(&self, field: &str, s: &str) -> R<SocketAddr> {
        s.parse::<SocketAddr>()
            .map_err(|_| self.err(field, format!("invalid address {s:?} (expected IP:PORT, e.g. 127.0.0.1:8080)")))
    }

    fn opt_addr(&self, field: &str, v: &Option<raw::Scalar>, default: Option<SocketAddr>) -> R<Option<SocketAddr>> {
        match v {
            None => Ok(default),
            Some(s) if s.0 == "off" || s.0.is_empty() => Ok(None),
            Some(s) => self.addr(field, &s.0).map(Some),
        }
    }

    fn percent(&self, field: &str, p: Option<f64>) -> R<u32> {
        let p = p.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&p) || p.is_nan() {
            return Err(self.err(field, format!("percent {p} out of range 0..100")));
        }
        Ok((p * 10_000.0).round() as u32)
    }

    fn name(&self, field: &str, n: &str) -> R<()> {
        if n.is_empty() {
            return Err(self.err(field, "must not be empty"));
        }
        if n.len() > 256 || n.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(
                self.err(field, format!("invalid name {n:?} (no spaces or control characters, at most 256 bytes)"))
            );
        }
        Ok(())
    }

    fn file(&mut self, f: raw::File) -> R<Bootstrap> {
        self.resource = "node".into();
        let node = f.node.unwrap_or_default();
        let node = Node {
            id: node.id.unwrap_or_else(|| "weft-proxy".into()),
            cluster: node.cluster.unwrap_or_default(),
            namespace: node.namespace.unwrap_or_default(),
            workload: node.workload.unwrap_or_default(),
            app: node.app.unwrap_or_default(),
            version: node.version.unwrap_or_default(),
            principal: node.principal.unwrap_or_default(),
            mesh_id: node.mesh_id.unwrap_or_default(),
            labels: node.labels,
        };

        self.resource = "admin".into();
        let a = f.admin.unwrap_or_default();
        let defaults = AdminConfig::default();
        let admin = AdminConfig {
            address: self.opt_addr("address", &a.address, defaults.address)?,
            health_address: self.opt_addr("health_address", &a.health_address, None)?,
            metrics_address: self.opt_addr("metrics_address", &a.metrics_address, None)?,
            drain_timeout: self.dur("drain_timeout", &a.drain_timeout, defaults.drain_timeout)?,
        };

        self.resource = "access_log".into();
        let access_log = match f.access_log.as_ref().map(|s| s.0.as_str()) {
            None | Some("off") | Some("false") | Some("") => AccessLog::Off,
            Some("stdout") | Some("-") => AccessLog::Stdout,
            Some(p) => AccessLog::File(p.to_string()),
        };

        // Clusters first so routes can be checked against them.
        let mut clusters = BTreeMap::new();
        for c in f.clusters {
            self.resource = format!("cluster {:?}", c.name);
            self.name("name", &c.name)?;
            let cluster = self.cluster(c)?;
            if clusters.contains_key(&cluster.name) {
                return Err(self.err("name", "duplicate cluster name"));
            }
            clusters.insert(cluster.name.clone(), Arc::new(cluster));
        }

        let mut route_configs = BTreeMap::new();
        for rc in f.route_configs {
            self.resource = format!("route_config {:?}", rc.name);
            self.name("name", &rc.name)?;
            let name = rc.name.clone();
            let cfg = self.route_config(
                rc.name,
                rc.virtual_hosts,
                (
                    rc.request_headers_to_add,
                    rc.request_headers_to_remove,
                    rc.response_headers_to_add,
                    rc.response_headers_to_remove,
                ),
                &clusters,
            )?;
            if route_configs.insert(name, Arc::new(cfg)).is_some() {
                return Err(self.err("name", "duplicate route_config name"));
            }
        }

        let mut listeners = Vec::new();
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for l in f.listeners {
            self.resource = format!("listener {:?}", l.name);
            self.name("name", &l.name)?;
            if !names.insert(l.name.clone()) {
                return Err(self.err("name", "duplicate listener name"));
            }
            let listener = self.listener(l, &clusters, &route_configs)?;
            if listener.address.port() != 0 && !addrs.insert(listener.address) {
                return Err(self.err("address", format!("{} is used by another listener", listener.address)));
            }
            listeners.push(Arc::new(listener));
        }

        Ok(Bootstrap {
            node,
            admin,
            access_log,
            config: Arc::new(ProxyConfig { version: String::new(), listeners, route_configs, clusters }),
        })
    }

    fn listener(
        &mut self,
        l: raw::Listener,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        rcs: &BTreeMap<String, Arc<RouteConfig>>,
    ) -> R<Listener> {
        let address = self.addr("address", &l.address.0)?;
        let detection_timeout = self.dur("detection_timeout", &l.detection_timeout, Duration::from_secs(5))?;
        let mut chains = Vec::new();
        if l.http.is_some() || l.tcp.is_some() {
            if !l.filter_chains.is_empty() {
                return Err(
                    self.err("http", "use either `http`/`tcp` directly on the listener or `filter_chains`, not both")
                );
            }
            let action = self.chain_action("", l.http, l.tcp, &l.name, clusters, rcs)?;
            chains.push(FilterChain { name: "default".into(), matcher: ChainMatch::default(), action });
        }
        for (i, c) in l.filter_chains.into_iter().enumerate() {
            let field = format!("filter_chains[{i}]");
            let matcher = self.chain_match(&field, c.matcher)?;
            let name = c.name.unwrap_or_else(|| format!("chain-{i}"));
            let action = self.chain_action(&format!("{field}."), c.http, c.tcp, &l.name, clusters, rcs)?;
            if chains.iter().any(|x: &FilterChain| x.matcher == matcher) {
                return Err(self.err(format!("{field}.match"), "two filter chains have the same match"));
            }
            chains.push(FilterChain { name, matcher, action });
        }
        let default_chain = match l.default_chain {
            None => None,
            Some(c) => {
                let action = self.chain_action("default_chain.", c.http, c.tcp, &l.name, clusters, rcs)?;
                Some(FilterChain {
                    name: c.name.unwrap_or_else(|| "default".into()),
                    matcher: ChainMatch::default(),
                    action,
                })
            }
        };
        if chains.is_empty() && default_chain.is_none() {
            return Err(self.err("filter_chains", "a listener needs `http`, `tcp`, `filter_chains` or `default_chain`"));
        }
        Ok(Listener {
            name: l.name,
            address,
            use_original_dst: l.use_original_dst,
            detection_timeout,
            http_inspection: false,
            filter_chains: chains,
            default_chain,
        })
    }

    fn cidr(&self, field: &str, s: &str) -> R<Cidr> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| self.err(field, format!("invalid CIDR {s:?}")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| self.err(field, format!("invalid prefix length in {s:?}")))?,
        };
        Ok(Cidr { addr, prefix_len })
    }

    fn chain_match(&self, field: &str, m: raw::ChainMatch) -> R<ChainMatch> {
        let destination_ips = m
            .destination_ips
            .iter()
            .enumerate()
            .map(|(i, s)| self.cidr(&format!("{field}.match.destination_ips[{i}]"), s))
            .collect::<R<_>>()?;
        let source_ips = m
            .source_ips
            .iter()
            .enumerate()
            .map(|(i, s)| self.cidr(&format!("{field}.match.source_ips[{i}]"), s))
            .collect::<R<_>>()?;
        let transport = match m.transport.as_deref() {
            None => None,
            Some("tls") => Some(Transport::Tls),
            Some("raw_buffer") | Some("raw") => Some(Transport::RawBuffer),
            Some(o) => {
                return Err(self.err(
                    format!("{field}.match.transport"),
                    format!("unknown value {o:?} (expected tls or raw_buffer)"),
                ))
            }
        };
        let mut server_names = Vec::new();
        for (i, n) in m.server_names.iter().enumerate() {
            let n = n.to_ascii_lowercase();
            let rest = n.strip_prefix("*.").unwrap_or(&n);
            if rest.is_empty()
                || rest.contains('*')
                || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(self.err(format!("{field}.match.server_names[{i}]"), format!("invalid server name {n:?}")));
            }
            server_names.push(n);
        }
        Ok(ChainMatch {
            destination_port: m.destination_port,
            destination_ips,
            source_ips,
            server_names,
            transport,
            alpn: m.alpn,
        })
    }

    fn chain_action(
        &mut self,
        field: &str,
        http: Option<raw::Http>,
        tcp: Option<raw::Tcp>,
        listener: &str,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        rcs: &BTreeMap<String, Arc<RouteConfig>>,
    ) -> R<ChainAction> {
        match (http, tcp) {
            (Some(_), Some(_)) => {
                Err(self.err(format!("{field}http"), "a filter chain has either `http` or `tcp`, not both"))
            }
            (None, None) => Err(self.err(format!("{field}http"), "a filter chain needs `http` or `tcp`")),
            (Some(h), None) => Ok(ChainAction::Http(Arc::new(self.http(field, h, listener, clusters, rcs)?))),
            (None, Some(t)) => {
                let f = format!("{field}tcp");
                let cluster = self.cluster_spec(&f, t.cluster, t.weighted_clusters, clusters)?;
                Ok(ChainAction::Tcp(TcpProxy {
                    stat_prefix: t.stat_prefix.unwrap_or_else(|| listener.to_string()),
                    cluster,
                    idle_timeout: self.opt_dur(
                        &format!("{f}.idle_timeout"),
                        &t.idle_timeout,
                        Some(Duration::from_secs(3600)),
                    )?,
                }))
            }
        }
    }

    fn http(
        &mut self,
        field: &str,
        h: raw::Http,
        listener: &str,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        rcs: &BTreeMap<String, Arc<RouteConfig>>,
    ) -> R<HttpConnectionManager> {
        let f = format!("{field}http");
        let codec = match h.codec.as_deref() {
            None | Some("auto") => DownstreamCodec::Auto,
            Some("http1") => DownstreamCodec::Http1,
            Some("http2") | Some("h2c") => DownstreamCodec::Http2,
            Some(o) => {
                return Err(
                    self.err(format!("{f}.codec"), format!("unknown value {o:?} (expected auto, http1 or http2)"))
                )
            }
        };
        let routes = match (h.route_config, h.virtual_hosts) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    format!("{f}.route_config"),
                    "use either `route_config` (a name) or inline `virtual_hosts`, not both",
                ))
            }
            (None, None) => {
                return Err(self
                    .err(format!("{f}.virtual_hosts"), "an http filter chain needs `route_config` or `virtual_hosts`"))
            }
            (Some(name), None) => {
                if !rcs.contains_key(&name) {
                    return Err(self.err(format!("{f}.route_config"), format!("unknown route_config {name:?}")));
                }
                RouteSource::Named(name)
            }
            (None, Some(vhs)) => {
                let saved = self.resource.clone();
                let rc = self.route_config(listener.to_string(), vhs, Default::default(), clusters);
                self.resource = saved;
                RouteSource::Inline(Arc::new(rc?))
            }
        };
        let limits = HttpLimits {
            max_request_headers_bytes: (h.max_request_headers_kb.unwrap_or(60) as usize) * 1024,
            max_headers_count: h.max_headers_count.unwrap_or(100) as usize,
            max_buffered_body_bytes: (h.max_buffered_body_kb.unwrap_or(64) as usize) * 1024,
        };
        if limits.max_request_headers_bytes == 0 || limits.max_request_headers_bytes > 8 * 1024 * 1024 {
            return Err(self.err(format!("{f}.max_request_headers_kb"), "must be between 1 and 8192"));
        }
        if limits.max_headers_count == 0 || limits.max_headers_count > 10_000 {
            return Err(self.err(format!("{f}.max_headers_count"), "must be between 1 and 10000"));
        }
        Ok(HttpConnectionManager {
            stat_prefix: h.stat_prefix.unwrap_or_else(|| listener.to_string()),
            codec,
            routes,
            request_timeout: self.opt_dur(&format!("{f}.request_timeout"), &h.request_timeout, None)?,
            stream_idle_timeout: self.opt_dur(
                &format!("{f}.stream_idle_timeout"),
                &h.stream_idle_timeout,
                Some(Duration::from_secs(300)),
            )?,
            idle_timeout: self.opt_dur(
                &format!("{f}.idle_timeout"),
                &h.idle_timeout,
                Some(Duration::from_secs(3600)),
            )?,
            websocket: h.websocket.unwrap_or(true),
            connect: h.connect.unwrap_or(false),
            generate_request_id: h.generate_request_id.unwrap_or(true),
            use_remote_address: h.use_remote_address.unwrap_or(true),
            limits,
            forwarded_proto: h.forwarded_proto.unwrap_or_else(|| "http".into()),
            server_name: h.server_name.unwrap_or_else(|| "weft".into()),
        })
    }

    fn cluster_spec(
        &self,
        field: &str,
        single: Option<String>,
        weighted: Option<Vec<raw::WeightedCluster>>,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> R<ClusterSpecifier> {
        match (single, weighted) {
            (Some(_), Some(_)) => {
                Err(self.err(format!("{field}.cluster"), "use either `cluster` or `weighted_clusters`, not both"))
            }
            (None, None) => Err(self.err(format!("{field}.cluster"), "a `cluster` or `weighted_clusters` is required")),
            (Some(c), None) => {
                if !clusters.contains_key(&c) {
                    return Err(self.err(format!("{field}.cluster"), format!("unknown cluster {c:?}")));
                }
                Ok(ClusterSpecifier::Single(c))
            }
            (None, Some(ws)) => {
                if ws.is_empty() {
                    return Err(self.err(format!("{field}.weighted_clusters"), "must not be empty"));
                }
                let mut out = Vec::new();
                let mut total: u64 = 0;
                for (i, w) in ws.into_iter().enumerate() {
                    let wf = format!("{field}.weighted_clusters[{i}]");
                    if !clusters.contains_key(&w.name) {
                        return Err(self.err(format!("{wf}.name"), format!("unknown cluster {:?}", w.name)));
                    }
                    total += w.weight as u64;
                    if let Some(h) = &w.host_rewrite {
                        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                            return Err(self.err(format!("{wf}.host_rewrite"), format!("invalid host {h:?}")));
                        }
                    }
                    let (request_headers, response_headers) = self.header_ops(
                        &wf,
                        (
                            w.request_headers_to_add,
                            w.request_headers_to_remove,
                            w.response_headers_to_add,
                            w.response_headers_to_remove,
                        ),
                    )?;
                    out.push(WeightedCluster {
                        name: w.name,
                        weight: w.weight,
                        request_headers,
                        response_headers,
                        host_rewrite: w.host_rewrite,
                    });
                }
                if total == 0 {
                    return Err(self.err(format!("{field}.weighted_clusters"), "total weight must be greater than 0"));
                }
                Ok(ClusterSpecifier::Weighted(out))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn header_ops(
        &self,
        field: &str,
        ops: (Vec<raw::HeaderValue>, Vec<String>, Vec<raw::HeaderValue>, Vec<String>),
    ) -> R<(HeaderOps, HeaderOps)> {
        let field = if field.is_empty() { String::new() } else { format!("{field}.") };
        let conv = |adds: Vec<raw::HeaderValue>, removes: Vec<String>, which: &str| -> R<HeaderOps> {
            let mut add = Vec::new();
            for (i, h) in adds.into_iter().enumerate() {
                let name = h.name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.starts_with(':') {
                    return Err(self.err(
                        format!("{field}{which}_headers_to_add[{i}].name"),
                        format!("invalid header name {:?}", h.name),
                    ));
                }
                if http::HeaderValue::from_str(&h.value.0).is_err() {
                    return Err(self.err(
                        format!("{field}{which}_headers_to_add[{i}].value"),
                        "invalid header value (control characters)",
                    ));
                }
                add.push(HeaderValueOp { name, value: h.value.0, append: h.append });
            }
            let mut remove = Vec::new();
            for (i, n) in removes.into_iter().enumerate() {
                let n = n.to_ascii_lowercase();
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(self
                        .err(format!("{field}{which}_headers_to_remove[{i}]"), format!("invalid header name {n:?}")));
                }
                remove.push(n);
            }
            Ok(HeaderOps { add, remove })
        };
        let req = conv(ops.0, ops.1, "request")?;
        let resp = conv(ops.2, ops.3, "response")?;
        Ok((req, resp))
    }

    #[allow(clippy::type_complexity)]
    fn route_config(
        &mut self,
        name: String,
        vhs: Vec<raw::VirtualHost>,
        ops: (Vec<raw::HeaderValue>, Vec<String>, Vec<raw::HeaderValue>, Vec<String>),
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> R<RouteConfig> {
        let (request_headers, response_headers) = self.header_ops("", ops)?;
        let mut virtual_hosts = Vec::new();
        let mut all_domains = BTreeSet::new();
        let mut vh_names = HashSet::new();
        for vh in vhs {
            self.resource = format!("virtual_host {:?}", vh.name);
            self.name("name", &vh.name)?;
            if !vh_names.insert(vh.name.clone()) {
                return Err(self.err("name", format!("duplicate virtual_host name in route_config {name:?}")));
            }
            if vh.domains.is_empty() {
                return Err(self.err("domains", "at least one domain is required (use \"*\" for any)"));
            }
            let mut domains = Vec::new();
            for (i, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let stars = d.matches('*').count();
                let ok = d == "*" || stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*')));
                if !ok || d.is_empty() {
                    return Err(self.err(
                        format!("domains[{i}]"),
                        format!("invalid domain {d:?} (a wildcard is allowed only as a prefix or suffix)"),
                    ));
                }
                if !all_domains.insert(d.clone()) {
                    return Err(self.err(format!("domains[{i}]"), format!("domain {d:?} appears in two virtual hosts")));
                }
                domains.push(d);
            }
            let retry = vh.retry_policy.map(|r| self.retry("retry_policy", r)).transpose()?;
            let (vreq, vresp) = self.header_ops(
                "",
                (
                    vh.request_headers_to_add,
                    vh.request_headers_to_remove,
                    vh.response_headers_to_add,
                    vh.response_headers_to_remove,
                ),
            )?;
            let mut routes = Vec::new();
            for (i, r) in vh.routes.into_iter().enumerate() {
                routes.push(self.route(&format!("routes[{i}]"), r, clusters)?);
            }
            virtual_hosts.push(VirtualHost {
                name: vh.name,
                domains,
                routes,
                request_headers: vreq,
                response_headers: vresp,
                retry,
            });
        }
        Ok(RouteConfig { name, virtual_hosts, request_headers, response_headers })
    }

    fn string_match(
        &self,
        field: &str,
        exact: Option<String>,
        prefix: Option<String>,
        suffix: Option<String>,
        contains: Option<String>,
        regex: Option<String>,
    ) -> R<Option<StringMatch>> {
        let n = [exact.is_some(), prefix.is_some(), suffix.is_some(), contains.is_some(), regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if n > 1 {
            return Err(self.err(field, "use only one of exact, prefix, suffix, contains, regex"));
        }
        Ok(if let Some(s) = exact {
            Some(StringMatch::Exact(s))
        } else if let Some(s) = prefix {
            Some(StringMatch::Prefix(s))
        } else if let Some(s) = suffix {
            Some(StringMatch::Suffix(s))
        } else if let Some(s) = contains {
            Some(StringMatch::Contains(s))
        } else if let Some(s) = regex {
            Some(StringMatch::Regex(
                Pattern::full(&s).map_err(|e| self.err(format!("{field}.regex"), format!("invalid regex: {e}")))?,
            ))
        } else {
            None
        })
    }

    fn header_matcher(&self, field: &str, h: raw::HeaderMatcher) -> R<HeaderMatcher> {
        let name = h.name.to_ascii_lowercase();
        if name.is_empty()
            || (http::HeaderName::from_bytes(name.as_bytes()).is_err()
                && !matches!(name.as_str(), ":method" | ":authority" | ":path" | ":scheme"))
        {
            return Err(self.err(format!("{field}.name"), format!("invalid header name {:?}", h.name)));
        }
        let value = self.string_match(field, h.exact, h.prefix, h.suffix, h.contains, h.regex)?;
        let rule = match (value, h.present) {
            (Some(_), Some(_)) => return Err(self.err(field, "use either a value match or `present`, not both")),
            (Some(v), None) => HeaderRule::Value(v),
            (None, Some(p)) => HeaderRule::Present(p),
            (None, None) => HeaderRule::Present(true),
        };
        Ok(HeaderMatcher { name, rule, invert: h.invert })
    }

    fn route(&self, field: &str, r: raw::Route, clusters: &BTreeMap<String, Arc<Cluster>>) -> R<Route> {
        let m = r.matcher;
        let paths = [m.prefix.is_some(), m.path.is_some(), m.regex.is_some(), m.path_separated_prefix.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if paths > 1 {
            return Err(
                self.err(format!("{field}.match"), "use only one of prefix, path, regex, path_separated_prefix")
            );
        }
        if m.connect && paths > 0 {
            return Err(self.err(
                format!("{field}.match.connect"),
                "a CONNECT request has no path: use `connect` without prefix, path, regex or path_separated_prefix",
            ));
        }
        let path = if let Some(p) = m.path {
            PathMatch::Exact(p)
        } else if let Some(p) = m.regex {
            PathMatch::Regex(
                Pattern::full(&p)
                    .map_err(|e| self.err(format!("{field}.match.regex"), format!("invalid regex: {e}")))?,
            )
        } else if let Some(p) = m.path_separated_prefix {
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
                return Err(self
                    .err(format!("{field}.match.path_separated_prefix"), "must start with '/' and not end with '/'"));
            }
            PathMatch::PathSeparatedPrefix(p)
        } else {
            PathMatch::Prefix(m.prefix.unwrap_or_else(|| "/".into()))
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.into_iter().enumerate() {
            headers.push(self.header_matcher(&format!("{field}.match.headers[{i}]"), h)?);
        }
        if !m.methods.is_empty() {
            for (i, meth) in m.methods.iter().enumerate() {
                if http::Method::from_bytes(meth.as_bytes()).is_err() {
                    return Err(self.err(format!("{field}.match.methods[{i}]"), format!("invalid method {meth:?}")));
                }
            }
            let alt = m.methods.iter().map(|s| regex::escape(s)).collect::<Vec<_>>().join("|");
            let p = Pattern::full(&alt).map_err(|e| self.err(format!("{field}.match.methods"), e.to_string()))?;
            headers.push(HeaderMatcher {
                name: ":method".into(),
                rule: HeaderRule::Value(StringMatch::Regex(p)),
                invert: false,
            });
        }
        let mut query = Vec::new();
        for (i, q) in m.query_parameters.into_iter().enumerate() {
            let qf = format!("{field}.match.query_parameters[{i}]");
            let value = self.string_match(&qf, q.exact, q.prefix, q.suffix, q.contains, q.regex)?;
            if value.is_some() && q.present.is_some() {
                return Err(self.err(qf, "use either a value match or `present`, not both"));
            }
            if q.present == Some(false) {
                return Err(self.err(format!("{qf}.present"), "only `present: true` is supported for query parameters"));
            }
            query.push(QueryMatcher { name: q.name, value });
        }
        let matcher = RouteMatch {
            path,
            case_sensitive: m.case_sensitive.unwrap_or(true),
            headers,
            query,
            grpc: m.grpc,
            connect: m.connect,
        };

        let actions =
            [r.route.is_some(), r.redirect.is_some(), r.direct_response.is_some()].iter().filter(|b| **b).count();
        if actions != 1 {
            return Err(self.err(field, "a route needs exactly one of `route`, `redirect`, `direct_response`"));
        }
        let action = if let Some(fw) = r.route {
            RouteAction::Forward(self.forward(&format!("{field}.route"), fw, clusters)?)
        } else if let Some(rd) = r.redirect {
            let status = rd.response_code.unwrap_or(301);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(self.err(
                    format!("{field}.redirect.response_code"),
                    format!("{status} is not a redirect code (301, 302, 303, 307, 308)"),
                ));
            }
            if rd.path.is_some() && rd.prefix_rewrite.is_some() {
                return Err(self.err(format!("{field}.redirect"), "use either `path` or `prefix_rewrite`, not both"));
            }
            RouteAction::Redirect(Redirect {
                scheme: rd.scheme,
                host: rd.host,
                port: rd.port,
                path: rd.path,
                prefix_rewrite: rd.prefix_rewrite,
                strip_query: rd.strip_query,
                status,
            })
        } else if let Some(d) = r.direct_response {
            if !(200..=599).contains(&d.status) {
                return Err(
                    self.err(format!("{field}.direct_response.status"), format!("{} is not a valid status", d.status))
                );
            }
            RouteAction::Direct(DirectResponse { status: d.status, body: d.body })
        } else {
            unreachable!("exactly one action checked above")
        };

        let fault = match r.fault {
            None => None,
            Some(f) => {
                let ff = format!("{field}.fault");
                let delay = match f.delay {
                    None => None,
                    Some(d) => Some(FaultDelay {
                        fixed: parse_duration(&d.fixed.0).map_err(|e| self.err(format!("{ff}.delay.fixed"), e))?,
                        fraction_per_million: self.percent(&format!("{ff}.delay.percent"), d.percent)?,
                    }),
                };
                let abort = match f.abort {
                    None => None,
                    Some(a) => {
                        let status = match (a.http_status, a.grpc_status) {
                            (Some(h), None) if (200..=599).contains(&h) => AbortStatus::Http(h),
                            (Some(h), None) => {
                                return Err(
                                    self.err(format!("{ff}.abort.http_status"), format!("{h} is not a valid status"))
                                )
                            }
                            (None, Some(g)) if g <= 16 => AbortStatus::Grpc(g),
                            (None, Some(g)) => {
                                return Err(self.err(
                                    format!("{ff}.abort.grpc_status"),
                                    format!("{g} is not a gRPC status code (0..16)"),
                                ))
                            }
                            _ => {
                                return Err(self.err(
                                    format!("{ff}.abort"),
                                    "exactly one of http_status or grpc_status is required",
                                ))
                            }
                        };
                        Some(FaultAbort {
                            status,
                            fraction_per_million: self.percent(&format!("{ff}.abort.percent"), a.percent)?,
                        })
                    }
                };
                if delay.is_none() && abort.is_none() {
                    return Err(self.err(ff, "a fault needs `delay` or `abort`"));
                }
                Some(Fault { delay, abort })
            }
        };
        let (request_headers, response_headers) = self.header_ops(
            field,
            (
                r.request_headers_to_add,
                r.request_headers_to_remove,
                r.response_headers_to_add,
                r.response_headers_to_remove,
            ),
        )?;
        Ok(Route {
            name: r.name.unwrap_or_default(),
            matcher,
            action,
            request_headers,
            response_headers,
            fault,
            metadata: r.metadata,
        })
    }

    fn retry(&self, field: &str, r: raw::RetryPolicy) -> R<RetryPolicy> {
        let retry_on = RetryOn::parse(r.retry_on.as_deref().unwrap_or(""))
            .map_err(|e| self.err(format!("{field}.retry_on"), e))?;
        let mut retriable_headers = Vec::new();
        for (i, h) in r.retriable_headers.into_iter().enumerate() {
            retriable_headers.push(self.header_matcher(&format!("{field}.retriable_headers[{i}]"), h)?);
        }
        for (i, c) in r.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                return Err(
                    self.err(format!("{field}.retriable_status_codes[{i}]"), format!("{c} is not an HTTP status"))
                );
            }
        }
        let d = RetryPolicy::default();
        let (base, max) = match r.backoff {
            None => (d.backoff_base, d.backoff_max),
            Some(b) => {
                let base = self.dur(&format!("{field}.backoff.base_interval"), &b.base_interval, d.backoff_base)?;
                let max = self.dur(&format!("{field}.backoff.max_interval"), &b.max_interval, base * 10)?;
                if base.is_zero() {
                    return Err(self.err(format!("{field}.backoff.base_interval"), "must be greater than 0"));
                }
                if max < base {
                    return Err(
                        self.err(format!("{field}.backoff.max_interval"), "must not be less than base_interval")
                    );
                }
                (base, max)
            }
        };
        Ok(RetryPolicy {
            retry_on,
            num_retries: r.num_retries.unwrap_or(1),
            per_try_timeout: self.opt_dur(&format!("{field}.per_try_timeout"), &r.per_try_timeout, None)?,
            retriable_status_codes: r.retriable_status_codes,
            retriable_headers,
            backoff_base: base,
            backoff_max: max,
        })
    }

    fn forward(&self, field: &str, f: raw::Forward, clusters: &BTreeMap<String, Arc<Cluster>>) -> R<Forward> {
        let cluster = self.cluster_spec(field, f.cluster, f.weighted_clusters, clusters)?;
        if let Some(p) = &f.prefix_rewrite {
            if f.regex_rewrite.is_some() {
                return Err(
                    self.err(format!("{field}.prefix_rewrite"), "use either prefix_rewrite or regex_rewrite, not both")
                );
            }
            if p.is_empty() {
                return Err(self.err(format!("{field}.prefix_rewrite"), "must not be empty (use \"/\")"));
            }
        }
        let regex_rewrite = match f.regex_rewrite {
            None => None,
            Some(r) => Some(RegexRewrite {
                pattern: Pattern::unanchored(&r.pattern)
                    .map_err(|e| self.err(format!("{field}.regex_rewrite.pattern"), format!("invalid regex: {e}")))?,
                substitution: r.substitution,
            }),
        };
        if let Some(h) = &f.host_rewrite {
            if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                return Err(self.err(format!("{field}.host_rewrite"), format!("invalid host {h:?}")));
            }
        }
        let mut hash_policy = Vec::new();
        for (i, h) in f.hash_policy.into_iter().enumerate() {
            let hf = format!("{field}.hash_policy[{i}]");
            let n = [h.header.is_some(), h.cookie.is_some(), h.source_ip.is_some(), h.query_parameter.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if n != 1 {
                return Err(self.err(hf, "exactly one of header, cookie, source_ip, query_parameter is required"));
            }
            let terminal = h.terminal;
            hash_policy.push(if let Some(name) = h.header {
                HashPolicy::Header { name: name.to_ascii_lowercase(), terminal }
            } else if let Some(c) = h.cookie {
                HashPolicy::Cookie {
                    ttl: self.opt_dur(&format!("{hf}.cookie.ttl"), &c.ttl, None)?,
                    name: c.name,
                    path: c.path,
                    terminal,
                }
            } else if let Some(name) = h.query_parameter {
                HashPolicy::QueryParameter { name, terminal }
            } else if h.source_ip == Some(true) {
                HashPolicy::SourceIp { terminal }
            } else {
                return Err(self.err(format!("{hf}.source_ip"), "must be true (omit the policy to disable it)"));
            });
        }
        let mut mirrors = Vec::new();
        for (i, m) in f.request_mirror_policies.into_iter().enumerate() {
            let mf = format!("{field}.request_mirror_policies[{i}]");
            if !clusters.contains_key(&m.cluster) {
                return Err(self.err(format!("{mf}.cluster"), format!("unknown cluster {:?}", m.cluster)));
            }
            mirrors.push(Mirror {
                fraction_per_million: self.percent(&format!("{mf}.percent"), m.percent)?,
                cluster: m.cluster,
            });
        }
        Ok(Forward {
            cluster,
            prefix_rewrite: f.prefix_rewrite,
            regex_rewrite,
            host_rewrite: f.host_rewrite,
            timeout: self.opt_dur(&format!("{field}.timeout"), &f.timeout, Some(Duration::from_secs(15)))?,
            idle_timeout: self.opt_dur(&format!("{field}.idle_timeout"), &f.idle_timeout, None)?,
            retry: f.retry_policy.map(|r| self.retry(&format!("{field}.retry_policy"), r)).transpose()?,
            hash_policy,
            mirrors,
            max_grpc_timeout: self.opt_dur(&format!("{field}.max_grpc_timeout"), &f.max_grpc_timeout, None)?,
        })
    }

    fn endpoint(&self, field: &str, e: raw::EndpointEntry, dns: bool) -> R<(Endpoint, Option<u32>, Option<Locality>)> {
        let (address, weight, priority, locality, health, metadata) = match e {
            raw::EndpointEntry::Address(a) => (a, None, None, None, None, Default::default()),
            raw::EndpointEntry::Full(f) => (f.address, f.weight, f.priority, f.locality, f.health, f.metadata),
        };
        let address = match address.parse::<SocketAddr>() {
            Ok(sa) => EndpointAddress::Socket(sa),
            Err(_) if dns => {
                let (host, port) = address.rsplit_once(':').ok_or_else(|| {
                    self.err(format!("{field}.address"), format!("{address:?} needs a port (host:port)"))
                })?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| self.err(format!("{field}.address"), format!("invalid port in {address:?}")))?;
                if host.is_empty()
                    || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
                {
                    return Err(self.err(format!("{field}.address"), format!("invalid host name in {address:?}")));
                }
                EndpointAddress::Dns { host: host.to_ascii_lowercase(), port }
            }
            Err(_) => {
                return Err(self.err(
                    format!("{field}.address"),
                    format!("invalid address {address:?} (expected IP:PORT; host names need `type: strict_dns`)"),
                ))
            }
        };
        if weight == Some(0) {
            return Err(self.err(format!("{field}.weight"), "must be at least 1"));
        }
        let health = match health.as_deref() {
            None | Some("healthy") => EndpointHealth::Healthy,
            Some("unhealthy") => EndpointHealth::Unhealthy,
            Some("draining") => EndpointHealth::Draining,
            Some(o) => {
                return Err(self.err(
                    format!("{field}.health"),
                    format!("unknown value {o:?} (expected healthy, unhealthy or draining)"),
                ))
            }
        };
        let locality = locality.map(|l| {
            let mut parts = l.splitn(3, '/');
            Locality {
                region: parts.next().unwrap_or_default().to_string(),
                zone: parts.next().unwrap_or_default().to_string(),
                sub_zone: parts.next().unwrap_or_default().to_string(),
            }
        });
        Ok((Endpoint { address, weight: weight.unwrap_or(1), health, metadata }, priority, locality))
    }

    fn cluster(&self, c: raw::Cluster) -> R<Cluster> {
        let dns_refresh = self.dur("dns_refresh_rate", &c.dns_refresh_rate, Duration::from_secs(5))?;
        let discovery = match c.kind.as_deref() {
            None | Some("static") => Discovery::Static,
            Some("strict_dns") | Some("dns") => Discovery::StrictDns { refresh: dns_refresh },
            Some("logical_dns") => Discovery::LogicalDns { refresh: dns_refresh },
            Some("eds") => Discovery::Eds,
            Some("original_dst") => Discovery::OriginalDst,
            Some("dynamic_forward_proxy") => Discovery::DynamicForwardProxy {
                refresh: self.dur("dns_refresh_rate", &c.dns_refresh_rate, Duration::from_secs(60))?,
                max_hosts: c.max_hosts.unwrap_or(1024),
            },
            Some(o) => {
                return Err(self.err(
                    "type",
                    format!(
                        "unknown value {o:?} (expected static, strict_dns, logical_dns, eds, original_dst or \
                         dynamic_forward_proxy)"
                    ),
                ))
            }
        };
        if let Discovery::DynamicForwardProxy { max_hosts, .. } = discovery {
            if !c.endpoints.is_empty() || !c.localities.is_empty() {
                return Err(self.err("endpoints", "a dynamic_forward_proxy cluster takes its hosts from requests"));
            }
            if max_hosts == 0 || max_hosts > 65_536 {
                return Err(self.err("max_hosts", "must be between 1 and 65536"));
            }
        } else if c.max_hosts.is_some() {
            return Err(self.err("max_hosts", "only dynamic_forward_proxy clusters take max_hosts"));
        }
        if dns_refresh.is_zero() {
            return Err(self.err("dns_refresh_rate", "must be greater than 0"));
        }
        let dns = matches!(discovery, Discovery::StrictDns { .. } | Discovery::LogicalDns { .. });
        // Flat `endpoints` are grouped by (priority, locality); `localities` are taken as written.
        let mut localities: Vec<LocalityEndpoints> = Vec::new();
        for (i, e) in c.endpoints.into_iter().enumerate() {
            let (ep, priority, locality) = self.endpoint(&format!("endpoints[{i}]"), e, dns)?;
            let priority = priority.unwrap_or(0);
            let locality = locality.unwrap_or_default();
            match localities.iter_mut().find(|l| l.priority == priority && l.locality == locality) {
                Some(l) => l.endpoints.push(ep),
                None => localities.push(LocalityEndpoints { locality, priority, weight: None, endpoints: vec![ep] }),
            }
        }
        for (i, l) in c.localities.into_iter().enumerate() {
            let mut eps = Vec::new();
            for (j, e) in l.endpoints.into_iter().enumerate() {
                eps.push(self.endpoint(&format!("localities[{i}].endpoints[{j}]"), e, dns)?.0);
            }
            if l.weight == Some(0) {
                return Err(self.err(format!("localities[{i}].weight"), "must be at least 1"));
            }
            localities.push(LocalityEndpoints {
                locality: Locality {
                    region: l.region.unwrap_or_default(),
                    zone: l.zone.unwrap_or_default(),
                    sub_zone: l.sub_zone.unwrap_or_default(),
                },
                priority: l.priority.unwrap_or(0),
                weight: l.weight,
                endpoints: eps,
            });
        }
        localities.sort_by_key(|l| l.priority);
        if matches!(discovery, Discovery::Static | Discovery::StrictDns { .. } | Discovery::LogicalDns { .. })
            && localities.iter().all(|l| l.endpoints.is_empty())
        {
            return Err(self.err("endpoints", "a static or strict_dns cluster needs at least one endpoint"));
        }
        if matches!(discovery, Discovery::LogicalDns { .. })
            && localities.iter().map(|l| l.endpoints.len()).sum::<usize>() != 1
        {
            return Err(self.err("endpoints", "a logical_dns cluster takes exactly one endpoint"));
        }
        let lb_policy = match c.lb_policy.as_deref() {
            None | Some("round_robin") => LbPolicy::RoundRobin,
            Some("least_request") => LbPolicy::LeastRequest {
                choice_count: c.least_request.as_ref().and_then(|l| l.choice_count).unwrap_or(2).max(2),
            },
            Some("random") => LbPolicy::Random,
            Some("ring_hash") => {
                let min = c.ring_hash.as_ref().and_then(|r| r.min_ring_size).unwrap_or(1024);
                let max = c.ring_hash.as_ref().and_then(|r| r.max_ring_size).unwrap_or(8 * 1024 * 1024);
                if min == 0 || min > max || max > 8 * 1024 * 1024 {
                    return Err(self.err("ring_hash", "need 0 < min_ring_size <= max_ring_size <= 8388608"));
                }
                LbPolicy::RingHash { min_ring_size: min, max_ring_size: max }
            }
            Some("maglev") => {
                let t = c.maglev.as_ref().and_then(|m| m.table_size).unwrap_or(65537);
                if !is_prime(t) || t > 5_000_011 {
                    return Err(self.err("maglev.table_size", format!("{t} must be a prime no larger than 5000011")));
                }
                LbPolicy::Maglev { table_size: t }
            }
            Some(o) => {
                return Err(self.err(
                    "lb_policy",
                    format!("unknown value {o:?} (expected round_robin, least_request, random, ring_hash or maglev)"),
                ))
            }
        };
        let protocol = match c.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("http2") | Some("h2c") | Some("grpc") => UpstreamProtocol::Http2,
            Some("same_as_downstream") => UpstreamProtocol::SameAsDownstream,
            Some(o) => {
                return Err(
                    self.err("protocol", format!("unknown value {o:?} (expected http1, http2 or same_as_downstream)"))
                )
            }
        };
        let pd = PoolConfig::default();
        let pool = match c.pool {
            None => pd,
            Some(p) => PoolConfig {
                max_idle_per_endpoint: p.max_idle_per_endpoint.unwrap_or(pd.max_idle_per_endpoint),
                idle_timeout: self.dur("pool.idle_timeout", &p.idle_timeout, pd.idle_timeout)?,
                max_requests_per_connection: p.max_requests_per_connection.filter(|n| *n > 0),
                max_concurrent_streams: p.max_concurrent_streams.unwrap_or(pd.max_concurrent_streams).max(1),
            },
        };
        let cd = CircuitBreakers::default();
        let circuit_breakers = match c.circuit_breakers {
            None => cd,
            Some(b) => {
                let (pct, minc) = match b.retry_budget {
                    None => (None, cd.retry_budget_min_concurrency),
                    Some(rb) => {
                        let p = rb.budget_percent.unwrap_or(20.0);
                        if !(0.0..=100.0).contains(&p) {
                            return Err(self.err(
                                "circuit_breakers.retry_budget.budget_percent",
                                format!("{p} out of range 0..100"),
                            ));
                        }
                        (Some(p), rb.min_retry_concurrency.unwrap_or(3))
                    }
                };
                CircuitBreakers {
                    max_connections: b.max_connections.unwrap_or(cd.max_connections),
                    max_pending_requests: b.max_pending_requests.unwrap_or(cd.max_pending_requests),
                    max_requests: b.max_requests.unwrap_or(cd.max_requests),
                    max_retries: b.max_retries.unwrap_or(cd.max_retries),
                    retry_budget_percent: pct,
                    retry_budget_min_concurrency: minc,
                }
            }
        };
        let outlier_detection = match c.outlier_detection {
            None => None,
            Some(o) => {
                let d = OutlierDetection::default();
                let od = OutlierDetection {
                    consecutive_5xx: o.consecutive_5xx.unwrap_or(d.consecutive_5xx),
                    consecutive_gateway_failure: o.consecutive_gateway_failure.unwrap_or(d.consecutive_gateway_failure),
                    consecutive_local_origin_failure: o
                        .consecutive_local_origin_failure
                        .unwrap_or(d.consecutive_local_origin_failure),
                    interval: self.dur("outlier_detection.interval", &o.interval, d.interval)?,
                    base_ejection_time: self.dur(
                        "outlier_detection.base_ejection_time",
                        &o.base_ejection_time,
                        d.base_ejection_time,
                    )?,
                    max_ejection_time: self.dur(
                        "outlier_detection.max_ejection_time",
                        &o.max_ejection_time,
                        d.max_ejection_time,
                    )?,
                    max_ejection_percent: o.max_ejection_percent.unwrap_or(d.max_ejection_percent),
                };
                if od.max_ejection_percent > 100 {
                    return Err(self.err("outlier_detection.max_ejection_percent", "must be at most 100"));
                }
                if od.interval.is_zero() || od.base_ejection_time.is_zero() {
                    return Err(self
                        .err("outlier_detection.interval", "interval and base_ejection_time must be greater than 0"));
                }
                Some(od)
            }
        };
        let mut health_checks = Vec::new();
        for (i, h) in c.health_checks.into_iter().enumerate() {
            let hf = format!("health_checks[{i}]");
            let kind = match (h.http, h.tcp) {
                (Some(hh), None) => {
                    if !hh.path.starts_with('/') {
                        return Err(self.err(format!("{hf}.http.path"), "must start with '/'"));
                    }
                    let mut ranges = Vec::new();
                    for (j, s) in hh.expected_statuses.iter().enumerate() {
                        let parse = |x: &str| x.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
                        let r = match s.0.split_once('-') {
                            Some((a, b)) => parse(a).zip(parse(b)),
                            None => parse(&s.0).map(|c| (c, c)),
                        };
                        match r {
                            Some((a, b)) if a <= b => ranges.push((a, b)),
                            _ => {
                                return Err(self.err(
                                    format!("{hf}.http.expected_statuses[{j}]"),
                                    format!("invalid status or range {:?}", s.0),
                                ))
                            }
                        }
                    }
                    if ranges.is_empty() {
                        ranges.push((200, 299));
                    }
                    HealthCheckKind::Http { path: hh.path, host: hh.host, expected_statuses: ranges }
                }
                (None, Some(_)) => HealthCheckKind::Tcp,
                _ => return Err(self.err(&hf, "exactly one of `http` or `tcp` is required")),
            };
            let interval = self.dur(&format!("{hf}.interval"), &h.interval, Duration::from_secs(5))?;
            let timeout = self.dur(&format!("{hf}.timeout"), &h.timeout, Duration::from_secs(1))?;
            if interval.is_zero() || timeout.is_zero() {
                return Err(self.err(format!("{hf}.interval"), "interval and timeout must be greater than 0"));
            }
            health_checks.push(HealthCheck {
                kind,
                interval,
                timeout,
                unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3).max(1),
                healthy_threshold: h.healthy_threshold.unwrap_or(1).max(1),
            });
        }
        let panic_threshold_percent = c.panic_threshold.unwrap_or(50.0);
        if !(0.0..=100.0).contains(&panic_threshold_percent) {
            return Err(self.err("panic_threshold", format!("{panic_threshold_percent} out of range 0..100")));
        }
        let connect_timeout = self.dur("connect_timeout", &c.connect_timeout, Duration::from_secs(5))?;
        if connect_timeout.is_zero() {
            return Err(self.err("connect_timeout", "must be greater than 0"));
        }
        Ok(Cluster {
            name: c.name,
            discovery,
            lb_policy,
            localities,
            connect_timeout,
            protocol,
            pool,
            circuit_breakers,
            outlier_detection,
            health_checks,
            panic_threshold_percent,
            metadata: c.metadata,
            source_address: None,
        })
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}
