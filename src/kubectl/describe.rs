//! `describe`: an object's identity, labels and annotations, its spec and status laid out
//! as indented text, and the events that name it, newest last as kubectl prints them.

use serde_json::Value;

use super::get::{fetch, urlencode};
use super::{Ctx, targets};

/// `describe` flags.
#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    /// TYPE [NAME...] or TYPE/NAME...
    #[arg(required = true)]
    args: Vec<String>,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
}

fn title(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if i == 0 {
            out.extend(c.to_uppercase());
        } else if c.is_uppercase() {
            out.push(' ');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

fn map_lines(label: &str, v: &Value, out: &mut String) {
    let entries: Vec<String> = v
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(&v.to_string()))).collect())
        .unwrap_or_default();
    let pad = 14usize.saturating_sub(label.len() + 1);
    if entries.is_empty() {
        out.push_str(&format!("{label}:{}<none>\n", " ".repeat(pad)));
        return;
    }
    for (i, e) in entries.iter().enumerate() {
        if i == 0 {
            out.push_str(&format!("{label}:{}{e}\n", " ".repeat(pad)));
        } else {
            out.push_str(&format!("{}{e}\n", " ".repeat(label.len() + 1 + pad)));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes a JSON value as indented `key:  value` lines (keys as stored: they may be
/// user data such as label keys).
fn tree(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Object(inner) if inner.is_empty() => out.push_str(&format!("{pad}{}:  <none>\n", k)),
                    Value::Array(a) if a.is_empty() => out.push_str(&format!("{pad}{}:  <none>\n", k)),
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{}:\n", k));
                        tree(v, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{}:  {}\n", k, scalar(v))),
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}-\n"));
                        tree(item, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{}\n", scalar(item))),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", scalar(v))),
    }
}

/// The describe text of one object (without events).
fn render(obj: &Value) -> String {
    let meta = &obj["metadata"];
    let mut out = String::new();
    out.push_str(&format!("Name:         {}\n", meta["name"].as_str().unwrap_or("")));
    if let Some(ns) = meta["namespace"].as_str() {
        out.push_str(&format!("Namespace:    {ns}\n"));
    }
    map_lines("Labels", &meta["labels"], &mut out);
    let mut annotations = meta["annotations"].clone();
    if let Some(m) = annotations.as_object_mut() {
        m.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    map_lines("Annotations", &annotations, &mut out);
    if let Some(ts) = meta["creationTimestamp"].as_str() {
        out.push_str(&format!("CreationTimestamp:  {ts}\n"));
    }
    let secret = obj["kind"] == "Secret";
    for (k, v) in obj.as_object().into_iter().flatten() {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let shown = if secret && (k == "data" || k == "stringData") {
            // Never print secret values: sizes only, as kubectl does.
            let sizes = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(key, val)| {
                            let len = val.as_str().map_or(0, |s| s.len() * 3 / 4 - s.matches('=').count());
                            (key.clone(), Value::String(format!("{len} bytes")))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Value::Object(sizes)
        } else {
            v.clone()
        };
        match &shown {
            Value::Object(_) | Value::Array(_) => {
                out.push_str(&format!("{}:\n", title(k)));
                tree(&shown, 2, &mut out);
            }
            _ => out.push_str(&format!("{}:  {}\n", title(k), scalar(&shown))),
        }
    }
    out
}

async fn events(ctx: &Ctx, obj: &Value) -> anyhow::Result<String> {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    let mut fields = format!("involvedObject.name={name}");
    if let Some(uid) = meta["uid"].as_str() {
        fields.push_str(&format!(",involvedObject.uid={uid}"));
    }
    let path = match meta["namespace"].as_str() {
        Some(ns) => format!("/api/v1/namespaces/{ns}/events?fieldSelector={}", urlencode(&fields)),
        None => format!("/api/v1/events?fieldSelector={}", urlencode(&fields)),
    };
    let list = ctx.client.get(&path).await?;
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Ok("Events:  <none>\n".into());
    }
    let when = |e: &Value| {
        e["lastTimestamp"]
            .as_str()
            .or(e["eventTime"].as_str())
            .or(e["metadata"]["creationTimestamp"].as_str())
            .unwrap_or("")
            .to_string()
    };
    items.sort_by_key(&when);
    let header = ["Type", "Reason", "Age", "From", "Message"].map(String::from).to_vec();
    let underline = ["----", "------", "----", "----", "-------"].map(String::from).to_vec();
    let now = jiff::Timestamp::now();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let age = when(e)
                .parse::<jiff::Timestamp>()
                .map(|t| crate::api::human_duration((now.as_second() - t.as_second()).max(0)))
                .unwrap_or_else(|_| "<unknown>".into());
            vec![
                e["type"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
                age,
                e["source"]["component"].as_str().or(e["reportingComponent"].as_str()).unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").trim().to_string(),
            ]
        })
        .collect();
    let mut w = super::table::Widths::default();
    w.fit(&header);
    rows.iter().for_each(|r| w.fit(r));
    let mut out = String::from("Events:\n");
    for r in std::iter::once(&header).chain(std::iter::once(&underline)).chain(rows.iter()) {
        out.push_str(&format!("  {}\n", w.line(r)));
    }
    Ok(out)
}

/// Runs `describe`.
pub async fn run(ctx: &Ctx, a: DescribeArgs) -> anyhow::Result<()> {
    let mut first = true;
    for t in targets(&ctx.discovery, &a.args)? {
        let (items, _) = fetch(ctx, &t, &a.selector, &None).await?;
        for obj in items {
            if !first {
                println!();
            }
            first = false;
            print!("{}", render(&obj));
            print!("{}", events(ctx, &obj).await?);
        }
    }
    if first {
        eprintln!("No resources found in {} namespace.", ctx.namespace);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_identity_and_hides_secret_values() {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "prod",
            "labels": {"app": "db", "tier": "data"}}, "type": "Opaque", "data": {"password": "aHVudGVyMg=="}});
        let text = render(&s);
        assert!(text.contains("Name:         db\n"), "{text}");
        assert!(text.contains("Labels:       app=db\n              tier=data\n"), "{text}");
        assert!(text.contains("Data:\n  password:  7 bytes"), "{text}");
        assert!(!text.contains("aHVudGVyMg"), "{text}");
        assert_eq!(title("restartPolicy"), "Restart Policy");
    }
}
