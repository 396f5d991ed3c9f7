//! The protocol a mapping carries.

use core::fmt;
use core::str::FromStr;

/// What flows through a mapping.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP byte streams.
    Tcp,
    /// UDP datagrams, one flow per visitor address.
    Udp,
    /// HTTP requests routed by Host header on a node.
    Http,
    /// SOCKS5: the visitor names the destination per connection.
    Socks5,
}

impl Protocol {
    /// The lower-case name used in configuration and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Http => "http",
            Protocol::Socks5 => "socks5",
        }
    }
}

impl fmt::Display for Protocol {
    /// The lower-case name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that is not one of `tcp`, `udp`, `http`, `socks5` (or `socks`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol `{0}` (expected tcp, udp, http or socks5)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Case-insensitive; `socks` is accepted for `socks5`, as the Go original's clients send it.
    fn from_str(s: &str) -> Result<Protocol, UnknownProtocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "http" => Ok(Protocol::Http),
            "socks5" | "socks" => Ok(Protocol::Socks5),
            _ => Err(UnknownProtocol(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Http,
            Protocol::Socks5,
        ] {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!("SOCKS".parse::<Protocol>(), Ok(Protocol::Socks5));
        assert_eq!(
            "sctp".parse::<Protocol>(),
            Err(UnknownProtocol("sctp".into()))
        );
    }
}
