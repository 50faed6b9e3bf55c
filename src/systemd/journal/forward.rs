//! The pipe handlers write their stderr to, and the task that forwards it
//! (through a [`LineSink`]), tagging each line with the job in hand.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::logging::stderr_is_journal;
use super::sender::JournalSender;
use super::sink::{last_words, LineSink, Out};

/// Most a job switch reads of a handler's stderr itself (a pipe's default
/// capacity).
const SWITCH_READ_MAX: usize = 64 * 1024;

/// Most the forwarder reads of a handler's stderr at a time.
pub(super) const READ_MAX: usize = 64 * 1024;

/// Most bytes of a handler's stderr forwarded per job (and per stretch
/// between two jobs); the rest is counted and dropped, and one line at the
/// job's end says how much. journald keeps at most `RateLimitBurst=` (10 000
/// by default) entries per `RateLimitIntervalSec=` (30 s) of a unit and
/// drops the rest, the runner's own messages with them, and a job that
/// writes megabytes to stderr is dumping data rather than logging. 2 MiB is
/// 20 000 lines of 100 bytes; at worst (lines of one character) it is half a
/// million entries, under two seconds of the runner's time.
pub(super) const JOB_LOG_MAX: u64 = 2 * 1024 * 1024;

/// The job a handler line belongs to, as its journal fields name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTag {
    /// `GEARMAN_FUNCTION`: the full name on the job server.
    pub function: String,
    /// `GEARMAN_HANDLE`.
    pub handle: String,
}

/// Tags the handlers' stderr lines with the job in hand, and tells the
/// forwarder where one job ends and the next begins (each job has its own
/// [`JOB_LOG_MAX`]).
///
/// When logging to the journal, a switch also reads the pipe: a handler
/// writes its stderr before its answer, so at a switch the pipe holds
/// exactly the lines of the job that ended. [`JobTags::switch`] reads them
/// itself (one failed read(2) when there are none, the usual case) and
/// hands them to the forwarder already tagged: no round trip to the
/// forwarder task per job. The lock orders the runner's reads and switches
/// against the forwarder's reads, so a line always carries the tag that was
/// current when it left the pipe, and lines reach the journal in order.
/// Without the journal lines carry no job fields, and a switch only counts:
/// lines still in the pipe at a switch count against the next job.
pub struct JobTags {
    shared: Arc<Shared>,
    /// The pipe's read end (a dup of the forwarder's; non-blocking), when
    /// lines are tagged.
    pipe: Option<OwnedFd>,
}

struct Shared {
    tags: std::sync::Mutex<Tags>,
    /// Wakes the forwarder for bytes in `handed`, or to report a job's
    /// dropped lines.
    wake: tokio::sync::Notify,
    /// The forwarder has stopped: nothing would take what `switch` reads.
    closed: AtomicBool,
    /// Switches so far: when it changes, the forwarder starts a new job's
    /// budget.
    switches: AtomicU64,
    /// The forwarder is dropping the current job's lines, so the end of
    /// the job must wake it to say how many.
    dropping: AtomicBool,
}

struct Tags {
    current: Option<JobTag>,
    /// What the runner read at switches: each is the end of a job.
    handed: Vec<Handed>,
    /// The forwarder holds an unterminated line, read under `current`.
    partial: bool,
}

/// The last bytes of a job, read by the runner at its switch.
struct Handed {
    bytes: Vec<u8>,
    tag: Option<JobTag>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tags> {
        self.tags.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl JobTags {
    /// The handler's next lines belong to `job` (`None`: to no job).
    pub fn switch(&self, job: Option<JobTag>) {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let Some(pipe) = &self.pipe else {
            shared.switches.fetch_add(1, Ordering::Relaxed);
            if shared.dropping.load(Ordering::Relaxed) {
                shared.wake.notify_one();
            }
            return;
        };
        let mut tags = shared.lock();
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        // At most a pipe's worth: a handler whose helper writes stderr
        // without pause must not hold up the switch (the rest is the
        // forwarder's, under the new tag).
        while read.len() < SWITCH_READ_MAX {
            match nix::unistd::read(pipe, &mut chunk) {
                Ok(n @ 1..) => read.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        // An unterminated line ends with its job, as an entry of its own;
        // dropped lines are reported with the job's fields.
        if !read.is_empty() || tags.partial || shared.dropping.load(Ordering::Relaxed) {
            let tag = tags.current.clone();
            tags.handed.push(Handed { bytes: read, tag });
            tags.partial = false;
            shared.wake.notify_one();
        }
        shared.switches.fetch_add(1, Ordering::Relaxed);
        tags.current = job;
    }
}

/// Creates the pipe handlers write their stderr to and starts forwarding
/// it: each line becomes a journal entry with the slot's fields (and the
/// current job's, see [`JobTags`]) when this process logs to the journal,
/// else a line on our stderr prefixed with `WORKER#SLOT`. With `jobs` (the
/// runner hands the handler jobs: exec, stdio) each job may log
/// [`JOB_LOG_MAX`], and the job tagger is returned; a native handler's
/// jobs are its own, so its output is not bounded. Returns the pipe's write
/// end, for the handlers' stderr. Call it inside the slot's scope, within a
/// tokio runtime.
pub fn forward_handler_output(
    service: &str,
    worker: &str,
    slot: u32,
    jobs: bool,
) -> io::Result<(OwnedFd, Option<JobTags>)> {
    // Close-on-exec: the read end must not leak into handlers, and only the
    // copy dup'ed onto a handler's fd 2 may keep the write end open. Only
    // the read end is non-blocking (handlers write to a blocking pipe).
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let own_read = read.try_clone()?;
    if let Ok(fd) = read.try_clone() {
        let _ = HANDLER_STDERR.set(fd);
    }
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let out = match stderr_is_journal().then(JournalSender::connect) {
        Some(Ok(journal)) => Out::Journal(journal),
        _ => Out::Text(io::stderr()),
    };
    let limit = if jobs { JOB_LOG_MAX } else { u64::MAX };
    let mut sink = LineSink::new(out, service, worker, slot, limit);
    let shared = Arc::new(Shared {
        tags: std::sync::Mutex::new(Tags {
            current: None,
            handed: Vec::new(),
            partial: false,
        }),
        wake: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
        switches: AtomicU64::new(0),
        dropping: AtomicBool::new(false),
    });
    // Job fields exist only in the journal; without it, a job costs no read
    // of the pipe.
    let tagger = jobs.then(|| JobTags {
        shared: shared.clone(),
        pipe: matches!(sink.out, Out::Journal(_)).then_some(own_read),
    });
    tokio::spawn(async move {
        // Marks the forwarder gone however it returns.
        struct Closed(Arc<Shared>);
        impl Drop for Closed {
            fn drop(&mut self) {
                self.0.closed.store(true, Ordering::Relaxed);
            }
        }
        let _closed = Closed(shared.clone());
        let mut chunk = vec![0u8; READ_MAX];
        let mut seen = 0;
        loop {
            tokio::select! {
                r = pipe.readable() => if r.is_err() { return },
                () = shared.wake.notified() => {}
            }
            let mut tags = shared.lock();
            for handed in std::mem::take(&mut tags.handed) {
                sink.feed(&handed.bytes, &handed.tag, true);
                sink.end_job(&handed.tag);
            }
            // Also the end of a job that left nothing to hand over.
            let switches = shared.switches.load(Ordering::Relaxed);
            if switches != seen {
                seen = switches;
                sink.end_job(&None);
            }
            // One read a round: the lock is released between rounds, and
            // a handler that writes without pause cannot grow the buffer.
            // The readiness stays set until a read would block.
            let open = loop {
                match pipe.try_read(&mut chunk) {
                    Ok(0) => break false,
                    Ok(n) => {
                        sink.push(&chunk[..n]);
                        break true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break false,
                }
            };
            sink.flush(&tags.current, !open);
            if !open {
                sink.end_job(&tags.current);
                return;
            }
            tags.partial = sink.lines.partial();
            shared
                .dropping
                .store(sink.lines.dropping(), Ordering::Relaxed);
        }
    });
    Ok((write, tagger))
}

/// The handler's last non-blank stderr line so far, once the forwarder
/// has read what the handler wrote (waits at most 200 ms for that).
pub async fn handler_last_words() -> Option<String> {
    for _ in 0..20 {
        if HANDLER_STDERR
            .get()
            .is_none_or(|fd| pipe_pending(fd.as_raw_fd()) <= 0)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    last_words()
}

/// The read end of the handlers' stderr pipe (a dup), to see whether the
/// forwarder has caught up.
static HANDLER_STDERR: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// Bytes waiting in a pipe.
fn pipe_pending(fd: std::os::fd::RawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer given.
    match unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } {
        0 => n,
        _ => 0,
    }
}
