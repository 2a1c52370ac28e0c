//! The writer task: sole owner of the write connection, group commit.
//!
//! Writers send a [`Msg`] with a oneshot reply. The task drains up to `max_batch`
//! pending messages and applies them in one `BEGIN IMMEDIATE` transaction, each
//! successful write taking the next revision. An op whose precondition fails gets its
//! error and writes nothing; the rest of the batch proceeds, and preconditions see the
//! effect of the earlier ops of the batch. After the single commit (fsync,
//! `synchronous=FULL`) every op gets its reply, then the events are published on the
//! broadcast channel. If any statement or the commit fails, the transaction is rolled
//! back, every op of the batch gets [`Error::BatchFailed`], nothing is published, and
//! the task carries on with the next batch.
//!
//! A batch costs two round trips to the SQLite worker thread, whatever its size:
//! `BEGIN IMMEDIATE` + one read of the current state of every key the batch touches;
//! then, after simulating the ops in Rust over that state, one multi-statement write of
//! all resulting rows (passed as one JSON array of row metadata plus one BLOB holding
//! all the values back to back), an optional compaction and `COMMIT`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{KIND_DELETE, KIND_PUT, decode_labels};
use crate::{Error, Event, EventKind, Expect, KeyValue, Labels, Result, Revision};

pub(super) enum Msg {
    Write(WriteOp, oneshot::Sender<Result<Arc<Event>>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
    /// Commit what was queued before, refuse the rest, close the connection, reply.
    Close(oneshot::Sender<()>),
}

pub(super) enum WriteOp {
    Create {
        key: String,
        value: Bytes,
        labels: Labels,
        /// Encoded by the caller's task to keep the writer loop lean.
        labels_json: String,
    },
    Update {
        key: String,
        value: Bytes,
        labels: Labels,
        labels_json: String,
        expect: Expect,
    },
    Delete {
        key: String,
        expect: Expect,
    },
}

impl WriteOp {
    fn key(&self) -> &str {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }
}

/// One message of the batch being applied, with its outcome.
enum Job {
    Write {
        op: Option<WriteOp>,
        reply: oneshot::Sender<Result<Arc<Event>>>,
        result: Option<Result<Arc<Event>>>,
        /// Labels of the event row, as stored JSON (set once the op succeeded).
        labels_json: String,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
        result: Option<Result<()>>,
    },
}

/// Where the current value of a key touched by the batch comes from.
enum Source {
    /// The database, as read at the start of the batch (value and labels only fetched
    /// for keys the batch deletes).
    Db {
        value: Option<Vec<u8>>,
        labels_json: Option<String>,
    },
    /// The successful write of the job at this index.
    Job(usize),
}

struct Current {
    create_rev: Revision,
    mod_rev: Revision,
    source: Source,
}

/// State of one key during the simulation of a batch.
struct KeyState {
    current: Option<Current>,
    /// Index of the last successful write to the key in this batch.
    last_job: Option<usize>,
    /// The batch deletes this key: fetch its value and labels.
    deleted: bool,
}

// SQL pieces, composed with `concat!` into the two statements a batch needs. Every
// parameter is an anonymous `?`, bound in order of appearance across the statements.

/// Starts the batch transaction and reads the state of the batch's keys.
/// `?`: JSON array of `[key, fetch_value]`.
macro_rules! begin_and_read_keys {
    () => {
        "BEGIN IMMEDIATE;
SELECT kv.key, kv.create_rev, kv.mod_rev,
       CASE WHEN j.value->>1 THEN kv.value END,
       CASE WHEN j.value->>1 THEN kv.labels END
FROM json_each(?) AS j CROSS JOIN kv ON kv.key = j.value->>0;"
    };
}

/// Writes the batch's events and the new values of keys it puts. Per statement, two
/// parameters: a BLOB holding every value of the batch back to back, then a JSON array
/// with one element per successful op in revision order: `[rev, key, kind,
/// value_offset (1-based), value_len, labels, create_rev, is_last_write_to_key]`.
macro_rules! write_rows {
    () => {
        "INSERT INTO events (rev, key, kind, value, labels, create_rev)
SELECT j.value->>0, j.value->>1, j.value->>2, substr(?, j.value->>3, j.value->>4),
       j.value->5, j.value->>6
FROM json_each(?) AS j;
INSERT INTO kv (key, value, labels, create_rev, mod_rev)
SELECT j.value->>1, substr(?, j.value->>3, j.value->>4), j.value->5, j.value->>6, j.value->>0
FROM json_each(?) AS j WHERE j.value->>7 = 1 AND j.value->>2 = 0
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, labels = excluded.labels,
    create_rev = excluded.create_rev, mod_rev = excluded.mod_rev;"
    };
}

/// Removes the keys the batch deletes last. `?`: the same JSON array.
macro_rules! delete_rows {
    () => {
        "DELETE FROM kv WHERE key IN (
    SELECT j.value->>1 FROM json_each(?) AS j WHERE j.value->>7 = 1 AND j.value->>2 = 1);"
    };
}

/// `?`: the new current revision.
macro_rules! set_current {
    () => {
        "UPDATE meta SET v = ? WHERE k = 'current_rev';"
    };
}

/// `?` ×2: the new compacted revision.
macro_rules! compact {
    () => {
        "DELETE FROM events WHERE rev <= ?;
UPDATE meta SET v = ? WHERE k = 'compacted_rev';"
    };
}

const BEGIN: &str = "BEGIN IMMEDIATE;";
const BEGIN_AND_READ_KEYS: &str = begin_and_read_keys!();
const ROLLBACK: &str = "ROLLBACK;";

/// The statement that ends a batch, by (writes, deletes, compacts).
fn finish_sql(writes: bool, deletes: bool, compacts: bool) -> &'static str {
    match (writes, deletes, compacts) {
        (true, false, false) => concat!(write_rows!(), set_current!(), "COMMIT;"),
        (true, true, false) => concat!(write_rows!(), delete_rows!(), set_current!(), "COMMIT;"),
        (true, false, true) => concat!(write_rows!(), set_current!(), compact!(), "COMMIT;"),
        (true, true, true) => concat!(
            write_rows!(),
            delete_rows!(),
            set_current!(),
            compact!(),
            "COMMIT;"
        ),
        (false, _, true) => concat!(compact!(), "COMMIT;"),
        (false, _, false) => "COMMIT;",
    }
}

pub(super) struct Writer {
    conn: SqliteConnection,
    rx: mpsc::Receiver<Msg>,
    events: broadcast::Sender<Arc<Event>>,
    /// Revision of the last committed write.
    current: Revision,
    compacted: Revision,
    max_batch: usize,
    /// Reused per-batch buffers.
    keys: HashMap<String, KeyState>,
    json: String,
    blob: Vec<u8>,
}

impl Writer {
    pub(super) fn new(
        conn: SqliteConnection,
        rx: mpsc::Receiver<Msg>,
        events: broadcast::Sender<Arc<Event>>,
        current: Revision,
        compacted: Revision,
        max_batch: usize,
    ) -> Self {
        Self {
            conn,
            rx,
            events,
            current,
            compacted,
            max_batch,
            keys: HashMap::new(),
            json: String::new(),
            blob: Vec::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        let mut publish = Vec::with_capacity(self.max_batch);
        let mut close_reply = None;
        // A message that did not fit in the previous batch's byte budget.
        let mut carry: Option<Msg> = None;
        while close_reply.is_none() {
            let first = match carry.take() {
                Some(msg) => msg,
                None => match self.rx.recv().await {
                    Some(msg) => msg,
                    None => break, // every sender dropped: the store was dropped without close()
                },
            };
            let mut bytes = msg_bytes(&first);
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Close(reply) => {
                        // Later messages are refused below, once the batch is done.
                        close_reply = Some(reply);
                        break;
                    }
                    Msg::Write(op, reply) => jobs.push(Job::Write {
                        op: Some(op),
                        reply,
                        result: None,
                        labels_json: String::new(),
                    }),
                    Msg::Compact(revision, reply) => jobs.push(Job::Compact {
                        revision,
                        reply,
                        result: None,
                    }),
                }
                if jobs.len() >= self.max_batch {
                    break;
                }
                if let Ok(msg) = self.rx.try_recv() {
                    let size = msg_bytes(&msg);
                    if bytes + size > MAX_BATCH_BYTES && !jobs.is_empty() {
                        carry = Some(msg);
                        break;
                    }
                    bytes += size;
                    next = Some(msg);
                }
            }
            if !jobs.is_empty() {
                self.run_batch(&mut jobs, &mut publish).await;
                // Before draining the next batch, let the writers just answered run and
                // queue their next write, for as long as the queue keeps growing (a
                // single yield when idle). Under load this makes batches hold every
                // concurrent writer instead of alternating half-size cohorts.
                let mut queued = self.rx.len();
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                    let now = self.rx.len();
                    if now == queued || now >= self.max_batch {
                        break;
                    }
                    queued = now;
                }
            }
        }
        // Refuse whatever is still queued; senders waiting on a full queue fail too.
        if let Some(msg) = carry {
            refuse(msg);
        }
        self.rx.close();
        while let Some(msg) = self.rx.recv().await {
            refuse(msg);
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the sqlite write connection failed");
        }
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    async fn run_batch(&mut self, jobs: &mut Vec<Job>, publish: &mut Vec<Arc<Event>>) {
        match self.apply(jobs).await {
            Ok((current, compacted)) => {
                self.current = current;
                self.compacted = compacted;
            }
            Err(e) => {
                tracing::error!(error = %e, ops = jobs.len(), "sqlite write batch failed");
                let msg = e.to_string();
                for job in jobs.iter_mut() {
                    match job {
                        Job::Write { result, .. } => {
                            *result = Some(Err(Error::BatchFailed(msg.clone())));
                        }
                        Job::Compact { result, .. } => {
                            *result = Some(Err(Error::BatchFailed(msg.clone())));
                        }
                    }
                }
            }
        }
        // Committed (or rolled back): reply to everyone, then publish.
        for job in jobs.drain(..) {
            match job {
                Job::Write { reply, result, .. } => {
                    let result = result.unwrap_or_else(|| {
                        Err(Error::BatchFailed("write was not applied".to_owned()))
                    });
                    if let Ok(ev) = &result {
                        publish.push(ev.clone());
                    }
                    // Err: the caller went away; the write stands regardless.
                    let _ = reply.send(result);
                }
                Job::Compact { reply, result, .. } => {
                    let _ = reply.send(result.unwrap_or(Ok(())));
                }
            }
        }
        for ev in publish.drain(..) {
            // Err only means nobody is watching right now.
            let _ = self.events.send(ev);
        }
    }

    /// Applies the batch in one transaction, in two round trips to the SQLite thread
    /// (`BEGIN` + read, then writes + `COMMIT`); returns the new `(current, compacted)`
    /// revisions once committed. Per-op outcomes are left in the jobs. `Err` means the
    /// whole batch was rolled back.
    async fn apply(&mut self, jobs: &mut [Job]) -> Result<(Revision, Revision)> {
        let Self {
            conn,
            keys,
            json,
            blob,
            current: committed,
            compacted: committed_compacted,
            ..
        } = self;
        let outcome = async {
            begin_and_read_keys(conn, jobs, keys, json).await?;
            let (current, compacted) = simulate(jobs, keys, *committed, *committed_compacted);
            let writes = current != *committed;
            let compacts = compacted != *committed_compacted;
            let deletes = writes
                && jobs.iter().any(|job| {
                    matches!(job, Job::Write { result: Some(Ok(ev)), .. }
                        if ev.kind == EventKind::Delete)
                });
            let mut query = sqlx::query(finish_sql(writes, deletes, compacts));
            if writes {
                encode_writes(jobs, keys, json, blob);
                query = query
                    .bind(blob.as_slice())
                    .bind(json.as_str())
                    .bind(blob.as_slice())
                    .bind(json.as_str());
                if deletes {
                    query = query.bind(json.as_str());
                }
                query = query.bind(current);
            }
            if compacts {
                query = query.bind(compacted).bind(compacted);
            }
            query.execute(&mut *conn).await?;
            Ok::<_, Error>((current, compacted))
        }
        .await;
        keys.clear();
        if outcome.is_err() {
            // Fails harmlessly if the transaction never started or already ended.
            if let Err(e) = sqlx::query(ROLLBACK).execute(&mut *conn).await {
                tracing::debug!(error = %e, "rollback after a failed write batch");
            }
        }
        outcome
    }
}

/// Soft limit on the value bytes of one batch, well below SQLite's maximum BLOB
/// length for the batch's value parameter (a single larger write still goes alone).
const MAX_BATCH_BYTES: usize = 32 << 20;

fn msg_bytes(msg: &Msg) -> usize {
    match msg {
        Msg::Write(WriteOp::Create { value, key, .. } | WriteOp::Update { value, key, .. }, _) => {
            value.len() + key.len()
        }
        Msg::Write(WriteOp::Delete { key, .. }, _) => key.len(),
        Msg::Compact(..) | Msg::Close(_) => 0,
    }
}

fn refuse(msg: Msg) {
    match msg {
        Msg::Write(_, reply) => {
            let _ = reply.send(Err(Error::Closed));
        }
        Msg::Compact(_, reply) => {
            let _ = reply.send(Err(Error::Closed));
        }
        Msg::Close(reply) => {
            let _ = reply.send(());
        }
    }
}

/// Begins the batch transaction and fills `keys` with the committed state of every
/// key the batch writes.
async fn begin_and_read_keys(
    conn: &mut SqliteConnection,
    jobs: &[Job],
    keys: &mut HashMap<String, KeyState>,
    json: &mut String,
) -> Result<()> {
    for job in jobs {
        if let Job::Write { op: Some(op), .. } = job {
            let deleted = matches!(op, WriteOp::Delete { .. });
            match keys.entry(op.key().to_owned()) {
                Entry::Occupied(mut e) => e.get_mut().deleted |= deleted,
                Entry::Vacant(e) => {
                    e.insert(KeyState {
                        current: None,
                        last_job: None,
                        deleted,
                    });
                }
            }
        }
    }
    if keys.is_empty() {
        sqlx::query(BEGIN).execute(&mut *conn).await?;
        return Ok(());
    }
    json.clear();
    json.push('[');
    for (i, (key, state)) in keys.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('[');
        push_json_str(json, key);
        json.push_str(if state.deleted { ",1]" } else { ",0]" });
    }
    json.push(']');
    let mut rows = sqlx::query_as::<_, (String, i64, i64, Option<Vec<u8>>, Option<String>)>(
        BEGIN_AND_READ_KEYS,
    )
    .bind(json.as_str())
    .fetch(&mut *conn);
    while let Some((key, create_rev, mod_rev, value, labels_json)) = rows.try_next().await? {
        if let Some(state) = keys.get_mut(&key) {
            state.current = Some(Current {
                create_rev,
                mod_rev,
                source: Source::Db { value, labels_json },
            });
        }
    }
    Ok(())
}

/// Runs the ops in order over `keys`, assigning revisions to the successful ones and
/// leaving each op's outcome in its job. Returns the new `(current, compacted)`.
fn simulate(
    jobs: &mut [Job],
    keys: &mut HashMap<String, KeyState>,
    mut current: Revision,
    mut compacted: Revision,
) -> (Revision, Revision) {
    for i in 0..jobs.len() {
        let op = match &mut jobs[i] {
            Job::Compact {
                revision, result, ..
            } => {
                // Events of this batch are inserted before the compaction runs, so
                // compacting over them is fine.
                compacted = compacted.max((*revision).min(current));
                *result = Some(Ok(()));
                continue;
            }
            Job::Write { op, .. } => match op.take() {
                Some(op) => op,
                None => continue,
            },
        };
        let rev = current + 1;
        let outcome = apply_op(jobs, keys, op, rev, i);
        if outcome.is_ok() {
            current = rev;
        }
        if let Job::Write {
            result,
            labels_json,
            ..
        } = &mut jobs[i]
        {
            *result = Some(outcome.map(|(ev, json)| {
                *labels_json = json;
                Arc::new(ev)
            }));
        }
    }
    (current, compacted)
}

/// Applies one op (job `i`) to the simulated state at revision `rev`. Returns the
/// event and its labels JSON, or the op's error (then the state is unchanged).
fn apply_op(
    jobs: &[Job],
    keys: &mut HashMap<String, KeyState>,
    op: WriteOp,
    rev: Revision,
    i: usize,
) -> Result<(Event, String)> {
    let Some(state) = keys.get_mut(op.key()) else {
        return Err(Error::Corrupt(format!(
            "key {:?} missing from batch state",
            op.key()
        )));
    };
    match op {
        WriteOp::Create {
            key,
            value,
            labels,
            labels_json,
        } => {
            if state.current.is_some() {
                return Err(Error::AlreadyExists { key });
            }
            state.current = Some(Current {
                create_rev: rev,
                mod_rev: rev,
                source: Source::Job(i),
            });
            state.last_job = Some(i);
            let kv = KeyValue {
                key,
                value,
                labels,
                create_revision: rev,
                mod_revision: rev,
            };
            Ok((Event::new(rev, EventKind::Put, kv), labels_json))
        }
        WriteOp::Update {
            key,
            value,
            labels,
            labels_json,
            expect,
        } => {
            let Some(cur) = &mut state.current else {
                return Err(Error::NotFound { key });
            };
            check(&key, cur, expect)?;
            cur.mod_rev = rev;
            cur.source = Source::Job(i);
            state.last_job = Some(i);
            let kv = KeyValue {
                key,
                value,
                labels,
                create_revision: cur.create_rev,
                mod_revision: rev,
            };
            Ok((Event::new(rev, EventKind::Put, kv), labels_json))
        }
        WriteOp::Delete { key, expect } => {
            let Some(cur) = &mut state.current else {
                return Err(Error::NotFound { key });
            };
            check(&key, cur, expect)?;
            let (value, labels, labels_json) = match &mut cur.source {
                Source::Db {
                    value: Some(value),
                    labels_json: Some(labels_json),
                } => {
                    let labels = decode_labels(labels_json)?;
                    (
                        Bytes::from(std::mem::take(value)),
                        labels,
                        std::mem::take(labels_json),
                    )
                }
                Source::Db { .. } => {
                    return Err(Error::Corrupt(format!(
                        "value of deleted key {key:?} was not read"
                    )));
                }
                Source::Job(j) => match &jobs[*j] {
                    Job::Write {
                        result: Some(Ok(ev)),
                        labels_json,
                        ..
                    } => (
                        ev.kv.value.clone(),
                        ev.kv.labels.clone(),
                        labels_json.clone(),
                    ),
                    _ => {
                        return Err(Error::Corrupt(format!(
                            "earlier write of key {key:?} in this batch is missing"
                        )));
                    }
                },
            };
            let create_revision = cur.create_rev;
            state.current = None;
            state.last_job = Some(i);
            let kv = KeyValue {
                key,
                value,
                labels,
                create_revision,
                mod_revision: rev,
            };
            Ok((Event::new(rev, EventKind::Delete, kv), labels_json))
        }
    }
}

fn check(key: &str, cur: &Current, expect: Expect) -> Result<()> {
    match expect {
        Expect::ModRevision(expected) if expected != cur.mod_rev => Err(Error::Conflict {
            key: key.to_owned(),
            expected,
            current: cur.mod_rev,
        }),
        _ => Ok(()),
    }
}

/// Encodes the successful writes of the batch as the value BLOB and the JSON array of
/// [`write_rows!`].
fn encode_writes(
    jobs: &[Job],
    keys: &HashMap<String, KeyState>,
    json: &mut String,
    blob: &mut Vec<u8>,
) {
    json.clear();
    blob.clear();
    json.push('[');
    let mut first = true;
    for (i, job) in jobs.iter().enumerate() {
        let Job::Write {
            result: Some(Ok(ev)),
            labels_json,
            ..
        } = job
        else {
            continue;
        };
        if !first {
            json.push(',');
        }
        first = false;
        let kind = match ev.kind {
            EventKind::Put => KIND_PUT,
            EventKind::Delete => KIND_DELETE,
        };
        let last = keys.get(&ev.kv.key).is_some_and(|s| s.last_job == Some(i));
        json.push('[');
        push_int(json, ev.revision);
        json.push(',');
        push_json_str(json, &ev.kv.key);
        json.push(',');
        push_int(json, kind);
        json.push(',');
        push_int(json, blob.len() as i64 + 1);
        json.push(',');
        push_int(json, ev.kv.value.len() as i64);
        json.push(',');
        json.push_str(labels_json);
        json.push(',');
        push_int(json, ev.kv.create_revision);
        json.push_str(if last { ",1]" } else { ",0]" });
        blob.extend_from_slice(&ev.kv.value);
    }
    json.push(']');
    // Never bind an empty BLOB: substr() of it must still yield empty BLOBs, not NULL.
    blob.push(0);
}

fn push_int(out: &mut String, n: i64) {
    use std::fmt::Write;
    let _ = write!(out, "{n}");
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::push_json_str;

    #[test]
    fn json_string_escaping() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\u000a\u0001é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}é");
    }
}
