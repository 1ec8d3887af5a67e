#![no_main]
//! Fuzz target: see `piivault::fuzzing::json_bodies`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::json_bodies(data));
