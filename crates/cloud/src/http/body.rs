//! Request bodies: content type (415), size cap (413, checked from Content-Length first
//! and enforced while reading), UTF-8 (400), then decoding into validated objects.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use verge_api::{Format, Object, Reason};

use crate::error::ApiError;

/// Maps a Content-Type header to a manifest format.
pub fn content_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::new(
            Reason::UnsupportedMediaType,
            "missing Content-Type: send application/json or application/yaml",
        ));
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(Format::Yaml),
        other => Err(ApiError::new(
            Reason::UnsupportedMediaType,
            format!(
                "unsupported Content-Type {other:?}: send application/json or application/yaml"
            ),
        )),
    }
}

/// Reads the whole body, refusing more than `max` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            Reason::PayloadTooLarge,
            format!("request body exceeds the limit of {max} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        discard(body, len).await;
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read request body: {e}"
        ))),
    }
}

/// Oversized bodies up to this many bytes are read and thrown away before answering 413,
/// so that clients which write the whole body before reading (most do) see the answer
/// instead of a broken pipe. Beyond it, or after `DISCARD_TIME`, the connection is
/// simply closed.
const DISCARD_MAX: u64 = 64 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn discard(mut body: Body, announced: u64) {
    if announced > DISCARD_MAX {
        return;
    }
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                seen += d.len() as u64;
                if seen > DISCARD_MAX {
                    break;
                }
            }
        }
    })
    .await;
}

/// Reads a text body of a manifest format.
pub async fn read_text(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<(Format, String), ApiError> {
    let format = content_format(headers)?;
    let bytes = read_limited(headers, body, max).await?;
    let text = String::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not UTF-8: {e}")))?;
    Ok((format, text))
}

/// Reads exactly one validated object.
pub async fn read_object(headers: &HeaderMap, body: Body, max: usize) -> Result<Object, ApiError> {
    let (format, text) = read_text(headers, body, max).await?;
    let mut docs = verge_api::parse_documents(&text, format)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err(ApiError::bad_request("request body holds no object")),
        n => Err(ApiError::bad_request(format!(
            "request body holds {n} objects; send exactly one (verge apply splits multi-document files)"
        ))),
    }
}

/// Reads one document as untyped JSON (for the status subresource).
pub async fn read_value(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<serde_json::Value, ApiError> {
    let (format, text) = read_text(headers, body, max).await?;
    match format {
        Format::Json => serde_json::from_str(&text)
            .map_err(|e| ApiError::bad_request(format!("malformed json: {e}"))),
        Format::Yaml => serde_norway::from_str(&text)
            .map_err(|e| ApiError::bad_request(format!("malformed yaml: {e}"))),
    }
}
