//! The webhook delivery worker: POSTs each delivery record
//! (`/system/events/deliveries/{trigger}/{event id}`) to its sink in CloudEvents HTTP
//! structured mode (`Content-Type: application/cloudevents+json`, the event as the
//! body), signed like task callbacks (`X-Verge-Signature: sha256=<hex HMAC>` under the
//! cluster's callback key; also `X-Verge-Event`, `X-Verge-Trigger`,
//! `X-Verge-Delivery: <attempt>`), through the outbound guard, with a deadline over
//! each attempt. A 2xx deletes the record; a failure records the attempt and the next
//! time (exponential backoff, jittered); after `max_attempts` the event becomes a dead
//! letter and the record goes.
//!
//! The records are the queue: the worker lists them at start and then follows their
//! changes (a relist after any watch error), keeping only an index (key → next attempt
//! time) in memory; at most `delivery_concurrency` POSTs run at once, so a hanging
//! webhook holds one slot for at most the attempt deadline and never blocks the others.
//!
//! Must not: reach a URL except through the guard, say in a dead letter why a
//! destination without an answer failed (only that it did), or POST a record it has
//! not read from the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, watch};
use verge_outbound::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use verge_store::{DynStore, EventKind, Expect};

use super::cloudevent::{CONTENT_TYPE as CLOUDEVENTS_JSON, CloudEvent};
use super::deadletters::{DeadLetter, DeadLetters, Target, dead_letter_id};
use super::{DELIVERIES_PREFIX, EventMetrics, EventsConfig, backoff, now_ms};
use crate::functions::callbacks;

/// One webhook delivery not yet done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub trigger: String,
    pub url: String,
    pub event: CloudEvent,
    /// Attempts made so far.
    pub attempts: u32,
    /// Which redrive this is (0: the first delivery).
    #[serde(default)]
    pub redrives: u32,
    /// Unix ms of the next attempt.
    pub next_attempt_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The record of event `event_id`'s delivery for trigger `trigger`.
pub fn delivery_key(trigger: &str, event_id: &str) -> String {
    format!("{DELIVERIES_PREFIX}{trigger}/{event_id}")
}

/// Most of a webhook's answer read (only its status matters).
const MAX_ANSWER_BYTES: u64 = 4096;

/// The client webhooks go out with: the outbound guard (public addresses only, plus
/// `allow_networks`; only `allow_hosts` when not empty), no redirects (the signature
/// was for this URL), `timeout` over each attempt.
pub fn http_client(
    allow_networks: &[String],
    allow_hosts: &[String],
    timeout: Duration,
) -> crate::Result<verge_outbound::Client> {
    verge_outbound::Client::new(verge_outbound::Policy {
        allow_networks: allow_networks.to_vec(),
        allow_hosts: allow_hosts.to_vec(),
        max_bytes: MAX_ANSWER_BYTES,
        follow_redirects: false,
        timeout,
        connect_timeout: timeout,
        ..verge_outbound::Policy::default()
    })
    .map_err(|e| crate::Error::Config(format!("outbound requests: {e}")))
}

/// What the worker knows of the records: when each is due, which are being POSTed.
#[derive(Default)]
struct Index {
    due: BTreeSet<(i64, String)>,
    at: HashMap<String, i64>,
    running: HashSet<String>,
}

impl Index {
    fn upsert(&mut self, key: &str, when: i64) {
        if self.running.contains(key) {
            return;
        }
        if let Some(old) = self.at.insert(key.to_string(), when) {
            self.due.remove(&(old, key.to_string()));
        }
        self.due.insert((when, key.to_string()));
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.at.remove(key) {
            self.due.remove(&(old, key.to_string()));
        }
    }

    fn pop_due(&mut self, now: i64) -> Option<String> {
        let (when, key) = self.due.first()?.clone();
        if when > now {
            return None;
        }
        self.due.remove(&(when, key.clone()));
        self.at.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    fn finish(&mut self, key: &str, next: Option<i64>) {
        self.running.remove(key);
        if let Some(n) = next {
            self.upsert(key, n);
        }
    }

    fn next_due(&self) -> Option<i64> {
        self.due.first().map(|(t, _)| *t)
    }

    fn len(&self) -> usize {
        self.at.len() + self.running.len()
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered(u16),
    /// The answer's status if there was one, and what a dead letter may say.
    Failed(Option<u16>, String),
}

pub struct Deliveries {
    store: DynStore,
    http: verge_outbound::Client,
    key: Vec<u8>,
    cfg: EventsConfig,
    metrics: EventMetrics,
    dead: Arc<DeadLetters>,
    index: Mutex<Index>,
    notify: Notify,
}

impl Deliveries {
    pub fn new(
        store: DynStore,
        http: verge_outbound::Client,
        key: Vec<u8>,
        cfg: EventsConfig,
        metrics: EventMetrics,
        dead: Arc<DeadLetters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            http,
            key,
            cfg,
            metrics,
            dead,
            index: Mutex::new(Index::default()),
            notify: Notify::new(),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliveries waiting or in flight (as far as the worker has seen them).
    pub fn pending(&self) -> usize {
        self.index().len()
    }

    fn gauge(&self) {
        let n = self.pending() as i64;
        self.metrics.pending_deliveries.set(n);
    }

    /// A record the dispatcher (or a redrive) just wrote: known before the watch
    /// brings it, so `pending` counts it at once.
    pub fn enqueued(&self, key: &str, due_ms: i64) {
        self.index().upsert(key, due_ms);
        self.gauge();
        self.notify.notify_one();
    }

    /// Runs the worker until `shutdown` flips.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let follow = tokio::spawn(self.clone().follow(shutdown.clone()));
        self.deliver_loop(shutdown).await;
        let _ = follow.await;
    }

    /// Keeps the index in step with the records: list, then watch from the list's
    /// revision; relist after any error.
    async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let err = match self.follow_once(&mut shutdown).await {
                Ok(()) => return,
                Err(e) => e,
            };
            failures += 1;
            tracing::warn!(error = %err, "event deliveries: following the records failed; listing again");
            let wait = backoff(
                Duration::from_millis(200),
                Duration::from_secs(10),
                failures,
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn follow_once(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), verge_store::Error> {
        let list = self.store.list(DELIVERIES_PREFIX, None).await?;
        {
            let mut index = self.index();
            let keys: HashSet<&str> = list.items.iter().map(|kv| kv.key.as_str()).collect();
            let stale: Vec<String> = index
                .at
                .keys()
                .filter(|k| !keys.contains(k.as_str()))
                .cloned()
                .collect();
            for k in stale {
                index.remove(&k);
            }
            for kv in &list.items {
                let when = serde_json::from_slice::<Delivery>(&kv.value)
                    .map(|d| d.next_attempt_ms)
                    .unwrap_or(0);
                index.upsert(&kv.key, when);
            }
        }
        self.gauge();
        self.notify.notify_one();
        let mut stream = self.store.watch(DELIVERIES_PREFIX, list.revision).await?;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let Some(ev) = ev else {
                return Err(verge_store::Error::Closed);
            };
            let ev = ev?;
            match ev.kind {
                EventKind::Put => {
                    let when = serde_json::from_slice::<Delivery>(&ev.kv.value)
                        .map(|d| d.next_attempt_ms)
                        .unwrap_or(0);
                    self.index().upsert(&ev.kv.key, when);
                }
                EventKind::Delete => self.index().remove(&ev.kv.key),
            }
            self.gauge();
            self.notify.notify_one();
        }
    }

    async fn deliver_loop(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.cfg.delivery_concurrency.max(1)));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let key = loop {
                let now = now_ms();
                let (key, next) = {
                    let mut index = self.index();
                    let key = index.pop_due(now);
                    (key, index.next_due())
                };
                if let Some(key) = key {
                    break key;
                }
                let wait = next
                    .map(|t| Duration::from_millis((t - now).clamp(1, 60_000) as u64))
                    .unwrap_or(Duration::from_secs(60));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.notify.notified() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let next = this.attempt(&key).await;
                this.index().finish(&key, next);
                this.gauge();
                this.notify.notify_one();
                drop(permit);
            });
        }
    }

    /// One POST of `body` to `url` (attempt `attempt`).
    pub async fn post(&self, d: &Delivery, attempt: u32, body: &[u8]) -> Attempt {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CLOUDEVENTS_JSON));
        for (name, value) in [
            ("x-verge-signature", callbacks::sign(&self.key, body)),
            ("x-verge-event", d.event.id.clone()),
            ("x-verge-trigger", d.trigger.clone()),
            ("x-verge-delivery", attempt.to_string()),
        ] {
            // Hex digests, event ids, trigger names and numbers are valid header values.
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        // The client's own deadline covers the attempt; this one only guards it.
        let deadline = self.cfg.attempt_timeout + Duration::from_secs(1);
        match tokio::time::timeout(deadline, self.http.post(&d.url, headers, body.to_vec())).await {
            Ok(Ok(a)) if (200..300).contains(&a.status) => Attempt::Delivered(a.status),
            Ok(Ok(a)) => Attempt::Failed(Some(a.status), format!("answered HTTP {}", a.status)),
            Ok(Err(e)) => {
                tracing::debug!(event = %d.event.id, trigger = %d.trigger, attempt, error = %e, "webhook attempt got no answer");
                Attempt::Failed(None, e.redacted())
            }
            Err(_) => Attempt::Failed(None, verge_outbound::NOT_ALLOWED_OR_UNREACHABLE.to_owned()),
        }
    }

    /// Delivers record `key` once; when to try it again (`None`: it is done, or gone).
    async fn attempt(&self, key: &str) -> Option<i64> {
        let retry_later = || Some(now_ms() + 1_000);
        let kv = match self.store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read a delivery record");
                return retry_later();
            }
        };
        let Ok(mut d) = serde_json::from_slice::<Delivery>(&kv.value) else {
            tracing::warn!(%key, "dropping a delivery record that does not read");
            let _ = self
                .store
                .delete(key, Expect::ModRevision(kv.mod_revision))
                .await;
            return None;
        };
        if d.next_attempt_ms > now_ms() {
            // Rescheduled since the index saw it.
            return Some(d.next_attempt_ms);
        }
        if d.attempts < self.cfg.max_attempts {
            let attempt = d.attempts + 1;
            let body = serde_json::to_vec(&d.event).unwrap_or_default();
            match self.post(&d, attempt, &body).await {
                Attempt::Delivered(_) => {
                    self.metrics.delivered.inc();
                    return match self
                        .store
                        .delete(key, Expect::ModRevision(kv.mod_revision))
                        .await
                    {
                        Ok(_) | Err(verge_store::Error::NotFound { .. }) => None,
                        // Redriven meanwhile: that record is delivered in its turn.
                        Err(verge_store::Error::Conflict { .. }) => Some(now_ms()),
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "delivered, but the record could not be removed (it may be delivered again)");
                            retry_later()
                        }
                    };
                }
                Attempt::Failed(_, why) => {
                    self.metrics.failed.inc();
                    d.attempts = attempt;
                    d.last_error = Some(why);
                }
            }
        }
        if d.attempts >= self.cfg.max_attempts {
            let dl = DeadLetter {
                id: dead_letter_id(&d.event.id, &d.trigger),
                bucket: d.event.data.bucket.clone(),
                trigger: d.trigger.clone(),
                target: Target {
                    function: None,
                    sink: Some(verge_api::specs::Sink { url: d.url.clone() }),
                },
                event: d.event.clone(),
                reason: d
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "delivery failed".into()),
                attempts: d.attempts,
                time: crate::auth::now_rfc3339(),
                time_ms: now_ms(),
                redrives: d.redrives,
                task: None,
            };
            if let Err(e) = self.dead.put(&dl).await {
                tracing::warn!(%key, error = %e, "cannot store a dead letter; trying again later");
                let _ = self.save(key, &d, kv.mod_revision).await;
                return retry_later();
            }
            return match self
                .store
                .delete(key, Expect::ModRevision(kv.mod_revision))
                .await
            {
                Ok(_) | Err(verge_store::Error::NotFound { .. }) => None,
                Err(_) => retry_later(),
            };
        }
        let next = now_ms()
            + backoff(self.cfg.backoff_base, self.cfg.backoff_cap, d.attempts).as_millis() as i64;
        d.next_attempt_ms = next;
        match self.save(key, &d, kv.mod_revision).await {
            Ok(()) => Some(next),
            Err(verge_store::Error::NotFound { .. }) => None,
            Err(_) => Some(now_ms()),
        }
    }

    async fn save(&self, key: &str, d: &Delivery, rev: i64) -> Result<(), verge_store::Error> {
        let value = Bytes::from(serde_json::to_vec(d).unwrap_or_default());
        self.store
            .update(key, value, Default::default(), Expect::ModRevision(rev))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_hands_out_due_keys_once_and_takes_them_back_when_told() {
        let mut i = Index::default();
        i.upsert("a", 10);
        i.upsert("b", 5);
        i.upsert("a", 3);
        assert_eq!(i.len(), 2);
        assert_eq!(i.pop_due(4), Some("a".to_string()));
        assert_eq!(i.pop_due(4), None, "b is due at 5");
        // A watch event for a key being POSTed does not hand it out twice.
        i.upsert("a", 0);
        assert_eq!(i.pop_due(100), Some("b".to_string()));
        assert_eq!(i.pop_due(100), None);
        assert_eq!(i.len(), 2);
        i.finish("a", Some(50));
        i.finish("b", None);
        assert_eq!((i.len(), i.next_due()), (1, Some(50)));
        i.remove("a");
        assert_eq!((i.len(), i.next_due()), (0, None));
    }
}
