//! Node lifecycle and the data manager for node traffic.
//!
//! [`NodeManager`] implements the gateway's [`Inbound`]: heartbeats update an in-memory
//! last-seen time (never a store write per heartbeat); a lifecycle loop marks a node
//! `NotReady` after `misses` missed heartbeats and `Ready` again on the next one, and
//! flushes `lastSeen` to the Node's status periodically. Status reports are written to
//! the Node's status. Desired-state sync lives in [`sync`].
//!
//! After a cloud (re)start nothing has been heard from any node yet: a node recorded
//! `Ready` is `Unknown` (condition `Ready` = `Unknown`, as in Kubernetes) until its first
//! heartbeat makes it `Ready`, or until `misses` intervals from the cloud's start pass
//! without one (`NotReady`); one recorded `NotReady` stays so ([`liveness`], pure).
//!
//! The cloud's own clock decides liveness (receive time), so a node whose clock is
//! skewed is still judged correctly; the skew is reported in its status.
//!
//! What a node sends is taken only for what is placed on it: a task result only when
//! the task controller admits it (`Tasks::admit`: the attempt was dispatched to this
//! node, or a run of a trigger the node fires) — refused results are acknowledged,
//! counted (`verge_node_results_refused_total{reason}`) and not stored; log lines only
//! from sources placed on the node (its App replicas, its Functions, see
//! [`NodeManager::may_log`]) and within the log budget ([`logs::LogBudget`]); others
//! are counted (`verge_node_log_lines_dropped_total{reason}`) and dropped; instance
//! reports only for App replicas placed on the node. A node's status is written to the
//! store at most once per [`STATUS_WRITE_INTERVAL`] (the latest report wins).

pub mod certs;
pub mod logs;
pub mod results;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verge_api::Kind;
use verge_proto::{Heartbeat, Message, NodeStatus};
use verge_store::DynStore;

use crate::functions::task_state::Refusal;
use crate::functions::tasks::Admission;
use crate::gateway::{DropLabel, DynDownlink, Handled, Inbound};
use crate::objects::{modify, object_key};
use verge_api::status::{Condition, ConditionStatus};

/// Counters of node input the cloud refused (registered in the cloud's metrics).
#[derive(Clone, Default)]
pub struct InputMetrics {
    /// Task results refused, by [`Refusal::as_str`].
    pub results_refused: prometheus_client::metrics::family::Family<
        DropLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Log lines dropped (`not-placed`) or evicted over the budget (`evicted`).
    pub log_lines_dropped: prometheus_client::metrics::family::Family<
        DropLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Bytes of log lines held in memory.
    pub log_bytes: prometheus_client::metrics::gauge::Gauge,
    /// Instances a node reported for apps not placed on it (left out).
    pub instances_dropped: prometheus_client::metrics::counter::Counter,
}

impl InputMetrics {
    fn result_refused(&self, why: Refusal) {
        self.results_refused
            .get_or_create(&DropLabel {
                reason: why.as_str().to_string(),
            })
            .inc();
    }

    fn log_lines(&self, reason: &str, n: usize) {
        if n > 0 {
            self.log_lines_dropped
                .get_or_create(&DropLabel {
                    reason: reason.to_string(),
                })
                .inc_by(n as u64);
        }
    }
}

/// A node whose input was refused is named in the log at most this often.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

/// A node's status report is written to the store at most this often; one arriving
/// sooner waits (the latest replaces it) and the lifecycle loop writes it when due, so
/// a node sending reports as fast as it can costs one store write a second.
pub const STATUS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct StatusWrites {
    last: Option<Instant>,
    pending: Option<Box<NodeStatus>>,
}

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
    fn condition(self, misses: u32) -> (ConditionStatus, &'static str, String) {
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
/// lifecycle loop started; `recorded`: the phase the store held at that start.
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

/// Most phase and `lastSeen` writes one lifecycle tick makes (the rest wait a tick).
const MAX_PHASE_WRITES_PER_TICK: usize = 2000;
/// Phase writes in flight at once (the store commits them in groups).
const PHASE_WRITE_CONCURRENCY: usize = 32;

/// A node whose status the lifecycle loop is about to write.
struct Change {
    node: String,
    phase: Liveness,
    /// The phase changes (not only `lastSeen` or the clock skew).
    moved: bool,
}

impl Change {
    /// Write order: nodes becoming Ready, then other phase changes (NotReady before
    /// Unknown), then `lastSeen` flushes.
    fn priority(&self) -> (u8, u8) {
        let phase = match self.phase {
            Liveness::Ready => 0,
            Liveness::NotReady => 1,
            Liveness::Unknown => 2,
        };
        (u8::from(!self.moved), phase)
    }
}

#[derive(Debug, Default)]
struct Runtime {
    /// Last heartbeat (or session start) in this process.
    last_seen: Option<Instant>,
    last_seen_wall: Option<OffsetDateTime>,
    /// The phase the store held when the lifecycle loop started.
    recorded: Option<Liveness>,
    /// What the store says (as far as we wrote it).
    written: Option<Liveness>,
    seen_since_flush: bool,
    clock_skew_ms: i64,
    /// What the store says of the skew (as far as we wrote it).
    reported_skew_ms: i64,
}

/// A skew change larger than this is written to the Node's status at once (smaller
/// ones ride along with the periodic `lastSeen` flush).
const SKEW_REPORT_STEP_MS: i64 = 1000;

pub struct NodeManager {
    store: DynStore,
    cfg: LifecycleConfig,
    runtime: Mutex<HashMap<String, Runtime>>,
    pub sync: Arc<sync::Sync>,
    pub results: results::Results,
    /// Told about task results (set once the task controller exists).
    pub tasks: std::sync::OnceLock<Arc<crate::functions::tasks::Tasks>>,
    /// App instances the nodes report, for the App controller.
    pub apps: Arc<crate::apps::Reports>,
    /// App output the nodes ship.
    pub logs: logs::Logs,
    metrics: InputMetrics,
    /// When each node was last named in the log for refused input.
    warned: Mutex<HashMap<String, Instant>>,
    /// Per node: the last status write and a report waiting for its turn.
    status_writes: Mutex<HashMap<String, StatusWrites>>,
    gateway: OnceLock<DynDownlink>,
    issuer: OnceLock<Issuer>,
    /// Last certificate renewal per node (at most one per [`RENEW_MIN_INTERVAL`]).
    renewed: Mutex<HashMap<String, Instant>>,
}

/// What signs renewed node certificates.
struct Issuer {
    ca: Arc<crate::pki::ClusterCa>,
    validity: time::Duration,
}

/// A node may renew its certificate at most this often.
pub const RENEW_MIN_INTERVAL: Duration = Duration::from_secs(10);

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl NodeManager {
    pub fn new(
        store: DynStore,
        cfg: LifecycleConfig,
        log_budget: logs::LogBudget,
        metrics: InputMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            sync: Arc::new(sync::Sync::new(store.clone())),
            results: results::Results::new(store.clone()),
            tasks: std::sync::OnceLock::new(),
            apps: Arc::new(crate::apps::Reports::default()),
            logs: logs::Logs::new(log_budget),
            metrics,
            warned: Mutex::new(HashMap::new()),
            status_writes: Mutex::new(HashMap::new()),
            issuer: OnceLock::new(),
            renewed: Mutex::new(HashMap::new()),
            store,
            cfg,
            runtime: Mutex::new(HashMap::new()),
            gateway: OnceLock::new(),
        })
    }

    /// Enables certificate renewal over the node channel.
    pub fn set_issuer(&self, ca: Arc<crate::pki::ClusterCa>, validity: time::Duration) {
        let _ = self.issuer.set(Issuer { ca, validity });
    }

    /// Signs a node's CSR for its next key (the session's certificate authenticated
    /// the node), records the new serial (keeping the previous one, revoked with the
    /// node) and sends the certificate back. Expired certificate records of the node
    /// are pruned first ([`certs`]). Refused, with a warning, for unknown nodes, a CSR
    /// naming another node, more than one renewal per [`RENEW_MIN_INTERVAL`], or a node
    /// already holding [`certs::MAX_LIVE_CERTS_PER_NODE`] unexpired certificates.
    async fn renew(&self, node: &str, req: &verge_proto::CertRequest) -> Handled {
        use verge_api::names::{
            ANNOTATION_CERT_NOT_AFTER, ANNOTATION_CERT_SERIAL, ANNOTATION_PREVIOUS_CERT_SERIAL,
        };
        let Some(issuer) = self.issuer.get() else {
            tracing::warn!(%node, "certificate renewal is not enabled; request dropped");
            return Handled::Done;
        };
        {
            let mut last = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
            if last
                .get(node)
                .is_some_and(|t| t.elapsed() < RENEW_MIN_INTERVAL)
            {
                tracing::warn!(%node, "certificate renewal requested again too soon; dropped");
                return Handled::Done;
            }
            last.insert(node.to_string(), Instant::now());
        }
        // Expired records go first; past the bound of unexpired ones, no new one.
        match certs::prune(
            &self.store,
            node,
            OffsetDateTime::now_utc(),
            certs::grace(issuer.validity),
        )
        .await
        {
            Ok(live) if live >= certs::MAX_LIVE_CERTS_PER_NODE => {
                tracing::warn!(
                    %node,
                    live,
                    "certificate renewal refused: the node already holds the most unexpired certificates allowed; it may renew once one expires"
                );
                return Handled::Done;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%node, error = %e.message, "could not prune the node's certificate records");
                if let Ok(mut last) = self.renewed.lock() {
                    last.remove(node);
                }
                return Handled::Retry;
            }
        }
        let cert = match issuer.ca.sign_node_csr(&req.csr_pem, node, issuer.validity) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%node, error = %e, "certificate renewal refused");
                return Handled::Done;
            }
        };
        let expires = cert.not_after.format(&Rfc3339).unwrap_or_default();
        let key = object_key(Kind::Node, node);
        let serial = cert.serial.clone();
        // Recorded before anything else, so deleting the node revokes it even if the
        // rest fails or the answer never reaches the node.
        let recorded = certs::record_node_cert(&self.store, node, &serial, &expires).await;
        let r = match recorded {
            Err(e) => Err(e),
            Ok(()) => {
                modify(&self.store, Kind::Node, &key, node, None, |cur| {
                    let mut next = cur.clone();
                    let ann = &mut next.metadata.annotations;
                    if let Some(old) = ann.get(ANNOTATION_CERT_SERIAL).cloned() {
                        ann.insert(ANNOTATION_PREVIOUS_CERT_SERIAL.into(), old);
                    }
                    ann.insert(ANNOTATION_CERT_SERIAL.into(), serial.clone());
                    ann.insert(ANNOTATION_CERT_NOT_AFTER.into(), expires.clone());
                    Ok(next)
                })
                .await
            }
        };
        match r {
            Ok(_) => {}
            Err(e) if e.reason == verge_api::Reason::NotFound => {
                tracing::warn!(%node, "certificate renewal for a node that does not exist; refused");
                return Handled::Done;
            }
            Err(e) => {
                tracing::warn!(%node, error = %e.message, "could not record the renewed certificate");
                if let Ok(mut last) = self.renewed.lock() {
                    last.remove(node);
                }
                return Handled::Retry;
            }
        }
        let msg = Message::CertIssued(verge_proto::CertIssued {
            cert_pem: cert.cert_pem,
            not_after_ms: (cert.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        });
        let sent = self.gateway.get().is_some_and(|gw| {
            gw.send(
                node,
                verge_proto::Channel::Cert,
                bytes::Bytes::from(verge_proto::encode(&msg)),
            )
        });
        tracing::info!(%node, serial = %cert.serial, sent, "node certificate renewed");
        Handled::Done
    }

    pub fn set_gateway(&self, gw: DynDownlink) {
        let _ = self.gateway.set(gw.clone());
        self.sync.set_gateway(gw);
    }

    /// Patches a Node's status (compare-and-swap with retries); missing nodes are
    /// ignored (deleted meanwhile).
    async fn patch_status(
        &self,
        node: &str,
        f: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
    ) {
        let key = object_key(Kind::Node, node);
        let r = modify(&self.store, Kind::Node, &key, node, None, |cur| {
            let mut next = cur.clone();
            if !next.status.is_object() {
                next.status = serde_json::json!({});
            }
            if let Some(m) = next.status.as_object_mut() {
                f(m);
            }
            Ok(next)
        })
        .await;
        if let Err(e) = r
            && e.reason != verge_api::Reason::NotFound
        {
            tracing::warn!(%node, error = %e.message, "node status update failed");
        }
    }

    /// Seeds the runtime with every known node and the phase the store holds for it,
    /// none of them seen yet: after a cloud restart a node is `Unknown` until its first
    /// heartbeat ([`liveness`]), never `Ready` on the strength of an old record.
    async fn seed(&self) {
        let Ok(list) = self
            .store
            .list(&crate::objects::kind_prefix(Kind::Node), None)
            .await
        else {
            return;
        };
        if let Ok(mut rt) = self.runtime.lock() {
            for kv in list.items {
                let Ok(obj) = serde_json::from_slice::<verge_api::Object>(&kv.value) else {
                    continue;
                };
                let recorded = obj
                    .status
                    .get("phase")
                    .and_then(|p| p.as_str())
                    .and_then(Liveness::parse);
                let r = rt.entry(obj.metadata.name).or_default();
                r.recorded = recorded;
                r.written = recorded;
            }
        }
    }

    /// Marks nodes Ready/NotReady/Unknown and flushes lastSeen; runs until `shutdown`.
    pub async fn lifecycle_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let started = Instant::now();
        self.seed().await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_flush = Instant::now();
        let grace = self.cfg.heartbeat_interval * self.cfg.misses;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let flush_due = last_flush.elapsed() >= self.cfg.last_seen_flush;
            let mut changes: Vec<Change> = Vec::new();
            if let Ok(rt) = self.runtime.lock() {
                for (name, r) in rt.iter() {
                    let now = liveness(
                        r.last_seen.map(|t| t.elapsed()),
                        started.elapsed(),
                        grace,
                        r.recorded,
                    );
                    let skew_moved =
                        (r.clock_skew_ms - r.reported_skew_ms).abs() > SKEW_REPORT_STEP_MS;
                    if r.written != Some(now) || (flush_due && r.seen_since_flush) || skew_moved {
                        changes.push(Change {
                            node: name.clone(),
                            phase: now,
                            moved: r.written != Some(now),
                        });
                    }
                }
            }
            // Nodes coming back first, and a bounded number per tick: after a restart
            // of a large fleet's cloud the `Unknown` marks must not hold up the `Ready`
            // of the nodes that reconnect (one that does before its mark is written
            // needs no write at all).
            changes.sort_by_key(Change::priority);
            changes.truncate(MAX_PHASE_WRITES_PER_TICK);
            let mut writes: Vec<(String, Liveness, Option<String>, i64)> = Vec::new();
            if let Ok(mut rt) = self.runtime.lock() {
                for c in changes {
                    let Some(r) = rt.get_mut(&c.node) else {
                        continue;
                    };
                    let seen = r
                        .last_seen_wall
                        .and_then(|t| t.replace_nanosecond(0).ok())
                        .and_then(|t| t.format(&Rfc3339).ok());
                    r.written = Some(c.phase);
                    r.seen_since_flush = false;
                    r.reported_skew_ms = r.clock_skew_ms;
                    writes.push((c.node, c.phase, seen, r.clock_skew_ms));
                }
            }
            if flush_due {
                last_flush = Instant::now();
            }
            // Status reports that waited for their node's write interval.
            let waiting: Vec<(String, Box<NodeStatus>)> = self
                .status_writes
                .lock()
                .map(|mut w| {
                    w.iter_mut()
                        .filter(|(_, s)| {
                            s.pending.is_some()
                                && s.last.is_none_or(|t| t.elapsed() >= STATUS_WRITE_INTERVAL)
                        })
                        .filter_map(|(n, s)| {
                            s.last = Some(Instant::now());
                            s.pending.take().map(|p| (n.clone(), p))
                        })
                        .collect()
                })
                .unwrap_or_default();
            for (name, st) in waiting {
                self.write_status(&name, &st).await;
            }
            let misses = self.cfg.misses;
            let this: &Self = &self;
            futures::stream::iter(writes)
                .for_each_concurrent(
                    PHASE_WRITE_CONCURRENCY,
                    |(name, phase, seen, skew)| async move {
                        let (status, reason, message) = phase.condition(misses);
                        this.patch_status(&name, |m| {
                            m.insert("phase".into(), phase.as_str().into());
                            if let Some(s) = &seen {
                                m.insert("lastSeen".into(), s.clone().into());
                            }
                            m.insert("clockSkewMs".into(), skew.into());
                            set_condition(m, "Ready", status, reason, &message);
                        })
                        .await;
                        if phase == Liveness::NotReady {
                            tracing::info!(node = %name, "node NotReady");
                        }
                    },
                )
                .await;
        }
    }

    /// A status report: the instances of apps placed on the node go to the App
    /// controller at once (others are left out and counted); the rest is written to the
    /// Node's status, at most once per [`STATUS_WRITE_INTERVAL`].
    async fn on_status(&self, node: &str, s: &NodeStatus) {
        let placed: Vec<verge_proto::InstanceStatus> = s
            .apps
            .iter()
            .filter(|i| {
                self.sync
                    .app_replicas(node, &i.app)
                    .is_some_and(|n| i.replica < n)
            })
            .cloned()
            .collect();
        let left_out = s.apps.len() - placed.len();
        if left_out > 0 {
            self.metrics.instances_dropped.inc_by(left_out as u64);
            self.note_refusal(node, "instance reports for apps not placed on it");
        }
        self.apps.report(node, &placed);
        let due = self.status_writes.lock().is_ok_and(|mut w| {
            let w = w.entry(node.to_string()).or_default();
            if w.last.is_none_or(|t| t.elapsed() >= STATUS_WRITE_INTERVAL) {
                w.last = Some(Instant::now());
                w.pending = None;
                true
            } else {
                w.pending = Some(Box::new(s.clone()));
                false
            }
        });
        if due {
            self.write_status(node, s).await;
        }
    }

    async fn write_status(&self, node: &str, s: &NodeStatus) {
        let info = serde_json::json!({
            "arch": s.arch, "os": s.os, "kernel": s.kernel, "cpus": s.cpus,
            "memoryBytes": s.memory_bytes, "diskBytes": s.disk_bytes,
            "agentVersion": s.agent_version,
        });
        let alloc = serde_json::json!({
            "memoryFreeBytes": s.memory_free_bytes, "diskFreeBytes": s.disk_free_bytes,
        });
        let queue = serde_json::to_value(s.queue).unwrap_or_default();
        let capacity = serde_json::to_value(&s.capacity).unwrap_or_default();
        let conds: Vec<(String, bool, String, String)> = s
            .conditions
            .iter()
            .filter(|c| c.condition_type != verge_proto::ConditionType::Ready)
            .map(|c| {
                (
                    format!("{:?}", c.condition_type),
                    c.status,
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect();
        self.patch_status(node, |m| {
            m.insert("nodeInfo".into(), info.clone());
            m.insert("allocatable".into(), alloc.clone());
            m.insert("capacity".into(), capacity.clone());
            m.insert("queue".into(), queue.clone());
            for (t, st, reason, msg) in &conds {
                set_condition(m, t, ConditionStatus::from_bool(*st), reason, msg);
            }
        })
        .await;
    }
}

/// Sets one condition in `status.conditions` (the one [`Condition`] rule: the
/// transition time is kept while the status stays).
fn set_condition(
    m: &mut serde_json::Map<String, serde_json::Value>,
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    let mut list: Vec<Condition> = m
        .get("conditions")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    verge_api::status::set_condition(
        &mut list,
        Condition::new(kind, status, reason, message),
        &now_rfc3339(),
    );
    m.insert(
        "conditions".into(),
        serde_json::to_value(list).unwrap_or_default(),
    );
}

#[async_trait::async_trait]
impl Inbound for NodeManager {
    fn connected(&self, node: &str) {
        if let Ok(mut rt) = self.runtime.lock() {
            let r = rt.entry(node.to_string()).or_default();
            r.last_seen = Some(Instant::now());
            r.last_seen_wall = Some(OffsetDateTime::now_utc());
            r.seen_since_flush = true;
        }
    }

    fn disconnected(&self, node: &str) {
        self.sync.disconnected(node);
    }

    fn heartbeat(&self, node: &str, hb: &Heartbeat) {
        let now = OffsetDateTime::now_utc();
        if let Ok(mut rt) = self.runtime.lock() {
            let r = rt.entry(node.to_string()).or_default();
            r.last_seen = Some(Instant::now());
            r.last_seen_wall = Some(now);
            r.seen_since_flush = true;
            r.clock_skew_ms = hb.sent_at_ms - (now.unix_timestamp_nanos() / 1_000_000) as i64;
        }
    }

    async fn message(&self, node: &str, msg: Message) -> Handled {
        match msg {
            Message::Hello(h) => self.sync.hello(node, h.last_applied_revision).await,
            Message::Ack(a) => {
                if let Some(sync_status) = self.sync.ack(node, a.revision).await {
                    self.patch_status(node, |m| {
                        m.insert("sync".into(), sync_status.clone());
                    })
                    .await;
                }
            }
            Message::NodeStatus(s) => self.on_status(node, &s).await,
            Message::LogBatch(b) => self.on_logs(node, &b),
            Message::CertRequest(req) => return self.renew(node, &req).await,
            Message::TaskResult(r) => return self.on_result(node, &r).await,
            other => {
                tracing::warn!(%node, kind = other.type_name(), "this cloud version has no handler for this message; dropped");
            }
        }
        Handled::Done
    }

    async fn resync(&self, node: &str) {
        self.sync.implicit_hello(node).await;
    }
}

impl NodeManager {
    /// Whether `node` may ship log lines from `source`: a replica of an App placed on
    /// it, or a Function placed on it (as the desired-state sync sends them).
    pub fn may_log(&self, node: &str, source: &str) -> bool {
        match logs::parse_source(source) {
            Some(logs::LogSource::App { app, replica }) => self
                .sync
                .app_replicas(node, app)
                .is_some_and(|n| replica < n),
            Some(logs::LogSource::Function { name }) => self.sync.function_placed(node, name),
            None => false,
        }
    }

    fn on_logs(&self, node: &str, b: &verge_proto::LogBatch) {
        if !self.may_log(node, &b.source) {
            self.metrics.log_lines("not-placed", b.lines.len());
            self.note_refusal(node, "log lines from a source not placed on it");
            return;
        }
        let r = self.logs.record(node, b);
        self.metrics.log_lines("evicted", r.evicted);
        self.metrics.log_bytes.set(self.logs.bytes() as i64);
    }

    /// Names a node in the log for refused input, at most once per
    /// [`REFUSAL_WARN_EVERY`] (a hostile node must not flood the cloud's own log).
    fn note_refusal(&self, node: &str, what: &str) {
        let due = self.warned.lock().is_ok_and(|mut w| {
            let due = w
                .get(node)
                .is_none_or(|t| t.elapsed() >= REFUSAL_WARN_EVERY);
            if due {
                w.insert(node.to_string(), Instant::now());
            }
            due
        });
        if due {
            tracing::warn!(%node, "refused {what} (counted in verge_node_results_refused_total / verge_node_log_lines_dropped_total; further refusals from this node are not logged for a minute)");
        }
    }

    /// A task result: admitted by the task controller before anything is stored,
    /// then recorded once per `(node, seq)` and applied.
    async fn on_result(&self, node: &str, r: &verge_proto::TaskResult) -> Handled {
        let Some(tasks) = self.tasks.get() else {
            self.metrics.result_refused(Refusal::UnknownTask);
            return Handled::Done;
        };
        let placed = r
            .trigger
            .as_deref()
            .and_then(|t| self.sync.trigger_function(node, t));
        match tasks.admit(node, r, placed.as_deref()).await {
            Admission::Take => {}
            Admission::Later => return Handled::Retry,
            Admission::Refuse(why) => {
                self.metrics.result_refused(why);
                tracing::debug!(%node, task = %r.id, seq = r.seq, why = why.as_str(), "result refused");
                if why != Refusal::Finished {
                    self.note_refusal(
                        node,
                        &format!("a result for task {:?} ({})", r.id, why.as_str()),
                    );
                }
                return Handled::Done;
            }
        }
        match self.results.record(node, r).await {
            Ok(results::Recorded::New) => {
                if let Err(why) = tasks.on_result(node, r).await {
                    self.metrics.result_refused(why);
                    tracing::debug!(%node, task = %r.id, why = why.as_str(), "result not applied");
                }
            }
            Ok(results::Recorded::UnknownNode) => {
                tracing::warn!(%node, seq = r.seq, "result from a node that does not exist; dropped");
            }
            Ok(results::Recorded::Duplicate) => {
                tracing::debug!(%node, seq = r.seq, "duplicate result acknowledged again");
            }
            Err(e) => {
                tracing::warn!(%node, seq = r.seq, error = %e, "could not record a result; the node will re-send it");
                return Handled::Retry;
            }
        }
        Handled::Done
    }

    /// Forgets a deleted node.
    pub fn forget(&self, node: &str) {
        if let Ok(mut rt) = self.runtime.lock() {
            rt.remove(node);
        }
        if let Ok(mut r) = self.renewed.lock() {
            r.remove(node);
        }
        if let Ok(mut w) = self.warned.lock() {
            w.remove(node);
        }
        if let Ok(mut w) = self.status_writes.lock() {
            w.remove(node);
        }
        self.sync.forget(node);
        if let Some(gw) = self.gateway.get() {
            gw.kick(node);
        }
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
}
