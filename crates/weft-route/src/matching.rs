//! Whether a route's match holds for a request (Envoy's `RouteMatch` semantics).

use std::borrow::Cow;

use http::header::GetAll;
use http::{HeaderMap, HeaderName, HeaderValue};
use weft_config::{HeaderMatcher, HeaderRule, PathMatch, QueryMatcher, RouteMatch};

use crate::uri::{equals, percent_decode, query_pairs, starts_with};
use crate::RequestView;

/// Where a header matcher reads its value from, resolved once when the table is built so the hot
/// path neither compares pseudo-header names nor parses header names.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Method,
    Authority,
    Path,
    /// The request view carries no scheme; Envoy's `:scheme` for plaintext listeners is `http`.
    Scheme,
    Header(HeaderName),
    /// A name that cannot occur in a request (rejected by config validation in practice).
    Never,
}

impl Source {
    pub(crate) fn of(name: &str) -> Source {
        match name {
            ":method" => Source::Method,
            ":authority" => Source::Authority,
            ":path" => Source::Path,
            ":scheme" => Source::Scheme,
            _ => HeaderName::from_bytes(name.as_bytes()).map(Source::Header).unwrap_or(Source::Never),
        }
    }
}

/// A route's match with its header sources resolved; the rules themselves stay in the config.
pub(crate) struct CompiledMatch {
    pub(crate) header_sources: Box<[Source]>,
}

impl CompiledMatch {
    pub(crate) fn new(m: &RouteMatch) -> CompiledMatch {
        CompiledMatch { header_sources: m.headers.iter().map(|h| Source::of(&h.name)).collect() }
    }
}

/// The parts of the request target, split once per request rather than once per route.
pub(crate) struct Target<'a> {
    /// Without query and fragment: what every path matcher sees (Envoy's `PathMatcher` strips
    /// both before `prefix`, `path`, `safe_regex` and `path_separated_prefix` alike).
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
}

pub(crate) fn route_matches(m: &RouteMatch, c: &CompiledMatch, req: &RequestView<'_>, t: &Target<'_>) -> bool {
    // Envoy's `connect_matcher`: CONNECT requests have no path and meet only these routes.
    let path_ok = if m.connect || req.method == "CONNECT" {
        m.connect && req.method == "CONNECT"
    } else {
        match &m.path {
            PathMatch::Prefix(p) => starts_with(t.path, p, m.case_sensitive),
            PathMatch::Exact(p) => equals(t.path, p, m.case_sensitive),
            // `case_sensitive` does not apply to regexes in Envoy; the pattern is anchored (full match).
            PathMatch::Regex(r) => r.is_match(t.path),
            PathMatch::PathSeparatedPrefix(p) => {
                starts_with(t.path, p, m.case_sensitive) && matches!(t.path.as_bytes().get(p.len()), None | Some(b'/'))
            }
        }
    };
    // Cheap checks first; header and query matching may join values or percent-decode.
    path_ok
        && (!m.grpc || req.is_grpc)
        && m.headers.iter().zip(c.header_sources.iter()).all(|(h, s)| header_holds(h, request_value(s, req)))
        && m.query.iter().all(|q| query_holds(q, t.query))
}

fn request_value<'a>(s: &Source, req: &RequestView<'a>) -> Option<Cow<'a, str>> {
    match s {
        Source::Method => Some(Cow::Borrowed(req.method)),
        Source::Authority => Some(Cow::Borrowed(req.authority)),
        Source::Path => Some(Cow::Borrowed(req.path)),
        Source::Scheme => Some(Cow::Borrowed("http")),
        Source::Header(name) => joined(req.headers.get_all(name)),
        Source::Never => None,
    }
}

/// A header's value as Envoy matches it: every value of the name joined with `,`; None when the
/// header is absent. Bytes that are not UTF-8 (obs-text) become U+FFFD rather than making a
/// present header look absent.
pub(crate) fn joined(values: GetAll<'_, HeaderValue>) -> Option<Cow<'_, str>> {
    let mut it = values.iter();
    let first = it.next()?;
    let Some(second) = it.next() else {
        return Some(String::from_utf8_lossy(first.as_bytes()));
    };
    let mut out = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in std::iter::once(second).chain(it) {
        out.push(',');
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(Cow::Owned(out))
}

/// Envoy's header matcher truth table. A present header: the rule's result, negated by `invert`.
/// An absent header: `present` rules compare presence (so `present: false` holds, and
/// `present: true, invert: true` holds); a value rule never holds, inverted or not — Envoy only
/// lets an absent header satisfy an inverted value rule with `treat_missing_header_as_empty`,
/// which the model does not carry.
fn header_holds(h: &HeaderMatcher, value: Option<Cow<'_, str>>) -> bool {
    match (&h.rule, value) {
        (HeaderRule::Present(want), v) => (v.is_some() == *want) != h.invert,
        (HeaderRule::Value(_), None) => false,
        (HeaderRule::Value(sm), Some(v)) => sm.matches(&v) != h.invert,
    }
}

/// Evaluates one header matcher against a header map, with the same semantics as route
/// matching (joined values, the absent-header rules above). Meant for matchers on responses,
/// such as a retry policy's `retriable_headers`; pseudo-header names never match a map.
pub fn header_matches(m: &HeaderMatcher, headers: &HeaderMap) -> bool {
    // `get_all` with a name that is not a valid header name finds nothing; it does not panic.
    header_holds(m, joined(headers.get_all(m.name.as_str())))
}

/// Envoy's query parameter matcher: only the first occurrence of the name counts; names and
/// values are percent-decoded; no value rule means "present with any value".
fn query_holds(q: &QueryMatcher, query: &str) -> bool {
    let first = query_pairs(query).find(|(k, _)| percent_decode(k) == q.name.as_str());
    match (first, &q.value) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((_, v)), Some(sm)) => sm.matches(&percent_decode(v)),
    }
}
