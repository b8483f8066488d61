/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longer than any registered method (the longest, `UPDATEREDIRECTREF`, has
/// 17 bytes), so real requests are never cut off, yet small enough that a
/// stream of token bytes without a space is classified quickly instead of
/// holding the connection in `NeedMore` until the peek buffer fills.
const MAX_METHOD_LEN: usize = 32;

/// What the first bytes of a client-first connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detected {
    /// A TLS handshake record header: `0x16 0x03 0x00..=0x04`.
    Tls,
    /// Starts with the full HTTP/2 connection preface.
    Http2Preface,
    /// Starts with an HTTP/1 method token followed by a space.
    Http1,
    /// None of the above, whatever bytes follow.
    Other,
    /// The bytes so far are consistent with more than one answer.
    NeedMore,
}

/// Classifies the first bytes of a connection.
///
/// Once this returns anything but [`Detected::NeedMore`] for some `buf`, it
/// returns the same for every extension of `buf`, so the caller may stop
/// reading at the first decisive answer. Looks at no more than the first
/// 33 bytes.
pub fn detect(buf: &[u8]) -> Detected {
    let Some(&first) = buf.first() else {
        return Detected::NeedMore;
    };
    if first == 0x16 {
        return detect_tls(buf);
    }
    // "PRI" is also a valid method token, so the preface must be ruled out
    // before the request-line check can claim the connection.
    if is_http2_preface_prefix(buf) {
        return if buf.len() >= HTTP2_PREFACE.len() { Detected::Http2Preface } else { Detected::NeedMore };
    }
    detect_http1(buf)
}

/// Whether `buf` agrees with the HTTP/2 preface on every byte they share.
///
/// True for every strict prefix of the preface (including the empty buffer),
/// for the preface itself, and for the preface followed by anything (the
/// client's first frames usually arrive in the same read).
pub fn is_http2_preface_prefix(buf: &[u8]) -> bool {
    let n = buf.len().min(HTTP2_PREFACE.len());
    buf.get(..n) == HTTP2_PREFACE.get(..n)
}

fn detect_tls(buf: &[u8]) -> Detected {
    match (buf.get(1), buf.get(2)) {
        (None, _) | (Some(0x03), None) => Detected::NeedMore,
        // SSL 3.0 through TLS 1.3; RFC 8446 lets a first ClientHello record
        // carry anything from 0x0300 up, and some clients still send 0x0301.
        (Some(0x03), Some(minor)) if *minor <= 0x04 => Detected::Tls,
        _ => Detected::Other,
    }
}

fn detect_http1(buf: &[u8]) -> Detected {
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        if b == b' ' {
            return if i == 0 { Detected::Other } else { Detected::Http1 };
        }
        if !is_tchar(b) {
            return Detected::Other;
        }
    }
    if buf.len() > MAX_METHOD_LEN {
        Detected::Other
    } else {
        Detected::NeedMore
    }
}

/// `tchar` from RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tchar_matches_rfc_9110_set() {
        let specials = b"!#$%&'*+-.^_`|~";
        for b in 0..=u8::MAX {
            let expected = b.is_ascii_alphanumeric() || specials.contains(&b);
            assert_eq!(is_tchar(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn method_length_bound() {
        let at_limit = [b'A'; MAX_METHOD_LEN];
        assert_eq!(detect(&at_limit), Detected::NeedMore);
        let mut req = at_limit.to_vec();
        req.push(b' ');
        assert_eq!(detect(&req), Detected::Http1);
        let over = [b'A'; MAX_METHOD_LEN + 1];
        assert_eq!(detect(&over), Detected::Other);
    }
}
