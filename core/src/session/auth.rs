//! The challenge-response proofs of the handshake.
//!
//! The client proves it holds its [`AuthKey`] without sending it: it answers the node's fresh
//! nonce with `HMAC-SHA256(key, transcript)`, where the transcript binds the protocol version,
//! the client id, the client's nonce and the node's nonce. A recorded proof is useless on another
//! connection because the node's nonce differs. The node proves it knows the key too, with an
//! HMAC over the same transcript plus the session id, so a client can tell a real node from one
//! that merely terminates its connection.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuthKey;

type HmacSha256 = Hmac<Sha256>;

/// Length of a proof (an HMAC-SHA256 tag) in bytes.
pub const PROOF_LEN: usize = 32;
/// Length of the nonces each side contributes, in bytes.
pub const NONCE_LEN: usize = 32;

const CLIENT_PROOF_LABEL: &[u8] = b"tunnox/v1 client proof";
const NODE_PROOF_LABEL: &[u8] = b"tunnox/v1 node proof";

/// What both proofs are computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript<'a> {
    /// The protocol version both sides speak.
    pub protocol_version: u32,
    /// The client logging in.
    pub client_id: u64,
    /// The client's nonce from Hello.
    pub client_nonce: &'a [u8],
    /// The node's nonce from Challenge.
    pub node_nonce: &'a [u8],
}

impl Transcript<'_> {
    fn mac(&self, key: &AuthKey, label: &[u8]) -> HmacSha256 {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(label);
        mac.update(&self.protocol_version.to_be_bytes());
        mac.update(&self.client_id.to_be_bytes());
        // Length prefixes keep the two variable-length nonces from running into each other.
        mac.update(&(self.client_nonce.len() as u32).to_be_bytes());
        mac.update(self.client_nonce);
        mac.update(&(self.node_nonce.len() as u32).to_be_bytes());
        mac.update(self.node_nonce);
        mac
    }

    /// The client's proof.
    pub fn client_proof(&self, key: &AuthKey) -> [u8; PROOF_LEN] {
        self.mac(key, CLIENT_PROOF_LABEL)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a client's proof in constant time.
    pub fn verify_client_proof(&self, key: &AuthKey, proof: &[u8]) -> bool {
        self.mac(key, CLIENT_PROOF_LABEL)
            .verify_slice(proof)
            .is_ok()
    }

    /// The node's proof for session `session_id`.
    pub fn node_proof(&self, key: &AuthKey, session_id: u64) -> [u8; PROOF_LEN] {
        let mut mac = self.mac(key, NODE_PROOF_LABEL);
        mac.update(&session_id.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a node's proof in constant time.
    pub fn verify_node_proof(&self, key: &AuthKey, session_id: u64, proof: &[u8]) -> bool {
        let mut mac = self.mac(key, NODE_PROOF_LABEL);
        mac.update(&session_id.to_be_bytes());
        mac.verify_slice(proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript<'a>(client_nonce: &'a [u8], node_nonce: &'a [u8]) -> Transcript<'a> {
        Transcript {
            protocol_version: 1,
            client_id: 42,
            client_nonce,
            node_nonce,
        }
    }

    #[test]
    fn proofs_verify_only_with_the_same_key_and_transcript() {
        let key = AuthKey::derive("secret");
        let other = AuthKey::derive("secret2");
        let t = transcript(b"client-nonce", b"node-nonce");
        let proof = t.client_proof(&key);
        assert!(t.verify_client_proof(&key, &proof));
        assert!(!t.verify_client_proof(&other, &proof));
        assert!(!transcript(b"client-nonce", b"node-nonce2").verify_client_proof(&key, &proof));
        assert!(!t.verify_client_proof(&key, &proof[..31]));
        // The node's proof is a different value and binds the session id.
        let node = t.node_proof(&key, 9);
        assert_ne!(node, proof);
        assert!(t.verify_node_proof(&key, 9, &node));
        assert!(!t.verify_node_proof(&key, 10, &node));
    }

    #[test]
    fn nonce_boundaries_are_unambiguous() {
        let key = AuthKey::derive("s");
        let a = transcript(b"ab", b"c").client_proof(&key);
        let b = transcript(b"a", b"bc").client_proof(&key);
        assert_ne!(a, b);
    }
}
