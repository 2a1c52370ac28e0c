//! The disk-backed store-and-forward queue for edge→cloud traffic (status, results,
//! logs): a FIFO in its own redb file, bounded by bytes and by age. Drops are counted,
//! never silent.
//!
//! # Rules
//!
//! - Items are `(seq, channel, payload, enqueued_at_ms)`; `seq` increases by one per
//!   accepted item and is never reused (it survives restarts).
//! - Size: the sum of pending payload bytes stays ≤ `max_bytes` (default 64 MiB).
//!   [`Queue::push`] makes room by dropping the **oldest** items (the newest status is
//!   worth more than an old one). An item larger than `max_bytes` on its own is refused
//!   with [`Error::QueueFull`], and counted as dropped.
//! - Age: an item is expired once `now_ms - enqueued_at_ms >= ttl` (default 24 h).
//!   Expired items are removed and counted as dropped: at the head on every push,
//!   wherever [`Queue::peek`] walks past them, and everywhere by [`Queue::expire`].
//! - Delivery: [`Queue::peek`] returns the oldest live items in order without removing
//!   them; the uplink publishes them in order and then [`Queue::ack`]s the last
//!   delivered `seq`, which removes every item up to and including it (acking a prefix;
//!   acking an already removed `seq` is a no-op). Delivery is at-least-once; receivers
//!   de-duplicate by `seq`.
//! - Time is a parameter (`now_ms`), so tests control the clock.
//!
//! # Durability and disk errors
//!
//! Every change is one redb write transaction, committed durably (fsynced) — an item
//! `push` returned `Ok` for survives a crash; so do the drop counters. The methods block
//! (disk I/O): call them from `spawn_blocking` in async code.
//!
//! When the disk is full (`ENOSPC`) or any other I/O error happens, redb fails the
//! transaction with an I/O error, which is returned (`Error::Db`): nothing of that
//! transaction is written. A `push` that fails so has lost its item: it is counted as
//! dropped in memory (the disk cannot take the counter either), so [`Queue::stats`]
//! shows it and the caller need not count it again. These in-memory counts are lost on
//! restart. After an I/O error redb refuses every later operation on that handle, so
//! the queue drops it and reopens the file on the next call: once space is free again
//! the queue works again, with everything committed before the error intact.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use verge_proto::{Channel, QueueStats};

use crate::error::{Error, Result, db_open_err};
use crate::fsutil;

const ITEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("items");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQ: &str = "next_seq";
const PENDING_BYTES: &str = "pending_bytes";
const PENDING_ITEMS: &str = "pending_items";
const DROPPED_ITEMS: &str = "dropped_items";
const DROPPED_BYTES: &str = "dropped_bytes";

/// Default byte bound: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default TTL: 24 h.
pub const DEFAULT_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Bounds of a [`Queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most pending payload bytes.
    pub max_bytes: u64,
    /// How long an item may wait, in milliseconds.
    pub ttl_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            ttl_ms: DEFAULT_TTL_MS,
        }
    }
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedItem {
    pub seq: u64,
    pub channel: Channel,
    pub payload: Vec<u8>,
    pub enqueued_at_ms: i64,
}

type Opener = Box<dyn Fn() -> Result<Database> + Send + Sync>;

struct Inner {
    /// `None` after an I/O error: reopened on the next call.
    db: Mutex<Option<Database>>,
    open: Opener,
    config: QueueConfig,
    /// Items lost to failed writes (not persisted: see the module docs).
    failed_items: AtomicU64,
    failed_bytes: AtomicU64,
}

/// The store-and-forward queue; a cheap clone (shared handle).
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The persisted counters, read and written within one transaction.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    next_seq: u64,
    pending_bytes: u64,
    pending_items: u64,
    dropped_items: u64,
    dropped_bytes: u64,
}

impl Counters {
    fn read(meta: &impl ReadableTable<&'static str, u64>) -> Result<Self> {
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map(|g| g.value()).unwrap_or(0)) };
        Ok(Self {
            next_seq: get(NEXT_SEQ)?.max(1),
            pending_bytes: get(PENDING_BYTES)?,
            pending_items: get(PENDING_ITEMS)?,
            dropped_items: get(DROPPED_ITEMS)?,
            dropped_bytes: get(DROPPED_BYTES)?,
        })
    }

    fn write(&self, meta: &mut redb::Table<&'static str, u64>) -> Result<()> {
        meta.insert(NEXT_SEQ, self.next_seq)?;
        meta.insert(PENDING_BYTES, self.pending_bytes)?;
        meta.insert(PENDING_ITEMS, self.pending_items)?;
        meta.insert(DROPPED_ITEMS, self.dropped_items)?;
        meta.insert(DROPPED_BYTES, self.dropped_bytes)?;
        Ok(())
    }

    fn remove(&mut self, size: u64) {
        self.pending_items = self.pending_items.saturating_sub(1);
        self.pending_bytes = self.pending_bytes.saturating_sub(size);
    }

    fn drop_item(&mut self, size: u64) {
        self.remove(size);
        self.dropped_items += 1;
        self.dropped_bytes += size;
    }
}

/// Value layout: `enqueued_at_ms` (i64 LE) · channel name length (u8) · channel name ·
/// payload. The channel is stored by name so a reordered enum never misreads old data.
fn encode_item(channel: Channel, payload: &[u8], enqueued_at_ms: i64) -> Vec<u8> {
    let name = channel.as_str().as_bytes();
    let mut v = Vec::with_capacity(9 + name.len() + payload.len());
    v.extend_from_slice(&enqueued_at_ms.to_le_bytes());
    // Channel names are short ASCII words ("heartbeat" is the longest).
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(payload);
    v
}

/// `(enqueued_at_ms, channel, payload offset)`.
fn decode_header(seq: u64, v: &[u8]) -> Result<(i64, Channel, usize)> {
    let corrupt = |m: &str| Error::Corrupt {
        what: format!("queue item {seq}"),
        message: m.to_owned(),
    };
    let ts: [u8; 8] = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt("truncated"))?;
    let len = usize::from(*v.get(8).ok_or_else(|| corrupt("truncated"))?);
    let name = v.get(9..9 + len).ok_or_else(|| corrupt("truncated"))?;
    let name = std::str::from_utf8(name).map_err(|_| corrupt("channel is not UTF-8"))?;
    let channel = Channel::from_str(name).map_err(|e| corrupt(&e.to_string()))?;
    Ok((i64::from_le_bytes(ts), channel, 9 + len))
}

/// Payload size of a stored value.
fn payload_size(seq: u64, v: &[u8]) -> Result<u64> {
    let (_, _, off) = decode_header(seq, v)?;
    Ok((v.len() - off) as u64)
}

fn is_expired(enqueued_at_ms: i64, now_ms: i64, ttl_ms: u64) -> bool {
    let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
    now_ms.saturating_sub(enqueued_at_ms) >= ttl
}

/// Whether an error means redb's handle is unusable (an I/O error poisons it).
fn poisons_handle(e: &Error) -> bool {
    matches!(e, Error::Db(db) if matches!(**db, redb::Error::Io(_) | redb::Error::PreviousIo))
}

fn init_tables(db: &Database) -> Result<()> {
    let txn = db.begin_write()?;
    {
        txn.open_table(ITEMS)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    Ok(())
}

/// Removes expired items `(seq, payload bytes)` and counts them as dropped, inside the
/// caller's write transaction.
fn drop_expired(txn: &redb::WriteTransaction, expired: Vec<(u64, u64)>) -> Result<()> {
    let mut items = txn.open_table(ITEMS)?;
    let mut meta = txn.open_table(META)?;
    let mut c = Counters::read(&meta)?;
    for (seq, size) in expired {
        items.remove(seq)?;
        c.drop_item(size);
    }
    c.write(&mut meta)
}

impl Queue {
    /// Opens (or creates, mode 0600) the queue at `path`.
    pub fn open(path: &Path, config: QueueConfig) -> Result<Queue> {
        let path: PathBuf = path.to_path_buf();
        Self::with_opener(
            Box::new(move || {
                let file = fsutil::open_private_rw(&path)?;
                Database::builder()
                    .set_cache_size(crate::REDB_CACHE_BYTES)
                    .create_file(file)
                    .map_err(db_open_err(&path))
            }),
            config,
        )
    }

    fn with_opener(open: Opener, config: QueueConfig) -> Result<Queue> {
        let db = open()?;
        init_tables(&db)?;
        Ok(Queue {
            inner: Arc::new(Inner {
                db: Mutex::new(Some(db)),
                open,
                config,
                failed_items: AtomicU64::new(0),
                failed_bytes: AtomicU64::new(0),
            }),
        })
    }

    /// The bounds.
    pub fn config(&self) -> QueueConfig {
        self.inner.config
    }

    /// Runs `f` on the database, reopening it first if an earlier I/O error dropped it,
    /// and dropping it if `f` hits an I/O error.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let mut guard: MutexGuard<'_, Option<Database>> = self
            .inner
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            let db = (self.inner.open)()?;
            init_tables(&db)?;
            *guard = Some(db);
        }
        let Some(db) = guard.as_ref() else {
            return Err(Error::Invalid("queue database is not open".into()));
        };
        let out = f(db);
        if let Err(e) = &out
            && poisons_handle(e)
        {
            tracing::warn!(error = %e, "queue: I/O error; reopening the database on the next call");
            *guard = None;
        }
        out
    }

    /// Appends an item; returns its `seq`. Expired items at the head are removed and,
    /// if the item does not fit, the oldest items are dropped until it does (both
    /// counted). An item larger than `max_bytes` is refused with [`Error::QueueFull`]
    /// (counted as dropped). On an I/O error the item is lost and counted as dropped
    /// (in memory).
    pub fn push(&self, channel: Channel, payload: &[u8], now_ms: i64) -> Result<u64> {
        self.push_with(channel, now_ms, |_| payload.to_vec())
    }

    /// Like [`push`](Queue::push), with the payload built from the `seq` the item gets,
    /// in the same transaction: the way to give a message a per-node sequence number
    /// that is unique and increasing (task results carry it so the cloud can drop
    /// redeliveries). `build` is called once, inside the write transaction.
    pub fn push_with(
        &self,
        channel: Channel,
        now_ms: i64,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        let mut build = Some(build);
        let mut size = 0u64;
        let cfg = self.inner.config;
        let out = self.with_db(|db| {
            let txn = db.begin_write()?;
            let result;
            {
                let mut items = txn.open_table(ITEMS)?;
                let mut meta = txn.open_table(META)?;
                let mut c = Counters::read(&meta)?;
                let payload = match build.take() {
                    Some(b) => b(c.next_seq),
                    None => {
                        return Err(Error::Invalid(
                            "queue push retried after its payload was consumed".into(),
                        ));
                    }
                };
                size = payload.len() as u64;
                if size > cfg.max_bytes {
                    c.dropped_items += 1;
                    c.dropped_bytes += size;
                    result = Err(Error::QueueFull {
                        size,
                        max: cfg.max_bytes,
                    });
                } else {
                    // Expired head first, then the oldest until the item fits.
                    loop {
                        let head = match items.first()? {
                            Some((k, v)) => {
                                let seq = k.value();
                                let (ts, _, off) = decode_header(seq, v.value())?;
                                (seq, ts, (v.value().len() - off) as u64)
                            }
                            None => break,
                        };
                        let (seq, ts, sz) = head;
                        let expired = is_expired(ts, now_ms, cfg.ttl_ms);
                        if !expired && c.pending_bytes + size <= cfg.max_bytes {
                            break;
                        }
                        items.remove(seq)?;
                        c.drop_item(sz);
                    }
                    let seq = c.next_seq;
                    items.insert(seq, encode_item(channel, &payload, now_ms).as_slice())?;
                    c.next_seq += 1;
                    c.pending_items += 1;
                    c.pending_bytes += size;
                    result = Ok(seq);
                }
                c.write(&mut meta)?;
            }
            txn.commit()?;
            result
        });
        if let Err(e) = &out
            && !matches!(e, Error::QueueFull { .. })
        {
            self.inner.failed_items.fetch_add(1, Ordering::Relaxed);
            self.inner.failed_bytes.fetch_add(size, Ordering::Relaxed);
        }
        out
    }

    /// The oldest (at most `n`) live items, in order; not removed. Expired items met on
    /// the way are removed and counted as dropped.
    pub fn peek(&self, n: usize, now_ms: i64) -> Result<Vec<QueuedItem>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let ttl = self.inner.config.ttl_ms;
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut out = Vec::new();
            let mut expired = Vec::new();
            {
                let items = txn.open_table(ITEMS)?;
                for entry in items.iter()? {
                    let (k, v) = entry?;
                    let seq = k.value();
                    let v = v.value();
                    let (ts, channel, off) = decode_header(seq, v)?;
                    if is_expired(ts, now_ms, ttl) {
                        expired.push((seq, (v.len() - off) as u64));
                        continue;
                    }
                    out.push(QueuedItem {
                        seq,
                        channel,
                        payload: v[off..].to_vec(),
                        enqueued_at_ms: ts,
                    });
                    if out.len() == n {
                        break;
                    }
                }
            }
            if expired.is_empty() {
                // Nothing changed: no commit, no fsync.
                txn.abort()?;
                return Ok(out);
            }
            drop_expired(&txn, expired)?;
            txn.commit()?;
            Ok(out)
        })
    }

    /// Removes every item with `seq <= upto` (delivered: not counted as dropped);
    /// returns how many were removed.
    pub fn ack(&self, upto: u64) -> Result<u64> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let removed;
            {
                let mut items = txn.open_table(ITEMS)?;
                let mut sizes = Vec::new();
                for entry in items.extract_from_if(..=upto, |_, _| true)? {
                    let (k, v) = entry?;
                    sizes.push(payload_size(k.value(), v.value())?);
                }
                removed = sizes.len() as u64;
                if removed > 0 {
                    let mut meta = txn.open_table(META)?;
                    let mut c = Counters::read(&meta)?;
                    for size in sizes {
                        c.remove(size);
                    }
                    c.write(&mut meta)?;
                }
            }
            if removed == 0 {
                txn.abort()?;
            } else {
                txn.commit()?;
            }
            Ok(removed)
        })
    }

    /// Removes every expired item (counted as dropped); returns how many. Scans the
    /// whole queue: call it now and then (the uplink's flush loop), not per message.
    pub fn expire(&self, now_ms: i64) -> Result<u64> {
        let ttl = self.inner.config.ttl_ms;
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut expired = Vec::new();
            {
                let items = txn.open_table(ITEMS)?;
                for entry in items.iter()? {
                    let (k, v) = entry?;
                    let (ts, _, off) = decode_header(k.value(), v.value())?;
                    if is_expired(ts, now_ms, ttl) {
                        expired.push((k.value(), (v.value().len() - off) as u64));
                    }
                }
            }
            let n = expired.len() as u64;
            if n == 0 {
                txn.abort()?;
                return Ok(0);
            }
            drop_expired(&txn, expired)?;
            txn.commit()?;
            Ok(n)
        })
    }

    /// What is waiting and what was dropped (persisted counts plus the in-memory count
    /// of items lost to write errors).
    pub fn stats(&self) -> Result<QueueStats> {
        let c = self.with_db(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            Counters::read(&meta)
        })?;
        Ok(QueueStats {
            pending_bytes: c.pending_bytes,
            pending_items: c.pending_items,
            dropped_items: c.dropped_items + self.inner.failed_items.load(Ordering::Relaxed),
            dropped_bytes: c.dropped_bytes + self.inner.failed_bytes.load(Ordering::Relaxed),
        })
    }

    /// Number of stored items, counted from the table (a consistency check for tests
    /// and diagnostics; [`Queue::stats`] is the cheap way).
    pub fn count_items(&self) -> Result<u64> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(ITEMS)?.len()?)
        })
    }
}

#[cfg(test)]
mod tests;
