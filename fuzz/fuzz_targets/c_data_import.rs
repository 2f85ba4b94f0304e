#![no_main]
//! See `arrowbridge_fuzz_targets::c_data_import`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::c_data_import(data));
