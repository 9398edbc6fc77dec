//! Fuzz target: open arbitrary bytes as an `.ovbank` file, walk every
//! accessor and `verify` — once as given, once behind repaired checksums so
//! that mutations reach the section parsers. Must never panic, hang or
//! allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ovdiff_store::ovbank::{exercise_untrusted, fuzz_repair_checksums};

fuzz_target!(|data: &[u8]| {
    exercise_untrusted(data.to_vec());
    let mut repaired = data.to_vec();
    fuzz_repair_checksums(&mut repaired);
    exercise_untrusted(repaired);
});
