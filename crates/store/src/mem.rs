//! [`MemStore`]: the [`Store`] trait in memory, for unit tests of controllers and the
//! API (no disk, no durability). It keeps the same contract as the SQLite backend —
//! one global revision, compare-and-swap, prefix and label queries, watch with history
//! and compaction — and passes the same compliance suite ([`crate::compliance`]).
//!
//! State is one `BTreeMap` of current values plus the event history since the last
//! compaction, under one mutex; watchers subscribe to a broadcast of committed events
//! while holding that mutex, so a watch sees every event exactly once: history first,
//! then live ones. A watcher that lags behind the broadcast re-reads the missed range
//! from the history, or ends with [`Error::Compacted`] if it was compacted meanwhile.
//! Not for production: nothing survives the process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use verge_api::LabelSelector;

use crate::{
    Error, Event, EventKind, Expect, KeyValue, Labels, ListResult, Result, Revision, Store,
    WatchStream,
};

/// Events buffered per watcher on the live channel before it counts as lagging.
const CHANNEL: usize = 4096;

#[derive(Default)]
struct State {
    kv: BTreeMap<String, KeyValue>,
    /// Every event after `compacted`, in revision order.
    history: Vec<Arc<Event>>,
    revision: Revision,
    compacted: Revision,
    closed: bool,
}

/// An in-memory [`Store`]; cheap to clone (shared state).
#[derive(Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl MemStore {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        Self {
            state: Arc::new(Mutex::new(State::default())),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses further writes and ends every watch once it delivered what was
    /// committed before, like closing a real store.
    pub fn close(&self) {
        self.lock().closed = true;
        // The end marker: revision 0, which no real event has.
        let _ = self.tx.send(Arc::new(Event::new(
            0,
            EventKind::Delete,
            KeyValue {
                key: String::new(),
                value: Bytes::new(),
                labels: Labels::new(),
                create_revision: 0,
                mod_revision: 0,
            },
        )));
    }

    /// Records `kind` on `kv` as the next revision (state locked).
    fn commit(&self, st: &mut State, kind: EventKind, kv: KeyValue) -> Arc<Event> {
        let ev = Arc::new(Event::new(st.revision, kind, kv));
        st.history.push(ev.clone());
        let _ = self.tx.send(ev.clone());
        ev
    }

    fn check(expect: Expect, key: &str, cur: &KeyValue) -> Result<()> {
        match expect {
            Expect::Any => Ok(()),
            Expect::ModRevision(r) if r == cur.mod_revision => Ok(()),
            Expect::ModRevision(r) => Err(Error::Conflict {
                key: key.to_string(),
                expected: r,
                current: cur.mod_revision,
            }),
        }
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().kv.get(key).cloned())
    }

    async fn list(&self, prefix: &str, selector: Option<&LabelSelector>) -> Result<ListResult> {
        let st = self.lock();
        let items = st
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, v)| selector.is_none_or(|s| s.matches(&v.labels)))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(ListResult {
            items,
            revision: st.revision,
        })
    }

    async fn list_page(&self, prefix: &str, start_after: &str, limit: usize) -> Result<ListResult> {
        use std::ops::Bound;
        let st = self.lock();
        let start = if start_after.as_bytes() >= prefix.as_bytes() {
            Bound::Excluded(start_after.to_string())
        } else {
            Bound::Included(prefix.to_string())
        };
        let items = st
            .kv
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect();
        Ok(ListResult {
            items,
            revision: st.revision,
        })
    }

    async fn create(&self, key: &str, value: Bytes, labels: Labels) -> Result<KeyValue> {
        let mut st = self.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        if st.kv.contains_key(key) {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        st.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            labels,
            create_revision: st.revision,
            mod_revision: st.revision,
        };
        st.kv.insert(key.to_string(), kv.clone());
        self.commit(&mut st, EventKind::Put, kv.clone());
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        labels: Labels,
        expect: Expect,
    ) -> Result<KeyValue> {
        let mut st = self.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        let cur = st.kv.get(key).ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })?;
        Self::check(expect, key, cur)?;
        let create_revision = cur.create_revision;
        st.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            labels,
            create_revision,
            mod_revision: st.revision,
        };
        st.kv.insert(key.to_string(), kv.clone());
        self.commit(&mut st, EventKind::Put, kv.clone());
        Ok(kv)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<KeyValue> {
        let mut st = self.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        let cur = st.kv.get(key).ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })?;
        Self::check(expect, key, cur)?;
        let mut kv = cur.clone();
        st.kv.remove(key);
        st.revision += 1;
        kv.mod_revision = st.revision;
        self.commit(&mut st, EventKind::Delete, kv.clone());
        Ok(kv)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let st = self.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        if after < st.compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted: st.compacted,
            });
        }
        // Subscribing under the lock: every later event is on the channel, every
        // earlier one in the history read here.
        let rx = self.tx.subscribe();
        let pending: VecDeque<Arc<Event>> = st
            .history
            .iter()
            .filter(|e| e.revision > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let position = st.revision.max(after);
        drop(st);
        let w = Watcher {
            store: self.clone(),
            rx,
            prefix: prefix.to_string(),
            position,
            pending,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(w, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        })))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        let revision = revision.min(st.revision);
        if revision <= st.compacted {
            return Ok(());
        }
        st.history.retain(|e| e.revision > revision);
        st.compacted = revision;
        Ok(())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.lock().compacted)
    }
}

struct Watcher {
    store: MemStore,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    /// Every event with a revision <= this was delivered or skipped.
    position: Revision,
    pending: VecDeque<Arc<Event>>,
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            match self.rx.recv().await {
                Ok(ev) if ev.revision == 0 => {
                    // The store closed; everything before was delivered.
                    self.done = true;
                    return None;
                }
                Ok(ev) => {
                    if ev.revision <= self.position {
                        continue;
                    }
                    self.position = ev.revision;
                    if ev.kv.key.starts_with(&self.prefix) {
                        return Some(Ok(ev));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Read what was missed from the history, if it is still there.
                    let st = self.store.lock();
                    if st.closed {
                        self.done = true;
                    }
                    if self.position < st.compacted {
                        self.done = true;
                        return Some(Err(Error::Compacted {
                            requested: self.position,
                            compacted: st.compacted,
                        }));
                    }
                    let (position, prefix) = (self.position, &self.prefix);
                    self.pending.extend(
                        st.history
                            .iter()
                            .filter(|e| e.revision > position && e.kv.key.starts_with(prefix))
                            .cloned(),
                    );
                    self.position = st.revision;
                    // Events after st.revision are still on the channel; older ones
                    // there are skipped by position.
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
