//! The node's local API: HTTP/1.1 on the unix socket `DATA_DIR/edge.sock`
//! (mode 0600, in the 0700 data dir: only the node's own user can reach it), served
//! with hyper directly (no framework), plus the client ([`get`]) the CLI uses.
//!
//! | route                          | answer                                             |
//! |--------------------------------|----------------------------------------------------|
//! | `GET /v1/configs`              | JSON array of the stored `Config` objects          |
//! | `GET /v1/configs/{name}`       | one `Config` object                                |
//! | `GET /v1/objects/{kind}`       | JSON array of the stored objects of `kind`         |
//! | `GET /v1/objects/{kind}/{name}`| one object                                         |
//! | `GET /v1/status`               | `{node, appliedRevision, connected, queue, lastSync, uplinkStopped?}` |
//! | `POST /v1/results`             | queue a task result for the cloud: `202 {seq}`      |
//! | `POST /v1/functions/{name}/invoke` | run a function placed on this node: its output  |
//!
//! Invoke takes JSON (`Content-Type: application/json`, the default) or any bytes with
//! their content type, at most [`MAX_INVOKE_BODY`]; it answers the output (JSON, or
//! bytes with their type), or `{reason, message, error?, logs?}` with 404 (function not
//! on this node), 400 (bad input), 429 + `Retry-After` (queue full), 500 (the handler
//! raised: `error: {type, message, traceback}`), 502 (the worker crashed), 503 (the
//! code does not load), 504 (timeout).
//!
//! Secrets are listed with their keys only (every value `""`): the values are for the
//! workloads that reference them, not for readers of this API.
//!
//! `{kind}` is a kind name (`Config`, `App`) or a plural/singular the API knows
//! (`apps`). Objects are looked up by the kind *string*, so kinds this build does not
//! know are served too. Errors are JSON `{reason, message}` (404 unknown route or
//! object, 405 wrong method, 413 a body on a GET or a result body over
//! [`MAX_RESULT_BODY`], 400 a malformed result naming the field, 507 the queue refused
//! it). A result body is `{id, ok, output?, error?, startedAtMs?, finishedAtMs?}`; the
//! node gives it the next per-node sequence number and the store-and-forward queue
//! delivers it once the cloud is reachable (the cloud drops redeliveries by `seq`).
//! Headers are
//! capped at 16 KiB and must arrive within 10 s (hyper's timer, which also closes a
//! keep-alive connection idle that long), a body within 30 s (408); at most
//! [`MAX_CONNECTIONS`] connections are served at once, more are closed on accept. No
//! per-address cap: the socket is 0600 in the 0700 data dir, so every client is the
//! node's own user (decision 012).

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::error::{Error, Result, chain, io_err};
use crate::now_ms;
use crate::state::EdgeState;

/// Most connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest answer the client helper reads.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEADER_BYTES: usize = 16 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `POST /v1/results` body (leaves room under the `result` channel's cap for
/// the envelope and the sequence number).
pub const MAX_RESULT_BODY: usize = verge_proto::topics::MAX_RESULT_PAYLOAD - 4096;
/// Largest `POST /v1/functions/{name}/invoke` body.
pub const MAX_INVOKE_BODY: usize = 6 * 1024 * 1024;

/// A task result handed to the node by a local program.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResultReport {
    id: String,
    ok: bool,
    #[serde(default)]
    output: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    started_at_ms: Option<i64>,
    #[serde(default)]
    finished_at_ms: Option<i64>,
}

/// The kind name of configuration objects.
pub const CONFIG_KIND: &str = "Config";

/// A bound local API, ready to [`serve`](LocalApi::serve).
pub struct LocalApi {
    listener: UnixListener,
    path: PathBuf,
    state: Arc<EdgeState>,
}

impl std::fmt::Debug for LocalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApi")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalApi {
    /// Binds the socket (must run inside a tokio runtime). A stale socket left by a
    /// crashed run is removed; a live one (another process answers on it) is an
    /// error, and so is a non-socket file at that path.
    pub fn bind(socket: &Path, state: Arc<EdgeState>) -> Result<LocalApi> {
        match std::fs::symlink_metadata(socket) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                    return Err(Error::LocalApi(format!(
                        "{}: another process is serving this socket (is `verge-edge run` already running on this data dir?)",
                        socket.display()
                    )));
                }
                std::fs::remove_file(socket).map_err(io_err(socket))?;
            }
            Ok(_) => {
                return Err(Error::LocalApi(format!(
                    "{}: exists and is not a socket; remove it",
                    socket.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(socket)(e)),
        }
        let listener = UnixListener::bind(socket).map_err(io_err(socket))?;
        // bind(2) cannot take a mode; the 0700 data dir already keeps others out of the
        // window before this chmod.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(socket))?;
        Ok(LocalApi {
            listener,
            path: socket.to_path_buf(),
            state,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets open requests
    /// finish (at most 5 s) and removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let LocalApi {
            listener,
            path,
            state,
        } = self;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "local API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!("local API: too many connections; closing one");
                continue;
            };
            let state = state.clone();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| handle(state.clone(), req)),
                );
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "local API connection");
                }
                drop(slot);
            });
        }
        drop(listener);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket");
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("local API: connections still open after the drain timeout");
        }
        Ok(())
    }
}

type Resp = Response<Full<Bytes>>;

#[derive(Serialize)]
struct ErrorBody<'a> {
    reason: &'a str,
    message: String,
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Resp {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = Response::new(Full::new(Bytes::from(bytes)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("encoding the answer: {e}"),
        ),
    }
}

fn error(status: StatusCode, reason: &str, message: String) -> Resp {
    let body = serde_json::to_vec(&ErrorBody { reason, message }).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn not_found(message: String) -> Resp {
    error(StatusCode::NOT_FOUND, "NotFound", message)
}

/// `Config`, `App`, or what the API maps a user spelling to (`apps` → `App`).
fn kind_name(segment: &str) -> String {
    match verge_api::Kind::from_user(segment) {
        Some(k) => k.name().to_owned(),
        None if segment.eq_ignore_ascii_case("config")
            || segment.eq_ignore_ascii_case("configs") =>
        {
            CONFIG_KIND.to_owned()
        }
        None => segment.to_owned(),
    }
}

/// An object as this API shows it: Secrets without their values.
fn shown(obj: &verge_api::Object) -> verge_api::Object {
    if obj.kind == crate::secrets::SECRET_KIND {
        verge_api::specs::redacted(obj)
    } else {
        obj.clone()
    }
}

enum Route {
    /// `GET` routes, answered from the store and state.
    Read(Read),
    /// `POST /v1/results`.
    Results,
    /// `POST /v1/functions/{name}/invoke`.
    Invoke(String),
}

enum Read {
    List(String),
    Get(String, String),
    Status,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segs.as_slice() {
        ["", "v1", "results"] => Some(Route::Results),
        ["", "v1", "functions", name, "invoke"] if !name.is_empty() => {
            Some(Route::Invoke((*name).into()))
        }
        ["", "v1", "status"] => Some(Route::Read(Read::Status)),
        ["", "v1", "configs"] => Some(Route::Read(Read::List(CONFIG_KIND.into()))),
        ["", "v1", "configs", name] if !name.is_empty() => {
            Some(Route::Read(Read::Get(CONFIG_KIND.into(), (*name).into())))
        }
        ["", "v1", "objects", kind] if !kind.is_empty() => {
            Some(Route::Read(Read::List(kind_name(kind))))
        }
        ["", "v1", "objects", kind, name] if !kind.is_empty() && !name.is_empty() => {
            Some(Route::Read(Read::Get(kind_name(kind), (*name).into())))
        }
        _ => None,
    }
}

async fn handle(state: Arc<EdgeState>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let Some(route) = route(&path) else {
        return Ok(not_found(format!(
            "no route {path}; see GET /v1/status, /v1/configs, /v1/objects/{{kind}}, POST /v1/results"
        )));
    };
    let (allowed, read, invoke) = match route {
        Route::Results => (Method::POST, None, None),
        Route::Invoke(name) => (Method::POST, None, Some(name)),
        Route::Read(r) => (Method::GET, Some(r), None),
    };
    if req.method() != allowed {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} {path}: use {allowed}", req.method()),
        );
        if let Ok(v) = http::HeaderValue::from_str(allowed.as_str()) {
            resp.headers_mut().insert(ALLOW, v);
        }
        return Ok(resp);
    }
    if let Some(name) = invoke {
        return Ok(invoke_function(state, &name, req).await);
    }
    let Some(read) = read else {
        return Ok(post_result(state, req).await);
    };
    if !req.body().is_end_stream() {
        return Ok(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("GET {path} takes no request body"),
        ));
    }
    // The store and queue block on disk: off the async workers.
    let answer = tokio::task::spawn_blocking(move || -> Result<Resp> {
        Ok(match read {
            Read::Status => json_response(StatusCode::OK, &state.report()?),
            Read::List(kind) => {
                let list: Vec<verge_api::Object> =
                    state.store().list(&kind)?.iter().map(shown).collect();
                json_response(StatusCode::OK, &list)
            }
            Read::Get(kind, name) => match state.store().get(&kind, &name)? {
                Some(obj) => json_response(StatusCode::OK, &shown(&obj)),
                None => not_found(format!("{kind} {name:?} not found on this node")),
            },
        })
    })
    .await;
    Ok(match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(Error::Invalid(m))) => not_found(m),
        Ok(Err(e)) => {
            tracing::error!(error = %e, %path, "local API");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("handler failed: {e}"),
        ),
    })
}

fn bad_request(message: String) -> Resp {
    error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// The whole request body, at most `max` bytes (else 413 naming `what`), within
/// [`BODY_TIMEOUT`] (else 408: a stalled client must not hold one of the few
/// connection slots for ever).
async fn read_body(req: Request<Incoming>, max: usize, what: &str) -> Result<Bytes, Resp> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), max).collect());
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!("{what} did not arrive within {}s", BODY_TIMEOUT.as_secs()),
        ));
    };
    match read {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("{what} may be at most {max} bytes"),
        )),
        Err(e) => Err(bad_request(format!("reading the body: {e}"))),
    }
}

/// A JSON body as a value, bounded like the cloud's bodies (nesting at most
/// [`verge_api::limits::MAX_DEPTH`] levels), so what is queued for the cloud always
/// decodes there.
fn bounded_json(body: &[u8], max: usize) -> std::result::Result<serde_json::Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    verge_api::parse_value(
        text,
        verge_api::Format::Json,
        verge_api::body_bounds(max, text.len()),
    )
    .map_err(|e| e.to_string())
}

/// `POST /v1/results`: checks the report, gives it the next sequence number and
/// queues it for the cloud.
async fn post_result(state: Arc<EdgeState>, req: Request<Incoming>) -> Resp {
    let body = match read_body(req, MAX_RESULT_BODY, "a result body").await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let report: ResultReport = match bounded_json(&body, MAX_RESULT_BODY)
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return bad_request(format!("result: {e}")),
    };
    let now = now_ms();
    let started = report.started_at_ms.unwrap_or(now);
    let result = verge_proto::TaskResult {
        id: report.id,
        ok: report.ok,
        output: report.output,
        error: report.error,
        started_at_ms: started,
        finished_at_ms: report.finished_at_ms.unwrap_or(now.max(started)),
        seq: 0,
        ..Default::default()
    };
    // Checked with seq 0; the real seq adds at most 19 digits, within the headroom
    // MAX_RESULT_BODY leaves.
    if let Err(e) = verge_proto::encode_checked(&verge_proto::Message::TaskResult(result.clone())) {
        return bad_request(format!("result: {e}"));
    }
    let st = state.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        st.queue()
            .push_with(verge_proto::Channel::Result, now, |seq| {
                let mut r = result;
                r.seq = seq;
                verge_proto::encode(&verge_proto::Message::TaskResult(r))
            })
    })
    .await;
    match pushed {
        Ok(Ok(seq)) => {
            state.notify_queued();
            json_response(StatusCode::ACCEPTED, &serde_json::json!({ "seq": seq }))
        }
        Ok(Err(e @ Error::QueueFull { .. })) => {
            error(StatusCode::INSUFFICIENT_STORAGE, "QueueFull", e.to_string())
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("handler failed: {e}"),
        ),
    }
}

/// `POST /v1/functions/{name}/invoke` (see the module docs).
async fn invoke_function(state: Arc<EdgeState>, name: &str, req: Request<Incoming>) -> Resp {
    let Some(runtime) = state.runtime() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "functions do not run on this node".into(),
        );
    };
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = match read_body(req, MAX_INVOKE_BODY, "an invoke body").await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let input = if content_type.split(';').next().unwrap_or("").trim() == "application/json" {
        if body.is_empty() {
            verge_runtime::Input::Json(serde_json::Value::Null)
        } else {
            match bounded_json(&body, MAX_INVOKE_BODY) {
                Ok(v) => verge_runtime::Input::Json(v),
                Err(e) => return bad_request(format!("body: not valid JSON ({e})")),
            }
        }
    } else {
        verge_runtime::Input::Bytes {
            content_type,
            data: body,
        }
    };
    match runtime.invoke(name, input).await {
        Ok(inv) => {
            let mut resp = match inv.output {
                verge_runtime::Output::Json(v) => json_response(StatusCode::OK, &v),
                verge_runtime::Output::Bytes { content_type, data } => {
                    let mut r = Response::new(Full::new(data));
                    if let Ok(v) = http::HeaderValue::from_str(&content_type) {
                        r.headers_mut().insert(CONTENT_TYPE, v);
                    }
                    r
                }
            };
            resp.headers_mut().insert(
                "x-verge-cold",
                http::HeaderValue::from_static(if inv.cold { "true" } else { "false" }),
            );
            resp
        }
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = json_response(status, &e.to_json());
            if let Some(secs) = e.retry_after_secs() {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
            }
            resp
        }
    }
}

/// `GET path` on the local API at `socket`; the JSON answer, or the API's error
/// message as [`Error::LocalApi`].
pub async fn get(socket: &Path, path: &str) -> Result<serde_json::Value> {
    request(socket, Method::GET, path, None).await
}

/// `POST path` with a JSON body on the local API at `socket`.
pub async fn post(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value> {
    let bytes = serde_json::to_vec(body).map_err(|e| Error::Json {
        what: format!("body for {path}"),
        source: e,
    })?;
    request(socket, Method::POST, path, Some(Bytes::from(bytes))).await
}

async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<serde_json::Value> {
    tokio::time::timeout(CLIENT_TIMEOUT, request_inner(socket, method, path, body))
        .await
        .map_err(|_| {
            Error::LocalApi(format!(
                "{}: no answer within {}s",
                socket.display(),
                CLIENT_TIMEOUT.as_secs()
            ))
        })?
}

async fn request_inner(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        Error::LocalApi(format!(
            "cannot connect to {}: {e} (is `verge-edge run` running with this --data-dir?)",
            socket.display()
        ))
    })?;
    let api_err = |e: &(dyn std::error::Error + 'static)| {
        Error::LocalApi(format!("{}: {}", socket.display(), chain(e)))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| api_err(&e))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| Error::Invalid(format!("local API path {path:?}: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| api_err(&e))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| api_err(&*e))?
        .to_bytes();
    drop(sender);
    conn.abort();
    if !status.is_success() {
        // `404 NotFound: ...`: the one shape the CLIs give HTTP errors.
        let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let text = |k: &str| {
            v.as_ref()
                .and_then(|v| v.get(k))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        };
        let message = text("message").unwrap_or_else(|| {
            String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(512)
                .collect()
        });
        let reason =
            text("reason").unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        return Err(Error::LocalApi(verge_api::error_line(
            status.as_u16(),
            &reason,
            text("field").as_deref(),
            &message,
        )));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Json {
        what: format!("local API answer to {path}"),
        source: e,
    })
}

#[cfg(test)]
mod tests;
