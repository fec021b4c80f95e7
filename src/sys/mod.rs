//! The only raw platform calls: file-system access confined to a root directory (and, as
//! they move here, mounts, namespaces and pidfds), through `nix`.

pub mod fs;
pub mod systemd;

/// Kubernetes' name for this machine's architecture (node labels, image platforms).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}
