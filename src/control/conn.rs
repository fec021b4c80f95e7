//! The control loops' way to the API. They run inside the server that leads the store, so
//! they hand their requests straight to the API's router: the same authentication,
//! authorization, validation, admission and watch streams as any client, without TLS, TCP
//! and HTTP/2 framing between two tasks of one process (DESIGN: "in-process fast path
//! inside the server"). Over loopback TLS, the controllers' watch of every pod cost about
//! a third of the server's CPU per pod create.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::Value;

use crate::api::Api;
use crate::api::auth::User;
use crate::client::ClientError;
pub use crate::client::{is_already_exists, is_conflict, is_not_found};

/// A response body, with the error type of a connection's so readers serve both.
pub type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// The controllers' client: requests go to the router of the API in this process, as
/// `user`.
pub struct ApiConn {
    api: Arc<Api>,
    user: User,
}

/// The `resourceVersion` of an object the server answered with, as the store revision.
pub fn revision(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok()).unwrap_or(0)
}

impl ApiConn {
    /// The node `name`'s latest Lease renewal the API kept in memory (not in the store, so
    /// no watch event carried it).
    pub fn lease_renewal(&self, name: &str) -> Option<String> {
        self.api.lease_renewal(name)
    }

    /// The same API reached as `user` (each control loop acts as its own identity).
    pub fn as_user(&self, user: User) -> ApiConn {
        ApiConn { api: self.api.clone(), user }
    }

    /// A client of `api` that authenticates as `user`.
    pub fn new(api: Arc<Api>, user: User) -> ApiConn {
        ApiConn { api, user }
    }

    async fn open(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<hyper::Response<ResponseBody>> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .header("accept", "application/json")
            .header("user-agent", concat!("bramble-controller-manager/", env!("CARGO_PKG_VERSION")));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .uri(path)
            .body(Full::new(bytes).map_err(|never| match never {}).boxed())
            .context("building the request")?;
        let resp = self.api.clone().handle(Some(self.user.clone()), req).await;
        Ok(resp.map(|b| b.map_err(|never| match never {}).boxed()))
    }

    /// One request; the JSON answer, or the server's `Status` as a [`ClientError`].
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.open(method, path, content_type, body).await?;
        let status = resp.status().as_u16();
        let retry_after = crate::client::retry_after_header(resp.headers());
        let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(ClientError::from_answer(status, retry_after, &bytes))
                .with_context(|| format!("{method} {path}"));
        }
        Ok(value)
    }

    /// `https://host:port` clients reach the API server at (the `kubernetes` Service's
    /// endpoints).
    pub fn advertise(&self) -> String {
        self.api.opts.advertise.clone()
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
    pub async fn stream(&self, path: &str) -> anyhow::Result<ResponseBody> {
        let resp = self.open("GET", path, None, None).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let retry_after = crate::client::retry_after_header(resp.headers());
            let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
            return Err(ClientError::from_answer(status, retry_after, &bytes).into());
        }
        Ok(resp.into_body())
    }
}
