//! Node lifecycle on the controller runtime: a node's `status.phase` (`Ready`,
//! `NotReady`, `Unknown`), its `Ready` condition, `lastSeen` and `clockSkewMs`.
//!
//! Liveness lives in memory ([`Runtime`], per node): a heartbeat or a session updates
//! it and writes nothing. The `nodes` controller (keyed by node name) reconciles a node
//! when its Node object changes, when a heartbeat or a report makes a write due (the
//! `wakeups` channel — sent only then: a Ready node's heartbeats wake nothing), and at
//! the moment the node's liveness would next change or its `lastSeen` flush falls due
//! (`Action::requeue`). Each reconcile decides with the pure [`plan`] and writes only
//! when the phase, the skew or the flush needs it, so an idle fleet costs one write per
//! node per `last_seen_flush` and no work in between. Nothing here lists nodes on a
//! timer; the Node cache is read once at start for the phases recorded before it.
//!
//! After a cloud (re)start nothing has been heard from any node yet: a node recorded
//! `Ready` is `Unknown` until its first heartbeat makes it `Ready`, or until `misses`
//! intervals from the cloud's start pass without one (`NotReady`); one recorded
//! `NotReady` stays so ([`liveness`]). The `Unknown` mark waits [`UNKNOWN_MARK_DELAY`]
//! after the start, so the nodes that reconnect at once are written `Ready` once
//! instead of `Unknown` and then `Ready`.
//!
//! The cloud's own clock decides liveness (receive time), so a node whose clock is
//! skewed is still judged correctly; the skew is reported in its status.
//!
//! Must not: write per heartbeat, write to a Node being deleted, or remove a node's
//! records (node deletion does, `nodes/delete.rs`).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::time::Instant;
use verge_api::Kind;
use verge_api::status::ConditionStatus;

use super::NodeManager;
use crate::controller::{Action, Controller, Informers, Request, backoff_policy};

#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Expected heartbeat period of nodes.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before NotReady.
    pub misses: u32,
    /// How often `lastSeen` is written to Node status.
    pub last_seen_flush: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            misses: 3,
            last_seen_flush: Duration::from_secs(30),
        }
    }
}

impl LifecycleConfig {
    fn timing(&self) -> Timing {
        let grace = self.heartbeat_interval * self.misses;
        Timing {
            grace,
            flush: self.last_seen_flush,
            unknown_after: UNKNOWN_MARK_DELAY.min(grace / 2),
        }
    }
}

/// What the cloud can say about a node: `status.phase` and the `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heartbeats are arriving.
    Ready,
    /// No heartbeat for `misses` intervals.
    NotReady,
    /// Nothing heard since the cloud started, and not yet `misses` intervals of it.
    Unknown,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Ready => "Ready",
            Liveness::NotReady => "NotReady",
            Liveness::Unknown => "Unknown",
        }
    }

    /// From a stored `status.phase`.
    pub fn parse(phase: &str) -> Option<Liveness> {
        match phase {
            "Ready" => Some(Liveness::Ready),
            "NotReady" => Some(Liveness::NotReady),
            "Unknown" => Some(Liveness::Unknown),
            _ => None,
        }
    }

    /// The `Ready` condition: (status, reason, message).
    pub(super) fn condition(self, misses: u32) -> (ConditionStatus, &'static str, String) {
        match self {
            Liveness::Ready => (
                ConditionStatus::True,
                "HeartbeatsArriving",
                "the node's heartbeats are arriving".into(),
            ),
            Liveness::NotReady => (
                ConditionStatus::False,
                "HeartbeatsMissed",
                format!("no heartbeat for {misses} intervals"),
            ),
            Liveness::Unknown => (
                ConditionStatus::Unknown,
                "NodeStatusUnknown",
                "no heartbeat yet since the cloud started; waiting for the node".into(),
            ),
        }
    }
}

/// A node's liveness (pure). `since_seen`: time since its last heartbeat (or session)
/// *in this cloud process*, `None` if nothing came yet; `watching`: time since the
/// lifecycle controller started; `recorded`: the phase the store held at that start.
/// Heard from within `grace` → Ready, longer ago → NotReady; never heard → Unknown
/// for the first `grace` of the cloud's life, NotReady after (or at once if it was
/// recorded NotReady: nothing new is known of it).
pub fn liveness(
    since_seen: Option<Duration>,
    watching: Duration,
    grace: Duration,
    recorded: Option<Liveness>,
) -> Liveness {
    match since_seen {
        Some(d) if d < grace => Liveness::Ready,
        Some(_) => Liveness::NotReady,
        None if recorded == Some(Liveness::NotReady) || watching >= grace => Liveness::NotReady,
        None => Liveness::Unknown,
    }
}

/// Node reconciles running at once (the store commits their writes in groups).
pub const PHASE_WRITE_CONCURRENCY: usize = 32;

/// How long after the start a node not heard from yet is marked `Unknown` (at most
/// half the grace): the nodes reconnecting in that time are written `Ready` once.
pub const UNKNOWN_MARK_DELAY: Duration = Duration::from_secs(2);

/// A skew change larger than this is written to the Node's status at once (smaller
/// ones ride along with the periodic `lastSeen` flush).
pub(super) const SKEW_REPORT_STEP_MS: i64 = 1000;

/// The lifecycle's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `heartbeat_interval · misses`: silent this long → NotReady.
    pub grace: Duration,
    /// `lastSeen` is written at most this often (when the node was heard meanwhile).
    pub flush: Duration,
    /// Not heard since the start: marked `Unknown` this long after the start.
    pub unknown_after: Duration,
}

/// What is known of one node when it is reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Since its last heartbeat or session in this process (`None`: nothing yet).
    pub since_seen: Option<Duration>,
    /// Since the lifecycle controller started.
    pub watching: Duration,
    /// The phase the store held at that start.
    pub recorded: Option<Liveness>,
    /// The phase written since (or `recorded`).
    pub written: Option<Liveness>,
    /// Since this process last wrote the node's lifecycle fields (`None`: never).
    pub since_flush: Option<Duration>,
    /// Heard from since that write.
    pub seen_since_flush: bool,
    /// The clock skew moved more than [`SKEW_REPORT_STEP_MS`] from what was written.
    pub skew_moved: bool,
}

/// What a reconcile does for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Write this phase (with `lastSeen`, the skew and the `Ready` condition).
    pub write: Option<Liveness>,
    /// Reconcile again after this long (`None`: only when woken).
    pub next: Option<Duration>,
}

/// The decision for one node (pure): whether to write, and when it must be looked at
/// again — when its liveness would next change (silent for `grace` → NotReady; the
/// `Unknown` mark and its end) or its `lastSeen` flush falls due. A NotReady node is
/// only woken by its next heartbeat.
pub fn plan(o: &Observed, t: &Timing) -> Plan {
    let now = liveness(o.since_seen, o.watching, t.grace, o.recorded);
    if now == Liveness::Unknown
        && o.written != Some(Liveness::Unknown)
        && o.watching < t.unknown_after
    {
        return Plan {
            write: None,
            next: Some(t.unknown_after - o.watching),
        };
    }
    let flush_due = o.seen_since_flush && o.since_flush.is_none_or(|d| d >= t.flush);
    let write = (o.written != Some(now) || flush_due || o.skew_moved).then_some(now);
    let next = match now {
        Liveness::Ready => {
            let silent = o.since_seen.unwrap_or_default();
            let to_not_ready = t.grace.saturating_sub(silent);
            // The flush only matters once heard again; a heartbeat after an overdue
            // flush wakes the node itself (`Runtime::wants_write`).
            let to_flush = match (write, o.since_flush) {
                (Some(_), _) | (None, None) => t.flush,
                (None, Some(d)) => t.flush.saturating_sub(d),
            };
            if to_flush.is_zero() {
                Some(to_not_ready)
            } else {
                Some(to_not_ready.min(to_flush))
            }
        }
        Liveness::Unknown => Some(t.grace.saturating_sub(o.watching)),
        Liveness::NotReady => None,
    };
    Plan { write, next }
}

/// What this process knows of one node's liveness (in memory, never a store read).
#[derive(Debug, Default)]
pub(super) struct Runtime {
    /// Last heartbeat (or session start) in this process.
    pub(super) last_seen: Option<Instant>,
    pub(super) last_seen_wall: Option<OffsetDateTime>,
    /// The phase the store held when the lifecycle controller started.
    pub(super) recorded: Option<Liveness>,
    /// What the store says (as far as we wrote it).
    pub(super) written: Option<Liveness>,
    /// The node existed at the start, or was heard from since: the controller owns its
    /// phase. (A node created later and never connected is left alone.)
    pub(super) tracked: bool,
    pub(super) seen_since_flush: bool,
    /// When this process last wrote the node's lifecycle fields.
    pub(super) last_flush: Option<Instant>,
    pub(super) clock_skew_ms: i64,
    /// What the store says of the skew (as far as we wrote it).
    pub(super) reported_skew_ms: i64,
    /// A wakeup was sent and its reconcile has not started yet.
    pub(super) woken: bool,
}

impl Runtime {
    /// Heard from now.
    pub(super) fn seen(&mut self, now: Instant, wall: OffsetDateTime) {
        self.last_seen = Some(now);
        self.last_seen_wall = Some(wall);
        self.seen_since_flush = true;
        self.tracked = true;
    }

    /// Whether the node has something to write that no requeue will pick up: it is not
    /// written `Ready` (it is coming back), its skew moved, or its flush is overdue.
    /// Cleared by `woken`: at most one wakeup waits per node.
    pub(super) fn wants_write(&self, now: Instant, flush: Duration) -> bool {
        !self.woken
            && (self.written != Some(Liveness::Ready)
                || (self.clock_skew_ms - self.reported_skew_ms).abs() > SKEW_REPORT_STEP_MS
                || self.last_flush.is_none_or(|t| now - t >= flush))
    }
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.replace_nanosecond(0).ok()?.format(&Rfc3339).ok()
}

impl NodeManager {
    /// Queues a reconcile of `node` when a write is due (see [`Runtime::wants_write`]).
    pub(super) fn wake_if_due(&self, node: &str, r: &mut Runtime) {
        if r.wants_write(Instant::now(), self.cfg.last_seen_flush) {
            r.woken = true;
            let _ = self.wake.send(node.to_string());
        }
    }

    /// Queues a reconcile of `node` (a status report waits for its turn).
    pub(super) fn wake(&self, node: &str) {
        let _ = self.wake.send(node.to_string());
    }

    /// Runs the `nodes` controller until `shutdown`.
    pub async fn run_lifecycle(
        self: Arc<Self>,
        informers: Arc<Informers>,
        shutdown: watch::Receiver<bool>,
    ) {
        let Some(wakeups) = self.wakeups.lock().ok().and_then(|mut w| w.take()) else {
            tracing::error!("the node lifecycle controller was started twice");
            return;
        };
        // The phases recorded before this start: read once from the cache.
        let cache = informers.cache(Kind::Node);
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = cache.wait_synced() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let _ = self.started.set(Instant::now());
        if let Ok(mut rt) = self.runtime.lock() {
            for o in cache.list() {
                let recorded = verge_api::status::node::NodeStatus::from_value(&o.status)
                    .phase
                    .as_deref()
                    .and_then(Liveness::parse);
                let r = rt.entry(o.metadata.name.clone()).or_default();
                r.recorded = recorded;
                r.written = recorded;
                r.tracked = true;
            }
        }
        Controller::new("nodes", informers)
            .for_kind(Kind::Node)
            .wakeups(wakeups)
            .concurrency(PHASE_WRITE_CONCURRENCY)
            .run(
                |req, nm: Arc<NodeManager>| async move { nm.reconcile_node(req).await },
                backoff_policy,
                self.clone(),
                shutdown,
            )
            .await;
    }

    /// One node: its phase, `lastSeen`, skew and a status report that waited.
    async fn reconcile_node(&self, req: Request) -> Result<Action, crate::ApiError> {
        let node = req.key.as_str();
        match &req.object {
            // Deleted, not created yet, or being deleted (node deletion owns it now and
            // deletes it with compare-and-swap): nothing to write.
            None => return Ok(Action::await_change()),
            Some(o) if o.metadata.is_deleting() => return Ok(Action::await_change()),
            Some(_) => {}
        }
        let now = Instant::now();
        let started = self.started.get().copied().unwrap_or(now);
        let t = self.cfg.timing();
        let decided = self.runtime.lock().ok().and_then(|mut rt| {
            let r = rt.get_mut(node)?;
            r.woken = false;
            if !r.tracked {
                return None;
            }
            let o = Observed {
                since_seen: r.last_seen.map(|s| now - s),
                watching: now - started,
                recorded: r.recorded,
                written: r.written,
                since_flush: r.last_flush.map(|f| now - f),
                seen_since_flush: r.seen_since_flush,
                skew_moved: (r.clock_skew_ms - r.reported_skew_ms).abs() > SKEW_REPORT_STEP_MS,
            };
            let p = plan(&o, &t);
            let write = p
                .write
                .map(|phase| (phase, r.last_seen_wall.and_then(rfc3339), r.clock_skew_ms));
            Some((p.next, write))
        });
        // A status report that waited for its node's write interval.
        let (report, report_next) = self.due_report(node, now);
        let Some((next, write)) = decided else {
            if let Some(s) = report {
                self.write_status(node, &s).await?;
            }
            return Ok(report_next.map_or(Action::await_change(), Action::requeue));
        };
        if let Some(s) = &report {
            self.write_status(node, s).await?;
        }
        if let Some((phase, seen, skew)) = write {
            let (status, reason, message) = phase.condition(self.cfg.misses);
            self.patch_status(node, |st| {
                st.phase = Some(phase.as_str().to_string());
                if let Some(s) = &seen {
                    st.last_seen = Some(s.clone());
                }
                st.clock_skew_ms = Some(skew);
                super::set_condition(&mut st.conditions, "Ready", status, reason, &message);
            })
            .await?;
            if let Ok(mut rt) = self.runtime.lock()
                && let Some(r) = rt.get_mut(node)
            {
                r.written = Some(phase);
                r.seen_since_flush = false;
                r.last_flush = Some(now);
                r.reported_skew_ms = skew;
            }
            if phase == Liveness::NotReady {
                tracing::info!(%node, "node NotReady");
            }
        }
        let next = match (next, report_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(next.map_or(Action::await_change(), Action::requeue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_cloud_start_a_node_is_unknown_until_it_is_heard_from() {
        let s = Duration::from_secs;
        let grace = s(45);
        let ready = Some(Liveness::Ready);
        // Recorded Ready, nothing heard yet: Unknown, never Ready.
        assert_eq!(liveness(None, s(0), grace, ready), Liveness::Unknown);
        assert_eq!(liveness(None, s(44), grace, ready), Liveness::Unknown);
        assert_eq!(liveness(None, s(44), grace, None), Liveness::Unknown);
        // Its first heartbeat: Ready at once, also within the first grace.
        assert_eq!(liveness(Some(s(0)), s(1), grace, ready), Liveness::Ready);
        assert_eq!(
            liveness(Some(s(0)), s(1), grace, Some(Liveness::NotReady)),
            Liveness::Ready
        );
        // Never heard: NotReady only after `grace` counted from the cloud's start.
        assert_eq!(liveness(None, s(45), grace, ready), Liveness::NotReady);
        assert_eq!(liveness(None, s(45), grace, None), Liveness::NotReady);
        // Recorded NotReady and not heard from: still NotReady (no flap to Unknown).
        assert_eq!(
            liveness(None, s(0), grace, Some(Liveness::NotReady)),
            Liveness::NotReady
        );
        // Heard, then silent: NotReady after `grace` from the last heartbeat.
        assert_eq!(liveness(Some(s(44)), s(100), grace, ready), Liveness::Ready);
        assert_eq!(
            liveness(Some(s(45)), s(100), grace, ready),
            Liveness::NotReady
        );
    }

    #[test]
    fn the_ready_condition_says_unknown_with_a_reason() {
        let (status, reason, message) = Liveness::Unknown.condition(3);
        assert_eq!(
            (status, reason),
            (ConditionStatus::Unknown, "NodeStatusUnknown")
        );
        assert!(message.contains("since the cloud started"), "{message}");
        assert_eq!(Liveness::NotReady.condition(3).0, ConditionStatus::False);
        assert_eq!(Liveness::Ready.condition(3).0, ConditionStatus::True);
        for l in [Liveness::Ready, Liveness::NotReady, Liveness::Unknown] {
            assert_eq!(Liveness::parse(l.as_str()), Some(l));
        }
        assert_eq!(Liveness::parse("Pending"), None);
    }

    fn timing() -> Timing {
        LifecycleConfig::default().timing()
    }

    fn observed() -> Observed {
        Observed {
            since_seen: None,
            watching: Duration::from_secs(100),
            recorded: None,
            written: Some(Liveness::Ready),
            since_flush: Some(Duration::ZERO),
            seen_since_flush: false,
            skew_moved: false,
        }
    }

    #[test]
    fn a_ready_node_is_looked_at_again_when_it_would_turn_not_ready_or_flush() {
        let s = Duration::from_secs;
        let t = timing();
        assert_eq!((t.grace, t.flush), (s(45), s(30)));
        // Just written, heard 10 s ago: nothing to write; the flush (30 s) comes first.
        let o = Observed {
            since_seen: Some(s(10)),
            ..observed()
        };
        assert_eq!(
            plan(&o, &t),
            Plan {
                write: None,
                next: Some(s(30))
            }
        );
        // Flushed 25 s ago, heard 40 s ago: NotReady in 5 s comes before the flush.
        let o = Observed {
            since_seen: Some(s(40)),
            since_flush: Some(s(25)),
            ..observed()
        };
        assert_eq!(plan(&o, &t).next, Some(s(5)));
        // Silent for the grace: NotReady is written, then only a heartbeat wakes it.
        let o = Observed {
            since_seen: Some(s(45)),
            since_flush: Some(s(45)),
            ..observed()
        };
        assert_eq!(
            plan(&o, &t),
            Plan {
                write: Some(Liveness::NotReady),
                next: None
            }
        );
        // Flush due and heard since: lastSeen is written.
        let o = Observed {
            since_seen: Some(s(3)),
            since_flush: Some(s(30)),
            seen_since_flush: true,
            ..observed()
        };
        assert_eq!(
            plan(&o, &t),
            Plan {
                write: Some(Liveness::Ready),
                next: Some(s(30))
            }
        );
        // Flush overdue but not heard since: no write, no spin; the grace decides.
        let o = Observed {
            since_seen: Some(s(31)),
            since_flush: Some(s(31)),
            ..observed()
        };
        assert_eq!(
            plan(&o, &t),
            Plan {
                write: None,
                next: Some(s(14))
            }
        );
        // The skew moved: written at once.
        let o = Observed {
            since_seen: Some(s(1)),
            since_flush: Some(s(2)),
            skew_moved: true,
            ..observed()
        };
        assert_eq!(plan(&o, &t).write, Some(Liveness::Ready));
    }

    #[test]
    fn after_a_start_the_unknown_mark_waits_a_moment_for_reconnecting_nodes() {
        let s = Duration::from_secs;
        let t = timing();
        let start = Observed {
            watching: s(0),
            recorded: Some(Liveness::Ready),
            written: Some(Liveness::Ready),
            since_flush: None,
            ..observed()
        };
        // Not heard yet: nothing written until the mark is due.
        assert_eq!(
            plan(&start, &t),
            Plan {
                write: None,
                next: Some(UNKNOWN_MARK_DELAY)
            }
        );
        // Then Unknown, looked at again when the grace from the start ends.
        let marked = Observed {
            watching: UNKNOWN_MARK_DELAY,
            ..start
        };
        assert_eq!(
            plan(&marked, &t),
            Plan {
                write: Some(Liveness::Unknown),
                next: Some(s(45) - UNKNOWN_MARK_DELAY)
            }
        );
        // Reconnected before the mark: one write, Ready.
        let back = Observed {
            watching: s(1),
            since_seen: Some(s(0)),
            seen_since_flush: true,
            ..start
        };
        assert_eq!(plan(&back, &t).write, Some(Liveness::Ready));
        // Recorded NotReady: stays NotReady, written at once only if it was not.
        let down = Observed {
            recorded: Some(Liveness::NotReady),
            written: Some(Liveness::NotReady),
            ..start
        };
        assert_eq!(
            plan(&down, &t),
            Plan {
                write: None,
                next: None
            }
        );
    }

    mod on_the_runtime {
        use std::sync::Mutex;

        use bytes::Bytes;
        use futures::StreamExt;
        use verge_store::{DynStore, MemStore, Store};

        use super::*;
        use crate::gateway::Inbound;
        use crate::nodes::logs::LogBudget;

        const S: fn(u64) -> Duration = Duration::from_secs;

        /// A cloud's node lifecycle on a `MemStore` with paused time, and every write
        /// to the Nodes seen through a watch: (seconds since the start, node, phase).
        struct Fixture {
            store: MemStore,
            nm: Arc<NodeManager>,
            start: Instant,
            writes: Arc<Mutex<Vec<(u64, String, String)>>>,
            stop: watch::Sender<bool>,
            tasks: Vec<tokio::task::JoinHandle<()>>,
        }

        fn node(name: &str, phase: Option<&str>) -> Bytes {
            let mut o = serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Node",
                "metadata": {"name": name}, "spec": {}});
            if let Some(p) = phase {
                o["status"] = serde_json::json!({ "phase": p });
            }
            Bytes::from(serde_json::to_vec(&o).unwrap())
        }

        impl Fixture {
            async fn start(nodes: &[(&str, Option<&str>)]) -> Fixture {
                let store = MemStore::new();
                for (n, phase) in nodes {
                    store
                        .create(
                            &crate::objects::object_key(Kind::Node, n),
                            node(n, *phase),
                            Default::default(),
                        )
                        .await
                        .unwrap();
                }
                let dyn_store: DynStore = Arc::new(store.clone());
                let nm = NodeManager::new(
                    dyn_store.clone(),
                    LifecycleConfig::default(),
                    LogBudget::default(),
                    Default::default(),
                );
                let (stop, rx) = watch::channel(false);
                let informers = Informers::new(dyn_store, rx.clone());
                let writes: Arc<Mutex<Vec<(u64, String, String)>>> = Arc::default();
                let start = Instant::now();
                let after = store.current_revision().await.unwrap();
                let mut events = store
                    .watch(&crate::objects::kind_prefix(Kind::Node), after)
                    .await
                    .unwrap();
                let seen = writes.clone();
                let collector = tokio::spawn(async move {
                    while let Some(Ok(ev)) = events.next().await {
                        let o: verge_api::Object = serde_json::from_slice(&ev.kv.value).unwrap();
                        let phase = o.status["phase"].as_str().unwrap_or("").to_string();
                        let at = (Instant::now() - start).as_secs();
                        seen.lock().unwrap().push((at, o.metadata.name, phase));
                    }
                });
                let run = tokio::spawn(nm.clone().run_lifecycle(informers, rx));
                settle().await;
                Fixture {
                    store,
                    nm,
                    start,
                    writes,
                    stop,
                    tasks: vec![run, collector],
                }
            }

            /// Advances paused time to `secs` after the start.
            async fn at(&self, secs: u64) {
                tokio::time::sleep_until(self.start + S(secs)).await;
                settle().await;
            }

            /// A heartbeat whose clock is `skew_ms` ahead. (`lastSeen` is the real wall
            /// clock, which paused time does not move: tests tell flushes apart by a
            /// skew drifting less than `SKEW_REPORT_STEP_MS`.)
            fn heartbeat(&self, node: &str, skew_ms: i64) {
                let now_ms =
                    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64 + skew_ms;
                self.nm.heartbeat(
                    node,
                    &verge_proto::Heartbeat {
                        seq: 0,
                        sent_at_ms: now_ms,
                        ready: true,
                    },
                );
            }

            /// The writes to `node`: (seconds since the start, phase).
            fn writes(&self, node: &str) -> Vec<(u64, String)> {
                self.writes
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, n, _)| n == node)
                    .map(|(t, _, p)| (*t, p.clone()))
                    .collect()
            }

            async fn phase(&self, node: &str) -> String {
                let kv = self
                    .store
                    .get(&crate::objects::object_key(Kind::Node, node))
                    .await
                    .unwrap()
                    .unwrap();
                let o: verge_api::Object = serde_json::from_slice(&kv.value).unwrap();
                o.status["phase"].as_str().unwrap_or("").to_string()
            }

            async fn stop(self) {
                self.stop.send_replace(true);
                for t in self.tasks {
                    t.abort();
                    let _ = t.await;
                }
            }
        }

        async fn settle() {
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
        }

        fn phases(w: &[(u64, String)]) -> Vec<(u64, &str)> {
            w.iter().map(|(t, p)| (*t, p.as_str())).collect()
        }

        #[tokio::test(start_paused = true)]
        async fn a_silent_node_turns_not_ready_exactly_when_due_and_nothing_is_written_before() {
            let f = Fixture::start(&[("n1", None)]).await;
            f.nm.connected("n1");
            settle().await;
            assert_eq!(phases(&f.writes("n1")), [(0, "Ready")]);
            // Heartbeats for 20 s, then silence: NotReady 45 s (3 × 15 s) after the last.
            for t in [5, 10, 15, 20] {
                f.at(t).await;
                f.heartbeat("n1", t as i64 * 10);
            }
            f.at(64).await;
            assert_eq!(
                phases(&f.writes("n1")),
                [(0, "Ready"), (30, "Ready")],
                "only the lastSeen flush (heard since the first write) before NotReady is due"
            );
            f.at(66).await;
            assert_eq!(
                phases(&f.writes("n1")),
                [(0, "Ready"), (30, "Ready"), (65, "NotReady")]
            );
            assert_eq!(f.phase("n1").await, "NotReady");
            // Silent NotReady: nothing more, however long.
            f.at(600).await;
            assert_eq!(f.writes("n1").len(), 3);
            // Its next heartbeat: Ready at once.
            f.heartbeat("n1", 0);
            settle().await;
            assert_eq!(
                phases(&f.writes("n1")).last().copied(),
                Some((600, "Ready"))
            );
            f.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn an_idle_ready_node_is_rewritten_only_at_its_last_seen_flush() {
            let f = Fixture::start(&[("n1", None)]).await;
            f.nm.connected("n1");
            settle().await;
            // Heartbeats every 15 s (off the flush's beat) for 100 s.
            for t in (7..100).step_by(15) {
                f.at(t).await;
                f.heartbeat("n1", t as i64 * 5);
            }
            f.at(100).await;
            assert_eq!(
                phases(&f.writes("n1")),
                [(0, "Ready"), (30, "Ready"), (60, "Ready"), (90, "Ready")],
                "one lastSeen flush per 30 s, nothing per heartbeat"
            );
            f.stop().await;
        }

        #[tokio::test(start_paused = true)]
        async fn after_a_restart_nodes_are_unknown_until_heard_and_reconnecting_ones_only_ready() {
            let f = Fixture::start(&[
                ("back", Some("Ready")),
                ("down", Some("Ready")),
                ("gone", Some("NotReady")),
            ])
            .await;
            // Reconnects before the Unknown mark: written Ready, never Unknown.
            f.at(1).await;
            f.nm.connected("back");
            settle().await;
            f.at(3).await;
            assert_eq!(phases(&f.writes("back")), [(1, "Ready")]);
            assert_eq!(phases(&f.writes("down")), [(2, "Unknown")]);
            // Not heard for the grace from the start: NotReady; recorded NotReady stays.
            f.at(46).await;
            assert_eq!(
                phases(&f.writes("down")),
                [(2, "Unknown"), (45, "NotReady")]
            );
            assert_eq!(f.writes("gone"), []);
            assert_eq!(f.phase("gone").await, "NotReady");
            f.stop().await;
        }
    }
}
