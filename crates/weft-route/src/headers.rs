//! Request/response header manipulation (`*_headers_to_add` / `*_headers_to_remove`).

use http::{HeaderMap, HeaderName, HeaderValue};
use weft_config::HeaderOps;

/// Applies one level's header operations: removals first, then additions, as Envoy does (so a
/// level can replace a header by removing and adding it). `append: false` replaces every
/// existing value of the name; `append: true` adds one more value.
///
/// Envoy rules kept here:
/// * an add with an empty value is skipped (Envoy's default `keep_empty_value: false`), and an
///   existing header of that name is left alone;
/// * `host` is never added or removed (Envoy refuses to modify it and pseudo-headers; the
///   authority is the proxy's business, via `host_rewrite`).
///
/// Values are inserted literally: Envoy's command operators (`%DOWNSTREAM_REMOTE_ADDRESS%`,
/// `%REQ(name)%`, `%UPSTREAM_METADATA(...)%`, ...) are not expanded, and `%%` stays `%%`.
/// Expansion needs request context this crate does not see; the proxy would have to
/// substitute before calling, or the model would need a pre-parsed value template.
///
/// Names and values were validated at config load; anything that still fails to parse is
/// skipped, and a map already at `HeaderMap`'s capacity limit is left as it is. Never panics.
pub fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        if !is_protected(name) {
            // Removes every value; an invalid name finds nothing.
            headers.remove(name.as_str());
        }
    }
    for op in &ops.add {
        if op.value.is_empty() || is_protected(&op.name) {
            continue;
        }
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(op.name.as_bytes()), HeaderValue::from_str(&op.value))
        else {
            continue;
        };
        // The `try_` forms report a full map instead of panicking.
        let _ = if op.append {
            headers.try_append(name, value).map(drop)
        } else {
            headers.try_insert(name, value).map(drop)
        };
    }
}

fn is_protected(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}
