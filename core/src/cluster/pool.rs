//! The bridge pool: how many links a node keeps to each peer node, and which link a new
//! cross-node stream takes.
//!
//! A *link* is one authenticated session between two nodes (see `ClientIdentity::Peer`); many
//! tunnel streams share it, each with the mux's credit-based flow control. Links in either
//! direction count: a link node A dialled to B carries streams both ways. The pool keeps at least
//! `links_min` links (established or being dialled) to every peer that is a member, picks the
//! least-loaded link for a new stream, asks for one more link while every link is past
//! `grow_at_streams` (up to `links_max`), refuses a stream only when every link is full, closes
//! links beyond the minimum that carried nothing for `idle_timeout`, and redials a failed peer
//! with exponential backoff and jitter. Health is the session's: heartbeats both ways close a
//! link whose peer is silent for the timeout, and the pool then dials again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::control::NodeId;
use crate::rng::Rng;
use crate::session::{Backoff, BackoffConfig};
use crate::time::{Duration, Instant};

/// Identifies a link: the runtime's connection id.
pub type LinkId = u64;

/// Limits of the bridge pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Links kept to every member peer, idle or not.
    pub links_min: u32,
    /// Most links to one peer.
    pub links_max: u32,
    /// Most streams on one link.
    pub streams_per_link_max: u32,
    /// Once every link carries this many streams, another link is dialled.
    pub grow_at_streams: u32,
    /// A link beyond the minimum that carried no stream this long is closed.
    pub idle_timeout: Duration,
    /// Redial pacing after failures.
    pub redial: BackoffConfig,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            links_min: 1,
            links_max: 4,
            streams_per_link_max: 4096,
            grow_at_streams: 3072,
            idle_timeout: Duration::from_secs(60),
            redial: BackoffConfig::default(),
        }
    }
}

/// Something the runtime must do for the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// Open a new link to `peer` (report `link_established` or `dial_failed`).
    Dial {
        /// The peer node.
        peer: NodeId,
    },
    /// Close this link: gracefully (drain) when it is idle beyond the minimum, at once when its
    /// peer left the cluster.
    Close {
        /// The link.
        link: LinkId,
        /// Close at once, resetting its streams (the peer is gone).
        abort: bool,
    },
}

#[derive(Debug)]
struct Peer {
    member: bool,
    links: BTreeSet<LinkId>,
    dialing: u32,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct Link {
    peer: NodeId,
    idle_since: Option<Instant>,
    /// A `Close` was asked for; it no longer counts and is not asked for again.
    closing: bool,
}

/// Counters, for metrics and simulation coverage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Dials asked for.
    pub dials: u64,
    /// Dials that failed.
    pub dial_failures: u64,
    /// Links established (either direction).
    pub links_established: u64,
    /// Links closed for being idle.
    pub idle_closed: u64,
    /// Streams refused because every link to the peer was full or none was up.
    pub no_link: u64,
}

/// The pool (see the module docs).
#[derive(Debug)]
pub struct BridgePool {
    config: PoolConfig,
    rng: Rng,
    peers: BTreeMap<NodeId, Peer>,
    links: BTreeMap<LinkId, Link>,
    next_idle_check: Option<Instant>,
    actions: VecDeque<PoolAction>,
    stats: PoolStats,
}

impl BridgePool {
    /// An empty pool; `rng` jitters redials.
    pub fn new(config: PoolConfig, rng: Rng) -> BridgePool {
        BridgePool {
            config,
            rng,
            peers: BTreeMap::new(),
            links: BTreeMap::new(),
            next_idle_check: None,
            actions: VecDeque::new(),
            stats: PoolStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// The established links to `peer`.
    pub fn links_to(&self, peer: &NodeId) -> impl Iterator<Item = LinkId> + '_ {
        self.peers
            .get(peer)
            .into_iter()
            .flat_map(|p| p.links.iter().copied())
    }

    /// The peer a link leads to.
    pub fn peer_of(&self, link: LinkId) -> Option<&NodeId> {
        self.links.get(&link).map(|l| &l.peer)
    }

    /// The limits this pool keeps.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Every peer the pool knows: members, and former members whose links are still closing.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }

    /// Peers that are members now.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.member)
            .map(|(id, _)| id)
    }

    /// Whether `peer` is a member now.
    pub fn is_member(&self, peer: &NodeId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.member)
    }

    fn peer_mut(&mut self, peer: &NodeId) -> &mut Peer {
        if !self.peers.contains_key(peer) {
            let backoff = Backoff::new(self.config.redial.clone(), self.rng.fork());
            self.peers.insert(
                peer.clone(),
                Peer {
                    member: false,
                    links: BTreeSet::new(),
                    dialing: 0,
                    backoff,
                    retry_at: None,
                },
            );
        }
        self.peers
            .get_mut(peer)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// `peer` is a live member of the cluster: keep links to it.
    pub fn peer_up(&mut self, now: Instant, peer: &NodeId) {
        self.peer_mut(peer).member = true;
        self.top_up(now, peer);
    }

    /// `peer` left (shut down, or its lease ran out): close its links, dial it no more.
    pub fn peer_down(&mut self, peer: &NodeId) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.member = crate::planted::active(crate::planted::PlantedBug::PoolRedialsDepartedPeer);
        p.retry_at = None;
        for link in &p.links {
            if let Some(l) = self.links.get_mut(link)
                && !l.closing
            {
                l.closing = true;
                self.actions.push_back(PoolAction::Close {
                    link: *link,
                    abort: true,
                });
            }
        }
    }

    /// A dial the pool asked for failed.
    pub fn dial_failed(&mut self, now: Instant, peer: &NodeId) {
        self.stats.dial_failures += 1;
        let p = self.peer_mut(peer);
        p.dialing = p.dialing.saturating_sub(1);
        let delay = p.backoff.next_delay();
        p.retry_at = Some(now + delay);
    }

    /// A link to `peer` is authenticated and live; `dialled` if this node dialled it.
    pub fn link_established(&mut self, now: Instant, link: LinkId, peer: &NodeId, dialled: bool) {
        self.stats.links_established += 1;
        let p = self.peer_mut(peer);
        if dialled {
            p.dialing = p.dialing.saturating_sub(1);
            p.backoff.reset();
            p.retry_at = None;
        }
        p.links.insert(link);
        self.links.insert(
            link,
            Link {
                peer: peer.clone(),
                idle_since: None,
                closing: false,
            },
        );
        if self.next_idle_check.is_none() {
            self.next_idle_check = Some(now + self.idle_check_interval());
        }
    }

    /// A dial this node started ended before the link was established (refused, or the
    /// connection broke during the handshake).
    pub fn dial_abandoned(&mut self, now: Instant, peer: &NodeId) {
        self.dial_failed(now, peer);
    }

    /// A link closed (either side, any reason). Returns its peer.
    pub fn link_closed(&mut self, now: Instant, link: LinkId) -> Option<NodeId> {
        let gone = self.links.remove(&link)?;
        if let Some(p) = self.peers.get_mut(&gone.peer) {
            p.links.remove(&link);
        }
        self.top_up(now, &gone.peer);
        Some(gone.peer)
    }

    /// The link a new stream to `peer` should take: the least loaded one with room.
    /// `streams(link)` tells how many streams a link carries now. Asks for another link when
    /// every link is past `grow_at_streams`.
    pub fn pick(
        &mut self,
        now: Instant,
        peer: &NodeId,
        streams: impl Fn(LinkId) -> u32,
    ) -> Option<LinkId> {
        let best = self
            .links_to(peer)
            .filter(|l| self.links.get(l).is_some_and(|l| !l.closing))
            .map(|l| (streams(l), l))
            .filter(|(n, _)| *n < self.config.streams_per_link_max)
            .min();
        let all_busy = best.is_none_or(|(n, _)| n >= self.config.grow_at_streams);
        if all_busy {
            self.grow(now, peer);
        }
        if best.is_none() {
            self.stats.no_link += 1;
        }
        best.map(|(_, l)| l)
    }

    /// One more link to `peer` if the maximum allows and none is being dialled already.
    fn grow(&mut self, now: Instant, peer: &NodeId) {
        let max = self.config.links_max;
        let p = self.peer_mut(peer);
        let held = p.links.len() as u32 + p.dialing;
        let waiting = p.retry_at.is_some_and(|at| at > now);
        if p.member && p.dialing == 0 && held < max && !waiting {
            p.dialing += 1;
            p.retry_at = None;
            self.stats.dials += 1;
            self.actions
                .push_back(PoolAction::Dial { peer: peer.clone() });
        }
    }

    /// Dials until `peer` has `links_min` links established or being dialled.
    fn top_up(&mut self, now: Instant, peer: &NodeId) {
        let min = self.config.links_min;
        let p = self.peer_mut(peer);
        if !p.member {
            // A departed peer is not redialled, and its redial timer (a dial that failed after
            // it left) must not stay due forever.
            p.retry_at = None;
            return;
        }
        if p.retry_at.is_some_and(|at| at > now) {
            return;
        }
        p.retry_at = None;
        let mut dials = 0;
        while p.links.len() as u32 + p.dialing < min {
            p.dialing += 1;
            dials += 1;
        }
        for _ in 0..dials {
            self.stats.dials += 1;
            self.actions
                .push_back(PoolAction::Dial { peer: peer.clone() });
        }
    }

    fn idle_check_interval(&self) -> Duration {
        (self.config.idle_timeout / 2).max(Duration::from_millis(1))
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.peers.values().filter_map(|p| p.retry_at).min();
        crate::time::earliest(retry, self.next_idle_check)
    }

    /// Redials peers whose backoff ran out and closes idle links beyond the minimum.
    pub fn handle_timeout(&mut self, now: Instant, streams: impl Fn(LinkId) -> u32) {
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for peer in due {
            self.top_up(now, &peer);
        }
        if self.next_idle_check.is_some_and(|at| at <= now) {
            self.reap_idle(now, &streams);
            self.next_idle_check =
                (!self.links.is_empty()).then(|| now + self.idle_check_interval());
        }
    }

    fn reap_idle(&mut self, now: Instant, streams: &impl Fn(LinkId) -> u32) {
        let min = self.config.links_min as usize;
        let idle_timeout = self.config.idle_timeout;
        for p in self.peers.values() {
            let mut kept = p
                .links
                .iter()
                .filter(|l| self.links.get(l).is_some_and(|l| !l.closing))
                .count();
            for link in p.links.iter().rev() {
                let Some(l) = self.links.get_mut(link) else {
                    continue;
                };
                if l.closing {
                    continue;
                }
                if streams(*link) > 0 {
                    l.idle_since = None;
                    continue;
                }
                let since = *l.idle_since.get_or_insert(now);
                if kept > min && now.saturating_duration_since(since) >= idle_timeout {
                    kept -= 1;
                    l.closing = true;
                    self.stats.idle_closed += 1;
                    self.actions.push_back(PoolAction::Close {
                        link: *link,
                        abort: false,
                    });
                }
            }
        }
    }

    /// The next action for the runtime.
    pub fn poll_action(&mut self) -> Option<PoolAction> {
        self.actions.pop_front()
    }

    /// Checks the pool's bookkeeping.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, p) in &self.peers {
            if p.links.len() as u32 > self.config.links_max.max(self.config.links_min) * 2 {
                return Err(format!(
                    "{} links to {id}, above twice the maximum",
                    p.links.len()
                ));
            }
            for link in &p.links {
                if self.links.get(link).map(|l| &l.peer) != Some(id) {
                    return Err(format!(
                        "link {link} listed under {id} but not indexed to it"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn pool(config: PoolConfig) -> BridgePool {
        BridgePool::new(config, Rng::seed_from_u64(7))
    }

    fn actions(pool: &mut BridgePool) -> Vec<PoolAction> {
        std::iter::from_fn(|| pool.poll_action()).collect()
    }

    #[test]
    fn a_member_gets_its_minimum_links_and_is_redialled_after_a_failure() {
        let mut p = pool(PoolConfig {
            links_min: 2,
            ..PoolConfig::default()
        });
        let t0 = Instant::ZERO;
        p.peer_up(t0, &node("b"));
        assert_eq!(
            actions(&mut p),
            vec![PoolAction::Dial { peer: node("b") }; 2]
        );
        p.link_established(t0, 10, &node("b"), true);
        p.dial_failed(t0, &node("b"));
        assert!(actions(&mut p).is_empty(), "no redial before the backoff");
        let at = p.poll_timeout().unwrap();
        assert!(at > t0);
        p.handle_timeout(at, |_| 0);
        assert_eq!(actions(&mut p), vec![PoolAction::Dial { peer: node("b") }]);
        assert_eq!(p.stats().dial_failures, 1);
    }

    #[test]
    fn streams_take_the_least_loaded_link_and_busy_links_grow_the_pool() {
        let mut p = pool(PoolConfig {
            streams_per_link_max: 10,
            grow_at_streams: 8,
            links_max: 2,
            ..PoolConfig::default()
        });
        let t0 = Instant::ZERO;
        p.peer_up(t0, &node("b"));
        actions(&mut p);
        p.link_established(t0, 1, &node("b"), true);
        p.link_established(t0, 2, &node("b"), false);
        let load = |l: LinkId| if l == 1 { 5 } else { 3 };
        assert_eq!(p.pick(t0, &node("b"), load), Some(2));
        assert!(actions(&mut p).is_empty());
        // Both past the growth mark: a third link is not allowed (max 2), but a stream fits.
        assert_eq!(p.pick(t0, &node("b"), |_| 9), Some(1));
        assert!(actions(&mut p).is_empty());
        // Both full: refused.
        assert_eq!(p.pick(t0, &node("b"), |_| 10), None);
        assert_eq!(p.stats().no_link, 1);
        // With room for more links, a busy pool dials one.
        p.link_closed(t0, 2);
        actions(&mut p);
        assert_eq!(p.pick(t0, &node("b"), |_| 9), Some(1));
        assert_eq!(actions(&mut p), vec![PoolAction::Dial { peer: node("b") }]);
    }

    #[test]
    fn a_dial_failing_after_its_peer_departed_leaves_no_timer_behind() {
        let mut p = pool(PoolConfig::default());
        let t0 = Instant::ZERO;
        p.peer_up(t0, &node("b"));
        assert_eq!(actions(&mut p), vec![PoolAction::Dial { peer: node("b") }]);
        // The peer leaves while the dial is under way; then the dial fails.
        p.peer_down(&node("b"));
        p.dial_failed(t0, &node("b"));
        if let Some(at) = p.poll_timeout() {
            p.handle_timeout(at, |_| 0);
            assert!(
                p.poll_timeout().is_none_or(|next| next > at),
                "the pool asks again for the deadline that just fired"
            );
        }
        assert!(
            actions(&mut p).is_empty(),
            "a departed peer is not redialled"
        );
    }

    #[test]
    fn idle_links_beyond_the_minimum_are_closed_and_a_departed_peer_loses_all() {
        let mut p = pool(PoolConfig {
            idle_timeout: Duration::from_secs(10),
            ..PoolConfig::default()
        });
        let t0 = Instant::ZERO;
        p.peer_up(t0, &node("b"));
        actions(&mut p);
        for link in 1..=3 {
            p.link_established(t0, link, &node("b"), link == 1);
        }
        let mut now = t0;
        while now < Instant::from_nanos(30_000_000_000) {
            now = p.poll_timeout().unwrap();
            p.handle_timeout(now, |l| u32::from(l == 1));
        }
        let closed = actions(&mut p);
        assert_eq!(
            closed,
            vec![
                PoolAction::Close {
                    link: 3,
                    abort: false
                },
                PoolAction::Close {
                    link: 2,
                    abort: false
                }
            ],
            "the busy link stays, the idle ones beyond the minimum go"
        );
        p.peer_down(&node("b"));
        assert_eq!(
            actions(&mut p),
            vec![PoolAction::Close {
                link: 1,
                abort: true
            }],
            "every link of a departed peer not already closing is closed"
        );
        assert!(p.link_closed(now, 1).is_some());
        assert!(
            actions(&mut p).is_empty(),
            "a departed peer is not redialled"
        );
        p.check_invariants().unwrap();
    }
}
