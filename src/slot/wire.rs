//! The runner's two byte streams (gearmand's socket, the stdio handler's
//! stdout), read into their own buffers so that a wait can be either a
//! blocking poll(2) or the runtime's.
//!
//! While a stream of jobs flows, every job needs two waits: for the
//! handler's answer and for gearmand's next assignment. Through the runtime
//! each wait is a failed read, a park in epoll_wait and a wake-up of the task;
//! a blocking poll(2) followed by one read is the least a wait can cost
//! (bench/floor measured ~4 µs per job between the two). The [`Pace`] keeps
//! that from starving the runtime's other tasks (reports, signals, the
//! manager's messages): the thread blocks at most [`MAX_BLOCK`] at a time and
//! yields to the runtime at least every [`SLICE`].

use std::io::{self, Write};
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
pub struct Pace {
    enabled: AtomicBool,
    origin: Instant,
    /// Microseconds since `origin` of the last turn.
    turned: AtomicU64,
}

impl Pace {
    /// The process's pace; blocking waits start disabled.
    pub fn get() -> &'static Pace {
        static PACE: OnceLock<Pace> = OnceLock::new();
        PACE.get_or_init(|| Pace {
            enabled: AtomicBool::new(false),
            origin: Instant::now(),
            turned: AtomicU64::new(0),
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

    fn turned(&self) {
        self.turned.store(self.now(), Ordering::Relaxed);
    }

    /// What the next wait may be.
    fn next_wait(&self, fast: bool) -> Wait {
        if !fast || !self.enabled.load(Ordering::Relaxed) {
            return Wait::Runtime;
        }
        let since = self
            .now()
            .saturating_sub(self.turned.load(Ordering::Relaxed));
        if since >= SLICE.as_micros() as u64 {
            Wait::Yield
        } else {
            Wait::Block(MAX_BLOCK)
        }
    }
}

enum Wait {
    Block(Duration),
    Yield,
    Runtime,
}

/// One non-blocking file (socket or pipe) with a read buffer.
pub struct Wire<F: AsRawFd> {
    io: AsyncFd<F>,
    pub buf: BytesMut,
}

impl<F: AsRawFd + AsFd> Wire<F> {
    /// Puts `file` in non-blocking mode and registers it with the runtime
    /// (so it needs the runtime's context).
    pub fn new(file: F) -> io::Result<Wire<F>> {
        let fd = file.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: `file` owns its descriptor and the Wire owns `file`, so it
        // stays open and the same for as long as it is registered.
        let io = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(Wire {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    pub fn get_ref(&self) -> &F {
        self.io.get_ref()
    }

    /// One read into the buffer: `Ok(0)` at EOF.
    fn read_some(&mut self) -> io::Result<usize> {
        read_into(self.io.get_ref().as_raw_fd(), &mut self.buf)
    }

    /// The next item if it is here already (buffered, or read without
    /// waiting, whatever the runtime has seen): `Some` as [`Wire::next`]
    /// would return it, `None` when it would have to wait.
    pub fn try_next<D: Decoder>(
        &mut self,
        codec: &mut D,
    ) -> Option<Option<Result<D::Item, D::Error>>> {
        loop {
            match codec.decode(&mut self.buf) {
                Ok(Some(item)) => return Some(Some(Ok(item))),
                Ok(None) => {}
                Err(e) => return Some(Some(Err(e))),
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
    /// With `fast`, waits may block the thread (see [`Pace`]). Cancel-safe:
    /// what was read stays in the buffer.
    pub async fn next<D: Decoder>(
        &mut self,
        codec: &mut D,
        fast: bool,
    ) -> Option<Result<D::Item, D::Error>> {
        let pace = Pace::get();
        loop {
            if let Some(next) = self.try_next(codec) {
                return next;
            }
            match pace.next_wait(fast) {
                Wait::Block(limit) => {
                    if poll_in(self.io.get_ref().as_fd(), limit) {
                        continue;
                    }
                    self.wait_runtime().await;
                }
                Wait::Yield => {
                    tokio::task::yield_now().await;
                    pace.turned();
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
        Pace::get().turned();
    }

    /// Reads what arrived if the runtime has seen something arrive since
    /// the last wait, with no system call otherwise: `Ok(None)` for nothing,
    /// `Ok(Some(0))` at EOF.
    pub fn read_if_ready(&mut self) -> io::Result<Option<usize>> {
        use std::future::Future;
        let Wire { io, buf } = self;
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let ready = std::pin::pin!(io.readable());
        let std::task::Poll::Ready(guard) = ready.poll(&mut cx) else {
            return Ok(None);
        };
        // A readiness that turns out stale is cleared by try_io.
        match guard?.try_io(|inner| read_into(inner.as_raw_fd(), buf)) {
            Ok(read) => read.map(Some),
            Err(_would_block) => Ok(None),
        }
    }
}

impl<F: AsRawFd + AsFd> Wire<F>
where
    for<'a> &'a F: Write,
{
    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.io.get_ref().write(data) {
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

/// One read(2) into the spare capacity of `buf`: `Ok(0)` at EOF.
fn read_into(fd: std::os::fd::RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 * 1024);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
    // capacity, and `set_len` only covers what it wrote.
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}

/// poll(2) for input on one file: true when there is input (or EOF, or an
/// error, which the next read reports), false after `limit`.
fn poll_in(fd: std::os::fd::BorrowedFd<'_>, limit: Duration) -> bool {
    let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    matches!(nix::poll::poll(&mut pfd, ms), Ok(n) if n > 0)
}
