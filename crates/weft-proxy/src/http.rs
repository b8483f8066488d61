//! The HTTP request path, in named phases: `early_request` (validation, hop-by-hop headers,
//! request id), `route`, `fault`, `upstream_request` (cluster, balancer, pool, retries,
//! timeouts), `response` (headers, flags) and `logging` (when the response body ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use rand::Rng;
use weft_config::{
    AbortStatus, ClusterSpecifier, Forward, RetryPolicy, Route, RouteAction, UpstreamProtocol, VirtualHost,
};
use weft_route::{RequestView, RouteTable};

use crate::body::{self, ProxyBody, ReplayBody};
use crate::cluster::{ClusterRt, Conn, ConnectError, Host, Outcome};
use crate::flags::Flags;
use crate::record::{Record, TrackedBody};
use crate::snapshot::{HttpRt, Routes};
use crate::{worker, Shared};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-weft-attempt-count");
pub static X_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-weft-upstream-service-time");
pub static X_RESPONSE_FLAGS: HeaderName = HeaderName::from_static("x-weft-response-flags");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Per downstream connection: what every request on it shares.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub http: Arc<HttpRt>,
    pub peer: SocketAddr,
    /// The address the connection was accepted on.
    pub local: SocketAddr,
    /// The connection's destination (original destination when captured).
    pub destination: SocketAddr,
    /// HTTP/1 framing verdicts from the connection's read side (see h1guard).
    pub h1_verdicts: Option<Arc<crate::h1guard::Verdicts>>,
    /// Counts the connection as open while it, or a tunnel made from it, lives.
    pub(crate) _open: crate::listener::CxActive,
    /// The peer's IP address as an `x-forwarded-for` value.
    pub peer_ip: Option<HeaderValue>,
}

/// The service hyper calls for each request.
pub async fn serve(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let req = req.map(body::boxed);
    Ok(handle(&ctx, req, start).await)
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes().starts_with(b"application/grpc")).unwrap_or(false)
}

fn protocol_label(v: Version, grpc: bool) -> &'static str {
    if grpc {
        "grpc"
    } else if v == Version::HTTP_2 {
        "http2"
    } else {
        "http"
    }
}

async fn handle(ctx: &Arc<ConnCtx>, mut req: Request<ProxyBody>, start: Instant) -> Response<ProxyBody> {
    // ---- early_request ------------------------------------------------------------------------
    let grpc = is_grpc(req.headers());
    // Uri and HeaderValue clones share their bytes: the strings below cost no allocation.
    let uri = req.uri().clone();
    let host = req.headers().get(header::HOST).cloned();
    let authority: &str = match uri.authority() {
        Some(a) => a.as_str(),
        None => host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    let path: &str = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() => Some(id.clone()),
        _ if ctx.http.hcm.generate_request_id => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            Some(id)
        }
        _ => None,
    };
    let logs = ctx.shared.logs_requests();
    let mut rec = Record::new(
        start,
        req.method().clone(),
        if logs { authority } else { "" },
        if logs { path } else { "" },
        protocol_label(req.version(), grpc),
        request_id,
        ctx.peer,
        ctx.http.reporter,
    );
    if logs {
        rec.user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    }

    if req.version() != Version::HTTP_2 {
        if let Some(v) = &ctx.h1_verdicts {
            if v.next_request_conflicts() {
                return local_reply(
                    ctx,
                    rec,
                    StatusCode::BAD_REQUEST,
                    Flags::DOWNSTREAM_PROTOCOL_ERROR,
                    "both Content-Length and Transfer-Encoding",
                    false,
                    true,
                );
            }
        }
    }
    if req.version() == Version::HTTP_11 && authority.is_empty() {
        return local_reply(
            ctx,
            rec,
            StatusCode::BAD_REQUEST,
            Flags::DOWNSTREAM_PROTOCOL_ERROR,
            "missing Host header",
            grpc,
            true,
        );
    }
    // RFC 9112 §3.2: more than one Host is a 400 (proxies and upstreams could pick different ones).
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return local_reply(
            ctx,
            rec,
            StatusCode::BAD_REQUEST,
            Flags::DOWNSTREAM_PROTOCOL_ERROR,
            "more than one Host header",
            grpc,
            true,
        );
    }
    // Forward-proxy requests name their destination in the request target: absolute-form
    // (HTTP/1 `GET http://host:port/path`) or CONNECT. HTTP/2 requests always carry a scheme and
    // authority, so only their method says.
    let connect = req.method() == Method::CONNECT;
    let proxy_form = connect || (req.version() < Version::HTTP_2 && uri.scheme().is_some());
    if proxy_form {
        if let Err(msg) = check_proxy_target(&uri, connect, authority) {
            return local_reply(ctx, rec, StatusCode::BAD_REQUEST, Flags::DOWNSTREAM_PROTOCOL_ERROR, msg, grpc, true);
        }
    }
    if connect && !ctx.http.hcm.connect {
        return local_reply(ctx, rec, StatusCode::NOT_FOUND, Flags::NO_ROUTE_FOUND, "no route", false, true);
    }
    if ctx.shared.draining.load(Relaxed) || connect {
        // A CONNECT that is not tunnelled ends its connection: the client may already be
        // sending bytes meant for the tunnel.
        rec.close_connection = true;
    }
    let upgrade = websocket_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut(), grpc);

    // ---- route --------------------------------------------------------------------------------
    let table = match &ctx.http.routes {
        Routes::Inline(t) => Some(t.clone()),
        Routes::Named(n) => ctx.shared.snapshot.load().routes.get(n).cloned(),
    };
    let Some(table) = table else {
        return local_reply(ctx, rec, StatusCode::NOT_FOUND, Flags::NO_ROUTE_FOUND, "no route", grpc, false);
    };
    let view = RequestView {
        authority,
        path,
        method: req.method().as_str(),
        headers: req.headers(),
        is_grpc: grpc,
        // A forward-proxy request's authority is matched only as sent (as Envoy does).
        port: if proxy_form { 0 } else { ctx.destination.port() },
        exact_authority: proxy_form,
    };
    let Some(sel) = table.select(&view) else {
        return local_reply(ctx, rec, StatusCode::NOT_FOUND, Flags::NO_ROUTE_FOUND, "no route", grpc, false);
    };
    let (vhost_i, route_i) = (sel.vhost_index, sel.route_index);
    let vhost = &table.config().virtual_hosts[vhost_i];
    let route = &vhost.routes[route_i];
    if logs {
        rec.route = route.name.clone();
    }

    // ---- fault --------------------------------------------------------------------------------
    if let Some(f) = &route.fault {
        if let Some(d) = &f.delay {
            if roll(d.fraction_per_million) {
                rec.flags.insert(Flags::DELAY_INJECTED);
                tokio::time::sleep(d.fixed).await;
            }
        }
        if let Some(a) = &f.abort {
            if roll(a.fraction_per_million) {
                return match a.status {
                    AbortStatus::Http(s) => local_reply(
                        ctx,
                        rec,
                        StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        Flags::FAULT_INJECTED,
                        "fault filter abort",
                        false,
                        false,
                    ),
                    AbortStatus::Grpc(code) => grpc_reply(ctx, rec, code, "fault filter abort", Flags::FAULT_INJECTED),
                };
            }
        }
    }

    match &route.action {
        RouteAction::Direct(d) => {
            let mut resp = Response::new(body::full(d.body.clone()));
            *resp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
            if !d.body.is_empty() {
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            finish_response(ctx, &table, vhost, route, None, &mut resp, &rec);
            rec.status = resp.status().as_u16();
            TrackedBody::wrap(resp, rec, ctx.shared.clone(), None)
        }
        RouteAction::Redirect(r) => {
            let scheme = ctx.http.hcm.forwarded_proto.as_str();
            let loc = weft_route::redirect_location(r, scheme, authority, path, &route.matcher.path);
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&loc) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            finish_response(ctx, &table, vhost, route, None, &mut resp, &rec);
            rec.status = resp.status().as_u16();
            TrackedBody::wrap(resp, rec, ctx.shared.clone(), None)
        }
        RouteAction::Forward(fw) => {
            let kind = if connect {
                Upgrade::Connect
            } else if upgrade {
                Upgrade::WebSocket
            } else {
                Upgrade::None
            };
            forward(ctx, req, rec, &table, vhost, route, fw, kind, grpc, authority, path).await
        }
    }
}

/// What a request asks to become besides a request/response exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    WebSocket,
    /// CONNECT: a TCP tunnel to the route's cluster.
    Connect,
}

/// The request target of a forward-proxy request: `http://host[:port]/...` without user info,
/// or for CONNECT `host:port`. Anything else is a 400 (and the connection closes).
fn check_proxy_target(uri: &Uri, connect: bool, authority: &str) -> Result<(), &'static str> {
    if authority.contains('@') {
        return Err("user info in the request target is not allowed");
    }
    if connect {
        let a: http::uri::Authority = authority.parse().map_err(|_| "CONNECT needs host:port")?;
        if a.host().is_empty() || !matches!(a.port_u16(), Some(p) if p != 0) {
            return Err("CONNECT needs host:port");
        }
        return Ok(());
    }
    if uri.scheme_str() != Some("http") {
        return Err("only http:// request targets are forwarded (use CONNECT for others)");
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => Ok(()),
        _ => Err("the request target has no host"),
    }
}

/// Hosts chosen by the request rather than the balancer: the original destination
/// (ORIGINAL_DST), or the authority's addresses (dynamic forward proxy). None: the balancer picks.
async fn request_hosts(
    ctx: &ConnCtx,
    cluster: &ClusterRt,
    authority: &str,
) -> Result<Option<Vec<Arc<Host>>>, AttemptFail> {
    let hosts = if cluster.is_original_dst() {
        vec![cluster.original_dst_host(ctx.destination)]
    } else if cluster.is_forward_proxy() {
        let bad_authority = AttemptFail {
            status: StatusCode::BAD_REQUEST,
            flags: Flags::DOWNSTREAM_PROTOCOL_ERROR,
            msg: "invalid authority",
            grpc_code: Some(13),
        };
        let Ok(a) = authority.parse::<http::uri::Authority>() else { return Err(bad_authority) };
        match cluster.forward_proxy_hosts(a.host(), a.port_u16().unwrap_or(80)).await {
            Ok(h) => h,
            Err(crate::cluster::ResolveError::InvalidHost(_)) => return Err(bad_authority),
            Err(e) => {
                tracing::debug!(cluster = %cluster.cfg.name, error = %e, "forward proxy: no address");
                return Err(AttemptFail {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    flags: Flags::DNS_RESOLUTION_FAILED,
                    msg: "DNS resolution failure",
                    grpc_code: Some(14),
                });
            }
        }
    } else {
        return Ok(None);
    };
    // A destination that is this very listener would loop through the proxy until some limit
    // broke it (a forward-proxy request for the proxy's own address, or an original
    // destination that could not be read).
    let hosts: Vec<Arc<Host>> = hosts.into_iter().filter(|h| h.addr != ctx.local).collect();
    if hosts.is_empty() {
        return Err(AttemptFail {
            status: StatusCode::FORBIDDEN,
            flags: Flags::DOWNSTREAM_PROTOCOL_ERROR,
            msg: "the destination is this proxy's own listener",
            grpc_code: Some(7),
        });
    }
    Ok(Some(hosts))
}

/// The next host for an attempt: from the request's own hosts (not yet tried first), else the
/// balancer's pick.
fn next_host(
    cluster: &ClusterRt,
    fixed: Option<&[Arc<Host>]>,
    hash: Option<u64>,
    tried: &[SocketAddr],
) -> Option<Arc<Host>> {
    match fixed {
        Some(hs) => hs.iter().find(|h| !tried.contains(&h.addr)).or_else(|| hs.first()).cloned(),
        None => cluster.pick(hash, tried),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &Arc<ConnCtx>,
    mut req: Request<ProxyBody>,
    mut rec: Record,
    table: &Arc<RouteTable>,
    vhost: &VirtualHost,
    route: &Route,
    fw: &Forward,
    upgrade: Upgrade,
    grpc: bool,
    authority: &str,
    path: &str,
) -> Response<ProxyBody> {
    // ---- cluster ------------------------------------------------------------------------------
    let (cluster_name, wc) = match &fw.cluster {
        ClusterSpecifier::Single(n) => (n.as_str(), None),
        ClusterSpecifier::Weighted(ws) => {
            let total = weft_route::total_weight(ws);
            let r = worker::with_rng(|rng| rng.gen_range(0..total.max(1)));
            let w = weft_route::pick_weighted(ws, r);
            (w.name.as_str(), Some(w))
        }
    };
    let Some(cluster) = ctx.shared.snapshot.load().clusters.get(cluster_name).cloned() else {
        return local_reply(
            ctx,
            rec,
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::NO_CLUSTER_FOUND,
            "cluster not found",
            grpc,
            false,
        );
    };
    rec.cluster = Some(cluster.clone());

    // ---- upstream request headers -------------------------------------------------------------
    let headers = req.headers_mut();
    let rc = table.config();
    // Envoy's order: the most specific level first, so the route config has the last word.
    if let Some(w) = wc {
        weft_route::apply_header_ops(headers, &w.request_headers);
    }
    weft_route::apply_header_ops(headers, &route.request_headers);
    weft_route::apply_header_ops(headers, &vhost.request_headers);
    weft_route::apply_header_ops(headers, &rc.request_headers);
    if ctx.http.hcm.use_remote_address {
        // The peer's address and the scheme are formatted once per connection and listener.
        let v = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => HeaderValue::from_str(&format!("{prev}, {}", ctx.peer.ip())).ok(),
            _ => ctx.peer_ip.clone(),
        };
        if let Some(v) = v {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if let Some(v) = &ctx.http.forwarded_proto {
            headers.insert(X_FORWARDED_PROTO.clone(), v.clone());
        }
    }
    // The proxy answers 100-continue itself (hyper does when the body is first read).
    headers.remove(header::EXPECT);
    let new_path: std::borrow::Cow<str> = match weft_route::rewrite_path(fw, &route.matcher.path, path) {
        Some(p) => p.into(),
        None => path.into(),
    };
    // A weighted cluster's own rewrite wins over the route's, as in Envoy.
    let new_authority: &str =
        wc.and_then(|w| w.host_rewrite.as_deref()).or(fw.host_rewrite.as_deref()).unwrap_or(authority);

    let hash = if fw.hash_policy.is_empty() {
        None
    } else {
        weft_route::request_hash(&fw.hash_policy, req.headers(), path, Some(ctx.peer.ip()))
    };

    // ---- circuit breaker: max requests -------------------------------------------------------
    let cb = &cluster.cfg.circuit_breakers;
    if cluster.stats.rq_active.load(Relaxed) >= cb.max_requests {
        cluster.stats.rq_overflow.fetch_add(1, Relaxed);
        return local_reply(
            ctx,
            rec,
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::UPSTREAM_OVERFLOW,
            "upstream overflow",
            grpc,
            false,
        );
    }
    let fixed = match request_hosts(ctx, &cluster, authority).await {
        Ok(f) => f,
        Err(f) => return local_reply(ctx, rec, f.status, f.flags, f.msg, grpc, upgrade == Upgrade::Connect),
    };
    rec.track_active(&cluster);

    let retry: Option<&RetryPolicy> = fw.retry.as_ref().or(vhost.retry.as_ref());
    match upgrade {
        Upgrade::Connect => {
            let idle = fw.idle_timeout.or(ctx.http.hcm.stream_idle_timeout).unwrap_or(Duration::from_secs(24 * 3600));
            return tunnel(ctx, req, rec, &cluster, fixed.as_deref(), hash, retry, idle).await;
        }
        Upgrade::WebSocket if ctx.http.hcm.websocket => {
            return websocket(ctx, req, rec, &cluster, fixed.as_deref(), hash, &new_path, new_authority, fw.timeout)
                .await;
        }
        _ => {}
    }

    let version = req.version();
    let use_h2 = match cluster.cfg.protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::SameAsDownstream => version == Version::HTTP_2,
    };

    // ---- timeouts -----------------------------------------------------------------------------
    let mut overall = fw.timeout;
    if grpc {
        if let Some(t) = req.headers().get(&GRPC_TIMEOUT).and_then(|v| parse_grpc_timeout(v.as_bytes())) {
            let t = match fw.max_grpc_timeout {
                Some(max) => t.min(max),
                None => t,
            };
            overall = Some(t);
        }
    }
    let (mut parts, body) = req.into_parts();
    // Stream idle timeout (route `idle_timeout`, else the connection manager's): a client that
    // stops sending its body, or an upstream that stops sending its response, is cut off.
    let idle = fw.idle_timeout.or(ctx.http.hcm.stream_idle_timeout);
    let body = match idle {
        Some(d) if !body.is_end_stream() => body::boxed(body::IdleTimeout::new(body, d)),
        _ => body,
    };
    let limit = ctx.http.hcm.limits.max_buffered_body_bytes;
    // When no retry or mirror needs the body again, it goes upstream untouched.
    let (replay, plain_body) = if retry.is_some() || !fw.mirrors.is_empty() {
        (Some(ReplayBody::new(body, limit)), None)
    } else {
        (None, Some(body))
    };
    // Count request bytes for logs and metrics (replayed bodies count themselves).
    rec.rx_bytes = replay.as_ref().map(|r| r.received_counter());
    let mut plain_failed = None;
    let plain_body = plain_body.map(|b| {
        if b.is_end_stream() {
            return b;
        }
        let (counted, counter) = body::Counted::new(b);
        rec.rx_bytes = Some(counter);
        let (watched, failed) = body::WatchErrors::new(body::boxed(counted));
        plain_failed = Some(failed);
        body::boxed(watched)
    });

    let attempt_loop = attempts(
        &cluster,
        fixed.as_deref(),
        &mut parts,
        replay.as_ref(),
        plain_body,
        plain_failed.as_deref(),
        retry,
        hash,
        use_h2,
        &new_path,
        new_authority,
        &mut rec,
    );
    let result = match overall {
        Some(t) => match tokio::time::timeout(t, attempt_loop).await {
            Ok(r) => r,
            Err(_) => {
                cluster.stats.rq_timeout.fetch_add(1, Relaxed);
                Err(AttemptFail {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    flags: Flags::UPSTREAM_REQUEST_TIMEOUT,
                    msg: "upstream request timeout",
                    grpc_code: if grpc { Some(4) } else { None },
                })
            }
        },
        None => attempt_loop.await,
    };

    // ---- response -----------------------------------------------------------------------------
    match result {
        Err(f) => {
            rec.flags.insert(f.flags);
            match (grpc, f.grpc_code) {
                (true, Some(code)) => grpc_reply(ctx, rec, code, f.msg, Flags::EMPTY),
                _ => local_reply(ctx, rec, f.status, Flags::EMPTY, f.msg, grpc, false),
            }
        }
        Ok(up) => {
            let mut resp = up.response;
            strip_hop_by_hop(resp.headers_mut(), grpc);
            let ust = up.upstream_time.as_millis().to_string();
            if let Ok(v) = HeaderValue::from_str(&ust) {
                resp.headers_mut().insert(X_UPSTREAM_SERVICE_TIME.clone(), v);
            }
            finish_response(ctx, table, vhost, route, wc.map(|w| &w.response_headers), &mut resp, &rec);
            rec.status = resp.status().as_u16();
            if grpc {
                rec.grpc_status =
                    resp.headers().get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
            }
            rec.upstream = Some(up.host.addr);
            // ---- mirror (after the primary answered, so it never slows the caller) ----------
            for m in &fw.mirrors {
                if roll(m.fraction_per_million) {
                    if let Some(c) = ctx.shared.snapshot.load().clusters.get(&m.cluster).cloned() {
                        spawn_mirror(c, &parts, replay.as_ref(), &new_path, new_authority, use_h2);
                    }
                }
            }
            TrackedBody::wrap_idle(
                resp,
                rec,
                ctx.shared.clone(),
                Some(crate::record::Upstream { cluster, host: up.host, _active: up.active }),
                idle,
            )
        }
    }
}

pub struct AttemptFail {
    pub status: StatusCode,
    pub flags: Flags,
    pub msg: &'static str,
    pub grpc_code: Option<u32>,
}

pub struct Upstream {
    pub response: Response<ProxyBody>,
    pub host: Arc<Host>,
    pub upstream_time: Duration,
    /// Keeps the host's in-flight count (least-request) until the response ends.
    pub active: ActiveGuard,
}

/// An attempt that produced no response.
struct AttemptError {
    fail: AttemptFail,
    outcome: Outcome,
    kind: RetryKind,
}

impl AttemptError {
    /// The client's request body broke (malformed chunk, reset): a 400, never retried, and not
    /// held against the upstream host.
    fn client_body_failed() -> AttemptError {
        AttemptError {
            fail: AttemptFail {
                status: StatusCode::BAD_REQUEST,
                flags: Flags::DOWNSTREAM_PROTOCOL_ERROR,
                msg: "invalid request body",
                grpc_code: Some(13),
            },
            outcome: Outcome::Downstream,
            kind: RetryKind::Never,
        }
    }
}

impl AttemptError {
    /// A circuit breaker refused the attempt: 503 UO, never retried, not the host's fault.
    fn overflow() -> AttemptError {
        AttemptError {
            fail: AttemptFail {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: Flags::UPSTREAM_OVERFLOW,
                msg: "upstream overflow",
                grpc_code: Some(14),
            },
            outcome: Outcome::LocalOverflow,
            kind: RetryKind::Never,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RetryKind {
    ConnectFailure,
    Reset,
    RefusedStream,
    Timeout,
    /// Not retriable whatever the policy says (e.g. circuit breaker overflow).
    Never,
}

fn retry_on_error(policy: &RetryPolicy, kind: RetryKind) -> bool {
    let on = &policy.retry_on;
    match kind {
        RetryKind::ConnectFailure => on.connect_failure || on.status_5xx || on.gateway_error || on.reset,
        RetryKind::Reset => on.reset || on.status_5xx || on.gateway_error,
        RetryKind::RefusedStream => on.refused_stream || on.reset || on.status_5xx,
        RetryKind::Timeout => on.status_5xx || on.gateway_error || on.reset,
        RetryKind::Never => false,
    }
}

/// Whether a response the upstream sent should be retried under `policy`.
fn retry_on_response(policy: &RetryPolicy, r: &Response<ProxyBody>) -> bool {
    let on = &policy.retry_on;
    let s = r.status().as_u16();
    let grpc = r.headers().get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u32>().ok());
    (on.status_5xx && s >= 500)
        || (on.gateway_error && matches!(s, 502..=504))
        || (on.retriable_4xx && s == 409)
        || (on.retriable_status_codes && policy.retriable_status_codes.contains(&s))
        || grpc.map(|c| on.grpc_status_retriable(c)).unwrap_or(false)
        || (on.retriable_headers && policy.retriable_headers.iter().any(|m| header_matches(m, r.headers())))
}

fn header_matches(m: &weft_config::HeaderMatcher, headers: &HeaderMap) -> bool {
    use weft_config::HeaderRule;
    let v = headers.get(m.name.as_str()).and_then(|v| v.to_str().ok());
    let hit = match &m.rule {
        HeaderRule::Present(p) => v.is_some() == *p,
        HeaderRule::Value(sm) => v.map(|v| sm.matches(v)).unwrap_or(false),
    };
    hit != m.invert
}

#[allow(clippy::too_many_arguments)]
async fn attempts(
    cluster: &Arc<ClusterRt>,
    fixed: Option<&[Arc<Host>]>,
    parts: &mut http::request::Parts,
    replay: Option<&ReplayBody>,
    mut plain_body: Option<ProxyBody>,
    plain_failed: Option<&std::sync::atomic::AtomicBool>,
    retry: Option<&RetryPolicy>,
    hash: Option<u64>,
    use_h2: bool,
    path: &str,
    authority: &str,
    rec: &mut Record,
) -> Result<Upstream, AttemptFail> {
    let max_retries = retry.map(|r| r.num_retries).unwrap_or(0);
    let per_try = retry.and_then(|r| r.per_try_timeout);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    let mut retry_guard: Option<RetryGuard> = None;
    loop {
        attempt += 1;
        rec.attempts = attempt;
        let Some(host) = next_host(cluster, fixed, hash, &tried) else {
            return Err(AttemptFail {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: Flags::NO_HEALTHY_UPSTREAM,
                msg: "no healthy upstream",
                grpc_code: Some(14),
            });
        };
        let body = match replay {
            Some(r) => r.next_attempt().map(body::boxed),
            None => plain_body.take(),
        };
        let Some(body) = body else {
            // The body streamed past the replay buffer: this request cannot be sent again.
            rec.flags.insert(Flags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
            return Err(AttemptFail {
                status: StatusCode::SERVICE_UNAVAILABLE,
                flags: Flags::EMPTY,
                msg: "request body too large to retry",
                grpc_code: Some(14),
            });
        };
        // Without a possible second attempt (or mirror) the headers may be moved.
        let try_fut = try_once(cluster, &host, parts, replay.is_some(), body, use_h2, path, authority, attempt);
        let result = match per_try {
            Some(t) => match tokio::time::timeout(t, try_fut).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError {
                    fail: AttemptFail {
                        status: StatusCode::GATEWAY_TIMEOUT,
                        flags: Flags::UPSTREAM_REQUEST_TIMEOUT,
                        msg: "upstream per-try timeout",
                        grpc_code: Some(4),
                    },
                    outcome: Outcome::Timeout,
                    kind: RetryKind::Timeout,
                }),
            },
            None => try_fut.await,
        };
        let (wants_retry, response, fail) = match result {
            Ok(up) => {
                cluster.report(&up.host, Outcome::Status(up.response.status().as_u16()));
                let wants = retry.map(|p| retry_on_response(p, &up.response)).unwrap_or(false);
                if !wants {
                    if attempt > 1 {
                        cluster.stats.rq_retry_success.fetch_add(1, Relaxed);
                    }
                    return Ok(up);
                }
                (true, Some(up), None)
            }
            Err(e) => {
                // A broken client body fails the attempt too; that says nothing about the host.
                let client_body_failed = replay.map(|r| r.failed()).unwrap_or(false)
                    || plain_failed.map(|f| f.load(Relaxed)).unwrap_or(false);
                let e = if client_body_failed { AttemptError::client_body_failed() } else { e };
                cluster.report(&host, e.outcome);
                let wants = retry.map(|p| retry_on_error(p, e.kind)).unwrap_or(false);
                (wants, None, Some(e.fail))
            }
        };
        let give_up = |rec: &mut Record, flag: Option<Flags>| {
            if let Some(f) = flag {
                rec.flags.insert(f);
            }
            match response {
                Some(up) => Ok(up),
                None => Err(fail.unwrap_or(AttemptFail {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    flags: Flags::EMPTY,
                    msg: "upstream failure",
                    grpc_code: Some(14),
                })),
            }
        };
        let replayable = replay.map(|r| r.can_replay()).unwrap_or(false);
        if !wants_retry || !replayable {
            return give_up(rec, None);
        }
        if attempt > max_retries {
            return give_up(rec, Some(Flags::UPSTREAM_RETRY_LIMIT_EXCEEDED));
        }
        // Retry budget / max retries: a slow upstream cannot turn into a retry storm.
        if retry_guard.is_none() {
            match RetryGuard::acquire(cluster) {
                Some(g) => retry_guard = Some(g),
                None => {
                    cluster.stats.rq_retry_overflow.fetch_add(1, Relaxed);
                    return give_up(rec, Some(Flags::UPSTREAM_RETRY_LIMIT_EXCEEDED));
                }
            }
        }
        drop(give_up);
        // Remembered only when there is a next attempt to steer away from it.
        tried.push(host.addr);
        cluster.stats.rq_retry.fetch_add(1, Relaxed);
        if let Some(p) = retry {
            tokio::time::sleep(backoff(p, attempt)).await;
        }
    }
}

/// Counts a request that is retrying against the cluster's retry limit or budget.
struct RetryGuard(Arc<ClusterRt>);

impl RetryGuard {
    fn acquire(c: &Arc<ClusterRt>) -> Option<RetryGuard> {
        let cb = &c.cfg.circuit_breakers;
        let active = c.stats.retries_active.load(Relaxed);
        let limit = match cb.retry_budget_percent {
            Some(pct) => {
                let budget = (c.stats.rq_active.load(Relaxed) as f64 * pct / 100.0) as u32;
                budget.max(cb.retry_budget_min_concurrency)
            }
            None => cb.max_retries,
        };
        if active >= limit {
            return None;
        }
        c.stats.retries_active.fetch_add(1, Relaxed);
        Some(RetryGuard(c.clone()))
    }
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.stats.retries_active.fetch_sub(1, Relaxed);
    }
}

/// Keeps a host's in-flight request count (least-request balancing).
pub struct ActiveGuard(Arc<Host>);

impl ActiveGuard {
    fn new(h: Arc<Host>) -> ActiveGuard {
        h.active_requests.fetch_add(1, Relaxed);
        ActiveGuard(h)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Relaxed);
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(base × 2^(n-1), max)].
pub fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let exp = p.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(p.backoff_max).as_micros() as u64;
    if cap == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(worker::with_rng(|r| r.gen_range(0..=cap)))
}

#[allow(clippy::too_many_arguments)]
async fn try_once(
    cluster: &Arc<ClusterRt>,
    host: &Arc<Host>,
    parts: &mut http::request::Parts,
    keep_headers: bool,
    body: ProxyBody,
    use_h2: bool,
    path: &str,
    authority: &str,
    attempt: u32,
) -> Result<Upstream, AttemptError> {
    let started = Instant::now();
    host.rq_total.fetch_add(1, Relaxed);
    cluster.stats.rq_total.fetch_add(1, Relaxed);
    let cb = &cluster.cfg.circuit_breakers;
    if cluster.stats.rq_pending_active.load(Relaxed) >= cb.max_pending_requests {
        cluster.stats.rq_overflow.fetch_add(1, Relaxed);
        return Err(AttemptError::overflow());
    }
    // A guard, so an attempt abandoned while it waits (per-try timeout, client gone) still
    // gives its pending slot back.
    let pending = crate::cluster::PendingGuard::new(&cluster.stats);
    let conn = cluster.connection(host, use_h2).await;
    drop(pending);
    let conn = match conn {
        Ok(c) => c,
        Err(ConnectError::Overflow) => return Err(AttemptError::overflow()),
        Err(e) => {
            tracing::debug!(cluster = %cluster.cfg.name, upstream = %host.addr, error = %e, "upstream connect failed");
            host.rq_error.fetch_add(1, Relaxed);
            return Err(AttemptError {
                fail: AttemptFail {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    flags: Flags::UPSTREAM_CONNECTION_FAILURE,
                    msg: "upstream connect error",
                    grpc_code: Some(14),
                },
                outcome: Outcome::ConnectFailure,
                kind: RetryKind::ConnectFailure,
            });
        }
    };
    let active = ActiveGuard::new(host.clone());
    let h2 = match conn {
        Conn::H1(conn) => {
            // The client's origin-form target when the path is unchanged.
            let target = match parts.uri.path_and_query() {
                Some(p) if parts.uri.authority().is_none() && p.as_str() == path => p.as_str(),
                _ => path,
            };
            // The head is written from the client's header map as it is: the attempt count and
            // a rewritten Host go in as they are written.
            let host_field = match parts.headers.get(header::HOST) {
                Some(h) if h.as_bytes() == authority.as_bytes() => None,
                _ => Some(authority),
            };
            let mut count = [0u8; 10];
            let count = decimal(attempt, &mut count);
            let head = crate::h1client::Head {
                method: &parts.method,
                target,
                host: host_field,
                headers: &parts.headers,
                extra: &[(&X_ATTEMPT_COUNT, count)],
            };
            let pool = crate::h1client::PoolReturn { cluster: cluster.clone(), host: host.clone() };
            return match crate::h1client::send(conn, head, body, Some(pool)).await {
                Ok(resp) => Ok(Upstream {
                    response: resp.map(body::boxed),
                    host: host.clone(),
                    upstream_time: started.elapsed(),
                    active,
                }),
                Err(e) => {
                    host.rq_error.fetch_add(1, Relaxed);
                    tracing::debug!(cluster = %cluster.cfg.name, upstream = %host.addr, error = %e, "upstream request failed");
                    Err(upstream_failure(e.is_protocol(), RetryKind::Reset))
                }
            };
        }
        Conn::H2(tx) => tx,
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = if keep_headers { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
    req.headers_mut().insert(X_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = Uri::try_from(format!("http://{authority}{path}")).unwrap_or_else(|_| Uri::from_static("/"));
    req.headers_mut().remove(header::HOST);
    let mut tx = h2;
    match tx.send_request(req).await {
        Ok(resp) => Ok(Upstream {
            response: resp.map(body::boxed),
            host: host.clone(),
            upstream_time: started.elapsed(),
            active,
        }),
        Err(e) => {
            host.rq_error.fetch_add(1, Relaxed);
            tracing::debug!(cluster = %cluster.cfg.name, upstream = %host.addr, error = %e, "upstream request failed");
            let kind = if is_refused_stream(&e) { RetryKind::RefusedStream } else { RetryKind::Reset };
            Err(upstream_failure(e.is_parse() || e.is_parse_status(), kind))
        }
    }
}

/// `n` in decimal, in `buf`.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// An attempt that reached the upstream but got no usable response head.
fn upstream_failure(protocol_error: bool, kind: RetryKind) -> AttemptError {
    let (flags, msg, status) = if protocol_error {
        (Flags::UPSTREAM_PROTOCOL_ERROR, "upstream sent an invalid response", StatusCode::BAD_GATEWAY)
    } else {
        (
            Flags::UPSTREAM_RESET,
            "upstream connect error or disconnect/reset before headers",
            StatusCode::SERVICE_UNAVAILABLE,
        )
    };
    AttemptError { fail: AttemptFail { status, flags, msg, grpc_code: Some(14) }, outcome: Outcome::Reset, kind }
}

fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        src = s.source();
    }
    false
}

/// `host-shadow[:port]`, as Envoy names mirrored requests (IPv6 literals keep their brackets).
pub fn shadow_authority(authority: &str) -> String {
    let port_at = match authority.rfind(':') {
        Some(i)
            if !authority[i..].contains(']') && (authority.starts_with('[') || authority[..i].find(':').is_none()) =>
        {
            Some(i)
        }
        _ => None,
    };
    match port_at {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

/// Fire-and-forget copy of a request to a mirror cluster, with the `-shadow` authority suffix.
fn spawn_mirror(
    cluster: Arc<ClusterRt>,
    parts: &http::request::Parts,
    replay: Option<&ReplayBody>,
    path: &str,
    authority: &str,
    use_h2: bool,
) {
    let body = match replay {
        Some(r) => match r.complete_copy() {
            Some(b) => body::boxed(b),
            None => return,
        },
        None => body::empty(),
    };
    let mut parts2 = http::Request::new(()).into_parts().0;
    parts2.method = parts.method.clone();
    parts2.headers = parts.headers.clone();
    let shadow = shadow_authority(authority);
    let path = path.to_string();
    tokio::spawn(async move {
        let Some(host) = cluster.pick(None, &[]) else { return };
        let fut = try_once(&cluster, &host, &mut parts2, false, body, use_h2, &path, &shadow, 1);
        if let Ok(Ok(up)) = tokio::time::timeout(Duration::from_secs(30), fut).await {
            let (_, b) = up.response.into_parts();
            // A mirror's connection goes back to the pool like any other once its answer is read.
            let _ = tokio::time::timeout(Duration::from_secs(30), http_body_util::BodyExt::collect(b)).await;
        }
    });
}

// ---- websocket ------------------------------------------------------------------------------

fn websocket_upgrade(h: &HeaderMap) -> bool {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false));
    let ws = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("websocket"))
        .unwrap_or(false);
    conn_upgrade && ws
}

#[allow(clippy::too_many_arguments)]
async fn websocket(
    ctx: &Arc<ConnCtx>,
    mut req: Request<ProxyBody>,
    mut rec: Record,
    cluster: &Arc<ClusterRt>,
    fixed: Option<&[Arc<Host>]>,
    hash: Option<u64>,
    path: &str,
    authority: &str,
    route_timeout: Option<Duration>,
) -> Response<ProxyBody> {
    let Some(host) = next_host(cluster, fixed, hash, &[]) else {
        return local_reply(
            ctx,
            rec,
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::NO_HEALTHY_UPSTREAM,
            "no healthy upstream",
            false,
            false,
        );
    };
    rec.upstream = Some(host.addr);
    let mut tx = match cluster.connect_upgradable(&host).await {
        Ok(tx) => tx,
        Err(ConnectError::Overflow) => {
            return local_reply(
                ctx,
                rec,
                StatusCode::SERVICE_UNAVAILABLE,
                Flags::UPSTREAM_OVERFLOW,
                "upstream overflow",
                false,
                false,
            )
        }
        Err(_) => {
            cluster.report(&host, Outcome::ConnectFailure);
            return local_reply(
                ctx,
                rec,
                StatusCode::SERVICE_UNAVAILABLE,
                Flags::UPSTREAM_CONNECTION_FAILURE,
                "upstream connect error",
                false,
                false,
            );
        }
    };
    let downstream_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let mut up = Request::new(body::empty());
    *up.method_mut() = parts.method.clone();
    *up.headers_mut() = parts.headers.clone();
    *up.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    let h = up.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    // The upgrade answer is bounded by the route timeout like any response head.
    let limit = route_timeout.unwrap_or(Duration::from_secs(15));
    let mut resp = match tokio::time::timeout(limit, tx.send_request(up)).await {
        Ok(Ok(r)) => r,
        Err(_) => {
            cluster.report(&host, Outcome::Timeout);
            return local_reply(
                ctx,
                rec,
                StatusCode::GATEWAY_TIMEOUT,
                Flags::UPSTREAM_REQUEST_TIMEOUT,
                "upstream request timeout",
                false,
                false,
            );
        }
        Ok(Err(_)) => {
            cluster.report(&host, Outcome::Reset);
            return local_reply(
                ctx,
                rec,
                StatusCode::SERVICE_UNAVAILABLE,
                Flags::UPSTREAM_RESET,
                "upstream reset",
                false,
                false,
            );
        }
    };
    cluster.report(&host, Outcome::Status(resp.status().as_u16()));
    rec.status = resp.status().as_u16();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return TrackedBody::wrap(resp.map(body::boxed), rec, ctx.shared.clone(), None);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let idle = ctx.http.hcm.stream_idle_timeout.unwrap_or(Duration::from_secs(300));
    let open = ctx.clone();
    tokio::spawn(async move {
        let _open = open;
        let (Ok(d), Ok(u)) = (downstream_upgrade.await, upstream_upgrade.await) else { return };
        let d = hyper_util::rt::TokioIo::new(d);
        let u = hyper_util::rt::TokioIo::new(u);
        let _ = crate::tcp::splice(d, u, idle).await;
    });
    let (parts, _) = resp.into_parts();
    let resp = Response::from_parts(parts, body::empty());
    TrackedBody::wrap(resp, rec, ctx.shared.clone(), None)
}

// ---- CONNECT ----------------------------------------------------------------------------------

/// CONNECT: connects to a host of the route's cluster (retrying connect failures when the
/// route's retry policy says so), answers 200 and splices the client's bytes with the upstream
/// connection until both sides close or nothing moves for `idle`. The request is logged and
/// counted when the tunnel ends, with the bytes each way.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    ctx: &Arc<ConnCtx>,
    mut req: Request<ProxyBody>,
    mut rec: Record,
    cluster: &Arc<ClusterRt>,
    fixed: Option<&[Arc<Host>]>,
    hash: Option<u64>,
    retry: Option<&RetryPolicy>,
    idle: Duration,
) -> Response<ProxyBody> {
    let retries = retry.filter(|p| retry_on_error(p, RetryKind::ConnectFailure)).map(|p| p.num_retries).unwrap_or(0);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut connected = None;
    for attempt in 1..=retries.saturating_add(1) {
        rec.attempts = attempt;
        let Some(host) = next_host(cluster, fixed, hash, &tried) else {
            return local_reply(
                ctx,
                rec,
                StatusCode::SERVICE_UNAVAILABLE,
                Flags::NO_HEALTHY_UPSTREAM,
                "no healthy upstream",
                false,
                true,
            );
        };
        tried.push(host.addr);
        host.rq_total.fetch_add(1, Relaxed);
        cluster.stats.rq_total.fetch_add(1, Relaxed);
        match cluster.connect_tcp(&host).await {
            Ok((up, guard)) => {
                connected = Some((host, up, guard));
                break;
            }
            Err(ConnectError::Overflow) => {
                return local_reply(
                    ctx,
                    rec,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Flags::UPSTREAM_OVERFLOW,
                    "upstream overflow",
                    false,
                    true,
                )
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster.cfg.name, upstream = %host.addr, error = %e, "CONNECT: upstream connect failed");
                host.rq_error.fetch_add(1, Relaxed);
                cluster.report(&host, Outcome::ConnectFailure);
                if attempt > 1 {
                    cluster.stats.rq_retry.fetch_add(1, Relaxed);
                }
            }
        }
    }
    let Some((host, up, guard)) = connected else {
        if retries > 0 {
            rec.flags.insert(Flags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        }
        return local_reply(
            ctx,
            rec,
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::UPSTREAM_CONNECTION_FAILURE,
            "upstream connect error",
            false,
            true,
        );
    };
    cluster.report(&host, Outcome::Status(200));
    rec.upstream = Some(host.addr);
    rec.status = 200;
    rec.close_connection = false;
    let downstream = hyper::upgrade::on(&mut req);
    let mut resp = Response::new(body::empty());
    finish_common(ctx, resp.headers_mut(), &rec);
    let active = ActiveGuard::new(host);
    let open = ctx.clone();
    tokio::spawn(async move {
        let _active = active;
        let _guard = guard;
        match downstream.await {
            Ok(d) => {
                let (to_upstream, to_client, end) = crate::tcp::splice(hyper_util::rt::TokioIo::new(d), up, idle).await;
                rec.bytes_sent = to_client;
                rec.rx_bytes = Some(Arc::new(std::sync::atomic::AtomicU64::new(to_upstream)));
                if let Err(e) = end {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        rec.flags.insert(Flags::STREAM_IDLE_TIMEOUT);
                    }
                    tracing::debug!(error = %e, "CONNECT tunnel ended");
                }
            }
            Err(_) => rec.flags.insert(Flags::DOWNSTREAM_CONNECTION_TERMINATION),
        }
        open.shared.finish_request(&rec);
    });
    resp
}

// ---- response helpers -------------------------------------------------------------------------

fn finish_response(
    ctx: &ConnCtx,
    table: &RouteTable,
    vhost: &VirtualHost,
    route: &Route,
    wc: Option<&weft_config::HeaderOps>,
    resp: &mut Response<ProxyBody>,
    rec: &Record,
) {
    let h = resp.headers_mut();
    if let Some(ops) = wc {
        weft_route::apply_header_ops(h, ops);
    }
    weft_route::apply_header_ops(h, &route.response_headers);
    weft_route::apply_header_ops(h, &vhost.response_headers);
    weft_route::apply_header_ops(h, &table.config().response_headers);
    finish_common(ctx, h, rec);
}

fn finish_common(ctx: &ConnCtx, h: &mut HeaderMap, rec: &Record) {
    if !rec.flags.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rec.flags.to_string()) {
            h.insert(X_RESPONSE_FLAGS.clone(), v);
        }
    }
    if rec.close_connection {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !h.contains_key(header::SERVER) {
        if let Some(v) = &ctx.http.server_name {
            h.insert(header::SERVER, v.clone());
        }
    }
}

/// A reply the proxy makes itself. gRPC callers get a gRPC status instead of an HTTP error.
fn local_reply(
    ctx: &ConnCtx,
    mut rec: Record,
    status: StatusCode,
    flags: Flags,
    msg: &str,
    grpc: bool,
    close: bool,
) -> Response<ProxyBody> {
    rec.flags.insert(flags);
    if grpc {
        return grpc_reply(ctx, rec, http_to_grpc(status.as_u16()), msg, Flags::EMPTY);
    }
    if close {
        rec.close_connection = true;
    }
    let mut resp = Response::new(body::full(Bytes::from(msg.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    finish_common(ctx, resp.headers_mut(), &rec);
    rec.status = status.as_u16();
    TrackedBody::wrap(resp, rec, ctx.shared.clone(), None)
}

/// A trailers-only gRPC reply: HTTP 200 with `grpc-status` and `grpc-message`.
fn grpc_reply(ctx: &ConnCtx, mut rec: Record, code: u32, msg: &str, flags: Flags) -> Response<ProxyBody> {
    rec.flags.insert(flags);
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(msg) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    finish_common(ctx, resp.headers_mut(), &rec);
    rec.status = 200;
    rec.grpc_status = Some(code as u16);
    TrackedBody::wrap(resp, rec, ctx.shared.clone(), None)
}

/// The mapping gRPC specifies for HTTP statuses of failed calls.
pub fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Parses `grpc-timeout` (`100m`, `5S`, ...: at most 8 digits and a unit).
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.iter().all(|d| d.is_ascii_digit()) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether `n` is a hop-by-hop field this proxy removes (besides those `Connection` names).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::TE
        || n == header::PROXY_AUTHENTICATE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    // Most messages carry none: one pass over the names is cheaper than a lookup per field.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    h.remove(header::CONNECTION);
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::UPGRADE);
    h.remove(header::PROXY_AUTHENTICATE);
    h.remove(header::PROXY_AUTHORIZATION);
    let te_trailers = h.get(header::TE).map(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")).unwrap_or(false);
    if !(keep_te_trailers && te_trailers) {
        h.remove(header::TE);
    }
}

fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && worker::with_rng(|r| r.gen_range(0..1_000_000u32)) < per_million)
}

/// A random UUIDv4 for `x-request-id`, formatted without allocating a `String`.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (a, b): (u64, u64) = worker::with_rng(|r| (r.gen(), r.gen()));
    // Version 4 in the 13th digit, the RFC 4122 variant in the 17th.
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_be_bytes());
    raw[8..].copy_from_slice(&b.to_be_bytes());
    let mut out = [b'-'; 36];
    let mut o = 0;
    for (i, byte) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            o += 1;
        }
        out[o] = HEX[usize::from(byte >> 4)];
        out[o + 1] = HEX[usize::from(byte & 0xf)];
        o += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_authorities() {
        for (a, want) in [
            ("reviews", "reviews-shadow"),
            ("reviews:9080", "reviews-shadow:9080"),
            ("[::1]:80", "[::1]-shadow:80"),
            ("[::1]", "[::1]-shadow"),
        ] {
            assert_eq!(shadow_authority(a), want, "{a}");
        }
    }

    #[test]
    fn grpc_timeouts_parse() {
        let table: &[(&str, Option<Duration>)] = &[
            ("100m", Some(Duration::from_millis(100))),
            ("5S", Some(Duration::from_secs(5))),
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("7u", Some(Duration::from_micros(7))),
            ("9n", Some(Duration::from_nanos(9))),
            ("m", None),
            ("123456789S", None),
            ("10x", None),
            ("-1S", None),
        ];
        for (s, want) in table {
            assert_eq!(parse_grpc_timeout(s.as_bytes()), *want, "{s}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut grpc = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut grpc, true);
        assert_eq!(grpc.get(header::TE).unwrap(), "trailers", "gRPC needs te: trailers");
    }

    #[test]
    fn a_message_without_hop_by_hop_fields_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("reviews"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.append("x-kept", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // One hop-by-hop field anywhere takes the full path.
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn http_errors_map_to_grpc_codes() {
        for (http, grpc) in
            [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (500, 2)]
        {
            assert_eq!(http_to_grpc(http), grpc, "{http}");
        }
    }

    #[test]
    fn backoff_stays_within_the_exponential_cap() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            ..Default::default()
        };
        for attempt in 1..10 {
            let cap = Duration::from_millis(25 * (1 << (attempt - 1))).min(Duration::from_millis(250));
            for _ in 0..200 {
                assert!(backoff(&p, attempt) <= cap);
            }
        }
    }

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = new_request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(id.matches('-').count(), 4);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "RFC 4122 variant: {id}");
        assert_ne!(id, new_request_id().to_str().unwrap());
    }
}
