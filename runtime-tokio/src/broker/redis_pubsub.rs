//! The Redis broker: `PUBLISH` on a multiplexed connection, and one pub/sub connection per broker
//! that a background task keeps subscribed to what the subscriptions want.
//!
//! Redis pub/sub is at most once: a message published while this node's subscriber connection is
//! down is lost for it. The task notices a lost connection when the socket closes or a periodic
//! `PING` goes unanswered, reconnects with backoff, subscribes again, and tells every
//! subscription to resync; the inbox reports the lost sequence numbers as a gap once the origin
//! publishes again. A failed publish drops the connection; the next publish opens a new one.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink};
use redis::{AsyncConnectionConfig, ConnectionAddr};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};
use tunnox_core::broker::{Envelope, Origin, Publisher, TopicSet};
use tunnox_core::rng::Rng;
use tunnox_core::session::Backoff;

use super::hub::Hub;
use super::{BrokerConfig, BrokerError, BrokerKind, ConnectionState, RemoteTransport};

/// A broker over Redis pub/sub (cheap to clone: clones share connections and publish as the same
/// origin).
#[derive(Debug, Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<BrokerConfig>,
    client: redis::Client,
    origin: Origin,
    hub: Arc<Hub>,
    publisher: Mutex<Publisher>,
    /// The publishing connection; `None` until the first publish and after a failure.
    connection: Mutex<Option<MultiplexedConnection>>,
    subscriber_addr: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// Dropped with the broker, which ends the subscriber task.
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("origin", &self.origin)
            .field("state", &self.hub.state())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the Redis server of `config` (which must be [`BrokerKind::Redis`]), publishing
    /// as `origin`; `rng` jitters reconnect delays. Fails if the first connection fails.
    pub async fn connect(
        config: BrokerConfig,
        origin: Origin,
        rng: Rng,
    ) -> Result<RedisBroker, BrokerError> {
        config.validate()?;
        let BrokerKind::Redis { url } = &config.kind else {
            return Err(BrokerError::Config("RedisBroker needs a Redis URL".into()));
        };
        let connect_error = |reason: String| BrokerError::Connect {
            url: url.clone(),
            reason,
        };
        let client = redis::Client::open(url.as_str()).map_err(|e| connect_error(e.to_string()))?;
        let (pubsub, local_addr) = open_pubsub(&client, config.connect_timeout)
            .await
            .map_err(connect_error)?;
        let config = Arc::new(config);
        let hub = Hub::new(
            config.subscription_capacity,
            config.channel_prefix.clone(),
            ConnectionState::Connecting,
        );
        let subscriber_addr = Arc::new(std::sync::Mutex::new(Some(local_addr)));
        let (shutdown, shutdown_rx) = watch::channel(());
        let task = SubscriberTask {
            client: client.clone(),
            config: config.clone(),
            hub: hub.clone(),
            backoff: Backoff::new(config.reconnect.clone(), rng),
            local_addr: subscriber_addr.clone(),
            shutdown: shutdown_rx,
        };
        let mut state = hub.watch_state();
        tokio::spawn(task.run(pubsub));
        // The task subscribes nothing yet, so it is connected at once unless Redis just went away.
        let _ = tokio::time::timeout(
            config.request_timeout,
            state.wait_for(|s| *s != ConnectionState::Connecting),
        )
        .await;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                config,
                client,
                origin: origin.clone(),
                hub,
                publisher: Mutex::new(Publisher::new(origin)),
                connection: Mutex::new(None),
                subscriber_addr,
                _shutdown: shutdown,
            }),
        })
    }

    /// The local address of the subscriber connection as Redis sees it (`CLIENT LIST` `addr`),
    /// while connected.
    pub fn subscriber_local_addr(&self) -> Option<SocketAddr> {
        *self
            .inner
            .subscriber_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `envelope` with `PUBLISH`, opening the connection first if needed.
    async fn send(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        let channel = self.inner.config.channel(envelope.topic);
        let result = self.send_bytes(&channel, envelope.encode()).await;
        self.inner.hub.count_publish(envelope.topic, result.is_ok());
        result
    }

    async fn send_bytes(&self, channel: &str, bytes: Bytes) -> Result<(), BrokerError> {
        let config = &self.inner.config;
        let mut slot = self.inner.connection.lock().await;
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => {
                let options = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.request_timeout));
                let opened = self
                    .inner
                    .client
                    .get_multiplexed_async_connection_with_config(&options)
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
                slot.insert(opened)
            }
        };
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(bytes.as_ref());
        let publish = command.query_async::<i64>(connection);
        match tokio::time::timeout(config.request_timeout, publish).await {
            Ok(Ok(_receivers)) => Ok(()),
            Ok(Err(e)) => {
                *slot = None;
                Err(BrokerError::Unavailable(e.to_string()))
            }
            Err(_) => {
                *slot = None;
                Err(BrokerError::Timeout(config.request_timeout))
            }
        }
    }
}

impl RemoteTransport for RedisBroker {
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
        RedisBroker::send(self, envelope).await
    }
}

/// Opens a pub/sub connection over a socket of our own, so that its local address is known.
async fn open_pubsub(
    client: &redis::Client,
    timeout: Duration,
) -> Result<(PubSub, SocketAddr), String> {
    let info = client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err("only redis:// URLs over TCP are supported (built without TLS)".into());
    };
    let open = async {
        let stream = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        let pubsub = PubSub::new(info.redis_settings(), stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((pubsub, local))
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
}

/// Keeps the broker's pub/sub connection up and subscribed.
struct SubscriberTask {
    client: redis::Client,
    config: Arc<BrokerConfig>,
    hub: Arc<Hub>,
    backoff: Backoff,
    local_addr: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    shutdown: watch::Receiver<()>,
}

/// Why [`SubscriberTask::serve`] returned.
enum Ended {
    /// The broker was dropped.
    Shutdown,
    /// The connection failed; `established` if it had been fully subscribed.
    Lost { established: bool },
}

impl SubscriberTask {
    async fn run(mut self, first: PubSub) {
        let mut next = Some(first);
        loop {
            let pubsub = match next.take() {
                Some(pubsub) => pubsub,
                None => match self.reconnect().await {
                    Some(pubsub) => pubsub,
                    None => break,
                },
            };
            match self.serve(pubsub).await {
                Ended::Shutdown => break,
                Ended::Lost { established } => {
                    if established {
                        self.backoff.reset();
                    }
                    self.set_local_addr(None);
                    self.hub.set_state(ConnectionState::Reconnecting);
                }
            }
        }
        self.hub.close();
    }

    fn set_local_addr(&self, addr: Option<SocketAddr>) {
        *self
            .local_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = addr;
    }

    /// Retries with backoff until connected (`None`: the broker was dropped meanwhile).
    async fn reconnect(&mut self) -> Option<PubSub> {
        loop {
            let delay = self.backoff.next_delay();
            tokio::select! {
                _ = self.shutdown.changed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            if let Ok((pubsub, addr)) = open_pubsub(&self.client, self.config.connect_timeout).await
            {
                self.set_local_addr(Some(addr));
                return Some(pubsub);
            }
        }
    }

    /// Subscribes what is wanted, then relays messages until the connection fails.
    async fn serve(&mut self, pubsub: PubSub) -> Ended {
        let (mut sink, mut stream) = pubsub.split();
        let mut wanted = self.hub.wanted();
        let mut subscribed = TopicSet::EMPTY;
        let target = *wanted.borrow_and_update();
        if self.sync(&mut sink, &mut subscribed, target).await.is_err() {
            return Ended::Lost { established: false };
        }
        self.hub.set_active(subscribed);
        self.hub.set_state(ConnectionState::Connected);
        let period = self.config.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Ended::Shutdown,
                message = stream.next() => match message {
                    Some(message) => self.hub.deliver_raw(
                        message.get_channel_name(),
                        Bytes::copy_from_slice(message.get_payload_bytes()),
                    ),
                    None => return Ended::Lost { established: true },
                },
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return Ended::Shutdown;
                    }
                    let target = *wanted.borrow_and_update();
                    if self.sync(&mut sink, &mut subscribed, target).await.is_err() {
                        return Ended::Lost { established: true };
                    }
                    self.hub.set_active(subscribed);
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        self.config.request_timeout,
                        sink.ping::<redis::Value>(),
                    );
                    if !matches!(pong.await, Ok(Ok(_))) {
                        return Ended::Lost { established: true };
                    }
                }
            }
        }
    }

    /// Subscribes and unsubscribes channels so that exactly `target` is subscribed.
    async fn sync(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut TopicSet,
        target: TopicSet,
    ) -> Result<(), ()> {
        let channels = |set: TopicSet, not_in: TopicSet| -> Vec<String> {
            set.iter()
                .filter(|t| !not_in.contains(*t))
                .map(|t| self.config.channel(t))
                .collect()
        };
        let add = channels(target, *subscribed);
        let remove = channels(*subscribed, target);
        let timeout = self.config.request_timeout;
        if !add.is_empty() {
            match tokio::time::timeout(timeout, sink.subscribe(&add)).await {
                Ok(Ok(())) => {}
                _ => return Err(()),
            }
        }
        if !remove.is_empty() {
            match tokio::time::timeout(timeout, sink.unsubscribe(&remove)).await {
                Ok(Ok(())) => {}
                _ => return Err(()),
            }
        }
        *subscribed = target;
        Ok(())
    }
}
