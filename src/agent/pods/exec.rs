//! Commands run inside a pod's containers, for exec probes and `kubectl exec`: each is a
//! `bramble exec-in` process (see [`crate::runtime::exec`]) the agent starts and watches.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::Ctx;
use super::run::RunInfo;

/// A running container to exec into.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub bundle: PathBuf,
    pub root: PathBuf,
}

/// The UID of pod `ns/pod` if it has a directory on this node.
pub fn pod_uid(ctx: &Ctx, ns: &str, pod: &str) -> Option<String> {
    std::fs::read_dir(&ctx.layout.pods_dir).ok()?.flatten().find_map(|p| {
        let obj: Value = serde_json::from_slice(&std::fs::read(p.path().join("pod.json")).ok()?).ok()?;
        (obj["metadata"]["namespace"] == ns && obj["metadata"]["name"] == pod)
            .then(|| p.file_name().to_string_lossy().into_owned())
    })
}

/// The runs of container `name` in pod `ns/pod` on this node, oldest first.
pub fn runs(ctx: &Ctx, ns: &str, pod: &str, name: &str) -> Vec<(RunInfo, PathBuf)> {
    let Some(uid) = pod_uid(ctx, ns, pod) else { return Vec::new() };
    let mut runs: Vec<(RunInfo, PathBuf)> = std::fs::read_dir(ctx.layout.pod_dir(&uid).join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| {
            let info: RunInfo = serde_json::from_slice(&std::fs::read(c.path().join("run.json")).ok()?).ok()?;
            (info.name == name).then_some((info, c.path()))
        })
        .collect();
    runs.sort_by_key(|(r, _)| r.attempt);
    runs
}

/// The running container `name` of pod `ns/pod` on this node, if there is one.
pub fn find(ctx: &Ctx, ns: &str, pod: &str, name: &str) -> Option<Target> {
    let (info, bundle) = runs(ctx, ns, pod, name).pop()?;
    (!bundle.join("exit.json").exists()).then(|| Target { id: info.id, bundle, root: ctx.layout.runtime_root() })
}

/// The `bramble exec-in` command for `argv` in `target`.
pub fn command(
    target: &Target,
    tty: bool,
    resize_fd: Option<i32>,
    argv: &[String],
) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("finding the bramble binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("exec-in").arg("--root").arg(&target.root).arg("--id").arg(&target.id).arg("--bundle").arg(&target.bundle);
    if tty {
        cmd.arg("--tty");
    }
    if let Some(fd) = resize_fd {
        cmd.arg("--resize-fd").arg(fd.to_string());
    }
    cmd.arg("--").args(argv).env("BRAMBLE_LOG", "error,libcontainer=off,libcgroups=off").kill_on_drop(true);
    Ok(cmd)
}

/// Runs `argv` in `target` without input; returns its exit code and output, or an error
/// when it did not finish within `timeout`.
pub async fn capture(target: &Target, argv: &[String], timeout: Duration) -> anyhow::Result<(i32, String)> {
    let mut cmd = command(target, false, None, argv)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().context("starting exec-in")?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("command timed out after {}s", timeout.as_secs_f64()))?
        .context("waiting for exec-in")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(255), text))
}
