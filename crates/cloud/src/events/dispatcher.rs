//! The object-event dispatcher: follows `store.watch("/s3/objects/", checkpoint)` and
//! hands every event to each Trigger whose `spec.event` matches it (the shared Trigger
//! informer cache), in batches of at most `batch` events:
//! - `function` target: a Task for the function, the CloudEvent as its input,
//!   idempotency key [`super::idempotency_key`] (`{event id}/{trigger}`), labels
//!   `verge.dev/trigger` and `verge.dev/event`. A redelivered event finds the earlier
//!   task and runs nothing again.
//! - `sink` target: a delivery record (`/system/events/deliveries/{trigger}/{id}`) for
//!   the delivery worker ([`super::delivery`]); none while `max_pending_deliveries`
//!   are waiting (the dispatcher waits: memory and the store stay bounded).
//!
//! Only after every hand-off of a batch is durable is the checkpoint
//! ([`super::CHECKPOINT_KEY`]) written; after a crash, the events after it are handed
//! off again (harmless: every hand-off is idempotent). A hand-off that cannot be made
//! now (the store, the active-task cap) is retried with backoff, holding the
//! checkpoint; one that can never be made (the function does not exist) is a dead
//! letter. Compaction never passes the checkpoint (see [`crate::compaction`]).
//!
//! It also watches Tasks: an event task that ends Failed or TimedOut (after its own
//! attempts) becomes a dead letter, once (a marker under
//! [`super::FAILED_TASKS_PREFIX`], removed with the task).
//!
//! Must not: advance the checkpoint past an event not handed off, create a task
//! without the event's idempotency key, or hold more than one batch of events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use verge_api::names::LABEL_TRIGGER;
use verge_api::specs::{TaskSpec, TriggerSpec};
use verge_api::{Kind, Object, Reason};
use verge_store::{DynStore, Event, Revision};

use super::cloudevent::{self, CloudEvent};
use super::deadletters::{DeadLetter, DeadLetters, Target, dead_letter_id};
use super::delivery::{Deliveries, Delivery, delivery_key};
use super::{
    EventMetrics, EventsConfig, FAILED_TASKS_PREFIX, LABEL_EVENT, LABEL_REDRIVE, OBJECTS_PREFIX,
    backoff, idempotency_key, now_ms, read_checkpoint, write_checkpoint,
};
use crate::controller::{Cache, Change, Informer, Informers};
use crate::functions::task_state::{Phase, TaskStatus};
use crate::functions::tasks::Tasks;

/// One hand-off: an event to one trigger.
struct Job<'a> {
    event: &'a CloudEvent,
    trigger: &'a str,
    spec: &'a TriggerSpec,
}

/// Why a hand-off did not happen now.
enum NotNow {
    /// Try again later (store, task cap, too many pending deliveries).
    Later(String),
}

/// Why following stopped.
#[derive(Debug)]
enum Stop {
    Shutdown,
    Store(verge_store::Error),
}

impl From<verge_store::Error> for Stop {
    fn from(e: verge_store::Error) -> Self {
        Stop::Store(e)
    }
}

pub struct Dispatcher {
    store: DynStore,
    tasks: Arc<Tasks>,
    triggers: Arc<Cache>,
    task_informer: Arc<Informer>,
    deliveries: Arc<Deliveries>,
    dead: Arc<DeadLetters>,
    cfg: EventsConfig,
    metrics: EventMetrics,
}

/// The event triggers in `cache` (name, spec), those whose spec reads.
pub fn event_triggers(cache: &Cache) -> Vec<(String, TriggerSpec)> {
    cache
        .list()
        .iter()
        .filter(|o| o.spec.get("event").is_some_and(|e| e.is_object()))
        .filter_map(|o| {
            let spec = serde_json::from_value::<TriggerSpec>(o.spec.clone()).ok()?;
            Some((o.metadata.name.clone(), spec))
        })
        .collect()
}

/// The indices of the `triggers` that take `event` (pure).
pub fn matching(triggers: &[(String, TriggerSpec)], event: &CloudEvent) -> Vec<usize> {
    let Some(ty) = event.event_type() else {
        return Vec::new();
    };
    triggers
        .iter()
        .enumerate()
        .filter(|(_, (_, spec))| {
            spec.event
                .as_ref()
                .is_some_and(|e| e.matches(&event.data.bucket, &event.data.key, ty))
        })
        .map(|(i, _)| i)
        .collect()
}

/// What an event trigger's function gets (pure): the CloudEvent, or the trigger's
/// `input` object with the CloudEvent added as `event`.
pub fn task_input(
    event: &CloudEvent,
    input: Option<&serde_json::Value>,
) -> Result<serde_json::Value, serde_json::Error> {
    let event = serde_json::to_value(event)?;
    Ok(match input {
        Some(serde_json::Value::Object(m)) => {
            let mut m = m.clone();
            m.insert("event".into(), event);
            serde_json::Value::Object(m)
        }
        _ => event,
    })
}

/// The CloudEvent an event task was started with (its input, or its input's `event`).
pub fn event_of_input(input: &serde_json::Value) -> Option<CloudEvent> {
    serde_json::from_value(input.clone())
        .ok()
        .or_else(|| serde_json::from_value(input.get("event")?.clone()).ok())
}

/// The dead letter a finished event task stands for: one that ended Failed or
/// TimedOut and carries the trigger and event labels and a CloudEvent input (pure).
pub fn dead_letter_of_task(task: &Object, now_ms: i64, now: &str) -> Option<DeadLetter> {
    let status = TaskStatus::from_value(&task.status);
    if !matches!(status.phase, Phase::Failed | Phase::TimedOut) {
        return None;
    }
    let labels = &task.metadata.labels;
    let trigger = labels.get(LABEL_TRIGGER)?;
    labels.get(LABEL_EVENT)?;
    let spec: TaskSpec = serde_json::from_value(task.spec.clone()).ok()?;
    let event = event_of_input(spec.input.as_ref()?)?;
    let redrives = labels
        .get(LABEL_REDRIVE)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let reason = status
        .error
        .clone()
        .or(status.reason.clone())
        .unwrap_or_else(|| status.phase.as_str().to_string());
    Some(DeadLetter {
        id: dead_letter_id(&event.id, trigger),
        bucket: event.data.bucket.clone(),
        trigger: trigger.clone(),
        target: Target {
            function: Some(spec.function),
            sink: None,
        },
        reason: format!(
            "task {} {}: {reason}",
            task.metadata.name,
            status.phase.as_str()
        ),
        attempts: status.attempts,
        time: now.to_string(),
        time_ms: now_ms,
        redrives,
        task: Some(task.metadata.name.clone()),
        event,
    })
}

impl Dispatcher {
    pub fn new(
        store: DynStore,
        tasks: Arc<Tasks>,
        informers: &Informers,
        deliveries: Arc<Deliveries>,
        dead: Arc<DeadLetters>,
        cfg: EventsConfig,
        metrics: EventMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            tasks,
            triggers: informers.cache(Kind::Trigger),
            task_informer: informers.get(Kind::Task),
            deliveries,
            dead,
            cfg,
            metrics,
        })
    }

    /// Runs until `shutdown` flips: the event follower and the failed-task watcher.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let failed = tokio::spawn(self.clone().watch_failed_tasks(shutdown.clone()));
        let stopped = tokio::select! {
            _ = self.triggers.wait_synced() => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if stopped {
            let _ = failed.await;
            return;
        }
        let mut failures = 0u32;
        loop {
            match self.follow(&mut shutdown).await {
                Ok(()) | Err(Stop::Shutdown) => break,
                Err(Stop::Store(e)) => {
                    failures += 1;
                    tracing::warn!(error = %e, "event dispatcher: following object events failed; resuming from the checkpoint");
                    let wait = backoff(
                        Duration::from_millis(200),
                        Duration::from_secs(10),
                        failures,
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            }
        }
        let _ = failed.await;
    }

    /// The revision to follow from: the checkpoint, or (first start) where history
    /// begins, written as the checkpoint so compaction keeps it from then on.
    async fn start(&self) -> Result<Revision, verge_store::Error> {
        if let Some(c) = read_checkpoint(&self.store).await? {
            return Ok(c);
        }
        let from = self.store.compacted_revision().await?;
        write_checkpoint(&self.store, from).await?;
        Ok(from)
    }

    async fn follow(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        let checkpoint = self.start().await?;
        let mut stream = match self.store.watch(OBJECTS_PREFIX, checkpoint).await {
            Ok(s) => s,
            Err(verge_store::Error::Compacted { compacted, .. }) => {
                // Only when history was compacted past a checkpoint (by an older
                // version, or before the first checkpoint): those events are gone.
                tracing::error!(
                    checkpoint,
                    compacted,
                    "object events after the checkpoint were compacted away before dispatch; continuing from the compacted revision"
                );
                write_checkpoint(&self.store, compacted).await?;
                return Err(Stop::Store(verge_store::Error::Compacted {
                    requested: checkpoint,
                    compacted,
                }));
            }
            Err(e) => return Err(e.into()),
        };
        loop {
            let first = tokio::select! {
                ev = stream.next() => ev,
                _ = shutdown.wait_for(|s| *s) => return Err(Stop::Shutdown),
            };
            let Some(first) = first else {
                return Err(Stop::Store(verge_store::Error::Closed));
            };
            let mut batch: Vec<Arc<Event>> = vec![first?];
            let mut ended: Option<verge_store::Error> = None;
            while batch.len() < self.cfg.batch.max(1) {
                match futures::FutureExt::now_or_never(stream.next()) {
                    Some(Some(Ok(ev))) => batch.push(ev),
                    Some(Some(Err(e))) => {
                        ended = Some(e);
                        break;
                    }
                    Some(None) => {
                        ended = Some(verge_store::Error::Closed);
                        break;
                    }
                    None => break,
                }
            }
            self.hand_off_batch(&batch, shutdown).await?;
            let last = batch.last().map(|e| e.revision).unwrap_or(checkpoint);
            let current = self.store.current_revision().await.unwrap_or(last);
            write_checkpoint(&self.store, last).await?;
            self.metrics.lag_revisions.set((current - last).max(0));
            if let Some(e) = ended {
                return Err(Stop::Store(e));
            }
        }
    }

    /// Hands every event of `batch` to every matching trigger; returns when all are
    /// durable (retrying what cannot be done now), or at shutdown.
    async fn hand_off_batch(
        &self,
        batch: &[Arc<Event>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let now = crate::auth::now_rfc3339();
        let mut events = Vec::with_capacity(batch.len());
        for ev in batch {
            match cloudevent::build(ev.kind, ev.revision, &ev.kv.key, &ev.kv.value, &now) {
                Ok(ce) => events.push(ce),
                Err(why) => {
                    self.metrics.malformed.inc();
                    tracing::warn!(revision = ev.revision, %why, "skipping a write under /s3/objects/ that is not an object record");
                }
            }
        }
        let triggers = event_triggers(&self.triggers);
        // (event, trigger) index pairs: plain values, so the futures below borrow
        // only `self`, `events` and `triggers`.
        let mut jobs: Vec<(usize, usize)> = Vec::new();
        for (e, event) in events.iter().enumerate() {
            jobs.extend(matching(&triggers, event).into_iter().map(|t| (e, t)));
        }
        let (events, triggers) = (&events, &triggers);
        let mut failures = 0u32;
        while !jobs.is_empty() {
            let results: Vec<((usize, usize), Result<(), NotNow>)> = futures::stream::iter(jobs)
                .map(|(e, t)| async move {
                    let job = Job {
                        event: &events[e],
                        trigger: &triggers[t].0,
                        spec: &triggers[t].1,
                    };
                    ((e, t), self.hand_off(&job).await)
                })
                .buffer_unordered(self.cfg.handoff_concurrency.max(1))
                .collect()
                .await;
            jobs = Vec::new();
            let mut why = None;
            for (job, r) in results {
                if let Err(NotNow::Later(w)) = r {
                    why = Some(w);
                    jobs.push(job);
                }
            }
            if jobs.is_empty() {
                break;
            }
            failures += 1;
            let wait = backoff(Duration::from_millis(100), Duration::from_secs(5), failures);
            tracing::debug!(left = jobs.len(), why = ?why, "object events not all handed off; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return Err(Stop::Shutdown),
            }
        }
        Ok(())
    }

    async fn hand_off(&self, job: &Job<'_>) -> Result<(), NotNow> {
        if let Some(function) = &job.spec.function {
            self.start_task(job, function).await
        } else if let Some(sink) = &job.spec.sink {
            self.record_delivery(job, &sink.url).await
        } else {
            Ok(())
        }
    }

    async fn start_task(&self, job: &Job<'_>, function: &str) -> Result<(), NotNow> {
        let input = task_input(job.event, job.spec.input.as_ref())
            .map_err(|e| NotNow::Later(e.to_string()))?;
        let spec = TaskSpec {
            function: function.to_string(),
            input: Some(input),
            target: job.spec.target.clone(),
            callback_url: None,
            idempotency_key: Some(idempotency_key(&job.event.id, job.trigger, 0)),
            timeout_seconds: None,
            max_attempts: None,
        };
        let labels = BTreeMap::from([
            (LABEL_TRIGGER.to_string(), job.trigger.to_string()),
            (LABEL_EVENT.to_string(), job.event.id.clone()),
        ]);
        match self
            .tasks
            .create(spec, labels, Some(job.trigger.to_string()))
            .await
        {
            Ok((_, created)) => {
                if created {
                    self.metrics.dispatched.inc();
                }
                Ok(())
            }
            // It can never be made as it stands: a dead letter, redriven after a fix.
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Invalid) => {
                let dl = DeadLetter {
                    id: dead_letter_id(&job.event.id, job.trigger),
                    bucket: job.event.data.bucket.clone(),
                    trigger: job.trigger.to_string(),
                    target: Target {
                        function: Some(function.to_string()),
                        sink: None,
                    },
                    event: job.event.clone(),
                    reason: e.message.clone(),
                    attempts: 0,
                    time: crate::auth::now_rfc3339(),
                    time_ms: now_ms(),
                    redrives: 0,
                    task: None,
                };
                self.dead
                    .put(&dl)
                    .await
                    .map_err(|e| NotNow::Later(e.to_string()))
            }
            Err(e) => Err(NotNow::Later(e.message)),
        }
    }

    async fn record_delivery(&self, job: &Job<'_>, url: &str) -> Result<(), NotNow> {
        if self.deliveries.pending() >= self.cfg.max_pending_deliveries {
            return Err(NotNow::Later(format!(
                "{} webhook deliveries are pending",
                self.cfg.max_pending_deliveries
            )));
        }
        let key = delivery_key(job.trigger, &job.event.id);
        let now = now_ms();
        let record = Delivery {
            trigger: job.trigger.to_string(),
            url: url.to_string(),
            event: job.event.clone(),
            attempts: 0,
            redrives: 0,
            next_attempt_ms: now,
            last_error: None,
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self.store.create(&key, value, Default::default()).await {
            Ok(_) => {
                self.metrics.dispatched.inc();
                self.deliveries.enqueued(&key, now);
                Ok(())
            }
            // Handed off before a restart, not yet delivered.
            Err(verge_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(NotNow::Later(e.to_string())),
        }
    }

    /// Dead-letters event tasks that end Failed or TimedOut: from each Task change,
    /// and from the whole cache at start and after missing changes.
    async fn watch_failed_tasks(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.task_informer.subscribe();
        let cache = self.task_informer.cache().clone();
        tokio::select! {
            _ = cache.wait_synced() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        self.scan_failed_tasks(&cache).await;
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match change {
                Ok(c) => self.on_task_change(&c).await,
                Err(broadcast::error::RecvError::Lagged(_)) => self.scan_failed_tasks(&cache).await,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn on_task_change(&self, change: &Change) {
        match &change.new {
            Some(task) => self.dead_letter_task(task).await,
            None => {
                if change
                    .old
                    .as_ref()
                    .is_some_and(|o| o.metadata.labels.contains_key(LABEL_EVENT))
                {
                    let _ = self
                        .store
                        .delete(
                            &format!("{FAILED_TASKS_PREFIX}{}", change.name),
                            verge_store::Expect::Any,
                        )
                        .await;
                }
            }
        }
    }

    async fn scan_failed_tasks(&self, cache: &Cache) {
        for task in cache.list() {
            self.dead_letter_task(&task).await;
        }
        // Markers of tasks that are gone (deleted while this was not watching).
        if let Ok(list) = self.store.list(FAILED_TASKS_PREFIX, None).await {
            for kv in list.items {
                let name = &kv.key[FAILED_TASKS_PREFIX.len()..];
                if cache.get(name).is_none() {
                    let _ = self.store.delete(&kv.key, verge_store::Expect::Any).await;
                }
            }
        }
    }

    /// Writes the dead letter of `task` if it stands for one and none was written.
    async fn dead_letter_task(&self, task: &Object) {
        let Some(dl) = dead_letter_of_task(task, now_ms(), &crate::auth::now_rfc3339()) else {
            return;
        };
        let marker = format!("{FAILED_TASKS_PREFIX}{}", task.metadata.name);
        match self.store.get(&marker).await {
            Ok(None) => {}
            Ok(Some(_)) => return,
            Err(e) => {
                tracing::warn!(task = %task.metadata.name, error = %e, "cannot check a failed event task");
                return;
            }
        }
        if let Err(e) = self.dead.put(&dl).await {
            tracing::warn!(task = %task.metadata.name, error = %e, "cannot dead-letter a failed event task");
            return;
        }
        let _ = self
            .store
            .create(&marker, Bytes::from(dl.id.clone()), Default::default())
            .await;
    }
}
