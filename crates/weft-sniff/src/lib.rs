//! Peeking at the first bytes of a client-first connection.
//!
//! The proxy reads (without consuming) the start of every accepted
//! connection and calls [`detect`] to pick a protocol handler, then
//! [`parse_client_hello`] on TLS connections to route on SNI and ALPN without
//! terminating TLS. Both functions are pure, never panic, and allocate at
//! most in proportion to `min(buf.len(), MAX_PEEK)`, because their input is
//! attacker-controlled.
//!
//! Formats: TLS record and handshake layers per RFC 8446 §5.1 and §4.1.2,
//! `server_name` per RFC 6066 §3, ALPN per RFC 7301 §3.1, the HTTP/2
//! connection preface per RFC 9113 §3.4, HTTP/1 request-line tokens per
//! RFC 9110 §5.6.2.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod detect;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hello;
mod reader;

pub use detect::{detect, is_http2_preface_prefix, Detected, HTTP2_PREFACE};
pub use error::SniffError;
pub use hello::{parse_client_hello, ClientHello};

/// The most bytes the proxy buffers before giving up on sniffing.
///
/// Also the cap on the raw bytes (record headers included) a ClientHello may
/// occupy: a hello that cannot be complete within this many bytes is
/// [`SniffError::TooLarge`].
pub const MAX_PEEK: usize = 64 * 1024;
