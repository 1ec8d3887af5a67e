#![no_main]
//! Fuzz target: see `piivault::fuzzing::stored_ciphertext`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| piivault::fuzzing::stored_ciphertext(data));
