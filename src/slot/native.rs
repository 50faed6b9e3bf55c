//! The `native` kind: the user's program speaks Gearman itself; the slot only
//! supervises it (runs it, forwards a drain as SIGTERM, reports its exit). The
//! manager scales such a pool from the job server's queue depth.

use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::handler::exec::Launcher;
use super::handler::SlotIdentity;
use super::memory::RssCheck;
use super::report::{ExitReason, Report, Reports, SlotSpec};

/// How often a native worker's memory is looked at when `recycle_rss` is set.
const NATIVE_RSS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

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
    // Its jobs are invisible, so `recycle_rss` is checked on a timer, which
    // exists only when the key is set.
    let mut rss_check = RssCheck::new(spec.worker.recycle_rss);
    let mut over_rss = false;
    let mut tick = tokio::time::interval(NATIVE_RSS_EVERY);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = drain.cancelled() => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                break child.wait().await;
            }
            now = tick.tick(), if rss_check.is_some() => {
                let Some(check) = rss_check.as_mut() else { continue };
                if let Some(rss) = check.over(child.id(), true, now.into_std()) {
                    tracing::info!(
                        worker = %id.worker,
                        reason = "recycle_rss",
                        "recycle: native worker uses {} (recycle_rss {}); sending SIGTERM",
                        crate::config::values::format_size(rss),
                        crate::config::values::format_size(check.limit())
                    );
                    over_rss = true;
                    drain.cancel();
                }
            }
        }
    };
    let reason = match status {
        _ if over_rss => ExitReason::Memory,
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
