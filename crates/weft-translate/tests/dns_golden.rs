//! Golden tests of the DNS name table: Istio YAML in (tests/golden-dns/NAME.yaml), one table per
//! node out (tests/golden-dns/NAME.golden), a line per name. `UPDATE_GOLDEN=1 cargo test -p
//! weft-translate --test dns_golden` rewrites the expected files; review the diff.
//!
//! Directives in comments, as in tests/golden.rs:
//!   # golden: node ID [ns=NS] [tenant=T]
//!   # golden: vip TENANT HOST IP
//!   # golden: instance {JSON of a registry instance}

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use weft_translate::{Input, Mesh, Options};
use weft_xds::envoy_types::pb::envoy::config::core::v3::Node;
use weft_xds::nds::NameTable;
use weft_xds::NodeInfo;

fn node(spec: &str) -> NodeInfo {
    let mut parts = spec.split_whitespace();
    let id = parts.next().expect("node id");
    let mut n = NodeInfo::from_node(&Node { id: id.to_string(), ..Default::default() }).expect("node id parses");
    for p in parts {
        match p.split_once('=') {
            Some(("ns", v)) => n.namespace = v.to_string(),
            Some(("tenant", v)) => n.tenant = v.to_string(),
            _ => panic!("unknown node option {p}"),
        }
    }
    n
}

fn run_case(path: &Path) -> String {
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
            "vip" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                input.vips.insert((f[0].to_string(), f[1].to_string()), f[2].parse().expect("vip"));
            }
            "instance" => {
                let v: serde_json::Value = serde_json::from_str(rest).expect("instance JSON");
                let i = weft_istio::registry::Instance::from_json(&file, v).unwrap_or_else(|e| panic!("{e}"));
                input.instances.push(i);
            }
            other => panic!("unknown directive {other}"),
        }
    }
    assert!(!nodes.is_empty(), "{file}: no `# golden: node` directive");
    let (mesh, _) = Mesh::build(input);
    let mut out = String::new();
    for n in &nodes {
        let r = mesh.name_table(n);
        let t = NameTable::decode(r.body.value.as_slice()).expect("name table decodes");
        let _ = writeln!(out, "### node {} (ns {}, tenant {}) version {}", n.id, n.namespace, n.tenant, r.version);
        for (host, info) in &t.table {
            let _ = writeln!(out, "{host} -> {} [{}]", info.ips.join(","), info.registry);
            if !info.shortname.is_empty() {
                let _ = writeln!(out, "  shortname {} namespace {}", info.shortname, info.namespace);
            }
            for alt in &info.alt_hosts {
                let _ = writeln!(out, "  alt {alt}");
            }
        }
    }
    out
}

#[test]
fn golden_name_tables() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden-dns");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "golden cases missing in {}", dir.display());
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    for case in &cases {
        let got = run_case(case);
        let golden = case.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", golden.display()));
        assert_eq!(want, got, "{} changed (UPDATE_GOLDEN=1 to accept)", golden.display());
    }
}
