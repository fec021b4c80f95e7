//! The node's registry configuration, in k3s's `registries.yaml` format. Only what pulling
//! needs today is read: a mirror whose endpoint is `http://...` makes its registry one that
//! is spoken to over plain HTTP (a local registry without TLS).

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// The registries (`host:port`) to pull from over plain HTTP; a missing file means none.
pub fn insecure(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: Value = serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))?;
    let mut out = Vec::new();
    for (host, mirror) in doc["mirrors"].as_object().into_iter().flatten() {
        for endpoint in mirror["endpoint"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Some(rest) = endpoint.strip_prefix("http://") {
                out.push(host.clone());
                out.push(rest.trim_end_matches('/').split('/').next().unwrap_or(rest).to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_mirrors_are_insecure() {
        let path = std::env::temp_dir().join(format!("bramble-registries-{}.yaml", std::process::id()));
        std::fs::write(&path, "mirrors:\n  \"127.0.0.1:5000\":\n    endpoint:\n      - \"http://127.0.0.1:5000\"\n  docker.io:\n    endpoint: [\"https://mirror.example\"]\n").unwrap();
        assert_eq!(super::insecure(&path).unwrap(), vec!["127.0.0.1:5000".to_string()]);
        std::fs::remove_file(&path).unwrap();
        assert!(super::insecure(&path).unwrap().is_empty());
    }
}
