//! The store: versioned objects whose every write is an entry of a Raft log.
//!
//! Owns the data directory's `raft/` (log + vote, fsynced, group commit) and `db/` (sled state
//! machine). The API is its only caller: it reads (`get`, `list`), writes compare-and-swap
//! transactions (`commit`) and follows changes through the watch hub. The store revision
//! (`resourceVersion`) is a counter the state machine advances by one per applied
//! transaction; as it is computed in apply, every server derives the same numbers. Concurrent
//! writers share one Raft entry and one fsync (`batch.rs`).

mod batch;
mod chunks;
mod codec;
pub mod crypt;
pub mod integrity;
mod log;
mod raft;
mod space;
mod state;
mod supervise;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::Raft;

pub use state::{Expect, Op, Record, TxnResult};
pub use watch::WatchHub;

use batch::Batcher;
use crypt::SecretCipher;
use raft::TypeConfig;
use state::{Shared, Txn};

/// Everything that can go wrong below the API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("state machine database: {0}")]
    Sled(#[from] sled::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("encryption: {0}")]
    Crypto(String),
    #[error("stored data: {0}")]
    Corrupt(String),
    /// The store's file system is (nearly) full: writes wait for space.
    #[error(
        "the store's disk is full: {available} bytes free in {} (writes need {reserve}); free space on that file \
         system (delete objects, images or logs) and writes resume by themselves",
        dir.display()
    )]
    NoSpace { dir: PathBuf, available: u64, reserve: u64 },
}

/// Runs a read of sled, a panic inside it (sled panics on some damage) answered as
/// corruption instead of taking the request's task down.
fn guarded<T>(read: impl FnOnce() -> sled::Result<T>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(r) => Ok(r?),
        Err(panic) => Err(StoreError::Corrupt(format!(
            "the state machine database failed while being read ({}); run `bramble server --check-store`",
            crate::panics::message(&*panic)
        ))),
    }
}

impl StoreError {
    /// The operating system's error underneath, if any.
    fn os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io(_, e) => e.raw_os_error(),
            StoreError::Sled(sled::Error::Io(e)) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the store failed for want of space (ENOSPC, or EDQUOT for a quota): the
    /// caller's write can succeed later, once space is freed.
    pub fn disk_full(&self) -> bool {
        matches!(self, StoreError::NoSpace { .. })
            || matches!(self.os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
    }
}

/// How to open a store.
pub struct StoreOptions {
    /// Holds `raft/`, `db/` and the encryption key.
    pub dir: PathBuf,
    /// sled's page cache; sled's own default (1 GiB) is far too big for a board.
    pub cache_bytes: u64,
    /// Key prefixes whose values are encrypted at rest.
    pub sealed_prefixes: Vec<String>,
    /// Watch history bounds.
    pub watch_events: usize,
    pub watch_bytes: usize,
    /// This server's Raft id and advertised address.
    pub node_id: u64,
    pub advertise: String,
    /// Free bytes kept on the store's file system: writes stop below it (507), deletes
    /// only near empty (`space::DELETE_FLOOR`).
    pub reserve_bytes: u64,
    /// Log entries between snapshots (each makes sled durable and lets the log be purged).
    pub snapshot_entries: u64,
}

/// The open store.
pub struct Store {
    /// The Raft node in use: replaced by the supervisor when its core stops on a storage
    /// error (`supervise.rs`).
    raft: tokio::sync::watch::Sender<Raft<TypeConfig>>,
    batcher: Batcher,
    /// Tells the supervisor the store is stopping (a Raft that ends then is not restarted).
    stopping: tokio::sync::watch::Sender<bool>,
    shared: Arc<Shared>,
    cipher: SecretCipher,
    sealed_prefixes: Vec<String>,
    space: Arc<space::SpaceGuard>,
    /// Dropped with the store, which ends the thread Raft runs on.
    _raft_thread: tokio::sync::oneshot::Sender<()>,
}

/// Starts a runtime of its own, on its own thread, for Raft (its core, log and state machine
/// tasks), the group-commit batcher and the Raft supervisor. Every write waits for that
/// path: append, fsync, apply. Sharing the request workers, each of its steps queued behind
/// requests being parsed and validated; on its own thread the OS runs it as soon as it
/// wakes, and batches turn over sooner. Returns the runtime's handle, and the sender whose
/// drop ends the thread.
fn start_raft_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), StoreError> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel::<Result<tokio::runtime::Handle, std::io::Error>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("store-raft-main".into())
        .spawn(move || {
            // One worker; the log's fsync moves it aside with `block_in_place`, so applies
            // go on meanwhile.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("store-raft")
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    if handle_tx.send(Ok(runtime.handle().clone())).is_ok() {
                        // Runs until the store drops `stop_tx` (an Err then, as intended).
                        let _ = runtime.block_on(stop_rx);
                    }
                }
                Err(e) => {
                    // The opener waits on this channel; if it is gone there is no one to tell.
                    let _ = handle_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| StoreError::Io("starting the Raft thread".into(), e))?;
    match handle_rx.recv() {
        Ok(Ok(handle)) => Ok((handle, stop_tx)),
        Ok(Err(e)) => Err(StoreError::Io("starting the Raft runtime".into(), e)),
        Err(_) => Err(StoreError::Raft("the Raft thread stopped while starting".into())),
    }
}

/// Makes the store's directories 0700 and its files 0600 (etcd's modes): the Raft log and
/// sled hold every object of the cluster.
fn restrict_modes(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::Io(format!("restricting the mode of {}", p.display()), e))
    };
    set(dir, 0o700)?;
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::Io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::Io(format!("listing {}", dir.display()), e))?;
        let kind = entry.file_type().map_err(|e| StoreError::Io(format!("reading {}", entry.path().display()), e))?;
        if kind.is_dir() {
            restrict_modes(&entry.path())?;
        } else if kind.is_file() {
            set(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens the store, replays what the state machine had not yet persisted, and waits
    /// until this server leads its Raft group.
    pub async fn open(opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| StoreError::Io(format!("creating {}", opts.dir.display()), e))?;
        restrict_modes(&opts.dir)?;
        let fresh = !opts.dir.join("raft").exists();
        // The log first: reading it once gives both what Raft needs and what the state
        // machine is checked against.
        let log = log::LogStore::open(&opts.dir.join("raft"))
            .map_err(|e| StoreError::Io(format!("opening raft log in {}", opts.dir.display()), e))?;
        let opened =
            integrity::open_state(&opts.dir, &log.summary(), opts.cache_bytes, opts.watch_events, opts.watch_bytes)?;
        if let Some(why) = &opened.rebuilt {
            tracing::warn!(problem = %why, "the state machine was rebuilt from the snapshot and the Raft log; the damaged copy is in db.damaged");
        }
        let shared = Arc::new(opened.shared);
        let space = Arc::new(space::SpaceGuard::new(&opts.dir, opts.reserve_bytes));
        shared.guard_space(space.clone());
        state::spawn_checkpointer(&shared);
        let key_path = opts.dir.join("encryption.key");
        let cipher = match SecretCipher::load(&key_path, fresh) {
            Ok(c) => c,
            // An existing store without its key: refuse if anything in it is sealed (what
            // Raft has not yet applied is checked as it is read: it cannot be opened either).
            Err(missing) if !key_path.exists() => {
                for prefix in &opts.sealed_prefixes {
                    let mut after: Option<String> = None;
                    loop {
                        let (records, _) = shared
                            .list(prefix, after.as_deref(), 500)
                            .map_err(|e| StoreError::Corrupt(format!("reading {prefix}: {e}")))?;
                        if records.iter().any(|r| crypt::is_sealed(&r.value)) {
                            return Err(missing);
                        }
                        match records.last() {
                            Some(last) if records.len() == 500 => after = Some(last.key.clone()),
                            _ => break,
                        }
                    }
                }
                SecretCipher::load(&key_path, true)?
            }
            Err(e) => return Err(e),
        };
        let (runtime, raft_thread) = start_raft_runtime()?;
        let start = supervise::RaftStart {
            dir: opts.dir.join("raft"),
            id: opts.node_id,
            advertise: opts.advertise.clone(),
            snapshot_entries: opts.snapshot_entries,
            shared: shared.clone(),
        };
        let first = start.clone();
        let raft = runtime
            .spawn(async move { first.start_with(log).await })
            .await
            .map_err(|_| StoreError::Raft("the Raft thread stopped while starting".into()))??;
        let (raft, rafts) = tokio::sync::watch::channel(raft);
        let batcher = {
            let _on_raft_runtime = runtime.enter();
            Batcher::start(rafts.clone())
        };
        let (stopping, stop_seen) = tokio::sync::watch::channel(false);
        runtime.spawn(supervise::supervise(start, raft.clone(), stop_seen));
        Ok(Store {
            raft,
            batcher,
            stopping,
            shared,
            cipher,
            sealed_prefixes: opts.sealed_prefixes,
            space,
            _raft_thread: raft_thread,
        })
    }

    /// Whether writes are admitted now: enough free space on the store's file system.
    pub fn writable(&self) -> bool {
        self.space.writable()
    }

    /// The encryption keys in use (`bramble secrets-encrypt status`).
    pub fn encryption_status(&self) -> crypt::KeyStatus {
        self.cipher.status()
    }

    /// A new key for Secrets written from now on; older keys stay for reading.
    pub fn rotate_encryption_key(&self) -> Result<crypt::KeyStatus, StoreError> {
        self.cipher.rotate()
    }

    /// Rewrites every value sealed with an old key under the current one (compare-and-swap:
    /// a value written meanwhile is already sealed with the current key). Returns how many.
    pub async fn reencrypt(&self) -> Result<usize, StoreError> {
        let mut rewritten = 0;
        for prefix in self.sealed_prefixes.clone() {
            let mut after: Option<String> = None;
            loop {
                let (records, _) = self.shared.list(&prefix, after.as_deref(), 500)?;
                for r in &records {
                    // Sealed with an old key, or stored before encryption: seal it now.
                    if crypt::is_sealed(&r.value) && !self.cipher.sealed_with_old_key(&r.value) {
                        continue;
                    }
                    let plain = self.open_value(&r.key, &r.value)?;
                    let op = Op { key: r.key.clone(), expect: Expect::ModRev(r.mod_rev), value: Some(plain) };
                    if let TxnResult::Applied { .. } = self.commit(vec![op]).await? {
                        rewritten += 1;
                    }
                }
                match records.last() {
                    Some(last) if records.len() == 500 => after = Some(last.key.clone()),
                    _ => break,
                }
            }
        }
        Ok(rewritten)
    }

    fn sealed(&self, key: &str) -> bool {
        self.sealed_prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The original bytes of a stored value of `key`: decrypted when the key is sealed,
    /// then decompressed.
    pub fn open_value(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        if self.sealed(key) { codec::unpack(&self.cipher.open(key, stored)?) } else { codec::unpack(stored) }
    }

    fn open_record(&self, mut r: Record) -> Result<Record, StoreError> {
        r.value = self.open_value(&r.key, &r.value)?;
        Ok(r)
    }

    /// The current version of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        guarded(|| self.shared.get(key))?.map(|r| self.open_record(r)).transpose()
    }

    /// Up to `limit` records under `prefix` after `start_after`, and the revision of the read.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Record>, u64), StoreError> {
        let (records, rev) = guarded(|| self.shared.list(prefix, start_after, limit))?;
        let records = records.into_iter().map(|r| self.open_record(r)).collect::<Result<_, _>>()?;
        Ok((records, rev))
    }

    /// Like [`Store::list`], but as the records were at revision `at` (the first page's
    /// revision, for the later pages of a paginated list). `None` when `at` is older than
    /// the retained change history.
    pub fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> Result<Option<Vec<Record>>, StoreError> {
        match guarded(|| self.shared.list_at(prefix, start_after, limit, at))? {
            Some(records) => Ok(Some(records.into_iter().map(|r| self.open_record(r)).collect::<Result<_, _>>()?)),
            None => Ok(None),
        }
    }

    /// Proposes `ops` as one atomic compare-and-swap transaction and waits until it is
    /// durable and applied.
    pub async fn commit(&self, mut ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        // What the write takes on disk, about: its keys and values, once in the log and
        // once more when checkpointed (both compressed, so this is on the safe side).
        let bytes: u64 =
            ops.iter().map(|op| 2 * (op.key.len() + op.value.as_ref().map_or(0, Vec::len)) as u64 + 64).sum();
        let _admitted = self.space.admit(ops.iter().all(|op| op.value.is_none()), bytes)?;
        for op in &mut ops {
            if let Some(v) = op.value.as_ref() {
                // Plain into the log (compressed there as a whole batch), packed by the state
                // machine; secrets are sealed before they leave this process's memory.
                op.value = Some(if self.sealed(&op.key) {
                    self.cipher.seal(&op.key, &codec::pack(v))?
                } else {
                    codec::plain(v)
                });
            }
        }
        self.batcher.commit(Txn { ops }).await
    }

    /// Change history and notifications for watches.
    pub fn hub(&self) -> &WatchHub {
        &self.shared.hub
    }

    /// Whether this server leads its Raft group, kept current: the control loops run only
    /// where it is true, so following leadership costs no writes (a Lease renewed every
    /// few seconds would be a flash write each time).
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        let mut rafts = self.raft.subscribe();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let mut metrics = rafts.borrow_and_update().metrics();
                loop {
                    let leads = {
                        let m = metrics.borrow_and_update();
                        m.current_leader == Some(m.id) && m.running_state.is_ok()
                    };
                    tx.send_if_modified(|v| std::mem::replace(v, leads) != leads);
                    if tx.is_closed() {
                        return;
                    }
                    tokio::select! {
                        r = metrics.changed() => if r.is_err() { break },
                        r = rafts.changed() => if r.is_err() { return } else { break },
                    }
                }
                // This Raft ended or was replaced: not leading until the next one says so.
                tx.send_if_modified(|v| std::mem::replace(v, false));
                if !rafts.has_changed().unwrap_or(false) && rafts.changed().await.is_err() {
                    // The store is gone: closing `tx` tells the followers.
                    return;
                }
            }
        });
        rx
    }

    /// The last applied revision.
    pub fn revision(&self) -> u64 {
        self.shared.hub.revision()
    }

    /// Stops Raft and makes the state machine durable so the next start replays nothing.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let raft = self.raft.borrow().clone();
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || shared.make_durable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "making the state machine durable"),
            Err(e) => tracing::warn!(error = %e, "making the state machine durable"),
        }
    }
}
