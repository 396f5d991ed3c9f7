//! `tunnox server`: a node on TLS with its state in the embedded store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tunnox_core::broker::Origin;
use tunnox_core::cluster::PoolConfig;
use tunnox_core::control::NodeId;
use tunnox_core::node::{ClusterConfig, ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::AuthKey;

use tunnox_runtime_tokio::api::ApiState;
use tunnox_runtime_tokio::bridge::{BridgeService, BridgeTls, LinkHello};
use tunnox_runtime_tokio::broker::{AnyBroker, BrokerConfig, BrokerKind};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::cluster::{ClusterSettings, ClusterStore, Coordinator};
use tunnox_runtime_tokio::metrics::NodeMetrics;
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, spawn_node};
use tunnox_runtime_tokio::storage::{EmbeddedStore, RedisConfig};
use tunnox_runtime_tokio::tls::NodeIdentity;

use crate::config::{BrokerChoice, ClusterFile, ServerFile, StorageKind, tls_identity_files};

/// Options of `tunnox server`. Each flag also reads its `TUNNOX_…` environment variable and
/// overrides the same key of the `--config` file.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// A YAML configuration file (keys in docs/configuration.md).
    #[arg(long, env = "TUNNOX_CONFIG")]
    config: Option<PathBuf>,
    /// Address clients connect to [default: 0.0.0.0:7000].
    #[arg(long, env = "TUNNOX_LISTEN")]
    listen: Option<String>,
    /// Directory for the store and the node's TLS identity [default: ./data].
    #[arg(long, env = "TUNNOX_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// This node's id [default: node-1].
    #[arg(long, env = "TUNNOX_NODE_ID")]
    node_id: Option<String>,
    /// Keep state in memory only (lost on restart).
    #[arg(long, env = "TUNNOX_MEMORY_STORAGE")]
    memory_storage: bool,
    /// Refuse unknown clients instead of registering them anonymously.
    #[arg(long, env = "TUNNOX_NO_REGISTRATION")]
    no_registration: bool,
    /// Address node ports bind by default [default: 0.0.0.0].
    #[arg(long, env = "TUNNOX_NODE_PORT_BIND")]
    node_port_bind: Option<String>,
    /// Serve `/health`, `/ready`, `/version` and `/metrics` over HTTP on this address [default:
    /// off].
    #[arg(long, env = "TUNNOX_API_LISTEN")]
    api_listen: Option<String>,
    /// Serve client sessions without TLS. Never on a network you do not control.
    #[arg(long, env = "TUNNOX_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Names in the generated certificate (besides localhost and the node id).
    #[arg(long = "tls-name", env = "TUNNOX_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// PEM certificate chain to serve instead of a generated one (needs --tls-key-file).
    #[arg(long, env = "TUNNOX_TLS_CERT_FILE", value_name = "PATH")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "TUNNOX_TLS_KEY_FILE", value_name = "PATH")]
    tls_key_file: Option<PathBuf>,
}

/// A 32-byte seed for the node's RNG, from the OS (once, here in the binary).
pub fn os_seed() -> anyhow::Result<[u8; 32]> {
    tunnox_runtime_tokio::random::os_random()
        .context("reading the OS's secure random source for the node's random seed")
}

/// The digest of the admin API key: from `TUNNOX_API_KEY`, or the one kept in
/// `DATA_DIR/api-key.sha256`, or (when `generate`) a new one made now, whose key is printed
/// once and only its SHA-256 kept.
fn admin_key(data_dir: &std::path::Path, generate: bool) -> anyhow::Result<Option<[u8; 32]>> {
    use tunnox_runtime_tokio::api::key_digest;
    if let Ok(key) = std::env::var("TUNNOX_API_KEY") {
        anyhow::ensure!(
            key.len() >= 16,
            "TUNNOX_API_KEY must be at least 16 characters"
        );
        return Ok(Some(key_digest(&key)));
    }
    let path = data_dir.join("api-key.sha256");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return tunnox_core::hex::decode::<32>(text.trim())
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("{} is not a SHA-256 digest", path.display()));
    }
    if !generate {
        return Ok(None);
    }
    let key = tunnox_core::hex::encode(&os_seed()?);
    let digest = key_digest(&key);
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::write(&path, tunnox_core::hex::encode(&digest))
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "admin API key (shown once, only its hash is kept in {}): {key}",
        path.display()
    );
    Ok(Some(digest))
}

/// Who may use the management API: the admin key, `api.keys`, and JWTs signed with the
/// configured secret; with neither keys nor a JWT secret configured, an admin key is generated.
fn api_auth(
    data_dir: &std::path::Path,
    api: &crate::config::ApiFile,
) -> anyhow::Result<tunnox_runtime_tokio::api::ApiAuth> {
    use tunnox_runtime_tokio::api::{ApiAuth, ApiKey, Role, auth};
    let mut keys = Vec::new();
    for key in &api.keys {
        let sha256 = tunnox_core::hex::decode::<32>(key.sha256.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "api.keys: `{}` has a sha256 that is not 64 hex digits",
                key.name
            )
        })?;
        keys.push(ApiKey {
            name: key.name.clone(),
            sha256,
            role: key.role,
        });
    }
    let jwt_secret = match (std::env::var("TUNNOX_API_JWT_SECRET"), &api.jwt_secret_file) {
        (Ok(secret), _) => Some(secret.into_bytes()),
        (Err(_), Some(path)) => Some(
            std::fs::read(path)
                .with_context(|| format!("api.jwt_secret_file: reading {}", path.display()))?
                .trim_ascii()
                .to_vec(),
        ),
        (Err(_), None) => None,
    };
    let generate = keys.is_empty() && jwt_secret.is_none();
    if let Some(sha256) = admin_key(data_dir, generate)? {
        keys.push(ApiKey {
            name: "admin".into(),
            sha256,
            role: Role::Admin,
        });
    }
    let mut auth = ApiAuth::new(keys)
        .with_rate_limit(
            api.rate_burst.unwrap_or(auth::RATE_BURST_DEFAULT),
            api.rate_per_sec.unwrap_or(auth::RATE_PER_SEC_DEFAULT),
        )
        .with_cors_origins(&api.cors_origins)
        .context("api.cors_origins")?;
    if let Some(secret) = jwt_secret {
        auth = auth
            .with_jwt_secret(&secret)
            .context("api.jwt_secret_file (TUNNOX_API_JWT_SECRET)")?;
    }
    Ok(auth)
}

/// The shortest cluster token accepted.
const CLUSTER_TOKEN_MIN_CHARS: usize = 16;

/// What a clustered node needs before it starts.
struct ClusterStart {
    settings: ClusterSettings,
    store: ClusterStore,
    broker: AnyBroker,
    key: AuthKey,
    bridge: TcpListener,
    hello: LinkHello,
    tls: Option<BridgeTls>,
}

/// Reads the cluster token, binds the bridge, connects storage and the broker.
async fn start_cluster(
    file: &ClusterFile,
    node_id: &str,
    rng: &mut Rng,
    metrics: &NodeMetrics,
) -> anyhow::Result<ClusterStart> {
    let token = match std::env::var("TUNNOX_CLUSTER_TOKEN") {
        Ok(token) => token,
        Err(_) => match &file.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading cluster.token_file {}", path.display()))?,
            None => anyhow::bail!(
                "cluster.token_file (or TUNNOX_CLUSTER_TOKEN) is missing: nodes of a cluster \
                 prove a shared token to each other"
            ),
        },
    };
    let token = token.trim();
    anyhow::ensure!(
        token.chars().count() >= CLUSTER_TOKEN_MIN_CHARS,
        "the cluster token must be at least {CLUSTER_TOKEN_MIN_CHARS} characters"
    );
    let node = NodeId::parse(node_id).map_err(|e| anyhow::anyhow!("node_id: {e}"))?;
    let prefix = file.key_prefix.clone().unwrap_or_else(|| "tunnox:".into());
    let lease = Duration::from_millis(file.lease_ms.unwrap_or(3000).max(300));
    let tls = match &file.tls {
        Some(t) => {
            let tls = BridgeTls::from_files(&t.cert_file, &t.key_file, &t.ca_file)?;
            tls.check()?;
            Some(tls)
        }
        None => None,
    };
    let bridge = TcpListener::bind(&file.bridge_listen)
        .await
        .with_context(|| format!("cannot listen for the bridge on {}", file.bridge_listen))?;
    let loopback = bridge.local_addr()?.ip().is_loopback();
    match (&tls, loopback, file.insecure_plaintext_bridge) {
        (Some(_), _, _) => {}
        (None, false, false) => anyhow::bail!(
            "cluster.tls is missing: a bridge on {} would carry tunnel bytes in plaintext; set \
             cluster.tls (cert_file, key_file, ca_file) or, on a network you control, \
             cluster.insecure_plaintext_bridge: true",
            file.bridge_listen
        ),
        (None, _, _) => eprintln!(
            "WARNING: bridge links are NOT encrypted (no cluster.tls); they are authenticated \
             by the cluster token"
        ),
    }
    let bridge_addr = match &file.bridge_advertise {
        Some(addr) => addr.clone(),
        None => bridge.local_addr()?.to_string(),
    };
    let mut redis = RedisConfig::new(file.redis_url.clone());
    redis.key_prefix = prefix.clone();
    let store = ClusterStore::open(&redis)?.with_metrics(metrics.storage().clone());
    let kind = match file.broker {
        BrokerChoice::Redis => BrokerKind::Redis {
            url: file.redis_url.clone(),
        },
        BrokerChoice::Nats => BrokerKind::Nats {
            url: file
                .nats_url
                .clone()
                .context("cluster.nats_url is missing: broker is nats")?,
        },
    };
    let epoch = rng.next_u64().max(1);
    let broker_config = BrokerConfig {
        kind,
        channel_prefix: prefix,
        ..BrokerConfig::default()
    };
    let origin = Origin {
        node: node.clone(),
        incarnation: epoch,
    };
    let broker = AnyBroker::connect(broker_config, origin, rng.fork())
        .await
        .context("connecting the cluster broker")?;
    broker.report_to(metrics.broker().clone());
    Ok(ClusterStart {
        settings: ClusterSettings {
            node_id: node,
            bridge_addr,
            lease,
        },
        store,
        broker,
        key: AuthKey::derive(token),
        bridge,
        hello: LinkHello {
            node_id: node_id.to_owned(),
            epoch,
        },
        tls,
    })
}

/// Runs a node until SIGINT/SIGTERM, then drains.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ServerFile::load(path)?,
        None => ServerFile::default(),
    };
    let listen = args
        .listen
        .or(file.listen.clone())
        .unwrap_or_else(|| "0.0.0.0:7000".into());
    let data_dir = args
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let node_id = args
        .node_id
        .or(file.node_id.clone())
        .unwrap_or_else(|| "node-1".into());
    let memory = args.memory_storage || file.storage == Some(StorageKind::Memory);
    let allow_registration = !args.no_registration && file.allow_registration.unwrap_or(true);
    let node_port_bind = args
        .node_port_bind
        .or(file.node_port_bind.clone())
        .unwrap_or_else(|| "0.0.0.0".into());
    let plaintext = args.insecure_plaintext || file.tls.insecure_plaintext;
    let identity_files = tls_identity_files(
        args.tls_cert_file.or(file.tls.cert_file.clone()),
        args.tls_key_file.or(file.tls.key_file.clone()),
    )?;
    // Loaded before anything is bound or opened: a bad certificate or key fails the start cleanly.
    let identity = match (plaintext, &identity_files) {
        (true, Some((cert, _))) => {
            eprintln!("note: {} is not served: TLS is off", cert.display());
            None
        }
        (true, None) => None,
        (false, Some((cert, key))) => {
            if !file.tls.names.is_empty() || !args.tls_names.is_empty() {
                eprintln!(
                    "note: tls.names only apply to a generated certificate; serving {}",
                    cert.display()
                );
            }
            Some(NodeIdentity::from_pem_files(cert, key)?)
        }
        (false, None) => {
            let mut names = vec!["localhost".to_owned(), node_id.clone()];
            names.extend(file.tls.names.iter().cloned());
            names.extend(args.tls_names.iter().cloned());
            Some(NodeIdentity::load_or_generate(&data_dir, &names)?)
        }
    };

    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut rng = Rng::from_seed(os_seed()?);
    // Counted from the start (storage and broker included), served if the API is.
    let metrics = Arc::new(NodeMetrics::new());
    let cluster = match &file.cluster {
        Some(cluster) => Some(start_cluster(cluster, &node_id, &mut rng, &metrics).await?),
        None => None,
    };
    // A clustered node's state is the cluster's, in Redis.
    let store = if memory || cluster.is_some() {
        None
    } else {
        let path = data_dir.join("tunnox.redb");
        Some(EmbeddedStore::open(&path).with_context(|| format!("opening {}", path.display()))?)
    };
    let state = match (&store, &cluster) {
        (Some(store), _) => store.load()?,
        (None, Some(cluster)) => cluster
            .store
            .load_state()
            .await
            .context("loading the cluster's state from Redis")?,
        (None, None) => ControlState::default(),
    };
    let mut config = NodeConfig::new(node_id.clone());
    config.allow_registration = allow_registration;
    file.guard.apply(&mut config.guard);
    file.limits.apply(&mut config);
    if let Some(cluster) = &cluster {
        config.cluster = Some(ClusterConfig {
            key: cluster.key.clone(),
            pool: PoolConfig::default(),
        });
    }
    let clock = Clock::new();
    let mut node = Node::new(clock.now(), wall_now(), config, state, rng.fork());
    for mapping in file.mappings(wall_now())? {
        let name = mapping.id.clone();
        node.put_mapping(clock.now(), mapping)
            .with_context(|| format!("configured mapping {name}"))?;
    }
    let mut driver = NodeDriver::new(node, clock, store, &node_port_bind)
        .with_client_connections_max(file.limits.client_connections_max())
        .with_metrics(metrics.clone());
    let ready = Arc::new(AtomicBool::new(false));
    // The API is served once the node runs (its routes talk to the node).
    let mut api = None;
    if let Some(addr) = args.api_listen.or(file.api_listen.clone()) {
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen for the API on {addr}"))?;
        println!(
            "http endpoints (/health, /ready, /version, /metrics, /api/v1) on {}",
            listener.local_addr()?
        );
        let state = ApiState::new(metrics.clone(), ready.clone())
            .with_auth(api_auth(&data_dir, &file.api)?);
        api = Some((listener, state));
    }
    let mut coordinator = None;
    if let Some(cluster) = cluster {
        let (accepted_tx, accepted) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(4096);
        let service = BridgeService::new(cluster.hello.clone(), accepted_tx);
        println!(
            "cluster: bridge on {} (advertised as {}), lease {} ms",
            cluster.bridge.local_addr()?,
            cluster.settings.bridge_addr,
            cluster.settings.lease.as_millis()
        );
        let bridge_tls = cluster.tls.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tunnox_runtime_tokio::bridge::serve(cluster.bridge, service, bridge_tls).await
            {
                eprintln!("the cluster bridge stopped: {e}");
            }
        });
        driver = driver.with_cluster(cluster.hello, cluster.tls, accepted, events_tx);
        coordinator = Some((
            Coordinator::new_detached(cluster.settings, cluster.store, cluster.broker)
                .with_metrics(metrics.storage().clone()),
            events,
        ));
    }
    if let Some(identity) = &identity {
        driver = driver.with_tls(identity.acceptor()?);
    }
    // The node runs and counts as ready before the address is printed, so whoever waits for
    // the line finds it serving.
    let listen_addr = listener.local_addr()?;
    let (commands, task) = spawn_node(driver, listener);
    if let Some((listener, state)) = api {
        let state = state.with_node(commands.clone());
        tokio::spawn(async move {
            if let Err(e) = tunnox_runtime_tokio::api::serve(listener, state).await {
                eprintln!("the http endpoints stopped: {e}");
            }
        });
    }
    ready.store(true, Ordering::Relaxed);
    println!("tunnox node {node_id} listening on {listen_addr}");
    match &identity {
        None => eprintln!("WARNING: client sessions are NOT encrypted (insecure plaintext)."),
        Some(identity) => {
            println!("TLS certificate fingerprint: {}", identity.fingerprint());
            println!(
                "  clients pin it with: tunnox client --server HOST:PORT --fingerprint {}",
                identity.fingerprint()
            );
            if identity_files.is_some() {
                println!(
                    "  or trust the CA that signed it: tunnox client --server HOST:PORT \
                     --ca-file CA.pem"
                );
            }
        }
    }
    match (memory, coordinator.is_some()) {
        (_, true) => println!("state: shared by the cluster, in Redis"),
        (true, false) => println!("state: in memory (lost on restart)"),
        (false, false) => println!("state: {}", data_dir.join("tunnox.redb").display()),
    }
    let mut cluster_task = None;
    if let Some((coordinator, events)) = coordinator {
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(coordinator.attach(commands.clone()).run(events, stopped));
        cluster_task = Some((stop, handle));
    }
    shutdown_signal().await;
    ready.store(false, Ordering::Relaxed);
    if let Some((stop, handle)) = cluster_task {
        // Leave the cluster first, so peers stop sending new streams here.
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
    }
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
