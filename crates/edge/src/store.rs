//! The local store (redb): the desired objects the cloud sent this node and the
//! revision they are at. It is what the node works from when the cloud is gone,
//! across its own restarts.
//!
//! Tables:
//! - `objects`: `"{Kind}/{name}"` → the object's JSON (the kind is stored and looked up
//!   by its *string*, so kinds this build does not know are kept and served as-is);
//! - `meta`: `applied_revision` → `i64` (0 = nothing applied yet);
//! - `task_keys`: idempotency key (or task id) of each task this node started → unix
//!   ms, so a redelivered task runs at most once ([`LocalStore::claim_task`]);
//! - `trigger_fires`: trigger name → unix ms of its last fire time, so a restart
//!   neither fires twice nor forgets what it missed.
//!
//! [`LocalStore::apply_desired`] applies one [`Desired`] in a single write transaction
//! and commits it durably (redb's default `Durability::Immediate`: fsynced) before it
//! returns, so the uplink acks only what is on disk. redb is copy-on-write with a
//! checksummed commit slot, so a crash at any point leaves either the old or the new
//! state, never a mix.
//!
//! The methods block (disk I/O): call them from `spawn_blocking` in async code.
//! [`LocalStore`] is a cheap clone (an `Arc` of the database).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use verge_api::Object;
use verge_proto::Desired;

use crate::error::{Error, Result, db_open_err, json_err};
use crate::fsutil;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const APPLIED_REVISION: &str = "applied_revision";
const TASK_KEYS: TableDefinition<&str, i64> = TableDefinition::new("task_keys");
const TRIGGER_FIRES: TableDefinition<&str, i64> = TableDefinition::new("trigger_fires");
/// Task keys are remembered this long (the cloud gives up on a task long before).
pub const TASK_KEY_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// What [`LocalStore::apply_desired`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Persisted; the node is now at `revision` (ack it).
    Applied { revision: i64 },
    /// A delta that does not start at the applied revision: nothing was written; send
    /// `Hello` with `applied` to ask for a resync.
    NeedsResync { applied: i64 },
}

/// The node's desired-state store.
#[derive(Clone)]
pub struct LocalStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish_non_exhaustive()
    }
}

fn object_key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

fn check_kind(kind: &str) -> Result<()> {
    if kind.is_empty() || kind.contains('/') {
        return Err(Error::Invalid(format!("invalid kind {kind:?}")));
    }
    Ok(())
}

impl LocalStore {
    /// Opens (or creates, mode 0600) the store at `path`.
    pub fn open(path: &Path) -> Result<LocalStore> {
        let file = fsutil::open_private_rw(path)?;
        let db = Database::builder()
            .set_cache_size(crate::REDB_CACHE_BYTES)
            .create_file(file)
            .map_err(db_open_err(path))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(OBJECTS)?;
            txn.open_table(META)?;
            txn.open_table(TASK_KEYS)?;
            txn.open_table(TRIGGER_FIRES)?;
        }
        txn.commit()?;
        Ok(LocalStore { db: Arc::new(db) })
    }

    /// The revision of the last applied [`Desired`] (0 = none yet).
    pub fn applied_revision(&self) -> Result<i64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(APPLIED_REVISION)?.map(|g| g.value()).unwrap_or(0))
    }

    /// Applies `desired` atomically and durably (see the module docs):
    /// - a delta whose `fromRevision` is not the applied revision → `NeedsResync`,
    ///   nothing written;
    /// - a snapshot → the object set is replaced by `upserts`;
    /// - a delta → `deletes` removed, `upserts` written;
    ///
    /// then `applied_revision = toRevision`, commit, and only then `Applied`.
    pub fn apply_desired(&self, desired: &Desired) -> Result<ApplyOutcome> {
        // Serialize before opening the transaction: a bad object fails with nothing
        // begun.
        let mut upserts = Vec::with_capacity(desired.upserts.len());
        for obj in &desired.upserts {
            check_kind(&obj.kind)?;
            let key = object_key(&obj.kind, &obj.metadata.name);
            let json = serde_json::to_vec(obj).map_err(json_err(key.clone()))?;
            upserts.push((key, json));
        }
        for r in &desired.deletes {
            check_kind(&r.kind)?;
        }

        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let applied = meta.get(APPLIED_REVISION)?.map(|g| g.value()).unwrap_or(0);
            if !desired.applies_to(applied) {
                drop(meta);
                txn.abort()?;
                return Ok(ApplyOutcome::NeedsResync { applied });
            }
            let mut objects = txn.open_table(OBJECTS)?;
            if desired.snapshot {
                objects.retain(|_, _| false)?;
            }
            for r in &desired.deletes {
                objects.remove(object_key(&r.kind, &r.name).as_str())?;
            }
            for (key, json) in &upserts {
                objects.insert(key.as_str(), json.as_slice())?;
            }
            meta.insert(APPLIED_REVISION, desired.to_revision)?;
        }
        txn.commit()?;
        Ok(ApplyOutcome::Applied {
            revision: desired.to_revision,
        })
    }

    /// Every stored object of `kind` (the kind name, `Config`), by name.
    pub fn list(&self, kind: &str) -> Result<Vec<Object>> {
        check_kind(kind)?;
        let start = format!("{kind}/");
        // '0' is the byte after '/': the range is exactly the keys under "{kind}/".
        let end = format!("{kind}0");
        let txn = self.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in objects.range(start.as_str()..end.as_str())? {
            let (k, v) = item?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// One stored object.
    pub fn get(&self, kind: &str, name: &str) -> Result<Option<Object>> {
        check_kind(kind)?;
        let key = object_key(kind, name);
        let txn = self.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        match objects.get(key.as_str())? {
            Some(v) => Ok(Some(decode(&key, v.value())?)),
            None => Ok(None),
        }
    }

    /// How many objects are stored (all kinds).
    pub fn len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OBJECTS)?.len()?)
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Records, durably, that the task with `key` starts now. `false` when it was
    /// already claimed (a redelivery): the caller must not run it again. Keys older
    /// than [`TASK_KEY_RETENTION_MS`] are pruned on the way.
    pub fn claim_task(&self, key: &str, now_ms: i64) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let fresh = {
            let mut keys = txn.open_table(TASK_KEYS)?;
            let fresh = keys.get(key)?.is_none();
            if fresh {
                keys.insert(key, now_ms)?;
            }
            if fresh && keys.len()? % 1024 == 0 {
                keys.retain(|_, at| now_ms - at < TASK_KEY_RETENTION_MS)?;
            }
            fresh
        };
        txn.commit()?;
        Ok(fresh)
    }

    /// Unix ms of trigger `name`'s last fire time, if it ever fired here.
    pub fn last_fire(&self, name: &str) -> Result<Option<i64>> {
        let txn = self.db.begin_read()?;
        let fires = txn.open_table(TRIGGER_FIRES)?;
        Ok(fires.get(name)?.map(|g| g.value()))
    }

    /// Records, durably, that trigger `name` fired for the time `at_ms` (before its
    /// task starts, so a crash never fires it twice).
    pub fn set_last_fire(&self, name: &str, at_ms: i64) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(TRIGGER_FIRES)?.insert(name, at_ms)?;
        txn.commit()?;
        Ok(())
    }
}

fn decode(key: &str, json: &[u8]) -> Result<Object> {
    serde_json::from_slice(json).map_err(|e| Error::Corrupt {
        what: format!("objects[{key}]"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_api::{API_VERSION, ObjectMeta};

    #[test]
    fn task_claims_and_trigger_fires_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = LocalStore::open(&path).unwrap();
            assert!(s.claim_task("k1", 10).unwrap());
            assert!(!s.claim_task("k1", 11).unwrap());
            assert_eq!(s.last_fire("nightly").unwrap(), None);
            s.set_last_fire("nightly", 60_000).unwrap();
        }
        let s = LocalStore::open(&path).unwrap();
        assert!(
            !s.claim_task("k1", 12).unwrap(),
            "a claim outlives a restart"
        );
        assert!(s.claim_task("k2", 12).unwrap());
        assert_eq!(s.last_fire("nightly").unwrap(), Some(60_000));
    }
    use verge_proto::ObjectRef;

    fn obj(kind: &str, name: &str, v: i64) -> Object {
        Object {
            api_version: API_VERSION.into(),
            kind: kind.into(),
            metadata: ObjectMeta {
                name: name.into(),
                resource_version: Some(v.to_string()),
                ..Default::default()
            },
            spec: serde_json::json!({"data": {"v": v.to_string()}}),
            status: serde_json::Value::Null,
        }
    }

    fn delta(from: i64, to: i64, upserts: Vec<Object>, deletes: &[(&str, &str)]) -> Desired {
        Desired {
            from_revision: from,
            to_revision: to,
            snapshot: false,
            upserts,
            deletes: deletes
                .iter()
                .map(|(k, n)| ObjectRef {
                    kind: (*k).into(),
                    name: (*n).into(),
                })
                .collect(),
        }
    }

    fn snapshot(to: i64, upserts: Vec<Object>) -> Desired {
        Desired {
            from_revision: 0,
            to_revision: to,
            snapshot: true,
            upserts,
            deletes: vec![],
        }
    }

    fn names(store: &LocalStore, kind: &str) -> Vec<String> {
        store
            .list(kind)
            .unwrap()
            .into_iter()
            .map(|o| o.metadata.name)
            .collect()
    }

    fn open_tmp() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("store.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn deltas_apply_in_order() {
        let (_d, s) = open_tmp();
        assert_eq!(s.applied_revision().unwrap(), 0);
        let out = s
            .apply_desired(&delta(
                0,
                3,
                vec![
                    obj("Config", "a", 1),
                    obj("Config", "b", 2),
                    obj("App", "a", 3),
                ],
                &[],
            ))
            .unwrap();
        assert_eq!(out, ApplyOutcome::Applied { revision: 3 });
        assert_eq!(names(&s, "Config"), ["a", "b"]);
        assert_eq!(names(&s, "App"), ["a"]);
        let out = s
            .apply_desired(&delta(
                3,
                5,
                vec![obj("Config", "b", 5)],
                &[("Config", "a")],
            ))
            .unwrap();
        assert_eq!(out, ApplyOutcome::Applied { revision: 5 });
        assert_eq!(s.applied_revision().unwrap(), 5);
        assert_eq!(names(&s, "Config"), ["b"]);
        let b = s.get("Config", "b").unwrap().unwrap();
        assert_eq!(b.spec["data"]["v"], "5");
        assert!(s.get("Config", "a").unwrap().is_none());
        // Other kinds untouched; a kind prefix never leaks ("App" vs "Apps").
        assert_eq!(names(&s, "App"), ["a"]);
        assert!(names(&s, "Ap").is_empty());
        assert!(names(&s, "Apps").is_empty());
        // Deleting something absent is fine (idempotent delete).
        let out = s
            .apply_desired(&delta(5, 6, vec![], &[("Config", "zzz")]))
            .unwrap();
        assert_eq!(out, ApplyOutcome::Applied { revision: 6 });
    }

    #[test]
    fn gap_needs_resync_and_writes_nothing() {
        let (_d, s) = open_tmp();
        s.apply_desired(&delta(0, 2, vec![obj("Config", "a", 1)], &[]))
            .unwrap();
        for (from, to) in [(3, 4), (1, 4), (0, 9)] {
            let out = s
                .apply_desired(&delta(
                    from,
                    to,
                    vec![obj("Config", "new", 4)],
                    &[("Config", "a")],
                ))
                .unwrap();
            assert_eq!(out, ApplyOutcome::NeedsResync { applied: 2 });
        }
        assert_eq!(s.applied_revision().unwrap(), 2);
        assert_eq!(names(&s, "Config"), ["a"]);
    }

    #[test]
    fn snapshot_replaces_everything() {
        let (_d, s) = open_tmp();
        s.apply_desired(&delta(
            0,
            4,
            vec![
                obj("Config", "a", 1),
                obj("App", "x", 2),
                obj("Config", "b", 3),
            ],
            &[],
        ))
        .unwrap();
        // A snapshot applies whatever the applied revision (even a gap).
        let out = s
            .apply_desired(&snapshot(
                10,
                vec![obj("Config", "b", 9), obj("Function", "f", 10)],
            ))
            .unwrap();
        assert_eq!(out, ApplyOutcome::Applied { revision: 10 });
        assert_eq!(names(&s, "Config"), ["b"]);
        assert!(names(&s, "App").is_empty());
        assert_eq!(names(&s, "Function"), ["f"]);
        assert_eq!(s.len().unwrap(), 2);
        assert_eq!(
            s.get("Config", "b").unwrap().unwrap().spec["data"]["v"],
            "9"
        );
        // An empty snapshot empties the store.
        s.apply_desired(&snapshot(11, vec![])).unwrap();
        assert!(s.is_empty().unwrap());
        assert_eq!(s.applied_revision().unwrap(), 11);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = LocalStore::open(&path).unwrap();
            s.apply_desired(&delta(0, 7, vec![obj("Config", "a", 7)], &[]))
                .unwrap();
        }
        let s = LocalStore::open(&path).unwrap();
        assert_eq!(s.applied_revision().unwrap(), 7);
        assert_eq!(names(&s, "Config"), ["a"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bad_kind_is_refused() {
        let (_d, s) = open_tmp();
        assert!(s.list("a/b").is_err());
        assert!(s.get("", "x").is_err());
    }
}
