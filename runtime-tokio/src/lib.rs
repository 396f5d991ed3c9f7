//! tunnox-runtime-tokio: drives `tunnox-core` state machines in production.
//!
//! Built so far: [`storage`], the embedded store that keeps a node's users, clients, mappings and
//! connection codes across restarts. The TCP/TLS transports and the node and client drivers come
//! with the single-node issue (#4); nothing here pretends to provide them yet.

pub mod storage;
