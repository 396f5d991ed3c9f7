//! The envelope every broker message travels in, and its protobuf encoding
//! (`tunnox.broker.v1.Envelope` in `proto/proto/broker.proto`).

use bytes::Bytes;
use prost::Message;
use tunnox_proto::broker as pb;

use super::topic::{Topic, UnknownTopic};
use crate::control::{NodeId, UnixMillis, ValidationError};

/// Largest payload one envelope carries, in bytes (NATS' default `max_payload` is 1 MiB).
pub const PAYLOAD_BYTES_MAX: usize = 512 * 1024;

/// Largest encoded envelope accepted, in bytes: the payload plus room for the other fields.
pub const ENVELOPE_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + 1024;

/// Who published a message: a node, in one run of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The publishing node.
    pub node: NodeId,
    /// Which run of the node: larger after every restart (its start time in unix millis, or a
    /// counter kept in storage), because sequence numbers begin again at 1 in each run.
    pub incarnation: u64,
}

/// One broker message with the stamp its publisher put on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// What the message is about.
    pub topic: Topic,
    /// Who published it.
    pub origin: Origin,
    /// Sequence number per (origin, topic), from 1, one more for each message published.
    pub seq: u64,
    /// The publisher's wall clock when it published (informational: nothing orders by it).
    pub time: UnixMillis,
    /// The topic's message.
    pub payload: Bytes,
}

/// Bytes that are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The message is longer than [`ENVELOPE_BYTES_MAX`] (checked before decoding).
    #[error("broker message of {length} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Length received.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a protobuf `Envelope`.
    #[error("malformed broker envelope: {0}")]
    Malformed(String),
    /// The topic field names no known topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// The origin field is not a valid node id.
    #[error("bad origin node in broker envelope: {0}")]
    BadOriginNode(ValidationError),
    /// Sequence numbers start at 1.
    #[error("broker envelope with sequence number 0")]
    ZeroSeq,
}

impl Envelope {
    /// The protobuf encoding.
    pub fn encode(&self) -> Bytes {
        let message = pb::Envelope {
            topic: self.topic.name().to_owned(),
            origin_node: self.origin.node.as_str().to_owned(),
            origin_incarnation: self.origin.incarnation,
            seq: self.seq,
            time_unix_ms: self.time.as_millis(),
            payload: self.payload.clone(),
        };
        Bytes::from(message.encode_to_vec())
    }

    /// Decodes and validates one envelope; the payload shares `bytes`' buffer.
    pub fn decode(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > ENVELOPE_BYTES_MAX {
            return Err(EnvelopeError::TooLarge {
                length: bytes.len(),
                max: ENVELOPE_BYTES_MAX,
            });
        }
        let message =
            pb::Envelope::decode(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let topic = Topic::from_name(&message.topic)?;
        let node = NodeId::parse(&message.origin_node).map_err(EnvelopeError::BadOriginNode)?;
        if message.seq == 0 {
            return Err(EnvelopeError::ZeroSeq);
        }
        Ok(Envelope {
            topic,
            origin: Origin {
                node,
                incarnation: message.origin_incarnation,
            },
            seq: message.seq,
            time: UnixMillis(message.time_unix_ms),
            payload: message.payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn sample() -> Envelope {
        Envelope {
            topic: Topic::MappingCreated,
            origin: Origin {
                node: node("node-a"),
                incarnation: 1_700_000_000_000,
            },
            seq: 42,
            time: UnixMillis(1_700_000_000_123),
            payload: Bytes::from_static(b"m-abcdefghijkl"),
        }
    }

    fn raw(topic: &str, origin_node: &str, seq: u64) -> Bytes {
        Bytes::from(
            pb::Envelope {
                topic: topic.into(),
                origin_node: origin_node.into(),
                origin_incarnation: 1,
                seq,
                time_unix_ms: 5,
                payload: Bytes::new(),
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn round_trips() {
        let envelope = sample();
        assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
    }

    #[test]
    fn empty_payload_round_trips() {
        let envelope = Envelope {
            payload: Bytes::new(),
            ..sample()
        };
        assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        assert_eq!(
            Envelope::decode(raw("client.sideways", "node-a", 1)),
            Err(EnvelopeError::UnknownTopic(UnknownTopic(
                "client.sideways".into()
            )))
        );
        assert!(matches!(
            Envelope::decode(raw("client.online", "Node A", 1)),
            Err(EnvelopeError::BadOriginNode(_))
        ));
        assert!(matches!(
            Envelope::decode(raw("client.online", "", 1)),
            Err(EnvelopeError::BadOriginNode(_))
        ));
        assert_eq!(
            Envelope::decode(raw("client.online", "node-a", 0)),
            Err(EnvelopeError::ZeroSeq)
        );
        // A field 1 (topic) announcing more bytes than follow.
        assert!(matches!(
            Envelope::decode(Bytes::from_static(&[0x0a, 0x20, b'c'])),
            Err(EnvelopeError::Malformed(_))
        ));
        // An empty message decodes to an empty topic, which is no topic.
        assert!(matches!(
            Envelope::decode(Bytes::new()),
            Err(EnvelopeError::UnknownTopic(_))
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let huge = Bytes::from(vec![0xff; ENVELOPE_BYTES_MAX + 1]);
        assert_eq!(
            Envelope::decode(huge),
            Err(EnvelopeError::TooLarge {
                length: ENVELOPE_BYTES_MAX + 1,
                max: ENVELOPE_BYTES_MAX
            })
        );
    }

    #[test]
    fn largest_payload_fits_the_envelope_limit() {
        let envelope = Envelope {
            origin: Origin {
                node: node(&"n".repeat(64)), // the longest node id
                incarnation: u64::MAX,
            },
            seq: u64::MAX,
            time: UnixMillis(u64::MAX),
            payload: Bytes::from(vec![7; PAYLOAD_BYTES_MAX]),
            ..sample()
        };
        let encoded = envelope.encode();
        assert!(encoded.len() <= ENVELOPE_BYTES_MAX, "{}", encoded.len());
        assert_eq!(Envelope::decode(encoded), Ok(envelope));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Envelope::decode(Bytes::from(bytes));
        }

        #[test]
        fn any_valid_envelope_round_trips(
            topic in 0..Topic::COUNT,
            incarnation in any::<u64>(),
            seq in 1..u64::MAX,
            time in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let envelope = Envelope {
                topic: Topic::ALL[topic],
                origin: Origin { node: node("n-1.b_c"), incarnation },
                seq,
                time: UnixMillis(time),
                payload: Bytes::from(payload),
            };
            prop_assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
        }
    }
}
