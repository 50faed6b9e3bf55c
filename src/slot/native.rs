//! The `native` kind: the user's program speaks Gearman itself (any
//! Gearman library). It learns where its job servers are from
//! `SLOTMAN_JOB_SERVERS` and `{job_servers}` in its arguments.
//!
//! With `proxy = true` (the default) those are the slot's relays
//! (`relay/`): slotman sees every job, so the slot reports busy and idle,
//! counts jobs for `workleft`, fails a job past `timeout` (killing and
//! restarting the worker), and stops the worker only between jobs: once the
//! slot should stop it hands the worker no more jobs, lets the job in hand
//! finish, then sends SIGTERM (SIGKILL [`STOP_GRACE`] later). With
//! `proxy = false` they are the real job servers and the slot only
//! supervises (runs the program, SIGTERM on drain, reports its exit); the
//! manager scales such a pool from the job servers' queue depth.

use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::handler::exec::Launcher;
use super::handler::SlotIdentity;
use super::memory::RssCheck;
use super::relay::{Relay, Shared};
use super::report::{ExitReason, Report, Reports, SlotSpec};
use crate::systemd::journal::JobTags;

/// The environment variable that tells a native worker its job servers.
pub const JOB_SERVERS_ENV: &str = "SLOTMAN_JOB_SERVERS";
/// Replaced in the worker's arguments by the same list.
pub const JOB_SERVERS_ARG: &str = "{job_servers}";

/// How often a native worker's memory is looked at when `recycle_rss` is set.
const NATIVE_RSS_EVERY: Duration = Duration::from_secs(2);

/// How long a worker told to stop (SIGTERM) has before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a worker's connections may take to fail their jobs once it is gone.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// What a native slot needs besides its spec.
pub struct Native<'a> {
    pub spec: &'a SlotSpec,
    pub id: &'a SlotIdentity,
    pub reports: &'a Reports,
    pub drain: &'a CancellationToken,
    pub pause: tokio::sync::watch::Receiver<bool>,
    pub log_tags: Option<JobTags>,
}

pub async fn run(n: Native<'_>) -> ExitReason {
    if n.spec.worker.proxy {
        relayed(n).await
    } else {
        let servers = n.spec.worker.job_servers.join(",");
        supervised(&n, &servers).await
    }
}

/// The worker's command with `{job_servers}` replaced in its arguments,
/// ready to start with `SLOTMAN_JOB_SERVERS` set.
fn launcher(n: &Native, servers: &str) -> Launcher {
    let mut worker = n.spec.worker.clone();
    for arg in worker.command.iter_mut().skip(1) {
        if arg.contains(JOB_SERVERS_ARG) {
            *arg = arg.replace(JOB_SERVERS_ARG, servers);
        }
    }
    Launcher::new(&worker, n.id)
}

/// The worker process, leading a process group of its own.
struct Process {
    child: Child,
}

impl Process {
    /// Starts the worker, its stdout and stderr to the journal (a native
    /// worker has no framing on stdout), and tells the manager its group.
    fn spawn(launcher: &Launcher, servers: &str, reports: &Reports) -> Result<Process, String> {
        let mut cmd = launcher.command(&[(JOB_SERVERS_ENV, OsStr::new(servers))])?;
        if let Some(out) = super::handler::handler_stderr() {
            cmd.stdout(Stdio::from(out));
        }
        let child = cmd.spawn().map_err(|e| e.to_string())?;
        if let Some(pid) = child.id() {
            super::report::report_handler_start(reports, pid);
        }
        Ok(Process { child })
    }

    /// Signals the worker's process group, while its leader is unreaped
    /// (so the group id is surely still the worker's).
    fn signal(&self, sig: Signal) {
        let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        match killpg(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = pid, "cannot signal the native worker's group: {e}"),
        }
    }

    /// SIGTERM, and SIGKILL if it is still there after [`STOP_GRACE`].
    async fn stop(&mut self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    "native worker still running {} after SIGTERM: killing it",
                    crate::config::values::human_duration(STOP_GRACE)
                );
                self.kill().await
            }
        }
    }

    async fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGKILL);
        self.child.wait().await
    }
}

/// The slot cannot start its worker: said, and the slot leaves.
fn start_failed(n: &Native, why: String) -> ExitReason {
    tracing::error!(worker = %n.id.worker, "{why}");
    let _ = n.reports.send(Report::StartFailed { why });
    let _ = n.reports.send(Report::Exiting {
        reason: ExitReason::HandlerFailed,
    });
    ExitReason::HandlerFailed
}

/// How a worker that exited on its own leaves the slot.
fn exited(n: &Native, status: std::io::Result<ExitStatus>) -> ExitReason {
    match status {
        Ok(s) if s.success() => ExitReason::Drained,
        Ok(s) => {
            tracing::warn!(worker = %n.id.worker, "native worker exited: {s}");
            ExitReason::HandlerFailed
        }
        Err(e) => {
            tracing::warn!(worker = %n.id.worker, "waiting for native worker: {e}");
            ExitReason::HandlerFailed
        }
    }
}

/// `recycle_rss` on a timer (the timer exists only when the key is set):
/// the worker's RSS, when over the limit.
struct Rss {
    check: Option<RssCheck>,
    tick: tokio::time::Interval,
}

impl Rss {
    fn new(limit: Option<u64>) -> Rss {
        Rss {
            check: RssCheck::new(limit),
            tick: tokio::time::interval(NATIVE_RSS_EVERY),
        }
    }

    /// Waits for the next look; `true` when the worker is over the limit
    /// (logged). Never returns without a limit.
    async fn over(&mut self, worker: &str, pid: Option<u32>) -> bool {
        let Some(check) = self.check.as_mut() else {
            return std::future::pending().await;
        };
        let now = self.tick.tick().await;
        let Some(rss) = check.over(pid, true, now.into_std()) else {
            return false;
        };
        tracing::info!(
            worker = %worker,
            reason = "recycle_rss",
            "recycle: native worker uses {} (recycle_rss {})",
            crate::config::values::format_size(rss),
            crate::config::values::format_size(check.limit())
        );
        true
    }
}

/// `proxy = false`: the worker talks to the job servers itself.
async fn supervised(n: &Native<'_>, servers: &str) -> ExitReason {
    let launcher = launcher(n, servers);
    let mut worker = match Process::spawn(&launcher, servers, n.reports) {
        Ok(w) => w,
        Err(e) => {
            return start_failed(
                n,
                format!("cannot start native worker {:?}: {e}", launcher.program()),
            )
        }
    };
    let _ = n.reports.send(Report::Ready {
        pid: std::process::id(),
    });
    let mut rss = Rss::new(n.spec.worker.recycle_rss);
    let pid = worker.child.id();
    let reason = tokio::select! {
        s = worker.child.wait() => exited(n, s),
        _ = n.drain.cancelled() => {
            let _ = worker.stop().await;
            ExitReason::Drained
        }
        () = async { while !rss.over(&n.id.worker, pid).await {} } => {
            let _ = worker.stop().await;
            ExitReason::Memory
        }
    };
    let _ = n.reports.send(Report::Exiting { reason });
    reason
}

/// `proxy = true`: the worker talks to the job servers through the relay.
async fn relayed(mut n: Native<'_>) -> ExitReason {
    let w = &n.spec.worker;
    let shared = Shared::new(
        n.reports.clone(),
        n.spec.client_id(),
        w.max_packet_size,
        w.timeout,
        w.workleft,
        n.log_tags.take(),
    );
    if w.job_servers.len() == 1 {
        // One relay: while the worker has one connection, that task does
        // all the work and may wait for a due answer in recv(2) (pipe.rs).
        super::wire::BlockingWaits::get().enable();
    }
    // Listening before the worker starts: its first connect finds the relay.
    let relay = match Relay::bind(&w.job_servers, shared).await {
        Ok(r) => r,
        Err(e) => return start_failed(&n, format!("cannot listen for the native worker: {e}")),
    };
    let servers = relay.addrs.join(",");
    let launcher = launcher(&n, &servers);
    let shared = relay.shared.clone();
    let reason = serve(&mut n, &shared, &launcher, &servers).await;
    // The connections of a worker that is gone fail their jobs in hand
    // before the slot says what it did and leaves.
    relay.close(CLOSE_LIMIT).await;
    let Some(reason) = reason else {
        return ExitReason::HandlerFailed;
    };
    shared.report_idle();
    let reason = shared.leaving().unwrap_or(reason);
    let _ = n.reports.send(Report::Exiting { reason });
    reason
}

/// How one worker process's service ended.
enum Served {
    /// Killed because a job ran past `timeout`.
    Killed,
    /// Stopped between jobs, the slot stopping.
    Stopped,
    /// Exited on its own.
    Exited(ExitReason),
}

/// Runs the worker (again after a timeout killed it) until the slot stops.
/// `None`: the slot failed to start, and has said so.
async fn serve(
    n: &mut Native<'_>,
    shared: &Shared,
    launcher: &Launcher,
    servers: &str,
) -> Option<ExitReason> {
    let mut ready = false;
    let mut rss = Rss::new(n.spec.worker.recycle_rss);
    let mut epoch = shared.subscribe();
    loop {
        let mut worker = match Process::spawn(launcher, servers, n.reports) {
            Ok(w) => w,
            Err(e) => {
                start_failed(
                    n,
                    format!("cannot start native worker {:?}: {e}", launcher.program()),
                );
                return None;
            }
        };
        if !ready {
            // Ready once the worker has connected: a worker that ignores
            // SLOTMAN_JOB_SERVERS would otherwise look idle forever.
            let limit = n.spec.worker.ready_timeout;
            tokio::select! {
                () = shared.first_connection() => {}
                s = worker.child.wait() => {
                    let status = match s {
                        Ok(s) => super::handler::exec::describe(s),
                        Err(e) => e.to_string(),
                    };
                    let mut why = format!(
                        "native worker {:?} exited ({status}) before it connected to its job servers",
                        launcher.program()
                    );
                    if let Some(words) = crate::systemd::journal::handler_last_words().await {
                        why = format!("{why}: {words}");
                    }
                    start_failed(n, why);
                    return None;
                }
                () = tokio::time::sleep(limit) => {
                    let _ = worker.kill().await;
                    start_failed(n, format!(
                        "native worker {:?} did not connect to its job servers within {} (ready_timeout): it must take them from {JOB_SERVERS_ENV} or {JOB_SERVERS_ARG} (or set proxy = false)",
                        launcher.program(),
                        crate::config::values::human_duration(limit)
                    ));
                    return None;
                }
                _ = n.drain.cancelled() => {
                    let _ = worker.stop().await;
                    return Some(ExitReason::Drained);
                }
            }
            ready = true;
            let _ = n.reports.send(Report::Ready {
                pid: std::process::id(),
            });
        }
        // Serving, until the worker exits, is killed for a timeout, or the
        // slot stops and the job in hand is done.
        let pid = worker.child.id();
        let served = loop {
            if shared.stopping() && shared.idle() {
                let _ = worker.stop().await;
                break Served::Stopped;
            }
            if shared.pause_took_hold() {
                let _ = n.reports.send(Report::Paused { on: true });
                tracing::info!("paused: taking no new job");
            }
            tokio::select! {
                s = worker.child.wait() => break Served::Exited(exited(n, s)),
                _ = n.drain.cancelled(), if !shared.stopping() => shared.stop(None),
                _ = epoch.changed() => {}
                r = n.pause.changed() => {
                    if r.is_ok() {
                        let on = *n.pause.borrow_and_update();
                        // The relay checks the pause before every grab;
                        // the loop tells the manager once it holds.
                        shared.set_paused(on);
                        if !on {
                            let _ = n.reports.send(Report::Paused { on });
                            tracing::info!("resumed");
                        }
                    }
                }
                () = shared.kill_requested() => {
                    let _ = worker.kill().await;
                    break Served::Killed;
                }
                over = rss.over(&n.id.worker, pid), if !shared.stopping() => {
                    if over {
                        shared.stop(Some(ExitReason::Memory));
                    }
                }
            }
        };
        // The worker's connections end with it.
        shared.end_generation();
        match served {
            // Killed for a timeout: a fresh worker, unless the slot stops.
            Served::Killed if !shared.stopping() => {
                tracing::info!(worker = %n.id.worker, "starting a new native worker");
            }
            Served::Killed | Served::Stopped => return Some(ExitReason::Drained),
            Served::Exited(reason) => return Some(reason),
        }
    }
}
