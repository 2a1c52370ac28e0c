//! The App controller on the one controller runtime ([`crate::controller`]): placement
//! ([`scheduler`]), gray release ([`rollout`]), dependency checks and autoscaling
//! ([`autoscale`]) are pure functions; [`decide`] puts them together for one App;
//! [`AppController`] is the reconcile around it, keyed by App name, and writes each
//! App's typed status ([`AppStatus`]). Which version (and spec) each node runs is
//! `status.rollout.nodes`; [`crate::nodes::sync`] turns it into desired state. An App
//! that references Secrets gets a `SecretsResolved` condition ([`secret_problem`]),
//! checked against the keys of the cached Secrets — no value is opened here.
//!
//! Work is proportional to change — nothing lists Apps or Nodes on a timer. An App is
//! reconciled when it changes; when a Node changes in a way the scheduler sees
//! ([`node_wakes`]: the apps placed on it, the apps whose selector takes it, the
//! unschedulable ones); when an App it depends on changes or another App's placement
//! frees or takes capacity ([`app_wakes`]); when a Secret it names changes
//! ([`secret_wakes`]); when its nodes report a change of its instances ([`Reports`]);
//! and, by `Action::requeue`, while a rollout step waits (health, pause) or the app
//! autoscales. Nodes, Apps and Secrets are read from the shared informer caches.

pub mod autoscale;
pub mod rollout;
pub mod scheduler;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use verge_api::specs::{AppSpec, ScaleMetric};
use verge_api::status::app::{AppInstance, AppStatus};
use verge_api::status::{Condition, ConditionStatus, set_condition};
use verge_api::{Kind, Object};
use verge_proto::{InstanceState, InstanceStatus};
use verge_store::DynStore;

use crate::controller::{Action, Cache, Change, Controller, Informers, backoff_policy};
use crate::error::ApiError;
use crate::objects::{kv_to_object, modify, object_key};
use rollout::{Commands, Inputs as RolloutInputs, Phase, RolloutState};
use scheduler::{Assignment, Count, NodeInfo, PlacementRule, Request};

/// Annotations the `verge rollout` commands set.
pub use verge_api::names::{
    ANNOTATION_PAUSED, ANNOTATION_PROMOTE, ANNOTATION_RESUME, ANNOTATION_ROLLBACK,
};

/// Usage-only status changes are written at most this often.
const USAGE_WRITE_INTERVAL_MS: i64 = 10_000;

/// How often an autoscaled app is evaluated.
const AUTOSCALE_EVERY: Duration = Duration::from_secs(1);

/// How long after start the controller waits for node reports before a missing one
/// can fail a rollout's deadline.
const WARM_UP: Duration = Duration::from_secs(30);

/// The latest instances each node reported (fed by the node manager). Each report
/// wakes the apps whose instances it changed: at once for a change of state, health,
/// version or restarts; for a change of usage alone at most once per
/// [`USAGE_WRITE_INTERVAL_MS`] per app.
#[derive(Default)]
pub struct Reports {
    inner: Mutex<ReportsInner>,
}

#[derive(Default)]
struct ReportsInner {
    by_node: HashMap<String, Vec<InstanceStatus>>,
    /// app → node → instances.
    by_app: HashMap<String, BTreeMap<String, Vec<InstanceStatus>>>,
    /// app → when a usage-only change last woke it.
    usage_woken: HashMap<String, tokio::time::Instant>,
    wake: Option<mpsc::UnboundedSender<String>>,
}

fn by_app(list: &[InstanceStatus]) -> BTreeMap<&str, Vec<InstanceStatus>> {
    let mut out: BTreeMap<&str, Vec<InstanceStatus>> = BTreeMap::new();
    for i in list {
        out.entry(i.app.as_str()).or_default().push(i.clone());
    }
    out
}

impl Reports {
    /// The names of apps whose reports changed are sent here from now on (to the App
    /// controller; a later call replaces the receiver).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().wake = Some(tx);
        rx
    }

    pub fn report(&self, node: &str, apps: &[InstanceStatus]) {
        let mut g = self.lock();
        let old = g
            .by_node
            .insert(node.to_string(), apps.to_vec())
            .unwrap_or_default();
        let (old, new) = (by_app(&old), by_app(apps));
        let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
        let now = tokio::time::Instant::now();
        for app in names {
            let wake = match (old.get(app), new.get(app)) {
                (Some(o), Some(n)) if o == n => false,
                (Some(o), Some(n)) if verge_proto::same_but_usage(o, n) => {
                    let due = g.usage_woken.get(app).is_none_or(|t| {
                        now.duration_since(*t).as_millis() as i64 >= USAGE_WRITE_INTERVAL_MS
                    });
                    if due {
                        g.usage_woken.insert(app.to_string(), now);
                    }
                    due
                }
                _ => true,
            };
            match new.get(app) {
                Some(list) => {
                    g.by_app
                        .entry(app.to_string())
                        .or_default()
                        .insert(node.to_string(), list.clone());
                }
                None => g.remove(app, node),
            }
            if wake {
                g.send(app);
            }
        }
    }

    /// The node is gone: its reports too (waking the apps it had).
    pub fn forget(&self, node: &str) {
        let mut g = self.lock();
        let old = g.by_node.remove(node).unwrap_or_default();
        let apps: BTreeSet<String> = old.into_iter().map(|i| i.app).collect();
        for app in &apps {
            g.remove(app, node);
            g.send(app);
        }
    }

    /// Node → the instances of `app` it reported.
    pub fn of_app(&self, app: &str) -> BTreeMap<String, Vec<InstanceStatus>> {
        self.lock().by_app.get(app).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReportsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReportsInner {
    fn remove(&mut self, app: &str, node: &str) {
        if let Some(m) = self.by_app.get_mut(app) {
            m.remove(node);
            if m.is_empty() {
                self.by_app.remove(app);
                self.usage_woken.remove(app);
            }
        }
    }

    fn send(&self, app: &str) {
        if let Some(tx) = &self.wake {
            let _ = tx.send(app.to_string());
        }
    }
}

/// What the controller remembers between reconciles.
#[derive(Default)]
struct Memory {
    /// App → unix ms of its last status write.
    written: HashMap<String, i64>,
    /// App → where its replicas are and what one requests: the capacity it takes from
    /// other apps, and which apps a Node change concerns. Loaded from the cached
    /// statuses at the first reconcile, then kept from each decision.
    placed: HashMap<String, (Assignment, Request)>,
    loaded: bool,
}

pub struct AppController {
    store: DynStore,
    reports: Arc<Reports>,
    apps: Arc<Cache>,
    nodes: Arc<Cache>,
    secrets: Arc<Cache>,
    memory: Arc<Mutex<Memory>>,
    /// Until then, node reports may not all be in (after a cloud restart).
    warm_at: tokio::time::Instant,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn node_info(o: &Object) -> NodeInfo {
    let st = verge_api::status::node::SchedulingView::of(&o.status);
    NodeInfo {
        name: o.metadata.name.clone(),
        labels: o.metadata.labels.clone(),
        arch: st.arch().to_string(),
        ready: st.is_ready(),
        cpu_millis: st
            .capacity("cpu")
            .and_then(verge_api::specs::parse_cpu_millis),
        memory_bytes: st
            .capacity("memory")
            .and_then(verge_api::specs::parse_memory_bytes),
        used_cpu_millis: 0,
        used_memory_bytes: 0,
    }
}

fn request_of(spec: &AppSpec) -> Request {
    let r = spec.resources.clone().unwrap_or_default();
    Request {
        cpu_millis: r.cpu_millis().unwrap_or(0),
        memory_bytes: r.memory_bytes().unwrap_or(0),
    }
}

/// Healthy replicas of an app, from its nodes' reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaCounts {
    /// Running (and not unhealthy) at the version their node is told to run, whichever
    /// it is: what serves now (`status.readyReplicas`; after a rollback, those of the
    /// version rolled back to).
    pub ready: u32,
    /// Of those, on the target version (`status.updatedReplicas`).
    pub updated: u32,
}

/// [`ReplicaCounts`] from the reports and the rollout's node → version assignment.
pub fn replica_counts(
    reports: &BTreeMap<String, Vec<verge_proto::InstanceStatus>>,
    st: &RolloutState,
) -> ReplicaCounts {
    let mut c = ReplicaCounts::default();
    for (node, list) in reports {
        let Some(assigned) = st.nodes.get(node) else {
            continue;
        };
        for i in list {
            let ok = i.state == InstanceState::Running && i.healthy != Some(false);
            if ok && &i.version == assigned {
                c.ready += 1;
                if i.version == st.target_version {
                    c.updated += 1;
                }
            }
        }
    }
    c
}

/// Problems with `dependsOn` across all apps: app → (reason, message).
pub fn dependency_problems(
    apps: &BTreeMap<String, AppSpec>,
) -> BTreeMap<String, (&'static str, String)> {
    let mut out = BTreeMap::new();
    for (name, spec) in apps {
        for d in &spec.depends_on {
            match apps.get(&d.app) {
                None => {
                    out.insert(
                        name.clone(),
                        (
                            "MissingDependency",
                            format!("dependsOn {}: no such app", d.app),
                        ),
                    );
                }
                Some(dep) => {
                    let ok = dep.semver().is_some_and(|v| d.requirement().matches(&v));
                    if !ok {
                        out.entry(name.clone()).or_insert((
                            "VersionMismatch",
                            format!(
                                "dependsOn {} {}: it is at {}",
                                d.app,
                                d.requirement(),
                                dep.version
                            ),
                        ));
                    }
                }
            }
        }
    }
    // Cycles: every app on a cycle gets the condition, naming the cycle.
    for start in apps.keys() {
        let mut path = vec![start.clone()];
        if let Some(cycle) = find_cycle(apps, start, &mut path, &mut BTreeSet::new()) {
            out.insert(
                start.clone(),
                (
                    "DependencyCycle",
                    format!("dependsOn cycle: {}", cycle.join(" -> ")),
                ),
            );
        }
    }
    out
}

/// The first `secretEnv` / `registryAuth` reference of `spec` that `secrets` (name →
/// keys) cannot satisfy, as a condition message naming the field, Secret and key.
pub fn secret_problem(
    spec: &AppSpec,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
) -> Option<String> {
    verge_api::specs::resolve(&spec.secret_uses(), |name| secrets.get(name)).err()
}

fn find_cycle(
    apps: &BTreeMap<String, AppSpec>,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let spec = apps.get(at)?;
    for d in &spec.depends_on {
        if d.app == path[0] {
            let mut c = path.clone();
            c.push(d.app.clone());
            return Some(c);
        }
        if path.contains(&d.app) || done.contains(&d.app) {
            continue;
        }
        path.push(d.app.clone());
        if let Some(c) = find_cycle(apps, &d.app, path, done) {
            return Some(c);
        }
        path.pop();
        done.insert(d.app.clone());
    }
    None
}

fn commands(o: &Object) -> Commands {
    let a = &o.metadata.annotations;
    Commands {
        paused: a.get(ANNOTATION_PAUSED).is_some_and(|v| v == "true"),
        promoted_step: a.get(ANNOTATION_PROMOTE).and_then(|v| v.parse().ok()),
        resume_seq: a
            .get(ANNOTATION_RESUME)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        rollback: a.get(ANNOTATION_ROLLBACK).is_some_and(|v| v == "true"),
    }
}

/// Whether `rule`'s selector and architectures take `n` (readiness and capacity
/// aside).
fn selects(spec: &AppSpec, n: &NodeInfo) -> bool {
    let p = spec.placement.clone().unwrap_or_default();
    p.node_selector
        .iter()
        .all(|(k, v)| n.labels.get(k) == Some(v))
        && (p.architectures.is_empty() || p.architectures.contains(&n.arch))
}

fn conditions_of(o: &Object) -> Vec<Condition> {
    serde_json::from_value(o.status["conditions"].clone()).unwrap_or_default()
}

fn unschedulable(o: &Object) -> bool {
    verge_api::status::is_true(&conditions_of(o), "Unschedulable")
}

/// Whether a Node change alters what the scheduler sees of the node (it came or went,
/// or its labels, architecture, readiness or capacity changed).
fn scheduling_changed(change: &Change) -> bool {
    change.old.as_deref().map(node_info) != change.new.as_deref().map(node_info)
}

/// The apps a Node change concerns: none when nothing the scheduler sees of the node
/// changed (a `lastSeen` write); else the apps placed on it (`placed`), the apps whose
/// selector takes it (before or after), and the unschedulable apps (their counts of
/// nodes that do not fit change).
pub fn node_wakes(
    change: &Change,
    apps: &[Arc<Object>],
    placed: &HashMap<String, (Assignment, Request)>,
) -> Vec<String> {
    if !scheduling_changed(change) {
        return Vec::new();
    }
    let old = change.old.as_deref().map(node_info);
    let new = change.new.as_deref().map(node_info);
    let mut out: BTreeSet<String> = placed
        .iter()
        .filter(|(_, (a, _))| a.contains_key(&change.name))
        .map(|(app, _)| app.clone())
        .collect();
    for o in apps {
        let Ok(spec) = serde_json::from_value::<AppSpec>(o.spec.clone()) else {
            continue;
        };
        let takes = old.iter().chain(new.iter()).any(|n| selects(&spec, n));
        if takes || unschedulable(o) {
            out.insert(o.metadata.name.clone());
        }
    }
    out.into_iter().collect()
}

/// The other apps an App change concerns: those that depend on it (directly or not)
/// when its spec changed or it came or went, and the unschedulable ones when its
/// placement changed (capacity was freed or taken). Its own status writes alone wake
/// nobody else.
pub fn app_wakes(change: &Change, apps: &[Arc<Object>]) -> Vec<String> {
    let spec = |o: &Option<Arc<Object>>| o.as_ref().map(|o| o.spec.clone());
    let placement = |o: &Option<Arc<Object>>| o.as_ref().map(|o| o.status["placement"].clone());
    let mut out = BTreeSet::new();
    if spec(&change.old) != spec(&change.new) {
        // Reverse dependencies, transitively.
        let deps: Vec<(String, Vec<String>)> = apps
            .iter()
            .filter_map(|o| {
                let s = serde_json::from_value::<AppSpec>(o.spec.clone()).ok()?;
                let d = s.depends_on.iter().map(|d| d.app.clone()).collect();
                Some((o.metadata.name.clone(), d))
            })
            .collect();
        let mut todo = vec![change.name.clone()];
        while let Some(at) = todo.pop() {
            for (app, d) in &deps {
                if d.contains(&at) && !out.contains(app) {
                    out.insert(app.clone());
                    todo.push(app.clone());
                }
            }
        }
    }
    if placement(&change.old) != placement(&change.new) {
        for o in apps {
            if unschedulable(o) {
                out.insert(o.metadata.name.clone());
            }
        }
    }
    out.remove(&change.name);
    out.into_iter().collect()
}

fn secret_keys_of(o: &Option<Arc<Object>>) -> Option<Vec<String>> {
    o.as_ref().map(|o| {
        o.spec["data"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    })
}

/// The apps a Secret change concerns: those that reference it, when its keys changed
/// (or it came or went). Values are not looked at.
pub fn secret_wakes(change: &Change, apps: &[Arc<Object>]) -> Vec<String> {
    if secret_keys_of(&change.old) == secret_keys_of(&change.new) {
        return Vec::new();
    }
    apps.iter()
        .filter(|o| {
            serde_json::from_value::<AppSpec>(o.spec.clone())
                .is_ok_and(|s| s.secret_uses().iter().any(|u| u.secret.name == change.name))
        })
        .map(|o| o.metadata.name.clone())
        .collect()
}

/// Everything [`decide`] looks at besides the App.
pub struct Inputs<'a> {
    /// Every node, with what the other apps placed there request already counted.
    pub nodes: &'a [NodeInfo],
    /// Node → its reported instances of this app.
    pub reports: &'a BTreeMap<String, Vec<InstanceStatus>>,
    /// This app's `dependsOn` problem (reason, message), if any.
    pub dependency: Option<&'a (&'static str, String)>,
    /// Secret name → its keys, for the Secrets the app references.
    pub secrets: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Node reports may still be missing (the controller just started).
    pub warming_up: bool,
    pub now_ms: i64,
    /// The same instant, RFC 3339 (condition transition times).
    pub now: &'a str,
}

/// What [`decide`] decides for one App.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: AppStatus,
    /// Look again after this long even if nothing changes (a rollout step waiting for
    /// health or pausing; autoscaling).
    pub requeue: Option<Duration>,
}

/// The pure rule: the App's next status (placement, rollout, instances, conditions,
/// autoscale) from its object, its spec and what [`Inputs`] says of the world.
pub fn decide(o: &Object, spec: &AppSpec, inp: &Inputs<'_>) -> Decision {
    let prev: AppStatus = serde_json::from_value(o.status.clone()).unwrap_or_default();
    let reports = inp.reports;
    let placement = spec.placement.clone().unwrap_or_default();
    // Autoscaling decides the replica count for `replicas` placement.
    let mut scale = None;
    let count = match (
        placement.replicas,
        placement.replicas_per_node,
        &spec.autoscale,
    ) {
        (_, _, Some(a)) => {
            let res = spec.resources.clone().unwrap_or_default();
            let (request, samples): (u64, Vec<u64>) = match a.metric {
                ScaleMetric::Cpu => (
                    res.cpu_millis().unwrap_or(0),
                    reports
                        .values()
                        .flatten()
                        .filter_map(|i| i.cpu_millis)
                        .collect(),
                ),
                ScaleMetric::Memory => (
                    res.memory_bytes().unwrap_or(0),
                    reports
                        .values()
                        .flatten()
                        .filter_map(|i| i.memory_bytes)
                        .collect(),
                ),
            };
            let prev_scale = prev.autoscale.clone().unwrap_or_default();
            let current = if prev_scale.replicas == 0 {
                placement
                    .replicas
                    .unwrap_or(a.min_replicas)
                    .clamp(a.min_replicas, a.max_replicas)
            } else {
                prev_scale.replicas
            };
            let rec = autoscale::recommend(
                current,
                &samples,
                request,
                a.target_percent,
                a.min_replicas,
                a.max_replicas,
            );
            let window = i64::from(a.stabilization_seconds.unwrap_or(60)) * 1000;
            let before = autoscale::ScaleState {
                replicas: current,
                history: prev_scale.history,
            };
            let next = autoscale::stabilize(&before, rec, inp.now_ms, window);
            let n = next.replicas;
            scale = Some(next);
            Count::Spread(n)
        }
        (Some(n), _, None) => Count::Spread(n),
        (None, Some(k), None) => Count::PerNode(k),
        (None, None, None) => Count::PerNode(1),
    };
    let rule = PlacementRule {
        node_selector: placement.node_selector.clone(),
        architectures: placement.architectures.clone(),
        count,
        request: request_of(spec),
    };
    let (assignment, unschedulable) = scheduler::schedule(&rule, inp.nodes, &prev.placement);
    let cmds = commands(o);
    let rollout_decision = rollout::reconcile(
        prev.rollout.as_ref(),
        &RolloutInputs {
            version: &spec.version,
            spec: &o.spec,
            strategy: &spec.rollout.clone().unwrap_or_default(),
            placement: &assignment,
            reports,
            commands: cmds,
            seen_resume_seq: prev.rollout_resume_seen,
            probed: spec.health.is_some(),
            warming_up: inp.warming_up,
            now_ms: inp.now_ms,
        },
    );
    let st = rollout_decision.state;

    // Instances, as reported, for nodes the app is on (or leaving).
    let counts = replica_counts(reports, &st);
    let mut instances = Vec::new();
    for (node, list) in reports {
        for i in list {
            instances.push(AppInstance {
                node: node.clone(),
                replica: i.replica,
                version: i.version.clone(),
                state: i.state.as_str().to_string(),
                health: match i.healthy {
                    Some(true) => "Healthy",
                    Some(false) => "Unhealthy",
                    None => "Unknown",
                }
                .to_string(),
                restarts: i.restarts,
                cpu_millis: i.cpu_millis,
                memory_bytes: i.memory_bytes,
                last_error: i.last_error.clone(),
                limits: i.limits.clone(),
                started_at_ms: i.started_at_ms,
            });
        }
    }
    let desired: u32 = assignment.values().sum();
    let cond = |t: &str, ok: bool, reason: &str, msg: &str| {
        Condition::new(t, ConditionStatus::from_bool(ok), reason, msg)
    };
    let mut fresh = vec![match &unschedulable {
        None => cond(
            "Scheduled",
            true,
            "Scheduled",
            &format!("{} nodes", assignment.len()),
        ),
        Some(u) => cond("Unschedulable", true, u.reason, &u.message),
    }];
    fresh.push(match inp.dependency {
        None => cond("DependenciesResolved", true, "Resolved", ""),
        Some((reason, msg)) => cond("DependenciesResolved", false, reason, msg),
    });
    if !spec.secret_uses().is_empty() {
        fresh.push(match secret_problem(spec, inp.secrets) {
            None => cond("SecretsResolved", true, "Resolved", ""),
            Some(msg) => cond("SecretsResolved", false, "MissingSecret", &msg),
        });
    }
    fresh.push(cond(
        "Available",
        desired > 0 && counts.ready >= desired,
        if st.phase == Phase::Complete {
            "Complete"
        } else {
            st.phase.as_str()
        },
        &st.message,
    ));
    // The conditions of now, each keeping its transition time while its status stays.
    let mut conditions = Vec::new();
    for c in fresh {
        let mut one: Vec<Condition> = verge_api::status::find(&prev.conditions, &c.type_)
            .cloned()
            .into_iter()
            .collect();
        set_condition(&mut one, c, inp.now);
        conditions.extend(one);
    }
    let steps = spec.rollout.clone().unwrap_or_default().effective_steps();
    let percent = steps.get(st.step).map_or(100, |s| s.percent);
    // Waiting for replicas on no node at all: only a change (a node, a spec) can help.
    let mut requeue = match assignment.is_empty() {
        true => None,
        false => rollout_decision.requeue_ms.map(Duration::from_millis),
    };
    if scale.is_some() {
        requeue = Some(requeue.map_or(AUTOSCALE_EVERY, |d| d.min(AUTOSCALE_EVERY)));
    }
    let status = AppStatus {
        observed_generation: o.metadata.generation,
        version: st.serving_version().to_string(),
        target_version: st.target_version.clone(),
        phase: st.phase,
        replicas: desired,
        ready_replicas: counts.ready,
        updated_replicas: counts.updated,
        step: format!("{}/{} ({}%)", st.step + 1, st.steps, percent),
        placement: assignment,
        rollout: Some(st),
        rollout_resume_seen: cmds.resume_seq,
        instances,
        conditions,
        autoscale: scale,
    };
    Decision { status, requeue }
}

/// Whether to write a new status now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Now,
    /// Only usage changed and the last write was recent: write after this long.
    After(Duration),
    No,
}

/// A significant change is written at once; a change of usage alone at most once per
/// [`USAGE_WRITE_INTERVAL_MS`] (`last`: when this app's status was last written).
pub fn write_due(prev: &AppStatus, next: &AppStatus, last: Option<i64>, now_ms: i64) -> Write {
    if next == prev {
        return Write::No;
    }
    if next.significant() != prev.significant() {
        return Write::Now;
    }
    match last {
        Some(t) if now_ms - t < USAGE_WRITE_INTERVAL_MS => Write::After(Duration::from_millis(
            (USAGE_WRITE_INTERVAL_MS - (now_ms - t)) as u64,
        )),
        _ => Write::Now,
    }
}

impl AppController {
    pub fn new(store: DynStore, reports: Arc<Reports>, informers: &Informers) -> Self {
        Self {
            store,
            reports,
            apps: informers.cache(Kind::App),
            nodes: informers.cache(Kind::Node),
            secrets: informers.cache(Kind::Secret),
            memory: Arc::new(Mutex::new(Memory::default())),
            warm_at: tokio::time::Instant::now() + WARM_UP,
        }
    }

    /// Runs the controller until `shutdown` flips: keyed by App name, woken as the
    /// module doc says.
    pub async fn run(
        self: Arc<Self>,
        informers: Arc<Informers>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let wake = self.reports.subscribe();
        let (apps, memory) = (self.apps.clone(), self.memory.clone());
        let on_node = move |c: &Change| {
            // Most Node changes are `lastSeen` writes: decided before anything is read.
            if !scheduling_changed(c) {
                return Vec::new();
            }
            let list = apps.list();
            let m = memory.lock().unwrap_or_else(|e| e.into_inner());
            node_wakes(c, &list, &m.placed)
        };
        let apps = self.apps.clone();
        let on_app = move |c: &Change| app_wakes(c, &apps.list());
        let apps = self.apps.clone();
        let on_secret = move |c: &Change| secret_wakes(c, &apps.list());
        Controller::new("apps", informers)
            .for_kind(Kind::App)
            .watches(Kind::Node, on_node)
            .watches(Kind::App, on_app)
            .watches(Kind::Secret, on_secret)
            .wakeups(wake)
            .run(
                |req: crate::controller::Request, this: Arc<Self>| async move {
                    this.reconcile(&req.key, req.object.is_some()).await
                },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, name: &str) {
        let mut m = self.memory();
        m.written.remove(name);
        m.placed.remove(name);
    }

    /// One App: decide, remember its placement, write its status when due.
    async fn reconcile(&self, name: &str, exists: bool) -> Result<Action, ApiError> {
        // The App is read from the store, not the cache: the cache may not yet show
        // this controller's own last write.
        let key = object_key(Kind::App, name);
        let kv = match exists {
            true => self.store.get(&key).await?,
            false => None,
        };
        let Some(kv) = kv else {
            self.forget(name);
            return Ok(Action::await_change());
        };
        let o = kv_to_object(&kv)?;
        let Ok(spec) = serde_json::from_value::<AppSpec>(o.spec.clone()) else {
            // Validation keeps such specs out; one is left alone.
            return Ok(Action::await_change());
        };
        let nodes = self.node_infos(name);
        let reports = self.reports.of_app(name);
        let dependency = self.dependency_problem(name, &spec);
        let secrets = self.secret_keys(&spec);
        let now_ms = now_ms();
        let now = crate::auth::now_rfc3339();
        let d = decide(
            &o,
            &spec,
            &Inputs {
                nodes: &nodes,
                reports: &reports,
                dependency: dependency.as_ref(),
                secrets: &secrets,
                warming_up: tokio::time::Instant::now() < self.warm_at,
                now_ms,
                now: &now,
            },
        );
        let prev: AppStatus = serde_json::from_value(o.status.clone()).unwrap_or_default();
        let last = {
            let mut m = self.memory();
            m.placed.insert(
                name.to_string(),
                (d.status.placement.clone(), request_of(&spec)),
            );
            m.written.get(name).copied()
        };
        let mut requeue = d.requeue;
        match write_due(&prev, &d.status, last, now_ms) {
            Write::No => {}
            Write::After(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
            Write::Now => {
                let status = serde_json::to_value(&d.status).map_err(ApiError::internal)?;
                let generation = o.metadata.generation;
                let r = modify(
                    &self.store,
                    Kind::App,
                    &key,
                    name,
                    Some(kv.mod_revision),
                    |cur| {
                        let mut next = cur.clone();
                        // Only this generation's decision (a spec change meanwhile wakes
                        // the app again).
                        if cur.metadata.generation == generation {
                            next.status = status.clone();
                        }
                        Ok(next)
                    },
                )
                .await;
                match r {
                    Ok(_) => {
                        self.memory().written.insert(name.to_string(), now_ms);
                    }
                    Err(e) if e.reason == verge_api::Reason::NotFound => {
                        self.forget(name);
                        return Ok(Action::await_change());
                    }
                    // Changed meanwhile (an annotation, a spec): decide again on it.
                    Err(e) if e.reason == verge_api::Reason::Conflict => {
                        return Ok(Action::requeue(Duration::ZERO));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(requeue.map_or(Action::await_change(), Action::requeue))
    }

    /// Every cached node, with the requests of the other apps placed there counted.
    fn node_infos(&self, name: &str) -> Vec<NodeInfo> {
        let mut used: HashMap<String, Request> = HashMap::new();
        {
            let mut m = self.memory();
            if !m.loaded {
                for o in self.apps.list() {
                    let Ok(spec) = serde_json::from_value::<AppSpec>(o.spec.clone()) else {
                        continue;
                    };
                    let st: AppStatus =
                        serde_json::from_value(o.status.clone()).unwrap_or_default();
                    m.placed
                        .entry(o.metadata.name.clone())
                        .or_insert((st.placement, request_of(&spec)));
                }
                m.loaded = true;
            }
            for (app, (a, req)) in &m.placed {
                if app == name {
                    continue;
                }
                for (n, k) in a {
                    let u = used.entry(n.clone()).or_default();
                    u.cpu_millis += req.cpu_millis * u64::from(*k);
                    u.memory_bytes += req.memory_bytes * u64::from(*k);
                }
            }
        }
        self.nodes
            .list()
            .iter()
            .map(|o| {
                let mut n = node_info(o);
                if let Some(u) = used.get(&n.name) {
                    n.used_cpu_millis = u.cpu_millis;
                    n.used_memory_bytes = u.memory_bytes;
                }
                n
            })
            .collect()
    }

    /// `name`'s `dependsOn` problem, from the apps it reaches (cached specs).
    fn dependency_problem(&self, name: &str, spec: &AppSpec) -> Option<(&'static str, String)> {
        let mut specs = BTreeMap::from([(name.to_string(), spec.clone())]);
        let mut todo: Vec<String> = spec.depends_on.iter().map(|d| d.app.clone()).collect();
        while let Some(app) = todo.pop() {
            if specs.contains_key(&app) {
                continue;
            }
            let Some(o) = self.apps.get(&app) else {
                continue;
            };
            if let Ok(s) = serde_json::from_value::<AppSpec>(o.spec.clone()) {
                todo.extend(s.depends_on.iter().map(|d| d.app.clone()));
                specs.insert(app, s);
            }
        }
        dependency_problems(&specs).remove(name)
    }

    /// Name → keys of the Secrets `spec` references (values left sealed and unread).
    fn secret_keys(&self, spec: &AppSpec) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for u in spec.secret_uses() {
            if let Some(keys) = secret_keys_of(&self.secrets.get(&u.secret.name)) {
                out.insert(
                    u.secret.name.clone(),
                    keys.into_iter().map(|k| (k, String::new())).collect(),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use verge_api::specs::Dependency;

    fn app(version: &str, deps: &[(&str, Option<&str>)]) -> AppSpec {
        let mut s: AppSpec = serde_json::from_value(json!({
            "version": version,
            "workload": {"docker": {"image": "x"}},
        }))
        .unwrap();
        s.depends_on = deps
            .iter()
            .map(|(a, v)| Dependency {
                app: a.to_string(),
                version: v.map(str::to_string),
            })
            .collect();
        s
    }

    #[test]
    fn ready_replicas_are_those_serving_what_their_node_is_told_to_run() {
        use verge_proto::InstanceStatus;
        let inst = |v: &str, healthy: Option<bool>, state| InstanceStatus {
            healthy,
            ..InstanceStatus::new("web", 0, v, state)
        };
        let running = InstanceState::Running;
        // 1.2.0 was rolled back: both nodes are told 1.1.0 and serve it healthily.
        let mut st = RolloutState {
            phase: rollout::Phase::RolledBack,
            target_version: "1.2.0".into(),
            stable_version: Some("1.1.0".into()),
            nodes: BTreeMap::from([
                ("a".to_string(), "1.1.0".to_string()),
                ("b".to_string(), "1.1.0".to_string()),
            ]),
            ..Default::default()
        };
        let reports = BTreeMap::from([
            (
                "a".to_string(),
                // The failed canary still stopping beside its replacement.
                vec![
                    inst("1.1.0", Some(true), running),
                    inst("1.2.0", Some(false), running),
                ],
            ),
            ("b".to_string(), vec![inst("1.1.0", Some(true), running)]),
            // A node the app is not on any more.
            ("c".to_string(), vec![inst("1.1.0", Some(true), running)]),
        ]);
        assert_eq!(
            replica_counts(&reports, &st),
            ReplicaCounts {
                ready: 2,
                updated: 0
            }
        );
        assert_eq!(st.serving_version(), "1.1.0");
        // Mid-rollout: a is the canary on 1.2.0 (healthy), b still on 1.1.0.
        st.phase = rollout::Phase::Progressing;
        st.nodes.insert("a".into(), "1.2.0".into());
        let reports = BTreeMap::from([
            ("a".to_string(), vec![inst("1.2.0", Some(true), running)]),
            (
                "b".to_string(),
                vec![inst("1.1.0", None, InstanceState::Backoff)],
            ),
        ]);
        assert_eq!(
            replica_counts(&reports, &st),
            ReplicaCounts {
                ready: 1,
                updated: 1
            }
        );
    }

    #[test]
    fn secret_references_are_checked_against_the_keys_of_stored_secrets() {
        let spec: AppSpec = serde_json::from_value(json!({
            "version": "1.0.0",
            "workload": {"native": {"artifact": {"sha256": "a".repeat(64)}, "command": "run",
                "secretEnv": {"DB": {"name": "db", "key": "password"}}}},
        }))
        .unwrap();
        let keys = |k: &str| BTreeMap::from([(k.to_string(), String::new())]);
        assert_eq!(
            secret_problem(&spec, &BTreeMap::new()).unwrap(),
            "spec.workload.native.secretEnv.DB: Secret \"db\" not found"
        );
        let wrong = BTreeMap::from([("db".to_string(), keys("user"))]);
        assert!(
            secret_problem(&spec, &wrong)
                .unwrap()
                .ends_with("has no key \"password\"")
        );
        let right = BTreeMap::from([("db".to_string(), keys("password"))]);
        assert_eq!(secret_problem(&spec, &right), None);
        assert_eq!(secret_problem(&app("1.0.0", &[]), &BTreeMap::new()), None);
    }

    #[test]
    fn missing_dependencies_version_mismatch_and_cycles_are_reported() {
        let apps = BTreeMap::from([
            ("db".to_string(), app("1.4.0", &[])),
            ("web".to_string(), app("1.0.0", &[("db", Some("^1.2"))])),
            ("api".to_string(), app("1.0.0", &[("db", Some("^2"))])),
            ("orphan".to_string(), app("1.0.0", &[("ghost", None)])),
            ("a".to_string(), app("1.0.0", &[("b", None)])),
            ("b".to_string(), app("1.0.0", &[("c", None)])),
            ("c".to_string(), app("1.0.0", &[("a", None)])),
        ]);
        let p = dependency_problems(&apps);
        assert!(!p.contains_key("web") && !p.contains_key("db"));
        assert_eq!(p["api"].0, "VersionMismatch");
        assert_eq!(
            p["orphan"],
            ("MissingDependency", "dependsOn ghost: no such app".into())
        );
        assert_eq!(
            p["a"],
            (
                "DependencyCycle",
                "dependsOn cycle: a -> b -> c -> a".into()
            )
        );
        assert_eq!(p["b"].0, "DependencyCycle");
        assert_eq!(p["c"].0, "DependencyCycle");
    }

    fn obj(
        kind: Kind,
        name: &str,
        generation: i64,
        labels: Value,
        spec: Value,
        status: Value,
    ) -> Object {
        serde_json::from_value(json!({
            "apiVersion": verge_api::API_VERSION, "kind": kind.name(),
            "metadata": {"name": name, "generation": generation, "labels": labels},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn node(name: &str, site: &str) -> Object {
        obj(
            Kind::Node,
            name,
            1,
            json!({"site": site}),
            json!({}),
            json!({"phase": "Ready", "nodeInfo": {"arch": "x86_64"}, "lastSeen": "t0"}),
        )
    }

    fn app_obj(name: &str, spec: Value) -> Object {
        obj(Kind::App, name, 1, json!({}), spec, Value::Null)
    }

    fn change(kind: Kind, old: Option<Object>, new: Option<Object>) -> Change {
        let name = old
            .as_ref()
            .or(new.as_ref())
            .map(|o| o.metadata.name.clone())
            .unwrap();
        Change {
            kind,
            name,
            old: old.map(Arc::new),
            new: new.map(Arc::new),
        }
    }

    fn docker(version: &str, extra: Value) -> Value {
        let mut v = json!({"version": version, "workload": {"docker": {"image": "x"}}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        v
    }

    #[test]
    fn a_node_change_wakes_only_the_apps_it_concerns() {
        let apps = vec![
            Arc::new(app_obj(
                "edge-a",
                docker(
                    "1.0.0",
                    json!({"placement": {"nodeSelector": {"site": "a"}}}),
                ),
            )),
            Arc::new(app_obj(
                "edge-b",
                docker(
                    "1.0.0",
                    json!({"placement": {"nodeSelector": {"site": "b"}}}),
                ),
            )),
            Arc::new(app_obj(
                "arm",
                docker(
                    "1.0.0",
                    json!({"placement": {"architectures": ["aarch64"]}}),
                ),
            )),
        ];
        let placed = HashMap::from([(
            "arm".to_string(),
            (
                Assignment::from([("n1".to_string(), 1)]),
                Request::default(),
            ),
        )]);
        let n1 = node("n1", "x");
        let mut relabelled = n1.clone();
        relabelled.metadata.labels.insert("site".into(), "a".into());
        // The label now matches edge-a's selector; arm is placed there (memory).
        assert_eq!(
            node_wakes(
                &change(Kind::Node, Some(n1.clone()), Some(relabelled)),
                &apps,
                &placed
            ),
            vec!["arm".to_string(), "edge-a".to_string()]
        );
        // A lastSeen write changes nothing the scheduler sees: nobody wakes.
        let mut seen = n1.clone();
        seen.status["lastSeen"] = json!("t1");
        assert!(
            node_wakes(
                &change(Kind::Node, Some(n1.clone()), Some(seen)),
                &apps,
                &placed
            )
            .is_empty()
        );
        // A new node of site b wakes edge-b only; an unschedulable app wakes too.
        let mut stuck = app_obj(
            "stuck",
            docker(
                "1.0.0",
                json!({"placement": {"nodeSelector": {"site": "z"}}}),
            ),
        );
        stuck.status = json!({"conditions": [{"type": "Unschedulable", "status": "True",
            "reason": "NoMatchingNodes", "message": ""}]});
        let mut apps = apps;
        apps.push(Arc::new(stuck));
        assert_eq!(
            node_wakes(
                &change(Kind::Node, None, Some(node("n2", "b"))),
                &apps,
                &HashMap::new()
            ),
            vec!["edge-b".to_string(), "stuck".to_string()]
        );
    }

    #[test]
    fn an_app_change_wakes_its_dependents_and_a_secret_change_its_users() {
        let apps: Vec<Arc<Object>> = vec![
            Arc::new(app_obj("db", docker("1.0.0", json!({})))),
            Arc::new(app_obj(
                "api",
                docker("1.0.0", json!({"dependsOn": [{"app": "db"}]})),
            )),
            Arc::new(app_obj(
                "web",
                docker("1.0.0", json!({"dependsOn": [{"app": "api"}]})),
            )),
            Arc::new(app_obj("lone", docker("1.0.0", json!({})))),
        ];
        let db = app_obj("db", docker("1.0.0", json!({})));
        let mut db2 = db.clone();
        db2.spec["version"] = json!("2.0.0");
        assert_eq!(
            app_wakes(&change(Kind::App, Some(db.clone()), Some(db2)), &apps),
            vec!["api".to_string(), "web".to_string()]
        );
        // Its own status write (same spec, same placement) wakes nobody else.
        let mut written = db.clone();
        written.status = json!({"phase": "Complete"});
        assert!(app_wakes(&change(Kind::App, Some(db.clone()), Some(written)), &apps).is_empty());

        let user = app_obj(
            "user",
            json!({"version": "1.0.0", "workload": {"native": {
            "artifact": {"sha256": "a".repeat(64)}, "command": "run",
            "secretEnv": {"DB": {"name": "db-pass", "key": "password"}}}}}),
        );
        let apps = vec![Arc::new(user), Arc::new(db)];
        let secret = |keys: Value| {
            obj(
                Kind::Secret,
                "db-pass",
                1,
                json!({}),
                json!({"data": keys}),
                Value::Null,
            )
        };
        let s1 = secret(json!({"password": "sealed1"}));
        assert_eq!(
            secret_wakes(&change(Kind::Secret, None, Some(s1.clone())), &apps),
            vec!["user".to_string()]
        );
        // A new value under the same keys changes no app's status.
        let s2 = secret(json!({"password": "sealed2"}));
        assert!(secret_wakes(&change(Kind::Secret, Some(s1), Some(s2)), &apps).is_empty());
    }

    #[test]
    fn usage_alone_is_written_at_most_once_per_interval() {
        let inst = |cpu| AppInstance {
            node: "n1".into(),
            state: "Running".into(),
            cpu_millis: Some(cpu),
            ..Default::default()
        };
        let a = AppStatus {
            instances: vec![inst(10)],
            ..Default::default()
        };
        let b = AppStatus {
            instances: vec![inst(20)],
            ..Default::default()
        };
        assert_eq!(write_due(&a, &a, None, 0), Write::No);
        assert_eq!(write_due(&a, &b, None, 0), Write::Now);
        assert_eq!(
            write_due(&a, &b, Some(4_000), 10_000),
            Write::After(Duration::from_millis(4_000))
        );
        assert_eq!(write_due(&a, &b, Some(0), 10_000), Write::Now);
        let moved = AppStatus {
            replicas: 1,
            ..a.clone()
        };
        assert_eq!(write_due(&a, &moved, Some(9_999), 10_000), Write::Now);
    }

    mod on_mem_store {
        use super::*;
        use verge_store::MemStore;

        struct Env {
            store: DynStore,
            reports: Arc<Reports>,
            c: AppController,
            _stop: tokio::sync::watch::Sender<bool>,
        }

        async fn put(store: &DynStore, o: &Object) {
            let key = object_key(Kind::from_kind_name(&o.kind).unwrap(), &o.metadata.name);
            let bytes = crate::objects::encode_for_store(o).unwrap();
            match store.get(&key).await.unwrap() {
                Some(_) => {
                    store
                        .update(
                            &key,
                            bytes,
                            o.metadata.labels.clone(),
                            verge_store::Expect::Any,
                        )
                        .await
                        .unwrap();
                }
                None => {
                    store
                        .create(&key, bytes, o.metadata.labels.clone())
                        .await
                        .unwrap();
                }
            }
        }

        async fn env(objects: &[Object]) -> Env {
            let store: DynStore = Arc::new(MemStore::new());
            for o in objects {
                put(&store, o).await;
            }
            let (stop, rx) = tokio::sync::watch::channel(false);
            let informers = Informers::new(store.clone(), rx);
            let reports = Arc::new(Reports::default());
            let c = AppController::new(store.clone(), reports.clone(), &informers);
            for k in [Kind::App, Kind::Node, Kind::Secret] {
                informers.cache(k).wait_synced().await;
            }
            Env {
                store,
                reports,
                c,
                _stop: stop,
            }
        }

        impl Env {
            async fn app(&self, name: &str) -> (Object, i64) {
                let kv = self
                    .store
                    .get(&object_key(Kind::App, name))
                    .await
                    .unwrap()
                    .unwrap();
                (kv_to_object(&kv).unwrap(), kv.mod_revision)
            }

            fn running(&self, node: &str, app: &str, version: &str) {
                self.reports.report(
                    node,
                    &[InstanceStatus::new(app, 0, version, InstanceState::Running)],
                );
            }
        }

        fn status(o: &Object) -> AppStatus {
            serde_json::from_value(o.status.clone()).unwrap()
        }

        #[tokio::test(start_paused = true)]
        async fn an_app_with_nothing_to_do_awaits_change_and_does_not_write() {
            let e = env(&[node("n1", "a"), app_obj("web", docker("1.0.0", json!({})))]).await;
            // Placed, first version to every node, waiting for its replica.
            let a = e.c.reconcile("web", true).await.unwrap();
            assert_eq!(a, Action::requeue(Duration::from_secs(1)));
            let (o, _) = e.app("web").await;
            let st = status(&o);
            assert_eq!(st.placement, Assignment::from([("n1".to_string(), 1)]));
            assert_eq!(st.phase, Phase::Progressing);
            assert_eq!(st.observed_generation, Some(1));
            // The replica runs: complete, written with its condition times.
            e.running("n1", "web", "1.0.0");
            assert_eq!(
                e.c.reconcile("web", true).await.unwrap(),
                Action::await_change()
            );
            let (o, rev) = e.app("web").await;
            let st = status(&o);
            assert_eq!(
                (st.phase, st.ready_replicas, st.version.as_str()),
                (Phase::Complete, 1, "1.0.0")
            );
            let available = verge_api::status::find(&st.conditions, "Available")
                .unwrap()
                .clone();
            assert!(available.is_true() && available.last_transition_time.is_some());
            // Its own write woke it again: nothing changed, nothing written.
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(
                e.c.reconcile("web", true).await.unwrap(),
                Action::await_change()
            );
            let (o, rev2) = e.app("web").await;
            assert_eq!(rev, rev2);
            assert_eq!(
                verge_api::status::find(&status(&o).conditions, "Available"),
                Some(&available)
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_rollout_step_requeues_after_its_pause() {
            let spec = |v: &str| {
                docker(
                    v,
                    json!({"rollout": {"steps": [
                {"percent": 50, "pause": "30s"}, {"percent": 100}]}}),
                )
            };
            let e = env(&[
                node("n1", "a"),
                node("n2", "a"),
                app_obj("web", spec("1.0.0")),
            ])
            .await;
            e.c.reconcile("web", true).await.unwrap();
            e.running("n1", "web", "1.0.0");
            e.running("n2", "web", "1.0.0");
            assert_eq!(
                e.c.reconcile("web", true).await.unwrap(),
                Action::await_change()
            );
            // A new version: n1 is the canary, waiting for health.
            let mut next = app_obj("web", spec("1.1.0"));
            next.metadata.generation = Some(2);
            next.status = e.app("web").await.0.status;
            put(&e.store, &next).await;
            assert_eq!(
                e.c.reconcile("web", true).await.unwrap(),
                Action::requeue(Duration::from_secs(1))
            );
            let st = status(&e.app("web").await.0);
            let nodes = st.rollout.as_ref().unwrap().nodes.clone();
            assert_eq!(nodes["n1"], "1.1.0");
            assert_eq!(nodes["n2"], "1.0.0");
            // Healthy: the step's pause starts, and the app is looked at when it ends.
            e.running("n1", "web", "1.1.0");
            assert_eq!(
                e.c.reconcile("web", true).await.unwrap(),
                Action::requeue(Duration::from_secs(30))
            );
            let st = status(&e.app("web").await.0);
            assert_eq!(st.updated_replicas, 1);
            assert_eq!(st.step, "1/2 (50%)");
        }

        #[tokio::test(start_paused = true)]
        async fn an_autoscaled_app_is_evaluated_again_and_others_are_not() {
            let spec = docker(
                "1.0.0",
                json!({"resources": {"cpu": "100m"},
                "autoscale": {"metric": "cpu", "targetPercent": 50, "minReplicas": 1, "maxReplicas": 3}}),
            );
            let e = env(&[node("n1", "a"), app_obj("auto", spec)]).await;
            assert_eq!(
                e.c.reconcile("auto", true).await.unwrap(),
                Action::requeue(AUTOSCALE_EVERY)
            );
            e.running("n1", "auto", "1.0.0");
            assert_eq!(
                e.c.reconcile("auto", true).await.unwrap(),
                Action::requeue(AUTOSCALE_EVERY)
            );
            assert_eq!(
                status(&e.app("auto").await.0).autoscale.unwrap().replicas,
                1
            );
        }

        #[tokio::test(start_paused = true)]
        async fn an_app_no_node_takes_awaits_change() {
            let spec = docker(
                "1.0.0",
                json!({"placement": {"nodeSelector": {"site": "mars"}}}),
            );
            let e = env(&[node("n1", "a"), app_obj("far", spec)]).await;
            assert_eq!(
                e.c.reconcile("far", true).await.unwrap(),
                Action::await_change()
            );
            let st = status(&e.app("far").await.0);
            let u = verge_api::status::find(&st.conditions, "Unschedulable").unwrap();
            assert_eq!(u.reason, "NoMatchingNodes");
            assert!(verge_api::status::find(&st.conditions, "Scheduled").is_none());
        }

        #[tokio::test(start_paused = true)]
        async fn a_deleted_app_is_forgotten() {
            let e = env(&[node("n1", "a"), app_obj("web", docker("1.0.0", json!({})))]).await;
            e.c.reconcile("web", true).await.unwrap();
            assert!(e.c.memory().placed.contains_key("web"));
            e.store
                .delete(&object_key(Kind::App, "web"), verge_store::Expect::Any)
                .await
                .unwrap();
            assert_eq!(
                e.c.reconcile("web", false).await.unwrap(),
                Action::await_change()
            );
            let m = e.c.memory();
            assert!(!m.placed.contains_key("web") && !m.written.contains_key("web"));
        }

        #[tokio::test(start_paused = true)]
        async fn reports_wake_the_apps_whose_instances_changed() {
            let reports = Reports::default();
            let mut rx = reports.subscribe();
            let i = |app: &str, cpu| InstanceStatus {
                cpu_millis: Some(cpu),
                ..InstanceStatus::new(app, 0, "1.0.0", InstanceState::Running)
            };
            reports.report("n1", &[i("a", 1), i("b", 1)]);
            let mut got = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
            got.sort();
            assert_eq!(got, ["a", "b"]);
            // Usage of a alone: woken once per interval.
            reports.report("n1", &[i("a", 2), i("b", 1)]);
            assert_eq!(rx.recv().await.unwrap(), "a");
            reports.report("n1", &[i("a", 3), i("b", 1)]);
            assert!(rx.try_recv().is_err());
            assert_eq!(reports.of_app("a")["n1"][0].cpu_millis, Some(3));
            tokio::time::advance(Duration::from_millis(USAGE_WRITE_INTERVAL_MS as u64)).await;
            reports.report("n1", &[i("a", 4), i("b", 1)]);
            assert_eq!(rx.recv().await.unwrap(), "a");
            // b gone from the node: b wakes; the node forgotten: a wakes.
            reports.report("n1", &[i("a", 4)]);
            assert_eq!(rx.recv().await.unwrap(), "b");
            reports.forget("n1");
            assert_eq!(rx.recv().await.unwrap(), "a");
            assert!(reports.of_app("a").is_empty());
        }

        #[tokio::test(start_paused = true)]
        async fn the_running_controller_settles_after_its_own_writes() {
            let e = env(&[node("n1", "a"), app_obj("web", docker("1.0.0", json!({})))]).await;
            let (stop, rx) = tokio::sync::watch::channel(false);
            let informers = Informers::new(e.store.clone(), rx.clone());
            let c = Arc::new(AppController::new(
                e.store.clone(),
                e.reports.clone(),
                &informers,
            ));
            let task = tokio::spawn(c.run(informers, rx));
            tokio::time::sleep(Duration::from_secs(2)).await;
            e.running("n1", "web", "1.0.0");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (o, rev) = e.app("web").await;
            assert_eq!(status(&o).phase, Phase::Complete);
            // Nothing changes for a minute: no write.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert_eq!(e.app("web").await.1, rev);
            stop.send(true).unwrap();
            task.await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn a_node_label_change_places_only_the_matching_app() {
            let sel = |site: &str| {
                docker(
                    "1.0.0",
                    json!({"placement": {"nodeSelector": {"site": site}}}),
                )
            };
            let e = env(&[
                node("n1", "x"),
                app_obj("a", sel("a")),
                app_obj("b", sel("b")),
            ])
            .await;
            let (stop, rx) = tokio::sync::watch::channel(false);
            let informers = Informers::new(e.store.clone(), rx.clone());
            let c = Arc::new(AppController::new(
                e.store.clone(),
                e.reports.clone(),
                &informers,
            ));
            let task = tokio::spawn(c.run(informers, rx));
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(status(&e.app("a").await.0).placement.is_empty());
            let b_rev = e.app("b").await.1;
            let mut n1 = node("n1", "a");
            n1.metadata.generation = Some(2);
            put(&e.store, &n1).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let a = status(&e.app("a").await.0);
            assert_eq!(a.placement, Assignment::from([("n1".to_string(), 1)]));
            assert!(verge_api::status::is_true(&a.conditions, "Scheduled"));
            // b still matches nothing: its status (and revision) stay.
            assert_eq!(e.app("b").await.1, b_rev);
            stop.send(true).unwrap();
            task.await.unwrap();
        }
    }
}
