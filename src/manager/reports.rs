//! What slots report (placed, ready, busy, done, link, exiting, exited)
//! entered in their pool, and failures counted against the worker.

use std::time::Instant;

use super::pool::{self, Pool, SlotState};
use super::{health, Manager, SlotEvent};
use crate::slot::report::{ExitReason, Report};

impl Manager {
    pub(super) fn slot_event(&mut self, worker: &str, id: u32, ev: SlotEvent) {
        let now = pool::now();
        let Some(pool) = self.pools.get_mut(worker) else {
            return;
        };
        match ev {
            SlotEvent::Placed { pid, unit } => {
                if let Some(s) = pool.slots.get_mut(&id) {
                    s.pid = Some(pid);
                    s.unit = unit;
                }
            }
            SlotEvent::PlaceFailed(why) => {
                if let Some(cpu) = pool.slots.remove(&id).and_then(|s| s.cpu) {
                    self.cpus.give_back(cpu);
                }
                tracing::error!(worker, slot = id, "cannot start slot {worker}#{id}: {why}");
                pool.failed(format!("cannot start a slot: {why}"), true, now);
                Self::failure(worker, pool, now, true);
            }
            SlotEvent::Report(r) => Self::report(worker, pool, id, r, now),
            SlotEvent::Exited { status } => {
                let Some(slot) = pool.slots.remove(&id) else {
                    return;
                };
                pool.left(slot.id, [slot.pid, slot.reported_pid], now);
                if let Some(cpu) = slot.cpu {
                    self.cpus.give_back(cpu);
                }
                if slot.exit_expected && (slot.was_ready || slot.drained) {
                    tracing::debug!(worker, slot = id, "slot {worker}#{id} left ({status})");
                } else {
                    let what = if slot.was_ready {
                        "exited unexpectedly"
                    } else {
                        "failed to start"
                    };
                    tracing::warn!(
                        worker,
                        slot = id,
                        "slot {worker}#{id} {what} ({status}) after {} jobs",
                        slot.jobs_done
                    );
                    pool.counters.restarts += 1;
                    // A start failure's own words came in `start_failed`.
                    if slot.was_ready || pool.failing.is_none() {
                        pool.failed(format!("slot {what} ({status})"), !slot.was_ready, now);
                    }
                    Self::failure(worker, pool, now, !slot.was_ready);
                }
                if pool.removed && pool.slots.is_empty() {
                    tracing::info!(worker, "worker {worker} removed: all its slots have left");
                    self.pools.remove(worker);
                }
            }
        }
    }

    /// A slot failed; `at_start`: before it was ready.
    fn failure(worker: &str, pool: &mut Pool, now: Instant, at_start: bool) {
        let limit_hit = match at_start {
            true => pool.faults.start_failure(now),
            false => pool.faults.failure(now),
        };
        if limit_hit {
            let row = match at_start {
                true => format!(" or {} failed starts in a row", pool::BURST_LIMIT),
                false => String::new(),
            };
            tracing::error!(worker, "worker {worker} marked failed: {} slot failures within {}s{row}; retrying in {}s (other workers are not affected)", pool::BURST_LIMIT, pool::BURST_WINDOW.as_secs(), pool::FAILED_RETRY.as_secs());
        } else if let Some(t) = pool.faults.hold_until {
            tracing::info!(
                worker,
                "next start of {worker} in {}ms (back-off after {} failures)",
                t.saturating_duration_since(now).as_millis(),
                pool.faults.consecutive
            );
        }
    }

    fn report(worker: &str, pool: &mut Pool, id: u32, r: Report, now: Instant) {
        let workleft = pool.worker.workleft;
        let Some(slot) = pool.slots.get_mut(&id) else {
            return;
        };
        match r {
            Report::Ready { pid } => {
                slot.pid.get_or_insert(pid);
                slot.reported_pid = Some(pid);
                slot.was_ready = true;
                pool.faults.started();
                if pool.failing.as_ref().is_some_and(|f| f.at_start) {
                    pool.failing = None;
                }
                if slot.state == SlotState::Starting {
                    slot.state = SlotState::Idle { since: now };
                }
                tracing::debug!(worker, slot = id, pid, "slot {worker}#{id} ready");
            }
            Report::Busy { function, handle } => {
                slot.job = Some(pool::JobInHand {
                    function: function.clone(),
                    handle: handle.clone(),
                    since: now,
                });
                if !matches!(slot.state, SlotState::Draining) {
                    slot.state = SlotState::Busy {
                        function,
                        handle,
                        since: now,
                    };
                }
            }
            Report::Done { jobs, idle } => {
                let n = jobs.total();
                slot.jobs_done += n;
                pool.rate.add_n(now, n);
                pool.durations.merge(&jobs.durations);
                for c in &jobs.functions {
                    pool.functions
                        .entry(c.name.clone())
                        .or_insert_with(|| crate::view::FunctionStats {
                            name: c.name.clone(),
                            ..Default::default()
                        })
                        .merge(c);
                    pool.counters.jobs_complete += c.complete;
                    pool.counters.jobs_failed += c.fail;
                    pool.counters.jobs_exception += c.exception;
                }
                if n > 0 {
                    pool.faults.success();
                    pool.failing = None;
                }
                if idle {
                    slot.job = None;
                }
                if workleft > 0
                    && slot.jobs_done >= workleft
                    && !matches!(slot.state, SlotState::Draining)
                {
                    tracing::info!(
                        worker,
                        slot = id,
                        reason = "workleft",
                        "recycle {worker}#{id}: workleft reached ({} jobs)",
                        slot.jobs_done
                    );
                    slot.exit_expected = true;
                    pool.counters.recycles += 1;
                    slot.job = None;
                    slot.state = SlotState::Draining;
                } else if idle && !matches!(slot.state, SlotState::Draining) {
                    slot.state = SlotState::Idle { since: now };
                }
            }
            // Kept by the slot task (slot_task.rs).
            Report::Handler { .. } => {}
            Report::Paused { on } => slot.pause_taken = on,
            Report::Registered { functions } => pool.announced = functions,
            Report::Link { server, error } => {
                let since = match slot.links.get(&server) {
                    Some(l) if l.error.is_some() == error.is_some() => l.since,
                    _ => now,
                };
                slot.links.insert(server, health::Link { error, since });
            }
            Report::StartFailed { why } => pool.failed(why, true, now),
            Report::Exiting { reason } => {
                match reason {
                    ExitReason::HandlerFailed => slot.exit_expected = false,
                    ExitReason::Workleft => slot.exit_expected = true,
                    ExitReason::Drained => {
                        slot.exit_expected = true;
                        slot.drained = true;
                    }
                    ExitReason::Memory => {
                        tracing::info!(
                            worker,
                            slot = id,
                            reason = "recycle_rss",
                            "recycle {worker}#{id}: its handler's memory passed recycle_rss"
                        );
                        slot.exit_expected = true;
                        pool.counters.recycles += 1;
                    }
                    ExitReason::OomKilled => {
                        // A job's fault, not the slot's: replace it without back-off.
                        tracing::warn!(worker, slot = id, reason = "oom", "replace {worker}#{id}: its handler was killed by the OOM killer (memory_max)");
                        slot.exit_expected = true;
                        pool.counters.restarts += 1;
                    }
                }
                // A failed start keeps counting as a (starting) slot until its
                // exit is seen: only then is the back-off in place, so the
                // policy cannot replace it in between without waiting.
                if reason != ExitReason::HandlerFailed && !matches!(slot.state, SlotState::Draining)
                {
                    slot.state = SlotState::Draining;
                }
            }
        }
    }
}
