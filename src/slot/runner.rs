//! The slot runner: joins the job-server connections to one handler and
//! reports to the manager.
//!
//! Lifecycle: start the handler → connect every job server → report `ready`
//! → jobs (`busy` / `done` on transitions) → drain (workleft reached, `drain` from the
//! manager, SIGTERM, or the manager gone) → finish the job in hand → report
//! `exiting` → stop the handler → exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use super::connection::{self, ConnectionSpec, Gate, JobRunner};
use super::cpu::CpuPair;
use super::handler::{FailReason, Handler, HandlerError, Job, JobEvent, Outcome, SlotIdentity};
use super::memory::RssCheck;
use super::report::{
    BusyReport, ExitReason, JobResult, Links, ManagerView, Report, Reports, SlotSpec, SHORT_JOB,
};
use crate::config::HandlerKind;
use crate::systemd::journal::JobTag;

/// The job side of the slot: the handler plus workleft accounting.
struct Jobs {
    handler: Mutex<Handler>,
    spec: SlotSpec,
    reports: Reports,
    done: AtomicU64,
    gate: Gate,
    drain: CancellationToken,
    /// Tags the handler's stderr lines with the job in hand, and starts
    /// each job's log budget.
    log_tags: Option<crate::systemd::journal::JobTags>,
    /// Why the slot leaves on its own (OOM kill, workleft, recycle_rss),
    /// once one of them happened: the first one counts.
    leaving: std::sync::Mutex<Option<ExitReason>>,
    /// The cgroup's OOM-kill count when last read (at start, then after each
    /// job whose handler died): read on failure only, never per job.
    ooms_seen: std::sync::Mutex<Option<u64>>,
    /// What the manager has been told, and what it has not yet.
    manager_view: std::sync::Mutex<ManagerView>,
    /// `recycle_rss`, when set.
    rss_check: std::sync::Mutex<Option<RssCheck>>,
    /// `pin_cpu`: the runner and the handler on one CPU while jobs are short.
    cpu: Arc<CpuPair>,
    /// What the manager was last told of each job server connection
    /// (`None`: up; else the error).
    links: std::sync::Mutex<Links>,
    /// The manager's pause: while on, a connection that gets the permit
    /// gives it back (the pause holder is queued for it).
    pause: tokio::sync::watch::Receiver<bool>,
    /// A job is in hand (between its assignment and its answer).
    in_job: tokio::sync::watch::Sender<bool>,
}

impl Jobs {
    fn manager_view(&self) -> std::sync::MutexGuard<'_, ManagerView> {
        self.manager_view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot has no job in hand: send what is counted, and say so.
    fn report_idle(&self) {
        self.manager_view().idle(&self.reports);
    }

    /// See [`ManagerView::busy`].
    fn report_busy(&self, job: &Job, now: Instant, when: BusyReport) -> bool {
        self.manager_view()
            .busy(&self.reports, &job.gearman_function, &job.handle, now, when)
    }
    /// Switches the handler's log lines to `job`.
    fn mark_job(&self, job: Option<JobTag>) {
        if let Some(tags) = &self.log_tags {
            tags.switch(job);
        }
    }

    /// The slot exits after the job in hand, for `reason`. The gate closes
    /// while this job still holds the permit, so no other connection can
    /// grab one more.
    fn leave(&self, reason: ExitReason) {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        self.gate.close();
        self.drain.cancel();
    }

    /// After a job: a handler above `recycle_rss` is replaced, the slot
    /// exits once this job is answered (the manager starts its successor).
    fn check_rss(&self, pid: Option<u32>, long_job: bool) {
        let mut check = self.rss_check.lock().unwrap_or_else(|e| e.into_inner());
        let Some(check) = check.as_mut() else { return };
        if let Some(rss) = check.over(pid, long_job, Instant::now()) {
            tracing::info!(
                reason = "recycle_rss",
                "recycle: handler {} uses {} (recycle_rss {})",
                pid.unwrap_or(0),
                crate::config::values::format_size(rss),
                crate::config::values::format_size(check.limit())
            );
            self.leave(ExitReason::Memory);
        }
    }
}

impl JobRunner for Jobs {
    fn idle(&self) {
        self.report_idle();
    }

    fn link(&self, server: &str, error: Option<&str>) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report(&self.reports, server, error);
    }

    fn paused(&self) -> bool {
        *self.pause.borrow()
    }

    fn may_prefetch(&self) -> bool {
        if self.gate.is_closed() || self.drain.is_cancelled() || self.paused() {
            return false;
        }
        // Jobs finished so far, not counting the one about to run.
        let workleft = self.spec.worker.workleft;
        workleft == 0 || self.done.load(Ordering::SeqCst) + 1 < workleft
    }

    async fn run(&self, job: Job, events: mpsc::Sender<JobEvent>) -> Outcome {
        let started = Instant::now();
        self.in_job.send_replace(true);
        let reported = self.report_busy(&job, started, BusyReport::IfStale);
        self.mark_job(Some(JobTag {
            function: job.gearman_function.clone(),
            handle: job.handle.clone(),
        }));
        let (outcome, handler_pid) = {
            let mut handler = self.handler.lock().await;
            let run = handler.run(&job, &events, self.spec.worker.timeout);
            let outcome = if reported && !self.cpu.is_pinned() {
                run.await
            } else {
                // Unreported start in a stream of short jobs, or a pinned
                // pair: if this job turns out long, the manager hears of it
                // (and of the jobs before it) now, not when it ends, and
                // the pair is unpinned. The first poll often finishes the
                // job (wire.rs may block for the answer), and then no timer
                // is set: arming one costs the runtime a wake-up of its own
                // driver.
                tokio::pin!(run);
                match futures::poll!(&mut run) {
                    std::task::Poll::Ready(outcome) => outcome,
                    std::task::Poll::Pending => {
                        let left = SHORT_JOB.saturating_sub(started.elapsed());
                        tokio::select! {
                            outcome = &mut run => outcome,
                            () = tokio::time::sleep(left) => {
                                if !reported {
                                    self.report_busy(&job, Instant::now(), BusyReport::Always);
                                }
                                self.cpu.long_job();
                                run.await
                            }
                        }
                    }
                }
            };
            (outcome, handler.pid())
        };
        self.mark_job(None);
        self.in_job.send_replace(false);
        let result = match &outcome {
            Outcome::Complete(_) => JobResult::Complete,
            Outcome::Exception(_) => JobResult::Exception,
            Outcome::Fail(why) => {
                let oom = matches!(why, FailReason::Died(_)) && {
                    let now = oom_kills();
                    let mut seen = self.ooms_seen.lock().unwrap_or_else(|e| e.into_inner());
                    let grew = matches!((*seen, now), (Some(a), Some(b)) if b > a);
                    if now.is_some() {
                        *seen = now;
                    }
                    grew
                };
                if oom {
                    tracing::error!(
                        gearman_function = %job.gearman_function,
                        gearman_handle = %job.handle,
                        reason = "oom",
                        "job failed: the kernel OOM killer killed the handler (memory_max {}); replacing this slot",
                        self.spec.worker.memory_max.map_or("-".into(), |m| m.to_string())
                    );
                    self.leave(ExitReason::OomKilled);
                } else if matches!(why, FailReason::Spawn(_)) && self.spec.worker.kind.is_stdio() {
                    // A replacement handler that cannot start (or never says
                    // READY) would cost every later job its ready_timeout:
                    // the slot leaves as a failed start, which the manager
                    // counts towards the worker's start limit.
                    tracing::error!(
                        gearman_function = %job.gearman_function,
                        gearman_handle = %job.handle,
                        "job failed: {why}; this slot leaves"
                    );
                    self.leave(ExitReason::HandlerFailed);
                } else {
                    tracing::warn!(
                        gearman_function = %job.gearman_function,
                        gearman_handle = %job.handle,
                        "job failed: {why}"
                    );
                }
                JobResult::Fail
            }
        };
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let workleft = self.spec.worker.workleft;
        if workleft > 0 && done >= workleft {
            self.leave(ExitReason::Workleft);
        }
        let took = started.elapsed();
        if took < SHORT_JOB {
            self.cpu.after_short_job();
        }
        if !self.gate.is_closed() {
            self.check_rss(handler_pid, took >= SHORT_JOB);
        }
        self.manager_view()
            .finished(&job.gearman_function, result, took);
        if self.gate.is_closed() {
            // Exiting next: the manager hears of this job now.
            self.report_idle();
        }
        outcome
    }
}

/// Runs a slot until it drains. `drain` may be cancelled from outside
/// (manager message, SIGTERM); the job in hand always finishes first.
pub async fn run(
    spec: SlotSpec,
    reports: Reports,
    drain: CancellationToken,
    cpu: Arc<CpuPair>,
    pause: tokio::sync::watch::Receiver<bool>,
) -> ExitReason {
    let id = SlotIdentity {
        service: spec.service.clone(),
        worker: spec.worker.name.clone(),
        slot: spec.slot,
    };
    let log_tags = match crate::systemd::journal::forward_handler_output(
        &spec.service,
        &spec.worker.name,
        spec.slot,
        spec.worker.kind != HandlerKind::Native || spec.worker.proxy,
    ) {
        Ok((fd, tags)) => {
            super::handler::set_handler_stderr(fd);
            tags
        }
        Err(e) => {
            tracing::warn!("handler stderr is not forwarded: {e}");
            None
        }
    };
    if spec.worker.kind == HandlerKind::Native {
        return super::native::run(super::native::Native {
            spec: &spec,
            id: &id,
            reports: &reports,
            drain: &drain,
            pause,
            log_tags,
        })
        .await;
    }
    let mut handler = match Handler::start(&spec.worker, &id, &drain).await {
        Ok(h) => h,
        Err(e @ HandlerError::Cancelled { .. }) => {
            tracing::info!(worker = %id.worker, slot = id.slot, "{e}");
            let _ = reports.send(Report::Exiting {
                reason: ExitReason::Drained,
            });
            return ExitReason::Drained;
        }
        Err(e) => {
            tracing::error!(worker = %id.worker, slot = id.slot, "{e}");
            let why = match crate::systemd::journal::handler_last_words().await {
                Some(words) => format!("{e}: {words}"),
                None => e.to_string(),
            };
            let _ = reports.send(Report::StartFailed { why });
            let _ = reports.send(Report::Exiting {
                reason: ExitReason::HandlerFailed,
            });
            return ExitReason::HandlerFailed;
        }
    };
    let functions = match register(&spec, handler.announced()) {
        Ok(functions) => functions,
        Err(why) => {
            tracing::error!(worker = %id.worker, slot = id.slot, "{why}");
            handler.shutdown().await;
            let _ = reports.send(Report::StartFailed { why });
            let _ = reports.send(Report::Exiting {
                reason: ExitReason::HandlerFailed,
            });
            return ExitReason::HandlerFailed;
        }
    };
    if spec.worker.functions.is_empty() {
        let _ = reports.send(Report::Registered {
            functions: functions.clone(),
        });
    }
    // Every handler process is reported as it starts, before it gets a
    // job: the manager's cleanup after a killed runner needs its group.
    let to_manager = reports.clone();
    let pair = cpu.clone();
    handler.on_process_start(Box::new(move |pid| {
        pair.set_handler(pid);
        super::report::report_handler_start(&to_manager, pid);
    }));
    let gate: Gate = Arc::new(Semaphore::new(1));
    let pause_rx = pause.clone();
    let jobs = Arc::new(Jobs {
        handler: Mutex::new(handler),
        spec: spec.clone(),
        reports: reports.clone(),
        done: AtomicU64::new(0),
        gate: gate.clone(),
        drain: drain.clone(),
        log_tags,
        leaving: Default::default(),
        ooms_seen: std::sync::Mutex::new(oom_kills()),
        rss_check: std::sync::Mutex::new(RssCheck::new(spec.worker.recycle_rss)),
        cpu,
        links: Default::default(),
        manager_view: Default::default(),
        pause,
        in_job: tokio::sync::watch::channel(false).0,
    });
    tokio::spawn(hold_while_paused(
        Arc::downgrade(&jobs),
        gate.clone(),
        pause_rx,
        jobs.in_job.subscribe(),
    ));
    let client_id = spec.client_id();
    let servers = spec.worker.job_servers.clone();
    if servers.len() == 1 {
        // The one connection task does all the work: it may block the
        // thread while jobs stream (wire.rs).
        super::wire::BlockingWaits::get().enable();
    }
    let (first_tx, mut first_rx) = mpsc::channel(servers.len().max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for server in servers.iter() {
        let cspec = ConnectionSpec {
            server: server.clone(),
            client_id: client_id.clone(),
            prefix: spec.worker.prefix.clone(),
            functions: functions.clone(),
            max_packet: spec.worker.max_packet_size,
            // With two servers, the next job could come from either: the
            // prefetching grab would hold the permit across both.
            prefetch: spec.worker.prefetch && servers.len() == 1,
        };
        tasks.spawn(connection::serve(
            cspec,
            gate.clone(),
            drain.clone(),
            jobs.clone(),
            first_tx.clone(),
        ));
    }
    drop(first_tx);
    // Ready once every server has been tried once (a server that is down must
    // not hold the pool's start hostage; it is retried in the background).
    for _ in 0..servers.len() {
        tokio::select! {
            _ = first_rx.recv() => {}
            _ = drain.cancelled() => break,
        }
    }
    let _ = reports.send(Report::Ready {
        pid: std::process::id(),
    });

    // Drain: close the gate so idle connections leave; a connection mid-job
    // keeps its permit until it has answered.
    let drained = drain.clone();
    let gate_on_drain = gate.clone();
    tokio::spawn(async move {
        drained.cancelled().await;
        gate_on_drain.close();
    });
    while tasks.join_next().await.is_some() {}

    let reason = jobs
        .leaving
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(ExitReason::Drained);
    jobs.report_idle();
    let _ = reports.send(Report::Exiting { reason });
    if let Ok(jobs) = Arc::try_unwrap(jobs) {
        jobs.handler.into_inner().shutdown().await;
    }
    reason
}

/// The functions this slot registers (see
/// [`super::handler::registration`]); the difference between the config's
/// list and the handler's `READY` is logged once, here.
fn register(spec: &SlotSpec, announced: &[String]) -> Result<Vec<String>, String> {
    let reg = super::handler::registration(&spec.worker.functions, announced)?;
    if !reg.not_announced.is_empty() {
        tracing::warn!(
            worker = %spec.worker.name,
            "not registered: {} (listed in `functions`, but the handler does not announce them)",
            reg.not_announced.join(", ")
        );
    }
    if !reg.not_listed.is_empty() {
        tracing::info!(
            worker = %spec.worker.name,
            "not registered: {} (announced by the handler, not listed in `functions`)",
            reg.not_listed.join(", ")
        );
    }
    Ok(reg.functions)
}

/// While the manager says paused, holds the slot's one job permit: the
/// job in hand finishes (the permit is taken once it is answered) and no
/// connection can grab another; they stay registered meanwhile. The
/// manager hears `paused` once no new job can start: when the permit is
/// held, or while a job is in hand (a grab already sent may still bring
/// one; its reply comes within the grab's deadline). Ends when the gate
/// closes (drain).
///
/// `jobs` is weak: the runner shuts the handler down once it holds the only
/// reference.
async fn hold_while_paused(
    jobs: std::sync::Weak<Jobs>,
    gate: Gate,
    mut pause: tokio::sync::watch::Receiver<bool>,
    mut in_job: tokio::sync::watch::Receiver<bool>,
) {
    let tell = |on: bool| {
        if let Some(jobs) = jobs.upgrade() {
            let _ = jobs.reports.send(Report::Paused { on });
        }
    };
    loop {
        if pause.wait_for(|on| *on).await.is_err() {
            return;
        }
        // Queued for the permit at once: the semaphore is fair, so a
        // connection asking after this cannot take it first.
        let acquire = gate.clone().acquire_owned();
        tokio::pin!(acquire);
        let mut told = false;
        let held = loop {
            tokio::select! {
                p = &mut acquire => match p {
                    Ok(p) => break Some(p),
                    Err(_) => return,
                },
                r = in_job.wait_for(|busy| *busy), if !told => match r {
                    Ok(_) => {
                        told = true;
                        tell(true);
                    }
                    Err(_) => return,
                },
                // Resumed before the job in hand was done.
                r = pause.wait_for(|on| !*on) => match r {
                    Ok(_) => break None,
                    Err(_) => return,
                },
            }
        };
        let Some(held) = held else {
            if told {
                tell(false);
            }
            continue;
        };
        // The job in hand, if any, is answered: the slot is idle now.
        if let Some(jobs) = jobs.upgrade() {
            jobs.report_idle();
        }
        if !told {
            tell(true);
        }
        tracing::info!("paused: taking no new job");
        if pause.wait_for(|on| !*on).await.is_err() {
            return;
        }
        drop(held);
        tell(false);
        tracing::info!("resumed");
    }
}

/// OOM kills in this process's memory cgroup so far (cgroup v2
/// `memory.events`, or v1 `memory.oom_control`); `None` where unknown.
fn oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.events"));
            candidates.push(format!("/sys/fs/cgroup/unified{path}/memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
        }
    }
    candidates.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    })
}
