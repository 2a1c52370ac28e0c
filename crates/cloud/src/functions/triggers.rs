//! Cron triggers the cloud fires (a `nodeSelector` target or a cloud-placed function;
//! see [`TriggerSpec::fires_on`]), as a controller on the one runtime
//! ([`crate::controller`]). Object-event triggers (`spec.event`) are not this
//! controller's: [`crate::events`] dispatches them.
//!
//! Each due fire time becomes a Task whose idempotency key names the trigger and the
//! fire time, so a restart (or a reconcile on a stale read) never starts it twice. The
//! last fire time lives in the trigger's status ([`TriggerStatus`]: `lastFireMs`),
//! written before the task is created. Triggers fired by nodes get `firesOn: nodes` and their next fire time in
//! status; their runs show up as Tasks when the results arrive.
//!
//! Work is proportional to change: a trigger is reconciled when it changes, when the
//! Function it names changes, and at its own next fire time (`Action::Requeue`) —
//! nothing lists every trigger on a timer. [`decide`] is the pure rule; the reconcile
//! only reads, writes and creates tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use verge_api::specs::{FiresOn, FunctionSpec, Schedule, TaskSpec, TriggerSpec};
use verge_api::status::trigger::TriggerStatus;
use verge_api::{Kind, Object};
use verge_store::DynStore;

use super::now_ms;
use super::tasks::{LABEL_TRIGGER, Tasks};
use crate::controller::{Action, Cache, Controller, Informers, Request, backoff_policy};
use crate::error::ApiError;
use crate::objects::{kv_to_object, modify, object_key};

/// How late after a fire time the reconcile runs (the clock's granularity).
const AFTER_FIRE: Duration = Duration::from_millis(5);

pub struct TriggerController {
    store: DynStore,
    tasks: Arc<Tasks>,
    functions: Arc<Cache>,
}

/// What one reconcile of a trigger decides at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to store (unchanged when equal to the object's).
    pub status: TriggerStatus,
    /// Fire times to start a Task for, oldest first (after `status` is stored).
    pub fires: Vec<i64>,
    /// The next fire time: reconcile again then.
    pub next: Option<i64>,
}

/// The status stored on `trigger` (a fresh one when there is none or it does not read).
pub fn status_of(trigger: &Object) -> TriggerStatus {
    serde_json::from_value(trigger.status.clone()).unwrap_or_default()
}

/// The pure rule: `trigger`'s status and due fires at `now_ms`, given the Function it
/// names (`None`: not found). `None` when the spec or its schedule does not parse
/// (validation keeps those out; such an object is left alone), and for an object-event
/// trigger (`spec.event`: the events dispatcher's, [`crate::events`]).
pub fn decide(trigger: &Object, function: Option<&FunctionSpec>, now_ms: i64) -> Option<Decision> {
    let spec = serde_json::from_value::<TriggerSpec>(trigger.spec.clone()).ok()?;
    if spec.event.is_some() {
        return None;
    }
    let schedule = Schedule::of(&spec).ok()?;
    let fires_on = spec.fires_on(function.is_some_and(FunctionSpec::in_cloud));
    let mut status = status_of(trigger);
    let next = schedule.next_after(now_ms);
    status.observed_generation = trigger.metadata.generation;
    status.fires_on = Some(fires_on);
    status.next_fire_ms = next;
    status.message = match function {
        None => Some(format!(
            "function {:?} not found",
            spec.function.as_deref().unwrap_or_default()
        )),
        Some(_) => None,
    };
    let mut fires = Vec::new();
    if fires_on == FiresOn::Cloud {
        let due = schedule.due(status.last_fire_ms, now_ms, spec.missed_policy.as_ref());
        status.last_fire_ms = Some(due.last);
        status.skipped += due.skipped;
        fires = due.fires;
    }
    Some(Decision {
        status,
        fires,
        next,
    })
}

impl TriggerController {
    pub fn new(store: DynStore, tasks: Arc<Tasks>, informers: &Informers) -> Self {
        Self {
            store,
            tasks,
            functions: informers.cache(Kind::Function),
        }
    }

    /// Runs the controller until `shutdown` flips: keyed by Trigger name, woken by
    /// Trigger changes, by changes of the Function a trigger names, and at fire times.
    pub async fn run(
        self: Arc<Self>,
        informers: Arc<Informers>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let triggers = informers.cache(Kind::Trigger);
        Controller::new("triggers", informers)
            .for_kind(Kind::Trigger)
            .watches(Kind::Function, move |change| {
                triggers
                    .list()
                    .iter()
                    .filter(|t| t.spec["function"].as_str() == Some(change.name.as_str()))
                    .map(|t| t.metadata.name.clone())
                    .collect()
            })
            .run(
                |req: Request, this: Arc<Self>| async move { this.reconcile(req).await },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
    }

    async fn reconcile(&self, req: Request) -> Result<Action, ApiError> {
        if req.object.is_none() {
            return Ok(Action::await_change());
        }
        // The status is read from the store, not the cache: the cache may not yet show
        // this controller's own last write.
        let key = object_key(Kind::Trigger, &req.key);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(Action::await_change());
        };
        let trigger = kv_to_object(&kv)?;
        let function = trigger.spec["function"]
            .as_str()
            .and_then(|f| self.functions.get(f))
            .and_then(|o| serde_json::from_value::<FunctionSpec>(o.spec.clone()).ok());
        let now = now_ms();
        let Some(d) = decide(&trigger, function.as_ref(), now) else {
            return Ok(Action::await_change());
        };
        let name = trigger.metadata.name.clone();
        if d.status != status_of(&trigger) {
            let generation = trigger.metadata.generation;
            let status = serde_json::to_value(&d.status).map_err(ApiError::internal)?;
            modify(
                &self.store,
                Kind::Trigger,
                &key,
                &name,
                Some(kv.mod_revision),
                |cur| {
                    let mut next = cur.clone();
                    if cur.metadata.generation == generation {
                        next.status = status.clone();
                    }
                    Ok(next)
                },
            )
            .await?;
            self.fire(&trigger, &d.fires).await;
        }
        Ok(match d.next {
            Some(at) => Action::requeue(
                Duration::from_millis(at.saturating_sub(now).max(0) as u64) + AFTER_FIRE,
            ),
            None => Action::await_change(),
        })
    }

    /// Starts a Task for each fire time (idempotent per trigger and time).
    async fn fire(&self, trigger: &Object, fires: &[i64]) {
        let Ok(spec) = serde_json::from_value::<TriggerSpec>(trigger.spec.clone()) else {
            return;
        };
        let Some(function) = spec.function.clone() else {
            return;
        };
        let name = &trigger.metadata.name;
        let uid = trigger.metadata.uid.clone().unwrap_or_default();
        for &at in fires {
            let task = TaskSpec {
                function: function.clone(),
                input: spec.input.clone(),
                target: spec.target.clone(),
                callback_url: None,
                idempotency_key: Some(format!("trigger/{name}/{}/{at}", &uid[..uid.len().min(8)])),
                timeout_seconds: None,
                max_attempts: None,
            };
            let labels = BTreeMap::from([(LABEL_TRIGGER.to_string(), name.clone())]);
            match self.tasks.create(task, labels, Some(name.clone())).await {
                Ok((id, _)) => tracing::info!(trigger = %name, task = %id, at, "trigger fired"),
                Err(e) => {
                    tracing::warn!(trigger = %name, error = %e.message, "trigger could not start a task")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn trigger(spec: Value, status: Value) -> Object {
        Object {
            api_version: verge_api::API_VERSION.into(),
            kind: "Trigger".into(),
            metadata: verge_api::ObjectMeta {
                name: "tick".into(),
                generation: Some(1),
                ..Default::default()
            },
            spec,
            status,
        }
    }

    fn cloud_fn() -> FunctionSpec {
        serde_json::from_value(json!({"runtime": "builtin", "handler": "echo",
            "placement": {"cloud": true}}))
        .unwrap()
    }

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a whole minute

    #[test]
    fn a_new_trigger_starts_counting_and_says_when_it_fires_next() {
        let t = trigger(
            json!({"schedule": "* * * * *", "function": "echo"}),
            Value::Null,
        );
        let d = decide(&t, Some(&cloud_fn()), T0 + 1_000).unwrap();
        assert!(d.fires.is_empty());
        assert_eq!(d.status.last_fire_ms, Some(T0 + 1_000));
        assert_eq!(d.status.fires_on, Some(FiresOn::Cloud));
        assert_eq!(d.status.next_fire_ms, Some(T0 + 60_000));
        assert_eq!(d.next, Some(T0 + 60_000));
        assert_eq!(d.status.observed_generation, Some(1));
        // The JSON the CLI reads.
        let v = serde_json::to_value(&d.status).unwrap();
        assert_eq!(v["firesOn"], "cloud");
        assert_eq!(v["nextFireMs"], T0 + 60_000);
    }

    #[test]
    fn a_due_time_fires_once_and_is_recorded_first() {
        let t = trigger(
            json!({"schedule": "* * * * *", "function": "echo"}),
            json!({"lastFireMs": T0, "nextFireMs": T0 + 60_000}),
        );
        let d = decide(&t, Some(&cloud_fn()), T0 + 60_010).unwrap();
        assert_eq!(d.fires, vec![T0 + 60_000]);
        assert_eq!(d.status.last_fire_ms, Some(T0 + 60_000));
        assert_eq!(d.next, Some(T0 + 120_000));
        // Decided again on the stored status: nothing more, nothing to write.
        let stored = trigger(t.spec.clone(), serde_json::to_value(&d.status).unwrap());
        let again = decide(&stored, Some(&cloud_fn()), T0 + 60_020).unwrap();
        assert!(again.fires.is_empty());
        assert_eq!(again.status, status_of(&stored));
    }

    #[test]
    fn a_missing_function_is_said_and_a_bad_schedule_left_alone() {
        let t = trigger(
            json!({"schedule": "* * * * *", "function": "gone"}),
            Value::Null,
        );
        let d = decide(&t, None, T0).unwrap();
        assert_eq!(
            d.status.message.as_deref(),
            Some("function \"gone\" not found")
        );
        let bad = trigger(
            json!({"schedule": "every day", "function": "echo"}),
            Value::Null,
        );
        assert!(decide(&bad, Some(&cloud_fn()), T0).is_none());
    }

    #[test]
    fn event_triggers_are_left_to_the_events_dispatcher() {
        let t = trigger(
            json!({"event": {"bucket": "uploads", "types": ["created"]}, "function": "echo"}),
            Value::Null,
        );
        assert!(decide(&t, Some(&cloud_fn()), T0).is_none());
    }
}
