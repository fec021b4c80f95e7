//! The EndpointSlice controller: keeps the `discovery.k8s.io/v1` EndpointSlices of every
//! Service with a selector, beside the Endpoints the endpoints controller keeps, as
//! upstream's EndpointSlice controller does. Each selected pod with an IPv4 address is one
//! endpoint (ready, serving and terminating conditions, node, zone, the pod as its target);
//! pods whose named target ports resolve to different numbers go into different slices, and
//! a slice holds at most [`MAX_ENDPOINTS`]. Slices are labelled with their Service's name,
//! marked as managed by this controller and owned by the Service. Endpoints stay in the
//! slice they are in while it can keep them, so a pod coming or going rewrites one slice,
//! not all. A Service that is deleted, loses its selector or becomes an ExternalName loses
//! its slices; one with no endpoints has one empty placeholder slice, as upstream.
//!
//! The `kubernetes` Service in `default` has no selector: its slice, named `kubernetes`,
//! holds the API server's address, as upstream's API server keeps it.
//!
//! Reads the pods, Services, nodes (for zones) and EndpointSlices caches; writes
//! EndpointSlices through the API.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::conn::{is_not_found, revision};
use super::endpoints::{api_server_address, selector_of, services_selecting, target_port};
use super::queue::WorkQueue;
use super::{BY_NODE, Ctx, Writes, owner_ref, s};

const COMPONENT: &str = "endpointslice-controller";
const API: &str = "/apis/discovery.k8s.io/v1";

/// The label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who keeps a slice; slices managed by someone else are left alone.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY_LABEL`] (upstream's).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the slices of a headless Service (no ClusterIP).
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The node label an endpoint's `zone` comes from.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Endpoints per slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS: usize = 100;

/// One port of a slice, comparable so slices can be matched by their set of ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Port {
    name: String,
    port: Option<i64>,
    protocol: String,
    app_protocol: Option<String>,
}

impl Port {
    fn of(v: &Value) -> Port {
        Port {
            name: s(v, "/name").to_string(),
            port: v["port"].as_i64(),
            protocol: v["protocol"].as_str().unwrap_or("TCP").to_string(),
            app_protocol: v["appProtocol"].as_str().map(str::to_string),
        }
    }

    /// The port as the API stores it (`name` and `protocol` are defaulted there).
    fn to_json(&self) -> Value {
        let mut p = json!({"name": self.name, "protocol": self.protocol});
        if let Some(n) = self.port {
            p["port"] = json!(n);
        }
        if let Some(a) = &self.app_protocol {
            p["appProtocol"] = json!(a);
        }
        p
    }
}

/// The set of ports a slice carries, order aside: slices are matched by it.
type PortKey = Vec<Port>;

fn port_key(ports: &[Port]) -> PortKey {
    let mut key = ports.to_vec();
    key.sort();
    key
}

/// What identifies an endpoint across updates (upstream hashes the same fields): its
/// addresses and the pod it stands for, not its conditions.
type EndpointId = (Vec<String>, String, String);

fn endpoint_id(ep: &Value) -> EndpointId {
    let mut addresses: Vec<String> =
        ep["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
    addresses.sort();
    (addresses, s(ep, "/targetRef/namespace").to_string(), s(ep, "/targetRef/name").to_string())
}

/// The endpoints of one set of ports: the ports in the Service's order and the endpoints
/// sorted by address.
#[derive(Debug, Default)]
struct Group {
    ports: Vec<Port>,
    endpoints: Vec<Value>,
}

/// The endpoint `pod` is for `service` (upstream's `podToEndpoint`): ready is Ready and not
/// terminating (or always, with `publishNotReadyAddresses`), serving is Ready whatever the
/// termination, terminating is being deleted.
fn endpoint(service: &Value, pod: &Value, ip: &str, zone: Option<String>) -> Value {
    let serving = super::pod_ready_since(pod).is_some();
    let terminating = super::deleting(pod);
    let ready = service["spec"]["publishNotReadyAddresses"] == true || (serving && !terminating);
    let mut ep = json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": s(pod, "/metadata/namespace"),
            "name": s(pod, "/metadata/name"), "uid": s(pod, "/metadata/uid")},
    });
    let node = s(pod, "/spec/nodeName");
    if !node.is_empty() {
        ep["nodeName"] = json!(node);
    }
    if let Some(zone) = zone.filter(|z| !z.is_empty()) {
        ep["zone"] = json!(zone);
    }
    // A pod of a headless StatefulSet is named in DNS by its hostname.
    let hostname = s(pod, "/spec/hostname");
    if !hostname.is_empty()
        && s(pod, "/spec/subdomain") == s(service, "/metadata/name")
        && s(pod, "/metadata/namespace") == s(service, "/metadata/namespace")
    {
        ep["hostname"] = json!(hostname);
    }
    ep
}

/// The endpoints of `service` over `pods` (those it selects), grouped by the ports they
/// resolve to. A pod that is finished or has no IPv4 address is left out; a terminating
/// one stays in (with `terminating: true`), as upstream. A service port whose named
/// `targetPort` a pod lacks is left out of that pod's ports (upstream's `getEndpointPorts`).
fn groups(service: &Value, pods: &[Arc<Value>], zone_of: &dyn Fn(&str) -> Option<String>) -> BTreeMap<PortKey, Group> {
    let mut out: BTreeMap<PortKey, Group> = BTreeMap::new();
    for pod in pods {
        let ip = s(pod, "/status/podIP");
        if ip.parse::<std::net::Ipv4Addr>().is_err() || matches!(s(pod, "/status/phase"), "Succeeded" | "Failed") {
            continue;
        }
        let ports: Vec<Port> = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(Port {
                    name: s(p, "/name").to_string(),
                    port: Some(target_port(p, pod)?),
                    protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    app_protocol: p["appProtocol"].as_str().map(str::to_string),
                })
            })
            .collect();
        let group = out.entry(port_key(&ports)).or_default();
        group.ports = ports;
        group.endpoints.push(endpoint(service, pod, ip, zone_of(s(pod, "/spec/nodeName"))));
    }
    // By address (numerically), so slices read in order and a plan is reproducible.
    let order = |ep: &Value| (s(ep, "/addresses/0").parse::<std::net::Ipv4Addr>().ok(), endpoint_id(ep));
    for g in out.values_mut() {
        g.endpoints.sort_by_cached_key(order);
    }
    out
}

/// The labels of the slices of `service` (upstream's `setEndpointSliceLabels`): the
/// Service's own labels but the reserved ones, the headless mark, its name and this
/// controller.
fn slice_labels(service: &Value) -> Map<String, Value> {
    let mut labels: Map<String, Value> = service["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), SERVICE_NAME_LABEL | MANAGED_BY_LABEL | HEADLESS_LABEL))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if matches!(s(service, "/spec/clusterIP"), "None" | "") {
        labels.insert(HEADLESS_LABEL.into(), json!(""));
    }
    labels.insert(SERVICE_NAME_LABEL.into(), json!(s(service, "/metadata/name")));
    labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    labels
}

/// A new slice of `service` (named by the server from `<service>-`).
fn new_slice(service: &Value, ports: &[Port], endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "generateName": format!("{}-", s(service, "/metadata/name")),
            "namespace": s(service, "/metadata/namespace"),
            "labels": slice_labels(service),
            "ownerReferences": [owner_ref(service, "v1", "Service")],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports.iter().map(Port::to_json).collect::<Vec<_>>(),
    })
}

/// `existing` rewritten to hold what `wanted` (a [`new_slice`]) holds; `None` when it
/// already does.
fn rewrite(existing: &Value, wanted: &Value) -> Option<Value> {
    let or_empty = |v: &Value, k: &str| v.get(k).filter(|x| !x.is_null()).cloned().unwrap_or(json!([]));
    let same = or_empty(existing, "endpoints") == wanted["endpoints"]
        && or_empty(existing, "ports") == wanted["ports"]
        && existing["metadata"]["labels"] == wanted["metadata"]["labels"]
        && existing["metadata"]["ownerReferences"] == wanted["metadata"]["ownerReferences"];
    if same {
        return None;
    }
    let mut next = existing.clone();
    for k in ["endpoints", "ports"] {
        next[k] = wanted[k].clone();
    }
    for k in ["labels", "ownerReferences"] {
        next["metadata"][k] = wanted["metadata"][k].clone();
    }
    Some(next)
}

/// The writes that bring a Service's slices where they should be.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New slices (with `generateName`).
    pub create: Vec<Value>,
    /// Existing slices with new contents (their `resourceVersion` kept for the swap).
    pub update: Vec<Value>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

/// Whether `slice` is owned by the Service with uid `uid`.
fn owned_by(slice: &Value, uid: &str) -> bool {
    slice["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["kind"] == "Service" && r["uid"] == uid && r["controller"] == true)
}

/// The slices `service` should have given the `pods` it selects and its `existing` slices
/// (those labelled with its name and managed here), as upstream's reconciler decides
/// them: endpoints stay in the slice they are in, new ones fill slices with room and then
/// new slices; a slice left empty goes; a slice to delete is reused for one to create
/// rather than deleted and created again; a Service without endpoints keeps one empty
/// placeholder slice. `zone_of` gives a node's zone.
pub fn plan(
    service: &Value,
    pods: &[Arc<Value>],
    existing: &[Arc<Value>],
    zone_of: &dyn Fn(&str) -> Option<String>,
) -> Plan {
    let uid = s(service, "/metadata/uid");
    let want = groups(service, pods, zone_of);
    let by_id: BTreeMap<(&PortKey, EndpointId), &Value> =
        want.iter().flat_map(|(key, g)| g.endpoints.iter().map(move |ep| ((key, endpoint_id(ep)), ep))).collect();
    let mut existing: Vec<&Arc<Value>> = existing.iter().collect();
    existing.sort_by(|a, b| s(a, "/metadata/name").cmp(s(b, "/metadata/name")));

    // Endpoints still wanted stay where they are (in their current form).
    let mut placed: HashSet<(PortKey, EndpointId)> = HashSet::new();
    let mut kept: Vec<(&Arc<Value>, PortKey, Vec<Value>)> = Vec::new();
    let mut doomed: Vec<&Arc<Value>> = Vec::new();
    for slice in existing {
        let ports: Vec<Port> = slice["ports"].as_array().into_iter().flatten().map(Port::of).collect();
        let key = port_key(&ports);
        if !owned_by(slice, uid) || s(slice, "/addressType") != "IPv4" || !want.contains_key(&key) {
            doomed.push(slice);
            continue;
        }
        let mut endpoints = Vec::new();
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let id = endpoint_id(ep);
            if endpoints.len() < MAX_ENDPOINTS
                && let Some(wanted) = by_id.get(&(&key, id.clone()))
                && placed.insert((key.clone(), id))
            {
                endpoints.push((*wanted).clone());
            }
        }
        if endpoints.is_empty() {
            doomed.push(slice);
        } else {
            kept.push((slice, key, endpoints));
        }
    }

    // New endpoints fill the slices with room, then new slices.
    let mut create = Vec::new();
    for (key, group) in &want {
        let mut fresh = group.endpoints.iter().filter(|ep| !placed.contains(&(key.clone(), endpoint_id(ep)))).cloned();
        for (_, _, endpoints) in kept.iter_mut().filter(|(_, k, _)| k == key) {
            while endpoints.len() < MAX_ENDPOINTS
                && let Some(ep) = fresh.next()
            {
                endpoints.push(ep);
            }
        }
        let rest: Vec<Value> = fresh.collect();
        for chunk in rest.chunks(MAX_ENDPOINTS) {
            create.push(new_slice(service, &group.ports, chunk.to_vec()));
        }
    }
    if kept.is_empty() && create.is_empty() {
        create.push(new_slice(service, &[], Vec::new()));
    }

    let mut plan = Plan::default();
    for (slice, key, endpoints) in kept {
        let ports = want.get(&key).map(|g| g.ports.as_slice()).unwrap_or_default();
        if let Some(next) = rewrite(slice, &new_slice(service, ports, endpoints)) {
            plan.update.push(next);
        }
    }
    // A slice to delete that this Service owns becomes one to create instead.
    let mut create = create.into_iter();
    for slice in doomed {
        if owned_by(slice, uid)
            && s(slice, "/addressType") == "IPv4"
            && let Some(wanted) = create.next()
        {
            if let Some(next) = rewrite(slice, &wanted) {
                plan.update.push(next);
            }
        } else {
            plan.delete.push(s(slice, "/metadata/name").to_string());
        }
    }
    plan.create = create.collect();
    plan
}

/// The slice of the `kubernetes` Service: the API server's address and port, labelled
/// with the Service's name only, as upstream's API server writes it.
fn api_server_slice(advertise: &str) -> Value {
    let (endpoints, ports) = match api_server_address(advertise) {
        Some((ip, port)) if ip.is_ipv4() => (
            json!([{"addresses": [ip.to_string()], "conditions": {"ready": true}}]),
            json!([{"name": "https", "port": port, "protocol": "TCP"}]),
        ),
        _ => (json!([]), json!([])),
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "kubernetes"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    })
}

/// Whether `slice` is one this controller keeps: a managed one, or the `kubernetes` one.
fn kept_here(slice: &Value) -> bool {
    s(slice, "/metadata/labels/endpointslice.kubernetes.io~1managed-by") == MANAGED_BY
        || (s(slice, "/metadata/namespace") == "default" && s(slice, "/metadata/name") == "kubernetes")
}

/// A node's zone label, if it has one.
fn zone_label(node: &Value) -> Option<String> {
    node["metadata"]["labels"][ZONE_LABEL].as_str().map(str::to_string)
}

/// The zone of the node named `node`, from the nodes cache.
fn zone(ctx: &Ctx, node: &str) -> Option<String> {
    if node.is_empty() {
        return None;
    }
    ctx.nodes.get(node).and_then(|n| zone_label(&n))
}

/// Registers the handlers and starts the worker.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    super::endpoints::queue_services_and_their_pods(ctx, &queue);
    // A slice changed or deleted by someone else is put back.
    let q = queue.clone();
    ctx.endpointslices.on_change(Box::new(move |old, new| {
        for slice in [old, new].into_iter().flatten().filter(|sl| kept_here(sl)) {
            let svc = s(slice, "/metadata/labels/kubernetes.io~1service-name");
            if !svc.is_empty() {
                q.add(&format!("{}/{svc}", s(slice, "/metadata/namespace")));
            }
        }
    }));
    // A node's zone is its endpoints' zone.
    let q = queue.clone();
    let (services, pods) = (ctx.services.clone(), ctx.pods.clone());
    ctx.nodes.on_change(Box::new(move |old, new| {
        let (Some(o), Some(n)) = (old, new) else { return };
        if zone_label(o) == zone_label(n) {
            return;
        }
        for pod in pods.list_by(BY_NODE, s(n, "/metadata/name")) {
            for key in services_selecting(&services, &pod) {
                q.add(&key);
            }
        }
    }));
    super::owner_workers(
        COMPONENT,
        queue,
        1,
        ctx,
        |ctx, writes, key| async move { reconcile(&ctx, &writes, &key).await },
    )
}

async fn reconcile(ctx: &Ctx, writes: &Writes, key: &str) -> anyhow::Result<Option<Duration>> {
    for cache in [&ctx.endpointslices, &ctx.services, &ctx.pods, &ctx.nodes] {
        cache.synced().await;
    }
    writes.settle(key, &ctx.endpointslices).await;
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    let collection = format!("{API}/namespaces/{ns}/endpointslices");
    if ns == "default" && name == "kubernetes" {
        return reconcile_api_server(ctx, writes, key, &collection).await;
    }
    let existing: Vec<Arc<Value>> = ctx
        .endpointslices
        .list_in(ns)
        .into_iter()
        .filter(|sl| s(sl, "/metadata/labels/kubernetes.io~1service-name") == name && kept_here(sl))
        .collect();
    let svc = ctx.services.get(key).filter(|svc| s(svc, "/spec/type") != "ExternalName");
    let next = match svc.as_ref().and_then(|svc| Some((svc, selector_of(svc)?))) {
        Some((svc, sel)) => {
            let pods: Vec<Arc<Value>> = ctx.pods.list_in(ns).into_iter().filter(|p| sel.matches_object(p)).collect();
            plan(svc, &pods, &existing, &|node| zone(ctx, node))
        }
        // Gone, without a selector, or an ExternalName: no slices of ours.
        None => {
            Plan { delete: existing.iter().map(|sl| s(sl, "/metadata/name").to_string()).collect(), ..Plan::default() }
        }
    };
    if next != Plan::default() {
        tracing::debug!(
            service = %key, create = next.create.len(), update = next.update.len(), delete = next.delete.len(),
            "endpoint slices"
        );
    }
    for slice in &next.update {
        let path = format!("{collection}/{}", s(slice, "/metadata/name"));
        writes.note(key, revision(&ctx.conn.replace(&path, slice).await?));
    }
    for slice in &next.create {
        writes.note(key, revision(&ctx.conn.create(&collection, slice).await?));
    }
    for name in &next.delete {
        let uid = existing.iter().find(|sl| s(sl, "/metadata/name") == name).map(|sl| s(sl, "/metadata/uid"));
        let opts = json!({"preconditions": {"uid": uid}});
        match ctx.conn.call("DELETE", &format!("{collection}/{name}"), Some("application/json"), Some(&opts)).await {
            Ok(gone) => writes.note(key, revision(&gone)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Keeps the `kubernetes` slice while the `kubernetes` Service exists.
async fn reconcile_api_server(
    ctx: &Ctx,
    writes: &Writes,
    key: &str,
    collection: &str,
) -> anyhow::Result<Option<Duration>> {
    let path = format!("{collection}/kubernetes");
    let current = ctx.endpointslices.get(key);
    if ctx.services.get(key).is_none() {
        if current.is_some() {
            ctx.conn.delete(&path, &json!({})).await?;
        }
        return Ok(None);
    }
    let want = api_server_slice(&ctx.conn.advertise());
    let written = match current {
        Some(cur) => {
            let same = cur["endpoints"] == want["endpoints"]
                && cur.get("ports").filter(|p| !p.is_null()).unwrap_or(&json!([])) == &want["ports"]
                && cur["metadata"]["labels"] == want["metadata"]["labels"]
                && cur["addressType"] == want["addressType"];
            if same {
                return Ok(None);
            }
            if cur["addressType"] != want["addressType"] {
                // The address type cannot change: replace the slice.
                ctx.conn.delete(&path, &json!({})).await?;
                ctx.conn.create(collection, &want).await?
            } else {
                let mut next = (*cur).clone();
                for k in ["endpoints", "ports"] {
                    next[k] = want[k].clone();
                }
                next["metadata"]["labels"] = want["metadata"]["labels"].clone();
                ctx.conn.replace(&path, &next).await?
            }
        }
        None => match ctx.conn.create(collection, &want).await {
            Ok(created) => created,
            // Written before this cache saw it: the watch brings it and the next look
            // compares.
            Err(e) if super::conn::is_already_exists(&e) => return Ok(None),
            Err(e) => return Err(e),
        },
    };
    writes.note(key, revision(&written));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ports: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("svc-{name}"),
                "labels": {"app": name, MANAGED_BY_LABEL: "someone-else"}},
            "spec": {"selector": {"app": name}, "clusterIP": "10.43.0.10", "ports": ports}})
    }

    fn pod(name: &str, ip: &str, ready: bool, ports: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip, "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    fn no_zone(_: &str) -> Option<String> {
        None
    }

    /// The slice the server would store for a planned one: named, with a revision.
    fn stored(mut slice: Value, name: &str) -> Arc<Value> {
        slice["metadata"]["name"] = json!(name);
        slice["metadata"]["resourceVersion"] = json!("7");
        Arc::new(slice)
    }

    fn ips(slice: &Value) -> Vec<String> {
        slice["endpoints"].as_array().unwrap().iter().map(|e| e["addresses"][0].as_str().unwrap().to_string()).collect()
    }

    fn cond(slice: &Value, ip: &str) -> Value {
        slice["endpoints"].as_array().unwrap().iter().find(|e| e["addresses"][0] == ip).unwrap()["conditions"].clone()
    }

    #[test]
    fn slices_split_by_resolved_ports_with_conditions_labels_and_owner() {
        let svc = service(
            "web",
            json!([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP",
            "appProtocol": "http"}]),
        );
        let named = json!([{"name": "web", "containerPort": 8080}]);
        let mut terminating = (*pod("t", "10.42.0.15", true, named.clone())).clone();
        terminating["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let mut done = (*pod("done", "10.42.0.17", false, named.clone())).clone();
        done["status"]["phase"] = json!("Succeeded");
        let pods = vec![
            pod("b", "10.42.0.12", true, named.clone()),
            pod("a", "10.42.0.11", true, named.clone()),
            pod("c", "10.42.0.13", false, named.clone()),
            pod("d", "10.42.0.14", true, json!([{"name": "web", "containerPort": 9090}])),
            pod("e", "", true, named.clone()),
            pod("f", "10.42.0.16", true, json!([])),
            Arc::new(terminating),
            Arc::new(done),
        ];
        let zones = |n: &str| (n == "n1").then(|| "zone-a".to_string());
        let p = plan(&svc, &pods, &[], &zones);
        assert!(p.update.is_empty() && p.delete.is_empty());
        assert_eq!(p.create.len(), 3, "{:#?}", p.create);
        let on = |port: Value| p.create.iter().find(|sl| sl["ports"] == port).unwrap();
        let on_8080 = on(json!([{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]));
        assert_eq!(ips(on_8080), ["10.42.0.11", "10.42.0.12", "10.42.0.13", "10.42.0.15"], "sorted, not-ready in");
        assert_eq!(cond(on_8080, "10.42.0.11"), json!({"ready": true, "serving": true, "terminating": false}));
        assert_eq!(cond(on_8080, "10.42.0.13"), json!({"ready": false, "serving": false, "terminating": false}));
        assert_eq!(cond(on_8080, "10.42.0.15"), json!({"ready": false, "serving": true, "terminating": true}));
        let a = &on_8080["endpoints"][0];
        assert_eq!(a["targetRef"], json!({"kind": "Pod", "namespace": "default", "name": "a", "uid": "u-a"}));
        assert_eq!((a["nodeName"].clone(), a["zone"].clone()), (json!("n1"), json!("zone-a")));
        assert_eq!(
            ips(on(json!([{"name": "http", "port": 9090, "protocol": "TCP", "appProtocol": "http"}]))),
            ["10.42.0.14"]
        );
        // The pod without the named port is an endpoint without ports, as upstream.
        assert_eq!(ips(on(json!([]))), ["10.42.0.16"]);
        assert_eq!(on_8080["addressType"], "IPv4");
        assert_eq!(on_8080["metadata"]["generateName"], "web-");
        assert_eq!(
            on_8080["metadata"]["labels"],
            json!({"app": "web", SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: MANAGED_BY}),
            "the service's labels but the reserved ones"
        );
        assert_eq!(
            on_8080["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "svc-web",
                "controller": true, "blockOwnerDeletion": true}])
        );

        // Published not-ready addresses: every endpoint is ready.
        let mut publish = svc.clone();
        publish["spec"]["publishNotReadyAddresses"] = json!(true);
        let p = plan(&publish, &pods, &[], &no_zone);
        let all: Vec<Value> = p.create.iter().flat_map(|sl| sl["endpoints"].as_array().unwrap().clone()).collect();
        assert!(all.iter().all(|e| e["conditions"]["ready"] == true), "{all:?}");
        assert!(all.iter().all(|e| e.get("zone").is_none()));
    }

    #[test]
    fn a_steady_state_writes_nothing_and_changes_touch_one_slice() {
        let svc = service("web", json!([{"name": "", "port": 80, "targetPort": 8080, "protocol": "TCP"}]));
        let pods: Vec<Arc<Value>> = (0..250)
            .map(|i| pod(&format!("p{i}"), &format!("10.42.{}.{}", i / 200, i % 200 + 1), true, json!([])))
            .collect();
        let first = plan(&svc, &pods, &[], &no_zone);
        assert_eq!(first.create.iter().map(|sl| ips(sl).len()).collect::<Vec<_>>(), [100, 100, 50], "split at 100");
        let existing: Vec<Arc<Value>> =
            first.create.iter().enumerate().map(|(i, sl)| stored(sl.clone(), &format!("web-{i}"))).collect();
        assert_eq!(plan(&svc, &pods, &existing, &no_zone), Plan::default(), "nothing to write");

        // One pod goes not-ready and one goes away: only their slices change, in place.
        let mut changed = pods.clone();
        changed[5] = pod("p5", "10.42.0.6", false, json!([]));
        changed.remove(120);
        let p = plan(&svc, &changed, &existing, &no_zone);
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        let names: Vec<&str> = p.update.iter().map(|sl| s(sl, "/metadata/name")).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(p.update.iter().all(|sl| sl["metadata"]["resourceVersion"] == "7"));
        // A new pod fills the slice with room instead of making a new one.
        let mut more = pods.clone();
        more.push(pod("new", "10.42.9.9", true, json!([])));
        let p = plan(&svc, &more, &existing, &no_zone);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(ips(&p.update[0]).len(), 51);
    }

    #[test]
    fn emptied_and_foreign_slices_go_and_a_placeholder_stays() {
        let svc = service("web", json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]));
        let pods = vec![pod("a", "10.42.0.1", true, json!([]))];
        let created = plan(&svc, &pods, &[], &no_zone).create;
        let mine = stored(created[0].clone(), "web-aaaaa");
        // A slice of an older Service of the same name: not ours to reuse.
        let mut old = (*stored(created[0].clone(), "web-old00")).clone();
        old["metadata"]["ownerReferences"][0]["uid"] = json!("svc-before");
        let p = plan(&svc, &pods, &[mine.clone(), Arc::new(old)], &no_zone);
        assert_eq!((p.create.len(), p.update.len(), p.delete.clone()), (0, 0, vec!["web-old00".to_string()]));

        // No pods left: the slice becomes the empty placeholder in place.
        let p = plan(&svc, &[], std::slice::from_ref(&mine), &no_zone);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!((p.update[0]["endpoints"].clone(), p.update[0]["ports"].clone()), (json!([]), json!([])));
        let placeholder = Arc::new(p.update[0].clone());
        assert_eq!(
            plan(&svc, &[], std::slice::from_ref(&placeholder), &no_zone),
            Plan::default(),
            "the placeholder stays"
        );
        // Pods come back: the placeholder is reused.
        let p = plan(&svc, &pods, &[placeholder], &no_zone);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(ips(&p.update[0]), ["10.42.0.1"]);
        // A port change moves endpoints to a new port set: the old slice is rewritten.
        let mut moved = svc.clone();
        moved["spec"]["ports"][0]["targetPort"] = json!(9090);
        let p = plan(&moved, &pods, &[mine], &no_zone);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update[0]["ports"][0]["port"], 9090);
        assert_eq!(p.update[0]["metadata"]["name"], "web-aaaaa");
    }

    #[test]
    fn hostnames_headless_labels_and_the_api_server() {
        let mut svc = service("db", json!([]));
        svc["spec"]["clusterIP"] = json!("None");
        let mut p = (*pod("db-0", "10.42.0.9", true, json!([]))).clone();
        p["spec"]["hostname"] = json!("db-0");
        p["spec"]["subdomain"] = json!("db");
        let got = plan(&svc, &[Arc::new(p)], &[], &no_zone);
        assert_eq!(got.create[0]["endpoints"][0]["hostname"], "db-0");
        assert_eq!(got.create[0]["ports"], json!([]));
        assert_eq!(got.create[0]["metadata"]["labels"][HEADLESS_LABEL], "");

        let slice = api_server_slice("https://192.168.1.20:6443");
        assert_eq!(slice["metadata"]["name"], "kubernetes");
        assert_eq!(slice["metadata"]["labels"], json!({SERVICE_NAME_LABEL: "kubernetes"}));
        assert_eq!(slice["endpoints"], json!([{"addresses": ["192.168.1.20"], "conditions": {"ready": true}}]));
        assert_eq!(slice["ports"], json!([{"name": "https", "port": 6443, "protocol": "TCP"}]));
        assert_eq!(api_server_slice("https://board.local:6443")["endpoints"], json!([]));
    }

    /// What the plan writes is what the API stores (it keeps what the typed object keeps,
    /// and sets `name` and `protocol` on every port itself), so a steady state compares
    /// equal and writes nothing.
    #[test]
    fn planned_slices_survive_the_api_unchanged() {
        let svc = service(
            "web",
            json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
            "appProtocol": "http"}, {"port": 81, "protocol": "UDP"}]),
        );
        let mut p = (*pod("a", "10.42.0.1", true, json!([]))).clone();
        p["spec"]["hostname"] = json!("a");
        p["spec"]["subdomain"] = json!("web");
        let zones = |_: &str| Some("z".to_string());
        let planned = plan(&svc, &[Arc::new(p)], &[], &zones).create.remove(0);
        let typed: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(planned.clone()).unwrap();
        let stored = serde_json::to_value(typed).unwrap();
        assert!(
            planned["ports"].as_array().unwrap().iter().all(|p| p["name"].is_string() && p["protocol"].is_string())
        );
        assert_eq!(stored["endpoints"], planned["endpoints"]);
        assert_eq!(stored["ports"], planned["ports"]);
        assert_eq!(stored["metadata"]["labels"], planned["metadata"]["labels"]);
        assert_eq!(stored["metadata"]["ownerReferences"], planned["metadata"]["ownerReferences"]);
    }
}
