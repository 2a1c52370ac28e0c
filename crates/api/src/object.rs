//! The resource envelope shared by every kind.

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::ObjectMeta;

pub const API_VERSION: &str = "verge.dev/v1";

/// The envelope of every resource. `spec` has been validated against the kind's typed
/// spec (see [`crate::specs`]) by [`crate::decode_object`]; it is kept as JSON so the
/// server and store stay generic over kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Free-form status written through the `/status` subresource.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub status: serde_json::Value,
}

/// The object's [`Kind`], if its `kind` names one exactly.
pub fn kind_of(obj: &Object) -> Option<Kind> {
    Kind::from_kind_name(&obj.kind)
}
