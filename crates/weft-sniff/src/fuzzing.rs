//! The body of the `client_hello` fuzz target.
//!
//! It lives in the crate, rather than in `fuzz/`, so that it can see where a
//! hello ended, and so that `tests/fuzz_corpus.rs` replays the corpus through
//! exactly what the fuzzer ran. Not part of the supported API.
//!
//! Beyond "does not panic", it asserts the properties the proxy relies on;
//! an assertion failing here is a bug in the parser, which is what the
//! fuzzer is looking for.

use crate::hello::parse_with_extent;
use crate::{detect, parse_client_hello, Detected, SniffError, MAX_PEEK};

/// Runs [`detect`] and [`parse_client_hello`] on `data` and checks their
/// invariants, panicking if one is violated.
pub fn client_hello(data: &[u8]) {
    check_detect(data);
    check_parse(data);
}

/// Frames a handshake message into TLS handshake records of at most `chunk`
/// bytes each (clamped to 1..=2^14).
pub fn frame_records(message: &[u8], chunk: usize) -> Vec<u8> {
    let chunk = chunk.clamp(1, 1 << 14);
    let mut out = Vec::with_capacity(message.len() + message.len().div_ceil(chunk) * 5);
    for fragment in message.chunks(chunk) {
        let len = u16::try_from(fragment.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(fragment);
    }
    out
}

fn prefix(data: &[u8], len: usize) -> &[u8] {
    data.get(..len).unwrap_or(data)
}

fn check_detect(data: &[u8]) {
    let full = detect(data);
    // The proxy stops reading at the first decisive answer, so a longer
    // read must never have produced a different one.
    for len in 0..=data.len().min(40) {
        let early = detect(prefix(data, len));
        if early != Detected::NeedMore {
            assert_eq!(early, full, "detect changed its mind after {len} bytes");
        }
    }
}

fn check_parse(data: &[u8]) {
    let detected = detect(data);
    match parse_with_extent(data) {
        Ok(parsed) => {
            assert_eq!(detected, Detected::Tls);
            assert!(parsed.end <= data.len().min(MAX_PEEK));
            if let Some(host) = &parsed.hello.server_name {
                assert!(!host.is_empty());
                assert!(host.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
            }
            // "Incomplete exactly when more bytes could make it parse":
            // every shorter prefix of a hello that parses must say so.
            let step = (parsed.end / 16).max(1);
            for len in (0..parsed.end).step_by(step).chain(parsed.end.checked_sub(1)) {
                assert_eq!(
                    parse_client_hello(prefix(data, len)),
                    Err(SniffError::Incomplete),
                    "prefix of {len} bytes of a {}-byte hello",
                    parsed.end
                );
            }
            assert_eq!(parse_client_hello(prefix(data, parsed.end)).as_ref(), Ok(&parsed.hello));
            // Record boundaries carry no meaning for a handshake message.
            let chunk = 1 + parsed.message.len() % 61;
            for framed in [frame_records(&parsed.message, chunk), frame_records(&parsed.message, 1 << 14)] {
                if framed.len() <= MAX_PEEK {
                    assert_eq!(parse_client_hello(&framed).as_ref(), Ok(&parsed.hello));
                }
            }
        }
        Err(SniffError::NotTls) => assert_ne!(detected, Detected::Tls),
        Err(SniffError::Incomplete) => {
            assert!(matches!(detected, Detected::Tls | Detected::NeedMore));
            assert!(data.len() < MAX_PEEK, "Incomplete at the cap");
        }
        Err(err @ (SniffError::Malformed(_) | SniffError::TooLarge)) => {
            assert_eq!(detected, Detected::Tls);
            // A verdict that more bytes could overturn would make the proxy
            // drop connections it should have waited for.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0; 64]);
            let again = parse_client_hello(&longer);
            assert!(
                matches!(again, Err(SniffError::Malformed(_) | SniffError::TooLarge | SniffError::NotTls)),
                "{err:?} became {again:?} with more bytes"
            );
        }
    }
}
