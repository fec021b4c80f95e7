//! PodSecurity admission, as upstream's plugin: a namespace's labels
//! `pod-security.kubernetes.io/{enforce,warn,audit}` pick a level (`privileged`, `baseline`,
//! `restricted`) per mode, `--pod-security-default` applies where a label is absent, and
//! the checks of that level (`pod_security.rs`) run on every pod created and every pod whose
//! spec changes. `enforce` refuses the pod with 403; `warn` answers with `Warning:` headers
//! kubectl prints; `audit` is logged. Workload templates (Deployments, Jobs, ...) get
//! warnings for both `enforce` and `warn`, as upstream gives them, never a refusal: their
//! pods are refused when the controller makes them.

use serde_json::Value;

use super::Api;
use super::objects::Target;
use super::pod_security::{self, Level};
use super::status::ApiError;

/// The label prefix upstream reads on namespaces.
const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// The level of one mode from a namespace's labels: `default` when absent, `restricted`
/// when the value is not a level (upstream's fail-closed reading).
fn level_of(labels: &serde_json::Map<String, Value>, mode: &str, default: Level) -> Level {
    match labels.get(&format!("{LABEL_PREFIX}{mode}")).and_then(Value::as_str) {
        None => default,
        Some(v) => Level::parse(v).unwrap_or(Level::Restricted),
    }
}

impl Api {
    /// Applies PodSecurity to `obj` of `kind` being created (or a pod whose spec changed):
    /// `Err` (403) when the namespace enforces a level the pod breaks, else the warnings.
    /// `labels` are the namespace's when the caller has read them already.
    pub(super) fn admit_pod_security(
        &self,
        t: &Target,
        kind: &str,
        obj: &Value,
        labels: Option<serde_json::Map<String, Value>>,
    ) -> Result<Vec<String>, ApiError> {
        let Some((meta, spec)) = pod_security::pod_spec_of(kind, obj) else { return Ok(Vec::new()) };
        let Some(ns) = t.namespace.as_deref() else { return Ok(Vec::new()) };
        let default = self.opts.pod_security_default;
        let labels = match labels {
            Some(l) => l,
            None => self.namespace_meta(ns)?.map(|m| m.labels).unwrap_or_default(),
        };
        let (enforce, warn, audit) = (
            level_of(&labels, "enforce", default),
            level_of(&labels, "warn", default),
            level_of(&labels, "audit", default),
        );
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let mut warnings = Vec::new();
        let violations = pod_security::check(enforce, meta, spec);
        if !violations.is_empty() {
            let summary = pod_security::summary(enforce, &violations);
            if kind == "Pod" {
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: violates PodSecurity {summary}"
                )));
            }
            warnings.push(format!("would violate PodSecurity {summary}"));
        }
        if warn != enforce {
            let violations = pod_security::check(warn, meta, spec);
            if !violations.is_empty() {
                warnings.push(format!("would violate PodSecurity {}", pod_security::summary(warn, &violations)));
            }
        }
        let violations = pod_security::check(audit, meta, spec);
        if !violations.is_empty() {
            tracing::info!(namespace = ns, kind, name, violations = %pod_security::summary(audit, &violations),
                "PodSecurity audit");
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_pick_levels_and_garbage_is_restricted() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline",
                            "pod-security.kubernetes.io/warn": "strict-ish"});
        let labels = labels.as_object().unwrap();
        assert_eq!(level_of(labels, "enforce", Level::Privileged), Level::Baseline);
        assert_eq!(level_of(labels, "warn", Level::Privileged), Level::Restricted);
        assert_eq!(level_of(labels, "audit", Level::Privileged), Level::Privileged);
    }
}
