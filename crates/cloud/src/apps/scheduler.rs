//! Pure placement: which nodes run an app and how many replicas each. No I/O: plain
//! values in, plain values out, so every rule is unit-tested.
//!
//! Filter: the node is Ready, its labels match `placement.nodeSelector`, its
//! architecture is in `placement.architectures` (when set), and what is left of its
//! capacity (after the other apps placed there) fits one replica's `resources`.
//! Score: `replicasPerNode` puts that many on every node that passes; `replicas`
//! spreads them one at a time onto the node with the fewest replicas of this app, then
//! the most free capacity, then by name.
//!
//! Placement is sticky: a node in the app's `current` assignment keeps it while it
//! fits, also while it is NotReady (a node that lost its uplink keeps running its apps
//! offline; taking them away would stop them the moment it reconnects), and spread
//! replicas stay where they are before new ones are placed, so two apps never chase
//! each other's capacity from one pass to the next.

use std::collections::BTreeMap;

/// What the scheduler knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub arch: String,
    pub ready: bool,
    /// Allocatable CPU (millicores) and memory (bytes); `None` = unknown (no limit).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Already requested by other apps' replicas on this node.
    pub used_cpu_millis: u64,
    pub used_memory_bytes: u64,
}

/// One replica's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// How many replicas, and where they may go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlacementRule {
    pub node_selector: BTreeMap<String, String>,
    pub architectures: Vec<String>,
    pub count: Count,
    pub request: Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    PerNode(u32),
    Spread(u32),
}

impl Default for Count {
    fn default() -> Self {
        Count::PerNode(1)
    }
}

/// Where the app's replicas go: node → replicas (only nodes with at least one).
pub type Assignment = BTreeMap<String, u32>;

/// Why nothing (or not everything) could be placed: the reason of the
/// `Unschedulable` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub reason: &'static str,
    pub message: String,
}

/// Places an app. `Ok` when every wanted replica found a node; otherwise the partial
/// assignment is still returned with the reason, so what fits keeps running.
pub fn schedule(
    rule: &PlacementRule,
    nodes: &[NodeInfo],
    current: &Assignment,
) -> (Assignment, Option<Unschedulable>) {
    let mut counts = NodeCounts::default();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    for n in nodes {
        let verdict = filter(rule, n, current.contains_key(&n.name));
        counts.add(verdict);
        if verdict == Verdict::Fits {
            feasible.push(n);
        }
    }
    let mut out = Assignment::new();
    match rule.count {
        Count::PerNode(k) => {
            let mut short = 0u32;
            for n in &feasible {
                let fit = fits_count(rule.request, n, k);
                if fit > 0 {
                    out.insert(n.name.clone(), fit);
                }
                short += k - fit;
            }
            if feasible.is_empty() {
                return (out, Some(counts.explain(nodes.len())));
            }
            if short > 0 {
                return (
                    out,
                    Some(Unschedulable {
                        reason: "InsufficientCapacity",
                        message: format!(
                            "{short} of {} replicas do not fit the capacity left on their nodes",
                            k as usize * feasible.len()
                        ),
                    }),
                );
            }
            (out, None)
        }
        Count::Spread(total) => {
            if total == 0 {
                return (out, None);
            }
            let mut placed = 0;
            // Replicas stay where they are first.
            for n in &feasible {
                let Some(&had) = current.get(&n.name) else {
                    continue;
                };
                let keep = fits_count(rule.request, n, had).min(total - placed);
                if keep > 0 {
                    out.insert(n.name.clone(), keep);
                    placed += keep;
                }
            }
            while placed < total {
                let best = feasible
                    .iter()
                    .filter(|n| {
                        let have = out.get(&n.name).copied().unwrap_or(0);
                        fits_count(rule.request, n, have + 1) > have
                    })
                    .min_by(|a, b| {
                        let ca = out.get(&a.name).copied().unwrap_or(0);
                        let cb = out.get(&b.name).copied().unwrap_or(0);
                        ca.cmp(&cb)
                            .then_with(|| free_score(b).cmp(&free_score(a)))
                            .then_with(|| a.name.cmp(&b.name))
                    });
                let Some(best) = best else { break };
                *out.entry(best.name.clone()).or_default() += 1;
                placed += 1;
            }
            if placed < total {
                let why = if feasible.is_empty() {
                    counts.explain(nodes.len())
                } else {
                    Unschedulable {
                        reason: "InsufficientCapacity",
                        message: format!(
                            "placed {placed} of {total} replicas; the matching nodes have no \
                             capacity left for more"
                        ),
                    }
                };
                return (out, Some(why));
            }
            (out, None)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Fits,
    NotReady,
    Selector,
    Arch,
    Capacity,
}

fn filter(rule: &PlacementRule, n: &NodeInfo, placed_here: bool) -> Verdict {
    if !rule
        .node_selector
        .iter()
        .all(|(k, v)| n.labels.get(k) == Some(v))
    {
        return Verdict::Selector;
    }
    if !rule.architectures.is_empty() && !rule.architectures.iter().any(|a| a == &n.arch) {
        return Verdict::Arch;
    }
    if !n.ready && !placed_here {
        return Verdict::NotReady;
    }
    if fits_count(rule.request, n, 1) == 0 {
        return Verdict::Capacity;
    }
    Verdict::Fits
}

/// How many of `want` replicas fit on `n` (0..=want).
fn fits_count(req: Request, n: &NodeInfo, want: u32) -> u32 {
    let by = |cap: Option<u64>, used: u64, each: u64| -> u64 {
        match cap {
            None => u64::MAX,
            Some(_) if each == 0 => u64::MAX,
            Some(c) => c.saturating_sub(used) / each,
        }
    };
    let n_fit = by(n.cpu_millis, n.used_cpu_millis, req.cpu_millis).min(by(
        n.memory_bytes,
        n.used_memory_bytes,
        req.memory_bytes,
    ));
    u32::try_from(n_fit.min(u64::from(want))).unwrap_or(want)
}

/// Free capacity, for preferring the least loaded node (memory in MiB plus CPU).
fn free_score(n: &NodeInfo) -> u64 {
    let mem = n.memory_bytes.map_or(u64::MAX / 4, |c| {
        c.saturating_sub(n.used_memory_bytes) >> 20
    });
    let cpu = n
        .cpu_millis
        .map_or(u64::MAX / 4, |c| c.saturating_sub(n.used_cpu_millis));
    mem.saturating_add(cpu)
}

#[derive(Default)]
struct NodeCounts {
    not_ready: usize,
    selector: usize,
    arch: usize,
    capacity: usize,
}

impl NodeCounts {
    fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Fits => {}
            Verdict::NotReady => self.not_ready += 1,
            Verdict::Selector => self.selector += 1,
            Verdict::Arch => self.arch += 1,
            Verdict::Capacity => self.capacity += 1,
        }
    }

    /// The condition when no node fits: every reason with its node count.
    fn explain(&self, total: usize) -> Unschedulable {
        if total == 0 {
            return Unschedulable {
                reason: "NoNodes",
                message: "no nodes have joined the cluster".into(),
            };
        }
        let mut parts = Vec::new();
        if self.selector > 0 {
            parts.push(format!("{} do not match nodeSelector", self.selector));
        }
        if self.arch > 0 {
            parts.push(format!("{} have another architecture", self.arch));
        }
        if self.not_ready > 0 {
            parts.push(format!("{} are not Ready", self.not_ready));
        }
        if self.capacity > 0 {
            parts.push(format!("{} lack cpu or memory", self.capacity));
        }
        let reason = if self.capacity > 0 {
            "InsufficientCapacity"
        } else if self.selector == total {
            "NoMatchingNodes"
        } else {
            "NoFeasibleNodes"
        };
        Unschedulable {
            reason,
            message: format!("0 of {total} nodes fit: {}", parts.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, site: &str, cpu: u64, mem_mi: u64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::from([("site".into(), site.into())]),
            arch: "x86_64".into(),
            ready: true,
            cpu_millis: Some(cpu),
            memory_bytes: Some(mem_mi << 20),
            ..Default::default()
        }
    }

    fn rule(count: Count) -> PlacementRule {
        PlacementRule {
            count,
            ..Default::default()
        }
    }

    #[test]
    fn per_node_goes_everywhere_that_matches() {
        let nodes = [node("a", "sh", 1000, 512), node("b", "bj", 1000, 512)];
        let mut r = rule(Count::PerNode(2));
        r.node_selector.insert("site".into(), "sh".into());
        let (a, why) = schedule(&r, &nodes, &Assignment::new());
        assert_eq!(a, Assignment::from([("a".into(), 2)]));
        assert_eq!(why, None);
    }

    #[test]
    fn unsatisfiable_selector_is_explained() {
        let nodes = [node("a", "sh", 1000, 512), node("b", "bj", 1000, 512)];
        let mut r = rule(Count::PerNode(1));
        r.node_selector.insert("site".into(), "gz".into());
        let (a, why) = schedule(&r, &nodes, &Assignment::new());
        assert!(a.is_empty());
        let why = why.unwrap();
        assert_eq!(why.reason, "NoMatchingNodes");
        assert_eq!(why.message, "0 of 2 nodes fit: 2 do not match nodeSelector");
    }

    #[test]
    fn capacity_filters_and_counts_other_apps() {
        let mut full = node("a", "sh", 1000, 512);
        full.used_memory_bytes = 480 << 20;
        let nodes = [full, node("b", "sh", 1000, 512)];
        let mut r = rule(Count::PerNode(1));
        r.request.memory_bytes = 64 << 20;
        let (a, why) = schedule(&r, &nodes, &Assignment::new());
        assert_eq!(a, Assignment::from([("b".into(), 1)]));
        assert_eq!(why, None);

        r.request.memory_bytes = 1 << 30;
        let (a, why) = schedule(&r, &nodes, &Assignment::new());
        assert!(a.is_empty());
        assert_eq!(why.unwrap().reason, "InsufficientCapacity");
    }

    #[test]
    fn spread_balances_then_prefers_free_capacity() {
        let mut busy = node("a", "sh", 4000, 4096);
        busy.used_cpu_millis = 3000;
        let nodes = [
            busy,
            node("b", "sh", 4000, 4096),
            node("c", "sh", 4000, 4096),
        ];
        let (a, why) = schedule(&rule(Count::Spread(4)), &nodes, &Assignment::new());
        assert_eq!(why, None);
        assert_eq!(
            a,
            Assignment::from([("a".into(), 1), ("b".into(), 2), ("c".into(), 1)])
        );
    }

    #[test]
    fn spread_stops_at_capacity_and_says_so() {
        let nodes = [node("a", "sh", 1000, 512)];
        let mut r = rule(Count::Spread(3));
        r.request.cpu_millis = 400;
        let (a, why) = schedule(&r, &nodes, &Assignment::new());
        assert_eq!(a, Assignment::from([("a".into(), 2)]));
        assert_eq!(why.unwrap().reason, "InsufficientCapacity");
    }

    #[test]
    fn placement_is_sticky_and_survives_not_ready() {
        let mut down = node("a", "sh", 4000, 4096);
        down.ready = false;
        let nodes = [
            down,
            node("b", "sh", 4000, 4096),
            node("c", "sh", 4000, 4096),
        ];
        // A NotReady node keeps what it runs (per node and spread)...
        let current = Assignment::from([("a".into(), 1)]);
        let (a, _) = schedule(&rule(Count::PerNode(1)), &nodes, &current);
        assert_eq!(
            a,
            Assignment::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
        );
        // ...but gets nothing new.
        let (a, _) = schedule(&rule(Count::PerNode(1)), &nodes, &Assignment::new());
        assert!(!a.contains_key("a"));
        // Spread replicas stay put even where another node has more room.
        let mut busy = node("b", "sh", 4000, 4096);
        busy.used_cpu_millis = 3000;
        let nodes = [busy, node("c", "sh", 4000, 4096)];
        let current = Assignment::from([("b".into(), 1)]);
        let (a, _) = schedule(&rule(Count::Spread(1)), &nodes, &current);
        assert_eq!(a, Assignment::from([("b".into(), 1)]));
        // Scaling down keeps the earliest nodes' replicas.
        let current = Assignment::from([("b".into(), 1), ("c".into(), 1)]);
        let (a, _) = schedule(&rule(Count::Spread(1)), &nodes, &current);
        assert_eq!(a.values().sum::<u32>(), 1);
    }

    #[test]
    fn architecture_and_readiness_filter() {
        let mut arm = node("a", "sh", 1000, 512);
        arm.arch = "aarch64".into();
        let mut down = node("b", "sh", 1000, 512);
        down.ready = false;
        let nodes = [arm, down, node("c", "sh", 1000, 512)];
        let mut r = rule(Count::PerNode(1));
        r.architectures = vec!["x86_64".into()];
        let (a, _) = schedule(&r, &nodes, &Assignment::new());
        assert_eq!(a, Assignment::from([("c".into(), 1)]));
        r.architectures = vec!["mips".into()];
        let (_, why) = schedule(&r, &nodes, &Assignment::new());
        assert_eq!(
            why.unwrap().message,
            "0 of 3 nodes fit: 3 have another architecture"
        );
    }
}
