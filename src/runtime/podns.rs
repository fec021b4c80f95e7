//! A pod's shared namespaces without a pause container: a short-lived thread unshares a
//! network, UTS and IPC namespace, names the host after the pod, brings loopback up, and
//! bind-mounts its namespace files where the containers' OCI specs point (`ip netns add`
//! does the same). The bind mounts keep the namespaces alive until the pod is removed.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The namespace kinds a pod's containers share, as `/proc/<tid>/ns/<name>` and OCI name them.
pub const SHARED: [(&str, &str); 3] = [("net", "network"), ("uts", "uts"), ("ipc", "ipc")];

fn c(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).context("a path with a NUL byte")
}

fn os_err(what: &str) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_string())
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> anyhow::Result<()> {
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("opening a socket to configure lo"));
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid descriptor and ifreq for these ioctls.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(os_err("reading the flags of lo"))
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 { Err(os_err("bringing lo up")) } else { Ok(()) }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// Runs in the dedicated thread: new namespaces for this thread only, then bind them.
fn unshare_and_bind(dir: &Path, hostname: &str) -> anyhow::Result<()> {
    // SAFETY: affects only the calling thread's net, UTS and IPC namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) } != 0 {
        return Err(os_err("unsharing the pod's namespaces"));
    }
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
        return Err(os_err("setting the pod's host name"));
    }
    loopback_up()?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    for (proc_name, _) in SHARED {
        let target = dir.join(proc_name);
        std::fs::File::create(&target).with_context(|| format!("creating {}", target.display()))?;
        let source = c(&PathBuf::from(format!("/proc/self/task/{tid}/ns/{proc_name}")))?;
        let t = c(&target)?;
        // SAFETY: valid NUL-terminated paths; a plain bind mount.
        if unsafe { libc::mount(source.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
            return Err(os_err(&format!("binding the pod's {proc_name} namespace to {}", target.display())));
        }
    }
    Ok(())
}

/// Creates the namespaces of a pod under `dir` (host name `hostname`), unless they exist.
pub fn create(dir: &Path, hostname: &str) -> anyhow::Result<()> {
    if exists(dir) {
        return Ok(());
    }
    if hostname.is_empty() || hostname.len() > 64 {
        bail!("host name {hostname:?} must be 1 to 64 characters");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (d, h) = (dir.to_path_buf(), hostname.to_string());
    // The thread ends with its namespaces: only the bind mounts keep them, never the agent.
    let result = std::thread::spawn(move || unshare_and_bind(&d, &h))
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?;
    if result.is_err() {
        remove(dir);
    }
    result
}

/// Whether the pod's namespaces are in place (bound, not just files).
pub fn exists(dir: &Path) -> bool {
    SHARED.iter().all(|(n, _)| is_ns_file(&dir.join(n)))
}

fn is_ns_file(p: &Path) -> bool {
    // A bound namespace file reports the nsfs magic.
    let Ok(cp) = c(p) else { return false };
    // SAFETY: statfs is plain data; valid path pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(cp.as_ptr(), &mut st) } == 0) && st.f_type as i64 == 0x6e73_6673
}

/// Unbinds and removes the pod's namespace files; the namespaces die with their last user.
pub fn remove(dir: &Path) {
    for (n, _) in SHARED {
        let p = dir.join(n);
        if let Ok(cp) = c(&p) {
            // SAFETY: valid path; MNT_DETACH never blocks.
            unsafe { libc::umount2(cp.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_namespaces_live_in_bind_mounts() {
        // The suite runs as root (`./scripts/test`); a pass without running would say nothing.
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts, so it must run as root");
        let dir = std::env::temp_dir().join(format!("bramble-podns-{}/ns", std::process::id()));
        create(&dir, "web-0").unwrap();
        assert!(exists(&dir));
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let f = std::fs::File::open(dir.join("net")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f))).unwrap();
        drop(f);
        remove(&dir);
        assert_ne!(mine, theirs, "the pod has its own network namespace");
        assert!(!dir.exists());
    }
}
