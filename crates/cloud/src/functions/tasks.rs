//! The task controller: creates Tasks (with idempotency keys), places them (cloud,
//! a node, the least loaded matching node, or one child per node for a fan-out),
//! dispatches them to nodes over the MQTT channel (QoS 1), re-sends unanswered ones,
//! times them out, records results (inline, or in the artifact store above
//! [`MAX_INLINE_RESULT`]), cancels, and delivers callbacks.
//!
//! Results are node-scoped: [`Tasks::admit`] decides, before anything is stored,
//! whether a node's result may be taken ([`judge`]: only for the attempt the cloud
//! dispatched to that node; never for a fan-out parent; never for an unknown task,
//! except a run of a trigger the node fires, within the active-task cap and a per-node
//! rate), and [`Tasks::finish`] checks again inside its compare-and-swap.
//!
//! The controller runs on the one runtime ([`crate::controller`]), keyed by task name.
//! A task is reconciled when it changes, when a node or cloud run reports on it or
//! its callback attempt ends (the `wakeups` channel), when a child of a fan-out parent
//! changes (the parent), when a node or the function a pending task waits for changes
//! (the tasks waiting), and at its own next deadline (`Action::requeue`): the attempt
//! timeout, the next callback attempt, the end of its retention ([`RETENTION_MS`]
//! after it finished: it is deleted then). Large result files no task refers to are
//! collected by the key [`SWEEP_KEY`], right after start-up and then every
//! [`SWEEP_EVERY`]. Nothing lists the tasks or the nodes on a timer: placement reads
//! the Node and Function informer caches. Unfinished tasks (and finished ones with a
//! callback to deliver) are also kept in an in-memory index, built from the cache at
//! start, for the load per node and the [`MAX_ACTIVE_TASKS`] cap.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};
use verge_api::specs::{FunctionSpec, TaskSpec, TaskTarget};
use verge_api::{API_VERSION, Kind, Object, ObjectMeta, Reason};
use verge_proto::{Channel, Message, TaskResult};
use verge_store::{DynStore, Expect};

use super::task_state::*;
use super::{FunctionHost, callbacks};
use crate::artifacts::ArtifactStore;
use crate::controller::{Action, Cache, Change, Controller, Informers, Request, backoff_policy};
use crate::error::ApiError;
use crate::gateway::DynDownlink;
use crate::objects::{modify, object_key};

/// The key of the large-result sweep (not a task name: those are DNS labels).
pub const SWEEP_KEY: &str = "_sweep";
/// How often the large-result sweep runs (and once right after start-up).
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How late after a deadline the reconcile runs (the clock's granularity).
const AFTER_DEADLINE: Duration = Duration::from_millis(5);
/// Tasks reconciled at once.
const CONCURRENCY: usize = 32;
/// How long `create` waits for the controller's first pass over a new task.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(2);

/// `Retry-After` of a synchronous invoke refused because no node for it is Ready.
const SYNC_RETRY_AFTER_SECS: u64 = 5;
/// Unfinished tasks allowed at once; creating more answers 429.
pub const MAX_ACTIVE_TASKS: usize = 10_000;
pub use verge_api::names::{LABEL_PARENT, LABEL_TRIGGER};
const KEY_PREFIX: &str = "/system/taskkeys/";
/// Task records a node may create with trigger runs: per second, sustained.
pub const TRIGGER_RUNS_PER_SEC: f64 = 5.0;
/// ... and at once (a catch-up after an offline period).
pub const TRIGGER_RUNS_BURST: f64 = verge_api::limits::MAX_CATCH_UP as f64;
/// Where large results are served (`resultUrl`): this prefix and the digest.
const RESULT_URL_PREFIX: &str = "/api/v1/artifacts/";

/// Whether a node's result may be taken (see [`Tasks::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Take,
    /// Refused for good: acknowledge it and store nothing.
    Refuse(Refusal),
    /// Not now (the store failed, the active-task cap or the node's trigger-run rate
    /// is reached): do not acknowledge it, so the node sends it again later.
    Later,
}

use super::now_ms;

/// A new task id: `t-` and 16 hex digits.
pub fn new_task_id() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: bool,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub reason: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

pub struct Tasks {
    store: DynStore,
    host: Arc<FunctionHost>,
    artifacts: Arc<ArtifactStore>,
    downlink: OnceLock<DynDownlink>,
    callback_key: Vec<u8>,
    /// Callbacks go out through the outbound guard ([`callbacks::http_client`]).
    http: verge_outbound::Client,
    /// Unfinished tasks (and finished ones with a callback to deliver) → node.
    active: Mutex<HashMap<String, Option<String>>>,
    delivering: Mutex<HashSet<String>>,
    /// Tasks this process is running in the cloud right now. A task Running in the
    /// cloud but not here lost its run to a restart (kill -9): it is run again.
    cloud_runs: Mutex<HashSet<String>>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<TaskStatus>>>>,
    /// Callers of `create` waiting for the first reconcile of their task.
    advanced: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Task names to reconcile now (the controller's `wakeups`).
    wake_tx: mpsc::UnboundedSender<String>,
    wake_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Pending tasks waiting for a node or their function → the function's name: a
    /// change of a Node, or of that Function, reconciles them.
    waiting: Mutex<HashMap<String, String>>,
    tasks: Arc<Cache>,
    nodes: Arc<Cache>,
    functions: Arc<Cache>,
    /// Held (shared) while a large result is written and referenced, and (exclusive)
    /// by the sweep, so the sweep never sees a result file between the two.
    result_files: tokio::sync::RwLock<()>,
    /// Result files written since the last sweep began: the task cache may not show
    /// the tasks referring to them yet, so that sweep keeps them (the next one judges).
    fresh_results: Mutex<HashSet<String>>,
    /// Per node: the budget for Task records its trigger runs create.
    trigger_runs: Mutex<HashMap<String, Bucket>>,
}

impl Tasks {
    pub fn new(
        store: DynStore,
        host: Arc<FunctionHost>,
        artifacts: Arc<ArtifactStore>,
        callback_key: Vec<u8>,
        http: verge_outbound::Client,
        informers: &Informers,
    ) -> Arc<Self> {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            store,
            host,
            artifacts,
            downlink: OnceLock::new(),
            callback_key,
            http,
            active: Mutex::new(HashMap::new()),
            delivering: Mutex::new(HashSet::new()),
            cloud_runs: Mutex::new(HashSet::new()),
            waiters: Mutex::new(HashMap::new()),
            advanced: Mutex::new(HashMap::new()),
            wake_tx,
            wake_rx: Mutex::new(Some(wake_rx)),
            waiting: Mutex::new(HashMap::new()),
            tasks: informers.cache(Kind::Task),
            nodes: informers.cache(Kind::Node),
            functions: informers.cache(Kind::Function),
            result_files: tokio::sync::RwLock::new(()),
            fresh_results: Mutex::new(HashSet::new()),
            trigger_runs: Mutex::new(HashMap::new()),
        })
    }

    pub fn set_downlink(&self, d: DynDownlink) {
        let _ = self.downlink.set(d);
    }

    fn load(&self) -> HashMap<String, usize> {
        let mut load = HashMap::new();
        if let Ok(a) = self.active.lock() {
            for node in a.values().flatten() {
                *load.entry(node.clone()).or_insert(0) += 1;
            }
        }
        load
    }

    fn track(&self, name: &str, node: Option<String>) {
        if let Ok(mut a) = self.active.lock() {
            a.insert(name.to_string(), node);
        }
    }

    fn untrack(&self, name: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(name);
        }
    }

    /// Reconciles task `name` soon (a report, a result, a callback attempt ended).
    fn wake(&self, name: &str) {
        let _ = self.wake_tx.send(name.to_string());
    }

    fn set_waiting(&self, name: &str, function: Option<&str>) {
        if let Ok(mut w) = self.waiting.lock() {
            match function {
                Some(f) => {
                    w.insert(name.to_string(), f.to_string());
                }
                None => {
                    w.remove(name);
                }
            }
        }
    }

    /// The pending tasks a change of a Node or Function may unblock.
    fn waiting_for(&self, change: &Change) -> Vec<String> {
        let Ok(w) = self.waiting.lock() else {
            return Vec::new();
        };
        match change.kind {
            Kind::Node if node_change_matters(change.old.as_deref(), change.new.as_deref()) => {
                w.keys().cloned().collect()
            }
            Kind::Function => w
                .iter()
                .filter(|(_, f)| **f == change.name)
                .map(|(t, _)| t.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Creates a task with a generated id; `(id, created)`: `created` is false when the
    /// idempotency key was seen before and `id` is that earlier task.
    pub async fn create(
        self: &Arc<Self>,
        spec: TaskSpec,
        labels: std::collections::BTreeMap<String, String>,
        trigger: Option<String>,
    ) -> Result<(String, bool), ApiError> {
        let (o, created) = self.create_named(None, spec, labels, trigger).await?;
        Ok((o.metadata.name, created))
    }

    /// Creates a task named `name` (a generated id when `None`); the stored Task and
    /// whether it is new: with an idempotency key seen before, the earlier task
    /// (whatever its name) and `false`. A name already taken is `409 AlreadyExists`.
    pub async fn create_named(
        self: &Arc<Self>,
        name: Option<String>,
        spec: TaskSpec,
        labels: std::collections::BTreeMap<String, String>,
        trigger: Option<String>,
    ) -> Result<(Object, bool), ApiError> {
        spec.validate()
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
        let function_key = object_key(Kind::Function, &spec.function);
        if self.store.get(&function_key).await?.is_none() {
            return Err(
                ApiError::not_found(format!("function {:?} not found", spec.function))
                    .field("spec.function"),
            );
        }
        if self.active.lock().map(|a| a.len()).unwrap_or(0) >= MAX_ACTIVE_TASKS {
            let mut e = ApiError::new(
                Reason::TooManyRequests,
                format!("{MAX_ACTIVE_TASKS} tasks are unfinished; retry later"),
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        let id = name.unwrap_or_else(new_task_id);
        let taken = || {
            ApiError::new(
                Reason::AlreadyExists,
                format!("task {id:?} already exists (a task cannot be changed; use another name)"),
            )
            .field("metadata.name")
        };
        if self
            .store
            .get(&object_key(Kind::Task, &id))
            .await?
            .is_some()
        {
            return Err(taken());
        }
        // The key record this call wrote, to take back if the task cannot be stored.
        let mut key_written: Option<String> = None;
        if let Some(key) = &spec.idempotency_key {
            let record = format!(
                "{KEY_PREFIX}{}",
                hex::encode(sha2::Sha256::digest(key.as_bytes()))
            );
            match self
                .store
                .create(&record, Bytes::from(id.clone()), Default::default())
                .await
            {
                Ok(_) => key_written = Some(record),
                Err(verge_store::Error::AlreadyExists { .. }) => {
                    if let Some(kv) = self.store.get(&record).await? {
                        let earlier = String::from_utf8_lossy(&kv.value).to_string();
                        if let Some((_, _, o)) = self.fetch(&earlier).await? {
                            return Ok((o, false));
                        }
                        // The earlier task is gone (deleted after retention): a new run.
                        self.store
                            .update(
                                &record,
                                Bytes::from(id.clone()),
                                Default::default(),
                                Expect::Any,
                            )
                            .await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let inserted = match self.insert(&id, spec, labels, trigger, None).await {
            Ok(o) => o,
            Err(e) => {
                if let Some(record) = key_written {
                    let _ = self.store.delete(&record, Expect::Any).await;
                }
                return Err(if e.reason == Reason::AlreadyExists {
                    taken()
                } else {
                    e
                });
            }
        };
        self.track(&id, None);
        // Placed (or told why it waits) and dispatched by the controller, at once; the
        // answer shows the task as it is after that first pass.
        let (tx, rx) = oneshot::channel();
        if let Ok(mut a) = self.advanced.lock() {
            a.entry(id.clone()).or_default().push(tx);
        }
        self.wake(&id);
        if tokio::time::timeout(FIRST_PASS_WAIT, rx).await.is_err()
            && let Ok(mut a) = self.advanced.lock()
            && let Some(list) = a.get_mut(&id)
        {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                a.remove(&id);
            }
        }
        let current = self.fetch(&id).await.ok().flatten().map(|(_, _, o)| o);
        Ok((current.unwrap_or(inserted), true))
    }

    async fn insert(
        &self,
        id: &str,
        spec: TaskSpec,
        labels: std::collections::BTreeMap<String, String>,
        trigger: Option<String>,
        parent: Option<String>,
    ) -> Result<Object, ApiError> {
        let status = TaskStatus {
            created_at_ms: now_ms(),
            trigger,
            parent,
            ..Default::default()
        };
        let obj = Object {
            api_version: API_VERSION.to_string(),
            kind: Kind::Task.name().to_string(),
            metadata: ObjectMeta {
                name: id.to_string(),
                labels: labels.clone(),
                uid: Some(uuid::Uuid::new_v4().to_string()),
                generation: Some(1),
                creation_timestamp: Some(crate::auth::now_rfc3339()),
                ..Default::default()
            },
            spec: serde_json::to_value(&spec).map_err(ApiError::internal)?,
            status: serde_json::to_value(&status).map_err(ApiError::internal)?,
        };
        let bytes = serde_json::to_vec(&obj).map_err(ApiError::internal)?;
        self.store
            .create(&object_key(Kind::Task, id), bytes.into(), labels)
            .await?;
        Ok(obj)
    }

    async fn read(&self, name: &str) -> Option<(TaskSpec, TaskStatus, Object)> {
        self.fetch(name).await.ok().flatten()
    }

    /// Like `read`, but a store failure is an `Err` (not "no such task").
    async fn fetch(
        &self,
        name: &str,
    ) -> Result<Option<(TaskSpec, TaskStatus, Object)>, verge_store::Error> {
        let Some(kv) = self.store.get(&object_key(Kind::Task, name)).await? else {
            return Ok(None);
        };
        let parsed = serde_json::from_slice::<Object>(&kv.value)
            .ok()
            .and_then(|o| {
                let spec: TaskSpec = serde_json::from_value(o.spec.clone()).ok()?;
                let status = TaskStatus::from_value(&o.status);
                Some((spec, status, o))
            });
        Ok(parsed)
    }

    /// Applies `change` to the stored status (it also sees the stored object); `None`
    /// when the task is gone or `change` declined (returned false).
    async fn update(
        &self,
        name: &str,
        change: impl Fn(&mut TaskStatus, &Object) -> bool,
    ) -> Option<TaskStatus> {
        let key = object_key(Kind::Task, name);
        let out: Mutex<Option<TaskStatus>> = Mutex::new(None);
        let r = modify(&self.store, Kind::Task, &key, name, None, |cur| {
            let mut st = TaskStatus::from_value(&cur.status);
            let mut next = cur.clone();
            if change(&mut st, cur) {
                next.status = serde_json::to_value(&st).map_err(ApiError::internal)?;
                if let Ok(mut o) = out.lock() {
                    *o = Some(st);
                }
            } else if let Ok(mut o) = out.lock() {
                *o = None;
            }
            Ok(next)
        })
        .await;
        match r {
            Ok(_) => out.into_inner().ok().flatten(),
            Err(e) => {
                if e.reason != Reason::NotFound {
                    tracing::warn!(task = %name, error = %e.message, "task status update failed");
                }
                None
            }
        }
    }

    /// For a synchronous invoke, which is not queued: `Err` at once when `target` (or
    /// the function's placement) has no node to run it now — 404 naming a node that
    /// does not exist, 503 when no node for it is Ready ([`sync_refusal`]).
    pub async fn dispatchable_now(
        &self,
        target: Option<&TaskTarget>,
        function: &FunctionSpec,
    ) -> Result<(), ApiError> {
        let mut refusal = sync_refusal(&place(target, function, &self.nodes(), &self.load()));
        if refusal.is_some() {
            // The cache may be a moment behind a node that just became Ready: a
            // refusal is checked against the store.
            let nodes = self.nodes_from_store().await?;
            refusal = sync_refusal(&place(target, function, &nodes, &self.load()));
        }
        match refusal {
            None => Ok(()),
            Some(NotNow::NoSuchNode(m)) => Err(ApiError::not_found(m).field("node")),
            Some(NotNow::Offline(m)) => {
                let mut e = ApiError::new(Reason::Unavailable, m);
                e.retry_after = Some(SYNC_RETRY_AFTER_SECS);
                Err(e)
            }
        }
    }

    /// The nodes as the scheduler sees them, from the Node informer cache.
    fn nodes(&self) -> Vec<NodeView> {
        self.nodes.list().iter().map(|o| node_view(o)).collect()
    }

    /// The nodes as the store has them (only to confirm a refusal, see
    /// [`Tasks::dispatchable_now`]).
    async fn nodes_from_store(&self) -> Result<Vec<NodeView>, ApiError> {
        let list = self
            .store
            .list(&crate::objects::kind_prefix(Kind::Node), None)
            .await?;
        Ok(list
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Object>(&kv.value).ok())
            .map(|o| node_view(&o))
            .collect())
    }

    /// The spec of Function `name`: from the cache, or the store when the cache does
    /// not have it yet (a task created right after its function).
    async fn function(&self, name: &str) -> Option<FunctionSpec> {
        if let Some(o) = self.functions.get(name) {
            return serde_json::from_value(o.spec.clone()).ok();
        }
        let kv = self
            .store
            .get(&object_key(Kind::Function, name))
            .await
            .ok()??;
        let o: Object = serde_json::from_slice(&kv.value).ok()?;
        serde_json::from_value(o.spec).ok()
    }

    /// Runs the controller until `shutdown` flips (see the module docs).
    pub async fn run(
        self: Arc<Self>,
        informers: Arc<Informers>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // The index, from the synced cache (once, at start).
        tokio::select! {
            _ = self.tasks.wait_synced() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for o in self.tasks.list() {
            let st = TaskStatus::from_value(&o.status);
            if needs_index(&st) {
                self.track(&o.metadata.name, st.node.clone());
            }
        }
        let wakeups = self.wake_rx.lock().ok().and_then(|mut r| r.take());
        let (on_node, on_function) = (self.clone(), self.clone());
        let mut controller = Controller::new("tasks", informers)
            .for_kind(Kind::Task)
            // A child's change is its fan-out parent's.
            .watches(Kind::Task, |c| {
                c.new
                    .as_ref()
                    .or(c.old.as_ref())
                    .and_then(|o| parent_of(&o.status))
                    .into_iter()
                    .collect()
            })
            .watches(Kind::Node, move |c| on_node.waiting_for(c))
            .watches(Kind::Function, move |c| on_function.waiting_for(c))
            .seed(SWEEP_KEY)
            .concurrency(CONCURRENCY);
        if let Some(rx) = wakeups {
            controller = controller.wakeups(rx);
        }
        controller
            .run(
                |req: Request, this: Arc<Self>| async move { this.reconcile(req).await },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
    }

    async fn reconcile(self: Arc<Self>, req: Request) -> Result<Action, ApiError> {
        if req.key == SWEEP_KEY {
            self.sweep().await;
            return Ok(Action::requeue(SWEEP_EVERY));
        }
        let next = self.advance(&req.key).await;
        if let Some(list) = self
            .advanced
            .lock()
            .ok()
            .and_then(|mut a| a.remove(&req.key))
        {
            for tx in list {
                let _ = tx.send(());
            }
        }
        Ok(match next? {
            Some(at) => Action::requeue(
                Duration::from_millis((at - now_ms()).max(0) as u64) + AFTER_DEADLINE,
            ),
            None => Action::await_change(),
        })
    }

    /// Moves one task forward (see the module docs); when to look at it again (Unix
    /// ms), if nothing else happens to it first. The status is read from the store,
    /// not the cache: the cache may not yet show this controller's own last write.
    async fn advance(self: &Arc<Self>, name: &str) -> Result<Option<i64>, ApiError> {
        let Some((spec, status, obj)) = self.fetch(name).await? else {
            self.untrack(name);
            self.set_waiting(name, None);
            return Ok(None);
        };
        let now = now_ms();
        if status.phase.is_final() {
            self.set_waiting(name, None);
            return self.after_final(name, &spec, &status, now).await;
        }
        if !status.children.is_empty() {
            self.advance_parent(name, &status).await;
            return Ok(None);
        }
        if status.phase == Phase::Running
            && status.node.as_deref() == Some("cloud")
            && status.attempts < spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
            && !self
                .cloud_runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(name)
        {
            // Its run died with the process that ran it (a restart): the next attempt
            // runs now, under the same idempotency key, rather than after a timeout.
            let attempt = status.attempts;
            self.update(name, |st, _| {
                if st.phase != Phase::Running || st.node.as_deref() != Some("cloud") {
                    return false;
                }
                st.phase = Phase::Pending;
                st.reason = Some("Restarted".into());
                st.message = Some(format!(
                    "the cloud restarted during attempt {attempt}; running it again"
                ));
                true
            })
            .await;
            return Ok(Some(now));
        }
        let deadline = next_deadline(&spec, &status);
        match timing(&spec, &status, now) {
            Timing::TimedOut(message) => {
                self.set_waiting(name, None);
                let _ = self
                    .finish(
                        name,
                        Outcome {
                            ok: false,
                            output: None,
                            error: Some(message),
                            reason: Some("TimedOut".into()),
                            started_at_ms: status.started_at_ms.unwrap_or(now),
                            finished_at_ms: now,
                        },
                        Reporter::Controller,
                    )
                    .await;
                // Its change brings it back (callback, retention).
                return Ok(None);
            }
            Timing::Redispatch => {
                if let Some(node) = status.node.clone() {
                    self.dispatch(name, &spec, &node, &obj).await;
                }
                // The new attempt's deadline, once the dispatch is read back.
                return Ok(Some(now + attempt_timeout_ms(&spec)));
            }
            Timing::Fine => {}
        }
        if status.phase != Phase::Pending {
            return Ok(deadline);
        }
        // Waiting from before the caches are read: a change landing after the read
        // finds it in `waiting` and reconciles it again.
        self.set_waiting(name, Some(&spec.function));
        let Some(function) = self.function(&spec.function).await else {
            let message = format!("function {:?} not found", spec.function);
            self.update(name, |st, _| {
                let changed = st.reason.as_deref() != Some("FunctionNotFound");
                st.reason = Some("FunctionNotFound".into());
                st.message = Some(message.clone());
                changed
            })
            .await;
            return Ok(deadline);
        };
        // A cloud run needs no node list.
        let nodes = if spec.target.is_none() && function.in_cloud() {
            Vec::new()
        } else {
            self.nodes()
        };
        let placement = place(spec.target.as_ref(), &function, &nodes, &self.load());
        if matches!(
            placement,
            Placement::Cloud | Placement::Node(_) | Placement::FanOut(_)
        ) {
            self.set_waiting(name, None);
        }
        match placement {
            Placement::Cloud => self.run_in_cloud(name, &spec).await,
            Placement::Node(node) => self.dispatch(name, &spec, &node, &obj).await,
            Placement::FanOut(nodes) => self.fan_out(name, &spec, &obj, nodes).await,
            Placement::Wait { reason, message } | Placement::Fail { reason, message } => {
                self.update(name, |st, _| {
                    let changed = st.reason.as_deref() != Some(reason)
                        || st.message.as_deref() != Some(message.as_str());
                    st.reason = Some(reason.to_string());
                    st.message = Some(message.clone());
                    changed
                })
                .await;
            }
        }
        // Whatever was written brings it back; the deadline in any case.
        Ok(deadline)
    }

    async fn dispatch(self: &Arc<Self>, name: &str, spec: &TaskSpec, node: &str, obj: &Object) {
        let now = now_ms();
        let Some(st) = self
            .update(name, |st, _| {
                if st.phase.is_final() {
                    return false;
                }
                st.phase = Phase::Dispatched;
                st.node = Some(node.to_string());
                st.attempts += 1;
                st.attempt_nodes.push(node.to_string());
                st.dispatched_at_ms = Some(now);
                st.reason = None;
                st.message = None;
                true
            })
            .await
        else {
            return;
        };
        self.track(name, Some(node.to_string()));
        let input = spec.input.clone().unwrap_or(Value::Null);
        // Artifacts the input names (image sources): the node may fetch them for this
        // attempt.
        self.artifacts
            .grants()
            .grant_referenced(node, &input, now + attempt_timeout_ms(spec));
        let msg = Message::Task(verge_proto::Task {
            id: name.to_string(),
            function: spec.function.clone(),
            input,
            deadline_ms: now + attempt_timeout_ms(spec),
            idempotency_key: Some(
                spec.idempotency_key
                    .clone()
                    .unwrap_or_else(|| obj.metadata.uid.clone().unwrap_or(name.to_string())),
            ),
            attempt: Some(st.attempts),
        });
        let sent = self
            .downlink
            .get()
            .is_some_and(|d| d.send(node, Channel::Task, Bytes::from(verge_proto::encode(&msg))));
        if !sent {
            tracing::info!(task = %name, %node, attempt = st.attempts, "task not sent now; it is re-sent after its attempt timeout");
        }
    }

    async fn run_in_cloud(self: &Arc<Self>, name: &str, spec: &TaskSpec) {
        let now = now_ms();
        if self
            .update(name, |st, _| {
                if st.phase != Phase::Pending {
                    return false;
                }
                st.phase = Phase::Running;
                st.node = Some("cloud".into());
                st.attempts += 1;
                st.attempt_nodes.push("cloud".into());
                st.started_at_ms = Some(now);
                st.reason = None;
                st.message = None;
                true
            })
            .await
            .is_none()
        {
            return;
        }
        self.track(name, Some("cloud".into()));
        self.cloud_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        let this = self.clone();
        let name = name.to_string();
        let function = spec.function.clone();
        let input = spec.input.clone().unwrap_or(Value::Null);
        let timeout = Duration::from_millis(attempt_timeout_ms(spec) as u64);
        tokio::spawn(async move {
            let started = now_ms();
            let r = tokio::time::timeout(
                timeout,
                this.host
                    .invoke(&function, verge_runtime::Input::Json(input)),
            )
            .await;
            let outcome = match r {
                Ok(Ok(inv)) => Outcome {
                    ok: true,
                    output: Some(inv.output.into_json()),
                    error: None,
                    reason: None,
                    started_at_ms: started,
                    finished_at_ms: now_ms(),
                },
                Ok(Err(e)) => Outcome {
                    ok: false,
                    output: None,
                    error: Some(e.describe(verge_proto::MAX_TASK_ERROR)),
                    // `TimedOut` makes the phase TimedOut (see `finish`).
                    reason: Some(match e {
                        verge_runtime::Error::Timeout { .. } => "TimedOut".into(),
                        _ => e.reason().into(),
                    }),
                    started_at_ms: started,
                    finished_at_ms: now_ms(),
                },
                Err(_) => Outcome {
                    ok: false,
                    output: None,
                    error: Some(format!("no result within {} s", timeout.as_secs())),
                    reason: Some("TimedOut".into()),
                    started_at_ms: started,
                    finished_at_ms: now_ms(),
                },
            };
            if let Err(why) = this.finish(&name, outcome, Reporter::Cloud).await {
                tracing::debug!(task = %name, why = why.as_str(), "cloud run finished after the task did");
            }
            this.cloud_runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
        });
    }

    async fn fan_out(
        self: &Arc<Self>,
        name: &str,
        spec: &TaskSpec,
        obj: &Object,
        nodes: Vec<String>,
    ) {
        let mut children = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let child = format!("{name}-{i}");
            let child_spec = TaskSpec {
                target: Some(TaskTarget {
                    node: Some(node.clone()),
                    node_selector: None,
                    fanout: None,
                }),
                callback_url: None,
                idempotency_key: Some(format!(
                    "{}/{node}",
                    spec.idempotency_key.clone().unwrap_or_else(|| obj
                        .metadata
                        .uid
                        .clone()
                        .unwrap_or(name.to_string()))
                ))
                .filter(|k| k.len() <= verge_api::limits::MAX_IDEMPOTENCY_KEY_LEN),
                ..spec.clone()
            };
            let mut labels = obj.metadata.labels.clone();
            labels.insert(LABEL_PARENT.into(), name.to_string());
            match self
                .insert(&child, child_spec, labels, None, Some(name.to_string()))
                .await
            {
                Ok(_)
                | Err(ApiError {
                    reason: Reason::AlreadyExists,
                    ..
                }) => {}
                Err(e) => {
                    tracing::warn!(task = %name, error = %e.message, "could not create a fan-out child");
                    return;
                }
            }
            children.push(Child {
                name: child,
                node: node.clone(),
                phase: Phase::Pending,
            });
        }
        let now = now_ms();
        self.update(name, |st, _| {
            if st.phase != Phase::Pending {
                return false;
            }
            st.phase = Phase::Running;
            st.started_at_ms = Some(now);
            st.children = children.clone();
            st.reason = None;
            st.message = None;
            true
        })
        .await;
        for c in &children {
            self.track(&c.name, None);
            self.wake(&c.name);
        }
    }

    async fn advance_parent(self: &Arc<Self>, name: &str, status: &TaskStatus) {
        let mut children = status.children.clone();
        for c in &mut children {
            if let Some((_, st, _)) = self.read(&c.name).await {
                c.phase = st.phase;
            }
        }
        let phase = parent_phase(&children);
        if !phase.is_final() {
            if children != status.children {
                self.update(name, |st, _| {
                    st.children = children.clone();
                    true
                })
                .await;
            }
            return;
        }
        let now = now_ms();
        let failed: Vec<&str> = children
            .iter()
            .filter(|c| c.phase != Phase::Succeeded)
            .map(|c| c.node.as_str())
            .collect();
        let outcome = Outcome {
            ok: phase == Phase::Succeeded,
            output: Some(json!({
                "children": children.iter().map(|c| json!({"task": c.name, "node": c.node, "phase": c.phase})).collect::<Vec<_>>()
            })),
            error: (!failed.is_empty())
                .then(|| format!("failed on node(s): {}", failed.join(", "))),
            reason: None,
            started_at_ms: status.started_at_ms.unwrap_or(now),
            finished_at_ms: now,
        };
        self.update(name, |st, _| {
            st.children = children.clone();
            true
        })
        .await;
        let _ = self.finish(name, outcome, Reporter::Controller).await;
    }

    /// Records how a task ended, once, when `by` may finish it ([`judge`], checked on
    /// the stored task first and again inside the compare-and-swap). A large output is
    /// written to the artifact store only after the first check passed, so a refused
    /// result stores nothing; one written for a task that then went another way is
    /// collected by the next sweep.
    pub async fn finish(
        self: &Arc<Self>,
        name: &str,
        outcome: Outcome,
        by: Reporter<'_>,
    ) -> Result<(), Refusal> {
        let status = match self.fetch(name).await {
            Ok(Some((_, status, _))) => status,
            Ok(None) => return Err(Refusal::UnknownTask),
            Err(e) => {
                tracing::warn!(task = %name, error = %e, "could not read the task to finish it");
                return Err(Refusal::UnknownTask);
            }
        };
        judge(&status, by)?;
        let bytes = outcome
            .output
            .as_ref()
            .map(|v| serde_json::to_vec(v).unwrap_or_default());
        let large = bytes.as_ref().is_some_and(|b| b.len() > MAX_INLINE_RESULT);
        let writing = if large {
            Some(self.result_files.read().await)
        } else {
            None
        };
        let (result, result_url, result_bytes) = match (&outcome.output, bytes) {
            (Some(_), Some(bytes)) if large => {
                let len = bytes.len() as u64;
                let store = self.artifacts.clone();
                match tokio::task::spawn_blocking(move || store.put_result(&bytes)).await {
                    Ok(Ok(sha)) => {
                        if let Ok(mut f) = self.fresh_results.lock() {
                            f.insert(sha.clone());
                        }
                        (None, Some(format!("{RESULT_URL_PREFIX}{sha}")), Some(len))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(task = %name, error = %e, "could not store a large result");
                        (None, None, Some(len))
                    }
                    Err(e) => {
                        tracing::warn!(task = %name, error = %e, "could not store a large result");
                        (None, None, Some(len))
                    }
                }
            }
            (Some(v), Some(bytes)) => (Some(v.clone()), None, Some(bytes.len() as u64)),
            _ => (None, None, None),
        };
        let refused: Mutex<Option<Refusal>> = Mutex::new(None);
        let st = self
            .update(name, |st, cur| {
                if let Err(why) = judge(st, by) {
                    if let Ok(mut r) = refused.lock() {
                        *r = Some(why);
                    }
                    return false;
                }
                st.phase = if outcome.ok {
                    Phase::Succeeded
                } else if outcome.reason.as_deref() == Some("TimedOut") {
                    Phase::TimedOut
                } else {
                    Phase::Failed
                };
                st.started_at_ms.get_or_insert(outcome.started_at_ms);
                st.finished_at_ms = Some(outcome.finished_at_ms);
                st.result = result.clone();
                st.result_url = result_url.clone();
                st.result_bytes = result_bytes;
                st.error = outcome.error.clone();
                st.reason = outcome.reason.clone();
                st.message = None;
                if cur.spec["callbackUrl"].is_string() {
                    st.callback = Some(CallbackStatus {
                        next_attempt_ms: Some(outcome.finished_at_ms),
                        ..Default::default()
                    });
                }
                true
            })
            .await;
        drop(writing);
        match st {
            Some(st) => {
                self.settled(name, &st).await;
                Ok(())
            }
            None => Err(refused
                .into_inner()
                .ok()
                .flatten()
                .unwrap_or(Refusal::UnknownTask)),
        }
    }

    /// A task reached a final phase: wake waiters, the parent, the callback.
    async fn settled(self: &Arc<Self>, name: &str, st: &TaskStatus) {
        if let Ok(mut w) = self.waiters.lock()
            && let Some(list) = w.remove(name)
        {
            for tx in list {
                let _ = tx.send(st.clone());
            }
        }
        if st.callback.is_some() {
            self.track(name, None);
        } else {
            self.untrack(name);
        }
        // Reconciled now: its callback, its retention; and its parent (no recursion
        // into `advance` here).
        self.wake(name);
        if let Some(parent) = &st.parent {
            self.wake(parent);
        }
    }

    /// A final task: its callback's next attempt (started here, delivered in the
    /// background), or else its deletion once its retention is over. When to look at
    /// it again.
    async fn after_final(
        self: &Arc<Self>,
        name: &str,
        spec: &TaskSpec,
        st: &TaskStatus,
        now: i64,
    ) -> Result<Option<i64>, ApiError> {
        let pending = st
            .callback
            .as_ref()
            .filter(|cb| cb.state == CallbackState::Pending)
            .and_then(|cb| spec.callback_url.clone().map(|url| (cb, url)));
        let Some((cb, url)) = pending else {
            self.untrack(name);
            return self.expire(name, st, now).await;
        };
        if let Some(t) = cb.next_attempt_ms.filter(|t| *t > now) {
            return Ok(Some(t));
        }
        if let Ok(mut d) = self.delivering.lock()
            && !d.insert(name.to_string())
        {
            // An attempt is under way: its end wakes the task.
            return Ok(None);
        }
        let attempt = cb.attempts + 1;
        let body = serde_json::to_vec(&json!({
            "taskId": name,
            "function": spec.function,
            "phase": st.phase,
            "node": st.node,
            "attempts": st.attempts,
            "result": st.result,
            "resultUrl": st.result_url,
            "error": st.error,
            "startedAtMs": st.started_at_ms,
            "finishedAtMs": st.finished_at_ms,
        }))
        .unwrap_or_default();
        let this = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            // `st` may be a snapshot read before the previous attempt was recorded and
            // its slot freed: the stored status decides, now that the slot is held.
            let current = matches!(
                this.fetch(&name).await,
                Ok(Some((_, s, _))) if s.callback.as_ref().is_some_and(|c| {
                    c.state == CallbackState::Pending && c.attempts + 1 == attempt
                })
            );
            if !current {
                if let Ok(mut d) = this.delivering.lock() {
                    d.remove(&name);
                }
                this.wake(&name);
                return;
            }
            let r = callbacks::deliver(&this.http, &url, &this.callback_key, &name, attempt, &body)
                .await;
            let now = now_ms();
            this.update(&name, |st, _| {
                let Some(cb) = st.callback.as_mut() else {
                    return false;
                };
                cb.attempts = attempt;
                match &r {
                    Ok(code) => {
                        cb.state = CallbackState::Delivered;
                        cb.last_status = Some(*code);
                        cb.last_error = None;
                        cb.next_attempt_ms = None;
                    }
                    Err((code, why)) => {
                        cb.last_status = *code;
                        cb.last_error = Some(why.clone());
                        if attempt >= callbacks::MAX_ATTEMPTS {
                            cb.state = CallbackState::DeadLettered;
                            cb.next_attempt_ms = None;
                        } else {
                            cb.next_attempt_ms =
                                Some(now + callbacks::backoff(attempt + 1).as_millis() as i64);
                        }
                    }
                }
                true
            })
            .await;
            match &r {
                Ok(_) => tracing::info!(task = %name, attempt, "callback delivered"),
                Err((_, why)) => {
                    tracing::info!(task = %name, attempt, %why, "callback attempt failed")
                }
            }
            if let Ok(mut d) = this.delivering.lock() {
                d.remove(&name);
            }
            this.wake(&name);
        });
        Ok(None)
    }

    /// Deletes a final task once [`RETENTION_MS`] passed since it finished (a task
    /// without `finishedAtMs` is kept); otherwise when that is.
    async fn expire(&self, name: &str, st: &TaskStatus, now: i64) -> Result<Option<i64>, ApiError> {
        let Some(at) = retention_end(st) else {
            return Ok(None);
        };
        if now < at {
            return Ok(Some(at));
        }
        let key = object_key(Kind::Task, name);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        // Only the version judged: a task changed meanwhile is judged again.
        let cur = serde_json::from_slice::<Object>(&kv.value)
            .map(|o| TaskStatus::from_value(&o.status))
            .unwrap_or_default();
        if retention_end(&cur).is_some_and(|end| now >= end) && !needs_index(&cur) {
            match self
                .store
                .delete(&key, Expect::ModRevision(kv.mod_revision))
                .await
            {
                Ok(_) => tracing::debug!(task = %name, "finished task deleted after its retention"),
                Err(verge_store::Error::NotFound { .. } | verge_store::Error::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Deleted (its change ends it), or changed meanwhile (so is its change).
        Ok(None)
    }

    /// Whether node `node`'s result `r` may be taken, decided before anything of it
    /// is stored. A result for an existing task must pass [`judge`]. One for no task is
    /// taken only as a run of a trigger the node fires itself: `trigger_function` is
    /// that trigger's function when the node fires it (from the desired-state sync),
    /// and it must be the result's; the id must be a trigger run's; and the Task it
    /// creates counts against [`MAX_ACTIVE_TASKS`] and the node's
    /// [`TRIGGER_RUNS_PER_SEC`].
    pub async fn admit(
        &self,
        node: &str,
        r: &TaskResult,
        trigger_function: Option<&str>,
    ) -> Admission {
        let by = Reporter::Node {
            node,
            attempt: r.attempt,
        };
        match self.fetch(&r.id).await {
            Err(e) => {
                tracing::warn!(%node, task = %r.id, error = %e, "could not read the task of a result; the node will re-send it");
                Admission::Later
            }
            Ok(Some((_, status, _))) => match judge(&status, by) {
                Ok(()) => Admission::Take,
                Err(why) => Admission::Refuse(why),
            },
            Ok(None) => {
                let (Some(_), Some(function)) = (&r.trigger, &r.function) else {
                    return Admission::Refuse(Refusal::UnknownTask);
                };
                if !is_trigger_run_id(&r.id) || trigger_function != Some(function.as_str()) {
                    return Admission::Refuse(Refusal::TriggerNotPlaced);
                }
                if self.active.lock().map(|a| a.len()).unwrap_or(0) >= MAX_ACTIVE_TASKS {
                    return Admission::Later;
                }
                let now = now_ms();
                let allowed = self.trigger_runs.lock().is_ok_and(|mut m| {
                    m.entry(node.to_string())
                        .or_insert_with(|| Bucket::full(TRIGGER_RUNS_BURST, now))
                        .take(now, TRIGGER_RUNS_PER_SEC, TRIGGER_RUNS_BURST)
                });
                if allowed {
                    Admission::Take
                } else {
                    Admission::Later
                }
            }
        }
    }

    /// A node reported a result that [`Tasks::admit`] took: records a trigger run's
    /// Task the first time, then finishes the task (checked again).
    pub async fn on_result(self: &Arc<Self>, node: &str, r: &TaskResult) -> Result<(), Refusal> {
        let outcome = Outcome {
            ok: r.ok,
            output: r.output.clone(),
            error: r.error.clone(),
            reason: (!r.ok).then(|| {
                if r.error.as_deref().is_some_and(|e| e.starts_with("Timeout")) {
                    "TimedOut".to_string()
                } else {
                    "HandlerError".to_string()
                }
            }),
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
        };
        if let (Some(trigger), Some(function)) = (&r.trigger, &r.function)
            && is_trigger_run_id(&r.id)
            && self.read(&r.id).await.is_none()
        {
            // Started by a trigger on the node: recorded here once (the id is unique
            // per trigger, node and fire time).
            let spec = TaskSpec {
                function: function.clone(),
                input: None,
                target: Some(TaskTarget {
                    node: Some(node.to_string()),
                    node_selector: None,
                    fanout: None,
                }),
                callback_url: None,
                idempotency_key: None,
                timeout_seconds: None,
                max_attempts: None,
            };
            let labels =
                std::collections::BTreeMap::from([(LABEL_TRIGGER.to_string(), trigger.clone())]);
            match self
                .insert(&r.id, spec, labels, Some(trigger.clone()), None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(task = %r.id, error = %e.message, "could not record a triggered task");
                    return Err(Refusal::UnknownTask);
                }
            }
            let node_owned = node.to_string();
            self.update(&r.id, |st, _| {
                if st.node.is_some() {
                    return false;
                }
                st.phase = Phase::Dispatched;
                st.node = Some(node_owned.clone());
                st.attempts = 1;
                st.attempt_nodes = vec![node_owned.clone()];
                true
            })
            .await;
        }
        self.finish(
            &r.id,
            outcome,
            Reporter::Node {
                node,
                attempt: r.attempt,
            },
        )
        .await
    }

    /// Cancels an unfinished task (and its fan-out children). A node already running
    /// it finishes, and that result is ignored.
    pub async fn cancel(self: &Arc<Self>, name: &str) -> Result<TaskStatus, ApiError> {
        let Some((_, status, _)) = self.read(name).await else {
            return Err(ApiError::not_found(format!("task {name:?} not found")));
        };
        if status.phase.is_final() {
            return Err(ApiError::new(
                Reason::Conflict,
                format!("task {name:?} already finished ({})", status.phase.as_str()),
            ));
        }
        for c in &status.children {
            let _ = Box::pin(self.cancel(&c.name)).await;
        }
        let now = now_ms();
        let st = self
            .update(name, |st, _| {
                if st.phase.is_final() {
                    return false;
                }
                st.phase = Phase::Cancelled;
                st.finished_at_ms = Some(now);
                st.reason = Some("Cancelled".into());
                true
            })
            .await
            .ok_or_else(|| {
                ApiError::new(Reason::Conflict, format!("task {name:?} already finished"))
            })?;
        self.settled(name, &st).await;
        Ok(st)
    }

    /// Waits until task `name` is final (at most `timeout`); its status then.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Option<TaskStatus> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.entry(name.to_string()).or_default().push(tx);
        }
        if let Some((_, st, _)) = self.read(name).await
            && st.phase.is_final()
        {
            return Some(st);
        }
        let r = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if r.is_none()
            && let Ok(mut w) = self.waiters.lock()
            && let Some(list) = w.get_mut(name)
        {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                w.remove(name);
            }
        }
        r
    }

    /// Removes the large-result files no task refers to (result files a crash or a
    /// deleted task left behind included: the first pass runs right after start-up).
    /// Reads the Task cache; files written since the previous pass are kept this time.
    async fn sweep(&self) {
        // Exclusive: no result file is being written and referenced meanwhile.
        let _sweeping = self.result_files.write().await;
        let mut referenced: HashSet<String> = self
            .fresh_results
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        for o in self.tasks.list() {
            if let Some(sha) = TaskStatus::from_value(&o.status)
                .result_url
                .as_deref()
                .and_then(|u| u.strip_prefix(RESULT_URL_PREFIX))
            {
                referenced.insert(sha.to_string());
            }
        }
        let store = self.artifacts.clone();
        let swept = tokio::task::spawn_blocking(move || -> crate::Result<usize> {
            let mut removed = 0;
            for f in store.result_digests()? {
                if !referenced.contains(&f.sha256) {
                    store.remove_result(&f.sha256)?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(files = n, "removed result files no task refers to"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not sweep result files"),
            Err(e) => tracing::warn!(error = %e, "could not sweep result files"),
        }
    }
}
