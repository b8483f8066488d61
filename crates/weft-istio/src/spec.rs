//! The validated, typed specs of the Istio kinds Weft applies.
//!
//! Field names follow Istio's API (snake_case here, camelCase in YAML). Everything is already
//! checked: durations are `Duration`, percentages are `f64` in `0..=100`, ports are `u16`,
//! regexes compile, enumerations are Rust enums. Istio fields that Weft accepts but does not
//! apply yet are not in these types; they are listed in `Resource::not_applied`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Labels, sorted so comparisons and dumps are stable.
pub type Labels = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// An application protocol, from a port's `protocol`, else its name prefix (`http-web` → HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Udp,
    Mongo,
    Redis,
    Mysql,
    /// Not declared or not recognised (the text as given, possibly empty): the data plane detects
    /// the protocol itself, as Istio does for such ports.
    Unsupported(String),
}

impl Protocol {
    /// Istio's protocol names, case-insensitively. Unknown text gives `Unsupported`.
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "http_proxy" => Protocol::HttpProxy,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unsupported(s.to_string()),
        }
    }

    /// Istio's inference order: the explicit `protocol`, then `appProtocol` (Kubernetes-style
    /// registries), then the port name's prefix before the first `-` (`http`, `http-web`,
    /// `grpc-web`, `tcp-db`...).
    pub fn infer(protocol: Option<&str>, app_protocol: Option<&str>, name: &str) -> Protocol {
        for given in [protocol, app_protocol].into_iter().flatten() {
            if !given.is_empty() {
                return Protocol::parse(given);
            }
        }
        let lower = name.to_ascii_lowercase();
        // `grpc-web` contains the separator itself, so it is tried before splitting.
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Protocol::GrpcWeb;
        }
        let prefix = lower.split('-').next().unwrap_or_default();
        match Protocol::parse(prefix) {
            Protocol::Unsupported(_) => Protocol::Unsupported(String::new()),
            p => p,
        }
    }

    /// HTTP in any of its forms (HTTP/1.1, HTTP/2, gRPC, gRPC-Web, HTTP proxy).
    pub fn is_http(&self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::HttpProxy | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Plain TCP proxying (including server-first database protocols and TLS passthrough).
    pub fn is_tcp(&self) -> bool {
        matches!(
            self,
            Protocol::Tcp | Protocol::Https | Protocol::Tls | Protocol::Mongo | Protocol::Redis | Protocol::Mysql
        )
    }

    /// Istio's spelling (`HTTP`, `GRPC-Web`...); `Unsupported` gives an empty string.
    pub fn as_str(&self) -> &str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Unsupported(_) => "",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Unsupported(s) if s.is_empty() => f.write_str("UNSUPPORTED"),
            Protocol::Unsupported(s) => write!(f, "UNSUPPORTED({s})"),
            p => f.write_str(p.as_str()),
        }
    }
}

/// A regular expression in RE2 syntax that is known to compile with the `regex` crate (which,
/// like RE2, has no lookaround or backreferences). Holds the source; Envoy compiles it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Regex(pub(crate) String);

impl Regex {
    /// Checks that `src` compiles (with a size limit, so a hostile pattern cannot blow up) and
    /// uses no flag RE2 lacks.
    pub fn new(src: &str) -> Result<Regex, String> {
        regex::RegexBuilder::new(src).size_limit(1 << 20).build().map_err(|e| match e {
            regex::Error::Syntax(s) => {
                // The crate's message is multi-line; keep the last line (the reason).
                let reason = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("syntax error");
                format!("invalid regex {src:?}: {}", reason.trim_start_matches("error: "))
            }
            regex::Error::CompiledTooBig(_) => format!("regex {src:?} is too large"),
            other => format!("invalid regex {src:?}: {other}"),
        })?;
        check_re2_flags(src)?;
        Ok(Regex(src.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RE2 (Envoy's regex engine, and Go's, which Istio validates with) knows the flags `i`, `m`, `s`
/// and `U`; the `regex` crate also takes `u`, `x` and `R`, which Envoy rejects ("invalid perl
/// operator"). Finds `(?flags)` and `(?flags:` groups outside character classes and escapes.
fn check_re2_flags(src: &str) -> Result<(), String> {
    let b = src.as_bytes();
    let mut class_depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => {
                class_depth += 1;
                // A `]` right after `[` or `[^` is a literal.
                if b.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if class_depth > 0 => class_depth -= 1,
            b'(' if class_depth == 0 && b.get(i + 1) == Some(&b'?') => {
                for &c in b[i + 2..].iter().take_while(|c| **c != b':' && **c != b')') {
                    // Named groups (`(?P<name>`, `(?<name>`) and look-around are not flag groups.
                    if c == b'P' || !(c.is_ascii_alphabetic() || c == b'-') {
                        break;
                    }
                    if !matches!(c, b'i' | b'm' | b's' | b'U' | b'-') {
                        return Err(format!(
                            "invalid regex {src:?}: flag {:?} is not supported (RE2, which Envoy uses, knows i, m, s and U)",
                            c as char
                        ));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Istio's StringMatch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Full match (RE2), as Envoy's `safe_regex`.
    Regex(Regex),
    /// `{}` (or a header name with no value): for headers and query parameters, "is present";
    /// for `uri`, `scheme`, `method` and `authority`, any value.
    Present,
}

/// An IP network: an address with a prefix length (a bare IP is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l.parse().ok()?,
            Some(_) => return None,
        };
        (prefix_len <= max).then_some(Cidr { addr, prefix_len })
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix_len == 0 { 0 } else { u128::MAX << (128 - self.prefix_len) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `workloadSelector: {labels: ...}`: which workloads (WorkloadEntries, registry instances,
/// proxies) a resource applies to. Empty labels select every workload of the namespace, as in
/// Istio (which warns about it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadSelector {
    pub labels: Labels,
}

impl WorkloadSelector {
    /// Every selector label is present with the same value.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A locality `region/zone/subzone` (zone and subzone may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Splits `region/zone/subzone`; at most three segments, none containing spaces.
    pub fn parse(s: &str) -> Result<Locality, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(format!("locality {s:?} has more than 3 segments (region/zone/subzone)"));
        }
        if parts.iter().any(|p| p.chars().any(|c| c.is_whitespace() || c.is_control() || c == '*')) {
            return Err(format!("locality {s:?} contains spaces, control characters or '*'"));
        }
        let get = |i: usize| parts.get(i).map(|p| p.to_string()).unwrap_or_default();
        Ok(Locality { region: get(0), zone: get(1), subzone: get(2) })
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.zone.is_empty(), self.subzone.is_empty()) {
            (true, true) => write!(f, "{}", self.region),
            (false, true) => write!(f, "{}/{}", self.region, self.zone),
            _ => write!(f, "{}/{}/{}", self.region, self.zone, self.subzone),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    /// FQDN-ish names, possibly with a leading `*.` wildcard (never empty).
    pub hosts: Vec<String>,
    /// VIPs or CIDRs.
    pub addresses: Vec<Cidr>,
    pub ports: Vec<ServicePort>,
    pub location: Location,
    pub resolution: Resolution,
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the service is visible to (`.` own, `*` all); empty means all.
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u16,
    /// From `protocol`, else from the name prefix.
    pub protocol: Protocol,
    pub name: String,
    /// The endpoints' port when they declare none for this port name.
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// Forward to the address the client connected to (original destination).
    #[default]
    None,
    Static,
    /// DNS, every resolved address an endpoint (Envoy STRICT_DNS).
    Dns,
    /// DNS, one address at a time (Envoy LOGICAL_DNS).
    DnsRoundRobin,
}

/// Where a workload is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Ip(IpAddr),
    /// A DNS name (ServiceEntries with DNS resolution).
    Hostname(String),
    /// `unix:///path` (the path, without the scheme).
    Unix(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Hostname(h) => f.write_str(h),
            Address::Unix(p) => write!(f, "unix://{p}"),
        }
    }
}

/// A WorkloadEntry spec, also the shape of a ServiceEntry's inline `endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadEntry {
    /// None only when `network` is set (reached through that network's gateway).
    pub address: Option<Address>,
    /// Port name → port number on this workload (overrides the service port's target).
    pub ports: BTreeMap<String, u16>,
    pub labels: Labels,
    pub network: Option<String>,
    pub locality: Option<Locality>,
    /// Load-balancing weight; None means the default (1).
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// VirtualService

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    pub hosts: Vec<String>,
    /// Gateways and sidecars the routes apply to; empty means `mesh`.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tls: Vec<TlsRoute>,
    pub tcp: Vec<TcpRoute>,
    pub export_to: Vec<String>,
}

impl VirtualService {
    /// Applies to sidecars (`gateways` empty or naming `mesh`).
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Any of these matches (OR); empty matches every request.
    pub matches: Vec<HttpMatch>,
    pub action: HttpAction,
    pub rewrite: Option<HttpRewrite>,
    /// None: Istio's default (no route timeout); `Some(ZERO)` disables explicitly.
    pub timeout: Option<Duration>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFault>,
    /// Mirrors, from `mirrors` or from the older `mirror` + `mirrorPercentage`/`mirrorPercent`.
    pub mirrors: Vec<HttpMirror>,
    pub headers: Headers,
}

/// What a route does with a matched request (exactly one of Istio's route/redirect/directResponse).
#[derive(Debug, Clone, PartialEq)]
pub enum HttpAction {
    Route(Vec<HttpRouteDestination>),
    Redirect(HttpRedirect),
    DirectResponse(DirectResponse),
    /// `delegate`: another VirtualService provides the routes (accepted, not applied yet).
    Delegate {
        name: String,
        namespace: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// Lower-case header name → match.
    pub headers: BTreeMap<String, StringMatch>,
    pub query_params: BTreeMap<String, StringMatch>,
    /// The request matches only if none of these headers match.
    pub without_headers: BTreeMap<String, StringMatch>,
    pub port: Option<u16>,
    pub source_labels: Labels,
    pub source_namespace: Option<String>,
    /// Gateways this match is restricted to (overrides the VirtualService's `gateways`).
    pub gateways: Vec<String>,
    pub ignore_uri_case: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// A short name (`reviews`), a namespaced name or an FQDN, as written.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    /// Share of traffic, 0..=100. A lone destination without weight gets 100; with several,
    /// the weights sum to 100.
    pub weight: u32,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<RedirectPort>,
    pub scheme: Option<String>,
    /// 301 unless given.
    pub redirect_code: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    Number(u16),
    /// `derivePort: FROM_PROTOCOL_DEFAULT` (80 for http, 443 for https).
    FromProtocolDefault,
    /// `derivePort: FROM_REQUEST_PORT`.
    FromRequestPort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexRewrite {
    /// Unanchored: every match in the path is replaced.
    pub pattern: Regex,
    /// May use `\1`-style capture references, as Envoy.
    pub rewrite: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRetry {
    /// 0 disables retries.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Envoy retry conditions (`5xx`, `gateway-error`, `connect-failure`, `unavailable`...).
    /// Empty means Istio's default set.
    pub retry_on: Vec<String>,
    /// Status codes given in `retryOn` (Istio's `retriable-status-codes` shorthand).
    pub retriable_status_codes: Vec<u16>,
    pub retry_remote_localities: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpFault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// 0..=100; 100 when not given.
    pub percentage: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub status: AbortStatus,
    /// 0..=100; 100 when not given.
    pub percentage: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    /// 200..=599.
    Http(u16),
    /// gRPC status code (0..=16), from a name such as `UNAVAILABLE` or a number.
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpMirror {
    pub destination: Destination,
    /// 0..=100; None means 100 (all requests).
    pub percentage: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers {
    pub request: HeaderOperations,
    pub response: HeaderOperations,
}

impl Headers {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderOperations {
    /// Replace (or add) these headers.
    pub set: BTreeMap<String, String>,
    /// Append these values.
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl HeaderOperations {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpRoute {
    pub matches: Vec<L4Match>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct L4Match {
    pub destination_subnets: Vec<Cidr>,
    pub port: Option<u16>,
    pub source_labels: Labels,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsRoute {
    pub matches: Vec<TlsMatch>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsMatch {
    /// Required: SNI names (wildcards allowed), each within the VirtualService's hosts.
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Vec<Cidr>,
    pub port: Option<u16>,
    pub source_labels: Labels,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

/// A weighted destination of a TCP or TLS route (same weight rules as HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: u32,
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRule {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// Overrides for one port; Istio replaces (does not merge) each setting given here.
#[derive(Debug, Clone, PartialEq)]
pub struct PortTrafficPolicy {
    pub port: u16,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadBalancer {
    /// None: the default (Istio's LEAST_REQUEST).
    pub policy: Option<LbPolicy>,
    pub locality_lb_setting: Option<LocalityLbSetting>,
    pub warmup_duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    Simple(SimpleLb),
    ConsistentHash(ConsistentHash),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimpleLb {
    RoundRobin,
    /// Also Istio's deprecated `LEAST_CONN`.
    LeastRequest,
    Random,
    /// Forward to the original destination address.
    Passthrough,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsistentHash {
    pub key: HashKey,
    pub algorithm: HashAlgorithm,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    HttpHeaderName(String),
    HttpCookie { name: String, path: Option<String>, ttl: Option<Duration> },
    UseSourceIp,
    HttpQueryParameterName(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Ketama ring; `minimum_ring_size` from `ringHash` or the deprecated `minimumRingSize`.
    RingHash {
        minimum_ring_size: Option<u64>,
    },
    Maglev {
        table_size: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalityLbSetting {
    pub distribute: Vec<LocalityDistribute>,
    pub failover: Vec<LocalityFailover>,
    /// Label names (or `topology.istio.io/network`-style keys) ordering failover priority.
    pub failover_priority: Vec<String>,
    /// None: inherit the mesh default.
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityDistribute {
    /// A locality pattern (`region/zone/*`, `*`).
    pub from: String,
    /// Locality pattern → weight; weights sum to 100.
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityFailover {
    /// Regions.
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpSettings {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    /// 0 means unlimited, 1 disables keep-alive.
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade_policy: H2UpgradePolicy,
    pub use_client_protocol: bool,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum H2UpgradePolicy {
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

/// Outlier detection. Istio's deprecated `consecutiveErrors` is already folded in (it counts
/// gateway errors and switches the 5xx rule off, as Istio does).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutlierDetection {
    /// None: Envoy's default (5). `Some(0)` disables the 5xx rule.
    pub consecutive_5xx_errors: Option<u32>,
    /// None or `Some(0)`: disabled.
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    /// 0..=100.
    pub max_ejection_percent: Option<u32>,
    /// 0..=100.
    pub min_health_percent: Option<u32>,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failures: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Sidecar

#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub workload_selector: Option<WorkloadSelector>,
    pub ingress: Vec<IngressListener>,
    pub egress: Vec<EgressListener>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPort {
    pub number: u16,
    pub protocol: Protocol,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressListener {
    pub port: SidecarPort,
    /// The IP (or `unix://` path) to listen on instead of the captured wildcard.
    pub bind: Option<String>,
    pub capture_mode: CaptureMode,
    /// Where inbound traffic goes: `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT` or
    /// `unix:///path`. None: the port itself on the instance IP (Istio's default).
    pub default_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressListener {
    /// None: every port of the imported services (via the outbound capture).
    pub port: Option<SidecarPort>,
    pub bind: Option<String>,
    pub capture_mode: CaptureMode,
    pub hosts: Vec<SidecarHost>,
}

/// `namespace/dnsName` as in a Sidecar's egress `hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SidecarHost {
    /// `*` (any), `.` (the Sidecar's own), `~` (none), or a namespace name.
    pub namespace: String,
    /// A host, `*`, or `*.suffix`.
    pub host: String,
}

impl fmt::Display for SidecarHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.host)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Whatever the environment does (capture if installed).
    #[default]
    Default,
    Iptables,
    /// No capture: applications connect to the listener's bind address themselves.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundMode,
    /// Where unknown destinations go in ALLOW_ANY mode.
    pub egress_proxy: Option<Destination>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundMode {
    #[default]
    AllowAny,
    RegistryOnly,
}
