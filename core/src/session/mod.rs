//! Client and node session state machines.
//!
//! A session is one authenticated connection. The handshake is
//! `Hello → Challenge → Proof → Welcome` (or `Refused`): the client proves it holds its key with
//! an HMAC over a transcript bound to both sides' fresh nonces, so the secret never crosses the
//! wire and a recorded proof cannot be replayed; the node proves the same in Welcome. A new
//! client may instead ask to register and gets credentials once if the node's policy allows.
//! Once established, frames flow to and from a [`crate::mux::Mux`]; both ends send heartbeats
//! and declare the peer dead after a timeout; GOAWAY drains the session gracefully.
//!
//! [`SessionRegistry`] keeps one live session per client (a second login replaces the first),
//! and [`Backoff`] paces a client's reconnects with jitter from the injected RNG.

mod auth;
mod backoff;
mod client;
mod close;
mod link;
mod node;
mod registry;

#[cfg(test)]
mod tests;

pub use crate::control::AuthKey;
pub use auth::{NONCE_LEN, PROOF_LEN, Transcript};
pub use backoff::{Backoff, BackoffConfig};
pub use client::{ClientEvent, ClientIdentity, ClientSession, ClientSessionConfig, Established};
pub use close::CloseReason;
pub use link::Heartbeat;
pub use node::{NodeEvent, NodeSession, NodeSessionConfig};
pub use registry::{SessionKey, SessionRegistry};
pub use tunnox_proto::wire::RefuseReason;

/// The id a peer node's bridge link is authenticated under: derived from its node id with the
/// top bit set, so it binds the node id into the proof's transcript and can never be a client's.
pub fn peer_key_id(node_id: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"tunnox/v1 peer node\0")
        .chain_update(node_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) | (1 << 63)
}

/// The protocol version in Hello, as the protobuf field type.
pub const PROTOCOL_VERSION: u32 = crate::wire::PROTOCOL_VERSION as u32;
