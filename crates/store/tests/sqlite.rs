//! Behavioural tests of the SQLite store: CRUD and preconditions, revisions and their
//! persistence, durability, watch ordering/resume/lag recovery, compaction, list.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use verge_api::LabelSelector;
use verge_store::{
    Error, Event, EventKind, Expect, Labels, SqliteOptions, SqliteStore, Store, WatchStream,
};

fn opts(dir: &Path) -> SqliteOptions {
    SqliteOptions::new(dir.join("nested/dir/verge.db"))
}

async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(opts(dir)).await.unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Next item of a watch stream, failing the test instead of hanging forever.
async fn next(stream: &mut WatchStream) -> Option<verge_store::Result<Arc<Event>>> {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("watch stream stalled")
}

async fn take(stream: &mut WatchStream, n: usize) -> Vec<Arc<Event>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next(stream).await.expect("stream ended early").unwrap());
    }
    out
}

#[tokio::test]
async fn crud_and_preconditions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.get("k").await.unwrap(), None);

    let kv = store
        .create("k", b("v1"), labels(&[("app", "x")]))
        .await
        .unwrap();
    assert_eq!((kv.key.as_str(), &kv.value[..]), ("k", &b"v1"[..]));
    assert_eq!((kv.create_revision, kv.mod_revision), (1, 1));
    assert_eq!(kv.labels, labels(&[("app", "x")]));
    assert_eq!(store.get("k").await.unwrap(), Some(kv.clone()));

    match store.create("k", b("other"), Labels::new()).await {
        Err(Error::AlreadyExists { key }) => assert_eq!(key, "k"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // A failed precondition consumes no revision.
    assert_eq!(store.current_revision().await.unwrap(), 1);

    let kv2 = store
        .update("k", b("v2"), Labels::new(), Expect::Any)
        .await
        .unwrap();
    assert_eq!((kv2.create_revision, kv2.mod_revision), (1, 2));
    assert!(kv2.labels.is_empty());

    match store
        .update("k", b("v3"), Labels::new(), Expect::ModRevision(1))
        .await
    {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => assert_eq!((key.as_str(), expected, current), ("k", 1, 2)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let kv3 = store
        .update("k", b("v3"), Labels::new(), Expect::ModRevision(2))
        .await
        .unwrap();
    assert_eq!((kv3.create_revision, kv3.mod_revision), (1, 3));
    assert_eq!(store.get("k").await.unwrap(), Some(kv3.clone()));

    for expect in [Expect::Any, Expect::ModRevision(3)] {
        match store.update("missing", b("x"), Labels::new(), expect).await {
            Err(Error::NotFound { key }) => assert_eq!(key, "missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        match store.delete("missing", expect).await {
            Err(Error::NotFound { key }) => assert_eq!(key, "missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    match store.delete("k", Expect::ModRevision(2)).await {
        Err(Error::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (2, 3)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.current_revision().await.unwrap(), 3);

    let deleted = store.delete("k", Expect::ModRevision(3)).await.unwrap();
    assert_eq!(&deleted.value[..], b"v3");
    assert_eq!((deleted.create_revision, deleted.mod_revision), (1, 4));
    assert_eq!(store.get("k").await.unwrap(), None);
    assert!(matches!(
        store.delete("k", Expect::Any).await,
        Err(Error::NotFound { .. })
    ));

    // Re-creating starts a new lifetime.
    let again = store.create("k", b("new"), Labels::new()).await.unwrap();
    assert_eq!((again.create_revision, again.mod_revision), (5, 5));
    let gone = store.delete("k", Expect::Any).await.unwrap();
    assert_eq!(gone.mod_revision, 6);
    assert_eq!(store.current_revision().await.unwrap(), 6);
    store.close().await;
}

#[tokio::test]
async fn concurrent_creates_of_one_key_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create("same", Bytes::from(format!("{i}")), Labels::new())
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(kv) => {
                ok += 1;
                assert_eq!(kv.mod_revision, 1);
            }
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(store.current_revision().await.unwrap(), 1);
    store.close().await;
}

#[tokio::test]
async fn ops_in_one_batch_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut w = store.watch("", 0).await.unwrap();
    store.create("b", b("old"), Labels::new()).await.unwrap(); // rev 1
    // On this single-threaded runtime, all of these are queued before the writer runs,
    // so they land in one batch, applied in order.
    let (c1, c2, u1, d1, u2, c3, d2, db, cb) = tokio::join!(
        store.create("a", b("1"), labels(&[("x", "1")])),
        store.create("a", b("dup"), Labels::new()),
        store.update("a", b("2"), labels(&[("x", "2")]), Expect::ModRevision(2)),
        store.delete("a", Expect::ModRevision(3)),
        store.update("a", b("3"), Labels::new(), Expect::Any),
        store.create("a", b("4"), Labels::new()),
        store.delete("a", Expect::ModRevision(2)),
        store.delete("b", Expect::ModRevision(1)),
        store.create("b", b("new"), Labels::new()),
    );
    assert_eq!(c1.unwrap().mod_revision, 2);
    assert!(matches!(c2, Err(Error::AlreadyExists { .. })));
    let u1 = u1.unwrap();
    assert_eq!((u1.create_revision, u1.mod_revision), (2, 3));
    let d1 = d1.unwrap();
    assert_eq!((&d1.value[..], d1.mod_revision), (&b"2"[..], 4));
    assert_eq!(d1.labels, labels(&[("x", "2")]));
    assert!(matches!(u2, Err(Error::NotFound { .. })));
    let c3 = c3.unwrap();
    assert_eq!((c3.create_revision, c3.mod_revision), (5, 5));
    assert!(matches!(
        d2,
        Err(Error::Conflict {
            expected: 2,
            current: 5,
            ..
        })
    ));
    let db = db.unwrap();
    assert_eq!(
        (&db.value[..], db.create_revision, db.mod_revision),
        (&b"old"[..], 1, 6)
    );
    assert_eq!(cb.unwrap().create_revision, 7);

    assert_eq!(store.current_revision().await.unwrap(), 7);
    assert_eq!(store.get("a").await.unwrap(), Some(c3));
    assert_eq!(&store.get("b").await.unwrap().unwrap().value[..], b"new");
    let events = take(&mut w, 7).await;
    let summary: Vec<(i64, EventKind, &str)> = events
        .iter()
        .map(|e| (e.revision, e.kind, e.kv.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, EventKind::Put, "b"),
            (2, EventKind::Put, "a"),
            (3, EventKind::Put, "a"),
            (4, EventKind::Delete, "a"),
            (5, EventKind::Put, "a"),
            (6, EventKind::Delete, "b"),
            (7, EventKind::Put, "b"),
        ]
    );
    assert_eq!(&events[3].kv.value[..], b"2");
    store.close().await;

    // And it was all written as simulated.
    let store = open(dir.path()).await;
    let list = store.list("", None).await.unwrap();
    let got: Vec<(&str, &[u8], i64, i64)> = list
        .items
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                &kv.value[..],
                kv.create_revision,
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(got, [("a", &b"4"[..], 5, 5), ("b", &b"new"[..], 7, 7)]);
    let history = take(&mut store.watch("", 0).await.unwrap(), 7).await;
    assert_eq!(
        history
            .iter()
            .map(|e| (e.revision, e.kind, e.kv.clone()))
            .collect::<Vec<_>>(),
        events
            .iter()
            .map(|e| (e.revision, e.kind, e.kv.clone()))
            .collect::<Vec<_>>()
    );
    store.close().await;
}

#[tokio::test]
async fn compaction_in_the_same_batch_as_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.create("x", b("0"), Labels::new()).await.unwrap(); // rev 1
    let (c, u, k, d, k2) = tokio::join!(
        store.create("y", b("1"), Labels::new()), // rev 2
        store.update("x", b("2"), Labels::new(), Expect::Any), // rev 3
        store.compact(100),                       // capped at 3
        store.delete("y", Expect::Any),           // rev 4
        store.compact(2),                         // no-op
    );
    assert_eq!(c.unwrap().mod_revision, 2);
    assert_eq!(u.unwrap().mod_revision, 3);
    k.unwrap();
    assert_eq!(d.unwrap().mod_revision, 4);
    k2.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 3);
    assert_eq!(store.current_revision().await.unwrap(), 4);
    assert!(matches!(
        store.watch("", 2).await,
        Err(Error::Compacted { compacted: 3, .. })
    ));
    let mut w = store.watch("", 3).await.unwrap();
    let ev = next(&mut w).await.unwrap().unwrap();
    assert_eq!(
        (ev.revision, ev.kind, ev.kv.key.as_str()),
        (4, EventKind::Delete, "y")
    );
    assert_eq!(&store.get("x").await.unwrap().unwrap().value[..], b"2");
    store.close().await;
}

#[tokio::test]
async fn empty_and_binary_values_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let binary = Bytes::from((0..=255u8).collect::<Vec<_>>());
    store
        .create("empty", Bytes::new(), Labels::new())
        .await
        .unwrap();
    store
        .create("bin", binary.clone(), labels(&[("q", "\"quoted\\\"")]))
        .await
        .unwrap();
    store
        .create("ключ/\u{1F600}\"\\\n", b("unicode key"), Labels::new())
        .await
        .unwrap();
    assert_eq!(
        store.get("empty").await.unwrap().unwrap().value,
        Bytes::new()
    );
    let bin = store.get("bin").await.unwrap().unwrap();
    assert_eq!(bin.value, binary);
    assert_eq!(bin.labels, labels(&[("q", "\"quoted\\\"")]));
    assert_eq!(
        &store
            .get("ключ/\u{1F600}\"\\\n")
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"unicode key"
    );
    let deleted = store.delete("bin", Expect::Any).await.unwrap();
    assert_eq!(deleted.value, binary);
    let history = take(&mut store.watch("", 0).await.unwrap(), 4).await;
    assert_eq!(history[0].kv.value, Bytes::new());
    assert_eq!(history[1].kv.value, binary);
    assert_eq!(history[3].kv.value, binary);
    assert_eq!(history[3].kv.labels, labels(&[("q", "\"quoted\\\"")]));
    assert_eq!(history[2].kv.key, "ключ/\u{1F600}\"\\\n");
    store.close().await;
}

#[tokio::test]
async fn failed_batch_fails_all_its_ops_and_the_writer_carries_on() {
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut w = store.watch("", 0).await.unwrap();
    store.create("before", b("v"), Labels::new()).await.unwrap();

    // Sabotage from a second connection: any event row for key "poison" aborts.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(opts(dir.path()).path)
        .connect()
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.key = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let (p, ok) = tokio::join!(
        store.create("poison", b("v"), Labels::new()),
        store.create("innocent", b("v"), Labels::new()),
    );
    match p {
        Err(Error::BatchFailed(msg)) => assert!(msg.contains("poisoned"), "{msg}"),
        other => panic!("expected BatchFailed, got {other:?}"),
    }
    assert!(matches!(ok, Err(Error::BatchFailed(_))));
    assert_eq!(store.current_revision().await.unwrap(), 1);
    assert_eq!(store.get("innocent").await.unwrap(), None);

    sqlx::query("DROP TRIGGER poison")
        .execute(&mut conn)
        .await
        .unwrap();
    let kv = store
        .create("innocent", b("v"), Labels::new())
        .await
        .unwrap();
    assert_eq!(
        kv.mod_revision, 2,
        "no revision was consumed by the failed batch"
    );
    let events = take(&mut w, 2).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.revision, e.kv.key.as_str()))
            .collect::<Vec<_>>(),
        [(1, "before"), (2, "innocent")]
    );
    store.close().await;
}

#[tokio::test]
async fn revisions_persist_across_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut last = 0;
    for i in 0..10 {
        let kv = store
            .create(&format!("k{i}"), b("v"), Labels::new())
            .await
            .unwrap();
        assert!(kv.mod_revision > last, "revisions strictly increase");
        last = kv.mod_revision;
    }
    for i in 0..10 {
        store.delete(&format!("k{i}"), Expect::Any).await.unwrap();
    }
    assert_eq!(store.current_revision().await.unwrap(), 20);
    store.compact(20).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 20);
    store.close().await;

    let store = open(dir.path()).await;
    // Everything deleted and all history compacted: the revision still does not go back.
    assert_eq!(store.current_revision().await.unwrap(), 20);
    assert_eq!(store.compacted_revision().await.unwrap(), 20);
    let list = store.list("", None).await.unwrap();
    assert!(list.items.is_empty());
    assert_eq!(list.revision, 20);
    let kv = store.create("k0", b("v"), Labels::new()).await.unwrap();
    assert_eq!(kv.mod_revision, 21);
    store.close().await;

    let store = open(dir.path()).await;
    assert_eq!(store.current_revision().await.unwrap(), 21);
    store.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.create("k", b("v"), Labels::new()).await.unwrap();
    let mode = std::fs::metadata(opts(dir.path()).path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    store.close().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_drop_and_close() {
    let dir = tempfile::tempdir().unwrap();
    const N: usize = 300;
    {
        let store = Arc::new(open(dir.path()).await);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..N).step_by(8) {
                    store
                        .create(
                            &format!("key/{i:04}"),
                            Bytes::from(vec![i as u8; 300]),
                            Labels::new(),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Dropped without close(): must neither hang nor lose acknowledged writes.
        drop(store);
    }
    let store = open(dir.path()).await;
    let list = store.list("key/", None).await.unwrap();
    assert_eq!(list.items.len(), N);
    assert_eq!(list.revision, N as i64);
    for (i, kv) in list.items.iter().enumerate() {
        assert_eq!(kv.key, format!("key/{i:04}"));
        assert_eq!(kv.value, Bytes::from(vec![i as u8; 300]));
    }
    store
        .update("key/0000", b("x"), Labels::new(), Expect::Any)
        .await
        .unwrap();
    store.close().await;

    let store = open(dir.path()).await;
    assert_eq!(
        &store.get("key/0000").await.unwrap().unwrap().value[..],
        b"x"
    );
    assert_eq!(store.current_revision().await.unwrap(), N as i64 + 1);
    store.close().await;
}

#[tokio::test]
async fn close_refuses_writes_and_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    store.create("a", b("1"), Labels::new()).await.unwrap();
    let mut w = store.watch("", 0).await.unwrap();
    store.close().await;
    store.close().await; // idempotent
    assert!(matches!(
        store.create("b", b("2"), Labels::new()).await,
        Err(Error::Closed)
    ));
    assert!(matches!(store.compact(1).await, Err(Error::Closed)));
    assert!(matches!(store.get("a").await, Err(Error::Closed)));
    assert!(matches!(store.watch("", 0).await, Err(Error::Closed)));
    // The watcher ends (possibly after the one event it may still have read).
    let mut seen = 0;
    while let Some(item) = next(&mut w).await {
        item.unwrap();
        seen += 1;
    }
    assert!(seen <= 1);
}

fn assert_strictly_increasing(events: &[Arc<Event>]) {
    for w in events.windows(2) {
        assert!(
            w[0].revision < w[1].revision,
            "revision {} followed by {}",
            w[0].revision,
            w[1].revision
        );
    }
}

#[tokio::test]
async fn watch_sees_concurrent_writes_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    let mut all = store.watch("", 0).await.unwrap();
    let mut only_a = store.watch("a/", 0).await.unwrap();

    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let prefix = if t % 2 == 0 { "a" } else { "b" };
            for i in 0..PER_TASK {
                let key = format!("{prefix}/{t}/{}", i % 20);
                if i < 20 {
                    store.create(&key, b("v"), Labels::new()).await.unwrap();
                } else if i % 7 == 0 {
                    store.delete(&key, Expect::Any).await.unwrap();
                    store.create(&key, b("again"), Labels::new()).await.unwrap();
                } else {
                    store
                        .update(
                            &key,
                            Bytes::from(format!("{i}")),
                            Labels::new(),
                            Expect::Any,
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = store.current_revision().await.unwrap();
    let events = take(&mut all, total as usize).await;
    let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (1..=total).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.kv.mod_revision == e.revision));

    let a_count = events.iter().filter(|e| e.kv.key.starts_with("a/")).count();
    let a_events = take(&mut only_a, a_count).await;
    assert!(a_events.iter().all(|e| e.kv.key.starts_with("a/")));
    assert_strictly_increasing(&a_events);
    let expected: Vec<i64> = events
        .iter()
        .filter(|e| e.kv.key.starts_with("a/"))
        .map(|e| e.revision)
        .collect();
    assert_eq!(
        a_events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        expected
    );

    // Nothing more: the next event either side sees is a fresh one.
    let kv = store.create("a/last", b("v"), Labels::new()).await.unwrap();
    assert_eq!(
        next(&mut all).await.unwrap().unwrap().revision,
        kv.mod_revision
    );
    assert_eq!(
        next(&mut only_a).await.unwrap().unwrap().revision,
        kv.mod_revision
    );
    store.close().await;
}

#[tokio::test]
async fn watch_resumes_without_gap_or_duplicate_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.watch_buffer = 64;
    let store = Arc::new(SqliteStore::open(o).await.unwrap());
    // History spanning several read chunks (1000 rows each).
    let first = futures::future::join_all((0..2500).map(|i| {
        let store = store.clone();
        async move {
            store
                .create(&format!("k/{i}"), b("v"), Labels::new())
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(first.len(), 2500);

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                store
                    .update(&format!("k/{i}"), b("w"), Labels::new(), Expect::Any)
                    .await
                    .unwrap();
            }
        })
    };
    tokio::task::yield_now().await;
    let mut w = store.watch("k/", 100).await.unwrap();
    let events = take(&mut w, 2900).await;
    writer.await.unwrap();
    let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (101..=3000).collect::<Vec<_>>());
    assert!(events[..2400].iter().all(|e| e.is_create()));
    assert!(events[2400..].iter().all(|e| !e.is_create()));

    // Watching from beyond the current revision just waits for it.
    let mut future = store.watch("k/", 3002).await.unwrap();
    for i in 0..3 {
        store
            .update(&format!("k/{i}"), b("x"), Labels::new(), Expect::Any)
            .await
            .unwrap();
    }
    assert_eq!(next(&mut future).await.unwrap().unwrap().revision, 3003);
    store.close().await;
}

#[tokio::test]
async fn compaction_limits_watch_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 1..=10 {
        store
            .create(&format!("k{i:02}"), b("v"), Labels::new())
            .await
            .unwrap();
    }
    store.compact(5).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), 5);
    match store.watch("", 4).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (4, 5)),
        Ok(_) => panic!("watch below the compacted revision must fail"),
        Err(e) => panic!("unexpected error {e}"),
    }
    let mut w = store.watch("", 5).await.unwrap();
    let events = take(&mut w, 5).await;
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    // Current values are untouched by compaction.
    let list = store.list("", None).await.unwrap();
    assert_eq!(list.items.len(), 10);
    assert_eq!(list.items[0].mod_revision, 1);

    store.compact(3).await.unwrap(); // no-op: already further
    assert_eq!(store.compacted_revision().await.unwrap(), 5);
    store.compact(1000).await.unwrap(); // capped at the current revision
    assert_eq!(store.compacted_revision().await.unwrap(), 10);
    assert_eq!(store.current_revision().await.unwrap(), 10);
    assert!(matches!(
        store.watch("", 9).await,
        Err(Error::Compacted { compacted: 10, .. })
    ));
    let mut w2 = store.watch("", 10).await.unwrap();
    let kv = store.create("k11", b("v"), Labels::new()).await.unwrap();
    assert_eq!(kv.mod_revision, 11);
    let ev = next(&mut w2).await.unwrap().unwrap();
    assert_eq!((ev.revision, ev.kind), (11, EventKind::Put));
    // The first watcher keeps following live events too.
    assert_eq!(next(&mut w).await.unwrap().unwrap().revision, 11);
    store.close().await;
}

#[tokio::test]
async fn lagged_watcher_recovers_from_the_events_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.watch_buffer = 16;
    let store = Arc::new(SqliteStore::open(o).await.unwrap());
    let mut all = store.watch("", 0).await.unwrap();
    let mut evens = store.watch("even/", 0).await.unwrap();
    // Get both into the live phase first.
    store.create("odd/0", b("v"), Labels::new()).await.unwrap();
    assert_eq!(next(&mut all).await.unwrap().unwrap().revision, 1);

    const N: i64 = 1500;
    futures::future::join_all((1..N).map(|i| {
        let store = store.clone();
        async move {
            let key = if i % 2 == 0 {
                format!("even/{i}")
            } else {
                format!("odd/{i}")
            };
            store.create(&key, b("v"), Labels::new()).await.unwrap();
        }
    }))
    .await;
    // Far more than the 16-slot buffer happened without polling: all still arrive.
    let events = take(&mut all, (N - 1) as usize).await;
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (2..=N).collect::<Vec<_>>()
    );
    let expected: Vec<(i64, String)> = events
        .iter()
        .filter(|e| e.kv.key.starts_with("even/"))
        .map(|e| (e.revision, e.kv.key.clone()))
        .collect();
    let got = take(&mut evens, expected.len()).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.revision, e.kv.key.clone()))
            .collect::<Vec<_>>(),
        expected
    );
    // And live again afterwards.
    store
        .create("even/last", b("v"), Labels::new())
        .await
        .unwrap();
    assert_eq!(next(&mut all).await.unwrap().unwrap().revision, N + 1);
    assert_eq!(next(&mut evens).await.unwrap().unwrap().revision, N + 1);
    store.close().await;
}

#[tokio::test]
async fn lagged_watcher_behind_compaction_gets_compacted_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.watch_buffer = 8;
    let store = SqliteStore::open(o).await.unwrap();
    let mut w = store.watch("", 0).await.unwrap();
    for i in 0..5 {
        store
            .create(&format!("k{i}"), b("v"), Labels::new())
            .await
            .unwrap();
    }
    assert_eq!(take(&mut w, 5).await.last().unwrap().revision, 5);
    for i in 5..100 {
        store
            .create(&format!("k{i}"), b("v"), Labels::new())
            .await
            .unwrap();
    }
    store.compact(50).await.unwrap();
    match next(&mut w).await {
        Some(Err(Error::Compacted {
            requested,
            compacted,
        })) => assert_eq!((requested, compacted), (5, 50)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next(&mut w).await.is_none(), "stream ends after the error");
    store.close().await;
}

#[tokio::test]
async fn list_filters_by_prefix_and_selector() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let prod = labels(&[("env", "prod")]);
    let dev = labels(&[("env", "dev"), ("tier", "web")]);
    store.create("apps/b", b("1"), prod.clone()).await.unwrap();
    store.create("apps/a", b("2"), dev.clone()).await.unwrap();
    store.create("apps/c", b("3"), Labels::new()).await.unwrap();
    store.create("apps0", b("4"), prod.clone()).await.unwrap();
    store.create("app", b("5"), prod.clone()).await.unwrap();
    store
        .create("apps/\u{10FFFF}", b("6"), prod.clone())
        .await
        .unwrap();

    let keys = |l: &verge_store::ListResult| -> Vec<String> {
        l.items.iter().map(|kv| kv.key.clone()).collect()
    };
    let all = store.list("apps/", None).await.unwrap();
    assert_eq!(
        keys(&all),
        ["apps/a", "apps/b", "apps/c", "apps/\u{10FFFF}"]
    );
    assert_eq!(all.revision, 6);
    assert_eq!(all.items[1].labels, prod);

    let sel = LabelSelector::parse("env=prod").unwrap();
    let l = store.list("apps/", Some(&sel)).await.unwrap();
    assert_eq!(keys(&l), ["apps/b", "apps/\u{10FFFF}"]);
    let sel = LabelSelector::parse("env!=prod").unwrap();
    assert_eq!(
        keys(&store.list("apps/", Some(&sel)).await.unwrap()),
        ["apps/a", "apps/c"]
    );
    let sel = LabelSelector::parse("tier in (web),env").unwrap();
    assert_eq!(keys(&store.list("", Some(&sel)).await.unwrap()), ["apps/a"]);
    assert_eq!(
        keys(&store.list("app", None).await.unwrap()),
        [
            "app",
            "apps/a",
            "apps/b",
            "apps/c",
            "apps/\u{10FFFF}",
            "apps0"
        ]
    );
    assert_eq!(keys(&store.list("", None).await.unwrap()).len(), 6);
    assert!(store.list("zzz", None).await.unwrap().items.is_empty());
    store.close().await;
}

#[tokio::test]
async fn list_is_a_consistent_snapshot_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    store
                        .create(&format!("k/{t}/{i:03}"), b("v"), Labels::new())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut checks = 0;
    while writers.iter().any(|w| !w.is_finished()) || checks == 0 {
        let list = store.list("k/", None).await.unwrap();
        // Only creates of distinct keys: revision r means exactly keys 1..=r exist.
        assert_eq!(list.items.len() as i64, list.revision);
        let revs: BTreeSet<i64> = list.items.iter().map(|kv| kv.mod_revision).collect();
        assert_eq!(revs, (1..=list.revision).collect());
        checks += 1;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(store.list("k/", None).await.unwrap().items.len(), 600);
    store.close().await;
}

/// Prints the store's group-commit throughput (no timing assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_report() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    const WRITERS: usize = 64;
    const PER_WRITER: usize = 150;
    let value = Bytes::from(vec![b'x'; 300]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            let store = store.clone();
            let value = value.clone();
            tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    store
                        .create(&format!("bench/{t}/{i}"), value.clone(), Labels::new())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let n = WRITERS * PER_WRITER;
    println!(
        "sqlite store: {n} creates of 300 B by {WRITERS} writers in {elapsed:?} = {:.0} writes/s",
        n as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(store.current_revision().await.unwrap(), n as i64);
    store.close().await;
}
