use super::*;
use http::HeaderValue;
use weft_config::RouteAction;

/// Builds a route table from the virtual hosts of an inline listener config.
fn table(vhosts_yaml: &str) -> RouteTable {
    let yaml = format!(
        "clusters: [{{name: c, endpoints: [127.0.0.1:1]}}, {{name: d, endpoints: [127.0.0.1:2]}}]\nlisteners:\n  - name: l\n    address: 127.0.0.1:1\n    http:\n      virtual_hosts:\n{}",
        vhosts_yaml.lines().map(|l| format!("        {l}\n")).collect::<String>()
    );
    let b = weft_config::parse_str(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let weft_config::ChainAction::Http(h) = &b.config.listeners[0].filter_chains[0].action else { panic!() };
    let weft_config::RouteSource::Inline(rc) = &h.routes else { panic!() };
    RouteTable::new(rc.clone())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn pick(t: &RouteTable, authority: &str, path: &str, method: &str, hs: &[(&str, &str)], grpc: bool) -> Option<String> {
    let h = headers(hs);
    let req = RequestView { authority, path, method, headers: &h, is_grpc: grpc, port: 8080 };
    t.select(&req).map(|s| format!("{}/{}", s.vhost.name, s.route.name))
}

#[test]
fn virtual_hosts_are_chosen_by_authority() {
    let t = table(
        r#"- {name: exact, domains: [api.example.com], routes: [{name: r, route: {cluster: c}}]}
- {name: exact-port, domains: ["api.example.com:9000", "svc:8080"], routes: [{name: r, route: {cluster: c}}]}
- {name: suffix-short, domains: ["*.com"], routes: [{name: r, route: {cluster: c}}]}
- {name: suffix-long, domains: ["*.example.com"], routes: [{name: r, route: {cluster: c}}]}
- {name: prefix, domains: ["foo.*"], routes: [{name: r, route: {cluster: c}}]}
- {name: any, domains: ["*"], routes: [{name: r, route: {cluster: c}}]}"#,
    );
    let table_: &[(&str, &str)] = &[
        ("api.example.com", "exact"),
        ("API.Example.COM", "exact"),
        ("api.example.com:80", "exact"),
        ("api.example.com:9000", "exact-port"),
        ("svc", "exact-port"),
        ("www.example.com", "suffix-long"),
        ("www.example.com:443", "suffix-long"),
        ("other.com", "suffix-short"),
        ("foo.bar", "prefix"),
        ("example.org", "any"),
        ("", "any"),
    ];
    for (auth, want) in table_ {
        assert_eq!(pick(&t, auth, "/", "GET", &[], false).as_deref(), Some(format!("{want}/r").as_str()), "{auth}");
    }
    let no_any = table(r#"- {name: only, domains: [a.com], routes: [{name: r, route: {cluster: c}}]}"#);
    assert_eq!(pick(&no_any, "b.com", "/", "GET", &[], false), None);
}

#[test]
fn the_first_matching_route_wins() {
    let t = table(
        r#"- name: v
  domains: ["*"]
  routes:
    - {name: exact, match: {path: /exact}, route: {cluster: c}}
    - {name: exact-ci, match: {path: /CI, case_sensitive: false}, route: {cluster: c}}
    - {name: regex, match: {regex: "/items/[0-9]+"}, route: {cluster: c}}
    - {name: sep, match: {path_separated_prefix: /api}, route: {cluster: c}}
    - {name: header-exact, match: {prefix: /h, headers: [{name: x-user, exact: jason}]}, route: {cluster: c}}
    - {name: header-regex, match: {prefix: /h, headers: [{name: x-user, regex: "a.*"}]}, route: {cluster: c}}
    - {name: header-absent, match: {prefix: /h, headers: [{name: x-user, present: false}]}, route: {cluster: c}}
    - {name: header-inverted, match: {prefix: /h, headers: [{name: x-user, prefix: z, invert: true}]}, route: {cluster: c}}
    - {name: multi-value, match: {prefix: /m, headers: [{name: x-v, exact: "1,2"}]}, route: {cluster: c}}
    - {name: suffix, match: {prefix: /s, headers: [{name: x-s, suffix: .end}]}, route: {cluster: c}}
    - {name: method, match: {prefix: /verb, methods: [POST, PUT]}, route: {cluster: c}}
    - {name: authority, match: {prefix: /auth, headers: [{name: ":authority", exact: host.a}]}, route: {cluster: c}}
    - {name: query-exact, match: {prefix: /q, query_parameters: [{name: debug, exact: "on now"}]}, route: {cluster: c}}
    - {name: query-present, match: {prefix: /q, query_parameters: [{name: trace}]}, route: {cluster: c}}
    - {name: grpc, match: {prefix: /pkg.Svc/, grpc: true}, route: {cluster: c}}
    - {name: fallback, match: {prefix: /}, route: {cluster: d}}"#,
    );
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], bool, &'a str);
    let cases: &[Case] = &[
        ("/exact", "GET", &[], false, "exact"),
        ("/exact?x=1", "GET", &[], false, "exact"),
        ("/exact/more", "GET", &[], false, "fallback"),
        ("/ci", "GET", &[], false, "exact-ci"),
        ("/items/42", "GET", &[], false, "regex"),
        ("/items/42x", "GET", &[], false, "fallback"),
        ("/xx/items/42", "GET", &[], false, "fallback"),
        ("/api", "GET", &[], false, "sep"),
        ("/api/v1", "GET", &[], false, "sep"),
        ("/apix", "GET", &[], false, "fallback"),
        ("/h", "GET", &[("x-user", "jason")], false, "header-exact"),
        ("/h", "GET", &[("x-user", "alice")], false, "header-regex"),
        ("/h", "GET", &[], false, "header-absent"),
        ("/h", "GET", &[("x-user", "bob")], false, "header-inverted"),
        ("/h", "GET", &[("x-user", "zed")], false, "fallback"),
        ("/m", "GET", &[("x-v", "1"), ("x-v", "2")], false, "multi-value"),
        ("/m", "GET", &[("x-v", "1")], false, "fallback"),
        ("/s", "GET", &[("x-s", "the.end")], false, "suffix"),
        ("/verb", "POST", &[], false, "method"),
        ("/verb", "GET", &[], false, "fallback"),
        ("/auth", "GET", &[], false, "fallback"),
        ("/q?debug=on%20now", "GET", &[], false, "query-exact"),
        ("/q?debug=on+now", "GET", &[], false, "query-exact"),
        ("/q?debug=off", "GET", &[], false, "fallback"),
        ("/q?a=1&trace", "GET", &[], false, "query-present"),
        ("/pkg.Svc/Call", "POST", &[], true, "grpc"),
        ("/pkg.Svc/Call", "POST", &[], false, "fallback"),
    ];
    for (path, method, hs, grpc, want) in cases {
        assert_eq!(
            pick(&t, "any", path, method, hs, *grpc).as_deref(),
            Some(format!("v/{want}").as_str()),
            "{method} {path} {hs:?}"
        );
    }
    assert_eq!(pick(&t, "host.a", "/auth", "GET", &[], false).as_deref(), Some("v/authority"));
}

fn forward(t: &RouteTable, i: usize) -> (&Forward, &PathMatch) {
    let r = &t.config().virtual_hosts[0].routes[i];
    let RouteAction::Forward(f) = &r.action else { panic!() };
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
    - {match: {prefix: /r}, route: {cluster: c, regex_rewrite: {pattern: "^/r/([^/]+)/(.*)$", substitution: "/\\2/\\1"}}}
    - {match: {prefix: /}, route: {cluster: c}}"#,
    );
    let cases: &[(usize, &str, Option<&str>)] = &[
        (0, "/old/x?q=1", Some("/new/x?q=1")),
        (1, "/api/users", Some("/users")),
        (1, "/api", Some("/")),
        (2, "/exact?a", Some("/replaced?a")),
        (3, "/r/a/b/c", Some("/b/c/a")),
        (4, "/unchanged", None),
    ];
    for (i, input, want) in cases {
        let (f, m) = forward(&t, *i);
        assert_eq!(rewrite_path(f, m, input).as_deref(), *want, "{input}");
    }
}

#[test]
fn redirects_keep_what_they_do_not_override() {
    let r = |yaml: &str| -> (Redirect, PathMatch) {
        let t = table(&format!("- name: v\n  domains: [\"*\"]\n  routes:\n    - {yaml}"));
        let route = &t.config().virtual_hosts[0].routes[0];
        let RouteAction::Redirect(r) = &route.action else { panic!() };
        (r.clone(), route.matcher.path.clone())
    };
    let cases: &[(&str, &str, &str, &str)] = &[
        ("{match: {prefix: /}, redirect: {host: b.com}}", "a.com:8080", "/x?y=1", "http://b.com/x?y=1"),
        ("{match: {prefix: /}, redirect: {scheme: https}}", "a.com", "/x", "https://a.com/x"),
        ("{match: {prefix: /}, redirect: {scheme: https, port: 443}}", "a.com", "/x", "https://a.com/x"),
        ("{match: {prefix: /}, redirect: {port: 9000}}", "a.com:80", "/x", "http://a.com:9000/x"),
        ("{match: {prefix: /}, redirect: {path: /new, strip_query: true}}", "a.com", "/x?y=1", "http://a.com/new"),
        ("{match: {prefix: /old}, redirect: {prefix_rewrite: /new}}", "a.com", "/old/p?q", "http://a.com/new/p?q"),
        ("{match: {prefix: /}, redirect: {}}", "a.com:8080", "/x", "http://a.com:8080/x"),
    ];
    for (yaml, auth, path, want) in cases {
        let (rd, m) = r(yaml);
        assert_eq!(redirect_location(&rd, "http", auth, path, &m), *want, "{yaml}");
    }
}

#[test]
fn weighted_picks_follow_cumulative_ranges() {
    let w = |name: &str, weight| WeightedCluster {
        name: name.into(),
        weight,
        request_headers: Default::default(),
        response_headers: Default::default(),
    };
    let ws = vec![w("a", 90), w("b", 0), w("c", 10)];
    assert_eq!(total_weight(&ws), 100);
    for (roll, want) in [(0, "a"), (89, "a"), (90, "c"), (99, "c"), (1000, "c")] {
        assert_eq!(pick_weighted(&ws, roll).name, want, "{roll}");
    }
}

#[test]
fn header_ops_remove_then_add() {
    let ops = HeaderOps {
        add: vec![
            weft_config::HeaderValueOp { name: "x-a".into(), value: "new".into(), append: false },
            weft_config::HeaderValueOp { name: "x-b".into(), value: "2".into(), append: true },
        ],
        remove: vec!["x-gone".into(), "x-a".into()],
    };
    let mut h = headers(&[("x-a", "old"), ("x-a", "old2"), ("x-b", "1"), ("x-gone", "1")]);
    apply_header_ops(&mut h, &ops);
    assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), vec!["new"]);
    assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), vec!["1", "2"]);
    assert!(!h.contains_key("x-gone"));
}

#[test]
fn request_hashes_are_deterministic_and_respect_terminal() {
    let user = HashPolicy::Header { name: "x-user".into(), terminal: false };
    let user_t = HashPolicy::Header { name: "x-user".into(), terminal: true };
    let ip = HashPolicy::SourceIp { terminal: false };
    let cookie = HashPolicy::Cookie { name: "sid".into(), ttl: None, path: None, terminal: false };
    let query = HashPolicy::QueryParameter { name: "k".into(), terminal: false };
    let h = headers(&[("x-user", "jason"), ("cookie", "a=1; sid=\"abc\"")]);
    let src: Option<IpAddr> = "10.0.0.1".parse().ok();
    let a = request_hash(std::slice::from_ref(&user), &h, "/", src);
    assert_eq!(a, request_hash(std::slice::from_ref(&user), &h, "/", src));
    assert_ne!(a, request_hash(std::slice::from_ref(&user), &headers(&[("x-user", "bob")]), "/", src));
    assert_eq!(request_hash(std::slice::from_ref(&user), &HeaderMap::new(), "/", src), None, "no value, no hash");
    assert_eq!(request_hash(&[user_t, ip.clone()], &h, "/", src), a, "terminal stops before source ip");
    assert_ne!(request_hash(&[user, ip.clone()], &h, "/", src), a, "non-terminal combines");
    assert_eq!(
        request_hash(std::slice::from_ref(&cookie), &h, "/", src),
        request_hash(&[cookie], &headers(&[("cookie", "sid=abc")]), "/", src)
    );
    assert!(request_hash(std::slice::from_ref(&query), &h, "/p?k=v", src).is_some());
    assert_eq!(request_hash(&[query], &h, "/p?x=v", src), None);
}

#[test]
fn percent_decoding_is_total() {
    for (i, o) in [("a%20b", "a b"), ("%zz", "%zz"), ("%4", "%4"), ("%", "%"), ("a+b", "a b"), ("%e2%82%ac", "€")] {
        assert_eq!(percent_decode(i), o);
    }
}
