//! Why a storage operation failed.

use std::path::PathBuf;

/// Why a storage operation failed. Nothing is acknowledged on an error: a failed write either did
/// not happen or happened whole, and the caller must treat it as not done.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database file could not be opened or created.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        source: redb::DatabaseError,
    },
    /// A redb read or write failed.
    #[error("store operation failed: {0}")]
    Io(#[from] redb::Error),
    /// A stored value does not decode (corrupt, or written by an incompatible version).
    #[error("corrupt value in {table} at key {key}: {reason}")]
    Corrupt {
        /// Where: the redb table or the Redis keyspace.
        table: &'static str,
        /// The key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend cannot be reached (refused, dropped, or switched off).
    #[error("{backend} storage is unavailable: {reason}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The backend did not answer within the per-call deadline.
    #[error("{backend} storage did not answer {op} within {after_ms} ms")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// The operation.
        op: &'static str,
        /// The deadline.
        after_ms: u64,
    },
    /// `incr` of a value that is not a decimal `i64`, or that would overflow.
    #[error("the value at {key} is not an integer, or the increment overflows")]
    NotAnInteger {
        /// The key.
        key: String,
    },
    /// A value operation on a key that holds a list, or a list operation on one holding a value.
    #[error("the key {key} holds the other kind (a list where a value is expected, or back)")]
    WrongKind {
        /// The key.
        key: String,
    },
    /// The backend would not take the caller's credentials (none, wrong, or out of date).
    #[error("{backend} storage did not accept the credentials: {reason}")]
    Unauthenticated {
        /// Which backend.
        backend: &'static str,
        /// What it said.
        reason: String,
    },
    /// The request is not valid (an empty key, a value over the size limit, too many keys…).
    #[error("{backend} storage rejected an invalid request: {reason}")]
    Invalid {
        /// Which backend.
        backend: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The backend answered with an error of its own.
    #[error("{backend} storage refused the operation: {reason}")]
    Refused {
        /// Which backend.
        backend: &'static str,
        /// What it said.
        reason: String,
    },
}

impl StorageError {
    /// Whether the backend could not be reached at all (so a cache may answer degraded).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable { .. } | StorageError::Timeout { .. }
        )
    }
}
