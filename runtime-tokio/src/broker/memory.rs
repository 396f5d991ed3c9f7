//! The in-process broker: every broker made from one [`MemoryBus`] hears every other.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Mutex, watch};
use tunnox_core::broker::{Envelope, Origin, Publisher, Topic};

use super::hub::{BrokerStats, Hub, Subscription};
use super::{Broker, BrokerConfig, BrokerError, ConnectionState};
use crate::clock::wall_now;

/// An in-process bus: the "server" that [`MemoryBroker`]s of one process share. Delivery is
/// immediate and never lost, except to a subscription that is read too slowly.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    hub: Arc<Hub>,
    config: Arc<BrokerConfig>,
}

impl MemoryBus {
    /// A bus with no brokers yet; `config` gives the subscriptions' buffer and inbox limits.
    pub fn new(config: BrokerConfig) -> MemoryBus {
        let hub = Hub::new(
            config.subscription_capacity,
            config.channel_prefix.clone(),
            ConnectionState::Connected,
        );
        MemoryBus {
            hub,
            config: Arc::new(config),
        }
    }

    /// A broker on this bus publishing as `origin`.
    pub fn broker(&self, origin: Origin) -> MemoryBroker {
        MemoryBroker {
            inner: Arc::new(Inner {
                bus: self.clone(),
                origin: origin.clone(),
                publisher: Mutex::new(Publisher::new(origin)),
            }),
        }
    }
}

/// A broker on a [`MemoryBus`] (cheap to clone: clones publish as the same origin).
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bus: MemoryBus,
    origin: Origin,
    publisher: Mutex<Publisher>,
}

impl MemoryBroker {
    /// The bus's hub (shared by every broker on the bus).
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.inner.bus.hub
    }
}

impl Broker for MemoryBroker {
    async fn publish(&self, topic: Topic, payload: Bytes) -> Result<Envelope, BrokerError> {
        let mut publisher = self.inner.publisher.lock().await;
        let envelope = publisher.stamp(topic, wall_now(), payload)?;
        self.publish_envelope(&envelope).await?;
        Ok(envelope)
    }

    async fn publish_envelope(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        let hub = &self.inner.bus.hub;
        hub.count_publish(envelope.topic, true);
        hub.deliver(envelope.clone());
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Subscription, BrokerError> {
        let config = &self.inner.bus.config;
        self.inner
            .bus
            .hub
            .register(topics, self.inner.origin.node.clone(), config.inbox.clone())
    }

    fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.bus.hub.watch_state()
    }

    fn stats(&self) -> BrokerStats {
        self.inner.bus.hub.stats()
    }

    fn origin(&self) -> &Origin {
        &self.inner.origin
    }
}
