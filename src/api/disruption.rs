//! PodDisruptionBudgets: how many of a budget's pods may be disrupted now. The eviction
//! subresource refuses (429) an eviction that would take a budget below what it requires,
//! as upstream does, so `kubectl drain` waits and retries; the disruption controller
//! reports the same figures in the budget's status.

use serde_json::Value;

use super::selector::LabelSelector;

/// A budget's arithmetic over the pods it selects.
#[derive(Debug, Default, PartialEq)]
pub struct Budget {
    /// Pods the budget covers (not finished, not being deleted).
    pub expected: i64,
    /// Of those, Ready and not being deleted.
    pub healthy: i64,
    /// How many must stay healthy.
    pub desired: i64,
    /// How many may be disrupted now.
    pub allowed: i64,
}

fn scaled(v: &Value, total: i64, round_up: bool) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(p) => {
            let pct: i64 = p.strip_suffix('%')?.parse().ok()?;
            Some(if round_up { (pct * total + 99) / 100 } else { pct * total / 100 })
        }
        _ => None,
    }
}

/// Whether a pod is Ready and not going away.
pub fn healthy(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null)
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Whether `pdb` covers `pod` (an empty selector covers nothing, as in policy/v1).
pub fn covers(pdb: &Value, pod: &Value) -> bool {
    let sel = LabelSelector::from_object(&pdb["spec"]["selector"]);
    !sel.is_empty() && sel.matches_object(pod)
}

/// The budget of `pdb` over the pods of its namespace. Like upstream, the pods expected
/// are what their controllers' scale says (`scale_of` answers for a controller reference,
/// `None` when it has none), so a pod just evicted and not yet replaced still counts; pods
/// without a controller count as themselves.
pub fn budget(pdb: &Value, pods: &[Value], scale_of: &dyn Fn(&Value) -> Option<i64>) -> Budget {
    let covered: Vec<&Value> = pods
        .iter()
        .filter(|p| covers(pdb, p))
        .filter(|p| !matches!(p.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")))
        .collect();
    let mut controllers: Vec<&Value> = Vec::new();
    let mut expected = 0;
    for p in &covered {
        let owner = p
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
        match owner {
            Some(o) if scale_of(o).is_some() => {
                if !controllers.iter().any(|c| c["uid"] == o["uid"]) {
                    controllers.push(o);
                    expected += scale_of(o).unwrap_or(0);
                }
            }
            // A pod being deleted with no controller to replace it is already gone.
            _ if p.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) => {}
            _ => expected += 1,
        }
    }
    let healthy = covered.iter().filter(|p| healthy(p)).count() as i64;
    let spec = &pdb["spec"];
    let desired = if let Some(min) = spec.get("minAvailable").and_then(|m| scaled(m, expected, true)) {
        min
    } else if let Some(max) = spec.get("maxUnavailable").and_then(|m| scaled(m, expected, true)) {
        (expected - max).max(0)
    } else {
        // Neither given: upstream's default is minAvailable 1.
        1
    };
    Budget { expected, healthy, desired, allowed: (healthy - desired).max(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "db"}},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn min_available_and_max_unavailable_leave_what_they_say() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let budget = |pdb: &Value, pods: &[Value]| budget(pdb, pods, &|_| None);
        let min2 = json!({"spec": {"selector": {"matchLabels": {"app": "db"}}, "minAvailable": 2}});
        assert_eq!(budget(&min2, &pods), Budget { expected: 3, healthy: 2, desired: 2, allowed: 0 });
        let max1 = json!({"spec": {"selector": {"matchLabels": {"app": "db"}}, "maxUnavailable": 1}});
        assert_eq!(budget(&max1, &pods).allowed, 0, "one is already unavailable");
        let half = json!({"spec": {"selector": {"matchLabels": {"app": "db"}}, "minAvailable": "50%"}});
        assert_eq!(budget(&half, &pods).desired, 2, "percentages round up");
        let other = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1}});
        assert_eq!(budget(&other, &pods).expected, 0);
    }

    #[test]
    fn pods_expected_come_from_their_controllers_scale() {
        let owned = |name: &str, ready: bool| {
            let mut p = pod(name, ready);
            p["metadata"]["ownerReferences"] = json!([{"kind": "ReplicaSet", "uid": "rs1", "controller": true}]);
            p
        };
        // One of two replicas evicted and not replaced yet: the scale still says 2.
        let pods = vec![owned("b", true)];
        let max1 = json!({"spec": {"selector": {"matchLabels": {"app": "db"}}, "maxUnavailable": 1}});
        let b = budget(&max1, &pods, &|r| (r["uid"] == "rs1").then_some(2));
        assert_eq!(b, Budget { expected: 2, healthy: 1, desired: 1, allowed: 0 });
    }
}
