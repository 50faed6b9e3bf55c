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
//!   and `GEARMAN_HANDLE` ([`JournalSender`]).
//! - [`journal_stream`]: a plain journald stdout stream, to hand a handler as
//!   its stderr where per-line fields are not needed.
//!
//! journald attributes an entry (native protocol) or a stream (stdout
//! protocol) to the unit of the process that sent it or connected, so a
//! runner inside its scope gets its handlers' lines under `journalctl -u
//! SCOPE`; an inherited stderr would log them under the manager's unit.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
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

/// Longest handler line forwarded as one entry; longer lines are split.
const MAX_LINE: usize = 16 * 1024;

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
/// text. Calling it again does nothing.
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(io::stderr);
    let _ = registry.with(fmt).try_init();
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
    match nix::sys::stat::fstat(io::stderr().as_raw_fd()) {
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

/// The job a handler line belongs to: (`GEARMAN_FUNCTION`, `GEARMAN_HANDLE`).
pub type JobTag = Option<(String, String)>;

/// Tags the handlers' stderr lines with the job in hand, for a slot runner
/// logging to the journal.
///
/// A handler writes its stderr before its answer, so at a switch the pipe
/// holds exactly the lines of the job that ended. [`JobTags::switch`] reads
/// them itself (one failed read(2) when there are none, the usual case) and
/// hands them to the forwarder already tagged: no round trip to the
/// forwarder task per job. The lock orders the runner's reads and switches
/// against the forwarder's reads, so a line always carries the tag that was
/// current when it left the pipe, and lines reach the journal in order.
pub struct JobTags {
    shared: Arc<Shared>,
    /// The pipe's read end (a dup of the forwarder's; non-blocking).
    pipe: OwnedFd,
}

struct Shared {
    tags: std::sync::Mutex<Tags>,
    /// Wakes the forwarder for bytes in `handed`.
    wake: tokio::sync::Notify,
    /// The forwarder has stopped: nothing would take what `switch` reads.
    closed: std::sync::atomic::AtomicBool,
}

struct Tags {
    current: JobTag,
    /// Bytes the runner read at switches, with the tag they were read under;
    /// the forwarder sends them before anything it reads itself.
    handed: Vec<(Vec<u8>, JobTag)>,
    /// The forwarder holds an unterminated line, read under `current`.
    partial: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tags> {
        self.tags.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl JobTags {
    /// The handler's next lines belong to `job` (`None`: to no job).
    pub fn switch(&self, job: JobTag) {
        if self
            .shared
            .closed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mut tags = self.shared.lock();
        let mut read = Vec::new();
        let mut chunk = [0u8; 4096];
        // At most a pipe's worth: a handler whose helper writes stderr
        // without pause must not hold up the switch (the rest is the
        // forwarder's, under the new tag).
        while read.len() < SWITCH_READ_MAX {
            match nix::unistd::read(self.pipe.as_raw_fd(), &mut chunk) {
                Ok(n @ 1..) => read.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        // An unterminated line ends with its job, as an entry of its own.
        if !read.is_empty() || tags.partial {
            let tag = tags.current.clone();
            tags.handed.push((read, tag));
            tags.partial = false;
            self.shared.wake.notify_one();
        }
        tags.current = job;
    }
}

/// Creates the pipe handlers write their stderr to and starts forwarding
/// it: each line becomes a journal entry with the slot's fields (and the
/// current job's, see [`JobTags`]) when this process logs to the journal,
/// else a line on our stderr prefixed with `WORKER#SLOT`. Returns the pipe's
/// write end, for the handlers' stderr, and the job tagger (when logging to
/// the journal). Call it inside the slot's scope, within a tokio runtime.
pub fn forward_handler_output(
    service: &str,
    worker: &str,
    slot: u32,
) -> io::Result<(OwnedFd, Option<JobTags>)> {
    // Close-on-exec: the read end must not leak into handlers, and only the
    // copy dup'ed onto a handler's fd 2 may keep the write end open. Only
    // the read end is non-blocking (handlers write to a blocking pipe).
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        read.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let own_read = read.try_clone()?;
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let journal = if stderr_is_journal() {
        JournalSender::connect().ok()
    } else {
        None
    };
    let out = LineSink {
        journal,
        identifier: format!("slotman-{worker}"),
        slot_fields: [
            ("SLOTMAN_SERVICE", service.to_owned()),
            ("SLOTMAN_WORKER", worker.to_owned()),
            ("SLOTMAN_SLOT", slot.to_string()),
        ],
        prefix: format!("{worker}#{slot}"),
    };
    let shared = Arc::new(Shared {
        tags: std::sync::Mutex::new(Tags {
            current: None,
            handed: Vec::new(),
            partial: false,
        }),
        wake: tokio::sync::Notify::new(),
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    // Job fields exist only in the journal; without it, lines are never
    // tagged (and a job costs no read of the pipe).
    let tagger = out.journal.is_some().then(|| JobTags {
        shared: shared.clone(),
        pipe: own_read,
    });
    tokio::spawn(async move {
        // Marks the forwarder gone however it returns.
        struct Closed(Arc<Shared>);
        impl Drop for Closed {
            fn drop(&mut self) {
                self.0
                    .closed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _closed = Closed(shared.clone());
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            tokio::select! {
                r = pipe.readable() => if r.is_err() { return },
                () = shared.wake.notified() => {}
            }
            let mut tags = shared.lock();
            for (bytes, tag) in std::mem::take(&mut tags.handed) {
                buf.extend_from_slice(&bytes);
                out.emit_lines(&mut buf, &tag, true);
            }
            let mut open = true;
            loop {
                match pipe.try_read(&mut chunk) {
                    Ok(0) => open = false,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                    // try_read clears the readiness on WouldBlock.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => open = false,
                }
                break;
            }
            out.emit_lines(&mut buf, &tags.current, !open);
            tags.partial = !buf.is_empty();
            if !open {
                return;
            }
        }
    });
    Ok((write, tagger))
}

/// Where forwarded lines go.
struct LineSink {
    journal: Option<JournalSender>,
    identifier: String,
    slot_fields: [(&'static str, String); 3],
    prefix: String,
}

impl LineSink {
    /// Sends every complete line in `buf` (and, with `all`, the unterminated
    /// rest); an over-long line is cut at [`MAX_LINE`].
    fn emit_lines(&self, buf: &mut Vec<u8>, job: &Option<(String, String)>, all: bool) {
        loop {
            let end = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => i,
                None if buf.len() >= MAX_LINE || (all && !buf.is_empty()) => {
                    buf.len().min(MAX_LINE)
                }
                None => return,
            };
            let line: Vec<u8> = buf.drain(..end).collect();
            if buf.first() == Some(&b'\n') {
                buf.remove(0);
            }
            self.emit(&line, job);
        }
    }

    fn emit(&self, line: &[u8], job: &Option<(String, String)>) {
        match &self.journal {
            Some(sender) => {
                let mut fields: Vec<(&str, &[u8])> = self
                    .slot_fields
                    .iter()
                    .map(|(k, v)| (*k, v.as_bytes()))
                    .collect();
                if let Some((function, handle)) = job {
                    fields.push(("GEARMAN_FUNCTION", function.as_bytes()));
                    fields.push(("GEARMAN_HANDLE", handle.as_bytes()));
                }
                // A lost line must not stop the handler; there is nowhere
                // better to report it.
                let _ = sender.send(Priority::Info, &self.identifier, line, &fields);
            }
            None => {
                let text = String::from_utf8_lossy(line);
                let _ = writeln!(io::stderr(), "[{}] {text}", self.prefix);
            }
        }
    }
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

    #[test]
    fn journal_stream_var() {
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }
}
