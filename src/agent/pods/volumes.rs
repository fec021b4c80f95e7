//! A pod's volumes on the node: emptyDir (on disk, or tmpfs for `medium: Memory`), hostPath
//! (every `type` check), and the files of configMap, secret, downwardAPI and projected
//! volumes. File volumes are written the kubelet's atomic way: a fresh timestamped
//! directory, then the `..data` symlink swapped to it, so a running container sees either
//! the old or the new set, never half of each; rewriting them on every resync is how
//! updates reach running pods.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::env::{field_ref, resource_ref};
use crate::api::fields;
use crate::client::Client;
use crate::runtime::spec::{BindMount, quantity};
use crate::sys::fs::{FsError, Root};

/// Why a volume cannot be set up, as the pod's events say it.
#[derive(Debug)]
pub struct VolumeError(pub String);

fn tmpfs(dir: &Path, size: Option<i128>) -> Result<(), VolumeError> {
    let is_mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&dir.display().to_string())))
        .unwrap_or(false);
    if is_mounted {
        return Ok(());
    }
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| VolumeError("bad path".into()))?;
    let opts = CString::new(match size {
        Some(s) => format!("mode=0755,size={s}"),
        None => "mode=0755".to_string(),
    })
    .map_err(|_| VolumeError("bad options".into()))?;
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(VolumeError(format!("mounting tmpfs at {}: {}", dir.display(), std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Where a pod's `subPath` mounts go (see [`mounts_for`]).
pub fn subpaths_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volume-subpaths")
}

/// Unmounts every tmpfs and subPath mount under the pod's directory (before it is removed).
pub fn unmount_all(pod_dir: &Path) {
    let prefixes = [pod_dir.join("volumes").display().to_string(), subpaths_dir(pod_dir).display().to_string()];
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
                .filter(|p| prefixes.iter().any(|prefix| p.starts_with(prefix.as_str())))
                .collect()
        })
        .unwrap_or_default();
    for m in mounts.iter().rev() {
        if let Ok(c) = CString::new(m.as_bytes()) {
            // SAFETY: valid path; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Writes `files` (relative path, bytes, mode) into `dir` atomically. Every name is resolved
/// under `dir` (see [`Root`]): an item path from the pod spec can never reach outside it.
fn write_atomic(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), VolumeError> {
    let fs_err = |e: FsError| VolumeError(format!("writing the volume: {e}"));
    if let Some((bad, _, _)) = files.iter().find(|(p, _, _)| !fields::is_descending_path(p) || p.starts_with("..")) {
        return Err(VolumeError(format!("volume item path {bad:?} must be a relative path without '..'")));
    }
    std::fs::create_dir_all(dir).map_err(|e| VolumeError(format!("creating the volume {}: {e}", dir.display())))?;
    let root = Root::open(dir).map_err(fs_err)?;
    // Only a generation this agent made counts: one name, `..<timestamp>`, in `dir`.
    let current = std::fs::read_link(dir.join("..data")).ok().filter(|cur| {
        cur.to_str().is_some_and(|c| c.starts_with("..") && c.len() > 2 && !c.contains('/') && c != "..data")
    });
    // Nothing changed: leave the files (and their inotify watchers) alone.
    if let Some(cur) = &current {
        let same = files.iter().all(|(p, b, m)| {
            let f = cur.join(p);
            root.read(&f).is_ok_and(|old| &old == b)
                && std::fs::metadata(dir.join(&f)).is_ok_and(|md| md.permissions().mode() & 0o7777 == *m)
        });
        let count = walk_count(&dir.join(cur));
        if same && count == files.len() {
            return Ok(());
        }
    }
    let stamp = format!("..{}", jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%9f"));
    for (p, bytes, mode) in files {
        root.write_file_atomic(Path::new(&stamp).join(p), bytes, *mode).map_err(fs_err)?;
    }
    root.remove_all("..data_tmp").map_err(fs_err)?;
    root.symlink(&stamp, "..data_tmp").map_err(fs_err)?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))
        .map_err(|e| VolumeError(format!("swapping ..data in {}: {e}", dir.display())))?;
    for (p, _, _) in files {
        let top = top_name(p);
        if root.kind_nofollow(top).map_err(fs_err)?.is_none() {
            root.symlink(Path::new("..data").join(top), top).map_err(fs_err)?;
        }
    }
    // Names that left the set, and the previous generation.
    let entries = std::fs::read_dir(dir).map_err(|e| VolumeError(format!("listing {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !files.iter().any(|(p, _, _)| top_name(p) == name) {
            root.remove_all(&name).map_err(fs_err)?;
        }
    }
    if let Some(old) = current {
        root.remove_all(old).map_err(fs_err)?;
    }
    Ok(())
}

/// The first name of a relative item path (`a` of `./a/b`), which gets a link to `..data`.
fn top_name(p: &str) -> &str {
    p.split('/').find(|c| !c.is_empty() && *c != ".").unwrap_or(p)
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten().map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { walk_count(&e.path()) } else { 1 }).sum()
        })
        .unwrap_or(0)
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map_or(default, |m| m as u32 & 0o7777)
}

/// The files of a configMap or secret source (`items` pick and rename keys).
async fn object_files(
    client: &Client,
    ns: &str,
    src: &Value,
    secret: bool,
    default_mode: u32,
) -> Result<Vec<(String, Vec<u8>, u32)>, VolumeError> {
    let name = if secret { src["secretName"].as_str().or(src["name"].as_str()) } else { src["name"].as_str() };
    let name = name.unwrap_or("");
    let kind = if secret { "secrets" } else { "configmaps" };
    let obj = match client.get(&format!("/api/v1/namespaces/{ns}/{kind}/{name}")).await {
        Ok(o) => o,
        Err(_) if src["optional"].as_bool() == Some(true) => return Ok(Vec::new()),
        Err(_) => {
            return Err(VolumeError(format!("{} \"{name}\" not found", if secret { "secret" } else { "configmap" })));
        }
    };
    let mut data: Vec<(String, Vec<u8>)> = Vec::new();
    for field in ["data", "binaryData"] {
        for (k, v) in obj[field].as_object().into_iter().flatten() {
            let s = v.as_str().unwrap_or("");
            let bytes = if secret || field == "binaryData" {
                base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
            } else {
                s.as_bytes().to_vec()
            };
            data.push((k.clone(), bytes));
        }
    }
    let default_mode = mode_of(&src["defaultMode"], default_mode);
    match src["items"].as_array() {
        Some(items) => items
            .iter()
            .map(|i| {
                let key = i["key"].as_str().unwrap_or("");
                let bytes = data
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, b)| b.clone())
                    .ok_or_else(|| VolumeError(format!("configmap/secret {name} has no key {key}")))?;
                Ok((i["path"].as_str().unwrap_or(key).to_string(), bytes, mode_of(&i["mode"], default_mode)))
            })
            .collect(),
        None => Ok(data.into_iter().map(|(k, b)| (k, b, default_mode)).collect()),
    }
}

fn downward_files(pod: &Value, items: &Value, default_mode: u32, allocatable: &Value) -> Vec<(String, Vec<u8>, u32)> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let value = if let Some(f) = i["fieldRef"]["fieldPath"].as_str() {
                field_ref(pod, f)
            } else {
                let r = &i["resourceFieldRef"];
                let container = pod["spec"]["containers"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == r["containerName"]))?;
                resource_ref(container, r["resource"].as_str()?, &r["divisor"], allocatable)
            }?;
            Some((i["path"].as_str()?.to_string(), value.into_bytes(), mode_of(&i["mode"], default_mode)))
        })
        .collect()
}

/// Sets up (or refreshes) every volume of `pod` under `pod_dir`; returns name -> host path.
pub async fn prepare(
    client: &Client,
    tokens: &super::sa_tokens::TokenCache,
    pod: &Value,
    pod_dir: &Path,
    allocatable: &Value,
) -> Result<Vec<(String, PathBuf)>, VolumeError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut out = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let dir = pod_dir.join("volumes").join(&name);
        let io = |e: std::io::Error| VolumeError(format!("volume {name}: {e}"));
        if v["emptyDir"].is_object() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            if v["emptyDir"]["medium"] == "Memory" {
                tmpfs(&dir, quantity(&v["emptyDir"]["sizeLimit"], false))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
            }
            out.push((name, dir));
        } else if v["hostPath"].is_object() {
            let path = PathBuf::from(v["hostPath"]["path"].as_str().unwrap_or(""));
            check_host_path(&path, v["hostPath"]["type"].as_str().unwrap_or(""))?;
            out.push((name, path));
        } else if v["configMap"].is_object() || v["secret"].is_object() {
            let secret = v["secret"].is_object();
            if secret {
                std::fs::create_dir_all(&dir).map_err(io)?;
                // Secrets never touch the disk.
                tmpfs(&dir, None)?;
            }
            let src = if secret { &v["secret"] } else { &v["configMap"] };
            let files = object_files(client, ns, src, secret, 0o644).await?;
            write_atomic(&dir, &files)?;
            out.push((name, dir));
        } else if let Some(claim) = v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) {
            out.push((name, claimed_path(client, ns, claim).await?));
        } else if v["downwardAPI"].is_object() {
            let mode = mode_of(&v["downwardAPI"]["defaultMode"], 0o644);
            write_atomic(&dir, &downward_files(pod, &v["downwardAPI"]["items"], mode, allocatable))?;
            out.push((name, dir));
        } else if v["projected"].is_object() {
            let mode = mode_of(&v["projected"]["defaultMode"], 0o644);
            let sources = v["projected"]["sources"].as_array().map(Vec::as_slice).unwrap_or_default();
            // Tokens and secrets never touch the disk (the kubelet keeps projected
            // volumes on tmpfs too).
            if sources.iter().any(|s| s["secret"].is_object() || s["serviceAccountToken"].is_object()) {
                std::fs::create_dir_all(&dir).map_err(io)?;
                tmpfs(&dir, None)?;
            }
            let mut files = Vec::new();
            for s in sources {
                if let Some(token) = s.get("serviceAccountToken").filter(|t| t.is_object()) {
                    let path = token["path"].as_str().unwrap_or("token").to_string();
                    let jwt = tokens
                        .token(client, pod, token)
                        .await
                        .map_err(|e| VolumeError(format!("volume {name}: service account token: {e:#}")))?;
                    files.push((path, jwt.into_bytes(), mode));
                } else if s["configMap"].is_object() {
                    files.extend(object_files(client, ns, &s["configMap"], false, mode).await?);
                } else if s["secret"].is_object() {
                    files.extend(object_files(client, ns, &s["secret"], true, mode).await?);
                } else if s["downwardAPI"].is_object() {
                    files.extend(downward_files(pod, &s["downwardAPI"]["items"], mode, allocatable));
                }
            }
            write_atomic(&dir, &files)?;
            out.push((name, dir));
        }
    }
    Ok(out)
}

/// The host directory behind a bound claim: its volume's `hostPath` (made when the type
/// says so) or `local` path.
async fn claimed_path(client: &Client, ns: &str, claim: &str) -> Result<PathBuf, VolumeError> {
    let err = |what: String| VolumeError(format!("persistentvolumeclaim {claim:?}: {what}"));
    let pvc = client
        .get(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"))
        .await
        .map_err(|e| err(format!("{e:#}")))?;
    let volume = pvc.pointer("/spec/volumeName").and_then(Value::as_str).unwrap_or("");
    if volume.is_empty() {
        return Err(err("not bound to a volume yet".into()));
    }
    let pv = client.get(&format!("/api/v1/persistentvolumes/{volume}")).await.map_err(|e| err(format!("{e:#}")))?;
    if let Some(path) = pv.pointer("/spec/hostPath/path").and_then(Value::as_str) {
        let path = PathBuf::from(path);
        check_host_path(&path, pv.pointer("/spec/hostPath/type").and_then(Value::as_str).unwrap_or(""))?;
        return Ok(path);
    }
    if let Some(path) = pv.pointer("/spec/local/path").and_then(Value::as_str) {
        return Ok(PathBuf::from(path));
    }
    Err(err(format!("volume {volume} is neither hostPath nor local, which this node cannot mount")))
}

/// Removes the directories of this node's local volumes that were deleted, then lets the
/// volumes go (their cleanup finalizer), as the provisioner's helper would.
pub async fn clean_deleted_volumes(client: &Client, node: &str) -> anyhow::Result<()> {
    use crate::control::storage::{CLEANUP_FINALIZER, NODE_ANNOTATION};
    let list = client.get("/api/v1/persistentvolumes").await?;
    for pv in list["items"].as_array().into_iter().flatten() {
        let name = pv.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let finalizers: Vec<Value> =
            pv.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        let mine = pv.pointer("/metadata/annotations").and_then(|a| a.get(NODE_ANNOTATION)).and_then(Value::as_str)
            == Some(node);
        let deleting = pv.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
        if !mine || !deleting || !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            continue;
        }
        if let Some(path) = pv.pointer("/spec/hostPath/path").and_then(Value::as_str) {
            let path = PathBuf::from(path);
            // Only the directory the provisioner named after this volume.
            if path.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_"))) {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(volume = name, path = %path.display(), error = %e, "removing a local volume");
                        continue;
                    }
                }
            }
        }
        let keep: Vec<Value> = finalizers.into_iter().filter(|f| f != CLEANUP_FINALIZER).collect();
        let patch = serde_json::json!({"metadata": {"finalizers": keep}});
        client
            .call(
                "PATCH",
                &format!("/api/v1/persistentvolumes/{name}"),
                Some("application/merge-patch+json"),
                "application/json",
                Some(&patch),
            )
            .await?;
        tracing::info!(volume = name, "local volume removed");
    }
    Ok(())
}

/// Applies a hostPath `type`: creates what `...OrCreate` asks for, checks the rest. The path
/// is resolved once, through file descriptors from `/` (see [`Root`]), so what is checked is
/// what was created, with no window for a symlink to be swapped in between.
fn check_host_path(path: &Path, kind: &str) -> Result<(), VolumeError> {
    use nix::sys::stat::{SFlag, fstat};
    if kind.is_empty() {
        return Ok(());
    }
    let err = |what: &str| VolumeError(format!("hostPath type check failed: {} is not a {what}", path.display()));
    let fs_err = |e: FsError| VolumeError(format!("hostPath {}: {e}", path.display()));
    let host = Root::open(Path::new("/")).map_err(fs_err)?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let missing = || -> Result<bool, VolumeError> {
        match host.open_path(rel) {
            Ok(_) => Ok(false),
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(fs_err(e)),
        }
    };
    match kind {
        "DirectoryOrCreate" if missing()? => {
            host.open_dir(rel, true, 0o755).map_err(fs_err)?;
        }
        "FileOrCreate" if missing()? => {
            host.create_file(rel, 0o644).map_err(fs_err)?;
        }
        "DirectoryOrCreate" | "FileOrCreate" | "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
        other => return Err(VolumeError(format!("hostPath type {other:?} is not one Kubernetes defines"))),
    }
    let fd = host.open_path(rel).map_err(fs_err)?;
    let st = fstat(&fd).map_err(|e| VolumeError(format!("hostPath {}: {e}", path.display())))?;
    let is = |t: SFlag| st.st_mode & SFlag::S_IFMT.bits() == t.bits();
    let (ok, what) = match kind {
        "DirectoryOrCreate" | "Directory" => (is(SFlag::S_IFDIR), "directory"),
        "FileOrCreate" | "File" => (is(SFlag::S_IFREG), "file"),
        "Socket" => (is(SFlag::S_IFSOCK), "socket"),
        "CharDevice" => (is(SFlag::S_IFCHR), "character device"),
        _ => (is(SFlag::S_IFBLK), "block device"),
    };
    if ok { Ok(()) } else { Err(err(what)) }
}

/// The container's bind mounts for its `volumeMounts`. A `subPath` is opened under its
/// volume's directory with [`Root`] (a symlink the container made in the volume resolves
/// inside the volume, never on the host: CVE-2017-1002101's class), and the opened object is
/// bind-mounted through `/proc/self/fd/N` onto `<subpaths>/<container>/<index>`, as the kubelet
/// does, so the runtime mounts that fixed path and never resolves the hostile one.
pub fn mounts_for(
    pod: &Value,
    container: &Value,
    volumes: &[(String, PathBuf)],
    subpaths: &Path,
) -> Result<Vec<BindMount>, VolumeError> {
    // The files the agent writes (configMap, secret, downwardAPI, projected) are mounted
    // read-only whatever the pod asks, as upstream does since CVE-2017-1002102: a container
    // that could write there could plant links for the agent's next refresh to follow.
    let file_volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| ["configMap", "secret", "downwardAPI", "projected"].iter().any(|k| v[*k].is_object()))
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut out = Vec::new();
    let container_name = container["name"].as_str().unwrap_or("");
    for (index, m) in container["volumeMounts"].as_array().into_iter().flatten().enumerate() {
        let name = m["name"].as_str().unwrap_or("");
        let (_, base) = volumes
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| VolumeError(format!("volume {name:?} is mounted but not defined in the pod")))?;
        let sub = m["subPath"].as_str().unwrap_or("");
        let source = if sub.is_empty() {
            base.clone()
        } else {
            mount_subpath(base, sub, &subpaths.join(container_name).join(index.to_string()))?
        };
        out.push(BindMount {
            source,
            destination: m["mountPath"].as_str().unwrap_or("").to_string(),
            read_only: m["readOnly"].as_bool() == Some(true) || file_volumes.contains(&name),
        });
    }
    Ok(out)
}

/// Bind-mounts `sub` of the volume at `base` (made as a directory when missing) onto
/// `target`, resolving `sub` only under `base`; returns `target`.
fn mount_subpath(base: &Path, sub: &str, target: &Path) -> Result<PathBuf, VolumeError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    if !fields::is_descending_path(sub) {
        return Err(VolumeError(format!("subPath {sub:?} must be a relative path without '..'")));
    }
    let err = |e: FsError| VolumeError(format!("subPath {sub:?}: {e}"));
    let root = Root::open(base).map_err(err)?;
    if root.kind_nofollow(sub).map_err(err)?.is_none() {
        root.open_dir(sub, true, 0o755).map_err(err)?;
    }
    let opened = root.open_path(sub).map_err(err)?;
    let is_dir = nix::sys::stat::fstat(&opened)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| VolumeError(format!("subPath {sub:?}: {e}")))?;
    let io = |what: &str, e: std::io::Error| VolumeError(format!("subPath {sub:?}: {what} {}: {e}", target.display()));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("creating", e))?;
    }
    // A mount left from the container's previous run goes first: the subPath may have changed.
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io("unmounting", e.into())),
    }
    if std::fs::symlink_metadata(target).is_err() {
        if is_dir {
            std::fs::create_dir(target).map_err(|e| io("creating", e))?;
        } else {
            std::fs::File::create(target).map_err(|e| io("creating", e))?;
        }
    }
    let source = crate::sys::fs::proc_fd_path(&opened);
    mount(Some(source.as_path()), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| io("bind-mounting onto", e.into()))?;
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_volumes_swap_atomically_and_drop_removed_keys() {
        let dir = std::env::temp_dir().join(format!("bramble-vol-{}", std::process::id()));
        write_atomic(&dir, &[("a".into(), b"1".to_vec(), 0o644), ("b".into(), b"2".to_vec(), 0o600)]).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        write_atomic(&dir, &[("a".into(), b"1".to_vec(), 0o644), ("b".into(), b"2".to_vec(), 0o600)]).unwrap();
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first, "unchanged data is not rewritten");
        write_atomic(&dir, &[("a".into(), b"new".to_vec(), 0o644)]).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"new");
        assert!(!dir.join("b").exists(), "a removed key disappears");
        assert!(!dir.join(&first).exists(), "the old generation is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
