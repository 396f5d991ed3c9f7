//! How one key's contents are laid out in the `kv` table of an [`super::EmbeddedKv`] file.
//!
//! `[kind: u8][version: u64 LE][expires_at unix ms: u64 LE, 0 = never][payload]`; the payload of
//! a value is its bytes, that of a list its elements, each as `[length: u32 LE][bytes]`.

use bytes::Bytes;

use crate::storage::StorageError;

const KIND_VALUE: u8 = 1;
const KIND_LIST: u8 = 2;
const HEADER_BYTES: usize = 1 + 8 + 8;

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Contents {
    /// A value.
    Value(Bytes),
    /// A list, first element first.
    List(Vec<Bytes>),
}

/// One key's stored contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// The version of its last write.
    pub version: u64,
    /// When it expires, in wall-clock unix milliseconds.
    pub expires_at_ms: Option<u64>,
    /// The value or list.
    pub contents: Contents,
}

impl Record {
    /// Whether it is still visible at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload_bytes) = match &self.contents {
            Contents::Value(value) => (KIND_VALUE, value.len()),
            Contents::List(list) => (
                KIND_LIST,
                list.iter().map(|element| 4 + element.len()).sum(),
            ),
        };
        let mut out = Vec::with_capacity(HEADER_BYTES + payload_bytes);
        out.push(kind);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.unwrap_or(0).to_le_bytes());
        match &self.contents {
            Contents::Value(value) => out.extend_from_slice(value),
            Contents::List(list) => {
                for element in list {
                    // Elements are bounded far below 4 GiB by whoever stores them (the server's
                    // value limit); a larger one is cut at the length this format can say.
                    let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&element[..len as usize]);
                }
            }
        }
        out
    }

    /// Reads the stored form of `key`; `Corrupt` if it does not parse.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Record, StorageError> {
        let corrupt = |reason: &str| StorageError::Corrupt {
            table: "kv",
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt("shorter than a record header"));
        }
        let (header, payload) = bytes.split_at(HEADER_BYTES);
        let word = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        let version = word(1);
        let expires_at_ms = Some(word(9)).filter(|&at| at != 0);
        let contents = match header[0] {
            KIND_VALUE => Contents::Value(Bytes::copy_from_slice(payload)),
            KIND_LIST => {
                let mut list = Vec::new();
                let mut rest = payload;
                while !rest.is_empty() {
                    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(corrupt("a list element's length is cut short"));
                    };
                    let len = u32::from_le_bytes(*len) as usize;
                    if tail.len() < len {
                        return Err(corrupt("a list element is cut short"));
                    }
                    let (element, tail) = tail.split_at(len);
                    list.push(Bytes::copy_from_slice(element));
                    rest = tail;
                }
                Contents::List(list)
            }
            _ => return Err(corrupt("unknown kind")),
        };
        Ok(Record {
            version,
            expires_at_ms,
            contents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_bytes_are_corrupt_not_a_panic() {
        let records = [
            Record {
                version: 7,
                expires_at_ms: None,
                contents: Contents::Value(Bytes::from_static(b"\0value\xff")),
            },
            Record {
                version: u64::MAX,
                expires_at_ms: Some(1_700_000_000_000),
                contents: Contents::List(vec![Bytes::new(), Bytes::from_static(b"abc")]),
            },
            Record {
                version: 1,
                expires_at_ms: Some(5),
                contents: Contents::List(Vec::new()),
            },
        ];
        for record in records {
            let stored = record.encode();
            assert_eq!(Record::decode("k", &stored).ok(), Some(record.clone()));
            // Every truncation of a list either decodes to a prefix or is Corrupt; none panics.
            for cut in 0..stored.len() {
                let _ = Record::decode("k", &stored[..cut]);
            }
        }
        assert!(matches!(
            Record::decode("k", &[9; 20]),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            Record::decode(
                "k",
                &[
                    2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1
                ]
            ),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
