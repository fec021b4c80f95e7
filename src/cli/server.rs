//! `bramble server`: certificates, kubeconfig, join token, store, API, and a clean stop on
//! SIGTERM (systemd `Type=notify` is told when the API is ready, and when it stops).

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;

use super::ServerArgs;
use crate::api::{self, Api, ApiOptions, auth::Tokens};
use crate::pki::{self, Pki};
use crate::store::{Store, StoreOptions};

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The address this host uses for its default route, if it has one (no packet is sent).
pub(super) fn primary_ip() -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

/// How long a stop may take before the server exits anyway (acknowledged writes are in the
/// fsynced Raft log already; the state machine catches up from it at the next start).
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn random_token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub async fn run(args: ServerArgs) -> Result<()> {
    if args.check_store {
        let dir = args.data_dir.join("server").join("store");
        if !dir.exists() {
            bail!("{} does not exist: there is no store to check", dir.display());
        }
        let (report, ok) = crate::store::integrity::check(&dir);
        println!("{report}");
        if !ok {
            bail!("the store in {} is damaged", dir.display());
        }
        return Ok(());
    }
    if !args.disable_agent {
        // Refuse to start a node that could never enforce pod limits, with the fix.
        crate::agent::facts::check_kernel()?;
        crate::agent::check_flags(&args.node_label, &args.node_taint)?;
    }
    let server_dir = args.data_dir.join("server");
    std::fs::create_dir_all(&server_dir).with_context(|| format!("creating {}", server_dir.display()))?;
    // The CA key, the join token and the store live here: root's alone.
    std::fs::set_permissions(&server_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting {}", server_dir.display()))?;
    let service_cidr = api::parse_cidr(&args.service_cidr)
        .with_context(|| format!("--service-cidr {:?} is not an IPv4 CIDR such as 10.43.0.0/16", args.service_cidr))?;
    let cluster_cidr = match api::parse_cidr(&args.cluster_cidr) {
        Some(c) if c.1 <= 24 => c,
        _ => {
            bail!("--cluster-cidr {:?} must be an IPv4 CIDR of /24 or larger, such as 10.42.0.0/16", args.cluster_cidr)
        }
    };
    let node_ports = args
        .service_node_port_range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| a < b)
        .with_context(|| {
            format!("--service-node-port-range {:?} is not a range such as 30000-32767", args.service_node_port_range)
        })?;
    let node_name = args.node_name.clone().unwrap_or_else(host_name);
    let cluster_dns = args.cluster_dns.unwrap_or(Ipv4Addr::from(u32::from(service_cidr.0) + 10));
    if !api::in_cidr(cluster_dns, service_cidr) {
        bail!("--cluster-dns {cluster_dns} is outside --service-cidr {}", args.service_cidr);
    }

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        host_name(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ];
    sans.push(Ipv4Addr::from(u32::from(service_cidr.0) + 1).to_string());
    if let Some(ip) = primary_ip() {
        sans.push(ip);
    }
    if args.bind_address != "0.0.0.0" && args.bind_address != "::" {
        sans.push(args.bind_address.clone());
    }
    if let Some(ip) = args.advertise_address {
        sans.push(ip.to_string());
    }
    sans.extend(args.tls_san.iter().cloned());
    let lifetimes = args.common.certificate_lifetimes();
    let pki = Arc::new(
        Pki::load_or_create(&server_dir.join("tls"), &sans, lifetimes.lifetime).context("preparing certificates")?,
    );
    let admin = pki.admin(lifetimes.lifetime).context("issuing the admin certificate")?;

    // The file holds the full k3s-style token (CA hash + secret) that agents join with.
    let token_path = server_dir.join("node-token");
    let secret = match (&args.token, std::fs::read_to_string(&token_path)) {
        (Some(t), _) if api::join::parse_token(t.trim()).1.trim().is_empty() => {
            anyhow::bail!(
                "--token is empty: give the secret agents join with, or leave --token out and the server makes a \
                 random one in {}",
                token_path.display()
            )
        }
        (Some(t), _) => api::join::parse_token(t.trim()).1.to_string(),
        (None, Ok(t)) if !api::join::parse_token(t.trim()).1.trim().is_empty() => {
            api::join::parse_token(t.trim()).1.to_string()
        }
        (None, _) => random_token()?,
    };
    let token = api::join::token(&pki.ca.cert_pem, &secret);
    pki::write_private(&token_path, format!("{token}\n").as_bytes(), 0o600)?;

    let host = if args.bind_address == "0.0.0.0" || args.bind_address == "::" {
        "127.0.0.1".to_string()
    } else {
        args.bind_address.clone()
    };
    let advertise = format!("{host}:{}", args.https_listen_port);
    // Where pods reach the API (the `kubernetes` Service's endpoint): never the loopback
    // address a wildcard bind is written into the kubeconfig as, which a pod's DNAT cannot
    // reach.
    let service_host = match args.advertise_address {
        Some(ip) => ip.to_string(),
        None if host != args.bind_address => primary_ip().unwrap_or_else(|| host.clone()),
        None => host.clone(),
    };
    let api_advertise = format!("{service_host}:{}", args.https_listen_port);
    let kubeconfig_header = format!(
        "# The admin kubeconfig of bramble on {node_name}. For another machine (a laptop), run on\n\
         # this one: sudo bramble kubeconfig --server https://<this machine's LAN address>:{}\n\
         # and save what it prints as ~/.kube/config there. The certificate inside is renewed\n\
         # yearly; copies elsewhere then need the command again.\n",
        args.https_listen_port,
    );
    let kubeconfig =
        format!("{kubeconfig_header}{}", pki::kubeconfig(&format!("https://{advertise}"), &pki.ca.cert_pem, &admin));
    pki::write_private(&args.write_kubeconfig, kubeconfig.as_bytes(), 0o600).with_context(|| {
        format!(
            "writing the kubeconfig to {} (choose another place with --write-kubeconfig)",
            args.write_kubeconfig.display()
        )
    })?;

    crate::sys::systemd::status("opening the store");
    let store = Store::open(StoreOptions {
        dir: server_dir.join("store"),
        cache_bytes: args.store_cache_mb * 1024 * 1024,
        sealed_prefixes: vec!["secrets/".into()],
        watch_events: args.watch_history,
        watch_bytes: args.watch_history_mb.max(1) * 1024 * 1024,
        node_id: 1,
        advertise: advertise.clone(),
        reserve_bytes: args.store_reserve_mb * 1024 * 1024,
        snapshot_entries: args.store_snapshot_entries,
    })
    .await
    .context("opening the store")?;
    let store_leadership = store.leadership();
    let tokens = match &args.token_auth_file {
        Some(p) => Tokens::load(p).with_context(|| format!("reading {}", p.display()))?,
        None => Tokens::default(),
    };
    // The key that signs ServiceAccount tokens: made on first start, kept 0600 beside the CA.
    let sa_key_path = server_dir.join("tls").join("service-account.key");
    let sa_key = crate::api::sa_token::SigningKey::load_or_create(&sa_key_path)
        .with_context(|| format!("preparing the service account signing key {}", sa_key_path.display()))?;
    let access =
        crate::api::access::Access::new(sa_key, args.service_account_issuer.clone(), args.api_audiences.clone());
    let api = Api::new(
        store,
        ApiOptions {
            service_cidr,
            cluster_cidr,
            node_port_range: node_ports,
            cluster_dns,
            advertise: api_advertise,
            join: Some(api::join::Join {
                node_cert_lifetime: lifetimes.lifetime,
                ..api::join::Join::new(secret, Arc::clone(&pki))
            }),
            pod_security_default: args.pod_security_default,
            max_inflight_per_user: args.max_requests_inflight.max(1),
            max_watches_per_user: args.max_watches.max(1),
        },
        tokens,
        access,
    );
    crate::sys::systemd::status("waiting for the store's leader to create the system namespaces");
    api.bootstrap().await.map_err(|e| anyhow::anyhow!("creating the system namespaces: {}", e.message))?;

    let serving = Arc::new(
        pki::live::LiveServerCert::new(&pki.serving.cert_pem, &pki.serving.key_pem).map_err(anyhow::Error::msg)?,
    );
    let tls = api::server::tls_config(serving.clone(), &pki.ca.cert_pem).map_err(anyhow::Error::msg)?;
    let listener =
        TcpListener::bind((args.bind_address.as_str(), args.https_listen_port)).await.with_context(|| {
            format!("listening on {}:{} (is another server running?)", args.bind_address, args.https_listen_port)
        })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = api::server::Limits {
        max_connections: args.max_connections.max(1),
        header_timeout: std::time::Duration::from_secs(args.request_header_timeout.max(1)),
        ..api::server::Limits::default()
    };
    tokio::spawn(
        pki::renewal::ServerCerts {
            pki: Arc::clone(&pki),
            serving,
            kubeconfig: args.write_kubeconfig.clone(),
            kubeconfig_header,
            api_url: format!("https://{advertise}"),
            lifetimes,
        }
        .run(stop_rx.clone()),
    );
    let serving = tokio::spawn(api::server::serve(Arc::clone(&api), listener, tls, limits, stop_rx.clone()));
    let controllers = {
        let opts = crate::control::ControlOptions {
            node_monitor_grace: args.node_monitor_grace_period,
            local_storage_path: args.default_local_storage_path.clone(),
            default_disk: crate::agent::facts::disk_type(&args.data_dir).unwrap_or("ssd").to_string(),
            root_ca_pem: pki.ca.cert_pem.clone(),
            servicelb: !args.disable.iter().any(|d| d == "servicelb"),
            ingress: !args.disable.iter().any(|d| d == "ingress"),
        };
        tokio::spawn(crate::control::run(Arc::clone(&api), opts, store_leadership, stop_rx.clone()))
    };
    let agent = (!args.disable_agent).then(|| {
        let opts = crate::agent::AgentOptions {
            kubeconfig: args.write_kubeconfig.clone(),
            node_name: node_name.clone(),
            data_dir: args.data_dir.clone(),
            labels: args.node_label.clone(),
            taints: args.node_taint.clone(),
            server: true,
            runtime: args.runtime.clone().into(),
        };
        tokio::spawn(async move { crate::agent::run(opts, stop_rx).await.map_err(|e| format!("{e:#}")) })
    });
    tracing::info!(node = %node_name, addr = %advertise, kubeconfig = %args.write_kubeconfig.display(), agent = !args.disable_agent, "bramble server is ready");
    // Only a server that runs says where it is (a refused start leaves the data dir as it was).
    super::certificate::write_pid_file(&args.data_dir);
    crate::sys::systemd::ready(&format!("serving the API on port {}", args.https_listen_port));
    crate::sys::systemd::spawn_watchdog();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let (mut controllers, mut serving, mut agent) = (controllers, serving, agent);
    // Until asked to stop, none of these tasks ends: the control loops end early only when
    // the store's Raft core has stopped, the listener or the agent only on a failure. Then
    // the server stops everything and exits non-zero, so systemd restarts it from its
    // durable state instead of it running on with a part missing.
    let agent_ended = async {
        match agent.as_mut() {
            Some(a) => a.await,
            None => std::future::pending().await,
        }
    };
    let failure: Option<String> = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        r = &mut controllers => Some(match r {
            Ok(Ok(())) => "the control loops ended".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the control loops' task failed: {e}"),
        }),
        r = &mut serving => Some(format!("the HTTPS listener ended: {r:?}")),
        r = agent_ended => Some(match r {
            Ok(Ok(())) => "the node agent ended".to_string(),
            Ok(Err(e)) => format!("the node agent stopped: {e}"),
            Err(e) => format!("the node agent's task failed: {e}"),
        }),
    };
    if let Some(why) = &failure {
        tracing::error!(reason = %why, "a part of the server stopped: stopping the rest");
    }
    tracing::info!("stopping");
    crate::sys::systemd::stopping(failure.as_deref().unwrap_or("asked to stop"));
    let _ = stop_tx.send(true);
    // Everything below is bounded: systemd's stop timeout is 90 s, and a stop that hangs
    // (a full disk, a stuck task) must still end with the log as it is, which is durable.
    let drain = async {
        if !serving.is_finished() {
            let _ = serving.await;
        }
        if !controllers.is_finished() {
            let _ = controllers.await;
        }
        if let Some(agent) = agent
            && !agent.is_finished()
        {
            let _ = agent.await;
        }
        api.shutdown_store().await;
    };
    if tokio::time::timeout(STOP_TIMEOUT, drain).await.is_err() {
        tracing::error!(seconds = STOP_TIMEOUT.as_secs(), "stopping took too long: exiting with the log as it is");
        anyhow::bail!("stopping did not finish within {} s", STOP_TIMEOUT.as_secs());
    }
    match failure {
        Some(why) => Err(anyhow::anyhow!("{why}: exiting for the service manager to restart the server")),
        None => Ok(()),
    }
}
