//! Decoding manifests: YAML (multi-document) or JSON (one object, or a JSON array of
//! objects) into validated [`Object`]s, and single request bodies into JSON values.
//!
//! - YAML: every document of the stream (`---`-separated); empty documents are skipped
//!   but still counted, so document numbers match what a reader counts in the file.
//! - JSON: a single object (document 1), or an array of objects (document = index + 1).
//!   `{"kind": "List", ...}` wrappers are not supported.
//!
//! Both formats reject duplicate keys in a mapping, and non-finite numbers, as
//! malformed. At most [`MAX_DOCUMENTS`] documents per stream.
//!
//! Every input is built under [`Bounds`] (one budget for the whole stream): YAML aliases
//! are allowed but count at every use, so an alias bomb is refused with
//! [`Error::Limit`] after the first bytes past the bound ([`expansion_bound`]: about
//! twice the input, at most the body cap), and nesting is capped at [`MAX_DEPTH`].
//! Not bounded here: serde_norway loads all events of a document (~100–180 bytes each,
//! at most one per input byte) before any value is built — callers bound the text and
//! how many texts are decoded at once (decision 014). What this module must not do: build a value from user input without
//! a budget (`serde_norway::from_str` into a `Value` expands aliases without bound).

use serde::de::DeserializeSeed;
use serde_json::{Map, Value};

use crate::de::from_value_at;
use crate::error::{Error, Result, ValidationError};
use crate::limits::{MAX_DEPTH, MAX_DOCUMENTS, MAX_EXPANDED_BYTES, MIN_EXPANSION_BYTES};
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::strict_json::{Bounds, Budget, StrictSeed, type_name};
use crate::validate::{check_api_version, check_kind, check_object};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// `"json"` / `"yaml"`, as used in [`Error::Malformed`].
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }
}

/// The bytes of content an input of `len` bytes may expand to (YAML aliases counted at
/// every use): twice its length, at least [`MIN_EXPANSION_BYTES`], at most `cap` — and
/// never less than `len`, since an alias-free input never counts more than its text.
/// So aliases can make a request cost at most about twice what a plain document of
/// the same size costs.
pub fn expansion_bound(len: usize, cap: usize) -> usize {
    len.saturating_mul(2)
        .max(MIN_EXPANSION_BYTES)
        .min(cap)
        .max(len)
}

/// The bounds for an input of `len` bytes when the caller has no cap of its own (a
/// file of the user's, the fuzz target): at most [`MAX_DEPTH`] levels, expanding to
/// [`expansion_bound`] under [`MAX_EXPANDED_BYTES`].
pub fn default_bounds(len: usize) -> Bounds {
    Bounds {
        max_bytes: expansion_bound(len, MAX_EXPANDED_BYTES),
        max_depth: MAX_DEPTH,
    }
}

/// The bounds for a request body of `len` bytes under a cap of `max_body_bytes`: the
/// expanded document holds no more than [`expansion_bound`] allows and never more than
/// the body itself may, at most [`MAX_DEPTH`] levels deep.
pub fn body_bounds(max_body_bytes: usize, len: usize) -> Bounds {
    Bounds {
        max_bytes: expansion_bound(len, max_body_bytes),
        max_depth: MAX_DEPTH,
    }
}

/// Top-level fields of every resource document.
const TOP_LEVEL_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// Parses every document in `input` and validates each strictly (see [`decode_object`]).
/// Malformed input -> [`crate::Error::Malformed`]; the first invalid document ->
/// [`crate::Error::Invalid`] whose field path is prefixed with nothing (the path is
/// relative to that document; the document index is in the message when there are
/// several: `unknown field, expected ... (document 2)`). Empty YAML documents (`---`
/// alone) are skipped; an input with no documents yields an empty list. More than
/// [`MAX_DOCUMENTS`] documents -> [`crate::Error::Malformed`]. Bounded by
/// [`default_bounds`]; past a bound -> [`crate::Error::Limit`].
pub fn parse_documents(input: &str, format: Format) -> Result<Vec<Object>> {
    parse_documents_with(input, format, default_bounds(input.len()))
}

/// [`parse_documents`] under the caller's bounds (the server: [`body_bounds`]).
pub fn parse_documents_with(input: &str, format: Format, bounds: Bounds) -> Result<Vec<Object>> {
    let budget = Budget::new(bounds);
    let values = match format {
        Format::Json => json_values(input, &budget)?,
        Format::Yaml => yaml_values(input, &budget)?,
    };
    let several = values.len() > 1;
    values
        .into_iter()
        .map(|(document, value)| {
            decode_object(value).map_err(|err| match err {
                Error::Invalid(mut e) if several => {
                    e.message = format!("{} (document {document})", e.message);
                    Error::Invalid(e)
                }
                other => other,
            })
        })
        .collect()
}

fn too_many(format: Format) -> Error {
    Error::Malformed {
        format: format.name(),
        document: MAX_DOCUMENTS + 1,
        message: format!("too many documents (at most {MAX_DOCUMENTS} per stream)"),
    }
}

/// Parses one document (a request body that is not a resource: a status, a token
/// request, function input) into a strict JSON value under `bounds`. JSON: any value
/// (an array is one value here). YAML: one document; none (or an empty one) is `null`,
/// several are [`crate::Error::Malformed`].
pub fn parse_value(input: &str, format: Format, bounds: Bounds) -> Result<Value> {
    let budget = Budget::new(bounds);
    match format {
        Format::Json => json_value(input, &budget),
        Format::Yaml => {
            let mut docs = yaml_values(input, &budget)?;
            match docs.len() {
                0 => Ok(Value::Null),
                1 => Ok(docs.remove(0).1),
                _ => Err(Error::Malformed {
                    format: "yaml",
                    document: docs[1].0,
                    message: "expected one document".into(),
                }),
            }
        }
    }
}

/// The error for a failed build: [`Error::Limit`] when the budget stopped it (or the
/// YAML parser's own alias repetition limit did), else [`Error::Malformed`].
fn build_error(format: Format, document: usize, budget: &Budget, message: String) -> Error {
    let format = format.name();
    if budget.exceeded().is_some() {
        Error::Limit {
            format,
            document,
            message,
        }
    } else if message.contains("repetition limit exceeded") {
        Error::Limit {
            format,
            document,
            message: format!("too many alias uses ({message})"),
        }
    } else {
        Error::Malformed {
            format,
            document,
            message,
        }
    }
}

/// The non-empty documents of a YAML stream with their 1-based positions.
fn yaml_values(input: &str, budget: &Budget) -> Result<Vec<(usize, Value)>> {
    let mut out = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        // The iterator repeats a syntax error forever: stop at the first one.
        let value = StrictSeed::new(budget)
            .deserialize(document)
            .map_err(|e| build_error(Format::Yaml, index, budget, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        if out.len() == MAX_DOCUMENTS {
            return Err(too_many(Format::Yaml));
        }
        out.push((index, value));
    }
    Ok(out)
}

/// One JSON value.
fn json_value(input: &str, budget: &Budget) -> Result<Value> {
    let mut de = serde_json::Deserializer::from_str(input);
    let value = StrictSeed::new(budget)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| build_error(Format::Json, 1, budget, e.to_string()))?;
    Ok(value)
}

/// One JSON object, or the elements of a JSON array, with their 1-based positions.
fn json_values(input: &str, budget: &Budget) -> Result<Vec<(usize, Value)>> {
    match json_value(input, budget)? {
        Value::Array(items) => {
            if items.len() > MAX_DOCUMENTS {
                return Err(too_many(Format::Json));
            }
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i + 1, v))
                .collect())
        }
        other => Ok(vec![(1, other)]),
    }
}

/// Removes a required string field from the top level.
fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<String, ValidationError> {
    match map.remove(key) {
        None | Some(Value::Null) => Err(ValidationError::new(key, "missing field")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ValidationError::new(
            key,
            format!("invalid type: {}, expected a string", type_name(&other)),
        )),
    }
}

/// Validates one already-parsed JSON value as a resource: `apiVersion` must be
/// [`crate::API_VERSION`], `kind` a known [`crate::Kind`], no unknown top-level or
/// metadata fields, the spec strictly matches the kind's typed spec (unknown field ->
/// `spec.workload.docker.imagee: unknown field`), then [`crate::validate_object`] runs
/// the semantic checks. Returns the object with `spec` re-serialized from the typed
/// spec (normalized).
pub fn decode_object(value: serde_json::Value) -> Result<Object> {
    let Value::Object(mut map) = value else {
        return Err(ValidationError::new(
            "",
            format!(
                "a resource must be an object with apiVersion, kind, metadata and spec \
                 (found {})",
                type_name(&value)
            ),
        )
        .into());
    };
    if let Some(unknown) = map.keys().find(|k| !TOP_LEVEL_FIELDS.contains(&k.as_str())) {
        return Err(ValidationError::new(
            unknown.as_str(),
            format!(
                "unknown field, expected one of {}",
                TOP_LEVEL_FIELDS.join(", ")
            ),
        )
        .into());
    }
    let api_version = take_string(&mut map, "apiVersion")?;
    check_api_version(&api_version)?;
    let kind = take_string(&mut map, "kind")?;
    check_kind(&kind)?;
    let metadata = match map.remove("metadata") {
        None | Some(Value::Null) => {
            return Err(ValidationError::new("metadata", "missing field").into());
        }
        Some(v) => from_value_at::<ObjectMeta>(&v, "metadata")?,
    };
    let mut obj = Object {
        api_version,
        kind,
        metadata,
        spec: map.remove("spec").unwrap_or(Value::Null),
        status: map.remove("status").unwrap_or(Value::Null),
    };
    let spec = check_object(&obj)?;
    obj.spec = spec.to_value()?;
    Ok(obj)
}
