//! Request bodies: content type (415), size cap (413, checked from Content-Length first
//! and enforced while reading), UTF-8 (400), then decoding into validated objects or
//! values. Decoding is bounded too ([`verge_api::body_bounds`]): a document whose YAML
//! aliases expand beyond twice the body (at least 64 KiB, never past the body cap), or
//! nested deeper than [`verge_api::limits::MAX_DEPTH`], is refused with 400 while it is
//! being built. YAML bodies are capped at [`YAML_MAX_BODY_BYTES`] and large ones decoded
//! off the async workers, one at a time ([`decode`]). Never decode a body here with `serde_norway::from_str` /
//! `serde_json::from_str` into an untyped value: those have no such bound.

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
    let bytes = if format == Format::Yaml && max > YAML_MAX_BODY_BYTES {
        read_limited(headers, body, YAML_MAX_BODY_BYTES)
            .await
            .map_err(|mut e| {
                if e.reason == Reason::PayloadTooLarge {
                    e.message = format!(
                        "yaml request body exceeds the limit of {YAML_MAX_BODY_BYTES} bytes; \
                         send larger bodies as application/json (limit {max} bytes)"
                    );
                }
                e
            })?
    } else {
        read_limited(headers, body, max).await?
    };
    let text = String::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not UTF-8: {e}")))?;
    Ok((format, text))
}

/// YAML bodies larger than this are decoded off the async workers, one at a time.
const YAML_INLINE_BYTES: usize = 16 * 1024;
/// The cap on YAML bodies (JSON bodies get the whole body cap).
pub const YAML_MAX_BODY_BYTES: usize = 512 * 1024;
static YAML_DECODER: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Decodes a body. serde_norway holds all events of a YAML document in memory (up to
/// ~180 bytes per byte of text) and spends CPU on each before any of our bounds can
/// apply, so YAML bodies are capped at [`YAML_MAX_BODY_BYTES`] and those over
/// [`YAML_INLINE_BYTES`] are decoded on a blocking thread, one at a time: at most one
/// large YAML load is in memory, and the async workers keep serving (decision 014).
/// JSON is decoded in place (serde_json builds values directly, ~16x the text at most).
async fn decode<T: Send + 'static>(
    format: Format,
    text: String,
    f: impl FnOnce(&str) -> T + Send + 'static,
) -> Result<T, ApiError> {
    if format == Format::Json || text.len() <= YAML_INLINE_BYTES {
        return Ok(f(&text));
    }
    let _permit = YAML_DECODER
        .acquire()
        .await
        .map_err(|_| ApiError::internal("yaml decoder closed"))?;
    tokio::task::spawn_blocking(move || f(&text))
        .await
        .map_err(ApiError::internal)
}

/// Reads exactly one validated object.
pub async fn read_object(headers: &HeaderMap, body: Body, max: usize) -> Result<Object, ApiError> {
    let (format, text) = read_text(headers, body, max).await?;
    let mut docs = decode(format, text, move |text| {
        verge_api::parse_documents_with(text, format, verge_api::body_bounds(max, text.len()))
    })
    .await??;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err(ApiError::bad_request("request body holds no object")),
        n => Err(ApiError::bad_request(format!(
            "request body holds {n} objects; send exactly one (verge apply splits multi-document files)"
        ))),
    }
}

/// Reads one document as untyped JSON (the status subresource, tasks, token requests),
/// bounded like [`read_object`].
pub async fn read_value(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<serde_json::Value, ApiError> {
    let (format, text) = read_text(headers, body, max).await?;
    Ok(decode(format, text, move |text| {
        verge_api::parse_value(text, format, verge_api::body_bounds(max, text.len()))
    })
    .await??)
}
