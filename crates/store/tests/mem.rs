//! The store compliance suite against [`MemStore`] (the in-memory backend controllers'
//! unit tests use), check by check.

use std::sync::Arc;

use verge_store::{DynStore, MemStore, compliance};

fn fresh() -> DynStore {
    Arc::new(MemStore::new())
}

#[tokio::test]
async fn crud_and_preconditions() {
    compliance::crud_and_preconditions(fresh()).await;
}

#[tokio::test]
async fn concurrent_creates_of_one_key_have_one_winner() {
    compliance::concurrent_creates_of_one_key_have_one_winner(fresh()).await;
}

#[tokio::test]
async fn empty_and_binary_values_round_trip() {
    compliance::empty_and_binary_values_round_trip(fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_concurrent_writes_once_in_order() {
    compliance::watch_sees_concurrent_writes_once_in_order(fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_without_gap_or_duplicate_while_writes_continue() {
    compliance::watch_resumes_without_gap_or_duplicate_while_writes_continue(fresh()).await;
}

#[tokio::test]
async fn compaction_limits_watch_history() {
    compliance::compaction_limits_watch_history(fresh()).await;
}

#[tokio::test]
async fn list_filters_by_prefix_and_selector() {
    compliance::list_filters_by_prefix_and_selector(fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_a_consistent_snapshot_under_concurrent_writes() {
    compliance::list_is_a_consistent_snapshot_under_concurrent_writes(fresh()).await;
}

#[tokio::test]
async fn a_lagging_watcher_loses_nothing() {
    compliance::a_lagging_watcher_loses_nothing(fresh()).await;
}

#[tokio::test]
async fn delete_events_carry_the_last_value() {
    compliance::delete_events_carry_the_last_value(fresh()).await;
}

#[tokio::test]
async fn closing_ends_watches_and_refuses_writes() {
    let store = MemStore::new();
    let mut w = verge_store::Store::watch(&store, "", 0).await.unwrap();
    store.close();
    assert!(
        futures::StreamExt::next(&mut w).await.is_none(),
        "a watch ends when the store closes"
    );
    assert!(matches!(
        verge_store::Store::create(&store, "k", bytes::Bytes::new(), Default::default()).await,
        Err(verge_store::Error::Closed)
    ));
}
