//! Watch streams: history from the `events` table, then live events from the
//! broadcast channel, seamlessly.
//!
//! The subscription to the broadcast is taken before any history is read, so every
//! event is either in the table snapshot read or on the channel (events are published
//! after commit). `position` is the highest revision already accounted for (delivered,
//! or skipped because it is outside the prefix); anything at or below it is dropped,
//! which removes the overlap between history and the channel. On `Lagged`, the missed
//! range is read again from the table; if it was compacted meanwhile the stream yields
//! [`Error::Compacted`] and ends. The stream ends when the store closes.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::TryStreamExt;
use sqlx::SqlitePool;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{event_from_row, read_meta};
use crate::{Error, Event, Result, Revision, WatchStream};

/// Rows read from the events table per query.
const CHUNK: i64 = 1000;

pub(super) fn stream(
    pool: SqlitePool,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    after: Revision,
    needs_history: bool,
) -> WatchStream {
    let state = WatchState {
        pool,
        rx,
        prefix,
        position: after,
        pending: VecDeque::new(),
        catching_up: needs_history,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    }))
}

struct WatchState {
    pool: SqlitePool,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    /// Every event with a revision <= this has been delivered or skipped.
    position: Revision,
    /// History rows read but not yet yielded (all > the previous position).
    pending: VecDeque<Arc<Event>>,
    /// Reading from the table rather than the channel.
    catching_up: bool,
    done: bool,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            if self.catching_up {
                match self.read_chunk().await {
                    Ok(()) => continue,
                    Err(Error::Database(sqlx::Error::PoolClosed) | Error::Closed) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            match self.rx.recv().await {
                Ok(ev) => {
                    if ev.revision <= self.position {
                        continue; // already read from the table
                    }
                    self.position = ev.revision;
                    if ev.kv.key.starts_with(&self.prefix) {
                        return Some(Ok(ev));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, position = self.position, "watcher lagged");
                    self.catching_up = true;
                }
                Err(RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Reads the next chunk of history after `position` into `pending`, in one read
    /// transaction (one snapshot). Ends the catch-up once the snapshot is exhausted.
    async fn read_chunk(&mut self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let (current, compacted) = read_meta(&mut tx).await?;
        if compacted > self.position {
            return Err(Error::Compacted {
                requested: self.position,
                compacted,
            });
        }
        let mut read = 0;
        {
            let mut rows = sqlx::query(
                "SELECT rev, key, kind, value, labels, create_rev FROM events \
                 WHERE rev > ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY rev LIMIT ?3",
            )
            .bind(self.position)
            .bind(self.prefix.as_str())
            .bind(CHUNK)
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let ev = event_from_row(&row)?;
                read += 1;
                self.position = ev.revision;
                if ev.kv.key.starts_with(&self.prefix) {
                    self.pending.push_back(Arc::new(ev));
                }
            }
        }
        tx.commit().await?;
        if read < CHUNK {
            // Everything up to the snapshot's revision has been seen.
            self.position = self.position.max(current);
            self.catching_up = false;
        }
        Ok(())
    }
}
