//! The few cgroup facts the runtime reads itself; libcontainer creates, limits and removes
//! the containers' cgroups. Works on both hierarchies: v1 (one tree per controller) and v2
//! (one unified tree, Raspberry Pi OS bookworm).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Whether the host runs the unified (v2) hierarchy.
pub fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The parent cgroup of every pod, relative to the hierarchy root.
pub fn pods_parent(node: &str) -> String {
    format!("/bramble/{node}")
}

/// The cgroup of one container, relative to the hierarchy root (`linux.cgroupsPath`).
pub fn container_path(node: &str, pod_uid: &str, container_id: &str) -> String {
    format!("{}/pod{pod_uid}/{container_id}", pods_parent(node))
}

/// Whether containers' swap can be limited here: v1 with swap accounting
/// (`memory.memsw.*`), or v2 (`memory.swap.max`) on a host that has swap at all.
pub fn swap_limitable() -> bool {
    if is_v2() {
        let has_swap = std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
        return has_swap;
    }
    Path::new(ROOT).join("memory").join("memory.memsw.limit_in_bytes").exists()
}

/// How many times the kernel's OOM killer struck inside `path` (a `cgroupsPath`).
pub fn oom_kills(path: &str) -> u64 {
    let rel = path.trim_start_matches('/');
    let (file, key) = if is_v2() {
        (Path::new(ROOT).join(rel).join("memory.events"), "oom_kill")
    } else {
        (Path::new(ROOT).join("memory").join(rel).join("memory.oom_control"), "oom_kill")
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok())))
        .unwrap_or(0)
}

/// Every directory that holds pod `uid`'s cgroups: one on v2, one per controller on v1.
fn pod_dirs(node: &str, uid: &str) -> Vec<PathBuf> {
    let rel = format!("{}/pod{uid}", pods_parent(node).trim_start_matches('/'));
    if is_v2() {
        return vec![Path::new(ROOT).join(rel)];
    }
    std::fs::read_dir(ROOT)
        .map(|entries| {
            entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path().join(&rel)).collect()
        })
        .unwrap_or_default()
}

/// Removes the pod's (by now empty) cgroup directories; containers' own are gone already.
pub fn remove_pod(node: &str, uid: &str) {
    for dir in pod_dirs(node, uid) {
        if !dir.exists() {
            continue;
        }
        // Children first: a container whose monitor died may have left its cgroup behind.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a pod cgroup");
        }
        // The node's and bramble's parents go with their last pod.
        if let Some(node_dir) = dir.parent() {
            let _ = std::fs::remove_dir(node_dir);
            if let Some(top) = node_dir.parent() {
                let _ = std::fs::remove_dir(top);
            }
        }
    }
}
