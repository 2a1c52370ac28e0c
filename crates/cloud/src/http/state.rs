//! What every handler shares.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use verge_store::DynStore;

use crate::auth::Authenticator;
use crate::metrics::Metrics;

pub struct AppState {
    pub store: DynStore,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Flips to `true` when the server starts shutting down; watch streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// `/openapi.json`, rendered once.
    pub openapi_json: Bytes,
}

pub type SharedState = Arc<AppState>;
