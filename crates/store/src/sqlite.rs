//! SQLite backend (WAL, synchronous=FULL): one writer task applies writes in
//! group-committed batches; reads go through a pool of read connections.
//!
//! This module owns the on-disk schema, opening/closing the database and the read
//! paths (`get`, `list`, revisions). The writer task lives in [`writer`], the watch
//! stream (history catch-up + live broadcast) in [`watch`].
//!
//! Schema:
//! - `kv(key, value, labels, create_rev, mod_rev)`: current values;
//! - `events(rev, key, kind, value, labels, create_rev)`: history, one row per revision
//!   (for a delete: the last value, `create_rev` of the deleted object);
//! - `meta(k, v)`: `schema_version`, `current_rev` and `compacted_rev`. `current_rev` is
//!   written in every write transaction, so it never decreases (not after deletes, not
//!   after compaction, not across restarts).

mod watch;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{broadcast, mpsc, oneshot};
use verge_api::LabelSelector;

use crate::{
    Error, Event, EventKind, Expect, KeyValue, Labels, ListResult, Result, Revision, Store,
    WatchStream,
};
use writer::{Msg, WriteOp, Writer};

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// Most writes committed in one transaction (group commit).
    pub max_batch: usize,
    /// Read connections.
    pub read_connections: u32,
    /// How long a write may wait for the database lock before failing.
    pub busy_timeout: Duration,
    /// Capacity (in events) of the live event broadcast. A watcher that falls further
    /// behind than this is not lost: it re-reads the missed range from the events
    /// table. Events not yet read by every watcher stay in memory, so this bounds that
    /// memory to `watch_buffer` × event size.
    pub watch_buffer: usize,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_batch: 512,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            watch_buffer: 1024,
        }
    }
}

/// Version of the schema below, stored in `meta.schema_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      BLOB NOT NULL,
    labels     TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    rev        INTEGER PRIMARY KEY NOT NULL,
    key        TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    value      BLOB NOT NULL,
    labels     TEXT NOT NULL,
    create_rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY NOT NULL,
    v INTEGER NOT NULL
);
-- Event-recording triggers of a pre-release schema; the writer records events itself.
DROP TRIGGER IF EXISTS kv_insert_event;
DROP TRIGGER IF EXISTS kv_update_event;
INSERT OR IGNORE INTO meta (k, v) VALUES ('current_rev', 0), ('compacted_rev', 0);
";

/// `events.kind` values.
const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

pub struct SqliteStore {
    writes: mpsc::Sender<Msg>,
    reads: SqlitePool,
    /// Source of watch subscriptions; taken on close so watch streams end once the
    /// writer (the other sender) is gone too.
    events: Mutex<Option<broadcast::Sender<Arc<Event>>>>,
    closed: AtomicBool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database and starts the writer task.
    pub async fn open(opts: SqliteOptions) -> crate::Result<Self> {
        prepare_file(&opts.path).await?;

        let base = SqliteConnectOptions::new()
            .filename(&opts.path)
            .busy_timeout(opts.busy_timeout)
            .foreign_keys(false);
        let mut conn = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Keeps the statement journals of the batch statements in memory instead of
            // spilling them to a temporary file per batch.
            .pragma("temp_store", "MEMORY")
            // 32 MiB page cache for the writer (the B-tree pages batches touch).
            .pragma("cache_size", "-32768")
            // Checkpoint every 8192 WAL pages (32 MiB) rather than 1000: pages rewritten
            // by many batches are copied to the database file once.
            .pragma("wal_autocheckpoint", "8192")
            .connect()
            .await?;

        sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT v FROM meta WHERE k = 'schema_version'")
                .fetch_optional(&mut conn)
                .await?;
        match version {
            None => {
                sqlx::query("INSERT INTO meta (k, v) VALUES ('schema_version', ?1)")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut conn)
                    .await?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(Error::Corrupt(format!(
                    "unsupported schema version {v} (this build knows {SCHEMA_VERSION})"
                )));
            }
        }
        let (current, compacted) = {
            let mut tx = sqlx::Connection::begin(&mut conn).await?;
            let revs = read_meta(&mut tx).await?;
            tx.commit().await?;
            revs
        };

        let reads = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .min_connections(0)
            .connect_with(base.read_only(true))
            .await?;

        let (events, _) = broadcast::channel(opts.watch_buffer.max(1));
        let max_batch = opts.max_batch.max(1);
        let (writes, rx) = mpsc::channel(max_batch.saturating_mul(4).max(1024));
        let writer = Writer::new(conn, rx, events.clone(), current, compacted, max_batch);
        tokio::spawn(writer.run());

        Ok(Self {
            writes,
            reads,
            events: Mutex::new(Some(events)),
            closed: AtomicBool::new(false),
        })
    }

    /// Stops accepting writes, lets in-flight batches commit, closes connections.
    ///
    /// Writes queued before the call are committed; later ones fail with
    /// [`Error::Closed`]. Watch streams end. Idempotent.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (tx, rx) = oneshot::channel();
        if self.writes.send(Msg::Close(tx)).await.is_ok() {
            // Err: the writer is already gone; nothing left to wait for.
            let _ = rx.await;
        }
        self.reads.close().await;
    }

    async fn write(&self, op: WriteOp) -> Result<Arc<Event>> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Msg::Write(op, tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Maps read errors after (or during) close to [`Error::Closed`].
    fn read_err(&self, e: impl Into<Error>) -> Error {
        let e = e.into();
        if self.closed.load(Ordering::SeqCst)
            || matches!(e, Error::Database(sqlx::Error::PoolClosed))
        {
            Error::Closed
        } else {
            e
        }
    }

    async fn meta_value(&self, k: &str) -> Result<Revision> {
        sqlx::query_scalar("SELECT v FROM meta WHERE k = ?1")
            .bind(k)
            .fetch_optional(&self.reads)
            .await
            .map_err(|e| self.read_err(e))?
            .ok_or_else(|| Error::Corrupt(format!("meta row {k:?} is missing")))
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let row =
            sqlx::query("SELECT key, value, labels, create_rev, mod_rev FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&self.reads)
                .await
                .map_err(|e| self.read_err(e))?;
        row.map(|r| kv_from_row(&r, None))
            .transpose()
            .map(Option::flatten)
    }

    async fn list(&self, prefix: &str, selector: Option<&LabelSelector>) -> Result<ListResult> {
        let result: Result<ListResult> = async {
            let tx = self.reads.begin().await?;
            let end = prefix_end(prefix);
            let query = match &end {
                Some(end) => sqlx::query(
                    "SELECT key, value, labels, create_rev, mod_rev FROM kv \
                     WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )
                .bind(prefix)
                .bind(end.as_str()),
                None => sqlx::query(
                    "SELECT key, value, labels, create_rev, mod_rev FROM kv \
                     WHERE key >= ?1 ORDER BY key",
                )
                .bind(prefix),
            };
            snapshot(tx, query, prefix, selector).await
        }
        .await;
        result.map_err(|e| self.read_err(e))
    }

    async fn list_page(&self, prefix: &str, start_after: &str, limit: usize) -> Result<ListResult> {
        let result: Result<ListResult> = async {
            let tx = self.reads.begin().await?;
            // Keys after `start_after` and at or after `prefix`; the prefix end bounds
            // the range (the `starts_with` check below is for the unbounded case).
            let (from, inclusive) = if start_after.as_bytes() >= prefix.as_bytes() {
                (start_after, false)
            } else {
                (prefix, true)
            };
            let end = prefix_end(prefix);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let sql = match (inclusive, end.is_some()) {
                (true, true) => {
                    "SELECT key, value, labels, create_rev, mod_rev FROM kv \
                     WHERE key >= ?1 AND key < ?3 ORDER BY key LIMIT ?2"
                }
                (false, true) => {
                    "SELECT key, value, labels, create_rev, mod_rev FROM kv \
                     WHERE key > ?1 AND key < ?3 ORDER BY key LIMIT ?2"
                }
                (true, false) => {
                    "SELECT key, value, labels, create_rev, mod_rev FROM kv \
                     WHERE key >= ?1 ORDER BY key LIMIT ?2"
                }
                (false, false) => {
                    "SELECT key, value, labels, create_rev, mod_rev FROM kv \
                     WHERE key > ?1 ORDER BY key LIMIT ?2"
                }
            };
            let mut query = sqlx::query(sql).bind(from).bind(limit);
            if let Some(end) = &end {
                query = query.bind(end.as_str());
            }
            snapshot(tx, query, prefix, None).await
        }
        .await;
        result.map_err(|e| self.read_err(e))
    }

    async fn create(&self, key: &str, value: Bytes, labels: Labels) -> Result<KeyValue> {
        let labels_json = encode_labels(&labels)?;
        let ev = self
            .write(WriteOp::Create {
                key: key.to_owned(),
                value,
                labels,
                labels_json,
            })
            .await?;
        Ok(ev.kv.clone())
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        labels: Labels,
        expect: Expect,
    ) -> Result<KeyValue> {
        let labels_json = encode_labels(&labels)?;
        let ev = self
            .write(WriteOp::Update {
                key: key.to_owned(),
                value,
                labels,
                labels_json,
                expect,
            })
            .await?;
        Ok(ev.kv.clone())
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<KeyValue> {
        let ev = self
            .write(WriteOp::Delete {
                key: key.to_owned(),
                expect,
            })
            .await?;
        Ok(ev.kv.clone())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before looking at the database: every event committed after this
        // point arrives on the channel, every event committed before is in the table.
        let rx = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(broadcast::Sender::subscribe)
            .ok_or(Error::Closed)?;
        let (current, compacted) = async {
            let mut conn = self.reads.acquire().await?;
            read_meta(&mut conn).await
        }
        .await
        .map_err(|e| self.read_err(e))?;
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        // Nothing after `after` in the table yet: everything to come is on the channel.
        let needs_history = after < current;
        Ok(watch::stream(
            self.reads.clone(),
            rx,
            prefix.to_owned(),
            after,
            needs_history,
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Msg::Compact(revision, tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.meta_value("current_rev").await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.meta_value("compacted_rev").await
    }
}

/// Creates the parent directory and, on Unix, the database file with mode 0600 (SQLite
/// gives its `-wal` and `-shm` files the database file's permissions).
/// The rows of `query` under `prefix` (matching `selector`) and the revision, read in
/// the one transaction `tx`: a consistent snapshot (`list` and `list_page`).
async fn snapshot<'q>(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    prefix: &str,
    selector: Option<&LabelSelector>,
) -> std::result::Result<ListResult, Error> {
    let mut items = Vec::new();
    {
        let mut rows = query.fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            if let Some(kv) = kv_from_row(&row, selector)?
                && kv.key.starts_with(prefix)
            {
                items.push(kv);
            }
        }
    }
    let (revision, _) = read_meta(&mut tx).await?;
    tx.commit().await?;
    Ok(ListResult { items, revision })
}

async fn prepare_file(path: &std::path::Path) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        Error::Database(sqlx::Error::Io(std::io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        )))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io("cannot create the directory of", e))?;
    }
    let mut open = tokio::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    open.mode(0o600);
    match open.open(path).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("cannot create", e)),
    }
}

/// `(current_rev, compacted_rev)` as seen by the given connection/transaction.
async fn read_meta(conn: &mut sqlx::SqliteConnection) -> Result<(Revision, Revision)> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT k, v FROM meta WHERE k IN ('current_rev', 'compacted_rev')")
            .fetch_all(&mut *conn)
            .await?;
    let get = |name: &str| {
        rows.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::Corrupt(format!("meta row {name:?} is missing")))
    };
    Ok((get("current_rev")?, get("compacted_rev")?))
}

/// Decodes a `kv` row; `None` if `selector` rejects its labels (the value is then not
/// copied out).
fn kv_from_row(row: &SqliteRow, selector: Option<&LabelSelector>) -> Result<Option<KeyValue>> {
    let labels = decode_labels(row.try_get("labels")?)?;
    if selector.is_some_and(|s| !s.matches(&labels)) {
        return Ok(None);
    }
    let value: &[u8] = row.try_get("value")?;
    Ok(Some(KeyValue {
        key: row.try_get("key")?,
        value: Bytes::copy_from_slice(value),
        labels,
        create_revision: row.try_get("create_rev")?,
        mod_revision: row.try_get("mod_rev")?,
    }))
}

/// Decodes an `events` row.
fn event_from_row(row: &SqliteRow) -> Result<Event> {
    let rev: i64 = row.try_get("rev")?;
    let kind = match row.try_get::<i64, _>("kind")? {
        KIND_PUT => EventKind::Put,
        KIND_DELETE => EventKind::Delete,
        k => return Err(Error::Corrupt(format!("event {rev} has unknown kind {k}"))),
    };
    let value: &[u8] = row.try_get("value")?;
    Ok(Event::new(
        rev,
        kind,
        KeyValue {
            key: row.try_get("key")?,
            value: Bytes::copy_from_slice(value),
            labels: decode_labels(row.try_get("labels")?)?,
            create_revision: row.try_get("create_rev")?,
            mod_revision: rev,
        },
    ))
}

fn encode_labels(labels: &Labels) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| Error::Corrupt(format!("cannot encode labels: {e}")))
}

fn decode_labels(json: &str) -> Result<Labels> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("bad labels json: {e}")))
}

/// Smallest string greater than every string starting with `prefix` (exclusive upper
/// bound of the prefix range in SQLite's byte-wise TEXT order, which is code point
/// order); `None` if there is none (empty prefix, or only `char::MAX`).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_the_prefix_range() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a"), Some("b".to_owned()));
        assert_eq!(prefix_end("apps/"), Some("apps0".to_owned()));
        assert_eq!(prefix_end("a\u{D7FF}"), Some("a\u{E000}".to_owned()));
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".to_owned()));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        for (p, inside) in [("ab", "ab\u{10FFFF}zz"), ("x/", "x/")] {
            let end = prefix_end(p).unwrap();
            assert!(inside >= p && inside < end.as_str());
        }
    }
}
