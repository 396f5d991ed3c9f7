//! A mapping: the rule that makes a service one client can reach usable from an entry elsewhere.
//!
//! [`Mapping::validate`] holds the consistency rules between entry, target and protocol:
//!
//! - a `socks5` entry, a `dynamic` target and protocol `socks5` go together, never apart;
//! - an `http_host` entry and protocol `http` go together (`udp` cannot be routed by Host header,
//!   and a plain port carrying HTTP is simply `tcp`);
//! - end-to-end encryption needs a client-side entry (`client_port` or `socks5`): with a node entry
//!   the node itself terminates the visitor's connection, so there is no far end to encrypt to;
//! - a `client_port` mapping may have the same client listen and dial (a local forward relayed
//!   through the node is legitimate, e.g. for testing), unless the target is the listen address
//!   itself, which would feed every connection back into its own listener. This check is best
//!   effort: it catches what the text decides (same address, `localhost` vs loopback, a wildcard
//!   listener vs a loopback target), not a LAN address that happens to be the client's own;
//! - `expires_at`, when set, is after `created_at`.

use core::net::IpAddr;

use super::addr::{Host, HostPort};
use super::clock::UnixMillis;
use super::entry::Entry;
use super::ids::{ClientId, MappingId, UserId};
use super::options::MappingOptions;
use super::protocol::Protocol;
use super::target::Target;
use super::validation::ValidationError;

/// Whether a mapping is switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingStatus {
    /// Carries traffic (until it expires).
    Active,
    /// Kept but carries no traffic.
    Disabled,
}

/// Entry → target client → target, with protocol, options and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    /// The mapping's id.
    pub id: MappingId,
    /// The user it is charged to; `None` for mappings between anonymous clients.
    pub owner: Option<UserId>,
    /// Where visitors arrive.
    pub entry: Entry,
    /// The client that dials the target.
    pub target_client: ClientId,
    /// What the target client dials.
    pub target: Target,
    /// What flows through.
    pub protocol: Protocol,
    /// Limits, compression, encryption, source allow-list.
    pub options: MappingOptions,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it stops carrying traffic; `None` = never.
    pub expires_at: Option<UnixMillis>,
    /// Switched on or off.
    pub status: MappingStatus,
}

/// Whether a listener on `listen` would receive connections dialled to `target` (same port assumed).
fn same_listener(listen: &Host, target: &Host) -> bool {
    match (listen, target) {
        (Host::Ip(l), Host::Ip(t)) => l == t || (l.is_unspecified() && t.is_loopback()),
        (Host::Name(l), Host::Name(t)) => l.eq_ignore_ascii_case(t),
        (Host::Ip(l), Host::Name(_)) => {
            target.is_loopback() && (l.is_loopback() || l.is_unspecified())
        }
        (Host::Name(_), Host::Ip(t)) => listen.is_loopback() && t.is_loopback(),
    }
}

impl Mapping {
    /// An active, unowned TCP mapping to `host:port` with default options and no expiry.
    pub fn tcp(
        id: MappingId,
        entry: Entry,
        target_client: ClientId,
        host: impl Into<String>,
        port: u16,
        created_at: UnixMillis,
    ) -> Mapping {
        Mapping {
            id,
            owner: None,
            entry,
            target_client,
            target: Target::Fixed {
                host: host.into(),
                port,
            },
            protocol: Protocol::Tcp,
            options: MappingOptions::default(),
            created_at,
            expires_at: None,
            status: MappingStatus::Active,
        }
    }

    /// Checks every field and the rules between them (see the module docs); the error names the
    /// first offending field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.expires_at.is_some_and(|at| at <= self.created_at) {
            return Err(ValidationError::new(
                "expires_at",
                "must be after created_at",
            ));
        }
        if self.target_client.0 == 0 {
            return Err(ValidationError::new("target_client", "must not be 0"));
        }
        self.entry.validate()?;
        self.target.validate()?;
        self.options.validate()?;
        self.check_protocol()?;
        self.check_target_kind()?;
        self.check_loop()?;
        if self.options.end_to_end_encryption && self.entry.listen_client().is_none() {
            return Err(ValidationError::new(
                "options.end_to_end_encryption",
                "needs a client_port or socks5 entry (with a node entry the node is the far end)",
            ));
        }
        Ok(())
    }

    fn check_protocol(&self) -> Result<(), ValidationError> {
        let problem = match (&self.entry, self.protocol) {
            (Entry::Socks5 { .. }, Protocol::Socks5) | (Entry::HttpHost { .. }, Protocol::Http) => {
                None
            }
            (Entry::Socks5 { .. }, _) => Some("a socks5 entry needs protocol socks5"),
            (Entry::HttpHost { .. }, Protocol::Udp) => Some("udp cannot be routed by HTTP host"),
            (Entry::HttpHost { .. }, _) => Some("an http_host entry needs protocol http"),
            (_, Protocol::Socks5) => Some("protocol socks5 needs a socks5 entry"),
            (_, Protocol::Http) => {
                Some("protocol http needs an http_host entry (use tcp for a port)")
            }
            (_, Protocol::Tcp | Protocol::Udp) => None,
        };
        match problem {
            Some(p) => Err(ValidationError::new("protocol", p)),
            None => Ok(()),
        }
    }

    fn check_target_kind(&self) -> Result<(), ValidationError> {
        match (&self.entry, &self.target) {
            (Entry::Socks5 { .. }, Target::Fixed { .. }) => Err(ValidationError::new(
                "target",
                "a socks5 entry needs a dynamic target",
            )),
            (Entry::Socks5 { .. }, Target::Dynamic) | (_, Target::Fixed { .. }) => Ok(()),
            (_, Target::Dynamic) => Err(ValidationError::new(
                "target",
                "a dynamic target needs a socks5 entry",
            )),
        }
    }

    fn check_loop(&self) -> Result<(), ValidationError> {
        let Entry::ClientPort { listen_client, .. } = &self.entry else {
            return Ok(());
        };
        if *listen_client != self.target_client {
            return Ok(());
        }
        let (Some(listen), Some(target_host), Target::Fixed { port, .. }) = (
            self.entry.listen_addr(),
            self.target.fixed_host(),
            &self.target,
        ) else {
            return Ok(());
        };
        let target = HostPort {
            host: target_host,
            port: *port,
        };
        if listen.port == target.port && same_listener(&listen.host, &target.host) {
            return Err(ValidationError::new(
                "target",
                format!(
                    "{target} is the mapping's own listener on the same client (it would loop)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether the mapping has expired at `now` (it expires at `expires_at` exactly).
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Whether the mapping may carry traffic at `now`: active and not expired.
    pub fn is_usable(&self, now: UnixMillis) -> bool {
        self.status == MappingStatus::Active && !self.is_expired(now)
    }

    /// The client that listens, for client-side entries.
    pub fn listen_client(&self) -> Option<ClientId> {
        self.entry.listen_client()
    }

    /// Whether `client` plays a part in the mapping (listens or dials), i.e. must be told about it.
    pub fn involves(&self, client: ClientId) -> bool {
        self.target_client == client || self.listen_client() == Some(client)
    }

    /// Whether a visitor from `ip` may use the mapping; an empty allow-list admits everyone.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        let cidrs = &self.options.allowed_source_cidrs;
        cidrs.is_empty() || cidrs.iter().any(|net| net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const LISTEN: ClientId = ClientId(100);
    const TARGET: ClientId = ClientId(200);

    fn tcp_mapping() -> Mapping {
        Mapping {
            id: MappingId::generate(&mut Rng::seed_from_u64(1)),
            owner: Some(UserId(1)),
            entry: Entry::ClientPort {
                listen_client: LISTEN,
                listen_addr: "127.0.0.1:13306".into(),
            },
            target_client: TARGET,
            target: Target::Fixed {
                host: "10.0.0.5".into(),
                port: 3306,
            },
            protocol: Protocol::Tcp,
            options: MappingOptions::default(),
            created_at: UnixMillis(1_000),
            expires_at: Some(UnixMillis(2_000)),
            status: MappingStatus::Active,
        }
    }

    fn socks_mapping() -> Mapping {
        Mapping {
            entry: Entry::Socks5 {
                listen_client: LISTEN,
                listen_addr: "127.0.0.1:1080".into(),
            },
            target: Target::Dynamic,
            protocol: Protocol::Socks5,
            ..tcp_mapping()
        }
    }

    fn http_mapping() -> Mapping {
        Mapping {
            entry: Entry::HttpHost {
                host: "app.example.com".into(),
            },
            target: Target::Fixed {
                host: "127.0.0.1".into(),
                port: 8080,
            },
            protocol: Protocol::Http,
            ..tcp_mapping()
        }
    }

    fn node_port_mapping() -> Mapping {
        Mapping {
            entry: Entry::NodePort {
                port: 7000,
                bind: None,
            },
            ..tcp_mapping()
        }
    }

    fn with(base: Mapping, f: impl FnOnce(&mut Mapping)) -> Mapping {
        let mut m = base;
        f(&mut m);
        m
    }

    #[test]
    fn good_mappings_pass() {
        let good = [
            tcp_mapping(),
            with(tcp_mapping(), |m| m.protocol = Protocol::Udp),
            with(tcp_mapping(), |m| m.expires_at = None),
            socks_mapping(),
            http_mapping(),
            node_port_mapping(),
            with(node_port_mapping(), |m| m.protocol = Protocol::Udp),
            with(tcp_mapping(), |m| m.options.end_to_end_encryption = true),
            with(socks_mapping(), |m| m.options.end_to_end_encryption = true),
            with(node_port_mapping(), |m| m.options.compression = true),
            // Same client listening and dialling a different address: a local forward, allowed.
            with(tcp_mapping(), |m| m.target_client = LISTEN),
            with(tcp_mapping(), |m| {
                m.target_client = LISTEN;
                m.target = Target::Fixed {
                    host: "127.0.0.1".into(),
                    port: 3306,
                };
            }),
            with(tcp_mapping(), |m| {
                m.target_client = LISTEN;
                m.target = Target::Fixed {
                    host: "127.0.0.2".into(),
                    port: 13306,
                };
            }),
            with(socks_mapping(), |m| m.target_client = LISTEN),
            with(tcp_mapping(), |m| {
                m.target = Target::Fixed {
                    host: "::1".into(),
                    port: 22,
                }
            }),
        ];
        for m in good {
            assert_eq!(m.validate(), Ok(()), "{m:?}");
        }
    }

    #[test]
    fn every_rule_names_its_field() {
        let looped = |listen: &str, host: &str, port: u16| {
            with(tcp_mapping(), |m| {
                m.target_client = LISTEN;
                m.entry = Entry::ClientPort {
                    listen_client: LISTEN,
                    listen_addr: listen.into(),
                };
                m.target = Target::Fixed {
                    host: host.into(),
                    port,
                };
            })
        };
        let cases: Vec<(Mapping, &str)> = vec![
            (
                with(tcp_mapping(), |m| m.expires_at = Some(UnixMillis(1_000))),
                "expires_at",
            ),
            (
                with(tcp_mapping(), |m| m.expires_at = Some(UnixMillis(999))),
                "expires_at",
            ),
            (
                with(tcp_mapping(), |m| m.target_client = ClientId(0)),
                "target_client",
            ),
            (
                with(tcp_mapping(), |m| {
                    m.entry = Entry::ClientPort {
                        listen_client: LISTEN,
                        listen_addr: "127.0.0.1:0".into(),
                    }
                }),
                "entry.listen_addr",
            ),
            (
                with(tcp_mapping(), |m| {
                    m.entry = Entry::ClientPort {
                        listen_client: LISTEN,
                        listen_addr: "nonsense".into(),
                    }
                }),
                "entry.listen_addr",
            ),
            (
                with(socks_mapping(), |m| {
                    m.entry = Entry::Socks5 {
                        listen_client: LISTEN,
                        listen_addr: "::1:1080".into(),
                    }
                }),
                "entry.listen_addr",
            ),
            (
                with(tcp_mapping(), |m| {
                    m.entry = Entry::ClientPort {
                        listen_client: ClientId(0),
                        listen_addr: "127.0.0.1:1".into(),
                    }
                }),
                "entry.listen_client",
            ),
            (
                with(node_port_mapping(), |m| {
                    m.entry = Entry::NodePort {
                        port: 0,
                        bind: None,
                    }
                }),
                "entry.port",
            ),
            (
                with(node_port_mapping(), |m| {
                    m.entry = Entry::NodePort {
                        port: 80,
                        bind: Some("any".into()),
                    }
                }),
                "entry.bind",
            ),
            (
                with(http_mapping(), |m| {
                    m.entry = Entry::HttpHost {
                        host: "bad host".into(),
                    }
                }),
                "entry.host",
            ),
            (
                with(tcp_mapping(), |m| {
                    m.target = Target::Fixed {
                        host: "10.0.0.5".into(),
                        port: 0,
                    }
                }),
                "target.port",
            ),
            (
                with(tcp_mapping(), |m| {
                    m.target = Target::Fixed {
                        host: "a..b".into(),
                        port: 1,
                    }
                }),
                "target.host",
            ),
            (
                with(tcp_mapping(), |m| {
                    let net = "10.0.0.0/8".parse().unwrap();
                    m.options.allowed_source_cidrs = vec![net; 257];
                }),
                "options.allowed_source_cidrs",
            ),
            // socks5 entry <=> dynamic target <=> protocol socks5
            (
                with(socks_mapping(), |m| m.protocol = Protocol::Tcp),
                "protocol",
            ),
            (
                with(tcp_mapping(), |m| m.protocol = Protocol::Socks5),
                "protocol",
            ),
            (
                with(socks_mapping(), |m| {
                    m.target = Target::Fixed {
                        host: "a".into(),
                        port: 1,
                    }
                }),
                "target",
            ),
            (
                with(tcp_mapping(), |m| m.target = Target::Dynamic),
                "target",
            ),
            (
                with(node_port_mapping(), |m| m.target = Target::Dynamic),
                "target",
            ),
            // http_host <=> protocol http; udp never with http_host
            (
                with(http_mapping(), |m| m.protocol = Protocol::Tcp),
                "protocol",
            ),
            (
                with(http_mapping(), |m| m.protocol = Protocol::Udp),
                "protocol",
            ),
            (
                with(http_mapping(), |m| m.protocol = Protocol::Socks5),
                "protocol",
            ),
            (
                with(tcp_mapping(), |m| m.protocol = Protocol::Http),
                "protocol",
            ),
            (
                with(node_port_mapping(), |m| m.protocol = Protocol::Http),
                "protocol",
            ),
            // end-to-end encryption needs a client-side entry
            (
                with(node_port_mapping(), |m| {
                    m.options.end_to_end_encryption = true
                }),
                "options.end_to_end_encryption",
            ),
            (
                with(http_mapping(), |m| m.options.end_to_end_encryption = true),
                "options.end_to_end_encryption",
            ),
            // a client_port mapping looping into its own listener
            (looped("127.0.0.1:13306", "127.0.0.1", 13306), "target"),
            (looped("0.0.0.0:13306", "127.0.0.1", 13306), "target"),
            (looped("[::]:13306", "::1", 13306), "target"),
            (looped("127.0.0.1:13306", "localhost", 13306), "target"),
            (looped("localhost:13306", "127.0.0.1", 13306), "target"),
            (looped("Box.lan:13306", "box.LAN", 13306), "target"),
            (looped("10.1.1.1:13306", "10.1.1.1", 13306), "target"),
        ];
        for (m, field) in cases {
            let err = m.validate().expect_err(field);
            assert_eq!(err.field, field, "{err} for {m:?}");
        }
    }

    #[test]
    fn loop_check_only_applies_to_the_same_client() {
        let m = with(tcp_mapping(), |m| {
            m.target = Target::Fixed {
                host: "127.0.0.1".into(),
                port: 13306,
            }
        });
        assert_eq!(m.validate(), Ok(()));
        let looped = with(m, |m| m.target_client = LISTEN);
        let err = looped.validate().unwrap_err();
        assert!(err.problem.contains("loop"), "{err}");
    }

    #[test]
    fn expiry_and_usability() {
        let m = tcp_mapping();
        assert!(!m.is_expired(UnixMillis(1_999)));
        assert!(m.is_expired(UnixMillis(2_000)));
        assert!(m.is_usable(UnixMillis(1_500)));
        assert!(!m.is_usable(UnixMillis(2_000)));
        let disabled = with(tcp_mapping(), |m| m.status = MappingStatus::Disabled);
        assert!(!disabled.is_usable(UnixMillis(1_500)));
        let forever = with(tcp_mapping(), |m| m.expires_at = None);
        assert!(forever.is_usable(UnixMillis(u64::MAX)));
    }

    #[test]
    fn listen_client_and_involvement() {
        assert_eq!(tcp_mapping().listen_client(), Some(LISTEN));
        assert_eq!(socks_mapping().listen_client(), Some(LISTEN));
        assert_eq!(http_mapping().listen_client(), None);
        assert_eq!(node_port_mapping().listen_client(), None);
        assert!(tcp_mapping().involves(LISTEN) && tcp_mapping().involves(TARGET));
        assert!(!tcp_mapping().involves(ClientId(3)));
        assert!(!node_port_mapping().involves(LISTEN));
    }

    #[test]
    fn source_allow_list() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let open = tcp_mapping();
        assert!(open.allows_source(ip("203.0.113.9")));
        let closed = with(tcp_mapping(), |m| {
            m.options.allowed_source_cidrs = vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ];
        });
        assert!(closed.allows_source(ip("10.2.3.4")));
        assert!(closed.allows_source(ip("::ffff:10.2.3.4")));
        assert!(closed.allows_source(ip("2001:db8::7")));
        assert!(!closed.allows_source(ip("203.0.113.9")));
    }

    #[test]
    fn serde_round_trip() {
        for m in [
            tcp_mapping(),
            socks_mapping(),
            http_mapping(),
            with(node_port_mapping(), |m| {
                m.options = MappingOptions {
                    bandwidth_bytes_per_sec: 1 << 20,
                    compression: true,
                    end_to_end_encryption: false,
                    allowed_source_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
                    max_connections: 10,
                };
                m.entry = Entry::NodePort {
                    port: 7000,
                    bind: Some("0.0.0.0".into()),
                };
            }),
        ] {
            let json = serde_json::to_string(&m).unwrap();
            let back: Mapping = serde_json::from_str(&json).unwrap();
            assert_eq!(back, m, "{json}");
        }
        let json = serde_json::to_string(&tcp_mapping()).unwrap();
        assert!(json.contains(r#""entry":{"kind":"client_port","listen_client":100,"listen_addr":"127.0.0.1:13306"}"#), "{json}");
        assert!(json.contains(r#""protocol":"tcp""#), "{json}");
        assert!(json.contains(r#""status":"active""#), "{json}");
        let bad_id = json.replace(tcp_mapping().id.as_str(), "m-nope");
        assert!(serde_json::from_str::<Mapping>(&bad_id).is_err());
    }
}
