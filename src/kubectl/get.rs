//! `get`: server-side tables (the same columns real kubectl shows), or objects as YAML,
//! JSON, names or a JSONPath template; `-w` follows with a watch from the listed version.

use anyhow::bail;
use serde_json::{Value, json};

use super::jsonpath::Template;
use super::table::Widths;
use super::{Ctx, Target, targets};
use crate::client::Lines;

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// `get` flags.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// TYPE [NAME...], TYPE1,TYPE2, or TYPE/NAME...
    #[arg(required = true)]
    args: Vec<String>,
    /// Output format: wide, yaml, json, name, jsonpath=TEMPLATE.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Label selector (`app=web`, `tier in (a,b)`, `!canary`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector (`metadata.name=web`, `status.phase=Running`).
    #[arg(long)]
    field_selector: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Watch without listing first.
    #[arg(long)]
    watch_only: bool,
    /// Add a LABELS column.
    #[arg(long)]
    show_labels: bool,
    /// Leave out the header line.
    #[arg(long)]
    no_headers: bool,
}

/// The ways `-o` prints.
#[derive(Debug, PartialEq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
    JsonPath(String),
}

impl Output {
    /// Parses `-o`.
    pub fn parse(o: Option<&str>) -> anyhow::Result<Output> {
        Ok(match o.unwrap_or("") {
            "" => Output::Table,
            "wide" => Output::Wide,
            "yaml" => Output::Yaml,
            "json" => Output::Json,
            "name" => Output::Name,
            o if o.starts_with("jsonpath=") => Output::JsonPath(o["jsonpath=".len()..].to_string()),
            o => bail!(
                "unable to match a printer suitable for the output format {o:?}, allowed formats are: json, jsonpath, name, wide, yaml"
            ),
        })
    }
}

fn query(selector: &Option<String>, fields: &Option<String>, extra: &[(&str, &str)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = selector {
        parts.push(format!("labelSelector={}", urlencode(s)));
    }
    if let Some(f) = fields {
        parts.push(format!("fieldSelector={}", urlencode(f)));
    }
    parts.extend(extra.iter().map(|(k, v)| format!("{k}={}", urlencode(v))));
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

fn labels_of(meta: &Value) -> String {
    match meta["labels"].as_object() {
        Some(m) if !m.is_empty() => {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
        }
        _ => "<none>".into(),
    }
}

/// Turns a server Table into printable rows, honouring wide, -A, --show-labels and the
/// `TYPE/` name prefix used when several types are printed. Watch events after the first
/// carry no column definitions, so the shape remembers the ones it saw.
struct TableShape {
    wide: bool,
    namespaces: bool,
    labels: bool,
    prefix: Option<String>,
    columns: Vec<(usize, String)>,
}

impl TableShape {
    fn new(wide: bool, namespaces: bool, labels: bool, prefix: Option<String>) -> TableShape {
        TableShape { wide, namespaces, labels, prefix, columns: Vec::new() }
    }

    /// Learns the shown columns from a table that defines them.
    fn learn(&mut self, table: &Value) {
        let defs = table["columnDefinitions"].as_array().cloned().unwrap_or_default();
        if defs.is_empty() {
            return;
        }
        self.columns = defs
            .iter()
            .enumerate()
            .filter(|(_, c)| self.wide || c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|(i, c)| (i, c["name"].as_str().unwrap_or("").to_uppercase()))
            .collect();
    }

    fn header(&self) -> Vec<String> {
        let mut h: Vec<String> = Vec::new();
        if self.namespaces {
            h.push("NAMESPACE".into());
        }
        h.extend(self.columns.iter().map(|(_, name)| name.clone()));
        if self.labels {
            h.push("LABELS".into());
        }
        h
    }

    fn rows(&mut self, table: &Value) -> Vec<Vec<String>> {
        self.learn(table);
        table["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                let cells = row["cells"].as_array().cloned().unwrap_or_default();
                let meta = &row["object"]["metadata"];
                let mut out = Vec::new();
                if self.namespaces {
                    out.push(meta["namespace"].as_str().unwrap_or("").to_string());
                }
                for (n, (i, _)) in self.columns.iter().enumerate() {
                    let mut c = cells.get(*i).map(cell).unwrap_or_default();
                    if n == 0
                        && let Some(p) = &self.prefix
                    {
                        c = format!("{p}/{c}");
                    }
                    out.push(c);
                }
                if self.labels {
                    out.push(labels_of(meta));
                }
                out
            })
            .collect()
    }
}

/// Fetches the objects of one target as JSON, each with apiVersion and kind set.
pub async fn fetch(
    ctx: &Ctx,
    t: &Target<'_>,
    selector: &Option<String>,
    fields: &Option<String>,
) -> anyhow::Result<(Vec<Value>, String)> {
    let r = t.resource;
    let mut items = Vec::new();
    let mut rv = String::new();
    if t.names.is_empty() {
        let list =
            ctx.client.get(&format!("{}{}", r.collection(ctx.list_namespace()), query(selector, fields, &[]))).await?;
        rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
        items = list["items"].as_array().cloned().unwrap_or_default();
    } else {
        for name in &t.names {
            items.push(ctx.client.get(&r.item(Some(&ctx.namespace), name)).await?);
        }
    }
    for item in &mut items {
        if let Some(m) = item.as_object_mut() {
            m.entry("apiVersion").or_insert_with(|| json!(r.api_version()));
            m.entry("kind").or_insert_with(|| json!(r.kind));
        }
    }
    Ok((items, rv))
}

/// Prints objects as YAML, JSON, names or a template: one object alone, several as a List.
pub fn print_objects(output: &Output, t: &Target<'_>, items: Vec<Value>, single: bool) -> anyhow::Result<()> {
    if let Output::Name = output {
        for i in &items {
            println!("{}/{}", t.resource.display(), i["metadata"]["name"].as_str().unwrap_or(""));
        }
        return Ok(());
    }
    let doc = if single && items.len() == 1 {
        items.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
    };
    match output {
        Output::Yaml => print!("{}", serde_yaml::to_string(&doc)?),
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::JsonPath(t) => print!("{}", Template::parse(t)?.render(&doc)),
        _ => {}
    }
    Ok(())
}

/// What printing the initial tables leaves for a watch to continue from.
struct Printed {
    resource_version: String,
    shape: TableShape,
    any_rows: bool,
}

async fn print_tables(
    ctx: &Ctx,
    a: &GetArgs,
    output: &Output,
    ts: &[Target<'_>],
    widths: &mut Widths,
) -> anyhow::Result<Printed> {
    let multi = ts.len() > 1 || a.args[0].contains('/');
    let mut last =
        Printed { resource_version: String::new(), shape: TableShape::new(false, false, false, None), any_rows: false };
    let mut printed_any = false;
    for (n, t) in ts.iter().enumerate() {
        let r = t.resource;
        let mut shape = TableShape::new(
            *output == Output::Wide,
            ctx.all_namespaces && r.namespaced,
            a.show_labels,
            multi.then(|| r.display()),
        );
        let mut rows = Vec::new();
        let mut header = Vec::new();
        let mut rv = String::new();
        if t.names.is_empty() {
            let path = format!("{}{}", r.collection(ctx.list_namespace()), query(&a.selector, &a.field_selector, &[]));
            let table = ctx.client.call("GET", &path, None, TABLE_ACCEPT, None).await?;
            rv = table["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
            rows = shape.rows(&table);
            header = shape.header();
        } else {
            for name in &t.names {
                let table =
                    ctx.client.call("GET", &r.item(Some(&ctx.namespace), name), None, TABLE_ACCEPT, None).await?;
                rows.extend(shape.rows(&table));
                header = shape.header();
            }
        }
        if rows.is_empty() {
            last = Printed { resource_version: rv, shape, any_rows: printed_any };
            continue;
        }
        if printed_any {
            println!();
        }
        let mut w = Widths::default();
        if !a.no_headers {
            w.fit(&header);
        }
        rows.iter().for_each(|r| w.fit(r));
        if !a.no_headers {
            println!("{}", w.line(&header));
        }
        for row in &rows {
            println!("{}", w.line(row));
        }
        printed_any = true;
        if n + 1 == ts.len() {
            *widths = w;
        }
        last = Printed { resource_version: rv, shape, any_rows: true };
    }
    if !printed_any && !a.watch {
        match ctx.list_namespace() {
            Some(ns) if ts.iter().any(|t| t.resource.namespaced) => eprintln!("No resources found in {ns} namespace."),
            _ => eprintln!("No resources found"),
        }
    }
    Ok(last)
}

/// Runs `get`.
pub async fn run(ctx: &Ctx, a: GetArgs) -> anyhow::Result<()> {
    let output = Output::parse(a.output.as_deref())?;
    let ts = targets(&ctx.discovery, &a.args)?;
    let watching = a.watch || a.watch_only;
    if watching && ts.len() != 1 {
        bail!("you may only specify a single resource type to watch");
    }
    let table_output = matches!(output, Output::Table | Output::Wide);
    let mut widths = Widths::default();
    let mut rv = String::new();
    let mut shape = None;
    let mut header_printed = false;
    if !a.watch_only {
        if table_output {
            let printed = print_tables(ctx, &a, &output, &ts, &mut widths).await?;
            rv = printed.resource_version;
            header_printed = printed.any_rows;
            shape = Some(printed.shape);
        } else {
            let single = ts.len() == 1 && ts[0].names.len() == 1;
            for t in &ts {
                let (items, v) = fetch(ctx, t, &a.selector, &a.field_selector).await?;
                rv = v;
                print_objects(&output, t, items, single)?;
            }
        }
    }
    if !watching {
        return Ok(());
    }
    let t = &ts[0];
    let r = t.resource;
    let mut field_selector = a.field_selector.clone();
    if let Some(name) = t.names.first() {
        let by_name = format!("metadata.name={name}");
        field_selector = Some(match field_selector {
            Some(f) => format!("{f},{by_name}"),
            None => by_name,
        });
    }
    let mut extra = vec![("watch", "true")];
    if !rv.is_empty() {
        extra.push(("resourceVersion", rv.as_str()));
    }
    let path = format!("{}{}", r.collection(ctx.list_namespace()), query(&a.selector, &field_selector, &extra));
    let accept = if table_output { TABLE_ACCEPT } else { "application/json" };
    let mut lines = Lines::new(ctx.client.stream(&path, accept).await?);
    let mut shape = shape.unwrap_or_else(|| {
        TableShape::new(output == Output::Wide, ctx.all_namespaces && r.namespaced, a.show_labels, None)
    });
    while let Some(event) = lines.next().await? {
        let kind = event["type"].as_str().unwrap_or("");
        if kind == "BOOKMARK" {
            continue;
        }
        if kind == "ERROR" {
            bail!("the watch ended: {}", event["object"]["message"].as_str().unwrap_or("unknown error"));
        }
        if table_output {
            let rows = shape.rows(&event["object"]);
            if !header_printed && !a.no_headers {
                let header = shape.header();
                widths.fit(&header);
                println!("{}", widths.line(&header));
                header_printed = true;
            }
            for row in rows {
                widths.fit(&row);
                println!("{}", widths.line(&row));
            }
        } else {
            print_objects(&output, t, vec![event["object"].clone()], true)?;
            if output == Output::Yaml {
                println!("---");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats() {
        assert_eq!(Output::parse(None).unwrap(), Output::Table);
        assert_eq!(Output::parse(Some("jsonpath={.a}")).unwrap(), Output::JsonPath("{.a}".into()));
        assert!(Output::parse(Some("xml")).is_err());
        assert_eq!(urlencode("tier in (a,b)"), "tier%20in%20%28a%2Cb%29");
    }
}
