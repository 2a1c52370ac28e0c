//! One entry point that assembles and runs an edge node from a joined data dir: the
//! local store and queue (their lock first, so a second agent on the same dir stops
//! before touching anything), the data dir's modes, the local API, the uplink, the
//! workloads and the functions, all stopped by one shutdown signal and drained before
//! [`run_node`] returns. Used by `verge-edge run` and by `verge dev`'s embedded node,
//! so both assemble a node the same way.
//!
//! Must not parse flags, read environment variables, join a cluster or install
//! signal handlers: the callers do, and hand the results in as [`NodeOptions`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::AgentConfig;
use crate::functions::Functions;
use crate::workloads::Workloads;
use crate::{EdgeState, Error, Identity, LocalApi, LocalStore, Queue, QueueConfig, Result, paths};

/// What a builtin-registration hook can use: a function pack that fetches sources
/// (the image pack) does so with the node's certificate, under the node's outbound
/// policy, into its data dir.
pub struct BuiltinContext<'a> {
    pub identity: &'a Identity,
    pub data_dir: &'a Path,
    pub outbound: &'a verge_outbound::Client,
}

/// Registers a function pack's builtins beside the runtime's own (`echo`, `sleep`).
pub type BuiltinsHook =
    Box<dyn FnOnce(&mut verge_runtime::Registry, &BuiltinContext<'_>) -> Result<()> + Send>;

/// How to run a node. Build it with [`NodeOptions::new`] and set what differs.
pub struct NodeOptions {
    /// The joined data dir (`identity.json`, keys, `store.redb`, `queue.redb`,
    /// `edge.sock`).
    pub data_dir: PathBuf,
    /// Heartbeat, status and reconnect timing of the uplink.
    pub agent: AgentConfig,
    /// The client for requests made on a user's behalf (`artifact.url` downloads,
    /// image sources), with the node's outbound allow lists.
    pub outbound: verge_outbound::Client,
    /// The Docker engine's socket; `None`: `DOCKER_HOST`, else /var/run/docker.sock.
    pub docker_socket: Option<PathBuf>,
    /// Network mode for containers; `None`: Docker's.
    pub docker_network: Option<String>,
    /// How python3/node function workers are sandboxed.
    pub sandbox: verge_runtime::SandboxConfig,
    /// Extra builtins (a function pack); `None`: the runtime's own only.
    pub builtins: Option<BuiltinsHook>,
}

impl NodeOptions {
    /// Defaults for everything but the data dir and the outbound client: default
    /// uplink timing, Docker's defaults, the enforced sandbox, no function pack.
    pub fn new(data_dir: impl Into<PathBuf>, outbound: verge_outbound::Client) -> NodeOptions {
        NodeOptions {
            data_dir: data_dir.into(),
            agent: AgentConfig::default(),
            outbound,
            docker_socket: None,
            docker_network: None,
            sandbox: verge_runtime::SandboxConfig::default(),
            builtins: None,
        }
    }
}

/// What [`run_node`] reports once the node is up (local API bound, uplink, workloads
/// and functions started).
#[derive(Debug, Clone)]
pub struct NodeStarted {
    pub name: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// The store's applied revision at start (0 for a fresh node).
    pub applied_revision: i64,
}

/// The builtin registry of a node: the runtime's own, plus the hook's pack.
pub fn builtins(
    hook: Option<BuiltinsHook>,
    ctx: &BuiltinContext<'_>,
) -> Result<verge_runtime::Registry> {
    let mut registry = verge_runtime::Registry::with_defaults();
    if let Some(register) = hook {
        register(&mut registry, ctx)?;
    }
    Ok(registry)
}

/// Runs the node in `opts.data_dir` until `shutdown` resolves, then stops the local
/// API, the uplink, the workloads and the functions and waits for all of them.
/// `started` is called once, when everything is running. The uplink runs beside the
/// rest: the node keeps serving offline while it reconnects. An uplink that could not
/// start at all (no MQTT URL in the identity) is returned as the error after shutdown.
pub async fn run_node(
    opts: NodeOptions,
    started: impl FnOnce(&NodeStarted),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let NodeOptions {
        data_dir,
        agent,
        outbound,
        docker_socket,
        docker_network,
        sandbox,
        builtins: hook,
    } = opts;
    let identity = Identity::load(&data_dir)?;
    let dir = data_dir.clone();
    // The store's lock first: a second agent on this data dir stops here, touching
    // nothing.
    let (store, queue) = tokio::task::spawn_blocking(move || -> Result<_> {
        let store = LocalStore::open(&paths::store(&dir))?;
        let queue = Queue::open(&paths::queue(&dir), QueueConfig::default())?;
        Ok((store, queue))
    })
    .await
    .map_err(|e| Error::Task(format!("opening the local store: {e}")))??;
    crate::secure_data_dir(&data_dir)?;
    let state = Arc::new(EdgeState::new(identity.name.clone(), store, queue));
    let socket = paths::socket(&data_dir);
    let api = LocalApi::bind(&socket, state.clone())?;
    let info = NodeStarted {
        name: identity.name.clone(),
        data_dir: data_dir.clone(),
        socket: socket.clone(),
        applied_revision: state.store().applied_revision().unwrap_or(0),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_task = tokio::spawn(api.serve(stopped(stop_rx.clone())));
    let uplink = tokio::spawn(crate::agent::run(
        identity.clone(),
        state.clone(),
        agent,
        stopped(stop_rx.clone()),
    ));

    // Workloads (Docker and native apps from the local store) and functions (warm
    // pools, dispatched tasks, cron triggers), with or without the cloud.
    let parts = async {
        let workloads = Workloads::for_node(
            state.clone(),
            &identity,
            docker_socket.as_deref(),
            docker_network,
            outbound.clone(),
        )
        .await?;
        let ctx = BuiltinContext {
            identity: &identity,
            data_dir: &data_dir,
            outbound: &outbound,
        };
        let registry = builtins(hook, &ctx)?;
        let functions = Functions::for_node(
            state.clone(),
            &identity,
            Arc::new(registry),
            outbound.clone(),
            sandbox,
        )?;
        Ok::<_, Error>((workloads, functions))
    }
    .await;
    let (workloads, functions) = match parts {
        Ok(p) => p,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = api_task.await;
            let _ = uplink.await;
            return Err(e);
        }
    };
    let workloads_task = tokio::spawn(workloads.run(stop_rx.clone()));
    let functions_task = tokio::spawn(functions.run(stop_rx.clone()));
    started(&info);

    shutdown.await;
    tracing::info!(node = %info.name, "shutting down");
    let _ = stop_tx.send(true);
    let _ = workloads_task.await;
    let _ = functions_task.await;
    api_task
        .await
        .map_err(|e| Error::Task(format!("local API task: {e}")))??;
    uplink
        .await
        .map_err(|e| Error::Task(format!("uplink task: {e}")))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_default_to_the_enforced_sandbox_and_no_pack() {
        let outbound = crate::artifact::outbound_client(&[], &[]).unwrap();
        let o = NodeOptions::new("/tmp/x", outbound);
        assert_eq!(o.data_dir, PathBuf::from("/tmp/x"));
        assert!(o.builtins.is_none());
        assert!(o.docker_socket.is_none());
        assert_eq!(o.sandbox.mode, verge_runtime::SandboxMode::Enforce);
    }

    fn identity() -> Identity {
        Identity {
            name: "n1".into(),
            cloud: "https://cloud.example:8443".into(),
            mqtt_url: None,
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_pem: String::new(),
            cert_expires_at: String::new(),
            joined_at: String::new(),
            renewed_at: None,
            data_dir: PathBuf::from("/data/n1"),
        }
    }

    #[test]
    fn a_hook_adds_its_pack_beside_the_runtimes_builtins_and_sees_the_node() {
        let id = identity();
        let outbound = crate::artifact::outbound_client(&[], &[]).unwrap();
        let ctx = BuiltinContext {
            identity: &id,
            data_dir: &id.data_dir,
            outbound: &outbound,
        };
        let lean = builtins(None, &ctx).unwrap();
        assert_eq!(lean.names(), ["echo", "sleep"]);
        let hook: BuiltinsHook = Box::new(|r, ctx| {
            let who = format!("{}@{}", ctx.identity.name, ctx.data_dir.display());
            r.register("pack.whoami", move |_| {
                Ok(verge_runtime::Output::Json(who.clone().into()))
            });
            Ok(())
        });
        let packed = builtins(Some(hook), &ctx).unwrap();
        assert_eq!(packed.names(), ["echo", "pack.whoami", "sleep"]);
    }

    #[test]
    fn a_failing_hook_is_the_nodes_error_naming_the_builtins() {
        let id = identity();
        let outbound = crate::artifact::outbound_client(&[], &[]).unwrap();
        let ctx = BuiltinContext {
            identity: &id,
            data_dir: &id.data_dir,
            outbound: &outbound,
        };
        let hook: BuiltinsHook = Box::new(|_, _| Err(Error::Builtins("no codec".into())));
        let e = builtins(Some(hook), &ctx).unwrap_err();
        assert_eq!(e.to_string(), "builtin functions: no codec");
    }
}
