//! One relayed connection's I/O: the worker's socket on one side, a
//! connection to the job server on the other, packets framed with the
//! project's codec and judged by [`Session`].
//!
//! Each wake-up reads what is there (one read), judges every whole packet
//! in it, and writes what passes in one write per direction; a read that
//! leaves the socket empty clears its readiness, so no read fails per
//! batch. The bytes of a packet that passes are copied once, into the
//! output buffer; nothing is allocated per packet. A side that does not
//! take what it is sent stops the relay from reading the other side.
//!
//! While jobs stream, the answer to what was just passed on is due a moment
//! later (a grab's from the job server, a job's from the worker): that wait
//! is one recv(2) that blocks for at most `wire::MAX_BLOCK` rather than the
//! runtime's epoll_wait and a read, as the stdio runner's waits
//! (`wire.rs`); then drains, timers and pauses are looked at again.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::session::{Ended, Session, Verdict};
use super::shared::{ConnId, Shared};
use crate::gearman::codec::{reserve_packet, PacketCodec, Peek, ProtocolError, HEADER_LEN};
use crate::gearman::packet::{Header, Packet, PacketType};
use crate::slot::connection::{io_words, jitter, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};
use crate::slot::wire::{blocking_socket, read_into, write_from, BlockingWaits, Expect, Wait};

/// Room made for a read when no packet of known size is being assembled.
const READ_CHUNK: usize = 16 * 1024;
/// A buffer left this large by a big packet is given back once empty.
const KEEP_AT_MOST: usize = 1 << 20;
/// Output waiting for a side beyond this stops reading from the other.
const HIGH_WATER: usize = 256 * 1024;
/// How long the last words to the job server (a worker's answer, a
/// WORK_FAIL) may take to go out when a connection ends.
const LAST_WRITE: Duration = Duration::from_secs(2);

/// Relays one connection from the worker to `server` until either side
/// ends it or the worker's process is gone (`generation`).
pub async fn serve(
    worker: TcpStream,
    server: String,
    shared: Arc<Shared>,
    id: ConnId,
    generation: CancellationToken,
    // Counts the relay's open connections while this one lives.
    open: Arc<()>,
) {
    // The worker's bytes wait in its socket while the job server is
    // unreachable: its library sees a slow server, not a dead one, and
    // nothing is lost.
    let Some(upstream) = connect(&server, &shared, &generation).await else {
        return;
    };
    let (worker, upstream) = match (Sock::new(worker), Sock::new(upstream)) {
        (Ok(w), Ok(u)) => (w, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(server = %server, "cannot relay the worker's connection: {}", io_words(&e));
            return;
        }
    };
    let mut session = Session::new(id, Instant::now());
    let (ended, mut to_server) = relay(
        &worker,
        &upstream,
        &shared,
        &mut session,
        &generation,
        &open,
    )
    .await;
    let lost = session.close(&shared, ended.fail_job, Instant::now());
    if let Some(fail) = lost.as_ref().and_then(|l| l.fail.clone()) {
        fail.encode(&mut to_server);
    }
    if ended.kill {
        shared.kill_worker();
    }
    match &lost {
        Some(job) if ended.kill => tracing::warn!(
            gearman_function = %job.function,
            gearman_handle = %job.handle,
            "job failed: {}; killing the native worker", ended.why
        ),
        Some(job) if ended.by_server => tracing::warn!(
            gearman_function = %job.function,
            gearman_handle = %job.handle,
            server = %server,
            "job server connection lost mid-job: {}; the job server re-queues the job", ended.why
        ),
        Some(job) => tracing::warn!(
            gearman_function = %job.function,
            gearman_handle = %job.handle,
            "job failed: {}", ended.why
        ),
        None if ended.by_server => tracing::warn!(
            server = %server,
            "job server connection lost: {}; closing the worker's connection so that it reconnects",
            ended.why
        ),
        None => tracing::debug!(server = %server, "relayed connection closed: {}", ended.why),
    }
    if ended.by_server {
        shared.link(&server, Some(&ended.why));
    } else if !to_server.is_empty() {
        // The worker's last answer, or the WORK_FAIL for its job.
        let _ = tokio::time::timeout(LAST_WRITE, upstream.write_all(&mut to_server)).await;
    }
}

/// Connects to the job server, retrying with back-off while it is
/// unreachable; `None` once the worker is gone.
async fn connect(
    server: &str,
    shared: &Shared,
    generation: &CancellationToken,
) -> Option<TcpStream> {
    let mut backoff = BACKOFF_MIN;
    loop {
        let attempt = tokio::select! {
            _ = generation.cancelled() => return None,
            r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server)) => r,
        };
        let why = match attempt {
            Ok(Ok(stream)) => {
                shared.link(server, None);
                return Some(stream);
            }
            Ok(Err(e)) => io_words(&e),
            Err(_) => format!(
                "timed out: no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        if shared.link(server, Some(&why)) {
            tracing::warn!(server = %server, "cannot reach job server: {why}; the worker's connection waits, retrying with back-off");
        }
        let jittered = jitter(backoff);
        tokio::select! {
            _ = generation.cancelled() => return None,
            _ = tokio::time::sleep(jittered) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Which side of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Worker,
    Server,
}

impl Side {
    /// The side closed its connection.
    fn closed(self) -> Ended {
        match self {
            Side::Worker => Ended::worker("the worker closed its connection"),
            Side::Server => Ended::server("closed by the job server"),
        }
    }

    /// Reading from the side failed.
    fn failed(self, e: &std::io::Error) -> Ended {
        match self {
            Side::Worker => Ended::worker(format!("reading from the worker: {}", io_words(e))),
            Side::Server => Ended::server(io_words(e)),
        }
    }

    /// The side sent what does not frame.
    fn malformed(self, e: ProtocolError) -> Ended {
        match self {
            Side::Worker => {
                Ended::worker_malformed(format!("malformed packet from the worker: {e}"))
            }
            Side::Server => Ended::server(format!("malformed packet from the job server: {e}")),
        }
    }
}

/// The relay loop proper. Returns why it ended, with what is still owed to
/// the job server.
async fn relay(
    worker: &Sock,
    upstream: &Sock,
    shared: &Shared,
    session: &mut Session,
    generation: &CancellationToken,
    open: &Arc<()>,
) -> (Ended, BytesMut) {
    let codec = PacketCodec::new(shared.max_packet);
    let waits = BlockingWaits::get();
    let mut from_worker = BytesMut::with_capacity(READ_CHUNK);
    let mut from_server = BytesMut::with_capacity(READ_CHUNK);
    let mut to_server = BytesMut::with_capacity(READ_CHUNK);
    let mut to_worker = BytesMut::with_capacity(READ_CHUNK);
    // Every connection carries the slot's identity, whatever the worker
    // says (or does not say) of itself.
    Packet::req(PacketType::SetClientId, vec![shared.client_id.clone()]).encode(&mut to_server);
    let mut epoch = shared.subscribe();
    let far = || Instant::now() + Duration::from_secs(86_400);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    // Made once: a fresh `cancelled()` each turn would register a waiter
    // with the token each time.
    let gone = generation.cancelled();
    tokio::pin!(gone);
    // The side that owes an answer a moment from now (see `due_after`).
    let mut due: Option<Side> = None;
    let ended = loop {
        // Only an earlier deadline moves the timer; a late one is looked
        // at again when the timer fires (a reset per job would cost more).
        let deadline = session.due(shared);
        if deadline < sleep.deadline() {
            sleep.as_mut().reset(deadline);
        }
        if let Err(e) = upstream.flush(&mut to_server) {
            break Ended::server(io_words(&e));
        }
        if let Err(e) = worker.flush(&mut to_worker) {
            break Ended::worker(format!("writing to the worker: {}", io_words(&e)));
        }
        let mut read: Option<(Side, std::io::Result<usize>)> = None;
        // A due answer is waited for in recv(2), bounded, instead of the
        // runtime's epoll: one system call and one wake-up less per
        // crossing. Only while this is the worker's one connection (the
        // accept loop holds the other count), so no other connection
        // waits for the thread; `BlockingWaits` gives the runtime its turns.
        if let Some(side) = due.take() {
            if to_server.is_empty() && to_worker.is_empty() && Arc::strong_count(open) == 2 {
                match waits.next_wait(Expect::Due) {
                    Wait::Block(_) => {
                        let (sock, buf) = match side {
                            Side::Worker => (worker, &mut from_worker),
                            Side::Server => (upstream, &mut from_server),
                        };
                        match sock.block(buf) {
                            Ok(None) => {}
                            r => read = Some((side, r.map(|n| n.unwrap_or(0)))),
                        }
                    }
                    Wait::Yield => {
                        tokio::task::yield_now().await;
                        waits.runtime_ran();
                        due = Some(side);
                        continue;
                    }
                    Wait::Runtime => {}
                }
            }
        }
        if read.is_none() {
            let take_worker = to_server.len() < HIGH_WATER && to_worker.len() < HIGH_WATER;
            let take_server = to_worker.len() < HIGH_WATER;
            tokio::select! {
                biased;
                () = &mut gone => break Ended::worker("the worker process is gone"),
                r = worker.read(&mut from_worker), if take_worker => read = Some((Side::Worker, r)),
                r = upstream.read(&mut from_server), if take_server => read = Some((Side::Server, r)),
                r = upstream.writable(), if !to_server.is_empty() => {
                    if let Err(e) = r {
                        break Ended::server(io_words(&e));
                    }
                }
                r = worker.writable(), if !to_worker.is_empty() => {
                    if let Err(e) = r {
                        break Ended::worker(format!("writing to the worker: {}", io_words(&e)));
                    }
                }
                () = &mut sleep => {
                    match session.tick(shared, Instant::now()) {
                        Ok(Some(echo)) => echo.encode(&mut to_server),
                        Ok(None) => {}
                        Err(e) => break e,
                    }
                    let deadline = session.due(shared);
                    sleep.as_mut().reset(deadline);
                }
                r = epoch.changed(), if session.noop_owed => {
                    if r.is_ok() {
                        epoch.borrow_and_update();
                    }
                    if let Some(noop) = session.wake(shared) {
                        noop.encode(&mut to_worker);
                    }
                }
            }
            waits.runtime_ran();
        }
        let Some((side, r)) = read else {
            continue;
        };
        let now = Instant::now();
        match r {
            Ok(0) => break side.closed(),
            Ok(_) => {}
            Err(e) => break side.failed(&e),
        }
        let (input, pass, back) = match side {
            Side::Worker => (&mut from_worker, &mut to_server, &mut to_worker),
            Side::Server => (&mut from_server, &mut to_worker, &mut to_server),
        };
        let judged = judge(
            &codec,
            input,
            (pass, back),
            |h, body| {
                let verdict = match side {
                    Side::Worker => session.on_worker(shared, h, body, now),
                    Side::Server => session.on_server(shared, h, body, now),
                };
                due = due_after(side, h.kind, &verdict);
                verdict
            },
            |e| side.malformed(e),
        );
        if let Err(e) = judged {
            break e;
        }
    };
    (ended, to_server)
}

/// Which side owes an answer a moment after a packet from `from` of `kind`
/// was judged: the job server, for a grab passed on; the worker, for a job
/// assigned (its answer) or a job answered (its next grab follows at
/// once). `None` when nothing is due soon (a sleeping worker).
fn due_after(from: Side, kind: PacketType, verdict: &Result<Verdict, Ended>) -> Option<Side> {
    use PacketType as T;
    match (from, kind, verdict) {
        (Side::Worker, T::GrabJob | T::GrabJobUniq | T::GrabJobAll, Ok(Verdict::Pass)) => {
            Some(Side::Server)
        }
        (Side::Worker, T::WorkComplete | T::WorkFail | T::WorkException, Ok(_)) => {
            Some(Side::Worker)
        }
        (Side::Server, T::JobAssign | T::JobAssignUniq | T::JobAssignAll, Ok(_)) => {
            Some(Side::Worker)
        }
        _ => None,
    }
}

/// One relayed socket, left blocking with a receive timeout
/// ([`blocking_socket`]) and registered with the runtime: the runtime's
/// reads and writes pass `MSG_DONTWAIT`, and [`Sock::block`] is one recv(2)
/// that waits a bounded time.
struct Sock(AsyncFd<std::net::TcpStream>);

impl Sock {
    fn new(stream: TcpStream) -> std::io::Result<Sock> {
        let stream = stream.into_std()?;
        stream.set_nodelay(true)?;
        blocking_socket(&stream)?;
        // SAFETY: the Sock owns `stream`, so its descriptor stays open and
        // the same for as long as it is registered.
        let io = unsafe { AsyncFd::register(stream) }.map_err(|e| e.into_parts().1)?;
        Ok(Sock(io))
    }

    fn fd(&self) -> RawFd {
        self.0.get_ref().as_raw_fd()
    }

    /// One read into `buf` once the runtime has seen input. A read that
    /// leaves the socket empty clears its readiness, so the next wait goes
    /// straight to epoll instead of a read that fails first.
    async fn read(&self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            let room = buf.capacity() - buf.len();
            match read_into(self.fd(), buf, Some(libc::MSG_DONTWAIT)) {
                Ok(n) => {
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for input in recv(2), at most `MAX_BLOCK` (the socket's
    /// timeout): what was read (`Some(0)` at EOF), `None` if nothing came.
    fn block(&self, buf: &mut BytesMut) -> std::io::Result<Option<usize>> {
        match read_into(self.fd(), buf, Some(0)) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes what it can of `out` without waiting.
    fn flush(&self, out: &mut BytesMut) -> std::io::Result<()> {
        while !out.is_empty() {
            match write_from(self.fd(), out, Some(libc::MSG_DONTWAIT)) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if out.capacity() > KEEP_AT_MOST {
            *out = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(())
    }

    /// Waits until the runtime says the socket takes output. The readiness
    /// is cleared first: the flush that follows tells, and an edge that
    /// comes after it sets it again.
    async fn writable(&self) -> std::io::Result<()> {
        self.0.writable().await?.clear_ready();
        Ok(())
    }

    /// Writes all of `out`, waiting as needed.
    async fn write_all(&self, out: &mut BytesMut) -> std::io::Result<()> {
        loop {
            self.flush(out)?;
            if out.is_empty() {
                return Ok(());
            }
            self.writable().await?;
        }
    }
}

/// Judges every whole packet in `input` with `decide`, appending what
/// passes to `pass` and answers to `back`, and makes room for the next
/// read. A packet that does not frame ends the connection (`malformed`).
fn judge(
    codec: &PacketCodec,
    input: &mut BytesMut,
    (pass, back): (&mut BytesMut, &mut BytesMut),
    mut decide: impl FnMut(&Header, &[u8]) -> Result<Verdict, Ended>,
    malformed: impl FnOnce(ProtocolError) -> Ended,
) -> Result<(), Ended> {
    let mut at = 0;
    let mut partial = 0;
    let result = loop {
        match codec.peek(&input[at..]) {
            Ok(Peek::Whole(header, len)) => {
                let frame = &input[at..at + len];
                match decide(&header, &frame[HEADER_LEN..]) {
                    Ok(Verdict::Pass) => pass.extend_from_slice(frame),
                    Ok(Verdict::Drop) => {}
                    Ok(Verdict::Replace(p)) => p.encode(pass),
                    Ok(Verdict::Answer(p)) => p.encode(back),
                    Err(e) => break Err(e),
                }
                at += len;
            }
            Ok(Peek::Partial(total)) => {
                partial = total;
                break Ok(());
            }
            Err(e) => break Err(malformed(e)),
        }
    };
    input.advance(at);
    if result.is_ok() {
        make_room(input, partial);
    }
    result
}

/// Room for the next read: exactly the rest of a packet being assembled
/// (so a near-limit packet does not double the buffer), else a chunk; a
/// buffer a big packet left large is given back once empty.
fn make_room(input: &mut BytesMut, partial: usize) {
    if partial > input.len() {
        reserve_packet(input, partial);
    } else if input.is_empty() && input.capacity() > KEEP_AT_MOST {
        *input = BytesMut::with_capacity(READ_CHUNK);
    } else if input.capacity() - input.len() < READ_CHUNK / 4 {
        input.reserve(READ_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::wire::MAX_BLOCK;
    use std::io::{Read, Write};

    /// A relayed socket and its peer, plain.
    async fn pair() -> (Sock, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ours = TcpStream::connect(addr).await.expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        (Sock::new(ours).expect("sock"), peer)
    }

    #[tokio::test]
    async fn a_blocking_wait_is_bounded_and_reads_what_comes_then_eof() {
        let (sock, mut peer) = pair().await;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let t0 = std::time::Instant::now();
        assert!(matches!(sock.block(&mut buf), Ok(None)), "nothing came");
        let waited = t0.elapsed();
        assert!(
            waited >= MAX_BLOCK / 2 && waited < Duration::from_secs(1),
            "{waited:?}"
        );
        peer.write_all(b"abc").expect("write");
        assert!(matches!(sock.block(&mut buf), Ok(Some(3))));
        assert_eq!(&buf[..], b"abc");
        // The runtime's read does not wait, although the socket blocks.
        let none = tokio::time::timeout(MAX_BLOCK, sock.read(&mut buf)).await;
        assert!(none.is_err(), "{none:?}");
        let mut out = BytesMut::from(&b"xyz"[..]);
        sock.flush(&mut out).expect("flush");
        assert!(out.is_empty());
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"xyz");
        drop(peer);
        assert!(matches!(sock.block(&mut buf), Ok(Some(0))), "EOF");
    }

    #[test]
    fn the_answer_due_next() {
        use PacketType as T;
        let pass = Ok(Verdict::Pass);
        let no_job = Ok(Verdict::Answer(Packet::res(T::NoJob, vec![])));
        assert_eq!(
            due_after(Side::Worker, T::GrabJobAll, &pass),
            Some(Side::Server)
        );
        assert_eq!(due_after(Side::Worker, T::GrabJob, &no_job), None);
        assert_eq!(
            due_after(Side::Worker, T::WorkComplete, &pass),
            Some(Side::Worker)
        );
        assert_eq!(
            due_after(Side::Server, T::JobAssignUniq, &pass),
            Some(Side::Worker)
        );
        assert_eq!(due_after(Side::Server, T::NoJob, &pass), None);
        assert_eq!(due_after(Side::Worker, T::PreSleep, &pass), None);
    }
}
