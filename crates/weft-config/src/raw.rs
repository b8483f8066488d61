//! The static file's wire shape: what serde reads before validation.
//!
//! Enumerations, durations and addresses are kept as strings here so that validation can name
//! the resource and field when a value is wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A scalar read as text: `1s`, `250ms`, `10` (numbers are accepted and interpreted later).
#[derive(Debug, Clone)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Scalar(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::I(i) => i.to_string(),
            Any::F(f) => f.to_string(),
            Any::B(b) => b.to_string(),
        }))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub node: Option<Node>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub access_log: Option<Scalar>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub route_configs: Vec<RouteConfig>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: Option<String>,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub principal: Option<String>,
    pub mesh_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Absent: the default 127.0.0.1:15000; `off`: disabled.
    pub address: Option<Scalar>,
    pub health_address: Option<Scalar>,
    pub metrics_address: Option<Scalar>,
    pub drain_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: Scalar,
    #[serde(default)]
    pub use_original_dst: bool,
    pub detection_timeout: Option<Scalar>,
    /// Shorthand for a listener with one chain.
    pub http: Option<Http>,
    pub tcp: Option<Tcp>,
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matcher: ChainMatch,
    pub http: Option<Http>,
    pub tcp: Option<Tcp>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    #[serde(default)]
    pub destination_ips: Vec<String>,
    #[serde(default)]
    pub source_ips: Vec<String>,
    #[serde(default)]
    pub server_names: Vec<String>,
    pub transport: Option<String>,
    #[serde(default)]
    pub alpn: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub stat_prefix: Option<String>,
    pub codec: Option<String>,
    /// Name of an entry in `route_configs`.
    pub route_config: Option<String>,
    /// Inline route table.
    pub virtual_hosts: Option<Vec<VirtualHost>>,
    pub request_timeout: Option<Scalar>,
    pub stream_idle_timeout: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub websocket: Option<bool>,
    /// Accept CONNECT requests (routes with `match: { connect: true }` tunnel them).
    pub connect: Option<bool>,
    pub generate_request_id: Option<bool>,
    pub use_remote_address: Option<bool>,
    pub max_request_headers_kb: Option<u32>,
    pub max_headers_count: Option<u32>,
    pub max_buffered_body_kb: Option<u32>,
    pub forwarded_proto: Option<String>,
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    pub stat_prefix: Option<String>,
    pub cluster: Option<String>,
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    pub idle_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: Scalar,
    #[serde(default)]
    pub append: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    pub route: Option<Forward>,
    pub redirect: Option<Redirect>,
    pub direct_response: Option<DirectResponse>,
    pub fault: Option<Fault>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub regex: Option<String>,
    pub path_separated_prefix: Option<String>,
    pub case_sensitive: Option<bool>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub query_parameters: Vec<QueryMatcher>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub grpc: bool,
    /// Only CONNECT requests; no path matcher may be given with it.
    #[serde(default)]
    pub connect: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
    #[serde(default)]
    pub invert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatcher {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub cluster: Option<String>,
    pub weighted_clusters: Option<Vec<WeightedCluster>>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: Option<String>,
    pub timeout: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    #[serde(default)]
    pub request_mirror_policies: Vec<Mirror>,
    pub max_grpc_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub host_rewrite: Option<String>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub retry_on: Option<String>,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<Scalar>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default)]
    pub retriable_headers: Vec<HeaderMatcher>,
    pub backoff: Option<Backoff>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base_interval: Option<Scalar>,
    pub max_interval: Option<Scalar>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    pub header: Option<String>,
    pub cookie: Option<Cookie>,
    pub source_ip: Option<bool>,
    pub query_parameter: Option<String>,
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cookie {
    pub name: String,
    pub ttl: Option<Scalar>,
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub cluster: String,
    pub percent: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub strip_query: bool,
    pub response_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed: Scalar,
    pub percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: Option<u16>,
    pub grpc_status: Option<u32>,
    pub percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointEntry>,
    #[serde(default)]
    pub localities: Vec<LocalityEntry>,
    pub lb_policy: Option<String>,
    pub least_request: Option<LeastRequest>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<Maglev>,
    pub connect_timeout: Option<Scalar>,
    pub protocol: Option<String>,
    pub dns_refresh_rate: Option<Scalar>,
    /// `dynamic_forward_proxy` clusters: how many host names are cached at most.
    pub max_hosts: Option<u32>,
    pub pool: Option<Pool>,
    pub circuit_breakers: Option<CircuitBreakers>,
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    pub panic_threshold: Option<f64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EndpointEntry {
    Address(String),
    Full(Endpoint),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    /// `region/zone/sub_zone`.
    pub locality: Option<String>,
    pub health: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityEntry {
    pub region: Option<String>,
    pub zone: Option<String>,
    pub sub_zone: Option<String>,
    pub priority: Option<u32>,
    pub weight: Option<u32>,
    pub endpoints: Vec<EndpointEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequest {
    pub choice_count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingHash {
    pub min_ring_size: Option<u64>,
    pub max_ring_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maglev {
    pub table_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub max_idle_per_endpoint: Option<usize>,
    pub idle_timeout: Option<Scalar>,
    pub max_requests_per_connection: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    pub budget_percent: Option<f64>,
    pub min_retry_concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub consecutive_local_origin_failure: Option<u32>,
    pub interval: Option<Scalar>,
    pub base_ejection_time: Option<Scalar>,
    pub max_ejection_time: Option<Scalar>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub http: Option<HttpHealthCheck>,
    pub tcp: Option<serde_yaml::Value>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    pub host: Option<String>,
    /// Ranges like `200-299` or single codes.
    #[serde(default)]
    pub expected_statuses: Vec<Scalar>,
}
