//! `bramble killall`: stops every container of this node and removes what its pods had
//! (mounts, namespaces, cgroups, directories), as k3s's `k3s-killall.sh` does. For
//! uninstalling, for a node that must be wiped, and for tests that must leave nothing
//! behind even when the agent itself is broken.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::run::RunInfo;
use super::volumes;
use crate::runtime::{Layout, cgroup, network, podns};

/// Kills and removes every pod under `data_dir`; returns how many pods were removed.
pub fn killall(data_dir: &Path, log_dir: &Path) -> usize {
    let pods_dir = data_dir.join("agent").join("pods");
    let Ok(entries) = std::fs::read_dir(&pods_dir) else { return 0 };
    let mut removed = 0;
    for pod in entries.flatten() {
        let dir = pod.path();
        let uid = pod.file_name().to_string_lossy().into_owned();
        let obj: Value = std::fs::read(dir.join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let node = obj["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        let mut shims = Vec::new();
        for c in std::fs::read_dir(dir.join("containers")).into_iter().flatten().flatten() {
            let Some(info) =
                std::fs::read(c.path().join("run.json")).ok().and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok())
            else {
                continue;
            };
            let alive = std::fs::read(format!("/proc/{}/cmdline", info.shim_pid))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|a| a == info.id.as_bytes()));
            if alive {
                // SAFETY: kill with a pid the live shim vouches for.
                unsafe { libc::kill(info.init_pid, libc::SIGKILL) };
                shims.push(info.shim_pid);
            }
        }
        // The shims reap their containers and remove their cgroups; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shims.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in std::fs::read_dir(dir.join("containers")).into_iter().flatten().flatten() {
            super::worker::remove_run_dir(&c.path());
        }
        volumes::unmount_all(&dir);
        release_address(data_dir, &uid);
        if !node.is_empty() {
            let layout = Layout::new(data_dir, &node, log_dir);
            podns::remove(&layout.pod_ns_dir(&uid));
            cgroup::remove_pod(&node, &uid);
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            let _ = std::fs::remove_dir_all(layout.pod_log_dir(ns, name, &uid));
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
        if !node.is_empty() {
            // The node's volatile directories, once nothing is left in them.
            let run_dir = Layout::new(data_dir, &node, log_dir).run_dir;
            for d in [run_dir.join("pods"), run_dir.join("runtime"), run_dir.clone()] {
                let _ = std::fs::remove_dir(d);
            }
            if let Some(parent) = run_dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    // The node's volatile directories, even when no pod was left.
    if let Ok(node) = std::fs::read_to_string(data_dir.join("agent").join("node-name")) {
        let run_dir = Layout::new(data_dir, node.trim(), log_dir).run_dir;
        for d in [run_dir.join("pods"), run_dir.join("runtime"), run_dir.clone()] {
            let _ = std::fs::remove_dir(d);
        }
        if let Some(parent) = run_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    // The bridge goes with the pods, as k3s-killall removes cni0.
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build()
        && let Err(e) = rt.block_on(network::remove_bridge())
    {
        eprintln!("bramble killall: {e:#}");
    }
    removed
}

/// Frees the pod's address record, whatever the node's range.
fn release_address(data_dir: &Path, uid: &str) {
    let dir = data_dir.join("agent").join("ipam");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if std::fs::read_to_string(e.path()).is_ok_and(|holder| holder == uid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
