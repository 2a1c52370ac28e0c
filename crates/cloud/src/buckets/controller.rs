//! The bucket controller, on the one runtime: keyed by Bucket, it keeps each bucket's
//! status (`{objects, bytes}`) current (woken by writes, at most one status write per
//! bucket every 2 s) and applies its lifecycle rule; one seeded key
//! ([`SWEEP_KEY`]) removes blobs no record names any more and aborts multipart uploads
//! left open past [`STALE_UPLOAD`]. Periodic work is a requeue, never a timer loop.
//!
//! Must not: delete an object that changed since it was judged expired (the delete is
//! conditional on the record's revision), or a blob younger than the sweep's grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use verge_api::Kind;
use verge_api::specs::{BucketSpec, ObjectRecord};
use verge_store::DynStore;

use super::{Buckets, OBJECTS_PREFIX, PAGE, blobs::SWEEP_GRACE};
use crate::controller::{Action, Controller, Informers, Request, backoff_policy};
use crate::error::{Error, Result};
use crate::objects::{modify, object_key};

/// The sweep's key (not a bucket name: bucket names have no `_`).
pub const SWEEP_KEY: &str = "_sweep";
/// How often usage is copied into a bucket's status while nothing changes it.
const STATUS_EVERY: Duration = Duration::from_secs(60);
/// At most one status write per bucket this often (a burst of uploads wakes it for
/// each; the writes are spaced out).
const STATUS_MIN_GAP: Duration = Duration::from_secs(2);
/// How often a bucket's lifecycle rule is applied.
const LIFECYCLE_EVERY: Duration = Duration::from_secs(3600);
/// How often the blob sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Multipart uploads open longer than this are aborted.
pub const STALE_UPLOAD: Duration = Duration::from_secs(7 * 86400);
/// Records examined per lifecycle pass (the rest wait for the next pass).
const LIFECYCLE_BUDGET: usize = 100_000;

/// What the controller writes in a Bucket's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketStatus {
    pub objects: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_expired: Option<u64>,
}

pub struct BucketController {
    store: DynStore,
    buckets: Arc<Buckets>,
    /// When each bucket's lifecycle rule last ran.
    lifecycle_ran: Mutex<HashMap<String, Instant>>,
    /// When each bucket's status was last written.
    status_written: Mutex<HashMap<String, Instant>>,
}

/// Whether a record last modified at `last_modified` (RFC 3339) is past `days` at `now`
/// (pure).
pub fn expired(last_modified: &str, days: u32, now: time::OffsetDateTime) -> bool {
    time::OffsetDateTime::parse(
        last_modified,
        &time::format_description::well_known::Rfc3339,
    )
    .is_ok_and(|t| now - t >= time::Duration::days(i64::from(days)))
}

impl BucketController {
    pub fn new(store: DynStore, buckets: Arc<Buckets>) -> Self {
        Self {
            store,
            buckets,
            lifecycle_ran: Mutex::new(HashMap::new()),
            status_written: Mutex::new(HashMap::new()),
        }
    }

    pub async fn reconcile(&self, req: Request) -> Result<Action> {
        if req.key == SWEEP_KEY {
            self.sweep().await?;
            return Ok(Action::requeue(SWEEP_EVERY));
        }
        let Some(obj) = req.object else {
            return Ok(Action::await_change());
        };
        let name = obj.metadata.name.clone();
        let spec: BucketSpec = serde_json::from_value(obj.spec.clone()).unwrap_or_default();
        let mut status: BucketStatus =
            serde_json::from_value(obj.status.clone()).unwrap_or_default();
        if let Some(rule) = &spec.lifecycle {
            let due = self
                .lifecycle_ran
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .is_none_or(|t| t.elapsed() >= LIFECYCLE_EVERY);
            if due {
                let n = self
                    .expire(
                        &name,
                        rule.prefix.as_deref().unwrap_or(""),
                        rule.expire_after_days,
                    )
                    .await?;
                self.lifecycle_ran
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.clone(), Instant::now());
                if n > 0 {
                    tracing::info!(bucket = %name, expired = n, "lifecycle rule deleted objects");
                    status.last_expired = Some(n);
                }
            }
        }
        let (objects, bytes) = self.buckets.usage(&name).await?;
        status.objects = objects;
        status.bytes = bytes;
        let new = serde_json::to_value(&status)?;
        if obj.status != new {
            let since = self
                .status_written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .map(Instant::elapsed);
            if let Some(since) = since
                && since < STATUS_MIN_GAP
            {
                return Ok(Action::requeue(STATUS_MIN_GAP - since));
            }
            self.status_written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), Instant::now());
            let key = object_key(Kind::Bucket, &name);
            let result = modify(&self.store, Kind::Bucket, &key, &name, None, |cur| {
                let mut next = cur.clone();
                next.status = new.clone();
                Ok(next)
            })
            .await;
            if let Err(e) = result
                && e.reason != verge_api::Reason::NotFound
            {
                return Err(Error::Config(e.to_string()));
            }
        }
        Ok(Action::requeue(STATUS_EVERY))
    }

    /// Deletes the objects under `prefix` older than `days`; returns how many.
    async fn expire(&self, bucket: &str, prefix: &str, days: u32) -> Result<u64> {
        let base = format!("{OBJECTS_PREFIX}{bucket}/{prefix}");
        let now = time::OffsetDateTime::now_utc();
        let (mut after, mut seen, mut n) = (String::new(), 0usize, 0u64);
        while seen < LIFECYCLE_BUDGET {
            let page = self.store.list_page(&base, &after, PAGE).await?;
            for kv in &page.items {
                seen += 1;
                let Ok(rec) = serde_json::from_slice::<ObjectRecord>(&kv.value) else {
                    continue;
                };
                if expired(&rec.last_modified, days, now) {
                    let key = &kv.key[OBJECTS_PREFIX.len() + bucket.len() + 1..];
                    if self
                        .buckets
                        .delete_if_unchanged(bucket, key, kv.mod_revision)
                        .await?
                    {
                        n += 1;
                    }
                }
            }
            match page.items.last() {
                Some(last) if page.items.len() == PAGE => after = last.key.clone(),
                _ => break,
            }
        }
        Ok(n)
    }

    /// Aborts stale multipart uploads, then removes unreferenced blobs.
    async fn sweep(&self) -> Result<()> {
        let now = time::OffsetDateTime::now_utc();
        for (bucket, key, id, initiated) in self.buckets.all_uploads().await? {
            let stale = time::OffsetDateTime::parse(
                &initiated,
                &time::format_description::well_known::Rfc3339,
            )
            .is_ok_and(|t| now - t >= STALE_UPLOAD);
            if stale {
                tracing::info!(%bucket, %key, upload = %id, "aborting a stale multipart upload");
                self.buckets.abort_upload(&bucket, &key, &id).await?;
            }
        }
        let keep = self.buckets.referenced_blobs().await?;
        let before = SystemTime::now() - SWEEP_GRACE;
        let blobs = self.buckets.clone();
        let removed = tokio::task::spawn_blocking(move || blobs.blobs().sweep(&keep, before))
            .await
            .map_err(|e| Error::Config(format!("blob sweep task failed: {e}")))?;
        if removed > 0 {
            tracing::info!(removed, "removed blobs no object names");
        }
        Ok(())
    }

    /// Runs until `shutdown`; usage changes announced by [`Buckets`] wake their bucket.
    pub async fn run(self: Arc<Self>, informers: Arc<Informers>, shutdown: watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.buckets.notify_changes(tx);
        Controller::new("buckets", informers)
            .for_kind(Kind::Bucket)
            .wakeups(rx)
            .seed(SWEEP_KEY)
            .run(
                |req, c: Arc<BucketController>| async move { c.reconcile(req).await },
                backoff_policy,
                self,
                shutdown,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_by_whole_days() {
        let now = time::macros::datetime!(2026-12-10 12:00 UTC);
        assert!(expired("2026-12-08T12:00:00.000Z", 2, now));
        assert!(!expired("2026-12-08T12:00:01.000Z", 2, now));
        assert!(!expired("garbage", 1, now));
    }
}
