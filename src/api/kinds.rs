//! Per-kind object rules: decoding into the upstream `k8s-openapi` type (which is what
//! finds unknown fields and wrong types), upstream defaults, and upstream validation.
//!
//! Everything works on `serde_json::Value` after a typed round trip, so the stored form is
//! always exactly what the typed struct serialises to.

use serde_json::{Map, Value, json};

use super::fields;
use super::status::Cause;

macro_rules! typed_kinds {
    ($($kind:literal => $ty:ty),* $(,)?) => {
        /// Decodes `v` as the typed `kind` and encodes it back.
        fn round_trip(kind: &str, v: Value) -> Result<Value, serde_json::Error> {
            match kind {
                $($kind => serde_json::to_value(serde_json::from_value::<$ty>(v)?),)*
                _ => Ok(v),
            }
        }

        /// Adds the schema of `kind` (and everything it uses) to `generator` (for the test
        /// that writes the stored schemas: `schemars` is linked into tests only).
        #[cfg(test)]
        pub fn add_schema(kind: &str, generator: &mut k8s_openapi::schemars::SchemaGenerator) -> bool {
            match kind {
                $($kind => { generator.subschema_for::<$ty>(); true })*
                _ => false,
            }
        }
    };
}

use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord, core::v1 as core, discovery::v1 as discovery,
    networking::v1 as net, policy::v1 as policy, rbac::v1 as rbac, storage::v1 as storage,
};

typed_kinds! {
    "Namespace" => core::Namespace, "Pod" => core::Pod, "Node" => core::Node, "Service" => core::Service,
    "Endpoints" => core::Endpoints, "ConfigMap" => core::ConfigMap, "Secret" => core::Secret,
    "Event" => core::Event, "ServiceAccount" => core::ServiceAccount, "PersistentVolume" => core::PersistentVolume,
    "PersistentVolumeClaim" => core::PersistentVolumeClaim, "Deployment" => apps::Deployment,
    "ReplicaSet" => apps::ReplicaSet, "StatefulSet" => apps::StatefulSet, "DaemonSet" => apps::DaemonSet,
    "ControllerRevision" => apps::ControllerRevision, "Job" => batch::Job, "CronJob" => batch::CronJob,
    "Lease" => coord::Lease, "StorageClass" => storage::StorageClass, "Ingress" => net::Ingress,
    "IngressClass" => net::IngressClass, "NetworkPolicy" => net::NetworkPolicy,
    "PodDisruptionBudget" => policy::PodDisruptionBudget, "Eviction" => policy::Eviction,
    "EndpointSlice" => discovery::EndpointSlice,
    "Role" => rbac::Role, "ClusterRole" => rbac::ClusterRole, "RoleBinding" => rbac::RoleBinding,
    "ClusterRoleBinding" => rbac::ClusterRoleBinding,
    "Scale" => k8s_openapi::api::autoscaling::v1::Scale, "Binding" => core::Binding,
}

/// Decodes `input` as `kind`; returns the normalised object and the paths of fields the type
/// does not have (for `fieldValidation`).
pub fn decode(kind: &str, input: Value) -> Result<(Value, Vec<String>), String> {
    let out = round_trip(kind, input.clone()).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(&input, &out, &mut String::new(), &mut unknown);
    Ok((out, unknown))
}

/// The paths in `input` that `output` (its typed round trip) dropped. `path` is a buffer
/// grown and cut back as the walk goes, so only the unknown paths cost an allocation.
fn unknown_fields(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
    let depth = path.len();
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if depth > 0 {
                    path.push('.');
                }
                path.push_str(k);
                match o.get(k) {
                    None if !v.is_null() => out.push(path.clone()),
                    Some(ov) => unknown_fields(v, ov, path, out),
                    None => {}
                }
                path.truncate(depth);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                use std::fmt::Write;
                let _ = write!(path, "[{n}]");
                unknown_fields(iv, ov, path, out);
                path.truncate(depth);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Defaults

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("just made an object")
}

/// Sets `key` in `v` to `default` when it is absent or null; returns the field.
fn default<'a>(v: &'a mut Value, key: &str, default: Value) -> &'a mut Value {
    let m = obj(v);
    let slot = m.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = default;
    }
    slot
}

fn each<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

/// The pull policy upstream derives from the image tag.
fn pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

fn default_container(c: &mut Value) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
    default(c, "imagePullPolicy", json!(pull_policy(&image)));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for p in each(c, "ports") {
        default(p, "protocol", json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                default(h, "path", json!("/"));
                default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

/// Pod spec defaults (also used for the templates of workloads).
pub fn default_pod_spec(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers"] {
        for c in each(spec, key) {
            default_container(c);
        }
    }
    for vol in each(spec, "volumes") {
        for (src, mode) in [("configMap", 0o644), ("secret", 0o644), ("downwardAPI", 0o644), ("projected", 0o644)] {
            if let Some(s) = vol.get_mut(src).filter(|s| s.is_object()) {
                default(s, "defaultMode", json!(mode));
            }
        }
        if let Some(h) = vol.get_mut("hostPath").filter(|s| s.is_object()) {
            default(h, "type", json!(""));
        }
    }
}

fn default_template(spec: &mut Value) {
    if let Some(t) = spec.get_mut("template") {
        default_pod_spec(default(t, "spec", json!({})));
    }
}

/// The status upstream's create strategies give a new object of `kind`: its zero value as
/// Go serialises it, so the fields without `omitempty` are there as 0. Clients rely on
/// it: the Python client refuses a ReplicaSet status without `replicas`, and reads a
/// missing Deployment status as `None`.
fn zero_status(kind: &str) -> Option<Value> {
    Some(match kind {
        "Deployment" | "Job" | "CronJob" => json!({}),
        "ReplicaSet" => json!({"replicas": 0}),
        "StatefulSet" => json!({"replicas": 0, "availableReplicas": 0}),
        "DaemonSet" => json!({
            "currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0
        }),
        "PodDisruptionBudget" => {
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0})
        }
        _ => return None,
    })
}

/// Applies upstream defaults for `kind` to a new or updated object.
pub fn apply_defaults(kind: &str, o: &mut Value) {
    if let Some(zero) = zero_status(kind) {
        default(o, "status", zero);
    }
    match kind {
        "Pod" => {
            let spec = default(o, "spec", json!({}));
            default_pod_spec(spec);
            default(spec, "serviceAccountName", json!("default"));
            default(spec, "priority", json!(0));
            let tolerations = default(spec, "tolerations", json!([]));
            for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                if let Some(list) = tolerations.as_array_mut()
                    && !list.iter().any(|t| t.get("key").and_then(Value::as_str) == Some(key))
                {
                    list.push(
                        json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
                    );
                }
            }
            let status = default(o, "status", json!({}));
            default(status, "phase", json!("Pending"));
        }
        "Deployment" => {
            let spec = default(o, "spec", json!({}));
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = default(spec, "strategy", json!({}));
            let t = default(strategy, "type", json!("RollingUpdate")).clone();
            if t == "RollingUpdate" {
                let ru = default(strategy, "rollingUpdate", json!({}));
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
            default_template(spec);
        }
        "ReplicaSet" => {
            let spec = default(o, "spec", json!({}));
            default(spec, "replicas", json!(1));
            default_template(spec);
        }
        "StatefulSet" => {
            let spec = default(o, "spec", json!({}));
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            let us = default(spec, "updateStrategy", json!({}));
            if default(us, "type", json!("RollingUpdate")) == "RollingUpdate" {
                default(default(us, "rollingUpdate", json!({})), "partition", json!(0));
            }
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(spec);
        }
        "DaemonSet" => {
            let spec = default(o, "spec", json!({}));
            default(spec, "revisionHistoryLimit", json!(10));
            let us = default(spec, "updateStrategy", json!({}));
            if default(us, "type", json!("RollingUpdate")) == "RollingUpdate" {
                let ru = default(us, "rollingUpdate", json!({}));
                default(ru, "maxUnavailable", json!(1));
                default(ru, "maxSurge", json!(0));
            }
            default_template(spec);
        }
        "Job" => {
            let uid = o.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
            let spec = default(o, "spec", json!({}));
            default(spec, "parallelism", json!(1));
            if spec.get("completions").is_none_or(Value::is_null) && spec["parallelism"] == json!(1) {
                spec["completions"] = json!(1);
            }
            default(spec, "backoffLimit", json!(6));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            let manual = spec.get("manualSelector").and_then(Value::as_bool).unwrap_or(false);
            if !manual && spec.get("selector").is_none_or(Value::is_null) && !uid.is_empty() {
                spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                let labels =
                    default(default(default(spec, "template", json!({})), "metadata", json!({})), "labels", json!({}));
                labels["batch.kubernetes.io/controller-uid"] = json!(uid);
                labels["controller-uid"] = json!(uid);
            }
            default_template(spec);
        }
        "CronJob" => {
            let spec = default(o, "spec", json!({}));
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(jt) = spec.pointer_mut("/jobTemplate/spec") {
                default(jt, "backoffLimit", json!(6));
                default(jt, "completionMode", json!("NonIndexed"));
                default(jt, "suspend", json!(false));
                default_template(jt);
            }
        }
        "Service" => {
            let spec = default(o, "spec", json!({}));
            let t = default(spec, "type", json!("ClusterIP")).as_str().unwrap_or_default().to_string();
            if t != "ExternalName" {
                default(spec, "sessionAffinity", json!("None"));
                default(spec, "ipFamilies", json!(["IPv4"]));
                default(spec, "ipFamilyPolicy", json!("SingleStack"));
                default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if t == "NodePort" || t == "LoadBalancer" {
                default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if t == "LoadBalancer" {
                default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            for p in each(spec, "ports") {
                default(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                default(p, "targetPort", port);
            }
            default(default(o, "status", json!({})), "loadBalancer", json!({}));
        }
        "Ingress" => {
            default(default(o, "status", json!({})), "loadBalancer", json!({}));
        }
        "NetworkPolicy" => {
            // Upstream's defaulting: Ingress always, Egress when there are egress rules.
            let spec = default(o, "spec", json!({}));
            let egress = spec.get("egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty());
            let types = if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
            default(spec, "policyTypes", types);
            for dir in ["ingress", "egress"] {
                for r in each(spec, dir) {
                    for p in each(r, "ports") {
                        default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
        "Namespace" => {
            let name = o.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            let labels = default(default(o, "metadata", json!({})), "labels", json!({}));
            labels["kubernetes.io/metadata.name"] = name;
            default(default(o, "spec", json!({})), "finalizers", json!(["kubernetes"]));
            default(default(o, "status", json!({})), "phase", json!("Active"));
        }
        "Secret" => {
            default(o, "type", json!("Opaque"));
        }
        "PersistentVolumeClaim" => {
            default(default(o, "spec", json!({})), "volumeMode", json!("Filesystem"));
            default(default(o, "status", json!({})), "phase", json!("Pending"));
        }
        "PersistentVolume" => {
            let spec = default(o, "spec", json!({}));
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
            default(default(o, "status", json!({})), "phase", json!("Available"));
        }
        "StorageClass" => {
            default(o, "reclaimPolicy", json!("Delete"));
            default(o, "volumeBindingMode", json!("Immediate"));
        }
        "Node" => {
            default(o, "status", json!({}));
        }
        "EndpointSlice" => {
            for p in each(o, "ports") {
                default(p, "name", json!(""));
                default(p, "protocol", json!("TCP"));
            }
        }
        _ => {}
    }
}

/// Secret `stringData` is write-only sugar: it is folded into `data` (base64) on write.
pub fn fold_string_data(o: &mut Value) {
    use base64::Engine;
    let Some(sd) = o.as_object_mut().and_then(|m| m.remove("stringData")) else { return };
    let Some(sd) = sd.as_object() else { return };
    let data = default(o, "data", json!({}));
    for (k, v) in sd {
        data[k] = json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default()));
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// A DNS-1123 label: lower-case alphanumerics and '-', alphanumeric at both ends, <= 63.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A DNS-1123 subdomain: dot-separated labels, <= 253 in all (upstream holds no single part
/// to 63 here).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
        })
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_label_key(k: &str) -> bool {
    match k.rsplit_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(k),
    }
}

fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_qualified_name_part(v)
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Validates the object name rule of `kind`.
/// Why `name` cannot be one path segment (upstream's `IsValidPathSegmentName`, plus no
/// control characters and at most 253 bytes, which the store's keys and logs rely on).
fn path_segment_refusal(name: &str) -> Option<&'static str> {
    match name {
        "" => Some("name or generateName is required"),
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        _ if name.contains('/') => Some("may not contain '/'"),
        _ if name.contains('%') => Some("may not contain '%'"),
        _ if name.chars().any(char::is_control) => Some("may not contain control characters"),
        _ if name.len() > 253 => Some("must be no more than 253 characters"),
        _ => None,
    }
}

pub fn validate_name(kind: &str, name: &str, causes: &mut Vec<Cause>) {
    let (ok, msg) = match kind {
        // Upstream's `ValidateRBACName` (a path segment): `system:` names are the defaults'.
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => match path_segment_refusal(name) {
            Some(why) => (false, why),
            None => (true, ""),
        },
        "Namespace" => (is_dns1123_label(name), LABEL_MSG),
        "Service" => (is_dns1035_label(name), DNS1035_MSG),
        _ => (is_dns1123_subdomain(name), SUBDOMAIN_MSG),
    };
    if !ok {
        causes.push(Cause::invalid("metadata.name", name, msg));
    }
}

fn validate_metadata(o: &Value, causes: &mut Vec<Cause>) {
    if let Some(m) = o.pointer("/metadata/annotations").and_then(Value::as_object) {
        let size: usize = m.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum();
        if size > fields::MAX_ANNOTATION_BYTES {
            causes.push(Cause::too_long("metadata.annotations", fields::MAX_ANNOTATION_BYTES));
        }
    }
    for (field, check_values) in [("labels", true), ("annotations", false)] {
        if let Some(m) = o.pointer(&format!("/metadata/{field}")).and_then(Value::as_object) {
            for (k, v) in m {
                if !is_label_key(k) {
                    causes.push(Cause::invalid(format!("metadata.{field}"), k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                }
                if check_values && !is_label_value(v.as_str().unwrap_or_default()) {
                    causes.push(Cause::invalid(format!("metadata.{field}"), v.as_str().unwrap_or_default(), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                }
            }
        }
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn validate_containers(spec: &Value, base: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required(format!("{base}.containers")));
    }
    let mut names = Vec::new();
    for key in ["initContainers", "containers"] {
        for (i, c) in spec.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let p = format!("{base}.{key}[{i}]");
            let name = str_at(c, "/name");
            if name.is_empty() {
                causes.push(Cause::required(format!("{p}.name")));
            } else if !is_dns1123_label(name) {
                causes.push(Cause::invalid(format!("{p}.name"), name, LABEL_MSG));
            } else if names.contains(&name) {
                causes.push(Cause::duplicate(format!("{p}.name"), name));
            }
            names.push(name);
            if str_at(c, "/image").trim().is_empty() {
                causes.push(Cause::required(format!("{p}.image")));
            }
            for (j, port) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let n = port.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    causes.push(Cause::invalid(
                        format!("{p}.ports[{j}].containerPort"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            validate_container_fields(c, &p, causes);
            let pol = str_at(c, "/imagePullPolicy");
            if !pol.is_empty() && !["Always", "IfNotPresent", "Never"].contains(&pol) {
                causes.push(Cause::unsupported(
                    format!("{p}.imagePullPolicy"),
                    pol,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
    }
    let rp = str_at(spec, "/restartPolicy");
    if !rp.is_empty() && !["Always", "OnFailure", "Never"].contains(&rp) {
        causes.push(Cause::unsupported(format!("{base}.restartPolicy"), rp, &["Always", "OnFailure", "Never"]));
    }
    let mut vols = Vec::new();
    for (i, v) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let name = str_at(v, "/name");
        if !is_dns1123_label(name) {
            causes.push(Cause::invalid(format!("{base}.volumes[{i}].name"), name, LABEL_MSG));
        } else if vols.contains(&name) {
            causes.push(Cause::duplicate(format!("{base}.volumes[{i}].name"), name));
        }
        vols.push(name);
        validate_volume_source(v, &format!("{base}.volumes[{i}]"), causes);
    }
    for key in ["initContainers", "containers"] {
        for (i, c) in spec.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            for (j, m) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let name = str_at(m, "/name");
                if !vols.contains(&name) {
                    causes.push(Cause {
                        field: format!("{base}.{key}[{i}].volumeMounts[{j}].name"),
                        reason: "FieldValueNotFound",
                        message: format!("Not found: \"{name}\""),
                    });
                }
            }
        }
    }
}

/// A container's env names, port names, resource quantities and `subPath`s.
fn validate_container_fields(c: &Value, p: &str, causes: &mut Vec<Cause>) {
    for (j, e) in c.get("env").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let name = str_at(e, "/name");
        if !fields::is_env_name(name) {
            causes.push(Cause::invalid(
                format!("{p}.env[{j}].name"),
                name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    for (j, port) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(name) = port.get("name").and_then(Value::as_str)
            && !fields::is_port_name(name)
        {
            causes.push(Cause::invalid(format!("{p}.ports[{j}].name"), name, "must be no more than 15 characters, contain only lowercase alphanumeric characters or '-', contain at least one letter, and neither start nor end with '-' nor have '--'"));
        }
    }
    for kind in ["limits", "requests"] {
        for (resource, q) in c.pointer(&format!("/resources/{kind}")).and_then(Value::as_object).into_iter().flatten() {
            let text = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            match fields::parse_quantity(&text) {
                Err(why) => causes.push(Cause::invalid(format!("{p}.resources.{kind}[{resource}]"), &text, why)),
                Ok(q) if q.milli < 0 => causes.push(Cause::invalid(
                    format!("{p}.resources.{kind}[{resource}]"),
                    &text,
                    "must be greater than or equal to 0",
                )),
                Ok(_) => {}
            }
        }
    }
    for (j, m) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
        for key in ["subPath", "subPathExpr"] {
            if let Some(sub) = m.get(key).and_then(Value::as_str)
                && !sub.is_empty()
                && !fields::is_descending_path(sub)
            {
                causes.push(Cause::invalid(
                    format!("{p}.volumeMounts[{j}].{key}"),
                    sub,
                    "must be a relative path that does not contain '..'",
                ));
            }
        }
    }
}

/// A volume's `items[].path` and `items[].key` (configMap, secret, downwardAPI and their
/// projections) and a hostPath's `path`.
fn validate_volume_source(v: &Value, base: &str, causes: &mut Vec<Cause>) {
    let mut item_lists: Vec<(String, &Value)> = Vec::new();
    for source in ["configMap", "secret", "downwardAPI"] {
        if let Some(items) = v.pointer(&format!("/{source}/items")) {
            item_lists.push((format!("{base}.{source}.items"), items));
        }
    }
    for (k, s) in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten().enumerate() {
        for source in ["configMap", "secret", "downwardAPI"] {
            if let Some(items) = s.pointer(&format!("/{source}/items")) {
                item_lists.push((format!("{base}.projected.sources[{k}].{source}.items"), items));
            }
        }
    }
    for (field, items) in item_lists {
        for (i, item) in items.as_array().into_iter().flatten().enumerate() {
            let path = str_at(item, "/path");
            if path.is_empty() {
                causes.push(Cause::required(format!("{field}[{i}].path")));
            } else if !fields::is_descending_path(path) {
                causes.push(Cause::invalid(
                    format!("{field}[{i}].path"),
                    path,
                    "must be a relative path that does not contain '..'",
                ));
            }
            if let Some(key) = item.get("key").and_then(Value::as_str)
                && !fields::is_config_key(key)
            {
                causes.push(Cause::invalid(format!("{field}[{i}].key"), key, CONFIG_KEY_MSG));
            }
        }
    }
    if let Some(host) = v.get("hostPath") {
        let path = str_at(host, "/path");
        if !fields::is_clean_absolute_path(path) {
            causes.push(Cause::invalid(
                format!("{base}.hostPath.path"),
                path,
                "must be an absolute path that does not contain '..'",
            ));
        }
    }
}

const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// Workloads: a selector that selects the template's labels.
fn validate_selector_template(o: &Value, kind: &str, causes: &mut Vec<Cause>) {
    let sel = o.pointer("/spec/selector");
    if sel.is_none_or(Value::is_null) {
        causes.push(Cause::required("spec.selector"));
        return;
    }
    let sel = super::selector::LabelSelector::from_object(sel.expect("checked above"));
    if sel.is_empty() && kind != "Job" {
        causes.push(Cause::invalid("spec.selector", "{}", "empty selector is invalid for deployment"));
    }
    let labels = o.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({}));
    let labels = super::selector::labels_of(&json!({"metadata": {"labels": labels}}));
    if !sel.matches(&labels) {
        let shown = serde_json::to_string(&labels).unwrap_or_default();
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            shown,
            "`selector` does not match template `labels`",
        ));
    }
    if let Some(r) = o.pointer("/spec/replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
    }
}

/// Validates a whole object of `kind` (name and namespace rules are checked by the caller).
pub fn validate(kind: &str, o: &Value) -> Vec<Cause> {
    let mut c = Vec::new();
    validate_metadata(o, &mut c);
    match kind {
        "Pod" => validate_containers(o.get("spec").unwrap_or(&Value::Null), "spec", &mut c),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            validate_selector_template(o, kind, &mut c);
            // A StatefulSet's claim templates are volumes of its pods.
            let mut pod_spec = o.pointer("/spec/template/spec").cloned().unwrap_or(Value::Null);
            if kind == "StatefulSet"
                && let Some(vols) = pod_spec.get_mut("volumes").map(Value::take).or(Some(json!([])))
            {
                let mut vols = vols.as_array().cloned().unwrap_or_default();
                for t in o.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array).into_iter().flatten() {
                    vols.push(
                        json!({"name": t.pointer("/metadata/name").cloned().unwrap_or(Value::Null), "emptyDir": {}}),
                    );
                }
                if pod_spec.is_object() {
                    pod_spec["volumes"] = json!(vols);
                }
            }
            validate_containers(&pod_spec, "spec.template.spec", &mut c);
            if kind == "Deployment" || kind == "DaemonSet" || kind == "ReplicaSet" {
                let rp = str_at(o, "/spec/template/spec/restartPolicy");
                if !rp.is_empty() && rp != "Always" {
                    c.push(Cause::unsupported("spec.template.spec.restartPolicy", rp, &["Always"]));
                }
            }
        }
        "Job" => {
            validate_containers(o.pointer("/spec/template/spec").unwrap_or(&Value::Null), "spec.template.spec", &mut c);
            let rp = str_at(o, "/spec/template/spec/restartPolicy");
            if !["OnFailure", "Never"].contains(&rp) {
                c.push(Cause::unsupported("spec.template.spec.restartPolicy", rp, &["OnFailure", "Never"]));
            }
        }
        "CronJob" => {
            let schedule = str_at(o, "/spec/schedule");
            if schedule.is_empty() {
                c.push(Cause::required("spec.schedule"));
            } else if let Err(why) = crate::cron::Schedule::parse(schedule) {
                c.push(Cause::invalid("spec.schedule", schedule, why));
            }
            if let Some(tz) = o.pointer("/spec/timeZone").and_then(Value::as_str)
                && jiff::tz::TimeZone::get(tz).is_err()
            {
                c.push(Cause::invalid("spec.timeZone", tz, format!("unknown time zone {tz}")));
            }
            validate_containers(
                o.pointer("/spec/jobTemplate/spec/template/spec").unwrap_or(&Value::Null),
                "spec.jobTemplate.spec.template.spec",
                &mut c,
            );
        }
        "Service" => {
            let t = str_at(o, "/spec/type");
            let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
            if !types.contains(&t) {
                c.push(Cause::unsupported("spec.type", t, &types));
            }
            let ports = o.pointer("/spec/ports").and_then(Value::as_array);
            let headless = str_at(o, "/spec/clusterIP") == "None";
            if t != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
                c.push(Cause::required("spec.ports"));
            }
            let many = ports.is_some_and(|p| p.len() > 1);
            let mut seen = Vec::new();
            for (i, p) in ports.into_iter().flatten().enumerate() {
                let n = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    c.push(Cause::invalid(
                        format!("spec.ports[{i}].port"),
                        n,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                let name = str_at(p, "/name");
                if many && name.is_empty() {
                    c.push(Cause::required(format!("spec.ports[{i}].name")));
                }
                let key = (n, str_at(p, "/protocol").to_string());
                if seen.contains(&key) {
                    c.push(Cause::duplicate(format!("spec.ports[{i}]"), &format!("{}/{}", key.0, key.1)));
                }
                seen.push(key);
                if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
                    && np != 0
                    && t == "ClusterIP"
                {
                    c.push(Cause::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                }
            }
        }
        "ConfigMap" | "Secret" => {
            let mut size = 0usize;
            for field in ["data", "binaryData", "stringData"] {
                for (k, v) in o.get(field).and_then(Value::as_object).into_iter().flatten() {
                    if !fields::is_config_key(k) {
                        c.push(Cause::invalid(format!("{field}[{k}]"), k, CONFIG_KEY_MSG));
                    }
                    size += k.len() + v.as_str().map_or(0, str::len);
                }
            }
            // Secrets hold base64 here: count the decoded bytes as upstream does.
            let size = if kind == "Secret" { size / 4 * 3 } else { size };
            if size > fields::MAX_CONFIG_BYTES {
                c.push(Cause::too_long("data", fields::MAX_CONFIG_BYTES));
            }
        }
        "EndpointSlice" => validate_endpoint_slice(o, &mut c),
        "Namespace" => {}
        _ => {}
    }
    c
}

/// Upstream's `field.TooMany`.
fn too_many(field: impl Into<String>, n: usize, max: usize) -> Cause {
    Cause {
        field: field.into(),
        reason: "FieldValueTooMany",
        message: format!("Too many: {n}: must have at most {max} items"),
    }
}

/// The address types an EndpointSlice may carry.
const ADDRESS_TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];

/// Upstream's EndpointSlice validation: a known `addressType`, 1 to 100 addresses of that
/// type per endpoint (at most 1000 endpoints), DNS-label hostnames, and unique, DNS-label
/// port names with a known protocol (at most 100 ports).
fn validate_endpoint_slice(o: &Value, c: &mut Vec<Cause>) {
    let address_type = str_at(o, "/addressType");
    if address_type.is_empty() {
        c.push(Cause {
            field: "addressType".into(),
            reason: "FieldValueRequired",
            message: "Required value: must be one of \"FQDN\", \"IPv4\", \"IPv6\"".into(),
        });
    } else if !ADDRESS_TYPES.contains(&address_type) {
        c.push(Cause::unsupported("addressType", address_type, &ADDRESS_TYPES));
    }
    let endpoints = o.get("endpoints").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if endpoints.len() > 1000 {
        c.push(too_many("endpoints", endpoints.len(), 1000));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let base = format!("endpoints[{i}]");
        let addresses = ep.get("addresses").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if addresses.is_empty() {
            c.push(Cause {
                field: format!("{base}.addresses"),
                reason: "FieldValueRequired",
                message: "Required value: must contain at least 1 address".into(),
            });
        } else if addresses.len() > 100 {
            c.push(too_many(format!("{base}.addresses"), addresses.len(), 100));
        }
        for (j, a) in addresses.iter().enumerate() {
            let a = a.as_str().unwrap_or_default();
            let why = match address_type {
                "IPv4" if a.parse::<std::net::Ipv4Addr>().is_err() => "must be a valid IPv4 address",
                "IPv6" if a.parse::<std::net::Ipv6Addr>().is_err() => "must be a valid IPv6 address",
                "FQDN" if !is_dns1123_subdomain(a) => SUBDOMAIN_MSG,
                _ => continue,
            };
            c.push(Cause::invalid(format!("{base}.addresses[{j}]"), a, why));
        }
        if let Some(h) = ep.get("hostname").and_then(Value::as_str)
            && !is_dns1123_label(h)
        {
            c.push(Cause::invalid(format!("{base}.hostname"), h, LABEL_MSG));
        }
        if let Some(n) = ep.get("nodeName").and_then(Value::as_str)
            && !is_dns1123_subdomain(n)
        {
            c.push(Cause::invalid(format!("{base}.nodeName"), n, SUBDOMAIN_MSG));
        }
    }
    let ports = o.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if ports.len() > 100 {
        c.push(too_many("ports", ports.len(), 100));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let name = str_at(p, "/name");
        if !name.is_empty() && !is_dns1123_label(name) {
            c.push(Cause::invalid(format!("ports[{i}].name"), name, LABEL_MSG));
        }
        if names.contains(&name) {
            c.push(Cause::duplicate(format!("ports[{i}].name"), name));
        }
        names.push(name);
        let protocol = str_at(p, "/protocol");
        let protocols = ["SCTP", "TCP", "UDP"];
        if !protocols.contains(&protocol) {
            c.push(Cause::unsupported(format!("ports[{i}].protocol"), protocol, &protocols));
        }
        if let Some(n) = p.get("port").and_then(Value::as_i64)
            && !(0..=65535).contains(&n)
        {
            c.push(Cause::invalid(format!("ports[{i}].port"), n, "must be between 0 and 65535, inclusive"));
        }
    }
}

/// Fields that may not change on update, per kind, as JSON pointers with their display path.
pub fn immutable_fields(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" => &[("/spec/selector", "spec.selector")],
        "StatefulSet" => &[
            ("/spec/selector", "spec.selector"),
            ("/spec/serviceName", "spec.serviceName"),
            ("/spec/volumeClaimTemplates", "spec.volumeClaimTemplates"),
            ("/spec/podManagementPolicy", "spec.podManagementPolicy"),
        ],
        "Job" => &[
            ("/spec/selector", "spec.selector"),
            ("/spec/template", "spec.template"),
            ("/spec/completionMode", "spec.completionMode"),
        ],
        "Service" => &[("/spec/clusterIP", "spec.clusterIP")],
        "PersistentVolumeClaim" => &[
            ("/spec/accessModes", "spec.accessModes"),
            ("/spec/storageClassName", "spec.storageClassName"),
            ("/spec/volumeMode", "spec.volumeMode"),
        ],
        "StorageClass" => &[
            ("/provisioner", "provisioner"),
            ("/parameters", "parameters"),
            ("/reclaimPolicy", "reclaimPolicy"),
            ("/volumeBindingMode", "volumeBindingMode"),
        ],
        "EndpointSlice" => &[("/addressType", "addressType")],
        "RoleBinding" | "ClusterRoleBinding" => &[("/roleRef", "roleRef")],
        "Secret" | "ConfigMap" => &[],
        _ => &[],
    }
}

/// Checks an update against the old object: immutable fields, immutable ConfigMaps and
/// Secrets, and the parts of a pod spec that cannot change once created.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut c = Vec::new();
    for (ptr, field) in immutable_fields(kind) {
        let (a, b) = (old.pointer(ptr), new.pointer(ptr));
        // A Service switching away from a ClusterIP may leave it empty for reallocation.
        if a != b && !(kind == "Service" && b.is_none_or(|v| v.as_str() == Some(""))) {
            c.push(Cause::immutable(*field));
        }
    }
    if (kind == "ConfigMap" || kind == "Secret") && old.get("immutable") == Some(&json!(true)) {
        for f in ["data", "binaryData", "immutable"] {
            if old.get(f) != new.get(f) {
                c.push(Cause::forbidden(f, "field is immutable when `immutable` is set"));
            }
        }
    }
    if kind == "Pod" {
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            for key in ["containers", "initContainers"] {
                for ctr in each(&mut s, key) {
                    if let Some(m) = ctr.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                for key in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "nodeName"] {
                    m.remove(key);
                }
            }
            s
        };
        if strip(old) != strip(new) {
            c.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
        let (a, b) = (str_at(old, "/spec/nodeName"), str_at(new, "/spec/nodeName"));
        if !a.is_empty() && a != b {
            c.push(Cause::immutable("spec.nodeName"));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_with_paths() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": "busybox", "imagePullPolcy": "Always"}], "bogus": 1}});
        let (_, unknown) = decode("Pod", pod).unwrap();
        assert_eq!(unknown, vec!["spec.bogus", "spec.containers[0].imagePullPolcy"]);
    }

    #[test]
    fn wrong_types_are_errors() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        assert!(decode("Pod", pod).is_err());
    }

    #[test]
    fn new_objects_get_the_zero_status_go_serialises() {
        for (kind, want) in [
            ("Deployment", json!({})),
            ("ReplicaSet", json!({"replicas": 0})),
            ("Service", json!({"loadBalancer": {}})),
            ("PersistentVolumeClaim", json!({"phase": "Pending"})),
        ] {
            let mut o = json!({"spec": {}});
            apply_defaults(kind, &mut o);
            assert_eq!(o["status"], want, "{kind}");
        }
        let mut kept = json!({"spec": {}, "status": {"replicas": 3, "readyReplicas": 2}});
        apply_defaults("ReplicaSet", &mut kept);
        assert_eq!(kept["status"], json!({"replicas": 3, "readyReplicas": 2}));
    }

    #[test]
    fn pod_defaults_follow_upstream() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}});
        apply_defaults("Pod", &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["spec"]["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn deployment_defaults_and_selector_check() {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
        apply_defaults("Deployment", &mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        let causes = validate("Deployment", &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
        let mut c = Vec::new();
        validate_name("Service", "1abc", &mut c);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        let new_image = json!({"spec": {"containers": [{"name": "a", "image": "x:2"}]}});
        let new_name = json!({"spec": {"containers": [{"name": "b", "image": "x:1"}]}});
        assert!(validate_update("Pod", &old, &new_image).is_empty());
        assert_eq!(validate_update("Pod", &old, &new_name).len(), 1);
    }

    #[test]
    fn hostile_paths_names_and_quantities_are_invalid_with_their_field() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "cm", "configMap": {"name": "c", "items": [{"key": "k", "path": "../../etc/cron.d/x"}]}},
                {"name": "sec", "secret": {"secretName": "s", "items": [{"key": "..data", "path": "/abs/x"}]}},
                {"name": "dw", "downwardAPI": {"items": [{"path": "a/../../b", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "pr", "projected": {"sources": [{"configMap": {"name": "c", "items": [{"key": "k", "path": ".."}]}}]}},
                {"name": "hp", "hostPath": {"path": "/var/../etc"}},
            ],
            "containers": [{"name": "c", "image": "x:1",
                "env": [{"name": "A=B", "value": "1"}],
                "ports": [{"containerPort": 80, "name": "this-name-is-too-long"}],
                "resources": {"limits": {"memory": "banana", "cpu": "-1"}},
                "volumeMounts": [{"name": "cm", "mountPath": "/m", "subPath": "../../"},
                                 {"name": "hp", "mountPath": "/n", "subPathExpr": "/$(POD)"}]}],
        }});
        let mut fields: Vec<String> = validate("Pod", &pod).into_iter().map(|c| c.field).collect();
        fields.sort();
        let want = [
            "spec.containers[0].env[0].name",
            "spec.containers[0].ports[0].name",
            "spec.containers[0].resources.limits[cpu]",
            "spec.containers[0].resources.limits[memory]",
            "spec.containers[0].volumeMounts[0].subPath",
            "spec.containers[0].volumeMounts[1].subPathExpr",
            "spec.volumes[0].configMap.items[0].path",
            "spec.volumes[1].secret.items[0].key",
            "spec.volumes[1].secret.items[0].path",
            "spec.volumes[2].downwardAPI.items[0].path",
            "spec.volumes[3].projected.sources[0].configMap.items[0].path",
            "spec.volumes[4].hostPath.path",
        ];
        assert_eq!(fields, want);
        let fine = json!({"spec": {"volumes": [{"name": "cm", "configMap": {"name": "c", "items": [{"key": "k", "path": "conf/app.yaml"}]}}],
            "containers": [{"name": "c", "image": "x:1", "env": [{"name": "my.var", "value": "1"}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"memory": "1e6"}},
                "volumeMounts": [{"name": "cm", "mountPath": "/m", "subPath": "conf"}]}]}});
        assert!(validate("Pod", &fine).is_empty(), "{:?}", validate("Pod", &fine));
    }

    #[test]
    fn endpoint_slices_need_an_address_type_and_addresses() {
        let mut slice = json!({"metadata": {"name": "web-abcde"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true}}],
            "ports": [{"port": 80}]});
        let (mut slice_typed, unknown) = decode("EndpointSlice", slice.clone()).unwrap();
        assert!(unknown.is_empty());
        apply_defaults("EndpointSlice", &mut slice_typed);
        assert_eq!(slice_typed["ports"], json!([{"name": "", "port": 80, "protocol": "TCP"}]), "upstream defaults");
        assert!(validate("EndpointSlice", &slice_typed).is_empty(), "{:?}", validate("EndpointSlice", &slice_typed));

        let (missing, _) = decode("EndpointSlice", json!({"metadata": {"name": "x"}, "endpoints": []})).unwrap();
        let causes = validate("EndpointSlice", &missing);
        assert_eq!(causes.len(), 1);
        assert_eq!((causes[0].field.as_str(), causes[0].reason), ("addressType", "FieldValueRequired"));
        slice["addressType"] = json!("IPv5");
        slice["endpoints"] =
            json!([{"addresses": []}, {"addresses": ["not-an-ip"]}, {"addresses": ["10.0.0.1"], "hostname": "A_B"}]);
        slice["ports"] =
            json!([{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "http", "port": 81, "protocol": "ICMP"}]);
        let fields: Vec<String> = validate("EndpointSlice", &slice).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            ["addressType", "endpoints[0].addresses", "endpoints[2].hostname", "ports[1].name", "ports[1].protocol"]
        );
        slice["addressType"] = json!("IPv4");
        let fields: Vec<String> = validate("EndpointSlice", &slice).into_iter().map(|c| c.field).collect();
        assert!(fields.contains(&"endpoints[1].addresses[0]".to_string()), "{fields:?}");
        let old = json!({"addressType": "IPv4"});
        assert_eq!(validate_update("EndpointSlice", &old, &json!({"addressType": "IPv6"}))[0].field, "addressType");
    }

    #[test]
    fn rbac_names_are_path_segments() {
        for good in ["system:aggregate-to-admin", "Mixed_Case:x", "a.b"] {
            let mut c = Vec::new();
            validate_name("ClusterRole", good, &mut c);
            assert!(c.is_empty(), "{good}: {c:?}");
        }
        for bad in ["", ".", "..", "a/b", "a%2fb", "a\nb", &"x".repeat(254)] {
            let mut c = Vec::new();
            validate_name("RoleBinding", &bad.replace("\\n", "\n"), &mut c);
            assert_eq!(c.len(), 1, "{bad:?}");
        }
        let old = json!({"roleRef": {"kind": "Role", "name": "a"}});
        let new = json!({"roleRef": {"kind": "Role", "name": "b"}});
        assert_eq!(validate_update("RoleBinding", &old, &new)[0].field, "roleRef");
    }

    #[test]
    fn config_size_annotation_size_and_long_subdomains() {
        let big = json!({"data": {"a": "x".repeat(fields::MAX_CONFIG_BYTES)}});
        assert_eq!(validate("ConfigMap", &big)[0].field, "data");
        let keys = json!({"data": {"..data": "x", ".": "y"}});
        assert_eq!(validate("ConfigMap", &keys).len(), 2);
        let ann = json!({"metadata": {"annotations": {"a": "x".repeat(fields::MAX_ANNOTATION_BYTES)}}});
        assert_eq!(validate("ConfigMap", &ann)[0].field, "metadata.annotations");
        let long_part = format!("{}.example.com", "a".repeat(100));
        assert!(is_dns1123_subdomain(&long_part), "upstream holds only the whole name to 253");
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }
}
