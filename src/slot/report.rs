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
//!   scope exists); later [`ToSlot::Drain`].
//! - slot → manager: [`Report`]s: `ready` once registered, then `busy` /
//!   `done` per job, and `exiting` with the reason just before it exits.
//!
//! If the manager goes away the slot sees EOF and drains: a slot never
//! outlives its manager by more than the job in hand.

use serde::{Deserialize, Serialize};

use crate::config::WorkerConfig;

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
}

/// manager → slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToSlot {
    /// Begin: connect, register, take jobs.
    Start(Box<SlotSpec>),
    /// Stop taking jobs; finish the job in hand; exit.
    Drain,
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
}

/// slot → manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Report {
    /// Handler ready and functions registered; `pid` is the runner's.
    Ready { pid: u32 },
    /// A job was assigned.
    Busy { function: String, handle: String },
    /// The job ended; the slot is idle again (unless it exits next).
    Done { result: JobResult, millis: u64 },
    /// About to exit.
    Exiting { reason: ExitReason },
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
