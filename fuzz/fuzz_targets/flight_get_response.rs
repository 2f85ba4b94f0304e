#![no_main]
//! See `arrowbridge_fuzz_targets::flight_get_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::flight_get_response(data));
