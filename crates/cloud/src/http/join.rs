//! Edge onboarding (`POST /api/v1/join`, `GET /api/v1/cluster/ca`).
//!
//! A node proves it holds a bootstrap token and sends a CSR for its own key; the cloud
//! signs a client certificate whose CN is the node name and records the Node. The
//! endpoint is public (the token is in the body), so it caps the body at 16 KiB and the
//! rate of attempts (KubeEdge CVE-2022-31075 was an unbounded join endpoint). The
//! cluster CA is public too: the edge checks it against the `sha256:` hash it was given
//! out of band before trusting it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

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
use super::resources::object_key;
use super::state::SharedState;
use crate::auth::now_rfc3339;
use crate::error::ApiError;

pub const MAX_JOIN_BODY: usize = 16 * 1024;
/// Annotation holding the serial of the node's current certificate.
pub const CERT_SERIAL_ANNOTATION: &str = "verge.dev/cert-serial";
pub const CERT_EXPIRES_ANNOTATION: &str = "verge.dev/cert-not-after";
/// The serial the node's certificate had before its last rotation (still valid until
/// it expires, so it is revoked with the node too).
pub const PREVIOUS_CERT_SERIAL_ANNOTATION: &str = "verge.dev/previous-cert-serial";
/// Store prefix of revoked certificate serials.
pub const REVOKED_PREFIX: &str = "/system/revoked-certs/";

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

/// A token bucket shared by all join attempts.
pub struct RateLimiter {
    state: Mutex<(f64, Instant)>,
    per_sec: f64,
    burst: f64,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            state: Mutex::new((burst, Instant::now())),
            per_sec,
            burst,
        }
    }

    /// Takes one token; `Err(seconds to wait)` when empty.
    pub fn take(&self) -> Result<(), u64> {
        let Ok(mut st) = self.state.lock() else {
            return Err(1);
        };
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.per_sec;
        st.0 = (st.0 + refill).min(self.burst);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - st.0) / self.per_sec).ceil().max(1.0) as u64)
        }
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
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    if let Err(wait) = st.join_limiter.take() {
        let mut e = ApiError::new(
            Reason::TooManyRequests,
            "too many join attempts; retry later",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let (format, text) = body::read_text(&headers, body, MAX_JOIN_BODY).await?;
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
    // The token first, read-only: nothing else is revealed to a caller without one.
    let granted = st.auth.verify_bootstrap(&req.token)?.labels;
    if !verge_api::is_dns1123_label(&req.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "name: {:?} must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)",
                req.name
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
        .is_some_and(|o| o.metadata.annotations.contains_key(CERT_SERIAL_ANNOTATION))
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
    obj.metadata
        .annotations
        .insert(CERT_SERIAL_ANNOTATION.into(), cert.serial.clone());
    obj.metadata
        .annotations
        .insert(CERT_EXPIRES_ANNOTATION.into(), expires.clone());
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

/// Store prefix of every certificate issued to a node (join and each renewal), so
/// deleting the node revokes all of them, also ones whose delivery was lost.
pub const NODE_CERTS_PREFIX: &str = "/system/node-certs/";

/// Records a certificate issued to `node`.
pub async fn record_node_cert(
    store: &verge_store::DynStore,
    node: &str,
    serial: &str,
    not_after: &str,
) -> Result<(), ApiError> {
    let rec = serde_json::json!({"node": node, "serial": serial, "notAfter": not_after});
    match store
        .create(
            &format!("{NODE_CERTS_PREFIX}{node}/{serial}"),
            serde_json::to_vec(&rec).map_err(ApiError::internal)?.into(),
            Default::default(),
        )
        .await
    {
        Ok(_) | Err(verge_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The serials of every certificate issued to a node: the recorded ones, and the
/// annotations (nodes joined before the records existed).
pub async fn node_serials(
    store: &verge_store::DynStore,
    node: &Object,
) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = [CERT_SERIAL_ANNOTATION, PREVIOUS_CERT_SERIAL_ANNOTATION]
        .iter()
        .filter_map(|a| node.metadata.annotations.get(*a).cloned())
        .collect();
    let prefix = format!("{NODE_CERTS_PREFIX}{}/", node.metadata.name);
    for kv in store.list(&prefix, None).await?.items {
        if let Some(serial) = kv.key.strip_prefix(&prefix)
            && !out.iter().any(|s| s == serial)
        {
            out.push(serial.to_string());
        }
    }
    Ok(out)
}

/// Records a deleted node's certificate serials as revoked (and forgets the issue
/// records). Returns the serials.
pub async fn revoke_node_cert(st: &SharedState, node: &Object) -> Result<Vec<String>, ApiError> {
    let serials = node_serials(&st.store, node).await?;
    for serial in &serials {
        let rec = serde_json::json!({"node": node.metadata.name, "serial": serial, "revokedAt": now_rfc3339()});
        match st
            .store
            .create(
                &format!("{REVOKED_PREFIX}{serial}"),
                serde_json::to_vec(&rec).map_err(ApiError::internal)?.into(),
                Default::default(),
            )
            .await
        {
            Ok(_) | Err(verge_store::Error::AlreadyExists { .. }) => {
                tracing::info!(node = %node.metadata.name, %serial, "node certificate revoked");
            }
            Err(e) => return Err(e.into()),
        }
    }
    for serial in &serials {
        let key = format!("{NODE_CERTS_PREFIX}{}/{serial}", node.metadata.name);
        let _ = st.store.delete(&key, verge_store::Expect::Any).await;
    }
    Ok(serials)
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
