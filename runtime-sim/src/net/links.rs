//! Link state between hosts: directional blocks (partitions), clogs, latency spikes.

use crate::ids::HostId;
use std::collections::BTreeMap;
use tunnox_core::time::Duration;

/// Which directions are cut and which links are slowed, shared by streams and datagrams.
#[derive(Debug, Clone, Default)]
pub(crate) struct Links {
    /// Number of hosts the tables cover.
    hosts: usize,
    /// `blocks[from * hosts + to]`: how many active faults block `from → to`.
    blocks: Vec<u16>,
    /// Sum of `blocks` (fast path: nothing blocked).
    blocks_total: u64,
    /// Per host: how many clogs/isolations are active (cuts it from every cuttable host).
    clogs: Vec<u32>,
    /// Sum of `clogs`.
    clogs_total: u64,
    /// Per host: whether partitions may involve it.
    cuttable: Vec<bool>,
    /// Extra latency per unordered host pair, with the token of the fault that set it.
    spikes: BTreeMap<(HostId, HostId), (Duration, u32)>,
}

fn pair(a: HostId, b: HostId) -> (HostId, HostId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Links {
    /// Adds a host (the next index), partitionable or not.
    pub(crate) fn add_host(&mut self, cuttable: bool) {
        let old = self.hosts;
        let new = old + 1;
        let mut blocks = vec![0u16; new * new];
        for from in 0..old {
            for to in 0..old {
                blocks[from * new + to] = self.blocks[from * old + to];
            }
        }
        self.blocks = blocks;
        self.hosts = new;
        self.clogs.push(0);
        self.cuttable.push(cuttable);
    }

    fn slot(&self, from: HostId, to: HostId) -> Option<usize> {
        let (f, t) = (from.index(), to.index());
        (f < self.hosts && t < self.hosts).then_some(f * self.hosts + t)
    }

    /// Whether bytes from `from` to `to` are currently cut off.
    #[inline]
    pub(crate) fn blocked(&self, from: HostId, to: HostId) -> bool {
        if (self.blocks_total == 0 && self.clogs_total == 0) || from == to {
            return false;
        }
        if let Some(i) = self.slot(from, to)
            && self.blocks[i] > 0
        {
            return true;
        }
        if self.clogs_total == 0 {
            return false;
        }
        let clogged = |h: HostId| self.clogs.get(h.index()).copied().unwrap_or(0) > 0;
        let cuttable = |h: HostId| self.cuttable.get(h.index()).copied().unwrap_or(false);
        (clogged(from) && cuttable(to)) || (clogged(to) && cuttable(from))
    }

    /// Adds one block on `from → to`.
    pub(crate) fn block(&mut self, from: HostId, to: HostId) {
        if let Some(i) = self.slot(from, to) {
            self.blocks[i] = self.blocks[i].saturating_add(1);
            self.blocks_total += 1;
        }
    }

    /// Removes one block on `from → to`.
    pub(crate) fn unblock(&mut self, from: HostId, to: HostId) {
        if let Some(i) = self.slot(from, to)
            && self.blocks[i] > 0
        {
            self.blocks[i] -= 1;
            self.blocks_total -= 1;
        }
    }

    /// Clogs `host`: cuts it from every partitionable host until unclogged.
    pub(crate) fn clog(&mut self, host: HostId) {
        if let Some(c) = self.clogs.get_mut(host.index()) {
            *c += 1;
            self.clogs_total += 1;
        }
    }

    /// Removes one clog of `host`.
    pub(crate) fn unclog(&mut self, host: HostId) {
        if let Some(c) = self.clogs.get_mut(host.index())
            && *c > 0
        {
            *c -= 1;
            self.clogs_total -= 1;
        }
    }

    /// Sets extra latency on `a ↔ b`, remembered with `token` so only that fault ends it.
    pub(crate) fn set_spike(&mut self, a: HostId, b: HostId, extra: Duration, token: u32) {
        self.spikes.insert(pair(a, b), (extra, token));
    }

    /// Ends the spike on `a ↔ b` if it is still the one set with `token`.
    pub(crate) fn end_spike(&mut self, a: HostId, b: HostId, token: u32) {
        let key = pair(a, b);
        if self.spikes.get(&key).is_some_and(|(_, t)| *t == token) {
            self.spikes.remove(&key);
        }
    }

    /// Extra latency currently on `a ↔ b`.
    #[inline]
    pub(crate) fn spike(&self, a: HostId, b: HostId) -> Duration {
        if self.spikes.is_empty() {
            return Duration::ZERO;
        }
        self.spikes
            .get(&pair(a, b))
            .map_or(Duration::ZERO, |(d, _)| *d)
    }

    /// Removes every block, clog and spike.
    pub(crate) fn clear(&mut self) {
        self.blocks.iter_mut().for_each(|b| *b = 0);
        self.clogs.iter_mut().for_each(|c| *c = 0);
        self.blocks_total = 0;
        self.clogs_total = 0;
        self.spikes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_clogs_and_growth() {
        let mut l = Links::default();
        for cuttable in [true, true, false] {
            l.add_host(cuttable);
        }
        let (a, b, c) = (HostId(0), HostId(1), HostId(2));
        l.block(a, b);
        l.block(a, b);
        l.add_host(true);
        assert!(l.blocked(a, b) && !l.blocked(b, a));
        l.unblock(a, b);
        assert!(l.blocked(a, b));
        l.unblock(a, b);
        assert!(!l.blocked(a, b) && l.blocks_total == 0);
        l.clog(a);
        assert!(l.blocked(a, b) && l.blocked(b, a));
        assert!(!l.blocked(a, c) && !l.blocked(c, a), "c is not cuttable");
        assert!(!l.blocked(a, a));
        l.unclog(a);
        assert!(!l.blocked(a, b));
        l.set_spike(b, a, Duration::from_millis(5), 1);
        l.end_spike(a, b, 2);
        assert_eq!(l.spike(a, b), Duration::from_millis(5));
        l.end_spike(a, b, 1);
        assert_eq!(l.spike(a, b), Duration::ZERO);
    }
}
