//! The node's handshake guard: a per-address rate limit on new connections, and a lockout of a
//! client id *from one address* after repeated failed proofs.
//!
//! The lockout is per (client, address) so that an attacker cannot lock a client out from
//! everywhere by failing proofs in its name; the per-address rate limit bounds how many
//! attempts any one address gets. Memory is bounded: at most `tracked_max` addresses and
//! `tracked_max` (client, address) pairs are remembered; past that the entries seen longest ago
//! are forgotten first.

use core::net::IpAddr;
use std::collections::BTreeMap;

use crate::control::ClientId;
use crate::ratelimit::{KeyedRateLimit, forget_oldest};
use crate::time::{Duration, Instant};

/// Limits of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// New connections one address may open at once (the bucket's size).
    pub handshake_burst: u32,
    /// New connections one address gains per second.
    pub handshakes_per_sec: u32,
    /// Failed proofs for one client from one address before it is locked out.
    pub failed_proofs_max: u32,
    /// Failures older than this are forgotten.
    pub failure_window: Duration,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Most addresses and (client, address) pairs remembered.
    pub tracked_max: usize,
}

impl Default for GuardConfig {
    fn default() -> GuardConfig {
        GuardConfig {
            handshake_burst: 64,
            handshakes_per_sec: 16,
            failed_proofs_max: 5,
            failure_window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
            tracked_max: 16_384,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Connections refused by the rate limit.
    pub rate_limited: u64,
    /// Logins refused because of a lockout.
    pub locked_out: u64,
    /// Lockouts started.
    pub lockouts: u64,
}

/// The guard (see the module docs).
#[derive(Debug)]
pub struct HandshakeGuard {
    config: GuardConfig,
    connections: KeyedRateLimit<IpAddr>,
    failures: BTreeMap<(ClientId, IpAddr), Failures>,
    stats: GuardStats,
}

impl HandshakeGuard {
    /// A guard with `config`.
    pub fn new(config: GuardConfig) -> HandshakeGuard {
        HandshakeGuard {
            connections: KeyedRateLimit::new(
                config.handshake_burst,
                config.handshakes_per_sec,
                config.tracked_max,
            ),
            config,
            failures: BTreeMap::new(),
            stats: GuardStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &GuardStats {
        &self.stats
    }

    /// A new connection from `addr`: allowed, or refused with when to retry.
    pub fn admit(&mut self, now: Instant, addr: IpAddr) -> Result<(), Duration> {
        let admitted = self.connections.admit(now, &addr);
        if admitted.is_err() {
            self.stats.rate_limited += 1;
        }
        admitted
    }

    /// Whether `client` may try to log in from `addr` now (`Err`: locked out, retry after).
    pub fn may_log_in(
        &mut self,
        now: Instant,
        client: ClientId,
        addr: IpAddr,
    ) -> Result<(), Duration> {
        match self
            .failures
            .get(&(client, addr))
            .and_then(|f| f.locked_until)
        {
            Some(until) if until > now => {
                self.stats.locked_out += 1;
                Err(until.saturating_duration_since(now))
            }
            Some(_) => {
                self.failures.remove(&(client, addr));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `client` failed its proof from `addr`.
    pub fn proof_failed(&mut self, now: Instant, client: ClientId, addr: IpAddr) {
        let key = (client, addr);
        if !self.failures.contains_key(&key) && self.failures.len() >= self.config.tracked_max {
            forget_oldest(&mut self.failures, |f| f.first);
        }
        let window = self.config.failure_window;
        let entry = self.failures.entry(key).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.first) > window {
            *entry = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= self.config.failed_proofs_max && entry.locked_until.is_none() {
            entry.locked_until = Some(now + self.config.lockout);
            self.stats.lockouts += 1;
        }
    }

    /// `client` proved itself from `addr`: its failures there are forgotten.
    pub fn proof_succeeded(&mut self, client: ClientId, addr: IpAddr) {
        self.failures.remove(&(client, addr));
    }

    /// Entries remembered (addresses, pairs).
    pub fn tracked(&self) -> (usize, usize) {
        (self.connections.tracked(), self.failures.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn an_address_gets_its_burst_then_the_refill_rate() {
        let mut g = HandshakeGuard::new(GuardConfig {
            handshake_burst: 3,
            handshakes_per_sec: 2,
            ..GuardConfig::default()
        });
        for _ in 0..3 {
            assert!(g.admit(at(0), ip(1)).is_ok());
        }
        let retry = g.admit(at(0), ip(1)).unwrap_err();
        assert_eq!(retry, Duration::from_millis(500));
        assert!(
            g.admit(at(0), ip(2)).is_ok(),
            "other addresses are not affected"
        );
        assert!(g.admit(at(499), ip(1)).is_err());
        assert!(
            g.admit(at(1000), ip(1)).is_ok(),
            "refilled after half a second"
        );
        assert_eq!(g.stats().rate_limited, 2);
    }

    #[test]
    fn repeated_failed_proofs_lock_out_that_client_from_that_address_only() {
        let mut g = HandshakeGuard::new(GuardConfig {
            failed_proofs_max: 3,
            lockout: Duration::from_secs(60),
            ..GuardConfig::default()
        });
        let c = ClientId(7);
        for t in 0..3 {
            assert!(g.may_log_in(at(t), c, ip(1)).is_ok());
            g.proof_failed(at(t), c, ip(1));
        }
        let retry = g.may_log_in(at(10), c, ip(1)).unwrap_err();
        assert!(retry > Duration::from_secs(59));
        assert!(
            g.may_log_in(at(10), c, ip(2)).is_ok(),
            "not from another address"
        );
        assert!(
            g.may_log_in(at(10), ClientId(8), ip(1)).is_ok(),
            "not another client"
        );
        assert!(
            g.may_log_in(at(60_003), c, ip(1)).is_ok(),
            "the lockout ends"
        );
        assert_eq!(g.stats().lockouts, 1);
        // Failures spread beyond the window do not add up; a success forgets them.
        let mut g = HandshakeGuard::new(GuardConfig {
            failed_proofs_max: 2,
            failure_window: Duration::from_secs(10),
            ..GuardConfig::default()
        });
        g.proof_failed(at(0), c, ip(1));
        g.proof_failed(at(20_000), c, ip(1));
        assert!(g.may_log_in(at(20_001), c, ip(1)).is_ok());
        g.proof_succeeded(c, ip(1));
        g.proof_failed(at(20_002), c, ip(1));
        assert!(g.may_log_in(at(20_003), c, ip(1)).is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let mut g = HandshakeGuard::new(GuardConfig {
            tracked_max: 100,
            ..GuardConfig::default()
        });
        for i in 0..10_000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            let _ = g.admit(at(u64::from(i)), addr);
            g.proof_failed(at(u64::from(i)), ClientId(u64::from(i)), addr);
        }
        assert_eq!(g.tracked(), (100, 100));
    }
}
