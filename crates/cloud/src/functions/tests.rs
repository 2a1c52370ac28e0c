//! The Function and Task controllers against `MemStore`, with paused time: what wakes
//! a function, a task's deadline, retention, callback retries, placement on a node
//! that becomes Ready.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use verge_api::status::function::{FunctionPhase, FunctionStatus};
use verge_proto::Channel;
use verge_store::{MemStore, Store};

use super::task_state::{CallbackState, Phase, RETENTION_MS, TaskStatus};
use super::tasks::Tasks;
use super::*;
use crate::gateway::Downlink;

/// One test's control plane: a store, the informers, the function host, the task
/// controller (not yet running), a data dir.
struct Env {
    store: MemStore,
    informers: Arc<Informers>,
    host: Arc<FunctionHost>,
    tasks: Arc<Tasks>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = MemStore::new();
    let dynstore: DynStore = Arc::new(store.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let informers = Informers::new(dynstore.clone(), rx);
    let secrets = Arc::new(crate::secrets::SecretBox::load_or_create(dir.path()).unwrap());
    let host = FunctionHost::new(
        dynstore.clone(),
        dir.path().join("functions"),
        Arc::new(Registry::with_defaults()),
        verge_runtime::SandboxConfig::default(),
        secrets,
    );
    let artifacts = Arc::new(crate::artifacts::ArtifactStore::open(dir.path(), 1 << 30).unwrap());
    // Callbacks may reach this host's loopback test server.
    let http = callbacks::http_client(&["127.0.0.0/8".to_string()], &[]).unwrap();
    let tasks = Tasks::new(
        dynstore,
        host.clone(),
        artifacts,
        b"test-key".to_vec(),
        http,
        &informers,
    );
    Env {
        store,
        informers,
        host,
        tasks,
        stop,
        _dir: dir,
    }
}

impl Env {
    fn start_tasks(&self) {
        tokio::spawn(
            self.tasks
                .clone()
                .run(self.informers.clone(), self.stop.subscribe()),
        );
    }

    fn start_functions(&self) {
        let c = Arc::new(FunctionController::new(
            Arc::new(self.store.clone()),
            self.host.clone(),
            &self.informers,
        ));
        tokio::spawn(c.run(self.informers.clone(), self.stop.subscribe()));
    }

    async fn put(&self, kind: Kind, name: &str, spec: Value, status: Value) {
        self.put_labeled(kind, name, spec, status, BTreeMap::new())
            .await;
    }

    async fn put_labeled(
        &self,
        kind: Kind,
        name: &str,
        spec: Value,
        status: Value,
        labels: BTreeMap<String, String>,
    ) {
        let key = object_key(kind, name);
        let generation = match self.store.get(&key).await.unwrap() {
            Some(kv) => {
                let o: Object = serde_json::from_slice(&kv.value).unwrap();
                o.metadata.generation.unwrap_or(0) + 1
            }
            None => 1,
        };
        let o = json!({"apiVersion": verge_api::API_VERSION, "kind": kind.name(),
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": generation,
                         "labels": labels},
            "spec": spec, "status": status});
        let bytes = Bytes::from(serde_json::to_vec(&o).unwrap());
        if generation == 1 {
            self.store.create(&key, bytes, labels).await.unwrap();
        } else {
            self.store
                .update(&key, bytes, labels, verge_store::Expect::Any)
                .await
                .unwrap();
        }
    }

    /// The stored object and its store revision.
    async fn get(&self, kind: Kind, name: &str) -> Option<(Object, i64)> {
        let kv = self.store.get(&object_key(kind, name)).await.unwrap()?;
        Some((serde_json::from_slice(&kv.value).unwrap(), kv.mod_revision))
    }

    async fn task(&self, name: &str) -> Option<TaskStatus> {
        self.get(Kind::Task, name)
            .await
            .map(|(o, _)| TaskStatus::from_value(&o.status))
    }

    async fn function_status(&self, name: &str) -> FunctionStatus {
        let (o, _) = self.get(Kind::Function, name).await.unwrap();
        serde_json::from_value(o.status).unwrap_or_default()
    }
}

/// Waits (in paused time) until `check` holds; fails naming `what` after a minute.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Lets every spawned task run to its next wait.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_changed_secret_rechecks_only_the_functions_that_use_it() {
    let e = &env();
    let uses = json!({"runtime": "builtin", "handler": "echo",
        "secretEnv": {"TOKEN": {"name": "api", "key": "token"}}});
    e.put(Kind::Function, "uses", uses, Value::Null).await;
    e.put(
        Kind::Function,
        "plain",
        json!({"runtime": "builtin", "handler": "echo"}),
        Value::Null,
    )
    .await;
    e.put(
        Kind::Secret,
        "other",
        json!({"data": {"x": "sealed"}}),
        Value::Null,
    )
    .await;
    e.start_functions();
    until("both functions are checked", || async move {
        e.function_status("uses").await.phase == FunctionPhase::Failed
            && e.function_status("plain").await.phase == FunctionPhase::Ready
    })
    .await;
    let failed = e.function_status("uses").await;
    assert!(failed.message.contains("api"), "{}", failed.message);
    assert_eq!(failed.observed_generation, Some(1));
    let (_, plain_rev) = e.get(Kind::Function, "plain").await.unwrap();

    // The Secret it names arrives: `uses` is checked again and passes; `plain` is not
    // touched.
    e.put(
        Kind::Secret,
        "api",
        json!({"data": {"token": "sealed"}}),
        Value::Null,
    )
    .await;
    until("the function using the secret is Ready", || async move {
        e.function_status("uses").await.phase == FunctionPhase::Ready
    })
    .await;
    let (_, uses_rev) = e.get(Kind::Function, "uses").await.unwrap();
    // A Secret neither uses changes: nothing is checked again.
    e.put(
        Kind::Secret,
        "other",
        json!({"data": {"x": "sealed2"}}),
        Value::Null,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(e.get(Kind::Function, "plain").await.unwrap().1, plain_rev);
    assert_eq!(e.get(Kind::Function, "uses").await.unwrap().1, uses_rev);
    // Nothing polls: a minute later, still nothing written.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(e.get(Kind::Function, "uses").await.unwrap().1, uses_rev);
    // Deleted: unloaded from the host.
    e.put(
        Kind::Function,
        "cloudy",
        json!({"runtime": "builtin", "handler": "echo", "placement": {"cloud": true}}),
        Value::Null,
    )
    .await;
    until("the cloud function is loaded", || async move {
        e.host.runtime().has("cloudy")
    })
    .await;
    e.store
        .delete(
            &object_key(Kind::Function, "cloudy"),
            verge_store::Expect::Any,
        )
        .await
        .unwrap();
    until("the deleted function is unloaded", || async move {
        !e.host.runtime().has("cloudy")
    })
    .await;
    let _ = e.stop.send(true);
}

#[test]
fn secret_users_and_versions() {
    let f = |name: &str, secret: Option<&str>| {
        let mut spec = json!({"runtime": "builtin", "handler": "echo"});
        if let Some(s) = secret {
            spec["secretEnv"] = json!({"A": {"name": s, "key": "k"}});
        }
        Arc::new(Object {
            api_version: verge_api::API_VERSION.into(),
            kind: "Function".into(),
            metadata: verge_api::ObjectMeta {
                name: name.into(),
                generation: Some(3),
                uid: Some("0123456789".into()),
                ..Default::default()
            },
            spec,
            status: Value::Null,
        })
    };
    let all = vec![f("a", Some("s1")), f("b", None), f("c", Some("s2"))];
    assert_eq!(secret_users(&all, "s1"), vec!["a".to_string()]);
    assert!(secret_users(&all, "s3").is_empty());
    let spec: FunctionSpec = serde_json::from_value(all[0].spec.clone()).unwrap();
    let v = |rev: Option<&str>| checked_version(&all[0], &spec, |_| rev.map(str::to_string));
    assert_eq!(v(None), "3-01234567;s1@0");
    assert_eq!(v(Some("17")), "3-01234567;s1@17");
    // A failure of the cloud's own is retried; one of the function's is kept.
    let (st, retry) = checked_status(
        &all[0],
        &spec,
        &Err(RtError::Load {
            message: "SyntaxError".into(),
        }),
    );
    assert_eq!(st.phase, FunctionPhase::Failed);
    assert!(!retry);
    let (_, retry) = checked_status(
        &all[0],
        &spec,
        &Err(RtError::WorkerCrashed {
            message: "killed".into(),
            logs: String::new(),
        }),
    );
    assert!(retry);
}

fn edge_echo() -> Value {
    json!({"runtime": "builtin", "handler": "echo", "placement": {"nodeSelector": {"site": "x"}}})
}

#[tokio::test(start_paused = true)]
async fn a_task_with_no_node_times_out_at_its_deadline() {
    let e = &env();
    e.put(Kind::Function, "echo", edge_echo(), Value::Null)
        .await;
    e.start_tasks();
    settle().await;
    let spec: verge_api::specs::TaskSpec =
        serde_json::from_value(json!({"function": "echo", "timeoutSeconds": 30})).unwrap();
    let (id, created) = e.tasks.create(spec, BTreeMap::new(), None).await.unwrap();
    let id = id.as_str();
    assert!(created);
    until("the task says why it waits", || async move {
        e.task(id).await.unwrap().reason.as_deref() == Some("NoMatchingNodes")
    })
    .await;
    let (_, rev) = e.get(Kind::Task, id).await.unwrap();
    // Nothing polls while it waits: no write before its deadline.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let (o, same) = e.get(Kind::Task, id).await.unwrap();
    assert_eq!(same, rev, "{}", o.status);
    assert_eq!(TaskStatus::from_value(&o.status).phase, Phase::Pending);
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    let st = e.task(id).await.unwrap();
    assert_eq!(st.phase, Phase::TimedOut, "{st:?}");
    assert!(
        st.error
            .as_deref()
            .is_some_and(|m| m.starts_with("not started within 30 s: no node matches")),
        "{st:?}"
    );
    let _ = e.stop.send(true);
}

/// Records what the task controller sends to nodes.
#[derive(Default)]
struct Sent(std::sync::Mutex<Vec<(String, verge_proto::Message)>>);

impl Downlink for Sent {
    fn send(&self, node: &str, channel: Channel, payload: Bytes) -> bool {
        let msg = verge_proto::decode(channel, &payload).unwrap();
        self.0.lock().unwrap().push((node.to_string(), msg));
        true
    }
    fn kick(&self, _node: &str) {}
    fn revoke_serial(&self, _serial: &str) {}
}

#[tokio::test(start_paused = true)]
async fn a_waiting_task_goes_to_a_node_when_it_becomes_ready_and_is_resent_after_its_attempt() {
    let e = &env();
    let sent = Arc::new(Sent::default());
    e.tasks.set_downlink(sent.clone());
    e.put(Kind::Function, "echo", edge_echo(), Value::Null)
        .await;
    let labels = BTreeMap::from([("site".to_string(), "x".to_string())]);
    let offline =
        json!({"phase": "NotReady", "conditions": [{"type": "Ready", "status": "False"}]});
    e.put_labeled(Kind::Node, "n1", json!({}), offline.clone(), labels.clone())
        .await;
    e.start_tasks();
    settle().await;
    let spec: verge_api::specs::TaskSpec =
        serde_json::from_value(json!({"function": "echo", "timeoutSeconds": 60, "maxAttempts": 2}))
            .unwrap();
    let (id, _) = e.tasks.create(spec, BTreeMap::new(), None).await.unwrap();
    let id = id.as_str();
    until("the task waits for its node", || async move {
        e.task(id).await.unwrap().reason.as_deref() == Some("NodeOffline")
    })
    .await;
    // A heartbeat-like change (no change in readiness) does not place it.
    let mut beat = offline.clone();
    beat["lastHeartbeat"] = json!("t1");
    e.put_labeled(Kind::Node, "n1", json!({}), beat, labels.clone())
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(sent.0.lock().unwrap().is_empty());
    // Ready: dispatched at once, not after a poll.
    let ready = json!({"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]});
    e.put_labeled(Kind::Node, "n1", json!({}), ready, labels)
        .await;
    let sent_ref = &sent;
    until("the task is dispatched", || async move {
        !sent_ref.0.lock().unwrap().is_empty()
    })
    .await;
    let st = e.task(id).await.unwrap();
    assert_eq!(st.phase, Phase::Dispatched);
    assert_eq!(st.attempt_nodes, vec!["n1".to_string()]);
    // No answer within the attempt: sent again once, then timed out.
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    assert_eq!(e.task(id).await.unwrap().attempts, 2);
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    let st = e.task(id).await.unwrap();
    assert_eq!(st.phase, Phase::TimedOut, "{st:?}");
    let sent = sent.0.lock().unwrap();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|(n, _)| n == "n1"));
    let _ = e.stop.send(true);
}

#[tokio::test(start_paused = true)]
async fn a_finished_task_is_deleted_when_its_retention_ends() {
    let e = &env();
    let now = now_ms();
    e.put(
        Kind::Task,
        "t-done",
        json!({"function": "echo"}),
        json!({"phase": "Succeeded", "createdAtMs": now, "finishedAtMs": now}),
    )
    .await;
    // Finished long ago: deleted at start.
    e.put(
        Kind::Task,
        "t-old",
        json!({"function": "echo"}),
        json!({"phase": "Failed", "createdAtMs": 0, "finishedAtMs": now - RETENTION_MS - 1}),
    )
    .await;
    e.start_tasks();
    until("the expired task is gone", || async move {
        e.task("t-old").await.is_none()
    })
    .await;
    let left = Duration::from_millis(RETENTION_MS as u64) - Duration::from_secs(60);
    tokio::time::sleep(left).await;
    settle().await;
    assert!(e.task("t-done").await.is_some(), "kept for its retention");
    tokio::time::sleep(Duration::from_secs(61)).await;
    until("the finished task is deleted", || async move {
        e.task("t-done").await.is_none()
    })
    .await;
    let _ = e.stop.send(true);
}

#[tokio::test(start_paused = true)]
async fn result_files_no_task_refers_to_are_swept_at_start_and_kept_while_referenced() {
    let e = &env();
    let artifacts = crate::artifacts::ArtifactStore::open(e._dir.path(), 1 << 30).unwrap();
    let kept = artifacts.put_result(b"\"kept\"").unwrap();
    let orphan = artifacts.put_result(b"\"orphan\"").unwrap();
    e.put(
        Kind::Task,
        "t-big",
        json!({"function": "echo"}),
        json!({"phase": "Succeeded", "createdAtMs": now_ms(), "finishedAtMs": now_ms(),
               "resultUrl": format!("/api/v1/artifacts/{kept}")}),
    )
    .await;
    e.start_tasks();
    let digests = || {
        artifacts
            .result_digests()
            .unwrap()
            .into_iter()
            .map(|f| f.sha256)
            .collect::<Vec<_>>()
    };
    let (digests_ref, orphan_ref) = (&digests, &orphan);
    until("the orphan is swept", || async move {
        !digests_ref().contains(orphan_ref)
    })
    .await;
    assert!(digests().contains(&kept));
    let _ = e.stop.send(true);
}

/// A callback receiver: answers each request with the next status of `answers`
/// (the last one from then on) and records the delivery numbers it saw.
struct Receiver {
    url: String,
    deliveries: Arc<std::sync::Mutex<Vec<String>>>,
    /// When each request arrived (tokio's clock).
    at: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
}

async fn receiver(answers: Vec<u16>) -> Receiver {
    let deliveries: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let at: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = deliveries.clone();
    let seen_at = at.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            seen_at.lock().unwrap().push(tokio::time::Instant::now());
            seen.lock().unwrap().push(
                headers
                    .get("x-verge-delivery")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            );
            let code = answers[i.min(answers.len() - 1)];
            async move { axum::http::StatusCode::from_u16(code).unwrap() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        deliveries,
        at,
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_callback_is_retried_with_backoff_and_delivered_once() {
    let e = &env();
    let hook = receiver(vec![500, 503, 200]).await;
    let now = now_ms();
    e.put(
        Kind::Task,
        "t-cb",
        json!({"function": "echo", "callbackUrl": hook.url}),
        json!({"phase": "Succeeded", "createdAtMs": now, "finishedAtMs": now,
               "result": {"ok": true},
               "callback": {"state": "Pending", "attempts": 0, "nextAttemptMs": now}}),
    )
    .await;
    e.start_tasks();
    until("the callback is delivered", || async move {
        e.task("t-cb")
            .await
            .and_then(|s| s.callback)
            .is_some_and(|c| c.state == CallbackState::Delivered)
    })
    .await;
    let cb = e.task("t-cb").await.unwrap().callback.unwrap();
    assert_eq!(cb.attempts, 3);
    assert_eq!(cb.last_status, Some(200));
    // Wakeups, requeues and later changes deliver nothing more.
    e.tasks.cancel("t-cb").await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(120)).await;
    settle().await;
    assert_eq!(*hook.deliveries.lock().unwrap(), vec!["1", "2", "3"]);
    // Backed off between attempts: at least half the ceiling (full jitter) of 500 ms
    // before the second attempt, of 1 s before the third.
    let at = hook.at.lock().unwrap().clone();
    assert!(
        at[1] - at[0] >= Duration::from_millis(250),
        "{:?}",
        at[1] - at[0]
    );
    assert!(
        at[2] - at[1] >= Duration::from_millis(500),
        "{:?}",
        at[2] - at[1]
    );
    let _ = e.stop.send(true);
}

#[tokio::test(start_paused = true)]
async fn a_callback_that_keeps_failing_is_dead_lettered_after_its_attempts() {
    let e = &env();
    let hook = receiver(vec![500]).await;
    let now = now_ms();
    e.put(
        Kind::Task,
        "t-dead",
        json!({"function": "echo", "callbackUrl": hook.url}),
        json!({"phase": "Failed", "createdAtMs": now, "finishedAtMs": now,
               "callback": {"state": "Pending", "attempts": 0, "nextAttemptMs": now}}),
    )
    .await;
    e.start_tasks();
    until("the callback is dead-lettered", || async move {
        e.task("t-dead")
            .await
            .and_then(|s| s.callback)
            .is_some_and(|c| c.state == CallbackState::DeadLettered)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    settle().await;
    assert_eq!(
        hook.deliveries.lock().unwrap().len(),
        callbacks::MAX_ATTEMPTS as usize
    );
    let _ = e.stop.send(true);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_idempotency_key_answers_the_earlier_task() {
    let e = &env();
    e.put(Kind::Function, "echo", edge_echo(), Value::Null)
        .await;
    e.start_tasks();
    settle().await;
    let spec: verge_api::specs::TaskSpec =
        serde_json::from_value(json!({"function": "echo", "idempotencyKey": "order-7"})).unwrap();
    let (first, created) = e
        .tasks
        .create(spec.clone(), BTreeMap::new(), None)
        .await
        .unwrap();
    assert!(created);
    let (again, created) = e.tasks.create(spec, BTreeMap::new(), None).await.unwrap();
    assert_eq!((again.as_str(), created), (first.as_str(), false));
    let _ = e.stop.send(true);
}

#[tokio::test(start_paused = true)]
async fn a_fan_out_parent_finishes_when_its_children_report() {
    let e = &env();
    let sent = Arc::new(Sent::default());
    e.tasks.set_downlink(sent.clone());
    e.put(Kind::Function, "echo", edge_echo(), Value::Null)
        .await;
    let ready = json!({"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]});
    for n in ["n1", "n2"] {
        let labels = BTreeMap::from([("site".to_string(), "x".to_string())]);
        e.put_labeled(Kind::Node, n, json!({}), ready.clone(), labels)
            .await;
    }
    e.start_tasks();
    settle().await;
    let spec: verge_api::specs::TaskSpec =
        serde_json::from_value(json!({"function": "echo", "target": {"fanout": {"site": "x"}}}))
            .unwrap();
    let (parent, _) = e.tasks.create(spec, BTreeMap::new(), None).await.unwrap();
    let parent = parent.as_str();
    let sent_ref = &sent;
    until("both children are dispatched", || async move {
        sent_ref.0.lock().unwrap().len() == 2
    })
    .await;
    let st = e.task(parent).await.unwrap();
    assert_eq!(st.children.len(), 2, "{st:?}");
    for (i, c) in st.children.iter().enumerate() {
        let r = verge_proto::TaskResult {
            id: c.name.clone(),
            ok: true,
            output: Some(json!({"i": i})),
            error: None,
            started_at_ms: now_ms(),
            finished_at_ms: now_ms(),
            seq: 1,
            function: None,
            trigger: None,
            attempt: Some(1),
        };
        // A node's result for its sibling's task is refused.
        let other = if c.node == "n1" { "n2" } else { "n1" };
        assert_eq!(
            e.tasks.admit(other, &r, None).await,
            tasks::Admission::Refuse(task_state::Refusal::OtherNode)
        );
        assert_eq!(
            e.tasks.admit(&c.node, &r, None).await,
            tasks::Admission::Take
        );
        e.tasks.on_result(&c.node, &r).await.unwrap();
    }
    until("the parent has finished", || async move {
        e.task(parent).await.unwrap().phase == Phase::Succeeded
    })
    .await;
    let st = e.task(parent).await.unwrap();
    assert!(
        st.children.iter().all(|c| c.phase == Phase::Succeeded),
        "{st:?}"
    );
    let _ = e.stop.send(true);
}
