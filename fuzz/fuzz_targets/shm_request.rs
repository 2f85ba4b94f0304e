#![no_main]
//! See `arrowbridge_fuzz_targets::shm_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::shm_request(data));
