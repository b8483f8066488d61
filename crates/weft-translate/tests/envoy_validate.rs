//! Every configuration the translator generates must be one Envoy accepts.
//!
//! Each proxy's resource set (LDS, RDS, CDS, EDS) is turned into one static bootstrap with the
//! route tables and endpoint assignments inline (`weft_test::envoy::static_bootstrap`) and checked
//! by `envoy --mode validate` (Envoy from `ENVOY_BIN` or the project venv; a missing Envoy fails
//! the test). Two sources of input:
//!
//! * every golden case (tests/golden/*.yaml) for every node it names;
//! * a property test: random but valid Istio YAML (ServiceEntries, WorkloadEntries, registry
//!   instances, VirtualServices, DestinationRules, Sidecars) parsed exactly as `weft apply` parses
//!   it, generated for a captured sidecar, a bind-mode sidecar, a proxy with an HTTP-proxy port
//!   and a proxyless gRPC client. 24 cases by default (`PROPTEST_CASES=N` for more). A failing
//!   case prints the YAML, the registry instances and Envoy's error, ready to become a golden case.
//!
//! Proxyless gRPC nodes get API listeners (`host:port`, no address), which the Envoy server cannot
//! load ("missing the API listener extension"); for validation each becomes a plain listener on a
//! loopback port carrying the same connection manager, so its routes and clusters are checked.

mod common;
#[path = "envoy_validate/istio.rs"]
mod istio;

use std::cell::Cell;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use prost::Message;
use weft_istio::registry::Instance;
use weft_translate::{Input, Mesh};
use weft_xds::envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use weft_xds::envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use weft_xds::envoy_types::pb::google::protobuf::Any;
use weft_xds::{type_url, NodeInfo, ResourceSet};

/// The resource set of one proxy as a static bootstrap, validated by Envoy.
fn validate_set(envoy: &Path, dir: &Path, name: &str, set: &ResourceSet) -> Result<(), String> {
    let resources: Vec<Any> = type_url::PUSH_ORDER
        .iter()
        .filter_map(|t| set.of_type(t))
        .flatten()
        .enumerate()
        .map(|(k, (_, r))| api_listener_as_plain(&r.body, k))
        .collect();
    let bootstrap = weft_test::envoy::static_bootstrap(name, &resources)?;
    weft_test::envoy::validate(envoy, dir, name, &bootstrap)
}

/// Proxyless gRPC gets API listeners (`host:port`, the connection manager in `api_listener`),
/// which only Envoy Mobile can load. For validation, such a listener becomes an ordinary one on
/// a loopback port of its own whose only filter is that connection manager, so Envoy still checks
/// the connection manager, the route tables and the clusters it names.
fn api_listener_as_plain(any: &Any, k: usize) -> Any {
    if any.type_url != type_url::LISTENER {
        return any.clone();
    }
    let Ok(l) = Listener::decode(any.value.as_slice()) else { return any.clone() };
    let Some(hcm) = l.api_listener.and_then(|a| a.api_listener) else { return any.clone() };
    let plain = Listener {
        name: l.name,
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(20000 + k as u32)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(hcm)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Any { type_url: any.type_url.clone(), value: plain.encode_to_vec() }
}

/// Validates several proxies' sets at once, two Envoy processes at a time; errors by name.
fn validate_all(envoy: &Path, dir: &Path, sets: &[(String, ResourceSet)]) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for chunk in sets.chunks(2) {
        thread::scope(|s| {
            let runs: Vec<_> =
                chunk.iter().map(|(name, set)| (name, s.spawn(move || validate_set(envoy, dir, name, set)))).collect();
            for (name, run) in runs {
                match run.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => errors.push((name.clone(), e)),
                    Err(_) => errors.push((name.clone(), "validation thread panicked".to_string())),
                }
            }
        });
    }
    errors
}

fn file_name(node: &NodeInfo) -> String {
    node.id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

#[test]
fn envoy_accepts_every_golden_case() {
    let envoy: PathBuf = weft_test::tools::envoy_bin();
    let dir = tempfile::tempdir().unwrap();
    let mut sets = Vec::new();
    for path in common::case_files() {
        let case = common::load_case(&path);
        let (mesh, _) = Mesh::build(case.input);
        for node in &case.nodes {
            let stem = path.file_stem().unwrap().to_string_lossy();
            sets.push((format!("{stem}-{}", file_name(node)), mesh.generate(node)));
        }
    }
    assert!(sets.len() >= 8, "only {} golden nodes to validate", sets.len());
    let errors = validate_all(&envoy, dir.path(), &sets);
    let report: Vec<String> = errors.iter().map(|(name, e)| format!("--- {name}\n{e}")).collect();
    assert!(errors.is_empty(), "Envoy rejected {} golden configs:\n{}", errors.len(), report.join("\n"));
}

#[test]
fn a_config_envoy_rejects_is_reported() {
    // The check itself can fail: a listener without an address is not a valid Envoy listener.
    use weft_xds::envoy_types::pb::envoy::config::listener::v3::Listener;
    let envoy = weft_test::tools::envoy_bin();
    let dir = tempfile::tempdir().unwrap();
    let mut set = ResourceSet::default();
    set.insert(weft_xds::Resource::new("broken", &Listener { name: "broken".into(), ..Default::default() }));
    let errors = validate_all(&envoy, dir.path(), &[("broken".to_string(), set)]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].1.contains("broken"), "Envoy's message names the listener: {}", errors[0].1);
}

/// Cases per run: `PROPTEST_CASES`, else 24 (about 20 s of Envoy time in a debug build).
fn case_count() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24)
}

/// The proxies every generated mesh is validated for, as golden `node` directives: a captured
/// sidecar at one of the workloads' addresses (so it has inbound listeners), a bind-mode sidecar
/// (selected by the generated `bind-mode` Sidecar), a proxy with an HTTP-proxy port and a
/// proxyless gRPC client.
fn node_specs(plan: &istio::Plan, workload_ips: &[String]) -> Vec<String> {
    let n = &plan.nodes;
    let ip = if workload_ips.is_empty() {
        "10.99.0.1".to_string()
    } else {
        workload_ips[n.capture_ip.index(workload_ips.len())].clone()
    };
    let (cns, bns, pns) =
        (istio::NAMESPACES[n.capture_ns], istio::NAMESPACES[n.bind_ns], istio::NAMESPACES[n.proxy_ns]);
    vec![
        format!("sidecar~{ip}~client-1.{cns}~{cns}.svc.cluster.local ips={ip} labels=app=client,version=v1"),
        format!("sidecar~10.80.0.2~bound-1.{bns}~{bns}.svc.cluster.local labels=app=bound"),
        format!("sidecar~10.80.0.3~proxied-1.{pns}~{pns}.svc.cluster.local labels=app=proxied http_proxy=15080"),
        format!("sidecar~10.80.0.4~grpc-1.{cns}~{cns}.svc.cluster.local labels=app=client generator=grpc"),
    ]
}

/// Counts of one property run.
#[derive(Default)]
struct Tally {
    generated: Cell<u32>,
    rejected: Cell<u32>,
    validated: Cell<u32>,
}

/// Parses one generated mesh as `weft apply` and the instance API would, allocates VIPs as the
/// control plane does, generates every node's resources and has Envoy validate them.
fn check_plan(envoy: &Path, dir: &Path, plan: &istio::Plan, tally: &Tally) -> Result<(), TestCaseError> {
    tally.generated.set(tally.generated.get() + 1);
    let rendered = plan.render();
    let reject = |what: String| {
        tally.rejected.set(tally.rejected.get() + 1);
        if std::env::var_os("WEFT_SHOW_REJECTED").is_some() {
            eprintln!("rejected: {what}\n{}", rendered.yaml);
        }
        TestCaseError::reject(what)
    };
    let resources = match weft_istio::parse_yaml("generated.yaml", &rendered.yaml) {
        Ok(r) => r,
        Err(e) => return Err(reject(e.to_string())),
    };
    let mut instances = Vec::new();
    for v in &rendered.instances {
        match Instance::from_json("instances", v.clone()) {
            Ok(i) => instances.push(i),
            Err(e) => return Err(reject(e.to_string())),
        }
    }
    let resources: Vec<_> = resources.into_iter().map(Arc::new).collect();
    let vips = Mesh::hosts_needing_vips(&resources, &instances)
        .into_iter()
        .enumerate()
        .map(|(k, key)| (key, IpAddr::from([240, 240, (k / 250) as u8, (k % 250 + 1) as u8])))
        .collect::<std::collections::BTreeMap<_, _>>();
    let specs = node_specs(plan, &rendered.workload_ips);
    let (registry_only, no_default_retry, no_locality_lb) = plan.options;
    let options =
        [("registry_only", registry_only), ("no_default_retry", no_default_retry), ("no_locality_lb", no_locality_lb)];
    let mut input = Input { resources, instances, vips: vips.clone(), options: Default::default() };
    if registry_only {
        input.options.outbound_mode = weft_istio::OutboundMode::RegistryOnly;
    }
    input.options.default_retry = !no_default_retry;
    input.options.locality_lb = !no_locality_lb;
    let (mesh, _) = Mesh::build(input);
    let sets: Vec<(String, ResourceSet)> = specs
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            let node = common::node(spec);
            (format!("case{}-node{k}", tally.generated.get()), mesh.generate(&node))
        })
        .collect();
    tally.validated.set(tally.validated.get() + sets.len() as u32);
    let errors = validate_all(envoy, dir, &sets);
    if errors.is_empty() {
        return Ok(());
    }
    // The failing case as a golden case file (tests/golden/NAME.yaml), then Envoy's errors.
    let mut case = String::from("# A generated mesh that Envoy rejected (tests/envoy_validate.rs).\n");
    for v in &rendered.instances {
        case.push_str(&format!("# golden: instance {v}\n"));
    }
    for ((tenant, host), ip) in &vips {
        case.push_str(&format!("# golden: vip {tenant} {host} {ip}\n"));
    }
    for (option, _) in options.iter().filter(|(_, on)| *on) {
        case.push_str(&format!("# golden: option {option}\n"));
    }
    for spec in &specs {
        case.push_str(&format!("# golden: node {spec}\n"));
    }
    case.push_str(&rendered.yaml);
    let mut report = format!("Envoy rejected the config of {} of {} proxies.\n", errors.len(), specs.len());
    report.push_str(&format!("---- golden case ----\n{case}---- Envoy ----\n"));
    for (name, e) in &errors {
        let k: usize = name.rsplit("node").next().and_then(|k| k.parse().ok()).unwrap_or(0);
        report.push_str(&format!("node {}:\n{e}\n", specs[k]));
    }
    Err(TestCaseError::fail(report))
}

#[test]
fn envoy_accepts_the_config_of_any_valid_istio_input() {
    let envoy = weft_test::tools::envoy_bin();
    let dir = tempfile::tempdir().unwrap();
    let cases = case_count();
    let defaults = Config::default();
    let config = Config {
        cases,
        // A failure is kept as a golden case (the report prints one), not in a regressions file.
        failure_persistence: None,
        max_global_rejects: cases * 4,
        // Every shrink step runs Envoy: stop shrinking after two minutes (or
        // PROPTEST_MAX_SHRINK_TIME milliseconds).
        max_shrink_time: if defaults.max_shrink_time > 0 { defaults.max_shrink_time } else { 120_000 },
        ..defaults
    };
    // Building and shrinking the deeply nested value trees of a whole mesh takes more stack
    // than a test thread has in a debug build.
    let run = thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let tally = Tally::default();
            let mut runner = TestRunner::new(config);
            let result = runner.run(&istio::plan(), |plan| check_plan(&envoy, dir.path(), &plan, &tally));
            (result, tally.generated.get(), tally.rejected.get(), tally.validated.get())
        })
        .unwrap();
    let (result, generated, rejected, validated) = run.join().expect("the property run panicked");
    eprintln!("{generated} generated meshes, {rejected} rejected by the parser, {validated} proxy configs validated");
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!("{reason}"),
        Err(TestError::Abort(reason)) => panic!("property test aborted: {reason}"),
    }
    // The generator should produce valid input: a high rejection rate means it tests little.
    assert!(rejected * 5 <= generated, "{rejected} of {generated} generated meshes were rejected by the parser");
}
