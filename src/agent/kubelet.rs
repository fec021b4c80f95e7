//! The node's HTTPS endpoint, where the API server fetches container logs (as it does from
//! a kubelet on port 10250): `GET /containerLogs/<namespace>/<pod>/<container>` with the
//! `kubectl logs` options, exec and port-forward streams, and the node's resource usage for
//! `kubectl top` ([`super::stats`]: `GET /stats/summary` and `GET /metrics/resource`). Callers must
//! present a client certificate from the cluster CA in the `system:masters` group; the
//! serving certificate is self-signed, and, as upstream by default, the API server does not
//! verify it.

// Declared here rather than in `agent/mod.rs`: the endpoint is its only user.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::AgentOptions;
use super::pods::Ctx;
use super::streams::{self, Purpose};
use crate::api::http::{Body, Query, full};
use crate::runtime::crilog::{self, LogQuery};

/// The cluster CA from the agent's kubeconfig, to check callers' certificates against.
fn cluster_ca(kubeconfig: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let doc: Value = serde_yaml::from_str(&text).context("parsing the kubeconfig")?;
    let data = doc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .context("the kubeconfig has no certificate-authority-data")?;
    let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).context("certificate-authority-data")?;
    String::from_utf8(pem).context("certificate-authority-data is not PEM")
}

fn tls(ca_pem: &str, node: &str) -> anyhow::Result<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec![node.to_string(), "localhost".to_string()])
        .context("making the node's serving certificate")?;
    let key = crate::pki::live::LiveServerCert::new(&cert.cert.pem(), &cert.signing_key.serialize_pem())
        .map_err(anyhow::Error::msg)?;
    crate::api::server::tls_config(Arc::new(key), ca_pem).map_err(anyhow::Error::msg)
}

/// Binds the endpoint; the returned future serves it until `stop`.
pub async fn serve(
    ctx: Arc<Ctx>,
    opts: &AgentOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let config = tls(&cluster_ca(&opts.kubeconfig)?, &opts.node_name)?;
    let listener = TcpListener::bind(("0.0.0.0", opts.runtime.kubelet_port))
        .await
        .with_context(|| format!("listening on port {} (--kubelet-port)", opts.runtime.kubelet_port))?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let latest = super::stats::start(&ctx, stop.clone());
    Ok(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = stop.changed() => return,
            };
            let (acceptor, ctx, latest) = (acceptor.clone(), ctx.clone(), latest.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                    return;
                };
                let admin = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::api::auth::user_from_cert(c))
                    .is_some_and(|u| u.is_admin());
                let service = service_fn(move |req| {
                    let (ctx, latest) = (ctx.clone(), latest.clone());
                    async move { Ok::<_, Infallible>(handle(&ctx, &latest, admin, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}

fn text(code: u16, msg: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(full(format!("{msg}\n")))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

async fn handle(ctx: &Arc<Ctx>, latest: &super::stats::Latest, admin: bool, req: Request<Incoming>) -> Response<Body> {
    if !admin {
        return text(403, "Forbidden: the node's endpoint serves the API server only");
    }
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let parts: Vec<String> = path.trim_matches('/').split('/').map(str::to_string).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["healthz"] => text(200, "ok"),
        ["exec", ns, pod, container] => {
            let purpose = Purpose::Exec { ns: ns.to_string(), pod: pod.to_string(), container: container.to_string() };
            streams::upgrade(ctx.clone(), req, purpose).await
        }
        ["portForward", ns, pod] => {
            streams::upgrade(ctx.clone(), req, Purpose::PortForward { ns: ns.to_string(), pod: pod.to_string() }).await
        }
        ["attach", ..] => text(400, "attach is not supported by this node yet: use kubectl logs -f and kubectl exec"),
        ["containerLogs", ns, pod, container] => logs(ctx, ns, pod, container, &q).await,
        ["stats", "summary"] => summary(latest),
        ["metrics", "resource"] => resource_metrics(latest),
        _ => text(404, &format!("{path} not found")),
    }
}

/// The answer when the sampler has not taken its first sample yet.
fn no_sample_yet() -> Response<Body> {
    let secs = super::stats::SAMPLE_EVERY.as_secs();
    text(503, &format!("no sample yet: this node samples its CPU and memory every {secs} s, retry shortly"))
}

/// `GET /stats/summary`: the kubelet Summary API (CPU and memory; `only_cpu_and_memory` is
/// what there is either way).
fn summary(latest: &super::stats::Latest) -> Response<Body> {
    let Some(sample) = latest.get() else { return no_sample_yet() };
    match serde_json::to_vec(&sample.summary) {
        Ok(json) => crate::api::http::json_bytes_response(200, json),
        Err(e) => text(500, &format!("encoding the summary: {e}")),
    }
}

/// `GET /metrics/resource`: the same sample as Prometheus text, as the kubelet serves it.
fn resource_metrics(latest: &super::stats::Latest) -> Response<Body> {
    let Some(sample) = latest.get() else { return no_sample_yet() };
    crate::api::http::bytes_response("text/plain; version=0.0.4", super::stats::prometheus(&sample).into_bytes())
}

async fn logs(ctx: &Ctx, ns: &str, pod: &str, container: &str, q: &Query) -> Response<Body> {
    let runs = super::pods::exec::runs(ctx, ns, pod, container);
    let previous = q.flag("previous");
    let chosen = if previous { runs.len().checked_sub(2).and_then(|i| runs.get(i)) } else { runs.last() };
    let Some((info, dir)) = chosen.cloned() else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating")
        };
        return text(400, &msg);
    };
    let since = q.get("sinceTime").and_then(|t| t.parse::<jiff::Timestamp>().ok()).or_else(|| {
        q.get("sinceSeconds")
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(s)).ok())
    });
    let query = LogQuery {
        tail: q.get("tailLines").and_then(|t| t.parse().ok()),
        since,
        timestamps: q.flag("timestamps"),
        limit_bytes: q.get("limitBytes").and_then(|t| t.parse().ok()),
    };
    let (records, offset) = match crilog::read_all(&info.log_path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return text(500, &format!("reading the log: {e}")),
    };
    let first = Bytes::from(crilog::render(&records, &query));
    let follow = q.flag("follow") && !previous && !dir.join("exit.json").exists();
    if !follow {
        return Response::builder()
            .header("content-type", "text/plain")
            .body(full(first))
            .unwrap_or_else(|_| text(500, "building the answer"));
    }
    let follow_query = LogQuery { tail: None, since: None, ..query };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut offset = offset;
        loop {
            let done = dir.join("exit.json").exists();
            if let Ok((records, next)) = crilog::read_from(&info.log_path, offset) {
                offset = next;
                if !records.is_empty() && tx.send(Bytes::from(crilog::render(&records, &follow_query))).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| text(500, "building the answer"))
}
