//! Toy hosts for the simulator's own tests: an echo server, a client that verifies the echo, a
//! periodic-timer host and datagram sender/recorder.

#![allow(dead_code)]

use bytes::Bytes;
use std::collections::BTreeMap;
use tunnox_core::digest::Fnv64;
use tunnox_runtime_sim::*;

/// Port the echo server listens on.
pub const ECHO_PORT: Port = 7;

pub fn secs(n: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Echoes every byte back on the same connection; closes when the peer does.
#[derive(Debug, Default)]
pub struct EchoServer {
    /// Open connections and bytes echoed on each (volatile).
    conns: BTreeMap<ConnId, u64>,
    pub accepted: u64,
    pub resets: u64,
    pub eofs: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub bytes_echoed: u64,
}

impl Host for EchoServer {
    fn on_event(&mut self, _now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => ctx.listen(ECHO_PORT).expect("listen"),
            HostEvent::Accepted { conn, .. } => {
                self.accepted += 1;
                self.conns.insert(conn, 0);
            }
            HostEvent::Data { conn, bytes } => {
                if let Some(n) = self.conns.get_mut(&conn) {
                    *n += bytes.len() as u64;
                    self.bytes_echoed += bytes.len() as u64;
                    let _ = ctx.send(conn, bytes);
                }
            }
            HostEvent::Eof { conn } => {
                self.eofs += 1;
                if self.conns.remove(&conn).is_some() {
                    let _ = ctx.close(conn);
                }
            }
            HostEvent::Reset { conn } => {
                self.resets += 1;
                self.conns.remove(&conn);
            }
            _ => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn crash(&mut self) {
        self.crashes += 1;
        self.conns.clear();
    }

    fn restart(&mut self, _now: Instant, ctx: &mut HostCtx<'_>) {
        self.restarts += 1;
        ctx.listen(ECHO_PORT).expect("listen after restart");
    }

    fn check_invariants(&self) -> Result<(), String> {
        Ok(())
    }

    fn digest(&self) -> u64 {
        let mut h = Fnv64::new();
        h.write_u64(self.conns.len() as u64);
        h.write_u64(self.bytes_echoed);
        h.finish()
    }
}

/// Sends random chunks to the echo server on a timer and checks the echo is an exact prefix of
/// what it sent; reconnects after failures and runs `rounds` complete transfers.
pub struct EchoClient {
    server: HostId,
    /// Bytes per transfer.
    pub transfer_bytes: usize,
    /// Largest chunk per send.
    pub chunk_max: usize,
    /// Gap between sends.
    pub send_interval: Duration,
    /// Transfers to complete.
    pub rounds: u32,
    conn: Option<ConnId>,
    connected: bool,
    sent: Vec<u8>,
    received: usize,
    next_send: Option<Instant>,
    reconnect_at: Option<Instant>,
    violation: Option<String>,
    pub completed: u32,
    pub resets: u32,
    pub connect_failures: u32,
    pub crashes: u32,
    pub restarts: u32,
    pub timers: u64,
    /// Coverage label put on each connection it opens.
    pub label: Option<&'static str>,
    pub data_events: u64,
    /// Most bytes ever sent on a connection but not yet delivered to the server.
    pub unsent_max: u64,
}

impl std::fmt::Debug for EchoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EchoClient {{ conn: {:?}, connected: {}, sent: {}, received: {}, next_send: {:?}, \
             reconnect_at: {:?}, completed: {}/{}, resets: {}, connect_failures: {}, \
             crashes: {}, violation: {:?} }}",
            self.conn,
            self.connected,
            self.sent.len(),
            self.received,
            self.next_send,
            self.reconnect_at,
            self.completed,
            self.rounds,
            self.resets,
            self.connect_failures,
            self.crashes,
            self.violation
        )
    }
}

impl EchoClient {
    pub fn new(server: HostId, transfer_bytes: usize, rounds: u32) -> EchoClient {
        EchoClient {
            server,
            transfer_bytes,
            chunk_max: 1_500,
            send_interval: ms(5),
            rounds,
            conn: None,
            connected: false,
            sent: Vec::new(),
            received: 0,
            next_send: None,
            reconnect_at: None,
            violation: None,
            completed: 0,
            resets: 0,
            connect_failures: 0,
            crashes: 0,
            restarts: 0,
            timers: 0,
            label: None,
            data_events: 0,
            unsent_max: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.completed >= self.rounds
    }

    fn start(&mut self, ctx: &mut HostCtx<'_>) {
        self.sent.clear();
        self.received = 0;
        self.connected = false;
        self.next_send = None;
        self.reconnect_at = None;
        self.conn = Some(ctx.connect(self.server, ECHO_PORT));
    }

    fn lost(&mut self, now: Instant) {
        self.conn = None;
        self.connected = false;
        self.next_send = None;
        self.reconnect_at = Some(now + ms(100));
    }
}

impl Host for EchoClient {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.start(ctx),
            HostEvent::Timer => {
                self.timers += 1;
                if let Some(deadline) = self.next_timer()
                    && now < deadline
                {
                    self.violation = Some(format!("timer early: {now:?} < {deadline:?}"));
                }
                if self.reconnect_at.is_some_and(|t| t <= now) {
                    self.start(ctx);
                    return;
                }
                if let (Some(conn), Some(t)) = (self.conn, self.next_send)
                    && t <= now
                {
                    let left = self.transfer_bytes - self.sent.len();
                    let size = 1 + ctx.rng().below(self.chunk_max.min(left) as u64) as usize;
                    let mut chunk = vec![0u8; size];
                    ctx.rng().fill(&mut chunk);
                    self.sent.extend_from_slice(&chunk);
                    match ctx.send(conn, Bytes::from(chunk)) {
                        Ok(()) => {}
                        Err(NetError::ConnectionReset(_)) => {}
                        Err(e) => self.violation = Some(format!("send failed: {e}")),
                    }
                    let unsent = ctx.unsent_bytes(conn).unwrap_or(0);
                    self.unsent_max = self.unsent_max.max(unsent);
                    self.next_send =
                        (self.sent.len() < self.transfer_bytes).then(|| now + self.send_interval);
                }
            }
            HostEvent::Connected { conn } if Some(conn) == self.conn => {
                if let Some(label) = self.label {
                    assert!(ctx.label_connection(conn, label), "its own connection");
                }
                self.connected = true;
                self.next_send = Some(now);
            }
            HostEvent::ConnectFailed { conn, .. } if Some(conn) == self.conn => {
                self.connect_failures += 1;
                self.lost(now);
            }
            HostEvent::Reset { conn } if Some(conn) == self.conn => {
                self.resets += 1;
                self.lost(now);
            }
            HostEvent::Data { conn, bytes } if Some(conn) == self.conn => {
                self.data_events += 1;
                let end = self.received + bytes.len();
                if end > self.sent.len() || self.sent[self.received..end] != bytes[..] {
                    self.violation = Some(format!(
                        "echo is not a prefix: {} bytes at {} of {} sent",
                        bytes.len(),
                        self.received,
                        self.sent.len()
                    ));
                    return;
                }
                self.received = end;
                if self.received == self.transfer_bytes {
                    self.completed += 1;
                    let _ = ctx.close(conn);
                    self.conn = None;
                    self.connected = false;
                    if !self.done() {
                        self.reconnect_at = Some(now);
                    }
                }
            }
            other => self.violation = Some(format!("unexpected event {other}")),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        match (self.reconnect_at, self.next_send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn crash(&mut self) {
        self.crashes += 1;
        self.conn = None;
        self.connected = false;
        self.sent.clear();
        self.received = 0;
        self.next_send = None;
        self.reconnect_at = None;
    }

    fn restart(&mut self, _now: Instant, ctx: &mut HostCtx<'_>) {
        self.restarts += 1;
        if !self.done() {
            self.start(ctx);
        }
    }

    fn check_invariants(&self) -> Result<(), String> {
        match &self.violation {
            Some(v) => Err(v.clone()),
            None if self.received > self.sent.len() => Err("received more than sent".into()),
            None => Ok(()),
        }
    }

    fn digest(&self) -> u64 {
        let mut h = Fnv64::new();
        h.write_u64(self.sent.len() as u64);
        h.write_u64(self.received as u64);
        h.write_u64(u64::from(self.completed));
        h.finish()
    }
}

/// Builds a world with one echo server and `clients` echo clients.
pub fn echo_world(
    config: WorldConfig,
    clients: usize,
    transfer_bytes: usize,
    rounds: u32,
) -> (World, HostId, Vec<HostId>) {
    let mut world = World::new(config);
    let server = world.add_host("server", EchoServer::default(), HostOptions::new());
    let ids = (0..clients)
        .map(|i| {
            let start = Instant::ZERO + ms(i as u64);
            world.add_host(
                format!("client{i}"),
                EchoClient::new(server, transfer_bytes, rounds),
                HostOptions::new().start_at(start),
            )
        })
        .collect();
    (world, server, ids)
}

/// Whether every client finished all its rounds.
pub fn all_done(world: &World, clients: &[HostId]) -> bool {
    clients
        .iter()
        .all(|c| world.host::<EchoClient>(*c).is_some_and(EchoClient::done))
}

/// Fires a timer every `period` (host-local), checking it is never early.
#[derive(Debug)]
pub struct Ticker {
    pub period: Duration,
    deadline: Option<Instant>,
    pub fired: u64,
    pub late_ns_max: u64,
    violation: Option<String>,
}

impl Ticker {
    pub fn new(period: Duration) -> Ticker {
        Ticker {
            period,
            deadline: None,
            fired: 0,
            late_ns_max: 0,
            violation: None,
        }
    }
}

impl Host for Ticker {
    fn on_event(&mut self, now: Instant, event: HostEvent, _ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.deadline = Some(now + self.period),
            HostEvent::Timer => {
                let Some(deadline) = self.deadline else {
                    self.violation = Some("timer without a deadline".into());
                    return;
                };
                if now < deadline {
                    self.violation = Some(format!("early by {} ns", (deadline - now).as_nanos()));
                }
                self.late_ns_max = self.late_ns_max.max((now - deadline).as_nanos() as u64);
                self.fired += 1;
                self.deadline = Some(deadline + self.period);
            }
            _ => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.deadline
    }

    fn crash(&mut self) {
        self.deadline = None;
    }

    fn restart(&mut self, now: Instant, _ctx: &mut HostCtx<'_>) {
        self.deadline = Some(now + self.period);
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.violation.clone().map_or(Ok(()), Err)
    }

    fn digest(&self) -> u64 {
        self.fired
    }
}

/// Port datagram hosts use.
pub const DGRAM_PORT: Port = 53;

/// Sends `count` numbered datagrams to `to`, one every `interval`.
#[derive(Debug)]
pub struct DatagramSender {
    to: HostId,
    count: u64,
    interval: Duration,
    pub sent: u64,
    next: Option<Instant>,
}

impl DatagramSender {
    pub fn new(to: HostId, count: u64, interval: Duration) -> DatagramSender {
        DatagramSender {
            to,
            count,
            interval,
            sent: 0,
            next: None,
        }
    }
}

impl Host for DatagramSender {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => {
                ctx.bind_udp(DGRAM_PORT).expect("bind");
                self.next = Some(now);
            }
            HostEvent::Timer => {
                let payload = Bytes::copy_from_slice(&self.sent.to_le_bytes());
                ctx.send_datagram(DGRAM_PORT, self.to, DGRAM_PORT, payload)
                    .expect("send datagram");
                self.sent += 1;
                self.next = (self.sent < self.count).then(|| now + self.interval);
            }
            _ => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.next
    }

    fn crash(&mut self) {
        self.next = None;
    }

    fn restart(&mut self, _now: Instant, _ctx: &mut HostCtx<'_>) {}

    fn check_invariants(&self) -> Result<(), String> {
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.sent
    }
}

/// Records every event it gets: local time, kind and (for datagrams) the sequence number.
#[derive(Debug, Default)]
pub struct Recorder {
    pub log: Vec<(Instant, String, Option<u64>)>,
}

impl Host for Recorder {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        let seq = match &event {
            HostEvent::Started => {
                ctx.bind_udp(DGRAM_PORT).expect("bind");
                None
            }
            HostEvent::Datagram { bytes, .. } => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[..8]);
                Some(u64::from_le_bytes(n))
            }
            _ => None,
        };
        self.log.push((now, event.to_string(), seq));
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn crash(&mut self) {}

    fn restart(&mut self, _now: Instant, _ctx: &mut HostCtx<'_>) {}

    fn check_invariants(&self) -> Result<(), String> {
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.log.len() as u64
    }
}

/// Port the [`Collector`] listens on.
pub const COLLECT_PORT: Port = 9;

/// Byte `i` of what a [`Streamer`] sends.
pub fn stream_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Connects to a [`Collector`], sends `total` bytes in `piece`-byte sends every `interval`,
/// then `close`s (FIN after the queued bytes, and forget).
#[derive(Debug)]
pub struct Streamer {
    to: HostId,
    total: u64,
    piece: u64,
    interval: Duration,
    conn: Option<ConnId>,
    next: Option<Instant>,
    pub sent: u64,
    pub closed: bool,
    pub resets: u64,
}

impl Streamer {
    pub fn new(to: HostId, total: u64, piece: u64, interval: Duration) -> Streamer {
        Streamer {
            to,
            total,
            piece,
            interval,
            conn: None,
            next: None,
            sent: 0,
            closed: false,
            resets: 0,
        }
    }
}

impl Host for Streamer {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.conn = Some(ctx.connect(self.to, COLLECT_PORT)),
            HostEvent::Connected { .. } => self.next = Some(now),
            HostEvent::Timer => {
                let Some(conn) = self.conn else { return };
                let n = self.piece.min(self.total - self.sent);
                let bytes: Vec<u8> = (self.sent..self.sent + n).map(stream_byte).collect();
                ctx.send(conn, Bytes::from(bytes)).expect("send");
                self.sent += n;
                if self.sent == self.total {
                    ctx.close(conn).expect("close");
                    self.closed = true;
                    self.conn = None;
                    self.next = None;
                } else {
                    self.next = Some(now + self.interval);
                }
            }
            HostEvent::ConnectFailed { .. } | HostEvent::Reset { .. } => {
                self.resets += 1;
                self.conn = None;
                self.next = None;
            }
            _ => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.next
    }

    fn crash(&mut self) {
        self.conn = None;
        self.next = None;
    }

    fn restart(&mut self, _now: Instant, _ctx: &mut HostCtx<'_>) {}

    fn check_invariants(&self) -> Result<(), String> {
        Ok(())
    }

    fn digest(&self) -> u64 {
        self.sent
    }
}

/// Accepts one connection on [`COLLECT_PORT`] and checks it: the [`Streamer`]'s bytes in order,
/// then `Eof` (after which it closes), nothing after the end.
#[derive(Debug, Default)]
pub struct Collector {
    conn: Option<ConnId>,
    pub received: u64,
    pub eof: bool,
    pub reset: bool,
    violation: Option<String>,
}

impl Collector {
    /// The connection ended, cleanly or not.
    pub fn ended(&self) -> bool {
        self.eof || self.reset
    }
}

impl Host for Collector {
    fn on_event(&mut self, _now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        let ended = self.ended();
        match event {
            HostEvent::Started => ctx.listen(COLLECT_PORT).expect("listen"),
            HostEvent::Accepted { conn, .. } => self.conn = Some(conn),
            HostEvent::Data { bytes, .. } => {
                if ended {
                    self.violation = Some("data after the end".into());
                }
                for (i, b) in bytes.iter().enumerate() {
                    if *b != stream_byte(self.received + i as u64) {
                        self.violation = Some(format!("byte {} differs", self.received + i as u64));
                        break;
                    }
                }
                self.received += bytes.len() as u64;
            }
            HostEvent::Eof { conn } => {
                if ended {
                    self.violation = Some("eof after the end".into());
                }
                self.eof = true;
                let _ = ctx.close(conn);
            }
            HostEvent::Reset { .. } => self.reset = true,
            _ => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        None
    }

    fn crash(&mut self) {}

    fn restart(&mut self, _now: Instant, _ctx: &mut HostCtx<'_>) {}

    fn check_invariants(&self) -> Result<(), String> {
        self.violation.clone().map_or(Ok(()), Err)
    }

    fn digest(&self) -> u64 {
        self.received
    }
}
