//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded into
//! the JSON the rest of the API works on.
//!
//! kubectl 1.32+ sends its typed `create` generators' objects this way. The wire format is
//! the `k8s\0` magic, then a `runtime.Unknown` envelope (typeMeta, raw object bytes). The
//! object is decoded by a generic protobuf reader driven by `proto_schema.json`, a table of
//! field numbers, JSON names and types extracted from the upstream `generated.proto` files
//! by `tools/gen-proto-schema.py`. Upstream's special messages (Time, MicroTime, Duration,
//! IntOrString, Quantity, RawExtension, FieldsV1) become their JSON forms; empty strings and
//! zero timestamps are dropped, as Go's `omitempty` would.
//!
//! Hand-written rather than `k8s-pb` + prost: those types have no JSON mapping, and a
//! table-driven reader is a few hundred lines for every served kind at once.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: number, JSON name, kind (`opt`, `omit` = plain Go value with
/// `omitempty` whose zero is dropped, `inline` = embedded struct whose fields JSON puts in
/// the parent, `rep`, `map`) and type.
type Field = (u64, String, String, String);

fn schema() -> &'static HashMap<String, Vec<Field>> {
    static SCHEMA: OnceLock<HashMap<String, Vec<Field>>> = OnceLock::new();
    SCHEMA.get_or_init(|| serde_json::from_str(include_str!("proto_schema.json")).unwrap_or_default())
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("the protobuf body could not be decoded: {}", msg.into()))
}

/// A protobuf wire reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| bad("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wt) = (key >> 3, key & 7);
        let w = match wt {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| bad("fixed64"))?)),
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| bad("fixed32"))?)),
            other => return Err(bad(format!("unsupported wire type {other}"))),
        };
        Ok(Some((num, w)))
    }
}

/// Decodes a whole request body: envelope, then the object it carries.
pub fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf magic prefix"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, w)) = r.next()? {
        match (num, w) {
            (1, Wire::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, w)) = t.next()? {
                    if let Wire::Bytes(b) = w {
                        let s = String::from_utf8_lossy(b).into_owned();
                        if n == 1 {
                            api_version = s;
                        } else if n == 2 {
                            kind = s;
                        }
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
    let pkg = match group {
        "" => "core",
        "coordination.k8s.io" => "coordination",
        "storage.k8s.io" => "storage",
        "networking.k8s.io" => "networking",
        "discovery.k8s.io" => "discovery",
        "authentication.k8s.io" => "authentication",
        "authorization.k8s.io" => "authorization",
        "rbac.authorization.k8s.io" => "rbac",
        g => g,
    };
    // Options kinds (DeleteOptions, ...) are meta/v1 types, whatever group sends them.
    let message =
        [format!("k8s.io.api.{pkg}.{version}.{kind}"), format!("k8s.io.apimachinery.pkg.apis.meta.v1.{kind}")]
            .into_iter()
            .find(|m| schema().contains_key(m))
            .unwrap_or_default();
    if message.is_empty() {
        return Err(ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf for {api_version} {kind}"
        )));
    }
    let mut obj = decode_message(&message, raw, 0)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

fn rfc3339(seconds: i64, nanos: i64, micro: bool) -> Option<String> {
    let t = jiff::Timestamp::new(seconds, nanos as i32).ok()?;
    Some(if micro {
        t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
    } else {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    })
}

/// Go's `time.Duration.String()` for whole and fractional seconds.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (h, m) = (n / 3_600_000_000_000, (n / 60_000_000_000) % 60);
    let s = (n % 60_000_000_000) as f64 / 1e9;
    let secs = format!("{s}").trim_end_matches(".0").to_string();
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

/// Decodes the fields of `message` into JSON, handling upstream's special types.
fn decode_message(message: &str, bytes: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > 64 {
        return Err(bad("message nesting too deep"));
    }
    let fields = schema().get(message).ok_or_else(|| bad(format!("no schema for {message}")))?;
    let mut out = Map::new();
    let mut r = Reader::new(bytes);
    while let Some((num, w)) = r.next()? {
        let Some((_, name, kind, ty)) = fields.iter().find(|f| f.0 == num) else { continue };
        match kind.as_str() {
            "map" => {
                let Wire::Bytes(entry) = w else {
                    return Err(bad(format!("{message}.{name}: map entry is not length-delimited")));
                };
                let (kt, vt) = ty.split_once(',').ok_or_else(|| bad("bad map type"))?;
                let mut er = Reader::new(entry);
                let (mut k, mut v) = (Value::Null, Value::Null);
                while let Some((n, ew)) = er.next()? {
                    let t = if n == 1 { kt } else { vt };
                    let val = scalar_or_message(t, ew, depth)?;
                    if n == 1 { k = val } else { v = val }
                }
                let key = match k {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let m = out.entry(name.clone()).or_insert_with(|| json!({}));
                if v.is_null() {
                    v = if vt == "string" || vt == "bytes" { json!("") } else { json!({}) };
                }
                m[key] = v;
            }
            "rep" => {
                let list = out.entry(name.clone()).or_insert_with(|| json!([]));
                let arr = list.as_array_mut().ok_or_else(|| bad("repeated field is not a list"))?;
                match (w, is_packable(ty)) {
                    (Wire::Bytes(packed), true) => {
                        let mut pr = Reader::new(packed);
                        while pr.pos < packed.len() {
                            let v = match ty.as_str() {
                                "double" | "fixed64" | "sfixed64" => Wire::Fixed64(u64::from_le_bytes(
                                    pr.take(8)?.try_into().map_err(|_| bad("fixed64"))?,
                                )),
                                "float" | "fixed32" | "sfixed32" => Wire::Fixed32(u32::from_le_bytes(
                                    pr.take(4)?.try_into().map_err(|_| bad("fixed32"))?,
                                )),
                                _ => Wire::Varint(pr.varint()?),
                            };
                            arr.push(scalar_or_message(ty, v, depth)?);
                        }
                    }
                    (w, _) => arr.push(scalar_or_message(ty, w, depth)?),
                }
            }
            "inline" => {
                // An embedded Go struct: its fields belong to this object in JSON.
                if let Value::Object(fields) = scalar_or_message(ty, w, depth)? {
                    out.extend(fields);
                }
            }
            _ => {
                let v = scalar_or_message(ty, w, depth)?;
                let zero = v == json!(0) || v == json!(false) || v == json!(0.0);
                if v.is_null() || v == json!("") || (kind == "omit" && zero) {
                    out.remove(name);
                } else {
                    out.insert(name.clone(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn is_packable(ty: &str) -> bool {
    matches!(
        ty,
        "int32"
            | "int64"
            | "uint32"
            | "uint64"
            | "sint32"
            | "sint64"
            | "bool"
            | "double"
            | "float"
            | "fixed32"
            | "fixed64"
            | "sfixed32"
            | "sfixed64"
    )
}

fn scalar_or_message(ty: &str, w: Wire<'_>, depth: usize) -> Result<Value, ApiError> {
    Ok(match (ty, w) {
        ("string", Wire::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        ("bytes", Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ("bool", Wire::Varint(v)) => json!(v != 0),
        ("int32", Wire::Varint(v)) => json!(v as i32),
        ("int64", Wire::Varint(v)) => json!(v as i64),
        ("uint32", Wire::Varint(v)) => json!(v as u32),
        ("uint64", Wire::Varint(v)) => json!(v),
        ("sint32" | "sint64", Wire::Varint(v)) => json!(((v >> 1) as i64) ^ -((v & 1) as i64)),
        ("double", Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        ("float", Wire::Fixed32(v)) => json!(f32::from_bits(v)),
        ("fixed64" | "sfixed64", Wire::Fixed64(v)) => json!(v as i64),
        ("fixed32" | "sfixed32", Wire::Fixed32(v)) => json!(v as i32),
        (msg, Wire::Bytes(b)) => special_or_message(msg, b, depth)?,
        (t, _) => return Err(bad(format!("wire type does not match field type {t}"))),
    })
}

fn special_or_message(msg: &str, b: &[u8], depth: usize) -> Result<Value, ApiError> {
    let int_fields = |b: &[u8]| -> Result<HashMap<u64, i64>, ApiError> {
        let mut m = HashMap::new();
        let mut r = Reader::new(b);
        while let Some((n, w)) = r.next()? {
            if let Wire::Varint(v) = w {
                m.insert(n, v as i64);
            }
        }
        Ok(m)
    };
    let bytes_field = |b: &[u8], want: u64| -> Result<Vec<u8>, ApiError> {
        let mut r = Reader::new(b);
        while let Some((n, w)) = r.next()? {
            if let (true, Wire::Bytes(v)) = (n == want, w) {
                return Ok(v.to_vec());
            }
        }
        Ok(Vec::new())
    };
    match msg.strip_prefix("k8s.io.apimachinery.pkg.") {
        Some("apis.meta.v1.Time") | Some("apis.meta.v1.MicroTime") => {
            let f = int_fields(b)?;
            let (s, n) = (f.get(&1).copied().unwrap_or(0), f.get(&2).copied().unwrap_or(0));
            if s == 0 && n == 0 {
                return Ok(Value::Null);
            }
            Ok(rfc3339(s, n, msg.ends_with("MicroTime")).map(Value::String).unwrap_or(Value::Null))
        }
        Some("apis.meta.v1.Duration") => Ok(json!(go_duration(int_fields(b)?.get(&1).copied().unwrap_or(0)))),
        Some("util.intstr.IntOrString") => {
            let f = int_fields(b)?;
            if f.get(&1).copied().unwrap_or(0) == 1 {
                Ok(json!(String::from_utf8_lossy(&bytes_field(b, 3)?)))
            } else {
                Ok(json!(f.get(&2).copied().unwrap_or(0) as i32))
            }
        }
        Some("api.resource.Quantity") => Ok(json!(String::from_utf8_lossy(&bytes_field(b, 1)?))),
        Some("runtime.RawExtension") | Some("apis.meta.v1.FieldsV1") => {
            let raw = bytes_field(b, 1)?;
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&raw).map_err(|e| bad(format!("embedded object is not JSON: {e}")))
        }
        _ if schema().contains_key(msg) => decode_message(msg, b, depth + 1),
        _ => Err(bad(format!("no schema for {msg}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn field_varint(num: u64, v: u64, out: &mut Vec<u8>) {
        varint(num << 3, out);
        varint(v, out);
    }

    /// DeleteOptions as client-go sends them to a core resource (Helm's uninstall does).
    #[test]
    fn decodes_delete_options_sent_as_v1() {
        let mut opts = Vec::new();
        field_bytes(4, b"Background", &mut opts);
        let mut type_meta = Vec::new();
        field_bytes(1, b"v1", &mut type_meta);
        field_bytes(2, b"DeleteOptions", &mut type_meta);
        let mut body = MAGIC.to_vec();
        field_bytes(1, &type_meta, &mut body);
        field_bytes(2, &opts, &mut body);
        let v = decode_body(&body).unwrap();
        assert_eq!((v["kind"].as_str(), v["propagationPolicy"].as_str()), (Some("DeleteOptions"), Some("Background")));
    }

    /// A ConfigMap as kubectl 1.33 `create configmap` would encode it.
    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = Vec::new();
        field_bytes(1, b"settings", &mut meta);
        field_bytes(2, b"", &mut meta); // generateName: empty, dropped
        let mut ts = Vec::new();
        field_varint(1, 0, &mut ts);
        field_bytes(8, &ts, &mut meta); // creationTimestamp: zero, dropped
        let mut cm = Vec::new();
        field_bytes(1, &meta, &mut cm);
        let mut entry = Vec::new();
        field_bytes(1, b"mode", &mut entry);
        field_bytes(2, b"fast", &mut entry);
        field_bytes(2, &entry, &mut cm);
        let mut type_meta = Vec::new();
        field_bytes(1, b"v1", &mut type_meta);
        field_bytes(2, b"ConfigMap", &mut type_meta);
        let mut body = MAGIC.to_vec();
        field_bytes(1, &type_meta, &mut body);
        field_bytes(2, &cm, &mut body);
        let v = decode_body(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}})
        );
    }

    /// Go always encodes plain scalars; JSON omits the `omitempty` ones when zero but keeps
    /// pointer fields such as `replicas: 0`.
    #[test]
    fn zero_values_follow_go_json_tags() {
        let mut spec = Vec::new();
        field_varint(1, 0, &mut spec); // replicas: *int32, kept
        field_varint(5, 0, &mut spec); // minReadySeconds: int32 omitempty, dropped
        field_varint(7, 0, &mut spec); // paused: bool omitempty, dropped
        let v = decode_message("k8s.io.api.apps.v1.DeploymentSpec", &spec, 0).unwrap();
        assert_eq!(v, json!({"replicas": 0}));
    }

    /// `Volume` embeds `VolumeSource`: JSON has `emptyDir` beside `name`, not under
    /// `volumeSource`.
    #[test]
    fn embedded_structs_are_inlined() {
        let mut empty_dir = Vec::new();
        field_bytes(1, b"Memory", &mut empty_dir);
        let mut source = Vec::new();
        field_bytes(2, &empty_dir, &mut source); // VolumeSource.emptyDir
        let mut volume = Vec::new();
        field_bytes(1, b"cache", &mut volume);
        field_bytes(2, &source, &mut volume); // Volume.volumeSource (inline)
        let v = decode_message("k8s.io.api.core.v1.Volume", &volume, 0).unwrap();
        assert_eq!(v, json!({"name": "cache", "emptyDir": {"medium": "Memory"}}));
    }

    /// The `k8s\0` + `runtime.Unknown` envelope around an encoded object.
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = Vec::new();
        field_bytes(1, api_version.as_bytes(), &mut type_meta);
        field_bytes(2, kind.as_bytes(), &mut type_meta);
        let mut body = MAGIC.to_vec();
        field_bytes(1, &type_meta, &mut body);
        field_bytes(2, raw, &mut body);
        body
    }

    /// A TokenRequest as kubectl 1.33 `create token --audience a --duration 1h
    /// --bound-object-kind Pod --bound-object-name p --bound-object-uid u` encodes it.
    #[test]
    fn decodes_a_token_request() {
        let mut meta = Vec::new();
        field_bytes(8, &[], &mut meta); // creationTimestamp: zero, dropped
        let mut bound = Vec::new();
        field_bytes(1, b"Pod", &mut bound);
        field_bytes(2, b"", &mut bound); // apiVersion: empty, dropped
        field_bytes(3, b"p", &mut bound);
        field_bytes(4, b"u", &mut bound); // proto name `uID`, JSON `uid`
        let mut spec = Vec::new();
        field_bytes(1, b"a", &mut spec);
        field_bytes(3, &bound, &mut spec);
        field_varint(4, 3600, &mut spec);
        let mut tr = Vec::new();
        field_bytes(1, &meta, &mut tr);
        field_bytes(2, &spec, &mut tr);
        let v = decode_body(&envelope("authentication.k8s.io/v1", "TokenRequest", &tr)).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "metadata": {},
                "spec": {
                    "audiences": ["a"],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"kind": "Pod", "name": "p", "uid": "u"},
                },
            })
        );
    }

    /// A SelfSubjectAccessReview as `kubectl auth can-i get pods -n default` encodes it:
    /// Go writes every plain string and the non-pointer status too.
    #[test]
    fn decodes_a_self_subject_access_review() {
        let mut attrs = Vec::new();
        field_bytes(1, b"default", &mut attrs);
        field_bytes(2, b"get", &mut attrs);
        field_bytes(3, b"", &mut attrs); // group: core, empty, dropped
        field_bytes(4, b"", &mut attrs);
        field_bytes(5, b"pods", &mut attrs);
        field_bytes(6, b"", &mut attrs);
        field_bytes(7, b"", &mut attrs);
        let mut spec = Vec::new();
        field_bytes(1, &attrs, &mut spec);
        let mut status = Vec::new();
        field_varint(1, 0, &mut status); // allowed: plain bool without omitempty, kept
        field_bytes(2, b"", &mut status);
        field_bytes(3, b"", &mut status);
        field_varint(4, 0, &mut status); // denied: omitempty, dropped
        let mut review = Vec::new();
        field_bytes(1, &[], &mut review);
        field_bytes(2, &spec, &mut review);
        field_bytes(3, &status, &mut review);
        let v = decode_body(&envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", &review)).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": {"resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods"}},
                "status": {"allowed": false},
            })
        );
    }

    #[test]
    fn special_types() {
        let mut ios = Vec::new();
        field_varint(1, 1, &mut ios);
        field_bytes(3, b"25%", &mut ios);
        assert_eq!(
            special_or_message("k8s.io.apimachinery.pkg.util.intstr.IntOrString", &ios, 0).unwrap(),
            json!("25%")
        );
        let mut t = Vec::new();
        field_varint(1, 1_700_000_000, &mut t);
        assert_eq!(
            special_or_message("k8s.io.apimachinery.pkg.apis.meta.v1.Time", &t, 0).unwrap(),
            json!("2023-11-14T22:13:20Z")
        );
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert!(decode_body(b"not protobuf").is_err());
    }
}
