//! Bugs planted on purpose, to prove the simulator finds them (issue #3's "it must find bugs").
//!
//! Only with the `planted-bugs` cargo feature, which only `tunnox-sim-tests` enables; without it
//! [`active`] is a constant `false` and every planted branch compiles away. The switch is
//! per thread, so each simulation (one per test thread) plants its own.

/// A realistic bug that can be switched on in simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// The mux forgets to send every third stream window update.
    DropWindowUpdate,
    /// The node does not pass a FIN from one tunnel end to the other.
    FinNotPropagated,
    /// Dead-peer detection fires one heartbeat interval early.
    HeartbeatTimeoutOffByOne,
    /// The encoder writes a DATA frame's length one byte short when the payload is over 1 KiB.
    FrameLengthOffByOne,
    /// A node serves an open that came over a bridge link by forwarding it to yet another node
    /// (it ignores `via_peer`).
    ForwardedOpenServedOnward,
    /// A node keeps a route after the peer it names answered `TargetOffline`.
    StaleRouteKeptOnTargetOffline,
    /// The bridge pool keeps a departed peer as a member and redials it.
    PoolRedialsDepartedPeer,
    /// The simulated storage lists a node as a member after its record's lease ran out (a node
    /// that died without leaving is never declared down).
    MembershipLeaseIgnored,
    /// The broker inbox hands a duplicate message to the application again.
    InboxDeliversDuplicates,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 9] = [
        PlantedBug::DropWindowUpdate,
        PlantedBug::FinNotPropagated,
        PlantedBug::HeartbeatTimeoutOffByOne,
        PlantedBug::FrameLengthOffByOne,
        PlantedBug::ForwardedOpenServedOnward,
        PlantedBug::StaleRouteKeptOnTargetOffline,
        PlantedBug::PoolRedialsDepartedPeer,
        PlantedBug::MembershipLeaseIgnored,
        PlantedBug::InboxDeliversDuplicates,
    ];

    /// The kebab-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::DropWindowUpdate => "drop-window-update",
            PlantedBug::FinNotPropagated => "fin-not-propagated",
            PlantedBug::HeartbeatTimeoutOffByOne => "heartbeat-timeout-off-by-one",
            PlantedBug::FrameLengthOffByOne => "frame-length-off-by-one",
            PlantedBug::ForwardedOpenServedOnward => "forwarded-open-served-onward",
            PlantedBug::StaleRouteKeptOnTargetOffline => "stale-route-kept-on-target-offline",
            PlantedBug::PoolRedialsDepartedPeer => "pool-redials-departed-peer",
            PlantedBug::MembershipLeaseIgnored => "membership-lease-ignored",
            PlantedBug::InboxDeliversDuplicates => "inbox-delivers-duplicates",
        }
    }

    /// The bug with this name.
    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: core::cell::Cell<Option<PlantedBug>> = const { core::cell::Cell::new(None) };
}

/// Plants `bug` (or none) for simulations run on this thread.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<PlantedBug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: PlantedBug) -> bool {
    PLANTED.with(|p| p.get() == Some(bug))
}

/// Whether `bug` is planted: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_bug: PlantedBug) -> bool {
    false
}
