//! Server-side printing: `meta.k8s.io/v1 Table` answers for `kubectl get`, with the
//! upstream columns of each kind (`priority: 1` columns are the `-o wide` ones).

use serde_json::{Value, json};

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: &str) -> String {
    if v.is_empty() { "<none>".into() } else { v.into() }
}

/// Upstream's short human duration: 45s, 5m, 3h, 2d, 2y... with two units where useful.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", secs % 60) }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(o: &Value, ptr: &str) -> String {
    let ts = s(o, ptr);
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => human_duration(jiff::Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn labels_str(o: &Value, ptr: &str) -> String {
    match o.pointer(ptr).and_then(Value::as_object) {
        Some(m) if !m.is_empty() => {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        }
        _ => "<none>".into(),
    }
}

fn container_field(o: &Value, ptr: &str, field: &str) -> String {
    o.pointer(ptr)
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| c.get(field).and_then(Value::as_str).unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The pod STATUS column: the reason upstream `kubectl get pods` shows.
pub fn pod_status(o: &Value) -> String {
    if o.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        return "Terminating".into();
    }
    let mut reason = s(o, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(o, "/status/phase").to_string();
    }
    let inits = o.pointer("/status/initContainerStatuses").and_then(Value::as_array);
    let n_init = o.pointer("/spec/initContainers").and_then(Value::as_array).map_or(0, Vec::len);
    for (i, c) in inits.into_iter().flatten().enumerate() {
        if let Some(t) = c.pointer("/state/terminated")
            && t.get("exitCode").and_then(Value::as_i64) == Some(0)
        {
            continue;
        }
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str)
            && r != "PodInitializing"
        {
            return format!("Init:{r}");
        }
        if let Some(t) = c.pointer("/state/terminated") {
            return format!("Init:{}", t.get("reason").and_then(Value::as_str).unwrap_or("Error"));
        }
        return format!("Init:{i}/{n_init}");
    }
    for c in o.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.into();
        } else if let Some(t) = c.pointer("/state/terminated") {
            reason = t
                .get("reason")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| format!("ExitCode:{}", t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)));
        }
    }
    reason
}

/// Upstream's `listWithMoreString`: the first three items, then `+ N more...`; `<unset>`
/// for none.
fn first_of(items: impl Iterator<Item = String>) -> String {
    const SHOWN: usize = 3;
    let (mut shown, mut count) = (Vec::new(), 0usize);
    for item in items {
        if shown.len() < SHOWN {
            shown.push(item);
        }
        count += 1;
    }
    match count {
        0 => "<unset>".into(),
        n if n > SHOWN => format!("{} + {} more...", shown.join(","), n - SHOWN),
        _ => shown.join(","),
    }
}

type Col = (&'static str, &'static str, u8);
type RowFn = fn(&Value) -> Vec<Value>;

/// Column definitions and a row function for `plural`.
fn columns(plural: &str) -> (Vec<Col>, RowFn) {
    match plural {
        "pods" => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ],
            |o| {
                let statuses = o.pointer("/status/containerStatuses").and_then(Value::as_array);
                let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                let ready = statuses.into_iter().flatten().filter(|c| c.get("ready") == Some(&json!(true))).count();
                let restarts: i64 = statuses.into_iter().flatten().map(|c| n(c, "/restartCount")).sum();
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(o)),
                    json!(restarts.to_string()),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(or_none(s(o, "/status/podIP"))),
                    json!(or_none(s(o, "/spec/nodeName"))),
                    json!("<none>"),
                    json!("<none>"),
                ]
            },
        ),
        "namespaces" => (vec![("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)], |o| {
            vec![
                json!(s(o, "/metadata/name")),
                json!(s(o, "/status/phase")),
                json!(age(o, "/metadata/creationTimestamp")),
            ]
        }),
        "nodes" => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ],
            |o| {
                let ready = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| c.get("type") == Some(&json!("Ready")));
                let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
                    Some("True") => "Ready".to_string(),
                    Some(_) => "NotReady".to_string(),
                    None => "Unknown".to_string(),
                };
                if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                    status.push_str(",SchedulingDisabled");
                }
                let roles: Vec<String> = o
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
                    .collect();
                let addr = |t: &str| {
                    o.pointer("/status/addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|a| a.get("type") == Some(&json!(t)))
                        .and_then(|a| a.get("address"))
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                        .to_string()
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(status),
                    json!(if roles.is_empty() { "<none>".into() } else { roles.join(",") }),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(s(o, "/status/nodeInfo/kubeletVersion")),
                    json!(addr("InternalIP")),
                    json!(addr("ExternalIP")),
                    json!(s(o, "/status/nodeInfo/osImage")),
                    json!(s(o, "/status/nodeInfo/kernelVersion")),
                    json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
                ]
            },
        ),
        "services" => (
            vec![
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0),
                ("Port(s)", "string", 0),
                ("Age", "string", 0),
                ("Selector", "string", 1),
            ],
            |o| {
                let ports: Vec<String> = o
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let np =
                            p.get("nodePort").and_then(Value::as_i64).map(|np| format!(":{np}")).unwrap_or_default();
                        format!("{}{np}/{}", n(p, "/port"), p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
                    })
                    .collect();
                let ext = o
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.get("ip").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(",");
                let ext = if !ext.is_empty() {
                    ext
                } else if s(o, "/spec/type") == "LoadBalancer" {
                    "<pending>".into()
                } else if s(o, "/spec/type") == "ExternalName" {
                    s(o, "/spec/externalName").into()
                } else {
                    "<none>".into()
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/type")),
                    json!(or_none(s(o, "/spec/clusterIP"))),
                    json!(ext),
                    json!(if ports.is_empty() { "<none>".into() } else { ports.join(",") }),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(labels_str(o, "/spec/selector")),
                ]
            },
        ),
        "endpoints" => (vec![("Name", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)], |o| {
            let mut eps = Vec::new();
            for sub in o.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                for a in sub.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    for p in sub.get("ports").and_then(Value::as_array).into_iter().flatten() {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![
                json!(s(o, "/metadata/name")),
                json!(if eps.is_empty() { "<none>".into() } else { eps.join(",") }),
                json!(age(o, "/metadata/creationTimestamp")),
            ]
        }),
        "endpointslices" => (
            vec![
                ("Name", "string", 0),
                ("AddressType", "string", 0),
                ("Ports", "string", 0),
                ("Endpoints", "string", 0),
                ("Age", "string", 0),
            ],
            |o| {
                let ports = o.get("ports").and_then(Value::as_array).into_iter().flatten().map(|p| {
                    match (p.get("port").and_then(Value::as_i64), p.get("name").and_then(Value::as_str)) {
                        (Some(port), _) => port.to_string(),
                        (None, Some(name)) => name.to_string(),
                        (None, None) => "*".to_string(),
                    }
                });
                let addresses = o
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|e| e.get("addresses").and_then(Value::as_array).into_iter().flatten())
                    .map(|a| a.as_str().unwrap_or("").to_string());
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/addressType")),
                    json!(first_of(ports)),
                    json!(first_of(addresses)),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        "configmaps" => (vec![("Name", "string", 0), ("Data", "string", 0), ("Age", "string", 0)], |o| {
            let count = o.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + o.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![json!(s(o, "/metadata/name")), json!(count), json!(age(o, "/metadata/creationTimestamp"))]
        }),
        "secrets" => {
            (vec![("Name", "string", 0), ("Type", "string", 0), ("Data", "string", 0), ("Age", "string", 0)], |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/type")),
                    json!(o.get("data").and_then(Value::as_object).map_or(0, |m| m.len())),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            })
        }
        "serviceaccounts" => (vec![("Name", "string", 0), ("Secrets", "string", 0), ("Age", "string", 0)], |o| {
            vec![
                json!(s(o, "/metadata/name")),
                json!(o.get("secrets").and_then(Value::as_array).map_or(0, Vec::len)),
                json!(age(o, "/metadata/creationTimestamp")),
            ]
        }),
        "events" => (
            vec![
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Message", "string", 0),
            ],
            |o| {
                let last = if !s(o, "/lastTimestamp").is_empty() {
                    age(o, "/lastTimestamp")
                } else {
                    age(o, "/metadata/creationTimestamp")
                };
                vec![
                    json!(last),
                    json!(s(o, "/type")),
                    json!(s(o, "/reason")),
                    json!(format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name"))),
                    json!(s(o, "/message")),
                ]
            },
        ),
        "persistentvolumes" => (
            vec![
                ("Name", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("Reclaim Policy", "string", 0),
                ("Status", "string", 0),
                ("Claim", "string", 0),
                ("StorageClass", "string", 0),
                ("Age", "string", 0),
            ],
            |o| {
                let claim = if s(o, "/spec/claimRef/name").is_empty() {
                    String::new()
                } else {
                    format!("{}/{}", s(o, "/spec/claimRef/namespace"), s(o, "/spec/claimRef/name"))
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/capacity/storage")),
                    json!(access_modes(o)),
                    json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(o, "/status/phase")),
                    json!(claim),
                    json!(s(o, "/spec/storageClassName")),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        "persistentvolumeclaims" => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Volume", "string", 0),
                ("Capacity", "string", 0),
                ("Access Modes", "string", 0),
                ("StorageClass", "string", 0),
                ("Age", "string", 0),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/status/phase")),
                    json!(s(o, "/spec/volumeName")),
                    json!(s(o, "/status/capacity/storage")),
                    json!(access_modes(o)),
                    json!(s(o, "/spec/storageClassName")),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        "deployments" => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "string", 0),
                ("Available", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas"))),
                    json!(n(o, "/status/updatedReplicas")),
                    json!(n(o, "/status/availableReplicas")),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(container_field(o, "/spec/template/spec/containers", "name")),
                    json!(container_field(o, "/spec/template/spec/containers", "image")),
                    json!(labels_str(o, "/spec/selector/matchLabels")),
                ]
            },
        ),
        "replicasets" => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(n(o, "/spec/replicas")),
                    json!(n(o, "/status/replicas")),
                    json!(n(o, "/status/readyReplicas")),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(container_field(o, "/spec/template/spec/containers", "name")),
                    json!(container_field(o, "/spec/template/spec/containers", "image")),
                    json!(labels_str(o, "/spec/selector/matchLabels")),
                ]
            },
        ),
        "statefulsets" => (
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas"))),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(container_field(o, "/spec/template/spec/containers", "name")),
                    json!(container_field(o, "/spec/template/spec/containers", "image")),
                ]
            },
        ),
        "daemonsets" => (
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Node Selector", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(n(o, "/status/desiredNumberScheduled")),
                    json!(n(o, "/status/currentNumberScheduled")),
                    json!(n(o, "/status/numberReady")),
                    json!(n(o, "/status/updatedNumberScheduled")),
                    json!(n(o, "/status/numberAvailable")),
                    json!(labels_str(o, "/spec/template/spec/nodeSelector")),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(container_field(o, "/spec/template/spec/containers", "name")),
                    json!(container_field(o, "/spec/template/spec/containers", "image")),
                    json!(labels_str(o, "/spec/selector/matchLabels")),
                ]
            },
        ),
        "jobs" => (
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Duration", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            |o| {
                let cond = |t: &str| {
                    o.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|c| c.get("type") == Some(&json!(t)) && c.get("status") == Some(&json!("True")))
                };
                let status = if cond("Complete") {
                    "Complete"
                } else if cond("Failed") {
                    "Failed"
                } else if cond("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                };
                let completions = o
                    .pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .map_or(format!("{}/1 of {}", n(o, "/status/succeeded"), n(o, "/spec/parallelism")), |c| {
                        format!("{}/{c}", n(o, "/status/succeeded"))
                    });
                let dur = match (
                    s(o, "/status/startTime").parse::<jiff::Timestamp>(),
                    s(o, "/status/completionTime").parse::<jiff::Timestamp>(),
                ) {
                    (Ok(a), Ok(b)) => human_duration(b.as_second() - a.as_second()),
                    (Ok(a), Err(_)) => human_duration(jiff::Timestamp::now().as_second() - a.as_second()),
                    _ => String::new(),
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(status),
                    json!(completions),
                    json!(dur),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(container_field(o, "/spec/template/spec/containers", "name")),
                    json!(container_field(o, "/spec/template/spec/containers", "image")),
                    json!(labels_str(o, "/spec/selector/matchLabels")),
                ]
            },
        ),
        "cronjobs" => (
            vec![
                ("Name", "string", 0),
                ("Schedule", "string", 0),
                ("Timezone", "string", 0),
                ("Suspend", "boolean", 0),
                ("Active", "integer", 0),
                ("Last Schedule", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/schedule")),
                    json!(or_none(s(o, "/spec/timeZone"))),
                    json!(o.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                    json!(o.pointer("/status/active").and_then(Value::as_array).map_or(0, Vec::len)),
                    json!(if s(o, "/status/lastScheduleTime").is_empty() {
                        "<none>".into()
                    } else {
                        age(o, "/status/lastScheduleTime")
                    }),
                    json!(age(o, "/metadata/creationTimestamp")),
                    json!(container_field(o, "/spec/jobTemplate/spec/template/spec/containers", "name")),
                    json!(container_field(o, "/spec/jobTemplate/spec/template/spec/containers", "image")),
                ]
            },
        ),
        "leases" => (vec![("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)], |o| {
            vec![
                json!(s(o, "/metadata/name")),
                json!(s(o, "/spec/holderIdentity")),
                json!(age(o, "/metadata/creationTimestamp")),
            ]
        }),
        "storageclasses" => (
            vec![
                ("Name", "string", 0),
                ("Provisioner", "string", 0),
                ("ReclaimPolicy", "string", 0),
                ("VolumeBindingMode", "string", 0),
                ("AllowVolumeExpansion", "string", 0),
                ("Age", "string", 0),
            ],
            |o| {
                let default = o.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                    == Some(&json!("true"));
                let name = if default {
                    format!("{} (default)", s(o, "/metadata/name"))
                } else {
                    s(o, "/metadata/name").to_string()
                };
                vec![
                    json!(name),
                    json!(s(o, "/provisioner")),
                    json!(s(o, "/reclaimPolicy")),
                    json!(s(o, "/volumeBindingMode")),
                    json!(o.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false).to_string()),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        "ingresses" => (
            vec![
                ("Name", "string", 0),
                ("Class", "string", 0),
                ("Hosts", "string", 0),
                ("Address", "string", 0),
                ("Ports", "string", 0),
                ("Age", "string", 0),
            ],
            |o| {
                let hosts: Vec<&str> = o
                    .pointer("/spec/rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.get("host").and_then(Value::as_str))
                    .collect();
                let tls = o.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(or_none(s(o, "/spec/ingressClassName"))),
                    json!(if hosts.is_empty() { "*".into() } else { hosts.join(",") }),
                    json!(
                        o.pointer("/status/loadBalancer/ingress")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|i| i.get("ip").or_else(|| i.get("hostname")).and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    json!(if tls { "80, 443" } else { "80" }),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        "ingressclasses" => (
            vec![("Name", "string", 0), ("Controller", "string", 0), ("Parameters", "string", 0), ("Age", "string", 0)],
            |o| {
                let params = o.pointer("/spec/parameters").map_or("<none>".to_string(), |p| {
                    let group = s(p, "/apiGroup");
                    let group = if group.is_empty() { String::new() } else { format!(".{group}") };
                    format!("{}{group}/{}", s(p, "/kind"), s(p, "/name"))
                });
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/controller")),
                    json!(params),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        "networkpolicies" => (vec![("Name", "string", 0), ("Pod-Selector", "string", 0), ("Age", "string", 0)], |o| {
            let sel = o
                .pointer("/spec/podSelector/matchLabels")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>())
                .unwrap_or_default();
            let sel = if sel.is_empty() { "<none>".to_string() } else { sel.join(",") };
            vec![json!(s(o, "/metadata/name")), json!(sel), json!(age(o, "/metadata/creationTimestamp"))]
        }),
        "poddisruptionbudgets" => (
            vec![
                ("Name", "string", 0),
                ("Min Available", "string", 0),
                ("Max Unavailable", "string", 0),
                ("Allowed Disruptions", "integer", 0),
                ("Age", "string", 0),
            ],
            |o| {
                let v = |p: &str| {
                    o.pointer(p)
                        .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
                        .unwrap_or_else(|| "N/A".into())
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(v("/spec/minAvailable")),
                    json!(v("/spec/maxUnavailable")),
                    json!(n(o, "/status/disruptionsAllowed")),
                    json!(age(o, "/metadata/creationTimestamp")),
                ]
            },
        ),
        _ => (vec![("Name", "string", 0), ("Age", "string", 0)], |o| {
            vec![json!(s(o, "/metadata/name")), json!(age(o, "/metadata/creationTimestamp"))]
        }),
    }
}

fn access_modes(o: &Value) -> String {
    o.pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How much of each object a row carries, from `?includeObject=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> IncludeObject {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn row_object(o: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => o.clone(),
        IncludeObject::Metadata => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    }
}

/// A Table of `objects` of resource `plural`.
pub fn table(plural: &str, objects: &[Value], include: IncludeObject, list_meta: Value) -> Value {
    let (cols, row) = columns(plural);
    let defs: Vec<Value> = cols
        .iter()
        .map(|(name, ty, prio)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": prio})
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| json!({"cells": row(o), "object": row_object(o, include)})).collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn pod_row_has_upstream_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [{"ready": true, "restartCount": 2, "state": {"running": {}}}]}});
        let t = table("pods", &[pod], IncludeObject::Metadata, json!({}));
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn endpoint_slice_rows_print_like_kubectl() {
        let ep = |ip: &str| json!({"addresses": [ip]});
        let slice = json!({"metadata": {"name": "web-abcde", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}],
            "endpoints": [ep("10.42.0.1"), ep("10.42.0.2"), ep("10.42.0.3"), ep("10.42.0.4"), ep("10.42.0.5")]});
        let placeholder = json!({"metadata": {"name": "empty-xyz12"}, "addressType": "IPv4", "endpoints": []});
        let named = json!({"metadata": {"name": "n"}, "addressType": "IPv4",
            "ports": [{"name": "a"}, {}, {"port": 1}, {"port": 2}], "endpoints": [ep("10.42.0.9")]});
        let t = table("endpointslices", &[slice, placeholder, named], IncludeObject::None, json!({}));
        let cols: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(cols, ["Name", "AddressType", "Ports", "Endpoints", "Age"]);
        let cells = |i: usize| t["rows"][i]["cells"].clone();
        assert_eq!(cells(0)[1], "IPv4");
        assert_eq!(cells(0)[2], "80,443");
        assert_eq!(cells(0)[3], "10.42.0.1,10.42.0.2,10.42.0.3 + 2 more...");
        assert_eq!((cells(1)[2].clone(), cells(1)[3].clone()), (json!("<unset>"), json!("<unset>")));
        assert_eq!(cells(2)[2], "a,*,1 + 1 more...");
        assert_eq!(cells(2)[3], "10.42.0.9");
    }

    #[test]
    fn table_accept_detection() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
