#![no_main]
//! See `arrowbridge_fuzz_targets::tensor_metadata`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::tensor_metadata(data));
