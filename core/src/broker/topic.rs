//! The broker's topics, and which of them a node also receives from itself.

use core::fmt;

/// A broker topic. The wire name (`client.online`, …) is what travels in the envelope and, after the
/// deployment's prefix, names the Redis channel or NATS subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// A client's session was established on the origin node.
    ClientOnline,
    /// A client's session on the origin node ended.
    ClientOffline,
    /// A client's or user's configuration changed; nodes hosting the client push the new version.
    ConfigUpdate,
    /// A mapping was created.
    MappingCreated,
    /// A mapping was deleted.
    MappingDeleted,
    /// A node asks another to carry a stream over the bridge.
    BridgeRequest,
    /// The answer to a [`Topic::BridgeRequest`].
    BridgeResponse,
    /// The origin node is alive (its storage lease is what counts; this only speeds things up).
    NodeHeartbeat,
    /// The origin node is shutting down.
    NodeShutdown,
    /// Close a client's session wherever it is (an administrator's kick).
    ClientDisconnect,
}

/// A topic name that names no known [`Topic`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown broker topic {0:?}")]
pub struct UnknownTopic(pub String);

impl Topic {
    /// Number of topics.
    pub const COUNT: usize = 10;

    /// Every topic, in [`Topic::index`] order.
    pub const ALL: [Topic; Topic::COUNT] = [
        Topic::ClientOnline,
        Topic::ClientOffline,
        Topic::ConfigUpdate,
        Topic::MappingCreated,
        Topic::MappingDeleted,
        Topic::BridgeRequest,
        Topic::BridgeResponse,
        Topic::NodeHeartbeat,
        Topic::NodeShutdown,
        Topic::ClientDisconnect,
    ];

    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Topic::ClientOnline => "client.online",
            Topic::ClientOffline => "client.offline",
            Topic::ConfigUpdate => "config.update",
            Topic::MappingCreated => "mapping.created",
            Topic::MappingDeleted => "mapping.deleted",
            Topic::BridgeRequest => "bridge.request",
            Topic::BridgeResponse => "bridge.response",
            Topic::NodeHeartbeat => "node.heartbeat",
            Topic::NodeShutdown => "node.shutdown",
            Topic::ClientDisconnect => "client.disconnect",
        }
    }

    /// The topic with wire name `name`.
    pub fn from_name(name: &str) -> Result<Topic, UnknownTopic> {
        Topic::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| UnknownTopic(name.chars().take(TOPIC_NAME_SHOWN_CHARS).collect()))
    }

    /// Position in [`Topic::ALL`] (`0..Topic::COUNT`).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the publishing node also receives its own messages on this topic.
    ///
    /// Only `config.update` is delivered back to its origin: every node, the origin included,
    /// pushes a changed configuration to the clients it hosts from that one event, and the
    /// version in the storage record makes a repeated push harmless. On every other topic the
    /// origin has already acted (it wrote the route or mapping, it is the node that is alive or
    /// leaving, a bridge request is never addressed to oneself), so its own copy is dropped.
    pub const fn delivers_to_self(self) -> bool {
        matches!(self, Topic::ConfigUpdate)
    }
}

/// Longest prefix of an unknown topic name kept in [`UnknownTopic`].
const TOPIC_NAME_SHOWN_CHARS: usize = 64;

impl fmt::Display for Topic {
    /// The wire name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of topics (a bit per [`Topic::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TopicSet(u16);

impl TopicSet {
    /// No topic.
    pub const EMPTY: TopicSet = TopicSet(0);

    /// Every topic.
    pub const ALL: TopicSet = TopicSet((1 << Topic::COUNT) - 1);

    /// The set of `topics`.
    pub fn of(topics: &[Topic]) -> TopicSet {
        topics.iter().fold(TopicSet::EMPTY, |set, &t| set.with(t))
    }

    /// This set plus `topic`.
    pub const fn with(self, topic: Topic) -> TopicSet {
        TopicSet(self.0 | 1 << topic.index())
    }

    /// Whether `topic` is in the set.
    pub const fn contains(self, topic: Topic) -> bool {
        self.0 & (1 << topic.index()) != 0
    }

    /// Topics in either set.
    pub const fn union(self, other: TopicSet) -> TopicSet {
        TopicSet(self.0 | other.0)
    }

    /// Whether every topic of `other` is in this set.
    pub const fn is_superset(self, other: TopicSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The topics in the set, in [`Topic::index`] order.
    pub fn iter(self) -> impl Iterator<Item = Topic> {
        Topic::ALL.into_iter().filter(move |&t| self.contains(t))
    }
}

impl FromIterator<Topic> for TopicSet {
    fn from_iter<I: IntoIterator<Item = Topic>>(iter: I) -> TopicSet {
        iter.into_iter().fold(TopicSet::EMPTY, TopicSet::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_indexes_match_all() {
        for (i, topic) in Topic::ALL.into_iter().enumerate() {
            assert_eq!(topic.index(), i);
            assert_eq!(Topic::from_name(topic.name()), Ok(topic));
        }
        assert_eq!(
            Topic::from_name("client.onlin"),
            Err(UnknownTopic("client.onlin".into()))
        );
    }

    #[test]
    fn unknown_topic_name_is_truncated() {
        let long = "x".repeat(10_000);
        let Err(UnknownTopic(shown)) = Topic::from_name(&long) else {
            panic!("a long name is no topic");
        };
        assert_eq!(shown.len(), TOPIC_NAME_SHOWN_CHARS);
    }

    #[test]
    fn only_config_update_comes_back_to_its_origin() {
        let to_self: Vec<Topic> = Topic::ALL
            .into_iter()
            .filter(|t| t.delivers_to_self())
            .collect();
        assert_eq!(to_self, [Topic::ConfigUpdate]);
    }

    #[test]
    fn topic_set_operations() {
        let set = TopicSet::of(&[Topic::NodeShutdown, Topic::ClientOnline]);
        assert!(set.contains(Topic::ClientOnline) && set.contains(Topic::NodeShutdown));
        assert!(!set.contains(Topic::ConfigUpdate));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Topic::ClientOnline, Topic::NodeShutdown]
        );
        assert!(TopicSet::ALL.is_superset(set) && !set.is_superset(TopicSet::ALL));
        assert_eq!(TopicSet::ALL.iter().count(), Topic::COUNT);
        assert!(TopicSet::EMPTY.is_empty());
        assert_eq!(
            set.union(TopicSet::of(&[Topic::ConfigUpdate])),
            Topic::ALL
                .into_iter()
                .filter(|t| matches!(
                    t,
                    Topic::ClientOnline | Topic::NodeShutdown | Topic::ConfigUpdate
                ))
                .collect()
        );
    }
}
