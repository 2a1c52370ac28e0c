//! Node deletion as a controller with a finalizer (decision 028), on the one runtime
//! ([`crate::controller`]).
//!
//! `DELETE /api/v1/nodes/{name}` only sets `metadata.deletionTimestamp`. This
//! controller, keyed by Node and woken by every Node change, finishes the deletion of a
//! Node that has it, in this order, each step idempotent:
//! 1. **revoke** every certificate serial the node was issued (a record under
//!    `/system/revoked-certs/` each, written before anything is forgotten);
//! 2. **kick**: tell the transport (gateway or external broker) the serials and close
//!    the node's session;
//! 3. **forget** the node's records: in-memory runtime, sync, app reports and logs, the
//!    stored sync record and results, the certificate issue records;
//! 4. **finalize**: remove [`FINALIZER_NODE_CLEANUP`] and delete the Node with
//!    compare-and-swap on the revision the pass read (a renewal that added a serial
//!    meanwhile makes it fail, and the pass runs again and revokes that serial too).
//!
//! A crash anywhere leaves the Node with `deletionTimestamp` set: after a restart the
//! informer lists it and the remaining steps run (the revocation records are in the
//! store, so the old certificate is refused from the first connection). A Node that
//! was created before the finalizer existed is deleted the same way (the handler sets
//! `deletionTimestamp` on every Node). [`plan`] is the pure rule (what is left given
//! what is observed); the reconcile only reads and performs its steps.
//!
//! Fault injection for the crash test: `VERGE_TEST_CRASH_AT=node-delete:revoked`
//! (`:kicked`, `:forgotten`) makes this controller abort the process right after that
//! step ([`CrashPoint`]). Nothing else reads it.
//!
//! Must not import `http/`; reads Nodes from the store, not the cache, before writing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use verge_api::names::FINALIZER_NODE_CLEANUP;
use verge_api::{Kind, Object};
use verge_store::{DynStore, EventKind, Expect, Revision};

use super::{NodeManager, certs};
use crate::controller::{Action, Controller, Informers, Request, backoff_policy};
use crate::error::ApiError;
use crate::gateway::DynDownlink;
use crate::objects::{kv_to_object, modify, object_key};

/// The environment variable naming a [`CrashPoint`] (tests only).
pub const CRASH_ENV: &str = "VERGE_TEST_CRASH_AT";

/// Where the crash test makes the cloud abort: right after this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    Revoked,
    Kicked,
    Forgotten,
}

impl CrashPoint {
    /// Parses `node-delete:revoked|kicked|forgotten`; `Ok(None)` for values meant for
    /// something else (another prefix) or unset.
    pub fn parse(value: Option<&str>) -> Result<Option<CrashPoint>, String> {
        let Some(point) = value.and_then(|v| v.strip_prefix("node-delete:")) else {
            return Ok(None);
        };
        match point {
            "revoked" => Ok(Some(CrashPoint::Revoked)),
            "kicked" => Ok(Some(CrashPoint::Kicked)),
            "forgotten" => Ok(Some(CrashPoint::Forgotten)),
            other => Err(format!(
                "{CRASH_ENV}: unknown point node-delete:{other:?}; known: node-delete:revoked, \
                 node-delete:kicked, node-delete:forgotten"
            )),
        }
    }

    pub fn from_env() -> Result<Option<CrashPoint>, String> {
        Self::parse(std::env::var(CRASH_ENV).ok().as_deref())
    }
}

/// What one pass observed of a Node being deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Every serial issued to the node (annotations and issue records).
    pub serials: Vec<String>,
    /// Those of them with a revocation record.
    pub revoked: Vec<String>,
    /// Serials this process told the transport about (in memory: redone after a
    /// restart, when the transport starts from the stored revocations anyway).
    pub kicked: Vec<String>,
    /// This process closed the node's session.
    pub closed: bool,
    /// This process forgot the node's records.
    pub forgotten: bool,
    /// Issue records still stored.
    pub issue_records: Vec<String>,
    /// Finalizers on the Node other than [`FINALIZER_NODE_CLEANUP`].
    pub other_finalizers: usize,
    /// [`FINALIZER_NODE_CLEANUP`] is on the Node.
    pub has_finalizer: bool,
}

/// One step left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write revocation records for these serials.
    Revoke(Vec<String>),
    /// Tell the transport these serials are revoked and close the session.
    Kick(Vec<String>),
    /// Forget the node's records (memory, sync record, results, issue records).
    Forget,
    /// Remove [`FINALIZER_NODE_CLEANUP`]; other finalizers keep the Node.
    RemoveFinalizer,
    /// Delete the Node (compare-and-swap on the revision read).
    Delete,
}

/// The pure rule: the steps left, in order. Empty when the Node is not being deleted,
/// or when only other finalizers hold it.
pub fn plan(o: &Observed) -> Vec<Step> {
    if !o.deleting {
        return Vec::new();
    }
    let mut steps = Vec::new();
    let unrevoked: Vec<String> = o
        .serials
        .iter()
        .filter(|s| !o.revoked.contains(s))
        .cloned()
        .collect();
    if !unrevoked.is_empty() {
        steps.push(Step::Revoke(unrevoked));
    }
    if !o.closed || o.serials.iter().any(|s| !o.kicked.contains(s)) {
        steps.push(Step::Kick(o.serials.clone()));
    }
    if !o.forgotten || !o.issue_records.is_empty() {
        steps.push(Step::Forget);
    }
    if o.other_finalizers > 0 {
        if o.has_finalizer {
            steps.push(Step::RemoveFinalizer);
        }
    } else {
        steps.push(Step::Delete);
    }
    steps
}

/// What this process did for a node being deleted (keyed by name; the uid tells a
/// node of the same name joined later apart).
#[derive(Debug, Clone, Default)]
struct Progress {
    uid: String,
    kicked: Vec<String>,
    closed: bool,
    forgotten: bool,
}

pub struct NodeDeletion {
    store: DynStore,
    nodes: Arc<NodeManager>,
    gateway: Option<DynDownlink>,
    progress: Mutex<HashMap<String, Progress>>,
    crash_at: Option<CrashPoint>,
}

impl NodeDeletion {
    pub fn new(
        store: DynStore,
        nodes: Arc<NodeManager>,
        gateway: Option<DynDownlink>,
        crash_at: Option<CrashPoint>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            nodes,
            gateway,
            progress: Mutex::new(HashMap::new()),
            crash_at,
        })
    }

    /// Runs the controller until `shutdown` flips: keyed by Node name, woken by every
    /// Node change (a Node without `deletionTimestamp` costs a cache lookup).
    pub async fn run(
        self: Arc<Self>,
        informers: Arc<Informers>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        Controller::new("node-deletion", informers)
            .for_kind(Kind::Node)
            .concurrency(4)
            .run(
                |req: Request, this: Arc<Self>| async move { this.reconcile(req).await },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
    }

    /// One pass over one Node.
    pub async fn reconcile(&self, req: Request) -> Result<Action, ApiError> {
        let name = req.key.clone();
        if !req
            .object
            .as_ref()
            .is_some_and(|o| o.metadata.is_deleting())
        {
            if req.object.is_none()
                && let Ok(mut p) = self.progress.lock()
            {
                p.remove(&name);
            }
            return Ok(Action::await_change());
        }
        // Read from the store: the cache may lag behind this controller's own writes.
        let key = object_key(Kind::Node, &name);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(Action::await_change());
        };
        let node = kv_to_object(&kv)?;
        if !node.metadata.is_deleting() {
            return Ok(Action::await_change());
        }
        let uid = node.metadata.uid.clone().unwrap_or_default();
        let progress = self.progress_of(&name, &uid);
        let serials = certs::node_serials(&self.store, &node).await?;
        let observed = Observed {
            deleting: true,
            revoked: certs::revoked_among(&self.store, &serials).await?,
            issue_records: certs::issue_records(&self.store, &name).await?,
            serials,
            kicked: progress.kicked,
            closed: progress.closed,
            forgotten: progress.forgotten,
            other_finalizers: node
                .metadata
                .finalizers
                .iter()
                .filter(|f| *f != FINALIZER_NODE_CLEANUP)
                .count(),
            has_finalizer: node.metadata.has_finalizer(FINALIZER_NODE_CLEANUP),
        };
        for step in plan(&observed) {
            self.perform(&node, kv.mod_revision, &observed, &step)
                .await?;
        }
        Ok(Action::await_change())
    }

    async fn perform(
        &self,
        node: &Object,
        revision: Revision,
        observed: &Observed,
        step: &Step,
    ) -> Result<(), ApiError> {
        let name = &node.metadata.name;
        match step {
            Step::Revoke(serials) => {
                let expiries = certs::node_cert_expiries(&self.store, name).await?;
                certs::revoke_serials(&self.store, name, serials, &expiries).await?;
                self.crash_point(CrashPoint::Revoked, name);
            }
            Step::Kick(serials) => {
                if let Some(gw) = &self.gateway {
                    for serial in serials {
                        gw.revoke_serial(serial);
                    }
                    gw.kick(name);
                }
                self.mark(name, node, |p| {
                    p.kicked = serials.clone();
                    p.closed = true;
                });
                self.crash_point(CrashPoint::Kicked, name);
            }
            Step::Forget => {
                self.nodes.forget(name);
                self.nodes.sync.drop_record(name).await;
                self.nodes.apps.forget(name);
                self.nodes.logs.forget(name);
                self.nodes
                    .results
                    .forget(name)
                    .await
                    .map_err(|e| ApiError::internal(format!("deleting the node's results: {e}")))?;
                // Only serials this pass saw revoked (every one it saw, by now).
                let mut gone = observed.serials.clone();
                gone.extend(
                    observed
                        .issue_records
                        .iter()
                        .filter(|s| !observed.serials.contains(s))
                        .cloned(),
                );
                certs::forget_issue_records(&self.store, name, &gone).await?;
                self.mark(name, node, |p| p.forgotten = true);
                self.crash_point(CrashPoint::Forgotten, name);
            }
            Step::RemoveFinalizer => {
                let key = object_key(Kind::Node, name);
                modify(&self.store, Kind::Node, &key, name, Some(revision), |cur| {
                    let mut next = cur.clone();
                    next.metadata
                        .finalizers
                        .retain(|f| f != FINALIZER_NODE_CLEANUP);
                    Ok(next)
                })
                .await?;
            }
            Step::Delete => {
                let key = object_key(Kind::Node, name);
                match self.store.delete(&key, Expect::ModRevision(revision)).await {
                    Ok(_) | Err(verge_store::Error::NotFound { .. }) => {
                        tracing::info!(node = %name, "node deleted");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn progress_of(&self, name: &str, uid: &str) -> Progress {
        let Ok(mut p) = self.progress.lock() else {
            return Progress::default();
        };
        let entry = p.entry(name.to_string()).or_default();
        if entry.uid != uid {
            *entry = Progress {
                uid: uid.to_string(),
                ..Progress::default()
            };
        }
        entry.clone()
    }

    fn mark(&self, name: &str, node: &Object, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            let entry = p.entry(name.to_string()).or_default();
            entry.uid = node.metadata.uid.clone().unwrap_or_default();
            f(entry);
        }
    }

    fn crash_point(&self, point: CrashPoint, node: &str) {
        if self.crash_at == Some(point) {
            tracing::error!(%node, ?point, "{CRASH_ENV}: aborting the process (crash test)");
            std::process::abort();
        }
    }
}

/// Waits (at most `timeout`) until the Node `name` is gone, watching its key from
/// `after`. `true` once it is gone.
pub async fn wait_gone(
    store: &DynStore,
    name: &str,
    after: Revision,
    timeout: Duration,
) -> Result<bool, ApiError> {
    let key = object_key(Kind::Node, name);
    let watched = async {
        let mut stream = match store.watch(&key, after).await {
            Ok(s) => s,
            // Compacted past `after` (or a store error): the get below decides.
            Err(_) => return,
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) if ev.kv.key == key && ev.kind == EventKind::Delete => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, watched).await;
    Ok(store.get(&key).await?.is_none())
}

#[cfg(test)]
mod tests;
