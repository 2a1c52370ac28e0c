//! Object events: change-data-capture of the object metadata keys
//! (`/s3/objects/{bucket}/{key}`), delivered to the Triggers whose `spec.event` matches.
//!
//! - [`cloudevent`]: the CloudEvents 1.0 form of a store event (pure).
//! - [`dispatcher`]: follows `store.watch(OBJECTS_PREFIX, checkpoint)` and hands each
//!   event to every matching trigger — a Task for a `function` (idempotency key from
//!   the event id and the trigger), a durable delivery record for a `sink` — then
//!   advances the durable checkpoint ([`CHECKPOINT_KEY`]). Also turns failed event
//!   tasks into dead letters.
//! - [`delivery`]: POSTs delivery records to their webhooks (signed, through the
//!   outbound guard, with a per-attempt deadline, retries with backoff, then a dead
//!   letter).
//! - [`deadletters`]: the dead-letter records, their cap, listing, redrive and drop.
//!
//! Must not: advance the checkpoint past an event not yet durably handed off, hold
//! more than a bounded number of events or deliveries in memory, or deliver anywhere
//! but through the outbound guard. Compaction never passes the checkpoint
//! ([`crate::compaction`] reads it with [`read_checkpoint`]).

pub mod cloudevent;
pub mod deadletters;
pub mod delivery;
pub mod dispatcher;
#[cfg(test)]
mod scenarios;

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use verge_store::{DynStore, Expect, Revision};

/// Where object metadata lives: one key per object, `/s3/objects/{bucket}/{key}`.
pub const OBJECTS_PREFIX: &str = "/s3/objects/";
/// The dispatcher's durable checkpoint: every event up to this revision is handed off.
pub const CHECKPOINT_KEY: &str = "/system/events/checkpoint";
/// Webhook deliveries not yet done: `{trigger}/{event id}`.
pub const DELIVERIES_PREFIX: &str = "/system/events/deliveries/";
/// Dead letters: `{event id}.{trigger}`.
pub const DEADLETTERS_PREFIX: &str = "/system/events/deadletters/";
/// Failed event tasks already turned into a dead letter: `{task}`.
pub const FAILED_TASKS_PREFIX: &str = "/system/events/failedtasks/";
/// On tasks the dispatcher creates: the event id (the trigger is `verge.dev/trigger`).
pub const LABEL_EVENT: &str = "verge.dev/event";
/// On tasks a redrive creates: which redrive of the event it is (1, 2, ...).
pub const LABEL_REDRIVE: &str = "verge.dev/redrive";

/// The idempotency key of the task trigger `trigger` runs for event `event_id`
/// (`redrive` 0: the first delivery): the event id first, scoped by the trigger so two
/// triggers on one event each run.
pub fn idempotency_key(event_id: &str, trigger: &str, redrive: u32) -> String {
    if redrive == 0 {
        format!("{event_id}/{trigger}")
    } else {
        format!("{event_id}-redrive-{redrive}/{trigger}")
    }
}

/// Tunables (defaults for production; tests shrink the times).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Events handed off together before the checkpoint is written.
    pub batch: usize,
    /// Hand-offs (task creations, delivery records) in flight at once.
    pub handoff_concurrency: usize,
    /// Webhook deliveries not yet done (records); the dispatcher waits above it.
    pub max_pending_deliveries: usize,
    /// Webhook POSTs in flight at once.
    pub delivery_concurrency: usize,
    /// Deadline over one webhook attempt (connect, send, answer).
    pub attempt_timeout: Duration,
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Backoff base and cap between attempts (full jitter over the upper half).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Dead letters kept; past it the oldest are dropped (counted).
    pub max_dead_letters: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            handoff_concurrency: 32,
            max_pending_deliveries: 20_000,
            delivery_concurrency: 64,
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            max_dead_letters: 10_000,
        }
    }
}

/// The events' metrics (registered under `verge_events_*`).
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    /// Hand-offs made: a task created (or found, redelivered) or a delivery recorded.
    pub dispatched: Counter,
    /// Webhook deliveries answered 2xx.
    pub delivered: Counter,
    /// Webhook attempts that failed (each one).
    pub failed: Counter,
    /// Dead letters written.
    pub dead_lettered: Counter,
    /// Dead letters dropped over the cap (oldest first).
    pub dead_letters_dropped: Counter,
    /// Store events on object keys that are not object records (skipped).
    pub malformed: Counter,
    /// Store revisions written after the checkpoint (how far behind the dispatcher is).
    pub lag_revisions: Gauge<i64, AtomicI64>,
    /// Webhook deliveries waiting or in flight.
    pub pending_deliveries: Gauge<i64, AtomicI64>,
}

impl EventMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "events_dispatched",
            "Object events handed off to a trigger's target (a task, or a webhook delivery record)",
            self.dispatched.clone(),
        );
        registry.register(
            "events_delivered",
            "Object events a webhook answered with 2xx",
            self.delivered.clone(),
        );
        registry.register(
            "events_failed",
            "Webhook delivery attempts that failed",
            self.failed.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Object events dead-lettered (webhook retries exhausted, or the trigger's task failed)",
            self.dead_lettered.clone(),
        );
        registry.register(
            "events_dead_letters_dropped",
            "Dead letters dropped, oldest first, because the dead-letter list was full",
            self.dead_letters_dropped.clone(),
        );
        registry.register(
            "events_malformed",
            "Writes under /s3/objects/ that are not object records (no event)",
            self.malformed.clone(),
        );
        registry.register(
            "events_dispatcher_lag_revisions",
            "Store revisions written after the dispatcher's checkpoint",
            self.lag_revisions.clone(),
        );
        registry.register(
            "events_pending_deliveries",
            "Webhook deliveries waiting or in flight",
            self.pending_deliveries.clone(),
        );
    }
}

/// The dispatcher's checkpoint, if it has written one.
pub async fn read_checkpoint(store: &DynStore) -> Result<Option<Revision>, verge_store::Error> {
    let Some(kv) = store.get(CHECKPOINT_KEY).await? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&kv.value);
    text.trim().parse::<Revision>().map(Some).map_err(|_| {
        verge_store::Error::Corrupt(format!("{CHECKPOINT_KEY}: not a revision: {text:?}"))
    })
}

/// Stores the checkpoint (durable when it returns).
pub async fn write_checkpoint(store: &DynStore, at: Revision) -> Result<(), verge_store::Error> {
    let value = Bytes::from(at.to_string());
    match store
        .update(
            CHECKPOINT_KEY,
            value.clone(),
            Default::default(),
            Expect::Any,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(verge_store::Error::NotFound { .. }) => {
            match store
                .create(CHECKPOINT_KEY, value, Default::default())
                .await
            {
                Ok(_) | Err(verge_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Full jitter over the upper half of `min(cap, base * 2^(attempt-1))`: the wait
/// before attempt `attempt + 1` after `attempt` failed (1-based).
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    use rand::Rng;
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
}

/// Unix ms now.
pub(crate) fn now_ms() -> i64 {
    crate::functions::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_start_with_the_event_id_and_name_the_trigger() {
        assert_eq!(
            idempotency_key("000000000000002a", "thumbs", 0),
            "000000000000002a/thumbs"
        );
        assert_eq!(
            idempotency_key("000000000000002a", "thumbs", 2),
            "000000000000002a-redrive-2/thumbs"
        );
        // Always within the task's idempotency key bound (a trigger name is a label).
        let longest = idempotency_key(&cloudevent::event_id(i64::MAX), &"t".repeat(63), u32::MAX);
        assert!(longest.len() <= verge_api::limits::MAX_IDEMPOTENCY_KEY_LEN);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let (b, c) = (Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            let d1 = backoff(b, c, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b, "{d1:?}");
            assert!(backoff(b, c, 4) >= Duration::from_millis(400));
            assert!(backoff(b, c, 40) <= c);
        }
    }

    #[tokio::test]
    async fn the_checkpoint_is_created_then_updated_and_a_bad_one_is_an_error() {
        let store: DynStore = std::sync::Arc::new(verge_store::MemStore::new());
        assert_eq!(read_checkpoint(&store).await.unwrap(), None);
        write_checkpoint(&store, 5).await.unwrap();
        write_checkpoint(&store, 9).await.unwrap();
        assert_eq!(read_checkpoint(&store).await.unwrap(), Some(9));
        store
            .update(
                CHECKPOINT_KEY,
                Bytes::from("x"),
                Default::default(),
                Expect::Any,
            )
            .await
            .unwrap();
        assert!(read_checkpoint(&store).await.is_err());
    }
}
