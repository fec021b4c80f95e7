#![no_main]
//! An image layer (tar headers, names, links, whiteouts) unpacked into a scratch directory
//! that is removed after each input. Run as root, as the agent runs.
use std::sync::atomic::{AtomicU64, Ordering};

static RUN: AtomicU64 = AtomicU64::new(0);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bramble-fuzz-layer-{}-{n}", std::process::id()));
    // Errors are the expected answer to most inputs.
    let _ = bramble::images::layer::unpack(data, &dir);
    // Whatever the layer made must stay under `dir`; removing it is the cleanup.
    let _ = std::fs::remove_dir_all(&dir);
});
