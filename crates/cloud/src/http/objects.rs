//! Objects over the API listener: `/cdn/{bucket}/{*key}` (public buckets, no token,
//! GET/HEAD only; a private bucket answers exactly like a missing object) and the REST
//! object routes under `/api/v1/buckets/{name}/objects` (token; viewers read, operators
//! and admins write): listing, download, streamed upload capped at the bucket's
//! `maxObjectSize`, delete. The header and range logic is
//! [`crate::buckets::http_semantics`]; the storage is [`crate::buckets::Buckets`].
//! Also the mapping of bucket errors onto API errors ([`api_error`]).
//!
//! Never lists or writes through `/cdn`; never touches the filesystem except through
//! the blob store.

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use verge_api::Reason;
use verge_api::specs::{ObjectRecord, check_bucket_name};

use super::extract::{ApiPath, ApiQuery};
use super::resources::require_write;
use super::state::SharedState;
use crate::auth::Principal;
use crate::buckets::http_semantics::{self, DEFAULT_PRIVATE_CACHE_CONTROL};
use crate::buckets::{Code, ListQuery, PutMeta, blobs};
use crate::error::{ApiError, Error};

/// A bucket layer error as the API answers it (decision 032): missing bucket or key
/// 404; object over `maxObjectSize` or bucket over quota 413; bad names and keys 400
/// naming `bucket` or `key`; a non-empty bucket 409.
pub fn api_error(e: Error) -> ApiError {
    let Error::Bucket { code, message } = e else {
        return match e {
            Error::Store(s) => s.into(),
            other => ApiError::internal(other),
        };
    };
    match code {
        Code::NoSuchBucket | Code::NoSuchKey | Code::NoSuchUpload => ApiError::not_found(message),
        Code::EntityTooLarge | Code::QuotaExceeded => {
            ApiError::new(Reason::PayloadTooLarge, message).field("body")
        }
        Code::InvalidBucketName => ApiError::bad_request(message).field("bucket"),
        Code::KeyTooLong => ApiError::bad_request(message).field("key"),
        Code::InvalidArgument => ApiError::bad_request(message),
        Code::MetadataTooLarge => ApiError::bad_request(message).field("metadata"),
        Code::IncompleteBody => ApiError::bad_request(message).field("body"),
        Code::EntityTooSmall | Code::InvalidPart | Code::InvalidPartOrder => {
            ApiError::bad_request(message)
        }
        Code::BucketNotEmpty | Code::BucketAlreadyOwnedByYou | Code::TooManyBuckets => {
            ApiError::new(Reason::Conflict, message)
        }
    }
}

/// `GET|HEAD /cdn/{bucket}/{*key}`: an object of a public bucket.
pub async fn cdn(
    State(st): State<SharedState>,
    path: Result<ApiPath<(String, String)>, ApiError>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    // Whatever is wrong (a bad or private bucket, a bad or missing key), one answer.
    let not_found = || ApiError::not_found("no such public object").into_response();
    let Ok(ApiPath((bucket, key))) = path else {
        return not_found();
    };
    if check_bucket_name(&bucket).is_err() {
        return not_found();
    }
    match st.buckets.spec(&bucket).await {
        Ok(spec) if spec.public => {}
        Ok(_) | Err(Error::Bucket { .. }) => return not_found(),
        Err(e) => return ApiError::internal(e).into_response(),
    }
    let rec = match st.buckets.head(&bucket, &key).await {
        Ok((rec, _)) => rec,
        Err(Error::Bucket { .. }) => return not_found(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    answer(
        &st,
        &rec,
        &method,
        &headers,
        http_semantics::DEFAULT_PUBLIC_CACHE_CONTROL,
    )
    .await
}

/// The answer to a GET/HEAD of `rec`: headers and status from
/// [`http_semantics::plan`], the bytes streamed from its blob.
async fn answer(
    st: &SharedState,
    rec: &ObjectRecord,
    method: &Method,
    headers: &HeaderMap,
    default_cache_control: &str,
) -> Response {
    let plan = http_semantics::plan(rec, headers, default_cache_control);
    let body = match plan.body {
        Some((start, len)) if *method != Method::HEAD && len > 0 => {
            let path = st.buckets.blobs().path(&rec.sha256);
            if let Err(e) = tokio::fs::metadata(&path).await {
                return ApiError::internal(format!("blob {}: {e}", path.display())).into_response();
            }
            Body::from_stream(blobs::read_range(path, start, len))
        }
        _ => Body::empty(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = plan.status;
    let h = resp.headers_mut();
    for (k, v) in plan.headers {
        h.insert(k, v);
    }
    // Uploaded content shares the API's origin: a browser must neither sniff it into
    // something executable nor let an uploaded page script that origin (the web
    // console's) — an HTML object renders in a sandbox of its own (decision 032).
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static("sandbox"),
    );
    resp
}

/// `{name}` of the object routes: a valid bucket name, else 400 naming `bucket`.
fn bucket_param(name: &str) -> Result<(), ApiError> {
    check_bucket_name(name).map_err(|m| ApiError::bad_request(m).field("bucket"))
}

/// One entry of a listing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: String,
    pub content_type: String,
}

/// `GET /api/v1/buckets/{name}/objects`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectList {
    pub items: Vec<ListedObject>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// Pass as `after` to get the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// `GET /api/v1/buckets/{name}/objects?prefix=&delimiter=&after=&limit=`.
pub async fn list(
    State(st): State<SharedState>,
    ApiPath(bucket): ApiPath<String>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
) -> Result<Json<ObjectList>, ApiError> {
    bucket_param(&bucket)?;
    if let Some(bad) = q
        .keys()
        .find(|k| !["prefix", "delimiter", "after", "limit"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {bad:?}; known: prefix, delimiter, after, limit"
        ))
        .field(bad.clone()));
    }
    let limit = match q.get("limit") {
        None => crate::buckets::listing::MAX_KEYS,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::buckets::listing::MAX_KEYS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit: {s:?} is not a number from 1 to {}",
                    crate::buckets::listing::MAX_KEYS
                ))
                .field("limit")
            })?,
    };
    let query = ListQuery {
        prefix: q.get("prefix").cloned().unwrap_or_default(),
        delimiter: q.get("delimiter").filter(|d| !d.is_empty()).cloned(),
        after: q.get("after").cloned().unwrap_or_default(),
        max_keys: limit,
    };
    for (field, v) in [("prefix", &query.prefix), ("after", &query.after)] {
        verge_api::specs::check_object_key(v, true)
            .map_err(|m| ApiError::bad_request(format!("{field} {m}")).field(field))?;
    }
    let listing = st.buckets.list(&bucket, &query).await.map_err(api_error)?;
    Ok(Json(ObjectList {
        items: listing
            .objects
            .into_iter()
            .map(|(key, r)| ListedObject {
                key,
                size: r.size,
                etag: r.etag,
                last_modified: r.last_modified,
                content_type: r.content_type,
            })
            .collect(),
        common_prefixes: listing.common_prefixes,
        truncated: listing.truncated,
        next_after: listing.next_after,
    }))
}

/// `GET|HEAD /api/v1/buckets/{name}/objects/{*key}`.
pub async fn download(
    State(st): State<SharedState>,
    ApiPath((bucket, key)): ApiPath<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    bucket_param(&bucket)?;
    let (rec, _) = st.buckets.head(&bucket, &key).await.map_err(api_error)?;
    Ok(answer(&st, &rec, &method, &headers, DEFAULT_PRIVATE_CACHE_CONTROL).await)
}

/// Request headers kept with an uploaded object and answered with it.
const KEPT_HEADERS: [header::HeaderName; 5] = [
    header::CACHE_CONTROL,
    header::CONTENT_DISPOSITION,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::EXPIRES,
];

/// `PUT /api/v1/buckets/{name}/objects/{*key}`: the raw body becomes the object
/// (streamed to its blob; refused past the bucket's `maxObjectSize` or quota, nothing
/// kept). Answers the object's record.
pub async fn upload(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath((bucket, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ObjectRecord>, ApiError> {
    require_write(&principal)?;
    bucket_param(&bucket)?;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused before the body is read (no such bucket): the body is read and dropped
    // first, as for a 413, so the client sees the answer rather than a reset.
    if let Err(e) = st.buckets.spec(&bucket).await {
        super::body::discard(body, announced.unwrap_or(0)).await;
        return Err(api_error(e));
    }
    let mut kept = BTreeMap::new();
    for name in &KEPT_HEADERS {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            kept.insert(name.as_str().to_owned(), v.to_owned());
        }
    }
    let meta = PutMeta {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        user_metadata: BTreeMap::new(),
        headers: kept,
    };
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(|e| e.to_string()));
    match st.buckets.put(&bucket, &key, stream, announced, meta).await {
        Ok(rec) => {
            tracing::info!(%bucket, key = %key, size = rec.size, token_id = %principal.token_id, "object uploaded");
            Ok(Json(rec))
        }
        Err(e) => Err(api_error(e)),
    }
}

/// `DELETE /api/v1/buckets/{name}/objects/{*key}`: 204, or 404 when there was none.
pub async fn delete(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath((bucket, key)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_write(&principal)?;
    bucket_param(&bucket)?;
    if st.buckets.delete(&bucket, &key).await.map_err(api_error)? {
        tracing::info!(%bucket, key = %key, token_id = %principal.token_id, "object deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no object {key:?} in bucket {bucket:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: Code) -> ApiError {
        api_error(Error::Bucket {
            code,
            message: "m".into(),
        })
    }

    #[test]
    fn bucket_errors_map_to_api_answers() {
        assert_eq!(err(Code::NoSuchBucket).status(), StatusCode::NOT_FOUND);
        assert_eq!(err(Code::NoSuchKey).status(), StatusCode::NOT_FOUND);
        assert_eq!(
            err(Code::QuotaExceeded).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            err(Code::EntityTooLarge).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let e = err(Code::InvalidBucketName);
        assert_eq!(
            (e.status(), e.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("bucket"))
        );
        let e = err(Code::KeyTooLong);
        assert_eq!(
            (e.status(), e.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("key"))
        );
        assert_eq!(err(Code::BucketNotEmpty).status(), StatusCode::CONFLICT);
        assert_eq!(
            api_error(Error::Config("x".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
