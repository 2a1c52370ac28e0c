//! Pure gray release: given the app's spec, where it is placed, what the nodes report
//! and the rollout state kept in the App's status, decide which version each node
//! runs and what the state becomes. No I/O and no clock: `now_ms` is an input.
//!
//! The rules:
//! - The first version of an app goes to every placed node at once.
//! - A new `spec.version` starts a rollout from step 0. Step `k` with `percent` p wants
//!   `ceil(N·p/100)` of the N placed nodes (at least one) on the new version; nodes
//!   already on it count first, then by name, so widening keeps the earlier canaries.
//!   At most `maxUnavailable` nodes are switched but not yet healthy at once.
//! - The step's health gate passes when every replica on every canary node reports the
//!   new version, Running and healthy. It fails when one of them is unhealthy, Failed,
//!   or has restarted [`CRASH_RESTARTS`] times, or when the gate has not passed within
//!   `progressDeadlineSeconds`. Then `autoRollback` sends every node back to the stable
//!   version (phase `RolledBack`); otherwise the rollout stops where it is (`Failed`).
//! - After the gate: the step's pause (none, a duration, or `manual` — wait for
//!   `verge rollout promote`), then the next step; after the last one the new version
//!   is the stable one (`Complete`).
//! - `verge rollout pause` freezes the assignment (phase `Paused`); `resume` goes on
//!   and also retries a `Failed` gate with a fresh deadline.
//! - Setting `spec.version` back to the stable version (an explicit rollback) moves
//!   every node there at once.

use std::collections::BTreeMap;

use verge_api::specs::{Pause, RolloutStrategy};
use verge_proto::{InstanceState, InstanceStatus};

use super::scheduler::Assignment;

/// A canary that restarted this many times fails the health gate.
pub const CRASH_RESTARTS: u32 = 3;

/// The rollout state kept in the App's `status.rollout` (typed in `verge_api`).
pub use verge_api::status::app::{RolloutPhase as Phase, RolloutState};

/// Operator input, from the App's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Commands {
    /// `verge rollout pause` (until `resume`).
    pub paused: bool,
    /// `verge rollout promote` was given for this step index.
    pub promoted_step: Option<usize>,
    /// `verge rollout resume` counter: a change retries a failed gate.
    pub resume_seq: u64,
    /// The spec was set back by `verge rollout rollback`: go there at once.
    pub rollback: bool,
}

/// Everything [`reconcile`] looks at.
pub struct Inputs<'a> {
    pub version: &'a str,
    pub spec: &'a serde_json::Value,
    pub strategy: &'a RolloutStrategy,
    pub placement: &'a Assignment,
    /// Node → its reported instances of this app.
    pub reports: &'a BTreeMap<String, Vec<InstanceStatus>>,
    pub commands: Commands,
    /// The `resume_seq` the state last acted on.
    pub seen_resume_seq: u64,
    /// The target spec has a health check: canaries must pass a probe.
    pub probed: bool,
    /// Node reports may still be missing (the controller just started): no deadline
    /// failures yet.
    pub warming_up: bool,
    pub now_ms: i64,
}

/// The decision: new state (including every node's version), and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: RolloutState,
    pub requeue_ms: Option<u64>,
}

/// How a node's replicas of `version` are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeHealth {
    Healthy,
    Pending,
    Failing,
}

fn node_health(
    reports: &BTreeMap<String, Vec<InstanceStatus>>,
    node: &str,
    version: &str,
    replicas: u32,
    probed: bool,
) -> (NodeHealth, Option<String>) {
    let Some(list) = reports.get(node) else {
        return (NodeHealth::Pending, None);
    };
    let mine: Vec<&InstanceStatus> = list.iter().filter(|i| i.version == version).collect();
    for i in &mine {
        let crashed = i.restarts >= CRASH_RESTARTS;
        if i.healthy == Some(false) || i.state == InstanceState::Failed || crashed {
            let why = i
                .last_error
                .clone()
                .unwrap_or_else(|| match (i.healthy, crashed) {
                    (Some(false), _) => "health check failing".to_string(),
                    (_, true) => format!("restarted {} times", i.restarts),
                    _ => i.state.as_str().to_string(),
                });
            return (
                NodeHealth::Failing,
                Some(format!("{node}: {}-{} v{version}: {why}", i.app, i.replica)),
            );
        }
    }
    // With a health check, healthy means a probe passed; without one, running.
    let ok = mine
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .filter(|i| {
            if probed {
                i.healthy == Some(true)
            } else {
                i.healthy != Some(false)
            }
        })
        .count();
    if ok >= replicas as usize {
        (NodeHealth::Healthy, None)
    } else {
        (NodeHealth::Pending, None)
    }
}

/// Canary count for a step: `ceil(n·percent/100)`, at least 1 when n > 0.
pub fn canaries(n: usize, percent: u32) -> usize {
    if n == 0 {
        return 0;
    }
    (n * percent as usize).div_ceil(100).clamp(1, n)
}

pub fn reconcile(prev: Option<&RolloutState>, inp: &Inputs<'_>) -> Decision {
    let steps = inp.strategy.effective_steps();
    let mut st = match prev {
        None => RolloutState {
            phase: Phase::Progressing,
            target_version: inp.version.to_string(),
            step: steps.len() - 1,
            steps: steps.len(),
            step_started_ms: inp.now_ms,
            message: "first version: to every node".into(),
            ..Default::default()
        },
        Some(p) => p.clone(),
    };
    st.steps = steps.len();

    // A version change starts over.
    if st.target_version != inp.version {
        let back = st.stable_version.as_deref() == Some(inp.version) || inp.commands.rollback;
        st.target_version = inp.version.to_string();
        st.phase = Phase::Progressing;
        st.step = if st.stable_version.is_some() && !back {
            0
        } else {
            steps.len() - 1
        };
        st.message = if back {
            format!("rolling back to {}", inp.version)
        } else {
            format!("rolling out {}", inp.version)
        };
        st.step_started_ms = inp.now_ms;
        st.gate_passed_ms = None;
        st.healthy_nodes = 0;
    }
    st.target_spec = Some(inp.spec.clone());

    let stable = st.stable_version.clone();
    let target = inp.version.to_string();
    let mut order: Vec<&String> = inp.placement.keys().collect();
    // Nodes already on the target first: widening keeps the earlier canaries.
    order.sort_by_key(|n| (st.nodes.get(*n) != Some(&target), (*n).clone()));

    // Which version each placed node gets, before applying the step's rules.
    let mut nodes: BTreeMap<String, String> = BTreeMap::new();
    let on_target = |st: &RolloutState, n: &str| st.nodes.get(n) == Some(&target);

    match st.phase {
        Phase::Complete => {
            for n in inp.placement.keys() {
                nodes.insert(n.clone(), target.clone());
            }
            st.nodes = nodes;
            return Decision {
                state: st,
                requeue_ms: None,
            };
        }
        Phase::RolledBack => {
            let v = stable.clone().unwrap_or_else(|| target.clone());
            for n in inp.placement.keys() {
                nodes.insert(n.clone(), v.clone());
            }
            st.nodes = nodes;
            return Decision {
                state: st,
                requeue_ms: None,
            };
        }
        _ => {}
    }

    // Paused by the operator: hold; new nodes get the stable version.
    if inp.commands.paused {
        for n in inp.placement.keys() {
            let v = if on_target(&st, n) || stable.is_none() {
                target.clone()
            } else {
                stable.clone().unwrap_or_else(|| target.clone())
            };
            nodes.insert(n.clone(), v);
        }
        st.nodes = nodes;
        st.phase = Phase::Paused;
        st.message = "paused by the operator (verge rollout resume)".into();
        return Decision {
            state: st,
            requeue_ms: None,
        };
    }
    if st.phase == Phase::Paused {
        st.phase = Phase::Progressing;
        st.message = format!("resumed: rolling out {target}");
    }
    if st.phase == Phase::Failed {
        if inp.commands.resume_seq != inp.seen_resume_seq {
            st.phase = Phase::Progressing;
            st.step_started_ms = inp.now_ms;
            st.gate_passed_ms = None;
            st.message = format!("resumed: retrying step {}", st.step + 1);
        } else {
            // Hold where it failed.
            for n in inp.placement.keys() {
                let v = st
                    .nodes
                    .get(n)
                    .cloned()
                    .or_else(|| stable.clone())
                    .unwrap_or_else(|| target.clone());
                nodes.insert(n.clone(), v);
            }
            st.nodes = nodes;
            return Decision {
                state: st,
                requeue_ms: None,
            };
        }
    }

    // Progressing.
    let step = &steps[st.step.min(steps.len() - 1)];
    let want = if stable.is_none() {
        order.len()
    } else {
        canaries(order.len(), step.percent)
    };
    let max_unavailable = inp.strategy.max_unavailable() as usize;
    let mut switching = 0usize;
    let mut healthy_nodes = 0usize;
    let mut all_healthy = true;
    let mut failure: Option<String> = None;
    for (i, n) in order.iter().enumerate() {
        let replicas = inp.placement[*n];
        let already = on_target(&st, n) || stable.is_none();
        if i < want {
            if already {
                nodes.insert((*n).clone(), target.clone());
                let (h, why) = node_health(inp.reports, n, &target, replicas, inp.probed);
                match h {
                    NodeHealth::Healthy => healthy_nodes += 1,
                    NodeHealth::Pending => {
                        all_healthy = false;
                        switching += 1;
                    }
                    NodeHealth::Failing => {
                        all_healthy = false;
                        failure = failure.or(why);
                    }
                }
            } else if switching < max_unavailable {
                nodes.insert((*n).clone(), target.clone());
                switching += 1;
                all_healthy = false;
            } else {
                nodes.insert((*n).clone(), stable.clone().unwrap_or(target.clone()));
                all_healthy = false;
            }
        } else {
            nodes.insert((*n).clone(), stable.clone().unwrap_or(target.clone()));
        }
    }
    st.nodes = nodes;

    // Progress (one more healthy node) restarts the deadline.
    if healthy_nodes > st.healthy_nodes {
        st.step_started_ms = inp.now_ms;
    }
    st.healthy_nodes = healthy_nodes;
    let deadline = inp.strategy.progress_deadline().as_millis() as i64;
    if failure.is_none()
        && !all_healthy
        && !inp.warming_up
        && st.gate_passed_ms.is_none()
        && inp.now_ms - st.step_started_ms > deadline
    {
        failure = Some(format!(
            "step {} not healthy within {}s",
            st.step + 1,
            deadline / 1000
        ));
    }
    if let Some(why) = failure {
        if inp.strategy.auto_rollback() && stable.is_some() {
            let back = stable.clone().unwrap_or_default();
            st.phase = Phase::RolledBack;
            st.message = format!("health gate failed ({why}); rolled back to {back}");
            for v in st.nodes.values_mut() {
                *v = back.clone();
            }
        } else {
            st.phase = Phase::Failed;
            st.message =
                format!("health gate failed ({why}); holding (verge rollout resume | rollback)");
        }
        return Decision {
            state: st,
            requeue_ms: None,
        };
    }
    if !all_healthy || want == 0 {
        st.message = format!(
            "step {}/{}: {}% ({} of {} nodes) waiting for health",
            st.step + 1,
            steps.len(),
            step.percent,
            want,
            order.len()
        );
        return Decision {
            state: st,
            requeue_ms: Some(1000),
        };
    }
    let passed = *st.gate_passed_ms.get_or_insert(inp.now_ms);
    let go_on = match step.pause() {
        Pause::None => None,
        Pause::For(d) => {
            let until = passed + d.as_millis() as i64;
            (inp.now_ms < until).then_some(until - inp.now_ms)
        }
        Pause::Manual => {
            if inp.commands.promoted_step == Some(st.step) {
                None
            } else {
                st.message = format!(
                    "step {}/{} healthy; waiting for `verge rollout promote`",
                    st.step + 1,
                    steps.len()
                );
                return Decision {
                    state: st,
                    requeue_ms: None,
                };
            }
        }
    };
    if let Some(wait) = go_on {
        st.message = format!(
            "step {}/{} healthy; pausing {}s",
            st.step + 1,
            steps.len(),
            (wait + 999) / 1000
        );
        return Decision {
            state: st,
            requeue_ms: Some(wait as u64),
        };
    }
    if st.step + 1 >= steps.len() || stable.is_none() {
        st.phase = Phase::Complete;
        // The target is the stable version now; the one before is kept for
        // `verge rollout rollback`.
        if st.stable_version.as_deref() != Some(target.as_str()) {
            st.previous_version = st.stable_version.take();
            st.previous_spec = st.stable_spec.take();
        }
        st.stable_version = Some(target.clone());
        st.stable_spec = st.target_spec.clone();
        st.message = format!("{target} on all {} nodes", order.len());
        return Decision {
            state: st,
            requeue_ms: None,
        };
    }
    st.step += 1;
    st.step_started_ms = inp.now_ms;
    st.gate_passed_ms = None;
    st.healthy_nodes = 0;
    st.message = format!("step {}/{} started", st.step + 1, steps.len());
    Decision {
        state: st,
        requeue_ms: Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_api::specs::RolloutStep;

    fn placement(n: usize) -> Assignment {
        (0..n).map(|i| (format!("n{i}"), 1)).collect()
    }

    fn strategy(steps: &[(u32, Option<&str>)], auto_rollback: bool) -> RolloutStrategy {
        RolloutStrategy {
            steps: steps
                .iter()
                .map(|(p, pause)| RolloutStep {
                    percent: *p,
                    pause: pause.map(str::to_string),
                })
                .collect(),
            max_unavailable: Some(10),
            auto_rollback: Some(auto_rollback),
            progress_deadline_seconds: Some(60),
        }
    }

    fn inst(version: &str, healthy: Option<bool>, state: InstanceState) -> InstanceStatus {
        InstanceStatus {
            healthy,
            ..InstanceStatus::new("web", 0, version, state)
        }
    }

    /// Every node reports what it was told to run, healthy (or as `bad` says).
    fn obey(st: &RolloutState, bad: Option<&str>) -> BTreeMap<String, Vec<InstanceStatus>> {
        st.nodes
            .iter()
            .map(|(n, v)| {
                let healthy = bad != Some(v.as_str());
                (
                    n.clone(),
                    vec![inst(v, Some(healthy), InstanceState::Running)],
                )
            })
            .collect()
    }

    struct Sim {
        strategy: RolloutStrategy,
        placement: Assignment,
        state: Option<RolloutState>,
        now: i64,
        commands: Commands,
    }

    impl Sim {
        fn new(n: usize, strategy: RolloutStrategy) -> Self {
            Sim {
                strategy,
                placement: placement(n),
                state: None,
                now: 1_000_000,
                commands: Commands::default(),
            }
        }

        fn step(
            &mut self,
            version: &str,
            reports: &BTreeMap<String, Vec<InstanceStatus>>,
        ) -> Decision {
            let spec = serde_json::json!({ "version": version });
            let d = reconcile(
                self.state.as_ref(),
                &Inputs {
                    version,
                    spec: &spec,
                    strategy: &self.strategy,
                    placement: &self.placement,
                    reports,
                    commands: self.commands,
                    seen_resume_seq: 0,
                    probed: true,
                    warming_up: false,
                    now_ms: self.now,
                },
            );
            self.state = Some(d.state.clone());
            d
        }

        /// Runs until nothing changes, nodes obeying; returns the per-step canary counts
        /// seen.
        fn settle(&mut self, version: &str, bad: Option<&str>) -> Vec<usize> {
            let mut seen = Vec::new();
            for _ in 0..50 {
                let reports = self
                    .state
                    .as_ref()
                    .map(|s| obey(s, bad))
                    .unwrap_or_default();
                let before = self.state.clone();
                let d = self.step(version, &reports);
                let on = d.state.nodes.values().filter(|v| *v == version).count();
                if seen.last() != Some(&on) {
                    seen.push(on);
                }
                self.now += 1000;
                if Some(&d.state) == before.as_ref() && d.requeue_ms.is_none() {
                    break;
                }
            }
            seen
        }

        fn phase(&self) -> Phase {
            self.state.as_ref().unwrap().phase
        }
    }

    #[test]
    fn an_unprobed_canary_does_not_pass_the_gate() {
        let mut sim = Sim::new(2, strategy(&[(50, None)], true));
        sim.settle("1.0.0", None);
        let _ = sim.step("2.0.0", &BTreeMap::new());
        let st = sim.state.clone().unwrap();
        // Running but never probed yet: still waiting.
        let reports: BTreeMap<_, _> = st
            .nodes
            .iter()
            .map(|(n, v)| (n.clone(), vec![inst(v, None, InstanceState::Running)]))
            .collect();
        for _ in 0..5 {
            sim.now += 1000;
            let d = sim.step("2.0.0", &reports);
            assert_eq!(d.state.phase, Phase::Progressing);
            assert_eq!(d.state.step, 0);
        }
    }

    #[test]
    fn no_deadline_failure_while_warming_up_or_after_the_gate_passed() {
        let mut sim = Sim::new(2, strategy(&[(50, Some("manual"))], true));
        sim.settle("1.0.0", None);
        sim.settle("2.0.0", None);
        assert!(sim.state.as_ref().unwrap().gate_passed_ms.is_some());
        // Long wait for promote, then (cloud restart) no reports at all.
        sim.now += 3_600_000;
        let d = sim.step("2.0.0", &BTreeMap::new());
        assert_eq!(d.state.phase, Phase::Progressing, "{}", d.state.message);
    }

    #[test]
    fn rollback_targets_after_completion() {
        let mut sim = Sim::new(2, strategy(&[], true));
        sim.settle("1.0.0", None);
        sim.settle("1.1.0", None);
        let st = sim.state.clone().unwrap();
        assert_eq!(st.phase, Phase::Complete);
        assert_eq!(st.previous_version.as_deref(), Some("1.0.0"));
        sim.settle("1.2.0", None);
        let st = sim.state.clone().unwrap();
        assert_eq!(st.previous_version.as_deref(), Some("1.1.0"));
        assert_eq!(st.stable_version.as_deref(), Some("1.2.0"));
        // Explicit rollback to the previous version: at once, then it is stable.
        sim.commands.rollback = true;
        assert_eq!(sim.settle("1.1.0", None).last(), Some(&2));
        let st = sim.state.clone().unwrap();
        assert_eq!(st.phase, Phase::Complete);
        assert_eq!(st.stable_version.as_deref(), Some("1.1.0"));
    }

    #[test]
    fn canary_counts() {
        assert_eq!(canaries(3, 33), 1);
        assert_eq!(canaries(3, 34), 2);
        assert_eq!(canaries(3, 100), 3);
        assert_eq!(canaries(1000, 1), 10);
        assert_eq!(canaries(10, 1), 1);
        assert_eq!(canaries(0, 50), 0);
    }

    #[test]
    fn first_version_goes_everywhere_then_gray_release_in_steps() {
        let mut sim = Sim::new(3, strategy(&[(33, None)], true));
        let _ = sim.step("1.0.0", &BTreeMap::new());
        assert_eq!(sim.state.as_ref().unwrap().serving_version(), "1.0.0");
        assert_eq!(sim.settle("1.0.0", None), vec![3]);
        assert_eq!(sim.phase(), Phase::Complete);
        // While 2.0.0 rolls out, 1.0.0 is what the app serves.
        let _ = sim.step("2.0.0", &BTreeMap::new());
        let st = sim.state.clone().unwrap();
        assert_eq!(
            (st.phase, st.serving_version()),
            (Phase::Progressing, "1.0.0")
        );
        assert_eq!(sim.settle("2.0.0", None), vec![1, 3]);
        assert_eq!(sim.state.as_ref().unwrap().serving_version(), "2.0.0");
        assert_eq!(sim.phase(), Phase::Complete);
        let st = sim.state.clone().unwrap();
        assert_eq!(st.stable_version.as_deref(), Some("2.0.0"));
        assert_eq!(st.previous_version.as_deref(), Some("1.0.0"));
        assert_eq!(st.target_version, "2.0.0");
    }

    #[test]
    fn failing_health_rolls_back_when_asked() {
        let mut sim = Sim::new(3, strategy(&[(33, None)], true));
        sim.settle("1.0.0", None);
        sim.settle("2.0.0", None);
        sim.settle("3.0.0", Some("3.0.0"));
        let st = sim.state.clone().unwrap();
        assert_eq!(st.phase, Phase::RolledBack);
        assert!(st.nodes.values().all(|v| v == "2.0.0"), "{:?}", st.nodes);
        // What the app serves is the version it went back to; 3.0.0 stays the target.
        assert_eq!(
            (st.serving_version(), st.target_version.as_str()),
            ("2.0.0", "3.0.0")
        );
        assert!(
            st.message.contains("rolled back to 2.0.0"),
            "{}",
            st.message
        );
        // Nothing more happens until the version changes.
        sim.settle("3.0.0", Some("3.0.0"));
        assert_eq!(sim.phase(), Phase::RolledBack);
        // A fixed version rolls out from the stable one.
        assert_eq!(sim.settle("3.0.1", None), vec![1, 3]);
        assert_eq!(sim.phase(), Phase::Complete);
    }

    #[test]
    fn failing_health_without_auto_rollback_holds() {
        let mut sim = Sim::new(4, strategy(&[(25, None), (50, None)], false));
        sim.settle("1.0.0", None);
        sim.settle("2.0.0", Some("2.0.0"));
        let st = sim.state.clone().unwrap();
        assert_eq!(st.phase, Phase::Failed);
        assert_eq!(st.nodes.values().filter(|v| *v == "2.0.0").count(), 1);
        assert_eq!(st.serving_version(), "1.0.0");
        // resume retries the gate; now healthy, it completes.
        sim.commands.resume_seq = 1;
        let reports = obey(&st, None);
        let d = sim.step("2.0.0", &reports);
        assert_eq!(d.state.phase, Phase::Progressing);
    }

    #[test]
    fn crash_looping_canary_fails_the_gate() {
        let mut sim = Sim::new(2, strategy(&[(50, None)], true));
        sim.settle("1.0.0", None);
        let _ = sim.step("2.0.0", &BTreeMap::new());
        let st = sim.state.clone().unwrap();
        let canary = st
            .nodes
            .iter()
            .find(|(_, v)| *v == "2.0.0")
            .unwrap()
            .0
            .clone();
        let mut i = inst("2.0.0", None, InstanceState::Backoff);
        i.restarts = CRASH_RESTARTS;
        i.last_error = Some("OOM-killed".into());
        let reports = BTreeMap::from([(canary, vec![i])]);
        let d = sim.step("2.0.0", &reports);
        assert_eq!(d.state.phase, Phase::RolledBack);
        assert!(
            d.state.message.contains("OOM-killed"),
            "{}",
            d.state.message
        );
    }

    #[test]
    fn deadline_fails_a_step_that_never_gets_healthy() {
        let mut sim = Sim::new(2, strategy(&[(50, None)], false));
        sim.settle("1.0.0", None);
        let d = sim.step("2.0.0", &BTreeMap::new());
        assert_eq!(d.state.phase, Phase::Progressing);
        sim.now += 61_000;
        let d = sim.step("2.0.0", &BTreeMap::new());
        assert_eq!(d.state.phase, Phase::Failed);
        assert!(d.state.message.contains("not healthy within 60s"));
    }

    #[test]
    fn manual_pause_waits_for_promote_and_timed_pause_waits() {
        let mut sim = Sim::new(
            4,
            strategy(&[(25, Some("manual")), (50, Some("10s"))], true),
        );
        sim.settle("1.0.0", None);
        assert_eq!(sim.settle("2.0.0", None), vec![1]);
        assert!(
            sim.state
                .as_ref()
                .unwrap()
                .message
                .contains("verge rollout promote")
        );
        sim.commands.promoted_step = Some(0);
        let seen = sim.settle("2.0.0", None);
        assert_eq!(seen.last(), Some(&4));
        assert_eq!(sim.phase(), Phase::Complete);
    }

    #[test]
    fn operator_pause_freezes_and_resume_goes_on() {
        let mut sim = Sim::new(4, strategy(&[(25, None), (50, None)], true));
        sim.settle("1.0.0", None);
        sim.commands.paused = true;
        sim.settle("2.0.0", None);
        assert_eq!(sim.phase(), Phase::Paused);
        assert!(
            sim.state
                .as_ref()
                .unwrap()
                .nodes
                .values()
                .all(|v| v == "1.0.0")
        );
        sim.commands.paused = false;
        assert_eq!(sim.settle("2.0.0", None).last(), Some(&4));
        assert_eq!(sim.phase(), Phase::Complete);
    }

    #[test]
    fn max_unavailable_limits_nodes_switching_at_once() {
        let mut s = strategy(&[], true);
        s.max_unavailable = Some(2);
        let mut sim = Sim::new(5, s);
        sim.settle("1.0.0", None);
        // Nobody reports: only two switch.
        let d = sim.step("2.0.0", &BTreeMap::new());
        assert_eq!(d.state.nodes.values().filter(|v| *v == "2.0.0").count(), 2);
        assert_eq!(sim.settle("2.0.0", None).last(), Some(&5));
    }

    #[test]
    fn explicit_rollback_goes_back_at_once() {
        let mut sim = Sim::new(3, strategy(&[(33, Some("manual"))], true));
        sim.settle("1.0.0", None);
        sim.settle("2.0.0", None);
        // Mid-rollout, back to the stable version.
        assert_eq!(sim.settle("1.0.0", None).last(), Some(&3));
        assert_eq!(sim.phase(), Phase::Complete);
    }

    #[test]
    fn widening_keeps_the_earlier_canaries() {
        let mut sim = Sim::new(10, strategy(&[(10, None), (50, None)], true));
        sim.settle("1.0.0", None);
        let _ = sim.step("2.0.0", &BTreeMap::new());
        let first: Vec<String> = sim
            .state
            .as_ref()
            .unwrap()
            .nodes
            .iter()
            .filter(|(_, v)| *v == "2.0.0")
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(first.len(), 1);
        let reports = obey(sim.state.as_ref().unwrap(), None);
        let _ = sim.step("2.0.0", &reports);
        let d = sim.step("2.0.0", &reports);
        let now: Vec<&String> = d
            .state
            .nodes
            .iter()
            .filter(|(_, v)| *v == "2.0.0")
            .map(|(n, _)| n)
            .collect();
        assert_eq!(now.len(), 5);
        assert!(now.contains(&&first[0]));
    }
}
