//! Logging: the manager's and the slots' own tracing output, and journal
//! channels for the output of handlers.
//!
//! - [`init_logging`] ([`init_runner_logging`] in slot runners): tracing to journald (structured fields) when stderr
//!   is the journal, to stderr as text otherwise. Fields of `tracing` events
//!   (`worker`, `slot`, `reason`, …) become `SLOTMAN_WORKER`, `SLOTMAN_SLOT`,
//!   `SLOTMAN_REASON`.
//! - [`forward_handler_output`]: a pipe for handlers' stderr whose lines a
//!   slot runner sends on as journal entries with `SLOTMAN_SERVICE`,
//!   `SLOTMAN_WORKER`, `SLOTMAN_SLOT` and, during a job, `GEARMAN_FUNCTION`
//!   and `GEARMAN_HANDLE` ([`JournalSender`]); a job's lines past
//!   `JOB_LOG_MAX` (2 MiB) are dropped and counted in one line at its end.
//! - [`journal_stream`]: a plain journald stdout stream, to hand a handler as
//!   its stderr where per-line fields are not needed.
//!
//! journald attributes an entry (native protocol) or a stream (stdout
//! protocol) to the unit of the process that sent it or connected, so a
//! runner inside its scope gets its handlers' lines under `journalctl -u
//! SCOPE`; an inherited stderr would log them under the manager's unit.
//!
//! Files: `logging` (tracing's setup), `stream` (stdout streams),
//! `sender` (the native protocol), `forward` (the handlers' stderr pipe and
//! its forwarder task), `sink` (where forwarded lines go) and `lines` (the
//! pure line cutting and per-job budget).

mod forward;
mod lines;
mod logging;
mod sender;
mod sink;
mod stream;

pub use forward::{forward_handler_output, handler_last_words, JobTag, JobTags};
pub use logging::{init_logging, init_runner_logging, stderr_is_journal};
pub use sender::{JournalSender, Priority};
pub use stream::journal_stream;
