//! Route matching for Weft, with Envoy's semantics: pick the virtual host by authority, then the
//! first route of that host whose match holds; plus the pure per-route helpers the proxy applies
//! afterwards (weighted cluster choice, path rewrites, redirect locations, header operations and
//! the load-balancing hash).
//!
//! Everything here is a pure function over immutable inputs: no I/O, no async, no locks. The
//! only work done per config change is [`RouteTable::new`]. Per request, selection allocates
//! nothing in the common case; it does only for an authority with upper-case letters (or over
//! 120 bytes), a matched header with several values or non-UTF-8 bytes, or a query parameter
//! that needs percent-decoding.
#![forbid(unsafe_code)]

use std::sync::Arc;

use http::HeaderMap;
use weft_config::{Route, RouteConfig, VirtualHost};

mod domains;
mod hashing;
mod headers;
mod matching;
mod rewrite;
mod uri;
mod weighted;

pub use hashing::request_hash;
pub use headers::apply_header_ops;
pub use matching::header_matches;
pub use rewrite::{redirect_location, rewrite_path};
pub use weighted::{pick_weighted, total_weight};

use domains::DomainIndex;
use matching::{route_matches, CompiledMatch, Target};

/// What the matcher looks at. Everything is borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `Host` or `:authority` as received; may carry a port.
    pub authority: &'a str,
    /// Path and query as received (the request target in origin form).
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    /// `content-type: application/grpc*`, for routes with `grpc: true`.
    pub is_grpc: bool,
    /// The listener's (or the original destination's) port, used to try `host:port` domains when
    /// the authority has no port. 0 means unknown.
    pub port: u16,
    /// Look the authority up only as sent, as Envoy does: no port is dropped and none added.
    /// For forward-proxy requests (absolute-form target, CONNECT), whose authority names the
    /// destination: `reviews:1234` must not reach the virtual host of `reviews`.
    pub exact_authority: bool,
}

/// The route chosen for a request, with its position in the config (for stats and logs).
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
    pub vhost_index: usize,
    pub route_index: usize,
}

/// A [`RouteConfig`] compiled for fast lookup. Built once per config change, off the hot path;
/// immutable afterwards, and `Send + Sync` so one table serves every worker.
pub struct RouteTable {
    cfg: Arc<RouteConfig>,
    domains: DomainIndex,
    /// Per virtual host, per route: the match's header sources, resolved ahead of time.
    /// Parallel to `cfg.virtual_hosts[i].routes`.
    compiled: Box<[Box<[CompiledMatch]>]>,
}

impl RouteTable {
    pub fn new(cfg: Arc<RouteConfig>) -> RouteTable {
        let domains = DomainIndex::new(cfg.virtual_hosts.iter().map(|vh| vh.domains.as_slice()));
        let compiled = cfg
            .virtual_hosts
            .iter()
            .map(|vh| vh.routes.iter().map(|r| CompiledMatch::new(&r.matcher)).collect())
            .collect();
        RouteTable { cfg, domains, compiled }
    }

    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// The index of the virtual host serving `authority`. Domains compare case-insensitively.
    /// Tiers, first hit wins:
    ///
    /// 1. exact domain: the authority as sent; then, if it carries a port, the host without it
    ///    (`reviews:9080` falls back to `reviews`), or, if it has none, the host with `port`
    ///    appended (`reviews` on listener port 9080 finds `reviews:9080`);
    /// 2. the longest suffix wildcard (`*.example.com`, `*-bar.example.com`), trying the same two
    ///    forms in the same order;
    /// 3. the longest prefix wildcard (`example.*`), likewise;
    /// 4. `*`.
    ///
    /// Envoy itself compares the authority verbatim unless `strip_matching_host_port` or
    /// `strip_any_host_port` is set; trying both forms is what those options give, and means
    /// a mesh config need not list every domain with and without its port. A wildcard never
    /// matches an empty label (`*.foo.com` does not match `.foo.com`). A trailing dot
    /// (`example.com.`) is not stripped, as in Envoy without `strip_trailing_host_dot`.
    pub fn select_vhost(&self, authority: &str, port: u16) -> Option<usize> {
        self.domains.find(authority, port, true)
    }

    /// The virtual host for the request's authority (with `exact_authority`, only the authority
    /// as sent is tried in each tier), then the first of its routes whose match holds (see the
    /// crate tests for the matcher table). A CONNECT request matches only routes with `connect`,
    /// and those match nothing else. None when no virtual host serves the authority or none of
    /// its routes match (Envoy answers 404 with `NR`).
    pub fn select<'a>(&'a self, req: &RequestView<'_>) -> Option<Selected<'a>> {
        let vhost_index = self.domains.find(req.authority, req.port, !req.exact_authority)?;
        let vhost = self.cfg.virtual_hosts.get(vhost_index)?;
        let compiled = self.compiled.get(vhost_index)?;
        let (path, query) = uri::split_target(req.path);
        let target = Target { path, query };
        let route_index =
            vhost.routes.iter().zip(compiled.iter()).position(|(r, c)| route_matches(&r.matcher, c, req, &target))?;
        let route = vhost.routes.get(route_index)?;
        Some(Selected { vhost, route, vhost_index, route_index })
    }
}

#[cfg(test)]
mod tests;
