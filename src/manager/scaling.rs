//! The policy applied: each pool's decision carried out (slots started,
//! drained), CPU pinning kept in step, READY= sent once every pool is up.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::mpsc;

use super::health::Health;
use super::policy::{self, Action, Reason};
use super::pool::{self, Pool, Slot, SlotCmd, SlotState};
use super::status::assess;
use super::{Launched, Manager};
use crate::config;
use crate::slot::report::SlotSpec;

impl Manager {
    /// `pin_cpu`: pinning is on while the service has more slots than
    /// CPUs; slots hear of it when that changes (or a reload changed the
    /// key), not per event.
    pub(super) fn update_pinning(&mut self) {
        let slots = self.pools.values().map(|p| p.slots.len()).sum();
        let on = self.cpus.pinning(slots);
        if on == self.pinning && !self.pin_changed {
            return;
        }
        if on != self.pinning {
            tracing::debug!(
                slots,
                "cpu pinning of stdio slots {}",
                if on { "on" } else { "off" }
            );
        }
        self.pinning = on;
        self.pin_changed = false;
        for pool in self.pools.values_mut() {
            let want = on && pool.worker.pin_cpu;
            for slot in pool.slots.values_mut() {
                if slot.cpu.is_some() && slot.pinned != want {
                    slot.pinned = want;
                    let _ = slot.cmd.send(SlotCmd::Pin(want));
                }
            }
        }
    }

    /// Runs the policy on every pool and carries out its actions. Returns the
    /// earliest instant it must run again without an event.
    pub(super) fn apply_policy(&mut self) -> Option<Instant> {
        let now = pool::now();
        let stopping = self.stopping.is_some();
        let mut wake: Option<Instant> = None;
        let due: Vec<String> = self
            .pool_wake
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut names = std::mem::take(&mut self.dirty);
        names.extend(due);
        for name in names {
            self.pool_wake.remove(&name);
            let Some(pool) = self.pools.get_mut(&name) else {
                continue;
            };
            // A failed worker whose hold has passed gets another try.
            if pool.faults.failed && pool.faults.hold_until.is_some_and(|t| t <= now) {
                tracing::info!(worker = %name, "retrying failed worker {name}");
                pool.faults.failed = false;
                pool.faults.consecutive = 0;
            }
            if pool.paused && !stopping {
                continue;
            }
            let decision = policy::decide(&pool.view(stopping), now);
            for action in decision.actions {
                match action {
                    Action::Start { count, reason } => {
                        // Growth for load is rate-limited; restoring min and
                        // replacing slots is not (capacity is owed).
                        let count = match reason {
                            Reason::AllBusy { .. } | Reason::Queued { .. } => {
                                let (got, next) =
                                    pool.spawn.take(count, pool.worker.max_spawn_rate, now);
                                if let Some(t) = next {
                                    wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
                                }
                                got
                            }
                            _ => count,
                        };
                        if count == 0 {
                            continue;
                        }
                        let before = pool.active();
                        let after = before + count as usize;
                        match reason {
                            Reason::BelowMin | Reason::ConfigChanged => {
                                tracing::info!(worker = %name, reason = %reason, "start {name} {before}→{after}: {reason}")
                            }
                            _ => {
                                tracing::info!(worker = %name, reason = %reason, "scale up {name} {before}→{after}: {reason}")
                            }
                        }
                        for _ in 0..count {
                            let cpu = match pool.worker.kind {
                                k if k.is_stdio() => self.cpus.take(),
                                _ => None,
                            };
                            let pin = self.pinning && pool.worker.pin_cpu;
                            let spec = start_slot(
                                (&self.config.service, self.config.stop_timeout),
                                pool,
                                (cpu, pin),
                            );
                            self.launch.launch(spec, &self.events_tx);
                        }
                    }
                    Action::Drain { slot, reason } => {
                        if let Some(s) = pool.slots.get_mut(&slot) {
                            match reason {
                                Reason::Idle(_) | Reason::AboveMax { .. } | Reason::Removed => {
                                    tracing::info!(worker = %name, slot, reason = %reason, "retire {name}#{slot}: {reason}")
                                }
                                Reason::Lifetime => {
                                    pool.counters.recycles += 1;
                                    tracing::info!(worker = %name, slot, reason = %reason, "recycle {name}#{slot}: {reason}")
                                }
                                _ => {
                                    tracing::info!(worker = %name, slot, reason = %reason, "recycle {name}#{slot}: {reason}")
                                }
                            }
                            s.exit_expected = true;
                            s.state = SlotState::Draining;
                            let _ = s.cmd.send(SlotCmd::Drain);
                        }
                    }
                }
            }
            if let Some(t) = decision.wake_at.into_iter().chain(wake).min() {
                self.pool_wake.insert(name.clone(), t);
            }
            wake = None;
        }
        self.pool_wake.retain(|n, _| self.pools.contains_key(n));
        let wake = self.pool_wake.values().min().copied();
        if !self.ready_sent
            && self
                .pools
                .values()
                .all(|p| p.ready() >= p.worker.min as usize || p.faults.failed)
        {
            self.ready_sent = true;
            self.notifier.ready();
            let unwell: Vec<String> = self
                .pools
                .iter()
                .filter_map(|(name, p)| {
                    let (health, problems) = assess(p);
                    (health != Health::Ok).then(|| {
                        let first = problems.first().map_or("", |p| p.text.as_str());
                        format!("{name} {}: {first}", health.as_str())
                    })
                })
                .collect();
            if unwell.is_empty() {
                tracing::info!("ready: every worker has its min slots up");
            } else {
                tracing::warn!(
                    "ready: pools started, but not every worker is healthy: {}",
                    unwell.join("; ")
                );
            }
        }
        wake
    }
}

/// Enters a new slot in `pool`; what to launch.
fn start_slot(
    (service, stop_timeout): (&str, std::time::Duration),
    pool: &mut Pool,
    (cpu, pin): (Option<u32>, bool),
) -> Launched {
    let id = pool.next_id;
    pool.next_id += 1;
    let now = pool::now();
    let recycle_at = pool.worker.max_lifetime.and_then(|life| {
        // Splay up to 10% so that slots started together do not recycle together.
        let splay = life.mul_f64(0.1 * fastrand::f64());
        // Checked: a lifetime the clock cannot hold is never reached.
        config::values::after(now, life).and_then(|t| config::values::after(t, splay))
    });
    let (tx, rx) = mpsc::unbounded_channel();
    pool.slots.insert(
        id,
        Slot {
            id,
            pid: None,
            unit: None,
            state: SlotState::Starting,
            started: now,
            generation: pool.generation,
            jobs_done: 0,
            job: None,
            recycle_at,
            exit_expected: false,
            was_ready: false,
            drained: false,
            cpu,
            pinned: pin,
            links: BTreeMap::new(),
            reported_pid: None,
            retire: false,
            pause_taken: false,
            cmd: tx,
        },
    );
    let spec = SlotSpec {
        service: service.to_string(),
        slot: id,
        worker: (*pool.worker).clone(),
        cpu,
        pin,
        stop_timeout: Some(stop_timeout),
    };
    Launched { spec, cmds: rx }
}
