//! The control loops' way to the API: one multiplexed HTTP/2 connection that every
//! request and watch shares, opened again when it breaks. The loops are clients like any
//! other (authenticated, validated, admitted), but they pay for one TLS handshake, not
//! one per request.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::kubectl::client::{Client, ServerError};

/// A shared, self-healing HTTP/2 connection to the API server.
pub struct ApiConn {
    client: Client,
    sender: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

/// Whether `e` is the server saying 404.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ServerError>().is_some_and(|s| s.code == 404)
}

/// Whether `e` is the server saying 409 (a stale resourceVersion or a name taken).
pub fn is_conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ServerError>().is_some_and(|s| s.code == 409)
}

/// The `resourceVersion` of an object the server answered with, as the store revision.
pub fn revision(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok()).unwrap_or(0)
}

impl ApiConn {
    /// Wraps a client built from the server's kubeconfig; connects on first use.
    pub fn new(client: Client) -> ApiConn {
        ApiConn { client, sender: Mutex::new(None) }
    }

    async fn sender(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let fresh = self.client.connect_h2().await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn open(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let (authority, token) = self.client.credentials();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("https://{authority}{path}"))
            .header("accept", "application/json")
            .header("user-agent", concat!("bramble-controller-manager/", env!("CARGO_PKG_VERSION")));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(bytes)).context("building the request")?;
        let mut sender = self.sender().await?;
        sender.ready().await.context("waiting for the connection")?;
        sender.send_request(req).await.with_context(|| format!("{method} {path}"))
    }

    /// One request; the JSON answer, or the server's `Status` as a [`ServerError`].
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.open(method, path, content_type, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(ServerError::from_body(status, &bytes)).with_context(|| format!("{method} {path}"));
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None, None).await
    }

    pub async fn create(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("POST", path, Some("application/json"), Some(body)).await
    }

    /// PUT: a compare-and-swap on the `resourceVersion` inside `body`.
    pub async fn replace(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("PUT", path, Some("application/json"), Some(body)).await
    }

    /// A JSON merge patch (RFC 7386).
    pub async fn merge_patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("PATCH", path, Some("application/merge-patch+json"), Some(body)).await
    }

    /// A strategic merge patch: lists with merge keys (conditions, containers) merge.
    pub async fn strategic_patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("PATCH", path, Some("application/strategic-merge-patch+json"), Some(body)).await
    }

    /// DELETE with `DeleteOptions`; an object already gone is not an error.
    pub async fn delete(&self, path: &str, options: &Value) -> anyhow::Result<()> {
        match self.call("DELETE", path, Some("application/json"), Some(options)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens a watch (or any streaming GET) and hands back its body.
    pub async fn stream(&self, path: &str) -> anyhow::Result<Incoming> {
        let resp = self.open("GET", path, None, None).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
            return Err(ServerError::from_body(status, &bytes).into());
        }
        Ok(resp.into_body())
    }
}
