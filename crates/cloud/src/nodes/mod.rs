//! Node lifecycle and the data manager for node traffic.
//!
//! [`NodeManager`] implements the gateway's [`Inbound`]: heartbeats update an in-memory
//! last-seen time (never a store write per heartbeat); the `nodes` controller
//! ([`lifecycle`], on the controller runtime) marks a node `Ready`, `NotReady` or
//! `Unknown` and flushes `lastSeen` to the Node's status. Status reports are written to
//! the Node's status (typed: `verge_api::status::node::NodeStatus`). Desired-state sync
//! lives in [`sync`].
//!
//! What a node sends is taken only for what is placed on it: a task result only when
//! the task controller admits it (`Tasks::admit`: the attempt was dispatched to this
//! node, or a run of a trigger the node fires) — refused results are acknowledged,
//! counted (`verge_node_results_refused_total{reason}`) and not stored; a result
//! recorded but not applied before a crash is applied when the node re-sends it; log lines only
//! from sources placed on the node (its App replicas, its Functions, see
//! [`NodeManager::may_log`]) and within the log budget ([`logs::LogBudget`]); others
//! are counted (`verge_node_log_lines_dropped_total{reason}`) and dropped; instance
//! reports only for App replicas placed on the node. A node's status is written to the
//! store at most once per [`STATUS_WRITE_INTERVAL`] (the latest report wins).

pub mod certs;
pub mod delete;
pub mod lifecycle;
pub mod logs;
pub mod results;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verge_api::Kind;
use verge_proto::{Heartbeat, Message, NodeStatus};
use verge_store::DynStore;

use crate::functions::task_state::Refusal;
use crate::functions::tasks::Admission;
use crate::gateway::{DropLabel, DynDownlink, Handled, Inbound};
use crate::objects::{modify, object_key};
use verge_api::status::node as node_status;
use verge_api::status::{Condition, ConditionStatus};

use lifecycle::Runtime;
pub use lifecycle::{LifecycleConfig, Liveness, liveness};

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
/// sooner waits (the latest replaces it) and the lifecycle controller writes it when
/// due, so a node sending reports as fast as it can costs one store write a second.
pub const STATUS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct StatusWrites {
    last: Option<tokio::time::Instant>,
    pending: Option<Box<NodeStatus>>,
}

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
    /// Node names for the lifecycle controller ([`lifecycle`]), and its end of them.
    wake: tokio::sync::mpsc::UnboundedSender<String>,
    wakeups: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// When the lifecycle controller started (what `Unknown` counts from).
    started: OnceLock<tokio::time::Instant>,
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
        let (wake, wakeups) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Self {
            wake,
            wakeups: Mutex::new(Some(wakeups)),
            started: OnceLock::new(),
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
    /// are pruned first ([`certs`]). Refused, with a warning, for unknown nodes and nodes
    /// being deleted ([`delete`]), a CSR
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
                    // A Node being deleted gets no new certificate (`delete.rs`).
                    if cur.metadata.is_deleting() {
                        return Err(crate::objects::not_found(Kind::Node, node));
                    }
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
                tracing::warn!(%node, "certificate renewal for a node that does not exist or is being deleted; refused");
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

    /// Patches a Node's status as its typed [`node_status::NodeStatus`]
    /// (compare-and-swap with retries); a missing node is not an error (deleted
    /// meanwhile).
    async fn patch_status(
        &self,
        node: &str,
        f: impl Fn(&mut node_status::NodeStatus),
    ) -> Result<(), crate::ApiError> {
        let key = object_key(Kind::Node, node);
        let r = modify(&self.store, Kind::Node, &key, node, None, |cur| {
            let mut next = cur.clone();
            let mut st = node_status::NodeStatus::from_value(&next.status);
            f(&mut st);
            next.status = serde_json::to_value(&st).unwrap_or_default();
            Ok(next)
        })
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.reason == verge_api::Reason::NotFound => Ok(()),
            Err(e) => {
                tracing::warn!(%node, error = %e.message, "node status update failed");
                Err(e)
            }
        }
    }

    /// A status report of `node` that waited and is now due, and when the next one
    /// is (if one waits).
    fn due_report(
        &self,
        node: &str,
        now: tokio::time::Instant,
    ) -> (Option<Box<NodeStatus>>, Option<Duration>) {
        let Ok(mut w) = self.status_writes.lock() else {
            return (None, None);
        };
        let Some(s) = w.get_mut(node) else {
            return (None, None);
        };
        if s.pending.is_none() {
            return (None, None);
        }
        match s.last.map(|t| now - t) {
            Some(d) if d < STATUS_WRITE_INTERVAL => (None, Some(STATUS_WRITE_INTERVAL - d)),
            _ => {
                s.last = Some(now);
                (s.pending.take(), None)
            }
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
        let now = tokio::time::Instant::now();
        let mut wake = false;
        let due = self.status_writes.lock().is_ok_and(|mut w| {
            let w = w.entry(node.to_string()).or_default();
            if w.last.is_none_or(|t| now - t >= STATUS_WRITE_INTERVAL) {
                w.last = Some(now);
                w.pending = None;
                true
            } else {
                // The lifecycle controller writes it when due (one wakeup per wait).
                wake = w.pending.replace(Box::new(s.clone())).is_none();
                false
            }
        });
        if wake {
            self.wake(node);
        }
        if due {
            let _ = self.write_status(node, s).await;
        }
    }

    async fn write_status(&self, node: &str, s: &NodeStatus) -> Result<(), crate::ApiError> {
        let info = node_status::NodeInfo {
            arch: s.arch.clone(),
            os: s.os.clone(),
            kernel: s.kernel.clone(),
            cpus: s.cpus,
            memory_bytes: s.memory_bytes,
            disk_bytes: s.disk_bytes,
            agent_version: s.agent_version.clone(),
        };
        let alloc = node_status::Allocatable {
            memory_free_bytes: s.memory_free_bytes,
            disk_free_bytes: s.disk_free_bytes,
        };
        let queue = node_status::QueueStats {
            pending_bytes: s.queue.pending_bytes,
            pending_items: s.queue.pending_items,
            dropped_items: s.queue.dropped_items,
            dropped_bytes: s.queue.dropped_bytes,
        };
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
        self.patch_status(node, |st| {
            st.node_info = Some(info.clone());
            st.allocatable = Some(alloc.clone());
            st.capacity = Some(s.capacity.clone());
            st.queue = Some(queue);
            for (t, cs, reason, msg) in &conds {
                set_condition(
                    &mut st.conditions,
                    t,
                    ConditionStatus::from_bool(*cs),
                    reason,
                    msg,
                );
            }
        })
        .await
    }
}

/// Sets one condition (the one [`Condition`] rule: the transition time is kept while
/// the status stays).
fn set_condition(
    list: &mut Vec<Condition>,
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    verge_api::status::set_condition(
        list,
        Condition::new(kind, status, reason, message),
        &now_rfc3339(),
    );
}

#[async_trait::async_trait]
impl Inbound for NodeManager {
    fn connected(&self, node: &str) {
        if let Ok(mut rt) = self.runtime.lock() {
            let r = rt.entry(node.to_string()).or_default();
            r.seen(tokio::time::Instant::now(), OffsetDateTime::now_utc());
            self.wake_if_due(node, r);
        }
    }

    fn disconnected(&self, node: &str) {
        self.sync.disconnected(node);
    }

    fn heartbeat(&self, node: &str, hb: &Heartbeat) {
        let now = OffsetDateTime::now_utc();
        if let Ok(mut rt) = self.runtime.lock() {
            let r = rt.entry(node.to_string()).or_default();
            r.seen(tokio::time::Instant::now(), now);
            r.clock_skew_ms = hb.sent_at_ms - (now.unix_timestamp_nanos() / 1_000_000) as i64;
            // Only when a write is due: a Ready node's heartbeats wake nothing.
            self.wake_if_due(node, r);
        }
    }

    async fn message(&self, node: &str, msg: Message) -> Handled {
        match msg {
            Message::Hello(h) => self.sync.hello(node, h.last_applied_revision).await,
            Message::Ack(a) => {
                if let Some(sync_status) = self.sync.ack(node, a.revision).await {
                    let _ = self
                        .patch_status(node, |st| st.sync = Some(sync_status.clone()))
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
                // Recorded before a crash cut its application short (the node re-sends
                // what was not acknowledged): apply it now. A task it already finished
                // refuses it (`Finished`).
                match tasks.on_result(node, r).await {
                    Ok(()) => {
                        tracing::info!(%node, task = %r.id, "a recorded result applied after a restart")
                    }
                    Err(Refusal::Finished) => {}
                    Err(why) => {
                        self.metrics.result_refused(why);
                        tracing::debug!(%node, task = %r.id, why = why.as_str(), "result not applied");
                    }
                }
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
