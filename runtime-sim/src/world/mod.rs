//! The world: hosts, the network, the event queue and the fault schedule, driven in virtual time.
//!
//! A run has two phases: [`World::run_chaos`] (faults on, invariants checked after every event)
//! then [`World::heal`] and [`World::run_until_quiet`] (no faults; the scenario's liveness
//! predicate must come true before a deadline).

mod apply;
mod dispatch;

use crate::clock::{ClockSpec, HostClock};
use crate::event::WorldEvent;
use crate::faults::{FaultAction, FaultMix, FaultSchedule, HostFaults};
use crate::host::Host;
use crate::ids::HostId;
use crate::knobs::{KnobMix, Knobs};
use crate::net::{NetConfig, Network};
use crate::queue::EventQueue;
use crate::stats::SimStats;
use crate::trace::{Trace, TraceMode, fmt_time};
use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use tunnox_core::rng::Rng;
use tunnox_core::time::{Duration, Instant};

/// Largest random initial clock offset given to hosts whose clocks may be skewed.
const RANDOM_CLOCK_OFFSET_MAX: Duration = Duration::from_secs(1_000);
/// Largest random initial drift given to hosts whose clocks may be skewed, in ppm.
const RANDOM_DRIFT_PPM_MAX: u64 = 100;

/// Everything a run is built from; with the same config and hosts a run is reproducible.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// The run's seed; every random choice derives from it.
    pub seed: u64,
    /// Network parameters.
    pub net: NetConfig,
    /// Faults drawn for the chaos phase.
    pub faults: FaultMix,
    /// How BUGGIFY knobs are drawn.
    pub knobs: KnobMix,
    /// Readable tracing.
    pub trace: TraceMode,
    /// Stop with an error after this many events (livelock guard).
    pub event_limit: Option<u64>,
    /// Give hosts that allow clock faults a random initial offset and drift.
    pub random_clocks: bool,
}

impl WorldConfig {
    /// Defaults for `seed`: default network, all faults, knobs at 25%, no readable trace.
    pub fn new(seed: u64) -> WorldConfig {
        WorldConfig {
            seed,
            net: NetConfig::default(),
            faults: FaultMix::default(),
            knobs: KnobMix::default(),
            trace: TraceMode::Off,
            event_limit: None,
            random_clocks: true,
        }
    }
}

/// How a host joins the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostOptions {
    /// Global time at which it gets `Started`.
    pub start_at: Instant,
    /// Which faults it may suffer.
    pub faults: HostFaults,
    /// Its clock; `None` draws one from the seed (if clock faults are allowed) or runs exact.
    pub clock: Option<ClockSpec>,
}

impl HostOptions {
    /// Starts at time zero, every fault allowed, clock from the seed.
    pub fn new() -> HostOptions {
        HostOptions::default()
    }

    /// These options with the given fault permissions.
    pub fn faults(mut self, faults: HostFaults) -> HostOptions {
        self.faults = faults;
        self
    }

    /// These options with start time `at`.
    pub fn start_at(mut self, at: Instant) -> HostOptions {
        self.start_at = at;
        self
    }

    /// These options with an explicit clock.
    pub fn clock(mut self, clock: ClockSpec) -> HostOptions {
        self.clock = Some(clock);
        self
    }
}

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A host's `check_invariants` failed.
    #[error("invariant violated on {host} ({name}) at {time}: {detail}")]
    Invariant {
        /// The host.
        host: HostId,
        /// Its name.
        name: String,
        /// Global time, formatted.
        time: String,
        /// The host's message.
        detail: String,
    },
    /// The global checker failed.
    #[error("global check failed at {time}: {detail}")]
    Checker {
        /// Global time, formatted.
        time: String,
        /// The checker's message.
        detail: String,
    },
    /// A timer reached a host before its local deadline (a simulator bug).
    #[error("timer early on {host}: local {local_ns} ns < deadline {deadline_ns} ns")]
    TimerEarly {
        /// The host.
        host: HostId,
        /// Host-local time at delivery.
        local_ns: u64,
        /// What the host asked for.
        deadline_ns: u64,
    },
    /// After each of many timers in a row the host asked again for a deadline no later than the
    /// one that just fired (livelock).
    #[error(
        "{host} ({name}) re-asked for a timer without progress {streak} times in a row at {time}"
    )]
    TimerLoop {
        /// The host.
        host: HostId,
        /// Its name.
        name: String,
        /// Consecutive due timers.
        streak: u32,
        /// Global time, formatted.
        time: String,
    },
    /// The liveness predicate did not hold by the deadline.
    #[error("not quiet by {deadline}")]
    NotQuiet {
        /// The deadline, formatted.
        deadline: String,
    },
    /// Nothing was left to happen and the liveness predicate still did not hold.
    #[error("event queue ran dry at {time} before the liveness predicate held")]
    Stuck {
        /// Global time, formatted.
        time: String,
    },
    /// The configured event limit was reached.
    #[error("event limit {limit} reached at {time}")]
    EventLimit {
        /// The limit.
        limit: u64,
        /// Global time, formatted.
        time: String,
    },
}

/// One host and the world's bookkeeping for it.
struct HostSlot {
    host: Box<dyn Host>,
    rng: Rng,
    name: String,
    faults: HostFaults,
    clock: HostClock,
    started: bool,
    crashed: bool,
    paused: bool,
    /// Events that arrived while paused, in arrival order.
    deferred: VecDeque<WorldEvent>,
    /// Generation of the valid queued timer event.
    timer_gen: u32,
    /// Local deadline of the queued timer event, if one is armed.
    timer_deadline: Option<Instant>,
    /// Local deadline of the timer that fired last.
    timer_fired_deadline: Option<Instant>,
    /// Consecutive timers after which the host asked again for a deadline no later than the one
    /// that just fired (no progress).
    timer_streak: u32,
    /// Last local time handed to the host (local time never goes backwards).
    last_local: Instant,
}

impl HostSlot {
    fn local_now(&mut self, now: Instant) -> Instant {
        let local = self.clock.local_at(now).max(self.last_local);
        self.last_local = local;
        local
    }
}

/// Global checker run after every host event.
pub type Checker = Box<dyn FnMut(&World) -> Result<(), String>>;

/// A deterministic world of hosts on a simulated network.
pub struct World {
    seed: u64,
    now: Instant,
    queue: EventQueue<WorldEvent>,
    hosts: Vec<HostSlot>,
    net: Network,
    knobs: Knobs,
    stats: SimStats,
    trace: Trace,
    fault_mix: FaultMix,
    fault_rng: Rng,
    clock_rng: Rng,
    host_rng: Rng,
    scenario_rng: Rng,
    buggify_salt: u64,
    random_clocks: bool,
    schedule: FaultSchedule,
    /// Bumped by `heal`: queued fault events of older epochs are ignored.
    fault_epoch: u32,
    /// Tokens telling apart overlapping spikes and throttles.
    next_token: u32,
    event_limit: Option<u64>,
    checker: Option<Checker>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .field("queued", &self.queue.len())
            .field("knobs", &self.knobs)
            .finish_non_exhaustive()
    }
}

impl World {
    /// An empty world for `config`.
    pub fn new(config: WorldConfig) -> World {
        let mut root = Rng::seed_from_u64(config.seed);
        let mut knob_rng = root.fork();
        let fault_rng = root.fork();
        let stream_rng = root.fork();
        let datagram_rng = root.fork();
        let clock_rng = root.fork();
        let host_rng = root.fork();
        let scenario_rng = root.fork();
        let buggify_salt = root.next_u64();
        let knobs = Knobs::generate(&mut knob_rng, &config.knobs);
        let mut net = Network::new(config.net, stream_rng, datagram_rng);
        net.bytewise = knobs.split_deliveries_bytewise;
        net.heavy_tail = knobs.heavy_latency_tail;
        World {
            seed: config.seed,
            now: Instant::ZERO,
            queue: EventQueue::new(),
            hosts: Vec::new(),
            net,
            knobs,
            stats: SimStats::default(),
            trace: Trace::new(config.trace),
            fault_mix: config.faults,
            fault_rng,
            clock_rng,
            host_rng,
            scenario_rng,
            buggify_salt,
            random_clocks: config.random_clocks,
            schedule: FaultSchedule::default(),
            fault_epoch: 0,
            next_token: 0,
            event_limit: config.event_limit,
            checker: None,
        }
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Global virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The run's BUGGIFY knobs (read them when building hosts).
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    /// Replaces the drawn knobs (tests and replays); call before adding hosts.
    pub fn set_knobs(&mut self, knobs: Knobs) {
        self.knobs = knobs;
        self.net.bytewise = knobs.split_deliveries_bytewise;
        self.net.heavy_tail = knobs.heavy_latency_tail;
    }

    /// A fresh RNG from the scenario's own stream (for building hosts and workloads).
    pub fn fork_rng(&mut self) -> Rng {
        self.scenario_rng.fork()
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The rolling hash over every event processed so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Readable trace lines kept (empty unless tracing is on).
    pub fn trace_lines(&self) -> impl Iterator<Item = &str> {
        self.trace.lines()
    }

    /// The fault schedule (generated and manually scheduled faults).
    pub fn fault_schedule(&self) -> &FaultSchedule {
        &self.schedule
    }

    /// Seed, knobs, hosts and fault schedule: what to print when a seed fails.
    pub fn describe(&self) -> String {
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, s)| format!("h{i}={}", s.name))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "TUNNOX_SIM_SEED={}\n{}\nhosts: {hosts}\n{}",
            self.seed, self.knobs, self.schedule
        )
    }

    /// Adds a host; it gets `Started` at `options.start_at`.
    pub fn add_host<H: Host>(
        &mut self,
        name: impl Into<String>,
        host: H,
        options: HostOptions,
    ) -> HostId {
        let id = HostId(self.hosts.len() as u32);
        let rng = self.host_rng.fork();
        let offset_max = RANDOM_CLOCK_OFFSET_MAX.as_nanos() as u64;
        let drawn = ClockSpec {
            offset_ns: self.clock_rng.below(offset_max),
            drift_ppm: self.clock_rng.below(2 * RANDOM_DRIFT_PPM_MAX + 1) as i32
                - RANDOM_DRIFT_PPM_MAX as i32,
        };
        let spec = match options.clock {
            Some(spec) => spec,
            None if options.faults.clock && self.random_clocks => drawn,
            None => ClockSpec::default(),
        };
        self.net.add_host(options.faults.partition);
        self.hosts.push(HostSlot {
            host: Box::new(host),
            rng,
            name: name.into(),
            faults: options.faults,
            clock: HostClock::new(spec),
            started: false,
            crashed: false,
            paused: false,
            deferred: VecDeque::new(),
            timer_gen: 0,
            timer_deadline: None,
            timer_fired_deadline: None,
            timer_streak: 0,
            last_local: Instant::ZERO,
        });
        self.queue.push(
            options.start_at.max(self.now),
            WorldEvent::Start { host: id },
        );
        id
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Every host id, in order.
    pub fn host_ids(&self) -> impl Iterator<Item = HostId> + use<> {
        (0..self.hosts.len() as u32).map(HostId)
    }

    /// The host's name.
    pub fn host_name(&self, id: HostId) -> Option<&str> {
        self.hosts.get(id.index()).map(|s| s.name.as_str())
    }

    /// The host as its concrete type, if `id` exists and has type `T`.
    pub fn host<T: Host>(&self, id: HostId) -> Option<&T> {
        let any: &dyn Any = self.hosts.get(id.index())?.host.as_ref();
        any.downcast_ref::<T>()
    }

    /// The host as its concrete type, mutably (for scenario set-up between phases).
    pub fn host_mut<T: Host>(&mut self, id: HostId) -> Option<&mut T> {
        let any: &mut dyn Any = self.hosts.get_mut(id.index())?.host.as_mut();
        any.downcast_mut::<T>()
    }

    /// Whether the host has started and is not crashed.
    pub fn is_up(&self, id: HostId) -> bool {
        self.hosts
            .get(id.index())
            .is_some_and(|s| s.started && !s.crashed)
    }

    /// Whether the host is paused.
    pub fn is_paused(&self, id: HostId) -> bool {
        self.hosts.get(id.index()).is_some_and(|s| s.paused)
    }

    /// The host's local clock reading now.
    pub fn local_now(&self, id: HostId) -> Option<Instant> {
        let slot = self.hosts.get(id.index())?;
        Some(slot.clock.local_at(self.now).max(slot.last_local))
    }

    /// The host's clock.
    pub fn clock(&self, id: HostId) -> Option<&HostClock> {
        self.hosts.get(id.index()).map(|s| &s.clock)
    }

    /// Connections the network still tracks (an end not yet forgotten by its host).
    pub fn live_connections(&self) -> usize {
        self.net.live_connections()
    }

    /// One line per connection still tracked: ends, states, queued bytes (for leak reports).
    pub fn describe_connections(&self) -> String {
        self.net.describe_connections()
    }

    /// Events waiting in the queue.
    pub fn queued_events(&self) -> usize {
        self.queue.len()
    }

    /// Installs a global checker run after every host event (in every phase).
    pub fn set_checker(&mut self, checker: impl FnMut(&World) -> Result<(), String> + 'static) {
        self.checker = Some(Box::new(checker));
    }

    /// Schedules `action` at global time `at` (appended to the printed schedule).
    pub fn schedule_fault(&mut self, at: Instant, action: FaultAction) {
        let index = self.schedule.entries.len() as u32;
        self.schedule.entries.push((at, action));
        self.queue.push(
            at.max(self.now),
            WorldEvent::Fault {
                epoch: self.fault_epoch,
                index,
            },
        );
    }

    /// Draws faults from the config's mix over `[now, until)` and schedules them.
    pub fn generate_faults(&mut self, until: Instant) {
        let hosts: Vec<(HostId, HostFaults)> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, s)| (HostId(i as u32), s.faults))
            .collect();
        let drawn = FaultSchedule::generate(
            &mut self.fault_rng,
            &self.fault_mix,
            &hosts,
            self.now,
            until,
        );
        for (at, action) in drawn.entries {
            self.schedule_fault(at, action);
        }
    }

    /// Chaos phase: draws faults up to `until`, then runs to `until` checking invariants after
    /// every event.
    pub fn run_chaos(&mut self, until: Instant) -> Result<(), SimError> {
        self.generate_faults(until);
        self.run_until(until)
    }

    /// Processes every event due at or before `until`, then sets the time to `until`.
    pub fn run_until(&mut self, until: Instant) -> Result<(), SimError> {
        while self.queue.peek_time().is_some_and(|t| t <= until) {
            self.step()?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        self.run_until(self.now + duration)
    }

    /// Liveness phase: runs until `done(world)` holds (checked after every event), failing at
    /// `deadline` or if nothing is left to happen. Returns the time it held.
    pub fn run_until_quiet(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&World) -> bool,
    ) -> Result<Instant, SimError> {
        loop {
            if done(self) {
                return Ok(self.now);
            }
            match self.queue.peek_time() {
                None => {
                    return Err(SimError::Stuck {
                        time: fmt_time(self.now),
                    });
                }
                Some(t) if t > deadline => {
                    self.now = self.now.max(deadline);
                    return Err(SimError::NotQuiet {
                        deadline: fmt_time(deadline),
                    });
                }
                Some(_) => {
                    self.step()?;
                }
            }
        }
    }
}
