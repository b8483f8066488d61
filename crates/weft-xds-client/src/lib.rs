//! weft proxy's xDS v3 client.
//!
//! * [`convert`]: Envoy resources (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment)
//!   → weft's config model; pure and table-tested.
//! * [`store`]: the latest accepted resources, assembled into one [`weft_config::ProxyConfig`].
//! * [`session`]: the ADS conversation (delta or state of the world) as a pure state machine.
//! * [`client`]: the stream itself: connect, ACK/NACK, apply, reconnect with backoff, resync.
//! * [`status`]: what `/config_dump` and the metrics show.
//! * [`cache`]: the persisted last config (`--xds-cache`), served at start until the server
//!   answers.
#![forbid(unsafe_code)]

pub mod cache;
pub mod client;
pub mod convert;
pub mod session;
pub mod status;
pub mod store;

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Value};

pub use client::{run, ApplyError, Backoff, Options};
pub use session::Protocol;
pub use status::{Metric, Status};

/// Why a resource was rejected or the control plane cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A resource weft cannot serve as asked, named with the field at fault.
    #[error("{resource}: {field}: {message}")]
    Invalid { resource: String, field: String, message: String },
    #[error("xDS server address {0:?}: expected HOST:PORT or http://HOST:PORT")]
    Address(String),
    #[error("node: {0}")]
    Node(String),
}

/// The `Node` a weft proxy presents: an Istio-style id and metadata (`NAMESPACE`, `LABELS`,
/// `INSTANCE_IPS`, `TENANT`), checked the way the control plane will read it.
pub fn node(
    id: &str,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    ips: &[IpAddr],
    tenant: Option<&str>,
) -> Result<Node, Error> {
    let mut info = weft_xds::NodeInfo::from_node(&Node { id: id.to_string(), ..Default::default() })
        .map_err(|e| Error::Node(e.to_string()))?;
    if let Some(ns) = namespace {
        info.namespace = ns.to_string();
    }
    let mut metadata = weft_xds::node_metadata(&info.namespace, labels, ips, None);
    if let Some(t) = tenant.filter(|t| !t.is_empty()) {
        metadata.fields.insert("TENANT".to_string(), Value { kind: Some(Kind::StringValue(t.to_string())) });
    }
    let node = Node {
        id: id.to_string(),
        cluster: labels.get("app").cloned().unwrap_or_default(),
        metadata: Some(metadata),
        user_agent_name: "weft".to_string(),
        user_agent_version_type: Some(
            envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ),
        ..Default::default()
    };
    weft_xds::NodeInfo::from_node(&node).map_err(|e| Error::Node(e.to_string()))?;
    Ok(node)
}
