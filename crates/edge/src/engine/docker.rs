//! The Docker engine: one container per app instance, driven through the daemon's API
//! ([bollard], API version negotiated at connect).
//!
//! - `prepare` pulls the image when it is not present locally (with the resolved
//!   registry credentials); a missing image and an unreachable registry are told apart.
//! - `start` creates `verge-{node}-{app}-{replica}-{rand}` with the instance labels, the
//!   workload's entrypoint/cmd/env/ports/binds, memory and CPU limits in its
//!   `HostConfig`, Docker's restart policy `no` (the supervisor restarts) and bounded
//!   `json-file` logs, then starts it.
//! - `probe_address` is where http/tcp health probes reach a container: its address on
//!   its network (from `inspect`), the node's loopback only with the `host` network
//!   mode (decision 019).
//! - `adopt` finds this node's containers after an agent restart: running ones are
//!   adopted (the newest per instance; duplicates are removed), exited ones removed.
//!
//! What can be decided without a daemon (the create body, label parsing, picking
//! duplicates, exit messages, pull-error classification, usage arithmetic) lives in
//! plain functions below, unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as ApiError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, ContainerSummaryStateEnum, HostConfig,
    HostConfigLogConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StatsOptions, StopContainerOptions,
    WaitContainerOptions,
};
use futures::StreamExt;
use verge_api::specs::DockerWorkload;

use super::{
    Adopted, Enforcement, Engine, Exit, InstanceKey, InstanceSpec, LABEL_APP, LABEL_NODE,
    LABEL_REPLICA, LABEL_VERSION, Limits, Payload, Usage, instance_labels,
};
use crate::error::{Error, Result, chain};

/// Seconds a request may take to be answered (headers), before the daemon is declared
/// unresponsive. Streams (pulls, waits, logs) are not bounded by it once answered.
const API_TIMEOUT_SECS: u64 = 120;

/// Where the daemon is when neither a socket nor `DOCKER_HOST` says.
const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Log rotation for every container: edge disks are small.
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILE: &str = "3";

/// How long `wait` keeps retrying while the daemon cannot be reached.
const WAIT_GIVE_UP: Duration = Duration::from_secs(60);

/// A container created by [`DockerEngine::start`] (or found by `adopt`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerHandle {
    /// The container id (64 hex digits).
    pub id: String,
    /// The container name, without Docker's leading `/`.
    pub name: String,
}

/// Runs Docker workloads through a Docker Engine (unix socket or `DOCKER_HOST`).
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    /// Where the daemon is, for messages (`unix:///var/run/docker.sock`).
    host: String,
    /// `HostConfig.NetworkMode` for new containers; `None`: Docker's default.
    network: Option<String>,
    /// The daemon's cgroup driver (`cgroupfs`, `systemd`), if it said.
    cgroup_driver: Option<String>,
}

impl DockerEngine {
    /// Connects to the daemon on `socket` (a unix socket path), or, without one, to
    /// `DOCKER_HOST` or the default socket, and negotiates the API version.
    pub async fn connect(socket: Option<&Path>) -> Result<Self> {
        let (docker, host) = match socket {
            Some(path) => {
                let s = path.to_str().ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: docker socket path is not UTF-8",
                        path.display()
                    ))
                })?;
                let host = format!("unix://{s}");
                let d = Docker::connect_with_unix(
                    &host,
                    API_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| Error::Docker(format!("{host}: {}", chain(&e))))?;
                (d, host)
            }
            None => {
                let host = std::env::var("DOCKER_HOST")
                    .unwrap_or_else(|_| DEFAULT_DOCKER_HOST.to_string());
                let d = Docker::connect_with_defaults()
                    .map_err(|e| Error::Docker(format!("{host}: {}", chain(&e))))?;
                (d, host)
            }
        };
        let docker = docker.negotiate_version().await.map_err(|e| {
            Error::Docker(format!(
                "engine at {host} not reachable (is dockerd running?): {}",
                chain(&e)
            ))
        })?;
        // Best effort: only used to name cgroups when /proc cannot tell.
        let cgroup_driver = match docker.info().await {
            Ok(info) => info.cgroup_driver.map(|d| d.to_string()),
            Err(e) => {
                tracing::debug!(error = %chain(&e), "docker info");
                None
            }
        };
        Ok(DockerEngine {
            docker,
            host,
            network: None,
            cgroup_driver,
        })
    }

    /// Containers started from now on use this network mode (`host`, `bridge`, a
    /// network's name) instead of Docker's default.
    pub fn with_network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// Where the daemon is (`unix:///var/run/docker.sock`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The API client, for callers that need more than the [`Engine`] trait.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// One line for an API error: the daemon's own words, or why it was not reached.
    fn describe(&self, e: &ApiError) -> String {
        match e {
            ApiError::DockerResponseServerError {
                status_code,
                message,
            } => format!("{} (HTTP {status_code})", message.trim()),
            ApiError::DockerStreamError { error } => error.trim().to_string(),
            ApiError::RequestTimeoutError => format!(
                "engine at {} did not answer within {API_TIMEOUT_SECS}s",
                self.host
            ),
            e => format!("engine at {} not reachable: {}", self.host, chain(e)),
        }
    }

    fn api_err<'a>(
        &'a self,
        what: impl std::fmt::Display + 'a,
    ) -> impl FnOnce(ApiError) -> Error + 'a {
        move |e| Error::Docker(format!("{what}: {}", self.describe(&e)))
    }

    fn pull_err(&self, image: &str, e: ApiError) -> Error {
        match &e {
            ApiError::DockerResponseServerError {
                status_code,
                message,
            } => classify_pull_error(image, Some(*status_code), message),
            ApiError::DockerStreamError { error } => classify_pull_error(image, None, error),
            _ => Error::Docker(format!("pulling {image}: {}", self.describe(&e))),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // "removal of container ... is already in progress"
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.api_err(format_args!("removing container {id}"))(e)),
        }
    }

    /// The cgroups of a started container: from `/proc/PID/cgroup` when this process
    /// can read it (same host), else the daemon's naming convention.
    async fn cgroups(&self, id: &str, limits: &Limits) -> Vec<String> {
        let pid = match self.docker.inspect_container(id, None).await {
            Ok(info) => info.state.and_then(|s| s.pid).filter(|p| *p > 0),
            Err(_) => None,
        };
        if let Some(pid) = pid
            && let Ok(text) = tokio::fs::read_to_string(format!("/proc/{pid}/cgroup")).await
        {
            let paths = cgroup_paths(&text, limits);
            if !paths.is_empty() {
                return paths;
            }
        }
        vec![fallback_cgroup(self.cgroup_driver.as_deref(), id)]
    }
}

impl Engine for DockerEngine {
    type Handle = ContainerHandle;

    async fn prepare(&self, spec: &InstanceSpec) -> Result<()> {
        let w = docker_workload(spec)?;
        let image = w.image.as_str();
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(self.api_err(format_args!("inspecting image {image}"))(e)),
        }
        let (from_image, tag) = pull_ref(image);
        let credentials = spec.registry_auth.as_ref().map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(registry_host(image)),
            ..Default::default()
        });
        let opts = CreateImageOptions {
            from_image: Some(from_image),
            tag: Some(tag),
            ..Default::default()
        };
        tracing::info!(image, "pulling image");
        let mut progress = self.docker.create_image(Some(opts), None, credentials);
        while let Some(item) = progress.next().await {
            if let Err(e) = item {
                return Err(self.pull_err(image, e));
            }
        }
        // The pull said it finished: the image must now be here.
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(Error::ImageNotFound {
                image: image.to_string(),
                message: "the pull finished but the image is not present".into(),
            }),
            Err(e) => Err(self.api_err(format_args!("inspecting image {image}"))(e)),
        }
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<(ContainerHandle, Enforcement)> {
        let w = docker_workload(spec)?;
        let name = container_name(&spec.node, &spec.key, &rand_suffix());
        let body = create_body(spec, w, self.network.as_deref());
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| match &e {
                ApiError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => Error::ImageNotFound {
                    image: w.image.clone(),
                    message: format!("{} (not prepared?)", message.trim()),
                },
                _ => Error::Docker(format!(
                    "creating container {name} ({}): {}",
                    w.image,
                    self.describe(&e)
                )),
            })?;
        for warning in &created.warnings {
            tracing::warn!(container = %name, "docker: {warning}");
        }
        if let Err(e) = self
            .docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
        {
            let err = Error::Docker(format!(
                "starting container {name} ({}): {}",
                w.image,
                self.describe(&e)
            ));
            if let Err(re) = self.remove(&created.id).await {
                tracing::warn!(container = %name, error = %re, "removing a container that failed to start");
            }
            return Err(err);
        }
        let enforcement = if spec.limits.memory_bytes.is_some() || spec.limits.cpu_millis.is_some()
        {
            Enforcement::Cgroup(self.cgroups(&created.id, &spec.limits).await)
        } else {
            Enforcement::None
        };
        tracing::info!(container = %name, id = %created.id, "started");
        Ok((
            ContainerHandle {
                id: created.id,
                name,
            },
            enforcement,
        ))
    }

    async fn wait(&self, handle: &ContainerHandle) -> Exit {
        let mut failing_since: Option<tokio::time::Instant> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut waiter = self
                .docker
                .wait_container(&handle.id, None::<WaitContainerOptions>);
            let wait_failed = match waiter.next().await {
                // Exited (bollard reports a non-zero status as this error).
                Some(Ok(_)) | Some(Err(ApiError::DockerContainerWaitError { .. })) => false,
                Some(Err(e)) if is_status(&e, 404) => return removed_exit(),
                Some(Err(e)) => {
                    tracing::debug!(container = %handle.name, error = %self.describe(&e), "wait");
                    true
                }
                None => true,
            };
            drop(waiter);
            match self.docker.inspect_container(&handle.id, None).await {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    if state.running != Some(true) {
                        let limit = info
                            .host_config
                            .and_then(|h| h.memory)
                            .and_then(|m| u64::try_from(m).ok())
                            .filter(|m| *m > 0);
                        let oom = state.oom_killed == Some(true);
                        let mut message =
                            exit_message(state.exit_code, oom, limit, state.error.as_deref());
                        // 126/127: the init could not exec the command; its own words
                        // (last line of the output) name it.
                        if matches!(state.exit_code, Some(126 | 127))
                            && let Ok(lines) = self.logs(handle, 1).await
                            && let Some(last) = lines.last()
                        {
                            message.push_str(": ");
                            message.push_str(last.trim());
                        }
                        return Exit {
                            code: state.exit_code,
                            oom_killed: oom,
                            message,
                        };
                    }
                    // Still running (the wait was cut short): wait again, not in a
                    // tight loop if waiting itself fails.
                    failing_since = None;
                    if wait_failed {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    } else {
                        backoff = Duration::from_millis(200);
                    }
                }
                Err(e) if is_status(&e, 404) => return removed_exit(),
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > WAIT_GIVE_UP {
                        return Exit {
                            code: None,
                            oom_killed: false,
                            message: format!("lost track of the container: {}", self.describe(&e)),
                        };
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn stop(&self, handle: &ContainerHandle, grace: Duration) -> Result<()> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let opts = StopContainerOptions {
            t: Some(i32::try_from(secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The stop call answers only once the container is down: allow the grace.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(API_TIMEOUT_SECS) + grace);
        match docker.stop_container(&handle.id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => {
                // Removal below kills it anyway.
                tracing::warn!(container = %handle.name, error = %self.describe(&e), "stop failed; removing by force");
            }
        }
        self.remove(&handle.id).await
    }

    async fn exec(
        &self,
        handle: &ContainerHandle,
        command: &[String],
        timeout: Duration,
    ) -> Result<i64> {
        let run = async {
            let config = CreateExecOptions::<String> {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            };
            let exec = self
                .docker
                .create_exec(&handle.id, config)
                .await
                .map_err(self.api_err(format_args!("exec in {}", handle.name)))?;
            let started = self
                .docker
                .start_exec(&exec.id, Some(StartExecOptions::default()))
                .await
                .map_err(self.api_err(format_args!("exec in {}", handle.name)))?;
            if let StartExecResults::Attached { mut output, .. } = started {
                // Drained (and dropped): the output ends when the command does.
                while let Some(chunk) = output.next().await {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
            loop {
                let info = self
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(self.api_err(format_args!("exec in {}", handle.name)))?;
                if info.running != Some(true) {
                    return info.exit_code.ok_or_else(|| {
                        Error::Docker(format!("exec {command:?} in {}: no exit code", handle.name))
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| {
            Error::Docker(format!(
                "exec {command:?} in {}: timed out after {timeout:?}",
                handle.name
            ))
        })?
    }

    async fn probe_address(&self, handle: &ContainerHandle) -> Result<IpAddr> {
        let info = self
            .docker
            .inspect_container(&handle.id, None)
            .await
            .map_err(self.api_err(format_args!("inspecting {}", handle.name)))?;
        let mode = info.host_config.and_then(|h| h.network_mode);
        let networks: Vec<Attached> = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, e)| Attached {
                name,
                ipv4: e.ip_address,
                ipv6: e.global_ipv6_address,
            })
            .collect();
        probe_address_of(mode.as_deref(), &networks)
            .map_err(|why| Error::Docker(format!("{}: {why}", handle.name)))
    }

    async fn usage(&self, handle: &ContainerHandle) -> Option<Usage> {
        // Not one-shot: the daemon samples twice, so `precpu_stats` is filled in.
        let opts = StatsOptions {
            stream: false,
            one_shot: false,
        };
        let mut stats = self.docker.stats(&handle.id, Some(opts));
        match stats.next().await {
            Some(Ok(s)) => usage_from_stats(&s),
            Some(Err(e)) => {
                tracing::debug!(container = %handle.name, error = %self.describe(&e), "stats");
                None
            }
            None => None,
        }
    }

    async fn adopt(&self, node: &str) -> Result<Vec<Adopted<ContainerHandle>>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={node}")])]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(self.api_err("listing containers"))?;
        let mut running = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| id.clone());
            if c.state != Some(ContainerSummaryStateEnum::RUNNING) {
                tracing::info!(container = %name, state = ?c.state, "removing a leftover container");
                // Not fatal: what runs matters more than what is left over.
                if let Err(e) = self.remove(&id).await {
                    tracing::warn!(container = %name, error = %e, "removing a leftover container");
                }
                continue;
            }
            let labels = c.labels.unwrap_or_default();
            let Some((key, version)) = parse_labels(&labels) else {
                tracing::warn!(container = %name, "labelled for this node but not an instance; left alone");
                continue;
            };
            // Nanoseconds: two containers of one instance may start within a second.
            let created = match self.docker.inspect_container(&id, None).await {
                Ok(info) => info.created.as_deref().and_then(parse_rfc3339_nanos),
                Err(e) if is_status(&e, 404) => continue,
                Err(_) => None,
            }
            .unwrap_or_else(|| i128::from(c.created.unwrap_or(0)) * 1_000_000_000);
            running.push(Found {
                handle: ContainerHandle { id, name },
                key,
                version,
                created,
            });
        }
        let (keep, duplicates) = split_duplicates(running);
        for d in duplicates {
            tracing::warn!(container = %d.handle.name, instance = %d.key, "removing a duplicate container");
            self.remove(&d.handle.id).await?;
        }
        Ok(keep
            .into_iter()
            .map(|f| Adopted {
                key: f.key,
                version: f.version,
                handle: f.handle,
            })
            .collect())
    }

    async fn read_logs(
        &self,
        handle: &ContainerHandle,
        cursor: &mut super::LogCursor,
    ) -> Vec<verge_proto::LogLine> {
        // `since` is in whole seconds: lines at or before the cursor are skipped by
        // their own (nanosecond) timestamps.
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            since: i32::try_from(cursor.since_ms / 1000).unwrap_or(0),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&handle.id, Some(opts));
        let mut out = Vec::new();
        while let Some(Ok(item)) = stream.next().await {
            let (stream_kind, message) = match &item {
                bollard::container::LogOutput::StdErr { message } => {
                    (verge_proto::LogStream::Stderr, message)
                }
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message } => {
                    (verge_proto::LogStream::Stdout, message)
                }
                bollard::container::LogOutput::StdIn { .. } => continue,
            };
            let text = String::from_utf8_lossy(message);
            for raw in text.lines() {
                let Some((ts_ms, line)) = split_timestamp(raw) else {
                    continue;
                };
                if ts_ms <= cursor.since_ms || out.len() >= super::MAX_LOG_BATCH {
                    continue;
                }
                out.push(super::log_line(ts_ms, stream_kind, line));
            }
        }
        if let Some(last) = out.iter().map(|l| l.ts_ms).max() {
            cursor.since_ms = last;
        }
        out
    }

    async fn logs(&self, handle: &ContainerHandle, lines: usize) -> Result<Vec<String>> {
        if lines == 0 {
            return Ok(Vec::new());
        }
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&handle.id, Some(opts));
        let mut chunks = Vec::new();
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(self.api_err(format_args!("logs of {}", handle.name)))?;
            chunks.push(chunk.into_bytes());
        }
        Ok(last_lines(chunks.iter().map(|c| c.as_ref()), lines))
    }
}

/// `2026-11-21T15:36:10.052533500Z text` (Docker's `timestamps`) → (unix ms, text).
pub fn split_timestamp(raw: &str) -> Option<(i64, &str)> {
    let (ts, rest) = raw.split_once(' ').unwrap_or((raw, ""));
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(((t.unix_timestamp_nanos() / 1_000_000) as i64, rest))
}

fn docker_workload(spec: &InstanceSpec) -> Result<&DockerWorkload> {
    match &spec.payload {
        Payload::Docker(w) => Ok(w),
        Payload::Native(_) => Err(Error::Invalid(format!(
            "{}: not a Docker workload (the Docker engine runs only those)",
            spec.key
        ))),
    }
}

fn is_status(e: &ApiError, status: u16) -> bool {
    matches!(e, ApiError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

fn removed_exit() -> Exit {
    Exit {
        code: None,
        oom_killed: false,
        message: "container removed".into(),
    }
}

fn rand_suffix() -> String {
    format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

/// One network a container is attached to, as `inspect` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attached {
    pub name: String,
    /// `NetworkSettings.Networks[name].IPAddress` (empty when none).
    pub ipv4: Option<String>,
    /// `GlobalIPv6Address` (empty when none).
    pub ipv6: Option<String>,
}

/// Where a container's own ports are reached from the node, for http/tcp health
/// probes. With the `host` network mode the container shares the node's network: the
/// node's loopback. Otherwise its address on the network the mode names (Docker's
/// `default` is `bridge`), else on the first network (by name) that gave it one; IPv4
/// before IPv6. Never the node's loopback for a container on its own network: a
/// process of the node holding the same port must not answer for the container.
pub(crate) fn probe_address_of(
    mode: Option<&str>,
    networks: &[Attached],
) -> std::result::Result<IpAddr, String> {
    let mode = mode.filter(|m| !m.is_empty()).unwrap_or("default");
    if mode == "host" {
        return Ok(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    let named = if mode == "default" { "bridge" } else { mode };
    let address = |n: &Attached| -> Option<IpAddr> {
        [&n.ipv4, &n.ipv6]
            .into_iter()
            .flatten()
            .find_map(|a| a.parse::<IpAddr>().ok())
    };
    let mut sorted: Vec<&Attached> = networks.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
        .iter()
        .filter(|n| n.name == named)
        .chain(sorted.iter().filter(|n| n.name != named))
        .find_map(|n| address(n))
        .ok_or_else(|| {
            format!(
                "the container has no address on a network (network mode {mode}), so an \
                 http or tcp health probe cannot reach it; use an exec probe, or run \
                 containers on a network (verge-edge --docker-network)"
            )
        })
}

/// `verge-{node}-{app}-{replica}-{suffix}`, reduced to the characters Docker allows in
/// a name (`[a-zA-Z0-9_.-]`).
pub(crate) fn container_name(node: &str, key: &InstanceKey, suffix: &str) -> String {
    let raw = format!("verge-{node}-{}-{}-{suffix}", key.app, key.replica);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The create request for one instance.
pub(crate) fn create_body(
    spec: &InstanceSpec,
    w: &DockerWorkload,
    network: Option<&str>,
) -> ContainerCreateBody {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &w.ports {
        let proto = p.protocol.map(|p| p.as_str()).unwrap_or("tcp");
        let port = format!("{}/{proto}", p.container_port);
        if !exposed.contains(&port) {
            exposed.push(port.clone());
        }
        if let Some(host_port) = p.host_port {
            bindings
                .entry(port)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: None,
                    host_port: Some(host_port.to_string()),
                });
        }
    }
    let binds: Vec<String> = w
        .volumes
        .iter()
        .map(|v| {
            let mut b = format!("{}:{}", v.host_path, v.container_path);
            if v.read_only == Some(true) {
                b.push_str(":ro");
            }
            b
        })
        .collect();
    let memory = spec
        .limits
        .memory_bytes
        .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let host_config = HostConfig {
        memory,
        // No swap beyond the limit: the limit is the limit.
        memory_swap: memory,
        nano_cpus: spec
            .limits
            .cpu_millis
            .map(|c| i64::try_from(c.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        binds: (!binds.is_empty()).then_some(binds),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        network_mode: network.map(str::to_string),
        // A minimal init (Docker's docker-init) as PID 1: signals reach the app, so
        // a stop takes as long as the app needs, not the whole grace period, and
        // zombies are reaped.
        init: Some(true),
        // The supervisor restarts instances, never Docker.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), LOG_MAX_FILE.to_string()),
            ])),
        }),
        ..Default::default()
    };
    let env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    ContainerCreateBody {
        image: Some(w.image.clone()),
        entrypoint: (!w.command.is_empty()).then(|| w.command.clone()),
        cmd: (!w.args.is_empty()).then(|| w.args.clone()),
        env: (!env.is_empty()).then_some(env),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(instance_labels(spec).into_iter().collect()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The instance a container's labels name, and its version.
pub(crate) fn parse_labels(labels: &HashMap<String, String>) -> Option<(InstanceKey, String)> {
    let app = labels.get(LABEL_APP).filter(|a| !a.is_empty())?;
    let replica = labels.get(LABEL_REPLICA)?.parse().ok()?;
    let version = labels.get(LABEL_VERSION).cloned().unwrap_or_default();
    Some((
        InstanceKey {
            app: app.clone(),
            replica,
        },
        version,
    ))
}

/// A running container of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub handle: ContainerHandle,
    pub key: InstanceKey,
    pub version: String,
    /// Creation time, Unix nanoseconds.
    pub created: i128,
}

/// One container per instance: the newest is kept (ties: the larger id, so the
/// choice is stable); the others are returned to be removed. Kept ones come sorted by
/// instance.
pub(crate) fn split_duplicates(found: Vec<Found>) -> (Vec<Found>, Vec<Found>) {
    let mut best: BTreeMap<InstanceKey, Found> = BTreeMap::new();
    let mut remove = Vec::new();
    for f in found {
        match best.get_mut(&f.key) {
            None => {
                best.insert(f.key.clone(), f);
            }
            Some(cur) => {
                if (f.created, &f.handle.id) > (cur.created, &cur.handle.id) {
                    remove.push(std::mem::replace(cur, f));
                } else {
                    remove.push(f);
                }
            }
        }
    }
    (best.into_values().collect(), remove)
}

/// RFC 3339 (Docker's `Created`, nanosecond precision) as Unix nanoseconds.
fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// One line for `lastError`: `exit code 137, OOM-killed (memory limit 64Mi)`.
pub(crate) fn exit_message(
    code: Option<i64>,
    oom_killed: bool,
    memory_limit: Option<u64>,
    error: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    if let Some(c) = code {
        let signal = (!oom_killed && (129..=159).contains(&c))
            .then(|| signal_name(c - 128))
            .flatten();
        match signal {
            Some(s) => parts.push(format!("exit code {c} ({s})")),
            None => parts.push(format!("exit code {c}")),
        }
    }
    if oom_killed {
        match memory_limit {
            Some(m) => parts.push(format!("OOM-killed (memory limit {})", format_bytes(m))),
            None => parts.push("OOM-killed".to_string()),
        }
    }
    if let Some(e) = error.map(str::trim).filter(|e| !e.is_empty()) {
        parts.push(e.to_string());
    }
    if parts.is_empty() {
        "exited".to_string()
    } else {
        parts.join(", ")
    }
}

fn signal_name(n: i64) -> Option<&'static str> {
    Some(match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// `67108864` → `64Mi`; `1610612736` → `1.5Gi`; small values in bytes.
pub(crate) fn format_bytes(b: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= size {
            return if b.is_multiple_of(size) {
                format!("{}{unit}", b / size)
            } else {
                let v = b as f64 / size as f64;
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{b}B")
}

/// Tells a pull failure apart: no such image vs registry not reachable vs the rest.
/// `status` is the daemon's HTTP status when the pull failed before streaming.
pub(crate) fn classify_pull_error(image: &str, status: Option<u16>, message: &str) -> Error {
    let message = message.trim().to_string();
    // Match on the message without the image's own name (it may hold any word).
    let m = message.replace(image, "").to_ascii_lowercase();
    const UNREACHABLE: &[&str] = &[
        "connection refused",
        "no such host",
        "i/o timeout",
        "timeout exceeded",
        "deadline exceeded",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "tls handshake",
        "server gave http response to https client",
        "dial tcp",
        "temporary failure in name resolution",
    ];
    const NOT_FOUND: &[&str] = &[
        "manifest unknown",
        "not found",
        "repository does not exist",
        "name unknown",
        "no such image",
        "no matching manifest",
    ];
    if UNREACHABLE.iter().any(|p| m.contains(p)) {
        Error::RegistryUnreachable {
            image: image.to_string(),
            message,
        }
    } else if status == Some(404) || NOT_FOUND.iter().any(|p| m.contains(p)) {
        Error::ImageNotFound {
            image: image.to_string(),
            message,
        }
    } else {
        Error::Docker(format!("pulling {image}: {message}"))
    }
}

/// `(fromImage, tag)` for a pull: `reg:5000/a/b:1` → `(reg:5000/a/b, 1)`, a digest
/// reference → `(repo, sha256:…)`, no tag → `latest` (never "all tags").
pub(crate) fn pull_ref(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (image[..at].to_string(), image[at + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The registry an image reference points at (Docker Hub's address when none).
pub(crate) fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "https://index.docker.io/v1/".to_string(),
    }
}

/// Memory (working set: usage less inactive file cache) and CPU millicores between the
/// two samples of a non-streamed stats answer. `None` when the container is not running.
pub(crate) fn usage_from_stats(s: &ContainerStatsResponse) -> Option<Usage> {
    let mem = s.memory_stats.as_ref()?;
    let usage = mem.usage?;
    let inactive = mem
        .stats
        .as_ref()
        .and_then(|st| {
            st.get("total_inactive_file")
                .or_else(|| st.get("inactive_file"))
                .copied()
        })
        .unwrap_or(0);
    let memory_bytes = usage.saturating_sub(inactive);
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
    };
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let cpu_millis = match (
        total(cpu),
        total(pre),
        cpu.and_then(|c| c.system_cpu_usage),
        pre.and_then(|c| c.system_cpu_usage),
    ) {
        (Some(now), Some(before), Some(sys_now), Some(sys_before))
            if now >= before && sys_now > sys_before =>
        {
            let cpus = cpu
                .and_then(|c| c.online_cpus)
                .map(u64::from)
                .or_else(|| {
                    cpu.and_then(|c| c.cpu_usage.as_ref())
                        .and_then(|u| u.percpu_usage.as_ref())
                        .map(|p| p.len() as u64)
                })
                .filter(|n| *n > 0)
                .unwrap_or(1);
            let millis = u128::from(now - before) * u128::from(cpus) * 1000
                / u128::from(sys_now - sys_before);
            u64::try_from(millis).unwrap_or(u64::MAX)
        }
        _ => 0,
    };
    Some(Usage {
        cpu_millis,
        memory_bytes,
    })
}

/// Paths under `/sys/fs/cgroup` of the controllers that enforce `limits`, from a
/// `/proc/PID/cgroup`: the unified path on cgroup v2, else `memory` and `cpu` on v1.
pub(crate) fn cgroup_paths(proc_cgroup: &str, limits: &Limits) -> Vec<String> {
    let mut v1 = Vec::new();
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            unified = Some(path);
            continue;
        }
        let list: Vec<&str> = controllers.split(',').collect();
        for (wanted, limited) in [
            ("memory", limits.memory_bytes.is_some()),
            ("cpu", limits.cpu_millis.is_some()),
        ] {
            if limited && list.contains(&wanted) {
                v1.push(format!("/sys/fs/cgroup/{wanted}{path}"));
            }
        }
    }
    if !v1.is_empty() {
        return v1;
    }
    match unified {
        Some(p) if p != "/" => vec![format!("/sys/fs/cgroup{p}")],
        _ => Vec::new(),
    }
}

/// The daemon's cgroup naming when `/proc` cannot tell.
pub(crate) fn fallback_cgroup(driver: Option<&str>, id: &str) -> String {
    match driver {
        Some("systemd") => format!("system.slice/docker-{id}.scope"),
        _ => format!("docker/{id}"),
    }
}

/// The last `n` lines of log output given as chunks (frames may hold several lines).
pub(crate) fn last_lines<'a>(chunks: impl Iterator<Item = &'a [u8]>, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for chunk in chunks {
        let text = String::from_utf8_lossy(chunk);
        for line in text.lines() {
            lines.push(line.to_string());
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// The Docker engine, connected on first use and again after a failed attempt: an
/// agent that starts before dockerd (a common boot order) runs Docker apps as soon as
/// the daemon answers, instead of failing them until it restarts.
pub struct LazyDocker {
    socket: Option<std::path::PathBuf>,
    network: Option<String>,
    cell: tokio::sync::OnceCell<DockerEngine>,
}

impl LazyDocker {
    pub fn new(socket: Option<std::path::PathBuf>, network: Option<String>) -> Self {
        Self {
            socket,
            network,
            cell: tokio::sync::OnceCell::new(),
        }
    }

    /// The connected engine (connecting now if need be).
    pub async fn get(&self) -> Result<&DockerEngine> {
        self.cell
            .get_or_try_init(|| async {
                let d = DockerEngine::connect(self.socket.as_deref()).await?;
                Ok(match &self.network {
                    Some(n) => d.with_network(n.clone()),
                    None => d,
                })
            })
            .await
    }
}

/// Only handles from a connected engine exist, so the methods taking one use it.
impl Engine for LazyDocker {
    type Handle = ContainerHandle;

    async fn prepare(&self, spec: &InstanceSpec) -> Result<()> {
        self.get().await?.prepare(spec).await
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<(ContainerHandle, Enforcement)> {
        self.get().await?.start(spec).await
    }

    async fn wait(&self, handle: &ContainerHandle) -> Exit {
        match self.get().await {
            Ok(d) => d.wait(handle).await,
            Err(e) => Exit {
                code: None,
                oom_killed: false,
                message: e.to_string(),
            },
        }
    }

    async fn stop(&self, handle: &ContainerHandle, grace: Duration) -> Result<()> {
        self.get().await?.stop(handle, grace).await
    }

    async fn exec(
        &self,
        handle: &ContainerHandle,
        command: &[String],
        timeout: Duration,
    ) -> Result<i64> {
        self.get().await?.exec(handle, command, timeout).await
    }

    async fn probe_address(&self, handle: &ContainerHandle) -> Result<IpAddr> {
        self.get().await?.probe_address(handle).await
    }

    async fn usage(&self, handle: &ContainerHandle) -> Option<Usage> {
        self.get().await.ok()?.usage(handle).await
    }

    async fn adopt(&self, node: &str) -> Result<Vec<Adopted<ContainerHandle>>> {
        self.get().await?.adopt(node).await
    }

    async fn read_logs(
        &self,
        handle: &ContainerHandle,
        cursor: &mut super::LogCursor,
    ) -> Vec<verge_proto::LogLine> {
        match self.get().await {
            Ok(d) => d.read_logs(handle, cursor).await,
            Err(_) => Vec::new(),
        }
    }

    async fn logs(&self, handle: &ContainerHandle, lines: usize) -> Result<Vec<String>> {
        self.get().await?.logs(handle, lines).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_are_split_off() {
        let (ms, text) = split_timestamp("2026-11-21T15:36:10.052533500Z hello world").unwrap();
        assert_eq!(ms, 1_795_275_370_052);
        assert_eq!(text, "hello world");
        assert_eq!(split_timestamp("2026-11-21T15:36:10Z").unwrap().1, "");
        assert!(split_timestamp("garbage line").is_none());
    }
    use crate::engine::RegistryCredentials;
    use verge_api::specs::{PortSpec, Protocol, VolumeMount};

    fn spec(w: DockerWorkload, limits: Limits) -> InstanceSpec {
        InstanceSpec {
            key: InstanceKey {
                app: "web".into(),
                replica: 2,
            },
            node: "edge-1".into(),
            version: "1.2.3".into(),
            payload: Payload::Docker(w.clone()),
            limits,
            registry_auth: Some(RegistryCredentials {
                username: "u".into(),
                password: "p".into(),
            }),
        }
    }

    fn workload() -> DockerWorkload {
        DockerWorkload {
            image: "reg.local:5000/web:1".into(),
            command: vec!["/bin/web".into()],
            args: vec!["--port".into(), "80".into()],
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "x=y".into())]),
            secret_env: BTreeMap::new(),
            ports: vec![
                PortSpec {
                    container_port: 80,
                    host_port: Some(8080),
                    protocol: None,
                },
                PortSpec {
                    container_port: 53,
                    host_port: None,
                    protocol: Some(Protocol::Udp),
                },
            ],
            volumes: vec![
                VolumeMount {
                    host_path: "/data".into(),
                    container_path: "/var/data".into(),
                    read_only: Some(true),
                },
                VolumeMount {
                    host_path: "/logs".into(),
                    container_path: "/logs".into(),
                    read_only: None,
                },
            ],
            registry_auth: None,
        }
    }

    #[test]
    fn create_body_carries_the_workload_and_limits() {
        let limits = Limits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
        };
        let s = spec(workload(), limits);
        let Payload::Docker(w) = &s.payload else {
            unreachable!()
        };
        let b = create_body(&s, w, Some("host"));
        assert_eq!(b.image.as_deref(), Some("reg.local:5000/web:1"));
        assert_eq!(b.entrypoint, Some(vec!["/bin/web".to_string()]));
        assert_eq!(b.cmd, Some(vec!["--port".to_string(), "80".to_string()]));
        assert_eq!(b.env, Some(vec!["A=1".to_string(), "B=x=y".to_string()]));
        assert_eq!(
            b.exposed_ports,
            Some(vec!["80/tcp".to_string(), "53/udp".to_string()])
        );
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_APP], "web");
        assert_eq!(labels[LABEL_REPLICA], "2");
        assert_eq!(labels[LABEL_VERSION], "1.2.3");
        assert_eq!(labels[LABEL_NODE], "edge-1");
        let h = b.host_config.unwrap();
        assert_eq!(h.memory, Some(67108864));
        assert_eq!(h.memory_swap, Some(67108864));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(
            h.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(
            h.binds,
            Some(vec![
                "/data:/var/data:ro".to_string(),
                "/logs:/logs".to_string()
            ])
        );
        let pb = h.port_bindings.unwrap();
        assert_eq!(pb.len(), 1);
        assert_eq!(
            pb["80/tcp"],
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some("8080".into())
            }])
        );
        assert_eq!(h.log_config.unwrap().typ.as_deref(), Some("json-file"));
    }

    #[test]
    fn create_body_leaves_unset_things_to_the_image_and_docker() {
        let w = DockerWorkload {
            image: "busybox".into(),
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            ports: vec![],
            volumes: vec![],
            registry_auth: None,
        };
        let s = spec(w.clone(), Limits::default());
        let b = create_body(&s, &w, None);
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, None);
        assert_eq!(b.env, None);
        assert_eq!(b.exposed_ports, None);
        let h = b.host_config.unwrap();
        assert_eq!(h.memory, None);
        assert_eq!(h.memory_swap, None);
        assert_eq!(h.nano_cpus, None);
        assert_eq!(h.network_mode, None);
        assert_eq!(h.binds, None);
        assert_eq!(h.port_bindings, None);
    }

    #[test]
    fn probes_reach_the_container_on_its_network_and_loopback_only_with_host() {
        let net = |name: &str, v4: &str, v6: &str| Attached {
            name: name.into(),
            ipv4: Some(v4.into()),
            ipv6: Some(v6.into()),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // The host network: the node's loopback, whatever inspect lists.
        assert_eq!(
            probe_address_of(Some("host"), &[net("host", "", "")]),
            Ok(ip("127.0.0.1"))
        );
        // Docker's default is the `bridge` network.
        let bridge = [net("bridge", "172.17.0.2", "")];
        assert_eq!(probe_address_of(None, &bridge), Ok(ip("172.17.0.2")));
        assert_eq!(
            probe_address_of(Some("default"), &bridge),
            Ok(ip("172.17.0.2"))
        );
        assert_eq!(probe_address_of(Some(""), &bridge), Ok(ip("172.17.0.2")));
        // A named network first, then the others by name; IPv4 before IPv6.
        let two = [
            net("zz", "10.9.0.5", ""),
            net("apps", "10.1.0.7", "fd00::7"),
        ];
        assert_eq!(probe_address_of(Some("zz"), &two), Ok(ip("10.9.0.5")));
        assert_eq!(probe_address_of(Some("other"), &two), Ok(ip("10.1.0.7")));
        assert_eq!(
            probe_address_of(Some("v6"), &[net("v6", "", "fd00::9")]),
            Ok(ip("fd00::9"))
        );
        // No address: never the loopback (a node process could answer for it).
        for (mode, nets) in [
            (Some("none"), vec![net("none", "", "")]),
            (Some("container:abc"), vec![]),
            (
                None,
                vec![Attached {
                    name: "bridge".into(),
                    ..Default::default()
                }],
            ),
            (Some("bridge"), vec![net("bridge", "not-an-ip", "")]),
        ] {
            let e = probe_address_of(mode, &nets).unwrap_err();
            assert!(e.contains("has no address on a network"), "{e}");
            assert!(e.contains("exec probe"), "{e}");
        }
    }

    #[test]
    fn the_container_name_is_valid_for_docker() {
        let key = InstanceKey {
            app: "web".into(),
            replica: 0,
        };
        assert_eq!(
            container_name("edge-1", &key, "a1b2c3"),
            "verge-edge-1-web-0-a1b2c3"
        );
        assert_eq!(
            container_name("my node/x", &key, "000000"),
            "verge-my-node-x-web-0-000000"
        );
        assert_eq!(rand_suffix().len(), 6);
    }

    #[test]
    fn labels_name_the_instance() {
        let s = spec(workload(), Limits::default());
        let labels: HashMap<String, String> = instance_labels(&s).into_iter().collect();
        assert_eq!(
            parse_labels(&labels),
            Some((
                InstanceKey {
                    app: "web".into(),
                    replica: 2
                },
                "1.2.3".to_string()
            ))
        );
        let mut bad = labels.clone();
        bad.insert(LABEL_REPLICA.into(), "two".into());
        assert_eq!(parse_labels(&bad), None);
        let mut none = labels;
        none.remove(LABEL_APP);
        assert_eq!(parse_labels(&none), None);
    }

    fn found(id: &str, app: &str, replica: u32, created: i128) -> Found {
        Found {
            handle: ContainerHandle {
                id: id.into(),
                name: format!("n-{id}"),
            },
            key: InstanceKey {
                app: app.into(),
                replica,
            },
            version: "1".into(),
            created,
        }
    }

    #[test]
    fn duplicates_keep_the_newest() {
        let (keep, remove) = split_duplicates(vec![
            found("a", "web", 0, 10),
            found("b", "web", 0, 30),
            found("c", "web", 1, 5),
            found("d", "web", 0, 20),
            found("e", "db", 0, 1),
        ]);
        let kept: Vec<&str> = keep.iter().map(|f| f.handle.id.as_str()).collect();
        assert_eq!(kept, ["e", "b", "c"]);
        let mut removed: Vec<&str> = remove.iter().map(|f| f.handle.id.as_str()).collect();
        removed.sort();
        assert_eq!(removed, ["a", "d"]);
        // Same creation time: the choice is stable whatever the order.
        let (k1, _) = split_duplicates(vec![found("x", "a", 0, 1), found("y", "a", 0, 1)]);
        let (k2, _) = split_duplicates(vec![found("y", "a", 0, 1), found("x", "a", 0, 1)]);
        assert_eq!(k1, k2);
    }

    #[test]
    fn created_timestamps_parse_with_nanoseconds() {
        let a = parse_rfc3339_nanos("2026-11-21T15:37:44.3Z").unwrap();
        let b = parse_rfc3339_nanos("2026-11-21T15:37:44.301Z").unwrap();
        assert!(b > a);
        assert_eq!(parse_rfc3339_nanos("yesterday"), None);
    }

    #[test]
    fn exit_messages() {
        assert_eq!(exit_message(Some(0), false, None, None), "exit code 0");
        assert_eq!(exit_message(Some(3), false, None, Some("")), "exit code 3");
        assert_eq!(
            exit_message(Some(137), true, Some(64 << 20), None),
            "exit code 137, OOM-killed (memory limit 64Mi)"
        );
        assert_eq!(
            exit_message(Some(143), false, None, None),
            "exit code 143 (SIGTERM)"
        );
        assert_eq!(
            exit_message(
                Some(127),
                false,
                None,
                Some("exec: \"/bin/nope\": not found")
            ),
            "exit code 127, exec: \"/bin/nope\": not found"
        );
        assert_eq!(exit_message(None, false, None, None), "exited");
        assert_eq!(exit_message(None, true, None, None), "OOM-killed");
    }

    #[test]
    fn bytes_are_formatted_like_quantities() {
        assert_eq!(format_bytes(64 << 20), "64Mi");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(3 << 29), "1.5Gi");
        assert_eq!(format_bytes(8 << 10), "8Ki");
        assert_eq!(format_bytes(100), "100B");
    }

    #[test]
    fn pull_errors_are_classified() {
        let img = "127.0.0.1:5000/nope:1";
        let e = classify_pull_error(
            img,
            Some(404),
            "manifest for 127.0.0.1:5000/nope:1 not found: manifest unknown: manifest unknown",
        );
        assert!(
            matches!(&e, Error::ImageNotFound { image, .. } if image == img),
            "{e}"
        );
        assert!(e.to_string().contains(img));
        let e = classify_pull_error(
            img,
            Some(500),
            "Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
        );
        assert!(
            matches!(&e, Error::RegistryUnreachable { image, .. } if image == img),
            "{e}"
        );
        assert!(e.to_string().contains("connection refused"));
        let e = classify_pull_error(
            "docker.io/library/nope:1",
            Some(404),
            "pull access denied for nope, repository does not exist or may require 'docker login'",
        );
        assert!(matches!(e, Error::ImageNotFound { .. }));
        let e = classify_pull_error(
            "r.example/x:1",
            None,
            "Get \"https://r.example/v2/\": net/http: request canceled while waiting for connection (Client.Timeout exceeded while awaiting headers)",
        );
        assert!(matches!(e, Error::RegistryUnreachable { .. }), "{e}");
        // A word in the image's own name decides nothing.
        let e = classify_pull_error(
            "r.example/timeout-svc:1",
            Some(404),
            "manifest for r.example/timeout-svc:1 not found: manifest unknown",
        );
        assert!(matches!(e, Error::ImageNotFound { .. }), "{e}");
        let e = classify_pull_error(
            "r.example/x:1",
            Some(500),
            "unauthorized: authentication required",
        );
        assert!(
            matches!(&e, Error::Docker(m) if m.contains("r.example/x:1")),
            "{e}"
        );
    }

    #[test]
    fn pull_references() {
        let p = |s: &str| {
            let (a, b) = pull_ref(s);
            (a, b)
        };
        assert_eq!(p("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(p("busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(
            p("127.0.0.1:5000/bb:1"),
            ("127.0.0.1:5000/bb".into(), "1".into())
        );
        assert_eq!(
            p("127.0.0.1:5000/team/bb"),
            ("127.0.0.1:5000/team/bb".into(), "latest".into())
        );
        assert_eq!(
            p("reg:5000/bb@sha256:abcd"),
            ("reg:5000/bb".into(), "sha256:abcd".into())
        );
        assert_eq!(registry_host("127.0.0.1:5000/bb:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/bb"), "localhost");
        assert_eq!(registry_host("reg.example/a/b:1"), "reg.example");
        assert_eq!(
            registry_host("library/busybox"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(registry_host("busybox"), "https://index.docker.io/v1/");
    }

    #[test]
    fn usage_from_two_samples() {
        let json = serde_json::json!({
            "memory_stats": {"usage": 50_000_000u64, "stats": {"total_inactive_file": 10_000_000u64}},
            "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000u64}, "system_cpu_usage": 20_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000u64}, "system_cpu_usage": 18_000_000_000u64}
        });
        let s: ContainerStatsResponse = serde_json::from_value(json).unwrap();
        // 0.5 s of CPU over 2 s of system time on 2 CPUs (1 s wall): 500m.
        assert_eq!(
            usage_from_stats(&s),
            Some(Usage {
                cpu_millis: 500,
                memory_bytes: 40_000_000
            })
        );
        let first: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "memory_stats": {"usage": 1000u64, "stats": {"inactive_file": 10u64}},
            "cpu_stats": {"cpu_usage": {"total_usage": 5u64}, "system_cpu_usage": 7u64},
            "precpu_stats": {"cpu_usage": {}}
        }))
        .unwrap();
        assert_eq!(
            usage_from_stats(&first),
            Some(Usage {
                cpu_millis: 0,
                memory_bytes: 990
            })
        );
        let stopped: ContainerStatsResponse =
            serde_json::from_value(serde_json::json!({"memory_stats": {}})).unwrap();
        assert_eq!(usage_from_stats(&stopped), None);
    }

    #[test]
    fn cgroups_from_proc() {
        let v1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:pids:/docker/abc\n0::/\n";
        let both = Limits {
            cpu_millis: Some(1),
            memory_bytes: Some(1),
        };
        assert_eq!(
            cgroup_paths(v1, &both),
            [
                "/sys/fs/cgroup/memory/docker/abc",
                "/sys/fs/cgroup/cpu/docker/abc"
            ]
        );
        let mem = Limits {
            cpu_millis: None,
            memory_bytes: Some(1),
        };
        assert_eq!(cgroup_paths(v1, &mem), ["/sys/fs/cgroup/memory/docker/abc"]);
        let v2 = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            cgroup_paths(v2, &both),
            ["/sys/fs/cgroup/system.slice/docker-abc.scope"]
        );
        assert!(cgroup_paths("0::/\n", &both).is_empty());
        assert_eq!(fallback_cgroup(None, "abc"), "docker/abc");
        assert_eq!(
            fallback_cgroup(Some("systemd"), "abc"),
            "system.slice/docker-abc.scope"
        );
    }

    #[test]
    fn last_lines_of_framed_output() {
        let chunks: Vec<&[u8]> = vec![b"one\n", b"two\nthree\n", b"four"];
        assert_eq!(last_lines(chunks.iter().copied(), 2), ["three", "four"]);
        assert_eq!(last_lines(chunks.iter().copied(), 10).len(), 4);
    }
}
