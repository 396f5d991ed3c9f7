//! Runs an `Agent` on tokio over plain TCP: one task owns the agent; its node connection,
//! mapping listeners, visitors and target connections are sockets whose tasks report to it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tunnox_core::agent::{Agent, AgentOutput, AttemptId};
use tunnox_core::relay::{LocalId, LocalOutput};
use tunnox_core::tunnel::DialFailure;
use tunnox_proto::wire::control_request::Body;

use crate::clock::Clock;
use crate::net::{Conn, Net, TokioNet};
use crate::socket::{Framing, Outbox, SocketEvent, SocketId, SocketTable, Stuck};

/// Capacity of the driver's event channels.
const EVENTS: usize = 1024;
/// How long a target dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests to a running agent.
#[derive(Debug)]
pub enum AgentCommand {
    /// Send a control request (connection codes); the answer arrives as a notice.
    Control(Body),
    /// Stop the agent.
    Shutdown,
}

/// A connected node session: TCP, or TLS over TCP.
trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> SessionStream for T {}

/// TLS settings for the node connections.
struct ClientTls {
    connector: TlsConnector,
    /// The name verified in (and sent as SNI to) server `i` is `names[i]`, or the first name
    /// for servers past the end.
    names: Vec<ServerName<'static>>,
}

impl ClientTls {
    /// The connector and the name to verify for server `server`.
    fn for_server(&self, server: usize) -> Option<(TlsConnector, ServerName<'static>)> {
        let name = self.names.get(server).or(self.names.first())?;
        Some((self.connector.clone(), name.clone()))
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls({:?})", self.names)
    }
}

/// Results of the driver's own background work.
enum Background {
    Connected(AttemptId, Box<dyn SessionStream>),
    ConnectFailed(AttemptId),
    Visitor(String, Conn, SocketAddr),
    Dialed(LocalId, Result<Conn, DialFailure>),
}

#[derive(Debug)]
enum Kind {
    Session(AttemptId),
    Local {
        local: LocalId,
        pending: VecDeque<Bytes>,
        eof: bool,
        paused: bool,
    },
}

/// An agent driven by tokio (see the module docs).
#[derive(Debug)]
pub struct AgentDriver {
    agent: Agent,
    clock: Clock,
    servers: Vec<SocketAddr>,
    sockets: SocketTable<Kind>,
    attempt_socket: BTreeMap<AttemptId, SocketId>,
    local_socket: BTreeMap<LocalId, SocketId>,
    listeners: BTreeMap<String, JoinHandle<()>>,
    events: mpsc::Receiver<SocketEvent>,
    background_tx: mpsc::Sender<Background>,
    background: mpsc::Receiver<Background>,
    notices: mpsc::Sender<AgentOutput>,
    /// TLS to the node (None = plain TCP, for tests and loopback only).
    tls: Option<ClientTls>,
    /// Frames gathered for the session socket during a flush.
    outbox: Outbox,
    /// The network it connects and listens on.
    net: Arc<dyn Net>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Background::Connected(a, _) => write!(f, "Connected({a})"),
            Background::ConnectFailed(a) => write!(f, "ConnectFailed({a})"),
            Background::Visitor(m, _, addr) => write!(f, "Visitor({m}, {addr})"),
            Background::Dialed(l, r) => write!(f, "Dialed({l}, {:?})", r.as_ref().err()),
        }
    }
}

impl AgentDriver {
    /// A driver for `agent` (built at `clock`'s origin) that dials `servers` and reports
    /// notices (established, disconnected, control responses, …) to `notices`.
    pub fn new(
        agent: Agent,
        clock: Clock,
        servers: Vec<SocketAddr>,
        notices: mpsc::Sender<AgentOutput>,
    ) -> AgentDriver {
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (background_tx, background) = mpsc::channel(EVENTS);
        AgentDriver {
            agent,
            clock,
            servers,
            sockets: SocketTable::new(events_tx),
            attempt_socket: BTreeMap::new(),
            local_socket: BTreeMap::new(),
            listeners: BTreeMap::new(),
            events,
            background_tx,
            background,
            notices,
            tls: None,
            outbox: Outbox::default(),
            net: Arc::new(TokioNet),
        }
    }

    /// Connects and listens on `net` instead of the machine's TCP (a simulated network).
    pub fn with_net(mut self, net: Arc<dyn Net>) -> AgentDriver {
        self.net = net;
        self
    }

    /// Connects to the node over TLS with `connector`, verifying `server_name` in every
    /// server's certificate.
    pub fn with_tls(
        self,
        connector: TlsConnector,
        server_name: ServerName<'static>,
    ) -> AgentDriver {
        self.with_tls_names(connector, vec![server_name])
    }

    /// Connects to the nodes over TLS with `connector`, verifying `names[i]` in the certificate
    /// of server `i` (servers past the end of `names` get its first name; with no names at all
    /// every TLS connect fails).
    pub fn with_tls_names(
        mut self,
        connector: TlsConnector,
        names: Vec<ServerName<'static>>,
    ) -> AgentDriver {
        self.tls = Some(ClientTls { connector, names });
        self
    }

    /// Runs until `Shutdown`, the command channel closing, or the agent stopping for good.
    pub async fn run(mut self, mut commands: mpsc::Receiver<AgentCommand>) {
        self.flush();
        while !self.agent.is_stopped() {
            let deadline = self.agent.poll_timeout().map(|t| self.clock.deadline(t));
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(AgentCommand::Control(body)) => { self.agent.control(body); }
                    Some(AgentCommand::Shutdown) | None => break,
                },
                Some(event) = self.events.recv() => self.on_socket_event(event),
                Some(done) = self.background.recv() => self.on_background(done),
                () = sleep_until(deadline) => self.agent.handle_timeout(self.clock.now()),
            }
            self.flush();
        }
        for (_, handle) in std::mem::take(&mut self.listeners) {
            handle.abort();
        }
        self.sockets.abort_all();
    }

    fn on_background(&mut self, done: Background) {
        let now = self.clock.now();
        match done {
            Background::Connected(attempt, stream) => {
                let id = self
                    .sockets
                    .add_stream(stream, Framing::Frames, Kind::Session(attempt));
                self.attempt_socket.insert(attempt, id);
                self.agent.connected(now, attempt);
            }
            Background::ConnectFailed(attempt) => self.agent.connect_failed(now, attempt),
            Background::Visitor(mapping, stream, addr) => {
                // The local id is the socket id it is about to get.
                let id = self.sockets.next_id();
                let kind = Kind::Local {
                    local: id,
                    pending: VecDeque::new(),
                    eof: false,
                    paused: false,
                };
                let added = self.sockets.add_conn(stream, Framing::Raw, kind);
                debug_assert_eq!(added, id);
                self.local_socket.insert(id, id);
                self.agent.visitor_accepted(now, &mapping, id, Some(addr));
            }
            Background::Dialed(local, result) => match result {
                Ok(stream) => {
                    let kind = Kind::Local {
                        local,
                        pending: VecDeque::new(),
                        eof: false,
                        paused: false,
                    };
                    let id = self.sockets.add_conn(stream, Framing::Raw, kind);
                    self.local_socket.insert(local, id);
                    self.agent.dial_result(now, local, Ok(()));
                }
                Err(failure) => self.agent.dial_result(now, local, Err(failure)),
            },
        }
    }

    fn on_socket_event(&mut self, event: SocketEvent) {
        let now = self.clock.now();
        match event {
            SocketEvent::Data(id, bytes) => match self.sockets.get_mut(id).map(|(_, k)| k) {
                Some(Kind::Session(attempt)) => {
                    let attempt = *attempt;
                    self.agent.connection_bytes(now, attempt, bytes);
                }
                Some(Kind::Local { pending, .. }) => {
                    pending.push_back(bytes.freeze());
                    self.feed(id);
                }
                None => {}
            },
            SocketEvent::Eof(id) => match self.sockets.get_mut(id).map(|(_, k)| k) {
                Some(Kind::Session(attempt)) => {
                    let attempt = *attempt;
                    self.drop_socket(id, false);
                    self.agent.connection_closed(now, attempt);
                }
                Some(Kind::Local { eof, .. }) => {
                    *eof = true;
                    self.feed(id);
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
        if let Some((_, Kind::Local { local, .. })) = self.sockets.get(id) {
            let local = *local;
            self.agent.local_flushed(self.clock.now(), local, n);
        }
    }

    fn drop_socket(&mut self, id: SocketId, abort: bool) {
        if let Some((socket, kind)) = self.sockets.remove(id) {
            match kind {
                Kind::Session(attempt) => {
                    self.attempt_socket.remove(&attempt);
                }
                Kind::Local { local, .. } => {
                    self.local_socket.remove(&local);
                }
            }
            if abort {
                socket.abort()
            } else {
                socket.close()
            }
        }
    }

    /// Gives a local socket's pending bytes to the agent as far as it takes them.
    fn feed(&mut self, id: SocketId) {
        let now = self.clock.now();
        let Some((
            socket,
            Kind::Local {
                local,
                pending,
                eof,
                paused,
            },
        )) = self.sockets.get_mut(id)
        else {
            return;
        };
        while let Some(front) = pending.pop_front() {
            let taken = self.agent.local_data(now, *local, front.clone());
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
            self.agent.local_eof(now, *local);
        }
    }

    /// Writes everything the agent has to send (frames for the session socket as one batch)
    /// and carries out its outputs.
    fn flush(&mut self) {
        loop {
            if let Some((attempt, t)) = self.agent.poll_transmit() {
                if let Some(&id) = self.attempt_socket.get(&attempt)
                    && let Some((id, chunks)) = self.outbox.push(id, t)
                {
                    self.write(id, chunks);
                }
                continue;
            }
            if let Some((id, chunks)) = self.outbox.take() {
                self.write(id, chunks);
            }
            let Some(output) = self.agent.poll_output() else {
                return;
            };
            self.on_output(output);
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
        match self.sockets.get(id).map(|(_, k)| k) {
            Some(Kind::Session(attempt)) => {
                let attempt = *attempt;
                self.drop_socket(id, true);
                self.agent.connection_closed(now, attempt);
            }
            Some(Kind::Local { local, .. }) => {
                let local = *local;
                self.drop_socket(id, true);
                self.agent.local_reset(now, local);
            }
            None => {}
        }
    }

    fn on_output(&mut self, output: AgentOutput) {
        match output {
            AgentOutput::Connect { attempt, server } => {
                let server = server % self.servers.len().max(1);
                let addr = self.servers[server];
                let background = self.background_tx.clone();
                let tls = self.tls.as_ref().map(|tls| tls.for_server(server));
                let net = self.net.clone();
                tokio::spawn(async move {
                    let stream = match tls {
                        None => connect(&*net, addr, None).await,
                        Some(Some(tls)) => connect(&*net, addr, Some(tls)).await,
                        // TLS without any name to verify: nothing could be trusted.
                        Some(None) => None,
                    };
                    let done = match stream {
                        Some(stream) => Background::Connected(attempt, stream),
                        None => Background::ConnectFailed(attempt),
                    };
                    let _ = background.send(done).await;
                });
            }
            AgentOutput::CloseConnection { attempt } => {
                if let Some(id) = self.attempt_socket.get(&attempt).copied() {
                    self.drop_socket(id, false);
                }
            }
            AgentOutput::Listen { mapping, addr, .. } => {
                let background = self.background_tx.clone();
                let name = mapping.clone();
                let bind = self.net.bind(addr.to_string());
                let handle = tokio::spawn(async move {
                    let Ok(mut listener) = bind.await else {
                        return;
                    };
                    while let Ok((stream, peer)) = listener.accept().await {
                        if background
                            .send(Background::Visitor(name.clone(), stream, peer))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                if let Some(old) = self.listeners.insert(mapping, handle) {
                    old.abort();
                }
            }
            AgentOutput::StopListening { mapping } => {
                if let Some(handle) = self.listeners.remove(&mapping) {
                    handle.abort();
                }
            }
            AgentOutput::Dial { local, host, port } => {
                let background = self.background_tx.clone();
                let connect = self.net.connect(host, port);
                tokio::spawn(async move {
                    let dial = tokio::time::timeout(DIAL_TIMEOUT, connect);
                    let result = match dial.await {
                        Ok(Ok(stream)) => Ok(stream),
                        Ok(Err(e)) => Err(dial_failure(&e)),
                        Err(_) => Err(DialFailure::Timeout),
                    };
                    let _ = background.send(Background::Dialed(local, result)).await;
                });
            }
            AgentOutput::Local(out) => match out {
                LocalOutput::Write { local, bytes } => {
                    if let Some(id) = self.local_socket.get(&local).copied() {
                        self.write(id, vec![bytes]);
                    }
                }
                LocalOutput::Finish { local } => {
                    if let Some((socket, _)) = self
                        .local_socket
                        .get(&local)
                        .and_then(|id| self.sockets.get_mut(*id))
                    {
                        socket.shutdown();
                    }
                }
                LocalOutput::Close { local, reset } => {
                    if let Some(id) = self.local_socket.get(&local).copied() {
                        self.drop_socket(id, reset);
                    }
                }
                LocalOutput::ResumeRead { local } => {
                    if let Some(id) = self.local_socket.get(&local).copied() {
                        self.feed(id);
                    }
                }
            },
            notice => {
                // Established, Disconnected, Stopped, SaveCredentials, OpenFailed, ControlResponse:
                // for the application; dropped if it does not keep up.
                let _ = self.notices.try_send(notice);
            }
        }
    }
}

/// Connects to a node, over TLS verifying the name when given; `None` if either step fails (the
/// agent backs off and retries).
async fn connect(
    net: &dyn Net,
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
) -> Option<Box<dyn SessionStream>> {
    let connect = net.connect(addr.ip().to_string(), addr.port());
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, connect)
        .await
        .ok()?
        .ok()?;
    if let Conn::Tcp(tcp) = &tcp {
        let _ = tcp.set_nodelay(true);
    }
    match tls {
        None => Some(Box::new(tcp)),
        Some((connector, name)) => {
            let secured = tokio::time::timeout(DIAL_TIMEOUT, connector.connect(name, tcp))
                .await
                .ok()?
                .ok()?;
            Some(Box::new(secured))
        }
    }
}

fn dial_failure(error: &std::io::Error) -> DialFailure {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => DialFailure::Refused,
        std::io::ErrorKind::TimedOut => DialFailure::Timeout,
        std::io::ErrorKind::NotFound => DialFailure::Dns,
        _ => DialFailure::Unreachable,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts an agent in a task; returns the command channel and the task.
pub fn spawn_agent(driver: AgentDriver) -> (mpsc::Sender<AgentCommand>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let handle = tokio::spawn(driver.run(rx));
    (tx, handle)
}
