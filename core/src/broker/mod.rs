//! Broker semantics: what nodes tell each other over pub/sub, independent of the transport.
//!
//! A node publishes with a [`Publisher`], which stamps each payload into an [`Envelope`]
//! `{topic, origin (node, incarnation), seq, time, payload}`; the runtime sends
//! [`Envelope::encode`]d bytes over Redis pub/sub, NATS or an in-process bus. Each subscriber runs
//! what it receives through an [`Inbox`], which drops the node's own messages where the
//! [`Topic`] says so, drops duplicates by `(origin, topic, seq)`, and reports gaps in the sequence
//! as [`Gap`]s. Brokers deliver at most once (Redis pub/sub loses what is published while a
//! subscriber is cut off), so nothing correct depends on a broker message alone: a gap, or a
//! reconnect, tells the caller to re-read the state it cares about from storage.
//!
//! | file | concept |
//! |---|---|
//! | `topic` | [`Topic`] names, which topics come back to their origin, [`TopicSet`] |
//! | `envelope` | [`Envelope`], [`Origin`] and their protobuf encoding, [`EnvelopeError`] |
//! | `publisher` | [`Publisher`]: origin and per-topic sequence numbers |
//! | `inbox` | [`Inbox`]: self-filtering, de-duplication, gap detection, [`InboxCounters`] |

mod envelope;
mod inbox;
mod publisher;
mod topic;

#[cfg(test)]
mod tests;

pub use envelope::{ENVELOPE_BYTES_MAX, Envelope, EnvelopeError, Origin, PAYLOAD_BYTES_MAX};
pub use inbox::{
    Admission, DropReason, Gap, Inbox, InboxConfig, InboxCounters, Missing, REORDER_WINDOW_MAX,
};
pub use publisher::{PublishError, Publisher};
pub use topic::{Topic, TopicSet, UnknownTopic};
