//! The `StorageService` of `proto/storage.proto`: [`StorageServer`] serves any [`super::Storage`]
//! over gRPC, [`RemoteStorage`] is its client, and [`auth`] signs requests with a shared token
//! that never crosses the wire.

pub mod auth;
mod client;
mod server;
mod status;

use std::time::Duration;

pub use client::{RemoteConfig, RemoteStorage, RemoteTls};
pub use server::{ServeError, ServerTls, StorageServer, StorageServerConfig};

/// A TTL as the protocol carries it: milliseconds, at least 1; 0 for none.
fn ttl_to_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| {
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

/// A TTL from the protocol's milliseconds (0: none).
fn ttl_from_ms(ttl_ms: u64) -> Option<Duration> {
    (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms))
}
