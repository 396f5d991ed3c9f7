//! Durable storage of the node's control state.
//!
//! [`EmbeddedStore`] keeps users, clients, mappings and connection codes in one redb file (the
//! single-node default, under `./data`), so a restart finds them again. The node emits every
//! change as a [`tunnox_core::node::StateChange`]; the store applies them in order, each batch in
//! one transaction, and [`EmbeddedStore::load`] rebuilds the [`ControlState`] a new node starts
//! from.

mod embedded;

pub use embedded::{EmbeddedStore, StorageError};
pub use tunnox_core::node::{ControlState, StateChange};
