//! Event dispatch: popping the queue, handing events to hosts, timers, checks, lifecycle.

use super::{SimError, World};
use crate::event::WorldEvent;
use crate::host::{HostCtx, HostEvent};
use crate::ids::HostId;
use crate::stats::{CRASH_WITH_LIVE_CONNECTIONS, PAUSE_DEFERRED_EVENTS};
use crate::trace::{TraceKind, fmt_time};
use tunnox_core::time::Instant;

/// After this many consecutive timers each followed by a request for a deadline no later than the
/// one that just fired, the host is judged to be spinning.
const TIMER_STREAK_MAX: u32 = 10_000;

impl World {
    /// Processes the next queued event; `false` if the queue is empty.
    pub fn step(&mut self) -> Result<bool, SimError> {
        let Some((at, event)) = self.queue.pop() else {
            return Ok(false);
        };
        self.now = self.now.max(at);
        self.stats.events_processed += 1;
        let (tag, id) = event.trace_tag();
        self.trace.queue_event(at, tag, id);
        if let Some(limit) = self.event_limit
            && self.stats.events_processed > limit
        {
            return Err(SimError::EventLimit {
                limit,
                time: fmt_time(self.now),
            });
        }
        if let Some(host) = event.target_host()
            && let Some(slot) = self.hosts.get_mut(host.index())
            && slot.paused
        {
            slot.deferred.push_back(event);
            self.stats.events_deferred += 1;
            self.stats.count(PAUSE_DEFERRED_EVENTS, 1);
            return Ok(true);
        }
        let now = self.now;
        match event {
            WorldEvent::Start { host } => {
                let Some(slot) = self.hosts.get_mut(host.index()) else {
                    return Ok(true);
                };
                if slot.started {
                    return Ok(true);
                }
                slot.started = true;
                if let Some(h) = self.net.hosts.get_mut(host.index()) {
                    h.up = true;
                }
                self.dispatch(host, HostEvent::Started)?;
            }
            WorldEvent::Timer { host, generation } => self.on_timer(host, generation)?,
            WorldEvent::Deliver {
                key,
                dir,
                generation,
                to,
            } => {
                let dir = usize::from(dir);
                if let Some(ev) =
                    self.net
                        .on_deliver(now, key, dir, generation, &mut self.queue, &mut self.stats)
                {
                    self.dispatch(to, ev)?;
                }
            }
            WorldEvent::StallCheck {
                key,
                dir,
                stall_gen,
            } => {
                self.net.on_stall_check(
                    now,
                    key,
                    usize::from(dir),
                    stall_gen,
                    &mut self.queue,
                    &mut self.stats,
                );
            }
            WorldEvent::ConnectTimeout { key, host } => {
                if let Some(ev) =
                    self.net
                        .on_connect_timeout(now, key, &mut self.queue, &mut self.stats)
                {
                    self.dispatch(host, ev)?;
                }
            }
            WorldEvent::Abort { conn, host } => {
                if let Some(ev) = self.net.on_abort(conn, &mut self.stats) {
                    self.dispatch(host, ev)?;
                }
            }
            WorldEvent::Datagram {
                from,
                from_port,
                to,
                to_port,
                bytes,
            } => {
                if let Some(ev) =
                    self.net
                        .on_datagram(from, from_port, to, to_port, bytes, &mut self.stats)
                {
                    self.dispatch(to, ev)?;
                }
            }
            WorldEvent::Fault { epoch, index } => {
                if epoch == self.fault_epoch {
                    self.apply_fault(index as usize)?;
                } else {
                    self.stats.stale_events += 1;
                }
            }
            WorldEvent::FaultStep { epoch, step } => {
                if epoch == self.fault_epoch {
                    self.apply_step(step)?;
                } else {
                    self.stats.stale_events += 1;
                }
            }
        }
        Ok(true)
    }

    /// Hands `event` to `host` (dropped if it is down), then checks and re-arms its timer.
    fn dispatch(&mut self, host: HostId, event: HostEvent) -> Result<(), SimError> {
        let now = self.now;
        let Some(slot) = self.hosts.get_mut(host.index()) else {
            return Ok(());
        };
        if !slot.started || slot.crashed {
            self.stats.events_to_down_hosts += 1;
            return Ok(());
        }
        let local = slot.local_now(now);
        let (kind, conn, len) = event.trace_parts();
        if self.trace.enabled() {
            let name = &slot.name;
            self.trace
                .line(|| format!("{} {host} {name}: {event}", fmt_time(now)));
        }
        let mut ctx = HostCtx {
            me: host,
            now_local: local,
            now_global: now,
            net: &mut self.net,
            queue: &mut self.queue,
            stats: &mut self.stats,
            trace: &mut self.trace,
            knobs: &self.knobs,
            rng: &mut slot.rng,
            buggify_salt: self.buggify_salt,
        };
        slot.host.on_event(local, event, &mut ctx);
        self.after_host_event(host, kind, conn, len)
    }

    /// Trace, invariants, timer re-arm and the global checker after a host handled something.
    fn after_host_event(
        &mut self,
        host: HostId,
        kind: TraceKind,
        conn: u64,
        len: u64,
    ) -> Result<(), SimError> {
        let now = self.now;
        let Some(slot) = self.hosts.get_mut(host.index()) else {
            return Ok(());
        };
        self.stats.host_events += 1;
        let digest = slot.host.digest();
        self.trace.record(now, host, kind, conn, len, digest);
        self.stats.invariant_checks += 1;
        if let Err(detail) = slot.host.check_invariants() {
            return Err(SimError::Invariant {
                host,
                name: slot.name.clone(),
                time: fmt_time(now),
                detail,
            });
        }
        self.arm_timer(host, kind == TraceKind::Timer)?;
        if let Some(mut checker) = self.checker.take() {
            self.stats.checker_runs += 1;
            let verdict = checker(self);
            self.checker = Some(checker);
            if let Err(detail) = verdict {
                return Err(SimError::Checker {
                    time: fmt_time(now),
                    detail,
                });
            }
        }
        Ok(())
    }

    /// Re-queries the host's timer and queues a new timer event if the deadline changed.
    pub(super) fn arm_timer(&mut self, host: HostId, after_timer: bool) -> Result<(), SimError> {
        let now = self.now;
        let Some(slot) = self.hosts.get_mut(host.index()) else {
            return Ok(());
        };
        if !slot.started || slot.crashed {
            return Ok(());
        }
        let want = slot.host.next_timer();
        if after_timer {
            let fired = slot.timer_fired_deadline;
            if want.is_some_and(|d| fired.is_some_and(|f| d <= f)) {
                slot.timer_streak += 1;
                if slot.timer_streak > TIMER_STREAK_MAX {
                    return Err(SimError::TimerLoop {
                        host,
                        name: slot.name.clone(),
                        streak: slot.timer_streak,
                        time: fmt_time(now),
                    });
                }
            } else {
                slot.timer_streak = 0;
            }
        }
        if want == slot.timer_deadline {
            return Ok(());
        }
        slot.timer_gen = slot.timer_gen.wrapping_add(1);
        slot.timer_deadline = want;
        if let Some(deadline) = want {
            let at = slot.clock.global_for_local(deadline, now);
            self.queue.push(
                at,
                WorldEvent::Timer {
                    host,
                    generation: slot.timer_gen,
                },
            );
        }
        Ok(())
    }

    /// Forgets the armed timer and arms again (after the host's clock changed).
    pub(super) fn rearm_timer(&mut self, host: HostId) -> Result<(), SimError> {
        if let Some(slot) = self.hosts.get_mut(host.index()) {
            slot.timer_gen = slot.timer_gen.wrapping_add(1);
            slot.timer_deadline = None;
        }
        self.arm_timer(host, false)
    }

    /// A timer event: fires if still valid, after checking it is not early in host-local time.
    fn on_timer(&mut self, host: HostId, generation: u32) -> Result<(), SimError> {
        let now = self.now;
        let Some(slot) = self.hosts.get_mut(host.index()) else {
            return Ok(());
        };
        let Some(deadline) = slot.timer_deadline else {
            self.stats.stale_events += 1;
            return Ok(());
        };
        if generation != slot.timer_gen || !slot.started || slot.crashed {
            self.stats.stale_events += 1;
            return Ok(());
        }
        let asked = slot.host.next_timer();
        if asked != Some(deadline) {
            // The host's answer changed without an event (impure `next_timer`): follow it.
            return self.rearm_timer(host);
        }
        let local = slot.clock.local_at(now).max(slot.last_local);
        self.stats.timer_checks += 1;
        if local < deadline {
            return Err(SimError::TimerEarly {
                host,
                local_ns: local.as_nanos(),
                deadline_ns: deadline.as_nanos(),
            });
        }
        slot.timer_deadline = None;
        slot.timer_fired_deadline = Some(deadline);
        self.stats.timers_fired += 1;
        self.dispatch(host, HostEvent::Timer)
    }

    /// Crashes `host`: volatile state dropped, connections reset at peers. `false` if it was not
    /// running.
    pub(super) fn crash_host(&mut self, host: HostId) -> bool {
        let now = self.now;
        let Some(slot) = self.hosts.get_mut(host.index()) else {
            return false;
        };
        if !slot.started || slot.crashed {
            return false;
        }
        slot.host.crash();
        slot.crashed = true;
        slot.paused = false;
        slot.timer_gen = slot.timer_gen.wrapping_add(1);
        slot.timer_deadline = None;
        slot.timer_streak = 0;
        // Let deferred events run their network bookkeeping; the host itself is down.
        for event in slot.deferred.drain(..) {
            self.queue.push(now, event);
        }
        let digest = slot.host.digest();
        self.trace.record(now, host, TraceKind::Crash, 0, 0, digest);
        let name = &slot.name;
        self.trace
            .line(|| format!("{} {host} {name}: CRASH", fmt_time(now)));
        let live = self
            .net
            .crash_host(now, host, &mut self.queue, &mut self.stats);
        if live > 0 {
            self.stats.count(CRASH_WITH_LIVE_CONNECTIONS, 1);
        }
        self.stats.crashes += 1;
        true
    }

    /// Restarts a crashed host (`Host::restart`). `false` if it was not crashed.
    pub(super) fn restart_host(&mut self, host: HostId) -> Result<bool, SimError> {
        let now = self.now;
        let Some(slot) = self.hosts.get_mut(host.index()) else {
            return Ok(false);
        };
        if !slot.crashed {
            return Ok(false);
        }
        slot.crashed = false;
        if let Some(h) = self.net.hosts.get_mut(host.index()) {
            h.up = true;
        }
        self.stats.restarts += 1;
        let local = slot.local_now(now);
        let name = &slot.name;
        self.trace
            .line(|| format!("{} {host} {name}: RESTART", fmt_time(now)));
        let mut ctx = HostCtx {
            me: host,
            now_local: local,
            now_global: now,
            net: &mut self.net,
            queue: &mut self.queue,
            stats: &mut self.stats,
            trace: &mut self.trace,
            knobs: &self.knobs,
            rng: &mut slot.rng,
            buggify_salt: self.buggify_salt,
        };
        slot.host.restart(local, &mut ctx);
        self.after_host_event(host, TraceKind::Restart, 0, 0)?;
        Ok(true)
    }

    /// Pauses `host`: its events wait until resumed. `false` if it was not running.
    pub(super) fn pause_host(&mut self, host: HostId) -> bool {
        match self.hosts.get_mut(host.index()) {
            Some(slot) if slot.started && !slot.crashed && !slot.paused => {
                slot.paused = true;
                true
            }
            _ => false,
        }
    }

    /// Resumes `host`: events deferred while paused are queued now, in their original order.
    pub(super) fn resume_host(&mut self, host: HostId) {
        let now: Instant = self.now;
        if let Some(slot) = self.hosts.get_mut(host.index())
            && slot.paused
        {
            slot.paused = false;
            for event in slot.deferred.drain(..) {
                self.queue.push(now, event);
            }
        }
    }
}
