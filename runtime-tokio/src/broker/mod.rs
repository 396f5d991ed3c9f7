//! Pub/sub between nodes: one [`Broker`] trait, three transports chosen by [`BrokerConfig`].
//!
//! - [`MemoryBroker`]: an in-process bus (single node, and tests of several nodes in one process);
//! - [`RedisBroker`]: Redis pub/sub, reconnecting with backoff; at most once;
//! - [`NatsBroker`]: NATS core pub/sub (`async-nats` reconnects and resubscribes); at most once.
//!
//! A broker stamps what it publishes with `tunnox_core::broker::Publisher` (origin node and run,
//! per-topic sequence number, wall time) and sends the encoded [`Envelope`] on the channel or
//! subject `{channel_prefix}{topic}`. Every [`Subscription`] runs what arrives through its own
//! `tunnox_core::broker::Inbox`, so what [`Subscription::recv`] yields is already self-filtered
//! and de-duplicated, and missed messages surface as [`BrokerEvent::Gap`] or
//! [`BrokerEvent::Resync`]: the caller then re-reads the affected state from storage, because
//! nothing correct depends on a broker message alone (`docs/cluster.md`).
//!
//! | file | concept |
//! |---|---|
//! | `hub` | the transport-independent half: subscriptions, fan-out, connection state, counters |
//! | `memory` | [`MemoryBus`], [`MemoryBroker`] |
//! | `redis_pubsub` | [`RedisBroker`] |
//! | `nats` | [`NatsBroker`] |

mod hub;
mod memory;
mod nats;
mod redis_pubsub;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tunnox_core::broker::{Envelope, InboxConfig, Origin, PublishError, Topic};
use tunnox_core::rng::Rng;
use tunnox_core::session::BackoffConfig;

pub use hub::{BrokerEvent, BrokerStats, ResyncReason, Subscription};
pub use memory::{MemoryBroker, MemoryBus};
pub use nats::NatsBroker;
pub use redis_pubsub::RedisBroker;

/// Whether a broker can deliver right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected yet.
    Connecting,
    /// Connected, and subscribed to every topic a [`Subscription`] asked for.
    Connected,
    /// The connection was lost and is being re-established; messages published meanwhile are
    /// lost for this node's subscriptions, which get [`ResyncReason::Reconnected`] once it is back.
    Reconnecting,
    /// The broker was dropped; subscriptions have ended.
    Closed,
}

/// A broker operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The message cannot be stamped (payload too large, sequence numbers exhausted).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The first connection to the broker failed.
    #[error("cannot connect to broker {url}: {reason}")]
    Connect {
        /// The configured URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The broker is unreachable or refused the command; the message (if any) is lost.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not answer within the configured request timeout.
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The configuration is invalid.
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// The broker was shut down.
    #[error("broker closed")]
    Closed,
}

/// Pub/sub between the nodes of a cluster.
pub trait Broker: Send + Sync {
    /// Stamps `payload` with this node's origin, the topic's next sequence number and the wall
    /// time, publishes it, and returns the envelope sent. Publishes of one broker reach the
    /// server in sequence order. An error means the message is lost (its sequence number is used
    /// up, so receivers see a gap).
    fn publish(
        &self,
        topic: Topic,
        payload: Bytes,
    ) -> impl Future<Output = Result<Envelope, BrokerError>> + Send;

    /// Publishes an envelope exactly as given (stamped by this or another node): for relays, and
    /// for tests that need a duplicate on the wire.
    fn publish_envelope(
        &self,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Subscribes to `topics`. Returns once the server has confirmed the subscription (messages
    /// published after that are received), or at once while the broker is reconnecting (the
    /// subscription then starts with [`ResyncReason::Reconnected`]). Dropping the subscription,
    /// or [`Subscription::unsubscribe`], ends it.
    fn subscribe(
        &self,
        topics: &[Topic],
    ) -> impl Future<Output = Result<Subscription, BrokerError>> + Send;

    /// The connection state, updated as it changes.
    fn connection_state(&self) -> watch::Receiver<ConnectionState>;

    /// Counters of what this broker sent and received.
    fn stats(&self) -> BrokerStats;

    /// Who this broker publishes as.
    fn origin(&self) -> &Origin;
}

/// A broker over a network connection (Redis, NATS): the parts they share, and how each sends.
/// Every such transport is a [`Broker`].
trait RemoteTransport: Send + Sync {
    /// The broker's settings.
    fn config(&self) -> &BrokerConfig;
    /// The subscriptions and connection state.
    fn hub(&self) -> &std::sync::Arc<hub::Hub>;
    /// Stamps outgoing envelopes.
    fn publisher(&self) -> &tokio::sync::Mutex<tunnox_core::broker::Publisher>;
    /// Who this broker publishes as.
    fn sender(&self) -> &Origin;
    /// Sends one envelope.
    fn send(&self, envelope: &Envelope) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

impl<T: RemoteTransport> Broker for T {
    async fn publish(&self, topic: Topic, payload: Bytes) -> Result<Envelope, BrokerError> {
        // Held across the send so that sequence order is wire order.
        let mut publisher = self.publisher().lock().await;
        let envelope = publisher.stamp(topic, crate::clock::wall_now(), payload)?;
        self.send(&envelope).await?;
        Ok(envelope)
    }

    async fn publish_envelope(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        self.send(envelope).await
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Subscription, BrokerError> {
        let subscription = self.hub().register(
            topics,
            self.sender().node.clone(),
            self.config().inbox.clone(),
        )?;
        self.hub()
            .until_subscribed(topics, self.config().request_timeout)
            .await?;
        Ok(subscription)
    }

    fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.hub().watch_state()
    }

    fn stats(&self) -> BrokerStats {
        self.hub().stats()
    }

    fn origin(&self) -> &Origin {
        self.sender()
    }
}

/// Which transport carries the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerKind {
    /// In-process: the node is alone.
    Memory,
    /// Redis pub/sub at `url` (`redis://[:password@]host:port[/db]`).
    Redis {
        /// Server URL.
        url: String,
    },
    /// NATS core pub/sub at `url` (`nats://host:port`).
    Nats {
        /// Server URL.
        url: String,
    },
}

/// How to build a broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The transport.
    pub kind: BrokerKind,
    /// Put before every topic to name the Redis channel or NATS subject (`tunnox.client.online`);
    /// clusters sharing a server use different prefixes. 1-64 of `A-Z a-z 0-9 . _ - :`.
    pub channel_prefix: String,
    /// Events buffered per subscription before the oldest undelivered are dropped (and reported
    /// as [`ResyncReason::Lagged`]).
    pub subscription_capacity: usize,
    /// Limits of each subscription's inbox.
    pub inbox: InboxConfig,
    /// Delays between reconnect attempts.
    pub reconnect: BackoffConfig,
    /// Longest wait for a TCP connection and handshake.
    pub connect_timeout: Duration,
    /// Longest wait for a command's answer (publish, subscribe, ping).
    pub request_timeout: Duration,
    /// How often an idle connection is checked with a ping.
    pub ping_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Memory,
            channel_prefix: "tunnox.".to_owned(),
            subscription_capacity: 1024,
            inbox: InboxConfig::default(),
            reconnect: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                multiplier: 2.0,
                jitter: 0.3,
            },
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Longest channel prefix, in characters.
pub const CHANNEL_PREFIX_MAX_CHARS: usize = 64;

impl BrokerConfig {
    /// Checks the fields every transport relies on.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let prefix = &self.channel_prefix;
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
        if prefix.is_empty() || prefix.len() > CHANNEL_PREFIX_MAX_CHARS || !prefix.chars().all(ok) {
            return Err(BrokerError::Config(format!(
                "channel_prefix {prefix:?} must be 1-{CHANNEL_PREFIX_MAX_CHARS} of A-Z a-z 0-9 . _ - :"
            )));
        }
        if prefix.contains("..") || prefix.starts_with('.') {
            return Err(BrokerError::Config(format!(
                "channel_prefix {prefix:?} would make an empty NATS subject token"
            )));
        }
        if self.subscription_capacity == 0 {
            return Err(BrokerError::Config(
                "subscription_capacity must be at least 1".into(),
            ));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_zero() {
                return Err(BrokerError::Config(format!("{name} must be above zero")));
            }
        }
        Ok(())
    }

    /// The channel or subject of `topic`.
    pub fn channel(&self, topic: Topic) -> String {
        format!("{}{}", self.channel_prefix, topic.name())
    }
}

/// A broker of the kind the configuration names.
#[derive(Debug, Clone)]
pub enum AnyBroker {
    /// In-process.
    Memory(MemoryBroker),
    /// Redis pub/sub.
    Redis(RedisBroker),
    /// NATS core.
    Nats(NatsBroker),
}

impl AnyBroker {
    /// Connects the broker `config` names, publishing as `origin`; `rng` jitters reconnects.
    pub async fn connect(
        config: BrokerConfig,
        origin: Origin,
        rng: Rng,
    ) -> Result<AnyBroker, BrokerError> {
        config.validate()?;
        Ok(match &config.kind {
            BrokerKind::Memory => AnyBroker::Memory(MemoryBus::new(config).broker(origin)),
            BrokerKind::Redis { .. } => {
                AnyBroker::Redis(RedisBroker::connect(config, origin, rng).await?)
            }
            BrokerKind::Nats { .. } => {
                AnyBroker::Nats(NatsBroker::connect(config, origin, rng).await?)
            }
        })
    }
}

impl AnyBroker {
    /// Counts what this broker publishes and receives into `metrics` (a memory broker counts
    /// its whole bus).
    pub fn report_to(&self, metrics: crate::metrics::BrokerMetrics) {
        let hub = match self {
            AnyBroker::Memory(b) => b.hub(),
            AnyBroker::Redis(b) => b.hub(),
            AnyBroker::Nats(b) => b.hub(),
        };
        hub.report_to(metrics);
    }
}

impl Broker for AnyBroker {
    async fn publish(&self, topic: Topic, payload: Bytes) -> Result<Envelope, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.publish(topic, payload).await,
            AnyBroker::Redis(b) => b.publish(topic, payload).await,
            AnyBroker::Nats(b) => b.publish(topic, payload).await,
        }
    }

    async fn publish_envelope(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.publish_envelope(envelope).await,
            AnyBroker::Redis(b) => b.publish_envelope(envelope).await,
            AnyBroker::Nats(b) => b.publish_envelope(envelope).await,
        }
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Subscription, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.subscribe(topics).await,
            AnyBroker::Redis(b) => b.subscribe(topics).await,
            AnyBroker::Nats(b) => b.subscribe(topics).await,
        }
    }

    fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        match self {
            AnyBroker::Memory(b) => b.connection_state(),
            AnyBroker::Redis(b) => b.connection_state(),
            AnyBroker::Nats(b) => b.connection_state(),
        }
    }

    fn stats(&self) -> BrokerStats {
        match self {
            AnyBroker::Memory(b) => b.stats(),
            AnyBroker::Redis(b) => b.stats(),
            AnyBroker::Nats(b) => b.stats(),
        }
    }

    fn origin(&self) -> &Origin {
        match self {
            AnyBroker::Memory(b) => b.origin(),
            AnyBroker::Redis(b) => b.origin(),
            AnyBroker::Nats(b) => b.origin(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        BrokerConfig::default().validate().unwrap();
        assert_eq!(
            BrokerConfig::default().channel(Topic::ClientOnline),
            "tunnox.client.online"
        );
    }

    #[test]
    fn bad_prefixes_and_limits_are_refused() {
        for prefix in [
            "",
            "has space.",
            "wild*.",
            "a..b.",
            ".lead",
            &"x".repeat(65),
        ] {
            let config = BrokerConfig {
                channel_prefix: prefix.to_owned(),
                ..BrokerConfig::default()
            };
            assert!(
                matches!(config.validate(), Err(BrokerError::Config(_))),
                "{prefix:?}"
            );
        }
        let config = BrokerConfig {
            subscription_capacity: 0,
            ..BrokerConfig::default()
        };
        assert!(matches!(config.validate(), Err(BrokerError::Config(_))));
        let config = BrokerConfig {
            request_timeout: Duration::ZERO,
            ..BrokerConfig::default()
        };
        assert!(matches!(config.validate(), Err(BrokerError::Config(_))));
    }
}
