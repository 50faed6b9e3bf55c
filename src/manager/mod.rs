//! The manager: one per service. Owns every pool and is the only code that
//! changes them. Everything else (slot tasks, signals, timers) sends it an
//! [`Event`]; after each event [`policy::decide`] says what to do and the
//! manager does it through [`crate::placement`].

mod commands;
mod cpus;
mod fleet;
pub mod health;
pub mod policy;
pub mod pool;
mod slot_task;
mod status;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{self, Config};
use crate::placement::Placement;
use crate::slot::report::{ExitReason, Report, SlotSpec};
use crate::systemd::notify::Notifier;
use crate::view::ServiceStatus;
pub use commands::{Command, Reply};
use commands::{PendingPause, Restart};
use health::Health;
use policy::{Action, Reason};
use pool::{Pool, Slot, SlotCmd, SlotState};
use status::assess;

/// Everything that can wake the manager. Closed: the loop matches every one.
#[derive(Debug)]
pub enum Event {
    /// From a slot's task.
    Slot {
        worker: String,
        id: u32,
        ev: SlotEvent,
    },
    /// SIGHUP / `systemctl reload`.
    Reload,
    /// SIGTERM / SIGINT / `systemctl stop`.
    Stop,
    /// A snapshot for `slotman status`, the demo or metrics.
    Status(tokio::sync::oneshot::Sender<ServiceStatus>),
    /// What the job servers said of the saturated pools' queues.
    QueueDepth(Vec<QueueRead>),
    /// An operator's command (`slotman reload|restart|drain|pause|resume`)
    /// and where its answer goes.
    Command(Command, Reply),
}

/// One pool's queue as the job servers showed it (admin `status`, and
/// `workers` when the fleet was to be read again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRead {
    pub worker: String,
    /// Jobs waiting, over every job server that answered.
    pub waiting: u64,
    /// Jobs running, likewise.
    pub running: u64,
    /// Other hosts and their slots, with the largest answer's size in
    /// bytes; `None` when `workers` was not read (or no server answered).
    pub peers: Option<(u32, u32, usize)>,
}

/// What a slot task reports, in the order it happened.
#[derive(Debug)]
pub enum SlotEvent {
    Placed { pid: u32, unit: Option<String> },
    PlaceFailed(String),
    Report(Report),
    Exited { status: String },
}

/// How long a stopping manager waits for killed slots to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a job server has to answer an admin command of a queue read …
const QUEUE_POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// … or this long after another job server answered: a hung one must not
/// hold up every read (and growth) by the whole timeout.
const QUEUE_POLL_LAG: Duration = Duration::from_millis(200);
/// Set to `per-host` (benchmarks only): every host grows for the whole
/// queue, as before fleets were seen (`bench/fleet` compares the two).
const FLEET_RULE_ENV: &str = "SLOTMAN_FLEET_RULE";
/// Least time between two STATUS= updates.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// `1 worker`, `2 workers`.
fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// 1234.0 → "1.2k", 12.0 → "12".
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A saturated pool whose queue depth is wanted: its job servers and
/// functions (as registered).
struct QueueQuery {
    worker: String,
    servers: Vec<String>,
    functions: Vec<String>,
    /// Read `workers` too if jobs wait: the pool's own client ids and the
    /// prefix of its fleet's (`slotman:SERVICE:WORKER:`).
    fleet: Option<(std::collections::HashSet<String>, String)>,
}

pub struct Manager {
    config: Config,
    pools: BTreeMap<String, Pool>,
    placement: Arc<Placement>,
    /// Starts slots (processes; a fake in tests).
    launch: Arc<dyn Launch>,
    events_tx: mpsc::UnboundedSender<Event>,
    notifier: Notifier,
    stopping: Option<Instant>,
    killed: bool,
    ready_sent: bool,
    last_status: String,
    reload_error: Option<String>,
    started: Instant,
    /// Next admin `status` poll, while some pool is saturated.
    queue_poll: Option<Instant>,
    queue_inflight: bool,
    /// When the job servers' queues were last read.
    queue_polled: Option<Instant>,
    /// Grow for this host's share of a queue other hosts serve too (off
    /// only through [`FLEET_RULE_ENV`], for comparison).
    fleet_share: bool,
    /// Pools an event touched since the policy last ran on them: the policy
    /// runs per event only where something changed.
    dirty: std::collections::BTreeSet<String>,
    /// When each pool's policy asked to run again without an event.
    pool_wake: BTreeMap<String, Instant>,
    /// When STATUS= was last sent (it is sent at most once a second).
    status_sent: Option<Instant>,
    /// Which CPU each new stdio slot gets (`pin_cpu`).
    cpus: cpus::Cpus,
    /// Pinning is on (more slots than CPUs); slots started now are told so.
    pinning: bool,
    /// A reload may have changed `pin_cpu`: tell every slot again.
    pin_changed: bool,
    /// Each worker's health and problems (by key, with their text) as last
    /// logged: the journal gets a line when a problem starts or clears.
    health_logged: BTreeMap<String, (Health, BTreeMap<String, String>)>,
    /// The health part of the last STATUS= (empty when ok).
    status_lead: String,
    /// `slotman restart`s under way.
    restarts: Vec<Restart>,
    pauses: Vec<PendingPause>,
}

impl Manager {
    pub fn new(
        config: Config,
        placement: Placement,
        events_tx: mpsc::UnboundedSender<Event>,
    ) -> Manager {
        let placement = Arc::new(placement);
        let launch = Arc::new(Processes(placement.clone()));
        Manager::with_launch(config, placement, launch, events_tx)
    }

    /// A manager whose slots are started by `launch`.
    pub fn with_launch(
        config: Config,
        placement: Arc<Placement>,
        launch: Arc<dyn Launch>,
        events_tx: mpsc::UnboundedSender<Event>,
    ) -> Manager {
        let cpus = cpus::Cpus::of_this_process(&config.service);
        let pools = config
            .workers
            .iter()
            .map(|w| {
                let mut pool = Pool::new(w.clone());
                pool.next_id = placement.first_slot_id(&w.name);
                (w.name.clone(), pool)
            })
            .collect();
        Manager {
            config,
            pools,
            placement,
            launch,
            events_tx,
            notifier: Notifier::from_env(),
            stopping: None,
            killed: false,
            ready_sent: false,
            last_status: String::new(),
            reload_error: None,
            started: pool::now(),
            queue_poll: None,
            queue_inflight: false,
            queue_polled: None,
            fleet_share: std::env::var(FLEET_RULE_ENV).map_or(true, |v| v != "per-host"),
            dirty: Default::default(),
            pool_wake: BTreeMap::new(),
            status_sent: None,
            cpus,
            pinning: false,
            pin_changed: false,
            health_logged: BTreeMap::new(),
            status_lead: String::new(),
            restarts: Vec::new(),
            pauses: Vec::new(),
        }
    }

    /// Runs until stopped and every slot has left.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) -> anyhow::Result<()> {
        tracing::info!(
            service = %self.config.service,
            "starting: {} from {}",
            count(self.pools.len(), "worker"),
            self.config.path.display()
        );
        let watchdog = self.notifier.watchdog_interval();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.dirty = self.pools.keys().cloned().collect();
        loop {
            let wake = self.apply_policy();
            self.update_pinning();
            self.log_health();
            self.finish_commands();
            let status_wake = self.report_status();
            if self.stopping.is_some() && self.pools.values().all(|p| p.slots.is_empty()) {
                break;
            }
            self.schedule_queue_poll();
            let deadline = self.stop_deadline();
            let wake = [wake, deadline, self.queue_poll, status_wake]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                _ = sleep_until(wake) => {
                    let now = pool::now();
                    if deadline.is_some_and(|d| now >= d) {
                        self.kill_all();
                    }
                    if self.queue_poll.is_some_and(|t| now >= t) {
                        self.poll_queues();
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => self.notifier.watchdog(),
            }
        }
        tracing::info!(service = %self.config.service, "stopped: every slot has left");
        Ok(())
    }

    /// Queue depth matters only while a pool is saturated (no idle slot):
    /// below max it says whether to grow, at max whether the pool is held
    /// there with jobs waiting (health); an idle slot would take a waiting
    /// job itself. So the job
    /// servers are asked only then, and an idle service polls nothing.
    fn saturated(&self) -> Vec<QueueQuery> {
        if self.stopping.is_some() {
            return Vec::new();
        }
        self.pools
            .iter()
            .filter(|(_, p)| {
                !p.removed
                    && !p.faults.failed
                    // A native worker without the relay is blind: only the
                    // queue tells.
                    && ((p.worker.kind == crate::config::HandlerKind::Native && !p.worker.proxy)
                        || (p.worker.scale_on_queue
                            && p.count(|s| matches!(s, SlotState::Idle { .. })) == 0))
            })
            .map(|(n, p)| {
                let functions = p
                    .functions()
                    .iter()
                    .map(|f| p.worker.registered_name(f))
                    .collect();
                let now = pool::now();
                let stale = p
                    .peers
                    .as_ref()
                    .is_none_or(|f| now >= f.at + fleet::workers_interval(f));
                let service = &self.config.service;
                QueueQuery {
                    worker: n.clone(),
                    servers: p.worker.job_servers.clone(),
                    functions,
                    fleet: (self.fleet_share && stale)
                        .then(|| (p.client_ids(service), format!("slotman:{service}:{n}:"))),
                }
            })
            .collect()
    }

    /// How often to read `status`: every 100 ms, less often in a large
    /// fleet (the largest a saturated pool has seen).
    fn queue_interval(&self) -> Duration {
        let hosts = self
            .pools
            .values()
            .filter_map(|p| p.peers.as_ref())
            .map(|f| f.hosts.saturating_add(1))
            .max()
            .unwrap_or(1);
        fleet::status_interval(hosts)
    }

    fn schedule_queue_poll(&mut self) {
        let saturated = self.saturated();
        if saturated.is_empty() {
            // A poll already due stays due (poll_queues looks again): while
            // a pool grows, each new slot is idle only until it grabs its
            // first job, and cancelling here pushed the poll back with every
            // new slot, so a burst was absorbed one slot at a time.
            for p in self.pools.values_mut() {
                p.queued = 0;
                p.running = 0;
                p.waiting_since = None;
            }
        } else if self.queue_poll.is_none() && !self.queue_inflight {
            // The first look is at once (a burst has just landed); then at
            // most one every queue_interval.
            let now = pool::now();
            let next = self.queue_polled.map_or(now, |t| t + self.queue_interval());
            self.queue_poll = Some(next.max(now));
        }
    }

    fn poll_queues(&mut self) {
        self.queue_poll = None;
        let saturated = self.saturated();
        if saturated.is_empty() {
            return;
        }
        self.queue_inflight = true;
        self.queue_polled = Some(pool::now());
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Event::QueueDepth(read_queues(saturated).await));
        });
    }

    fn stop_deadline(&self) -> Option<Instant> {
        // Checked: a stop_timeout the clock cannot hold waits forever.
        let deadline = config::values::after(self.stopping?, self.config.stop_timeout)?;
        if self.killed {
            deadline.checked_add(KILL_GRACE)
        } else {
            Some(deadline)
        }
    }

    fn handle(&mut self, ev: Event) {
        match &ev {
            Event::Slot { worker, .. } => {
                self.dirty.insert(worker.clone());
            }
            Event::QueueDepth(reads) => self.dirty.extend(reads.iter().map(|r| r.worker.clone())),
            Event::Reload | Event::Stop | Event::Command(..) => {
                self.dirty.extend(self.pools.keys().cloned())
            }
            Event::Status(_) => {}
        }
        match ev {
            Event::Slot { worker, id, ev } => self.slot_event(&worker, id, ev),
            Event::Reload => {
                let _ = self.reload();
            }
            Event::Command(command, reply) => self.command(command, reply),
            Event::Stop => self.stop(),
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::QueueDepth(reads) => {
                self.queue_inflight = false;
                let now = pool::now();
                for r in reads {
                    let Some(p) = self.pools.get_mut(&r.worker) else {
                        continue;
                    };
                    p.queued = r.waiting;
                    p.running = r.running;
                    p.waiting_since = (r.waiting > 0).then(|| p.waiting_since.unwrap_or(now));
                    if let Some((hosts, slots, answer_bytes)) = r.peers {
                        if p.peers.as_ref().map(|f| f.hosts) != Some(hosts) {
                            tracing::info!(
                                worker = %r.worker,
                                hosts = hosts + 1,
                                "{}: {} serving its queue",
                                r.worker,
                                count(hosts as usize + 1, "host")
                            );
                        }
                        p.peers = Some(fleet::Peers {
                            hosts,
                            slots,
                            at: now,
                            answer_bytes,
                        });
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.notifier.stopping();
        let slots: usize = self.pools.values().map(|p| p.slots.len()).sum();
        tracing::info!(
            "stopping: draining {} (jobs in hand finish first, up to {})",
            count(slots, "slot"),
            config::values::human_duration(self.config.stop_timeout)
        );
        self.stopping = Some(pool::now());
        for pool in self.pools.values_mut() {
            for slot in pool.slots.values_mut() {
                slot.exit_expected = true;
                if !matches!(slot.state, SlotState::Draining) {
                    slot.state = SlotState::Draining;
                }
                let _ = slot.cmd.send(SlotCmd::Drain);
            }
        }
    }

    fn kill_all(&mut self) {
        if self.killed {
            // Even SIGKILL did not reap them in time; give up waiting.
            tracing::error!("slots did not exit after SIGKILL; leaving");
            for pool in self.pools.values_mut() {
                pool.slots.clear();
            }
            return;
        }
        self.killed = true;
        for (name, pool) in &self.pools {
            for slot in pool.slots.values() {
                match &slot.job {
                    Some(pool::JobInHand {
                        function, handle, ..
                    }) => {
                        tracing::warn!(worker = %name, slot = slot.id, "stop_timeout passed: killing slot {name}#{} (its job {function} {handle} goes back to the job server)", slot.id)
                    }
                    None => {
                        tracing::warn!(worker = %name, slot = slot.id, "stop_timeout passed: killing slot {name}#{}, which holds no job", slot.id)
                    }
                }
                let _ = slot.cmd.send(SlotCmd::Kill);
            }
        }
    }

    /// Re-reads the config: what changed, or why it was refused (the
    /// running pools are kept then).
    fn reload(&mut self) -> Result<String, String> {
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

    fn apply_config(&mut self, new: Config) -> String {
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

    fn slot_event(&mut self, worker: &str, id: u32, ev: SlotEvent) {
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

    /// `pin_cpu`: pinning is on while the service has more slots than
    /// CPUs; slots hear of it when that changes (or a reload changed the
    /// key), not per event.
    fn update_pinning(&mut self) {
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
    fn apply_policy(&mut self) -> Option<Instant> {
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

/// How a slot the manager has entered in its pool comes to run. The real
/// one places a runner process and relays its socket ([`slot_task`]); the
/// manager's tests put a fake in its place and play the slot's part.
pub trait Launch: Send + Sync {
    fn launch(&self, slot: Launched, events: &mpsc::UnboundedSender<Event>);
}

/// A slot to start: what it runs, and the manager's commands to it.
pub struct Launched {
    pub spec: SlotSpec,
    pub cmds: mpsc::UnboundedReceiver<SlotCmd>,
}

/// Slots as processes, placed by `placement`.
struct Processes(Arc<Placement>);

impl Launch for Processes {
    fn launch(&self, slot: Launched, events: &mpsc::UnboundedSender<Event>) {
        tokio::spawn(slot_task::run(
            self.0.clone(),
            slot.spec,
            events.clone(),
            slot.cmds,
        ));
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

/// Reads the saturated pools' queues: `status` of every job server at
/// once, then, for pools that find jobs waiting and want their fleet read
/// again, `workers` of their servers at once. A server that fails costs its
/// answer only; one that is slow, at most [`QUEUE_POLL_LAG`] after the
/// others answered (or [`QUEUE_POLL_TIMEOUT`] if none did).
async fn read_queues(saturated: Vec<QueueQuery>) -> Vec<QueueRead> {
    use crate::gearman::admin;
    use futures::StreamExt;
    use std::collections::HashMap;
    async fn each<'a, T, F: std::future::Future<Output = Result<T, admin::AdminError>>>(
        servers: Vec<&'a String>,
        read: impl Fn(String) -> F,
        failed: &mut HashSet<String>,
    ) -> Vec<(&'a String, T)> {
        let mut pending: futures::stream::FuturesUnordered<_> = servers
            .iter()
            .map(|&s| {
                let answer = read(s.clone());
                async move { (s, answer.await) }
            })
            .collect();
        let mut out = Vec::new();
        let mut cutoff: Option<tokio::time::Instant> = None;
        loop {
            let next = match cutoff {
                Some(t) => match tokio::time::timeout_at(t, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            match next {
                None => break,
                Some((server, Ok(v))) => {
                    out.push((server, v));
                    cutoff.get_or_insert_with(|| tokio::time::Instant::now() + QUEUE_POLL_LAG);
                }
                Some((server, Err(e))) => {
                    tracing::debug!(server, "admin read failed: {e}");
                    failed.insert(server.clone());
                }
            }
        }
        for s in servers {
            if !out.iter().any(|(a, _)| *a == s) && failed.insert(s.clone()) {
                tracing::debug!(
                    server = s,
                    "admin read skipped: no answer {QUEUE_POLL_LAG:?} after the other job servers'"
                );
            }
        }
        out
    }
    let mut failed = HashSet::new();
    let mut servers: Vec<&String> = saturated.iter().flat_map(|q| &q.servers).collect();
    servers.sort();
    servers.dedup();
    let mut load: HashMap<String, admin::Load> = HashMap::new();
    let status = |s: String| async move { admin::status(&s, QUEUE_POLL_TIMEOUT).await };
    for (_, rows) in each(servers, status, &mut failed).await {
        admin::add_load(&mut load, rows);
    }
    let mut reads: Vec<QueueRead> = saturated
        .iter()
        .map(|q| {
            let of = |f: &String| load.get(f).copied().unwrap_or_default();
            QueueRead {
                worker: q.worker.clone(),
                waiting: q.functions.iter().map(|f| of(f).waiting).sum(),
                running: q.functions.iter().map(|f| of(f).running).sum(),
                peers: None,
            }
        })
        .collect();
    let wanted = |q: &QueueQuery, r: &QueueRead| q.fleet.is_some() && r.waiting > 0;
    let mut servers: Vec<&String> = saturated
        .iter()
        .zip(&reads)
        .filter(|(q, r)| wanted(q, r))
        .flat_map(|(q, _)| &q.servers)
        .filter(|s| !failed.contains(*s))
        .collect();
    if servers.is_empty() {
        return reads;
    }
    servers.sort();
    servers.dedup();
    let workers = |s: String| async move { admin::workers(&s, QUEUE_POLL_TIMEOUT).await };
    let lists: HashMap<&String, Vec<admin::WorkerInfo>> = each(servers, workers, &mut failed)
        .await
        .into_iter()
        .collect();
    for (q, r) in saturated.iter().zip(reads.iter_mut()) {
        let Some((own, prefix)) = q.fleet.as_ref().filter(|_| r.waiting > 0) else {
            continue;
        };
        let mine: Vec<Vec<admin::WorkerInfo>> = q
            .servers
            .iter()
            .filter_map(|s| lists.get(s).cloned())
            .collect();
        if mine.is_empty() {
            continue;
        }
        let bytes = mine
            .iter()
            .map(|l| fleet::answer_bytes(l))
            .max()
            .unwrap_or(0);
        let (hosts, slots) = fleet::observe(&mine, prefix, own, &q.functions);
        r.peers = Some((hosts, slots, bytes));
    }
    reads
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Options of `slotman run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub runtime_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests;
