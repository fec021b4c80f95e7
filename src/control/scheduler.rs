//! The scheduler: binds pending pods to nodes. Its decision is the pure function
//! [`place`]: filters (unschedulable nodes, taints and tolerations, nodeSelector and
//! required node affinity, resource requests against what is left of allocatable, pod
//! count, host ports), then scores (preferred node affinity, PreferNoSchedule taints,
//! spreading pods of the same owner, the least allocated node). A pod that fits nowhere
//! gets `PodScheduled=False` and a `FailedScheduling` event with upstream's per-node
//! summary, and is tried again when nodes or pods change (the watches say so), not on a
//! timer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{Ctx, now_rfc3339, s};
use crate::runtime::spec::quantity;

const COMPONENT: &str = "default-scheduler";

/// What a pod asks of a node: CPU in millicores, memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Requests {
    pub cpu: i128,
    pub memory: i128,
}

/// A pod's requests as upstream counts them: the sum over containers, or the largest init
/// container's when that is more.
pub fn requests(pod: &Value) -> Requests {
    let one = |c: &Value| Requests {
        cpu: quantity(&c["resources"]["requests"]["cpu"], true).unwrap_or(0),
        memory: quantity(&c["resources"]["requests"]["memory"], false).unwrap_or(0),
    };
    let mut sum = Requests::default();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let r = one(c);
        sum.cpu += r.cpu;
        sum.memory += r.memory;
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        let r = one(c);
        sum.cpu = sum.cpu.max(r.cpu);
        sum.memory = sum.memory.max(r.memory);
    }
    sum
}

/// Whether one of `tolerations` tolerates `taint` (key, value, effect; `Exists` matches any value).
pub fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || e == taint["effect"]);
        let key = s(t, "/key");
        let key_ok = key.is_empty() && s(t, "/operator") == "Exists" || key == s(taint, "/key");
        let value_ok = s(t, "/operator") == "Exists" || s(t, "/value") == s(taint, "/value");
        effect_ok && key_ok && value_ok
    })
}

fn expression_matches(e: &Value, labels: &Value) -> bool {
    let value = labels[s(e, "/key")].as_str();
    let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
    match s(e, "/operator") {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((number(value), number(values.first().copied())), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((number(value), number(values.first().copied())), (Some(a), Some(b)) if a < b),
        _ => false,
    }
}

/// A node selector term: every expression (labels) and field (`metadata.name`) matches.
fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let fields = json!({"metadata.name": node["metadata"]["name"]});
    let exprs = term["matchExpressions"].as_array().into_iter().flatten().all(|e| expression_matches(e, labels));
    let flds = term["matchFields"].as_array().into_iter().flatten().all(|e| expression_matches(e, &fields));
    let empty = term["matchExpressions"].as_array().is_none_or(Vec::is_empty)
        && term["matchFields"].as_array().is_none_or(Vec::is_empty);
    !empty && exprs && flds
}

/// Whether the pod's nodeSelector and required node affinity admit `node`.
pub fn selector_matches(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let by_selector =
        pod["spec"]["nodeSelector"].as_object().is_none_or(|sel| sel.iter().all(|(k, v)| labels[k] == *v));
    let required = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    let by_affinity =
        required["nodeSelectorTerms"].as_array().is_none_or(|terms| terms.iter().any(|t| term_matches(t, node)));
    by_selector && by_affinity
}

fn host_ports(pod: &Value) -> Vec<(String, i64)> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| {
            let port = p["hostPort"].as_i64().filter(|h| *h > 0)?;
            Some((p["protocol"].as_str().unwrap_or("TCP").to_string(), port))
        })
        .collect()
}

/// What a pod's PersistentVolumeClaims ask of its node.
#[derive(Clone, Debug)]
pub enum VolumeNeed {
    /// The claim does not exist.
    MissingClaim(String),
    /// Bound to a volume: the node must satisfy the volume's node affinity.
    Bound(Arc<Value>),
    /// Waiting for its first consumer: the node must have the class's disk kind; the claim
    /// is then annotated with the chosen node for the provisioner.
    WaitForConsumer { claim: Arc<Value>, class: Arc<Value> },
    /// Unbound and not ours to place (an Immediate class still provisioning).
    Unbound,
}

/// The volume needs of `pod` as the caches show its claims.
pub fn volume_needs(ctx: &Ctx, pod: &Value) -> Vec<VolumeNeed> {
    let ns = s(pod, "/metadata/namespace");
    let classes = ctx.storageclasses.list();
    let mut out = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(claim_name) = v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) else { continue };
        let Some(claim) = ctx.pvcs.get(&format!("{ns}/{claim_name}")) else {
            out.push(VolumeNeed::MissingClaim(claim_name.to_string()));
            continue;
        };
        let volume = s(&claim, "/spec/volumeName");
        if !volume.is_empty() {
            match ctx.pvs.get(volume) {
                Some(pv) => out.push(VolumeNeed::Bound(pv)),
                None => out.push(VolumeNeed::Unbound),
            }
            continue;
        }
        match super::storage::class_of(&claim, &classes) {
            Some(class) if s(class, "/volumeBindingMode") == "WaitForFirstConsumer" => {
                out.push(VolumeNeed::WaitForConsumer { claim: claim.clone(), class: class.clone() })
            }
            _ => out.push(VolumeNeed::Unbound),
        }
    }
    out
}

fn volumes_unfit(needs: &[VolumeNeed], node: &Value) -> Option<String> {
    for need in needs {
        match need {
            VolumeNeed::MissingClaim(name) => return Some(format!("persistentvolumeclaim \"{name}\" not found")),
            VolumeNeed::Unbound => return Some("pod has unbound immediate PersistentVolumeClaims".into()),
            VolumeNeed::Bound(pv) => {
                let terms = pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms").and_then(Value::as_array);
                if terms.is_some_and(|t| !t.iter().any(|term| term_matches(term, node))) {
                    return Some("node(s) had volume node affinity conflict".into());
                }
            }
            VolumeNeed::WaitForConsumer { class, .. } => {
                if !super::storage::node_fits_class(class, node) {
                    return Some("node(s) didn't find available persistent volumes to bind".into());
                }
            }
        }
    }
    None
}

/// A node and what its bound pods already take, summed once per scheduling cycle and
/// updated as pods are placed, so deciding costs O(nodes), not O(nodes x pods).
pub struct NodeInfo {
    pub node: Arc<Value>,
    name: String,
    used: Requests,
    pods: usize,
    ports: HashSet<(String, i64)>,
    /// Bound pods per owner uid, for spreading.
    owners: HashMap<String, usize>,
    alloc_cpu: Option<i128>,
    alloc_memory: Option<i128>,
    max_pods: i128,
}

impl NodeInfo {
    pub fn new(node: Arc<Value>) -> NodeInfo {
        let alloc = &node["status"]["allocatable"];
        NodeInfo {
            name: s(&node, "/metadata/name").to_string(),
            used: Requests::default(),
            pods: 0,
            ports: HashSet::new(),
            owners: HashMap::new(),
            alloc_cpu: quantity(&alloc["cpu"], true),
            alloc_memory: quantity(&alloc["memory"], false),
            max_pods: quantity(&alloc["pods"], false).unwrap_or(110),
            node,
        }
    }

    /// Counts a pod bound (or about to be bound) to this node.
    pub fn add(&mut self, pod: &Value) {
        self.add_placed(&Placed::of(pod));
    }

    fn add_placed(&mut self, p: &Placed) {
        self.used.cpu += p.requests.cpu;
        self.used.memory += p.requests.memory;
        self.pods += 1;
        self.ports.extend(p.ports.iter().cloned());
        if let Some(owner) = &p.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
    }
}

/// What a bound pod takes from its node, kept per pod as the cache changes (upstream's
/// scheduler cache): a cycle adds these up instead of reading every pod.
#[derive(Clone, Debug)]
struct Placed {
    node: String,
    requests: Requests,
    ports: Vec<(String, i64)>,
    owner: Option<String>,
}

impl Placed {
    fn of(pod: &Value) -> Placed {
        Placed {
            node: s(pod, "/spec/nodeName").to_string(),
            requests: requests(pod),
            ports: host_ports(pod),
            owner: pod["metadata"]["ownerReferences"][0]["uid"].as_str().map(str::to_string),
        }
    }
}

/// The scheduler's view of the pods, kept by the pods cache's handler.
#[derive(Default)]
struct PodsView {
    /// Pending pods: uid -> cache key.
    waiting: HashMap<String, String>,
    /// Bound pods that still hold their node's resources: uid -> what they take.
    placed: HashMap<String, Placed>,
}

impl PodsView {
    fn change(&mut self, old: Option<&Value>, new: Option<&Value>) {
        match new {
            Some(p) => {
                let uid = s(p, "/metadata/uid").to_string();
                if pending(p) {
                    self.placed.remove(&uid);
                    self.waiting.insert(uid, super::informer::key_of(p));
                } else {
                    self.waiting.remove(&uid);
                    if !s(p, "/spec/nodeName").is_empty() && !matches!(s(p, "/status/phase"), "Succeeded" | "Failed") {
                        self.placed.insert(uid, Placed::of(p));
                    } else {
                        self.placed.remove(&uid);
                    }
                }
            }
            None => {
                if let Some(p) = old {
                    let uid = s(p, "/metadata/uid");
                    self.waiting.remove(uid);
                    self.placed.remove(uid);
                }
            }
        }
    }
}

/// Why a node was filtered out, in upstream's words.
fn unfit(pod: &Value, want: Requests, needs: &[VolumeNeed], info: &NodeInfo) -> Option<String> {
    let node = &*info.node;
    if let Some(why) = volumes_unfit(needs, node) {
        return Some(why);
    }
    let tolerations: Vec<Value> = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        let t = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        if !tolerates(&tolerations, &t) {
            return Some("node(s) were unschedulable".into());
        }
    }
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        let effect = s(taint, "/effect");
        if (effect == "NoSchedule" || effect == "NoExecute") && !tolerates(&tolerations, taint) {
            return Some(format!("node(s) had untolerated taint {{{}: {}}}", s(taint, "/key"), s(taint, "/value")));
        }
    }
    if !selector_matches(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if info.pods as i128 >= info.max_pods {
        return Some("Too many pods".into());
    }
    if want.cpu > 0 && want.cpu + info.used.cpu > info.alloc_cpu.unwrap_or(0) {
        return Some("Insufficient cpu".into());
    }
    if want.memory > 0 && want.memory + info.used.memory > info.alloc_memory.unwrap_or(0) {
        return Some("Insufficient memory".into());
    }
    if host_ports(pod).iter().any(|hp| info.ports.contains(hp)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    None
}

/// Higher is better.
fn score(pod: &Value, want: Requests, info: &NodeInfo) -> i64 {
    let node = &*info.node;
    let mut total = 0i64;
    let preferred = &pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    for p in preferred.as_array().into_iter().flatten() {
        if term_matches(&p["preference"], node) {
            total += p["weight"].as_i64().unwrap_or(0) * 10;
        }
    }
    let tolerations: Vec<Value> = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        if s(taint, "/effect") == "PreferNoSchedule" && !tolerates(&tolerations, taint) {
            total -= 500;
        }
    }
    // Spread: replicas of one owner go to different nodes first.
    if let Some(owner) = pod["metadata"]["ownerReferences"][0]["uid"].as_str() {
        total -= info.owners.get(owner).copied().unwrap_or(0) as i64 * 300;
    }
    // Least allocated: the share of CPU and memory left after this pod, out of 100 each.
    let free =
        |used: i128, cap: Option<i128>| cap.filter(|c| *c > 0).map_or(0, |c| ((c - used).max(0) * 100 / c) as i64);
    total += free(info.used.cpu + want.cpu, info.alloc_cpu) + free(info.used.memory + want.memory, info.alloc_memory);
    total
}

/// Picks the node for `pod` (its index in `nodes`), or says why none fits: upstream's
/// `0/N nodes are available: <count> <reason>, ...` summary.
pub fn place_in(pod: &Value, needs: &[VolumeNeed], nodes: &[NodeInfo]) -> Result<usize, String> {
    let want = requests(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i64, usize)> = None;
    for (i, info) in nodes.iter().enumerate() {
        if let Some(why) = unfit(pod, want, needs, info) {
            *reasons.entry(why).or_default() += 1;
            continue;
        }
        let sc = score(pod, want, info);
        if best.is_none_or(|(b, j)| sc > b || (sc == b && info.name < nodes[j].name)) {
            best = Some((sc, i));
        }
    }
    match best {
        Some((_, i)) => Ok(i),
        None => {
            let parts: Vec<String> = reasons.iter().map(|(why, n)| format!("{n} {why}")).collect();
            let mut msg = format!("0/{} nodes are available", nodes.len());
            if !parts.is_empty() {
                msg.push_str(&format!(": {}", parts.join(", ")));
            }
            msg.push('.');
            Err(msg)
        }
    }
}

/// [`place_in`] for a list of nodes and the pods bound to each, by node name.
#[cfg(test)]
pub fn place(pod: &Value, nodes: &[Value], bound: &HashMap<String, Vec<Value>>) -> Result<String, String> {
    let infos: Vec<NodeInfo> = nodes
        .iter()
        .map(|n| {
            let mut info = NodeInfo::new(Arc::new(n.clone()));
            for p in bound.get(s(n, "/metadata/name")).into_iter().flatten() {
                info.add(p);
            }
            info
        })
        .collect();
    place_in(pod, &[], &infos).map(|i| infos[i].name.clone())
}

/// Whether the scheduler should place `pod`.
fn pending(pod: &Value) -> bool {
    s(pod, "/spec/nodeName").is_empty()
        && s(pod, "/metadata/deletionTimestamp").is_empty()
        && matches!(s(pod, "/spec/schedulerName"), "" | "default-scheduler")
        && !matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// Registers the handlers and starts the scheduling loop: any change to a node or a pod
/// may make room, so each wakes the loop, which then tries every pending pod.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let wake = Arc::new(Notify::new());
    // The pods waiting for a node: a cycle runs only while there are some, so a busy
    // cluster whose pods are all placed costs the scheduler nothing per change.
    let view: Arc<std::sync::Mutex<PodsView>> = Arc::default();
    let (w, v) = (wake.clone(), view.clone());
    ctx.pods.on_change(Box::new(move |old, new| {
        let Ok(mut v) = v.lock() else { return };
        v.change(old, new);
        if !v.waiting.is_empty() {
            w.notify_one();
        }
    }));
    let (w, v) = (wake.clone(), view.clone());
    ctx.nodes.on_change(Box::new(move |_, _| {
        if v.lock().is_ok_and(|v| !v.waiting.is_empty()) {
            w.notify_one();
        }
    }));
    let ctx = ctx.clone();
    vec![tokio::spawn(async move {
        ctx.nodes.synced().await;
        ctx.pods.synced().await;
        let mut sched = Scheduler { told: HashMap::new(), assumed: HashMap::new() };
        loop {
            wake.notified().await;
            if view.lock().is_ok_and(|v| !v.waiting.is_empty()) {
                sched.cycle(&ctx, &view).await;
            }
        }
    })]
}

struct Scheduler {
    /// What each unschedulable pod was last told, so it is told again only on a change.
    told: HashMap<String, String>,
    /// Pods bound by this loop that the cache does not show bound yet (uid -> node and
    /// pod), counted on their nodes meanwhile, as upstream's scheduler "assumes" them.
    assumed: HashMap<String, (String, Value)>,
}

impl Scheduler {
    async fn cycle(&mut self, ctx: &Ctx, view: &std::sync::Mutex<PodsView>) {
        let mut nodes: Vec<NodeInfo> = ctx.nodes.list().into_iter().map(NodeInfo::new).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let index: HashMap<String, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        // What bound pods take, and which pods wait, from the view the handler keeps: no
        // pass over every pod.
        let waiting = {
            let Ok(v) = view.lock() else { return };
            for p in v.placed.values() {
                if let Some(i) = index.get(&p.node) {
                    nodes[*i].add_placed(p);
                }
            }
            v.waiting.clone()
        };
        // An assumed pod the cache shows bound is counted in `placed` now; one no longer
        // waiting is bound or gone.
        self.assumed.retain(|uid, _| waiting.contains_key(uid));
        self.told.retain(|uid, _| waiting.contains_key(uid));
        let mut queue = Vec::new();
        for (uid, key) in &waiting {
            if self.assumed.contains_key(uid) {
                continue;
            }
            if let Some(p) = ctx.pods.get(key)
                && s(&p, "/metadata/uid") == uid
                && pending(&p)
            {
                queue.push(p);
            }
        }
        for (node, pod) in self.assumed.values() {
            if let Some(i) = index.get(node) {
                nodes[*i].add(pod);
            }
        }
        queue.sort_by(|a, b| {
            let prio = |p: &Value| p.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0);
            prio(b)
                .cmp(&prio(a))
                .then_with(|| s(a, "/metadata/creationTimestamp").cmp(s(b, "/metadata/creationTimestamp")))
        });
        // Decide every pod first (each decision sees the ones before it), then bind them
        // all at once: the bindings share group commits in the store.
        let mut bindings = Vec::new();
        for pod in queue {
            let uid = s(&pod, "/metadata/uid").to_string();
            let needs = volume_needs(ctx, &pod);
            match place_in(&pod, &needs, &nodes) {
                Ok(i) => {
                    nodes[i].add(&pod);
                    let node = nodes[i].name.clone();
                    if !select_node_for_claims(ctx, &needs, &node).await {
                        self.assumed.remove(&uid);
                        continue;
                    }
                    self.assumed.insert(uid, (node.clone(), (*pod).clone()));
                    bindings.push((pod, node));
                }
                Err(why) => {
                    if self.told.get(&uid) != Some(&why) {
                        unschedulable(ctx, &pod, &why).await;
                        self.told.insert(uid, why);
                    }
                }
            }
        }
        for chunk in bindings.chunks(128) {
            let results = futures_util::future::join_all(chunk.iter().map(|(pod, node)| bind(ctx, pod, node))).await;
            for ((pod, _), ok) in chunk.iter().zip(results) {
                let uid = s(pod, "/metadata/uid");
                if ok {
                    self.told.remove(uid);
                } else {
                    self.assumed.remove(uid);
                }
            }
        }
    }
}

/// Tells waiting claims which node their first pod goes to, so the provisioner makes their
/// volumes there before the pod starts.
async fn select_node_for_claims(ctx: &Ctx, needs: &[VolumeNeed], node: &str) -> bool {
    for need in needs {
        if let VolumeNeed::WaitForConsumer { claim, .. } = need {
            let path = format!(
                "/api/v1/namespaces/{}/persistentvolumeclaims/{}",
                s(claim, "/metadata/namespace"),
                s(claim, "/metadata/name")
            );
            let patch = json!({"metadata": {"annotations": {super::storage::SELECTED_NODE: node}}});
            if let Err(e) = ctx.conn.merge_patch(&path, &patch).await {
                tracing::debug!(claim = %path, error = %format!("{e:#}"), "selecting a node for a claim");
                return false;
            }
        }
    }
    true
}

async fn bind(ctx: &Ctx, pod: &Value, node: &str) -> bool {
    let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": pod["metadata"]["uid"]},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
    match ctx.conn.create(&path, &binding).await {
        Ok(_) => {
            let msg = format!("Successfully assigned {ns}/{name} to {node}");
            ctx.events.emit(COMPONENT, pod, "Normal", "Scheduled", &msg);
            true
        }
        Err(e) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %format!("{e:#}"), "binding");
            false
        }
    }
}

/// Tells a pod that fits nowhere why: `PodScheduled=False` and a `FailedScheduling` event.
async fn unschedulable(ctx: &Ctx, pod: &Value, why: &str) {
    let (ns, name) = (s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
    let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": why, "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}]}});
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
    if let Err(e) = ctx.conn.strategic_patch(&path, &status).await {
        tracing::debug!(pod = %format!("{ns}/{name}"), error = %format!("{e:#}"), "pod condition");
    }
    ctx.events.emit(COMPONENT, pod, "Warning", "FailedScheduling", why);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, mem: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
               "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}})
    }

    fn pod(cpu: &str, mem: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "d"},
               "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}})
    }

    #[test]
    fn filters_say_why_per_node_like_upstream() {
        let nodes = vec![
            node("a", "1", "1Gi", json!({"disk": "hdd"}), json!([])),
            node("b", "4", "512Mi", json!({"disk": "ssd"}), json!([])),
            node(
                "c",
                "4",
                "8Gi",
                json!({"disk": "ssd"}),
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
            ),
        ];
        let mut p = pod("500m", "1Gi");
        p["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        assert_eq!(
            place(&p, &nodes, &HashMap::new()).unwrap_err(),
            "0/3 nodes are available: 1 Insufficient memory, 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {dedicated: gpu}."
        );
        p["spec"]["tolerations"] =
            json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(place(&p, &nodes, &HashMap::new()).unwrap(), "c");
    }

    #[test]
    fn requests_of_bound_pods_count_and_affinity_expressions_work() {
        let nodes = vec![
            node("a", "2", "4Gi", json!({"zone": "x"}), json!([])),
            node("b", "2", "4Gi", json!({"zone": "y"}), json!([])),
        ];
        let mut bound = HashMap::new();
        bound.insert("a".to_string(), vec![pod("1800m", "0")]);
        assert_eq!(place(&pod("500m", "0"), &nodes, &bound).unwrap(), "b");
        let mut p = pod("100m", "0");
        p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["y"]}]}]}}});
        assert_eq!(place(&p, &nodes, &bound).unwrap(), "a");
        let mut cordoned = nodes.clone();
        cordoned[0]["spec"]["unschedulable"] = json!(true);
        assert_eq!(
            place(&p, &cordoned, &bound).unwrap_err(),
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable."
        );
    }

    #[test]
    fn scores_spread_owners_and_prefer_free_nodes() {
        let nodes = vec![node("a", "4", "8Gi", json!({}), json!([])), node("b", "4", "8Gi", json!({}), json!([]))];
        let mut p = pod("100m", "64Mi");
        p["metadata"]["ownerReferences"] = json!([{"uid": "rs-1"}]);
        let mut bound = HashMap::new();
        bound.insert("a".to_string(), vec![p.clone()]);
        assert_eq!(place(&p, &nodes, &bound).unwrap(), "b", "the second replica goes elsewhere");
        let mut busy = HashMap::new();
        busy.insert("b".to_string(), vec![pod("3", "6Gi")]);
        assert_eq!(place(&pod("100m", "64Mi"), &nodes, &busy).unwrap(), "a", "the least allocated node wins");
        let mut ports = pod("0", "0");
        ports["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        let mut taken = HashMap::new();
        taken.insert("a".to_string(), vec![ports.clone()]);
        taken.insert("b".to_string(), vec![ports.clone()]);
        assert!(place(&ports, &nodes, &taken).unwrap_err().contains("2 node(s) didn't have free ports"));
    }
}
