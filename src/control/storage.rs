//! Local persistent volumes (what k3s's local-path provisioner does, by disk kind): the
//! StorageClasses `local-ssd` and `local-hdd` (the server's own disk kind is the default),
//! and a provisioner that, once the scheduler has picked a node for the first pod using a
//! claim (`WaitForFirstConsumer`), creates a hostPath PersistentVolume under
//! `--default-local-storage-path` with node affinity to that node, and binds the claim.
//! When the claim goes, reclaim policy Retain keeps the volume (Released); Delete deletes
//! it, and the node's agent removes the directory before the volume's finalizer lets it go.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::conn::is_conflict;
use super::queue::WorkQueue;
use super::{Ctx, deleting, s};

const COMPONENT: &str = "bramble.io/local";
/// The provisioner name our classes carry.
pub const PROVISIONER: &str = "bramble.io/local";
/// The finalizer that keeps a deleted volume until its node removed the directory.
pub const CLEANUP_FINALIZER: &str = "bramble.io/local-volume-cleanup";
/// The annotation naming the node a volume's directory lives on.
pub const NODE_ANNOTATION: &str = "bramble.io/node";
/// Set by the scheduler on a waiting claim: the node its first pod goes to.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// The classes to make: one per disk kind, the given kind the default.
pub fn classes(default_kind: &str) -> Vec<Value> {
    ["ssd", "hdd"]
        .iter()
        .map(|kind| {
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": format!("local-{kind}"),
                             "annotations": {DEFAULT_CLASS: (*kind == default_kind).to_string()}},
                "provisioner": PROVISIONER, "parameters": {"disktype": kind},
                "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"})
        })
        .collect()
}

/// The class a claim asks for: its own, or the default one.
pub fn class_of<'a>(pvc: &Value, classes: &'a [Arc<Value>]) -> Option<&'a Arc<Value>> {
    match pvc.pointer("/spec/storageClassName").and_then(Value::as_str) {
        Some(name) => classes.iter().find(|c| s(c, "/metadata/name") == name),
        None => classes.iter().find(|c| {
            c.pointer(&format!("/metadata/annotations/{}", DEFAULT_CLASS.replace('/', "~1"))) == Some(&json!("true"))
        }),
    }
}

/// Whether `node` can hold a volume of `class` (its disk kind matches).
pub fn node_fits_class(class: &Value, node: &Value) -> bool {
    match class.pointer("/parameters/disktype").and_then(Value::as_str) {
        Some(kind) => node.pointer("/metadata/labels/disktype").and_then(Value::as_str) == Some(kind),
        None => true,
    }
}

/// The PersistentVolume for `pvc` on `node`.
pub fn volume_for(pvc: &Value, class: &Value, node: &Value, root: &str) -> Value {
    let ns = s(pvc, "/metadata/namespace");
    let claim = s(pvc, "/metadata/name");
    let name = format!("pvc-{}", s(pvc, "/metadata/uid"));
    let node_name = s(node, "/metadata/name");
    let hostname =
        node.pointer("/metadata/labels/kubernetes.io~1hostname").and_then(Value::as_str).unwrap_or(node_name);
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "finalizers": [CLEANUP_FINALIZER],
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER, NODE_ANNOTATION: node_name}},
        "spec": {
            "capacity": {"storage": pvc.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))},
            "accessModes": pvc["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": class.get("reclaimPolicy").cloned().unwrap_or(json!("Delete")),
            "storageClassName": class["metadata"]["name"],
            "volumeMode": "Filesystem",
            "hostPath": {"path": format!("{}/{name}_{ns}_{claim}", root.trim_end_matches('/')), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": claim,
                         "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"]["resourceVersion"]},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
        },
    })
}

/// Registers the handlers, makes sure the classes exist, and starts the workers.
pub fn start(ctx: &Arc<Ctx>, root: String, default_kind: String) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.pvcs.on_change(Box::new(move |old, new| {
        match (old, new) {
            (_, Some(c)) => q.add(&format!("pvc/{}", super::informer::key_of(c))),
            // A claim gone: its volume is to be reclaimed.
            (Some(c), None) => q.add(&format!("pv/{}", s(c, "/spec/volumeName"))),
            (None, None) => {}
        }
    }));
    let q = queue.clone();
    ctx.pvs.on_change(Box::new(move |_, new| {
        if let Some(v) = new {
            q.add(&format!("pv/{}", s(v, "/metadata/name")));
        }
    }));
    let setup = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            for class in classes(&default_kind) {
                loop {
                    match ctx.conn.create("/apis/storage.k8s.io/v1/storageclasses", &class).await {
                        Ok(_) => break,
                        Err(e) if is_conflict(&e) => break,
                        Err(e) => {
                            tracing::debug!(error = %format!("{e:#}"), "creating the local StorageClasses");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        })
    };
    let ctx = ctx.clone();
    let mut tasks = vec![setup];
    tasks.extend(super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        let root = root.clone();
        async move {
            match key.split_once('/') {
                Some(("pvc", k)) => provision(&ctx, k, &root).await,
                Some(("pv", k)) => reclaim(&ctx, k).await,
                _ => Ok(None),
            }
        }
    }));
    tasks
}

async fn provision(ctx: &Ctx, key: &str, root: &str) -> anyhow::Result<Option<Duration>> {
    let Some(pvc) = ctx.pvcs.get(key) else { return Ok(None) };
    if deleting(&pvc) || !s(&pvc, "/spec/volumeName").is_empty() {
        return Ok(None);
    }
    let classes = ctx.storageclasses.list();
    let Some(class) = class_of(&pvc, &classes) else { return Ok(None) };
    if s(class, "/provisioner") != PROVISIONER {
        return Ok(None);
    }
    let nodes = ctx.nodes.list();
    let node = match pvc
        .pointer(&format!("/metadata/annotations/{}", SELECTED_NODE.replace('/', "~1")))
        .and_then(Value::as_str)
    {
        Some(selected) => nodes.iter().find(|n| s(n, "/metadata/name") == selected).cloned(),
        // Immediate binding: the first node with the right disk.
        None if s(class, "/volumeBindingMode") == "Immediate" => {
            let mut fit: Vec<&Arc<Value>> = nodes.iter().filter(|n| node_fits_class(class, n)).collect();
            fit.sort_by_key(|n| s(n, "/metadata/name").to_string());
            fit.first().map(|n| (*n).clone())
        }
        None => return Ok(None),
    };
    let Some(node) = node else {
        ctx.events.emit(
            COMPONENT,
            &pvc,
            "Warning",
            "ProvisioningFailed",
            "no node has the disk kind this class asks for",
        );
        return Ok(None);
    };
    let pv = volume_for(&pvc, class, &node, root);
    let pv_name = s(&pv, "/metadata/name").to_string();
    match ctx.conn.create("/api/v1/persistentvolumes", &pv).await {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => {}
        Err(e) => return Err(e),
    }
    let ns = s(&pvc, "/metadata/namespace");
    let claim = s(&pvc, "/metadata/name");
    let path = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}");
    let patch = json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes",
        "pv.kubernetes.io/bound-by-controller": "yes", "volume.kubernetes.io/storage-provisioner": PROVISIONER}},
        "spec": {"volumeName": pv_name, "storageClassName": class["metadata"]["name"]}});
    ctx.conn.strategic_patch(&path, &patch).await?;
    let status = json!({"status": {"phase": "Bound", "accessModes": pvc["spec"]["accessModes"], "capacity": pv["spec"]["capacity"]}});
    ctx.conn.merge_patch(&format!("{path}/status"), &status).await?;
    ctx.conn
        .merge_patch(&format!("/api/v1/persistentvolumes/{pv_name}/status"), &json!({"status": {"phase": "Bound"}}))
        .await?;
    let msg = format!("Successfully provisioned volume {pv_name} on node {}", s(&node, "/metadata/name"));
    ctx.events.emit(COMPONENT, &pvc, "Normal", "ProvisioningSucceeded", &msg);
    Ok(None)
}

/// A volume whose claim is gone: Released (Retain), or deleted (Delete) and left to its
/// node's agent to clean.
async fn reclaim(ctx: &Ctx, name: &str) -> anyhow::Result<Option<Duration>> {
    let Some(pv) = ctx.pvs.get(name) else { return Ok(None) };
    if deleting(&pv) || s(&pv, "/metadata/annotations/pv.kubernetes.io~1provisioned-by") != PROVISIONER {
        return Ok(None);
    }
    let claim = &pv["spec"]["claimRef"];
    let key = format!("{}/{}", s(claim, "/namespace"), s(claim, "/name"));
    let claimed = ctx.pvcs.get(&key).is_some_and(|c| c["metadata"]["uid"] == claim["uid"]);
    if claimed {
        return Ok(None);
    }
    let path = format!("/api/v1/persistentvolumes/{name}");
    if s(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" {
        ctx.conn.delete(&path, &json!({})).await?;
    } else if s(&pv, "/status/phase") != "Released" {
        ctx.conn.merge_patch(&format!("{path}/status"), &json!({"status": {"phase": "Released"}})).await?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_class_follows_the_servers_disk() {
        let made: Vec<Arc<Value>> = classes("hdd").into_iter().map(Arc::new).collect();
        let claim = json!({"spec": {}});
        assert_eq!(class_of(&claim, &made).map(|c| s(c, "/metadata/name")), Some("local-hdd"));
        let ssd = json!({"spec": {"storageClassName": "local-ssd"}});
        assert_eq!(class_of(&ssd, &made).map(|c| s(c, "/metadata/name")), Some("local-ssd"));
        let node = json!({"metadata": {"name": "n", "labels": {"disktype": "ssd"}}});
        assert!(node_fits_class(&made[0], &node) && !node_fits_class(&made[1], &node));
    }

    #[test]
    fn volumes_live_under_the_root_on_the_chosen_node() {
        let class = &classes("ssd")[0];
        let pvc = json!({"metadata": {"name": "data", "namespace": "db", "uid": "u1"},
                         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}});
        let node = json!({"metadata": {"name": "pi-1", "labels": {"kubernetes.io/hostname": "pi-1"}}});
        let pv = volume_for(&pvc, class, &node, "/var/lib/bramble/storage/");
        assert_eq!(pv["spec"]["hostPath"]["path"], "/var/lib/bramble/storage/pvc-u1_db_data");
        assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
            "pi-1"
        );
        assert_eq!(pv["metadata"]["finalizers"][0], CLEANUP_FINALIZER);
    }
}
