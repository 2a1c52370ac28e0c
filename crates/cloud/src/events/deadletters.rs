//! Dead letters: object events a trigger's target did not take — a webhook that failed
//! every attempt, a task that ended Failed or TimedOut (after its own retries), a
//! function that does not exist. One durable record each,
//! `/system/events/deadletters/{event id}.{trigger}`, listed by the API
//! (`GET /api/v1/deadletters?bucket=B`), redriven (`POST …/{id}/redrive`) or dropped
//! (`DELETE …/{id}`).
//!
//! The list is capped ([`super::EventsConfig::max_dead_letters`]): past it the oldest
//! are dropped and counted (`verge_events_dead_letters_dropped`), checked every
//! [`TRIM_EVERY`] writes, so it may exceed the cap by that many for a moment.
//!
//! Must not: run anything itself (a redrive creates a Task or a delivery record; the
//! task controller and the delivery worker do the rest), or drop a dead letter before
//! what replaces it is stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use verge_api::names::LABEL_TRIGGER;
use verge_api::specs::{Sink, TaskSpec, TaskTarget, TriggerSpec};
use verge_api::{Kind, Object, Reason};
use verge_store::{DynStore, Expect};

use super::cloudevent::CloudEvent;
use super::delivery::{Delivery, delivery_key};
use super::{DEADLETTERS_PREFIX, EventMetrics, LABEL_EVENT, LABEL_REDRIVE, idempotency_key};
use crate::error::ApiError;
use crate::functions::tasks::Tasks;
use crate::objects::object_key;

/// Writes between two checks of the cap.
pub const TRIM_EVERY: usize = 64;

/// Where an event was going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Sink>,
}

/// One dead letter (the API's and the store's form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// `{event id}.{trigger}`.
    pub id: String,
    pub bucket: String,
    pub trigger: String,
    pub target: Target,
    pub event: CloudEvent,
    /// Why, for people (the last HTTP status or error, the task's error).
    pub reason: String,
    /// Attempts made (webhook POSTs, or the task's attempts).
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339) and the same in Unix ms (for ordering).
    pub time: String,
    pub time_ms: i64,
    /// Redrives of this event to this trigger so far.
    #[serde(default)]
    pub redrives: u32,
    /// The task that failed (function targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// The id of the dead letter of event `event_id` for trigger `trigger`.
pub fn dead_letter_id(event_id: &str, trigger: &str) -> String {
    format!("{event_id}.{trigger}")
}

/// Whether `id` has the form of a dead letter id (16 hex digits, `.`, a trigger name):
/// the API refuses anything else before it touches the store.
pub fn is_dead_letter_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(event, trigger)| {
        event.len() == 16
            && event
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && verge_api::is_dns1123_label(trigger)
    })
}

fn key_of(id: &str) -> String {
    format!("{DEADLETTERS_PREFIX}{id}")
}

/// The ids to drop so that at most `max` remain: the oldest (by time, then id) first.
pub fn oldest_over_cap(mut items: Vec<(i64, String)>, max: usize) -> Vec<String> {
    if items.len() <= max {
        return Vec::new();
    }
    items.sort();
    let over = items.len() - max;
    items.into_iter().take(over).map(|(_, id)| id).collect()
}

/// The writer of dead letters (the dispatcher's and the delivery worker's).
pub struct DeadLetters {
    store: DynStore,
    metrics: EventMetrics,
    max: usize,
    writes: AtomicUsize,
}

impl DeadLetters {
    pub fn new(store: DynStore, metrics: EventMetrics, max: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            max,
            writes: AtomicUsize::new(0),
        })
    }

    /// Stores `dl` (replacing one with its id), and trims the list every
    /// [`TRIM_EVERY`] writes.
    pub async fn put(&self, dl: &DeadLetter) -> Result<(), verge_store::Error> {
        let key = key_of(&dl.id);
        let value = Bytes::from(serde_json::to_vec(dl).unwrap_or_default());
        let labels = BTreeMap::from([("bucket".to_string(), dl.bucket.clone())]);
        match self.store.create(&key, value.clone(), labels.clone()).await {
            Ok(_) => {}
            Err(verge_store::Error::AlreadyExists { .. }) => {
                self.store.update(&key, value, labels, Expect::Any).await?;
            }
            Err(e) => return Err(e),
        }
        self.metrics.dead_lettered.inc();
        tracing::warn!(id = %dl.id, trigger = %dl.trigger, reason = %dl.reason, "object event dead-lettered");
        if self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(TRIM_EVERY)
        {
            self.trim().await?;
        }
        Ok(())
    }

    /// Drops the oldest dead letters over the cap; how many.
    pub async fn trim(&self) -> Result<usize, verge_store::Error> {
        let list = self.store.list(DEADLETTERS_PREFIX, None).await?;
        if list.items.len() <= self.max {
            return Ok(0);
        }
        let items = list
            .items
            .iter()
            .map(|kv| {
                let id = kv.key[DEADLETTERS_PREFIX.len()..].to_string();
                let t = serde_json::from_slice::<DeadLetter>(&kv.value)
                    .map(|d| d.time_ms)
                    .unwrap_or(0);
                (t, id)
            })
            .collect();
        let mut dropped = 0;
        for id in oldest_over_cap(items, self.max) {
            match self.store.delete(&key_of(&id), Expect::Any).await {
                Ok(_) => dropped += 1,
                Err(verge_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if dropped > 0 {
            self.metrics.dead_letters_dropped.inc_by(dropped as u64);
            tracing::warn!(
                dropped,
                max = self.max,
                "dead-letter list full: the oldest were dropped"
            );
        }
        Ok(dropped)
    }
}

/// The dead letters, oldest first; only `bucket`'s when given.
pub async fn list(store: &DynStore, bucket: Option<&str>) -> Result<Vec<DeadLetter>, ApiError> {
    let selector;
    let sel = match bucket {
        Some(b) => {
            selector = verge_api::LabelSelector::parse(&format!("bucket={b}"))
                .map_err(|e| ApiError::invalid("bucket", e.to_string()))?;
            Some(&selector)
        }
        None => None,
    };
    let l = store.list(DEADLETTERS_PREFIX, sel).await?;
    let mut out: Vec<DeadLetter> = l
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .filter(|d: &DeadLetter| bucket.is_none_or(|b| d.bucket == b))
        .collect();
    out.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
    Ok(out)
}

async fn get(store: &DynStore, id: &str) -> Result<(DeadLetter, i64), ApiError> {
    if !is_dead_letter_id(id) {
        return Err(ApiError::not_found(format!("dead letter {id:?} not found")).field("id"));
    }
    let kv = store
        .get(&key_of(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("dead letter {id:?} not found")))?;
    let dl = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
    Ok((dl, kv.mod_revision))
}

/// Drops dead letter `id`.
pub async fn drop_one(store: &DynStore, id: &str) -> Result<DeadLetter, ApiError> {
    let (dl, rev) = get(store, id).await?;
    match store.delete(&key_of(id), Expect::ModRevision(rev)).await {
        Ok(_) | Err(verge_store::Error::NotFound { .. }) => Ok(dl),
        Err(e) => Err(e.into()),
    }
}

/// What a redrive started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    pub id: String,
    /// Which redrive of this event to this trigger (1, 2, ...).
    pub redrive: u32,
    /// The task started (function targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The delivery record written (webhook targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
}

/// The trigger's current spec, when it still exists and reads.
async fn trigger_spec(store: &DynStore, name: &str) -> Option<TriggerSpec> {
    let kv = store.get(&object_key(Kind::Trigger, name)).await.ok()??;
    let o: Object = serde_json::from_slice(&kv.value).ok()?;
    serde_json::from_value(o.spec).ok()
}

/// Delivers dead letter `id` again — to the trigger's current target when the trigger
/// still exists (the fix may be in it), else to the one recorded — then drops it.
/// A function target gets a new task, idempotency key
/// `{event id}-redrive-{n}/{trigger}`; a webhook a new delivery record. Redriving the
/// same dead letter twice at once starts one run.
pub async fn redrive(
    store: &DynStore,
    tasks: Option<&Arc<Tasks>>,
    id: &str,
) -> Result<Redriven, ApiError> {
    let (dl, rev) = get(store, id).await?;
    let n = dl.redrives.saturating_add(1);
    let current = trigger_spec(store, &dl.trigger).await;
    let mut out = Redriven {
        id: dl.id.clone(),
        redrive: n,
        task: None,
        delivery: None,
    };
    let function = current
        .as_ref()
        .and_then(|t| t.function.clone())
        .or_else(|| dl.target.function.clone());
    let sink = current
        .as_ref()
        .and_then(|t| t.sink.clone())
        .or_else(|| dl.target.sink.clone());
    if dl.target.function.is_some()
        && let Some(function) = function
    {
        let tasks =
            tasks.ok_or_else(|| ApiError::new(Reason::Unavailable, "functions are not enabled"))?;
        let target: Option<TaskTarget> = current.as_ref().and_then(|t| t.target.clone());
        let spec = TaskSpec {
            function,
            input: Some(
                super::dispatcher::task_input(
                    &dl.event,
                    current.as_ref().and_then(|t| t.input.as_ref()),
                )
                .map_err(ApiError::internal)?,
            ),
            target,
            callback_url: None,
            idempotency_key: Some(idempotency_key(&dl.event.id, &dl.trigger, n)),
            timeout_seconds: None,
            max_attempts: None,
        };
        let labels = BTreeMap::from([
            (LABEL_TRIGGER.to_string(), dl.trigger.clone()),
            (LABEL_EVENT.to_string(), dl.event.id.clone()),
            (LABEL_REDRIVE.to_string(), n.to_string()),
        ]);
        let (task, _) = tasks.create(spec, labels, Some(dl.trigger.clone())).await?;
        out.task = Some(task);
    } else if let Some(sink) = sink {
        let key = delivery_key(&dl.trigger, &dl.event.id);
        let record = Delivery {
            trigger: dl.trigger.clone(),
            url: sink.url,
            event: dl.event.clone(),
            attempts: 0,
            redrives: n,
            next_attempt_ms: super::now_ms(),
            last_error: None,
        };
        let value = Bytes::from(serde_json::to_vec(&record).map_err(ApiError::internal)?);
        match store.create(&key, value, Default::default()).await {
            // Already there: a redrive that stopped before dropping the dead letter.
            Ok(_) | Err(verge_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        out.delivery = Some(key);
    } else {
        return Err(ApiError::invalid(
            "target",
            format!("dead letter {id:?} names neither a function nor a sink"),
        ));
    }
    match store.delete(&key_of(id), Expect::ModRevision(rev)).await {
        Ok(_)
        | Err(verge_store::Error::NotFound { .. })
        | Err(verge_store::Error::Conflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_event_dot_trigger_and_nothing_else_reads_as_one() {
        let id = dead_letter_id("000000000000002a", "thumbs");
        assert_eq!(id, "000000000000002a.thumbs");
        assert!(is_dead_letter_id(&id));
        for bad in [
            "",
            "000000000000002a",
            "000000000000002A.thumbs",
            "00000000000002a.thumbs",
            "000000000000002a.Thumbs",
            "000000000000002a.../x",
            "000000000000002a.a/b",
            "../../registry.x",
        ] {
            assert!(!is_dead_letter_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_oldest_are_dropped_over_the_cap() {
        let items = vec![
            (30, "c".to_string()),
            (10, "a".to_string()),
            (20, "b".to_string()),
            (10, "0".to_string()),
        ];
        assert!(oldest_over_cap(items.clone(), 4).is_empty());
        assert_eq!(oldest_over_cap(items.clone(), 2), vec!["0", "a"]);
        assert_eq!(oldest_over_cap(items, 0).len(), 4);
    }
}
