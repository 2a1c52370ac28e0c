//! `/api/v1/deadletters`: object events a trigger's target did not take
//! ([`crate::events::deadletters`]).
//! - `GET /api/v1/deadletters[?bucket=B]`: the list, oldest first (any role).
//! - `POST /api/v1/deadletters/{id}/redrive`: deliver again, then drop it (operator
//!   or admin): a function gets a new task (idempotency key
//!   `{event id}-redrive-{n}/{trigger}`), a webhook a new delivery.
//! - `DELETE /api/v1/deadletters/{id}`: drop it (operator or admin).
//!
//! Must not: touch a store key outside the dead letters (ids are checked for their
//! form before the store is read).

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiPath, ApiQuery};
use super::resources::require_write;
use super::state::SharedState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::events::deadletters::{self, DeadLetter, Redriven};

/// `GET /api/v1/deadletters`'s answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    pub items: Vec<DeadLetter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    bucket: Option<String>,
}

pub async fn list(
    State(st): State<SharedState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    if let Some(b) = &q.bucket
        && verge_api::specs::check_bucket_name(b).is_err()
    {
        return Err(ApiError::invalid(
            "bucket",
            format!(
                "{:?} is not a valid bucket name: 3 to 63 characters of a-z, 0-9 and '-', \
                 starting and ending with a letter or digit",
                b.chars().take(80).collect::<String>()
            ),
        ));
    }
    let items = deadletters::list(&st.store, q.bucket.as_deref()).await?;
    Ok(Json(DeadLetterList { items }))
}

pub async fn redrive(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Redriven>, ApiError> {
    require_write(&principal)?;
    let tasks = st.functions.as_ref().map(|f| &f.tasks);
    Ok(Json(deadletters::redrive(&st.store, tasks, &id).await?))
}

pub async fn drop(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<DeadLetter>, ApiError> {
    require_write(&principal)?;
    Ok(Json(deadletters::drop_one(&st.store, &id).await?))
}
