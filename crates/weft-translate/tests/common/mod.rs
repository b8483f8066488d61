//! Golden case files (tests/golden/NAME.yaml), shared by the golden and Envoy validation tests.
//!
//! Besides the Istio documents, a case file carries directives in comments:
//!   # golden: node ID [ns=NS] [labels=k=v,k=v] [ips=IP,IP] [generator=grpc] [tenant=T] [http_proxy=PORT]
//!   # golden: instance {JSON of a registry instance}
//!   # golden: vip TENANT HOST IP
//!   # golden: option registry_only | no_default_retry | no_locality_lb

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weft_istio::registry::Instance;
use weft_translate::{Input, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::Node;
use weft_xds::{Generator, NodeInfo};

/// One case: the translator's input and the proxies to generate for.
pub struct Case {
    pub input: Input,
    pub nodes: Vec<NodeInfo>,
}

/// Every `*.yaml` case of tests/golden, sorted.
pub fn case_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "golden cases missing in {}", dir.display());
    cases
}

pub fn node(spec: &str) -> NodeInfo {
    let mut parts = spec.split_whitespace();
    let id = parts.next().expect("node id");
    let mut n = NodeInfo::from_node(&Node { id: id.to_string(), ..Default::default() }).expect("node id parses");
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("node option {p:?} is not key=value"));
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

pub fn load_case(path: &Path) -> Case {
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
    assert!(!nodes.is_empty(), "{file}: no `# golden: node` directive");
    Case { input, nodes }
}
