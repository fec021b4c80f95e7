//! What users feel of the node: how fast a pod starts, and what the agent costs while
//! pods run. A server (`--disable-agent`) and a separate `bramble agent` process run on
//! this machine; 20 pods are created one after another from an image built here out of the
//! static busybox, and each is timed from the create request to
//! - its container's first output (the CRI log's nanosecond timestamp: the process runs);
//! - `status.phase=Running` as the API reports it.
//!
//! Beside it, in the same run, `runc run` of a bundle holding the same root file system and
//! command, timed from spawn to the same first output (runc from Debian's `runc` package).
//! The agent's idle RSS and CPU are measured with 0 and with 20 pods, and the container
//! monitors' (`bramble shim`) memory is shown on its own line, as PSS (the binary's pages
//! they share counted once) and private memory each.
//!
//! Run as root: `cargo bench --bench pods` (`BENCH_PODS` changes the number of pods).
//! Figures are printed, never asserted: machines are noisy.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{
    Killed, Target, busybox_layer, docker_archive, free_port, percentile, pid_cpu_ticks, pid_rss_kib, send,
    tls_from_kubeconfig,
};
use serde_json::{Value, json};

const IMAGE: &str = "bench.local/busybox:1";
fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{
               "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
               "command": ["sh", "-c", "echo started; exec sleep 3600"]}]}})
}

/// A field of /proc/<pid>/smaps_rollup, in KiB.
fn smaps(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Over every `bramble shim` process: proportional set size (shared pages of the binary
/// split between the processes that map them) and private memory, in KiB, and the count.
fn shims_memory() -> (u64, u64, usize) {
    let (mut pss, mut private, mut count) = (0, 0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).nth(1) == Some(b"shim") {
            pss += smaps(pid, "Pss");
            private += smaps(pid, "Private_Clean") + smaps(pid, "Private_Dirty");
            count += 1;
        }
    }
    (pss, private, count)
}

/// Agent RSS (MiB) and CPU (% of one core) over `window`.
async fn idle(pid: u32, window: Duration) -> (f64, f64) {
    let before = pid_cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let ticks = pid_cpu_ticks(pid) - before;
    (pid_rss_kib(pid) as f64 / 1024.0, ticks as f64 * 10.0 / window.as_millis() as f64 * 100.0)
}

/// The CRI timestamp of a log's first line.
fn first_log_time(path: &std::path::Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(path).ok()?;
    let stamp = text.lines().next()?.split(' ').next()?;
    let t: jiff::Timestamp = stamp.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(t.as_nanosecond() as u64))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!("{name:<44} p50 {:>7.1} ms   p99 {:>7.1} ms", ms(percentile(&v, 0.5)), ms(percentile(&v, 0.99)));
}

/// `runc run` of a bundle with the same root file system and command, `n` times.
fn bench_runc(dir: &std::path::Path, layer: &[u8], n: usize) -> Option<Vec<Duration>> {
    if Command::new("runc").arg("--version").output().is_err() {
        println!("runc: not installed (apt-get install runc), no peer figures");
        return None;
    }
    let bundle = dir.join("runc-bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("bundle");
    tar::Archive::new(layer).unpack(&rootfs).expect("unpack");
    let spec = Command::new("runc").arg("spec").current_dir(&bundle).status().expect("runc spec");
    assert!(spec.success());
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["sh", "-c", "echo started"]);
    std::fs::write(&path, config.to_string()).expect("config");
    let mut times = Vec::new();
    for i in 0..n {
        let id = format!("bramble-bench-{}-{i}", std::process::id());
        let started = Instant::now();
        let mut child = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("runc run");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        times.push(started.elapsed());
        let _ = child.wait();
        let _ = Command::new("runc").args(["delete", "--force", &id]).status();
    }
    Some(times)
}

async fn run(n: usize) {
    let dir = std::env::temp_dir().join(format!("bramble-bench-pods-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let layer = busybox_layer();
    let agent_dir = dir.join("agent");
    std::fs::create_dir_all(agent_dir.join("agent/images")).expect("dir");
    std::fs::write(agent_dir.join("agent/images/busybox.tar"), docker_archive(&layer, IMAGE)).expect("image");
    let (port, kubelet_port) = (free_port(), free_port());
    let kubeconfig = dir.join("kc.yaml");
    let bin = env!("CARGO_BIN_EXE_bramble");
    let server = Killed(
        Command::new(bin)
            .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
            .arg("--data-dir")
            .arg(dir.join("server"))
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .stderr(Stdio::null())
            .spawn()
            .expect("server"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("server/server/node-token").exists() {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = std::fs::read_to_string(dir.join("server/server/node-token")).expect("token");
    let node = "bench-1";
    let agent = Killed(
        Command::new(bin)
            .args(["agent", "--server", &format!("https://127.0.0.1:{port}"), "--token", token.trim()])
            .arg("--data-dir")
            .arg(&agent_dir)
            .args(["--node-name", node, "--kubelet-port", &kubelet_port.to_string()])
            .arg("--pod-log-dir")
            .arg(dir.join("logs"))
            .stderr(std::fs::File::create(dir.join("agent.log")).expect("agent.log"))
            .spawn()
            .expect("agent"),
    );
    let agent_pid = agent.0.id();
    let target = Arc::new(Target { tls: Some(tls_from_kubeconfig(&kubeconfig)), port });
    let mut conn = target.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = send(&mut conn, "GET", &format!("/api/v1/nodes/{node}"), Vec::new()).await;
        let ready = status == 200
            && serde_json::from_slice::<Value>(&body).ok().is_some_and(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not become Ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A warm-up pod, so the first measured start does not pay for one-time set-up.
    let (status, _) =
        send(&mut conn, "POST", "/api/v1/namespaces/default/pods", pod("warmup", node).to_string().into_bytes()).await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = send(&mut conn, "DELETE", "/api/v1/namespaces/default/pods/warmup", Vec::new()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (rss0, cpu0) = idle(agent_pid, Duration::from_secs(10)).await;
    let (mut to_process, mut to_running) = (Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("p{i}");
        let wall = SystemTime::now();
        let started = Instant::now();
        let (status, body) =
            send(&mut conn, "POST", "/api/v1/namespaces/default/pods", pod(&name, node).to_string().into_bytes()).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let uid =
            serde_json::from_slice::<Value>(&body).expect("pod")["metadata"]["uid"].as_str().unwrap_or("").to_string();
        loop {
            let (_, body) =
                send(&mut conn, "GET", &format!("/api/v1/namespaces/default/pods/{name}"), Vec::new()).await;
            let p: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if p["status"]["phase"] == "Running" {
                to_running.push(started.elapsed());
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
                panic!("pod {name} did not start: {}\nagent log:\n{log}", p["status"]);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let log = dir.join("logs").join(format!("default_{name}_{uid}")).join("main/0.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Some(t) = first_log_time(&log) {
                break t;
            }
            assert!(Instant::now() < deadline, "no output from {name}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        to_process.push(first.duration_since(wall).unwrap_or_default());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss20, cpu20) = idle(agent_pid, Duration::from_secs(10)).await;
    let (shim_pss, shim_private, shims) = shims_memory();
    let runc = bench_runc(&dir, &layer, n);

    println!("\npod start, {n} pods one after another (image present, imagePullPolicy: Never)");
    report("bramble: create -> container process output", to_process);
    report("bramble: create -> phase Running (API)", to_running);
    if let Some(r) = runc {
        report("runc run: spawn -> container process output", r);
    }
    println!("\nagent (its own process, pods' monitors not included)");
    println!("{:<44} RSS {rss0:>6.1} MiB   CPU {cpu0:>5.2} %", "idle, 0 pods");
    println!("{:<44} RSS {rss20:>6.1} MiB   CPU {cpu20:>5.2} %", format!("idle, {n} pods"));
    if shims > 0 {
        println!(
            "{:<44} PSS {:>6.1} MiB total, private {:.2} MiB each",
            format!("container monitors (bramble shim) x{shims}"),
            shim_pss as f64 / 1024.0,
            shim_private as f64 / 1024.0 / shims as f64
        );
    }

    for i in 0..n {
        let _ = send(&mut conn, "DELETE", &format!("/api/v1/namespaces/default/pods/p{i}"), Vec::new()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while shims_memory().2 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
    drop(server);
    // Anything the agent did not get to is removed the way an operator would.
    let _ = Command::new(bin)
        .args(["killall", "--data-dir"])
        .arg(&agent_dir)
        .arg("--pod-log-dir")
        .arg(dir.join("logs"))
        .output();
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("the pod benchmark runs containers: run it as root");
        return;
    }
    let n = std::env::var("BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(n));
}
