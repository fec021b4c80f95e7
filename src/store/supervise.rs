//! The Raft core, kept running. openraft stops its core for good on a storage error (an
//! append that met ENOSPC or EIO), and every write after it would fail. The supervisor
//! sees the core stop, logs why once, and starts a new Raft node from what is durable: the
//! log reopened from disk (a torn tail cut) and the same state machine, whose overlay
//! already holds everything applied. Until then writes fail and reads go on; retries back
//! off from 1 s to 30 s while the cause lasts (a disk still full).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use tokio::sync::watch;

use super::StoreError;
use super::log::LogStore;
use super::raft::{self, TypeConfig};
use super::state::{Shared, StateMachine};

/// What starting a Raft node takes.
#[derive(Clone)]
pub struct RaftStart {
    /// The log's directory (`<store>/raft`).
    pub dir: PathBuf,
    pub id: u64,
    pub advertise: String,
    pub snapshot_entries: u64,
    pub shared: Arc<Shared>,
}

impl RaftStart {
    /// A Raft node over `log` and the running state machine.
    pub async fn start_with(&self, log: LogStore) -> Result<Raft<TypeConfig>, StoreError> {
        let sm = StateMachine { shared: self.shared.clone() };
        raft::start(self.id, &self.advertise, self.snapshot_entries, log, sm).await
    }

    /// A new Raft node over the log reopened from disk.
    async fn start(&self) -> Result<Raft<TypeConfig>, StoreError> {
        let dir = self.dir.clone();
        let log = tokio::task::spawn_blocking(move || LogStore::open(&dir))
            .await
            .map_err(|e| StoreError::Raft(format!("reopening the log: {e}")))?
            .map_err(|e| StoreError::Io(format!("reopening the raft log in {}", self.dir.display()), e))?;
        self.start_with(log).await
    }
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Watches the Raft node in `current` and replaces it when its core stops, until
/// `stopping` says the store is closing.
pub async fn supervise(
    start: RaftStart,
    current: watch::Sender<Raft<TypeConfig>>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let raft = current.borrow().clone();
        let mut metrics = raft.metrics();
        let cause = loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                break fatal.to_string();
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { break "the Raft core ended".to_string() },
                _ = stopping.wait_for(|s| *s) => return,
            }
        };
        if *stopping.borrow() {
            return;
        }
        tracing::error!(cause = %cause, "the store's Raft core stopped: writes fail until it is restarted from the log on disk");
        // The core is down already; this ends the node's remaining tasks. An error here
        // only says they had ended too.
        if let Err(e) = raft.shutdown().await {
            tracing::debug!(error = %e, "shutting down the stopped Raft node");
        }
        let mut wait = FIRST_RETRY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            match start.start().await {
                Ok(fresh) => {
                    tracing::warn!("the store's Raft core is running again; writes resume");
                    current.send_replace(fresh);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_s = (wait * 2).min(LAST_RETRY).as_secs(), "restarting the store's Raft core failed");
                    wait = (wait * 2).min(LAST_RETRY);
                }
            }
        }
    }
}
