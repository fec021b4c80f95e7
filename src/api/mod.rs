//! The Kubernetes API over HTTPS: discovery, OpenAPI, CRUD, patch, watch and the
//! subresources, for the resources in [`resources`].
//!
//! Owns request handling only; objects live in the [`Store`]. Called by the HTTPS server in
//! [`server`], and by the in-process control loops through the same `handle`.

pub mod access;
mod admission;
mod alloc;
mod apply;
pub mod auth;
mod bounded;
mod discovery;
pub mod disruption;
mod encryption;
pub mod fields;
#[doc(hidden)]
pub mod fuzz;
mod heartbeats;
pub mod http;
pub mod join;
mod kinds;
mod metrics;
mod node_graph;
pub mod node_proxy;
mod objects;
mod openapi;
mod openapi_pb;
mod patch;
pub mod pod_security;
mod protobuf;
mod raw_object;
pub mod rbac;
pub mod rbac_controllers;
pub mod resources;
mod sa_admission;
pub mod sa_token;
mod schemas;
pub mod selector;
pub mod server;
mod slots;
mod status;
mod table;
mod watch;

pub use table::human_duration;

use std::net::Ipv4Addr;
use std::sync::Arc;

use hyper::{Request, Response};
use serde_json::{Value, json};

use crate::store::Store;
use auth::{Tokens, User};
use http::{Body, Query, RequestBody, error_response, json_response};
use objects::Target;
use patch::PatchType;
use status::ApiError;

/// Cluster-wide settings the API needs.
pub struct ApiOptions {
    /// Where Service ClusterIPs come from (`--service-cidr`).
    pub service_cidr: (Ipv4Addr, u8),
    /// Where nodes' pod ranges come from (`--cluster-cidr`), a /24 each.
    pub cluster_cidr: (Ipv4Addr, u8),
    /// NodePort range, inclusive.
    pub node_port_range: (u16, u16),
    /// The `kube-dns` Service's ClusterIP (`--cluster-dns`).
    pub cluster_dns: Ipv4Addr,
    /// `host:port` where pods and other nodes reach the API: the `kubernetes` Service's
    /// endpoint and discovery's server address.
    pub advertise: String,
    /// Agent admission (`/cacerts`, `/v1-bramble/node-credentials`).
    pub join: Option<join::Join>,
    /// The PodSecurity level of namespaces without `pod-security.kubernetes.io/*` labels
    /// (`--pod-security-default`).
    pub pod_security_default: pod_security::Level,
    /// Requests one identity may have in flight (`--max-requests-inflight`).
    pub max_inflight_per_user: usize,
    /// Watches one identity may have open (`--max-watches`).
    pub max_watches_per_user: usize,
}

/// The API handler state.
pub struct Api {
    /// Private: everything else (control loops, agent, CLI) reaches the store only through
    /// the API, with its authorization, validation and admission.
    store: Store,
    pub opts: ApiOptions,
    tokens: Tokens,
    /// ServiceAccount tokens and RBAC.
    access: access::Access,
    /// Serializes evictions (see `evict`).
    evictions: tokio::sync::Mutex<()>,
    /// Signs `continue` tokens (made at start: tokens do not outlive the process).
    continue_key: ring::hmac::Key,
    /// Requests each identity has in flight (watches and streams not counted).
    inflight: slots::Slots<String>,
    /// Watches each identity has open.
    watches: slots::Slots<String>,
    /// Nodes' recent summaries, for `metrics.k8s.io`.
    metrics_cache: metrics::SummaryCache,
    /// Node Lease renewals kept off the disk.
    heartbeats: heartbeats::Heartbeats,
}

/// One open watch counted against its identity until the watch ends.
pub type WatchSlot = slots::Slot<String>;

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let bits: u8 = bits.parse().ok()?;
    (bits <= 30).then_some(())?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(ip) & mask), bits))
}

/// Whether `ip` lies in `cidr`.
pub fn in_cidr(ip: Ipv4Addr, cidr: (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(cidr.1)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(cidr.0) & mask
}

fn warning_header(resp: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        // RFC 7234's quoted-string, as upstream writes it: kubectl unquotes it again.
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = format!("299 - \"{quoted}\"").parse() {
            resp.headers_mut().append("warning", v);
        }
    }
}

impl Api {
    /// Stops the store's Raft node and makes its state machine durable (the server's stop).
    pub async fn shutdown_store(&self) {
        self.store.shutdown().await;
    }

    pub fn new(store: Store, opts: ApiOptions, tokens: Tokens, access: access::Access) -> Arc<Api> {
        let continue_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .unwrap_or_else(|_| {
                // Without kernel randomness, a key from the clock still keeps tokens from
                // being forged by anyone who cannot guess the start time to the nanosecond.
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed.to_le_bytes())
            });
        Arc::new(Api {
            store,
            opts,
            tokens,
            access,
            evictions: tokio::sync::Mutex::new(()),
            continue_key,
            inflight: slots::Slots::default(),
            watches: slots::Slots::default(),
            metrics_cache: metrics::SummaryCache::default(),
            heartbeats: heartbeats::Heartbeats::default(),
        })
    }

    /// Creates what every cluster has: the system namespaces and the `kubernetes` Service.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let ns = resources::find("", "v1", "namespaces").expect("namespaces are served");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let t = Target { res: ns, namespace: None, name: None, sub: None };
            match self.create(&t, &Query::default(), json!({"metadata": {"name": name}})).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        let svc = resources::find("", "v1", "services").expect("services are served");
        let (net, _) = self.opts.service_cidr;
        let ip = Ipv4Addr::from(u32::from(net) + 1).to_string();
        let port: u16 = self.opts.advertise.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(6443);
        let t = Target { res: svc, namespace: Some("default".into()), name: None, sub: None };
        let body = json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}});
        match self.create(&t, &Query::default(), body).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        // The cluster DNS, as kubectl shows it in k3s and kubeadm clusters. Every node
        // answers on its ClusterIP itself (agent::net::dns), so it has no selector.
        let t = Target { res: svc, namespace: Some("kube-system".into()), name: None, sub: None };
        let body = json!({"metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": self.opts.cluster_dns.to_string(), "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}});
        match self.create(&t, &Query::default(), body).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        self.bootstrap_rbac().await
    }

    /// Counts a request of `user` in flight, or refuses it with 429 past
    /// `--max-requests-inflight`: one identity (a board gone wrong, a runaway script) cannot
    /// take every worker of the server.
    fn inflight_slot(&self, user: &str) -> Result<slots::Slot<String>, ApiError> {
        self.inflight.take(&user.to_string(), self.opts.max_inflight_per_user).ok_or_else(|| {
            ApiError::too_many_requests(format!("too many requests in flight for user \"{user}\": retry shortly"), 1)
        })
    }

    /// Counts a watch of `user`, or refuses it with 429 past `--max-watches`: each watch
    /// holds a task and a buffer for as long as it runs, so one identity may not open
    /// them without end.
    fn watch_slot(&self, user: &str) -> Result<WatchSlot, ApiError> {
        self.watches.take(&user.to_string(), self.opts.max_watches_per_user).ok_or_else(|| {
            ApiError::too_many_requests(
                format!("too many watches open for user \"{user}\": close some, or retry shortly"),
                1,
            )
        })
    }

    /// When the node `name` last renewed its Lease, if that renewal was kept in memory only
    /// (the node lifecycle controller's heartbeat; see `heartbeats`).
    pub fn lease_renewal(&self, name: &str) -> Option<String> {
        self.heartbeats.renewed(name)
    }

    /// Answers one request from `user` (None: no credentials presented).
    pub async fn handle(self: Arc<Self>, cert_user: Option<User>, req: Request<RequestBody>) -> Response<Body> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let resp = match self.clone().route(cert_user, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
        resp
    }

    async fn route(
        self: Arc<Self>,
        cert_user: Option<User>,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let path = if path.is_empty() { "/".to_string() } else { path };
        match path.as_str() {
            "/livez" => return Ok(Response::new(http::full("ok"))),
            "/readyz" | "/healthz" => {
                if self.store.writable() {
                    return Ok(Response::new(http::full("ok")));
                }
                // Upstream's form: one line per check, the failing one marked `[-]`.
                let body = "[+]ping ok\n[-]store-writable failed: the store's disk is full\nreadyz check failed\n";
                let mut r = Response::new(http::full(body));
                *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                return Ok(r);
            }
            "/version" => return Ok(json_response(200, &discovery::version())),
            "/cacerts" => {
                if let Some(j) = &self.opts.join {
                    return Ok(http::bytes_response("text/plain", j.pki.ca.cert_pem.clone().into_bytes()));
                }
            }
            "/v1-bramble/node-credentials" if req.method() == hyper::Method::POST => {
                if let Some(j) = &self.opts.join {
                    return Ok(json_response(200, &self.join_node(j, req).await?));
                }
            }
            _ => {}
        }
        if path == "/v1-bramble/node-certificate"
            && req.method() == hyper::Method::POST
            && let Some(j) = &self.opts.join
        {
            return Ok(json_response(200, &self.renew_node_certificate(j, cert_user.as_ref(), req).await?));
        }
        let user = self.authenticate(cert_user, req.headers())?;
        let user = access::implied_groups(auth::impersonated(user, req.headers())?);
        if let Some(doc) = self.oidc_document(&path) {
            self.authorize_path(&user, "get", &path)?;
            return Ok(json_response(200, &doc));
        }
        if let Some(verb) = path.strip_prefix("/v1-bramble/secrets-encrypt/") {
            return Ok(json_response(200, &self.secrets_encrypt(&user, verb, req.method().as_str()).await?));
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if let ["api", "v1", "namespaces", ns, "pods", name, sub @ ("exec" | "attach" | "portforward")] =
            segs.as_slice()
        {
            let (ns, name, sub) = (ns.to_string(), name.to_string(), sub.to_string());
            return self.pod_stream(&user, &ns, &name, &sub, req).await;
        }
        if matches!(
            segs.as_slice(),
            ["api"] | ["apis"] | ["api", "v1"] | ["apis", _] | ["apis", _, _] | ["openapi", ..]
        ) {
            self.authorize_path(&user, "get", &path)?;
        }
        if let Some((review, ns)) = review_target(&segs) {
            return self.answer_review(&user, review, ns, req).await;
        }
        match segs.as_slice() {
            ["api"] => return Ok(json_response(200, &discovery::core_versions(&self.opts.advertise))),
            ["apis"] => return Ok(json_response(200, &discovery::group_list())),
            ["api", "v1"] => {
                return discovery::resource_list("", "v1")
                    .map(|v| json_response(200, &v))
                    .ok_or_else(|| ApiError::not_found_path(&path));
            }
            ["apis", g] => {
                return discovery::group(g)
                    .map(|v| json_response(200, &v))
                    .ok_or_else(|| ApiError::not_found_path(&path));
            }
            ["apis", g, v] => {
                return discovery::resource_list(g, v)
                    .map(|v| json_response(200, &v))
                    .ok_or_else(|| ApiError::not_found_path(&path));
            }
            ["openapi", ..] => {
                let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
                if accept.contains("protobuf") && !accept.contains("json") && !accept.contains("*/*") {
                    if segs.as_slice() != ["openapi", "v2"] {
                        return Err(ApiError::not_acceptable(accept));
                    }
                    let doc = openapi::serve(&segs[1..])
                        .map_err(ApiError::internal)?
                        .ok_or_else(|| ApiError::not_found_path(&path))?;
                    return Ok(http::bytes_response("application/octet-stream", openapi_pb::encode(&doc)));
                }
                return openapi::serve(&segs[1..])
                    .map_err(ApiError::internal)?
                    .map(|v| json_response(200, &v))
                    .ok_or_else(|| ApiError::not_found_path(&path));
            }
            _ => {}
        }
        if let ["apis", metrics::GROUP, metrics::VERSION, rest @ ..] = segs.as_slice() {
            return self.metrics(&user, rest, &req).await;
        }
        let (group, version, rest) = match segs.as_slice() {
            ["api", "v1", rest @ ..] => ("", "v1", rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return Err(ApiError::not_found_path(&path)),
        };
        let target = parse_target(group, version, rest).ok_or_else(|| ApiError::not_found_path(&path))?;
        let mut q = Query::parse(req.uri().query());
        http::check_query(&q)?;
        // Keys starting with `_` carry the server's own facts down to the handlers.
        q.0.retain(|k, _| !k.starts_with('_'));
        if let Some(me) = auth::node_name(&user) {
            q.0.insert(objects::NODE_QUERY_KEY.into(), me.to_string());
        }
        access::user_into_query(&user, &mut q);
        if q.get("fieldManager").is_none_or(str::is_empty) {
            let agent = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("unknown");
            let name = agent.split('/').next().unwrap_or("unknown").trim();
            q.0.insert("fieldManager".into(), if name.is_empty() { "unknown".into() } else { name.to_string() });
            q.0.insert("_defaultManager".into(), String::new());
        }
        let method = req.method().clone();
        let verb = match (method.as_str(), target.name.is_some()) {
            ("GET", false) if q.flag("watch") && q.get("watch").is_some() => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", false) => "deletecollection",
            ("DELETE", true) => "delete",
            _ => return Err(ApiError::method_not_allowed(format!("{method} is not supported on {path}"))),
        };
        let _slot = if verb == "watch" { None } else { Some(self.inflight_slot(&user.name)?) };
        // A namespace is its own namespace to authorization (upstream's rule), so a
        // namespace's `admin` or `view` may read it.
        let namespace = match (target.res.kind, &target.name) {
            ("Namespace", Some(name)) => Some(name.as_str()),
            _ => target.namespace.as_deref(),
        };
        let named = match verb {
            "list" | "watch" => selector::FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
                .ok()
                .and_then(|f| f.named().map(str::to_string)),
            _ => None,
        };
        let attrs = auth::Attributes {
            verb,
            group,
            resource: target.res.plural,
            sub: target.sub.as_deref(),
            namespace,
            name: target.name.as_deref().or(named.as_deref()),
        };
        let node_check = self.authorize(&user, &attrs)?;
        self.check_node_object(&user, &attrs, &target, node_check)?;
        let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let as_table = table::wants_table(&accept);
        let (parts, body) = http::read_body(req).await?;
        let ct = http::content_type(&parts);
        let body_value = |required: bool| -> Result<Value, ApiError> {
            if body.iter().all(u8::is_ascii_whitespace) && !required {
                return Ok(json!({}));
            }
            http::decode_body(&ct, &body)
        };
        if node_check == auth::NodeCheck::CreatedForNode {
            self.check_node_creation(&user, &attrs, &body_value(true)?)?;
        }
        let sub = target.sub.as_deref();
        let res = target.res;
        match (verb, sub) {
            ("watch", None) => {
                let slot = self.watch_slot(&user.name)?;
                watch::watch(self.clone(), &target, &q, as_table, slot)
            }
            ("list", None) => Ok(json_response(200, &self.list(&target, &q, as_table)?)),
            ("create", None) if target.name.is_none() => {
                let created = self.create(&target, &q, body_value(true)?).await?;
                let mut r = match created.json {
                    Some(json) => http::json_bytes_response(201, json),
                    None => json_response(201, &created.obj),
                };
                warning_header(&mut r, &created.warnings);
                Ok(r)
            }
            ("deletecollection", None) => {
                Ok(json_response(200, &self.delete_collection(&target, &q, body_value(false)?).await?))
            }
            ("get", None | Some("status")) => {
                let obj = self.get_object(&target)?;
                if as_table && sub.is_none() {
                    let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                    return Ok(json_response(
                        200,
                        &table::table(
                            res.plural,
                            &[obj],
                            table::IncludeObject::parse(q.get("includeObject")),
                            json!({"resourceVersion": rv}),
                        ),
                    ));
                }
                Ok(json_response(200, &obj))
            }
            ("update", None) | ("update", Some("status")) if sub.is_none() || res.status => {
                let (obj, warnings) = self.update(&target, &q, body_value(true)?).await?;
                let mut r = json_response(200, &obj);
                warning_header(&mut r, &warnings);
                Ok(r)
            }
            ("patch", None) | ("patch", Some("status")) if sub.is_none() || res.status => {
                let ptype = PatchType::from_content_type(&ct).ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                let ct_for_body =
                    if ptype == PatchType::Apply { "application/apply-patch+yaml" } else { "application/json" };
                let patch_body = http::decode_body(ct_for_body, &body)?;
                let (code, obj) = self.patch(&target, &q, ptype, patch_body).await?;
                Ok(json_response(code, &obj))
            }
            ("delete", None) => {
                let (code, obj) = self.delete(&target, &q, body_value(false)?).await?;
                if res.kind == "Node" && !q.dry_run() && code == 200 {
                    self.forget_node_password(target.name.as_deref().unwrap_or_default()).await;
                }
                Ok(json_response(code, &obj))
            }
            ("get", Some("scale")) if res.scale => Ok(json_response(200, &self.scale(&target, &q, "GET", None).await?)),
            ("update", Some("scale")) if res.scale => {
                Ok(json_response(200, &self.scale(&target, &q, "PUT", Some((None, body_value(true)?))).await?))
            }
            ("patch", Some("scale")) if res.scale => {
                let ptype = PatchType::from_content_type(&ct).ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
                let patch_body = http::decode_body("application/json", &body)?;
                Ok(json_response(200, &self.scale(&target, &q, "PATCH", Some((Some(ptype), patch_body))).await?))
            }
            ("update", Some("finalize")) if res.kind == "Namespace" => {
                Ok(json_response(200, &self.finalize(&target, &q, body_value(true)?).await?))
            }
            ("create", Some("token")) if res.kind == "ServiceAccount" => {
                Ok(json_response(201, &self.token_request(&user, &target, body_value(true)?)?))
            }
            ("create", Some("binding")) if res.kind == "Pod" => {
                Ok(json_response(201, &self.bind(&target, body_value(true)?).await?))
            }
            ("create", Some("eviction")) if res.kind == "Pod" => {
                Ok(json_response(201, &self.evict(&target, &q, body_value(false)?).await?))
            }
            ("get", Some("log")) if res.kind == "Pod" => self.pod_log(&target, &q).await,
            (_, Some("log" | "exec" | "attach" | "portforward")) if res.kind == "Pod" => {
                self.get_object(&target)?;
                Err(ApiError::bad_request(format!(
                    "pod {} has no container running on an agent yet: streams need the node's agent",
                    target.name.as_deref().unwrap_or("")
                )))
            }
            _ => Err(ApiError::method_not_allowed(format!("{} is not supported on {path}", parts.method))),
        }
    }

    /// `POST` of a review: authorized as a create of it, then answered (201, as upstream).
    async fn answer_review(
        &self,
        user: &User,
        review: &'static resources::Review,
        ns: Option<String>,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, ApiError> {
        if req.method() != hyper::Method::POST {
            return Err(ApiError::method_not_allowed(format!(
                "{} is not supported on {}: reviews are only created",
                req.method(),
                review.plural
            )));
        }
        let attrs = auth::Attributes {
            verb: "create",
            group: review.group,
            resource: review.plural,
            sub: None,
            namespace: ns.as_deref(),
            name: None,
        };
        self.authorize(user, &attrs)?;
        let (parts, body) = http::read_body(req).await?;
        let body = http::decode_body(&http::content_type(&parts), &body)?;
        Ok(json_response(201, &self.review(user, review, ns.as_deref(), &body)?))
    }

    /// `pods/<name>/exec|attach|portforward`: upgraded and spliced through to the node.
    async fn pod_stream(
        &self,
        user: &User,
        ns: &str,
        name: &str,
        sub: &str,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, ApiError> {
        let attrs = auth::Attributes {
            verb: "create",
            group: "",
            resource: "pods",
            sub: Some(sub),
            namespace: Some(ns),
            name: Some(name),
        };
        self.authorize(user, &attrs)?;
        if !req.headers().contains_key("upgrade") {
            return Err(ApiError::bad_request(format!(
                "Upgrade request required: {sub} streams need an Upgrade to SPDY/3.1 or WebSocket"
            )));
        }
        let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods resource"))?;
        let target = Target { res: pods, namespace: Some(ns.to_string()), name: Some(name.to_string()), sub: None };
        let pod = self.get_object(&target)?;
        let query = req.uri().query().unwrap_or("").to_string();
        let q = Query::parse(Some(&query));
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node_name.is_empty() {
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        }
        let path = if sub == "portforward" {
            format!("/portForward/{ns}/{name}?{query}")
        } else {
            let container = node_proxy::log_container(&pod, q.get("container"))?;
            let kubelet_sub = if sub == "exec" { "exec" } else { "attach" };
            format!("/{kubelet_sub}/{ns}/{name}/{container}?{query}")
        };
        let (node, pki) = self.node_and_ca(node_name)?;
        node_proxy::upgrade(&pki, &node, &path, req).await
    }

    /// The Node a pod runs on, and the CA whose certificates the node accepts.
    fn node_and_ca(&self, node_name: &str) -> Result<(Value, Arc<crate::pki::Pki>), ApiError> {
        let nodes = resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("no nodes resource"))?;
        let node =
            self.get_object(&Target { res: nodes, namespace: None, name: Some(node_name.to_string()), sub: None })?;
        let pki = self
            .opts
            .join
            .as_ref()
            .map(|j| j.pki.clone())
            .ok_or_else(|| ApiError::internal("this server has no CA to reach nodes with"))?;
        Ok((node, pki))
    }

    /// `GET pods/<name>/log`: from the node the pod runs on.
    async fn pod_log(&self, target: &Target, q: &Query) -> Result<Response<Body>, ApiError> {
        let pod = self.get_object(target)?;
        let container = node_proxy::log_container(&pod, q.get("container"))?;
        let name = target.name.as_deref().unwrap_or("");
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
        if node_name.is_empty() {
            return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
        }
        let (node, pki) = self.node_and_ca(node_name)?;
        let mut query: Vec<String> = Vec::new();
        for key in ["follow", "previous", "timestamps", "tailLines", "sinceSeconds", "sinceTime", "limitBytes"] {
            if let Some(v) = q.get(key) {
                query.push(format!("{key}={}", http::encode(v)));
            }
        }
        let ns = target.namespace.as_deref().unwrap_or("default");
        let path = format!("/containerLogs/{ns}/{name}/{container}?{}", query.join("&"));
        node_proxy::get(&pki, &node, &path).await
    }
}

/// Maps the path after the group-version to a resource target.
/// Subresource names the API knows; anything else after an object's name is not found.
const SUBRESOURCES: &[&str] =
    &["status", "scale", "finalize", "eviction", "binding", "log", "exec", "attach", "portforward", "proxy"];

/// The review a path names (`/apis/<group>/<version>/[namespaces/<ns>/]<reviews>`).
fn review_target(segs: &[&str]) -> Option<(&'static resources::Review, Option<String>)> {
    match segs {
        ["apis", g, v, plural] => resources::find_review(g, v, plural).filter(|r| !r.namespaced).map(|r| (r, None)),
        ["apis", g, v, "namespaces", ns, plural] => {
            resources::find_review(g, v, plural).filter(|r| r.namespaced).map(|r| (r, Some(ns.to_string())))
        }
        _ => None,
    }
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let own = |s: &Option<&&str>| s.map(|x| x.to_string());
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(res) = resources::find(group, version, plural).filter(|r| r.namespaced)
    {
        if tail.len() > 2 {
            return None;
        }
        return Some(Target { res, namespace: Some(ns.to_string()), name: own(&tail.first()), sub: own(&tail.get(1)) });
    }
    let (plural, tail) = rest.split_first()?;
    let res = resources::find(group, version, plural)?;
    if tail.len() > 2 || (res.namespaced && !tail.is_empty()) {
        return None;
    }
    // `namespaces/<ns>/<resource we do not serve>` (resourcequotas, limitranges...) is a
    // missing resource, 404 as upstream, not a subresource of the namespace.
    if tail.get(1).is_some_and(|sub| !SUBRESOURCES.contains(sub)) {
        return None;
    }
    Some(Target { res, namespace: None, name: own(&tail.first()), sub: own(&tail.get(1)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_targets() {
        let t = parse_target("", "v1", &["namespaces", "default", "pods", "web", "status"]).unwrap();
        assert_eq!(
            (t.res.plural, t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let t = parse_target("", "v1", &["namespaces", "kube-system"]).unwrap();
        assert_eq!((t.res.plural, t.name.as_deref()), ("namespaces", Some("kube-system")));
        let t = parse_target("", "v1", &["namespaces", "x", "status"]).unwrap();
        assert_eq!((t.res.plural, t.name.as_deref(), t.sub.as_deref()), ("namespaces", Some("x"), Some("status")));
        let t = parse_target("apps", "v1", &["deployments"]).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(parse_target("", "v1", &["pods", "x"]).is_none());
        assert!(parse_target("", "v1", &["nope"]).is_none());
        assert!(parse_target("", "v1", &["namespaces", "x", "resourcequotas"]).is_none());
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("10.43.0.0/16"), Some((Ipv4Addr::new(10, 43, 0, 0), 16)));
        assert_eq!(parse_cidr("10.43.5.7/16"), Some((Ipv4Addr::new(10, 43, 0, 0), 16)));
        assert_eq!(parse_cidr("bad"), None);
    }
}
