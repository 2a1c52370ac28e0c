//! `status` of a Trigger: what the cloud's trigger controller decided — where it
//! fires, when it fires next, the last fire time the cloud started a task for, and
//! how many fire times a missed-run policy skipped. Pure data; the controller
//! (`crates/cloud/src/functions/triggers.rs`) writes it, the CLI reads it
//! (`verge get triggers`, `verge describe trigger`).

use serde::{Deserialize, Serialize};

use crate::specs::FiresOn;

/// `status` of a Trigger object.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// The generation the rest describes.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// `cloud` (the cloud starts a Task at each fire time) or `nodes` (each node it is
    /// placed on fires it itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fires_on: Option<FiresOn>,
    /// The next fire time (Unix ms), if the schedule has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_ms: Option<i64>,
    /// The newest fire time the cloud has handled (Unix ms): fired, or the time it
    /// started counting from. Stored before the task is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_ms: Option<i64>,
    /// Fire times skipped (missed-run policy), in total.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
    /// Why it does not fire (its function is missing), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_older_clouds_wrote_and_writes_what_the_cli_reads() {
        // Older controllers wrote `null` for an absent message or next fire time.
        let old = serde_json::json!({"observedGeneration": 1, "firesOn": "cloud",
            "nextFireMs": 1_000, "lastFireMs": 500, "message": null});
        let s: TriggerStatus = serde_json::from_value(old).unwrap();
        assert_eq!(s.fires_on, Some(FiresOn::Cloud));
        assert_eq!(s.message, None);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"observedGeneration": 1, "firesOn": "cloud",
                "nextFireMs": 1_000, "lastFireMs": 500})
        );
        let nodes = TriggerStatus {
            fires_on: Some(FiresOn::Nodes),
            skipped: 3,
            ..Default::default()
        };
        let v = serde_json::to_value(&nodes).unwrap();
        assert_eq!(v["firesOn"], "nodes");
        assert_eq!(v["skipped"], 3);
    }
}
