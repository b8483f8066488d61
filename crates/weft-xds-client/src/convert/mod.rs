//! Envoy xDS resources → weft's validated config model. Pure functions: a resource either
//! becomes model values or is rejected with an error naming it and the field
//! (`Cluster "outbound|9080||x": transport_socket: not supported`). What the model cannot express
//! and would change behaviour is rejected; fields that change nothing weft does are ignored
//! (docs/xds-support.md lists both).

// Deprecated Envoy fields are still sent by older control planes; they are read on purpose.
#![allow(deprecated)]

mod cluster;
mod common;
mod endpoint;
mod listener;
mod route;

pub use cluster::{cluster, ClusterSpec};
pub use endpoint::{endpoints, weigh_localities, Assignment};
pub use listener::{listener, ListenerSpec};
pub use route::route_configuration;
