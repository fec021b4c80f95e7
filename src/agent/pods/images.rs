//! A container's image on this node, as `imagePullPolicy` says: `Always` pulls every time,
//! `IfNotPresent` only when missing, `Never` never (and says so when it is missing). Pulls
//! authenticate with the pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`), and
//! registries the node's registries file reaches over plain HTTP are pulled from that way.

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

use super::Ctx;
use crate::images::reference::Reference;
use crate::images::{Image, ImageStore};

/// The credentials a dockerconfigjson grants for `registry`.
pub fn auth_for(dockerconfig: &Value, registry: &str) -> Option<RegistryAuth> {
    let auths = dockerconfig["auths"].as_object()?;
    let matches = |key: &str| {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        host == registry
            || (registry == "docker.io" && matches!(host, "index.docker.io" | "registry-1.docker.io" | "docker.io"))
    };
    let entry = auths.iter().find(|(k, _)| matches(k)).map(|(_, v)| v)?;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(RegistryAuth::Basic(u.into(), p.into()));
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(entry["auth"].as_str()?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryAuth::Basic(u.into(), p.into()))
}

async fn pull_auth(ctx: &Ctx, pod: &Value, registry: &str) -> RegistryAuth {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    for s in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        let Ok(secret) = ctx.client.get(&format!("/api/v1/namespaces/{ns}/secrets/{name}")).await else { continue };
        let Some(raw) = secret["data"][".dockerconfigjson"].as_str() else { continue };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(raw) else { continue };
        let Ok(config) = serde_json::from_slice::<Value>(&bytes) else { continue };
        if let Some(auth) = auth_for(&config, registry) {
            return auth;
        }
    }
    RegistryAuth::Anonymous
}

/// Makes sure the image of `container` is on the node; returns its normalised reference,
/// the stored image and its config. Errors are (`reason`, `message`) for the status.
pub async fn ensure(
    ctx: &Ctx,
    pod: &Value,
    container: &Value,
    mut event: impl FnMut(&str, String),
) -> Result<(String, Image, Value), (String, String)> {
    let text = container["image"].as_str().unwrap_or("");
    let reference = Reference::parse(text).map_err(|e| ("InvalidImageName".to_string(), format!("{e:#}")))?;
    let normal = reference.to_string();
    let store = ImageStore { root: ctx.images_root.clone() };
    let policy = container["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
    let present = store.get(&normal).ok();
    let pull = match (policy, &present) {
        ("Never", None) => {
            return Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{text}\" is not present with pull policy of Never"),
            ));
        }
        ("Always", _) | (_, None) => true,
        _ => false,
    };
    if pull {
        event("Pulling", format!("Pulling image \"{text}\""));
        let started = std::time::Instant::now();
        let auth = pull_auth(ctx, pod, &reference.registry).await;
        let insecure: Vec<String> = ctx.insecure_registries.clone();
        let pulled = tokio::time::timeout(
            std::time::Duration::from_secs(600),
            crate::images::pull::pull(&store, &normal, &insecure, auth),
        )
        .await;
        match pulled {
            Ok(Ok(_)) => event(
                "Pulled",
                format!("Successfully pulled image \"{text}\" in {:.3}s", started.elapsed().as_secs_f64()),
            ),
            Ok(Err(e)) => {
                return Err(("ErrImagePull".into(), format!("failed to pull and unpack image \"{normal}\": {e:#}")));
            }
            Err(_) => return Err(("ErrImagePull".into(), format!("pulling image \"{normal}\" took over 10 minutes"))),
        }
    } else {
        event("Pulled", format!("Container image \"{text}\" already present on machine"));
    }
    let image = store.get(&normal).map_err(|e| ("ErrImagePull".to_string(), format!("{e:#}")))?;
    let config = store.config(&image).map_err(|e| ("ErrImagePull".to_string(), format!("{e:#}")))?;
    Ok((normal, image, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dockerconfigjson_entries_match_their_registry() {
        let cfg = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": base64::engine::general_purpose::STANDARD.encode("u:p")},
            "127.0.0.1:5000": {"username": "a", "password": "b"}}});
        assert!(matches!(auth_for(&cfg, "docker.io"), Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p"));
        assert!(matches!(auth_for(&cfg, "127.0.0.1:5000"), Some(RegistryAuth::Basic(u, _)) if u == "a"));
        assert!(auth_for(&cfg, "ghcr.io").is_none());
    }
}
