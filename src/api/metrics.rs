//! `metrics.k8s.io/v1beta1` built in: NodeMetrics and PodMetrics, what `kubectl top`, the
//! Python client and autoscalers read from metrics-server, without metrics-server's pod or
//! its background scraping. Each request asks the nodes it needs for their kubelet Summary
//! (`GET /stats/summary` on the node's endpoint, see `agent::kubelet`) concurrently and
//! with a short timeout, and keeps each node's answer for [`CACHE_FOR`], so repeated
//! `kubectl top` calls do not reach the boards again. As metrics-server: nodes that do not
//! answer are left out, and so are pods that are not Running or have no sample yet.
//!
//! Called by the API's routing (`/apis/metrics.k8s.io/v1beta1/...`) and discovery; calls
//! the store through `Api::list`/`Api::get_object`, the authorizer, and [`node_proxy`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::auth::{Attributes, User};
use super::http::{Body, Query, RequestBody, json_response};
use super::objects::{Target, now_rfc3339};
use super::status::ApiError;
use super::table::{IncludeObject, wants_table};
use super::{Api, node_proxy, resources};
use crate::pki::Pki;

/// The API group `kubectl top` looks for in discovery.
pub const GROUP: &str = "metrics.k8s.io";
/// The one version served (the one every kubectl since 1.11 asks for).
pub const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// How long a node's summary is reused: the agents sample every 10 s, so a fresher answer
/// would say nothing new.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// How long a node may take to answer before it is left out of this answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most a node's summary may weigh (a full 110-pod node's is about 100 KiB).
const MAX_SUMMARY_BYTES: usize = 8 << 20;
/// The time the agents' CPU rates cover: their sampling interval.
const WINDOW: &str = "10s";

/// The `APIResourceList` of `metrics.k8s.io/v1beta1`, for discovery.
pub fn resource_list() -> Value {
    let entry = |name: &str, namespaced: bool, kind: &str| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": [entry("nodes", false, "NodeMetrics"), entry("pods", true, "PodMetrics")]})
}

/// A Kubernetes quantity of CPU from nanocores (`"123456n"`).
pub fn cpu_quantity(nano_cores: u64) -> String {
    if nano_cores == 0 { "0".into() } else { format!("{nano_cores}n") }
}

/// A Kubernetes quantity of memory from bytes: in Ki when whole (cgroup figures are whole
/// pages), else in bytes.
pub fn memory_quantity(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b % 1024 == 0 => format!("{}Ki", b / 1024),
        b => b.to_string(),
    }
}

/// The parts of a kubelet Summary that metrics need (the agent's `stats::Summary`; its
/// own types live below `agent`, which this module may not call).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeSummary {
    node: UsageOf,
    pods: Vec<PodSummary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsageOf {
    cpu: Option<CpuSummary>,
    memory: Option<MemorySummary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct CpuSummary {
    time: String,
    usage_nano_cores: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct MemorySummary {
    working_set_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodSummary {
    pod_ref: PodRef,
    containers: Vec<ContainerSummary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodRef {
    uid: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContainerSummary {
    name: String,
    #[serde(flatten)]
    usage: UsageOf,
}

/// One CPU and memory figure, with when it was sampled.
#[derive(Debug, Clone, PartialEq)]
struct Usage {
    time: String,
    nano_cores: u64,
    working_set_bytes: u64,
}

impl UsageOf {
    /// The figure, when both a CPU rate and a working set were sampled.
    fn usage(&self) -> Option<Usage> {
        let cpu = self.cpu.as_ref()?;
        Some(Usage {
            time: cpu.time.clone(),
            nano_cores: cpu.usage_nano_cores?,
            working_set_bytes: self.memory.as_ref()?.working_set_bytes?,
        })
    }
}

impl Usage {
    fn to_value(&self) -> Value {
        json!({"cpu": cpu_quantity(self.nano_cores), "memory": memory_quantity(self.working_set_bytes)})
    }
}

/// The metadata of a metrics object for `obj` (its name, namespace and labels).
fn metadata(obj: &Value) -> Value {
    let mut m = json!({"name": obj["metadata"]["name"], "creationTimestamp": now_rfc3339()});
    if let Some(ns) = obj["metadata"]["namespace"].as_str() {
        m["namespace"] = json!(ns);
    }
    if let Some(labels) = obj["metadata"].get("labels").filter(|l| l.is_object()) {
        m["labels"] = labels.clone();
    }
    m
}

/// The NodeMetrics of `node` from its summary, when the node has a CPU rate yet.
fn node_metrics(node: &Value, summary: &NodeSummary) -> Option<Value> {
    let usage = summary.node.usage()?;
    Some(json!({"kind": "NodeMetrics", "apiVersion": API_VERSION, "metadata": metadata(node),
        "timestamp": usage.time, "window": WINDOW, "usage": usage.to_value()}))
}

/// The PodMetrics of `pod` from its node's summary: `None` unless every running container
/// has a sample with a rate (metrics-server's rule: a partial pod would under-report).
fn pod_metrics(pod: &Value, summary: &NodeSummary) -> Option<Value> {
    let uid = pod["metadata"]["uid"].as_str()?;
    let found = summary.pods.iter().find(|p| p.pod_ref.uid == uid)?;
    if found.containers.is_empty() {
        return None;
    }
    let usages: Vec<(&str, Usage)> =
        found.containers.iter().map(|c| Some((c.name.as_str(), c.usage.usage()?))).collect::<Option<_>>()?;
    let time = usages.iter().map(|(_, u)| u.time.as_str()).max().unwrap_or_default().to_string();
    let containers: Vec<Value> = usages.iter().map(|(name, u)| json!({"name": name, "usage": u.to_value()})).collect();
    Some(json!({"kind": "PodMetrics", "apiVersion": API_VERSION, "metadata": metadata(pod),
        "timestamp": time, "window": WINDOW, "containers": containers}))
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items})
}

/// The amount a quantity written by [`cpu_quantity`] or [`memory_quantity`] stands for, in
/// nanocores or bytes.
fn quantity_amount(q: &str) -> u64 {
    let (digits, scale) = match q.strip_suffix('n') {
        Some(d) => (d, 1),
        None => q.strip_suffix("Ki").map_or((q, 1), |d| (d, 1024)),
    };
    digits.parse::<u64>().unwrap_or(0).saturating_mul(scale)
}

/// `answer` (one metrics object or a list) as a `meta.k8s.io/v1` Table with
/// metrics-server's columns, for `kubectl get nodes.metrics.k8s.io` and `podmetrics`: a
/// pod's usage is the sum of its containers'.
fn as_table(answer: &Value, include: IncludeObject) -> Value {
    let items: Vec<&Value> = match answer["items"].as_array() {
        Some(items) => items.iter().collect(),
        None => vec![answer],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|m| {
            let usages: Vec<&Value> = match m["containers"].as_array() {
                Some(cs) => cs.iter().map(|c| &c["usage"]).collect(),
                None => vec![&m["usage"]],
            };
            let sum = |key: &str| usages.iter().map(|u| quantity_amount(u[key].as_str().unwrap_or("0"))).sum::<u64>();
            let object = match include {
                IncludeObject::None => Value::Null,
                IncludeObject::Object => (*m).clone(),
                IncludeObject::Metadata => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": m["metadata"]}),
            };
            json!({"cells": [m["metadata"]["name"], cpu_quantity(sum("cpu")), memory_quantity(sum("memory")), m["window"]],
                   "object": object})
        })
        .collect();
    let column = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0});
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": [column("Name", "name"), column("CPU", ""), column("Memory", ""), column("Window", "")],
        "rows": rows})
}

/// A node's summary, or why it is left out.
type Fetched = Result<Arc<NodeSummary>, String>;

/// When a node's fetch began, and its outcome once there is one.
type Slot = (Instant, Arc<OnceCell<Fetched>>);

/// Nodes' summaries for [`CACHE_FOR`]. Concurrent requests for the same node share one
/// fetch; the lock is held only to find the slot, never across the fetch.
#[derive(Default)]
pub struct SummaryCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl SummaryCache {
    /// The summary of `node` (a Node object), fetched unless a recent one is kept.
    async fn get(&self, pki: &Pki, node: &Value) -> Fetched {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.retain(|_, (made, _)| made.elapsed() < CACHE_FOR);
            slots.entry(name.to_string()).or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new()))).1.clone()
        };
        slot.get_or_init(|| fetch(pki, node)).await.clone()
    }
}

/// Asks `node` for its summary, within [`NODE_TIMEOUT`].
async fn fetch(pki: &Pki, node: &Value) -> Fetched {
    let asked = async {
        let resp =
            node_proxy::get(pki, node, "/stats/summary?only_cpu_and_memory=true").await.map_err(|e| e.message)?;
        let body = Limited::new(resp.into_body(), MAX_SUMMARY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading its summary: {e}"))?
            .to_bytes();
        serde_json::from_slice::<NodeSummary>(&body).map_err(|e| format!("its summary is not valid: {e}"))
    };
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let fetched = match tokio::time::timeout(NODE_TIMEOUT, asked).await {
        Ok(r) => r.map(Arc::new),
        Err(_) => Err(format!("no answer within {} s", NODE_TIMEOUT.as_secs())),
    };
    if let Err(why) = &fetched {
        tracing::info!(node = %name, error = %why, "node left out of metrics: it did not give its summary");
    }
    fetched
}

/// What a metrics path names.
#[derive(Debug, PartialEq)]
enum Asked<'a> {
    Nodes(Option<&'a str>),
    Pods { namespace: Option<&'a str>, name: Option<&'a str> },
}

/// The path after `/apis/metrics.k8s.io/v1beta1/`.
fn parse_path<'a>(rest: &[&'a str]) -> Option<Asked<'a>> {
    match rest {
        ["nodes"] => Some(Asked::Nodes(None)),
        ["nodes", name] => Some(Asked::Nodes(Some(name))),
        ["pods"] => Some(Asked::Pods { namespace: None, name: None }),
        ["namespaces", ns, "pods"] => Some(Asked::Pods { namespace: Some(ns), name: None }),
        ["namespaces", ns, "pods", name] => Some(Asked::Pods { namespace: Some(ns), name: Some(name) }),
        _ => None,
    }
}

fn not_found(resource: &str, name: &str, why: &str) -> ApiError {
    let mut e = ApiError::not_found(resource, GROUP, name);
    e.message = format!("{}: {why}", e.message);
    e
}

impl Api {
    /// `GET /apis/metrics.k8s.io/v1beta1/<rest>`: node and pod metrics, authorized as
    /// get/list of `nodes`/`pods` in group `metrics.k8s.io`.
    pub(super) async fn metrics(
        &self,
        user: &User,
        rest: &[&str],
        req: &Request<RequestBody>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path();
        let asked = parse_path(rest).ok_or_else(|| ApiError::not_found_path(path))?;
        let q = Query::parse(req.uri().query());
        if req.method() != hyper::Method::GET || q.flag("watch") {
            return Err(ApiError::method_not_allowed(format!(
                "{} is not supported on {path}: metrics are read with get and list only",
                if q.flag("watch") { "watch" } else { req.method().as_str() }
            )));
        }
        let (resource, namespace, name) = match asked {
            Asked::Nodes(name) => ("nodes", None, name),
            Asked::Pods { namespace, name } => ("pods", namespace, name),
        };
        let verb = if name.is_some() { "get" } else { "list" };
        self.authorize(user, &Attributes { verb, group: GROUP, resource, sub: None, namespace, name })?;
        let _slot = self.inflight_slot(&user.name)?;
        // Only the selectors reach the store's list: paging is not offered, as upstream.
        let mut selectors = Query::default();
        for key in ["labelSelector", "fieldSelector"] {
            if let Some(v) = q.get(key) {
                selectors.0.insert(key.to_string(), v.to_string());
            }
        }
        let answer = match (resource, name) {
            ("nodes", Some(name)) => self.one_node_metrics(name).await?,
            ("nodes", None) => list_of("NodeMetricsList", self.node_metrics(&selectors).await?),
            (_, Some(name)) => self.one_pod_metrics(namespace.unwrap_or("default"), name).await?,
            (_, None) => list_of("PodMetricsList", self.pod_metrics(namespace, &selectors).await?),
        };
        let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
        if wants_table(accept) {
            return Ok(json_response(200, &as_table(&answer, IncludeObject::parse(q.get("includeObject")))));
        }
        Ok(json_response(200, &answer))
    }

    /// The CA whose client certificates nodes accept.
    fn node_pki(&self) -> Result<Arc<Pki>, ApiError> {
        self.opts
            .join
            .as_ref()
            .map(|j| j.pki.clone())
            .ok_or_else(|| ApiError::internal("this server has no CA to reach nodes with: metrics are unavailable"))
    }

    fn target(plural: &str, namespace: Option<&str>, name: Option<&str>) -> Result<Target, ApiError> {
        let res =
            resources::find("", "v1", plural).ok_or_else(|| ApiError::internal(format!("no {plural} resource")))?;
        Ok(Target { res, namespace: namespace.map(str::to_string), name: name.map(str::to_string), sub: None })
    }

    /// The summaries of `nodes`, asked concurrently.
    async fn summaries<'n>(&self, nodes: &'n [Value]) -> Result<Vec<(&'n Value, Fetched)>, ApiError> {
        let pki = self.node_pki()?;
        let fetched = futures_util::future::join_all(nodes.iter().map(|n| self.metrics_cache.get(&pki, n))).await;
        Ok(nodes.iter().zip(fetched).collect())
    }

    async fn node_metrics(&self, selectors: &Query) -> Result<Vec<Value>, ApiError> {
        let nodes = self.list(&Self::target("nodes", None, None)?, selectors, false)?;
        let nodes = nodes["items"].as_array().cloned().unwrap_or_default();
        let summaries = self.summaries(&nodes).await?;
        Ok(summaries.into_iter().filter_map(|(node, s)| node_metrics(node, s.ok()?.as_ref())).collect())
    }

    async fn one_node_metrics(&self, name: &str) -> Result<Value, ApiError> {
        let node = self.get_object(&Self::target("nodes", None, Some(name))?).map_err(|e| match e.code {
            404 => not_found("nodemetrics", name, &format!("there is no node {name}")),
            _ => e,
        })?;
        let mut summaries = self.summaries(std::slice::from_ref(&node)).await?;
        let (_, fetched) = summaries.pop().ok_or_else(|| ApiError::internal("no summary asked"))?;
        let summary = fetched
            .map_err(|why| not_found("nodemetrics", name, &format!("node {name} did not give its metrics ({why})")))?;
        node_metrics(&node, &summary).ok_or_else(|| {
            not_found(
                "nodemetrics",
                name,
                &format!("node {name} has no CPU sample yet (it samples every 10 s): retry shortly"),
            )
        })
    }

    /// The summaries of the nodes `pods` run on, by node name; nodes that did not answer
    /// are missing.
    async fn summaries_for(&self, pods: &[Value]) -> Result<HashMap<String, Arc<NodeSummary>>, ApiError> {
        let wanted: HashSet<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let nodes = self.list(&Self::target("nodes", None, None)?, &Query::default(), false)?;
        let nodes: Vec<Value> = nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["metadata"]["name"].as_str().is_some_and(|name| wanted.contains(name)))
            .cloned()
            .collect();
        let summaries = self.summaries(&nodes).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|(node, s)| Some((node["metadata"]["name"].as_str()?.to_string(), s.ok()?)))
            .collect())
    }

    async fn pod_metrics(&self, namespace: Option<&str>, selectors: &Query) -> Result<Vec<Value>, ApiError> {
        let pods = self.list(&Self::target("pods", namespace, None)?, selectors, false)?;
        let running: Vec<Value> =
            pods["items"].as_array().into_iter().flatten().filter(|p| is_running(p)).cloned().collect();
        let summaries = self.summaries_for(&running).await?;
        Ok(running.iter().filter_map(|p| pod_metrics(p, summaries.get(p["spec"]["nodeName"].as_str()?)?)).collect())
    }

    async fn one_pod_metrics(&self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let key = format!("{namespace}/{name}");
        let pod = self.get_object(&Self::target("pods", Some(namespace), Some(name))?).map_err(|e| match e.code {
            404 => not_found("podmetrics", &key, &format!("there is no pod {name} in namespace {namespace}")),
            _ => e,
        })?;
        if !is_running(&pod) {
            let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
            return Err(not_found("podmetrics", &key, &format!("pod {name} is {phase}, not Running")));
        }
        let summaries = self.summaries_for(std::slice::from_ref(&pod)).await?;
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let summary = summaries
            .get(node)
            .ok_or_else(|| not_found("podmetrics", &key, &format!("its node {node} did not give its metrics")))?;
        pod_metrics(&pod, summary).ok_or_else(|| {
            not_found(
                "podmetrics",
                &key,
                &format!("pod {name} has no sample yet (nodes sample every 10 s): retry shortly"),
            )
        })
    }
}

fn is_running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_nanocores_and_kibibytes() {
        assert_eq!(cpu_quantity(123_456), "123456n");
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(memory_quantity(1024 * 1024), "1024Ki");
        assert_eq!(memory_quantity(4096 * 3), "12Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(memory_quantity(0), "0");
        // What kubectl shows from them.
        let q: k8s_openapi::apimachinery::pkg::api::resource::Quantity =
            serde_json::from_value(json!(cpu_quantity(250_000_000))).unwrap();
        assert_eq!(q.0, "250000000n");
    }

    fn summary() -> NodeSummary {
        serde_json::from_value(json!({
            "node": {"nodeName": "n1",
                     "cpu": {"time": "2025-01-02T03:04:05Z", "usageNanoCores": 250_000_000u64, "usageCoreNanoSeconds": 9},
                     "memory": {"time": "2025-01-02T03:04:05Z", "workingSetBytes": 268_435_456u64, "usageBytes": 1}},
            "pods": [
                {"podRef": {"name": "busy", "namespace": "default", "uid": "u-busy"},
                 "cpu": {"time": "t", "usageNanoCores": 1}, "memory": {"workingSetBytes": 1},
                 "containers": [
                    {"name": "main", "startTime": "x", "cpu": {"time": "2025-01-02T03:04:05Z", "usageNanoCores": 990_000_000u64},
                     "memory": {"workingSetBytes": 4_194_304u64}},
                    {"name": "side", "cpu": {"time": "2025-01-02T03:04:06Z", "usageNanoCores": 1_000_000u64},
                     "memory": {"workingSetBytes": 1_048_576u64}}]},
                {"podRef": {"name": "new", "namespace": "default", "uid": "u-new"},
                 "containers": [{"name": "main", "cpu": {"time": "t", "usageCoreNanoSeconds": 5},
                                 "memory": {"workingSetBytes": 4096}}]}
            ]}))
        .unwrap()
    }

    fn pod(name: &str, uid: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": "x"}},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn node_metrics_carry_usage_timestamp_and_window() {
        let node = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}});
        let m = node_metrics(&node, &summary()).unwrap();
        assert_eq!(m["kind"], "NodeMetrics");
        assert_eq!(m["apiVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(m["metadata"]["name"], "n1");
        assert_eq!(m["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert_eq!((m["timestamp"].as_str(), m["window"].as_str()), (Some("2025-01-02T03:04:05Z"), Some("10s")));
        assert_eq!(m["usage"], json!({"cpu": "250000000n", "memory": "262144Ki"}));
        let no_rate: NodeSummary =
            serde_json::from_value(json!({"node": {"cpu": {"time": "t", "usageCoreNanoSeconds": 1}}})).unwrap();
        assert!(node_metrics(&node, &no_rate).is_none(), "a node's first sample has no rate yet");
    }

    #[test]
    fn pod_metrics_list_each_container_and_need_a_rate_for_all() {
        let m = pod_metrics(&pod("busy", "u-busy"), &summary()).unwrap();
        assert_eq!(m["kind"], "PodMetrics");
        assert_eq!(
            (m["metadata"]["namespace"].as_str(), m["metadata"]["labels"]["app"].as_str()),
            (Some("default"), Some("x"))
        );
        assert_eq!(m["timestamp"], "2025-01-02T03:04:06Z");
        assert_eq!(
            m["containers"],
            json!([{"name": "main", "usage": {"cpu": "990000000n", "memory": "4096Ki"}},
                   {"name": "side", "usage": {"cpu": "1000000n", "memory": "1024Ki"}}])
        );
        assert!(pod_metrics(&pod("new", "u-new"), &summary()).is_none(), "no rate yet");
        assert!(pod_metrics(&pod("busy", "u-other"), &summary()).is_none(), "a pod of the same name, recreated");
    }

    #[test]
    fn tables_have_metrics_servers_columns_and_sum_containers() {
        let m = pod_metrics(&pod("busy", "u-busy"), &summary()).unwrap();
        let t = as_table(&list_of("PodMetricsList", vec![m]), IncludeObject::Metadata);
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "CPU", "Memory", "Window"]);
        assert_eq!(t["rows"][0]["cells"], json!(["busy", "991000000n", "5120Ki", "10s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(quantity_amount("1000"), 1000);
    }

    #[test]
    fn paths_name_nodes_and_pods() {
        assert_eq!(parse_path(&["nodes"]), Some(Asked::Nodes(None)));
        assert_eq!(parse_path(&["nodes", "n1"]), Some(Asked::Nodes(Some("n1"))));
        assert_eq!(parse_path(&["pods"]), Some(Asked::Pods { namespace: None, name: None }));
        assert_eq!(
            parse_path(&["namespaces", "default", "pods", "web"]),
            Some(Asked::Pods { namespace: Some("default"), name: Some("web") })
        );
        assert_eq!(parse_path(&["namespaces", "default", "nodes"]), None);
        assert_eq!(parse_path(&["pods", "web"]), None);
    }

    #[test]
    fn discovery_lists_the_group() {
        let groups = super::super::discovery::group_list();
        let metrics = groups["groups"].as_array().unwrap().iter().find(|g| g["name"] == GROUP).unwrap();
        assert_eq!(metrics["preferredVersion"]["groupVersion"], API_VERSION);
        let group = super::super::discovery::group(GROUP).unwrap();
        assert_eq!(group["versions"][0]["version"], VERSION);
        let list = super::super::discovery::resource_list(GROUP, VERSION).unwrap();
        let kinds: Vec<&str> =
            list["resources"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["NodeMetrics", "PodMetrics"]);
    }
}
