//! `kill -9` under load, checked against the history clients saw: 16 compare-and-swap
//! writers on shared counters, a creator, a deleter, readers and a resuming watcher run
//! while the server is killed and restarted three times. Then:
//! - every acknowledged write is there (no acknowledged counter value is lost or given to
//!   two writers; every acknowledged create that was never deleted exists; every
//!   acknowledged delete stays deleted);
//! - no read is older than a write acknowledged before the read began;
//! - the watcher saw each change at most once and in revision order, and every
//!   acknowledged counter write inside the stretches it followed without a 410.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, TestServer, configmap};
use serde_json::{Value, json};

const NS: &str = "/api/v1/namespaces/default/configmaps";
const COUNTERS: usize = 4;
const CAS_WRITERS: usize = 16;

#[derive(Default)]
struct History {
    /// (counter, value, resourceVersion, when acknowledged)
    cas_acked: Vec<(usize, u64, u64, Instant)>,
    /// (counter, value read, when the read began)
    reads: Vec<(usize, u64, Instant)>,
    created: BTreeSet<String>,
    delete_tried: BTreeSet<String>,
    deleted: BTreeSet<String>,
}

fn counter_value(cm: &Value) -> Option<(u64, u64)> {
    let v = cm["data"]["v"].as_str()?.parse().ok()?;
    let rv = cm["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
    Some((v, rv))
}

async fn request(client: &Client, method: &str, path: &str, body: Option<&Value>) -> Result<common::Reply, String> {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()));
    client.try_request(method, path, "application/json", body).await
}

async fn cas_writer(client: Client, counter: usize, history: Arc<Mutex<History>>, until: Instant) {
    let path = format!("{NS}/counter-{counter}");
    while Instant::now() < until {
        let Ok(r) = request(&client, "GET", &path, None).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some((v, rv)) = (r.status == 200).then(|| counter_value(&r.json())).flatten() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut cm = configmap(&format!("counter-{counter}"), &[("v", &(v + 1).to_string())]);
        cm["metadata"]["resourceVersion"] = json!(rv.to_string());
        match request(&client, "PUT", &path, Some(&cm)).await {
            Ok(r) if r.status == 200 => {
                let (value, rv) = counter_value(&r.json()).expect("an acknowledged counter");
                assert_eq!(value, v + 1);
                history.lock().expect("history").cas_acked.push((counter, value, rv, Instant::now()));
            }
            // 409: another writer won; 5xx or a broken connection: unknown outcome.
            _ => {}
        }
    }
}

async fn reader(client: Client, history: Arc<Mutex<History>>, until: Instant) {
    let mut i = 0usize;
    while Instant::now() < until {
        let counter = i % COUNTERS;
        i += 1;
        let began = Instant::now();
        if let Ok(r) = request(&client, "GET", &format!("{NS}/counter-{counter}"), None).await
            && r.status == 200
            && let Some((v, _)) = counter_value(&r.json())
        {
            history.lock().expect("history").reads.push((counter, v, began));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn creator_and_deleter(client: Client, history: Arc<Mutex<History>>, until: Instant) {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let name = format!("item-{n:05}");
        if let Ok(r) = request(&client, "POST", NS, Some(&configmap(&name, &[("n", &n.to_string())]))).await
            && r.status == 201
        {
            history.lock().expect("history").created.insert(name);
        }
        // Delete every third acknowledged item, a little later.
        if n.is_multiple_of(3) {
            let victim = format!("item-{:05}", n - 2);
            if !history.lock().expect("history").created.contains(&victim) {
                continue;
            }
            history.lock().expect("history").delete_tried.insert(victim.clone());
            if let Ok(r) = request(&client, "DELETE", &format!("{NS}/{victim}"), None).await
                && r.status == 200
            {
                history.lock().expect("history").deleted.insert(victim);
            }
        }
    }
}

/// What the watcher saw: revisions of changes, and the stretches it could not follow (a
/// 410 sent it back to a fresh list).
#[derive(Default)]
struct Watched {
    revisions: Vec<u64>,
    duplicates: Vec<u64>,
    out_of_order: Vec<(u64, u64)>,
    /// (last revision seen, revision of the fresh list): changes in between were not owed.
    gaps: Vec<(u64, u64)>,
    first: u64,
    last: u64,
}

async fn watcher(client: Client, watched: Arc<Mutex<Watched>>, until: Instant) {
    let list_rv = |r: &common::Reply| -> Option<u64> { r.json()["metadata"]["resourceVersion"].as_str()?.parse().ok() };
    let mut from = loop {
        if let Ok(r) = request(&client, "GET", NS, None).await
            && r.status == 200
            && let Some(rv) = list_rv(&r)
        {
            break rv;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    {
        let mut w = watched.lock().expect("watched");
        w.first = from;
        w.last = from;
    }
    let mut seen: HashMap<u64, usize> = HashMap::new();
    while Instant::now() < until {
        let path = format!("{NS}?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=5");
        let w2 = watched.clone();
        let mut last = from;
        let mut expired_event = false;
        let result = client
            .try_watch(&path, |event| {
                let kind = event["type"].as_str().unwrap_or("").to_string();
                let rv: u64 =
                    event["object"]["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                if kind == "ERROR" {
                    expired_event = event["object"]["code"] == 410;
                    return false;
                }
                if kind != "BOOKMARK" {
                    let mut w = w2.lock().expect("watched");
                    if seen.insert(rv, 1).is_some() {
                        w.duplicates.push(rv);
                    } else if rv <= last {
                        w.out_of_order.push((last, rv));
                    }
                    w.revisions.push(rv);
                }
                last = last.max(rv);
                Instant::now() < until
            })
            .await;
        from = last;
        watched.lock().expect("watched").last = from;
        let expired = match &result {
            Ok(Some(r)) => r.status == 410,
            _ => false,
        };
        if expired || expired_event {
            // Start again from a fresh list: the changes in between are not owed to us.
            loop {
                if let Ok(r) = request(&client, "GET", NS, None).await
                    && r.status == 200
                    && let Some(rv) = list_rv(&r)
                {
                    watched.lock().expect("watched").gaps.push((from, rv));
                    from = rv;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else if result.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_keeps_every_acknowledged_write_and_the_order_of_history() {
    let mut server = TestServer::start(&[]);
    let setup = server.client();
    for c in 0..COUNTERS {
        let r = setup.post(NS, &configmap(&format!("counter-{c}"), &[("v", "0")])).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let history = Arc::new(Mutex::new(History::default()));
    let watched = Arc::new(Mutex::new(Watched::default()));
    let until = Instant::now() + Duration::from_secs(16);
    let mut tasks = Vec::new();
    for w in 0..CAS_WRITERS {
        tasks.push(tokio::spawn(cas_writer(server.client(), w % COUNTERS, history.clone(), until)));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(reader(server.client(), history.clone(), until)));
    }
    tasks.push(tokio::spawn(creator_and_deleter(server.client(), history.clone(), until)));
    tasks.push(tokio::spawn(watcher(server.client(), watched.clone(), until)));

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        server.kill9();
        tokio::task::block_in_place(|| server.spawn());
    }
    for t in tasks {
        t.await.expect("a client task");
    }

    let h = std::mem::take(&mut *history.lock().expect("history"));
    assert!(h.cas_acked.len() > 50, "too few acknowledged writes to judge: {}", h.cas_acked.len());
    let client = server.client();

    // No acknowledged counter value lost or acknowledged twice.
    let mut by_counter: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (c, v, _, _) in &h.cas_acked {
        by_counter.entry(*c).or_default().push(*v);
    }
    for (c, values) in &mut by_counter {
        values.sort_unstable();
        let before = values.len();
        values.dedup();
        assert_eq!(values.len(), before, "counter-{c}: a value was acknowledged to two writers");
        let r = client.get(&format!("{NS}/counter-{c}")).await;
        let (now, _) = counter_value(&r.json()).expect("the counter");
        let max = values.last().copied().unwrap_or(0);
        assert!(now >= max, "counter-{c} is {now} after {max} was acknowledged: an acknowledged write was lost");
    }

    // No read older than a write acknowledged before it began.
    for (c, v, began) in &h.reads {
        let newest_before = h
            .cas_acked
            .iter()
            .filter(|(cc, _, _, acked)| cc == c && acked < began)
            .map(|(_, value, _, _)| *value)
            .max()
            .unwrap_or(0);
        assert!(*v >= newest_before, "counter-{c}: read {v} after {newest_before} was acknowledged");
    }

    // Creates and deletes.
    for name in &h.created {
        let status = client.get(&format!("{NS}/{name}")).await.status;
        if h.deleted.contains(name) {
            assert_eq!(status, 404, "{name}: an acknowledged delete came back");
        } else if !h.delete_tried.contains(name) {
            assert_eq!(status, 200, "{name}: an acknowledged create is gone");
        }
    }

    // The watch: once each, in order, and nothing acknowledged missing outside the gaps.
    let w = watched.lock().expect("watched");
    assert!(w.duplicates.is_empty(), "events seen twice: {:?}", w.duplicates);
    assert!(w.out_of_order.is_empty(), "events out of order: {:?}", w.out_of_order);
    let seen: BTreeSet<u64> = w.revisions.iter().copied().collect();
    let in_gap = |rv: u64| w.gaps.iter().any(|(a, b)| rv > *a && rv <= *b);
    let mut owed = 0;
    for (c, v, rv, _) in &h.cas_acked {
        if *rv > w.first && *rv <= w.last && !in_gap(*rv) {
            owed += 1;
            assert!(seen.contains(rv), "counter-{c}={v} (revision {rv}) was acknowledged but never watched");
        }
    }
    eprintln!(
        "{} counter writes acknowledged, {} reads, {} creates, {} deletes; the watch saw {} events, owed {owed}, \
         {} gaps after 410",
        h.cas_acked.len(),
        h.reads.len(),
        h.created.len(),
        h.deleted.len(),
        w.revisions.len(),
        w.gaps.len()
    );
}
