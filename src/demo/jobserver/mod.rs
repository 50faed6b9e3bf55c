//! A small Gearman job server that `slotman demo` starts on loopback when no
//! gearmand is installed. A demo fixture, not a product: everything lives
//! in memory, nothing is persisted, and it serves what the demo and the
//! usual client and worker libraries need (the binary protocol's submit,
//! grab, sleep/wake, work results, status, echo and options; the text
//! admin commands `status`, `workers`, `version` and `getpid`). Run
//! gearmand for anything else.
//!
//! `state` holds the bookkeeping and decides every answer; this module
//! moves bytes. Each connection is a task that reads frames (binary
//! packets, or text lines when the first byte is not NUL, as gearmand
//! tells them apart) and hands them to the state under one lock; the
//! replies go to each target connection's queue, which its task writes
//! out. A connection that sends a malformed packet (bad magic, unknown
//! type, oversized, wrong argument count) or an overlong admin line is
//! dropped, as is one that lets more than `MAX_PENDING_BYTES` of replies
//! pile up unread; the jobs it ran are queued again and the server carries
//! on. Memory is bounded by `state::Limits`, the codec's packet limit, the
//! connection limit and those bytes per connection: nothing is sized up
//! front.

mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::gearman::codec::{PacketCodec, ProtocolError};
use crate::gearman::packet::Packet;
use state::{ConnId, Limits, Outbox, Reply, State};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Bytes of replies waiting to be written to one connection past which it
/// is dropped as too slow: a client that stopped reading must not make the
/// server hold without end what workers send it. (One reply may always
/// wait, however large: the codec bounds it.)
const MAX_PENDING_BYTES: usize = 16 << 20;
/// What a queued reply costs besides its bytes, so that a flood of empty
/// ones is bounded too.
const REPLY_OVERHEAD: usize = 64;
/// Longest admin command line.
const MAX_LINE: usize = 4096;

/// A running job server; it stops (closing every connection) when dropped.
pub struct JobServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl JobServer {
    /// Binds `addr` (port 0: any free port) and serves on the current tokio
    /// runtime until dropped.
    pub async fn start(addr: SocketAddr) -> std::io::Result<JobServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                state: State::new(Limits::default()),
                links: HashMap::new(),
            }),
        });
        tokio::spawn(accept_loop(listener, shared, stop.clone()));
        Ok(JobServer { addr, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for JobServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The state and the way to each connection's task, under one lock that is
/// never held across an await.
struct Shared {
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    links: HashMap<ConnId, Link>,
}

/// The way to a connection's task: its reply queue with the bytes waiting
/// in it, and a token that ends the task (also while it is stuck writing to
/// a peer that does not read).
struct Link {
    replies: mpsc::UnboundedSender<Reply>,
    pending: Arc<AtomicUsize>,
    end: CancellationToken,
}

/// What a reply counts against `MAX_PENDING_BYTES`.
fn cost(reply: &Reply) -> usize {
    REPLY_OVERHEAD
        + match reply {
            Reply::Packet(p) => p.encoded_len(),
            Reply::Text(t) => t.len(),
        }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is changed only by code that cannot panic half-way on
        // input; should it have, serving on beats stopping the demo.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection; its id, its reply queue and the count of
    /// bytes waiting in it.
    fn connect(
        &self,
        peer: SocketAddr,
        end: CancellationToken,
    ) -> (ConnId, mpsc::UnboundedReceiver<Reply>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let mut inner = self.lock();
        let id = inner.state.connect(peer.ip().to_string());
        let link = Link {
            replies: tx,
            pending: pending.clone(),
            end,
        };
        inner.links.insert(id, link);
        (id, rx, pending)
    }

    /// Runs `f` on the state and delivers the replies it produced.
    fn with_state(&self, f: impl FnOnce(&mut State, &mut Outbox)) {
        let mut inner = self.lock();
        let mut out = Outbox::default();
        f(&mut inner.state, &mut out);
        inner.deliver(out);
    }

    /// Forgets a connection (its task is ending or has ended).
    fn disconnect(&self, id: ConnId) {
        let mut inner = self.lock();
        if let Some(link) = inner.links.remove(&id) {
            link.end.cancel();
        }
        let mut out = Outbox::default();
        inner.state.disconnect(id, &mut out);
        inner.deliver(out);
    }
}

impl Inner {
    /// Queues each reply for its connection. A connection with more than
    /// `MAX_PENDING_BYTES` waiting is dropped, which may queue more replies
    /// (NOOPs for its re-queued jobs): those are delivered in turn.
    fn deliver(&mut self, mut out: Outbox) {
        while !out.0.is_empty() {
            let mut slow = Vec::new();
            for (to, reply) in out.0.drain(..) {
                let Some(link) = self.links.get(&to) else {
                    continue; // Gone already.
                };
                if link.pending.load(Ordering::Relaxed) >= MAX_PENDING_BYTES {
                    if !slow.contains(&to) {
                        slow.push(to);
                    }
                    continue;
                }
                link.pending.fetch_add(cost(&reply), Ordering::Relaxed);
                // Fails only once the task has ended; it is being forgotten.
                let _ = link.replies.send(reply);
            }
            for id in slow {
                tracing::debug!(
                    connection = id,
                    "dropping a connection that does not read its replies"
                );
                if let Some(link) = self.links.remove(&id) {
                    link.end.cancel();
                }
                self.state.disconnect(id, &mut out);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // Never closed.
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("demo job server: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let end = stop.child_token();
        tokio::spawn(async move {
            serve(stream, peer, &shared, end).await;
            drop(permit);
        });
    }
}

/// One connection, until the peer closes, sends something malformed, falls
/// behind, or the server stops.
async fn serve(stream: TcpStream, peer: SocketAddr, shared: &Shared, end: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (id, mut replies, pending) = shared.connect(peer, end.clone());
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, ServerCodec::default());
    let mut sink = FramedWrite::new(write, ServerCodec::default());
    loop {
        tokio::select! {
            _ = end.cancelled() => break,
            frame = frames.next() => match frame {
                Some(Ok(Frame::Packet(p))) => shared.with_state(|s, out| s.packet(id, p, out)),
                Some(Ok(Frame::Line(line))) => shared.with_state(|s, out| s.admin(id, &line, out)),
                Some(Err(e)) => {
                    tracing::debug!(connection = id, "demo job server: dropping connection: {e}");
                    break;
                }
                None => break,
            },
            reply = replies.recv() => {
                let Some(reply) = reply else { break };
                // Everything queued goes out in one write, which a peer
                // that does not read may hold up until the end.
                let write = async {
                    pending.fetch_sub(cost(&reply), Ordering::Relaxed);
                    sink.feed(reply).await?;
                    while let Ok(more) = replies.try_recv() {
                        pending.fetch_sub(cost(&more), Ordering::Relaxed);
                        sink.feed(more).await?;
                    }
                    sink.flush().await
                };
                let written = tokio::select! {
                    r = write => r.is_ok(),
                    _ = end.cancelled() => false,
                };
                if !written {
                    break;
                }
            }
        }
    }
    shared.disconnect(id);
}

/// What a connection sends: binary packets, or text admin lines when a
/// frame does not start with NUL (both may alternate on one connection).
#[derive(Debug)]
enum Frame {
    Packet(Packet),
    Line(String),
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("admin command line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Protocol(ProtocolError::Io(e))
    }
}

/// Frames in both directions: the project's packet codec (with its size
/// limit), plus admin lines in and admin text out.
#[derive(Default)]
struct ServerCodec {
    packets: PacketCodec,
}

impl Decoder for ServerCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match src.first() {
            None => Ok(None),
            Some(0) => Ok(self.packets.decode(src)?.map(Frame::Packet)),
            Some(_) => {
                let Some(nl) = src.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
                    return if src.len() >= MAX_LINE {
                        Err(FrameError::LineTooLong)
                    } else {
                        Ok(None)
                    };
                };
                let line = src.split_to(nl + 1);
                let text = String::from_utf8_lossy(&line[..nl]);
                Ok(Some(Frame::Line(text.trim_end_matches('\r').to_string())))
            }
        }
    }
}

impl Encoder<Reply> for ServerCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Reply, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Reply::Packet(p) => self.packets.encode(p, dst)?,
            Reply::Text(t) => dst.extend_from_slice(t.as_bytes()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gearman::packet::PacketType;
    use bytes::Bytes;

    fn decode_all(buf: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut codec = ServerCodec::default();
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn packets_and_admin_lines_alternate() {
        let echo = Packet::req(PacketType::EchoReq, vec![Bytes::from_static(b"x\ny")]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"status\r\n");
        buf.extend_from_slice(&echo.to_bytes());
        buf.extend_from_slice(b"workers\nvers");
        let frames = decode_all(&mut buf).expect("decodes");
        assert!(matches!(&frames[0], Frame::Line(l) if l == "status"));
        assert!(matches!(&frames[1], Frame::Packet(p) if *p == echo));
        assert!(matches!(&frames[2], Frame::Line(l) if l == "workers"));
        assert_eq!(frames.len(), 3);
        assert_eq!(&buf[..], b"vers", "a partial line waits");
    }

    #[test]
    fn an_overlong_line_or_a_bad_packet_is_an_error() {
        let mut buf = BytesMut::from(&[b'a'; MAX_LINE][..]);
        assert!(matches!(decode_all(&mut buf), Err(FrameError::LineTooLong)));
        let mut buf = BytesMut::from(&b"\0REX\0\0\0\x10\0\0\0\0"[..]);
        assert!(matches!(
            decode_all(&mut buf),
            Err(FrameError::Protocol(ProtocolError::BadMagic(_)))
        ));
    }
}
