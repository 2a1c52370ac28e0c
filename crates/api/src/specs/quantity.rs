//! Kubernetes-style resource quantities for CPU and memory.
//!
//! Supported forms (exponent notation such as `1e6` is not):
//! - CPU: whole or fractional cores (`1`, `0.5`, `.25`, `2`) or millicores (`500m`);
//!   precision finer than one millicore is rejected.
//! - Memory: plain bytes (`1000000`), decimal suffixes `k M G T P E` and binary
//!   suffixes `Ki Mi Gi Ti Pi Ei`, optionally fractional (`1.5Gi`, rounded up to a whole
//!   byte).

use serde::Deserializer;
use serde::de::{self, Visitor};

use crate::error::ValidationError;
use crate::limits::MAX_QUANTITY_LEN;

/// Deserializes an optional quantity given as a string (`"500m"`) or, as YAML users
/// tend to write it, a plain number (`cpu: 0.5`, `memory: 1000000`), into its string
/// form. Validity is checked later by [`check_cpu`] / [`check_memory`].
pub(crate) fn opt_quantity<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct QuantityVisitor;

    impl<'de> Visitor<'de> for QuantityVisitor {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a quantity string or number")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(QuantityVisitor)
        }
    }

    d.deserialize_any(QuantityVisitor)
}

/// A non-negative decimal `[0-9]*(\.[0-9]+)?` with at least one digit, split into its
/// integer part and fraction digits.
fn split_decimal(s: &str) -> Option<(&str, &str)> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return None,
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((int, frac))
}

/// Digits to a number, `None` on overflow or a non-digit (an empty string is 0).
fn digits_u128(s: &str) -> Option<u128> {
    s.chars().try_fold(0u128, |acc, c| {
        acc.checked_mul(10)?
            .checked_add(u128::from(c.to_digit(10)?))
    })
}

/// `value * multiplier`, rounded up, where `value` is the decimal `int.frac`.
fn scale_ceil(int: &str, frac: &str, multiplier: u128) -> Option<u64> {
    // 38 digits fit in u128; more fractional digits than that are nonsense anyway.
    if frac.len() > 30 {
        return None;
    }
    let whole = digits_u128(int)?.checked_mul(multiplier)?;
    let denominator = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let numerator = digits_u128(frac)?.checked_mul(multiplier)?;
    let part = numerator.div_ceil(denominator);
    u64::try_from(whole.checked_add(part)?).ok()
}

/// Parses a CPU quantity into millicores: `"500m"` -> 500, `"1"` -> 1000,
/// `"0.5"` -> 500. `None` if it is not a CPU quantity (or finer than 1m).
pub fn parse_cpu_millis(s: &str) -> Option<u64> {
    if let Some(millis) = s.strip_suffix('m') {
        let (int, frac) = split_decimal(millis)?;
        if !frac.is_empty() || int.is_empty() {
            return None;
        }
        return u64::try_from(digits_u128(int)?).ok();
    }
    let (int, frac) = split_decimal(s)?;
    // Anything below a millicore must be zeros.
    if frac.len() > 3 && frac.bytes().skip(3).any(|b| b != b'0') {
        return None;
    }
    let frac = frac.get(..frac.len().min(3))?;
    scale_ceil(int, frac, 1000)
}

/// Parses a memory quantity into bytes: `"64Mi"` -> 67108864, `"128M"` -> 128000000,
/// `"1000000"` -> 1000000. `None` if it is not a memory quantity or overflows u64.
pub fn parse_memory_bytes(s: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u128); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let (int, frac) = split_decimal(number)?;
    scale_ceil(int, frac, multiplier)
}

/// `field` must be a positive CPU quantity.
pub(crate) fn check_cpu(value: &str, field: &str) -> Result<(), ValidationError> {
    let parsed = if value.len() > MAX_QUANTITY_LEN {
        None
    } else {
        parse_cpu_millis(value)
    };
    match parsed {
        None => Err(ValidationError::new(
            field,
            format!(
                "invalid cpu quantity {value:?}: expected cores such as \"1\" or \"0.5\", \
                 or millicores such as \"500m\""
            ),
        )),
        Some(0) => Err(ValidationError::new(field, "must be greater than zero")),
        Some(_) => Ok(()),
    }
}

/// `field` must be a positive memory quantity.
pub(crate) fn check_memory(value: &str, field: &str) -> Result<(), ValidationError> {
    let parsed = if value.len() > MAX_QUANTITY_LEN {
        None
    } else {
        parse_memory_bytes(value)
    };
    match parsed {
        None => Err(ValidationError::new(
            field,
            format!(
                "invalid memory quantity {value:?}: expected bytes such as \"1000000\" or a \
                 number with a suffix such as \"64Mi\", \"1Gi\" or \"128M\""
            ),
        )),
        Some(0) => Err(ValidationError::new(field, "must be greater than zero")),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        for (s, m) in [
            ("500m", 500),
            ("1", 1000),
            ("0.5", 500),
            ("2", 2000),
            (".25", 250),
            ("1.5", 1500),
            ("0.1000", 100),
            ("0", 0),
            ("0m", 0),
        ] {
            assert_eq!(parse_cpu_millis(s), Some(m), "{s}");
        }
        for s in [
            "",
            "m",
            "1.",
            ".",
            "-1",
            "+1",
            "1 ",
            "0.0005",
            "1.5m",
            "abc",
            "1k",
            "1e3",
            "99999999999999999999999999",
        ] {
            assert_eq!(parse_cpu_millis(s), None, "{s}");
        }
    }

    #[test]
    fn memory() {
        for (s, b) in [
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("128M", 128_000_000),
            ("1000000", 1_000_000),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1.5Gi", 1_610_612_736),
            ("0.5", 1),
            ("0", 0),
            ("15E", 15_000_000_000_000_000_000),
            ("15Ei", 15 << 60),
        ] {
            assert_eq!(parse_memory_bytes(s), Some(b), "{s}");
        }
        for s in [
            "", "Mi", "1m", "1K", "1mi", "-1", "1 Mi", "1.", "1Gb", "abc", "19E", "16Ei", "100Ei",
            "1e6",
        ] {
            assert_eq!(parse_memory_bytes(s), None, "{s}");
        }
    }

    #[test]
    fn checks_name_field() {
        let e = check_cpu("lots", "spec.resources.cpu").unwrap_err();
        assert_eq!(e.field, "spec.resources.cpu");
        assert!(e.message.contains("invalid cpu quantity \"lots\""));
        let e = check_cpu("0", "f").unwrap_err();
        assert_eq!(e.message, "must be greater than zero");
        let e = check_memory("64MB", "spec.resources.memory").unwrap_err();
        assert_eq!(e.field, "spec.resources.memory");
        assert!(e.message.contains("invalid memory quantity \"64MB\""));
        let e = check_memory("0Mi", "f").unwrap_err();
        assert_eq!(e.message, "must be greater than zero");
        assert!(check_memory(&"1".repeat(40), "f").is_err());
    }
}
