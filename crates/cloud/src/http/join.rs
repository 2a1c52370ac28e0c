//! Edge onboarding (`POST /api/v1/join`, `GET /api/v1/cluster/ca`).
//!
//! A node proves it holds a bootstrap token and sends a CSR for its own key; the cloud
//! signs a client certificate whose CN is the node name and records the Node. The
//! endpoint is public (the token is in the body), so it caps the body at 16 KiB and its
//! arrival at 10 s, and the rate of attempts (KubeEdge CVE-2022-31075 was an unbounded
//! join endpoint) per source address and in all — counted only once the token is
//! verified, so a flood of bad tokens (401) cannot lock anyone else out. The
//! cluster CA is public too: the edge checks it against the `sha256:` hash it was given
//! out of band before trusting it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use verge_api::{API_VERSION, Format, Kind, Object, ObjectMeta, Reason};

use super::body;
use super::serve::PeerAddr;
use super::state::SharedState;
use crate::auth::now_rfc3339;
use crate::error::ApiError;
use crate::nodes::certs::record_node_cert;
use crate::objects::object_key;
use verge_api::names::{ANNOTATION_CERT_NOT_AFTER, ANNOTATION_CERT_SERIAL, FINALIZER_NODE_CLEANUP};

pub const MAX_JOIN_BODY: usize = 16 * 1024;
/// Time allowed for the whole join request body.
const JOIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// Bootstrap token `id.secret`.
    pub token: String,
    /// Node name (DNS-1123 label); must equal the CSR's subject CN.
    pub name: String,
    /// PEM certificate signing request for the node's key.
    pub csr: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub name: String,
    /// PEM client certificate for the node.
    pub certificate: String,
    /// PEM of the cluster CA.
    pub ca_certificate: String,
    pub certificate_expires_at: String,
    /// Where the node connects for the cloud↔edge channel, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_url: Option<String>,
}

/// A token bucket: `rate` per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }

    /// Takes one token; `Err(seconds to wait)` when empty.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// Source addresses tracked at most; beyond, full (idle) buckets are forgotten first.
const MAX_SOURCES: usize = 16_384;

/// The join rate limit, applied once the bootstrap token is verified (so a caller
/// without a valid token cannot spend anyone's budget): a bucket per source address
/// (`per_source` per second, burst 4x) and one for all sources together (`global`,
/// burst 4x), which bounds the CPU that holders of valid tokens can make the cloud
/// spend on signing CSRs.
pub struct JoinLimiter {
    per_source: f64,
    global: f64,
    state: Mutex<Buckets>,
}

struct Buckets {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl JoinLimiter {
    pub fn new(per_source: f64, global: f64) -> Self {
        let now = Instant::now();
        Self {
            per_source,
            global,
            state: Mutex::new(Buckets {
                global: Bucket::full(global * 4.0, now),
                sources: HashMap::new(),
            }),
        }
    }

    /// Takes a join from `source`'s bucket, then from the global one; `Err(seconds to
    /// wait)` when either is empty (a refusal by the global bucket gives the source's
    /// token back).
    pub fn take(&self, source: IpAddr, now: Instant) -> Result<(), u64> {
        let Ok(mut st) = self.state.lock() else {
            return Err(1);
        };
        let source = crate::admission::source_key(source);
        let (rate, burst) = (self.per_source, self.per_source * 4.0);
        if !st.sources.contains_key(&source) && st.sources.len() >= MAX_SOURCES {
            st.sources.retain(|_, b| {
                b.refill(now, rate, burst);
                b.tokens < burst
            });
            if st.sources.len() >= MAX_SOURCES {
                return Err(1);
            }
        }
        let bucket = st
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(burst, now));
        bucket.take(now, rate, burst)?;
        let (grate, gburst) = (self.global, self.global * 4.0);
        if let Err(wait) = st.global.take(now, grate, gburst) {
            if let Some(b) = st.sources.get_mut(&source) {
                b.tokens = (b.tokens + 1.0).min(burst);
            }
            return Err(wait);
        }
        Ok(())
    }
}

pub async fn cluster_ca(State(st): State<SharedState>) -> Response {
    let mut resp = st.ca_pem.clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    resp
}

pub async fn join(
    State(st): State<SharedState>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    // A public endpoint: the body must arrive in time, or the request would hold its
    // connection busy (and safe from eviction) for as long as the client likes.
    let (format, text) = tokio::time::timeout(
        JOIN_BODY_TIMEOUT,
        body::read_text(&headers, body, MAX_JOIN_BODY),
    )
    .await
    .map_err(|_| {
        ApiError::bad_request(format!(
            "the join request body did not arrive within {}s",
            JOIN_BODY_TIMEOUT.as_secs()
        ))
    })??;
    if format != Format::Json {
        return Err(ApiError::new(
            Reason::UnsupportedMediaType,
            "join takes application/json",
        ));
    }
    let req: JoinRequest = serde_json::from_str(&text).map_err(|e| {
        if e.is_data() {
            ApiError::invalid("", e.to_string())
        } else {
            ApiError::bad_request(format!("malformed json: {e}"))
        }
    })?;
    // The token first, read-only: nothing else is revealed to a caller without one,
    // and a caller without one spends no one's join budget.
    let granted = st.auth.verify_bootstrap(&req.token)?.labels;
    let source = peer.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(PeerAddr(a))| a.ip());
    if let Err(wait) = st.join_limiter.take(source, Instant::now()) {
        let mut e = ApiError::new(
            Reason::TooManyRequests,
            "too many join attempts from this address (or from all together); retry later",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    if !verge_api::is_dns1123_label(&req.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "name: {:?} must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)",
                req.name
            ),
        ));
    }
    if verge_api::is_reserved_node_name(&req.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "name: {:?} is reserved and cannot name a node (reserved: {})",
                req.name,
                verge_api::RESERVED_NODE_NAMES.join(", ")
            ),
        ));
    }
    for (k, v) in &req.labels {
        if !verge_api::is_label_key(k) || !verge_api::is_label_value(v) {
            return Err(ApiError::invalid(
                format!("labels.{k}"),
                format!("labels.{k}: invalid label {k}={v}"),
            ));
        }
    }
    if req.labels.len() > 64 {
        return Err(ApiError::invalid("labels", "labels: at most 64"));
    }
    // A node's labels decide which Configs, Apps and Functions it receives: they come
    // from the bootstrap token the admin or operator made, never from the node. A
    // node may repeat them (or a subset), nothing else.
    if let Some(problem) = ungranted_label(&req.labels, &granted) {
        return Err(problem);
    }
    let key = object_key(Kind::Node, &req.name);
    let existing = st.store.get(&key).await?;
    let existing_obj = match &existing {
        Some(kv) => Some(serde_json::from_slice::<Object>(&kv.value).map_err(ApiError::internal)?),
        None => None,
    };
    if existing_obj
        .as_ref()
        .is_some_and(|o| o.metadata.is_deleting())
    {
        return Err(ApiError::new(
            Reason::AlreadyExists,
            format!(
                "node {:?} is being deleted; join again once it is gone",
                req.name
            ),
        )
        .field("name"));
    }
    if existing_obj
        .as_ref()
        .is_some_and(|o| o.metadata.annotations.contains_key(ANNOTATION_CERT_SERIAL))
    {
        return Err(ApiError::new(
            Reason::AlreadyExists,
            format!(
                "node {:?} has already joined; to join again under this name, delete it first (verge delete node {})",
                req.name, req.name
            ),
        )
        .field("name"));
    }
    // Check the CSR before spending a use of the token.
    let cert = st
        .ca
        .sign_node_csr(&req.csr, &req.name, st.node_cert_validity)
        .map_err(|e| ApiError::invalid("csr", format!("csr: {e}")))?;
    let token = st.auth.consume_bootstrap(&req.token).await?;

    let labels = token.labels.clone();
    let expires = cert.not_after.format(&Rfc3339).unwrap_or_default();
    let mut obj = existing_obj.unwrap_or_else(|| Object {
        api_version: API_VERSION.into(),
        kind: Kind::Node.name().into(),
        metadata: ObjectMeta {
            name: req.name.clone(),
            uid: Some(uuid::Uuid::new_v4().to_string()),
            generation: Some(1),
            creation_timestamp: Some(now_rfc3339()),
            ..Default::default()
        },
        spec: serde_json::json!({}),
        status: serde_json::Value::Null,
    });
    obj.metadata.labels.extend(labels);
    // Deleting the Node revokes its certificates first (`nodes::delete`).
    if !obj.metadata.has_finalizer(FINALIZER_NODE_CLEANUP) {
        obj.metadata
            .finalizers
            .push(FINALIZER_NODE_CLEANUP.to_string());
    }
    obj.metadata
        .annotations
        .insert(ANNOTATION_CERT_SERIAL.into(), cert.serial.clone());
    obj.metadata
        .annotations
        .insert(ANNOTATION_CERT_NOT_AFTER.into(), expires.clone());
    obj.metadata.resource_version = None;
    verge_api::validate_object(&obj)
        .map_err(|e| ApiError::invalid(e.field.clone(), e.to_string()))?;
    let value = serde_json::to_vec(&obj).map_err(ApiError::internal)?;
    let labels = obj.metadata.labels.clone();
    match existing {
        Some(kv) => {
            st.store
                .update(
                    &key,
                    value.into(),
                    labels,
                    verge_store::Expect::ModRevision(kv.mod_revision),
                )
                .await?;
        }
        None => {
            st.store.create(&key, value.into(), labels).await?;
        }
    }
    record_node_cert(&st.store, &req.name, &cert.serial, &expires).await?;
    tracing::info!(node = %req.name, token_id = %token.id, serial = %cert.serial, "node joined");
    Ok((
        StatusCode::CREATED,
        Json(JoinResponse {
            name: req.name,
            certificate: cert.cert_pem,
            ca_certificate: st.ca_pem.clone(),
            certificate_expires_at: expires,
            mqtt_url: st.mqtt_url.clone(),
        }),
    ))
}

/// The first label a join asks for that its bootstrap token does not grant, as the
/// error to answer.
fn ungranted_label(
    asked: &BTreeMap<String, String>,
    granted: &BTreeMap<String, String>,
) -> Option<ApiError> {
    let (k, v) = asked.iter().find(|(k, v)| granted.get(*k) != Some(*v))?;
    let grants = if granted.is_empty() {
        "none".to_string()
    } else {
        granted
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    Some(
        ApiError::new(
            Reason::Forbidden,
            format!(
                "labels.{k}: {k}={v} is not granted by the bootstrap token (it grants: {grants}); \
                 node labels come from the token: create one with `verge token create \
                 --bootstrap --label {k}={v}`"
            ),
        )
        .field(format!("labels.{k}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn each_source_has_its_own_bucket() {
        let t0 = Instant::now();
        let l = JoinLimiter::new(1.0, 1000.0);
        for _ in 0..4 {
            assert_eq!(l.take(ip(1), t0), Ok(()));
        }
        assert_eq!(l.take(ip(1), t0), Err(1));
        // Another address is not affected.
        assert_eq!(l.take(ip(2), t0), Ok(()));
        // The first refills at its rate.
        assert_eq!(l.take(ip(1), t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn the_global_bucket_bounds_all_sources_and_refunds_the_source() {
        let t0 = Instant::now();
        let l = JoinLimiter::new(10.0, 1.0);
        for i in 0..4 {
            assert_eq!(l.take(ip(i), t0), Ok(()));
        }
        assert!(l.take(ip(9), t0).is_err());
        // Refused by the global bucket: ip 9 kept its own budget (burst 40).
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.take(ip(9), later), Ok(()));
        let st = l.state.lock().unwrap();
        assert!(st.sources[&ip(9)].tokens >= 38.0);
    }

    #[test]
    fn sources_are_forgotten_once_their_buckets_are_full_again() {
        let t0 = Instant::now();
        let l = JoinLimiter::new(1000.0, 1e9);
        for i in 0..MAX_SOURCES {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            assert_eq!(l.take(a, t0), Ok(()));
        }
        assert_eq!(l.state.lock().unwrap().sources.len(), MAX_SOURCES);
        // All buckets still short of full: a new source must wait.
        assert_eq!(l.take(ip(1), t0), Err(1));
        // A second later every bucket is full again and forgotten.
        assert_eq!(l.take(ip(1), t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(l.state.lock().unwrap().sources.len(), 1);
    }
}
