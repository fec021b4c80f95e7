//! Stored objects answered as bytes. The store keeps an object's JSON without its
//! `metadata.resourceVersion` (the revision is the store's to say); a watch that needs no
//! selector or Table sends each object as it is stored, with that one field put in, rather
//! than parsing it into a `Value` and writing it out again. For the controllers' watch of
//! every pod that parse and write were a tenth of the server's CPU per pod create.

/// Appends `raw` (a stored object) to `out` with `"resourceVersion":"<rev>"` first in its
/// `metadata`. False, with `out` unchanged, when `raw` is not an object whose `metadata`
/// is an object without a `resourceVersion`: the caller then parses it.
pub fn write_with_revision(out: &mut Vec<u8>, raw: &[u8], rev: u64) -> bool {
    let Some((open, empty)) = metadata_opening(raw) else { return false };
    out.reserve(raw.len() + 40);
    out.extend_from_slice(&raw[..open]);
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(rev.to_string().as_bytes());
    out.extend_from_slice(if empty { b"\"" } else { b"\"," });
    out.extend_from_slice(&raw[open..]);
    true
}

/// Where the top-level `metadata` object's contents start (just after its `{`), and
/// whether it is empty.
fn metadata_opening(raw: &[u8]) -> Option<(usize, bool)> {
    let mut s = Scanner { raw, pos: 0 };
    s.expect(b'{')?;
    loop {
        s.skip_ws();
        let key = s.string()?;
        s.skip_ws();
        s.expect(b':')?;
        s.skip_ws();
        if key == b"metadata" {
            s.expect(b'{')?;
            let open = s.pos;
            s.skip_ws();
            if s.peek()? == b'}' {
                return Some((open, true));
            }
            // Refuse an object that already carries the field: it would be sent twice.
            loop {
                s.skip_ws();
                if s.string()? == b"resourceVersion" {
                    return None;
                }
                s.skip_ws();
                s.expect(b':')?;
                s.skip_ws();
                s.value()?;
                s.skip_ws();
                match s.next()? {
                    b',' => continue,
                    b'}' => return Some((open, false)),
                    _ => return None,
                }
            }
        }
        s.value()?;
        s.skip_ws();
        match s.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// A forward-only walk over JSON that checks only what finding a key needs.
struct Scanner<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.raw.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    /// A string, as its raw (still escaped) contents.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.pos;
        loop {
            match self.next()? {
                b'"' => return Some(&self.raw[start..self.pos - 1]),
                b'\\' => self.pos += 1,
                _ => {}
            }
        }
    }

    /// Skips one value of any kind.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                    self.pos += 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
            }
            _ => {
                let start = self.pos;
                while !matches!(self.peek(), None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')) {
                    self.pos += 1;
                }
                (self.pos > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn stamped(raw: &str, rev: u64) -> Option<Value> {
        let mut out = Vec::new();
        write_with_revision(&mut out, raw.as_bytes(), rev).then(|| serde_json::from_slice(&out).unwrap_or(Value::Null))
    }

    #[test]
    fn the_revision_goes_into_metadata_whatever_comes_before() {
        let raw = r#"{"apiVersion":"v1","data":{"k":"{\"metadata\":{}}","e":"\\"},"kind":"ConfigMap","metadata":{"name":"a","labels":{"x":"y"}},"n":[1,{"a":[]}],"t":true}"#;
        let want: Value = {
            let mut v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
            v["metadata"]["resourceVersion"] = json!("42");
            v
        };
        assert_eq!(stamped(raw, 42), Some(want));
        assert_eq!(
            stamped(r#"{ "kind" : "X" , "metadata" : { } }"#, 7),
            Some(json!({"kind": "X", "metadata": {"resourceVersion": "7"}}))
        );
    }

    #[test]
    fn anything_else_is_left_to_the_parser() {
        for raw in [
            r#"{"metadata":{"name":"a","resourceVersion":"3"}}"#,
            r#"{"kind":"X"}"#,
            r#"{"metadata":"a"}"#,
            r#"["metadata"]"#,
            r#"{"metadata":{"name":"a""#,
            r#"{"kind":"X"#,
            "",
        ] {
            let mut out = b"keep".to_vec();
            assert!(!write_with_revision(&mut out, raw.as_bytes(), 1), "{raw}");
            assert_eq!(out, b"keep");
        }
    }
}
