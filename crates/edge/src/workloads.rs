//! The node's workload manager: turns the `App` objects in the local store into
//! running instances and keeps them so, with or without the cloud.
//!
//! - [`plan`] (pure) compares what the store wants with what runs and says what to
//!   start and stop; [`dependency_gate`] (pure) holds an instance back until its
//!   `dependsOn` apps are healthy *on this node* in the required version range.
//! - Each instance has a supervisor task ([`supervise`]): prepare (pull / download),
//!   start, probe health (`http` / `tcp` at the instance's own address,
//!   [`Engine::probe_address`]: a container's address on its network, so a node process
//!   holding the same port never answers for it), sample usage, and restart per `restartPolicy` with
//!   exponential backoff (1 s doubling to 60 s; reset after 60 s of running). A
//!   health check failing `failureThreshold` times in a row marks the instance
//!   unhealthy and restarts it, like a liveness probe. An artifact refused for its
//!   content ([`crate::Error::is_refused_artifact`]) is final: the instance stays
//!   `Failed` with the reason and is not retried until the App changes.
//! - Instances found running when the agent starts are adopted (see each engine), so an
//!   agent restart never duplicates them.
//! - Every change is published to [`crate::EdgeState`], which the uplink reports in
//!   `NodeStatus.apps` (through the store-and-forward queue: offline changes catch up).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use verge_api::Object;
use verge_api::specs::{AppSpec, HealthCheck, RestartPolicy};
use verge_proto::{InstanceState, InstanceStatus};

use crate::engine::docker::LazyDocker;
use crate::engine::native::NativeEngine;
use crate::engine::{Enforcement, Engine, InstanceKey, InstanceSpec, Limits, Payload};
use crate::secrets::{NodeSecrets, SECRET_KIND};
use crate::{EdgeState, now_ms};

pub use verge_api::names::ANNOTATION_REPLICAS;
/// How long `stop` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// One instance the store wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub spec: InstanceSpec,
    pub app: AppSpec,
    /// Hash of the App spec: a change with the same version replaces the instance.
    pub spec_hash: u64,
}

/// What runs now, as [`plan`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub version: String,
    /// `None` for adopted instances (their spec hash is unknown: same version = same).
    pub spec_hash: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Start(InstanceKey),
    Stop(InstanceKey),
    /// Stop, then start the new spec.
    Replace(InstanceKey),
}

/// What to do so that `running` becomes `wanted`. Stops come first.
pub fn plan(
    wanted: &BTreeMap<InstanceKey, Wanted>,
    running: &BTreeMap<InstanceKey, Running>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (k, r) in running {
        match wanted.get(k) {
            None => steps.push(Step::Stop(k.clone())),
            Some(w) => {
                let same =
                    w.spec.version == r.version && r.spec_hash.is_none_or(|h| h == w.spec_hash);
                if !same {
                    steps.push(Step::Replace(k.clone()));
                }
            }
        }
    }
    for k in wanted.keys() {
        if !running.contains_key(k) {
            steps.push(Step::Start(k.clone()));
        }
    }
    steps
}

/// `Ok` when every dependency has a healthy instance on this node whose version is in
/// range; otherwise what is missing, for the instance's status.
pub fn dependency_gate(app: &AppSpec, statuses: &[InstanceStatus]) -> Result<(), String> {
    let mut missing = Vec::new();
    for d in &app.depends_on {
        let req = d.requirement();
        let ok = statuses.iter().any(|s| {
            s.app == d.app
                && s.state == InstanceState::Running
                && s.healthy != Some(false)
                && semver::Version::parse(&s.version).is_ok_and(|v| req.matches(&v))
        });
        if !ok {
            missing.push(format!("{} {}", d.app, req));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "waiting for {} to be healthy on this node",
            missing.join(", ")
        ))
    }
}

/// Backoff before restart number `restarts` (1-based): 1 s, 2 s, 4 s ... 60 s.
pub fn restart_backoff(restarts: u32) -> Duration {
    let exp = restarts.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP)
}

/// Whether `policy` restarts after `exit`.
pub fn should_restart(policy: RestartPolicy, success: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !success,
        RestartPolicy::Never => false,
    }
}

fn hash_json(v: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// The instances the App objects in the store ask for on `node`, with their Secret
/// references resolved from `secrets` (an App whose Secret or key is missing is not
/// started; its status says which).
pub fn wanted_instances(
    node: &str,
    apps: &[Object],
    secrets: &NodeSecrets,
) -> (BTreeMap<InstanceKey, Wanted>, Vec<InstanceStatus>) {
    let mut out = BTreeMap::new();
    let mut invalid = Vec::new();
    for o in apps {
        let Ok(app) = serde_json::from_value::<AppSpec>(o.spec.clone()) else {
            continue;
        };
        if app.workload.docker.is_none() && app.workload.native.is_none() {
            continue; // function-backed apps are the function runtime's
        }
        let resolved = match secrets.resolve(&app.secret_uses()) {
            Ok(r) => r,
            Err(e) => {
                invalid.push(InstanceStatus {
                    last_error: Some(format!("not started: {e}")),
                    ..InstanceStatus::new(
                        o.metadata.name.clone(),
                        0,
                        app.version.clone(),
                        InstanceState::Failed,
                    )
                });
                continue;
            }
        };
        let payload = match (&app.workload.docker, &app.workload.native) {
            (Some(d), _) => {
                let mut d = d.clone();
                d.env.extend(resolved.env);
                Payload::Docker(d)
            }
            (None, Some(n)) => {
                let mut n = n.clone();
                n.env.extend(resolved.env);
                Payload::Native(n)
            }
            _ => continue,
        };
        let replicas: u32 = o
            .metadata
            .annotations
            .get(ANNOTATION_REPLICAS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .min(verge_api::limits::MAX_REPLICAS_PER_NODE);
        let res = app.resources.clone().unwrap_or_default();
        let limits = Limits {
            cpu_millis: res.cpu_millis(),
            memory_bytes: res.memory_bytes(),
        };
        let registry_auth = resolved.registry;
        // A changed Secret replaces the instances using it (versions, never values).
        let spec_hash = if resolved.fingerprint.is_empty() {
            hash_json(&o.spec)
        } else {
            hash_json(&serde_json::json!([o.spec, resolved.fingerprint]))
        };
        for replica in 0..replicas {
            let key = InstanceKey {
                app: o.metadata.name.clone(),
                replica,
            };
            out.insert(
                key.clone(),
                Wanted {
                    spec: InstanceSpec {
                        key,
                        node: node.to_string(),
                        version: app.version.clone(),
                        payload: payload.clone(),
                        limits,
                        registry_auth: registry_auth.clone(),
                    },
                    app: app.clone(),
                    spec_hash,
                },
            );
        }
    }
    (out, invalid)
}

/// A supervised instance.
struct Slot {
    version: String,
    spec_hash: Option<u64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<InstanceStatus>>,
}

/// Shared between the manager and the supervisors.
struct Shared {
    state: Arc<EdgeState>,
    changed: Notify,
}

impl Shared {
    fn publish(&self) {
        self.changed.notify_one();
    }
}

pub struct Workloads {
    node: String,
    state: Arc<EdgeState>,
    native: Arc<NativeEngine>,
    /// Connected on first use (and retried): dockerd may start after the agent.
    docker: Arc<LazyDocker>,
    shared: Arc<Shared>,
}

fn blank_status(spec: &InstanceSpec) -> InstanceStatus {
    InstanceStatus::new(
        spec.key.app.clone(),
        spec.key.replica,
        spec.version.clone(),
        InstanceState::Preparing,
    )
}

fn enforcement_text(e: &Enforcement) -> String {
    match e {
        Enforcement::None => "none".into(),
        Enforcement::Cgroup(paths) => format!("cgroup: {}", paths.join(", ")),
        Enforcement::Rlimit(why) => format!("rlimit: {why}"),
    }
}

impl Workloads {
    pub fn new(state: Arc<EdgeState>, native: NativeEngine, docker: LazyDocker) -> Self {
        Self {
            node: state.node().to_string(),
            shared: Arc::new(Shared {
                state: state.clone(),
                changed: Notify::new(),
            }),
            state,
            native: Arc::new(native),
            docker: Arc::new(docker),
        }
    }

    /// The engines for a joined node: native apps under `DATA_DIR/apps` (artifacts
    /// fetched from the cloud with the node's certificate, `artifact.url`s through
    /// `outbound`, cgroups detected), and the Docker engine on `docker_socket` (default
    /// `DOCKER_HOST`, else /var/run/docker.sock) — or, when none answers, the reason
    /// Docker apps fail.
    pub async fn for_node(
        state: Arc<EdgeState>,
        identity: &crate::Identity,
        docker_socket: Option<&std::path::Path>,
        docker_network: Option<String>,
        outbound: verge_outbound::Client,
    ) -> crate::Result<Self> {
        use crate::engine::native::{Cgroups, Fetcher};
        let cgroups = Cgroups::detect(&identity.name);
        if let Cgroups::Unavailable(why) = &cgroups {
            tracing::warn!(%why, "cgroups unavailable: native apps get rlimits instead");
        }
        let native = NativeEngine::new(
            identity.data_dir.join("apps"),
            cgroups,
            Some(Fetcher::new(identity, outbound)?),
        );
        let docker = LazyDocker::new(
            docker_socket.map(std::path::Path::to_path_buf),
            docker_network,
        );
        if let Err(e) = docker.get().await {
            if cfg!(feature = "docker") {
                tracing::info!(error = %e, "no Docker engine yet: Docker apps wait for it");
            } else {
                tracing::info!(error = %e, "Docker apps cannot run on this node");
            }
        }
        Ok(Self::new(state, native, docker))
    }

    /// The instances the local store's Apps ask for (and those it cannot run, with
    /// why); `None` when the store cannot be read (logged).
    async fn read_wanted(&self) -> Option<(BTreeMap<InstanceKey, Wanted>, Vec<InstanceStatus>)> {
        let store = self.state.store().clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::Error>((store.list("App")?, store.list(SECRET_KIND)?))
        })
        .await
        .ok()?;
        match read {
            Ok((apps, secrets)) => Some(wanted_instances(
                &self.node,
                &apps,
                &NodeSecrets::from_objects(&secrets),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "could not read apps from the local store");
                None
            }
        }
    }

    /// Runs until `shutdown`; running instances are left running (a new agent adopts
    /// them).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut slots: BTreeMap<InstanceKey, Slot> = BTreeMap::new();
        // Adopt what runs from before, supervised with the store's spec when it still
        // wants that version (read once for all of them).
        let mut wanted = self.read_wanted().await.map(|w| w.0).unwrap_or_default();
        match self.native.adopt(&self.node).await {
            Ok(list) => {
                for a in list {
                    tracing::info!(app = %a.key, version = %a.version, "adopted a running native instance");
                    let w = wanted.remove(&a.key);
                    self.spawn_adopted(&mut slots, self.native.clone(), a, w);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for native instances to adopt"),
        }
        // Without a Docker engine now there is nothing running to adopt (restart
        // policy `no`: containers do not outlive their daemon).
        if let Ok(list) = self.docker.adopt(&self.node).await {
            for a in list {
                tracing::info!(app = %a.key, version = %a.version, "adopted a running container");
                let w = wanted.remove(&a.key);
                self.spawn_adopted(&mut slots, self.docker.clone(), a, w);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // Supervisors told to stop, until their instance is gone.
        let mut stopping: BTreeMap<InstanceKey, tokio::task::JoinHandle<()>> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.state.desired_changed() => {}
                _ = self.shared.changed.notified() => {}
                _ = shutdown.changed() => break,
            }
            let Some((wanted, invalid)) = self.read_wanted().await else {
                continue;
            };
            let running: BTreeMap<InstanceKey, Running> = slots
                .iter()
                .map(|(k, s)| {
                    (
                        k.clone(),
                        Running {
                            version: s.version.clone(),
                            spec_hash: s.spec_hash,
                        },
                    )
                })
                .collect();
            // Stops run in the background; an instance's replacement starts once its
            // predecessor is gone (same cgroup, same ports), others do not wait.
            stopping.retain(|_, task: &mut tokio::task::JoinHandle<()>| !task.is_finished());
            for step in plan(&wanted, &running) {
                match step {
                    Step::Stop(k) | Step::Replace(k) => {
                        if let Some(s) = slots.remove(&k) {
                            tracing::info!(instance = %k, version = %s.version, "stopping");
                            let _ = s.stop.send(true);
                            stopping.insert(k, s.task);
                        }
                    }
                    Step::Start(k) => {
                        if stopping.contains_key(&k) {
                            continue;
                        }
                        if let Some(w) = wanted.get(&k) {
                            self.spawn(&mut slots, w.clone());
                        }
                    }
                }
            }
            // Reap supervisors that ended (e.g. a policy that does not restart) only
            // when their app is gone; otherwise they stay as the record of the exit.
            let mut statuses: Vec<InstanceStatus> = slots
                .values()
                .filter_map(|s| s.status.lock().ok().map(|g| g.clone()))
                .collect();
            statuses.extend(invalid.iter().cloned());
            statuses.truncate(verge_proto::MAX_INSTANCES);
            // Within the protocol's bounds, or the cloud would drop the whole report.
            for st in &mut statuses {
                for text in [&mut st.last_error, &mut st.limits].into_iter().flatten() {
                    truncate_utf8(text, verge_proto::messages::MAX_CONDITION_MESSAGE);
                }
            }
            self.state.set_apps(statuses);
        }
        // The agent is going away, not the apps: supervision ends, instances keep
        // running for the next agent to adopt (stops already under way finish first).
        for (_, s) in slots {
            s.task.abort();
        }
        for (_, task) in stopping {
            let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(5), task).await;
        }
    }

    fn spawn(&self, slots: &mut BTreeMap<InstanceKey, Slot>, w: Wanted) {
        let status = Arc::new(Mutex::new(blank_status(&w.spec)));
        let (tx, rx) = watch::channel(false);
        let key = w.spec.key.clone();
        let version = w.spec.version.clone();
        let hash = w.spec_hash;
        let shared = self.shared.clone();
        let st = status.clone();
        // A Docker engine that does not answer (yet) fails `prepare`, which the
        // supervisor reports and retries on its backoff.
        let task = match &w.spec.payload {
            Payload::Native(_) => {
                let e = self.native.clone();
                tokio::spawn(supervised(e, w, None, st, shared, rx))
            }
            Payload::Docker(_) => {
                let e = self.docker.clone();
                tokio::spawn(supervised(e, w, None, st, shared, rx))
            }
        };
        slots.insert(
            key,
            Slot {
                version,
                spec_hash: Some(hash),
                stop: tx,
                task,
                status,
            },
        );
    }

    /// An adopted instance is supervised with its spec once the store's App is read;
    /// until then (and if the App is gone) `plan` stops or replaces it.
    fn spawn_adopted<E: Engine>(
        &self,
        slots: &mut BTreeMap<InstanceKey, Slot>,
        engine: Arc<E>,
        a: crate::engine::Adopted<E::Handle>,
        wanted: Option<Wanted>,
    ) {
        let wanted = wanted.filter(|w| w.spec.version == a.version);
        let status = Arc::new(Mutex::new(InstanceStatus::new(
            a.key.app.clone(),
            a.key.replica,
            a.version.clone(),
            InstanceState::Running,
        )));
        let (tx, rx) = watch::channel(false);
        let shared = self.shared.clone();
        let task = match wanted {
            Some(w) => tokio::spawn(supervised(
                engine,
                w,
                Some(a.handle),
                status.clone(),
                shared,
                rx,
            )),
            None => {
                // Not wanted (any more): stop it now.
                let h = a.handle;
                tokio::spawn(async move {
                    let _ = engine.stop(&h, STOP_GRACE).await;
                })
            }
        };
        slots.insert(
            a.key,
            Slot {
                version: a.version,
                spec_hash: None,
                stop: tx,
                task,
                status,
            },
        );
    }
}

/// `host:port` for a probe: IPv6 addresses in brackets.
pub fn probe_target(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Runs one health probe. `http` and `tcp` probes go to the instance's own address
/// ([`Engine::probe_address`], found once per start and kept in `address`), never to
/// whatever holds the port on the node.
async fn probe<E: Engine>(
    engine: &E,
    h: &E::Handle,
    hc: &HealthCheck,
    address: &mut Option<IpAddr>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(hc.timeout()));
    let port = match (&hc.http, &hc.tcp) {
        (Some(http), _) => Some(http.port),
        (None, Some(tcp)) => Some(tcp.port),
        (None, None) => None,
    };
    let target = match port {
        None => None,
        Some(port) => {
            let ip = match address {
                Some(ip) => *ip,
                None => {
                    let ip = engine.probe_address(h).await.map_err(|e| e.to_string())?;
                    *address = Some(ip);
                    ip
                }
            };
            Some(probe_target(ip, port))
        }
    };
    if let (Some(http), Some(target)) = (&hc.http, &target) {
        let url = format!("http://{target}{}", http.path.as_deref().unwrap_or("/"));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        return match client.get(&url).send().await {
            Ok(r) if r.status().as_u16() < 400 => Ok(()),
            Ok(r) => Err(format!("GET {url}: HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("GET {url}: {}", crate::error::chain(&e))),
        };
    }
    if let (Some(_), Some(addr)) = (&hc.tcp, &target) {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("tcp {addr}: {e}")),
            Err(_) => Err(format!("tcp {addr}: timed out")),
        };
    }
    if let Some(exec) = &hc.exec {
        return match engine.exec(h, &exec.command, timeout).await {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("exec {:?}: exit code {code}", exec.command)),
            Err(e) => Err(e.to_string()),
        };
    }
    Ok(())
}

/// [`supervise`], then wakes the manager (a replacement may be waiting for this one to
/// be gone).
async fn supervised<E: Engine>(
    engine: Arc<E>,
    w: Wanted,
    adopted: Option<E::Handle>,
    status: Arc<Mutex<InstanceStatus>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    supervise(engine, w, adopted, status, shared.clone(), stop).await;
    shared.publish();
}

/// Supervises one instance until told to stop (then stops it).
async fn supervise<E: Engine>(
    engine: Arc<E>,
    w: Wanted,
    adopted: Option<E::Handle>,
    status: Arc<Mutex<InstanceStatus>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let set = |f: &dyn Fn(&mut InstanceStatus)| {
        if let Ok(mut s) = status.lock() {
            f(&mut s);
        }
        shared.publish();
    };
    let policy = w.app.restart_policy.unwrap_or(RestartPolicy::Always);
    let mut adopted = adopted;
    let mut restarts: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let handle = if let Some(h) = adopted.take() {
            set(&|s| {
                s.state = InstanceState::Running;
                s.started_at_ms.get_or_insert(now_ms());
            });
            h
        } else {
            // Dependencies first.
            loop {
                let statuses = shared.state.apps();
                match dependency_gate(&w.app, &statuses) {
                    Ok(()) => break,
                    Err(why) => set(&|s| {
                        s.state = InstanceState::WaitingForDependency;
                        s.last_error = Some(why.clone());
                    }),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
            set(&|s| s.state = InstanceState::Preparing);
            let prepared = tokio::select! {
                r = engine.prepare(&w.spec) => r,
                _ = stop.changed() => return,
            };
            let started = match prepared {
                Ok(()) => engine.start(&w.spec).await,
                Err(e) => Err(e),
            };
            match started {
                Ok((h, enforcement)) => {
                    let text = enforcement_text(&enforcement);
                    set(&|s| {
                        s.state = InstanceState::Running;
                        s.healthy = None;
                        s.started_at_ms = Some(now_ms());
                        s.limits = Some(text.clone());
                    });
                    h
                }
                Err(e) if e.is_refused_artifact() => {
                    // The artifact's content is refused: no attempt can change that, so
                    // the version ends Failed here, reported once, until the App changes
                    // (a new spec replaces this supervisor).
                    let msg = e.to_string();
                    tracing::warn!(instance = %w.spec.key, error = %msg, "artifact refused; not retried");
                    set(&|s| {
                        s.state = InstanceState::Failed;
                        s.last_error = Some(msg.clone());
                    });
                    let _ = stop.changed().await;
                    return;
                }
                Err(e) => {
                    restarts += 1;
                    let msg = e.to_string();
                    tracing::warn!(instance = %w.spec.key, error = %msg, "could not start");
                    // Retried on the backoff either way; Failed once it keeps failing
                    // (a blip must not fail a rollout's health gate).
                    set(&|s| {
                        s.state = if restarts >= 3 {
                            InstanceState::Failed
                        } else {
                            InstanceState::Backoff
                        };
                        s.restarts = restarts;
                        s.last_error = Some(msg.clone());
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(restart_backoff(restarts)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        let started = Instant::now();
        let hc = w.app.health.clone();
        let mut failures = 0u32;
        // The instance's address for http/tcp probes, found at the first probe.
        let mut address: Option<IpAddr> = None;
        let mut next_probe = hc.as_ref().map(|h| {
            tokio::time::Instant::now() + Duration::from_secs(u64::from(h.initial_delay()))
        });
        let mut usage_tick = tokio::time::interval(Duration::from_secs(2));
        let mut log_cursor = crate::engine::LogCursor::default();
        let exit = loop {
            let probe_at = next_probe
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                e = engine.wait(&handle) => break Some(e),
                _ = tokio::time::sleep_until(probe_at), if next_probe.is_some() => {
                    let Some(h) = &hc else { continue };
                    match probe(engine.as_ref(), &handle, h, &mut address).await {
                        Ok(()) => {
                            failures = 0;
                            set(&|s| { s.healthy = Some(true); });
                        }
                        Err(why) => {
                            failures += 1;
                            if failures >= h.failure_threshold() {
                                set(&|s| {
                                    s.healthy = Some(false);
                                    s.last_error = Some(format!("health check failed {failures} times: {why}"));
                                });
                                break None;
                            }
                        }
                    }
                    next_probe = Some(tokio::time::Instant::now() + Duration::from_secs(u64::from(h.interval())));
                }
                _ = usage_tick.tick() => {
                    // New output goes to the cloud through the queue, then housekeeping
                    // (rotation) — in that order, so no line is skipped.
                    let lines = engine.read_logs(&handle, &mut log_cursor).await;
                    ship_logs(
                        &shared.state,
                        &format!("app/{}/{}", w.spec.key.app, w.spec.key.replica),
                        lines,
                    );
                    engine.maintain(&handle).await;
                    if let Some(u) = engine.usage(&handle).await
                        && let Ok(mut s) = status.lock()
                    {
                        s.cpu_millis = Some(u.cpu_millis);
                        s.memory_bytes = Some(u.memory_bytes);
                    }
                }
                _ = stop.changed() => {
                    let _ = engine.stop(&handle, STOP_GRACE).await;
                    return;
                }
            }
        };
        let success = match &exit {
            Some(e) => {
                let msg = e.message.clone();
                tracing::info!(instance = %w.spec.key, exit = %msg, "instance exited");
                set(&|s| {
                    s.last_error = (!msg.starts_with("exit code 0"))
                        .then(|| msg.clone())
                        .or(s.last_error.clone())
                });
                e.success()
            }
            None => false,
        };
        // Unhealthy, or exited: clean up the old one either way.
        let _ = engine.stop(&handle, STOP_GRACE).await;
        if started.elapsed() >= HEALTHY_RUN {
            restarts = 0;
        }
        if !should_restart(policy, success) {
            set(&|s| {
                s.state = if success {
                    InstanceState::Completed
                } else {
                    InstanceState::Failed
                };
            });
            let _ = stop.changed().await;
            return;
        }
        restarts += 1;
        let wait = restart_backoff(restarts);
        set(&|s| {
            s.state = InstanceState::Backoff;
            s.restarts = s.restarts.saturating_add(1);
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Queues an instance's new output for the cloud (`LogBatch`, source
/// `app/{app}/{replica}`), in batches within the protocol's bounds.
/// Queues `lines` for the cloud as `LogBatch`es from `source` (`app/{app}/{replica}`,
/// `fn/{name}/invocations`).
pub(crate) fn ship_logs(state: &EdgeState, source: &str, lines: Vec<verge_proto::LogLine>) {
    // Batches under the log channel's payload bound (with room for the JSON around).
    const BUDGET: usize = verge_proto::topics::MAX_LOG_PAYLOAD - 8 * 1024;
    let mut batch: Vec<verge_proto::LogLine> = Vec::new();
    let mut size = 0;
    let mut batches = Vec::new();
    for l in lines {
        let cost = l.line.len() * 2 + 64;
        if !batch.is_empty()
            && (size + cost > BUDGET || batch.len() >= verge_proto::messages::MAX_LOG_LINES)
        {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += cost;
        batch.push(l);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    for lines in batches {
        let msg = verge_proto::Message::LogBatch(verge_proto::LogBatch {
            source: source.to_string(),
            lines,
        });
        match verge_proto::encode_checked(&msg) {
            Ok(payload) => {
                if let Err(e) =
                    state
                        .queue()
                        .push(verge_proto::Channel::Log, &payload, crate::now_ms())
                {
                    tracing::warn!(%source, error = %e, "could not queue logs");
                }
            }
            Err(e) => tracing::warn!(%source, error = %e, "logs not sendable; dropped"),
        }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
}

/// The set of apps with an instance on this node (for tests and the local API).
pub fn app_names(statuses: &[InstanceStatus]) -> BTreeSet<String> {
    statuses.iter().map(|s| s.app.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_api::specs::Dependency;

    fn key(app: &str, r: u32) -> InstanceKey {
        InstanceKey {
            app: app.into(),
            replica: r,
        }
    }

    fn app(version: &str, deps: &[(&str, &str)]) -> AppSpec {
        let mut a: AppSpec = serde_json::from_value(serde_json::json!({
            "version": version, "workload": {"docker": {"image": "x"}}
        }))
        .unwrap();
        a.depends_on = deps
            .iter()
            .map(|(n, v)| Dependency {
                app: n.to_string(),
                version: Some(v.to_string()),
            })
            .collect();
        a
    }

    fn wanted(app_name: &str, r: u32, version: &str, hash: u64) -> (InstanceKey, Wanted) {
        let spec = InstanceSpec {
            key: key(app_name, r),
            node: "n".into(),
            version: version.into(),
            payload: Payload::Docker(
                serde_json::from_value(serde_json::json!({"image": "x"})).unwrap(),
            ),
            limits: Limits::default(),
            registry_auth: None,
        };
        (
            key(app_name, r),
            Wanted {
                spec,
                app: app(version, &[]),
                spec_hash: hash,
            },
        )
    }

    fn status(
        app: &str,
        version: &str,
        state: InstanceState,
        healthy: Option<bool>,
    ) -> InstanceStatus {
        InstanceStatus {
            healthy,
            ..InstanceStatus::new(app, 0, version, state)
        }
    }

    #[test]
    fn plan_starts_stops_and_replaces() {
        let want: BTreeMap<_, _> = [
            wanted("a", 0, "1.0.0", 1),
            wanted("b", 0, "2.0.0", 2),
            wanted("c", 0, "1.0.0", 3),
        ]
        .into();
        let running: BTreeMap<_, _> = [
            (
                key("a", 0),
                Running {
                    version: "1.0.0".into(),
                    spec_hash: Some(1),
                },
            ),
            (
                key("b", 0),
                Running {
                    version: "1.0.0".into(),
                    spec_hash: Some(2),
                },
            ),
            (
                key("c", 0),
                Running {
                    version: "1.0.0".into(),
                    spec_hash: Some(9),
                },
            ),
            (
                key("d", 0),
                Running {
                    version: "1.0.0".into(),
                    spec_hash: None,
                },
            ),
        ]
        .into();
        let steps = plan(&want, &running);
        assert_eq!(
            steps,
            vec![
                Step::Replace(key("b", 0)),
                Step::Replace(key("c", 0)),
                Step::Stop(key("d", 0))
            ]
        );
        // Adopted (hash unknown) with the same version is kept.
        let running: BTreeMap<_, _> = [(
            key("a", 0),
            Running {
                version: "1.0.0".into(),
                spec_hash: None,
            },
        )]
        .into();
        let want: BTreeMap<_, _> = [wanted("a", 0, "1.0.0", 1), wanted("a", 1, "1.0.0", 1)].into();
        assert_eq!(plan(&want, &running), vec![Step::Start(key("a", 1))]);
    }

    #[test]
    fn dependency_gate_needs_a_healthy_instance_in_range() {
        let web = app("1.0.0", &[("db", "^1.2")]);
        assert!(dependency_gate(&web, &[]).unwrap_err().contains("db ^1.2"));
        let old = status("db", "1.1.0", InstanceState::Running, Some(true));
        assert!(dependency_gate(&web, &[old]).is_err());
        let sick = status("db", "1.3.0", InstanceState::Running, Some(false));
        assert!(dependency_gate(&web, &[sick]).is_err());
        let starting = status("db", "1.3.0", InstanceState::Preparing, None);
        assert!(dependency_gate(&web, &[starting]).is_err());
        let good = status("db", "1.3.0", InstanceState::Running, Some(true));
        assert!(dependency_gate(&web, &[good]).is_ok());
        assert!(dependency_gate(&app("1.0.0", &[]), &[]).is_ok());
    }

    #[test]
    fn long_errors_are_cut_within_the_protocol_bound() {
        let mut s = "é".repeat(1000);
        truncate_utf8(&mut s, 1024);
        assert!(s.len() <= 1024 && s.ends_with("..."));
        let mut short = "ok".to_string();
        truncate_utf8(&mut short, 1024);
        assert_eq!(short, "ok");
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_policy_decides() {
        assert_eq!(restart_backoff(1), Duration::from_secs(1));
        assert_eq!(restart_backoff(2), Duration::from_secs(2));
        assert_eq!(restart_backoff(4), Duration::from_secs(8));
        assert_eq!(restart_backoff(30), Duration::from_secs(60));
        assert!(should_restart(RestartPolicy::Always, true));
        assert!(should_restart(RestartPolicy::OnFailure, false));
        assert!(!should_restart(RestartPolicy::OnFailure, true));
        assert!(!should_restart(RestartPolicy::Never, false));
    }

    #[test]
    fn replicas_come_from_the_annotation_and_auth_and_env_from_secrets() {
        let mut o: Object = serde_json::from_value(serde_json::json!({
            "apiVersion": "verge.io/v1", "kind": "App", "metadata": {"name": "web",
              "annotations": {"verge.dev/replicas": "2"}},
            "spec": {"version": "1.0.0", "workload": {"docker": {"image": "r/x:1",
                "env": {"PLAIN": "1"},
                "secretEnv": {"TOKEN": {"name": "creds", "key": "token"}},
                "registryAuth": {"name": "creds"}}}}
        }))
        .unwrap();
        let none = NodeSecrets::default();
        let (w, bad) = wanted_instances("n1", std::slice::from_ref(&o), &none);
        assert!(w.is_empty());
        let err = bad[0].last_error.as_ref().unwrap();
        assert!(
            err.contains("Secret \"creds\" not found on this node"),
            "{err}"
        );
        let secret = |version: &str, token: &str| -> Object {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "verge.dev/v1", "kind": "Secret",
                "metadata": {"name": "creds", "resourceVersion": version},
                "spec": {"data": {"username": "u", "password": "p", "token": token}}
            }))
            .unwrap()
        };
        let secrets = NodeSecrets::from_objects(&[secret("7", "t1")]);
        let (w, bad) = wanted_instances("n1", std::slice::from_ref(&o), &secrets);
        assert!(bad.is_empty());
        assert_eq!(w.len(), 2);
        let one = &w[&key("web", 1)];
        assert_eq!(one.spec.registry_auth.as_ref().unwrap().username, "u");
        let Payload::Docker(d) = &one.spec.payload else {
            panic!("docker payload")
        };
        assert_eq!(
            (d.env["PLAIN"].as_str(), d.env["TOKEN"].as_str()),
            ("1", "t1")
        );
        // A new version of the Secret is a new spec: the instances are replaced.
        let (w2, _) = wanted_instances(
            "n1",
            std::slice::from_ref(&o),
            &NodeSecrets::from_objects(&[secret("8", "t2")]),
        );
        assert_ne!(w2[&key("web", 1)].spec_hash, one.spec_hash);
        o.metadata.annotations.clear();
        assert_eq!(wanted_instances("n1", &[o], &none).1.len(), 1);
    }

    /// An engine whose `prepare` always fails with `error()`, counting the calls (an
    /// in-memory fake: what is under test is the supervisor's retry policy).
    struct FailingPrepare {
        calls: std::sync::atomic::AtomicU32,
        error: fn() -> crate::Error,
    }

    impl Engine for FailingPrepare {
        type Handle = ();
        async fn prepare(&self, _: &InstanceSpec) -> crate::Result<()> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err((self.error)())
        }
        async fn start(&self, _: &InstanceSpec) -> crate::Result<((), Enforcement)> {
            Err(crate::Error::Invalid("never prepared".into()))
        }
        async fn wait(&self, _: &()) -> crate::engine::Exit {
            std::future::pending().await
        }
        async fn stop(&self, _: &(), _: Duration) -> crate::Result<()> {
            Ok(())
        }
        async fn exec(&self, _: &(), _: &[String], _: Duration) -> crate::Result<i64> {
            Ok(0)
        }
        async fn usage(&self, _: &()) -> Option<crate::engine::Usage> {
            None
        }
        async fn adopt(&self, _: &str) -> crate::Result<Vec<crate::engine::Adopted<()>>> {
            Ok(Vec::new())
        }
        async fn logs(&self, _: &(), _: usize) -> crate::Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    /// Supervises one instance on `engine` for `run` of (paused, auto-advanced) time;
    /// returns the calls to `prepare` and the final status.
    async fn supervise_for(engine: Arc<FailingPrepare>, run: Duration) -> (u32, InstanceStatus) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::LocalStore::open(&dir.path().join("store.redb")).unwrap();
        let queue = crate::Queue::open(
            &dir.path().join("queue.redb"),
            crate::QueueConfig::default(),
        )
        .unwrap();
        let shared = Arc::new(Shared {
            state: Arc::new(EdgeState::new("n", store, queue)),
            changed: Notify::new(),
        });
        let (_, w) = wanted("web", 0, "1.0.0", 1);
        let status = Arc::new(Mutex::new(blank_status(&w.spec)));
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            engine.clone(),
            w,
            None,
            status.clone(),
            shared,
            rx,
        ));
        tokio::time::sleep(run).await;
        let st = status.lock().unwrap().clone();
        stop.send(true).unwrap();
        task.await.unwrap();
        (engine.calls.load(std::sync::atomic::Ordering::SeqCst), st)
    }

    /// A refused artifact ends the version: one attempt, `Failed` with the reason, no
    /// backoff loop (which would download it again each time). Other preparation
    /// errors keep being retried on the backoff.
    #[tokio::test(start_paused = true)]
    async fn a_refused_artifact_is_not_retried() {
        let refused = Arc::new(FailingPrepare {
            calls: Default::default(),
            error: || crate::Error::ArtifactRefused {
                sha256: "ab".repeat(32),
                reason: r#"entry "dev/null" is a character device"#.into(),
                remembered: false,
            },
        });
        let (calls, st) = supervise_for(refused, Duration::from_secs(600)).await;
        assert_eq!(calls, 1);
        assert_eq!(st.state, InstanceState::Failed);
        assert_eq!(st.restarts, 0);
        assert!(
            st.last_error
                .as_deref()
                .unwrap()
                .ends_with(r#"refused: entry "dev/null" is a character device"#),
            "{st:?}"
        );

        let transient = Arc::new(FailingPrepare {
            calls: Default::default(),
            error: || crate::Error::Http {
                url: "https://cloud".into(),
                message: "connection refused".into(),
            },
        });
        let (calls, st) = supervise_for(transient, Duration::from_secs(600)).await;
        assert!(calls >= 5, "retried on the backoff: {calls}");
        assert_eq!(st.state, InstanceState::Failed);
        assert!(st.restarts >= 5);
    }

    /// An engine whose instances live at `address` (what `probe_address` says).
    struct At {
        address: IpAddr,
    }

    impl Engine for At {
        type Handle = ();
        async fn prepare(&self, _: &InstanceSpec) -> crate::Result<()> {
            Ok(())
        }
        async fn start(&self, _: &InstanceSpec) -> crate::Result<((), Enforcement)> {
            Ok(((), Enforcement::None))
        }
        async fn wait(&self, _: &()) -> crate::engine::Exit {
            std::future::pending().await
        }
        async fn stop(&self, _: &(), _: Duration) -> crate::Result<()> {
            Ok(())
        }
        async fn exec(&self, _: &(), _: &[String], _: Duration) -> crate::Result<i64> {
            Ok(0)
        }
        async fn probe_address(&self, _: &()) -> crate::Result<IpAddr> {
            Ok(self.address)
        }
        async fn usage(&self, _: &()) -> Option<crate::engine::Usage> {
            None
        }
        async fn adopt(&self, _: &str) -> crate::Result<Vec<crate::engine::Adopted<()>>> {
            Ok(Vec::new())
        }
        async fn logs(&self, _: &(), _: usize) -> crate::Result<Vec<String>> {
            Ok(Vec::new())
        }
    }

    /// Answers every connection on `listener` with a minimal HTTP 200.
    fn serve_ok(listener: tokio::net::TcpListener) {
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
    }

    #[test]
    fn probe_targets() {
        assert_eq!(probe_target("10.1.0.7".parse().unwrap(), 80), "10.1.0.7:80");
        assert_eq!(probe_target("fd00::7".parse().unwrap(), 80), "[fd00::7]:80");
    }

    /// http and tcp probes dial the instance's own address: a server holding the same
    /// port on another address (the node's loopback) does not make it healthy.
    #[tokio::test]
    async fn probes_dial_the_instance_address_not_the_node_loopback() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Something of the node's on 127.0.0.1:PORT; the instance at 127.0.0.2.
        let node_side = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = node_side.local_addr().unwrap().port();
        serve_ok(node_side);
        let engine = At {
            address: "127.0.0.2".parse().unwrap(),
        };
        let http: HealthCheck = serde_json::from_value(serde_json::json!({
            "http": {"port": port, "path": "/"}, "timeoutSeconds": 2
        }))
        .unwrap();
        let tcp: HealthCheck = serde_json::from_value(serde_json::json!({
            "tcp": {"port": port}, "timeoutSeconds": 2
        }))
        .unwrap();
        for hc in [&http, &tcp] {
            let mut address = None;
            let e = probe(&engine, &(), hc, &mut address).await.unwrap_err();
            assert!(e.contains(&format!("127.0.0.2:{port}")), "{e}");
            assert_eq!(address, Some("127.0.0.2".parse().unwrap()));
        }
        // The instance itself serves the port: healthy.
        serve_ok(
            tokio::net::TcpListener::bind(("127.0.0.2", port))
                .await
                .unwrap(),
        );
        for hc in [&http, &tcp] {
            let mut address = None;
            assert_eq!(probe(&engine, &(), hc, &mut address).await, Ok(()));
        }
    }
}
