//! A client's credentials: the secret only the client keeps, and the key derived from it that
//! nodes store and the client proves knowledge of at login.
//!
//! `AuthKey = HMAC-SHA256(key = secret bytes, msg = "tunnox/v1 auth key")`. Nodes store only the
//! auth key, so leaked storage does not reveal the secret the user holds; the auth key is still
//! what challenge-response checks, so it is as sensitive as a password and `Debug` redacts both.

use core::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::validation::ValidationError;
use crate::rng::Rng;

/// Domain-separation message of the auth-key derivation.
pub const AUTH_KEY_CONTEXT: &[u8] = b"tunnox/v1 auth key";
/// Random bytes in a generated secret.
pub const SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The 32-byte key a client proves knowledge of in the handshake; what nodes store.
#[derive(Clone)]
pub struct AuthKey([u8; 32]);

impl AuthKey {
    /// Derives the key from a client secret (deterministic; different secrets give different keys).
    pub fn derive(secret: &str) -> AuthKey {
        // HMAC takes keys of any length (RFC 2104 §2), so this never fails.
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
            unreachable!("HMAC-SHA256 accepts keys of any length")
        };
        mac.update(AUTH_KEY_CONTEXT);
        AuthKey(mac.finalize().into_bytes().into())
    }

    /// Wraps raw key bytes (e.g. read back from storage).
    pub const fn from_bytes(bytes: [u8; 32]) -> AuthKey {
        AuthKey(bytes)
    }

    /// The raw key bytes, for the handshake's MAC.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for AuthKey {
    /// Compares in constant time, so timing does not reveal how many leading bytes match.
    fn eq(&self, other: &AuthKey) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for AuthKey {}

impl fmt::Debug for AuthKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl serde::Serialize for AuthKey {
    /// Lower-case hex, for storage.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for AuthKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AuthKey, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        crate::hex::decode::<32>(&s)
            .map(AuthKey)
            .ok_or_else(|| serde::de::Error::custom("an auth key is 64 hex digits"))
    }
}

/// A client's secret: 32 random bytes as 64 lower-case hex digits. Given to the client once; nodes
/// keep only its [`AuthKey`].
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientSecret(String);

impl ClientSecret {
    /// A fresh random secret.
    pub fn generate(rng: &mut Rng) -> ClientSecret {
        let mut bytes = [0u8; SECRET_BYTES];
        rng.fill(&mut bytes);
        ClientSecret(crate::hex::encode(&bytes))
    }

    /// Reads a saved secret: 64 hex digits, either case (kept in lower case).
    pub fn parse(s: &str) -> Result<ClientSecret, ValidationError> {
        let bytes = crate::hex::decode::<32>(s)
            .ok_or_else(|| ValidationError::new("secret", "must be 64 hex digits"))?;
        Ok(ClientSecret(crate::hex::encode(&bytes)))
    }

    /// The secret itself, to hand to the client or to save in its credentials file.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The key nodes store for this secret.
    pub fn auth_key(&self) -> AuthKey {
        AuthKey::derive(&self.0)
    }
}

impl fmt::Debug for ClientSecret {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

impl TryFrom<String> for ClientSecret {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<ClientSecret, ValidationError> {
        ClientSecret::parse(&s)
    }
}

impl From<ClientSecret> for String {
    fn from(s: ClientSecret) -> String {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_matches_known_answers() {
        // Computed independently (Python: hmac.new(secret, b"tunnox/v1 auth key", sha256)).
        assert_eq!(
            crate::hex::encode(AuthKey::derive("s3cret").as_bytes()),
            "c4be09f9a7fd0b879b4114a264928e7244da3257627c74c08b599cf6bdd4e5c0"
        );
        // A secret longer than the SHA-256 block is hashed first, per RFC 2104.
        assert_eq!(
            crate::hex::encode(AuthKey::derive(&"k".repeat(100)).as_bytes()),
            "44ad0a3656151b90b7a54ed82d098586ed83cbfe6f47fa9cfa8308485b3784a0"
        );
    }

    #[test]
    fn derivation_is_deterministic_and_differs_per_secret() {
        assert_eq!(AuthKey::derive("a"), AuthKey::derive("a"));
        assert_ne!(AuthKey::derive("a"), AuthKey::derive("b"));
        assert_ne!(AuthKey::derive(""), AuthKey::derive(" "));
        let long = "x".repeat(1_000);
        assert_ne!(AuthKey::derive(&long), AuthKey::derive(&long[..999]));
    }

    #[test]
    fn secrets_are_64_hex_and_random() {
        let mut rng = Rng::seed_from_u64(5);
        let a = ClientSecret::generate(&mut rng);
        let b = ClientSecret::generate(&mut rng);
        assert_eq!(a.expose_secret().len(), 64);
        assert!(
            a.expose_secret()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert_eq!(a.auth_key(), AuthKey::derive(a.expose_secret()));
        assert_ne!(a.auth_key(), b.auth_key());
    }

    #[test]
    fn debug_never_shows_secret_or_key() {
        let secret = ClientSecret::generate(&mut Rng::seed_from_u64(6));
        let key = secret.auth_key();
        let shown = format!("{secret:?} {key:?} {:?}", (&secret, &key));
        assert!(!shown.contains(secret.expose_secret()), "{shown}");
        assert!(!shown.contains(&secret.expose_secret()[..8]), "{shown}");
        let key_hex = crate::hex::encode(key.as_bytes());
        assert!(!shown.contains(&key_hex[..8]), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn secrets_parse_and_normalise() {
        let s = "AB".repeat(32);
        let parsed = ClientSecret::parse(&s).unwrap();
        assert_eq!(parsed.expose_secret(), "ab".repeat(32));
        for bad in [
            "",
            "ab",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("+{}", "a".repeat(63)),
        ] {
            assert_eq!(
                ClientSecret::parse(bad).unwrap_err().field,
                "secret",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serde_round_trips_in_hex() {
        let key = AuthKey::from_bytes([0xa5; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", "a5".repeat(32)));
        assert_eq!(serde_json::from_str::<AuthKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<AuthKey>("\"a5\"").is_err());
        let secret = ClientSecret::generate(&mut Rng::seed_from_u64(1));
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(serde_json::from_str::<ClientSecret>(&json).unwrap(), secret);
    }
}
