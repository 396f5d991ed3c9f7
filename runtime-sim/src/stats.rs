//! Counters of a run: work done, bytes moved, faults injected and named coverage points.

use crate::faults::FaultKind;
use std::collections::BTreeMap;
use std::fmt;

/// Coverage point: a partition or clog healed while that direction had stalled bytes.
pub const PARTITION_HEALED_WITH_DATA_IN_FLIGHT: &str = "partition_healed_with_data_in_flight";
/// Coverage point: a connection was reset because a direction stalled too long.
pub const CONNECTION_RESET_BY_STALL: &str = "connection_reset_by_stall";
/// Coverage point: a held connection was released with stalled bytes.
pub const HELD_THEN_RELEASED: &str = "held_then_released";
/// Coverage point: a crashed host had live connections (their peers were reset).
pub const CRASH_WITH_LIVE_CONNECTIONS: &str = "crash_with_live_connections";
/// Coverage point: events were deferred while their host was paused.
pub const PAUSE_DEFERRED_EVENTS: &str = "pause_deferred_events";

/// Counters of a simulated run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events popped from the queue (including stale ones).
    pub events_processed: u64,
    /// Events handed to a host (`on_event` calls plus restarts).
    pub host_events: u64,
    /// Queue events recognised as stale and skipped (superseded timers, dead connections).
    pub stale_events: u64,
    /// Events dropped because their host was crashed or not started.
    pub events_to_down_hosts: u64,
    /// Events deferred because their host was paused.
    pub events_deferred: u64,
    /// `check_invariants` calls made.
    pub invariant_checks: u64,
    /// Global checker calls made.
    pub checker_runs: u64,
    /// Timer deliveries checked against the host's requested local deadline.
    pub timer_checks: u64,
    /// `Timer` events delivered.
    pub timers_fired: u64,
    /// Stream bytes hosts handed to `send`.
    pub bytes_sent: u64,
    /// Stream bytes delivered to hosts.
    pub bytes_delivered: u64,
    /// Stream bytes dropped (reset, crash, or arriving at a closed end).
    pub bytes_dropped: u64,
    /// `Data` deliveries made.
    pub data_deliveries: u64,
    /// Connection attempts.
    pub connections_opened: u64,
    /// Connections accepted by a listener.
    pub connections_accepted: u64,
    /// Connection attempts refused (no listener).
    pub connections_refused: u64,
    /// Connection attempts that timed out.
    pub connections_timed_out: u64,
    /// Connection ends told `Reset`.
    pub connections_reset: u64,
    /// Times a direction started stalling (partition, clog or hold with bytes due).
    pub stalls: u64,
    /// Datagrams hosts sent.
    pub datagrams_sent: u64,
    /// Datagrams delivered to hosts.
    pub datagrams_delivered: u64,
    /// Datagrams dropped by the loss model.
    pub datagrams_dropped: u64,
    /// Datagrams dropped by a partition.
    pub datagrams_blocked: u64,
    /// Datagrams dropped because no socket was bound at the destination.
    pub datagrams_unbound: u64,
    /// Extra datagram copies made by the duplication model.
    pub datagrams_duplicated: u64,
    /// Datagrams given extra reordering delay.
    pub datagrams_reordered: u64,
    /// Faults applied, per kind.
    pub faults_injected: BTreeMap<FaultKind, u64>,
    /// Faults skipped because they no longer applied (host already down, no connection to pick).
    pub faults_skipped: u64,
    /// Crashes performed.
    pub crashes: u64,
    /// Restarts performed.
    pub restarts: u64,
    /// Named coverage counters (world points and whatever hosts bump with `ctx.count`).
    pub coverage: BTreeMap<&'static str, u64>,
}

impl SimStats {
    /// Adds `n` to the named coverage counter.
    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.coverage.entry(name).or_insert(0) += n;
    }

    /// The named coverage counter (0 if never bumped).
    pub fn coverage(&self, name: &str) -> u64 {
        self.coverage.get(name).copied().unwrap_or(0)
    }

    /// Faults of `kind` applied so far.
    pub fn faults(&self, kind: FaultKind) -> u64 {
        self.faults_injected.get(&kind).copied().unwrap_or(0)
    }

    pub(crate) fn fault(&mut self, kind: FaultKind) {
        *self.faults_injected.entry(kind).or_insert(0) += 1;
    }
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "events {} (host {}, stale {}, deferred {}, to down hosts {})",
            self.events_processed,
            self.host_events,
            self.stale_events,
            self.events_deferred,
            self.events_to_down_hosts
        )?;
        writeln!(
            f,
            "checks: invariants {}, checker {}, timers {} (fired {})",
            self.invariant_checks, self.checker_runs, self.timer_checks, self.timers_fired
        )?;
        writeln!(
            f,
            "streams: opened {} accepted {} refused {} timed out {} reset {} stalls {}; bytes sent {} delivered {} dropped {}",
            self.connections_opened,
            self.connections_accepted,
            self.connections_refused,
            self.connections_timed_out,
            self.connections_reset,
            self.stalls,
            self.bytes_sent,
            self.bytes_delivered,
            self.bytes_dropped
        )?;
        writeln!(
            f,
            "datagrams: sent {} delivered {} dropped {} blocked {} unbound {} duplicated {} reordered {}",
            self.datagrams_sent,
            self.datagrams_delivered,
            self.datagrams_dropped,
            self.datagrams_blocked,
            self.datagrams_unbound,
            self.datagrams_duplicated,
            self.datagrams_reordered
        )?;
        write!(
            f,
            "faults: crashes {} restarts {} skipped {}",
            self.crashes, self.restarts, self.faults_skipped
        )?;
        for (kind, n) in &self.faults_injected {
            write!(f, ", {kind} {n}")?;
        }
        for (name, n) in &self.coverage {
            write!(f, "\ncoverage {name}: {n}")?;
        }
        Ok(())
    }
}
