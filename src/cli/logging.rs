//! Where the log goes and how much of it: to journald with structured fields when systemd
//! connected our stderr to the journal (`$JOURNAL_STREAM`), as plain lines on stderr
//! otherwise. The level comes from `BRAMBLE_LOG`, then `RUST_LOG` (the usual Rust habit),
//! then `--log-level`, as `tracing` filter directives (`debug`, `info,bramble::agent=debug`):
//! levels by target, without `EnvFilter`'s span and field filters, whose regex engine cost
//! the boards' binary more than they are worth on a board's log.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The libraries whose `info` is chatter on a board's log unless asked for by name.
const QUIET: &str = "openraft=warn,sled=warn";

/// The filter: the first of the environment's directives and `level`, or `info`.
fn filter(level: Option<&str>) -> (Targets, Option<String>) {
    let from_env =
        ["BRAMBLE_LOG", "RUST_LOG"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()));
    let wanted = from_env.unwrap_or_else(|| format!("{},{QUIET}", level.unwrap_or("info")));
    match parse_targets(&wanted) {
        Ok(f) => (f, None),
        Err(e) => (quiet_info(), Some(format!("the log level {wanted:?} is not understood ({e}): logging at info"))),
    }
}

/// Directives as `EnvFilter` took them (pieces trimmed, empty ones skipped), refusing the
/// span and field filters `Targets` would read as target names that never match.
fn parse_targets(wanted: &str) -> Result<Targets, String> {
    let pieces: Vec<&str> = wanted.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if let Some(p) = pieces.iter().find(|p| p.contains(['[', '{', ' ', '\t'])) {
        return Err(format!("{p:?}: span and field filters are not taken, only target=level"));
    }
    if pieces.is_empty() {
        return Err("no directive".to_string());
    }
    pieces.join(",").parse::<Targets>().map_err(|e| e.to_string())
}

/// `info`, with the libraries' chatter down to warnings.
fn quiet_info() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("openraft", tracing::Level::WARN)
        .with_target("sled", tracing::Level::WARN)
}

/// Whether stderr is the journal stream systemd gave us (`$JOURNAL_STREAM` is `dev:inode`
/// of it; a child whose stderr was redirected elsewhere inherits the variable, not the stream).
fn stderr_is_journal() -> bool {
    let Some(wanted) = std::env::var("JOURNAL_STREAM").ok() else { return false };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else { return false };
    wanted.trim() == format!("{}:{}", st.st_dev, st.st_ino)
}

/// syslog's meanings (info is 6, debug 7), which `journalctl -p info` and every log
/// collector expect; the crate's default shifts each level one up (info as notice).
fn syslog_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Starts logging for this process (once; later calls do nothing).
pub fn init(level: Option<&str>) {
    let (filter, complaint) = filter(level);
    let journal = stderr_is_journal()
        .then(|| match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_field_prefix(None)
                    .with_syslog_identifier("bramble".into())
                    .with_priority_mappings(syslog_priorities()),
            ),
            Err(e) => {
                eprintln!("bramble: cannot write to the journal ({e}): logging to stderr");
                None
            }
        })
        .flatten();
    let started = match journal {
        Some(layer) => tracing_subscriber::registry().with(filter).with(layer).try_init(),
        None => {
            // Colours only on a terminal: log files get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
            tracing_subscriber::registry().with(filter).with(fmt).try_init()
        }
    };
    if started.is_err() {
        // A second call (tests start many servers in one process): the first one stands.
        return;
    }
    if let Some(c) = complaint {
        tracing::warn!("{c}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_level_falls_back_to_info_and_says_so() {
        // BRAMBLE_LOG and RUST_LOG are not set under `cargo test` here; when they are, the
        // environment wins, which is the point, so the test says nothing then.
        if std::env::var_os("BRAMBLE_LOG").is_some() || std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        let (f, complaint) = filter(Some("debug"));
        assert!(complaint.is_none());
        assert!(f.would_enable("bramble::agent", &tracing::Level::DEBUG));
        assert!(!f.would_enable("openraft::core", &tracing::Level::INFO), "the libraries stay quiet");
        let (f, _) = filter(Some("warn,bramble::store=trace"));
        assert!(f.would_enable("bramble::store::log", &tracing::Level::TRACE));
        assert!(!f.would_enable("bramble::agent", &tracing::Level::INFO));
        let (f, complaint) = filter(Some("lots=of=noise"));
        assert!(complaint.is_some_and(|c| c.contains("not understood")));
        assert!(f.would_enable("bramble", &tracing::Level::INFO));
        assert!(!f.would_enable("bramble", &tracing::Level::DEBUG));
        assert!(!f.would_enable("sled::tree", &tracing::Level::INFO));
        // Written loosely, as EnvFilter took them.
        let (f, complaint) = filter(Some("debug, bramble::store=trace,"));
        assert!(complaint.is_none());
        assert!(f.would_enable("bramble::store", &tracing::Level::TRACE));
        assert!(f.would_enable("bramble::agent", &tracing::Level::DEBUG));
        // What Targets would misread is refused, with the reason.
        let (f, complaint) = filter(Some("bramble[raft]=debug"));
        assert!(complaint.is_some_and(|c| c.contains("span and field filters")));
        assert!(f.would_enable("bramble", &tracing::Level::INFO));
    }
}
