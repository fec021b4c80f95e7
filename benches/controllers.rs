//! What the control loops deliver:
//! - scheduler throughput: 100 Node objects (no agent behind them), 3,000 pods created by
//!   16 clients as fast as the API takes them; the time from the first create until the
//!   last pod is bound, and pods bound per second over it;
//! - a 30-replica Deployment on one real node (an agent running real containers from an
//!   image built here): the time until all 30 are available, then the time to roll out a
//!   new template (the default 25% surge and unavailability) until `kubectl rollout status`
//!   would say it is done.
//!
//! Run as root: `cargo bench --bench controllers` (`BENCH_NODES`, `BENCH_PODS` and
//! `BENCH_REPLICAS` change the sizes). Figures are printed, never asserted.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Killed, Target, busybox_layer, docker_archive, free_port, send, tls_from_kubeconfig};
use serde_json::{Value, json};

const IMAGE: &str = "bench.local/busybox:1";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Cluster {
    dir: std::path::PathBuf,
    target: Arc<Target>,
    _server: Killed,
}

async fn start_server(tag: &str, agent: bool) -> Cluster {
    let dir = std::env::temp_dir().join(format!("bramble-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data/agent/images")).expect("dir");
    if agent {
        std::fs::write(dir.join("data/agent/images/busybox.tar"), docker_archive(&busybox_layer(), IMAGE))
            .expect("image");
    }
    let port = free_port();
    let kubeconfig = dir.join("kc.yaml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bramble"));
    cmd.args(["server", "--bind-address", "127.0.0.1", "--node-name", &format!("{tag}-1")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        // Nodes that are only API objects never renew a Lease: keep them schedulable.
        .args(["--node-monitor-grace-period", "1h"])
        .stderr(Stdio::null());
    if agent {
        cmd.args(["--kubelet-port", &free_port().to_string()]).arg("--pod-log-dir").arg(dir.join("logs"));
    } else {
        cmd.arg("--disable-agent");
    }
    let server = Killed(cmd.spawn().expect("server"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = Arc::new(Target { tls: Some(tls_from_kubeconfig(&kubeconfig)), port });
    Cluster { dir, target, _server: server }
}

impl Cluster {
    fn stop(self) {
        let dir = self.dir.clone();
        drop(self);
        let _ = Command::new(env!("CARGO_BIN_EXE_bramble"))
            .args(["killall", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--pod-log-dir")
            .arg(dir.join("logs"))
            .output();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

async fn get(target: &Target, path: &str) -> Value {
    let mut conn = target.connect().await;
    let (_, body) = send(&mut conn, "GET", path, Vec::new()).await;
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

async fn scheduler_throughput(nodes: usize, pods: usize) {
    let c = start_server("sched", false).await;
    let mut conn = c.target.connect().await;
    for i in 0..nodes {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}"),
            "labels": {"kubernetes.io/hostname": format!("n{i}")}}});
        let (status, body) = send(&mut conn, "POST", "/api/v1/nodes", node.to_string().into_bytes()).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let mut n: Value = serde_json::from_slice(&body).expect("node");
        n["status"] = json!({"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]});
        let (status, body) =
            send(&mut conn, "PUT", &format!("/api/v1/nodes/n{i}/status"), n.to_string().into_bytes()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let started = Instant::now();
    let clients = 16;
    let mut tasks = Vec::new();
    for w in 0..clients {
        let target = c.target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = target.connect().await;
            for i in (w..pods).step_by(clients) {
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
                    "spec": {"containers": [{"name": "c", "image": "x",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                let (status, body) =
                    send(&mut conn, "POST", "/api/v1/namespaces/default/pods", pod.to_string().into_bytes()).await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for t in tasks {
        t.await.expect("creator");
    }
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let bound = loop {
        let list = get(&c.target, "/api/v1/pods?fieldSelector=spec.nodeName%3D&limit=1").await;
        let left = list["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "pods left unbound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let list = get(&c.target, "/api/v1/pods").await;
    let mut per_node = std::collections::HashMap::new();
    for p in list["items"].as_array().into_iter().flatten() {
        *per_node.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string()).or_insert(0usize) += 1;
    }
    let (min, max) = (per_node.values().min().copied().unwrap_or(0), per_node.values().max().copied().unwrap_or(0));
    println!("\nscheduler: {pods} pods onto {nodes} nodes (API objects), created by {clients} clients");
    println!("{:<44} {:>8.2} s", "all created", created.as_secs_f64());
    println!("{:<44} {:>8.2} s", "first create -> last pod bound", bound.as_secs_f64());
    println!("{:<44} {:>8.0} pods/s (target: over 500)", "bound per second", pods as f64 / bound.as_secs_f64());
    let total: usize = per_node.values().sum();
    println!(
        "{:<44} {min} .. {max} ({total} pods listed, {} unbound)",
        "pods per node",
        per_node.get("").copied().unwrap_or(0)
    );
    c.stop();
}

fn deployment(replicas: usize, version: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                    "env": [{"name": "VERSION", "value": version}],
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}]}}}})
}

/// Waits until the Deployment's status says every replica runs the current template.
async fn rolled_out(target: &Target, replicas: usize, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let d = get(target, "/apis/apps/v1/namespaces/default/deployments/web").await;
        let st = &d["status"];
        let n = replicas as i64;
        let done = st["observedGeneration"] == d["metadata"]["generation"]
            && st["updatedReplicas"].as_i64() == Some(n)
            && st["replicas"].as_i64() == Some(n)
            && st["availableReplicas"].as_i64() == Some(n);
        if done {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "the rollout did not finish: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rollout(replicas: usize) {
    let c = start_server("roll", true).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = get(&c.target, "/api/v1/nodes/roll-1").await;
        if n["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|x| x["type"] == "Ready" && x["status"] == "True"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not become Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = c.target.connect().await;
    let started = Instant::now();
    let (status, body) = send(
        &mut conn,
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        deployment(replicas, "1").to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let first = rolled_out(&c.target, replicas, started).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let (status, _) = send(&mut conn, "PUT", "/apis/apps/v1/namespaces/default/deployments/web", {
        let mut d = get(&c.target, "/apis/apps/v1/namespaces/default/deployments/web").await;
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("2");
        d.to_string().into_bytes()
    })
    .await;
    assert_eq!(status, 200);
    let second = rolled_out(&c.target, replicas, started).await;
    println!("\ndeployment of {replicas} replicas on one real node (maxSurge 25%, maxUnavailable 25%)");
    println!("{:<44} {:>8.2} s", "create -> all available", first.as_secs_f64());
    println!("{:<44} {:>8.2} s", "new template -> rolled out", second.as_secs_f64());
    let _ = send(&mut conn, "DELETE", "/apis/apps/v1/namespaces/default/deployments/web", Vec::new()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.stop();
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("the controllers benchmark runs containers: run it as root");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        scheduler_throughput(env_usize("BENCH_NODES", 100), env_usize("BENCH_PODS", 3000)).await;
        rollout(env_usize("BENCH_REPLICAS", 30)).await;
    });
}
