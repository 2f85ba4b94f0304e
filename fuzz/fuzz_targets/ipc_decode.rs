#![no_main]
//! See `arrowbridge_fuzz_targets::ipc_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| arrowbridge_fuzz_targets::ipc_decode(data));
