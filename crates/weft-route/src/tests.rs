//! Table-driven specifications. Tables are built through the config loader, so they exercise the
//! same validated model the proxy gets.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use weft_config::{
    ChainAction, Forward, HashPolicy, HeaderMatcher, HeaderOps, HeaderRule, HeaderValueOp, PathMatch, Pattern,
    RouteAction, RouteSource, StringMatch, WeightedCluster,
};

use super::*;

/// A route table from the `virtual_hosts:` list of one inline listener.
fn table(vhosts_yaml: &str) -> RouteTable {
    let indented: String = vhosts_yaml.lines().map(|l| format!("        {l}\n")).collect();
    let yaml = format!(
        "clusters: [{{name: c, endpoints: [127.0.0.1:1]}}, {{name: d, endpoints: [127.0.0.1:2]}}]\n\
         listeners:\n  - name: l\n    address: 127.0.0.1:1\n    http:\n      virtual_hosts:\n{indented}"
    );
    let b = weft_config::parse_str(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let ChainAction::Http(h) = &b.config.listeners[0].filter_chains[0].action else { panic!("not http") };
    let RouteSource::Inline(rc) = &h.routes else { panic!("not inline") };
    RouteTable::new(Arc::clone(rc))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

/// `vhost/route` names of the selection, for compact expectations.
fn pick(t: &RouteTable, authority: &str, port: u16, path: &str, method: &str, h: &HeaderMap, grpc: bool) -> String {
    let req = RequestView { authority, path, method, headers: h, is_grpc: grpc, port, exact_authority: false };
    match t.select(&req) {
        Some(s) => {
            // Indices and references must agree.
            assert!(std::ptr::eq(s.vhost, &t.config().virtual_hosts[s.vhost_index]));
            assert!(std::ptr::eq(s.route, &s.vhost.routes[s.route_index]));
            format!("{}/{}", s.vhost.name, s.route.name)
        }
        None => "none".into(),
    }
}

fn one_route_vhost(name: &str, domains: &str) -> String {
    format!("- {{name: {name}, domains: [{domains}], routes: [{{name: r, route: {{cluster: c}}}}]}}\n")
}

// ---------------------------------------------------------------------------------------------
// Virtual hosts
// ---------------------------------------------------------------------------------------------

#[test]
fn virtual_hosts_are_chosen_exact_then_longest_suffix_then_longest_prefix_then_any() {
    let t = table(
        &[
            one_route_vhost("exact", "api.example.com"),
            one_route_vhost("exact-port", "\"api.example.com:9000\", \"svc:8080\""),
            one_route_vhost("reviews", "reviews, \"[::1]\""),
            one_route_vhost("suffix-short", "\"*.com\""),
            one_route_vhost("suffix-long", "\"*.example.com\""),
            one_route_vhost("suffix-dot", "\"*.foo.com\""),
            one_route_vhost("suffix-dash", "\"*-bar.foo.com\""),
            one_route_vhost("suffix-port", "\"*.mesh:15000\""),
            one_route_vhost("prefix-short", "\"foo.*\""),
            one_route_vhost("prefix-long", "\"foo.bar.*\""),
            one_route_vhost("prefix-dash", "\"foo-*\""),
            one_route_vhost("any", "\"*\""),
        ]
        .concat(),
    );
    let cases: &[(&str, u16, &str, &str)] = &[
        // (authority, listener port, expected vhost, why)
        ("api.example.com", 80, "exact", "exact domain"),
        ("API.Example.COM", 80, "exact", "domains compare case-insensitively"),
        ("api.example.com:80", 80, "exact", "a port not listed falls back to the bare host"),
        ("api.example.com:9000", 80, "exact-port", "host:port domain matched as sent"),
        ("svc", 8080, "exact-port", "no port in the authority: host:listener-port is tried"),
        ("svc", 9090, "any", "host:listener-port does not exist"),
        ("svc", 0, "any", "port 0 is unknown: nothing is appended"),
        ("svc:8080", 9090, "exact-port", "the authority's port wins over the listener's"),
        ("reviews:9080", 9080, "reviews", "reviews:9080 is not a domain, reviews is"),
        ("[::1]:8080", 80, "reviews", "IPv6 literal with a port"),
        ("[::1]", 80, "reviews", "IPv6 literal without a port"),
        ("www.example.com", 80, "suffix-long", "longest suffix wins over *.com"),
        ("www.EXAMPLE.com:443", 80, "suffix-long", "wildcards see the host without its port too"),
        ("other.com", 80, "suffix-short", "only the short suffix fits"),
        (".example.com", 80, "suffix-short", "a wildcard never matches an empty label"),
        ("baz-bar.foo.com", 80, "suffix-dash", "*-bar.foo.com is longer than *.foo.com"),
        ("-bar.foo.com", 80, "suffix-dot", "*-bar.foo.com needs at least one character"),
        ("x.bar.foo.com", 80, "suffix-dot", "a wildcard spans several labels"),
        ("a.mesh:15000", 80, "suffix-port", "a wildcard domain may carry a port"),
        ("a.mesh", 15000, "suffix-port", "...also reached through the listener port"),
        ("foo.example.com", 80, "suffix-long", "suffix wildcards beat prefix wildcards"),
        ("foo.bar.baz", 80, "prefix-long", "longest prefix wins"),
        ("foo.baz", 80, "prefix-short", "only the short prefix fits"),
        ("foo.baz:8080", 80, "prefix-short", "prefix wildcard with a port in the authority"),
        ("foo-x", 80, "prefix-dash", "dash prefix"),
        ("foo.", 80, "any", "a prefix wildcard never matches an empty remainder"),
        ("example.org", 80, "any", "nothing else matches"),
        ("", 80, "any", "an empty authority reaches only *"),
        ("api.example.com.", 80, "any", "a trailing dot is not stripped (Envoy default)"),
        ("host:notaport", 80, "any", "a non-numeric port is part of the name"),
        ("ünïcode.example.com", 80, "suffix-long", "non-ASCII hosts are compared bytewise"),
    ];
    let h = HeaderMap::new();
    for (authority, port, want, why) in cases {
        assert_eq!(pick(&t, authority, *port, "/", "GET", &h, false), format!("{want}/r"), "{authority}: {why}");
    }

    let no_any = table(&one_route_vhost("only", "a.com, \"*.b.com\""));
    for miss in ["b.com", "a.comx", "xa.com", "", "*", "a.com:"] {
        assert_eq!(pick(&no_any, miss, 80, "/", "GET", &h, false), "none", "{miss:?} must not match");
    }
}

#[test]
fn forward_proxy_requests_match_the_authority_as_sent_and_connect_meets_only_connect_routes() {
    let t = table(
        "- name: reviews\n\
         \x20 domains: [reviews, \"reviews:80\", \"reviews:9080\"]\n\
         \x20 routes:\n\
         \x20   - {name: tunnel, match: {connect: true}, route: {cluster: d}}\n\
         \x20   - {name: http, route: {cluster: c}}\n\
         - name: db\n\
         \x20 domains: [\"db:5432\"]\n\
         \x20 routes: [{name: tunnel, match: {connect: true}, route: {cluster: d}}]\n\
         - name: wild\n\
         \x20 domains: [\"*.ext.example:443\"]\n\
         \x20 routes: [{name: tunnel, match: {connect: true}, route: {cluster: d}}]\n\
         - {name: any, domains: [\"*\"], routes: [{name: http, route: {cluster: c}}, {name: tunnel, match: {connect: true}, route: {cluster: c}}]}\n",
    );
    let h = HeaderMap::new();
    let pick_exact = |authority: &str, method: &str| {
        let req = RequestView {
            authority,
            path: "/",
            method,
            headers: &h,
            is_grpc: false,
            port: 15080,
            exact_authority: true,
        };
        t.select(&req).map(|s| format!("{}/{}", s.vhost.name, s.route.name)).unwrap_or_else(|| "none".into())
    };
    // (authority, method, expected vhost/route, why)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("reviews:9080", "GET", "reviews/http", "host:port as sent"),
        ("reviews", "GET", "reviews/http", "bare host as sent"),
        ("reviews:1234", "GET", "any/http", "a port the mesh does not list is not dropped"),
        ("reviews:9080", "CONNECT", "reviews/tunnel", "CONNECT meets only the connect route"),
        ("db:5432", "CONNECT", "db/tunnel", "TCP service tunnel"),
        ("db:5432", "GET", "none", "a connect route never serves a plain request"),
        ("db", "CONNECT", "any/tunnel", "no port added: db:15080 is not tried"),
        ("api.ext.example:443", "CONNECT", "wild/tunnel", "wildcard with port"),
        ("api.ext.example:8443", "CONNECT", "any/tunnel", "the wildcard's port must match"),
        ("elsewhere:80", "CONNECT", "any/tunnel", "unknown destinations reach the catch-all"),
    ];
    for (authority, method, want, why) in cases {
        assert_eq!(pick_exact(authority, method), *want, "{method} {authority}: {why}");
    }
    // Without `exact_authority` (origin-form requests) the usual fallbacks apply, and CONNECT
    // still only meets connect routes.
    assert_eq!(pick(&t, "reviews:1234", 80, "/", "GET", &h, false), "reviews/http");
    assert_eq!(pick(&t, "reviews:1234", 80, "/", "CONNECT", &h, false), "reviews/tunnel");
}

#[test]
fn a_thousand_virtual_hosts_resolve_through_the_index() {
    let mut y = String::new();
    for i in 0..1000 {
        let d = match i % 4 {
            0 => format!("\"svc-{i}.ns.svc.cluster.local\", \"svc-{i}.ns.svc.cluster.local:80\""),
            1 => format!("\"*.w{i}.example.com\""),
            2 => format!("\"p{i}-*\""),
            _ => format!("\"*{}-{i}.z\"", "x".repeat(i % 37)),
        };
        y.push_str(&one_route_vhost(&format!("v{i}"), &d));
    }
    let t = table(&y);
    let h = HeaderMap::new();
    for i in 0..1000 {
        let authority = match i % 4 {
            0 => format!("svc-{i}.ns.svc.cluster.local"),
            1 => format!("a.b.w{i}.example.com"),
            2 => format!("p{i}-anything"),
            _ => format!("y{}-{i}.z", "x".repeat(i % 37)),
        };
        assert_eq!(pick(&t, &authority, 80, "/", "GET", &h, false), format!("v{i}/r"), "{authority}");
    }
    assert_eq!(pick(&t, "svc-1.ns.svc.cluster.local", 80, "/", "GET", &h, false), "none");
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[test]
fn the_first_route_whose_match_holds_is_selected() {
    let t = table(
        r#"- name: v
  domains: ["*"]
  routes:
    - {name: exact, match: {path: /exact}, route: {cluster: c}}
    - {name: exact-ci, match: {path: /CI, case_sensitive: false}, route: {cluster: c}}
    - {name: prefix-ci, match: {prefix: /Mixed/, case_sensitive: false}, route: {cluster: c}}
    - {name: prefix-query, match: {prefix: "/search?q="}, route: {cluster: c}}
    - {name: regex, match: {regex: "/items/[0-9]+"}, route: {cluster: c}}
    - {name: sep, match: {path_separated_prefix: /api}, route: {cluster: c}}
    - {name: sep-ci, match: {path_separated_prefix: /CaSe, case_sensitive: false}, route: {cluster: c}}
    - {name: header-exact, match: {prefix: /h, headers: [{name: x-user, exact: jason}]}, route: {cluster: c}}
    - {name: header-regex, match: {prefix: /h, headers: [{name: x-user, regex: "a.*"}]}, route: {cluster: c}}
    - {name: header-absent, match: {prefix: /h, headers: [{name: x-user, present: false}]}, route: {cluster: c}}
    - {name: header-inverted, match: {prefix: /h, headers: [{name: x-user, prefix: z, invert: true}]}, route: {cluster: c}}
    - {name: inv-absent, match: {prefix: /inv, headers: [{name: x-flag, exact: "on", invert: true}]}, route: {cluster: c}}
    - {name: inv-present, match: {prefix: /inv, headers: [{name: x-flag, present: true, invert: true}]}, route: {cluster: c}}
    - {name: present, match: {prefix: /present, headers: [{name: x-any}]}, route: {cluster: c}}
    - {name: multi-value, match: {prefix: /m, headers: [{name: x-v, exact: "1,2"}]}, route: {cluster: c}}
    - {name: suffix, match: {prefix: /s, headers: [{name: x-s, suffix: .end}]}, route: {cluster: c}}
    - {name: contains, match: {prefix: /s, headers: [{name: x-s, contains: mid}]}, route: {cluster: c}}
    - {name: all-headers, match: {prefix: /both, headers: [{name: x-a, exact: "1"}, {name: x-b, exact: "2"}]}, route: {cluster: c}}
    - {name: method, match: {prefix: /verb, methods: [POST, PUT]}, route: {cluster: c}}
    - {name: authority, match: {prefix: /auth, headers: [{name: ":authority", exact: host.a}]}, route: {cluster: c}}
    - {name: pseudo-path, match: {prefix: /pp, headers: [{name: ":path", suffix: "?x=1"}]}, route: {cluster: c}}
    - {name: scheme, match: {prefix: /scheme, headers: [{name: ":scheme", exact: http}]}, route: {cluster: c}}
    - {name: query-exact, match: {prefix: /q, query_parameters: [{name: debug, exact: "on now"}]}, route: {cluster: c}}
    - {name: query-present, match: {prefix: /q, query_parameters: [{name: trace}]}, route: {cluster: c}}
    - {name: query-both, match: {prefix: /qq, query_parameters: [{name: a, exact: "1"}, {name: b, regex: "[0-9]+"}]}, route: {cluster: c}}
    - {name: grpc, match: {prefix: /pkg.Svc/, grpc: true}, route: {cluster: c}}
    - {name: first-of-two, match: {prefix: /dup}, route: {cluster: c}}
    - {name: second-of-two, match: {prefix: /dup}, route: {cluster: d}}
    - {name: fallback, match: {prefix: /}, route: {cluster: d}}"#,
    );
    let non_utf8 = {
        let mut h = HeaderMap::new();
        h.insert("x-any", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        h
    };
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], bool, &'a str, &'a str);
    let cases: &[Case] = &[
        // (path, method, headers, grpc, expected route, why)
        ("/exact", "GET", &[], false, "exact", "exact path"),
        ("/exact?x=1", "GET", &[], false, "exact", "the query is not part of an exact path"),
        ("/exact#frag", "GET", &[], false, "exact", "nor is a fragment"),
        ("/exact/more", "GET", &[], false, "fallback", "exact is not a prefix"),
        ("/Exact", "GET", &[], false, "fallback", "case-sensitive by default"),
        ("/ci", "GET", &[], false, "exact-ci", "case_sensitive=false, exact"),
        ("/mixed/x", "GET", &[], false, "prefix-ci", "case_sensitive=false, prefix"),
        ("/MIXED/x", "GET", &[], false, "prefix-ci", "case_sensitive=false, prefix (upper)"),
        ("/search?q=rust", "GET", &[], false, "fallback", "a prefix sees the path without the query"),
        ("/search?q=/x", "GET", &[], false, "fallback", "...even when the query looks like the rest"),
        ("/items/42", "GET", &[], false, "regex", "regex"),
        ("/items/42?x=1", "GET", &[], false, "regex", "regex sees the path without the query"),
        ("/items/42x", "GET", &[], false, "fallback", "regex must match the whole path (not partial)"),
        ("/xx/items/42", "GET", &[], false, "fallback", "regex must match from the start"),
        ("/api", "GET", &[], false, "sep", "path_separated_prefix: exact"),
        ("/api/", "GET", &[], false, "sep", "path_separated_prefix: followed by /"),
        ("/api/v1", "GET", &[], false, "sep", "path_separated_prefix: segment below"),
        ("/api?x=1", "GET", &[], false, "sep", "path_separated_prefix: query is not part of the path"),
        ("/apix", "GET", &[], false, "fallback", "path_separated_prefix: not at a / boundary"),
        ("/case/x", "GET", &[], false, "sep-ci", "path_separated_prefix, case-insensitive"),
        ("/h", "GET", &[("x-user", "jason")], false, "header-exact", "header exact"),
        ("/h", "GET", &[("x-user", "alice")], false, "header-regex", "header regex"),
        ("/h", "GET", &[("x-user", "xalice")], false, "header-inverted", "header regex is a full match"),
        ("/h", "GET", &[], false, "header-absent", "present: false holds for an absent header"),
        ("/h", "GET", &[("x-user", "bob")], false, "header-inverted", "inverted prefix, other value"),
        ("/h", "GET", &[("x-user", "zed")], false, "fallback", "inverted prefix, matching value"),
        ("/inv", "GET", &[("x-flag", "off")], false, "inv-absent", "inverted exact, other value"),
        ("/inv", "GET", &[], false, "inv-present", "absent header: inverted value rule fails (Envoy)"),
        ("/inv", "GET", &[("x-flag", "on")], false, "fallback", "inverted exact, matching value"),
        ("/present", "GET", &[("x-any", "")], false, "present", "an empty value is present"),
        ("/present", "GET", &[], false, "fallback", "absent is not present"),
        ("/m", "GET", &[("x-v", "1"), ("x-v", "2")], false, "multi-value", "values joined with ,"),
        ("/m", "GET", &[("x-v", "1")], false, "fallback", "one value alone"),
        ("/s", "GET", &[("x-s", "the.end")], false, "suffix", "header suffix"),
        ("/s", "GET", &[("x-s", "a mid b")], false, "contains", "header contains"),
        ("/both", "GET", &[("x-a", "1"), ("x-b", "2")], false, "all-headers", "all header matchers hold"),
        ("/both", "GET", &[("x-a", "1")], false, "fallback", "one header matcher fails"),
        ("/verb", "POST", &[], false, "method", "methods"),
        ("/verb", "GET", &[], false, "fallback", "other method"),
        ("/auth", "GET", &[], false, "fallback", ":authority compares the authority"),
        ("/pp?x=1", "GET", &[], false, "pseudo-path", ":path includes the query"),
        ("/scheme", "GET", &[], false, "scheme", ":scheme is http"),
        ("/q?debug=on%20now", "GET", &[], false, "query-exact", "query values are percent-decoded"),
        ("/q?de%62ug=on%20now", "GET", &[], false, "query-exact", "query names are percent-decoded"),
        ("/q?debug=on+now", "GET", &[], false, "fallback", "+ is not a space (Envoy decodes %XX only)"),
        ("/q?debug=off&debug=on%20now", "GET", &[], false, "fallback", "only the first value counts"),
        ("/q?a=1&trace", "GET", &[], false, "query-present", "present without a value"),
        ("/q?trace=", "GET", &[], false, "query-present", "present with an empty value"),
        ("/q?tracex=1", "GET", &[], false, "fallback", "names compare whole"),
        ("/qq?b=22&a=1", "GET", &[], false, "query-both", "all query matchers hold, any order"),
        ("/qq?a=1&b=x", "GET", &[], false, "fallback", "one query matcher fails"),
        ("/qq?a=1&&b=2#b=x", "GET", &[], false, "query-both", "empty pairs skipped, fragment ignored"),
        ("/pkg.Svc/Call", "POST", &[], true, "grpc", "grpc route, grpc request"),
        ("/pkg.Svc/Call", "POST", &[], false, "fallback", "grpc route, plain request"),
        ("/dup", "GET", &[], false, "first-of-two", "first match wins"),
    ];
    for (path, method, hs, grpc, want, why) in cases {
        assert_eq!(
            pick(&t, "any", 80, path, method, &headers(hs), *grpc),
            format!("v/{want}"),
            "{method} {path} {hs:?}: {why}"
        );
    }
    assert_eq!(pick(&t, "host.a", 80, "/auth", "GET", &HeaderMap::new(), false), "v/authority");
    assert_eq!(pick(&t, "any", 80, "/present", "GET", &non_utf8, false), "v/present", "obs-text value is present");

    let no_fallback =
        table("- {name: v, domains: [\"*\"], routes: [{name: r, match: {path: /only}, route: {cluster: c}}]}");
    assert_eq!(pick(&no_fallback, "x", 80, "/other", "GET", &HeaderMap::new(), false), "none", "no route matches");
}

#[test]
fn header_matches_applies_route_semantics_to_any_header_map() {
    let m = |rule: HeaderRule, invert: bool| HeaderMatcher { name: "x-h".into(), rule, invert };
    let exact = |s: &str| HeaderRule::Value(StringMatch::Exact(s.into()));
    type Case<'a> = (HeaderMatcher, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        (m(exact("a"), false), &[("x-h", "a")], true),
        (m(exact("a"), true), &[("x-h", "a")], false),
        (m(exact("a"), true), &[("x-h", "b")], true),
        (m(exact("a"), true), &[], false),
        (m(exact("a,b"), false), &[("x-h", "a"), ("x-h", "b")], true),
        (m(HeaderRule::Present(true), false), &[("x-h", "")], true),
        (m(HeaderRule::Present(true), false), &[], false),
        (m(HeaderRule::Present(true), true), &[], true),
        (m(HeaderRule::Present(false), false), &[], true),
        (m(HeaderRule::Present(false), true), &[], false),
        (m(HeaderRule::Present(false), false), &[("x-h", "1")], false),
        (m(HeaderRule::Value(StringMatch::Regex(Pattern::full("[0-9]+").unwrap())), false), &[("x-h", "12")], true),
    ];
    for (i, (matcher, hs, want)) in cases.iter().enumerate() {
        assert_eq!(header_matches(matcher, &headers(hs)), *want, "case {i}: {matcher:?} on {hs:?}");
    }
    let bad = HeaderMatcher { name: "bad name".into(), rule: HeaderRule::Present(false), invert: false };
    assert!(header_matches(&bad, &HeaderMap::new()), "an unparseable name is simply absent");
}

// ---------------------------------------------------------------------------------------------
// Rewrites and redirects
// ---------------------------------------------------------------------------------------------

fn forward_of(t: &RouteTable, i: usize) -> (&Forward, &PathMatch) {
    let r = &t.config().virtual_hosts[0].routes[i];
    let RouteAction::Forward(f) = &r.action else { panic!("route {i} does not forward") };
    (f, &r.matcher.path)
}

#[test]
fn paths_are_rewritten_keeping_the_query() {
    let t = table(
        r#"- name: v
  domains: ["*"]
  routes:
    - {match: {prefix: /old/}, route: {cluster: c, prefix_rewrite: /new/}}
    - {match: {prefix: /api}, route: {cluster: c, prefix_rewrite: /}}
    - {match: {path: /exact}, route: {cluster: c, prefix_rewrite: /replaced}}
    - {match: {path_separated_prefix: /svc}, route: {cluster: c, prefix_rewrite: /backend}}
    - {match: {prefix: /CI, case_sensitive: false}, route: {cluster: c, prefix_rewrite: /lower}}
    - {match: {regex: "/re/.*"}, route: {cluster: c, prefix_rewrite: /x}}
    - {match: {prefix: /r}, route: {cluster: c, regex_rewrite: {pattern: "^/r/([^/]+)/(.*)$", substitution: "/\\2/\\1"}}}
    - {match: {prefix: /all}, route: {cluster: c, regex_rewrite: {pattern: "o", substitution: "0"}}}
    - {match: {prefix: /lit}, route: {cluster: c, regex_rewrite: {pattern: "^/lit/(.*)$", substitution: "/$1/\\\\/\\1\\9"}}}
    - {match: {prefix: /}, route: {cluster: c}}"#,
    );
    let cases: &[(usize, &str, Option<&str>, &str)] = &[
        // (route, path and query, expected, why)
        (0, "/old/x?q=1", Some("/new/x?q=1"), "prefix replaced, query kept"),
        (1, "/api/users", Some("//users"), "Envoy adds or removes no slash"),
        (1, "/api", Some("/"), "the whole path was the prefix"),
        (1, "/apiv2?x", Some("/v2?x"), "a plain prefix needs no boundary"),
        (2, "/exact?a=1", Some("/replaced?a=1"), "exact: the whole path, query kept"),
        (3, "/svc/a?b", Some("/backend/a?b"), "path_separated_prefix"),
        (3, "/svc?b", Some("/backend?b"), "path_separated_prefix, no remainder"),
        (4, "/ci/x", Some("/lower/x"), "case-insensitive match, rewrite by length"),
        (5, "/re/a?q", Some("/x?q"), "regex: the whole path is the matched part (Envoy)"),
        (5, "/other", None, "regex: a path the route did not match is not rewritten"),
        (0, "/elsewhere", None, "the matched prefix is not there: nothing to rewrite"),
        (6, "/r/a/b/c?q=/r/z/z", Some("/b/c/a?q=/r/z/z"), "RE2 groups; the query is not rewritten"),
        (7, "/all/foo?o=o", Some("/all/f00?o=o"), "every match is substituted"),
        (7, "/a", None, "pattern absent: no rewrite"),
        (8, "/lit/x", Some("/$1/\\/x"), "$ is literal, \\\\ is a backslash, missing groups are empty"),
        (9, "/unchanged", None, "no rewrite configured"),
    ];
    for (i, input, want, why) in cases {
        let (f, m) = forward_of(&t, *i);
        assert_eq!(rewrite_path(f, m, input).as_deref(), *want, "route {i}, {input}: {why}");
    }
    // A cut inside a multi-byte character must not panic.
    let (f, _) = forward_of(&t, 0);
    assert_eq!(rewrite_path(f, &PathMatch::Prefix("/é".into()), "/\u{e9}x"), Some("/new/x".into()));
    assert_eq!(rewrite_path(f, &PathMatch::Exact("/é".into()), "/e"), None);
}

#[test]
fn redirects_keep_what_they_do_not_override() {
    let route_of = |yaml: &str| {
        let t = table(&format!("- name: v\n  domains: [\"*\"]\n  routes:\n    - {yaml}"));
        let route = &t.config().virtual_hosts[0].routes[0];
        let RouteAction::Redirect(r) = &route.action else { panic!("not a redirect: {yaml}") };
        (r.clone(), route.matcher.path.clone())
    };
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        // (route, request scheme, authority, path and query, expected Location)
        ("{match: {prefix: /}, redirect: {}}", "http", "a.com:8080", "/x?y", "http://a.com:8080/x?y"),
        ("{match: {prefix: /}, redirect: {host: b.com}}", "http", "a.com:8080", "/x?y=1", "http://b.com/x?y=1"),
        ("{match: {prefix: /}, redirect: {host: \"b.com:81\"}}", "http", "a.com", "/x", "http://b.com:81/x"),
        ("{match: {prefix: /}, redirect: {host: \"b.com:81\", port: 82}}", "http", "a.com", "/", "http://b.com:82/"),
        ("{match: {prefix: /}, redirect: {scheme: https}}", "http", "a.com", "/x", "https://a.com/x"),
        ("{match: {prefix: /}, redirect: {scheme: https}}", "http", "a.com:80", "/x", "https://a.com/x"),
        ("{match: {prefix: /}, redirect: {scheme: https}}", "http", "a.com:8080", "/x", "https://a.com:8080/x"),
        ("{match: {prefix: /}, redirect: {scheme: http}}", "https", "a.com:443", "/x", "http://a.com/x"),
        ("{match: {prefix: /}, redirect: {scheme: https, port: 443}}", "http", "a.com:80", "/x", "https://a.com/x"),
        ("{match: {prefix: /}, redirect: {scheme: https, port: 8443}}", "http", "a.com", "/x", "https://a.com:8443/x"),
        ("{match: {prefix: /}, redirect: {port: 9000}}", "http", "a.com:80", "/x", "http://a.com:9000/x"),
        ("{match: {prefix: /}, redirect: {port: 80}}", "http", "a.com:8080", "/x", "http://a.com/x"),
        ("{match: {prefix: /}, redirect: {port: 0}}", "http", "a.com:8080", "/x", "http://a.com:8080/x"),
        ("{match: {prefix: /}, redirect: {port: 9000}}", "http", "[::1]:80", "/x", "http://[::1]:9000/x"),
        ("{match: {prefix: /}, redirect: {path: /new}}", "http", "a.com", "/x?y=1", "http://a.com/new?y=1"),
        (
            "{match: {prefix: /}, redirect: {path: /new, strip_query: true}}",
            "http",
            "a.com",
            "/x?y=1",
            "http://a.com/new",
        ),
        ("{match: {prefix: /}, redirect: {path: \"/n?z=2\"}}", "http", "a.com", "/x?y=1", "http://a.com/n?z=2"),
        (
            "{match: {prefix: /}, redirect: {path: \"/n?z=2\", strip_query: true}}",
            "http",
            "a.com",
            "/x?y",
            "http://a.com/n?z=2",
        ),
        (
            "{match: {prefix: /old}, redirect: {prefix_rewrite: /new}}",
            "http",
            "a.com",
            "/old/p?q",
            "http://a.com/new/p?q",
        ),
        (
            "{match: {prefix: /old}, redirect: {prefix_rewrite: /new, strip_query: true}}",
            "http",
            "a.com",
            "/old/p?q",
            "http://a.com/new/p",
        ),
        ("{match: {path: /old}, redirect: {prefix_rewrite: /new}}", "http", "a.com", "/old?q", "http://a.com/new?q"),
        (
            "{match: {regex: \"/o.*\"}, redirect: {prefix_rewrite: /new}}",
            "http",
            "a.com",
            "/old?q",
            "http://a.com/new?q",
        ),
        ("{match: {prefix: /}, redirect: {}}", "http", "", "/x", "http:///x"),
    ];
    for (yaml, scheme, authority, pq, want) in cases {
        let (rd, m) = route_of(yaml);
        assert_eq!(redirect_location(&rd, scheme, authority, pq, &m), *want, "{yaml} {scheme}://{authority}{pq}");
    }
}

// ---------------------------------------------------------------------------------------------
// Header operations
// ---------------------------------------------------------------------------------------------

fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
}

#[test]
fn header_ops_remove_first_then_add_or_append() {
    let add = |name: &str, value: &str, append: bool| HeaderValueOp { name: name.into(), value: value.into(), append };
    let ops = HeaderOps {
        add: vec![
            add("x-set", "new", false),
            add("x-app", "2", true),
            add("x-fresh", "1", true),
            add("x-fresh", "2", true),
            add("x-readd", "back", false),
            add("x-empty", "", false),
            add("host", "evil", false),
            add("x-var", "%DOWNSTREAM_REMOTE_ADDRESS%", false),
        ],
        remove: vec!["x-gone".into(), "x-readd".into(), "host".into(), "bad name".into()],
    };
    let mut h = headers(&[
        ("x-set", "old"),
        ("x-set", "old2"),
        ("x-app", "1"),
        ("x-gone", "1"),
        ("x-gone", "2"),
        ("x-readd", "old"),
        ("x-empty", "kept"),
        ("host", "a.com"),
    ]);
    apply_header_ops(&mut h, &ops);
    let cases: &[(&str, &[&str], &str)] = &[
        ("x-set", &["new"], "append=false replaces every value"),
        ("x-app", &["1", "2"], "append=true adds a value"),
        ("x-fresh", &["1", "2"], "appends to a new header accumulate"),
        ("x-gone", &[], "remove drops every value"),
        ("x-readd", &["back"], "removal happens before additions"),
        ("x-empty", &["kept"], "an empty value is not added (keep_empty_value: false)"),
        ("host", &["a.com"], "host is neither removed nor replaced"),
        ("x-var", &["%DOWNSTREAM_REMOTE_ADDRESS%"], "variables are not expanded"),
    ];
    for (name, want, why) in cases {
        assert_eq!(all(&h, name), *want, "{name}: {why}");
    }
    let mut untouched = h.clone();
    apply_header_ops(&mut untouched, &HeaderOps::default());
    assert_eq!(untouched, h, "empty ops change nothing");
}

// ---------------------------------------------------------------------------------------------
// Weighted clusters
// ---------------------------------------------------------------------------------------------

fn wc(name: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        name: name.into(),
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        host_rewrite: None,
    }
}

#[test]
fn weighted_picks_follow_cumulative_ranges() {
    let ws = vec![wc("a", 90), wc("zero", 0), wc("c", 10), wc("tail-zero", 0)];
    assert_eq!(total_weight(&ws), 100);
    let cases: &[(u64, &str, &str)] = &[
        (0, "a", "roll 0 is the first range"),
        (89, "a", "last value of a's range"),
        (90, "c", "first value of c's range; weight 0 is skipped"),
        (99, "c", "total - 1"),
        (100, "c", "a roll past the total lands on the last weighted cluster"),
        (u64::MAX, "c", "no overflow"),
    ];
    for (roll, want, why) in cases {
        assert_eq!(pick_weighted(&ws, *roll).name, *want, "roll {roll}: {why}");
    }
    let three = vec![wc("x", 1), wc("y", 1), wc("z", 1)];
    let picks: Vec<&str> = (0..3).map(|r| pick_weighted(&three, r).name.as_str()).collect();
    assert_eq!(picks, ["x", "y", "z"], "each unit of weight is one roll");

    assert_eq!(pick_weighted(&[wc("only", 0), wc("other", 0)], 5).name, "only", "all-zero picks the first");
    assert_eq!(pick_weighted(&[], 0).name, "", "an empty list yields the empty sentinel, no panic");
    assert_eq!(total_weight(&[]), 0);
    assert_eq!(total_weight(&[wc("m", u32::MAX), wc("n", u32::MAX)]), 2 * u64::from(u32::MAX));
}

// ---------------------------------------------------------------------------------------------
// Request hash
// ---------------------------------------------------------------------------------------------

#[test]
fn request_hashes_are_deterministic_and_follow_envoy_terminal_semantics() {
    let header = |name: &str, terminal| HashPolicy::Header { name: name.into(), terminal };
    let cookie = |terminal| HashPolicy::Cookie { name: "sid".into(), ttl: None, path: None, terminal };
    let ip = |terminal| HashPolicy::SourceIp { terminal };
    let query = |terminal| HashPolicy::QueryParameter { name: "k".into(), terminal };
    let xx = |s: &str| weft_lb::hash_bytes(s.as_bytes());
    let combine = |a: u64, b: u64| a.rotate_left(1) ^ b;

    let h = headers(&[("x-user", "jason"), ("cookie", "a=1; sid=\"abc\""), ("cookie", "sid=second")]);
    let src: Option<IpAddr> = "10.0.0.1".parse().ok();
    let v6: Option<IpAddr> = "2001:db8::1".parse().ok();
    let pq = "/p?x=1&k=v%20w&k=second";

    type Case<'a> = (&'a [HashPolicy], Option<IpAddr>, Option<u64>, &'a str);
    let cases: &[Case] = &[
        (&[header("x-user", false)], src, Some(xx("jason")), "header value"),
        (&[header("x-none", false)], src, None, "absent header: no hash"),
        (&[], src, None, "no policies"),
        (&[cookie(false)], src, Some(xx("abc")), "first cookie of that name, quotes removed"),
        (&[ip(false)], src, Some(xx("10.0.0.1")), "source ip as text"),
        (&[ip(false)], v6, Some(xx("2001:db8::1")), "IPv6 source as text"),
        (&[ip(false)], None, None, "no source ip"),
        (&[query(false)], src, Some(xx("v%20w")), "first query value, raw"),
        (&[header("x-user", false), ip(false)], src, Some(combine(xx("jason"), xx("10.0.0.1"))), "rotate-xor"),
        (
            &[header("x-user", false), header("x-user", false)],
            src,
            Some(combine(xx("jason"), xx("jason"))),
            "duplicates do not cancel",
        ),
        (&[header("x-user", true), ip(false)], src, Some(xx("jason")), "terminal with a value stops"),
        (&[header("x-none", true), ip(false)], src, Some(xx("10.0.0.1")), "terminal without a value falls through"),
        (
            &[ip(false), header("x-none", true), cookie(false)],
            src,
            Some(xx("10.0.0.1")),
            "terminal stops on an earlier hash",
        ),
        (
            &[header("x-none", false), ip(true), cookie(false)],
            src,
            Some(xx("10.0.0.1")),
            "non-producing policies add nothing",
        ),
    ];
    for (policies, source, want, why) in cases {
        let got = request_hash(policies, &h, pq, *source);
        assert_eq!(got, *want, "{why}");
        assert_eq!(got, request_hash(policies, &h, pq, *source), "{why}: deterministic");
    }

    let ab = headers(&[("x-m", "a"), ("x-m", "b")]);
    let ba = headers(&[("x-m", "b"), ("x-m", "a")]);
    let p = [header("x-m", false)];
    assert_eq!(request_hash(&p, &ab, "/", None), request_hash(&p, &ba, "/", None), "value order does not matter");
    assert_eq!(request_hash(&p, &ab, "/", None), Some(xx("a,b")));
    assert_ne!(request_hash(&[header("x-user", false)], &headers(&[("x-user", "bob")]), "/", None), Some(xx("jason")));
    assert_eq!(request_hash(&[query(false)], &h, "/p?kk=1&k", None), Some(xx("")), "a bare key hashes the empty value");
    assert_eq!(request_hash(&[query(false)], &h, "/p#k=1", None), None, "fragments are not queries");
}

#[test]
fn cookies_are_parsed_like_envoy() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["sid=1"], Some("1")),
        (&["a=1;sid=2"], Some("2")),
        (&["a=1;   sid=\"q\" "], Some("q")),
        (&["sid=\""], Some("\"")),
        (&["xsid=1; sid=2"], Some("2")),
        (&["sid"], None),
        (&["a=1", "sid=3"], Some("3")),
        (&["sid="], Some("")),
        (&[], None),
    ];
    for (values, want) in cases {
        let mut h = HeaderMap::new();
        for v in *values {
            h.append(http::header::COOKIE, HeaderValue::from_str(v).unwrap());
        }
        assert_eq!(hashing::cookie_value(&h, "sid"), *want, "{values:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------------

#[test]
fn route_table_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RouteTable>();
}

#[test]
fn percent_decoding_is_total() {
    let cases = [
        ("a%20b", "a b"),
        ("%zz", "%zz"),
        ("%4", "%4"),
        ("%", "%"),
        ("a+b", "a+b"),
        ("%e2%82%ac", "€"),
        ("%E2%82%AC", "€"),
        ("%ff", "\u{fffd}"),
        ("%2", "%2"),
        ("%%41", "%A"),
    ];
    for (input, want) in cases {
        assert_eq!(uri::percent_decode(input), want, "{input}");
    }
}

/// Hostile strings through every entry point: nothing may panic.
#[test]
fn arbitrary_input_never_panics() {
    let t = table(
        r#"- name: v
  domains: ["*.a.com", "b.*", "c.com:80"]
  routes:
    - {match: {path_separated_prefix: /p, headers: [{name: x-h, regex: "x+"}], query_parameters: [{name: q}]}, route: {cluster: c, prefix_rewrite: /z}}
    - {match: {regex: "/é.*"}, route: {cluster: c, regex_rewrite: {pattern: "(é)", substitution: "\\1\\1"}}}
    - {match: {prefix: /}, redirect: {port: 1, prefix_rewrite: /r}}"#,
    );
    let alphabet: Vec<&str> = vec![
        "",
        "/",
        "?",
        "#",
        "%",
        "%2",
        "%e9",
        "=",
        "&",
        ":",
        "[",
        "]",
        "é",
        "*",
        ".",
        "a",
        "A",
        "p",
        "q",
        "80",
        "\u{10ffff}",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut random_string =
        |n: usize| -> String { (0..n).map(|_| alphabet[next() as usize % alphabet.len()]).collect() };
    let h = headers(&[("x-h", "xx"), ("cookie", "sid")]);
    let policies = [
        HashPolicy::Header { name: "x-h".into(), terminal: false },
        HashPolicy::Cookie { name: "sid".into(), ttl: None, path: None, terminal: false },
        HashPolicy::QueryParameter { name: "q".into(), terminal: true },
    ];
    for _ in 0..5000 {
        let authority = random_string(6);
        let path = random_string(8);
        let req = RequestView {
            authority: &authority,
            path: &path,
            method: "GET",
            headers: &h,
            is_grpc: false,
            port: 80,
            exact_authority: false,
        };
        if let Some(s) = t.select(&req) {
            match &s.route.action {
                RouteAction::Forward(f) => {
                    let _ = rewrite_path(f, &s.route.matcher.path, &path);
                    let _ = rewrite_path(f, &PathMatch::Prefix(random_string(3)), &path);
                }
                RouteAction::Redirect(r) => {
                    let _ = redirect_location(r, &random_string(2), &authority, &path, &s.route.matcher.path);
                }
                RouteAction::Direct(_) => {}
            }
        }
        let _ = request_hash(&policies, &h, &path, None);
    }
}
