//! The store's error type, shared by every backend.

use crate::Revision;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified: expected revision {expected}, current {current}")]
    Conflict {
        key: String,
        expected: i64,
        current: i64,
    },
    #[error("revision {requested} has been compacted (oldest available after {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("store is closed")]
    Closed,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The group-commit batch this write belonged to failed as a whole (statement or
    /// commit error); nothing of the batch was written. Carries the underlying message.
    #[error("write batch failed: {0}")]
    BatchFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
