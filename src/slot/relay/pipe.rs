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

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::session::{Ended, Session, Verdict};
use super::shared::{ConnId, Shared};
use crate::gearman::codec::{reserve_packet, PacketCodec, Peek, ProtocolError, HEADER_LEN};
use crate::gearman::packet::{Header, Packet, PacketType};
use crate::slot::connection::{io_words, jitter, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};

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
    mut worker: TcpStream,
    server: String,
    shared: Arc<Shared>,
    id: ConnId,
    generation: CancellationToken,
    // Counts the relay's open connections while this one lives.
    _open: Arc<()>,
) {
    // The worker's bytes wait in its socket while the job server is
    // unreachable: its library sees a slow server, not a dead one, and
    // nothing is lost.
    let Some(mut upstream) = connect(&server, &shared, &generation).await else {
        return;
    };
    let _ = worker.set_nodelay(true);
    let mut session = Session::new(id, Instant::now());
    let (ended, mut to_server) = relay(
        &mut worker,
        &mut upstream,
        &shared,
        &mut session,
        &generation,
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
        let _ = tokio::time::timeout(LAST_WRITE, write_all(&upstream, &mut to_server)).await;
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
                let _ = stream.set_nodelay(true);
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

/// The relay loop proper. Returns why it ended, with what is still owed to
/// the job server.
async fn relay(
    worker: &mut TcpStream,
    upstream: &mut TcpStream,
    shared: &Shared,
    session: &mut Session,
    generation: &CancellationToken,
) -> (Ended, BytesMut) {
    let codec = PacketCodec::new(shared.max_packet);
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
    let (worker_in, worker_out) = worker.split();
    let (server_in, server_out) = upstream.split();
    let (worker, upstream) = (worker_out.as_ref(), server_out.as_ref());
    let mut reading = (
        Reader {
            buf: &mut from_worker,
            half: worker_in,
        },
        Reader {
            buf: &mut from_server,
            half: server_in,
        },
    );
    let ended = loop {
        // Only an earlier deadline moves the timer; a late one is looked
        // at again when the timer fires (a reset per job would cost more).
        let due = session.due(shared);
        if due < sleep.deadline() {
            sleep.as_mut().reset(due);
        }
        if let Err(e) = flush(upstream, &mut to_server) {
            break Ended::server(io_words(&e));
        }
        if let Err(e) = flush(worker, &mut to_worker) {
            break Ended::worker(format!("writing to the worker: {}", io_words(&e)));
        }
        let take_worker = to_server.len() < HIGH_WATER && to_worker.len() < HIGH_WATER;
        let take_server = to_worker.len() < HIGH_WATER;
        tokio::select! {
            biased;
            () = &mut gone => break Ended::worker("the worker process is gone"),
            r = reading.0.read(), if take_worker => {
                match r {
                    Ok(0) => break Ended::worker("the worker closed its connection"),
                    Ok(_) => {}
                    Err(e) => break Ended::worker(format!("reading from the worker: {}", io_words(&e))),
                }
                let now = Instant::now();
                let judged = judge(
                    &codec,
                    reading.0.buf,
                    (&mut to_server, &mut to_worker),
                    |h, body| session.on_worker(shared, h, body, now),
                    |e| Ended::worker(format!("malformed packet from the worker: {e}")),
                );
                if let Err(e) = judged {
                    break e;
                }
            }
            r = reading.1.read(), if take_server => {
                match r {
                    Ok(0) => break Ended::server("closed by the job server"),
                    Ok(_) => {}
                    Err(e) => break Ended::server(io_words(&e)),
                }
                let now = Instant::now();
                let judged = judge(
                    &codec,
                    reading.1.buf,
                    (&mut to_worker, &mut to_server),
                    |h, body| session.on_server(shared, h, body, now),
                    |e| Ended::server(format!("malformed packet from the job server: {e}")),
                );
                if let Err(e) = judged {
                    break e;
                }
            }
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
                let due = session.due(shared);
                sleep.as_mut().reset(due);
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
    };
    (ended, to_server)
}

/// One side's read half and read buffer.
struct Reader<'a> {
    buf: &'a mut BytesMut,
    half: ReadHalf<'a>,
}

impl Reader<'_> {
    /// One read into the buffer. Through `AsyncRead` (not `try_read`): a
    /// read that leaves the socket empty clears its readiness, so the next
    /// wait goes straight to epoll instead of a read that fails first.
    async fn read(&mut self) -> std::io::Result<usize> {
        self.half.read_buf(self.buf).await
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

/// Writes what it can of `out` without waiting.
fn flush(socket: &TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    while !out.is_empty() {
        match socket.try_write(out) {
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

/// Writes all of `out`, waiting as needed.
async fn write_all(socket: &TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    loop {
        flush(socket, out)?;
        if out.is_empty() {
            return Ok(());
        }
        socket.writable().await?;
    }
}
