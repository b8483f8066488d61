//! The proxy's validated, immutable configuration model.
//!
//! Every source of configuration (the static file, xDS) is converted into these types at the
//! edge; nothing inside the proxy sees a wire format. Values here are already checked: names are
//! unique, references resolve, regexes compile, durations are typed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// Labels (string key/value pairs), kept sorted so dumps and comparisons are stable.
pub type Labels = BTreeMap<String, String>;

/// A compiled regular expression that serializes as its source and compares by source.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    /// Compiles `src` anchored at both ends, as Envoy's `safe_regex` full-match semantics require.
    pub fn full(src: &str) -> Result<Self, regex::Error> {
        regex::RegexBuilder::new(&format!("^(?:{src})$")).size_limit(1 << 20).build().map(Pattern)
    }
    /// Compiles `src` unanchored (used for rewrites, which substitute every match).
    pub fn unanchored(src: &str) -> Result<Self, regex::Error> {
        regex::RegexBuilder::new(src).size_limit(1 << 20).build().map(Pattern)
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.0.as_str())
    }
}
impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// The proxy process: identity, ports it always serves, and the swappable traffic config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bootstrap {
    pub node: Node,
    pub admin: AdminConfig,
    pub access_log: AccessLog,
    /// The traffic configuration: what SIGHUP or xDS replaces.
    pub config: Arc<ProxyConfig>,
}

/// Who this proxy is. Source labels of metrics come from here (Istio's `source_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub namespace: String,
    pub workload: String,
    pub app: String,
    pub version: String,
    pub principal: String,
    pub mesh_id: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// Admin interface (`/ready`, `/stats`, `/config_dump`, ...). None disables it.
    pub address: Option<SocketAddr>,
    /// Istio-style health port serving `/healthz/ready`.
    pub health_address: Option<SocketAddr>,
    /// Istio-style metrics port serving `/stats/prometheus`.
    pub metrics_address: Option<SocketAddr>,
    pub drain_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: Some(SocketAddr::from(([127, 0, 0, 1], 15000))),
            health_address: None,
            metrics_address: None,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    #[default]
    Off,
    Stdout,
    File(String),
}

/// The swappable traffic configuration: listeners, route tables and clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ProxyConfig {
    /// Opaque version string (file hash or xDS versions), shown in dumps.
    pub version: String,
    pub listeners: Vec<Arc<Listener>>,
    /// Named route tables referenced by HTTP filter chains (RDS names).
    pub route_configs: BTreeMap<String, Arc<RouteConfig>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
}

// ---------------------------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Take the destination from SO_ORIGINAL_DST (traffic redirected by iptables/nftables).
    pub use_original_dst: bool,
    /// How long to wait for the first bytes when a chain needs them (TLS SNI/ALPN, HTTP sniffing).
    pub detection_timeout: Duration,
    /// Detect plaintext HTTP (Envoy's `http_inspector`): a connection that is not TLS and starts
    /// like HTTP/1.x or the HTTP/2 preface gets the application protocol `http/1.0`, `http/1.1`
    /// or `h2c`, which chains match with `alpn`. Without it only TLS ALPN is known.
    pub http_inspection: bool,
    pub filter_chains: Vec<FilterChain>,
    /// Used when no chain matches; None closes such connections.
    pub default_chain: Option<FilterChain>,
}

impl Listener {
    /// True when choosing a chain needs the client's first bytes (a TLS ClientHello, or HTTP
    /// detection for `alpn` on plaintext connections).
    pub fn needs_tls_inspection(&self) -> bool {
        self.filter_chains
            .iter()
            .any(|c| !c.matcher.server_names.is_empty() || c.matcher.transport.is_some() || !c.matcher.alpn.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub action: ChainAction,
}

/// Envoy's filter chain match: every listed criterion must hold; empty lists match anything.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub destination_ips: Vec<Cidr>,
    pub source_ips: Vec<Cidr>,
    /// SNI values; `*.example.com` matches any single-or-more label prefix.
    pub server_names: Vec<String>,
    pub transport: Option<Transport>,
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    RawBuffer,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = self.prefix_len.min(32) as u32;
                if bits == 0 {
                    return true;
                }
                let mask = u32::MAX << (32 - bits);
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = self.prefix_len.min(128) as u32;
                if bits == 0 {
                    return true;
                }
                let mask = u128::MAX << (128 - bits);
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            (IpAddr::V4(_), IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainAction {
    Http(Arc<HttpConnectionManager>),
    Tcp(TcpProxy),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DownstreamCodec {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) detected per connection from the preface.
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: DownstreamCodec,
    pub routes: RouteSource,
    /// Whole-stream timeout for a request (Envoy's `request_timeout`); None disables.
    pub request_timeout: Option<Duration>,
    /// Idle time on a stream with no bytes in either direction (Envoy default 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// Idle time on a downstream connection with no active streams.
    pub idle_timeout: Option<Duration>,
    /// Accept HTTP/1.1 `Upgrade: websocket` and tunnel bytes both ways.
    pub websocket: bool,
    /// Accept `CONNECT host:port` (Envoy's `CONNECT` upgrade): a route with a `connect` match
    /// tunnels the connection's bytes to its cluster. Without it every CONNECT is answered 404.
    pub connect: bool,
    pub generate_request_id: bool,
    /// Append the client address to `x-forwarded-for`.
    pub use_remote_address: bool,
    pub limits: HttpLimits,
    /// `x-forwarded-proto` to set when the client did not send one trusted value.
    pub forwarded_proto: String,
    /// Hash of this HCM's route-independent settings; the server uses it for `server` header etc.
    pub server_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpLimits {
    /// Total size of the request line plus headers, in bytes (Envoy: 60 KiB).
    pub max_request_headers_bytes: usize,
    /// Maximum number of request headers (Envoy: 100).
    pub max_headers_count: usize,
    /// Largest request body buffered for retries or mirroring; larger bodies stream once.
    pub max_buffered_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_request_headers_bytes: 60 * 1024, max_headers_count: 100, max_buffered_body_bytes: 64 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    Inline(Arc<RouteConfig>),
    /// Name of an entry in `ProxyConfig::route_configs` (RDS).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: ClusterSpecifier,
    pub idle_timeout: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct VirtualHost {
    pub name: String,
    /// `host`, `host:port`, `*.suffix`, `prefix.*`, or `*`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Applies to routes that do not carry their own retry policy.
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub fault: Option<Fault>,
    /// Labels copied into metrics and logs (e.g. the VirtualService that made the route).
    pub metadata: Labels,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
    /// Only gRPC requests (`content-type: application/grpc*`).
    pub grpc: bool,
    /// Only CONNECT requests (Envoy's `connect_matcher`); `path` is then ignored. Routes without
    /// it never match a CONNECT request.
    pub connect: bool,
}

impl Default for RouteMatch {
    fn default() -> Self {
        RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: vec![],
            query: vec![],
            grpc: false,
            connect: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Pattern),
    /// Prefix that must end at a `/` boundary (`/api` matches `/api` and `/api/x`, not `/apix`).
    PathSeparatedPrefix(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

impl StringMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Contains(s) => v.contains(s.as_str()),
            StringMatch::Regex(p) => p.is_match(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderMatcher {
    /// Lowercase header name; `:method`, `:authority`, `:path` and `:scheme` are pseudo-headers.
    pub name: String,
    pub rule: HeaderRule,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderRule {
    Value(StringMatch),
    /// Present(true): the header exists; Present(false): it does not.
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryMatcher {
    pub name: String,
    /// None: the parameter must be present (any value).
    pub value: Option<StringMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // config, built once; boxing buys nothing
pub enum RouteAction {
    Forward(Forward),
    Redirect(Redirect),
    Direct(DirectResponse),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forward {
    pub cluster: ClusterSpecifier,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: Option<String>,
    /// Overall timeout across all attempts; None disables (Envoy's `timeout: 0s`).
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub hash_policy: Vec<HashPolicy>,
    pub mirrors: Vec<Mirror>,
    /// Honour the `grpc-timeout` header, capped by this (Envoy's `max_grpc_timeout`; zero = no cap).
    pub max_grpc_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegexRewrite {
    pub pattern: Pattern,
    pub substitution: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterSpecifier {
    Single(String),
    Weighted(Vec<WeightedCluster>),
}

impl ClusterSpecifier {
    pub fn names(&self) -> Vec<&str> {
        match self {
            ClusterSpecifier::Single(n) => vec![n.as_str()],
            ClusterSpecifier::Weighted(w) => w.iter().map(|c| c.name.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// The authority sent to this cluster, over the route's `host_rewrite` (Envoy's
    /// `ClusterWeight.host_rewrite_literal`).
    pub host_rewrite: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct HeaderOps {
    /// (name, value, append): append=false replaces existing values.
    pub add: Vec<HeaderValueOp>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderValueOp {
    pub name: String,
    pub value: String,
    pub append: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashPolicy {
    Header { name: String, terminal: bool },
    Cookie { name: String, ttl: Option<Duration>, path: Option<String>, terminal: bool },
    SourceIp { terminal: bool },
    QueryParameter { name: String, terminal: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored, in millionths (Envoy's runtime fraction, 1e6 = 100%).
    pub fraction_per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultDelay {
    pub fixed: Duration,
    pub fraction_per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub fraction_per_million: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    Http(u16),
    Grpc(u32),
}

/// Retry conditions, as in Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct RetryOn {
    pub status_5xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: bool,
    pub retriable_headers: bool,
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_internal: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// Parses Envoy's comma-separated list (both HTTP and gRPC names).
    pub fn parse(list: &str) -> Result<RetryOn, String> {
        let mut r = RetryOn::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "5xx" => r.status_5xx = true,
                "gateway-error" => r.gateway_error = true,
                "reset" | "reset-before-request" => r.reset = true,
                "connect-failure" => r.connect_failure = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "retriable-status-codes" => r.retriable_status_codes = true,
                "retriable-headers" => r.retriable_headers = true,
                "cancelled" => r.grpc_cancelled = true,
                "deadline-exceeded" => r.grpc_deadline_exceeded = true,
                "internal" => r.grpc_internal = true,
                "resource-exhausted" => r.grpc_resource_exhausted = true,
                "unavailable" => r.grpc_unavailable = true,
                other => return Err(format!("unknown retry condition {other:?}")),
            }
        }
        Ok(r)
    }

    /// Whether a retry may be triggered by the gRPC status (from headers or trailers-only replies).
    pub fn grpc_status_retriable(&self, code: u32) -> bool {
        match code {
            1 => self.grpc_cancelled,
            4 => self.grpc_deadline_exceeded,
            8 => self.grpc_resource_exhausted,
            13 => self.grpc_internal,
            14 => self.grpc_unavailable,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// Retry when a response header matches (name + value rule).
    pub retriable_headers: Vec<HeaderMatcher>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: vec![],
            retriable_headers: vec![],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub localities: Vec<LocalityEndpoints>,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub pool: PoolConfig,
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_checks: Vec<HealthCheck>,
    /// Below this share of healthy hosts, the balancer ignores health (Envoy default 50%).
    pub panic_threshold_percent: f64,
    /// Istio destination labels for metrics (`destination_service`, `destination_workload`, ...).
    pub metadata: Labels,
    /// Local address upstream connections are made from (Envoy's `upstream_bind_config`;
    /// Istio's inbound passthrough uses 127.0.0.6). None: the system chooses.
    pub source_address: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    Static,
    /// Endpoints are DNS names resolved (all addresses) and re-resolved at `refresh` (or TTL).
    StrictDns {
        refresh: Duration,
    },
    /// Like `StrictDns`, but only the first address a name resolves to is used (Envoy's
    /// LOGICAL_DNS: one connection target, DNS does the balancing).
    LogicalDns {
        refresh: Duration,
    },
    /// Endpoints arrive separately (EDS); `localities` holds the latest assignment.
    Eds,
    /// The original destination of the connection is the endpoint (PassthroughCluster).
    OriginalDst,
    /// The request's authority is the endpoint (Envoy's dynamic forward proxy): its host name is
    /// resolved with the system resolver, answers kept for `refresh`, at most `max_hosts` names
    /// cached. Used by HTTP-proxy listeners for destinations outside the mesh.
    DynamicForwardProxy {
        refresh: Duration,
        max_hosts: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
    Random,
    RingHash { min_ring_size: u64, max_ring_size: u64 },
    Maglev { table_size: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    pub priority: u32,
    /// Locality weight; Some on any locality turns on locality-weighted balancing.
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    /// Health as reported by the config source (EDS health status).
    pub health: EndpointHealth,
    /// Labels for metrics (`destination_workload`, `destination_version`, ...).
    pub metadata: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// Resolved by the cluster's DNS discovery.
    Dns {
        host: String,
        port: u16,
    },
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Socket(a) => write!(f, "{a}"),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndpointHealth {
    #[default]
    Healthy,
    Unhealthy,
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    /// HTTP/2 if the downstream request was HTTP/2, else HTTP/1.1 (Envoy's USE_DOWNSTREAM_PROTOCOL).
    SameAsDownstream,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolConfig {
    /// Idle connections kept per endpoint (per worker).
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
    /// Requests after which a connection is closed; None = unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// HTTP/2: concurrent streams per connection before another connection is opened.
    pub max_concurrent_streams: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: 1024,
            idle_timeout: Duration::from_secs(60),
            max_requests_per_connection: None,
            max_concurrent_streams: 1024,
        }
    }
}

/// Envoy's per-cluster thresholds (default priority), with Envoy's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Retry budget: at most this percent of active requests may be retries (None: use max_retries).
    pub retry_budget_percent: Option<f64>,
    /// The budget always allows this many concurrent retries.
    pub retry_budget_min_concurrency: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget_percent: None,
            retry_budget_min_concurrency: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierDetection {
    /// Eject after this many consecutive 5xx (0 disables).
    pub consecutive_5xx: u32,
    /// Eject after this many consecutive gateway errors (502/503/504 and connect failures; 0 disables).
    pub consecutive_gateway_failure: u32,
    /// Consecutive local-origin failures (connect failure, reset, timeout) when split (0 disables).
    pub consecutive_local_origin_failure: u32,
    pub interval: Duration,
    /// Ejection lasts base × number of times ejected (capped by max_ejection_time).
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 0,
            consecutive_local_origin_failure: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http { path: String, host: Option<String>, expected_statuses: Vec<(u16, u16)> },
    Tcp,
}
