#![no_main]
//! See `bramble::api::fuzz::patch`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble::api::fuzz::patch(data));
