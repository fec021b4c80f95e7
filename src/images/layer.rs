//! Unpacking one image layer tar into the form overlayfs stacks: OCI whiteouts (`.wh.name`)
//! become 0/0 character devices and opaque markers (`.wh..wh..opq`) the
//! `trusted.overlay.opaque=y` attribute of their directory.
//!
//! A layer is hostile input: its entry names, symlink targets and hard-link targets are chosen
//! by whoever built the image. Every file-system operation here goes through [`Root`], which
//! resolves each name as if the layer directory were `/`. So `lnk -> /etc` followed by
//! `lnk/.wh.passwd` whites out `<dir>/etc/passwd`, never the host's, and `../../x` or `/x`
//! lands at `<dir>/x`.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tar::EntryType;

use crate::sys::fs::{FileKind, Root};

/// A reader that hashes what passes through it (the layer's diff ID is the SHA-256 of the
/// uncompressed tar).
pub struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing { inner, ctx: ring::digest::Context::new(&ring::digest::SHA256) }
    }

    /// Reads what is left and returns `sha256:<hex>` of everything read.
    pub fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(format!("sha256:{}", hex(self.ctx.finish().as_ref())))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The basename that marks its directory opaque (lower layers' contents hidden).
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The basename prefix of a whiteout: `.wh.name` deletes `name` from lower layers.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// aufs bookkeeping names (`.wh..wh.plnk`, ...) other than the opaque marker; not content.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// The attribute overlayfs reads to treat a directory as opaque.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The mode of directories made for an opaque marker whose directory has no entry of its own.
const IMPLIED_DIR_MODE: u32 = 0o755;

/// Unpacks the uncompressed layer tar read from `tar` into `dir` (created if missing). Entries
/// replace earlier ones of the same name, except that a directory over a directory keeps it.
pub fn unpack(tar: impl Read, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating layer directory {}", dir.display()))?;
    let root = Root::open(dir)?;
    unpack_into(tar, &root)
}

fn unpack_into(tar: impl Read, root: &Root) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(tar);
    let mut dir_times = Vec::new();
    for entry in archive.entries().context("reading the layer")? {
        let mut entry = entry.context("reading a layer entry")?;
        let path = entry.path().context("a layer entry's path")?.into_owned();
        unpack_entry(root, &mut entry, &path, &mut dir_times)
            .with_context(|| format!("unpacking layer entry {} into {}", path.display(), root.path().display()))?;
    }
    set_dir_times(root, &dir_times)
}

/// What the header says about an entry's owner, mode and time.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: SystemTime,
}

impl Meta {
    fn of(header: &tar::Header) -> anyhow::Result<Meta> {
        let uid = u32::try_from(header.uid()?).context("uid out of range")?;
        let gid = u32::try_from(header.gid()?).context("gid out of range")?;
        let mode = header.mode()? & 0o7777;
        let mtime = UNIX_EPOCH.checked_add(Duration::from_secs(header.mtime()?)).context("mtime out of range")?;
        Ok(Meta { uid, gid, mode, mtime })
    }
}

fn unpack_entry<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    dir_times: &mut Vec<(PathBuf, SystemTime)>,
) -> anyhow::Result<()> {
    let kind = entry.header().entry_type();
    if is_extension_header(kind) {
        return Ok(());
    }
    if let Some(whiteout) = Whiteout::of(path)? {
        return whiteout.apply(root);
    }
    let meta = Meta::of(entry.header())?;
    match kind {
        EntryType::Directory => {
            make_way(root, path, true)?;
            root.open_dir(path, true, meta.mode)?;
            set_owner_and_mode(root, path, &meta)?;
            // Set at the end: creating the entries inside would change the time again.
            dir_times.push((path.to_path_buf(), meta.mtime));
        }
        EntryType::Regular | EntryType::Continuous => {
            make_way(root, path, false)?;
            let mut file = root.create_file(path, meta.mode)?;
            std::io::copy(entry, &mut file).context("writing the file's content")?;
            drop(file);
            set_owner_and_mode(root, path, &meta)?;
            root.set_times_nofollow(path, meta.mtime, meta.mtime)?;
        }
        EntryType::Symlink => {
            make_way(root, path, false)?;
            root.symlink(link_name(entry)?, path)?;
            root.chown_nofollow(path, meta.uid, meta.gid)?;
            root.set_times_nofollow(path, meta.mtime, meta.mtime)?;
        }
        EntryType::Link => {
            // The link shares the target's inode, owner, mode and times: nothing else to set.
            let target = link_name(entry)?;
            make_way(root, path, false)?;
            root.hardlink(target, path)?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            make_way(root, path, false)?;
            root.mknod(path, node_type(kind) | meta.mode, device(entry.header())?)?;
            set_owner_and_mode(root, path, &meta)?;
            root.set_times_nofollow(path, meta.mtime, meta.mtime)?;
        }
        other => bail!("unsupported tar entry type {other:?}"),
    }
    Ok(())
}

/// Headers that describe other entries rather than being one; the tar crate applies the long
/// names and PAX ids it knows to the entries they describe, and the global PAX header is skipped.
fn is_extension_header(kind: EntryType) -> bool {
    kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
}

/// Owner first: `chown` clears setuid and setgid, which the mode then sets again.
fn set_owner_and_mode(root: &Root, path: &Path, meta: &Meta) -> anyhow::Result<()> {
    root.chown_nofollow(path, meta.uid, meta.gid)?;
    root.chmod(path, meta.mode)?;
    Ok(())
}

/// Removes what is at `path` so a new entry can be made there, except that a directory stays
/// when the new entry is a directory too (its contents merge), as docker and containerd do.
fn make_way(root: &Root, path: &Path, new_is_dir: bool) -> anyhow::Result<()> {
    match root.kind_nofollow(path)? {
        None => {}
        Some(FileKind::Dir) if new_is_dir => {}
        Some(_) => root.remove_all(path)?,
    }
    Ok(())
}

/// Sets the directories' times, innermost (latest) first; a directory that a later entry
/// replaced or whited out is skipped.
fn set_dir_times(root: &Root, dir_times: &[(PathBuf, SystemTime)]) -> anyhow::Result<()> {
    for (path, mtime) in dir_times.iter().rev() {
        if root.kind_nofollow(path)? == Some(FileKind::Dir) {
            root.set_times_nofollow(path, *mtime, *mtime)?;
        }
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> anyhow::Result<PathBuf> {
    let target = entry.link_name().context("the link's target")?.context("a link without a target")?;
    Ok(target.into_owned())
}

fn node_type(kind: EntryType) -> u32 {
    match kind {
        EntryType::Char => libc::S_IFCHR,
        EntryType::Block => libc::S_IFBLK,
        _ => libc::S_IFIFO,
    }
}

fn device(header: &tar::Header) -> anyhow::Result<u64> {
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    Ok(nix::sys::stat::makedev(major.into(), minor.into()))
}

/// An entry that is an overlay instruction rather than content.
#[derive(Debug, PartialEq)]
enum Whiteout {
    /// Mark this directory opaque.
    Opaque(PathBuf),
    /// Hide this name of a lower layer.
    Remove(PathBuf),
    /// aufs bookkeeping, skipped.
    Meta,
}

impl Whiteout {
    fn of(path: &Path) -> anyhow::Result<Option<Whiteout>> {
        let bytes = path.as_os_str().as_bytes();
        let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        let (parent, base) = match bytes[..end].iter().rposition(|&b| b == b'/') {
            Some(slash) => (&bytes[..slash], &bytes[slash + 1..end]),
            None => (&bytes[..0], &bytes[..end]),
        };
        let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(None);
        };
        if base == OPAQUE_MARKER {
            return Ok(Some(Whiteout::Opaque(bytes_path(parent))));
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(Some(Whiteout::Meta));
        }
        if matches!(hidden, b"" | b"." | b"..") {
            bail!("whiteout {} names no entry", path.display());
        }
        Ok(Some(Whiteout::Remove(bytes_path(&[parent, b"/", hidden].concat()))))
    }

    fn apply(self, root: &Root) -> anyhow::Result<()> {
        match self {
            Whiteout::Opaque(dir) => {
                root.open_dir(&dir, true, IMPLIED_DIR_MODE)?;
                root.set_dir_xattr(&dir, OPAQUE_XATTR, b"y")?;
            }
            Whiteout::Remove(target) => root.mknod_whiteout(&target)?,
            Whiteout::Meta => {}
        }
        Ok(())
    }
}

fn bytes_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    use tar::{EntryType, Header};

    use super::*;
    use crate::sys::fs::test_support::{Area, both_resolvers, get_xattr};

    const MTIME: u64 = 1_600_000_000;

    both_resolvers!(
        ordinary_layer_unpacks,
        whiteout_through_symlink_stays_inside,
        opaque_marker_through_symlink_stays_inside,
        nested_whiteout_through_symlink_stays_inside,
        file_through_symlink_stays_inside,
        climbing_and_absolute_names_stay_inside,
        hard_links_cannot_reach_outside,
        hard_links_cannot_reach_host_files,
    );

    /// A layer tar built entry by entry, with names and link targets written into the header
    /// as raw bytes, so names the `tar` crate would refuse (`..`, absolute) can be made.
    struct LayerTar {
        builder: tar::Builder<Vec<u8>>,
    }

    impl LayerTar {
        fn new() -> LayerTar {
            LayerTar { builder: tar::Builder::new(Vec::new()) }
        }

        fn header(name: &str, kind: EntryType, mode: u32, link: &str) -> Header {
            let mut header = Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(MTIME);
            header.set_size(0);
            raw_name(&mut header.as_old_mut().name, name);
            raw_name(&mut header.as_old_mut().linkname, link);
            header
        }

        fn append(&mut self, mut header: Header, data: &[u8]) -> &mut LayerTar {
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn dir(&mut self, name: &str, mode: u32) -> &mut LayerTar {
            self.append(LayerTar::header(name, EntryType::Directory, mode, ""), b"")
        }

        fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut LayerTar {
            self.append(LayerTar::header(name, EntryType::Regular, mode, ""), data)
        }

        fn owned_file(&mut self, name: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut LayerTar {
            let mut header = LayerTar::header(name, EntryType::Regular, mode, "");
            header.set_uid(uid);
            header.set_gid(gid);
            self.append(header, data)
        }

        fn symlink(&mut self, name: &str, target: &str) -> &mut LayerTar {
            self.append(LayerTar::header(name, EntryType::Symlink, 0o777, target), b"")
        }

        fn hardlink(&mut self, name: &str, target: &str) -> &mut LayerTar {
            self.append(LayerTar::header(name, EntryType::Link, 0o644, target), b"")
        }

        fn node(&mut self, name: &str, kind: EntryType, mode: u32, major: u32, minor: u32) -> &mut LayerTar {
            let mut header = LayerTar::header(name, kind, mode, "");
            header.set_device_major(major).unwrap();
            header.set_device_minor(minor).unwrap();
            self.append(header, b"")
        }

        /// A file whose name is too long for the header, stored with a GNU long-name entry.
        fn long_named_file(&mut self, name: &str, data: &[u8]) -> &mut LayerTar {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Regular);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(MTIME);
            header.set_size(data.len() as u64);
            self.builder.append_data(&mut header, name, data).unwrap();
            self
        }

        /// A file whose name comes from a PAX extended header (`path=`), as OCI tools write them.
        fn pax_named_file(&mut self, name: &str, data: &[u8]) -> &mut LayerTar {
            let record = pax_record("path", name);
            self.append(LayerTar::header("PaxHeaders/x", EntryType::XHeader, 0o644, ""), record.as_bytes());
            self.file("truncated-name", 0o644, data)
        }

        fn pax_global_header(&mut self) -> &mut LayerTar {
            let record = pax_record("comment", "made by a test");
            self.append(LayerTar::header("pax_global_header", EntryType::XGlobalHeader, 0o644, ""), record.as_bytes())
        }

        fn bytes(&mut self) -> Vec<u8> {
            self.builder.get_ref().iter().copied().chain(std::iter::repeat_n(0, 1024)).collect()
        }
    }

    /// `"<length> <key>=<value>\n"`, where the length counts the whole record, its own digits too.
    fn pax_record(key: &str, value: &str) -> String {
        let rest = format!(" {key}={value}\n");
        let mut length = rest.len();
        while format!("{length}{rest}").len() != length {
            length = format!("{length}{rest}").len();
        }
        format!("{length}{rest}")
    }

    fn raw_name(field: &mut [u8], name: &str) {
        assert!(name.len() < field.len(), "{name} does not fit a tar header field");
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
    }

    fn meta(area: &Area, rel: &str) -> std::fs::Metadata {
        std::fs::symlink_metadata(area.root.join(rel)).unwrap()
    }

    fn ordinary_layer_unpacks(fallback: bool) {
        let area = Area::new("layer");
        let long_name = format!("deep/{}", "x".repeat(150));
        let pax_name = format!("pax/{}", "y".repeat(200));
        let tar = LayerTar::new()
            .pax_global_header()
            .dir("./", 0o755)
            .dir("etc/", 0o755)
            .file("etc/hosts", 0o644, b"one")
            .file("etc/hosts", 0o640, b"two")
            .symlink("etc/alias", "hosts")
            .hardlink("etc/hosts2", "etc/hosts")
            .owned_file("usr/bin/tool", 0o4755, 1000, 2000, b"#!/bin/sh\n")
            .dir("tmp/", 0o1777)
            .dir("shared/", 0o2775)
            .node("run/fifo", EntryType::Fifo, 0o600, 0, 0)
            .node("dev/null2", EntryType::Char, 0o666, 1, 3)
            .dir("etc/", 0o700)
            .file("gone", 0o644, b"gone")
            .file(".wh.gone", 0o644, b"")
            .dir("was_dir/", 0o755)
            .file("was_dir/inner", 0o644, b"inner")
            .file("was_dir", 0o600, b"now a file")
            .file("opq/old", 0o644, b"old")
            .file("opq/.wh..wh..opq", 0o644, b"")
            .file(".wh..wh.plnk", 0o644, b"")
            .long_named_file(&long_name, b"long")
            .pax_named_file(&pax_name, b"pax")
            .bytes();
        let root = area.open_root(fallback);
        if let Err(error) = unpack_into(&tar[..], &root) {
            panic!("{error:#}");
        }

        let mode = |rel: &str| meta(&area, rel).permissions().mode() & 0o7777;
        assert_eq!(std::fs::read(area.root.join("etc/hosts")).unwrap(), b"two");
        assert_eq!(mode("etc/hosts"), 0o640);
        assert_eq!(std::fs::read_link(area.root.join("etc/alias")).unwrap(), Path::new("hosts"));
        assert_eq!(meta(&area, "etc/hosts2").ino(), meta(&area, "etc/hosts").ino());
        assert_eq!(mode("usr/bin/tool"), 0o4755);
        assert_eq!((meta(&area, "usr/bin/tool").uid(), meta(&area, "usr/bin/tool").gid()), (1000, 2000));
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("shared"), 0o2775);
        assert!(meta(&area, "run/fifo").file_type().is_fifo());
        assert_eq!(mode("run/fifo"), 0o600);
        assert!(meta(&area, "dev/null2").file_type().is_char_device());
        assert_eq!(meta(&area, "dev/null2").rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(mode("etc"), 0o700, "a directory over a directory takes the new mode");
        assert!(area.root.join("etc/hosts").exists(), "and keeps its contents");
        assert!(meta(&area, "gone").file_type().is_char_device());
        assert_eq!(meta(&area, "gone").rdev(), 0);
        assert_eq!(std::fs::read(area.root.join("was_dir")).unwrap(), b"now a file");
        assert_eq!(get_xattr(&area.root.join("opq"), "trusted.overlay.opaque").unwrap(), b"y");
        assert!(area.root.join("opq/old").exists());
        assert!(!area.root.join(".wh..wh.plnk").exists());
        assert_eq!(std::fs::read(area.root.join(&long_name)).unwrap(), b"long");
        assert_eq!(std::fs::read(area.root.join(&pax_name)).unwrap(), b"pax");
        assert!(!area.root.join("truncated-name").exists());
        assert!(!area.root.join("pax_global_header").exists());
        assert!(!area.root.join("PaxHeaders").exists());
        assert_eq!(mode("."), 0o755);
        for rel in ["etc", "etc/hosts", "etc/alias", "usr/bin/tool", "tmp", "run/fifo"] {
            assert_eq!(meta(&area, rel).mtime(), MTIME as i64, "mtime of {rel}");
        }
    }

    /// Unpacks a layer that starts with `lnk -> <sentinel>` and `rel_lnk -> ../../sentinel`
    /// and continues with `hostile` entries, twice: once where the names those links resolve
    /// to inside the root are missing (unpacking may then fail), once where the layer made them
    /// first (unpacking must then succeed, inside the root). The sentinel never changes.
    fn hostile_layer(fallback: bool, hostile: impl Fn(&mut LayerTar, &Area), check_inside: impl Fn(&Area, &Path)) {
        for counterpart_exists in [false, true] {
            let area = Area::new("hostile-layer");
            let sentinel = area.sentinel.to_str().unwrap();
            let counterpart = sentinel.trim_start_matches('/');
            let mut tar = LayerTar::new();
            if counterpart_exists {
                tar.dir(&format!("{counterpart}/sub/"), 0o755)
                    .file(&format!("{counterpart}/victim"), 0o644, b"in root")
                    .dir("sentinel/", 0o755)
                    .file("sentinel/victim", 0o644, b"in root");
            }
            tar.symlink("lnk", sentinel).symlink("rel_lnk", "../../sentinel");
            hostile(&mut tar, &area);
            let tar = tar.bytes();
            let root = area.open_root(fallback);
            let before = area.snapshot();
            let result = unpack_into(&tar[..], &root);
            area.assert_outside_untouched(&before, "hostile layer");
            if counterpart_exists {
                if let Err(error) = result {
                    panic!("{error:#}");
                }
                check_inside(&area, &area.sentinel_in_root());
            }
        }
    }

    fn is_whiteout(path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
    }

    fn whiteout_through_symlink_stays_inside(fallback: bool) {
        hostile_layer(
            fallback,
            |tar, _| {
                tar.file("lnk/.wh.victim", 0o644, b"");
            },
            |_, inside| assert!(is_whiteout(&inside.join("victim"))),
        );
    }

    fn opaque_marker_through_symlink_stays_inside(fallback: bool) {
        hostile_layer(
            fallback,
            |tar, _| {
                tar.file("lnk/.wh..wh..opq", 0o644, b"").file("rel_lnk/.wh..wh..opq", 0o644, b"");
            },
            |area, inside| {
                assert_eq!(get_xattr(inside, "trusted.overlay.opaque").unwrap(), b"y");
                assert_eq!(get_xattr(&area.root.join("sentinel"), "trusted.overlay.opaque").unwrap(), b"y");
            },
        );
    }

    fn nested_whiteout_through_symlink_stays_inside(fallback: bool) {
        hostile_layer(
            fallback,
            |tar, _| {
                tar.file("lnk/sub/.wh.x", 0o644, b"").file("lnk/newdir/.wh.y", 0o644, b"");
            },
            |_, inside| {
                assert!(is_whiteout(&inside.join("sub/x")));
                assert!(is_whiteout(&inside.join("newdir/y")));
            },
        );
    }

    fn file_through_symlink_stays_inside(fallback: bool) {
        hostile_layer(
            fallback,
            |tar, _| {
                tar.file("lnk/newfile", 0o644, b"pwned").file("lnk/victim", 0o644, b"pwned").dir("lnk/newdir/", 0o777);
            },
            |_, inside| {
                assert_eq!(std::fs::read(inside.join("newfile")).unwrap(), b"pwned");
                assert_eq!(std::fs::read(inside.join("victim")).unwrap(), b"pwned");
                assert!(inside.join("newdir").is_dir());
            },
        );
    }

    /// `../../escape` would be `base/escape` unresolved; the absolute name points into the test's
    /// own directory (rather than at `/abs/escape` on the host) so that a regression could not
    /// write on the host.
    fn climbing_and_absolute_names_stay_inside(fallback: bool) {
        hostile_layer(
            fallback,
            |tar, area| {
                let absolute = format!("{}/abs/escape", area.temp.path.display());
                tar.file("../../escape", 0o644, b"climbed")
                    .file(&absolute, 0o644, b"absolute")
                    .file("rel_lnk/escape", 0o644, b"relative link")
                    .symlink("../../sentinel/link_out", "/etc/shadow");
            },
            |area, _| {
                assert_eq!(std::fs::read(area.root.join("escape")).unwrap(), b"climbed");
                let absolute = area.root.join(area.temp.path.strip_prefix("/").unwrap()).join("abs/escape");
                assert_eq!(std::fs::read(absolute).unwrap(), b"absolute");
                assert_eq!(std::fs::read(area.root.join("sentinel/escape")).unwrap(), b"relative link");
                let link = area.root.join("sentinel/link_out");
                assert_eq!(std::fs::read_link(link).unwrap(), Path::new("/etc/shadow"));
            },
        );
    }

    fn hard_links_cannot_reach_outside(fallback: bool) {
        hostile_layer(
            fallback,
            |tar, _| {
                tar.hardlink("victim_link", "lnk/victim").hardlink("rel_victim_link", "rel_lnk/victim");
            },
            |area, inside| {
                let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
                assert_eq!(ino(&area.root.join("victim_link")), ino(&inside.join("victim")));
                assert_eq!(ino(&area.root.join("rel_victim_link")), ino(&area.root.join("sentinel/victim")));
            },
        );
    }

    /// Read-only use of the host's `/etc/passwd`: a link to it must never be made, whether the
    /// layer has an `etc/passwd` of its own or not.
    fn hard_links_cannot_reach_host_files(fallback: bool) {
        let host_before = std::fs::metadata("/etc/passwd").unwrap();
        let links = |tar: &mut LayerTar| {
            tar.hardlink("passwd_link", "../../etc/passwd").hardlink("abs_link", "/etc/passwd");
        };

        let area = Area::new("hardlink-host");
        let mut tar = LayerTar::new();
        links(&mut tar);
        assert!(unpack_into(&tar.bytes()[..], &area.open_root(fallback)).is_err(), "no etc/passwd in the root");
        assert!(!area.root.join("passwd_link").exists());

        let area = Area::new("hardlink-inside");
        let mut tar = LayerTar::new();
        tar.file("etc/passwd", 0o644, b"root's own");
        links(&mut tar);
        unpack_into(&tar.bytes()[..], &area.open_root(fallback)).unwrap();
        let ino = |rel: &str| meta(&area, rel).ino();
        assert_eq!(ino("passwd_link"), ino("etc/passwd"));
        assert_eq!(ino("abs_link"), ino("etc/passwd"));
        assert_ne!(ino("passwd_link"), host_before.ino());

        let host_after = std::fs::metadata("/etc/passwd").unwrap();
        let identity = |m: &std::fs::Metadata| (m.ino(), m.nlink(), m.ctime(), m.ctime_nsec());
        assert_eq!(identity(&host_after), identity(&host_before));
    }

    #[test]
    fn unpack_creates_the_layer_directory() {
        let area = Area::new("unpack");
        let dir = area.temp.path.join("new/layer");
        let tar = LayerTar::new().file("a/b", 0o600, b"content").bytes();
        unpack(&tar[..], &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a/b")).unwrap(), b"content");
    }

    #[test]
    fn absurd_header_values_are_errors_not_panics() {
        let area = Area::new("absurd");
        let mut header = LayerTar::header("file", EntryType::Regular, 0o644, "");
        header.set_mtime(u64::MAX);
        let tar = LayerTar::new().append(header, b"x").bytes();
        let error = unpack_into(&tar[..], &area.open_root(false)).unwrap_err();
        assert!(format!("{error:#}").contains("mtime out of range"), "{error:#}");
        let mut header = LayerTar::header("file", EntryType::Regular, 0o644, "");
        header.set_uid(u64::from(u32::MAX) + 1);
        let tar = LayerTar::new().append(header, b"x").bytes();
        assert!(unpack_into(&tar[..], &area.open_root(false)).is_err());
    }

    #[test]
    fn whiteout_names_table() {
        let remove = |p: &str| Some(Whiteout::Remove(PathBuf::from(p)));
        let opaque = |p: &str| Some(Whiteout::Opaque(PathBuf::from(p)));
        let cases = [
            ("a/.wh.b", remove("a/b")),
            (".wh.b", remove("/b")),
            ("a/.wh..wh..opq", opaque("a")),
            (".wh..wh..opq", opaque("")),
            ("a/.wh..wh.plnk", Some(Whiteout::Meta)),
            ("a/b", None),
            ("a/b.wh.c", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Whiteout::of(Path::new(path)).unwrap(), expected, "{path}");
        }
        for bad in ["a/.wh.", "a/.wh..", ".wh..."] {
            assert!(Whiteout::of(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
