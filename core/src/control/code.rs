//! Connection codes as people type them: `abc-def-123`.
//!
//! Nine characters from a 33-symbol alphabet without the look-alikes `i`, `l` and `o` give about
//! 45 bits; codes are also single-use and expire within a day, and whoever stores them must check
//! that a fresh code is not already taken (set-if-absent, retry on collision).

use core::fmt;

use crate::rng::Rng;

/// The symbols of a code: digits and lower-case letters except `i`, `l` and `o`.
pub const ALPHABET: &[u8; 33] = b"0123456789abcdefghjkmnpqrstuvwxyz";
/// Number of groups in a code.
pub const GROUPS: usize = 3;
/// Symbols per group.
pub const GROUP_LEN: usize = 3;
/// Length of a code in its canonical form, dashes included (`abc-def-123`).
pub const CODE_LEN: usize = GROUPS * GROUP_LEN + GROUPS - 1;

/// One uniformly random symbol of [`ALPHABET`].
pub(crate) fn random_symbol(rng: &mut Rng) -> char {
    let i = rng.below(ALPHABET.len() as u64) as usize;
    char::from(ALPHABET[i % ALPHABET.len()])
}

/// Whether `c` is a symbol of [`ALPHABET`] (lower case).
pub(crate) fn is_symbol(c: char) -> bool {
    c.is_ascii() && ALPHABET.contains(&(c as u8))
}

/// Why a string is not a connection code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeParseError {
    /// The trimmed input is not 11 characters long.
    #[error("a connection code has 11 characters (abc-def-123), got {len}")]
    WrongLength {
        /// Characters after trimming.
        len: usize,
    },
    /// A `-` is missing where one belongs (positions 3 and 7, counting from 0).
    #[error("expected `-` at position {at}")]
    MissingDash {
        /// Zero-based position in the trimmed input.
        at: usize,
    },
    /// A character that is not in the code alphabet.
    #[error(
        "`{ch}` at position {at} is not a code character (codes use 0-9 and a-z without i, l, o)"
    )]
    BadChar {
        /// The offending character, as typed.
        ch: char,
        /// Zero-based position in the trimmed input.
        at: usize,
    },
}

/// A syntactically valid connection code, stored in canonical (lower-case, dashed) form.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Code(String);

impl Code {
    /// A fresh uniformly random code.
    pub fn generate(rng: &mut Rng) -> Code {
        let mut s = String::with_capacity(CODE_LEN);
        for group in 0..GROUPS {
            if group > 0 {
                s.push('-');
            }
            for _ in 0..GROUP_LEN {
                s.push(random_symbol(rng));
            }
        }
        Code(s)
    }

    /// Parses a code as typed: surrounding whitespace and upper case are forgiven, nothing else.
    pub fn parse(input: &str) -> Result<Code, CodeParseError> {
        let trimmed = input.trim();
        let len = trimmed.chars().count();
        if len != CODE_LEN {
            return Err(CodeParseError::WrongLength { len });
        }
        let mut canonical = String::with_capacity(CODE_LEN);
        for (at, ch) in trimmed.chars().enumerate() {
            let dash_here = at % (GROUP_LEN + 1) == GROUP_LEN;
            if dash_here {
                if ch != '-' {
                    return Err(CodeParseError::MissingDash { at });
                }
                canonical.push('-');
                continue;
            }
            let lower = ch.to_ascii_lowercase();
            if !is_symbol(lower) {
                return Err(CodeParseError::BadChar { ch, at });
            }
            canonical.push(lower);
        }
        Ok(Code(canonical))
    }

    /// The canonical form, e.g. `abc-def-123`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Code {
    /// The canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Code {
    type Error = CodeParseError;
    fn try_from(s: String) -> Result<Code, CodeParseError> {
        Code::parse(&s)
    }
}

impl From<Code> for String {
    fn from(c: Code) -> String {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    #[test]
    fn alphabet_has_no_look_alikes_and_no_duplicates() {
        for banned in [b'i', b'l', b'o'] {
            assert!(!ALPHABET.contains(&banned));
        }
        let mut sorted = ALPHABET.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALPHABET.len());
        assert!(
            ALPHABET
                .iter()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
    }

    #[test]
    fn generated_codes_parse_back_and_use_every_symbol() {
        let mut rng = Rng::seed_from_u64(3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let code = Code::generate(&mut rng);
            assert_eq!(code.as_str().len(), CODE_LEN);
            assert_eq!(Code::parse(code.as_str()), Ok(code.clone()));
            seen.extend(code.as_str().chars().filter(|c| *c != '-'));
        }
        assert_eq!(seen.len(), ALPHABET.len());
        assert!(!seen.contains(&'i') && !seen.contains(&'l') && !seen.contains(&'o'));
    }

    #[test]
    fn parse_forgives_case_and_surrounding_whitespace() {
        let code = Code::parse("  AbC-dEf-123\n").unwrap();
        assert_eq!(code.as_str(), "abc-def-123");
        assert_eq!(code.to_string(), "abc-def-123");
    }

    #[test]
    fn parse_rejects_everything_else() {
        use CodeParseError::*;
        assert_eq!(Code::parse(""), Err(WrongLength { len: 0 }));
        assert_eq!(Code::parse("abc-def-12"), Err(WrongLength { len: 10 }));
        assert_eq!(Code::parse("abc-def-1234"), Err(WrongLength { len: 12 }));
        assert_eq!(Code::parse("abcdef123"), Err(WrongLength { len: 9 }));
        assert_eq!(Code::parse("abc_def-123"), Err(MissingDash { at: 3 }));
        assert_eq!(Code::parse("abcd-ef-123"), Err(MissingDash { at: 3 }));
        assert_eq!(Code::parse("abc-defg123"), Err(MissingDash { at: 7 }));
        assert_eq!(Code::parse("abc-def--23"), Err(BadChar { ch: '-', at: 8 }));
        assert_eq!(Code::parse("abi-def-123"), Err(BadChar { ch: 'i', at: 2 }));
        assert_eq!(Code::parse("abc-dLf-123"), Err(BadChar { ch: 'L', at: 5 }));
        assert_eq!(Code::parse("abc-def-12o"), Err(BadChar { ch: 'o', at: 10 }));
        assert_eq!(Code::parse("abc def 123"), Err(MissingDash { at: 3 }));
        assert_eq!(Code::parse("abc-dé-123"), Err(WrongLength { len: 10 }));
        assert_eq!(Code::parse("abc-déf-123"), Err(BadChar { ch: 'é', at: 5 }));
        assert_eq!(
            Code::parse("abc - def-123").unwrap_err(),
            WrongLength { len: 13 }
        );
    }

    #[test]
    fn serde_validates() {
        let code = Code::parse("abc-def-123").unwrap();
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, "\"abc-def-123\"");
        assert_eq!(serde_json::from_str::<Code>(&json).unwrap(), code);
        assert!(serde_json::from_str::<Code>("\"abc-def-12i\"").is_err());
    }

    proptest! {
        #[test]
        fn generated_codes_round_trip_through_display(seed in any::<u64>()) {
            let code = Code::generate(&mut Rng::seed_from_u64(seed));
            prop_assert_eq!(Code::parse(&code.to_string()), Ok(code.clone()));
            prop_assert_eq!(Code::parse(&code.to_string().to_uppercase()), Ok(code));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_canonicalisable_input(s in "\\PC{0,16}") {
            if let Ok(code) = Code::parse(&s) {
                prop_assert_eq!(code.as_str(), s.trim().to_ascii_lowercase());
            }
        }
    }
}
