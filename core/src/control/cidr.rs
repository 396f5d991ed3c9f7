//! IP networks in CIDR notation, for per-mapping source allow-lists.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

/// Why a string is not a CIDR network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Nothing was given.
    #[error("must not be empty")]
    Empty,
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IP address")]
    BadAddress(String),
    /// The part after `/` is not a decimal number.
    #[error("`{0}` is not a prefix length")]
    BadPrefix(String),
    /// The prefix length is longer than the address (32 for IPv4, 128 for IPv6).
    #[error("prefix length {prefix_len} is longer than {max}")]
    PrefixTooLong {
        /// The prefix length given.
        prefix_len: u8,
        /// The longest prefix the address family allows.
        max: u8,
    },
    /// Bits beyond the prefix are set, e.g. `10.0.0.1/8`; the network meant is `canonical`.
    #[error("address has bits set beyond the prefix; did you mean {canonical}?")]
    HostBitsSet {
        /// The network with host bits cleared.
        canonical: Cidr,
    },
}

/// An IPv4 or IPv6 network: an address with all bits beyond `prefix_len` zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address as a 128-bit number; IPv4 sits in the low 32 bits.
fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A mask with the top `prefix_len` of `width` bits set, in the low `width` bits.
fn mask(prefix_len: u8, width: u8) -> u128 {
    let all: u128 = if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if prefix_len == 0 {
        0
    } else if prefix_len >= width {
        all
    } else {
        all & !(all >> prefix_len)
    }
}

fn with_bits(family: IpAddr, value: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

impl Cidr {
    /// The network `addr/prefix_len`; fails if the prefix is too long or host bits are set.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong { prefix_len, max });
        }
        let network = bits(addr) & mask(prefix_len, max);
        if network != bits(addr) {
            let canonical = Cidr {
                addr: with_bits(addr, network),
                prefix_len,
            };
            return Err(CidrError::HostBitsSet { canonical });
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The network containing exactly `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix_len: max_prefix(addr),
        }
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The number of leading bits that identify the network.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is inside this network; an IPv4 address and its IPv4-mapped IPv6 form
    /// (`::ffff:a.b.c.d`, as seen on dual-stack sockets) are treated as the same address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, ip) => ip,
        };
        let m = mask(self.prefix_len, max_prefix(self.addr));
        bits(ip) & m == bits(self.addr)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a host route).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        if s.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| CidrError::BadAddress(addr.to_owned()))?;
        let prefix_len = match prefix {
            None => max_prefix(addr),
            Some(p) => {
                let digits_only =
                    !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                let parsed = if digits_only {
                    p.parse::<u8>().ok()
                } else {
                    None
                };
                parsed.ok_or_else(|| CidrError::BadPrefix(p.to_owned()))?
            }
        };
        Cidr::new(addr, prefix_len)
    }
}

impl fmt::Display for Cidr {
    /// Always `addr/len`, also for host routes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        struct CidrVisitor;
        impl serde::de::Visitor<'_> for CidrVisitor {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR network such as \"10.0.0.0/8\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cidr, E> {
                Cidr::from_str(v).map_err(E::custom)
            }
        }
        d.deserialize_str(CidrVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_host_routes() {
        assert_eq!(c("10.0.0.0/8").prefix_len(), 8);
        assert_eq!(c("::1/128").addr(), ip("::1"));
        assert_eq!(c("192.168.1.7"), Cidr::host(ip("192.168.1.7")));
        assert_eq!(c("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(c("2001:db8::"), Cidr::host(ip("2001:db8::")));
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("::/0").prefix_len(), 0);
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!("".parse::<Cidr>(), Err(CidrError::Empty));
        assert_eq!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::BadAddress("10.0.0".into()))
        );
        assert_eq!("/8".parse::<Cidr>(), Err(CidrError::BadAddress("".into())));
        assert_eq!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::BadPrefix("".into()))
        );
        assert_eq!(
            "10.0.0.0/+8".parse::<Cidr>(),
            Err(CidrError::BadPrefix("+8".into()))
        );
        assert_eq!(
            "10.0.0.0/8/8".parse::<Cidr>(),
            Err(CidrError::BadPrefix("8/8".into()))
        );
        assert_eq!(
            "10.0.0.0/300".parse::<Cidr>(),
            Err(CidrError::BadPrefix("300".into()))
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                prefix_len: 33,
                max: 32
            })
        );
        assert_eq!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                prefix_len: 129,
                max: 128
            })
        );
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err,
            CidrError::HostBitsSet {
                canonical: c("10.0.0.0/8")
            }
        );
        assert!(err.to_string().contains("10.0.0.0/8"));
        assert!(" 10.0.0.0/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn contains_checks_the_prefix_and_maps_ipv4_in_ipv6() {
        let net = c("10.0.0.0/8");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::10.1.2.3")));
        assert!(c("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("::ffff:0:0/96").contains(ip("1.2.3.4")));
        assert!(c("::1").contains(ip("::1")));
        assert!(!c("::1").contains(ip("::2")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let net = c("172.16.0.0/12");
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(json, "\"172.16.0.0/12\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), net);
        assert!(serde_json::from_str::<Cidr>("\"172.16.0.1/12\"").is_err());
        assert!(serde_json::from_str::<Cidr>("12").is_err());
    }

    fn any_cidr() -> impl Strategy<Value = Cidr> {
        (any::<IpAddr>(), any::<u8>()).prop_map(|(addr, len)| {
            let len = len % (max_prefix(addr) + 1);
            let addr = with_bits(addr, bits(addr) & mask(len, max_prefix(addr)));
            Cidr::new(addr, len).unwrap()
        })
    }

    /// The `i`-th most significant bit of an address, computed from its octets.
    fn bit(octets: &[u8], i: usize) -> bool {
        octets[i / 8] & (0x80 >> (i % 8)) != 0
    }

    fn octets(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// Bit-by-bit prefix comparison; IPv4 is compared with IPv6 through its mapped form.
    fn naive_contains(net: Cidr, probe: IpAddr) -> bool {
        let probe = match (net.addr(), probe) {
            (IpAddr::V4(_), IpAddr::V6(p)) => match p.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(p)) => IpAddr::V6(p.to_ipv6_mapped()),
            _ => probe,
        };
        let (a, b) = (octets(net.addr()), octets(probe));
        (0..usize::from(net.prefix_len())).all(|i| bit(&a, i) == bit(&b, i))
    }

    proptest! {
        #[test]
        fn display_from_str_round_trip(net in any_cidr()) {
            prop_assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
        }

        #[test]
        fn contains_agrees_with_a_bitwise_comparison(net in any_cidr(), probe in any::<IpAddr>()) {
            prop_assert_eq!(net.contains(probe), naive_contains(net, probe));
        }

        #[test]
        fn contains_agrees_near_the_network(net in any_cidr(), flip in any::<u128>(), shift in 0u32..128) {
            let probe = with_bits(net.addr(), bits(net.addr()) ^ (flip >> shift));
            prop_assert_eq!(net.contains(probe), naive_contains(net, probe));
        }

        #[test]
        fn a_network_contains_its_own_address_and_its_last(net in any_cidr()) {
            prop_assert!(net.contains(net.addr()));
            let width = max_prefix(net.addr());
            let last = with_bits(net.addr(), bits(net.addr()) | (!mask(net.prefix_len(), width) & mask(width, width)));
            prop_assert!(net.contains(last));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,50}") {
            let _ = s.parse::<Cidr>();
        }
    }
}
