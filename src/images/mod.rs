//! The node's image store: images imported from tarballs (the airgap path, k3s-style), each
//! layer unpacked once under its diff ID so containers can stack the shared directories with
//! overlayfs instead of copying a root file system per container.
//!
//! Layout under `<data-dir>/agent/content/`: `layers/<hex diff ID>/` (unpacked, overlayfs
//! whiteouts), `configs/<hex image ID>.json` (the image config: entrypoint, cmd, env...),
//! `refs.json` (reference -> image), and `lock`, held while the store changes so that
//! `bramble image` and a running agent do not collide.
//!
//! Archives: `docker save` (docker-archive) and OCI image layout tarballs (`skopeo copy ...
//! oci-archive:`), plain or gzipped; multi-platform OCI indexes resolve to this node's
//! architecture.

pub mod layer;
pub mod pull;
pub mod reference;
pub mod rootfs;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sys::fs::Root;
use layer::{Hashing, hex};
use reference::Reference;

/// One stored image.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Image {
    /// `sha256:<hex>` of the config.
    pub id: String,
    /// Diff IDs of the layers, bottom first.
    pub layers: Vec<String>,
    /// Bytes of the layers as archived.
    pub size: u64,
}

/// The store of one node.
pub struct ImageStore {
    pub(crate) root: PathBuf,
}

/// Holds the store's lock until dropped.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the descriptor is open for the life of self.0.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn gz_or_plain(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    let mut f = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut magic = [0u8; 2];
    let n = f.get_mut().read(&mut magic)?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) })
}

/// A regular file of an unpacked archive, opened under the archive's directory (a name or a
/// symlink in the archive can never make the store read a host file), reached through
/// `/proc/self/fd/N` while it is open.
struct StagedFile {
    _fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl StagedFile {
    fn open(root: &Root, rel: &str) -> anyhow::Result<StagedFile> {
        let file = root.open_file(rel)?;
        if !file.metadata().with_context(|| format!("reading {rel} of the archive"))?.is_file() {
            bail!("{rel} in the archive is not a regular file");
        }
        let fd = std::os::fd::OwnedFd::from(file);
        Ok(StagedFile { path: crate::sys::fs::proc_fd_path(&fd), _fd: fd })
    }
}

/// `blobs/<algorithm>/<hex>` of an OCI digest, refusing anything but `sha256:` and
/// `sha512:` with hex of the right length.
fn blob_path(digest: &str) -> anyhow::Result<String> {
    let ok = match digest.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64,
        Some(("sha512", hex)) => hex.len() == 128,
        _ => false,
    } && digest
        .split_once(':')
        .is_some_and(|(_, h)| h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if !ok {
        bail!("{digest:?} is not a digest (sha256:<64 hex digits>)");
    }
    Ok(format!("blobs/{}", digest.replace(':', "/")))
}

/// For the fuzz target: an archive's `index.json` or manifest as the importer reads it
/// (digests to blob paths, image names to references).
#[doc(hidden)]
pub fn fuzz_manifest(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let digests = v["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(v["layers"].as_array().into_iter().flatten())
        .chain(std::iter::once(&v["config"]))
        .filter_map(|d| d["digest"].as_str());
    for d in digests {
        // Errors are the expected answer to most inputs.
        let _ = blob_path(d);
    }
    for m in v["manifests"].as_array().into_iter().flatten() {
        for key in ["io.containerd.image.name", "org.opencontainers.image.ref.name"] {
            if let Some(name) = m["annotations"][key].as_str() {
                // Errors are the expected answer to most inputs.
                let _ = Reference::parse(name);
            }
        }
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Hashing::new(f).finish()?)
}

impl ImageStore {
    /// Opens (creating) the store of the node whose data directory is `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<ImageStore> {
        let root = data_dir.join("agent").join("content");
        for d in ["layers", "configs", "tmp"] {
            std::fs::create_dir_all(root.join(d)).with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        Ok(ImageStore { root })
    }

    fn lock(&self) -> anyhow::Result<Locked> {
        let f = File::create(self.root.join("lock")).context("opening the image store lock")?;
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the image store");
        }
        Ok(Locked(f))
    }

    fn refs(&self) -> anyhow::Result<BTreeMap<String, Image>> {
        match std::fs::read(self.root.join("refs.json")) {
            Ok(b) => serde_json::from_slice(&b).context("reading refs.json"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).context("reading refs.json"),
        }
    }

    fn save_refs(&self, refs: &BTreeMap<String, Image>) -> anyhow::Result<()> {
        let tmp = self.root.join("refs.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(refs)?)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.root.join("refs.json")).context("saving refs.json")
    }

    /// The image's config (`{"config": {"Entrypoint", "Cmd", "Env", "WorkingDir", "User"}}`).
    pub fn config(&self, image: &Image) -> anyhow::Result<Value> {
        let path = self.root.join("configs").join(format!("{}.json", image.id.trim_start_matches("sha256:")));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    /// Where the unpacked layer with `diff_id` lives.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(diff_id.trim_start_matches("sha256:"))
    }

    /// The image a reference names.
    pub fn get(&self, reference: &str) -> anyhow::Result<Image> {
        let key = Reference::parse(reference)?.to_string();
        self.refs()?.remove(&key).with_context(|| format!("no such image: {key}"))
    }

    /// Every stored image by reference.
    pub fn list(&self) -> anyhow::Result<BTreeMap<String, Image>> {
        self.refs()
    }

    /// Unpacks one layer file unless that diff ID is already there; returns the diff ID.
    fn add_layer(&self, path: &Path, scratch: &Path) -> anyhow::Result<String> {
        let tmp = scratch.join(format!("layer-{}", hex(&rand_bytes())));
        let mut hashing = Hashing::new(gz_or_plain(path)?);
        layer::unpack(&mut hashing, &tmp).with_context(|| format!("unpacking layer {}", path.display()))?;
        let diff_id = hashing.finish().context("reading the rest of the layer")?;
        let dest = self.layer_dir(&diff_id);
        if dest.exists() {
            std::fs::remove_dir_all(&tmp).ok();
        } else {
            std::fs::rename(&tmp, &dest).with_context(|| format!("storing layer {diff_id}"))?;
        }
        Ok(diff_id)
    }

    /// Stores an image's config and layers; returns the image.
    fn add_image(&self, config: &Path, layers: &[PathBuf], scratch: &Path) -> anyhow::Result<Image> {
        let id = sha256_file(config)?;
        std::fs::copy(config, self.root.join("configs").join(format!("{}.json", id.trim_start_matches("sha256:"))))
            .context("storing the image config")?;
        let mut diff_ids = Vec::new();
        let mut size = 0;
        for l in layers {
            size += std::fs::metadata(l).map(|m| m.len()).unwrap_or(0);
            diff_ids.push(self.add_layer(l, scratch)?);
        }
        Ok(Image { id, layers: diff_ids, size })
    }

    /// Stores an image fetched elsewhere (a registry pull) under `reference`.
    pub fn add(&self, reference: &str, config: &Path, layers: &[PathBuf]) -> anyhow::Result<Image> {
        let key = Reference::parse(reference)?.to_string();
        let _lock = self.lock()?;
        let scratch = self.root.join("tmp").join(hex(&rand_bytes()));
        std::fs::create_dir_all(&scratch)?;
        let added = self.add_image(config, layers, &scratch);
        std::fs::remove_dir_all(&scratch).ok();
        let image = added?;
        let mut refs = self.refs()?;
        refs.insert(key, image.clone());
        self.save_refs(&refs)?;
        Ok(image)
    }

    /// A scratch directory for downloads, removed by the caller.
    pub fn scratch(&self) -> anyhow::Result<PathBuf> {
        let d = self.root.join("tmp").join(hex(&rand_bytes()));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Imports every image in a `docker save` or OCI archive; returns their references.
    pub fn import(&self, archive: &Path) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock()?;
        let scratch = self.root.join("tmp").join(hex(&rand_bytes()));
        let result = self.import_unlocked(archive, &scratch);
        std::fs::remove_dir_all(&scratch).ok();
        result
    }

    fn import_unlocked(&self, archive: &Path, scratch: &Path) -> anyhow::Result<Vec<String>> {
        let staged = scratch.join("archive");
        std::fs::create_dir_all(&staged)?;
        tar::Archive::new(gz_or_plain(archive)?)
            .unpack(&staged)
            .with_context(|| format!("{} is not a tar archive", archive.display()))?;
        let stem = archive.file_name().and_then(|n| n.to_str()).unwrap_or("image").split('.').next().unwrap_or("image");
        let found: Vec<(String, Image)> = if staged.join("manifest.json").exists() {
            self.import_docker(&staged, scratch)?
        } else if staged.join("index.json").exists() {
            self.import_oci(&staged, scratch, stem)?
        } else {
            bail!("{} is neither a docker-archive (manifest.json) nor an OCI archive (index.json)", archive.display());
        };
        let mut refs = self.refs()?;
        let names: Vec<String> = found.iter().map(|(r, _)| r.clone()).collect();
        refs.extend(found);
        self.save_refs(&refs)?;
        Ok(names)
    }

    fn import_docker(&self, staged: &Path, scratch: &Path) -> anyhow::Result<Vec<(String, Image)>> {
        let root = Root::open(staged)?;
        let manifest: Value =
            serde_json::from_slice(&root.read("manifest.json")?).context("manifest.json is not JSON")?;
        let mut out = Vec::new();
        for m in manifest.as_array().into_iter().flatten() {
            let config = StagedFile::open(&root, m["Config"].as_str().context("manifest.json entry without Config")?)?;
            let layers: Vec<StagedFile> = m["Layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
                .map(|l| StagedFile::open(&root, l))
                .collect::<anyhow::Result<_>>()?;
            let layer_paths: Vec<PathBuf> = layers.iter().map(|l| l.path.clone()).collect();
            let image = self.add_image(&config.path, &layer_paths, scratch)?;
            for tag in m["RepoTags"].as_array().into_iter().flatten().filter_map(|t| t.as_str()) {
                out.push((Reference::parse(tag)?.to_string(), image.clone()));
            }
        }
        Ok(out)
    }

    fn import_oci(&self, staged: &Path, scratch: &Path, stem: &str) -> anyhow::Result<Vec<(String, Image)>> {
        let root = Root::open(staged)?;
        let blob = |digest: &str| -> anyhow::Result<StagedFile> { StagedFile::open(&root, &blob_path(digest)?) };
        let read_json = |digest: &str| -> anyhow::Result<Value> {
            serde_json::from_slice(&root.read(blob_path(digest)?).with_context(|| format!("blob {digest} is missing"))?)
                .with_context(|| format!("blob {digest} is not JSON"))
        };
        let index: Value = serde_json::from_slice(&root.read("index.json")?).context("index.json is not JSON")?;
        let mut out = Vec::new();
        for desc in index["manifests"].as_array().into_iter().flatten() {
            let mut manifest = read_json(desc["digest"].as_str().context("index entry without digest")?)?;
            if manifest["manifests"].is_array() {
                // A multi-platform index: this node's architecture.
                let arch = crate::sys::arch();
                let chosen = manifest["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["platform"]["architecture"] == arch && m["platform"]["os"] == "linux")
                    .with_context(|| format!("the image has no linux/{arch} variant"))?;
                manifest = read_json(chosen["digest"].as_str().unwrap_or(""))?;
            }
            let config = blob(manifest["config"]["digest"].as_str().context("manifest without config")?)?;
            let layers: Vec<StagedFile> = manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str())
                .map(blob)
                .collect::<anyhow::Result<_>>()?;
            let layer_paths: Vec<PathBuf> = layers.iter().map(|l| l.path.clone()).collect();
            let image = self.add_image(&config.path, &layer_paths, scratch)?;
            let ann = &desc["annotations"];
            let name =
                match (ann["io.containerd.image.name"].as_str(), ann["org.opencontainers.image.ref.name"].as_str()) {
                    (Some(full), _) => full.to_string(),
                    (None, Some(r)) if r.contains('/') || r.contains(':') => r.to_string(),
                    (None, Some(tag)) => format!("{stem}:{tag}"),
                    (None, None) => format!("{stem}:latest"),
                };
            out.push((Reference::parse(&name)?.to_string(), image));
        }
        Ok(out)
    }

    /// Removes references, then every layer and config no remaining image uses.
    pub fn remove(&self, references: &[String]) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        let mut refs = self.refs()?;
        for r in references {
            let key = Reference::parse(r)?.to_string();
            if refs.remove(&key).is_none() {
                bail!("no such image: {key}");
            }
        }
        self.save_refs(&refs)?;
        let used_layers: BTreeSet<String> =
            refs.values().flat_map(|i| i.layers.iter().map(|l| l.trim_start_matches("sha256:").to_string())).collect();
        let used_configs: BTreeSet<String> =
            refs.values().map(|i| format!("{}.json", i.id.trim_start_matches("sha256:"))).collect();
        for (dir, used) in [("layers", &used_layers), ("configs", &used_configs)] {
            for e in std::fs::read_dir(self.root.join(dir))?.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !used.contains(&name) {
                    let p = e.path();
                    if p.is_dir() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
                }
            }
        }
        Ok(())
    }

    /// Imports the archives dropped in `<data-dir>/agent/images/` that have not been
    /// imported in their current form yet (the airgap path, run when the agent starts).
    pub fn import_dropped(&self, data_dir: &Path) -> anyhow::Result<()> {
        let dir = data_dir.join("agent").join("images");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        let done_path = self.root.join("imported.json");
        let mut done: BTreeMap<String, String> =
            std::fs::read(&done_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        let before = done.clone();
        for f in files {
            let meta = std::fs::metadata(&f)?;
            let stamp = format!("{}:{:?}", meta.len(), meta.modified().ok());
            let key = f.display().to_string();
            if done.get(&key) == Some(&stamp) {
                continue;
            }
            match self.import(&f) {
                Ok(refs) => tracing::info!(file = %key, images = ?refs, "imported"),
                Err(e) => tracing::warn!(file = %key, error = %format!("{e:#}"), "could not import"),
            }
            done.insert(key, stamp);
        }
        if done == before {
            return Ok(());
        }
        std::fs::write(&done_path, serde_json::to_vec(&done)?).context("recording imported archives")
    }
}

fn rand_bytes() -> [u8; 8] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}
