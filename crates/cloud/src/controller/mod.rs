//! The one controller runtime every control loop of the cloud runs on (the
//! kube-runtime pattern).
//!
//! A controller is a `reconcile(Request, ctx) -> Result<Action, E>` function plus an
//! error policy. [`Controller::run`] does the rest, written once:
//! - **informers** ([`reflector`]): one cache per kind, fed by one store watch that
//!   relists on compaction (410) or any error and never stops, shared by all
//!   controllers reading the kind;
//! - **what wakes a key**: changes of the controller's own kind ([`Controller::for_kind`],
//!   keyed by object name), changes of other kinds mapped to keys
//!   ([`Controller::watches`]), keys sent by other parts of the cloud
//!   ([`Controller::wakeups`]: node reports, results), keys queued at start
//!   ([`Controller::seed`]), and the reconcile's own `Action::requeue`;
//! - **a work queue** ([`queue`]): a key is queued once, runs on one worker at a time,
//!   and backs off exponentially while it fails;
//! - **shutdown is an input**: `run` stops taking keys when it flips, lets running
//!   reconciles finish (bounded), and returns.
//!
//! Work is proportional to change: nothing here lists the store on a timer; a
//! controller that needs a periodic pass asks for it with `Action::requeue`.

pub mod queue;
pub mod reflector;

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::SelectAll;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use verge_api::{Kind, Object};

pub use queue::Backoff;
pub use reflector::{Cache, Change, Informer, Informers};

/// What to do with a key after its reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run it again after this long (also when nothing changes).
    Requeue(Duration),
    /// Run it again only when something it watches changes.
    AwaitChange,
}

impl Action {
    pub fn requeue(after: Duration) -> Action {
        Action::Requeue(after)
    }

    pub fn await_change() -> Action {
        Action::AwaitChange
    }
}

/// One run of a reconcile.
#[derive(Debug, Clone)]
pub struct Request {
    pub key: String,
    /// The object of the controller's own kind named `key`, from the cache; `None` when
    /// it does not exist (deleted) or the controller has no kind of its own.
    pub object: Option<Arc<Object>>,
}

/// Maps a change of a watched kind to the keys it affects.
pub type Mapper = Arc<dyn Fn(&Change) -> Vec<String> + Send + Sync>;

/// How long running reconciles may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// A controller being assembled; [`Controller::run`] runs it.
pub struct Controller {
    name: &'static str,
    informers: Arc<Informers>,
    primary: Option<Kind>,
    watches: Vec<(Kind, Mapper)>,
    wakeups: Option<mpsc::UnboundedReceiver<String>>,
    seeds: Vec<String>,
    concurrency: usize,
    backoff: Backoff,
}

/// The default error policy: back off exponentially (`Backoff::default`).
pub fn backoff_policy<E>(_err: &E, failures: u32) -> Action {
    Action::Requeue(Backoff::default().delay(failures))
}

impl Controller {
    pub fn new(name: &'static str, informers: Arc<Informers>) -> Self {
        Controller {
            name,
            informers,
            primary: None,
            watches: Vec::new(),
            wakeups: None,
            seeds: Vec::new(),
            concurrency: 1,
            backoff: Backoff::default(),
        }
    }

    /// The controller's own kind: every object of it is a key (its name), reconciled
    /// at start and on each of its changes; `Request::object` is read from its cache.
    pub fn for_kind(mut self, kind: Kind) -> Self {
        self.primary = Some(kind);
        self
    }

    /// Changes of `kind` wake the keys `map` returns.
    pub fn watches(
        mut self,
        kind: Kind,
        map: impl Fn(&Change) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.watches.push((kind, Arc::new(map)));
        self
    }

    /// Keys sent on this channel are queued (by other parts of the cloud).
    pub fn wakeups(mut self, rx: mpsc::UnboundedReceiver<String>) -> Self {
        self.wakeups = Some(rx);
        self
    }

    /// A key queued once at start (controllers keyed by something other than objects).
    pub fn seed(mut self, key: impl Into<String>) -> Self {
        self.seeds.push(key.into());
        self
    }

    /// Keys reconciled at once (different keys only; default 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// Runs until `shutdown` flips to true. `error_policy(err, failures)` (failures in
    /// a row, this one included) decides when a failed key runs again.
    pub async fn run<C, E, F, Fut, P>(
        mut self,
        reconcile: F,
        error_policy: P,
        ctx: Arc<C>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        C: Send + Sync + 'static,
        E: Display + Send + 'static,
        F: Fn(Request, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(&E, u32) -> Action + Send + Sync + 'static,
    {
        let name = self.name;
        // Subscribe before waiting for the caches: no change between the first list and
        // the first reconcile is lost.
        let mut kinds: Vec<(Kind, Option<Mapper>)> = Vec::new();
        if let Some(k) = self.primary {
            kinds.push((k, None));
        }
        for (k, m) in &self.watches {
            kinds.push((*k, Some(m.clone())));
        }
        let mut changes: SelectAll<_> = SelectAll::new();
        let mut caches = Vec::new();
        for (i, (kind, _)) in kinds.iter().enumerate() {
            let informer = self.informers.get(*kind);
            caches.push(informer.cache().clone());
            let stream = BroadcastStream::new(informer.subscribe()).map(move |r| (i, r));
            changes.push(stream);
        }
        for c in &caches {
            tokio::select! {
                _ = c.wait_synced() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let primary_cache = self.primary.map(|k| self.informers.cache(k));
        let mut q = queue::Queue::default();
        if let Some(c) = &primary_cache {
            for n in c.names() {
                q.add(&n);
            }
        }
        for s in &self.seeds {
            q.add(s);
        }
        let reconcile = Arc::new(reconcile);
        let mut running: JoinSet<(String, Result<Action, String>, Option<Action>)> = JoinSet::new();
        // Which key each running task holds, to release it should the task panic.
        let mut holding: std::collections::HashMap<tokio::task::Id, String> =
            std::collections::HashMap::new();
        let error_policy = Arc::new(error_policy);
        tracing::debug!(controller = name, "controller started");
        loop {
            // Dispatch whatever is due.
            let now = Instant::now();
            while running.len() < self.concurrency {
                let Some(key) = q.pop(now) else { break };
                let object = primary_cache.as_ref().and_then(|c| c.get(&key));
                let failures = q.failures(&key);
                let fut = reconcile(
                    Request {
                        key: key.clone(),
                        object,
                    },
                    ctx.clone(),
                );
                let policy = error_policy.clone();
                let task_key = key.clone();
                let handle = running.spawn(async move {
                    match fut.await {
                        Ok(a) => (key, Ok(a), None),
                        Err(e) => {
                            let next = policy(&e, failures + 1);
                            (key, Err(e.to_string()), Some(next))
                        }
                    }
                });
                holding.insert(handle.id(), task_key);
            }
            let sleep_until = q.next_due();
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                    let now = Instant::now();
                    match joined {
                        Ok((id, (key, Ok(action), _))) => {
                            holding.remove(&id);
                            q.done(&key, Ok(due(action, now)));
                        }
                        Ok((id, (key, Err(e), next))) => {
                            holding.remove(&id);
                            let wait = match next.unwrap_or(Action::AwaitChange) {
                                Action::Requeue(d) => d,
                                Action::AwaitChange => self.backoff.delay(q.failures(&key) + 1),
                            };
                            tracing::warn!(controller = name, %key, error = %e, retry_in = ?wait, "reconcile failed");
                            q.done(&key, Err(now + wait));
                        }
                        Err(e) => {
                            // A panicking reconcile counts as a failure of its key.
                            let key = holding.remove(&e.id()).unwrap_or_default();
                            let wait = self.backoff.delay(q.failures(&key) + 1);
                            tracing::error!(controller = name, %key, error = %e, retry_in = ?wait, "reconcile panicked");
                            q.done(&key, Err(now + wait));
                        }
                    }
                }
                Some((i, change)) = changes.next(), if !changes.is_empty() => {
                    match change {
                        Ok(c) => enqueue(&mut q, &kinds[i].1, &c),
                        Err(BroadcastStreamRecvError::Lagged(n)) => {
                            tracing::warn!(controller = name, kind = kinds[i].0.name(), missed = n, "controller fell behind its informer; resyncing");
                            match &kinds[i].1 {
                                None => resync(&mut q, primary_cache.as_deref(), &self.seeds),
                                Some(map) => {
                                    for o in caches[i].list() {
                                        let c = Change { kind: kinds[i].0, name: o.metadata.name.clone(), old: None, new: Some(o) };
                                        for k in map(&c) {
                                            q.add(&k);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                key = recv(&mut self.wakeups) => match key {
                    Some(key) => q.add(&key),
                    // Every sender is gone: no more wakeups.
                    None => self.wakeups = None,
                },
                _ = sleep_to(sleep_until), if sleep_until.is_some() => {}
            }
        }
        // Shutdown: let running reconciles finish, within bounds.
        let _ = tokio::time::timeout(DRAIN, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        running.abort_all();
        tracing::debug!(controller = name, "controller stopped");
    }
}

fn due(action: Action, now: Instant) -> Option<Instant> {
    match action {
        Action::Requeue(d) => Some(now + d),
        Action::AwaitChange => None,
    }
}

fn enqueue(q: &mut queue::Queue, map: &Option<Mapper>, c: &Change) {
    match map {
        None => {
            if c.new.is_none() {
                q.forget(&c.name);
            }
            q.add(&c.name);
        }
        Some(m) => {
            for k in m(c) {
                q.add(&k);
            }
        }
    }
}

fn resync(q: &mut queue::Queue, primary: Option<&Cache>, seeds: &[String]) {
    if let Some(c) = primary {
        for n in c.names() {
            q.add(&n);
        }
    }
    for s in seeds {
        q.add(s);
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_to(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
