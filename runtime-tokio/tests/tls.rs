//! Client sessions over TLS on loopback: a client that pins the node's fingerprint, or trusts
//! the CA that signed the node's configured certificate, works end to end; a wrong pin, a wrong
//! server name, a foreign CA or a plaintext client never gets a session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{create_client, echo_server, free_port, many_connections};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnox_core::agent::{Agent, AgentConfig, AgentOutput};
use tunnox_core::control::{ClientId, ClientSecret, Entry, Mapping, MappingId};
use tunnox_core::node::{ControlState, Node, NodeConfig};
use tunnox_core::rng::Rng;
use tunnox_core::session::ClientIdentity;
use tunnox_runtime_tokio::agent::{AgentDriver, spawn_agent};
use tunnox_runtime_tokio::clock::{Clock, wall_now};
use tunnox_runtime_tokio::node::{NodeCommand, NodeDriver, put_mapping, spawn_node};
use tunnox_runtime_tokio::tls::{Fingerprint, NodeIdentity, ServerTrust, connector, load_ca_file};

/// Starts a TLS node with a generated identity; returns its commands, address and certificate
/// fingerprint.
async fn tls_node(name: &str) -> (mpsc::Sender<NodeCommand>, SocketAddr, Fingerprint) {
    let dir = std::env::temp_dir().join(format!("tunnox-tls-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let identity = NodeIdentity::load_or_generate(&dir, &["localhost".into()]).unwrap();
    tls_node_serving(identity).await
}

/// Starts a TLS node serving `identity`; returns its commands, address and fingerprint.
async fn tls_node_serving(
    identity: NodeIdentity,
) -> (mpsc::Sender<NodeCommand>, SocketAddr, Fingerprint) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = Clock::new();
    let node = Node::new(
        clock.now(),
        wall_now(),
        NodeConfig::new("node-tls"),
        ControlState::default(),
        Rng::seed_from_u64(7),
    );
    let driver =
        NodeDriver::new(node, clock, None, "127.0.0.1").with_tls(identity.acceptor().unwrap());
    let (tx, _task) = spawn_node(driver, listener);
    (tx, addr, identity.fingerprint())
}

/// Starts an agent trusting the node as `trust` says (plain TCP when `None`) under the name
/// `localhost`; returns its notices.
fn agent(
    node: SocketAddr,
    id: ClientId,
    secret: &ClientSecret,
    trust: Option<ServerTrust>,
) -> mpsc::Receiver<AgentOutput> {
    agent_verifying(node, id, secret, trust, "localhost")
}

/// [`agent`], verifying `server_name` in the node's certificate.
fn agent_verifying(
    node: SocketAddr,
    id: ClientId,
    secret: &ClientSecret,
    trust: Option<ServerTrust>,
    server_name: &str,
) -> mpsc::Receiver<AgentOutput> {
    agent_to_servers(vec![node], &[server_name], id, secret, trust)
}

/// An agent trying `servers` in turn, verifying `server_names[i]` in the certificate of
/// `servers[i]` when `trust` is given.
fn agent_to_servers(
    servers: Vec<SocketAddr>,
    server_names: &[&str],
    id: ClientId,
    secret: &ClientSecret,
    trust: Option<ServerTrust>,
) -> mpsc::Receiver<AgentOutput> {
    let clock = Clock::new();
    let identity = ClientIdentity::Login {
        client_id: id.0,
        key: secret.auth_key(),
    };
    let agent = Agent::new(
        clock.now(),
        AgentConfig::new(identity, servers.len()),
        Rng::seed_from_u64(id.0),
    );
    let (notices_tx, notices) = mpsc::channel(256);
    let mut driver = AgentDriver::new(agent, clock, servers, notices_tx);
    if let Some(trust) = trust {
        let names = server_names
            .iter()
            .map(|name| ServerName::try_from(name.to_string()).unwrap())
            .collect();
        driver = driver.with_tls_names(connector(trust).unwrap(), names);
    }
    let (commands, _task) = spawn_agent(driver);
    std::mem::forget(commands);
    notices
}

/// Whether the agent establishes a session within `wait`.
async fn establishes(notices: &mut mpsc::Receiver<AgentOutput>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, notices.recv()).await {
            Ok(Some(AgentOutput::Established { .. })) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}

/// A client-port mapping from `a` to an echo service behind `b` carries `connections`
/// concurrent connections byte-exact (`seed` names the mapping).
async fn a_client_port_mapping_carries(
    node: &mpsc::Sender<NodeCommand>,
    a: ClientId,
    b: ClientId,
    seed: u64,
    connections: u64,
) {
    let echo = echo_server().await;
    let port = free_port();
    let entry = Entry::ClientPort {
        listen_client: a,
        listen_addr: format!("127.0.0.1:{port}"),
    };
    let id = MappingId::generate(&mut Rng::seed_from_u64(seed));
    let mapping = Mapping::tcp(id, entry, b, "127.0.0.1", echo.port(), wall_now());
    put_mapping(node, mapping).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), many_connections(port, connections))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_tunnel_over_tls() {
    let (node, addr, pin) = tls_node("pinned").await;
    let (a, secret_a) = create_client(&node, "listen").await;
    let (b, secret_b) = create_client(&node, "target").await;
    let mut na = agent(addr, a, &secret_a, Some(ServerTrust::Pinned(pin)));
    let mut nb = agent(addr, b, &secret_b, Some(ServerTrust::Pinned(pin)));
    assert!(establishes(&mut na, Duration::from_secs(5)).await);
    assert!(establishes(&mut nb, Duration::from_secs(5)).await);
    std::mem::forget((na, nb));
    a_client_port_mapping_carries(&node, a, b, 1, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_or_plaintext_never_gets_a_session() {
    let (node, addr, pin) = tls_node("refused").await;
    let (a, secret_a) = create_client(&node, "a").await;
    let wrong = Fingerprint::parse(&"00".repeat(32)).unwrap();
    let mut pinned_wrong = agent(addr, a, &secret_a, Some(ServerTrust::Pinned(wrong)));
    assert!(
        !establishes(&mut pinned_wrong, Duration::from_secs(2)).await,
        "a wrong pin must fail"
    );
    let (b, secret_b) = create_client(&node, "b").await;
    let mut plaintext = agent(addr, b, &secret_b, None);
    assert!(
        !establishes(&mut plaintext, Duration::from_secs(2)).await,
        "plaintext must fail"
    );
    // The node is fine: a correctly pinned client still gets in.
    let (c, secret_c) = create_client(&node, "c").await;
    let mut good = agent(addr, c, &secret_c, Some(ServerTrust::Pinned(pin)));
    assert!(establishes(&mut good, Duration::from_secs(5)).await);
}

/// PEM files of a test PKI in one directory.
struct Pki {
    dir: PathBuf,
    /// The CA that signed `node_cert`.
    ca: PathBuf,
    /// A CA that signed nothing here.
    foreign_ca: PathBuf,
    /// The node's certificate for `node.test`, then the CA's (a chain as operators deploy it).
    node_cert: PathBuf,
    node_key: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed CA certificate and its issuer.
fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// Generates a CA, a node certificate for `node.test` signed by it, and an unrelated CA.
fn pki(test: &str) -> Pki {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
    let dir = std::env::temp_dir().join(format!("tunnox-pki-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_cert, issuer) = ca("tunnox test CA");
    let (foreign_cert, _) = ca("some other CA");
    let node_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["node.test".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let node_cert = params.signed_by(&node_key, &issuer).unwrap();
    let write = |name: &str, text: String| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        foreign_ca: write("foreign-ca.pem", foreign_cert.pem()),
        node_cert: write(
            "node-chain.pem",
            format!("{}{}", node_cert.pem(), ca_cert.pem()),
        ),
        node_key: write("node-key.pem", node_key.serialize_pem()),
        dir,
    }
}

/// Trust in the CA certificates of `ca_file`.
fn roots(ca_file: &Path) -> Option<ServerTrust> {
    Some(ServerTrust::Roots(load_ca_file(ca_file).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trusting_the_ca_tunnel_to_a_node_with_a_configured_certificate() {
    let pki = pki("ca-trusted");
    let identity = NodeIdentity::from_pem_files(&pki.node_cert, &pki.node_key).unwrap();
    let (node, addr, _) = tls_node_serving(identity).await;
    let (a, secret_a) = create_client(&node, "listen").await;
    let (b, secret_b) = create_client(&node, "target").await;
    let mut na = agent_verifying(addr, a, &secret_a, roots(&pki.ca), "node.test");
    let mut nb = agent_verifying(addr, b, &secret_b, roots(&pki.ca), "node.test");
    assert!(establishes(&mut na, Duration::from_secs(5)).await);
    assert!(establishes(&mut nb, Duration::from_secs(5)).await);
    std::mem::forget((na, nb));
    a_client_port_mapping_carries(&node, a, b, 2, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_name_or_a_foreign_ca_never_gets_a_session() {
    let pki = pki("ca-refused");
    let identity = NodeIdentity::from_pem_files(&pki.node_cert, &pki.node_key).unwrap();
    let (node, addr, _) = tls_node_serving(identity).await;
    let (a, secret_a) = create_client(&node, "a").await;
    // The right CA, but the certificate is for node.test, not for the address dialled.
    let mut wrong_name = agent_verifying(addr, a, &secret_a, roots(&pki.ca), "127.0.0.1");
    assert!(
        !establishes(&mut wrong_name, Duration::from_secs(2)).await,
        "a certificate for another name must fail"
    );
    let (b, secret_b) = create_client(&node, "b").await;
    let mut foreign = agent_verifying(addr, b, &secret_b, roots(&pki.foreign_ca), "node.test");
    assert!(
        !establishes(&mut foreign, Duration::from_secs(2)).await,
        "a CA that did not sign the certificate must fail"
    );
    // The node is fine: a client with the right CA and name still gets in.
    let (c, secret_c) = create_client(&node, "c").await;
    let mut good = agent_verifying(addr, c, &secret_c, roots(&pki.ca), "node.test");
    assert!(establishes(&mut good, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_is_verified_under_its_own_name() {
    let pki = pki("per-server-names");
    let identity = NodeIdentity::from_pem_files(&pki.node_cert, &pki.node_key).unwrap();
    let (node, addr, _) = tls_node_serving(identity).await;
    // The same node twice: the first try verifies a name its certificate lacks and fails; the
    // second verifies node.test and gets in, so the second server's own name was used.
    let (a, secret_a) = create_client(&node, "a").await;
    let servers = vec![addr, addr];
    let mut own_names = agent_to_servers(
        servers.clone(),
        &["wrong.test", "node.test"],
        a,
        &secret_a,
        roots(&pki.ca),
    );
    assert!(establishes(&mut own_names, Duration::from_secs(10)).await);
    // With one name for both, every try verifies it.
    let (b, secret_b) = create_client(&node, "b").await;
    let mut one_name = agent_to_servers(servers, &["wrong.test"], b, &secret_b, roots(&pki.ca));
    assert!(!establishes(&mut one_name, Duration::from_secs(2)).await);
}
