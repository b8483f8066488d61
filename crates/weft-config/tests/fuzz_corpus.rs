//! Replays the `config_yaml` fuzz corpus as an ordinary test, so CI checks every input the
//! fuzzer kept without needing a fuzzer: the loader accepts or rejects, never panics.

use std::path::PathBuf;

#[test]
fn config_fuzz_corpus_never_panics() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_yaml");
    let mut seen = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let result = weft_config::parse_str(text, &name);
            // Seeds named valid-* / broken-* document their expected outcome.
            if name.starts_with("valid-") {
                assert!(result.is_ok(), "{name}: {:?}", result.err());
            }
            if name.starts_with("broken-") {
                let e = result.as_ref().expect_err(&name).to_string();
                assert!(e.starts_with(&name), "{name}: error must name the file: {e}");
            }
            valid += usize::from(result.is_ok());
        }
        seen += 1;
    }
    assert!(seen >= 8, "corpus has {seen} files");
    assert!(valid >= 1);
}
