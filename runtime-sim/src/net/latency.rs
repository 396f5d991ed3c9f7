//! One-way latency: a base, uniform jitter and a heavy tail.

use tunnox_core::rng::Rng;
use tunnox_core::time::Duration;

/// Latency of one delivery: `base + U[0, jitter]`, multiplied by `U[2, tail_multiplier_max]` with
/// probability `tail_probability`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// Smallest one-way latency.
    pub base: Duration,
    /// Uniform jitter added on top of `base`.
    pub jitter: Duration,
    /// Probability that a delivery lands in the tail.
    pub tail_probability: f64,
    /// Largest tail multiplier (at least 2).
    pub tail_multiplier_max: u32,
}

impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel {
            base: Duration::from_micros(500),
            jitter: Duration::from_micros(1_000),
            tail_probability: 0.01,
            tail_multiplier_max: 20,
        }
    }
}

impl LatencyModel {
    /// A fixed latency with no jitter and no tail.
    pub fn fixed(latency: Duration) -> LatencyModel {
        LatencyModel {
            base: latency,
            jitter: Duration::ZERO,
            tail_probability: 0.0,
            tail_multiplier_max: 2,
        }
    }

    /// Draws one latency; `heavy_tail` makes the tail ten times as likely.
    pub fn sample(&self, rng: &mut Rng, heavy_tail: bool) -> Duration {
        let base_ns = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX - 1);
        let mut ns = base_ns.saturating_add(if jitter_ns == 0 {
            0
        } else {
            rng.below(jitter_ns + 1)
        });
        let p = if heavy_tail {
            (self.tail_probability * 10.0).min(1.0)
        } else {
            self.tail_probability
        };
        if p > 0.0 && rng.unit_f64() < p {
            let span = u64::from(self.tail_multiplier_max.max(2) - 1);
            ns = ns.saturating_mul(2 + rng.below(span));
        }
        Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_shows_up_at_about_its_probability() {
        let m = LatencyModel {
            base: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            tail_probability: 0.05,
            tail_multiplier_max: 10,
        };
        let mut rng = Rng::seed_from_u64(3);
        let n = 20_000;
        let tail = (0..n)
            .map(|_| m.sample(&mut rng, false))
            .filter(|d| *d > Duration::from_millis(2))
            .count();
        let share = tail as f64 / n as f64;
        assert!((0.04..0.06).contains(&share), "tail share {share}");
        let fixed = LatencyModel::fixed(Duration::from_millis(3));
        assert_eq!(fixed.sample(&mut rng, true), Duration::from_millis(3));
    }
}
