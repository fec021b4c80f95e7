//! Service ClusterIP and NodePort allocation.
//!
//! An allocation is a store key (`_alloc/clusterip/<ip>`, `_alloc/nodeport/<port>`) written
//! with `Expect::Absent` in the same transaction as the Service, so two concurrent creates
//! can never get the same address or port; deleting the Service releases them in the same
//! transaction too.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::ApiOptions;
use super::status::{ApiError, Cause};
use crate::store::{Expect, Op, Store};

const IP_PREFIX: &str = "_alloc/clusterip/";
const PORT_PREFIX: &str = "_alloc/nodeport/";
const POD_CIDR_PREFIX: &str = "_alloc/podcidr/";

/// Gives a new Node the next free /24 of the cluster CIDR as `spec.podCIDR(s)`, as the
/// controller manager's node IPAM does; a Node that names its own range keeps it.
pub fn allocate_node(store: &Store, opts: &ApiOptions, node: &mut Value) -> Result<Vec<Op>, ApiError> {
    let existing = node.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or("").to_string();
    if !existing.is_empty() {
        return Ok(vec![Op {
            key: format!("{POD_CIDR_PREFIX}{existing}"),
            expect: Expect::Any,
            value: Some(b"1".to_vec()),
        }]);
    }
    let (net, bits) = opts.cluster_cidr;
    let count = 1u32 << (24 - bits.min(24));
    for i in 0..count {
        let cidr = format!("{}/24", Ipv4Addr::from(u32::from(net) + (i << 8)));
        let key = format!("{POD_CIDR_PREFIX}{cidr}");
        if !taken(store, &key)? {
            node["spec"]["podCIDR"] = json!(cidr);
            node["spec"]["podCIDRs"] = json!([cidr]);
            return Ok(vec![Op { key, expect: Expect::Absent, value: Some(b"1".to_vec()) }]);
        }
    }
    let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    tracing::warn!(node = name, "the cluster CIDR has no free /24 left for this node");
    Ok(Vec::new())
}

fn taken(store: &Store, key: &str) -> Result<bool, ApiError> {
    Ok(store.get(key)?.is_some())
}

fn invalid(svc: &Value, field: &str, value: impl std::fmt::Display, why: &str) -> ApiError {
    let name = svc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    ApiError::invalid("Service", "", name, vec![Cause::invalid(field, value, why)])
}

/// Fills in `spec.clusterIP(s)` and node ports of `svc`, returning the allocation writes.
/// `old` is the stored Service on update (its allocations are kept).
pub fn allocate_service(
    store: &Store,
    opts: &ApiOptions,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<Vec<Op>, ApiError> {
    let mut ops = Vec::new();
    let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    let (net, bits) = opts.service_cidr;
    let size = 1u32 << (32 - bits);
    let base = u32::from(net);
    if ty != "ExternalName" {
        let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).unwrap_or("").to_string();
        let want = svc.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
        let ip = if !old_ip.is_empty() {
            old_ip
        } else if want == "None" {
            want
        } else if !want.is_empty() {
            let parsed: Ipv4Addr = want.parse().map_err(|_| {
                invalid(
                    svc,
                    "spec.clusterIPs[0]",
                    &want,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                )
            })?;
            let n = u32::from(parsed);
            if n <= base || n >= base + size - 1 {
                return Err(invalid(
                    svc,
                    "spec.clusterIPs[0]",
                    &want,
                    &format!(
                        "failed to allocate IP {want}: provided IP is not in the valid range. The range of valid IPs is {net}/{bits}"
                    ),
                ));
            }
            if taken(store, &format!("{IP_PREFIX}{want}"))? {
                return Err(invalid(
                    svc,
                    "spec.clusterIPs[0]",
                    &want,
                    &format!("failed to allocate IP {want}: provided IP is already allocated"),
                ));
            }
            ops.push(Op { key: format!("{IP_PREFIX}{want}"), expect: Expect::Absent, value: Some(b"1".to_vec()) });
            want
        } else {
            // Random start, then the next free address, skipping the network, .1 (the
            // `kubernetes` Service) and .10 (cluster DNS), as upstream reserves them.
            let span = size.saturating_sub(2).max(1);
            let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
            let mut found = None;
            for i in 0..span {
                let off = 1 + (start + i) % span;
                if off == 1 || off == 10 {
                    continue;
                }
                let cand = Ipv4Addr::from(base + off).to_string();
                if !taken(store, &format!("{IP_PREFIX}{cand}"))? {
                    found = Some(cand);
                    break;
                }
            }
            let ip = found.ok_or_else(|| ApiError::internal("failed to allocate a service IP: range is full"))?;
            ops.push(Op { key: format!("{IP_PREFIX}{ip}"), expect: Expect::Absent, value: Some(b"1".to_vec()) });
            ip
        };
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let old_ports: Vec<i64> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        let (lo, hi) = opts.node_port_range;
        let mut chosen = Vec::new();
        let n_ports = svc.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len);
        for i in 0..n_ports {
            let mut want = svc["spec"]["ports"][i].get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            if want == 0 {
                // An update that leaves a port's nodePort out keeps the one it has, as upstream.
                let this = &svc["spec"]["ports"][i];
                let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
                want = old
                    .and_then(|o| o.pointer("/spec/ports"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|p| p["port"] == this["port"] && proto(p) == proto(this))
                    .and_then(|p| p["nodePort"].as_i64())
                    .filter(|np| !chosen.contains(np))
                    .unwrap_or(0);
            }
            // `allocateLoadBalancerNodePorts: false`: a LoadBalancer gets only the node
            // ports it names (its traffic comes to the LoadBalancer's addresses).
            if want == 0 && ty == "LoadBalancer" && svc["spec"]["allocateLoadBalancerNodePorts"] == false {
                continue;
            }
            let port = if want != 0 {
                if want < lo as i64 || want > hi as i64 {
                    return Err(invalid(
                        svc,
                        &format!("spec.ports[{i}].nodePort"),
                        want,
                        &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                    ));
                }
                if !old_ports.contains(&want) {
                    if taken(store, &format!("{PORT_PREFIX}{want}"))? || chosen.contains(&want) {
                        return Err(invalid(
                            svc,
                            &format!("spec.ports[{i}].nodePort"),
                            want,
                            "provided port is already allocated",
                        ));
                    }
                    ops.push(Op {
                        key: format!("{PORT_PREFIX}{want}"),
                        expect: Expect::Absent,
                        value: Some(b"1".to_vec()),
                    });
                }
                want
            } else {
                let span = (hi - lo + 1) as u32;
                let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
                let mut found = None;
                for k in 0..span {
                    let cand = lo as i64 + ((start + k) % span) as i64;
                    if !chosen.contains(&cand) && !taken(store, &format!("{PORT_PREFIX}{cand}"))? {
                        found = Some(cand);
                        break;
                    }
                }
                let p = found.ok_or_else(|| ApiError::internal("failed to allocate a node port: range is full"))?;
                ops.push(Op { key: format!("{PORT_PREFIX}{p}"), expect: Expect::Absent, value: Some(b"1".to_vec()) });
                p
            };
            chosen.push(port);
            svc["spec"]["ports"][i]["nodePort"] = json!(port);
        }
        for p in old_ports.iter().filter(|p| !chosen.contains(p)) {
            ops.push(Op { key: format!("{PORT_PREFIX}{p}"), expect: Expect::Any, value: None });
        }
    }
    Ok(ops)
}

/// The writes that release what a deleted object held.
pub fn release(kind: &str, obj: &Value) -> Vec<Op> {
    if kind == "Node" {
        return obj
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(|c| Op { key: format!("{POD_CIDR_PREFIX}{c}"), expect: Expect::Any, value: None })
            .into_iter()
            .collect();
    }
    if kind != "Service" {
        return Vec::new();
    }
    let mut ops = Vec::new();
    if let Some(ip) =
        obj.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty() && *ip != "None")
    {
        ops.push(Op { key: format!("{IP_PREFIX}{ip}"), expect: Expect::Any, value: None });
    }
    for p in obj.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            ops.push(Op { key: format!("{PORT_PREFIX}{np}"), expect: Expect::Any, value: None });
        }
    }
    ops
}
