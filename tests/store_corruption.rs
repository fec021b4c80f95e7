//! A damaged card, tried on copies of a real data directory: a state machine with flipped
//! blocks is refused or rebuilt from the Raft log, never served wrong and never a crash; a
//! lost state machine is rebuilt; `--check-store` reports what it finds without changing
//! anything.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{TestServer, configmap};

const CM: &str = "/api/v1/namespaces/default/configmaps";

/// Every ConfigMap of `default` by name: (resourceVersion, data).
async fn configmaps(server: &TestServer) -> BTreeMap<String, (String, serde_json::Value)> {
    // The test's own: the namespace's kube-root-ca.crt is published whenever the control
    // loops get to it.
    let r = server.client().get(&format!("{CM}?fieldSelector=metadata.name%21%3Dkube-root-ca.crt")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let list = r.json();
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let name = i["metadata"]["name"].as_str().expect("name").to_string();
            (name, (i["metadata"]["resourceVersion"].as_str().expect("rv").to_string(), i["data"].clone()))
        })
        .collect()
}

/// A stopped server whose state machine holds `n` ConfigMaps in value chunks (a clean stop
/// makes sled durable), some of them updated and some deleted.
async fn populated(n: usize, extra: &[&str]) -> (TestServer, BTreeMap<String, (String, serde_json::Value)>) {
    let mut server = TestServer::start(extra);
    let client = server.client();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..n {
        // Hex of a pseudo-random stream: compresses about as well as real object text.
        let pad: String = (0..100 + i % 300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("{:x}", seed & 0xf)
            })
            .collect();
        let r = client.post(CM, &configmap(&format!("cm-{i:04}"), &[("i", &i.to_string()), ("pad", &pad)])).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    for i in (0..n).step_by(7) {
        let r = client.delete(&format!("{CM}/cm-{i:04}")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    for i in (1..n).step_by(5) {
        let patch = serde_json::json!({"data": {"updated": "yes"}});
        let r = client.patch_merge(&format!("{CM}/cm-{i:04}"), &patch).await;
        assert!(r.status == 200 || r.status == 404, "{}", String::from_utf8_lossy(&r.body));
    }
    let expected = configmaps(&server).await;
    drop(client);
    assert!(server.stop().success(), "{}", server.log());
    (server, expected)
}

fn check_store(server: &TestServer) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bramble"))
        .args(["server", "--check-store", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .expect("run bramble");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Every file under `dir` with its size and checksum, to show that nothing changed.
fn snapshot_of(dir: &Path) -> BTreeMap<String, (usize, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                out.insert(p.display().to_string(), (bytes.len(), crc32fast::hash(&bytes)));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_blocks_in_the_state_machine_are_refused_or_rebuilt_never_served() {
    let (original, expected) = populated(600, &[]).await;
    let (ok, report) = check_store(&original);
    eprintln!("intact: {report}");
    assert!(ok && report.contains("log and state machine: consistent"), "{report}");
    let db_file = original.data_dir().join("server/store/db/db");
    let size = std::fs::metadata(&db_file).expect("sled's file").len();
    assert!(size > 128 * 1024, "sled holds the objects: {size} bytes");
    for percent in [10u64, 30, 50, 70, 90] {
        let mut copy = TestServer::copy_of(&original);
        let file = copy.data_dir().join("server/store/db/db");
        let mut bytes = std::fs::read(&file).expect("read");
        let at = (bytes.len() as u64 * percent / 100) as usize;
        for b in &mut bytes[at..at + 64] {
            *b ^= 0xA5;
        }
        std::fs::write(&file, &bytes).expect("write the damaged file");
        let before = snapshot_of(&copy.data_dir());
        let (check_ok, report) = check_store(&copy);
        eprintln!("{percent}%: --check-store {}: {report}", if check_ok { "ok" } else { "failed" });
        assert_eq!(snapshot_of(&copy.data_dir()), before, "--check-store changed the data dir");
        match copy.try_spawn() {
            Ok(()) => {
                // Started: then every object reads back exactly as acknowledged.
                let got = configmaps(&copy).await;
                assert_eq!(got, expected, "damage at {percent}% served other objects ({report})");
                let log = copy.log();
                if !check_ok {
                    assert!(log.contains("rebuilding it from the snapshot and the Raft log"), "{percent}%: {log}");
                }
                // And it keeps taking writes.
                let r = copy.client().post(CM, &configmap("after-damage", &[])).await;
                assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            }
            Err((status, log)) => {
                // Refused: with an exit status, not a crash, and a message naming the store.
                assert_eq!(status.code(), Some(1), "{percent}%: {status}: {log}");
                assert!(log.contains("server/store"), "{percent}%: the refusal names no file: {log}");
                assert!(!check_ok, "{percent}%: --check-store said ok for a store that does not start: {report}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_machine_is_rebuilt_from_the_log() {
    let (original, expected) = populated(120, &[]).await;
    let mut copy = TestServer::copy_of(&original);
    std::fs::remove_dir_all(copy.data_dir().join("server/store/db")).expect("remove sled");
    let (ok, report) = check_store(&copy);
    assert!(!ok && report.contains("the next start rebuilds the state machine"), "{report}");
    copy.try_spawn().unwrap_or_else(|(s, log)| panic!("{s}: {log}"));
    assert_eq!(configmaps(&copy).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_store_names_a_damaged_log_and_changes_nothing() {
    let (original, _) = populated(30, &[]).await;
    let log = original.data_dir().join("server/store/raft/raft.log");
    let mut bytes = std::fs::read(&log).expect("raft.log");
    // A flipped bit in the payload of the second record (each append starts on a page).
    bytes[4096 + 8 + 5] ^= 0x04;
    std::fs::write(&log, &bytes).expect("write");
    let before = snapshot_of(&original.data_dir());
    let (ok, report) = check_store(&original);
    assert!(!ok, "{report}");
    assert!(report.contains("raft log: DAMAGED") && report.contains("raft.log is corrupt"), "{report}");
    assert_eq!(snapshot_of(&original.data_dir()), before);
}

/// Damages every file of sled at once (so sled cannot fall back to an older copy of itself).
fn damage_sled(server: &TestServer) {
    let db = server.data_dir().join("server/store/db");
    for e in std::fs::read_dir(&db).expect("db") {
        let p = e.expect("entry").path();
        if !p.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&p).expect("read");
        let at = bytes.len() / 2;
        let end = (at + 64).min(bytes.len());
        for b in &mut bytes[at..end] {
            *b ^= 0x5A;
        }
        std::fs::write(&p, &bytes).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_purged_log_the_state_machine_is_rebuilt_from_the_snapshot_or_refused() {
    // A snapshot every 40 entries: the log is purged behind it, so sled alone holds the
    // older objects and a rebuild needs the snapshot.
    let (original, expected) = populated(300, &["--store-snapshot-entries", "40"]).await;
    let (ok, report) = check_store(&original);
    assert!(ok, "{report}");
    let purged: u64 = report
        .split("purged up to ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the log was never purged: {report}"));
    assert!(purged > 0, "{report}");

    // sled emptied (as a card that lost its last segments would leave it): rebuilt.
    let mut lost = TestServer::copy_of(&original);
    std::fs::remove_dir_all(lost.data_dir().join("server/store/db")).expect("remove sled");
    let (ok, report) = check_store(&lost);
    assert!(!ok && report.contains("the next start rebuilds the state machine from the snapshot"), "{report}");
    lost.try_spawn().unwrap_or_else(|(s, log)| panic!("{s}: {log}"));
    assert_eq!(configmaps(&lost).await, expected, "rebuilt from the snapshot and the log");
    assert!(lost.log().contains("rebuilding it from the snapshot"), "{}", lost.log());

    // Damaged sled: refused or rebuilt, never served wrong.
    let mut damaged = TestServer::copy_of(&original);
    damage_sled(&damaged);
    match damaged.try_spawn() {
        Ok(()) => assert_eq!(configmaps(&damaged).await, expected),
        Err((status, log)) => {
            assert_eq!(status.code(), Some(1), "{status}: {log}");
            assert!(log.contains("server/store"), "{log}");
        }
    }

    // sled gone and the snapshot damaged too: nothing to rebuild from, so a refusal that
    // names both, and nothing changed.
    let mut hopeless = TestServer::copy_of(&original);
    std::fs::remove_dir_all(hopeless.data_dir().join("server/store/db")).expect("remove sled");
    let snapshot = hopeless.data_dir().join("server/store/snapshot.bin");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot.bin");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&snapshot, &bytes).expect("write");
    let (ok, report) = check_store(&hopeless);
    assert!(!ok && report.contains("snapshot: DAMAGED"), "{report}");
    let before = snapshot_of(&hopeless.data_dir());
    let (status, log) = hopeless.try_spawn().expect_err("started without anything to rebuild from");
    assert_eq!(status.code(), Some(1), "{status}: {log}");
    assert!(log.contains("snapshot.bin: checksum mismatch"), "{log}");
    assert_eq!(snapshot_of(&hopeless.data_dir()), before, "a refusal changes nothing");
}
