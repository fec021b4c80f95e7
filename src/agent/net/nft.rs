//! Applies the proxy's table with the `nft` binary (nftables 1.0.1 or newer): each change
//! is one `nft -f -` transaction, so the kernel switches from the old table to the new one
//! at once and a failed script changes nothing. Only our table is ever named.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use super::proxy::{Objects, Script, TABLE};

/// The oldest nftables whose syntax the proxy's scripts use (`th dport` in concatenations,
/// `numgen ... vmap`, dynamic sets with timeouts).
const MIN_VERSION: (u32, u32, u32) = (1, 0, 1);

/// Parses `nftables v1.0.6 (Lester Gooch #5)`.
fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let v = out.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
}

/// Refuses to go on without a usable `nft`, saying how to get one.
pub async fn check() -> anyhow::Result<()> {
    let out = tokio::process::Command::new("nft").arg("--version").output().await;
    let fix = "the agent needs nftables 1.0.1 or newer for Services, NodePorts, hostPorts and masquerade: \
               install it (Debian, Raspberry Pi OS: apt install nftables)";
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => bail!("`nft --version` failed ({}): {fix}", o.status),
        Err(e) => bail!("the nft binary is missing ({e}): {fix}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match parse_version(&text) {
        Some(v) if v >= MIN_VERSION => Ok(()),
        Some((a, b, c)) => bail!("nft is {a}.{b}.{c}; {fix}"),
        None => bail!("cannot read the version in {:?}; {fix}", text.trim()),
    }
}

/// Runs one script as a single transaction.
pub async fn run(script: &str) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    let mut stdin = child.stdin.take().context("nft's stdin")?;
    stdin.write_all(script.as_bytes()).await.context("writing the script to nft")?;
    drop(stdin);
    let out = child.wait_with_output().await.context("waiting for nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("nft refused the script ({}): {}", out.status, err.trim());
    }
    Ok(())
}

/// What was last applied, so an unchanged table costs nothing and the next transaction
/// knows which chains and sets to delete.
#[derive(Default)]
pub struct Applier {
    last: Option<(String, Objects)>,
}

impl Applier {
    /// Makes the table `script`; true when something was written.
    pub async fn apply(&mut self, script: &Script) -> anyhow::Result<bool> {
        if self.last.as_ref().is_some_and(|(body, _)| *body == script.body) {
            return Ok(false);
        }
        let previous = self.last.take().map(|(_, o)| o);
        let result = run(&script.transaction(previous.as_ref())).await;
        if result.is_ok() {
            self.last = Some((script.body.clone(), script.objects.clone()));
        }
        // After a failure `last` stays empty: the next attempt replaces the table whole.
        result.map(|()| true)
    }
}

/// Deletes our table (for `bramble killall`); a missing table is fine.
pub async fn remove_table() -> anyhow::Result<()> {
    run(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("nftables v1.0.6 (Lester Gooch #5)"), Some((1, 0, 6)));
        assert_eq!(parse_version("nftables v0.9.8 (E.D.S.)"), Some((0, 9, 8)));
        assert_eq!(parse_version("nftables v1.1 (x)"), Some((1, 1, 0)));
        assert!(parse_version("nftables v0.9.8 (E.D.S.)").is_some_and(|v| v < MIN_VERSION));
        assert_eq!(parse_version("garbage"), None);
    }
}
