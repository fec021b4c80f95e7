//! `bramble killall`: stops every container of this node and removes what its pods had
//! (mounts, namespaces, cgroups, directories), as k3s's `k3s-killall.sh` does. For
//! uninstalling, for a node that must be wiped, and for tests that must leave nothing
//! behind even when the agent itself is broken.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::run::RunInfo;
use super::volumes;
use crate::agent::net::bridge as network;
use crate::runtime::{Layout, cgroup, podns};

/// Kills and removes every pod under `data_dir`; returns how many pods were removed.
pub fn killall(data_dir: &Path, log_dir: &Path) -> usize {
    // Monitors the pods' records do not name go first, so the pods' cgroups empty.
    if let Ok(node) = std::fs::read_to_string(data_dir.join("agent").join("node-name")) {
        kill_unrecorded_monitors(&Layout::new(data_dir, node.trim(), log_dir).runtime_root());
    }
    let pods_dir = data_dir.join("agent").join("pods");
    let mut removed = 0;
    for pod in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
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
        // Sandboxes without a pod record: the agent stopped between making a pod's
        // namespaces and recording the pod.
        for orphan in std::fs::read_dir(run_dir.join("pods")).into_iter().flatten().flatten() {
            podns::remove(&orphan.path().join("ns"));
            cgroup::remove_pod(node.trim(), &orphan.file_name().to_string_lossy());
            let _ = std::fs::remove_dir(orphan.path());
        }
        crate::runtime::remove_private_tmpfs(&run_dir.join("bundles"));
        for d in [run_dir.join("pods"), run_dir.join("runtime"), run_dir.clone()] {
            let _ = std::fs::remove_dir(d);
        }
        if let Some(parent) = run_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    // The bridge goes with the pods, as k3s-killall removes cni0; the service rules and the
    // overlay with them, as it flushes kube-proxy's and flannel's.
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        for result in [rt.block_on(network::remove_bridge()), rt.block_on(crate::agent::net::teardown())] {
            if let Err(e) = result {
                eprintln!("bramble killall: {e:#}");
            }
        }
    }
    removed
}

/// The value after `flag` in a NUL-separated command line.
fn arg_after<'a>(args: &'a [&'a [u8]], flag: &str) -> Option<&'a [u8]> {
    args.iter().position(|a| *a == flag.as_bytes()).and_then(|i| args.get(i + 1).copied())
}

/// Kills containers whose monitor (`bramble shim --root <runtime_root>`) had not yet
/// written the `run.json` the pod loop goes by (a pod starting in the instant its agent
/// died): found in /proc, the container's init killed by the pid libcontainer recorded,
/// then the monitor if it does not exit by itself. Returns how many it found.
fn kill_unrecorded_monitors(runtime_root: &Path) -> usize {
    let root = runtime_root.as_os_str().as_encoded_bytes();
    let mut monitors = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.get(1).copied() != Some(b"shim".as_slice()) || arg_after(&args, "--root") != Some(root) {
            continue;
        }
        let Some(id) = arg_after(&args, "--id").map(|i| String::from_utf8_lossy(i).into_owned()) else { continue };
        let init = std::fs::read(runtime_root.join(&id).join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 1);
        if let Some(init) = init {
            // SAFETY: kill with a pid libcontainer recorded for a monitor that is alive.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
        monitors.push((pid, id));
    }
    // A monitor reaps its container and removes its cgroup and state; wait a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while monitors.iter().any(|(p, _)| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, id) in &monitors {
        if Path::new(&format!("/proc/{pid}")).exists() {
            // SAFETY: kill with a pid whose command line named this node's runtime root.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(runtime_root.join(id));
    }
    monitors.len()
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
