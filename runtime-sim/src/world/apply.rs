//! Applying scheduled faults, their later steps, and healing everything for the liveness phase.

use super::{SimError, World};
use crate::event::{FaultStep, WorldEvent};
use crate::faults::FaultAction;
use crate::ids::HostId;
use crate::stats::PARTITION_HEALED_WITH_DATA_IN_FLIGHT;
use crate::trace::{TraceKind, fmt_time};
use tunnox_core::time::{Duration, Instant};

impl World {
    fn later(&mut self, after: Duration, step: FaultStep) {
        let at = self.now + after;
        self.queue.push(
            at,
            WorldEvent::FaultStep {
                epoch: self.fault_epoch,
                step,
            },
        );
    }

    fn token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token
    }

    /// Applies schedule entry `index` now.
    pub(super) fn apply_fault(&mut self, index: usize) -> Result<(), SimError> {
        let Some((_, action)) = self.schedule.entries.get(index).cloned() else {
            return Ok(());
        };
        let now = self.now;
        let kind = action.kind();
        let applied = match &action {
            FaultAction::Partition { a, b, duration } => {
                self.net.links.block(*a, *b);
                self.net.links.block(*b, *a);
                self.later(*duration, FaultStep::Unblock { from: *a, to: *b });
                self.later(*duration, FaultStep::Unblock { from: *b, to: *a });
                true
            }
            FaultAction::Isolate { host, duration } => {
                self.net.links.clog(*host);
                self.later(*duration, FaultStep::Unclog { host: *host });
                true
            }
            FaultAction::OneWayPartition { from, to, duration } => {
                self.net.links.block(*from, *to);
                self.later(
                    *duration,
                    FaultStep::Unblock {
                        from: *from,
                        to: *to,
                    },
                );
                true
            }
            FaultAction::SwizzleClog {
                order,
                step,
                hold,
                unclog_order,
            } => {
                let mut after = Duration::ZERO;
                for (i, host) in order.iter().enumerate() {
                    if i > 0 {
                        after += *step;
                    }
                    self.later(after, FaultStep::Clog { host: *host });
                }
                after += *hold;
                for (i, host) in unclog_order.iter().enumerate() {
                    if i > 0 {
                        after += *step;
                    }
                    self.later(after, FaultStep::Unclog { host: *host });
                }
                !order.is_empty()
            }
            FaultAction::HoldRelease { pick, duration } => {
                let allowed: Vec<bool> = self.hosts.iter().map(|s| s.faults.partition).collect();
                let key = self
                    .net
                    .pick_conn(*pick, |h| allowed.get(h.index()).copied().unwrap_or(false));
                match key {
                    Some(key) if self.net.hold(key) => {
                        self.later(*duration, FaultStep::Release { key });
                        true
                    }
                    _ => false,
                }
            }
            FaultAction::LatencySpike {
                a,
                b,
                extra_latency,
                duration,
            } => {
                let token = self.token();
                self.net.links.set_spike(*a, *b, *extra_latency, token);
                self.later(
                    *duration,
                    FaultStep::EndSpike {
                        a: *a,
                        b: *b,
                        token,
                    },
                );
                true
            }
            FaultAction::ConnectionReset { pick } => {
                let allowed: Vec<bool> = self.hosts.iter().map(|s| s.faults.reset).collect();
                let key = self
                    .net
                    .pick_conn(*pick, |h| allowed.get(h.index()).copied().unwrap_or(false));
                match key {
                    Some(key) => {
                        self.net.abort(now, key, &mut self.queue, &mut self.stats);
                        true
                    }
                    None => false,
                }
            }
            FaultAction::CrashRestart {
                host,
                restart_after,
            } => {
                if self.crash_host(*host) {
                    self.later(*restart_after, FaultStep::Restart { host: *host });
                    true
                } else {
                    false
                }
            }
            FaultAction::Pause { host, duration } => {
                if self.pause_host(*host) {
                    self.later(*duration, FaultStep::Resume { host: *host });
                    true
                } else {
                    false
                }
            }
            FaultAction::ClockSkew { host, jump } => match self.hosts.get_mut(host.index()) {
                Some(slot) => {
                    slot.clock.jump(now, *jump);
                    self.rearm_timer(*host)?;
                    true
                }
                None => false,
            },
            FaultAction::ClockDrift { host, drift_ppm } => match self.hosts.get_mut(host.index()) {
                Some(slot) => {
                    slot.clock.set_drift(now, *drift_ppm);
                    self.rearm_timer(*host)?;
                    true
                }
                None => false,
            },
            FaultAction::SlowConsumer {
                host,
                bytes_per_sec,
                duration,
            } => {
                let token = self.token();
                match self.net.hosts.get_mut(host.index()) {
                    Some(h) => {
                        h.throttle = Some((*bytes_per_sec, token));
                        h.inbound_free_at = h.inbound_free_at.max(now);
                        self.later(*duration, FaultStep::EndThrottle { host: *host, token });
                        true
                    }
                    None => false,
                }
            }
        };
        self.trace.record(
            now,
            HostId(u32::MAX),
            TraceKind::Fault,
            index as u64,
            u64::from(applied),
            0,
        );
        self.trace.line(|| {
            let skipped = if applied { "" } else { " (skipped)" };
            format!("{} FAULT {action}{skipped}", fmt_time(now))
        });
        if applied {
            self.stats.fault(kind);
        } else {
            self.stats.faults_skipped += 1;
        }
        Ok(())
    }

    /// Applies the later step of a fault.
    pub(super) fn apply_step(&mut self, step: FaultStep) -> Result<(), SimError> {
        let now = self.now;
        match step {
            FaultStep::Unblock { from, to } => {
                self.net.links.unblock(from, to);
                self.unblocked();
            }
            FaultStep::Clog { host } => self.net.links.clog(host),
            FaultStep::Unclog { host } => {
                self.net.links.unclog(host);
                self.unblocked();
            }
            FaultStep::Release { key } => {
                self.net.release(now, key, &mut self.queue, &mut self.stats);
            }
            FaultStep::EndSpike { a, b, token } => self.net.links.end_spike(a, b, token),
            FaultStep::EndThrottle { host, token } => {
                let current = self.net.hosts.get(host.index()).and_then(|h| h.throttle);
                if current.is_some_and(|(_, t)| t == token) {
                    self.net.end_throttle(now, host, &mut self.queue);
                }
            }
            FaultStep::Resume { host } => self.resume_host(host),
            FaultStep::Restart { host } => {
                self.restart_host(host)?;
            }
        }
        Ok(())
    }

    /// A block or clog was lifted: stalled pipes whose path is open flow again.
    fn unblocked(&mut self) {
        let now: Instant = self.now;
        self.net.unblock_stalled(
            now,
            &mut self.queue,
            &mut self.stats,
            PARTITION_HEALED_WITH_DATA_IN_FLIGHT,
        );
    }

    /// Ends the chaos phase: no more faults; partitions, clogs, holds, spikes and throttles end,
    /// paused hosts resume and crashed hosts restart.
    pub fn heal(&mut self) -> Result<(), SimError> {
        self.fault_epoch = self.fault_epoch.wrapping_add(1);
        let now = self.now;
        self.trace.line(|| format!("{} HEAL", fmt_time(now)));
        self.net.links.clear();
        self.net.release_all();
        let ids: Vec<HostId> = self.host_ids().collect();
        for host in &ids {
            self.net.end_throttle(now, *host, &mut self.queue);
        }
        self.unblocked();
        for host in &ids {
            self.resume_host(*host);
        }
        for host in ids {
            let _restarted = self.restart_host(host)?;
        }
        Ok(())
    }
}
