//! Small, total helpers over request-target and authority strings.

use std::borrow::Cow;

/// Splits `host[:port]` (including `[v6]:port`) into the host and the port digits.
/// A trailing `:` with no digits, or a non-numeric "port", is not a port: the authority is
/// returned whole, so odd input never matches a domain it does not spell out.
pub(crate) fn split_port(authority: &str) -> (&str, Option<&str>) {
    // A byte loop: authorities are short, and `rfind` pays memrchr's set-up cost.
    let Some(colon) = authority.bytes().rposition(|b| b == b':') else {
        return (authority, None);
    };
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    let numeric = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    // A bare IPv6 address has colons of its own; only `[...]:port` carries a port.
    let host_ok = if host.starts_with('[') { host.ends_with(']') } else { !host.contains(':') };
    if numeric && host_ok {
        (host, Some(port))
    } else {
        (authority, None)
    }
}

/// Splits a request target into the path and the query, dropping any fragment (Envoy matches
/// paths "once the query string and fragment are removed").
pub(crate) fn split_target(target: &str) -> (&str, &str) {
    let path_end = target.find(['?', '#']).unwrap_or(target.len());
    let path = &target[..path_end];
    let query = match target[path_end..].strip_prefix('?') {
        Some(q) => q.split_once('#').map_or(q, |(q, _)| q),
        None => "",
    };
    (path, query)
}

/// Decodes `%XX` escapes as Envoy's query parsing does: only a `%` followed by two hex digits is
/// an escape, anything else (including `+`) stays literal. Bytes that do not form UTF-8 become
/// U+FFFD. Borrows when there is nothing to decode.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `key[=value]` pairs of a query string, in order; empty segments (`a=1&&b=2`) are skipped.
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|kv| !kv.is_empty()).map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// Whether `s` starts with `prefix`, optionally ignoring ASCII case (Envoy lowercases both sides).
pub(crate) fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

pub(crate) fn equals(s: &str, other: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s == other
    } else {
        s.eq_ignore_ascii_case(other)
    }
}
