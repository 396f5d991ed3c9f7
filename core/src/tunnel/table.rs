//! The node's table of tunnels: authorization of opens, the target's dial result, relay pairing,
//! close and reset propagation, dial timeouts and the per-mapping and per-user connection counts
//! that quotas are checked against.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use tunnox_proto::wire as pb;

use crate::control::{
    ClientId, Entry, Mapping, MappingId, MappingStatus, Quota, Target, UnixMillis, UserId,
};
use crate::session::SessionKey;
use crate::time::{Duration, Instant};
use crate::wire::{ResetReason, StreamId};

use super::payload::{OpenError, encode_open};

/// Identifies one tunnel on a node.
pub type TunnelId = u64;

/// One end of a tunnel as the node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A stream on a client session (a listen client's or a target client's).
    Stream {
        /// The session.
        session: SessionKey,
        /// The stream within it.
        stream: StreamId,
    },
    /// A visitor connection accepted by the node itself (node port, HTTP host), by driver id.
    Local(u64),
}

impl Endpoint {
    fn session(&self) -> Option<SessionKey> {
        match self {
            Endpoint::Stream { session, .. } => Some(*session),
            Endpoint::Local(_) => None,
        }
    }
}

/// An entry asks for a tunnel.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRequest {
    /// Where the visitor's bytes come from.
    pub entry: Endpoint,
    /// The authenticated client that sent the open (`None` for node-accepted visitors).
    pub from_client: Option<ClientId>,
    /// The open came over a bridge link from the peer node where the entry is: that node
    /// checked the entry side; this one serves the target, and never forwards it onward.
    pub via_peer: bool,
    /// The node already asked for the target client's route for this open (so it does not wait
    /// twice).
    pub route_asked: bool,
    /// What the entry asked for.
    pub open: pb::StreamOpen,
}

/// What the node knows that the decision needs (looked up by the driver).
#[derive(Debug, Clone, Copy)]
pub struct OpenContext<'a> {
    /// The mapping named by the request, if it exists.
    pub mapping: Option<&'a Mapping>,
    /// The quota of the mapping's owner, if it has one.
    pub owner_quota: Option<&'a Quota>,
    /// The live session of the mapping's target client on this node, if it is online here.
    pub target_session: Option<SessionKey>,
    /// Wall-clock time, for expiry.
    pub wall_now: UnixMillis,
}

/// Limits of the tunnel table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// How long the target side may take to dial before the entry is refused.
    pub open_timeout: Duration,
    /// Most tunnels on this node at once.
    pub max_tunnels: u32,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            open_timeout: Duration::from_secs(10),
            max_tunnels: 100_000,
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelOutcome {
    /// Both directions finished cleanly.
    Finished,
    /// The target side refused or failed to dial.
    DialFailed(OpenError),
    /// One end reset (or its session went away).
    Reset(ResetReason),
}

/// What the driver must do, pulled with [`TunnelTable::poll_action`].
#[derive(Debug, Clone, PartialEq)]
pub enum TunnelAction {
    /// Open a stream on the target client's session with this OPEN payload, then report it with
    /// `target_opened` (or `target_open_failed`).
    OpenTarget {
        /// The tunnel.
        tunnel: TunnelId,
        /// The target client's session.
        session: SessionKey,
        /// `StreamOpen` for the target client: the mapping and the address to dial.
        payload: Bytes,
    },
    /// Accept the entry's open (the target dialled successfully).
    AcceptEntry {
        /// The entry.
        entry: Endpoint,
    },
    /// Refuse the entry's open.
    RefuseEntry {
        /// The entry.
        entry: Endpoint,
        /// Why.
        error: OpenError,
        /// Detail for logs and the visitor side.
        message: String,
    },
    /// The other end finished writing: finish (half-close) this endpoint.
    Finish {
        /// The endpoint to finish.
        endpoint: Endpoint,
    },
    /// The other end failed: reset this endpoint.
    Reset {
        /// The endpoint to reset.
        endpoint: Endpoint,
        /// Why.
        reason: ResetReason,
    },
    /// A tunnel is gone; its counters for traffic accounting.
    Closed {
        /// The tunnel.
        tunnel: TunnelId,
        /// Its mapping.
        mapping: MappingId,
        /// Its mapping's owner.
        owner: Option<UserId>,
        /// How it ended.
        outcome: TunnelOutcome,
        /// Bytes relayed entry → target.
        bytes_to_target: u64,
        /// Bytes relayed target → entry.
        bytes_to_entry: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// Waiting for the target's dial result, until the deadline.
    Dialing { deadline: Instant },
    /// Both ends accepted; bytes flow.
    Relaying,
}

#[derive(Debug, Clone)]
struct Tunnel {
    mapping: MappingId,
    owner: Option<UserId>,
    entry: Endpoint,
    target_session: SessionKey,
    target: Option<Endpoint>,
    phase: Phase,
    entry_finished: bool,
    target_finished: bool,
    bytes_to_target: u64,
    bytes_to_entry: u64,
}

/// All tunnels of one node (sans-IO; see the module docs).
#[derive(Debug, Default)]
pub struct TunnelTable {
    config: TunnelConfig,
    tunnels: BTreeMap<TunnelId, Tunnel>,
    by_endpoint: BTreeMap<Endpoint, TunnelId>,
    per_mapping: BTreeMap<MappingId, u32>,
    per_owner: BTreeMap<UserId, u32>,
    next_id: TunnelId,
    actions: VecDeque<TunnelAction>,
}

fn pb_protocol(p: crate::control::Protocol) -> pb::Protocol {
    match p {
        crate::control::Protocol::Tcp => pb::Protocol::Tcp,
        crate::control::Protocol::Udp => pb::Protocol::Udp,
        crate::control::Protocol::Http => pb::Protocol::Http,
        crate::control::Protocol::Socks5 => pb::Protocol::Socks5,
    }
}

type Denial = (OpenError, String);

fn deny(error: OpenError, message: impl Into<String>) -> Denial {
    (error, message.into())
}

impl TunnelTable {
    /// An empty table.
    pub fn new(config: TunnelConfig) -> TunnelTable {
        TunnelTable {
            config,
            next_id: 1,
            ..TunnelTable::default()
        }
    }

    /// Tunnels alive now.
    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    /// Whether no tunnel is alive.
    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Each live tunnel's mapping and bytes so far (entry → target, target → entry).
    pub fn live_bytes(&self) -> impl Iterator<Item = (&MappingId, u64, u64)> {
        self.tunnels
            .values()
            .map(|t| (&t.mapping, t.bytes_to_target, t.bytes_to_entry))
    }

    /// Live tunnels of `mapping`.
    pub fn active_for_mapping(&self, mapping: &MappingId) -> u32 {
        self.per_mapping.get(mapping).copied().unwrap_or(0)
    }

    /// Live tunnels over all mappings of `owner`.
    pub fn active_for_owner(&self, owner: UserId) -> u32 {
        self.per_owner.get(&owner).copied().unwrap_or(0)
    }

    /// The other end of the tunnel `endpoint` belongs to, once known: where to relay its bytes.
    pub fn peer(&self, endpoint: Endpoint) -> Option<Endpoint> {
        let tunnel = self.tunnels.get(self.by_endpoint.get(&endpoint)?)?;
        if tunnel.entry == endpoint {
            tunnel.target
        } else {
            Some(tunnel.entry)
        }
    }

    /// The mapping of the tunnel `endpoint` belongs to.
    pub fn mapping_of(&self, endpoint: Endpoint) -> Option<&MappingId> {
        let tunnel = self.tunnels.get(self.by_endpoint.get(&endpoint)?)?;
        Some(&tunnel.mapping)
    }

    /// The entry of `tunnel`.
    pub fn entry_of(&self, tunnel: TunnelId) -> Option<Endpoint> {
        self.tunnels.get(&tunnel).map(|t| t.entry)
    }

    /// Whether the tunnel of `endpoint` is relaying (both ends accepted).
    pub fn is_relaying(&self, endpoint: Endpoint) -> bool {
        self.by_endpoint
            .get(&endpoint)
            .and_then(|id| self.tunnels.get(id))
            .is_some_and(|t| t.phase == Phase::Relaying)
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<TunnelAction> {
        self.actions.pop_front()
    }

    /// The earliest dial deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tunnels
            .values()
            .filter_map(|t| match t.phase {
                Phase::Dialing { deadline } => Some(deadline),
                Phase::Relaying => None,
            })
            .min()
    }

    /// Refuses entries whose target did not answer by the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<TunnelId> = self
            .tunnels
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Dialing { deadline } if now >= deadline))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.fail_dial(
                id,
                OpenError::DialTimeout,
                "the target side did not answer in time",
                true,
            );
        }
    }

    /// An entry asks for a tunnel: authorizes it against the mapping, the quotas and the target's
    /// presence. On success an `OpenTarget` action follows; otherwise a `RefuseEntry`.
    pub fn request_open(
        &mut self,
        now: Instant,
        request: OpenRequest,
        ctx: OpenContext<'_>,
    ) -> Option<TunnelId> {
        let entry = request.entry;
        if self.by_endpoint.contains_key(&entry) {
            self.actions.push_back(TunnelAction::RefuseEntry {
                entry,
                error: OpenError::Internal,
                message: "endpoint already has a tunnel".into(),
            });
            return None;
        }
        match self.authorize(&request, ctx) {
            Err((error, message)) => {
                self.actions.push_back(TunnelAction::RefuseEntry {
                    entry,
                    error,
                    message,
                });
                None
            }
            Ok((mapping, target_session, payload)) => {
                let id = self.next_id;
                self.next_id += 1;
                let owner = mapping.owner;
                *self.per_mapping.entry(mapping.id.clone()).or_insert(0) += 1;
                if let Some(owner) = owner {
                    *self.per_owner.entry(owner).or_insert(0) += 1;
                }
                self.tunnels.insert(
                    id,
                    Tunnel {
                        mapping: mapping.id.clone(),
                        owner,
                        entry,
                        target_session,
                        target: None,
                        phase: Phase::Dialing {
                            deadline: now + self.config.open_timeout,
                        },
                        entry_finished: false,
                        target_finished: false,
                        bytes_to_target: 0,
                        bytes_to_entry: 0,
                    },
                );
                self.by_endpoint.insert(entry, id);
                self.actions.push_back(TunnelAction::OpenTarget {
                    tunnel: id,
                    session: target_session,
                    payload,
                });
                Some(id)
            }
        }
    }

    fn authorize<'m>(
        &self,
        request: &OpenRequest,
        ctx: OpenContext<'m>,
    ) -> Result<(&'m Mapping, SessionKey, Bytes), Denial> {
        let open = &request.open;
        let mapping = ctx.mapping.ok_or_else(|| {
            deny(
                OpenError::MappingNotFound,
                format!("no mapping {}", open.mapping_id),
            )
        })?;
        if mapping.id.as_str() != open.mapping_id {
            return Err(deny(
                OpenError::MappingNotFound,
                "context names another mapping",
            ));
        }
        if mapping.status != MappingStatus::Active {
            return Err(deny(OpenError::NotAuthorized, "mapping is disabled"));
        }
        if mapping.is_expired(ctx.wall_now) {
            return Err(deny(OpenError::MappingExpired, "mapping has expired"));
        }
        // The entry must be the one the mapping names: its listen client, or the node itself.
        let entry_ok = match (&request.entry, &mapping.entry) {
            (Endpoint::Stream { .. }, _) if request.via_peer => true,
            (Endpoint::Stream { .. }, Entry::ClientPort { listen_client, .. })
            | (Endpoint::Stream { .. }, Entry::Socks5 { listen_client, .. }) => {
                request.from_client == Some(*listen_client)
            }
            (Endpoint::Local(_), Entry::NodePort { .. } | Entry::HttpHost { .. }) => {
                request.from_client.is_none()
            }
            _ => false,
        };
        if !entry_ok {
            return Err(deny(
                OpenError::NotAuthorized,
                "not the entry side of this mapping",
            ));
        }
        // The node decides where the target client dials; only SOCKS5 lets the visitor choose.
        let target = match (&mapping.target, &open.target) {
            // The entry node resolved the fixed target already; this node's copy of the mapping
            // decides.
            (Target::Fixed { host, port }, _) if request.via_peer => pb::TargetAddr {
                host: host.clone(),
                port: u32::from(*port),
            },
            (Target::Fixed { .. }, Some(_)) => {
                return Err(deny(
                    OpenError::NotAuthorized,
                    "this mapping's target is fixed",
                ));
            }
            (Target::Fixed { host, port }, None) => pb::TargetAddr {
                host: host.clone(),
                port: u32::from(*port),
            },
            (Target::Dynamic, Some(asked)) => {
                let port_ok = (1..=u32::from(u16::MAX)).contains(&asked.port);
                if !port_ok || crate::control::Host::parse(&asked.host).is_err() {
                    return Err(deny(
                        OpenError::NotAuthorized,
                        "requested target is not a valid host:port",
                    ));
                }
                asked.clone()
            }
            (Target::Dynamic, None) => {
                return Err(deny(
                    OpenError::NotAuthorized,
                    "a SOCKS5 open must name its target",
                ));
            }
        };
        if !mapping.options.allowed_source_cidrs.is_empty() {
            let allowed =
                visitor_ip(&open.visitor_addr).is_some_and(|ip| mapping.allows_source(ip));
            if !allowed {
                return Err(deny(
                    OpenError::SourceNotAllowed,
                    "visitor address is not allowed",
                ));
            }
        }
        let active = self.active_for_mapping(&mapping.id);
        let max = mapping.options.max_connections;
        if max > 0 && active >= max {
            return Err(deny(
                OpenError::QuotaExceeded,
                format!("mapping allows {max} connections"),
            ));
        }
        if let (Some(owner), Some(quota)) = (mapping.owner, ctx.owner_quota) {
            quota
                .check_new_connection(self.active_for_owner(owner))
                .map_err(|e| deny(OpenError::QuotaExceeded, e.to_string()))?;
        }
        if self.tunnels.len() as u64 >= u64::from(self.config.max_tunnels) {
            return Err(deny(OpenError::Overloaded, "node tunnel limit reached"));
        }
        let session = ctx
            .target_session
            .ok_or_else(|| deny(OpenError::TargetOffline, "target client is not connected"))?;
        let payload = encode_open(&pb::StreamOpen {
            mapping_id: mapping.id.as_str().to_owned(),
            target: Some(target),
            protocol: pb_protocol(mapping.protocol) as i32,
            visitor_addr: open.visitor_addr.clone(),
        });
        Ok((mapping, session, payload))
    }

    /// The driver opened the target stream for `tunnel`.
    pub fn target_opened(&mut self, tunnel: TunnelId, stream: StreamId) {
        let Some(t) = self.tunnels.get_mut(&tunnel) else {
            return;
        };
        if t.target.is_some() {
            return;
        }
        let endpoint = Endpoint::Stream {
            session: t.target_session,
            stream,
        };
        if self.by_endpoint.contains_key(&endpoint) {
            // A stream id the mux never reuses: a driver bug, refused rather than mis-paired.
            return self.fail_dial(
                tunnel,
                OpenError::Internal,
                "target stream already in use",
                false,
            );
        }
        let Some(t) = self.tunnels.get_mut(&tunnel) else {
            return;
        };
        t.target = Some(endpoint);
        let entry_finished = t.entry_finished;
        self.by_endpoint.insert(endpoint, tunnel);
        if entry_finished {
            // The entry finished before the target stream existed: pass the FIN on now.
            self.actions.push_back(TunnelAction::Finish { endpoint });
        }
    }

    /// The driver could not open the target stream (session limits): refuse the entry.
    pub fn target_open_failed(&mut self, tunnel: TunnelId, error: OpenError) {
        self.fail_dial(
            tunnel,
            error,
            "could not open a stream to the target client",
            false,
        );
    }

    /// The target answered the open: success starts the relay; failure refuses the entry.
    pub fn target_result(&mut self, target: Endpoint, result: Result<(), (OpenError, String)>) {
        let Some(&id) = self.by_endpoint.get(&target) else {
            return;
        };
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        if t.target != Some(target) || t.phase == Phase::Relaying {
            return;
        }
        match result {
            Ok(()) => {
                t.phase = Phase::Relaying;
                self.actions
                    .push_back(TunnelAction::AcceptEntry { entry: t.entry });
            }
            Err((error, message)) => {
                // The target stream is already gone (refused), so it needs no reset.
                self.by_endpoint.remove(&target);
                if let Some(t) = self.tunnels.get_mut(&id) {
                    t.target = None;
                }
                self.fail_dial(id, error, &message, false);
            }
        }
    }

    /// Counts `bytes` relayed from `from` to its peer.
    pub fn record_transfer(&mut self, from: Endpoint, bytes: u64) {
        let Some(t) = self
            .by_endpoint
            .get(&from)
            .and_then(|id| self.tunnels.get_mut(id))
        else {
            return;
        };
        if t.entry == from {
            t.bytes_to_target += bytes;
        } else {
            t.bytes_to_entry += bytes;
        }
    }

    /// `endpoint` finished writing (its FIN was read after all its data): finish its peer. When
    /// both ends have finished, the tunnel closes.
    pub fn endpoint_finished(&mut self, endpoint: Endpoint) {
        let Some(&id) = self.by_endpoint.get(&endpoint) else {
            return;
        };
        let Some(t) = self.tunnels.get_mut(&id) else {
            return;
        };
        let peer = if t.entry == endpoint {
            if t.entry_finished {
                return;
            }
            t.entry_finished = true;
            t.target
        } else {
            if t.target_finished {
                return;
            }
            t.target_finished = true;
            Some(t.entry)
        };
        if let Some(peer) = peer {
            self.actions
                .push_back(TunnelAction::Finish { endpoint: peer });
        }
        if t.entry_finished && t.target_finished {
            self.remove(id, TunnelOutcome::Finished);
        }
    }

    /// `endpoint` was reset (or its connection failed): reset its peer and drop the tunnel.
    pub fn endpoint_reset(&mut self, endpoint: Endpoint, reason: ResetReason) {
        let Some(&id) = self.by_endpoint.get(&endpoint) else {
            return;
        };
        let Some(t) = self.tunnels.get(&id) else {
            return;
        };
        let dialing = matches!(t.phase, Phase::Dialing { .. });
        if t.entry == endpoint {
            if let Some(target) = t.target {
                self.actions.push_back(TunnelAction::Reset {
                    endpoint: target,
                    reason: ResetReason::Cancel,
                });
            }
        } else if dialing {
            // The target stream died before answering: the entry gets a typed refusal.
            self.by_endpoint.remove(&endpoint);
            if let Some(t) = self.tunnels.get_mut(&id) {
                t.target = None;
            }
            return self.fail_dial(
                id,
                OpenError::DialRefused,
                "target stream reset before answering",
                false,
            );
        } else {
            self.actions.push_back(TunnelAction::Reset {
                endpoint: t.entry,
                reason: ResetReason::TargetFailed,
            });
        }
        self.remove(id, TunnelOutcome::Reset(reason));
    }

    /// A session went away: every tunnel with an end on it is reset at its other end.
    pub fn session_closed(&mut self, session: SessionKey) {
        let affected: Vec<Endpoint> = self
            .by_endpoint
            .keys()
            .filter(|e| e.session() == Some(session))
            .copied()
            .collect();
        for endpoint in affected {
            self.endpoint_reset(endpoint, ResetReason::TargetFailed);
        }
    }

    /// A mapping was deleted or disabled: its tunnels are reset at both ends.
    pub fn mapping_removed(&mut self, mapping: &MappingId) {
        let ids: Vec<TunnelId> = self
            .tunnels
            .iter()
            .filter(|(_, t)| &t.mapping == mapping)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(t) = self.tunnels.get(&id) {
                for endpoint in [Some(t.entry), t.target].into_iter().flatten() {
                    self.actions.push_back(TunnelAction::Reset {
                        endpoint,
                        reason: ResetReason::Cancel,
                    });
                }
            }
            self.remove(id, TunnelOutcome::Reset(ResetReason::Cancel));
        }
    }

    fn fail_dial(&mut self, id: TunnelId, error: OpenError, message: &str, reset_target: bool) {
        let Some(t) = self.tunnels.get(&id) else {
            return;
        };
        if reset_target && let Some(target) = t.target {
            self.actions.push_back(TunnelAction::Reset {
                endpoint: target,
                reason: ResetReason::Timeout,
            });
        }
        self.actions.push_back(TunnelAction::RefuseEntry {
            entry: t.entry,
            error,
            message: message.to_owned(),
        });
        self.remove(id, TunnelOutcome::DialFailed(error));
    }

    fn remove(&mut self, id: TunnelId, outcome: TunnelOutcome) {
        let Some(t) = self.tunnels.remove(&id) else {
            return;
        };
        self.by_endpoint.remove(&t.entry);
        if let Some(target) = t.target {
            self.by_endpoint.remove(&target);
        }
        decrement(&mut self.per_mapping, &t.mapping);
        if let Some(owner) = t.owner {
            decrement(&mut self.per_owner, &owner);
        }
        self.actions.push_back(TunnelAction::Closed {
            tunnel: id,
            mapping: t.mapping,
            owner: t.owner,
            outcome,
            bytes_to_target: t.bytes_to_target,
            bytes_to_entry: t.bytes_to_entry,
        });
    }

    /// Checks the indexes and counters against the tunnels (for tests and the simulator).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut endpoints = 0;
        let mut per_mapping: BTreeMap<&MappingId, u32> = BTreeMap::new();
        let mut per_owner: BTreeMap<UserId, u32> = BTreeMap::new();
        for (id, t) in &self.tunnels {
            for endpoint in [Some(t.entry), t.target].into_iter().flatten() {
                endpoints += 1;
                if self.by_endpoint.get(&endpoint) != Some(id) {
                    return Err(format!("tunnel {id}: endpoint {endpoint:?} not indexed"));
                }
            }
            if t.phase == Phase::Relaying && t.target.is_none() {
                return Err(format!("tunnel {id}: relaying without a target"));
            }
            *per_mapping.entry(&t.mapping).or_insert(0) += 1;
            if let Some(owner) = t.owner {
                *per_owner.entry(owner).or_insert(0) += 1;
            }
        }
        if endpoints != self.by_endpoint.len() {
            return Err("endpoint index holds endpoints of no tunnel".into());
        }
        let counted: BTreeMap<&MappingId, u32> =
            self.per_mapping.iter().map(|(k, v)| (k, *v)).collect();
        if counted != per_mapping || self.per_owner != per_owner {
            return Err("connection counters disagree with the tunnels".into());
        }
        Ok(())
    }
}

fn decrement<K: Ord + Clone>(map: &mut BTreeMap<K, u32>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// The IP of a visitor address given as `ip:port`, `[v6]:port` or a bare IP.
fn visitor_ip(addr: &str) -> Option<core::net::IpAddr> {
    if let Ok(sa) = addr.parse::<core::net::SocketAddr>() {
        return Some(sa.ip());
    }
    addr.parse().ok()
}
