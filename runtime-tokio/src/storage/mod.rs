//! Storage: the node's durable control state, and the key/value [`Storage`] interface.
//!
//! * [`EmbeddedStore`] keeps users, clients, mappings and connection codes in one redb file (the
//!   single-node default, under `./data`), so a restart finds them again. The node emits every
//!   change as a [`tunnox_core::node::StateChange`]; the store applies them in order, each batch
//!   in one transaction, and [`EmbeddedStore::load`] rebuilds the [`ControlState`] a new node
//!   starts from.
//! * [`Storage`] is the key/value interface a cluster shares: [`MemoryStorage`] in memory,
//!   [`RedisStorage`] in Redis.

mod embedded;
mod error;
mod kv;
mod memory;
mod redis_link;
mod redis_store;

pub use embedded::EmbeddedStore;
pub use error::StorageError;
pub use kv::Storage;
pub use memory::MemoryStorage;
pub use redis_link::RedisConfig;
pub use redis_store::RedisStorage;
pub use tunnox_core::node::{ControlState, StateChange};
pub use tunnox_core::storage::Versioned;
