//! `Task`: one invocation of a function, on a chosen node, any matching node, or every
//! matching node.

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::*;
use crate::specs::common::TaskTarget;
use crate::validate::{check_dns_label, check_http_url, check_json_size, check_range};

/// Spec of a `Task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSpec {
    /// Function to run (DNS-1123 label).
    pub function: String,
    /// Input handed to the function (at most 256 KiB as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Where to run; the function's own placement when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TaskTarget>,
    /// Receives a POST with the result (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Tasks created with the same key run once (at most 128 printable ASCII characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Per attempt, 1..=86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// 1..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl TaskSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_dns_label(&self.function, "spec.function")?;
        if let Some(input) = &self.input {
            check_json_size(input, "spec.input", MAX_INPUT_BYTES)?;
        }
        if let Some(target) = &self.target {
            target.validate("spec.target")?;
        }
        if let Some(url) = &self.callback_url {
            check_http_url(url, "spec.callbackUrl")?;
        }
        if let Some(key) = &self.idempotency_key {
            const FIELD: &str = "spec.idempotencyKey";
            if key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY_LEN
                || !key.bytes().all(|b| (0x20..=0x7e).contains(&b))
            {
                return Err(ValidationError::new(
                    FIELD,
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
                ));
            }
        }
        if let Some(t) = self.timeout_seconds {
            check_range(t, "spec.timeoutSeconds", 1, MAX_TASK_TIMEOUT_SECONDS)?;
        }
        if let Some(n) = self.max_attempts {
            check_range(n, "spec.maxAttempts", 1, MAX_TASK_ATTEMPTS)?;
        }
        Ok(())
    }
}
