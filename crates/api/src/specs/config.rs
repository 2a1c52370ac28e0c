//! `Config`: configuration data delivered to the edge nodes it is placed on (the
//! first kind carried by the cloud→edge desired-state sync).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::validate::check_label_map;

/// Most keys in `spec.data`.
pub const MAX_CONFIG_KEYS: usize = 1024;
/// Most bytes of keys and values in `spec.data` together.
pub const MAX_CONFIG_BYTES: usize = 512 * 1024;
/// Longest key in `spec.data`.
pub const MAX_CONFIG_KEY: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigSpec {
    /// Key/value configuration. Keys: `[A-Za-z0-9._-]`, at most 253 characters.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Which nodes receive it. Absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<ConfigPlacement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigPlacement {
    /// Equality selector on node labels; all pairs must match.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
}

impl ConfigSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.data.len() > MAX_CONFIG_KEYS {
            return Err(ValidationError::new(
                "spec.data",
                format!("at most {MAX_CONFIG_KEYS} keys (found {})", self.data.len()),
            ));
        }
        let mut total = 0usize;
        for (k, v) in &self.data {
            let field = format!("spec.data.{k}");
            if k.is_empty()
                || k.len() > MAX_CONFIG_KEY
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(ValidationError::new(
                    field,
                    format!("keys must be 1..={MAX_CONFIG_KEY} characters of [A-Za-z0-9._-]"),
                ));
            }
            total += k.len() + v.len();
        }
        if total > MAX_CONFIG_BYTES {
            return Err(ValidationError::new(
                "spec.data",
                format!("at most {MAX_CONFIG_BYTES} bytes of keys and values (found {total})"),
            ));
        }
        if let Some(p) = &self.placement {
            check_label_map(&p.node_selector, "spec.placement.nodeSelector")?;
        }
        Ok(())
    }

    /// Whether a node with these labels receives this config.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.placement.as_ref().is_none_or(|p| {
            p.node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sizes_and_selectors_are_checked() {
        let mut s = ConfigSpec::default();
        s.data.insert("a b".into(), "x".into());
        assert_eq!(s.validate().unwrap_err().field, "spec.data.a b");
        let mut s = ConfigSpec::default();
        s.data.insert("big".into(), "x".repeat(MAX_CONFIG_BYTES));
        assert_eq!(s.validate().unwrap_err().field, "spec.data");
        let s = ConfigSpec {
            placement: Some(ConfigPlacement {
                node_selector: [("bad key!".to_string(), "v".to_string())].into(),
            }),
            ..Default::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .field
                .starts_with("spec.placement.nodeSelector")
        );
        let s = ConfigSpec {
            data: [("k".to_string(), "v".to_string())].into(),
            placement: Some(ConfigPlacement {
                node_selector: [("site".to_string(), "a".to_string())].into(),
            }),
        };
        s.validate().unwrap();
        assert!(s.selects(&[("site".to_string(), "a".to_string())].into()));
        assert!(!s.selects(&[("site".to_string(), "b".to_string())].into()));
        assert!(!s.selects(&BTreeMap::new()));
        assert!(ConfigSpec::default().selects(&BTreeMap::new()));
    }
}
