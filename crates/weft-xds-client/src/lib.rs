//! weft proxy's xDS v3 client.
//!
//! * [`convert`]: Envoy resources (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment)
//!   → weft's config model, pure and table-tested.
//! * [`store`]: the latest accepted resources, assembled into one [`weft_config::ProxyConfig`].
//! * [`client`]: the ADS stream (delta xDS, or state of the world), ACK/NACK, subscriptions,
//!   reconnects with backoff, resynchronisation.
#![forbid(unsafe_code)]

pub mod convert;

/// Why a resource was rejected or the control plane could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A resource weft cannot serve as asked, named with the field at fault.
    #[error("{resource}: {field}: {message}")]
    Invalid { resource: String, field: String, message: String },
}
