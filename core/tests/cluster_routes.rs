//! Model check of client routes: a client hops between nodes at random; owners renew through a
//! compare-and-set store that is sometimes unreachable and answers late; claims race renewals.
//! After every step: two nodes never both believe they own the client for longer than one lease
//! after the newer claim. A store that skips the epoch check must be caught by the same check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tunnox_core::cluster::{ClientRoute, Ownership, OwnershipEvent, RenewError};
use tunnox_core::control::{ClientId, NodeId, UnixMillis};
use tunnox_core::rng::Rng;
use tunnox_core::time::Duration;

const NODES: usize = 4;
const LEASE: Duration = Duration::from_millis(900);

#[derive(Default, Debug)]
struct Counters {
    claims: u64,
    renewals_ok: u64,
    renewals_refused: u64,
    renewals_unreachable: u64,
    lost_by_lease: u64,
    checks: u64,
    violations: u64,
}

struct World {
    rng: Rng,
    now: UnixMillis,
    nodes: Vec<NodeId>,
    store: Option<ClientRoute>,
    store_up: bool,
    /// Each node's ownership of the client, if it believes it has one.
    owners: Vec<Option<Ownership>>,
    /// Renewals on their way to the store: (node index, route).
    in_flight: Vec<(usize, ClientRoute)>,
    /// When each epoch was claimed.
    claimed_at: Vec<UnixMillis>,
    skip_epoch_check: bool,
    counters: Counters,
}

impl World {
    fn new(seed: u64, skip_epoch_check: bool) -> World {
        World {
            rng: Rng::seed_from_u64(seed),
            now: UnixMillis(1_000_000),
            nodes: (0..NODES)
                .map(|i| NodeId::parse(&format!("node-{i}")).unwrap())
                .collect(),
            store: None,
            store_up: true,
            owners: vec![None; NODES],
            in_flight: Vec::new(),
            claimed_at: vec![UnixMillis(0)],
            skip_epoch_check,
            counters: Counters::default(),
        }
    }

    /// The store's atomic write: compare-and-set by the route rule (unless planted away).
    fn write(&mut self, route: &ClientRoute) -> Result<(), RenewError> {
        if !self.store_up {
            return Err(RenewError::Unavailable);
        }
        if !self.skip_epoch_check {
            route.may_replace(self.store.as_ref())?;
        }
        self.store = Some(route.clone());
        Ok(())
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            // The client connects to some node, which claims it (if the store is reachable).
            0..=4 => {
                let n = self.rng.below(NODES as u64) as usize;
                let route = ClientRoute::claim(
                    self.store.as_ref(),
                    ClientId(1),
                    self.nodes[n].clone(),
                    self.now,
                    LEASE,
                );
                if self.write(&route).is_ok() {
                    self.counters.claims += 1;
                    if self.claimed_at.len() <= route.epoch as usize {
                        self.claimed_at.resize(route.epoch as usize + 1, self.now);
                    }
                    self.claimed_at[route.epoch as usize] = self.now;
                    self.owners[n] = Some(Ownership::new(route, LEASE));
                }
            }
            // Renewal answers arrive, possibly late and out of order.
            5..=44 if !self.in_flight.is_empty() => {
                let i = self.rng.below(self.in_flight.len() as u64) as usize;
                let (n, route) = self.in_flight.swap_remove(i);
                let result = self.write(&route);
                match &result {
                    Ok(()) => self.counters.renewals_ok += 1,
                    Err(RenewError::Conflict(_)) => self.counters.renewals_refused += 1,
                    Err(RenewError::Unavailable) => self.counters.renewals_unreachable += 1,
                }
                if let Some(owner) = self.owners[n].as_mut()
                    && owner.route().epoch == route.epoch
                    && owner.renewed(&route, result) == Some(OwnershipEvent::Lost)
                {
                    self.owners[n] = None;
                }
            }
            45..=49 => self.store_up = !self.store_up,
            _ => {
                self.now = self
                    .now
                    .saturating_add(Duration::from_millis(1 + self.rng.below(120)));
                for n in 0..NODES {
                    let Some(owner) = self.owners[n].as_mut() else {
                        continue;
                    };
                    match owner.handle_timeout(self.now) {
                        Some(OwnershipEvent::Renew(route)) => self.in_flight.push((n, route)),
                        Some(OwnershipEvent::Lost) => {
                            self.counters.lost_by_lease += 1;
                            self.owners[n] = None;
                        }
                        None => {}
                    }
                }
            }
        }
        self.check();
    }

    /// No node that believes it owns the client holds an epoch superseded more than a lease ago.
    fn check(&mut self) {
        self.counters.checks += 1;
        let newest = self.claimed_at.len() as u64 - 1;
        for owner in self.owners.iter().flatten() {
            let epoch = owner.route().epoch;
            if !owner.is_owner(self.now) || epoch >= newest {
                continue;
            }
            let superseded_at = self.claimed_at[epoch as usize + 1];
            if self.now >= superseded_at.saturating_add(LEASE) {
                self.counters.violations += 1;
            }
        }
    }
}

fn run(skip_epoch_check: bool) -> Counters {
    let mut total = Counters::default();
    for seed in 0..200 {
        let mut world = World::new(seed, skip_epoch_check);
        for _ in 0..3_000 {
            world.step();
        }
        let c = world.counters;
        total.claims += c.claims;
        total.renewals_ok += c.renewals_ok;
        total.renewals_refused += c.renewals_refused;
        total.renewals_unreachable += c.renewals_unreachable;
        total.lost_by_lease += c.lost_by_lease;
        total.checks += c.checks;
        total.violations += c.violations;
    }
    total
}

#[test]
fn no_two_owners_outlive_a_lease_under_racing_claims_and_store_outages() {
    let c = run(false);
    eprintln!("{c:?}");
    assert_eq!(c.violations, 0, "{c:?}");
    assert!(c.claims > 10_000 && c.checks > 500_000, "{c:?}");
    assert!(c.renewals_ok > 10_000, "{c:?}");
    assert!(c.renewals_refused > 100, "claims raced renewals: {c:?}");
    assert!(
        c.renewals_unreachable > 1_000 && c.lost_by_lease > 100,
        "{c:?}"
    );
}

#[test]
fn a_store_without_the_epoch_check_is_caught() {
    let c = run(true);
    assert!(c.violations > 0, "the check cannot fail: {c:?}");
}
