//! The node agent. It talks to the API over HTTPS exactly as a remote agent would, so the
//! in-process agent of `bramble server` and a future `bramble agent` on another board are
//! the same code.
//!
//! This stage registers the Node (labels, capacity, system info, addresses, conditions) and
//! keeps it alive through a Lease in `kube-node-lease`, renewed every 10 s as the kubelet
//! does: one small write per renewal, while the full status is written only when something
//! in it changes or once every 5 minutes. It runs the pods bound to the node ([`pods`]) and
//! serves their logs to the API server ([`kubelet`]). Where the board reports it
//! ([`board`]), the Node also carries UnderVoltage, ThermalThrottling and StorageWear
//! conditions, and a Warning Event is posted on the Node when one of them turns True.

pub mod board;
pub mod certs;
pub mod facts;
pub mod join;
pub mod kubelet;
pub mod net;
pub mod pods;
pub mod registries;
pub mod spdy;
pub mod stats;
pub mod streams;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::{Client, is_not_found};

/// How often the Lease is renewed (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How long a Lease stays valid without renewal.
const LEASE_SECONDS: u64 = 40;
/// The full status is rewritten at least this often even when nothing changed.
const STATUS_EVERY: Duration = Duration::from_secs(300);

/// How this node runs pods (from the `bramble server` / `bramble agent` flags).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where container logs go.
    pub pod_log_dir: std::path::PathBuf,
    /// k3s-format `registries.yaml`.
    pub private_registry: std::path::PathBuf,
    /// Port of the node's HTTPS endpoint for logs.
    pub kubelet_port: u16,
    /// Most processes one container may have; 0 for no limit.
    pub pod_max_pids: i64,
    /// The node's network: overlay, proxy, DNS.
    pub net: net::NetOptions,
    /// The node's Ingress proxy.
    pub ingress: net::ingress::IngressOptions,
}

/// What the agent needs to know.
pub struct AgentOptions {
    /// Credentials for the API (the server's admin kubeconfig for the in-process agent).
    pub kubeconfig: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// Where pods' data will live: its disk decides the `disktype` label.
    pub data_dir: PathBuf,
    /// `--node-label key=value`.
    pub labels: Vec<String>,
    /// `--node-taint key=value:Effect`.
    pub taints: Vec<String>,
    /// Whether this node also runs the control plane (`node-role.kubernetes.io/control-plane`).
    pub server: bool,
    /// How pods run here.
    pub runtime: RuntimeOptions,
}

/// Parses `key=value` (or `key`) into a label.
fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        bail!("--node-label {s:?} must look like key=value");
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `key=value:Effect` (or `key:Effect`) into a taint.
fn parse_taint(s: &str) -> anyhow::Result<Value> {
    let (kv, effect) =
        s.rsplit_once(':').with_context(|| format!("--node-taint {s:?} must look like key=value:NoSchedule"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("--node-taint {s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        bail!("--node-taint {s:?} has no key");
    }
    let mut taint = json!({"key": key, "effect": effect});
    if !value.is_empty() {
        taint["value"] = json!(value);
    }
    Ok(taint)
}

/// Checks `--node-label` and `--node-taint` before anything starts.
pub fn check_flags(labels: &[String], taints: &[String]) -> anyhow::Result<()> {
    labels.iter().try_for_each(|l| parse_label(l).map(|_| ()))?;
    taints.iter().try_for_each(|t| parse_taint(t).map(|_| ()))
}

fn now_rfc3339(micros: bool) -> String {
    let t = jiff::Timestamp::now();
    if micros { t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string() } else { t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string() }
}

/// The status (`"True"`, `"False"`) of the condition `kind` in `conditions`.
fn condition_status<'a>(conditions: &'a Value, kind: &str) -> Option<&'a str> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)?["status"].as_str()
}

/// The conditions for `facts`, keeping the transition time of those that did not change.
fn conditions(f: &facts::Facts, previous: &Value) -> Value {
    let now = now_rfc3339(false);
    // (type, under pressure, reason and message when under it, when not) as the kubelet says them.
    let wanted = [
        (
            "MemoryPressure",
            f.memory_pressure,
            ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
            ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ),
        (
            "DiskPressure",
            f.disk_pressure,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        (
            "PIDPressure",
            false,
            ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
            ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ),
    ];
    let mut out: Vec<Value> = wanted
        .iter()
        .map(|(kind, on, when_on, when_off)| {
            let (reason, message) = if *on { when_on } else { when_off };
            json!({"type": kind, "status": if *on { "True" } else { "False" }, "reason": reason, "message": message})
        })
        .collect();
    out.push(json!({
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
    }));
    let was_throttling = condition_status(previous, "ThermalThrottling") == Some("True");
    for c in f.board_health.conditions(was_throttling) {
        out.push(json!({"type": c.kind, "status": if c.bad { "True" } else { "False" }, "reason": c.reason,
                        "message": c.message}));
    }
    for c in &mut out {
        let before = previous
            .as_array()
            .and_then(|a| a.iter().find(|p| p["type"] == c["type"]))
            .filter(|p| p["status"] == c["status"]);
        c["lastHeartbeatTime"] = json!(now);
        c["lastTransitionTime"] = before.map_or(json!(now), |p| p["lastTransitionTime"].clone());
    }
    Value::Array(out)
}

/// Creates the Node, or brings the labels the agent owns up to date on an existing one.
async fn register(client: &Client, opts: &AgentOptions, f: &facts::Facts) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{}", opts.node_name);
    let mut labels = f.labels.clone();
    for l in &opts.labels {
        let (k, v) = parse_label(l)?;
        labels[k] = json!(v);
    }
    let taints: Vec<Value> = opts.taints.iter().map(|t| parse_taint(t)).collect::<anyhow::Result<_>>()?;
    match client.get(&path).await {
        Ok(_) => {
            let patch = json!({"metadata": {"labels": labels}});
            client.call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&patch)).await?;
        }
        Err(e) if is_not_found(&e) => {
            // With its status, as the kubelet registers: no reader ever sees the Node without
            // capacity (the scheduler would have nothing to fit pods against).
            let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": opts.node_name, "labels": labels},
                "spec": {}, "status": node_status(f, opts, &Value::Null)});
            if !taints.is_empty() {
                node["spec"]["taints"] = json!(taints);
            }
            let created =
                client.call("POST", "/api/v1/nodes", Some("application/json"), "application/json", Some(&node)).await?;
            post_board_events(client, &created, &Value::Null, &node["status"]["conditions"]).await;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The Node's status from `f`, keeping the transition times of `conditions` that did not
/// change.
fn node_status(f: &facts::Facts, opts: &AgentOptions, conditions_before: &Value) -> Value {
    json!({
        "capacity": f.capacity,
        "allocatable": f.allocatable,
        "addresses": f.addresses,
        "nodeInfo": f.node_info,
        "conditions": conditions(f, conditions_before),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": opts.runtime.kubelet_port}},
    })
}

/// Writes the Node's status from `f`, then posts a Warning Event for each board condition
/// that turned True; returns what was written, to compare with the next round.
async fn write_status(client: &Client, opts: &AgentOptions, f: &facts::Facts) -> anyhow::Result<Value> {
    let path = format!("/api/v1/nodes/{}/status", opts.node_name);
    let mut node = client.get(&format!("/api/v1/nodes/{}", opts.node_name)).await?;
    let before = node["status"]["conditions"].take();
    let status = node_status(f, opts, &before);
    node["status"] = status.clone();
    client.call("PUT", &path, Some("application/json"), "application/json", Some(&node)).await?;
    // After the write: a failed write is retried next round, and must not post twice.
    post_board_events(client, &node, &before, &status["conditions"]).await;
    Ok(status)
}

/// The (reason, message) of each board condition True in `after` that was not True in
/// `before`.
fn board_conditions_turned_bad(before: &Value, after: &Value) -> Vec<(String, String)> {
    let Some(after) = after.as_array() else { return Vec::new() };
    after
        .iter()
        .filter(|c| c["status"] == "True")
        .filter_map(|c| {
            let kind = board::CONDITION_TYPES.into_iter().find(|k| c["type"] == *k)?;
            (condition_status(before, kind) != Some("True")).then(|| {
                (c["reason"].as_str().unwrap_or(kind).to_string(), c["message"].as_str().unwrap_or("").to_string())
            })
        })
        .collect()
}

/// Posts a Warning Event on `node` for each board condition that turned True, as the kubelet
/// posts node events (namespace `default`). Events are a notice, not state: one that cannot
/// be written is only logged.
async fn post_board_events(client: &Client, node: &Value, before: &Value, after: &Value) {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    for (reason, message) in board_conditions_turned_bad(before, after) {
        tracing::warn!(node = %name, reason = %reason, "{message}");
        let mut event = crate::control::events::event("bramble-agent", node, "Warning", &reason, &message);
        event["involvedObject"]["apiVersion"] = json!("v1");
        event["involvedObject"]["kind"] = json!("Node");
        event["source"]["host"] = json!(name);
        let path = "/api/v1/namespaces/default/events";
        let posted = client.call("POST", path, Some("application/json"), "application/json", Some(&event)).await;
        if let Err(e) = posted {
            tracing::debug!(error = %format!("{e:#}"), "recording a node event");
        }
    }
}

/// Renews this node's Lease, creating it (owned by the Node) when it is missing.
async fn renew_lease(client: &Client, opts: &AgentOptions) -> anyhow::Result<()> {
    let ns_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let path = format!("{ns_path}/{}", opts.node_name);
    let patch = json!({"spec": {"renewTime": now_rfc3339(true)}});
    match client.call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => {
            let node = client.get(&format!("/api/v1/nodes/{}", opts.node_name)).await?;
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": opts.node_name, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": opts.node_name, "uid": node["metadata"]["uid"]}]},
                "spec": {"holderIdentity": opts.node_name, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": now_rfc3339(true)},
            });
            client.call("POST", ns_path, Some("application/json"), "application/json", Some(&lease)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The node's pod network from the range the server gave its Node; pods fall back to
/// loopback only (and say so in the log) when there is none.
async fn pod_network(client: &Client, opts: &AgentOptions) -> Option<pods::Network> {
    use crate::agent::net::bridge::{Ipam, PodCidr, ensure_bridge};
    let node = client.get(&format!("/api/v1/nodes/{}", opts.node_name)).await.ok()?;
    let Some(cidr) = node["spec"]["podCIDR"].as_str().and_then(PodCidr::parse) else {
        tracing::warn!(node = %opts.node_name, "the Node has no spec.podCIDR: pods get no network");
        return None;
    };
    if let Err(e) = ensure_bridge(cidr).await {
        tracing::error!(error = %format!("{e:#}"), "setting up the pod network: pods get no network");
        return None;
    }
    tracing::info!(cidr = %format!("{}/{}", cidr.net, cidr.bits), "pod network ready");
    Some(pods::Network { cidr, ipam: Ipam::new(&opts.data_dir.join("agent").join("ipam"), cidr) })
}

/// The (type, status) of each condition: a change in any decides that the status is written
/// now rather than at the next full write.
fn condition_statuses(conditions: &Value) -> Vec<(String, String)> {
    let all = conditions.as_array().map(Vec::as_slice).unwrap_or_default();
    all.iter().map(|c| (c["type"].as_str().unwrap_or("").into(), c["status"].as_str().unwrap_or("").into())).collect()
}

/// What of the status decides whether it must be rewritten now (times excluded).
fn status_digest(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conds) = s["conditions"].as_array_mut() {
        for c in conds {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastHeartbeatTime");
                m.remove("lastTransitionTime");
            }
        }
    }
    s
}

/// Registers the node, then renews its Lease and status until `stop` turns true.
pub async fn run(opts: AgentOptions, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    facts::check_kernel()?;
    // The airgap path: archives dropped in <data-dir>/agent/images/ are imported at start.
    let data_dir = opts.data_dir.clone();
    let imported = tokio::task::spawn_blocking(move || {
        crate::images::ImageStore::open(&data_dir).and_then(|store| store.import_dropped(&data_dir))
    })
    .await;
    match imported {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "importing dropped image archives"),
        Err(e) => tracing::warn!(error = %e, "importing dropped image archives"),
    }
    let client = Client::from_kubeconfig(Some(&opts.kubeconfig), None).context("the agent's API credentials")?;
    let first = facts::gather(&opts.node_name, &opts.data_dir, opts.server);
    if let Some(b) = board::detect(std::path::Path::new("/")) {
        tracing::info!(board = %b.id, "running on a {}", b.name);
        for note in &b.notes {
            tracing::info!(board = %b.id, "{note}");
        }
    }
    register(&client, &opts, &first).await.context("registering the node")?;
    let mut last_status = write_status(&client, &opts, &first).await.context("writing the node status")?;
    // What the board reported since boot: the firmware's own record is cleared every 2 s.
    let mut board_health = first.board_health;
    let host_ip = last_status["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    // Configuration is checked before anything on the host changes.
    let insecure_registries = registries::insecure(&opts.runtime.private_registry)?;
    let network = pod_network(&client, &opts).await;
    let net = match &network {
        Some(n) => Some(
            net::start(
                Arc::new(Client::from_kubeconfig(Some(&opts.kubeconfig), None).context("the agent's API credentials")?),
                &opts.node_name,
                n.cidr,
                opts.runtime.net.clone(),
                host_ip.parse().ok(),
                stop.clone(),
            )
            .await
            .context("starting the node network (Services, cluster DNS, the overlay)")?,
        ),
        None => None,
    };
    if let Some(net) = &net {
        let client = Client::from_kubeconfig(Some(&opts.kubeconfig), None).context("the agent's API credentials")?;
        net::ingress::start(
            Arc::new(client),
            &opts.node_name,
            net.services.clone(),
            net.slices.clone(),
            opts.runtime.ingress,
            stop.clone(),
        )
        .await
        .context("starting the Ingress proxy")?;
    }
    // `bramble killall` finds the node's volatile directories by this name.
    let _ = std::fs::write(opts.data_dir.join("agent").join("node-name"), &opts.node_name);
    let layout = crate::runtime::Layout::new(&opts.data_dir, &opts.node_name, &opts.runtime.pod_log_dir);
    // The node's credentials and password, and pods' data (Secret files, volumes): not for
    // other users of the board.
    for (dir, mode) in [(opts.data_dir.join("agent"), 0o700), (layout.pods_dir.clone(), 0o750)] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    crate::runtime::ensure_private_tmpfs(&layout.bundles_dir())
        .with_context(|| format!("mounting a tmpfs for container configs at {}", layout.bundles_dir().display()))?;
    let ctx = Arc::new(pods::Ctx {
        client: Client::from_kubeconfig(Some(&opts.kubeconfig), None).context("the agent's API credentials")?,
        node: opts.node_name.clone(),
        layout,
        images_root: crate::images::ImageStore::open(&opts.data_dir)?.root,
        insecure_registries,
        pids_limit: (opts.runtime.pod_max_pids > 0).then_some(opts.runtime.pod_max_pids),
        no_swap: crate::runtime::cgroup::swap_limitable(),
        allocatable: last_status["allocatable"].clone(),
        host_ip,
        network,
        net,
        tokens: pods::sa_tokens::TokenCache::default(),
    });
    tokio::spawn(pods::run(ctx.clone(), stop.clone()));
    let kubelet = kubelet::serve(ctx, &opts, stop.clone()).await.context("starting the node's HTTPS endpoint")?;
    let _kubelet = tokio::spawn(kubelet);
    let mut last_full = Instant::now();
    tracing::info!(node = %opts.node_name, "node registered");
    loop {
        if let Err(e) = renew_lease(&client, &opts).await {
            tracing::warn!(error = %format!("{e:#}"), "renewing the node lease");
        }
        if let Err(e) = pods::volumes::clean_deleted_volumes(&client, &opts.node_name).await {
            tracing::warn!(error = %format!("{e:#}"), "cleaning deleted local volumes");
        }
        let mut fresh = facts::gather(&opts.node_name, &opts.data_dir, opts.server);
        fresh.board_health = fresh.board_health.remembering(&board_health);
        board_health = fresh.board_health.clone();
        // A read, not a write: notices at once when someone deleted the Node, or when the
        // node controller marked it Unknown while this agent was out of touch.
        let on_server = client.get(&format!("/api/v1/nodes/{}", opts.node_name)).await;
        let gone = matches!(&on_server, Err(e) if is_not_found(e));
        let marked_unknown = on_server.as_ref().is_ok_and(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
        });
        let wanted = conditions(&fresh, &last_status["conditions"]);
        let changed = gone
            || marked_unknown
            || condition_statuses(&wanted) != condition_statuses(&last_status["conditions"])
            || fresh.addresses != last_status["addresses"];
        if changed || last_full.elapsed() >= STATUS_EVERY {
            let written = match write_status(&client, &opts, &fresh).await {
                // Someone deleted the Node: register it again, as the kubelet does.
                Err(e) if is_not_found(&e) => match register(&client, &opts, &fresh).await {
                    Ok(()) => write_status(&client, &opts, &fresh).await,
                    Err(e) => Err(e),
                },
                other => other,
            };
            match written {
                Ok(s) => {
                    if status_digest(&s) != status_digest(&last_status) {
                        tracing::info!(node = %opts.node_name, "node status changed");
                    }
                    last_status = s;
                    last_full = Instant::now();
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "writing the node status"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LEASE_RENEW) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints_parse_like_k3s_flags() {
        assert_eq!(parse_label("disktype=ssd").unwrap(), ("disktype".into(), "ssd".into()));
        assert!(parse_label("=x").is_err());
        assert_eq!(
            parse_taint("dedicated=gpu:NoSchedule").unwrap(),
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})
        );
        assert_eq!(parse_taint("edge:NoExecute").unwrap(), json!({"key": "edge", "effect": "NoExecute"}));
        assert!(parse_taint("x=y:Sometimes").is_err());
        assert!(parse_taint("novalue").is_err());
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let f = facts::gather("n", std::path::Path::new("/"), false);
        let first = conditions(&f, &Value::Null);
        let mut aged = first.clone();
        for c in aged.as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        }
        let second = conditions(&f, &aged);
        assert!(second.as_array().unwrap().iter().all(|c| c["lastTransitionTime"] == "2020-01-01T00:00:00Z"));
        let ready = second.as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
    }

    /// Facts of this machine with a Pi 4 whose supply is failing.
    fn under_voltage_facts() -> facts::Facts {
        let mut f = facts::gather("n", std::path::Path::new("/"), false);
        let bits = board::Throttled::parse("50005").unwrap();
        f.board_health = board::BoardHealth {
            power: Some(board::PowerHealth::from_bits(bits, Some("5.1 V / 3 A USB-C".into()))),
            ..board::BoardHealth::default()
        };
        f
    }

    fn find<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
        conditions.as_array().unwrap().iter().find(|c| c["type"] == kind).unwrap()
    }

    #[test]
    fn under_voltage_is_a_condition_with_advice_and_keeps_its_transition_time() {
        let f = under_voltage_facts();
        let first = conditions(&f, &Value::Null);
        let under_voltage = find(&first, "UnderVoltage");
        assert_eq!(under_voltage["status"], "True");
        assert_eq!(under_voltage["reason"], "UnderVoltageDetected");
        let message = under_voltage["message"].as_str().unwrap();
        assert!(message.starts_with("the board's supply is under-voltage now (get_throttled 0x50005)"), "{message}");
        assert!(message.contains("under-voltage has occurred since boot"), "{message}");
        assert!(message.contains("use a 5.1 V / 3 A USB-C supply"), "{message}");
        // get_throttled also says the firmware is throttling.
        assert_eq!(find(&first, "ThermalThrottling")["status"], "True");
        assert!(first.as_array().unwrap().iter().all(|c| c["type"] != "StorageWear"), "no eMMC data, no condition");

        let mut aged = first.clone();
        for c in aged.as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        }
        let second = conditions(&f, &aged);
        assert_eq!(find(&second, "UnderVoltage")["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(find(&second, "MemoryPressure")["lastTransitionTime"], "2020-01-01T00:00:00Z");

        // Recovered (after a reboot with a better supply): False, with a new transition time.
        let mut recovered = under_voltage_facts();
        recovered.board_health.power = Some(board::PowerHealth::from_bits(board::Throttled(0), None));
        let third = conditions(&recovered, &aged);
        assert_eq!(find(&third, "UnderVoltage")["status"], "False");
        assert_eq!(find(&third, "UnderVoltage")["reason"], "NoUnderVoltage");
        assert_ne!(find(&third, "UnderVoltage")["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }

    #[test]
    fn a_warning_event_only_when_a_board_condition_turns_true() {
        let f = under_voltage_facts();
        let now = conditions(&f, &Value::Null);
        let turned = board_conditions_turned_bad(&Value::Null, &now);
        let reasons: Vec<&str> = turned.iter().map(|(reason, _)| reason.as_str()).collect();
        assert_eq!(reasons, ["UnderVoltageDetected", "Throttled"]);
        assert_eq!(turned[0].1, find(&now, "UnderVoltage")["message"].as_str().unwrap());
        // Still True next round: no second Event.
        assert!(board_conditions_turned_bad(&now, &conditions(&f, &now)).is_empty());
        // MemoryPressure turning True at the same time is the kubelet's business, not a board Event.
        let mut all_false = now.clone();
        for c in all_false.as_array_mut().unwrap() {
            c["status"] = json!("False");
        }
        let mut after = now.clone();
        for c in after.as_array_mut().unwrap().iter_mut().filter(|c| c["type"] == "MemoryPressure") {
            c["status"] = json!("True");
        }
        let turned = board_conditions_turned_bad(&all_false, &after);
        assert_eq!(turned.len(), 2, "only the two board conditions: {turned:?}");
    }

    #[test]
    fn a_board_condition_turning_true_makes_the_status_write_now() {
        let f = under_voltage_facts();
        let mut healthy = under_voltage_facts();
        healthy.board_health.power = Some(board::PowerHealth::from_bits(board::Throttled(0), None));
        let written = conditions(&healthy, &Value::Null);
        let wanted = conditions(&f, &written);
        assert_ne!(condition_statuses(&wanted), condition_statuses(&written));
        assert_eq!(condition_statuses(&conditions(&healthy, &written)), condition_statuses(&written));
    }
}
