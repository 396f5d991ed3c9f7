//! tunnox-core: the sans-IO heart of tunnox.
//!
//! Every protocol and piece of distributed logic lives here as a deterministic state machine:
//! inputs are method calls that carry `now`, outputs are pulled (`poll_transmit`, `poll_event`,
//! `poll_timeout`), randomness comes from a seeded [`rng::Rng`]. Nothing here reads a clock, opens
//! a socket, spawns a thread or asks the OS for randomness; `tests/purity.rs` enforces it.

pub mod agent;
pub mod broker;
pub mod cluster;
pub mod control;
pub mod digest;
pub mod fuzzing;
pub mod hex;
pub mod mux;
pub mod node;
pub mod planted;
pub mod ratelimit;
pub mod relay;
pub mod rng;
pub mod session;
pub mod storage;
pub mod time;
pub mod tunnel;
pub mod wire;
