//! Runs a `Node` on tokio over plain TCP: one task owns the node; client connections and
//! node-port visitors are sockets whose tasks report to it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tunnox_core::control::{ClientId, ClientSecret, Mapping, MappingId, NodeId, UserId};
use tunnox_core::node::{AdminError, Node, NodeOutput, Notice, StateChange};
use tunnox_core::relay::LocalOutput;

use crate::bridge::{BridgeLink, BridgeTls, LinkHello};
use crate::clock::Clock;
use crate::net::{Conn, Listener, Net, TokioNet};
use crate::socket::{Framing, Outbox, SocketEvent, SocketId, SocketTable, Stuck};
use crate::storage::{EmbeddedStore, StoreWriter};

/// `held`, or else the next command from the channel.
async fn next_command(
    held: Option<NodeCommand>,
    commands: &mut mpsc::Receiver<NodeCommand>,
) -> Option<NodeCommand> {
    match held {
        Some(command) => Some(command),
        None => commands.recv().await,
    }
}

/// Most commands run back to back before the driver flushes (and commits their changes).
const COMMANDS_PER_FLUSH: usize = 64;

/// Capacity of the driver's event channel (socket readers wait when it is full).
const EVENTS: usize = 1024;

/// Work run on the node's task with the node and the current time: the management API's reads
/// and changes. The job answers through a channel of its own.
pub struct NodeJob(Box<dyn JobFn>);

/// What a [`NodeJob`] runs.
trait JobFn: FnOnce(&mut Node, tunnox_core::time::Instant) + Send {}

impl<F: FnOnce(&mut Node, tunnox_core::time::Instant) + Send> JobFn for F {}

impl NodeJob {
    /// A job running `job`.
    pub fn new(
        job: impl FnOnce(&mut Node, tunnox_core::time::Instant) + Send + 'static,
    ) -> NodeJob {
        NodeJob(Box::new(job))
    }
}

impl std::fmt::Debug for NodeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeJob")
    }
}

/// Administrative requests to a running node.
#[derive(Debug)]
pub enum NodeCommand {
    /// Run a job on the node (see [`NodeJob`]).
    Run(NodeJob),
    /// Answer once every change made so far is durable in the node's store (`true`; `false`
    /// if the store refused it). Without a store of its own (memory, or a cluster whose
    /// coordinator writes Redis), answers `true` at once.
    Synced {
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// Create a client; answers its id and secret.
    CreateClient {
        /// Owning user, if any.
        owner: Option<UserId>,
        /// A label.
        label: String,
        /// The answer.
        reply: oneshot::Sender<Result<(ClientId, ClientSecret), AdminError>>,
    },
    /// Create or replace a mapping.
    PutMapping {
        /// The mapping.
        mapping: Box<Mapping>,
        /// The answer.
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// Delete a mapping.
    DeleteMapping {
        /// Its id.
        id: MappingId,
        /// The answer.
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// Disconnect a client wherever it is (GOAWAY Kicked: it does not reconnect by itself);
    /// answers whether its session was on this node (if not, and the node is in a cluster, the
    /// request goes to every other node).
    Kick {
        /// The client.
        client: ClientId,
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// A copy of the control state (users, clients, mappings, codes), for reads.
    Snapshot {
        /// The answer.
        reply: oneshot::Sender<Box<tunnox_core::node::ControlState>>,
    },
    /// Drain: GOAWAY to every client, then stop once all have gone or `within` has passed.
    Drain {
        /// The longest the drain may take.
        within: std::time::Duration,
        /// Answered when the node has stopped.
        done: oneshot::Sender<()>,
    },
    /// Stop the node.
    Shutdown,
    /// A peer node is a live member at this bridge address: keep links to it.
    PeerUp {
        /// The peer.
        peer: NodeId,
        /// Its bridge address (host:port).
        addr: String,
    },
    /// A peer node left the cluster.
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// Where a client's session is (`None`: offline), as storage or the broker says.
    SetRoute {
        /// The client.
        client: ClientId,
        /// Its node.
        node: Option<NodeId>,
    },
    /// Apply a change another node made.
    ApplyRemote(Box<StateChange>),
    /// Close a client's session here: `Replaced` when a newer session claimed its route
    /// elsewhere, `Normal` when this node lost its claim (the client reconnects).
    DisconnectClient {
        /// The client.
        client: ClientId,
        /// The GOAWAY reason.
        reason: tunnox_core::wire::GoAwayReason,
    },
    /// Catch up with the shared state (after missed broker messages).
    AdoptState(Box<tunnox_core::node::ControlState>),
}

/// What a clustered node tells its cluster task (which writes storage and publishes).
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterEvent {
    /// A durable change made on this node.
    Persisted(StateChange),
    /// A client's session was established here.
    ClientOnline(ClientId),
    /// A client's session here ended.
    ClientOffline(ClientId),
    /// The node needs the route of this client: read it and answer with `SetRoute`.
    LookupRoute(ClientId),
    /// Close this client's session on whichever node holds it (it is not here).
    Disconnect(ClientId),
}

/// How long a bridge dial may take.
const BRIDGE_DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A clustered driver's bridge links and its line to the cluster task.
#[derive(Debug)]
struct ClusterIo {
    hello: LinkHello,
    tls: Option<BridgeTls>,
    peer_addrs: BTreeMap<NodeId, String>,
    arrivals_tx: mpsc::Sender<LinkArrival>,
    arrivals: mpsc::Receiver<LinkArrival>,
    events: mpsc::Sender<ClusterEvent>,
}

/// A bridge link for the node: accepted from a peer, or the outcome of a dial.
#[derive(Debug)]
enum LinkArrival {
    Accepted(BridgeLink),
    Dialled(NodeId, Option<BridgeLink>),
}

/// Why a request to a running node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeRequestError {
    /// The node task has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// The node refused the request.
    #[error(transparent)]
    Refused(#[from] AdminError),
}

/// Sends `command` (built around a fresh reply channel) and waits for the node's answer.
async fn request<T>(
    node: &mpsc::Sender<NodeCommand>,
    command: impl FnOnce(oneshot::Sender<Result<T, AdminError>>) -> NodeCommand,
) -> Result<T, NodeRequestError> {
    let (reply, answer) = oneshot::channel();
    node.send(command(reply))
        .await
        .map_err(|_| NodeRequestError::Stopped)?;
    Ok(answer.await.map_err(|_| NodeRequestError::Stopped)??)
}

/// Creates an unowned client on the node; returns its id and secret.
pub async fn create_client(
    node: &mpsc::Sender<NodeCommand>,
    label: &str,
) -> Result<(ClientId, ClientSecret), NodeRequestError> {
    request(node, |reply| NodeCommand::CreateClient {
        owner: None,
        label: label.into(),
        reply,
    })
    .await
}

/// Creates or replaces a mapping on the node.
pub async fn put_mapping(
    node: &mpsc::Sender<NodeCommand>,
    mapping: Mapping,
) -> Result<(), NodeRequestError> {
    request(node, |reply| NodeCommand::PutMapping {
        mapping: Box::new(mapping),
        reply,
    })
    .await
}

#[derive(Debug)]
enum Kind {
    Client,
    Visitor {
        pending: VecDeque<Bytes>,
        eof: bool,
        paused: bool,
    },
}

/// Accepted node-port visitors, reported by the port's accept task.
type VisitorAccept = (u16, Conn, SocketAddr);

/// TLS for client sessions.
#[derive(Clone)]
struct ServerTls(TlsAcceptor);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// How long accepting pauses after the listener fails (out of file descriptors, say), so a
/// persistent failure does not spin the node's task.
const ACCEPT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Most client connections at once (handshaking or established) unless configured otherwise.
pub const CLIENT_CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// A client connection whose TLS handshake finished, with when it was accepted.
type Secured = (
    tokio_rustls::server::TlsStream<Conn>,
    SocketAddr,
    tunnox_core::time::Instant,
);

/// A node driven by tokio (see the module docs).
#[derive(Debug)]
pub struct NodeDriver {
    node: Node,
    clock: Clock,
    store: Option<EmbeddedStore>,
    /// Writes `store` off the node's task (started when the driver runs).
    writer: Option<StoreWriter>,
    /// Changes to hand to the writer at the end of this flush.
    unpersisted: Vec<StateChange>,
    sockets: SocketTable<Kind>,
    events: mpsc::Receiver<SocketEvent>,
    visitors_tx: mpsc::Sender<VisitorAccept>,
    visitors: mpsc::Receiver<VisitorAccept>,
    node_ports: BTreeMap<u16, JoinHandle<()>>,
    /// Address node ports bind when a mapping names none.
    default_bind: String,
    /// TLS for client sessions (None = plain TCP, for tests and loopback only).
    tls: Option<ServerTls>,
    secured_tx: mpsc::Sender<Secured>,
    secured: mpsc::Receiver<Secured>,
    /// TLS handshakes running in their own tasks (they count toward `client_connections_max`).
    tls_in_flight: Arc<AtomicUsize>,
    /// Most client connections at once, handshaking or established; more are closed at accept.
    client_connections_max: usize,
    /// The network node ports and bridge dials use.
    net: Arc<dyn Net>,
    /// Prometheus metrics, if served.
    metrics: Option<Arc<crate::metrics::NodeMetrics>>,
    /// Frames gathered for one connection during a flush.
    outbox: Outbox,
    /// Bridge links and the cluster task, when the node is in a cluster.
    cluster: Option<ClusterIo>,
}

impl NodeDriver {
    /// A driver for `node` (built at `clock`'s origin), persisting changes to `store` if given.
    pub fn new(
        node: Node,
        clock: Clock,
        store: Option<EmbeddedStore>,
        default_bind: &str,
    ) -> NodeDriver {
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (visitors_tx, visitors) = mpsc::channel(EVENTS);
        let (secured_tx, secured) = mpsc::channel(EVENTS);
        NodeDriver {
            tls: None,
            secured_tx,
            secured,
            tls_in_flight: Arc::new(AtomicUsize::new(0)),
            client_connections_max: CLIENT_CONNECTIONS_MAX_DEFAULT,
            net: Arc::new(TokioNet),
            metrics: None,
            node,
            clock,
            store,
            writer: None,
            unpersisted: Vec::new(),
            sockets: SocketTable::new(events_tx),
            events,
            visitors_tx,
            visitors,
            node_ports: BTreeMap::new(),
            default_bind: default_bind.to_owned(),
            outbox: Outbox::default(),
            cluster: None,
        }
    }

    /// Takes part in a cluster: links arrive on `accepted` (from [`crate::bridge::serve`]),
    /// dials introduce this node as `hello` (over mutual TLS with `tls`), and what the cluster
    /// must learn goes to `events`.
    pub fn with_cluster(
        mut self,
        hello: LinkHello,
        tls: Option<BridgeTls>,
        accepted: mpsc::Receiver<BridgeLink>,
        events: mpsc::Sender<ClusterEvent>,
    ) -> NodeDriver {
        let (arrivals_tx, arrivals) = mpsc::channel(EVENTS);
        let forward = arrivals_tx.clone();
        let mut accepted = accepted;
        tokio::spawn(async move {
            while let Some(link) = accepted.recv().await {
                if forward.send(LinkArrival::Accepted(link)).await.is_err() {
                    return;
                }
            }
        });
        self.cluster = Some(ClusterIo {
            hello,
            tls,
            peer_addrs: BTreeMap::new(),
            arrivals_tx,
            arrivals,
            events,
        });
        self
    }

    /// Serves client sessions over TLS with `acceptor`.
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> NodeDriver {
        self.tls = Some(ServerTls(acceptor));
        self
    }

    /// Serves at most `max` client connections at once (handshaking or established, bridge
    /// links included); a connection beyond it is closed as soon as it is accepted.
    pub fn with_client_connections_max(mut self, max: usize) -> NodeDriver {
        self.client_connections_max = max.max(1);
        self
    }

    /// Counts what happens into `metrics` (and samples the node's gauges once a second).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::NodeMetrics>) -> NodeDriver {
        self.metrics = Some(metrics);
        self
    }

    /// Listens for node ports and dials peers on `net` instead of the machine's TCP.
    pub fn with_net(mut self, net: Arc<dyn Net>) -> NodeDriver {
        self.net = net;
        self
    }

    /// Serves clients on `listener` and answers `commands` until `Shutdown` or the command
    /// channel closes.
    pub async fn run(self, listener: TcpListener, commands: mpsc::Receiver<NodeCommand>) {
        self.run_on(Box::new(listener), commands).await;
    }

    /// [`NodeDriver::run`] on any network's listener.
    pub async fn run_on(
        mut self,
        mut listener: Box<dyn Listener>,
        mut commands: mpsc::Receiver<NodeCommand>,
    ) {
        let metrics = self.metrics.clone();
        self.writer = self
            .store
            .take()
            .map(|store| StoreWriter::spawn(store, metrics));
        self.flush();
        let mut draining: Option<(tunnox_core::time::Instant, oneshot::Sender<()>)> = None;
        // A shutdown or drain met while running a burst of commands, for the next turn.
        let mut held: Option<NodeCommand> = None;
        let mut sample = tokio::time::interval(std::time::Duration::from_secs(1));
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut accept_paused_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some((until, _)) = &draining
                && (self.node.connection_count() == 0 || self.clock.now() >= *until)
            {
                if let Some((_, done)) = draining.take() {
                    let _ = done.send(());
                }
                break;
            }
            let drain_deadline = draining.as_ref().map(|(until, _)| *until);
            let deadline = tunnox_core::time::earliest(self.node.poll_timeout(), drain_deadline)
                .map(|t| self.clock.deadline(t));
            let next = held.take();
            tokio::select! {
                biased;
                command = next_command(next, &mut commands) => match command {
                    Some(NodeCommand::Shutdown) | None => break,
                    Some(NodeCommand::Drain { within, done }) => {
                        let now = self.clock.now();
                        let until = now + within;
                        self.node.drain(now, Some(until));
                        draining = Some((until, done));
                    }
                    Some(command) => {
                        self.on_command(command);
                        // Commands that are already waiting (a burst of API calls) run before
                        // the flush, so their changes share one store commit. Shutdown and
                        // drain wait for the next turn of the loop.
                        for _ in 0..COMMANDS_PER_FLUSH {
                            match commands.try_recv() {
                                Ok(command @ (NodeCommand::Shutdown | NodeCommand::Drain { .. })) => {
                                    held = Some(command);
                                    break;
                                }
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                },
                Some(event) = self.events.recv() => self.on_socket_event(event),
                accepted = listener.accept(), if accept_paused_until.is_none() => match accepted {
                    Ok((stream, addr)) => self.on_client_accepted(stream, addr),
                    Err(_) => {
                        accept_paused_until = Some(tokio::time::Instant::now() + ACCEPT_RETRY_DELAY);
                    }
                },
                () = sleep_until(accept_paused_until), if accept_paused_until.is_some() => {
                    accept_paused_until = None;
                }
                Some((tls, addr, accepted_at)) = self.secured.recv() => {
                    let id = self.sockets.add_stream(tls, Framing::Frames, Kind::Client);
                    let now = self.clock.now();
                    self.node.accept_connection_started_at(now, id, Some(addr.ip()), accepted_at);
                }
                Some(arrival) = recv_some(self.cluster.as_mut().map(|c| &mut c.arrivals)) => {
                    self.on_link(arrival);
                }
                Some((port, stream, addr)) = self.visitors.recv() => {
                    let kind = Kind::Visitor { pending: VecDeque::new(), eof: false, paused: false };
                    let id = self.sockets.add_conn(stream, Framing::Raw, kind);
                    self.node.visitor_accepted(self.clock.now(), port, id, Some(addr));
                }
                () = sleep_until(deadline) => self.node.handle_timeout(self.clock.now()),
                _ = sample.tick(), if self.metrics.is_some() => {
                    if let Some(metrics) = &self.metrics {
                        metrics.sample(&self.node);
                    }
                }
            }
            self.flush();
        }
        for (_, handle) in std::mem::take(&mut self.node_ports) {
            handle.abort();
        }
        // Stopping closes every connection at once, so clients notice and reconnect.
        self.sockets.abort_all();
        // Every change made is written before the node counts as stopped.
        if let Some(writer) = self.writer.take() {
            writer.finish().await;
        }
    }

    /// A client connection was accepted: dropped at once if the node is full or its address
    /// opens connections too fast (before any work, such as TLS), else served.
    fn on_client_accepted(&mut self, stream: Conn, addr: SocketAddr) {
        let open = self.node.connection_count() + self.tls_in_flight.load(Ordering::Relaxed);
        if open >= self.client_connections_max {
            return;
        }
        let now = self.clock.now();
        if self.node.admit_address(now, addr.ip()).is_err() {
            return;
        }
        let Some(ServerTls(acceptor)) = self.tls.clone() else {
            let id = self.sockets.add_conn(stream, Framing::Frames, Kind::Client);
            self.node.accept_connection_from(now, id, Some(addr.ip()));
            return;
        };
        // The TLS handshake runs in its own task (the accept loop never waits on a client),
        // within the one handshake timeout that the session handshake after it shares.
        let secured = self.secured_tx.clone();
        let timeout = self.node.handshake_timeout();
        let in_flight = InFlight::start(&self.tls_in_flight);
        tokio::spawn(async move {
            if let Conn::Tcp(tcp) = &stream {
                let _ = tcp.set_nodelay(true);
            }
            let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
            if let Ok(Ok(tls)) = handshake.await {
                // Counted as in flight until the node owns the connection.
                let _ = secured.send((tls, addr, now)).await;
            }
            drop(in_flight);
        });
    }

    fn on_command(&mut self, command: NodeCommand) {
        let now = self.clock.now();
        match command {
            NodeCommand::Run(NodeJob(job)) => job(&mut self.node, now),
            NodeCommand::Synced { reply } => {
                // The changes made so far reach the writer first.
                self.flush();
                match &self.writer {
                    Some(writer) => writer.synced(reply),
                    None => {
                        let _ = reply.send(true);
                    }
                }
            }
            NodeCommand::CreateClient {
                owner,
                label,
                reply,
            } => {
                let _ = reply.send(self.node.create_client(now, owner, &label));
            }
            NodeCommand::PutMapping { mapping, reply } => {
                let _ = reply.send(self.node.put_mapping(now, *mapping));
            }
            NodeCommand::DeleteMapping { id, reply } => {
                let _ = reply.send(self.node.delete_mapping(now, &id));
            }
            NodeCommand::PeerUp { peer, addr } => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.peer_addrs.insert(peer.clone(), addr);
                    self.node.peer_up(now, &peer);
                }
            }
            NodeCommand::PeerDown { peer } => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.peer_addrs.remove(&peer);
                }
                self.node.peer_down(now, &peer);
            }
            NodeCommand::SetRoute { client, node } => self.node.set_route(now, client, node),
            NodeCommand::ApplyRemote(change) => self.node.apply_remote_change(now, *change),
            NodeCommand::Snapshot { reply } => {
                let _ = reply.send(Box::new(self.node.state().clone()));
            }
            NodeCommand::Kick { client, reply } => {
                let here = self.node.kick_client(now, client);
                if !here {
                    self.tell_cluster(ClusterEvent::Disconnect(client));
                }
                let _ = reply.send(here);
            }
            NodeCommand::DisconnectClient { client, reason } => {
                self.node.disconnect_client(now, client, reason);
            }
            NodeCommand::AdoptState(state) => {
                self.node.adopt_state(now, &state);
            }
            NodeCommand::Shutdown | NodeCommand::Drain { .. } => {}
        }
    }

    fn on_socket_event(&mut self, event: SocketEvent) {
        let now = self.clock.now();
        match event {
            SocketEvent::Data(id, bytes) => match self.sockets.get_mut(id).map(|(_, k)| k) {
                Some(Kind::Client) => self.node.connection_bytes(now, id, bytes),
                Some(Kind::Visitor { pending, .. }) => {
                    pending.push_back(bytes.freeze());
                    self.feed_visitor(id);
                }
                None => {}
            },
            SocketEvent::Eof(id) => match self.sockets.get_mut(id).map(|(_, k)| k) {
                Some(Kind::Client) => self.drop_client(id),
                Some(Kind::Visitor { eof, .. }) => {
                    *eof = true;
                    self.feed_visitor(id);
                }
                None => {}
            },
            SocketEvent::Failed(id) => self.drop_broken(id),
            SocketEvent::Written(id, n) => {
                if let Some((socket, _)) = self.sockets.get_mut(id) {
                    socket.reported_written(n);
                }
                self.flushed(id, n);
            }
        }
    }

    /// `n` bytes written to socket `id` (by its writer task or directly).
    fn flushed(&mut self, id: SocketId, n: usize) {
        if matches!(self.sockets.get(id), Some((_, Kind::Visitor { .. }))) {
            self.node.visitor_flushed(self.clock.now(), id, n);
        }
    }

    fn drop_client(&mut self, id: SocketId) {
        if let Some((socket, _)) = self.sockets.remove(id) {
            socket.close();
        }
        self.node.connection_closed(self.clock.now(), id);
    }

    /// Gives a visitor's pending bytes to the node as far as it takes them; pauses the socket
    /// when the node's stream is full.
    fn feed_visitor(&mut self, id: SocketId) {
        let now = self.clock.now();
        let Some((
            socket,
            Kind::Visitor {
                pending,
                eof,
                paused,
            },
        )) = self.sockets.get_mut(id)
        else {
            return;
        };
        while let Some(front) = pending.pop_front() {
            let taken = self.node.visitor_data(now, id, front.clone());
            if taken < front.len() {
                pending.push_front(front.slice(taken..));
                if !*paused {
                    *paused = true;
                    socket.set_paused(true);
                }
                return;
            }
        }
        if *paused {
            *paused = false;
            socket.set_paused(false);
        }
        if *eof {
            *eof = false;
            self.node.visitor_eof(now, id);
        }
    }

    /// Writes everything the node has to send and carries out its outputs. Consecutive frames
    /// for one connection go to its socket as one batch.
    fn flush(&mut self) {
        loop {
            if let Some((conn, t)) = self.node.poll_transmit() {
                if let Some((id, chunks)) = self.outbox.push(conn, t) {
                    self.write(id, chunks);
                }
                continue;
            }
            if let Some((id, chunks)) = self.outbox.take() {
                self.write(id, chunks);
            }
            let Some(output) = self.node.poll_output() else {
                break;
            };
            self.on_output(output);
        }
        self.persist_pending();
    }

    /// Hands the changes gathered since the last flush to the store's writer (which commits
    /// whatever queued up together, off this task), then tells the cluster, in order.
    fn persist_pending(&mut self) {
        if self.unpersisted.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut self.unpersisted);
        if let Some(writer) = &self.writer {
            writer.write(changes.clone());
        }
        for change in changes {
            self.tell_cluster(ClusterEvent::Persisted(change));
        }
    }

    /// Writes `chunks` to socket `id` (directly, or queued on its writer task).
    fn write(&mut self, id: SocketId, chunks: Vec<Bytes>) {
        match self
            .sockets
            .get_mut(id)
            .map(|(s, _)| s.write_chunks(chunks))
        {
            Some(Ok(0)) | None => {}
            Some(Ok(n)) => self.flushed(id, n),
            Some(Err(Stuck)) => self.drop_broken(id),
        }
    }

    /// A socket that failed, or whose peer does not read (dropped rather than buffered without
    /// bound): abort it and tell the state machine.
    fn drop_broken(&mut self, id: SocketId) {
        let now = self.clock.now();
        match self.sockets.remove(id) {
            Some((socket, Kind::Client)) => {
                socket.abort();
                self.node.connection_closed(now, id);
            }
            Some((socket, Kind::Visitor { .. })) => {
                socket.abort();
                self.node.visitor_reset(now, id);
            }
            None => {}
        }
    }

    fn on_output(&mut self, output: NodeOutput) {
        if let (Some(metrics), NodeOutput::Notice(notice)) = (&self.metrics, &output) {
            metrics.observe(notice);
        }
        match output {
            NodeOutput::CloseConnection { conn } => {
                while let Some(t) = self.node.poll_transmit_for(conn) {
                    self.outbox.push(conn, t);
                }
                if let Some((id, chunks)) = self.outbox.take() {
                    self.write(id, chunks);
                }
                self.drop_client(conn);
            }
            NodeOutput::ListenNodePort { port, bind } => {
                let addr = format!(
                    "{}:{port}",
                    bind.unwrap_or_else(|| self.default_bind.clone())
                );
                let visitors = self.visitors_tx.clone();
                let bind = self.net.bind(addr);
                let handle = tokio::spawn(async move {
                    let Ok(mut listener) = bind.await else {
                        return;
                    };
                    loop {
                        match listener.accept().await {
                            Ok((stream, peer)) => {
                                if visitors.send((port, stream, peer)).await.is_err() {
                                    return;
                                }
                            }
                            // Out of file descriptors, say: the port keeps serving once it
                            // passes, without spinning meanwhile.
                            Err(_) => tokio::time::sleep(ACCEPT_RETRY_DELAY).await,
                        }
                    }
                });
                if let Some(old) = self.node_ports.insert(port, handle) {
                    old.abort();
                }
            }
            NodeOutput::StopNodePort { port } => {
                if let Some(handle) = self.node_ports.remove(&port) {
                    handle.abort();
                }
            }
            NodeOutput::Visitor(out) => match out {
                LocalOutput::Write { local, bytes } => self.write(local, vec![bytes]),
                LocalOutput::Finish { local } => {
                    if let Some((socket, _)) = self.sockets.get_mut(local) {
                        socket.shutdown();
                    }
                }
                LocalOutput::Close { local, reset } => {
                    if let Some((socket, _)) = self.sockets.remove(local) {
                        if reset {
                            socket.abort()
                        } else {
                            socket.close()
                        }
                    }
                }
                LocalOutput::ResumeRead { local } => self.feed_visitor(local),
            },
            NodeOutput::Persist(change) => self.unpersisted.push(change),
            NodeOutput::DialPeer { peer } => self.dial(peer),
            NodeOutput::LookupRoute { client } => {
                self.tell_cluster(ClusterEvent::LookupRoute(client));
            }
            NodeOutput::Notice(Notice::ClientOnline { client, .. }) => {
                self.tell_cluster(ClusterEvent::ClientOnline(client));
            }
            NodeOutput::Notice(Notice::ClientOffline { client, .. }) => {
                self.tell_cluster(ClusterEvent::ClientOffline(client));
            }
            NodeOutput::Notice(_) => {}
        }
    }
}

impl NodeDriver {
    fn on_link(&mut self, arrival: LinkArrival) {
        let now = self.clock.now();
        match arrival {
            LinkArrival::Accepted(link) => {
                let id = self
                    .sockets
                    .add_stream(link.stream, Framing::Frames, Kind::Client);
                self.node.accept_connection(now, id);
            }
            LinkArrival::Dialled(peer, Some(link)) => {
                let id = self
                    .sockets
                    .add_stream(link.stream, Framing::Frames, Kind::Client);
                self.node.peer_connected(now, id, peer);
            }
            LinkArrival::Dialled(peer, None) => {
                if let Some(metrics) = &self.metrics {
                    metrics.bridge_dial(true);
                }
                self.node.peer_dial_failed(now, &peer);
            }
        }
    }

    /// Dials `peer`'s bridge in a task; the outcome comes back as a [`LinkArrival`].
    fn dial(&mut self, peer: NodeId) {
        let addr = self
            .cluster
            .as_ref()
            .and_then(|c| c.peer_addrs.get(&peer).cloned());
        let (Some(cluster), Some(addr)) = (&self.cluster, addr) else {
            let now = self.clock.now();
            self.node.peer_dial_failed(now, &peer);
            return;
        };
        if let Some(metrics) = &self.metrics {
            metrics.bridge_dial(false);
        }
        let hello = cluster.hello.clone();
        let tls = cluster.tls.clone();
        let net = self.net.clone();
        let done = cluster.arrivals_tx.clone();
        tokio::spawn(async move {
            let link = crate::bridge::dial(&net, &addr, &hello, BRIDGE_DIAL_TIMEOUT, tls.as_ref())
                .await
                .ok();
            let _ = done.send(LinkArrival::Dialled(peer, link)).await;
        });
    }

    /// Hands `event` to the cluster task; if its queue is full the event is dropped (routes
    /// and state are re-read from storage, so nothing correct depends on it).
    fn tell_cluster(&self, event: ClusterEvent) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster.events.try_send(event);
        }
    }
}

/// Counts one TLS handshake in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next message of `rx`, or never without one.
async fn recv_some<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts a node on `listener` in a task; returns the command channel and the task.
pub fn spawn_node(
    driver: NodeDriver,
    listener: TcpListener,
) -> (mpsc::Sender<NodeCommand>, JoinHandle<()>) {
    spawn_node_on(driver, Box::new(listener))
}

/// [`spawn_node`] on any network's listener.
pub fn spawn_node_on(
    driver: NodeDriver,
    listener: Box<dyn Listener>,
) -> (mpsc::Sender<NodeCommand>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let handle = tokio::spawn(driver.run_on(listener, rx));
    (tx, handle)
}
