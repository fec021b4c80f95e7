//! `top nodes|pods`: CPU and memory use from the `metrics.k8s.io/v1beta1` API
//! (NodeMetrics, PodMetrics), in kubectl's columns and units (CPU in millicores, memory in
//! MiB, node percentages of the Node's allocatable).

use anyhow::Context;
use serde_json::Value;

use super::get::urlencode;
use super::{Ctx, table};
use crate::api::fields::parse_quantity;

const METRICS_GROUP: &str = "metrics.k8s.io";
const METRICS_BASE: &str = "/apis/metrics.k8s.io/v1beta1";

/// `top` and what it shows.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(subcommand)]
    what: TopWhat,
}

#[derive(clap::Subcommand, Debug)]
enum TopWhat {
    /// CPU and memory of nodes, with their share of what the node can allocate.
    #[command(alias = "nodes", alias = "no")]
    Node(NodeTopArgs),
    /// CPU and memory of pods (or of their containers).
    #[command(alias = "pods", alias = "po")]
    Pod(PodTopArgs),
}

/// `top node` flags.
#[derive(clap::Args, Debug)]
struct NodeTopArgs {
    /// One node; default: all.
    name: Option<String>,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Sort by `cpu` or `memory`, the largest first.
    #[arg(long)]
    sort_by: Option<String>,
    /// Percentages of capacity instead of allocatable.
    #[arg(long)]
    show_capacity: bool,
    /// Leave out the header line.
    #[arg(long)]
    no_headers: bool,
}

/// `top pod` flags.
#[derive(clap::Args, Debug)]
struct PodTopArgs {
    /// One pod; default: all in the namespace.
    name: Option<String>,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// One line per container.
    #[arg(long)]
    containers: bool,
    /// Sort by `cpu` or `memory`, the largest first.
    #[arg(long)]
    sort_by: Option<String>,
    /// Leave out the header line.
    #[arg(long)]
    no_headers: bool,
}

/// Why `top` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The server serves no `metrics.k8s.io` group.
    #[error("Metrics API not available")]
    MetricsUnavailable,
    /// Pods exist but have no metrics yet (just started).
    #[error("metrics not available yet")]
    NotYet,
    /// `--sort-by` names neither cpu nor memory.
    #[error("--sort-by accepts only cpu or memory, not {0:?}")]
    BadSortBy(String),
}

/// CPU in millicores and memory in bytes, each rounded up as kubectl's quantities are.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Usage {
    cpu_milli: i128,
    memory_bytes: i128,
}

impl Usage {
    fn of(usage: &Value) -> Usage {
        let q = |key: &str| usage[key].as_str().and_then(|s| parse_quantity(s).ok());
        Usage { cpu_milli: q("cpu").map_or(0, |q| q.milli), memory_bytes: q("memory").map_or(0, |q| q.units()) }
    }

    fn add(self, other: Usage) -> Usage {
        Usage { cpu_milli: self.cpu_milli + other.cpu_milli, memory_bytes: self.memory_bytes + other.memory_bytes }
    }

    fn cpu(&self) -> String {
        format!("{}m", self.cpu_milli)
    }

    fn memory(&self) -> String {
        format!("{}Mi", self.memory_bytes / (1024 * 1024))
    }
}

/// `used` as a whole percentage of `available` (truncated, as kubectl does).
fn percent(used: i128, available: i128) -> String {
    if available <= 0 {
        return "<unknown>".into();
    }
    format!("{}%", (used as f64 / available as f64 * 100.0) as i64)
}

/// What `--sort-by` sorts on.
type SortKey = fn(&Usage) -> i128;

fn sort_key(sort_by: Option<&str>) -> Result<Option<SortKey>, TopError> {
    match sort_by {
        None | Some("") => Ok(None),
        Some("cpu") => Ok(Some(|u| u.cpu_milli)),
        Some("memory") => Ok(Some(|u| u.memory_bytes)),
        Some(other) => Err(TopError::BadSortBy(other.to_string())),
    }
}

/// The `top node` rows from a NodeMetricsList and a NodeList: every listed node, those
/// without metrics last with `<unknown>`.
fn node_rows(
    metrics: &Value,
    nodes: &Value,
    capacity: bool,
    sort_by: Option<&str>,
) -> Result<Vec<Vec<String>>, TopError> {
    let field = if capacity { "capacity" } else { "allocatable" };
    let mut measured: Vec<(String, Usage)> = metrics["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["metadata"]["name"].as_str()?.to_string(), Usage::of(&m["usage"]))))
        .collect();
    measured.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(key) = sort_key(sort_by)? {
        measured.sort_by_key(|(_, u)| std::cmp::Reverse(key(u)));
    }
    let node_list = nodes["items"].as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for (name, usage) in &measured {
        let Some(node) = node_list.iter().find(|n| n["metadata"]["name"] == name.as_str()) else { continue };
        let available = Usage::of(&node["status"][field]);
        rows.push(vec![
            name.clone(),
            usage.cpu(),
            percent(usage.cpu_milli, available.cpu_milli),
            usage.memory(),
            percent(usage.memory_bytes, available.memory_bytes),
        ]);
    }
    let mut missing: Vec<String> = node_list
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .filter(|n| !measured.iter().any(|(m, _)| m == n))
        .map(String::from)
        .collect();
    missing.sort();
    for name in missing {
        let unknown = "<unknown>".to_string();
        rows.push(vec![name, unknown.clone(), unknown.clone(), unknown.clone(), unknown]);
    }
    Ok(rows)
}

/// One PodMetrics: its containers' use.
struct PodUsage {
    namespace: String,
    name: String,
    containers: Vec<(String, Usage)>,
}

impl PodUsage {
    fn total(&self) -> Usage {
        self.containers.iter().fold(Usage::default(), |sum, (_, u)| sum.add(*u))
    }
}

/// The `top pod` header and rows from a PodMetricsList.
fn pod_rows(
    metrics: &Value,
    containers: bool,
    namespaces: bool,
    sort_by: Option<&str>,
) -> Result<(Vec<String>, Vec<Vec<String>>), TopError> {
    let mut pods: Vec<PodUsage> = metrics["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| PodUsage {
            namespace: m["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
            name: m["metadata"]["name"].as_str().unwrap_or("").to_string(),
            containers: m["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["name"].as_str().unwrap_or("").to_string(), Usage::of(&c["usage"])))
                .collect(),
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    if let Some(key) = sort_key(sort_by)? {
        pods.sort_by_key(|p| std::cmp::Reverse(key(&p.total())));
    }
    let mut header: Vec<String> = Vec::new();
    if namespaces {
        header.push("NAMESPACE".into());
    }
    if containers {
        header.extend(["POD", "NAME"].map(String::from));
    } else {
        header.push("NAME".into());
    }
    header.extend(["CPU(cores)", "MEMORY(bytes)"].map(String::from));
    let mut rows = Vec::new();
    for pod in &pods {
        let lead = |row: &mut Vec<String>| {
            if namespaces {
                row.push(pod.namespace.clone());
            }
            row.push(pod.name.clone());
        };
        if containers {
            for (c, usage) in &pod.containers {
                let mut row = Vec::new();
                lead(&mut row);
                row.extend([c.clone(), usage.cpu(), usage.memory()]);
                rows.push(row);
            }
        } else {
            let usage = pod.total();
            let mut row = Vec::new();
            lead(&mut row);
            row.extend([usage.cpu(), usage.memory()]);
            rows.push(row);
        }
    }
    Ok((header, rows))
}

fn print(header: Vec<String>, rows: Vec<Vec<String>>, no_headers: bool) {
    if no_headers {
        let mut w = table::Widths::default();
        rows.iter().for_each(|r| w.fit(r));
        rows.iter().for_each(|r| println!("{}", w.line(r)));
    } else {
        table::print(&header, rows);
    }
}

fn with_selector(path: String, selector: &Option<String>) -> String {
    match selector {
        Some(s) => format!("{path}?labelSelector={}", urlencode(s)),
        None => path,
    }
}

async fn top_nodes(ctx: &Ctx, a: NodeTopArgs) -> anyhow::Result<()> {
    let (metrics, nodes) = match &a.name {
        Some(name) => {
            let m = ctx.client.get(&format!("{METRICS_BASE}/nodes/{name}")).await?;
            let n = ctx.client.get(&format!("/api/v1/nodes/{name}")).await?;
            (serde_json::json!({"items": [m]}), serde_json::json!({"items": [n]}))
        }
        None => (
            ctx.client.get(&with_selector(format!("{METRICS_BASE}/nodes"), &a.selector)).await?,
            ctx.client.get(&with_selector("/api/v1/nodes".into(), &a.selector)).await?,
        ),
    };
    let rows = node_rows(&metrics, &nodes, a.show_capacity, a.sort_by.as_deref())?;
    let header = ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"].map(String::from).to_vec();
    print(header, rows, a.no_headers);
    Ok(())
}

async fn top_pods(ctx: &Ctx, a: PodTopArgs) -> anyhow::Result<()> {
    let scope = match ctx.list_namespace() {
        Some(ns) => format!("namespaces/{ns}/"),
        None => String::new(),
    };
    let metrics = match &a.name {
        Some(name) => {
            let m = ctx.client.get(&format!("{METRICS_BASE}/namespaces/{}/pods/{name}", ctx.namespace)).await?;
            serde_json::json!({"items": [m]})
        }
        None => ctx.client.get(&with_selector(format!("{METRICS_BASE}/{scope}pods"), &a.selector)).await?,
    };
    if metrics["items"].as_array().is_none_or(Vec::is_empty) {
        // Pods that exist but have no metrics have only just started.
        let pods = ctx
            .client
            .get(&with_selector(format!("/api/v1/{scope}pods"), &a.selector))
            .await
            .context("listing pods")?;
        if pods["items"].as_array().is_some_and(|p| !p.is_empty()) {
            return Err(TopError::NotYet.into());
        }
        match ctx.list_namespace() {
            Some(ns) => eprintln!("No resources found in {ns} namespace."),
            None => eprintln!("No resources found"),
        }
        return Ok(());
    }
    let (header, rows) = pod_rows(&metrics, a.containers, ctx.all_namespaces, a.sort_by.as_deref())?;
    print(header, rows, a.no_headers);
    Ok(())
}

/// Runs `top`.
pub async fn run(ctx: &Ctx, a: TopArgs) -> anyhow::Result<()> {
    if !ctx.discovery.all().iter().any(|r| r.group == METRICS_GROUP) {
        return Err(TopError::MetricsUnavailable.into());
    }
    match a.what {
        TopWhat::Node(n) => top_nodes(ctx, n).await,
        TopWhat::Pod(p) => top_pods(ctx, p).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_metrics() -> Value {
        json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": [
            {"metadata": {"name": "pi-b"}, "timestamp": "2024-05-01T10:00:00Z", "window": "10s",
             "usage": {"cpu": "1250000000n", "memory": "524288Ki"}},
            {"metadata": {"name": "pi-a"}, "timestamp": "2024-05-01T10:00:00Z", "window": "10s",
             "usage": {"cpu": "123456n", "memory": "1024Ki"}}
        ]})
    }

    fn nodes() -> Value {
        json!({"items": [
            {"metadata": {"name": "pi-a"}, "status": {"allocatable": {"cpu": "4", "memory": "3884Mi"},
                                                      "capacity": {"cpu": "4", "memory": "4Gi"}}},
            {"metadata": {"name": "pi-b"}, "status": {"allocatable": {"cpu": "4", "memory": "1Gi"},
                                                      "capacity": {"cpu": "4", "memory": "2Gi"}}},
            {"metadata": {"name": "pi-c"}, "status": {"allocatable": {"cpu": "4", "memory": "1Gi"}}}
        ]})
    }

    #[test]
    fn quantities_in_kubectl_units() {
        let u = Usage::of(&json!({"cpu": "123456n", "memory": "1024Ki"}));
        assert_eq!((u.cpu(), u.memory()), ("1m".to_string(), "1Mi".to_string()), "CPU rounds up, memory down");
        let u = Usage::of(&json!({"cpu": "250m", "memory": "1536Mi"}));
        assert_eq!((u.cpu(), u.memory()), ("250m".to_string(), "1536Mi".to_string()));
        let u = Usage::of(&json!({"cpu": "2", "memory": "1G"}));
        assert_eq!((u.cpu(), u.memory()), ("2000m".to_string(), "953Mi".to_string()));
        assert_eq!(percent(1250, 4000), "31%");
        assert_eq!(percent(1, 0), "<unknown>");
    }

    #[test]
    fn node_table() {
        let rows = node_rows(&node_metrics(), &nodes(), false, None).unwrap();
        let mut w = table::Widths::default();
        let header = ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"].map(String::from).to_vec();
        w.fit(&header);
        rows.iter().for_each(|r| w.fit(r));
        let lines: Vec<String> = std::iter::once(&header).chain(&rows).map(|r| w.line(r)).collect();
        assert_eq!(
            lines,
            [
                "NAME   CPU(cores)   CPU%        MEMORY(bytes)   MEMORY%",
                "pi-a   1m           0%          1Mi             0%",
                "pi-b   1250m        31%         512Mi           50%",
                "pi-c   <unknown>    <unknown>   <unknown>       <unknown>",
            ]
        );
        let by_capacity = node_rows(&node_metrics(), &nodes(), true, None).unwrap();
        assert_eq!(by_capacity[1][4], "25%");
        let by_cpu = node_rows(&node_metrics(), &nodes(), false, Some("cpu")).unwrap();
        assert_eq!(by_cpu[0][0], "pi-b");
        assert!(matches!(node_rows(&node_metrics(), &nodes(), false, Some("disk")), Err(TopError::BadSortBy(_))));
    }

    fn pod_metrics() -> Value {
        json!({"kind": "PodMetricsList", "items": [
            {"metadata": {"name": "web-1", "namespace": "shop"}, "containers": [
                {"name": "web", "usage": {"cpu": "250m", "memory": "64Mi"}},
                {"name": "side", "usage": {"cpu": "5000000n", "memory": "2048Ki"}}]},
            {"metadata": {"name": "db-0", "namespace": "shop"}, "containers": [
                {"name": "db", "usage": {"cpu": "1", "memory": "256Mi"}}]}
        ]})
    }

    #[test]
    fn pod_tables() {
        let (header, rows) = pod_rows(&pod_metrics(), false, false, None).unwrap();
        assert_eq!(header, ["NAME", "CPU(cores)", "MEMORY(bytes)"]);
        assert_eq!(rows, [["db-0", "1000m", "256Mi"], ["web-1", "255m", "66Mi"]]);
        let (header, rows) = pod_rows(&pod_metrics(), true, false, None).unwrap();
        assert_eq!(header, ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]);
        assert_eq!(rows[1], ["web-1", "web", "250m", "64Mi"]);
        assert_eq!(rows[2], ["web-1", "side", "5m", "2Mi"]);
        let (header, rows) = pod_rows(&pod_metrics(), false, true, Some("memory")).unwrap();
        assert_eq!(header, ["NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"]);
        assert_eq!(rows[0], ["shop", "db-0", "1000m", "256Mi"]);
    }
}
