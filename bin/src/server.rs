//! `tunnox server`: a node on TLS with its state in the embedded store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, spawn_node};
use tunnox_runtime_tokio::storage::EmbeddedStore;
use tunnox_runtime_tokio::tls::NodeIdentity;

/// Options of `tunnox server` (each also from its `TUNNOX_…` environment variable).
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address clients connect to.
    #[arg(long, env = "TUNNOX_LISTEN", default_value = "0.0.0.0:7000")]
    listen: String,
    /// Directory for the store and the node's TLS identity.
    #[arg(long, env = "TUNNOX_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// This node's id.
    #[arg(long, env = "TUNNOX_NODE_ID", default_value = "node-1")]
    node_id: String,
    /// Keep state in memory only (lost on restart).
    #[arg(long, env = "TUNNOX_MEMORY_STORAGE")]
    memory_storage: bool,
    /// Refuse unknown clients instead of registering them anonymously.
    #[arg(long, env = "TUNNOX_NO_REGISTRATION")]
    no_registration: bool,
    /// Address node ports bind by default.
    #[arg(long, env = "TUNNOX_NODE_PORT_BIND", default_value = "0.0.0.0")]
    node_port_bind: String,
    /// Serve client sessions without TLS. Never on a network you do not control.
    #[arg(long, env = "TUNNOX_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Names in the generated certificate (besides localhost).
    #[arg(long = "tls-name", env = "TUNNOX_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
}

/// A 32-byte seed for the node's RNG, from the OS (once, here in the binary).
pub fn os_seed() -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("reading /dev/urandom for the node's random seed")?;
    Ok(seed)
}

/// Runs a node until SIGINT/SIGTERM, then drains.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let store = if args.memory_storage {
        None
    } else {
        let path = args.data_dir.join("tunnox.redb");
        Some(EmbeddedStore::open(&path).with_context(|| format!("opening {}", path.display()))?)
    };
    let state = match &store {
        Some(store) => store.load()?,
        None => ControlState::default(),
    };
    let mut config = NodeConfig::new(args.node_id.clone());
    config.allow_registration = !args.no_registration;
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        config,
        state,
        Rng::from_seed(os_seed()?),
    );
    let mut driver = NodeDriver::new(node, clock, store, &args.node_port_bind);
    println!(
        "tunnox node {} listening on {}",
        args.node_id,
        listener.local_addr()?
    );
    if args.insecure_plaintext {
        eprintln!("WARNING: client sessions are NOT encrypted (--insecure-plaintext).");
    } else {
        let mut names = vec!["localhost".to_owned(), args.node_id.clone()];
        names.extend(args.tls_names.iter().cloned());
        let identity = NodeIdentity::load_or_generate(&args.data_dir, &names)?;
        println!("TLS certificate fingerprint: {}", identity.fingerprint());
        println!(
            "  clients pin it with: tunnox client --server HOST:PORT --fingerprint {}",
            identity.fingerprint()
        );
        driver = driver.with_tls(identity.acceptor()?);
    }
    match args.memory_storage {
        true => println!("state: in memory (lost on restart)"),
        false => println!("state: {}", args.data_dir.join("tunnox.redb").display()),
    }
    let (commands, task) = spawn_node(driver, listener);
    shutdown_signal().await;
    println!("shutting down: draining sessions (up to 10 s)");
    let (done, finished) = oneshot::channel();
    let _ = commands
        .send(NodeCommand::Drain {
            within: Duration::from_secs(10),
            done,
        })
        .await;
    let _ = finished.await;
    let _ = task.await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
