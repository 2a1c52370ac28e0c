//! A Task's status and the pure decisions about it: where it runs, when it has timed
//! out, what a fan-out parent's phase is. No I/O here (see `tasks.rs`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use verge_api::specs::{FunctionSpec, TaskSpec, TaskTarget};

/// Per-attempt deadline when `timeoutSeconds` is unset.
pub const DEFAULT_TASK_TIMEOUT_MS: i64 = 60_000;
/// Attempts when `maxAttempts` is unset.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Results whose JSON is larger than this are stored in the artifact store and
/// referenced by URL.
pub const MAX_INLINE_RESULT: usize = 256 * 1024;

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
    pub created_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatched_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// The function's output, when at most [`MAX_INLINE_RESULT`] bytes as JSON.
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

/// What the scheduler knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Holds a live session with the gateway.
    pub connected: bool,
}

/// Where a task goes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Cloud,
    Node(String),
    /// One child per node (names sorted).
    FanOut(Vec<String>),
    /// Stay Pending for now.
    Wait {
        reason: &'static str,
        message: String,
    },
    /// Cannot ever run.
    Fail {
        reason: &'static str,
        message: String,
    },
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Picks where a pending task runs: its target, or else its function's placement.
/// `load` counts the unfinished tasks per node; a selector picks the least loaded
/// connected match (ties by name).
pub fn place(
    target: Option<&TaskTarget>,
    function: &FunctionSpec,
    nodes: &[NodeView],
    load: &HashMap<String, usize>,
) -> Placement {
    let least_loaded = |selector: &BTreeMap<String, String>, what: &str| {
        let matching: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| matches(selector, &n.labels))
            .collect();
        if matching.is_empty() {
            return Placement::Wait {
                reason: "NoMatchingNodes",
                message: format!("no node matches {what} {selector:?}"),
            };
        }
        match matching
            .iter()
            .filter(|n| n.connected)
            .min_by_key(|n| (load.get(&n.name).copied().unwrap_or(0), n.name.clone()))
        {
            Some(n) => Placement::Node(n.name.clone()),
            None => Placement::Wait {
                reason: "NodeOffline",
                message: format!(
                    "{} node(s) match {what} {selector:?}, none is connected",
                    matching.len()
                ),
            },
        }
    };
    match target {
        Some(TaskTarget {
            node: Some(name), ..
        }) => match nodes.iter().find(|n| &n.name == name) {
            None => Placement::Wait {
                reason: "NodeNotFound",
                message: format!("node {name:?} does not exist"),
            },
            Some(n) if !n.connected => Placement::Wait {
                reason: "NodeOffline",
                message: format!("node {name:?} is not connected"),
            },
            Some(n) => Placement::Node(n.name.clone()),
        },
        Some(TaskTarget {
            fanout: Some(selector),
            ..
        }) => {
            let mut names: Vec<String> = nodes
                .iter()
                .filter(|n| matches(selector, &n.labels))
                .map(|n| n.name.clone())
                .collect();
            names.sort();
            if names.is_empty() {
                Placement::Wait {
                    reason: "NoMatchingNodes",
                    message: format!("no node matches fanout {selector:?}"),
                }
            } else {
                Placement::FanOut(names)
            }
        }
        Some(TaskTarget {
            node_selector: Some(selector),
            ..
        }) => least_loaded(selector, "nodeSelector"),
        _ if function.in_cloud() => Placement::Cloud,
        _ => {
            let selector = function
                .placement
                .as_ref()
                .map(|p| p.node_selector.clone())
                .unwrap_or_default();
            least_loaded(&selector, "the function's nodeSelector")
        }
    }
}

/// The per-attempt timeout of a task, in ms.
pub fn attempt_timeout_ms(spec: &TaskSpec) -> i64 {
    spec.timeout_seconds
        .map_or(DEFAULT_TASK_TIMEOUT_MS, |s| i64::from(s) * 1000)
}

/// What to do about an unfinished task at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    Fine,
    /// Dispatched without an answer for a whole attempt: send it again.
    Redispatch,
    TimedOut(String),
}

pub fn timing(spec: &TaskSpec, status: &TaskStatus, now_ms: i64) -> Timing {
    let timeout = attempt_timeout_ms(spec);
    let max_attempts = spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    match status.phase {
        Phase::Pending if now_ms - status.created_at_ms >= timeout => Timing::TimedOut(format!(
            "not started within {} s: {}",
            timeout / 1000,
            status.message.as_deref().unwrap_or("no node to run it")
        )),
        Phase::Dispatched | Phase::Running if status.children.is_empty() => {
            let since = status.dispatched_at_ms.unwrap_or(status.created_at_ms);
            if now_ms - since < timeout {
                Timing::Fine
            } else if status.attempts < max_attempts && status.node.as_deref() != Some("cloud") {
                Timing::Redispatch
            } else {
                Timing::TimedOut(format!(
                    "no result after {} attempt(s) of {} s",
                    status.attempts,
                    timeout / 1000
                ))
            }
        }
        _ => Timing::Fine,
    }
}

/// A fan-out parent's phase from its children's.
pub fn parent_phase(children: &[Child]) -> Phase {
    if children.iter().any(|c| !c.phase.is_final()) {
        Phase::Running
    } else if children.iter().all(|c| c.phase == Phase::Succeeded) {
        Phase::Succeeded
    } else {
        Phase::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, region: &str, connected: bool) -> NodeView {
        NodeView {
            name: name.into(),
            labels: BTreeMap::from([("region".into(), region.into())]),
            connected,
        }
    }

    fn function(yaml: &str) -> FunctionSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn sel(region: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("region".into(), region.into())])
    }

    #[test]
    fn placement_by_target_and_function() {
        let edge = function("runtime: python3\nhandler: h.main\ncode: x\n");
        let cloud =
            function("runtime: python3\nhandler: h.main\ncode: x\nplacement: {cloud: true}\n");
        let nodes = vec![
            node("a", "eu", true),
            node("b", "eu", true),
            node("c", "us", false),
        ];
        let load = HashMap::from([("a".to_string(), 3)]);
        let t = |node: Option<&str>, selector: Option<&str>, fanout: Option<&str>| TaskTarget {
            node: node.map(Into::into),
            node_selector: selector.map(sel),
            fanout: fanout.map(sel),
        };
        assert_eq!(place(None, &cloud, &nodes, &load), Placement::Cloud);
        // Least loaded among connected matches.
        assert_eq!(
            place(None, &edge, &nodes, &load),
            Placement::Node("b".into())
        );
        assert_eq!(
            place(Some(&t(Some("a"), None, None)), &cloud, &nodes, &load),
            Placement::Node("a".into())
        );
        assert!(matches!(
            place(Some(&t(Some("zz"), None, None)), &edge, &nodes, &load),
            Placement::Wait {
                reason: "NodeNotFound",
                ..
            }
        ));
        assert!(matches!(
            place(Some(&t(Some("c"), None, None)), &edge, &nodes, &load),
            Placement::Wait {
                reason: "NodeOffline",
                ..
            }
        ));
        assert!(matches!(
            place(Some(&t(None, Some("us"), None)), &edge, &nodes, &load),
            Placement::Wait {
                reason: "NodeOffline",
                ..
            }
        ));
        assert!(matches!(
            place(Some(&t(None, Some("ap"), None)), &edge, &nodes, &load),
            Placement::Wait {
                reason: "NoMatchingNodes",
                ..
            }
        ));
        assert_eq!(
            place(Some(&t(None, None, Some("eu"))), &edge, &nodes, &load),
            Placement::FanOut(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn timeouts_and_redispatch() {
        let spec = TaskSpec {
            function: "f".into(),
            input: None,
            target: None,
            callback_url: None,
            idempotency_key: None,
            timeout_seconds: Some(2),
            max_attempts: Some(2),
        };
        let mut st = TaskStatus {
            created_at_ms: 1000,
            message: Some("node \"x\" is not connected".into()),
            ..Default::default()
        };
        assert_eq!(timing(&spec, &st, 2000), Timing::Fine);
        let Timing::TimedOut(why) = timing(&spec, &st, 3000) else {
            panic!()
        };
        assert!(why.contains("not connected"), "{why}");
        st.phase = Phase::Dispatched;
        st.attempts = 1;
        st.dispatched_at_ms = Some(3000);
        st.node = Some("x".into());
        assert_eq!(timing(&spec, &st, 4000), Timing::Fine);
        assert_eq!(timing(&spec, &st, 5000), Timing::Redispatch);
        st.attempts = 2;
        assert!(matches!(timing(&spec, &st, 5000), Timing::TimedOut(_)));
    }

    #[test]
    fn parent_phase_from_children() {
        let c = |phase| Child {
            name: "c".into(),
            node: "n".into(),
            phase,
        };
        assert_eq!(
            parent_phase(&[c(Phase::Succeeded), c(Phase::Dispatched)]),
            Phase::Running
        );
        assert_eq!(
            parent_phase(&[c(Phase::Succeeded), c(Phase::Succeeded)]),
            Phase::Succeeded
        );
        assert_eq!(
            parent_phase(&[c(Phase::Succeeded), c(Phase::TimedOut)]),
            Phase::Failed
        );
    }
}
