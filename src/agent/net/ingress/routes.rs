//! The Ingress controller's routing core: from our Ingresses (networking.k8s.io/v1), the
//! Services and the EndpointSlices, one immutable [`Table`] answering, per request, which
//! backend serves it ([`Table::route`]), which Secret a TLS handshake presents
//! ([`Table::tls_secret_for`]), and what the Ingress's `nginx.ingress.kubernetes.io/*`
//! annotations ask for ([`Options`]). Pure: no I/O, no clock. Built once per configuration
//! change by [`build`]; the proxy (`proxy.rs`, `certs.rs`) swaps an `Arc<Table>` and calls
//! it per request and per handshake; the controller posts [`Table::problems`] as Events.
//!
//! Semantics: hosts, wildcards, path types and precedence as upstream's Ingress page says
//! (<https://kubernetes.io/docs/concepts/services-networking/ingress/>); the annotations,
//! regex paths, `rewrite-target` and a TLS entry without hosts as ingress-nginx does.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::{Regex, RegexBuilder};
use serde_json::Value;

/// The annotation prefix ingress-nginx reads (its default `--annotations-prefix`).
pub const ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The annotations understood, after [`ANNOTATION_PREFIX`]; any other one under the prefix
/// is reported, never silently ignored.
const KNOWN_ANNOTATIONS: [&str; 18] = [
    "rewrite-target",
    "use-regex",
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-body-size",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "proxy-connect-timeout",
    "whitelist-source-range",
    "allowlist-source-range",
    "permanent-redirect",
    "permanent-redirect-code",
    "app-root",
    "affinity",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-max-age",
];

/// Largest compiled program of one regex path: Ingress authors are not the cluster admin,
/// and `a{1000}{1000}` must not cost the node its memory.
const REGEX_SIZE_LIMIT_BYTES: usize = 32 * 1024;
/// Largest lazy-DFA cache of one regex path.
const REGEX_DFA_LIMIT_BYTES: usize = 64 * 1024;
/// Most distinct regex paths over all Ingresses (with the limits above, a few tens of MiB
/// at worst); the rest are skipped with a problem.
const MAX_REGEX_PATHS: usize = 500;
/// ingress-nginx's default `proxy-body-size` (1m).
const DEFAULT_BODY_SIZE_BYTES: u64 = 1024 * 1024;
/// Longest timeout accepted: a day. More is a typo, and a timer that far out overflows
/// some clocks.
const MAX_TIMEOUT_SECS: u64 = 86_400;
/// ingress-nginx's default session cookie name.
const DEFAULT_COOKIE_NAME: &str = "INGRESSCOOKIE";

/// Problem reasons (short CamelCase, as Event reasons are).
const UNKNOWN_ANNOTATION: &str = "UnknownAnnotation";
const BAD_ANNOTATION: &str = "BadAnnotation";
const BAD_PATH: &str = "BadPath";
const BAD_HOST: &str = "BadHost";
const BAD_TLS: &str = "BadTLS";
const BAD_BACKEND: &str = "BadBackend";
const CONFLICT: &str = "Conflict";
const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
const PORT_NOT_FOUND: &str = "PortNotFound";
const NO_ENDPOINTS: &str = "NoEndpoints";
const UNSUPPORTED_BACKEND: &str = "UnsupportedBackend";

/// Which Ingress something came from, for Events and logs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressId {
    /// The Ingress's namespace (also its backends' and TLS Secrets').
    pub namespace: String,
    /// The Ingress's name.
    pub name: String,
}

impl fmt::Display for IngressId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something in an Ingress the user must fix (the controller posts it as a Warning Event
/// on that Ingress): what was wrong and what was done instead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The Ingress's namespace.
    pub namespace: String,
    /// The Ingress's name.
    pub name: String,
    /// `UnknownAnnotation`, `BadAnnotation`, `BadPath`, `BadHost`, `BadTLS`, `BadBackend`,
    /// `Conflict`, `ServiceNotFound`, `PortNotFound`, `NoEndpoints`, `UnsupportedBackend`.
    pub reason: &'static str,
    /// What is wrong, naming the annotation, host, path or Service, and what was done.
    pub message: String,
}

/// The protocol the proxy speaks to the backend (`backend-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// Plain HTTP/1.1 (the default).
    #[default]
    Http,
    /// HTTP/1.1 over TLS; the backend's certificate is not checked (ingress-nginx's default).
    Https,
    /// gRPC: cleartext HTTP/2.
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

impl FromStr for BackendProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Ok(BackendProtocol::Http),
            "HTTPS" => Ok(BackendProtocol::Https),
            "GRPC" => Ok(BackendProtocol::Grpc),
            "GRPCS" => Ok(BackendProtocol::Grpcs),
            _ => Err(format!("{s:?} is not one of HTTP, HTTPS, GRPC, GRPCS")),
        }
    }
}

/// An address range (`10.0.0.0/8`, `2001:db8::/32`, or a bare address), for
/// `allowlist-source-range`. Parsed with std only; the host bits are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is in the range. IPv4-mapped IPv6 addresses (what a dual-stack socket
    /// reports for IPv4 clients) count as the IPv4 address they map.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                (u32::from(net) ^ u32::from(ip)) & mask == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                (u128::from(net) ^ u128::from(ip)) & mask == 0
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let text = s.trim();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            // Digits only: `u8::parse` would take a leading `+`.
            Some(l) => Some(l)
                .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|l| l.parse::<u8>().ok())
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0-{max}"))?,
        };
        // An IPv4-mapped IPv6 range is the IPv4 range it maps (see `contains`).
        let (net, prefix_len) = match net {
            IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
                None => (net, prefix_len),
            },
            _ => (net, prefix_len),
        };
        let net = match net {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Ok(Cidr { net, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix_len)
    }
}

/// Cookie session affinity (`affinity: cookie`): the proxy pins a client to the endpoint
/// its cookie names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAffinity {
    /// `session-cookie-name`, default `INGRESSCOOKIE`.
    pub name: String,
    /// `session-cookie-path`; `/` when unset.
    pub path: Option<String>,
    /// `session-cookie-max-age`; a session cookie when unset.
    pub max_age: Option<Duration>,
}

impl CookieAffinity {
    /// The `Set-Cookie` value pinning the client to `value` (an endpoint token of the
    /// proxy's making: the name and path were checked to be header-safe at build time).
    pub fn set_cookie(&self, value: &str) -> String {
        let mut c = format!("{}={value}; Path={}; HttpOnly", self.name, self.path.as_deref().unwrap_or("/"));
        if let Some(age) = self.max_age {
            c.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        c
    }
}

/// What one Ingress's `nginx.ingress.kubernetes.io/*` annotations ask for. `Default` is an
/// Ingress without any, with ingress-nginx's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// `rewrite-target`: the path sent to the backend, `$1`..`$9` taken from the regex
    /// path's groups (see [`Table::rewrite_path`]). Its presence makes the Ingress's
    /// `ImplementationSpecific` paths regexes, as in ingress-nginx.
    pub rewrite_target: Option<String>,
    /// `use-regex`: `ImplementationSpecific` paths are case-insensitive regexes anchored
    /// at the start of the path.
    pub use_regex: bool,
    /// `ssl-redirect` (default true): plain-HTTP requests for a TLS host are redirected to
    /// HTTPS. Use with [`Table::is_tls_host`].
    pub ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect to HTTPS even for hosts without TLS.
    pub force_ssl_redirect: bool,
    /// `backend-protocol`.
    pub backend_protocol: BackendProtocol,
    /// `proxy-body-size` in bytes (nginx sizes: `8m`, `512k`); `None` for unlimited (`0`).
    pub proxy_body_size: Option<u64>,
    /// `proxy-read-timeout` (default 60 s).
    pub read_timeout: Duration,
    /// `proxy-send-timeout` (default 60 s).
    pub send_timeout: Duration,
    /// `proxy-connect-timeout` (default 5 s).
    pub connect_timeout: Duration,
    /// `allowlist-source-range` (or the older `whitelist-source-range`): the only client
    /// ranges served. `None`: anyone. Entries that do not parse are left out (reported),
    /// so a typo narrows the list rather than opening it.
    pub source_ranges: Option<Vec<Cidr>>,
    /// `permanent-redirect` and `permanent-redirect-code` (default 301): every request is
    /// answered with this redirect.
    pub permanent_redirect: Option<(String, u16)>,
    /// `app-root`: a request for `/` is redirected (302) here.
    pub app_root: Option<String>,
    /// `affinity: cookie` with its `session-cookie-*` settings.
    pub affinity_cookie: Option<CookieAffinity>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rewrite_target: None,
            use_regex: false,
            ssl_redirect: true,
            force_ssl_redirect: false,
            backend_protocol: BackendProtocol::Http,
            proxy_body_size: Some(DEFAULT_BODY_SIZE_BYTES),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            source_ranges: None,
            permanent_redirect: None,
            app_root: None,
            affinity_cookie: None,
        }
    }
}

impl Options {
    /// Whether a client at `ip` may use this Ingress (`allowlist-source-range`); the proxy
    /// answers 403 otherwise.
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        self.source_ranges.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(ip)))
    }

    /// Whether a plain-HTTP request is redirected to HTTPS; `tls_host` from
    /// [`Table::is_tls_host`].
    pub fn redirects_to_https(&self, tls_host: bool) -> bool {
        self.force_ssl_redirect || (self.ssl_redirect && tls_host)
    }

    /// Whether this Ingress's `ImplementationSpecific` paths are regexes.
    fn regex_paths(&self) -> bool {
        self.use_regex || self.rewrite_target.is_some()
    }
}

/// A Service port of a backend, as the Ingress names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// `port.number`: the Service port's `port`.
    Number(u16),
    /// `port.name`: the Service port's `name`.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// Why a backend has nowhere to send requests (the proxy answers 503 with the message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The [`Problem`] reason.
    pub reason: &'static str,
    /// Names the Service and port, e.g. `Service "default/foo" has no port 8080`.
    pub message: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A backend (`service: {name, port}`) resolved at build time through its Service and
/// EndpointSlices, or why it could not be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The Ingress's namespace (a backend is always in its Ingress's namespace).
    pub namespace: String,
    /// The Service; empty for a resource backend.
    pub service: String,
    /// The Service port named; `None` when the Ingress names none usable.
    pub port: Option<PortRef>,
    /// The Service's cluster IP, for information only: requests go to the endpoints.
    pub cluster_ip: Option<IpAddr>,
    /// The ready endpoints (target ports, which may differ per slice), never empty; or why
    /// there are none.
    pub resolved: Result<Vec<SocketAddr>, Unresolved>,
}

impl Backend {
    /// Where to send requests, or why nowhere.
    pub fn endpoints(&self) -> Result<&[SocketAddr], &Unresolved> {
        self.resolved.as_deref()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            Some(p) => write!(f, "{}/{}:{p}", self.namespace, self.service),
            None => write!(f, "{}/{}", self.namespace, self.service),
        }
    }
}

/// How a request matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    /// An `Exact` path.
    Exact,
    /// A `Prefix` path (or a non-regex `ImplementationSpecific` one).
    Prefix,
    /// A regex path (`use-regex` or `rewrite-target`); [`Matched::captures`] holds its groups.
    Regex,
    /// No path matched: `spec.defaultBackend`.
    DefaultBackend,
}

/// What [`Table::route`] found for a request.
#[derive(Clone, Debug)]
pub struct Matched {
    /// Where to send it.
    pub backend: Arc<Backend>,
    /// The Ingress whose rule matched.
    pub ingress: Arc<IngressId>,
    /// That Ingress's annotations.
    pub options: Arc<Options>,
    /// Which kind of path matched (the default backend's has no rewrite).
    pub kind: MatchKind,
    /// For a regex path, its groups (`[0]` the whole match, then `$1`, `$2`, ...; `None`
    /// for a group that did not take part); empty otherwise.
    pub captures: Vec<Option<String>>,
}

/// One path's (or the default backend's) destination.
#[derive(Clone, Debug)]
struct Route {
    backend: Arc<Backend>,
    ingress: Arc<IngressId>,
    options: Arc<Options>,
}

impl Route {
    fn matched(&self, kind: MatchKind, captures: Vec<Option<String>>) -> Matched {
        Matched {
            backend: self.backend.clone(),
            ingress: self.ingress.clone(),
            options: self.options.clone(),
            kind,
            captures,
        }
    }
}

#[derive(Debug)]
struct RegexRoute {
    pattern: String,
    regex: Regex,
    route: Route,
}

/// Precedence among paths of equal length: Exact, then Prefix, then regexes.
const RANK_EXACT: u8 = 2;
const RANK_PREFIX: u8 = 1;
const RANK_REGEX: u8 = 0;

/// The paths of one host (or of the rules without host), merged over all Ingresses.
#[derive(Debug, Default)]
struct HostRoutes {
    exact: HashMap<String, Route>,
    /// By the rule path without its trailing slashes (`""` for `/`).
    prefix: HashMap<String, Route>,
    /// The distinct key lengths of `prefix`, longest first: a request is looked up once
    /// per length, so the work does not grow with its number of slashes.
    prefix_lens: Vec<usize>,
    /// Longest pattern first, then oldest Ingress first.
    regex: Vec<RegexRoute>,
    /// The `defaultBackend` of the oldest Ingress naming this host that has one: the
    /// host's requests no path matches (ingress-nginx's per-server default).
    default: Option<Route>,
}

impl HostRoutes {
    fn route(&self, path: &str) -> Option<Matched> {
        let path = if path.is_empty() { "/" } else { path };
        // (length of the rule path, rank, route)
        let mut best: Option<(usize, u8, &Route)> = self.exact.get(path).map(|r| (path.len(), RANK_EXACT, r));
        let beaten = |best: &Option<(usize, u8, &Route)>, len: usize, rank: u8| {
            best.as_ref().is_some_and(|(l, r, _)| (*l, *r) >= (len, rank))
        };
        for &len in &self.prefix_lens {
            if beaten(&best, len, RANK_PREFIX) {
                break;
            }
            // Element-wise: the rule's last element must end where one of the path's does.
            let boundary = len == 0 || path.len() == len || path.as_bytes().get(len) == Some(&b'/');
            if let Some(route) = path.get(..len).filter(|_| boundary).and_then(|p| self.prefix.get(p)) {
                best = Some((len, RANK_PREFIX, route));
                break;
            }
        }
        for r in &self.regex {
            if beaten(&best, r.pattern.len(), RANK_REGEX) {
                break;
            }
            // Leftmost semantics: when a match starting at 0 exists, it is the one found,
            // so this is the anchored match without rewriting the author's pattern.
            if r.regex.find(path.as_bytes()).is_some_and(|m| m.start() == 0) {
                let captures = r
                    .regex
                    .captures(path.as_bytes())
                    .map(|c| c.iter().map(|g| g.map(|g| String::from_utf8_lossy(g.as_bytes()).into_owned())).collect())
                    .unwrap_or_default();
                return Some(r.route.matched(MatchKind::Regex, captures));
            }
        }
        best.map(|(_, rank, route)| {
            route.matched(if rank == RANK_EXACT { MatchKind::Exact } else { MatchKind::Prefix }, Vec::new())
        })
    }
}

/// A TLS host's Secret. `explicit`: listed in `tls[].hosts` (beats a TLS entry without
/// hosts covering the Ingress's rule hosts).
#[derive(Clone, Debug)]
struct TlsCert {
    namespace: String,
    secret: String,
    explicit: bool,
    ingress: Arc<IngressId>,
}

/// The routing table: built by [`build`], immutable, shared by the proxy as `Arc<Table>`.
#[derive(Debug, Default)]
pub struct Table {
    exact_hosts: HashMap<String, HostRoutes>,
    /// `*.example.com` by `example.com`.
    wildcard_hosts: HashMap<String, HostRoutes>,
    any_host: Option<HostRoutes>,
    default_backend: Option<Route>,
    tls_exact: HashMap<String, TlsCert>,
    tls_wildcard: HashMap<String, TlsCert>,
    secrets: BTreeSet<(String, String)>,
    problems: Vec<Problem>,
}

impl Table {
    /// The backend for a request. `host` is its `Host` (or `:authority`), with or without
    /// `:port`, any case, a trailing dot allowed; `path` its path without the query. The
    /// most specific host group that exists decides (exact host, else `*.` wildcard one
    /// label deep, else the rules without host); when none of its paths match, the default
    /// backend; `None` when there is none either (the proxy answers 404).
    pub fn route(&self, host: &str, path: &str) -> Option<Matched> {
        let host = request_host(host);
        let group = self
            .exact_hosts
            .get(host.as_ref())
            .or_else(|| wildcard_suffix(&host).and_then(|s| self.wildcard_hosts.get(s)))
            .or(self.any_host.as_ref());
        let default = || self.default_backend.as_ref().map(|r| r.matched(MatchKind::DefaultBackend, Vec::new()));
        match group {
            // A host's own rules decide for it: the default backend (any namespace's
            // oldest) must not catch another namespace's host, as in ingress-nginx, where
            // it serves only the catch-all server.
            Some(g) if !std::ptr::eq(g, self.any_host.as_ref().map_or(std::ptr::null(), |a| a as *const _)) => {
                g.route(path).or_else(|| g.default.as_ref().map(|r| r.matched(MatchKind::DefaultBackend, Vec::new())))
            }
            Some(g) => g.route(path).or_else(default),
            None => default(),
        }
    }

    /// The path to send to the backend: `rewrite-target` with `$1`..`$9` (`$0` the whole
    /// match) replaced by the regex path's groups; as in ingress-nginx (since 0.22) the
    /// whole path is replaced, and nothing after the match is carried over unless a group
    /// captures it. Without `rewrite-target` (or for the default backend), `path`
    /// unchanged. The query string is the caller's to keep.
    pub fn rewrite_path(&self, m: &Matched, path: &str) -> String {
        let Some(target) = m.options.rewrite_target.as_deref().filter(|_| m.kind != MatchKind::DefaultBackend) else {
            return path.to_string();
        };
        let mut out = String::with_capacity(target.len() + path.len());
        let mut chars = target.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().and_then(|d| d.to_digit(10))) {
                ('$', Some(n)) => {
                    chars.next();
                    if let Some(Some(group)) = m.captures.get(n as usize) {
                        out.push_str(group);
                    }
                }
                _ => out.push(c),
            }
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        out
    }

    /// The Secret (namespace, name) whose certificate a TLS handshake for `sni_host`
    /// presents: an exact host before a `*.` wildcard one; hosts listed in `tls[].hosts`
    /// before those covered by a TLS entry without hosts (ingress-nginx: that entry is the
    /// certificate of its Ingress's rule hosts); the oldest Ingress on a tie. `None`: the
    /// proxy's default certificate.
    pub fn tls_secret_for(&self, sni_host: &str) -> Option<(String, String)> {
        let host = request_host(sni_host);
        self.tls_exact
            .get(host.as_ref())
            .or_else(|| wildcard_suffix(&host).and_then(|s| self.tls_wildcard.get(s)))
            .map(|c| (c.namespace.clone(), c.secret.clone()))
    }

    /// Whether `host` has a certificate of its own (so `ssl-redirect` applies to it).
    pub fn is_tls_host(&self, host: &str) -> bool {
        let host = request_host(host);
        self.tls_exact.contains_key(host.as_ref())
            || wildcard_suffix(&host).is_some_and(|s| self.tls_wildcard.contains_key(s))
    }

    /// Every TLS Secret (namespace, name) an Ingress names, for the proxy to load.
    pub fn secrets(&self) -> BTreeSet<(String, String)> {
        self.secrets.clone()
    }

    /// What users must fix, by Ingress, deduplicated and sorted.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// A request's host as the table keys hosts: no `:port`, no brackets around an IPv6
/// literal, lowercase, no trailing dot. Allocates only for uppercase hosts.
fn request_host(host: &str) -> Cow<'_, str> {
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(inside, _)| inside),
        // More than one colon: a bare IPv6 literal, no port.
        None if host.bytes().filter(|b| *b == b':').count() > 1 => host,
        None => host.split_once(':').map_or(host, |(h, _)| h),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// What a `*.` wildcard of `host` is keyed by: `host` without its first label.
fn wildcard_suffix(host: &str) -> Option<&str> {
    host.split_once('.').filter(|(first, rest)| !first.is_empty() && !rest.is_empty()).map(|(_, rest)| rest)
}

/// Which host group a rule (or a TLS host) belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostKey {
    Exact(String),
    /// `*.example.com`, by `example.com`.
    Wildcard(String),
    /// A rule without host.
    Any,
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKey::Exact(h) => write!(f, "host {h:?}"),
            HostKey::Wildcard(h) => write!(f, "host \"*.{h}\""),
            HostKey::Any => f.write_str("the rules without host"),
        }
    }
}

/// A rule's or TLS entry's host, checked as the API would (a DNS name, optionally `*.`
/// wildcard, no port, no IP address); uppercase and a trailing dot are forgiven.
fn parse_host(host: &str) -> Result<HostKey, String> {
    if host.is_empty() {
        return Ok(HostKey::Any);
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.contains(':') && name.parse::<IpAddr>().is_err() {
        return Err(format!("host {host:?} must not have a port"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "host {host:?} is an IP address, which Ingress hosts may not be (use a rule without host)"
        ));
    }
    let (wildcard, name) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "host {host:?} is not a DNS name (a wildcard may only be a whole first label, as in \"*.example.com\")"
        ));
    }
    Ok(if wildcard { HostKey::Wildcard(name.to_string()) } else { HostKey::Exact(name.to_string()) })
}

/// A path as the table keys it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PathKey {
    Exact(String),
    /// Without trailing slashes (`""` for `/`).
    Prefix(String),
    Regex(String),
}

impl fmt::Display for PathKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathKey::Exact(p) => write!(f, "Exact path {p:?}"),
            PathKey::Prefix(p) => write!(f, "Prefix path \"{p}/\""),
            PathKey::Regex(p) => write!(f, "regex path {p:?}"),
        }
    }
}

fn parse_path(path: &str, path_type: &str, regex_paths: bool) -> Result<PathKey, String> {
    let absolute = |p: &str| {
        if p.starts_with('/') { Ok(()) } else { Err(format!("path {p:?} must start with \"/\"; it is skipped")) }
    };
    match path_type {
        "Exact" => absolute(path).map(|_| PathKey::Exact(path.to_string())),
        "Prefix" => absolute(path).map(|_| PathKey::Prefix(path.trim_end_matches('/').to_string())),
        // The v1beta1 default, and what ingress-nginx assumes of a missing type.
        "ImplementationSpecific" | "" => {
            let path = if path.is_empty() { "/" } else { path };
            absolute(path)?;
            Ok(if regex_paths {
                PathKey::Regex(path.to_string())
            } else {
                PathKey::Prefix(path.trim_end_matches('/').to_string())
            })
        }
        other => Err(format!("pathType {other:?} is not Exact, Prefix or ImplementationSpecific; the path is skipped")),
    }
}

/// Reads the annotations one by one, remembering what was wrong with them.
struct Annotations<'a> {
    values: BTreeMap<&'a str, &'a str>,
    notes: Vec<(&'static str, String)>,
}

impl<'a> Annotations<'a> {
    fn new(annotations: &'a Value) -> Annotations<'a> {
        let mut a = Annotations { values: BTreeMap::new(), notes: Vec::new() };
        for (key, value) in annotations.as_object().into_iter().flatten() {
            let Some(short) = key.strip_prefix(ANNOTATION_PREFIX) else { continue };
            if !KNOWN_ANNOTATIONS.contains(&short) {
                a.notes.push((
                    UNKNOWN_ANNOTATION,
                    format!("annotation {key:?} is not supported by this ingress controller and has no effect"),
                ));
                continue;
            }
            match value.as_str() {
                Some(v) => {
                    a.values.insert(short, v);
                }
                None => a.bad(short, "its value is not a string"),
            }
        }
        a
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.values.get(key).copied()
    }

    fn bad(&mut self, key: &str, what: impl fmt::Display) {
        self.notes.push((BAD_ANNOTATION, format!("annotation {ANNOTATION_PREFIX}{key}: {what}; the default is used")));
    }

    /// The annotation's value parsed by `parse`, or `default` when it is missing or bad.
    fn parse<T>(&mut self, key: &str, default: T, parse: impl FnOnce(&str) -> Result<T, String>) -> T {
        let Some(v) = self.get(key) else { return default };
        match parse(v) {
            Ok(x) => x,
            Err(e) => {
                self.bad(key, e);
                default
            }
        }
    }

    /// An annotation that only means something with another one.
    fn needs(&mut self, key: &str, other: &str, present: bool) {
        if !present && self.get(key).is_some() {
            self.notes.push((
                BAD_ANNOTATION,
                format!("annotation {ANNOTATION_PREFIX}{key} has no effect without {ANNOTATION_PREFIX}{other}"),
            ));
        }
    }
}

/// Parses one Ingress's annotations; returns the options and (reason, message) for each
/// thing wrong with them.
fn parse_options(annotations: &Value) -> (Options, Vec<(&'static str, String)>) {
    let mut a = Annotations::new(annotations);
    let d = Options::default();
    let use_regex = a.parse("use-regex", d.use_regex, parse_bool);
    let rewrite_target = a.parse("rewrite-target", None, |v| parse_rewrite_target(v).map(Some));
    let ssl_redirect = a.parse("ssl-redirect", d.ssl_redirect, parse_bool);
    let force_ssl_redirect = a.parse("force-ssl-redirect", d.force_ssl_redirect, parse_bool);
    let backend_protocol = a.parse("backend-protocol", d.backend_protocol, str::parse);
    let proxy_body_size = a.parse("proxy-body-size", d.proxy_body_size, parse_size);
    let read_timeout = a.parse("proxy-read-timeout", d.read_timeout, parse_timeout);
    let send_timeout = a.parse("proxy-send-timeout", d.send_timeout, parse_timeout);
    let connect_timeout = a.parse("proxy-connect-timeout", d.connect_timeout, parse_timeout);

    let range_key = match (a.get("allowlist-source-range"), a.get("whitelist-source-range")) {
        (Some(_), Some(_)) => {
            a.notes.push((
                BAD_ANNOTATION,
                format!(
                    "annotation {ANNOTATION_PREFIX}whitelist-source-range is ignored: allowlist-source-range is set"
                ),
            ));
            Some("allowlist-source-range")
        }
        (Some(_), None) => Some("allowlist-source-range"),
        (None, Some(_)) => Some("whitelist-source-range"),
        (None, None) => None,
    };
    let source_ranges = range_key.and_then(|key| {
        let v = a.get(key)?;
        let mut ranges = Vec::new();
        let mut wrong = Vec::new();
        for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.parse::<Cidr>() {
                Ok(c) => ranges.push(c),
                Err(e) => wrong.push(e),
            }
        }
        if !wrong.is_empty() || ranges.is_empty() {
            let what = if wrong.is_empty() { "lists no range".to_string() } else { wrong.join(", ") };
            a.notes.push((
                BAD_ANNOTATION,
                format!(
                    "annotation {ANNOTATION_PREFIX}{key}: {what}; only the valid ranges are allowed ({} of them)",
                    ranges.len()
                ),
            ));
        }
        Some(ranges)
    });

    let redirect_to = a.parse("permanent-redirect", None, |v| parse_redirect_target(v).map(Some));
    let redirect_code = a.parse("permanent-redirect-code", 301, |v| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (300..=308).contains(c))
            .ok_or_else(|| format!("{v:?} is not a redirect status code (300-308)"))
    });
    a.needs("permanent-redirect-code", "permanent-redirect", redirect_to.is_some());
    let permanent_redirect = redirect_to.map(|to| (to, redirect_code));
    let app_root = a.parse("app-root", None, |v| parse_header_path(v).map(Some));

    let cookie = a.parse("affinity", false, |v| {
        if v == "cookie" { Ok(true) } else { Err(format!("{v:?} is not supported (only \"cookie\")")) }
    });
    let name = a.parse("session-cookie-name", DEFAULT_COOKIE_NAME.to_string(), parse_cookie_name);
    let path = a.parse("session-cookie-path", None, |v| parse_header_path(v).map(Some));
    let max_age = a.parse("session-cookie-max-age", None, |v| {
        v.trim()
            .parse::<u64>()
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| format!("{v:?} is not a number of seconds"))
    });
    for key in ["session-cookie-name", "session-cookie-path", "session-cookie-max-age"] {
        a.needs(key, "affinity: cookie", cookie);
    }
    let affinity_cookie = cookie.then_some(CookieAffinity { name, path, max_age });

    let options = Options {
        rewrite_target,
        use_regex,
        ssl_redirect,
        force_ssl_redirect,
        backend_protocol,
        proxy_body_size,
        read_timeout,
        send_timeout,
        connect_timeout,
        source_ranges,
        permanent_redirect,
        app_root,
        affinity_cookie,
    };
    (options, a.notes)
}

/// Go's `strconv.ParseBool`, which ingress-nginx uses.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

/// An nginx size (`0`, `512`, `64k`, `8m`, `1g`) in bytes; `None` for `0` (unlimited).
fn parse_size(v: &str) -> Result<Option<u64>, String> {
    let t = v.trim();
    let (digits, unit) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not an nginx size such as 8m, 512k or 0"));
    }
    let n =
        digits.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)).ok_or_else(|| format!("{v:?} is too large"))?;
    Ok((n > 0).then_some(n))
}

/// Whole seconds, 1 to a day (ingress-nginx reads an integer).
fn parse_timeout(v: &str) -> Result<Duration, String> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_TIMEOUT_SECS).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{v:?} is not a number of seconds from 1 to {MAX_TIMEOUT_SECS}"))
}

/// Safe in a header and a URI: visible ASCII only (no spaces, controls, line breaks).
fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_rewrite_target(v: &str) -> Result<String, String> {
    if !header_safe(v) {
        return Err(format!("{v:?} is empty or has spaces, control or non-ASCII characters"));
    }
    if v.starts_with("http://") || v.starts_with("https://") {
        return Err("redirecting from rewrite-target is not supported (use permanent-redirect)".to_string());
    }
    let b = v.as_bytes();
    if b.iter().enumerate().any(|(i, c)| *c == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
        return Err(format!("{v:?}: only the groups $0-$9 may be used, not nginx variables"));
    }
    Ok(v.to_string())
}

/// A `Location` for `permanent-redirect`: an absolute http(s) URL or a path.
fn parse_redirect_target(v: &str) -> Result<String, String> {
    let v = v.trim();
    if !header_safe(v) || !(v.starts_with("http://") || v.starts_with("https://") || v.starts_with('/')) {
        return Err(format!("{v:?} is not an http(s) URL or a path"));
    }
    Ok(v.to_string())
}

/// A path for `app-root` or a cookie: starts with `/`, no spaces, controls or `;`.
fn parse_header_path(v: &str) -> Result<String, String> {
    let v = v.trim();
    if !v.starts_with('/') || !header_safe(v) || v.contains(';') {
        return Err(format!("{v:?} is not a path (it must start with \"/\", without spaces or \";\")"));
    }
    Ok(v.to_string())
}

/// A cookie name: an RFC 6265 token.
fn parse_cookie_name(v: &str) -> Result<String, String> {
    let v = v.trim();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if v.is_empty() || !v.bytes().all(token) {
        return Err(format!("{v:?} is not a cookie name"));
    }
    Ok(v.to_string())
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether a slice or Service port is TCP (a missing protocol is).
fn is_tcp(port: &Value) -> bool {
    matches!(port.get("protocol").and_then(Value::as_str), None | Some("TCP"))
}

/// Everything [`build`] keeps while it goes through the Ingresses.
struct Builder<'a> {
    services: HashMap<(&'a str, &'a str), &'a Value>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a Value>>,
    backends: HashMap<(String, String, PortRef), Arc<Backend>>,
    regexes: HashMap<String, Result<Regex, String>>,
    compiled: usize,
    table: Table,
    problems: BTreeSet<Problem>,
    /// Each host's namespace: that of the oldest Ingress naming it (in a rule or in TLS).
    /// Only Ingresses of that namespace may give the host a certificate, so another
    /// namespace cannot swap it or turn on its HTTPS redirect.
    host_owners: HashMap<String, String>,
}

/// Builds the table. `ingresses` are ours (the caller filters by class); `services` and
/// `slices` every Service and EndpointSlice (discovery.k8s.io/v1) the backends may name.
/// Never fails: whatever is wrong is skipped and reported in [`Table::problems`].
pub fn build(ingresses: &[Arc<Value>], services: &[Arc<Value>], slices: &[Arc<Value>]) -> Table {
    let mut b = Builder {
        services: services
            .iter()
            .map(|s| ((text(s, "/metadata/namespace"), text(s, "/metadata/name")), &**s))
            .collect(),
        slices: HashMap::new(),
        backends: HashMap::new(),
        regexes: HashMap::new(),
        compiled: 0,
        table: Table::default(),
        problems: BTreeSet::new(),
        host_owners: HashMap::new(),
    };
    for slice in slices {
        let service = text(slice, "/metadata/labels/kubernetes.io~1service-name");
        if !service.is_empty() {
            b.slices.entry((text(slice, "/metadata/namespace"), service)).or_default().push(slice);
        }
    }
    // Oldest first: on every conflict the first one seen wins.
    let mut sorted: Vec<&Value> = ingresses.iter().map(|i| &**i).collect();
    sorted.sort_by_cached_key(|i| {
        let created = text(i, "/metadata/creationTimestamp").parse::<jiff::Timestamp>().ok();
        (created.is_none(), created, text(i, "/metadata/namespace").to_string(), text(i, "/metadata/name").to_string())
    });
    for ing in sorted {
        b.add_ingress(ing);
    }
    b.finish()
}

impl<'a> Builder<'a> {
    fn problem(&mut self, id: &IngressId, reason: &'static str, message: String) {
        self.problems.insert(Problem { namespace: id.namespace.clone(), name: id.name.clone(), reason, message });
    }

    fn add_ingress(&mut self, ing: &Value) {
        let id = Arc::new(IngressId {
            namespace: text(ing, "/metadata/namespace").to_string(),
            name: text(ing, "/metadata/name").to_string(),
        });
        let (options, notes) = parse_options(&ing["metadata"]["annotations"]);
        for (reason, message) in notes {
            self.problem(&id, reason, message);
        }
        let regex_paths = options.regex_paths();
        let options = Arc::new(options);
        let spec = &ing["spec"];

        let own_default = spec.get("defaultBackend").filter(|v| !v.is_null()).map(|db| {
            let backend = self.backend(&id, db);
            Route { backend, ingress: id.clone(), options: options.clone() }
        });
        if let Some(db) = spec.get("defaultBackend").filter(|v| !v.is_null()) {
            match &self.table.default_backend {
                Some(winner) => {
                    let message = format!(
                        "spec.defaultBackend is ignored: the older Ingress {} sets the default backend",
                        winner.ingress
                    );
                    self.problem(&id, CONFLICT, message);
                }
                None => {
                    let backend = self.backend(&id, db);
                    self.table.default_backend = Some(Route { backend, ingress: id.clone(), options: options.clone() });
                }
            }
        }

        let mut rule_hosts = Vec::new();
        for rule in spec["rules"].as_array().into_iter().flatten() {
            let host = match rule.get("host") {
                None | Some(Value::Null) => Ok(HostKey::Any),
                Some(Value::String(h)) => parse_host(h),
                Some(other) => Err(format!("host {other} is not a string")),
            };
            let host = match host {
                Ok(h) => h,
                Err(e) => {
                    self.problem(&id, BAD_HOST, format!("{e}; the rule is skipped"));
                    continue;
                }
            };
            // A host without paths still claims the host: its requests go to the default
            // backend, not to wildcard or host-less rules (as ingress-nginx's server block).
            let group = self.group(&host);
            if host != HostKey::Any && group.default.is_none() {
                group.default = own_default.clone();
            }
            if host != HostKey::Any {
                rule_hosts.push(host.clone());
            }
            for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                self.add_path(&id, &options, regex_paths, &host, p);
            }
        }

        for (i, tls) in spec["tls"].as_array().into_iter().flatten().enumerate() {
            let secret = text(tls, "/secretName");
            if secret.is_empty() {
                self.problem(
                    &id,
                    BAD_TLS,
                    format!("spec.tls[{i}] names no secretName; its hosts get the default certificate"),
                );
                continue;
            }
            self.table.secrets.insert((id.namespace.clone(), secret.to_string()));
            let listed: Vec<&Value> = tls["hosts"].as_array().into_iter().flatten().collect();
            let (hosts, explicit) = if listed.is_empty() {
                (rule_hosts.clone(), false)
            } else {
                let mut hosts = Vec::new();
                for h in listed {
                    match h.as_str().map_or_else(|| Err(format!("host {h} is not a string")), parse_host) {
                        Ok(HostKey::Any) => {
                            self.problem(&id, BAD_TLS, format!("spec.tls[{i}] lists an empty host; it is skipped"))
                        }
                        Ok(k) => hosts.push(k),
                        Err(e) => self.problem(&id, BAD_TLS, format!("spec.tls[{i}]: {e}; it is skipped")),
                    }
                }
                (hosts, true)
            };
            for host in hosts {
                let cert = TlsCert {
                    namespace: id.namespace.clone(),
                    secret: secret.to_string(),
                    explicit,
                    ingress: id.clone(),
                };
                self.add_tls(&id, host, cert);
            }
        }
    }

    fn add_path(&mut self, id: &Arc<IngressId>, options: &Arc<Options>, regex_paths: bool, host: &HostKey, p: &Value) {
        let field = |name: &str| match p.get(name) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(v)) => Ok(v.as_str()),
            Some(other) => Err(format!("{name} {other} is not a string; the path is skipped")),
        };
        if !matches!(host, HostKey::Any) {
            self.host_owners.entry(format!("{host}")).or_insert_with(|| id.namespace.clone());
        }
        let parsed = field("path").and_then(|path| parse_path(path, field("pathType")?, regex_paths));
        let key = match parsed {
            Ok(k) => k,
            Err(e) => {
                self.problem(id, BAD_PATH, format!("{host}: {e}"));
                return;
            }
        };
        let claimed = {
            let g = self.group(host);
            match &key {
                PathKey::Exact(k) => g.exact.get(k).map(|r| r.ingress.clone()),
                PathKey::Prefix(k) => g.prefix.get(k).map(|r| r.ingress.clone()),
                PathKey::Regex(k) => g.regex.iter().find(|r| &r.pattern == k).map(|r| r.route.ingress.clone()),
            }
        };
        if let Some(winner) = claimed {
            let message = if winner == *id {
                format!("{key} on {host} is listed twice; the first one is used")
            } else {
                format!("{key} on {host} is already routed by the older Ingress {winner}; this one is ignored")
            };
            self.problem(id, CONFLICT, message);
            return;
        }
        let regex = match &key {
            PathKey::Regex(pattern) => match self.regex(pattern) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(id, BAD_PATH, format!("{host}: path {pattern:?} is skipped: {e}"));
                    return;
                }
            },
            _ => None,
        };
        let backend = self.backend(id, &p["backend"]);
        let route = Route { backend, ingress: id.clone(), options: options.clone() };
        let g = self.group(host);
        match (key, regex) {
            (PathKey::Exact(k), _) => {
                g.exact.insert(k, route);
            }
            (PathKey::Prefix(k), _) => {
                g.prefix.insert(k, route);
            }
            (PathKey::Regex(pattern), Some(regex)) => g.regex.push(RegexRoute { pattern, regex, route }),
            (PathKey::Regex(_), None) => {}
        }
    }

    fn group(&mut self, host: &HostKey) -> &mut HostRoutes {
        match host {
            HostKey::Exact(h) => self.table.exact_hosts.entry(h.clone()).or_default(),
            HostKey::Wildcard(h) => self.table.wildcard_hosts.entry(h.clone()).or_default(),
            HostKey::Any => self.table.any_host.get_or_insert_with(HostRoutes::default),
        }
    }

    fn add_tls(&mut self, id: &IngressId, host: HostKey, cert: TlsCert) {
        let map = match &host {
            HostKey::Exact(_) => &mut self.table.tls_exact,
            HostKey::Wildcard(_) => &mut self.table.tls_wildcard,
            HostKey::Any => return,
        };
        let (HostKey::Exact(name) | HostKey::Wildcard(name)) = &host else { return };
        let owner = self.host_owners.entry(format!("{host}")).or_insert_with(|| cert.namespace.clone());
        if *owner != cert.namespace {
            let message = format!(
                "{host} belongs to namespace {owner} (its oldest Ingress): a certificate for it is taken only from there"
            );
            self.problem(id, CONFLICT, message);
            return;
        }
        let conflict = match map.get(name) {
            None => {
                map.insert(name.clone(), cert);
                None
            }
            Some(old) if !old.explicit && cert.explicit => {
                map.insert(name.clone(), cert);
                None
            }
            Some(old)
                if old.explicit == cert.explicit && (old.namespace != cert.namespace || old.secret != cert.secret) =>
            {
                Some(format!(
                    "TLS for {host} already uses Secret {}/{} of the older Ingress {}; Secret {} is not used for it",
                    old.namespace, old.secret, old.ingress, cert.secret
                ))
            }
            Some(_) => None,
        };
        if let Some(message) = conflict {
            self.problem(id, CONFLICT, message);
        }
    }

    /// A regex path compiled once for every Ingress naming it: case-insensitive, ASCII
    /// classes as nginx's PCRE, on the path's bytes, size-limited.
    fn regex(&mut self, pattern: &str) -> Result<Regex, String> {
        if let Some(r) = self.regexes.get(pattern) {
            return r.clone();
        }
        let compiled = if self.compiled >= MAX_REGEX_PATHS {
            Err(format!("there are more than {MAX_REGEX_PATHS} regex paths in all Ingresses"))
        } else {
            self.compiled += 1;
            RegexBuilder::new(pattern)
                .case_insensitive(true)
                .unicode(false)
                .size_limit(REGEX_SIZE_LIMIT_BYTES)
                .dfa_size_limit(REGEX_DFA_LIMIT_BYTES)
                .build()
                .map_err(|e| match e {
                    regex::Error::CompiledTooBig(_) => "the regular expression is too large".to_string(),
                    e => format!(
                        "not a valid regular expression: {}",
                        e.to_string().lines().last().unwrap_or("").trim_start_matches("error: ")
                    ),
                })
        };
        self.regexes.insert(pattern.to_string(), compiled.clone());
        compiled
    }

    /// The backend an Ingress names, resolved once per (namespace, Service, port); what
    /// keeps it from being served is reported on the Ingress.
    fn backend(&mut self, id: &IngressId, v: &Value) -> Arc<Backend> {
        let service = text(v, "/service/name").to_string();
        let unresolved = |port: Option<PortRef>, reason: &'static str, message: String| {
            Arc::new(Backend {
                namespace: id.namespace.clone(),
                service: service.clone(),
                port,
                cluster_ip: None,
                resolved: Err(Unresolved { reason, message }),
            })
        };
        let port = &v["service"]["port"];
        let backend = if v.get("resource").is_some_and(|r| !r.is_null()) {
            unresolved(None, UNSUPPORTED_BACKEND, "resource backends are not supported (use a Service)".to_string())
        } else if service.is_empty() {
            unresolved(None, BAD_BACKEND, "a backend names no Service".to_string())
        } else if let Some(n) = port.get("number").filter(|n| !n.is_null()) {
            match n.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
                Some(n) => self.resolve(&id.namespace, &service, PortRef::Number(n)),
                None => unresolved(
                    None,
                    BAD_BACKEND,
                    format!("port {n} of Service \"{}/{service}\" is not a port number (1-65535)", id.namespace),
                ),
            }
        } else if let Some(name) = port.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            self.resolve(&id.namespace, &service, PortRef::Name(name.to_string()))
        } else {
            unresolved(
                None,
                BAD_BACKEND,
                format!("the backend names no port of Service \"{}/{service}\"", id.namespace),
            )
        };
        if let Err(u) = &backend.resolved {
            self.problem(id, u.reason, u.message.clone());
        }
        backend
    }

    fn resolve(&mut self, namespace: &str, service: &str, port: PortRef) -> Arc<Backend> {
        let key = (namespace.to_string(), service.to_string(), port);
        if let Some(b) = self.backends.get(&key) {
            return b.clone();
        }
        let port = key.2.clone();
        let mut backend = Backend {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: Some(port.clone()),
            cluster_ip: None,
            resolved: Ok(Vec::new()),
        };
        backend.resolved = match self.services.get(&(namespace, service)) {
            None => Err(Unresolved {
                reason: SERVICE_NOT_FOUND,
                message: format!("Service \"{namespace}/{service}\" not found"),
            }),
            Some(svc) if text(svc, "/spec/type") == "ExternalName" => Err(Unresolved {
                reason: UNSUPPORTED_BACKEND,
                message: format!(
                    "Service \"{namespace}/{service}\" is an ExternalName Service, which is not supported"
                ),
            }),
            Some(svc) => {
                backend.cluster_ip = text(svc, "/spec/clusterIP").parse().ok();
                let found = svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| {
                    is_tcp(p)
                        && match &port {
                            PortRef::Number(n) => p["port"].as_u64() == Some(u64::from(*n)),
                            PortRef::Name(n) => text(p, "/name") == n,
                        }
                });
                match found {
                    None => Err(Unresolved {
                        reason: PORT_NOT_FOUND,
                        message: format!("Service \"{namespace}/{service}\" has no port {port}"),
                    }),
                    Some(p) => {
                        let empty = Vec::new();
                        let slices = self.slices.get(&(namespace, service)).unwrap_or(&empty);
                        let endpoints = endpoints_of(slices, text(p, "/name"));
                        if endpoints.is_empty() {
                            Err(Unresolved {
                                reason: NO_ENDPOINTS,
                                message: format!(
                                    "Service \"{namespace}/{service}\" port {port} has no ready endpoints"
                                ),
                            })
                        } else {
                            Ok(endpoints)
                        }
                    }
                }
            }
        };
        let backend = Arc::new(backend);
        self.backends.insert(key, backend.clone());
        backend
    }

    fn finish(mut self) -> Table {
        let groups = self.table.exact_hosts.values_mut().chain(self.table.wildcard_hosts.values_mut());
        for g in groups.chain(self.table.any_host.as_mut()) {
            let lens: BTreeSet<usize> = g.prefix.keys().map(String::len).collect();
            g.prefix_lens = lens.into_iter().rev().collect();
            // Stable: among equal lengths, the oldest Ingress (added first) stays first.
            g.regex.sort_by_key(|r| std::cmp::Reverse(r.pattern.len()));
        }
        self.table.problems = self.problems.into_iter().collect();
        self.table
    }
}

/// The endpoints of the Service port named `port_name` (`""` when unnamed) in its slices,
/// at each slice's target port: the ready ones; when none is, those serving while
/// terminating (upstream's graceful termination).
/// Addresses that would reach the node itself or its link rather than a pod.
fn node_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_link_local())
        }
    }
}

fn endpoints_of(slices: &[&Value], port_name: &str) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let port = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| text(p, "/name") == port_name && is_tcp(p))
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        let Some(port) = port else { continue };
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let cond = |c: &str| ep["conditions"][c].as_bool();
            for ip in
                ep["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()?.parse::<IpAddr>().ok())
            {
                // The proxy connects from the node itself: never to the node's own
                // loopback or link-local services, whatever an EndpointSlice says.
                if node_local(ip) {
                    continue;
                }
                let addr = SocketAddr::new(ip, port);
                // Upstream: a missing `ready` means ready.
                if cond("ready") != Some(false) {
                    ready.insert(addr);
                } else if cond("serving") == Some(true) && cond("terminating") == Some(true) {
                    terminating.insert(addr);
                }
            }
        }
    }
    if ready.is_empty() { terminating.into_iter().collect() } else { ready.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(ns: &str, name: &str, created: &str, annotations: Value, spec: Value) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": created, "annotations": annotations},
            "spec": spec,
        }))
    }

    fn backend(svc: &str, port: u16) -> Value {
        json!({"service": {"name": svc, "port": {"number": port}}})
    }

    fn path(p: &str, ty: &str, svc: &str) -> Value {
        json!({"path": p, "pathType": ty, "backend": backend(svc, 80)})
    }

    fn rule(host: &str, paths: Vec<Value>) -> Value {
        if host.is_empty() {
            json!({"http": {"paths": paths}})
        } else {
            json!({"host": host, "http": {"paths": paths}})
        }
    }

    fn one(spec: Value) -> Table {
        build(&[ingress("default", "web", "2024-01-01T00:00:00Z", json!({}), spec)], &[], &[])
    }

    /// The Service a request goes to.
    fn to(t: &Table, host: &str, p: &str) -> Option<String> {
        t.route(host, p).map(|m| m.backend.service.clone())
    }

    fn reasons(t: &Table) -> Vec<&'static str> {
        t.problems().iter().map(|p| p.reason).collect()
    }

    #[test]
    fn the_upstream_examples_table() {
        // https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
        // (kind, [(path, type)], request, matched rule path, or None: default backend)
        let p = |s: &str| Some(s.to_string());
        type Row = (&'static [(&'static str, &'static str)], &'static str, Option<String>);
        let rows: Vec<Row> = vec![
            (&[("/", "Prefix")], "/", p("/")),
            (&[("/", "Prefix")], "/anything/at/all", p("/")),
            (&[("/foo", "Exact")], "/foo", p("/foo")),
            (&[("/foo", "Exact")], "/bar", None),
            (&[("/foo", "Exact")], "/foo/", None),
            (&[("/foo/", "Exact")], "/foo", None),
            (&[("/foo", "Prefix")], "/foo", p("/foo")),
            (&[("/foo", "Prefix")], "/foo/", p("/foo")),
            (&[("/foo/", "Prefix")], "/foo", p("/foo/")),
            (&[("/foo/", "Prefix")], "/foo/", p("/foo/")),
            (&[("/aaa/bb", "Prefix")], "/aaa/bbb", None),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbb", p("/aaa/bbb")),
            (&[("/aaa/bbb/", "Prefix")], "/aaa/bbb", p("/aaa/bbb/")),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbb/", p("/aaa/bbb")),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", p("/aaa/bbb")),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
            (&[("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", p("/aaa")),
            (&[("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", p("/aaa/bbb")),
            (&[("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", p("/")),
            (&[("/aaa", "Prefix")], "/ccc", None),
            (&[("/foo", "Prefix"), ("/foo", "Exact")], "/foo", p("/foo Exact")),
        ];
        for (paths, request, want) in rows {
            // Each path goes to a Service named after it, so the answer says which matched.
            let name =
                |p: &str, ty: &str| if ty == "Exact" && paths.len() > 1 { format!("{p} Exact") } else { p.to_string() };
            let list: Vec<Value> = paths.iter().map(|(p, ty)| path(p, ty, &name(p, ty))).collect();
            let spec = json!({"defaultBackend": backend("default-backend", 80), "rules": [rule("", list)]});
            let t = one(spec);
            let got = t.route("any.example", request).expect("the default backend answers at least");
            let want_svc = want.clone().unwrap_or("default-backend".to_string());
            assert_eq!(got.backend.service, want_svc, "{paths:?} with {request}");
            let want_kind = match &want {
                None => MatchKind::DefaultBackend,
                Some(w) if w.ends_with("Exact") || paths[0].1 == "Exact" => MatchKind::Exact,
                Some(_) => MatchKind::Prefix,
            };
            assert_eq!(got.kind, want_kind, "{paths:?} with {request}");
        }
    }

    #[test]
    fn matching_is_case_sensitive_and_element_wise() {
        let t = one(json!({"rules": [rule("", vec![path("/Foo", "Prefix", "a"), path("/x/y", "Exact", "b")])]}));
        assert_eq!(to(&t, "h", "/Foo/bar"), Some("a".into()));
        assert_eq!(to(&t, "h", "/foo"), None);
        assert_eq!(to(&t, "h", "/X/y"), None);
        assert_eq!(to(&t, "h", "/Foobar"), None);
        // No path matched and no default backend: the proxy answers 404.
        assert!(t.route("h", "/other").is_none());
    }

    #[test]
    fn hosts_exact_then_one_label_wildcard_then_hostless() {
        let spec = json!({"rules": [
            rule("foo.example.com", vec![path("/api", "Prefix", "exact")]),
            rule("*.example.com", vec![path("/", "Prefix", "wild")]),
            rule("", vec![path("/", "Prefix", "any")]),
        ]});
        let t = one(spec);
        assert_eq!(to(&t, "foo.example.com", "/api/x"), Some("exact".into()));
        // The exact host's group is used even when none of its paths match.
        assert_eq!(to(&t, "foo.example.com", "/other"), None);
        assert_eq!(to(&t, "bar.example.com", "/x"), Some("wild".into()));
        assert_eq!(to(&t, "baz.bar.example.com", "/x"), Some("any".into()));
        assert_eq!(to(&t, "example.com", "/x"), Some("any".into()));
        assert_eq!(to(&t, "other.org", "/x"), Some("any".into()));
        // Ports, case and a trailing dot do not matter; IP literals are no host rule's.
        assert_eq!(to(&t, "FOO.Example.COM:8443", "/api"), Some("exact".into()));
        assert_eq!(to(&t, "foo.example.com.", "/api"), Some("exact".into()));
        assert_eq!(to(&t, "Bar.Example.Com.:80", "/"), Some("wild".into()));
        assert_eq!(to(&t, "10.0.0.1:80", "/"), Some("any".into()));
        assert_eq!(to(&t, "[::1]:80", "/"), Some("any".into()));
        assert_eq!(to(&t, "::1", "/"), Some("any".into()));
        assert_eq!(to(&t, "", "/"), Some("any".into()));
        assert!(t.problems().iter().all(|p| p.reason == SERVICE_NOT_FOUND), "{:?}", t.problems());

        // Without host-less rules, a host nobody names has nothing.
        let t = one(json!({"rules": [rule("*.example.com", vec![path("/", "Prefix", "wild")])]}));
        assert_eq!(to(&t, "example.com", "/"), None);
        assert_eq!(to(&t, ".example.com", "/"), None);
    }

    #[test]
    fn a_host_without_paths_still_claims_its_requests() {
        let spec = json!({"defaultBackend": backend("fallback", 80), "rules": [
            {"host": "bare.example.com"},
            rule("*.example.com", vec![path("/", "Prefix", "wild")]),
        ]});
        let t = one(spec);
        let m = t.route("bare.example.com", "/").unwrap();
        assert_eq!((m.backend.service.as_str(), m.kind), ("fallback", MatchKind::DefaultBackend));
    }

    #[test]
    fn longest_path_wins_then_exact_over_prefix_across_ingresses() {
        let a = ingress(
            "team-a",
            "a",
            "2024-01-01T00:00:00Z",
            json!({}),
            json!({"rules": [rule("shop.example", vec![path("/", "Prefix", "root"), path("/cart", "Prefix", "cart")])]}),
        );
        let b = ingress(
            "team-b",
            "b",
            "2024-02-01T00:00:00Z",
            json!({}),
            json!({"rules": [rule("shop.example", vec![
                path("/cart/checkout", "Prefix", "checkout"),
                path("/cart", "Exact", "cart-exact"),
            ])]}),
        );
        let t = build(&[b, a], &[], &[]);
        assert_eq!(to(&t, "shop.example", "/"), Some("root".into()));
        assert_eq!(to(&t, "shop.example", "/cart"), Some("cart-exact".into()));
        assert_eq!(to(&t, "shop.example", "/cart/"), Some("cart".into()));
        assert_eq!(to(&t, "shop.example", "/cart/items"), Some("cart".into()));
        assert_eq!(to(&t, "shop.example", "/cart/checkout/pay"), Some("checkout".into()));
        assert_eq!(to(&t, "shop.example", "/cartoon"), Some("root".into()));
        let m = t.route("shop.example", "/cart/checkout").unwrap();
        assert_eq!(m.ingress.to_string(), "team-b/b");
        assert_eq!(m.backend.namespace, "team-b");
        assert!(!reasons(&t).contains(&CONFLICT));
    }

    #[test]
    fn the_oldest_ingress_keeps_a_claimed_path() {
        let spec = |svc: &str| json!({"rules": [rule("app.example", vec![path("/api", "Prefix", svc)])]});
        let newer = ingress("b", "newer", "2024-05-01T10:00:00Z", json!({}), spec("newer-svc"));
        // Fractional seconds compare as times, not as strings.
        let older = ingress("z", "older", "2024-05-01T09:59:59.5Z", json!({}), spec("older-svc"));
        let t = build(&[newer.clone(), older.clone()], &[], &[]);
        assert_eq!(to(&t, "app.example", "/api"), Some("older-svc".into()));
        let conflict = t.problems().iter().find(|p| p.reason == CONFLICT).unwrap();
        assert_eq!((conflict.namespace.as_str(), conflict.name.as_str()), ("b", "newer"));
        assert!(conflict.message.contains("z/older"), "{}", conflict.message);
        // `/api/` is the same Prefix path; Exact `/api` is a different one.
        let same = ingress("c", "slash", "2024-06-01T00:00:00Z", json!({}), spec("x"));
        let mut slash = (*same).clone();
        slash["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!("/api/");
        let t = build(&[Arc::new(slash), older.clone()], &[], &[]);
        assert_eq!(reasons(&t).iter().filter(|r| **r == CONFLICT).count(), 1);

        // Same time: namespace then name decides; no time at all counts as newest.
        let t1 = ingress("a", "one", "2024-01-01T00:00:00Z", json!({}), spec("one"));
        let t2 = ingress("a", "two", "2024-01-01T00:00:00Z", json!({}), spec("two"));
        let untimed = ingress("0", "untimed", "", json!({}), spec("untimed"));
        let t = build(&[untimed, t2, t1], &[], &[]);
        assert_eq!(to(&t, "app.example", "/api"), Some("one".into()));

        // The same path twice in one Ingress: the first is used, and it says so.
        let t = one(json!({"rules": [rule("h", vec![path("/x", "Exact", "first"), path("/x", "Exact", "second")])]}));
        assert_eq!(to(&t, "h", "/x"), Some("first".into()));
        assert!(t.problems().iter().any(|p| p.reason == CONFLICT && p.message.contains("listed twice")));
    }

    #[test]
    fn the_oldest_default_backend_wins() {
        let old = ingress("a", "old", "2023-01-01T00:00:00Z", json!({}), json!({"defaultBackend": backend("old", 80)}));
        let new = ingress("a", "new", "2024-01-01T00:00:00Z", json!({}), json!({"defaultBackend": backend("new", 80)}));
        let t = build(&[new, old], &[], &[]);
        let m = t.route("whatever", "/x").unwrap();
        assert_eq!((m.backend.service.as_str(), m.ingress.name.as_str()), ("old", "old"));
        assert!(t.problems().iter().any(|p| p.reason == CONFLICT && p.name == "new" && p.message.contains("a/old")));
        assert!(build(&[], &[], &[]).route("h", "/").is_none());
    }

    #[test]
    fn another_namespaces_default_backend_never_catches_a_known_host() {
        let catch_all =
            ingress("evil", "catch", "2020-01-01T00:00:00Z", json!({}), json!({"defaultBackend": backend("grab", 80)}));
        let site = ingress(
            "shop",
            "site",
            "2024-01-01T00:00:00Z",
            json!({}),
            json!({"rules": [
            rule("shop.example", vec![path("/app", "Prefix", "app")])]}),
        );
        let t = build(&[site, catch_all], &[], &[]);
        assert_eq!(to(&t, "shop.example", "/app/x"), Some("app".into()));
        assert_eq!(to(&t, "shop.example", "/admin"), None, "the host's own rules decide: 404");
        assert_eq!(to(&t, "unknown.example", "/"), Some("grab".into()), "hosts nobody names: the default");
    }

    #[test]
    fn only_the_hosts_namespace_gives_it_a_certificate() {
        let owner = ingress(
            "shop",
            "site",
            "2023-01-01T00:00:00Z",
            json!({}),
            json!({
            "rules": [rule("shop.example", vec![path("/", "Prefix", "web")])]}),
        );
        let thief = ingress(
            "evil",
            "tls",
            "2024-01-01T00:00:00Z",
            json!({}),
            json!({
            "tls": [{"hosts": ["shop.example"], "secretName": "fake"}],
            "rules": [rule("shop.example", vec![path("/steal", "Prefix", "grab")])]}),
        );
        let t = build(&[thief.clone(), owner.clone()], &[], &[]);
        assert_eq!(t.tls_secret_for("shop.example"), None);
        assert!(!t.is_tls_host("shop.example"), "nor turn on the owner's HTTPS redirect");
        assert!(t.problems().iter().any(|p| p.name == "tls" && p.reason == CONFLICT && p.message.contains("shop")));
        let mut own_tls = (*owner).clone();
        own_tls["spec"]["tls"] = json!([{"hosts": ["shop.example"], "secretName": "real"}]);
        let t = build(&[thief, Arc::new(own_tls)], &[], &[]);
        assert_eq!(t.tls_secret_for("shop.example"), Some(("shop".into(), "real".into())));
    }

    #[test]
    fn endpoints_on_the_nodes_own_loopback_or_link_are_never_used() {
        let services = vec![service("d", "web", json!([{"name": "http", "port": 80}]))];
        let slices = vec![slice(
            "d",
            "web",
            "web-1",
            json!([{"name": "http", "port": 22}]),
            json!([
            {"addresses": ["127.0.0.1"]}, {"addresses": ["169.254.169.254"]}, {"addresses": ["::1"]},
            {"addresses": ["10.42.0.9"]}]),
        )];
        let t = build(
            &[ingress(
                "d",
                "i",
                "2024-01-01T00:00:00Z",
                json!({}),
                json!({"rules": [rule("h", vec![path("/", "Prefix", "web")])]}),
            )],
            &services,
            &slices,
        );
        let m = t.route("h", "/").unwrap();
        assert_eq!(m.backend.endpoints().ok(), Some(&addrs(&["10.42.0.9:22"])[..]));
    }

    fn service(ns: &str, name: &str, ports: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": "10.43.0.10", "ports": ports}}))
    }

    fn slice(ns: &str, svc: &str, name: &str, ports: Value, endpoints: Value) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn backends_resolve_to_ready_endpoints_by_port_number_and_name() {
        let services = vec![
            service(
                "shop",
                "web",
                json!([
                    {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "port": 9090},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ]),
            ),
            service("shop", "idle", json!([{"port": 80}])),
            service("shop", "draining", json!([{"port": 80}])),
            Arc::new(json!({"metadata": {"namespace": "shop", "name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}})),
            // Same name, other namespace: never used for `shop`'s Ingresses.
            service("other", "gone", json!([{"port": 80}])),
        ];
        let slices = vec![
            // Two slices of one Service, with different target ports (a rollout).
            slice(
                "shop",
                "web",
                "web-1",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9100}]),
                json!([
                    {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.42.0.6"], "conditions": {"ready": false, "serving": false}},
                    {"addresses": ["10.42.0.7"]},
                ]),
            ),
            slice(
                "shop",
                "web",
                "web-2",
                json!([{"name": "http", "port": 8081}]),
                json!([{"addresses": ["10.42.1.9"], "conditions": {"ready": true}}]),
            ),
            Arc::new(json!({"metadata": {"namespace": "shop", "name": "web-v6",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": true}}]})),
            slice(
                "shop",
                "idle",
                "idle-1",
                json!([{"port": 8080}]),
                json!([{"addresses": ["10.42.0.8"], "conditions": {"ready": false}}]),
            ),
            slice(
                "shop",
                "draining",
                "draining-1",
                json!([{"port": 8080}]),
                json!([{"addresses": ["10.42.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}}]),
            ),
        ];
        let named = |svc: &str, port: &str| json!({"service": {"name": svc, "port": {"name": port}}});
        let p = |path: &str, backend: Value| json!({"path": path, "pathType": "Prefix", "backend": backend});
        let spec = json!({"rules": [rule("shop.example", vec![
            p("/web", backend("web", 80)),
            p("/metrics", named("web", "metrics")),
            p("/missing", backend("nope", 80)),
            p("/badport", backend("web", 8080)),
            p("/badname", named("web", "grpc")),
            p("/udp", backend("web", 53)),
            p("/idle", backend("idle", 80)),
            p("/draining", backend("draining", 80)),
            p("/resource", json!({"resource": {"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "b"}})),
            p("/external", backend("ext", 80)),
            p("/gone", backend("gone", 80)),
            p("/outofrange", json!({"service": {"name": "web", "port": {"number": 70000}}})),
            p("/noport", json!({"service": {"name": "web", "port": {}}})),
        ])]});
        let ing = ingress("shop", "front", "2024-01-01T00:00:00Z", json!({}), spec);
        let t = build(&[ing], &services, &slices);
        let eps = |path: &str| t.route("shop.example", path).unwrap().backend.resolved.clone();
        assert_eq!(
            eps("/web").unwrap(),
            addrs(&["10.42.0.5:8080", "10.42.0.7:8080", "10.42.1.9:8081", "[fd00::5]:8080"])
        );
        assert_eq!(eps("/metrics").unwrap(), addrs(&["10.42.0.5:9100", "10.42.0.7:9100"]));
        assert_eq!(eps("/draining").unwrap(), addrs(&["10.42.0.9:8080"]));
        let web = t.route("shop.example", "/web").unwrap();
        assert_eq!(web.backend.cluster_ip, Some("10.43.0.10".parse().unwrap()));
        assert_eq!(web.backend.to_string(), "shop/web:80");
        let why = |path: &str| eps(path).unwrap_err();
        assert_eq!(why("/missing").message, "Service \"shop/nope\" not found");
        assert_eq!(why("/missing").reason, SERVICE_NOT_FOUND);
        assert_eq!(why("/gone").reason, SERVICE_NOT_FOUND);
        assert_eq!(why("/badport").message, "Service \"shop/web\" has no port 8080");
        assert_eq!(why("/badname").message, "Service \"shop/web\" has no port \"grpc\"");
        assert_eq!(why("/udp").reason, PORT_NOT_FOUND);
        assert_eq!(why("/idle").reason, NO_ENDPOINTS);
        assert!(why("/idle").message.contains("no ready endpoints"));
        assert_eq!(why("/resource").message, "resource backends are not supported (use a Service)");
        assert_eq!(why("/external").reason, UNSUPPORTED_BACKEND);
        assert_eq!(why("/outofrange").reason, BAD_BACKEND);
        assert_eq!(why("/noport").reason, BAD_BACKEND);
        // Each unusable backend is a problem on the Ingress, naming the Service.
        let messages: Vec<&str> = t.problems().iter().map(|p| p.message.as_str()).collect();
        assert!(messages.contains(&"Service \"shop/nope\" not found"), "{messages:?}");
        assert!(messages.contains(&"Service \"shop/web\" has no port 8080"));
        assert_eq!(t.problems().iter().filter(|p| p.name == "front").count(), 10, "{:?}", t.problems());
    }

    #[test]
    fn backends_are_resolved_once_and_shared() {
        let services = vec![service("default", "web", json!([{"port": 80}]))];
        let slices = vec![slice("default", "web", "w", json!([{"port": 80}]), json!([{"addresses": ["10.0.0.1"]}]))];
        let paths: Vec<Value> = (0..100).map(|i| path(&format!("/p{i}"), "Prefix", "web")).collect();
        let ing = ingress("default", "many", "2024-01-01T00:00:00Z", json!({}), json!({"rules": [rule("h", paths)]}));
        let t = build(&[ing], &services, &slices);
        let a = t.route("h", "/p1").unwrap();
        let b = t.route("h", "/p99").unwrap();
        assert!(Arc::ptr_eq(&a.backend, &b.backend));
        assert!(Arc::ptr_eq(&a.options, &b.options));
        assert!(t.problems().is_empty());
    }

    #[test]
    fn tls_secrets_exact_before_wildcard_listed_before_implied() {
        let a = ingress(
            "a",
            "wild",
            "2024-01-01T00:00:00Z",
            json!({}),
            json!({
                "tls": [{"hosts": ["*.example.com"], "secretName": "wildcard-cert"}],
                "rules": [rule("*.example.com", vec![path("/", "Prefix", "w")])],
            }),
        );
        let b = ingress(
            "b",
            "shop",
            "2024-02-01T00:00:00Z",
            json!({}),
            json!({
                "tls": [{"hosts": ["Shop.Example.com"], "secretName": "shop-cert"}],
                "rules": [rule("shop.example.com", vec![path("/", "Prefix", "s")])],
            }),
        );
        // A TLS entry without hosts: the certificate of this Ingress's rule hosts.
        let c = ingress(
            "c",
            "implied",
            "2024-03-01T00:00:00Z",
            json!({}),
            json!({
                "tls": [{"secretName": "implied-cert"}],
                "rules": [rule("blog.example.com", vec![path("/", "Prefix", "b")]),
                          rule("shop.example.com", vec![path("/blog", "Prefix", "b")]),
                          rule("", vec![path("/", "Prefix", "any")])],
            }),
        );
        // Newer, same host, other Secret: the older keeps it.
        let d = ingress(
            "d",
            "late",
            "2024-04-01T00:00:00Z",
            json!({}),
            json!({
                "tls": [{"hosts": ["shop.example.com"], "secretName": "late-cert"}, {"hosts": ["x.org"]}],
            }),
        );
        let t = build(&[d, c, b, a], &[], &[]);
        let secret = |h: &str| t.tls_secret_for(h);
        let pair = |ns: &str, s: &str| Some((ns.to_string(), s.to_string()));
        assert_eq!(secret("shop.example.com"), pair("b", "shop-cert"));
        assert_eq!(secret("SHOP.example.com."), pair("b", "shop-cert"));
        assert_eq!(secret("blog.example.com"), pair("c", "implied-cert"));
        assert_eq!(secret("api.example.com"), pair("a", "wildcard-cert"));
        assert_eq!(secret("deep.api.example.com"), None);
        assert_eq!(secret("example.com"), None);
        assert!(t.is_tls_host("api.example.com") && t.is_tls_host("blog.example.com:443"));
        assert!(!t.is_tls_host("other.org"));
        let all: Vec<(String, String)> = t.secrets().into_iter().collect();
        let want = ["a/wildcard-cert", "b/shop-cert", "c/implied-cert", "d/late-cert"];
        assert_eq!(all.iter().map(|(n, s)| format!("{n}/{s}")).collect::<Vec<_>>(), want);
        let late: Vec<&Problem> = t.problems().iter().filter(|p| p.name == "late").collect();
        // Another namespace's host: its certificate is not taken from here at all.
        assert!(late.iter().any(|p| p.reason == CONFLICT && p.message.contains("namespace b")), "{late:?}");
        assert!(late.iter().any(|p| p.reason == BAD_TLS && p.message.contains("secretName")), "{late:?}");
    }

    #[test]
    fn annotations_parse_with_ingress_nginx_defaults() {
        let (o, notes) = parse_options(&json!({}));
        assert_eq!(o, Options::default());
        assert!(notes.is_empty());
        assert_eq!(o.proxy_body_size, Some(1024 * 1024));
        assert_eq!((o.read_timeout.as_secs(), o.send_timeout.as_secs(), o.connect_timeout.as_secs()), (60, 60, 5));
        assert!(o.redirects_to_https(true) && !o.redirects_to_https(false));

        let n = |k: &str| format!("{ANNOTATION_PREFIX}{k}");
        let good = json!({
            n("rewrite-target"): "/$2",
            n("use-regex"): "True",
            n("ssl-redirect"): "false",
            n("force-ssl-redirect"): "1",
            n("backend-protocol"): "grpcs",
            n("proxy-body-size"): "8m",
            n("proxy-read-timeout"): "120",
            n("proxy-send-timeout"): "30",
            n("proxy-connect-timeout"): "2",
            n("allowlist-source-range"): "10.0.0.0/8, 2001:db8::/32,192.168.1.7",
            n("permanent-redirect"): "https://new.example/",
            n("permanent-redirect-code"): "308",
            n("app-root"): "/app",
            n("affinity"): "cookie",
            n("session-cookie-name"): "route",
            n("session-cookie-path"): "/shop",
            n("session-cookie-max-age"): "3600",
            "kubernetes.io/ingress.class": "bramble",
            "example.com/anything": "is not ours to judge",
        });
        let (o, notes) = parse_options(&good);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(o.rewrite_target.as_deref(), Some("/$2"));
        assert!(o.use_regex && !o.ssl_redirect && o.force_ssl_redirect);
        assert!(o.redirects_to_https(false));
        assert_eq!(o.backend_protocol, BackendProtocol::Grpcs);
        assert_eq!(o.proxy_body_size, Some(8 << 20));
        assert_eq!((o.read_timeout.as_secs(), o.send_timeout.as_secs(), o.connect_timeout.as_secs()), (120, 30, 2));
        assert_eq!(o.source_ranges.as_ref().map(Vec::len), Some(3));
        assert_eq!(o.permanent_redirect, Some(("https://new.example/".to_string(), 308)));
        assert_eq!(o.app_root.as_deref(), Some("/app"));
        let cookie = o.affinity_cookie.clone().unwrap();
        assert_eq!(cookie.set_cookie("abc"), "route=abc; Path=/shop; HttpOnly; Max-Age=3600");
        let plain = parse_options(&json!({n("affinity"): "cookie"})).0.affinity_cookie.unwrap();
        assert_eq!(plain.set_cookie("x"), "INGRESSCOOKIE=x; Path=/; HttpOnly");

        for (size, want) in [("0", None), ("512", Some(512)), ("1k", Some(1024)), ("2G", Some(2 << 30))] {
            assert_eq!(parse_options(&json!({n("proxy-body-size"): size})).0.proxy_body_size, want, "{size}");
        }
        let (o, notes) = parse_options(&json!({n("whitelist-source-range"): "192.0.2.0/24"}));
        assert!(notes.is_empty() && o.source_ranges.is_some());
        let (o, notes) = parse_options(&json!({n("permanent-redirect"): "/moved"}));
        assert!(notes.is_empty());
        assert_eq!(o.permanent_redirect, Some(("/moved".to_string(), 301)));
    }

    #[test]
    fn bad_annotation_values_are_reported_and_the_default_used() {
        let n = |k: &str| format!("{ANNOTATION_PREFIX}{k}");
        let d = Options::default();
        let cases: Vec<(&str, Value, &str)> = vec![
            ("rewrite-target", json!(""), "empty"),
            ("rewrite-target", json!("/$host"), "nginx variables"),
            ("rewrite-target", json!("https://elsewhere/"), "permanent-redirect"),
            ("rewrite-target", json!("/a b"), "spaces"),
            ("rewrite-target", json!("/caf\u{e9}"), "non-ASCII"),
            ("use-regex", json!("yes"), "true or false"),
            ("ssl-redirect", json!("nope"), "true or false"),
            ("force-ssl-redirect", json!(true), "not a string"),
            ("backend-protocol", json!("FCGI"), "HTTP, HTTPS, GRPC, GRPCS"),
            ("proxy-body-size", json!("8 m"), "nginx size"),
            ("proxy-body-size", json!("99999999999999999999g"), "too large"),
            ("proxy-body-size", json!("m"), "nginx size"),
            ("proxy-read-timeout", json!("60s"), "seconds"),
            ("proxy-send-timeout", json!("0"), "seconds"),
            ("proxy-connect-timeout", json!("-1"), "seconds"),
            ("proxy-connect-timeout", json!("86401"), "seconds"),
            ("permanent-redirect", json!("javascript:alert(1)"), "URL"),
            ("permanent-redirect", json!("/a\r\nSet-Cookie: x=y"), "URL"),
            ("app-root", json!("app"), "start with"),
            ("app-root", json!("/a\tb"), "start with"),
            ("affinity", json!("ip_hash"), "only \"cookie\""),
        ];
        for (key, value, says) in cases {
            let (o, notes) = parse_options(&json!({n(key): value}));
            assert_eq!(o, d, "{key}: {value} must leave the default");
            assert_eq!(notes.len(), 1, "{key}: {value}: {notes:?}");
            assert_eq!(notes[0].0, BAD_ANNOTATION);
            assert!(notes[0].1.contains(key) && notes[0].1.contains(says), "{key}: {value}: {}", notes[0].1);
        }
        // Redirect code: bad value, default 301; without a redirect it has no effect.
        let (o, notes) = parse_options(&json!({n("permanent-redirect"): "/x", n("permanent-redirect-code"): "200"}));
        assert_eq!((o.permanent_redirect, notes.len()), (Some(("/x".to_string(), 301)), 1));
        let (_, notes) = parse_options(&json!({n("permanent-redirect-code"): "302"}));
        assert!(notes[0].1.contains("no effect"), "{notes:?}");
        // Cookie settings: bad values fall back; without `affinity: cookie` they say so.
        let (o, notes) = parse_options(&json!({n("affinity"): "cookie", n("session-cookie-name"): "a;b",
            n("session-cookie-path"): "/x;y", n("session-cookie-max-age"): "soon"}));
        assert_eq!(notes.len(), 3, "{notes:?}");
        let c = o.affinity_cookie.unwrap();
        assert_eq!((c.name.as_str(), c.path, c.max_age), ("INGRESSCOOKIE", None, None));
        let (o, notes) = parse_options(&json!({n("session-cookie-name"): "x"}));
        assert!(o.affinity_cookie.is_none() && notes[0].1.contains("no effect"), "{notes:?}");
    }

    #[test]
    fn unknown_nginx_annotations_are_reported_others_ignored() {
        let ann = json!({
            "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";",
            "nginx.ingress.kubernetes.io/auth-url": "http://auth",
            "nginx.ingress.kubernetes.io/ssl-redirect": "true",
            "traefik.ingress.kubernetes.io/router.entrypoints": "web",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        });
        let t = build(&[ingress("ns", "i", "2024-01-01T00:00:00Z", ann, json!({}))], &[], &[]);
        let unknown: Vec<&Problem> = t.problems().iter().collect();
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert!(unknown.iter().all(|p| p.reason == UNKNOWN_ANNOTATION && p.namespace == "ns" && p.name == "i"));
        assert!(unknown[0].message.contains("nginx.ingress.kubernetes.io/auth-url"));
        assert!(unknown[1].message.contains("nginx.ingress.kubernetes.io/configuration-snippet"));
    }

    fn regex_ingress(annotations: Value, paths: Vec<Value>) -> Table {
        build(
            &[ingress("default", "re", "2024-01-01T00:00:00Z", annotations, json!({"rules": [rule("", paths)]}))],
            &[],
            &[],
        )
    }

    #[test]
    fn rewrite_target_uses_the_regex_groups_like_ingress_nginx() {
        // https://kubernetes.github.io/ingress-nginx/examples/rewrite/
        let t = regex_ingress(
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
            vec![path("/something(/|$)(.*)", "ImplementationSpecific", "svc")],
        );
        for (request, want) in
            [("/something", "/"), ("/something/", "/"), ("/something/new", "/new"), ("/SomeThing/a/b", "/a/b")]
        {
            let m = t.route("rewrite.bar.com", request).unwrap_or_else(|| panic!("{request} must match"));
            assert_eq!(m.kind, MatchKind::Regex);
            assert_eq!(t.rewrite_path(&m, request), want, "{request}");
        }
        let m = t.route("h", "/something/new").unwrap();
        assert_eq!(m.captures, vec![Some("/something/new".into()), Some("/".into()), Some("new".into())]);
        assert!(t.route("h", "/x/something/new").is_none(), "anchored at the start");

        // The whole path is replaced: nothing after the match is carried over.
        let t = regex_ingress(
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/api/$1$9"}),
            vec![path("/v1/([a-z]+)", "ImplementationSpecific", "svc"), path("/exact", "Exact", "e")],
        );
        let m = t.route("h", "/v1/users/42").unwrap();
        assert_eq!(t.rewrite_path(&m, "/v1/users/42"), "/api/users");
        // A group that takes no part, and Exact paths (no groups), give empty strings.
        let m = t.route("h", "/exact").unwrap();
        assert_eq!((m.kind, t.rewrite_path(&m, "/exact")), (MatchKind::Exact, "/api/".to_string()));
        let t = regex_ingress(
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "$1"}),
            vec![path("/keep/(.*)", "ImplementationSpecific", "svc")],
        );
        let m = t.route("h", "/keep/a").unwrap();
        assert_eq!(t.rewrite_path(&m, "/keep/a"), "/a");

        // Without rewrite-target, the path is untouched.
        let t = regex_ingress(json!({}), vec![path("/", "Prefix", "svc")]);
        let m = t.route("h", "/a/b").unwrap();
        assert_eq!(t.rewrite_path(&m, "/a/b"), "/a/b");
    }

    #[test]
    fn regex_paths_are_case_insensitive_anchored_and_checked() {
        let ann = json!({"nginx.ingress.kubernetes.io/use-regex": "true"});
        let t = regex_ingress(
            ann.clone(),
            vec![
                path("/api/v[0-9]+", "ImplementationSpecific", "api"),
                path("/api/v1/special", "ImplementationSpecific", "special"),
                path("/static", "Prefix", "static"),
                path("/(unclosed", "ImplementationSpecific", "broken"),
                path("/a{1000}{1000}", "ImplementationSpecific", "huge"),
                path("/\\d+", "ImplementationSpecific", "digits"),
            ],
        );
        assert_eq!(to(&t, "h", "/API/V2/users"), Some("api".into()));
        assert_eq!(to(&t, "h", "/api/v1/special/x"), Some("special".into()), "the longer pattern first");
        assert_eq!(to(&t, "h", "/api/v2x"), Some("api".into()), "a regex is a string prefix, as in nginx");
        assert_eq!(to(&t, "h", "/x/api/v2"), None);
        assert_eq!(to(&t, "h", "/static/app.js"), Some("static".into()), "Prefix paths stay Prefix");
        assert_eq!(to(&t, "h", "/STATIC"), None);
        assert_eq!(to(&t, "h", "/123"), Some("digits".into()));
        let bad: Vec<&Problem> = t.problems().iter().filter(|p| p.reason == BAD_PATH).collect();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad.iter().any(|p| p.message.contains("/(unclosed") && p.message.contains("not a valid")));
        assert!(bad.iter().any(|p| p.message.contains("too large")));

        // Without the annotation the same path is a plain prefix.
        let t = regex_ingress(json!({}), vec![path("/api/v[0-9]+", "ImplementationSpecific", "literal")]);
        assert_eq!(to(&t, "h", "/api/v[0-9]+/x"), Some("literal".into()));
        assert_eq!(to(&t, "h", "/api/v2"), None);

        // A regex no longer than a matching Prefix path loses to it.
        let t =
            regex_ingress(ann, vec![path("/ab.", "ImplementationSpecific", "re"), path("/abc", "Prefix", "prefix")]);
        assert_eq!(to(&t, "h", "/abc"), Some("prefix".into()));
        assert_eq!(to(&t, "h", "/abd"), Some("re".into()));
    }

    #[test]
    fn regex_paths_are_limited_in_number() {
        let paths: Vec<Value> =
            (0..MAX_REGEX_PATHS + 3).map(|i| path(&format!("/r{i}/.*"), "ImplementationSpecific", "svc")).collect();
        let t = regex_ingress(json!({"nginx.ingress.kubernetes.io/use-regex": "true"}), paths);
        let over = t.problems().iter().filter(|p| p.reason == BAD_PATH).count();
        assert_eq!(over, 3);
        assert!(to(&t, "h", "/r0/x").is_some());
        assert!(to(&t, "h", &format!("/r{}/x", MAX_REGEX_PATHS + 1)).is_none());
    }

    #[test]
    fn cidrs_parse_and_contain_v4_and_v6() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert!(c("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("192.168.1.7").contains(ip("192.168.1.7")) && !c("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")) && !c("0.0.0.0/0").contains(ip("::1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("::/0").contains(ip("fe80::1")) && !c("::/0").contains(ip("10.0.0.1")));
        assert!(c("::1").contains(ip("::1")) && !c("::1").contains(ip("::2")));
        assert_eq!(c("2001:db8::1/128").to_string(), "2001:db8::1/128");
        // IPv4 clients on a dual-stack socket show as IPv4-mapped IPv6.
        assert!(c("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
        assert!(c("::ffff:10.0.0.0/104").contains(ip("10.1.1.1")));
        for bad in
            ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/-1", "x/8", "10.0.0.0/8/8"]
        {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_ranges_allow_only_their_clients_and_fail_closed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let key = "nginx.ingress.kubernetes.io/whitelist-source-range";
        let (o, _) = parse_options(&json!({key: "192.168.0.0/16, fd00::/8"}));
        assert!(o.source_allowed(ip("192.168.3.4")) && o.source_allowed(ip("fd12::1")));
        assert!(!o.source_allowed(ip("10.0.0.1")) && !o.source_allowed(ip("2001:db8::1")));
        assert!(Options::default().source_allowed(ip("203.0.113.1")));
        // A typo never opens the Ingress to everyone.
        let (o, notes) = parse_options(&json!({key: "192.168.0.0/16, 10.0.0.0/99"}));
        assert!(o.source_allowed(ip("192.168.0.1")) && !o.source_allowed(ip("10.0.0.1")));
        assert!(notes[0].1.contains("10.0.0.0/99"), "{notes:?}");
        let (o, notes) = parse_options(&json!({key: "everyone"}));
        assert!(!o.source_allowed(ip("192.168.0.1")) && notes.len() == 1);
        // The newer name wins over the older one, which is then reported.
        let (o, notes) =
            parse_options(&json!({key: "10.0.0.0/8", "nginx.ingress.kubernetes.io/allowlist-source-range": "::1"}));
        assert!(o.source_allowed(ip("::1")) && !o.source_allowed(ip("10.0.0.1")));
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn hostile_ingresses_are_problems_not_panics() {
        let odd = vec![
            ingress("x", "types", "not a time", json!("not a map"), json!({"rules": "not a list"})),
            ingress(
                "x",
                "shapes",
                "2024-01-01T00:00:00Z",
                json!({}),
                json!({"rules": [
                null, 5, {"host": 7}, {"host": "a.example:8080", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "10.0.0.1", "http": {"paths": [path("/", "Prefix", "s")]}},
                {"host": "[::1]"}, {"host": "foo.*.example"}, {"host": "*"}, {"host": "a..b"}, {"host": " a.example"},
                {"host": "UPPER.Example.", "http": {"paths": [
                    path("", "Prefix", "s"), path("relative", "Prefix", "s"), path("", "Exact", "s"),
                    path("/x", "Sometimes", "s"), {"path": "/nobackend"}, {"path": 5, "pathType": [], "backend": 3},
                    path("", "ImplementationSpecific", "implicit-root"),
                ]}},
                {"http": {"paths": "nope"}},
            ], "tls": [{"hosts": ["*.*.example", 5, ""], "secretName": "s"}, 7, {"hosts": "x"}], "defaultBackend": 5}),
            ),
        ];
        let t = build(&odd, &[Arc::new(json!(null)), Arc::new(json!({"spec": 1}))], &[Arc::new(json!([]))]);
        let r = reasons(&t);
        for want in [BAD_HOST, BAD_PATH, BAD_TLS, BAD_BACKEND] {
            assert!(r.contains(&want), "{want} in {:?}", t.problems());
        }
        let bad_hosts = t.problems().iter().filter(|p| p.reason == BAD_HOST).count();
        assert_eq!(bad_hosts, 8, "{:?}", t.problems());
        // The uppercase host is kept (lowercased) and its one valid path works.
        assert_eq!(to(&t, "upper.example", "/anything"), Some("implicit-root".into()));
        for host in ["", ":", "[", "[]", "]:80", ".", "..", "a.", ":80", "\u{e9}.example", "x".repeat(10_000).as_str()]
        {
            for p in ["", "/", "*", "//", "/\u{e9}", "%2F"] {
                let _ = t.route(host, p);
                let _ = t.tls_secret_for(host);
            }
        }
    }

    #[test]
    fn many_rules_build_and_route() {
        let rules: Vec<Value> = (0..2000)
            .map(|i| rule(&format!("h{i}.example"), (0..10).map(|j| path(&format!("/p{j}"), "Prefix", "s")).collect()))
            .collect();
        let t = one(json!({"rules": rules}));
        assert!(to(&t, "h1999.example", "/p9/x").is_some());
        assert!(to(&t, "h2000.example", "/p9").is_none());
        // A long path with many slashes is looked up once per distinct rule length.
        let long = "/a".repeat(50_000);
        assert!(to(&t, "h1.example", &long).is_none());
    }

    #[test]
    fn request_hosts_normalise_without_allocating_when_lowercase() {
        for (raw, want) in [
            ("a.example", "a.example"),
            ("A.Example:8080", "a.example"),
            ("a.example.", "a.example"),
            ("[2001:DB8::1]:443", "2001:db8::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("10.0.0.1:80", "10.0.0.1"),
        ] {
            assert_eq!(request_host(raw), want, "{raw}");
        }
        assert!(matches!(request_host("a.example:80"), Cow::Borrowed(_)));
        assert_eq!(wildcard_suffix("a.b.c"), Some("b.c"));
        assert_eq!(wildcard_suffix("com"), None);
        assert_eq!(wildcard_suffix(".com"), None);
    }
}
