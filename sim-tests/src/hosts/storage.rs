//! A simulated Redis holding the cluster's records, reachable only over the simulated network:
//! node records with leases, client routes with leases (claim always wins, renewal only while
//! still the holder, release only by the holder), and the shared control state. It mirrors what
//! `runtime-tokio::cluster::ClusterStore` asks of Redis (including its Lua scripts); a node cut
//! off from it times out and keeps its view, and leases run out on the storage's own clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tunnox_core::control::{ClientId, NodeId};
use tunnox_core::node::{ControlState, StateChange};
use tunnox_core::planted::{PlantedBug, active};
use tunnox_runtime_sim::{ConnId, Duration, Host, HostCtx, HostEvent, Instant, Port};

use super::frames::{FrameReader, frame};

/// Port the storage listens on.
pub const STORAGE_PORT: Port = 6379;

/// A request to storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoreRequest {
    /// The whole shared control state.
    LoadState,
    /// Apply one change to the shared state.
    WriteChange(StateChange),
    /// Write `node`'s membership record, valid for `lease_ms` from now.
    Heartbeat {
        /// The node.
        node: NodeId,
        /// Lease length.
        lease_ms: u64,
    },
    /// Remove `node`'s membership record (a clean shutdown).
    Leave {
        /// The node.
        node: NodeId,
    },
    /// The nodes whose record's lease holds.
    Members,
    /// Take `client`'s route for `node`, whoever held it (a new session).
    ClaimRoute {
        /// The client.
        client: ClientId,
        /// The claiming node.
        node: NodeId,
        /// Lease length.
        lease_ms: u64,
    },
    /// Renew each client's route for `node` if it is still `node`'s or gone.
    HoldRoutes {
        /// The renewing node.
        node: NodeId,
        /// Its clients.
        clients: Vec<ClientId>,
        /// Lease length.
        lease_ms: u64,
    },
    /// Delete `client`'s route if `node` still holds it.
    ReleaseRoute {
        /// The client.
        client: ClientId,
        /// The releasing node.
        node: NodeId,
    },
    /// The node holding `client`, if its route's lease holds.
    GetRoute {
        /// The client.
        client: ClientId,
    },
}

/// Storage's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoreReply {
    /// Done.
    Done,
    /// The shared state.
    State(Box<ControlState>),
    /// Live members.
    Members(Vec<NodeId>),
    /// Per client of `HoldRoutes`: renewed or not.
    Held(Vec<bool>),
    /// The route.
    Route(Option<NodeId>),
}

/// One request or reply on the wire, with the id that pairs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tagged<T> {
    /// The requester's id.
    pub id: u64,
    /// The body.
    pub body: T,
}

/// Encodes a tagged message as one frame.
pub fn encode<T: Serialize>(id: u64, body: T) -> bytes::Bytes {
    let bytes = serde_json::to_vec(&Tagged { id, body }).unwrap_or_default();
    frame(&bytes)
}

/// What storage did, for the report and coverage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Requests served.
    pub requests: u64,
    /// Route claims.
    pub claims: u64,
    /// Claims that took a route another node held (the client moved).
    pub routes_moved: u64,
    /// Renewals accepted.
    pub renewals_accepted: u64,
    /// Renewals refused (another node holds the route).
    pub renewals_refused: u64,
    /// Releases refused (another node holds the route).
    pub releases_refused: u64,
    /// Routes found expired (their holder stopped renewing).
    pub routes_expired: u64,
    /// State changes written.
    pub writes: u64,
}

#[derive(Debug, Clone)]
struct Route {
    node: NodeId,
    expires_at: Instant,
}

/// The storage host (see the module docs). Its records survive a crash (an append-only file).
#[derive(Debug)]
pub struct StorageHost {
    state: ControlState,
    nodes: BTreeMap<NodeId, Instant>,
    routes: BTreeMap<ClientId, Route>,
    readers: BTreeMap<ConnId, FrameReader>,
    stats: StorageStats,
    violation: Option<String>,
}

impl StorageHost {
    /// Storage holding `state` and nothing else.
    pub fn new(state: ControlState) -> StorageHost {
        StorageHost {
            state,
            nodes: BTreeMap::new(),
            routes: BTreeMap::new(),
            readers: BTreeMap::new(),
            stats: StorageStats::default(),
            violation: None,
        }
    }

    /// The shared control state.
    pub fn state(&self) -> &ControlState {
        &self.state
    }

    /// Counters.
    pub fn stats(&self) -> &StorageStats {
        &self.stats
    }

    /// The holder of `client`'s route at host-local time `now`, if its lease holds.
    pub fn route(&self, client: ClientId, now: Instant) -> Option<&NodeId> {
        self.routes
            .get(&client)
            .filter(|r| r.expires_at > now)
            .map(|r| &r.node)
    }

    /// The route of `client` with its lease, dropping it if expired.
    fn live_route(&mut self, client: ClientId, now: Instant) -> Option<&Route> {
        if self
            .routes
            .get(&client)
            .is_some_and(|r| r.expires_at <= now)
        {
            self.routes.remove(&client);
            self.stats.routes_expired += 1;
        }
        self.routes.get(&client)
    }

    fn serve(&mut self, now: Instant, request: StoreRequest, ctx: &mut HostCtx<'_>) -> StoreReply {
        self.stats.requests += 1;
        let lease = |ms: u64| Duration::from_millis(ms);
        match request {
            StoreRequest::LoadState => StoreReply::State(Box::new(self.state.clone())),
            StoreRequest::WriteChange(change) => {
                self.stats.writes += 1;
                self.state.apply(&change);
                StoreReply::Done
            }
            StoreRequest::Heartbeat { node, lease_ms } => {
                self.nodes.insert(node, now + lease(lease_ms));
                StoreReply::Done
            }
            StoreRequest::Leave { node } => {
                self.nodes.remove(&node);
                StoreReply::Done
            }
            StoreRequest::Members => StoreReply::Members(
                self.nodes
                    .iter()
                    .filter(|(_, at)| **at > now || active(PlantedBug::MembershipLeaseIgnored))
                    .map(|(n, _)| n.clone())
                    .collect(),
            ),
            StoreRequest::ClaimRoute {
                client,
                node,
                lease_ms,
            } => {
                self.stats.claims += 1;
                if self.live_route(client, now).is_some_and(|r| r.node != node) {
                    self.stats.routes_moved += 1;
                    ctx.count("route_moved_between_nodes");
                }
                let expires_at = now + lease(lease_ms);
                self.routes.insert(client, Route { node, expires_at });
                StoreReply::Done
            }
            StoreRequest::HoldRoutes {
                node,
                clients,
                lease_ms,
            } => {
                let mut held = Vec::with_capacity(clients.len());
                for client in clients {
                    // The Lua script's check: only the holder renews.
                    let mine = self.live_route(client, now).is_none_or(|r| r.node == node);
                    if mine {
                        self.stats.renewals_accepted += 1;
                        let expires_at = now + lease(lease_ms);
                        self.routes.insert(
                            client,
                            Route {
                                node: node.clone(),
                                expires_at,
                            },
                        );
                    } else {
                        self.stats.renewals_refused += 1;
                        ctx.count("route_renewal_refused");
                    }
                    held.push(mine);
                }
                StoreReply::Held(held)
            }
            StoreRequest::ReleaseRoute { client, node } => {
                match self.live_route(client, now) {
                    Some(r) if r.node == node => {
                        self.routes.remove(&client);
                    }
                    Some(_) => self.stats.releases_refused += 1,
                    None => {}
                }
                StoreReply::Done
            }
            StoreRequest::GetRoute { client } => {
                StoreReply::Route(self.live_route(client, now).map(|r| r.node.clone()))
            }
        }
    }

    fn on_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8], ctx: &mut HostCtx<'_>) {
        let Some(reader) = self.readers.get_mut(&conn) else {
            return;
        };
        reader.push(bytes);
        loop {
            let Some(reader) = self.readers.get_mut(&conn) else {
                return;
            };
            let payload = match reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    self.violation = Some(format!("storage: corrupt stream on {conn}: {e:?}"));
                    return;
                }
            };
            let request: Tagged<StoreRequest> = match serde_json::from_slice(&payload) {
                Ok(r) => r,
                Err(e) => {
                    self.violation = Some(format!("storage: bad request on {conn}: {e}"));
                    return;
                }
            };
            let reply = self.serve(now, request.body, ctx);
            let _ = ctx.send(conn, encode(request.id, reply));
        }
    }
}

impl Host for StorageHost {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => {
                let _ = ctx.listen(STORAGE_PORT);
            }
            HostEvent::Accepted { conn, .. } => {
                self.readers.insert(conn, FrameReader::default());
            }
            HostEvent::Data { conn, bytes } => self.on_data(now, conn, &bytes, ctx),
            HostEvent::Eof { conn } => {
                self.readers.remove(&conn);
                let _ = ctx.close(conn);
            }
            HostEvent::Reset { conn } => {
                self.readers.remove(&conn);
            }
            HostEvent::Timer
            | HostEvent::Connected { .. }
            | HostEvent::ConnectFailed { .. }
            | HostEvent::Datagram { .. } => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn crash(&mut self) {
        // Records are durable (an append-only file); connections are not.
        self.readers.clear();
    }

    fn restart(&mut self, _now: Instant, ctx: &mut HostCtx<'_>) {
        let _ = ctx.listen(STORAGE_PORT);
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.violation.clone().map_or(Ok(()), Err)
    }

    fn digest(&self) -> u64 {
        let s = &self.stats;
        s.requests ^ s.claims << 20 ^ (self.routes.len() as u64) << 40
    }
}
