//! Behavioural tests of the SQLite store: CRUD and preconditions, revisions and their
//! persistence, durability, watch ordering/resume/lag recovery, compaction, list.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use verge_store::compliance::{b, labels, next, take};
use verge_store::{
    Error, EventKind, Expect, Labels, SqliteOptions, SqliteStore, Store, compliance,
};

fn opts(dir: &Path) -> SqliteOptions {
    SqliteOptions::new(dir.join("nested/dir/verge.db"))
}

async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(opts(dir)).await.unwrap()
}

#[tokio::test]
async fn crud_and_preconditions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::crud_and_preconditions(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn concurrent_creates_of_one_key_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::concurrent_creates_of_one_key_have_one_winner(store.clone()).await;
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
    let store = Arc::new(open(dir.path()).await);
    compliance::empty_and_binary_values_round_trip(store.clone()).await;
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

#[tokio::test]
async fn watch_sees_concurrent_writes_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::watch_sees_concurrent_writes_once_in_order(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn watch_resumes_without_gap_or_duplicate_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::watch_resumes_without_gap_or_duplicate_while_writes_continue(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn compaction_limits_watch_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::compaction_limits_watch_history(store.clone()).await;
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
    let store = Arc::new(open(dir.path()).await);
    compliance::list_filters_by_prefix_and_selector(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn list_is_a_consistent_snapshot_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::list_is_a_consistent_snapshot_under_concurrent_writes(store.clone()).await;
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

#[tokio::test]
async fn a_lagging_watcher_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    // A small live buffer, so the watcher lags and catches up from the table.
    o.watch_buffer = 64;
    let store = Arc::new(SqliteStore::open(o).await.unwrap());
    compliance::a_lagging_watcher_loses_nothing(store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn delete_events_carry_the_last_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()).await);
    compliance::delete_events_carry_the_last_value(store.clone()).await;
    store.close().await;
}
