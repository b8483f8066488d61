//! Mesh-DNS, the library behind `weft dns`: mesh names (every form a client may ask, from the
//! control plane's name table) answered with their services' stable virtual IPs, everything else
//! forwarded to the host's resolvers with a bounded cache that honours TTLs and negative TTLs.
//!
//! ```text
//!  client ──UDP/TCP──► server ──► lookup (pure: table, name, search domains)
//!                                   ├─ mesh name ─────────► answer (A/AAAA, CNAME for search expansions)
//!                                   ├─ unknown mesh name ─► NXDOMAIN
//!                                   └─ other ─► cache ─► forward (UDP, TCP on truncation)
//!  control plane ──ADS (NameTable)──► ads ──► table (validated) ──► state dir (atomic file)
//! ```
//!
//! docs/dns.md describes the flags, the table and the behaviour.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ads;
pub mod cache;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod lookup;
pub mod resolv;
pub mod server;
pub mod state;
pub mod table;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use server::{Config, Dns};
pub use table::NameTable;

/// Everything that can go wrong in weft-dns.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("name table: host {host:?}: {field}: {reason}")]
    Table { host: String, field: String, reason: String },
    #[error("name table: {0}")]
    Decode(String),
    #[error("state {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("upstream {server}: {reason}")]
    Upstream { server: SocketAddr, reason: String },
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("control plane address: {0}")]
    Address(String),
}

/// Resolves once `stop` says true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
