//! Reload: the config read again, and what changed applied to the running
//! pools (new pools, removed ones draining, limits set in place, processes
//! replaced by generation).

use std::sync::Arc;

use super::pool::{self, Pool};
use super::Manager;
use crate::config::{self, Config};

impl Manager {
    /// Re-reads the config: what changed, or why it was refused (the
    /// running pools are kept then).
    pub(super) fn reload(&mut self) -> Result<String, String> {
        self.notifier.reloading();
        let result = match config::load(&self.config.path) {
            Err(e) => {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default().to_string();
                tracing::error!("reload failed, keeping the running configuration: {msg}");
                self.reload_error = Some(first);
                self.last_status.clear();
                self.report_status();
                Err(format!(
                    "reload refused, the running configuration is kept: {msg}"
                ))
            }
            Ok(new) => {
                self.reload_error = None;
                // A reload ends a pause.
                let paused: Vec<String> = self
                    .pools
                    .iter()
                    .filter(|(_, p)| p.paused)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in paused {
                    self.pause(&name, false);
                }
                Ok(self.apply_config(new))
            }
        };
        self.notifier.ready();
        result
    }

    pub(super) fn apply_config(&mut self, new: Config) -> String {
        let mut changes = Vec::new();
        for w in &new.workers {
            match self.pools.get_mut(&w.name) {
                None => {
                    changes.push(format!("+{}", w.name));
                    let mut pool = Pool::new(w.clone());
                    pool.next_id = self.placement.first_slot_id(&w.name);
                    self.pools.insert(w.name.clone(), pool);
                }
                Some(pool) => {
                    pool.removed = false;
                    if *pool.worker == *w {
                        continue;
                    }
                    if !pool.worker.same_processes(w) {
                        pool.generation += 1;
                        changes.push(format!("~{} (slots replaced)", w.name));
                    } else if pool.worker.resource_limits() != w.resource_limits() {
                        changes.push(format!("~{} (limits set on the running slots)", w.name));
                        let units: Vec<String> =
                            pool.slots.values().filter_map(|s| s.unit.clone()).collect();
                        let placement = self.placement.clone();
                        let worker = w.clone();
                        tokio::spawn(async move {
                            for unit in units {
                                if let Err(e) = placement.set_limits(&unit, &worker).await {
                                    tracing::warn!(worker = %worker.name, "cannot set the new limits on {unit}: {e}; it keeps the old ones until it is replaced");
                                }
                            }
                        });
                    } else {
                        changes.push(format!("~{} (sizing)", w.name));
                    }
                    pool.worker = Arc::new(w.clone());
                    pool.faults = pool::Faults::default();
                    self.pin_changed = true;
                }
            }
        }
        for (name, pool) in self.pools.iter_mut() {
            if !new.workers.iter().any(|w| &w.name == name) && !pool.removed {
                pool.removed = true;
                changes.push(format!("-{name}"));
            }
        }
        let summary = if changes.is_empty() {
            "no changes".to_string()
        } else {
            changes.join(", ")
        };
        tracing::info!("reloaded {}: {summary}", new.path.display());
        self.config = new;
        format!("reloaded: {summary}")
    }
}
