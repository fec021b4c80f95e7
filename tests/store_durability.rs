//! The store's promises, checked through the real server over HTTPS: acknowledged writes
//! survive `kill -9`, revisions stay monotonic across restarts, compare-and-swap refuses
//! stale writes, Secrets never reach the disk in the clear, and bad input is refused
//! without touching what is stored.

mod common;

use common::{TestServer, configmap};
use serde_json::json;

const CM: &str = "/api/v1/namespaces/default/configmaps";
/// The test's ConfigMaps: every namespace also holds the cluster's `kube-root-ca.crt`.
const CM_MINE: &str = "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%21%3Dkube-root-ca.crt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = TestServer::start(&[]);
    let client = server.client();
    let mut handles = Vec::new();
    for i in 0..64 {
        let c = server.client();
        handles.push(tokio::spawn(async move {
            c.post(CM, &configmap(&format!("cm-{i}"), &[("i", &i.to_string())])).await
        }));
    }
    let mut revisions = Vec::new();
    for h in handles {
        let r = h.await.expect("task");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        revisions.push(r.json()["metadata"]["resourceVersion"].as_str().expect("rv").parse::<u64>().expect("number"));
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 64, "every write has its own revision");
    let before = client.get(CM_MINE).await.json();
    drop(client);

    server.kill9();
    server.spawn();
    let client = server.client();
    let after = client.get(CM_MINE).await.json();
    assert_eq!(after["items"].as_array().map(Vec::len), Some(64));
    for (a, b) in before["items"].as_array().expect("items").iter().zip(after["items"].as_array().expect("items")) {
        assert_eq!(a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]);
        assert_eq!(a["data"], b["data"]);
    }
    let list_rv: u64 = after["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("number");
    let next = client.post(CM, &configmap("after-restart", &[])).await.json();
    let next_rv: u64 = next["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("number");
    assert!(next_rv > list_rv && next_rv > *revisions.last().expect("some"), "revisions keep growing after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointed_and_logged_writes_read_back_after_kill_9() {
    let mut server = TestServer::start(&[]);
    let c = server.client();
    for i in 0..40 {
        let r = c.post(CM, &configmap(&format!("cm-{i:02}"), &[("v", "1"), ("pad", &"x".repeat(2000))])).await;
        assert_eq!(r.status, 201);
    }
    // The store moves applied writes into its value chunks every 5 s.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    // After the checkpoint: updates and deletions that only the Raft log holds.
    for i in 0..40 {
        let path = format!("{CM}/cm-{i:02}");
        if i % 4 == 0 {
            assert_eq!(c.request("DELETE", &path, "application/json", "").await.status, 200);
        } else if i % 2 == 0 {
            let mut cm = c.get(&path).await.json();
            cm["data"]["v"] = json!("2");
            assert_eq!(c.put(&path, &cm).await.status, 200);
        }
    }
    let before = c.get(CM_MINE).await.json();
    drop(c);
    server.kill9();
    server.spawn();
    let after = server.client().get(CM_MINE).await.json();
    let summary = |list: &serde_json::Value| -> Vec<(String, String, String)> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                    i["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string(),
                    i["data"]["v"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(summary(&after), summary(&before));
    assert_eq!(summary(&after).len(), 30);
    assert_eq!(summary(&after).iter().filter(|(_, _, v)| v == "2").count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_updates_conflict_and_current_ones_apply() {
    let server = TestServer::start(&[]);
    let c = server.client();
    let created = c.post(CM, &configmap("cas", &[("v", "1")])).await.json();
    let mut first = created.clone();
    first["data"]["v"] = json!("2");
    let r = c.put(&format!("{CM}/cas"), &first).await;
    assert_eq!(r.status, 200);
    let mut stale = created.clone();
    stale["data"]["v"] = json!("3");
    let r = c.put(&format!("{CM}/cas"), &stale).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["reason"], "Conflict");
    assert_eq!(c.get(&format!("{CM}/cas")).await.json()["data"]["v"], "2");
    let r = c.post(CM, &configmap("cas", &[])).await;
    assert_eq!((r.status, r.json()["reason"].clone()), (409, json!("AlreadyExists")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest() {
    let mut server = TestServer::start(&[]);
    let c = server.client();
    let value = "correct-horse-battery-staple-7351";
    let secret =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": value}});
    let r = c.post("/api/v1/namespaces/default/secrets", &secret).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let got = c.get("/api/v1/namespaces/default/secrets/s").await.json();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    assert_eq!(got["data"]["password"], json!(b64));
    server.kill9();
    let mut needles = vec![value.as_bytes().to_vec(), b64.as_bytes().to_vec()];
    needles.push(base64::engine::general_purpose::STANDARD.encode(b64.as_bytes()).into_bytes());
    let mut stack = vec![server.data_dir()];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("read dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).expect("read file");
            for n in &needles {
                assert!(
                    !bytes.windows(n.len()).any(|w| w == &n[..]),
                    "{} holds the secret in the clear",
                    path.display()
                );
            }
        }
    }
    assert!(files > 3, "the data dir was walked");
    server.spawn();
    let again = server.client().get("/api/v1/namespaces/default/secrets/s").await.json();
    assert_eq!(again["data"]["password"], json!(b64), "secrets read back after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_changes_nothing() {
    let server = TestServer::start(&[]);
    let c = server.client();
    let ok = c.post(CM, &configmap("keep", &[("a", "1")])).await.json();
    let rv = ok["metadata"]["resourceVersion"].clone();

    let r = c.request("POST", CM, "application/json", "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["kind"], "Status");

    let big = "x".repeat(4 * 1024 * 1024);
    let r = c.post(CM, &configmap("huge", &[("x", &big)])).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["reason"], "RequestEntityTooLarge");

    let r = c
        .request(
            "PUT",
            &format!("{CM}/keep"),
            "application/json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"keep"},"data":{"a":5}}"#,
        )
        .await;
    assert_eq!(r.status, 400, "a number where a string belongs: {}", String::from_utf8_lossy(&r.body));

    let r = c
        .request(
            "POST",
            &format!("{CM}?fieldValidation=Strict"),
            "application/json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"strict"},"dta":{}}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().expect("message").contains("unknown field \"dta\""));

    let r = c.post(CM, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.name");

    let r = c.post("/api/v1/namespaces/nowhere/configmaps", &configmap("x", &[])).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "namespaces \"nowhere\" not found");

    let r = c
        .request(
            "POST",
            &format!("{CM}?dryRun=All"),
            "application/json",
            serde_json::to_vec(&configmap("dry", &[])).expect("json"),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(c.get(&format!("{CM}/dry")).await.status, 404, "a dry run stores nothing");

    let after = c.get(&format!("{CM}/keep")).await.json();
    assert_eq!(after["metadata"]["resourceVersion"], rv);
    assert_eq!(after["data"]["a"], "1");
    let list = c.get(CM_MINE).await.json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "no half-stored objects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required() {
    let server = TestServer::start(&[]);
    let anon = server.anonymous_client();
    assert_eq!(anon.get("/version").await.status, 200);
    assert_eq!(anon.get("/readyz").await.status, 200);
    let r = anon.get("/api/v1/namespaces").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Unauthorized");
    assert_eq!(server.client().get("/api/v1/namespaces").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_mid_log_refuses_to_start_and_changes_nothing() {
    let mut server = TestServer::start(&[]);
    let client = server.client();
    // One write at a time: each is its own append, starting on its own page.
    for i in 0..8 {
        let r = client.post(CM, &configmap(&format!("seq-{i}"), &[("i", &i.to_string())])).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    drop(client);
    server.kill9();
    let log = server.data_dir().join("server/store/raft/raft.log");
    let mut bytes = std::fs::read(&log).expect("raft.log");
    assert!(bytes.len() >= 6 * 4096, "one page per append: {} bytes", bytes.len());
    // A flipped bit inside the payload of a record in the middle of the log.
    let at = 3 * 4096 + 8 + 3;
    bytes[at] ^= 0x20;
    std::fs::write(&log, &bytes).expect("write the damaged log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bramble"))
        .arg("server")
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(["--https-listen-port", &server.port.to_string(), "--bind-address", "127.0.0.1", "--disable-agent"])
        .arg("--write-kubeconfig")
        .arg(server.kubeconfig())
        .output()
        .expect("run bramble");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a corrupt log: {stderr}");
    assert!(stderr.contains("raft.log is corrupt") && stderr.contains("offset 12288"), "{stderr}");
    assert_eq!(std::fs::read(&log).expect("raft.log"), bytes, "the log is left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_promptly_even_with_watches_open() {
    let mut server = TestServer::start(&[]);
    let client = server.client();
    assert_eq!(client.post(CM, &configmap("before-stop", &[])).await.status, 201);
    // A watch that would run for half an hour if nothing ended it.
    let watcher = server.client();
    let watch =
        tokio::spawn(async move { watcher.watch_lines(&format!("{CM}?watch=true&timeoutSeconds=1800"), 1000).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut child = server.child.take().expect("running");
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "SIGTERM did not stop the server in 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}: {}", server.log());
    watch.abort();
    server.spawn();
    assert_eq!(server.client().get(&format!("{CM}/before-stop")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_append_that_fails_restarts_the_raft_core_in_process() {
    let trigger = std::env::temp_dir().join(format!("bramble-fail-append-{}", std::process::id()));
    let mut server =
        TestServer::start_with_env(&[], &[("BRAMBLE_TEST_FAIL_LOG_APPEND", trigger.to_str().expect("utf-8 path"))]);
    let client = server.client();
    assert_eq!(client.post(CM, &configmap("before", &[])).await.status, 201);
    // The next append fails half written, as on a card that filled after the space check.
    std::fs::write(&trigger, b"").expect("arm the failure");
    let failed = client.post(CM, &configmap("during", &[])).await;
    assert!(failed.status >= 500, "{}: {}", failed.status, String::from_utf8_lossy(&failed.body));
    assert!(!trigger.exists(), "the failure was injected");
    // Reads go on meanwhile.
    assert_eq!(client.get(&format!("{CM}/before")).await.status, 200);
    // Writes come back without a restart of the process.
    let started = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let r = client.post(CM, &configmap(&format!("after-{n}"), &[])).await;
        if r.status == 201 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "writes did not resume: {}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let child = server.child.as_mut().expect("running");
    assert!(child.try_wait().expect("wait").is_none(), "the server process exited");
    let log = server.log();
    assert!(log.contains("Raft core stopped") && log.contains("running again"), "{log}");
    // The unacknowledged write was cut with the torn tail; everything acknowledged stays,
    // also across a power cut.
    assert_eq!(client.get(&format!("{CM}/during")).await.status, 404);
    drop(client);
    server.kill9();
    server.spawn();
    let client = server.client();
    assert_eq!(client.get(&format!("{CM}/before")).await.status, 200);
    assert_eq!(client.get(&format!("{CM}/after-{n}")).await.status, 200);
    assert_eq!(client.get(&format!("{CM}/during")).await.status, 404);
}
