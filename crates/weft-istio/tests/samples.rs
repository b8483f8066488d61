//! Realistic Istio files (tests/data) parse into the expected typed model.

use std::net::IpAddr;
use std::time::Duration;

use weft_istio::*;

fn load(name: &str) -> Vec<Resource> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_yaml(name, &text).unwrap_or_else(|e| panic!("{name} should parse:\n{e}"))
}

#[test]
fn bookinfo_reviews_canary() {
    let rs = load("bookinfo-reviews.yaml");
    let keys: Vec<String> = rs.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(keys, ["DestinationRule bookinfo/reviews", "VirtualService bookinfo/reviews"]);

    let Spec::DestinationRule(dr) = &rs[0].spec else { panic!("not a DestinationRule") };
    let subsets: Vec<(&str, &str)> =
        dr.subsets.iter().map(|s| (s.name.as_str(), s.labels["version"].as_str())).collect();
    assert_eq!(subsets, [("v1", "v1"), ("v2", "v2"), ("v3", "v3")]);
    let tp = dr.traffic_policy.as_ref().unwrap();
    assert_eq!(tp.load_balancer.as_ref().unwrap().policy, Some(LbPolicy::Simple(SimpleLb::LeastRequest)));
    assert_eq!(tp.outlier_detection.as_ref().unwrap().base_ejection_time, Some(Duration::from_secs(30)));
    let v3 = dr.subsets[2].traffic_policy.as_ref().unwrap().load_balancer.as_ref().unwrap();
    assert!(matches!(
        &v3.policy,
        Some(LbPolicy::ConsistentHash(ConsistentHash { key: HashKey::HttpCookie { name, ttl: Some(ttl), .. }, .. }))
            if name == "user" && ttl.is_zero()
    ));

    let Spec::VirtualService(vs) = &rs[1].spec else { panic!("not a VirtualService") };
    assert_eq!(vs.hosts, ["reviews"]);
    let test_route = &vs.http[0];
    assert_eq!(test_route.matches[0].headers["end-user"], StringMatch::Exact("jason".into()));
    let canary = &vs.http[1];
    let HttpAction::Route(dests) = &canary.action else { panic!("canary is not a route") };
    let split: Vec<(Option<&str>, u32)> = dests.iter().map(|d| (d.destination.subset.as_deref(), d.weight)).collect();
    assert_eq!(split, [(Some("v1"), 80), (Some("v2"), 15), (Some("v3"), 5)]);
    assert_eq!(canary.timeout, Some(Duration::from_millis(1500)));
    let retries = canary.retries.as_ref().unwrap();
    assert_eq!(retries.retry_on, ["gateway-error", "connect-failure", "refused-stream"]);
    assert_eq!(retries.retriable_status_codes, [503]);
    assert!(rs.iter().all(|r| r.not_applied.is_empty()));
}

#[test]
fn external_api_service_entry_and_vm_workloads() {
    let rs = load("external-api.yaml");
    let Spec::ServiceEntry(api) = &rs[0].spec else { panic!("not a ServiceEntry") };
    assert_eq!(api.resolution, Resolution::Dns);
    assert_eq!(api.location, Location::MeshExternal);
    assert_eq!(api.addresses, [Cidr { addr: "240.240.0.10".parse::<IpAddr>().unwrap(), prefix_len: 32 }]);
    let ports: Vec<(u16, &Protocol)> = api.ports.iter().map(|p| (p.number, &p.protocol)).collect();
    assert_eq!(ports, [(443, &Protocol::Https), (80, &Protocol::Http)]);
    assert_eq!(api.export_to, ["."]);
    assert_eq!(rs[0].api_version, "networking.istio.io/v1beta1");

    // The DestinationRule's TLS origination is accepted and reported as not applied.
    assert_eq!(rs[1].not_applied, ["spec.trafficPolicy.portLevelSettings[0].tls"]);
    let Spec::DestinationRule(dr) = &rs[1].spec else { panic!("not a DestinationRule") };
    let tp = dr.traffic_policy.as_ref().unwrap();
    assert_eq!(tp.outlier_detection.as_ref().unwrap().base_ejection_time, Some(Duration::from_secs(60)));
    assert_eq!(tp.port_level_settings[0].port, 443);

    let Spec::ServiceEntry(inv) = &rs[2].spec else { panic!("not a ServiceEntry") };
    assert_eq!(inv.resolution, Resolution::Static);
    assert_eq!(inv.ports[0].target_port, Some(9080));
    let selector = inv.workload_selector.as_ref().unwrap();

    let Spec::WorkloadEntry(vm) = &rs[3].spec else { panic!("not a WorkloadEntry") };
    assert!(selector.matches(&vm.labels));
    assert_eq!(vm.address, Some(Address::Ip("10.0.5.21".parse().unwrap())));
    assert_eq!(vm.ports["http"], 9080);
    assert_eq!(vm.locality.as_ref().map(|l| l.to_string()).as_deref(), Some("us-east1/us-east1-b"));
    assert_eq!(vm.weight, Some(2));
    assert_eq!(vm.service_account.as_deref(), Some("inventory"));
}

#[test]
fn sidecar_bind_mode_without_capture() {
    let rs = load("sidecar-bind.yaml");
    let Spec::Sidecar(sc) = &rs[0].spec else { panic!("not a Sidecar") };
    assert_eq!(sc.workload_selector.as_ref().unwrap().labels["app"], "legacy");
    let ing = &sc.ingress[0];
    assert_eq!(ing.port, SidecarPort { number: 9080, protocol: Protocol::Http, name: "http-app".into() });
    assert_eq!(ing.bind.as_deref(), Some("172.16.1.32"));
    assert_eq!(ing.capture_mode, CaptureMode::None);
    assert_eq!(ing.default_endpoint.as_deref(), Some("127.0.0.1:8080"));
    let db = &sc.egress[0];
    assert_eq!(db.port.as_ref().map(|p| (p.number, &p.protocol)), Some((3306, &Protocol::Mysql)));
    assert_eq!(db.capture_mode, CaptureMode::None);
    assert_eq!(db.hosts[0].to_string(), "shop/mysql.shop.svc.cluster.local");
    let catch_all = &sc.egress[1];
    assert_eq!(catch_all.port, None);
    assert_eq!(catch_all.capture_mode, CaptureMode::Iptables);
    assert_eq!(catch_all.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(), ["./*", "istio-system/*"]);
    assert_eq!(sc.outbound_traffic_policy.as_ref().map(|p| p.mode), Some(OutboundMode::RegistryOnly));
}

#[test]
fn one_bad_document_fails_the_whole_file() {
    let good =
        std::fs::read_to_string(format!("{}/tests/data/bookinfo-reviews.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\n  namespace: bookinfo\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v1}\n      weight: 90\n    - destination: {host: ratings, subset: v2}\n      weight: 20\n";
    let err = parse_yaml("bookinfo.yaml", &format!("{good}\n---\n{bad}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bookinfo.yaml: VirtualService bookinfo/ratings: spec.http[0].route: destination weights must sum to 100 (they sum to 110)"
    );
}
