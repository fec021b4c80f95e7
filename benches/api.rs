//! What users feel of the server, beside etcd 3.4 measured in the same run on the same
//! machine: idle memory, start-to-ready, create latency (sequential p50/p99), throughput with
//! 16 concurrent clients, watch delivery latency, and bytes written to disk per 1,000 writes.
//!
//! Run: `cargo bench --bench api` (etcd from Debian's `etcd-server` package is used when
//! installed; set `BENCH_WRITES` to change the number of writes per phase, `BENCH_ONLY=bramble`
//! or `etcd` to run one side).
//! Figures are printed, never asserted: machines are noisy.

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

/// What the write phases measured.
struct Writes {
    p50: Duration,
    p99: Duration,
    rate: f64,
    /// Bytes written to disk per 1,000 sequential writes (each its own fsync).
    bytes_seq: f64,
    /// Bytes written to disk per 1,000 writes from 16 concurrent clients (group commit).
    bytes_conc: f64,
    /// Server CPU time per write in the concurrent phase, in milliseconds.
    cpu_ms_per_write: f64,
    /// How busy the whole machine (server and load generator) was in the concurrent phase.
    machine_busy: f64,
}

/// Sequential then concurrent writes.
async fn write_phases(
    target: Arc<Target>,
    pid: u32,
    n: usize,
    make: Arc<dyn Fn(usize) -> (String, Vec<u8>) + Send + Sync>,
) -> Writes {
    let mut conn = target.connect().await;
    let mut lat = Vec::with_capacity(n);
    let io_before = pid_write_bytes(pid);
    for i in 0..n {
        let (path, body) = make(i);
        let t = Instant::now();
        let (status, _) = send(&mut conn, "POST", &path, body).await;
        lat.push(t.elapsed());
        assert!(status == 200 || status == 201, "write failed: {status}");
    }
    // Let background writes land before reading the I/O counters: bramble's store
    // checkpoints into sled every 5 s, etcd's backend commits every 100 ms.
    tokio::time::sleep(SETTLE).await;
    let bytes_per_1000 = (pid_write_bytes(pid) - io_before) as f64 * 1000.0 / n as f64;
    lat.sort();
    let clients = 16;
    let per = n.max(clients) / clients;
    let io_before = pid_write_bytes(pid);
    let (cpu_before, (busy_before, total_before)) = (pid_cpu_ticks(pid), machine_jiffies());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let target = target.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = target.connect().await;
            for i in 0..per {
                let (path, body) = make(n + c * per + i);
                let (status, _) = send(&mut conn, "POST", &path, body).await;
                assert!(status == 200 || status == 201, "write failed: {status}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let rate = (per * clients) as f64 / started.elapsed().as_secs_f64();
    let (busy_after, total_after) = machine_jiffies();
    let machine_busy = (busy_after - busy_before) as f64 / (total_after - total_before).max(1) as f64;
    let cpu_ms_per_write = (pid_cpu_ticks(pid) - cpu_before) as f64 * 10.0 / (per * clients) as f64;
    tokio::time::sleep(SETTLE).await;
    let bytes_conc = (pid_write_bytes(pid) - io_before) as f64 * 1000.0 / (per * clients) as f64;
    Writes {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        rate,
        bytes_seq: bytes_per_1000,
        bytes_conc,
        cpu_ms_per_write,
        machine_busy,
    }
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

async fn bench_bramble(n: usize) {
    let dir = std::env::temp_dir().join(format!("bramble-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let kubeconfig = dir.join("kc.yaml");
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_bramble"))
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
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
    let idle_rss = pid_rss_kib(pid);

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
    let w = write_phases(target.clone(), pid, n, make).await;
    println!("bramble  idle RSS          {:>8.1} MiB", idle_rss as f64 / 1024.0);
    println!("bramble  exec to /readyz   {:>8.1} ms", ready.as_secs_f64() * 1e3);
    println!("bramble  create pod p50    {:>8.2} ms   (sequential, full API over TLS)", w.p50.as_secs_f64() * 1e3);
    println!("bramble  create pod p99    {:>8.2} ms", w.p99.as_secs_f64() * 1e3);
    println!(
        "bramble  creates/s, 16 cl. {:>8.0}   ({:.2} ms server CPU per write, machine {:.0}% busy)",
        w.rate,
        w.cpu_ms_per_write,
        w.machine_busy * 100.0
    );
    println!(
        "bramble  watch delivery    {:>8.2} ms p50, {:.2} ms p99",
        percentile(&watch_lat, 0.5).as_secs_f64() * 1e3,
        percentile(&watch_lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "bramble  written/1000 wr.  {:>8.2} MB sequential, {:.2} MB with 16 clients",
        w.bytes_seq / 1e6,
        w.bytes_conc / 1e6
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn bench_etcd(n: usize) {
    let Ok(etcd) = which("etcd") else {
        println!("etcd     (not installed: apt-get install etcd-server to compare)");
        return;
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
    let idle_rss = pid_rss_kib(pid);
    let make: Arc<dyn Fn(usize) -> (String, Vec<u8>) + Send + Sync> = Arc::new(move |i| {
        let put = json!({"key": b64(&format!("/registry/pods/default/p{i}")), "value": b64(&body)});
        ("/v3/kv/put".to_string(), put.to_string().into_bytes())
    });
    let w = write_phases(target, pid, n, make).await;
    println!("etcd     idle RSS          {:>8.1} MiB", idle_rss as f64 / 1024.0);
    println!("etcd     exec to 1st write {:>8.1} ms", ready.as_secs_f64() * 1e3);
    println!("etcd     put p50           {:>8.2} ms   (sequential, raw put over HTTP)", w.p50.as_secs_f64() * 1e3);
    println!("etcd     put p99           {:>8.2} ms", w.p99.as_secs_f64() * 1e3);
    println!(
        "etcd     puts/s, 16 cl.    {:>8.0}   ({:.2} ms server CPU per write, machine {:.0}% busy)",
        w.rate,
        w.cpu_ms_per_write,
        w.machine_busy * 100.0
    );
    println!(
        "etcd     written/1000 wr.  {:>8.2} MB sequential, {:.2} MB with 16 clients",
        w.bytes_seq / 1e6,
        w.bytes_conc / 1e6
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .ok_or(())
}

fn main() {
    let n: usize = std::env::var("BENCH_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        // BENCH_ONLY=bramble or etcd runs one side (for profiling one of them).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        if only != "etcd" {
            bench_bramble(n).await;
        }
        if only != "bramble" {
            bench_etcd(n).await;
        }
    });
}
