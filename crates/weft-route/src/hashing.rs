//! The request hash for ring-hash and Maglev balancing (Envoy's `hash_policy`).

use std::io::Write;
use std::net::IpAddr;

use http::header::COOKIE;
use http::HeaderMap;
use weft_config::HashPolicy;

use crate::uri::{query_pairs, split_target};

/// The request's hash, or None when no policy produced a value (the balancer then picks as if
/// unhashed). Envoy semantics:
///
/// * policies are evaluated in order; each that finds its value contributes `xxh64(value)`,
///   combined as `acc = rotl(acc, 1) ^ h` (the rotation keeps two identical policies from
///   cancelling out);
/// * after a `terminal` policy, evaluation stops if a hash exists so far — from that policy or
///   an earlier one, exactly as Envoy checks the accumulated hash; a terminal policy that found
///   nothing with nothing before it lets the next policies act as fallbacks;
/// * header: all values of the header, sorted and joined with `,` so their order does not
///   matter (Envoy sorts them too);
/// * cookie: the named cookie from the `cookie` header(s), surrounding quotes removed. When the
///   cookie is absent and the policy has a `ttl`, Envoy generates the cookie and sets it on the
///   response; that is not done here (the policy simply produces nothing);
/// * source IP: the textual address (`10.0.0.1`, `2001:db8::1`), as Envoy hashes it;
/// * query parameter: the first value of the parameter, not percent-decoded (Envoy hashes it
///   raw).
///
/// Values are hashed with `weft_lb::hash_bytes` (xxHash64, seed 0), so every proxy instance
/// maps a request to the same point on the ring.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    path_and_query: &str,
    source_ip: Option<IpAddr>,
) -> Option<u64> {
    let mut acc: Option<u64> = None;
    for p in policies {
        let (h, terminal) = match p {
            HashPolicy::Header { name, terminal } => (header_hash(headers, name), *terminal),
            HashPolicy::Cookie { name, terminal, .. } => {
                (cookie_value(headers, name).map(|v| weft_lb::hash_bytes(v.as_bytes())), *terminal)
            }
            HashPolicy::SourceIp { terminal } => (source_ip.map(ip_hash), *terminal),
            HashPolicy::QueryParameter { name, terminal } => {
                let (_, query) = split_target(path_and_query);
                let v = query_pairs(query).find(|(k, _)| *k == name.as_str()).map(|(_, v)| v);
                (v.map(|v| weft_lb::hash_bytes(v.as_bytes())), *terminal)
            }
        };
        if let Some(h) = h {
            acc = Some(acc.map_or(0, |a| a.rotate_left(1)) ^ h);
        }
        if terminal && acc.is_some() {
            break;
        }
    }
    acc
}

fn header_hash(headers: &HeaderMap, name: &str) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        // The common single-valued case hashes in place.
        return Some(weft_lb::hash_bytes(first.as_bytes()));
    };
    let mut all: Vec<&[u8]> = [first, second].into_iter().chain(values).map(|v| v.as_bytes()).collect();
    all.sort_unstable();
    Some(weft_lb::hash_bytes(&all.join(&b","[..])))
}

fn ip_hash(ip: IpAddr) -> u64 {
    // The longest textual address (IPv4-mapped IPv6) is 45 bytes; format on the stack.
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    let n = match write!(w, "{ip}") {
        Ok(()) => 64 - w.len(),
        Err(_) => 0,
    };
    weft_lb::hash_bytes(&buf[..n])
}

/// The value of cookie `name` across all `cookie` headers, as Envoy parses it: pairs split on
/// `;`, leading whitespace trimmed, the first pair with that exact name wins, and a value wrapped
/// in double quotes is unwrapped.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (k, v) = pair.trim_start().split_once('=')?;
        if k != name {
            return None;
        }
        let v = v.trim_end();
        Some(match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) => inner,
            None => v,
        })
    })
}
