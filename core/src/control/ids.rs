//! Identifiers of users, clients, nodes and mappings.

use core::fmt;

use super::code::{ALPHABET, is_symbol, random_symbol};
use super::validation::ValidationError;
use crate::rng::Rng;

/// A user account's id: a random 12-digit number, like a client's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(pub u64);

impl UserId {
    /// A random id of exactly 12 decimal digits (see [`ClientId::generate`]).
    pub fn generate(rng: &mut Rng) -> UserId {
        UserId(ClientId::generate(rng).0)
    }
}

impl fmt::Display for UserId {
    /// Decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A client's id: what the client presents at login, next to proof of its [`super::AuthKey`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ClientId(pub u64);

impl ClientId {
    /// Smallest generated id (the first 12-digit number).
    pub const GENERATED_MIN: u64 = 100_000_000_000;
    /// Largest generated id (the last 12-digit number).
    pub const GENERATED_MAX: u64 = 999_999_999_999;

    /// A random id of exactly 12 decimal digits: never zero, short enough to read out, and far below
    /// 2^53 so it survives JSON numbers in JavaScript. Not guaranteed unique: storage must claim it
    /// with set-if-absent and the caller retries on collision.
    pub fn generate(rng: &mut Rng) -> ClientId {
        let span = ClientId::GENERATED_MAX - ClientId::GENERATED_MIN + 1;
        ClientId(ClientId::GENERATED_MIN + rng.below(span))
    }
}

impl fmt::Display for ClientId {
    /// Decimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Longest node id, in characters.
pub const NODE_ID_MAX_CHARS: usize = 64;

/// A node's id: 1-64 characters of `a-z`, `0-9`, `-`, `_`, `.` (safe in storage keys and topics).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates `s` as a node id (no case folding: ids appear in keys verbatim).
    pub fn parse(s: &str) -> Result<NodeId, ValidationError> {
        if s.is_empty() || s.len() > NODE_ID_MAX_CHARS {
            return Err(ValidationError::new("node_id", "must be 1-64 characters"));
        }
        let ok =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
        if !s.chars().all(ok) {
            return Err(ValidationError::new(
                "node_id",
                "may only contain a-z, 0-9, `-`, `_` and `.`",
            ));
        }
        Ok(NodeId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    /// The id as text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for NodeId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<NodeId, ValidationError> {
        NodeId::parse(&s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

/// Prefix of every mapping id.
pub const MAPPING_ID_PREFIX: &str = "m-";
/// Random symbols after the prefix of a mapping id (about 60 bits).
pub const MAPPING_ID_RANDOM_LEN: usize = 12;

/// A mapping's id: `m-` followed by 12 symbols of the connection-code alphabet.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct MappingId(String);

impl MappingId {
    /// A fresh random id (uniqueness is still claimed in storage, as for every random id).
    pub fn generate(rng: &mut Rng) -> MappingId {
        let mut s = String::with_capacity(MAPPING_ID_PREFIX.len() + MAPPING_ID_RANDOM_LEN);
        s.push_str(MAPPING_ID_PREFIX);
        for _ in 0..MAPPING_ID_RANDOM_LEN {
            s.push(random_symbol(rng));
        }
        MappingId(s)
    }

    /// Validates `s` as a mapping id, exactly (lower case, no whitespace).
    pub fn parse(s: &str) -> Result<MappingId, ValidationError> {
        let problem = || {
            let alphabet = String::from_utf8_lossy(ALPHABET);
            ValidationError::new(
                "mapping_id",
                format!("must be `m-` followed by {MAPPING_ID_RANDOM_LEN} of `{alphabet}`"),
            )
        };
        let rest = s.strip_prefix(MAPPING_ID_PREFIX).ok_or_else(problem)?;
        if rest.len() != MAPPING_ID_RANDOM_LEN || !rest.chars().all(is_symbol) {
            return Err(problem());
        }
        Ok(MappingId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MappingId {
    /// The id as text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MappingId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<MappingId, ValidationError> {
        MappingId::parse(&s)
    }
}

impl From<MappingId> for String {
    fn from(id: MappingId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_twelve_digits_and_vary() {
        let mut rng = Rng::seed_from_u64(9);
        let ids: Vec<ClientId> = (0..1_000).map(|_| ClientId::generate(&mut rng)).collect();
        for id in &ids {
            assert_eq!(id.to_string().len(), 12, "{id}");
            assert!(id.0 < (1 << 53));
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn node_ids_are_validated() {
        assert_eq!(NodeId::parse("node-0001").unwrap().as_str(), "node-0001");
        assert!(NodeId::parse("eu_west.1").is_ok());
        assert!(NodeId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "Node-1", "node 1", "node:1", "nöde", &"a".repeat(65)] {
            let e = NodeId::parse(bad).unwrap_err();
            assert_eq!(e.field, "node_id", "{bad:?}");
        }
        assert!(serde_json::from_str::<NodeId>("\"UPPER\"").is_err());
        assert_eq!(
            serde_json::to_string(&NodeId::parse("n1").unwrap()).unwrap(),
            "\"n1\""
        );
    }

    #[test]
    fn mapping_ids_generate_and_parse() {
        let mut rng = Rng::seed_from_u64(1);
        for _ in 0..200 {
            let id = MappingId::generate(&mut rng);
            assert_eq!(id.as_str().len(), 14);
            assert_eq!(MappingId::parse(id.as_str()), Ok(id.clone()));
            assert_eq!(
                serde_json::from_str::<MappingId>(&serde_json::to_string(&id).unwrap()).unwrap(),
                id
            );
        }
        for bad in [
            "",
            "m-",
            "m-abcdefghjkm",
            "m-abcdefghjkmnp",
            "x-abcdefghjkmn",
            "m-abcdefghjkmi",
            "M-abcdefghjkmn",
            "m-ABCDEFGHJKMN",
            " m-abcdefghjkmn",
        ] {
            assert_eq!(
                MappingId::parse(bad).unwrap_err().field,
                "mapping_id",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn numeric_ids_display_in_decimal() {
        assert_eq!(UserId(42).to_string(), "42");
        assert_eq!(ClientId(7).to_string(), "7");
        assert_eq!(serde_json::to_string(&ClientId(7)).unwrap(), "7");
    }
}
