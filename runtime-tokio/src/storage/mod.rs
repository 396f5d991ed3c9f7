//! Storage: the node's durable control state, and the key/value [`Storage`] interface.
//!
//! * [`EmbeddedStore`] keeps users, clients, mappings and connection codes in one redb file (the
//!   single-node default, under `./data`), so a restart finds them again. The node emits every
//!   change as a [`tunnox_core::node::StateChange`]; the store applies them in order, each batch
//!   in one transaction, and [`EmbeddedStore::load`] rebuilds the [`ControlState`] a new node
//!   starts from.
//! * [`Storage`] is the key/value interface a cluster shares: [`MemoryStorage`] in memory,
//!   [`EmbeddedKv`] in a redb file, [`RedisStorage`] in Redis, [`RemoteStorage`] on a
//!   `tunnox storage-server` over gRPC ([`StorageServer`] is that server's service), and
//!   [`HybridStorage`], a Redis cache in front of any other [`Storage`] following the
//!   cache-aside rules of [`tunnox_core::storage`].

mod embedded;
mod embedded_kv;
mod error;
mod hybrid;
mod kv;
mod memory;
mod redis_cache;
mod redis_link;
mod redis_store;
pub mod remote;

pub use embedded::{EmbeddedStore, StoreWriter};
pub use embedded_kv::EmbeddedKv;
pub use error::StorageError;
pub use hybrid::{HybridStats, HybridStorage};
pub use kv::Storage;
pub use memory::MemoryStorage;
pub use redis_cache::RedisCache;
pub use redis_link::RedisConfig;
pub(crate) use redis_link::RedisLink;
pub use redis_store::RedisStorage;
pub use remote::auth::{AuthError, StorageToken};
pub use remote::{
    RemoteConfig, RemoteStorage, RemoteTls, ServeError, ServerTls, StorageServer,
    StorageServerConfig,
};
pub use tunnox_core::node::{ControlState, StateChange};
pub use tunnox_core::storage::{CacheEntry, CachePolicy, CacheStats, Versioned};
