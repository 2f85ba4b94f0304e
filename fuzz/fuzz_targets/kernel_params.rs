#![no_main]
//! See `arrowbridge_fuzz_targets::kernel_params`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::kernel_params(data));
