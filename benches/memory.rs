//! What stays resident as the store grows, and how fast a full disk recovers.
//!
//! Prints the server's RSS (no agent, unless `BENCH_WITH_AGENT=1`) idle, after 1,000 / 10,000 / 50,000 pods, with 200
//! watches open while 1,000 more writes are delivered to each, and after they close; then,
//! on a 96 MiB ext4 made for the run (root only; skipped otherwise), the time from freeing
//! space on a full disk to the first acknowledged write.
//!
//! Run: `cargo bench --bench memory` (`BENCH_OBJECTS=1000,10000,50000` to change the
//! steps, `BENCH_SERVER_ARGS="--watch-history-mb 8"` to try server flags). Figures are printed, never asserted.

mod common;

use common::*;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// A typical pod (about 700 bytes of JSON as sent), bound to a Node that exists, so the
/// controllers leave it alone.
fn pod(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p{i:06}"), "labels": {"app": format!("app-{}", i % 50), "tier": "web"}},
        "spec": {"nodeName": "bench-node", "containers": [{"name": "web", "image": "registry.local/web:1.2.3",
            "ports": [{"containerPort": 8080}], "env": [{"name": "MODE", "value": "bench"}, {"name": "ID", "value": i.to_string()}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
}

struct Bramble {
    _child: Killed,
    pid: u32,
    target: Arc<Target>,
    dir: std::path::PathBuf,
}

impl Drop for Bramble {
    fn drop(&mut self) {
        let _ = self._child.0.kill();
        let _ = self._child.0.wait();
        if with_agent() {
            // What the agent set up (its node's network, mounts) goes as an operator would
            // remove it.
            let _ = Command::new(env!("CARGO_BIN_EXE_bramble"))
                .args(["killall", "--data-dir"])
                .arg(self.dir.join("data"))
                .arg("--pod-log-dir")
                .arg(self.dir.join("logs"))
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `BENCH_WITH_AGENT=1` (as root): the node agent in the same process, as on a board; it
/// registers its own node and leaves the bench's pods, bound to another, alone.
fn with_agent() -> bool {
    std::env::var_os("BENCH_WITH_AGENT").is_some()
}

async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Bramble {
    let dir = data_dir.to_path_buf();
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let kubeconfig = dir.join("kc.yaml");
    let child = Command::new(env!("CARGO_BIN_EXE_bramble"))
        .args(["server", "--bind-address", "127.0.0.1", "--node-monitor-grace-period", "1h"])
        .args(if with_agent() { &[][..] } else { &["--disable-agent"][..] })
        .arg("--pod-log-dir")
        .arg(dir.join("logs"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .env("BRAMBLE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bramble");
    let child = Killed(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "bramble did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let target = Arc::new(Target { tls: Some(tls_from_kubeconfig(&kubeconfig)), port });
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let mut c = target.connect().await;
            if send(&mut c, "GET", "/readyz", Vec::new()).await.0 == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "bramble did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = target.connect().await;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench-node"}});
    send(&mut c, "POST", "/api/v1/nodes", serde_json::to_vec(&node).expect("json")).await;
    Bramble { _child: child, pid, target, dir }
}

/// Creates pods `from..to` with 16 concurrent clients.
async fn create_pods(target: &Arc<Target>, from: usize, to: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (target, next) = (target.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = target.connect().await;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    return;
                }
                let body = serde_json::to_vec(&pod(i)).expect("json");
                let (status, body) = send(&mut c, "POST", "/api/v1/namespaces/default/pods", body).await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RSS once the store has checkpointed what was just written (every 5 s).
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(7)).await;
    pid_rss_kib(pid)
}

async fn memory_steps(steps: &[usize]) {
    let dir = std::env::temp_dir().join(format!("bramble-bench-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // BENCH_SERVER_ARGS: extra server flags, to see what a setting changes.
    let extra = std::env::var("BENCH_SERVER_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let b = start(&dir, &extra).await;
    println!("bramble  RSS idle                      {:>8.1} MiB", mib(settled_rss(b.pid).await));
    let mut made = 0;
    let mut last = (0usize, 0u64);
    for &n in steps {
        let t = Instant::now();
        create_pods(&b.target, made, n).await;
        let took = t.elapsed();
        made = n;
        let rss = settled_rss(b.pid).await;
        let per_1000 =
            if last.0 > 0 { (rss as f64 - last.1 as f64) / ((n - last.0) as f64 / 1000.0) / 1024.0 } else { 0.0 };
        println!(
            "bramble  RSS with {n:>6} pods            {:>8.1} MiB  ({:.0} creates/s{})",
            mib(rss),
            (n as f64 - last.0 as f64) / took.as_secs_f64(),
            if last.0 > 0 { format!(", +{per_1000:.2} MiB per 1,000 pods") } else { String::new() }
        );
        last = (n, rss);
    }

    // 200 watches from now, each delivered 1,000 changes.
    let mut c = b.target.connect().await;
    let (_, list) = send(&mut c, "GET", "/api/v1/namespaces/default/pods?limit=1", Vec::new()).await;
    let rv = serde_json::from_slice::<Value>(&list)
        .ok()
        .and_then(|v| v["metadata"]["resourceVersion"].as_str().map(String::from))
        .unwrap_or_default();
    let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut watches = Vec::new();
    for _ in 0..200 {
        let mut conn = b.target.connect().await;
        let req = hyper::Request::builder()
            .uri(format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"))
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("req");
        let resp = conn.send_request(req).await.expect("watch");
        let delivered = delivered.clone();
        watches.push(tokio::spawn(async move {
            let _conn = conn;
            let mut body = resp.into_body();
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    delivered
                        .fetch_add(d.iter().filter(|b| **b == b'\n').count(), std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let t = Instant::now();
    create_pods(&b.target, made, made + 1000).await;
    while delivered.load(std::sync::atomic::Ordering::Relaxed) < 200 * 1000 && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = pid_rss_kib(b.pid);
    println!(
        "bramble  RSS with 200 watches           {:>8.1} MiB  ({} of {} events delivered in {:.1} s)",
        mib(rss),
        delivered.load(std::sync::atomic::Ordering::Relaxed),
        200 * 1000,
        t.elapsed().as_secs_f64()
    );
    for w in watches {
        w.abort();
    }
    println!("bramble  RSS after the watches close   {:>8.1} MiB", mib(settled_rss(b.pid).await));
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A 96 MiB ext4 on a loop device, removed on drop.
struct SmallDisk {
    image: std::path::PathBuf,
    mount: std::path::PathBuf,
}

impl SmallDisk {
    fn make() -> Option<SmallDisk> {
        // SAFETY: a plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let base = std::env::temp_dir().join(format!("bramble-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&base).ok()?;
        let disk = SmallDisk { image: base.join("disk.img"), mount: base.join("mnt") };
        std::fs::create_dir_all(&disk.mount).ok()?;
        let ok = run(Command::new("truncate").args(["-s", "96M"]).arg(&disk.image))
            && run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk.image))
            && run(Command::new("mount").args(["-o", "loop"]).arg(&disk.image).arg(&disk.mount));
        ok.then_some(disk)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        run(Command::new("umount").arg("-l").arg(&self.mount));
        if let Some(base) = self.image.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

async fn full_disk_recovery() {
    let Some(disk) = SmallDisk::make() else {
        println!("full disk: skipped (needs root, mkfs.ext4 and a loop device)");
        return;
    };
    let b = start(&disk.mount.join("bramble"), &["--store-reserve-mb", "16"]).await;
    // Fill the disk with a file until writes are refused.
    let filler = disk.mount.join("filler");
    let chunk = vec![0x5au8; 1024 * 1024];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut c = b.target.connect().await;
    let mut i = 900_000;
    let refused = loop {
        i += 1;
        let (status, _) =
            send(&mut c, "POST", "/api/v1/namespaces/default/pods", serde_json::to_vec(&pod(i)).expect("json")).await;
        if status == 507 {
            break true;
        }
        if i > 900_100 {
            break false;
        }
    };
    if !refused {
        println!("full disk: writes were never refused; figure skipped");
        return;
    }
    std::fs::remove_file(&filler).expect("free the space");
    let freed = Instant::now();
    loop {
        i += 1;
        let (status, _) =
            send(&mut c, "POST", "/api/v1/namespaces/default/pods", serde_json::to_vec(&pod(i)).expect("json")).await;
        if status == 201 {
            break;
        }
        if freed.elapsed() > Duration::from_secs(60) {
            println!("full disk: no write acknowledged within 60 s of freeing space");
            return;
        }
    }
    println!(
        "full disk: space freed to first acknowledged write {:>8.1} ms (no restart)",
        freed.elapsed().as_secs_f64() * 1e3
    );
    drop(b);
}

fn main() {
    let steps: Vec<usize> = std::env::var("BENCH_OBJECTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        memory_steps(&steps).await;
        full_disk_recovery().await;
    });
}
