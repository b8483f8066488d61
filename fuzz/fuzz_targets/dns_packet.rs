//! `weft dns` on arbitrary bytes: as a client packet (parsing, mesh answers, errors,
//! truncation) and as an upstream answer (cache storage, replay with aged TTLs, relaying).
//!
//! The body lives in `weft_dns::fuzzing` so `cargo test -p weft-dns` replays this target's
//! corpus through the very same checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_dns::fuzzing::packet(data);
});
