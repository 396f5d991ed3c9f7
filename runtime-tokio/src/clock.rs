//! The bridge between tokio's clock and the core's `Instant`.

use tunnox_core::control::UnixMillis;
use tunnox_core::time::Instant;

/// Converts between tokio time and the core's nanoseconds-since-start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// The core's `now`.
    pub fn now(&self) -> Instant {
        let nanos = self.origin.elapsed().as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The tokio instant of a core deadline.
    pub fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_nanos(at.as_nanos())
    }
}

/// Wall-clock time now, for expiry of mappings and codes.
pub fn wall_now() -> UnixMillis {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    UnixMillis(millis)
}

/// A [`Clock`] that also converts the core's instants to and from wall-clock unix milliseconds,
/// for times shared with other processes (cache entries in Redis).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    clock: Clock,
    /// Wall-clock time at the clock's origin.
    origin_unix_ms: u64,
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

/// Nanoseconds in a millisecond.
const NANOS_PER_MS: u64 = 1_000_000;

impl WallClock {
    /// A clock whose origin is now.
    pub fn new() -> WallClock {
        WallClock {
            clock: Clock::new(),
            origin_unix_ms: wall_now().0,
        }
    }

    /// The core's `now`.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// `at` as unix milliseconds (rounded down).
    pub fn to_unix_ms(&self, at: Instant) -> u64 {
        self.origin_unix_ms
            .saturating_add(at.as_nanos() / NANOS_PER_MS)
    }

    /// Unix milliseconds `unix_ms` as a core instant (times before the origin become the origin).
    pub fn from_unix_ms(&self, unix_ms: u64) -> Instant {
        let since_origin_ms = unix_ms.saturating_sub(self.origin_unix_ms);
        Instant::from_nanos(since_origin_ms.saturating_mul(NANOS_PER_MS))
    }
}
