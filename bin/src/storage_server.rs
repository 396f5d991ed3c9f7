//! `tunnox storage-server`: the `StorageService` over an embedded file store, for nodes that
//! share their state (`RemoteStorage`, usually behind a Redis cache).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tokio::net::TcpListener;
use tunnox_runtime_tokio::storage::{
    EmbeddedKv, ServerTls, StorageServer, StorageServerConfig, StorageToken,
};

/// The environment variable holding the token itself (instead of `--token-file`).
const TOKEN_ENV: &str = "TUNNOX_STORAGE_TOKEN";
/// The store's file inside `--data`.
const STORE_FILE: &str = "storage.redb";

/// Options of `tunnox storage-server`. Each flag also reads its `TUNNOX_STORAGE_…` variable.
#[derive(Debug, Args)]
pub struct StorageServerArgs {
    /// Address to serve on.
    #[arg(long, env = "TUNNOX_STORAGE_LISTEN", default_value = "127.0.0.1:7450")]
    listen: SocketAddr,
    /// Directory of the store (its file is storage.redb there).
    #[arg(
        long,
        env = "TUNNOX_STORAGE_DATA",
        value_name = "DIR",
        default_value = "./data"
    )]
    data: PathBuf,
    /// File holding the shared token clients sign requests with (at least 16 characters).
    /// Or give the token itself in TUNNOX_STORAGE_TOKEN. One of them is required.
    #[arg(long, env = "TUNNOX_STORAGE_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (needs --tls-key-file).
    #[arg(long, env = "TUNNOX_STORAGE_TLS_CERT_FILE", value_name = "PATH")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "TUNNOX_STORAGE_TLS_KEY_FILE", value_name = "PATH")]
    tls_key_file: Option<PathBuf>,
    /// Largest value or list element accepted, in bytes.
    #[arg(long, env = "TUNNOX_STORAGE_VALUE_BYTES_MAX", default_value_t = 1024 * 1024)]
    value_bytes_max: usize,
}

/// The token from `--token-file` or `TUNNOX_STORAGE_TOKEN`; an error saying how to give one.
fn load_token(file: Option<&PathBuf>) -> anyhow::Result<StorageToken> {
    let text = match (file, std::env::var(TOKEN_ENV).ok()) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?,
        (None, Some(token)) => token,
        (None, None) => bail!(
            "tunnox storage-server needs a token: clients sign every request with it. \
             Give a file with --token-file PATH (TUNNOX_STORAGE_TOKEN_FILE), or the token in \
             {TOKEN_ENV}; e.g. `head -c 32 /dev/urandom | base64 > storage.token`"
        ),
    };
    let source = match file {
        Some(path) => format!("the token in {}", path.display()),
        None => format!("the token in {TOKEN_ENV}"),
    };
    StorageToken::new(&text).with_context(|| source)
}

fn load_tls(cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<Option<ServerTls>> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(ServerTls {
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
        })),
        (Some(_), None) => {
            bail!("--tls-cert-file needs --tls-key-file (TUNNOX_STORAGE_TLS_KEY_FILE)")
        }
        (None, Some(_)) => {
            bail!("--tls-key-file needs --tls-cert-file (TUNNOX_STORAGE_TLS_CERT_FILE)")
        }
    }
}

/// Serves until SIGINT/SIGTERM.
pub async fn run(args: StorageServerArgs) -> anyhow::Result<()> {
    // Everything that can be wrong is checked before the store is opened or the port bound.
    let token = load_token(args.token_file.as_ref())?;
    let tls = load_tls(args.tls_cert_file, args.tls_key_file)?;
    let path = args.data.join(STORE_FILE);
    let store = EmbeddedKv::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = StorageServerConfig::new(token);
    config.value_bytes_max = args.value_bytes_max;
    println!(
        "tunnox storage-server listening on {}",
        listener.local_addr()?
    );
    println!("store: {}", path.display());
    match &tls {
        Some(_) => println!("TLS: on"),
        None if args.listen.ip().is_loopback() => {
            println!("TLS: off (loopback); requests are signed, the token never sent");
        }
        None => eprintln!(
            "WARNING: TLS is off on {}: requests are signed (the token is never sent), but \
             keys and values cross the network in clear. Give --tls-cert-file/--tls-key-file.",
            args.listen
        ),
    }
    StorageServer::new(store, config)
        .serve_on(listener, tls, crate::server::shutdown_signal())
        .await?;
    println!("storage-server stopped");
    Ok(())
}
