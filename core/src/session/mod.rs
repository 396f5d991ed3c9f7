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

pub use auth::{NONCE_LEN, PROOF_LEN, Transcript};
pub use backoff::{Backoff, BackoffConfig};
pub use client::{ClientEvent, ClientIdentity, ClientSession, ClientSessionConfig, Established};
pub use close::CloseReason;
pub use link::Heartbeat;
pub use node::{NodeEvent, NodeSession, NodeSessionConfig};
pub use registry::{SessionKey, SessionRegistry};
pub use tunnox_proto::wire::RefuseReason;

/// The protocol version in Hello, as the protobuf field type.
pub const PROTOCOL_VERSION: u32 = crate::wire::PROTOCOL_VERSION as u32;

/// The key a client proves knowledge of, derived from its secret; nodes store only this.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey([u8; 32]);

impl AuthKey {
    /// Derives the key from a client secret: `HMAC-SHA256(secret, "tunnox/v1 auth key")`.
    pub fn derive(secret: &str) -> AuthKey {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(b"tunnox/v1 auth key");
        AuthKey(mac.finalize().into_bytes().into())
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}
