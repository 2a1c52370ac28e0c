//! Shapes that travel over the HTTP API besides objects themselves.

use serde::{Deserialize, Serialize};

use crate::object::Object;

/// Machine-readable cause of an API error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Reason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    AlreadyExists,
    Conflict,
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    Invalid,
    TooManyRequests,
    InternalError,
    Unavailable,
}

impl Reason {
    pub fn status_code(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::Unauthorized => 401,
            Reason::Forbidden => 403,
            Reason::NotFound => 404,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Gone => 410,
            Reason::PayloadTooLarge => 413,
            Reason::UnsupportedMediaType => 415,
            Reason::Invalid => 422,
            Reason::TooManyRequests => 429,
            Reason::InternalError => 500,
            Reason::Unavailable => 503,
        }
    }
}

/// Body of every 4xx/5xx answer: `{reason, field, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiErrorBody {
    pub reason: Reason,
    /// Field path the error concerns, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// How every command-line tool shows a failed HTTP answer, on one line:
/// `404 NotFound: app "web" not found`, `422 Invalid: spec.version: not semver`.
///
/// `reason` is the answer's `reason` (`NotFound`, or a runtime's `HandlerError`), or the
/// status' canonical phrase when the body had none (`Bad Gateway` becomes
/// `BadGateway`). `field` goes first unless the message already starts with it. Only
/// the message's first line is used: callers show later lines (a traceback) below.
pub fn error_line(status: u16, reason: &str, field: Option<&str>, message: &str) -> String {
    let reason: String = reason.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = format!("{status}");
    if !reason.is_empty() {
        out.push(' ');
        out.push_str(&reason);
    }
    let first = message.lines().next().unwrap_or("").trim();
    let field = field.map(str::trim).filter(|f| !f.is_empty());
    match field {
        Some(f) if !first.starts_with(f) => {
            out.push_str(": ");
            out.push_str(f);
            if !first.is_empty() {
                out.push_str(": ");
                out.push_str(first);
            }
        }
        _ if !first.is_empty() => {
            out.push_str(": ");
            out.push_str(first);
        }
        _ => {}
    }
    out
}

impl ApiErrorBody {
    /// [`error_line`] of this body under `status`.
    pub fn line(&self, status: u16) -> String {
        error_line(
            status,
            &format!("{:?}", self.reason),
            self.field.as_deref(),
            &self.message,
        )
    }
}

#[cfg(test)]
mod error_line_tests {
    use super::*;

    #[test]
    fn one_shape_for_every_answer() {
        assert_eq!(
            error_line(404, "NotFound", None, "app \"web\" not found"),
            "404 NotFound: app \"web\" not found"
        );
        assert_eq!(
            error_line(422, "Invalid", Some("spec.version"), "not semver"),
            "422 Invalid: spec.version: not semver"
        );
        // The field is not repeated when the message starts with it.
        assert_eq!(
            error_line(
                422,
                "Invalid",
                Some("spec.version"),
                "spec.version: not semver"
            ),
            "422 Invalid: spec.version: not semver"
        );
        // No JSON body: the canonical phrase, spaces dropped.
        assert_eq!(
            error_line(502, "Bad Gateway", None, "upstream gone\n"),
            "502 BadGateway: upstream gone"
        );
        assert_eq!(
            error_line(503, "Service Unavailable", None, ""),
            "503 ServiceUnavailable"
        );
        // Only the first line: a traceback goes below, not into the line.
        assert_eq!(
            error_line(
                500,
                "HandlerError",
                None,
                "ValueError: bad\nTraceback (most recent call last):\n  File"
            ),
            "500 HandlerError: ValueError: bad"
        );
        let body = ApiErrorBody {
            reason: Reason::AlreadyExists,
            field: Some("metadata.name".into()),
            message: "task \"x\" already exists".into(),
        };
        assert_eq!(
            body.line(409),
            "409 AlreadyExists: metadata.name: task \"x\" already exists"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// Store revision the list was read at; watch from here to see every later change.
    pub resource_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ObjectList {
    pub api_version: String,
    /// `AppList`, `NodeList`, ...
    pub kind: String,
    pub metadata: ListMeta,
    pub items: Vec<Object>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    /// The stream cannot continue (e.g. compacted past): `object` is an [`ApiErrorBody`].
    Error,
    /// Periodic progress marker carrying the current revision while idle.
    Bookmark,
}

/// One line of a watch stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub event_type: WatchEventType,
    pub object: serde_json::Value,
}
