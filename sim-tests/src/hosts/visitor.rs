//! Visitors: the workload. Each opens connections to mapping entries at a random pace, sends
//! pattern bytes in random-size pieces, half-closes, and checks what comes back byte by byte.

use std::collections::BTreeMap;

use tunnox_runtime_sim::{ConnId, Duration, Host, HostCtx, HostEvent, HostId, Instant, Port};

use super::pattern;
use super::service::{ServiceKind, source_seed};

/// Where a visitor can connect and what answers there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// The host accepting visitors (a listen client, or the node for node ports).
    pub host: HostId,
    /// Its port.
    pub port: Port,
    /// The service behind the mapping.
    pub service: ServiceKind,
    /// The service's port (names a source's stream).
    pub service_port: Port,
}

/// The workload of one visitor host.
#[derive(Debug, Clone)]
pub struct VisitorPlan {
    /// Entries to pick from.
    pub entries: Vec<EntryPoint>,
    /// Connections to open in total.
    pub connections: u32,
    /// Most connections open at once.
    pub concurrency: u32,
    /// Largest number of bytes one connection sends.
    pub max_bytes: u64,
    /// Largest pause between opens and between pieces.
    pub max_pause: Duration,
    /// No new connection after this host-local time.
    pub stop_opening_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Connecting,
    Sending,
    /// All sent and half-closed; waiting for the rest and the end.
    Draining,
}

#[derive(Debug, Clone)]
struct Visit {
    entry: EntryPoint,
    seed: u64,
    phase: Phase,
    total: u64,
    sent: u64,
    received: u64,
    next_piece_at: Instant,
    /// This visit aborts (resets) once it has half of what it expects back.
    aborts: bool,
}

/// Outcome counters of a visitor host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisitorTally {
    /// Connections opened.
    pub opened: u64,
    /// Connections that completed with every byte checked.
    pub completed: u64,
    /// Connections reset (both ends saw a reset: an allowed outcome under faults).
    pub reset: u64,
    /// Connections the visitor itself abandoned with a reset midway (part of the workload).
    pub aborted: u64,
    /// Connection attempts that failed (listener not there yet, partition).
    pub connect_failed: u64,
    /// Bytes sent and verified received.
    pub bytes_verified: u64,
}

/// A visitor host (see the module docs).
#[derive(Debug)]
pub struct VisitorHost {
    plan: VisitorPlan,
    visits: BTreeMap<ConnId, Visit>,
    next_open_at: Option<Instant>,
    next_seed: u64,
    tally: VisitorTally,
    violation: Option<String>,
}

impl VisitorHost {
    /// A visitor following `plan`; `seed_base` makes its streams distinct from other visitors'.
    pub fn new(plan: VisitorPlan, seed_base: u64) -> VisitorHost {
        VisitorHost {
            plan,
            visits: BTreeMap::new(),
            next_open_at: None,
            next_seed: seed_base << 32,
            tally: VisitorTally::default(),
            violation: None,
        }
    }

    /// What happened so far.
    pub fn tally(&self) -> VisitorTally {
        self.tally
    }

    /// Connections still in flight.
    pub fn in_flight(&self) -> usize {
        self.visits.len()
    }

    /// The connections in flight: id, entry port, phase, bytes sent/total and received.
    pub fn describe_in_flight(&self) -> String {
        self.visits
            .iter()
            .map(|(c, v)| {
                format!(
                    "{c}->{}:{} {:?} sent {}/{} recv {}",
                    v.entry.host, v.entry.port, v.phase, v.sent, v.total, v.received
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether every planned connection was made and ended.
    pub fn is_done(&self, now: Instant) -> bool {
        self.visits.is_empty()
            && (self.tally.opened >= u64::from(self.plan.connections)
                || now >= self.plan.stop_opening_at)
    }

    fn violate(&mut self, message: String) {
        if self.violation.is_none() {
            self.violation = Some(message);
        }
    }

    fn pause(&self, ctx: &mut HostCtx<'_>) -> Duration {
        let max = self.plan.max_pause.as_nanos().max(1) as u64;
        Duration::from_nanos(ctx.rng().below(max))
    }

    fn maybe_open(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let due = self.next_open_at.is_some_and(|t| now >= t);
        if !due || self.plan.entries.is_empty() {
            return;
        }
        let exhausted = self.tally.opened >= u64::from(self.plan.connections)
            || now >= self.plan.stop_opening_at;
        if exhausted {
            self.next_open_at = None;
            return;
        }
        if self.visits.len() < self.plan.concurrency as usize {
            let entry = self.plan.entries[ctx.rng().below(self.plan.entries.len() as u64) as usize];
            let total = ctx.rng().below(self.plan.max_bytes + 1);
            let aborts = ctx.rng().below(8) == 0;
            let conn = ctx.connect(entry.host, entry.port);
            self.next_seed += 1;
            self.visits.insert(
                conn,
                Visit {
                    entry,
                    seed: self.next_seed,
                    phase: Phase::Connecting,
                    total,
                    sent: 0,
                    received: 0,
                    next_piece_at: now,
                    aborts,
                },
            );
            self.tally.opened += 1;
        }
        self.next_open_at = Some(now + self.pause(ctx));
    }

    fn send_pieces(&mut self, now: Instant, ctx: &mut HostCtx<'_>) {
        let conns: Vec<ConnId> = self
            .visits
            .iter()
            .filter(|(_, v)| v.phase == Phase::Sending && v.next_piece_at <= now)
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            let piece_max = 1 + ctx.rng().below(32 * 1024);
            let pause = self.pause(ctx);
            let Some(v) = self.visits.get_mut(&conn) else {
                continue;
            };
            let n = (v.total - v.sent).min(piece_max);
            if n > 0 {
                let _ = ctx.send(conn, pattern::chunk(v.seed, v.sent, n as usize));
                v.sent += n;
            }
            if v.sent == v.total {
                v.phase = Phase::Draining;
                let _ = ctx.shutdown_write(conn);
            } else {
                v.next_piece_at = now + pause;
            }
        }
    }

    fn on_data(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut HostCtx<'_>) {
        let Some(v) = self.visits.get_mut(&conn) else {
            return;
        };
        let (seed, limit) = match v.entry.service {
            // An echo returns a prefix of what was sent, never more.
            ServiceKind::Echo => (v.seed, v.sent),
            ServiceKind::Source { len } => (source_seed(v.entry.service_port), len),
            ServiceKind::Sink => (0, 0),
        };
        let offset = v.received;
        v.received += bytes.len() as u64;
        let received = v.received;
        if received > limit {
            let message =
                format!("{conn}: received {received} bytes, more than the {limit} possible");
            return self.violate(message);
        }
        if let Some(at) = pattern::first_mismatch(seed, offset, bytes) {
            return self.violate(format!("{conn}: byte {at} differs from what was sent"));
        }
        // Some visitors give up halfway: the reset must travel back through the tunnel.
        if v.aborts && received * 2 >= limit {
            self.visits.remove(&conn);
            let _ = ctx.reset(conn);
            self.tally.aborted += 1;
            ctx.count("visitor_aborted");
        }
    }

    fn on_eof(&mut self, conn: ConnId, ctx: &mut HostCtx<'_>) {
        let Some(v) = self.visits.remove(&conn) else {
            return;
        };
        let expected = match v.entry.service {
            ServiceKind::Echo => v.total,
            ServiceKind::Source { len } => len,
            ServiceKind::Sink => 0,
        };
        // A clean end must mean every byte arrived: a FIN that overtakes data is lost data.
        let all_sent = v.phase == Phase::Draining;
        if !all_sent && v.entry.service == ServiceKind::Echo {
            let message = format!(
                "{conn}: clean end after {} of {} bytes were even sent",
                v.sent, v.total
            );
            return self.violate(message);
        }
        if v.received != expected {
            let message = format!("{conn}: clean end with {} of {expected} bytes", v.received);
            return self.violate(message);
        }
        let _ = ctx.close(conn);
        self.tally.completed += 1;
        self.tally.bytes_verified += v.received;
        ctx.count("visitor_completed");
    }
}

impl Host for VisitorHost {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.next_open_at = Some(now + self.pause(ctx)),
            HostEvent::Timer => {}
            HostEvent::Connected { conn } => {
                if let Some(v) = self.visits.get_mut(&conn) {
                    v.phase = Phase::Sending;
                    v.next_piece_at = now;
                }
            }
            HostEvent::ConnectFailed { conn, .. } => {
                self.visits.remove(&conn);
                self.tally.connect_failed += 1;
            }
            HostEvent::Data { conn, bytes } => self.on_data(conn, &bytes, ctx),
            HostEvent::Eof { conn } => self.on_eof(conn, ctx),
            HostEvent::Reset { conn } => {
                if self.visits.remove(&conn).is_some() {
                    self.tally.reset += 1;
                    ctx.count("visitor_reset");
                }
            }
            HostEvent::Accepted { conn, .. } => {
                let _ = ctx.reset(conn);
            }
            HostEvent::Datagram { .. } => {}
        }
        self.send_pieces(now, ctx);
        self.maybe_open(now, ctx);
    }

    fn next_timer(&self) -> Option<Instant> {
        let piece = self
            .visits
            .values()
            .filter(|v| v.phase == Phase::Sending)
            .map(|v| v.next_piece_at)
            .min();
        tunnox_core::time::earliest(piece, self.next_open_at)
    }

    fn crash(&mut self) {
        // Visitors are never crashed by the scenarios (their checks would be meaningless).
        self.visits.clear();
    }

    fn restart(&mut self, now: Instant, _ctx: &mut HostCtx<'_>) {
        self.next_open_at = Some(now);
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.violation.clone().map_or(Ok(()), Err)
    }

    fn digest(&self) -> u64 {
        let t = self.tally;
        t.opened
            ^ t.completed << 16
            ^ t.reset << 32
            ^ t.bytes_verified.rotate_left(48)
            ^ self.visits.len() as u64
    }
}
