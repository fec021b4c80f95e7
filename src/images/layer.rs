//! Unpacking one image layer into the form overlayfs stacks: OCI whiteouts (`.wh.name`)
//! become 0/0 character devices and opaque markers (`.wh..wh..opq`) the
//! `trusted.overlay.opaque=y` attribute of their directory. Entries that would land outside
//! the layer directory are refused.

use std::ffi::CString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};

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

/// `dir/relative` if `relative` has only normal components.
fn inside(dir: &Path, relative: &Path) -> anyhow::Result<PathBuf> {
    if relative.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        bail!("layer entry {} escapes the layer", relative.display());
    }
    Ok(dir.join(relative))
}

fn c_path(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).context("a path with a NUL byte")
}

/// Unpacks the uncompressed layer tar read from `tar` into `dir`.
pub fn unpack(tar: impl Read, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().context("reading the layer")? {
        let mut entry = entry.context("reading a layer entry")?;
        let path = entry.path().context("a layer entry's path")?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let target = inside(dir, parent)?;
            std::fs::create_dir_all(&target)?;
            let (p, key) = (c_path(&target)?, c"trusted.overlay.opaque");
            // SAFETY: valid C strings and a 1-byte value buffer.
            if unsafe { libc::setxattr(p.as_ptr(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
                return Err(std::io::Error::last_os_error()).context(format!("marking {} opaque", target.display()));
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = inside(dir, &parent.join(hidden))?;
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p)?;
            }
            let _ = std::fs::remove_file(&target).or_else(|_| std::fs::remove_dir_all(&target));
            let p = c_path(&target)?;
            // SAFETY: a valid path; 0/0 character device is overlayfs' whiteout.
            if unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) } != 0 {
                return Err(std::io::Error::last_os_error()).context(format!("whiteout {}", target.display()));
            }
        } else if !entry.unpack_in(dir).with_context(|| format!("unpacking {}", path.display()))? {
            bail!("layer entry {} escapes the layer", path.display());
        }
    }
    Ok(())
}
