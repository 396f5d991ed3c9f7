//! The server's YAML configuration file. Unknown keys and bad values are errors that name the
//! key; command-line flags and `TUNNOX_…` environment variables override the file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tunnox_core::control::{
    ClientId, Entry, Mapping, MappingId, MappingOptions, MappingStatus, Protocol, Target,
    UnixMillis,
};
use tunnox_core::digest::Fnv64;

/// `tunnox server --config FILE`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// This node's id.
    pub node_id: Option<String>,
    /// Address clients connect to.
    pub listen: Option<String>,
    /// Directory for the store and the TLS identity.
    pub data_dir: Option<PathBuf>,
    /// `embedded` (default) or `memory`.
    pub storage: Option<StorageKind>,
    /// Whether unknown clients may register anonymously.
    pub allow_registration: Option<bool>,
    /// Address node ports bind by default.
    pub node_port_bind: Option<String>,
    /// Address of the HTTP endpoints (`/health`, `/ready`, `/version`, `/metrics`, `/api/v1`);
    /// off if unset.
    pub api_listen: Option<String>,
    /// Who may use the management API, and how often.
    #[serde(default)]
    pub api: ApiFile,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsFile,
    /// Cluster settings: absent for a node on its own.
    pub cluster: Option<ClusterFile>,
    /// Handshake rate limit and failed-login lockout.
    #[serde(default)]
    pub guard: GuardFile,
    /// Bounds on what clients may hold: connections, handshake time, streams, pending opens.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Mappings to serve: created or updated at every start (removing one from the file does
    /// not delete it; the management API will).
    #[serde(default)]
    pub mappings: Vec<MappingFile>,
}

/// Where the node keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// The embedded store under `data_dir`.
    Embedded,
    /// Memory only.
    Memory,
}

/// A whole number from `MIN` to `MAX`: anything else in the file is an error naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> serde::Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The check runs inside the visitor, so the YAML error carries the key and position.
        struct InRange<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> InRange<MIN, MAX> {
            fn check<E: serde::de::Error>(value: i128) -> Result<Bounded<MIN, MAX>, E> {
                match u64::try_from(value) {
                    Ok(v) if (MIN..=MAX).contains(&v) => Ok(Bounded(v)),
                    _ => Err(E::invalid_value(
                        serde::de::Unexpected::Other(&value.to_string()),
                        &Self,
                    )),
                }
            }
        }
        impl<const MIN: u64, const MAX: u64> serde::de::Visitor<'_> for InRange<MIN, MAX> {
            type Value = Bounded<MIN, MAX>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a whole number from {MIN} to {MAX}")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::check(i128::from(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::check(i128::from(v))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Self::Value, E> {
                Self::check(v)
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Self::Value, E> {
                Self::check(i128::try_from(v).unwrap_or(i128::MAX))
            }
        }
        deserializer.deserialize_i128(InRange::<MIN, MAX>)
    }
}

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// The value as a `u32` (every bound used here fits).
    fn as_u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

/// `guard:` settings; each absent key keeps its default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardFile {
    /// New connections one address may open at once [64].
    pub handshake_burst: Option<Bounded<1, 100_000>>,
    /// New connections one address gains per second [16].
    pub handshakes_per_sec: Option<Bounded<1, 100_000>>,
    /// Failed logins of one client from one address before it is locked out there [5].
    pub failed_logins_max: Option<Bounded<1, 10_000>>,
    /// How long such a lockout lasts, in seconds [300].
    pub lockout_secs: Option<Bounded<1, 604_800>>,
}

impl GuardFile {
    /// The node's guard settings with these overrides.
    pub fn apply(&self, guard: &mut tunnox_core::node::GuardConfig) {
        if let Some(v) = self.handshake_burst {
            guard.handshake_burst = v.as_u32();
        }
        if let Some(v) = self.handshakes_per_sec {
            guard.handshakes_per_sec = v.as_u32();
        }
        if let Some(v) = self.failed_logins_max {
            guard.failed_proofs_max = v.as_u32();
        }
        if let Some(v) = self.lockout_secs {
            guard.lockout = std::time::Duration::from_secs(v.0);
        }
    }
}

/// `api:` settings of the management API (docs/api.md).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// API keys besides the admin key, each by the SHA-256 of the key (the file never holds a
    /// key itself).
    #[serde(default)]
    pub keys: Vec<ApiKeyFile>,
    /// File holding the HS256 secret that signs accepted JWTs, at least 32 bytes (or set
    /// TUNNOX_API_JWT_SECRET); no JWTs are accepted without one.
    pub jwt_secret_file: Option<PathBuf>,
    /// Browser origins answered with CORS headers (`*`: any); none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Requests one key may make at once [200].
    pub rate_burst: Option<u32>,
    /// Requests one key gains per second [100].
    pub rate_per_sec: Option<u32>,
}

/// One API key of `api.keys`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// A name, for the rate limit and logs.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// `admin` (everything) or `read` (GET only).
    pub role: tunnox_runtime_tokio::api::Role,
}

/// `limits:` settings; each absent key keeps its default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Most client connections at once, handshaking or established [10000].
    pub client_connections_max: Option<Bounded<1, 1_000_000>>,
    /// Seconds from accept by which TLS and the session handshake must be done [10].
    pub handshake_timeout_secs: Option<Bounded<1, 300>>,
    /// Most streams open at once on one session, both directions together [65536].
    pub streams_per_session: Option<Bounded<1, 1_000_000>>,
    /// Most stream opens awaiting an answer on one session, each direction [256].
    pub pending_opens_per_session: Option<Bounded<1, 65_536>>,
}

impl LimitsFile {
    /// The node's settings with these overrides.
    pub fn apply(&self, config: &mut tunnox_core::node::NodeConfig) {
        if let Some(v) = self.handshake_timeout_secs {
            config.session.handshake_timeout = std::time::Duration::from_secs(v.0);
        }
        if let Some(v) = self.streams_per_session {
            config.session.mux.max_streams = v.as_u32();
        }
        if let Some(v) = self.pending_opens_per_session {
            // The client's opens waiting for their target, and the node's opens waiting for
            // the client.
            config.session.mux.max_pending_accepts = v.as_u32();
            config.session.mux.max_pending_opens = v.as_u32();
        }
    }

    /// Most client connections at once.
    pub fn client_connections_max(&self) -> usize {
        self.client_connections_max.map_or(
            tunnox_runtime_tokio::node::CLIENT_CONNECTIONS_MAX_DEFAULT,
            |v| usize::try_from(v.0).unwrap_or(usize::MAX),
        )
    }
}

/// `cluster:` settings (docs/cluster.md).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Address the node-to-node bridge listens on.
    pub bridge_listen: String,
    /// Address peers dial to reach this node's bridge [default: bridge_listen].
    pub bridge_advertise: Option<String>,
    /// Redis holding membership, routes and the shared control state.
    pub redis_url: String,
    /// Prefix of every Redis key and broker channel [default: tunnox:].
    pub key_prefix: Option<String>,
    /// `redis` (pub/sub on `redis_url`, the default) or `nats` (on `nats_url`).
    #[serde(default)]
    pub broker: BrokerChoice,
    /// NATS server for `broker: nats`.
    pub nats_url: Option<String>,
    /// File holding the cluster token (or set TUNNOX_CLUSTER_TOKEN); every node of a cluster
    /// needs the same one.
    pub token_file: Option<PathBuf>,
    /// Lease of node records and client routes, in milliseconds [default: 3000].
    pub lease_ms: Option<u64>,
    /// Mutual TLS for bridge links.
    pub tls: Option<BridgeTlsFile>,
    /// Allow a plaintext bridge on a non-loopback address (links stay authenticated by the
    /// token, but tunnel bytes between nodes are readable on the network).
    #[serde(default)]
    pub insecure_plaintext_bridge: bool,
}

/// `cluster.tls:` every node's certificate is signed by the cluster CA.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTlsFile {
    /// This node's certificate (PEM); it must name the host peers dial (`bridge_advertise`).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The cluster CA (PEM) that signs every node's certificate.
    pub ca_file: PathBuf,
}

/// The cluster's broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerChoice {
    /// Redis pub/sub.
    #[default]
    Redis,
    /// NATS core.
    Nats,
}

/// `tls:` settings.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Serve without TLS (never on a network you do not control).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Extra names in the generated certificate.
    #[serde(default)]
    pub names: Vec<String>,
    /// PEM certificate chain to serve instead of the generated certificate (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The configured certificate and key files, if any: both or neither (`cert` and `key` are
/// `tls.cert_file` and `tls.key_file` after flags and environment are applied).
pub fn tls_identity_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(cert), None) => anyhow::bail!(
            "tls.key_file (--tls-key-file, TUNNOX_TLS_KEY_FILE) is missing: tls.cert_file is set \
             to {}, and a certificate needs its private key",
            cert.display()
        ),
        (None, Some(key)) => anyhow::bail!(
            "tls.cert_file (--tls-cert-file, TUNNOX_TLS_CERT_FILE) is missing: tls.key_file is set \
             to {}, and a private key needs its certificate",
            key.display()
        ),
    }
}

/// One mapping in the file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// A unique name; the mapping's id derives from it, so it is stable across restarts.
    pub name: String,
    /// Where visitors arrive.
    pub entry: Entry,
    /// The client that dials the target.
    pub target_client: u64,
    /// What it dials.
    pub target: Target,
    /// tcp (default), udp, http or socks5.
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// Bandwidth limit, connection limit, source CIDRs, ….
    #[serde(default)]
    pub options: MappingOptions,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl ServerFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<ServerFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ServerFile::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> anyhow::Result<ServerFile> {
        Ok(serde_yaml_ng::from_str(text)?)
    }

    /// The file's mappings as the node stores them, each checked (errors name the mapping and
    /// the field).
    pub fn mappings(&self, now: UnixMillis) -> anyhow::Result<Vec<Mapping>> {
        let mut out = Vec::new();
        for m in &self.mappings {
            let mapping = Mapping {
                id: id_for(&m.name)?,
                owner: None,
                entry: m.entry.clone(),
                target_client: ClientId(m.target_client),
                target: m.target.clone(),
                protocol: m.protocol,
                options: m.options.clone(),
                created_at: now,
                expires_at: None,
                status: MappingStatus::Active,
            };
            mapping
                .validate()
                .with_context(|| format!("mapping `{}`", m.name))?;
            out.push(mapping);
        }
        Ok(out)
    }
}

/// A stable mapping id for a configured name.
fn id_for(name: &str) -> anyhow::Result<MappingId> {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstuvwxyz";
    let mut h = Fnv64::new();
    h.write(name.as_bytes());
    let mut v = h.finish();
    let mut id = String::from("m-");
    for _ in 0..12 {
        id.push(char::from(ALPHABET[(v % 33) as usize]));
        v /= 33;
        if v == 0 {
            let mut h2 = Fnv64::new();
            h2.write(id.as_bytes());
            v = h2.finish();
        }
    }
    MappingId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id: edge-1
listen: 127.0.0.1:7000
storage: memory
tls:
  names: [tunnel.example.com]
mappings:
  - name: redis
    entry: { kind: node_port, port: 16379 }
    target_client: 123456789012
    target: { kind: fixed, host: 127.0.0.1, port: 6379 }
"#;

    #[test]
    fn a_good_file_parses_into_checked_mappings_with_stable_ids() {
        let file = ServerFile::parse(GOOD).unwrap();
        assert_eq!(file.node_id.as_deref(), Some("edge-1"));
        assert_eq!(file.storage, Some(StorageKind::Memory));
        let mappings = file.mappings(UnixMillis(1)).unwrap();
        assert_eq!(mappings.len(), 1);
        assert_eq!(mappings[0].id, id_for("redis").unwrap(), "the id is stable");
        assert_ne!(id_for("redis").unwrap(), id_for("redis2").unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = ServerFile::parse("listen: 1.2.3.4:5\nlisten_port: 7\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        let err = ServerFile::parse("allow_registration: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_registration"), "{err}");
        let err = ServerFile::parse("storage: cloud\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage"), "{err}");
        let bad_port = GOOD.replace("port: 6379", "port: 0");
        let err = format!(
            "{:#}",
            ServerFile::parse(&bad_port)
                .unwrap()
                .mappings(UnixMillis(1))
                .unwrap_err()
        );
        assert!(
            err.contains("redis") && err.contains("target.port"),
            "{err}"
        );
        let err = ServerFile::parse("tls:\n  cert: a.pem\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cert"), "{err}");
    }

    #[test]
    fn tls_certificate_and_key_files_come_together() {
        let file =
            ServerFile::parse("tls:\n  cert_file: /etc/c.pem\n  key_file: /etc/k.pem\n").unwrap();
        assert_eq!(
            tls_identity_files(file.tls.cert_file, file.tls.key_file).unwrap(),
            Some((PathBuf::from("/etc/c.pem"), PathBuf::from("/etc/k.pem")))
        );
        assert_eq!(tls_identity_files(None, None).unwrap(), None);
        let err = tls_identity_files(Some("c.pem".into()), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.key_file") && err.contains("c.pem"),
            "{err}"
        );
        let err = tls_identity_files(None, Some("k.pem".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.cert_file") && err.contains("k.pem"),
            "{err}"
        );
    }

    #[test]
    fn guard_keys_override_the_defaults_and_unknown_ones_are_errors() {
        let file = ServerFile::parse("guard: { handshake_burst: 3, lockout_secs: 10 }\n").unwrap();
        let mut guard = tunnox_core::node::GuardConfig::default();
        let defaults = guard.clone();
        file.guard.apply(&mut guard);
        assert_eq!(guard.handshake_burst, 3);
        assert_eq!(guard.lockout, std::time::Duration::from_secs(10));
        assert_eq!(guard.handshakes_per_sec, defaults.handshakes_per_sec);
        let err = ServerFile::parse("guard: { burst: 3 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("burst"), "{err}");
        let err = ServerFile::parse("guard:\n  handshake_burst: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("guard.handshake_burst") && err.contains("from 1 to"),
            "{err}"
        );
    }

    #[test]
    fn limits_keys_set_the_node_and_zero_or_absurd_values_are_errors_naming_the_key() {
        let file = ServerFile::parse(
            "limits:\n  handshake_timeout_secs: 3\n  streams_per_session: 100\n  \
             pending_opens_per_session: 8\n  client_connections_max: 50\n",
        )
        .unwrap();
        let mut config = tunnox_core::node::NodeConfig::new("n");
        file.limits.apply(&mut config);
        assert_eq!(
            config.session.handshake_timeout,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(config.session.mux.max_streams, 100);
        assert_eq!(config.session.mux.max_pending_opens, 8);
        assert_eq!(config.session.mux.max_pending_accepts, 8);
        assert_eq!(config.session.mux.validate(), Ok(()));
        assert_eq!(file.limits.client_connections_max(), 50);
        // Absent keys keep the defaults.
        let defaults = ServerFile::parse("node_id: a\n").unwrap();
        let mut config = tunnox_core::node::NodeConfig::new("n");
        defaults.limits.apply(&mut config);
        assert_eq!(
            config.session,
            tunnox_core::node::NodeConfig::new("n").session
        );
        for (key, value) in [
            ("handshake_timeout_secs", "0"),
            ("handshake_timeout_secs", "86400"),
            ("streams_per_session", "0"),
            ("streams_per_session", "-1"),
            ("streams_per_session", "99999999999"),
            ("pending_opens_per_session", "0"),
            ("client_connections_max", "0"),
        ] {
            let err = ServerFile::parse(&format!("limits:\n  {key}: {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("limits.{key}")) && err.contains("from 1 to"),
                "{key}: {value}: {err}"
            );
        }
        let err = ServerFile::parse("limits: { streams: 5 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("streams"), "{err}");
    }
}
