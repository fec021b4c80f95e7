//! What users feel of the server, beside etcd 3.4 measured in the same run on the same
//! machine: idle memory, start-to-ready, create latency (sequential p50/p99), throughput with
//! 16 concurrent clients, watch delivery latency, and bytes written to disk per 1,000 writes.
//!
//! Run: `cargo bench --bench api` (etcd from Debian's `etcd-server` package is used when
//! installed; set `BENCH_WRITES` to change the number of writes per phase, `BENCH_ONLY=bramble`
//! or `etcd` to run one side).
//! Figures are printed, never asserted: machines are noisy. Both servers run side by side
//! and the throughput bursts alternate between them (`BENCH_ROUNDS`, default 5), so a
//! slow moment of the machine falls on both; medians and the per-round ratio are printed.

mod common;

use common::*;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// The object every write stores: a typical pod, already bound to a node (an API object
/// the bench makes) so the scheduler leaves it alone and the figures are the API's and the
/// store's own.
fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"nodeName": "bench-node", "containers": [{"name": "web", "image": "registry.local/web:1.2.3", "ports": [{"containerPort": 8080}],
            "env": [{"name": "MODE", "value": "bench"}], "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

/// How long to wait after a write phase for deferred writes (checkpoints, backend commits)
/// to reach the disk counters.
const SETTLE: Duration = Duration::from_secs(7);

/// One server under test, as the load generator reaches it.
struct Server {
    name: &'static str,
    target: Arc<Target>,
    pid: u32,
    make: Arc<dyn Fn(usize) -> (String, Vec<u8>) + Send + Sync>,
    /// Writes made so far, so every write names a new key.
    written: usize,
}

/// What the sequential phase measured.
struct Sequential {
    p50: Duration,
    p99: Duration,
    /// Bytes written to disk per 1,000 sequential writes (each its own fsync).
    bytes_per_1000: f64,
}

/// Writes one after another on one connection.
async fn sequential(s: &mut Server, n: usize) -> Sequential {
    let mut conn = s.target.connect().await;
    let mut lat = Vec::with_capacity(n);
    let io_before = pid_write_bytes(s.pid);
    for _ in 0..n {
        let (path, body) = (s.make)(s.written);
        s.written += 1;
        let t = Instant::now();
        let (status, _) = send(&mut conn, "POST", &path, body).await;
        lat.push(t.elapsed());
        assert!(status == 200 || status == 201, "{} write failed: {status}", s.name);
    }
    // Let background writes land before reading the I/O counters: bramble's store
    // checkpoints into sled every 5 s, etcd's backend commits every 100 ms.
    tokio::time::sleep(SETTLE).await;
    let bytes_per_1000 = (pid_write_bytes(s.pid) - io_before) as f64 * 1000.0 / n as f64;
    lat.sort();
    Sequential { p50: percentile(&lat, 0.5), p99: percentile(&lat, 0.99), bytes_per_1000 }
}

/// A burst of `n` writes from 16 concurrent clients; the writes per second.
async fn burst(s: &mut Server, n: usize) -> f64 {
    let clients = 16;
    let per = n.max(clients) / clients;
    let base = s.written;
    s.written += per * clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (target, make, name) = (s.target.clone(), s.make.clone(), s.name);
        tasks.push(tokio::spawn(async move {
            let mut conn = target.connect().await;
            for i in 0..per {
                let (path, body) = make(base + c * per + i);
                let (status, _) = send(&mut conn, "POST", &path, body).await;
                assert!(status == 200 || status == 201, "{name} write failed: {status}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    (per * clients) as f64 / started.elapsed().as_secs_f64()
}

/// What the alternating bursts measured, per server.
#[derive(Default)]
struct Concurrent {
    rates: Vec<f64>,
    writes: usize,
    cpu_ticks: u64,
    bytes: u64,
    busy: u64,
    total: u64,
}

/// Alternates bursts between the servers for `rounds` rounds; CPU and disk counters cover
/// each server's own bursts and what it wrote in the background after them.
async fn alternate(servers: &mut [&mut Server], rounds: usize, n: usize) -> Vec<Concurrent> {
    let mut out: Vec<Concurrent> = servers.iter().map(|_| Concurrent::default()).collect();
    let io_before: Vec<u64> = servers.iter().map(|s| pid_write_bytes(s.pid)).collect();
    let cpu_before: Vec<u64> = servers.iter().map(|s| pid_cpu_ticks(s.pid)).collect();
    for _ in 0..rounds {
        for (s, c) in servers.iter_mut().zip(out.iter_mut()) {
            let (busy_before, total_before) = machine_jiffies();
            c.rates.push(burst(s, n).await);
            c.writes += n.max(16) / 16 * 16;
            let (busy_after, total_after) = machine_jiffies();
            c.busy += busy_after - busy_before;
            c.total += total_after - total_before;
        }
    }
    tokio::time::sleep(SETTLE).await;
    for (i, (s, c)) in servers.iter().zip(out.iter_mut()).enumerate() {
        c.bytes = pid_write_bytes(s.pid) - io_before[i];
        c.cpu_ticks = pid_cpu_ticks(s.pid) - cpu_before[i];
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

async fn wait_ready(target: &Target, path: &str, child: &mut Child) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("exited early: {s}");
        }
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(("127.0.0.1", target.port))).await
        {
            drop(tcp);
            let mut c = target.connect().await;
            let (status, _) = send(&mut c, "GET", path, Vec::new()).await;
            if status == 200 {
                return start.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A running server with what its start-up measured; killed and its data removed on drop.
struct Started {
    server: Server,
    _child: Killed,
    dir: std::path::PathBuf,
    idle_rss_kib: u64,
    ready: Duration,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts bramble and measures its idle memory, start-to-ready and watch delivery.
async fn start_bramble() -> (Started, Vec<Duration>) {
    let dir = std::env::temp_dir().join(format!("bramble-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let kubeconfig = dir.join("kc.yaml");
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_bramble"))
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        // The bench's Node is only an API object and never reports: keep it from going
        // Unknown (and its pods from being evicted) during the run.
        .args(["--node-monitor-grace-period", "1h"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .env("BRAMBLE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bramble");
    let mut child = Killed(child);
    let pid = child.0.id();
    // /readyz is anonymous; connect without a client certificate first.
    while !kubeconfig.exists() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let target = Arc::new(Target { tls: Some(tls_from_kubeconfig(&kubeconfig)), port });
    let ready = wait_ready(&target, "/readyz", &mut child.0).await.max(start.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss_kib = pid_rss_kib(pid);

    // Watch delivery: time from sending a write to its event arriving on an open watch.
    let mut watch_conn = target.connect().await;
    let req = hyper::Request::builder()
        .uri("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = watch_conn.send_request(req).await.expect("watch");
    let mut watch_body = resp.into_body();
    let mut writer = target.connect().await;
    let mut watch_lat = Vec::new();
    for i in 0..200 {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("w{i}")}, "data": {"k": "v"}});
        let t = Instant::now();
        send(&mut writer, "POST", "/api/v1/namespaces/default/configmaps", serde_json::to_vec(&cm).expect("json"))
            .await;
        loop {
            let f = watch_body.frame().await.expect("frame").expect("frame ok");
            if f.data_ref()
                .is_some_and(|d| d.windows(format!("\"w{i}\"").len()).any(|w| w == format!("\"w{i}\"").as_bytes()))
            {
                break;
            }
        }
        watch_lat.push(t.elapsed());
    }
    watch_lat.sort();

    // The node the pods are bound to, so no controller treats them as orphans.
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench-node"}});
    send(&mut writer, "POST", "/api/v1/nodes", serde_json::to_vec(&node).expect("json")).await;
    let make: Arc<dyn Fn(usize) -> (String, Vec<u8>) + Send + Sync> = Arc::new(|i| {
        ("/api/v1/namespaces/default/pods".to_string(), serde_json::to_vec(&pod(&format!("p{i}"))).expect("json"))
    });
    let server = Server { name: "bramble", target, pid, make, written: 0 };
    (Started { server, _child: child, dir, idle_rss_kib, ready }, watch_lat)
}

/// Starts etcd (when installed) and measures its idle memory and time to the first write.
async fn start_etcd() -> Option<Started> {
    let Ok(etcd) = which("etcd") else {
        println!("etcd     (not installed: apt-get install etcd-server to compare)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("etcd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (port, peer) = (free_port(), free_port());
    let start = Instant::now();
    let child = Command::new(etcd)
        .arg("--data-dir")
        .arg(&dir)
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .arg("--log-level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let mut child = Killed(child);
    let pid = child.0.id();
    let target = Arc::new(Target { tls: None, port });
    let body = pod("x").to_string();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // First write accepted = ready, as for bramble's first create.
    loop {
        if let Ok(Some(s)) = child.0.try_wait() {
            panic!("etcd exited: {s}");
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let mut c = target.connect().await;
            let put = json!({"key": b64("/ready"), "value": b64("1")}).to_string().into_bytes();
            if send(&mut c, "POST", "/v3/kv/put", put).await.0 == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss_kib = pid_rss_kib(pid);
    let make: Arc<dyn Fn(usize) -> (String, Vec<u8>) + Send + Sync> = Arc::new(move |i| {
        let put = json!({"key": b64(&format!("/registry/pods/default/p{i}")), "value": b64(&body)});
        ("/v3/kv/put".to_string(), put.to_string().into_bytes())
    });
    let server = Server { name: "etcd", target, pid, make, written: 0 };
    Some(Started { server, _child: child, dir, idle_rss_kib, ready })
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .ok_or(())
}

fn main() {
    let n: usize = std::env::var("BENCH_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    // BENCH_ONLY=bramble or etcd runs one side (for profiling one of them).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let bramble = if only != "etcd" { Some(start_bramble().await) } else { None };
        let etcd = if only != "bramble" { start_etcd().await } else { None };
        let mut started: Vec<Started> = Vec::new();
        if let Some((b, watch_lat)) = bramble {
            println!("bramble  idle RSS          {:>8.1} MiB", b.idle_rss_kib as f64 / 1024.0);
            println!("bramble  exec to /readyz   {:>8.1} ms", b.ready.as_secs_f64() * 1e3);
            println!(
                "bramble  watch delivery    {:>8.2} ms p50, {:.2} ms p99",
                percentile(&watch_lat, 0.5).as_secs_f64() * 1e3,
                percentile(&watch_lat, 0.99).as_secs_f64() * 1e3
            );
            started.push(b);
        }
        if let Some(e) = etcd {
            println!("etcd     idle RSS          {:>8.1} MiB", e.idle_rss_kib as f64 / 1024.0);
            println!("etcd     exec to 1st write {:>8.1} ms", e.ready.as_secs_f64() * 1e3);
            started.push(e);
        }
        for st in started.iter_mut() {
            let seq = sequential(&mut st.server, n).await;
            let what = if st.server.name == "bramble" { "create pod" } else { "raw put   " };
            println!(
                "{:<8} {what} p50/p99 {:>6.2} / {:.2} ms (sequential{})",
                st.server.name,
                seq.p50.as_secs_f64() * 1e3,
                seq.p99.as_secs_f64() * 1e3,
                if st.server.name == "bramble" { ", full API over TLS" } else { ", HTTP" }
            );
            println!("{:<8} written/1000 wr.  {:>8.2} MB sequential", st.server.name, seq.bytes_per_1000 / 1e6);
        }
        let mut servers: Vec<&mut Server> = started.iter_mut().map(|st| &mut st.server).collect();
        let results = alternate(&mut servers, rounds, n).await;
        for (s, c) in servers.iter().zip(&results) {
            let rates: Vec<String> = c.rates.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "{:<8} writes/s, 16 cl.  {:>8.0} median of {} bursts of {n} [{}]",
                s.name,
                median(&c.rates),
                c.rates.len(),
                rates.join(" ")
            );
            println!(
                "{:<8}   {:.2} ms server CPU per write (background work included), machine {:.0}% busy in its bursts",
                s.name,
                c.cpu_ticks as f64 * 10.0 / c.writes.max(1) as f64,
                c.busy as f64 * 100.0 / c.total.max(1) as f64
            );
            println!(
                "{:<8} written/1000 wr.  {:>8.2} MB with 16 clients",
                s.name,
                c.bytes as f64 * 1000.0 / c.writes.max(1) as f64 / 1e6
            );
        }
        if let [b, e] = results.as_slice() {
            let ratios: Vec<f64> = b.rates.iter().zip(&e.rates).map(|(b, e)| b / e).collect();
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!("bramble/etcd writes/s      {:>8.2} median of rounds [{}]", median(&ratios), shown.join(" "));
            println!(
                "bramble/etcd bytes/write   {:>8.2}",
                (b.bytes as f64 / b.writes.max(1) as f64) / (e.bytes as f64 / e.writes.max(1) as f64).max(1.0)
            );
        }
        drop(started);
    });
}
