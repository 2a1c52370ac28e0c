//! Path and query extractors whose refusals are API errors (`{reason, field, message}`
//! as JSON, 400), not axum's plain-text rejections: a non-UTF-8 path segment
//! (`/api/v1/apps/%FF`) or an undecodable query gets the same kind of answer as every
//! other bad request. Handlers use these instead of `axum::extract::{Path, Query}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Path` answering 400 with a JSON body naming the parameter.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` answering 400 with a JSON body.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(path_error(e)),
        }
    }
}

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(query_error(e)),
        }
    }
}

fn path_error(e: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    match e {
        PathRejection::FailedToDeserializePathParams(d) => match d.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => {
                ApiError::bad_request(format!("path parameter {key}: not valid UTF-8"))
                    .field(key.clone())
            }
            ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => {
                ApiError::bad_request(format!("path parameter {key}: {}", d.body_text()))
                    .field(key.clone())
            }
            _ => ApiError::bad_request(format!("path: {}", d.body_text())),
        },
        other => ApiError::internal(format!("path parameters: {}", other.body_text())),
    }
}

fn query_error(e: QueryRejection) -> ApiError {
    // e.g. "Failed to deserialize query string: unknown field `x`, expected one of …"
    let text = e.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    ApiError::bad_request(format!("query: {detail}"))
}
