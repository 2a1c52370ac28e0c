//! `/api/v1/tokens`: create, list and revoke API tokens (admin only).

use std::time::Duration;

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
use crate::auth::{NewToken, Principal, TokenCreateRequest, TokenInfo};
use crate::error::ApiError;

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.role.can_manage_tokens() {
        Ok(())
    } else {
        tracing::warn!(token_id = %p.token_id, role = p.role.as_str(), "token management denied");
        Err(ApiError::new(
            Reason::Forbidden,
            format!(
                "role {} may not manage tokens; use an admin token",
                p.role.as_str()
            ),
        ))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

pub async fn create(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<TokenInfo>), ApiError> {
    require_admin(&principal)?;
    // Bounded like every body (YAML aliases counted), then typed.
    let value = body::read_value(&headers, body, 64 * 1024).await?;
    let req: TokenCreateRequest =
        serde_json::from_value(value).map_err(|e| ApiError::invalid("", e.to_string()))?;
    let (rec, token) = st
        .auth
        .create(NewToken {
            role: req.role,
            ttl: req.ttl_seconds.map(Duration::from_secs),
            description: req.description,
            uses: req.uses,
            labels: req.labels,
        })
        .await?;
    let mut info = TokenInfo::from(&rec);
    info.token = Some(token);
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn list(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<TokenList>, ApiError> {
    require_admin(&principal)?;
    Ok(Json(TokenList {
        items: st.auth.list(),
    }))
}

pub async fn revoke(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<TokenInfo>, ApiError> {
    require_admin(&principal)?;
    let rec = st.auth.revoke(&id).await?;
    Ok(Json(TokenInfo::from(&rec)))
}
