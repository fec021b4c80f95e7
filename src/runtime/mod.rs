//! The container runtime: a pod is a set of namespaces (network, UTS, IPC) kept alive by
//! bind mounts rather than a pause container, and each container is created directly with
//! youki's libcontainer by its own small monitor process, `bramble shim`, which outlives the
//! agent. The agent can be killed or upgraded while containers run: a restarted agent finds
//! the monitors through their pid files and takes up where it left off.
//!
//! Where things live:
//! - `<run-dir>` (`/run/bramble/<node>`, tmpfs, so a reboot forgets it): libcontainer's
//!   state under `runtime/`, and each pod's namespace files under `pods/<uid>/ns/`;
//! - `<data-dir>/agent/pods/<uid>/`: the pod's files (`/etc/hosts`, volumes) and one
//!   directory per container run, `containers/<id>/`, holding the OCI bundle, the overlayfs
//!   upper directory, `shim.pid` and, once the container has exited, `exit.json`;
//! - `<pod-log-dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log`: CRI-format logs.

pub mod cgroup;
pub mod crilog;
pub mod exec;
pub mod podns;
pub mod seccomp;
pub mod shim;
pub mod spec;

use std::path::{Path, PathBuf};

/// The directories one node's runtime uses.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Volatile state: libcontainer's root and the pods' namespace files.
    pub run_dir: PathBuf,
    /// Durable per-pod data under the node's data directory.
    pub pods_dir: PathBuf,
    /// Container logs, `/var/log/pods` by default as log shippers expect.
    pub log_dir: PathBuf,
}

impl Layout {
    /// The layout of the node `node` whose data lives in `data_dir`.
    pub fn new(data_dir: &Path, node: &str, log_dir: &Path) -> Layout {
        Layout {
            run_dir: Path::new("/run/bramble").join(node),
            pods_dir: data_dir.join("agent").join("pods"),
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// libcontainer's state root.
    pub fn runtime_root(&self) -> PathBuf {
        self.run_dir.join("runtime")
    }

    /// Where the namespace files of pod `uid` are bound.
    pub fn pod_ns_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("pods").join(uid).join("ns")
    }

    /// Where the `config.json` of container `id` lives: on a private tmpfs (see
    /// [`ensure_private_tmpfs`]), because it holds the container's environment, Secret values
    /// included, and no secret value may reach a node's persistent storage. The container's
    /// own directory links to it.
    pub fn bundle_config_dir(&self, id: &str) -> PathBuf {
        self.bundles_dir().join(id)
    }

    /// The tmpfs holding every container's `config.json`.
    pub fn bundles_dir(&self) -> PathBuf {
        self.run_dir.join("bundles")
    }

    /// The durable directory of pod `uid`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// The directory of one container run of pod `uid`.
    pub fn container_dir(&self, uid: &str, id: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(id)
    }

    /// The log directory of a pod, named as the kubelet names it.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.log_dir.join(format!("{namespace}_{name}_{uid}"))
    }
}

/// A fresh container ID: 64 hex digits, as containerd and CRI-O make them.
pub fn new_container_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The current time in RFC 3339 with nanoseconds, as CRI logs and container states use.
pub fn now_nanos() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string()
}

/// Mounts a tmpfs readable only by root at `dir`, unless `dir` already is on a tmpfs (as
/// `/run` is under systemd).
pub fn ensure_private_tmpfs(dir: &Path) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    if statfs(dir).map_err(std::io::Error::from)?.filesystem_type() == TMPFS_MAGIC {
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=16m"),
    )
    .map_err(std::io::Error::from)
}

/// Unmounts the tmpfs [`ensure_private_tmpfs`] made at `dir` (if any) and removes `dir`.
pub fn remove_private_tmpfs(dir: &Path) {
    use nix::mount::{MntFlags, umount2};
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "unmounting the bundles tmpfs"),
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing the bundles directory"),
    }
}
