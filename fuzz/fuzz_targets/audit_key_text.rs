#![no_main]
//! Fuzz target: see `piivault::fuzzing::audit_key_text`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::audit_key_text(data));
