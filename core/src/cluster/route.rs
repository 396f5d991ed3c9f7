//! Client routes: which node holds a client's live session.
//!
//! When a session is established, its node *claims* the client: it writes a route with an epoch
//! one above the stored one and a lease. While the session lives the node renews the lease; a
//! renewal is a compare-and-set that succeeds only while the stored route is still its own
//! (same node, same epoch). If the client has since connected elsewhere, the other node's claim
//! raised the epoch, the renewal fails, and the old owner drops its session. An owner that cannot
//! renew at all (cut off from storage) stops believing it owns the client when its lease ends.
//! So two nodes never both believe they own a client for longer than one lease.
//!
//! Other nodes cache routes ([`RouteCache`]), keep the highest epoch they have seen (broker
//! messages may arrive late or twice), and re-read a route from storage when it is missing, its
//! lease has run out, or its node is not alive.

use std::collections::BTreeMap;

use crate::control::{ClientId, NodeId, UnixMillis};
use crate::time::Duration;

/// Where a client's live session is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientRoute {
    /// The client.
    pub client: ClientId,
    /// The node holding its session.
    pub node: NodeId,
    /// Raised by every claim; orders claims of the same client.
    pub epoch: u64,
    /// The claim holds until then unless renewed.
    pub lease_expires_at: UnixMillis,
}

impl ClientRoute {
    /// A claim of `client` by `node` over the stored route `held`: the next epoch, a fresh lease.
    pub fn claim(
        held: Option<&ClientRoute>,
        client: ClientId,
        node: NodeId,
        now: UnixMillis,
        lease: Duration,
    ) -> ClientRoute {
        ClientRoute {
            client,
            node,
            epoch: held.map_or(1, |h| h.epoch + 1),
            lease_expires_at: now.saturating_add(lease),
        }
    }

    /// Whether the lease holds at `now`.
    pub fn is_live(&self, now: UnixMillis) -> bool {
        now < self.lease_expires_at
    }

    /// The store's compare-and-set rule for writing `self` over `held` (applied atomically by
    /// the storage): a claim must raise the epoch; a renewal must be the holder's own route.
    pub fn may_replace(&self, held: Option<&ClientRoute>) -> Result<(), RouteConflict> {
        match held {
            None => Ok(()),
            Some(h) if self.epoch > h.epoch => Ok(()),
            Some(h) if self.epoch == h.epoch && self.node == h.node => Ok(()),
            Some(h) => Err(RouteConflict {
                owner: h.node.clone(),
                epoch: h.epoch,
            }),
        }
    }
}

/// A route write was refused: the stored route belongs to another claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client route held by {owner} at epoch {epoch}")]
pub struct RouteConflict {
    /// The node of the stored route.
    pub owner: NodeId,
    /// Its epoch.
    pub epoch: u64,
}

/// What the owner of a route must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnershipEvent {
    /// Write this renewal (compare-and-set with [`ClientRoute::may_replace`]).
    Renew(ClientRoute),
    /// The claim is lost (another node claimed the client, or the lease ran out unrenewed):
    /// close the client's session here.
    Lost,
}

/// The owner node's side of one route: when to renew, and when it no longer owns the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    route: ClientRoute,
    lease: Duration,
    renewing: bool,
    lost: bool,
}

impl Ownership {
    /// Ownership of the route this node just claimed (and the store accepted).
    pub fn new(route: ClientRoute, lease: Duration) -> Ownership {
        Ownership {
            route,
            lease,
            renewing: false,
            lost: false,
        }
    }

    /// The route as this node last wrote it.
    pub fn route(&self) -> &ClientRoute {
        &self.route
    }

    /// Whether this node may act as the client's owner at `now`.
    pub fn is_owner(&self, now: UnixMillis) -> bool {
        !self.lost && self.route.is_live(now)
    }

    /// When to renew next: a third of the lease before it runs out, so two attempts fit.
    pub fn renew_at(&self) -> UnixMillis {
        UnixMillis(
            self.route
                .lease_expires_at
                .0
                .saturating_sub(millis(self.lease) * 2 / 3),
        )
    }

    /// Time passed: a renewal to write, the loss of an unrenewed lease, or nothing.
    pub fn handle_timeout(&mut self, now: UnixMillis) -> Option<OwnershipEvent> {
        if self.lost {
            return None;
        }
        if !self.route.is_live(now) {
            self.lost = true;
            return Some(OwnershipEvent::Lost);
        }
        if now >= self.renew_at() && !self.renewing {
            self.renewing = true;
            let mut renewal = self.route.clone();
            renewal.lease_expires_at = now.saturating_add(self.lease);
            return Some(OwnershipEvent::Renew(renewal));
        }
        None
    }

    /// The store answered the renewal `written`: accepted, refused (another claim), or not
    /// reached (the next timeout retries until the lease runs out).
    pub fn renewed(
        &mut self,
        written: &ClientRoute,
        result: Result<(), RenewError>,
    ) -> Option<OwnershipEvent> {
        self.renewing = false;
        match result {
            Ok(()) if !self.lost => {
                self.route.lease_expires_at =
                    self.route.lease_expires_at.max(written.lease_expires_at);
                None
            }
            Ok(()) => None,
            Err(RenewError::Conflict(_)) if !self.lost => {
                self.lost = true;
                Some(OwnershipEvent::Lost)
            }
            Err(_) => None,
        }
    }

    /// A newer claim of the client was seen (a broker `client.online`, say).
    pub fn claimed_elsewhere(&mut self, route: &ClientRoute) -> Option<OwnershipEvent> {
        if !self.lost && route.epoch > self.route.epoch {
            self.lost = true;
            return Some(OwnershipEvent::Lost);
        }
        None
    }
}

/// Why a renewal did not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    /// The stored route is another claim's.
    #[error(transparent)]
    Conflict(#[from] RouteConflict),
    /// The store could not be reached.
    #[error("route store unavailable")]
    Unavailable,
}

/// What a cached route lookup says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteLookup {
    /// Use this route.
    Use(ClientRoute),
    /// Missing, expired or pointing at a dead node: read it from storage.
    ReRead,
}

/// A node's cache of other clients' routes.
#[derive(Debug, Clone, Default)]
pub struct RouteCache {
    routes: BTreeMap<ClientId, ClientRoute>,
}

impl RouteCache {
    /// An empty cache.
    pub fn new() -> RouteCache {
        RouteCache::default()
    }

    /// The route to `client` at `now`, given which nodes are alive.
    pub fn lookup(
        &self,
        client: ClientId,
        now: UnixMillis,
        node_alive: impl Fn(&NodeId) -> bool,
    ) -> RouteLookup {
        match self.routes.get(&client) {
            Some(route) if route.is_live(now) && node_alive(&route.node) => {
                RouteLookup::Use(route.clone())
            }
            _ => RouteLookup::ReRead,
        }
    }

    /// A route was read or announced: kept unless an equal or newer epoch is cached (a renewal
    /// of the same epoch extends the lease).
    pub fn observe(&mut self, route: ClientRoute) {
        match self.routes.get_mut(&route.client) {
            Some(held) if held.epoch > route.epoch => {}
            Some(held) if held.epoch == route.epoch => {
                held.lease_expires_at = held.lease_expires_at.max(route.lease_expires_at);
            }
            _ => {
                self.routes.insert(route.client, route);
            }
        }
    }

    /// The client went offline at `node` in `epoch`: forget that route (not a newer one).
    pub fn offline(&mut self, client: ClientId, node: &NodeId, epoch: u64) {
        if self
            .routes
            .get(&client)
            .is_some_and(|r| &r.node == node && r.epoch <= epoch)
        {
            self.routes.remove(&client);
        }
    }

    /// Forgets every route to `node` (it shut down or its lease ran out).
    pub fn node_gone(&mut self, node: &NodeId) {
        self.routes.retain(|_, r| &r.node != node);
    }

    /// Routes cached.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether none is cached.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::parse(name).unwrap()
    }

    const LEASE: Duration = Duration::from_secs(9);

    #[test]
    fn claims_raise_the_epoch_and_only_the_holder_renews() {
        let first = ClientRoute::claim(None, ClientId(7), node("a"), UnixMillis(0), LEASE);
        assert_eq!(first.epoch, 1);
        assert_eq!(first.may_replace(None), Ok(()));
        let second = ClientRoute::claim(Some(&first), ClientId(7), node("b"), UnixMillis(5), LEASE);
        assert_eq!(second.epoch, 2);
        assert_eq!(second.may_replace(Some(&first)), Ok(()));
        // a's renewal after b's claim is refused, naming b.
        let mut renewal = first.clone();
        renewal.lease_expires_at = UnixMillis(20_000);
        assert_eq!(
            renewal.may_replace(Some(&second)),
            Err(RouteConflict {
                owner: node("b"),
                epoch: 2
            })
        );
        // b's own renewal goes through.
        let mut b_renewal = second.clone();
        b_renewal.lease_expires_at = UnixMillis(30_000);
        assert_eq!(b_renewal.may_replace(Some(&second)), Ok(()));
    }

    #[test]
    fn an_owner_renews_before_its_lease_ends_and_loses_it_unrenewed() {
        let route = ClientRoute::claim(None, ClientId(1), node("a"), UnixMillis(0), LEASE);
        let mut owner = Ownership::new(route, LEASE);
        assert_eq!(owner.renew_at(), UnixMillis(3_000));
        assert_eq!(owner.handle_timeout(UnixMillis(2_999)), None);
        let Some(OwnershipEvent::Renew(renewal)) = owner.handle_timeout(UnixMillis(3_000)) else {
            panic!("a renewal is due");
        };
        assert_eq!(renewal.lease_expires_at, UnixMillis(12_000));
        // The store is unreachable: still owner until the old lease ends, then lost.
        assert_eq!(owner.renewed(&renewal, Err(RenewError::Unavailable)), None);
        assert!(owner.is_owner(UnixMillis(8_999)));
        let Some(OwnershipEvent::Renew(retry)) = owner.handle_timeout(UnixMillis(8_000)) else {
            panic!("retried");
        };
        assert_eq!(owner.renewed(&retry, Err(RenewError::Unavailable)), None);
        assert_eq!(
            owner.handle_timeout(UnixMillis(9_000)),
            Some(OwnershipEvent::Lost)
        );
        assert!(!owner.is_owner(UnixMillis(9_000)));
    }

    #[test]
    fn a_refused_renewal_or_a_newer_claim_loses_ownership_at_once() {
        let route = ClientRoute::claim(None, ClientId(1), node("a"), UnixMillis(0), LEASE);
        let mut owner = Ownership::new(route.clone(), LEASE);
        let Some(OwnershipEvent::Renew(renewal)) = owner.handle_timeout(UnixMillis(3_000)) else {
            panic!("a renewal is due");
        };
        let conflict = RouteConflict {
            owner: node("b"),
            epoch: 2,
        };
        assert_eq!(
            owner.renewed(&renewal, Err(conflict.into())),
            Some(OwnershipEvent::Lost)
        );
        assert!(!owner.is_owner(UnixMillis(3_001)));
        let mut other = Ownership::new(route.clone(), LEASE);
        let newer = ClientRoute::claim(Some(&route), ClientId(1), node("b"), UnixMillis(1), LEASE);
        assert_eq!(
            other.claimed_elsewhere(&route),
            None,
            "same epoch is not newer"
        );
        assert_eq!(other.claimed_elsewhere(&newer), Some(OwnershipEvent::Lost));
        assert_eq!(other.claimed_elsewhere(&newer), None, "lost once");
    }

    #[test]
    fn the_cache_keeps_the_newest_epoch_and_re_reads_stale_routes() {
        let mut cache = RouteCache::new();
        let a = ClientRoute::claim(None, ClientId(1), node("a"), UnixMillis(0), LEASE);
        let b = ClientRoute::claim(Some(&a), ClientId(1), node("b"), UnixMillis(10), LEASE);
        cache.observe(b.clone());
        cache.observe(a.clone()); // late message: ignored
        let alive = |_: &NodeId| true;
        assert_eq!(
            cache.lookup(ClientId(1), UnixMillis(100), alive),
            RouteLookup::Use(b.clone())
        );
        // Expired lease, dead node, unknown client: re-read.
        assert_eq!(
            cache.lookup(ClientId(1), UnixMillis(9_010), alive),
            RouteLookup::ReRead
        );
        assert_eq!(
            cache.lookup(ClientId(1), UnixMillis(100), |n| n != &node("b")),
            RouteLookup::ReRead
        );
        assert_eq!(
            cache.lookup(ClientId(2), UnixMillis(100), alive),
            RouteLookup::ReRead
        );
        // Offline for the old epoch does not remove the newer route; for its own epoch it does.
        cache.offline(ClientId(1), &node("a"), 1);
        assert_eq!(cache.len(), 1);
        cache.offline(ClientId(1), &node("b"), 2);
        assert!(cache.is_empty());
        cache.observe(b);
        cache.node_gone(&node("b"));
        assert!(cache.is_empty());
    }
}
