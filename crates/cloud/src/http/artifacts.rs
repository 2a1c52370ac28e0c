//! `/api/v1/artifacts`: upload (streamed to disk while hashed, capped), list, and
//! download with `Range` support (the store is [`crate::artifacts`]).
//!
//! Downloads accept either a bearer token (any API role) or a node's client
//! certificate: the accept loop ([`super::serve`]) attaches the verified certificate's
//! identity as a [`PeerNode`], and [`authenticate_token_or_node`] checks, on every
//! request, that the node still exists and that the serial was not revoked (the TLS
//! handshake itself only proves the certificate was signed by the cluster CA).

use std::collections::HashMap;
use std::path::PathBuf;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use verge_api::{Kind, Reason};

use super::extract::{ApiPath, ApiQuery};
use super::resources::require_write;
use super::serve::PeerNode;
use super::state::SharedState;
use crate::artifacts::{ArtifactList, RangeRequest, parse_range, parse_sha256};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::nodes::certs::REVOKED_PREFIX;
use crate::objects::object_key;

/// Bytes per chunk of a download.
const CHUNK: usize = 64 * 1024;

/// Removes an upload's temp file unless it was committed.
struct UploadGuard(Option<PathBuf>);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        Reason::PayloadTooLarge,
        format!("artifact exceeds the limit of {max} bytes (verge cloud --artifact-max-bytes)"),
    )
}

/// `POST /api/v1/artifacts[?sha256=HEX]`: stores the body under its SHA-256. 201 when
/// stored, 200 when it already was; 413 over the cap; 422 when `sha256` was given and
/// the body does not hash to it (nothing is stored).
pub async fn upload(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_write(&principal)?;
    if let Some(bad) = q.keys().find(|k| k.as_str() != "sha256") {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {bad:?}; known: sha256"
        ))
        .field(bad.clone()));
    }
    let expected = match q.get("sha256") {
        Some(s) => Some(parse_sha256(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "sha256: {s:?} is not a SHA-256 digest (64 hex digits)"
            ))
            .field("sha256")
        })?),
        None => None,
    };
    let store = st.artifacts.clone();
    let max = store.max_bytes();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced
        && len > max
    {
        super::body::discard(body, len).await;
        return Err(too_large(max));
    }

    let (path, file) = store.create_upload().map_err(ApiError::internal)?;
    let mut guard = UploadGuard(Some(path.clone()));
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > max {
            drop(out);
            drop(guard);
            super::body::discard(body, 0).await;
            return Err(too_large(max));
        }
        hasher.update(&data);
        out.write_all(&data).await.map_err(ApiError::internal)?;
    }
    out.flush().await.map_err(ApiError::internal)?;
    let file = out.into_inner();
    let sha256 = hex::encode(hasher.finalize());
    if let Some(want) = &expected
        && *want != sha256
    {
        return Err(ApiError::invalid(
            "sha256",
            format!("sha256: the body hashes to {sha256}, not {want}; nothing was stored"),
        ));
    }
    file.sync_all().await.map_err(ApiError::internal)?;
    drop(file);
    let commit = {
        let sha256 = sha256.clone();
        tokio::task::spawn_blocking(move || store.commit(&path, &sha256))
    };
    let created = commit
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    guard.0 = None;
    tracing::info!(%sha256, size, created, token_id = %principal.token_id, "artifact uploaded");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({ "sha256": sha256, "size": size })),
    )
        .into_response())
}

/// `GET /api/v1/artifacts`: every stored artifact, `{items: [{sha256, size}]}`.
pub async fn list(State(st): State<SharedState>) -> Result<Json<ArtifactList>, ApiError> {
    let store = st.artifacts.clone();
    let items = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(ArtifactList { items }))
}

/// `GET|HEAD /api/v1/artifacts/{sha256}`: the content, streamed from disk; a single
/// `Range` is answered with 206 (416 when unsatisfiable).
pub async fn download(
    State(st): State<SharedState>,
    ApiPath(param): ApiPath<String>,
    principal: Option<Extension<Principal>>,
    peer: Option<Extension<PeerNode>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sha256 = parse_sha256(&param).ok_or_else(|| {
        ApiError::bad_request(format!(
            "path parameter sha256: {param:?} is not a SHA-256 digest (64 hex digits)"
        ))
        .field("sha256")
    })?;
    // A node (its certificate, no token) gets only what is placed on it; the answer is
    // the same whether or not the artifact exists.
    if let (None, Some(Extension(peer))) = (&principal, &peer) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        if !crate::artifact_access::node_may_fetch(
            &st.store,
            st.artifacts.grants(),
            &peer.name,
            &sha256,
            now,
        )
        .await?
        {
            tracing::warn!(node = %peer.name, %sha256, "node asked for an artifact not placed on it");
            return Err(ApiError::new(
                Reason::Forbidden,
                format!(
                    "artifact sha256:{sha256} is not referenced by anything placed on node {:?}",
                    peer.name
                ),
            ));
        }
    }
    // An uploaded artifact, or a large task result (kept apart, same URL).
    let path = st
        .artifacts
        .locate(&sha256)
        .unwrap_or_else(|| st.artifacts.path(&sha256));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "artifact sha256:{sha256} not found"
            )));
        }
        Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?
        .len();
    let range = headers
        .get(header::RANGE)
        .and_then(|h| h.to_str().ok())
        .map(|h| parse_range(h, size))
        .unwrap_or(RangeRequest::Full);
    let etag = HeaderValue::from_str(&format!("\"{sha256}\"")).map_err(ApiError::internal)?;
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let body = verge_api::ApiErrorBody {
                reason: Reason::BadRequest,
                field: Some("Range".into()),
                message: format!(
                    "range {:?} is not satisfiable: the artifact has {size} bytes",
                    headers
                        .get(header::RANGE)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                ),
            };
            let mut resp = (StatusCode::RANGE_NOT_SATISFIABLE, Json(body)).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).map_err(ApiError::internal)?,
            );
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::ETAG, etag);
            return Ok(resp);
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
        }
        Body::from_stream(file_stream(file, len))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, etag);
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
                .map_err(ApiError::internal)?,
        );
    }
    Ok(resp)
}

/// `len` bytes of `file` from its current position, in chunks.
fn file_stream(
    file: tokio::fs::File,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "artifact file shorter than its size",
            ));
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), (file, left - n as u64))))
    })
}

/// Authentication for downloads: a bearer token when one is sent; otherwise the
/// node's client certificate ([`PeerNode`]), accepted only while the Node exists (and
/// is not being deleted) and the certificate's serial is not revoked.
pub async fn authenticate_token_or_node(
    State(st): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let peer = req.extensions().get::<PeerNode>().cloned();
    match (auth, peer) {
        (None, Some(peer)) => {
            if let Err(e) = check_node(&st, &peer).await {
                return e.into_response();
            }
        }
        (auth, _) => match st.auth.authenticate(auth) {
            Ok(p) => {
                req.extensions_mut().insert(p);
            }
            Err(e) => return e.into_response(),
        },
    }
    next.run(req).await
}

async fn check_node(st: &SharedState, peer: &PeerNode) -> Result<(), ApiError> {
    let deny = |why: String| {
        tracing::warn!(node = %peer.name, serial = %peer.serial, reason = %why, "node certificate refused");
        ApiError::new(Reason::Unauthorized, why)
    };
    if st
        .store
        .get(&format!("{REVOKED_PREFIX}{}", peer.serial))
        .await?
        .is_some()
    {
        return Err(deny(format!(
            "the certificate of node {:?} (serial {}) is revoked",
            peer.name, peer.serial
        )));
    }
    let Some(kv) = st.store.get(&object_key(Kind::Node, &peer.name)).await? else {
        return Err(deny(format!(
            "node {:?} does not exist (deleted?); its certificate is no longer accepted",
            peer.name
        )));
    };
    if crate::objects::kv_to_object(&kv)?.metadata.is_deleting() {
        return Err(deny(format!(
            "node {:?} is being deleted; its certificate is no longer accepted",
            peer.name
        )));
    }
    Ok(())
}
