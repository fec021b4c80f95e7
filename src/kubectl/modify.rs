//! Verbs that change one existing object: `edit`, `patch`, `label`, `annotate`, `scale`.

use std::io::Write;

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};

use super::discovery::Resource;
use super::{Ctx, targets};

/// `edit` flags.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
}

/// `patch` flags.
#[derive(clap::Args, Debug)]
pub struct PatchArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
    /// The patch, as JSON or YAML.
    #[arg(short = 'p', long)]
    patch: String,
    /// strategic (default), merge or json.
    #[arg(long = "type", default_value = "strategic")]
    patch_type: String,
    /// Patch a subresource (`status`, `scale`).
    #[arg(long)]
    subresource: Option<String>,
}

/// `label` and `annotate` flags.
#[derive(clap::Args, Debug)]
pub struct MetaArgs {
    /// TYPE NAME KEY=VALUE... KEY-..., or TYPE/NAME KEY=VALUE...
    #[arg(required = true)]
    args: Vec<String>,
    /// Allow replacing a value that is already set.
    #[arg(long)]
    overwrite: bool,
}

/// `scale` flags.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// TYPE NAME or TYPE/NAME.
    #[arg(required = true)]
    args: Vec<String>,
    /// The new replica count.
    #[arg(long)]
    replicas: u32,
}

/// Resolves the one object the arguments name.
pub(super) fn one<'a>(ctx: &'a Ctx, args: &[String]) -> anyhow::Result<(&'a Resource, String)> {
    let ts = targets(&ctx.discovery, args)?;
    match ts.as_slice() {
        [t] if t.names.len() == 1 => Ok((t.resource, t.names[0].clone())),
        _ => bail!("name exactly one object, as TYPE NAME or TYPE/NAME"),
    }
}

fn parse_patch(text: &str) -> anyhow::Result<Value> {
    serde_yaml::from_str::<Value>(text).with_context(|| format!("the patch is neither JSON nor YAML: {text}"))
}

/// Runs `patch`.
pub async fn patch(ctx: &Ctx, a: PatchArgs) -> anyhow::Result<()> {
    let (r, name) = one(ctx, &a.args)?;
    let content_type = match a.patch_type.as_str() {
        "strategic" => "application/strategic-merge-patch+json",
        "merge" => "application/merge-patch+json",
        "json" => "application/json-patch+json",
        other => bail!("--type must be one of strategic, merge or json, not {other:?}"),
    };
    let body = parse_patch(&a.patch)?;
    let mut path = r.item(Some(&ctx.namespace), &name);
    if let Some(sub) = &a.subresource {
        path = format!("{path}/{sub}");
    }
    let before = ctx.client.get(&path).await?;
    let after = ctx.client.call("PATCH", &path, Some(content_type), "application/json", Some(&body)).await?;
    let unchanged = before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"];
    println!("{}/{name} patched{}", r.display(), if unchanged { " (no change)" } else { "" });
    Ok(())
}

/// Splits `KEY=VALUE` and `KEY-` arguments into a merge-patch map.
fn changes(args: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            if k.is_empty() {
                bail!("invalid label or annotation {a:?}: the key is empty");
            }
            out.insert(k.to_string(), json!(v));
        } else if let Some(k) = a.strip_suffix('-') {
            out.insert(k.to_string(), Value::Null);
        } else {
            bail!("{a:?} is neither KEY=VALUE nor KEY-");
        }
    }
    if out.is_empty() {
        bail!("at least one KEY=VALUE or KEY- is required");
    }
    Ok(out)
}

/// Runs `label` (`field` = `labels`) or `annotate` (`annotations`).
pub async fn label(ctx: &Ctx, a: MetaArgs, field: &str) -> anyhow::Result<()> {
    let split = if a.args.first().is_some_and(|s| s.contains('/')) { 1 } else { 2 };
    if a.args.len() <= split {
        bail!("give the object and at least one KEY=VALUE or KEY-");
    }
    let (r, name) = one(ctx, &a.args[..split])?;
    let wanted = changes(&a.args[split..])?;
    let path = r.item(Some(&ctx.namespace), &name);
    let current = ctx.client.get(&path).await?;
    let existing = current["metadata"][field].as_object().cloned().unwrap_or_default();
    if !a.overwrite {
        for (k, v) in &wanted {
            if let (Some(old), Some(new)) = (existing.get(k), v.as_str())
                && old.as_str() != Some(new)
            {
                bail!("'{k}' already has a value ({}), and --overwrite is false", old.as_str().unwrap_or(""));
            }
        }
    }
    let body = json!({"metadata": {field: wanted, "resourceVersion": current["metadata"]["resourceVersion"]}});
    let after =
        ctx.client.call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&body)).await?;
    let verb = if field == "labels" { "labeled" } else { "annotated" };
    let unchanged = current["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"];
    println!("{}/{name} {}", r.display(), if unchanged { format!("not {verb}") } else { verb.to_string() });
    Ok(())
}

/// Runs `scale` through the scale subresource.
pub async fn scale(ctx: &Ctx, a: ScaleArgs) -> anyhow::Result<()> {
    let (r, name) = one(ctx, &a.args)?;
    let path = format!("{}/scale", r.item(Some(&ctx.namespace), &name));
    let body = json!({"spec": {"replicas": a.replicas}});
    ctx.client.call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&body)).await?;
    println!("{}/{name} scaled", r.display());
    Ok(())
}

fn editor() -> String {
    ["KUBE_EDITOR", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "vi".into())
}

/// Runs `edit`: the object as YAML in the editor, saved back with an update that fails on
/// a concurrent change rather than overwriting it.
pub async fn edit(ctx: &Ctx, a: EditArgs) -> anyhow::Result<()> {
    let (r, name) = one(ctx, &a.args)?;
    let path = r.item(Some(&ctx.namespace), &name);
    let mut obj = ctx.client.get(&path).await?;
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    let original = serde_yaml::to_string(&obj)?;
    let mut file = tempfile_in_tmp(&name)?;
    file.1.write_all(
        format!(
            "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit.\n#\n{original}"
        )
        .as_bytes(),
    )?;
    drop(file.1);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} \"$1\"", editor()))
        .arg("sh")
        .arg(&file.0)
        .status()
        .with_context(|| format!("starting the editor {:?}", editor()))?;
    if !status.success() {
        bail!("the editor exited with {status}; {} kept", file.0.display());
    }
    let edited = std::fs::read_to_string(&file.0)?;
    let content: String = edited.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    if content.trim().is_empty()
        || serde_yaml::from_str::<Value>(&content).ok() == serde_yaml::from_str::<Value>(&original).ok()
    {
        let _ = std::fs::remove_file(&file.0);
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let new: Value = serde_yaml::from_str(&content)
        .map_err(|e| anyhow!("the edited file is not valid YAML ({e}); it is kept at {}", file.0.display()))?;
    // Like kubectl, send only what the user changed, so a controller's concurrent writes
    // (status, annotations) do not turn the edit into a conflict.
    let before: Value = serde_yaml::from_str(&original)?;
    let patch = merge_diff(&before, &new);
    match ctx.client.call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&patch)).await
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&file.0);
            println!("{}/{name} edited", r.display());
            Ok(())
        }
        Err(e) => Err(e.context(format!("the edit was not saved; your copy is at {}", file.0.display()))),
    }
}

/// The JSON merge patch (RFC 7386) that turns `before` into `after`.
fn merge_diff(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (k, bv) in b {
                match a.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(av) if av != bv => {
                        patch.insert(k.clone(), merge_diff(bv, av));
                    }
                    Some(_) => {}
                }
            }
            for (k, av) in a {
                if !b.contains_key(k) {
                    patch.insert(k.clone(), av.clone());
                }
            }
            Value::Object(patch)
        }
        _ => after.clone(),
    }
}

fn tempfile_in_tmp(name: &str) -> anyhow::Result<(std::path::PathBuf, std::fs::File)> {
    let dir = std::env::temp_dir();
    for n in 0..100u32 {
        let p = dir.join(format!("kubectl-edit-{}-{name}-{n}.yaml", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!("could not create a temporary file in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_become_merge_patches_of_what_changed() {
        let before =
            serde_json::json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1}});
        let after = serde_json::json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 3, "paused": true}});
        assert_eq!(
            merge_diff(&before, &after),
            serde_json::json!({"metadata": {"labels": {"y": null}}, "spec": {"replicas": 3, "paused": true}})
        );
    }

    #[test]
    fn label_changes() {
        let c = changes(&["a=1".into(), "b-".into()]).unwrap();
        assert_eq!(c["a"], "1");
        assert!(c["b"].is_null());
        assert!(changes(&["=x".into()]).is_err());
        assert!(changes(&["plain".into()]).is_err());
        assert_eq!(parse_patch("spec: {replicas: 2}").unwrap(), json!({"spec": {"replicas": 2}}));
    }
}
