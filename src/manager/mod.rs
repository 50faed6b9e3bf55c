//! The manager: one per service. Owns every pool and is the only code that
//! changes them. Everything else (slot tasks, signals, timers) sends it an
//! [`Event`]; after each event [`policy::decide`] says what to do and the
//! manager does it through [`crate::placement`].
//!
//! This file is the loop and its events; the work of one event is in an
//! `impl Manager` block of its own file: `reports` (what slots say),
//! `scaling` (the policy carried out), `reload`, `queues` (queue reads),
//! `commands` (operators' commands), `status` (the status view).

mod commands;
mod cpus;
mod fleet;
pub mod health;
pub mod policy;
pub mod pool;
mod queues;
mod reload;
mod reports;
mod scaling;
mod slot_task;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{self, Config};
use crate::placement::Placement;
use crate::slot::report::{Report, SlotSpec};
use crate::systemd::notify::Notifier;
use crate::view::ServiceStatus;
pub use commands::{Command, Reply};
use commands::{PendingPause, Restart};
use health::Health;
use pool::{Pool, SlotCmd, SlotState};
pub use queues::QueueRead;

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
            Event::QueueDepth(reads) => self.queue_depth(reads),
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
