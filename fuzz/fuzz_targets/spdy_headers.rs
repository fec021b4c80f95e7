#![no_main]
//! A SYN_STREAM header block as a kubectl exec client sends it (compressed).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Errors are the expected answer to most inputs.
    let _ = bramble::agent::spdy::header_block(data);
});
