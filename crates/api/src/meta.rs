//! `metadata`: the part of every resource shared across kinds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metadata every resource carries. `name`, `labels`, `annotations` and `finalizers` are
/// set by the user; `uid`, `generation`, `resourceVersion`, `creationTimestamp` and
/// `deletionTimestamp` are set by the server (values a client sends for them are
/// ignored, except `resourceVersion` on update, which is the compare-and-swap
/// precondition). Finalizers under the `verge.dev/` domain are the server's too: a
/// client can neither add nor remove them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// DNS-1123 label: lowercase alphanumerics and '-', at most 63 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Bumped by the server on every spec change (not on status or metadata changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Store revision of the last change to this object, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// What must happen before the object goes away: while any is listed, `DELETE`
    /// only sets `deletionTimestamp`, and whoever owns a finalizer removes it once its
    /// work is done; the object is deleted when none is left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// RFC 3339 UTC: when deletion was asked for (the object is being deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Whether deletion was asked for (`deletionTimestamp` is set).
    pub fn is_deleting(&self) -> bool {
        self.deletion_timestamp.is_some()
    }

    pub fn has_finalizer(&self, name: &str) -> bool {
        self.finalizers.iter().any(|f| f == name)
    }
}
