#![no_main]
//! See `bramble::api::fuzz::protobuf`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble::api::fuzz::protobuf(data));
