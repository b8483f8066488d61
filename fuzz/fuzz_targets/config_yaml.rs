//! The static config loader on arbitrary text: it must reject, never panic
//! or hang, whatever an operator (or a broken deploy) puts in the file.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader takes `&str` because files are read as UTF-8; invalid
    // UTF-8 never reaches it.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft_config::parse_str(text, "fuzz.yaml");
    }
});
