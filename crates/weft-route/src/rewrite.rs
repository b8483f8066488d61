//! Upstream path rewrites and redirect locations.

use regex::{Captures, Replacer};
use weft_config::{Forward, PathMatch, Redirect};

use crate::uri::{split_port, split_target, starts_with};

/// The new path and query for a forwarded request, or None when the route rewrites nothing.
///
/// * `prefix_rewrite` replaces what the route matched: for `prefix` and `path_separated_prefix`
///   the matched prefix of the path; for an exact `path` and for `safe_regex` the whole path
///   (Envoy's `RegexRouteEntryImpl` treats the whole query-less path as the matched part). The
///   rest, query included, is kept verbatim — Envoy adds or removes no `/`, so prefix `/api`
///   with rewrite `/` turns `/api/users` into `//users`; use prefix `/api/` for `/users`.
///   None when `path_and_query` is not one the route matched (a caller mismatch).
/// * `regex_rewrite` substitutes every match of its pattern in the path (not the query), with
///   RE2-style `\1` group references, keeping the query. None when the pattern does not occur.
pub fn rewrite_path(fw: &Forward, matched: &PathMatch, path_and_query: &str) -> Option<String> {
    if let Some(new_prefix) = &fw.prefix_rewrite {
        return replace_matched(new_prefix, matched, path_and_query);
    }
    let rr = fw.regex_rewrite.as_ref()?;
    let (path, _) = split_target(path_and_query);
    let rest = &path_and_query[path.len()..];
    let mut out = String::with_capacity(path_and_query.len() + rr.substitution.len());
    let mut last = 0;
    let mut any = false;
    let mut sub = Re2Substitution(&rr.substitution);
    // Hand-rolled replace_all: it expands `\N` without first converting the substitution into the
    // regex crate's `${N}` syntax (an allocation per request), and tells "no match" apart.
    for caps in rr.pattern.0.captures_iter(path) {
        let Some(m) = caps.get(0) else { continue };
        out.push_str(&path[last..m.start()]);
        sub.replace_append(&caps, &mut out);
        last = m.end();
        any = true;
    }
    if !any {
        return None;
    }
    out.push_str(&path[last..]);
    out.push_str(rest);
    Some(out)
}

/// `prefix_rewrite` shared by forwarding and redirects.
fn replace_matched(new_prefix: &str, matched: &PathMatch, path_and_query: &str) -> Option<String> {
    let (path, _) = split_target(path_and_query);
    let cut = match matched {
        // The rewrite may follow a case-insensitive match, so the check ignores case: a
        // case-sensitive match passes it too.
        PathMatch::Prefix(p) | PathMatch::PathSeparatedPrefix(p) if starts_with(path, p, false) => p.len(),
        PathMatch::Exact(p) if path.eq_ignore_ascii_case(p) => path.len(),
        PathMatch::Regex(r) if r.is_match(path) => path.len(),
        _ => return None,
    };
    // `get`: a multi-byte character straddling the cut means the caller passed a path the route
    // did not match; decline rather than slice through it.
    let rest = path_and_query.get(cut..)?;
    let mut out = String::with_capacity(new_prefix.len() + rest.len());
    out.push_str(new_prefix);
    out.push_str(rest);
    Some(out)
}

/// RE2 rewrite syntax: `\0`..`\9` insert groups, `\\` is a backslash; everything else, `$`
/// included, is literal (the regex crate would read `$` as a group reference).
struct Re2Substitution<'s>(&'s str);

impl Replacer for Re2Substitution<'_> {
    fn replace_append(&mut self, caps: &Captures<'_>, dst: &mut String) {
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                dst.push(c);
                continue;
            }
            match chars.clone().next() {
                Some(d @ '0'..='9') => {
                    chars.next();
                    // An absent or non-participating group expands to nothing, as in RE2.
                    if let Some(g) = caps.get(d as usize - '0' as usize) {
                        dst.push_str(g.as_str());
                    }
                }
                Some('\\') => {
                    chars.next();
                    dst.push('\\');
                }
                // RE2 rejects other escapes at config time; keep the backslash literally.
                _ => dst.push('\\'),
            }
        }
    }
}

/// The `Location` of a redirect route, keeping what the redirect does not override (Envoy):
///
/// * scheme: the override, else the request's `scheme`.
/// * host: the override (which drops the request's port, as Envoy uses it verbatim), else the
///   request's host and port. When the scheme changes, a request port that is the old scheme's
///   default (`http` + 80, `https` + 443) is dropped, so `http://a:80` → `https://a`.
/// * port: the override (0 means none, as in Envoy's proto) replaces any port, including one
///   written into the host override. A port equal to the final scheme's default is not written.
/// * path: `path` replaces the path; `prefix_rewrite` replaces the matched part like
///   [`rewrite_path`]; else the path is kept.
/// * query: kept unless `strip_query`; a `?` inside the `path` override replaces the request's
///   query and is never stripped (Envoy).
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
    matched: &PathMatch,
) -> String {
    let new_scheme = r.scheme.as_deref().filter(|s| !s.is_empty()).unwrap_or(scheme);
    let scheme_changed = !new_scheme.eq_ignore_ascii_case(scheme);
    let (host, mut port) = match r.host.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => split_port(h),
        None => {
            let (h, p) = split_port(authority);
            (h, p.filter(|p| !(scheme_changed && is_default_port(scheme, p))))
        }
    };
    let port_override = r.port.filter(|p| *p != 0).map(|p| p.to_string());
    if let Some(p) = &port_override {
        port = Some(p.as_str());
    }
    let port = port.filter(|p| !is_default_port(new_scheme, p));

    let (path, query) = split_target(path_and_query);
    let mut loc = String::with_capacity(
        new_scheme.len() + 3 + host.len() + 6 + path_and_query.len() + r.path.as_ref().map_or(0, String::len) + 16,
    );
    loc.push_str(new_scheme);
    loc.push_str("://");
    loc.push_str(host);
    if let Some(p) = port {
        loc.push(':');
        loc.push_str(p);
    }
    let path_has_query = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => {
            loc.push_str(p);
            p.contains('?')
        }
        (None, Some(prefix)) => match replace_matched(prefix, matched, path) {
            Some(p) => {
                loc.push_str(&p);
                false
            }
            None => {
                loc.push_str(path);
                false
            }
        },
        (None, None) => {
            loc.push_str(path);
            false
        }
    };
    if !path_has_query && !r.strip_query && !query.is_empty() {
        loc.push('?');
        loc.push_str(query);
    }
    loc
}

fn is_default_port(scheme: &str, port: &str) -> bool {
    (scheme.eq_ignore_ascii_case("http") && port == "80") || (scheme.eq_ignore_ascii_case("https") && port == "443")
}
