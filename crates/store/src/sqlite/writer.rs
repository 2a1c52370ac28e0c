//! The writer task: sole owner of the write connection, group commit.
//!
//! Writers send a [`Msg`] with a oneshot reply. The task drains up to `max_batch`
//! pending messages and applies them in one `BEGIN IMMEDIATE` transaction, each
//! successful write taking the next revision. An op whose precondition fails gets its
//! error and writes nothing; the rest of the batch proceeds (preconditions see the
//! earlier ops of the batch, since they run in the same transaction). After the single
//! commit (fsync, `synchronous=FULL`) every op gets its reply, then the events are
//! published on the broadcast channel. If any statement or the commit fails, the
//! transaction is rolled back, every op of the batch gets [`Error::BatchFailed`], nothing
//! is published, and the task carries on with the next batch.

use std::sync::Arc;

use bytes::Bytes;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{KIND_DELETE, decode_labels};
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

/// One message of the batch being applied, with its outcome.
enum Job {
    Write {
        op: Option<WriteOp>,
        reply: oneshot::Sender<Result<Arc<Event>>>,
        result: Option<Result<Arc<Event>>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
        result: Option<Result<()>>,
    },
}

pub(super) struct Writer {
    conn: SqliteConnection,
    rx: mpsc::Receiver<Msg>,
    events: broadcast::Sender<Arc<Event>>,
    /// Revision of the last committed write.
    current: Revision,
    compacted: Revision,
    max_batch: usize,
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
        }
    }

    pub(super) async fn run(mut self) {
        let mut msgs = Vec::with_capacity(self.max_batch);
        let mut jobs = Vec::with_capacity(self.max_batch);
        let mut publish = Vec::with_capacity(self.max_batch);
        let mut close_reply = None;
        while close_reply.is_none() {
            if self.rx.recv_many(&mut msgs, self.max_batch).await == 0 {
                break; // every sender dropped: the store was dropped without close()
            }
            for msg in msgs.drain(..) {
                match msg {
                    _ if close_reply.is_some() => refuse(msg),
                    Msg::Close(reply) => close_reply = Some(reply),
                    Msg::Write(op, reply) => jobs.push(Job::Write {
                        op: Some(op),
                        reply,
                        result: None,
                    }),
                    Msg::Compact(revision, reply) => jobs.push(Job::Compact {
                        revision,
                        reply,
                        result: None,
                    }),
                }
            }
            if !jobs.is_empty() {
                self.run_batch(&mut jobs, &mut publish).await;
            }
        }
        // Refuse whatever is still queued; senders blocked on a full queue fail too.
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
                    let result = result
                        .unwrap_or(Err(Error::BatchFailed("write was not applied".to_owned())));
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

    /// Applies the batch in one transaction; returns the new `(current, compacted)`
    /// revisions once committed. Per-op outcomes are left in the jobs. `Err` means the
    /// whole batch was rolled back.
    async fn apply(&mut self, jobs: &mut [Job]) -> Result<(Revision, Revision)> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let committed = self.current;
        let mut current = committed;
        let mut compacted = self.compacted;
        let outcome: Result<()> = async {
            for job in jobs.iter_mut() {
                match job {
                    Job::Write { op, result, .. } => {
                        let Some(op) = op.take() else { continue };
                        let applied = apply_op(&mut tx, op, current + 1).await?;
                        if applied.is_ok() {
                            current += 1;
                        }
                        *result = Some(applied.map(Arc::new));
                    }
                    Job::Compact {
                        revision, result, ..
                    } => {
                        let target = (*revision).min(current);
                        if target > compacted {
                            sqlx::query("DELETE FROM events WHERE rev <= ?1")
                                .bind(target)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query("UPDATE meta SET v = ?1 WHERE k = 'compacted_rev'")
                                .bind(target)
                                .execute(&mut *tx)
                                .await?;
                            compacted = target;
                        }
                        *result = Some(Ok(()));
                    }
                }
            }
            if current != committed {
                sqlx::query("UPDATE meta SET v = ?1 WHERE k = 'current_rev'")
                    .bind(current)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                tx.commit().await?;
                Ok((current, compacted))
            }
            Err(e) => {
                if let Err(rb) = tx.rollback().await {
                    tracing::warn!(error = %rb, "rollback of a failed write batch failed");
                }
                Err(e)
            }
        }
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

/// Applies one write at revision `rev` inside the batch transaction. Outer `Err`: the
/// batch must be rolled back; inner `Err`: this op's precondition failed and it wrote
/// nothing.
async fn apply_op(
    conn: &mut SqliteConnection,
    op: WriteOp,
    rev: Revision,
) -> Result<Result<Event>> {
    match op {
        WriteOp::Create {
            key,
            value,
            labels,
            labels_json,
        } => {
            // The `kv_insert_event` trigger records the event.
            let done = sqlx::query(
                "INSERT INTO kv (key, value, labels, create_rev, mod_rev) \
                 VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(&value[..])
            .bind(labels_json.as_str())
            .bind(rev)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(Err(Error::AlreadyExists { key }));
            }
            Ok(Ok(Event::new(
                rev,
                EventKind::Put,
                KeyValue {
                    key,
                    value,
                    labels,
                    create_revision: rev,
                    mod_revision: rev,
                },
            )))
        }
        WriteOp::Update {
            key,
            value,
            labels,
            labels_json,
            expect,
        } => {
            // The `kv_update_event` trigger records the event.
            let create_rev: Option<i64> = sqlx::query_scalar(
                "UPDATE kv SET value = ?2, labels = ?3, mod_rev = ?4 \
                 WHERE key = ?1 AND (?5 IS NULL OR mod_rev = ?5) RETURNING create_rev",
            )
            .bind(key.as_str())
            .bind(&value[..])
            .bind(labels_json.as_str())
            .bind(rev)
            .bind(expected(expect))
            .fetch_optional(&mut *conn)
            .await?;
            match create_rev {
                Some(create_revision) => Ok(Ok(Event::new(
                    rev,
                    EventKind::Put,
                    KeyValue {
                        key,
                        value,
                        labels,
                        create_revision,
                        mod_revision: rev,
                    },
                ))),
                None => Ok(Err(precondition_error(conn, key, expect).await?)),
            }
        }
        WriteOp::Delete { key, expect } => {
            let row: Option<(Vec<u8>, String, i64)> = sqlx::query_as(
                "DELETE FROM kv WHERE key = ?1 AND (?2 IS NULL OR mod_rev = ?2) \
                 RETURNING value, labels, create_rev",
            )
            .bind(key.as_str())
            .bind(expected(expect))
            .fetch_optional(&mut *conn)
            .await?;
            let Some((value, labels_json, create_revision)) = row else {
                return Ok(Err(precondition_error(conn, key, expect).await?));
            };
            // Corrupt labels fail the batch (the row is already deleted in this
            // transaction, so the op cannot be skipped on its own).
            let labels = decode_labels(&labels_json)?;
            sqlx::query(
                "INSERT INTO events (rev, key, kind, value, labels, create_rev) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(rev)
            .bind(key.as_str())
            .bind(KIND_DELETE)
            .bind(value.as_slice())
            .bind(labels_json.as_str())
            .bind(create_revision)
            .execute(&mut *conn)
            .await?;
            Ok(Ok(Event::new(
                rev,
                EventKind::Delete,
                KeyValue {
                    key,
                    value: Bytes::from(value),
                    labels,
                    create_revision,
                    mod_revision: rev,
                },
            )))
        }
    }
}

fn expected(expect: Expect) -> Option<Revision> {
    match expect {
        Expect::Any => None,
        Expect::ModRevision(r) => Some(r),
    }
}

/// Why a conditional update/delete matched no row: the key is missing, or its
/// `mod_revision` differs from the expected one.
async fn precondition_error(
    conn: &mut SqliteConnection,
    key: String,
    expect: Expect,
) -> Result<Error> {
    let current: Option<i64> = sqlx::query_scalar("SELECT mod_rev FROM kv WHERE key = ?1")
        .bind(key.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match (current, expect) {
        (Some(current), Expect::ModRevision(expected)) => Error::Conflict {
            key,
            expected,
            current,
        },
        // Expect::Any with a present key cannot miss; treat as not found defensively.
        _ => Error::NotFound { key },
    })
}
