//! `status` of a Function: what the cloud's function controller found when it loaded
//! (cloud placement) or compiled (edge placement) the function's current version.
//! Pure data; the controller (`crates/cloud/src/functions`) writes it, the CLI reads
//! it (`verge get functions` PHASE, `verge describe`, `verge apply --wait`).

use serde::{Deserialize, Serialize};

/// Whether the function's current version is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FunctionPhase {
    /// Not checked yet.
    #[default]
    Pending,
    /// Loaded in the cloud, or compiled for edge nodes.
    Ready,
    /// Does not load (the interpreter's message says why), or a reference is missing.
    Failed,
}

impl FunctionPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionPhase::Pending => "Pending",
            FunctionPhase::Ready => "Ready",
            FunctionPhase::Failed => "Failed",
        }
    }
}

/// Where a function runs (`cloud` / `edge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FunctionPlacement {
    #[default]
    Edge,
    Cloud,
}

/// `status` of a Function object.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The generation the rest describes (`null` for an object without one).
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: FunctionPhase,
    /// For people: where it runs, or why it failed.
    #[serde(default)]
    pub message: String,
    /// The spec's runtime (`python3`, `node`, `builtin`, …).
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub placement: FunctionPlacement,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_json_the_cli_reads() {
        let v = serde_json::json!({"observedGeneration": 2, "phase": "Failed",
            "message": "SyntaxError: x", "runtime": "python3", "placement": "cloud"});
        let s: FunctionStatus = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.phase, FunctionPhase::Failed);
        assert_eq!(s.placement, FunctionPlacement::Cloud);
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        // An object nothing has checked yet.
        let empty: FunctionStatus = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty.phase.as_str(), "Pending");
        assert_eq!(empty.observed_generation, None);
    }
}
