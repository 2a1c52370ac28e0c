//! Functions in the control plane:
//! - [`FunctionHost`]: the cloud's function runtime (`verge-runtime`), its python3/node
//!   workers sandboxed (decision 011). Cloud-placed functions are loaded and run here,
//!   so a syntax error or a missing handler fails the deploy with the interpreter's own
//!   message in the Function's status; the code of edge-placed functions is only
//!   compiled (in the same sandbox), never run: the cloud never executes code placed
//!   on edge nodes;
//! - [`FunctionController`]: keeps the host in step with the `Function` objects and
//!   writes their status ([`FunctionStatus`]; a `secretEnv` reference to a missing
//!   Secret or key fails it, naming both; a change of a referenced Secret checks it
//!   again), as a controller on the one runtime;
//! - [`tasks`]: the Task controller (placement, dispatch to nodes, results,
//!   callbacks, retention); [`triggers`]: cron triggers the cloud fires.

pub mod callbacks;
pub mod task_state;
pub mod tasks;
pub mod triggers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use verge_api::specs::FunctionSpec;
use verge_api::status::function::{FunctionPhase, FunctionPlacement, FunctionStatus};
use verge_api::{Kind, Object, Reason};
use verge_runtime::{Error as RtError, Input, Runtime, Source};
use verge_store::DynStore;

use crate::controller::{Action, Cache, Controller, Informers, Request, backoff_policy};
use crate::error::ApiError;
use crate::objects::{modify, object_key};

/// Unix ms now: the wall clock. Under test it is read off tokio's clock (anchored to
/// the wall clock at the test's first reading), so paused time drives the deadlines
/// the task controller computes from it.
pub(crate) fn now_ms() -> i64 {
    #[cfg(not(test))]
    {
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }
    #[cfg(test)]
    {
        thread_local! {
            static ANCHOR: (i64, tokio::time::Instant) = (
                (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
                tokio::time::Instant::now(),
            );
        }
        ANCHOR.with(|(wall, at)| {
            let now = tokio::time::Instant::now();
            match now.checked_duration_since(*at) {
                Some(d) => wall + d.as_millis() as i64,
                None => wall - at.duration_since(now).as_millis() as i64,
            }
        })
    }
}

/// Builtin functions the cloud offers (the binary fills the registry).
pub type Registry = verge_runtime::Registry;

/// What the HTTP API and the node manager hold of the function machinery.
pub struct Functions {
    pub host: Arc<FunctionHost>,
    pub tasks: Arc<tasks::Tasks>,
}

/// The cloud's runtime and how to build pool definitions from Function objects.
pub struct FunctionHost {
    runtime: Runtime,
    store: DynStore,
    /// Opens the values of the Secrets cloud-placed functions reference.
    secrets: Arc<crate::secrets::SecretBox>,
}

/// Version string of a Function object: changes with its uid or generation.
pub fn version_of(o: &Object) -> String {
    format!(
        "{}-{}",
        o.metadata.generation.unwrap_or(0),
        o.metadata
            .uid
            .as_deref()
            .map_or("", |u| &u[..u.len().min(8)])
    )
}

impl FunctionHost {
    pub fn new(
        store: DynStore,
        work_dir: PathBuf,
        builtins: Arc<Registry>,
        sandbox: verge_runtime::SandboxConfig,
        secrets: Arc<crate::secrets::SecretBox>,
    ) -> Arc<Self> {
        let mut config = verge_runtime::RuntimeConfig::new(work_dir, builtins);
        config.sandbox = sandbox;
        Arc::new(Self {
            runtime: Runtime::new(config),
            store,
            secrets,
        })
    }

    /// The `secretEnv` of `spec` resolved from the store: names → values for a
    /// cloud-placed function; for an edge-placed one only checked (its values go to
    /// its nodes, never into a worker here), so the map is empty.
    async fn secret_env(&self, spec: &FunctionSpec) -> Result<BTreeMap<String, String>, RtError> {
        let uses = spec.secret_uses();
        let mut data: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for u in &uses {
            if data.contains_key(&u.secret.name) {
                continue;
            }
            let key = object_key(Kind::Secret, &u.secret.name);
            let Some(kv) = self.store.get(&key).await.ok().flatten() else {
                continue;
            };
            let Ok(stored) = serde_json::from_slice::<Object>(&kv.value) else {
                continue;
            };
            let values = if spec.in_cloud() {
                let (values, errors) = self.secrets.open_data(&u.secret.name, &stored.spec);
                if let Some(e) = errors.first() {
                    return Err(RtError::Invalid {
                        message: format!("{}: {e}", u.field),
                    });
                }
                values
            } else {
                // Keys only: the sealed values are not needed to check a reference.
                stored.spec["data"]
                    .as_object()
                    .map(|m| m.keys().map(|k| (k.clone(), String::new())).collect())
                    .unwrap_or_default()
            };
            data.insert(u.secret.name.clone(), values);
        }
        let values = verge_api::specs::resolve(&uses, |name| data.get(name))
            .map_err(|message| RtError::Invalid { message })?;
        if !spec.in_cloud() {
            return Ok(BTreeMap::new());
        }
        Ok(uses
            .iter()
            .zip(values)
            .filter_map(|(u, v)| match &u.purpose {
                verge_api::specs::Purpose::Env(name) => Some((name.clone(), v.to_string())),
                _ => None,
            })
            .collect())
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads `o` into the runtime (replacing an older version). Artifact code is not
    /// fetched into the cloud: such functions are checked on the nodes.
    pub async fn deploy(&self, o: &Object, spec: &FunctionSpec) -> Result<(), RtError> {
        self.runtime.deploy(self.def(o, spec).await?).await
    }

    /// Compiles an edge-placed function's code in the sandbox without running any of
    /// it.
    pub async fn check(&self, o: &Object, spec: &FunctionSpec) -> Result<(), RtError> {
        self.runtime.check(self.def(o, spec).await?).await
    }

    /// The runtime's definition of `o`, with the values of its `secretEnv` for a
    /// cloud-placed function (an edge-placed one only has its references checked).
    async fn def(
        &self,
        o: &Object,
        spec: &FunctionSpec,
    ) -> Result<verge_runtime::FunctionDef, RtError> {
        let version = version_of(o);
        let secret_env = self.secret_env(spec).await?;
        let mut with_secrets;
        let spec = if secret_env.is_empty() {
            spec
        } else {
            with_secrets = spec.clone();
            with_secrets.env.extend(secret_env);
            &with_secrets
        };
        let source = match (&spec.code, &spec.artifact) {
            (Some(code), _) => Source::Inline(code.clone()),
            (None, Some(_)) => {
                return Err(RtError::Unavailable {
                    message: "code in an artifact runs on edge nodes only (placement.cloud \
                              needs inline code)"
                        .into(),
                });
            }
            (None, None) => Source::None,
        };
        Ok(verge_runtime::spec::def_from_spec(
            &o.metadata.name,
            &version,
            spec,
            source,
        ))
    }

    pub async fn remove(&self, name: &str) {
        self.runtime.remove(name).await;
    }

    /// Invokes a cloud-placed function, deploying it first if the controller has not
    /// yet.
    pub async fn invoke(
        &self,
        name: &str,
        input: Input,
    ) -> Result<verge_runtime::Invocation, RtError> {
        if !self.runtime.has(name) {
            let kv = self
                .store
                .get(&object_key(Kind::Function, name))
                .await
                .ok()
                .flatten()
                .ok_or_else(|| RtError::NotFound { name: name.into() })?;
            let o: Object = serde_json::from_slice(&kv.value).map_err(|e| RtError::Invalid {
                message: e.to_string(),
            })?;
            let spec: FunctionSpec =
                serde_json::from_value(o.spec.clone()).map_err(|e| RtError::Invalid {
                    message: e.to_string(),
                })?;
            if !spec.in_cloud() {
                return Err(RtError::NotFound { name: name.into() });
            }
            self.deploy(&o, &spec).await?;
        }
        self.runtime.invoke(name, input).await
    }
}

/// Keeps the [`FunctionHost`] in step with the Function objects, as a controller on
/// the one runtime ([`crate::controller`]), keyed by function name: each new version
/// is loaded once (its status then says `Ready`, or `Failed` with the interpreter's
/// message); cloud-placed ones stay loaded, the others are unloaded after the check.
///
/// A function is reconciled when it changes and when a Secret it references changes
/// (a new revision of a referenced Secret is a new version to check); a check that
/// failed for a reason of the cloud's own (an I/O error, a crashed worker) is retried
/// with the error policy's backoff. Nothing lists the functions on a timer.
pub struct FunctionController {
    store: DynStore,
    host: Arc<FunctionHost>,
    /// The Secrets informer: their revisions are part of a function's version.
    secrets: Arc<Cache>,
    /// name → version checked.
    checked: Mutex<HashMap<String, String>>,
}

/// The version a function was checked at: its own (generation and uid) and the
/// revision of each Secret it references (`0`: missing), given by `secret_rev`.
pub fn checked_version(
    o: &Object,
    spec: &FunctionSpec,
    secret_rev: impl Fn(&str) -> Option<String>,
) -> String {
    let mut version = version_of(o);
    for u in spec.secret_uses() {
        let rev = secret_rev(&u.secret.name).unwrap_or_else(|| "0".into());
        version.push_str(&format!(";{}@{rev}", u.secret.name));
    }
    version
}

/// The functions among `functions` whose spec references Secret `secret`.
pub fn secret_users(functions: &[Arc<Object>], secret: &str) -> Vec<String> {
    functions
        .iter()
        .filter(|o| {
            serde_json::from_value::<FunctionSpec>(o.spec.clone())
                .is_ok_and(|s| s.secret_uses().iter().any(|u| u.secret.name == secret))
        })
        .map(|o| o.metadata.name.clone())
        .collect()
}

/// What a check (or load) of a function's version comes to: the status to store,
/// and whether the failure was the cloud's own (retried with backoff) rather than
/// the function's (kept until the function or a Secret it uses changes).
pub fn checked_status(
    o: &Object,
    spec: &FunctionSpec,
    checked: &Result<(), RtError>,
) -> (FunctionStatus, bool) {
    let in_cloud = spec.in_cloud();
    let (phase, message, retry) = match checked {
        Ok(()) if in_cloud => (
            FunctionPhase::Ready,
            "loaded; runs in the cloud".to_string(),
            false,
        ),
        Ok(()) => (
            FunctionPhase::Ready,
            "compiled (none of it run in the cloud); runs on edge nodes".to_string(),
            false,
        ),
        Err(RtError::Unavailable { message }) if !in_cloud => (
            FunctionPhase::Ready,
            format!("not checked in the cloud: {message}"),
            false,
        ),
        Err(e) => (
            FunctionPhase::Failed,
            e.to_string(),
            matches!(
                e,
                RtError::Io { .. }
                    | RtError::WorkerCrashed { .. }
                    | RtError::Timeout { .. }
                    | RtError::QueueFull { .. }
            ),
        ),
    };
    let status = FunctionStatus {
        observed_generation: o.metadata.generation,
        phase,
        message,
        runtime: spec.runtime.as_str().to_string(),
        placement: if in_cloud {
            FunctionPlacement::Cloud
        } else {
            FunctionPlacement::Edge
        },
    };
    (status, retry)
}

impl FunctionController {
    pub fn new(store: DynStore, host: Arc<FunctionHost>, informers: &Informers) -> Self {
        Self {
            store,
            host,
            secrets: informers.cache(Kind::Secret),
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// Runs the controller until `shutdown` flips, then shuts the function runtime
    /// down (its workers stop).
    pub async fn run(
        self: Arc<Self>,
        informers: Arc<Informers>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let functions = informers.cache(Kind::Function);
        let host = self.host.clone();
        Controller::new("functions", informers)
            .for_kind(Kind::Function)
            .watches(Kind::Secret, move |change| {
                secret_users(&functions.list(), &change.name)
            })
            .concurrency(2)
            .run(
                |req: Request, this: Arc<Self>| async move { this.reconcile(req).await },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
        host.runtime.shutdown().await;
    }

    fn forget(&self, name: &str) {
        if let Ok(mut c) = self.checked.lock() {
            c.remove(name);
        }
    }

    async fn reconcile(&self, req: Request) -> Result<Action, ApiError> {
        let name = req.key;
        let Some(o) = req.object else {
            self.host.remove(&name).await;
            self.forget(&name);
            return Ok(Action::await_change());
        };
        let Ok(spec) = serde_json::from_value::<FunctionSpec>(o.spec.clone()) else {
            return Ok(Action::await_change());
        };
        let version = checked_version(&o, &spec, |s| {
            self.secrets
                .get(s)
                .and_then(|x| x.metadata.resource_version.clone())
        });
        let stored: FunctionStatus = serde_json::from_value(o.status.clone()).unwrap_or_default();
        let done = self
            .checked
            .lock()
            .is_ok_and(|c| c.get(&name) == Some(&version));
        if done && stored.observed_generation == o.metadata.generation {
            return Ok(Action::await_change());
        }
        let checked = if spec.in_cloud() {
            self.host.deploy(&o, &spec).await
        } else {
            // Code placed on edge nodes never runs in the cloud.
            self.host.remove(&name).await;
            self.host.check(&o, &spec).await
        };
        if checked.is_err() {
            self.host.remove(&name).await;
        }
        let (status, retry) = checked_status(&o, &spec, &checked);
        tracing::info!(function = %name, %version, phase = status.phase.as_str(), "function checked");
        let value = serde_json::to_value(&status).map_err(ApiError::internal)?;
        let key = object_key(Kind::Function, &name);
        let generation = o.metadata.generation;
        let r = modify(&self.store, Kind::Function, &key, &name, None, |cur| {
            let mut next = cur.clone();
            if cur.metadata.generation == generation {
                next.status = value.clone();
            }
            Ok(next)
        })
        .await;
        match r {
            Ok(_) => {}
            Err(e) if e.reason == Reason::NotFound => {
                self.host.remove(&name).await;
                self.forget(&name);
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
        if retry {
            self.forget(&name);
            return Err(ApiError::new(
                Reason::Unavailable,
                format!("function {name:?} could not be checked: {}", status.message),
            ));
        }
        if let Ok(mut c) = self.checked.lock() {
            c.insert(name, version);
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests;
