//! The `native` kind: the user's program speaks Gearman itself; the slot only
//! supervises it (runs it, forwards a drain as SIGTERM, reports its exit). The
//! manager scales such a pool from the job server's queue depth.

use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::handler::exec::Launcher;
use super::handler::SlotIdentity;
use super::report::{ExitReason, Report, SlotSpec};
use super::runner::Reports;

pub async fn run(
    spec: &SlotSpec,
    id: &SlotIdentity,
    reports: &Reports,
    drain: &CancellationToken,
) -> ExitReason {
    // Started like an exec/stdio handler: same environment, working
    // directory, `user`/`group`; its stdout and stderr both go to the journal
    // (a native worker has no framing on stdout).
    let launcher = Launcher::new(&spec.worker, id);
    let program = launcher.program().to_owned();
    let spawned = launcher.command(&[]).and_then(|mut cmd| {
        if let Some(out) = super::handler::handler_stderr() {
            cmd.stdout(Stdio::from(out));
        }
        cmd.spawn().map_err(|e| e.to_string())
    });
    let mut child = match spawned {
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
