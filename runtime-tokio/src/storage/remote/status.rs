//! [`StorageError`] ↔ gRPC status, so a remote error arrives as the same typed error.
//!
//! Errors without a gRPC code of their own (`WrongKind`, `NotAnInteger`) travel as
//! `FailedPrecondition` with the metadata `x-tunnox-error` naming them; the key travels in
//! `x-tunnox-key-bin`.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::storage::StorageError;

/// Names the remote backend in errors.
pub(crate) const BACKEND: &str = "remote";
const ERROR_KIND: &str = "x-tunnox-error";
const ERROR_KEY: &str = "x-tunnox-key-bin";
const WRONG_KIND: &str = "wrong-kind";
const NOT_AN_INTEGER: &str = "not-an-integer";

/// The status the server answers for `error`.
pub(crate) fn to_status(error: &StorageError) -> Status {
    let mut metadata = MetadataMap::new();
    let mut tag = |kind: &'static str, key: &str| {
        metadata.insert(ERROR_KIND, MetadataValue::from_static(kind));
        metadata.insert_bin(ERROR_KEY, MetadataValue::from_bytes(key.as_bytes()));
    };
    let code = match error {
        StorageError::WrongKind { key } => {
            tag(WRONG_KIND, key);
            Code::FailedPrecondition
        }
        StorageError::NotAnInteger { key } => {
            tag(NOT_AN_INTEGER, key);
            Code::FailedPrecondition
        }
        StorageError::Corrupt { key, .. } => {
            metadata.insert_bin(ERROR_KEY, MetadataValue::from_bytes(key.as_bytes()));
            Code::DataLoss
        }
        StorageError::Unavailable { .. } => Code::Unavailable,
        StorageError::Timeout { .. } => Code::DeadlineExceeded,
        StorageError::Invalid { .. } => Code::InvalidArgument,
        StorageError::Unauthenticated { .. } => Code::Unauthenticated,
        StorageError::Open { .. } | StorageError::Io(_) | StorageError::Refused { .. } => {
            Code::Internal
        }
    };
    Status::with_metadata(code, error.to_string(), metadata)
}

/// The typed error for `status`, answered to operation `op` on `key`.
pub(crate) fn from_status(
    status: &Status,
    op: &'static str,
    key: &str,
    deadline_ms: u64,
) -> StorageError {
    let reason = status.message().to_owned();
    let key = status
        .metadata()
        .get_bin(ERROR_KEY)
        .and_then(|value| value.to_bytes().ok())
        .map_or_else(
            || key.to_owned(),
            |raw| String::from_utf8_lossy(&raw).into_owned(),
        );
    match status.code() {
        Code::Unauthenticated => StorageError::Unauthenticated {
            backend: BACKEND,
            reason,
        },
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
            StorageError::Invalid {
                backend: BACKEND,
                reason,
            }
        }
        Code::FailedPrecondition => {
            match status
                .metadata()
                .get(ERROR_KIND)
                .and_then(|v| v.to_str().ok())
            {
                Some(WRONG_KIND) => StorageError::WrongKind { key },
                Some(NOT_AN_INTEGER) => StorageError::NotAnInteger { key },
                _ => StorageError::Refused {
                    backend: BACKEND,
                    reason,
                },
            }
        }
        Code::DataLoss => StorageError::Corrupt {
            table: BACKEND,
            key,
            reason,
        },
        Code::DeadlineExceeded => StorageError::Timeout {
            backend: BACKEND,
            op,
            after_ms: deadline_ms,
        },
        // Unavailable: the server (or its store) cannot be reached. Cancelled and Unknown are what
        // a connection dropped mid-call turns into.
        Code::Unavailable | Code::Cancelled | Code::Unknown => StorageError::Unavailable {
            backend: BACKEND,
            reason,
        },
        _ => StorageError::Refused {
            backend: BACKEND,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_survive_the_round_trip() {
        let cases = [
            StorageError::WrongKind {
                key: "k\u{e9}\n".into(),
            },
            StorageError::NotAnInteger { key: "n".into() },
            StorageError::Invalid {
                backend: "x",
                reason: "empty key".into(),
            },
            StorageError::Unavailable {
                backend: "x",
                reason: "down".into(),
            },
        ];
        for error in cases {
            let back = from_status(&to_status(&error), "get", "fallback", 1000);
            match (&error, &back) {
                (StorageError::WrongKind { key: a }, StorageError::WrongKind { key: b })
                | (StorageError::NotAnInteger { key: a }, StorageError::NotAnInteger { key: b }) => {
                    assert_eq!(a, b);
                }
                (StorageError::Invalid { .. }, StorageError::Invalid { .. })
                | (StorageError::Unavailable { .. }, StorageError::Unavailable { .. }) => {}
                _ => panic!("{error:?} came back as {back:?}"),
            }
        }
        let timeout = StorageError::Timeout {
            backend: "x",
            op: "get",
            after_ms: 5,
        };
        assert!(from_status(&to_status(&timeout), "get", "k", 1000).is_unavailable());
    }
}
