//! The container runtime default seccomp profile (`RuntimeDefault`).
//!
//! This is the allow-list that Docker/moby (`github.com/moby/profiles/seccomp`) and containerd
//! (`contrib/seccomp`) put into `linux.seccomp` of an OCI runtime spec when a container asks for
//! the runtime default profile, rebuilt here as data so the orchestrator can hand it to youki's
//! libcontainer.
//!
//! The profile lists what a container may call, not what it may not: the default action refuses
//! every syscall with `EPERM` and the rules below open the ones a normal workload needs. A syscall
//! that the kernel gains later is therefore refused until someone reviews it and adds it here,
//! instead of being allowed by omission.
//!
//! What is decided where:
//! - [`BASE_ALLOW`]: allowed for every container, on every architecture.
//! - [`PTRACE_SINCE_4_8`]: allowed when the host kernel is 4.8 or newer (from 4.8 on, ptrace can no
//!   longer be used to bypass seccomp), as upstream does.
//! - `socket`, `personality`: allowed only for certain argument values.
//! - per-architecture extras (x86 `arch_prctl`/`modify_ldt`, arm `cacheflush`/`set_tls`, ...).
//! - per-capability extras: a syscall whose only purpose needs a capability is opened when the
//!   container has that capability (`mount` with `CAP_SYS_ADMIN`, `reboot` with `CAP_SYS_BOOT`, ...).
//! - without `CAP_SYS_ADMIN`, `clone` is allowed only without `CLONE_NEW*` flags and `clone3` fails
//!   with `ENOSYS` (its flags live in memory, which seccomp cannot inspect; `ENOSYS` makes libc fall
//!   back to `clone`).
//!
//! Where moby and containerd differ, this follows moby's current profile: `lsm_get_self_attr`,
//! `lsm_list_modules` and `lsm_set_self_attr` need `CAP_SYS_ADMIN` (containerd still allows them to
//! everyone). `riscv_hwprobe` sits with the riscv64 extras (containerd's placement; moby lists it in
//! the base list, which has the same effect because only riscv64 has that syscall).
//!
//! Names that the installed libseccomp does not know (new syscalls, or names of another
//! architecture) are expected to be skipped by the runtime, as runc and youki's libcontainer do.

use serde_json::{Map, Value, json};

/// OCI action that lets a matching syscall run.
const ACT_ALLOW: &str = "SCMP_ACT_ALLOW";
/// OCI action that makes a matching syscall fail with an errno.
const ACT_ERRNO: &str = "SCMP_ACT_ERRNO";

/// Errno of the default action, like upstream: `EPERM` ("operation not permitted").
const EPERM: u32 = libc::EPERM as u32;
/// Errno for `clone3` without `CAP_SYS_ADMIN`: `ENOSYS` ("not implemented") makes glibc and other
/// libcs retry with `clone`, whose flags seccomp can check; `EPERM` would make them give up.
const ENOSYS: u32 = libc::ENOSYS as u32;

/// The namespace-creating `clone` flags a container may only use with `CAP_SYS_ADMIN`:
/// `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
/// CLONE_NEWCGROUP` = `0x7E02_0000`. (`CLONE_NEWTIME` shares its bit with the exit signal in
/// `clone`, so it cannot be used there and is not part of the mask, as upstream.)
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// `AF_ALG` (kernel crypto API sockets). Kernel ABI value from `include/linux/socket.h`.
const AF_ALG: u64 = 38;
/// `AF_VSOCK` (VM sockets). Kernel ABI value; defined here because not every libc target has it.
const AF_VSOCK: u64 = 40;
// The socket rules allow `< AF_ALG`, `== AF_ALG + 1` and `> AF_VSOCK`: that covers every family but
// these two only while exactly one family lies between them.
const _: () = assert!(AF_VSOCK == AF_ALG + 2);

/// `personality(2)` values a container may set or query: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and `0xffffffff` (query only). Everything else, e.g.
/// `ADDR_NO_RANDOMIZE` or `READ_IMPLIES_EXEC`, weakens the process' memory protections and is refused.
const PERSONALITY_VALUES: &[u64] = &[0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// Syscalls every container may use, on every architecture (names of other architectures, such as
/// `chown32` on x86_64, are ignored by libseccomp for the architectures that lack them). The
/// comments give the kernel that added a syscall and the libseccomp that first knows its name.
const BASE_ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat", // kernel v6.5, libseccomp v2.5.5
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2", // kernel v6.6, libseccomp v2.5.5
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue", // kernel v6.7, libseccomp v2.5.5
    "futex_time64",
    "futex_wait", // kernel v6.7, libseccomp v2.5.5
    "futex_waitv",
    "futex_wake", // kernel v6.7, libseccomp v2.5.5
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat", // kernel v6.13, libseccomp v2.6.0
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount", // kernel v6.8, libseccomp v2.6.0
    "listxattr",
    "listxattrat", // kernel v6.13, libseccomp v2.6.0
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack", // kernel v6.6, libseccomp v2.5.5
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal", // kernel v6.10, libseccomp v2.6.0
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat", // kernel v6.13, libseccomp v2.6.0
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat", // kernel v6.13, libseccomp v2.6.0
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount", // kernel v6.8, libseccomp v2.6.0
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe", // kernel v6.11, libseccomp v2.6.0
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed to every container on host kernels 4.8 and newer: before 4.8 a tracer could change the
/// syscall after the seccomp check, so these then need `CAP_SYS_PTRACE` (see [`CAPABILITY_EXTRAS`]).
const PTRACE_SINCE_4_8: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// arm and arm64 (arm64 also runs 32-bit arm binaries): cache maintenance, TLS and the arm
/// spellings of `fadvise64_64`/`sync_file_range`.
const ARM_EXTRAS: &[&str] =
    &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"];
/// x86_64: thread-local storage setup (`arch_prctl`) and the local descriptor table (`modify_ldt`).
const X86_64_EXTRAS: &[&str] = &["arch_prctl", "modify_ldt"];
/// 32-bit x86: `modify_ldt` only (`arch_prctl` is an x86_64 syscall).
const X86_EXTRAS: &[&str] = &["modify_ldt"];
/// ppc64le: the powerpc spelling of `sync_file_range` and user context switching.
const PPC64LE_EXTRAS: &[&str] = &["sync_file_range2", "swapcontext"];
/// s390x: PCI MMIO access and runtime instrumentation.
const S390X_EXTRAS: &[&str] = &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"];
/// riscv64: instruction cache flush and hardware probing (`riscv_hwprobe`: kernel v6.12,
/// libseccomp v2.6.0).
const RISCV64_EXTRAS: &[&str] = &["riscv_flush_icache", "riscv_hwprobe"];

/// Opened by `CAP_SYS_ADMIN`: mounting, namespaces, host names, quotas, fanotify, bpf, perf, the
/// kernel log and LSM attributes. Its presence also lifts the `clone`/`clone3` restrictions.
const SYS_ADMIN_EXTRAS: &[&str] = &[
    "bpf",
    "clone",
    "clone3",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "lookup_dcookie",
    "lsm_get_self_attr", // kernel v6.8, libseccomp v2.6.0
    "lsm_list_modules",  // kernel v6.8, libseccomp v2.6.0
    "lsm_set_self_attr", // kernel v6.8, libseccomp v2.6.0
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "setdomainname",
    "sethostname",
    "setns",
    "syslog",
    "umount",
    "umount2",
    "unshare",
];

/// Syscalls whose only use is what a capability grants, opened when the container holds it. A
/// syscall can appear under several capabilities (`bpf`, `perf_event_open`, `syslog`).
const CAPABILITY_EXTRAS: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_ADMIN", SYS_ADMIN_EXTRAS),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    // set_mempolicy_home_node: kernel v5.17, libseccomp v2.5.4
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The architecture the profile is built for, from Rust's `std::env::consts::ARCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    X86,
    Aarch64,
    Arm,
    Ppc64le,
    Ppc64,
    Ppc,
    S390x,
    Riscv64,
    Mips64,
    Mipsel64,
    Mips,
    Mipsel,
    Loongarch64,
    Other,
}

impl Arch {
    /// `std::env::consts::ARCH` does not carry endianness for `powerpc64` and the mips family; the
    /// orchestrator runs on the host whose containers it starts, so its own build target decides.
    fn from_rust(arch: &str) -> Self {
        let little = cfg!(target_endian = "little");
        match arch {
            "x86_64" => Self::X86_64,
            "x86" => Self::X86,
            "aarch64" => Self::Aarch64,
            "arm" => Self::Arm,
            "powerpc64" if little => Self::Ppc64le,
            "powerpc64" => Self::Ppc64,
            "powerpc" => Self::Ppc,
            "s390x" => Self::S390x,
            "riscv64" => Self::Riscv64,
            "mips64" | "mips64r6" if little => Self::Mipsel64,
            "mips64" | "mips64r6" => Self::Mips64,
            "mips" | "mips32r6" if little => Self::Mipsel,
            "mips" | "mips32r6" => Self::Mips,
            "loongarch64" => Self::Loongarch64,
            _ => Self::Other,
        }
    }

    /// The ABIs the filter covers: the native one plus the compat ABIs the kernel can run, so that
    /// a 32-bit binary cannot dodge the filter. Upstream lists sub-architectures only for the
    /// 64-bit hosts below and leaves the list empty elsewhere, which libseccomp treats as "native
    /// only"; here the native ABI is spelled out instead (libseccomp accepts it as already present).
    fn seccomp_architectures(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            Self::X86 => &["SCMP_ARCH_X86"],
            Self::Aarch64 => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            Self::Arm => &["SCMP_ARCH_ARM"],
            Self::Ppc64le => &["SCMP_ARCH_PPC64LE"],
            Self::Ppc64 => &["SCMP_ARCH_PPC64"],
            Self::Ppc => &["SCMP_ARCH_PPC"],
            Self::S390x => &["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
            Self::Riscv64 => &["SCMP_ARCH_RISCV64"],
            Self::Mips64 => &["SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
            Self::Mipsel64 => &["SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
            Self::Mips => &["SCMP_ARCH_MIPS"],
            Self::Mipsel => &["SCMP_ARCH_MIPSEL"],
            Self::Loongarch64 => &["SCMP_ARCH_LOONGARCH64"],
            Self::Other => &[],
        }
    }

    /// Syscalls that exist only on this architecture and that normal programs there need.
    fn extras(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => X86_64_EXTRAS,
            Self::X86 => X86_EXTRAS,
            Self::Aarch64 | Self::Arm => ARM_EXTRAS,
            Self::Ppc64le => PPC64LE_EXTRAS,
            Self::S390x => S390X_EXTRAS,
            Self::Riscv64 => RISCV64_EXTRAS,
            _ => &[],
        }
    }

    /// Index of the `clone` flags argument: s390 swaps the first two arguments of `clone`.
    fn clone_flags_index(self) -> u64 {
        if self == Self::S390x { 1 } else { 0 }
    }
}

/// Builds the runtime default seccomp profile as the OCI `linux.seccomp` object, for the host's
/// kernel (read with `uname(2)`).
///
/// `arch` is Rust's `std::env::consts::ARCH` ("x86_64", "aarch64", ...); an architecture this
/// module does not know gets no architecture list and no architecture extras. `caps` are the
/// container's capabilities ("CAP_SYS_ADMIN", ...): upstream looks at the bounding set, which is
/// what to pass for the same result. The profile refuses every syscall it does not list, so a
/// syscall added to the kernel later stays refused until reviewed here.
pub fn runtime_default(arch: &str, caps: &[String]) -> Value {
    runtime_default_for_kernel(arch, caps, host_kernel_version())
}

/// Same as [`runtime_default`] for a given kernel `(major, minor)` instead of the host's: the
/// profile depends on the kernel only through `ptrace`, `process_vm_readv` and `process_vm_writev`,
/// allowed to everyone from 4.8 on. `None` (unknown kernel) leaves them to `CAP_SYS_PTRACE`, the
/// cautious choice that containerd also makes.
pub fn runtime_default_for_kernel(arch: &str, caps: &[String], kernel: Option<(u32, u32)>) -> Value {
    let arch = Arch::from_rust(arch);
    let has_cap = |cap: &str| caps.iter().any(|c| c == cap);

    let mut rules = vec![allow(BASE_ALLOW)];
    if kernel.is_some_and(|version| version >= (4, 8)) {
        rules.push(allow(PTRACE_SINCE_4_8));
    }
    rules.extend(socket_rules());
    rules.extend(personality_rules());
    if !arch.extras().is_empty() {
        rules.push(allow(arch.extras()));
    }
    for (cap, names) in CAPABILITY_EXTRAS {
        if has_cap(cap) {
            rules.push(allow(names));
        }
    }
    if !has_cap("CAP_SYS_ADMIN") {
        rules.extend(namespace_creation_rules(arch));
    }

    let mut profile = Map::new();
    profile.insert("defaultAction".into(), ACT_ERRNO.into());
    profile.insert("defaultErrnoRet".into(), EPERM.into());
    let architectures = arch.seccomp_architectures();
    if !architectures.is_empty() {
        profile.insert("architectures".into(), json!(architectures));
    }
    profile.insert("syscalls".into(), Value::Array(rules));
    Value::Object(profile)
}

/// `socket(2)` for every address family but `AF_ALG` (kernel crypto API, a recurring source of
/// kernel bugs) and `AF_VSOCK` (VM sockets, a way out to the hypervisor). One rule per range, since
/// runtimes turn several conditions on the same argument into separate rules (an OR), so
/// `!= AF_ALG && != AF_VSOCK` in one rule would let both through. On ABIs that reach `socket`
/// through `socketcall(2)` (32-bit x86) the families cannot be checked, as upstream notes.
fn socket_rules() -> [Value; 3] {
    [
        allow_if("socket", 0, "SCMP_CMP_LT", AF_ALG),
        allow_if("socket", 0, "SCMP_CMP_EQ", AF_ALG + 1),
        allow_if("socket", 0, "SCMP_CMP_GT", AF_VSOCK),
    ]
}

/// `personality(2)` only for the values in [`PERSONALITY_VALUES`], one rule each.
fn personality_rules() -> impl Iterator<Item = Value> {
    PERSONALITY_VALUES.iter().map(|&value| allow_if("personality", 0, "SCMP_CMP_EQ", value))
}

/// `profile` without the syscall names the installed libseccomp cannot resolve (ones newer
/// than the library): libcontainer would skip them anyway, but says so on the container's
/// own stderr, into its log. Rules left without a name are dropped.
pub fn known_to_libseccomp(mut profile: Value) -> Value {
    if let Some(rules) = profile.get_mut("syscalls").and_then(Value::as_array_mut) {
        for rule in rules.iter_mut() {
            if let Some(names) = rule.get_mut("names").and_then(Value::as_array_mut) {
                names.retain(|n| n.as_str().is_some_and(|n| libseccomp::ScmpSyscall::from_name(n).is_ok()));
            }
        }
        rules.retain(|r| r["names"].as_array().is_some_and(|n| !n.is_empty()));
    }
    profile
}

/// Without `CAP_SYS_ADMIN`: `clone` only when none of [`CLONE_NAMESPACE_FLAGS`] is set, and
/// `clone3` fails with `ENOSYS` so that libc falls back to `clone`.
///
/// The masked comparison is written the way libcontainer 0.7 reads it: the mask in
/// `valueTwo`, the expected result in `value`. (runc reads the OCI fields the other way
/// round; libcontainer runs our containers, and written runc's way its mask would be 0 and
/// the rule would let every `clone` through.)
fn namespace_creation_rules(arch: Arch) -> [Value; 2] {
    let clone = json!({
        "names": ["clone"],
        "action": ACT_ALLOW,
        "args": [{
            "index": arch.clone_flags_index(),
            "value": 0,
            "valueTwo": CLONE_NAMESPACE_FLAGS,
            "op": "SCMP_CMP_MASKED_EQ",
        }],
    });
    let clone3 = json!({ "names": ["clone3"], "action": ACT_ERRNO, "errnoRet": ENOSYS });
    [clone, clone3]
}

/// An unconditional allow rule.
fn allow(names: &[&str]) -> Value {
    json!({ "names": names, "action": ACT_ALLOW })
}

/// An allow rule for one syscall whose argument `index` compares with `op` against `value`.
fn allow_if(name: &str, index: u64, op: &str, value: u64) -> Value {
    json!({
        "names": [name],
        "action": ACT_ALLOW,
        "args": [{ "index": index, "value": value, "valueTwo": 0, "op": op }],
    })
}

/// The host kernel's `(major, minor)`, or `None` if `uname(2)` fails or its release is unreadable.
fn host_kernel_version() -> Option<(u32, u32)> {
    // SAFETY: `utsname` is a plain C struct of byte arrays, valid when zeroed.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable `utsname` that outlives the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: Vec<u8> = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    parse_kernel_release(std::str::from_utf8(&release).ok()?)
}

/// `(major, minor)` of a kernel release such as "6.8.0-45-generic" or "3.12-1-amd64".
fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor.find(|c: char| !c.is_ascii_digit()).unwrap_or(minor.len());
    Some((major, minor[..digits].parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_libseccomp_cannot_resolve_are_left_out() {
        let p = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "not_a_syscall_at_all"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["also_not_a_syscall"], "action": "SCMP_ACT_ALLOW"}]});
        let kept = known_to_libseccomp(p);
        assert_eq!(kept["syscalls"], json!([{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]));
        let full = known_to_libseccomp(runtime_default(std::env::consts::ARCH, &[]));
        assert!(rules(&full).len() > 3, "the real profile survives the filter");
    }

    /// Every Rust `ARCH` value the module maps, plus one it does not.
    const ARCHES: &[&str] = &[
        "x86_64",
        "x86",
        "aarch64",
        "arm",
        "powerpc64",
        "powerpc",
        "s390x",
        "riscv64",
        "mips64",
        "mips",
        "loongarch64",
        "sparc64",
    ];

    /// A modern kernel, so that the `ptrace` group is in.
    const KERNEL: Option<(u32, u32)> = Some((6, 8));

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_string()).collect()
    }

    fn all_caps() -> Vec<String> {
        CAPABILITY_EXTRAS.iter().map(|(cap, _)| (*cap).to_string()).collect()
    }

    fn profile(arch: &str, cap_names: &[&str]) -> Value {
        runtime_default_for_kernel(arch, &caps(cap_names), KERNEL)
    }

    fn rules(profile: &Value) -> &[Value] {
        profile["syscalls"].as_array().expect("syscalls is an array")
    }

    fn names(rule: &Value) -> Vec<&str> {
        rule["names"].as_array().expect("names is an array").iter().map(|n| n.as_str().expect("name")).collect()
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Allow,
        Errno(u64),
    }

    /// Whether one OCI argument condition holds for the syscall arguments `args`, with libseccomp's
    /// libcontainer's reading of it: `SCMP_CMP_MASKED_EQ` is `(arg & valueTwo) == value`.
    fn condition_holds(condition: &Value, args: &[u64]) -> bool {
        let index = usize::try_from(condition["index"].as_u64().expect("index")).expect("small index");
        let arg = args.get(index).copied().unwrap_or(0);
        let value = condition["value"].as_u64().expect("value");
        let value_two = condition["valueTwo"].as_u64().unwrap_or(0);
        match condition["op"].as_str().expect("op") {
            "SCMP_CMP_NE" => arg != value,
            "SCMP_CMP_LT" => arg < value,
            "SCMP_CMP_LE" => arg <= value,
            "SCMP_CMP_EQ" => arg == value,
            "SCMP_CMP_GE" => arg >= value,
            "SCMP_CMP_GT" => arg > value,
            "SCMP_CMP_MASKED_EQ" => arg & value_two == value,
            op => panic!("unknown op {op}"),
        }
    }

    /// What the filter does with `name(args...)`: the action of the rules that match (all
    /// conditions of a rule hold), or the default action.
    fn verdict(profile: &Value, name: &str, args: &[u64]) -> Verdict {
        let matching: Vec<Verdict> = rules(profile)
            .iter()
            .filter(|rule| names(rule).contains(&name))
            .filter(|rule| rule["args"].as_array().is_none_or(|conds| conds.iter().all(|c| condition_holds(c, args))))
            .map(|rule| match rule["action"].as_str().expect("action") {
                ACT_ALLOW => Verdict::Allow,
                ACT_ERRNO => Verdict::Errno(rule["errnoRet"].as_u64().expect("errnoRet")),
                action => panic!("unexpected action {action}"),
            })
            .collect();
        match matching.first() {
            Some(first) => {
                assert!(matching.iter().all(|v| v == first), "{name}: rules disagree: {matching:?}");
                matching.into_iter().next().expect("non-empty")
            }
            None => Verdict::Errno(profile["defaultErrnoRet"].as_u64().expect("defaultErrnoRet")),
        }
    }

    fn allows(profile: &Value, name: &str) -> bool {
        verdict(profile, name, &[]) == Verdict::Allow
    }

    /// Names allowed by unconditional rules.
    fn unconditional(profile: &Value) -> BTreeSet<&str> {
        rules(profile)
            .iter()
            .filter(|rule| rule["action"] == ACT_ALLOW && rule.get("args").is_none())
            .flat_map(names)
            .collect()
    }

    #[test]
    fn x86_64_default_action_is_errno_eperm() {
        let p = profile("x86_64", &[]);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(verdict(&p, "kexec_load", &[]), Verdict::Errno(1));
        assert_eq!(verdict(&p, "no_such_syscall_yet", &[]), Verdict::Errno(1));
    }

    #[test]
    fn x86_64_allows_everyday_syscalls() {
        let p = profile("x86_64", &[]);
        for name in ["read", "write", "openat", "close", "execve", "exit_group", "mmap", "futex", "getpid", "wait4"] {
            assert!(allows(&p, name), "{name} should be allowed");
        }
    }

    #[test]
    fn clone3_fails_with_enosys_without_sys_admin() {
        let p = profile("x86_64", &[]);
        assert_eq!(verdict(&p, "clone3", &[]), Verdict::Errno(38));
        let rule = rules(&p).iter().find(|rule| names(rule) == ["clone3"]).expect("clone3 rule");
        assert_eq!(rule["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rule["errnoRet"], 38);
    }

    #[test]
    fn sys_admin_allows_clone3_and_namespace_flags() {
        let p = profile("x86_64", &["CAP_SYS_ADMIN"]);
        assert_eq!(verdict(&p, "clone3", &[]), Verdict::Allow);
        assert_eq!(verdict(&p, "clone", &[libc::CLONE_NEWUSER as u64]), Verdict::Allow);
        assert!(rules(&p).iter().all(|rule| rule["action"] == ACT_ALLOW), "no ERRNO rule is left with CAP_SYS_ADMIN");
    }

    #[test]
    fn clone_mask_is_the_namespace_flags() {
        assert_eq!(CLONE_NAMESPACE_FLAGS, 2_114_060_288);
        assert_eq!(CLONE_NAMESPACE_FLAGS, 0x7E02_0000);
        let p = profile("x86_64", &[]);
        let clone: Vec<&Value> = rules(&p).iter().filter(|rule| names(rule) == ["clone"]).collect();
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            clone[0]["args"],
            json!([{ "index": 0, "value": 0, "valueTwo": 2_114_060_288_u64, "op": "SCMP_CMP_MASKED_EQ" }])
        );
    }

    #[test]
    fn clone_refuses_each_namespace_flag_and_allows_fork_and_threads() {
        let p = profile("x86_64", &[]);
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(verdict(&p, "clone", &[fork]), Verdict::Allow);
        assert_eq!(verdict(&p, "clone", &[thread]), Verdict::Allow);
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(verdict(&p, "clone", &[fork | flag as u64]), Verdict::Errno(1), "flag {flag:#x}");
        }
    }

    #[test]
    fn s390x_checks_clone_flags_in_second_argument() {
        let p = profile("s390x", &[]);
        let clone = rules(&p).iter().find(|rule| names(rule) == ["clone"]).expect("clone rule");
        assert_eq!(clone["args"][0]["index"], 1);
        assert_eq!(verdict(&p, "clone", &[0, libc::CLONE_NEWUSER as u64]), Verdict::Errno(1));
        assert_eq!(verdict(&p, "clone", &[0, libc::SIGCHLD as u64]), Verdict::Allow);
    }

    #[test]
    fn privileged_syscalls_need_their_capability() {
        let cases = [
            ("mount", "CAP_SYS_ADMIN"),
            ("umount2", "CAP_SYS_ADMIN"),
            ("unshare", "CAP_SYS_ADMIN"),
            ("setns", "CAP_SYS_ADMIN"),
            ("sethostname", "CAP_SYS_ADMIN"),
            ("fsopen", "CAP_SYS_ADMIN"),
            ("lsm_set_self_attr", "CAP_SYS_ADMIN"),
            ("bpf", "CAP_SYS_ADMIN"),
            ("bpf", "CAP_BPF"),
            ("perf_event_open", "CAP_SYS_ADMIN"),
            ("perf_event_open", "CAP_PERFMON"),
            ("syslog", "CAP_SYS_ADMIN"),
            ("syslog", "CAP_SYSLOG"),
            ("init_module", "CAP_SYS_MODULE"),
            ("finit_module", "CAP_SYS_MODULE"),
            ("delete_module", "CAP_SYS_MODULE"),
            ("reboot", "CAP_SYS_BOOT"),
            ("chroot", "CAP_SYS_CHROOT"),
            ("acct", "CAP_SYS_PACCT"),
            ("kcmp", "CAP_SYS_PTRACE"),
            ("pidfd_getfd", "CAP_SYS_PTRACE"),
            ("process_madvise", "CAP_SYS_PTRACE"),
            ("iopl", "CAP_SYS_RAWIO"),
            ("ioperm", "CAP_SYS_RAWIO"),
            ("settimeofday", "CAP_SYS_TIME"),
            ("clock_settime", "CAP_SYS_TIME"),
            ("vhangup", "CAP_SYS_TTY_CONFIG"),
            ("mbind", "CAP_SYS_NICE"),
            ("set_mempolicy", "CAP_SYS_NICE"),
            ("open_by_handle_at", "CAP_DAC_READ_SEARCH"),
        ];
        let without = profile("x86_64", &[]);
        for (name, cap) in cases {
            assert_eq!(verdict(&without, name, &[]), Verdict::Errno(1), "{name} without {cap}");
            assert!(allows(&profile("x86_64", &[cap]), name), "{name} with {cap}");
        }
        // A capability opens only its own syscalls.
        let other = profile("x86_64", &["CAP_SYS_BOOT", "CAP_NET_ADMIN", "CAP_CHOWN"]);
        for name in ["mount", "unshare", "init_module", "bpf", "chroot"] {
            assert!(!allows(&other, name), "{name} must stay refused");
        }
    }

    #[test]
    fn some_syscalls_are_never_allowed() {
        let p = runtime_default_for_kernel("x86_64", &all_caps(), KERNEL);
        for name in [
            "kexec_load",
            "kexec_file_load",
            "add_key",
            "request_key",
            "keyctl",
            "userfaultfd",
            "swapon",
            "swapoff",
            "pivot_root",
            "create_module",
            "uselib",
            "nfsservctl",
        ] {
            assert_eq!(verdict(&p, name, &[]), Verdict::Errno(1), "{name}");
        }
    }

    #[test]
    fn ptrace_follows_the_kernel_version_as_upstream() {
        let none = caps(&[]);
        let ptrace_cap = caps(&["CAP_SYS_PTRACE"]);
        for name in ["ptrace", "process_vm_readv", "process_vm_writev"] {
            // From 4.8 on, upstream allows these to every container.
            assert!(allows(&runtime_default_for_kernel("x86_64", &none, Some((4, 8))), name));
            assert!(allows(&runtime_default_for_kernel("x86_64", &none, Some((6, 12))), name));
            // Older or unknown kernels: only with CAP_SYS_PTRACE.
            assert!(!allows(&runtime_default_for_kernel("x86_64", &none, Some((4, 7))), name));
            assert!(!allows(&runtime_default_for_kernel("x86_64", &none, None), name));
            assert!(allows(&runtime_default_for_kernel("x86_64", &ptrace_cap, Some((4, 4))), name));
        }
    }

    #[test]
    fn runtime_default_uses_the_host_kernel() {
        let host = host_kernel_version();
        assert!(host.is_some(), "uname release should parse");
        let caps = caps(&["CAP_CHOWN"]);
        assert_eq!(runtime_default("x86_64", &caps), runtime_default_for_kernel("x86_64", &caps, host));
    }

    #[test]
    fn arch_prctl_only_on_x86_64() {
        assert!(allows(&profile("x86_64", &[]), "arch_prctl"));
        for arch in ["aarch64", "arm", "x86", "riscv64", "s390x"] {
            assert!(!allows(&profile(arch, &[]), "arch_prctl"), "{arch}");
        }
        assert!(allows(&profile("x86_64", &[]), "modify_ldt"));
        assert!(allows(&profile("x86", &[]), "modify_ldt"));
        assert!(!allows(&profile("aarch64", &[]), "modify_ldt"));
    }

    #[test]
    fn arm_extras_only_on_arm_and_aarch64() {
        for name in ARM_EXTRAS {
            assert!(allows(&profile("arm", &[]), name), "{name} on arm");
            assert!(allows(&profile("aarch64", &[]), name), "{name} on aarch64");
        }
        for name in ["cacheflush", "set_tls", "breakpoint", "arm_fadvise64_64"] {
            assert!(!allows(&profile("x86_64", &[]), name), "{name} on x86_64");
            assert!(!allows(&profile("riscv64", &[]), name), "{name} on riscv64");
        }
    }

    #[test]
    fn s390_and_riscv_extras_only_on_their_arch() {
        for name in S390X_EXTRAS {
            assert!(allows(&profile("s390x", &[]), name));
            assert!(!allows(&profile("x86_64", &[]), name));
        }
        for name in RISCV64_EXTRAS {
            assert!(allows(&profile("riscv64", &[]), name));
            assert!(!allows(&profile("aarch64", &[]), name));
        }
    }

    #[test]
    fn architectures_per_arch() {
        let expected: &[(&str, Value)] = &[
            ("x86_64", json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])),
            ("aarch64", json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])),
            ("arm", json!(["SCMP_ARCH_ARM"])),
            ("riscv64", json!(["SCMP_ARCH_RISCV64"])),
            ("s390x", json!(["SCMP_ARCH_S390X", "SCMP_ARCH_S390"])),
            ("x86", json!(["SCMP_ARCH_X86"])),
            ("loongarch64", json!(["SCMP_ARCH_LOONGARCH64"])),
        ];
        for (arch, architectures) in expected {
            assert_eq!(&profile(arch, &[])["architectures"], architectures, "{arch}");
        }
    }

    #[test]
    fn unknown_arch_gets_native_only_and_no_extras() {
        let p = profile("sparc64", &[]);
        assert!(p.get("architectures").is_none());
        let base: BTreeSet<&str> = BASE_ALLOW.iter().copied().chain(PTRACE_SINCE_4_8.iter().copied()).collect();
        assert_eq!(unconditional(&p), base);
    }

    #[test]
    fn socket_refuses_af_alg_and_af_vsock_only() {
        let p = profile("x86_64", &[]);
        for family in 0..=64_u64 {
            let expected = if family == 38 || family == 40 { Verdict::Errno(1) } else { Verdict::Allow };
            assert_eq!(verdict(&p, "socket", &[family]), expected, "family {family}");
        }
        assert_eq!(AF_ALG, libc::AF_ALG as u64);
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK, libc::AF_PACKET] {
            assert_eq!(verdict(&p, "socket", &[family as u64]), Verdict::Allow);
        }
    }

    #[cfg(target_env = "gnu")]
    #[test]
    fn af_vsock_matches_libc() {
        assert_eq!(AF_VSOCK, libc::AF_VSOCK as u64);
    }

    #[test]
    fn personality_only_for_safe_values() {
        let p = profile("x86_64", &[]);
        for value in [0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff] {
            assert_eq!(verdict(&p, "personality", &[value]), Verdict::Allow, "{value:#x}");
        }
        // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, PER_BSD
        for value in [0x0040_0000, 0x0004_0000, 0x0006] {
            assert_eq!(verdict(&p, "personality", &[value]), Verdict::Errno(1), "{value:#x}");
        }
    }

    #[test]
    fn base_list_has_no_duplicates() {
        let unique: BTreeSet<&str> = BASE_ALLOW.iter().copied().collect();
        assert_eq!(unique.len(), BASE_ALLOW.len());
        assert_eq!(BASE_ALLOW.len(), 360);
        for name in ["mount", "unshare", "setns", "clone", "clone3", "ptrace", "bpf", "socket", "personality"] {
            assert!(!unique.contains(name), "{name} is conditional and must not be in the base list");
        }
    }

    #[test]
    fn no_syscall_is_both_allowed_and_refused() {
        for arch in ARCHES {
            for cap_set in [caps(&[]), all_caps()] {
                let p = runtime_default_for_kernel(arch, &cap_set, KERNEL);
                let mut allowed = BTreeSet::new();
                let mut refused = BTreeSet::new();
                for rule in rules(&p) {
                    let set = if rule["action"] == ACT_ALLOW { &mut allowed } else { &mut refused };
                    set.extend(names(rule));
                }
                assert!(allowed.is_disjoint(&refused), "{arch}: {:?}", allowed.intersection(&refused));
            }
        }
    }

    #[test]
    fn every_profile_is_valid_oci() {
        let ops = ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT"];
        for arch in ARCHES {
            for cap_set in [caps(&[]), caps(&["CAP_SYS_ADMIN"]), all_caps()] {
                for kernel in [None, Some((4, 4)), KERNEL] {
                    let p = runtime_default_for_kernel(arch, &cap_set, kernel);
                    let text = serde_json::to_string(&p).expect("serializes");
                    assert_eq!(serde_json::from_str::<Value>(&text).expect("parses"), p);
                    let keys: BTreeSet<&str> = p.as_object().expect("object").keys().map(String::as_str).collect();
                    assert!(keys.is_subset(&BTreeSet::from([
                        "defaultAction",
                        "defaultErrnoRet",
                        "architectures",
                        "syscalls"
                    ])));
                    if let Some(list) = p.get("architectures") {
                        let list = list.as_array().expect("architectures is an array");
                        assert!(list.iter().all(|a| a.as_str().is_some_and(|a| a.starts_with("SCMP_ARCH_"))));
                    }
                    assert!(!rules(&p).is_empty());
                    for rule in rules(&p) {
                        let rule_names = names(rule);
                        assert!(!rule_names.is_empty(), "{rule}");
                        assert!(rule_names.iter().all(|n| !n.is_empty()), "{rule}");
                        match rule["action"].as_str() {
                            Some("SCMP_ACT_ALLOW") => assert!(rule.get("errnoRet").is_none(), "{rule}"),
                            Some("SCMP_ACT_ERRNO") => assert!(rule["errnoRet"].is_u64(), "{rule}"),
                            _ => panic!("bad action in {rule}"),
                        }
                        if let Some(args) = rule.get("args") {
                            let args = args.as_array().expect("args is an array");
                            assert!(!args.is_empty(), "{rule}");
                            for arg in args {
                                assert!(arg["index"].as_u64().is_some_and(|i| i < 6), "{rule}");
                                assert!(arg["value"].is_u64() && arg["valueTwo"].is_u64(), "{rule}");
                                let op = arg["op"].as_str().expect("op");
                                assert!(ops.contains(&op) || op == "SCMP_CMP_MASKED_EQ", "{rule}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn repeated_or_unknown_capabilities_change_nothing_extra() {
        let once = profile("x86_64", &["CAP_SYS_BOOT"]);
        let twice = profile("x86_64", &["CAP_SYS_BOOT", "CAP_SYS_BOOT", "CAP_NOT_A_CAP", "sys_admin"]);
        assert_eq!(unconditional(&once), unconditional(&twice));
        assert!(!allows(&twice, "mount"));
    }

    #[test]
    fn allowed_name_counts_per_arch() {
        // Names allowed without conditions, no capabilities, kernel >= 4.8: the base list (360),
        // ptrace & co. (3) and the architecture's extras. socket, personality and clone are
        // allowed on top, for some argument values only.
        let expected = [
            ("x86_64", 365),
            ("x86", 364),
            ("aarch64", 369),
            ("arm", 369),
            ("riscv64", 365),
            ("s390x", 366),
            ("loongarch64", 363),
        ];
        for (arch, count) in expected {
            let p = profile(arch, &[]);
            assert_eq!(unconditional(&p).len(), count, "{arch}");
            for name in ["socket", "personality", "clone"] {
                assert!(!unconditional(&p).contains(name) && rules(&p).iter().any(|r| names(r) == [name]));
            }
        }
        // Every capability: + 26 for CAP_SYS_ADMIN (clone and clone3 included) + 21 for the others;
        // bpf, perf_event_open, syslog and ptrace & co. are not counted twice.
        assert_eq!(unconditional(&runtime_default_for_kernel("x86_64", &all_caps(), KERNEL)).len(), 365 + 26 + 21);
    }

    #[test]
    fn parse_kernel_release_handles_distribution_suffixes() {
        assert_eq!(parse_kernel_release("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(parse_kernel_release("3.12-1-amd64"), Some((3, 12)));
        assert_eq!(parse_kernel_release("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_release("5.15.167.4-microsoft-standard-WSL2"), Some((5, 15)));
        assert_eq!(parse_kernel_release("6.10rc1"), Some((6, 10)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert_eq!(parse_kernel_release("6"), None);
        assert_eq!(parse_kernel_release(""), None);
    }
}
