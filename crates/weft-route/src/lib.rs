//! Route matching for Weft: virtual host by authority, then the first route whose match holds.
//! Pure functions over an immutable [`RouteTable`], compiled once per config change.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use weft_config::{
    Forward, HashPolicy, HeaderMatcher, HeaderOps, HeaderRule, PathMatch, Redirect, Route, RouteConfig, RouteMatch,
    VirtualHost, WeightedCluster,
};

/// What the matcher looks at, borrowed from the request.
pub struct RequestView<'a> {
    /// Host or :authority as received (may include a port).
    pub authority: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    pub is_grpc: bool,
    /// The listener's (or original destination's) port, for `host:port` domains.
    pub port: u16,
}

pub struct Selected<'a> {
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
    pub vhost_index: usize,
    pub route_index: usize,
}

/// A route config indexed for lookup: exact domains in a hash map, wildcard suffixes and
/// prefixes sorted longest first, and the catch-all.
pub struct RouteTable {
    cfg: Arc<RouteConfig>,
    exact: HashMap<String, usize>,
    /// Whether any exact domain carries a port (else `host:port` lookups are skipped).
    exact_has_ports: bool,
    /// Wildcard suffixes (`*.example.com` → `.example.com`) by text, and their distinct lengths
    /// longest first: a lookup probes one map entry per length instead of scanning every domain.
    suffixes: HashMap<String, usize>,
    suffix_lens: Vec<usize>,
    prefixes: HashMap<String, usize>,
    prefix_lens: Vec<usize>,
    any: Option<usize>,
}

impl RouteTable {
    pub fn new(cfg: Arc<RouteConfig>) -> RouteTable {
        let mut exact = HashMap::new();
        let mut suffixes = HashMap::new();
        let mut prefixes = HashMap::new();
        let mut any = None;
        for (i, vh) in cfg.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if d == "*" {
                    any.get_or_insert(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    suffixes.entry(s.to_string()).or_insert(i);
                } else if let Some(p) = d.strip_suffix('*') {
                    prefixes.entry(p.to_string()).or_insert(i);
                } else {
                    exact.entry(d).or_insert(i);
                }
            }
        }
        let lens = |m: &HashMap<String, usize>| {
            let mut v: Vec<usize> = m.keys().map(String::len).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.dedup();
            v
        };
        let (suffix_lens, prefix_lens) = (lens(&suffixes), lens(&prefixes));
        let exact_has_ports = exact.keys().any(|k| k.contains(':'));
        RouteTable { cfg, exact, exact_has_ports, suffixes, suffix_lens, prefixes, prefix_lens, any }
    }

    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// Chooses the virtual host for an authority. Tried in order: the authority as sent; without
    /// its port (or, when it has none, with the listener's port); then wildcards and `*`.
    pub fn select_vhost(&self, authority: &str, port: u16) -> Option<usize> {
        // Lowercase only when needed: most authorities already are.
        let auth: std::borrow::Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(authority.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(authority)
        };
        let auth = auth.as_ref();
        if let Some(i) = self.exact.get(auth) {
            return Some(*i);
        }
        let host = strip_port(auth);
        if host.len() != auth.len() {
            if let Some(i) = self.exact.get(host) {
                return Some(*i);
            }
        } else if port != 0 && self.exact_has_ports {
            if let Some(i) = self.exact.get(&format!("{auth}:{port}")) {
                return Some(*i);
            }
        }
        for name in [auth, host] {
            // Longest wildcard wins; it must match at least one character (Envoy: `*.foo.com`
            // does not match `.foo.com`). Slicing at a non-char boundary simply misses.
            for &l in self.suffix_lens.iter().filter(|l| **l < name.len()) {
                if let Some(i) = name.get(name.len() - l..).and_then(|s| self.suffixes.get(s)) {
                    return Some(*i);
                }
            }
            for &l in self.prefix_lens.iter().filter(|l| **l < name.len()) {
                if let Some(i) = name.get(..l).and_then(|p| self.prefixes.get(p)) {
                    return Some(*i);
                }
            }
        }
        self.any
    }

    pub fn select<'a>(&'a self, req: &RequestView<'_>) -> Option<Selected<'a>> {
        let vhost_index = self.select_vhost(req.authority, req.port)?;
        let vhost = &self.cfg.virtual_hosts[vhost_index];
        let route_index = vhost.routes.iter().position(|r| route_matches(&r.matcher, req))?;
        Some(Selected { vhost, route: &vhost.routes[route_index], vhost_index, route_index })
    }
}

fn strip_port(auth: &str) -> &str {
    if auth.starts_with('[') {
        // [v6]:port
        return match auth.rfind("]:") {
            Some(i) => &auth[..=i],
            None => auth,
        };
    }
    match auth.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => auth,
    }
}

fn split_path(pq: &str) -> (&str, &str) {
    match pq.split_once('?') {
        Some((p, q)) => (p, q),
        None => (pq, ""),
    }
}

/// Whether one route's match holds for the request.
pub fn route_matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    let (path, query) = split_path(req.path);
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => starts_with(path, p, m.case_sensitive),
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                path == p
            } else {
                path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(r) => r.is_match(path),
        PathMatch::PathSeparatedPrefix(p) => {
            starts_with(path, p, m.case_sensitive) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
    };
    if !path_ok || (m.grpc && !req.is_grpc) {
        return false;
    }
    m.headers.iter().all(|h| header_matches(h, req)) && m.query.iter().all(|q| query_matches(q, query))
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// Header value as Envoy sees it: pseudo-headers from the request line; repeated headers joined by ",".
fn header_value<'a>(name: &str, req: &RequestView<'a>) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    match name {
        ":method" => Some(Cow::Borrowed(req.method)),
        ":authority" => Some(Cow::Borrowed(req.authority)),
        ":path" => Some(Cow::Borrowed(req.path)),
        ":scheme" => Some(Cow::Borrowed("http")),
        _ => {
            let mut values = req.headers.get_all(name).iter();
            let first = values.next()?;
            let first = std::str::from_utf8(first.as_bytes()).ok()?;
            match values.next() {
                None => Some(Cow::Borrowed(first)),
                Some(second) => {
                    let mut joined = first.to_string();
                    for v in std::iter::once(second).chain(values) {
                        joined.push(',');
                        joined.push_str(std::str::from_utf8(v.as_bytes()).ok()?);
                    }
                    Some(Cow::Owned(joined))
                }
            }
        }
    }
}

fn header_matches(h: &HeaderMatcher, req: &RequestView<'_>) -> bool {
    let v = header_value(&h.name, req);
    let hit = match &h.rule {
        HeaderRule::Present(p) => v.is_some() == *p,
        HeaderRule::Value(sm) => v.map(|v| sm.matches(&v)).unwrap_or(false),
    };
    hit != h.invert
}

fn query_matches(q: &weft_config::QueryMatcher, query: &str) -> bool {
    query.split('&').filter(|kv| !kv.is_empty()).any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if percent_decode(k) != q.name {
            return false;
        }
        match &q.value {
            None => true,
            Some(sm) => sm.matches(&percent_decode(v)),
        }
    })
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn total_weight(clusters: &[WeightedCluster]) -> u64 {
    clusters.iter().map(|c| c.weight as u64).sum()
}

/// The cluster whose cumulative weight range holds `roll` (uniform in `[0, total)`).
/// Panics never: an out-of-range roll lands on the last cluster.
pub fn pick_weighted(clusters: &[WeightedCluster], roll: u64) -> &WeightedCluster {
    let mut acc = 0u64;
    for c in clusters {
        acc += c.weight as u64;
        if roll < acc {
            return c;
        }
    }
    // Validation guarantees at least one cluster.
    &clusters[clusters.len() - 1]
}

/// The upstream path after `prefix_rewrite` / `regex_rewrite`; None when nothing changes.
pub fn rewrite_path(fw: &Forward, matched: &PathMatch, path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let new_path = if let Some(prefix) = &fw.prefix_rewrite {
        let matched_len = match matched {
            PathMatch::Prefix(p) | PathMatch::PathSeparatedPrefix(p) => p.len().min(path.len()),
            PathMatch::Exact(_) => path.len(),
            PathMatch::Regex(_) => return None,
        };
        let rest = &path[matched_len..];
        // Avoid `//` when the new prefix ends with '/' and the rest starts with one.
        if prefix.ends_with('/') && rest.starts_with('/') {
            format!("{}{}", prefix, &rest[1..])
        } else {
            format!("{prefix}{rest}")
        }
    } else if let Some(rr) = &fw.regex_rewrite {
        rr.pattern.0.replace_all(path, re2_substitution(&rr.substitution).as_str()).into_owned()
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

/// RE2 writes groups as `\1`; the regex crate as `${1}`. A literal `$` must be escaped as `$$`.
fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// The `Location` for a redirect route, keeping what the redirect does not override.
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
    matched: &PathMatch,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let (host, port) = match (strip_port(authority), authority.len()) {
        (h, n) if h.len() < n => (h, Some(&authority[h.len() + 1..])),
        (h, _) => (h, None),
    };
    let host = r.host.as_deref().unwrap_or(host);
    let port = match r.port {
        Some(p) => Some(p.to_string()),
        None if r.host.is_some() => None,
        None => port.map(str::to_string),
    };
    let port = port.filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
    let (path, query) = split_path(path_and_query);
    let mut new_path = if let Some(p) = &r.path {
        p.clone()
    } else if let Some(prefix) = &r.prefix_rewrite {
        let n = match matched {
            PathMatch::Prefix(p) | PathMatch::PathSeparatedPrefix(p) => p.len().min(path.len()),
            PathMatch::Exact(_) => path.len(),
            PathMatch::Regex(_) => 0,
        };
        format!("{prefix}{}", &path[n..])
    } else {
        path.to_string()
    };
    if !r.strip_query && !query.is_empty() && !new_path.contains('?') {
        new_path.push('?');
        new_path.push_str(query);
    }
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{new_path}"),
        None => format!("{scheme}://{host}{new_path}"),
    }
}

/// Removes, then adds (append=false replaces existing values).
pub fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for n in &ops.remove {
        headers.remove(n.as_str());
    }
    for op in &ops.add {
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(op.name.as_bytes()), http::HeaderValue::from_str(&op.value))
        else {
            continue;
        };
        if op.append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

/// The request's hash for ring-hash/maglev (Envoy's semantics): policies in order, hashes of
/// those that produce a value combined, stopping at the first terminal policy that produced one.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    path_and_query: &str,
    source_ip: Option<IpAddr>,
) -> Option<u64> {
    let mut acc: Option<u64> = None;
    for p in policies {
        let (value, terminal): (Option<Vec<u8>>, bool) = match p {
            HashPolicy::Header { name, terminal } => {
                let vals: Vec<&[u8]> = headers.get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
                ((!vals.is_empty()).then(|| vals.join(&b","[..])), *terminal)
            }
            HashPolicy::Cookie { name, terminal, .. } => (cookie(headers, name).map(|c| c.into_bytes()), *terminal),
            HashPolicy::SourceIp { terminal } => (source_ip.map(|ip| ip.to_string().into_bytes()), *terminal),
            HashPolicy::QueryParameter { name, terminal } => {
                let (_, q) = split_path(path_and_query);
                let v = q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k) == *name).then(|| percent_decode(v))
                });
                (v.map(String::into_bytes), *terminal)
            }
        };
        if let Some(v) = value {
            let h = weft_lb::hash_bytes(&v);
            acc = Some(match acc {
                None => h,
                Some(a) => a.rotate_left(1) ^ h,
            });
            if terminal {
                break;
            }
        }
    }
    acc
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_string())
        },
    )
}

#[cfg(test)]
mod tests;
