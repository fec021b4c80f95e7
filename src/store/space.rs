//! Free space on the store's file system, checked before a write is proposed. A board's SD
//! card fills up; if the Raft log's append met ENOSPC the Raft core would stop for good. So
//! writes are refused (507) while the free space is below a reserve, and the reserve keeps
//! room for what frees space: deletes (a page of log each) are admitted while
//! [`DELETE_FLOOR`] is free. Everything resumes by itself once space comes back, without a
//! restart. The reserve also absorbs what the state machine's checkpoints write after the
//! log: set it to at least twice the largest checkpoint.
//!
//! Writes admitted but not yet durable count against the free space too: without that, a
//! burst of concurrent writers all measured the same free space, all passed, and together
//! could run the log's append into ENOSPC. So does what the next checkpoint will write into
//! sled (twice: chunks and index), and a checkpoint waits while the disk has no room for
//! it: sled that meets ENOSPC fails every later read and write, while the overlay it would
//! have written stays readable in memory and in the log.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StoreError;

/// Free bytes under which even deletes are refused: a delete's log record is a page, and
/// this leaves room for a few dozen of them.
pub const DELETE_FLOOR: u64 = 256 * 1024;

/// How long a measurement is trusted while space is plentiful (over twice the reserve).
const TRUST_PLENTY: Duration = Duration::from_millis(100);

/// The free space of one directory's file system, measured at most every
/// [`TRUST_PLENTY`] while plentiful and on every write when short.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
    last: Mutex<Option<(Instant, u64)>>,
    /// Bytes of writes admitted and not yet durable.
    in_flight: AtomicU64,
    /// Bytes the next checkpoint will move into sled (the overlay's size).
    pending_checkpoint: AtomicU64,
}

/// An admitted write's claim on the free space, given back when dropped (the write is
/// durable or failed).
#[derive(Debug)]
pub struct Admitted<'a> {
    guard: &'a SpaceGuard,
    bytes: u64,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.guard.in_flight.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl SpaceGuard {
    pub fn new(dir: &Path, reserve: u64) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            reserve,
            last: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            pending_checkpoint: AtomicU64::new(0),
        }
    }

    /// Bytes an unprivileged writer may still use on the store's file system.
    fn available(&self) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, free)) = *last
            && free > 2 * self.reserve
            && at.elapsed() < TRUST_PLENTY
        {
            return free;
        }
        let free = match nix::sys::statvfs::statvfs(&self.dir) {
            // Widened first: on 32-bit ARM both are 32 bits, and their product would
            // saturate at 4 GiB.
            #[allow(clippy::unnecessary_cast, reason = "u32 on 32-bit targets")]
            Ok(s) => (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64),
            Err(e) => {
                // Not knowing is no reason to refuse writes: the append itself will tell.
                tracing::warn!(dir = %self.dir.display(), error = %e, "measuring free space");
                u64::MAX
            }
        };
        *last = Some((Instant::now(), free));
        free
    }

    /// Admits a write of about `bytes` unless the free space, less what admitted writes
    /// still hold, would fall under the reserve ([`DELETE_FLOOR`] for writes that only
    /// delete, which is how space is freed).
    pub fn admit(&self, only_deletes: bool, bytes: u64) -> Result<Admitted<'_>, StoreError> {
        let free = self.available();
        let floor = if only_deletes { DELETE_FLOOR.min(self.reserve) } else { self.reserve };
        let mut held = self.in_flight.fetch_add(bytes, Ordering::Relaxed);
        if !only_deletes {
            held = held.saturating_add(2 * self.pending_checkpoint.load(Ordering::Relaxed));
        }
        let admitted = Admitted { guard: self, bytes };
        if free.saturating_sub(held).saturating_sub(bytes) >= floor {
            return Ok(admitted);
        }
        Err(StoreError::NoSpace { dir: self.dir.clone(), available: free.saturating_sub(held), reserve: self.reserve })
    }

    /// Records how much the next checkpoint will write.
    pub fn set_pending_checkpoint(&self, bytes: u64) {
        self.pending_checkpoint.store(bytes, Ordering::Relaxed);
    }

    /// Whether a checkpoint of `bytes` fits now (measured afresh): twice its size, what
    /// admitted writes hold, and the delete floor.
    pub fn room_for_checkpoint(&self, bytes: u64) -> bool {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let free = self.available();
        free.saturating_sub(self.in_flight.load(Ordering::Relaxed)) >= 2 * bytes + DELETE_FLOOR
    }

    /// Whether writes are admitted now (for `/readyz`).
    pub fn writable(&self) -> bool {
        let held = self.in_flight.load(Ordering::Relaxed) + 2 * self.pending_checkpoint.load(Ordering::Relaxed);
        self.available().saturating_sub(held) >= self.reserve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_under_the_reserve_and_deletes_only_at_the_floor() {
        let dir = std::env::temp_dir();
        let free = SpaceGuard::new(&dir, 1).available();
        assert!(free > 0 && free < u64::MAX);
        let roomy = SpaceGuard::new(&dir, 1);
        assert!(roomy.admit(false, 0).is_ok() && roomy.writable());
        // A reserve larger than the disk: nothing but deletes, and not even those past it.
        let full = SpaceGuard::new(&dir, free.saturating_mul(2).max(1));
        let e = full.admit(false, 0).unwrap_err();
        assert!(matches!(e, StoreError::NoSpace { .. }));
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        assert!(!full.writable());
        let tight = SpaceGuard::new(&dir, free + free / 8);
        assert!(tight.admit(false, 0).is_err() && tight.admit(true, 0).is_ok(), "deletes still free space");
        assert!(full.admit(true, 0).is_ok() == (free >= DELETE_FLOOR));
    }

    #[test]
    fn writes_in_flight_hold_their_space_until_done() {
        let dir = std::env::temp_dir();
        let free = SpaceGuard::new(&dir, 1).available();
        // Room for about two writes of a third of the free space above the reserve.
        let reserve = free / 4;
        let third = (free - reserve) / 3;
        let g = SpaceGuard::new(&dir, reserve);
        let a = g.admit(false, third).expect("first");
        let b = g.admit(false, third).expect("second");
        assert!(g.admit(false, 2 * third).is_err(), "the third would pass the reserve while two are in flight");
        assert!(g.admit(false, third / 2).is_ok(), "a smaller one still fits");
        drop((a, b));
        assert!(g.admit(false, 2 * third).is_ok(), "durable writes give their claim back");
        assert_eq!(g.in_flight.load(Ordering::Relaxed), 0, "a refused write holds nothing");
    }
}
