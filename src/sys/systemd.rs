//! Talking to systemd when it runs us as a `Type=notify` service: `READY=1` once the node
//! serves, `STATUS=` lines for `systemctl status`, `WATCHDOG=1` while the runtime is alive,
//! `STOPPING=1` on the way out (the `sd_notify(3)` protocol: one datagram per message to
//! `$NOTIFY_SOCKET`).
//!
//! The variables are taken out of the environment at start: the container monitors and
//! every other child would otherwise inherit `NOTIFY_SOCKET`, and systemd takes a message
//! from any process in the unit's cgroup (`NotifyAccess=all`) or logs one it refuses from
//! each of them.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

/// What systemd told this process through its environment, taken once at start.
#[derive(Debug, Default)]
struct Manager {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

static MANAGER: OnceLock<Manager> = OnceLock::new();

/// The variables systemd sets for the service's main process only.
const VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Takes `NOTIFY_SOCKET` and the watchdog settings out of the environment and keeps them.
///
/// # Safety
/// Must run before any other thread exists: it changes the process environment.
pub unsafe fn take_environment() {
    let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
    let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|p| p.trim() == std::process::id().to_string());
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.trim().parse::<u64>().ok())
        .filter(|&u| u > 0 && for_us)
        .map(Duration::from_micros);
    for v in VARIABLES {
        // SAFETY: the caller promises no other thread runs yet.
        unsafe { std::env::remove_var(v) };
    }
    if MANAGER.set(Manager { socket, watchdog }).is_err() {
        tracing::debug!("systemd's environment was taken already");
    }
}

fn manager() -> &'static Manager {
    MANAGER.get_or_init(Manager::default)
}

/// Sends one `sd_notify` message (`KEY=value` lines); nothing when not under systemd.
pub fn notify(message: &str) {
    let Some(path) = &manager().socket else { return };
    if let Err(e) = send(path, message.as_bytes()) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

fn send(path: &OsString, message: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(message, &addr).map(|_| ())
    } else {
        sock.send_to(message, std::path::Path::new(path)).map(|_| ())
    }
}

/// The node serves: systemd's `start` returns and units ordered after us start.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={}", one_line(status)));
}

/// A line for `systemctl status`.
pub fn status(status: &str) {
    notify(&format!("STATUS={}", one_line(status)));
}

/// We were asked to stop and are stopping.
pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How often to tell the watchdog we live: half its timeout (`sd_watchdog_enabled(3)`).
pub fn watchdog_interval() -> Option<Duration> {
    manager().watchdog.map(|t| t / 2)
}

/// Pets the watchdog from a task on the current runtime while the process lives, so a
/// runtime whose workers are all stuck stops petting it and systemd restarts us.
pub fn spawn_watchdog() {
    let Some(every) = watchdog_interval() else { return };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            notify("WATCHDOG=1");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_datagram_socket_by_path_and_abstract_name() {
        let dir = std::env::temp_dir().join(format!("bramble-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(&path.clone().into_os_string(), b"READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("bramble-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&OsString::from(format!("@{name}")), b"WATCHDOG=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_lines_stay_one_line() {
        assert_eq!(one_line("a\nb\r"), "a b ");
    }
}
