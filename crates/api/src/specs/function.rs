//! `Function`: code run on demand (by tasks, triggers or HTTP) on the edge or in the
//! cloud, with a language runtime or a built-in implementation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::*;
use crate::specs::common::ArtifactRef;
use crate::specs::quantity::{check_memory, opt_quantity};
use crate::specs::secret::{SecretKeyRef, SecretUse, check_secret_env, env_uses};
use crate::validate::{check_env, check_label_map, check_len, check_range};

/// Spec of a `Function`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionSpec {
    pub runtime: Runtime,
    /// `module.function` for `python3`/`nodejs`; a dotted lowercase built-in name such as
    /// `image.resize` for `builtin`.
    pub handler: String,
    /// Inline source (at most 256 KiB). `python3`/`nodejs` need exactly one of `code`
    /// and `artifact`; `builtin` takes neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values come from Secrets: `NAME: {name, key}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<FunctionPlacement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python3,
    Nodejs,
    Builtin,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Nodejs => "nodejs",
            Runtime::Builtin => "builtin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionResources {
    /// Memory quantity per instance: `128Mi`.
    #[serde(
        default,
        deserialize_with = "opt_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<String>,
    /// Per invocation, 1..=900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Concurrent invocations per instance, 1..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scaling {
    /// Instances kept warm while idle (at most `maxInstances`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_warm: Option<u32>,
    /// 1..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// Idle time before an instance above `minWarm` is stopped, 1..=86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionPlacement {
    /// Run in the cloud rather than on edge nodes (excludes `nodeSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<bool>,
    /// Only edge nodes whose labels match all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    b.first()
        .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `[a-z][a-z0-9_]*`.
fn is_builtin_part(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_lowercase)
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

fn check_handler(runtime: Runtime, handler: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "spec.handler";
    if handler.is_empty() {
        return Err(ValidationError::new(FIELD, "must not be empty"));
    }
    check_len(handler, FIELD, MAX_HANDLER_LEN)?;
    match runtime {
        Runtime::Python3 | Runtime::Nodejs => {
            let parts: Vec<&str> = handler.split('.').collect();
            if parts.len() < 2 || !parts.iter().all(|p| is_identifier(p)) {
                return Err(ValidationError::new(
                    FIELD,
                    format!(
                        "invalid handler {handler:?} for runtime {}: expected module.function \
                         made of identifiers, such as \"handler.main\"",
                        runtime.as_str()
                    ),
                ));
            }
        }
        Runtime::Builtin => {
            if !handler.split('.').all(is_builtin_part) {
                return Err(ValidationError::new(
                    FIELD,
                    format!(
                        "invalid handler {handler:?} for runtime builtin: expected a dotted \
                         lowercase name such as \"image.resize\""
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl FunctionSpec {
    /// Whether the function runs in the cloud (`placement.cloud: true`) rather than on
    /// edge nodes.
    pub fn in_cloud(&self) -> bool {
        self.placement.as_ref().and_then(|p| p.cloud) == Some(true)
    }

    /// Whether an edge node with these labels holds this function.
    pub fn placed_on(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.in_cloud()
            && self.placement.as_ref().is_none_or(|p| {
                p.node_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            })
    }

    /// Every reference this spec makes to a Secret's value (`secretEnv`).
    pub fn secret_uses(&self) -> Vec<SecretUse> {
        env_uses(&self.secret_env, "spec.secretEnv")
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        check_handler(self.runtime, &self.handler)?;
        match self.runtime {
            Runtime::Builtin => {
                if self.code.is_some() {
                    return Err(ValidationError::new(
                        "spec.code",
                        "must not be set for runtime builtin",
                    ));
                }
                if self.artifact.is_some() {
                    return Err(ValidationError::new(
                        "spec.artifact",
                        "must not be set for runtime builtin",
                    ));
                }
            }
            Runtime::Python3 | Runtime::Nodejs => {
                let runtime = self.runtime.as_str();
                match (&self.code, &self.artifact) {
                    (None, None) => {
                        return Err(ValidationError::new(
                            "spec",
                            format!(
                                "exactly one of code, artifact must be set for runtime {runtime}"
                            ),
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(ValidationError::new(
                            "spec",
                            "only one of code, artifact may be set (found code and artifact)",
                        ));
                    }
                    (Some(code), None) => {
                        if code.is_empty() {
                            return Err(ValidationError::new("spec.code", "must not be empty"));
                        }
                        check_len(code, "spec.code", MAX_INLINE_CODE_BYTES)?;
                    }
                    (None, Some(artifact)) => artifact.validate("spec.artifact")?,
                }
            }
        }
        check_env(&self.env, "spec.env")?;
        check_secret_env(&self.secret_env, &self.env, "spec.secretEnv")?;
        if let Some(resources) = &self.resources {
            if let Some(memory) = &resources.memory {
                check_memory(memory, "spec.resources.memory")?;
            }
            if let Some(t) = resources.timeout_seconds {
                check_range(
                    t,
                    "spec.resources.timeoutSeconds",
                    1,
                    MAX_FUNCTION_TIMEOUT_SECONDS,
                )?;
            }
            if let Some(c) = resources.max_concurrency {
                check_range(
                    c,
                    "spec.resources.maxConcurrency",
                    1,
                    MAX_FUNCTION_CONCURRENCY,
                )?;
            }
        }
        if let Some(scaling) = &self.scaling {
            if let Some(max) = scaling.max_instances {
                check_range(max, "spec.scaling.maxInstances", 1, MAX_FUNCTION_INSTANCES)?;
            }
            if let Some(min) = scaling.min_warm {
                check_range(min, "spec.scaling.minWarm", 0, MAX_FUNCTION_INSTANCES)?;
                if let Some(max) = scaling.max_instances
                    && min > max
                {
                    return Err(ValidationError::new(
                        "spec.scaling.minWarm",
                        format!("must not exceed maxInstances ({min} > {max})"),
                    ));
                }
            }
            if let Some(idle) = scaling.idle_seconds {
                check_range(idle, "spec.scaling.idleSeconds", 1, MAX_IDLE_SECONDS)?;
            }
        }
        if let Some(placement) = &self.placement {
            check_label_map(&placement.node_selector, "spec.placement.nodeSelector")?;
            if placement.cloud == Some(true) && !placement.node_selector.is_empty() {
                return Err(ValidationError::new(
                    "spec.placement.nodeSelector",
                    "must not be set when cloud is true",
                ));
            }
        }
        Ok(())
    }
}
