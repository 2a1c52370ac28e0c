//! Node lifecycle and the data manager for node traffic.
//!
//! [`NodeManager`] implements the gateway's [`Inbound`]: heartbeats update an in-memory
//! last-seen time (never a store write per heartbeat); a lifecycle loop marks a node
//! `NotReady` after `misses` missed heartbeats and `Ready` again on the next one, and
//! flushes `lastSeen` to the Node's status periodically. Status reports are written to
//! the Node's status. Desired-state sync lives in [`sync`].
//!
//! The cloud's own clock decides liveness (receive time), so a node whose clock is
//! skewed is still judged correctly; the skew is reported in its status.

pub mod certs;
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

use crate::gateway::{DynDownlink, Handled, Inbound};
use crate::http::resources::{modify, object_key};

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

#[derive(Debug, Default)]
struct Runtime {
    last_seen: Option<Instant>,
    last_seen_wall: Option<OffsetDateTime>,
    /// What the store says (as far as we wrote it).
    ready: Option<bool>,
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
    pub fn new(store: DynStore, cfg: LifecycleConfig) -> Arc<Self> {
        Arc::new(Self {
            sync: Arc::new(sync::Sync::new(store.clone())),
            results: results::Results::new(store.clone()),
            tasks: std::sync::OnceLock::new(),
            apps: Arc::new(crate::apps::Reports::default()),
            logs: logs::Logs::default(),
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
        use crate::http::join::{
            CERT_EXPIRES_ANNOTATION, CERT_SERIAL_ANNOTATION, PREVIOUS_CERT_SERIAL_ANNOTATION,
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
        let recorded =
            crate::http::join::record_node_cert(&self.store, node, &serial, &expires).await;
        let r = match recorded {
            Err(e) => Err(e),
            Ok(()) => {
                modify(&self.store, Kind::Node, &key, node, None, |cur| {
                    let mut next = cur.clone();
                    let ann = &mut next.metadata.annotations;
                    if let Some(old) = ann.get(CERT_SERIAL_ANNOTATION).cloned() {
                        ann.insert(PREVIOUS_CERT_SERIAL_ANNOTATION.into(), old);
                    }
                    ann.insert(CERT_SERIAL_ANNOTATION.into(), serial.clone());
                    ann.insert(CERT_EXPIRES_ANNOTATION.into(), expires.clone());
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

    /// Seeds the runtime with every known node as if seen at start-up: after a cloud
    /// restart a node that comes back within the grace period is never marked NotReady,
    /// and one that does not come back is, instead of keeping a stale `Ready`.
    async fn seed(&self) {
        let Ok(list) = self
            .store
            .list(&crate::http::resources::kind_prefix(Kind::Node), None)
            .await
        else {
            return;
        };
        let now = Instant::now();
        if let Ok(mut rt) = self.runtime.lock() {
            for kv in list.items {
                let Ok(obj) = serde_json::from_slice::<verge_api::Object>(&kv.value) else {
                    continue;
                };
                let ready = obj
                    .status
                    .get("phase")
                    .and_then(|p| p.as_str())
                    .map(|p| p == "Ready");
                let r = rt.entry(obj.metadata.name).or_default();
                if r.last_seen.is_none() {
                    r.last_seen = Some(now);
                    r.ready = ready;
                }
            }
        }
    }

    /// Marks nodes Ready/NotReady and flushes lastSeen; runs until `shutdown`.
    pub async fn lifecycle_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
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
            let mut changes: Vec<(String, bool, Option<String>, i64)> = Vec::new();
            if let Ok(mut rt) = self.runtime.lock() {
                for (name, r) in rt.iter_mut() {
                    let alive = r.last_seen.is_some_and(|t| t.elapsed() < grace);
                    let seen = r
                        .last_seen_wall
                        .and_then(|t| t.replace_nanosecond(0).ok())
                        .and_then(|t| t.format(&Rfc3339).ok());
                    let skew_moved =
                        (r.clock_skew_ms - r.reported_skew_ms).abs() > SKEW_REPORT_STEP_MS;
                    if r.ready != Some(alive) || (flush_due && r.seen_since_flush) || skew_moved {
                        r.ready = Some(alive);
                        r.seen_since_flush = false;
                        r.reported_skew_ms = r.clock_skew_ms;
                        changes.push((name.clone(), alive, seen, r.clock_skew_ms));
                    }
                }
            }
            if flush_due {
                last_flush = Instant::now();
            }
            for (name, ready, seen, skew) in changes {
                let misses = self.cfg.misses;
                self.patch_status(&name, |m| {
                    m.insert(
                        "phase".into(),
                        (if ready { "Ready" } else { "NotReady" }).into(),
                    );
                    if let Some(s) = &seen {
                        m.insert("lastSeen".into(), s.clone().into());
                    }
                    m.insert("clockSkewMs".into(), skew.into());
                    set_condition(
                        m,
                        "Ready",
                        ready,
                        if ready {
                            "HeartbeatsArriving"
                        } else {
                            "HeartbeatsMissed"
                        },
                        &if ready {
                            "the node's heartbeats are arriving".to_string()
                        } else {
                            format!("no heartbeat for {misses} intervals")
                        },
                    );
                })
                .await;
                if !ready {
                    tracing::info!(node = %name, "node NotReady");
                }
            }
        }
    }

    async fn on_status(&self, node: &str, s: &NodeStatus) {
        self.apps.report(node, &s.apps);
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
                set_condition(m, t, *st, reason, msg);
            }
        })
        .await;
    }
}

/// Sets one condition in `status.conditions`, keeping lastTransitionTime when unchanged.
fn set_condition(
    m: &mut serde_json::Map<String, serde_json::Value>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let conds = m
        .entry("conditions")
        .or_insert_with(|| serde_json::json!([]));
    if !conds.is_array() {
        *conds = serde_json::json!([]);
    }
    let Some(list) = conds.as_array_mut() else {
        return;
    };
    let status_s = if status { "True" } else { "False" };
    let existing = list.iter_mut().find(|c| c["type"] == kind);
    let transition = match &existing {
        Some(c) if c["status"] == status_s => c["lastTransitionTime"].clone(),
        _ => now_rfc3339().into(),
    };
    let c = serde_json::json!({
        "type": kind, "status": status_s, "reason": reason, "message": message,
        "lastTransitionTime": transition,
    });
    match existing {
        Some(e) => *e = c,
        None => list.push(c),
    }
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
            Message::LogBatch(b) => self.logs.record(node, &b),
            Message::CertRequest(req) => return self.renew(node, &req).await,
            Message::TaskResult(r) => match self.results.record(node, &r).await {
                Ok(results::Recorded::New) => {
                    if let Some(tasks) = self.tasks.get() {
                        tasks.on_result(node, &r).await;
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
            },
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
    /// Forgets a deleted node.
    pub fn forget(&self, node: &str) {
        if let Ok(mut rt) = self.runtime.lock() {
            rt.remove(node);
        }
        if let Ok(mut r) = self.renewed.lock() {
            r.remove(node);
        }
        self.sync.forget(node);
        if let Some(gw) = self.gateway.get() {
            gw.kick(node);
        }
    }
}
