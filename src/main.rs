//! bramble: a Kubernetes-style orchestrator for fleets of small ARM boards, in one binary.
//!
//! `main` only picks the command: the binary is multi-call, so when it is run through a link
//! named `kubectl` it behaves as `bramble kubectl`.

/// mimalloc: the API is allocation-heavy (JSON values), and glibc's malloc spent about a
/// sixth of the server's CPU time in the write benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bramble::cli::run()
}
