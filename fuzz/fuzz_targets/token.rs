#![no_main]
//! Fuzz target: see `piivault::fuzzing::token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::token(data));
