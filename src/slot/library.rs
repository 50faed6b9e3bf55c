//! The library mode of the seed-style kinds (a prototype for the S8
//! benchmark, switched on by `SLOTMAN_CONNECTION = "library"` in the
//! worker's `env`): the language library holds the job-server connections
//! itself and the runner only watches it.
//!
//! The library is started with the real job servers (`SLOTMAN_JOB_SERVERS`),
//! the prefix, the slot's client id, the functions to register and
//! `workleft`. It reports on its stdout, one line each: `READY f...`,
//! `LINK ADDR [why]`, `BUSY FUNCTION HANDLE`, `DONE COMPLETE|EXCEPTION|FAIL`,
//! `IDLE`; the runner writes `STOP`, `PAUSE`, `RESUME` to its stdin. From
//! those the runner keeps what the manager needs (busy/idle, job counts,
//! link health), the per-job journal fields, `workleft`, a drain that lets
//! the job in hand finish, and `timeout` — by killing the library, so the
//! job server re-queues the job rather than failing it: the one rule of
//! DESIGN.md this mode cannot keep, as only the connection holding a job may
//! answer it.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::handler::exec::Launcher;
use super::handler::SlotIdentity;
use super::native::{JOB_SERVERS_ENV, STOP_GRACE};
use super::report::{ExitReason, JobResult, Links, Report, Reports, SlotSpec, Told, SHORT_JOB};
use crate::config::WorkerConfig;
use crate::systemd::journal::{JobTag, JobTags};

/// The worker `env` entry that switches the mode on (prototype only).
pub const SWITCH_ENV: &str = "SLOTMAN_CONNECTION";

/// How long past `timeout` (at least a second: PHP's alarm counts whole
/// seconds) the runner waits for the library to fail the job itself,
/// before it kills the process.
const BACKSTOP: Duration = Duration::from_secs(2);

/// Longest report line the runner reads from the library.
const MAX_LINE: usize = 4096;

/// Whether `worker` runs in the library mode.
pub fn wanted(worker: &WorkerConfig) -> bool {
    worker.kind.language().is_some() && worker.env.get(SWITCH_ENV).is_some_and(|v| v == "library")
}

/// What a library slot needs besides its spec.
pub struct Library<'a> {
    pub spec: &'a SlotSpec,
    pub id: &'a SlotIdentity,
    pub reports: &'a Reports,
    pub drain: &'a CancellationToken,
    pub pause: tokio::sync::watch::Receiver<bool>,
    pub log_tags: Option<JobTags>,
}

/// The slot's bookkeeping across library processes.
struct State {
    told: Told,
    links: Links,
    done: u64,
    ready: bool,
    /// Why the slot leaves on its own (workleft), if it does.
    leaving: Option<ExitReason>,
    /// The library failed a job at `timeout` and exits to be replaced.
    replace: bool,
}

/// How one library process ended.
enum Ended {
    /// Killed for a job past `timeout`: a fresh one follows.
    Killed,
    /// Exited (or was stopped) for this reason.
    Left(ExitReason),
}

pub async fn run(mut n: Library<'_>) -> ExitReason {
    let w = &n.spec.worker;
    let launcher = Launcher::new(w, n.id);
    let client_id = format!(
        "slotman:{}:{}:{}:{}",
        n.spec.service,
        w.name,
        n.spec.slot,
        std::process::id()
    );
    let env = [
        ("SLOTMAN_CONNECTION", "library".to_owned()),
        (JOB_SERVERS_ENV, w.job_servers.join(",")),
        ("SLOTMAN_PREFIX", w.prefix.clone()),
        ("SLOTMAN_CLIENT_ID", client_id),
        ("SLOTMAN_FUNCTIONS", w.functions.join(" ")),
        ("SLOTMAN_WORKLEFT", w.workleft.to_string()),
        ("SLOTMAN_MAX_PACKET", w.max_packet_size.to_string()),
        (
            "SLOTMAN_TIMEOUT_MS",
            w.timeout.map_or(0, |t| t.as_millis()).to_string(),
        ),
    ];
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let mut st = State {
        told: Told::default(),
        links: Links::default(),
        done: 0,
        ready: false,
        leaving: None,
        replace: false,
    };
    let reason = loop {
        let mut cmd = match launcher.command(&env) {
            Ok(c) => c,
            Err(why) => break start_failed(&n, why),
        };
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                break start_failed(&n, format!("cannot start {:?}: {e}", launcher.program()))
            }
        };
        if let Some(pid) = child.id() {
            // Our unreaped child: its /proc entry is surely it.
            let stat = crate::procfs::stat(pid);
            let _ = n.reports.send(Report::Handler {
                pid,
                start: stat.map(|s| s.start_time),
                session: stat.map(|s| s.session),
            });
        }
        match serve(&mut n, &mut st, &mut child).await {
            Ended::Killed if !n.drain.is_cancelled() && st.leaving.is_none() => {
                tracing::info!(worker = %n.id.worker, "starting a new library process");
            }
            Ended::Killed => break ExitReason::Drained,
            Ended::Left(reason) => break reason,
        }
    };
    if let Some(tags) = &n.log_tags {
        tags.switch(None);
    }
    st.told.idle(n.reports);
    let reason = st.leaving.unwrap_or(reason);
    let _ = n.reports.send(Report::Exiting { reason });
    reason
}

/// The slot cannot start its library: said, and the slot leaves.
fn start_failed(n: &Library, why: String) -> ExitReason {
    tracing::error!(worker = %n.id.worker, "{why}");
    let _ = n.reports.send(Report::StartFailed { why });
    ExitReason::HandlerFailed
}

/// Signals the library's process group while its leader is unreaped.
fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

/// The job in hand, as the library reported it.
struct InHand {
    function: String,
    handle: String,
    started: Instant,
    /// Its start has not reached the manager yet (short jobs streaming).
    unreported: bool,
}

/// Serves one library process until it exits, is stopped, or is killed.
async fn serve(n: &mut Library<'_>, st: &mut State, child: &mut Child) -> Ended {
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        signal(child, Signal::SIGKILL);
        return Ended::Left(ExitReason::HandlerFailed);
    };
    let mut stdin = Some(stdin);
    let mut lines = BufReader::new(stdout);
    let w = &n.spec.worker;
    let ready_by = Instant::now() + w.ready_timeout;
    let mut job: Option<InHand> = None;
    let mut stop_sent = false;
    let mut line = Vec::new();
    loop {
        let stop_wanted = n.drain.is_cancelled() || st.leaving.is_some();
        if stop_wanted && !stop_sent {
            stop_sent = true;
            send(&mut stdin, b"STOP\n").await;
        }
        // The library fails a job at `timeout` itself (it holds the job's
        // connection); the runner kills it only if it has not by then.
        let timeout_at = job
            .as_ref()
            .zip(w.timeout)
            .map(|(j, t)| j.started + t.max(Duration::from_secs(1)) + BACKSTOP);
        let long_at = job
            .as_ref()
            .filter(|j| j.unreported)
            .map(|j| j.started + SHORT_JOB);
        tokio::select! {
            r = read_line(&mut lines, &mut line) => match r {
                Ok(true) => {
                    if let Err(why) = report(n, st, &mut job, &line) {
                        tracing::warn!(worker = %n.id.worker, "library process broke its reports ({why}): killing it; the job server re-queues its job");
                        signal(child, Signal::SIGKILL);
                        let _ = child.wait().await;
                        return Ended::Left(ExitReason::HandlerFailed);
                    }
                }
                // Its stdout closed: it is leaving.
                Ok(false) | Err(_) => return exited(n, st, child, job.as_ref(), stop_sent).await,
            },
            _ = n.drain.cancelled(), if !stop_sent => {}
            r = n.pause.changed() => {
                if r.is_ok() {
                    let on = *n.pause.borrow_and_update();
                    send(&mut stdin, if on { b"PAUSE\n" } else { b"RESUME\n" }).await;
                }
            }
            () = sleep_until(ready_by), if !st.ready => {
                signal(child, Signal::SIGKILL);
                let _ = child.wait().await;
                return Ended::Left(start_failed(n, format!(
                    "{:?} did not say READY within {} (ready_timeout)",
                    n.id.worker,
                    crate::config::values::human_duration(w.ready_timeout)
                )));
            }
            () = sleep_until(long_at.unwrap_or_else(Instant::now)), if long_at.is_some() => {
                if let Some(j) = job.as_mut() {
                    j.unreported = false;
                    st.told.busy(n.reports, &j.function, &j.handle, std::time::Instant::now(), true);
                }
            }
            () = sleep_until(timeout_at.unwrap_or_else(Instant::now)), if timeout_at.is_some() => {
                let j = job.take();
                signal(child, Signal::SIGKILL);
                let _ = child.wait().await;
                if let Some(j) = j {
                    tracing::warn!(
                        worker = %n.id.worker,
                        function = %j.function,
                        handle = %j.handle,
                        "job timed out after {}: library process killed; the job server re-queues the job",
                        crate::config::values::human_duration(j.started.elapsed())
                    );
                    st.told.finished(&j.function, JobResult::Fail, j.started.elapsed());
                }
                if let Some(tags) = &n.log_tags {
                    tags.switch(None);
                }
                return Ended::Killed;
            }
        }
    }
}

/// Writes a command to the library; a library gone already is seen on its stdout.
async fn send(stdin: &mut Option<ChildStdin>, bytes: &[u8]) {
    if let Some(s) = stdin.as_mut() {
        if s.write_all(bytes).await.is_err() {
            *stdin = None;
        }
    }
}

/// One report line into `line` (without `\n`); `false` at EOF.
async fn read_line(
    lines: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    let n = (&mut *lines)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    if n == 0 {
        return Ok(false);
    }
    if line.pop() != Some(b'\n') {
        return Err(std::io::Error::other("report line too long or cut"));
    }
    Ok(true)
}

/// Acts on one report line.
fn report(
    n: &Library,
    st: &mut State,
    job: &mut Option<InHand>,
    line: &[u8],
) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|_| "a line that is not UTF-8".to_owned())?;
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    let w = &n.spec.worker;
    match word {
        "BUSY" => {
            let (function, handle) = rest.split_once(' ').ok_or("BUSY without a handle")?;
            let full = format!("{}{function}", w.prefix);
            if let Some(tags) = &n.log_tags {
                tags.switch(Some(JobTag {
                    function: full.clone(),
                    handle: handle.to_owned(),
                }));
            }
            let now = Instant::now();
            let told = st
                .told
                .busy(n.reports, &full, handle, now.into_std(), false);
            *job = Some(InHand {
                function: full,
                handle: handle.to_owned(),
                started: now,
                unreported: !told,
            });
        }
        "DONE" => {
            let result = match rest {
                "COMPLETE" => JobResult::Complete,
                "EXCEPTION" => JobResult::Exception,
                "FAIL" => JobResult::Fail,
                "TIMEOUT" => {
                    // The library failed it and leaves: a fresh one follows.
                    st.replace = true;
                    JobResult::Fail
                }
                _ => return Err(format!("DONE {rest:?}")),
            };
            let j = job.take().ok_or("DONE without BUSY")?;
            if let Some(tags) = &n.log_tags {
                tags.switch(None);
            }
            st.told.finished(&j.function, result, j.started.elapsed());
            st.done += 1;
            if w.workleft > 0 && st.done >= w.workleft {
                st.leaving.get_or_insert(ExitReason::Workleft);
            }
        }
        "IDLE" => st.told.idle(n.reports),
        "LINK" => {
            let (server, why) = match rest.split_once(' ') {
                Some((s, why)) => (s, Some(why)),
                None => (rest, None),
            };
            st.links.report(n.reports, server, why);
        }
        "READY" if !st.ready => {
            st.ready = true;
            if w.functions.is_empty() {
                let _ = n.reports.send(Report::Registered {
                    functions: rest.split(' ').map(str::to_owned).collect(),
                });
            }
            let _ = n.reports.send(Report::Ready {
                pid: std::process::id(),
            });
        }
        _ => return Err(format!("{:?}", text.chars().take(80).collect::<String>())),
    }
    Ok(())
}

/// The library closed its stdout: waits for it to exit (SIGKILL if a
/// stop outlasts [`STOP_GRACE`]) and says how the slot leaves.
async fn exited(
    n: &Library<'_>,
    st: &mut State,
    child: &mut Child,
    job: Option<&InHand>,
    stopped: bool,
) -> Ended {
    let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            signal(child, Signal::SIGKILL);
            child.wait().await
        }
    };
    if let Some(j) = job {
        tracing::warn!(worker = %n.id.worker, function = %j.function, handle = %j.handle,
            "library process left mid-job; the job server re-queues the job");
    }
    match status {
        Ok(s) if s.success() && (stopped || st.leaving.is_some()) => {
            Ended::Left(ExitReason::Drained)
        }
        Ok(s) if s.success() && std::mem::take(&mut st.replace) => Ended::Killed,
        Ok(s) => {
            let mut why = format!(
                "library process exited ({})",
                super::handler::exec::describe(s)
            );
            if let Some(words) = crate::systemd::journal::handler_last_words().await {
                why = format!("{why}: {words}");
            }
            if st.ready {
                tracing::warn!(worker = %n.id.worker, "{why}");
                Ended::Left(ExitReason::HandlerFailed)
            } else {
                Ended::Left(start_failed(n, why))
            }
        }
        Err(e) => Ended::Left(start_failed(
            n,
            format!("waiting for the library process: {e}"),
        )),
    }
}
