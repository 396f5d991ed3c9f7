//! tunnox-runtime-sim: a deterministic world of hosts on a simulated network.
//!
//! Hosts implement [`Host`]; the [`World`] drives them from one event queue ordered by
//! `(virtual time, sequence)`, with one seeded RNG from which every random choice derives. The
//! network offers TCP-like stream connections (ordered byte pipes that stall under partitions and
//! reset when stalled too long) and datagrams (loss, duplication, reordering). Faults come from a
//! per-seed schedule generated up front; BUGGIFY knobs are drawn per seed. Every processed event
//! is folded into a trace hash, so the same seed must give the same hash.
//!
//! The model, in brief:
//! - **Time.** Global virtual time drives the queue; each host sees its own clock (offset, forward
//!   jumps, drift), never going backwards. Hosts ask for one timer with [`Host::next_timer`],
//!   re-queried after every event they handle; it fires only once host-local time has reached it.
//! - **Streams.** `connect` → `Accepted` at the listener after one latency, `Connected` after a
//!   round trip; `Refused` without a listener; `Timeout` if the handshake is cut off. Bytes arrive
//!   in order, possibly split into several `Data` events or merged, after serialization at the
//!   link's bandwidth and a latency drawn per piece (base + jitter + heavy tail). A partition or
//!   hold stalls a direction without losing bytes; a stall longer than
//!   [`NetConfig::stall_reset_after`] resets both ends. `close` forgets the end after a FIN;
//!   bytes that later reach a forgotten end are answered with RST. A crash resets every peer.
//! - **Datagrams.** Need a bound port; lost, duplicated and delayed independently; dropped by
//!   partitions.
//! - **Randomness.** One seed; separate forked streams for knobs, faults, stream network,
//!   datagrams, clocks, each host (in the order added) and the scenario, so a new draw in one
//!   place does not shift the others.
//!
//! ```no_run
//! # use tunnox_runtime_sim::*;
//! # fn scenario(server: impl Host, client: impl Host) -> Result<(), SimError> {
//! let mut world = World::new(WorldConfig::new(42));
//! let s = world.add_host("server", server, HostOptions::new());
//! let _c = world.add_host("client", client, HostOptions::new());
//! let secs = |n| Instant::ZERO + Duration::from_secs(n);
//! world.run_chaos(secs(30)).inspect_err(|_| eprintln!("{}", world.describe()))?;
//! world.heal()?;
//! world.run_until_quiet(secs(90), |w| w.is_up(s))?;
//! println!("trace {:016x}", world.trace_hash());
//! # Ok(()) }
//! ```

pub mod clock;
mod event;
pub mod faults;
pub mod host;
pub mod ids;
pub mod knobs;
pub mod net;
pub mod queue;
pub mod stats;
pub mod trace;
pub mod world;

pub use clock::{ClockSpec, HostClock};
pub use faults::{FaultAction, FaultKind, FaultMix, FaultSchedule, HostFaults};
pub use host::{ConnectFailReason, Host, HostCtx, HostEvent};
pub use ids::{ConnId, HostId, Port};
pub use knobs::{KnobMix, Knobs};
pub use net::{DatagramConfig, LatencyModel, NetConfig, NetError};
pub use stats::SimStats;
pub use trace::{TraceMode, fmt_time};
pub use tunnox_core::time::{Duration, Instant};
pub use world::{Checker, HostOptions, SimError, World, WorldConfig};
