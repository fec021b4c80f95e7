//! Watches through the real server: replay from a resourceVersion, selectors, timeouts,
//! bookmarks, and 410 Gone for history that has been compacted.

mod common;

use common::{TestServer, configmap};
use serde_json::json;

const CM: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_every_event_since_a_revision() {
    let server = TestServer::start(&[]);
    let c = server.client();
    let start = c.get(CM).await.json()["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    let created = c.post(CM, &configmap("w", &[("v", "1")])).await.json();
    let mut changed = created.clone();
    changed["data"]["v"] = json!("2");
    assert_eq!(c.put(&format!("{CM}/w"), &changed).await.status, 200);
    assert_eq!(c.request("DELETE", &format!("{CM}/w"), "application/json", "").await.status, 200);
    // The namespace's kube-root-ca.crt may be published meanwhile: left out.
    let mine = "fieldSelector=metadata.name%21%3Dkube-root-ca.crt";
    let events = c.watch_lines(&format!("{CM}?watch=1&resourceVersion={start}&timeoutSeconds=2&{mine}"), 3).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().expect("type")).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(events[1]["object"]["data"]["v"], "2");
    let revs: Vec<u64> = events
        .iter()
        .map(|e| e["object"]["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("n"))
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "revisions increase: {revs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_changes_turn_into_added_and_deleted() {
    let server = TestServer::start(&[]);
    let c = server.client();
    let start = c.get(CM).await.json()["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    let mut cm = configmap("sel", &[]);
    cm["metadata"]["labels"] = json!({"app": "web"});
    let created = c.post(CM, &cm).await.json();
    let mut relabelled = created.clone();
    relabelled["metadata"]["labels"] = json!({"app": "db"});
    assert_eq!(c.put(&format!("{CM}/sel"), &relabelled).await.status, 200);
    let events = c
        .watch_lines(&format!("{CM}?watch=true&resourceVersion={start}&labelSelector=app%3Dweb&timeoutSeconds=2"), 2)
        .await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().expect("type")).collect();
    assert_eq!(types, ["ADDED", "DELETED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_at_timeout_and_sends_initial_state_without_revision() {
    let server = TestServer::start(&[]);
    let c = server.client();
    c.post(CM, &configmap("a", &[])).await;
    let started = std::time::Instant::now();
    // Every namespace also holds the cluster's kube-root-ca.crt: left out.
    let events = c
        .watch_lines(&format!("{CM}?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%21%3Dkube-root-ca.crt"), 100)
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ADDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_answers_410_expired() {
    let server = TestServer::start(&["--watch-history", "4"]);
    let c = server.client();
    let first = c.post(CM, &configmap("old", &[])).await.json();
    let rv = first["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    for i in 0..10 {
        c.post(CM, &configmap(&format!("n{i}"), &[])).await;
    }
    let events = c.watch_lines(&format!("{CM}?watch=1&resourceVersion={rv}"), 1).await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continue_older_than_the_history_is_410_with_a_token_that_reads_on() {
    let server = TestServer::start(&["--watch-history", "4"]);
    let c = server.client();
    for name in ["a", "b", "c"] {
        c.post(CM, &configmap(name, &[])).await;
    }
    let first = c.get(&format!("{CM}?limit=1")).await.json();
    let token = first["metadata"]["continue"].as_str().expect("continue").to_string();
    for i in 0..10 {
        c.post(CM, &configmap(&format!("n{i}"), &[])).await;
    }
    let expired = c.get(&format!("{CM}?limit=2&continue={token}")).await;
    assert_eq!(expired.status, 410);
    let status = expired.json();
    assert_eq!(status["reason"], "Expired");
    assert!(status["message"].as_str().expect("message").contains("too old to display a consistent list"));
    // The inconsistent token lists on from the same key, at the latest state.
    let inconsistent = status["metadata"]["continue"].as_str().expect("inconsistent continue").to_string();
    let rest = c.get(&format!("{CM}?continue={inconsistent}")).await.json();
    let names: Vec<&str> = rest["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().expect("name"))
        // Every namespace also holds the cluster's kube-root-ca.crt.
        .filter(|n| *n != "kube-root-ca.crt")
        .collect();
    assert_eq!(names[..2], ["b", "c"]);
    assert_eq!(names.len(), 12);
}
