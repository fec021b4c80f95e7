//! Decoding YAML into a JSON value with a budget of values. YAML aliases replay their
//! anchor's whole subtree each time they appear, so a 200 KB body can stand for billions of
//! values (the "billion laughs"); counting as the values are made stops such a body after
//! [`super::http::MAX_BODY_NODES`] values, before it costs the server its memory.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Builds a [`Value`] and fails once more than `left` values have been made.
pub struct Budget<'a> {
    pub left: &'a Cell<usize>,
}

impl Budget<'_> {
    fn spend<E: Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(n) => {
                self.left.set(n);
                Ok(())
            }
            None => Err(E::custom(format!(
                "the body holds more than {} values (YAML aliases count each time they are used)",
                super::http::MAX_BODY_NODES
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        self.spend()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Null)
    }
    fn visit_none<E: Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Budget { left: self.left })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Budget { left: self.left })? {
            let key = match key {
                Value::String(s) => s,
                // YAML allows any key; JSON (and Kubernetes) only strings.
                other => other.to_string(),
            };
            let value = map.next_value_seed(Budget { left: self.left })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Decodes YAML text into a JSON value of at most `max_values` values.
pub fn yaml_value(body: &[u8], max_values: usize) -> Result<Value, serde_yaml::Error> {
    let left = Cell::new(max_values);
    Budget { left: &left }.deserialize(serde_yaml::Deserializer::from_slice(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_count_each_time_they_are_used() {
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n";
        assert!(yaml_value(laughs.as_bytes(), 5_000).is_err());
        assert!(yaml_value(laughs.as_bytes(), 20_000).is_ok());
        let v = yaml_value(b"k: [1, true, null, 'x', {y: 2.5}]\n", 100).unwrap();
        assert_eq!(v, serde_json::json!({"k": [1, true, null, "x", {"y": 2.5}]}));
        assert_eq!(yaml_value(b"1: a\n", 10).unwrap(), serde_json::json!({"1": "a"}));
    }
}
