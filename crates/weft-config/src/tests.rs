use super::*;

const GOOD: &str = r#"
node: { id: sidecar~10.0.0.1~productpage.default~default.svc.cluster.local, namespace: default, workload: productpage-v1, app: productpage, version: v1 }
admin: { address: 127.0.0.1:15000, health_address: 127.0.0.1:15021, metrics_address: 127.0.0.1:15090 }
access_log: stdout
listeners:
  - name: http
    address: 127.0.0.1:8080
    http:
      route_config: main
  - name: tcp
    address: 127.0.0.1:8081
    tcp: { cluster: reviews, idle_timeout: 10m }
  - name: capture
    address: 127.0.0.1:15001
    use_original_dst: true
    filter_chains:
      - name: reviews-9080
        match: { destination_ips: [10.96.0.10/32], destination_port: 9080 }
        http:
          virtual_hosts:
            - name: reviews
              domains: ["*"]
              routes: [{ route: { cluster: reviews } }]
      - name: external-tls
        match: { server_names: ["*.example.com"], transport: tls }
        tcp: { cluster: reviews }
    default_chain:
      tcp: { cluster: reviews }
route_configs:
  - name: main
    virtual_hosts:
      - name: reviews
        domains: ["reviews", "reviews:9080", "*.reviews.svc"]
        retry_policy: { retry_on: "5xx,connect-failure", num_retries: 2 }
        routes:
          - name: v2-for-jason
            match:
              prefix: /
              headers: [{ name: end-user, exact: jason }]
            route: { cluster: reviews-v2, timeout: 2s }
          - match: { path: /redirect }
            redirect: { host: example.com, response_code: 302 }
          - match: { regex: "/direct/[0-9]+" , methods: [GET, HEAD] }
            direct_response: { status: 200, body: ok }
          - match: { prefix: / }
            route:
              weighted_clusters: [{ name: reviews, weight: 90 }, { name: reviews-v2, weight: 10 }]
              retry_policy: { retry_on: "gateway-error,unavailable", num_retries: 3, per_try_timeout: 500ms, retriable_headers: [{ name: x-retry, regex: "yes|true" }] }
              hash_policy: [{ header: x-user }]
              request_mirror_policies: [{ cluster: reviews-v2, percent: 12.5 }]
            fault: { delay: { fixed: 5ms, percent: 1 }, abort: { grpc_status: 14, percent: 0.5 } }
            request_headers_to_add: [{ name: x-weft, value: "1" }]
clusters:
  - name: reviews
    endpoints: ["127.0.0.1:9001", { address: "127.0.0.1:9002", weight: 3, priority: 1, locality: us-east/a }]
    lb_policy: least_request
    connect_timeout: 250ms
    outlier_detection: { consecutive_5xx: 3, interval: 1s, base_ejection_time: 10s }
    health_checks: [{ http: { path: /healthz, expected_statuses: ["200-299", 404] }, interval: 1s }]
    circuit_breakers: { max_requests: 100, retry_budget: { budget_percent: 20 } }
    metadata: { service: reviews.default.svc.cluster.local }
  - name: reviews-v2
    type: strict_dns
    endpoints: ["localhost:9003"]
    protocol: http2
    lb_policy: ring_hash
"#;

#[test]
fn a_full_config_loads_into_the_model() {
    let b = parse_str(GOOD, "good.yaml").unwrap();
    assert_eq!(b.node.namespace, "default");
    assert_eq!(b.admin.health_address, Some("127.0.0.1:15021".parse().unwrap()));
    assert_eq!(b.access_log, AccessLog::Stdout);
    let c = &b.config;
    assert_eq!(c.listeners.len(), 3);
    assert!(c.version.starts_with("file-"));
    let reviews = &c.clusters["reviews"];
    assert_eq!(reviews.localities.len(), 2, "grouped by priority and locality");
    assert_eq!(reviews.localities[1].priority, 1);
    assert_eq!(reviews.localities[1].locality.zone, "a");
    assert_eq!(reviews.connect_timeout, Duration::from_millis(250));
    assert_eq!(reviews.circuit_breakers.retry_budget_percent, Some(20.0));
    assert_eq!(
        c.clusters["reviews-v2"].localities[0].endpoints[0].address,
        EndpointAddress::Dns { host: "localhost".into(), port: 9003 }
    );
    let rc = &c.route_configs["main"];
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.retry.as_ref().unwrap().num_retries, 2);
    let last = vh.routes.last().unwrap();
    let RouteAction::Forward(fw) = &last.action else { panic!("forward expected") };
    assert_eq!(fw.mirrors[0].fraction_per_million, 125_000);
    assert_eq!(fw.timeout, Some(Duration::from_secs(15)), "Envoy's default route timeout");
    let retry = fw.retry.as_ref().unwrap();
    assert!(retry.retry_on.gateway_error && retry.retry_on.grpc_unavailable && !retry.retry_on.status_5xx);
    assert_eq!(last.fault.as_ref().unwrap().abort.as_ref().unwrap().status, AbortStatus::Grpc(14));
    let capture = &c.listeners[2];
    assert!(capture.needs_tls_inspection());
    assert!(capture.filter_chains[0].matcher.destination_ips[0].contains("10.96.0.10".parse().unwrap()));
    // The model dumps as JSON (for /config_dump).
    let json = serde_json::to_string(&**c).unwrap();
    assert!(json.contains("\"reviews-v2\""));
}

#[test]
fn the_same_text_gives_the_same_version() {
    let a = parse_str(GOOD, "a").unwrap();
    let b = parse_str(GOOD, "b").unwrap();
    assert_eq!(a.config.version, b.config.version);
    assert_eq!(a.config, b.config);
}

/// (description, yaml, expected error text)
const BAD: &[(&str, &str, &str)] = &[
    ("unknown lb policy", "clusters: [{name: reviews, endpoints: [127.0.0.1:1], lb_policy: fastest}]",
     r#"bad.yaml: cluster "reviews": lb_policy: unknown value "fastest""#),
    ("bad duration", "clusters: [{name: r, endpoints: [127.0.0.1:1], connect_timeout: 5 parsecs}]",
     r#"bad.yaml: cluster "r": connect_timeout: invalid duration"#),
    ("unknown field", "clusters: [{name: r, endpoints: [127.0.0.1:1], lb_polcy: random}]",
     "bad.yaml: clusters[0]: unknown field `lb_polcy`"),
    ("host name in a static cluster", "clusters: [{name: r, endpoints: [reviews:80]}]",
     r#"bad.yaml: cluster "r": endpoints[0].address: invalid address "reviews:80""#),
    ("no endpoints", "clusters: [{name: r}]", r#"cluster "r": endpoints: a static or strict_dns cluster needs at least one endpoint"#),
    ("duplicate cluster", "clusters: [{name: r, endpoints: [127.0.0.1:1]}, {name: r, endpoints: [127.0.0.1:2]}]",
     r#"cluster "r": name: duplicate cluster name"#),
    ("unknown cluster in route", "listeners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{route: {cluster: nope}}]}]}}]",
     r#"virtual_host "v": routes[0].route.cluster: unknown cluster "nope""#),
    ("bad regex", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {regex: '(['}, route: {cluster: c}}]}]}}]",
     r#"virtual_host "v": routes[0].match.regex: invalid regex"#),
    ("two actions", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{route: {cluster: c}, direct_response: {status: 200}}]}]}}]",
     "routes[0]: a route needs exactly one of"),
    ("bad listener address", "listeners: [{name: l, address: 'localhost', tcp: {cluster: c}}]", r#"listener "l": address: invalid address"#),
    ("duplicate listener address", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: a, address: 127.0.0.1:5, tcp: {cluster: c}}, {name: b, address: 127.0.0.1:5, tcp: {cluster: c}}]",
     r#"listener "b": address: 127.0.0.1:5 is used by another listener"#),
    ("unknown retry condition", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{route: {cluster: c, retry_policy: {retry_on: 'sometimes'}}}]}]}}]",
     r#"routes[0].route.retry_policy.retry_on: unknown retry condition "sometimes""#),
    ("bad wildcard domain", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['a.*.com'], routes: []}]}}]",
     r#"virtual_host "v": domains[0]: invalid domain"#),
    ("domain in two virtual hosts", "listeners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['a']}, {name: w, domains: ['A']}]}}]",
     r#"virtual_host "w": domains[0]: domain "a" appears in two virtual hosts"#),
    ("fault percent", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{route: {cluster: c}, fault: {abort: {http_status: 503, percent: 150}}}]}]}}]",
     "routes[0].fault.abort.percent: percent 150 out of range"),
    ("maglev table not prime", "clusters: [{name: c, endpoints: [127.0.0.1:1], lb_policy: maglev, maglev: {table_size: 1000}}]",
     r#"cluster "c": maglev.table_size: 1000 must be a prime"#),
    ("header name", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{route: {cluster: c}, request_headers_to_add: [{name: 'bad header', value: x}]}]}]}}]",
     "routes[0].request_headers_to_add[0].name: invalid header name"),
    ("not yaml", "listeners: [", "bad.yaml: "),
    ("query present false", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {query_parameters: [{name: q, present: false}]}, route: {cluster: c}}]}]}}]",
     "routes[0].match.query_parameters[0].present: only `present: true` is supported"),
    ("source ip false", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{route: {cluster: c, hash_policy: [{source_ip: false}]}}]}]}}]",
     "routes[0].route.hash_policy[0].source_ip: must be true"),
    ("wrong type", "listeners: 5", "bad.yaml: listeners: invalid type"),
    ("redirect code", "listeners: [{name: l, address: 127.0.0.1:1, http: {virtual_hosts: [{name: v, domains: ['*'], routes: [{redirect: {response_code: 200}}]}]}}]",
     "routes[0].redirect.response_code: 200 is not a redirect code"),
    ("connect with a path", "clusters: [{name: c, endpoints: [127.0.0.1:1]}]\nlisteners: [{name: l, address: 127.0.0.1:1, http: {connect: true, virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {connect: true, prefix: /}, route: {cluster: c}}]}]}}]",
     "routes[0].match.connect: a CONNECT request has no path"),
    ("forward proxy with endpoints", "clusters: [{name: f, type: dynamic_forward_proxy, endpoints: [127.0.0.1:1]}]",
     r#"cluster "f": endpoints: a dynamic_forward_proxy cluster takes its hosts from requests"#),
    ("forward proxy max_hosts", "clusters: [{name: f, type: dynamic_forward_proxy, max_hosts: 0}]",
     r#"cluster "f": max_hosts: must be between 1 and 65536"#),
    ("max_hosts elsewhere", "clusters: [{name: c, endpoints: [127.0.0.1:1], max_hosts: 5}]",
     r#"cluster "c": max_hosts: only dynamic_forward_proxy clusters take max_hosts"#),
];

#[test]
fn an_http_proxy_listener_loads() {
    let yaml = r#"
listeners:
  - name: http_proxy
    address: 127.0.0.1:15080
    http:
      connect: true
      virtual_hosts:
        - name: db
          domains: ["db:5432"]
          routes: [{ match: { connect: true }, route: { cluster: db } }]
        - name: any
          domains: ["*"]
          routes:
            - { route: { cluster: passthrough } }
            - { match: { connect: true }, route: { cluster: passthrough } }
clusters:
  - { name: db, endpoints: [127.0.0.1:5432] }
  - { name: passthrough, type: dynamic_forward_proxy, dns_refresh_rate: 30s, max_hosts: 100 }
"#;
    let b = parse_str(yaml, "proxy.yaml").unwrap();
    let ChainAction::Http(h) = &b.config.listeners[0].filter_chains[0].action else { panic!("http") };
    assert!(h.connect);
    let RouteSource::Inline(rc) = &h.routes else { panic!("inline") };
    assert!(rc.virtual_hosts[0].routes[0].matcher.connect);
    let any: Vec<bool> = rc.virtual_hosts[1].routes.iter().map(|r| r.matcher.connect).collect();
    assert_eq!(any, [false, true]);
    assert_eq!(
        b.config.clusters["passthrough"].discovery,
        Discovery::DynamicForwardProxy { refresh: Duration::from_secs(30), max_hosts: 100 }
    );
    // CONNECT stays off unless asked for.
    let plain = parse_str(GOOD, "good.yaml").unwrap();
    let ChainAction::Http(h) = &plain.config.listeners[0].filter_chains[0].action else { panic!("http") };
    assert!(!h.connect);
}

#[test]
fn bad_configs_are_rejected_naming_resource_and_field() {
    for (what, yaml, want) in BAD {
        match parse_str(yaml, "bad.yaml") {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                let got = e.to_string();
                assert!(got.contains(want), "{what}:\n got: {got}\nwant: {want}");
                assert!(got.starts_with("bad.yaml: "), "{what}: error must name the file: {got}");
            }
        }
    }
}

#[test]
fn durations_parse_in_every_unit() {
    let table = [
        ("1s", 1_000_000),
        ("250ms", 250_000),
        ("1.5s", 1_500_000),
        ("100us", 100),
        ("2m", 120_000_000),
        ("1h", 3_600_000_000),
        ("0", 0),
        ("3", 3_000_000),
    ];
    for (s, micros) in table {
        assert_eq!(parse_duration(s).unwrap(), Duration::from_micros(micros), "{s}");
    }
    for bad in ["", "s", "1x", "-1s", "1e400s", "NaNs", "1..2s"] {
        assert!(parse_duration(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn cidr_contains() {
    let table = [
        ("10.0.0.0", 8, "10.1.2.3", true),
        ("10.0.0.0", 8, "11.0.0.1", false),
        ("0.0.0.0", 0, "1.2.3.4", true),
        ("10.96.0.10", 32, "10.96.0.10", true),
        ("10.96.0.10", 32, "10.96.0.11", false),
        ("fd00::", 8, "fd12::1", true),
        ("fd00::", 8, "fe00::1", false),
        ("10.0.0.0", 8, "::ffff:10.0.0.1", true),
    ];
    for (net, len, ip, want) in table {
        let c = Cidr { addr: net.parse().unwrap(), prefix_len: len };
        assert_eq!(c.contains(ip.parse().unwrap()), want, "{net}/{len} ∋ {ip}");
    }
}

#[test]
fn retry_on_accepts_envoy_and_grpc_names() {
    let r = RetryOn::parse("5xx, gateway-error,reset,connect-failure,refused-stream,retriable-status-codes,retriable-headers,cancelled,deadline-exceeded,unavailable,resource-exhausted,internal,retriable-4xx").unwrap();
    assert!(
        r.status_5xx && r.gateway_error && r.reset && r.connect_failure && r.refused_stream && r.retriable_status_codes
    );
    assert!(
        r.grpc_status_retriable(14)
            && r.grpc_status_retriable(1)
            && r.grpc_status_retriable(4)
            && !r.grpc_status_retriable(2)
    );
    assert!(RetryOn::parse("5xx,nope").is_err());
}
