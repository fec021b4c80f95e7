//! What this node and its pods use, as the kubelet reports it: the Summary API
//! (`/stats/summary`) that the API server's `metrics.k8s.io` reads for `kubectl top`, and
//! the Prometheus text of `/metrics/resource`.
//!
//! A sampler task reads CPU time and memory every [`SAMPLE_EVERY`]: the node from
//! `/proc/stat` and `/proc/meminfo`, each running pod and container from its cgroup (v1 or
//! v2; where they live is [`crate::runtime::cgroup`]). It keeps the previous reading to turn
//! cumulative CPU time into a rate, and publishes each [`Sample`] as an immutable snapshot:
//! a request never reads the kernel. Which pods and containers run here comes from the
//! directories the pod workers write (`pod.json`, `containers/<id>/run.json`, `exit.json`).
//! Started and served by [`super`] (the node's HTTPS endpoint).
//!
//! libcgroups' per-controller readers are private to it; its public
//! `CgroupManager::stats()` reads every controller (blkio, hugetlb, pids, per-CPU times) and
//! fails as a whole when one file is missing: `memory.memsw.*` without swap accounting,
//! `cpu.pressure`/`memory.pressure` on kernels without PSI, `nr_periods` where the cpu
//! controller is not enabled. So the four files a rate and a working set need are read
//! here directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::agent::pods::Ctx;
use crate::agent::pods::run::RunInfo;
use crate::runtime::cgroup;

/// How often the node is sampled (the kubelet's cAdvisor housekeeping is 10-15 s).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// `/proc/stat` counts in USER_HZ, which the kernel fixes at 100 on every architecture
/// bramble runs on (arm, arm64, x86_64): `sysconf(_SC_CLK_TCK)` returns this constant.
const NANOS_PER_TICK: u64 = 1_000_000_000 / 100;

/// A v1 memory limit at or above this is "no limit" (the kernel's unlimited is
/// 0x7FFFFFFFFFFFF000 rounded to the page size).
const V1_UNLIMITED: u64 = 1 << 62;

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
}

/// Cumulative CPU time and current memory of the node or of one cgroup, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// CPU time used since the cgroup (or the boot) began, in core-nanoseconds.
    pub cpu_core_ns: u64,
    pub usage_bytes: u64,
    /// Usage less inactive file pages: what the kubelet evicts on and `kubectl top` shows.
    pub working_set_bytes: u64,
    /// Anonymous memory (and swap cache): what cannot be dropped.
    pub rss_bytes: u64,
    /// The memory limit, or the node's capacity; `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

impl Reading {
    fn plus(self, o: Reading) -> Reading {
        Reading {
            cpu_core_ns: self.cpu_core_ns.saturating_add(o.cpu_core_ns),
            usage_bytes: self.usage_bytes.saturating_add(o.usage_bytes),
            working_set_bytes: self.working_set_bytes.saturating_add(o.working_set_bytes),
            rss_bytes: self.rss_bytes.saturating_add(o.rss_bytes),
            limit_bytes: None,
        }
    }
}

/// The value of `key` in a flat-keyed file (`key value` per line: `memory.stat`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The cumulative busy time of all CPUs in `/proc/stat`, in core-nanoseconds: user, nice,
/// system, irq, softirq and steal (guest time is already inside user).
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| ticks.get(*i)).sum();
    Some(busy.saturating_mul(NANOS_PER_TICK))
}

/// The node's memory from `/proc/meminfo`, as the kubelet reads the root cgroup: usage is
/// everything not free, the working set that less inactive file pages, the limit the
/// capacity.
pub fn parse_meminfo(text: &str) -> Option<Reading> {
    let kib = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).flatten()
        })
    };
    let total = kib("MemTotal")? * 1024;
    let usage = total.saturating_sub(kib("MemFree")? * 1024);
    let inactive_file = kib("Inactive(file)").unwrap_or(0) * 1024;
    Some(Reading {
        cpu_core_ns: 0,
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(inactive_file),
        rss_bytes: kib("AnonPages").unwrap_or(0) * 1024,
        limit_bytes: Some(total),
    })
}

/// One cgroup's files on a v1 hierarchy: `cpuacct.usage`, `memory.usage_in_bytes`,
/// `memory.stat` (hierarchical `total_*` keys) and `memory.limit_in_bytes`.
pub fn parse_v1(cpuacct_usage: &str, usage_in_bytes: &str, stat: &str, limit: &str) -> Result<Reading, String> {
    let number = |what: &str, text: &str| text.trim().parse::<u64>().map_err(|e| format!("{what}: {e}"));
    let usage = number("memory.usage_in_bytes", usage_in_bytes)?;
    let inactive_file = keyed(stat, "total_inactive_file").unwrap_or(0);
    let limit = number("memory.limit_in_bytes", limit).ok().filter(|l| *l < V1_UNLIMITED);
    Ok(Reading {
        cpu_core_ns: number("cpuacct.usage", cpuacct_usage)?,
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(inactive_file),
        rss_bytes: keyed(stat, "total_rss").unwrap_or(0),
        limit_bytes: limit,
    })
}

/// One cgroup's files on the v2 hierarchy: `cpu.stat` (`usage_usec`), `memory.current`,
/// `memory.stat` and `memory.max`.
pub fn parse_v2(cpu_stat: &str, memory_current: &str, stat: &str, max: &str) -> Result<Reading, String> {
    let usage_usec = keyed(cpu_stat, "usage_usec").ok_or("cpu.stat has no usage_usec")?;
    let usage = memory_current.trim().parse::<u64>().map_err(|e| format!("memory.current: {e}"))?;
    let inactive_file = keyed(stat, "inactive_file").unwrap_or(0);
    Ok(Reading {
        cpu_core_ns: usage_usec.saturating_mul(1000),
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(inactive_file),
        rss_bytes: keyed(stat, "anon").unwrap_or(0),
        limit_bytes: max.trim().parse().ok(),
    })
}

/// Where the kernel's files are: `/proc` and `/sys/fs/cgroup` on a node, a fixture tree in
/// tests.
#[derive(Debug, Clone)]
pub struct Sources {
    pub proc_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub v2: bool,
}

fn read(path: &Path) -> Result<String, StatsError> {
    std::fs::read_to_string(path).map_err(|source| StatsError::Read { path: path.to_path_buf(), source })
}

impl Sources {
    /// This machine's.
    pub fn host() -> Sources {
        Sources { proc_root: "/proc".into(), cgroup_root: "/sys/fs/cgroup".into(), v2: cgroup::is_v2() }
    }

    /// The node as a whole.
    pub fn node(&self) -> Result<Reading, StatsError> {
        let stat_path = self.proc_root.join("stat");
        let cpu = parse_proc_stat(&read(&stat_path)?)
            .ok_or_else(|| StatsError::Parse { path: stat_path, what: "no cpu line".into() })?;
        let meminfo_path = self.proc_root.join("meminfo");
        let memory = parse_meminfo(&read(&meminfo_path)?)
            .ok_or_else(|| StatsError::Parse { path: meminfo_path, what: "no MemTotal or MemFree".into() })?;
        Ok(Reading { cpu_core_ns: cpu, ..memory })
    }

    /// The cgroup at `rel` (a `cgroupsPath`, relative to the hierarchy's root).
    /// The limit file is optional: without it the reading only has no limit.
    pub fn cgroup(&self, rel: &str) -> Result<Reading, StatsError> {
        let rel = rel.trim_start_matches('/');
        let (dir, parsed) = if self.v2 {
            let dir = self.cgroup_root.join(rel);
            let parsed = parse_v2(
                &read(&dir.join("cpu.stat"))?,
                &read(&dir.join("memory.current"))?,
                &read(&dir.join("memory.stat"))?,
                &read(&dir.join("memory.max")).unwrap_or_default(),
            );
            (dir, parsed)
        } else {
            let cpu = self.cgroup_root.join("cpuacct").join(rel);
            let mem = self.cgroup_root.join("memory").join(rel);
            let parsed = parse_v1(
                &read(&cpu.join("cpuacct.usage"))?,
                &read(&mem.join("memory.usage_in_bytes"))?,
                &read(&mem.join("memory.stat"))?,
                &read(&mem.join("memory.limit_in_bytes")).unwrap_or_default(),
            );
            (mem, parsed)
        };
        parsed.map_err(|what| StatsError::Parse { path: dir, what })
    }
}

/// Nanocores used between two readings of cumulative CPU time `elapsed` apart; `None` when
/// no time passed or the counter went back (a new cgroup under the same name).
pub fn nano_cores(before_core_ns: u64, after_core_ns: u64, elapsed: Duration) -> Option<u64> {
    let used = after_core_ns.checked_sub(before_core_ns)?;
    let elapsed_ns = elapsed.as_nanos();
    if elapsed_ns == 0 {
        return None;
    }
    u64::try_from(u128::from(used) * 1_000_000_000 / elapsed_ns).ok()
}

/// The Summary API's `cpu`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    /// Absent until there are two readings to make a rate from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: u64,
}

/// The Summary API's `memory`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    /// Limit (or capacity) less the working set; absent without a limit, as upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
}

/// The Summary API's `node`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

/// Which pod a `PodStats` is about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// The Summary API's per-container entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

/// The Summary API's per-pod entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodRef,
    pub containers: Vec<ContainerStats>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

/// The kubelet's `/stats/summary` answer (CPU and memory only: what metrics need).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

/// One published sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub summary: Summary,
    /// When it was taken, in milliseconds since the epoch (Prometheus timestamps).
    pub at_ms: i64,
}

/// A running container as its run directory records it.
struct RunningContainer {
    id: String,
    name: String,
    started_at: String,
}

/// A pod with running containers on this node.
struct RunningPod {
    pod_ref: PodRef,
    containers: Vec<RunningContainer>,
}

/// Takes samples and keeps what the next one needs for rates.
pub struct Sampler {
    sources: Sources,
    node: String,
    pods_dir: PathBuf,
    /// When the previous sample was taken and the CPU time of each thing it read, keyed
    /// `node`, `pod/<uid>`, `container/<id>`.
    previous: Option<(Instant, HashMap<String, u64>)>,
    /// Names of pods seen, by UID (a pod's name never changes, so `pod.json` is read once).
    refs: HashMap<String, PodRef>,
}

/// RFC 3339 in whole seconds, as `metav1.Time` is written.
fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn memory_stats(time: &str, r: &Reading) -> MemoryStats {
    MemoryStats {
        time: time.to_string(),
        available_bytes: r.limit_bytes.map(|l| l.saturating_sub(r.working_set_bytes)),
        usage_bytes: r.usage_bytes,
        working_set_bytes: r.working_set_bytes,
        rss_bytes: r.rss_bytes,
    }
}

impl Sampler {
    pub fn new(sources: Sources, node: &str, pods_dir: &Path) -> Sampler {
        Sampler {
            sources,
            node: node.to_string(),
            pods_dir: pods_dir.to_path_buf(),
            previous: None,
            refs: HashMap::new(),
        }
    }

    /// The name of pod `uid`, from its `pod.json` the first time.
    fn pod_ref(&mut self, uid: &str, dir: &Path) -> Option<PodRef> {
        if let Some(r) = self.refs.get(uid) {
            return Some(r.clone());
        }
        let pod: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("pod.json")).ok()?).ok()?;
        let r = PodRef {
            name: pod["metadata"]["name"].as_str()?.to_string(),
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            uid: uid.to_string(),
        };
        self.refs.insert(uid.to_string(), r.clone());
        Some(r)
    }

    /// The pods with at least one running (not init) container, from their directories.
    fn running_pods(&mut self) -> Vec<RunningPod> {
        let Ok(entries) = std::fs::read_dir(&self.pods_dir) else { return Vec::new() };
        let mut pods = Vec::new();
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            let runs = std::fs::read_dir(entry.path().join("containers")).into_iter().flatten().flatten();
            let mut containers: Vec<RunningContainer> = runs
                .filter(|c| !c.path().join("exit.json").exists())
                .filter_map(|c| serde_json::from_slice::<RunInfo>(&std::fs::read(c.path().join("run.json")).ok()?).ok())
                .filter(|info| !info.init)
                .map(|info| RunningContainer { id: info.id, name: info.name, started_at: info.started_at })
                .collect();
            if containers.is_empty() {
                continue;
            }
            containers.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(pod_ref) = self.pod_ref(&uid, &entry.path()) {
                pods.push(RunningPod { pod_ref, containers });
            }
        }
        let live: std::collections::HashSet<String> = pods.iter().map(|p| p.pod_ref.uid.clone()).collect();
        self.refs.retain(|uid, _| live.contains(uid));
        pods.sort_by(|a, b| (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name)));
        pods
    }

    /// Reads the node and every running pod and container now. A container whose cgroup
    /// cannot be read (it exited a moment ago) is left out of this sample.
    pub fn sample(&mut self) -> Result<Sample, StatsError> {
        let (at, wall) = (Instant::now(), jiff::Timestamp::now());
        let time = rfc3339(wall);
        let node = self.sources.node()?;
        let mut cpu_now: HashMap<String, u64> = HashMap::new();
        let previous = self.previous.take();
        let mut cpu = |key: String, core_ns: u64| {
            let rate = previous.as_ref().and_then(|(then, before)| {
                before.get(&key).and_then(|b| nano_cores(*b, core_ns, at.duration_since(*then)))
            });
            cpu_now.insert(key, core_ns);
            CpuStats { time: time.clone(), usage_nano_cores: rate, usage_core_nano_seconds: core_ns }
        };
        let node_stats = NodeStats {
            node_name: self.node.clone(),
            cpu: cpu("node".into(), node.cpu_core_ns),
            memory: memory_stats(&time, &node),
        };
        let mut pods = Vec::new();
        for pod in self.running_pods() {
            let uid = &pod.pod_ref.uid;
            let mut containers = Vec::new();
            let mut sum: Option<Reading> = None;
            for c in &pod.containers {
                let reading = match self.sources.cgroup(&cgroup::container_path(&self.node, uid, &c.id)) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(pod = %uid, container = %c.name, error = %e, "reading a container's cgroup");
                        continue;
                    }
                };
                sum = Some(sum.map_or(reading, |s| s.plus(reading)));
                containers.push(ContainerStats {
                    name: c.name.clone(),
                    start_time: c.started_at.parse::<jiff::Timestamp>().map_or(c.started_at.clone(), rfc3339),
                    cpu: cpu(format!("container/{}", c.id), reading.cpu_core_ns),
                    memory: memory_stats(&time, &reading),
                });
            }
            let Some(sum) = sum else { continue };
            // The pod's own cgroup also counts what exited containers used; the sum of the
            // running ones stands in when it cannot be read.
            let pod_reading = self.sources.cgroup(&format!("{}/pod{uid}", cgroup::pods_parent(&self.node)));
            let reading = pod_reading.unwrap_or(sum);
            pods.push(PodStats {
                pod_ref: pod.pod_ref.clone(),
                containers,
                cpu: cpu(format!("pod/{uid}"), reading.cpu_core_ns),
                memory: memory_stats(&time, &reading),
            });
        }
        self.previous = Some((at, cpu_now));
        Ok(Sample { summary: Summary { node: node_stats, pods }, at_ms: wall.as_millisecond() })
    }
}

/// The latest sample, for the endpoint's handlers.
#[derive(Clone)]
pub struct Latest(watch::Receiver<Option<Arc<Sample>>>);

impl Latest {
    /// The last sample taken, if any yet.
    pub fn get(&self) -> Option<Arc<Sample>> {
        self.0.borrow().clone()
    }
}

/// Starts sampling this node every [`SAMPLE_EVERY`] until `stop`.
pub fn start(ctx: &Ctx, mut stop: watch::Receiver<bool>) -> Latest {
    let (tx, rx) = watch::channel(None);
    let mut sampler = Sampler::new(Sources::host(), &ctx.node, &ctx.layout.pods_dir);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            // File reads that can stall (a busy SD card): off the runtime's threads.
            let taken = tokio::task::spawn_blocking(move || {
                let sample = sampler.sample();
                (sampler, sample)
            })
            .await;
            let sample;
            (sampler, sample) = match taken {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(error = %e, "the node's stats sampler failed: no more samples");
                    return;
                }
            };
            match sample {
                Ok(s) => {
                    if tx.send(Some(Arc::new(s))).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sampling the node's CPU and memory"),
            }
        }
    });
    Latest(rx)
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The kubelet's `/metrics/resource` (Prometheus text format 0.0.4) for `sample`.
pub fn prometheus(sample: &Sample) -> String {
    use std::fmt::Write;
    let (s, ts) = (&sample.summary, sample.at_ms);
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value} {ts}");
        }
    };
    let container_labels = |p: &PodStats, c: &ContainerStats| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            label(&c.name),
            label(&p.pod_ref.namespace),
            label(&p.pod_ref.name)
        )
    };
    let pod_labels =
        |p: &PodStats| format!("{{namespace=\"{}\",pod=\"{}\"}}", label(&p.pod_ref.namespace), label(&p.pod_ref.name));
    let containers = || s.pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c)));
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        containers().map(|(p, c)| (container_labels(p, c), secs(c.cpu.usage_core_nano_seconds).to_string())).collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        containers().map(|(p, c)| (container_labels(p, c), c.memory.working_set_bytes.to_string())).collect(),
    );
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        vec![(String::new(), secs(s.node.cpu.usage_core_nano_seconds).to_string())],
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        vec![(String::new(), s.node.memory.working_set_bytes.to_string())],
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        s.pods.iter().map(|p| (pod_labels(p), secs(p.cpu.usage_core_nano_seconds).to_string())).collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        s.pods.iter().map(|p| (pod_labels(p), p.memory.working_set_bytes.to_string())).collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "cpu  5615772 7227 660388 6901552 47017 0 112001 3162 0 0\n\
                             cpu0 2817523 3542 331914 3437338 26943 0 54555 1573 0 0\nintr 1 2 3\n";
    const MEMINFO: &str = "MemTotal:        1024000 kB\nMemFree:          200000 kB\nMemAvailable:     600000 kB\n\
                           Inactive(file):   300000 kB\nAnonPages:        150000 kB\n";
    const V1_STAT: &str = "cache 13250560\nrss 3678208\ninactive_file 184320\ntotal_cache 22184542208\n\
                           total_rss 4194304\ntotal_inactive_file 2097152\ntotal_active_file 3076096\n";
    const V2_STAT: &str = "anon 3145728\nfile 8388608\nkernel 1048576\ninactive_anon 0\nactive_anon 3145728\n\
                           inactive_file 4194304\nactive_file 4194304\n";
    const V2_CPU: &str = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n";

    #[test]
    fn proc_stat_counts_busy_ticks_as_core_nanoseconds() {
        // user + nice + system + irq (0) + softirq + steal; idle and iowait are not busy.
        let busy = 5615772 + 7227 + 660388 + 112001 + 3162;
        assert_eq!(parse_proc_stat(PROC_STAT), Some(busy * 10_000_000));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 x 3\n"), None);
    }

    #[test]
    fn meminfo_gives_the_kubelets_working_set() {
        let r = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(r.usage_bytes, 824_000 * 1024);
        assert_eq!(r.working_set_bytes, 524_000 * 1024);
        assert_eq!(r.rss_bytes, 150_000 * 1024);
        assert_eq!(r.limit_bytes, Some(1_024_000 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn v1_files_parse_with_hierarchical_totals() {
        let r = parse_v1("123456789\n", "8388608\n", V1_STAT, "9223372036854771712\n").unwrap();
        assert_eq!(
            r,
            Reading {
                cpu_core_ns: 123_456_789,
                usage_bytes: 8_388_608,
                working_set_bytes: 8_388_608 - 2_097_152,
                rss_bytes: 4_194_304,
                limit_bytes: None,
            }
        );
        let limited = parse_v1("0", "1048576", "total_inactive_file 4194304\n", "67108864").unwrap();
        assert_eq!((limited.working_set_bytes, limited.limit_bytes), (0, Some(67_108_864)), "never below zero");
        assert!(parse_v1("", "1", "", "").unwrap_err().contains("cpuacct.usage"));
    }

    #[test]
    fn v2_files_parse() {
        let r = parse_v2(V2_CPU, "12582912\n", V2_STAT, "max\n").unwrap();
        assert_eq!(
            r,
            Reading {
                cpu_core_ns: 2_500_000_000,
                usage_bytes: 12_582_912,
                working_set_bytes: 12_582_912 - 4_194_304,
                rss_bytes: 3_145_728,
                limit_bytes: None,
            }
        );
        assert_eq!(parse_v2(V2_CPU, "1", "", "268435456\n").unwrap().limit_bytes, Some(268_435_456));
        assert!(parse_v2("user_usec 1\n", "1", "", "max").unwrap_err().contains("usage_usec"));
    }

    #[test]
    fn rates_are_nanocores_over_the_elapsed_time() {
        // Half a core for 10 s: 5 s of CPU.
        assert_eq!(nano_cores(1_000_000_000, 6_000_000_000, Duration::from_secs(10)), Some(500_000_000));
        assert_eq!(nano_cores(0, 2_000_000_000, Duration::from_secs(1)), Some(2_000_000_000));
        assert_eq!(nano_cores(5, 4, Duration::from_secs(10)), None, "a counter that went back");
        assert_eq!(nano_cores(0, 1, Duration::ZERO), None);
        assert_eq!(nano_cores(0, u64::MAX, Duration::from_nanos(1)), None, "too large to be real");
    }

    /// A fixture host: `/proc` files and a cgroup tree of one pod with one running container
    /// and one exited, on v1 or v2.
    struct Fixture {
        root: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // Best effort: a leftover fixture in the temp dir harms nothing.
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn run_json(id: &str, name: &str, init: bool) -> String {
        serde_json::json!({"id": id, "name": name, "init": init, "attempt": 0, "image": "busybox", "imageId": "sha256:1",
            "logPath": "/dev/null", "startedAt": "2025-01-02T03:04:05.123456789Z", "shimPid": 1, "initPid": 1})
        .to_string()
    }

    impl Fixture {
        fn new(v2: bool) -> (Fixture, Sampler) {
            let root = std::env::temp_dir().join(format!("bramble-stats-{}", uuid::Uuid::new_v4().simple()));
            let proc_root = root.join("proc");
            write(&proc_root.join("stat"), "cpu  100 0 100 1000 0 0 0 0 0 0\n");
            write(&proc_root.join("meminfo"), MEMINFO);
            let pod = root.join("pods").join("uid-1");
            write(&pod.join("pod.json"), r#"{"metadata": {"name": "web", "namespace": "shop", "uid": "uid-1"}}"#);
            write(&pod.join("containers/c1/run.json"), &run_json("c1", "app", false));
            write(&pod.join("containers/c0/run.json"), &run_json("c0", "setup", true));
            write(&pod.join("containers/c2/run.json"), &run_json("c2", "old", false));
            write(&pod.join("containers/c2/exit.json"), "{}");
            let fixture = Fixture { root: root.clone() };
            let sources = Sources { proc_root, cgroup_root: root.join("cgroup"), v2 };
            let sampler = Sampler::new(sources, "n1", &root.join("pods"));
            fixture.set_cpu(v2, 1_000_000_000);
            (fixture, sampler)
        }

        /// Sets the container's (and the pod's, a little more) cumulative CPU time.
        fn set_cpu(&self, v2: bool, core_ns: u64) {
            let cg = self.root.join("cgroup");
            for (rel, extra) in [("bramble/n1/poduid-1/c1", 0), ("bramble/n1/poduid-1", 1_000_000)] {
                let ns = core_ns + extra;
                if v2 {
                    write(&cg.join(rel).join("cpu.stat"), &format!("usage_usec {}\n", ns / 1000));
                    write(&cg.join(rel).join("memory.current"), "12582912\n");
                    write(&cg.join(rel).join("memory.stat"), V2_STAT);
                    write(&cg.join(rel).join("memory.max"), "max\n");
                } else {
                    write(&cg.join("cpuacct").join(rel).join("cpuacct.usage"), &format!("{ns}\n"));
                    write(&cg.join("memory").join(rel).join("memory.usage_in_bytes"), "8388608\n");
                    write(&cg.join("memory").join(rel).join("memory.stat"), V1_STAT);
                    write(&cg.join("memory").join(rel).join("memory.limit_in_bytes"), "67108864\n");
                }
            }
        }
    }

    #[test]
    fn samples_read_running_containers_and_rates_need_two() {
        for v2 in [false, true] {
            let (fixture, mut sampler) = Fixture::new(v2);
            let first = sampler.sample().unwrap();
            let pods = &first.summary.pods;
            assert_eq!(pods.len(), 1, "v2={v2}");
            assert_eq!(pods[0].pod_ref, PodRef { name: "web".into(), namespace: "shop".into(), uid: "uid-1".into() });
            let names: Vec<&str> = pods[0].containers.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["app"], "init and exited containers are left out (v2={v2})");
            assert_eq!(pods[0].containers[0].start_time, "2025-01-02T03:04:05Z");
            assert_eq!(pods[0].containers[0].cpu.usage_nano_cores, None, "one reading, no rate yet");
            assert_eq!(pods[0].cpu.usage_core_nano_seconds, 1_001_000_000, "the pod's own cgroup");
            assert_eq!(first.summary.node.cpu.usage_core_nano_seconds, 200 * 10_000_000);
            assert_eq!(first.summary.node.memory.available_bytes, Some(500_000 * 1024));

            // A second reading 1.5 s of CPU later: a rate, over however long the test took.
            sampler.previous.as_mut().unwrap().0 -= Duration::from_secs(10);
            fixture.set_cpu(v2, 2_500_000_000);
            let second = sampler.sample().unwrap();
            let rate = second.summary.pods[0].containers[0].cpu.usage_nano_cores.unwrap();
            assert!((140_000_000..=150_000_000).contains(&rate), "about 0.15 cores, got {rate}n (v2={v2})");
            assert!(second.summary.pods[0].cpu.usage_nano_cores.is_some());
            assert_eq!(second.summary.node.cpu.usage_nano_cores, Some(0), "the fixture node was idle");
        }
    }

    fn cpu(nano: Option<u64>, total: u64) -> CpuStats {
        CpuStats { time: "2025-01-02T03:04:05Z".into(), usage_nano_cores: nano, usage_core_nano_seconds: total }
    }

    fn memory(ws: u64) -> MemoryStats {
        MemoryStats {
            time: "2025-01-02T03:04:05Z".into(),
            available_bytes: None,
            usage_bytes: ws + 4096,
            working_set_bytes: ws,
            rss_bytes: ws / 2,
        }
    }

    fn summary() -> Summary {
        Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: cpu(Some(250_000_000), 12_500_000_000),
                memory: MemoryStats { available_bytes: Some(1 << 29), ..memory(1 << 28) },
            },
            pods: vec![PodStats {
                pod_ref: PodRef { name: "web".into(), namespace: "shop".into(), uid: "u1".into() },
                containers: vec![ContainerStats {
                    name: "app\"x".into(),
                    start_time: "2025-01-02T03:00:00Z".into(),
                    cpu: cpu(None, 1_500_000_000),
                    memory: memory(8192),
                }],
                cpu: cpu(Some(1000), 1_500_000_000),
                memory: memory(8192),
            }],
        }
    }

    #[test]
    fn the_summary_has_the_kubelets_json_shape() {
        let v = serde_json::to_value(summary()).unwrap();
        assert_eq!(
            v["node"],
            serde_json::json!({"nodeName": "n1",
                "cpu": {"time": "2025-01-02T03:04:05Z", "usageNanoCores": 250_000_000u64, "usageCoreNanoSeconds": 12_500_000_000u64},
                "memory": {"time": "2025-01-02T03:04:05Z", "availableBytes": 536_870_912u64, "usageBytes": 268_439_552u64,
                           "workingSetBytes": 268_435_456u64, "rssBytes": 134_217_728u64}})
        );
        let pod = &v["pods"][0];
        assert_eq!(pod["podRef"], serde_json::json!({"name": "web", "namespace": "shop", "uid": "u1"}));
        assert_eq!(pod["cpu"]["usageNanoCores"], 1000);
        let c = &pod["containers"][0];
        assert_eq!((c["name"].as_str(), c["startTime"].as_str()), (Some("app\"x"), Some("2025-01-02T03:00:00Z")));
        assert!(c["cpu"].get("usageNanoCores").is_none(), "no rate yet: left out, as the kubelet does");
        assert!(c["memory"].get("availableBytes").is_none(), "no limit: no availableBytes");
    }

    #[test]
    fn prometheus_text_has_each_family_with_timestamps() {
        let text = prometheus(&Sample { summary: summary(), at_ms: 1_735_787_045_000 });
        for want in [
            "# TYPE container_cpu_usage_seconds_total counter",
            "container_cpu_usage_seconds_total{container=\"app\\\"x\",namespace=\"shop\",pod=\"web\"} 1.5 1735787045000",
            "container_memory_working_set_bytes{container=\"app\\\"x\",namespace=\"shop\",pod=\"web\"} 8192 1735787045000",
            "# TYPE node_memory_working_set_bytes gauge",
            "node_cpu_usage_seconds_total 12.5 1735787045000",
            "node_memory_working_set_bytes 268435456 1735787045000",
            "pod_cpu_usage_seconds_total{namespace=\"shop\",pod=\"web\"} 1.5 1735787045000",
            "pod_memory_working_set_bytes{namespace=\"shop\",pod=\"web\"} 8192 1735787045000",
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want:?} in\n{text}");
        }
    }
}
