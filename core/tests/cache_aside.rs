//! Model check of the cache-aside rules: readers and writers interleaved at random over a
//! linearizable source and a cache that applies `replaces` atomically, with slow fills, failed
//! cache updates, evictions and source outages. After every read the staleness bound is checked:
//! a read that started more than `entry_ttl` after a write was acknowledged returns that write's
//! version or a newer one. And a stronger rule, which is what the version check buys: once a
//! write's cache update is in, no read returns an older version until that entry is evicted. A
//! naive cache that ignores versions still keeps the bound (entries expire by when their read
//! started) but must be caught breaking the stronger rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use tunnox_core::rng::Rng;
use tunnox_core::storage::{
    CacheAside, CacheEntry, CachePolicy, Lookup, ReadOutcome, ReadTicket, SourceDown, Versioned,
    replaces,
};
use tunnox_core::time::{Duration, Instant};

const KEYS: u64 = 3;
const TTL_MS: u64 = 50;

/// A value names its key and version, so a read can tell which version it got.
fn value(key: u64, version: u64) -> Bytes {
    Bytes::from(format!("{key}:{version}"))
}

fn version_of(bytes: &Bytes) -> u64 {
    let text = std::str::from_utf8(bytes).unwrap();
    text.split_once(':').unwrap().1.parse().unwrap()
}

enum Pending {
    /// A missed read waiting for the source.
    SourceRead {
        key: u64,
        ticket: ReadTicket,
        floor: u64,
    },
    /// A fill on its way to the cache.
    Fill { key: u64, entry: CacheEntry },
    /// A write's cache update on its way.
    Update { key: u64, entry: CacheEntry },
}

#[derive(Default, Debug)]
struct Counters {
    reads_checked: u64,
    hits: u64,
    refused: u64,
    evictions: u64,
    failed_updates: u64,
    degraded: u64,
    outages: u64,
    bound_violations: u64,
    floor_violations: u64,
}

struct World {
    rng: Rng,
    now: Instant,
    rules: CacheAside,
    source: BTreeMap<u64, Versioned>,
    source_up: bool,
    cache: BTreeMap<u64, CacheEntry>,
    pending: Vec<Pending>,
    /// Acknowledged writes: (key, version, when).
    acked: Vec<(u64, u64, Instant)>,
    /// Per key: the newest version a write put into the cache since the key was last evicted.
    floor: BTreeMap<u64, u64>,
    naive: bool,
    counters: Counters,
}

impl World {
    fn new(seed: u64, naive: bool) -> World {
        World {
            rng: Rng::seed_from_u64(seed),
            now: Instant::ZERO,
            rules: CacheAside::new(CachePolicy {
                entry_ttl: Duration::from_millis(TTL_MS),
                stale_grace: Duration::from_millis(10 * TTL_MS),
            }),
            source: BTreeMap::new(),
            source_up: true,
            cache: BTreeMap::new(),
            pending: Vec::new(),
            acked: Vec::new(),
            floor: BTreeMap::new(),
            naive,
            counters: Counters::default(),
        }
    }

    /// Offers `entry` to the cache; returns whether it went in.
    fn put_cache(&mut self, key: u64, entry: CacheEntry) -> bool {
        let held = self.cache.get(&key);
        if self.naive || replaces(held, &entry, self.now) {
            self.cache.insert(key, entry);
            true
        } else {
            self.counters.refused += 1;
            false
        }
    }

    fn check_read(&mut self, key: u64, started: Instant, floor: u64, got: Option<&Bytes>) {
        self.counters.reads_checked += 1;
        let version = got.map_or(0, version_of);
        let bound = Duration::from_millis(TTL_MS);
        if self
            .acked
            .iter()
            .any(|&(k, v, t)| k == key && started > t + bound && version < v)
        {
            self.counters.bound_violations += 1;
        }
        if version < floor {
            self.counters.floor_violations += 1;
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => {
                let key = self.rng.below(KEYS);
                let held = self.cache.get(&key).cloned();
                let floor = self.floor.get(&key).copied().unwrap_or(0);
                let (lookup, ticket) = self.rules.lookup(self.now, held);
                match lookup {
                    Lookup::Hit(got) => {
                        self.counters.hits += 1;
                        self.check_read(key, self.now, floor, got.as_ref());
                    }
                    Lookup::Miss => self
                        .pending
                        .push(Pending::SourceRead { key, ticket, floor }),
                }
            }
            30..=49 => {
                let key = self.rng.below(KEYS);
                let written = if self.source_up {
                    let held = self.source.entry(key).or_insert(Versioned {
                        version: 0,
                        value: None,
                    });
                    held.version += 1;
                    held.value = Some(value(key, held.version));
                    Ok(held.clone())
                } else {
                    Err(SourceDown)
                };
                if let Ok(w) = &written {
                    self.acked.push((key, w.version, self.now));
                }
                if let Ok(entry) = self.rules.source_written(self.now, written) {
                    self.pending.push(Pending::Update { key, entry });
                }
            }
            50..=79 if !self.pending.is_empty() => {
                // Any pending operation may be the next to finish: fills and updates race.
                let i = self.rng.below(self.pending.len() as u64) as usize;
                match self.pending.swap_remove(i) {
                    Pending::SourceRead { key, ticket, floor } => {
                        let started = ticket.started_at();
                        let source = if self.source_up {
                            Ok(self.source.get(&key).cloned().unwrap_or(Versioned {
                                version: 0,
                                value: None,
                            }))
                        } else {
                            Err(SourceDown)
                        };
                        let (outcome, fill) = self.rules.source_read(self.now, ticket, source);
                        match outcome {
                            ReadOutcome::Value(got) => {
                                self.check_read(key, started, floor, got.as_ref())
                            }
                            ReadOutcome::Degraded(_) => {
                                assert!(!self.source_up, "degraded while the source is up");
                                self.counters.degraded += 1;
                            }
                            ReadOutcome::Unavailable => assert!(!self.source_up),
                        }
                        if let Some(entry) = fill {
                            self.pending.push(Pending::Fill { key, entry });
                        }
                    }
                    Pending::Fill { key, entry } => {
                        self.put_cache(key, entry);
                    }
                    Pending::Update { key, entry } => {
                        let version = entry.version;
                        if self.rng.below(8) == 0 {
                            self.counters.failed_updates += 1;
                        } else if self.put_cache(key, entry) {
                            let floor = self.floor.entry(key).or_insert(0);
                            *floor = (*floor).max(version);
                        }
                    }
                }
            }
            80..=84 => {
                let key = self.rng.below(KEYS);
                if self.cache.remove(&key).is_some() {
                    self.counters.evictions += 1;
                }
                self.floor.remove(&key);
            }
            85..=87 => {
                self.source_up = !self.source_up;
                if !self.source_up {
                    self.counters.outages += 1;
                }
            }
            _ => self.now = self.now + Duration::from_millis(1 + self.rng.below(TTL_MS / 5)),
        }
    }
}

fn run(seeds: std::ops::Range<u64>, naive: bool) -> Counters {
    let mut total = Counters::default();
    for seed in seeds {
        let mut world = World::new(seed, naive);
        for _ in 0..2_000 {
            world.step();
        }
        let c = world.counters;
        total.reads_checked += c.reads_checked;
        total.hits += c.hits;
        total.refused += c.refused;
        total.evictions += c.evictions;
        total.failed_updates += c.failed_updates;
        total.degraded += c.degraded;
        total.outages += c.outages;
        total.bound_violations += c.bound_violations;
        total.floor_violations += c.floor_violations;
    }
    total
}

#[test]
fn reads_respect_the_staleness_bound_under_races_evictions_and_outages() {
    let c = run(0..300, false);
    eprintln!("{c:?}");
    assert_eq!((c.bound_violations, c.floor_violations), (0, 0), "{c:?}");
    // The faults and races happened, and reads were checked.
    assert!(c.reads_checked > 50_000, "{c:?}");
    assert!(c.hits > 1_000 && c.refused > 100, "{c:?}");
    assert!(c.evictions > 100 && c.failed_updates > 100, "{c:?}");
    assert!(c.outages > 100 && c.degraded > 100, "{c:?}");
}

#[test]
fn a_cache_that_ignores_versions_is_caught() {
    let c = run(0..300, true);
    assert!(c.floor_violations > 0, "the check cannot fail: {c:?}");
}
