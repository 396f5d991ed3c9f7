//! Where a mapping's visitors arrive.

use super::addr::{AddrError, Host, HostPort, check_http_host};
use super::ids::ClientId;
use super::validation::ValidationError;

/// The entry side of a mapping: which process accepts visitors, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A listen client opens a local port, e.g. `127.0.0.1:13306`.
    ClientPort {
        /// The client that listens.
        listen_client: ClientId,
        /// `host:port` it binds.
        listen_addr: String,
    },
    /// The node opens a public port.
    NodePort {
        /// The port, 1-65535.
        port: u16,
        /// IP address to bind; `None` = the node's configured default.
        bind: Option<String>,
    },
    /// The node routes HTTP requests whose Host header is `host`.
    HttpHost {
        /// Lower-case DNS name, no port, no wildcard.
        host: String,
    },
    /// A listen client runs a SOCKS5 server; the target client dials what visitors ask for.
    Socks5 {
        /// The client that listens.
        listen_client: ClientId,
        /// `host:port` it binds.
        listen_addr: String,
    },
}

fn addr_problem(e: AddrError) -> String {
    e.to_string()
}

impl Entry {
    /// The snake_case name of the entry kind, as in JSON.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Entry::ClientPort { .. } => "client_port",
            Entry::NodePort { .. } => "node_port",
            Entry::HttpHost { .. } => "http_host",
            Entry::Socks5 { .. } => "socks5",
        }
    }

    /// The client that listens, for the entry kinds that have one.
    pub fn listen_client(&self) -> Option<ClientId> {
        match self {
            Entry::ClientPort { listen_client, .. } | Entry::Socks5 { listen_client, .. } => {
                Some(*listen_client)
            }
            Entry::NodePort { .. } | Entry::HttpHost { .. } => None,
        }
    }

    /// The parsed listen address of a client-side entry, if it is one and it parses.
    pub fn listen_addr(&self) -> Option<HostPort> {
        match self {
            Entry::ClientPort { listen_addr, .. } | Entry::Socks5 { listen_addr, .. } => {
                HostPort::parse(listen_addr).ok()
            }
            Entry::NodePort { .. } | Entry::HttpHost { .. } => None,
        }
    }

    /// Checks the entry's own fields; errors name `entry.<field>`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Entry::ClientPort {
                listen_client,
                listen_addr,
            }
            | Entry::Socks5 {
                listen_client,
                listen_addr,
            } => {
                if listen_client.0 == 0 {
                    return Err(ValidationError::new("entry.listen_client", "must not be 0"));
                }
                HostPort::parse(listen_addr)
                    .map_err(|e| ValidationError::new("entry.listen_addr", addr_problem(e)))?;
            }
            Entry::NodePort { port, bind } => {
                if *port == 0 {
                    return Err(ValidationError::new("entry.port", "must be 1-65535"));
                }
                if let Some(bind) = bind {
                    match Host::parse(bind) {
                        Ok(Host::Ip(_)) => {}
                        Ok(Host::Name(_)) | Err(_) => {
                            return Err(ValidationError::new(
                                "entry.bind",
                                "must be an IP address",
                            ));
                        }
                    }
                }
            }
            Entry::HttpHost { host } => {
                check_http_host(host)
                    .map_err(|p| ValidationError::new("entry.host", p.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_port(addr: &str) -> Entry {
        Entry::ClientPort {
            listen_client: ClientId(1),
            listen_addr: addr.into(),
        }
    }

    #[test]
    fn good_entries_pass() {
        let good = [
            client_port("127.0.0.1:13306"),
            client_port("[::]:80"),
            client_port("localhost:8080"),
            Entry::Socks5 {
                listen_client: ClientId(1),
                listen_addr: "0.0.0.0:1080".into(),
            },
            Entry::NodePort {
                port: 7000,
                bind: None,
            },
            Entry::NodePort {
                port: 1,
                bind: Some("0.0.0.0".into()),
            },
            Entry::NodePort {
                port: 65535,
                bind: Some("::".into()),
            },
            Entry::HttpHost {
                host: "app.example.com".into(),
            },
        ];
        for e in good {
            assert_eq!(e.validate(), Ok(()), "{e:?}");
        }
    }

    #[test]
    fn bad_entries_name_the_field() {
        let cases = [
            (client_port("127.0.0.1"), "entry.listen_addr"),
            (client_port("127.0.0.1:0"), "entry.listen_addr"),
            (client_port("::1:80"), "entry.listen_addr"),
            (client_port(""), "entry.listen_addr"),
            (
                Entry::ClientPort {
                    listen_client: ClientId(0),
                    listen_addr: "127.0.0.1:1".into(),
                },
                "entry.listen_client",
            ),
            (
                Entry::Socks5 {
                    listen_client: ClientId(1),
                    listen_addr: "x".into(),
                },
                "entry.listen_addr",
            ),
            (
                Entry::Socks5 {
                    listen_client: ClientId(0),
                    listen_addr: "127.0.0.1:1".into(),
                },
                "entry.listen_client",
            ),
            (
                Entry::NodePort {
                    port: 0,
                    bind: None,
                },
                "entry.port",
            ),
            (
                Entry::NodePort {
                    port: 80,
                    bind: Some("eth0".into()),
                },
                "entry.bind",
            ),
            (
                Entry::NodePort {
                    port: 80,
                    bind: Some("0.0.0.0:80".into()),
                },
                "entry.bind",
            ),
            (
                Entry::NodePort {
                    port: 80,
                    bind: Some(String::new()),
                },
                "entry.bind",
            ),
            (
                Entry::HttpHost {
                    host: "App.example.com".into(),
                },
                "entry.host",
            ),
            (
                Entry::HttpHost {
                    host: "app.example.com:8080".into(),
                },
                "entry.host",
            ),
            (
                Entry::HttpHost {
                    host: "10.0.0.1".into(),
                },
                "entry.host",
            ),
            (
                Entry::HttpHost {
                    host: String::new(),
                },
                "entry.host",
            ),
        ];
        for (e, field) in cases {
            assert_eq!(e.validate().unwrap_err().field, field, "{e:?}");
        }
        let e = client_port("127.0.0.1:0").validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid `entry.listen_addr`: port must be 1-65535"
        );
    }

    #[test]
    fn serde_tags_the_kind() {
        let e = Entry::NodePort {
            port: 7000,
            bind: None,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"kind":"node_port","port":7000,"bind":null}"#);
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), e);
        let e: Entry = serde_json::from_str(r#"{"kind":"http_host","host":"a.b"}"#).unwrap();
        assert_eq!(e.kind_name(), "http_host");
        assert!(serde_json::from_str::<Entry>(r#"{"kind":"carrier_pigeon"}"#).is_err());
    }
}
