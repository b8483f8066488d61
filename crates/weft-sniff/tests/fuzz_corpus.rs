//! Replays the `client_hello` fuzz corpus through the fuzz target's body, so
//! every input the fuzzer ever found interesting stays a regression test
//! without needing a fuzzer (or nightly) in CI.

use std::path::PathBuf;

#[test]
fn replay_client_hello_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/client_hello");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut visited = 0usize;
    for entry in entries {
        let path = entry.expect("read corpus entry").path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| weft_sniff::fuzzing::client_hello(&data));
        assert!(outcome.is_ok(), "corpus input {} failed", path.display());
        visited += 1;
    }
    assert!(visited >= 1, "no corpus files in {}", dir.display());
}
