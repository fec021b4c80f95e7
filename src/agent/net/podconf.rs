//! What a pod is told about the network, as the kubelet tells it: its `/etc/resolv.conf`
//! per `dnsPolicy` and `dnsConfig`, and the Service environment variables
//! (`MYSVC_SERVICE_HOST`, the docker-links `MYSVC_PORT_80_TCP...` form) for the Services
//! that exist when it starts. Pure functions of the pod and the watch caches.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::Value;

/// The host's resolver configuration as pods with `dnsPolicy: Default` get it. Where the
/// host's `/etc/resolv.conf` points at systemd-resolved's loopback stub (unreachable from a
/// pod's namespace), the real upstreams in `/run/systemd/resolve/resolv.conf` are used, as
/// the kubelet does.
/// `--resolv-conf` names the file instead.
pub fn host_resolv_conf(flag: Option<&std::path::Path>) -> String {
    if let Some(path) = flag {
        return std::fs::read_to_string(path).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "reading --resolv-conf");
            String::new()
        });
    }
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let loopback_only = parse(&etc).nameservers.iter().all(|n| n.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()));
    if loopback_only && let Ok(real) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
        return real;
    }
    etc
}

/// The parts of a `resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// Reads `nameserver`, `search` (and `domain`) and `options` lines.
pub fn parse(text: &str) -> ResolvConf {
    let mut r = ResolvConf::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(str::to_string)),
            Some("search" | "domain") => r.searches = words.map(str::to_string).collect(),
            Some("options") => r.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    r
}

/// Upstream's limits: 3 name servers, 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The `resolv.conf` of `pod`: `host` is the host's (see [`host_resolv_conf`]), `dns` the
/// cluster DNS address when there is one, `domain` the cluster domain.
pub fn resolv_conf(pod: &Value, host: &str, dns: Option<Ipv4Addr>, domain: &str) -> String {
    let spec = &pod["spec"];
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let host_network = spec["hostNetwork"].as_bool() == Some(true);
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let host = parse(host);
    let cluster = |dns: Ipv4Addr| {
        let mut searches = vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
        searches.extend(host.searches.iter().cloned());
        ResolvConf { nameservers: vec![dns.to_string()], searches, options: vec!["ndots:5".into()] }
    };
    let mut conf = match (policy, dns) {
        ("None", _) => ResolvConf::default(),
        // ClusterFirst on the host's network is Default, as upstream.
        ("ClusterFirst", Some(ip)) if !host_network => cluster(ip),
        ("ClusterFirstWithHostNet", Some(ip)) => cluster(ip),
        _ => host,
    };
    let config = &spec["dnsConfig"];
    for n in config["nameservers"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !conf.nameservers.iter().any(|x| x == n) {
            conf.nameservers.push(n.to_string());
        }
    }
    for s in config["searches"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !conf.searches.iter().any(|x| x == s) {
            conf.searches.push(s.to_string());
        }
    }
    for o in config["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        let text = match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        // A pod's option replaces the one of the same name.
        conf.options.retain(|x| x.split(':').next() != Some(name));
        conf.options.push(text);
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    conf.render()
}

/// `my-svc` -> `MY_SVC`.
fn env_name(s: &str) -> String {
    s.to_ascii_uppercase().replace('-', "_")
}

/// The Service environment variables of a pod in `namespace`, from the Services that exist
/// now (`services`: all namespaces). With `enableServiceLinks: false` only the `kubernetes`
/// Service's are given, as upstream; the pod's own `env` comes after and wins.
pub fn service_env(pod: &Value, services: &[Arc<Value>]) -> Vec<(String, String)> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let links = pod["spec"]["enableServiceLinks"].as_bool() != Some(false);
    let mut chosen: Vec<&Value> = services
        .iter()
        .map(Arc::as_ref)
        .filter(|s| {
            let (sns, name) = (s["metadata"]["namespace"].as_str(), s["metadata"]["name"].as_str());
            let master = sns == Some("default") && name == Some("kubernetes");
            (links && sns == Some(ns)) || master
        })
        .collect();
    chosen.sort_by_key(|s| s["metadata"]["name"].as_str().unwrap_or("").to_string());
    chosen.dedup_by_key(|s| s["metadata"]["name"].clone());
    let mut env = Vec::new();
    for svc in chosen {
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
        // Headless and ExternalName Services have no address to give.
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = env_name(svc["metadata"]["name"].as_str().unwrap_or(""));
        let ports: Vec<&Value> = svc["spec"]["ports"].as_array().into_iter().flatten().collect();
        let Some(first) = ports.first() else { continue };
        env.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        env.push((format!("{name}_SERVICE_PORT"), first["port"].to_string()));
        for p in &ports {
            if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
                env.push((format!("{name}_SERVICE_PORT_{}", env_name(pn)), p["port"].to_string()));
            }
        }
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        env.push((format!("{name}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first["port"])));
        for p in &ports {
            let (port, pr) = (p["port"].to_string(), proto(p));
            let prefix = format!("{name}_PORT_{port}_{pr}");
            env.push((prefix.clone(), format!("{}://{ip}:{port}", pr.to_lowercase())));
            env.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            env.push((format!("{prefix}_PORT"), port));
            env.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOST: &str = "# host\nnameserver 192.0.2.53\nsearch lan example.org\noptions edns0\n";

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
    }

    #[test]
    fn resolv_conf_follows_the_dns_policy() {
        let dns = Some(Ipv4Addr::new(10, 43, 0, 10));
        let cluster = resolv_conf(&pod(json!({})), HOST, dns, "cluster.local");
        assert_eq!(
            cluster,
            "search shop.svc.cluster.local svc.cluster.local cluster.local lan example.org\n\
             nameserver 10.43.0.10\noptions ndots:5\n"
        );
        let host_net = pod(json!({"hostNetwork": true}));
        assert_eq!(
            resolv_conf(&host_net, HOST, dns, "cluster.local"),
            parse(HOST).render(),
            "ClusterFirst on the host's network is Default"
        );
        let with_host_net = pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert_eq!(resolv_conf(&with_host_net, HOST, dns, "cluster.local"), cluster);
        let default = pod(json!({"dnsPolicy": "Default"}));
        assert_eq!(
            resolv_conf(&default, HOST, dns, "cluster.local"),
            "search lan example.org\nnameserver 192.0.2.53\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(&pod(json!({})), HOST, None, "cluster.local"),
            parse(HOST).render(),
            "no cluster DNS: the host's"
        );
        let none = pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.b"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&none, HOST, dns, "cluster.local"),
            "search a.b\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"
        );
        let merged = pod(
            json!({"dnsConfig": {"nameservers": ["10.43.0.10", "9.9.9.9"], "options": [{"name": "ndots", "value": "1"}]}}),
        );
        let text = resolv_conf(&merged, HOST, dns, "cluster.local");
        assert!(text.contains("nameserver 10.43.0.10\nnameserver 9.9.9.9\noptions ndots:1\n"), "{text}");
    }

    #[test]
    fn service_variables_follow_upstreams_names() {
        let svc = |ns: &str, name: &str, spec: Value| {
            Arc::new(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        };
        let services = vec![
            svc(
                "shop",
                "redis-main",
                json!({"clusterIP": "10.43.0.7", "ports": [
                {"name": "redis", "port": 6379}, {"name": "metrics", "port": 9121, "protocol": "UDP"}]}),
            ),
            svc("shop", "headless", json!({"clusterIP": "None", "ports": [{"port": 1}]})),
            svc("other", "elsewhere", json!({"clusterIP": "10.43.0.8", "ports": [{"port": 2}]})),
            svc("default", "kubernetes", json!({"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443}]})),
        ];
        let env = service_env(&pod(json!({})), &services);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_MAIN_SERVICE_HOST"), Some("10.43.0.7"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT_METRICS"), Some("9121"));
        assert_eq!(get("REDIS_MAIN_PORT"), Some("tcp://10.43.0.7:6379"));
        assert_eq!(get("REDIS_MAIN_PORT_9121_UDP"), Some("udp://10.43.0.7:9121"));
        assert_eq!(get("REDIS_MAIN_PORT_6379_TCP_ADDR"), Some("10.43.0.7"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PROTO"), Some("tcp"));
        assert!(get("HEADLESS_SERVICE_HOST").is_none() && get("ELSEWHERE_SERVICE_HOST").is_none());
        let no_links = service_env(&pod(json!({"enableServiceLinks": false})), &services);
        assert!(no_links.iter().all(|(k, _)| k.starts_with("KUBERNETES_")), "{no_links:?}");
    }
}
