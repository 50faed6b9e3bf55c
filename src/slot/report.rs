//! The channel between a manager and one of its slots.
//!
//! The manager creates a Unix socketpair and passes one end to the slot
//! process as the file descriptor named by `SLOTMAN_CONTROL_FD`. Both sides
//! speak JSON lines (one message per `\n`-terminated line, at most
//! [`MAX_LINE`] bytes):
//!
//! - manager → slot: first exactly one [`ToSlot::Start`] carrying the
//!   worker's configuration (so a slot keeps the config it was started with
//!   across reloads, and so under systemd the slot does nothing until its
//!   scope exists); later [`ToSlot::Pin`] when CPU pinning turns on or
//!   off, and [`ToSlot::Drain`].
//! - slot → manager: [`Report`]s: `ready` once registered; `busy` when a
//!   job starts and `done` with the jobs finished since the last one, both
//!   on transitions (see [`Report::Busy`]), not per job; `exiting` with the
//!   reason just before it exits.
//!
//! If the manager goes away the slot sees EOF and drains, as on a stop, and
//! bounds the drain itself as the manager would have: a job in hand that
//! outlasts `stop_timeout` is abandoned (its handler's process group
//! killed, the job server requeues the job). So a slot never outlives its
//! manager by more than the job in hand, nor by more than `stop_timeout`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::WorkerConfig;

/// Where reports go (the manager's socket, or a test's channel).
pub type Reports = tokio::sync::mpsc::UnboundedSender<Report>;

/// Environment variable naming the slot's end of the socketpair.
pub const CONTROL_FD_ENV: &str = "SLOTMAN_CONTROL_FD";

/// Longest line either side accepts (a config with a huge `env` still fits).
pub const MAX_LINE: usize = 1 << 20;

/// Everything a slot needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSpec {
    pub service: String,
    pub slot: u32,
    pub worker: WorkerConfig,
    /// The CPU this slot's runner and stdio handler share while pinned
    /// (`pin_cpu`, see `slot/cpu.rs`); `None`: never pinned.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Pinning is on when the slot starts (later: [`ToSlot::Pin`]).
    #[serde(default)]
    pub pin: bool,
    /// The service's `stop_timeout`: how long the job in hand may still run
    /// once the manager is gone, before the slot kills its handler and
    /// leaves (`None`: until it ends).
    #[serde(default)]
    pub stop_timeout: Option<Duration>,
}

impl SlotSpec {
    /// The Gearman client id of this slot's connections (DESIGN.md):
    /// `slotman:SERVICE:WORKER:SLOT:PID`, with the runner's pid.
    pub fn client_id(&self) -> String {
        format!(
            "slotman:{}:{}:{}:{}",
            self.service,
            self.worker.name,
            self.slot,
            std::process::id()
        )
    }
}

/// Tells the manager that a handler (or native worker) process `pid`, our
/// unreaped child, started: its process group is what the manager cleans
/// up after a runner killed without cleaning up.
pub fn report_handler_start(reports: &Reports, pid: u32) {
    // Our unreaped child: its /proc entry is surely it.
    let stat = crate::procfs::stat(pid);
    let _ = reports.send(Report::Handler {
        pid,
        start: stat.map(|s| s.start_time),
        session: stat.map(|s| s.session),
    });
}

/// manager → slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToSlot {
    /// Begin: connect, register, take jobs.
    Start(Box<SlotSpec>),
    /// Stop taking jobs; finish the job in hand; exit.
    Drain,
    /// Pinning to [`SlotSpec::cpu`] is on or off from now.
    Pin { on: bool },
    /// Take no new job after the one in hand (`on`), or take jobs again.
    /// The connections stay registered; jobs wait at the job servers.
    Pause { on: bool },
}

/// How a job ended, as the manager counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    Complete,
    Fail,
    Exception,
}

/// Why a slot exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// `workleft` jobs done.
    Workleft,
    /// Told to drain (or SIGTERM, or the manager went away).
    Drained,
    /// The handler cannot be started.
    HandlerFailed,
    /// The kernel's OOM killer (the worker's `memory_max`) killed the
    /// handler; the job failed and the slot is replaced with a fresh cgroup.
    OomKilled,
    /// The handler's resident memory passed `recycle_rss` (after a job).
    Memory,
}

/// slot → manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Report {
    /// Handler ready and functions registered; `pid` is the runner's.
    Ready { pid: u32 },
    /// Sent before `ready` when the slot registers functions its config
    /// does not list (a seed-style worker's, as its handler announced
    /// them): names without prefix.
    Registered { functions: Vec<String> },
    /// A job started. Sent when the slot leaves idle, when the job before
    /// it ran for at least [`SHORT_JOB`], or when the last report is older
    /// than [`REPORT_EVERY`]: a stream of short jobs costs the manager
    /// nothing per job, and its view of the job in hand is at most a second old.
    Busy { function: String, handle: String },
    /// Jobs finished since the last `done`. `idle`: the slot has no job in
    /// hand now (it found no work, or it is about to exit); otherwise a
    /// `busy` follows.
    Done { jobs: JobCounts, idle: bool },
    /// About to exit.
    Exiting { reason: ExitReason },
    /// A pause took effect (`on`: no new job will start; the one in hand,
    /// if any, finishes), or a resume did.
    Paused { on: bool },
    /// A job-server connection came up (`error: None`) or failed, in the
    /// words of what failed. Sent on change only: a server retried with
    /// back-off reports once, not per attempt.
    Link {
        server: String,
        error: Option<String>,
    },
    /// The handler could not be started, and why (its exit status or
    /// signal, its last words on stderr); an `exiting` follows.
    StartFailed { why: String },
    /// A long-running handler started (again): it leads process group
    /// `pid`. Outside systemd that group is how the manager finds what the
    /// handler left behind when the runner died without cleaning up (the
    /// slot task keeps it; the manager's state does not need it). `start`
    /// (its /proc/PID/stat start time) and `session` say which process
    /// `pid` was: by the time the runner dies the number may be another's;
    /// without them the manager leaves the group alone.
    Handler {
        pid: u32,
        #[serde(default)]
        start: Option<u64>,
        #[serde(default)]
        session: Option<i32>,
    },
}

/// Below this a job counts as short: its start is not reported on its own.
pub const SHORT_JOB: Duration = Duration::from_millis(10);

/// A slot that stays busy reports at least this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Finished jobs, counted in the slot between two `done` reports, in the
/// shapes the manager keeps them in (so merging is adding).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Per function as registered (with prefix); few per worker.
    pub functions: Vec<FunctionStats>,
    pub durations: Histogram,
}

impl JobCounts {
    pub fn add(&mut self, function: &str, result: JobResult, took: Duration) {
        let f = match self.functions.iter_mut().position(|f| f.name == function) {
            Some(i) => &mut self.functions[i],
            None => {
                self.functions.push(FunctionStats {
                    name: function.to_owned(),
                    ..Default::default()
                });
                let last = self.functions.len() - 1;
                &mut self.functions[last]
            }
        };
        match result {
            JobResult::Complete => f.complete += 1,
            JobResult::Fail => f.fail += 1,
            JobResult::Exception => f.exception += 1,
        }
        self.durations.observe(took.as_secs_f64());
    }

    /// Jobs counted.
    pub fn total(&self) -> u64 {
        self.durations.count
    }

    pub fn is_empty(&self) -> bool {
        self.durations.count == 0
    }
}

/// When [`ManagerView::busy`] reports the start of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReport {
    /// Only when the manager's view would otherwise be stale: it believes
    /// the slot idle, the job before was long, or the last `busy` is older
    /// than [`REPORT_EVERY`].
    IfStale,
    /// Now (the job turned out long).
    Always,
}

/// The manager's view of a slot's jobs: what it has been told, and the
/// counts it has not been sent yet. Reports go out on transitions, not per job (see [`Report::Busy`]):
/// the manager costs nothing per job while a slot stays busy with short
/// jobs. Shared by the runner's connections and the native relay.
#[derive(Debug)]
pub struct ManagerView {
    /// Jobs finished since the last `done`.
    counts: JobCounts,
    /// The manager believes the slot busy (a `busy` and no idle `done` since).
    busy: bool,
    /// When the last `busy` went out.
    at: Instant,
    /// The job before the current one was short.
    last_short: bool,
}

impl Default for ManagerView {
    fn default() -> Self {
        ManagerView {
            counts: JobCounts::default(),
            busy: false,
            at: Instant::now(),
            last_short: false,
        }
    }
}

impl ManagerView {
    /// The slot has no job in hand: send what is counted, and say so.
    pub fn idle(&mut self, reports: &Reports) {
        if self.busy || !self.counts.is_empty() {
            let jobs = std::mem::take(&mut self.counts);
            self.busy = false;
            let _ = reports.send(Report::Done { jobs, idle: true });
        }
    }

    /// Reports the start of a job as `when` says (queued with the counts so
    /// far: one write, one wake-up). Returns whether it reported.
    pub fn busy(
        &mut self,
        reports: &Reports,
        function: &str,
        handle: &str,
        now: Instant,
        when: BusyReport,
    ) -> bool {
        if when == BusyReport::IfStale
            && self.busy
            && self.last_short
            && now.duration_since(self.at) < REPORT_EVERY
        {
            return false;
        }
        if !self.counts.is_empty() {
            let jobs = std::mem::take(&mut self.counts);
            let _ = reports.send(Report::Done { jobs, idle: false });
        }
        self.busy = true;
        self.at = now;
        let _ = reports.send(Report::Busy {
            function: function.to_owned(),
            handle: handle.to_owned(),
        });
        true
    }

    /// A job ended: counted for the next `done`.
    pub fn finished(&mut self, function: &str, result: JobResult, took: Duration) {
        self.counts.add(function, result, took);
        self.last_short = took < SHORT_JOB;
    }
}

/// What the manager was last told of each job-server connection (`None`:
/// up; else the error), so that a server retried with back-off is
/// reported on change, not per attempt.
#[derive(Debug, Default)]
pub struct Links(std::collections::HashMap<String, Option<String>>);

impl Links {
    /// Reports the state of `server` if it changed; whether it did.
    pub fn report(&mut self, reports: &Reports, server: &str, error: Option<&str>) -> bool {
        let now = error.map(str::to_string);
        if self.0.get(server) == Some(&now) {
            return false;
        }
        self.0.insert(server.to_string(), now.clone());
        let _ = reports.send(Report::Link {
            server: server.to_string(),
            error: now,
        });
        true
    }
}

/// Encodes one message as a JSON line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain enums cannot fail: no maps with non-string keys.
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decodes one line (without its `\n`).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(line)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionStats {
    /// As registered with the job server (with prefix).
    pub name: String,
    pub complete: u64,
    pub fail: u64,
    pub exception: u64,
}

impl FunctionStats {
    /// Adds `other`'s counts (same function).
    pub fn merge(&mut self, other: &FunctionStats) {
        self.complete += other.complete;
        self.fail += other.fail;
        self.exception += other.exception;
    }
}

/// A fixed-bucket histogram. `counts[i]` counts observations `<= bounds_secs[i]`
/// and above the previous bound; the last entry of `counts` (one longer than
/// `bounds_secs`) counts those above every bound. Not cumulative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds_secs: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_secs: f64,
    pub count: u64,
}

/// Bucket bounds for job durations, in seconds.
pub const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds_secs: DURATION_BOUNDS.to_vec(),
            counts: vec![0; DURATION_BOUNDS.len() + 1],
            sum_secs: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        let i = self
            .bounds_secs
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds_secs.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_secs += secs;
        self.count += 1;
    }

    /// Adds `other`'s observations (same bounds: both use the default).
    pub fn merge(&mut self, other: &Histogram) {
        for (c, n) in self.counts.iter_mut().zip(&other.counts) {
            *c += n;
        }
        self.sum_secs += other.sum_secs;
        self.count += other.count;
    }
}
