//! The NATS broker: core NATS publish/subscribe (no JetStream) through `async-nats`, which
//! reconnects on its own and re-subscribes what was subscribed.
//!
//! NATS core is at most once like Redis pub/sub: a message published while this node's
//! connection is down is lost for its subscriptions (what this node publishes while down is
//! buffered by the client and sent after the reconnect, up to the client's buffer). On a
//! reconnect every subscription is told to resync, and the inbox reports the lost sequence
//! numbers as a gap once the origin publishes again.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tunnox_core::broker::{Envelope, Origin, Publisher, Topic, TopicSet};
use tunnox_core::rng::Rng;
use tunnox_core::session::Backoff;

use super::hub::Hub;
use super::{BrokerConfig, BrokerError, BrokerKind, ConnectionState, RemoteTransport};

/// A broker over NATS core pub/sub (cheap to clone: clones share the connection and publish as
/// the same origin).
#[derive(Debug, Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<BrokerConfig>,
    client: async_nats::Client,
    origin: Origin,
    hub: Arc<Hub>,
    publisher: Mutex<Publisher>,
    /// Dropped with the broker, which ends the subscription task.
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("origin", &self.origin)
            .field("state", &self.hub.state())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects to the NATS server of `config` (which must be [`BrokerKind::Nats`]), publishing
    /// as `origin`; `rng` jitters reconnect delays. Fails if the first connection fails.
    pub async fn connect(
        config: BrokerConfig,
        origin: Origin,
        rng: Rng,
    ) -> Result<NatsBroker, BrokerError> {
        config.validate()?;
        let BrokerKind::Nats { url } = &config.kind else {
            return Err(BrokerError::Config("NatsBroker needs a NATS URL".into()));
        };
        let hub = Hub::new(
            config.subscription_capacity,
            config.channel_prefix.clone(),
            ConnectionState::Connecting,
        );
        let backoff = std::sync::Mutex::new(Backoff::new(config.reconnect.clone(), rng));
        let events = hub.clone();
        let options = ConnectOptions::new()
            .name(format!("tunnox-{}", origin.node))
            .connection_timeout(config.connect_timeout)
            .ping_interval(config.ping_interval)
            .request_timeout(Some(config.request_timeout))
            .ignore_discovered_servers()
            .reconnect_delay_callback(move |attempts| {
                let mut backoff = backoff.lock().unwrap_or_else(PoisonError::into_inner);
                if attempts <= 1 {
                    // The first attempt after a loss goes at once, as async-nats does by default.
                    backoff.reset();
                    return std::time::Duration::ZERO;
                }
                backoff.next_delay()
            })
            .event_callback(move |event| {
                let hub = events.clone();
                async move {
                    match event {
                        Event::Connected => hub.set_state(ConnectionState::Connected),
                        Event::Disconnected => hub.set_state(ConnectionState::Reconnecting),
                        _ => {}
                    }
                }
            });
        let client = tokio::time::timeout(config.connect_timeout, options.connect(url.as_str()))
            .await
            .map_err(|_| BrokerError::Connect {
                url: url.clone(),
                reason: format!("no connection within {:?}", config.connect_timeout),
            })?
            .map_err(|e| BrokerError::Connect {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        hub.set_state(ConnectionState::Connected);
        let config = Arc::new(config);
        let (shutdown, shutdown_rx) = watch::channel(());
        let task = SubscriptionTask {
            client: client.clone(),
            config: config.clone(),
            hub: hub.clone(),
            relays: BTreeMap::new(),
            shutdown: shutdown_rx,
        };
        tokio::spawn(task.run());
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                config,
                client,
                origin: origin.clone(),
                hub,
                publisher: Mutex::new(Publisher::new(origin)),
                _shutdown: shutdown,
            }),
        })
    }

    /// Drops the connection and connects again at once (as after a network fault); subscriptions
    /// survive and are told to resync.
    pub async fn force_reconnect(&self) -> Result<(), BrokerError> {
        self.inner
            .client
            .force_reconnect()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn send(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        let config = &self.inner.config;
        let subject = config.channel(envelope.topic);
        let publish = self.inner.client.publish(subject, envelope.encode());
        let result = match tokio::time::timeout(config.request_timeout, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BrokerError::Unavailable(e.to_string())),
            Err(_) => Err(BrokerError::Timeout(config.request_timeout)),
        };
        self.inner.hub.count_publish(envelope.topic, result.is_ok());
        result
    }
}

impl RemoteTransport for NatsBroker {
    fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }
    fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }
    fn publisher(&self) -> &Mutex<Publisher> {
        &self.inner.publisher
    }
    fn sender(&self) -> &Origin {
        &self.inner.origin
    }
    async fn send(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        NatsBroker::send(self, envelope).await
    }
}

/// Keeps one NATS subscription per wanted topic, each relayed into the hub by its own task.
struct SubscriptionTask {
    client: async_nats::Client,
    config: Arc<BrokerConfig>,
    hub: Arc<Hub>,
    /// Relay task per subscribed topic; aborting one drops its NATS subscription (unsubscribes).
    relays: BTreeMap<Topic, JoinHandle<()>>,
    shutdown: watch::Receiver<()>,
}

impl SubscriptionTask {
    async fn run(mut self) {
        let mut wanted = self.hub.wanted();
        loop {
            let target = *wanted.borrow_and_update();
            self.sync(target).await;
            tokio::select! {
                _ = self.shutdown.changed() => break,
                changed = wanted.changed() => if changed.is_err() { break },
            }
        }
        for relay in self.relays.values() {
            relay.abort();
        }
        self.hub.close();
    }

    /// Subscribes and unsubscribes so that exactly `target` is relayed, and reports as active
    /// the topics the server is known to have subscribed.
    async fn sync(&mut self, target: TopicSet) {
        self.relays.retain(|topic, relay| {
            let keep = target.contains(*topic);
            if !keep {
                relay.abort();
            }
            keep
        });
        let mut added = TopicSet::EMPTY;
        for topic in target.iter() {
            if self.relays.contains_key(&topic) {
                continue;
            }
            let subject = self.config.channel(topic);
            let Ok(mut subscriber) = self.client.subscribe(subject).await else {
                // Only fails once the client is closed; nothing to relay then.
                continue;
            };
            let hub = self.hub.clone();
            let relay = tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    hub.deliver_raw(message.subject.as_str(), message.payload);
                }
            });
            self.relays.insert(topic, relay);
            added = added.with(topic);
        }
        let relayed: TopicSet = self.relays.keys().copied().collect();
        let active = if added.is_empty() || self.round_trip().await {
            relayed
        } else {
            // Not confirmed: whoever waits for these topics times out rather than miss messages.
            relayed.iter().filter(|t| !added.contains(*t)).collect()
        };
        self.hub.set_active(active);
    }

    /// Whether the server has processed everything this client sent so far. `flush` only
    /// empties the client's write buffer, so this sends a message to a fresh inbox subject on
    /// the same connection: it comes back only after the server has handled the earlier `SUB`s.
    async fn round_trip(&self) -> bool {
        let inbox = self.client.new_inbox();
        let Ok(mut echo) = self.client.subscribe(inbox.clone()).await else {
            return false;
        };
        if self.client.publish(inbox, Bytes::new()).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(self.config.request_timeout, echo.next()).await,
            Ok(Some(_))
        )
    }
}
