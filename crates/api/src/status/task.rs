//! `status` of a Task: its phase, attempts and where each went, timings, the result
//! (inline, or a URL for a large one), the callback's delivery state, fan-out parent
//! and children. Pure data; the cloud's task controller (`crates/cloud/src/functions`)
//! writes it and decides on it, the CLI and the API read it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Pending,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::TimedOut | Phase::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Dispatched => "Dispatched",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::TimedOut => "TimedOut",
            Phase::Cancelled => "Cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CallbackState {
    #[default]
    Pending,
    Delivered,
    /// Every attempt failed; the result stays readable with `GET /api/v1/tasks/{id}`.
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackStatus {
    pub state: CallbackState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Unix ms of the next attempt while `Pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
}

/// One child of a fan-out task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Child {
    pub name: String,
    pub node: String,
    pub phase: Phase,
}

/// `status` of a Task object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskStatus {
    pub phase: Phase,
    /// Why the task waits or failed (`NodeNotFound`, `NodeOffline`, `NoMatchingNodes`,
    /// `FunctionNotFound`, `HandlerError`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub attempts: u32,
    /// Where it runs: a node name, or `cloud`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where each attempt went, in order (`attemptNodes[0]` ran attempt 1): a result
    /// that names an attempt is applied only from that attempt's node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempt_nodes: Vec<String>,
    pub created_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatched_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// The function's output, when small enough to keep inline (the cloud's limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Otherwise: where to download it (`/api/v1/artifacts/{sha256}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackStatus>,
    /// Fan-out: the parent task of this child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Child>,
    /// The trigger that started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

impl TaskStatus {
    pub fn from_value(v: &Value) -> TaskStatus {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_json_the_cli_and_api_read() {
        let v = serde_json::json!({"phase": "Succeeded", "attempts": 1, "node": "a",
            "attemptNodes": ["a"], "createdAtMs": 1, "finishedAtMs": 5, "result": {"x": 1},
            "callback": {"state": "DeadLettered", "attempts": 5, "lastStatus": 500}});
        let s = TaskStatus::from_value(&v);
        assert_eq!(s.phase, Phase::Succeeded);
        assert_eq!(
            s.callback.as_ref().map(|c| c.state),
            Some(CallbackState::DeadLettered)
        );
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        // Anything unreadable is a fresh status, not an error.
        assert_eq!(TaskStatus::from_value(&Value::Null), TaskStatus::default());
    }
}
