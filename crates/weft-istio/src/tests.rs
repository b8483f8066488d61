//! Table-driven tests: documents in, typed resources or exact error lines out.

use std::time::Duration;

use super::*;

fn errors(file: &str, yaml: &str) -> Vec<String> {
    match parse_yaml(file, yaml) {
        Ok(r) => panic!("expected errors, parsed {} resources", r.len()),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn one(yaml: &str) -> Resource {
    match parse_yaml("t.yaml", yaml) {
        Ok(mut r) if r.len() == 1 => r.remove(0),
        Ok(r) => panic!("expected one resource, got {}", r.len()),
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn vs(yaml_spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n{yaml_spec}")
}

fn dr(yaml_spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n{yaml_spec}")
}

fn se(yaml_spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\nspec:\n{yaml_spec}")
}

fn sidecar(yaml_spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\nspec:\n{yaml_spec}")
}

/// Invalid documents and the exact lines they produce.
#[test]
fn invalid_documents_report_file_resource_field_and_reason() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "weight out of range",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 20\n    - destination: {host: reviews, subset: v2}\n      weight: 180\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: must be between 0 and 100"],
        ),
        (
            "weights not summing to 100",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v2}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].route: destination weights must sum to 100 (they sum to 50)"],
        ),
        (
            "hosts required",
            vs("  http:\n  - route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.hosts: at least one host is required (delegate VirtualServices are not supported yet)"],
        ),
        (
            "unknown field with suggestion",
            vs("  hosts: [reviews]\n  http:\n  - tiemout: 1s\n    route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0]: unknown field \"tiemout\" (did you mean \"timeout\"?)"],
        ),
        (
            "bad duration",
            vs("  hosts: [reviews]\n  http:\n  - timeout: 10\n    route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].timeout: must be a duration string such as \"1.5s\" or \"100ms\", not a number"],
        ),
        (
            "regex with lookahead",
            vs("  hosts: [reviews]\n  http:\n  - match:\n    - uri: {regex: \"/api(?=/v1)\"}\n    route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].match[0].uri.regex: invalid regex \"/api(?=/v1)\": look-around, including look-ahead and look-behind, is not supported"],
        ),
        (
            "regex flag RE2 lacks",
            vs("  hosts: [reviews]\n  http:\n  - match:\n    - uri: {regex: \"(?x) /api # v1\"}\n    route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].match[0].uri.regex: invalid regex \"(?x) /api # v1\": flag 'x' is not supported (RE2, which Envoy uses, knows i, m, s and U)"],
        ),
        (
            "two string match kinds",
            vs("  hosts: [reviews]\n  http:\n  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].match[0].uri: only one of exact, prefix or regex may be set (found exact, prefix)"],
        ),
        (
            "route and redirect",
            vs("  hosts: [reviews]\n  http:\n  - redirect: {uri: /new}\n    route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0]: only one of route, redirect, directResponse or delegate may be set (found route, redirect)"],
        ),
        (
            "no routes at all",
            vs("  hosts: [reviews]\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec: at least one of http, tls or tcp routes is required"],
        ),
        (
            "mesh wildcard host",
            vs("  hosts: [\"*\"]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.hosts[0]: the wildcard host \"*\" is not allowed for VirtualServices bound to the mesh"],
        ),
        (
            "retry condition",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    retries: {attempts: 2, retryOn: \"5xx,bogus\"}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].retries.retryOn: \"bogus\" is not a retry condition or an HTTP status code"],
        ),
        (
            "fault abort percentage",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    fault:\n      abort: {httpStatus: 503, percentage: {value: 120}}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].fault.abort.percentage.value: must be between 0 and 100"],
        ),
        (
            "grpc status name",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    fault:\n      abort: {grpcStatus: NOPE}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].fault.abort.grpcStatus: \"NOPE\" is not a gRPC status (e.g. UNAVAILABLE, NOT_FOUND)"],
        ),
        (
            "destination port",
            vs("  hosts: [reviews]\n  tcp:\n  - route:\n    - destination: {host: reviews, port: {number: 70000}}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.tcp[0].route[0].destination.port.number: must be between 1 and 65535"],
        ),
        (
            "sni outside hosts",
            vs("  hosts: [\"*.example.com\"]\n  tls:\n  - match:\n    - sniHosts: [api.other.com]\n    route:\n    - destination: {host: api.other.com}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.tls[0].match[0].sniHosts[0]: SNI host \"api.other.com\" is not within the VirtualService's hosts"],
        ),
        (
            "name not DNS-1123",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: Reviews_V1\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n".to_string(),
            vec!["shop.yaml: document 1 (VirtualService): metadata.name: \"Reviews_V1\" is not a valid DNS-1123 name (lower-case letters, digits, '-' and '.', at most 253)"],
        ),
        (
            "name missing",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  namespace: shop\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n".to_string(),
            vec!["shop.yaml: document 1 (VirtualService): metadata.name: required"],
        ),
        (
            "unsupported kind",
            "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata:\n  name: x\nspec: {}\n".to_string(),
            vec!["shop.yaml: document 1: kind: unsupported kind \"EnvoyFilter\" (supported: ServiceEntry, WorkloadEntry, WorkloadGroup, VirtualService, DestinationRule, Sidecar, Gateway, AuthorizationPolicy, PeerAuthentication)"],
        ),
        (
            "wrong group for kind",
            "apiVersion: security.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: x\nspec:\n  hosts: [x]\n  http:\n  - route:\n    - destination: {host: x}\n".to_string(),
            vec!["shop.yaml: VirtualService default/x: apiVersion: \"security.istio.io/v1\" is not an apiVersion of VirtualService (use networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)"],
        ),
        (
            "unknown top-level field",
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: x\nspce: {}\n".to_string(),
            vec![
                "shop.yaml: Sidecar default/x: unknown field \"spce\" (did you mean \"spec\"?)",
                "shop.yaml: Sidecar default/x: spec: a Sidecar needs at least one of ingress, egress, outboundTrafficPolicy or inboundConnectionPool",
            ],
        ),
        (
            "destination rule subsets",
            dr("  host: reviews\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v1\n    labels: {version: v2}\n  - name: V3\n"),
            vec![
                "shop.yaml: DestinationRule default/reviews: spec.subsets[1].name: duplicate subset name \"v1\"",
                "shop.yaml: DestinationRule default/reviews: spec.subsets[2].name: subset name \"V3\" is not a DNS-1123 label",
            ],
        ),
        (
            "lb simple enum",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n"),
            vec!["shop.yaml: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.simple: \"FASTEST\" is not one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST"],
        ),
        (
            "maglev table size",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}\n"),
            vec!["shop.yaml: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number"],
        ),
        (
            "outlier percent and durations",
            dr("  host: reviews\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 101, interval: 0.5ms}\n"),
            vec![
                "shop.yaml: DestinationRule default/reviews: spec.trafficPolicy.outlierDetection.interval: must be at least 1ms",
                "shop.yaml: DestinationRule default/reviews: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100",
            ],
        ),
        (
            "empty traffic policy",
            dr("  host: reviews\n  trafficPolicy: {}\n"),
            vec!["shop.yaml: DestinationRule default/reviews: spec.trafficPolicy: a traffic policy needs at least one field"],
        ),
        (
            "locality distribute weights",
            dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: us-west/zone1/*\n          to: {\"us-west/zone1/*\": 60, \"us-west/zone2/*\": 30}\n"),
            vec!["shop.yaml: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights must sum to 100 (they sum to 90)"],
        ),
        (
            "service entry static without endpoints",
            se("  hosts: [db.example.com]\n  ports:\n  - {number: 5432, name: tcp-pg, protocol: TCP}\n  resolution: STATIC\n"),
            vec!["shop.yaml: ServiceEntry default/ext: spec: resolution STATIC needs endpoints or a workloadSelector"],
        ),
        (
            "service entry bad host, address and protocol",
            se("  hosts: [\"bad host\"]\n  addresses: [10.0.0.0/33]\n  ports:\n  - {number: 80, name: web, protocol: SPDY}\n  resolution: NONE\n"),
            vec![
                "shop.yaml: ServiceEntry default/ext: spec.hosts[0]: invalid host \"bad host\" (DNS name with an optional leading \"*.\"; label \"bad host\" is not valid)",
                "shop.yaml: ServiceEntry default/ext: spec.addresses[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
                "shop.yaml: ServiceEntry default/ext: spec.ports[0].protocol: unsupported protocol \"SPDY\" (HTTP, HTTPS, HTTP2, GRPC, GRPC-Web, TLS, TCP, UDP, Mongo, Redis, MySQL)",
            ],
        ),
        (
            "service entry dns wildcard",
            se("  hosts: [\"*.example.com\"]\n  ports:\n  - {number: 443, name: https, protocol: TLS}\n  resolution: DNS\n"),
            vec!["shop.yaml: ServiceEntry default/ext: spec.hosts[0]: \"*.example.com\" must be a fully qualified name when resolution is DNS without endpoints"],
        ),
        (
            "service entry endpoint port not declared",
            se("  hosts: [db.internal]\n  ports:\n  - {number: 5432, name: tcp-pg}\n  resolution: STATIC\n  endpoints:\n  - address: 10.1.1.1\n    ports: {postgres: 5433}\n"),
            vec!["shop.yaml: ServiceEntry default/ext: spec.endpoints[0].ports.postgres: port \"postgres\" is not a port of this ServiceEntry"],
        ),
        (
            "service entry selector and endpoints",
            se("  hosts: [db.internal]\n  ports:\n  - {number: 5432, name: tcp-pg}\n  resolution: STATIC\n  workloadSelector: {labels: {app: db}}\n  endpoints:\n  - address: 10.1.1.1\n"),
            vec!["shop.yaml: ServiceEntry default/ext: spec: only one of workloadSelector or endpoints may be set"],
        ),
        (
            "service entry several hosts on tcp",
            se("  hosts: [a.internal, b.internal]\n  ports:\n  - {number: 5432, name: tcp-pg}\n  resolution: DNS\n"),
            vec!["shop.yaml: ServiceEntry default/ext: spec.hosts: several hosts cannot share non-HTTP, non-TLS port 5432 unless resolution is NONE"],
        ),
        (
            "sidecar egress hosts and capture mode",
            sidecar("  egress:\n  - hosts: [\"api.example.com\"]\n    captureMode: MAGIC\n"),
            vec![
                "shop.yaml: Sidecar default/default: spec.egress[0].captureMode: \"MAGIC\" is not one of DEFAULT, IPTABLES, NONE",
                "shop.yaml: Sidecar default/default: spec.egress[0].hosts[0]: \"api.example.com\" must be namespace/dnsName (e.g. \"./*\", \"istio-system/*\", \"*/api.example.com\")",
            ],
        ),
        (
            "sidecar ingress default endpoint",
            sidecar("  ingress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    defaultEndpoint: 10.0.0.1:8080\n"),
            vec!["shop.yaml: Sidecar default/default: spec.ingress[0].defaultEndpoint: \"10.0.0.1:8080\" must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix:///path"],
        ),
        (
            "sidecar catch-all not last",
            sidecar("  egress:\n  - hosts: [\"./*\"]\n  - port: {number: 80, name: http}\n    hosts: [\"*/*\"]\n"),
            vec!["shop.yaml: Sidecar default/default: spec.egress[0]: only the last egress listener may omit the port (the catch-all listener)"],
        ),
        (
            "sidecar target port",
            sidecar("  ingress:\n  - port: {number: 9080, name: http, targetPort: 8080}\n"),
            vec!["shop.yaml: Sidecar default/default: spec.ingress[0].port.targetPort: has no effect on Sidecar ports (Istio rejects it too)"],
        ),
        (
            "typo inside a not-applied field is still an error",
            dr("  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, credentalName: x}\n"),
            vec!["shop.yaml: DestinationRule default/reviews: spec.trafficPolicy.tls: unknown field \"credentalName\" (did you mean \"credentialName\"?)"],
        ),
        (
            "not-applied enum is checked",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    corsPolicy: {allowOrigins: [{exact: a}], unmatchedPreflights: DROP}\n"),
            vec!["shop.yaml: VirtualService default/reviews: spec.http[0].corsPolicy.unmatchedPreflights: \"DROP\" is not one of UNSPECIFIED, FORWARD, IGNORE"],
        ),
        (
            "istio rejects exponential delay and http2 errors",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n    fault:\n      delay: {exponentialDelay: 1s}\n      abort: {http2Error: REFUSED_STREAM}\n"),
            vec![
                "shop.yaml: VirtualService default/reviews: spec.http[0].fault.delay.exponentialDelay: is not supported (Istio rejects it too); use fixedDelay",
                "shop.yaml: VirtualService default/reviews: spec.http[0].fault.abort.http2Error: is not supported (Istio rejects it too); use httpStatus or grpcStatus",
            ],
        ),
        (
            "workload entry needs address",
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm1\nspec:\n  labels: {app: x}\n  locality: a/b/c/d\n".to_string(),
            vec![
                "shop.yaml: WorkloadEntry default/vm1: spec.address: required (unless network is set)",
                "shop.yaml: WorkloadEntry default/vm1: spec.locality: locality \"a/b/c/d\" has more than 3 segments (region/zone/subzone)",
            ],
        ),
        (
            "peer authentication mode",
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls: {mode: STRICTER}\n".to_string(),
            vec!["shop.yaml: PeerAuthentication default/default: spec.mtls.mode: \"STRICTER\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT"],
        ),
        (
            "authorization policy deny without rules",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\nspec:\n  action: DENY\n".to_string(),
            vec!["shop.yaml: AuthorizationPolicy default/deny: spec.rules: required for action DENY (use [{}] to match every request)"],
        ),
        (
            "gateway without servers",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {istio: ingressgateway}\n".to_string(),
            vec!["shop.yaml: Gateway default/gw: spec.servers: at least one server is required"],
        ),
        (
            "tenant label value",
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: x\n  labels: {weft.io/tenant: \"team a\"}\nspec:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n".to_string(),
            vec!["shop.yaml: Sidecar default/x: metadata.labels[\"weft.io/tenant\"]: \"team a\" is not a valid label value (at most 63 alphanumerics, '-', '_', '.')"],
        ),
    ];
    for (name, yaml, want) in cases {
        let got = errors("shop.yaml", &yaml);
        assert_eq!(got, want, "case {name:?}");
    }
}

#[test]
fn every_error_of_a_file_is_reported_and_the_file_fails_as_a_whole() {
    let yaml = format!(
        "{}\n---\n{}\n---\n{}",
        vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
        dr("  host: reviews\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: -1}}\n"),
        se("  hosts: [db.internal]\n  ports:\n  - {number: 0, name: tcp}\n  resolution: NONE\n"),
    );
    assert_eq!(
        errors("multi.yaml", &yaml),
        vec![
            "multi.yaml: DestinationRule default/reviews: spec.trafficPolicy.connectionPool.tcp.maxConnections: must be between 0 and 2147483647",
            "multi.yaml: ServiceEntry default/ext: spec.ports[0].number: must be between 1 and 65535",
        ]
    );
}

#[test]
fn documents_without_names_are_named_by_index() {
    let yaml = "---\n# empty documents are skipped but counted\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nspec:\n  host: reviews\n---\n- just\n- a list\n";
    assert_eq!(
        errors("idx.yaml", yaml),
        vec![
            "idx.yaml: document 2 (DestinationRule): metadata.name: required",
            "idx.yaml: document 3: must be an object, not a list",
        ]
    );
}

#[test]
fn yaml_syntax_errors_name_the_document() {
    let got = errors("bad.yaml", "apiVersion: networking.istio.io/v1\nkind: [unclosed\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("bad.yaml: document 1: invalid YAML: "), "{}", got[0]);
}

#[test]
fn duplicate_resources_in_one_file_are_rejected() {
    let doc = vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n");
    assert_eq!(
        errors("dup.yaml", &format!("{doc}\n---\n{doc}")),
        vec!["dup.yaml: VirtualService default/reviews: defined more than once in this file"]
    );
}

#[test]
fn api_version_spellings() {
    let cases = [
        ("networking.istio.io/v1", "VirtualService", true),
        ("networking.istio.io/v1beta1", "VirtualService", true),
        ("networking.istio.io/v1alpha3", "VirtualService", true),
        ("networking.istio.io/v2", "VirtualService", false),
        ("security.istio.io/v1", "PeerAuthentication", true),
        ("security.istio.io/v1beta1", "PeerAuthentication", true),
        ("networking.istio.io/v1", "PeerAuthentication", false),
        ("security.istio.io/v1", "AuthorizationPolicy", true),
        ("networking.istio.io/v1alpha3", "Sidecar", true),
    ];
    for (api, kind, ok) in cases {
        let spec = match kind {
            "VirtualService" => "spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n",
            "Sidecar" => "spec:\n  egress:\n  - hosts: [\"./*\"]\n",
            _ => "spec: {}\n",
        };
        let yaml = format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: x\n{spec}");
        let res = parse_yaml("v.yaml", &yaml);
        assert_eq!(res.is_ok(), ok, "{api} {kind}: {res:?}");
        if let Ok(r) = res {
            assert_eq!(r[0].api_version, api);
        }
    }
}

#[test]
fn typed_virtual_service() {
    let r = one(&vs(r#"  hosts: [reviews, reviews.example.com]
  http:
  - name: test
    match:
    - uri: {prefix: /api}
      method: {exact: GET}
      headers:
        X-User: {regex: "jason|json"}
        x-present: {}
      queryParams:
        debug: {exact: "1"}
      withoutHeaders:
        x-skip: {}
      port: 9080
      sourceLabels: {app: productpage}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      headers:
        request:
          set: {x-canary: "true"}
    rewrite:
      uriRegexRewrite: {match: "^/api/(.*)", rewrite: "/\\1"}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,503,unavailable", retryRemoteLocalities: true}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 12.5}}
      abort: {grpcStatus: UNAVAILABLE}
    mirror: {host: reviews-shadow}
    mirrorPercentage: {value: 5}
    headers:
      response:
        remove: [x-internal]
  - redirect: {uri: /v2, derivePort: FROM_REQUEST_PORT}
  - directResponse: {status: 503, body: {bytes: "b29wcw=="}}
  tcp:
  - match:
    - port: 3306
      destinationSubnets: [10.0.0.0/8]
    route:
    - destination: {host: mysql}
"#));
    let Spec::VirtualService(v) = &r.spec else { panic!("not a VirtualService") };
    assert!(v.applies_to_mesh());
    let h = &v.http[0];
    assert_eq!(h.name.as_deref(), Some("test"));
    let m = &h.matches[0];
    assert_eq!(m.uri, Some(StringMatch::Prefix("/api".into())));
    assert_eq!(m.method, Some(StringMatch::Exact("GET".into())));
    assert_eq!(m.headers.get("x-user"), Some(&StringMatch::Regex(Regex::new("jason|json").unwrap())));
    assert_eq!(m.headers.get("x-present"), Some(&StringMatch::Present));
    assert_eq!(m.without_headers.get("x-skip"), Some(&StringMatch::Present));
    assert_eq!(m.query_params.get("debug"), Some(&StringMatch::Exact("1".into())));
    assert_eq!(m.port, Some(9080));
    assert!(m.ignore_uri_case);
    let HttpAction::Route(dests) = &h.action else { panic!("not a route") };
    assert_eq!(dests[0].weight, 100);
    assert_eq!(
        dests[0].destination,
        Destination { host: "reviews".into(), subset: Some("v2".into()), port: Some(9080) }
    );
    assert_eq!(dests[0].headers.request.set.get("x-canary").map(String::as_str), Some("true"));
    assert_eq!(h.rewrite.as_ref().unwrap().uri_regex_rewrite.as_ref().unwrap().rewrite, "/\\1");
    assert_eq!(h.timeout, Some(Duration::from_millis(1500)));
    let retries = h.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(100)));
    assert_eq!(retries.retry_on, vec!["5xx", "unavailable"]);
    assert_eq!(retries.retriable_status_codes, vec![503]);
    assert_eq!(retries.retry_remote_localities, Some(true));
    let fault = h.fault.as_ref().unwrap();
    assert_eq!(fault.delay, Some(FaultDelay { fixed_delay: Duration::from_secs(2), percentage: 12.5 }));
    assert_eq!(fault.abort, Some(FaultAbort { status: AbortStatus::Grpc(14), percentage: 100.0 }));
    assert_eq!(
        h.mirrors,
        vec![HttpMirror {
            destination: Destination { host: "reviews-shadow".into(), subset: None, port: None },
            percentage: Some(5.0)
        }]
    );
    assert_eq!(h.headers.response.remove, vec!["x-internal"]);
    assert_eq!(
        v.http[1].action,
        HttpAction::Redirect(HttpRedirect {
            uri: Some("/v2".into()),
            authority: None,
            port: Some(RedirectPort::FromRequestPort),
            scheme: None,
            redirect_code: 301
        })
    );
    assert_eq!(
        v.http[2].action,
        HttpAction::DirectResponse(DirectResponse { status: 503, body: Some(b"oops".to_vec()) })
    );
    assert_eq!(v.tcp[0].matches[0].port, Some(3306));
    assert_eq!(v.tcp[0].matches[0].destination_subnets[0].to_string(), "10.0.0.0/8");
    assert_eq!(v.tcp[0].route[0].weight, 100);
    assert!(r.not_applied.is_empty(), "{:?}", r.not_applied);
}

#[test]
fn not_applied_fields_are_listed_per_resource() {
    let r = one(&vs(r#"  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /}
      statPrefix: reviews
    route:
    - destination: {host: reviews}
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
    retries: {attempts: 1, retryIgnorePreviousHosts: true}
"#));
    assert_eq!(
        r.not_applied,
        vec![
            "spec.http[0].corsPolicy",
            "spec.http[0].match[0].statPrefix",
            "spec.http[0].retries.retryIgnorePreviousHosts"
        ]
    );

    let r = one(&dr(r#"  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    proxyProtocol: {version: V1}
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: DISABLE}
"#));
    assert_eq!(
        r.not_applied,
        vec![
            "spec.trafficPolicy.portLevelSettings[0].tls",
            "spec.trafficPolicy.proxyProtocol",
            "spec.trafficPolicy.tls"
        ]
    );

    let r = one("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: istio-system\nspec:\n  mtls: {mode: STRICT}\n");
    assert_eq!(r.not_applied, vec!["spec"]);
    assert!(matches!(r.spec, Spec::Opaque(_)));
}

#[test]
fn weights_follow_istio() {
    // A lone destination takes all traffic whatever its weight; several must sum to 100.
    let r = one(&vs("  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 30\n"));
    let Spec::VirtualService(v) = &r.spec else { panic!() };
    let HttpAction::Route(d) = &v.http[0].action else { panic!() };
    assert_eq!(d[0].weight, 100);

    let r = one(&vs("  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a, subset: x}\n      weight: 100\n    - destination: {host: a, subset: y}\n"));
    let Spec::VirtualService(v) = &r.spec else { panic!() };
    let HttpAction::Route(d) = &v.http[0].action else { panic!() };
    assert_eq!((d[0].weight, d[1].weight), (100, 0));
}

#[test]
fn typed_destination_rule() {
    let r = one(&dr(r#"  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        minimumRingSize: 1024
      localityLbSetting:
        failover: [{from: us-east, to: us-west}]
        failoverPriority: [topology.istio.io/network]
      warmupDurationSecs: 30s
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms, idleTimeout: 0s, tcpKeepalive: {probes: 3, time: 7200s}}
      http: {http2MaxRequests: 1000, maxRetries: 3, idleTimeout: 1h, h2UpgradePolicy: UPGRADE}
    outlierDetection:
      consecutiveErrors: 7
      interval: 1m
      minHealthPercent: 20
  subsets:
  - name: maglev
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: LEAST_CONN}
"#));
    let Spec::DestinationRule(d) = &r.spec else { panic!("not a DestinationRule") };
    let tp = d.traffic_policy.as_ref().unwrap();
    let lb = tp.load_balancer.as_ref().unwrap();
    assert_eq!(
        lb.policy,
        Some(LbPolicy::ConsistentHash(ConsistentHash {
            key: HashKey::HttpHeaderName("x-user".into()),
            algorithm: HashAlgorithm::RingHash { minimum_ring_size: Some(1024) }
        }))
    );
    let loc = lb.locality_lb_setting.as_ref().unwrap();
    assert_eq!(loc.failover, vec![LocalityFailover { from: "us-east".into(), to: "us-west".into() }]);
    assert_eq!(lb.warmup_duration, Some(Duration::from_secs(30)));
    let pool = tp.connection_pool.as_ref().unwrap();
    let tcp = pool.tcp.as_ref().unwrap();
    assert_eq!(tcp.max_connections, Some(10));
    assert_eq!(tcp.connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(tcp.idle_timeout, Some(Duration::ZERO));
    assert_eq!(tcp.tcp_keepalive.as_ref().unwrap().time, Some(Duration::from_secs(7200)));
    let http = pool.http.as_ref().unwrap();
    assert_eq!(http.h2_upgrade_policy, H2UpgradePolicy::Upgrade);
    assert_eq!(http.idle_timeout, Some(Duration::from_secs(3600)));
    let od = tp.outlier_detection.as_ref().unwrap();
    // Deprecated consecutiveErrors: gateway errors, 5xx rule off.
    assert_eq!((od.consecutive_gateway_errors, od.consecutive_5xx_errors), (Some(7), Some(0)));
    assert_eq!(od.interval, Some(Duration::from_secs(60)));
    let sub = &d.subsets[0];
    let stp = sub.traffic_policy.as_ref().unwrap();
    assert_eq!(
        stp.load_balancer.as_ref().unwrap().policy,
        Some(LbPolicy::ConsistentHash(ConsistentHash {
            key: HashKey::UseSourceIp,
            algorithm: HashAlgorithm::Maglev { table_size: Some(65537) }
        }))
    );
    assert_eq!(stp.port_level_settings[0].port, 9080);
    assert_eq!(
        stp.port_level_settings[0].load_balancer.as_ref().unwrap().policy,
        Some(LbPolicy::Simple(SimpleLb::LeastRequest))
    );
}

#[test]
fn protocol_inference() {
    let cases: &[(Option<&str>, Option<&str>, &str, Protocol)] = &[
        (Some("HTTP"), None, "tcp-foo", Protocol::Http),
        (Some("grpc"), None, "", Protocol::Grpc),
        (Some("GRPC-Web"), None, "", Protocol::GrpcWeb),
        (None, Some("http2"), "tcp", Protocol::Http2),
        (None, None, "http", Protocol::Http),
        (None, None, "http-foo", Protocol::Http),
        (None, None, "http2-api", Protocol::Http2),
        (None, None, "grpc", Protocol::Grpc),
        (None, None, "grpc-web", Protocol::GrpcWeb),
        (None, None, "grpc-web-ui", Protocol::GrpcWeb),
        (None, None, "grpc-internal", Protocol::Grpc),
        (None, None, "https", Protocol::Https),
        (None, None, "tls-passthrough", Protocol::Tls),
        (None, None, "tcp", Protocol::Tcp),
        (None, None, "mongo", Protocol::Mongo),
        (None, None, "redis-cache", Protocol::Redis),
        (None, None, "mysql", Protocol::Mysql),
        (None, None, "HTTP-Upper", Protocol::Http),
        (None, None, "web", Protocol::Unsupported(String::new())),
        (None, None, "", Protocol::Unsupported(String::new())),
        (Some("SPDY"), None, "http", Protocol::Unsupported("SPDY".into())),
    ];
    for (protocol, app, name, want) in cases {
        assert_eq!(&Protocol::infer(*protocol, *app, name), want, "{protocol:?} {app:?} {name:?}");
    }
    assert!(Protocol::Grpc.is_http());
    assert!(Protocol::Http2.is_http());
    assert!(!Protocol::Https.is_http());
    assert!(!Protocol::Tcp.is_http());
    assert!(!Protocol::Unsupported(String::new()).is_http());
}

#[test]
fn service_entry_ports_take_protocol_from_name_when_not_given() {
    let r = one(&se("  hosts: [api.example.com]\n  ports:\n  - {number: 80, name: http-web}\n  - {number: 8443, name: foo, protocol: https}\n  - {number: 9000, name: other}\n  resolution: DNS\n"));
    let Spec::ServiceEntry(s) = &r.spec else { panic!() };
    let protocols: Vec<&Protocol> = s.ports.iter().map(|p| &p.protocol).collect();
    assert_eq!(protocols, vec![&Protocol::Http, &Protocol::Https, &Protocol::Unsupported(String::new())]);
}

#[test]
fn metadata_defaults_and_tenancy() {
    let r = one("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: x\n  uid: 1234\n  generation: 3\nspec:\n  egress:\n  - hosts: [\"./*\"]\n");
    assert_eq!(r.meta.namespace, "default");
    assert_eq!(r.tenant(), "default");
    assert_eq!(r.key().to_string(), "Sidecar default/x");

    let r = one("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: x\n  namespace: shop\n  labels: {weft.io/tenant: acme}\n  creationTimestamp: \"2024-01-02T03:04:05.123+02:00\"\nspec:\n  egress:\n  - hosts: [\"./*\"]\n");
    assert_eq!(r.tenant(), "acme");
    assert_eq!(r.meta.creation_timestamp.as_deref(), Some("2024-01-02T03:04:05.123+02:00"));
}

#[test]
fn from_json_reloads_what_parse_stored() {
    for path in ["bookinfo-reviews.yaml", "external-api.yaml", "sidecar-bind.yaml"] {
        let text = std::fs::read_to_string(format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for mut r in parse_yaml(path, &text).unwrap() {
            r.set_creation_timestamp("2024-06-01T00:00:00Z");
            r.set_resource_version("7");
            let back = from_json("store", r.raw.clone()).unwrap();
            assert_eq!(back, r, "{}", r.key());
        }
    }
}

#[test]
fn kind_names_for_the_cli() {
    let cases = [
        ("VirtualService", Some(Kind::VirtualService)),
        ("virtualservice", Some(Kind::VirtualService)),
        ("virtualservices", Some(Kind::VirtualService)),
        ("vs", Some(Kind::VirtualService)),
        ("dr", Some(Kind::DestinationRule)),
        ("se", Some(Kind::ServiceEntry)),
        ("serviceentries", Some(Kind::ServiceEntry)),
        ("ServiceEntries", Some(Kind::ServiceEntry)),
        ("serviceentrys", None),
        ("sidecars", Some(Kind::Sidecar)),
        ("gw", Some(Kind::Gateway)),
        ("authorizationpolicies", Some(Kind::AuthorizationPolicy)),
        ("peerauthentications", Some(Kind::PeerAuthentication)),
        ("AuthorizationPolicy", Some(Kind::AuthorizationPolicy)),
        ("pa", Some(Kind::PeerAuthentication)),
        ("workloadentry", Some(Kind::WorkloadEntry)),
        ("we", Some(Kind::WorkloadEntry)),
        ("wg", Some(Kind::WorkloadGroup)),
        ("pod", None),
    ];
    for (s, want) in cases {
        assert_eq!(Kind::parse(s), want, "{s}");
    }
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn rfc3339_times() {
    use crate::parse::parse_rfc3339;
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(parse_rfc3339("2024-01-01T02:00:00+02:00"), parse_rfc3339("2024-01-01T00:00:00Z"));
    assert_eq!(parse_rfc3339("2024-02-29T00:00:00.5Z").map(|t| t.1), Some(500_000_000));
    assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_none());
    assert!(parse_rfc3339("2024-01-01 00:00:00").is_none());
    assert!(parse_rfc3339("yesterday").is_none());
    assert!(parse_rfc3339("2024-13-01T00:00:00Z").is_none());
}

#[test]
fn virtual_service_conflicts_oldest_wins_then_namespace_and_name() {
    let doc = |name: &str, ns: &str, ts: Option<&str>, tenant: &str, hosts: &str, gateways: &str| {
        let ts = ts.map(|t| format!("  creationTimestamp: \"{t}\"\n")).unwrap_or_default();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {ns}\n{ts}  labels: {{weft.io/tenant: {tenant}}}\nspec:\n  hosts: {hosts}\n  gateways: {gateways}\n  http:\n  - route:\n    - destination: {{host: reviews.shop.svc.cluster.local}}\n"
        )
    };
    let docs = [
        doc("b-newer", "shop", Some("2024-02-01T00:00:00Z"), "default", "[reviews]", "[]"),
        doc("a-older", "shop", Some("2024-01-01T00:00:00Z"), "default", "[reviews, ratings]", "[]"),
        // Same time as a-older, same namespace: name breaks the tie.
        doc("c-tie", "shop", Some("2024-01-01T00:00:00Z"), "default", "[reviews.shop.svc.cluster.local]", "[mesh]"),
        // Unstamped: newer than everything stored.
        doc("d-unstamped", "shop", None, "default", "[ratings]", "[]"),
        // Other namespace: `reviews` is another service there.
        doc("e-other-ns", "web", Some("2020-01-01T00:00:00Z"), "default", "[reviews]", "[]"),
        // Other tenant: no conflict.
        doc("f-tenant", "shop", Some("2020-01-01T00:00:00Z"), "acme", "[reviews]", "[]"),
        // Gateway-only: not a mesh route.
        doc("g-gateway", "shop", Some("2019-01-01T00:00:00Z"), "default", "[reviews]", "[shop/ingress]"),
    ];
    let resources = parse_yaml("c.yaml", &docs.join("---\n")).unwrap();
    let resolved = resolve_virtual_services(&resources, "cluster.local");
    let key = |name: &str, ns: &str| Key::new(Kind::VirtualService, ns, name);
    assert_eq!(
        resolved.conflicts,
        vec![
            Conflict {
                tenant: "default".into(),
                host: "ratings.shop.svc.cluster.local".into(),
                winner: key("a-older", "shop"),
                losers: vec![key("d-unstamped", "shop")],
            },
            Conflict {
                tenant: "default".into(),
                host: "reviews.shop.svc.cluster.local".into(),
                winner: key("a-older", "shop"),
                losers: vec![key("c-tie", "shop"), key("b-newer", "shop")],
            },
        ]
    );
    let winners: Vec<(String, String, String)> =
        resolved.winners.iter().map(|(hk, r)| (hk.tenant.clone(), hk.host.clone(), r.meta.name.clone())).collect();
    let w = |t: &str, h: &str, n: &str| (t.to_string(), h.to_string(), n.to_string());
    assert_eq!(
        winners,
        vec![
            w("acme", "reviews.shop.svc.cluster.local", "f-tenant"),
            w("default", "ratings.shop.svc.cluster.local", "a-older"),
            w("default", "reviews.shop.svc.cluster.local", "a-older"),
            w("default", "reviews.web.svc.cluster.local", "e-other-ns"),
        ]
    );
}

#[test]
fn kubectl_lists_are_expanded() {
    let yaml = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n",
        serde_json::to_string(&serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "x"},
            "spec": {"egress": [{"hosts": ["./*"]}]}
        }))
        .unwrap()
    );
    let r = parse_yaml("list.yaml", &yaml).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].key().to_string(), "Sidecar default/x");
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let inputs = [
        "\u{0}",
        "key: [",
        "!!binary aGVsbG8=",
        "apiVersion: 1\nkind: 2\nmetadata: 3\nspec: 4\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  http: [null, 1, {route: null}]\n",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: a, trafficPolicy: {loadBalancer: {simple: [1]}}}\n",
        "a: &a [*a]\n",
        deep.as_str(),
        ".inf",
    ];
    for input in inputs {
        let _ = parse_yaml("h.yaml", input);
    }
}

mod registry_instances {
    use std::time::Duration;

    use crate::registry::Instance;
    use crate::{Address, Locality, WorkloadSelector};

    fn json(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({"name": "inventory-vm-1", "address": "10.0.5.21", "ports": {"http": 9080}, "labels": {"app": "inventory"}});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base
    }

    #[test]
    fn instances_round_trip_through_json_with_defaults() {
        let i =
            Instance::from_json("api", json(serde_json::json!({"locality": "us-east1/b", "leaseTtl": "30s"}))).unwrap();
        assert_eq!((i.namespace.as_str(), i.tenant.as_str(), i.healthy), ("default", "default", true));
        assert_eq!(i.lease_ttl, Some(Duration::from_secs(30)));
        assert_eq!(i.locality, Some(Locality { region: "us-east1".into(), zone: "b".into(), subzone: String::new() }));
        assert_eq!(i.id(), "default/default/inventory-vm-1");
        let stored = serde_json::to_value(&i).unwrap();
        assert_eq!(stored["leaseTtl"], "30s");
        assert_eq!(stored["locality"], "us-east1/b");
        assert_eq!(Instance::from_json("store", stored).unwrap(), i);

        let we = i.to_workload_entry();
        assert_eq!(we.address, Some(Address::Ip("10.0.5.21".parse().unwrap())));
        assert_eq!(we.ports["http"], 9080);
    }

    #[test]
    fn instances_declare_their_service_with_ports_and_protocols() {
        let i = Instance::from_json(
            "api",
            json(serde_json::json!({"service": {"host": "inventory", "ports": [
                {"name": "http", "number": 9080, "protocol": "http"},
                {"name": "grpc-api", "number": 9090},
                {"name": "db", "number": 5432, "protocol": "TCP"},
            ]}})),
        )
        .unwrap();
        let service = i.service.as_ref().unwrap();
        assert_eq!(service.host, "inventory");
        let ports: Vec<(u16, String, String)> = service
            .ports
            .iter()
            .map(|p| p.to_service_port())
            .map(|p| (p.number, p.name, p.protocol.to_string()))
            .collect();
        assert_eq!(
            ports,
            vec![
                (9080, "http".to_string(), "HTTP".to_string()),
                (9090, "grpc-api".to_string(), "GRPC".to_string()),
                (5432, "db".to_string(), "TCP".to_string()),
            ]
        );
        let stored = serde_json::to_value(&i).unwrap();
        assert_eq!(stored["service"]["ports"][1], serde_json::json!({"name": "grpc-api", "number": 9090}));
        assert_eq!(Instance::from_json("store", stored).unwrap(), i);
        let plain = serde_json::to_value(Instance::from_json("api", json(serde_json::json!({}))).unwrap()).unwrap();
        assert!(plain.get("service").is_none(), "no service key when none is declared: {plain}");
    }

    #[test]
    fn instances_are_selected_by_labels_like_workload_entries() {
        let i = Instance::from_json("api", json(serde_json::json!({}))).unwrap();
        let sel = |pairs: &[(&str, &str)]| WorkloadSelector {
            labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        assert!(i.selected_by(&sel(&[("app", "inventory")])));
        assert!(!i.selected_by(&sel(&[("app", "inventory"), ("version", "v2")])));
        assert!(i.selected_by(&sel(&[])), "an empty selector selects the whole namespace, as in Istio");
    }

    #[test]
    fn invalid_instances_name_every_field() {
        let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
            (
                json(serde_json::json!({"name": "Bad_Name", "address": "0.0.0.0", "ports": {"HTTP": 0}, "weight": 0})),
                vec![
                    "api: Instance default/Bad_Name: name: \"Bad_Name\" is not a valid DNS-1123 name (lower-case letters, digits, '-' and '.', at most 253)",
                    "api: Instance default/Bad_Name: address: 0.0.0.0 is not a unicast address",
                    "api: Instance default/Bad_Name: ports.HTTP: invalid port name \"HTTP\" (DNS-1123 label: lower-case letters, digits and '-')",
                    "api: Instance default/Bad_Name: ports.HTTP: port 0 is not valid (1..65535)",
                    "api: Instance default/Bad_Name: weight: 0 is out of range 1..128",
                ],
            ),
            (
                json(serde_json::json!({"leaseTtl": "1h30m", "tenant": "", "serviceHosts": ["*"]})),
                vec![
                    "api: Instance default/inventory-vm-1: tenant: must not be empty",
                    "api: Instance default/inventory-vm-1: serviceHosts[0]: the wildcard host \"*\" is not allowed here",
                ],
            ),
            (
                json(serde_json::json!({"leaseTtl": "48h"})),
                vec!["api: Instance default/inventory-vm-1: leaseTtl: must be between 1s and 24h"],
            ),
            (
                json(serde_json::json!({"address": "not-an-ip"})),
                vec!["api: Instance inventory-vm-1: invalid IP address syntax"],
            ),
            (
                json(serde_json::json!({"colour": "blue"})),
                vec!["api: Instance inventory-vm-1: unknown field `colour`, expected one of `name`, `namespace`, `tenant`, `serviceHosts`, `address`, `ports`, `labels`, `locality`, `weight`, `network`, `serviceAccount`, `healthy`, `leaseTtl`, `service`"],
            ),
            (
                json(serde_json::json!({"service": {"host": "*.example.com", "ports": []}})),
                vec![
                    "api: Instance default/inventory-vm-1: service.host: \"*.example.com\": a declared service needs a concrete host, not a wildcard",
                    "api: Instance default/inventory-vm-1: service.ports: at least one port is required",
                ],
            ),
            (
                json(serde_json::json!({"service": {"host": "inventory", "ports": [
                    {"name": "http", "number": 9080, "protocol": "htp"},
                    {"name": "http", "number": 9081},
                    {"name": "grpc", "number": 9080, "protocol": "grpc"},
                    {"name": "Bad", "number": 0},
                ]}})),
                vec![
                    "api: Instance default/inventory-vm-1: service.ports[0].protocol: unknown value \"htp\" (expected one of HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC-Web, HTTPS, TLS, TCP, UDP, Mongo, Redis, MySQL)",
                    "api: Instance default/inventory-vm-1: service.ports[1].name: \"http\" is already used by service.ports[0]",
                    "api: Instance default/inventory-vm-1: service.ports[2].number: 9080 is already used by service.ports[0]",
                    "api: Instance default/inventory-vm-1: service.ports[3].name: invalid port name \"Bad\" (DNS-1123 label: lower-case letters, digits and '-')",
                    "api: Instance default/inventory-vm-1: service.ports[3].number: port 0 is not valid (1..65535)",
                ],
            ),
            (
                json(serde_json::json!({"service": {"host": "inventory", "ports": [{"name": "http", "number": 80, "tls": true}]}})),
                vec!["api: Instance inventory-vm-1: unknown field `tls`, expected one of `name`, `number`, `protocol`"],
            ),
        ];
        for (input, want) in cases {
            let got: Vec<String> = match Instance::from_json("api", input.clone()) {
                Ok(_) => panic!("{input} should be rejected"),
                Err(e) => e.iter().map(|e| e.to_string()).collect(),
            };
            assert_eq!(got, want, "{input}");
        }
    }
}

/// Odd but valid resources that Istio accepts must be accepted too.
#[test]
fn what_istio_accepts_is_accepted() {
    let docs = [
        se("  hosts: [\"*-api.example.com\"]\n"),
        vs("  hosts: [\"2001:db8::10\", 192.0.2.1]\n  gateways: [shop/ingress]\n  tcp:\n  - route:\n    - destination: {host: db.internal}\n"),
        se("  hosts: [app.internal]\n  workloadSelector: {}\n  resolution: STATIC\n"),
        se("  hosts: [app.internal]\n  addresses: [10.1.0.0/16, \"2001:db8::/64\", \"2001:db8::1\"]\n  exportTo: [\"~\"]\n  ports:\n  - {number: 80, name: http}\n"),
        se("  hosts: [api.example.com]\n  ports:\n  - {number: 443, name: https, protocol: http}\n  resolution: DNS\n  endpoints:\n  - address: eu.api.example.com\n  - address: 192.0.2.10\n"),
        "apiVersion: networking.istio.io/v1alpha3\nkind: WorkloadEntry\nmetadata: {name: remote}\nspec: {network: net-2}\n".to_string(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: WorkloadEntry\nmetadata: {name: uds}\nspec: {address: \"unix:///var/run/app.sock\"}\n".to_string(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: WorkloadEntry\nmetadata: {name: abstract}\nspec: {address: \"unix://@app\"}\n".to_string(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: WorkloadEntry\nmetadata: {name: dns}\nspec: {address: vm1.example.com}\n".to_string(),
        dr("  host: \"*.example.com\"\n  trafficPolicy:\n    connectionPool:\n      http:\n        http2KeepAlive: {interval: 15s, timeout: 5s}\n"),
        dr("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      warmup: {duration: 300s, minimumPercent: 5.0, aggression: 2.0}\n"),
        sidecar("  workloadSelector: {}\n  egress:\n  - hosts: [\"*/*\"]\n"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {app: a}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    \"80\": {mode: STRICT}\n    8080: {mode: DISABLE}\n".to_string(),
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: empty}\nspec: {selector: {}}\n".to_string(),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\nmetadata: {name: g}\nspec:\n  metadata: {labels: {app: a}}\n  template: {serviceAccount: sa, network: n}\n  probe: {tcpSocket: {port: 8080}, periodSeconds: 5}\n".to_string(),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: ingress}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"shop/*.example.com\"]\n".to_string(),
    ];
    for doc in docs {
        if let Err(e) = parse_yaml("ok.yaml", &doc) {
            panic!("rejected:\n{doc}\n{e}");
        }
    }
    let r = one(&dr("  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http:\n        http2KeepAlive: {interval: 15s}\n"));
    assert_eq!(r.not_applied, vec!["spec.trafficPolicy.connectionPool.http.http2KeepAlive"]);
}

#[test]
fn regexes_use_only_re2_flags() {
    // Envoy compiles with RE2; the regex crate also accepts the flags u, x and R.
    for ok in ["(?i)jason", "(?U)a+", "(?i-s:a.b)", "(?P<v>[0-9]+)", "(?<v>a)", "[(?x)]", "\\(?x\\)", "[]](?i)a"] {
        assert!(Regex::new(ok).is_ok(), "{ok}");
    }
    for bad in ["(?x)a b", "(?u)a", "a(?R)", "(?ix:a)", "[a](?x)b"] {
        let e = Regex::new(bad).unwrap_err();
        assert!(e.contains("is not supported (RE2"), "{bad}: {e}");
    }
}
