//! Test infrastructure for Weft's end-to-end tests.
//!
//! Everything here talks to real sockets on loopback:
//!
//! * [`HttpBackend`]: an HTTP/1.1 + h2c server that echoes what it received as
//!   JSON and can be told (per request, by headers, or for all requests, by
//!   [`Mode`]) to fail in various ways.
//! * [`GrpcBackend`]: a tonic server for `weft.test.Echo/Say` (unary) and
//!   `weft.test.Echo/SayStream` (server streaming), with [`GrpcClient`] and
//!   [`grpc_say`] to call it, directly or through a proxy.
//! * [`WsBackend`]: a WebSocket echo server, with [`ws_connect`] / [`ws_echo`].
//! * [`WeftProcess`]: runs the `weft` binary, waits for its ready file and
//!   captures its output.
//! * [`http_get`], [`h2c_get`], [`HttpConn`]: small hyper-based clients.
//! * [`EtcdServer`]: a real etcd member on loopback ports, killed on drop.
//! * [`tools`]: external tools (`curl`, `h2load`, envoy, ...) and root checks.
//! * [`netns`]: network namespaces standing for hosts (root-only tests).
//! * [`envoy`]: Envoy bootstraps (ADS, or static with generated resources inline) and
//!   `envoy --mode validate`.
//! * [`ads`]: a scripted ADS server (SotW and delta) that records what clients send.
//!
//! Backends bind `127.0.0.1:0`, run on a private background runtime (so a test
//! that blocks its own runtime, e.g. by running `curl` synchronously, does not
//! stall them), and stop when dropped.

pub mod ads;
mod client;
pub mod envoy;
mod etcd;
mod grpc;
mod http_backend;
pub mod netns;
mod process;
mod runtime;
mod server;
pub mod tools;
mod util;
mod ws;

pub use client::{h2c_get, http_get, http_request, HttpConn, HttpResponse, HttpVersion};
pub use etcd::EtcdServer;
pub use grpc::{grpc_say, GrpcBackend, GrpcClient, SayReply, SayRequest, GRPC_SAY_PATH, GRPC_SAY_STREAM_PATH};
pub use http_backend::{HttpBackend, Mode, RecordedRequest};
pub use process::{ReadyInfo, WeftBuilder, WeftProcess};
pub use util::wait_for;
pub use ws::{ws_connect, ws_connect_with_response, ws_echo, WsBackend, WsClient};

/// Re-exported so tests can name signals for [`WeftProcess::signal`]
/// without depending on `libc` themselves.
pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1, SIGUSR2};
