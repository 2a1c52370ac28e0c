//! Strict typed decoding of JSON values with field paths in errors.
//!
//! Wraps `serde_path_to_error` and rewrites serde's messages into the crate's
//! `<path>: <message>` convention: unknown keys are reported at the key itself
//! (`spec.workload.docker.imagee: unknown field, expected one of ...`), missing keys at
//! the path they are missing from plus their name (`spec.workload: missing field`).

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::error::ValidationError;

/// Deserializes `value` into `T`; errors name the path below `prefix`.
pub(crate) fn from_value_at<T: DeserializeOwned>(
    value: &serde_json::Value,
    prefix: &str,
) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let mut path = prefix.to_owned();
        for segment in err.path().iter() {
            match segment {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut path, key),
                Segment::Unknown => push_key(&mut path, "?"),
            }
        }
        translate(path, &err.inner().to_string())
    })
}

/// Appends `.key` (or just `key` at the root).
pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// `a` + `b` -> `a.b`; `""` + `b` -> `b`.
pub(crate) fn join(path: &str, key: &str) -> String {
    let mut out = path.to_owned();
    push_key(&mut out, key);
    out
}

/// The text between the first pair of backticks, and what follows the closing one.
fn backticked(s: &str) -> Option<(&str, &str)> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some((&s[start..start + len], &s[start + len + 1..]))
}

/// Rewrites a serde error message produced at `path`.
fn translate(path: String, msg: &str) -> ValidationError {
    if let Some(rest) = msg.strip_prefix("missing field ")
        && let Some((name, _)) = backticked(rest)
    {
        return ValidationError::new(join(&path, name), "missing field");
    }
    if let Some(rest) = msg.strip_prefix("unknown field ")
        && let Some((_, hint)) = backticked(rest)
    {
        // serde_path_to_error has already pushed the offending key onto the path.
        let hint = hint.trim_start_matches(',').trim().replace('`', "");
        let message = if hint.is_empty() {
            "unknown field".to_owned()
        } else if hint == "there are no fields" {
            "unknown field, no fields are allowed here".to_owned()
        } else {
            format!("unknown field, {hint}")
        };
        return ValidationError::new(path, message);
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ")
        && let Some((name, hint)) = backticked(rest)
    {
        let hint = hint.trim_start_matches(',').trim().replace('`', "");
        return ValidationError::new(path, format!("unknown variant {name:?}, {hint}"));
    }
    ValidationError::new(path, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translate_messages() {
        let e = translate("spec".into(), "missing field `workload`");
        assert_eq!(e.to_string(), "spec.workload: missing field");
        let e = translate("".into(), "missing field `kind`");
        assert_eq!(e.to_string(), "kind: missing field");
        let e = translate("a.b".into(), "unknown field `b`, expected `x` or `y`");
        assert_eq!(e.to_string(), "a.b: unknown field, expected x or y");
        let e = translate("a.b".into(), "unknown field `b`, there are no fields");
        assert_eq!(
            e.to_string(),
            "a.b: unknown field, no fields are allowed here"
        );
        let e = translate(
            "r".into(),
            "unknown variant `go`, expected `python3` or `nodejs`",
        );
        assert_eq!(
            e.to_string(),
            "r: unknown variant \"go\", expected python3 or nodejs"
        );
        let e = translate("p".into(), "invalid type: string \"x\", expected u16");
        assert_eq!(e.to_string(), "p: invalid type: string \"x\", expected u16");
        // Malformed serde messages pass through unchanged.
        let e = translate("p".into(), "missing field `oops");
        assert_eq!(e.message, "missing field `oops");
    }
}
