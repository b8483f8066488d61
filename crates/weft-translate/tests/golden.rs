//! Golden tests: Istio YAML in (tests/golden/NAME.yaml), xDS out (tests/golden/NAME.golden),
//! rendered with `weft_translate::render`. `UPDATE_GOLDEN=1 cargo test -p weft-translate
//! --test golden` rewrites the expected files; review the diff before committing it.
//!
//! Besides the Istio documents, a case file carries directives in comments (`# golden: node ...`,
//! `instance`, `vip`, `option`; see tests/common/mod.rs). tests/envoy_validate.rs runs the same
//! cases through `envoy --mode validate`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use weft_translate::render::render_set;
use weft_translate::Mesh;

fn run_case(path: &Path) -> String {
    let common::Case { input, nodes, .. } = common::load_case(path);
    let (mesh, warnings) = Mesh::build(input);
    let mut out = String::from("### warnings\n");
    for w in &warnings {
        out.push_str(&format!("{w}\n"));
    }
    for n in &nodes {
        out.push_str(&format!("\n### node {} (ns {}, tenant {})\n", n.id, n.namespace, n.tenant));
        out.push_str(&render_set(&mesh.generate(n)));
    }
    out
}

fn first_difference(want: &str, got: &str) -> String {
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        if w != g {
            return format!("line {}:\n  want: {w}\n  got:  {g}", i + 1);
        }
    }
    format!("lengths differ: want {} lines, got {}", want.lines().count(), got.lines().count())
}

#[test]
fn golden_cases() {
    let cases = common::case_files();
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut failures = BTreeMap::new();
    for case in &cases {
        let got = run_case(case);
        let golden = case.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", golden.display()));
        if want != got {
            failures.insert(case.display().to_string(), first_difference(&want, &got));
        }
    }
    assert!(failures.is_empty(), "golden output changed (UPDATE_GOLDEN=1 to accept):\n{failures:#?}");
}

#[test]
fn generation_is_deterministic() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for case in ["bookinfo.yaml", "external.yaml"] {
        assert_eq!(run_case(&dir.join(case)), run_case(&dir.join(case)), "{case}");
    }
}
