//! Where a mapping's target client connects.

use core::fmt;

use super::addr::{AddrError, Host};
use super::validation::ValidationError;

/// The destination the target client dials for each visitor connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Always the same `host:port` (IPv6 hosts with or without brackets).
    Fixed {
        /// IP literal or DNS name, resolved by the target client.
        host: String,
        /// Port, 1-65535.
        port: u16,
    },
    /// Named by the visitor per connection (SOCKS5 CONNECT).
    Dynamic,
}

impl Target {
    /// Checks host and port; errors name `target.host` or `target.port`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let Target::Fixed { host, port } = self else {
            return Ok(());
        };
        if let Err(e) = Host::parse(host) {
            let problem = match e {
                AddrError::BadHost(p) => p.to_string(),
                other => other.to_string(),
            };
            return Err(ValidationError::new("target.host", problem));
        }
        if *port == 0 {
            return Err(ValidationError::new("target.port", "must be 1-65535"));
        }
        Ok(())
    }

    /// The parsed host of a fixed target, if it is one and it parses.
    pub fn fixed_host(&self) -> Option<Host> {
        match self {
            Target::Fixed { host, .. } => Host::parse(host).ok(),
            Target::Dynamic => None,
        }
    }
}

impl fmt::Display for Target {
    /// `host:port` (IPv6 bracketed) or `dynamic`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Fixed { host, port } if host.contains(':') && !host.starts_with('[') => {
                write!(f, "[{host}]:{port}")
            }
            Target::Fixed { host, port } => write!(f, "{host}:{port}"),
            Target::Dynamic => f.write_str("dynamic"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(host: &str, port: u16) -> Target {
        Target::Fixed {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn good_targets_pass() {
        for t in [
            fixed("10.0.0.5", 3306),
            fixed("::1", 22),
            fixed("[::1]", 22),
            fixed("db", 1),
            fixed("my_db.local", 65535),
            Target::Dynamic,
        ] {
            assert_eq!(t.validate(), Ok(()), "{t}");
        }
    }

    #[test]
    fn bad_targets_name_the_field() {
        assert_eq!(
            fixed("10.0.0.5", 0).validate().unwrap_err().field,
            "target.port"
        );
        assert_eq!(
            fixed("10.0.0.5", 0).validate().unwrap_err().to_string(),
            "invalid `target.port`: must be 1-65535"
        );
        for bad in ["", "10.0.0.5:80", "a b", "999.0.0.1", "[::1", "-x"] {
            assert_eq!(
                fixed(bad, 80).validate().unwrap_err().field,
                "target.host",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn display_and_serde() {
        assert_eq!(fixed("::1", 22).to_string(), "[::1]:22");
        assert_eq!(fixed("db", 5432).to_string(), "db:5432");
        assert_eq!(Target::Dynamic.to_string(), "dynamic");
        let json = serde_json::to_string(&fixed("db", 5432)).unwrap();
        assert_eq!(json, r#"{"kind":"fixed","host":"db","port":5432}"#);
        assert_eq!(
            serde_json::to_string(&Target::Dynamic).unwrap(),
            r#"{"kind":"dynamic"}"#
        );
    }
}
