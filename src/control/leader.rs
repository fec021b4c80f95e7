//! Leader election by Lease, as kube-controller-manager does it: the control loops run
//! only in the server holding `kube-system/bramble-controller-manager`, which it renews
//! every few seconds; another server takes the Lease over once it has gone unrenewed for
//! its duration. Every change to the Lease is a compare-and-swap on its resourceVersion,
//! so two servers can never both believe they hold it.

use std::time::Duration;

use serde_json::{Value, json};

use super::conn::{ApiConn, is_conflict, is_not_found};
use super::{epoch_secs, now_secs};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
const NAME: &str = "bramble-controller-manager";
/// How long a Lease stays valid without renewal.
pub const LEASE_SECS: i64 = 15;
/// How often the holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

fn micro_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Whether `me` may take the Lease as it stands: it is mine, or its holder let it lapse.
pub fn may_take(lease: &Value, me: &str, now: i64) -> bool {
    let holder = lease.pointer("/spec/holderIdentity").and_then(Value::as_str).unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let renewed = lease.pointer("/spec/renewTime").and_then(Value::as_str).and_then(epoch_secs).unwrap_or(0);
    let duration = lease.pointer("/spec/leaseDurationSeconds").and_then(Value::as_i64).unwrap_or(LEASE_SECS);
    renewed + duration < now
}

/// Tries once to take or renew the Lease; true while `me` holds it.
pub async fn try_hold(conn: &ApiConn, me: &str) -> anyhow::Result<bool> {
    let now = micro_now();
    match conn.get(&format!("{PATH}/{NAME}")).await {
        Err(e) if is_not_found(&e) => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NAME, "namespace": "kube-system"},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": LEASE_SECS, "acquireTime": now,
                         "renewTime": now, "leaseTransitions": 0}});
            match conn.create(PATH, &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
        Ok(mut lease) => {
            if !may_take(&lease, me, now_secs()) {
                return Ok(false);
            }
            if lease["spec"]["holderIdentity"] != me {
                let transitions = lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
                lease["spec"]["leaseTransitions"] = json!(transitions + 1);
                lease["spec"]["acquireTime"] = json!(now);
                lease["spec"]["holderIdentity"] = json!(me);
                tracing::info!(holder = me, "took the controller lease");
            }
            lease["spec"]["renewTime"] = json!(now);
            lease["spec"]["leaseDurationSeconds"] = json!(LEASE_SECS);
            match conn.replace(&format!("{PATH}/{NAME}"), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_only_when_free_mine_or_lapsed() {
        let t0 = epoch_secs("2026-01-01T00:00:00Z").unwrap_or(0);
        let held = json!({"spec": {"holderIdentity": "a", "renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 15}});
        assert!(may_take(&held, "a", t0 + 100));
        assert!(!may_take(&held, "b", t0 + 10));
        assert!(may_take(&held, "b", t0 + 16));
        assert!(may_take(&json!({"spec": {}}), "b", t0));
    }
}
