#![no_main]
//! See `arrowbridge_fuzz_targets::flight_ticket`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::flight_ticket(data));
