//! Network addresses as users write them in mappings and node records: `host:port`, where the host
//! is an IP literal (IPv6 in brackets) or a DNS name.
//!
//! This is pure parsing: nothing here resolves names or binds sockets.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

/// Longest DNS name accepted, in characters (RFC 1035 limit, without the trailing dot).
pub const DNS_NAME_MAX_CHARS: usize = 253;
/// Longest DNS label accepted, in characters (RFC 1035).
pub const DNS_LABEL_MAX_CHARS: usize = 63;

/// Why a string is not an acceptable DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`DNS_NAME_MAX_CHARS`].
    #[error("must be at most 253 characters")]
    TooLong,
    /// Two dots in a row, or a leading or trailing dot.
    #[error("must not have empty labels (leading, trailing or double dots)")]
    EmptyLabel,
    /// One label is longer than [`DNS_LABEL_MAX_CHARS`].
    #[error("labels must be at most 63 characters")]
    LabelTooLong,
    /// A label starts or ends with `-`.
    #[error("labels must not start or end with `-`")]
    HyphenAtEdge,
    /// A character outside the allowed set.
    #[error("may only contain letters, digits, `-` and `.`")]
    BadChar,
    /// A character outside the allowed set, where `_` would also have been allowed.
    #[error("may only contain letters, digits, `-`, `_` and `.`")]
    BadCharLenient,
    /// An upper-case letter where only lower case is accepted.
    #[error("must be lower case")]
    Uppercase,
    /// The last label is all digits, so it is neither a name nor a well-formed IPv4 address.
    #[error("is neither a valid IP address nor a host name")]
    NumericTopLabel,
}

/// Checks a host name to be dialled or bound: labels of letters, digits, `-` and `_` (container
/// service names such as `my_db` resolve in practice), any case.
pub fn check_host_name(name: &str) -> Result<(), NameProblem> {
    check_dns_name(name, true, false)
}

/// Checks a virtual-host name to route on: strict letters-digits-hyphen labels, lower case only, so
/// that the stored name is its own routing key.
pub fn check_http_host(name: &str) -> Result<(), NameProblem> {
    check_dns_name(name, false, true)
}

fn check_dns_name(
    name: &str,
    allow_underscore: bool,
    lowercase_only: bool,
) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > DNS_NAME_MAX_CHARS {
        return Err(NameProblem::TooLong);
    }
    let mut last_label = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameProblem::EmptyLabel);
        }
        if label.len() > DNS_LABEL_MAX_CHARS {
            return Err(NameProblem::LabelTooLong);
        }
        for c in label.chars() {
            let ok = c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_');
            if !ok {
                return Err(if allow_underscore {
                    NameProblem::BadCharLenient
                } else {
                    NameProblem::BadChar
                });
            }
            if lowercase_only && c.is_ascii_uppercase() {
                return Err(NameProblem::Uppercase);
            }
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameProblem::HyphenAtEdge);
        }
        last_label = label;
    }
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameProblem::NumericTopLabel);
    }
    Ok(())
}

/// Why a string is not a valid `host:port` (or bare host).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Nothing was given.
    #[error("must not be empty")]
    Empty,
    /// No `:port` after the host.
    #[error("must be host:port")]
    MissingPort,
    /// The port is not a number in 1-65535.
    #[error("port must be 1-65535")]
    BadPort,
    /// An IPv6 literal without brackets.
    #[error("IPv6 addresses must be in brackets, e.g. [::1]:8080")]
    Ipv6NeedsBrackets,
    /// Brackets that do not hold a valid IPv6 address (zone ids are not supported).
    #[error("brackets must hold an IPv6 address")]
    BadIpv6,
    /// The host is neither an IP literal nor an acceptable DNS name.
    #[error("host {0}")]
    BadHost(NameProblem),
}

/// A host: an IP literal or a DNS name (stored as written).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, resolved later by whoever dials.
    Name(String),
}

impl Host {
    /// Parses a bare host: an IPv4 literal, an IPv6 literal (bracketed or not) or a host name.
    pub fn parse(s: &str) -> Result<Host, AddrError> {
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return Ipv6Addr::from_str(inner)
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| AddrError::BadIpv6);
        }
        if s.contains(':') {
            return Ipv6Addr::from_str(s)
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| AddrError::BadIpv6);
        }
        parse_unbracketed_v4_or_name(s)
    }

    /// Whether the host certainly means this machine's loopback: a loopback IP or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(name) => name.eq_ignore_ascii_case("localhost"),
        }
    }

    /// Whether the host is the unspecified address (`0.0.0.0` or `::`), i.e. "all interfaces".
    pub fn is_unspecified(&self) -> bool {
        matches!(self, Host::Ip(ip) if ip.is_unspecified())
    }
}

fn parse_unbracketed_v4_or_name(s: &str) -> Result<Host, AddrError> {
    if let Ok(ip) = Ipv4Addr::from_str(s) {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    check_host_name(s).map_err(AddrError::BadHost)?;
    Ok(Host::Name(s.to_owned()))
}

impl fmt::Display for Host {
    /// IPv6 literals are bracketed, so the output can be followed by `:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A parsed `host:port` with a non-zero port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// The host part.
    pub host: Host,
    /// The port, 1-65535.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port`: `127.0.0.1:80`, `[::1]:80`, `db.internal:5432`.
    pub fn parse(s: &str) -> Result<HostPort, AddrError> {
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or(AddrError::BadIpv6)?;
            let ip = Ipv6Addr::from_str(inner).map_err(|_| AddrError::BadIpv6)?;
            let port = after.strip_prefix(':').ok_or(AddrError::MissingPort)?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(AddrError::MissingPort)?;
            if host.contains(':') {
                return Err(AddrError::Ipv6NeedsBrackets);
            }
            if host.is_empty() {
                return Err(AddrError::BadHost(NameProblem::Empty));
            }
            (parse_unbracketed_v4_or_name(host)?, port)
        };
        Ok(HostPort {
            host,
            port: parse_port(port).ok_or(AddrError::BadPort)?,
        })
    }
}

/// A port of 1-5 ASCII digits in 1-65535 (no sign, no spaces).
pub fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

impl fmt::Display for HostPort {
    /// `host:port`, with IPv6 hosts bracketed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hp(s: &str) -> Result<HostPort, AddrError> {
        HostPort::parse(s)
    }

    #[test]
    fn good_addresses_parse() {
        let a = hp("127.0.0.1:13306").unwrap();
        assert_eq!(a.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(a.port, 13306);
        let b = hp("[::1]:8080").unwrap();
        assert_eq!(b.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(b.to_string(), "[::1]:8080");
        let c = hp("db.internal:5432").unwrap();
        assert_eq!(c.host, Host::Name("db.internal".into()));
        assert!(
            hp("my_db:3306").is_ok(),
            "container service names have underscores"
        );
        assert!(hp("Example.COM:65535").is_ok());
        assert!(hp("[::ffff:10.0.0.1]:1").is_ok());
        assert!(hp("localhost:1").unwrap().host.is_loopback());
    }

    #[test]
    fn bad_addresses_are_rejected_with_the_reason() {
        assert_eq!(hp(""), Err(AddrError::Empty));
        assert_eq!(hp("127.0.0.1"), Err(AddrError::MissingPort));
        assert_eq!(hp("127.0.0.1:0"), Err(AddrError::BadPort));
        assert_eq!(hp("127.0.0.1:65536"), Err(AddrError::BadPort));
        assert_eq!(hp("127.0.0.1:+80"), Err(AddrError::BadPort));
        assert_eq!(hp("127.0.0.1: 80"), Err(AddrError::BadPort));
        assert_eq!(hp("127.0.0.1:"), Err(AddrError::BadPort));
        assert_eq!(hp("::1:80"), Err(AddrError::Ipv6NeedsBrackets));
        assert_eq!(hp("[::1]"), Err(AddrError::MissingPort));
        assert_eq!(hp("[::1]80"), Err(AddrError::MissingPort));
        assert_eq!(hp("[1.2.3.4]:80"), Err(AddrError::BadIpv6));
        assert_eq!(hp("[fe80::1%eth0]:80"), Err(AddrError::BadIpv6));
        assert_eq!(hp("[::1:80"), Err(AddrError::BadIpv6));
        assert_eq!(hp(":80"), Err(AddrError::BadHost(NameProblem::Empty)));
        assert_eq!(
            hp("999.1.1.1:80"),
            Err(AddrError::BadHost(NameProblem::NumericTopLabel))
        );
        assert_eq!(
            hp("a..b:80"),
            Err(AddrError::BadHost(NameProblem::EmptyLabel))
        );
        assert_eq!(
            hp("-a.b:80"),
            Err(AddrError::BadHost(NameProblem::HyphenAtEdge))
        );
        assert_eq!(
            hp("a b:80"),
            Err(AddrError::BadHost(NameProblem::BadCharLenient))
        );
        assert_eq!(
            hp(" a:80"),
            Err(AddrError::BadHost(NameProblem::BadCharLenient))
        );
        let long_label = format!("{}.com:80", "a".repeat(64));
        assert_eq!(
            hp(&long_label),
            Err(AddrError::BadHost(NameProblem::LabelTooLong))
        );
        let long_name = format!("{}a:80", "abcdefghi.".repeat(26));
        assert_eq!(
            hp(&long_name),
            Err(AddrError::BadHost(NameProblem::TooLong))
        );
    }

    #[test]
    fn http_hosts_are_strict() {
        assert!(check_http_host("app.example.com").is_ok());
        assert!(check_http_host("localhost").is_ok());
        assert_eq!(
            check_http_host("App.example.com"),
            Err(NameProblem::Uppercase)
        );
        assert_eq!(
            check_http_host("my_app.example.com"),
            Err(NameProblem::BadChar)
        );
        assert_eq!(
            check_http_host("app.example.com:80"),
            Err(NameProblem::BadChar)
        );
        assert_eq!(check_http_host("*.example.com"), Err(NameProblem::BadChar));
        assert_eq!(
            check_http_host("10.0.0.1"),
            Err(NameProblem::NumericTopLabel)
        );
        assert_eq!(
            check_http_host("example.com."),
            Err(NameProblem::EmptyLabel)
        );
        assert_eq!(check_http_host(""), Err(NameProblem::Empty));
    }

    #[test]
    fn bare_hosts_parse() {
        assert_eq!(
            Host::parse("0.0.0.0").unwrap(),
            Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
        assert!(Host::parse("::").unwrap().is_unspecified());
        assert!(Host::parse("[::]").unwrap().is_unspecified());
        assert_eq!(Host::parse("::g"), Err(AddrError::BadIpv6));
        assert_eq!(Host::parse(""), Err(AddrError::Empty));
        assert!(Host::parse("eth0.local").is_ok());
        assert!(!Host::parse("10.0.0.1").unwrap().is_loopback());
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_good_results_round_trip(s in "\\PC{0,40}") {
            if let Ok(a) = HostPort::parse(&s) {
                prop_assert_eq!(HostPort::parse(&a.to_string()), Ok(a));
            }
        }

        #[test]
        fn socket_addresses_round_trip(ip in any::<IpAddr>(), port in 1u16..) {
            let a = HostPort { host: Host::Ip(ip), port };
            prop_assert_eq!(HostPort::parse(&a.to_string()), Ok(a));
        }
    }
}
