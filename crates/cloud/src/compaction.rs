//! History compaction on the controller runtime: one key (`history`), whose reconcile
//! compacts the store to `current − keep` revisions — never past the object-event
//! dispatcher's checkpoint ([`crate::events::CHECKPOINT_KEY`]), whose watch resumes
//! from there — and asks to run again after the compaction interval.
//!
//! Must not: compact below what was asked to be kept, past the events checkpoint, or
//! run anything on a timer of its own (the requeue is the timer).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use verge_store::{DynStore, Revision};

use crate::controller::{Action, Controller, Informers, Request, backoff_policy};

/// The compactor's one key.
pub const KEY: &str = "history";

/// The revision to compact to (pure): `current − keep`, but not past `checkpoint`
/// (the events dispatcher resumes watching after it; `None`: no checkpoint yet), when
/// that is past what is already compacted; `None` when there is nothing to do.
pub fn target(
    current: Revision,
    compacted: Revision,
    keep: i64,
    checkpoint: Option<Revision>,
) -> Option<Revision> {
    let mut t = current - keep.max(0);
    if let Some(c) = checkpoint {
        t = t.min(c);
    }
    (t > compacted).then_some(t)
}

/// Whether history holds an object event after `checkpoint`, at or before `current`.
async fn object_events_pending(
    store: &DynStore,
    checkpoint: Revision,
    current: Revision,
) -> Result<bool, verge_store::Error> {
    use futures::StreamExt;
    if checkpoint >= current {
        return Ok(false);
    }
    let mut w = match store
        .watch(crate::buckets::OBJECTS_PREFIX, checkpoint)
        .await
    {
        Ok(w) => w,
        // Already compacted past it: nothing there to keep.
        Err(verge_store::Error::Compacted { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    // History after the checkpoint is replayed first; nothing within the wait means
    // there is none (a live event then is newer than `current`).
    match tokio::time::timeout(Duration::from_millis(500), w.next()).await {
        Ok(Some(Ok(ev))) => Ok(ev.revision <= current),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) | Err(_) => Ok(false),
    }
}

/// Sets the events checkpoint from `from` to `to` if it still reads `from`.
async fn advance_checkpoint(
    store: &DynStore,
    from: Revision,
    to: Revision,
) -> Result<(), verge_store::Error> {
    let Some(kv) = store.get(crate::events::CHECKPOINT_KEY).await? else {
        return Ok(());
    };
    if to <= from || String::from_utf8_lossy(&kv.value).trim() != from.to_string() {
        return Ok(());
    }
    match store
        .update(
            crate::events::CHECKPOINT_KEY,
            bytes::Bytes::from(to.to_string()),
            Default::default(),
            verge_store::Expect::ModRevision(kv.mod_revision),
        )
        .await
    {
        Ok(_) | Err(verge_store::Error::Conflict { .. } | verge_store::Error::NotFound { .. }) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// What the compactor needs.
pub struct Compactor {
    pub store: DynStore,
    /// Revisions of history kept for watches.
    pub keep: i64,
    /// How often it runs.
    pub every: Duration,
}

impl Compactor {
    /// Compacts if there is something to compact; runs again after `every`.
    pub async fn reconcile(&self, _req: Request) -> Result<Action, verge_store::Error> {
        let current = self.store.current_revision().await?;
        let done = self.store.compacted_revision().await?;
        // The event dispatcher's checkpoint holds compaction back only while object
        // events after it wait to be handed off; with none pending, every object event up
        // to `current` is behind the checkpoint and later ones are past any target.
        let checkpoint = match crate::events::read_checkpoint(&self.store).await? {
            Some(c) if object_events_pending(&self.store, c, current).await? => Some(c),
            Some(c) => {
                // Nothing to hand off up to `current`: the checkpoint moves there (unless
                // the dispatcher moved it meanwhile), so a dispatcher restarting later
                // does not find its place compacted away.
                advance_checkpoint(&self.store, c, current).await?;
                None
            }
            None => None,
        };
        if let Some(t) = target(current, done, self.keep, checkpoint) {
            self.store.compact(t).await?;
            tracing::debug!(revision = t, "compacted history");
        }
        Ok(Action::requeue(self.every))
    }

    /// Runs until `shutdown` (a failure backs off and retries).
    pub async fn run(self: Arc<Self>, informers: Arc<Informers>, shutdown: watch::Receiver<bool>) {
        Controller::new("compactor", informers)
            .seed(KEY)
            .run(
                |req, c: Arc<Compactor>| async move { c.reconcile(req).await },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use verge_store::{MemStore, Store};

    use super::*;

    #[test]
    fn compacts_to_current_minus_keep_only_when_that_is_new() {
        assert_eq!(target(100, 0, 10, None), Some(90));
        assert_eq!(target(100, 90, 10, None), None);
        assert_eq!(target(5, 0, 10, None), None);
        assert_eq!(target(100, 0, -3, None), Some(100));
    }

    #[test]
    fn never_past_the_events_checkpoint() {
        // The dispatcher is behind: history after its checkpoint stays.
        assert_eq!(target(100, 0, 10, Some(40)), Some(40));
        assert_eq!(target(100, 40, 10, Some(40)), None);
        assert_eq!(target(100, 0, 10, Some(0)), None);
        // Caught up: keep decides.
        assert_eq!(target(100, 0, 10, Some(99)), Some(90));
    }

    #[tokio::test]
    async fn the_checkpoint_holds_compaction_back_only_while_object_events_wait() {
        let store = MemStore::new();
        write(&store, 30).await;
        let dyn_store: DynStore = Arc::new(store.clone());
        crate::events::write_checkpoint(&dyn_store, 12)
            .await
            .unwrap();
        write(&store, 10).await;
        let c = Compactor {
            store: dyn_store.clone(),
            keep: 5,
            every: Duration::from_secs(60),
        };
        let run = || {
            c.reconcile(Request {
                key: KEY.into(),
                object: None,
            })
        };
        // No object event after the checkpoint: keep alone decides, and the checkpoint
        // moves up to where nothing waits.
        let cur = store.current_revision().await.unwrap();
        run().await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), cur - 5);
        assert_eq!(
            crate::events::read_checkpoint(&dyn_store).await.unwrap(),
            Some(cur)
        );
        let cur = store.current_revision().await.unwrap();
        // An object event the dispatcher has not handed off holds history at the
        // checkpoint.
        crate::events::write_checkpoint(&dyn_store, cur)
            .await
            .unwrap();
        store
            .create(
                "/s3/objects/b/k",
                Bytes::from_static(b"{}"),
                Default::default(),
            )
            .await
            .unwrap();
        write(&store, 20).await;
        run().await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), cur);
    }

    async fn write(store: &MemStore, n: usize) {
        for _ in 0..n {
            store
                .create(
                    &format!(
                        "/registry/configs/c{}",
                        store.current_revision().await.unwrap()
                    ),
                    Bytes::from_static(b"{}"),
                    Default::default(),
                )
                .await
                .unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_compactor_keeps_its_history_and_runs_again_after_its_interval() {
        let store = MemStore::new();
        write(&store, 30).await;
        let (stop, rx) = watch::channel(false);
        let dyn_store: DynStore = Arc::new(store.clone());
        let informers = Informers::new(dyn_store.clone(), rx.clone());
        let c = Arc::new(Compactor {
            store: dyn_store,
            keep: 10,
            every: Duration::from_secs(60),
        });
        // One reconcile: compacted to current − keep, and a requeue after the interval.
        let a = c
            .reconcile(Request {
                key: KEY.into(),
                object: None,
            })
            .await
            .unwrap();
        assert_eq!(a, Action::requeue(Duration::from_secs(60)));
        let cur = store.current_revision().await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), cur - 10);

        // On the runtime: nothing more until the interval passes, then it compacts again.
        let task = tokio::spawn(c.clone().run(informers, rx));
        write(&store, 20).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seeded = store.compacted_revision().await.unwrap();
        let cur = store.current_revision().await.unwrap();
        assert_eq!(seeded, cur - 10, "the seeded key ran at start");
        write(&store, 20).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            store.compacted_revision().await.unwrap(),
            seeded,
            "not again before the interval"
        );
        tokio::time::sleep(Duration::from_secs(31)).await;
        let cur = store.current_revision().await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), cur - 10);
        stop.send_replace(true);
        task.await.unwrap();
    }
}
