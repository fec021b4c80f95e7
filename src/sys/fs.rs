//! File-system access confined to one root directory.
//!
//! Paths that come from outside (an image layer's tar entries, a pod's volume `items[].path`,
//! a `subPath`) are hostile: a single missed `..` check or a symlink followed on the host side
//! turns into a write on the host (the CVE-2017-1002101 class of bugs). Instead of checking
//! strings and hoping, every lookup here starts at an open file descriptor of the root and is
//! resolved by the kernel with `openat2(2)` and `RESOLVE_IN_ROOT`: `..`, absolute paths and
//! absolute symlink targets all stay inside the root, as they would in a chroot. On kernels
//! without `openat2` (before 5.6, or when seccomp refuses it) the same rules are applied by a
//! component-by-component walk that never lets the kernel follow a symlink.
//!
//! Creating, removing and changing the final component is always done relative to the file
//! descriptor of its already resolved parent directory and never follows a symlink there, so
//! nothing reached through a name given to this module can be outside the root.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

/// How many symlinks one lookup may follow before it fails with ELOOP (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// The mode for parent directories created on the way to a file (`mkdir -p`).
const PARENT_DIR_MODE: u32 = 0o755;

/// How often an `openat2` lookup is retried when the kernel reports a concurrent rename (EAGAIN).
const OPENAT2_RETRIES: usize = 16;

/// Flags of the directory descriptors handed out and used as parents: readable, so they work for
/// `fsetxattr`, `fchmod` and reading entries, and never inherited by child processes.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);

/// Flags of a descriptor that only names an object (it is never opened for I/O, so opening a
/// device or a FIFO through it has no side effect).
const PATH_FLAGS: OFlag = OFlag::O_PATH.union(OFlag::O_CLOEXEC);

/// Set once the kernel said it has no `openat2`, so later lookups go straight to the walk.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Makes temporary file names unique within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What went wrong, with the path (relative to the root) and the root it was resolved in.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A system call failed.
    #[error("{op} {path:?} under root {root:?}: {source}")]
    Io {
        op: &'static str,
        root: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The final component is empty, `.` or `..`: it names no entry that could be created or
    /// removed in its parent, and accepting it would act on the parent (or above) instead.
    #[error("{op} {path:?} under root {root:?}: the final component is empty, \".\" or \"..\"")]
    Escapes { op: &'static str, root: PathBuf, path: PathBuf },
    /// Too many symlinks (a loop), or a symlink where none may be followed.
    #[error("{op} {path:?} under root {root:?}: symlink loop, or a symlink that may not be followed")]
    Loop { op: &'static str, root: PathBuf, path: PathBuf },
}

/// What kind of object a name refers to, seen without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink (not followed).
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// A directory that hostile relative paths are resolved in, as if it were `/`.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Skip `openat2` and use the component walk, so tests cover the fallback on new kernels.
    force_fallback: bool,
}

/// Where a metadata change lands: an entry in a resolved parent (changed without following it),
/// or a resolved directory when the path ends in `.`, `..` or names the root itself.
enum Target {
    Entry(OwnedFd, OsString),
    Dir(OwnedFd),
}

impl Root {
    /// Opens `path` (a trusted path chosen by us, not by the hostile input) as the root.
    pub fn open(path: &Path) -> Result<Root, FsError> {
        let flags = DIR_FLAGS | OFlag::O_NOFOLLOW;
        let fd = fcntl::open(path, flags, Mode::empty()).map_err(|errno| FsError::Io {
            op: "open root",
            root: path.to_path_buf(),
            path: PathBuf::new(),
            source: errno.into(),
        })?;
        Ok(Root { fd, path: path.to_path_buf(), force_fallback: false })
    }

    /// Makes this root resolve with the component walk instead of `openat2`.
    #[cfg(test)]
    pub(crate) fn with_fallback_walk(mut self) -> Root {
        self.force_fallback = true;
        self
    }

    /// The root's own (trusted) path, for messages and for callers that mount it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory at `rel`, following symlinks inside the root. With `create`, missing
    /// directories are made one at a time with `mkdirat` in their resolved parent (mode `mode`,
    /// less the umask, as `mkdir -p` does), so no symlink is ever followed out of the root.
    pub fn open_dir(&self, rel: impl AsRef<Path>, create: bool, mode: u32) -> Result<OwnedFd, FsError> {
        let rel = rel.as_ref();
        let dir = if create { self.mkdir_all(rel, mode) } else { self.resolve(rel, DIR_FLAGS) };
        dir.map_err(|errno| self.error("open directory", rel, errno))
    }

    /// The resolved parent directory of `rel` (made first when `create_parents`) and its final
    /// component, which is never empty, `.` or `..`: the building block for creating or removing
    /// the final component without following it.
    #[cfg(test)]
    pub fn parent_and_name(&self, rel: impl AsRef<Path>, create_parents: bool) -> Result<(OwnedFd, OsString), FsError> {
        self.parent_and_name_for("find parent of", rel.as_ref(), create_parents)
    }

    /// Replaces the file at `rel` with `bytes` atomically: readers see the old or the new
    /// content, never a mix. The content goes to a temporary file in the same parent, is synced
    /// and renamed over the name (a symlink there is replaced, not followed). The mode is applied
    /// exactly, whatever the umask. Missing parents are created.
    pub fn write_file_atomic(&self, rel: impl AsRef<Path>, bytes: &[u8], mode: u32) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_and_name_for("write file", rel, true)?;
        write_replace(&parent, &name, bytes, mode).map_err(|errno| self.error("write file", rel, errno))
    }

    /// Creates a new empty regular file at `rel` and opens it for writing; the mode is applied
    /// exactly. Whatever non-directory was there (a symlink, a hard link to another name, a
    /// device, a FIFO) is unlinked first rather than opened, so the write can neither follow a
    /// link out nor reach a device. Missing parents are created.
    pub fn create_file(&self, rel: impl AsRef<Path>, mode: u32) -> Result<File, FsError> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_and_name_for("create file", rel, true)?;
        create_new_file(&parent, &name, mode).map_err(|errno| self.error("create file", rel, errno))
    }

    /// Removes the file, symlink or directory tree at `rel`. A final symlink is removed itself,
    /// and the tree is walked through directory descriptors opened with `O_NOFOLLOW`, so a
    /// symlink inside never leads out. A missing entry (or missing parent) is not an error.
    pub fn remove_all(&self, rel: impl AsRef<Path>) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (parent_rel, name) = self.split("remove", rel)?;
        let parent = match self.resolve(parent_rel, DIR_FLAGS) {
            Err(Errno::ENOENT) => return Ok(()),
            parent => parent.map_err(|errno| self.error("remove", rel, errno))?,
        };
        remove_entry(&parent, name).map_err(|errno| self.error("remove", rel, errno))
    }

    /// Opens the regular file at `rel` for reading (symlinks followed inside the root).
    pub fn open_file(&self, rel: impl AsRef<Path>) -> Result<File, FsError> {
        let rel = rel.as_ref();
        self.resolve(rel, OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .map(File::from)
            .map_err(|errno| self.error("open file", rel, errno))
    }

    /// Reads the whole file at `rel` (see [`Root::open_file`]).
    pub fn read(&self, rel: impl AsRef<Path>) -> Result<Vec<u8>, FsError> {
        use std::io::Read;
        let rel = rel.as_ref();
        let mut bytes = Vec::new();
        self.open_file(rel)?.read_to_end(&mut bytes).map_err(|e| FsError::Io {
            op: "read file",
            root: self.path.clone(),
            path: rel.to_path_buf(),
            source: e,
        })?;
        Ok(bytes)
    }

    /// Puts an overlayfs whiteout (a 0/0 character device) at `rel`, removing whatever was
    /// there first as `remove_all` does. Missing parents are created.
    pub fn mknod_whiteout(&self, rel: impl AsRef<Path>) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_and_name_for("create whiteout", rel, true)?;
        remove_entry(&parent, &name)
            .and_then(|()| stat::mknodat(&parent, name.as_os_str(), SFlag::S_IFCHR, Mode::empty(), 0))
            .map_err(|errno| self.error("create whiteout", rel, errno))
    }

    /// Sets the extended attribute `key` on the directory at `rel` through its descriptor, never
    /// through a path the kernel would resolve again (e.g. `trusted.overlay.opaque`).
    pub fn set_dir_xattr(&self, rel: impl AsRef<Path>, key: &str, value: &[u8]) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let key = CString::new(key).map_err(|_| Errno::EINVAL).map_err(|errno| self.error("set xattr", rel, errno))?;
        self.resolve(rel, DIR_FLAGS)
            .and_then(|dir| fsetxattr(&dir, &key, value))
            .map_err(|errno| self.error("set xattr", rel, errno))
    }

    /// An `O_PATH` descriptor of `rel` (symlinks followed inside the root), for bind-mounting the
    /// object it names through [`proc_fd_path`] as the kubelet does for `subPath`: the mount then
    /// gets exactly the object that was resolved here, whatever happens to the names later.
    pub fn open_path(&self, rel: impl AsRef<Path>) -> Result<OwnedFd, FsError> {
        let rel = rel.as_ref();
        self.resolve(rel, PATH_FLAGS).map_err(|errno| self.error("open path", rel, errno))
    }

    /// What `rel` names, without following a final symlink; `None` when nothing is there (or a
    /// parent on the way is not a directory, so nothing could be).
    pub fn kind_nofollow(&self, rel: impl AsRef<Path>) -> Result<Option<FileKind>, FsError> {
        let rel = rel.as_ref();
        let kind = self.resolve(rel, PATH_FLAGS | OFlag::O_NOFOLLOW).and_then(|fd| kind_of(&fd));
        match kind {
            Ok(kind) => Ok(Some(kind)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(errno) => Err(self.error("stat", rel, errno)),
        }
    }

    /// Creates a symlink at `rel` with the text `target`. The text is stored as given and never
    /// followed here; a later lookup through it resolves it inside the root. Missing parents are
    /// created; an existing entry at `rel` is an error (EEXIST).
    pub fn symlink(&self, target: impl AsRef<Path>, rel: impl AsRef<Path>) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_and_name_for("create symlink", rel, true)?;
        unistd::symlinkat(target.as_ref(), &parent, name.as_os_str())
            .map_err(|errno| self.error("create symlink", rel, errno))
    }

    /// Creates `new_rel` as a hard link to `existing_rel`. Both are resolved inside the root and
    /// the existing name is linked itself, not followed (no `AT_SYMLINK_FOLLOW`), so no file
    /// outside the root can get a name inside it. Missing parents of `new_rel` are created.
    pub fn hardlink(&self, existing_rel: impl AsRef<Path>, new_rel: impl AsRef<Path>) -> Result<(), FsError> {
        let (existing_rel, new_rel) = (existing_rel.as_ref(), new_rel.as_ref());
        let (old_parent, old_name) = self.parent_and_name_for("create hard link from", existing_rel, false)?;
        let (new_parent, new_name) = self.parent_and_name_for("create hard link", new_rel, true)?;
        unistd::linkat(&old_parent, old_name.as_os_str(), &new_parent, new_name.as_os_str(), AtFlags::empty())
            .map_err(|errno| self.error("create hard link", new_rel, errno))
    }

    /// Creates a device node, FIFO or socket at `rel`, as `mknod(2)`: `mode` holds the file type
    /// (`S_IFCHR`, `S_IFBLK`, `S_IFIFO`, ...) and the permissions (less the umask). Missing
    /// parents are created; an existing entry is an error (EEXIST).
    pub fn mknod(&self, rel: impl AsRef<Path>, mode: u32, dev: u64) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (parent, name) = self.parent_and_name_for("create node", rel, true)?;
        let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        stat::mknodat(&parent, name.as_os_str(), kind, perm, dev).map_err(|errno| self.error("create node", rel, errno))
    }

    /// Changes the owner of `rel` itself, a symlink included (`lchown` semantics).
    pub fn chown_nofollow(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        let changed = match self.target("chown", rel)? {
            Target::Entry(parent, name) => {
                unistd::fchownat(&parent, name.as_os_str(), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
            }
            Target::Dir(dir) => unistd::fchown(&dir, uid, gid),
        };
        changed.map_err(|errno| self.error("chown", rel, errno))
    }

    /// Sets the permission bits (setuid, setgid and sticky included) of `rel` through a
    /// descriptor of the object itself. A final symlink is not followed: it is an error, since a
    /// symlink has no mode of its own and following it could reach anything.
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        let changed = match self.target("chmod", rel)? {
            Target::Entry(parent, name) => chmod_entry(&parent, &name, mode),
            Target::Dir(dir) => stat::fchmod(&dir, mode),
        };
        changed.map_err(|errno| self.error("chmod", rel, errno))
    }

    /// Sets the access and modification times of `rel` itself, a symlink included.
    pub fn set_times_nofollow(
        &self,
        rel: impl AsRef<Path>,
        atime: SystemTime,
        mtime: SystemTime,
    ) -> Result<(), FsError> {
        let rel = rel.as_ref();
        let (atime, mtime) = (timespec(atime), timespec(mtime));
        let changed = match self.target("set times", rel)? {
            Target::Entry(parent, name) => {
                stat::utimensat(&parent, name.as_os_str(), &atime, &mtime, UtimensatFlags::NoFollowSymlink)
            }
            Target::Dir(dir) => stat::futimens(&dir, &atime, &mtime),
        };
        changed.map_err(|errno| self.error("set times", rel, errno))
    }

    /// Opens `rel` with `flags`, resolved as if the root were `/`: by `openat2` where the kernel
    /// has it, by the component walk otherwise.
    fn resolve(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        let flags = flags | OFlag::O_CLOEXEC;
        if !self.force_fallback && !OPENAT2_MISSING.load(Ordering::Relaxed) {
            match self.openat2_in_root(rel, flags) {
                Err(Errno::ENOSYS) => OPENAT2_MISSING.store(true, Ordering::Relaxed),
                // EPERM is what seccomp profiles answer for unknown system calls; a real
                // permission problem fails the walk in the same way.
                Err(Errno::EPERM) => {}
                result => return result,
            }
        }
        self.walk_in_root(rel, flags)
    }

    fn openat2_in_root(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        let how = OpenHow::new().flags(flags).resolve(resolve);
        let mut result = fcntl::openat2(&self.fd, rel, how);
        for _ in 0..OPENAT2_RETRIES {
            // EAGAIN: a rename raced with a `..` lookup and the kernel could not vouch for it.
            if !matches!(result, Err(Errno::EAGAIN)) {
                break;
            }
            result = fcntl::openat2(&self.fd, rel, how);
        }
        result
    }

    /// The fallback resolver: one `openat` per component with `O_NOFOLLOW`, reading symlinks
    /// ourselves and continuing with their text under the same rules (absolute restarts at the
    /// root, `..` pops to the directory walked before and never above the root).
    fn walk_in_root(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        let follow_last = !flags.contains(OFlag::O_NOFOLLOW);
        let mut pending: VecDeque<OsString> = components(rel.as_os_str()).collect();
        let mut current = self.root_path_fd()?;
        let mut walked: Vec<OwnedFd> = Vec::new();
        let mut symlinks = 0;
        while let Some(name) = pending.pop_front() {
            match name.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if let Some(parent) = walked.pop() {
                        current = parent;
                    }
                    continue;
                }
                _ => {}
            }
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                return fcntl::openat(&current, name.as_os_str(), flags, Mode::empty());
            }
            let next = fcntl::openat(&current, name.as_os_str(), PATH_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())?;
            match kind_of(&next)? {
                FileKind::Symlink => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(Errno::ELOOP);
                    }
                    let target = fcntl::readlinkat(&next, "")?;
                    if target.as_bytes().starts_with(b"/") {
                        current = self.root_path_fd()?;
                        walked.clear();
                    }
                    for component in components(&target).rev() {
                        pending.push_front(component);
                    }
                }
                // O_NOFOLLOW: if the name was swapped for a symlink meanwhile, this fails.
                _ if is_last => {
                    return fcntl::openat(&current, name.as_os_str(), flags | OFlag::O_NOFOLLOW, Mode::empty());
                }
                FileKind::Dir => walked.push(std::mem::replace(&mut current, next)),
                _ => return Err(Errno::ENOTDIR),
            }
        }
        fcntl::openat(&current, ".", flags, Mode::empty())
    }

    /// A fresh `O_PATH` descriptor of the root, where a walk starts or restarts.
    fn root_path_fd(&self) -> nix::Result<OwnedFd> {
        fcntl::openat(&self.fd, ".", PATH_FLAGS | OFlag::O_DIRECTORY, Mode::empty())
    }

    /// `mkdir -p` inside the root; returns the final directory. Each prefix is resolved in the
    /// root (so `..` and symlinks behave as in a lookup) and each missing one is made in its
    /// resolved parent and opened with `O_NOFOLLOW`.
    fn mkdir_all(&self, rel: &Path, mode: u32) -> nix::Result<OwnedFd> {
        match self.resolve(rel, DIR_FLAGS) {
            Err(Errno::ENOENT) => {}
            existing => return existing,
        }
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        let mut dir = self.resolve(Path::new("."), DIR_FLAGS)?;
        let mut prefix = PathBuf::new();
        for name in components(rel.as_os_str()).filter(|name| !matches!(name.as_bytes(), b"" | b".")) {
            prefix.push(&name);
            dir = match self.resolve(&prefix, DIR_FLAGS) {
                Err(Errno::ENOENT) => make_child_dir(&dir, &name, mode)?,
                next => next?,
            };
        }
        Ok(dir)
    }

    fn parent_and_name_for(&self, op: &'static str, rel: &Path, create: bool) -> Result<(OwnedFd, OsString), FsError> {
        let (parent_rel, name) = self.split(op, rel)?;
        let parent =
            if create { self.mkdir_all(parent_rel, PARENT_DIR_MODE) } else { self.resolve(parent_rel, DIR_FLAGS) };
        let parent = parent.map_err(|errno| self.error(op, rel, errno))?;
        Ok((parent, name.to_os_string()))
    }

    fn split<'a>(&self, op: &'static str, rel: &'a Path) -> Result<(&'a Path, &'a OsStr), FsError> {
        split_parent(rel).ok_or_else(|| FsError::Escapes { op, root: self.path.clone(), path: rel.to_path_buf() })
    }

    fn target(&self, op: &'static str, rel: &Path) -> Result<Target, FsError> {
        if split_parent(rel).is_some() {
            let (parent, name) = self.parent_and_name_for(op, rel, false)?;
            return Ok(Target::Entry(parent, name));
        }
        let dir = self.resolve(rel, DIR_FLAGS).map_err(|errno| self.error(op, rel, errno))?;
        Ok(Target::Dir(dir))
    }

    fn error(&self, op: &'static str, rel: &Path, errno: Errno) -> FsError {
        let (root, path) = (self.path.clone(), rel.to_path_buf());
        match errno {
            Errno::ELOOP => FsError::Loop { op, root, path },
            _ => FsError::Io { op, root, path, source: errno.into() },
        }
    }
}

/// `/proc/self/fd/N` for `fd`: a path that reaches exactly the object behind the descriptor
/// (for `mount --bind` of an `O_PATH` descriptor from [`Root::open_path`]).
pub fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether `p` is a relative path without `..` components, empty strings or NUL bytes: what API
/// validation accepts for `items[].path` and `subPath` before anything is resolved at all.
pub fn is_clean_relative(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && !p.contains('\0') && !p.split('/').any(|c| c == "..")
}

/// The path components of `path` split on `/`, empty ones included (they mean "this directory",
/// and a trailing one marks that the last name must be a directory).
fn components(path: &OsStr) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.as_bytes().split(|&b| b == b'/').map(|c| OsStr::from_bytes(c).to_os_string())
}

/// `rel` split into its parent and final component (trailing slashes ignored); `None` when the
/// final component is empty, `.` or `..`.
fn split_parent(rel: &Path) -> Option<(&Path, &OsStr)> {
    let bytes = rel.as_os_str().as_bytes();
    let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let trimmed = &bytes[..end];
    let (parent, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&trimmed[..slash], &trimmed[slash + 1..]),
        None => (&trimmed[..0], trimmed),
    };
    if matches!(name, b"" | b"." | b"..") {
        return None;
    }
    Some((Path::new(OsStr::from_bytes(parent)), OsStr::from_bytes(name)))
}

fn kind_of(fd: &OwnedFd) -> nix::Result<FileKind> {
    let format = stat::fstat(fd)?.st_mode & SFlag::S_IFMT.bits();
    Ok(match SFlag::from_bits_truncate(format) {
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    })
}

/// Makes `name` in `parent` (tolerating a concurrent maker) and opens it without following it.
fn make_child_dir(parent: &OwnedFd, name: &OsStr, mode: Mode) -> nix::Result<OwnedFd> {
    match stat::mkdirat(parent, name, mode) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(errno),
    }
    fcntl::openat(parent, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
}

/// Unlinks a non-directory `name` in `parent` (missing is fine) and creates a new regular file.
fn create_new_file(parent: &OwnedFd, name: &OsStr, mode: u32) -> nix::Result<File> {
    match unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(errno),
    }
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(mode & 0o7777);
    let fd = fcntl::openat(parent, name, flags, mode)?;
    stat::fchmod(&fd, mode)?;
    Ok(File::from(fd))
}

/// Writes `bytes` to a new temporary file in `parent` and renames it over `name`; the temporary
/// file is removed again if anything fails.
fn write_replace(parent: &OwnedFd, name: &OsStr, bytes: &[u8], mode: u32) -> nix::Result<()> {
    let (temp_name, file) = create_temp_file(parent)?;
    let written =
        fill_file(file, bytes, mode).and_then(|()| fcntl::renameat(parent, temp_name.as_os_str(), parent, name));
    if written.is_err() {
        // Ignoring the error: this only tidies up our own temporary file, and the caller needs
        // the error that made the write fail, not this one.
        let _ = unistd::unlinkat(parent, temp_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// A new file with a name no one else uses (`O_EXCL`, retried on a clash with an existing name).
fn create_temp_file(parent: &OwnedFd) -> nix::Result<(OsString, File)> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut last_error = Errno::EEXIST;
    for _ in 0..16 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = OsString::from(format!(".bramble-tmp-{}-{n}", std::process::id()));
        match fcntl::openat(parent, temp_name.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => return Ok((temp_name, File::from(fd))),
            Err(errno) => last_error = errno,
        }
        if last_error != Errno::EEXIST {
            break;
        }
    }
    Err(last_error)
}

fn fill_file(mut file: File, bytes: &[u8], mode: u32) -> nix::Result<()> {
    use std::io::Write;
    let io_errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    file.write_all(bytes).map_err(io_errno)?;
    stat::fchmod(&file, Mode::from_bits_truncate(mode & 0o7777))?;
    file.sync_all().map_err(io_errno)
}

/// Removes `name` in `parent`, recursing into a directory through descriptors opened with
/// `O_NOFOLLOW`; a missing entry is fine.
fn remove_entry(parent: &impl AsFd, name: &OsStr) -> nix::Result<()> {
    match unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        // Linux answers EISDIR when `name` is a directory.
        Err(Errno::EISDIR) => {}
        Err(errno) => return Err(errno),
    }
    let dir = fcntl::openat(parent, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())?;
    remove_children(dir)?;
    match unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno),
    }
}

fn remove_children(dir: OwnedFd) -> nix::Result<()> {
    let mut dir = Dir::from_fd(dir)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_os_string());
        }
    }
    for name in names {
        remove_entry(&dir, &name)?;
    }
    Ok(())
}

/// chmod of `name` in `parent` without following it: an `O_PATH` descriptor of the entry itself
/// (refused if it is a symlink), changed through its `/proc/self/fd` link, which reaches exactly
/// that object (the way glibc implements `fchmodat(AT_SYMLINK_NOFOLLOW)`).
fn chmod_entry(parent: &OwnedFd, name: &OsStr, mode: Mode) -> nix::Result<()> {
    let fd = fcntl::openat(parent, name, PATH_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())?;
    if kind_of(&fd)? == FileKind::Symlink {
        return Err(Errno::ELOOP);
    }
    stat::fchmodat(fcntl::AT_FDCWD, proc_fd_path(&fd).as_path(), mode, FchmodatFlags::FollowSymlink)
}

fn fsetxattr(fd: &OwnedFd, key: &CString, value: &[u8]) -> nix::Result<()> {
    // SAFETY: `fd` is an open descriptor borrowed for the call, `key` is NUL-terminated, and
    // `value` points to `value.len()` initialized bytes; the kernel only reads them during it.
    let rc = unsafe { libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(rc).map(drop)
}

/// A time as `utimensat` wants it (times before 1970 included).
fn timespec(time: SystemTime) -> TimeSpec {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (i64::try_from(after.as_secs()).unwrap_or(i64::MAX), i64::from(after.subsec_nanos())),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).map_or(i64::MIN + 1, |secs| -secs);
            let nanos = i64::from(before.subsec_nanos());
            if nanos == 0 { (secs, 0) } else { (secs - 1, 1_000_000_000 - nanos) }
        }
    };
    // `time_t` is 32 bits on 32-bit ARM (Debian bookworm's armhf): times past 2038 there
    // are clamped rather than wrapped.
    #[allow(clippy::useless_conversion, reason = "i32 on 32-bit targets")]
    let secs = libc::time_t::try_from(secs).unwrap_or(if secs < 0 { libc::time_t::MIN } else { libc::time_t::MAX });
    #[allow(clippy::useless_conversion, reason = "i32 on 32-bit targets")]
    let nanos = libc::c_long::try_from(nanos).unwrap_or(0);
    TimeSpec::new(secs, nanos)
}

/// Helpers shared by the tests of this module and of the layer unpacker: scratch directories
/// that clean up after themselves, and a "sentinel" tree outside the root whose every detail is
/// recorded so a test can prove nothing outside the root was touched.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::path::{Path, PathBuf};

    use super::Root;

    /// Runs a test function once with `openat2` and once with the component walk forced.
    macro_rules! both_resolvers {
        ($($name:ident),* $(,)?) => {
            $(
                mod $name {
                    #[test]
                    fn openat2() {
                        super::$name(false)
                    }
                    #[test]
                    fn fallback_walk() {
                        super::$name(true)
                    }
                }
            )*
        };
    }
    pub(crate) use both_resolvers;

    /// A directory under the system temp dir with a random name, removed on drop (even when
    /// the test panics).
    pub struct TempDir {
        pub path: PathBuf,
    }

    impl TempDir {
        pub fn new(label: &str) -> TempDir {
            let mut random = [0u8; 8];
            std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
            let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let path = std::env::temp_dir().join(format!("safefs-{label}-{suffix}"));
            std::fs::create_dir(&path).unwrap();
            TempDir { path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            // Ignoring the error: failing to clean up must not hide the test's own result.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    /// `base/dirs/root` (what a test hands to `Root`) and `base/sentinel` (which must never
    /// change). The root is two levels down so that a path climbing out with `../..` lands in
    /// `base`, where the snapshot sees it, rather than somewhere on the host.
    pub struct Area {
        pub temp: TempDir,
        pub root: PathBuf,
        pub sentinel: PathBuf,
    }

    impl Area {
        pub fn new(label: &str) -> Area {
            let temp = TempDir::new(label);
            let root = temp.path.join("dirs/root");
            let sentinel = temp.path.join("sentinel");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::create_dir_all(sentinel.join("sub")).unwrap();
            std::fs::write(sentinel.join("victim"), b"sentinel victim").unwrap();
            std::fs::write(sentinel.join("sub/inner"), b"sentinel inner").unwrap();
            symlink("victim", sentinel.join("link")).unwrap();
            set_xattr(&sentinel, "user.sentinel", b"keep");
            set_xattr(&sentinel.join("victim"), "user.sentinel", b"keep");
            Area { temp, root, sentinel }
        }

        pub fn open_root(&self, fallback: bool) -> Root {
            let root = Root::open(&self.root).unwrap();
            if fallback { root.with_fallback_walk() } else { root }
        }

        /// The sentinel's absolute path without its leading `/`: where a path that escapes to it
        /// lands when it is resolved inside the root instead.
        pub fn sentinel_in_root(&self) -> PathBuf {
            self.root.join(self.sentinel.strip_prefix("/").unwrap())
        }

        /// Everything in `base` except the root's subtree: the sentinel, and any stray entry an
        /// escape would have left beside it.
        pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
            let mut entries = BTreeMap::new();
            record(&self.temp.path, &self.temp.path, &self.root, &mut entries);
            entries
        }

        pub fn assert_outside_untouched(&self, before: &BTreeMap<PathBuf, String>, case: &str) {
            let after = self.snapshot();
            assert_eq!(before, &after, "something outside the root changed in case {case}");
        }
    }

    fn record(base: &Path, path: &Path, skip: &Path, entries: &mut BTreeMap<PathBuf, String>) {
        if path == skip {
            return;
        }
        let meta = std::fs::symlink_metadata(path).unwrap();
        let content = if meta.is_file() { std::fs::read(path).unwrap() } else { Vec::new() };
        let link = if meta.file_type().is_symlink() { std::fs::read_link(path).ok() } else { None };
        let description = format!(
            "mode={:o} owner={}:{} size={} nlink={} rdev={} mtime={}.{} ctime={}.{} content={:?} link={:?} xattrs={:?}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.size(),
            meta.nlink(),
            meta.rdev(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            String::from_utf8_lossy(&content),
            link,
            list_xattrs(path),
        );
        entries.insert(path.strip_prefix(base).unwrap().to_path_buf(), description);
        if meta.is_dir() {
            for child in std::fs::read_dir(path).unwrap() {
                record(base, &child.unwrap().path(), skip, entries);
            }
        }
    }

    fn c_path(path: &Path) -> CString {
        CString::new(path.as_os_str().as_bytes()).unwrap()
    }

    pub fn set_xattr(path: &Path, key: &str, value: &[u8]) {
        let (path, key) = (c_path(path), CString::new(key).unwrap());
        // SAFETY: both strings are NUL-terminated and `value` has `value.len()` readable bytes.
        let rc = unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        assert_eq!(rc, 0, "lsetxattr: {}", std::io::Error::last_os_error());
    }

    /// The value of `key` on `path` itself (symlinks not followed), `None` when unset.
    pub fn get_xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
        let (path, key) = (c_path(path), CString::new(key).unwrap());
        let mut value = vec![0u8; 4096];
        // SAFETY: both strings are NUL-terminated and `value` has `value.len()` writable bytes.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        let n = usize::try_from(n).ok()?;
        value.truncate(n);
        Some(value)
    }

    fn list_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
        let c = c_path(path);
        let mut names = vec![0u8; 4096];
        // SAFETY: `c` is NUL-terminated and `names` has `names.len()` writable bytes.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        let n = usize::try_from(n).unwrap();
        names[..n]
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| {
                let name = String::from_utf8_lossy(name).into_owned();
                let value = get_xattr(path, &name).unwrap_or_default();
                (name, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::test_support::{Area, both_resolvers, get_xattr};
    use super::*;

    both_resolvers!(
        hostile_symlinks_never_reach_the_sentinel,
        dot_dot_cannot_climb,
        symlink_loops_fail,
        symlink_limit_is_forty,
        operations_work_inside_the_root,
        remove_all_does_not_follow_symlinks,
        create_file_replaces_links_and_devices,
        metadata_changes_do_not_follow_symlinks,
    );

    /// The target of a descriptor, as the kernel names it.
    fn fd_target(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(proc_fd_path(fd)).unwrap()
    }

    fn assert_inside(area: &Area, fd: &OwnedFd, case: &str) {
        let target = fd_target(fd);
        assert!(target.starts_with(&area.root), "{case}: resolved to {target:?}, outside {:?}", area.root);
    }

    /// Symlinks that point out of the root in every way we know, in `area`'s root.
    fn plant_hostile_symlinks(area: &Area) {
        let sentinel = &area.sentinel;
        symlink("/", area.root.join("abs")).unwrap();
        symlink("../../../../../../../../..", area.root.join("up")).unwrap();
        symlink(sentinel, area.root.join("out")).unwrap();
        symlink("../../sentinel", area.root.join("rel_out")).unwrap();
        symlink("chain2", area.root.join("chain1")).unwrap();
        symlink("chain3/", area.root.join("chain2")).unwrap();
        symlink(sentinel, area.root.join("chain3")).unwrap();
        std::fs::create_dir(area.root.join("dir")).unwrap();
        symlink("../../../../../../../../../..", area.root.join("dir/deep_up")).unwrap();
        std::fs::write(area.root.join("inside"), b"inside").unwrap();
    }

    /// Paths that would reach the sentinel if they were resolved on the host.
    fn hostile_prefixes(area: &Area) -> Vec<String> {
        let sentinel = area.sentinel.to_str().unwrap();
        let from_slash = sentinel.trim_start_matches('/');
        vec![
            "out".to_string(),
            "chain1".to_string(),
            format!("abs/{from_slash}"),
            format!("up/{from_slash}"),
            format!("dir/deep_up/{from_slash}"),
            format!("../../../../../../../../..{sentinel}"),
            sentinel.to_string(),
            // Resolves to `<root>/sentinel`: `..` at the root is the root.
            "rel_out".to_string(),
        ]
    }

    /// The result of one attempted operation: must succeed when `strict`, may fail otherwise.
    fn outcome<T>(result: Result<T, FsError>, strict: bool, what: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) if strict => panic!("{what}: {error}"),
            Err(_) => None,
        }
    }

    /// Every operation through `prefix`; each either fails (only allowed when not `strict`) or
    /// acts inside the root.
    fn attack(root: &Root, area: &Area, prefix: &str, strict: bool) {
        let at = |name: &str| format!("{prefix}/{name}");
        if let Some(fd) = outcome(root.open_dir(prefix, false, 0), strict, "open_dir") {
            assert_inside(area, &fd, prefix);
        }
        if let Some(fd) = outcome(root.open_dir(at("newdir"), true, 0o755), strict, "open_dir create") {
            assert_inside(area, &fd, prefix);
        }
        outcome(root.write_file_atomic(at("victim"), b"pwned", 0o644), strict, "write_file_atomic");
        if let Some(mut file) = outcome(root.create_file(at("victim2"), 0o644), strict, "create_file") {
            file.write_all(b"pwned").unwrap();
        }
        if let Some(fd) = outcome(root.open_path(at("victim")), strict, "open_path") {
            assert_inside(area, &fd, prefix);
        }
        outcome(root.set_dir_xattr(prefix, "user.pwned", b"1"), strict, "set_dir_xattr");
        outcome(root.mknod_whiteout(at("sub/inner")), strict, "mknod_whiteout");
        outcome(root.remove_all(at("sub")), strict, "remove_all sub");
        outcome(root.symlink("/etc/passwd", at("link")), strict, "symlink");
        outcome(root.mknod(at("fifo"), libc::S_IFIFO | 0o644, 0), strict, "mknod");
        outcome(root.hardlink("inside", at("hard")), strict, "hardlink into");
        outcome(root.hardlink(at("victim"), "hard_from"), strict, "hardlink from");
        outcome(root.chown_nofollow(at("victim"), 1234, 1234), strict, "chown_nofollow");
        outcome(root.chmod(at("victim"), 0o777), strict, "chmod");
        outcome(root.chmod(at("."), 0o700), strict, "chmod dir");
        outcome(root.chown_nofollow(at(""), 1234, 1234), strict, "chown dir");
        outcome(root.set_times_nofollow(at("victim"), UNIX_EPOCH, UNIX_EPOCH), strict, "set_times_nofollow");
        outcome(root.remove_all(at("victim")), strict, "remove_all victim");
    }

    /// Each hostile prefix, first while its in-root counterpart is missing (so lookups meet
    /// dangling symlinks), then while it exists (so every operation succeeds, inside the root).
    fn hostile_symlinks_never_reach_the_sentinel(fallback: bool) {
        let count = hostile_prefixes(&Area::new("count")).len();
        for counterpart_exists in [false, true] {
            for index in 0..count {
                let area = Area::new("hostile");
                plant_hostile_symlinks(&area);
                let prefix = &hostile_prefixes(&area)[index];
                let counterpart =
                    if prefix == "rel_out" { area.root.join("sentinel") } else { area.sentinel_in_root() };
                if counterpart_exists {
                    std::fs::create_dir_all(counterpart.join("sub")).unwrap();
                    std::fs::write(counterpart.join("sub/inner"), b"in root").unwrap();
                }
                let root = area.open_root(fallback);
                let before = area.snapshot();
                attack(&root, &area, prefix, counterpart_exists);
                area.assert_outside_untouched(&before, prefix);
                if counterpart_exists {
                    let landed = std::fs::read(counterpart.join("victim2")).unwrap();
                    assert_eq!(landed, b"pwned", "{prefix}: the write should land inside the root");
                    assert_eq!(get_xattr(&counterpart, "user.pwned").unwrap(), b"1");
                }
                outcome(root.remove_all(prefix), counterpart_exists, "remove_all prefix");
                area.assert_outside_untouched(&before, prefix);
            }
        }
    }

    /// `..` at the root stays at the root, wherever it appears.
    fn dot_dot_cannot_climb(fallback: bool) {
        let area = Area::new("dotdot");
        let root = area.open_root(fallback);
        let before = area.snapshot();
        // Unresolved, these would be `base/escape.txt` and the sentinel's victim.
        root.write_file_atomic("../../escape.txt", b"x", 0o644).unwrap();
        assert_eq!(std::fs::read(area.root.join("escape.txt")).unwrap(), b"x");
        root.write_file_atomic("../../sentinel/victim", b"x", 0o644).unwrap();
        assert_eq!(std::fs::read(area.root.join("sentinel/victim")).unwrap(), b"x");
        root.open_dir("a/../../b/../../c", true, 0o755).unwrap();
        assert!(area.root.join("c").is_dir());
        let top = root.open_dir("a/../..", false, 0).unwrap();
        assert_eq!(fd_target(&top), area.root);
        root.remove_all("../../sentinel").unwrap();
        assert!(!area.root.join("sentinel").exists());
        root.mknod_whiteout("../../sentinel/sub").unwrap();
        assert!(area.root.join("sentinel/sub").metadata().unwrap().file_type().is_char_device());
        area.assert_outside_untouched(&before, "..");

        for rel in ["", "/", ".", "..", "a/..", "a/.", "../..", "//"] {
            assert!(matches!(root.remove_all(rel), Err(FsError::Escapes { .. })), "remove_all({rel:?})");
            assert!(matches!(root.mknod_whiteout(rel), Err(FsError::Escapes { .. })), "mknod_whiteout({rel:?})");
            assert!(
                matches!(root.parent_and_name(rel, false), Err(FsError::Escapes { .. })),
                "parent_and_name({rel:?})"
            );
        }
        assert!(area.root.is_dir());
        area.assert_outside_untouched(&before, "final component ..");
    }

    fn symlink_loops_fail(fallback: bool) {
        let area = Area::new("loop");
        symlink("loop", area.root.join("loop")).unwrap();
        symlink("ping", area.root.join("pong")).unwrap();
        symlink("pong", area.root.join("ping")).unwrap();
        let root = area.open_root(fallback);
        assert!(matches!(root.open_path("loop"), Err(FsError::Loop { .. })));
        assert!(matches!(root.open_dir("ping/x", true, 0o755), Err(FsError::Loop { .. })));
        assert!(matches!(root.write_file_atomic("loop/x", b"", 0o644), Err(FsError::Loop { .. })));
        // The loop itself can be replaced and removed: the final component is never followed.
        root.write_file_atomic("loop", b"replaced", 0o644).unwrap();
        root.remove_all("ping").unwrap();
        assert!(!area.root.join("ping").exists());
    }

    fn symlink_limit_is_forty(fallback: bool) {
        let area = Area::new("limit");
        std::fs::create_dir(area.root.join("target")).unwrap();
        symlink("target", area.root.join("s40")).unwrap();
        for i in 0..40 {
            symlink(format!("s{}", i + 1), area.root.join(format!("s{i}"))).unwrap();
        }
        let root = area.open_root(fallback);
        root.open_dir("s1", false, 0).unwrap();
        assert!(matches!(root.open_dir("s0", false, 0), Err(FsError::Loop { .. })));
    }

    fn operations_work_inside_the_root(fallback: bool) {
        let area = Area::new("ops");
        let root = area.open_root(fallback);
        let dir = root.open_dir("a/b/c", true, 0o750).unwrap();
        assert_eq!(fd_target(&dir), area.root.join("a/b/c"));

        root.write_file_atomic("a/file", b"one", 0o640).unwrap();
        root.write_file_atomic("a/file", b"two", 0o604).unwrap();
        let meta = std::fs::metadata(area.root.join("a/file")).unwrap();
        assert_eq!(std::fs::read(area.root.join("a/file")).unwrap(), b"two");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o604);
        let leftovers: Vec<_> =
            std::fs::read_dir(area.root.join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "no temporary file may stay behind: {leftovers:?}");

        let (parent, name) = root.parent_and_name("x/y/z/", true).unwrap();
        assert_eq!(name, "z");
        assert_eq!(fd_target(&parent), area.root.join("x/y"));

        root.set_dir_xattr("a/b", "trusted.overlay.opaque", b"y").unwrap();
        assert_eq!(get_xattr(&area.root.join("a/b"), "trusted.overlay.opaque").unwrap(), b"y");

        root.symlink("../anything/at/all", "a/link").unwrap();
        assert_eq!(std::fs::read_link(area.root.join("a/link")).unwrap(), Path::new("../anything/at/all"));
        assert_eq!(root.kind_nofollow("a/link").unwrap(), Some(FileKind::Symlink));
        assert_eq!(root.kind_nofollow("a/file").unwrap(), Some(FileKind::File));
        assert_eq!(root.kind_nofollow("a").unwrap(), Some(FileKind::Dir));
        assert_eq!(root.kind_nofollow("missing").unwrap(), None);

        root.hardlink("a/file", "hard").unwrap();
        let ino = |p: &str| std::fs::symlink_metadata(area.root.join(p)).unwrap().ino();
        assert_eq!(ino("a/file"), ino("hard"));
        root.hardlink("a/link", "hard_link_to_symlink").unwrap();
        assert_eq!(ino("a/link"), ino("hard_link_to_symlink"));

        root.mknod("fifo", libc::S_IFIFO | 0o600, 0).unwrap();
        assert!(std::fs::symlink_metadata(area.root.join("fifo")).unwrap().file_type().is_fifo());
        root.mknod_whiteout("a/b").unwrap();
        let whiteout = std::fs::symlink_metadata(area.root.join("a/b")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);

        root.chmod(".", 0o711).unwrap();
        assert_eq!(std::fs::metadata(&area.root).unwrap().permissions().mode() & 0o7777, 0o711);
        root.chmod("a/file", 0o4755).unwrap();
        assert_eq!(std::fs::metadata(area.root.join("a/file")).unwrap().permissions().mode() & 0o7777, 0o4755);

        let fd = root.open_path("a/link/../../a/file").unwrap_err();
        assert!(matches!(fd, FsError::Io { .. }), "a dangling link inside the path: {fd}");
        let fd = root.open_path("/a/./file").unwrap();
        assert_eq!(fd_target(&fd), area.root.join("a/file"));
        assert!(proc_fd_path(&fd).starts_with("/proc/self/fd/"));
        assert!(root.remove_all("no/such/thing").is_ok());
    }

    fn remove_all_does_not_follow_symlinks(fallback: bool) {
        let area = Area::new("remove");
        std::fs::create_dir_all(area.root.join("tree/deeper")).unwrap();
        std::fs::write(area.root.join("tree/deeper/file"), b"x").unwrap();
        symlink(&area.sentinel, area.root.join("tree/out")).unwrap();
        symlink(&area.sentinel, area.root.join("tree/deeper/out")).unwrap();
        symlink(area.sentinel.join("victim"), area.root.join("file_link")).unwrap();
        symlink(&area.sentinel, area.root.join("dir_link")).unwrap();
        let root = area.open_root(fallback);
        let before = area.snapshot();
        root.remove_all("tree").unwrap();
        root.remove_all("file_link").unwrap();
        root.remove_all("dir_link/").unwrap();
        root.remove_all("tree").unwrap();
        area.assert_outside_untouched(&before, "remove_all");
        assert_eq!(std::fs::read_dir(&area.root).unwrap().count(), 0);
    }

    fn create_file_replaces_links_and_devices(fallback: bool) {
        let area = Area::new("create");
        symlink(area.sentinel.join("victim"), area.root.join("link")).unwrap();
        std::fs::hard_link(area.sentinel.join("victim"), area.root.join("hard")).unwrap();
        let root = area.open_root(fallback);
        root.mknod("fifo", libc::S_IFIFO | 0o600, 0).unwrap();
        root.mknod("null", libc::S_IFCHR | 0o600, nix::sys::stat::makedev(1, 3)).unwrap();
        let before = area.snapshot();
        for name in ["link", "fifo", "null"] {
            root.create_file(name, 0o600).unwrap().write_all(b"new").unwrap();
            let meta = std::fs::symlink_metadata(area.root.join(name)).unwrap();
            assert!(meta.is_file(), "{name} should now be a regular file");
        }
        area.assert_outside_untouched(&before, "create_file");
        // A hard link made by someone else is replaced, not written through.
        let victim = std::fs::read(area.sentinel.join("victim")).unwrap();
        root.create_file("hard", 0o600).unwrap().write_all(b"new").unwrap();
        assert_eq!(std::fs::read(area.sentinel.join("victim")).unwrap(), victim);
        std::fs::create_dir(area.root.join("dir")).unwrap();
        assert!(root.create_file("dir", 0o600).is_err());
    }

    fn metadata_changes_do_not_follow_symlinks(fallback: bool) {
        let area = Area::new("meta");
        symlink(area.sentinel.join("victim"), area.root.join("link")).unwrap();
        let root = area.open_root(fallback);
        let before = area.snapshot();
        root.chown_nofollow("link", 4321, 4321).unwrap();
        assert_eq!(std::fs::symlink_metadata(area.root.join("link")).unwrap().uid(), 4321);
        assert!(matches!(root.chmod("link", 0o777), Err(FsError::Loop { .. })));
        let when = UNIX_EPOCH + Duration::from_secs(1_000_000);
        root.set_times_nofollow("link", when, when).unwrap();
        assert_eq!(std::fs::symlink_metadata(area.root.join("link")).unwrap().mtime(), 1_000_000);
        area.assert_outside_untouched(&before, "metadata");
        root.set_times_nofollow(".", when, when).unwrap();
        root.chown_nofollow("/", 0, 0).unwrap();
    }

    #[test]
    fn openat2_is_used_on_this_kernel() {
        let area = Area::new("openat2");
        let root = Root::open(&area.root).unwrap();
        assert!(root.openat2_in_root(Path::new("."), DIR_FLAGS).is_ok(), "the openat2 tests would test the walk");
    }

    #[test]
    fn pre_epoch_times_convert() {
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        let spec = timespec(before);
        assert_eq!((spec.tv_sec(), spec.tv_nsec()), (-2, 500_000_000));
        let now = SystemTime::now();
        assert!(timespec(now).tv_sec() > 1_600_000_000);
    }

    #[test]
    fn is_clean_relative_table() {
        let cases = [
            ("a", true),
            ("a/b/c", true),
            ("a/./b", true),
            ("..a/b..", true),
            ("a/...", true),
            ("a/", true),
            ("", false),
            ("/a", false),
            ("..", false),
            ("../a", false),
            ("a/..", false),
            ("a/../b", false),
            ("a\0b", false),
            ("/", false),
        ];
        for (path, clean) in cases {
            assert_eq!(is_clean_relative(path), clean, "{path:?}");
        }
    }

    #[test]
    fn split_parent_table() {
        let cases: [(&str, Option<(&str, &str)>); 9] = [
            ("a", Some(("", "a"))),
            ("a/b", Some(("a", "b"))),
            ("a/b//", Some(("a", "b"))),
            ("/a", Some(("", "a"))),
            ("../x", Some(("..", "x"))),
            ("", None),
            ("a/.", None),
            ("a/..", None),
            ("///", None),
        ];
        for (rel, expected) in cases {
            let got = split_parent(Path::new(rel)).map(|(p, n)| (p.to_str().unwrap(), n.to_str().unwrap()));
            assert_eq!(got, expected, "{rel:?}");
        }
    }

    #[test]
    fn errors_name_the_path_and_the_root() {
        let area = Area::new("errors");
        let root = area.open_root(false);
        let error = root.open_dir("missing/dir", false, 0).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("open directory") && message.contains("missing/dir"), "{message}");
        assert!(message.contains(area.root.to_str().unwrap()), "{message}");
    }
}
