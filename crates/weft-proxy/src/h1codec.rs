//! HTTP/1.1 framing shared by the upstream client and the downstream server: chunked transfer
//! coding (decoding in place, over whatever the reads delivered), `Content-Length` values, and
//! the small writers that put heads and chunk sizes on the wire without formatting machinery.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Most header fields in a trailer section.
const MAX_TRAILERS: usize = 100;
/// Largest chunk-size line (with extensions) and trailer section.
pub const MAX_CHUNK_LINE: usize = 4096;
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

pub(crate) fn final_coding_is_chunked(headers: &HeaderMap) -> bool {
    let last = headers.get_all(header::TRANSFER_ENCODING).iter().next_back();
    last.and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|c| c.trim().eq_ignore_ascii_case("chunked"))
        .unwrap_or(false)
}

/// The `Content-Length` of a message: None when absent; an error when a value is not a number
/// or values disagree.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = trim(part);
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match found {
                Some(f) if f != n => return Err(()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

pub(crate) fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map(|i| i + 1).unwrap_or(start);
    &b[start..end.max(start)]
}

pub(crate) fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    Done,
}

/// One step of chunked decoding over the bytes in `buf`.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended (no trailers).
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes what `buf` holds of a chunked body, taking the bytes it uses.
pub(crate) fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    return Ok(Decoded::NeedMore);
                };
                if eol > MAX_CHUNK_LINE {
                    return Err("chunk size line too long");
                }
                let line = &buf[..eol];
                let line = line.strip_suffix(b"\r").ok_or("chunk size line without CRLF")?;
                let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
                let (digits, rest) = line.split_at(digits_end);
                // After the size only whitespace or extensions (`;name=value`) may follow.
                let rest = trim(rest);
                if digits.is_empty() || digits.len() > 15 || !(rest.is_empty() || rest.starts_with(b";")) {
                    return Err("malformed chunk size");
                }
                if rest.iter().any(|b| *b != b'\t' && (*b < 0x20 || *b == 0x7f)) {
                    return Err("control character in a chunk extension");
                }
                let size = digits.iter().fold(0u64, |n, d| (n << 4) | u64::from(hex_value(*d)));
                buf.advance(eol + 1);
                *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = left.min(buf.len() as u64) as usize;
                let data = buf.split_to(take).freeze();
                *state = if take as u64 == left { Chunk::DataEnd } else { Chunk::Data(left - take as u64) };
                return Ok(Decoded::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|b| *b != b'\r') {
                        return Err("chunk data not followed by CRLF");
                    }
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *state = Chunk::Done;
                    return Ok(Decoded::End);
                }
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                let mut storage = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                match httparse::parse_headers(buf, &mut storage) {
                    Ok(httparse::Status::Complete((n, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "invalid trailer name")?;
                            let value = HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer value")?;
                            trailers.append(name, value);
                        }
                        buf.advance(n);
                        *state = Chunk::Done;
                        return Ok(Decoded::Trailers(trailers));
                    }
                    Ok(httparse::Status::Partial) => {
                        if buf.len() > MAX_TRAILER_BYTES {
                            return Err("trailer section too large");
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    Err(_) => return Err("malformed trailer section"),
                }
            }
            Chunk::Done => return Ok(Decoded::End),
        }
    }
}

pub(crate) fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

pub(crate) fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[((n >> (4 * i)) & 0xf) as usize]);
    }
}

pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder wanted more bytes than the input had (not a framing error).
    const ENDED: &str = "the input ended";

    /// What a chunked body decoded to: its data, its trailers, and the bytes left after it.
    type Dechunked = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Decodes `input` fed in pieces of `step` bytes.
    fn dechunk(input: &[u8], step: usize) -> Result<Dechunked, &'static str> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decode_chunked(&mut state, &mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((data, Some(t), buf.to_vec())),
                Decoded::End => return Ok((data, None, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(ENDED);
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        type Case = (&'static str, &'static str, Option<(&'static str, &'static str)>);
        let cases: &[Case] = &[
            ("5\r\nhello\r\n0\r\n\r\n", "hello", None),
            ("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", "hello world", None),
            ("A;ext=1\r\n0123456789\r\n0\r\n\r\n", "0123456789", None),
            ("3 \r\nabc\r\n0\r\n\r\n", "abc", None),
            ("3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n", "abc", Some(("grpc-status", "0"))),
            ("0\r\n\r\n", "", None),
        ];
        for (input, want, trailer) in cases {
            for step in [1, 2, 3, 7, input.len()] {
                let (data, trailers, rest) =
                    dechunk(input.as_bytes(), step).unwrap_or_else(|e| panic!("{input:?}: {e}"));
                assert_eq!(String::from_utf8(data).unwrap(), *want, "{input:?} step {step}");
                match trailer {
                    Some((k, v)) => assert_eq!(trailers.unwrap().get(*k).unwrap(), v, "{input:?}"),
                    None => assert!(trailers.is_none()),
                }
                if step == input.len() {
                    let want_rest: &[u8] = if input.ends_with("NEXT") { b"NEXT" } else { b"" };
                    assert_eq!(rest, want_rest, "{input:?}");
                }
            }
        }
        for bad in [
            "x\r\n",
            "\r\n",
            "5\r\nhelloXY0\r\n\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "1000000000000000\r\n",
            "5 junk\r\nhello\r\n",
            "3;a=\x01\r\nabc\r\n",
        ] {
            assert!(matches!(dechunk(bad.as_bytes(), 1), Err(e) if e != ENDED), "{bad:?}");
        }
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE + 10));
        assert!(matches!(dechunk(long_ext.as_bytes(), 64), Err(e) if e != ENDED));
    }

    #[test]
    fn chunk_sizes_are_written_in_lowercase_hex() {
        for (n, want) in [(0u64, "0"), (9, "9"), (10, "a"), (255, "ff"), (4096, "1000"), (u64::MAX, "ffffffffffffffff")]
        {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(out, want.as_bytes(), "{n}");
        }
    }
}
