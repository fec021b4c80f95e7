//! The tokens of projected `serviceAccountToken` volume sources, as the kubelet's token
//! manager keeps them: asked of the API (TokenRequest, bound to the pod, so deleting the
//! pod invalidates them) once, then asked again when 80 % of the lifetime has passed or
//! after 24 hours, whichever comes first. Volumes are rewritten every few seconds; a token
//! is requested only when due. Cached per pod, audience and lifetime, and forgotten with
//! the pod.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::client::Client;

/// The longest a token is used before a new one is asked for, whatever its lifetime.
const MAX_AGE_SECONDS: i64 = 24 * 3600;
/// The lifetime asked for when the source does not say (upstream's default).
const DEFAULT_SECONDS: i64 = 3600;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    service_account: String,
    audience: String,
    seconds: i64,
}

#[derive(Clone, Debug)]
struct Held {
    token: String,
    issued: i64,
    expires: i64,
}

impl Held {
    /// Whether a new token should be asked for at `now` (unix seconds).
    fn due(&self, now: i64) -> bool {
        let lifetime = (self.expires - self.issued).max(0);
        now >= self.issued + lifetime * 8 / 10 || now >= self.issued + max_age()
    }
}

/// The longest a token is used: a day; in debug builds `BRAMBLE_TEST_TOKEN_MAX_AGE_SECONDS`
/// may shorten it, so a test sees a running pod's token renewed within seconds.
#[cfg(debug_assertions)]
fn max_age() -> i64 {
    std::env::var("BRAMBLE_TEST_TOKEN_MAX_AGE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(MAX_AGE_SECONDS)
}

#[cfg(not(debug_assertions))]
fn max_age() -> i64 {
    MAX_AGE_SECONDS
}

/// The node's tokens for its pods' projected volumes.
#[derive(Default)]
pub struct TokenCache {
    held: Mutex<HashMap<Key, Held>>,
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token for `source` (a projected `serviceAccountToken` item) of `pod`: the one
    /// held while it is fresh, else a new one from the API.
    pub async fn token(&self, client: &Client, pod: &Value, source: &Value) -> anyhow::Result<String> {
        let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let key = Key {
            pod_uid: s("/metadata/uid"),
            service_account: {
                let sa = s("/spec/serviceAccountName");
                if sa.is_empty() { "default".into() } else { sa }
            },
            audience: source["audience"].as_str().unwrap_or("").to_string(),
            seconds: source["expirationSeconds"].as_i64().unwrap_or(DEFAULT_SECONDS),
        };
        let now = now_unix();
        if let Some(held) = self.lock().get(&key).filter(|h| !h.due(now)) {
            return Ok(held.token.clone());
        }
        let (ns, name) = (s("/metadata/namespace"), s("/metadata/name"));
        let audiences: Vec<&str> = if key.audience.is_empty() { Vec::new() } else { vec![key.audience.as_str()] };
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": audiences, "expirationSeconds": key.seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": key.pod_uid}}});
        let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{}/token", key.service_account);
        let answer = client.call("POST", &path, Some("application/json"), "application/json", Some(&body)).await?;
        let token = answer.pointer("/status/token").and_then(Value::as_str).unwrap_or("").to_string();
        if token.is_empty() {
            anyhow::bail!(
                "the API answered the token request for service account {ns}/{} without a token",
                key.service_account
            );
        }
        let expires = answer
            .pointer("/status/expirationTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(now + key.seconds, |t| t.as_second());
        self.lock().insert(key, Held { token: token.clone(), issued: now, expires });
        Ok(token)
    }

    /// Drops every token of pods not in `live` (their uids): run as pods go.
    pub fn retain_pods(&self, live: &std::collections::HashSet<String>) {
        self.lock().retain(|k, _| live.contains(&k.pod_uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_at_eighty_percent_or_a_day() {
        let hour = Held { token: "t".into(), issued: 1000, expires: 1000 + 3607 };
        assert!(!hour.due(1000));
        assert!(!hour.due(1000 + 2884), "before 80 % of 3607 s");
        assert!(hour.due(1000 + 2886));
        let week = Held { token: "t".into(), issued: 0, expires: 7 * 24 * 3600 };
        assert!(!week.due(MAX_AGE_SECONDS - 1));
        assert!(week.due(MAX_AGE_SECONDS), "a day at most");
        let expired = Held { token: "t".into(), issued: 100, expires: 50 };
        assert!(expired.due(100), "a token the server says is already over is renewed");
    }
}
