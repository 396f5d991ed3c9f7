//! Fault kinds, per-host fault permissions, and the per-seed fault schedule generator.
//!
//! A schedule is plain data generated up front from the seed, so a failing seed can print it, a
//! replay regenerates exactly the same one, and a shrinker could edit it.

use crate::ids::HostId;
use crate::trace::fmt_time;
use std::collections::BTreeMap;
use std::fmt;
use tunnox_core::rng::Rng;
use tunnox_core::time::{Duration, Instant};

/// The kinds of fault the world can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Symmetric partition between two hosts.
    Partition,
    /// One host cut from every other (partitionable) host.
    Isolate,
    /// One direction between two hosts blocked.
    OneWayPartition,
    /// A subset of hosts clogged one by one, then unclogged in random order.
    SwizzleClog,
    /// Deliveries on one connection held, then released.
    HoldRelease,
    /// Extra latency on a link for a while.
    LatencySpike,
    /// A random live connection reset at both ends.
    ConnectionReset,
    /// A host crashed (volatile state lost), restarted later.
    CrashRestart,
    /// A host paused (its events wait), resumed later.
    Pause,
    /// A host's clock jumps forward.
    ClockSkew,
    /// A host's clock drift rate changes.
    ClockDrift,
    /// Links into a host throttled for a while.
    SlowConsumer,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Partition,
        FaultKind::Isolate,
        FaultKind::OneWayPartition,
        FaultKind::SwizzleClog,
        FaultKind::HoldRelease,
        FaultKind::LatencySpike,
        FaultKind::ConnectionReset,
        FaultKind::CrashRestart,
        FaultKind::Pause,
        FaultKind::ClockSkew,
        FaultKind::ClockDrift,
        FaultKind::SlowConsumer,
    ];

    /// The kind's snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Isolate => "isolate",
            FaultKind::OneWayPartition => "one_way_partition",
            FaultKind::SwizzleClog => "swizzle_clog",
            FaultKind::HoldRelease => "hold_release",
            FaultKind::LatencySpike => "latency_spike",
            FaultKind::ConnectionReset => "connection_reset",
            FaultKind::CrashRestart => "crash_restart",
            FaultKind::Pause => "pause",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::ClockDrift => "clock_drift",
            FaultKind::SlowConsumer => "slow_consumer",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which faults a host may suffer (the scenario's choice; everything allowed by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFaults {
    /// May be crashed and restarted.
    pub crash: bool,
    /// Its links may be cut: partitions, isolation, clogs, connection holds.
    pub partition: bool,
    /// Its connections may be reset by a fault.
    pub reset: bool,
    /// May be paused.
    pub pause: bool,
    /// Its clock may start skewed and may jump and drift.
    pub clock: bool,
    /// Its links may get latency spikes and inbound throttling.
    pub delay: bool,
}

impl HostFaults {
    /// Every fault allowed.
    pub const ALL: HostFaults = HostFaults {
        crash: true,
        partition: true,
        reset: true,
        pause: true,
        clock: true,
        delay: true,
    };

    /// No fault allowed (the host is a perfect observer).
    pub const NONE: HostFaults = HostFaults {
        crash: false,
        partition: false,
        reset: false,
        pause: false,
        clock: false,
        delay: false,
    };
}

impl Default for HostFaults {
    fn default() -> Self {
        HostFaults::ALL
    }
}

/// One fault to apply at a scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Block both directions between `a` and `b` for `duration`.
    Partition {
        /// One side.
        a: HostId,
        /// The other side.
        b: HostId,
        /// How long the partition lasts.
        duration: Duration,
    },
    /// Block both directions between `host` and every other partitionable host for `duration`.
    Isolate {
        /// The isolated host.
        host: HostId,
        /// How long the isolation lasts.
        duration: Duration,
    },
    /// Block the direction `from → to` for `duration`.
    OneWayPartition {
        /// Sender whose bytes stall.
        from: HostId,
        /// Receiver that stops hearing from `from`.
        to: HostId,
        /// How long the block lasts.
        duration: Duration,
    },
    /// Clog `order[i]` at `i * step`, keep all clogged for `hold`, then unclog in `unclog_order`
    /// one every `step`.
    SwizzleClog {
        /// Hosts in clogging order.
        order: Vec<HostId>,
        /// Gap between two clogs (and two unclogs).
        step: Duration,
        /// Time all stay clogged after the last clog.
        hold: Duration,
        /// Hosts in unclogging order.
        unclog_order: Vec<HostId>,
    },
    /// Hold deliveries on one live connection (chosen with `pick` when applied), then release.
    HoldRelease {
        /// Random value choosing the connection among the live candidates.
        pick: u64,
        /// How long deliveries are held.
        duration: Duration,
    },
    /// Add `extra_latency` to both directions of `a ↔ b` for `duration`.
    LatencySpike {
        /// One side.
        a: HostId,
        /// The other side.
        b: HostId,
        /// Latency added to each delivery.
        extra_latency: Duration,
        /// How long the spike lasts.
        duration: Duration,
    },
    /// Reset one live connection (chosen with `pick` when applied) at both ends.
    ConnectionReset {
        /// Random value choosing the connection among the live candidates.
        pick: u64,
    },
    /// Crash `host` and restart it after `restart_after`.
    CrashRestart {
        /// The host.
        host: HostId,
        /// Downtime.
        restart_after: Duration,
    },
    /// Pause `host` (its events wait) for `duration`.
    Pause {
        /// The host.
        host: HostId,
        /// How long it is paused.
        duration: Duration,
    },
    /// Jump `host`'s clock forward by `jump`.
    ClockSkew {
        /// The host.
        host: HostId,
        /// The forward jump.
        jump: Duration,
    },
    /// Set `host`'s clock drift to `drift_ppm`.
    ClockDrift {
        /// The host.
        host: HostId,
        /// New drift in parts per million.
        drift_ppm: i32,
    },
    /// Throttle all links into `host` to `bytes_per_sec` for `duration`.
    SlowConsumer {
        /// The receiving host.
        host: HostId,
        /// Inbound rate while throttled.
        bytes_per_sec: u64,
        /// How long the throttle lasts (bytes it still holds back then arrive right away).
        duration: Duration,
    },
}

impl FaultAction {
    /// The kind of this fault.
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultAction::Partition { .. } => FaultKind::Partition,
            FaultAction::Isolate { .. } => FaultKind::Isolate,
            FaultAction::OneWayPartition { .. } => FaultKind::OneWayPartition,
            FaultAction::SwizzleClog { .. } => FaultKind::SwizzleClog,
            FaultAction::HoldRelease { .. } => FaultKind::HoldRelease,
            FaultAction::LatencySpike { .. } => FaultKind::LatencySpike,
            FaultAction::ConnectionReset { .. } => FaultKind::ConnectionReset,
            FaultAction::CrashRestart { .. } => FaultKind::CrashRestart,
            FaultAction::Pause { .. } => FaultKind::Pause,
            FaultAction::ClockSkew { .. } => FaultKind::ClockSkew,
            FaultAction::ClockDrift { .. } => FaultKind::ClockDrift,
            FaultAction::SlowConsumer { .. } => FaultKind::SlowConsumer,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn hosts(list: &[HostId]) -> String {
    list.iter()
        .map(HostId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultAction::Partition { a, b, duration } => {
                write!(f, "partition {a}<->{b} for {}", ms(*duration))
            }
            FaultAction::Isolate { host, duration } => {
                write!(f, "isolate {host} for {}", ms(*duration))
            }
            FaultAction::OneWayPartition { from, to, duration } => {
                write!(f, "one-way partition {from}->{to} for {}", ms(*duration))
            }
            FaultAction::SwizzleClog {
                order,
                step,
                hold,
                unclog_order,
            } => write!(
                f,
                "swizzle-clog [{}] step {} hold {} unclog [{}]",
                hosts(order),
                ms(*step),
                ms(*hold),
                hosts(unclog_order)
            ),
            FaultAction::HoldRelease { pick, duration } => {
                write!(f, "hold connection #{pick:x} for {}", ms(*duration))
            }
            FaultAction::LatencySpike {
                a,
                b,
                extra_latency,
                duration,
            } => write!(
                f,
                "latency spike {a}<->{b} +{} for {}",
                ms(*extra_latency),
                ms(*duration)
            ),
            FaultAction::ConnectionReset { pick } => write!(f, "reset connection #{pick:x}"),
            FaultAction::CrashRestart {
                host,
                restart_after,
            } => write!(f, "crash {host}, restart after {}", ms(*restart_after)),
            FaultAction::Pause { host, duration } => {
                write!(f, "pause {host} for {}", ms(*duration))
            }
            FaultAction::ClockSkew { host, jump } => {
                write!(f, "clock of {host} jumps +{}", ms(*jump))
            }
            FaultAction::ClockDrift { host, drift_ppm } => {
                write!(f, "clock of {host} drifts {drift_ppm} ppm")
            }
            FaultAction::SlowConsumer {
                host,
                bytes_per_sec,
                duration,
            } => write!(
                f,
                "slow consumer {host} at {bytes_per_sec} B/s for {}",
                ms(*duration)
            ),
        }
    }
}

/// How faults are drawn for a seed: which kinds, how often, how long.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultMix {
    /// Relative weight of each kind (missing or 0 = never).
    pub weights: BTreeMap<FaultKind, u32>,
    /// Shortest gap between two fault starts.
    pub gap_min: Duration,
    /// Longest gap between two fault starts.
    pub gap_max: Duration,
    /// Shortest partition, clog, hold, spike, pause or throttle.
    pub duration_min: Duration,
    /// Longest partition, clog, hold, spike, pause or throttle.
    pub duration_max: Duration,
    /// Shortest downtime of a crashed host.
    pub restart_after_min: Duration,
    /// Longest downtime of a crashed host.
    pub restart_after_max: Duration,
    /// Largest extra latency of a spike.
    pub spike_latency_max: Duration,
    /// Largest forward clock jump.
    pub clock_jump_max: Duration,
    /// Largest drift magnitude, in parts per million.
    pub drift_ppm_max: i32,
    /// Slowest throttled inbound rate, bytes per second.
    pub slow_bytes_per_sec_min: u64,
    /// Fastest throttled inbound rate, bytes per second.
    pub slow_bytes_per_sec_max: u64,
    /// Longest gap between two clogs of a swizzle.
    pub swizzle_step_max: Duration,
}

impl Default for FaultMix {
    fn default() -> Self {
        let weights = FaultKind::ALL.iter().map(|k| (*k, 1)).collect();
        FaultMix {
            weights,
            gap_min: Duration::from_millis(100),
            gap_max: Duration::from_millis(1_500),
            duration_min: Duration::from_millis(50),
            duration_max: Duration::from_secs(4),
            restart_after_min: Duration::from_millis(100),
            restart_after_max: Duration::from_secs(3),
            spike_latency_max: Duration::from_millis(500),
            clock_jump_max: Duration::from_secs(5),
            drift_ppm_max: 1_000,
            slow_bytes_per_sec_min: 1_000,
            slow_bytes_per_sec_max: 1_000_000,
            swizzle_step_max: Duration::from_millis(500),
        }
    }
}

impl FaultMix {
    /// A mix that never injects anything.
    pub fn none() -> FaultMix {
        FaultMix {
            weights: BTreeMap::new(),
            ..FaultMix::default()
        }
    }

    /// Only `kinds`, equally weighted, with the default timings.
    pub fn only(kinds: &[FaultKind]) -> FaultMix {
        FaultMix {
            weights: kinds.iter().map(|k| (*k, 1)).collect(),
            ..FaultMix::default()
        }
    }

    /// This mix with `kind` weighted `weight` (0 turns it off).
    pub fn with_weight(mut self, kind: FaultKind, weight: u32) -> FaultMix {
        self.weights.insert(kind, weight);
        self
    }

    /// The weight of `kind`.
    pub fn weight(&self, kind: FaultKind) -> u32 {
        self.weights.get(&kind).copied().unwrap_or(0)
    }
}

/// Faults at their times, sorted by time (ties keep generation order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FaultSchedule {
    /// `(when, what)` pairs.
    pub entries: Vec<(Instant, FaultAction)>,
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return write!(f, "faults: none");
        }
        write!(f, "faults ({}):", self.entries.len())?;
        for (at, action) in &self.entries {
            write!(f, "\n  {} {action}", fmt_time(*at))?;
        }
        Ok(())
    }
}

/// A uniform duration in `[min, max]`.
fn between(rng: &mut Rng, min: Duration, max: Duration) -> Duration {
    let min_ns = u64::try_from(min.as_nanos()).unwrap_or(u64::MAX);
    let max_ns = u64::try_from(max.as_nanos())
        .unwrap_or(u64::MAX)
        .max(min_ns);
    Duration::from_nanos(min_ns + rng.below(max_ns - min_ns + 1))
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    let i = rng.below(items.len() as u64) as usize;
    items.get(i).copied()
}

/// Two distinct items of `items` (needs at least two).
fn pick_two<T: Copy>(rng: &mut Rng, items: &[T]) -> Option<(T, T)> {
    if items.len() < 2 {
        return None;
    }
    let n = items.len() as u64;
    let i = rng.below(n);
    let j = (i + 1 + rng.below(n - 1)) % n;
    Some((*items.get(i as usize)?, *items.get(j as usize)?))
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

impl FaultSchedule {
    /// Draws a schedule over `[start, end)` for `hosts` (with their permissions) from `mix`.
    pub fn generate(
        rng: &mut Rng,
        mix: &FaultMix,
        hosts: &[(HostId, HostFaults)],
        start: Instant,
        end: Instant,
    ) -> FaultSchedule {
        let with = |f: fn(&HostFaults) -> bool| -> Vec<HostId> {
            hosts
                .iter()
                .filter(|(_, p)| f(p))
                .map(|(h, _)| *h)
                .collect()
        };
        let cuttable = with(|p| p.partition);
        let crashable = with(|p| p.crash);
        let pausable = with(|p| p.pause);
        let clocked = with(|p| p.clock);
        let delayable = with(|p| p.delay);
        let resettable = with(|p| p.reset);
        let possible = |kind: FaultKind| -> bool {
            match kind {
                FaultKind::Partition
                | FaultKind::Isolate
                | FaultKind::OneWayPartition
                | FaultKind::SwizzleClog
                | FaultKind::HoldRelease => cuttable.len() >= 2,
                FaultKind::LatencySpike => delayable.len() >= 2,
                FaultKind::SlowConsumer => !delayable.is_empty(),
                FaultKind::ConnectionReset => !resettable.is_empty(),
                FaultKind::CrashRestart => !crashable.is_empty(),
                FaultKind::Pause => !pausable.is_empty(),
                FaultKind::ClockSkew | FaultKind::ClockDrift => !clocked.is_empty(),
            }
        };
        let kinds: Vec<(FaultKind, u64)> = FaultKind::ALL
            .iter()
            .map(|k| (*k, u64::from(mix.weight(*k))))
            .filter(|(k, w)| *w > 0 && possible(*k))
            .collect();
        let total: u64 = kinds.iter().map(|(_, w)| w).sum();
        let mut entries = Vec::new();
        if total == 0 {
            return FaultSchedule { entries };
        }
        let mut at = start;
        loop {
            at = at + between(rng, mix.gap_min, mix.gap_max).max(Duration::from_nanos(1));
            if at >= end {
                break;
            }
            let mut roll = rng.below(total);
            let mut kind = FaultKind::Partition;
            for (k, w) in &kinds {
                if roll < *w {
                    kind = *k;
                    break;
                }
                roll -= w;
            }
            let duration = between(rng, mix.duration_min, mix.duration_max);
            let action = match kind {
                FaultKind::Partition => {
                    pick_two(rng, &cuttable).map(|(a, b)| FaultAction::Partition { a, b, duration })
                }
                FaultKind::Isolate => {
                    pick(rng, &cuttable).map(|host| FaultAction::Isolate { host, duration })
                }
                FaultKind::OneWayPartition => pick_two(rng, &cuttable)
                    .map(|(from, to)| FaultAction::OneWayPartition { from, to, duration }),
                FaultKind::SwizzleClog => {
                    let mut order = cuttable.clone();
                    shuffle(rng, &mut order);
                    let size = 1 + rng.below(order.len() as u64) as usize;
                    order.truncate(size);
                    let mut unclog_order = order.clone();
                    shuffle(rng, &mut unclog_order);
                    let step = between(rng, Duration::ZERO, mix.swizzle_step_max);
                    Some(FaultAction::SwizzleClog {
                        order,
                        step,
                        hold: duration,
                        unclog_order,
                    })
                }
                FaultKind::HoldRelease => Some(FaultAction::HoldRelease {
                    pick: rng.next_u64(),
                    duration,
                }),
                FaultKind::LatencySpike => pick_two(rng, &delayable).map(|(a, b)| {
                    let extra_latency = between(rng, Duration::ZERO, mix.spike_latency_max);
                    FaultAction::LatencySpike {
                        a,
                        b,
                        extra_latency,
                        duration,
                    }
                }),
                FaultKind::ConnectionReset => Some(FaultAction::ConnectionReset {
                    pick: rng.next_u64(),
                }),
                FaultKind::CrashRestart => pick(rng, &crashable).map(|host| {
                    let restart_after = between(rng, mix.restart_after_min, mix.restart_after_max);
                    FaultAction::CrashRestart {
                        host,
                        restart_after,
                    }
                }),
                FaultKind::Pause => {
                    pick(rng, &pausable).map(|host| FaultAction::Pause { host, duration })
                }
                FaultKind::ClockSkew => pick(rng, &clocked).map(|host| {
                    let jump = between(rng, Duration::ZERO, mix.clock_jump_max);
                    FaultAction::ClockSkew { host, jump }
                }),
                FaultKind::ClockDrift => pick(rng, &clocked).map(|host| {
                    let span = u64::try_from(mix.drift_ppm_max.max(0)).unwrap_or(0);
                    let drift_ppm = (rng.below(2 * span + 1) as i64 - span as i64) as i32;
                    FaultAction::ClockDrift { host, drift_ppm }
                }),
                FaultKind::SlowConsumer => pick(rng, &delayable).map(|host| {
                    let lo = mix.slow_bytes_per_sec_min.max(1);
                    let hi = mix.slow_bytes_per_sec_max.max(lo);
                    FaultAction::SlowConsumer {
                        host,
                        bytes_per_sec: lo + rng.below(hi - lo + 1),
                        duration,
                    }
                }),
            };
            if let Some(action) = action {
                entries.push((at, action));
            }
        }
        FaultSchedule { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<(HostId, HostFaults)> {
        let mut hosts: Vec<_> = (0..6).map(|i| (HostId(i), HostFaults::ALL)).collect();
        hosts.push((HostId(6), HostFaults::NONE));
        hosts
    }

    #[test]
    fn same_seed_same_schedule_and_flags_respected() {
        let end = Instant::ZERO + Duration::from_secs(120);
        let schedule_for = |seed| {
            FaultSchedule::generate(
                &mut Rng::seed_from_u64(seed),
                &FaultMix::default(),
                &hosts(),
                Instant::ZERO,
                end,
            )
        };
        let a = schedule_for(5);
        assert_eq!(a, schedule_for(5));
        assert_eq!(a.to_string(), schedule_for(5).to_string());
        assert_ne!(a, schedule_for(6));
        assert!(a.entries.len() > 50);
        let kinds: std::collections::BTreeSet<_> =
            a.entries.iter().map(|(_, f)| f.kind()).collect();
        assert_eq!(kinds.len(), FaultKind::ALL.len(), "{a}");
        for (_, f) in &a.entries {
            let shown = f.to_string();
            assert!(!shown.contains("h6"), "{shown}");
        }
        assert!(a.entries.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn none_is_empty() {
        let s = FaultSchedule::generate(
            &mut Rng::seed_from_u64(1),
            &FaultMix::none(),
            &hosts(),
            Instant::ZERO,
            Instant::ZERO + Duration::from_secs(60),
        );
        assert!(s.entries.is_empty());
        assert_eq!(s.to_string(), "faults: none");
    }
}
