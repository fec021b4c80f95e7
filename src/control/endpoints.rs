//! The endpoints controller: keeps one `Endpoints` object per Service with a selector,
//! listing the addresses of the pods it selects (ready ones, and not-ready ones apart
//! unless `publishNotReadyAddresses`) with each service port's `targetPort` resolved per
//! pod (a named port is looked up in that pod's containers). The `kubernetes` Service in
//! `default` has no selector: its endpoints are the API server's address, as upstream's
//! API server keeps them. A Service without a selector otherwise is left to its owner, as
//! upstream; a deleted Service's Endpoints are deleted. The EndpointSlices beside them are
//! `endpointslices.rs`'s, which shares this file's port resolution and selector reading.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::queue::WorkQueue;
use super::{Ctx, s};
use crate::api::selector::LabelSelector;

const COMPONENT: &str = "endpoint-controller";

/// One service port resolved for one pod: (name, port number, protocol).
type Resolved = (String, i64, String);

/// The port number one service port (`spec.ports[]`) lands on in `pod`: its numeric
/// `targetPort`, the container port a named one names (same protocol), or `port` when it
/// has none; `None` when a named port is not one of the pod's (upstream's `FindPort`).
/// The EndpointSlice controller resolves ports the same way.
pub(crate) fn target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    let protocol = service_port["protocol"].as_str().unwrap_or("TCP");
    let target = &service_port["targetPort"];
    match (target.as_i64(), target.as_str()) {
        (Some(n), _) => Some(n),
        (None, Some(named)) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|cp| cp["name"] == named && cp["protocol"].as_str().unwrap_or("TCP") == protocol)
            .and_then(|cp| cp["containerPort"].as_i64()),
        _ => service_port["port"].as_i64(),
    }
}

/// The ports of `service` as they land on `pod`; `None` when a named `targetPort` is not
/// one of the pod's container ports (upstream leaves such a pod out of that subset).
fn resolve_ports(service: &Value, pod: &Value) -> Option<Vec<Resolved>> {
    let mut out = Vec::new();
    for p in service["spec"]["ports"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("").to_string();
        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
        out.push((name, target_port(p, pod)?, protocol));
    }
    Some(out)
}

fn ready(pod: &Value) -> bool {
    super::pod_ready_since(pod).is_some()
}

/// The pod selector of a Service; `None` when it has none (its endpoints are its owner's
/// to keep).
pub(crate) fn selector_of(service: &Value) -> Option<LabelSelector> {
    let selector = &service["spec"]["selector"];
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty())
        .then(|| LabelSelector::from_object(&json!({"matchLabels": selector})))
}

/// The keys of the Services in `pod`'s namespace that select it.
pub(crate) fn services_selecting(services: &super::informer::Informer, pod: &Value) -> Vec<String> {
    services
        .list_in(s(pod, "/metadata/namespace"))
        .into_iter()
        .filter(|svc| selector_of(svc).is_some_and(|sel| sel.matches_object(pod)))
        .map(|svc| super::informer::key_of(&svc))
        .collect()
}

/// The `subsets` of the Endpoints of `service` over `pods` (already those it selects):
/// pods grouped by their resolved ports, addresses sorted, as upstream repacks them.
pub fn subsets(service: &Value, pods: &[Arc<Value>]) -> Vec<Value> {
    let publish_not_ready = service["spec"]["publishNotReadyAddresses"] == true;
    let name = s(service, "/metadata/name");
    let mut groups: BTreeMap<Vec<Resolved>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        let ip = s(pod, "/status/podIP");
        if ip.is_empty()
            || !s(pod, "/metadata/deletionTimestamp").is_empty()
            || matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
        {
            continue;
        }
        let Some(ports) = resolve_ports(service, pod) else { continue };
        let mut address = json!({"ip": ip, "targetRef": {"kind": "Pod", "namespace": s(pod, "/metadata/namespace"),
            "name": s(pod, "/metadata/name"), "uid": s(pod, "/metadata/uid")}});
        if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            address["nodeName"] = json!(node);
        }
        // A pod of a headless StatefulSet is named in DNS by its hostname.
        if let Some(h) = pod["spec"]["hostname"].as_str().filter(|h| !h.is_empty())
            && s(pod, "/spec/subdomain") == name
        {
            address["hostname"] = json!(h);
        }
        let group = groups.entry(ports).or_default();
        if publish_not_ready || ready(pod) { group.0.push(address) } else { group.1.push(address) }
    }
    groups
        .into_iter()
        .map(|(ports, (mut addresses, mut not_ready))| {
            let by_ip = |a: &Value, b: &Value| s(a, "/ip").cmp(s(b, "/ip"));
            addresses.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut subset = json!({"ports": ports});
            if !addresses.is_empty() {
                subset["addresses"] = json!(addresses);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect()
}

/// The API server's address and port from `https://host:port`; `None` when the host is a
/// name, not an address (endpoints hold addresses).
pub(crate) fn api_server_address(advertise: &str) -> Option<(std::net::IpAddr, i64)> {
    let rest = advertise.trim_start_matches("https://");
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(|c| c == '[' || c == ']'), p.parse::<i64>().unwrap_or(6443)),
        None => (rest, 6443),
    };
    Some((host.parse().ok()?, port))
}

/// The endpoints of the `kubernetes` Service: the API server's address and port.
fn api_server_subsets(advertise: &str) -> Vec<Value> {
    let Some((ip, port)) = api_server_address(advertise) else { return Vec::new() };
    vec![json!({"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})]
}

/// Queues a Service's key when it changes and when a pod it selects comes, changes or
/// goes: what both the Endpoints and the EndpointSlice controllers follow.
pub(crate) fn queue_services_and_their_pods(ctx: &Ctx, queue: &Arc<WorkQueue>) {
    let q = queue.clone();
    ctx.services.on_change(Box::new(move |old, new| {
        if let Some(svc) = new.or(old) {
            q.add(&super::informer::key_of(svc));
        }
    }));
    let q = queue.clone();
    let services = ctx.services.clone();
    ctx.pods.on_change(Box::new(move |old, new| {
        for pod in [old, new].into_iter().flatten() {
            for key in services_selecting(&services, pod) {
                q.add(&key);
            }
        }
    }));
}

/// Registers the handlers and starts the worker.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    queue_services_and_their_pods(ctx, &queue);
    let ctx = ctx.clone();
    super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
}

async fn reconcile(ctx: &Ctx, key: &str) -> anyhow::Result<Option<Duration>> {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    let path = format!("/api/v1/namespaces/{ns}/endpoints/{name}");
    let Some(svc) = ctx.services.get(key) else {
        ctx.conn.delete(&path, &json!({})).await?;
        return Ok(None);
    };
    let want = if ns == "default" && name == "kubernetes" {
        api_server_subsets(&ctx.conn.advertise())
    } else if let Some(sel) = selector_of(&svc) {
        let pods: Vec<Arc<Value>> = ctx.pods.list_in(ns).into_iter().filter(|p| sel.matches_object(p)).collect();
        subsets(&svc, &pods)
    } else {
        // No selector: the user keeps these Endpoints.
        return Ok(None);
    };
    let labels = svc["metadata"]["labels"].clone();
    match ctx.conn.get(&path).await {
        Ok(current) => {
            let same_subsets = current["subsets"].as_array().map(Vec::as_slice).unwrap_or(&[]) == want.as_slice();
            if same_subsets && current["metadata"]["labels"] == labels {
                return Ok(None);
            }
            let mut next = current.clone();
            next["subsets"] = json!(want);
            next["metadata"]["labels"] = labels;
            ctx.conn.replace(&path, &next).await?;
        }
        Err(e) if super::conn::is_not_found(&e) => {
            let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": name, "namespace": ns}, "subsets": want});
            if !labels.is_null() {
                ep["metadata"]["labels"] = labels;
            }
            ctx.conn.create(&format!("/api/v1/namespaces/{ns}/endpoints"), &ep).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, ports: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": ip, "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
    }

    #[test]
    fn subsets_resolve_named_ports_and_split_ready_from_not_ready() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}});
        let named = json!([{"name": "web", "containerPort": 8080}]);
        let other = json!([{"name": "web", "containerPort": 9090}]);
        let pods = vec![
            pod("b", "10.42.0.12", true, named.clone()),
            pod("a", "10.42.0.11", true, named.clone()),
            pod("c", "10.42.0.13", false, named.clone()),
            pod("d", "10.42.0.14", true, other),
            pod("e", "", true, named.clone()),
            pod("f", "10.42.0.16", true, json!([{"name": "metrics", "containerPort": 1}])),
        ];
        let got = subsets(&svc, &pods);
        assert_eq!(got.len(), 2, "{got:?}");
        let ips = |s: &Value, k: &str| -> Vec<String> {
            s[k].as_array().into_iter().flatten().map(|a| a["ip"].as_str().unwrap().to_string()).collect()
        };
        let on_8080 = got.iter().find(|s| s["ports"][0]["port"] == 8080).unwrap();
        assert_eq!(ips(on_8080, "addresses"), ["10.42.0.11", "10.42.0.12"], "sorted, ready only");
        assert_eq!(ips(on_8080, "notReadyAddresses"), ["10.42.0.13"]);
        assert_eq!(on_8080["ports"][0], json!({"name": "http", "port": 8080, "protocol": "TCP"}));
        assert_eq!(on_8080["addresses"][0]["targetRef"]["name"], "a");
        let on_9090 = got.iter().find(|s| s["ports"][0]["port"] == 9090).unwrap();
        assert_eq!(ips(on_9090, "addresses"), ["10.42.0.14"]);
        // Published not ready: every address counts as ready.
        let mut publish = svc.clone();
        publish["spec"]["publishNotReadyAddresses"] = json!(true);
        let got = subsets(&publish, &pods);
        let on_8080 = got.iter().find(|s| s["ports"][0]["port"] == 8080).unwrap();
        assert_eq!(ips(on_8080, "addresses").len(), 3);
        assert!(on_8080.get("notReadyAddresses").is_none());
    }

    #[test]
    fn numeric_and_missing_target_ports_and_the_api_server() {
        let svc =
            json!({"metadata": {"name": "db"}, "spec": {"ports": [{"port": 5432}, {"port": 80, "targetPort": 8080}]}});
        let got = subsets(&svc, &[pod("a", "10.42.0.2", true, json!([]))]);
        assert_eq!(got[0]["ports"], json!([{"port": 5432, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}]));
        assert_eq!(
            api_server_subsets("https://192.168.1.20:6443"),
            vec![
                json!({"addresses": [{"ip": "192.168.1.20"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
            ]
        );
        assert!(api_server_subsets("https://board.local:6443").is_empty(), "an address, not a name");
    }
}
