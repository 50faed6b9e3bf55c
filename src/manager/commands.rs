//! Operators' commands to a running manager (`slotman reload`, `restart`,
//! `drain`, `pause`, `resume`): what each does to the pools, and when it is
//! answered.

use std::collections::BTreeMap;

use super::pool::{Pool, SlotCmd, SlotState};
use super::Manager;
use crate::config::HandlerKind;

/// What an operator can ask of a running manager.
#[derive(Debug)]
pub enum Command {
    /// Re-read the config: answered once applied, or refused with why.
    Reload,
    /// Replace every slot of these workers (all when empty), the new slot
    /// ready before the old one drains; answered when done.
    Restart(Vec<String>),
    /// The slot (or every slot of the worker) finishes its job and is
    /// replaced.
    Drain { worker: String, slot: Option<u32> },
    /// The worker's slots take no new job (`true`) or take jobs again.
    Pause(String, bool),
}

/// Where a command's answer goes: what was done, or why not.
pub type Reply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// A `slotman restart` under way.
pub(super) struct Restart {
    workers: Vec<String>,
    slots: usize,
    reply: Reply,
}

/// A `slotman pause` waiting for its slots to confirm: answered once no
/// slot of the worker can start a new job.
pub(super) struct PendingPause {
    worker: String,
    answer: String,
    reply: Reply,
}

impl Manager {
    /// Carries out an operator's command; the answer goes to `reply` now,
    /// or (restart) once every slot has been replaced.
    pub(super) fn command(&mut self, command: Command, reply: Reply) {
        if self.stopping.is_some() {
            let _ = reply.send(Err("the service is stopping".into()));
            return;
        }
        let unknown = |pools: &BTreeMap<String, Pool>, w: &str| {
            (!pools.contains_key(w)).then(|| {
                let known: Vec<&str> = pools.keys().map(String::as_str).collect();
                format!("no worker {w:?} (workers: {})", known.join(", "))
            })
        };
        let answer = match command {
            Command::Reload => self.reload(),
            Command::Restart(workers) => {
                if let Some(e) = workers.iter().find_map(|w| unknown(&self.pools, w)) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let workers = match workers.is_empty() {
                    true => self.pools.keys().cloned().collect(),
                    false => workers,
                };
                let mut slots = 0;
                for w in &workers {
                    if self.pools.get(w).is_some_and(|p| p.paused) {
                        self.pause(w, false);
                    }
                    if let Some(pool) = self.pools.get_mut(w) {
                        pool.generation += 1;
                        slots += pool.active();
                    }
                }
                tracing::info!(
                    "restart of {}: replacing {slots} slots one at a time",
                    workers.join(", ")
                );
                self.restarts.push(Restart {
                    workers,
                    slots,
                    reply,
                });
                return;
            }
            Command::Drain { worker, slot } => match unknown(&self.pools, &worker) {
                Some(e) => Err(e),
                None => self.drain(&worker, slot),
            },
            Command::Pause(worker, on) => match self.pools.get(&worker) {
                None => Err(unknown(&self.pools, &worker).unwrap_or_default()),
                Some(p) if p.worker.kind == HandlerKind::Native && !p.worker.proxy => Err(format!(
                    "{worker} runs native workers with proxy = false: slotman does not \
                     see their jobs, so it cannot pause them"
                )),
                Some(_) if on => {
                    let answer = self.pause(&worker, true);
                    self.pauses.push(PendingPause {
                        worker,
                        answer,
                        reply,
                    });
                    return;
                }
                Some(_) => Ok(self.pause(&worker, false)),
            },
        };
        let _ = reply.send(answer);
    }

    /// Answers the commands that wait for the slots: restarts and pauses.
    pub(super) fn finish_commands(&mut self) {
        self.finish_restarts();
        self.finish_pauses();
    }

    /// Answers the pauses that took effect: every slot of the worker has
    /// confirmed, or cannot take a job anyway (starting: it honours the
    /// pause once up; leaving: its gate is closed).
    fn finish_pauses(&mut self) {
        let pools = &self.pools;
        let stopping = self.stopping.is_some();
        let (done, pending): (Vec<PendingPause>, Vec<PendingPause>) =
            std::mem::take(&mut self.pauses).into_iter().partition(|p| {
                stopping
                    || pools.get(&p.worker).is_none_or(|pool| {
                        !pool.paused
                            || pool.slots.values().all(|s| {
                                s.pause_taken
                                    || s.exit_expected
                                    || matches!(s.state, SlotState::Starting | SlotState::Draining)
                            })
                    })
            });
        self.pauses = pending;
        for p in done {
            let answer = match pools.get(&p.worker) {
                _ if stopping => {
                    Err("the service began to stop before the pause took effect".into())
                }
                None => Err(format!("{} was removed by a reload", p.worker)),
                Some(pool) if !pool.paused => Err(format!(
                    "{} was resumed before every slot had paused",
                    p.worker
                )),
                Some(_) => Ok(p.answer),
            };
            let _ = p.reply.send(answer);
        }
    }

    /// Answers the restarts that are done: no slot of their workers is
    /// outdated any more.
    fn finish_restarts(&mut self) {
        let pools = &self.pools;
        let stopping = self.stopping.is_some();
        let (done, pending): (Vec<Restart>, Vec<Restart>) = std::mem::take(&mut self.restarts)
            .into_iter()
            .partition(|r| {
                stopping
                    || r.workers.iter().all(|w| {
                        pools.get(w).is_none_or(|p| {
                            p.faults.failed
                                || p.slots.values().all(|s| s.generation == p.generation)
                        })
                    })
            });
        self.restarts = pending;
        for r in done {
            let failed: Vec<&str> = r
                .workers
                .iter()
                .filter(|w| pools.get(*w).is_some_and(|p| p.faults.failed))
                .map(String::as_str)
                .collect();
            let answer = if stopping {
                Err("the service began to stop before the restart was done".to_string())
            } else if !failed.is_empty() {
                Err(format!(
                    "restart stopped: {} marked failed (see slotman status)",
                    failed.join(", ")
                ))
            } else {
                tracing::info!("restart of {} done", r.workers.join(", "));
                Ok(format!(
                    "replaced {} slots of {}",
                    r.slots,
                    r.workers.join(", ")
                ))
            };
            let _ = r.reply.send(answer);
        }
    }

    /// `slotman drain`: the slot (or every slot of the worker) finishes its
    /// job and is replaced, the new one first.
    pub(super) fn drain(&mut self, worker: &str, slot: Option<u32>) -> Result<String, String> {
        let Some(pool) = self.pools.get_mut(worker) else {
            return Err(format!("no worker {worker:?}"));
        };
        let ids: Vec<u32> = match slot {
            Some(id) if pool.slots.contains_key(&id) => vec![id],
            Some(id) => {
                let known: Vec<String> = pool.slots.keys().map(|i| i.to_string()).collect();
                return Err(format!(
                    "no slot {worker}#{id} (slots: {})",
                    known.join(", ")
                ));
            }
            None => pool.slots.keys().copied().collect(),
        };
        for id in &ids {
            if let Some(s) = pool.slots.get_mut(id) {
                // Outdated: the policy starts its replacement, then drains it.
                s.retire = true;
            }
        }
        let names: Vec<String> = ids.iter().map(|i| format!("{worker}#{i}")).collect();
        Ok(format!("replacing {}", names.join(", ")))
    }

    /// `slotman pause|resume`: tells every slot of the worker.
    pub(super) fn pause(&mut self, worker: &str, on: bool) -> String {
        let Some(pool) = self.pools.get_mut(worker) else {
            return format!("no worker {worker:?}");
        };
        pool.paused = on;
        for s in pool.slots.values_mut() {
            // Each pause waits for confirmations of its own.
            s.pause_taken = false;
            let _ = s.cmd.send(SlotCmd::Pause(on));
        }
        let what = if on {
            "paused: its slots finish their jobs in hand and take no new ones"
        } else {
            "resumed"
        };
        tracing::info!(worker, "worker {worker} {what}");
        format!("{worker} {what}")
    }
}
