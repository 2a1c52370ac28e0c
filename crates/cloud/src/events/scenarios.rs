//! The dispatcher, the delivery worker and the dead letters against `MemStore`: the
//! dispatcher with paused time (a 10,000-event burst, restarts from the checkpoint,
//! failed tasks, redrive), webhooks against a real HTTP server on loopback in real time
//! (retries, a hanging webhook, dead letter and redrive, the outbound guard).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;
use verge_api::{Kind, Object};
use verge_store::{DynStore, Expect, MemStore, Revision, Store};

use super::deadletters::{self, DeadLetter, DeadLetters};
use super::delivery::{self, Deliveries, Delivery};
use super::dispatcher::{self, Dispatcher};
use super::*;
use crate::controller::Informers;
use crate::functions::task_state::TaskStatus;
use crate::functions::tasks::Tasks;
use crate::functions::{FunctionHost, Registry, callbacks};
use crate::objects::{kind_prefix, object_key};

const KEY: &[u8] = b"test-callback-key";

struct Env {
    store: MemStore,
    dyn_store: DynStore,
    informers: Arc<Informers>,
    host: Arc<FunctionHost>,
    dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

/// One running dispatcher + delivery worker, stopped with [`Running::stop`].
struct Running {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    metrics: EventMetrics,
    tasks: Arc<Tasks>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            h.await.unwrap();
        }
    }
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = MemStore::new();
    let dyn_store: DynStore = Arc::new(store.clone());
    let (stop, rx) = watch::channel(false);
    let informers = Informers::new(dyn_store.clone(), rx);
    let secrets = Arc::new(crate::secrets::SecretBox::load_or_create(dir.path()).unwrap());
    let host = FunctionHost::new(
        dyn_store.clone(),
        dir.path().join("functions"),
        Arc::new(Registry::with_defaults()),
        verge_runtime::SandboxConfig::default(),
        secrets,
    );
    Env {
        store,
        dyn_store,
        informers,
        host,
        dir,
        _stop: stop,
    }
}

fn quick() -> EventsConfig {
    EventsConfig {
        attempt_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        ..EventsConfig::default()
    }
}

impl Env {
    /// Starts a task controller, a dispatcher and a delivery worker (loopback webhooks
    /// allowed when `loopback`), each with fresh in-memory state (as after a restart).
    fn start(&self, cfg: EventsConfig, loopback: bool) -> Running {
        let artifacts =
            Arc::new(crate::artifacts::ArtifactStore::open(self.dir.path(), 1 << 30).unwrap());
        let tasks = Tasks::new(
            self.dyn_store.clone(),
            self.host.clone(),
            artifacts,
            KEY.to_vec(),
            callbacks::http_client(&[], &[]).unwrap(),
            &self.informers,
        );
        let metrics = EventMetrics::default();
        let allow: Vec<String> = if loopback {
            vec!["127.0.0.0/8".into()]
        } else {
            Vec::new()
        };
        let dead = DeadLetters::new(
            self.dyn_store.clone(),
            metrics.clone(),
            cfg.max_dead_letters,
        );
        let deliveries = Deliveries::new(
            self.dyn_store.clone(),
            delivery::http_client(&allow, &[], cfg.attempt_timeout).unwrap(),
            KEY.to_vec(),
            cfg.clone(),
            metrics.clone(),
            dead.clone(),
        );
        let d = Dispatcher::new(
            self.dyn_store.clone(),
            tasks.clone(),
            &self.informers,
            deliveries.clone(),
            dead,
            cfg,
            metrics.clone(),
        );
        let (stop, rx) = watch::channel(false);
        let handles = vec![
            tokio::spawn(tasks.clone().run(self.informers.clone(), rx.clone())),
            tokio::spawn(deliveries.run(rx.clone())),
            tokio::spawn(d.run(rx)),
        ];
        Running {
            stop,
            handles,
            metrics,
            tasks,
        }
    }

    async fn put(&self, kind: Kind, name: &str, spec: Value) {
        let o = json!({"apiVersion": verge_api::API_VERSION, "kind": kind.name(),
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 1},
            "spec": spec});
        let bytes = Bytes::from(serde_json::to_vec(&o).unwrap());
        let key = object_key(kind, name);
        if self.store.get(&key).await.unwrap().is_some() {
            self.store
                .update(&key, bytes, Default::default(), Expect::Any)
                .await
                .unwrap();
        } else {
            self.store
                .create(&key, bytes, Default::default())
                .await
                .unwrap();
        }
    }

    /// A function for edge nodes (there are none: its tasks wait, Pending).
    async fn function(&self, name: &str) {
        self.put(
            Kind::Function,
            name,
            json!({"runtime": "builtin", "handler": "echo"}),
        )
        .await;
    }

    /// Writes an object record the way the S3 API does; its store revision.
    async fn upload(&self, bucket: &str, key: &str) -> Revision {
        let record = json!({"etag": "\"d41d8cd98f00b204e9800998ecf8427e\"", "size": 0,
            "sha256": "e3b0c442", "contentType": "text/plain",
            "lastModified": "2026-12-07T22:00:00.000Z", "userMetadata": {}});
        let k = format!("{OBJECTS_PREFIX}{bucket}/{key}");
        let v = Bytes::from(serde_json::to_vec(&record).unwrap());
        match self.store.get(&k).await.unwrap() {
            Some(_) => {
                self.store
                    .update(&k, v, Default::default(), Expect::Any)
                    .await
            }
            None => self.store.create(&k, v, Default::default()).await,
        }
        .unwrap()
        .mod_revision
    }

    async fn remove(&self, bucket: &str, key: &str) -> Revision {
        self.store
            .delete(&format!("{OBJECTS_PREFIX}{bucket}/{key}"), Expect::Any)
            .await
            .unwrap()
            .mod_revision
    }

    async fn checkpoint(&self) -> Option<Revision> {
        read_checkpoint(&self.dyn_store).await.unwrap()
    }

    async fn tasks(&self) -> Vec<Object> {
        self.store
            .list(&kind_prefix(Kind::Task), None)
            .await
            .unwrap()
            .items
            .iter()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
            .collect()
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        deadletters::list(&self.dyn_store, None).await.unwrap()
    }

    async fn set_task_status(&self, name: &str, status: Value) {
        let key = object_key(Kind::Task, name);
        let kv = self.store.get(&key).await.unwrap().unwrap();
        let mut o: Object = serde_json::from_slice(&kv.value).unwrap();
        o.status = status;
        self.store
            .update(
                &key,
                Bytes::from(serde_json::to_vec(&o).unwrap()),
                kv.labels,
                Expect::Any,
            )
            .await
            .unwrap();
    }
}

/// Waits until `check` holds; fails naming `what` after about two minutes (of paused
/// or real time).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

fn key_of(task: &Object) -> String {
    task.spec["idempotencyKey"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_10000_events_is_handed_off_once_and_a_restart_from_the_checkpoint_runs_nothing_twice()
 {
    let e = &env();
    e.function("thumb").await;
    e.put(
        Kind::Trigger,
        "thumbs",
        json!({"event": {"bucket": "uploads", "types": ["created"]}, "function": "thumb"}),
    )
    .await;
    let mut last = 0;
    for i in 0..10_000 {
        last = e.upload("uploads", &format!("in/{i:05}.jpg")).await;
    }
    let run = e.start(quick(), false);
    until("every event is handed off", || async move {
        e.checkpoint().await == Some(last)
    })
    .await;
    let tasks = e.tasks().await;
    assert_eq!(tasks.len(), 10_000);
    assert_eq!(run.metrics.dispatched.get(), 10_000);
    // Each task: the CloudEvent as input, the event id (scoped by the trigger) as its
    // idempotency key, the trigger and event labels.
    let t = &tasks[0];
    let ce: cloudevent::CloudEvent = serde_json::from_value(t.spec["input"].clone()).unwrap();
    assert_eq!(ce.ty, "dev.verge.object.created");
    assert_eq!(key_of(t), idempotency_key(&ce.id, "thumbs", 0));
    assert_eq!(t.metadata.labels[LABEL_EVENT], ce.id);
    assert_eq!(t.metadata.labels[verge_api::names::LABEL_TRIGGER], "thumbs");
    let keys: std::collections::HashSet<String> = tasks.iter().map(key_of).collect();
    assert_eq!(keys.len(), 10_000);
    run.stop().await;

    // A crash before the last checkpoint write: the dispatcher starts from an older
    // one and hands the same events off again — and no task runs twice.
    write_checkpoint(&e.dyn_store, last - 5_000).await.unwrap();
    let run = e.start(quick(), false);
    until(
        "the events after the old checkpoint are handed off again",
        || async move { e.checkpoint().await == Some(last) },
    )
    .await;
    assert_eq!(e.tasks().await.len(), 10_000);
    assert_eq!(
        run.metrics.dispatched.get(),
        0,
        "every redelivery found its task"
    );
    // New events still go.
    let next = e.upload("uploads", "in/late.jpg").await;
    until("a later event is handed off", || async move {
        e.checkpoint().await == Some(next)
    })
    .await;
    assert_eq!(e.tasks().await.len(), 10_001);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn only_matching_triggers_get_an_event_and_each_of_them_once() {
    let e = &env();
    e.function("thumb").await;
    e.function("audit").await;
    e.put(
        Kind::Trigger,
        "jpegs",
        json!({"event": {"bucket": "uploads", "types": ["created"], "prefix": "in/",
            "suffix": ".jpg"}, "function": "thumb"}),
    )
    .await;
    e.put(
        Kind::Trigger,
        "audit",
        json!({"event": {"bucket": "uploads", "types": ["created", "deleted"]},
            "function": "audit"}),
    )
    .await;
    e.put(
        Kind::Trigger,
        "cron",
        json!({"schedule": "* * * * *", "function": "thumb"}),
    )
    .await;
    let run = e.start(quick(), false);
    e.upload("uploads", "in/a.jpg").await;
    e.upload("uploads", "in/a.png").await;
    e.upload("other", "in/b.jpg").await;
    // Not an object record: skipped and counted, the checkpoint still moves on.
    e.store
        .create(
            &format!("{OBJECTS_PREFIX}uploads/junk"),
            Bytes::from_static(b"not json"),
            Default::default(),
        )
        .await
        .unwrap();
    let last = e.remove("uploads", "in/a.jpg").await;
    until("all handed off", || async move {
        e.checkpoint().await == Some(last)
    })
    .await;
    let mut got: Vec<(String, String, String)> = e
        .tasks()
        .await
        .iter()
        .map(|t| {
            let ce: cloudevent::CloudEvent =
                serde_json::from_value(t.spec["input"].clone()).unwrap();
            (
                t.metadata.labels[verge_api::names::LABEL_TRIGGER].clone(),
                ce.subject,
                ce.ty,
            )
        })
        .collect();
    got.sort();
    let want = |t: &str, k: &str, ty: &str| (t.to_string(), k.to_string(), ty.to_string());
    assert_eq!(
        got,
        vec![
            want("audit", "in/a.jpg", "dev.verge.object.created"),
            want("audit", "in/a.jpg", "dev.verge.object.deleted"),
            want("audit", "in/a.png", "dev.verge.object.created"),
            want("jpegs", "in/a.jpg", "dev.verge.object.created"),
        ]
    );
    assert_eq!(run.metrics.malformed.get(), 1);
    assert_eq!(run.metrics.dispatched.get(), 4);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_function_is_dead_lettered_and_redriven_after_the_fix() {
    let e = &env();
    e.put(
        Kind::Trigger,
        "later",
        json!({"event": {"bucket": "uploads", "types": ["created"]}, "function": "resize"}),
    )
    .await;
    let run = e.start(quick(), false);
    let rev = e.upload("uploads", "a.jpg").await;
    until(
        "handed off",
        || async move { e.checkpoint().await == Some(rev) },
    )
    .await;
    let dl = e.dead_letters().await;
    assert_eq!(dl.len(), 1, "{dl:?}");
    let id = dl[0].id.clone();
    assert_eq!(id, format!("{}.later", cloudevent::event_id(rev)));
    assert!(dl[0].reason.contains("not found"), "{}", dl[0].reason);
    assert_eq!(dl[0].target.function.as_deref(), Some("resize"));
    assert_eq!(run.metrics.dead_lettered.get(), 1);
    // Filtered by bucket.
    assert!(
        deadletters::list(&e.dyn_store, Some("other"))
            .await
            .unwrap()
            .is_empty()
    );
    // A redrive before the fix fails and keeps the dead letter.
    let err = deadletters::redrive(&e.dyn_store, Some(&run.tasks), &id)
        .await
        .unwrap_err();
    assert_eq!(err.reason, verge_api::Reason::NotFound);
    assert_eq!(e.dead_letters().await.len(), 1);
    // After the fix: one new task with the redrive's key; the dead letter is gone.
    e.function("resize").await;
    let r = deadletters::redrive(&e.dyn_store, Some(&run.tasks), &id)
        .await
        .unwrap();
    assert_eq!(r.redrive, 1);
    let tasks = e.tasks().await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        key_of(&tasks[0]),
        format!("{}-redrive-1/later", cloudevent::event_id(rev))
    );
    assert_eq!(tasks[0].metadata.labels[LABEL_REDRIVE], "1");
    assert!(e.dead_letters().await.is_empty());
    let again = deadletters::redrive(&e.dyn_store, Some(&run.tasks), &id)
        .await
        .unwrap_err();
    assert_eq!(again.reason, verge_api::Reason::NotFound);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_event_task_is_dead_lettered_once_and_redriven_as_a_new_run() {
    let e = &env();
    e.function("flaky").await;
    e.put(
        Kind::Trigger,
        "process",
        json!({"event": {"bucket": "uploads", "types": ["created"]}, "function": "flaky"}),
    )
    .await;
    let run = e.start(quick(), false);
    let rev = e.upload("uploads", "a.jpg").await;
    until(
        "handed off",
        || async move { e.checkpoint().await == Some(rev) },
    )
    .await;
    let task = e.tasks().await[0].metadata.name.clone();
    // The task's own attempts are used up: it ends Failed.
    e.set_task_status(
        &task,
        json!({"phase": "Failed", "attempts": 3, "error": "boom", "createdAtMs": 1}),
    )
    .await;
    until("the failed task is dead-lettered", || async move {
        e.dead_letters().await.len() == 1
    })
    .await;
    let dl = e.dead_letters().await.remove(0);
    assert_eq!(dl.task.as_deref(), Some(task.as_str()));
    assert_eq!(dl.attempts, 3);
    assert_eq!(dl.bucket, "uploads");
    assert!(dl.reason.contains("boom"), "{}", dl.reason);
    assert_eq!(dl.event.id, cloudevent::event_id(rev));
    // Redriven: a new task; the old task changing again does not bring the dead
    // letter back.
    let r = deadletters::redrive(&e.dyn_store, Some(&run.tasks), &dl.id)
        .await
        .unwrap();
    let new_task = r.task.unwrap();
    e.set_task_status(
        &task,
        json!({"phase": "Failed", "attempts": 3, "error": "boom again", "createdAtMs": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(e.dead_letters().await.is_empty());
    // The redriven run fails too: a dead letter again, counting the redrive.
    e.set_task_status(
        &new_task,
        json!({"phase": "TimedOut", "attempts": 1, "error": "no result", "createdAtMs": 1}),
    )
    .await;
    until("the redriven task is dead-lettered", || async move {
        e.dead_letters().await.len() == 1
    })
    .await;
    let dl2 = e.dead_letters().await.remove(0);
    assert_eq!(
        (dl2.redrives, dl2.task.as_deref()),
        (1, Some(new_task.as_str()))
    );
    // A second redrive uses the next key.
    let r2 = deadletters::redrive(&e.dyn_store, Some(&run.tasks), &dl2.id)
        .await
        .unwrap();
    assert_eq!(r2.redrive, 2);
    let newest = e
        .tasks()
        .await
        .into_iter()
        .find(|t| Some(&t.metadata.name) == r2.task.as_ref())
        .unwrap();
    assert_eq!(
        key_of(&newest),
        format!("{}-redrive-2/process", dl.event.id)
    );
    // A succeeded task is no dead letter.
    e.set_task_status(
        &r2.task.unwrap(),
        json!({"phase": "Succeeded", "createdAtMs": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(e.dead_letters().await.is_empty());
    run.stop().await;
}

#[tokio::test]
async fn the_dead_letter_list_is_capped_dropping_the_oldest() {
    let e = env();
    let metrics = EventMetrics::default();
    let dead = DeadLetters::new(e.dyn_store.clone(), metrics.clone(), 5);
    let event = cloudevent::build(
        verge_store::EventKind::Put,
        1,
        "/s3/objects/b1/k",
        br#"{"etag": "\"x\"", "size": 1}"#,
        "2026-12-07T22:00:00Z",
    )
    .unwrap();
    for i in 0..20i64 {
        let dl = DeadLetter {
            id: format!("{}.t", cloudevent::event_id(i + 1)),
            bucket: "b1".into(),
            trigger: "t".into(),
            target: deadletters::Target {
                function: Some("f".into()),
                sink: None,
            },
            event: event.clone(),
            reason: "r".into(),
            attempts: 1,
            time: "2026-12-07T22:00:00Z".into(),
            time_ms: 1_000 + i,
            redrives: 0,
            task: None,
        };
        dead.put(&dl).await.unwrap();
    }
    assert_eq!(dead.trim().await.unwrap(), 15);
    let left = deadletters::list(&e.dyn_store, Some("b1")).await.unwrap();
    assert_eq!(left.len(), 5);
    assert_eq!(left[0].time_ms, 1_015, "the newest are kept");
    assert_eq!(metrics.dead_letters_dropped.get(), 15);
    assert_eq!(metrics.dead_lettered.get(), 20);
}

/// A webhook receiver on loopback: answers with `answer(n)` for the n-th request
/// (`None`: never answers), and keeps what it received.
struct Hook {
    url: String,
    got: Arc<Mutex<Vec<(axum::http::HeaderMap, Bytes)>>>,
}

async fn hook(answer: impl Fn(usize) -> Option<u16> + Send + Sync + 'static) -> Hook {
    let got: Arc<Mutex<Vec<(axum::http::HeaderMap, Bytes)>>> = Arc::default();
    let seen = got.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push((headers, body));
            let a = answer(i);
            async move {
                match a {
                    Some(code) => axum::http::StatusCode::from_u16(code).unwrap(),
                    None => std::future::pending().await,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hook { url, got }
}

fn header(h: &axum::http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn sink_trigger(e: &Env, name: &str, url: &str) {
    e.put(
        Kind::Trigger,
        name,
        json!({"event": {"bucket": "uploads", "types": ["created", "deleted"]},
            "sink": {"url": url}}),
    )
    .await;
}

#[tokio::test]
async fn a_webhook_gets_a_signed_structured_cloudevent_after_retries() {
    let e = &env();
    let h = hook(|n| Some([500, 503, 200][n.min(2)])).await;
    sink_trigger(e, "hook", &h.url).await;
    let run = e.start(quick(), true);
    let rev = e.upload("uploads", "in/a.jpg").await;
    until("the webhook took it", || async {
        run.metrics.delivered.get() == 1
    })
    .await;
    until("the delivery record is gone", || async {
        e.store
            .list(DELIVERIES_PREFIX, None)
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    let got = h.got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    assert_eq!(run.metrics.failed.get(), 2);
    for (i, (headers, body)) in got.iter().enumerate() {
        assert_eq!(
            header(headers, "content-type"),
            "application/cloudevents+json"
        );
        assert_eq!(
            header(headers, "x-verge-signature"),
            callbacks::sign(KEY, body)
        );
        assert_eq!(header(headers, "x-verge-delivery"), (i + 1).to_string());
        assert_eq!(header(headers, "x-verge-event"), cloudevent::event_id(rev));
        assert_eq!(header(headers, "x-verge-trigger"), "hook");
        let ce: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], cloudevent::event_id(rev));
        assert_eq!(ce["source"], "/buckets/uploads");
        assert_eq!(ce["subject"], "in/a.jpg");
        assert_eq!(ce["data"]["sequencer"], cloudevent::event_id(rev));
    }
    run.stop().await;
}

#[tokio::test]
async fn a_hanging_webhook_costs_its_timeout_and_does_not_hold_up_other_deliveries() {
    let e = &env();
    let hang = hook(|_| None).await;
    let ok = hook(|_| Some(204)).await;
    sink_trigger(e, "slow", &hang.url).await;
    sink_trigger(e, "fast", &ok.url).await;
    let cfg = EventsConfig {
        attempt_timeout: Duration::from_secs(6),
        max_attempts: 1,
        delivery_concurrency: 2,
        ..quick()
    };
    let run = e.start(cfg, true);
    for i in 0..5 {
        e.upload("uploads", &format!("k{i}")).await;
    }
    until("the working webhook took all five", || async {
        run.metrics.delivered.get() == 5
    })
    .await;
    // Meanwhile the hanging webhook holds its slot (its deadline is not over).
    assert!(e.dead_letters().await.len() < 5);
    until(
        "every event to the hanging webhook is dead-lettered",
        || async { e.dead_letters().await.len() == 5 },
    )
    .await;
    let dl = e.dead_letters().await.remove(0);
    assert_eq!(dl.trigger, "slow");
    assert_eq!(dl.attempts, 1);
    // Why a destination gave no answer is not said.
    assert_eq!(dl.reason, verge_outbound::NOT_ALLOWED_OR_UNREACHABLE);
    assert_eq!(ok.got.lock().unwrap().len(), 5);
    run.stop().await;
}

#[tokio::test]
async fn a_failing_webhook_is_dead_lettered_then_redriven_after_the_fix_even_across_a_restart() {
    let e = &env();
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let h = hook(move |_| Some(if f.load(Ordering::SeqCst) { 200 } else { 500 })).await;
    sink_trigger(e, "hook", &h.url).await;
    let run = e.start(quick(), true);
    let rev = e.upload("uploads", "a.txt").await;
    until("dead-lettered after its attempts", || async {
        e.dead_letters().await.len() == 1
    })
    .await;
    let dl = e.dead_letters().await.remove(0);
    assert_eq!((dl.attempts, dl.reason.as_str()), (3, "answered HTTP 500"));
    assert_eq!(dl.target.sink.as_ref().unwrap().url, h.url);
    assert_eq!(dl.event.id, cloudevent::event_id(rev));
    assert_eq!(h.got.lock().unwrap().len(), 3);
    run.stop().await;

    // Fixed; redriven while the cloud is down: the record waits in the store and the
    // next worker delivers it.
    fixed.store(true, Ordering::SeqCst);
    let r = deadletters::redrive(&e.dyn_store, None, &dl.id)
        .await
        .unwrap();
    assert_eq!(
        r.delivery.as_deref(),
        Some(delivery::delivery_key("hook", &dl.event.id).as_str())
    );
    assert!(e.dead_letters().await.is_empty());
    let run = e.start(quick(), true);
    until("the redrive is delivered", || async {
        run.metrics.delivered.get() == 1
    })
    .await;
    let got = h.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    assert_eq!(header(&got[3].0, "x-verge-delivery"), "1");
    let ce: cloudevent::CloudEvent = serde_json::from_slice(&got[3].1).unwrap();
    assert_eq!(ce, dl.event);
    run.stop().await;
}

#[tokio::test]
async fn a_webhook_on_a_private_address_is_refused_by_the_outbound_guard() {
    let e = &env();
    let h = hook(|_| Some(200)).await;
    sink_trigger(e, "internal", &h.url).await;
    // Loopback not allowed.
    let run = e.start(quick(), false);
    e.upload("uploads", "a").await;
    until("dead-lettered", || async {
        e.dead_letters().await.len() == 1
    })
    .await;
    let dl = e.dead_letters().await.remove(0);
    assert_eq!(dl.reason, verge_outbound::NOT_ALLOWED_OR_UNREACHABLE);
    assert!(h.got.lock().unwrap().is_empty(), "nothing reached it");
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pending_deliveries_are_bounded_and_the_dispatcher_waits_for_room() {
    let e = &env();
    // Nothing listens on port 9 of a documentation address, and it is not allowed:
    // every attempt fails at once; with a long backoff the records stay pending.
    sink_trigger(e, "nowhere", "http://192.0.2.1:9/hook").await;
    let cfg = EventsConfig {
        max_pending_deliveries: 10,
        max_attempts: 1000,
        backoff_base: Duration::from_secs(3600),
        backoff_cap: Duration::from_secs(3600),
        batch: 4,
        ..quick()
    };
    let run = e.start(cfg, false);
    let mut revs = Vec::new();
    for i in 0..30 {
        revs.push(e.upload("uploads", &format!("k{i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let pending = e
        .store
        .list(DELIVERIES_PREFIX, None)
        .await
        .unwrap()
        .items
        .len();
    assert!(
        (10..=10 + 4).contains(&pending),
        "{pending} delivery records for a cap of 10"
    );
    let cp = e.checkpoint().await.unwrap();
    assert!(cp < *revs.last().unwrap(), "the checkpoint waits for room");
    // Room again (the records are delivered or dropped): the rest follow.
    for kv in e.store.list(DELIVERIES_PREFIX, None).await.unwrap().items {
        e.store.delete(&kv.key, Expect::Any).await.unwrap();
    }
    let last = *revs.last().unwrap();
    until("everything is handed off", || async {
        if e.checkpoint().await == Some(last) {
            return true;
        }
        for kv in e.store.list(DELIVERIES_PREFIX, None).await.unwrap().items {
            let _ = e.store.delete(&kv.key, Expect::Any).await;
        }
        false
    })
    .await;
    run.stop().await;
}

#[test]
fn dead_letters_of_tasks_need_both_labels_a_final_failure_and_an_event_input() {
    let ce = cloudevent::build(
        verge_store::EventKind::Put,
        9,
        "/s3/objects/b1/k",
        br#"{"etag": "\"x\"", "size": 1}"#,
        "2026-12-07T22:00:00Z",
    )
    .unwrap();
    let task = |labels: &[(&str, &str)], phase: &str| -> Object {
        serde_json::from_value(json!({"apiVersion": verge_api::API_VERSION, "kind": "Task",
            "metadata": {"name": "t-1", "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
            "spec": {"function": "f", "input": ce},
            "status": {"phase": phase, "attempts": 2, "error": "bad", "createdAtMs": 1}}))
        .unwrap()
    };
    let both = [
        (verge_api::names::LABEL_TRIGGER, "tr"),
        (LABEL_EVENT, "0000000000000009"),
    ];
    let dl = dispatcher::dead_letter_of_task(&task(&both, "Failed"), 5, "now").unwrap();
    assert_eq!(dl.id, "0000000000000009.tr");
    assert_eq!((dl.attempts, dl.redrives, dl.time_ms), (2, 0, 5));
    assert!(dispatcher::dead_letter_of_task(&task(&both, "TimedOut"), 5, "now").is_some());
    for phase in ["Succeeded", "Cancelled", "Running", "Pending"] {
        assert!(dispatcher::dead_letter_of_task(&task(&both, phase), 5, "now").is_none());
    }
    assert!(dispatcher::dead_letter_of_task(&task(&both[..1], "Failed"), 5, "now").is_none());
    assert!(dispatcher::dead_letter_of_task(&task(&both[1..], "Failed"), 5, "now").is_none());
    let _ = TaskStatus::default();
    let _: Option<Delivery> = None;
}
