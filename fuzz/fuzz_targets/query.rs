#![no_main]
//! See `bramble::api::fuzz::query`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble::api::fuzz::query(data));
