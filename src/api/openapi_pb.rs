//! `/openapi/v2` in protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
//! the gnostic `openapi.v2.Document` encoding. kubectl up to 1.29 asks for the v2 document
//! only in this form (for `apply`'s strategic merge patches, client-side validation and
//! its check whether the server validates fields itself).
//!
//! Hand-written: the encoding is a fixed walk of a Swagger 2.0 JSON document (ours, from
//! `openapi.rs`) onto gnostic's field numbers; generating prost types for the whole gnostic
//! schema would cost a build-time protoc step for a few dozen fields. Vendor extensions,
//! defaults and enums travel as YAML text, which JSON already is.

use serde_json::Value;

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }

    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u64, v: &Value) {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            self.bytes(field, s.as_bytes());
        }
    }

    fn strings(&mut self, field: u64, v: &Value) {
        match v {
            Value::String(s) => self.bytes(field, s.as_bytes()),
            Value::Array(a) => a.iter().filter_map(Value::as_str).for_each(|s| self.bytes(field, s.as_bytes())),
            _ => {}
        }
    }

    fn message(&mut self, field: u64, m: Msg) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u64, v: &Value) {
        if v.as_bool() == Some(true) {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int(&mut self, field: u64, v: &Value) {
        if let Some(n) = v.as_i64() {
            self.key(field, 0);
            self.varint(n as u64);
        }
    }

    fn double(&mut self, field: u64, v: &Value) {
        if let Some(n) = v.as_f64() {
            self.key(field, 1);
            self.0.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// An `Any` carrying `v` as YAML (JSON text is YAML).
    fn any(&mut self, field: u64, v: &Value) {
        let mut a = Msg::default();
        a.bytes(2, v.to_string().as_bytes());
        self.message(field, a);
    }

    /// `x-...` keys as repeated `NamedAny`.
    fn extensions(&mut self, field: u64, obj: &Value) {
        for (k, v) in obj.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Msg::default();
            named.bytes(1, k.as_bytes());
            named.any(2, v);
            self.message(field, named);
        }
    }
}

fn schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, &s["$ref"]);
    m.string(2, &s["format"]);
    m.string(3, &s["title"]);
    m.string(4, &s["description"]);
    if let Some(d) = s.get("default") {
        m.any(5, d);
    }
    m.double(6, &s["multipleOf"]);
    m.double(7, &s["maximum"]);
    m.boolean(8, &s["exclusiveMaximum"]);
    m.double(9, &s["minimum"]);
    m.boolean(10, &s["exclusiveMinimum"]);
    m.int(11, &s["maxLength"]);
    m.int(12, &s["minLength"]);
    m.string(13, &s["pattern"]);
    m.int(14, &s["maxItems"]);
    m.int(15, &s["minItems"]);
    m.boolean(16, &s["uniqueItems"]);
    m.int(17, &s["maxProperties"]);
    m.int(18, &s["minProperties"]);
    m.strings(19, &s["required"]);
    for e in s["enum"].as_array().into_iter().flatten() {
        m.any(20, e);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Msg::default();
            item.boolean(2, &Value::Bool(*b));
            if !*b {
                // proto3 drops a false bool; an explicit zero keeps the oneof set.
                item.key(2, 0);
                item.varint(0);
            }
            m.message(21, item);
        }
        Some(ap @ Value::Object(_)) => {
            let mut item = Msg::default();
            item.message(1, schema(ap));
            m.message(21, item);
        }
        _ => {}
    }
    if s.get("type").is_some() {
        let mut t = Msg::default();
        t.strings(1, &s["type"]);
        m.message(22, t);
    }
    match s.get("items") {
        Some(Value::Array(items)) => {
            let mut i = Msg::default();
            items.iter().for_each(|x| i.message(1, schema(x)));
            m.message(23, i);
        }
        Some(item @ Value::Object(_)) => {
            let mut i = Msg::default();
            i.message(1, schema(item));
            m.message(23, i);
        }
        _ => {}
    }
    for a in s["allOf"].as_array().into_iter().flatten() {
        m.message(24, schema(a));
    }
    if let Some(props) = s["properties"].as_object() {
        let mut p = Msg::default();
        for (name, v) in props {
            let mut named = Msg::default();
            named.bytes(1, name.as_bytes());
            named.message(2, schema(v));
            p.message(1, named);
        }
        m.message(25, p);
    }
    m.boolean(27, &s["readOnly"]);
    if let Some(e) = s.get("example") {
        m.any(30, e);
    }
    m.extensions(31, s);
    m
}

fn parameter(p: &Value) -> Msg {
    let mut param = Msg::default();
    if p["in"] == "body" {
        let mut body = Msg::default();
        body.string(1, &p["description"]);
        body.string(2, &p["name"]);
        body.string(3, &p["in"]);
        body.boolean(4, &p["required"]);
        body.message(5, schema(&p["schema"]));
        param.message(1, body);
    } else {
        // Query (3) and path (4) sub-schemas share their first fields' numbering.
        let mut sub = Msg::default();
        sub.boolean(1, &p["required"]);
        sub.string(2, &p["in"]);
        sub.string(3, &p["description"]);
        sub.string(4, &p["name"]);
        let which = if p["in"] == "path" {
            sub.string(5, &p["type"]);
            4
        } else {
            sub.boolean(5, &p["allowEmptyValue"]);
            sub.string(6, &p["type"]);
            3
        };
        let mut non_body = Msg::default();
        non_body.message(which, sub);
        param.message(2, non_body);
    }
    let mut item = Msg::default();
    item.message(1, param);
    item
}

fn operation(op: &Value) -> Msg {
    let mut m = Msg::default();
    m.strings(1, &op["tags"]);
    m.string(2, &op["summary"]);
    m.string(3, &op["description"]);
    m.string(5, &op["operationId"]);
    m.strings(6, &op["produces"]);
    m.strings(7, &op["consumes"]);
    for p in op["parameters"].as_array().into_iter().flatten() {
        m.message(8, parameter(p));
    }
    if let Some(responses) = op["responses"].as_object() {
        let mut rs = Msg::default();
        for (code, r) in responses {
            let mut resp = Msg::default();
            resp.string(1, &r["description"]);
            if r.get("schema").is_some() {
                let mut item = Msg::default();
                item.message(1, schema(&r["schema"]));
                resp.message(2, item);
            }
            let mut value = Msg::default();
            value.message(1, resp);
            let mut named = Msg::default();
            named.bytes(1, code.as_bytes());
            named.message(2, value);
            rs.message(1, named);
        }
        m.message(9, rs);
    }
    m.extensions(13, op);
    m
}

/// Encodes a Swagger 2.0 document as a gnostic `openapi.v2.Document`.
pub fn encode(doc: &Value) -> Vec<u8> {
    let mut d = Msg::default();
    d.string(1, &doc["swagger"]);
    let mut info = Msg::default();
    info.string(1, &doc["info"]["title"]);
    info.string(2, &doc["info"]["version"]);
    d.message(2, info);
    let mut paths = Msg::default();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut pi = Msg::default();
        for (field, verb) in [(2, "get"), (3, "put"), (4, "post"), (5, "delete"), (8, "patch")] {
            if let Some(op) = item.get(verb) {
                pi.message(field, operation(op));
            }
        }
        let mut named = Msg::default();
        named.bytes(1, path.as_bytes());
        named.message(2, pi);
        paths.message(2, named);
    }
    d.message(8, paths);
    let mut defs = Msg::default();
    for (name, s) in doc["definitions"].as_object().into_iter().flatten() {
        let mut named = Msg::default();
        named.bytes(1, name.as_bytes());
        named.message(2, schema(s));
        defs.message(1, named);
    }
    d.message(9, defs);
    d.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_definitions_with_extensions() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1"}, "paths": {},
            "definitions": {"io.k8s.api.core.v1.ConfigMap": {"type": "object",
                "properties": {"data": {"type": "object", "additionalProperties": {"type": "string"}}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}]}}});
        let pb = encode(&doc);
        // Document.swagger = "2.0" comes first.
        assert_eq!(&pb[..5], &[0x0a, 3, b'2', b'.', b'0']);
        let text = String::from_utf8_lossy(&pb);
        assert!(text.contains("io.k8s.api.core.v1.ConfigMap"));
        assert!(text.contains("x-kubernetes-group-version-kind"));
        assert!(text.contains(r#""kind":"ConfigMap""#));
    }
}
