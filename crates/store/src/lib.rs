//! The Verge store: an etcd-shaped, revisioned key-value store.
//!
//! One global, monotonically increasing revision; every successful write (create,
//! update, delete) gets the next revision. Objects carry `create_revision` and
//! `mod_revision`; updates and deletes may be conditioned on `mod_revision`
//! (compare-and-swap). `watch(prefix, after)` delivers every change with a revision
//! greater than `after`, in revision order, then follows live changes. Old revisions
//! can be compacted; watching from before the compacted revision fails with
//! [`Error::Compacted`], which the API maps to 410 Gone.
//!
//! Callers only see the [`Store`] trait; backends live in their own modules: SQLite
//! (`sqlite`, the embedded default), [`MemStore`] (`mem`, in memory, for tests),
//! PostgreSQL later. Every backend passes the same [`compliance`] suite and the
//! model-based test (`tests/model.rs`). Controllers never talk SQL.

pub mod compliance;
mod error;
pub mod mem;
pub mod sqlite;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::Stream;
use verge_api::LabelSelector;

pub use error::{Error, Result};
pub use mem::MemStore;
pub use sqlite::{SqliteOptions, SqliteStore};

/// A store revision. Revision 0 means "nothing written yet"; the first write is 1.
pub type Revision = i64;

/// Labels kept beside the value so `list` can filter without decoding values.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    /// Opaque bytes (the API stores JSON).
    pub value: Bytes,
    pub labels: Labels,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key. For a delete event: the delete's revision.
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Create or update. A create has `kv.create_revision == revision`.
    Put,
    /// `kv` holds the last value before the delete, with `mod_revision` = the delete's
    /// revision.
    Delete,
}

#[derive(Debug)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    pub kv: KeyValue,
    /// Scratch slot for a consumer's wire encoding of this event, so one encoding can
    /// be shared by many watchers of the same event. The store never reads it.
    pub encoded: OnceLock<Bytes>,
}

impl Event {
    pub fn new(revision: Revision, kind: EventKind, kv: KeyValue) -> Self {
        Self {
            revision,
            kind,
            kv,
            encoded: OnceLock::new(),
        }
    }

    pub fn is_create(&self) -> bool {
        self.kind == EventKind::Put && self.kv.create_revision == self.revision
    }
}

/// Items in key order plus the revision they were read at (consistent snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
}

/// Ends after yielding `Err` (e.g. the watcher fell behind a compaction).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Arc<Event>>> + Send>>;

/// Precondition for update and delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// The key's current `mod_revision` must equal this.
    ModRevision(Revision),
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys starting with `prefix`, filtered by `selector` on labels, in key order.
    async fn list(&self, prefix: &str, selector: Option<&LabelSelector>) -> Result<ListResult>;

    /// One page of keys under `prefix` that sort strictly after `start_after` (byte
    /// order; `""` starts at the beginning), at most `limit` of them, in key order, read
    /// in one snapshot. For listings too large to read at once (a bucket's objects).
    async fn list_page(&self, prefix: &str, start_after: &str, limit: usize) -> Result<ListResult>;

    /// Fails with [`Error::AlreadyExists`] if the key exists. Returns the stored kv.
    /// Durable (fsynced) when it returns Ok.
    async fn create(&self, key: &str, value: Bytes, labels: Labels) -> Result<KeyValue>;

    /// Fails with [`Error::NotFound`] or [`Error::Conflict`] (precondition failed).
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        labels: Labels,
        expect: Expect,
    ) -> Result<KeyValue>;

    /// Returns the deleted kv (its `mod_revision` is the delete's revision).
    async fn delete(&self, key: &str, expect: Expect) -> Result<KeyValue>;

    /// Every event on keys under `prefix` with revision > `after`, in order, then live
    /// events. [`Error::Compacted`] right away if `after` < the compacted revision.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Drops history up to and including `revision` (current values are kept). Watching
    /// from a revision below it then fails. No-op if already compacted further.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Revision of the last committed write (0 if none).
    async fn current_revision(&self) -> Result<Revision>;

    /// Revision history was compacted up to (0 if never).
    async fn compacted_revision(&self) -> Result<Revision>;
}

/// Shared handle type the server and controllers hold.
pub type DynStore = Arc<dyn Store>;
