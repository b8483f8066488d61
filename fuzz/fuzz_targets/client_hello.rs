//! TLS ClientHello parsing and protocol detection on arbitrary bytes.
//!
//! The body lives in `weft_sniff::fuzzing` so `cargo test -p weft-sniff`
//! replays this target's corpus through the very same checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_sniff::fuzzing::client_hello(data);
});
