//! Functions in the control plane:
//! - [`FunctionHost`]: the cloud's function runtime (`verge-runtime`), its python3/node
//!   workers sandboxed (decision 011). Cloud-placed functions are loaded and run here,
//!   so a syntax error or a missing handler fails the deploy with the interpreter's own
//!   message in the Function's status; the code of edge-placed functions is only
//!   compiled (in the same sandbox), never run: the cloud never executes code placed
//!   on edge nodes;
//! - [`FunctionController`]: keeps the host in step with the `Function` objects and
//!   writes their status (a `secretEnv` reference to a missing Secret or key fails
//!   it, naming both; a change of a referenced Secret checks it again);
//! - [`tasks`]: the Task controller (placement, dispatch to nodes, results,
//!   callbacks); [`triggers`]: cron triggers the cloud fires.

pub mod callbacks;
pub mod task_state;
pub mod tasks;
pub mod triggers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use verge_api::specs::FunctionSpec;
use verge_api::{Kind, Object, Reason};
use verge_runtime::{Error as RtError, Input, Runtime, Source};
use verge_store::DynStore;

use crate::objects::{kind_prefix, modify, object_key};

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

/// Keeps the [`FunctionHost`] in step with the Function objects: each new version is
/// loaded once (its status then says `Ready`, or `Failed` with the interpreter's
/// message); cloud-placed ones stay loaded, the others are unloaded after the check.
pub struct FunctionController {
    store: DynStore,
    host: Arc<FunctionHost>,
    /// name → version checked.
    checked: Mutex<HashMap<String, String>>,
}

impl FunctionController {
    pub fn new(store: DynStore, host: Arc<FunctionHost>) -> Self {
        Self {
            store,
            host,
            checked: Mutex::new(HashMap::new()),
        }
    }

    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "function controller pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => {
                    self.host.runtime.shutdown().await;
                    return;
                }
            }
        }
    }

    async fn pass(&self) -> crate::Result<()> {
        let list = self.store.list(&kind_prefix(Kind::Function), None).await?;
        let mut seen = Vec::new();
        // Revisions of the Secrets, read once a pass and only when referenced.
        let mut secret_revs: Option<BTreeMap<String, i64>> = None;
        for kv in &list.items {
            let Ok(o) = serde_json::from_slice::<Object>(&kv.value) else {
                continue;
            };
            let name = o.metadata.name.clone();
            seen.push(name.clone());
            let Ok(spec) = serde_json::from_value::<FunctionSpec>(o.spec.clone()) else {
                continue;
            };
            // A change of a referenced Secret (or its arrival) is a new version to check.
            let mut version = version_of(&o);
            for u in spec.secret_uses() {
                if secret_revs.is_none() {
                    let prefix = kind_prefix(Kind::Secret);
                    let secrets = self.store.list(&prefix, None).await?;
                    secret_revs = Some(
                        secrets
                            .items
                            .iter()
                            .filter_map(|kv| {
                                Some((kv.key.strip_prefix(&prefix)?.to_string(), kv.mod_revision))
                            })
                            .collect(),
                    );
                }
                let rev = secret_revs.as_ref().and_then(|r| r.get(&u.secret.name));
                version.push_str(&format!(";{}@{}", u.secret.name, rev.unwrap_or(&0)));
            }
            let done = self
                .checked
                .lock()
                .is_ok_and(|c| c.get(&name) == Some(&version));
            if done && o.status["observedGeneration"] == json!(o.metadata.generation) {
                continue;
            }
            let checked = if spec.in_cloud() {
                self.host.deploy(&o, &spec).await
            } else {
                // Code placed on edge nodes never runs in the cloud.
                self.host.remove(&name).await;
                self.host.check(&o, &spec).await
            };
            let (phase, message) = match checked {
                Ok(()) if spec.in_cloud() => ("Ready", "loaded; runs in the cloud".to_string()),
                Ok(()) => (
                    "Ready",
                    "compiled (none of it run in the cloud); runs on edge nodes".to_string(),
                ),
                Err(RtError::Unavailable { message }) if !spec.in_cloud() => {
                    ("Ready", format!("not checked in the cloud: {message}"))
                }
                Err(e) => {
                    self.host.remove(&name).await;
                    ("Failed", e.to_string())
                }
            };
            tracing::info!(function = %name, %version, phase, "function checked");
            let status = json!({
                "observedGeneration": o.metadata.generation,
                "phase": phase,
                "message": message,
                "runtime": spec.runtime.as_str(),
                "placement": if spec.in_cloud() { "cloud" } else { "edge" },
            });
            let key = object_key(Kind::Function, &name);
            let generation = o.metadata.generation;
            let r = modify(&self.store, Kind::Function, &key, &name, None, |cur| {
                let mut next = cur.clone();
                if cur.metadata.generation == generation {
                    next.status = status.clone();
                }
                Ok(next)
            })
            .await;
            if let Err(e) = r
                && e.reason != Reason::NotFound
            {
                tracing::warn!(function = %name, error = %e.message, "function status update failed");
            }
            if let Ok(mut c) = self.checked.lock() {
                c.insert(name, version);
            }
        }
        let gone: Vec<String> = self
            .checked
            .lock()
            .map(|c| c.keys().filter(|k| !seen.contains(k)).cloned().collect())
            .unwrap_or_default();
        for name in gone {
            self.host.remove(&name).await;
            if let Ok(mut c) = self.checked.lock() {
                c.remove(&name);
            }
        }
        Ok(())
    }
}
