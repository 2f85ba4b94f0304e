#![no_main]
//! See `arrowbridge_fuzz_targets::ragged_import`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::ragged_import(data));
