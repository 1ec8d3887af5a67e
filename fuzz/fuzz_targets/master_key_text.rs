#![no_main]
//! Fuzz target: see `piivault::fuzzing::master_key_text`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::master_key_text(data));
