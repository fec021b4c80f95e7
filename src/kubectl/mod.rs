//! `bramble kubectl`: the everyday kubectl verbs built into the one binary, so a freshly
//! flashed board can be driven without installing anything. It reads the kubeconfig the
//! server wrote and learns the resource types from the server's discovery documents.
//! Invoked through a link named `kubectl`, the binary behaves as this command, as k3s does.
//!
//! `apply` is server-side apply (field manager `kubectl`): the server keeps the managed
//! fields, so no last-applied annotation is needed and removals work as users expect.
//!
//! The operating verbs follow kubectl's flags and words: `logs` and `exec` stream (exec and
//! `port-forward` over the WebSocket protocols of `client::Client::websocket`), `rollout`,
//! `wait` and `drain` watch objects through `follow`, `top` reads `metrics.k8s.io`.

mod describe;
mod discovery;
mod exec;
mod follow;
mod get;
mod jsonpath;
mod logs;
mod manifest;
mod modify;
mod node;
mod pods;
mod portforward;
mod rollout;
mod stdio;
mod table;
mod top;
mod tty;
mod wait;
mod write;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::client::Client;
use discovery::{Discovery, Resource};

/// `bramble kubectl` flags and verb.
#[derive(Args, Debug)]
pub struct KubectlArgs {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    verb: Verb,
}

/// Flags every verb accepts, anywhere on the line.
#[derive(Args, Debug, Clone)]
struct Global {
    /// Path to the kubeconfig (default: $KUBECONFIG, /etc/bramble/bramble.yaml, ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace for this request.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Act on every namespace.
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    all_namespaces: bool,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// List or show objects, as a table or in another format; `-w` keeps watching.
    Get(get::GetArgs),
    /// Show an object's details and its events.
    Describe(describe::DescribeArgs),
    /// Create objects from files (`-f`), or a namespace by name.
    Create(write::CreateArgs),
    /// Create or update objects from files by server-side apply.
    Apply(write::ApplyArgs),
    /// Delete objects named by files, by type and name, or by selector.
    Delete(write::DeleteArgs),
    /// Edit an object in $KUBE_EDITOR or $EDITOR and save it back.
    Edit(modify::EditArgs),
    /// Patch an object with a strategic merge, JSON merge or JSON patch.
    Patch(modify::PatchArgs),
    /// Add, change or remove labels.
    Label(modify::MetaArgs),
    /// Add, change or remove annotations.
    Annotate(modify::MetaArgs),
    /// Set the replica count of a deployment, replica set or stateful set.
    Scale(modify::ScaleArgs),
    /// Print a container's logs; `-f` follows them.
    Logs(logs::LogsArgs),
    /// Run a command in a container: `exec POD [-c C] [-i] [-t] -- CMD...`.
    Exec(exec::ExecArgs),
    /// Forward local ports to a pod: `port-forward POD|svc/NAME LOCAL:REMOTE...`.
    PortForward(portforward::PortForwardArgs),
    /// Follow, list, undo or restart the rollout of a deployment, stateful set or daemon set.
    Rollout(rollout::RolloutArgs),
    /// Show CPU and memory use of nodes or pods (needs the metrics.k8s.io API).
    Top(top::TopArgs),
    /// Mark a node unschedulable.
    Cordon(node::NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(node::NodeArgs),
    /// Cordon a node and evict its pods.
    Drain(node::DrainArgs),
    /// Wait for a condition, a JSONPath value, or deletion of objects.
    Wait(wait::WaitArgs),
    /// List the resource types the server serves.
    ApiResources,
    /// Print the client and server versions.
    Version,
}

/// What every verb needs: a client, the discovery and the namespace in force.
pub(crate) struct Ctx {
    client: Client,
    discovery: Discovery,
    namespace: String,
    namespace_given: bool,
    all_namespaces: bool,
}

impl Ctx {
    /// The namespace a namespaced request goes to (`None` with `-A`).
    fn list_namespace(&self) -> Option<&str> {
        if self.all_namespaces { None } else { Some(&self.namespace) }
    }
}

/// One resource type with the names the user gave for it (none: all of them).
pub(crate) struct Target<'a> {
    resource: &'a Resource,
    names: Vec<String>,
}

/// Parses `TYPE NAME...`, `TYPE1,TYPE2`, `TYPE/NAME ...` and categories (`all`) the way
/// kubectl does.
fn targets<'a>(discovery: &'a Discovery, args: &[String]) -> anyhow::Result<Vec<Target<'a>>> {
    let Some(first) = args.first() else {
        anyhow::bail!("you must specify the type of resource, for example `get pods` or `get deployment/web`");
    };
    if first.contains('/') {
        let mut out: Vec<Target<'a>> = Vec::new();
        for arg in args {
            let (ty, name) =
                arg.split_once('/').ok_or_else(|| anyhow::anyhow!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (got {arg:?})"))?;
            let resource = discovery.find(ty)?;
            match out.iter_mut().find(|t| std::ptr::eq(t.resource, resource)) {
                Some(t) => t.names.push(name.to_string()),
                None => out.push(Target { resource, names: vec![name.to_string()] }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    let mut out = Vec::new();
    for typed in first.split(',').filter(|t| !t.is_empty()) {
        let in_category = discovery.category(typed);
        if in_category.is_empty() || discovery.find(typed).is_ok() {
            out.push(Target { resource: discovery.find(typed)?, names: names.clone() });
        } else {
            out.extend(in_category.into_iter().map(|resource| Target { resource, names: names.clone() }));
        }
    }
    Ok(out)
}

async fn run_verb(global: Global, verb: Verb) -> anyhow::Result<()> {
    let client = Client::from_kubeconfig(global.kubeconfig.as_deref(), global.context.as_deref())?;
    if let Verb::Version = verb {
        println!("Client Version: v{} (bramble)", env!("CARGO_PKG_VERSION"));
        let v = client.get("/version").await?;
        println!("Server Version: {}", v["gitVersion"].as_str().unwrap_or("unknown"));
        return Ok(());
    }
    let discovery = Discovery::load(&client).await?;
    let ctx = Ctx {
        namespace: global.namespace.clone().unwrap_or_else(|| client.namespace.clone()),
        namespace_given: global.namespace.is_some(),
        all_namespaces: global.all_namespaces,
        client,
        discovery,
    };
    match verb {
        Verb::Get(a) => get::run(&ctx, a).await,
        Verb::Describe(a) => describe::run(&ctx, a).await,
        Verb::Create(a) => write::create(&ctx, a).await,
        Verb::Apply(a) => write::apply(&ctx, a).await,
        Verb::Delete(a) => write::delete(&ctx, a).await,
        Verb::Edit(a) => modify::edit(&ctx, a).await,
        Verb::Patch(a) => modify::patch(&ctx, a).await,
        Verb::Label(a) => modify::label(&ctx, a, "labels").await,
        Verb::Annotate(a) => modify::label(&ctx, a, "annotations").await,
        Verb::Scale(a) => modify::scale(&ctx, a).await,
        Verb::Logs(a) => logs::run(&ctx, a).await,
        Verb::Exec(a) => exec::run(&ctx, a).await,
        Verb::PortForward(a) => portforward::run(&ctx, a).await,
        Verb::Rollout(a) => rollout::run(&ctx, a).await,
        Verb::Top(a) => top::run(&ctx, a).await,
        Verb::Cordon(a) => node::cordon(&ctx, a, true).await,
        Verb::Uncordon(a) => node::cordon(&ctx, a, false).await,
        Verb::Drain(a) => node::drain(&ctx, a).await,
        Verb::Wait(a) => wait::run(&ctx, a).await,
        Verb::ApiResources => {
            let rows = ctx
                .discovery
                .all()
                .iter()
                .map(|r| {
                    vec![
                        r.plural.clone(),
                        r.short_names.join(","),
                        r.api_version(),
                        r.namespaced.to_string(),
                        r.kind.clone(),
                    ]
                })
                .collect();
            let header = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"].map(String::from).to_vec();
            table::print(&header, rows);
            Ok(())
        }
        Verb::Version => Ok(()),
    }
}

/// A failure the verb has already explained on stderr in kubectl's own words: the command
/// exits 1 without printing more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Reported(String);

/// Runs one kubectl command line and returns the process exit code, printing errors the
/// way kubectl does (`Error from server (NotFound): ...` or `error: ...`).
pub fn run(rt: &tokio::runtime::Runtime, args: KubectlArgs) -> u8 {
    // A client piped into `head` should end quietly, as kubectl does, not panic on EPIPE.
    // SAFETY: restoring the default disposition of one signal before any thread that could
    // rely on it being ignored exists in this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match rt.block_on(run_verb(args.global, args.verb)) {
        Ok(()) => 0,
        Err(e) => {
            if e.downcast_ref::<Reported>().is_some() {
                return 1;
            }
            // `exec` ends with the command's own exit code, and kubectl's words for it.
            if let Some(exec::ExecError::ExitCode(code)) = e.downcast_ref::<exec::ExecError>() {
                eprintln!("command terminated with exit code {code}");
                return u8::try_from(*code).ok().filter(|c| *c != 0).unwrap_or(1);
            }
            match e.downcast_ref::<crate::client::ClientError>().and_then(crate::client::ClientError::status) {
                Some(s) => eprintln!("{s}"),
                None => eprintln!("error: {e:#}"),
            }
            1
        }
    }
}
