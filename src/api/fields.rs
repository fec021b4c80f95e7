//! Formats of single field values, as upstream validates them: quantities, config keys,
//! paths inside a volume, environment variable and port names. Each check is a pure
//! function so the API (422 with the field) and the agent (refusing what slipped past an
//! older server) agree on what is valid.

/// A resource quantity in thousandths of its unit (`100m` CPU is 100, `1Ki` is 1,024,000),
/// rounded up as upstream rounds a quantity to milli precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    pub milli: i128,
}

impl Quantity {
    /// The quantity in whole units, rounded up (bytes for memory, cores for CPU).
    pub fn units(self) -> i128 {
        let q = self.milli.div_euclid(1000);
        if self.milli.rem_euclid(1000) == 0 { q } else { q + 1 }
    }
}

/// Largest magnitude accepted: far beyond any board (2^63 units), small enough that no
/// arithmetic on it overflows.
const MAX_MILLI: i128 = (i64::MAX as i128) * 1000;

/// What upstream says of a quantity it cannot parse.
pub const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// Parses a Kubernetes quantity: a signed decimal number (`1`, `1.5`, `.5`, `5.`) and one
/// suffix: binary `Ki Mi Gi Ti Pi Ei`, decimal `n u m "" k M G T P E`, or an exponent
/// `e3`/`E-2`.
pub fn parse_quantity(text: &str) -> Result<Quantity, &'static str> {
    let s = text.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(QUANTITY_MSG);
    }
    // mantissa * 10^scale, exactly.
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err("the number has too many digits");
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| QUANTITY_MSG)? };
    let mut scale: i32 = -(frac.len() as i32);
    let mut binary: i128 = 1;
    match suffix {
        "Ki" => binary = 1 << 10,
        "Mi" => binary = 1 << 20,
        "Gi" => binary = 1 << 30,
        "Ti" => binary = 1 << 40,
        "Pi" => binary = 1 << 50,
        "Ei" => binary = 1 << 60,
        "n" => scale -= 9,
        "u" => scale -= 6,
        "m" => scale -= 3,
        "" => {}
        "k" => scale += 3,
        "M" => scale += 6,
        "G" => scale += 9,
        "T" => scale += 12,
        "P" => scale += 15,
        "E" => scale += 18,
        e if e.starts_with(['e', 'E']) => {
            let exp = &e[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3 {
                return Err(QUANTITY_MSG);
            }
            scale += exp.parse::<i32>().map_err(|_| QUANTITY_MSG)?;
        }
        _ => return Err(QUANTITY_MSG),
    }
    // To milli-units: mantissa * binary * 10^(scale + 3), rounded up.
    let scale = scale + 3;
    let too_large = "the quantity is too large";
    let base = mantissa.checked_mul(binary).ok_or(too_large)?;
    let milli = if mantissa == 0 {
        0
    } else if scale >= 0 {
        let pow = 10i128.checked_pow(scale as u32).ok_or(too_large)?;
        base.checked_mul(pow).ok_or(too_large)?
    } else {
        match 10i128.checked_pow(scale.unsigned_abs()) {
            Some(pow) => base / pow + i128::from(base % pow != 0),
            // Smaller than a thousandth of anything: rounds up to one.
            None => 1,
        }
    };
    if milli > MAX_MILLI {
        return Err(too_large);
    }
    Ok(Quantity { milli: if negative { -milli } else { milli } })
}

/// A ConfigMap or Secret key (and a volume item's `key`): `[-._a-zA-Z0-9]+`, at most 253
/// characters, and neither `.`, `..` nor starting with `..` (the names the atomic writer's
/// own `..data` links use).
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && k != "."
        && !k.starts_with("..")
}

/// A path that stays below the directory it is joined to: relative and without a `..`
/// element (upstream's `validateLocalDescendingPath`). Used for volume `items[].path` and
/// `subPath`.
pub fn is_descending_path(p: &str) -> bool {
    crate::sys::fs::is_clean_relative(p)
}

/// A host path a pod may name: absolute, without a `..` element.
pub fn is_clean_absolute_path(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && p.split('/').all(|part| part != "..")
}

/// An environment variable name: printable ASCII without `=` (upstream's relaxed rule,
/// the default since 1.32).
pub fn is_env_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// A port name (IANA_SVC_NAME): at most 15 lower-case letters, digits and single `-`, at
/// least one letter, no `-` at either end.
pub fn is_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

/// The longest `generateName` prefix kept: a name is at most 63 characters where it must
/// be a label, and the server adds 5 random ones (upstream's `maxGeneratedNameLength`).
pub const MAX_GENERATED_PREFIX: usize = 58;

/// A `generateName` prefix cut as upstream cuts it.
pub fn generated_prefix(prefix: &str) -> &str {
    match prefix.char_indices().nth(MAX_GENERATED_PREFIX) {
        Some((i, _)) => &prefix[..i],
        None => prefix,
    }
}

/// Most bytes a ConfigMap's or Secret's data may hold (upstream's `MaxSecretSize`).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Most bytes an object's annotations may hold, keys and values together.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> i128 {
        parse_quantity(s).unwrap_or_else(|e| panic!("{s}: {e}")).milli
    }

    #[test]
    fn quantities_parse_with_every_upstream_suffix() {
        assert_eq!(milli("1"), 1000);
        assert_eq!(milli("100m"), 100);
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("5."), 5000);
        assert_eq!(milli("+2"), 2000);
        assert_eq!(milli("-2"), -2000);
        assert_eq!(milli("1k"), 1_000_000);
        assert_eq!(milli("64Mi"), 64 * 1024 * 1024 * 1000);
        assert_eq!(milli("1Gi"), (1 << 30) * 1000);
        assert_eq!(milli("1Ti"), (1i128 << 40) * 1000);
        assert_eq!(milli("1Pi"), (1i128 << 50) * 1000);
        assert_eq!(milli("1Ei"), (1i128 << 60) * 1000);
        assert_eq!(milli("1M"), 1_000_000_000);
        assert_eq!(milli("2G"), 2_000_000_000_000);
        assert_eq!(milli("1T"), 1_000_000_000_000_000);
        assert_eq!(milli("1P"), 1_000_000_000_000_000_000);
        assert_eq!(milli("1E"), 1_000_000_000_000_000_000_000);
        assert_eq!(milli("1e3"), 1_000_000);
        assert_eq!(milli("1E3"), 1_000_000);
        assert_eq!(milli("12e-3"), 12);
        assert_eq!(milli("1e+3"), 1_000_000);
        assert_eq!(milli("1u"), 1, "a millionth rounds up to a thousandth");
        assert_eq!(milli("500n"), 1);
        assert_eq!(milli("0"), 0);
        assert_eq!(milli("0Gi"), 0);
        assert_eq!(parse_quantity("1.5Gi").unwrap().units(), 1610612736);
        assert_eq!(parse_quantity("100m").unwrap().units(), 1);
    }

    #[test]
    fn quantities_that_are_not_are_refused() {
        for bad in [
            "banana",
            "",
            "1.2.3",
            "Gi",
            "1gi",
            "1GB",
            "1 Gi",
            "1e",
            "1e+",
            "1ex",
            "--1",
            "1KiB",
            "1e9999",
            "99999999999999999999999E",
            "0x10",
            "1,5",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn keys_paths_and_names() {
        for good in ["a", "key.name", "KEY_NAME", "key-name", ".dotfile", "a..b"] {
            assert!(is_config_key(good), "{good}");
        }
        for bad in ["", ".", "..", "..data", "a/b", "a b", "é"] {
            assert!(!is_config_key(bad), "{bad}");
        }
        for good in ["a", "a/b", "a/./b", ".hidden", "a..b/c"] {
            assert!(is_descending_path(good), "{good}");
        }
        for bad in ["/abs", "..", "../x", "a/../../x", "a/..", "a\0b"] {
            assert!(!is_descending_path(bad), "{bad}");
        }
        assert!(is_clean_absolute_path("/var/lib/data") && is_clean_absolute_path("/"));
        assert!(!is_clean_absolute_path("var") && !is_clean_absolute_path("/var/../etc"));
        assert!(is_env_name("HOME") && is_env_name("my.var-1") && is_env_name("1X"));
        assert!(!is_env_name("A=B") && !is_env_name("") && !is_env_name("TAB\t"));
        assert!(is_port_name("http") && is_port_name("metrics-2") && is_port_name("a1"));
        for bad in ["", "123", "-http", "http-", "h--p", "HTTP", "sixteen-chars-xx", "web_ui"] {
            assert!(!is_port_name(bad), "{bad}");
        }
        let long = "d".repeat(70);
        assert_eq!(generated_prefix(&long).len(), MAX_GENERATED_PREFIX);
        assert_eq!(generated_prefix("web-"), "web-");
    }
}
