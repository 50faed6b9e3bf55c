//! The runner's two byte streams (gearmand's socket, the stdio handler's
//! stdout), read into their own buffers so that a wait can be either a
//! blocking system call or the runtime's.
//!
//! While a stream of jobs flows, every job needs two waits: for the
//! handler's answer and for gearmand's next assignment. Through the runtime
//! each wait is a failed read, a park in epoll_wait and a wake-up of the task.
//! Here a wait that is due ([`Expect::Due`]: the request went out a moment
//! ago) goes straight to the kernel, without the read that would fail first:
//! on the socket one recv(2) that waits (the socket is left blocking, with a
//! receive timeout; the runtime's own reads pass `MSG_DONTWAIT`), on the
//! pipe poll(2) and one read. Fewer system calls and no wake-up of the
//! runtime per job (BENCHMARKS.md, "A due answer is waited for in the
//! kernel"). [`BlockingWaits`] keeps that from starving the runtime's other
//! tasks (reports, signals, the manager's messages): the thread blocks at
//! most [`MAX_BLOCK`] at a time and yields to the runtime at least every
//! [`SLICE`].

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio_util::codec::Decoder;

/// Longest blocking poll(2); a wait that lasts longer goes to the runtime.
pub const MAX_BLOCK: Duration = Duration::from_millis(5);
/// The runtime gets a turn at least this often while jobs stream.
pub const SLICE: Duration = Duration::from_millis(2);

/// Whether blocking waits are allowed in this process, and when the runtime
/// last had a turn.
pub struct BlockingWaits {
    enabled: AtomicBool,
    origin: Instant,
    /// Microseconds since `origin` of the last turn.
    runtime_ran: AtomicU64,
}

impl BlockingWaits {
    /// The process's one instance; blocking waits start disabled.
    pub fn get() -> &'static BlockingWaits {
        static WAITS: OnceLock<BlockingWaits> = OnceLock::new();
        WAITS.get_or_init(|| BlockingWaits {
            enabled: AtomicBool::new(false),
            origin: Instant::now(),
            runtime_ran: AtomicU64::new(0),
        })
    }

    /// Allows blocking waits: only for a runner whose one task does all the
    /// work (one job server), so no other connection waits for the thread.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// The runtime just had a turn.
    pub(crate) fn runtime_ran(&self) {
        self.runtime_ran.store(self.now(), Ordering::Relaxed);
    }

    /// What the next wait may be.
    pub(crate) fn next_wait(&self, expect: Expect) -> Wait {
        if expect == Expect::Whenever || !self.enabled.load(Ordering::Relaxed) {
            return Wait::Runtime;
        }
        let since = self
            .now()
            .saturating_sub(self.runtime_ran.load(Ordering::Relaxed));
        if since >= SLICE.as_micros() as u64 {
            Wait::Yield
        } else {
            Wait::Block(MAX_BLOCK)
        }
    }
}

/// Whether the other side owes an answer now (a request went out a moment
/// ago), so that a wait for it may block the thread, or may take any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Due,
    Whenever,
}

pub(crate) enum Wait {
    Block(Duration),
    Yield,
    Runtime,
}

/// One file (socket or pipe) with a read buffer.
pub struct Wire<F: AsRawFd> {
    io: AsyncFd<F>,
    pub buf: BytesMut,
    kind: Kind,
}

/// How a [`Wire`]'s file is read and written without waiting, and how a
/// blocking wait is done.
#[derive(Clone, Copy)]
enum Kind {
    /// `O_NONBLOCK`; a blocking wait is poll(2), then a read.
    Pipe,
    /// A socket left blocking, with `SO_RCVTIMEO` = [`MAX_BLOCK`]: the
    /// runtime's reads and writes pass `MSG_DONTWAIT`, and a blocking wait
    /// is one recv(2) that waits and reads in the same system call.
    Socket,
}

impl Kind {
    /// recv(2) flags for I/O that must not wait; `None`: read(2)/write(2).
    fn nowait(self) -> Option<libc::c_int> {
        match self {
            Kind::Pipe => None,
            Kind::Socket => Some(libc::MSG_DONTWAIT),
        }
    }
}

impl<F: AsRawFd + AsFd> Wire<F> {
    /// Puts `file` in non-blocking mode and registers it with the runtime
    /// (so it needs the runtime's context).
    pub fn new(file: F) -> io::Result<Wire<F>> {
        set_nonblocking(file.as_fd(), true)?;
        Self::register(file, Kind::Pipe)
    }

    /// A connected socket, left in blocking mode with a receive timeout of
    /// [`MAX_BLOCK`] (see [`Kind::Socket`]); needs the runtime's context.
    pub fn socket(file: F) -> io::Result<Wire<F>> {
        blocking_socket(&file)?;
        Self::register(file, Kind::Socket)
    }

    fn register(file: F, kind: Kind) -> io::Result<Wire<F>> {
        // SAFETY: `file` owns its descriptor and the Wire owns `file`, so it
        // stays open and the same for as long as it is registered.
        let io = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(Wire {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            kind,
        })
    }

    pub fn get_ref(&self) -> &F {
        self.io.get_ref()
    }

    /// One read into the buffer that does not wait: `Ok(0)` at EOF.
    fn read_some(&mut self) -> io::Result<usize> {
        read_into(
            self.io.get_ref().as_raw_fd(),
            &mut self.buf,
            self.kind.nowait(),
        )
    }

    /// Waits at most `limit` for input without the runtime: whether the
    /// next read may find something. A socket has read it already.
    fn block(&mut self, limit: Duration) -> io::Result<bool> {
        match self.kind {
            Kind::Pipe => Ok(poll_in(self.io.get_ref().as_fd(), limit)),
            // The timeout is the socket's own (MAX_BLOCK, set once).
            Kind::Socket => {
                match read_into(self.io.get_ref().as_raw_fd(), &mut self.buf, Some(0)) {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The next item if it is here already (buffered, or read without
    /// waiting, whatever the runtime has seen): `Some` as [`Wire::next`]
    /// would return it, `None` when it would have to wait.
    pub fn try_next<D: Decoder>(
        &mut self,
        codec: &mut D,
    ) -> Option<Option<Result<D::Item, D::Error>>> {
        loop {
            if let Some(item) = codec.decode(&mut self.buf).transpose() {
                return Some(Some(item));
            }
            match self.read_some() {
                Ok(0) => return Some(codec.decode_eof(&mut self.buf).transpose()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Some(Err(e.into()))),
            }
        }
    }

    /// The next item, reading and waiting as needed; `None` at a clean EOF.
    /// When an answer is [`Expect::Due`], waits may block the thread (see
    /// [`BlockingWaits`]). Cancel-safe:
    /// what was read stays in the buffer.
    pub async fn next<D: Decoder>(
        &mut self,
        codec: &mut D,
        expect: Expect,
    ) -> Option<Result<D::Item, D::Error>> {
        let waits = BlockingWaits::get();
        // A due answer was asked for a moment ago, and the other process
        // has yet to run (on this CPU, when pinned): a read now would fail,
        // so a blocking wait comes first. It (poll(2), or recv(2) on a
        // socket) returns at once for anything already here.
        let mut read_first = expect == Expect::Whenever;
        loop {
            if read_first {
                if let Some(next) = self.try_next(codec) {
                    return next;
                }
            } else if let Some(item) = codec.decode(&mut self.buf).transpose() {
                return Some(item);
            }
            let wait = waits.next_wait(expect);
            if !std::mem::replace(&mut read_first, true) && !matches!(wait, Wait::Block(_)) {
                // Only poll(2) or recv(2) may go first: the runtime's
                // readiness is edge-triggered and may not show what is here.
                continue;
            }
            match wait {
                Wait::Block(limit) => match self.block(limit) {
                    Ok(true) => {}
                    Ok(false) => self.wait_runtime().await,
                    Err(e) => return Some(Err(e.into())),
                },
                Wait::Yield => {
                    tokio::task::yield_now().await;
                    waits.runtime_ran();
                }
                Wait::Runtime => self.wait_runtime().await,
            }
        }
    }

    async fn wait_runtime(&mut self) {
        match self.io.readable().await {
            // The next read says whether there is data; a stale readiness
            // costs one read that fails, a missed one would hang.
            Ok(mut guard) => guard.clear_ready(),
            // Only if the reactor is gone; the read will fail too.
            Err(_) => tokio::task::yield_now().await,
        }
        BlockingWaits::get().runtime_ran();
    }

    /// Reads what arrived if the runtime has seen something arrive since
    /// the last wait, with no system call otherwise: `Ok(None)` for nothing,
    /// `Ok(Some(0))` at EOF.
    pub fn read_if_ready(&mut self) -> io::Result<Option<usize>> {
        use std::future::Future;
        let Wire { io, buf, kind } = self;
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let ready = std::pin::pin!(io.readable());
        let std::task::Poll::Ready(guard) = ready.poll(&mut cx) else {
            return Ok(None);
        };
        let flags = kind.nowait();
        // A readiness that turns out stale is cleared by try_io.
        match guard?.try_io(|inner| read_into(inner.as_raw_fd(), buf, flags)) {
            Ok(read) => read.map(Some),
            Err(_would_block) => Ok(None),
        }
    }
}

impl<F: AsRawFd + AsFd> Wire<F> {
    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match write_from(self.io.get_ref().as_raw_fd(), data, self.kind.nowait()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.writable().await?.clear_ready();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Leaves a socket blocking, with a receive timeout of [`MAX_BLOCK`]: a
/// recv(2) with no flags is a bounded blocking wait; I/O that must not wait
/// passes `MSG_DONTWAIT` (see [`Kind::Socket`]).
pub(crate) fn blocking_socket(file: &impl AsFd) -> io::Result<()> {
    set_nonblocking(file.as_fd(), false)?;
    nix::sys::socket::setsockopt(
        &file.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, MAX_BLOCK.as_micros() as _),
    )?;
    Ok(())
}

/// One read(2), or recv(2) with `flags`, into the spare capacity of
/// `buf`: `Ok(0)` at EOF.
pub(crate) fn read_into(
    fd: std::os::fd::RawFd,
    buf: &mut BytesMut,
    flags: Option<libc::c_int>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 * 1024);
    }
    let spare = buf.spare_capacity_mut();
    let (ptr, len) = (spare.as_mut_ptr().cast(), spare.len());
    // SAFETY: read(2) and recv(2) write at most `len` bytes into the spare
    // capacity, and `set_len` only covers what they wrote.
    let n = unsafe {
        match flags {
            None => libc::read(fd, ptr, len),
            Some(flags) => libc::recv(fd, ptr, len, flags),
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// One write(2), or send(2) with `flags` (and no SIGPIPE), of `data`.
pub(crate) fn write_from(
    fd: std::os::fd::RawFd,
    data: &[u8],
    flags: Option<libc::c_int>,
) -> io::Result<usize> {
    let (ptr, len) = (data.as_ptr().cast(), data.len());
    // SAFETY: both only read `len` bytes from `data`.
    let n = unsafe {
        match flags {
            None => libc::write(fd, ptr, len),
            Some(flags) => libc::send(fd, ptr, len, flags | libc::MSG_NOSIGNAL),
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sets or clears `O_NONBLOCK` on `fd`.
fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// poll(2) for input on one file: true when there is input (or EOF, or an
/// error, which the next read reports), false after `limit`.
fn poll_in(fd: std::os::fd::BorrowedFd<'_>, limit: Duration) -> bool {
    let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    matches!(nix::poll::poll(&mut pfd, ms), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use tokio_util::codec::LinesCodec;

    /// A connected pair: our end as a socket [`Wire`], the peer's plain.
    fn pair() -> (Wire<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        (Wire::socket(ours).expect("wire"), peer)
    }

    #[tokio::test]
    async fn a_blocking_wait_on_a_socket_gets_what_arrives_late_and_then_eof() {
        BlockingWaits::get().enable();
        let (mut wire, mut peer) = pair();
        let mut codec = LinesCodec::new();
        // Longer than MAX_BLOCK: the wait passes to the runtime and must
        // still see the line.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(MAX_BLOCK * 4);
            peer.write_all(b"one\ntw").expect("write");
            std::thread::sleep(MAX_BLOCK / 2);
            peer.write_all(b"o\n").expect("write");
        });
        let first = wire.next(&mut codec, Expect::Due).await;
        assert_eq!(first.map(|r| r.ok()), Some(Some("one".to_string())));
        let second = wire.next(&mut codec, Expect::Due).await;
        assert_eq!(second.map(|r| r.ok()), Some(Some("two".to_string())));
        writer.join().expect("writer");
        // The peer is gone: a clean end, not an error or a hang.
        let end =
            tokio::time::timeout(Duration::from_secs(5), wire.next(&mut codec, Expect::Due)).await;
        assert!(matches!(end, Ok(None)), "expected EOF");
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_lets_the_runtime_run() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let (wire, mut peer) = pair();
        let size = 16 << 20;
        let data = vec![b'x'; size];
        // The peer reads only once a task on this runtime's one thread has
        // run, which it can only while the write waits through the runtime.
        // A write that blocked the thread would stall until the peer's
        // fallback after 10 s, and the task would not have run first.
        let ran = Arc::new(AtomicBool::new(false));
        let seen = ran.clone();
        let reader = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !seen.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let by_task = seen.load(Ordering::SeqCst);
            let mut got = Vec::new();
            let _ = peer.read_to_end(&mut got);
            (by_task, got.len())
        });
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let written = wire.write_all(&data).await;
        drop(wire);
        assert!(written.is_ok(), "{written:?}");
        let (by_task, got) = reader.join().expect("reader");
        assert!(by_task, "the write blocked the runtime's thread");
        assert_eq!(got, size);
    }
}
