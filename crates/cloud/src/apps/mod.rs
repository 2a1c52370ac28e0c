//! The App controller: placement ([`scheduler`]), gray release ([`rollout`]),
//! dependency checks and autoscaling ([`autoscale`]) — pure functions — driven by
//! [`AppController::run`], which reads Apps, Nodes and the instances nodes report,
//! and writes each App's status. Which version (and spec) each node runs is
//! `status.rollout.nodes`; [`crate::nodes::sync`] turns it into desired state. An App
//! that references Secrets gets a `SecretsResolved` condition ([`secret_problem`]),
//! checked against the keys of the stored Secrets — no value is opened here.

pub mod autoscale;
pub mod rollout;
pub mod scheduler;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use verge_api::specs::{AppSpec, ScaleMetric};
use verge_api::{Kind, Object};
use verge_proto::{InstanceState, InstanceStatus};
use verge_store::DynStore;

use crate::objects::{kind_prefix, modify, object_key};
use rollout::{Commands, Inputs, Phase, RolloutState};
use scheduler::{Count, NodeInfo, PlacementRule, Request};

/// Annotations the `verge rollout` commands set.
pub use verge_api::names::{
    ANNOTATION_PAUSED, ANNOTATION_PROMOTE, ANNOTATION_RESUME, ANNOTATION_ROLLBACK,
};

/// Usage-only status changes are written at most this often.
const USAGE_WRITE_INTERVAL_MS: i64 = 10_000;

/// The latest instances each node reported (fed by the node manager).
#[derive(Default)]
pub struct Reports {
    by_node: Mutex<HashMap<String, Vec<InstanceStatus>>>,
    changed: Notify,
}

impl Reports {
    pub fn report(&self, node: &str, apps: &[InstanceStatus]) {
        if let Ok(mut m) = self.by_node.lock() {
            let prev = m.insert(node.to_string(), apps.to_vec());
            if !prev.is_some_and(|p| verge_proto::same_but_usage(&p, apps)) {
                self.changed.notify_one();
            }
        }
    }

    pub fn forget(&self, node: &str) {
        if let Ok(mut m) = self.by_node.lock() {
            m.remove(node);
        }
        self.changed.notify_one();
    }

    /// app → node → instances.
    fn by_app(&self) -> HashMap<String, BTreeMap<String, Vec<InstanceStatus>>> {
        let mut out: HashMap<String, BTreeMap<String, Vec<InstanceStatus>>> = HashMap::new();
        if let Ok(m) = self.by_node.lock() {
            for (node, list) in m.iter() {
                for i in list {
                    out.entry(i.app.clone())
                        .or_default()
                        .entry(node.clone())
                        .or_default()
                        .push(i.clone());
                }
            }
        }
        out
    }
}

pub struct AppController {
    store: DynStore,
    pub reports: std::sync::Arc<Reports>,
    /// App → unix ms of its last status write.
    written: Mutex<HashMap<String, i64>>,
    /// Until then, node reports may not all be in (after a cloud restart).
    warm_at: std::time::Instant,
}

/// How long after start the controller waits for node reports before a missing one
/// can fail a rollout's deadline.
const WARM_UP: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn node_info(o: &Object) -> NodeInfo {
    let st = &o.status;
    let cap = |k: &str| st["capacity"][k].as_str().map(str::to_string);
    NodeInfo {
        name: o.metadata.name.clone(),
        labels: o.metadata.labels.clone(),
        arch: st["nodeInfo"]["arch"].as_str().unwrap_or("").to_string(),
        ready: st["phase"] == "Ready",
        cpu_millis: cap("cpu").and_then(|c| verge_api::specs::parse_cpu_millis(&c)),
        memory_bytes: cap("memory").and_then(|m| verge_api::specs::parse_memory_bytes(&m)),
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

fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind, "status": if ok { "True" } else { "False" },
        "reason": reason, "message": message,
    })
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

/// The status minus what changes all the time (usage), to decide whether to write.
fn significant(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(list) = s.get_mut("instances").and_then(Value::as_array_mut) {
        for i in list {
            if let Some(m) = i.as_object_mut() {
                m.remove("cpuMillis");
                m.remove("memoryBytes");
            }
        }
    }
    if let Some(m) = s.as_object_mut() {
        m.remove("autoscale");
    }
    s
}

impl AppController {
    pub fn new(store: DynStore, reports: std::sync::Arc<Reports>) -> Self {
        Self {
            store,
            reports,
            written: Mutex::new(HashMap::new()),
            warm_at: std::time::Instant::now() + WARM_UP,
        }
    }

    /// Reconciles every app every second, and at once after an App changes (its spec
    /// or annotations; not the status this controller writes) or a node reports a
    /// change.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        use futures::StreamExt;
        let mut events = None;
        let mut generations: HashMap<String, String> = HashMap::new();
        loop {
            if events.is_none() {
                // (Re)opened after a compaction or an error; polling covers the gap.
                let prefix = kind_prefix(Kind::App);
                if let Ok(list) = self.store.list(&prefix, None).await {
                    events = self.store.watch(&prefix, list.revision).await.ok();
                }
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "app controller pass failed");
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(1000)) => break,
                    _ = self.reports.changed.notified() => {
                        // Coalesce a burst of reports.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        break;
                    }
                    ev = async { match events.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => {
                        let Some(Ok(ev)) = ev else { events = None; continue };
                        // Only spec and metadata changes wake us (not our own status writes).
                        let key = ev.kv.key.clone();
                        let fingerprint = serde_json::from_slice::<Object>(&ev.kv.value)
                            .map(|o| format!("{}{:?}", o.spec, o.metadata.annotations))
                            .unwrap_or_default();
                        if generations.insert(key, fingerprint.clone()).as_ref() != Some(&fingerprint) {
                            break;
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    async fn pass(&self) -> crate::Result<()> {
        let apps_kv = self.store.list(&kind_prefix(Kind::App), None).await?;
        let nodes_kv = self.store.list(&kind_prefix(Kind::Node), None).await?;
        let mut apps: BTreeMap<String, (Object, AppSpec)> = BTreeMap::new();
        for kv in &apps_kv.items {
            let Ok(o) = serde_json::from_slice::<Object>(&kv.value) else {
                continue;
            };
            let Ok(spec) = serde_json::from_value::<AppSpec>(o.spec.clone()) else {
                continue;
            };
            apps.insert(o.metadata.name.clone(), (o, spec));
        }
        let nodes: Vec<NodeInfo> = nodes_kv
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Object>(&kv.value).ok())
            .map(|o| node_info(&o))
            .collect();
        let specs: BTreeMap<String, AppSpec> = apps
            .iter()
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect();
        let deps = dependency_problems(&specs);
        // Secret name → its keys (values left sealed and unread), when any app needs them.
        let mut secret_keys: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        if specs.values().any(|s| !s.secret_uses().is_empty()) {
            for kv in self
                .store
                .list(&kind_prefix(Kind::Secret), None)
                .await?
                .items
            {
                if let Ok(o) = serde_json::from_slice::<Object>(&kv.value) {
                    let keys = o.spec["data"]
                        .as_object()
                        .map(|m| m.keys().map(|k| (k.clone(), String::new())).collect())
                        .unwrap_or_default();
                    secret_keys.insert(o.metadata.name, keys);
                }
            }
        }
        let reports = self.reports.by_app();
        let empty = BTreeMap::new();
        let now = now_ms();

        // What each app already uses on each node (from its current assignment).
        let mut used: HashMap<String, BTreeMap<String, Request>> = HashMap::new();
        for (name, (o, spec)) in &apps {
            let req = request_of(spec);
            if let Some(nodes) = o.status["placement"].as_object() {
                for (n, r) in nodes {
                    let k = r.as_u64().unwrap_or(0);
                    used.entry(n.clone()).or_default().insert(
                        name.clone(),
                        Request {
                            cpu_millis: req.cpu_millis * k,
                            memory_bytes: req.memory_bytes * k,
                        },
                    );
                }
            }
        }

        let live: BTreeSet<String> = apps.keys().cloned().collect();
        if let Ok(mut w) = self.written.lock() {
            w.retain(|k, _| live.contains(k));
        }

        for (name, (o, spec)) in &apps {
            let reports = reports.get(name).unwrap_or(&empty);
            let prev_state: Option<RolloutState> =
                serde_json::from_value(o.status["rollout"].clone()).ok();
            let prev_scale: autoscale::ScaleState =
                serde_json::from_value(o.status["autoscale"].clone()).unwrap_or_default();

            // Autoscaling decides the replica count for `replicas` placement.
            let placement = spec.placement.clone().unwrap_or_default();
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
                    let prev = autoscale::ScaleState {
                        replicas: current,
                        history: prev_scale.history.clone(),
                    };
                    let next = autoscale::stabilize(&prev, rec, now, window);
                    let n = next.replicas;
                    scale = Some(next);
                    Count::Spread(n)
                }
                (Some(n), _, None) => Count::Spread(n),
                (None, Some(k), None) => Count::PerNode(k),
                (None, None, None) => Count::PerNode(1),
            };

            // Capacity: what other apps use on each node.
            let infos: Vec<NodeInfo> = nodes
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    if let Some(u) = used.get(&n.name) {
                        for (app, r) in u {
                            if app != name {
                                n.used_cpu_millis += r.cpu_millis;
                                n.used_memory_bytes += r.memory_bytes;
                            }
                        }
                    }
                    n
                })
                .collect();
            let rule = PlacementRule {
                node_selector: placement.node_selector.clone(),
                architectures: placement.architectures.clone(),
                count,
                request: request_of(spec),
            };
            let current: scheduler::Assignment = o.status["placement"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            let (assignment, unschedulable) = scheduler::schedule(&rule, &infos, &current);
            let cmds = commands(o);
            let seen_resume: u64 = o.status["rolloutResumeSeen"].as_u64().unwrap_or(0);
            let decision = rollout::reconcile(
                prev_state.as_ref(),
                &Inputs {
                    version: &spec.version,
                    spec: &o.spec,
                    strategy: &spec.rollout.clone().unwrap_or_default(),
                    placement: &assignment,
                    reports,
                    commands: cmds,
                    seen_resume_seq: seen_resume,
                    probed: spec.health.is_some(),
                    warming_up: std::time::Instant::now() < self.warm_at,
                    now_ms: now,
                },
            );
            let st = decision.state;

            // Instances, as reported, for nodes the app is on (or leaving).
            let counts = replica_counts(reports, &st);
            let ready = counts.ready;
            let mut instances = Vec::new();
            for (node, list) in reports {
                for i in list {
                    instances.push(json!({
                        "node": node, "replica": i.replica, "version": i.version,
                        "state": i.state.as_str(),
                        "health": match i.healthy { Some(true) => "Healthy", Some(false) => "Unhealthy", None => "Unknown" },
                        "restarts": i.restarts, "cpuMillis": i.cpu_millis,
                        "memoryBytes": i.memory_bytes, "lastError": i.last_error,
                        "limits": i.limits, "startedAtMs": i.started_at_ms,
                    }));
                }
            }
            let desired: u32 = assignment.values().sum();
            let mut conditions = vec![match &unschedulable {
                None => condition(
                    "Scheduled",
                    true,
                    "Scheduled",
                    &format!("{} nodes", assignment.len()),
                ),
                Some(u) => condition("Unschedulable", true, u.reason, &u.message),
            }];
            match deps.get(name) {
                None => conditions.push(condition("DependenciesResolved", true, "Resolved", "")),
                Some((reason, msg)) => {
                    conditions.push(condition("DependenciesResolved", false, reason, msg))
                }
            }
            if !spec.secret_uses().is_empty() {
                conditions.push(match secret_problem(spec, &secret_keys) {
                    None => condition("SecretsResolved", true, "Resolved", ""),
                    Some(msg) => condition("SecretsResolved", false, "MissingSecret", &msg),
                });
            }
            conditions.push(condition(
                "Available",
                desired > 0 && ready >= desired,
                if st.phase == Phase::Complete {
                    "Complete"
                } else {
                    st.phase.as_str()
                },
                &st.message,
            ));
            let steps = spec.rollout.clone().unwrap_or_default().effective_steps();
            let percent = steps.get(st.step).map_or(100, |s| s.percent);
            let mut status = json!({
                "observedGeneration": o.metadata.generation,
                "version": st.serving_version(),
                "targetVersion": st.target_version,
                "phase": st.phase.as_str(),
                "replicas": desired,
                "readyReplicas": ready,
                "updatedReplicas": counts.updated,
                "step": format!("{}/{} ({}%)", st.step + 1, st.steps, percent),
                "placement": assignment,
                "rollout": st,
                "rolloutResumeSeen": cmds.resume_seq,
                "instances": instances,
                "conditions": conditions,
            });
            if let Some(s) = scale {
                status["autoscale"] = serde_json::to_value(s).unwrap_or_default();
            }
            let changed = significant(&status) != significant(&o.status);
            let usage_due = self
                .written
                .lock()
                .ok()
                .and_then(|w| w.get(name).copied())
                .is_none_or(|t| now - t >= USAGE_WRITE_INTERVAL_MS)
                && status != o.status;
            if !(changed || usage_due) {
                continue;
            }
            let key = object_key(Kind::App, name);
            let r = modify(&self.store, Kind::App, &key, name, None, |cur| {
                let mut next = cur.clone();
                // Only this generation's decision (a spec change meanwhile: next pass).
                if cur.metadata.generation != o.metadata.generation {
                    return Ok(next);
                }
                next.status = status.clone();
                Ok(next)
            })
            .await;
            match r {
                Ok(_) => {
                    if let Ok(mut w) = self.written.lock() {
                        w.insert(name.clone(), now);
                    }
                }
                Err(e) if e.reason == verge_api::Reason::NotFound => {}
                Err(e) => {
                    tracing::warn!(app = %name, error = %e.message, "app status update failed")
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
