//! The OCI runtime spec (`config.json`) of one container, from its Kubernetes container
//! spec, its image's config and what the agent prepared (root file system, pod namespaces,
//! resolved environment, volume mounts). Pure: every rule here is testable without a kernel.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The capabilities a container gets by default (containerd's and CRI-O's set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged containers and `add: ["ALL"]`.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths of `/proc` and `/sys` hidden from unprivileged containers (as runc's default).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A bind mount into the container (a volume, `/etc/hosts`, the termination log).
#[derive(Clone, Debug, PartialEq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// Everything the spec is made from.
pub struct Inputs<'a> {
    pub pod: &'a Value,
    pub container: &'a Value,
    /// The image config (`{"config": {"Entrypoint", "Cmd", "Env", "WorkingDir", "User"}}`).
    pub image_config: &'a Value,
    /// The merged overlayfs root.
    pub rootfs: &'a Path,
    /// Where the pod's namespace files are bound.
    pub ns_dir: &'a Path,
    /// The container's environment, resolved by the agent (image env merged in here).
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    pub cgroups_path: String,
    /// `pids` limit for the container, when the node sets one.
    pub pids_limit: Option<i64>,
    /// `hostNetwork`: the host's network and UTS namespaces instead of the pod's.
    pub host_network: bool,
    /// Whether a memory limit also forbids swap (the kubelet's default `NoSwap`); false
    /// where the kernel cannot limit swap.
    pub no_swap: bool,
}

/// The process's argv: `command`/`args` override ENTRYPOINT/CMD exactly as upstream, with
/// `$(VAR)` references expanded from the container's environment.
pub fn argv(container: &Value, image_config: &Value, env: &[(String, String)]) -> Vec<String> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
    };
    let command = strings(&container["command"]).filter(|c| !c.is_empty());
    let args = strings(&container["args"]).filter(|a| !a.is_empty());
    let entrypoint = strings(&image_config["config"]["Entrypoint"]).unwrap_or_default();
    let cmd = strings(&image_config["config"]["Cmd"]).unwrap_or_default();
    let expand = |v: Vec<String>| v.into_iter().map(|s| expand_vars(&s, env)).collect::<Vec<_>>();
    match (command, args) {
        (Some(c), Some(a)) => [expand(c), expand(a)].concat(),
        (Some(c), None) => expand(c),
        (None, Some(a)) => [entrypoint, expand(a)].concat(),
        (None, None) => [entrypoint, cmd].concat(),
    }
}

/// Expands `$(NAME)` from `env` as the kubelet does: `$$` is a literal `$`, and a reference
/// to an unknown name stays as written.
pub fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The security context field `key`, the container's own winning over the pod's.
fn security(inputs: &Inputs, key: &str) -> Value {
    let own = &inputs.container["securityContext"][key];
    if !own.is_null() { own.clone() } else { inputs.pod["spec"]["securityContext"][key].clone() }
}

/// Looks `name` up in the image's `/etc/passwd` or `/etc/group` (field 3 is the ID).
fn lookup_id(rootfs: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok())).and_then(|(a, b)| Some((a?, b)))
    })
}

/// The image's `User` (`uid`, `uid:gid`, `name`, `name:group`) as numbers.
fn image_user(rootfs: &Path, user: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_id_by_uid(rootfs, n)),
        Err(_) => {
            lookup_id(rootfs, "passwd", u).ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?
        }
    };
    let gid = match g {
        None => primary.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_id(rootfs, "group", g)
                .map(|(id, _)| id)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

fn lookup_id_by_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok()).flatten()
    })
}

/// The capability set after `securityContext.capabilities` add/drop (names with or without
/// `CAP_`, and `ALL`).
fn capabilities(inputs: &Inputs, privileged: bool) -> Vec<String> {
    if privileged {
        return ALL_CAPS.iter().map(|s| s.to_string()).collect();
    }
    let norm = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| {
                        let up = s.to_uppercase();
                        if up == "ALL" || up.starts_with("CAP_") { up } else { format!("CAP_{up}") }
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let caps = &inputs.container["securityContext"]["capabilities"];
    let (add, drop) = (norm(&caps["add"]), norm(&caps["drop"]));
    let mut set: Vec<String> = if add.iter().any(|c| c == "ALL") {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        let mut s: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        s.extend(add.into_iter().filter(|c| ALL_CAPS.contains(&c.as_str())));
        s
    };
    if drop.iter().any(|c| c == "ALL") {
        set.clear();
    } else {
        set.retain(|c| !drop.contains(c));
    }
    set.sort();
    set.dedup();
    set
}

/// A Kubernetes quantity (`100m`, `1`, `64Mi`, `1G`, `1e3`) as a number of units (milli-units
/// when `milli`), rounded up; `None` when absent or not a quantity (the API refuses those).
pub fn quantity(q: &Value, milli: bool) -> Option<i128> {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let q = crate::api::fields::parse_quantity(&text).ok()?;
    Some(if milli { q.milli } else { q.units() })
}

/// The cgroup limits from `resources`: memory limit, CPU quota from the limit and shares
/// from the request (the kubelet's formulas), and the node's pids limit.
fn resources(inputs: &Inputs, privileged: bool) -> Value {
    let r = &inputs.container["resources"];
    let mut out = json!({});
    if let Some(mem) = quantity(&r["limits"]["memory"], false) {
        out["memory"] = json!({"limit": mem as i64});
        if inputs.no_swap {
            // OCI's swap is memory plus swap: equal to the limit means no swap.
            out["memory"]["swap"] = json!(mem as i64);
        }
    }
    let request = quantity(&r["requests"]["cpu"], true).or_else(|| quantity(&r["limits"]["cpu"], true));
    let shares = request.map_or(2, |m| (m * 1024 / 1000).max(2)) as u64;
    let mut cpu = json!({"shares": shares});
    if let Some(limit) = quantity(&r["limits"]["cpu"], true) {
        let period: i128 = 100_000;
        cpu["quota"] = json!((limit * period / 1000).max(1000) as i64);
        cpu["period"] = json!(period as u64);
    }
    out["cpu"] = cpu;
    if let Some(p) = inputs.pids_limit {
        out["pids"] = json!({"limit": p});
    }
    if !privileged {
        // Deny every device, then allow the ones every container gets.
        let mut devices = vec![json!({"allow": false, "access": "rwm"})];
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)] {
            devices.push(json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}));
        }
        devices.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));
        out["devices"] = json!(devices);
    }
    out
}

/// Whether the default seccomp profile applies (unset or `RuntimeDefault`; not for
/// `Unconfined` nor privileged containers).
fn wants_seccomp(inputs: &Inputs, privileged: bool) -> bool {
    let kind = security(inputs, "seccompProfile")["type"].as_str().map(str::to_string);
    !privileged && !matches!(kind.as_deref(), Some("Unconfined"))
}

/// Builds the spec, or says what in the pod makes it impossible.
pub fn build(inputs: &Inputs) -> Result<Value, String> {
    let privileged = inputs.container["securityContext"]["privileged"].as_bool().unwrap_or(false);
    let image = &inputs.image_config["config"];
    let args = argv(inputs.container, inputs.image_config, &inputs.env);
    if args.is_empty() {
        return Err("no command specified: the image has no ENTRYPOINT or CMD and the container sets none".into());
    }
    let (mut uid, mut gid) = image_user(inputs.rootfs, image["User"].as_str().unwrap_or(""))?;
    if let Some(u) = security(inputs, "runAsUser").as_u64() {
        uid = u as u32;
        gid = lookup_id_by_uid(inputs.rootfs, uid).unwrap_or(0);
    }
    if let Some(g) = security(inputs, "runAsGroup").as_u64() {
        gid = g as u32;
    }
    if security(inputs, "runAsNonRoot").as_bool() == Some(true) && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    let mut groups: Vec<u64> = inputs.pod["spec"]["securityContext"]["supplementalGroups"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if let Some(fs_group) = inputs.pod["spec"]["securityContext"]["fsGroup"].as_u64() {
        groups.push(fs_group);
    }
    let caps = capabilities(inputs, privileged);
    let cwd = inputs.container["workingDir"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| image["WorkingDir"].as_str().filter(|s| !s.is_empty()))
        .unwrap_or("/");
    let no_new_privs = inputs.container["securityContext"]["allowPrivilegeEscalation"].as_bool() == Some(false);
    let env: Vec<String> = dedup_env(&inputs.env).into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &inputs.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"}), json!({"type": "cgroup"})];
    for (file, kind) in super::podns::SHARED {
        if inputs.host_network && kind != "ipc" {
            continue;
        }
        namespaces.push(json!({"type": kind, "path": inputs.ns_dir.join(file)}));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": inputs.cgroups_path,
        "resources": resources(inputs, privileged),
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED);
        linux["readonlyPaths"] = json!(READONLY);
    }
    if wants_seccomp(inputs, privileged) {
        linux["seccomp"] =
            super::seccomp::known_to_libseccomp(super::seccomp::runtime_default(std::env::consts::ARCH, &caps));
    }
    let read_only_root = inputs.container["securityContext"]["readOnlyRootFilesystem"].as_bool() == Some(true);
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
        "root": {"path": inputs.rootfs, "readonly": read_only_root},
        "mounts": mounts,
        "linux": linux,
    });
    // Only set when true: libcontainer loads the seccomp filter while the process still has
    // CAP_SYS_ADMIN only when the field is absent, and without no_new_privs it must.
    if no_new_privs {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    Ok(spec)
}

/// Later definitions of a name win, keeping the first one's position (as the kubelet does).
fn dedup_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Value {
        json!({"config": {"Entrypoint": ["/entry"], "Cmd": ["--serve"], "Env": ["PATH=/bin"], "WorkingDir": "/app"}})
    }

    #[test]
    fn command_and_args_override_entrypoint_and_cmd_as_upstream() {
        let env = vec![("NAME".to_string(), "web".to_string())];
        let img = image();
        assert_eq!(argv(&json!({}), &img, &env), ["/entry", "--serve"]);
        assert_eq!(argv(&json!({"args": ["-v"]}), &img, &env), ["/entry", "-v"]);
        assert_eq!(argv(&json!({"command": ["/bin/sh"]}), &img, &env), ["/bin/sh"]);
        assert_eq!(
            argv(&json!({"command": ["/bin/sh"], "args": ["-c", "echo $(NAME) $$(NAME) $(NOPE)"]}), &img, &env),
            ["/bin/sh", "-c", "echo web $(NAME) $(NOPE)"]
        );
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let pod = json!({"spec": {}});
        let c = json!({"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}}});
        let img = image();
        let inputs = Inputs {
            pod: &pod,
            container: &c,
            image_config: &img,
            rootfs: Path::new("/nonexistent"),
            ns_dir: Path::new("/run/x"),
            env: vec![],
            mounts: vec![],
            cgroups_path: "/bramble/n/podu/c".into(),
            pids_limit: Some(1024),
            host_network: false,
            no_swap: true,
        };
        let spec = build(&inputs).unwrap();
        let r = &spec["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(r["memory"]["swap"], 64 * 1024 * 1024);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["shares"], 256);
        assert_eq!(r["pids"]["limit"], 1024);
        assert_eq!(spec["process"]["cwd"], "/app");
        assert!(spec["linux"]["seccomp"].is_object(), "the default profile applies");
        let parsed: Result<oci_spec::runtime::Spec, _> = serde_json::from_value(spec);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn security_context_shapes_user_caps_and_root() {
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000, "fsGroup": 2000}}});
        let c = json!({"securityContext": {"runAsGroup": 3000, "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["KILL"]}, "seccompProfile": {"type": "Unconfined"}}});
        let img = image();
        let inputs = Inputs {
            pod: &pod,
            container: &c,
            image_config: &img,
            rootfs: Path::new("/nonexistent"),
            ns_dir: Path::new("/run/x"),
            env: vec![],
            mounts: vec![],
            cgroups_path: String::new(),
            pids_limit: None,
            host_network: false,
            no_swap: true,
        };
        let spec = build(&inputs).unwrap();
        assert_eq!(spec["process"]["user"], json!({"uid": 1000, "gid": 3000, "additionalGids": [2000]}));
        let caps = spec["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")) && !caps.contains(&json!("CAP_KILL")));
        assert_eq!(spec["root"]["readonly"], true);
        assert!(spec["linux"]["seccomp"].is_null());
        let root = json!({"securityContext": {"runAsNonRoot": true}});
        let inputs = Inputs { container: &root, pod: &json!({"spec": {}}), ..inputs };
        assert!(build(&inputs).unwrap_err().contains("runAsNonRoot"));
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(quantity(&json!("100m"), true), Some(100));
        assert_eq!(quantity(&json!("2"), true), Some(2000));
        assert_eq!(quantity(&json!("1Gi"), false), Some(1 << 30));
        assert_eq!(quantity(&json!("1e3"), false), Some(1000));
        assert_eq!(quantity(&json!(1), false), Some(1));
        assert_eq!(quantity(&json!("1Xi"), false), None);
    }
}
