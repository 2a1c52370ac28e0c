//! Decoding manifests: YAML (multi-document) or JSON (one object, or a JSON array of
//! objects) into validated [`Object`]s.
//!
//! - YAML: every document of the stream (`---`-separated); empty documents are skipped
//!   but still counted, so document numbers match what a reader counts in the file.
//! - JSON: a single object (document 1), or an array of objects (document = index + 1).
//!   `{"kind": "List", ...}` wrappers are not supported.
//!
//! Both formats reject duplicate keys in a mapping, and non-finite numbers, as
//! malformed. At most [`MAX_DOCUMENTS`] documents per stream.

use serde::de::Deserialize;
use serde_json::{Map, Value};

use crate::de::from_value_at;
use crate::error::{Error, Result, ValidationError};
use crate::limits::MAX_DOCUMENTS;
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::strict_json::{StrictValue, type_name};
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

/// Top-level fields of every resource document.
const TOP_LEVEL_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// Parses every document in `input` and validates each strictly (see [`decode_object`]).
/// Malformed input -> [`crate::Error::Malformed`]; the first invalid document ->
/// [`crate::Error::Invalid`] whose field path is prefixed with nothing (the path is
/// relative to that document; the document index is in the message when there are
/// several: `unknown field, expected ... (document 2)`). Empty YAML documents (`---`
/// alone) are skipped; an input with no documents yields an empty list. More than
/// [`MAX_DOCUMENTS`] documents -> [`crate::Error::Malformed`].
pub fn parse_documents(input: &str, format: Format) -> Result<Vec<Object>> {
    let values = match format {
        Format::Json => json_values(input)?,
        Format::Yaml => yaml_values(input)?,
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

/// The non-empty documents of a YAML stream with their 1-based positions.
fn yaml_values(input: &str) -> Result<Vec<(usize, Value)>> {
    let mut out = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        // The iterator repeats a syntax error forever: stop at the first one.
        let value = StrictValue::deserialize(document)
            .map_err(|e| Error::Malformed {
                format: "yaml",
                document: index,
                message: e.to_string(),
            })?
            .0;
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

/// One JSON object, or the elements of a JSON array, with their 1-based positions.
fn json_values(input: &str) -> Result<Vec<(usize, Value)>> {
    let value = serde_json::from_str::<StrictValue>(input)
        .map_err(|e| Error::Malformed {
            format: "json",
            document: 1,
            message: e.to_string(),
        })?
        .0;
    match value {
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
