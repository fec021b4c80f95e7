//! Waiting on one object the way kubectl does (`wait`, `rollout status`, `drain`): list it by
//! `fieldSelector=metadata.name=NAME`, then watch from the listed version and judge every
//! change, listing again whenever the watch ends; and the Go-style durations (`90s`,
//! `1m30s`, `500ms`) their `--timeout` flags take.

use std::time::Duration;

use serde_json::Value;

use super::Ctx;
use super::discovery::Resource;
use super::get::urlencode;
use crate::client::Lines;

/// Why waiting on an object ended without its condition holding.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The `--timeout` passed first.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A `--timeout` that is not a duration.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: use a number with a unit, like 30s, 1m30s, 500ms or 2h")]
pub struct BadDuration(String);

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `0`); a bare number is seconds, as
/// older kubectl `--timeout` flags took it.
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let bad = || BadDuration(text.to_string());
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = after;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A `--timeout` where zero means "wait forever" (`rollout status`, `drain`).
pub fn timeout_or_forever(text: &str) -> Result<Option<Duration>, BadDuration> {
    parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

/// Watches object `name` of `r` (in `ns` when namespaced) until `check` returns a value,
/// or `timeout` passes. `check` sees `None` while the object does not exist (and once it
/// is deleted); an error from it ends the wait.
pub async fn until<T>(
    ctx: &Ctx,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
    timeout: Option<Duration>,
    mut check: impl FnMut(Option<&Value>) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let by_name = format!("fieldSelector={}", urlencode(&format!("metadata.name={name}")));
    let collection = r.collection(ns);
    let watching = async {
        loop {
            let list = ctx.client.get(&format!("{collection}?{by_name}")).await?;
            let current = list["items"].as_array().and_then(|items| items.first());
            if let Some(done) = check(current)? {
                return Ok(done);
            }
            let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("");
            let path =
                format!("{collection}?{by_name}&watch=true&allowWatchBookmarks=true&resourceVersion={}", urlencode(rv));
            let mut events = Lines::new(ctx.client.stream(&path, "application/json").await?);
            while let Some(event) = events.next().await? {
                let seen = match event["type"].as_str().unwrap_or("") {
                    "ADDED" | "MODIFIED" => check(Some(&event["object"]))?,
                    "DELETED" => check(None)?,
                    // An expired version (410) or another refusal: list afresh.
                    "ERROR" => break,
                    _ => None,
                };
                if let Some(done) = seen {
                    return Ok(done);
                }
            }
        }
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, watching).await.map_err(|_| FollowError::Timeout(limit))?,
        None => watching.await,
    }
}

/// Whether `e` is a wait that ran out of time.
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<FollowError>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let cases = [
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("2h", 7_200_000),
            ("1.5m", 90_000),
            ("0", 0),
            ("0s", 0),
            ("45", 45_000),
        ];
        for (text, millis) in cases {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(millis), "{text}");
        }
        for bad in ["", "soon", "10x", "m", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(timeout_or_forever("0s").unwrap(), None);
        assert_eq!(timeout_or_forever("5m").unwrap(), Some(Duration::from_secs(300)));
    }
}
