//! Functions on the node: the runtime's pools kept in step with the `Function`
//! objects in the local store, tasks the cloud dispatches, and cron triggers that fire
//! from the local store — with or without the cloud.
//!
//! - **Tasks** arrive on the `task` channel (QoS 1, so possibly more than once). Each
//!   is claimed in the local store by its idempotency key before it runs
//!   ([`LocalStore::claim_task`]), so a redelivery never runs it twice on this node.
//!   The result goes through the store-and-forward queue with the next sequence
//!   number; the cloud drops duplicates by `seq`.
//! - **Triggers** fire on the node's clock. The fire time is persisted
//!   ([`LocalStore::set_last_fire`]) before the task starts, so a restart neither
//!   fires twice nor forgets: missed fire times follow the trigger's `missedPolicy`.
//!   The task id is derived from node, trigger and fire time, and the result carries
//!   the trigger and function names so the cloud records the run as a Task.
//! - **Output** each invocation printed is shipped as log lines from
//!   `fn/{name}/invocations` (`verge logs fn/NAME`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;
use tokio::sync::mpsc;
use verge_api::Object;
use verge_api::specs::{FunctionSpec, Schedule, TriggerSpec};
use verge_proto::{Channel, LogLine, LogStream, Message, Task, TaskResult};
use verge_runtime::{Input, Runtime, Source};

use crate::artifact::Fetcher;
use crate::error::Result;
use crate::secrets::{NodeSecrets, SECRET_KIND};
use crate::state::EdgeState;

const FUNCTION_KIND: &str = "Function";
const TRIGGER_KIND: &str = "Trigger";
/// Tasks waiting to start on this node; more are refused (the cloud re-sends).
pub const TASK_INBOX: usize = 1024;
/// Largest artifact of function code.
const MAX_CODE_ARTIFACT: u64 = 256 * 1024 * 1024;
/// Room left in the result channel's payload for the envelope.
const RESULT_ROOM: usize = 4096;

pub struct Functions {
    state: Arc<EdgeState>,
    runtime: Runtime,
    fetcher: Option<Fetcher>,
    root: PathBuf,
    inbox: mpsc::Receiver<Task>,
    /// name → version deployed.
    deployed: HashMap<String, String>,
}

fn truncated(mut s: String, max: usize) -> String {
    crate::workloads::truncate_utf8(&mut s, max);
    s
}

fn now_ms() -> i64 {
    crate::now_ms()
}

impl Functions {
    /// Sets up the runtime under `DATA_DIR/functions` (code artifacts from the cloud with
    /// the node's certificate, `artifact.url`s through `outbound`), and installs it and
    /// the task inbox in `state`.
    pub fn for_node(
        state: Arc<EdgeState>,
        identity: &crate::Identity,
        builtins: Arc<verge_runtime::Registry>,
        outbound: verge_outbound::Client,
        sandbox: verge_runtime::SandboxConfig,
    ) -> Result<Functions> {
        let root = identity.data_dir.join("functions");
        let mut config = verge_runtime::RuntimeConfig::new(root.join("work"), builtins);
        config.sandbox = sandbox;
        if config.sandbox.cgroup_parent == verge_runtime::SandboxConfig::default().cgroup_parent {
            config.sandbox.cgroup_parent = format!("verge-fn-{}", identity.name);
        }
        config.sandbox.hide.push(identity.data_dir.clone());
        let runtime = Runtime::new(config);
        let fetcher = Some(Fetcher::new(identity, outbound)?);
        Ok(Self::new(state, runtime, fetcher, root))
    }

    pub fn new(
        state: Arc<EdgeState>,
        runtime: Runtime,
        fetcher: Option<Fetcher>,
        root: PathBuf,
    ) -> Functions {
        let (tx, inbox) = mpsc::channel(TASK_INBOX);
        state.set_functions(runtime.clone(), tx);
        Functions {
            state,
            runtime,
            fetcher,
            root,
            inbox,
            deployed: HashMap::new(),
        }
    }

    /// Runs until `stop`; then stops every worker.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let sandbox = self.runtime.sandbox_status().await;
        if !sandbox.is_enforced() {
            tracing::warn!(state = %sandbox.state, reason = ?sandbox.reason, "python3/node functions are not sandboxed on this node");
        }
        self.state.set_sandbox(sandbox);
        self.reconcile().await;
        while !*stop.borrow() {
            let tick = 1000 - now_ms().rem_euclid(1000) + 5;
            tokio::select! {
                _ = self.state.functions_desired_changed() => self.reconcile().await,
                Some(task) = self.inbox.recv() => {
                    let state = self.state.clone();
                    let runtime = self.runtime.clone();
                    tokio::spawn(async move { run_task(&state, &runtime, task, None).await });
                }
                _ = tokio::time::sleep(Duration::from_millis(tick as u64)) => self.fire_triggers().await,
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        self.runtime.shutdown().await;
    }

    fn objects(&self, kind: &str) -> Vec<Object> {
        match self.state.store().list(kind) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(kind, error = %e, "cannot read the local store");
                Vec::new()
            }
        }
    }

    /// Deploys new or changed functions, removes deleted ones. A Function whose
    /// `secretEnv` names a Secret or key that is not here is not deployed (and one
    /// deployed before is removed): it never runs with an empty value.
    async fn reconcile(&mut self) {
        let objects = self.objects(FUNCTION_KIND);
        let secrets = NodeSecrets::from_objects(&self.objects(SECRET_KIND));
        let mut wanted = Vec::new();
        for o in objects {
            let name = o.metadata.name.clone();
            wanted.push(name.clone());
            let Ok(mut spec) = serde_json::from_value::<FunctionSpec>(o.spec.clone()) else {
                continue;
            };
            let resolved = secrets.resolve(&spec.secret_uses());
            // The Secrets' versions are part of the version: a changed one redeploys.
            let mut version = o.metadata.resource_version.clone().unwrap_or_default();
            if let Ok(r) = &resolved
                && !r.fingerprint.is_empty()
            {
                let digest = sha2::Sha256::digest(r.fingerprint.as_bytes());
                version = format!("{version}-s{}", &hex::encode(digest)[..12]);
            }
            if self.deployed.get(&name) == Some(&version) {
                continue;
            }
            let deployed = match resolved {
                Ok(r) => {
                    spec.env.extend(r.env);
                    self.deploy(&name, &version, &spec).await
                }
                Err(e) => {
                    self.runtime.remove(&name).await;
                    Err(format!("not deployed: {e}"))
                }
            };
            match deployed {
                Ok(()) => {
                    tracing::info!(function = %name, %version, "function deployed");
                    self.deployed.insert(name, version);
                }
                Err(message) => {
                    tracing::warn!(function = %name, %version, %message, "function not deployed");
                    crate::workloads::ship_logs(
                        &self.state,
                        &format!("fn/{name}/deploy"),
                        vec![LogLine {
                            ts_ms: now_ms(),
                            stream: LogStream::Stderr,
                            line: truncated(message.clone(), verge_proto::MAX_LOG_LINE),
                        }],
                    );
                    // Retried on the next change only; marked so it is not retried in a loop.
                    self.deployed.insert(name, version);
                }
            }
        }
        let gone: Vec<String> = self
            .deployed
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for name in gone {
            self.runtime.remove(&name).await;
            self.deployed.remove(&name);
            tracing::info!(function = %name, "function removed");
        }
    }

    async fn deploy(
        &self,
        name: &str,
        version: &str,
        spec: &FunctionSpec,
    ) -> std::result::Result<(), String> {
        let source = match (&spec.code, &spec.artifact) {
            (Some(code), _) => Source::Inline(code.clone()),
            (None, Some(artifact)) => {
                let dir = self.root.join("code").join(name).join(&artifact.sha256);
                crate::artifact::install(
                    self.fetcher.as_ref(),
                    artifact,
                    &self.root.join(".downloads"),
                    &dir,
                    MAX_CODE_ARTIFACT,
                )
                .await
                .map_err(|e| format!("installing the code: {e}"))?;
                Source::Dir(dir)
            }
            (None, None) => Source::None,
        };
        let def = verge_runtime::spec::def_from_spec(name, version, spec, source);
        self.runtime.deploy(def).await.map_err(|e| e.to_string())
    }

    /// Fires the triggers that are due (see the module docs).
    async fn fire_triggers(&self) {
        let now = now_ms();
        for o in self.objects(TRIGGER_KIND) {
            let name = o.metadata.name.clone();
            let Ok(spec) = serde_json::from_value::<TriggerSpec>(o.spec.clone()) else {
                continue;
            };
            // Object-event triggers are the cloud's (they are never synced to a node).
            let (Ok(schedule), Some(function)) = (Schedule::of(&spec), spec.function.clone())
            else {
                continue;
            };
            let store = self.state.store().clone();
            let last = match store.last_fire(&name) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(trigger = %name, error = %e, "cannot read the last fire time");
                    continue;
                }
            };
            let due = schedule.due(last, now, spec.missed_policy.as_ref());
            if Some(due.last) == last {
                continue;
            }
            // Persisted first: a crash after this never fires these times again.
            if let Err(e) = store.set_last_fire(&name, due.last) {
                tracing::warn!(trigger = %name, error = %e, "cannot persist the fire time; not firing");
                continue;
            }
            if due.skipped > 0 {
                tracing::info!(trigger = %name, skipped = due.skipped, "missed fire times skipped");
            }
            for at in due.fires {
                let digest = sha2::Sha256::digest(format!("{}/{name}/{at}", self.state.node()));
                let id = format!("tr-{}", &hex::encode(digest)[..16]);
                let task = Task {
                    id,
                    function: function.clone(),
                    input: spec.input.clone().unwrap_or(Value::Null),
                    deadline_ms: at + 3_600_000,
                    idempotency_key: None,
                    attempt: None,
                };
                tracing::info!(trigger = %name, task = %task.id, at, "trigger fired");
                let state = self.state.clone();
                let runtime = self.runtime.clone();
                let trigger = name.clone();
                tokio::spawn(async move { run_task(&state, &runtime, task, Some(trigger)).await });
            }
        }
    }
}

/// Runs one task at most once on this node and queues its result.
async fn run_task(state: &Arc<EdgeState>, runtime: &Runtime, task: Task, trigger: Option<String>) {
    let key = task
        .idempotency_key
        .clone()
        .unwrap_or_else(|| task.id.clone());
    let store = state.store().clone();
    let claim_key = key.clone();
    let claimed = tokio::task::spawn_blocking(move || store.claim_task(&claim_key, now_ms())).await;
    match claimed {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::info!(task = %task.id, %key, "task already started on this node; not run again");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(task = %task.id, error = %e, "cannot claim the task; not run (the cloud re-sends it)");
            return;
        }
        Err(_) => return,
    }
    let started = now_ms();
    let outcome = if started > task.deadline_ms {
        Err(format!(
            "Timeout: the task reached the node {} ms after its deadline",
            started - task.deadline_ms
        ))
    } else if !runtime.has(&task.function) {
        Err(format!(
            "function {:?} is not placed on node {}",
            task.function,
            state.node()
        ))
    } else {
        let budget = Duration::from_millis((task.deadline_ms - started).max(1) as u64);
        match tokio::time::timeout(
            budget,
            runtime.invoke(&task.function, Input::Json(task.input.clone())),
        )
        .await
        {
            Ok(Ok(inv)) => {
                ship_invocation_logs(state, &task, &inv.logs);
                Ok(inv.output.into_json())
            }
            Ok(Err(e)) => {
                ship_invocation_logs(state, &task, e.logs());
                Err(e.describe(verge_proto::MAX_TASK_ERROR))
            }
            Err(_) => Err(format!(
                "Timeout: no result before the task's deadline ({} ms)",
                budget.as_millis()
            )),
        }
    };
    let finished = now_ms().max(started);
    let mut result = TaskResult {
        id: task.id.clone(),
        ok: outcome.is_ok(),
        started_at_ms: started,
        finished_at_ms: finished,
        function: trigger.as_ref().map(|_| task.function.clone()),
        trigger,
        // Echoed so the cloud can tell which of its attempts this answers.
        attempt: task.attempt,
        ..Default::default()
    };
    match outcome {
        Ok(v) => result.output = Some(v),
        Err(e) => result.error = Some(e),
    }
    let size = serde_json::to_vec(&result).map(|b| b.len()).unwrap_or(0);
    if size + RESULT_ROOM > verge_proto::topics::MAX_RESULT_PAYLOAD {
        result.ok = false;
        result.output = None;
        result.error = Some(format!(
            "the output is {size} bytes; results sent by nodes are limited to {} bytes",
            verge_proto::topics::MAX_RESULT_PAYLOAD - RESULT_ROOM
        ));
    }
    let state2 = state.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        state2.queue().push_with(Channel::Result, now_ms(), |seq| {
            let mut r = result;
            r.seq = seq;
            verge_proto::encode(&Message::TaskResult(r))
        })
    })
    .await;
    match pushed {
        Ok(Ok(seq)) => {
            state.notify_queued();
            tracing::debug!(task = %task.id, seq, "task result queued");
        }
        Ok(Err(e)) => {
            tracing::warn!(task = %task.id, error = %e, "could not queue the task result")
        }
        Err(_) => {}
    }
}

fn ship_invocation_logs(state: &EdgeState, task: &Task, logs: &str) {
    if logs.is_empty() {
        return;
    }
    let ts = now_ms();
    let lines = logs
        .lines()
        .take(verge_proto::MAX_LOG_LINES)
        .map(|l| LogLine {
            ts_ms: ts,
            stream: LogStream::Stdout,
            line: truncated(format!("[{}] {l}", task.id), verge_proto::MAX_LOG_LINE),
        })
        .collect();
    crate::workloads::ship_logs(state, &format!("fn/{}/invocations", task.function), lines);
}
