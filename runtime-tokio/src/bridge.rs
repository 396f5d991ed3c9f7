//! The node-to-node bridge over tonic (`proto/bridge.proto`): every `NodeBridge.Stream` call is
//! one bridge link. The node sees a link as an ordinary byte stream (the node side of an
//! in-memory pipe); two pump tasks move its bytes into `BridgePacket`s and back. Authentication,
//! flow control, heartbeats and stream multiplexing are the session protocol's, in core: the
//! dialling node logs in as a peer and proves the cluster key. Each dial is its own HTTP/2
//! connection, so the pool's links are separate TCP connections. With [`BridgeTls`] the links
//! run over mutual TLS: every node presents a certificate signed by the cluster's CA and accepts
//! only peers whose certificate is.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::net::{Conn, Listener, Net};
use tunnox_proto::bridge::BridgePacket;
use tunnox_proto::bridge::node_bridge_client::NodeBridgeClient;
use tunnox_proto::bridge::node_bridge_server::{NodeBridge, NodeBridgeServer};

/// Bytes buffered in each direction of a link's pipe.
const LINK_BUFFER_BYTES: usize = 256 * 1024;
/// Most bytes of the frame stream in one packet.
const PACKET_BYTES: usize = 64 * 1024;
/// Packets queued toward gRPC per link.
const PACKETS_QUEUED: usize = 16;
/// HTTP/2 windows of a link (its one gRPC stream and its connection). The mux inside already
/// bounds what is in flight per tunnel stream and per link, so HTTP/2's own flow control must not
/// be the tighter limit: its 64 KiB default halved cross-node throughput.
const H2_STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
const H2_CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// Who is at one end of a link: sent in the first packet each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHello {
    /// The node id.
    pub node_id: String,
    /// The node's incarnation (random at each start, never 0).
    pub epoch: u64,
}

/// A link ready for the node: its byte stream and who the peer said it is (the session
/// handshake inside proves it).
#[derive(Debug)]
pub struct BridgeLink {
    /// The node's end of the link.
    pub stream: DuplexStream,
    /// The peer's first packet.
    pub peer: LinkHello,
}

/// Mutual TLS for bridge links: this node's certificate and key, and the cluster CA that signs
/// every node's certificate (PEM).
#[derive(Clone)]
pub struct BridgeTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

impl std::fmt::Debug for BridgeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeTls")
    }
}

impl BridgeTls {
    /// From PEM bytes.
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>, ca_pem: Vec<u8>) -> BridgeTls {
        BridgeTls {
            cert_pem,
            key_pem,
            ca_pem,
        }
    }

    /// Reads the three PEM files.
    pub fn from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<BridgeTls, BridgeError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| BridgeError::Tls(format!("{}: {e}", path.display())))
        };
        Ok(BridgeTls::from_pem(read(cert)?, read(key)?, read(ca)?))
    }

    /// Checks that the certificate, key and CA make a usable server configuration (so a bad file
    /// stops the start instead of the bridge).
    pub fn check(&self) -> Result<(), BridgeError> {
        tonic::transport::Server::builder()
            .tls_config(self.server_config())
            .map(|_| ())
            .map_err(|e| BridgeError::Tls(e.to_string()))
    }

    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
    }

    fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    fn ca(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(&self.ca_pem)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The name a peer's certificate must carry: the host part of its bridge address.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The TLS settings are unusable, or the server could not start with them.
    #[error("bridge TLS: {0}")]
    Tls(String),
    /// The address is not a valid endpoint.
    #[error("invalid bridge address {0}")]
    Address(String),
    /// The peer could not be reached.
    #[error("cannot reach the bridge at {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
    /// The peer answered the call with an error.
    #[error("the bridge at {addr} refused the link: {status}")]
    Refused {
        /// The address dialled.
        addr: String,
        /// The gRPC status.
        status: Box<Status>,
    },
    /// The peer's first packet was missing or did not name it.
    #[error("the bridge at {0} did not introduce itself")]
    NoHello(String),
}

fn hello_packet(hello: &LinkHello) -> BridgePacket {
    BridgePacket {
        epoch: hello.epoch,
        node_id: hello.node_id.clone(),
        frames: Bytes::new(),
    }
}

/// Reads the first packet: it must carry a node id and a non-zero epoch.
async fn read_hello(inbound: &mut Streaming<BridgePacket>) -> Option<(LinkHello, Bytes)> {
    let first = inbound.message().await.ok()??;
    if first.epoch == 0 || first.node_id.is_empty() || first.node_id.len() > 64 {
        return None;
    }
    let hello = LinkHello {
        node_id: first.node_id,
        epoch: first.epoch,
    };
    Some((hello, first.frames))
}

/// Moves bytes between the bridge end of a link's pipe and the gRPC stream until either side
/// ends; then both are dropped, so the other side sees the end too.
async fn pump<T: Send + 'static>(
    bridge_end: DuplexStream,
    mut inbound: Streaming<BridgePacket>,
    outbound: mpsc::Sender<T>,
    wrap: fn(BridgePacket) -> T,
) {
    let (mut read, mut write) = tokio::io::split(bridge_end);
    let up = async move {
        loop {
            let mut buf = BytesMut::with_capacity(PACKET_BYTES);
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let packet = BridgePacket {
                        epoch: 0,
                        node_id: String::new(),
                        frames: buf.freeze(),
                    };
                    if outbound.send(wrap(packet)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async move {
        while let Ok(Some(packet)) = inbound.message().await {
            if write.write_all(&packet.frames).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Starts a link's pump over a fresh pipe whose node end is returned; `early` are frame bytes
/// that came with the peer's first packet.
async fn start_link<T: Send + 'static>(
    inbound: Streaming<BridgePacket>,
    outbound: mpsc::Sender<T>,
    wrap: fn(BridgePacket) -> T,
    early: Bytes,
) -> Option<DuplexStream> {
    let (node_end, mut bridge_end) = tokio::io::duplex(LINK_BUFFER_BYTES);
    if !early.is_empty() && bridge_end.write_all(&early).await.is_err() {
        return None;
    }
    tokio::spawn(pump(bridge_end, inbound, outbound, wrap));
    Some(node_end)
}

/// The `NodeBridge` service: hands every accepted link to the node driver.
#[derive(Debug, Clone)]
pub struct BridgeService {
    hello: LinkHello,
    accepted: mpsc::Sender<BridgeLink>,
}

impl BridgeService {
    /// A service introducing itself as `hello` and handing links to `accepted`.
    pub fn new(hello: LinkHello, accepted: mpsc::Sender<BridgeLink>) -> BridgeService {
        BridgeService { hello, accepted }
    }
}

#[tonic::async_trait]
impl NodeBridge for BridgeService {
    type StreamStream = ReceiverStream<Result<BridgePacket, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<BridgePacket>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (peer, early) = read_hello(&mut inbound).await.ok_or_else(|| {
            Status::invalid_argument("the first packet must carry node_id and a non-zero epoch")
        })?;
        let (tx, rx) = mpsc::channel(PACKETS_QUEUED);
        tx.send(Ok(hello_packet(&self.hello)))
            .await
            .map_err(|_| Status::unavailable("link closed"))?;
        let stream = start_link(inbound, tx, Ok, early)
            .await
            .ok_or_else(|| Status::unavailable("link closed"))?;
        self.accepted
            .send(BridgeLink { stream, peer })
            .await
            .map_err(|_| Status::unavailable("this node is stopping"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the bridge on `listener` (over mutual TLS with `tls`) until the task is dropped or
/// the listener fails.
pub async fn serve(
    listener: TcpListener,
    service: BridgeService,
    tls: Option<BridgeTls>,
) -> Result<(), BridgeError> {
    serve_on(Box::new(listener), service, tls).await
}

/// [`serve`] on any network's listener.
pub async fn serve_on(
    listener: Box<dyn Listener>,
    service: BridgeService,
    tls: Option<BridgeTls>,
) -> Result<(), BridgeError> {
    let incoming = futures_util::stream::unfold(listener, |mut listener| async move {
        let accepted = listener.accept().await.map(|(conn, _)| conn);
        Some((accepted, listener))
    });
    let mut server = tonic::transport::Server::builder()
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES);
    if let Some(tls) = tls {
        server = server
            .tls_config(tls.server_config())
            .map_err(|e| BridgeError::Tls(e.to_string()))?;
    }
    server
        .add_service(NodeBridgeServer::new(service))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| BridgeError::Tls(e.to_string()))
}

/// Opens a link to the bridge at `addr` (host:port), introducing this node as `hello`; with
/// `tls`, over mutual TLS, the peer's certificate checked against the cluster CA for the host
/// part of `addr`.
pub async fn dial(
    net: &Arc<dyn Net>,
    addr: &str,
    hello: &LinkHello,
    connect_timeout: Duration,
    tls: Option<&BridgeTls>,
) -> Result<BridgeLink, BridgeError> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(_, port)| Some((host_of(addr).to_owned(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| BridgeError::Address(addr.to_owned()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|_| BridgeError::Address(addr.to_owned()))?
        .connect_timeout(connect_timeout)
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tls.ca())
            .identity(tls.identity())
            .domain_name(host_of(addr));
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| BridgeError::Tls(e.to_string()))?;
    }
    let net = net.clone();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let connect = net.connect(host.clone(), port);
        async move { connect.await.map(hyper_util::rt::TokioIo::new) }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| BridgeError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let mut client = NodeBridgeClient::new(channel);
    let (tx, rx) = mpsc::channel(PACKETS_QUEUED);
    tx.send(hello_packet(hello))
        .await
        .map_err(|_| BridgeError::NoHello(addr.to_owned()))?;
    let response = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|status| BridgeError::Refused {
            addr: addr.to_owned(),
            status: Box::new(status),
        })?;
    let mut inbound = response.into_inner();
    let (peer, early) = read_hello(&mut inbound)
        .await
        .ok_or_else(|| BridgeError::NoHello(addr.to_owned()))?;
    let stream = start_link(inbound, tx, |p| p, early)
        .await
        .ok_or_else(|| BridgeError::NoHello(addr.to_owned()))?;
    Ok(BridgeLink { stream, peer })
}
