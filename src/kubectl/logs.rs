//! `logs`: a container's output from `pods/NAME/log`, streamed as it arrives with `-f`;
//! `logs deploy/NAME` (or any workload or Service) reads the pod kubectl would pick.

use anyhow::{Context, bail};
use http_body_util::BodyExt;

use super::Ctx;
use super::follow::parse_duration;
use super::get::urlencode;
use super::pods;
use super::stdio::{self, Stream};

/// `logs` flags, as kubectl spells them.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// POD, pod/NAME, or TYPE/NAME of a workload or Service (its most active pod).
    target: String,
    /// The container (kubectl's older positional form of -c).
    container_arg: Option<String>,
    /// The container to read; default: the pod's default container, else its first.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep streaming new output until the container stops.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The previous run of the container (after a restart).
    #[arg(short = 'p', long)]
    previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    tail: i64,
    /// Prefix every line with its RFC3339 timestamp.
    #[arg(long)]
    timestamps: bool,
    /// Only output newer than this (5s, 2m, 3h).
    #[arg(long)]
    since: Option<String>,
    /// At most this many bytes.
    #[arg(long)]
    limit_bytes: Option<u64>,
    /// Every container of the pod, one after another (all at once with -f).
    #[arg(long)]
    all_containers: bool,
    /// Prefix every line with pod/NAME/CONTAINER.
    #[arg(long)]
    prefix: bool,
}

/// The query of one `pods/NAME/log` request.
#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    container: String,
    follow: bool,
    previous: bool,
    tail_lines: Option<i64>,
    timestamps: bool,
    since_seconds: Option<u64>,
    limit_bytes: Option<u64>,
}

impl LogQuery {
    fn to_query(&self) -> String {
        let mut parts = vec![format!("container={}", urlencode(&self.container))];
        if self.follow {
            parts.push("follow=true".into());
        }
        if self.previous {
            parts.push("previous=true".into());
        }
        if let Some(n) = self.tail_lines {
            parts.push(format!("tailLines={n}"));
        }
        if self.timestamps {
            parts.push("timestamps=true".into());
        }
        if let Some(s) = self.since_seconds {
            parts.push(format!("sinceSeconds={s}"));
        }
        if let Some(b) = self.limit_bytes {
            parts.push(format!("limitBytes={b}"));
        }
        parts.join("&")
    }
}

/// Cuts a stream into whole lines with a prefix in front of each; without a prefix the
/// bytes pass through as they come.
struct Prefixer {
    prefix: Option<String>,
    partial: Vec<u8>,
}

impl Prefixer {
    /// What can be printed after `data` arrived.
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(prefix) = &self.prefix else { return data.to_vec() };
        self.partial.extend_from_slice(data);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return Vec::new() };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut out = Vec::with_capacity(complete.len() + prefix.len() * 4);
        for line in complete.split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(prefix.as_bytes());
            out.push(b' ');
            out.extend_from_slice(line);
        }
        out
    }

    /// What is left when the stream ended without a final newline.
    fn finish(&mut self) -> Vec<u8> {
        // Only a prefixer keeps bytes back.
        if self.partial.is_empty() { Vec::new() } else { self.feed(b"\n") }
    }
}

/// Streams one container's log to stdout.
async fn stream(ctx: &Ctx, ns: &str, pod: &str, q: &LogQuery, prefix: Option<String>) -> anyhow::Result<()> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/log?{}", q.to_query());
    let mut body = ctx.client.stream(&path, "*/*").await?;
    let mut lines = Prefixer { prefix, partial: Vec::new() };
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading the log of {pod}/{}", q.container))?;
        let Some(data) = frame.data_ref() else { continue };
        stdio::write(Stream::Stdout, lines.feed(data)).await?;
    }
    stdio::write(Stream::Stdout, lines.finish()).await
}

/// Runs `logs`.
pub async fn run(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<()> {
    let chosen = pods::resolve(ctx, &a.target).await?;
    if chosen.matched > 1 {
        eprintln!("Found {} pods, using pod/{}", chosen.matched, chosen.name());
    }
    let asked = a.container.as_deref().or(a.container_arg.as_deref());
    let containers: Vec<String> = if a.all_containers {
        if asked.is_some() {
            bail!("--all-containers=true should not be specified with container name {}", asked.unwrap_or(""));
        }
        let spec = &chosen.pod["spec"];
        spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    } else {
        let (container, notice) = pods::container(&chosen.pod, asked)?;
        if let Some(n) = notice {
            eprintln!("{n}");
        }
        vec![container]
    };
    let since_seconds = match &a.since {
        Some(s) => Some(parse_duration(s).context("--since")?.as_secs_f64().ceil() as u64),
        None => None,
    };
    let queries: Vec<LogQuery> = containers
        .into_iter()
        .map(|container| LogQuery {
            container,
            follow: a.follow,
            previous: a.previous,
            tail_lines: (a.tail >= 0).then_some(a.tail),
            timestamps: a.timestamps,
            since_seconds,
            limit_bytes: a.limit_bytes,
        })
        .collect();
    let (ns, pod) = (chosen.namespace(), chosen.name());
    let prefix_of = |q: &LogQuery| a.prefix.then(|| format!("[pod/{pod}/{}]", q.container));
    if a.follow {
        let streams = queries.iter().map(|q| stream(ctx, ns, pod, q, prefix_of(q)));
        futures_util::future::try_join_all(streams).await?;
    } else {
        for q in &queries {
            stream(ctx, ns, pod, q, prefix_of(q)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_say_only_what_was_asked() {
        let q = LogQuery { container: "main".into(), ..Default::default() };
        assert_eq!(q.to_query(), "container=main");
        let q = LogQuery {
            container: "main".into(),
            follow: true,
            previous: true,
            tail_lines: Some(5),
            timestamps: true,
            since_seconds: Some(60),
            limit_bytes: Some(100),
        };
        assert_eq!(
            q.to_query(),
            "container=main&follow=true&previous=true&tailLines=5&timestamps=true&sinceSeconds=60&limitBytes=100"
        );
    }

    #[test]
    fn prefixes_go_in_front_of_whole_lines() {
        let mut plain = Prefixer { prefix: None, partial: Vec::new() };
        assert_eq!(plain.feed(b"a\nb"), b"a\nb");
        assert!(plain.finish().is_empty());
        let mut p = Prefixer { prefix: Some("[pod/x/c]".into()), partial: Vec::new() };
        assert_eq!(p.feed(b"one\ntw"), b"[pod/x/c] one\n");
        assert_eq!(p.feed(b"o\nthree"), b"[pod/x/c] two\n");
        assert_eq!(p.finish(), b"[pod/x/c] three\n");
    }
}
