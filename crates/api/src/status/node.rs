//! The status of a Node, as the cloud writes it and readers (the App scheduler, the
//! CLI's `get nodes` / `describe node`) read it.
//!
//! Two writers share it: the node lifecycle controller (`phase`, `lastSeen`,
//! `clockSkewMs`, the `Ready` condition) and the node's own status reports (`nodeInfo`,
//! `capacity`, `allocatable`, `queue`, the other conditions); desired-state sync adds
//! `sync`. Pure data: no I/O. Fields a writer has not set yet are left out of the JSON
//! (so `describe` can tell "not reported" from zero), and fields this version does not
//! know are kept (`other`), so an older writer never drops a newer one's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Condition;

/// `status` of a Node.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `Ready`, `NotReady` or `Unknown` (the cloud's view of its heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The last heartbeat the cloud flushed (RFC 3339, the cloud's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The node's clock minus the cloud's, from its heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
    /// What the node is, as it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeInfo>,
    /// Free memory and disk, as the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<Allocatable>,
    /// Allocatable resources by name (`cpu` → `4`, `memory` → `7816Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, String>>,
    /// The node's store-and-forward queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStats>,
    /// `Ready` (the cloud's) and the node's own (`MemoryPressure`, `DiskPressure`,
    /// `FunctionSandbox`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What desired-state sync last had acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// Fields this version does not know, kept as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// What a node reports about itself.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub agent_version: String,
}

/// Free resources a node reports.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Allocatable {
    #[serde(default)]
    pub memory_free_bytes: u64,
    #[serde(default)]
    pub disk_free_bytes: u64,
}

/// The node's store-and-forward queue: waiting and dropped (drops are counted).
#[derive(Serialize, Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    #[serde(default)]
    pub pending_bytes: u64,
    #[serde(default)]
    pub pending_items: u64,
    #[serde(default)]
    pub dropped_items: u64,
    #[serde(default)]
    pub dropped_bytes: u64,
}

/// Desired-state sync as the Node shows it.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    #[serde(default)]
    pub desired_revision: i64,
    #[serde(default)]
    pub acked_revision: i64,
    /// Objects the node holds.
    #[serde(default)]
    pub objects: u64,
    /// When the last acknowledgement came (RFC 3339).
    #[serde(default)]
    pub last_sync: String,
}

impl NodeStatus {
    /// Parses a Node's `status` (anything unreadable reads as empty: a reader must not
    /// fail on a node that has not reported yet).
    pub fn from_value(v: &serde_json::Value) -> NodeStatus {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    /// Whether the cloud last saw the node `Ready`.
    pub fn is_ready(&self) -> bool {
        self.phase.as_deref() == Some("Ready")
    }

    /// The architecture the node reported (`""` before its first report).
    pub fn arch(&self) -> &str {
        self.node_info.as_ref().map_or("", |i| i.arch.as_str())
    }
}

/// The part of a Node's status the App scheduler reads, for every node on each
/// placement: decoded straight from the stored JSON without copying it, everything
/// else skipped (cheaper than a whole [`NodeStatus`] at fleet scale).
#[derive(Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingView {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub node_info: Option<ArchOnly>,
    /// Values kept as JSON: one odd entry must not hide the node's phase.
    #[serde(default)]
    pub capacity: Option<BTreeMap<String, serde_json::Value>>,
}

/// `nodeInfo.arch` alone.
#[derive(Deserialize, Default, Clone, Debug, PartialEq)]
pub struct ArchOnly {
    #[serde(default)]
    pub arch: String,
}

impl SchedulingView {
    /// Reads a Node's `status` (anything unreadable reads as empty).
    pub fn of(v: &serde_json::Value) -> SchedulingView {
        SchedulingView::deserialize(v).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.phase.as_deref() == Some("Ready")
    }

    pub fn arch(&self) -> &str {
        self.node_info.as_ref().map_or("", |i| i.arch.as_str())
    }

    /// A capacity entry (`cpu`, `memory`) as reported.
    pub fn capacity(&self, key: &str) -> Option<&str> {
        self.capacity.as_ref()?.get(key)?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduling_view_reads_what_the_scheduler_needs_and_nothing_breaks_it() {
        let v = serde_json::json!({"phase": "Ready", "nodeInfo": {"arch": "aarch64", "os": "x"},
            "capacity": {"cpu": "4", "memory": "2Gi"}, "conditions": [], "sync": {"objects": 3}});
        let s = SchedulingView::of(&v);
        assert!(s.is_ready());
        assert_eq!(s.arch(), "aarch64");
        assert_eq!(s.capacity("memory"), Some("2Gi"));
        assert_eq!(s.capacity("gpu"), None);
        let empty = SchedulingView::of(&serde_json::Value::Null);
        assert!(!empty.is_ready());
        assert_eq!(empty.arch(), "");
        let v = serde_json::json!({"phase": "Ready", "capacity": {"cpu": 4, "memory": "1Gi"}});
        let s = SchedulingView::of(&v);
        assert!(
            s.is_ready(),
            "an odd capacity entry does not hide the phase"
        );
        assert_eq!(
            (s.capacity("cpu"), s.capacity("memory")),
            (None, Some("1Gi"))
        );
        let odd = SchedulingView::of(&serde_json::json!({"phase": 7}));
        assert_eq!(odd, SchedulingView::default());
    }

    #[test]
    fn reads_and_writes_the_json_the_cli_reads() {
        let v = serde_json::json!({
            "phase": "Ready", "lastSeen": "2027-01-15T08:00:00Z", "clockSkewMs": -12,
            "nodeInfo": {"os": "Debian", "kernel": "6.1", "arch": "x86_64", "cpus": 2,
                "memoryBytes": 1024, "diskBytes": 2048, "agentVersion": "0.1.0"},
            "allocatable": {"memoryFreeBytes": 1099, "diskFreeBytes": 7},
            "capacity": {"cpu": "2", "memory": "1Gi"},
            "queue": {"pendingBytes": 1, "pendingItems": 2, "droppedItems": 3, "droppedBytes": 4},
            "conditions": [{"type": "Ready", "status": "True", "reason": "HeartbeatsArriving",
                "message": "m", "lastTransitionTime": "2027-01-15T08:00:00Z"}],
            "sync": {"desiredRevision": 9, "ackedRevision": 9, "objects": 3,
                "lastSync": "2027-01-15T08:00:00Z"},
            "futureField": {"x": 1}
        });
        let st = NodeStatus::from_value(&v);
        assert!(st.is_ready());
        assert_eq!(st.arch(), "x86_64");
        assert_eq!(
            st.allocatable.as_ref().map(|a| a.memory_free_bytes),
            Some(1099)
        );
        assert_eq!(
            st.other.get("futureField"),
            Some(&serde_json::json!({"x": 1}))
        );
        // Round trip: the same JSON, unknown fields included.
        assert_eq!(serde_json::to_value(&st).unwrap(), v);
    }

    #[test]
    fn a_node_that_has_not_reported_reads_as_empty_and_writes_nothing_it_lacks() {
        let st = NodeStatus::from_value(&serde_json::Value::Null);
        assert_eq!(st, NodeStatus::default());
        assert_eq!(st.arch(), "");
        assert!(!st.is_ready());
        assert_eq!(serde_json::to_value(&st).unwrap(), serde_json::json!({}));
        // A wrong type is not a crash for readers.
        let bad = NodeStatus::from_value(&serde_json::json!({"phase": 3}));
        assert_eq!(bad, NodeStatus::default());
    }
}
