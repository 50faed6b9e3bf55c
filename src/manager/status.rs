//! What the manager says about itself: the status view (`slotman status`,
//! metrics), systemd's STATUS= line, and the journal lines when a worker's
//! health changes.

use std::collections::BTreeMap;
use std::time::Instant;

use super::health::{self, Health, Problem};
use super::pool::{self, Pool, SlotState};
use super::{count, human, Manager, STATUS_INTERVAL};
use crate::view::{CurrentJob, ServiceStatus, SlotStatus, WorkerStatus};

impl Manager {
    /// One journal line when a worker's problem starts, one when it
    /// clears, one when its health changes; nothing per retry.
    pub(super) fn log_health(&mut self) {
        self.health_logged.retain(|w, _| self.pools.contains_key(w));
        for (name, pool) in &self.pools {
            let (health, problems) = assess(pool);
            let now: BTreeMap<String, String> =
                problems.into_iter().map(|p| (p.key, p.text)).collect();
            let (was, before) = self.health_logged.remove(name).unwrap_or_default();
            for (key, text) in &now {
                if !before.contains_key(key) {
                    tracing::warn!(worker = %name, "worker {name}: {text}");
                }
            }
            for (key, text) in &before {
                if !now.contains_key(key) {
                    tracing::info!(worker = %name, "worker {name}: cleared: {text}");
                }
            }
            if health != was {
                let line = format!(
                    "worker {name} is {} (was {})",
                    health.as_str(),
                    was.as_str()
                );
                match health {
                    Health::Ok => tracing::info!(worker = %name, "{line}"),
                    _ => tracing::warn!(worker = %name, "{line}"),
                }
            }
            self.health_logged.insert(name.clone(), (health, now));
        }
    }

    /// The service's health, its worst worker's, and the first problem
    /// (prefixed by its worker when there are several).
    pub(super) fn service_health(&self) -> (Health, Option<String>, usize) {
        let mut worst = Health::Ok;
        let mut first = None;
        let mut count = 0;
        for (name, pool) in &self.pools {
            let (health, problems) = assess(pool);
            if health > worst {
                worst = health;
                first = None;
            }
            count += problems.len();
            if health == worst && first.is_none() {
                first = problems.first().map(|p| match self.pools.len() {
                    1 => p.text.clone(),
                    _ => format!("{name}: {}", p.text),
                });
            }
        }
        (worst, first, count)
    }

    /// Keeps systemd's STATUS= current: `3 workers, 9 slots (4 busy), 1.2k
    /// jobs/min`. Sent when it changes, at most once a second (a busy pool
    /// changes it with every job); returns when to send a pending change.
    pub(super) fn report_status(&mut self) -> Option<Instant> {
        let now = pool::now();
        let slots: usize = self.pools.values().map(|p| p.slots.len()).sum();
        let busy: usize = self.pools.values().map(|p| p.busy()).sum();
        let per_min: f64 = self
            .pools
            .values_mut()
            .map(|p| p.rate.per_sec(now) * 60.0)
            .sum();
        let failed: Vec<&str> = self
            .pools
            .iter()
            .filter(|(_, p)| p.faults.failed)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut line = format!(
            "{}, {} ({busy} busy), {} jobs/min",
            count(self.pools.len(), "worker"),
            count(slots, "slot"),
            human(per_min)
        );
        // A failed worker is named by the health lead below.
        let (health, problem, problems) = self.service_health();
        let lead = match health {
            Health::Ok => String::new(),
            _ => {
                let more = match problems {
                    0 | 1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                };
                format!("{}: {}{more}", health.as_str(), problem.unwrap_or_default())
            }
        };
        if !lead.is_empty() {
            line = format!("{lead}; {line}");
        }
        if self.stopping.is_some() {
            line = format!("stopping: {} left ({busy} busy)", count(slots, "slot"));
        }
        if let Some(e) = &self.reload_error {
            line = format!("{line}; reload failed, running the previous config: {e}");
        }
        // The rate is refreshed on events (a busy slot reports at least once
        // a second); once jobs stop, one wake-up when the last of them leaves
        // the one-minute window shows 0, rather than one a second while it
        // decays: an idle manager has no timer.
        let decaying = self.pools.values().filter_map(|p| p.rate.quiet_at()).min();
        if line == self.last_status {
            return decaying;
        }
        // Stopping and reload errors are news; counts can wait a second.
        // Health news goes out at once; a degraded pool's counts can wait.
        let urgent = self.stopping.is_some()
            || self.reload_error.is_some()
            || lead != self.status_lead
            || !failed.is_empty();
        match self.status_sent {
            Some(t) if !urgent && now < t + STATUS_INTERVAL => Some(t + STATUS_INTERVAL),
            _ => {
                self.notifier.status(&line);
                self.last_status = line;
                self.status_lead = lead;
                self.status_sent = Some(now);
                decaying
            }
        }
    }

    /// The status view; memory/CPU are filled in by the control server.
    pub(super) fn status(&mut self) -> ServiceStatus {
        let now = pool::now();
        let workers: Vec<WorkerStatus> = self
            .pools
            .iter_mut()
            .map(|(name, p)| {
                let count = |f: fn(&SlotState) -> bool| p.count(f) as u32;
                let (health, problems) = assess(p);
                WorkerStatus {
                    paused: p.paused,
                    health: health.as_str().into(),
                    problems: problems.iter().map(|pr| pr.render(now)).collect(),
                    name: name.clone(),
                    kind: format!("{:?}", p.worker.kind).to_lowercase(),
                    min: p.worker.min,
                    max: p.worker.max,
                    busy: p.busy() as u32,
                    idle: count(|s| matches!(s, SlotState::Idle { .. })),
                    starting: count(|s| matches!(s, SlotState::Starting)),
                    draining: count(|s| matches!(s, SlotState::Draining)),
                    failed: p.faults.failed,
                    jobs_complete: p.counters.jobs_complete,
                    jobs_failed: p.counters.jobs_failed,
                    jobs_exception: p.counters.jobs_exception,
                    jobs_per_sec: p.rate.per_sec(now),
                    restarts: p.counters.restarts,
                    recycles: p.counters.recycles,
                    queued: None,
                    job_servers: p.worker.job_servers.clone(),
                    registered: p
                        .functions()
                        .iter()
                        .map(|f| p.worker.registered_name(f))
                        .collect(),
                    functions: p.functions.values().cloned().collect(),
                    durations: p.durations.clone(),
                    slots: p
                        .slots
                        .values()
                        .map(|s| SlotStatus {
                            id: s.id,
                            state: match (&s.state, p.paused) {
                                (SlotState::Idle { .. }, true) => "paused".to_string(),
                                (state, _) => state.name().to_string(),
                            },
                            pid: s.pid,
                            unit: s.unit.clone(),
                            uptime_secs: now.duration_since(s.started).as_secs_f64(),
                            jobs_done: s.jobs_done,
                            jobs_left: (p.worker.workleft > 0)
                                .then(|| p.worker.workleft.saturating_sub(s.jobs_done)),
                            job: s.job.as_ref().map(|j| CurrentJob {
                                function: j.function.clone(),
                                handle: j.handle.clone(),
                                running_secs: now.duration_since(j.since).as_secs_f64(),
                            }),
                            memory_bytes: None,
                            cpu_usage_nsec: None,
                            tasks: None,
                            outdated: s.generation != p.generation,
                            pinned_cpu: s.cpu.filter(|_| s.pinned),
                        })
                        .collect(),
                }
            })
            .collect();
        let worst = workers
            .iter()
            .map(|w: &WorkerStatus| w.health.as_str())
            .max_by_key(|h| match *h {
                "failed" => 2,
                "degraded" => 1,
                _ => 0,
            })
            .unwrap_or("ok")
            .to_string();
        let problems = workers
            .iter()
            .flat_map(|w| w.problems.iter().map(move |p| format!("{}: {p}", w.name)))
            .collect();
        ServiceStatus {
            health: worst,
            problems,
            version: crate::view::PROTOCOL_VERSION,
            service: self.config.service.clone(),
            config: self.config.path.display().to_string(),
            pid: std::process::id(),
            uptime_secs: now.duration_since(self.started).as_secs_f64(),
            stopping: self.stopping.is_some(),
            reload_error: self.reload_error.clone(),
            workers,
        }
    }
}

/// A pool's health (see [`health`]).
pub(super) fn assess(pool: &Pool) -> (Health, Vec<Problem>) {
    let servers: &[String] = match pool.worker.kind {
        // Without the relay its program holds its own connections; the slot
        // sees none.
        crate::config::HandlerKind::Native if !pool.worker.proxy => &[],
        _ => &pool.worker.job_servers,
    };
    let active = pool.active();
    let held_at_max = (active >= pool.worker.max as usize
        && active > 0
        && pool.busy() >= active
        && pool.queued > 0)
        .then_some((active, pool.queued));
    health::assess(&health::Facts {
        servers,
        slots: pool.slots.values().map(|s| &s.links).collect(),
        marked_failed: pool.faults.failed,
        failing: pool.failing.as_ref().map(|f| (f.why.as_str(), f.since)),
        held_at_max,
    })
}
