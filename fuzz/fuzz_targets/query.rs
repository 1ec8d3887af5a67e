#![no_main]
//! Fuzz target: see `piivault::fuzzing::query`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::query(data));
