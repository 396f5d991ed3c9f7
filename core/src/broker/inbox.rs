//! The receiving side: drops a node's own messages and duplicates, and reports gaps.
//!
//! State is kept per origin node: its current incarnation and, per topic, a *stream* of the
//! highest sequence number delivered plus a 64-bit map of which of the numbers just below it were
//! delivered (the anti-replay window of IPsec and DTLS). A message above the highest is new; if
//! it skips numbers, those are reported as a [`Gap`] at once (they may still arrive late, reordered,
//! and are then delivered: a false alarm costs the caller one re-read of storage). A message inside
//! the window is delivered unless its bit is set (a duplicate). A message below the window cannot
//! be told apart from a duplicate and is dropped as [`DropReason::TooOld`]; it was reported
//! missing when the highest number jumped past it, so nothing is lost silently.
//!
//! **Memory bound.** At most [`InboxConfig::origins_max`] origins are tracked; when another one is
//! heard, the one heard least recently is forgotten (counted in [`InboxCounters::evicted_origins`]).
//! One origin costs its node id (≤ 64 bytes) plus 16 bytes plus [`Topic::COUNT`] streams of 24
//! bytes, about 300 bytes with map overhead, so the default of 1,024 origins stays below 400 KiB.
//! A forgotten origin is treated as never heard: de-duplication of its old messages is lost, which
//! is why the bound should exceed the cluster's node count.
//!
//! **First contact.** The first message of a stream that is not tracked (a new origin, or a topic
//! an origin never used before) is delivered and starts the stream without a gap: the inbox cannot
//! know what was published before it subscribed, so callers read state from storage after
//! subscribing. **Restarts.** A larger incarnation means the origin restarted: its streams begin
//! again at 1 and the first message of the new run is reported as [`Missing::Restart`] (the end of
//! the old run and the start of the new one may both be lost). Messages of an older incarnation
//! are dropped.

use std::collections::BTreeMap;

use super::envelope::{Envelope, Origin};
use super::topic::Topic;
use crate::control::NodeId;
use crate::digest::Fnv64;

/// Largest [`InboxConfig::reorder_window`]: the width of the per-stream bit map.
pub const REORDER_WINDOW_MAX: u32 = 64;

/// Limits of an [`Inbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// How many sequence numbers below the highest delivered a late message is still recognised
    /// (and delivered if new), per origin and topic; `1..=`[`REORDER_WINDOW_MAX`].
    pub reorder_window: u32,
    /// Most origin nodes tracked at once (at least 1).
    pub origins_max: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            reorder_window: REORDER_WINDOW_MAX,
            origins_max: 1024,
        }
    }
}

/// What to do with one received envelope.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// New: hand it to the application. If `gap` is set, messages before it were missed and the
    /// state they describe must be re-read from storage.
    Deliver {
        /// Messages missed before this one, if any.
        gap: Option<Gap>,
    },
    /// Not for the application.
    Drop(DropReason),
}

/// Why an envelope was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// This node published it, on a topic that is not delivered back to its origin.
    OwnMessage,
    /// Already delivered.
    Duplicate,
    /// Further below the highest delivered sequence number than the reorder window: a duplicate or
    /// a message already reported missing.
    TooOld,
    /// From an earlier incarnation of an origin that has since restarted.
    StaleIncarnation,
}

/// Messages of one origin and topic that did not arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The publisher, in the run whose messages are missing (the new run for a restart).
    pub origin: Origin,
    /// The topic of the missing messages.
    pub topic: Topic,
    /// Which ones.
    pub missing: Missing,
}

/// Which messages a [`Gap`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Sequence numbers `first..=last` (they may still arrive late, and are then delivered).
    Seqs {
        /// First missing sequence number.
        first: u64,
        /// Last missing sequence number.
        last: u64,
    },
    /// The origin restarted: anything it published at the end of `previous_incarnation` and
    /// before this message in the new one may be lost.
    Restart {
        /// The incarnation tracked before.
        previous_incarnation: u64,
    },
}

/// What an [`Inbox`] has seen, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxCounters {
    /// Envelopes delivered.
    pub accepted: u64,
    /// Envelopes dropped as [`DropReason::Duplicate`].
    pub duplicate: u64,
    /// Envelopes dropped as [`DropReason::OwnMessage`].
    pub self_filtered: u64,
    /// Envelopes dropped as [`DropReason::TooOld`].
    pub too_old: u64,
    /// Envelopes dropped as [`DropReason::StaleIncarnation`].
    pub stale_incarnation: u64,
    /// Gaps reported (both kinds of [`Missing`]).
    pub gaps: u64,
    /// Sequence numbers reported missing by [`Missing::Seqs`] gaps.
    pub missing_seqs: u64,
    /// Gaps of kind [`Missing::Restart`].
    pub restarts: u64,
    /// Delivered envelopes that arrived after a higher sequence number (reordered).
    pub late: u64,
    /// Origins forgotten to stay within [`InboxConfig::origins_max`].
    pub evicted_origins: u64,
}

/// Self-filtering, de-duplication and gap detection for one subscriber.
#[derive(Debug, Clone)]
pub struct Inbox {
    me: NodeId,
    reorder_window: u32,
    origins_max: usize,
    origins: BTreeMap<NodeId, OriginState>,
    /// Counts admissions; orders origins by when they were last heard.
    clock: u64,
    counters: InboxCounters,
}

/// What is tracked of one origin.
#[derive(Debug, Clone)]
struct OriginState {
    incarnation: u64,
    last_heard: u64,
    /// Per [`Topic::index`]; `None` until the topic's first message (first contact).
    streams: [Option<Stream>; Topic::COUNT],
}

/// Delivery record of one (origin, incarnation, topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// Highest sequence number delivered (0: none yet in this incarnation).
    highest: u64,
    /// Bit `i` set: `highest - i` was delivered.
    delivered: u64,
}

/// What a [`Stream`] says of one sequence number.
enum StreamVerdict {
    New {
        missing: Option<(u64, u64)>,
        late: bool,
    },
    Duplicate,
    TooOld,
}

impl Stream {
    /// A stream whose first message (first contact) is `seq`.
    fn first_contact(seq: u64) -> Stream {
        Stream {
            highest: seq,
            delivered: 1,
        }
    }

    /// A stream of a new incarnation, expecting sequence number 1.
    const AFTER_RESTART: Stream = Stream {
        highest: 0,
        delivered: 0,
    };

    fn admit(&mut self, seq: u64, window: u32) -> StreamVerdict {
        if seq > self.highest {
            let missing = (seq - self.highest > 1).then(|| (self.highest + 1, seq - 1));
            let shift = seq - self.highest;
            self.delivered = if shift >= u64::from(u64::BITS) {
                1
            } else {
                (self.delivered << shift) | 1
            };
            self.highest = seq;
            return StreamVerdict::New {
                missing,
                late: false,
            };
        }
        let below = self.highest - seq;
        if below >= u64::from(window) {
            return StreamVerdict::TooOld;
        }
        let bit = 1u64 << below;
        if self.delivered & bit != 0 {
            return StreamVerdict::Duplicate;
        }
        self.delivered |= bit;
        StreamVerdict::New {
            missing: None,
            late: true,
        }
    }
}

impl Inbox {
    /// An inbox for node `me` that has heard nothing yet.
    pub fn new(me: NodeId, config: InboxConfig) -> Inbox {
        Inbox {
            me,
            reorder_window: config.reorder_window.clamp(1, REORDER_WINDOW_MAX),
            origins_max: config.origins_max.max(1),
            origins: BTreeMap::new(),
            clock: 0,
            counters: InboxCounters::default(),
        }
    }

    /// Decides what to do with `envelope`, and remembers it.
    pub fn admit(&mut self, envelope: &Envelope) -> Admission {
        let mut verdict = self.judge(envelope);
        if verdict == Admission::Drop(DropReason::Duplicate)
            && crate::planted::active(crate::planted::PlantedBug::InboxDeliversDuplicates)
        {
            verdict = Admission::Deliver { gap: None };
        }
        let c = &mut self.counters;
        match &verdict {
            Admission::Deliver { gap } => {
                c.accepted += 1;
                match gap.as_ref().map(|g| g.missing) {
                    Some(Missing::Seqs { first, last }) => {
                        c.gaps += 1;
                        c.missing_seqs += last - first + 1;
                    }
                    Some(Missing::Restart { .. }) => {
                        c.gaps += 1;
                        c.restarts += 1;
                    }
                    None => {}
                }
            }
            Admission::Drop(DropReason::OwnMessage) => c.self_filtered += 1,
            Admission::Drop(DropReason::Duplicate) => c.duplicate += 1,
            Admission::Drop(DropReason::TooOld) => c.too_old += 1,
            Admission::Drop(DropReason::StaleIncarnation) => c.stale_incarnation += 1,
        }
        verdict
    }

    fn judge(&mut self, envelope: &Envelope) -> Admission {
        let Envelope {
            topic, origin, seq, ..
        } = envelope;
        let (topic, seq) = (*topic, *seq);
        if origin.node == self.me && !topic.delivers_to_self() {
            return Admission::Drop(DropReason::OwnMessage);
        }
        self.clock += 1;
        let now = self.clock;
        let window = self.reorder_window;
        let Some(state) = self.origins.get_mut(&origin.node) else {
            self.make_room();
            let mut streams = [None; Topic::COUNT];
            streams[topic.index()] = Some(Stream::first_contact(seq));
            let state = OriginState {
                incarnation: origin.incarnation,
                last_heard: now,
                streams,
            };
            self.origins.insert(origin.node.clone(), state);
            return Admission::Deliver { gap: None };
        };
        state.last_heard = now;
        if origin.incarnation < state.incarnation {
            return Admission::Drop(DropReason::StaleIncarnation);
        }
        let mut restart = None;
        if origin.incarnation > state.incarnation {
            restart = Some(state.incarnation);
            state.incarnation = origin.incarnation;
            state.streams = [Some(Stream::AFTER_RESTART); Topic::COUNT];
        }
        let verdict = match &mut state.streams[topic.index()] {
            Some(stream) => stream.admit(seq, window),
            empty @ None => {
                *empty = Some(Stream::first_contact(seq));
                StreamVerdict::New {
                    missing: None,
                    late: false,
                }
            }
        };
        let gap = |missing| {
            Some(Gap {
                origin: origin.clone(),
                topic,
                missing,
            })
        };
        match verdict {
            StreamVerdict::Duplicate => Admission::Drop(DropReason::Duplicate),
            StreamVerdict::TooOld => Admission::Drop(DropReason::TooOld),
            StreamVerdict::New { missing, late } => {
                if late {
                    self.counters.late += 1;
                }
                let gap = match (restart, missing) {
                    (Some(previous_incarnation), _) => gap(Missing::Restart {
                        previous_incarnation,
                    }),
                    (None, Some((first, last))) => gap(Missing::Seqs { first, last }),
                    (None, None) => None,
                };
                Admission::Deliver { gap }
            }
        }
    }

    /// Forgets the least recently heard origins until one more fits.
    fn make_room(&mut self) {
        while self.origins.len() >= self.origins_max {
            let Some(oldest) = self
                .origins
                .iter()
                .min_by_key(|(_, s)| s.last_heard)
                .map(|(node, _)| node.clone())
            else {
                return;
            };
            self.origins.remove(&oldest);
            self.counters.evicted_origins += 1;
        }
    }

    /// What has been seen so far.
    pub fn counters(&self) -> InboxCounters {
        self.counters
    }

    /// Origins currently tracked (at most [`InboxConfig::origins_max`]).
    pub fn tracked_origins(&self) -> usize {
        self.origins.len()
    }

    /// The node this inbox filters for.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Checks the inbox's internal consistency.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.origins.len() > self.origins_max {
            return Err(format!(
                "{} origins tracked, limit {}",
                self.origins.len(),
                self.origins_max
            ));
        }
        for (node, state) in &self.origins {
            if state.last_heard > self.clock {
                return Err(format!("origin {node} heard in the future"));
            }
            for (topic, stream) in Topic::ALL.iter().zip(&state.streams) {
                if let Some(s) = stream
                    && *s != Stream::AFTER_RESTART
                    && s.delivered & 1 == 0
                {
                    return Err(format!(
                        "{node}/{topic}: highest {} not marked delivered",
                        s.highest
                    ));
                }
            }
        }
        Ok(())
    }

    /// A hash of the state, for the simulator's run comparison.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv64::new();
        for (node, state) in &self.origins {
            h.write(node.as_str().as_bytes());
            h.write_u64(state.incarnation);
            for stream in &state.streams {
                let (highest, delivered) =
                    stream.map_or((u64::MAX, 0), |s| (s.highest, s.delivered));
                h.write_u64(highest);
                h.write_u64(delivered);
            }
        }
        h.write_u64(self.counters.accepted);
        h.finish()
    }
}
