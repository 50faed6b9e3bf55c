//! The `native` kind: the user's program speaks Gearman itself; the slot only
//! supervises it (runs it, forwards a drain as SIGTERM, reports its exit). The
//! manager scales such a pool from the job server's queue depth.

use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::handler::{SlotIdentity, SCRUBBED_ENV};
use super::report::{ExitReason, Report, SlotSpec};
use super::runner::Reports;

pub async fn run(
    spec: &SlotSpec,
    id: &SlotIdentity,
    reports: &Reports,
    drain: &CancellationToken,
) -> ExitReason {
    let w = &spec.worker;
    let Some((program, args)) = w.command.split_first() else {
        return ExitReason::HandlerFailed;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .envs(&w.env)
        .env("SLOTMAN_SERVICE", &id.service)
        .env("SLOTMAN_WORKER", &id.worker)
        .env("SLOTMAN_SLOT", id.slot.to_string())
        .kill_on_drop(true);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    if let Some(dir) = &w.working_directory {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(worker = %id.worker, "cannot start native worker {program:?}: {e}");
            let _ = reports.send(Report::Exiting {
                reason: ExitReason::HandlerFailed,
            });
            return ExitReason::HandlerFailed;
        }
    };
    let _ = reports.send(Report::Ready {
        pid: std::process::id(),
    });
    let status = tokio::select! {
        s = child.wait() => s,
        _ = drain.cancelled() => {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            child.wait().await
        }
    };
    let reason = match status {
        Ok(s) if s.success() || drain.is_cancelled() => ExitReason::Drained,
        Ok(s) => {
            tracing::warn!(worker = %id.worker, "native worker exited: {s}");
            ExitReason::HandlerFailed
        }
        Err(e) => {
            tracing::warn!(worker = %id.worker, "waiting for native worker: {e}");
            ExitReason::HandlerFailed
        }
    };
    let _ = reports.send(Report::Exiting { reason });
    reason
}
