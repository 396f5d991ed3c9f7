//! Datagrams: unreliable, unordered messages between bound ports (loss, duplication, reorder).

use super::{NetError, Network};
use crate::event::WorldEvent;
use crate::host::HostEvent;
use crate::ids::{HostId, Port};
use crate::queue::EventQueue;
use crate::stats::SimStats;
use bytes::Bytes;
use tunnox_core::time::{Duration, Instant};

/// Loss, duplication and reordering of datagrams (on top of the latency model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatagramConfig {
    /// Probability a datagram is lost.
    pub drop_probability: f64,
    /// Probability a (surviving) datagram is delivered twice.
    pub duplicate_probability: f64,
    /// Probability a copy gets an extra random delay (reordering it past later ones).
    pub reorder_probability: f64,
    /// Largest extra delay of a reordered copy.
    pub reorder_delay_max: Duration,
}

impl Default for DatagramConfig {
    fn default() -> Self {
        DatagramConfig {
            drop_probability: 0.01,
            duplicate_probability: 0.005,
            reorder_probability: 0.02,
            reorder_delay_max: Duration::from_millis(20),
        }
    }
}

impl Network {
    /// Sends a datagram from `me:from_port` to `to:to_port`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_datagram(
        &mut self,
        now: Instant,
        me: HostId,
        from_port: Port,
        to: HostId,
        to_port: Port,
        bytes: Bytes,
        q: &mut EventQueue<WorldEvent>,
        stats: &mut SimStats,
    ) -> Result<(), NetError> {
        let bound = self
            .hosts
            .get(me.index())
            .is_some_and(|h| h.udp_ports.contains(&from_port));
        if !bound {
            return Err(NetError::PortNotBound(from_port));
        }
        stats.datagrams_sent += 1;
        if to.index() >= self.hosts.len() {
            stats.datagrams_unbound += 1;
            return Ok(());
        }
        if self.links.blocked(me, to) {
            stats.datagrams_blocked += 1;
            return Ok(());
        }
        let cfg = self.config.datagram;
        let rng = &mut self.datagram_rng;
        if rng.unit_f64() < cfg.drop_probability {
            stats.datagrams_dropped += 1;
            return Ok(());
        }
        let copies = if rng.unit_f64() < cfg.duplicate_probability {
            stats.datagrams_duplicated += 1;
            2
        } else {
            1
        };
        let reorder_max_ns = u64::try_from(cfg.reorder_delay_max.as_nanos()).unwrap_or(u64::MAX);
        for _ in 0..copies {
            let mut lat =
                self.config.latency.sample(rng, self.heavy_tail) + self.links.spike(me, to);
            if reorder_max_ns > 0 && rng.unit_f64() < cfg.reorder_probability {
                stats.datagrams_reordered += 1;
                lat += Duration::from_nanos(1 + rng.below(reorder_max_ns));
            }
            q.push(
                now + lat,
                WorldEvent::Datagram {
                    from: me,
                    from_port,
                    to,
                    to_port,
                    bytes: bytes.clone(),
                },
            );
        }
        Ok(())
    }

    /// A datagram reaches `to`: delivered if the path is open and the port bound.
    pub(crate) fn on_datagram(
        &mut self,
        from: HostId,
        from_port: Port,
        to: HostId,
        to_port: Port,
        bytes: Bytes,
        stats: &mut SimStats,
    ) -> Option<HostEvent> {
        if self.links.blocked(from, to) {
            stats.datagrams_blocked += 1;
            return None;
        }
        let bound = self
            .hosts
            .get(to.index())
            .is_some_and(|h| h.up && h.udp_ports.contains(&to_port));
        if !bound {
            stats.datagrams_unbound += 1;
            return None;
        }
        stats.datagrams_delivered += 1;
        Some(HostEvent::Datagram {
            from: (from, from_port),
            to_port,
            bytes,
        })
    }
}
