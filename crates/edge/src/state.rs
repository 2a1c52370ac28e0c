//! [`EdgeState`]: the node's live state, shared (`Arc`) between the uplink, which
//! updates it, and the local API, which reports it (`GET /v1/status`).
//!
//! What is on disk (applied revision, queue counters) is read from the store and the
//! queue when asked, so it is never stale; only what exists in memory alone (whether
//! the uplink is connected, when it last synced) lives here, in atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::sync::Notify;
use verge_proto::InstanceStatus;

use serde::Serialize;
use verge_proto::QueueStats;

use crate::error::Result;
use crate::queue::Queue;
use crate::store::LocalStore;

/// Shared live state of a running node.
#[derive(Debug)]
pub struct EdgeState {
    node: String,
    store: LocalStore,
    queue: Queue,
    connected: AtomicBool,
    /// Unix ms of the last desired-state sync; 0 = never.
    last_sync_ms: AtomicI64,
    /// App instances, as the workload manager last published them.
    apps: Mutex<Vec<InstanceStatus>>,
    /// Desired state was applied (wakes the workload manager).
    desired: Notify,
    /// The instances changed (wakes the uplink to report).
    apps_changed: Notify,
    /// Desired state was applied (wakes the function manager).
    functions_desired: Notify,
    /// Something urgent (a task result) was queued: wakes the uplink's flush.
    queued: Notify,
    /// The function runtime (for the local API's invoke), once functions run.
    runtime: OnceLock<verge_runtime::Runtime>,
    /// Where tasks the cloud dispatches go, once functions run.
    tasks: OnceLock<tokio::sync::mpsc::Sender<verge_proto::Task>>,
    /// Whether python3/node workers run sandboxed, once the function manager knows.
    sandbox: OnceLock<verge_runtime::SandboxStatus>,
    /// Why the uplink stopped for good (the cloud revoked this node), once it has.
    uplink_stopped: OnceLock<String>,
}

/// The body of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub node: String,
    pub applied_revision: i64,
    pub connected: bool,
    pub queue: QueueStats,
    /// Unix ms of the last sync with the cloud, `null` if none since start.
    pub last_sync: Option<i64>,
    /// Whether python3/node functions run sandboxed here (`null` until known).
    pub function_sandbox: Option<verge_runtime::SandboxStatus>,
    /// Why the uplink stopped for good (absent while it runs or retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink_stopped: Option<String>,
}

impl EdgeState {
    pub fn new(node: impl Into<String>, store: LocalStore, queue: Queue) -> Self {
        Self {
            node: node.into(),
            store,
            queue,
            connected: AtomicBool::new(false),
            last_sync_ms: AtomicI64::new(0),
            apps: Mutex::new(Vec::new()),
            desired: Notify::new(),
            apps_changed: Notify::new(),
            functions_desired: Notify::new(),
            queued: Notify::new(),
            runtime: OnceLock::new(),
            tasks: OnceLock::new(),
            sandbox: OnceLock::new(),
            uplink_stopped: OnceLock::new(),
        }
    }

    /// The uplink stopped for good: why (kept for `GET /v1/status`).
    pub fn set_uplink_stopped(&self, why: String) {
        let _ = self.uplink_stopped.set(why);
    }

    pub fn uplink_stopped(&self) -> Option<&str> {
        self.uplink_stopped.get().map(String::as_str)
    }

    /// Records (once) whether function workers run sandboxed on this node.
    pub fn set_sandbox(&self, status: verge_runtime::SandboxStatus) {
        let _ = self.sandbox.set(status);
    }

    pub fn sandbox(&self) -> Option<&verge_runtime::SandboxStatus> {
        self.sandbox.get()
    }

    /// Installs the function runtime and the task inbox (once).
    pub fn set_functions(
        &self,
        runtime: verge_runtime::Runtime,
        tasks: tokio::sync::mpsc::Sender<verge_proto::Task>,
    ) {
        let _ = self.runtime.set(runtime);
        let _ = self.tasks.set(tasks);
    }

    pub fn runtime(&self) -> Option<&verge_runtime::Runtime> {
        self.runtime.get()
    }

    /// Hands a dispatched task to the function manager; `false` if functions do not
    /// run on this node or its inbox is full (the cloud re-sends it).
    pub fn submit_task(&self, task: verge_proto::Task) -> bool {
        self.tasks.get().is_some_and(|tx| tx.try_send(task).is_ok())
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The uplink calls this on connect (`true`) and disconnect (`false`).
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The uplink calls this after applying (and acking) desired state.
    pub fn set_last_sync(&self, unix_ms: i64) {
        self.last_sync_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Unix ms of the last sync; `None` if none since start.
    pub fn last_sync(&self) -> Option<i64> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// The uplink applied new desired state.
    pub fn notify_desired(&self) {
        self.desired.notify_one();
        self.functions_desired.notify_one();
    }

    /// A task result was queued: the uplink sends it now rather than on its next
    /// flush tick.
    pub fn notify_queued(&self) {
        self.queued.notify_one();
    }

    /// Resolves after the next [`Self::notify_queued`].
    pub async fn queued(&self) {
        self.queued.notified().await
    }

    /// Like [`Self::desired_changed`], for the function manager (each listener has
    /// its own permit, so neither misses a change).
    pub async fn functions_desired_changed(&self) {
        self.functions_desired.notified().await
    }

    /// Resolves after the next [`Self::notify_desired`].
    pub async fn desired_changed(&self) {
        self.desired.notified().await
    }

    /// The workload manager publishes the instances; a change other than usage
    /// wakes the uplink (usage travels with the periodic status report).
    pub fn set_apps(&self, apps: Vec<InstanceStatus>) {
        if let Ok(mut cur) = self.apps.lock() {
            let significant = !verge_proto::same_but_usage(&cur, &apps);
            *cur = apps;
            if significant {
                self.apps_changed.notify_one();
            }
        }
    }

    /// The instances as last published.
    pub fn apps(&self) -> Vec<InstanceStatus> {
        self.apps.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Resolves after the instances change.
    pub async fn apps_changed(&self) {
        self.apps_changed.notified().await
    }

    /// The status report (reads the store and the queue: blocking, briefly).
    pub fn report(&self) -> Result<StatusReport> {
        Ok(StatusReport {
            node: self.node.clone(),
            applied_revision: self.store.applied_revision()?,
            connected: self.connected(),
            queue: self.queue.stats()?,
            last_sync: self.last_sync(),
            function_sandbox: self.sandbox().cloned(),
            uplink_stopped: self.uplink_stopped().map(str::to_string),
        })
    }
}
