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
//!   [`JOB_LOG_MAX`] are dropped and counted in one line at its end.
//! - [`journal_stream`]: a plain journald stdout stream, to hand a handler as
//!   its stderr where per-line fields are not needed.
//!
//! journald attributes an entry (native protocol) or a stream (stdout
//! protocol) to the unit of the process that sent it or connected, so a
//! runner inside its scope gets its handlers' lines under `journalctl -u
//! SCOPE`; an inherited stderr would log them under the manager's unit.

use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// journald's socket for stdout streams.
const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";
/// journald's socket for native-protocol datagrams.
const NATIVE_SOCKET: &str = "/run/systemd/journal/socket";

/// Most a job switch reads of a handler's stderr itself (a pipe's default
/// capacity).
const SWITCH_READ_MAX: usize = 64 * 1024;

/// Most the forwarder reads of a handler's stderr at a time.
const READ_MAX: usize = 64 * 1024;

/// Longest handler line forwarded as one entry; longer lines are split.
const MAX_LINE: usize = 16 * 1024;

/// Most bytes of a handler's stderr forwarded per job (and per stretch
/// between two jobs); the rest is counted and dropped, and one line at the
/// job's end says how much. journald keeps at most `RateLimitBurst=` (10 000
/// by default) entries per `RateLimitIntervalSec=` (30 s) of a unit and
/// drops the rest, the runner's own messages with them, and a job that
/// writes megabytes to stderr is dumping data rather than logging. 2 MiB is
/// 20 000 lines of 100 bytes; at worst (lines of one character) it is half a
/// million entries, under two seconds of the runner's time.
const JOB_LOG_MAX: u64 = 2 * 1024 * 1024;

/// Bytes of one field value sent to journald, at most. A datagram must fit
/// the socket's send buffer (about 200 KiB by default); journald's own stream
/// line limit is 48 KiB.
const MAX_VALUE: usize = 48 * 1024;

/// Sets up tracing for the process: `info` by default, `debug` with
/// `verbose`, and `RUST_LOG` (tracing-subscriber's EnvFilter syntax) overrides
/// both. When stderr is connected to the journal (`JOURNAL_STREAM` names it),
/// events go to journald with their fields, prefixed: a field `worker`
/// becomes `SLOTMAN_WORKER` (the prefix keeps event fields apart from
/// journald's own, such as `UNIT=`). Otherwise they are written to stderr as
/// text, coloured only when stderr is a terminal. Calling it again does
/// nothing.
pub fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    init_with(filter);
}

/// [`init_logging`] for slot runners: `RUST_LOG` holds levels per target
/// only (`debug`, `slotman=debug,tokio=warn`); one with span or field
/// filters, which EnvFilter would take, means the default level. Without
/// EnvFilter the runner's binary has no regex engine, a sixth of its code
/// and so of the pages each slot maps.
pub fn init_runner_logging(verbose: bool) {
    init_with(runner_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        verbose,
    ));
}

fn runner_filter(rust_log: Option<&str>, verbose: bool) -> Targets {
    let default = if verbose { Level::DEBUG } else { Level::INFO };
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(default))
}

fn init_with<F: Layer<Registry> + Send + Sync + 'static>(filter: F) {
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(Some("SLOTMAN".into()))
                    .with_syslog_identifier("slotman".into());
                let _ = registry.with(layer).try_init();
                return;
            }
            // Fall through to text on stderr, which still ends up in the
            // journal, only without fields.
            Err(e) => eprintln!("slotman: journald socket unusable ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(colour(
            io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let _ = registry.with(fmt).try_init();
}

/// Colour codes only for a terminal: in a file or a pipe they are noise.
/// A non-empty `NO_COLOR` turns them off there too (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// True when fd 2 is the stream systemd set up for this service: its device
/// and inode equal `JOURNAL_STREAM` (systemd.exec(5)). Comparing, rather
/// than trusting the variable, ignores a value inherited by a process whose
/// stderr was redirected elsewhere.
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&var.to_string_lossy()) else {
        return false;
    };
    match nix::sys::stat::fstat(io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Opens a journald stdout stream whose lines are logged with
/// `SYSLOG_IDENTIFIER=identifier` at priority info; a line may start with a
/// `<N>` syslog level prefix to choose another. The unit is that of the
/// calling process at connect time, so call this from inside the slot's scope.
///
/// Fails (`NotFound`) when journald is not running; the caller should then
/// let the handler inherit its own stderr.
pub fn journal_stream(identifier: &str) -> io::Result<OwnedFd> {
    journal_stream_at(STDOUT_SOCKET.as_ref(), identifier)
}

fn journal_stream_at(socket: &std::path::Path, identifier: &str) -> io::Result<OwnedFd> {
    let mut stream = UnixStream::connect(socket)?;
    // journald never writes to the stream; systemd's own clients shut the
    // read side too.
    stream.shutdown(std::net::Shutdown::Read)?;
    stream.write_all(&stream_header(identifier))?;
    Ok(OwnedFd::from(stream))
}

/// The header journald expects on a new stdout stream, one value per line:
/// identifier, unit id (empty: only PID 1 may claim one), priority (6, info),
/// level prefix (1: honour `<N>`), forward to syslog, kmsg, console (0, 0, 0).
fn stream_header(identifier: &str) -> Vec<u8> {
    let identifier = identifier.replace(['\n', '\r'], "_");
    format!("{identifier}\n\n6\n1\n0\n0\n0\n").into_bytes()
}

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

/// Where forwarded lines go.
enum Out<W> {
    /// One native-protocol entry a line, with the slot's and job's fields.
    Journal(JournalSender),
    /// `[WORKER#SLOT] line`, as text (our stderr); one write per batch.
    Text(W),
}

/// A handler's stderr on its way out: cut into lines, each job held to its
/// budget, and sent to `out`.
/// The last line the handler wrote to stderr that was not blank, cut to
/// [`LAST_WORDS_MAX`] bytes: why a handler that exits at start failed, in
/// its own words. One forwarder per runner process, so one per process.
static LAST_WORDS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const LAST_WORDS_MAX: usize = 300;

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
    let words = LAST_WORDS.lock().unwrap_or_else(|e| e.into_inner());
    (!words.is_empty()).then(|| String::from_utf8_lossy(&words).trim().to_string())
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

/// The last non-blank line of one batch, kept as [`LAST_WORDS`].
#[derive(Default)]
struct LastWords {
    line: Option<Vec<u8>>,
}

impl LastWords {
    fn see(&mut self, line: &[u8]) {
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            let keep = self.line.get_or_insert_with(Vec::new);
            keep.clear();
            keep.extend_from_slice(&line[..line.len().min(LAST_WORDS_MAX)]);
        }
    }

    fn keep(self) {
        if let Some(line) = self.line {
            *LAST_WORDS.lock().unwrap_or_else(|e| e.into_inner()) = line;
        }
    }
}

struct LineSink<W> {
    out: Out<W>,
    lines: Lines,
    identifier: String,
    slot_fields: [(&'static str, String); 3],
    prefix: String,
}

impl<W: Write> LineSink<W> {
    fn new(out: Out<W>, service: &str, worker: &str, slot: u32, limit: u64) -> LineSink<W> {
        LineSink {
            out,
            lines: Lines::new(limit),
            identifier: format!("slotman-{worker}"),
            slot_fields: [
                ("SLOTMAN_SERVICE", service.to_owned()),
                ("SLOTMAN_WORKER", worker.to_owned()),
                ("SLOTMAN_SLOT", slot.to_string()),
            ],
            prefix: format!("{worker}#{slot}"),
        }
    }

    /// Bytes read from the handler; lines go out at the next [`Self::flush`].
    fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    /// [`Self::push`] and [`Self::flush`].
    fn feed(&mut self, bytes: &[u8], job: &Option<JobTag>, all: bool) {
        self.push(bytes);
        self.flush(job, all);
    }

    /// Sends every complete line (and, with `all`, the unterminated rest)
    /// that the job's budget allows. A lost line must not stop the handler,
    /// and there is nowhere better to report a failed send: errors are
    /// ignored.
    fn flush(&mut self, job: &Option<JobTag>, all: bool) {
        let LineSink {
            out,
            lines,
            identifier,
            slot_fields,
            prefix,
        } = self;
        match out {
            Out::Journal(sender) => {
                let fields = entry_fields(slot_fields, job);
                let mut last = LastWords::default();
                lines.take(all, |line| {
                    last.see(line);
                    let _ = sender.send(Priority::Info, identifier, line, &fields);
                });
                last.keep();
            }
            Out::Text(w) => {
                let mut text = Vec::new();
                let mut last = LastWords::default();
                lines.take(all, |line| {
                    last.see(line);
                    push_text_line(&mut text, prefix, line);
                });
                last.keep();
                if !text.is_empty() {
                    let _ = w.write_all(&text);
                }
            }
        }
    }

    /// The job `job` has ended: says what was dropped of it, if anything,
    /// and gives the next job a fresh budget.
    fn end_job(&mut self, job: &Option<JobTag>) {
        let Some(dropped) = self.lines.end_job() else {
            return;
        };
        let whose = if job.is_some() {
            "this job's"
        } else {
            "the handler's"
        };
        let limit = match self.lines.limit() {
            l if l % (1 << 20) == 0 => format!("{} MiB", l >> 20),
            l => format!("{l} bytes"),
        };
        let marker = format!(
            "slotman: {} lines ({} bytes) of {whose} stderr dropped: over the per-job limit of {limit}",
            dropped.lines, dropped.bytes
        );
        match &mut self.out {
            Out::Journal(sender) => {
                let fields = entry_fields(&self.slot_fields, job);
                let _ = sender.send(
                    Priority::Warning,
                    &self.identifier,
                    marker.as_bytes(),
                    &fields,
                );
            }
            Out::Text(w) => {
                let mut text = Vec::new();
                push_text_line(&mut text, &self.prefix, marker.as_bytes());
                let _ = w.write_all(&text);
            }
        }
    }
}

/// The fields of a forwarded entry besides its message.
fn entry_fields<'a>(
    slot_fields: &'a [(&'static str, String); 3],
    job: &'a Option<JobTag>,
) -> Vec<(&'static str, &'a [u8])> {
    let mut fields: Vec<(&str, &[u8])> = slot_fields
        .iter()
        .map(|(k, v)| (*k, v.as_bytes()))
        .collect();
    if let Some(JobTag { function, handle }) = job {
        fields.push(("GEARMAN_FUNCTION", function.as_bytes()));
        fields.push(("GEARMAN_HANDLE", handle.as_bytes()));
    }
    fields
}

/// `[PREFIX] line\n`; bytes that are not UTF-8 become U+FFFD.
fn push_text_line(out: &mut Vec<u8>, prefix: &str, line: &[u8]) {
    out.push(b'[');
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"] ");
    out.extend_from_slice(String::from_utf8_lossy(line).as_bytes());
    out.push(b'\n');
}

/// Lines of a handler's stderr, each job held to a budget: pure, bytes in,
/// lines and counts out. Linear: each byte is scanned once and moved once.
struct Lines {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline (an unterminated line, so far).
    scanned: usize,
    limit: u64,
    /// Bytes the current job logged.
    used: u64,
    dropped: Dropped,
}

/// What was dropped of one job's output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    lines: u64,
    bytes: u64,
}

impl Lines {
    fn new(limit: u64) -> Lines {
        Lines {
            buf: Vec::new(),
            scanned: 0,
            limit,
            used: 0,
            dropped: Dropped::default(),
        }
    }

    fn limit(&self) -> u64 {
        self.limit
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// An unterminated line is waiting for its end.
    fn partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The current job is over its budget.
    fn dropping(&self) -> bool {
        self.dropped.lines > 0
    }

    /// Calls `emit` with each complete line, without its newline, that the
    /// job's budget allows (and, with `all`, with the unterminated rest);
    /// a line longer than [`MAX_LINE`] goes out in pieces. Once a job is
    /// over its budget, the rest of its lines are counted, not emitted.
    fn take(&mut self, all: bool, mut emit: impl FnMut(&[u8])) {
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            // A newline right after MAX_LINE bytes still ends a whole line.
            let window = &rest[..rest.len().min(MAX_LINE + 1)];
            let from = self.scanned.saturating_sub(start).min(window.len());
            let (line, used) = match window[from..].iter().position(|&b| b == b'\n') {
                Some(i) => (from + i, from + i + 1),
                None if rest.len() > MAX_LINE => {
                    let cut = piece_end(rest);
                    (cut, cut)
                }
                None if all && !rest.is_empty() => (rest.len(), rest.len()),
                None => break,
            };
            let cost = used as u64;
            if !self.dropping() && self.used.saturating_add(cost) <= self.limit {
                self.used += cost;
                emit(&rest[..line]);
            } else {
                self.dropped.lines += 1;
                self.dropped.bytes += cost;
            }
            start += used;
        }
        self.buf.drain(..start);
        // What is left was scanned whole: shorter than a piece, no newline.
        self.scanned = self.buf.len();
    }

    /// The job is over: what was dropped of it, if anything. The next job
    /// starts with the whole budget.
    fn end_job(&mut self) -> Option<Dropped> {
        self.used = 0;
        let dropped = std::mem::take(&mut self.dropped);
        (dropped.lines > 0).then_some(dropped)
    }
}

/// Where to cut a line longer than [`MAX_LINE`]: at `MAX_LINE`, or up to
/// three bytes before, so as not to split a UTF-8 character (bytes that are
/// not UTF-8 are cut anywhere).
fn piece_end(line: &[u8]) -> usize {
    let continuation = |i: usize| line.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    (MAX_LINE - 3..=MAX_LINE)
        .rev()
        .find(|&i| !continuation(i))
        .unwrap_or(MAX_LINE)
}

/// syslog priorities, as journald's `PRIORITY=` field takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

/// A connection for journald's native protocol. Entries are attributed to
/// the unit of the sending process (journald reads the sender's PID from
/// the socket), so a slot runner in its scope logs to its scope.
#[derive(Debug)]
pub struct JournalSender {
    socket: UnixDatagram,
}

impl JournalSender {
    /// Fails (`NotFound`) when journald is not running.
    pub fn connect() -> io::Result<JournalSender> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(NATIVE_SOCKET)?;
        Ok(JournalSender { socket })
    }

    /// Logs one entry: `message` and `fields`, plus `PRIORITY` and
    /// `SYSLOG_IDENTIFIER`. Field names must be journal field names
    /// (`A-Z`, `0-9`, `_`, not starting with `_` or a digit, at most 64
    /// bytes); values are bytes, cut at 48 KiB.
    pub fn send(
        &self,
        priority: Priority,
        identifier: &str,
        message: &[u8],
        fields: &[(&str, &[u8])],
    ) -> io::Result<()> {
        let mut entry = Vec::with_capacity(message.len() + 128);
        let prio = [b'0' + priority as u8];
        let own: [(&str, &[u8]); 3] = [
            ("PRIORITY", &prio),
            ("SYSLOG_IDENTIFIER", identifier.as_bytes()),
            ("MESSAGE", message),
        ];
        for (name, value) in own.iter().chain(fields) {
            if !valid_field_name(name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a journal field name"),
                ));
            }
            encode_field(&mut entry, name, value);
        }
        self.socket.send(&entry)?;
        Ok(())
    }
}

fn valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// One field in the native protocol: `NAME=value\n`, or, for a value with a
/// newline, `NAME\n` + its length as 64-bit little endian + value + `\n`.
fn encode_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let value = &value[..value.len().min(MAX_VALUE)];
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn runner_log_levels_come_from_rust_log_targets() {
        let on = |f: &Targets, target: &str, level| f.would_enable(target, &level);
        let f = runner_filter(None, false);
        assert!(on(&f, "slotman::slot", Level::INFO) && !on(&f, "slotman::slot", Level::DEBUG));
        assert!(on(&runner_filter(None, true), "x", Level::DEBUG));
        let f = runner_filter(Some("warn,slotman::slot=trace"), false);
        assert!(on(&f, "slotman::slot::runner", Level::TRACE));
        assert!(!on(&f, "slotman::manager", Level::INFO));
        // EnvFilter-only syntax, or nothing: the default.
        for odd in ["[job{id=1}]=debug", "", "  "] {
            let f = runner_filter(Some(odd), false);
            assert!(
                on(&f, "slotman", Level::INFO) && !on(&f, "slotman", Level::DEBUG),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn header() {
        assert_eq!(stream_header("billing/w"), b"billing/w\n\n6\n1\n0\n0\n0\n");
        assert_eq!(stream_header("a\nb"), b"a_b\n\n6\n1\n0\n0\n0\n");
    }

    #[test]
    fn stream_writes_header_then_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = journal_stream_at(&path, "t").unwrap();
        let mut w = std::fs::File::from(fd);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"t\n\n6\n1\n0\n0\n0\nhello\n");
    }

    #[test]
    fn missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = journal_stream_at(&dir.path().join("nope"), "t").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn native_encoding() {
        let mut out = Vec::new();
        encode_field(&mut out, "A", b"x");
        encode_field(&mut out, "B", b"1\n2");
        let mut want = b"A=x\nB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"1\n2\n");
        assert_eq!(out, want);
    }

    #[test]
    fn field_names() {
        assert!(valid_field_name("SLOTMAN_WORKER"));
        assert!(valid_field_name("GEARMAN_HANDLE2"));
        for bad in ["", "_PID", "1A", "lower", "A-B", &"A".repeat(65)] {
            assert!(!valid_field_name(bad), "{bad}");
        }
    }

    /// A writer that keeps each write apart.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn text(&self) -> String {
            String::from_utf8(self.0.concat()).expect("text output is UTF-8")
        }
    }

    fn text_sink(limit: u64) -> LineSink<Writes> {
        LineSink::new(Out::Text(Writes::default()), "svc", "w", 1, limit)
    }

    fn written(sink: &LineSink<Writes>) -> &Writes {
        match &sink.out {
            Out::Text(w) => w,
            Out::Journal(_) => unreachable!("a text sink"),
        }
    }

    /// A sink sending journal entries to the returned socket.
    fn journal_sink(limit: u64) -> (LineSink<io::Sink>, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
        theirs.set_nonblocking(true).expect("non-blocking");
        let sink = LineSink::new(
            Out::Journal(JournalSender { socket: ours }),
            "svc",
            "w",
            1,
            limit,
        );
        (sink, theirs)
    }

    /// The entries waiting on `socket`, as their fields (values without
    /// newlines only).
    fn entries(socket: &UnixDatagram) -> Vec<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut datagram = vec![0u8; 256 * 1024];
        while let Ok(n) = socket.recv(&mut datagram) {
            let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
            out.push(
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
        }
        out
    }

    fn field<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn job(handle: &str) -> Option<JobTag> {
        Some(JobTag {
            function: "f".into(),
            handle: handle.into(),
        })
    }

    #[test]
    fn many_short_lines_go_out_in_one_write() {
        let mut sink = text_sink(u64::MAX);
        let input = b"ab\n".repeat(100_000);
        sink.feed(&input, &None, false);
        let w = written(&sink);
        assert_eq!(w.0.len(), 1, "one write for the batch");
        assert_eq!(w.text(), "[w#1] ab\n".repeat(100_000));
        // The journal: one entry a line, with the slot's and job's fields.
        let (mut sink, socket) = journal_sink(u64::MAX);
        sink.feed(b"one\ntwo\n\nthree", &job("H:1"), false);
        let got = entries(&socket);
        let messages: Vec<_> = got.iter().map(|e| field(e, "MESSAGE")).collect();
        assert_eq!(messages, [Some("one"), Some("two"), Some("")]);
        assert_eq!(field(&got[0], "GEARMAN_HANDLE"), Some("H:1"));
        assert_eq!(field(&got[0], "SLOTMAN_WORKER"), Some("w"));
        assert_eq!(field(&got[0], "PRIORITY"), Some("6"));
        sink.flush(&None, true);
        let got = entries(&socket);
        assert_eq!(field(&got[0], "MESSAGE"), Some("three"));
        assert_eq!(field(&got[0], "GEARMAN_HANDLE"), None);
    }

    #[test]
    fn lines_split_across_reads_at_every_offset() {
        let input = "alpha\nbeta\n\nγάμμα €\n".repeat(3) + "rest";
        let want = "[w#1] alpha\n[w#1] beta\n[w#1] \n[w#1] γάμμα €\n".repeat(3) + "[w#1] rest\n";
        let input = input.as_bytes();
        for cut in 0..=input.len() {
            let mut sink = text_sink(u64::MAX);
            sink.feed(&input[..cut], &None, false);
            sink.feed(&input[cut..], &None, false);
            sink.flush(&None, true);
            assert_eq!(written(&sink).text(), want, "cut at {cut}");
        }
        // A byte at a time.
        let mut sink = text_sink(u64::MAX);
        for b in input {
            sink.feed(&[*b], &None, false);
        }
        sink.flush(&None, true);
        assert_eq!(written(&sink).text(), want);
    }

    #[test]
    fn a_huge_line_goes_out_in_pieces_that_keep_characters_whole() {
        // Misaligned two-byte characters: a cut at MAX_LINE would split one.
        let line = "a".to_owned() + &"é".repeat(3 * MAX_LINE / 2 + 7);
        let mut lines = Lines::new(u64::MAX);
        let mut pieces = Vec::new();
        for chunk in line.as_bytes().chunks(1000) {
            lines.push(chunk);
            lines.take(false, |p| pieces.push(p.to_vec()));
        }
        assert_eq!(pieces.len(), 3, "whole pieces before the line ends");
        lines.push(b"\n");
        lines.take(false, |p| pieces.push(p.to_vec()));
        assert!(!lines.partial());
        let text: Vec<&str> = pieces
            .iter()
            .map(|p| std::str::from_utf8(p).expect("whole characters"))
            .collect();
        // The first cut moved back a byte, off the middle of an `é`.
        assert_eq!(text[0].len(), MAX_LINE - 1);
        assert!(text.iter().all(|p| p.len() <= MAX_LINE));
        assert_eq!(text.concat(), line);
        // Exactly MAX_LINE bytes and a newline: one line, not a piece and an
        // empty line.
        let mut lines = Lines::new(u64::MAX);
        let mut got = Vec::new();
        lines.push(&[b'x'; MAX_LINE]);
        lines.take(false, |p| got.push(p.len()));
        lines.push(b"\n");
        lines.take(false, |p| got.push(p.len()));
        assert_eq!(got, [MAX_LINE]);
    }

    #[test]
    fn binary_and_invalid_utf8_do_not_panic() {
        let mut input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        // A long run of continuation bytes, and a lone lead byte at the end.
        input.extend_from_slice(&[0x80; 3 * MAX_LINE]);
        input.push(0xE2);
        for chunk in [1, 7, 4096, input.len()] {
            let mut sink = text_sink(u64::MAX);
            for part in input.chunks(chunk) {
                sink.feed(part, &None, false);
            }
            sink.flush(&None, true);
            let text = written(&sink).text();
            assert!(text.contains('\u{FFFD}'));
            let newlines = input.iter().filter(|&&b| b == b'\n').count();
            // Every newline ends a line; the run of 0x80 goes out in pieces.
            assert!(text.lines().count() > newlines, "chunk {chunk}");
            assert!(text.lines().all(|l| l.starts_with("[w#1] ")));
        }
        let (mut sink, socket) = journal_sink(u64::MAX);
        sink.feed(b"\xff\xfe\x00bin\n", &None, false);
        assert_eq!(entries(&socket).len(), 1);
    }

    #[test]
    fn past_a_jobs_limit_lines_are_dropped_and_counted() {
        let mut sink = text_sink(100);
        // 30 lines of 5 bytes: 20 fit, 10 (50 bytes) do not.
        sink.feed(&b"abcd\n".repeat(30), &job("H:1"), false);
        // Once over, a line that would fit is dropped too.
        sink.feed(b"\n", &job("H:1"), false);
        sink.end_job(&job("H:1"));
        // The next job has its whole budget; a job that stays under it
        // reports nothing.
        sink.feed(b"next\n", &job("H:2"), false);
        sink.end_job(&job("H:2"));
        sink.end_job(&None);
        let want = "[w#1] abcd\n".repeat(20)
            + "[w#1] slotman: 11 lines (51 bytes) of this job's stderr dropped: over the per-job limit of 100 bytes\n"
            + "[w#1] next\n";
        assert_eq!(written(&sink).text(), want);
        // In the journal, a warning with the job's fields.
        let (mut sink, socket) = journal_sink(2 << 20);
        let line = vec![b'y'; 1023];
        for _ in 0..2049 {
            sink.feed(&line, &job("H:3"), false);
            sink.feed(b"\n", &job("H:3"), false);
            // Keep the socket's buffer from filling.
            let _ = entries(&socket);
        }
        sink.end_job(&job("H:3"));
        let got = entries(&socket);
        let marker = got.last().expect("a marker entry");
        assert_eq!(
            field(marker, "MESSAGE"),
            Some("slotman: 1 lines (1024 bytes) of this job's stderr dropped: over the per-job limit of 2 MiB")
        );
        assert_eq!(field(marker, "PRIORITY"), Some("4"));
        assert_eq!(field(marker, "GEARMAN_HANDLE"), Some("H:3"));
    }

    /// Time for 4 MB of 4-byte lines through the sink, in reads of 64 KiB
    /// and in one piece, to text and to journal datagrams (a thread reads
    /// them). `cargo test --release --lib forwarding_4mb -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; prints timings"]
    fn forwarding_4mb_of_4_byte_lines() {
        let input = b"xxx\n".repeat(1_000_000);
        for limit in [u64::MAX, JOB_LOG_MAX] {
            for read in [READ_MAX, input.len()] {
                let mut sink = LineSink::new(Out::Text(io::sink()), "svc", "w", 1, limit);
                let start = std::time::Instant::now();
                for chunk in input.chunks(read) {
                    sink.feed(chunk, &None, false);
                }
                sink.end_job(&None);
                eprintln!(
                    "text, limit {limit}, reads of {read}: {:?}",
                    start.elapsed()
                );
                let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
                let reader = std::thread::spawn(move || {
                    let mut datagram = vec![0u8; 64 * 1024];
                    let mut n = 0u64;
                    while let Ok(len) = theirs.recv(&mut datagram) {
                        if datagram[..len].windows(11).any(|w| w == b"PRIORITY=4\n") {
                            return n;
                        }
                        n += 1;
                    }
                    n
                });
                let mut sink = LineSink::<io::Sink>::new(
                    Out::Journal(JournalSender { socket: ours }),
                    "svc",
                    "w",
                    1,
                    limit,
                );
                let start = std::time::Instant::now();
                for chunk in input.chunks(read) {
                    sink.feed(chunk, &None, false);
                }
                let took = start.elapsed();
                // The end marker (a warning) stops the reader.
                let marker = b"PRIORITY=4\nMESSAGE=end\n";
                if let Out::Journal(j) = &sink.out {
                    j.socket.send(marker).expect("send end");
                }
                let entries = reader.join().expect("reader");
                eprintln!("journal, limit {limit}, reads of {read}: {took:?}, {entries} entries");
            }
        }
    }

    #[test]
    fn colour_only_on_a_terminal() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".as_ref())));
        assert!(!colour(true, Some("1".as_ref())));
        assert!(!colour(false, None));
    }

    #[test]
    fn journal_stream_var() {
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }
}
