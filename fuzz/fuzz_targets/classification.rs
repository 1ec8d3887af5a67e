#![no_main]
//! Fuzz target: see `piivault::fuzzing::classification`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::classification(data));
