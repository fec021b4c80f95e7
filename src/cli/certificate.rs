//! `bramble certificate check|rotate`: how long this node's certificates have left, and a
//! renewal now. The running server or agent does the renewing (it is the one serving and
//! holding them); `rotate` asks it to with a marker file and SIGHUP, and a stopped one
//! renews at its next start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::pki::renewal::{ROTATE_MARKER, kubeconfig_parts};

/// `bramble certificate` arguments.
#[derive(clap::Args, Debug)]
pub struct CertificateArgs {
    #[command(subcommand)]
    verb: Verb,
    /// The node's data directory.
    #[arg(long, short = 'd', default_value = "/var/lib/bramble", global = true)]
    data_dir: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
enum Verb {
    /// Each certificate of this node: who it is, when it expires, how many days are left.
    Check,
    /// Renew this node's certificates now (the running server or agent does it at once;
    /// a stopped one when it starts).
    Rotate,
}

/// The file the server or agent writes its process id to, so `rotate` can wake it.
pub const PID_FILE: &str = "bramble.pid";

/// Writes this process's id into `data_dir` (replacing a stale one).
pub fn write_pid_file(data_dir: &Path) {
    let path = data_dir.join(PID_FILE);
    if let Err(e) =
        std::fs::create_dir_all(data_dir).and_then(|_| std::fs::write(&path, std::process::id().to_string()))
    {
        tracing::warn!(file = %path.display(), error = %e, "writing the pid file (`bramble certificate rotate` then waits for the next start)");
    }
}

/// One certificate this node has: what it is for, and its PEM.
struct Found {
    name: &'static str,
    file: PathBuf,
    pem: String,
}

fn certificates(data_dir: &Path) -> Vec<Found> {
    let tls = data_dir.join("server").join("tls");
    let mut out = Vec::new();
    for (name, file) in [
        ("cluster CA", tls.join("ca.crt")),
        ("API serving", tls.join("serving.crt")),
        ("admin client", tls.join("client-admin.crt")),
    ] {
        if let Ok(pem) = std::fs::read_to_string(&file) {
            out.push(Found { name, file, pem });
        }
    }
    let kubeconfig = data_dir.join("agent").join("kubeconfig.yaml");
    if let Some((_, _, pem)) = std::fs::read_to_string(&kubeconfig).ok().as_deref().and_then(kubeconfig_parts) {
        out.push(Found { name: "node client", file: kubeconfig, pem });
    }
    out
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Prints the table; false when a certificate has lapsed or cannot be read.
fn check(data_dir: &Path) -> bool {
    let found = certificates(data_dir);
    if found.is_empty() {
        println!("no certificates under {}: is this the node's --data-dir?", data_dir.display());
        return false;
    }
    let mut healthy = true;
    println!("{:<14} {:<42} {:<22} DAYS LEFT", "CERTIFICATE", "SUBJECT", "EXPIRES (UTC)");
    for f in found {
        let subject = crate::pki::subject(&f.pem).unwrap_or_else(|| "?".into());
        match crate::pki::not_after(&f.pem) {
            Some(end) => {
                let left = (end - now_unix()) as f64 / 86_400.0;
                let when = jiff::Timestamp::from_second(end)
                    .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|_| end.to_string());
                let note = if left <= 0.0 {
                    healthy = false;
                    "  EXPIRED"
                } else {
                    ""
                };
                println!("{:<14} {:<42} {:<22} {left:.1}{note}", f.name, subject, when);
            }
            None => {
                healthy = false;
                println!("{:<14} {:<42} {:<22} unreadable ({})", f.name, subject, "?", f.file.display());
            }
        }
    }
    healthy
}

/// The live bramble process of `data_dir`, from its pid file.
fn running(data_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(data_dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    exe.file_name()?.to_string_lossy().starts_with("bramble").then_some(pid)
}

fn rotate(data_dir: &Path) -> bool {
    let markers: Vec<PathBuf> = [data_dir.join("server").join("tls"), data_dir.join("agent")]
        .into_iter()
        .filter(|d| d.is_dir())
        .map(|d| d.join(ROTATE_MARKER))
        .collect();
    if markers.is_empty() {
        println!("no certificates under {}: is this the node's --data-dir?", data_dir.display());
        return false;
    }
    for m in &markers {
        if let Err(e) = std::fs::write(m, b"") {
            println!("cannot ask for renewal ({}): {e}", m.display());
            return false;
        }
    }
    let Some(pid) = running(data_dir) else {
        println!("bramble is not running on {}: its certificates are renewed when it starts", data_dir.display());
        return true;
    };
    // SAFETY: a plain signal to the process the pid file names, checked above to be ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        println!("cannot signal bramble (pid {pid}): {}", std::io::Error::last_os_error());
        return false;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while markers.iter().any(|m| m.exists()) {
        if std::time::Instant::now() > deadline {
            println!("bramble (pid {pid}) has not renewed within 30 s: see its log (journalctl -u bramble)");
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("renewed by bramble (pid {pid}):");
    check(data_dir)
}

/// Runs `bramble certificate`.
pub fn run(args: CertificateArgs) -> ExitCode {
    let ok = match args.verb {
        Verb::Check => check(&args.data_dir),
        Verb::Rotate => rotate(&args.data_dir),
    };
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
