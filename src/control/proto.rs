//! What `slotman status` shows: the one serialised view of a running service
//! (also the `--json` output and the control socket's response). Internal
//! manager state is converted into these types, never exposed directly.

use serde::{Deserialize, Serialize};

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
    pub workers: Vec<WorkerStatus>,
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
    pub jobs_complete: u64,
    pub jobs_failed: u64,
    pub jobs_exception: u64,
    /// Jobs per second over the last minute.
    pub jobs_per_sec: f64,
    pub restarts: u64,
    /// Jobs waiting at the job servers for this worker's functions, if known.
    pub queued: Option<u64>,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentJob {
    pub function: String,
    pub handle: String,
    pub running_secs: f64,
}
