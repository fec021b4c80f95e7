//! One run of one container: its directory, its monitor (`bramble shim`), and the pidfds
//! through which the agent signals the container and learns, the moment it happens, that
//! it exited. A run's `run.json` is what lets a restarted agent adopt it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::runtime::shim::{Exit, read_exit};

/// What is recorded about a run when it starts.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub id: String,
    pub name: String,
    /// Whether it is one of the pod's init containers.
    pub init: bool,
    /// 0 for the first run of this container in this pod, then +1 per restart.
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub log_path: PathBuf,
    pub started_at: String,
    pub shim_pid: i32,
    pub init_pid: i32,
}

/// A run the agent is watching (or has watched to its end).
#[derive(Debug)]
pub struct Run {
    pub info: RunInfo,
    pub dir: PathBuf,
    /// Set once the container has exited.
    pub exit: Option<Exit>,
    /// The container's init, for signals; `None` once it is gone.
    init_fd: Option<Arc<OwnedFd>>,
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `pid` is still the shim of container `id` (not a recycled pid).
fn is_shim_of(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|arg| arg == id.as_bytes()))
        .unwrap_or(false)
}

impl Run {
    /// Saves `run.json` and returns the run; `on_exit` is called once the container exits.
    pub fn started(dir: &Path, info: RunInfo, on_exit: impl FnOnce() + Send + 'static) -> anyhow::Result<Run> {
        let tmp = dir.join("run.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&info)?).context("writing run.json")?;
        std::fs::rename(&tmp, dir.join("run.json")).context("writing run.json")?;
        let mut run = Run { info, dir: dir.to_path_buf(), exit: None, init_fd: None };
        run.watch(on_exit);
        Ok(run)
    }

    /// Adopts the run recorded in `dir` (after an agent restart); `on_exit` as for `started`.
    pub fn adopt(dir: &Path, on_exit: impl FnOnce() + Send + 'static) -> anyhow::Result<Run> {
        let info: RunInfo = serde_json::from_slice(&std::fs::read(dir.join("run.json")).context("reading run.json")?)
            .context("parsing run.json")?;
        let mut run = Run { info, dir: dir.to_path_buf(), exit: read_exit(dir), init_fd: None };
        if run.exit.is_none() {
            run.watch(on_exit);
        }
        Ok(run)
    }

    /// Starts waiting for the shim to exit; when it does, `exit.json` says how the container
    /// ended (or, if the shim died without writing it, the run counts as lost).
    fn watch(&mut self, on_exit: impl FnOnce() + Send + 'static) {
        if !is_shim_of(self.info.shim_pid, &self.info.id) {
            self.mark_lost();
            on_exit();
            return;
        }
        let shim = match pidfd_open(self.info.shim_pid) {
            Ok(fd) => fd,
            Err(_) => {
                self.mark_lost();
                on_exit();
                return;
            }
        };
        self.init_fd = pidfd_open(self.info.init_pid).ok().map(Arc::new);
        tokio::spawn(async move {
            // SAFETY: the pidfd is owned by the AsyncFd and closed only when it is dropped.
            match unsafe { tokio::io::unix::AsyncFd::register_with_interest(shim, tokio::io::Interest::READABLE) } {
                Ok(fd) => {
                    let _ = fd.readable().await;
                }
                Err(e) => tracing::warn!(error = %e, "watching a container monitor"),
            }
            on_exit();
        });
    }

    fn mark_lost(&mut self) {
        if self.exit.is_none() {
            self.exit = read_exit(&self.dir).or_else(|| {
                Some(Exit { exit_code: 255, signal: None, oom_killed: false, finished_at: crate::runtime::now_nanos() })
            });
        }
    }

    /// Reads how the container ended, once its shim is gone.
    pub fn collect_exit(&mut self) {
        if self.exit.is_none() && !is_shim_of(self.info.shim_pid, &self.info.id) {
            self.init_fd = None;
            self.mark_lost();
        }
    }

    /// Whether the container is still running.
    pub fn running(&self) -> bool {
        self.exit.is_none()
    }

    /// Sends `signal` to the container's init (a no-op once it has exited).
    pub fn signal(&self, signal: i32) {
        if let Some(fd) = &self.init_fd {
            // SAFETY: a valid pidfd; no siginfo.
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0) };
        }
    }

    /// A way to signal the container later, from another task.
    pub fn signaller(&self) -> impl Fn(i32) + Send + 'static {
        let fd = self.init_fd.clone();
        move |signal| {
            if let Some(fd) = &fd {
                // SAFETY: a valid pidfd; no siginfo.
                unsafe {
                    libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
                };
            }
        }
    }

    /// The text the container left in its termination log, if any (capped as upstream).
    pub fn termination_message(&self) -> Option<String> {
        let text = std::fs::read(self.dir.join("termination-log")).ok()?;
        let text = String::from_utf8_lossy(&text[..text.len().min(4096)]).trim_end().to_string();
        (!text.is_empty()).then_some(text)
    }
}

/// Spawns `bramble shim` for a prepared bundle and waits for its report.
pub async fn spawn_shim(root: &Path, id: &str, dir: &Path, log: &Path) -> anyhow::Result<(i32, i32)> {
    let exe = std::env::current_exe().context("finding the bramble binary")?;
    let shim_log = std::fs::File::create(dir.join("shim.log")).context("creating shim.log")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("shim")
        .arg("--root")
        .arg(root)
        .arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(dir)
        .arg("--log")
        .arg(log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(shim_log)
        .env("BRAMBLE_LOG", std::env::var("BRAMBLE_SHIM_LOG").unwrap_or_else(|_| "warn".into()))
        .spawn()
        .context("starting the container monitor")?;
    let mut out = child.stdout.take().context("the monitor's stdout")?;
    let mut report = String::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        out.read_to_string(&mut report).await
    };
    // Creating a container is quick; one that hangs (a stuck mount, a full disk) is an error.
    match tokio::time::timeout(Duration::from_secs(60), read).await {
        Ok(r) => r.context("reading the monitor's report")?,
        Err(_) => bail!("the container monitor did not report within 60 s"),
    };
    let _ = child.wait().await;
    let line = report.lines().next().unwrap_or("").trim().to_string();
    if let Some(rest) = line.strip_prefix("started ") {
        let mut parts = rest.split_whitespace().map(str::parse::<i32>);
        if let (Some(Ok(shim)), Some(Ok(init))) = (parts.next(), parts.next()) {
            return Ok((shim, init));
        }
    }
    let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
    // libcontainer's own error lines say which step failed.
    let detail: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).map(str::trim).collect();
    let why = match line.strip_prefix("error ") {
        Some(e) if detail.is_empty() => e.to_string(),
        Some(e) => format!("{e} ({})", detail.join("; ")),
        None => format!("the container monitor failed: {}", log.trim()),
    };
    bail!("{why}")
}
