//! Replays every input kept in `fuzz/regressions/<target>/` through its fuzz target's entry
//! point: inputs that once crashed, hung or blew up a decoder, and the hostile shapes the
//! limits exist for. Each must now finish promptly without a panic.

use std::path::Path;
use std::time::{Duration, Instant};

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("regressions").join(target);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let started = Instant::now();
        run(&data);
        // Generous: a debug build on a busy machine; a regression is minutes, not seconds.
        assert!(started.elapsed() < Duration::from_secs(20), "{} took {:?}", path.display(), started.elapsed());
        seen += 1;
    }
    assert!(seen > 0, "no inputs in {}", dir.display());
}

#[test]
fn bodies() {
    replay("body", bramble::api::fuzz::body);
}

#[test]
fn protobuf_bodies() {
    replay("protobuf", bramble::api::fuzz::protobuf);
}

#[test]
fn patches() {
    replay("patch", bramble::api::fuzz::patch);
}

#[test]
fn queries_and_selectors() {
    replay("query", bramble::api::fuzz::query);
}

#[test]
fn spdy_header_blocks() {
    replay("spdy_headers", |data| {
        // An error is the right answer to these inputs; only a panic or a hang fails.
        let _ = bramble::agent::spdy::header_block(data);
    });
}

#[test]
fn image_manifests() {
    replay("image_manifest", bramble::images::fuzz_manifest);
}

#[test]
fn layer_tars() {
    replay("layer_tar", |data| {
        let dir = std::env::temp_dir().join(format!("bramble-layer-regression-{}", std::process::id()));
        // An error is a fine answer; what matters is that nothing lands outside `dir`.
        let _ = bramble::images::layer::unpack(data, &dir);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
