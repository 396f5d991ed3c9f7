//! Host-local clocks: an offset, forward jumps and a drift rate over global virtual time.
//!
//! `local(g) = base_local + (g - base_global) * (1e6 + drift_ppm) / 1e6`, rounded down. Every
//! change (jump, new drift) rebases at the current global time, so the clock is piecewise linear,
//! strictly increasing in rate and never goes backwards.

use std::fmt;
use tunnox_core::time::{Duration, Instant};

/// Largest drift magnitude accepted, in parts per million (clamped beyond).
pub const DRIFT_PPM_MAX: i32 = 500_000;

const PPM: u128 = 1_000_000;

/// How a host's clock starts: its reading at global time zero and its drift rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockSpec {
    /// Local reading at global time zero, in nanoseconds.
    pub offset_ns: u64,
    /// Rate error in parts per million (positive runs fast).
    pub drift_ppm: i32,
}

/// A host's local clock as a function of global virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostClock {
    base_global: Instant,
    base_local: Instant,
    drift_ppm: i32,
}

impl HostClock {
    /// A clock reading `spec.offset_ns` at global zero and drifting at `spec.drift_ppm`.
    pub fn new(spec: ClockSpec) -> HostClock {
        HostClock {
            base_global: Instant::ZERO,
            base_local: Instant::from_nanos(spec.offset_ns),
            drift_ppm: spec.drift_ppm.clamp(-DRIFT_PPM_MAX, DRIFT_PPM_MAX),
        }
    }

    /// The current drift rate in parts per million.
    pub fn drift_ppm(&self) -> i32 {
        self.drift_ppm
    }

    fn rate(&self) -> u128 {
        // Clamped to ±50%, so the rate is always positive.
        (PPM as i128 + i128::from(self.drift_ppm)) as u128
    }

    /// The local reading at global time `global` (at or after the last change).
    pub fn local_at(&self, global: Instant) -> Instant {
        let elapsed = u128::from(
            global
                .as_nanos()
                .saturating_sub(self.base_global.as_nanos()),
        );
        let scaled = elapsed * self.rate() / PPM;
        let nanos = u64::try_from(scaled).unwrap_or(u64::MAX);
        Instant::from_nanos(self.base_local.as_nanos().saturating_add(nanos))
    }

    /// The earliest global time at or after `not_before` whose local reading is ≥ `local`.
    pub fn global_for_local(&self, local: Instant, not_before: Instant) -> Instant {
        if self.local_at(not_before) >= local {
            return not_before;
        }
        let ahead = u128::from(local.as_nanos().saturating_sub(self.base_local.as_nanos()));
        // Round up so the timer never lands before its local deadline.
        let elapsed = (ahead * PPM).div_ceil(self.rate());
        let nanos = u64::try_from(elapsed).unwrap_or(u64::MAX);
        let mut global = Instant::from_nanos(self.base_global.as_nanos().saturating_add(nanos));
        while self.local_at(global) < local && global.as_nanos() < u64::MAX {
            global = global + Duration::from_nanos(1);
        }
        global.max(not_before)
    }

    /// Jumps the clock forward by `jump` at global time `now`.
    pub fn jump(&mut self, now: Instant, jump: Duration) {
        let local = self.local_at(now);
        self.base_global = now;
        self.base_local = local + jump;
    }

    /// Changes the drift rate from global time `now` on (clamped to ±[`DRIFT_PPM_MAX`]).
    pub fn set_drift(&mut self, now: Instant, drift_ppm: i32) {
        let local = self.local_at(now);
        self.base_global = now;
        self.base_local = local;
        self.drift_ppm = drift_ppm.clamp(-DRIFT_PPM_MAX, DRIFT_PPM_MAX);
    }
}

impl fmt::Display for HostClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "local {} ns at global {} ns, drift {} ppm",
            self.base_local.as_nanos(),
            self.base_global.as_nanos(),
            self.drift_ppm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_for_local_never_early_and_tight() {
        for drift in [-499_999, -300, -1, 0, 1, 7, 250, 499_999] {
            let mut clock = HostClock::new(ClockSpec {
                offset_ns: 12_345,
                drift_ppm: drift,
            });
            clock.jump(Instant::from_nanos(1_000), Duration::from_nanos(333));
            for local in [0u64, 12_345, 99_999, 1_000_003, 7_777_777_777] {
                let local = Instant::from_nanos(local);
                let g = clock.global_for_local(local, Instant::from_nanos(1_000));
                assert!(clock.local_at(g) >= local, "drift {drift} local {local:?}");
                if g > Instant::from_nanos(1_000) {
                    let before = Instant::from_nanos(g.as_nanos() - 1);
                    assert!(clock.local_at(before) < local, "not the earliest");
                }
            }
        }
    }

    #[test]
    fn changes_never_move_backwards() {
        let mut clock = HostClock::new(ClockSpec {
            offset_ns: 0,
            drift_ppm: 400_000,
        });
        let t = Instant::from_nanos(1_000_000);
        let before = clock.local_at(t);
        clock.set_drift(t, -400_000);
        assert_eq!(clock.local_at(t), before);
        assert!(clock.local_at(t + Duration::from_nanos(10)) > before);
    }
}
