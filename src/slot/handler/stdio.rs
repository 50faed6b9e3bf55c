//! The `stdio` handler: one long-running process per slot that takes jobs on
//! stdin and answers on stdout in the framing of `framing.rs` (DESIGN.md).
//!
//! The process is started by [`StdioHandler::start`] and must say `READY`
//! within the worker's `ready_timeout`, or it is killed and the start
//! fails. It serves job after job until it breaks: exits,
//! writes outside the framing, or runs past a job's timeout. The job in hand
//! then fails, the process is killed (its whole process group), and the next
//! job starts a fresh one. Nothing the handler does makes [`StdioHandler`]
//! panic or return anything but an [`Outcome`].

use std::io;
use std::pin::pin;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::time::timeout as within;
use tokio_util::sync::CancellationToken;

use crate::slot::wire::{Expect, Wire};

use super::exec::{describe, GroupChild, Launcher};
use super::framing::{job_header, FramingError, FromHandler, HandlerOutputCodec};
use super::*;

/// How long a handler gets to exit after its stdin is closed (shutdown) or
/// after it closed its stdout, before its process group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long a handler that ended a job before reading all of its payload
/// gets to read the rest; after that it is out of step and replaced.
const PAYLOAD_GRACE: Duration = Duration::from_secs(2);

/// Payloads up to this size go to the handler in the same write as their header.
const SMALL_PAYLOAD: usize = 64 * 1024;

/// A long-running handler process, replaced whenever it breaks.
pub struct StdioHandler {
    launcher: Launcher,
    /// Largest frame body accepted, and largest payload sent.
    max_size: usize,
    /// How long each process it starts has to say `READY`.
    ready_timeout: Duration,
    /// The running process; `None` once it broke and was killed, until the
    /// next job starts another. Boxed: it is big, and lives as long as the slot.
    process: Option<Box<Process>>,
    /// Told the pid of every process started after it was set.
    on_start: Option<super::OnStart>,
    /// The functions the first process named in its `READY` (none for a
    /// plain `READY`): what the slot registers when the config lists none.
    announced: Vec<String>,
}

impl StdioHandler {
    /// Spawns the handler and waits (at most `worker.ready_timeout`) for
    /// `READY`; `cancel` ends the wait at once.
    pub async fn start(
        worker: &WorkerConfig,
        id: &SlotIdentity,
        cancel: &CancellationToken,
    ) -> Result<Self, HandlerError> {
        let launcher = Launcher::new(worker, id);
        let max_size = usize::try_from(worker.max_packet_size).unwrap_or(usize::MAX);
        let ready_timeout = worker.ready_timeout;
        let (process, announced) =
            Process::start(&launcher, max_size, ready_timeout, Some(cancel)).await?;
        Ok(StdioHandler {
            launcher,
            max_size,
            ready_timeout,
            process: Some(process),
            on_start: None,
            announced,
        })
    }

    /// The functions the handler named in its `READY`.
    pub fn announced(&self) -> &[String] {
        &self.announced
    }

    /// Calls `f` with the pid of the current process, then of every one
    /// started later.
    pub fn on_process_start(&mut self, f: super::OnStart) {
        if let Some(pid) = self.pid() {
            f(pid);
        }
        self.on_start = Some(f);
    }

    /// A fresh process, announced to `on_start`. A job is in hand, and it
    /// finishes even through a drain: no cancelling this wait, which
    /// `ready_timeout` bounds.
    async fn start_process(&self) -> Result<Box<Process>, HandlerError> {
        let (process, announced) =
            Process::start(&self.launcher, self.max_size, self.ready_timeout, None).await?;
        if announced != self.announced {
            // The slot registered the first set; new code takes a restart.
            tracing::warn!(
                pid = process.child.child.id(),
                "replacement handler {:?} announced {} instead of {}: the slot keeps \
                 serving what it registered (`slotman restart` deploys new code)",
                self.launcher.program(),
                words(&announced),
                words(&self.announced)
            );
        }
        if let (Some(f), Some(pid)) = (&self.on_start, process.child.child.id()) {
            f(pid);
        }
        Ok(process)
    }

    /// Runs one job. A handler that exited or misbehaved since the last job is
    /// replaced first (a failure to replace it is [`FailReason::Spawn`]).
    /// `timeout` counts from when the job is handed to a ready handler.
    pub async fn run(
        &mut self,
        job: &Job,
        events: &mpsc::Sender<JobEvent>,
        timeout: Option<Duration>,
    ) -> Outcome {
        let header = match job_header(
            job.function.as_bytes(),
            job.handle.as_bytes(),
            job.unique.as_deref(),
            job.payload.len(),
            self.max_size,
        ) {
            Ok(header) => header,
            Err(e) => {
                let why = format!("the job cannot be sent to the handler: {e}");
                return Outcome::Fail(FailReason::Framing(why));
            }
        };
        let process = match self.ready_process().await {
            Ok(process) => process,
            Err(e) => return Outcome::Fail(FailReason::Spawn(e.to_string())),
        };
        let pid = process.child.child.id();
        let (outcome, health) = process.run(&header, &job.payload, events, timeout).await;
        if let Health::Broken(why) = health {
            tracing::warn!(
                pid,
                handle = job.handle,
                "stdio handler {:?} will be replaced: {why}",
                self.launcher.program()
            );
            if let Some(mut process) = self.process.take() {
                // The failure paths of `Process::run` have killed and reaped it already.
                if process.child.child.id().is_some() {
                    process.child.kill_and_reap().await;
                }
            }
        }
        outcome
    }

    /// PID of the handler process, while there is one.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.child.child.id())
    }

    /// Closes the handler's stdin, gives it [`EXIT_GRACE`] to exit, then
    /// kills its process group; always reaps it.
    pub async fn shutdown(mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        process.stdin = None;
        match within(EXIT_GRACE, process.child.child.wait()).await {
            // Leftovers of a handler that exited die with it.
            Ok(_) => process.child.kill_group(),
            Err(_) => {
                tracing::warn!(
                    pid = process.child.child.id(),
                    "stdio handler did not exit within {EXIT_GRACE:?} of its stdin closing; killing it"
                );
                process.child.kill_and_reap().await;
            }
        }
    }

    /// The current process if it can take a job, else a fresh one.
    async fn ready_process(&mut self) -> Result<&mut Process, HandlerError> {
        let process = match self.process.take() {
            Some(mut process) => match process.unusable() {
                None => process,
                Some(why) => {
                    tracing::warn!(
                        pid = process.child.child.id(),
                        "replacing stdio handler {:?}: {why}",
                        self.launcher.program()
                    );
                    process.child.kill_and_reap().await;
                    self.start_process().await?
                }
            },
            None => self.start_process().await?,
        };
        Ok(self.process.insert(process))
    }
}

/// Whether a process can take another job after this one.
enum Health {
    Fine,
    Broken(String),
}

/// One running handler process and its pipes.
struct Process {
    child: GroupChild,
    /// `None` only while shutting down.
    stdin: Option<ChildStdin>,
    /// Its stdout and the codec of what it writes there.
    frames: Frames,
    /// Set while a job is in hand: still set at the next job means the last
    /// one was abandoned half way (its future dropped), leaving the pipes out
    /// of step.
    in_job: bool,
    /// [`child_exits`] when this process was last checked on.
    exits_seen: Option<u64>,
}

/// SIGCHLDs this process has received (counted from the first handler on).
static CHILD_EXITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Starts counting SIGCHLDs, once per process; the count only moves while
/// the runtime runs, so a handler that dies right before a job can still
/// get it (the job then fails as "exited mid-job", as it always could).
fn count_child_exits() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
            Ok(mut sigchld) => {
                tokio::spawn(async move {
                    while sigchld.recv().await.is_some() {
                        CHILD_EXITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            // Without the count, look every time.
            Err(_) => CHILD_EXITS.store(u64::MAX, std::sync::atomic::Ordering::Relaxed),
        }
    });
}

/// The count, or `None` when it is not kept (then every check looks).
fn child_exits() -> Option<u64> {
    match CHILD_EXITS.load(std::sync::atomic::Ordering::Relaxed) {
        u64::MAX => None,
        n => Some(n),
    }
}

impl Process {
    /// Spawns the command and waits up to `ready_timeout` for `READY`, or
    /// until `cancel`; the process and the functions its `READY` named. On
    /// any failure the process is killed and reaped before returning.
    async fn start(
        launcher: &Launcher,
        max_size: usize,
        ready_timeout: Duration,
        cancel: Option<&CancellationToken>,
    ) -> Result<(Box<Process>, Vec<String>), HandlerError> {
        count_child_exits();
        let program = launcher.program().to_owned();
        let spawn_error = |error| HandlerError::Spawn {
            program: program.clone(),
            error,
        };
        let mut cmd = launcher
            .command(&[])
            .map_err(|why| spawn_error(io::Error::other(why)))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        // A long-running handler never outlives its runner, even a SIGKILLed
        // one (the runner forks from its one thread, so "parent thread exits"
        // is "runner exits"). Spawned once per handler, so the fork that a
        // pre_exec hook costs does not matter here (exec handlers skip it).
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = GroupChild::spawn(&mut cmd).map_err(spawn_error)?;
        let (Some(stdin), Some(stdout)) = (child.child.stdin.take(), child.child.stdout.take())
        else {
            child.kill_and_reap().await;
            return Err(spawn_error(io::Error::other("no pipes to the handler")));
        };
        let frames = match stdout.into_owned_fd().and_then(Wire::new) {
            Ok(wire) => Frames {
                wire,
                codec: HandlerOutputCodec::new(max_size),
            },
            Err(e) => {
                child.kill_and_reap().await;
                return Err(spawn_error(e));
            }
        };
        let mut process = Box::new(Process {
            child,
            stdin: Some(stdin),
            frames,
            in_job: false,
            exits_seen: child_exits(),
        });
        let not_ready = |line: String| HandlerError::NotReady {
            program: program.clone(),
            line,
        };
        let cancelled = async {
            match cancel {
                Some(cancel) => cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            first = within(ready_timeout, process.frames.next(Expect::Whenever)) => Some(first),
            () = cancelled => None,
        };
        let Some(first) = first else {
            process.child.kill_and_reap().await;
            return Err(HandlerError::Cancelled { program });
        };
        let error = match first {
            Ok(Some(Ok(FromHandler::Ready(announced)))) => {
                tracing::debug!(
                    pid = process.child.child.id(),
                    "stdio handler {program:?} is ready"
                );
                return Ok((process, announced));
            }
            Ok(None | Some(Err(FramingError::Truncated))) => HandlerError::ExitedBeforeReady {
                program: program.clone(),
                status: process.exit_status().await,
            },
            Ok(Some(Ok(frame))) => not_ready(frame.to_string()),
            Ok(Some(Err(e))) => not_ready(e.to_string()),
            Err(_) => HandlerError::ReadyTimeout {
                program: program.clone(),
                after: ready_timeout,
            },
        };
        process.child.kill_and_reap().await;
        Err(error)
    }

    /// Why this process cannot take the next job, if it cannot: it exited,
    /// or wrote something since its last job (which would otherwise be taken
    /// for the next job's answer). Looks without waiting, so a handler that
    /// is exiting right now may still get the job and fail it.
    fn unusable(&mut self) -> Option<String> {
        if self.in_job {
            return Some("its previous job was abandoned half way".into());
        }
        // wait4 only when a child has exited since the last look: one
        // system call less per job (a handler that dies also closes its
        // stdout, which the check below sees without one).
        let exits = child_exits();
        if exits.is_none() || exits != self.exits_seen {
            self.exits_seen = exits;
            match self.child.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => return Some(format!("it exited ({})", describe(status))),
                Err(e) => return Some(format!("cannot check on it: {e}")),
            }
        }
        if !self.frames.wire.buf.is_empty() {
            return Some("it wrote between jobs".into());
        }
        // Only when the runtime saw something arrive: no read per job.
        match self.frames.wire.read_if_ready() {
            Ok(None) => None,
            Ok(Some(0)) => Some("it closed its stdout".into()),
            Ok(Some(_)) => Some("it wrote between jobs".into()),
            Err(e) => Some(format!("reading its stdout failed: {e}")),
        }
    }

    /// Hands over one job and reads frames until it ends. Writing the payload
    /// and reading answers go on at once: a handler may answer (or fill its
    /// stdout pipe) before it has read all of a large payload.
    async fn run(
        &mut self,
        header: &[u8],
        payload: &Bytes,
        events: &mpsc::Sender<JobEvent>,
        timeout: Option<Duration>,
    ) -> (Outcome, Health) {
        self.in_job = true;
        let ended = self.exchange(header, payload, events, timeout).await;
        self.in_job = false;
        match ended {
            Ended::Answer(outcome, health) => (outcome, health),
            Ended::TimedOut(limit) => {
                self.child.kill_and_reap().await;
                let why = format!("job ran past its timeout of {limit:?}");
                (
                    Outcome::Fail(FailReason::Timeout(limit)),
                    Health::Broken(why),
                )
            }
            Ended::Broken(why) => {
                self.child.kill_and_reap().await;
                (
                    Outcome::Fail(FailReason::Framing(why.clone())),
                    Health::Broken(why),
                )
            }
            Ended::Eof => {
                let status = self.exit_status().await;
                let why = format!("it exited mid-job ({status})");
                (Outcome::Fail(FailReason::Died(status)), Health::Broken(why))
            }
            Ended::ReadFailed(e) => {
                let why = format!("reading its stdout failed: {e}");
                self.child.kill_and_reap().await;
                (
                    Outcome::Fail(FailReason::Died(why.clone())),
                    Health::Broken(why),
                )
            }
        }
    }

    async fn exchange(
        &mut self,
        header: &[u8],
        payload: &Bytes,
        events: &mpsc::Sender<JobEvent>,
        timeout: Option<Duration>,
    ) -> Ended {
        let Some(stdin) = self.stdin.as_mut() else {
            return Ended::Broken("its stdin is closed".into());
        };
        let small = payload.len() <= SMALL_PAYLOAD;
        if small {
            // One write, so the handler wakes once and finds the whole job;
            // it fits the empty pipe, so it does not wait for the handler.
            let mut job = Vec::with_capacity(header.len() + payload.len());
            job.extend_from_slice(header);
            job.extend_from_slice(payload);
            match stdin.write_all(&job).await {
                Ok(()) => {}
                // Its end of the pipe is closed: it exited, or is exiting.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ended::Eof,
                Err(e) => return Ended::Broken(format!("it did not take the job: {e}")),
            }
        }
        let mut write = pin!(async move {
            if !small {
                stdin.write_all(header).await?;
                stdin.write_all(payload).await?;
            }
            stdin.flush().await
        });
        // Waiting for the answer may block the thread only once the whole job
        // is in the pipe: a large payload is written while the answer is read.
        let expect = if small { Expect::Due } else { Expect::Whenever };
        let mut read = pin!(read_answer(&mut self.frames, events, expect));
        let mut deadline = pin!(async {
            match timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        });
        let mut written: Option<io::Result<()>> = None;
        let answer = loop {
            tokio::select! {
                done = &mut write, if written.is_none() => written = Some(done),
                answer = &mut read => break answer,
                () = &mut deadline => {
                    return Ended::TimedOut(timeout.unwrap_or_default());
                }
            }
        };
        let outcome = match answer {
            Ok(outcome) => outcome,
            Err(ended) => return ended,
        };
        // The answer stands; but the next job can only follow once the whole
        // payload is in the pipe.
        let written = match written {
            Some(done) => done,
            None => within(PAYLOAD_GRACE, write)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        };
        let health = match written {
            Ok(()) => Health::Fine,
            Err(e) => Health::Broken(format!("it did not take the whole payload: {e}")),
        };
        Ended::Answer(outcome, health)
    }

    /// The leader's exit status in the words of [`FailReason`], once it has
    /// closed its stdout: waits [`EXIT_GRACE`] for it to exit, then kills the
    /// group. Leftovers of the group are killed either way.
    async fn exit_status(&mut self) -> String {
        match within(EXIT_GRACE, self.child.child.wait()).await {
            Ok(Ok(status)) => {
                self.child.kill_group();
                describe(status)
            }
            Ok(Err(e)) => format!("cannot wait for it: {e}"),
            Err(_) => {
                self.child.kill_and_reap().await;
                "closed its stdout but did not exit".into()
            }
        }
    }
}

/// A handler's stdout: what it wrote, and how to read it.
struct Frames {
    wire: Wire<std::os::fd::OwnedFd>,
    codec: HandlerOutputCodec,
}

impl Frames {
    async fn next(&mut self, expect: Expect) -> Option<Result<FromHandler, FramingError>> {
        self.wire.next(&mut self.codec, expect).await
    }
}

/// How a job's exchange ended.
enum Ended {
    /// The handler ended the job; it may or may not take another.
    Answer(Outcome, Health),
    TimedOut(Duration),
    /// The handler wrote outside the framing.
    Broken(String),
    /// The handler's stdout ended mid-job.
    Eof,
    ReadFailed(io::Error),
}

/// Reads frames until the one that ends the job, passing progress on as it
/// comes; the job's outcome, or how the exchange broke down. A closed
/// `events` receiver only means nobody listens any more.
async fn read_answer(
    frames: &mut Frames,
    events: &mpsc::Sender<JobEvent>,
    expect: Expect,
) -> Result<Outcome, Ended> {
    loop {
        // A stream of short jobs waits without the runtime (wire.rs).
        let event = match frames.next(expect).await {
            Some(Ok(FromHandler::Status {
                numerator,
                denominator,
            })) => JobEvent::Status(numerator, denominator),
            Some(Ok(FromHandler::Data(data))) => JobEvent::Data(data),
            Some(Ok(FromHandler::Warning(data))) => JobEvent::Warning(data),
            Some(Ok(FromHandler::Complete(result))) => return Ok(Outcome::Complete(result)),
            Some(Ok(FromHandler::Exception(data))) => return Ok(Outcome::Exception(data)),
            Some(Ok(FromHandler::Fail)) => {
                let why = "handler sent FAIL".to_owned();
                return Ok(Outcome::Fail(FailReason::Declined(why)));
            }
            Some(Ok(FromHandler::Ready(_))) => {
                return Err(Ended::Broken("READY in the middle of a job".into()))
            }
            None | Some(Err(FramingError::Truncated)) => return Err(Ended::Eof),
            Some(Err(FramingError::Io(e))) => return Err(Ended::ReadFailed(e)),
            Some(Err(e)) => return Err(Ended::Broken(e.to_string())),
        };
        if events.send(event).await.is_err() {
            tracing::debug!("job event dropped: nobody is listening");
        }
    }
}

/// `a, b` or `nothing`, for logs.
fn words(functions: &[String]) -> String {
    if functions.is_empty() {
        "no functions".into()
    } else {
        functions.join(", ")
    }
}
