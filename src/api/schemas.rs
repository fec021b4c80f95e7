//! The JSON schemas of the kinds we serve, for `/openapi`: generated from `k8s-openapi`'s
//! `schemars` implementations by a test (`schemas_are_current`) and carried in the binary
//! as zstd-compressed JSON.
//!
//! Why not generate them at run time: schemars' generator, instantiated for every kind, was
//! 1.3 MB of machine code on aarch64 (6 % of the binary) for documents that kubectl fetches
//! once and caches on disk; the compressed schemas are a small fraction of that. The test
//! fails when the stored schemas differ from what the linked `k8s-openapi` generates, and
//! says how to write them again.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// `{"v2": definitions, "v3": definitions}` for every served kind and all they reference:
/// Swagger 2.0's (draft-07 schemas, `#/definitions/` references) and OpenAPI 3's
/// (`#/components/schemas/` references). Both halves are parsed per request and one is
/// dropped: documents are rare (kubectl caches them) and nothing stays in memory.
static STORED: &[u8] = include_bytes!("openapi_schemas.json.zst");

/// Every stored definition, for OpenAPI 3 (`v3`) or Swagger 2.0.
pub fn load(v3: bool) -> Result<Map<String, Value>, String> {
    let json =
        zstd::decode_all(STORED).map_err(|e| format!("the stored OpenAPI schemas cannot be decompressed: {e}"))?;
    let mut both: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|e| format!("the stored OpenAPI schemas are not JSON: {e}"))?;
    match both.remove(if v3 { "v3" } else { "v2" }) {
        Some(Value::Object(defs)) => Ok(defs),
        _ => Err("the stored OpenAPI schemas lack a version".to_string()),
    }
}

/// The definitions named in `roots` and every one they reference, directly or not (what
/// a generator given only those kinds would have produced).
pub fn closure(all: &Map<String, Value>, roots: &[String]) -> Map<String, Value> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(name) = todo.pop() {
        let Some(def) = all.get(&name) else { continue };
        if seen.insert(name) {
            references(def, &mut todo);
        }
    }
    seen.into_iter().filter_map(|n| all.get(&n).map(|d| (n, d.clone()))).collect()
}

/// Adds the names `v`'s `$ref`s point at to `out` (the part after the last `/`).
fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.rsplit('/').next().unwrap_or(r).to_string()),
                    _ => references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::schemars::generate::SchemaSettings;
    use serde_json::json;

    use super::*;
    use crate::api::kinds;
    use crate::api::resources::RESOURCES;

    /// What `k8s-openapi` generates for `kinds`, as the stored file holds it.
    fn generate(kinds: &[&str], v3: bool) -> Map<String, Value> {
        let mut settings = if v3 { SchemaSettings::openapi3() } else { SchemaSettings::draft07() };
        settings.meta_schema = None;
        let mut generator = settings.into_generator();
        for kind in kinds {
            kinds::add_schema(kind, &mut generator);
        }
        generator.take_definitions(true)
    }

    fn all_kinds() -> Vec<&'static str> {
        RESOURCES.iter().map(|r| r.kind).collect()
    }

    /// Fails when `k8s-openapi` changed (or a kind was added) without the stored schemas
    /// being written again: `BRAMBLE_WRITE_SCHEMAS=1 cargo test --lib schemas_are_current`.
    #[test]
    fn schemas_are_current() {
        let kinds = all_kinds();
        let fresh = json!({"v2": generate(&kinds, false), "v3": generate(&kinds, true)});
        if std::env::var_os("BRAMBLE_WRITE_SCHEMAS").is_some() {
            let text = serde_json::to_vec(&fresh).unwrap();
            let packed = zstd::encode_all(&text[..], 19).unwrap();
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi_schemas.json.zst");
            std::fs::write(path, packed).unwrap();
            return;
        }
        let stored = json!({"v2": load(false).unwrap(), "v3": load(true).unwrap()});
        assert!(
            stored == fresh,
            "src/api/openapi_schemas.json.zst is not what k8s-openapi generates: write it again with \
             BRAMBLE_WRITE_SCHEMAS=1 cargo test --lib schemas_are_current"
        );
    }

    /// Each group-version's document holds exactly what generating only its kinds would:
    /// the closure over `$ref`s loses nothing and adds nothing.
    #[test]
    fn closure_matches_generating_only_those_kinds() {
        for v3 in [false, true] {
            let all = load(v3).unwrap();
            for (group, version) in crate::api::resources::group_versions() {
                let rs: Vec<_> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
                let kinds: Vec<&str> = rs.iter().map(|r| r.kind).collect();
                let expected = generate(&kinds, v3);
                let roots: Vec<String> = rs.iter().map(|r| crate::api::openapi::def_name(r)).collect();
                let got = closure(&all, &roots);
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    expected.keys().collect::<Vec<_>>(),
                    "group {group:?} v3 {v3}"
                );
                assert!(got == expected, "group {group:?} v3 {v3}: definitions differ");
            }
        }
    }

    #[test]
    fn closure_skips_unknown_roots_and_follows_refs() {
        let all: Map<String, Value> = serde_json::from_value(json!({
            "a": {"properties": {"b": {"$ref": "#/definitions/b"}}},
            "b": {"items": [{"$ref": "#/components/schemas/c"}]},
            "c": {"$ref": "#/definitions/a"},
            "d": {},
        }))
        .unwrap();
        let got = closure(&all, &["a".to_string(), "nope".to_string()]);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
