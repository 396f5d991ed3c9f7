//! A node's Prometheus metrics (OpenMetrics text at `/metrics`): fed by the node driver from the
//! node's notices, and sampled from the node once a second for the gauges.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tunnox_core::node::{Node, Notice};
use tunnox_core::tunnel::TunnelOutcome;

/// One label: `reason`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason's short name.
    pub reason: String,
}

/// One label: `direction` (`to_target` or `to_entry`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// Which way the bytes went.
    pub direction: &'static str,
}

/// One label: `peer` (a node id).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer node.
    pub peer: String,
}

/// The node's metrics and their registry.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    clients_online: Gauge,
    connections: Gauge,
    streams_active: Gauge,
    tunnels_active: Gauge,
    sessions_established: Counter,
    sessions_closed: Family<ReasonLabel, Counter>,
    handshake_failures: Family<ReasonLabel, Counter>,
    registrations: Counter,
    tunnels_closed: Family<ReasonLabel, Counter>,
    tunnel_bytes: Family<DirectionLabel, Counter>,
    opens_refused: Family<ReasonLabel, Counter>,
    bridge_links: Family<PeerLabel, Gauge>,
    bridge_links_closed: Family<ReasonLabel, Counter>,
    bridge_dials: Counter,
    bridge_dial_failures: Counter,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics::new()
    }
}

impl NodeMetrics {
    /// Fresh metrics, all registered under `tunnox_`.
    pub fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("tunnox");
        let m = NodeMetrics {
            clients_online: Gauge::default(),
            connections: Gauge::default(),
            streams_active: Gauge::default(),
            tunnels_active: Gauge::default(),
            sessions_established: Counter::default(),
            sessions_closed: Family::default(),
            handshake_failures: Family::default(),
            registrations: Counter::default(),
            tunnels_closed: Family::default(),
            tunnel_bytes: Family::default(),
            opens_refused: Family::default(),
            bridge_links: Family::default(),
            bridge_links_closed: Family::default(),
            bridge_dials: Counter::default(),
            bridge_dial_failures: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "clients_online",
            "Clients with a live session on this node",
            m.clients_online.clone(),
        );
        r.register(
            "connections",
            "Connections held (clients, handshakes, bridge links)",
            m.connections.clone(),
        );
        r.register(
            "streams_active",
            "Mux streams open over all sessions and links",
            m.streams_active.clone(),
        );
        r.register(
            "tunnels_active",
            "Tunnels alive on this node",
            m.tunnels_active.clone(),
        );
        r.register(
            "sessions_established",
            "Client sessions established",
            m.sessions_established.clone(),
        );
        r.register(
            "sessions_closed",
            "Client sessions ended, by reason",
            m.sessions_closed.clone(),
        );
        r.register(
            "handshake_failures",
            "Handshakes refused or failed, by reason",
            m.handshake_failures.clone(),
        );
        r.register(
            "registrations",
            "Anonymous clients registered",
            m.registrations.clone(),
        );
        r.register(
            "tunnels_closed",
            "Tunnels ended, by outcome",
            m.tunnels_closed.clone(),
        );
        r.register(
            "tunnel_bytes",
            "Bytes relayed by tunnels, by direction",
            m.tunnel_bytes.clone(),
        );
        r.register(
            "opens_refused",
            "Stream opens refused, by reason",
            m.opens_refused.clone(),
        );
        r.register(
            "bridge_links",
            "Bridge links up, per peer node",
            m.bridge_links.clone(),
        );
        r.register(
            "bridge_links_closed",
            "Bridge links ended, by reason",
            m.bridge_links_closed.clone(),
        );
        r.register(
            "bridge_dials",
            "Bridge links dialled",
            m.bridge_dials.clone(),
        );
        r.register(
            "bridge_dial_failures",
            "Bridge dials that failed",
            m.bridge_dial_failures.clone(),
        );
        NodeMetrics { registry, ..m }
    }

    /// Counts one notice of the node.
    pub fn observe(&self, notice: &Notice) {
        let reason = |r: &str| ReasonLabel {
            reason: r.to_owned(),
        };
        match notice {
            Notice::ClientOnline { .. } => {
                self.sessions_established.inc();
            }
            Notice::ClientOffline { reason: why, .. } => {
                self.sessions_closed
                    .get_or_create(&reason(why.kind()))
                    .inc();
            }
            Notice::HandshakeFailed { reason: why, .. } => {
                self.handshake_failures
                    .get_or_create(&reason(why.kind()))
                    .inc();
            }
            Notice::Registered { .. } => {
                self.registrations.inc();
            }
            Notice::TunnelClosed {
                outcome,
                bytes_to_target,
                bytes_to_entry,
                ..
            } => {
                let outcome = match outcome {
                    TunnelOutcome::Finished => "finished".to_owned(),
                    TunnelOutcome::DialFailed(e) => format!("dial_failed_{}", e.as_str_name()),
                    TunnelOutcome::Reset(r) => format!("reset_{r:?}").to_lowercase(),
                };
                self.tunnels_closed.get_or_create(&reason(&outcome)).inc();
                let to = |direction| DirectionLabel { direction };
                self.tunnel_bytes
                    .get_or_create(&to("to_target"))
                    .inc_by(*bytes_to_target);
                self.tunnel_bytes
                    .get_or_create(&to("to_entry"))
                    .inc_by(*bytes_to_entry);
            }
            Notice::OpenRefused { error, .. } => {
                self.opens_refused
                    .get_or_create(&reason(error.as_str_name()))
                    .inc();
            }
            Notice::PeerLinkUp { peer, .. } => {
                let peer = PeerLabel {
                    peer: peer.to_string(),
                };
                self.bridge_links.get_or_create(&peer).inc();
            }
            Notice::PeerLinkDown {
                peer, reason: why, ..
            } => {
                let peer = PeerLabel {
                    peer: peer.to_string(),
                };
                self.bridge_links.get_or_create(&peer).dec();
                self.bridge_links_closed
                    .get_or_create(&reason(why.kind()))
                    .inc();
            }
        }
    }

    /// A bridge dial started (`failed: false`) or failed (`failed: true`).
    pub fn bridge_dial(&self, failed: bool) {
        if failed {
            self.bridge_dial_failures.inc();
        } else {
            self.bridge_dials.inc();
        }
    }

    /// Samples the gauges from the node.
    pub fn sample(&self, node: &Node) {
        let set = |g: &Gauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.clients_online, node.online_clients());
        set(&self.connections, node.connection_count());
        set(&self.streams_active, node.stream_count());
        set(&self.tunnels_active, node.tunnel_count());
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
