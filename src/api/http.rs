//! Request and response plumbing shared by the handlers: bodies with a size limit, content
//! negotiation, query strings, and JSON responses.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::status::ApiError;

/// Largest request body accepted (upstream's limit is 3 MiB too).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The response body type every handler returns.
pub type Body = BoxBody<Bytes, Infallible>;

/// The request body every handler reads: a connection's body, or an in-process caller's
/// bytes (see [`super::Api::handle_local`]).
pub type RequestBody = BoxBody<Bytes, hyper::Error>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON response with `code`.
pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    json_bytes_response(code, serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A response with JSON already serialized.
pub fn json_bytes_response(code: u16, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header("content-type", "application/json")
        .body(full(bytes))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A 200 response with a body in `content_type`.
pub fn bytes_response(content_type: &str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// The Status response of an error (with `Retry-After` when it says when to retry).
pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(secs) = e.retry_after() {
        r.headers_mut().insert("retry-after", secs.into());
    }
    r
}

/// Decoded query parameters (last one wins, as upstream for scalar options).
#[derive(Default, Debug)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.insert(decode(k), decode(v));
        }
        Query(m)
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// A boolean parameter (Go's `strconv.ParseBool` spellings; present and empty is true).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | "" | "t" | "T" | "TRUE" | "True"))
    }
    pub fn dry_run(&self) -> bool {
        self.get("dryRun").is_some_and(|v| v == "All")
    }
}

/// The longest a watch runs before the server ends it (upstream's `--min-request-timeout`).
pub const MAX_WATCH_SECONDS: u64 = 1800;

/// Refuses query parameters upstream refuses, with 400 and what is allowed: a typo in
/// `dryRun` must never become a real write.
pub fn check_query(q: &Query) -> Result<(), ApiError> {
    let one_of = |key: &str, allowed: &[&str]| -> Result<(), ApiError> {
        match q.get(key) {
            Some(v) if !allowed.contains(&v) => Err(ApiError::bad_request(format!(
                "{key}: Unsupported value: \"{v}\": supported values: {}",
                allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(()),
        }
    };
    one_of("dryRun", &["All"])?;
    one_of("fieldValidation", &["Ignore", "Warn", "Strict", ""])?;
    one_of("resourceVersionMatch", &["Exact", "NotOlderThan", ""])?;
    for key in ["watch", "allowWatchBookmarks", "sendInitialEvents", "force"] {
        if let Some(v) = q.get(key)
            && !matches!(
                v,
                "" | "1" | "t" | "T" | "true" | "TRUE" | "True" | "0" | "f" | "F" | "false" | "FALSE" | "False"
            )
        {
            return Err(ApiError::bad_request(format!("{key}: invalid value \"{v}\": must be true or false")));
        }
    }
    for key in ["timeoutSeconds", "limit", "gracePeriodSeconds"] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty())
            && v.parse::<i64>().is_err()
        {
            return Err(ApiError::bad_request(format!("{key}: invalid value \"{v}\": must be a whole number")));
        }
    }
    for key in ["timeoutSeconds", "limit"] {
        if q.get(key).and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n < 0) {
            return Err(ApiError::bad_request(format!("{key}: must be greater than or equal to 0")));
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`]. An oversized body is still
/// read (and dropped, up to a bound) so the client gets the 413 Status rather than a reset
/// connection in the middle of its upload.
pub async fn read_body(req: Request<RequestBody>) -> Result<(http::request::Parts, Bytes), ApiError> {
    read_body_limited(req, MAX_BODY_BYTES).await
}

/// Reads the whole body, refusing more than `limit` bytes (see [`read_body`]).
pub async fn read_body_limited(
    req: Request<RequestBody>,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let (parts, mut body) = req.into_parts();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok((parts, buf.freeze()))
}

/// The Content-Type of a request, without parameters; JSON when absent.
pub fn content_type(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "application/json".into())
}

/// Deepest nesting a JSON or YAML body may have: objects are far shallower, and every walk
/// over a decoded body (defaults, unknown fields, patches) recurses.
pub const MAX_BODY_DEPTH: usize = 100;
/// Most values (scalars, lists, maps) one body may hold.
pub const MAX_BODY_NODES: usize = 500_000;

/// Refuses a body nested deeper than [`MAX_BODY_DEPTH`] or with more than
/// [`MAX_BODY_NODES`] values, in one linear pass before any parser sees it. For YAML the
/// count is an upper bound: flow brackets, block indentation levels and `- ` items nest, and
/// every separator may start a value. Quoted text and comments do not count.
pub fn check_body_shape(body: &[u8], yaml: bool) -> Result<(), ApiError> {
    let (depth, nodes) = if yaml { yaml_shape(body) } else { json_shape(body) };
    if depth > MAX_BODY_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the body nests {depth} levels deep: the most allowed is {MAX_BODY_DEPTH}"
        )));
    }
    if nodes > MAX_BODY_NODES {
        return Err(ApiError::too_large_message(format!(
            "the body holds more than {MAX_BODY_NODES} values: split it into several objects"
        )));
    }
    Ok(())
}

/// (deepest nesting, values) of JSON text, skipping strings.
fn json_shape(body: &[u8]) -> (usize, usize) {
    let (mut depth, mut max, mut nodes) = (0usize, 0usize, 1usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' | b':' => nodes += 1,
            _ => {}
        }
    }
    (max, nodes)
}

/// (deepest nesting, values) of YAML text, an upper bound (see [`check_body_shape`]).
fn yaml_shape(body: &[u8]) -> (usize, usize) {
    let (mut max, mut nodes) = (0usize, 1usize);
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let indent = line.iter().take_while(|b| **b == b' ').count();
        let rest = &line[indent..];
        if flow == 0 && !rest.is_empty() && rest[0] != b'#' {
            while indents.last().is_some_and(|top| *top >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        // `- - - x` nests a sequence per dash on one line.
        let dashes = rest.chunks(2).take_while(|c| c == b"- " || c == b"-").count();
        let (mut quote, mut line_max) = (None::<u8>, flow);
        for &b in rest {
            match (quote, b) {
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(b),
                (None, b'#') => break,
                (None, b'[' | b'{') => {
                    flow += 1;
                    line_max = line_max.max(flow);
                }
                (None, b']' | b'}') => flow = flow.saturating_sub(1),
                (None, b',' | b':' | b'-' | b'&' | b'*') => nodes += 1,
                _ => {}
            }
        }
        max = max.max(indents.len() + dashes + line_max);
    }
    (max, nodes)
}

/// Decodes a JSON or YAML body into a value, after [`check_body_shape`].
pub fn decode_body(ct: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty: send the object as JSON or YAML"));
    }
    let yaml = matches!(ct, "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml");
    if ct != "application/vnd.kubernetes.protobuf" {
        check_body_shape(body, yaml)?;
    }
    match ct {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml" => {
            super::bounded::yaml_value(body, MAX_BODY_NODES)
                .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))
        }
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode_body(body),
        _ => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&limit=5"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("limit"), Some("5"));
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn query_parameters_are_checked_as_upstream_checks_them() {
        for bad in [
            "dryRun=all",
            "dryRun=true",
            "fieldValidation=strict",
            "resourceVersionMatch=exact",
            "watch=yes",
            "timeoutSeconds=-1",
            "timeoutSeconds=soon",
            "limit=-5",
        ] {
            assert_eq!(check_query(&Query::parse(Some(bad))).unwrap_err().code, 400, "{bad}");
        }
        for good in [
            "dryRun=All",
            "fieldValidation=Strict",
            "watch=1",
            "watch=false",
            "timeoutSeconds=30&limit=500",
            "resourceVersionMatch=NotOlderThan&resourceVersion=5",
            "",
        ] {
            assert!(check_query(&Query::parse(Some(good))).is_ok(), "{good}");
        }
    }

    #[test]
    fn deep_or_huge_bodies_are_refused_before_parsing() {
        let deep_json = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert_eq!(decode_body("application/json", deep_json.as_bytes()).unwrap_err().code, 400);
        let ok_json = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(decode_body("application/json", ok_json.as_bytes()).is_ok());
        assert!(decode_body("application/json", br#"{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"]"}"#).is_ok(), "brackets in strings do not nest");
        let deep_flow = format!("a: {}{}", "[".repeat(150), "]".repeat(150));
        assert_eq!(decode_body("application/yaml", deep_flow.as_bytes()).unwrap_err().code, 400);
        let mut deep_block = String::new();
        for i in 0..120 {
            deep_block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert_eq!(decode_body("application/yaml", deep_block.as_bytes()).unwrap_err().code, 400);
        let dashes = format!("{}x", "- ".repeat(150));
        assert_eq!(decode_body("application/yaml", dashes.as_bytes()).unwrap_err().code, 400);
        let many = format!("[{}0]", "0,".repeat(MAX_BODY_NODES));
        assert_eq!(decode_body("application/json", many.as_bytes()).unwrap_err().code, 413);
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p # a comment: [[[\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: 'x:1'\n    command: [\"sh\", \"-c\", \"echo [[[\"]\n";
        let v = decode_body("application/yaml", pod.as_bytes()).unwrap();
        assert_eq!(v["spec"]["containers"][0]["command"][2], "echo [[[");
    }
}
