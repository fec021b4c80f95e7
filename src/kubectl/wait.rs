//! `wait`: blocks until objects meet `--for=condition=NAME[=VALUE]`,
//! `--for=jsonpath=EXPR[=VALUE]`, `--for=delete` or `--for=create`, watching each in turn
//! under one `--timeout`, and prints `TYPE/NAME condition met` as kubectl does.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::Value;

use super::discovery::Resource;
use super::follow::{self, parse_duration};
use super::get::fetch;
use super::jsonpath::Template;
use super::{Ctx, targets};
use crate::client::is_not_found;

/// `wait` flags.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// TYPE/NAME..., TYPE NAME..., or TYPE with -l SELECTOR or --all.
    #[arg(required = true)]
    args: Vec<String>,
    /// condition=NAME[=VALUE], jsonpath='{EXPR}'[=VALUE], delete or create.
    #[arg(long = "for", required = true)]
    condition: String,
    /// How long to wait for all of them together.
    #[arg(long, default_value = "30s")]
    timeout: String,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Every object of the type in the namespace.
    #[arg(long)]
    all: bool,
}

/// What `--for` asks.
#[derive(Debug)]
enum WaitFor {
    Delete,
    Create,
    /// A status condition of this type (case-insensitive) with this status.
    Condition {
        name: String,
        status: String,
    },
    /// A JSONPath result equal to `value`, or present when there is none.
    JsonPath {
        template: Template,
        value: Option<String>,
    },
}

fn parse_for(text: &str) -> anyhow::Result<WaitFor> {
    if text.eq_ignore_ascii_case("delete") {
        return Ok(WaitFor::Delete);
    }
    if text.eq_ignore_ascii_case("create") {
        return Ok(WaitFor::Create);
    }
    if let Some(rest) = text.strip_prefix("condition=") {
        let (name, status) = rest.split_once('=').unwrap_or((rest, "true"));
        if name.is_empty() {
            bail!("--for=condition= needs a condition name, like --for=condition=Ready");
        }
        return Ok(WaitFor::Condition { name: name.to_string(), status: status.to_string() });
    }
    if let Some(rest) = text.strip_prefix("jsonpath=") {
        // The value follows the last closing brace; without braces, the first `=`.
        let (expr, value) = match rest.rfind('}') {
            Some(end) => {
                let (expr, tail) = rest.split_at(end + 1);
                match tail {
                    "" => (expr.to_string(), None),
                    t => match t.strip_prefix('=') {
                        Some(v) => (expr.to_string(), Some(v.to_string())),
                        None => bail!("unrecognized jsonpath wait {rest:?}: use jsonpath='{{.status.phase}}'=Running"),
                    },
                }
            }
            None => match rest.split_once('=') {
                Some((e, v)) => (format!("{{{e}}}"), Some(v.to_string())),
                None => (format!("{{{rest}}}"), None),
            },
        };
        if value.as_deref() == Some("") {
            bail!("jsonpath wait has to have a value after equal sign");
        }
        return Ok(WaitFor::JsonPath { template: Template::parse(&expr)?, value });
    }
    bail!("unrecognized condition: {text:?} (use condition=NAME, jsonpath=EXPR=VALUE, delete or create)")
}

impl WaitFor {
    /// Whether the object, as it is now, meets the wait.
    fn met(&self, obj: Option<&Value>) -> bool {
        match (self, obj) {
            (WaitFor::Delete, current) => current.is_none(),
            (WaitFor::Create, current) => current.is_some(),
            (_, None) => false,
            (WaitFor::Condition { name, status }, Some(obj)) => condition_met(obj, name, status),
            (WaitFor::JsonPath { template, value }, Some(obj)) => {
                let got = template.render(obj);
                match value {
                    Some(v) => got == *v,
                    None => !got.is_empty(),
                }
            }
        }
    }
}

/// kubectl's rule: the first condition of that type decides, unless it describes an older
/// generation than the object's.
fn condition_met(obj: &Value, name: &str, status: &str) -> bool {
    let generation = obj["metadata"]["generation"].as_i64();
    for c in obj["status"]["conditions"].as_array().into_iter().flatten() {
        let (Some(kind), Some(s)) = (c["type"].as_str(), c["status"].as_str()) else { continue };
        if !kind.eq_ignore_ascii_case(name) {
            continue;
        }
        let observed = c["observedGeneration"].as_i64().or_else(|| obj["status"]["observedGeneration"].as_i64());
        if let (Some(g), Some(o)) = (generation, observed)
            && o < g
        {
            return false;
        }
        return s.eq_ignore_ascii_case(status);
    }
    false
}

/// The objects to wait on: (resource, namespace, name).
async fn objects<'a>(ctx: &'a Ctx, a: &WaitArgs) -> anyhow::Result<Vec<(&'a Resource, Option<String>, String)>> {
    let mut out = Vec::new();
    for t in targets(&ctx.discovery, &a.args)? {
        let ns = |r: &Resource| r.namespaced.then(|| ctx.namespace.clone());
        if !t.names.is_empty() {
            out.extend(t.names.iter().map(|n| (t.resource, ns(t.resource), n.clone())));
            continue;
        }
        if a.selector.is_none() && !a.all {
            bail!("resource(s) were provided, but no name was specified: give names, -l SELECTOR or --all");
        }
        let (items, _) = fetch(ctx, &t, &a.selector, &None).await?;
        for item in items {
            let name = item["metadata"]["name"].as_str().unwrap_or("").to_string();
            let ns = item["metadata"]["namespace"].as_str().map(String::from);
            out.push((t.resource, ns, name));
        }
    }
    Ok(out)
}

/// Runs `wait`.
pub async fn run(ctx: &Ctx, a: WaitArgs) -> anyhow::Result<()> {
    let wait_for = parse_for(&a.condition)?;
    let timeout = parse_duration(&a.timeout)?;
    let deadline = Instant::now() + timeout;
    let objects = objects(ctx, &a).await?;
    let deleting = matches!(wait_for, WaitFor::Delete);
    if objects.is_empty() && !deleting {
        bail!("no matching resources found");
    }
    for (r, ns, name) in objects {
        let path = r.item(ns.as_deref(), &name);
        if !matches!(wait_for, WaitFor::Delete | WaitFor::Create) {
            // A named object that does not exist is the server's NotFound, as in kubectl.
            ctx.client.get(&path).await?;
        } else if deleting {
            match ctx.client.get(&path).await {
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let waited =
            follow::until(ctx, r, ns.as_deref(), &name, Some(left), |current| Ok(wait_for.met(current).then_some(())))
                .await;
        match waited {
            Ok(()) => println!("{}/{name} condition met", r.display()),
            Err(e) if follow::is_timeout(&e) => {
                return Err(anyhow!("timed out waiting for the condition on {}/{name}", r.plural));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(phase: &str, ready: &str) -> Value {
        json!({"metadata": {"name": "p", "generation": 1}, "status": {"phase": phase,
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": ready}]}})
    }

    #[test]
    fn conditions() {
        let ready = parse_for("condition=Ready").unwrap();
        assert!(ready.met(Some(&pod("Running", "True"))));
        assert!(!ready.met(Some(&pod("Running", "False"))));
        assert!(!ready.met(None));
        let not_ready = parse_for("condition=ready=false").unwrap();
        assert!(not_ready.met(Some(&pod("Running", "False"))), "types and statuses ignore case");
        let stale = json!({"metadata": {"generation": 3}, "status": {"observedGeneration": 2,
            "conditions": [{"type": "Available", "status": "True"}]}});
        assert!(!parse_for("condition=Available").unwrap().met(Some(&stale)));
        assert!(parse_for("condition=").is_err());
    }

    #[test]
    fn json_paths_deletion_and_creation() {
        let running = parse_for("jsonpath={.status.phase}=Running").unwrap();
        assert!(running.met(Some(&pod("Running", "True"))));
        assert!(!running.met(Some(&pod("Pending", "False"))));
        let relaxed = parse_for("jsonpath=.status.phase=Pending").unwrap();
        assert!(relaxed.met(Some(&pod("Pending", "False"))));
        let filtered = parse_for("jsonpath={.status.conditions[?(@.type==\"Ready\")].status}=True").unwrap();
        assert!(filtered.met(Some(&pod("Running", "True"))));
        let present = parse_for("jsonpath={.status.phase}").unwrap();
        assert!(present.met(Some(&pod("Running", "True"))));
        assert!(!present.met(Some(&json!({"status": {}}))));
        assert!(parse_for("jsonpath={.status.phase}=").is_err());
        assert!(parse_for("delete").unwrap().met(None));
        assert!(!parse_for("delete").unwrap().met(Some(&pod("Running", "True"))));
        assert!(parse_for("create").unwrap().met(Some(&json!({}))));
        assert!(parse_for("ready").is_err());
    }
}
