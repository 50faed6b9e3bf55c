//! Operators' commands to a running manager (`slotman reload`, `restart`,
//! `drain`, `pause`, `resume`): what each does to the pools, and when it is
//! answered.

use std::collections::BTreeMap;

use super::pool::{Pool, SlotCmd};
use super::Manager;

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
            Command::Pause(worker, on) => match unknown(&self.pools, &worker) {
                Some(e) => Err(e),
                None => Ok(self.pause(&worker, on)),
            },
        };
        let _ = reply.send(answer);
    }

    /// Answers the restarts that are done: no slot of their workers is
    /// outdated any more.
    pub(super) fn finish_restarts(&mut self) {
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
        for s in pool.slots.values() {
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
