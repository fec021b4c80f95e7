//! The only raw platform calls: file-system access confined to a root directory (and, as
//! they move here, mounts, namespaces and pidfds), through `nix`.

pub mod fs;
