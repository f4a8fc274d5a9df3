//! `cargo +nightly fuzz run query_parser` (from the repository root): the query parser must never
//! panic or overflow its stack on any UTF-8 input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = clusteraudit_core::query::parse(s);
    }
});
