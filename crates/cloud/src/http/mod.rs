//! The HTTP API: routes, authentication and metrics middleware, and the accept loop
//! (TLS by default). Handlers live in one module per area.

pub mod artifacts;
mod body;
pub mod functions;
pub mod join;
pub mod resources;
pub mod serve;
pub mod state;
pub mod tokens;
mod watch;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use verge_api::Reason;

use crate::error::ApiError;
use crate::metrics::{RequestLabels, RouteLabels};
pub use state::{AppState, SharedState};

/// Builds the whole router; `mounts` are services nested at their path prefix, outside
/// the API's authentication (they check requests themselves) but inside the metrics.
pub fn router(st: SharedState, mounts: &[(String, Router)]) -> Router {
    let api = Router::new()
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route(
            "/api/v1/artifacts",
            get(artifacts::list).post(artifacts::upload),
        )
        .route(
            "/api/v1/functions/{name}/invoke",
            axum::routing::post(functions::invoke),
        )
        .route(
            "/api/v1/tasks",
            get(functions::list_tasks).post(functions::create_task),
        )
        .route(
            "/api/v1/tasks/{id}",
            get(functions::get_task).delete(functions::cancel_task),
        )
        .route(
            "/api/v1/{plural}",
            get(resources::list).post(resources::create),
        )
        .route(
            "/api/v1/{plural}/{name}",
            get(resources::get)
                .put(resources::update)
                .delete(resources::delete),
        )
        .route(
            "/api/v1/{plural}/{name}/status",
            put(resources::update_status),
        )
        .route(
            "/api/v1/{plural}/{name}/results",
            get(resources::node_results),
        )
        .route("/api/v1/{plural}/{name}/logs", get(resources::app_logs))
        .route("/api/v1/cluster/info", get(cluster_info))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(st.clone(), authenticate));
    let public = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/join", axum::routing::post(join::join))
        .route("/api/v1/cluster/ca", get(join::cluster_ca));
    // Readable with a token or a node's client certificate.
    let node_readable = Router::new()
        .route("/api/v1/artifacts/{sha256}", get(artifacts::download))
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            artifacts::authenticate_token_or_node,
        ));
    let mut all = api.merge(public).merge(node_readable);
    for (prefix, service) in mounts {
        all = all.nest_service(prefix, service.clone());
    }
    all.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(st.clone(), track))
        .with_state(st)
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
    }))
    .into_response()
}

async fn metrics(State(st): State<SharedState>) -> Response {
    let mut resp = st.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
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
