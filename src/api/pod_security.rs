//! Kubernetes Pod Security Standards (PSS) checks.
//!
//! This is our own implementation of the policy logic of upstream's PodSecurity admission plugin
//! (`k8s.io/pod-security-admission`, package `policy`) for policy version `latest` as shipped with
//! Kubernetes 1.33. In that release `latest` resolves to the newest versioned check, v1.32 (the
//! sysctl allow-list). We mirror upstream closely because users read these messages through
//! kubectl and compare them with what a real API server prints:
//!
//! * check IDs, forbidden reasons and details are the same strings upstream produces;
//! * checks run in upstream's order: baseline checks sorted by ID, then restricted checks sorted
//!   by ID, and at `restricted` the baseline checks that a restricted check supersedes
//!   (`capabilities_baseline`, `hostPathVolumes`, `seccompProfile_baseline`) are dropped;
//! * a JSON `null` is treated like an absent field, the way Go decodes it into a nil pointer,
//!   and absent booleans count as `false`.
//!
//! Not covered (they are admission-plugin concerns, not policy logic): namespace labels and
//! pinned policy versions, exemptions (users, namespaces, runtime classes), the
//! `UserNamespacesPodSecurityStandards` alpha relaxation for `hostUsers: false` (off by default
//! in 1.33), and the probe/lifecycle `host` check that only arrived in 1.34.

use std::collections::BTreeSet;

use serde_json::Value;

/// A Pod Security Standards level, as named in `pod-security.kubernetes.io/*` namespace labels.
///
/// Callers pick the level from namespace labels or cluster defaults; `Privileged` allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Unrestricted: no checks at all.
    Privileged,
    /// Prevents known privilege escalations while admitting the default pod.
    Baseline,
    /// Baseline plus current pod-hardening best practice.
    Restricted,
}

impl Level {
    /// Parses a level the way upstream's `api.ParseLevel` does: exact, lower-case names only,
    /// so a typo in a namespace label is reported instead of silently picking a level.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    /// The label/message spelling of the level, e.g. `restricted`, as used in `"restricted:latest"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// One failed check, in the shape upstream reports it.
///
/// `check` lets callers match on a stable identifier; `message` is what users see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Upstream's check ID, e.g. `privileged`, `hostPathVolumes`, `runAsNonRoot`.
    pub check: &'static str,
    /// Upstream's forbidden reason followed by ` (detail)` when there is a detail, e.g.
    /// `privileged (container "c" must not set securityContext.privileged=true)`.
    pub message: String,
}

/// Evaluates a pod (or pod template) against every check of `level` and returns the failures in
/// upstream's order, so that [`summary`] reproduces upstream's admission message.
///
/// `metadata` is the pod's or template's `metadata` (its annotations carry AppArmor profiles);
/// `spec` is a `PodSpec` as JSON with the Kubernetes API's camelCase field names. Either may be
/// `Value::Null` when absent. `Privileged` always returns an empty list.
pub fn check(level: Level, metadata: &Value, spec: &Value) -> Vec<Violation> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let pod = Pod::new(metadata, spec);
    let superseded: Vec<&str> = if level == Level::Restricted {
        CHECKS.iter().filter(|c| c.level == Level::Restricted).flat_map(|c| c.supersedes.iter().copied()).collect()
    } else {
        Vec::new()
    };
    CHECKS
        .iter()
        .filter(|c| c.level == Level::Baseline || level == Level::Restricted)
        .filter(|c| !superseded.contains(&c.id))
        .filter_map(|c| {
            (c.run)(&pod).map(|f| {
                let message = if f.detail.is_empty() { f.reason } else { format!("{} ({})", f.reason, f.detail) };
                Violation { check: c.id, message }
            })
        })
        .collect()
}

/// Formats violations the way upstream's admission error does after `violates PodSecurity `,
/// e.g. `"restricted:latest": allowPrivilegeEscalation != false (...), seccompProfile (...)`, so
/// callers can build `pods "NAME" is forbidden: violates PodSecurity <summary>` (or the
/// `would violate PodSecurity <summary>` warning) byte-for-byte like a real API server.
pub fn summary(level: Level, violations: &[Violation]) -> String {
    let joined: Vec<&str> = violations.iter().map(|v| v.message.as_str()).collect();
    format!("{}: {}", go_quote(&format!("{}:latest", level.as_str())), joined.join(", "))
}

/// Finds the pod metadata and spec that PodSecurity evaluates for an object of `kind`, following
/// upstream's pod-spec extractor: the pod itself for `Pod`, `spec.template` for Deployment,
/// ReplicaSet, StatefulSet, DaemonSet, Job and ReplicationController, `template` for PodTemplate,
/// and `spec.jobTemplate.spec.template` for CronJob.
///
/// Upstream enforces only on pods and merely warns/audits on workload templates; this extractor
/// lets callers do the same. Returns `None` for other kinds or when the template is absent
/// (upstream skips such objects). A missing `metadata`/`spec` inside a present template is
/// returned as `Value::Null`, which [`check`] treats as empty.
pub fn pod_spec_of<'a>(kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    static NULL: Value = Value::Null;
    let template = match kind {
        "Pod" => obj,
        "PodTemplate" => field(obj, &["template"])?,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => {
            field(obj, &["spec", "template"])?
        }
        "CronJob" => field(obj, &["spec", "jobTemplate", "spec", "template"])?,
        _ => return None,
    };
    Some((field(template, &["metadata"]).unwrap_or(&NULL), field(template, &["spec"]).unwrap_or(&NULL)))
}

// ---------------------------------------------------------------------------------------------
// Check registry
// ---------------------------------------------------------------------------------------------

/// A failed check before it is rendered into a [`Violation`].
struct Failure {
    reason: String,
    detail: String,
}

fn fail(reason: &str, detail: String) -> Option<Failure> {
    Some(Failure { reason: reason.to_string(), detail })
}

struct CheckDef {
    id: &'static str,
    level: Level,
    /// Baseline check IDs this restricted check replaces at the restricted level.
    supersedes: &'static [&'static str],
    run: fn(&Pod<'_>) -> Option<Failure>,
}

const fn baseline(id: &'static str, run: fn(&Pod<'_>) -> Option<Failure>) -> CheckDef {
    CheckDef { id, level: Level::Baseline, supersedes: &[], run }
}

const fn restricted(
    id: &'static str,
    supersedes: &'static [&'static str],
    run: fn(&Pod<'_>) -> Option<Failure>,
) -> CheckDef {
    CheckDef { id, level: Level::Restricted, supersedes, run }
}

/// All checks in upstream's evaluation order: baseline IDs sorted bytewise, then restricted IDs.
const CHECKS: &[CheckDef] = &[
    baseline("appArmorProfile", app_armor_profile),
    baseline("capabilities_baseline", capabilities_baseline),
    baseline("hostNamespaces", host_namespaces),
    baseline("hostPathVolumes", host_path_volumes),
    baseline("hostPorts", host_ports),
    baseline("privileged", privileged),
    baseline("procMount", proc_mount),
    baseline("seLinuxOptions", se_linux_options),
    baseline("seccompProfile_baseline", seccomp_profile_baseline),
    baseline("sysctls", sysctls),
    baseline("windowsHostProcess", windows_host_process),
    restricted("allowPrivilegeEscalation", &[], allow_privilege_escalation),
    restricted("capabilities_restricted", &["capabilities_baseline"], capabilities_restricted),
    restricted("restrictedVolumes", &["hostPathVolumes"], restricted_volumes),
    restricted("runAsNonRoot", &[], run_as_non_root),
    restricted("runAsUser", &[], run_as_user),
    restricted("seccompProfile_restricted", &["seccompProfile_baseline"], seccomp_profile_restricted),
];

/// The pod under evaluation, with its containers flattened in upstream's visiting order.
struct Pod<'a> {
    metadata: &'a Value,
    spec: &'a Value,
    containers: Vec<&'a Value>,
}

impl<'a> Pod<'a> {
    fn new(metadata: &'a Value, spec: &'a Value) -> Self {
        let containers = ["initContainers", "containers", "ephemeralContainers"]
            .into_iter()
            .flat_map(|key| items(field(spec, &[key])))
            .collect();
        Pod { metadata, spec, containers }
    }

    fn pod_sc(&self, path: &[&str]) -> Option<&'a Value> {
        field(self.spec.get("securityContext")?, path)
    }

    fn is_windows(&self) -> bool {
        field(self.spec, &["os", "name"]).and_then(Value::as_str) == Some("windows")
    }

    /// Names of the containers for which `pred` holds, in visiting order.
    fn containers_where(&self, mut pred: impl FnMut(&'a Value) -> bool) -> Vec<String> {
        self.containers.iter().copied().filter(|c| pred(c)).map(container_name).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON and formatting helpers
// ---------------------------------------------------------------------------------------------

/// Walks `path`; a JSON `null` anywhere counts as absent, like a nil pointer in Go.
fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    if cur.is_null() { None } else { Some(cur) }
}

fn sc<'a>(container: &'a Value, path: &[&str]) -> Option<&'a Value> {
    field(container.get("securityContext")?, path)
}

fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn is_true(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true)))
}

/// The string value of a field, `""` when absent (Go's zero value); non-strings (which the API
/// server would reject) are rendered as JSON so they never match an allowed value.
fn text(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn container_name(c: &Value) -> String {
    text(field(c, &["name"]))
}

fn pluralize<'s>(singular: &'s str, plural: &'s str, n: usize) -> &'s str {
    if n == 1 { singular } else { plural }
}

/// `"a", "b"` — upstream's joinQuote (no escaping of the items).
fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let parts: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", parts.join("\", \""))
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!("{} {}", pluralize("container", "containers", names.len()), join_quote(names))
}

/// Appends the `container(s) "..."` setter when any container is at fault.
fn push_containers(setters: &mut Vec<String>, names: &[String]) {
    if !names.is_empty() {
        setters.push(containers_phrase(names));
    }
}

fn sorted(set: &BTreeSet<String>) -> Vec<String> {
    set.iter().cloned().collect()
}

/// Go's `strconv.Quote` (what `%q` prints): escapes quotes, backslashes and non-printable
/// characters. Unicode printability is approximated by control, whitespace and common
/// format characters, which covers what realistically appears in annotation values.
pub(super) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' ' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || c.is_whitespace() || is_format_char(c) => {
                let cp = c as u32;
                if cp < 0x10000 {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Common Unicode "Cf" (format) characters, which Go does not consider printable.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E
        | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0xE0001 | 0xE0020..=0xE007F)
}

// ---------------------------------------------------------------------------------------------
// Baseline checks
// ---------------------------------------------------------------------------------------------

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// AppArmor: only `RuntimeDefault`/`Localhost` profile types, and legacy annotations limited to
/// empty, `runtime/default` or `localhost/*`.
fn app_armor_profile(pod: &Pod<'_>) -> Option<Failure> {
    let allowed_type = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(profile) = pod.pod_sc(&["appArmorProfile"]) {
        let t = text(field(profile, &["type"]));
        if !allowed_type(&t) {
            setters.push("pod".to_string());
            bad_values.insert(t);
        }
    }
    let bad_containers = pod.containers_where(|c| match sc(c, &["appArmorProfile"]) {
        Some(profile) => {
            let t = text(field(profile, &["type"]));
            let bad = !allowed_type(&t);
            if bad {
                bad_values.insert(t);
            }
            bad
        }
        None => false,
    });
    push_containers(&mut setters, &bad_containers);

    let mut annotations: Vec<String> = field(pod.metadata, &["annotations"])
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(APPARMOR_ANNOTATION_PREFIX))
        .filter_map(|(k, v)| {
            let v = text(Some(v).filter(|v| !v.is_null()));
            let allowed = v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
            (!allowed).then(|| format!("{k}={}", go_quote(&v)))
        })
        .collect();
    let mut values = sorted(&bad_values);
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    fail(
        pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", values.len()),
        format!("{} must not set AppArmor profile type to {}", setters.join(" and "), join_quote(&values)),
    )
}

const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Baseline capabilities: `capabilities.add` may only contain the container runtime's default set.
fn capabilities_baseline(pod: &Pod<'_>) -> Option<Failure> {
    let mut forbidden = BTreeSet::new();
    let bad = pod.containers_where(|c| {
        let mut valid = true;
        for cap in items(sc(c, &["capabilities", "add"])) {
            let cap = text(Some(cap));
            if !DEFAULT_CAPABILITIES.contains(&cap.as_str()) {
                valid = false;
                forbidden.insert(cap);
            }
        }
        !valid
    });
    if bad.is_empty() {
        return None;
    }
    fail(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&sorted(&forbidden))
        ),
    )
}

/// Host namespaces: `hostNetwork`, `hostPID` and `hostIPC` must not be true.
fn host_namespaces(pod: &Pod<'_>) -> Option<Failure> {
    let set: Vec<&str> =
        [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")]
            .into_iter()
            .filter(|(key, _)| is_true(field(pod.spec, &[*key])))
            .map(|(_, label)| label)
            .collect();
    if set.is_empty() {
        return None;
    }
    fail("host namespaces", set.join(", "))
}

fn volumes<'a>(pod: &Pod<'a>) -> &'a [Value] {
    items(field(pod.spec, &["volumes"]))
}

/// HostPath volumes are forbidden (superseded by `restrictedVolumes` at restricted).
fn host_path_volumes(pod: &Pod<'_>) -> Option<Failure> {
    let bad: Vec<String> =
        volumes(pod).iter().filter(|v| field(v, &["hostPath"]).is_some()).map(container_name).collect();
    if bad.is_empty() {
        return None;
    }
    fail("hostPath volumes", format!("{} {}", pluralize("volume", "volumes", bad.len()), join_quote(&bad)))
}

/// Host ports: every `ports[*].hostPort` must be unset or 0.
fn host_ports(pod: &Pod<'_>) -> Option<Failure> {
    let mut forbidden = BTreeSet::new();
    let bad = pod.containers_where(|c| {
        let mut valid = true;
        for port in items(field(c, &["ports"])) {
            let Some(host_port) = field(port, &["hostPort"]) else { continue };
            if host_port.as_f64() == Some(0.0) {
                continue;
            }
            valid = false;
            forbidden.insert(match host_port.as_i64() {
                Some(n) => n.to_string(),
                None => text(Some(host_port)),
            });
        }
        !valid
    });
    if bad.is_empty() {
        return None;
    }
    let ports = sorted(&forbidden);
    fail(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

/// Privileged containers are forbidden.
fn privileged(pod: &Pod<'_>) -> Option<Failure> {
    let bad = pod.containers_where(|c| is_true(sc(c, &["privileged"])));
    if bad.is_empty() {
        return None;
    }
    fail("privileged", format!("{} must not set securityContext.privileged=true", containers_phrase(&bad)))
}

/// `/proc` mount type must be unset or `Default`.
fn proc_mount(pod: &Pod<'_>) -> Option<Failure> {
    let mut forbidden = BTreeSet::new();
    let bad = pod.containers_where(|c| match sc(c, &["procMount"]) {
        Some(v) => {
            let t = text(Some(v));
            let bad = t != "Default";
            if bad {
                forbidden.insert(t);
            }
            bad
        }
        None => false,
    });
    if bad.is_empty() {
        return None;
    }
    fail(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&sorted(&forbidden))
        ),
    )
}

const SELINUX_ALLOWED_TYPES: &[&str] =
    &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// SELinux: only the container types may be set, and `user`/`role` must stay empty.
fn se_linux_options(pod: &Pod<'_>) -> Option<Failure> {
    let mut bad_types = BTreeSet::new();
    let mut set_user = false;
    let mut set_role = false;
    let mut valid = |opts: &Value| {
        let mut ok = true;
        let t = text(field(opts, &["type"]));
        if !SELINUX_ALLOWED_TYPES.contains(&t.as_str()) {
            ok = false;
            bad_types.insert(t);
        }
        if !text(field(opts, &["user"])).is_empty() {
            ok = false;
            set_user = true;
        }
        if !text(field(opts, &["role"])).is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut setters = Vec::new();
    if let Some(opts) = pod.pod_sc(&["seLinuxOptions"])
        && !valid(opts)
    {
        setters.push("pod".to_string());
    }
    let bad = pod.containers_where(|c| sc(c, &["seLinuxOptions"]).is_some_and(|opts| !valid(opts)));
    push_containers(&mut setters, &bad);
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        data.push(format!("{} {}", pluralize("type", "types", bad_types.len()), join_quote(&sorted(&bad_types))));
    }
    if set_user {
        data.push("user may not be set".to_string());
    }
    if set_role {
        data.push("role may not be set".to_string());
    }
    fail(
        "seLinuxOptions",
        format!("{} set forbidden securityContext.seLinuxOptions: {}", setters.join(" and "), data.join("; ")),
    )
}

fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// Seccomp at baseline: an explicitly set profile must not be `Unconfined` (or anything but
/// `RuntimeDefault`/`Localhost`); leaving it unset is fine.
fn seccomp_profile_baseline(pod: &Pod<'_>) -> Option<Failure> {
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(profile) = pod.pod_sc(&["seccompProfile"]) {
        let t = text(field(profile, &["type"]));
        if !valid_seccomp(&t) {
            setters.push("pod".to_string());
            bad_values.insert(t);
        }
    }
    let bad = explicitly_bad_seccomp(pod, &mut bad_values);
    push_containers(&mut setters, &bad);
    if setters.is_empty() {
        return None;
    }
    seccomp_explicit_failure(&setters, &bad_values)
}

/// Containers that set a seccomp profile type other than `RuntimeDefault`/`Localhost`.
fn explicitly_bad_seccomp(pod: &Pod<'_>, bad_values: &mut BTreeSet<String>) -> Vec<String> {
    pod.containers_where(|c| match sc(c, &["seccompProfile"]) {
        Some(profile) => {
            let t = text(field(profile, &["type"]));
            let bad = !valid_seccomp(&t);
            if bad {
                bad_values.insert(t);
            }
            bad
        }
        None => false,
    })
}

fn seccomp_explicit_failure(setters: &[String], bad_values: &BTreeSet<String>) -> Option<Failure> {
    fail(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&sorted(bad_values))
        ),
    )
}

/// Sysctls known to be namespaced and isolated per pod (upstream's v1.32 list, the newest in 1.33).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Sysctls: only the safe set; forbidden names are listed in spec order, unquoted, like upstream.
fn sysctls(pod: &Pod<'_>) -> Option<Failure> {
    let forbidden: Vec<String> = items(pod.pod_sc(&["sysctls"]))
        .iter()
        .map(|s| text(field(s, &["name"])))
        .filter(|name| !SAFE_SYSCTLS.contains(&name.as_str()))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    fail("forbidden sysctls", forbidden.join(", "))
}

/// Windows HostProcess containers are forbidden at pod and container level.
fn windows_host_process(pod: &Pod<'_>) -> Option<Failure> {
    let mut setters = Vec::new();
    if is_true(pod.pod_sc(&["windowsOptions", "hostProcess"])) {
        setters.push("pod".to_string());
    }
    let bad = pod.containers_where(|c| is_true(sc(c, &["windowsOptions", "hostProcess"])));
    push_containers(&mut setters, &bad);
    if setters.is_empty() {
        return None;
    }
    fail(
        "hostProcess",
        format!("{} must not set securityContext.windowsOptions.hostProcess=true", setters.join(" and ")),
    )
}

// ---------------------------------------------------------------------------------------------
// Restricted checks
// ---------------------------------------------------------------------------------------------

/// Every container must set `allowPrivilegeEscalation: false` (skipped for Windows pods).
fn allow_privilege_escalation(pod: &Pod<'_>) -> Option<Failure> {
    if pod.is_windows() {
        return None;
    }
    let bad = pod.containers_where(|c| !matches!(sc(c, &["allowPrivilegeEscalation"]), Some(Value::Bool(false))));
    if bad.is_empty() {
        return None;
    }
    fail(
        "allowPrivilegeEscalation != false",
        format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&bad)),
    )
}

/// Every container must drop `ALL` and may add only `NET_BIND_SERVICE` (skipped for Windows pods).
fn capabilities_restricted(pod: &Pod<'_>) -> Option<Failure> {
    if pod.is_windows() {
        return None;
    }
    let mut missing_drop_all = Vec::new();
    let mut adding_forbidden = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in &pod.containers {
        let Some(caps) = sc(c, &["capabilities"]) else {
            missing_drop_all.push(container_name(c));
            continue;
        };
        if !items(field(caps, &["drop"])).iter().any(|d| d.as_str() == Some("ALL")) {
            missing_drop_all.push(container_name(c));
        }
        let mut added_forbidden = false;
        for cap in items(field(caps, &["add"])) {
            let cap = text(Some(cap));
            if cap != "NET_BIND_SERVICE" {
                added_forbidden = true;
                forbidden.insert(cap);
            }
        }
        if added_forbidden {
            adding_forbidden.push(container_name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding_forbidden.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding_forbidden),
            join_quote(&sorted(&forbidden))
        ));
    }
    if details.is_empty() {
        return None;
    }
    fail("unrestricted capabilities", details.join("; "))
}

/// Inline volume sources allowed at restricted.
const ALLOWED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Forbidden volume sources, in the order upstream tests for them when naming the type.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

/// Volumes must use one of the allowed inline sources; anything else (including unknown or
/// missing sources) is reported with its type.
fn restricted_volumes(pod: &Pod<'_>) -> Option<Failure> {
    let mut bad = Vec::new();
    let mut bad_types = BTreeSet::new();
    for v in volumes(pod) {
        if ALLOWED_VOLUME_SOURCES.iter().any(|k| field(v, &[*k]).is_some()) {
            continue;
        }
        bad.push(container_name(v));
        let kind = RESTRICTED_VOLUME_SOURCES.iter().find(|k| field(v, &[**k]).is_some()).copied().unwrap_or("unknown");
        bad_types.insert(kind.to_string());
    }
    if bad.is_empty() {
        return None;
    }
    fail(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("restricted volume type", "restricted volume types", bad_types.len()),
            join_quote(&sorted(&bad_types))
        ),
    )
}

/// `runAsNonRoot: true` at pod level or on every container, and never explicitly `false`.
fn run_as_non_root(pod: &Pod<'_>) -> Option<Failure> {
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    if let Some(v) = pod.pod_sc(&["runAsNonRoot"]) {
        if is_true(Some(v)) {
            pod_non_root = true;
        } else {
            setters.push("pod".to_string());
        }
    }
    let mut implicit = Vec::new();
    let explicit = pod.containers_where(|c| match sc(c, &["runAsNonRoot"]) {
        Some(v) => !is_true(Some(v)),
        None => {
            if !pod_non_root {
                implicit.push(container_name(c));
            }
            false
        }
    });
    push_containers(&mut setters, &explicit);
    if !setters.is_empty() {
        return fail(
            "runAsNonRoot != true",
            format!("{} must not set securityContext.runAsNonRoot=false", setters.join(" and ")),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    fail(
        "runAsNonRoot != true",
        format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&implicit)),
    )
}

fn is_zero(v: Option<&Value>) -> bool {
    v.and_then(Value::as_f64) == Some(0.0)
}

/// `runAsUser` must not be 0 at pod or container level.
fn run_as_user(pod: &Pod<'_>) -> Option<Failure> {
    let mut setters = Vec::new();
    if is_zero(pod.pod_sc(&["runAsUser"])) {
        setters.push("pod".to_string());
    }
    let bad = pod.containers_where(|c| is_zero(sc(c, &["runAsUser"])));
    push_containers(&mut setters, &bad);
    if setters.is_empty() {
        return None;
    }
    fail("runAsUser=0", format!("{} must not set runAsUser=0", setters.join(" and ")))
}

/// Seccomp at restricted: `RuntimeDefault` or `Localhost` must be set at pod level or on every
/// container (skipped for Windows pods).
fn seccomp_profile_restricted(pod: &Pod<'_>) -> Option<Failure> {
    if pod.is_windows() {
        return None;
    }
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    let mut pod_set = false;
    if let Some(profile) = pod.pod_sc(&["seccompProfile"]) {
        let t = text(field(profile, &["type"]));
        if valid_seccomp(&t) {
            pod_set = true;
        } else {
            setters.push("pod".to_string());
            bad_values.insert(t);
        }
    }
    let bad = explicitly_bad_seccomp(pod, &mut bad_values);
    push_containers(&mut setters, &bad);
    if !setters.is_empty() {
        return seccomp_explicit_failure(&setters, &bad_values);
    }
    if pod_set {
        return None;
    }
    let implicit = pod.containers_where(|c| sc(c, &["seccompProfile"]).is_none());
    if implicit.is_empty() {
        return None;
    }
    fail(
        "seccompProfile",
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&implicit)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.check).collect()
    }

    /// A pod that passes every restricted check.
    fn restricted_pod() -> Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c",
                "image": "registry.example/app:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
                }
            }],
            "volumes": [
                {"name": "cm", "configMap": {"name": "x"}},
                {"name": "csi", "csi": {"driver": "d"}},
                {"name": "dapi", "downwardAPI": {}},
                {"name": "ed", "emptyDir": {}},
                {"name": "eph", "ephemeral": {"volumeClaimTemplate": {}}},
                {"name": "img", "image": {"reference": "x"}},
                {"name": "pvc", "persistentVolumeClaim": {"claimName": "x"}},
                {"name": "proj", "projected": {"sources": []}},
                {"name": "sec", "secret": {"secretName": "x"}}
            ]
        })
    }

    /// A one-container pod with the given container securityContext and extra spec fields.
    fn pod_with(container_sc: Value, extra: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "c", "image": "x", "securityContext": container_sc}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        spec
    }

    struct Case {
        id: &'static str,
        level: Level,
        pass_meta: Value,
        metadata: Value,
        pass: Value,
        fail: Value,
        message: &'static str,
    }

    fn cases() -> Vec<Case> {
        let none = json!({});
        vec![
            Case {
                id: "appArmorProfile",
                level: Level::Baseline,
                pass_meta: json!({"annotations": {
                    "container.apparmor.security.beta.kubernetes.io/a": "",
                    "container.apparmor.security.beta.kubernetes.io/b": "runtime/default",
                    "container.apparmor.security.beta.kubernetes.io/c": "localhost/p",
                    "unrelated": "unconfined"
                }}),
                metadata: json!({"annotations": {
                    "container.apparmor.security.beta.kubernetes.io/c": "unconfined",
                    "container.apparmor.security.beta.kubernetes.io/d": "localhost/ok",
                    "unrelated": "unconfined"
                }}),
                pass: pod_with(
                    json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}),
                    json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
                ),
                fail: pod_with(
                    json!({"appArmorProfile": {"type": "Unconfined"}}),
                    json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
                ),
                message: "forbidden AppArmor profiles (pod and container \"c\" and annotation must not set AppArmor \
                          profile type to \"Unconfined\", \
                          \"container.apparmor.security.beta.kubernetes.io/c=\"unconfined\"\")",
            },
            Case {
                id: "capabilities_baseline",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"capabilities": {"add": DEFAULT_CAPABILITIES}}), none.clone()),
                fail: pod_with(json!({"capabilities": {"add": ["SYS_ADMIN", "CHOWN", "NET_RAW"]}}), none.clone()),
                message: "non-default capabilities (container \"c\" must not include \"NET_RAW\", \"SYS_ADMIN\" in \
                          securityContext.capabilities.add)",
            },
            Case {
                id: "hostNamespaces",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({}), json!({"hostNetwork": false, "hostPID": null})),
                fail: pod_with(json!({}), json!({"hostIPC": true, "hostPID": true, "hostNetwork": true})),
                message: "host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)",
            },
            Case {
                id: "hostPathVolumes",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({}), json!({"volumes": [{"name": "v", "emptyDir": {}, "hostPath": null}]})),
                fail: pod_with(
                    json!({}),
                    json!({"volumes": [{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "hostPath": {"path": "/x"}}]}),
                ),
                message: "hostPath volumes (volumes \"a\", \"b\")",
            },
            Case {
                id: "hostPorts",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: json!({"containers": [{"name": "c", "ports": [{"containerPort": 80}, {"containerPort": 81, "hostPort": 0}]}]}),
                fail: json!({"containers": [
                    {"name": "a", "ports": [{"containerPort": 80}]},
                    {"name": "b", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 9, "hostPort": 9}]},
                    {"name": "c", "ports": [{"containerPort": 10, "hostPort": 10}]}
                ]}),
                message: "hostPort (containers \"b\", \"c\" use hostPorts 10, 8080, 9)",
            },
            Case {
                id: "privileged",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"privileged": false}), none.clone()),
                fail: pod_with(json!({"privileged": true}), none.clone()),
                message: "privileged (container \"c\" must not set securityContext.privileged=true)",
            },
            Case {
                id: "procMount",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"procMount": "Default"}), none.clone()),
                fail: pod_with(json!({"procMount": "Unmasked"}), json!({"hostUsers": false})),
                message: "procMount (container \"c\" must not set securityContext.procMount to \"Unmasked\")",
            },
            Case {
                id: "seLinuxOptions",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(
                    json!({"seLinuxOptions": {"type": "container_engine_t", "level": "s0:c1,c2"}}),
                    json!({"securityContext": {"seLinuxOptions": {"type": "container_init_t"}}}),
                ),
                fail: pod_with(
                    json!({"seLinuxOptions": {"type": "spc_t", "role": "r"}}),
                    json!({"securityContext": {"seLinuxOptions": {"user": "u"}}}),
                ),
                message: "seLinuxOptions (pod and container \"c\" set forbidden securityContext.seLinuxOptions: \
                          type \"spc_t\"; user may not be set; role may not be set)",
            },
            Case {
                id: "seccompProfile_baseline",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p"}}), none.clone()),
                fail: pod_with(
                    json!({"seccompProfile": {"type": "Unconfined"}}),
                    json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                ),
                message: "seccompProfile (pod and container \"c\" must not set securityContext.seccompProfile.type \
                          to \"Unconfined\")",
            },
            Case {
                id: "sysctls",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(
                    json!({}),
                    json!({"securityContext": {"sysctls":
                        SAFE_SYSCTLS.iter().map(|n| json!({"name": n, "value": "1"})).collect::<Vec<_>>()}}),
                ),
                fail: pod_with(
                    json!({}),
                    json!({"securityContext": {"sysctls": [
                        {"name": "kernel.msgmax", "value": "1"},
                        {"name": "net.ipv4.tcp_wmem", "value": "4096 87380 16777216"},
                        {"name": "kernel.sem", "value": "1"}
                    ]}}),
                ),
                message: "forbidden sysctls (kernel.msgmax, kernel.sem)",
            },
            Case {
                id: "windowsHostProcess",
                level: Level::Baseline,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(
                    json!({"windowsOptions": {"hostProcess": false}}),
                    json!({"securityContext": {"windowsOptions": {"runAsUserName": "x"}}}),
                ),
                fail: pod_with(
                    json!({"windowsOptions": {"hostProcess": true}}),
                    json!({"securityContext": {"windowsOptions": {"hostProcess": true}}}),
                ),
                message: "hostProcess (pod and container \"c\" must not set \
                          securityContext.windowsOptions.hostProcess=true)",
            },
            Case {
                id: "allowPrivilegeEscalation",
                level: Level::Restricted,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"allowPrivilegeEscalation": false}), none.clone()),
                fail: json!({"initContainers": [{"name": "i", "securityContext": {"allowPrivilegeEscalation": true}}],
                             "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false}}],
                             "ephemeralContainers": [{"name": "e"}]}),
                message: "allowPrivilegeEscalation != false (containers \"i\", \"e\" must set \
                          securityContext.allowPrivilegeEscalation=false)",
            },
            Case {
                id: "capabilities_restricted",
                level: Level::Restricted,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}), none.clone()),
                fail: pod_with(
                    json!({"capabilities": {"drop": ["NET_RAW"], "add": ["NET_BIND_SERVICE", "CHOWN"]}}),
                    none.clone(),
                ),
                message: "unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]; \
                          container \"c\" must not include \"CHOWN\" in securityContext.capabilities.add)",
            },
            Case {
                id: "restrictedVolumes",
                level: Level::Restricted,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: restricted_pod(),
                fail: pod_with(
                    json!({}),
                    json!({"volumes": [
                        {"name": "ok", "emptyDir": {}},
                        {"name": "a", "nfs": {"server": "s", "path": "/"}},
                        {"name": "b", "hostPath": {"path": "/"}},
                        {"name": "c", "somethingNew": {}}
                    ]}),
                ),
                message: "restricted volume types (volumes \"a\", \"b\", \"c\" use restricted volume types \
                          \"hostPath\", \"nfs\", \"unknown\")",
            },
            Case {
                id: "runAsNonRoot",
                level: Level::Restricted,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"runAsNonRoot": true}), none.clone()),
                fail: pod_with(json!({"runAsNonRoot": false}), json!({"securityContext": {"runAsNonRoot": true}})),
                message: "runAsNonRoot != true (container \"c\" must not set securityContext.runAsNonRoot=false)",
            },
            Case {
                id: "runAsUser",
                level: Level::Restricted,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"runAsUser": 1000}), json!({"securityContext": {"runAsUser": 1}})),
                fail: pod_with(json!({"runAsUser": 0}), json!({"securityContext": {"runAsUser": 0}})),
                message: "runAsUser=0 (pod and container \"c\" must not set runAsUser=0)",
            },
            Case {
                id: "seccompProfile_restricted",
                level: Level::Restricted,
                pass_meta: none.clone(),
                metadata: none.clone(),
                pass: pod_with(json!({"seccompProfile": {"type": "RuntimeDefault"}}), none.clone()),
                fail: json!({"securityContext": {"seccompProfile": null},
                             "containers": [{"name": "a", "securityContext": {"seccompProfile": {"type": "Localhost"}}},
                                            {"name": "b"}]}),
                message: "seccompProfile (pod or container \"b\" must set securityContext.seccompProfile.type to \
                          \"RuntimeDefault\" or \"Localhost\")",
            },
        ]
    }

    #[test]
    fn each_check_passes_and_fails_at_its_level() {
        let cases = cases();
        let listed: BTreeSet<&str> = cases.iter().map(|c| c.id).collect();
        let registered: BTreeSet<&str> = CHECKS.iter().map(|c| c.id).collect();
        assert_eq!(listed, registered, "every registered check needs a table row");
        for case in &cases {
            let passing = check(case.level, &case.pass_meta, &case.pass);
            assert!(!ids(&passing).contains(&case.id), "{}: passing pod flagged: {passing:?}", case.id);
            let failing = check(case.level, &case.metadata, &case.fail);
            let hit = failing.iter().find(|v| v.check == case.id);
            assert_eq!(hit.map(|v| v.message.as_str()), Some(case.message), "{}: {failing:?}", case.id);
            if case.level == Level::Restricted {
                let at_baseline = check(Level::Baseline, &case.metadata, &case.fail);
                assert!(!ids(&at_baseline).contains(&case.id), "{}: restricted check ran at baseline", case.id);
            }
            assert!(check(Level::Privileged, &case.metadata, &case.fail).is_empty());
        }
    }

    #[test]
    fn restricted_compliant_pod_passes_restricted() {
        assert_eq!(check(Level::Restricted, &json!({}), &restricted_pod()), vec![]);
        assert_eq!(check(Level::Baseline, &Value::Null, &restricted_pod()), vec![]);
    }

    #[test]
    fn privileged_pod_with_host_root_fails_baseline() {
        let spec = json!({
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true},
                            "volumeMounts": [{"name": "root", "mountPath": "/host"}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]
        });
        let v = check(Level::Baseline, &json!({}), &spec);
        assert_eq!(ids(&v), vec!["hostPathVolumes", "privileged"]);
        assert_eq!(
            summary(Level::Baseline, &v),
            "\"baseline:latest\": hostPath volumes (volume \"root\"), \
             privileged (container \"c\" must not set securityContext.privileged=true)"
        );
        // At restricted, restrictedVolumes supersedes hostPathVolumes.
        let r = check(Level::Restricted, &json!({}), &spec);
        assert!(ids(&r).contains(&"restrictedVolumes") && !ids(&r).contains(&"hostPathVolumes"), "{r:?}");
        assert!(check(Level::Privileged, &json!({}), &spec).is_empty());
    }

    #[test]
    fn default_pod_passes_baseline_and_fails_restricted_with_upstream_text() {
        let spec = json!({"containers": [{"name": "c", "image": "nginx"}]});
        assert_eq!(check(Level::Baseline, &json!({}), &spec), vec![]);
        let v = check(Level::Restricted, &json!({}), &spec);
        assert_eq!(
            ids(&v),
            vec!["allowPrivilegeEscalation", "capabilities_restricted", "runAsNonRoot", "seccompProfile_restricted"]
        );
        // What `kubectl run` prints against a `restricted` namespace (upstream admission message).
        let expected = r#""restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#;
        assert_eq!(summary(Level::Restricted, &v), expected);
    }

    #[test]
    fn restricted_order_is_baseline_then_restricted_by_id() {
        let spec = json!({
            "hostNetwork": true,
            "securityContext": {"runAsUser": 0, "sysctls": [{"name": "kernel.msgmax"}]},
            "containers": [{"name": "c", "securityContext": {
                "privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}, "seccompProfile": {"type": "Unconfined"}
            }}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]
        });
        let expected_restricted = vec![
            "hostNamespaces",
            "privileged",
            "sysctls",
            "allowPrivilegeEscalation",
            "capabilities_restricted",
            "restrictedVolumes",
            "runAsNonRoot",
            "runAsUser",
            "seccompProfile_restricted",
        ];
        assert_eq!(ids(&check(Level::Restricted, &json!({}), &spec)), expected_restricted);
        let expected_baseline = vec![
            "capabilities_baseline",
            "hostNamespaces",
            "hostPathVolumes",
            "privileged",
            "seccompProfile_baseline",
            "sysctls",
        ];
        assert_eq!(ids(&check(Level::Baseline, &json!({}), &spec)), expected_baseline);
    }

    #[test]
    fn windows_pods_skip_linux_only_restricted_checks() {
        let spec = json!({"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": true},
                          "containers": [{"name": "c"}]});
        assert_eq!(check(Level::Restricted, &json!({}), &spec), vec![]);
    }

    #[test]
    fn upstream_detail_strings() {
        // Multi-container details taken from upstream's unit tests.
        let spec = json!({"containers": [
            {"name": "a", "securityContext": {"capabilities": {"add": ["FOO", "BAR"]}}},
            {"name": "b", "securityContext": {"capabilities": {"add": ["BAZ"]}}},
            {"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}}
        ]});
        let r = check(Level::Restricted, &json!({}), &spec);
        let caps = r.iter().find(|v| v.check == "capabilities_restricted").map(|v| v.message.as_str());
        assert_eq!(
            caps,
            Some(
                r#"unrestricted capabilities (containers "a", "b" must set securityContext.capabilities.drop=["ALL"]; containers "a", "b", "c" must not include "BAR", "BAZ", "CHOWN", "FOO" in securityContext.capabilities.add)"#
            )
        );
        let b = check(Level::Baseline, &json!({}), &spec);
        assert_eq!(
            b[0].message,
            r#"non-default capabilities (containers "a", "b" must not include "BAR", "BAZ", "FOO" in securityContext.capabilities.add)"#
        );

        let spec = json!({"securityContext": {"runAsNonRoot": false},
                          "containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsNonRoot": false}}]});
        let r = check(Level::Restricted, &json!({}), &spec);
        let m = r.iter().find(|v| v.check == "runAsNonRoot").map(|v| v.message.as_str());
        assert_eq!(
            m,
            Some(r#"runAsNonRoot != true (pod and container "b" must not set securityContext.runAsNonRoot=false)"#)
        );

        let spec = json!({"containers": [{"name": "a"}, {"name": "b"}]});
        let r = check(Level::Restricted, &json!({}), &spec);
        let m = r.iter().find(|v| v.check == "runAsNonRoot").map(|v| v.message.as_str());
        assert_eq!(
            m,
            Some(r#"runAsNonRoot != true (pod or containers "a", "b" must set securityContext.runAsNonRoot=true)"#)
        );

        // AppArmor annotation-only case mirrors upstream's test (keys sorted, values %q-quoted).
        let md = json!({"annotations": {
            "container.apparmor.security.beta.kubernetes.io/f": "unknown",
            "container.apparmor.security.beta.kubernetes.io/": "bogus",
            "container.apparmor.security.beta.kubernetes.io/a": "",
            "container.apparmor.security.beta.kubernetes.io/b": "runtime/default",
            "container.apparmor.security.beta.kubernetes.io/c": "localhost/",
            "container.apparmor.security.beta.kubernetes.io/e": "unconfined"
        }});
        let b = check(Level::Baseline, &md, &json!({}));
        assert_eq!(
            b[0].message,
            r#"forbidden AppArmor profiles (annotations must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/="bogus"", "container.apparmor.security.beta.kubernetes.io/e="unconfined"", "container.apparmor.security.beta.kubernetes.io/f="unknown"")"#
        );
    }

    #[test]
    fn nulls_and_empty_specs_are_like_absent_fields() {
        assert_eq!(check(Level::Restricted, &Value::Null, &Value::Null), vec![]);
        let spec = json!({"securityContext": null, "containers": [{"name": "c", "securityContext": {
            "privileged": null, "procMount": null, "seccompProfile": null, "capabilities": null
        }}], "volumes": null});
        assert_eq!(check(Level::Baseline, &json!({"annotations": null}), &spec), vec![]);
        // An explicitly empty profile type is invalid, as in Go (type "").
        let spec = pod_with(json!({"seccompProfile": {}}), json!({}));
        let v = check(Level::Baseline, &json!({}), &spec);
        assert_eq!(
            v[0].message,
            r#"seccompProfile (container "c" must not set securityContext.seccompProfile.type to "")"#
        );
    }

    #[test]
    fn level_parse_and_as_str_round_trip() {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert_eq!(Level::parse(level.as_str()), Some(level));
        }
        assert_eq!(Level::parse("Restricted"), None);
        assert_eq!(Level::parse(""), None);
    }

    #[test]
    fn pod_spec_of_finds_templates() {
        let template = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}});
        let with_spec_template = json!({"metadata": {"name": "w"}, "spec": {"template": template}});
        for kind in ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "ReplicationController"] {
            assert_eq!(
                pod_spec_of(kind, &with_spec_template),
                Some((&template["metadata"], &template["spec"])),
                "{kind}"
            );
        }
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": template}}}});
        assert_eq!(pod_spec_of("CronJob", &cron), Some((&template["metadata"], &template["spec"])));
        let pt = json!({"template": template});
        assert_eq!(pod_spec_of("PodTemplate", &pt), Some((&template["metadata"], &template["spec"])));
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(pod_spec_of("Pod", &pod), Some((&pod["metadata"], &pod["spec"])));
        assert_eq!(pod_spec_of("Pod", &json!({})), Some((&Value::Null, &Value::Null)));
        assert_eq!(pod_spec_of("ReplicationController", &json!({"spec": {}})), None);
        assert_eq!(pod_spec_of("Service", &pod), None);
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote("restricted:latest"), "\"restricted:latest\"");
        assert_eq!(go_quote("a\"b\\c\n\t\u{1}\u{7f}é\u{a0}\u{200b}"), r#""a\"b\\c\n\t\x01\x7fé\u00a0\u200b""#);
    }
}
