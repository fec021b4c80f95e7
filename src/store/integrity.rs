//! Integrity of the store's files: checked at every start, and by `bramble server
//! --check-store` without changing anything.
//!
//! The Raft log is the durable record; the state machine (sled) is a cache of it that is made
//! durable before the log is purged behind a snapshot. So a damaged state machine is not lost
//! data: when the log still holds every entry after the last snapshot (it always keeps
//! them), the state machine is rebuilt from `snapshot.bin` plus the log, and the damaged
//! copy is kept beside it as `db.damaged`. When it cannot be rebuilt, the server refuses to
//! start with a message that names the file and says why, rather than serve a wrong answer.
//!
//! sled may panic on a damaged file instead of returning an error; the check runs under
//! `catch_unwind` so that is a refusal or a rebuild too (the binary unwinds on panic).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use super::StoreError;
use super::log::{self, LogSummary};
use super::state::{Shared, SledSummary, SnapshotFile};

/// How the state machine was opened.
pub struct Opened {
    pub shared: Shared,
    /// Why it had to be rebuilt, when it was.
    pub rebuilt: Option<String>,
}

/// Opens the state machine in `dir` and checks it against the log; rebuilds it from the
/// snapshot and the log when it is damaged or behind what the log still holds.
pub fn open_state(
    dir: &Path,
    log: &LogSummary,
    cache_bytes: u64,
    watch_events: usize,
    watch_bytes: usize,
) -> Result<Opened, StoreError> {
    let fresh = log.last.is_none() && !dir.join("snapshot.bin").exists();
    let problem = if !dir.join("db").exists() && !fresh {
        // Not even opened: sled would create an empty database, a change to a store that
        // may yet be refused.
        format!("{} is missing", dir.join("db").display())
    } else {
        match open_and_verify(dir, cache_bytes, watch_events, watch_bytes) {
            Ok((shared, summary)) => match consistent(dir, log, &summary) {
                Ok(()) => return Ok(Opened { shared, rebuilt: None }),
                Err(why) => why,
            },
            Err(why) => why,
        }
    };
    let snapshot = SnapshotFile::read(dir).map_err(|e| {
        StoreError::Corrupt(format!("{problem}; the snapshot it would be rebuilt from is damaged too ({e})"))
    })?;
    rebuildable(log, snapshot.as_ref()).map_err(|why| StoreError::Corrupt(format!("{problem}; {why}")))?;
    tracing::warn!(problem = %problem, "the state machine is damaged: rebuilding it from the snapshot and the Raft log");
    let db = dir.join("db");
    let damaged = dir.join("db.damaged");
    if damaged.exists() {
        std::fs::remove_dir_all(&damaged).map_err(|e| StoreError::Io(format!("removing {}", damaged.display()), e))?;
    }
    if db.exists() {
        std::fs::rename(&db, &damaged)
            .map_err(|e| StoreError::Io(format!("moving {} aside to {}", db.display(), damaged.display()), e))?;
    }
    if let Some(s) = &snapshot {
        s.restore_into(&db).map_err(StoreError::Corrupt)?;
    }
    let (shared, summary) = open_and_verify(dir, cache_bytes, watch_events, watch_bytes)
        .map_err(|e| StoreError::Corrupt(format!("{problem}; the rebuilt state machine is damaged too: {e}")))?;
    consistent(dir, log, &summary)
        .map_err(|e| StoreError::Corrupt(format!("{problem}; the rebuilt state machine does not fit the log: {e}")))?;
    Ok(Opened { shared, rebuilt: Some(problem) })
}

/// Opens sled and reads all of it, a panic inside sled counted as damage.
fn open_and_verify(
    dir: &Path,
    cache_bytes: u64,
    watch_events: usize,
    watch_bytes: usize,
) -> Result<(Shared, SledSummary), String> {
    let db = dir.join("db");
    let opened = catch_unwind(AssertUnwindSafe(|| -> Result<(Shared, SledSummary), String> {
        let shared = Shared::open(dir, cache_bytes, watch_events, watch_bytes)
            .map_err(|e| format!("{}: cannot be opened: {e}", db.display()))?;
        let summary = shared.verify()?;
        Ok((shared, summary))
    }));
    match opened {
        Ok(r) => r,
        Err(panic) => {
            let what = crate::panics::message(&*panic);
            Err(format!("{}: the database failed while being read ({what})", db.display()))
        }
    }
}

/// Whether the state machine and the log fit: the log holds every entry after what the
/// state machine has applied, and nothing the state machine applied is missing from it.
fn consistent(dir: &Path, log: &LogSummary, sm: &SledSummary) -> Result<(), String> {
    let applied = sm.applied.unwrap_or(0);
    if let Some(purged) = log.purged
        && purged > applied
    {
        return Err(format!(
            "{} has applied up to index {applied} but the Raft log was purged up to {purged}: the entries between \
             are gone from the log",
            dir.join("db").display()
        ));
    }
    if applied > log.last.unwrap_or(0) {
        return Err(format!(
            "{} has applied up to index {applied} but {} ends at {}: the log lost acknowledged entries",
            dir.join("db").display(),
            dir.join("raft/raft.log").display(),
            log.last.unwrap_or(0)
        ));
    }
    Ok(())
}

/// Whether the state machine can be rebuilt: from the snapshot (or from nothing, when the
/// log was never purged) plus the log entries after it.
fn rebuildable(log: &LogSummary, snapshot: Option<&SnapshotFile>) -> Result<(), String> {
    let base = snapshot.and_then(SnapshotFile::last_index).unwrap_or(0);
    if log.purged.unwrap_or(0) > base {
        return Err(format!(
            "it cannot be rebuilt: the Raft log was purged up to index {} and the snapshot covers only up to {base}. \
             Restore the data directory from a backup, or rebuild this server from its peers",
            log.purged.unwrap_or(0)
        ));
    }
    if base > log.last.unwrap_or(0) {
        return Err(format!(
            "it cannot be rebuilt: the snapshot covers up to index {base} but the Raft log ends at {}. Restore the \
             data directory from a backup",
            log.last.unwrap_or(0)
        ));
    }
    Ok(())
}

/// `bramble server --check-store`: reads the log, the state machine (a copy of it: opening
/// sled may write) and the snapshot, and reports each. Returns the report, and whether
/// everything is intact.
pub fn check(dir: &Path) -> (String, bool) {
    let mut report = Vec::new();
    let mut ok = true;
    let log = match log::inspect(&dir.join("raft")) {
        Ok(l) => {
            report.push(format!(
                "raft log: ok: entries {}..{}, purged up to {}, torn tail {} bytes (cut at the next start)",
                l.first.map_or("-".into(), |i| i.to_string()),
                l.last.map_or("-".into(), |i| i.to_string()),
                l.purged.map_or("none".into(), |i| i.to_string()),
                l.torn_bytes
            ));
            Some(l)
        }
        Err(e) => {
            ok = false;
            report.push(format!("raft log: DAMAGED: {e}"));
            None
        }
    };
    let snapshot = match SnapshotFile::read(dir) {
        Ok(Some(s)) => {
            report.push(format!("snapshot: ok: up to index {}", s.last_index().unwrap_or(0)));
            Some(s)
        }
        Ok(None) => {
            report.push("snapshot: none yet".into());
            None
        }
        Err(e) => {
            ok = false;
            report.push(format!("snapshot: DAMAGED: {e}"));
            None
        }
    };
    let sm = match copy_db(dir) {
        Ok(copy) => {
            let verified = open_and_verify(copy.path(), 8 * 1024 * 1024, 16, 1024 * 1024).map(|(_, s)| s);
            match verified {
                Ok(s) => {
                    report.push(format!(
                        "state machine: ok: {} objects in {} value chunks, applied up to index {}, revision {}",
                        s.objects,
                        s.chunks,
                        s.applied.unwrap_or(0),
                        s.revision
                    ));
                    Some(s)
                }
                Err(e) => {
                    ok = false;
                    // The copy's path means nothing to the reader: name the real directory.
                    report.push(format!(
                        "state machine: DAMAGED: {}",
                        e.replace(&copy.path().display().to_string(), &dir.display().to_string())
                    ));
                    None
                }
            }
        }
        Err(e) => {
            ok = false;
            report.push(format!("state machine: cannot be read: {e}"));
            None
        }
    };
    match (&log, &sm) {
        (Some(l), Some(s)) => match consistent(dir, l, s) {
            Ok(()) => report.push("log and state machine: consistent".into()),
            Err(e) => {
                ok = false;
                let fix = match rebuildable(l, snapshot.as_ref()) {
                    Ok(()) => "the next start rebuilds the state machine from the snapshot and the log".to_string(),
                    Err(why) => why,
                };
                report.push(format!("log and state machine: INCONSISTENT: {e}; {fix}"));
            }
        },
        (Some(l), None) => report.push(match rebuildable(l, snapshot.as_ref()) {
            Ok(()) => "the next start rebuilds the state machine from the snapshot and the log".into(),
            Err(why) => format!("the state machine {why}"),
        }),
        _ => {}
    }
    (report.join("\n"), ok)
}

/// A scratch copy of `dir/db` that is removed when dropped.
struct ScratchDb(std::path::PathBuf);

impl ScratchDb {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "removing the scratch copy of the store");
        }
    }
}

fn copy_db(dir: &Path) -> Result<ScratchDb, String> {
    let scratch = std::env::temp_dir().join(format!("bramble-check-store-{}", std::process::id()));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| format!("removing {}: {e}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let copy = ScratchDb(scratch);
    copy_tree(&dir.join("db"), &copy.path().join("db"))?;
    Ok(copy)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let kind = entry.file_type().map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).map_err(|e| format!("copying {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(first: Option<u64>, last: Option<u64>, purged: Option<u64>) -> LogSummary {
        LogSummary { first, last, purged, torn_bytes: 0 }
    }

    fn sm(applied: Option<u64>) -> SledSummary {
        SledSummary { objects: 0, chunks: 0, applied, revision: 0 }
    }

    #[test]
    fn the_state_machine_fits_the_log_only_when_the_log_holds_what_follows_it() {
        let dir = Path::new("/data");
        assert!(consistent(dir, &log(None, None, None), &sm(None)).is_ok(), "a new store");
        assert!(consistent(dir, &log(Some(1), Some(90), None), &sm(Some(40))).is_ok(), "replays 41..90");
        assert!(consistent(dir, &log(Some(50), Some(90), Some(49)), &sm(Some(60))).is_ok());
        assert!(consistent(dir, &log(Some(50), Some(90), Some(49)), &sm(Some(49))).is_ok(), "replays from 50");
        let purged_past = consistent(dir, &log(Some(50), Some(90), Some(49)), &sm(Some(10))).unwrap_err();
        assert!(purged_past.contains("purged up to 49"), "{purged_past}");
        let log_lost = consistent(dir, &log(Some(1), Some(30), None), &sm(Some(40))).unwrap_err();
        assert!(log_lost.contains("raft.log ends at 30"), "{log_lost}");
    }
}
