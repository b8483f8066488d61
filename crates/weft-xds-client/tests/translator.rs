//! Everything weft's translator generates converts: every golden case of `weft-translate`
//! (tests/golden/*.yaml there), for every node the case declares, through the same store the
//! ADS client uses. Nothing may be rejected, and the assembled config must be whole: every RDS
//! name a listener uses and every EDS assignment a cluster needs is in the generated set. Each
//! sidecar node is also generated a second time asking for an HTTP-proxy listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weft_istio::registry::Instance;
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::Node;
use weft_xds::{Generator, NodeInfo};
use weft_xds_client::store::{Decoded, Kind, Store};

/// `# golden: node ID [ns=NS] [labels=k=v,..] [ips=IP,..] [generator=grpc] [tenant=T] [http_proxy=PORT]`
fn node(spec: &str) -> NodeInfo {
    let mut parts = spec.split_whitespace();
    let id = parts.next().expect("node id");
    let mut n = NodeInfo::from_node(&Node { id: id.to_string(), ..Default::default() }).expect("node id parses");
    for p in parts {
        let (k, v) = p.split_once('=').expect("node option key=value");
        match k {
            "ns" => n.namespace = v.to_string(),
            "tenant" => n.tenant = v.to_string(),
            "generator" if v == "grpc" => n.generator = Generator::Grpc,
            "http_proxy" => n.http_proxy_port = Some(v.parse().expect("http_proxy port")),
            "ips" => n.ips = v.split(',').map(|ip| ip.parse().expect("ip")).collect(),
            "labels" => {
                for kv in v.split(',') {
                    let (lk, lv) = kv.split_once('=').expect("label k=v");
                    n.labels.insert(lk.to_string(), lv.to_string());
                }
            }
            other => panic!("unknown node option {other}"),
        }
    }
    n
}

/// Builds the mesh of one case and the nodes it declares.
fn case(path: &Path) -> (Mesh, Vec<NodeInfo>) {
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let resources = weft_istio::parse_yaml(&file, &text).unwrap_or_else(|e| panic!("{file}:\n{e}"));
    let mut input = Input {
        resources: resources.into_iter().map(Arc::new).collect(),
        options: Options::default(),
        ..Default::default()
    };
    let mut nodes = Vec::new();
    for line in text.lines() {
        let Some(directive) = line.strip_prefix("# golden: ") else { continue };
        let (what, rest) = directive.split_once(' ').unwrap_or((directive, ""));
        match what {
            "node" => nodes.push(node(rest)),
            "instance" => {
                let v: serde_json::Value = serde_json::from_str(rest).expect("instance JSON");
                input.instances.push(Instance::from_json(&file, v).unwrap_or_else(|e| panic!("{e}")));
            }
            "vip" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                input.vips.insert((f[0].to_string(), f[1].to_string()), f[2].parse().expect("vip"));
            }
            "option" => match rest {
                "registry_only" => input.options.outbound_mode = weft_istio::OutboundMode::RegistryOnly,
                "no_default_retry" => input.options.default_retry = false,
                "no_locality_lb" => input.options.locality_lb = false,
                other => panic!("unknown option {other}"),
            },
            other => panic!("unknown directive {other}"),
        }
    }
    // The same sidecars asking for the HTTP-proxy listener (node metadata HTTP_PROXY_PORT).
    let with_proxy: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| n.generator != Generator::Grpc)
        .map(|n| NodeInfo { http_proxy_port: Some(15080), ..n.clone() })
        .collect();
    nodes.extend(with_proxy);
    (Mesh::build(input).0, nodes)
}

#[test]
fn every_resource_the_translator_generates_converts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weft-translate/tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no translator cases in {}", dir.display());
    let mut converted = 0;
    let mut failures = Vec::new();
    for path in &cases {
        let (mesh, nodes) = case(path);
        for n in &nodes {
            let set = mesh.generate(n);
            let mut store = Store::new(Default::default());
            for kind in Kind::ALL {
                for (name, r) in set.of_type(kind.url()).into_iter().flatten() {
                    let outcome = Decoded::decode(kind, &r.body).and_then(|d| store.put(kind, name, &r.version, d));
                    match outcome {
                        Ok(_) => converted += 1,
                        Err(e) => failures.push(format!("{} node {}: {e}", path.display(), n.id)),
                    }
                }
            }
            if n.generator == Generator::Grpc {
                // Proxyless clients get API listeners, which a proxy skips; clusters still convert.
                continue;
            }
            let missing = store.missing();
            assert!(missing.is_empty(), "{} node {}: the set lacks {missing:?}", path.display(), n.id);
            let cfg = store.assemble();
            assert!(!cfg.listeners.is_empty(), "{} node {}: no listeners", path.display(), n.id);
            if n.http_proxy_port.is_some() {
                let l = cfg.listeners.iter().find(|l| l.name == "127.0.0.1_15080");
                assert!(l.is_some_and(|l| l.address.to_string() == "127.0.0.1:15080"), "{}", path.display());
                assert!(cfg.route_configs.contains_key("http_proxy") || !failures.is_empty(), "{}", path.display());
            }
        }
    }
    assert!(failures.is_empty(), "rejected:\n{}", failures.join("\n"));
    assert!(converted > 50, "only {converted} resources converted");
}
