//! Informers: one in-memory cache per kind, fed by ONE store watch, shared by every
//! controller that reads the kind.
//!
//! The reflector lists the kind, then watches from the list's revision. On any watch
//! error — the store compacted past it (410), the stream ended, a decode failure — it
//! relists and diffs the result against the cache, so every change is still reported
//! once, and watches again; it backs off between failed attempts and never stops until
//! shutdown. Changes are published on a broadcast channel; a subscriber that falls
//! behind it gets `Lagged` and resyncs from the cache (the controller requeues every
//! key).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use verge_api::{Kind, Object};
use verge_store::{DynStore, EventKind, KeyValue, Revision};

use super::queue::Backoff;

/// Changes buffered per subscriber before it counts as lagging.
const CHANGES: usize = 4096;

/// One object's change, as the cache saw it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    /// `None`: it was created.
    pub old: Option<Arc<Object>>,
    /// `None`: it was deleted.
    pub new: Option<Arc<Object>>,
}

/// The cached objects of one kind, by name.
#[derive(Debug)]
pub struct Cache {
    kind: Kind,
    objects: RwLock<BTreeMap<String, Arc<Object>>>,
    /// The store revision the cache reflects.
    revision: RwLock<Revision>,
    /// Flips to true after the first complete list.
    synced: watch::Sender<bool>,
}

impl Cache {
    fn new(kind: Kind) -> Self {
        Cache {
            kind,
            objects: RwLock::new(BTreeMap::new()),
            revision: RwLock::new(0),
            synced: watch::channel(false).0,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn get(&self, name: &str) -> Option<Arc<Object>> {
        self.read().get(name).cloned()
    }

    /// Every object, in name order.
    pub fn list(&self) -> Vec<Arc<Object>> {
        self.read().values().cloned().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store revision the cache is at.
    pub fn revision(&self) -> Revision {
        *self.revision.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the first list is in the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Object>>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Object>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    fn set_revision(&self, r: Revision) {
        *self.revision.write().unwrap_or_else(|e| e.into_inner()) = r;
    }
}

/// A kind's cache and its change feed.
#[derive(Debug)]
pub struct Informer {
    cache: Arc<Cache>,
    tx: broadcast::Sender<Arc<Change>>,
}

impl Informer {
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

/// The informers of one control plane: at most one per kind, started on demand.
pub struct Informers {
    store: DynStore,
    shutdown: watch::Receiver<bool>,
    by_kind: Mutex<HashMap<Kind, Arc<Informer>>>,
    backoff: Backoff,
}

impl Informers {
    pub fn new(store: DynStore, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Informers {
            store,
            shutdown,
            by_kind: Mutex::new(HashMap::new()),
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
        })
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The informer of `kind`, its reflector started on first use.
    pub fn get(&self, kind: Kind) -> Arc<Informer> {
        let mut all = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = all.get(&kind) {
            return i.clone();
        }
        let informer = Arc::new(Informer {
            cache: Arc::new(Cache::new(kind)),
            tx: broadcast::channel(CHANGES).0,
        });
        all.insert(kind, informer.clone());
        tokio::spawn(reflect(
            self.store.clone(),
            informer.clone(),
            self.shutdown.clone(),
            self.backoff,
        ));
        informer
    }

    /// The cache of `kind` (started on first use).
    pub fn cache(&self, kind: Kind) -> Arc<Cache> {
        self.get(kind).cache.clone()
    }
}

/// The object a stored value holds, with `resourceVersion` filled in.
fn decode(kv: &KeyValue) -> Option<Arc<Object>> {
    match crate::objects::kv_to_object(kv) {
        Ok(o) => Some(Arc::new(o)),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e.message, "undecodable object left out of the cache");
            None
        }
    }
}

fn name_of(kind: Kind, key: &str) -> Option<String> {
    key.strip_prefix(&crate::objects::kind_prefix(kind))
        .map(str::to_string)
}

/// Lists and watches `informer`'s kind until shutdown, relisting after any error.
async fn reflect(
    store: DynStore,
    informer: Arc<Informer>,
    mut shutdown: watch::Receiver<bool>,
    backoff: Backoff,
) {
    let kind = informer.cache.kind;
    let prefix = crate::objects::kind_prefix(kind);
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = tokio::select! {
            r = list_and_watch(&store, &informer, &prefix, &mut failures) => r,
            _ = shutdown.changed() => return,
        };
        failures += 1;
        tracing::info!(kind = kind.name(), error = %outcome, "informer relisting");
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(failures)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One list, then the watch until it fails; returns why it stopped. Resets
/// `failures` once a list succeeded.
async fn list_and_watch(
    store: &DynStore,
    informer: &Informer,
    prefix: &str,
    failures: &mut u32,
) -> String {
    let cache = &informer.cache;
    let kind = cache.kind;
    let list = match store.list(prefix, None).await {
        Ok(l) => l,
        Err(e) => return format!("list: {e}"),
    };
    // Diff the list against the cache: what changed while we were not watching.
    let mut fresh: BTreeMap<String, Arc<Object>> = BTreeMap::new();
    for kv in &list.items {
        if let (Some(name), Some(o)) = (name_of(kind, &kv.key), decode(kv)) {
            fresh.insert(name, o);
        }
    }
    let mut changes = Vec::new();
    {
        let mut objects = cache.write();
        for (name, old) in objects.iter() {
            if !fresh.contains_key(name) {
                changes.push(Change {
                    kind,
                    name: name.clone(),
                    old: Some(old.clone()),
                    new: None,
                });
            }
        }
        for (name, new) in &fresh {
            let old = objects.get(name);
            let same =
                old.is_some_and(|o| o.metadata.resource_version == new.metadata.resource_version);
            if !same {
                changes.push(Change {
                    kind,
                    name: name.clone(),
                    old: old.cloned(),
                    new: Some(new.clone()),
                });
            }
        }
        *objects = fresh;
    }
    cache.set_revision(list.revision);
    // The first list is not news: subscribers start from the synced cache. A relist's
    // diff is what they missed.
    let relist = cache.synced.send_replace(true);
    *failures = 0;
    if relist {
        for c in changes {
            let _ = informer.tx.send(Arc::new(c));
        }
    }
    let mut events = match store.watch(prefix, list.revision).await {
        Ok(w) => w,
        Err(e) => return format!("watch: {e}"),
    };
    loop {
        let ev = match events.next().await {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => return format!("watch: {e}"),
            None => return "watch ended".into(),
        };
        let Some(name) = name_of(kind, &ev.kv.key) else {
            continue;
        };
        let change = match ev.kind {
            EventKind::Put => {
                let Some(new) = decode(&ev.kv) else {
                    continue;
                };
                let old = cache.write().insert(name.clone(), new.clone());
                Change {
                    kind,
                    name,
                    old,
                    new: Some(new),
                }
            }
            EventKind::Delete => {
                let old = cache.write().remove(&name);
                Change {
                    kind,
                    name,
                    old,
                    new: None,
                }
            }
        };
        cache.set_revision(ev.revision);
        let _ = informer.tx.send(Arc::new(change));
    }
}
