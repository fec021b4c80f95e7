//! ControllerRevisions: the template history of DaemonSets and StatefulSets, one object
//! per distinct template (`<owner>-<hash>`, labelled `controller-revision-hash`), numbered
//! in `revision`. `kubectl rollout history|undo` reads them; undo patches the owner with a
//! revision's `data`, which therefore holds the template as a replacing strategic patch.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::conn::{is_already_exists, is_conflict};
use super::{Ctx, controller_of, owner_ref, s};

pub const HASH_LABEL: &str = "controller-revision-hash";

/// The revision that is current for `owner`.
pub struct Current {
    pub name: String,
    pub hash: String,
}

/// What a revision stores for a template: a strategic merge patch that puts it back.
pub fn patch_data(template: &Value) -> Value {
    let mut t = template.clone();
    t["$patch"] = json!("replace");
    json!({"spec": {"template": t}})
}

fn number(cr: &Value) -> i64 {
    cr["revision"].as_i64().unwrap_or(0)
}

/// Finds or creates the revision of `owner`'s current template, renumbering an old one that
/// became current again (a rollback), and prunes unused revisions beyond
/// `revisionHistoryLimit` (default 10). `in_use` are the hashes pods still run.
pub async fn sync(
    ctx: &Ctx,
    owner: &Value,
    api_version: &str,
    kind: &str,
    in_use: &HashSet<String>,
) -> anyhow::Result<Current> {
    let ns = s(owner, "/metadata/namespace");
    let name = s(owner, "/metadata/name");
    let uid = s(owner, "/metadata/uid");
    let template = &owner["spec"]["template"];
    let hash =
        super::deployment::template_hash(template, owner.pointer("/status/collisionCount").and_then(Value::as_i64));
    let mut owned: Vec<Arc<Value>> = ctx
        .controllerrevisions
        .list_in(ns)
        .into_iter()
        .filter(|cr| controller_of(cr).is_some_and(|o| o["uid"] == uid))
        .collect();
    owned.sort_by_key(|cr| number(cr));
    let max = owned.last().map_or(0, |cr| number(cr));
    let base = format!("/apis/apps/v1/namespaces/{ns}/controllerrevisions");
    let found = owned.iter().find(|cr| {
        cr.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str) == Some(hash.as_str())
    });
    let current = match found {
        Some(cr) if number(cr) == max => Current { name: s(cr, "/metadata/name").to_string(), hash: hash.clone() },
        Some(cr) => {
            let path = format!("{base}/{}", s(cr, "/metadata/name"));
            ctx.conn.merge_patch(&path, &json!({"revision": max + 1})).await?;
            Current { name: s(cr, "/metadata/name").to_string(), hash: hash.clone() }
        }
        None => {
            let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(hash);
            let cr = json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": labels,
                             "ownerReferences": [owner_ref(owner, api_version, kind)]},
                "data": patch_data(template), "revision": max + 1,
            });
            match ctx.conn.create(&base, &cr).await {
                Ok(_) => {}
                // Made by a reconcile whose result the cache does not show yet.
                Err(e) if is_conflict(&e) || is_already_exists(&e) => {}
                Err(e) => return Err(e),
            }
            Current { name: format!("{name}-{hash}"), hash: hash.clone() }
        }
    };
    let limit = owner.pointer("/spec/revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(10).max(0) as usize;
    let unused: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|cr| {
            let h =
                cr.pointer("/metadata/labels").and_then(|l| l.get(HASH_LABEL)).and_then(Value::as_str).unwrap_or("");
            h != current.hash && !in_use.contains(h)
        })
        .collect();
    if unused.len() > limit {
        for cr in &unused[..unused.len() - limit] {
            ctx.conn.delete(&format!("{base}/{}", s(cr, "/metadata/name")), &json!({})).await?;
        }
    }
    Ok(current)
}
