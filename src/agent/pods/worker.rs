//! One pod on this node, driven towards its spec: sandbox (namespaces, files, volumes),
//! init containers in order, then every container, restarted per `restartPolicy` with the
//! kubelet's back-off (10 s doubling to 5 min); its status written back whenever it changes;
//! and, when the pod is deleted, a graceful stop (SIGTERM, the grace period, SIGKILL) and
//! removal of everything it had on the node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::run::{Run, RunInfo, spawn_shim};
use super::{Ctx, env, images, volumes};
use crate::runtime::{cgroup, podns, spec};

/// What reaches a pod's worker.
#[derive(Debug)]
pub enum Msg {
    /// The pod as the API has it now.
    Pod(Value),
    /// The pod is gone from the API: stop and remove everything at once.
    Gone,
    /// One of its containers exited.
    Exited,
    /// A probe's verdict changed.
    Probe(super::probes::Verdict),
    /// A probe attempt failed (for the `Unhealthy` event).
    ProbeFailed { kind: super::probes::Kind, container: String, message: String },
}

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off, as the kubelet does.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The longest a host-side step (a mount, netlink) may take before the start fails.
const HOST_STEP: Duration = Duration::from_secs(30);
/// How often file volumes are refreshed so ConfigMap and Secret updates reach pods.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// What the worker knows about one container of the pod.
#[derive(Default)]
struct Container {
    /// Its runs, oldest first (only the last two are kept).
    runs: Vec<Run>,
    /// Why it is not running, when it is not (`reason`, `message`).
    waiting: Option<(String, String)>,
    /// When the next attempt may start.
    not_before: Option<Instant>,
    /// Consecutive failed pulls or config errors, for their back-off.
    failures: u32,
    /// The readiness probe's verdict for the current run (true without a probe).
    ready: bool,
    /// Whether the startup probe passed for the current run (true without a probe).
    started: bool,
    /// The current run's probe tasks, stopped when it ends.
    probes: Vec<tokio::task::AbortHandle>,
}

impl Container {
    fn latest(&self) -> Option<&Run> {
        self.runs.last()
    }
    fn restart_count(&self) -> u32 {
        self.latest().map_or(0, |r| r.info.attempt)
    }
}

fn backoff(n: u32) -> Duration {
    BACKOFF_START.saturating_mul(1u32 << n.min(5)).min(BACKOFF_MAX)
}

/// The worker of one pod.
pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Value,
    uid: String,
    containers: HashMap<String, Container>,
    tx: mpsc::UnboundedSender<Msg>,
    written: Value,
    start_time: String,
    transitions: HashMap<String, (String, String)>,
    volumes: Vec<(String, PathBuf)>,
    volumes_at: Option<Instant>,
    sandbox_ready: bool,
    /// The pod's address on the pod network.
    ip: Option<std::net::Ipv4Addr>,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

impl Worker {
    /// A worker for `pod`, adopting the runs a previous agent left in the pod's directory.
    pub fn new(ctx: Arc<Ctx>, pod: Value, tx: mpsc::UnboundedSender<Msg>) -> Worker {
        let uid = s(&pod, "/metadata/uid").to_string();
        let mut w = Worker {
            ctx,
            uid,
            containers: HashMap::new(),
            tx,
            written: Value::Null,
            start_time: s(&pod, "/status/startTime").to_string(),
            transitions: HashMap::new(),
            volumes: Vec::new(),
            volumes_at: None,
            sandbox_ready: false,
            ip: None,
            pod,
        };
        w.adopt();
        w
    }

    fn adopt(&mut self) {
        let dir = self.ctx.layout.pod_dir(&self.uid).join("containers");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let mut runs: Vec<Run> = Vec::new();
        for e in entries.flatten() {
            let tx = self.tx.clone();
            match Run::adopt(&e.path(), move || {
                let _ = tx.send(Msg::Exited);
            }) {
                Ok(r) => runs.push(r),
                // A directory without run.json is a start that never finished.
                Err(_) => remove_run_dir(&e.path()),
            }
        }
        runs.sort_by_key(|r| r.info.attempt);
        for r in runs {
            tracing::info!(pod = %self.name(), container = %r.info.name, running = r.running(), "adopted a container");
            self.containers.entry(r.info.name.clone()).or_default().runs.push(r);
        }
    }

    fn name(&self) -> String {
        format!("{}/{}", s(&self.pod, "/metadata/namespace"), s(&self.pod, "/metadata/name"))
    }

    /// Runs until the pod is gone from this node.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let _ = std::fs::create_dir_all(self.ctx.layout.pod_dir(&self.uid));
        loop {
            let terminating = !s(&self.pod, "/metadata/deletionTimestamp").is_empty();
            if terminating {
                self.terminate(&mut rx, true).await;
                return;
            }
            let wake = self.sync().await;
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Gone) | None => {
                        self.terminate(&mut rx, false).await;
                        return;
                    }
                    Some(other) => self.handle(other),
                },
                _ = sleep => {}
            }
            // Take everything queued meanwhile before syncing again.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Gone = msg {
                    self.terminate(&mut rx, false).await;
                    return;
                }
                self.handle(msg);
            }
        }
    }

    /// Takes in one message (all but `Gone`).
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(p) => self.pod = p,
            Msg::Exited | Msg::Gone => {}
            Msg::ProbeFailed { kind, container, message } => {
                let field = self.field_path(&container, false);
                self.event("Warning", "Unhealthy", format!("{} probe failed: {message}", kind.word()), Some(field))
            }
            Msg::Probe(v) => self.probe_verdict(v),
        }
    }

    /// Applies a probe verdict to the run it is about (if that run is still current).
    fn probe_verdict(&mut self, v: super::probes::Verdict) {
        use super::probes::Kind;
        let Some((name, state)) =
            self.containers.iter_mut().find(|(_, c)| c.latest().is_some_and(|r| r.info.id == v.run_id && r.running()))
        else {
            return;
        };
        let name = name.clone();
        match (v.kind, v.ok) {
            (Kind::Readiness, ok) => state.ready = ok,
            (Kind::Startup, true) => {
                state.started = true;
                self.start_probes(&name, false);
            }
            (kind, false) => {
                // A failed liveness or startup probe restarts the container, gracefully.
                let grace = self.pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                if let Some(run) = state.latest() {
                    run.signal(libc::SIGTERM);
                    let killer = run.signaller();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(grace)).await;
                        killer(libc::SIGKILL);
                    });
                }
                for p in state.probes.drain(..) {
                    p.abort();
                }
                let init = self.is_init(&name);
                self.event(
                    "Normal",
                    "Killing",
                    format!("Container {name} failed {} probe, will be restarted", kind.word().to_lowercase()),
                    Some(self.field_path(&name, init)),
                );
            }
            (Kind::Liveness, true) => {}
        }
    }

    fn is_init(&self, name: &str) -> bool {
        self.pod["spec"]["initContainers"].as_array().into_iter().flatten().any(|c| c["name"] == name)
    }

    /// Starts the probes of container `name`'s current run: the startup probe alone first
    /// when it has one, then liveness and readiness.
    fn start_probes(&mut self, name: &str, first: bool) {
        use super::probes::{Kind, run};
        let Some(spec) =
            self.pod["spec"]["containers"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == name)).cloned()
        else {
            return;
        };
        let pod_ip = self.pod_ip();
        let Some(state) = self.containers.get_mut(name) else { return };
        let Some(r) = state.latest() else { return };
        let target =
            super::exec::Target { id: r.info.id.clone(), bundle: r.dir.clone(), root: self.ctx.layout.runtime_root() };
        let kinds: Vec<Kind> = if first && spec["startupProbe"].is_object() {
            vec![Kind::Startup]
        } else {
            vec![Kind::Liveness, Kind::Readiness]
        };
        if first {
            state.started = !spec["startupProbe"].is_object();
            state.ready = !spec["readinessProbe"].is_object();
        }
        for kind in kinds {
            let probe = spec[kind.field()].clone();
            if !probe.is_object() {
                continue;
            }
            let task = tokio::spawn(run(kind, probe, spec.clone(), pod_ip.clone(), target.clone(), self.tx.clone()));
            state.probes.push(task.abort_handle());
        }
    }

    fn event(&self, kind: &str, reason: &str, message: String, field: Option<String>) {
        super::post_event(&self.ctx, &self.pod, kind, reason, message, field);
    }

    /// One pass towards the spec; returns when the next pass is due at the latest.
    async fn sync(&mut self) -> Instant {
        let now = Instant::now();
        let mut wake = now + VOLUME_REFRESH;
        for c in self.containers.values_mut() {
            for r in &mut c.runs {
                r.collect_exit();
            }
            if !c.latest().is_some_and(Run::running) {
                for p in c.probes.drain(..) {
                    p.abort();
                }
            }
        }
        if !self.sandbox_ready {
            if let Err(e) = self.sandbox().await {
                self.event("Warning", "FailedCreatePodSandBox", format!("{e:#}"), None);
                self.write_status().await;
                return now + Duration::from_secs(5);
            }
            self.sandbox_ready = true;
            // Containers adopted from a previous agent get their probes again.
            let adopted: Vec<String> = self
                .containers
                .iter()
                .filter(|(n, c)| c.latest().is_some_and(Run::running) && !self.is_init(n))
                .map(|(n, _)| n.clone())
                .collect();
            for name in adopted {
                self.start_probes(&name, true);
            }
        }
        if self.volumes_at.is_none_or(|t| t.elapsed() >= VOLUME_REFRESH) {
            match volumes::prepare(
                &self.ctx.client,
                &self.ctx.tokens,
                &self.pod,
                &self.ctx.layout.pod_dir(&self.uid),
                &self.ctx.allocatable,
            )
            .await
            {
                Ok(v) => {
                    self.volumes = v;
                    self.volumes_at = Some(Instant::now());
                }
                Err(volumes::VolumeError(m)) => {
                    if self.volumes_at.is_none() {
                        self.event("Warning", "FailedMount", format!("MountVolume.SetUp failed: {m}"), None);
                        self.write_status().await;
                        return now + Duration::from_secs(5);
                    }
                }
            }
        }
        let policy = s(&self.pod, "/spec/restartPolicy").to_string();
        let inits: Vec<Value> = self.pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
        let mut inits_done = true;
        for c in &inits {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let state = self.containers.entry(name.clone()).or_default();
            match state.latest() {
                Some(r) if r.running() => {}
                Some(r) if r.exit.as_ref().is_some_and(|e| e.exit_code == 0) => continue,
                Some(_) if policy == "Never" => {}
                _ => {
                    if let Some(t) = self.try_start(c, true).await {
                        wake = wake.min(t);
                    }
                }
            }
            inits_done = false;
            break;
        }
        if inits_done {
            let containers: Vec<Value> = self.pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
            for c in &containers {
                let name = c["name"].as_str().unwrap_or("").to_string();
                let state = self.containers.entry(name).or_default();
                let start = match state.latest() {
                    None => true,
                    Some(r) if r.running() => false,
                    Some(r) => {
                        let code = r.exit.as_ref().map_or(0, |e| e.exit_code);
                        policy == "Always" || (policy == "OnFailure" && code != 0)
                    }
                };
                if start && let Some(t) = self.try_start(c, false).await {
                    wake = wake.min(t);
                }
            }
        }
        self.write_status().await;
        wake
    }

    /// Starts `c` unless its back-off forbids it yet; returns when to try again.
    async fn try_start(&mut self, c: &Value, init: bool) -> Option<Instant> {
        let name = c["name"].as_str().unwrap_or("").to_string();
        let pod_uid = self.uid.clone();
        let state = self.containers.entry(name.clone()).or_default();
        let now = Instant::now();
        if state.not_before.is_none()
            && let Some(r) = state.latest()
        {
            // The first restart is immediate; later ones wait, doubling, unless the last
            // run was long.
            let ran_long =
                r.info.started_at.parse::<jiff::Timestamp>().is_ok_and(|t| {
                    jiff::Timestamp::now().duration_since(t).as_secs() as u64 >= BACKOFF_RESET.as_secs()
                });
            let restarts = r.info.attempt + 1;
            if restarts > 1 && !ran_long {
                let delay = backoff(restarts - 2);
                state.not_before = Some(now + delay);
                state.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={name} pod={}_{pod_uid}",
                        delay.as_secs(),
                        s(&self.pod, "/metadata/name")
                    ),
                ));
                self.event(
                    "Warning",
                    "BackOff",
                    "Back-off restarting failed container".into(),
                    Some(self.field_path(&name, init)),
                );
            }
        }
        let state = self.containers.entry(name.clone()).or_default();
        if let Some(t) = state.not_before {
            if now < t {
                return Some(t);
            }
            state.not_before = None;
        }
        match self.start(c, init).await {
            Ok(()) => {
                let state = self.containers.entry(name).or_default();
                state.waiting = None;
                state.failures = 0;
                None
            }
            Err((reason, message)) => {
                let field = self.field_path(&name, init);
                let state = self.containers.entry(name).or_default();
                let delay = backoff(state.failures);
                state.failures += 1;
                let shown = if reason == "ErrImagePull" && state.failures > 1 { "ImagePullBackOff" } else { &reason };
                state.waiting = Some((shown.to_string(), message.clone()));
                let retry = now + delay;
                state.not_before = Some(retry);
                self.event("Warning", "Failed", message, Some(field));
                Some(retry)
            }
        }
    }

    fn field_path(&self, name: &str, init: bool) -> String {
        format!("spec.{}{{{name}}}", if init { "initContainers" } else { "containers" })
    }

    /// Namespaces and the pod's own files (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`).
    async fn sandbox(&mut self) -> anyhow::Result<()> {
        let host_network = self.pod["spec"]["hostNetwork"].as_bool() == Some(true);
        let hostname = if host_network {
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
        } else {
            let h = s(&self.pod, "/spec/hostname");
            if h.is_empty() { s(&self.pod, "/metadata/name").to_string() } else { h.to_string() }
        };
        // hostNetwork pods still get their own IPC namespace.
        let ns_dir = self.ctx.layout.pod_ns_dir(&self.uid);
        podns::create(&ns_dir, &hostname)?;
        if !host_network && let Some(net) = &self.ctx.network {
            let ip = net.ipam.allocate(&self.uid)?;
            // Netlink answers at once; a hang means a wedged kernel, not a slow one.
            tokio::time::timeout(
                HOST_STEP,
                crate::agent::net::bridge::attach(
                    &ns_dir.join("net"),
                    &self.uid,
                    ip,
                    net.cidr,
                    self.ctx.net.as_ref().map_or(1500, |n| n.pod_mtu),
                ),
            )
            .await
            .map_err(|_| anyhow::anyhow!("setting up the pod's network took over {}s", HOST_STEP.as_secs()))??;
            self.ip = Some(ip);
        }
        let dir = self.ctx.layout.pod_dir(&self.uid);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("pod.json"), serde_json::to_vec(&self.pod)?)?;
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        let ip = self.pod_ip();
        if !ip.is_empty() {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        for a in self.pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
            let names: Vec<&str> = a["hostnames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            hosts.push_str(&format!("{}\t{}\n", s(a, "/ip"), names.join("\t")));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        let host_resolv =
            crate::agent::net::podconf::host_resolv_conf(self.ctx.net.as_ref().and_then(|n| n.resolv_conf.as_deref()));
        let resolv = match &self.ctx.net {
            Some(net) => {
                crate::agent::net::podconf::resolv_conf(&self.pod, &host_resolv, net.dns_ip(), &net.cluster_domain)
            }
            None => crate::agent::net::podconf::resolv_conf(&self.pod, &host_resolv, None, ""),
        };
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        Ok(())
    }

    fn pod_ip(&self) -> String {
        if self.pod["spec"]["hostNetwork"].as_bool() == Some(true) {
            return self.ctx.host_ip.clone();
        }
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Pulls (as the policy says), configures and starts one run of `c`.
    async fn start(&mut self, c: &Value, init: bool) -> Result<(), (String, String)> {
        let name = c["name"].as_str().unwrap_or("").to_string();
        let field = self.field_path(&name, init);
        self.containers.entry(name.clone()).or_default().waiting = Some(("ContainerCreating".into(), String::new()));
        let (image_ref, image, config) = images::ensure(&self.ctx, &self.pod, c, |reason, msg| {
            self.event("Normal", reason, msg, Some(field.clone()));
        })
        .await?;
        let image_env: Vec<String> = config["config"]["Env"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut pod_for_env = self.pod.clone();
        pod_for_env["status"]["hostIP"] = json!(self.ctx.host_ip);
        pod_for_env["status"]["podIP"] = json!(self.pod_ip());
        let service_env = match &self.ctx.net {
            Some(net) => crate::agent::net::podconf::service_env(&self.pod, &net.services.list()),
            None => Vec::new(),
        };
        let env = env::resolve(&self.ctx.client, &pod_for_env, c, &image_env, &service_env, &self.ctx.allocatable)
            .await
            .map_err(|env::ConfigError(m)| ("CreateContainerConfigError".to_string(), m))?;
        let pod_dir = self.ctx.layout.pod_dir(&self.uid);
        let mut mounts = volumes::mounts_for(&self.pod, c, &self.volumes, &volumes::subpaths_dir(&pod_dir))
            .map_err(|volumes::VolumeError(m)| ("CreateContainerConfigError".to_string(), m))?;
        let attempt = self.containers.get(&name).and_then(Container::latest).map_or(0, |r| r.info.attempt + 1);
        let id = crate::runtime::new_container_id();
        let dir = self.ctx.layout.container_dir(&self.uid, &id);
        let fail = |reason: &str, e: anyhow::Error| (reason.to_string(), format!("{e:#}"));
        std::fs::create_dir_all(&dir).map_err(|e| fail("CreateContainerError", e.into()))?;
        let term_log = dir.join("termination-log");
        std::fs::write(&term_log, b"").map_err(|e| fail("CreateContainerError", e.into()))?;
        for (file, dest) in
            [("hosts", "/etc/hosts"), ("hostname", "/etc/hostname"), ("resolv.conf", "/etc/resolv.conf")]
        {
            if !mounts.iter().any(|m| m.destination == dest) {
                mounts.push(spec::BindMount { source: pod_dir.join(file), destination: dest.into(), read_only: false });
            }
        }
        let term_path = c["terminationMessagePath"].as_str().unwrap_or("/dev/termination-log").to_string();
        mounts.push(spec::BindMount { source: term_log, destination: term_path, read_only: false });

        let store = crate::images::ImageStore { root: self.ctx.images_root.clone() };
        let rootfs = {
            let (store_image, d) = (image.clone(), dir.clone());
            let mounting =
                tokio::task::spawn_blocking(move || crate::images::rootfs::Rootfs::mount(&store, &store_image, &d));
            tokio::time::timeout(HOST_STEP, mounting)
                .await
                .map_err(|_| fail("CreateContainerError", anyhow::anyhow!("mounting the root file system timed out")))?
                .map_err(|e| fail("CreateContainerError", e.into()))?
                .map_err(|e| fail("CreateContainerError", e))?
        };
        let host_network = self.pod["spec"]["hostNetwork"].as_bool() == Some(true);
        let ns_dir = self.ctx.layout.pod_ns_dir(&self.uid);
        let inputs = spec::Inputs {
            pod: &self.pod,
            container: c,
            image_config: &config,
            rootfs: &rootfs.merged,
            ns_dir: &ns_dir,
            env,
            mounts,
            cgroups_path: cgroup::container_path(&self.ctx.node, &self.uid, &id),
            pids_limit: self.ctx.pids_limit,
            host_network,
            no_swap: self.ctx.no_swap,
        };
        let built = spec::build(&inputs);
        let oci = match built {
            Ok(v) => v,
            Err(m) => {
                let _ = rootfs.unmount();
                return Err(("CreateContainerConfigError".into(), m));
            }
        };
        if let Err(e) = write_config(&self.ctx.layout.bundle_config_dir(&id), &dir, &oci) {
            let _ = rootfs.unmount();
            return Err(fail("CreateContainerError", e));
        }
        let log_path = self
            .ctx
            .layout
            .pod_log_dir(s(&self.pod, "/metadata/namespace"), s(&self.pod, "/metadata/name"), &self.uid)
            .join(&name)
            .join(format!("{attempt}.log"));
        let started_at = crate::runtime::now_nanos();
        let (shim_pid, init_pid) = match spawn_shim(&self.ctx.layout.runtime_root(), &id, &dir, &log_path).await {
            Ok(p) => p,
            Err(e) => {
                // The config holds the container's environment: it must not pile up on the
                // small tmpfs while a pod fails to start again and again.
                if let Err(e) = std::fs::remove_dir_all(self.ctx.layout.bundle_config_dir(&id)) {
                    tracing::warn!(error = %e, "removing a failed container's config");
                }
                let _ = rootfs.unmount();
                return Err(fail("RunContainerError", e));
            }
        };
        let info = RunInfo {
            id: id.clone(),
            name: name.clone(),
            init,
            attempt,
            image: image_ref,
            image_id: image.id.clone(),
            log_path,
            started_at,
            shim_pid,
            init_pid,
        };
        let tx = self.tx.clone();
        let run = Run::started(&dir, info, move || {
            let _ = tx.send(Msg::Exited);
        })
        .map_err(|e| fail("RunContainerError", e))?;
        self.event("Normal", "Created", format!("Created container {name}"), Some(field.clone()));
        self.event("Normal", "Started", format!("Started container {name}"), Some(field));
        let state = self.containers.entry(name.clone()).or_default();
        state.runs.push(run);
        // Keep the current run and the previous one (for `logs --previous`).
        while state.runs.len() > 2 {
            let old = state.runs.remove(0);
            remove_run_dir(&old.dir);
        }
        for p in state.probes.drain(..) {
            p.abort();
        }
        if !init {
            self.start_probes(&name, true);
        }
        Ok(())
    }

    /// Stops every container (SIGTERM, the grace period, SIGKILL), removes what the pod had
    /// on this node, and, for a graceful deletion, lets the API forget the pod.
    async fn terminate(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>, delete: bool) {
        let grace = self.pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .or_else(|| self.pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0) as u64;
        let running: Vec<String> = self
            .containers
            .iter()
            .filter(|(_, c)| c.latest().is_some_and(Run::running))
            .map(|(n, _)| n.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(grace);
        self.pre_stop(&running, Duration::from_secs(grace)).await;
        for name in &running {
            let init = self.pod["spec"]["initContainers"].as_array().into_iter().flatten().any(|c| c["name"] == **name);
            self.event("Normal", "Killing", format!("Stopping container {name}"), Some(self.field_path(name, init)));
            if let Some(r) = self.containers.get(name).and_then(Container::latest) {
                r.signal(libc::SIGTERM);
            }
        }
        let mut killed = false;
        loop {
            for c in self.containers.values_mut() {
                for r in &mut c.runs {
                    r.collect_exit();
                }
            }
            if !self.containers.values().any(|c| c.latest().is_some_and(Run::running)) {
                break;
            }
            if Instant::now() >= deadline && !killed {
                for c in self.containers.values() {
                    if let Some(r) = c.latest() {
                        r.signal(libc::SIGKILL);
                    }
                }
                killed = true;
            }
            let until = if killed { Instant::now() + Duration::from_secs(10) } else { deadline };
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {
                    if killed { break; }
                }
            }
        }
        self.cleanup();
        if delete {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}",
                s(&self.pod, "/metadata/namespace"),
                s(&self.pod, "/metadata/name")
            );
            let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                              "preconditions": {"uid": self.uid}});
            if let Err(e) =
                self.ctx.client.call("DELETE", &path, Some("application/json"), "application/json", Some(&body)).await
                && !super::is_not_found(&e)
            {
                tracing::warn!(pod = %self.name(), error = %format!("{e:#}"), "deleting the stopped pod");
            }
        }
        tracing::info!(pod = %self.name(), "pod removed from the node");
    }

    /// Runs the `preStop` hooks of the `running` containers side by side, within the grace
    /// period (which they share with the stop that follows, as upstream).
    async fn pre_stop(&self, running: &[String], grace: Duration) {
        let pod_ip = self.pod_ip();
        let mut hooks = Vec::new();
        for name in running {
            let Some(spec) =
                self.pod["spec"]["containers"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == **name))
            else {
                continue;
            };
            let handler = &spec["lifecycle"]["preStop"];
            let Some(r) = self.containers.get(name).and_then(Container::latest) else { continue };
            if !handler.is_object() {
                continue;
            }
            let target = super::exec::Target {
                id: r.info.id.clone(),
                bundle: r.dir.clone(),
                root: self.ctx.layout.runtime_root(),
            };
            let (handler, spec, pod_ip, name) = (handler.clone(), spec.clone(), pod_ip.clone(), name.clone());
            hooks.push(async move {
                let result = super::probes::hook(&handler, &spec, &pod_ip, &target, grace).await;
                (name, result)
            });
        }
        for (name, result) in futures_util::future::join_all(hooks).await {
            if let Err(message) = result {
                let field = self.field_path(&name, false);
                self.event("Warning", "FailedPreStopHook", format!("PreStopHook failed: {message}"), Some(field));
            }
        }
    }

    /// Removes every mount, directory, namespace, cgroup and log the pod had.
    fn cleanup(&mut self) {
        for c in self.containers.values_mut() {
            for r in c.runs.drain(..) {
                remove_run_dir(&r.dir);
            }
        }
        let pod_dir = self.ctx.layout.pod_dir(&self.uid);
        volumes::unmount_all(&pod_dir);
        podns::remove(&self.ctx.layout.pod_ns_dir(&self.uid));
        if let Some(net) = &self.ctx.network {
            net.ipam.release(&self.uid);
        }
        cgroup::remove_pod(&self.ctx.node, &self.uid);
        if let Err(e) = std::fs::remove_dir_all(&pod_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %pod_dir.display(), error = %e, "removing the pod directory");
        }
        let logs =
            self.ctx.layout.pod_log_dir(s(&self.pod, "/metadata/namespace"), s(&self.pod, "/metadata/name"), &self.uid);
        let _ = std::fs::remove_dir_all(logs);
    }

    /// The container statuses, phase and conditions; written when they changed.
    async fn write_status(&mut self) {
        let status = self.status();
        if status == self.written {
            return;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            s(&self.pod, "/metadata/namespace"),
            s(&self.pod, "/metadata/name")
        );
        let patch = json!({"status": status});
        match self
            .ctx
            .client
            .call("PATCH", &path, Some("application/merge-patch+json"), "application/json", Some(&patch))
            .await
        {
            Ok(_) => self.written = status,
            Err(e) => tracing::warn!(pod = %self.name(), error = %format!("{e:#}"), "writing the pod status"),
        }
    }

    fn container_status(&self, c: &Value) -> Value {
        let name = c["name"].as_str().unwrap_or("");
        let state = self.containers.get(name);
        let latest = state.and_then(Container::latest);
        let terminated = |r: &Run| {
            let e = r.exit.clone().unwrap_or(crate::runtime::shim::Exit {
                exit_code: 0,
                signal: None,
                oom_killed: false,
                finished_at: String::new(),
            });
            let reason = if e.oom_killed {
                "OOMKilled"
            } else if e.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let mut t = json!({"exitCode": e.exit_code, "reason": reason, "startedAt": secs(&r.info.started_at),
                               "finishedAt": secs(&e.finished_at), "containerID": format!("bramble://{}", r.info.id)});
            if let Some(sig) = e.signal {
                t["signal"] = json!(sig);
            }
            if let Some(m) = r.termination_message() {
                t["message"] = json!(m);
            }
            json!({"terminated": t})
        };
        let waiting = state.and_then(|s| s.waiting.clone());
        let previous = state.and_then(|s| (s.runs.len() >= 2).then(|| &s.runs[s.runs.len() - 2])).map(terminated);
        let (current, last) = match (latest, &waiting) {
            (Some(r), _) if r.running() => (json!({"running": {"startedAt": secs(&r.info.started_at)}}), previous),
            // Exited and waiting to restart (back-off, pull, config): the exit is the last state.
            (Some(r), Some((reason, msg))) => (waiting_state(reason, msg), Some(terminated(r))),
            (Some(r), None) => (terminated(r), previous),
            (None, w) => {
                let (reason, msg) = w.clone().unwrap_or(("ContainerCreating".into(), String::new()));
                (waiting_state(&reason, &msg), None)
            }
        };
        let last = last.unwrap_or(json!({}));
        let running = latest.is_some_and(Run::running);
        let started = running && state.is_some_and(|s| s.started);
        let mut out = json!({
            "name": name,
            "image": c["image"],
            "imageID": latest.map_or(String::new(), |r| r.info.image_id.clone()),
            "ready": started && state.is_some_and(|s| s.ready),
            "started": started,
            "restartCount": state.map_or(0, Container::restart_count),
            "state": current,
            "lastState": last,
        });
        if let Some(r) = latest {
            out["containerID"] = json!(format!("bramble://{}", r.info.id));
        }
        out
    }

    fn status(&mut self) -> Value {
        let policy = s(&self.pod, "/spec/restartPolicy").to_string();
        let inits: Vec<Value> = self.pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
        let containers: Vec<Value> = self.pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let exit_of = |name: &str| {
            self.containers.get(name).and_then(Container::latest).and_then(|r| r.exit.as_ref().map(|e| e.exit_code))
        };
        let init_failed = policy == "Never"
            && inits.iter().any(|c| exit_of(c["name"].as_str().unwrap_or("")).is_some_and(|x| x != 0));
        let inits_done = inits.iter().all(|c| exit_of(c["name"].as_str().unwrap_or("")) == Some(0));
        let running = containers.iter().any(|c| {
            self.containers.get(c["name"].as_str().unwrap_or("")).and_then(Container::latest).is_some_and(Run::running)
        });
        let exits: Vec<Option<i32>> = containers.iter().map(|c| exit_of(c["name"].as_str().unwrap_or(""))).collect();
        let all_exited = !exits.is_empty() && exits.iter().all(Option::is_some);
        let all_ok = exits.iter().all(|e| *e == Some(0));
        let phase = if init_failed {
            "Failed"
        } else if !inits_done {
            "Pending"
        } else if all_exited && policy != "Always" {
            if all_ok {
                "Succeeded"
            } else if policy == "Never" {
                "Failed"
            } else {
                "Running"
            }
        } else if running || all_exited {
            "Running"
        } else {
            "Pending"
        };
        let is_ready = |name: &str| {
            self.containers.get(name).is_some_and(|s| s.latest().is_some_and(Run::running) && s.ready && s.started)
        };
        let ready = phase == "Running" && containers.iter().all(|c| is_ready(c["name"].as_str().unwrap_or("")));
        if self.start_time.is_empty() {
            self.start_time = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        }
        let completed = matches!(phase, "Succeeded" | "Failed");
        let not_ready_reason = if completed { "PodCompleted" } else { "ContainersNotReady" };
        let unready: Vec<String> = containers
            .iter()
            .filter(|c| !is_ready(c["name"].as_str().unwrap_or("")))
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let mut conditions = Vec::new();
        for (kind, ok, reason, message) in [
            ("PodReadyToStartContainers", self.sandbox_ready, "", String::new()),
            (
                "Initialized",
                inits_done,
                if completed { "PodCompleted" } else { "ContainersNotInitialized" },
                String::new(),
            ),
            ("Ready", ready, not_ready_reason, format!("containers with unready status: [{}]", unready.join(" "))),
            (
                "ContainersReady",
                ready,
                not_ready_reason,
                format!("containers with unready status: [{}]", unready.join(" ")),
            ),
            ("PodScheduled", true, "", String::new()),
        ] {
            let status = if ok { "True" } else { "False" };
            let at = match self.transitions.get(kind) {
                Some((st, at)) if st == status => at.clone(),
                _ => {
                    let at = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
                    self.transitions.insert(kind.to_string(), (status.to_string(), at.clone()));
                    at
                }
            };
            let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": at});
            if !ok && !reason.is_empty() && kind != "PodReadyToStartContainers" {
                c["reason"] = json!(reason);
                if !message.is_empty() && kind != "Initialized" {
                    c["message"] = json!(message);
                }
            }
            conditions.push(c);
        }
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "startTime": self.start_time,
            "qosClass": qos_class(&self.pod),
            "containerStatuses": containers.iter().map(|c| self.container_status(c)).collect::<Vec<_>>(),
        });
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(inits.iter().map(|c| self.container_status(c)).collect::<Vec<_>>());
        }
        let ip = self.pod_ip();
        if !ip.is_empty() {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        status
    }
}

fn waiting_state(reason: &str, message: &str) -> Value {
    let mut w = json!({"reason": reason});
    if !message.is_empty() {
        w["message"] = json!(message);
    }
    json!({"waiting": w})
}

/// RFC 3339 in whole seconds, as Kubernetes shows times.
fn secs(nanos: &str) -> String {
    nanos.parse::<jiff::Timestamp>().map_or(nanos.to_string(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Guaranteed, Burstable or BestEffort from the containers' requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .collect();
    let set = |c: &Value, kind: &str| {
        c["resources"][kind].as_object().is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
    };
    if all.iter().all(|c| !set(c, "requests") && !set(c, "limits")) {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let l = &c["resources"]["limits"][*r];
            let q = &c["resources"]["requests"][*r];
            !l.is_null() && (q.is_null() || spec::quantity(q, true) == spec::quantity(l, true))
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

/// Unmounts a run's root file system and removes its directory.
/// Writes the container's OCI `config.json` into `config_dir` (on tmpfs, 0600) and links it
/// from the container directory `dir`, where libcontainer and the shim read it.
fn write_config(config_dir: &std::path::Path, dir: &std::path::Path, oci: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(config_dir)?;
    let target = config_dir.join("config.json");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&target)?;
    f.write_all(&serde_json::to_vec(oci)?)?;
    let link = dir.join("config.json");
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::os::unix::fs::symlink(&target, &link)?;
    Ok(())
}

pub fn remove_run_dir(dir: &std::path::Path) {
    // The config on tmpfs goes with its container (a plain file from an older agent stays).
    if let Ok(config) = std::fs::read_link(dir.join("config.json"))
        && let Some(config_dir) = config.parent()
        && config_dir.starts_with("/run/bramble")
        && let Err(e) = std::fs::remove_dir_all(config_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %config_dir.display(), error = %e, "removing a container's config");
    }
    if let Err(e) = crate::images::rootfs::Rootfs::at(dir).unmount() {
        tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "removing a container directory");
        let _ = std::fs::remove_dir_all(dir);
    }
}
