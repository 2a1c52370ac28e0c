//! Spec pieces shared by several kinds: artifact and secret references, task targets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::specs::one_of;
use crate::validate::{check_dns_label, check_http_url, check_label_map};

/// A content-addressed artifact (tarball or binary) an agent downloads and verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArtifactRef {
    /// SHA-256 of the artifact: 64 lowercase hex digits.
    pub sha256: String,
    /// Where to fetch it (http or https); without it, the artifact store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl ArtifactRef {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        let sha_ok = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !sha_ok {
            return Err(ValidationError::new(
                format!("{path}.sha256"),
                "must be 64 lowercase hexadecimal digits",
            ));
        }
        if let Some(url) = &self.url {
            check_http_url(url, &format!("{path}.url"))?;
        }
        Ok(())
    }
}

/// Reference to a secret by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// DNS-1123 label.
    pub name: String,
}

impl SecretRef {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        check_dns_label(&self.name, &format!("{path}.name"))
    }
}

/// Where a task (or the tasks a trigger starts) runs: exactly one of a named node, any
/// one node matching a selector, or every node matching a selector (fan-out).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskTarget {
    /// Run on this node (DNS-1123 label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Run on one node whose labels match all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Run once on every node whose labels match all of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<BTreeMap<String, String>>,
}

impl TaskTarget {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        one_of(
            path,
            &[
                ("node", self.node.is_some()),
                ("nodeSelector", self.node_selector.is_some()),
                ("fanout", self.fanout.is_some()),
            ],
        )?;
        if let Some(node) = &self.node {
            check_dns_label(node, &format!("{path}.node"))?;
        }
        if let Some(selector) = &self.node_selector {
            check_label_map(selector, &format!("{path}.nodeSelector"))?;
        }
        if let Some(selector) = &self.fanout {
            check_label_map(selector, &format!("{path}.fanout"))?;
        }
        Ok(())
    }
}
