//! `bramble exec-in`: runs one command inside a running container (libcontainer's tenant
//! builder joins its namespaces and cgroup and takes the container's user, capabilities
//! and environment), relays its stdio, and exits with its exit code (128 + signal when a
//! signal ended it). A process of its own for the same reason as the shim: libcontainer
//! forks, which a multi-threaded agent must not do.
//!
//! With `--tty`, the process gets a pseudo-terminal: libcontainer hands its master end back
//! over a console socket, and this helper copies between the master and its own stdio;
//! window sizes arrive as `rows cols` lines on `--resize-fd` when the caller provides one.

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// `bramble exec-in` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// The container ID.
    #[arg(long)]
    pub id: String,
    /// The container's directory (its `config.json` gives the process defaults).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Give the command a terminal.
    #[arg(long)]
    pub tty: bool,
    /// A descriptor the caller writes `rows cols` lines to when the terminal is resized.
    #[arg(long)]
    pub resize_fd: Option<i32>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Receives one descriptor sent with SCM_RIGHTS on `sock`.
fn recv_fd(sock: RawFd) -> anyhow::Result<OwnedFd> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is valid before we fill it in.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers for the duration of the call.
    if unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("receiving the terminal");
    }
    // SAFETY: msg was filled in by recvmsg; the macros walk its control buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            bail!("the container sent no terminal");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn set_window(master: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: a valid descriptor and winsize.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
}

fn dup(fd: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: duplicating one of our standard descriptors.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if d < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating stdio");
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// The process to run: the container's own process settings with `command` as argv.
fn process_json(args: &ExecArgs) -> anyhow::Result<PathBuf> {
    let spec: Value =
        serde_json::from_slice(&std::fs::read(args.bundle.join("config.json")).context("reading config.json")?)
            .context("parsing config.json")?;
    let mut process = spec["process"].clone();
    process["args"] = json!(args.command);
    process["terminal"] = json!(args.tty);
    if args.tty {
        let env = process["env"].as_array().cloned().unwrap_or_default();
        if !env.iter().any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM="))) {
            let mut env = env;
            env.push(json!("TERM=xterm"));
            process["env"] = json!(env);
        }
    }
    let path = args.bundle.join(format!("exec-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, serde_json::to_vec(&process)?).context("writing the exec process")?;
    Ok(path)
}

/// Runs the helper; returns the command's exit code. Must run before any thread exists.
pub fn run(args: ExecArgs) -> std::process::ExitCode {
    match exec(&args) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("bramble: exec in container {}: {e:#}", args.id);
            // 126 as shells use for "found but cannot run".
            std::process::ExitCode::from(126)
        }
    }
}

fn exec(args: &ExecArgs) -> anyhow::Result<u8> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;

    let process = process_json(args)?;
    // Unix socket paths are short (108 bytes): not under the bundle.
    let socket_path =
        PathBuf::from("/run/bramble").join(format!("exec-{}.sock", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let cleanup = |_: ()| {
        let _ = std::fs::remove_file(&process);
        let _ = std::fs::remove_file(&socket_path);
    };
    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .context("the runtime root")?;
    let listener = if args.tty {
        std::fs::create_dir_all("/run/bramble").context("creating /run/bramble")?;
        let l = UnixListener::bind(&socket_path).context("opening the console socket")?;
        builder = builder.with_console_socket(Some(&socket_path));
        Some(l)
    } else {
        builder = builder.with_stdin(dup(0)?).with_stdout(dup(1)?).with_stderr(dup(2)?);
        None
    };
    let started = builder.as_tenant().with_process(Some(&process)).with_detach(args.tty).build();
    let pid = match started {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            cleanup(());
            return Err(e).context("starting the process");
        }
    };
    let master = match &listener {
        Some(l) => {
            let (conn, _) = l.accept().context("accepting the console socket")?;
            Some(recv_fd(conn.as_raw_fd())?)
        }
        None => None,
    };
    cleanup(());
    if let Some(master) = &master {
        relay_terminal(master.as_raw_fd(), args.resize_fd);
    }
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            bail!("waiting for the process: {}", std::io::Error::last_os_error());
        }
    }
    if let Some(master) = master {
        // Whatever the process printed last.
        let mut f = std::fs::File::from(master);
        let mut rest = Vec::new();
        let _ = set_nonblocking(f.as_raw_fd()).and_then(|_| f.read_to_end(&mut rest).or(Ok(0)));
        let _ = std::io::stdout().write_all(&rest);
    }
    let _ = std::io::stdout().flush();
    Ok(if libc::WIFSIGNALED(status) { (128 + libc::WTERMSIG(status)) as u8 } else { libc::WEXITSTATUS(status) as u8 })
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain fcntl on a valid descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Copies stdin to the terminal and the terminal to stdout, and applies window sizes.
fn relay_terminal(master: RawFd, resize_fd: Option<RawFd>) {
    // SAFETY: the descriptors stay open for the life of the process; these copies are
    // never closed by the threads (ManuallyDrop).
    let to_term = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(master) });
    let mut to_term: std::fs::File = match to_term.try_clone() {
        Ok(f) => f,
        Err(_) => return,
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_term.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    if let Some(fd) = resize_fd {
        std::thread::spawn(move || {
            // SAFETY: the caller handed this descriptor over for this purpose alone.
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                let mut parts = line.split_whitespace().map(str::parse::<u16>);
                if let (Some(Ok(rows)), Some(Ok(cols))) = (parts.next(), parts.next()) {
                    set_window(master, rows, cols);
                }
            }
        });
    }
    // SAFETY: as above.
    let from_term = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(master) });
    let mut from_term: std::fs::File = match from_term.try_clone() {
        Ok(f) => f,
        Err(_) => return,
    };
    let mut buf = [0u8; 8192];
    let mut out = std::io::stdout();
    // EIO once the last process holding the terminal's other end is gone.
    while let Ok(n) = from_term.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).is_err() {
            break;
        }
        let _ = out.flush();
    }
}
