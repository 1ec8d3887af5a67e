#![no_main]
//! Fuzz target: see `piivault::fuzzing::policy`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::policy(data));
