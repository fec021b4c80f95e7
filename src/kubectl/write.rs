//! `create`, `apply` and `delete`: objects from manifests (or type and name), with the
//! messages kubectl prints (`deployment.apps/web created`, `configmap "c" deleted`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::discovery::Resource;
use super::get::{fetch, urlencode};
use super::{Ctx, manifest, targets};
use crate::client::{ClientError, is_not_found};

/// `create` flags.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// `namespace NAME` to create a namespace without a file.
    args: Vec<String>,
    /// Files, directories or - for stdin.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Recurse into directories.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// `server` asks the server to validate without saving.
    #[arg(long)]
    dry_run: Option<String>,
}

/// `apply` flags.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Files, directories or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Recurse into directories.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Take over fields another manager owns instead of failing with a conflict.
    #[arg(long)]
    force_conflicts: bool,
    /// Field manager name recorded in managedFields.
    #[arg(long, default_value = "kubectl")]
    field_manager: String,
    /// Accepted for compatibility: apply is always server-side here.
    #[arg(long)]
    server_side: bool,
    /// `server` asks the server to validate without saving.
    #[arg(long)]
    dry_run: Option<String>,
}

/// `delete` flags.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// TYPE NAME..., TYPE/NAME..., or TYPE with -l / --all.
    args: Vec<String>,
    /// Files, directories or - for stdin.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Recurse into directories.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Delete every object of the type in the namespace.
    #[arg(long)]
    all: bool,
    /// Do not fail when an object is already gone.
    #[arg(long)]
    ignore_not_found: bool,
    /// Wait until the objects are gone (finalizers done).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
    /// Seconds a pod gets to stop (-1: the pod's own setting).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    grace_period: i64,
    /// How long `--wait` waits.
    #[arg(long, default_value = "60s")]
    timeout: String,
}

fn name_of(obj: &Value) -> anyhow::Result<&str> {
    obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()).context("the object has no metadata.name")
}

/// The namespace an object from a file goes to: its own, else -n, else the context's; a
/// clash between the file and -n is an error, as in kubectl.
fn object_namespace(ctx: &Ctx, r: &Resource, obj: &Value) -> anyhow::Result<Option<String>> {
    if !r.namespaced {
        return Ok(None);
    }
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) if ctx.namespace_given && ns != ctx.namespace => bail!(
            "the namespace from the provided object {ns:?} does not match the namespace {:?}. You must pass '--namespace={ns}' to perform this operation.",
            ctx.namespace
        ),
        Some(ns) => Ok(Some(ns.to_string())),
        None => Ok(Some(ctx.namespace.clone())),
    }
}

fn dry_run_query(d: &Option<String>) -> anyhow::Result<&'static str> {
    match d.as_deref() {
        None | Some("none") => Ok(""),
        Some("server") => Ok("dryRun=All"),
        Some(other) => {
            bail!("--dry-run must be none or server (client-side dry runs are not supported), got {other:?}")
        }
    }
}

fn with_query(path: String, parts: &[&str]) -> String {
    let parts: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if parts.is_empty() { path } else { format!("{path}?{}", parts.join("&")) }
}

/// Runs `create`.
pub async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<()> {
    let dry = dry_run_query(&a.dry_run)?;
    let suffix = if dry.is_empty() { "" } else { " (server dry run)" };
    if a.files.is_empty() {
        match a.args.as_slice() {
            [ty, name] if ty == "namespace" || ty == "ns" => {
                let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                ctx.client
                    .call(
                        "POST",
                        &with_query("/api/v1/namespaces".into(), &[dry]),
                        Some("application/json"),
                        "application/json",
                        Some(&body),
                    )
                    .await?;
                println!("namespace/{name} created{suffix}");
                return Ok(());
            }
            _ => bail!("create takes -f FILE, or `namespace NAME`"),
        }
    }
    let mut failed = None;
    for obj in manifest::read(&a.files, a.recursive)? {
        let r = ctx.discovery.by_kind(obj["apiVersion"].as_str().unwrap_or(""), obj["kind"].as_str().unwrap_or(""))?;
        let ns = object_namespace(ctx, r, &obj)?;
        let path = with_query(r.collection(ns.as_deref()), &[dry]);
        match ctx.client.call("POST", &path, Some("application/json"), "application/json", Some(&obj)).await {
            Ok(created) => {
                println!("{}/{} created{suffix}", r.display(), created["metadata"]["name"].as_str().unwrap_or(""))
            }
            Err(e) => {
                eprintln!(
                    "{}",
                    e.downcast_ref::<ClientError>()
                        .and_then(ClientError::status)
                        .map_or_else(|| format!("error: {e:#}"), |s| s.to_string())
                );
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(_) => bail!("not every object was created"),
        None => Ok(()),
    }
}

/// Runs `apply` as server-side apply, reporting created / configured / unchanged.
pub async fn apply(ctx: &Ctx, a: ApplyArgs) -> anyhow::Result<()> {
    let dry = dry_run_query(&a.dry_run)?;
    let manager = format!("fieldManager={}", urlencode(&a.field_manager));
    let force = if a.force_conflicts { "force=true" } else { "" };
    for obj in manifest::read(&a.files, a.recursive)? {
        let r = ctx.discovery.by_kind(obj["apiVersion"].as_str().unwrap_or(""), obj["kind"].as_str().unwrap_or(""))?;
        let name = name_of(&obj)?;
        let ns = object_namespace(ctx, r, &obj)?;
        let item = r.item(ns.as_deref(), name);
        let before = match ctx.client.get(&item).await {
            Ok(v) => v["metadata"]["resourceVersion"].as_str().map(String::from),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e),
        };
        let path = with_query(item, &[&manager, force, dry]);
        let after = ctx
            .client
            .call("PATCH", &path, Some("application/apply-patch+yaml"), "application/json", Some(&obj))
            .await?;
        let verb = match before {
            None => "created",
            Some(rv) if after["metadata"]["resourceVersion"].as_str() == Some(rv.as_str()) => "unchanged",
            Some(_) => "configured",
        };
        let suffix = if dry.is_empty() { "" } else { " (server dry run)" };
        println!("{}/{name} {verb}{suffix}", r.display());
    }
    Ok(())
}

fn parse_timeout(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("--timeout {s:?} is not a duration like 60s or 2m"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("--timeout {s:?} is not a duration like 60s or 2m"),
    })
}

async fn delete_one(
    ctx: &Ctx,
    a: &DeleteArgs,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let body = (a.grace_period >= 0)
        .then(|| json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": a.grace_period}));
    match ctx
        .client
        .call("DELETE", &r.item(ns, name), Some("application/json"), "application/json", body.as_ref())
        .await
    {
        Ok(_) => {
            println!("{} \"{name}\" deleted", r.display());
            Ok(Some(r.item(ns, name)))
        }
        Err(e) if a.ignore_not_found && is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `delete`, then (unless `--wait=false`) waits for the objects to disappear.
pub async fn delete(ctx: &Ctx, a: DeleteArgs) -> anyhow::Result<()> {
    let mut gone_paths = Vec::new();
    let mut failed = false;
    if !a.files.is_empty() {
        // Like kubectl, go through every object and report failures (an object already
        // removed with its namespace, say) at the end.
        for obj in manifest::read(&a.files, a.recursive)? {
            let r =
                ctx.discovery.by_kind(obj["apiVersion"].as_str().unwrap_or(""), obj["kind"].as_str().unwrap_or(""))?;
            let ns = object_namespace(ctx, r, &obj)?;
            match delete_one(ctx, &a, r, ns.as_deref(), name_of(&obj)?).await {
                Ok(path) => gone_paths.extend(path),
                Err(e) => {
                    eprintln!(
                        "{}",
                        e.downcast_ref::<ClientError>()
                            .and_then(ClientError::status)
                            .map_or_else(|| format!("error: {e:#}"), |s| s.to_string())
                    );
                    failed = true;
                }
            }
        }
    } else {
        let ts = targets(&ctx.discovery, &a.args)?;
        for t in &ts {
            if t.names.is_empty() && a.selector.is_none() && !a.all {
                bail!("resource(s) were provided, but no name was specified: give names, -l SELECTOR or --all");
            }
            let names: Vec<(Option<String>, String)> = if t.names.is_empty() {
                let (items, _) = fetch(ctx, t, &a.selector, &None).await?;
                items
                    .iter()
                    .map(|o| {
                        (
                            o["metadata"]["namespace"].as_str().map(String::from),
                            o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            } else {
                t.names.iter().map(|n| (Some(ctx.namespace.clone()), n.clone())).collect()
            };
            if names.is_empty() {
                eprintln!("No resources found");
            }
            for (ns, name) in names {
                gone_paths.extend(delete_one(ctx, &a, t.resource, ns.as_deref(), &name).await?);
            }
        }
    }
    if a.wait {
        wait_gone(ctx, &a.timeout, gone_paths).await?;
    }
    if failed {
        bail!("not every object was deleted");
    }
    Ok(())
}

async fn wait_gone(ctx: &Ctx, timeout: &str, gone_paths: Vec<String>) -> anyhow::Result<()> {
    let deadline = Instant::now() + parse_timeout(timeout)?;
    for path in gone_paths {
        loop {
            match ctx.client.get(&path).await {
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(e),
                Ok(_) if Instant::now() > deadline => bail!("timed out waiting for {path} to be deleted"),
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_queries() {
        assert_eq!(parse_timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_timeout("soon").is_err());
        assert_eq!(with_query("/x".into(), &["a=1", "", "b=2"]), "/x?a=1&b=2");
        assert_eq!(with_query("/x".into(), &["", ""]), "/x");
    }
}
