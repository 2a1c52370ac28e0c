//! The App's status, as the App controller writes it and the CLI, the desired-state
//! sync and the tests read it: replica counts, placement, the gray-release state
//! (`rollout`), the instances nodes report, conditions and the autoscaler's state.
//!
//! Types only: the rules that fill them live in the cloud's App controller. The JSON
//! is the one `verge get/describe apps` and `verge rollout status` read (camelCase,
//! usage fields of an instance `null` when not reported).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Condition;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RolloutPhase {
    #[default]
    Progressing,
    Paused,
    Complete,
    RolledBack,
    Failed,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::RolledBack => "RolledBack",
            RolloutPhase::Failed => "Failed",
        }
    }
}

/// `status.rollout`: the gray release's state, including which version each node is
/// told to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    pub phase: RolloutPhase,
    /// The version being rolled out (the spec's).
    pub target_version: String,
    /// The spec at `target_version` (what nodes on it are sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<serde_json::Value>,
    /// The version every node ran before (absent for an app's first version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// The spec of `stable_version`, sent to nodes not (or no longer) switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_spec: Option<serde_json::Value>,
    /// The version before the stable one, for `verge rollout rollback` after a
    /// completed rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<serde_json::Value>,
    /// Index into the effective steps, and how many there are.
    pub step: usize,
    pub steps: usize,
    pub step_started_ms: i64,
    /// When the current step's gate passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_passed_ms: Option<i64>,
    /// Canary nodes healthy at the last look (more = progress, which restarts the
    /// deadline).
    #[serde(default)]
    pub healthy_nodes: usize,
    /// Node → version it is told to run.
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
    #[serde(default)]
    pub message: String,
}

impl RolloutState {
    /// The version the app serves: the target once its rollout is complete (or for an
    /// app's first version), else the stable one — while a new version is rolled out,
    /// after it was rolled back, and while a failed gate holds.
    pub fn serving_version(&self) -> &str {
        match (self.phase, &self.stable_version) {
            (RolloutPhase::Complete, _) | (_, None) => &self.target_version,
            (_, Some(stable)) => stable,
        }
    }
}

/// `status.autoscale`: the autoscaler's replica count and recent recommendations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScaleState {
    #[serde(default)]
    pub replicas: u32,
    /// `(unix ms, recommendation)` inside the window, oldest first.
    #[serde(default)]
    pub history: Vec<(i64, u32)>,
}

/// One replica as its node reported it (`status.instances[]`).
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppInstance {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub replica: u32,
    #[serde(default)]
    pub version: String,
    /// `Preparing`, `Running`, `Backoff`, `Failed`, …
    #[serde(default)]
    pub state: String,
    /// `Healthy`, `Unhealthy` or `Unknown`.
    #[serde(default)]
    pub health: String,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// How limits are enforced on the node (`cgroup v2: …`, `rlimit: …`, `none`).
    #[serde(default)]
    pub limits: Option<String>,
    #[serde(default)]
    pub started_at_ms: Option<i64>,
}

/// An App's `status`.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// The version that serves (see [`RolloutState::serving_version`]).
    #[serde(default)]
    pub version: String,
    /// The spec's version (being rolled out, or serving once complete).
    #[serde(default)]
    pub target_version: String,
    #[serde(default)]
    pub phase: RolloutPhase,
    /// Replicas placed (wanted).
    #[serde(default)]
    pub replicas: u32,
    /// Running and healthy at the version their node is told to run.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Of those, on the target version.
    #[serde(default)]
    pub updated_replicas: u32,
    /// `"k/n (p%)"`: the rollout step, for people.
    #[serde(default)]
    pub step: String,
    /// Node → replicas.
    #[serde(default)]
    pub placement: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
    /// The `verge rollout resume` counter the rollout last acted on.
    #[serde(default)]
    pub rollout_resume_seen: u64,
    #[serde(default)]
    pub instances: Vec<AppInstance>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ScaleState>,
}

impl AppStatus {
    /// The status without what changes all the time (instance usage, the autoscaler's
    /// history): what decides whether a change is worth a write at once.
    pub fn significant(&self) -> AppStatus {
        let mut s = self.clone();
        for i in &mut s.instances {
            i.cpu_millis = None;
            i.memory_bytes = None;
        }
        s.autoscale = None;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_status_reads_and_writes_the_json_the_cli_reads() {
        let v = serde_json::json!({
            "observedGeneration": 2, "version": "1.0.0", "targetVersion": "1.1.0",
            "phase": "Progressing", "replicas": 2, "readyReplicas": 2, "updatedReplicas": 1,
            "step": "1/2 (50%)", "placement": {"n1": 1, "n2": 1},
            "rollout": {"phase": "Progressing", "targetVersion": "1.1.0",
                "stableVersion": "1.0.0", "step": 0, "steps": 2, "stepStartedMs": 5,
                "healthyNodes": 1, "nodes": {"n1": "1.1.0", "n2": "1.0.0"}, "message": "m"},
            "rolloutResumeSeen": 0,
            "instances": [{"node": "n1", "replica": 0, "version": "1.1.0", "state": "Running",
                "health": "Healthy", "restarts": 0, "cpuMillis": 3, "memoryBytes": null,
                "lastError": null, "limits": "none", "startedAtMs": 7}],
            "conditions": [{"type": "Available", "status": "True", "reason": "Progressing",
                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        });
        let s: AppStatus = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.rollout.as_ref().unwrap().serving_version(), "1.0.0");
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        assert_eq!(s.significant().instances[0].cpu_millis, None);
        // Whatever is missing reads as its default.
        let empty: AppStatus = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, AppStatus::default());
    }
}
