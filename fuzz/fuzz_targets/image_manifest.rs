#![no_main]
//! An image archive's index or manifest, as the importer reads it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bramble::images::fuzz_manifest(data));
