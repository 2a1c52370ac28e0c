//! The store compliance suite: what every [`Store`](crate::Store) backend must do,
//! written once and run against each (SQLite in `tests/sqlite.rs`, [`MemStore`] in
//! `tests/mem.rs`, PostgreSQL when it comes). Each check takes a fresh, empty store
//! and panics (`assert!`) on the first deviation, naming it.
//!
//! Test support compiled into the library so any backend's tests can call it; it does
//! no I/O of its own beyond the store it is given.
//!
//! [`MemStore`]: crate::MemStore

#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use verge_api::LabelSelector;

use crate::{DynStore, Error, Event, EventKind, Expect, Labels, ListResult, WatchStream};

/// Test helper: bytes of a string.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Test helper: labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Next item of a watch stream, failing the test instead of hanging forever.
pub async fn next(stream: &mut WatchStream) -> Option<crate::Result<Arc<Event>>> {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("watch stream stalled")
}

/// Test helper: the next `n` events of a watch (each within 30 s).
pub async fn take(stream: &mut WatchStream, n: usize) -> Vec<Arc<Event>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next(stream).await.expect("stream ended early").unwrap());
    }
    out
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

/// Runs every check, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = DynStore>,
{
    crud_and_preconditions(fresh().await).await;
    concurrent_creates_of_one_key_have_one_winner(fresh().await).await;
    empty_and_binary_values_round_trip(fresh().await).await;
    watch_sees_concurrent_writes_once_in_order(fresh().await).await;
    watch_resumes_without_gap_or_duplicate_while_writes_continue(fresh().await).await;
    compaction_limits_watch_history(fresh().await).await;
    list_filters_by_prefix_and_selector(fresh().await).await;
    list_is_a_consistent_snapshot_under_concurrent_writes(fresh().await).await;
    a_lagging_watcher_loses_nothing(fresh().await).await;
    delete_events_carry_the_last_value(fresh().await).await;
    list_page_walks_a_prefix_in_pages(fresh().await).await;
}

pub async fn list_page_walks_a_prefix_in_pages(store: DynStore) {
    for k in ["a/1", "a/2", "a/2/x", "a/3", "a0", "b/1", "a/\u{e9}"] {
        store.create(k, b("v"), Labels::new()).await.unwrap();
    }
    let keys = |r: ListResult| r.items.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    // Byte order: "a/2" < "a/2/x" < "a/3" < "a/\u{e9}" (0xC3 after '3').
    assert_eq!(
        keys(store.list_page("a/", "", 2).await.unwrap()),
        ["a/1", "a/2"]
    );
    assert_eq!(
        keys(store.list_page("a/", "a/2", 2).await.unwrap()),
        ["a/2/x", "a/3"]
    );
    assert_eq!(
        keys(store.list_page("a/", "a/3", 10).await.unwrap()),
        ["a/\u{e9}"]
    );
    assert!(keys(store.list_page("a/", "a/\u{e9}", 10).await.unwrap()).is_empty());
    // A start before the prefix starts at the prefix; nothing outside it is returned.
    assert_eq!(keys(store.list_page("a/", "0", 1).await.unwrap()), ["a/1"]);
    assert_eq!(keys(store.list_page("b/", "", 10).await.unwrap()), ["b/1"]);
    assert!(keys(store.list_page("c/", "", 10).await.unwrap()).is_empty());
    let page = store.list_page("a/", "", 100).await.unwrap();
    assert_eq!(page.revision, store.current_revision().await.unwrap());
    assert_eq!(page.items.len(), 5);
}

pub async fn crud_and_preconditions(store: DynStore) {
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
}

pub async fn concurrent_creates_of_one_key_have_one_winner(store: DynStore) {
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
}

pub async fn empty_and_binary_values_round_trip(store: DynStore) {
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
}

pub async fn watch_sees_concurrent_writes_once_in_order(store: DynStore) {
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
}

pub async fn watch_resumes_without_gap_or_duplicate_while_writes_continue(store: DynStore) {
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
}

pub async fn compaction_limits_watch_history(store: DynStore) {
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
}

pub async fn list_filters_by_prefix_and_selector(store: DynStore) {
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

    let keys = |l: &crate::ListResult| -> Vec<String> {
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
}

pub async fn list_is_a_consistent_snapshot_under_concurrent_writes(store: DynStore) {
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
}

/// A watcher that reads nothing while thousands of writes go by still gets every one of
/// them, in order, once (backends buffer or re-read history).
pub async fn a_lagging_watcher_loses_nothing(store: DynStore) {
    let mut w = store.watch("lag/", 0).await.unwrap();
    const N: usize = 6000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(200) {
        futures::future::join_all(chunk.iter().map(|i| {
            let store = store.clone();
            async move {
                store
                    .create(&format!("lag/{i:05}"), b("v"), Labels::new())
                    .await
                    .unwrap()
            }
        }))
        .await;
    }
    let events = take(&mut w, N).await;
    let revisions: Vec<i64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (1..=N as i64).collect::<Vec<_>>());
}

/// A delete event holds the value before the delete, at the delete's revision; the
/// key can then be created again with a new create revision.
pub async fn delete_events_carry_the_last_value(store: DynStore) {
    store
        .create("d", b("one"), labels(&[("k", "v")]))
        .await
        .unwrap();
    store
        .update("d", b("two"), Labels::new(), Expect::Any)
        .await
        .unwrap();
    let mut w = store.watch("d", 2).await.unwrap();
    let gone = store.delete("d", Expect::ModRevision(2)).await.unwrap();
    let ev = next(&mut w).await.unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!((ev.revision, ev.kv.mod_revision), (3, 3));
    assert_eq!(&ev.kv.value[..], b"two");
    assert_eq!(ev.kv, gone);
    assert!(!ev.is_create());
    let again = store.create("d", b("three"), Labels::new()).await.unwrap();
    assert_eq!(again.create_revision, 4);
    assert!(next(&mut w).await.unwrap().unwrap().is_create());
}
