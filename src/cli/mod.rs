//! The command tree. `bramble server` runs the control plane (API + store, and the agent
//! once it exists); flags mirror k3s's names where the idea is the same. `bramble kubectl`
//! is the built-in client.

mod certificate;
mod check_config;
mod config_file;
mod logging;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "bramble", version, about = "Kubernetes for fleets of small ARM boards, in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: the Kubernetes API over a Raft-replicated store.
    Server(Box<ServerArgs>),
    /// Run a node agent that joins a server with its token.
    Agent(AgentArgs),
    /// Manage this node's images: import archives, list, remove.
    Image(ImageArgs),
    /// The built-in kubectl (also what runs when the binary is invoked as `kubectl`).
    #[command(disable_help_subcommand = true)]
    Kubectl(crate::kubectl::KubectlArgs),
    /// Manage the keys Secrets are encrypted with at rest (k3s's verbs), through the API.
    SecretsEncrypt(SecretsEncryptArgs),
    /// Whether this machine can run a node: kernel, cgroups, namespaces, overlayfs,
    /// nftables, disk and clock, each with the fix when it cannot.
    CheckConfig(check_config::CheckConfigArgs),
    /// This node's certificates: days left (`check`), renewal now (`rotate`).
    Certificate(certificate::CertificateArgs),
    /// Make kubeconfigs for people: a client certificate from the cluster CA (run on a server).
    Kubeconfig(KubeconfigArgs),
    /// Stop every container of this node and remove its pods' mounts, namespaces and cgroups.
    Killall {
        /// The node's data directory.
        #[arg(long, short = 'd', default_value = "/var/lib/bramble")]
        data_dir: PathBuf,
        /// The node's pod log directory (`--pod-log-dir`).
        #[arg(long, default_value = "/var/log/pods")]
        pod_log_dir: PathBuf,
    },
    /// Prints the systemd unit for `server` or `agent` (what install.sh installs).
    #[command(hide = true)]
    SystemdUnit {
        #[arg(value_parser = ["server", "agent"])]
        role: String,
    },
    /// The monitor of one container (started by the agent, not by hand).
    #[command(hide = true)]
    Shim(crate::runtime::shim::ShimArgs),
    /// Runs a command in a container (started by the agent for exec and probes).
    #[command(hide = true)]
    ExecIn(crate::runtime::exec::ExecArgs),
}

/// The units in the source tree's `systemd/`, carried so that install.sh piped from a URL
/// installs exactly them.
const SERVER_UNIT: &str = include_str!("../../systemd/bramble.service");
const AGENT_UNIT: &str = include_str!("../../systemd/bramble-agent.service");

fn parse_pod_security_level(s: &str) -> Result<crate::api::pod_security::Level, String> {
    crate::api::pod_security::Level::parse(s)
        .ok_or_else(|| format!("{s:?} is not a PodSecurity level: use privileged, baseline or restricted"))
}

/// `bramble kubeconfig` arguments: alone, the admin kubeconfig for another machine.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KubeconfigArgs {
    #[command(subcommand)]
    verb: Option<KubeconfigVerb>,
    /// The API address written into the admin kubeconfig (default: this machine's
    /// address, port 6443), e.g. `https://192.168.1.20:6443` to use it from a laptop.
    #[arg(long)]
    server: Option<String>,
    /// The server's data directory (the admin certificate is in `server/tls` there).
    #[arg(long, short = 'd', default_value = "/var/lib/bramble")]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum KubeconfigVerb {
    /// A kubeconfig for a person: CN = the user, O = the groups. What they may do is what
    /// RBAC grants that user or those groups (e.g. `kubectl create rolebinding ... --clusterrole=edit --user=NAME`).
    Create {
        /// The user name RBAC knows them by.
        #[arg(long)]
        user: String,
        /// A group they belong to (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// The server's data directory (the CA is in `server/tls` there).
        #[arg(long, short = 'd', default_value = "/var/lib/bramble")]
        data_dir: PathBuf,
        /// The API address written into the kubeconfig (default: this machine's address, port 6443).
        #[arg(long)]
        server: Option<String>,
        /// Where to write it (mode 0600; default: standard output).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

/// Writes a person's kubeconfig (see [`KubeconfigVerb::Create`]).
fn run_kubeconfig(args: KubeconfigArgs) -> anyhow::Result<()> {
    let server_or_here = |server: Option<String>| {
        server.unwrap_or_else(|| format!("https://{}:6443", server::primary_ip().unwrap_or_else(|| "127.0.0.1".into())))
    };
    let Some(KubeconfigVerb::Create { user, groups, days, data_dir, server, output }) = args.verb else {
        // The admin's own, pointed at an address other machines reach (the serving
        // certificate covers this machine's addresses and every --tls-san).
        let tls = args.data_dir.join("server").join("tls");
        let pki = crate::pki::Pki::open_ca(&tls)?;
        let admin = pki.admin_pair().context("reading the admin certificate (run this on a server, as root)")?;
        print!("{}", crate::pki::kubeconfig(&server_or_here(args.server), &pki.ca.cert_pem, &admin));
        return Ok(());
    };
    if user.trim().is_empty() {
        anyhow::bail!("--user must name someone");
    }
    if !(1..=3650).contains(&days) {
        anyhow::bail!("--days must be between 1 and 3650");
    }
    let pki = crate::pki::Pki::open_ca(&data_dir.join("server").join("tls"))?;
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let pair = pki.issue_user(&user, &groups, days)?;
    let config = crate::pki::kubeconfig(&server_or_here(server), &pki.ca.cert_pem, &pair);
    match output {
        Some(path) => crate::pki::write_private(&path, config.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{config}"),
    }
    Ok(())
}

/// `bramble secrets-encrypt` arguments.
#[derive(clap::Args, Debug)]
pub struct SecretsEncryptArgs {
    #[command(subcommand)]
    verb: SecretsEncryptVerb,
    /// The admin kubeconfig (default: `$KUBECONFIG`, then `/etc/bramble/bramble.yaml`).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum SecretsEncryptVerb {
    /// The key new Secrets are sealed with, and the older keys kept for reading.
    Status,
    /// Make a new key for every Secret written from now on; the old one is kept to read.
    Rotate,
    /// Rewrite every Secret sealed with an old key under the current one.
    Reencrypt,
}

async fn run_secrets_encrypt(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let kubeconfig = args.kubeconfig.or_else(|| {
        std::env::var_os("KUBECONFIG").map(PathBuf::from).or_else(|| Some(PathBuf::from("/etc/bramble/bramble.yaml")))
    });
    let client = crate::client::Client::from_kubeconfig(kubeconfig.as_deref(), None)?;
    let (method, verb) = match args.verb {
        SecretsEncryptVerb::Status => ("GET", "status"),
        SecretsEncryptVerb::Rotate => ("POST", "rotate"),
        SecretsEncryptVerb::Reencrypt => ("POST", "reencrypt"),
    };
    let v = client
        .call(method, &format!("/v1-bramble/secrets-encrypt/{verb}"), None, "application/json", None)
        .await
        .with_context(|| format!("secrets-encrypt {verb}"))?;
    println!("current key: {}", v["currentKey"].as_str().unwrap_or("?"));
    let old: Vec<&str> = v["oldKeys"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!("old keys (kept for reading): {}", if old.is_empty() { "none".to_string() } else { old.join(", ") });
    if let Some(n) = v["reencrypted"].as_u64() {
        println!("re-encrypted {n} secrets");
    }
    Ok(())
}

/// `bramble server` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Where the store, certificates and tokens live.
    #[arg(long, short = 'd', default_value = "/var/lib/bramble")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    /// HTTPS port of the API.
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: String,
    /// Built-in parts to leave off (k3s's flag): `servicelb`, so MetalLB or kube-vip can
    /// serve LoadBalancer Services; `ingress` (k3s's `traefik`), so another Ingress
    /// controller can take ports 80 and 443.
    #[arg(long, value_parser = ["servicelb", "ingress"])]
    pub disable: Vec<String>,
    /// Address the API is reached at from pods and other nodes: the endpoint of the
    /// `kubernetes` Service (k3s's flag). Default: the bind address, or with a wildcard
    /// bind the address of the interface the default route leaves by.
    #[arg(long)]
    pub advertise_address: Option<std::net::IpAddr>,
    /// The `iss` of ServiceAccount tokens (upstream's `--service-account-issuer`): where
    /// OIDC clients find `/.well-known/openid-configuration`.
    #[arg(long, default_value = crate::api::access::DEFAULT_ISSUER)]
    pub service_account_issuer: String,
    /// Audiences the API accepts in ServiceAccount tokens (upstream's `--api-audiences`;
    /// default: the issuer).
    #[arg(long, value_delimiter = ',')]
    pub api_audiences: Vec<String>,
    /// Where to write the admin kubeconfig (mode 0600).
    #[arg(long, short = 'o', default_value = "/etc/bramble/bramble.yaml")]
    pub write_kubeconfig: PathBuf,
    /// Extra names or addresses for the serving certificate.
    #[arg(long)]
    pub tls_san: Vec<String>,
    /// Run without the node agent on this machine.
    #[arg(long)]
    pub disable_agent: bool,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The join token agents present (default: generated once and kept in
    /// `<data-dir>/server/node-token`).
    #[arg(long, env = "BRAMBLE_TOKEN")]
    pub token: Option<String>,
    /// Service ClusterIP range.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Pod address range (a /24 per node).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// The cluster DNS address: the `kube-dns` Service's ClusterIP (default: the tenth
    /// address of `--service-cidr`, 10.43.0.10 as k3s).
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// NodePort range.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Store page cache in MiB (sled's own default of 1 GiB is too big for a board).
    #[arg(long, default_value_t = 8)]
    pub store_cache_mb: u64,
    /// Watch history kept in memory, in events (a watcher further behind relists: 410).
    #[arg(long, default_value_t = 4_000)]
    pub watch_history: usize,
    /// Watch history kept in memory, in MiB of (LZ4-compressed) values: whichever of this
    /// and `--watch-history` is reached first bounds it.
    #[arg(long, default_value_t = 16)]
    pub watch_history_mb: usize,
    /// How long a node may go without a heartbeat before it is marked unreachable
    /// (`40s`, `2m`, `1m30s`).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Where local PersistentVolumes keep their data on each node.
    #[arg(long, default_value = "/var/lib/bramble/storage")]
    pub default_local_storage_path: String,
    /// Seconds a client may take to send a request's headers (or the HTTP/2 preface), and
    /// an idle keep-alive connection may wait for its next request.
    #[arg(long, default_value_t = 30)]
    pub request_header_timeout: u64,

    /// The PodSecurity level (`privileged`, `baseline` or `restricted`) of namespaces
    /// without `pod-security.kubernetes.io/*` labels.
    #[arg(long, default_value = "privileged", value_parser = parse_pod_security_level)]
    pub pod_security_default: crate::api::pod_security::Level,

    /// MiB kept free on the store's file system: writes get 507 below it (deletes are
    /// admitted down to 256 KiB) and resume by themselves when space comes back. Keep it
    /// at least twice the largest checkpoint (up to 32 MiB of changed objects).
    #[arg(long, default_value_t = 64)]
    pub store_reserve_mb: u64,
    /// Raft log entries between snapshots of the state machine (each lets the log be
    /// purged behind it).
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub store_snapshot_entries: u64,
    /// Check the integrity of the store (Raft log, state machine, snapshot) without
    /// changing it, print what was found, and exit: non-zero when anything is damaged.
    #[arg(long)]
    pub check_store: bool,

    /// Watches one identity may have open at once; more get 429.
    #[arg(long, default_value_t = 1000)]
    pub max_watches: usize,

    /// Requests one identity may have in flight (watches not counted); more get 429.
    #[arg(long, default_value_t = 200)]
    pub max_requests_inflight: usize,

    /// Open client connections at once; more are closed as they arrive.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,

    /// Bearer tokens in the upstream `--token-auth-file` format.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// A label this node registers with, `key=value` (repeatable).
    #[arg(long)]
    pub node_label: Vec<String>,
    /// A taint this node registers with, `key=value:Effect` (repeatable).
    #[arg(long)]
    pub node_taint: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Flags of both long-running commands (`bramble server`, `bramble agent`).
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// A YAML file of flags (`node-label: [a=b]`, `disable-agent: true`), then each
    /// `<file>.d/*.yaml` in name order; flags on the command line win.
    #[arg(long, short = 'c', env = "BRAMBLE_CONFIG_FILE", default_value = config_file::DEFAULT_PATH)]
    pub config: PathBuf,
    /// How much to log: `error`, `warn`, `info`, `debug`, `trace`, or tracing directives
    /// (`info,bramble::agent=debug`); `BRAMBLE_LOG` or `RUST_LOG` win when set.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// How long new serving, admin and node certificates last (tests shorten it).
    #[arg(long, default_value = "8760h", value_parser = parse_duration, hide = true)]
    pub certificate_lifetime: std::time::Duration,
    /// How much validity must be left: less, and the running server or agent renews.
    #[arg(long, default_value = "2160h", value_parser = parse_duration, hide = true)]
    pub certificate_renew_before: std::time::Duration,
}

impl CommonArgs {
    /// The certificate lifetimes these flags ask for.
    pub fn certificate_lifetimes(&self) -> crate::pki::renewal::Lifetimes {
        crate::pki::renewal::Lifetimes {
            lifetime: self.certificate_lifetime.max(std::time::Duration::from_secs(10)),
            renew_before: self.certificate_renew_before,
        }
    }
}

/// How this node runs pods (both `bramble server` and `bramble agent`).
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Where container logs go, `<namespace>_<pod>_<uid>/<container>/<restart>.log`.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Registry configuration in k3s's `registries.yaml` format; mirrors whose endpoint is
    /// `http://...` are pulled from over plain HTTP.
    #[arg(long, default_value = "/etc/bramble/registries.yaml")]
    pub private_registry: PathBuf,
    /// Port of the node's HTTPS endpoint for logs (the API server connects to it).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Most processes one container may have (`pids` cgroup); 0 for no limit.
    #[arg(long, default_value_t = 4096)]
    pub pod_max_pids: i64,
    /// How pods on different nodes reach each other: `vxlan` (any network), `host-gw`
    /// (plain routes; nodes on one L2 segment, or kernels without vxlan) or `none`.
    #[arg(long, default_value = "vxlan")]
    pub flannel_backend: crate::agent::net::overlay::Backend,
    /// The address other nodes reach this one at (default: the address of the default
    /// route's interface).
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// The interface whose address is this node's (instead of the default route's).
    #[arg(long)]
    pub flannel_iface: Option<String>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The resolver configuration pods with `dnsPolicy: Default` get and the cluster DNS
    /// forwards to (default: `/etc/resolv.conf`, or systemd-resolved's upstreams when that
    /// names only its loopback stub).
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
    /// Port of the node's Ingress proxy for HTTP (0: none).
    #[arg(long, default_value_t = 80)]
    pub ingress_http_port: u16,
    /// Port of the node's Ingress proxy for HTTPS (0: none).
    #[arg(long, default_value_t = 443)]
    pub ingress_https_port: u16,
}

impl From<RuntimeArgs> for crate::agent::RuntimeOptions {
    fn from(a: RuntimeArgs) -> Self {
        crate::agent::RuntimeOptions {
            pod_log_dir: a.pod_log_dir,
            private_registry: a.private_registry,
            kubelet_port: a.kubelet_port,
            pod_max_pids: a.pod_max_pids,
            net: crate::agent::net::NetOptions {
                backend: a.flannel_backend,
                node_ip: a.node_ip,
                iface: a.flannel_iface,
                cluster_domain: a.cluster_domain,
                resolv_conf: a.resolv_conf,
            },
            ingress: crate::agent::net::ingress::IngressOptions {
                http_port: a.ingress_http_port,
                https_port: a.ingress_https_port,
            },
        }
    }
}

/// The command line, with `kubectl` inserted when the binary runs through a link of that
/// name (the multi-call convention k3s uses too).
fn command_line() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args.first().map(PathBuf::from).and_then(|p| p.file_name().map(|n| n.to_os_string()));
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new("kubectl")) {
        args.insert(1, "kubectl".into());
    }
    args
}

/// `bramble agent` flags (k3s agent names).
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The server to join, `https://host:6443`.
    #[arg(long, env = "BRAMBLE_URL")]
    pub server: String,
    /// The join token from the server's `<data-dir>/server/node-token`.
    #[arg(long, env = "BRAMBLE_TOKEN")]
    pub token: String,
    /// Where this node keeps its credentials and, later, its pods' data.
    #[arg(long, short = 'd', default_value = "/var/lib/bramble")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// A label this node registers with, `key=value` (repeatable).
    #[arg(long)]
    pub node_label: Vec<String>,
    /// A taint this node registers with, `key=value:Effect` (repeatable).
    #[arg(long)]
    pub node_taint: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `bramble image` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// The node's data directory.
    #[arg(long, short = 'd', default_value = "/var/lib/bramble", global = true)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// What `bramble image` does.
#[derive(Subcommand, Debug, Clone)]
pub enum ImageCommand {
    /// Import `docker save` or OCI archives (plain or gzipped).
    Import { files: Vec<PathBuf> },
    /// Pull an image from its registry.
    Pull {
        reference: String,
        /// A registry (`host:port`) to reach over plain HTTP (repeatable).
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// `user:password` for the registry.
        #[arg(long)]
        creds: Option<String>,
    },
    /// List the images on this node.
    Ls,
    /// Remove images, and the layers nothing else uses.
    Rm { references: Vec<String> },
    /// Mount an image's root file system (overlayfs over its shared layers) under DIR, as a
    /// container gets it; prints the merged directory.
    Mount { reference: String, dir: PathBuf },
    /// Unmount what `image mount` mounted under DIR and remove DIR.
    Unmount { dir: PathBuf },
}

async fn run_image(args: ImageArgs) -> anyhow::Result<()> {
    let store = crate::images::ImageStore::open(&args.data_dir)?;
    match args.command {
        ImageCommand::Pull { reference, insecure_registry, creds } => {
            let auth = match creds.as_deref().map(|c| c.split_once(':')) {
                None => oci_client::secrets::RegistryAuth::Anonymous,
                Some(Some((user, password))) => oci_client::secrets::RegistryAuth::Basic(user.into(), password.into()),
                Some(None) => anyhow::bail!("--creds must look like user:password"),
            };
            let pulled = crate::images::pull::pull(&store, &reference, &insecure_registry, auth).await?;
            println!("pulled {pulled}");
        }
        ImageCommand::Import { files } => {
            if files.is_empty() {
                anyhow::bail!("give one or more archive files to import");
            }
            for f in files {
                for r in store.import(&f).with_context(|| format!("importing {}", f.display()))? {
                    println!("imported {r}");
                }
            }
        }
        ImageCommand::Ls => {
            println!("{:<50} {:<20} {:<14} SIZE", "REPOSITORY", "TAG", "IMAGE ID");
            for (r, image) in store.list()? {
                let parsed = crate::images::reference::Reference::parse(&r)?;
                let id: String = image.id.trim_start_matches("sha256:").chars().take(12).collect();
                println!("{:<50} {:<20} {:<14} {:.1}MB", parsed.name(), parsed.tag, id, image.size as f64 / 1e6);
            }
        }
        ImageCommand::Mount { reference, dir } => {
            let image = store.get(&reference)?;
            let rootfs = crate::images::rootfs::Rootfs::mount(&store, &image, &dir)?;
            println!("{}", rootfs.merged.display());
        }
        ImageCommand::Unmount { dir } => crate::images::rootfs::Rootfs::at(&dir).unmount()?,
        ImageCommand::Rm { references } => {
            store.remove(&references)?;
            for r in references {
                println!("deleted {r}");
            }
        }
    }
    Ok(())
}

/// Runs `bramble agent` until SIGTERM.
async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    crate::agent::facts::check_kernel()?;
    crate::agent::check_flags(&args.node_label, &args.node_taint)?;
    let node_name = match args.node_name.clone() {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .context("reading the host name; pass --node-name")?,
    };
    let kubeconfig = crate::agent::join::credentials(&args.data_dir, &args.server, &args.token, &node_name)
        .await
        .context("joining the cluster")?;
    tracing::info!(server = %args.server, node = %node_name, "joined");
    crate::sys::systemd::ready(&format!("joined {} as {node_name}", args.server));
    crate::sys::systemd::spawn_watchdog();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = crate::agent::AgentOptions {
        kubeconfig,
        node_name,
        data_dir: args.data_dir.clone(),
        labels: args.node_label.clone(),
        taints: args.node_taint.clone(),
        server: false,
        runtime: args.runtime.clone().into(),
    };
    certificate::write_pid_file(&args.data_dir);
    let renewal = crate::agent::certs::NodeCert {
        kubeconfig: opts.kubeconfig.clone(),
        dir: args.data_dir.join("agent"),
        lifetimes: args.common.certificate_lifetimes(),
    };
    tokio::spawn(renewal.run(stop_rx.clone()));
    let agent = tokio::spawn(crate::agent::run(opts, stop_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = agent => return r.context("the agent task")?,
    }
    crate::sys::systemd::stopping("asked to stop");
    let _ = stop_tx.send(true);
    Ok(())
}

/// Parses the command line (or behaves as `kubectl` when invoked by that name) and runs.
pub fn run() -> ExitCode {
    // SAFETY: nothing has started a thread yet (the async runtime starts below).
    unsafe { crate::sys::systemd::take_environment() };
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let level = match &cli.command {
        Command::Server(a) => Some(a.common.log_level.as_str()),
        Command::Agent(a) => Some(a.common.log_level.as_str()),
        _ => None,
    };
    logging::init(level);
    // The shim forks: it must run before the async runtime starts any thread.
    let cli = match cli.command {
        Command::Shim(args) => return crate::runtime::shim::run(args),
        Command::ExecIn(args) => return crate::runtime::exec::run(args),
        Command::Certificate(args) => return certificate::run(args),
        Command::CheckConfig(args) => return check_config::run(args),
        Command::SystemdUnit { role } => {
            print!("{}", if role == "agent" { AGENT_UNIT } else { SERVER_UNIT });
            return ExitCode::SUCCESS;
        }
        Command::Killall { data_dir, pod_log_dir } => {
            let n = crate::agent::pods::killall::killall(&data_dir, &pod_log_dir);
            println!("removed {n} pods");
            return ExitCode::SUCCESS;
        }
        Command::Kubeconfig(args) => {
            return match run_kubeconfig(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bramble: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        other => Cli { command: other },
    };
    let rt = match &cli.command {
        Command::Kubectl(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Command::Server(_)
        | Command::SecretsEncrypt(_)
        | Command::Agent(_)
        | Command::Image(_)
        | Command::Shim(_)
        | Command::ExecIn(_)
        | Command::Kubeconfig(_)
        | Command::SystemdUnit { .. }
        | Command::Certificate(_)
        | Command::CheckConfig(_)
        | Command::Killall { .. } => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bramble: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(args) => rt.block_on(server::run(*args)),
        Command::Agent(args) => rt.block_on(run_agent(args)),
        Command::Image(args) => rt.block_on(run_image(args)),
        Command::SecretsEncrypt(args) => rt.block_on(run_secrets_encrypt(args)),
        Command::Kubectl(args) => return ExitCode::from(crate::kubectl::run(&rt, args)),
        Command::Shim(_)
        | Command::ExecIn(_)
        | Command::Killall { .. }
        | Command::Kubeconfig(_)
        | Command::SystemdUnit { .. }
        | Command::Certificate(_)
        | Command::CheckConfig(_) => {
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bramble: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line with the configuration files' flags in front; a bad file or flag
/// ends the process with clap's (or the file's) message.
fn parse() -> Result<Cli, ExitCode> {
    let mut command = Cli::command();
    let args = match config_file::with_config(command_line(), &command) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bramble: {e}");
            return Err(ExitCode::from(2));
        }
    };
    command.try_get_matches_from_mut(args).and_then(|m| Cli::from_arg_matches(&m)).map_err(|e| {
        // Help and version are "errors" that print to stdout and succeed.
        if let Err(print) = e.print() {
            eprintln!("bramble: {print}");
        }
        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
    })
}

/// Parses a Go-style duration of whole units (`90s`, `2m`, `1h30m`, or bare seconds), as
/// kube-controller-manager's duration flags take them.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 40s, 2m or 1h30m"))?;
        total += n * match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("{text:?} is not a duration like 40s, 2m or 1h30m")),
        };
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("{text:?} is not a duration like 40s, 2m or 1h30m (say the unit)"));
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("1m5").is_err());
    }

    #[test]
    fn a_config_file_sets_the_servers_flags() {
        let dir = std::env::temp_dir().join(format!("bramble-cli-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("config.yaml.d")).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "disable: [servicelb]\ndisable-agent: true\nnode-label: [role=edge]\nhttps-listen-port: 7443\n\
             node-monitor-grace-period: 1m\npod-security-default: baseline\ningress-http-port: 8080\n",
        )
        .unwrap();
        std::fs::write(dir.join("config.yaml.d/50-zone.yaml"), "node-label+: [zone=a]\nlog-level: debug\n").unwrap();
        let args: Vec<std::ffi::OsString> =
            ["bramble", "server", "--config", file.to_str().unwrap(), "--https-listen-port", "9443"]
                .iter()
                .map(Into::into)
                .collect();
        let args = config_file::with_config(args, &Cli::command()).unwrap();
        let Command::Server(a) = Cli::try_parse_from(args).unwrap().command else { panic!("not a server") };
        assert_eq!(a.disable, ["servicelb"]);
        assert!(a.disable_agent);
        assert_eq!(a.node_label, ["role=edge", "zone=a"]);
        assert_eq!(a.https_listen_port, 9443, "the command line wins");
        assert_eq!(a.node_monitor_grace_period, Duration::from_secs(60));
        assert_eq!(a.runtime.ingress_http_port, 8080, "flattened flags are keys too");
        assert_eq!(a.common.log_level, "debug");
        std::fs::write(&file, "disable: [traefik]\n").unwrap();
        let args = config_file::with_config(
            ["bramble", "server", "-c", file.to_str().unwrap()].iter().map(Into::into).collect(),
            &Cli::command(),
        )
        .unwrap();
        let e = Cli::try_parse_from(args).err().unwrap().to_string();
        assert!(e.contains("traefik"), "clap checks a file's values as it checks flags: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
