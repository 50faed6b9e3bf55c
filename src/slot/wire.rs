//! The runner's two byte streams (gearmand's socket, the stdio handler's
//! stdout socket), read into their own buffers so that a wait can be either
//! a blocking receive or the runtime's.
//!
//! While a stream of jobs flows, every job needs two waits: for the
//! handler's answer and for gearmand's next assignment. Through the runtime
//! each wait is a failed read, a park in epoll_wait and a wake-up of the task;
//! a blocking recv(2) is the least a wait can cost: one system call
//! (bench/floor measured ~4 µs per job between the two). So both streams
//! are sockets left in blocking mode with a receive timeout of
//! [`MAX_BLOCK`]: a fast wait is a plain recv, and every other read and
//! write passes MSG_DONTWAIT, so nothing the runtime drives ever blocks.
//! The [`Pace`] keeps the blocking waits from starving the runtime's other
//! tasks (reports, signals, the manager's messages): the thread blocks at
//! most [`MAX_BLOCK`] at a time and yields to the runtime at least every
//! [`SLICE`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
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

    /// Whether the next wait may block the thread, or must first let the
    /// runtime have its turn.
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
            Wait::Block
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// A recv that blocks for at most [`MAX_BLOCK`].
    Block,
    Yield,
    Runtime,
}

/// One stream socket with a read buffer.
pub struct Wire<F: AsRawFd> {
    io: AsyncFd<F>,
    pub buf: BytesMut,
}

impl<F: AsRawFd + AsFd> Wire<F> {
    /// Puts the socket `file` in blocking mode with a receive timeout of
    /// [`MAX_BLOCK`] and registers it with the runtime (so it needs the
    /// runtime's context). Only this module's calls may use it from then on:
    /// they pass MSG_DONTWAIT wherever a wait is not wanted.
    pub fn new(file: F) -> io::Result<Wire<F>> {
        let fd = file.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        let limit = nix::sys::time::TimeVal::new(0, MAX_BLOCK.as_micros() as _);
        nix::sys::socket::setsockopt(&file, nix::sys::socket::sockopt::ReceiveTimeout, &limit)?;
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
            match codec.decode(&mut self.buf) {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            let wait = pace.next_wait(fast);
            if wait == Wait::Yield {
                tokio::task::yield_now().await;
                pace.turned();
                continue;
            }
            let fd = self.io.get_ref().as_raw_fd();
            match recv_into(fd, &mut self.buf, wait == Wait::Block) {
                Ok(0) => return codec.decode_eof(&mut self.buf).transpose(),
                Ok(_) => continue,
                // A signal: the runtime sees it at its next turn.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e.into())),
            }
            // Nothing within MAX_BLOCK (or not allowed to block): the
            // runtime waits.
            self.wait_runtime().await;
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
        match guard?.try_io(|inner| recv_into(inner.as_raw_fd(), buf, false)) {
            Ok(read) => read.map(Some),
            Err(_would_block) => Ok(None),
        }
    }
}

impl<F: AsRawFd + AsFd> Wire<F> {
    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let fd = self.io.get_ref().as_raw_fd();
        while !data.is_empty() {
            // SAFETY: send(2) reads at most `data.len()` bytes of `data`.
            let n = unsafe {
                libc::send(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                data = &data[n as usize..];
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => self.io.writable().await?.clear_ready(),
                _ => return Err(e),
            }
        }
        Ok(())
    }
}

/// One recv(2) into the spare capacity of `buf`: `Ok(0)` at EOF. With
/// `block`, it waits up to the socket's receive timeout ([`MAX_BLOCK`]),
/// then fails with `WouldBlock`.
fn recv_into(fd: RawFd, buf: &mut BytesMut, block: bool) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 * 1024);
    }
    let spare = buf.spare_capacity_mut();
    let flags = if block { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: recv(2) writes at most `spare.len()` bytes into the spare
    // capacity, and `set_len` only covers what it wrote.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { buf.set_len(buf.len() + n as usize) };
    Ok(n as usize)
}
