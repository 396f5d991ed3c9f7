//! `tunnox client`: keeps a session to a node, serves the mappings it pushes, and offers or
//! redeems connection codes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::AuthKey;
use tunnox_core::rng::Rng;
use tunnox_core::session::ClientIdentity;
use tunnox_proto::wire::{self as pb, control_request::Body, control_response::Result as Reply};
use tunnox_runtime_tokio::agent::{AgentCommand, AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::Clock;
use tunnox_runtime_tokio::tls::{Fingerprint, ServerTrust, connector, load_ca_file};

use crate::server::{os_seed, shutdown_signal};

/// Options of `tunnox client` (each also from its `TUNNOX_…` environment variable).
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The node(s) to connect to, `host:port`; tried in turn.
    #[arg(
        long = "server",
        env = "TUNNOX_SERVER",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<String>,
    /// Where this client's credentials are kept (written once after registering, mode 0600).
    #[arg(
        long,
        env = "TUNNOX_CREDENTIALS",
        default_value = "./tunnox-client.json"
    )]
    credentials: PathBuf,
    /// The node certificate's fingerprint (printed by `tunnox server`) to pin.
    #[arg(long, env = "TUNNOX_FINGERPRINT")]
    fingerprint: Option<String>,
    /// Trust a node whose certificate chains to a CA in this PEM file (and names the server).
    #[arg(long, env = "TUNNOX_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// The name the node's certificate must carry [default: the host part of each --server].
    #[arg(long, env = "TUNNOX_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
    /// Accept any node certificate. Only for development.
    #[arg(long, env = "TUNNOX_INSECURE_SKIP_VERIFY")]
    insecure_skip_verify: bool,
    /// Connect without TLS (to a node started with --insecure-plaintext).
    #[arg(long, env = "TUNNOX_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// How this client names itself when it registers.
    #[arg(long, env = "TUNNOX_LABEL", default_value = "tunnox-client")]
    label: String,
    /// What to do besides serving mappings.
    #[command(subcommand)]
    action: Option<ClientAction>,
}

/// One-shot actions of a client.
#[derive(Debug, Subcommand)]
pub enum ClientAction {
    /// Offer a TCP service reachable from here: prints a connection code, then keeps serving.
    Tcp {
        /// `PORT` (on 127.0.0.1) or `HOST:PORT`.
        target: String,
        /// Minutes the code can be redeemed (default 10).
        #[arg(long)]
        activation_minutes: Option<u32>,
        /// Days the resulting mapping lives (default 7).
        #[arg(long)]
        mapping_days: Option<u32>,
    },
    /// Redeem a connection code: listen on `--listen` for the offered service, then keep serving.
    Use {
        /// The code, `abc-def-123`.
        code: String,
        /// Where to listen, `HOST:PORT`.
        #[arg(long)]
        listen: String,
    },
    /// List the codes this client offered, then exit.
    Codes,
    /// Revoke an unused code this client offered, then exit.
    Revoke {
        /// The code.
        code: String,
    },
}

/// A client's saved id and secret (`--credentials`).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedCredentials {
    pub(crate) client_id: u64,
    pub(crate) secret: String,
}

fn load_credentials(path: &Path) -> anyhow::Result<Option<SavedCredentials>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `saved` to `path`, readable only by its owner.
pub(crate) fn save_credentials(path: &Path, saved: &SavedCredentials) -> anyhow::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec_pretty(saved)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(&json)?;
    Ok(())
}

fn parse_target(target: &str) -> anyhow::Result<(String, u16)> {
    if let Ok(port) = target.parse::<u16>() {
        return Ok(("127.0.0.1".into(), port));
    }
    let (host, port) = target
        .rsplit_once(':')
        .context("expected PORT or HOST:PORT")?;
    let port = port.parse().context("the port must be 1-65535")?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// The name to verify in the certificate of the node at `server` (`host:port`): `configured`
/// (`--server-name`) if given, else the host part of `server`.
fn server_name(server: &str, configured: Option<&str>) -> anyhow::Result<ServerName<'static>> {
    let name = configured.unwrap_or_else(|| {
        server
            .rsplit_once(':')
            .map_or(server, |(host, _)| host)
            .trim_matches(['[', ']'])
    });
    ServerName::try_from(name.to_owned()).with_context(|| {
        format!(
            "`{name}` is not a DNS name or IP address to verify in the node's certificate \
             (set --server-name)"
        )
    })
}

/// How to trust the node, from the flags; `None` for plaintext.
fn server_trust(args: &ClientArgs) -> anyhow::Result<Option<ServerTrust>> {
    Ok(match (&args.ca_file, &args.fingerprint) {
        (Some(_), Some(_)) => bail!(
            "--ca-file and --fingerprint cannot be used together: trust the node either by the \
             CA that signed its certificate or by its pinned fingerprint"
        ),
        (Some(path), None) => Some(ServerTrust::Roots(load_ca_file(path).context("--ca-file")?)),
        (None, Some(fp)) => Some(ServerTrust::Pinned(Fingerprint::parse(fp)?)),
        (None, None) if args.insecure_skip_verify => {
            eprintln!("WARNING: the node's certificate is NOT verified (--insecure-skip-verify).");
            Some(ServerTrust::InsecureSkipVerify)
        }
        (None, None) if args.insecure_plaintext => {
            eprintln!("WARNING: the session is NOT encrypted (--insecure-plaintext).");
            None
        }
        (None, None) => bail!(
            "pass --fingerprint with the fingerprint `tunnox server` printed, or --ca-file with \
             the CA that signed the node's certificate, so this client can tell the real node \
             from an impostor (or --insecure-skip-verify for development)"
        ),
    })
}

/// Runs the client until SIGINT/SIGTERM (or until a one-shot action is done).
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let trust = server_trust(&args)?;
    // `servers[i]` is `args.servers[i]`, so each is verified under its own name.
    let mut servers = Vec::new();
    for server in &args.servers {
        let resolved = tokio::net::lookup_host(server)
            .await
            .with_context(|| format!("cannot resolve {server}"))?
            .next()
            .with_context(|| format!("{server} resolves to no address"))?;
        servers.push(resolved);
    }
    let saved = load_credentials(&args.credentials)?;
    let identity = match &saved {
        Some(c) => ClientIdentity::Login {
            client_id: c.client_id,
            key: AuthKey::derive(&c.secret),
        },
        None => ClientIdentity::Register {
            label: args.label.clone(),
        },
    };
    let clock = Clock::new();
    let agent = Agent::new(
        clock.now(),
        AgentConfig::new(identity, servers.len()),
        Rng::from_seed(os_seed()?),
    );
    let (notices_tx, mut notices) = mpsc::channel(256);
    let mut driver = AgentDriver::new(agent, clock, servers, notices_tx);
    if let Some(trust) = trust {
        let names = args
            .servers
            .iter()
            .map(|server| server_name(server, args.server_name.as_deref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        driver = driver.with_tls_names(connector(trust)?, names);
    }
    let (commands, _task) = spawn_agent(driver);
    let mut action = args.action;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let notice = tokio::select! {
            notice = notices.recv() => notice,
            () = &mut signal => return Ok(()),
        };
        let Some(notice) = notice else {
            bail!("the client stopped")
        };
        match notice {
            AgentOutput::Established { node_id, client_id } => {
                println!("connected to node {node_id} as client {client_id}");
                if let Some(request) = action.as_ref().map(request_for).transpose()? {
                    let _ = commands.send(AgentCommand::Control(request)).await;
                }
            }
            AgentOutput::SaveCredentials { client_id, secret } => {
                save_credentials(
                    &args.credentials,
                    &SavedCredentials {
                        client_id: client_id.0,
                        secret,
                    },
                )?;
                println!(
                    "registered as client {client_id}; credentials saved to {}",
                    args.credentials.display()
                );
            }
            AgentOutput::ConfigApplied {
                version,
                listening,
                targets,
            } => {
                // One line per configuration the node pushed (its mappings changed), printed
                // when it is applied and acknowledged: for operators, and for the config-push
                // benchmark (bench/src/bin/config-push.rs), which times these lines.
                println!(
                    "config {version} applied: listening for {listening} mappings, target of \
                     {targets}"
                );
            }
            AgentOutput::Disconnected { reason, retry_in } => {
                eprintln!("disconnected: {reason}; reconnecting in {retry_in:?}");
            }
            AgentOutput::Stopped { reason } => bail!("stopped: {reason}"),
            AgentOutput::OpenFailed { error, message, .. } => {
                eprintln!("a connection was refused: {error:?}: {message}")
            }
            AgentOutput::ControlResponse(response) => {
                let done = report(action.as_ref(), response.result)?;
                if done {
                    return Ok(());
                }
                // Only once: a reconnect must not redeem or offer again.
                action = None;
            }
            _ => {}
        }
    }
}

fn request_for(action: &ClientAction) -> anyhow::Result<Body> {
    Ok(match action {
        ClientAction::Tcp {
            target,
            activation_minutes,
            mapping_days,
        } => {
            let (host, port) = parse_target(target)?;
            Body::CreateCode(pb::CreateCode {
                target: Some(pb::TargetAddr {
                    host,
                    port: u32::from(port),
                }),
                protocol: pb::Protocol::Tcp as i32,
                activation_ttl_secs: activation_minutes.map_or(0, |m| m.saturating_mul(60)),
                mapping_ttl_secs: mapping_days.map_or(0, |d| d.saturating_mul(86_400)),
                description: String::new(),
            })
        }
        ClientAction::Use { code, listen } => Body::ActivateCode(pb::ActivateCode {
            code: code.clone(),
            listen_addr: listen.clone(),
        }),
        ClientAction::Codes => Body::ListCodes(pb::ListCodes {}),
        ClientAction::Revoke { code } => Body::RevokeCode(pb::RevokeCode { code: code.clone() }),
    })
}

/// Prints the answer; returns whether the client should exit (one-shot actions).
fn report(action: Option<&ClientAction>, result: Option<Reply>) -> anyhow::Result<bool> {
    match result {
        Some(Reply::Error(e)) => {
            let kind = pb::ControlErrorKind::try_from(e.kind).map_or("error", |k| k.as_str_name());
            bail!("{kind}: {}", e.message)
        }
        Some(Reply::Code(info)) => {
            if matches!(action, Some(ClientAction::Revoke { .. })) {
                println!("revoked {}", info.code);
                return Ok(true);
            }
            println!("connection code: {}", info.code);
            println!(
                "  on the other machine: tunnox client --server ... use {} --listen 127.0.0.1:PORT",
                info.code
            );
            Ok(false)
        }
        Some(Reply::Mapping(m)) => {
            println!(
                "mapping {} ready: listening on {}",
                m.mapping_id, m.listen_addr
            );
            Ok(false)
        }
        Some(Reply::Codes(list)) => {
            for c in list.codes {
                let target = c
                    .target
                    .map(|t| format!("{}:{}", t.host, t.port))
                    .unwrap_or_default();
                println!("{}  {:8}  {}", c.code, c.state, target);
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_configured_one_or_each_servers_host() {
        let dns = |name: &str| ServerName::try_from(name.to_owned()).unwrap();
        assert_eq!(
            server_name("node.example.com:7000", None).unwrap(),
            dns("node.example.com")
        );
        assert_eq!(server_name("[::1]:7000", None).unwrap(), dns("::1"));
        assert_eq!(server_name("10.0.0.5:7000", None).unwrap(), dns("10.0.0.5"));
        assert_eq!(
            server_name("10.0.0.5:7000", Some("node.test")).unwrap(),
            dns("node.test"),
            "--server-name wins over the address"
        );
        let err = format!("{:#}", server_name("x:1", Some("not a name!")).unwrap_err());
        assert!(err.contains("--server-name"), "{err}");
    }
}
