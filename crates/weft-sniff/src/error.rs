use crate::MAX_PEEK;

/// Why [`parse_client_hello`](crate::parse_client_hello) produced no hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SniffError {
    /// Everything seen so far is a valid start of a ClientHello; read more
    /// bytes and call again.
    #[error("incomplete ClientHello: need more bytes")]
    Incomplete,
    /// The first record header is not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// A TLS handshake that violates the spec; no amount of further bytes
    /// can make it parse. The payload names the offending field.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello cannot be complete within [`MAX_PEEK`] bytes.
    #[error("ClientHello does not fit in {MAX_PEEK} bytes")]
    TooLarge,
}
