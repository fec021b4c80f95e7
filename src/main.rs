//! bramble: a Kubernetes-style orchestrator for fleets of small ARM boards, in one binary.
//!
//! `main` only picks the command: the binary is multi-call, so when it is run through a link
//! named `kubectl` it behaves as `bramble kubectl`.

/// mimalloc: the API is allocation-heavy (JSON values), and glibc's malloc spent about a
/// sixth of the server's CPU time in the write benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's number for its `purge_delay` option (the same in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: i32 = 15;

unsafe extern "C" {
    /// mimalloc's own setter (linked in with the allocator).
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

fn main() -> std::process::ExitCode {
    // Give freed pages back to the kernel at once instead of after 10 ms: on a 1 GiB board
    // resident memory matters more than the madvise calls (measured: 6 MiB less with
    // 10,000 pods, and memory comes back when watches close, at no visible cost in writes).
    // SAFETY: a plain setter of a process-wide option, called before any thread starts.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    bramble::cli::run()
}
