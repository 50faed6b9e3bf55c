//! The user's handler program, in the kinds of DESIGN.md. A handler runs
//! one job at a time; the slot runner owns it and never shares it. The
//! seed-style kinds (`perl`, `python`, `php`) are `stdio` handlers whose
//! program is the language's interpreter running slotman's library
//! ([`crate::seed`]) on the worker's module.
//!
//! This module knows nothing of Gearman connections: it takes a [`Job`], sends
//! progress as [`JobEvent`]s and returns an [`Outcome`].

pub mod exec;
pub mod framing;
pub mod stdio;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{HandlerKind, WorkerConfig};

/// Who is running the handler; goes into the handler's environment and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotIdentity {
    pub service: String,
    pub worker: String,
    pub slot: u32,
}

/// One job as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Function name without the worker's prefix.
    pub function: String,
    /// Function name as registered with the job server (with prefix).
    pub gearman_function: String,
    pub handle: String,
    /// `None` when the client gave no unique id (or an empty one); else
    /// exactly the bytes it gave.
    pub unique: Option<Bytes>,
    pub payload: Bytes,
}

/// Progress a handler reports while it works; forwarded to the client as it comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// WORK_STATUS numerator / denominator.
    Status(u64, u64),
    /// WORK_DATA.
    Data(Bytes),
    /// WORK_WARNING.
    Warning(Bytes),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// WORK_COMPLETE with this result.
    Complete(Bytes),
    /// WORK_EXCEPTION with this data (stdio handlers only).
    Exception(Bytes),
    /// WORK_FAIL, and why (for the log).
    Fail(FailReason),
}

/// Why a job failed. Every variant except `Declined` means the handler
/// process is gone or untrustworthy and has been (or must be) replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The handler said so: `FAIL` (stdio) or a non-zero exit (exec).
    Declined(String),
    /// The handler died under the job (crash, signal, OOM kill).
    Died(String),
    /// The handler wrote something outside the framing.
    Framing(String),
    /// The job ran past `timeout`; the handler was killed.
    Timeout(Duration),
    /// The handler could not be started at all.
    Spawn(String),
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailReason::Declined(why) => write!(f, "handler declined: {why}"),
            FailReason::Died(why) => write!(f, "handler died: {why}"),
            FailReason::Framing(why) => write!(f, "handler broke the framing: {why}"),
            FailReason::Timeout(d) => {
                write!(
                    f,
                    "timed out after {}",
                    crate::config::values::human_duration(*d)
                )
            }
            FailReason::Spawn(why) => write!(f, "handler could not start: {why}"),
        }
    }
}

/// Errors starting a handler (before any job).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("cannot start handler {program:?}: {error}")]
    Spawn {
        program: String,
        // The cause is part of the message, not a `source`: an error chain
        // printed with `{:#}` would say it twice.
        error: std::io::Error,
    },
    #[error("handler {program:?} exited before it said READY ({status})")]
    ExitedBeforeReady { program: String, status: String },
    #[error("handler {program:?} wrote {line:?} instead of READY")]
    NotReady { program: String, line: String },
    #[error("handler {program:?} did not say READY within {}", crate::config::values::human_duration(*.after))]
    ReadyTimeout { program: String, after: Duration },
    /// The slot was told to drain while the handler was starting: no
    /// failure, the slot just leaves.
    #[error("the slot drained while handler {program:?} was starting")]
    Cancelled { program: String },
    #[error("the native kind has no job-by-job handler")]
    Native,
}

/// A started handler of either job-by-job kind.
pub enum Handler {
    Exec(exec::ExecHandler),
    Stdio(stdio::StdioHandler),
}

/// Told the pid of a long-running handler process when it starts.
pub type OnStart = Box<dyn Fn(u32) + Send + Sync>;

impl Handler {
    /// Prepares the handler; for `stdio` this spawns it and waits for
    /// `READY` (at most `worker.ready_timeout`), a wait that `cancel` ends
    /// at once ([`HandlerError::Cancelled`]).
    pub async fn start(
        worker: &WorkerConfig,
        id: &SlotIdentity,
        cancel: &CancellationToken,
    ) -> Result<Handler, HandlerError> {
        match worker.kind {
            HandlerKind::Exec => Ok(Handler::Exec(exec::ExecHandler::new(worker, id))),
            HandlerKind::Stdio | HandlerKind::Perl | HandlerKind::Python | HandlerKind::Php => Ok(
                Handler::Stdio(stdio::StdioHandler::start(worker, id, cancel).await?),
            ),
            HandlerKind::Native => Err(HandlerError::Native),
        }
    }

    /// Runs one job to its end. Progress goes to `events` as it comes. A job
    /// that runs past `timeout` is failed and its handler process killed.
    /// Never panics on anything the handler writes.
    pub async fn run(
        &mut self,
        job: &Job,
        events: &mpsc::Sender<JobEvent>,
        timeout: Option<Duration>,
    ) -> Outcome {
        match self {
            Handler::Exec(h) => h.run(job, events, timeout).await,
            Handler::Stdio(h) => h.run(job, events, timeout).await,
        }
    }

    /// Calls `f` with the pid of every long-running handler process, the
    /// current one and each replacement as it starts (exec handlers, one
    /// per job, have none).
    pub fn on_process_start(&mut self, f: OnStart) {
        if let Handler::Stdio(h) = self {
            h.on_process_start(f);
        }
    }

    /// The functions a stdio handler named in its `READY` (none for a plain
    /// `READY`, and for exec handlers).
    pub fn announced(&self) -> &[String] {
        match self {
            Handler::Exec(_) => &[],
            Handler::Stdio(h) => h.announced(),
        }
    }

    /// PID of the long-running handler process, if there is one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Handler::Exec(_) => None,
            Handler::Stdio(h) => h.pid(),
        }
    }

    /// Stops the handler process(es): close stdin, short grace, then SIGKILL.
    pub async fn shutdown(self) {
        match self {
            Handler::Exec(_) => {}
            Handler::Stdio(h) => h.shutdown().await,
        }
    }
}

/// What a slot registers, given the functions its config lists and those
/// its handler announced in `READY`, and what to say about the difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// In the config's order, else the handler's.
    pub functions: Vec<String>,
    /// Listed in the config but not announced: not registered.
    pub not_announced: Vec<String>,
    /// Announced but left out by the config's list.
    pub not_listed: Vec<String>,
}

/// The functions a slot registers: the config's list when the handler
/// announced none (a plain `READY`: every hand-written stdio handler, and
/// exec handlers); what it announced when the config lists none; else the
/// functions in both. `Err` (why) when that leaves nothing to register.
pub fn registration(configured: &[String], announced: &[String]) -> Result<Registration, String> {
    let reg = match (configured.is_empty(), announced.is_empty()) {
        (_, true) => Registration {
            functions: configured.to_vec(),
            not_announced: Vec::new(),
            not_listed: Vec::new(),
        },
        (true, false) => Registration {
            functions: announced.to_vec(),
            not_announced: Vec::new(),
            not_listed: Vec::new(),
        },
        (false, false) => {
            let (functions, not_announced) = configured
                .iter()
                .cloned()
                .partition(|f| announced.contains(f));
            Registration {
                functions,
                not_announced,
                not_listed: announced
                    .iter()
                    .filter(|f| !configured.contains(f))
                    .cloned()
                    .collect(),
            }
        }
    };
    if !reg.functions.is_empty() {
        return Ok(reg);
    }
    Err(match (configured.is_empty(), announced.is_empty()) {
        (true, true) => {
            "the handler announced no functions in READY and the config lists none".to_owned()
        }
        _ => format!(
            "none of the functions listed in the config ({}) is one the handler announced ({})",
            configured.join(", "),
            announced.join(", ")
        ),
    })
}

/// Where handlers' stderr goes, when the runner set it (a pipe it forwards
/// to the journal with the slot's fields); otherwise they inherit its stderr.
static HANDLER_STDERR: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// Sets handlers' stderr for the rest of the process; only the first call counts.
pub fn set_handler_stderr(fd: std::os::fd::OwnedFd) {
    let _ = HANDLER_STDERR.set(fd);
}

pub(crate) fn handler_stderr() -> Option<std::os::fd::OwnedFd> {
    HANDLER_STDERR.get().and_then(|fd| fd.try_clone().ok())
}

/// Environment variables that belong to the manager/slot and must not reach
/// a handler: systemd's notify/watchdog and socket activation
/// ([`crate::systemd::notify::MANAGER_ONLY_ENV`]), and our internal control
/// channel.
pub fn scrubbed_env() -> impl Iterator<Item = &'static str> {
    crate::systemd::notify::MANAGER_ONLY_ENV
        .iter()
        .copied()
        .chain([crate::slot::report::CONTROL_FD_ENV])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn registers_the_config_the_announcement_or_both() {
        // A plain READY: the config's list, as always.
        let r = registration(&names(&["a", "b"]), &[]).unwrap();
        assert_eq!(r.functions, names(&["a", "b"]));
        // Nothing listed: what the handler announced.
        let r = registration(&[], &names(&["x", "y"])).unwrap();
        assert_eq!(r.functions, names(&["x", "y"]));
        // Both: the config restricts, in its order; the rest is reported.
        let r = registration(&names(&["y", "gone"]), &names(&["x", "y"])).unwrap();
        assert_eq!(r.functions, names(&["y"]));
        assert_eq!(r.not_announced, names(&["gone"]));
        assert_eq!(r.not_listed, names(&["x"]));
    }

    #[test]
    fn nothing_to_register_is_an_error() {
        assert!(registration(&[], &[]).unwrap_err().contains("no functions"));
        let why = registration(&names(&["a"]), &names(&["b"])).unwrap_err();
        assert!(why.contains("(a)") && why.contains("(b)"), "{why}");
    }
}
