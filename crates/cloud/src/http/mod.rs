//! The HTTP API: the router (built from the route table in [`routes`], which
//! [`openapi`] documents), the authentication and metrics middleware, health, metrics,
//! the JSON 404/405 fallbacks, and the accept loop (TLS by default). Handlers live in
//! one module per area.

pub mod artifacts;
mod body;
pub mod deadletters;
pub mod extract;
pub mod functions;
pub mod join;
pub mod objects;
pub mod openapi;
pub mod resources;
pub mod routes;
pub mod s3keys;
pub mod serve;
pub mod state;
pub mod tokens;
pub mod watch;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Extension, Router};
use verge_api::{Kind, Reason};

use crate::error::ApiError;
use crate::metrics::{RequestLabels, RouteLabels};
use routes::{Access, Op, Route};
pub use state::{AppState, SharedState};

/// A service the binary nests under `prefix` (the `/img` endpoint): outside the API's
/// authentication (it checks requests itself) but inside the metrics, which count it
/// under its own route (`/img/{*path}`), and in `/openapi.json` with `paths`.
#[derive(Clone)]
pub struct Mount {
    /// Where it is nested, e.g. `/img`.
    pub prefix: String,
    /// Its routes, relative to `prefix` (`/{*path}`).
    pub router: Router,
    /// Its operations, paths relative to `prefix` (`/{path}`).
    pub paths: utoipa::openapi::Paths,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds the whole router: every route of [`routes::table`], then the `mounts`.
pub fn router(st: SharedState, mounts: &[Mount]) -> Router {
    let mut api: Router<SharedState> = Router::new();
    for r in routes::table() {
        api = api.route(&r.path, method_router(&st, &r));
    }
    let mut all: Router = api.with_state(st.clone());
    for m in mounts {
        all = all.nest(&m.prefix, m.router.clone());
    }
    all.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(st, track))
}

/// The handler of `r.op` for `r.method`, behind the authentication `r.access` asks for.
fn method_router(st: &SharedState, r: &Route) -> MethodRouter<SharedState> {
    let m = MethodFilter::try_from(r.method.clone())
        .unwrap_or_else(|_| panic!("route table: unsupported method {}", r.method));
    let kind = |mr: MethodRouter<SharedState>, k: Kind| mr.layer(Extension(k));
    let mr = match r.op {
        Op::List(k) => kind(on(m, resources::list), k),
        Op::Create(k) => kind(on(m, resources::create), k),
        Op::Get(k) => kind(on(m, resources::get), k),
        Op::Replace(k) => kind(on(m, resources::update), k),
        Op::Delete(k) => kind(on(m, resources::delete), k),
        Op::ReplaceStatus(k) => kind(on(m, resources::update_status), k),
        Op::Logs(k) => kind(on(m, resources::app_logs), k),
        Op::NodeResults => on(m, resources::node_results),
        Op::Invoke => on(m, functions::invoke),
        Op::CreateTask => on(m, functions::create_task),
        Op::CancelTask => on(m, functions::cancel_task),
        Op::ListTokens => on(m, tokens::list),
        Op::CreateToken => on(m, tokens::create),
        Op::RevokeToken => on(m, tokens::revoke),
        Op::ListS3Keys => on(m, s3keys::list),
        Op::CreateS3Key => on(m, s3keys::create),
        Op::RevokeS3Key => on(m, s3keys::revoke),
        Op::ListArtifacts => on(m, artifacts::list),
        Op::UploadArtifact => on(m, artifacts::upload),
        Op::GetArtifact => on(m, artifacts::download),
        Op::Cdn => on(m, objects::cdn),
        Op::ListObjects => on(m, objects::list),
        Op::GetObject => on(m, objects::download),
        Op::PutObject => on(m, objects::upload),
        Op::DeleteObject => on(m, objects::delete),
        Op::ListDeadLetters => on(m, deadletters::list),
        Op::RedriveDeadLetter => on(m, deadletters::redrive),
        Op::DropDeadLetter => on(m, deadletters::drop),
        Op::Join => on(m, join::join),
        Op::ClusterCa => on(m, join::cluster_ca),
        Op::ClusterInfo => on(m, cluster_info),
        Op::Metrics => on(m, metrics),
        Op::Healthz => on(m, healthz),
        Op::Readyz => on(m, readyz),
        Op::OpenApi => on(m, openapi),
    };
    match r.access {
        Access::Public => mr,
        Access::Token => mr.route_layer(middleware::from_fn_with_state(st.clone(), authenticate)),
        Access::TokenOrNode => mr.route_layer(middleware::from_fn_with_state(
            st.clone(),
            artifacts::authenticate_token_or_node,
        )),
    }
}

async fn authenticate(State(st): State<SharedState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match st.auth.authenticate(header) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

async fn track(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    if code == 401 || code == 403 {
        st.metrics.auth_denials.inc();
    }
    st.metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            code,
        })
        .inc();
    st.metrics
        .http_latency
        .get_or_create(&RouteLabels { route, method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<SharedState>) -> Response {
    match st.store.current_revision().await {
        Ok(_) if !*st.shutdown.borrow() => "ok\n".into_response(),
        Ok(_) => ApiError::new(Reason::Unavailable, "shutting down").into_response(),
        Err(e) => {
            ApiError::new(Reason::Unavailable, format!("store not ready: {e}")).into_response()
        }
    }
}

/// What any authenticated client may know about the control plane itself: its
/// version and whether its function workers run sandboxed.
async fn cluster_info(State(st): State<SharedState>) -> Response {
    let sandbox = match &st.functions {
        Some(f) => serde_json::to_value(f.host.runtime().sandbox_status().await)
            .unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    };
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "functionSandbox": sandbox,
        "s3": st.s3_url.as_ref().map(|url| serde_json::json!({
            "endpoint": url,
            "region": crate::s3::REGION,
        })),
    }))
    .into_response()
}

/// `/metrics`: OpenMetrics for a scraper that asks for it (Prometheus does), the
/// Prometheus text format otherwise.
async fn metrics(State(st): State<SharedState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Exposition::negotiate(accept);
    let mut resp = st.metrics.encode(format).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

async fn openapi(State(st): State<SharedState>) -> Response {
    let mut resp = st.openapi_json.clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    // `/api/v1/{plural}…` with a plural no kind has: name the kinds.
    if let Some(plural) = uri
        .path()
        .strip_prefix("/api/v1/")
        .and_then(|rest| rest.split('/').next())
        && !routes::table()
            .iter()
            .any(|r| r.path.starts_with(&format!("/api/v1/{plural}")))
        && let Err(e) = resources::kind_from_plural(plural)
    {
        return e;
    }
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let body = verge_api::ApiErrorBody {
        reason: Reason::BadRequest,
        field: None,
        message: format!("method {method} is not allowed on {}", uri.path()),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
