//! The imgproxy-compatible endpoint: `GET /img/{signature}/{options}/plain/{source}@{ext}`
//! and `GET /img/{signature}/{options}/{base64 source}.{ext}`.
//!
//! A request is parsed and its signature checked ([`crate::imgproxy::parse`]) before
//! anything is fetched. The output is looked up in the [`DiskCache`] under the canonical
//! option string, the source, the extension and (for `format auto`) whether the client
//! accepts WebP; on a miss the source is fetched, processed on the blocking pool (at most
//! `max_concurrency` at once, so memory stays bounded) and stored.
//!
//! Sources: `http(s)://...` through the SSRF-guarded [`crate::fetch::Fetcher`];
//! `artifact://SHA256` from the artifact store; `fn://NAME?JSON`, the output of the builtin
//! image function `NAME` called with the JSON input — how QR codes, composed covers and
//! video frames are served as URLs (the URL is signed, so its input is trusted);
//! `s3://BUCKET/KEY`, an object read through the host's [`verge_runtime::ObjectSink`]:
//! from any bucket when the URL is signed (the signer is the operator), from public
//! buckets only when it is not (`--img-allow-unsigned`), decision 032. The object's ETag
//! is part of the cache key, so an overwritten object is never served from an old output.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::cache::{self, DiskCache, Entry};
use crate::functions::{self, ImageEnv};
use crate::imgproxy::{self, SigningKeys};
use crate::{Error, Result};
use verge_runtime::objects::parse_s3_url;

/// Name of the server-configured watermark in pipelines (`wm:` option).
pub const WATERMARK_ASSET: &str = "watermark";

/// The one route of [`ImgService::router`], relative to where it is nested.
pub const ROUTE: &str = "/{*path}";

/// Settings of the `/img` endpoint.
pub struct ImgConfig {
    /// Key/salt pairs; the first signs, any verifies.
    pub keys: SigningKeys,
    /// Serve `unsafe`/`_` (unsigned) URLs. Off by default.
    pub allow_unsigned: bool,
    /// The image drawn by the `watermark`/`wm` option (PNG with alpha, usually).
    pub watermark: Option<Vec<u8>>,
    /// Where outputs are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Bound of the cache, in bytes.
    pub cache_max_bytes: u64,
    /// `Cache-Control: public, max-age=...` of successful answers.
    pub max_age: Duration,
    /// Images processed at once; more requests wait.
    pub max_concurrency: usize,
}

impl ImgConfig {
    /// Signed URLs only, no watermark, no cache, one day of client caching,
    /// one image at a time per core.
    pub fn new(keys: SigningKeys) -> Self {
        ImgConfig {
            keys,
            allow_unsigned: false,
            watermark: None,
            cache_dir: None,
            cache_max_bytes: 1 << 30,
            max_age: Duration::from_secs(86_400),
            max_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// The `/img` service; mount [`ImgService::router`] under `/img`.
pub struct ImgService {
    cfg: ImgConfig,
    env: Arc<ImageEnv>,
    cache: Option<DiskCache>,
    permits: Semaphore,
    /// Part of every cache key, so a new watermark never serves old outputs.
    watermark_tag: String,
}

/// A served image.
#[derive(Debug, Clone)]
pub struct Served {
    pub entry: Entry,
    /// Came from the cache.
    pub hit: bool,
}

impl ImgService {
    pub fn new(cfg: ImgConfig, env: Arc<ImageEnv>) -> Result<Arc<Self>> {
        let cache = match &cfg.cache_dir {
            Some(d) => Some(DiskCache::open(d, cfg.cache_max_bytes)?),
            None => None,
        };
        let watermark_tag = match &cfg.watermark {
            Some(w) => hex::encode(&Sha256::digest(w)[..8]),
            None => "-".into(),
        };
        let permits = Semaphore::new(cfg.max_concurrency.max(1));
        Ok(Arc::new(ImgService {
            cfg,
            env,
            cache,
            permits,
            watermark_tag,
        }))
    }

    /// A router answering `GET`/`HEAD` on every path below its prefix: one route,
    /// `/{*path}` (nest it with `Router::nest("/img", ..)`, so requests are counted
    /// under `/img/{*path}`). Its description is [`openapi_paths`].
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(ROUTE, axum::routing::get(handle))
            .with_state(self)
    }

    /// Serves `path` (what follows `/img`) for a client sending `accept`.
    pub async fn serve(&self, path: &str, accept: Option<&str>) -> Result<Served> {
        let req = imgproxy::parse(path, &self.cfg.keys, self.cfg.allow_unsigned)?;
        let accepts_webp = accept.is_some_and(|a| a.contains("image/webp"));
        // Only a URL signed with a configured key may read private buckets.
        let signed =
            !self.cfg.keys.is_empty() && self.cfg.keys.verify(&req.signature, &req.signed_path);
        let cache_key = |version: &str| {
            format!(
                "v1|{}|{}|{version}|{:?}|{}|{}",
                req.options.canonical(),
                req.source,
                req.extension,
                accepts_webp,
                self.watermark_tag
            )
        };
        let object = match parse_s3_url(&req.source) {
            Some(o) => Some(o),
            None if req.source.starts_with("s3://") => {
                return Err(Error::invalid("source", "expected s3://BUCKET/KEY"));
            }
            None => None,
        };
        let mut key = cache_key("-");
        if let (Some((bucket, object_key)), Some(cache)) = (object, &self.cache) {
            let etag = self
                .objects()?
                .etag(bucket, object_key, !signed)
                .await
                .map_err(source_error)?;
            key = cache_key(&etag);
            if let Some(entry) = cache.get(&key) {
                return Ok(Served { entry, hit: true });
            }
        } else if let Some(entry) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return Ok(Served { entry, hit: true });
        }
        let source = match object {
            Some((bucket, object_key)) => {
                let max = self.env.limits.max_input_bytes as u64;
                let o = self
                    .objects()?
                    .get(bucket, object_key, max, !signed)
                    .await
                    .map_err(source_error)?;
                // Cached under the version actually read.
                key = cache_key(&o.etag);
                o.data
            }
            None => self.source(&req.source).await?,
        };
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::invalid("server", "shutting down"))?;
        let env = self.env.clone();
        let watermark = self.cfg.watermark.clone();
        let accept = accept.map(str::to_owned);
        let work =
            tokio::task::spawn_blocking(move || -> Result<(verge_imaging::Encoded, bool)> {
                let info = verge_imaging::info(&source, &env.limits)?;
                // No watermark configured: `wm` fails naming that, not a missing asset.
                let wm = if watermark.is_some() {
                    WATERMARK_ASSET
                } else {
                    ""
                };
                let plan = req
                    .options
                    .plan(req.extension, &info, accept.as_deref(), wm)?;
                let mut assets = std::collections::BTreeMap::new();
                if let Some(w) = watermark {
                    assets.insert(WATERMARK_ASSET.to_string(), w);
                }
                let enc = verge_imaging::process_with_assets(
                    &source,
                    &plan.pipeline,
                    &plan.output,
                    &env.limits,
                    &assets,
                )?;
                Ok((enc, plan.vary_accept))
            });
        let (encoded, vary_accept) = work
            .await
            .map_err(|e| Error::invalid("image", format!("processing failed: {e}")))??;
        drop(permit);
        let entry = Entry {
            content_type: encoded.format.mime().to_string(),
            etag: cache::etag(&encoded.bytes),
            vary_accept,
            body: encoded.bytes,
        };
        if let Some(c) = &self.cache
            && let Err(e) = c.put(&key, &entry)
        {
            tracing::warn!(error = %e, "img cache write failed");
        }
        Ok(Served { entry, hit: false })
    }

    fn objects(&self) -> Result<Arc<dyn verge_runtime::ObjectSink>> {
        self.env
            .objects
            .get()
            .ok_or_else(|| Error::invalid("source", "s3:// sources are not available here"))
    }

    /// The bytes of a source URL.
    async fn source(&self, src: &str) -> Result<Bytes> {
        let max = self.env.limits.max_input_bytes as u64;
        if src.starts_with("http://") || src.starts_with("https://") {
            return Ok(self.env.fetcher.fetch(src).await?.bytes);
        }
        if let Some(sha) = src.strip_prefix("artifact://") {
            let store = self.env.artifacts.as_ref().ok_or_else(|| {
                Error::invalid("source", "artifact sources are not available here")
            })?;
            if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::invalid(
                    "source",
                    "artifact:// needs a sha256 digest (64 hex digits)",
                ));
            }
            return store.read(sha, max).await;
        }
        if let Some(rest) = src.strip_prefix("fn://") {
            let (name, json) = rest.split_once('?').unwrap_or((rest, "{}"));
            if !functions::FUNCTIONS.iter().any(|(n, _)| *n == name) {
                return Err(Error::invalid(
                    "source",
                    format!("fn://{name}: no such image function"),
                ));
            }
            let input: serde_json::Value = serde_json::from_str(json)
                .map_err(|e| Error::invalid("source", format!("fn://{name}: input: {e}")))?;
            let env = self.env.clone();
            let name = name.to_string();
            let out = tokio::task::spawn_blocking(move || {
                functions::call(&env, &name, verge_runtime::Input::Json(input))
            })
            .await
            .map_err(|e| Error::invalid("source", format!("function failed: {e}")))??;
            return match out {
                verge_runtime::Output::Bytes { data, .. } => Ok(data),
                verge_runtime::Output::Json(_) => Err(Error::invalid(
                    "source",
                    "the function returns JSON, not an image",
                )),
            };
        }
        Err(Error::invalid(
            "source",
            "expected http(s)://, artifact://SHA256, s3://BUCKET/KEY or fn://NAME?JSON",
        ))
    }
}

async fn handle(State(svc): State<Arc<ImgService>>, uri: Uri, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match svc.serve(uri.path(), accept).await {
        Ok(served) => {
            let e = &served.entry;
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, hv(&e.etag));
            h.insert(
                header::CACHE_CONTROL,
                hv(&format!("public, max-age={}", svc.cfg.max_age.as_secs())),
            );
            if e.vary_accept {
                h.insert(header::VARY, HeaderValue::from_static("Accept"));
            }
            h.insert(
                "x-verge-cache",
                HeaderValue::from_static(if served.hit { "hit" } else { "miss" }),
            );
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == e.etag || t.trim() == "*"));
            if matches {
                return (StatusCode::NOT_MODIFIED, h).into_response();
            }
            h.insert(header::CONTENT_TYPE, hv(&e.content_type));
            (StatusCode::OK, h, served.entry.body).into_response()
        }
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                tracing::warn!(error = %e, "img request failed");
            }
            let body = serde_json::json!({"reason": e.reason(), "message": e.to_string()});
            (
                status,
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                axum::Json(body),
            )
                .into_response()
        }
    }
}

/// An object store error of an `s3://` source.
fn source_error(e: verge_runtime::ObjectError) -> Error {
    Error::Object {
        field: "source".into(),
        kind: e.kind,
        message: e.message,
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The OpenAPI description of [`ImgService::router`], paths relative to where it is
/// nested (`/{path}`: OpenAPI has no multi-segment parameter, so `path` is documented as
/// one that contains `/`).
pub fn openapi_paths() -> utoipa::openapi::Paths {
    use utoipa::openapi::path::{
        HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
    };
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, KnownFormat, PathsBuilder, Required, SchemaFormat};

    let string = || ObjectBuilder::new().schema_type(Type::String);
    let error_schema = || {
        ObjectBuilder::new()
            .property("reason", string())
            .required("reason")
            .property("message", string())
            .required("message")
    };
    let error = |desc: &str| {
        ResponseBuilder::new()
            .description(desc)
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(error_schema())).build(),
            )
            .build()
    };
    let binary = || {
        ContentBuilder::new()
            .schema(Some(
                string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
            ))
            .build()
    };
    let header = |name: &str, desc: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(desc))
            .schema(Some(string()))
            .build()
    };
    let op = OperationBuilder::new()
        .operation_id(Some("getImage"))
        .summary(Some(
            "An image processed as an imgproxy-compatible signed URL says (no token: the \
             signature is the credential)",
        ))
        .parameter(
            ParameterBuilder::new()
                .name("path")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(
                    "`{signature}/{option}/…/plain/{percent-encoded source}@{ext}` or \
                     `{signature}/{option}/…/{base64url source}.{ext}`; several segments \
                     (send the slashes as they are). Sources: http(s)://, \
                     artifact://SHA256, s3://BUCKET/KEY (signed: any bucket; unsigned: \
                     public buckets only), fn://NAME?JSON",
                ))
                .schema(Some(string()))
                .build(),
        )
        .parameter(header(
            "Accept",
            "with format auto (or no extension): image/webp here gets WebP",
        ))
        .parameter(header("If-None-Match", "an ETag from an earlier answer"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("the image; ETag, Cache-Control, X-Verge-Cache: hit|miss")
                .content("image/jpeg", binary())
                .content("image/png", binary())
                .content("image/webp", binary())
                .build(),
        )
        .response(
            "304",
            ResponseBuilder::new()
                .description("If-None-Match matched")
                .build(),
        )
        .response("400", error("a malformed URL or option"))
        .response(
            "403",
            error("unsigned or badly signed, or a source the server may not fetch"),
        )
        .response("404", error("the source answered 404"))
        .response(
            "413",
            error("the source or the image is larger than allowed"),
        )
        .response("415", error("the source's format is not supported"))
        .response("422", error("the source is not a valid image"))
        .response("502", error("the source could not be fetched"))
        .response("504", error("the source did not answer in time"))
        .build();
    PathsBuilder::new()
        .path("/{path}", PathItem::new(HttpMethod::Get, op))
        .build()
}
