//! What `slotman status` shows: the one serialised view of a running service
//! (also the `--json` output and the control socket's response). Internal
//! manager state is converted into these types, never exposed directly.
//! Below the manager (which builds it) and control (which serves it).

use serde::{Deserialize, Serialize};

/// Job counts as the slots measure them (defined by the slot channel).
pub use crate::slot::report::{FunctionStats, Histogram, DURATION_BOUNDS};

/// Bumped on any incompatible change of the types below.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub version: u32,
    pub service: String,
    pub config: String,
    pub pid: u32,
    pub uptime_secs: f64,
    pub stopping: bool,
    /// The last reload error, if the running config is not the file's.
    pub reload_error: Option<String>,
    /// `ok`, `degraded` or `failed`: the worst of the workers'.
    #[serde(default = "ok")]
    pub health: String,
    /// Every worker's problems, each prefixed by `WORKER: `.
    #[serde(default)]
    pub problems: Vec<String>,
    pub workers: Vec<WorkerStatus>,
}

fn ok() -> String {
    "ok".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub kind: String,
    pub min: u32,
    pub max: u32,
    pub busy: u32,
    pub idle: u32,
    pub starting: u32,
    pub draining: u32,
    /// Marked failed after too many slot failures in a row.
    pub failed: bool,
    /// `ok`, `degraded` (serving, but something is wrong) or `failed`
    /// (cannot serve).
    #[serde(default = "ok")]
    pub health: String,
    /// What is wrong, one sentence each, in the words of what failed.
    #[serde(default)]
    pub problems: Vec<String>,
    /// `slotman pause`: its slots take no new job until resumed.
    #[serde(default)]
    pub paused: bool,
    pub jobs_complete: u64,
    pub jobs_failed: u64,
    pub jobs_exception: u64,
    /// Jobs per second over the last minute.
    pub jobs_per_sec: f64,
    pub restarts: u64,
    /// Slots recycled (workleft, max_lifetime).
    pub recycles: u64,
    /// Jobs waiting at the job servers for this worker's functions (not yet
    /// running), from their admin `status`, summed over those of its job
    /// servers that answered within a second; `None` when none did.
    pub queued: Option<u64>,
    pub job_servers: Vec<String>,
    /// Function names as registered (with prefix).
    pub registered: Vec<String>,
    /// Jobs by registered function name and result.
    pub functions: Vec<FunctionStats>,
    /// Job durations as the slots measured them.
    pub durations: Histogram,
    pub slots: Vec<SlotStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub id: u32,
    /// starting | idle | busy | draining
    pub state: String,
    pub pid: Option<u32>,
    pub unit: Option<String>,
    pub uptime_secs: f64,
    pub jobs_done: u64,
    /// Jobs before it is recycled; `None` when workleft = 0.
    pub jobs_left: Option<u64>,
    pub job: Option<CurrentJob>,
    /// Bytes; `None` where the host does not say.
    pub memory_bytes: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub tasks: Option<u64>,
    /// Started under an older configuration (being replaced after a reload).
    pub outdated: bool,
    /// The CPU its runner and stdio handler share while jobs are short
    /// (`pin_cpu`, when pinning is on); `None` otherwise.
    #[serde(default)]
    pub pinned_cpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentJob {
    pub function: String,
    pub handle: String,
    pub running_secs: f64,
}
