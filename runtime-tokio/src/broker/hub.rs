//! The transport-independent half of a broker: the subscriptions of one node (or, for the memory
//! bus, of every node on it), fan-out to them, the topics the transport must subscribe, the
//! connection state and the counters.
//!
//! A transport reads [`Hub::wanted`] (the union of the subscriptions' topics), subscribes them at
//! the server and reports what it has with [`Hub::set_active`]; it hands every message it receives
//! to [`Hub::deliver_raw`] and reports connection changes with [`Hub::set_state`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tunnox_core::broker::{
    Admission, Envelope, Gap, Inbox, InboxConfig, InboxCounters, Topic, TopicSet,
};
use tunnox_core::control::NodeId;

use super::{BrokerError, ConnectionState};

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A message for this node: not its own (unless the topic comes back), not seen before.
    Message(Envelope),
    /// Messages from one origin were missed (reported just before the message that revealed it):
    /// re-read from storage what that origin's messages on that topic describe.
    Gap(Gap),
    /// Anything may have been missed: re-read everything this subscription stands for.
    Resync(ResyncReason),
}

/// Why a [`BrokerEvent::Resync`] was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The connection to the broker was lost and is back.
    Reconnected,
    /// This subscription was read too slowly and `dropped` messages did not fit its buffer.
    Lagged {
        /// Messages dropped.
        dropped: u64,
    },
}

/// Counters of one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStats {
    /// Messages handed to the transport.
    pub published: u64,
    /// Publishes that failed (the message is lost).
    pub publish_failed: u64,
    /// Messages received from the transport, before any filtering.
    pub received: u64,
    /// Received messages that were not a valid envelope for their channel (dropped).
    pub malformed: u64,
    /// Times the connection was re-established after a loss.
    pub reconnects: u64,
}

/// The counters behind [`BrokerStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
}

impl StatsCell {
    fn snapshot(&self) -> BrokerStats {
        BrokerStats {
            published: self.published.load(Ordering::Relaxed),
            publish_failed: self.publish_failed.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// What the hub hands a subscription.
#[derive(Debug)]
enum Incoming {
    Envelope(Envelope),
    Interrupted,
}

/// One registered subscription, as the hub sees it.
#[derive(Debug)]
struct Subscriber {
    topics: TopicSet,
    tx: mpsc::Sender<Incoming>,
    /// Messages that did not fit `tx`, not yet reported.
    dropped: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Subscribers {
    next_id: u64,
    by_id: BTreeMap<u64, Subscriber>,
    closed: bool,
}

impl Subscribers {
    fn wanted(&self) -> TopicSet {
        self.by_id
            .values()
            .fold(TopicSet::EMPTY, |set, s| set.union(s.topics))
    }
}

/// Subscriptions, fan-out, connection state and counters of a broker.
#[derive(Debug)]
pub(crate) struct Hub {
    subscribers: Mutex<Subscribers>,
    capacity: usize,
    prefix: String,
    wanted: watch::Sender<TopicSet>,
    active: watch::Sender<TopicSet>,
    state: watch::Sender<ConnectionState>,
    stats: StatsCell,
    /// Where the node's metrics are counted, once attached.
    metrics: std::sync::OnceLock<crate::metrics::BrokerMetrics>,
}

impl Hub {
    /// A hub whose subscriptions buffer `capacity` events each, for channels named
    /// `{prefix}{topic}`.
    pub(crate) fn new(capacity: usize, prefix: String, state: ConnectionState) -> Arc<Hub> {
        Arc::new(Hub {
            subscribers: Mutex::new(Subscribers::default()),
            capacity: capacity.max(1),
            prefix,
            wanted: watch::Sender::new(TopicSet::EMPTY),
            active: watch::Sender::new(TopicSet::EMPTY),
            state: watch::Sender::new(state),
            stats: StatsCell::default(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts into `metrics` from now on (the first call wins); the connection state is
    /// reported at once.
    pub(crate) fn report_to(&self, metrics: crate::metrics::BrokerMetrics) {
        metrics.set_connected(self.state() == ConnectionState::Connected);
        let _ = self.metrics.set(metrics);
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a subscription to `topics` for node `me`.
    pub(crate) fn register(
        self: &Arc<Self>,
        topics: &[Topic],
        me: NodeId,
        inbox: InboxConfig,
    ) -> Result<Subscription, BrokerError> {
        let topics = TopicSet::of(topics);
        let (tx, rx) = mpsc::channel(self.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = self.lock();
        if subs.closed {
            return Err(BrokerError::Closed);
        }
        let id = subs.next_id;
        subs.next_id += 1;
        subs.by_id.insert(
            id,
            Subscriber {
                topics,
                tx,
                dropped: dropped.clone(),
            },
        );
        let wanted = subs.wanted();
        drop(subs);
        self.wanted
            .send_if_modified(|w| std::mem::replace(w, wanted) != wanted);
        Ok(Subscription {
            id: Some(id),
            topics,
            hub: self.clone(),
            rx,
            dropped,
            inbox: Inbox::new(me, inbox),
            pending: None,
        })
    }

    fn deregister(&self, id: u64) {
        let mut subs = self.lock();
        subs.by_id.remove(&id);
        let wanted = subs.wanted();
        drop(subs);
        self.wanted
            .send_if_modified(|w| std::mem::replace(w, wanted) != wanted);
    }

    /// The union of the subscriptions' topics, updated as they come and go.
    pub(crate) fn wanted(&self) -> watch::Receiver<TopicSet> {
        self.wanted.subscribe()
    }

    /// Records the topics the transport is subscribed to at the server.
    pub(crate) fn set_active(&self, topics: TopicSet) {
        self.active.send_replace(topics);
    }

    /// Records a connection change; on a reconnect every subscription is told to resync.
    /// `Closed` is final: a late event from a transport shutting down cannot undo it.
    pub(crate) fn set_state(&self, state: ConnectionState) {
        let mut previous = state;
        self.state.send_if_modified(|current| {
            previous = *current;
            if *current == ConnectionState::Closed || *current == state {
                return false;
            }
            *current = state;
            true
        });
        if previous == ConnectionState::Closed {
            return;
        }
        if let Some(metrics) = self.metrics.get() {
            metrics.set_connected(state == ConnectionState::Connected);
        }
        if state != ConnectionState::Connected {
            self.active.send_replace(TopicSet::EMPTY);
        }
        if state == ConnectionState::Connected && previous == ConnectionState::Reconnecting {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            if let Some(metrics) = self.metrics.get() {
                metrics.reconnected();
            }
            let subs = self.lock();
            for sub in subs.by_id.values() {
                offer(sub, Incoming::Interrupted);
            }
        }
    }

    /// The current connection state.
    pub(crate) fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Follows the connection state.
    pub(crate) fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Waits until the transport is subscribed to all of `topics`, or is not connected (the
    /// subscription is then made on reconnect).
    pub(crate) async fn until_subscribed(
        &self,
        topics: &[Topic],
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let topics = TopicSet::of(topics);
        let mut active = self.active.subscribe();
        let mut state = self.state.subscribe();
        let wait = async {
            loop {
                match *state.borrow_and_update() {
                    ConnectionState::Closed => return Err(BrokerError::Closed),
                    ConnectionState::Connected => {}
                    ConnectionState::Connecting | ConnectionState::Reconnecting => return Ok(()),
                }
                if active.borrow_and_update().is_superset(topics) {
                    return Ok(());
                }
                tokio::select! {
                    changed = active.changed() => changed.map_err(|_| BrokerError::Closed)?,
                    changed = state.changed() => changed.map_err(|_| BrokerError::Closed)?,
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| BrokerError::Timeout(timeout))?
    }

    /// Decodes one message received on `channel` and fans it out; counts what is malformed.
    pub(crate) fn deliver_raw(&self, channel: &str, bytes: Bytes) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let topic = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|name| Topic::from_name(name).ok());
        match (topic, Envelope::decode(bytes)) {
            (Some(topic), Ok(envelope)) if envelope.topic == topic => self.deliver(envelope),
            _ => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(metrics) = self.metrics.get() {
                    metrics.malformed();
                }
            }
        }
    }

    /// Fans `envelope` out to every subscription of its topic.
    pub(crate) fn deliver(&self, envelope: Envelope) {
        if let Some(metrics) = self.metrics.get() {
            metrics.receive(envelope.topic);
        }
        let subs = self.lock();
        for sub in subs.by_id.values() {
            if sub.topics.contains(envelope.topic) {
                offer(sub, Incoming::Envelope(envelope.clone()));
            }
        }
    }

    /// Counts a publish on `topic` handed to the transport, or one that failed.
    pub(crate) fn count_publish(&self, topic: Topic, ok: bool) {
        if let Some(metrics) = self.metrics.get() {
            metrics.publish(topic, ok);
        }
        let counter = if ok {
            &self.stats.published
        } else {
            &self.stats.publish_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters.
    pub(crate) fn stats(&self) -> BrokerStats {
        self.stats.snapshot()
    }

    /// Ends every subscription and refuses new ones.
    pub(crate) fn close(&self) {
        let mut subs = self.lock();
        subs.closed = true;
        subs.by_id.clear();
        drop(subs);
        self.set_state(ConnectionState::Closed);
    }
}

/// Queues `incoming` for `sub`, or counts it dropped if the buffer is full.
fn offer(sub: &Subscriber, incoming: Incoming) {
    if let Err(mpsc::error::TrySendError::Full(_)) = sub.tx.try_send(incoming) {
        sub.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// One subscription: what arrives on its topics, self-filtered, de-duplicated, with gaps reported.
#[derive(Debug)]
pub struct Subscription {
    /// `None` once unsubscribed.
    id: Option<u64>,
    topics: TopicSet,
    hub: Arc<Hub>,
    rx: mpsc::Receiver<Incoming>,
    dropped: Arc<AtomicU64>,
    inbox: Inbox,
    /// A message whose gap was just returned.
    pending: Option<Envelope>,
}

impl Subscription {
    /// The next event; `None` once unsubscribed (after what was already buffered) or once the
    /// broker is gone.
    pub async fn recv(&mut self) -> Option<BrokerEvent> {
        if let Some(envelope) = self.pending.take() {
            return Some(BrokerEvent::Message(envelope));
        }
        loop {
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                return Some(BrokerEvent::Resync(ResyncReason::Lagged { dropped }));
            }
            let envelope = match self.rx.recv().await? {
                Incoming::Interrupted => {
                    return Some(BrokerEvent::Resync(ResyncReason::Reconnected));
                }
                Incoming::Envelope(envelope) => envelope,
            };
            match self.inbox.admit(&envelope) {
                Admission::Deliver { gap: None } => return Some(BrokerEvent::Message(envelope)),
                Admission::Deliver { gap: Some(gap) } => {
                    self.pending = Some(envelope);
                    return Some(BrokerEvent::Gap(gap));
                }
                Admission::Drop(_) => {}
            }
        }
    }

    /// Stops delivery: nothing published from now on is queued; [`Subscription::recv`] drains
    /// what was queued, then returns `None`.
    pub fn unsubscribe(&mut self) {
        if let Some(id) = self.id.take() {
            self.hub.deregister(id);
        }
    }

    /// The topics subscribed.
    pub fn topics(&self) -> TopicSet {
        self.topics
    }

    /// What this subscription's inbox has filtered and reported so far.
    pub fn counters(&self) -> InboxCounters {
        self.inbox.counters()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        Hub::new(8, "p.".into(), ConnectionState::Connecting)
    }

    fn me() -> NodeId {
        NodeId::parse("me").unwrap()
    }

    #[test]
    fn wanted_is_the_union_of_live_subscriptions() {
        let hub = hub();
        let wanted = hub.wanted();
        let a = hub
            .register(&[Topic::ClientOnline], me(), InboxConfig::default())
            .unwrap();
        let mut b = hub
            .register(&[Topic::NodeShutdown], me(), InboxConfig::default())
            .unwrap();
        assert_eq!(
            *wanted.borrow(),
            TopicSet::of(&[Topic::ClientOnline, Topic::NodeShutdown])
        );
        b.unsubscribe();
        assert_eq!(*wanted.borrow(), TopicSet::of(&[Topic::ClientOnline]));
        drop(a);
        assert_eq!(*wanted.borrow(), TopicSet::EMPTY);
    }

    #[tokio::test]
    async fn only_a_reconnect_interrupts_and_closed_is_final() {
        let hub = hub();
        let mut sub = hub
            .register(&[Topic::ClientOnline], me(), InboxConfig::default())
            .unwrap();
        hub.set_state(ConnectionState::Connected);
        hub.set_state(ConnectionState::Reconnecting);
        hub.set_state(ConnectionState::Connected);
        assert_eq!(
            sub.recv().await,
            Some(BrokerEvent::Resync(ResyncReason::Reconnected))
        );
        assert_eq!(hub.stats().reconnects, 1);
        hub.close();
        hub.set_state(ConnectionState::Reconnecting);
        assert_eq!(hub.state(), ConnectionState::Closed);
        assert_eq!(sub.recv().await, None);
        assert!(matches!(
            hub.register(&[Topic::ClientOnline], me(), InboxConfig::default()),
            Err(BrokerError::Closed)
        ));
    }

    #[tokio::test]
    async fn malformed_and_misrouted_messages_are_counted_not_delivered() {
        use tunnox_core::broker::{Origin, Publisher};
        use tunnox_core::control::UnixMillis;
        let hub = hub();
        let mut sub = hub
            .register(&[Topic::ClientOnline], me(), InboxConfig::default())
            .unwrap();
        let mut publisher = Publisher::new(Origin {
            node: NodeId::parse("a").unwrap(),
            incarnation: 1,
        });
        let e = publisher
            .stamp(Topic::ClientOnline, UnixMillis(0), Bytes::new())
            .unwrap();
        hub.deliver_raw("p.client.online", e.encode());
        hub.deliver_raw("p.client.offline", e.encode()); // wrong channel
        hub.deliver_raw("other.client.online", e.encode()); // wrong prefix
        hub.deliver_raw("p.client.online", Bytes::from_static(b"\xff\xff"));
        let stats = hub.stats();
        assert_eq!((stats.received, stats.malformed), (4, 3));
        assert_eq!(sub.recv().await, Some(BrokerEvent::Message(e)));
        sub.unsubscribe();
        assert_eq!(sub.recv().await, None, "nothing else was queued");
    }
}
