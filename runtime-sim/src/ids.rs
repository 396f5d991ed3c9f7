//! Identifiers of hosts and connection ends in a simulated world.

use std::fmt;

/// A host of the world: an index in the order hosts were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub u32);

impl HostId {
    /// The host's index as a `usize` (for tables).
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{}", self.0)
    }
}

/// One end of a stream connection, as its host sees it; world-unique and never reused.
///
/// A connection has two ends with two ids (`2k` for the connector, `2k + 1` for the acceptor), so
/// a host connected to itself still tells its two ends apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The connector's end of connection number `key`.
    pub(crate) const fn connector(key: u64) -> ConnId {
        ConnId(key << 1)
    }

    /// The acceptor's end of connection number `key`.
    pub(crate) const fn acceptor(key: u64) -> ConnId {
        ConnId((key << 1) | 1)
    }

    /// The connection this end belongs to.
    pub(crate) const fn key(self) -> u64 {
        self.0 >> 1
    }

    /// Which end this is: 0 = connector, 1 = acceptor.
    pub(crate) const fn end(self) -> usize {
        (self.0 & 1) as usize
    }

    /// The id of the other end of the same connection.
    pub const fn peer(self) -> ConnId {
        ConnId(self.0 ^ 1)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}", self.key(), self.end())
    }
}

/// A port number on a host (stream listeners and datagram sockets have separate port spaces).
pub type Port = u16;
