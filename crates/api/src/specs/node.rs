//! `Node`: an edge machine running the agent. Mostly status; the spec holds what an
//! operator may set.

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Spec of a `Node`. Optional in manifests (absent means empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// When true, the scheduler places no new work on the node (cordon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable: Option<bool>,
}

impl NodeSpec {
    /// Nothing to check yet beyond the typed shape.
    pub fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}
