//! The simulated network: link model, TCP-like stream connections and datagrams.

mod datagram;
mod latency;
mod links;
mod stream;

pub use datagram::DatagramConfig;
pub use latency::LatencyModel;
pub(crate) use links::Links;
pub(crate) use stream::Conn;

use crate::ids::{ConnId, HostId, Port};
use std::collections::{BTreeMap, BTreeSet};
use tunnox_core::rng::Rng;
use tunnox_core::time::{Duration, Instant};

/// Parameters of the simulated network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Default one-way latency of every link.
    pub latency: LatencyModel,
    /// Serialization rate of each directed host-to-host link, bytes per second (0 = unlimited).
    pub bandwidth_bytes_per_sec: u64,
    /// Probability that one `send` is delivered as several `Data` pieces.
    pub split_probability: f64,
    /// Most pieces one split `send` is cut into (at least 2).
    pub split_pieces_max: u32,
    /// Probability, per already-arrived next piece, that it is merged into the current delivery.
    pub coalesce_probability: f64,
    /// How long a connection attempt waits for the handshake before `ConnectFailed(Timeout)`.
    pub connect_timeout: Duration,
    /// A direction stalled (partition, clog, hold) this long with bytes pending resets the
    /// connection at both ends.
    pub stall_reset_after: Duration,
    /// Loss, duplication and reordering of datagrams.
    pub datagram: DatagramConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: LatencyModel::default(),
            bandwidth_bytes_per_sec: 125_000_000,
            split_probability: 0.2,
            split_pieces_max: 4,
            coalesce_probability: 0.25,
            connect_timeout: Duration::from_secs(3),
            stall_reset_after: Duration::from_secs(10),
            datagram: DatagramConfig::default(),
        }
    }
}

/// Why a host's network call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The id is not one of this host's live connection ends.
    #[error("connection {0} is not a live connection of this host")]
    UnknownConn(ConnId),
    /// The connection has not been established yet.
    #[error("connection {0} is not connected yet")]
    NotConnected(ConnId),
    /// This end already shut down writing.
    #[error("connection {0} is shut down for writing")]
    WriteShut(ConnId),
    /// The network reset the connection; the host is about to be told `Reset`.
    #[error("connection {0} was reset")]
    ConnectionReset(ConnId),
    /// Something already listens on (or is bound to) the port.
    #[error("port {0} is already in use")]
    PortInUse(Port),
    /// No datagram socket is bound to the port.
    #[error("port {0} is not bound")]
    PortNotBound(Port),
}

/// Network-side state of one host.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetHost {
    /// Running (not crashed, started).
    pub(crate) up: bool,
    /// Stream listeners.
    pub(crate) listeners: BTreeSet<Port>,
    /// Bound datagram ports.
    pub(crate) udp_ports: BTreeSet<Port>,
    /// Inbound throttle (bytes per second) and the token of the fault that set it.
    pub(crate) throttle: Option<(u64, u32)>,
    /// When the throttled inbound queue drains.
    pub(crate) inbound_free_at: Instant,
}

/// The world's network: hosts' sockets, links, live connections and the network's RNG streams.
#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) config: NetConfig,
    pub(crate) hosts: Vec<NetHost>,
    pub(crate) links: Links,
    pub(crate) conns: BTreeMap<u64, Conn>,
    pub(crate) next_conn_key: u64,
    /// Pipes whose head delivery is blocked: `(connection key, direction)`.
    pub(crate) stalled: BTreeSet<(u64, u8)>,
    /// When each directed link is free to serialize the next bytes.
    pub(crate) link_free_at: BTreeMap<(HostId, HostId), Instant>,
    pub(crate) stream_rng: Rng,
    pub(crate) datagram_rng: Rng,
    /// Knob: deliver stream bytes one at a time.
    pub(crate) bytewise: bool,
    /// Knob: ten times as many latency-tail samples.
    pub(crate) heavy_tail: bool,
}

/// Serialization time of `len` bytes at `bytes_per_sec` (0 = instant).
pub(crate) fn serialization(len: usize, bytes_per_sec: u64) -> Duration {
    if bytes_per_sec == 0 {
        return Duration::ZERO;
    }
    let ns = (len as u128 * 1_000_000_000).div_ceil(u128::from(bytes_per_sec));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl Network {
    /// A network with no hosts.
    pub(crate) fn new(config: NetConfig, stream_rng: Rng, datagram_rng: Rng) -> Network {
        Network {
            config,
            hosts: Vec::new(),
            links: Links::default(),
            conns: BTreeMap::new(),
            next_conn_key: 0,
            stalled: BTreeSet::new(),
            link_free_at: BTreeMap::new(),
            stream_rng,
            datagram_rng,
            bytewise: false,
            heavy_tail: false,
        }
    }

    /// Adds the next host.
    pub(crate) fn add_host(&mut self, cuttable: bool) {
        self.hosts.push(NetHost::default());
        self.links.add_host(cuttable);
    }

    /// Starts listening on `port`.
    pub(crate) fn listen(&mut self, host: HostId, port: Port) -> Result<(), NetError> {
        let h = self
            .hosts
            .get_mut(host.index())
            .ok_or(NetError::PortInUse(port))?;
        if h.listeners.insert(port) {
            Ok(())
        } else {
            Err(NetError::PortInUse(port))
        }
    }

    /// Stops listening on `port` (established connections stay).
    pub(crate) fn unlisten(&mut self, host: HostId, port: Port) {
        if let Some(h) = self.hosts.get_mut(host.index()) {
            h.listeners.remove(&port);
        }
    }

    /// Binds a datagram socket to `port`.
    pub(crate) fn bind_udp(&mut self, host: HostId, port: Port) -> Result<(), NetError> {
        let h = self
            .hosts
            .get_mut(host.index())
            .ok_or(NetError::PortInUse(port))?;
        if h.udp_ports.insert(port) {
            Ok(())
        } else {
            Err(NetError::PortInUse(port))
        }
    }

    /// Unbinds the datagram socket on `port`.
    pub(crate) fn unbind_udp(&mut self, host: HostId, port: Port) {
        if let Some(h) = self.hosts.get_mut(host.index()) {
            h.udp_ports.remove(&port);
        }
    }

    /// Number of connections the network still tracks (any end not yet forgotten).
    pub(crate) fn live_connections(&self) -> usize {
        self.conns.len()
    }
}
