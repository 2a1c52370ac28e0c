//! Strict, bounded JSON values: like `serde_json::Value`, but a duplicate key in any
//! object and a non-finite number are errors (the stock `Value` silently keeps the last
//! duplicate, which would let two parsers of the same document disagree), and the
//! value is built under a [`Budget`]: bytes of content and nesting depth are counted
//! while the value is built, before the memory is spent. Shared by the manifest parser
//! (bounded, see [`crate::parse_documents`]) and the cloud↔edge codec ([`StrictValue`],
//! whose payloads are size-capped before parsing).
//!
//! The budget is what makes YAML aliases safe: serde_norway replays an anchored node
//! at every alias that names it, calling this visitor again each time, so the expanded
//! document is counted node by node — a billion-laughs document or 500 aliases of one
//! 400 KiB string are refused after the first bytes over the bound, instead of after
//! hundreds of megabytes. This module does no I/O.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value deserialized strictly: duplicate mapping keys and non-finite numbers are
/// errors (the stock `serde_json::Value` silently keeps the last duplicate). Not bounded
/// beyond the underlying deserializer's own recursion limit: use it on input whose size
/// is already capped and which has no aliases (JSON), or use [`StrictSeed`].
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let budget = Budget::new(Bounds::UNBOUNDED);
        StrictSeed::new(&budget)
            .deserialize(deserializer)
            .map(StrictValue)
    }
}

/// Bounds on a value built from untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most bytes of content in the whole value: the bytes of every string and key,
    /// plus one per value (so `[1,2]` counts 3 and `{"a": "bc"}` counts 1 + 1 + 3).
    /// A YAML alias counts the node it names again at every use. Without aliases the
    /// count never exceeds the length of the text, so a bound equal to the body cap
    /// refuses nothing that fits the body.
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects (the outermost one is level 1).
    pub max_depth: usize,
}

impl Bounds {
    /// No bound of ours (the deserializer's own recursion limit still applies).
    pub const UNBOUNDED: Bounds = Bounds {
        max_bytes: usize::MAX,
        max_depth: usize::MAX,
    };
}

/// Which bound a value broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// More than this many bytes of content (aliases expanded).
    Bytes(usize),
    /// Nested deeper than this many levels.
    Depth(usize),
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::Bytes(n) => write!(
                f,
                "expands beyond the limit of {n} bytes (aliases count at every use)"
            ),
            Exceeded::Depth(n) => write!(f, "nested deeper than the limit of {n} levels"),
        }
    }
}

/// What is left of a [`Bounds`] while one input (all documents of a stream) is built.
/// Remembers which bound broke, so the caller can tell a bound from a syntax error
/// after the deserializer has wrapped the message.
#[derive(Debug)]
pub struct Budget {
    bounds: Bounds,
    left: Cell<usize>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    pub fn new(bounds: Bounds) -> Self {
        Budget {
            bounds,
            left: Cell::new(bounds.max_bytes),
            exceeded: Cell::new(None),
        }
    }

    /// The bound that stopped the build, if one did.
    pub fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded.get()
    }

    /// Bytes counted so far.
    pub fn used(&self) -> usize {
        self.bounds.max_bytes - self.left.get()
    }

    /// Spends `n` bytes, or fails (and remembers why) when fewer are left.
    fn charge<E: de::Error>(&self, n: usize) -> Result<(), E> {
        match self.left.get().checked_sub(n) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(self.fail(Exceeded::Bytes(self.bounds.max_bytes))),
        }
    }

    fn fail<E: de::Error>(&self, why: Exceeded) -> E {
        self.exceeded.set(Some(why));
        E::custom(why)
    }
}

/// Builds one strict [`Value`] from any deserializer, spending `budget`.
#[derive(Clone, Copy)]
pub struct StrictSeed<'b> {
    budget: &'b Budget,
    /// Arrays and objects enclosing the value being built.
    depth: usize,
}

impl<'b> StrictSeed<'b> {
    pub fn new(budget: &'b Budget) -> Self {
        StrictSeed { budget, depth: 0 }
    }

    /// The seed for a child of an array or object at `depth`, checking the bound.
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.budget.bounds.max_depth {
            return Err(self
                .budget
                .fail(Exceeded::Depth(self.budget.bounds.max_depth)));
        }
        Ok(StrictSeed {
            budget: self.budget,
            depth,
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Decimal digits of `v` (what an integer adds to the count).
fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.charge(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.charge(digits(v.unsigned_abs()))?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.charge(digits(v))?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.charge(1)?;
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("unsupported non-finite number {v}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        // Counted before the copy is made.
        self.budget.charge(v.len().saturating_add(1))?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.charge(v.len().saturating_add(1))?;
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.budget.charge(1)?;
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.charge(1)?;
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.charge(1)?;
        let child = self.nested()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        self.budget.charge(1)?;
        let child = self.nested()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed(self.budget))? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = access.next_value_seed(child)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// A mapping key: a string, counted before it is copied.
struct KeySeed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.0.charge(v.len())?;
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        self.0.charge(v.len())?;
        Ok(v)
    }
}

/// The JSON type of a value, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(input: &str, bounds: Bounds) -> (Result<Value, String>, Budget) {
        let budget = Budget::new(bounds);
        let mut de = serde_json::Deserializer::from_str(input);
        let r = StrictSeed::new(&budget)
            .deserialize(&mut de)
            .map_err(|e| e.to_string());
        (r, budget)
    }

    fn yaml(input: &str, bounds: Bounds) -> (Result<Value, String>, Budget) {
        let budget = Budget::new(bounds);
        let r = StrictSeed::new(&budget)
            .deserialize(serde_norway::Deserializer::from_str(input))
            .map_err(|e| e.to_string());
        (r, budget)
    }

    fn bytes(max_bytes: usize) -> Bounds {
        Bounds {
            max_bytes,
            ..Bounds::UNBOUNDED
        }
    }

    #[test]
    fn counts_content_bytes_plus_one_per_value() {
        // object 1 + key "a" 1 + string "bc" 2+1 + key "n" 1 + 12 (2 digits) + array 1
        // + true 1 + null 1
        let (v, b) = json(r#"{"a": "bc", "n": [12, true, null]}"#, Bounds::UNBOUNDED);
        assert!(v.is_ok());
        assert_eq!(b.used(), 1 + 1 + 3 + 1 + 1 + 2 + 1 + 1);
        assert_eq!(b.exceeded(), None);
    }

    #[test]
    fn alias_free_documents_count_no_more_than_their_text() {
        for doc in [
            "[a,a,a,a,a,a]",
            "{a: b, c: d}",
            "- ~\n- ~\n- ''\n",
            "k: v\nl: [1, 2, 3]\n",
            r#"{"x":"","y":[[],{}],"z":-1}"#,
        ] {
            let (v, b) = yaml(doc, Bounds::UNBOUNDED);
            assert!(v.is_ok(), "{doc}: {v:?}");
            assert!(b.used() <= doc.len(), "{doc}: {} > {}", b.used(), doc.len());
        }
    }

    #[test]
    fn aliases_count_at_every_use() {
        let doc = "a: &x [1, 2, 3]\nb: *x\nc: *x\n";
        let (v, b) = yaml(doc, Bounds::UNBOUNDED);
        assert_eq!(v.unwrap()["c"], serde_json::json!([1, 2, 3]));
        // root 1 + 3 keys + 3 arrays of (1 + 3)
        assert_eq!(b.used(), 1 + 3 + 3 * 4);
    }

    #[test]
    fn a_billion_laughs_stops_at_the_bound() {
        let mut doc = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            doc.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let (v, b) = yaml(&doc, bytes(64 * 1024));
        let err = v.unwrap_err();
        assert_eq!(b.exceeded(), Some(Exceeded::Bytes(64 * 1024)), "{err}");
        assert!(
            err.contains("expands beyond the limit of 65536 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_long_string_aliased_many_times_stops_before_it_is_copied_again() {
        let big = "x".repeat(100_000);
        let mut doc = format!("a: &s {big}\nb:\n");
        for _ in 0..50 {
            doc.push_str("  - *s\n");
        }
        let (v, b) = yaml(&doc, bytes(350_000));
        assert!(v.is_err());
        assert_eq!(b.exceeded(), Some(Exceeded::Bytes(350_000)));
        // The first three copies fit, the fourth is refused before it is made.
        assert!(b.used() <= 350_000);
    }

    #[test]
    fn depth_is_bounded_in_json_and_yaml() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let b = Bounds {
            max_depth: 8,
            ..Bounds::UNBOUNDED
        };
        assert!(json(&deep(8), b).0.is_ok());
        let (v, budget) = json(&deep(9), b);
        assert!(
            v.unwrap_err()
                .contains("nested deeper than the limit of 8 levels")
        );
        assert_eq!(budget.exceeded(), Some(Exceeded::Depth(8)));
        assert!(yaml(&deep(8), b).0.is_ok());
        let (v, budget) = yaml(&deep(9), b);
        assert!(v.is_err());
        assert_eq!(budget.exceeded(), Some(Exceeded::Depth(8)));
        // Objects count as levels too.
        let obj = format!("{}1{}", r#"{"a":"#.repeat(9), "}".repeat(9));
        assert_eq!(json(&obj, b).1.exceeded(), Some(Exceeded::Depth(8)));
    }

    #[test]
    fn strictness_is_kept() {
        let (v, b) = json(r#"{"a": 1, "a": 2}"#, Bounds::UNBOUNDED);
        assert!(v.unwrap_err().contains("duplicate key"));
        assert_eq!(b.exceeded(), None, "a syntax problem is not a bound");
        assert!(yaml("x: .inf", Bounds::UNBOUNDED).0.is_err());
    }

    #[test]
    fn digits_counts_decimal_digits() {
        assert_eq!(digits(0), 1);
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
        assert_eq!(digits(u64::MAX), 20);
    }
}
