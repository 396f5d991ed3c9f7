//! The run's trace: a rolling hash over every processed event (each queue event, and what each
//! host saw and its digest after), plus optional readable lines.
//!
//! The hash never depends on whether readable tracing is on, so a failing seed replayed with
//! tracing enabled reproduces the same hash.

use crate::ids::HostId;
use std::collections::VecDeque;
use tunnox_core::digest::Fnv64;
use tunnox_core::time::Instant;

/// Whether and how much readable trace to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceMode {
    /// Only the rolling hash.
    #[default]
    Off,
    /// The last `n` lines.
    Ring(usize),
    /// Every line.
    Full,
}

/// What kind of event a trace record is about (part of the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TraceKind {
    /// Host started.
    Started = 1,
    /// Timer fired.
    Timer = 2,
    /// Connection accepted.
    Accepted = 3,
    /// Connection established at the connector.
    Connected = 4,
    /// Connection attempt failed.
    ConnectFailed = 5,
    /// Stream bytes delivered.
    Data = 6,
    /// Peer shut down writing.
    Eof = 7,
    /// Connection reset.
    Reset = 8,
    /// Datagram delivered.
    Datagram = 9,
    /// Host crashed.
    Crash = 10,
    /// Host restarted.
    Restart = 11,
    /// Fault applied.
    Fault = 12,
}

/// Rolling event hash and readable lines.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: Fnv64,
    records: u64,
    mode: TraceMode,
    lines: VecDeque<String>,
}

impl Trace {
    /// A trace keeping readable lines as `mode` says.
    pub fn new(mode: TraceMode) -> Trace {
        Trace {
            hash: Fnv64::new(),
            records: 0,
            mode,
            lines: VecDeque::new(),
        }
    }

    /// Whether readable lines are kept.
    pub fn enabled(&self) -> bool {
        self.mode != TraceMode::Off
    }

    /// Folds one event into the hash.
    pub fn record(
        &mut self,
        time: Instant,
        host: HostId,
        kind: TraceKind,
        conn: u64,
        len: u64,
        digest: u64,
    ) {
        let mut buf = [0u8; 37];
        buf[0..8].copy_from_slice(&time.as_nanos().to_le_bytes());
        buf[8..12].copy_from_slice(&host.0.to_le_bytes());
        buf[12] = kind as u8;
        buf[13..21].copy_from_slice(&conn.to_le_bytes());
        buf[21..29].copy_from_slice(&len.to_le_bytes());
        buf[29..37].copy_from_slice(&digest.to_le_bytes());
        self.hash.write(&buf);
        self.records += 1;
    }

    /// Folds one queue event (whether or not it reaches a host) into the hash.
    pub fn queue_event(&mut self, time: Instant, tag: u8, id: u64) {
        let mut buf = [0u8; 17];
        buf[0..8].copy_from_slice(&time.as_nanos().to_le_bytes());
        buf[8] = tag;
        buf[9..17].copy_from_slice(&id.to_le_bytes());
        self.hash.write(&buf);
    }

    /// Keeps a readable line if tracing is on (`line` is only built then).
    pub fn line(&mut self, line: impl FnOnce() -> String) {
        match self.mode {
            TraceMode::Off => {}
            TraceMode::Full => self.lines.push_back(line()),
            TraceMode::Ring(cap) => {
                if cap == 0 {
                    return;
                }
                if self.lines.len() >= cap {
                    self.lines.pop_front();
                }
                self.lines.push_back(line());
            }
        }
    }

    /// The rolling hash so far.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// Number of records folded in.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The readable lines kept, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

/// Formats a virtual time as seconds with nanosecond precision (`12.000345678s`).
pub fn fmt_time(t: Instant) -> String {
    let ns = t.as_nanos();
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_mode_and_ring_is_bounded() {
        let mut a = Trace::new(TraceMode::Off);
        let mut b = Trace::new(TraceMode::Ring(2));
        for i in 0..5u64 {
            for t in [&mut a, &mut b] {
                t.record(Instant::from_nanos(i), HostId(1), TraceKind::Data, i, 3, 9);
                t.line(|| format!("line {i}"));
            }
        }
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.lines().count(), 0);
        assert_eq!(b.lines().collect::<Vec<_>>(), ["line 3", "line 4"]);
        assert_eq!(fmt_time(Instant::from_nanos(1_000_000_005)), "1.000000005s");
    }
}
