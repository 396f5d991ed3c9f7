//! A node's Prometheus metrics (OpenMetrics text at `/metrics`; every name and label is listed
//! in `docs/api.md`, section Metrics): fed by the node driver from the node's notices, sampled
//! from the node once a second for the gauges and stream counters, and counted by the broker
//! ([`BrokerMetrics`]), the stores and caches ([`StorageMetrics`]) and the HTTP API
//! ([`NodeMetrics::api_request`]) where those things happen.
//!
//! Label values are bounded: reasons, directions, topics, backends and API routes are fixed
//! sets; peers are the cluster's nodes; mappings are created by administrators, and a deleted
//! mapping's series are dropped at the next sample.

mod broker;
mod storage;

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tunnox_core::control::MappingId;
use tunnox_core::node::{Node, Notice};
use tunnox_core::tunnel::TunnelOutcome;

pub use broker::{BrokerErrorLabel, BrokerMetrics, TopicLabel};
pub use storage::{BackendLabel, CacheLabel, StorageMetrics, StorageOpLabels};

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

/// Labels `mapping` and `direction`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MappingDirectionLabels {
    /// The mapping's id.
    pub mapping: String,
    /// Which way the bytes went.
    pub direction: &'static str,
}

/// One label: `side` (`sent` or `received`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabel {
    /// Which side sent it.
    pub side: &'static str,
}

/// Labels of one API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// The HTTP method.
    pub method: String,
    /// The route template matched (`/api/v1/mappings/{id}`), not the concrete path.
    pub route: String,
    /// The response status.
    pub status: u16,
}

/// Labels of an API request's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRouteLabels {
    /// The HTTP method.
    pub method: String,
    /// The route template matched.
    pub route: String,
}

/// A histogram family constructor (the buckets of API latencies).
type HistogramOf = fn() -> Histogram;

fn api_latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
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
    streams_opened: Counter,
    streams_refused: Counter,
    stream_resets: Family<SideLabel, Counter>,
    mapping_bytes: Family<MappingDirectionLabels, Counter>,
    /// Mappings with series in `mapping_bytes`, to drop those of deleted mappings.
    mappings_counted: Mutex<BTreeSet<MappingId>>,
    config_push_ack: Histogram,
    pool_streams: Family<PeerLabel, Gauge>,
    pool_utilisation: Family<PeerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    api_requests: Family<ApiRequestLabels, Counter>,
    api_latency: Family<ApiRouteLabels, Histogram, HistogramOf>,
    broker: BrokerMetrics,
    storage: StorageMetrics,
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
            streams_opened: Counter::default(),
            streams_refused: Counter::default(),
            stream_resets: Family::default(),
            mapping_bytes: Family::default(),
            mappings_counted: Mutex::new(BTreeSet::new()),
            // 500 µs to ~4 s.
            config_push_ack: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
            pool_streams: Family::default(),
            pool_utilisation: Family::default(),
            api_requests: Family::default(),
            api_latency: Family::new_with_constructor(api_latency_histogram),
            broker: BrokerMetrics::default(),
            storage: StorageMetrics::default(),
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
        r.register(
            "streams_opened",
            "Mux streams opened, by this node or its peers, over all sessions and links",
            m.streams_opened.clone(),
        );
        r.register(
            "streams_refused",
            "Stream opens of a peer refused by the mux limits or because the session was closing",
            m.streams_refused.clone(),
        );
        r.register(
            "stream_resets",
            "Mux streams reset, by which side sent the reset",
            m.stream_resets.clone(),
        );
        r.register(
            "mapping_bytes",
            "Bytes relayed by tunnels, by mapping and direction (counted as each tunnel ends)",
            m.mapping_bytes.clone(),
        );
        r.register_with_unit(
            "config_push_ack",
            "From pushing a configuration to a client to its acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            m.config_push_ack.clone(),
        );
        r.register(
            "bridge_pool_streams",
            "Streams open over the bridge links to each peer node",
            m.pool_streams.clone(),
        );
        r.register(
            "bridge_pool_utilisation",
            "Streams open over the links to each peer, as a fraction of what those links may carry",
            m.pool_utilisation.clone(),
        );
        r.register(
            "api_requests",
            "Management API requests, by method, route and status",
            m.api_requests.clone(),
        );
        r.register_with_unit(
            "api_request",
            "Management API request latency, by method and route",
            prometheus_client::registry::Unit::Seconds,
            m.api_latency.clone(),
        );
        m.broker.register(r);
        m.storage.register(r);
        NodeMetrics { registry, ..m }
    }

    /// The handle the broker counts into (clone it for `AnyBroker::report_to`).
    pub fn broker(&self) -> &BrokerMetrics {
        &self.broker
    }

    /// The handle stores and caches count into (clone it for their `with_metrics`).
    pub fn storage(&self) -> &StorageMetrics {
        &self.storage
    }

    /// One management API request: `route` is the matched route template
    /// (`/api/v1/mappings/{id}`), never the concrete path, so the series stay bounded.
    pub fn api_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.api_latency
            .get_or_create(&ApiRouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
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
                mapping,
                outcome,
                bytes_to_target,
                bytes_to_entry,
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
                self.count_mapping_bytes(mapping, *bytes_to_target, *bytes_to_entry);
            }
            Notice::ConfigAcked { after, .. } => {
                self.config_push_ack.observe(after.as_secs_f64());
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

    fn count_mapping_bytes(&self, mapping: &MappingId, to_target: u64, to_entry: u64) {
        for (direction, bytes) in [("to_target", to_target), ("to_entry", to_entry)] {
            self.mapping_bytes
                .get_or_create(&MappingDirectionLabels {
                    mapping: mapping.to_string(),
                    direction,
                })
                .inc_by(bytes);
        }
        self.mappings_counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(mapping.clone());
    }

    /// Samples the gauges and the stream counters from the node, and drops the series of
    /// mappings it no longer has.
    pub fn sample(&self, node: &Node) {
        let set = |g: &Gauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.clients_online, node.online_clients());
        set(&self.connections, node.connection_count());
        set(&self.streams_active, node.stream_count());
        set(&self.tunnels_active, node.tunnel_count());
        let mux = node.mux_stats();
        advance(
            &self.streams_opened,
            mux.streams_opened + mux.streams_accepted,
        );
        advance(&self.streams_refused, mux.opens_refused_by_limit);
        let side = |side| SideLabel { side };
        advance(
            &self.stream_resets.get_or_create(&side("sent")),
            mux.resets_sent,
        );
        advance(
            &self.stream_resets.get_or_create(&side("received")),
            mux.resets_received,
        );
        for usage in node.bridge_usage() {
            let peer = PeerLabel {
                peer: usage.peer.to_string(),
            };
            self.pool_streams
                .get_or_create(&peer)
                .set(i64::from(usage.streams));
            let utilisation = if usage.streams_max == 0 {
                0.0
            } else {
                f64::from(usage.streams) / f64::from(usage.streams_max)
            };
            self.pool_utilisation.get_or_create(&peer).set(utilisation);
        }
        let mut counted = self
            .mappings_counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counted.retain(|mapping| {
            let kept = node.state().mappings.contains_key(mapping);
            if !kept {
                for direction in ["to_target", "to_entry"] {
                    self.mapping_bytes.remove(&MappingDirectionLabels {
                        mapping: mapping.to_string(),
                        direction,
                    });
                }
            }
            kept
        });
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Moves a counter that mirrors a running total up to `total` (totals never go down).
fn advance(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}
