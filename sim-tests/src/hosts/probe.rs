//! Post-heal probes: one echo round trip through every mapping, one mapping at a time, retried a
//! few times (the first try may meet a stale route, which must then be dropped and re-read). A
//! mapping that never works is a liveness failure with a clear message.

use std::collections::BTreeMap;

use tunnox_runtime_sim::{ConnId, Duration, Host, HostCtx, HostEvent, HostId, Instant, Port};

use super::pattern;

/// Bytes each probe sends and expects back.
const PROBE_BYTES: u64 = 3_000;
/// Pause between two tries of one mapping.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// One mapping to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// What to call it in messages.
    pub name: String,
    /// The host accepting visitors (a listen client, or a node for a node port).
    pub host: HostId,
    /// Its port.
    pub port: Port,
}

#[derive(Debug, Clone)]
struct Try {
    target: usize,
    received: u64,
}

/// The probe host (see the module docs).
#[derive(Debug)]
pub struct ProbeHost {
    targets: Vec<ProbeTarget>,
    attempts_max: u32,
    attempts: Vec<u32>,
    done: Vec<bool>,
    retry_at: BTreeMap<usize, Instant>,
    /// How each target's tries ended so far.
    outcomes: Vec<Vec<&'static str>>,
    tries: BTreeMap<ConnId, Try>,
    violation: Option<String>,
}

impl ProbeHost {
    /// Probes `targets`, each up to `attempts_max` times.
    pub fn new(targets: Vec<ProbeTarget>, attempts_max: u32) -> ProbeHost {
        let n = targets.len();
        ProbeHost {
            targets,
            attempts_max,
            attempts: vec![0; n],
            done: vec![false; n],
            retry_at: BTreeMap::new(),
            outcomes: vec![Vec::new(); n],
            tries: BTreeMap::new(),
            violation: None,
        }
    }

    /// Whether every mapping answered.
    pub fn all_done(&self) -> bool {
        self.done.iter().all(|d| *d)
    }

    /// Tries made, in total.
    pub fn attempts(&self) -> u64 {
        self.attempts.iter().map(|a| u64::from(*a)).sum()
    }

    /// The mappings not yet answered, with their tries and what is in flight.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (k, t) in self
            .targets
            .iter()
            .enumerate()
            .filter(|(k, _)| !self.done[*k])
        {
            let in_flight: Vec<String> = self
                .tries
                .iter()
                .filter(|(_, tr)| tr.target == k)
                .map(|(c, tr)| format!("{c} got {}", tr.received))
                .collect();
            out.push_str(&format!(
                "probe {} via {}:{}: {} tries, in flight [{}]\n",
                t.name,
                t.host,
                t.port,
                self.attempts[k],
                in_flight.join(", ")
            ));
        }
        out
    }

    fn open(&mut self, target: usize, ctx: &mut HostCtx<'_>) {
        let Some(t) = self.targets.get(target) else {
            return;
        };
        self.attempts[target] += 1;
        let conn = ctx.connect(t.host, t.port);
        self.tries.insert(
            conn,
            Try {
                target,
                received: 0,
            },
        );
    }

    fn failed(&mut self, now: Instant, target: usize, how: &'static str) {
        self.outcomes[target].push(how);
        if self.attempts[target] >= self.attempts_max {
            if self.violation.is_none() {
                let t = &self.targets[target];
                self.violation = Some(format!(
                    "after heal, mapping {} (entry {}:{}) failed {} tries in a row ({})",
                    t.name,
                    t.host,
                    t.port,
                    self.attempts[target],
                    self.outcomes[target].join(", ")
                ));
            }
            return;
        }
        self.retry_at.insert(target, now + RETRY_AFTER);
    }

    fn seed(target: usize) -> u64 {
        0x9a0b_e000 + target as u64
    }
}

impl Host for ProbeHost {
    fn on_event(&mut self, now: Instant, event: HostEvent, ctx: &mut HostCtx<'_>) {
        match event {
            HostEvent::Started => self.open(0, ctx),
            HostEvent::Timer => {
                let due: Vec<usize> = self
                    .retry_at
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(t, _)| *t)
                    .collect();
                for target in due {
                    self.retry_at.remove(&target);
                    self.open(target, ctx);
                }
            }
            HostEvent::Connected { conn } => {
                if let Some(t) = self.tries.get(&conn) {
                    let bytes = pattern::chunk(Self::seed(t.target), 0, PROBE_BYTES as usize);
                    let _ = ctx.send(conn, bytes);
                    let _ = ctx.shutdown_write(conn);
                }
            }
            HostEvent::Data { conn, bytes } => {
                let Some(t) = self.tries.get_mut(&conn) else {
                    return;
                };
                let seed = Self::seed(t.target);
                let mismatch = pattern::first_mismatch(seed, t.received, &bytes);
                t.received += bytes.len() as u64;
                if mismatch.is_some() || t.received > PROBE_BYTES {
                    self.violation = Some(format!(
                        "probe {conn}: echo differs from what was sent (at {mismatch:?}, {} bytes)",
                        t.received
                    ));
                }
            }
            HostEvent::Eof { conn } => {
                let Some(t) = self.tries.remove(&conn) else {
                    return;
                };
                let _ = ctx.close(conn);
                if t.received == PROBE_BYTES {
                    self.done[t.target] = true;
                    ctx.count("probe_succeeded");
                    self.open(t.target + 1, ctx);
                } else {
                    self.violation = Some(format!(
                        "probe {conn}: clean end after {} of {PROBE_BYTES} bytes",
                        t.received
                    ));
                }
            }
            HostEvent::Reset { conn } | HostEvent::ConnectFailed { conn, .. } => {
                let how = if matches!(event, HostEvent::Reset { .. }) {
                    "reset"
                } else {
                    "connect failed"
                };
                if let Some(t) = self.tries.remove(&conn) {
                    ctx.count("probe_retried");
                    self.failed(now, t.target, how);
                }
            }
            HostEvent::Accepted { conn, .. } => {
                let _ = ctx.reset(conn);
            }
            HostEvent::Datagram { .. } => {}
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.retry_at.values().min().copied()
    }

    fn crash(&mut self) {
        self.tries.clear();
    }

    fn restart(&mut self, _now: Instant, _ctx: &mut HostCtx<'_>) {}

    fn check_invariants(&self) -> Result<(), String> {
        self.violation.clone().map_or(Ok(()), Err)
    }

    fn digest(&self) -> u64 {
        self.attempts() ^ (self.done.iter().filter(|d| **d).count() as u64) << 32
    }
}
