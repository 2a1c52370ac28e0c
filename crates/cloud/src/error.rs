//! The cloud crate's error type, and its mapping onto API answers
//! (`{reason, field, message}` with the matching HTTP status).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use verge_api::{ApiErrorBody, Reason};

/// Errors of the control plane's own machinery (start-up, TLS, files, store).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(#[from] verge_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("config: {0}")]
    Config(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("data dir: {0}")]
    DataDir(#[from] verge_datadir::Error),
    /// Sealing or opening a Secret's value (never carries the value).
    #[error("secret: {0}")]
    Secret(String),
    /// A bucket or object operation refused (the S3 error code and why).
    #[error("{code:?}: {message}")]
    Bucket {
        code: crate::buckets::Code,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl AsRef<std::path::Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().display().to_string();
    move |source| Error::Io { path, source }
}

/// An error answer of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub reason: Reason,
    pub field: Option<String>,
    pub message: String,
    /// Extra header, e.g. `WWW-Authenticate` on 401.
    pub retry_after: Option<u64>,
}

/// `Reason: [field: ]message`, as logs show it (controllers report reconcile errors so).
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: ", self.reason)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Reason::NotFound, message)
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Reason::Invalid, message).field(field)
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(Reason::InternalError, "internal error; see the server log")
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.reason.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn body(&self) -> ApiErrorBody {
        ApiErrorBody {
            reason: self.reason,
            field: self.field.clone(),
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if self.reason == Reason::Unauthorized {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"verge\""),
            );
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<verge_store::Error> for ApiError {
    fn from(e: verge_store::Error) -> Self {
        use verge_store::Error as S;
        match e {
            S::AlreadyExists { .. } => Self::new(Reason::AlreadyExists, "already exists"),
            S::NotFound { .. } => Self::not_found("not found"),
            S::Conflict {
                expected, current, ..
            } => Self::new(
                Reason::Conflict,
                format!(
                    "the object has been modified: resourceVersion {expected} is stale (current {current}); get the latest version and retry"
                ),
            )
            .field("metadata.resourceVersion"),
            S::Compacted {
                requested,
                compacted,
            } => Self::new(
                Reason::Gone,
                format!(
                    "resourceVersion {requested} is too old: history was compacted up to {compacted}; list again and watch from the list's resourceVersion"
                ),
            )
            .field("resourceVersion"),
            S::Closed => Self::new(Reason::Unavailable, "server is shutting down"),
            other => Self::internal(other),
        }
    }
}

impl From<verge_api::Error> for ApiError {
    fn from(e: verge_api::Error) -> Self {
        match e {
            verge_api::Error::Malformed { .. } | verge_api::Error::Limit { .. } => {
                Self::bad_request(e.to_string())
            }
            verge_api::Error::Invalid(v) => Self::invalid(v.field.clone(), v.to_string()),
            verge_api::Error::Selector(m) => {
                Self::bad_request(format!("invalid label selector: {m}")).field("labelSelector")
            }
        }
    }
}
