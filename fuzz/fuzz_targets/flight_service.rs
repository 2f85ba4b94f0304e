#![no_main]
//! See `arrowbridge_fuzz_targets::flight_service`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::flight_service(data));
