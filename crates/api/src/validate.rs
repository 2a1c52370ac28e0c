//! Semantic checks beyond the typed shape: names, label keys/values, semver, quantities,
//! one-of constraints.
//!
//! The envelope and metadata checks live here together with the small reusable checks
//! (lengths, paths, URLs, environment variables, label maps) the per-kind specs in
//! [`crate::specs`] build on. Every error names the dotted field path from the document
//! root.

use std::collections::BTreeMap;
use std::io;

use crate::error::ValidationError;
use crate::kind::Kind;
use crate::limits::*;
use crate::meta::ObjectMeta;
use crate::object::{API_VERSION, Object};
use crate::specs::{self, Spec};

pub(crate) const DNS1123_LABEL_MESSAGE: &str =
    "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)";

/// [`is_dns1123_label`] as a regular expression (with the 63-character bound apart),
/// for schemas: `metadata.name` and the API's `{name}` parameters.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// DNS-1123 label: 1..=63 chars, `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

/// Names no Node may have, because the code gives them a meaning of their own: `cloud`
/// stands for the control plane where a task runs (`status.node`, `X-Verge-Node`), and
/// `verge-cloud` is the MQTT client id the cloud uses with an external broker (a node
/// connecting under it would take over the cloud's session).
pub const RESERVED_NODE_NAMES: [&str; 2] = ["cloud", "verge-cloud"];

/// Whether `name` is one of [`RESERVED_NODE_NAMES`].
pub fn is_reserved_node_name(name: &str) -> bool {
    RESERVED_NODE_NAMES.contains(&name)
}

/// DNS-1123 subdomain: at most 253 chars, dot-separated DNS-1123 labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_LABEL_PREFIX_LEN && s.split('.').all(is_dns1123_label)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 chars (empty not allowed).
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_NAME_LEN
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// What is wrong with a label (or annotation) key, if anything.
pub(crate) fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns1123_subdomain(prefix)
    {
        return Some(format!(
            "invalid key {key:?}: prefix must be a DNS-1123 subdomain (lowercase letters, \
             digits, '-' and '.', at most {MAX_LABEL_PREFIX_LEN} characters)"
        ));
    }
    if !is_qualified_name_part(name) {
        return Some(format!(
            "invalid key {key:?}: name must be 1 to {MAX_LABEL_NAME_LEN} characters of \
             letters, digits, '-', '_' or '.', starting and ending with a letter or digit, \
             optionally after a DNS subdomain prefix and '/'"
        ));
    }
    None
}

/// Kubernetes label key syntax: optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 characters `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn is_label_key(key: &str) -> bool {
    label_key_problem(key).is_none()
}

/// Kubernetes label value syntax: empty, or at most 63 characters
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_qualified_name_part(value)
}

/// Checks a label-like map (`metadata.labels`, node selectors): at most `MAX_LABELS`
/// entries, keys and values in label syntax. Errors name `<path>.<key>`.
pub(crate) fn check_label_map(
    map: &BTreeMap<String, String>,
    path: &str,
) -> Result<(), ValidationError> {
    if map.len() > MAX_LABELS {
        return Err(ValidationError::new(
            path,
            format!("too many entries ({}, at most {MAX_LABELS})", map.len()),
        ));
    }
    for (key, value) in map {
        let field = format!("{path}.{key}");
        if let Some(problem) = label_key_problem(key) {
            return Err(ValidationError::new(field, problem));
        }
        if !is_label_value(value) {
            return Err(ValidationError::new(
                field,
                format!(
                    "invalid value {value:?}: must be empty or 1 to {MAX_LABEL_VALUE_LEN} \
                     characters of letters, digits, '-', '_' or '.', starting and ending with \
                     a letter or digit"
                ),
            ));
        }
    }
    Ok(())
}

/// A resource reference (`function`, `node`, secret names): a DNS-1123 label.
pub(crate) fn check_dns_label(value: &str, field: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        Err(ValidationError::new(field, "must not be empty"))
    } else if !is_dns1123_label(value) {
        Err(ValidationError::new(field, DNS1123_LABEL_MESSAGE))
    } else {
        Ok(())
    }
}

/// At most `max` bytes.
pub(crate) fn check_len(value: &str, field: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        Err(ValidationError::new(
            field,
            format!("too long ({} bytes, at most {max})", value.len()),
        ))
    } else {
        Ok(())
    }
}

/// Non-empty, at most `max` bytes, no NUL byte (strings handed to `exec`).
pub(crate) fn check_exec_string(
    value: &str,
    field: &str,
    max: usize,
) -> Result<(), ValidationError> {
    check_len(value, field, max)?;
    if value.contains('\0') {
        return Err(ValidationError::new(field, "must not contain NUL bytes"));
    }
    Ok(())
}

/// A `command`/`args` list: at most `MAX_ARGS` entries of at most `MAX_ARG_LEN` bytes.
pub(crate) fn check_args(args: &[String], path: &str) -> Result<(), ValidationError> {
    if args.len() > MAX_ARGS {
        return Err(ValidationError::new(
            path,
            format!("too many entries ({}, at most {MAX_ARGS})", args.len()),
        ));
    }
    for (i, arg) in args.iter().enumerate() {
        check_exec_string(arg, &format!("{path}[{i}]"), MAX_ARG_LEN)?;
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.first()
        .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

/// An `env` map: at most `MAX_ENV` entries, names `[A-Za-z_][A-Za-z0-9_]*`, bounded
/// values without NUL bytes. Errors name `<path>.<NAME>`.
pub(crate) fn check_env(env: &BTreeMap<String, String>, path: &str) -> Result<(), ValidationError> {
    if env.len() > MAX_ENV {
        return Err(ValidationError::new(
            path,
            format!("too many entries ({}, at most {MAX_ENV})", env.len()),
        ));
    }
    for (name, value) in env {
        let field = format!("{path}.{name}");
        check_env_name(name, &field)?;
        check_exec_string(value, &field, MAX_ENV_VALUE_LEN)?;
    }
    Ok(())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most `MAX_ENV_NAME_LEN`.
pub(crate) fn check_env_name(name: &str, field: &str) -> Result<(), ValidationError> {
    if name.len() > MAX_ENV_NAME_LEN || !is_env_name(name) {
        return Err(ValidationError::new(
            field,
            format!(
                "invalid environment variable name {name:?}: must match \
                 [A-Za-z_][A-Za-z0-9_]* (at most {MAX_ENV_NAME_LEN} characters)"
            ),
        ));
    }
    Ok(())
}

/// An absolute filesystem path, bounded, without NUL bytes.
pub(crate) fn check_abs_path(value: &str, field: &str) -> Result<(), ValidationError> {
    check_exec_string(value, field, MAX_PATH_LEN)?;
    if !value.starts_with('/') {
        return Err(ValidationError::new(
            field,
            format!("must be an absolute path (found {value:?})"),
        ));
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host, at most `MAX_URL_LEN` bytes, without
/// whitespace or control characters.
pub(crate) fn check_http_url(value: &str, field: &str) -> Result<(), ValidationError> {
    check_len(value, field, MAX_URL_LEN)?;
    let bad = || {
        ValidationError::new(
            field,
            format!("must be an http or https URL with a host (found {value:?})"),
        )
    };
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        value.get(8..)
    } else if lower.starts_with("http://") {
        value.get(7..)
    } else {
        None
    };
    let Some(rest) = rest else {
        return Err(bad());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(())
}

/// `min..=max`.
pub(crate) fn check_range(
    value: u32,
    field: &str,
    min: u32,
    max: u32,
) -> Result<(), ValidationError> {
    if value < min || value > max {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max} (found {value})"),
        ))
    } else {
        Ok(())
    }
}

/// Counts bytes written and refuses to go past a limit (so oversized values fail fast).
struct SizeLimit {
    written: usize,
    max: usize,
}

impl io::Write for SizeLimit {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.max {
            Err(io::Error::other("too large"))
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A free-form JSON value whose serialized form is at most `max` bytes.
pub(crate) fn check_json_size(
    value: &serde_json::Value,
    field: &str,
    max: usize,
) -> Result<(), ValidationError> {
    let mut sink = SizeLimit { written: 0, max };
    serde_json::to_writer(&mut sink, value).map_err(|_| {
        ValidationError::new(
            field,
            format!("too large (more than {max} bytes when serialized as JSON)"),
        )
    })
}

fn check_server_field(value: Option<&String>, field: &str) -> Result<(), ValidationError> {
    if let Some(value) = value {
        check_len(value, field, MAX_SERVER_FIELD_LEN)?;
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
    }
    Ok(())
}

/// Name, labels, annotations and the bounded server-set fields.
fn validate_metadata(meta: &ObjectMeta) -> Result<(), ValidationError> {
    if meta.name.is_empty() {
        return Err(ValidationError::new("metadata.name", "must not be empty"));
    }
    if !is_dns1123_label(&meta.name) {
        return Err(ValidationError::new("metadata.name", DNS1123_LABEL_MESSAGE));
    }
    check_label_map(&meta.labels, "metadata.labels")?;
    let mut total = 0usize;
    for (key, value) in &meta.annotations {
        if let Some(problem) = label_key_problem(key) {
            return Err(ValidationError::new(
                format!("metadata.annotations.{key}"),
                problem,
            ));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(ValidationError::new(
            "metadata.annotations",
            format!(
                "too large ({total} bytes of keys and values, at most {MAX_ANNOTATIONS_BYTES})"
            ),
        ));
    }
    check_server_field(meta.uid.as_ref(), "metadata.uid")?;
    check_server_field(meta.resource_version.as_ref(), "metadata.resourceVersion")?;
    check_server_field(
        meta.creation_timestamp.as_ref(),
        "metadata.creationTimestamp",
    )?;
    check_server_field(
        meta.deletion_timestamp.as_ref(),
        "metadata.deletionTimestamp",
    )?;
    check_finalizers(&meta.finalizers)
}

/// At most [`MAX_FINALIZERS`], each a qualified name (`example.com/cleanup`, the
/// label-key syntax), no duplicates.
fn check_finalizers(finalizers: &[String]) -> Result<(), ValidationError> {
    if finalizers.len() > MAX_FINALIZERS {
        return Err(ValidationError::new(
            "metadata.finalizers",
            format!(
                "too many finalizers ({}, at most {MAX_FINALIZERS})",
                finalizers.len()
            ),
        ));
    }
    for (i, f) in finalizers.iter().enumerate() {
        let field = format!("metadata.finalizers[{i}]");
        if let Some(problem) = label_key_problem(f) {
            return Err(ValidationError::new(field, problem));
        }
        if finalizers[..i].contains(f) {
            return Err(ValidationError::new(
                field,
                format!("duplicate finalizer {f:?}"),
            ));
        }
    }
    Ok(())
}

/// `apiVersion` must be [`API_VERSION`].
pub(crate) fn check_api_version(api_version: &str) -> Result<(), ValidationError> {
    if api_version != API_VERSION {
        return Err(ValidationError::new(
            "apiVersion",
            format!("unsupported apiVersion {api_version:?}, expected {API_VERSION:?}"),
        ));
    }
    Ok(())
}

/// `kind` must name a [`Kind`] exactly.
pub(crate) fn check_kind(kind: &str) -> Result<Kind, ValidationError> {
    Kind::from_kind_name(kind).ok_or_else(|| {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        ValidationError::new(
            "kind",
            format!(
                "unknown kind {kind:?}; expected one of {}",
                names.join(", ")
            ),
        )
    })
}

/// Every check of [`validate_object`], returning the typed spec.
pub(crate) fn check_object(obj: &Object) -> Result<Spec, ValidationError> {
    check_api_version(&obj.api_version)?;
    let kind = check_kind(&obj.kind)?;
    validate_metadata(&obj.metadata)?;
    if kind == Kind::Node && is_reserved_node_name(&obj.metadata.name) {
        return Err(ValidationError::new(
            "metadata.name",
            format!(
                "{:?} is reserved (node names may not be any of {})",
                obj.metadata.name,
                RESERVED_NODE_NAMES.join(", ")
            ),
        ));
    }
    if kind == Kind::Bucket
        && let Err(m) = specs::check_bucket_name(&obj.metadata.name)
    {
        return Err(ValidationError::new("metadata.name", m));
    }
    if !(obj.status.is_null() || obj.status.is_object()) {
        return Err(ValidationError::new(
            "status",
            "must be an object when present",
        ));
    }
    specs::decode_spec(kind, &obj.spec)
}

/// Checks `metadata` (name, label keys and values, annotation sizes) and the kind's
/// typed spec. Called by [`crate::decode_object`]; exposed for the server to re-check
/// objects it builds itself.
pub fn validate_object(obj: &Object) -> Result<(), ValidationError> {
    check_object(obj).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels() {
        for good in ["a", "web", "web-1", "0", "a0-b", &"a".repeat(63)] {
            assert!(is_dns1123_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for good in ["tier", "app.kubernetes.io/name", "a", "A_b.c-D", "x.y/Z"] {
            assert!(is_label_key(good), "{good}");
        }
        let long_prefix = format!("{}/a", "a".repeat(254));
        for bad in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "-a",
            "a-",
            "Example.com/a",
            &long_prefix,
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
        assert!(!is_label_key(&"a".repeat(64)));
        for good in ["", "frontend", "v1.0", "a_b-c"] {
            assert!(is_label_value(good), "{good}");
        }
        for bad in ["-a", "a b", "ä", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for good in [
            "http://x",
            "https://example.com/a?b#c",
            "HTTPS://host:8080",
            "https://user@host/",
            "http://[::1]:80/",
        ] {
            assert!(check_http_url(good, "f").is_ok(), "{good}");
        }
        for bad in [
            "",
            "ftp://x",
            "http://",
            "https:///path",
            "http://a b",
            "http:/x",
            "x",
        ] {
            let err = check_http_url(bad, "f").unwrap_err();
            assert_eq!(err.field, "f");
            assert!(err.message.contains("http or https URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn json_size_limit() {
        let v = serde_json::json!({"a": "x".repeat(100)});
        assert!(check_json_size(&v, "input", 200).is_ok());
        let err = check_json_size(&v, "input", 50).unwrap_err();
        assert_eq!(err.field, "input");
        assert!(err.message.contains("too large"));
    }
}
