//! ServiceLB, k3s's model without its pods: a Service of `type: LoadBalancer` is served on
//! its ports at the addresses of the nodes that take part (all of them, or only those
//! labelled `bramble.io/lb=true` when any is), and those addresses are its
//! `status.loadBalancer.ingress` (`ipMode: VIP`). Every node's service proxy
//! (`agent::net::proxy`) then answers them like external IPs, honouring
//! `loadBalancerSourceRanges`. A port (and protocol) is held by the oldest LoadBalancer
//! Service that asks for it; a later one stays pending, with an Event naming the holder.
//! Services with a `loadBalancerClass` other than ours are left to whoever owns that class
//! (MetalLB, kube-vip); `--disable servicelb` turns this loop off altogether.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::queue::WorkQueue;
use super::{Ctx, s};

const COMPONENT: &str = "service-lb-controller";
/// The `loadBalancerClass` that names us (besides no class at all).
pub const CLASS: &str = "bramble.io/servicelb";
/// The node label that, once any node carries it, limits the serving nodes to those.
pub const NODE_LABEL: &str = "bramble.io/lb";

/// What one Service should show.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Not a LoadBalancer we serve: leave it alone (its status is not ours).
    NotOurs,
    /// No longer a LoadBalancer: whatever ingress it had is cleared.
    Clear,
    /// Served at these addresses.
    Serve(Vec<String>),
    /// Waiting: a port it asks for is held by another Service (the message says which).
    Pending(String),
}

fn is_ours(svc: &Value) -> bool {
    s(svc, "/spec/type") == "LoadBalancer" && matches!(s(svc, "/spec/loadBalancerClass"), "" | CLASS)
}

/// The (port, protocol) pairs a Service asks for.
fn ports(svc: &Value) -> Vec<(u64, String)> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
            Some((p["port"].as_u64()?, proto))
        })
        .collect()
}

/// Who is older: creation time, then namespace/name (a stable tie-break).
fn age_key(svc: &Value) -> (String, String, String) {
    (
        s(svc, "/metadata/creationTimestamp").to_string(),
        s(svc, "/metadata/namespace").to_string(),
        s(svc, "/metadata/name").to_string(),
    )
}

/// The addresses of the nodes that serve LoadBalancers: those labelled
/// `bramble.io/lb=true` when any node is, else every node; each node's overlay address
/// (`bramble.io/node-ip`), else its InternalIP.
pub fn serving_addresses(nodes: &[Arc<Value>]) -> Vec<String> {
    let labelled = |n: &Value| n["metadata"]["labels"].get(NODE_LABEL).and_then(Value::as_str) == Some("true");
    let any_labelled = nodes.iter().any(|n| labelled(n));
    let mut out = BTreeSet::new();
    for node in nodes.iter().filter(|n| !any_labelled || labelled(n)) {
        if node.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
            continue;
        }
        let annotated = s(node, "/metadata/annotations/bramble.io~1node-ip");
        let internal = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or("");
        let ip = if annotated.is_empty() { internal } else { annotated };
        if ip.parse::<std::net::Ipv4Addr>().is_ok() {
            out.insert(ip.to_string());
        }
    }
    out.into_iter().collect()
}

/// What `svc` should show, given every Service and Node.
pub fn plan(svc: &Value, services: &[Arc<Value>], nodes: &[Arc<Value>]) -> Plan {
    if s(svc, "/spec/type") != "LoadBalancer" {
        let has_ingress =
            svc.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).is_some_and(|i| !i.is_empty());
        return if has_ingress { Plan::Clear } else { Plan::NotOurs };
    }
    if !is_ours(svc) {
        return Plan::NotOurs;
    }
    let me = age_key(svc);
    for (port, proto) in ports(svc) {
        let holder = services
            .iter()
            .filter(|o| is_ours(o) && age_key(o) < me)
            .filter(|o| ports(o).contains(&(port, proto.clone())))
            .min_by_key(|o| age_key(o));
        if let Some(h) = holder {
            return Plan::Pending(format!(
                "port {port}/{proto} is already held by LoadBalancer Service {}/{}: it stays pending until that port is free",
                s(h, "/metadata/namespace"),
                s(h, "/metadata/name")
            ));
        }
    }
    Plan::Serve(serving_addresses(nodes))
}

/// Registers the handlers and starts the worker.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    // A change to any LoadBalancer (or a node) can free or take a port or an address for
    // the others: look at every LoadBalancer again (there are few).
    let requeue_all = {
        let (q, services) = (queue.clone(), ctx.services.clone());
        move || {
            for svc in services.list().iter().filter(|s| s["spec"]["type"] == "LoadBalancer") {
                q.add(&super::informer::key_of(svc));
            }
        }
    };
    let (q, again) = (queue.clone(), requeue_all.clone());
    ctx.services.on_change(Box::new(move |old, new| {
        // Only LoadBalancers (and one that just stopped being one, to clear its status)
        // concern this loop; other Services' changes are not looked at.
        let lb = |o: Option<&Value>| o.is_some_and(|o| o["spec"]["type"] == "LoadBalancer");
        if lb(old) || lb(new) {
            if let Some(n) = new {
                q.add(&super::informer::key_of(n));
            }
            again();
        }
    }));
    ctx.nodes.on_change(Box::new(move |_, _| requeue_all()));
    let ctx = ctx.clone();
    super::workers(COMPONENT, queue, 1, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
}

async fn reconcile(ctx: &Ctx, key: &str) -> anyhow::Result<Option<Duration>> {
    let Some(svc) = ctx.services.get(key) else { return Ok(None) };
    let plan = plan(&svc, &ctx.services.list(), &ctx.nodes.list());
    let want: Option<Vec<Value>> = match &plan {
        Plan::NotOurs => return Ok(None),
        Plan::Clear | Plan::Pending(_) => None,
        Plan::Serve(ips) => Some(ips.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect()),
    };
    if let Plan::Pending(why) = &plan {
        // Said at each look (a change to a LoadBalancer or a node), not only when the
        // status changes: a Service created pending has no status to change.
        ctx.events.emit(COMPONENT, &svc, "Warning", "PortConflict", why);
    }
    let have = svc.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).cloned();
    let unchanged = match (&want, &have) {
        (None, None) => true,
        (None, Some(h)) => h.is_empty(),
        (Some(w), Some(h)) => w == h,
        (Some(_), None) => false,
    };
    if unchanged {
        return Ok(None);
    }
    let path =
        format!("/api/v1/namespaces/{}/services/{}/status", s(&svc, "/metadata/namespace"), s(&svc, "/metadata/name"));
    let ingress = want.map_or(Value::Null, Value::Array);
    ctx.conn.merge_patch(&path, &json!({"status": {"loadBalancer": {"ingress": ingress}}})).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(ns: &str, name: &str, created: &str, ports: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": {"type": "LoadBalancer", "ports": ports}}))
    }

    fn node(name: &str, ip: &str, labels: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}))
    }

    #[test]
    fn every_node_serves_until_some_are_labelled() {
        let mut nodes = vec![node("a", "10.0.0.2", json!({})), node("b", "10.0.0.1", json!({}))];
        assert_eq!(serving_addresses(&nodes), ["10.0.0.1", "10.0.0.2"]);
        nodes.push(node("c", "10.0.0.3", json!({"bramble.io/lb": "true"})));
        assert_eq!(serving_addresses(&nodes), ["10.0.0.3"]);
        let annotated =
            Arc::new(json!({"metadata": {"name": "d", "annotations": {"bramble.io/node-ip": "192.168.1.9"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.9.9.9"}]}}));
        assert_eq!(serving_addresses(&[annotated]), ["192.168.1.9"], "the overlay's address first");
    }

    #[test]
    fn the_oldest_service_holds_a_port_and_later_ones_wait() {
        let nodes = vec![node("a", "10.0.0.1", json!({}))];
        let first = lb("default", "web", "2026-01-01T00:00:00Z", json!([{"port": 80, "protocol": "TCP"}]));
        let second = lb("other", "site", "2026-01-02T00:00:00Z", json!([{"port": 80}, {"port": 443}]));
        let udp = lb("default", "dns", "2026-01-03T00:00:00Z", json!([{"port": 80, "protocol": "UDP"}]));
        let all = vec![first.clone(), second.clone(), udp.clone()];
        assert_eq!(plan(&first, &all, &nodes), Plan::Serve(vec!["10.0.0.1".into()]));
        let Plan::Pending(why) = plan(&second, &all, &nodes) else { panic!("the second must wait") };
        assert!(why.contains("80/TCP") && why.contains("default/web"), "{why}");
        assert_eq!(plan(&udp, &all, &nodes), Plan::Serve(vec!["10.0.0.1".into()]), "another protocol is another port");
        // The holder goes: the next in line serves.
        assert_eq!(plan(&second, &[second.clone(), udp.clone()], &nodes), Plan::Serve(vec!["10.0.0.1".into()]));
    }

    #[test]
    fn other_classes_and_other_types_are_left_alone_or_cleared() {
        let nodes = vec![node("a", "10.0.0.1", json!({}))];
        let mut metallb = (*lb("d", "m", "2026-01-01T00:00:00Z", json!([{"port": 80}]))).clone();
        metallb["spec"]["loadBalancerClass"] = json!("metallb.io/metallb");
        assert_eq!(plan(&metallb, &[], &nodes), Plan::NotOurs);
        let mut ours = metallb.clone();
        ours["spec"]["loadBalancerClass"] = json!(CLASS);
        assert!(matches!(plan(&ours, &[], &nodes), Plan::Serve(_)));
        let mut was_lb = ours.clone();
        was_lb["spec"]["type"] = json!("ClusterIP");
        assert_eq!(plan(&was_lb, &[], &nodes), Plan::NotOurs, "no ingress to clear");
        was_lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}});
        assert_eq!(plan(&was_lb, &[], &nodes), Plan::Clear);
    }
}
