//! The Ingress controller's cluster side (every node's `agent::net::ingress` proxy serves the
//! traffic): keeps the IngressClass `bramble` as the cluster default, shows on each
//! Ingress of ours where it is served (`status.loadBalancer.ingress`, kubectl's ADDRESS:
//! the same nodes as ServiceLB's), and says in Events what a user must fix: an annotation
//! we do not know, a backend Service or port that does not exist, a TLS Secret that is
//! missing, a path two Ingresses claim.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::queue::WorkQueue;
use super::{Ctx, s};
use crate::agent::net::ingress::routes;

const COMPONENT: &str = "ingress-controller";
/// The IngressClass made at start, the cluster default.
pub const CLASS_NAME: &str = "bramble";
/// `spec.controller` of the classes we serve.
pub const CONTROLLER: &str = "bramble.io/ingress-controller";
/// Upstream's annotation that makes an IngressClass the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// Most Events one look at an Ingress posts.
const MAX_EVENTS_PER_INGRESS: usize = 10;
/// Most (Ingress generation, problem) pairs remembered as already said.
const SAID_MAX: usize = 4096;
/// The class annotation from before `spec.ingressClassName` (still honoured upstream).
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The names of the IngressClasses we serve: those whose controller is ours, and always
/// `bramble` (so an Ingress naming it is served even before its class is seen).
pub fn our_classes(classes: &[Arc<Value>]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = classes
        .iter()
        .filter(|c| s(c, "/spec/controller") == CONTROLLER)
        .map(|c| s(c, "/metadata/name").to_string())
        .collect();
    out.insert(CLASS_NAME.to_string());
    out
}

/// Whether an Ingress is ours: its class (or the legacy annotation) names one of ours, or
/// it names none (the default-class admission gives new ones ours when it is the default).
pub fn is_ours(ing: &Value, ours: &BTreeSet<String>) -> bool {
    let class = match s(ing, "/spec/ingressClassName") {
        "" => ing["metadata"]["annotations"][LEGACY_CLASS_ANNOTATION].as_str().unwrap_or(""),
        c => c,
    };
    class.is_empty() || ours.contains(class)
}

/// Our IngressClass, the default.
fn class_object() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": CLASS_NAME,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
            "labels": {"app.kubernetes.io/managed-by": "bramble"},
        },
        "spec": {"controller": CONTROLLER},
    })
}

/// Makes the default IngressClass when missing (one that exists is the admin's to change:
/// they may have made another class the default).
async fn ensure_class(ctx: &Ctx) -> anyhow::Result<()> {
    let path = format!("/apis/networking.k8s.io/v1/ingressclasses/{CLASS_NAME}");
    match ctx.conn.get(&path).await {
        Ok(_) => Ok(()),
        Err(e) if crate::client::is_not_found(&e) => {
            match ctx.conn.create("/apis/networking.k8s.io/v1/ingressclasses", &class_object()).await {
                Ok(_) => Ok(()),
                Err(e) if crate::client::is_already_exists(&e) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Removes our IngressClass (`--disable ingress`): with no class of ours, no node's proxy
/// listens, so another controller can take 80 and 443.
pub async fn remove_class(ctx: &Ctx) -> anyhow::Result<()> {
    let path = format!("/apis/networking.k8s.io/v1/ingressclasses/{CLASS_NAME}");
    match ctx.conn.get(&path).await {
        Ok(class) if s(&class, "/spec/controller") == CONTROLLER => match ctx.conn.delete(&path, &json!({})).await {
            Ok(()) => Ok(()),
            Err(e) if crate::client::is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(()),
        Err(e) if crate::client::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Starts the loop: the default class, then every Ingress's status and Events.
pub fn start(ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let queue = WorkQueue::new();
    let requeue_all = {
        let (q, ingresses) = (queue.clone(), ctx.ingresses.clone());
        move || {
            for ing in ingresses.list() {
                q.add(&super::informer::key_of(&ing));
            }
        }
    };
    let q = queue.clone();
    ctx.ingresses.on_change(Box::new(move |_, new| {
        if let Some(n) = new {
            q.add(&super::informer::key_of(n));
        }
    }));
    // A Service (or its endpoints) appearing or going changes what an Ingress of its
    // namespace points at; nodes change where Ingresses are served; classes which are ours.
    let by_namespace = {
        let (q, ingresses) = (queue.clone(), ctx.ingresses.clone());
        move |obj: &Value| {
            for ing in ingresses.list_in(s(obj, "/metadata/namespace")) {
                q.add(&super::informer::key_of(&ing));
            }
        }
    };
    let again = by_namespace.clone();
    ctx.services.on_change(Box::new(move |old, new| {
        if let Some(o) = new.or(old) {
            again(o);
        }
    }));
    let again = requeue_all.clone();
    ctx.nodes.on_change(Box::new(move |old, new| {
        // Only a change of who serves (a node coming or going, its address or label).
        let serving = |o: Option<&Value>| o.map(|n| super::servicelb::serving_addresses(&[Arc::new(n.clone())]));
        if old.is_none() || new.is_none() || serving(old) != serving(new) {
            again();
        }
    }));
    ctx.ingressclasses.on_change(Box::new(move |_, _| requeue_all()));

    let said: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    let c = ctx.clone();
    tasks.push(tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        while let Err(e) = ensure_class(&c).await {
            tracing::warn!(error = %format!("{e:#}"), "making the default IngressClass");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }));
    let ctx = ctx.clone();
    tasks.extend(super::workers(COMPONENT, queue, 1, move |key| {
        let (ctx, said) = (ctx.clone(), said.clone());
        async move { reconcile(&ctx, &said, &key).await }
    }));
    tasks
}

async fn reconcile(ctx: &Ctx, said: &Mutex<HashSet<String>>, key: &str) -> anyhow::Result<Option<Duration>> {
    let Some(ing) = ctx.ingresses.get(key) else { return Ok(None) };
    let ours = our_classes(&ctx.ingressclasses.list());
    if !is_ours(&ing, &ours) {
        return Ok(None);
    }
    let (ns, name) = (s(&ing, "/metadata/namespace").to_string(), s(&ing, "/metadata/name").to_string());
    let mine: Vec<Arc<Value>> = ctx.ingresses.list().into_iter().filter(|i| is_ours(i, &ours)).collect();
    let table = routes::build(&mine, &ctx.services.list_in(&ns), &ctx.endpointslices.list_in(&ns));
    // No endpoints is a moment of a rollout, not something to fix: the proxy answers 503.
    let mut problems: Vec<(String, String)> = table
        .problems()
        .iter()
        .filter(|p| p.namespace == ns && p.name == name && p.reason != "NoEndpoints")
        .map(|p| (p.reason.to_string(), p.message.clone()))
        .collect();
    for secret in ing.pointer("/spec/tls").and_then(Value::as_array).into_iter().flatten() {
        let Some(secret) = secret.get("secretName").and_then(Value::as_str) else { continue };
        let path = format!("/api/v1/namespaces/{ns}/secrets/{secret}");
        match ctx.conn.get(&path).await {
            Ok(obj) if s(&obj, "/type") == "kubernetes.io/tls" || obj.pointer("/data/tls.crt").is_some() => {}
            Ok(_) => problems.push((
                "BadSecret".into(),
                format!("Secret \"{ns}/{secret}\" holds no tls.crt and tls.key: the default certificate is served"),
            )),
            Err(e) if crate::client::is_not_found(&e) => problems.push((
                "SecretNotFound".into(),
                format!("TLS Secret \"{ns}/{secret}\" does not exist: the default certificate is served"),
            )),
            Err(e) => return Err(e),
        }
    }
    // At most a few, the rest summed up: an Ingress with thousands of bad annotations
    // must not become thousands of store writes.
    if problems.len() > MAX_EVENTS_PER_INGRESS {
        let more = problems.len() - MAX_EVENTS_PER_INGRESS + 1;
        problems.truncate(MAX_EVENTS_PER_INGRESS - 1);
        problems.push(("TooManyProblems".into(), format!("and {more} more problems with this Ingress")));
    }
    // Said once per Ingress generation and problem: Events are writes to the store.
    let uid_gen = format!("{}/{}", s(&ing, "/metadata/uid"), ing.pointer("/metadata/generation").unwrap_or(&json!(0)));
    for (reason, message) in problems {
        let said_key = format!("{uid_gen}/{reason}/{message}");
        let fresh = said
            .lock()
            .map(|mut set| {
                // Bounded: forgetting everything now and then costs a repeated Event.
                if set.len() >= SAID_MAX {
                    set.clear();
                }
                set.insert(said_key)
            })
            .unwrap_or(true);
        if fresh {
            ctx.events.emit(COMPONENT, &ing, "Warning", &reason, &message);
        }
    }

    let want: Vec<Value> =
        super::servicelb::serving_addresses(&ctx.nodes.list()).into_iter().map(|ip| json!({"ip": ip})).collect();
    let have = ing.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).cloned().unwrap_or_default();
    if want == have {
        return Ok(None);
    }
    let path = format!("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}/status");
    let ingress = if want.is_empty() { Value::Null } else { Value::Array(want) };
    ctx.conn.merge_patch(&path, &json!({"status": {"loadBalancer": {"ingress": ingress}}})).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingresses_without_a_class_or_naming_ours_are_ours() {
        let classes = vec![
            Arc::new(json!({"metadata": {"name": "lan"}, "spec": {"controller": CONTROLLER}})),
            Arc::new(json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}})),
        ];
        let ours = our_classes(&classes);
        assert_eq!(ours.iter().map(String::as_str).collect::<Vec<_>>(), ["bramble", "lan"]);
        let ing = |spec: Value, annotations: Value| json!({"metadata": {"annotations": annotations}, "spec": spec});
        assert!(is_ours(&ing(json!({}), json!({})), &ours));
        assert!(is_ours(&ing(json!({"ingressClassName": "bramble"}), json!({})), &ours));
        assert!(is_ours(&ing(json!({"ingressClassName": "lan"}), json!({})), &ours));
        assert!(!is_ours(&ing(json!({"ingressClassName": "nginx"}), json!({})), &ours));
        assert!(!is_ours(&ing(json!({}), json!({LEGACY_CLASS_ANNOTATION: "nginx"})), &ours));
        assert!(is_ours(&ing(json!({}), json!({LEGACY_CLASS_ANNOTATION: "bramble"})), &ours));
    }
}
