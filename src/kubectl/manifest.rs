//! Reads the objects named by `-f`: files, directories (`.yaml`, `.yml`, `.json`, with
//! `-R` recursively) and `-` for stdin, each possibly holding several YAML documents or a
//! `kind: List`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

fn is_manifest(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn collect_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                collect_files(&p, recursive, out)?;
            }
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses every document in `text`; `source` names it in errors.
pub fn parse_documents(text: &str, source: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("error parsing {source} (document {})", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
                out.extend(m.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            Value::Object(_) => out.push(v),
            _ => bail!("error parsing {source} (document {}): not an object", i + 1),
        }
    }
    Ok(out)
}

/// All objects from the `-f` arguments, in order.
pub fn read(files: &[String], recursive: bool) -> anyhow::Result<Vec<Value>> {
    if files.is_empty() {
        bail!("must specify -f with a file, a directory or - for stdin");
    }
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
            out.extend(parse_documents(&text, "stdin")?);
            continue;
        }
        let path = Path::new(f);
        let mut paths = Vec::new();
        if path.is_dir() {
            collect_files(path, recursive, &mut paths)?;
        } else {
            paths.push(path.to_path_buf());
        }
        for p in paths {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("the path {:?} does not exist or cannot be read", p.display()))?;
            out.extend(parse_documents(&text, &p.display().to_string())?);
        }
    }
    if out.is_empty() {
        bail!("no objects passed to the command");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_and_lists() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n";
        let objs = parse_documents(text, "t").unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["kind"], "Secret");
        assert!(parse_documents("- a\n", "t").is_err());
    }
}
