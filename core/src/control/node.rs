//! A node's membership record: its addresses, version and load, kept alive by a lease.

use super::addr::HostPort;
use super::clock::UnixMillis;
use super::ids::NodeId;
use super::validation::{ValidationError, check_text};
use crate::time::Duration;

/// Longest version string, in characters.
pub const NODE_VERSION_MAX_CHARS: usize = 64;

/// How busy a node is, as it reports itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeLoad {
    /// Client sessions it serves.
    pub sessions: u32,
    /// Tunnel streams open through it.
    pub streams: u32,
}

/// What a node publishes about itself; it counts as alive until `lease_expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub node_id: NodeId,
    /// `host:port` clients connect to.
    pub client_addr: String,
    /// `host:port` other nodes open bridges to.
    pub bridge_addr: String,
    /// `host:port` of the HTTP listener (API, WebSocket transport, vhosts).
    pub http_addr: String,
    /// The node's software version.
    pub version: String,
    /// Its current load.
    pub load: NodeLoad,
    /// When the lease runs out unless renewed.
    pub lease_expires_at: UnixMillis,
}

impl NodeRecord {
    /// Whether the lease still holds at `now` (it ends at `lease_expires_at` exactly).
    pub fn is_alive(&self, now: UnixMillis) -> bool {
        now < self.lease_expires_at
    }

    /// Extends the lease to `now + lease`; never shortens it.
    pub fn renew(&mut self, now: UnixMillis, lease: Duration) {
        self.lease_expires_at = self.lease_expires_at.max(now.saturating_add(lease));
    }

    /// Checks the three addresses parse as `host:port` and the version is short plain text.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, addr) in [
            ("client_addr", &self.client_addr),
            ("bridge_addr", &self.bridge_addr),
            ("http_addr", &self.http_addr),
        ] {
            HostPort::parse(addr).map_err(|e| ValidationError::new(field, e.to_string()))?;
        }
        if self.version.is_empty() {
            return Err(ValidationError::new("version", "must not be empty"));
        }
        check_text("version", &self.version, NODE_VERSION_MAX_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NodeRecord {
        NodeRecord {
            node_id: NodeId::parse("node-1").unwrap(),
            client_addr: "203.0.113.1:7000".into(),
            bridge_addr: "10.0.0.1:50052".into(),
            http_addr: "[2001:db8::1]:9000".into(),
            version: "0.1.0".into(),
            load: NodeLoad {
                sessions: 3,
                streams: 40,
            },
            lease_expires_at: UnixMillis(10_000),
        }
    }

    #[test]
    fn alive_until_the_lease_ends_and_renewal_extends_it() {
        let mut r = record();
        assert!(r.is_alive(UnixMillis(9_999)));
        assert!(!r.is_alive(UnixMillis(10_000)));
        r.renew(UnixMillis(9_000), Duration::from_secs(30));
        assert_eq!(r.lease_expires_at, UnixMillis(39_000));
        r.renew(UnixMillis(1_000), Duration::from_secs(1));
        assert_eq!(
            r.lease_expires_at,
            UnixMillis(39_000),
            "renewal never shortens"
        );
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(record().validate(), Ok(()));
        let mut r = record();
        r.client_addr = "nowhere".into();
        assert_eq!(r.validate().unwrap_err().field, "client_addr");
        let mut r = record();
        r.bridge_addr = "10.0.0.1:0".into();
        assert_eq!(r.validate().unwrap_err().field, "bridge_addr");
        let mut r = record();
        r.http_addr = "::1:9000".into();
        assert_eq!(r.validate().unwrap_err().field, "http_addr");
        let mut r = record();
        r.version = String::new();
        assert_eq!(r.validate().unwrap_err().field, "version");
        r.version = "v".repeat(65);
        assert_eq!(r.validate().unwrap_err().field, "version");
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&record()).unwrap();
        assert_eq!(serde_json::from_str::<NodeRecord>(&json).unwrap(), record());
        assert!(serde_json::from_str::<NodeRecord>(&json.replace("node-1", "Node 1")).is_err());
    }
}
