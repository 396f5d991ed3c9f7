//! A clustered node's coordinator in the simulator: what `runtime-tokio::cluster::Coordinator`
//! does, over simulated connections to the storage and broker hosts.
//!
//! * **Membership.** Every `lease / 3` the node writes its record (a lease) and reads the live
//!   members; a member that disappears (or publishes `node.shutdown`) is reported down. A failed
//!   or timed-out read keeps the current view.
//! * **Routes.** A session established here claims the client's route (a claim always wins)
//!   and publishes `client.online`; each tick renews the routes of local clients (only while
//!   still theirs); a session ending releases the route (only if still ours) and publishes
//!   `client.offline`. The coordinator *believes* it owns a client from an acknowledged claim or
//!   renewal until the lease it asked for runs out (counted from when it sent the request), or
//!   until a renewal is refused. The scenario checks that two nodes never believe they own one
//!   client for longer than a lease.
//! * **Shared state.** Every persisted change goes to storage in order (kept and resent until
//!   acknowledged), then out on `config.update`. A gap in `config.update`, a restarted origin, a
//!   broker reconnect or the periodic anti-entropy timer reloads the state and applies the
//!   difference (the tokio runtime does not re-read yet: docs/cluster.md "Not built").
//! * **Broker.** Messages go through the core's `Inbox` (self-filtering, de-duplication, gaps);
//!   what it delivers must be in publish order per origin and topic with no repeat. The broker
//!   link is pinged; a silent link is reset, losing what was in flight (at most once).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tunnox_core::broker::{
    Admission, DropReason, Envelope, Inbox, InboxConfig, Missing, Origin, Publisher, Topic,
};
use tunnox_core::control::{ClientId, NodeId, UnixMillis};
use tunnox_core::node::{ControlState, StateChange};
use tunnox_runtime_sim::{ConnId, Duration, HostCtx, HostId, Instant};

use super::broker::{BROKER_PORT, BrokerFrame};
use super::frames::FrameReader;
use super::storage::{STORAGE_PORT, StoreReply, StoreRequest, Tagged, encode};

/// Topics a node subscribes to.
const TOPICS: [Topic; 4] = [
    Topic::ClientOnline,
    Topic::ClientOffline,
    Topic::ConfigUpdate,
    Topic::NodeShutdown,
];

/// Wall clock of host-local time zero.
const WALL_ORIGIN: UnixMillis = UnixMillis(1_700_000_000_000);

/// How a coordinator reaches the cluster and how long its leases are.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This node.
    pub me: NodeId,
    /// The storage host.
    pub storage: HostId,
    /// The broker host.
    pub broker: HostId,
    /// Node records and routes expire this long after their last renewal.
    pub lease: Duration,
    /// A storage read not answered this long fails (the node keeps its view).
    pub request_timeout: Duration,
    /// The broker link is pinged this often and is dead after three silent intervals.
    pub broker_ping: Duration,
    /// The shared state is reloaded at least this often.
    pub resync_every: Duration,
    /// Wait before reconnecting a lost storage or broker link.
    pub reconnect_after: Duration,
}

/// What travels in `client.online` / `client.offline` payloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RouteNotice {
    client: ClientId,
    node: NodeId,
}

/// What the coordinator asks of its node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeCommand {
    /// The shared state was loaded at start: build the node on it.
    Start(Box<ControlState>),
    /// A peer is a live member.
    PeerUp(NodeId),
    /// A peer left.
    PeerDown(NodeId),
    /// Where a client is (answer to a lookup, or news from the broker).
    SetRoute(ClientId, Option<NodeId>),
    /// Another node's change.
    ApplyRemote(Box<StateChange>),
    /// The shared state re-read: apply whatever differs.
    Resync(Box<ControlState>),
}

/// A storage read waiting for its answer.
#[derive(Debug, Clone)]
enum Pending {
    Load,
    Members,
    Claim {
        client: ClientId,
        sent: Instant,
    },
    Hold {
        clients: Vec<ClientId>,
        sent: Instant,
    },
    Lookup {
        client: ClientId,
    },
    Other,
}

/// One connection to a service host, reconnected after a loss.
#[derive(Debug, Default)]
struct Line {
    conn: Option<ConnId>,
    connected: bool,
    reader: FrameReader,
    retry_at: Option<Instant>,
    last_rx: Option<Instant>,
    connects: u64,
}

impl Line {
    fn open(&mut self, ctx: &mut HostCtx<'_>, to: HostId, port: u16) {
        self.conn = Some(ctx.connect(to, port));
        self.connected = false;
        self.reader = FrameReader::default();
        self.retry_at = None;
    }

    fn lost(&mut self, now: Instant, retry_after: Duration) {
        self.conn = None;
        self.connected = false;
        self.retry_at = Some(now + retry_after);
    }

    fn is(&self, conn: ConnId) -> bool {
        self.conn == Some(conn)
    }
}

/// The coordinator (see the module docs). All of it is volatile: a crash loses it.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    store: Line,
    pending: BTreeMap<u64, (Instant, Pending)>,
    /// Writes sent on the current storage connection: request id -> outbox sequence.
    writes_in_flight: BTreeMap<u64, u64>,
    next_id: u64,
    /// Changes not yet acknowledged by storage, in order.
    outbox: VecDeque<(u64, StateChange)>,
    next_write: u64,
    broker: Line,
    next_ping: Option<Instant>,
    publisher: Publisher,
    inbox: Inbox,
    /// Highest sequence delivered per (origin, incarnation, topic): publish order, no repeat.
    delivered: BTreeMap<(NodeId, u64, Topic), u64>,
    local: BTreeSet<ClientId>,
    owned_until: BTreeMap<ClientId, Instant>,
    up: BTreeSet<NodeId>,
    started: bool,
    leaving: bool,
    next_tick: Option<Instant>,
    next_resync: Option<Instant>,
    /// When to ask again for the shared state a starting node needs.
    load_retry_at: Option<Instant>,
    /// Routes last told to the node, to notice lookups after the node dropped one as stale.
    told: BTreeMap<ClientId, NodeId>,
    stale_lookups: BTreeSet<ClientId>,
    commands: VecDeque<NodeCommand>,
    violation: Option<String>,
}

impl Coordinator {
    /// A coordinator for run `incarnation` of its node (larger after every restart).
    pub fn new(config: CoordinatorConfig, incarnation: u64) -> Coordinator {
        let me = config.me.clone();
        Coordinator {
            store: Line::default(),
            pending: BTreeMap::new(),
            writes_in_flight: BTreeMap::new(),
            next_id: 1,
            outbox: VecDeque::new(),
            next_write: 1,
            broker: Line::default(),
            next_ping: None,
            publisher: Publisher::new(Origin {
                node: me.clone(),
                incarnation,
            }),
            inbox: Inbox::new(me, InboxConfig::default()),
            delivered: BTreeMap::new(),
            local: BTreeSet::new(),
            owned_until: BTreeMap::new(),
            up: BTreeSet::new(),
            started: false,
            leaving: false,
            next_tick: None,
            next_resync: None,
            load_retry_at: None,
            told: BTreeMap::new(),
            stale_lookups: BTreeSet::new(),
            commands: VecDeque::new(),
            violation: None,
            config,
        }
    }

    /// Connects to storage and the broker and asks for the shared state.
    pub fn start(&mut self, ctx: &mut HostCtx<'_>) {
        self.store.open(ctx, self.config.storage, STORAGE_PORT);
        self.broker.open(ctx, self.config.broker, BROKER_PORT);
    }

    /// The next command for the node.
    pub fn poll_command(&mut self) -> Option<NodeCommand> {
        self.commands.pop_front()
    }

    /// Whether `conn` is the storage or broker connection.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.store.is(conn) || self.broker.is(conn)
    }

    /// Clients this node believes it owns at host-local time `now`.
    pub fn owned_at(&self, now: Instant) -> impl Iterator<Item = ClientId> + '_ {
        self.owned_until
            .iter()
            .filter(move |(_, until)| **until > now)
            .map(|(c, _)| *c)
    }

    /// Peers reported up to the node.
    pub fn peers_up(&self) -> &BTreeSet<NodeId> {
        &self.up
    }

    /// Whether both service links are up and the state was loaded.
    pub fn is_settled(&self) -> bool {
        self.started && self.store.connected && self.broker.connected && self.outbox.is_empty()
    }

    /// A one-line account of the coordinator (for failure reports).
    pub fn describe(&self) -> String {
        format!(
            "started {} leaving {} store {:?}/{} ({} connects) broker {:?}/{} ({} connects) outbox {} pending {} local {} owned {} up {:?} next tick {:?}",
            self.started,
            self.leaving,
            self.store.conn,
            self.store.connected,
            self.store.connects,
            self.broker.conn,
            self.broker.connected,
            self.broker.connects,
            self.outbox.len(),
            self.pending.len(),
            self.local.len(),
            self.owned_until.len(),
            self.up,
            self.next_tick
        )
    }

    /// A broken rule, if any.
    pub fn violation(&self) -> Option<&String> {
        self.violation.as_ref()
    }

    /// The broker inbox (for its checks and counters).
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    fn violate(&mut self, message: String) {
        if self.violation.is_none() {
            self.violation = Some(message);
        }
    }

    // ----- storage -----

    fn request(&mut self, now: Instant, ctx: &mut HostCtx<'_>, body: StoreRequest, p: Pending) {
        let (Some(conn), true) = (self.store.conn, self.store.connected) else {
            // Storage unreachable: the read fails now, as a timeout would.
            self.failed(now, p, ctx);
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let _ = ctx.send(conn, encode(id, body));
        self.pending
            .insert(id, (now + self.config.request_timeout, p));
    }

    fn send_write(&mut self, ctx: &mut HostCtx<'_>, seq: u64, change: &StateChange) {
        let (Some(conn), true) = (self.store.conn, self.store.connected) else {
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let _ = ctx.send(conn, encode(id, StoreRequest::WriteChange(change.clone())));
        self.writes_in_flight.insert(id, seq);
    }

    /// A read that got no answer: the node keeps its view.
    fn failed(&mut self, now: Instant, p: Pending, ctx: &mut HostCtx<'_>) {
        ctx.count("storage_request_failed");
        if matches!(p, Pending::Load) && !self.started {
            // The node cannot start without the shared state: ask again.
            self.load_retry_at = Some(now + self.config.reconnect_after);
        }
        if let Pending::Lookup { client } = p {
            // An unreachable store answers "offline": the open is refused, not stuck.
            self.commands.push_back(NodeCommand::SetRoute(client, None));
            self.told.remove(&client);
        }
    }

    fn on_store_reply(&mut self, now: Instant, reply: Tagged<StoreReply>, ctx: &mut HostCtx<'_>) {
        if let Some(seq) = self.writes_in_flight.remove(&reply.id) {
            // Acknowledged: durable. Only now do other nodes hear of it.
            while self.outbox.front().is_some_and(|(s, _)| *s <= seq) {
                if let Some((_, change)) = self.outbox.pop_front()
                    && let Ok(payload) = serde_json::to_vec(&change)
                {
                    self.publish(now, ctx, Topic::ConfigUpdate, payload.into());
                }
            }
            return;
        }
        let Some((_, pending)) = self.pending.remove(&reply.id) else {
            ctx.count("storage_reply_after_timeout");
            return;
        };
        match (pending, reply.body) {
            (Pending::Load, StoreReply::State(state)) => {
                if self.started && !self.outbox.is_empty() {
                    // The snapshot may miss this node's own unacknowledged writes: applying it
                    // would roll them back. Try again soon.
                    self.next_resync = Some(now + self.config.request_timeout);
                } else if self.started {
                    self.commands.push_back(NodeCommand::Resync(state));
                } else {
                    self.started = true;
                    self.next_tick = Some(now);
                    self.next_resync = Some(now + self.config.resync_every);
                    self.commands.push_back(NodeCommand::Start(state));
                }
            }
            (Pending::Members, StoreReply::Members(members)) => self.on_members(members),
            (Pending::Claim { client, sent }, StoreReply::Done) => {
                if self.local.contains(&client) {
                    self.owned_until.insert(client, sent + self.config.lease);
                }
            }
            (Pending::Hold { clients, sent }, StoreReply::Held(held)) => {
                for (client, renewed) in clients.into_iter().zip(held) {
                    if renewed && self.local.contains(&client) {
                        self.owned_until.insert(client, sent + self.config.lease);
                    } else if !renewed {
                        // Another node claimed it: whatever this node believed ends now.
                        let believed = self.owned_until.remove(&client).is_some();
                        if believed || self.local.contains(&client) {
                            ctx.count("ownership_lost_to_newer_claim");
                        }
                    }
                }
            }
            (Pending::Lookup { client }, StoreReply::Route(node)) => {
                if self.stale_lookups.remove(&client) {
                    ctx.count("lookup_answered_after_stale_route");
                }
                match &node {
                    Some(n) => self.told.insert(client, n.clone()),
                    None => self.told.remove(&client),
                };
                self.commands.push_back(NodeCommand::SetRoute(client, node));
            }
            (Pending::Other, StoreReply::Done) => {}
            (p, r) => self.violate(format!("storage answered {p:?} with {r:?}")),
        }
    }

    fn on_members(&mut self, members: Vec<NodeId>) {
        let live: BTreeSet<NodeId> = members
            .into_iter()
            .filter(|n| *n != self.config.me)
            .collect();
        for gone in self.up.difference(&live).cloned().collect::<Vec<_>>() {
            self.up.remove(&gone);
            self.commands.push_back(NodeCommand::PeerDown(gone));
        }
        for new in live.difference(&self.up).cloned().collect::<Vec<_>>() {
            self.up.insert(new.clone());
            self.commands.push_back(NodeCommand::PeerUp(new));
        }
    }

    // ----- broker -----

    fn publish(&mut self, now: Instant, ctx: &mut HostCtx<'_>, topic: Topic, payload: Bytes) {
        let wall = WALL_ORIGIN.saturating_add(Duration::from_nanos(now.as_nanos()));
        let Ok(envelope) = self.publisher.stamp(topic, wall, payload) else {
            return;
        };
        match (self.broker.conn, self.broker.connected) {
            (Some(conn), true) => {
                let _ = ctx.send(conn, BrokerFrame::Publish(envelope.encode()).encode());
            }
            // Its sequence number is used up: subscribers will see a gap.
            _ => ctx.count("broker_publish_failed"),
        }
    }

    fn announce(&mut self, now: Instant, ctx: &mut HostCtx<'_>, topic: Topic, client: ClientId) {
        let notice = RouteNotice {
            client,
            node: self.config.me.clone(),
        };
        if let Ok(payload) = serde_json::to_vec(&notice) {
            self.publish(now, ctx, topic, payload.into());
        }
    }

    fn on_broker_message(&mut self, now: Instant, bytes: Bytes, ctx: &mut HostCtx<'_>) {
        let Ok(envelope) = Envelope::decode(bytes) else {
            return self.violate("a malformed envelope reached a subscriber".into());
        };
        match self.inbox.admit(&envelope) {
            Admission::Drop(DropReason::Duplicate) => ctx.count("broker_duplicate_dropped"),
            Admission::Drop(_) => {}
            Admission::Deliver { gap } => {
                if let Some(gap) = gap {
                    ctx.count("broker_gap_detected");
                    let restart = matches!(gap.missing, Missing::Restart { .. });
                    if gap.topic == Topic::ConfigUpdate || restart {
                        self.resync(now, ctx);
                    }
                }
                let key = (
                    envelope.origin.node.clone(),
                    envelope.origin.incarnation,
                    envelope.topic,
                );
                let last = self.delivered.insert(key, envelope.seq).unwrap_or(0);
                if envelope.seq <= last {
                    return self.violate(format!(
                        "broker message {} #{} from {} delivered after #{last}",
                        envelope.topic.name(),
                        envelope.seq,
                        envelope.origin.node
                    ));
                }
                self.on_message(envelope);
            }
        }
    }

    fn on_message(&mut self, envelope: Envelope) {
        let own = envelope.origin.node == self.config.me;
        match envelope.topic {
            // This node applied its own change when it made it; an echo could only roll back a
            // newer local change.
            // Payloads come from correct coordinators: one that does not decode is a bug, not
            // noise to skip (its sequence number was already counted).
            Topic::ConfigUpdate if !own => {
                match serde_json::from_slice::<StateChange>(&envelope.payload) {
                    Ok(change) => self
                        .commands
                        .push_back(NodeCommand::ApplyRemote(Box::new(change))),
                    Err(e) => self.violate(format!("undecodable config.update: {e}")),
                }
            }
            Topic::ClientOnline => match serde_json::from_slice::<RouteNotice>(&envelope.payload) {
                Ok(n) => {
                    self.told.insert(n.client, n.node.clone());
                    self.commands
                        .push_back(NodeCommand::SetRoute(n.client, Some(n.node)));
                }
                Err(e) => self.violate(format!("undecodable client.online: {e}")),
            },
            Topic::ClientOffline => {
                match serde_json::from_slice::<RouteNotice>(&envelope.payload) {
                    Ok(n) => {
                        self.told.remove(&n.client);
                        self.commands
                            .push_back(NodeCommand::SetRoute(n.client, None));
                    }
                    Err(e) => self.violate(format!("undecodable client.offline: {e}")),
                }
            }
            Topic::NodeShutdown => {
                let peer = std::str::from_utf8(&envelope.payload)
                    .ok()
                    .and_then(|id| NodeId::parse(id).ok());
                if let Some(peer) = peer
                    && self.up.remove(&peer)
                {
                    self.commands.push_back(NodeCommand::PeerDown(peer));
                }
            }
            _ => {}
        }
    }

    fn resync(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        if self.started {
            ctx.count("state_resync");
            self.request(now, ctx, StoreRequest::LoadState, Pending::Load);
            self.next_resync = Some(now + self.config.resync_every);
        }
    }

    // ----- network events -----

    /// `conn` connected.
    pub fn on_connected(&mut self, now: Instant, conn: ConnId, ctx: &mut HostCtx<'_>) {
        if self.store.is(conn) {
            self.store.connected = true;
            self.store.connects += 1;
            let unacked: Vec<(u64, StateChange)> = self.outbox.iter().cloned().collect();
            for (seq, change) in &unacked {
                self.send_write(ctx, *seq, change);
            }
            if !self.started {
                self.request(now, ctx, StoreRequest::LoadState, Pending::Load);
            }
        } else if self.broker.is(conn) {
            self.broker.connected = true;
            self.broker.connects += 1;
            self.broker.last_rx = Some(now);
            self.next_ping = Some(now + self.config.broker_ping);
            let _ = ctx.send(conn, BrokerFrame::Subscribe(TOPICS.to_vec()).encode());
            if self.broker.connects > 1 {
                // Whatever was published while the link was down is lost: re-read.
                ctx.count("broker_reconnected");
                self.resync(now, ctx);
            }
        }
    }

    /// `conn` failed, was reset or ended.
    pub fn on_closed(&mut self, now: Instant, conn: ConnId, ctx: &mut HostCtx<'_>) {
        let retry = self.config.reconnect_after;
        if self.store.is(conn) {
            let _ = ctx.reset(conn);
            self.store.lost(now, retry);
            self.writes_in_flight.clear();
            for (_, (_, p)) in std::mem::take(&mut self.pending) {
                self.failed(now, p, ctx);
            }
        } else if self.broker.is(conn) {
            let _ = ctx.reset(conn);
            self.broker.lost(now, retry);
            self.next_ping = None;
        }
    }

    /// Bytes arrived on `conn`.
    pub fn on_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8], ctx: &mut HostCtx<'_>) {
        let line = if self.store.is(conn) {
            &mut self.store
        } else if self.broker.is(conn) {
            &mut self.broker
        } else {
            return;
        };
        line.reader.push(bytes);
        line.last_rx = Some(now);
        loop {
            let line = if self.store.is(conn) {
                &mut self.store
            } else if self.broker.is(conn) {
                &mut self.broker
            } else {
                return;
            };
            let frame = match line.reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.violate(format!("corrupt service stream {conn}: {e:?}")),
            };
            if self.store.is(conn) {
                match serde_json::from_slice::<Tagged<StoreReply>>(&frame) {
                    Ok(reply) => self.on_store_reply(now, reply, ctx),
                    Err(e) => return self.violate(format!("bad storage reply: {e}")),
                }
            } else {
                match BrokerFrame::decode(frame) {
                    Some(BrokerFrame::Message(bytes)) => self.on_broker_message(now, bytes, ctx),
                    Some(BrokerFrame::Pong) => {}
                    other => return self.violate(format!("unexpected broker frame {other:?}")),
                }
            }
        }
    }

    // ----- what the node reports -----

    /// The node persisted a change: to storage (resent until acknowledged), then the broker.
    pub fn persist(&mut self, ctx: &mut HostCtx<'_>, change: StateChange) {
        let seq = self.next_write;
        self.next_write += 1;
        self.send_write(ctx, seq, &change);
        self.outbox.push_back((seq, change));
    }

    /// A client's session was established here.
    pub fn client_online(&mut self, now: Instant, ctx: &mut HostCtx<'_>, client: ClientId) {
        self.local.insert(client);
        let claim = StoreRequest::ClaimRoute {
            client,
            node: self.config.me.clone(),
            lease_ms: self.config.lease.as_millis() as u64,
        };
        self.request(now, ctx, claim, Pending::Claim { client, sent: now });
        self.announce(now, ctx, Topic::ClientOnline, client);
    }

    /// A client's session here ended (`still_live`: another session of it is live here: the
    /// ended one was replaced).
    pub fn client_offline(
        &mut self,
        now: Instant,
        ctx: &mut HostCtx<'_>,
        client: ClientId,
        still_live: bool,
    ) {
        if still_live {
            return;
        }
        self.local.remove(&client);
        self.owned_until.remove(&client);
        let release = StoreRequest::ReleaseRoute {
            client,
            node: self.config.me.clone(),
        };
        self.request(now, ctx, release, Pending::Other);
        self.announce(now, ctx, Topic::ClientOffline, client);
    }

    /// The node needs `client`'s route.
    pub fn lookup(&mut self, now: Instant, ctx: &mut HostCtx<'_>, client: ClientId) {
        if self.told.remove(&client).is_some() {
            // The node had a route for it and dropped it: it proved stale (or its node left).
            ctx.count("lookup_after_stale_route");
            self.stale_lookups.insert(client);
        }
        self.request(
            now,
            ctx,
            StoreRequest::GetRoute { client },
            Pending::Lookup { client },
        );
    }

    /// The node leaves the cluster for good: `node.shutdown`, and its record goes.
    pub fn leave(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        self.leaving = true;
        let me = self.config.me.to_string();
        self.publish(now, ctx, Topic::NodeShutdown, Bytes::from(me));
        let leave = StoreRequest::Leave {
            node: self.config.me.clone(),
        };
        self.request(now, ctx, leave, Pending::Other);
    }

    // ----- time -----

    /// When `on_timer` must next run.
    pub fn next_timer(&self) -> Option<Instant> {
        let deadline = self.pending.values().map(|(at, _)| *at).min();
        [
            deadline,
            self.store.retry_at,
            self.broker.retry_at,
            self.next_ping,
            self.next_tick.filter(|_| !self.leaving),
            self.next_resync.filter(|_| !self.leaving),
            self.load_retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs what is due at `now`.
    pub fn on_timer(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        if self.store.retry_at.is_some_and(|at| at <= now) {
            self.store.open(ctx, self.config.storage, STORAGE_PORT);
        }
        if self.broker.retry_at.is_some_and(|at| at <= now) {
            self.broker.open(ctx, self.config.broker, BROKER_PORT);
        }
        if self.load_retry_at.is_some_and(|at| at <= now) {
            self.load_retry_at = None;
            self.request(now, ctx, StoreRequest::LoadState, Pending::Load);
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, p)) = self.pending.remove(&id) {
                ctx.count("storage_request_timeout");
                self.failed(now, p, ctx);
            }
        }
        if self.next_ping.is_some_and(|at| at <= now)
            && let Some(conn) = self.broker.conn
        {
            let silent = self
                .broker
                .last_rx
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.broker_ping * 3);
            if silent {
                // A dead link: what it still carries is lost.
                ctx.count("broker_link_declared_dead");
                self.on_closed(now, conn, ctx);
            } else {
                let _ = ctx.send(conn, BrokerFrame::Ping.encode());
                self.next_ping = Some(now + self.config.broker_ping);
            }
        }
        if !self.leaving && self.next_tick.is_some_and(|at| at <= now) {
            self.next_tick = Some(now + self.config.lease / 3);
            self.tick(now, ctx);
        }
        if !self.leaving && self.next_resync.is_some_and(|at| at <= now) {
            self.resync(now, ctx);
        }
    }

    /// Membership record, route renewals, member read.
    fn tick(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let lease_ms = self.config.lease.as_millis() as u64;
        let lapsed: Vec<ClientId> = self
            .owned_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(c, _)| *c)
            .collect();
        for client in lapsed {
            self.owned_until.remove(&client);
            if self.local.contains(&client) {
                // Its session is still here, but the lease could not be renewed in time.
                ctx.count("ownership_lost_by_lease");
            }
        }
        let me = self.config.me.clone();
        self.request(
            now,
            ctx,
            StoreRequest::Heartbeat {
                node: me.clone(),
                lease_ms,
            },
            Pending::Other,
        );
        if !self.local.is_empty() {
            let clients: Vec<ClientId> = self.local.iter().copied().collect();
            let hold = StoreRequest::HoldRoutes {
                node: me,
                clients: clients.clone(),
                lease_ms,
            };
            self.request(now, ctx, hold, Pending::Hold { clients, sent: now });
        }
        self.request(now, ctx, StoreRequest::Members, Pending::Members);
    }
}
