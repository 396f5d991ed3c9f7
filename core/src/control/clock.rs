//! Wall-clock time for expiry, TTLs and leases: milliseconds since the Unix epoch, handed in by the
//! caller.
//!
//! The monotonic [`crate::time::Instant`] drives timers inside one process; records that are stored
//! and compared across nodes (mapping expiry, code deadlines, node leases) need wall time instead.
//! The core never reads it: whoever calls in passes `now`.

use core::fmt;

use crate::time::Duration;

/// A wall-clock instant in milliseconds since the Unix epoch (UTC), supplied by the caller.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The Unix epoch.
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, dropping sub-millisecond parts and saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> UnixMillis {
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_add(millis))
    }

    /// `self - d`, dropping sub-millisecond parts and saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> UnixMillis {
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_sub(millis))
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for UnixMillis {
    /// The raw count with its unit, e.g. `1700000000000ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Serde for a `Duration` as a whole number of milliseconds (sub-millisecond parts dropped).
pub(crate) mod duration_millis {
    use crate::time::Duration;

    /// Writes `d` as milliseconds.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds into a `Duration`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let millis = <u64 as serde::Deserialize>::deserialize(d)?;
        Ok(Duration::from_millis(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_truncates_to_millis() {
        let t = UnixMillis(1_000);
        assert_eq!(
            t.saturating_add(Duration::from_millis(5)),
            UnixMillis(1_005)
        );
        assert_eq!(
            t.saturating_add(Duration::from_micros(1_999)),
            UnixMillis(1_001)
        );
        assert_eq!(
            UnixMillis(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
            UnixMillis(u64::MAX)
        );
        assert_eq!(t.saturating_add(Duration::MAX), UnixMillis(u64::MAX));
        assert_eq!(t.saturating_sub(Duration::from_secs(2)), UnixMillis::EPOCH);
        assert_eq!(
            t.saturating_duration_since(UnixMillis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(UnixMillis(400).saturating_duration_since(t), Duration::ZERO);
        assert!(UnixMillis(1) < UnixMillis(2));
        assert_eq!(t.to_string(), "1000ms");
    }
}
