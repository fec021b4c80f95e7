#![no_main]
//! See `bramble::api::fuzz::body`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble::api::fuzz::body(data));
