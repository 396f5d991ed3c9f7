//! Tests of the inbox: unit cases, then properties over random interleavings with duplicates,
//! drops, reordering and restarts.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::control::{NodeId, UnixMillis};

fn node(name: &str) -> NodeId {
    NodeId::parse(name).unwrap()
}

fn origin(name: &str, incarnation: u64) -> Origin {
    Origin {
        node: node(name),
        incarnation,
    }
}

fn envelope(from: &Origin, topic: Topic, seq: u64) -> Envelope {
    Envelope {
        topic,
        origin: from.clone(),
        seq,
        time: UnixMillis(0),
        payload: Bytes::new(),
    }
}

fn inbox(window: u32) -> Inbox {
    Inbox::new(
        node("me"),
        InboxConfig {
            reorder_window: window,
            ..InboxConfig::default()
        },
    )
}

const DELIVER: Admission = Admission::Deliver { gap: None };

fn seqs_gap(from: &Origin, topic: Topic, first: u64, last: u64) -> Admission {
    Admission::Deliver {
        gap: Some(Gap {
            origin: from.clone(),
            topic,
            missing: Missing::Seqs { first, last },
        }),
    }
}

#[test]
fn in_order_messages_are_delivered_once() {
    let a = origin("a", 1);
    let mut inbox = inbox(64);
    for seq in 1..=5 {
        assert_eq!(
            inbox.admit(&envelope(&a, Topic::ClientOnline, seq)),
            DELIVER
        );
    }
    assert_eq!(
        inbox.admit(&envelope(&a, Topic::ClientOnline, 3)),
        Admission::Drop(DropReason::Duplicate)
    );
    let c = inbox.counters();
    assert_eq!((c.accepted, c.duplicate, c.gaps), (5, 1, 0));
}

#[test]
fn own_messages_are_dropped_except_on_topics_that_come_back() {
    let me = origin("me", 1);
    let mut inbox = inbox(64);
    for topic in Topic::ALL {
        let verdict = inbox.admit(&envelope(&me, topic, 1));
        if topic.delivers_to_self() {
            assert_eq!(verdict, DELIVER, "{topic}");
        } else {
            assert_eq!(verdict, Admission::Drop(DropReason::OwnMessage), "{topic}");
        }
    }
    // What comes back is de-duplicated like anything else.
    assert_eq!(
        inbox.admit(&envelope(&me, Topic::ConfigUpdate, 1)),
        Admission::Drop(DropReason::Duplicate)
    );
    assert_eq!(inbox.counters().self_filtered, Topic::COUNT as u64 - 1);
}

#[test]
fn a_jump_is_reported_and_a_late_arrival_still_delivered() {
    let a = origin("a", 1);
    let t = Topic::MappingCreated;
    let mut inbox = inbox(64);
    assert_eq!(inbox.admit(&envelope(&a, t, 1)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, t, 5)), seqs_gap(&a, t, 2, 4));
    assert_eq!(inbox.admit(&envelope(&a, t, 3)), DELIVER);
    assert_eq!(
        inbox.admit(&envelope(&a, t, 3)),
        Admission::Drop(DropReason::Duplicate)
    );
    assert_eq!(inbox.admit(&envelope(&a, t, 6)), DELIVER);
    let c = inbox.counters();
    assert_eq!((c.gaps, c.missing_seqs, c.late), (1, 3, 1));
}

#[test]
fn below_the_window_is_too_old() {
    let a = origin("a", 1);
    let t = Topic::NodeHeartbeat;
    let mut inbox = inbox(4);
    assert_eq!(inbox.admit(&envelope(&a, t, 1)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, t, 10)), seqs_gap(&a, t, 2, 9));
    // 7..=10 are inside a window of 4; 6 is not.
    assert_eq!(inbox.admit(&envelope(&a, t, 7)), DELIVER);
    assert_eq!(
        inbox.admit(&envelope(&a, t, 6)),
        Admission::Drop(DropReason::TooOld)
    );
    assert_eq!(
        inbox.admit(&envelope(&a, t, 1)),
        Admission::Drop(DropReason::TooOld)
    );
    assert_eq!(inbox.counters().too_old, 2);
}

#[test]
fn a_jump_wider_than_the_bit_map_forgets_the_window() {
    let a = origin("a", 1);
    let t = Topic::NodeHeartbeat;
    let mut inbox = inbox(64);
    assert_eq!(inbox.admit(&envelope(&a, t, 1)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, t, 1000)), seqs_gap(&a, t, 2, 999));
    assert_eq!(inbox.admit(&envelope(&a, t, 999)), DELIVER);
    assert_eq!(
        inbox.admit(&envelope(&a, t, 1000)),
        Admission::Drop(DropReason::Duplicate)
    );
    inbox.check_invariants().unwrap();
}

#[test]
fn topics_are_separate_streams() {
    let a = origin("a", 1);
    let mut inbox = inbox(64);
    assert_eq!(inbox.admit(&envelope(&a, Topic::ClientOnline, 1)), DELIVER);
    // First contact on another topic: no gap even though its numbering is its own.
    assert_eq!(inbox.admit(&envelope(&a, Topic::ClientOffline, 7)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, Topic::ClientOnline, 2)), DELIVER);
    assert_eq!(inbox.counters().gaps, 0);
}

#[test]
fn first_contact_is_not_a_gap() {
    let a = origin("a", 1);
    let mut inbox = inbox(64);
    assert_eq!(
        inbox.admit(&envelope(&a, Topic::ClientOnline, 500)),
        DELIVER
    );
    assert_eq!(inbox.counters().gaps, 0);
}

#[test]
fn a_late_message_below_first_contact_is_delivered_without_a_gap() {
    // 3 arrives first (first contact), 2 was lost, 1 arrives late: nothing before the first
    // contact can be known missing, so no gap is reported for 2.
    let a = origin("a", 1);
    let t = Topic::ClientOnline;
    let mut inbox = inbox(64);
    assert_eq!(inbox.admit(&envelope(&a, t, 3)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, t, 1)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, t, 4)), DELIVER);
    let c = inbox.counters();
    assert_eq!((c.accepted, c.gaps, c.late), (3, 0, 1));
}

#[test]
fn a_restart_is_reported_and_the_old_run_ignored() {
    let old = origin("a", 10);
    let new = origin("a", 11);
    let t = Topic::ClientOnline;
    let mut inbox = inbox(64);
    for seq in 1..=3 {
        assert_eq!(inbox.admit(&envelope(&old, t, seq)), DELIVER);
    }
    assert_eq!(
        inbox.admit(&envelope(&old, Topic::NodeHeartbeat, 40)),
        DELIVER
    );
    // The new run starts again at 1: not a duplicate of the old run's 1.
    assert_eq!(
        inbox.admit(&envelope(&new, t, 1)),
        Admission::Deliver {
            gap: Some(Gap {
                origin: new.clone(),
                topic: t,
                missing: Missing::Restart {
                    previous_incarnation: 10
                },
            })
        }
    );
    assert_eq!(inbox.admit(&envelope(&new, t, 2)), DELIVER);
    assert_eq!(
        inbox.admit(&envelope(&old, t, 4)),
        Admission::Drop(DropReason::StaleIncarnation)
    );
    // Other topics of the new run are expected from 1, so a skipped start is a gap.
    assert_eq!(
        inbox.admit(&envelope(&new, Topic::NodeHeartbeat, 1)),
        DELIVER
    );
    assert_eq!(
        inbox.admit(&envelope(&new, Topic::ClientOffline, 3)),
        seqs_gap(&new, Topic::ClientOffline, 1, 2)
    );
    let c = inbox.counters();
    assert_eq!((c.restarts, c.gaps, c.stale_incarnation), (1, 2, 1));
    inbox.check_invariants().unwrap();
}

#[test]
fn the_least_recently_heard_origin_is_forgotten() {
    let mut inbox = Inbox::new(
        node("me"),
        InboxConfig {
            origins_max: 2,
            ..InboxConfig::default()
        },
    );
    let (a, b, c) = (origin("a", 1), origin("b", 1), origin("c", 1));
    let t = Topic::NodeHeartbeat;
    assert_eq!(inbox.admit(&envelope(&a, t, 1)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&b, t, 1)), DELIVER);
    assert_eq!(inbox.admit(&envelope(&a, t, 2)), DELIVER);
    // c pushes out b, heard least recently.
    assert_eq!(inbox.admit(&envelope(&c, t, 1)), DELIVER);
    assert_eq!(inbox.tracked_origins(), 2);
    assert_eq!(inbox.counters().evicted_origins, 1);
    assert_eq!(
        inbox.admit(&envelope(&a, t, 2)),
        Admission::Drop(DropReason::Duplicate)
    );
    // b is first contact again: its old message is delivered again (the documented cost).
    assert_eq!(inbox.admit(&envelope(&b, t, 1)), DELIVER);
    inbox.check_invariants().unwrap();
}

#[test]
fn config_clamps_the_window_and_origin_limit() {
    let mut inbox = Inbox::new(
        node("me"),
        InboxConfig {
            reorder_window: 0,
            origins_max: 0,
        },
    );
    let a = origin("a", 1);
    assert_eq!(inbox.admit(&envelope(&a, Topic::ClientOnline, 2)), DELIVER);
    assert_eq!(
        inbox.admit(&envelope(&a, Topic::ClientOnline, 2)),
        Admission::Drop(DropReason::Duplicate)
    );
    assert_eq!(
        inbox.admit(&envelope(&a, Topic::ClientOnline, 1)),
        Admission::Drop(DropReason::TooOld)
    );
    assert_eq!(inbox.tracked_origins(), 1);
    let mut wide = Inbox::new(
        node("me"),
        InboxConfig {
            reorder_window: 1000,
            ..InboxConfig::default()
        },
    );
    assert_eq!(wide.admit(&envelope(&a, Topic::ClientOnline, 100)), DELIVER);
    assert_eq!(
        wide.admit(&envelope(&a, Topic::ClientOnline, 100 - 64)),
        Admission::Drop(DropReason::TooOld)
    );
}

#[test]
fn digest_follows_state() {
    let a = origin("a", 1);
    let mut one = inbox(64);
    let mut two = inbox(64);
    assert_eq!(one.digest(), two.digest());
    let _ = one.admit(&envelope(&a, Topic::ClientOnline, 1));
    assert_ne!(one.digest(), two.digest());
    let _ = two.admit(&envelope(&a, Topic::ClientOnline, 1));
    assert_eq!(one.digest(), two.digest());
}

// ---- properties --------------------------------------------------------------------------------

/// Origins of the model; index 0 is the inbox's own node.
const NODES: [&str; 4] = ["me", "a", "b", "c"];
/// Topics of the model: two dropped when they come back to their origin, one delivered.
const TOPICS: [Topic; 3] = [
    Topic::ClientOnline,
    Topic::ConfigUpdate,
    Topic::NodeHeartbeat,
];

/// One publish and what the network does to it.
#[derive(Debug, Clone)]
struct Step {
    node: usize,
    topic: usize,
    /// The origin restarts (new incarnation) before publishing.
    restart: bool,
    fate: Fate,
}

/// What the network does to one message.
#[derive(Debug, Clone)]
enum Fate {
    /// Lost.
    Drop,
    /// Arrives this many positions late.
    Deliver(usize),
    /// Arrives twice, each copy this many positions late.
    Duplicate(usize, usize),
}

fn steps(
    drop_percent: u32,
    restart_percent: u32,
    delay_max: usize,
    len: usize,
) -> impl Strategy<Value = Vec<Step>> {
    let step = (
        0..NODES.len(),
        0..TOPICS.len(),
        0..100u32,
        0..100u32,
        0..=delay_max,
        0..=delay_max,
    )
        .prop_map(move |(node, topic, restart, fate, d1, d2)| Step {
            node,
            topic,
            restart: restart < restart_percent,
            fate: if fate < drop_percent {
                Fate::Drop
            } else if fate < drop_percent + 15 {
                Fate::Duplicate(d1, d2)
            } else {
                Fate::Deliver(d1)
            },
        });
    proptest::collection::vec(step, 0..len)
}

/// Identity of one published message.
type Key = (NodeId, u64, Topic, u64);

/// What happened when a model run was fed through an inbox.
struct Run {
    /// Every message published, in publish order.
    published: Vec<Envelope>,
    /// Copies of messages that reached the inbox.
    arrivals: usize,
    /// Delivered messages, in delivery order.
    delivered: Vec<Key>,
    /// Gaps reported, each with the set of messages delivered before it.
    gaps: Vec<(Gap, BTreeSet<Key>)>,
    inbox: Inbox,
}

fn key(e: &Envelope) -> Key {
    (e.origin.node.clone(), e.origin.incarnation, e.topic, e.seq)
}

fn run(steps: &[Step], config: InboxConfig) -> Run {
    let mut publishers: Vec<Publisher> =
        NODES.iter().map(|n| Publisher::new(origin(n, 1))).collect();
    let mut published = Vec::new();
    // (arrival position, tie-break, envelope)
    let mut network = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let p = &mut publishers[step.node];
        if step.restart {
            let next = Origin {
                node: p.origin().node.clone(),
                incarnation: p.origin().incarnation + 1,
            };
            *p = Publisher::new(next);
        }
        let e = p
            .stamp(TOPICS[step.topic], UnixMillis(i as u64), Bytes::new())
            .unwrap();
        published.push(e.clone());
        match step.fate {
            Fate::Drop => {}
            Fate::Deliver(d) => network.push((i + d, network.len(), e)),
            Fate::Duplicate(d1, d2) => {
                network.push((i + d1, network.len(), e.clone()));
                network.push((i + d2, network.len(), e));
            }
        }
    }
    network.sort_by_key(|(at, tie, _)| (*at, *tie));
    let mut inbox = Inbox::new(node(NODES[0]), config);
    let mut delivered = Vec::new();
    let mut gaps = Vec::new();
    for (_, _, e) in &network {
        match inbox.admit(e) {
            Admission::Deliver { gap } => {
                if let Some(gap) = gap {
                    gaps.push((gap, delivered.iter().cloned().collect()));
                }
                delivered.push(key(e));
            }
            Admission::Drop(_) => {}
        }
        inbox.check_invariants().unwrap();
    }
    Run {
        published,
        arrivals: network.len(),
        delivered,
        gaps,
        inbox,
    }
}

fn is_own_filtered(k: &Key) -> bool {
    k.0.as_str() == NODES[0] && !k.2.delivers_to_self()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// With loss, duplication, reordering and restarts: nothing is delivered twice, own messages
    /// stay out where the topic says so, every message skipped over is reported missing before
    /// anything after it is delivered, no gap claims a delivered message, and the counters add up.
    #[test]
    fn inbox_is_safe_under_loss_duplication_reordering_and_restarts(
        steps in steps(20, 3, 80, 300),
        window in 1..=REORDER_WINDOW_MAX,
    ) {
        let run = run(&steps, InboxConfig { reorder_window: window, origins_max: NODES.len() });
        let c = run.inbox.counters();

        let mut once = BTreeSet::new();
        for k in &run.delivered {
            prop_assert!(once.insert(k.clone()), "{k:?} delivered twice");
            prop_assert!(!is_own_filtered(k), "own message {k:?} delivered");
        }

        // Per stream (origin run, topic): every number between the first one delivered (first
        // contact: nothing before it can be known) and the highest delivered that was not
        // delivered lies in a gap reported for that stream.
        let mut streams: BTreeMap<(NodeId, u64, Topic), (u64, BTreeSet<u64>)> = BTreeMap::new();
        for (n, inc, t, s) in &run.delivered {
            streams.entry((n.clone(), *inc, *t)).or_insert((*s, BTreeSet::new())).1.insert(*s);
        }
        for ((n, inc, t), (first_contact, seqs)) in &streams {
            let (lo, hi) = (*first_contact, *seqs.last().unwrap());
            for s in lo..hi {
                if seqs.contains(&s) {
                    continue;
                }
                let covered = run.gaps.iter().any(|(g, _)| {
                    g.origin.node == *n && g.origin.incarnation == *inc && g.topic == *t
                        && matches!(g.missing, Missing::Seqs { first, last } if (first..=last).contains(&s))
                });
                prop_assert!(covered, "{n}/{inc}/{t} seq {s} missing but never reported");
            }
        }

        // Gaps never claim something already delivered.
        for (g, before) in &run.gaps {
            if let Missing::Seqs { first, last } = g.missing {
                prop_assert!(first <= last);
                for s in first..=last {
                    let k = (g.origin.node.clone(), g.origin.incarnation, g.topic, s);
                    prop_assert!(!before.contains(&k), "gap {g:?} claims delivered {k:?}");
                }
            }
        }

        prop_assert_eq!(c.accepted as usize, run.delivered.len());
        prop_assert_eq!(c.gaps as usize, run.gaps.len());
        prop_assert_eq!(
            (c.accepted + c.duplicate + c.self_filtered + c.too_old + c.stale_incarnation) as usize,
            run.arrivals
        );
        prop_assert_eq!(c.evicted_origins, 0);
        prop_assert!(run.inbox.tracked_origins() <= NODES.len());
    }

    /// Without loss and with reordering inside the window, every message is delivered exactly
    /// once (except own ones that do not come back), and every extra copy counted a duplicate.
    #[test]
    fn inbox_delivers_everything_once_when_nothing_is_lost(
        window in 1..=REORDER_WINDOW_MAX,
        steps in steps(0, 0, 0, 300),
        delays in proptest::collection::vec((0..REORDER_WINDOW_MAX as usize, 0..REORDER_WINDOW_MAX as usize), 300),
    ) {
        // Delays below the window: a message is overtaken by fewer than `window` later ones.
        let steps: Vec<Step> = steps
            .into_iter()
            .zip(&delays)
            .map(|(mut s, &(d1, d2))| {
                let (d1, d2) = (d1 % window as usize, d2 % window as usize);
                s.fate = match s.fate {
                    Fate::Duplicate(..) => Fate::Duplicate(d1, d2),
                    _ => Fate::Deliver(d1),
                };
                s
            })
            .collect();
        let copies: usize = steps
            .iter()
            .map(|s| match s.fate { Fate::Duplicate(..) => 2, _ => 1 })
            .sum();
        let run = run(&steps, InboxConfig { reorder_window: window, origins_max: NODES.len() });
        let expected: BTreeSet<Key> =
            run.published.iter().map(key).filter(|k| !is_own_filtered(k)).collect();
        let delivered: BTreeSet<Key> = run.delivered.iter().cloned().collect();
        prop_assert_eq!(delivered.len(), run.delivered.len(), "something delivered twice");
        prop_assert_eq!(&delivered, &expected);
        let c = run.inbox.counters();
        prop_assert_eq!(c.too_old, 0);
        let own_copies = run.arrivals - (c.accepted + c.duplicate) as usize;
        prop_assert_eq!(own_copies as u64, c.self_filtered);
        prop_assert_eq!(run.arrivals, copies);
        prop_assert_eq!(c.accepted as usize + c.duplicate as usize + own_copies, copies);
    }

    /// Memory stays bounded however many origins speak: never more than `origins_max` tracked.
    #[test]
    fn inbox_memory_is_bounded_by_origins_max(
        origins_max in 1usize..6,
        messages in proptest::collection::vec((0u8..40, 0..Topic::COUNT, 1u64..1_000_000, 1u64..4), 0..400),
    ) {
        let mut inbox = Inbox::new(node("me"), InboxConfig { reorder_window: 64, origins_max });
        let mut heard = BTreeSet::new();
        for (n, t, seq, inc) in messages {
            let name = format!("n{n}");
            heard.insert(name.clone());
            let _ = inbox.admit(&envelope(&origin(&name, inc), Topic::ALL[t], seq));
            prop_assert!(inbox.tracked_origins() <= origins_max);
            prop_assert!(inbox.check_invariants().is_ok());
        }
        let c = inbox.counters();
        prop_assert_eq!(inbox.tracked_origins() as u64 + c.evicted_origins >= heard.len() as u64, true);
        if heard.len() > origins_max {
            prop_assert!(c.evicted_origins > 0);
        }
    }
}
