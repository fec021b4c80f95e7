//! kubectl's JSONPath templates (`-o jsonpath='{.items[*].metadata.name}'`): text with
//! `{...}` actions holding paths (`.a.b`, `['key.with.dots']`, `[0]`, `[-1]`, `[*]`,
//! `[?(@.type=="Ready")]`), `{range EXPR}...{end}` and `{"literal\n"}`.
//!
//! Hand-written: the JSONPath crates implement RFC 9535 (`$.a.b`), not kubectl's template
//! language with its range blocks and printing rules.

use anyhow::{anyhow, bail};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter { path: Vec<Step>, equal: bool, value: Value },
}

#[derive(Debug)]
enum Node {
    Text(String),
    Path(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

fn parse_path(src: &str) -> anyhow::Result<Vec<Step>> {
    let s = src.trim();
    let s = s.strip_prefix('$').or_else(|| s.strip_prefix('@')).unwrap_or(s);
    let b = s.as_bytes();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                if j > start {
                    steps.push(Step::Field(s[start..j].to_string()));
                }
                i = j;
            }
            b'[' => {
                let close = matching_bracket(s, i).ok_or_else(|| anyhow!("unclosed [ in {src:?}"))?;
                steps.push(parse_index(&s[i + 1..close], src)?);
                i = close + 1;
            }
            _ => {
                let start = i;
                while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    i += 1;
                }
                steps.push(Step::Field(s[start..i].to_string()));
            }
        }
    }
    Ok(steps)
}

fn matching_bracket(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in s[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

fn literal(s: &str) -> anyhow::Result<Value> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Ok(Value::String(inner.to_string()));
    }
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Ok(Value::String(inner.to_string()));
    }
    serde_json::from_str(s).map_err(|_| anyhow!("{s:?} is not a literal (quote strings)"))
}

fn parse_index(inner: &str, src: &str) -> anyhow::Result<Step> {
    let inner = inner.trim();
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        let (lhs, rhs, equal) = if let Some((l, r)) = filter.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = filter.split_once("!=") {
            (l, r, false)
        } else {
            bail!("unsupported filter {inner:?} in {src:?}: use ?(@.field==\"value\") or !=");
        };
        return Ok(Step::Filter { path: parse_path(lhs)?, equal, value: literal(rhs)? });
    }
    if inner.starts_with('\'') || inner.starts_with('"') {
        return match literal(inner)? {
            Value::String(k) => Ok(Step::Field(k)),
            _ => bail!("bad key {inner:?} in {src:?}"),
        };
    }
    inner.parse::<i64>().map(Step::Index).map_err(|_| anyhow!("unsupported index [{inner}] in {src:?}"))
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")
}

impl Template {
    /// Parses a template; text without any `{` is treated as one path, as kubectl does.
    pub fn parse(src: &str) -> anyhow::Result<Template> {
        let src = if src.contains('{') { src.to_string() } else { format!("{{{src}}}") };
        let mut stack: Vec<(Vec<Step>, Vec<Node>)> = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut rest = src.as_str();
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                nodes.push(Node::Text(unescape(rest)));
                break;
            };
            if open > 0 {
                nodes.push(Node::Text(unescape(&rest[..open])));
            }
            let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| anyhow!("unclosed {{ in template"))?;
            let action = rest[open + 1..close].trim();
            rest = &rest[close + 1..];
            if let Some(expr) = action.strip_prefix("range ") {
                stack.push((parse_path(expr)?, std::mem::take(&mut nodes)));
            } else if action == "end" {
                let (path, outer) = stack.pop().ok_or_else(|| anyhow!("{{end}} without {{range}}"))?;
                let body = std::mem::replace(&mut nodes, outer);
                nodes.push(Node::Range(path, body));
            } else if action.starts_with('"') || action.starts_with('\'') {
                match literal(action)? {
                    Value::String(s) => nodes.push(Node::Text(unescape(&s))),
                    other => nodes.push(Node::Text(other.to_string())),
                }
            } else {
                nodes.push(Node::Path(parse_path(action)?));
            }
        }
        if !stack.is_empty() {
            bail!("{{range}} without {{end}}");
        }
        Ok(Template { nodes })
    }

    /// Renders the template against `data`.
    pub fn render(&self, data: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, data, &mut out);
        out
    }
}

fn render_nodes(nodes: &[Node], cur: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => {
                let found = select(cur, p);
                let printed: Vec<String> = found.iter().map(|v| print_value(v)).collect();
                out.push_str(&printed.join(" "));
            }
            Node::Range(p, body) => {
                for item in select(cur, p) {
                    render_nodes(body, item, out);
                }
            }
        }
    }
}

fn print_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn select<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut cur = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                        next.extend(usize::try_from(idx).ok().and_then(|i| a.get(i)));
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter { path, equal, value } => {
                    for item in v.as_array().into_iter().flatten() {
                        let hit = select(item, path).first().is_some_and(|found| *found == value);
                        if hit == *equal {
                            next.push(item);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v)
    }

    #[test]
    fn paths_ranges_and_filters() {
        let list = json!({"items": [
            {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}},
             "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]}},
            {"metadata": {"name": "b"}, "spec": {"replicas": 3}}
        ]});
        assert_eq!(render("{.items[*].metadata.name}", &list), "a b");
        assert_eq!(render("{.items[0].metadata.labels['app.kubernetes.io/name']}", &list), "x");
        assert_eq!(render("{.items[-1].spec.replicas}", &list), "3");
        assert_eq!(render("{range .items[*]}{.metadata.name}{\"\\n\"}{end}", &list), "a\nb\n");
        assert_eq!(render("{.items[0].status.conditions[?(@.type==\"Ready\")].status}", &list), "True");
        assert_eq!(render("name={.items[1].metadata.name}", &list), "name=b");
        assert_eq!(render(".items[1].spec", &list), "{\"replicas\":3}");
        assert!(Template::parse("{range .items[*]}").is_err());
    }
}
