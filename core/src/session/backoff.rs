//! Reconnect delays: exponential backoff with jitter drawn from the injected RNG.

use crate::rng::Rng;
use crate::time::Duration;

/// How reconnect delays grow.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth factor per failed attempt (≥ 1).
    pub multiplier: f64,
    /// Fraction of the delay randomised either way (0 = none, 0.3 = ±30 %), in `0.0..=1.0`.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.3,
        }
    }
}

/// Produces successive reconnect delays; reset after a successful session.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    /// A backoff starting at attempt 0.
    pub fn new(config: BackoffConfig, rng: Rng) -> Backoff {
        Backoff {
            config,
            attempt: 0,
            rng,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The un-jittered delay for the current attempt.
    pub fn base_delay(&self) -> Duration {
        let factor = self
            .config
            .multiplier
            .max(1.0)
            .powi(self.attempt.min(64) as i32);
        let secs = (self.config.initial.as_secs_f64() * factor).min(self.config.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// The delay before the next attempt; counts the attempt. Always within
    /// `base × (1 ± jitter)` and never above `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base_delay().as_secs_f64();
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter + 2.0 * jitter * self.rng.unit_f64();
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs_f64((base * factor).min(self.config.max.as_secs_f64()))
    }

    /// Starts over after a session was established.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_jitter_bounds_and_cap() {
        let config = BackoffConfig::default();
        let mut backoff = Backoff::new(config.clone(), Rng::seed_from_u64(1));
        let mut base = 0.2;
        for attempt in 0..20 {
            let d = backoff.next_delay().as_secs_f64();
            let expected = f64::min(base, 60.0);
            assert!(
                d >= expected * 0.7 - 1e-9,
                "attempt {attempt}: {d} < {expected}*0.7"
            );
            assert!(
                d <= f64::min(expected * 1.3, 60.0) + 1e-9,
                "attempt {attempt}: {d}"
            );
            base *= 2.0;
        }
        assert_eq!(backoff.attempt(), 20);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(260));
    }

    #[test]
    fn jitter_is_deterministic_per_seed_and_varies_across_seeds() {
        let run = |seed| {
            let mut b = Backoff::new(BackoffConfig::default(), Rng::seed_from_u64(seed));
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        // Jitter actually spreads delays: not all equal to the base.
        let delays = run(7);
        assert!(delays.iter().any(|d| *d != Duration::from_millis(200)));
    }

    #[test]
    fn zero_jitter_is_exact() {
        let config = BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        };
        let mut b = Backoff::new(config, Rng::seed_from_u64(0));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(400));
        assert_eq!(b.next_delay(), Duration::from_millis(800));
    }
}
