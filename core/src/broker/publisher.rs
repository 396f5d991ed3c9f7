//! The publishing side: stamps each message with its origin and the next sequence number.

use bytes::Bytes;

use super::envelope::{Envelope, Origin, PAYLOAD_BYTES_MAX};
use super::topic::Topic;
use crate::control::UnixMillis;

/// A message that cannot be stamped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The payload is longer than [`PAYLOAD_BYTES_MAX`].
    #[error("broker payload of {length} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Length of the payload.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// Every sequence number of the topic was used (2^64 - 1 messages): restart with a larger
    /// incarnation.
    #[error("sequence numbers of {0} are exhausted in this incarnation")]
    SeqExhausted(Topic),
}

/// Stamps outgoing messages of one node run: its [`Origin`] and, per topic, a sequence number
/// that starts at 1 and grows by one for each message.
///
/// Sequence numbers are per topic so that a node subscribed to some topics only still sees
/// consecutive numbers on each of them, and a jump means a lost message, not a message on a
/// topic it does not read.
#[derive(Debug, Clone)]
pub struct Publisher {
    origin: Origin,
    last_seq: [u64; Topic::COUNT],
}

impl Publisher {
    /// A publisher for a node run that has published nothing yet.
    pub fn new(origin: Origin) -> Publisher {
        Publisher {
            origin,
            last_seq: [0; Topic::COUNT],
        }
    }

    /// Who this publisher stamps as the origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The sequence number of the last message stamped on `topic` (0: none yet).
    pub fn last_seq(&self, topic: Topic) -> u64 {
        self.last_seq[topic.index()]
    }

    /// The envelope for `payload` on `topic`, published at wall time `time`; uses up one sequence
    /// number of `topic` even if the caller then fails to send it (receivers see a gap, as for any
    /// lost message).
    pub fn stamp(
        &mut self,
        topic: Topic,
        time: UnixMillis,
        payload: Bytes,
    ) -> Result<Envelope, PublishError> {
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(PublishError::PayloadTooLarge {
                length: payload.len(),
                max: PAYLOAD_BYTES_MAX,
            });
        }
        let last = &mut self.last_seq[topic.index()];
        let seq = last
            .checked_add(1)
            .ok_or(PublishError::SeqExhausted(topic))?;
        *last = seq;
        Ok(Envelope {
            topic,
            origin: self.origin.clone(),
            seq,
            time,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::NodeId;

    fn publisher() -> Publisher {
        Publisher::new(Origin {
            node: NodeId::parse("node-a").unwrap(),
            incarnation: 7,
        })
    }

    #[test]
    fn seqs_start_at_one_and_grow_per_topic() {
        let mut p = publisher();
        let stamp =
            |p: &mut Publisher, topic| p.stamp(topic, UnixMillis(1), Bytes::new()).unwrap().seq;
        assert_eq!(stamp(&mut p, Topic::ClientOnline), 1);
        assert_eq!(stamp(&mut p, Topic::ClientOnline), 2);
        assert_eq!(stamp(&mut p, Topic::NodeHeartbeat), 1);
        assert_eq!(stamp(&mut p, Topic::ClientOnline), 3);
        assert_eq!(p.last_seq(Topic::ClientOnline), 3);
        assert_eq!(p.last_seq(Topic::ConfigUpdate), 0);
    }

    #[test]
    fn stamps_origin_time_and_payload() {
        let mut p = publisher();
        let e = p
            .stamp(
                Topic::MappingDeleted,
                UnixMillis(99),
                Bytes::from_static(b"x"),
            )
            .unwrap();
        assert_eq!(e.origin, *p.origin());
        assert_eq!(e.time, UnixMillis(99));
        assert_eq!(e.payload, Bytes::from_static(b"x"));
        assert_eq!(e.topic, Topic::MappingDeleted);
    }

    #[test]
    fn oversized_payload_is_refused_without_using_a_seq() {
        let mut p = publisher();
        let big = Bytes::from(vec![0; PAYLOAD_BYTES_MAX + 1]);
        assert_eq!(
            p.stamp(Topic::ConfigUpdate, UnixMillis(1), big),
            Err(PublishError::PayloadTooLarge {
                length: PAYLOAD_BYTES_MAX + 1,
                max: PAYLOAD_BYTES_MAX
            })
        );
        assert_eq!(p.last_seq(Topic::ConfigUpdate), 0);
    }

    #[test]
    fn exhausted_seqs_are_an_error_not_a_wrap() {
        let mut p = publisher();
        p.last_seq[Topic::NodeShutdown.index()] = u64::MAX;
        assert_eq!(
            p.stamp(Topic::NodeShutdown, UnixMillis(1), Bytes::new()),
            Err(PublishError::SeqExhausted(Topic::NodeShutdown))
        );
    }
}
