//! The runtime against `MemStore`, with paused time: what wakes a key, requeues,
//! backoff, one run per key at a time, relisting after compaction, shutdown.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use verge_store::{MemStore, Store};

use super::*;

fn object(kind: Kind, name: &str, v: i64) -> Bytes {
    let o = serde_json::json!({"apiVersion": "verge.dev/v1", "kind": kind.name(),
        "metadata": {"name": name}, "spec": {"v": v}});
    Bytes::from(serde_json::to_vec(&o).unwrap())
}

fn key(kind: Kind, name: &str) -> String {
    crate::objects::object_key(kind, name)
}

async fn put(store: &MemStore, kind: Kind, name: &str, v: i64) {
    let k = key(kind, name);
    if store.get(&k).await.unwrap().is_some() {
        store
            .update(
                &k,
                object(kind, name, v),
                Default::default(),
                verge_store::Expect::Any,
            )
            .await
            .unwrap();
    } else {
        store
            .create(&k, object(kind, name, v), Default::default())
            .await
            .unwrap();
    }
}

/// What reconciles saw: key → the `spec.v` of each run (`-1`: no object).
#[derive(Default)]
struct Seen {
    runs: Mutex<BTreeMap<String, Vec<i64>>>,
}

impl Seen {
    fn record(&self, req: &Request) {
        let v = req
            .object
            .as_ref()
            .and_then(|o| o.spec["v"].as_i64())
            .unwrap_or(-1);
        self.runs
            .lock()
            .unwrap()
            .entry(req.key.clone())
            .or_default()
            .push(v);
    }

    fn of(&self, key: &str) -> Vec<i64> {
        self.runs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

/// Lets every spawned task run until nothing is left to do (time is paused).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

struct Env {
    store: MemStore,
    seen: Arc<Seen>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(store: MemStore, build: impl FnOnce(Controller) -> Controller, action: Action) -> Env {
    let (stop, rx) = watch::channel(false);
    let informers = Informers::new(Arc::new(store.clone()), rx.clone());
    let seen = Arc::new(Seen::default());
    let c = build(Controller::new("test", informers));
    let task = tokio::spawn(c.run(
        move |req: Request, seen: Arc<Seen>| async move {
            seen.record(&req);
            Ok::<_, String>(action)
        },
        backoff_policy,
        seen.clone(),
        rx,
    ));
    Env {
        store,
        seen,
        stop,
        task,
    }
}

#[tokio::test(start_paused = true)]
async fn every_object_at_start_then_each_change() {
    let store = MemStore::new();
    put(&store, Kind::Config, "a", 1).await;
    put(&store, Kind::Config, "b", 1).await;
    let e = start(store, |c| c.for_kind(Kind::Config), Action::await_change());
    settle().await;
    assert_eq!(e.seen.of("a"), vec![1]);
    assert_eq!(e.seen.of("b"), vec![1]);
    put(&e.store, Kind::Config, "a", 2).await;
    settle().await;
    assert_eq!(e.seen.of("a"), vec![1, 2]);
    assert_eq!(e.seen.of("b"), vec![1], "an unchanged key is left alone");
    e.store
        .delete(&key(Kind::Config, "b"), verge_store::Expect::Any)
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        e.seen.of("b"),
        vec![1, -1],
        "a deletion runs with no object"
    );
    e.stop.send_replace(true);
    e.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn requeue_runs_again_after_the_delay_and_nothing_else_polls() {
    let store = MemStore::new();
    put(&store, Kind::Config, "a", 1).await;
    let e = start(
        store,
        |c| c.for_kind(Kind::Config),
        Action::requeue(Duration::from_secs(30)),
    );
    settle().await;
    assert_eq!(e.seen.of("a").len(), 1);
    tokio::time::sleep(Duration::from_secs(29)).await;
    settle().await;
    assert_eq!(e.seen.of("a").len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(e.seen.of("a").len(), 2);
    e.stop.send_replace(true);
    e.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn other_kinds_wake_the_keys_they_map_to() {
    let store = MemStore::new();
    put(&store, Kind::App, "web", 1).await;
    put(&store, Kind::App, "db", 1).await;
    let e = start(
        store,
        |c| {
            c.for_kind(Kind::App)
                // A node change wakes the app the node names.
                .watches(Kind::Node, |ch| {
                    ch.new
                        .as_ref()
                        .and_then(|o| o.spec["v"].as_i64())
                        .map(|v| vec![if v == 1 { "web" } else { "db" }.to_string()])
                        .unwrap_or_default()
                })
        },
        Action::await_change(),
    );
    settle().await;
    put(&e.store, Kind::Node, "n1", 1).await;
    settle().await;
    assert_eq!(e.seen.of("web").len(), 2);
    assert_eq!(e.seen.of("db").len(), 1);
    e.stop.send_replace(true);
    e.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_backs_off_exponentially_and_others_keep_going() {
    let store = MemStore::new();
    put(&store, Kind::Config, "bad", 1).await;
    put(&store, Kind::Config, "good", 1).await;
    let (stop, rx) = watch::channel(false);
    let informers = Informers::new(Arc::new(store.clone()), rx.clone());
    let seen = Arc::new(Seen::default());
    let task = tokio::spawn(Controller::new("t", informers).for_kind(Kind::Config).run(
        |req: Request, seen: Arc<Seen>| async move {
            seen.record(&req);
            if req.key == "bad" {
                Err("broken".to_string())
            } else {
                Ok(Action::await_change())
            }
        },
        |_e: &String, failures| Action::requeue(Duration::from_secs(1) * 2u32.pow(failures - 1)),
        seen.clone(),
        rx,
    ));
    settle().await;
    // Runs at 0, +1, +2, +4 s: four by t = 7.5 s, a fifth at 15 s.
    tokio::time::sleep(Duration::from_millis(7500)).await;
    settle().await;
    assert_eq!(seen.of("bad").len(), 4);
    assert_eq!(seen.of("good").len(), 1);
    tokio::time::sleep(Duration::from_secs(8)).await;
    settle().await;
    assert_eq!(seen.of("bad").len(), 5);
    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_runs_once_at_a_time_and_again_after_a_change_during_its_run() {
    let store = MemStore::new();
    put(&store, Kind::Config, "a", 1).await;
    let (stop, rx) = watch::channel(false);
    let informers = Informers::new(Arc::new(store.clone()), rx.clone());
    #[derive(Default)]
    struct Ctx {
        seen: Seen,
        inside: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }
    let ctx = Arc::new(Ctx::default());
    let task = tokio::spawn(
        Controller::new("t", informers)
            .for_kind(Kind::Config)
            .concurrency(4)
            .run(
                |req: Request, ctx: Arc<Ctx>| async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let n = ctx.inside.fetch_add(1, SeqCst) + 1;
                    ctx.most.fetch_max(n, SeqCst);
                    ctx.seen.record(&req);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    ctx.inside.fetch_sub(1, SeqCst);
                    Ok::<_, String>(Action::await_change())
                },
                backoff_policy,
                ctx.clone(),
                rx,
            ),
    );
    settle().await;
    put(&store, Kind::Config, "a", 2).await;
    put(&store, Kind::Config, "a", 3).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    settle().await;
    assert_eq!(ctx.most.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The first run, then one more for the changes made during it (latest state).
    assert_eq!(ctx.seen.of("a"), vec![1, 3]);
    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn compaction_overtaking_the_watch_relists_and_loses_no_change() {
    let store = MemStore::new();
    for i in 0..3 {
        put(&store, Kind::Config, &format!("k{i}"), 0).await;
    }
    let e = start(store, |c| c.for_kind(Kind::Config), Action::await_change());
    settle().await;
    // Thousands of writes while the informer cannot run (MemStore writes do not yield),
    // then compaction past all of them: its watch lags, finds the history gone (410)
    // and must relist.
    for round in 1..=5000 {
        put(&e.store, Kind::Config, &format!("k{}", round % 3), round).await;
    }
    put(&e.store, Kind::Config, "new", 7).await;
    e.store
        .delete(&key(Kind::Config, "k0"), verge_store::Expect::Any)
        .await
        .unwrap();
    let rev = e.store.current_revision().await.unwrap();
    e.store.compact(rev).await.unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    settle().await;
    assert_eq!(e.seen.of("k0").last(), Some(&-1), "the deletion was seen");
    assert_eq!(e.seen.of("k1").last(), Some(&4999));
    assert_eq!(e.seen.of("k2").last(), Some(&5000));
    assert_eq!(e.seen.of("new").last(), Some(&7));
    // And it keeps following live changes afterwards.
    put(&e.store, Kind::Config, "k1", 9000).await;
    settle().await;
    assert_eq!(e.seen.of("k1").last(), Some(&9000));
    e.stop.send_replace(true);
    e.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn seeds_and_wakeups_drive_keyed_controllers_and_shutdown_ends_run() {
    let store = MemStore::new();
    let (tx, rx_keys) = mpsc::unbounded_channel();
    let e = start(
        store,
        |c| c.seed("compaction").wakeups(rx_keys),
        Action::requeue(Duration::from_secs(60)),
    );
    settle().await;
    assert_eq!(e.seen.of("compaction"), vec![-1]);
    tx.send("node-a".to_string()).unwrap();
    settle().await;
    assert_eq!(e.seen.of("node-a").len(), 1);
    drop(tx);
    settle().await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    assert_eq!(e.seen.of("compaction").len(), 2);
    e.stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(30), e.task)
        .await
        .expect("run returns after shutdown")
        .unwrap();
}
