//! Cron triggers the cloud fires (a `nodeSelector` target or a cloud-placed function;
//! see [`TriggerSpec::fires_on`]): each due fire time becomes a Task whose
//! idempotency key names the trigger and the fire time, so a restart never starts it
//! twice. The last fire time lives in the trigger's status (`lastFireMs`), written
//! before the task is created. Triggers fired by nodes get `firesOn: nodes` and their
//! next fire time in status; their runs show up as Tasks when the results arrive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use verge_api::specs::{FiresOn, FunctionSpec, Schedule, TaskSpec, TriggerSpec};
use verge_api::{Kind, Object};
use verge_store::DynStore;

use super::tasks::{LABEL_TRIGGER, Tasks};
use crate::http::resources::{kind_prefix, modify, object_key};

pub struct TriggerController {
    store: DynStore,
    tasks: Arc<Tasks>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl TriggerController {
    pub fn new(store: DynStore, tasks: Arc<Tasks>) -> Self {
        Self { store, tasks }
    }

    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "trigger pass failed");
            }
            // Wake on the next whole second: second-granularity schedules fire on time.
            let ms = 1000 - now_ms().rem_euclid(1000) + 5;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms as u64)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn pass(&self) -> crate::Result<()> {
        let list = self.store.list(&kind_prefix(Kind::Trigger), None).await?;
        let functions: BTreeMap<String, FunctionSpec> = self
            .store
            .list(&kind_prefix(Kind::Function), None)
            .await?
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Object>(&kv.value).ok())
            .filter_map(|o| {
                let spec = serde_json::from_value(o.spec).ok()?;
                Some((o.metadata.name, spec))
            })
            .collect();
        for kv in &list.items {
            let Ok(o) = serde_json::from_slice::<Object>(&kv.value) else {
                continue;
            };
            let Ok(spec) = serde_json::from_value::<TriggerSpec>(o.spec.clone()) else {
                continue;
            };
            let Ok(schedule) = Schedule::of(&spec) else {
                continue;
            };
            let name = o.metadata.name.clone();
            let now = now_ms();
            let function = functions.get(&spec.function);
            let fires_on = spec.fires_on(function.is_some_and(FunctionSpec::in_cloud));
            let last = o.status["lastFireMs"].as_i64();
            let generation = o.metadata.generation;
            let mut status = o.status.clone();
            if !status.is_object() {
                status = json!({});
            }
            status["observedGeneration"] = json!(generation);
            status["firesOn"] = json!(match fires_on {
                FiresOn::Cloud => "cloud",
                FiresOn::Nodes => "nodes",
            });
            status["nextFireMs"] = json!(schedule.next_after(now));
            status["message"] = match function {
                None => json!(format!("function {:?} not found", spec.function)),
                Some(_) => serde_json::Value::Null,
            };
            let mut fires = Vec::new();
            if fires_on == FiresOn::Cloud {
                let due = schedule.due(last, now, spec.missed_policy.as_ref());
                status["lastFireMs"] = json!(due.last);
                if due.skipped > 0 {
                    let skipped = status["skipped"].as_u64().unwrap_or(0) + due.skipped;
                    status["skipped"] = json!(skipped);
                }
                fires = due.fires;
            }
            if status == o.status {
                continue;
            }
            let key = object_key(Kind::Trigger, &name);
            let written = modify(&self.store, Kind::Trigger, &key, &name, None, |cur| {
                let mut next = cur.clone();
                if cur.metadata.generation == generation {
                    next.status = status.clone();
                }
                Ok(next)
            })
            .await;
            if written.is_err() {
                continue;
            }
            let uid = o.metadata.uid.clone().unwrap_or_default();
            for at in fires {
                let task = TaskSpec {
                    function: spec.function.clone(),
                    input: spec.input.clone(),
                    target: spec.target.clone(),
                    callback_url: None,
                    idempotency_key: Some(format!(
                        "trigger/{name}/{}/{at}",
                        &uid[..uid.len().min(8)]
                    )),
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
        Ok(())
    }
}
