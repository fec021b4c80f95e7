//! `bramble check-config`: can this machine run a bramble node? One line per check and a
//! `fix:` line for each problem, so a user learns about a disabled memory cgroup or a missing
//! kernel module before a pod fails to start (what k3s's `check-config` script does for k3s).
//!
//! Every check reads the kernel's view of the machine (`proc/`, `sys/`, `lib/modules/`,
//! `boot/`) under a root directory: `/`, or with the hidden `--root` a recorded tree, which is
//! how the tests feed fixtures. The few checks that need a live system call (`openat2`, the
//! clock, the page size, free space, `nft` on the PATH) run only when the root is `/` and are
//! reported as skipped otherwise. Called by `cli` for the subcommand; calls only `sys::arch`.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// `bramble check-config` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckConfigArgs {
    /// The node's data directory: the file system holding it is checked for space and wear.
    #[arg(long, short = 'd', default_value = "/var/lib/bramble")]
    data_dir: PathBuf,
    /// A directory holding a recorded proc/, sys/, etc/ tree to check instead of this machine
    /// (for tests); the checks that need live system calls are then skipped.
    #[arg(long, hide = true, default_value = "/")]
    root: PathBuf,
}

const GIB: u64 = 1 << 30;
/// Below this much free space under the data dir, images no longer fit: a failure.
const MIN_FREE_BYTES: u64 = GIB;
/// Below this much, a few image pulls fill the disk: a warning.
const LOW_FREE_BYTES: u64 = 4 * GIB;
/// Below this much memory, bramble runs but leaves little for pods.
const LOW_MEMORY_BYTES: u64 = GIB;
/// The oldest kernel bramble runs on at all.
const MIN_KERNEL: (u32, u32) = (5, 4);
/// The kernel with `openat2` and the overlayfs features bramble uses.
const GOOD_KERNEL: (u32, u32) = (5, 6);
/// The namespaces every pod is put in.
const NAMESPACES: [&str; 7] = ["mnt", "uts", "ipc", "pid", "net", "user", "cgroup"];

/// How one check came out; any `Fail` makes the command exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Warn,
    Fail,
    Skipped,
}

/// One line of the report, with what to do about it when it is not ok.
#[derive(Debug, Clone)]
struct Finding {
    name: &'static str,
    outcome: Outcome,
    detail: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(name: &'static str, detail: impl Into<String>) -> Finding {
        Finding { name, outcome: Outcome::Ok, detail: detail.into(), fix: None }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { name, outcome: Outcome::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { name, outcome: Outcome::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
    /// A file the check needs could not be read: reported, never a panic.
    fn unreadable(name: &'static str, error: String) -> Finding {
        Finding::warn(name, error, "run check-config as root on the node itself, with /proc and /sys mounted")
    }
}

/// The machine under check: the running one when `root` is `/`, else a recorded tree.
struct Host {
    root: PathBuf,
}

impl Host {
    fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }
    /// The file's text, or a message naming the file and why it could not be read.
    fn read(&self, rel: &str) -> Result<String, String> {
        let path = self.path(rel);
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
    /// A check that needs system calls on this machine, or a skip line for a recorded tree.
    fn live_only(&self, name: &'static str, check: impl FnOnce() -> Finding) -> Finding {
        if self.is_live() {
            return check();
        }
        Finding {
            name,
            outcome: Outcome::Skipped,
            detail: "needs the live machine (--root is not /)".into(),
            fix: None,
        }
    }
}

/// Every check's finding, in report order, under a header naming the kernel.
struct Report {
    header: String,
    findings: Vec<Finding>,
}

/// Runs every check and prints the report: exit 0 when nothing failed (warnings allowed), 1
/// otherwise, so install scripts can stop before starting a node that cannot work.
pub fn run(args: CheckConfigArgs) -> ExitCode {
    let report = check(&Host { root: args.root }, &args.data_dir);
    print!("{}", report.render());
    if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn check(host: &Host, data_dir: &Path) -> Report {
    let release = host.read("proc/sys/kernel/osrelease").map(|r| r.trim().to_string());
    let modules = Modules::load(host, release.as_deref().ok());
    let data_dir = data_dir_on_host(host, data_dir);
    let arch = if host.is_live() {
        std::env::consts::ARCH.to_string()
    } else {
        format!("recorded tree {}", host.root.display())
    };
    let header = format!("bramble check-config (kernel {}, {arch})", release.as_deref().unwrap_or("unknown"));
    let mut findings = vec![
        kernel_version(&release),
        host.live_only("architecture", || {
            Finding::ok("architecture", format!("{} (Kubernetes arch {})", std::env::consts::ARCH, crate::sys::arch()))
        }),
        memory(host),
        host.live_only("page size", || {
            // `c_long`: 32 bits on 32-bit ARM.
            #[allow(clippy::useless_conversion, reason = "i32 on 32-bit targets")]
            let bytes = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map(i64::from);
            page_size_finding(bytes)
        }),
    ];
    findings.extend(cgroups(host));
    findings.extend([
        namespaces(host),
        user_namespaces(host),
        overlayfs(host, &modules),
        host.live_only("openat2", openat2_support),
        host.live_only("nft command", nft_command),
        modules.check(&NF_TABLES),
        modules.check(&VXLAN),
        modules.check(&BRIDGE),
        modules.check(&VETH),
        host.live_only("clock", clock),
        host.live_only("data dir space", || free_space(&data_dir)),
        data_dir_disk(host, &data_dir),
    ]);
    Report { header, findings }
}

impl Report {
    fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.outcome == Outcome::Fail)
    }

    fn render(&self) -> String {
        let width = self.findings.iter().map(|f| f.name.len()).max().unwrap_or(0) + 2;
        let mut out = format!("{}\n", self.header);
        for f in &self.findings {
            let label = match f.outcome {
                Outcome::Ok => "ok",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
                Outcome::Skipped => "skip",
            };
            out.push_str(&format!("  {label:<6}{:<width$}{}\n", f.name, f.detail));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("        fix: {fix}\n"));
            }
        }
        let count = |o: Outcome| self.findings.iter().filter(|f| f.outcome == o).count();
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        out.push_str(&format!(
            "{}, {}",
            plural(count(Outcome::Warn), "warning"),
            plural(count(Outcome::Fail), "failure")
        ));
        match count(Outcome::Skipped) {
            0 => out.push('\n'),
            n => out.push_str(&format!(", {n} skipped\n")),
        }
        out
    }
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= GIB { format!("{:.1} GiB", bytes as f64 / GIB as f64) } else { format!("{} MiB", bytes >> 20) }
}

/// `6.12.34+rpt-rpi-2712` -> (6, 12, 34).
fn parse_kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let numeric = release.split(|c: char| !c.is_ascii_digit() && c != '.').next()?;
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

fn kernel_version(release: &Result<String, String>) -> Finding {
    const NAME: &str = "kernel version";
    let fix = "install a newer kernel (Raspberry Pi OS, Debian: sudo apt full-upgrade, then reboot)";
    let release = match release {
        Ok(r) => r,
        Err(e) => return Finding::fail(NAME, e.clone(), "run check-config on Linux, with /proc mounted"),
    };
    let Some((major, minor, patch)) = parse_kernel_version(release) else {
        return Finding::warn(NAME, format!("cannot parse the release {release:?}"), fix);
    };
    let version = format!("{major}.{minor}.{patch}");
    if (major, minor) < MIN_KERNEL {
        Finding::fail(NAME, format!("{version} (bramble needs >= 5.4)"), fix)
    } else if (major, minor) < GOOD_KERNEL {
        Finding::warn(NAME, format!("{version} (openat2 and the overlayfs features bramble uses need >= 5.6)"), fix)
    } else {
        Finding::ok(NAME, format!("{version} (>= 5.6)"))
    }
}

fn memory(host: &Host) -> Finding {
    const NAME: &str = "memory";
    let meminfo = match host.read("proc/meminfo") {
        Ok(m) => m,
        Err(e) => return Finding::unreadable(NAME, e),
    };
    let total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    match total_kib.map(|k| k * 1024) {
        None => Finding::unreadable(NAME, "no MemTotal line in proc/meminfo".into()),
        Some(bytes) if bytes < LOW_MEMORY_BYTES => Finding::warn(
            NAME,
            human_bytes(bytes),
            "bramble fits, but leaves little room for pods: prefer a board with 1 GiB or more, or run only an agent here",
        ),
        Some(bytes) => Finding::ok(NAME, human_bytes(bytes)),
    }
}

fn page_size_finding(bytes: Option<i64>) -> Finding {
    const NAME: &str = "page size";
    match bytes {
        Some(4096) => Finding::ok(NAME, "4K"),
        Some(16384) => Finding::warn(
            NAME,
            "16K (the Pi 5's kernel_2712)",
            "16K pages (Pi 5 kernel_2712): fine for bramble; some images built for 4K pages (e.g. jemalloc-linked \
             software) crash — set kernel=kernel8.img in config.txt to use 4K pages",
        ),
        Some(n) => Finding::warn(
            NAME,
            format!("{}K", n / 1024),
            "fine for bramble; some images built for 4K pages (e.g. jemalloc-linked software) crash: boot a kernel \
             with 4K pages",
        ),
        None => Finding::warn(NAME, "unknown (sysconf failed)", "check that this is a Linux system"),
    }
}

/// The file the Raspberry Pi firmware reads the kernel command line from on this machine.
fn cmdline_txt(host: &Host) -> &'static str {
    if !host.exists("boot/firmware/cmdline.txt") && host.exists("boot/cmdline.txt") {
        return "/boot/cmdline.txt";
    }
    "/boot/firmware/cmdline.txt"
}

/// What to do about a disabled memory controller, from the kernel command line's order: the
/// kernel applies `cgroup_disable=`/`cgroup_enable=` in order, so the later one wins. Since
/// kernel 6.12 the Raspberry Pi firmware adds `cgroup_disable=memory` itself
/// (raspberrypi/linux#6980), and only a `cgroup_enable=memory` after it turns the controller on.
fn memory_cgroup_fix(cmdline: &str, cmdline_txt: &str) -> String {
    let names_memory =
        |word: &str, key: &str| word.strip_prefix(key).is_some_and(|v| v.split(',').any(|c| c == "memory"));
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let last_disable = words.iter().rposition(|w| names_memory(w, "cgroup_disable="));
    let last_enable = words.iter().rposition(|w| names_memory(w, "cgroup_enable="));
    let add = format!(
        "add `cgroup_memory=1 cgroup_enable=memory` at the end of the single line of {cmdline_txt}, and reboot"
    );
    match (last_disable, last_enable) {
        (Some(d), Some(e)) if d > e => format!(
            "`cgroup_disable=memory` comes after the last `cgroup_enable=memory` in /proc/cmdline, and the later one \
             wins (Raspberry Pi kernel 6.12: the firmware adds cgroup_disable=memory, raspberrypi/linux#6980): make \
             `cgroup_enable=memory` the last word of the single line of {cmdline_txt}, remove any cgroup_disable=memory \
             there, and reboot"
        ),
        (Some(_), None) => format!(
            "`cgroup_disable=memory` is on the kernel command line and no `cgroup_enable=memory` follows it (Raspberry \
             Pi kernel 6.12: the firmware adds cgroup_disable=memory, and only a later cgroup_enable=memory wins, \
             raspberrypi/linux#6980): {add}"
        ),
        (None, Some(_)) | (Some(_), Some(_)) => "`cgroup_enable=memory` is already the last word about memory on the \
             kernel command line: this kernel was built without the memory controller (CONFIG_MEMCG); install one with it"
            .to_string(),
        (None, None) => format!("{add} (Raspberry Pi kernels ship with the memory cgroup off)"),
    }
}

/// What the kernel offers of one cgroup controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Usable,
    /// cgroup v1: enabled, but no hierarchy has it mounted.
    NotMounted,
    /// Listed by the kernel but switched off (v1), or not offered at the root (v2).
    Disabled,
    /// cgroup v1: not in proc/cgroups at all.
    NotInKernel,
}

/// The controllers pods' limits are built on, in the order `cgroup_states` reports them.
const CONTROLLERS: [&str; 3] = ["cpu", "pids", "memory"];

/// The cgroup version in use and the state of each of `CONTROLLERS`: v2 when
/// `cgroup.controllers` exists at the root, else v1 from `proc/cgroups` and the mount table.
fn cgroup_states(host: &Host) -> Result<(&'static str, [Controller; 3]), String> {
    if let Ok(listed) = host.read("sys/fs/cgroup/cgroup.controllers") {
        let state =
            |c: &str| if listed.split_whitespace().any(|w| w == c) { Controller::Usable } else { Controller::Disabled };
        return Ok(("v2", CONTROLLERS.map(state)));
    }
    // `#subsys_name hierarchy num_cgroups enabled`, then `memory 0 95 0` and the like.
    let table = host.read("proc/cgroups")?;
    let mounts = read_mounts(host).unwrap_or_default();
    let state = |c: &str| {
        let row = table.lines().filter(|l| !l.starts_with('#')).find(|l| l.split_whitespace().next() == Some(c));
        let mounted = mounts.iter().any(|m| m.fs_type == "cgroup" && m.options.split(',').any(|o| o == c));
        match row.map(|r| r.split_whitespace().nth(3) == Some("1")) {
            None => Controller::NotInKernel,
            Some(false) => Controller::Disabled,
            Some(true) if mounted => Controller::Usable,
            Some(true) => Controller::NotMounted,
        }
    };
    Ok(("v1", CONTROLLERS.map(state)))
}

/// Two findings: the cgroup version with the cpu and pids controllers, then the memory
/// controller (a failure on its own: pods' memory limits and evictions need it).
fn cgroups(host: &Host) -> [Finding; 2] {
    const NAME: &str = "memory cgroup";
    let (version, [cpu, pids, memory]) = match cgroup_states(host) {
        Ok(states) => states,
        Err(e) => {
            let fix = "boot a kernel with cgroups (CONFIG_CGROUPS) and mount them (systemd does)";
            let detail = format!("no sys/fs/cgroup/cgroup.controllers (v2), and {e}");
            return [Finding::fail("cgroups", detail, fix), Finding::fail(NAME, "no cgroups", fix)];
        }
    };
    let missing: Vec<&str> =
        [("cpu", cpu), ("pids", pids)].into_iter().filter(|(_, s)| *s != Controller::Usable).map(|(c, _)| c).collect();
    let versions = if missing.is_empty() {
        Finding::ok("cgroups", format!("cgroup {version}: cpu, pids"))
    } else {
        Finding::warn(
            "cgroups",
            format!("cgroup {version}: {} not usable", missing.join(", ")),
            "pods' CPU and process limits are not enforced without them: boot a kernel with CONFIG_CGROUP_SCHED and \
             CONFIG_CGROUP_PIDS, without cgroup_disable= for them on the command line",
        )
    };
    let txt = cmdline_txt(host);
    let memory = match memory {
        Controller::Usable => Finding::ok(NAME, format!("enabled (cgroup {version})")),
        Controller::NotMounted => Finding::fail(
            NAME,
            "enabled, but no cgroup v1 hierarchy mounts it",
            format!("boot with cgroup v2: add `systemd.unified_cgroup_hierarchy=1` to the single line of {txt}"),
        ),
        Controller::NotInKernel => Finding::fail(
            NAME,
            "this kernel has no cgroup v1 memory controller (since 6.12 that needs CONFIG_MEMCG_V1)",
            format!(
                "boot with cgroup v2: add `systemd.unified_cgroup_hierarchy=1 cgroup_enable=memory` at the end of \
                 the single line of {txt}, and reboot"
            ),
        ),
        Controller::Disabled => {
            let cmdline = host.read("proc/cmdline").unwrap_or_default();
            let on_cmdline =
                cmdline.split_whitespace().any(|w| w.starts_with("cgroup_disable=") && w.contains("memory"));
            let detail = if on_cmdline { "disabled on the kernel command line" } else { "disabled" };
            Finding::fail(NAME, detail, memory_cgroup_fix(&cmdline, txt))
        }
    };
    [versions, memory]
}

fn namespaces(host: &Host) -> Finding {
    const NAME: &str = "namespaces";
    let missing: Vec<&str> = NAMESPACES
        .into_iter()
        .filter(|ns| host.path(&format!("proc/self/ns/{ns}")).symlink_metadata().is_err())
        .collect();
    if missing.is_empty() {
        return Finding::ok(NAME, NAMESPACES.join(" "));
    }
    Finding::fail(
        NAME,
        format!("missing: {}", missing.join(", ")),
        "every pod runs in its own namespaces: boot a kernel with CONFIG_NAMESPACES and each CONFIG_<NAME>_NS",
    )
}

fn user_namespaces(host: &Host) -> Finding {
    const NAME: &str = "user namespaces";
    let max = match host.read("proc/sys/user/max_user_namespaces") {
        Ok(m) => m,
        Err(e) => return Finding::unreadable(NAME, e),
    };
    match max.trim().parse::<u64>() {
        Ok(n) if n > 0 => Finding::ok(NAME, format!("max_user_namespaces = {n}")),
        _ => Finding::warn(
            NAME,
            format!("disabled (user.max_user_namespaces = {})", max.trim()),
            "sudo sysctl -w user.max_user_namespaces=15000, and set it in /etc/sysctl.d/ to keep it after a reboot",
        ),
    }
}

/// A kernel feature that may come as a module: what its check is called, its build option,
/// where its file sits under `lib/modules/<release>/`, and how bad it is when it is only on
/// disk or missing.
struct KernelModule {
    check: &'static str,
    name: &'static str,
    config: &'static str,
    dirs: &'static [&'static str],
    on_disk: Outcome,
    missing: Outcome,
    fix: &'static str,
}

const OVERLAY: KernelModule = KernelModule {
    check: "overlayfs",
    name: "overlay",
    config: "CONFIG_OVERLAY_FS",
    dirs: &["kernel/fs/overlayfs"],
    on_disk: Outcome::Warn,
    missing: Outcome::Fail,
    fix: "containers' root file systems are overlay mounts: boot a kernel with CONFIG_OVERLAY_FS",
};
const NF_TABLES: KernelModule = KernelModule {
    check: "nf_tables",
    name: "nf_tables",
    config: "CONFIG_NF_TABLES",
    dirs: &["kernel/net/netfilter"],
    on_disk: Outcome::Warn,
    missing: Outcome::Fail,
    fix: "Services, NodePorts and masquerade are nftables rules: boot a kernel with CONFIG_NF_TABLES",
};
const VXLAN: KernelModule = KernelModule {
    check: "vxlan",
    name: "vxlan",
    config: "CONFIG_VXLAN",
    dirs: &["kernel/drivers/net/vxlan", "kernel/drivers/net"],
    on_disk: Outcome::Ok,
    missing: Outcome::Warn,
    fix: "use --flannel-backend host-gw (the nodes must then share one L2 segment)",
};
const BRIDGE: KernelModule = KernelModule {
    check: "bridge",
    name: "bridge",
    config: "CONFIG_BRIDGE",
    dirs: &["kernel/net/bridge"],
    on_disk: Outcome::Ok,
    missing: Outcome::Fail,
    fix: "a node's pods are joined by a Linux bridge: boot a kernel with CONFIG_BRIDGE",
};
const VETH: KernelModule = KernelModule {
    check: "veth",
    name: "veth",
    config: "CONFIG_VETH",
    dirs: &["kernel/drivers/net"],
    on_disk: Outcome::Ok,
    missing: Outcome::Fail,
    fix: "each pod's network interface is one end of a veth pair: boot a kernel with CONFIG_VETH",
};

/// Where a module stands: in the running kernel, or only as a file it could load.
enum ModuleState {
    Loaded,
    BuiltIn,
    OnDisk,
    Missing,
}

/// The kernel's module lists, read once: loaded (`proc/modules`), built in (the build
/// configuration, `modules.builtin`) and on disk (`modules.dep`, the module directories).
struct Modules<'h> {
    host: &'h Host,
    release: String,
    loaded: String,
    config: String,
    builtin: String,
    on_disk: String,
}

impl<'h> Modules<'h> {
    fn load(host: &'h Host, release: Option<&str>) -> Modules<'h> {
        let release = release.unwrap_or("unknown").to_string();
        let read = |rel: &str| host.read(rel).unwrap_or_default();
        // `CONFIG_VETH=y`: from /proc/config.gz where the kernel has it, else Debian's copy in /boot.
        let config = std::fs::File::open(host.path("proc/config.gz"))
            .ok()
            .and_then(|gz| {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).ok().map(|_| text)
            })
            .unwrap_or_else(|| read(&format!("boot/config-{release}")));
        Modules {
            host,
            loaded: read("proc/modules"),
            config,
            builtin: read(&format!("lib/modules/{release}/modules.builtin")),
            on_disk: read(&format!("lib/modules/{release}/modules.dep")),
            release,
        }
    }

    fn state(&self, m: &KernelModule) -> ModuleState {
        // `kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz ...` and the like.
        let lists = |text: &str| {
            text.lines()
                .filter_map(|l| l.split(':').next()?.rsplit('/').next())
                .any(|file| file.strip_prefix(m.name).is_some_and(|rest| rest.starts_with(".ko")))
        };
        let file_in = |dir: &&str| {
            let dir = self.host.path(&format!("lib/modules/{}/{dir}", self.release));
            std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
                e.file_name().to_string_lossy().strip_prefix(m.name).is_some_and(|rest| rest.starts_with(".ko"))
            })
        };
        if self.host.exists(&format!("sys/module/{}", m.name))
            || self.loaded.lines().any(|l| l.split_whitespace().next() == Some(m.name))
        {
            ModuleState::Loaded
        } else if lists(&self.builtin) || self.config.lines().any(|l| l.strip_prefix(m.config) == Some("=y")) {
            ModuleState::BuiltIn
        } else if lists(&self.on_disk) || m.dirs.iter().any(file_in) {
            ModuleState::OnDisk
        } else {
            ModuleState::Missing
        }
    }

    fn check(&self, m: &KernelModule) -> Finding {
        let (outcome, detail, fix) = match self.state(m) {
            ModuleState::Loaded => return Finding::ok(m.check, "loaded"),
            ModuleState::BuiltIn => return Finding::ok(m.check, "built into the kernel"),
            ModuleState::OnDisk => (
                m.on_disk,
                format!("not loaded; {}.ko is available", m.name),
                format!("sudo modprobe {0}, and put `{0}` in /etc/modules-load.d/bramble.conf for later boots", m.name),
            ),
            ModuleState::Missing => (
                m.missing,
                format!("not loaded, not built in, no {}.ko under lib/modules/{}", m.name, self.release),
                m.fix.to_string(),
            ),
        };
        Finding { name: m.check, outcome, detail, fix: (outcome != Outcome::Ok).then_some(fix) }
    }
}

fn overlayfs(host: &Host, modules: &Modules) -> Finding {
    let filesystems = host.read("proc/filesystems").unwrap_or_default();
    if filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        return Finding::ok(OVERLAY.check, "in /proc/filesystems");
    }
    modules.check(&OVERLAY)
}

/// Live: `openat2` with `RESOLVE_IN_ROOT`, which confines image layers to their directory.
fn openat2_support() -> Finding {
    const NAME: &str = "openat2";
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_IN_ROOT);
    match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, "/", how) {
        Ok(fd) => {
            drop(fd);
            Finding::ok(NAME, "available (RESOLVE_IN_ROOT)")
        }
        Err(e) => Finding::warn(
            NAME,
            format!("unavailable: {e}"),
            "image layers are then unpacked with a slower path-checking fallback: use a kernel >= 5.6, and allow \
             openat2 in any seccomp profile bramble runs under",
        ),
    }
}

/// Live: the `nft` binary the agent runs, on the PATH (or in the sbin directories systemd adds).
fn nft_command() -> Finding {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("nft"))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0));
    match found {
        Some(nft) => Finding::ok("nft command", nft.display().to_string()),
        None => Finding::fail(
            "nft command",
            "not found in PATH",
            "apt install nftables (the agent runs nft 1.0.1 or newer for Services, NodePorts and masquerade)",
        ),
    }
}

/// Live: whether NTP (or anything else) has synchronised the clock; Raspberry Pis have no
/// real-time clock, so they boot with a wrong time until it is.
fn clock() -> Finding {
    const NAME: &str = "clock";
    // SAFETY: `timex` is a C struct of integers, for which all zero bytes is a valid value;
    // `modes` = 0 makes the call below only read the clock's state.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `timex` is a valid `timex`, exclusively borrowed for the duration of the call.
    let state = unsafe { libc::adjtimex(&mut timex) };
    if state == -1 {
        return Finding::warn(
            NAME,
            format!("cannot read the clock state: {}", Errno::last()),
            "check the clock by hand",
        );
    }
    if timex.status & libc::STA_UNSYNC != 0 {
        return Finding::warn(
            NAME,
            "the clock is not synchronised",
            "certificates and tokens need a right clock: enable systemd-timesyncd or chrony (Raspberry Pis have no RTC)",
        );
    }
    Finding::ok(NAME, "synchronised")
}

/// Where the data dir is looked up in the mount table: live, its nearest existing ancestor with
/// symlinks resolved; in a recorded tree, the path as given.
fn data_dir_on_host(host: &Host, data_dir: &Path) -> PathBuf {
    if !host.is_live() {
        return data_dir.to_path_buf();
    }
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let existing = absolute.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf())
}

/// Live: free space for images and logs on the data dir's file system.
#[allow(clippy::unnecessary_cast)] // u64 here, but `c_ulong` and `fsblkcnt_t` are 32 bits on 32-bit ARM
fn free_space(path: &Path) -> Finding {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => free_space_finding(path, s.blocks_available() as u64 * s.fragment_size() as u64),
        Err(e) => {
            Finding::warn("data dir space", format!("statvfs {}: {e}", path.display()), "check free space by hand")
        }
    }
}

fn free_space_finding(path: &Path, free_bytes: u64) -> Finding {
    const NAME: &str = "data dir space";
    let detail = format!("{} free on {}", human_bytes(free_bytes), path.display());
    let fix =
        format!("free space on {}, or point --data-dir at a bigger disk: images and logs live there", path.display());
    match free_bytes {
        b if b < MIN_FREE_BYTES => Finding::fail(NAME, detail, fix),
        b if b < LOW_FREE_BYTES => Finding::warn(NAME, detail, fix),
        _ => Finding::ok(NAME, detail),
    }
}

/// One mount: its `major:minor` (mountinfo only), where, what file system, its super options.
#[derive(Debug)]
struct Mount {
    device: Option<String>,
    mount_point: PathBuf,
    fs_type: String,
    options: String,
}

/// `\040` (and the other octal escapes the kernel writes in mount tables) back to bytes.
fn unescape_octal(s: &str) -> PathBuf {
    let bytes = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        if let (b'\\', Some(b)) = (bytes[i], escaped) {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount table from `proc/self/mountinfo`, or from `proc/mounts` (without device numbers).
fn read_mounts(host: &Host) -> Result<Vec<Mount>, String> {
    if let Ok(info) = host.read("proc/self/mountinfo") {
        // `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
        let parse = |line: &str| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                device: Some(left.get(2)?.to_string()),
                mount_point: unescape_octal(left.get(4)?),
                fs_type: right.first()?.to_string(),
                options: right.get(2).unwrap_or(&"").to_string(),
            })
        };
        return Ok(info.lines().filter_map(parse).collect());
    }
    // `/dev/root / ext4 rw,noatime 0 0`
    let parse = |line: &str| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (point, fs_type, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        Some(Mount {
            device: None,
            mount_point: unescape_octal(point),
            fs_type: fs_type.to_string(),
            options: options.to_string(),
        })
    };
    Ok(host.read("proc/mounts")?.lines().filter_map(parse).collect())
}

/// The block device `major:minor` names, as (device, whole disk): a partition's disk is the
/// directory above it in `sys/dev/block/M:m`'s link target.
fn block_device(host: &Host, device: &str) -> Option<(String, String)> {
    let rel = format!("sys/dev/block/{device}");
    let target = std::fs::read_link(host.path(&rel)).ok()?;
    let mut names = target.iter().rev().map(|c| c.to_string_lossy().into_owned());
    let name = names.next()?;
    let disk = if host.exists(&format!("{rel}/partition")) { names.next()? } else { name.clone() };
    Some((name, disk))
}

/// The kind of disk under the data dir: an SD card or eMMC wears out under a node's writes.
fn data_dir_disk(host: &Host, data_dir: &Path) -> Finding {
    const NAME: &str = "data dir disk";
    let mounts = match read_mounts(host) {
        Ok(m) => m,
        Err(e) => return Finding::unreadable(NAME, e),
    };
    let mount =
        mounts.iter().filter(|m| data_dir.starts_with(&m.mount_point)).max_by_key(|m| m.mount_point.as_os_str().len());
    let Some(mount) = mount else {
        return Finding::unreadable(NAME, format!("no mount in the mount table holds {}", data_dir.display()));
    };
    let on = format!("{} on {}", mount.fs_type, mount.mount_point.display());
    if mount.fs_type == "tmpfs" {
        return Finding::warn(
            NAME,
            format!("{on}: in memory"),
            "all node state is lost at reboot: use --data-dir on a disk",
        );
    }
    let Some((name, disk)) = mount.device.as_deref().and_then(|d| block_device(host, d)) else {
        return Finding::ok(NAME, format!("{on}, no block device"));
    };
    if disk.starts_with("mmcblk") {
        let kind = match host.read(&format!("sys/block/{disk}/device/type")).unwrap_or_default().trim() {
            "MMC" => "eMMC",
            _ => "SD card",
        };
        let fix = format!("{kind}: expect wear; prefer an SSD over USB for the data dir");
        return Finding::warn(NAME, format!("{kind} {name}, {on}"), fix);
    }
    match host.read(&format!("sys/block/{disk}/queue/rotational")).map(|r| r.trim() == "1") {
        Ok(true) => Finding::ok(NAME, format!("hdd {name}, {on}")),
        Ok(false) => Finding::ok(NAME, format!("ssd {name}, {on}")),
        Err(_) => Finding::ok(NAME, format!("{name}, {on}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fs::test_support::TempDir;

    /// Every check, in report order: each report names each one once.
    const CHECKS: [&str; 18] = [
        "kernel version",
        "architecture",
        "memory",
        "page size",
        "cgroups",
        "memory cgroup",
        "namespaces",
        "user namespaces",
        "overlayfs",
        "openat2",
        "nft command",
        "nf_tables",
        "vxlan",
        "bridge",
        "veth",
        "clock",
        "data dir space",
        "data dir disk",
    ];

    /// The firmware's part of a Raspberry Pi 5's kernel command line with Raspberry Pi OS's
    /// kernel 6.12 (raspberrypi/linux#6980); cmdline.txt's words follow it.
    const PI_FIRMWARE_CMDLINE: &str = "reboot=w coherent_pool=1M 8250.nr_uarts=1 pci=pcie_bus_safe \
        cgroup_disable=memory numa_policy=interleave smsc95xx.macaddr=2C:CF:67:FB:89:3C \
        vc_mem.mem_base=0x3fc00000 vc_mem.mem_size=0x40000000  console=ttyAMA10,115200 console=tty1 \
        root=PARTUUID=4d8097e2-02 rootfstype=ext4 fsck.repair=yes rootwait";

    const PI_RELEASE: &str = "6.12.34+rpt-rpi-2712";

    /// A recorded machine in a temporary directory, removed when the test ends.
    struct Tree(TempDir);

    impl Tree {
        fn write(&self, rel: &str, text: &str) {
            self.write_bytes(rel, text.as_bytes());
        }
        fn write_bytes(&self, rel: &str, bytes: &[u8]) {
            let path = self.0.path.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        fn remove(&self, rel: &str) {
            std::fs::remove_file(self.0.path.join(rel)).unwrap();
        }
        /// `sys/dev/block/<device>` pointing at `device_dir` (under `sys/devices/`), a partition.
        fn block_device(&self, device: &str, device_dir: &str) {
            self.write(&format!("sys/devices/{device_dir}/partition"), "2\n");
            let link = self.0.path.join(format!("sys/dev/block/{device}"));
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(format!("../../devices/{device_dir}"), link).unwrap();
        }
        fn report(&self) -> Report {
            check(&Host { root: self.0.path.clone() }, Path::new("/var/lib/bramble"))
        }
    }

    fn finding<'r>(report: &'r Report, name: &str) -> &'r Finding {
        report.findings.iter().find(|f| f.name == name).unwrap()
    }

    /// A Raspberry Pi 5 on Raspberry Pi OS with kernel 6.12 and cgroup v2, set up as a node
    /// should be: `cgroup_enable=memory` at the end of cmdline.txt, the root on an NVMe SSD.
    fn raspberry_pi_5(label: &str) -> Tree {
        let t = Tree(TempDir::new(label));
        t.write("proc/sys/kernel/osrelease", &format!("{PI_RELEASE}\n"));
        t.write("proc/cmdline", &format!("{PI_FIRMWARE_CMDLINE} cgroup_memory=1 cgroup_enable=memory\n"));
        t.write(
            "boot/firmware/cmdline.txt",
            "console=tty1 root=PARTUUID=4d8097e2-02 cgroup_memory=1 cgroup_enable=memory\n",
        );
        t.write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
        for ns in NAMESPACES {
            t.write(&format!("proc/self/ns/{ns}"), "");
        }
        t.write("proc/sys/user/max_user_namespaces", "63655\n");
        t.write("proc/filesystems", "nodev\tsysfs\nnodev\ttmpfs\nnodev\tcgroup2\n\text4\nnodev\toverlay\n");
        t.write(
            "proc/modules",
            "nf_tables 294912 0 - Live 0x0000000000000000\nbridge 327680 0 - Live 0x0000000000000000\n\
             stp 49152 1 bridge, Live 0x0000000000000000\n",
        );
        t.write(
            &format!("lib/modules/{PI_RELEASE}/modules.dep"),
            "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n\
             kernel/drivers/net/veth.ko.xz:\nkernel/net/ipv4/udp_tunnel.ko.xz:\n",
        );
        t.write("proc/meminfo", "MemTotal:        8245760 kB\nMemFree:         6022144 kB\n");
        t.write(
            "proc/self/mountinfo",
            "22 1 259:2 / / rw,noatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
             24 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n\
             31 22 259:1 / /boot/firmware rw,relatime shared:2 - vfat /dev/nvme0n1p1 rw,fmask=0022\n",
        );
        t.block_device("259:2", "platform/axi/1000110000.pcie/0001:01:00.0/nvme/nvme0/nvme0n1/nvme0n1p2");
        t.write("sys/block/nvme0n1/queue/rotational", "0\n");
        t
    }

    #[test]
    fn a_well_set_up_pi_passes_and_live_checks_are_skipped() {
        let report = raspberry_pi_5("check-config-ok").report();
        let names: Vec<&str> = report.findings.iter().map(|f| f.name).collect();
        assert_eq!(names, CHECKS);
        let text = report.render();
        assert!(text.ends_with("0 warnings, 0 failures, 6 skipped\n"), "{text}");
        assert!(text.starts_with(&format!("bramble check-config (kernel {PI_RELEASE}, recorded tree ")), "{text}");
        assert!(!report.failed());
        assert_eq!(finding(&report, "memory cgroup").detail, "enabled (cgroup v2)");
        assert_eq!(finding(&report, "vxlan").outcome, Outcome::Ok, "on disk, loaded on first use");
        assert_eq!(finding(&report, "data dir disk").detail, "ssd nvme0n1p2, ext4 on /");
        assert_eq!(finding(&report, "openat2").outcome, Outcome::Skipped);
    }

    #[test]
    fn pi_6_12_with_cgroup_disable_after_enable_fails_with_the_ordering_fix() {
        let tree = raspberry_pi_5("check-config-order");
        let cmdline = format!("{PI_FIRMWARE_CMDLINE} cgroup_enable=memory cgroup_memory=1 cgroup_disable=memory\n");
        tree.write("proc/cmdline", &cmdline);
        tree.write("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io hugetlb pids rdma misc\n");
        let report = tree.report();
        assert!(report.failed());
        let memory = finding(&report, "memory cgroup");
        assert_eq!((memory.outcome, memory.detail.as_str()), (Outcome::Fail, "disabled on the kernel command line"));
        let fix = memory.fix.as_deref().unwrap();
        assert!(fix.contains("`cgroup_disable=memory` comes after the last `cgroup_enable=memory`"), "{fix}");
        assert!(fix.contains("raspberrypi/linux#6980") && fix.contains("/boot/firmware/cmdline.txt"), "{fix}");
        assert!(report.render().contains("  FAIL  memory cgroup"));

        // Without any cgroup_enable=memory, the fix says that no enable follows the disable.
        tree.write("proc/cmdline", &format!("{PI_FIRMWARE_CMDLINE}\n"));
        let report = tree.report();
        let fix = finding(&report, "memory cgroup").fix.clone().unwrap();
        assert!(fix.contains("no `cgroup_enable=memory` follows it"), "{fix}");
        assert!(fix.contains("add `cgroup_memory=1 cgroup_enable=memory` at the end"), "{fix}");
    }

    #[test]
    fn v1_machines_are_read_from_proc_cgroups_and_the_mount_table() {
        let tree = raspberry_pi_5("check-config-v1");
        tree.remove("sys/fs/cgroup/cgroup.controllers");
        tree.write("proc/sys/kernel/osrelease", "5.10.103-v8+\n");
        tree.write(
            "proc/cmdline",
            "coherent_pool=1M 8250.nr_uarts=1 console=tty1 root=PARTUUID=ea7d04d6-02 rootwait\n",
        );
        let table = |memory: &str| {
            format!(
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\ncpu\t3\t60\t1\n\
                 cpuacct\t3\t60\t1\n{memory}pids\t4\t60\t1\n"
            )
        };
        tree.write("proc/cgroups", &table("memory\t5\t80\t1\n"));
        let cgroup_mounts = "22 1 259:2 / / rw,noatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
            33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct\n\
            34 25 0:30 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids\n\
            35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:13 - cgroup cgroup rw,memory\n";
        tree.write("proc/self/mountinfo", cgroup_mounts);
        let report = tree.report();
        assert_eq!(finding(&report, "cgroups").detail, "cgroup v1: cpu, pids");
        assert_eq!(finding(&report, "memory cgroup").outcome, Outcome::Ok);

        // The same from proc/mounts, where mountinfo is missing.
        tree.remove("proc/self/mountinfo");
        tree.write(
            "proc/mounts",
            "/dev/root / ext4 rw,noatime 0 0\ncgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
             cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n",
        );
        assert_eq!(finding(&tree.report(), "memory cgroup").outcome, Outcome::Ok);

        // Disabled (Raspberry Pi kernels before 6.12 did so without a word on the command line).
        tree.write("proc/cgroups", &table("memory\t0\t80\t0\n"));
        let report = tree.report();
        let memory = finding(&report, "memory cgroup");
        assert_eq!(memory.outcome, Outcome::Fail);
        assert!(memory.fix.as_deref().unwrap().contains("add `cgroup_memory=1 cgroup_enable=memory`"));

        // A 6.12 kernel built without CONFIG_MEMCG_V1 lists no v1 memory controller at all.
        tree.write("proc/cgroups", &table(""));
        let report = tree.report();
        let memory = finding(&report, "memory cgroup");
        assert!(memory.detail.contains("CONFIG_MEMCG_V1"), "{}", memory.detail);
        assert!(memory.fix.as_deref().unwrap().contains("systemd.unified_cgroup_hierarchy=1"));
    }

    #[test]
    fn missing_overlay_fails_and_an_overlay_module_warns() {
        let tree = raspberry_pi_5("check-config-overlay");
        tree.write("proc/filesystems", "nodev\tsysfs\nnodev\ttmpfs\n\text4\n");
        let report = tree.report();
        assert!(report.failed());
        let overlay = finding(&report, "overlayfs");
        assert_eq!(overlay.outcome, Outcome::Fail);
        assert!(overlay.fix.as_deref().unwrap().contains("CONFIG_OVERLAY_FS"));

        tree.write(&format!("lib/modules/{PI_RELEASE}/kernel/fs/overlayfs/overlay.ko.xz"), "");
        let report = tree.report();
        let overlay = finding(&report, "overlayfs");
        assert_eq!(overlay.outcome, Outcome::Warn);
        assert!(overlay.fix.as_deref().unwrap().starts_with("sudo modprobe overlay"));
        assert!(!report.failed());
    }

    #[test]
    fn missing_network_modules_fail_except_vxlan_which_warns() {
        let tree = raspberry_pi_5("check-config-net");
        tree.write("proc/modules", "");
        tree.write(&format!("lib/modules/{PI_RELEASE}/modules.dep"), "");
        let report = tree.report();
        assert_eq!(finding(&report, "bridge").outcome, Outcome::Fail);
        assert_eq!(finding(&report, "veth").outcome, Outcome::Fail);
        assert_eq!(finding(&report, "nf_tables").outcome, Outcome::Fail);
        let vxlan = finding(&report, "vxlan");
        assert_eq!(vxlan.outcome, Outcome::Warn);
        assert!(vxlan.fix.as_deref().unwrap().contains("--flannel-backend host-gw"));

        tree.write(&format!("lib/modules/{PI_RELEASE}/modules.builtin"), "kernel/net/bridge/bridge.ko\n");
        assert_eq!(finding(&tree.report(), "bridge").detail, "built into the kernel");

        // Built in and without a sys/module entry, known only from the kernel's configuration.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"CONFIG_VETH=y\nCONFIG_NF_TABLES=m\n").unwrap();
        tree.write_bytes("proc/config.gz", &gz.finish().unwrap());
        let report = tree.report();
        assert_eq!(finding(&report, "veth").detail, "built into the kernel");
        assert_eq!(finding(&report, "nf_tables").outcome, Outcome::Fail, "a module, but not installed");
    }

    #[test]
    fn old_kernels_fail_and_5_4_warns() {
        let tree = raspberry_pi_5("check-config-kernel");
        tree.write("proc/sys/kernel/osrelease", "4.19.118-v7+\n");
        let report = tree.report();
        assert!(report.failed());
        let kernel = finding(&report, "kernel version");
        assert_eq!((kernel.outcome, kernel.detail.as_str()), (Outcome::Fail, "4.19.118 (bramble needs >= 5.4)"));
        tree.write("proc/sys/kernel/osrelease", "5.4.83-v8+\n");
        assert_eq!(finding(&tree.report(), "kernel version").outcome, Outcome::Warn);
        assert_eq!(parse_kernel_version("6.1.0-18-arm64"), Some((6, 1, 0)));
    }

    #[test]
    fn an_sd_card_data_disk_warns_and_a_separate_ssd_mount_does_not() {
        let tree = raspberry_pi_5("check-config-sd");
        tree.write("proc/self/mountinfo", "22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n");
        let mmc = "platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0";
        tree.block_device("179:2", &format!("{mmc}/mmcblk0p2"));
        tree.write("sys/block/mmcblk0/device/type", "SD\n");
        let report = tree.report();
        let disk = finding(&report, "data dir disk");
        assert_eq!((disk.outcome, disk.detail.as_str()), (Outcome::Warn, "SD card mmcblk0p2, ext4 on /"));
        assert!(disk.fix.as_deref().unwrap().starts_with("SD card: expect wear"));

        tree.write("sys/block/mmcblk0/device/type", "MMC\n");
        assert!(finding(&tree.report(), "data dir disk").detail.starts_with("eMMC mmcblk0p2"));

        // The data dir on its own mount (with a space in its mount point) on the SSD.
        tree.write(
            "proc/self/mountinfo",
            "22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
             40 22 259:2 / /var/lib/bramble\\040data rw shared:20 - ext4 /dev/nvme0n1p2 rw\n\
             41 22 259:2 / /var/lib rw shared:21 - ext4 /dev/nvme0n1p2 rw\n",
        );
        let disk = finding(&tree.report(), "data dir disk").clone();
        assert_eq!((disk.outcome, disk.detail.as_str()), (Outcome::Ok, "ssd nvme0n1p2, ext4 on /var/lib"));
        assert_eq!(unescape_octal("/var/lib/bramble\\040data"), Path::new("/var/lib/bramble data"));
    }

    #[test]
    fn thresholds_for_memory_pages_and_free_space() {
        let tree = raspberry_pi_5("check-config-small");
        tree.write("proc/meminfo", "MemTotal:         432136 kB\n");
        assert_eq!(finding(&tree.report(), "memory").outcome, Outcome::Warn);
        assert_eq!(page_size_finding(Some(4096)).outcome, Outcome::Ok);
        let pages_16k = page_size_finding(Some(16384));
        assert!(pages_16k.fix.unwrap().contains("kernel=kernel8.img"));
        assert_eq!(page_size_finding(Some(65536)).outcome, Outcome::Warn);
        let at = Path::new("/var/lib");
        assert_eq!(free_space_finding(at, 512 << 20).outcome, Outcome::Fail);
        assert_eq!(free_space_finding(at, 2 * GIB).outcome, Outcome::Warn);
        assert_eq!(free_space_finding(at, 10 * GIB).detail, "10.0 GiB free on /var/lib");
    }

    #[test]
    fn this_machine_gets_a_report_naming_every_check() {
        let report = check(&Host { root: PathBuf::from("/") }, Path::new("/var/lib/bramble"));
        let names: Vec<&str> = report.findings.iter().map(|f| f.name).collect();
        assert_eq!(names, CHECKS);
        let text = report.render();
        for name in CHECKS {
            assert!(text.contains(&format!("{name}  ")), "{name} missing from\n{text}");
        }
        assert!(text.starts_with("bramble check-config (kernel "), "{text}");
        assert!(text.trim_end().lines().last().unwrap().contains(" warning"), "{text}");
        assert!(!text.contains("skip"), "nothing is skipped on the live machine:\n{text}");
    }
}
