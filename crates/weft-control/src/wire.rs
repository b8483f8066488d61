//! The operator API's JSON shapes, shared by the server and the `weft` CLI.
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | POST | `/v1/apply[?dry_run=1]` | [`ApplyRequest`] → [`ApplyResponse`] (422 + [`ErrorResponse`] when invalid) |
//! | POST | `/v1/delete` | [`ApplyRequest`] (the resources named in it) → [`DeleteResponse`] |
//! | GET | `/v1/resources[?kind=K]` | → [`ListResponse`] |
//! | GET / DELETE | `/v1/resources/KIND/NAMESPACE/NAME` | → [`StoredResource`] / [`DeleteResponse`] |
//! | GET | `/v1/check` | → [`CheckResponse`] |
//! | GET | `/v1/proxies/NODE/config?type=listeners\|routes\|clusters\|endpoints` | → [`ProxyConfigResponse`] |
//! | PUT / DELETE | `/v1/instances/NAMESPACE/NAME` | [`InstanceRequest`] → [`InstanceResponse`] |
//! | POST | `/v1/instances/NAMESPACE/NAME/renew` | [`RenewRequest`] → [`InstanceResponse`] |
//! | GET | `/v1/instances` | → [`InstanceList`] |

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// Shown in error messages (the CLI sends the path it read).
    pub file: String,
    pub yaml: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResult {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured` or `unchanged` (kubectl's words).
    pub action: String,
    pub revision: u64,
    /// Fields accepted but not applied yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResult {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub results: Vec<DeleteResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResource {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub tenant: String,
    pub revision: u64,
    pub created_at: String,
    /// The resource as applied (with `metadata.namespace` filled in).
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse {
    pub items: Vec<StoredResource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotApplied {
    pub resource: String,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResponse {
    /// Store revision the served mesh was built from.
    pub mesh_revision: u64,
    pub store_revision: u64,
    pub rebuilds: u64,
    pub services: usize,
    /// Translation warnings: conflicts, unknown subsets, gateways other than `mesh`, ...
    pub warnings: Vec<String>,
    pub not_applied: Vec<NotApplied>,
    /// The ADS server's view of every connected proxy (`weft_ads::ProxyStatus` as JSON).
    pub proxies: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyConfigResponse {
    pub node: String,
    pub type_url: String,
    /// One entry per resource the proxy last ACKed: name, version and a readable rendering.
    pub resources: Vec<RenderedResource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderedResource {
    pub name: String,
    pub version: String,
    /// Columns for the table view (the CLI prints them aligned).
    pub summary: Vec<(String, String)>,
    /// The whole resource, readable (protobuf text-like).
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRequest {
    /// The instance (`weft_istio::registry::Instance` as JSON).
    pub instance: serde_json::Value,
    /// Lease length; none makes the instance stay until deleted.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceResponse {
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    pub lease_expires_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceEntry {
    pub namespace: String,
    pub name: String,
    pub tenant: String,
    pub lease_expires_unix_ms: Option<u64>,
    pub instance: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceList {
    pub items: Vec<InstanceEntry>,
}
