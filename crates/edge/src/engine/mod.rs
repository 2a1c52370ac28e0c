//! Workload engines: how one app instance is prepared, started, watched and stopped.
//!
//! An [`Engine`] owns the mechanics of one workload kind (a Docker container, a native
//! process). What to run and when to restart it is decided above it, by the
//! supervisor, the same way for every engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use verge_api::specs::{DockerWorkload, NativeWorkload};

use crate::error::Result;

#[cfg(feature = "docker")]
pub mod docker;
/// Without the cargo feature `docker`: every Docker workload fails with the reason.
#[cfg(not(feature = "docker"))]
#[path = "no_docker.rs"]
pub mod docker;
pub mod native;

/// One instance of an app on this node: `app` and the replica index (0-based).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub app: String,
    pub replica: u32,
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.app, self.replica)
    }
}

/// What the instance runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Docker(DockerWorkload),
    Native(NativeWorkload),
}

/// Resource limits, parsed from the App's `resources`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU in millicores (`500m` = 500).
    pub cpu_millis: Option<u64>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
}

/// Everything an engine needs to run one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub key: InstanceKey,
    /// This node's name (containers and processes are labelled with it).
    pub node: String,
    /// The app's semantic version.
    pub version: String,
    pub payload: Payload,
    pub limits: Limits,
    /// Registry credentials for Docker pulls, already resolved (`None`: anonymous).
    pub registry_auth: Option<RegistryCredentials>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i64>,
    /// Killed by the kernel's OOM killer (its memory limit).
    pub oom_killed: bool,
    /// One line for `lastError` ("exit code 1", "OOM-killed (limit 64Mi)", ...).
    pub message: String,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }
}

/// Current resource usage of an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU in millicores averaged since the previous sample.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// How limits are enforced for an instance, reported in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// No limits asked for.
    None,
    /// cgroup (v1 or v2) at these paths, or Docker's own.
    Cgroup(Vec<String>),
    /// cgroups could not be written; rlimits were set instead (reason).
    Rlimit(String),
}

/// An instance found running when the agent started (`adopt`).
#[derive(Debug)]
pub struct Adopted<H> {
    pub key: InstanceKey,
    pub version: String,
    pub handle: H,
}

/// One workload kind. Methods are async; none may block the runtime.
pub trait Engine: Send + Sync + 'static {
    /// Identifies one running instance (a container id, a process group).
    type Handle: Send + Sync + std::fmt::Debug + 'static;

    /// Makes the payload available: pull the image, or download, verify and unpack
    /// the artifact. Idempotent; cheap when already done.
    fn prepare(&self, spec: &InstanceSpec) -> impl Future<Output = Result<()>> + Send;

    /// Creates and starts a fresh instance, with limits applied.
    fn start(
        &self,
        spec: &InstanceSpec,
    ) -> impl Future<Output = Result<(Self::Handle, Enforcement)>> + Send;

    /// Resolves when the instance has exited (immediately if it already has).
    fn wait(&self, handle: &Self::Handle) -> impl Future<Output = Exit> + Send;

    /// Stops the instance (SIGTERM, then SIGKILL after `grace`) and removes what
    /// `start` created (the container; not the prepared payload).
    fn stop(
        &self,
        handle: &Self::Handle,
        grace: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Runs `command` inside the instance's environment (exec health probe); returns
    /// the exit code, or an error on timeout.
    fn exec(
        &self,
        handle: &Self::Handle,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Where the instance's own ports are reached, for `http` and `tcp` health probes:
    /// the node's loopback for a native process (it shares the node's network), the
    /// container's address on its network for a container (loopback only with the
    /// `host` network). An error says why there is no such address; the probe fails
    /// with it.
    fn probe_address(&self, _handle: &Self::Handle) -> impl Future<Output = Result<IpAddr>> + Send {
        async { Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)) }
    }

    /// Usage now, if known.
    fn usage(&self, handle: &Self::Handle) -> impl Future<Output = Option<Usage>> + Send;

    /// Instances of `node` still running from before an agent restart, so they are
    /// adopted rather than duplicated. Exited leftovers are removed.
    fn adopt(&self, node: &str) -> impl Future<Output = Result<Vec<Adopted<Self::Handle>>>> + Send;

    /// Periodic housekeeping while the instance runs (the native engine rotates its
    /// log files here).
    fn maintain(&self, _handle: &Self::Handle) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Output written since `cursor` (which it advances), at most
    /// [`MAX_LOG_BATCH`] lines, for shipping to the cloud.
    fn read_logs(
        &self,
        _handle: &Self::Handle,
        _cursor: &mut LogCursor,
    ) -> impl Future<Output = Vec<verge_proto::LogLine>> + Send {
        async { Vec::new() }
    }

    /// The last `lines` lines of the instance's output.
    fn logs(
        &self,
        handle: &Self::Handle,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
}

/// Where [`Engine::read_logs`] goes on from: byte offsets in the stdout and stderr files
/// (native), or the last shipped timestamp (Docker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCursor {
    pub offsets: [u64; 2],
    pub since_ms: i64,
}

/// Most lines one [`Engine::read_logs`] returns.
pub const MAX_LOG_BATCH: usize = 500;

/// A log line for the cloud, cut to the protocol's bound.
pub fn log_line(ts_ms: i64, stream: verge_proto::LogStream, text: &str) -> verge_proto::LogLine {
    let mut line = text.trim_end_matches(['\r', '\n']).to_string();
    if line.len() > verge_proto::messages::MAX_LOG_LINE {
        let mut end = verge_proto::messages::MAX_LOG_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    verge_proto::LogLine {
        ts_ms,
        stream,
        line,
    }
}

/// Labels put on everything an engine creates for an instance.
pub fn instance_labels(spec: &InstanceSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP.to_string(), spec.key.app.clone()),
        (LABEL_REPLICA.to_string(), spec.key.replica.to_string()),
        (LABEL_VERSION.to_string(), spec.version.clone()),
        (LABEL_NODE.to_string(), spec.node.clone()),
    ])
}

pub const LABEL_APP: &str = "io.verge.app";
pub const LABEL_REPLICA: &str = "io.verge.replica";
pub const LABEL_VERSION: &str = "io.verge.version";
pub const LABEL_NODE: &str = "io.verge.node";
