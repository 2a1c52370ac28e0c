//! Task results reported by nodes, recorded exactly once per `(node, seq)`.
//!
//! A node's store-and-forward queue delivers at least once (an item whose PUBACK was
//! lost is sent again after a reconnect), so the cloud makes delivery idempotent: each
//! result is stored under `/system/results/{node}/{seq:020}` with a create that fails
//! if the key exists. A duplicate is acknowledged and counted, never stored twice. The
//! store revision at which a record was created is its arrival order, which the API
//! returns (`receivedRevision`) so arrival order can be checked against `seq`.
//!
//! Only results the task controller admitted reach this module (`Tasks::admit`: for
//! an attempt dispatched to the node, or a run of a trigger it fires), so a node cannot
//! fill the store with answers to tasks it was never sent.
//!
//! Bound: at most [`MAX_RESULTS_PER_NODE`] records are kept per node; older ones are
//! pruned (checked every [`PRUNE_EVERY`] new records), and a record keeps the output
//! only up to [`MAX_RECORD_OUTPUT`] bytes (the task has all of it). Deleting a node
//! deletes its records. The task controller consumes them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use verge_proto::TaskResult;
use verge_store::{DynStore, Expect};

use crate::error::Result;

/// Store prefix of all result records.
pub const RESULTS_PREFIX: &str = "/system/results/";
/// Records kept per node.
pub const MAX_RESULTS_PER_NODE: usize = 1000;
/// Largest output (as JSON) a record keeps; larger ones keep only their size.
pub const MAX_RECORD_OUTPUT: usize = 4 * 1024;
/// New records per node between two prune checks.
pub const PRUNE_EVERY: u64 = 100;

/// Store prefix of one node's records (the trailing `/` keeps `n1` from matching `n10`).
pub fn node_prefix(node: &str) -> String {
    format!("{RESULTS_PREFIX}{node}/")
}

fn key(node: &str, seq: u64) -> String {
    format!("{RESULTS_PREFIX}{node}/{seq:020}")
}

/// What the cloud keeps of a result, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultRecord {
    pub node: String,
    pub seq: u64,
    /// The task's id.
    pub id: String,
    pub ok: bool,
    /// The output, when at most [`MAX_RECORD_OUTPUT`] bytes as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Size of the output as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// Cloud time of arrival (RFC 3339).
    pub received_at: String,
    /// Store revision of arrival: increases in arrival order. Filled when read.
    #[serde(default)]
    pub received_revision: i64,
}

/// Whether a result was new or a redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
    /// No such Node (deleted while the result was in flight).
    UnknownNode,
}

/// Records results and prunes old ones.
pub struct Results {
    store: DynStore,
    since_prune: Mutex<HashMap<String, u64>>,
}

impl Results {
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            since_prune: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `r` once. An `Err` means it was not stored: the caller must not
    /// acknowledge it, so the node sends it again.
    pub async fn record(&self, node: &str, r: &TaskResult) -> Result<Recorded> {
        let node_key = crate::objects::object_key(verge_api::Kind::Node, node);
        if self.store.get(&node_key).await?.is_none() {
            // Deleted (or never joined): nothing to attach it to. Acked, not kept.
            return Ok(Recorded::UnknownNode);
        }
        let output_bytes = r
            .output
            .as_ref()
            .map(|v| serde_json::to_vec(v).map_or(0, |b| b.len()));
        let rec = ResultRecord {
            node: node.to_owned(),
            seq: r.seq,
            id: r.id.clone(),
            ok: r.ok,
            output: r
                .output
                .clone()
                .filter(|_| output_bytes.is_some_and(|n| n <= MAX_RECORD_OUTPUT)),
            output_bytes: output_bytes.map(|n| n as u64),
            error: r.error.clone(),
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            received_at: crate::auth::now_rfc3339(),
            received_revision: 0,
        };
        let value = serde_json::to_vec(&rec)?;
        match self
            .store
            .create(&key(node, r.seq), value.into(), Default::default())
            .await
        {
            Ok(_) => {}
            Err(verge_store::Error::AlreadyExists { .. }) => return Ok(Recorded::Duplicate),
            Err(e) => return Err(e.into()),
        }
        let prune = {
            let mut m = self.since_prune.lock().unwrap_or_else(|e| e.into_inner());
            // The first record per node after a start prunes (the counter is not
            // persisted), so a node reporting rarely is still bounded.
            let n = m.entry(node.to_owned()).or_insert(PRUNE_EVERY - 1);
            *n += 1;
            if *n >= PRUNE_EVERY {
                *n = 0;
                true
            } else {
                false
            }
        };
        if prune && let Err(e) = self.prune(node).await {
            tracing::warn!(%node, error = %e, "could not prune old results");
        }
        Ok(Recorded::New)
    }

    /// Deletes all but the newest [`MAX_RESULTS_PER_NODE`] records of `node`.
    pub async fn prune(&self, node: &str) -> Result<usize> {
        let items = self.store.list(&node_prefix(node), None).await?.items;
        let excess = items.len().saturating_sub(MAX_RESULTS_PER_NODE);
        self.delete(&items[..excess]).await?;
        Ok(excess)
    }

    /// A node's records in `seq` order.
    pub async fn list(&self, node: &str) -> Result<Vec<ResultRecord>> {
        let items = self.store.list(&node_prefix(node), None).await?.items;
        items
            .iter()
            .map(|kv| {
                let mut r: ResultRecord = serde_json::from_slice(&kv.value)?;
                r.received_revision = kv.create_revision;
                Ok(r)
            })
            .collect()
    }

    /// Deletes every record of a deleted node.
    pub async fn forget(&self, node: &str) -> Result<()> {
        if let Ok(mut m) = self.since_prune.lock() {
            m.remove(node);
        }
        let items = self.store.list(&node_prefix(node), None).await?.items;
        self.delete(&items).await
    }

    /// Deletes these keys; ones already gone are fine.
    async fn delete(&self, items: &[verge_store::KeyValue]) -> Result<()> {
        for kv in items {
            match self.store.delete(&kv.key, Expect::Any).await {
                Ok(_) | Err(verge_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use verge_store::{SqliteOptions, SqliteStore};

    use super::*;

    fn result(seq: u64) -> TaskResult {
        TaskResult {
            id: format!("t{seq}"),
            ok: true,
            output: Some(serde_json::json!({ "seq": seq })),
            error: None,
            started_at_ms: 1,
            finished_at_ms: 2,
            seq,
            ..Default::default()
        }
    }

    async fn results() -> (tempfile::TempDir, Results) {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(
            SqliteStore::open(SqliteOptions::new(dir.path().join("s.db")))
                .await
                .unwrap(),
        );
        for n in ["n1", "n10"] {
            store
                .create(
                    &format!("/registry/nodes/{n}"),
                    "{}".into(),
                    Default::default(),
                )
                .await
                .unwrap();
        }
        (dir, Results::new(store))
    }

    #[tokio::test]
    async fn redeliveries_are_recorded_once_and_nodes_are_apart() {
        let (_d, r) = results().await;
        assert_eq!(r.record("n1", &result(1)).await.unwrap(), Recorded::New);
        assert_eq!(r.record("n1", &result(2)).await.unwrap(), Recorded::New);
        assert_eq!(
            r.record("n1", &result(1)).await.unwrap(),
            Recorded::Duplicate
        );
        assert_eq!(r.record("n10", &result(1)).await.unwrap(), Recorded::New);
        assert_eq!(
            r.record("gone", &result(1)).await.unwrap(),
            Recorded::UnknownNode,
            "results of deleted nodes are not kept"
        );
        assert!(r.list("gone").await.unwrap().is_empty());
        let got = r.list("n1").await.unwrap();
        assert_eq!(got.iter().map(|x| x.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(got[0].received_revision < got[1].received_revision);
        assert_eq!(
            r.list("n10").await.unwrap().len(),
            1,
            "n1 does not see n10's"
        );
        r.forget("n1").await.unwrap();
        assert!(r.list("n1").await.unwrap().is_empty());
        assert_eq!(r.list("n10").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn records_keep_small_outputs_only() {
        let (_d, r) = results().await;
        let big = TaskResult {
            output: Some(serde_json::json!("x".repeat(MAX_RECORD_OUTPUT))),
            ..result(1)
        };
        r.record("n1", &big).await.unwrap();
        r.record("n1", &result(2)).await.unwrap();
        let got = r.list("n1").await.unwrap();
        assert_eq!(got[0].output, None);
        assert_eq!(got[0].output_bytes, Some(MAX_RECORD_OUTPUT as u64 + 2));
        assert_eq!(got[1].output, Some(serde_json::json!({ "seq": 2 })));
    }

    #[tokio::test]
    async fn old_records_are_pruned_to_the_bound() {
        let (_d, r) = results().await;
        // Prunes run at the 1st record after a start and every PRUNE_EVERY after.
        let n = MAX_RESULTS_PER_NODE as u64 + PRUNE_EVERY + 1;
        for seq in 1..=n {
            r.record("n1", &result(seq)).await.unwrap();
        }
        let got = r.list("n1").await.unwrap();
        assert_eq!(got.len(), MAX_RESULTS_PER_NODE);
        assert_eq!(
            got[0].seq,
            n - MAX_RESULTS_PER_NODE as u64 + 1,
            "the oldest go"
        );
    }
}
