#![no_main]
//! Fuzz target: see `piivault::fuzzing::field_values`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::field_values(data));
