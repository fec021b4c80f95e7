//! `bramble shim`: the monitor of one container, a process of its own so that containers
//! outlive the agent. The agent starts it and reads one line back on its stdout; the shim
//! then
//! 1. forks into the background (a new session, never the agent's child, so a restarted
//!    agent finds it the same way whether it started it or not) and writes `shim.pid`;
//! 2. creates and starts the container with libcontainer, which makes the container's init
//!    its child, and reports `started <shim pid> <init pid>` (or `error <why>`);
//! 3. copies the container's stdout and stderr into the CRI log until they close;
//! 4. reaps the init the moment it exits (`waitpid`, no polling), writes `exit.json` (exit
//!    code, signal, OOM kill, time) atomically, and deletes the container's cgroup and
//!    libcontainer state. The agent notices through a pidfd on the shim.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::crilog::{LogWriter, pump};

/// `bramble shim` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ShimArgs {
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// The container ID.
    #[arg(long)]
    pub id: String,
    /// The container's directory: its OCI bundle (`config.json`); receives `shim.pid` and
    /// `exit.json`.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The CRI log file.
    #[arg(long)]
    pub log: PathBuf,
    /// Size at which the log rotates.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,
}

/// How a container ended, as the shim saw it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: String,
}

/// Reads `exit.json` from a container directory, if the container has exited.
pub fn read_exit(bundle: &Path) -> Option<Exit> {
    std::fs::read(bundle.join("exit.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_exit(bundle: &Path, exit: &Exit) -> std::io::Result<()> {
    let tmp = bundle.join("exit.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(exit).unwrap_or_default())?;
    std::fs::rename(tmp, bundle.join("exit.json"))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs the shim; returns the process's exit code. Must run before any thread exists
/// (it forks).
pub fn run(args: ShimArgs) -> std::process::ExitCode {
    // SAFETY: called first thing in a fresh single-threaded process.
    match unsafe { libc::fork() } {
        -1 => {
            println!("error forking the container monitor: {}", std::io::Error::last_os_error());
            return std::process::ExitCode::FAILURE;
        }
        0 => {}
        // The parent only exists to be reaped by the agent; the child carries on.
        _ => return std::process::ExitCode::SUCCESS,
    }
    // SAFETY: no preconditions; makes the monitor its own session, out of the agent's.
    unsafe { libc::setsid() };
    let report = |line: &str| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    match start(&args) {
        Ok(init_pid) => {
            // SAFETY: getpid has no preconditions.
            report(&format!("started {} {init_pid}", unsafe { libc::getpid() }));
            detach_stdout();
            monitor(&args, init_pid);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            report(&format!("error {}", format!("{e:#}").replace('\n', " ")));
            cleanup(&args);
            std::process::ExitCode::FAILURE
        }
    }
}

/// Points stdout at /dev/null so the agent's pipe closes.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: both descriptors are valid.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// The log pumps, started before the container so nothing it writes is lost.
struct Pumps(Vec<std::thread::JoinHandle<()>>);

/// Creates and starts the container; returns its init's pid.
fn start(args: &ShimArgs) -> anyhow::Result<i32> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    std::fs::write(args.bundle.join("shim.pid"), std::process::id().to_string()).context("writing shim.pid")?;
    std::fs::create_dir_all(&args.root).context("creating the runtime root")?;
    let log = Arc::new(Mutex::new(LogWriter::open(&args.log, args.log_max_bytes).context("opening the log")?));
    let (out_r, out_w) = pipe().context("creating the stdout pipe")?;
    let (err_r, err_w) = pipe().context("creating the stderr pipe")?;
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    let mut container = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .context("the runtime root")?
        .with_stdin(OwnedFd::from(null))
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()
        .context("the container ID")?
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .context("creating the container")?;
    // Our copies of the write ends are gone with the builder: EOF comes when the container's
    // processes are all gone.
    let mut pumps = Pumps(Vec::new());
    for (pipe, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        let log = log.clone();
        pumps.0.push(std::thread::spawn(move || pump(std::fs::File::from(pipe), stream, log)));
    }
    container.start().context("starting the container")?;
    let pid = container.pid().map(|p| p.as_raw()).context("the started container has no pid")?;
    PUMPS.with(|p| *p.borrow_mut() = Some(pumps));
    Ok(pid)
}

thread_local! {
    static PUMPS: std::cell::RefCell<Option<Pumps>> = const { std::cell::RefCell::new(None) };
}

/// The cgroup path the bundle's spec names.
fn cgroups_path(bundle: &Path) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["linux"]["cgroupsPath"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits for the init to exit, records how, and cleans up.
fn monitor(args: &ShimArgs, init_pid: i32) {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(init_pid, &mut status, 0) };
        if r == init_pid {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            status = 255 << 8;
            break;
        }
    }
    let finished_at = super::now_nanos();
    let (exit_code, signal) = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    };
    let cgroup = cgroups_path(&args.bundle);
    let oom_killed = signal == Some(libc::SIGKILL) && super::cgroup::oom_kills(&cgroup) > 0;
    // The container's PID namespace died with its init, so the pipes close now.
    // A process that escaped the namespace could hold them open: wait two seconds at most.
    if let Some(pumps) = PUMPS.with(|p| p.borrow_mut().take()) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !pumps.0.iter().all(|p| p.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    cleanup(args);
    let exit = Exit { exit_code, signal, oom_killed, finished_at };
    if let Err(e) = write_exit(&args.bundle, &exit) {
        eprintln!("bramble shim: writing exit.json: {e}");
    }
}

/// Deletes libcontainer's state and the container's cgroup.
fn cleanup(args: &ShimArgs) {
    let dir = args.root.join(&args.id);
    if !dir.exists() {
        return;
    }
    match libcontainer::container::Container::load(dir.clone()) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                // Its state must not outlive it, even when libcontainer cannot finish.
                eprintln!("bramble shim: deleting container {}: {e}", args.id);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Err(e) => {
            eprintln!("bramble shim: loading container {}: {e}", args.id);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
