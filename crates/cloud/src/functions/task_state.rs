//! The pure decisions about a Task (its status type is
//! [`verge_api::status::task::TaskStatus`]): where it runs, when it has timed out or
//! is due next, whether a reporter may finish it, what a fan-out parent's phase is.
//! No I/O here (see `tasks.rs`).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use verge_api::Object;
use verge_api::specs::{FunctionSpec, TaskSpec, TaskTarget};
use verge_api::status::node::NodeStatus;
pub use verge_api::status::task::{CallbackState, CallbackStatus, Child, Phase, TaskStatus};

/// Per-attempt deadline when `timeoutSeconds` is unset.
pub const DEFAULT_TASK_TIMEOUT_MS: i64 = 60_000;
/// Attempts when `maxAttempts` is unset.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Results whose JSON is larger than this are stored in the artifact store and
/// referenced by URL.
pub const MAX_INLINE_RESULT: usize = 256 * 1024;
/// Finished tasks are deleted this long after they finished.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;

/// What the scheduler knows of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its `Ready` condition is `True` (heartbeats arriving).
    pub connected: bool,
    /// `status.phase` (`Ready`, `NotReady`, `Unknown`), for messages.
    pub phase: String,
}

/// What the scheduler knows of Node `o` (its status read as
/// [`verge_api::status::node::NodeStatus`]): connected when its `Ready` condition is
/// true.
pub fn node_view(o: &Object) -> NodeView {
    let st = NodeStatus::deserialize(&o.status).unwrap_or_default();
    NodeView {
        name: o.metadata.name.clone(),
        labels: o.metadata.labels.clone(),
        connected: verge_api::status::is_true(&st.conditions, "Ready"),
        phase: st.phase.unwrap_or_else(|| "Unknown".into()),
    }
}

/// Whether a Node's change (`None`: created / deleted) may change where a pending
/// task can go: it appeared, went, or its labels, connection or phase changed (not a
/// heartbeat's time).
pub fn node_change_matters(old: Option<&Object>, new: Option<&Object>) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => node_view(a) != node_view(b),
        _ => true,
    }
}

/// The fan-out parent named in a Task's status, read without copying the rest of it.
pub fn parent_of(status: &serde_json::Value) -> Option<String> {
    #[derive(Deserialize)]
    struct Parent {
        #[serde(default)]
        parent: Option<String>,
    }
    Parent::deserialize(status).ok()?.parent
}

/// Whether a task belongs in the index of unfinished work: not final, or a callback
/// still to deliver.
pub fn needs_index(st: &TaskStatus) -> bool {
    !st.phase.is_final()
        || st
            .callback
            .as_ref()
            .is_some_and(|c| c.state == CallbackState::Pending)
}

/// When an unfinished task's [`timing`] changes next (Unix ms): the end of its
/// current attempt, or of the wait for one; `None` for a fan-out parent (its
/// children decide) or a final task.
pub fn next_deadline(spec: &TaskSpec, status: &TaskStatus) -> Option<i64> {
    let timeout = attempt_timeout_ms(spec);
    match status.phase {
        Phase::Pending => Some(status.created_at_ms + timeout),
        Phase::Dispatched | Phase::Running if status.children.is_empty() => {
            Some(status.dispatched_at_ms.unwrap_or(status.created_at_ms) + timeout)
        }
        _ => None,
    }
}

/// When a final task is deleted (Unix ms): [`RETENTION_MS`] after it finished.
pub fn retention_end(st: &TaskStatus) -> Option<i64> {
    if !st.phase.is_final() {
        return None;
    }
    st.finished_at_ms.map(|f| f + RETENTION_MS)
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

/// Why a synchronous invoke cannot be dispatched now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotNow {
    /// The named node does not exist (HTTP 404).
    NoSuchNode(String),
    /// No node to run it is connected now (HTTP 503).
    Offline(String),
}

/// A synchronous invoke is not queued: where [`place`] would have a task wait, the
/// call is answered at once instead (a task, `POST /api/v1/tasks`, waits).
pub fn sync_refusal(p: &Placement) -> Option<NotNow> {
    match p {
        Placement::Wait {
            reason: "NodeNotFound",
            message,
        } => Some(NotNow::NoSuchNode(message.clone())),
        Placement::Wait { message, .. } | Placement::Fail { message, .. } => {
            Some(NotNow::Offline(format!(
                "{message}; a synchronous invoke is not queued: call again once a node is \
                 Ready, or create a task (POST /api/v1/tasks), which waits for one"
            )))
        }
        Placement::Cloud | Placement::Node(_) | Placement::FanOut(_) => None,
    }
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
                message: format!("node {name:?} is not connected ({})", n.phase),
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

/// Who says that a task finished (see [`judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter<'a> {
    /// The task controller itself: a timeout, a fan-out parent from its children.
    Controller,
    /// The cloud's runtime, for a task it runs.
    Cloud,
    /// A node's result, answering `attempt` when the node says which.
    Node { node: &'a str, attempt: Option<u32> },
}

/// Why a node's result is not applied to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such task (and not a run of a trigger placed on the node).
    UnknownTask,
    /// The task already finished (a late or repeated answer).
    Finished,
    /// A fan-out parent: only its children's results complete it.
    FanOutParent,
    /// Not sent to any node (pending, or run by the cloud).
    NotDispatched,
    /// The task's current attempt went to another node.
    OtherNode,
    /// An attempt the cloud never sent to this node.
    UnknownAttempt,
    /// A run the node says a trigger started, but the trigger is not one the node
    /// fires, names another function, or the id is not a trigger run's.
    TriggerNotPlaced,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownTask => "unknown-task",
            Refusal::Finished => "finished",
            Refusal::FanOutParent => "fan-out-parent",
            Refusal::NotDispatched => "not-dispatched",
            Refusal::OtherNode => "other-node",
            Refusal::UnknownAttempt => "unknown-attempt",
            Refusal::TriggerNotPlaced => "trigger-not-placed",
        }
    }
}

/// Whether `by` may finish a task in `status`: nothing finishes a final task; the
/// controller finishes any other; the cloud only what it runs; a node only a task whose
/// current attempt the cloud dispatched to it — and, when the node names the attempt it
/// answers, only an attempt that went to that node. Fan-out parents are never finished
/// by a node.
pub fn judge(status: &TaskStatus, by: Reporter<'_>) -> Result<(), Refusal> {
    if status.phase.is_final() {
        return Err(Refusal::Finished);
    }
    match by {
        Reporter::Controller => Ok(()),
        Reporter::Cloud => {
            if status.node.as_deref() == Some("cloud") && status.children.is_empty() {
                Ok(())
            } else {
                Err(Refusal::NotDispatched)
            }
        }
        Reporter::Node { node, attempt } => {
            if !status.children.is_empty() {
                return Err(Refusal::FanOutParent);
            }
            let current = match status.node.as_deref() {
                None | Some("cloud") => return Err(Refusal::NotDispatched),
                Some(_) if status.phase != Phase::Dispatched => {
                    return Err(Refusal::NotDispatched);
                }
                Some(n) => n,
            };
            if current != node {
                return Err(Refusal::OtherNode);
            }
            let Some(attempt) = attempt else {
                // The node did not say (its local API, an older agent): the current
                // attempt is its own, which is what counts.
                return Ok(());
            };
            if attempt == 0 || attempt > status.attempts {
                return Err(Refusal::UnknownAttempt);
            }
            match status.attempt_nodes.get(attempt as usize - 1) {
                Some(n) if n == node => Ok(()),
                Some(_) => Err(Refusal::UnknownAttempt),
                // Recorded before attempts were: the current attempt is this node's.
                None if status.attempt_nodes.is_empty() => Ok(()),
                None => Err(Refusal::UnknownAttempt),
            }
        }
    }
}

/// Whether `id` has the shape of a run a trigger started on a node: `tr-` and 16
/// lowercase hex digits (the edge derives it from node, trigger and fire time), so it
/// can never be a task the cloud created (`t-…`) or a fan-out child (`…-{i}`).
pub fn is_trigger_run_id(id: &str) -> bool {
    id.strip_prefix("tr-").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A token bucket over plain values: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: f64, now_ms: i64) -> Self {
        Self {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    /// Takes a token if there is one at `now_ms`.
    pub fn take(&mut self, now_ms: i64, rate: f64, burst: f64) -> bool {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
            phase: if connected { "Ready" } else { "NotReady" }.into(),
        }
    }

    #[test]
    fn a_synchronous_invoke_is_refused_at_once_where_a_task_would_wait() {
        let edge = function("runtime: python3\nhandler: h.main\ncode: x\n");
        let nodes = vec![node("a", "eu", true), node("c", "us", false)];
        let load = HashMap::new();
        let at = |n: &str| TaskTarget {
            node: Some(n.into()),
            node_selector: None,
            fanout: None,
        };
        assert_eq!(
            sync_refusal(&place(Some(&at("ghost")), &edge, &nodes, &load)),
            Some(NotNow::NoSuchNode("node \"ghost\" does not exist".into()))
        );
        let Some(NotNow::Offline(m)) = sync_refusal(&place(Some(&at("c")), &edge, &nodes, &load))
        else {
            panic!("offline node");
        };
        assert!(
            m.starts_with("node \"c\" is not connected (NotReady); "),
            "{m}"
        );
        assert!(m.contains("not queued"), "{m}");
        // No matching node connected (the function's own placement).
        let us = function(
            "runtime: python3\nhandler: h.main\ncode: x\nplacement: {nodeSelector: {region: us}}\n",
        );
        assert!(matches!(
            sync_refusal(&place(None, &us, &nodes, &load)),
            Some(NotNow::Offline(m)) if m.contains("none is connected")
        ));
        // Runnable now: no refusal.
        assert_eq!(
            sync_refusal(&place(Some(&at("a")), &edge, &nodes, &load)),
            None
        );
        assert_eq!(sync_refusal(&place(None, &edge, &nodes, &load)), None);
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

    fn dispatched(attempt_nodes: &[&str]) -> TaskStatus {
        TaskStatus {
            phase: Phase::Dispatched,
            attempts: attempt_nodes.len() as u32,
            node: attempt_nodes.last().map(|n| n.to_string()),
            attempt_nodes: attempt_nodes.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    fn from(node: &str, attempt: Option<u32>) -> Reporter<'_> {
        Reporter::Node { node, attempt }
    }

    #[test]
    fn a_node_finishes_only_the_attempt_it_was_sent() {
        let st = dispatched(&["a"]);
        assert_eq!(judge(&st, from("a", Some(1))), Ok(()));
        assert_eq!(judge(&st, from("a", None)), Ok(()), "local API results");
        assert_eq!(judge(&st, from("b", Some(1))), Err(Refusal::OtherNode));
        assert_eq!(judge(&st, from("a", Some(2))), Err(Refusal::UnknownAttempt));
        assert_eq!(judge(&st, from("a", Some(0))), Err(Refusal::UnknownAttempt));
        // Re-dispatched to b: a's late answer to attempt 1 is refused; b's is taken.
        let st = dispatched(&["a", "b"]);
        assert_eq!(judge(&st, from("a", Some(1))), Err(Refusal::OtherNode));
        assert_eq!(judge(&st, from("a", None)), Err(Refusal::OtherNode));
        assert_eq!(judge(&st, from("b", Some(2))), Ok(()));
        // b claims attempt 1, which went to a: refused even though b is current.
        assert_eq!(judge(&st, from("b", Some(1))), Err(Refusal::UnknownAttempt));
        // a → b → a: a may answer attempt 1 or 3 (it runs a task once per key).
        let st = dispatched(&["a", "b", "a"]);
        assert_eq!(judge(&st, from("a", Some(1))), Ok(()));
        assert_eq!(judge(&st, from("a", Some(3))), Ok(()));
        assert_eq!(judge(&st, from("a", Some(2))), Err(Refusal::UnknownAttempt));
        // Recorded before attempt nodes were: the current node is enough.
        let legacy = TaskStatus {
            attempt_nodes: Vec::new(),
            ..dispatched(&["a", "a"])
        };
        assert_eq!(judge(&legacy, from("a", Some(2))), Ok(()));
        assert_eq!(judge(&legacy, from("b", Some(2))), Err(Refusal::OtherNode));
    }

    #[test]
    fn parents_pending_cloud_and_final_tasks_are_not_a_nodes_to_finish() {
        let parent = TaskStatus {
            phase: Phase::Running,
            children: vec![Child {
                name: "t-1-0".into(),
                node: "a".into(),
                phase: Phase::Dispatched,
            }],
            ..Default::default()
        };
        assert_eq!(judge(&parent, from("a", None)), Err(Refusal::FanOutParent));
        assert_eq!(
            judge(&parent, from("a", Some(1))),
            Err(Refusal::FanOutParent)
        );
        assert_eq!(judge(&parent, Reporter::Cloud), Err(Refusal::NotDispatched));
        assert_eq!(judge(&parent, Reporter::Controller), Ok(()));
        let pending = TaskStatus::default();
        assert_eq!(
            judge(&pending, from("a", None)),
            Err(Refusal::NotDispatched)
        );
        let cloud = TaskStatus {
            phase: Phase::Running,
            node: Some("cloud".into()),
            attempts: 1,
            attempt_nodes: vec!["cloud".into()],
            ..Default::default()
        };
        assert_eq!(
            judge(&cloud, from("cloud", Some(1))),
            Err(Refusal::NotDispatched)
        );
        assert_eq!(judge(&cloud, Reporter::Cloud), Ok(()));
        assert_eq!(
            judge(&dispatched(&["a"]), Reporter::Cloud),
            Err(Refusal::NotDispatched)
        );
        let done = TaskStatus {
            phase: Phase::Succeeded,
            ..dispatched(&["a"])
        };
        assert_eq!(judge(&done, from("a", Some(1))), Err(Refusal::Finished));
        assert_eq!(judge(&done, Reporter::Controller), Err(Refusal::Finished));
    }

    #[test]
    fn deadlines_retention_and_the_index() {
        let spec = TaskSpec {
            function: "f".into(),
            input: None,
            target: None,
            callback_url: None,
            idempotency_key: None,
            timeout_seconds: Some(2),
            max_attempts: None,
        };
        let mut st = TaskStatus {
            created_at_ms: 1000,
            ..Default::default()
        };
        assert_eq!(next_deadline(&spec, &st), Some(3000));
        assert!(needs_index(&st));
        assert_eq!(retention_end(&st), None);
        st.phase = Phase::Dispatched;
        st.dispatched_at_ms = Some(5000);
        assert_eq!(next_deadline(&spec, &st), Some(7000));
        // The deadline is where `timing` stops being Fine.
        assert_eq!(timing(&spec, &st, 6999), Timing::Fine);
        assert_ne!(timing(&spec, &st, 7000), Timing::Fine);
        st.children = vec![Child {
            name: "c".into(),
            node: "n".into(),
            phase: Phase::Pending,
        }];
        st.phase = Phase::Running;
        assert_eq!(
            next_deadline(&spec, &st),
            None,
            "a parent waits for its children"
        );
        st.phase = Phase::Succeeded;
        st.finished_at_ms = Some(9000);
        assert_eq!(next_deadline(&spec, &st), None);
        assert_eq!(retention_end(&st), Some(9000 + RETENTION_MS));
        assert!(!needs_index(&st));
        st.callback = Some(CallbackStatus::default());
        assert!(needs_index(&st), "a callback to deliver");
        let child = serde_json::json!({"phase": "Pending", "parent": "t-1", "result": [1, 2]});
        assert_eq!(parent_of(&child).as_deref(), Some("t-1"));
        assert_eq!(parent_of(&serde_json::json!({"phase": "Pending"})), None);
        assert_eq!(parent_of(&serde_json::Value::Null), None);
    }

    #[test]
    fn only_changes_of_a_nodes_readiness_labels_or_phase_matter_to_waiting_tasks() {
        let n = |status: serde_json::Value, site: &str| Object {
            api_version: verge_api::API_VERSION.into(),
            kind: "Node".into(),
            metadata: verge_api::ObjectMeta {
                name: "n1".into(),
                labels: BTreeMap::from([("site".into(), site.into())]),
                ..Default::default()
            },
            spec: serde_json::Value::Null,
            status,
        };
        let ready = serde_json::json!({"phase": "Ready", "lastHeartbeat": "t1",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Connected"}]});
        let mut beat = ready.clone();
        beat["lastHeartbeat"] = "t2".into();
        let down = serde_json::json!({"phase": "NotReady",
            "conditions": [{"type": "Ready", "status": "False"}]});
        let v = node_view(&n(ready.clone(), "a"));
        assert!(v.connected);
        assert_eq!(v.phase, "Ready");
        assert!(!node_view(&n(down.clone(), "a")).connected);
        assert!(!node_view(&n(serde_json::Value::Null, "a")).connected);
        let (a, b) = (n(ready.clone(), "a"), n(beat, "a"));
        assert!(!node_change_matters(Some(&a), Some(&b)), "a heartbeat");
        assert!(node_change_matters(Some(&a), Some(&n(down, "a"))));
        assert!(node_change_matters(Some(&a), Some(&n(ready, "b"))));
        assert!(node_change_matters(None, Some(&a)));
        assert!(node_change_matters(Some(&a), None));
    }

    #[test]
    fn trigger_run_ids() {
        assert!(is_trigger_run_id("tr-0123456789abcdef"));
        for bad in [
            "t-0123456789abcdef",
            "tr-0123456789ABCDEF",
            "tr-0123456789abcde",
            "tr-0123456789abcdef0",
            "tr-0123456789abcdeg",
            "tr-0123456789abcdef-0",
            "",
        ] {
            assert!(!is_trigger_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = Bucket::full(2.0, 0);
        assert!(b.take(0, 1.0, 2.0));
        assert!(b.take(0, 1.0, 2.0));
        assert!(!b.take(0, 1.0, 2.0));
        assert!(!b.take(500, 1.0, 2.0));
        assert!(b.take(1000, 1.0, 2.0));
        // A long pause refills to the burst, not beyond.
        assert!(b.take(100_000, 1.0, 2.0));
        assert!(b.take(100_000, 1.0, 2.0));
        assert!(!b.take(100_000, 1.0, 2.0));
        // A clock going back refills nothing.
        assert!(!b.take(50_000, 1.0, 2.0));
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
