//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` spell them.
//!
//! Label grammar: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined
//! by commas. Field selectors: `path=v`, `path==v`, `path!=v` on dotted paths of the object
//! (`metadata.name`, `spec.nodeName`, `status.phase`, `involvedObject.uid`, ...); a missing
//! field compares as the empty string, as upstream.

use std::collections::BTreeMap;

use serde_json::Value;

use super::status::ApiError;

/// One parsed label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
fn valid_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn parse_set(rest: &str, term: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
        ApiError::bad_request(format!("unable to parse requirement: {term}: values must be in parentheses"))
    })?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl LabelSelector {
    /// Parses the query-string form.
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let bad = || {
                ApiError::bad_request(format!("unable to parse requirement: invalid label selector term \"{term}\""))
            };
            let req = if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(i) = term.find(" notin ") {
                Requirement::NotIn(term[..i].trim().into(), parse_set(&term[i + 7..], term)?)
            } else if let Some(i) = term.find(" in ") {
                Requirement::In(term[..i].trim().into(), parse_set(&term[i + 4..], term)?)
            } else {
                Requirement::Exists(term.to_string())
            };
            let (key, values): (&String, Vec<&String>) = match &req {
                Requirement::Eq(k, v) | Requirement::NotEq(k, v) => (k, vec![v]),
                Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().collect()),
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(bad());
            }
            if let Some(v) = values.iter().find(|v| !valid_value(v)) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: values[0][{key}]: Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                )));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Builds the selector of a `metav1.LabelSelector` object (`matchLabels` and
    /// `matchExpressions`).
    pub fn from_object(sel: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Eq(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => reqs.push(Requirement::In(key, values)),
                Some("NotIn") => reqs.push(Requirement::NotIn(key, values)),
                Some("Exists") => reqs.push(Requirement::Exists(key)),
                Some("DoesNotExist") => reqs.push(Requirement::NotExists(key)),
                _ => {}
            }
        }
        LabelSelector(reqs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    /// Matches the `metadata.labels` of an object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.matches(&labels_of(obj))
    }
}

/// The labels of an object as a map.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// A parsed field selector.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, ApiError> {
        let mut out = Vec::new();
        for term in split_terms(s) {
            let (path, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: '{term}': expected key=value or key!=value"
                )));
            };
            let path = path.trim();
            if path.is_empty() || !path.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                return Err(ApiError::bad_request(format!("\"{path}\" is not a known field selector")));
            }
            out.push((path.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The one object the selector names, when it is exactly `metadata.name=<name>`: a
    /// list or watch of it is authorized as a request for that name (upstream's request
    /// info does the same), so a node or a `resourceNames` rule can follow one object.
    pub fn named(&self) -> Option<&str> {
        match self.0.as_slice() {
            [(path, true, name)] if path == "metadata.name" && !name.is_empty() => Some(name),
            _ => None,
        }
    }

    /// Refuses fields `plural` cannot be selected by, as upstream does (400).
    pub fn check_supported(&self, plural: &str) -> Result<(), ApiError> {
        let extra: &[&str] = match plural {
            "pods" => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            "events" => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            "secrets" => &["type"],
            "nodes" => &["spec.unschedulable"],
            "namespaces" => &["status.phase"],
            "replicasets" | "replicationcontrollers" => &["status.replicas"],
            "jobs" => &["status.successful"],
            "services" => &["spec.clusterIP", "spec.type"],
            _ => &[],
        };
        for (path, _, _) in &self.0 {
            if path != "metadata.name" && path != "metadata.namespace" && !extra.contains(&path.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "\"{path}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"{}",
                    extra.iter().map(|e| format!(", \"{e}\"")).collect::<String>()
                )));
            }
        }
        Ok(())
    }

    /// The value the selector requires of `path`, when it is an equality on it.
    pub fn equals(&self, path: &str) -> Option<&str> {
        self.0.iter().find(|(p, eq, _)| p == path && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut cur = obj;
            let mut found = true;
            for part in path.split('.') {
                match cur.get(part) {
                    Some(v) => cur = v,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            let have = match (found, cur) {
                (false, _) | (true, Value::Null) => String::new(),
                (true, Value::String(s)) => s.clone(),
                (true, other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front,back)", true),
            ("app=web,missing", false),
            ("", true),
        ];
        for (s, want) in cases {
            assert_eq!(LabelSelector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn label_selector_from_object() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]});
        let s = LabelSelector::from_object(&sel);
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
    }

    #[test]
    fn field_selector_paths() {
        let pod = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap().matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName=").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.schedulerName=").unwrap().matches(&pod));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("data.index=1").unwrap().check_supported("configmaps").is_err());
        assert!(FieldSelector::parse("spec.nodeName=n").unwrap().check_supported("pods").is_ok());
        assert!(LabelSelector::parse("tier=a=b").is_err());
        assert!(LabelSelector::parse("tier in (a,b)").is_ok());
    }

    #[test]
    fn only_a_lone_name_equality_names_an_object() {
        let named = |s: &str| FieldSelector::parse(s).unwrap().named().map(str::to_string);
        assert_eq!(named("metadata.name=tls").as_deref(), Some("tls"));
        assert_eq!(named("metadata.name==tls").as_deref(), Some("tls"));
        for not_one in [
            "",
            "metadata.name!=tls",
            "metadata.name=",
            "metadata.name=a,metadata.name=b",
            "metadata.name=a,metadata.namespace=x",
            "metadata.namespace=tls",
        ] {
            assert_eq!(named(not_one), None, "{not_one}");
        }
    }
}
