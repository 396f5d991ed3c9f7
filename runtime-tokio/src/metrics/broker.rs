//! [`BrokerMetrics`]: what a node's broker published and received, counted by the broker itself.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tunnox_core::broker::Topic;

/// One label: `topic` (a broker topic's name, like `config.update`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic.
    pub topic: &'static str,
}

/// One label: `kind` of broker error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerErrorLabel {
    /// `publish` (a message lost on the way out) or `malformed` (one dropped on the way in).
    pub kind: &'static str,
}

/// The broker's counters: a handle owned by [`super::NodeMetrics`], given to the broker with
/// `AnyBroker::report_to` (clones count into the same series).
#[derive(Debug, Clone, Default)]
pub struct BrokerMetrics {
    published: Family<TopicLabel, Counter>,
    received: Family<TopicLabel, Counter>,
    errors: Family<BrokerErrorLabel, Counter>,
    reconnects: Counter,
    connected: Gauge,
}

impl BrokerMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "broker_published",
            "Messages the broker handed to its server, by topic",
            self.published.clone(),
        );
        r.register(
            "broker_received",
            "Valid messages the broker received from its server, by topic (before filtering)",
            self.received.clone(),
        );
        r.register(
            "broker_errors",
            "Broker messages lost: publishes that failed, received messages that were malformed",
            self.errors.clone(),
        );
        r.register(
            "broker_reconnects",
            "Times the broker connection was re-established after a loss",
            self.reconnects.clone(),
        );
        r.register(
            "broker_connected",
            "Whether the broker is connected and subscribed (1) or not (0)",
            self.connected.clone(),
        );
    }

    /// A publish on `topic` went out (`ok`) or was lost.
    pub(crate) fn publish(&self, topic: Topic, ok: bool) {
        if ok {
            self.published
                .get_or_create(&TopicLabel {
                    topic: topic.name(),
                })
                .inc();
        } else {
            self.error("publish");
        }
    }

    /// A valid message on `topic` arrived.
    pub(crate) fn receive(&self, topic: Topic) {
        self.received
            .get_or_create(&TopicLabel {
                topic: topic.name(),
            })
            .inc();
    }

    /// A message arrived that is not a valid envelope for its channel.
    pub(crate) fn malformed(&self) {
        self.error("malformed");
    }

    fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&BrokerErrorLabel { kind }).inc();
    }

    /// The connection came back after a loss.
    pub(crate) fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// The connection is up (`true`) or not.
    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }
}
