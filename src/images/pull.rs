//! Pulling from OCI registries with `oci-client` (rustls with our ring provider; its
//! `rustls-tls` feature would bring aws-lc). Multi-platform indexes resolve to this node's OS,
//! architecture and, for 32-bit ARM, variant (v6/v7), which oci-client's own resolver
//! ignores.

use std::path::PathBuf;

use anyhow::Context;
use oci_client::manifest::ImageIndexEntry;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, client::ClientConfig, client::ClientProtocol};

use super::ImageStore;
use super::reference::Reference;

/// This machine's ARM variant (`v6`, `v7`, `v8`), from `/proc/cpuinfo`.
fn arm_variant() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("CPU architecture")?.split(':').nth(1).map(|v| v.trim().to_string()))?;
    Some(format!("v{v}"))
}

fn json_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Picks the index entry for linux on this architecture (and ARM variant when it has one).
fn resolve_platform(entries: &[ImageIndexEntry]) -> Option<String> {
    let arch = crate::sys::arch();
    let variant = if arch == "arm" { arm_variant() } else { None };
    let candidates: Vec<&ImageIndexEntry> = entries
        .iter()
        .filter(|e| {
            e.platform.as_ref().is_some_and(|p| json_str(&p.os) == "linux" && json_str(&p.architecture) == arch)
        })
        .collect();
    let exact =
        candidates.iter().find(|e| variant.is_none() || e.platform.as_ref().and_then(|p| p.variant.clone()) == variant);
    exact.or(candidates.first()).map(|e| e.digest.clone())
}

/// Pulls `reference` into the store; registries in `insecure` are spoken to over plain HTTP.
pub async fn pull(
    store: &ImageStore,
    reference: &str,
    insecure: &[String],
    auth: RegistryAuth,
) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let normal = Reference::parse(reference)?.to_string();
    let oci_ref: oci_client::Reference = normal.parse().with_context(|| format!("{normal} is not a reference"))?;
    let config = ClientConfig {
        protocol: if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure.to_vec())
        },
        platform_resolver: Some(Box::new(resolve_platform)),
        ..Default::default()
    };
    let client = Client::new(config);
    let (manifest, _digest, config_json) = client
        .pull_manifest_and_config(&oci_ref, &auth)
        .await
        .with_context(|| format!("fetching the manifest of {normal}"))?;
    let scratch = store.scratch()?;
    let result = async {
        let config_path = scratch.join("config.json");
        tokio::fs::write(&config_path, config_json.as_bytes()).await?;
        let mut layers: Vec<PathBuf> = Vec::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let path = scratch.join(format!("layer-{i}"));
            let file = tokio::fs::File::create(&path).await?;
            client
                .pull_blob(&oci_ref, layer, file)
                .await
                .with_context(|| format!("downloading layer {} of {normal}", layer.digest))?;
            layers.push(path);
        }
        anyhow::Ok((config_path, layers))
    }
    .await;
    let stored = match result {
        Ok((config_path, layers)) => {
            let store_root = store.root.clone();
            let key = normal.clone();
            tokio::task::spawn_blocking(move || ImageStore { root: store_root }.add(&key, &config_path, &layers))
                .await
                .context("storing the image")?
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    std::fs::remove_dir_all(&scratch).ok();
    stored.map(|()| normal)
}
