//! A clustered node's coordinator: membership, client routes and the shared control state.
//!
//! Storage (Redis) is the truth, with leases; the broker only makes things faster, so a message
//! it loses (Redis pub/sub is at-most-once) costs time, never correctness:
//!
//! * **Membership.** Every node writes `{prefix}cluster:nodes[node_id] = {addr, expires_at}`
//!   each `lease / 3` and reads the whole table; a node whose record expired (or that published
//!   `node.shutdown`) is down, and the driver closes its links and forgets routes to it.
//! * **Routes.** When a client's session is established, its node claims the client: the route
//!   `{prefix}cluster:route:{client} = {node, epoch}` with the lease as TTL, the epoch drawn from
//!   a per-client counter that never expires. The owner renews on `core::cluster::Ownership`'s
//!   schedule, and only while the stored claim is still its own; it releases the route at
//!   session end only if still its own; claims and releases are published on `client.online` /
//!   `client.offline`. Other nodes cache routes in a `core::cluster::RouteCache` (the newest
//!   epoch wins), read storage when an open needs a route they lack, and re-read it when a peer
//!   says the client is not there. A newer claim elsewhere closes the old session (`Replaced`);
//!   an unrenewed lease closes it too (`Normal`: the client reconnects).
//! * **Kicks.** A client kicked on a node it is not connected to is disconnected by the node
//!   that holds it, through `client.disconnect`.
//! * **Control state.** Every durable change is written to the hash `{prefix}cluster:state`
//!   (one field per object) and published on `config.update`; other nodes apply it at once, and
//!   a node starting loads the whole hash. A gap in `config.update` or a broker reconnect makes
//!   the node reload the hash and adopt what it missed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tunnox_core::broker::Topic;
use tunnox_core::cluster::{
    ClientRoute, Ownership, OwnershipEvent, RenewError, RouteCache, RouteConflict, RouteLookup,
};
use tunnox_core::control::{ClientId, NodeId, UnixMillis};
use tunnox_core::node::{ControlState, StateChange};
use tunnox_core::wire::GoAwayReason;

use crate::broker::{AnyBroker, Broker, BrokerEvent};
use crate::node::{ClusterEvent, NodeCommand};
use crate::storage::{RedisConfig, RedisLink, StorageError};

/// How this node takes part.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node.
    pub node_id: NodeId,
    /// Where peers reach this node's bridge (host:port).
    pub bridge_addr: String,
    /// Node records and routes expire this long after their last renewal.
    pub lease: Duration,
}

/// The cluster's records in Redis.
#[derive(Debug, Clone)]
pub struct ClusterStore {
    link: RedisLink,
    prefix: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct NodeRecord {
    addr: String,
    expires_at_ms: u64,
}

/// Claims a route: the next epoch from the client's counter (which never expires, so epochs
/// never go back), this node, a fresh lease. Returns the epoch.
const CLAIM_ROUTE: &str = r"
local epoch = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return epoch";

/// Renews a route only while it is this node's claim (same node, same epoch); a claim whose
/// key expired is written again if no newer claim was made since (the epoch counter says so).
const RENEW_ROUTE: &str = r"
local node = redis.call('HGET', KEYS[1], 'node')
if node == false then
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
  redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', ARGV[2])
elseif node ~= ARGV[1] or redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

/// Deletes a route only if it is still this node's claim.
const RELEASE_ROUTE: &str = r"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A route with its remaining lease.
const READ_ROUTE: &str = r"
local held = redis.call('HMGET', KEYS[1], 'node', 'epoch')
if held[1] == false then return false end
return {held[1], held[2], redis.call('PTTL', KEYS[1])}";

fn field_of(change: &StateChange) -> String {
    match change {
        StateChange::PutUser(u) => format!("user:{}", u.id),
        StateChange::DeleteUser(id) => format!("user:{id}"),
        StateChange::PutClient(c) => format!("client:{}", c.id),
        StateChange::DeleteClient(id) => format!("client:{id}"),
        StateChange::PutMapping(m) => format!("mapping:{}", m.id),
        StateChange::DeleteMapping(id) => format!("mapping:{id}"),
        StateChange::PutCode(c) => format!("code:{}", c.code()),
        StateChange::DeleteCode(code) => format!("code:{code}"),
    }
}

fn wall_ms() -> u64 {
    crate::clock::wall_now().0
}

impl ClusterStore {
    /// The store at `config` (connects lazily).
    pub fn open(config: &RedisConfig) -> Result<ClusterStore, StorageError> {
        Ok(ClusterStore {
            link: RedisLink::open(config, "cluster")?,
            prefix: config.key_prefix.clone(),
        })
    }

    /// Counts every operation into `metrics` (backend `cluster`).
    pub fn with_metrics(mut self, metrics: crate::metrics::StorageMetrics) -> ClusterStore {
        self.link.report_to(metrics);
        self
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}cluster:{suffix}", self.prefix)
    }

    /// The shared control state, as every node's changes left it.
    pub async fn load_state(&self) -> Result<ControlState, StorageError> {
        let key = self.key("state");
        let fields: BTreeMap<String, Vec<u8>> = self
            .link
            .run("hgetall", &key.clone(), |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        let mut state = ControlState::default();
        for (field, value) in fields {
            let change: StateChange =
                serde_json::from_slice(&value).map_err(|e| StorageError::Corrupt {
                    table: "cluster state",
                    key: field.clone(),
                    reason: e.to_string(),
                })?;
            state.apply(&change);
        }
        Ok(state)
    }

    /// Writes one change to the shared state.
    pub async fn write_change(&self, change: &StateChange) -> Result<(), StorageError> {
        let key = self.key("state");
        let field = field_of(change);
        let deleted = matches!(
            change,
            StateChange::DeleteUser(_)
                | StateChange::DeleteClient(_)
                | StateChange::DeleteMapping(_)
                | StateChange::DeleteCode(_)
        );
        let value = serde_json::to_vec(change).map_err(|e| StorageError::Refused {
            backend: "cluster",
            reason: e.to_string(),
        })?;
        self.link
            .run("hset", &field.clone(), |mut c| async move {
                let mut cmd = if deleted {
                    redis::cmd("HDEL")
                } else {
                    redis::cmd("HSET")
                };
                cmd.arg(&key).arg(&field);
                if !deleted {
                    cmd.arg(value);
                }
                cmd.query_async::<()>(&mut c).await
            })
            .await
    }

    /// Writes this node's record with a fresh lease.
    pub async fn heartbeat(&self, settings: &ClusterSettings) -> Result<(), StorageError> {
        let key = self.key("nodes");
        let record = NodeRecord {
            addr: settings.bridge_addr.clone(),
            expires_at_ms: wall_ms() + settings.lease.as_millis() as u64,
        };
        let value = serde_json::to_string(&record).unwrap_or_default();
        let field = settings.node_id.to_string();
        self.link
            .run("hset", &field.clone(), |mut c| async move {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&field)
                    .arg(value)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Removes this node's record (a clean shutdown).
    pub async fn leave(&self, node: &NodeId) -> Result<(), StorageError> {
        let key = self.key("nodes");
        let field = node.to_string();
        self.link
            .run("hdel", &field.clone(), |mut c| async move {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&field)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// The nodes whose lease holds now, with their bridge addresses.
    pub async fn live_members(&self) -> Result<BTreeMap<NodeId, String>, StorageError> {
        let key = self.key("nodes");
        let fields: BTreeMap<String, String> = self
            .link
            .run("hgetall", &key.clone(), |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        let now = wall_ms();
        Ok(fields
            .into_iter()
            .filter_map(|(id, value)| {
                let record: NodeRecord = serde_json::from_str(&value).ok()?;
                let id = NodeId::parse(&id).ok()?;
                (record.expires_at_ms > now).then_some((id, record.addr))
            })
            .collect())
    }

    fn route_keys(&self, client: ClientId) -> (String, String) {
        (
            self.key(&format!("route:{client}")),
            self.key(&format!("route-epoch:{client}")),
        )
    }

    /// Claims `client` for `node` (a newly established session wins over any older claim):
    /// the route with its new epoch.
    pub async fn claim_route(
        &self,
        client: ClientId,
        node: &NodeId,
        lease: Duration,
    ) -> Result<ClientRoute, StorageError> {
        let (key, epoch_key) = self.route_keys(client);
        let id = node.to_string();
        let ms = millis(lease);
        let epoch: u64 = self
            .link
            .run("claim route", &key.clone(), |mut c| async move {
                redis::Script::new(CLAIM_ROUTE)
                    .key(&key)
                    .key(&epoch_key)
                    .arg(id)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(ClientRoute {
            client,
            node: node.clone(),
            epoch,
            lease_expires_at: crate::clock::wall_now().saturating_add(lease),
        })
    }

    /// Renews `route` (this node's claim) for `lease`; false if a newer claim replaced it or it
    /// expired.
    pub async fn renew_route(
        &self,
        route: &ClientRoute,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let (key, epoch_key) = self.route_keys(route.client);
        let (id, epoch, ms) = (route.node.to_string(), route.epoch, millis(lease));
        self.link
            .run("renew route", &key.clone(), |mut c| async move {
                redis::Script::new(RENEW_ROUTE)
                    .key(&key)
                    .key(&epoch_key)
                    .arg(id)
                    .arg(epoch)
                    .arg(ms)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|won| won == 1)
    }

    /// Deletes `route` if it is still the stored claim.
    pub async fn release_route(&self, route: &ClientRoute) -> Result<(), StorageError> {
        let (key, _) = self.route_keys(route.client);
        let (id, epoch) = (route.node.to_string(), route.epoch);
        self.link
            .run("release route", &key.clone(), |mut c| async move {
                redis::Script::new(RELEASE_ROUTE)
                    .key(&key)
                    .arg(id)
                    .arg(epoch)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
    }

    /// The stored route of `client`, if its lease holds.
    pub async fn route(&self, client: ClientId) -> Result<Option<ClientRoute>, StorageError> {
        let (key, _) = self.route_keys(client);
        let held: Option<(String, u64, i64)> = self
            .link
            .run("get route", &key.clone(), |mut c| async move {
                redis::Script::new(READ_ROUTE)
                    .key(&key)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(held.and_then(|(node, epoch, ttl_ms)| {
            let node = NodeId::parse(&node).ok()?;
            let left = Duration::from_millis(u64::try_from(ttl_ms).ok()?);
            Some(ClientRoute {
                client,
                node,
                epoch,
                lease_expires_at: crate::clock::wall_now().saturating_add(left),
            })
        }))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The coordinator task: runs until the node's command channel closes.
#[derive(Debug)]
pub struct Coordinator {
    settings: ClusterSettings,
    store: ClusterStore,
    broker: AnyBroker,
    node: Option<mpsc::Sender<NodeCommand>>,
    /// Peers currently reported up, with their addresses.
    up: BTreeMap<NodeId, String>,
    /// Routes of clients whose session is on this node, with when to renew them.
    owned: BTreeMap<ClientId, Ownership>,
    /// Routes of other nodes' clients, newest epoch kept.
    routes: RouteCache,
    /// Changes made here and not yet in storage, oldest first (retried every tick).
    unwritten: std::collections::VecDeque<StateChange>,
    /// Ticks since the shared state was last read whole.
    ticks_since_reread: u32,
    /// Where route-cache lookups and the write backlog are counted, if anywhere.
    metrics: Option<crate::metrics::StorageMetrics>,
}

/// Most changes kept for retry while storage is unreachable; past that the oldest are dropped
/// (they stay in this node's memory and reach storage with the object's next change).
const UNWRITTEN_MAX: usize = 10_000;

/// The shared state is read whole every this many ticks, whatever the broker said.
const REREAD_EVERY_TICKS: u32 = 8;

impl Coordinator {
    /// A coordinator not yet attached to its node (the node's command channel exists only once
    /// the node runs).
    pub fn new_detached(
        settings: ClusterSettings,
        store: ClusterStore,
        broker: AnyBroker,
    ) -> Coordinator {
        Coordinator {
            settings,
            store,
            broker,
            node: None,
            up: BTreeMap::new(),
            owned: BTreeMap::new(),
            routes: RouteCache::new(),
            unwritten: std::collections::VecDeque::new(),
            ticks_since_reread: 0,
            metrics: None,
        }
    }

    /// Counts route-cache hits and misses (cache `routes`) and the changes waiting for
    /// storage into `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::StorageMetrics) -> Coordinator {
        self.metrics = Some(metrics);
        self
    }

    fn count_unwritten(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.set_unwritten(self.unwritten.len());
        }
    }

    /// Attaches the node's command channel.
    pub fn attach(mut self, node: mpsc::Sender<NodeCommand>) -> Coordinator {
        self.node = Some(node);
        self
    }

    async fn tell_node(&self, command: NodeCommand) {
        if let Some(node) = &self.node {
            let _ = node.send(command).await;
        }
    }

    /// Runs until `events` closes (the node stopped) or `stop` fires; then leaves the cluster.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ClusterEvent>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let topics = [
            Topic::ClientOnline,
            Topic::ClientOffline,
            Topic::ConfigUpdate,
            Topic::ClientDisconnect,
            Topic::NodeShutdown,
        ];
        let mut subscription = self.broker.subscribe(&topics).await.ok();
        let mut tick = tokio::time::interval(self.settings.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                message = recv_broker(subscription.as_mut()) => match message {
                    Some(message) => self.on_broker(message).await,
                    None => subscription = None,
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
        let _ = self
            .broker
            .publish(
                Topic::NodeShutdown,
                Bytes::from(self.settings.node_id.to_string()),
            )
            .await;
        let _ = self.store.leave(&self.settings.node_id).await;
    }

    async fn on_event(&mut self, event: ClusterEvent) {
        let me = self.settings.node_id.clone();
        match event {
            ClusterEvent::Persisted(change) => {
                if self.unwritten.len() >= UNWRITTEN_MAX {
                    self.unwritten.pop_front();
                }
                self.unwritten.push_back(change);
                self.write_changes().await;
                self.count_unwritten();
            }
            ClusterEvent::ClientOnline(client) => {
                // Unreachable storage: the session still serves; the next tick cannot renew
                // what was never written, and other nodes find no route (opens refused).
                if let Ok(route) = self
                    .store
                    .claim_route(client, &me, self.settings.lease)
                    .await
                {
                    self.announce(Topic::ClientOnline, &route).await;
                    self.owned
                        .insert(client, Ownership::new(route, self.settings.lease));
                }
            }
            ClusterEvent::ClientOffline(client) => {
                if let Some(ownership) = self.owned.remove(&client) {
                    let _ = self.store.release_route(ownership.route()).await;
                    self.announce(Topic::ClientOffline, ownership.route()).await;
                }
            }
            ClusterEvent::Disconnect(client) => {
                if let Ok(payload) = serde_json::to_vec(&client) {
                    let _ = self
                        .broker
                        .publish(Topic::ClientDisconnect, payload.into())
                        .await;
                }
            }
            ClusterEvent::LookupRoute(client) => {
                let alive = |node: &NodeId| self.up.contains_key(node);
                let lookup = self.routes.lookup(client, wall_now(), alive);
                if let Some(metrics) = &self.metrics {
                    match lookup {
                        RouteLookup::Use(_) => metrics.hit("routes"),
                        RouteLookup::ReRead => metrics.miss("routes"),
                    }
                }
                let node = match lookup {
                    RouteLookup::Use(route) => Some(route.node),
                    // An unreachable store answers "offline": the open is refused, not stuck.
                    RouteLookup::ReRead => match self.store.route(client).await {
                        Ok(Some(route)) => {
                            self.routes.observe(route.clone());
                            Some(route.node)
                        }
                        _ => None,
                    },
                };
                self.tell_node(NodeCommand::SetRoute { client, node }).await;
            }
        }
    }

    async fn announce(&self, topic: Topic, route: &ClientRoute) {
        if let Ok(payload) = serde_json::to_vec(route) {
            let _ = self.broker.publish(topic, payload.into()).await;
        }
    }

    /// A route was announced by another node: cache it (newest epoch wins), give up a local
    /// session it supersedes, and tell the node where the client is now.
    async fn on_route_announced(&mut self, route: ClientRoute) {
        let client = route.client;
        if let Some(ownership) = self.owned.get_mut(&client)
            && ownership.claimed_elsewhere(&route) == Some(OwnershipEvent::Lost)
        {
            self.owned.remove(&client);
            let reason = GoAwayReason::Replaced;
            self.tell_node(NodeCommand::DisconnectClient { client, reason })
                .await;
        }
        self.routes.observe(route);
        let node = match self.routes.lookup(client, wall_now(), |_| true) {
            RouteLookup::Use(route) => Some(route.node),
            RouteLookup::ReRead => None,
        };
        self.tell_node(NodeCommand::SetRoute { client, node }).await;
    }

    /// A client went offline at another node: forget that claim (not a newer one).
    async fn on_route_released(&mut self, route: ClientRoute) {
        self.routes.offline(route.client, &route.node, route.epoch);
        if matches!(
            self.routes.lookup(route.client, wall_now(), |_| true),
            RouteLookup::ReRead
        ) {
            self.tell_node(NodeCommand::SetRoute {
                client: route.client,
                node: None,
            })
            .await;
        }
    }

    async fn on_broker(&mut self, event: BrokerEvent) {
        let envelope = match event {
            BrokerEvent::Message(envelope) => envelope,
            // Missed messages: storage has the truth. Routes are re-read on demand and the
            // membership table every tick; missed state changes are caught up here.
            BrokerEvent::Gap(gap) if gap.topic != Topic::ConfigUpdate => return,
            BrokerEvent::Gap(_) | BrokerEvent::Resync(_) => {
                if let Ok(state) = self.store.load_state().await {
                    self.tell_node(NodeCommand::AdoptState(Box::new(state)))
                        .await;
                }
                return;
            }
        };
        let route = || serde_json::from_slice::<ClientRoute>(&envelope.payload).ok();
        match envelope.topic {
            // This node applied its own change already (the topic comes back to its origin).
            Topic::ConfigUpdate if envelope.origin.node == self.settings.node_id => {}
            Topic::ConfigUpdate => {
                if let Ok(change) = serde_json::from_slice::<StateChange>(&envelope.payload) {
                    self.tell_node(NodeCommand::ApplyRemote(Box::new(change)))
                        .await;
                }
            }
            Topic::ClientOnline => {
                if let Some(route) = route() {
                    self.on_route_announced(route).await;
                }
            }
            Topic::ClientOffline => {
                if let Some(route) = route() {
                    self.on_route_released(route).await;
                }
            }
            Topic::ClientDisconnect => {
                if let Ok(client) = serde_json::from_slice::<ClientId>(&envelope.payload) {
                    let reason = GoAwayReason::Kicked;
                    self.tell_node(NodeCommand::DisconnectClient { client, reason })
                        .await;
                }
            }
            Topic::NodeShutdown => {
                let peer = std::str::from_utf8(&envelope.payload)
                    .ok()
                    .and_then(|id| NodeId::parse(id).ok());
                if let Some(peer) = peer
                    && self.up.remove(&peer).is_some()
                {
                    self.routes.node_gone(&peer);
                    self.tell_node(NodeCommand::PeerDown { peer }).await;
                }
            }
            _ => {}
        }
    }

    /// Writes the changes made here to storage in order, publishing each once it is written
    /// (other nodes must never learn a change storage lost); stops at the first failure.
    async fn write_changes(&mut self) {
        while let Some(change) = self.unwritten.front() {
            if self.store.write_change(change).await.is_err() {
                return;
            }
            if let Ok(payload) = serde_json::to_vec(change) {
                let _ = self
                    .broker
                    .publish(Topic::ConfigUpdate, payload.into())
                    .await;
            }
            self.unwritten.pop_front();
        }
    }

    async fn on_tick(&mut self) {
        let me = self.settings.node_id.clone();
        let _ = self.store.heartbeat(&self.settings).await;
        self.write_changes().await;
        self.count_unwritten();
        self.renew_routes().await;
        self.ticks_since_reread += 1;
        // A safety net beside gap detection: a message lost without a gap to show for it (the
        // last one before a quiet spell) is caught up within a few seconds.
        if self.ticks_since_reread >= REREAD_EVERY_TICKS && self.unwritten.is_empty() {
            self.ticks_since_reread = 0;
            if let Ok(state) = self.store.load_state().await {
                self.tell_node(NodeCommand::AdoptState(Box::new(state)))
                    .await;
            }
        }
        let Ok(mut members) = self.store.live_members().await else {
            // Storage unreachable: keep the current view until it answers again.
            return;
        };
        members.remove(&me);
        let gone: Vec<NodeId> = self
            .up
            .keys()
            .filter(|id| !members.contains_key(*id))
            .cloned()
            .collect();
        for peer in gone {
            self.up.remove(&peer);
            self.routes.node_gone(&peer);
            self.tell_node(NodeCommand::PeerDown { peer }).await;
        }
        for (peer, addr) in members {
            if self.up.get(&peer) != Some(&addr) {
                self.up.insert(peer.clone(), addr.clone());
                self.tell_node(NodeCommand::PeerUp { peer, addr }).await;
            }
        }
    }
}

impl Coordinator {
    /// Renews the routes of local sessions that are due (core's `Ownership` decides when); a
    /// session whose claim was taken over, or whose lease ran out unrenewed, is closed here.
    async fn renew_routes(&mut self) {
        let now = wall_now();
        let mut lost = Vec::new();
        for (client, ownership) in &mut self.owned {
            // An unrenewed lease: storage was out of reach; the client may reconnect.
            let mut reason = GoAwayReason::Normal;
            let event = match ownership.handle_timeout(now) {
                Some(OwnershipEvent::Renew(renewal)) => {
                    let result = match self.store.renew_route(&renewal, self.settings.lease).await {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            // A newer session of this client claimed it elsewhere.
                            reason = GoAwayReason::Replaced;
                            Err(RenewError::Conflict(RouteConflict {
                                owner: renewal.node.clone(),
                                epoch: renewal.epoch,
                            }))
                        }
                        Err(_) => Err(RenewError::Unavailable),
                    };
                    ownership.renewed(&renewal, result)
                }
                other => other,
            };
            if event == Some(OwnershipEvent::Lost) {
                lost.push((*client, reason));
            }
        }
        for (client, reason) in lost {
            self.owned.remove(&client);
            self.tell_node(NodeCommand::DisconnectClient { client, reason })
                .await;
        }
    }
}

fn wall_now() -> UnixMillis {
    crate::clock::wall_now()
}

async fn recv_broker(
    subscription: Option<&mut crate::broker::Subscription>,
) -> Option<BrokerEvent> {
    match subscription {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
