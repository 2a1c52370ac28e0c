//! `/api/v1/s3keys`: create, list and revoke S3 access keys (admin only; a key's secret
//! is shown once, in the answer that creates it).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;
use verge_api::Reason;

use super::body;
use super::extract::ApiPath;
use super::state::SharedState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::s3::keys::{AccessKeys, KeyInfo, NewKey};

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.role.can_manage_tokens() {
        return Ok(());
    }
    tracing::warn!(token_id = %p.token_id, role = p.role.as_str(), "s3 key management denied");
    Err(ApiError::new(
        Reason::Forbidden,
        format!(
            "role {} may not manage S3 access keys; use an admin token",
            p.role.as_str()
        ),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct S3KeyList {
    pub items: Vec<KeyInfo>,
}

pub async fn create(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<KeyInfo>), ApiError> {
    require_admin(&principal)?;
    let value = body::read_value(&headers, body, 64 * 1024).await?;
    let req: NewKey =
        serde_json::from_value(value).map_err(|e| ApiError::invalid("", e.to_string()))?;
    AccessKeys::check(&req).map_err(|(field, m)| ApiError::invalid(&field, m))?;
    let info = st.s3_keys.create(req).await.map_err(ApiError::internal)?;
    tracing::info!(access_key_id = %info.access_key_id, by = %principal.token_id, "s3 access key created");
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn list(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<S3KeyList>, ApiError> {
    require_admin(&principal)?;
    Ok(Json(S3KeyList {
        items: st.s3_keys.list().await.map_err(ApiError::internal)?,
    }))
}

pub async fn revoke(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&principal)?;
    if st.s3_keys.revoke(&id).await.map_err(ApiError::internal)? {
        tracing::info!(access_key_id = %id, by = %principal.token_id, "s3 access key revoked");
        Ok(Json(
            serde_json::json!({"accessKeyId": id, "revoked": true}),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "s3 access key {id:?} not found"
        )))
    }
}
