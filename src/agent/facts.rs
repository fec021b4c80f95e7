//! What a node reports about itself: addresses, capacity, system info, pressure, labels and
//! the board's health ([`super::board`]), read from `/proc`, `/sys` and the file system under
//! the data directory. Also the kernel checks that must pass before the node may join.

use std::ffi::CString;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::board;

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().trim_end_matches('\0').to_string()).filter(|s| !s.is_empty())
}

/// `/proc/meminfo` fields in KiB.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// (total, available) bytes of the file system holding `path`.
fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

pub use crate::sys::arch;

/// A label value from free text: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(text: &str) -> String {
    let mapped: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    let cut: String = mapped.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// `ssd` or `hdd` from the rotational flag of the disk holding `path` (None for file
/// systems without a block device, such as tmpfs or overlay).
pub fn disk_type(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        return None;
    }
    let sys = format!("/sys/dev/block/{major}:{minor}");
    // A partition's queue/ lives in its parent disk's directory.
    let flag = read_trimmed(&format!("{sys}/queue/rotational"))
        .or_else(|| read_trimmed(&format!("{sys}/../queue/rotational")))?;
    Some(if flag == "1" { "hdd" } else { "ssd" })
}

/// The IPv4 addresses of the host's interfaces that are up, loopback excluded.
fn host_ipv4s() -> Vec<String> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` points into the list getifaddrs returned and has not been freed.
        let ifa = unsafe { &*cur };
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        // The pod network's own devices (the bridge, the overlay) are not the node's address.
        let pod_network = name.starts_with("bramble");
        if up && !loopback && !pod_network && !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string());
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// The memory cgroup controller must be enabled: pods' memory limits depend on it. Raspberry
/// Pi OS ships with it disabled.
pub fn check_kernel() -> anyhow::Result<()> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let enabled = match v2 {
        Some(controllers) => controllers.split_whitespace().any(|c| c == "memory"),
        None => std::fs::read_to_string("/proc/cgroups")
            .context("reading /proc/cgroups: is cgroup support built into this kernel?")?
            .lines()
            .any(|l| {
                l.split_whitespace().collect::<Vec<_>>().as_slice().first() == Some(&"memory")
                    && l.trim_end().ends_with('1')
            }),
    };
    if !enabled {
        let advice = match board::detect(Path::new("/")) {
            Some(b) => b.boot_advice(),
            None => "add `cgroup_memory=1 cgroup_enable=memory` to the single line of /boot/firmware/cmdline.txt \
                     (/boot/cmdline.txt on Raspberry Pi OS before bookworm)"
                .to_string(),
        };
        bail!("the memory cgroup is disabled, so pod memory limits cannot work: {advice} and reboot");
    }
    Ok(())
}

/// Everything the node reports, gathered once per status update.
pub struct Facts {
    /// Labels the node sets on itself when it registers.
    pub labels: Value,
    /// `status.capacity`.
    pub capacity: Value,
    /// `status.allocatable`: capacity minus the kubelet's default hard-eviction reserves.
    pub allocatable: Value,
    /// `status.addresses`.
    pub addresses: Value,
    /// `status.nodeInfo`.
    pub node_info: Value,
    /// Memory available below 100 MiB.
    pub memory_pressure: bool,
    /// Less than 10% of the data directory's file system available.
    pub disk_pressure: bool,
    /// What the board reports about its supply, temperature and storage wear.
    pub board_health: board::BoardHealth,
}

/// Kubelet's default hard-eviction threshold for memory.
const MEMORY_RESERVE_KIB: u64 = 100 * 1024;

/// Reads the node's facts; `data_dir` is where pods' data will live.
pub fn gather(node_name: &str, data_dir: &Path, server: bool) -> Facts {
    // Online CPUs, as the kubelet counts them (not this process's affinity or quota).
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
    let mem_kib = meminfo("MemTotal").unwrap_or(0);
    let mem_avail_kib = meminfo("MemAvailable").unwrap_or(mem_kib);
    let (disk_total, disk_avail) = fs_space(data_dir).unwrap_or((0, 0));
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{mem_kib}Ki"),
        "pods": "110",
        "ephemeral-storage": format!("{}Ki", disk_total / 1024),
    });
    let allocatable = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem_kib.saturating_sub(MEMORY_RESERVE_KIB)),
        "pods": "110",
        "ephemeral-storage": format!("{}", disk_total / 10 * 9),
    });

    let mut addresses: Vec<Value> =
        host_ipv4s().into_iter().map(|a| json!({"type": "InternalIP", "address": a})).collect();
    addresses.push(json!({"type": "Hostname", "address": node_name}));

    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into());
    let node_info = json!({
        "architecture": arch(),
        "operatingSystem": "linux",
        "osImage": os_image,
        "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        "containerRuntimeVersion": concat!("bramble://", env!("CARGO_PKG_VERSION")),
        "kubeletVersion": concat!("v1.33.0+bramble.", env!("CARGO_PKG_VERSION")),
        "kubeProxyVersion": "",
        "machineID": read_trimmed("/etc/machine-id").unwrap_or_default(),
        "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid").unwrap_or_default(),
        "bootID": read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
    });

    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/arch".into(), json!(arch()));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert("kubernetes.io/hostname".into(), json!(node_name));
    labels.insert("beta.kubernetes.io/arch".into(), json!(arch()));
    labels.insert("beta.kubernetes.io/os".into(), json!("linux"));
    if server {
        labels.insert("node-role.kubernetes.io/control-plane".into(), json!("true"));
    }
    if let Some(model) = read_trimmed("/proc/device-tree/model").map(|m| label_value(&m)).filter(|m| !m.is_empty()) {
        labels.insert("bramble.dev/board-model".into(), json!(model));
    }
    if let Some(kind) = disk_type(data_dir) {
        labels.insert("disktype".into(), json!(kind));
    }
    let board = board::detect(Path::new("/"));
    for (key, value) in board::labels(board.as_ref(), mem_kib) {
        labels.insert(key.into(), json!(value));
    }

    Facts {
        labels: Value::Object(labels),
        capacity,
        allocatable,
        addresses: Value::Array(addresses),
        node_info,
        memory_pressure: mem_avail_kib < MEMORY_RESERVE_KIB,
        disk_pressure: disk_total > 0 && disk_avail < disk_total / 10,
        board_health: board::health(Path::new("/"), board.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_this_machine() {
        let f = gather("n1", Path::new("/"), true);
        assert!(f.capacity["cpu"].as_str().unwrap().parse::<u32>().unwrap() >= 1);
        assert!(f.capacity["memory"].as_str().unwrap().ends_with("Ki"));
        assert_eq!(f.labels["kubernetes.io/hostname"], "n1");
        assert_eq!(f.labels["node-role.kubernetes.io/control-plane"], "true");
        assert!(f.addresses.as_array().unwrap().iter().any(|a| a["type"] == "Hostname"));
        assert!(!f.node_info["kernelVersion"].as_str().unwrap().is_empty());
        assert!(f.labels["bramble.io/memory-class"].as_str().unwrap().ends_with('i'));
    }

    #[test]
    fn board_models_become_label_values() {
        assert_eq!(label_value("Raspberry Pi 4 Model B Rev 1.4"), "Raspberry-Pi-4-Model-B-Rev-1.4");
        assert_eq!(label_value(" (odd) "), "odd");
        assert!(label_value(&"x".repeat(100)).len() <= 63);
    }
}
