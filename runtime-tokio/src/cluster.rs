//! A clustered node's coordinator: membership, client routes and the shared control state.
//!
//! Storage (Redis) is the truth, with leases; the broker only makes things faster, so a message
//! it loses (Redis pub/sub is at-most-once) costs time, never correctness:
//!
//! * **Membership.** Every node writes `{prefix}cluster:nodes[node_id] = {addr, expires_at}`
//!   each `lease / 3` and reads the whole table; a node whose record expired (or that published
//!   `node.shutdown`) is down, and the driver closes its links and forgets routes to it.
//! * **Routes.** When a client's session is established, its node sets
//!   `{prefix}cluster:route:{client} = node_id` with the lease as TTL, renews it while the session
//!   lives (only while the key is still its own), deletes it when the session ends (only if
//!   still its own), and publishes `client.online` / `client.offline`. Other nodes learn routes
//!   from those messages or read the key when an open needs one (`LookupRoute`), and re-read it
//!   when a peer says the client is not there.
//! * **Control state.** Every durable change is written to the hash `{prefix}cluster:state`
//!   (one field per object) and published on `config.update`; other nodes apply it at once, and
//!   a node starting loads the whole hash. A gap in `config.update` or a broker reconnect makes
//!   the node reload the hash and adopt what it missed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tunnox_core::broker::Topic;
use tunnox_core::control::{ClientId, NodeId};
use tunnox_core::node::{ControlState, StateChange};

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

/// Renews a route only while it is this node's (or gone): a newer claim elsewhere wins.
const RENEW_ROUTE: &str = r"
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// Deletes a route only if it is still this node's.
const RELEASE_ROUTE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

fn field_of(change: &StateChange) -> String {
    match change {
        StateChange::PutUser(u) => format!("user:{}", u.id),
        StateChange::PutClient(c) => format!("client:{}", c.id),
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
            StateChange::DeleteMapping(_) | StateChange::DeleteCode(_)
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

    /// Claims or renews `client` for `node` for `lease`; false if another node holds it.
    pub async fn hold_route(
        &self,
        client: ClientId,
        node: &NodeId,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let key = self.key(&format!("route:{client}"));
        let node = node.to_string();
        let ms = lease.as_millis() as u64;
        self.link
            .run("renew route", &key.clone(), |mut c| async move {
                redis::Script::new(RENEW_ROUTE)
                    .key(&key)
                    .arg(node)
                    .arg(ms)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|won| won == 1)
    }

    /// Takes a newly established session's route over, whoever held it.
    pub async fn claim_route(
        &self,
        client: ClientId,
        node: &NodeId,
        lease: Duration,
    ) -> Result<(), StorageError> {
        let key = self.key(&format!("route:{client}"));
        let node = node.to_string();
        self.link
            .run("claim route", &key.clone(), |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(node)
                    .arg("PX")
                    .arg(lease.as_millis() as u64)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Deletes `client`'s route if `node` still holds it.
    pub async fn release_route(&self, client: ClientId, node: &NodeId) -> Result<(), StorageError> {
        let key = self.key(&format!("route:{client}"));
        let node = node.to_string();
        self.link
            .run("release route", &key.clone(), |mut c| async move {
                redis::Script::new(RELEASE_ROUTE)
                    .key(&key)
                    .arg(node)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
    }

    /// The node holding `client`, if its route's lease holds.
    pub async fn route(&self, client: ClientId) -> Result<Option<NodeId>, StorageError> {
        let key = self.key(&format!("route:{client}"));
        let held: Option<String> = self
            .link
            .run("get route", &key.clone(), |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(held.and_then(|n| NodeId::parse(&n).ok()))
    }
}

/// What travels in `client.online` / `client.offline` payloads.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RouteNotice {
    client: ClientId,
    node: NodeId,
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
    /// Clients whose session is on this node.
    local: BTreeSet<ClientId>,
}

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
            local: BTreeSet::new(),
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
                let _ = self.store.write_change(&change).await;
                if let Ok(payload) = serde_json::to_vec(&change) {
                    let _ = self
                        .broker
                        .publish(Topic::ConfigUpdate, payload.into())
                        .await;
                }
            }
            ClusterEvent::ClientOnline(client) => {
                self.local.insert(client);
                let _ = self
                    .store
                    .claim_route(client, &me, self.settings.lease)
                    .await;
                self.announce(Topic::ClientOnline, client).await;
            }
            ClusterEvent::ClientOffline(client) => {
                self.local.remove(&client);
                let _ = self.store.release_route(client, &me).await;
                self.announce(Topic::ClientOffline, client).await;
            }
            ClusterEvent::LookupRoute(client) => {
                // An unreachable store answers "offline": the open is refused, not stuck.
                let node = self.store.route(client).await.ok().flatten();
                self.tell_node(NodeCommand::SetRoute { client, node }).await;
            }
        }
    }

    async fn announce(&self, topic: Topic, client: ClientId) {
        let notice = RouteNotice {
            client,
            node: self.settings.node_id.clone(),
        };
        if let Ok(payload) = serde_json::to_vec(&notice) {
            let _ = self.broker.publish(topic, payload.into()).await;
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
        let command = match envelope.topic {
            Topic::ConfigUpdate => serde_json::from_slice::<StateChange>(&envelope.payload)
                .ok()
                .map(|change| NodeCommand::ApplyRemote(Box::new(change))),
            Topic::ClientOnline => serde_json::from_slice::<RouteNotice>(&envelope.payload)
                .ok()
                .map(|n| NodeCommand::SetRoute {
                    client: n.client,
                    node: Some(n.node),
                }),
            Topic::ClientOffline => serde_json::from_slice::<RouteNotice>(&envelope.payload)
                .ok()
                .map(|n| NodeCommand::SetRoute {
                    client: n.client,
                    node: None,
                }),
            Topic::NodeShutdown => std::str::from_utf8(&envelope.payload)
                .ok()
                .and_then(|id| NodeId::parse(id).ok())
                .filter(|peer| self.up.remove(peer).is_some())
                .map(|peer| NodeCommand::PeerDown { peer }),
            _ => None,
        };
        if let Some(command) = command {
            self.tell_node(command).await;
        }
    }

    async fn on_tick(&mut self) {
        let me = self.settings.node_id.clone();
        let _ = self.store.heartbeat(&self.settings).await;
        for client in self.local.clone() {
            let _ = self
                .store
                .hold_route(client, &me, self.settings.lease)
                .await;
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

async fn recv_broker(
    subscription: Option<&mut crate::broker::Subscription>,
) -> Option<BrokerEvent> {
    match subscription {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
