//! Request authentication of the `StorageService`: a shared token that never crosses the wire.
//!
//! Every request carries the metadata `x-tunnox-auth: v1 <unix ms> <nonce hex> <mac hex>`, where
//! `mac = HMAC-SHA256(token, "tunnox-storage-v1\n" ‖ method ‖ "\n" ‖ unix ms ‖ "\n" ‖ nonce ‖
//! "\n" ‖ the request message as encoded)`. The server recomputes it, accepts a timestamp within
//! `window` (10 s by default) of its own clock, and remembers each nonce for that long, so a captured request can be
//! neither altered (the MAC covers the whole message) nor replayed. What this does not give is
//! confidentiality — values cross a plaintext connection in clear — nor authenticated answers:
//! off a trusted network, serve with TLS.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tunnox_core::hex;

use crate::random::unique_bytes;

/// The metadata key of the signature.
pub const AUTH_HEADER: &str = "x-tunnox-auth";
/// Domain separation: what the MAC is of.
const CONTEXT: &[u8] = b"tunnox-storage-v1\n";
/// Shortest token accepted: a guessable secret would make the MAC worthless.
pub const TOKEN_CHARS_MIN: usize = 16;
/// Nonces remembered at most (about 64 MB); past it the server refuses requests as overloaded
/// until old ones leave the window, rather than forget one and allow a replay. With the default
/// 10 s window that is 50,000 requests/s sustained at the least (a nonce is kept up to two
/// windows).
pub const NONCES_REMEMBERED_MAX: usize = 1_000_000;
const NONCE_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a storage server and its clients.
#[derive(Clone)]
pub struct StorageToken(Vec<u8>);

impl fmt::Debug for StorageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageToken(<redacted>)")
    }
}

/// Why a token or a request's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A token shorter than [`TOKEN_CHARS_MIN`] (after trimming whitespace).
    #[error(
        "the storage token is {chars} characters long; at least {TOKEN_CHARS_MIN} are required"
    )]
    TokenTooShort {
        /// Its length.
        chars: usize,
    },
    /// The request carries no `x-tunnox-auth` metadata.
    #[error("no {AUTH_HEADER} metadata: this server requires a token")]
    Missing,
    /// The metadata does not parse.
    #[error("malformed {AUTH_HEADER} metadata")]
    Malformed,
    /// The timestamp is too far from the server's clock.
    #[error(
        "the request's timestamp is {skew_ms} ms from the server's clock (at most {window_ms} allowed)"
    )]
    Stale {
        /// How far.
        skew_ms: u64,
        /// The window.
        window_ms: u64,
    },
    /// The MAC does not match: a different token, or an altered request.
    #[error("the signature does not match (wrong token, or an altered request)")]
    BadSignature,
    /// This nonce was seen already.
    #[error("a replayed request")]
    Replayed,
    /// Too many nonces to remember: refused until old ones leave the window.
    #[error("too many requests within the replay window")]
    Overloaded,
}

impl StorageToken {
    /// A token from its text (surrounding whitespace ignored, so a file's newline does not count).
    pub fn new(text: &str) -> Result<StorageToken, AuthError> {
        let text = text.trim();
        let chars = text.chars().count();
        if chars < TOKEN_CHARS_MIN {
            return Err(AuthError::TokenTooShort { chars });
        }
        Ok(StorageToken(text.as_bytes().to_vec()))
    }

    fn mac(&self, method: &str, unix_ms: u64, nonce: &str, message: &[u8]) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(CONTEXT);
        mac.update(method.as_bytes());
        mac.update(b"\n");
        mac.update(unix_ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(nonce.as_bytes());
        mac.update(b"\n");
        mac.update(message);
        mac
    }

    /// The `x-tunnox-auth` value for calling `method` with `message` (encoded) at `unix_ms`.
    pub fn sign(&self, method: &str, unix_ms: u64, message: &[u8]) -> String {
        let nonce = hex::encode(&unique_bytes::<NONCE_BYTES>());
        let mac = self.mac(method, unix_ms, &nonce, message).finalize();
        format!("v1 {unix_ms} {nonce} {}", hex::encode(&mac.into_bytes()))
    }
}

/// Checks signatures on the server, remembering nonces for the window.
#[derive(Debug)]
pub struct Verifier {
    token: StorageToken,
    window: Duration,
    seen: Mutex<SeenNonces>,
}

/// Nonces seen within the window, oldest first.
#[derive(Debug, Default)]
struct SeenNonces {
    by_nonce: HashSet<u128>,
    in_order: VecDeque<(u64, u128)>,
}

impl Verifier {
    /// A verifier of `token` accepting timestamps within `window` of the server's clock.
    pub fn new(token: StorageToken, window: Duration) -> Verifier {
        Verifier {
            token,
            window,
            seen: Mutex::new(SeenNonces::default()),
        }
    }

    /// Checks `header` (the metadata value, if any) for `method` with `message` at `now_ms`.
    pub fn verify(
        &self,
        header: Option<&str>,
        method: &str,
        message: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let mut parts = header.split(' ');
        let (Some("v1"), Some(unix_ms), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        let unix_ms: u64 = unix_ms.parse().map_err(|_| AuthError::Malformed)?;
        let mac = hex::decode::<32>(mac).ok_or(AuthError::Malformed)?;
        let nonce_value = hex::decode::<NONCE_BYTES>(nonce)
            .map(u128::from_le_bytes)
            .ok_or(AuthError::Malformed)?;
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let skew_ms = now_ms.abs_diff(unix_ms);
        if skew_ms > window_ms {
            return Err(AuthError::Stale { skew_ms, window_ms });
        }
        self.token
            .mac(method, unix_ms, nonce, message)
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadSignature)?;
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.forget_expired(now_ms);
        if seen.by_nonce.contains(&nonce_value) {
            return Err(AuthError::Replayed);
        }
        if seen.by_nonce.len() >= NONCES_REMEMBERED_MAX {
            return Err(AuthError::Overloaded);
        }
        // Remembered until the latest time its timestamp is still accepted.
        let keep_until = unix_ms.saturating_add(window_ms);
        seen.by_nonce.insert(nonce_value);
        seen.in_order.push_back((keep_until, nonce_value));
        Ok(())
    }
}

impl SeenNonces {
    /// Forgets the nonces whose timestamps the window no longer accepts at `now_ms`.
    fn forget_expired(&mut self, now_ms: u64) {
        // `in_order` is by arrival, and keep_until is not quite in that order (timestamps differ
        // by up to two windows), so an entry may linger behind a later one: longer, never shorter.
        while let Some((keep_until, _)) = self.in_order.front() {
            if *keep_until >= now_ms {
                break;
            }
            if let Some((_, nonce)) = self.in_order.pop_front() {
                self.by_nonce.remove(&nonce);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn token(text: &str) -> StorageToken {
        StorageToken::new(text).unwrap()
    }

    #[test]
    fn short_tokens_are_refused_and_whitespace_is_ignored() {
        assert_eq!(
            StorageToken::new(" short \n").unwrap_err(),
            AuthError::TokenTooShort { chars: 5 }
        );
        let verifier = Verifier::new(token("0123456789abcdef\n"), Duration::from_secs(30));
        let header = token("0123456789abcdef").sign("Get", NOW, b"m");
        assert_eq!(verifier.verify(Some(&header), "Get", b"m", NOW), Ok(()));
    }

    #[test]
    fn a_signature_binds_token_method_message_and_time_and_cannot_be_replayed() {
        let verifier = Verifier::new(token("the right token!"), Duration::from_secs(30));
        let right = token("the right token!");
        let wrong = token("the wrong token!");
        let header = right.sign("Set", NOW, b"message");
        assert_eq!(
            verifier.verify(None, "Set", b"message", NOW),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verifier.verify(
                Some(&wrong.sign("Set", NOW, b"message")),
                "Set",
                b"message",
                NOW
            ),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verifier.verify(Some(&header), "Delete", b"message", NOW),
            Err(AuthError::BadSignature),
            "another method"
        );
        assert_eq!(
            verifier.verify(Some(&header), "Set", b"altered", NOW),
            Err(AuthError::BadSignature),
            "another message"
        );
        assert!(matches!(
            verifier.verify(Some(&header), "Set", b"message", NOW + 31_000),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(
            verifier.verify(Some(&header), "Set", b"message", NOW + 1),
            Ok(())
        );
        assert_eq!(
            verifier.verify(Some(&header), "Set", b"message", NOW + 2),
            Err(AuthError::Replayed)
        );
        for bad in [
            "",
            "v1",
            "v2 1 2 3",
            "v1 x 00 00",
            "v1 1 zz 00",
            "v1 1 00 00 extra",
        ] {
            assert_eq!(
                verifier.verify(Some(bad), "Set", b"message", NOW),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nonces_are_forgotten_after_the_window_and_bounded() {
        let verifier = Verifier::new(token("0123456789abcdef"), Duration::from_millis(100));
        let signer = token("0123456789abcdef");
        for i in 0..10 {
            let header = signer.sign("Get", NOW + i, b"");
            verifier.verify(Some(&header), "Get", b"", NOW + i).unwrap();
        }
        assert_eq!(verifier.seen.lock().unwrap().by_nonce.len(), 10);
        let header = signer.sign("Get", NOW + 1_000, b"");
        verifier
            .verify(Some(&header), "Get", b"", NOW + 1_000)
            .unwrap();
        assert_eq!(
            verifier.seen.lock().unwrap().by_nonce.len(),
            1,
            "old nonces forgotten"
        );
    }
}
