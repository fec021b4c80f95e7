//! What authorization costs a request: RBAC evaluation against 1,000 RoleBindings (in 100
//! namespaces, plus the default ClusterRoles and their bindings), for a request that is
//! allowed late in the search, one allowed by a ClusterRoleBinding and one denied after
//! every binding was looked at; the snapshot's rebuild (what an RBAC change costs the next
//! request); and ServiceAccount token verification (ES256) per second.
//!
//! `cargo bench --bench authz` (`BENCH_BINDINGS` changes the number of bindings).
//! Figures are printed, never asserted: machines are noisy.

use std::time::Instant;

use bramble::api::auth::{Attributes, User};
use bramble::api::rbac::{self, RbacSnapshot, Request};
use bramble::api::sa_token::{BoundTokenRequest, ObjectRef, SigningKey};
use serde_json::{Value, json};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn time_each(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn main() {
    let bindings: usize = std::env::var("BENCH_BINDINGS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let namespaces = 100;
    let mut roles = Vec::new();
    let mut role_bindings = Vec::new();
    for ns in 0..namespaces {
        roles.push(json!({"kind": "Role", "metadata": {"name": "reader", "namespace": format!("ns-{ns}")},
            "rules": [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"]}]}));
    }
    for i in 0..bindings {
        let ns = format!("ns-{}", i % namespaces);
        role_bindings.push(json!({"kind": "RoleBinding", "metadata": {"name": format!("b-{i}"), "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": ns}]}));
    }
    let defaults = rbac::bootstrap_objects();
    let cluster_roles: Vec<&Value> = defaults.iter().filter(|o| o["kind"] == "ClusterRole").collect();
    let cluster_bindings: Vec<&Value> = defaults.iter().filter(|o| o["kind"] == "ClusterRoleBinding").collect();

    let build = time_each(20, || {
        std::hint::black_box(RbacSnapshot::build(
            &roles,
            cluster_roles.clone(),
            &role_bindings,
            cluster_bindings.clone(),
        ));
    });
    let snapshot = RbacSnapshot::build(&roles, cluster_roles.clone(), &role_bindings, cluster_bindings.clone());

    let last = bindings - 1;
    let sa_ns = format!("ns-{}", last % namespaces);
    let sa = User {
        name: format!("system:serviceaccount:{sa_ns}:sa-{last}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{sa_ns}"),
            "system:authenticated".into(),
        ],
    };
    let list_pods =
        Attributes { verb: "list", group: "", resource: "pods", sub: None, namespace: Some(&sa_ns), name: None };
    let list_secrets = Attributes { resource: "secrets", ..list_pods };
    let ssar = Attributes {
        verb: "create",
        group: "authorization.k8s.io",
        resource: "selfsubjectaccessreviews",
        sub: None,
        namespace: None,
        name: None,
    };
    println!(
        "# RBAC ({bindings} RoleBindings in {namespaces} namespaces, {} default ClusterRoles and {} ClusterRoleBindings)",
        cluster_roles.len(),
        cluster_bindings.len()
    );
    println!(
        "snapshot rebuild                 p50 {:8.0} us   p99 {:8.0} us",
        percentile(&build, 0.5),
        percentile(&build, 0.99)
    );
    for (label, a, want) in [
        ("allowed by a RoleBinding", list_pods, true),
        ("allowed by a ClusterRoleBinding", ssar, true),
        ("denied", list_secrets, false),
    ] {
        assert_eq!(snapshot.authorize(&sa, &Request::Resource(a)).allowed, want, "{label}");
        let t = time_each(20_000, || {
            std::hint::black_box(snapshot.authorize(&sa, &Request::Resource(a)));
        });
        println!("{label:32} p50 {:8.2} us   p99 {:8.2} us", percentile(&t, 0.5), percentile(&t, 0.99));
    }

    let key = match SigningKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("cannot make a signing key: {e}");
            return;
        }
    };
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let now = jiff::Timestamp::now().as_second();
    let req = BoundTokenRequest {
        namespace: sa_ns.clone(),
        service_account: ObjectRef { name: format!("sa-{last}"), uid: "u".into() },
        audiences: vec![issuer.into()],
        expiration_secs: 3600,
        bound: None,
        warn_after_secs: None,
    };
    let token = match key.issue(issuer, &req, now) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot sign: {e}");
            return;
        }
    };
    let audiences = vec![issuer.to_string()];
    let n = 5_000;
    let t = Instant::now();
    for _ in 0..n {
        assert!(key.verify(&token, issuer, &audiences, now).is_ok());
    }
    let verify = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(key.issue(issuer, &req, now).is_ok());
    }
    let issue = n as f64 / t.elapsed().as_secs_f64();
    println!("\n# ServiceAccount tokens (ES256, one core)");
    println!("verified per second   {verify:10.0}");
    println!("issued per second     {issue:10.0}");
}
