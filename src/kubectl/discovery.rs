//! Resolves what users type (`deploy`, `deployments.apps`, `Deployment`, `cm`) and what
//! manifests say (`apiVersion` + `kind`) to API paths, from the server's own discovery
//! documents, so the client never carries a second copy of the resource table.

use anyhow::{anyhow, bail};
use futures_util::future::try_join_all;
use serde_json::Value;

use crate::client::Client;

/// One served resource.
#[derive(Clone, Debug)]
pub struct Resource {
    /// API group, empty for core.
    pub group: String,
    /// Served version.
    pub version: String,
    /// Plural name, as in the URL.
    pub plural: String,
    /// Lower-case singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names (`deploy`, `cm`).
    pub short_names: Vec<String>,
    /// Categories (`all`) that `get all` expands to.
    pub categories: Vec<String>,
}

impl Resource {
    /// `apps/v1`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The collection path, in `namespace` when the resource is namespaced and one is given.
    pub fn collection(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }

    /// One object's path.
    pub fn item(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection(namespace))
    }

    /// How kubectl names the type in messages: `deployment.apps`, `configmap`.
    pub fn display(&self) -> String {
        if self.group.is_empty() { self.singular.clone() } else { format!("{}.{}", self.singular, self.group) }
    }
}

/// All resources one server serves.
pub struct Discovery {
    resources: Vec<Resource>,
}

fn parse_list(group: &str, version: &str, list: &Value) -> Vec<Resource> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let plural = r["name"].as_str()?;
            if plural.contains('/') {
                return None;
            }
            let kind = r["kind"].as_str()?.to_string();
            let singular = match r["singularName"].as_str() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => kind.to_lowercase(),
            };
            Some(Resource {
                group: group.to_string(),
                version: version.to_string(),
                plural: plural.to_string(),
                singular,
                kind,
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
                short_names: strings(&r["shortNames"]),
                categories: strings(&r["categories"]),
            })
        })
        .collect()
}

impl Discovery {
    /// Reads `/api` and `/apis` and every preferred group version.
    pub async fn load(client: &Client) -> anyhow::Result<Discovery> {
        let core = client.get("/api").await?;
        let groups = client.get("/apis").await?;
        let mut wanted: Vec<(String, String)> = core["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((String::new(), v.as_str()?.to_string())))
            .collect();
        for g in groups["groups"].as_array().into_iter().flatten() {
            if let (Some(name), Some(version)) = (g["name"].as_str(), g["preferredVersion"]["version"].as_str()) {
                wanted.push((name.to_string(), version.to_string()));
            }
        }
        let lists = try_join_all(wanted.iter().map(|(g, v)| {
            let path = if g.is_empty() { format!("/api/{v}") } else { format!("/apis/{g}/{v}") };
            async move { client.get(&path).await }
        }))
        .await?;
        let resources = wanted.iter().zip(&lists).flat_map(|((g, v), list)| parse_list(g, v, list)).collect();
        Ok(Discovery { resources })
    }

    /// Every resource, in discovery order.
    pub fn all(&self) -> &[Resource] {
        &self.resources
    }

    /// Finds the resource a user typed: plural, singular, short name or kind, optionally
    /// qualified by group (`deployments.apps`) or group and version (`deployments.v1.apps`).
    pub fn find(&self, typed: &str) -> anyhow::Result<&Resource> {
        let lower = typed.to_lowercase();
        let (name, qualifier) = lower.split_once('.').map_or((lower.as_str(), ""), |(n, q)| (n, q));
        let matches = |r: &&Resource| {
            let named = r.plural == name
                || r.singular == name
                || r.kind.to_lowercase() == name
                || r.short_names.iter().any(|s| s == name);
            let qualified = qualifier.is_empty()
                || r.group == qualifier
                || format!("{}.{}", r.version, r.group) == qualifier
                || (r.group.is_empty() && r.version == qualifier);
            named && qualified
        };
        self.resources
            .iter()
            .find(matches)
            .ok_or_else(|| anyhow!("the server doesn't have a resource type \"{typed}\""))
    }

    /// The resources in a category (`all`), in discovery order; empty when no resource
    /// claims the name.
    pub fn category(&self, name: &str) -> Vec<&Resource> {
        self.resources.iter().filter(|r| r.categories.iter().any(|c| c == name)).collect()
    }

    /// Finds the resource for a manifest's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> anyhow::Result<&Resource> {
        if api_version.is_empty() || kind.is_empty() {
            bail!("the object has no apiVersion or kind; every manifest needs both");
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.resources
            .iter()
            .find(|r| r.group == group && r.kind == kind && r.version == version)
            .or_else(|| self.resources.iter().find(|r| r.group == group && r.kind == kind))
            .ok_or_else(|| anyhow!("no matches for kind \"{kind}\" in version \"{api_version}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn discovery() -> Discovery {
        let apps = json!({"resources": [
            {"name": "deployments", "singularName": "deployment", "kind": "Deployment", "namespaced": true,
             "shortNames": ["deploy"], "verbs": ["get"], "categories": ["all"]},
            {"name": "deployments/scale", "kind": "Scale", "namespaced": true}
        ]});
        let core = json!({"resources": [
            {"name": "configmaps", "singularName": "", "kind": "ConfigMap", "namespaced": true, "shortNames": ["cm"]},
            {"name": "nodes", "kind": "Node", "namespaced": false}
        ]});
        let mut resources = parse_list("apps", "v1", &apps);
        resources.extend(parse_list("", "v1", &core));
        Discovery { resources }
    }

    #[test]
    fn finds_by_every_spelling() {
        let d = discovery();
        for typed in ["deploy", "deployment", "deployments", "Deployment", "deployments.apps", "deploy.v1.apps"] {
            assert_eq!(d.find(typed).unwrap().plural, "deployments", "{typed}");
        }
        assert_eq!(d.find("cm").unwrap().singular, "configmap");
        assert!(d.find("deployments.batch").is_err());
        assert_eq!(d.find("deployments").unwrap().item(Some("x"), "web"), "/apis/apps/v1/namespaces/x/deployments/web");
        assert_eq!(d.find("nodes").unwrap().item(Some("x"), "n1"), "/api/v1/nodes/n1");
        assert_eq!(d.by_kind("apps/v1", "Deployment").unwrap().display(), "deployment.apps");
        assert!(d.by_kind("v1", "Deployment").is_err());
        assert_eq!(d.category("all").len(), 1);
    }
}
