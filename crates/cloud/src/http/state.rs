//! What every handler shares.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use verge_store::DynStore;

use super::join::JoinLimiter;
use super::watch::WatchLimit;
use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::pki::ClusterCa;

pub struct AppState {
    pub store: DynStore,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Flips to `true` when the server starts shutting down; watch streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// `/openapi.json`, rendered once.
    pub openapi_json: Bytes,
    /// The cluster CA (signs node certificates) and its PEM.
    pub ca: Arc<ClusterCa>,
    pub ca_pem: String,
    /// Join attempts allowed (per source address, and all together), counted after
    /// the bootstrap token is verified.
    pub join_limiter: JoinLimiter,
    /// Lifetime of node client certificates.
    pub node_cert_validity: time::Duration,
    /// Broker URL handed to joining nodes.
    pub mqtt_url: Option<String>,
    /// Node lifecycle and sync (logs and results of nodes).
    pub nodes: Option<Arc<crate::nodes::NodeManager>>,
    /// The content-addressed artifact store (`/api/v1/artifacts`).
    pub artifacts: Arc<crate::artifacts::ArtifactStore>,
    /// The function runtime and the task controller.
    pub functions: Option<Arc<crate::functions::Functions>>,
    /// Open watch streams per token.
    pub watches: Arc<WatchLimit>,
    /// Seals Secrets for the store and opens them for readers allowed to see values.
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// Buckets and their objects (`/cdn`, the object routes; the S3 listener has its own).
    pub buckets: Arc<crate::buckets::Buckets>,
    /// S3 access keys (`/api/v1/s3keys`).
    pub s3_keys: Arc<crate::s3::keys::AccessKeys>,
    /// Where the S3 API listens (`None`: off), shown by `/api/v1/cluster/info`.
    pub s3_url: Option<String>,
}

pub type SharedState = Arc<AppState>;
