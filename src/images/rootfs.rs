//! A container's root file system: a kernel overlayfs whose lower layers are the image's
//! shared unpacked layers (top first) and whose upper and work directories belong to the
//! container alone. Nothing of the image is copied, which matters on SD cards.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Image, ImageStore};

/// A mounted root file system; unmount it with [`Rootfs::unmount`].
#[derive(Debug)]
pub struct Rootfs {
    /// Where the merged file system is mounted.
    pub merged: PathBuf,
    dir: PathBuf,
}

fn c(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).context("a path with a NUL byte")
}

impl Rootfs {
    /// Mounts `image` for a container whose own directory is `dir` (created; it receives
    /// `upper/`, `work/` and `merged/`).
    pub fn mount(store: &ImageStore, image: &Image, dir: &Path) -> anyhow::Result<Rootfs> {
        if image.layers.is_empty() {
            bail!("image {} has no layers", image.id);
        }
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|l| {
                let d = store.layer_dir(l);
                if !d.is_dir() {
                    bail!("layer {l} of image {} is missing from the store", image.id);
                }
                let s = d.display().to_string();
                if s.contains(',') || s.contains(':') {
                    bail!("layer path {s} cannot be used in overlayfs options");
                }
                Ok(s)
            })
            .collect::<anyhow::Result<_>>()?;
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
        let (src, target, fstype, data) = (c"overlay", c(&merged)?, c"overlay", CString::new(options.clone())?);
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(err).with_context(|| format!("mounting overlayfs at {} ({options})", merged.display()));
        }
        Ok(Rootfs { merged, dir: dir.to_path_buf() })
    }

    /// The root file system mounted earlier for the container directory `dir`.
    pub fn at(dir: &Path) -> Rootfs {
        Rootfs { merged: dir.join("merged"), dir: dir.to_path_buf() }
    }

    /// Unmounts and removes the container's directory (its writable layer with it).
    pub fn unmount(self) -> anyhow::Result<()> {
        let target = c(&self.merged)?;
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err).with_context(|| format!("unmounting {}", self.merged.display()));
            }
        }
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    /// Mounts a two-layer image for real (root only: the CI runs as root) and checks
    /// overlayfs semantics: the top layer's whiteout hides a base file, its opaque directory
    /// hides the base's contents, writes land in the container's own upper directory.
    #[test]
    fn overlay_stacks_shared_layers() {
        // The suite runs as root (`./scripts/test`); a pass without running would say nothing.
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts, so it must run as root");
        let data = std::env::temp_dir().join(format!("bramble-rootfs-{}", std::process::id()));
        let store = ImageStore::open(&data).unwrap();
        let (base, top) = ("sha256:aaaa", "sha256:bbbb");
        let (b, t) = (store.layer_dir(base), store.layer_dir(top));
        std::fs::create_dir_all(b.join("etc")).unwrap();
        std::fs::create_dir_all(b.join("cache")).unwrap();
        std::fs::write(b.join("etc/motd"), "hello").unwrap();
        std::fs::write(b.join("etc/keep"), "kept").unwrap();
        std::fs::write(b.join("cache/old"), "old").unwrap();
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::create_dir_all(t.join("cache")).unwrap();
        let wh = CString::new(t.join("etc/motd").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) }, 0);
        let opq = CString::new(t.join("cache").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid strings and buffer.
        let rc =
            unsafe { libc::setxattr(opq.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0);
        let image = Image { id: "sha256:cfg".into(), layers: vec![base.into(), top.into()], size: 0 };

        let container = data.join("containers/c1");
        let rootfs = Rootfs::mount(&store, &image, &container).unwrap();
        let m = rootfs.merged.clone();
        let checks = std::panic::catch_unwind(|| {
            assert!(!m.join("etc/motd").exists(), "whiteout hides the base file");
            assert_eq!(std::fs::read_to_string(m.join("etc/keep")).unwrap(), "kept");
            assert_eq!(std::fs::read_dir(m.join("cache")).unwrap().count(), 0, "opaque dir hides the base");
            std::fs::write(m.join("new.txt"), "mine").unwrap();
            std::fs::remove_file(m.join("etc/keep")).unwrap();
        });
        let upper = container.join("upper");
        let wrote = upper.join("new.txt").exists();
        let whited = std::fs::symlink_metadata(upper.join("etc/keep")).map(|md| md.file_type().is_char_device());
        rootfs.unmount().unwrap();
        let base_intact = b.join("etc/keep").exists();
        std::fs::remove_dir_all(&data).unwrap();
        checks.unwrap();
        assert!(wrote, "writes go to the container's upper directory");
        assert!(whited.unwrap(), "a deletion becomes a whiteout in the upper directory");
        assert!(base_intact, "the shared layer is never modified");
        assert!(!container.exists());
    }
}
