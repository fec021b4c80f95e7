//! Group commit in front of Raft. openraft 0.9 appends, fsyncs and applies one client
//! write at a time (its core loop awaits each append's flush), so concurrent writers would
//! each pay a full fsync in turn. Instead, writers queue here; one task hands everything
//! queued to Raft as a single entry, and while that entry is being made durable the next
//! batch gathers. A lone writer still goes straight through.
//!
//! When the last batch had several writers, the next one waits up to [`LINGER`] for as many
//! to gather (PostgreSQL's `commit_delay` with `commit_siblings`, adaptively): each fsync
//! rewrites at least one page of flash, so under concurrent writes fuller batches mean fewer
//! pages written per write, for at most a millisecond of latency.

use openraft::Raft;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::raft::TypeConfig;
use super::state::{Txn, TxnBatch, TxnResult};

/// At most this many transactions per Raft entry.
const MAX_TXNS: usize = 256;
/// At most about this many bytes of values per Raft entry.
const MAX_BYTES: usize = 2 * 1024 * 1024;
/// The longest a batch waits for writers expected from the batch before it.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

type Waiter = oneshot::Sender<Result<TxnResult, StoreError>>;

/// The writers' side of the queue.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<(Txn, Waiter)>,
}

fn txn_bytes(t: &Txn) -> usize {
    t.ops.iter().map(|o| o.key.len() + o.value.as_ref().map_or(0, Vec::len)).sum()
}

impl Batcher {
    /// Starts the task that feeds the Raft node `raft` holds (the one in use, replaced
    /// when the supervisor restarts it); it ends when every `Batcher` is dropped.
    pub fn start(raft: tokio::sync::watch::Receiver<Raft<TypeConfig>>) -> Batcher {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Txn, Waiter)>();
        tokio::spawn(async move {
            let mut last_batch = 0usize;
            while let Some(first) = rx.recv().await {
                let mut bytes = txn_bytes(&first.0);
                let mut queued = vec![first];
                while queued.len() < MAX_TXNS && bytes < MAX_BYTES {
                    match rx.try_recv() {
                        Ok(next) => {
                            bytes += txn_bytes(&next.0);
                            queued.push(next);
                        }
                        Err(_) => break,
                    }
                }
                if last_batch > 1 && queued.len() < last_batch {
                    let deadline = tokio::time::Instant::now() + LINGER;
                    while queued.len() < last_batch.min(MAX_TXNS) && bytes < MAX_BYTES {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(next)) => {
                                bytes += txn_bytes(&next.0);
                                queued.push(next);
                            }
                            _ => break,
                        }
                    }
                }
                last_batch = queued.len();
                let (txns, waiters): (Vec<Txn>, Vec<Waiter>) = queued.into_iter().unzip();
                let current = raft.borrow().clone();
                match current.client_write(TxnBatch { txns }).await {
                    Ok(resp) if resp.data.len() == waiters.len() => {
                        for (w, r) in waiters.into_iter().zip(resp.data) {
                            let _ = w.send(Ok(r));
                        }
                    }
                    Ok(resp) => {
                        let msg = format!("raft returned {} results for {} writes", resp.data.len(), waiters.len());
                        for w in waiters {
                            let _ = w.send(Err(StoreError::Raft(msg.clone())));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for w in waiters {
                            let _ = w.send(Err(StoreError::Raft(msg.clone())));
                        }
                    }
                }
            }
        });
        Batcher { tx }
    }

    /// Queues one transaction and waits until it is applied (or refused).
    pub async fn commit(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((txn, tx)).map_err(|_| StoreError::Raft("the store is shutting down".into()))?;
        rx.await.map_err(|_| StoreError::Raft("the store is shutting down".into()))?
    }
}
