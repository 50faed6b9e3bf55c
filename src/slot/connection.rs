//! One job-server connection of a slot: register, then grab / sleep / wake.
//!
//! A slot runs one job at a time however many job servers it talks to. Each
//! connection task must hold the slot's single [`Gate`] permit to send
//! GRAB_JOB, and keeps it until the job it got has been answered, so two
//! servers can never hand the slot two jobs at once. Between jobs a
//! connection that got NO_JOB sends PRE_SLEEP and waits for NOOP: no polling.
//!
//! A server that is down, refuses us, goes away or stops answering is
//! retried with capped, jittered exponential back-off; only the first failure
//! of a streak is logged at WARN, so a dead server does not flood the journal.
//!
//! A server that hangs (SIGSTOPped, overloaded to a standstill) or a
//! connection that goes silent without closing (a partition, a NAT that
//! forgot the flow) must not stall the slot: the permit is only ever taken
//! by a connection whose server has just proven it answers (ECHO after
//! registering), every reply the slot waits for has a deadline
//! ([`REPLY_TIMEOUT`]), and a sleeping connection checks its server with an
//! ECHO every [`KEEPALIVE_EVERY`]. A silent server is so noticed within
//! `KEEPALIVE_EVERY + REPLY_TIMEOUT` when idle, `REPLY_TIMEOUT` when a grab
//! is outstanding; its connection is dropped (gearmand re-queues a job it
//! had assigned to it) and the other servers keep the slot busy meanwhile.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use super::wire::{Expect, Wire};

use crate::gearman::codec::{PacketCodec, ProtocolError};
use crate::gearman::packet::{Packet, PacketType};
use crate::slot::handler::{Job, JobEvent, Outcome};

/// The slot's one job permit, shared by its connections. Closing it (drain,
/// workleft reached) makes every connection that is not mid-job return.
pub type Gate = Arc<Semaphore>;

/// Runs one job through the handler; given by the runner so that this module
/// knows nothing of handler processes. Generic, not `dyn`: a boxed future
/// per job was a heap allocation large enough to make glibc consolidate its
/// free lists on every job.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job`, sending progress to `events`; returns how it ended.
    fn run(
        &self,
        job: Job,
        events: mpsc::Sender<JobEvent>,
    ) -> impl std::future::Future<Output = Outcome> + Send;

    /// The connection found no job and goes to sleep.
    fn idle(&self) {}

    /// The connection to `server` is up (`None`) or failed (why). Called
    /// on every attempt; the runner reports changes only.
    fn link(&self, _server: &str, _error: Option<&str>) {}

    /// Whether the connection may ask for the next job while the one about
    /// to run is in hand (`prefetch`): not when that job is the slot's last.
    fn may_prefetch(&self) -> bool {
        false
    }

    /// The manager paused the slot: a permit got now goes back to the
    /// pause, which is queued for it.
    fn paused(&self) -> bool {
        false
    }
}

/// What a connection needs to know.
pub struct ConnectionSpec {
    pub server: String,
    pub client_id: String,
    pub prefix: String,
    pub functions: Vec<String>,
    pub max_packet: u32,
    /// Grab the next job while one runs (the worker's `prefetch`; only for
    /// a slot with one job server).
    pub prefetch: bool,
}

/// Back-off bounds for reconnecting to a job server.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that stays up this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long to wait for the TCP connect itself.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply the slot waits for may take (ECHO_RES, the answer to a
/// grab). gearmand answers both from memory at once; a server that takes
/// this long is treated as gone. Errs long: a false alarm only costs a
/// reconnect, while the job a hung grab holds up waits at most this long.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A sleeping connection that heard nothing for this long asks its server
/// for an ECHO: how a connection that went silent is found.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

/// A job-server connection: the socket with its read buffer, and the
/// packets queued to go out in one write.
struct Conn {
    wire: Wire<std::net::TcpStream>,
    codec: PacketCodec,
    out: BytesMut,
}

impl Conn {
    fn feed(&mut self, packet: Packet) -> Result<(), String> {
        self.codec
            .encode(packet, &mut self.out)
            .map_err(|e| e.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        let out = self.out.split();
        self.wire.write_all(&out).await.map_err(|e| e.to_string())
    }

    async fn send(&mut self, packet: Packet) -> Result<(), String> {
        self.feed(packet)?;
        self.flush().await
    }

    /// The next packet if it is already here (buffered, or one
    /// non-blocking read away), without waiting.
    fn try_packet(&mut self) -> Result<Option<Packet>, String> {
        self.wire
            .try_next(&mut self.codec)
            .map(packet_or_end)
            .transpose()
    }

    /// Reads the next packet; EOF and protocol errors end the session.
    /// `expect`: whether an answer is due at once (see [`Expect`]).
    async fn next_packet(&mut self, expect: Expect) -> Result<Packet, String> {
        packet_or_end(self.wire.next(&mut self.codec, expect).await)
    }
}

/// A packet, or why the session ends (EOF, I/O or protocol error).
fn packet_or_end(next: Option<Result<Packet, ProtocolError>>) -> Result<Packet, String> {
    match next {
        Some(Ok(p)) => Ok(p),
        Some(Err(ProtocolError::Io(e))) => Err(io_words(&e)),
        Some(Err(e)) => Err(format!("protocol error: {e}")),
        None => Err("closed by the job server".into()),
    }
}

/// Why a session with the server ended.
enum SessionEnd {
    /// The gate closed: the slot is draining.
    Closed,
    /// The connection broke; reconnect.
    Broken(String),
}

/// Serves one job server until the gate closes. `first_attempt` is signalled
/// once, after the first connect attempt succeeded or failed, so the runner can
/// report ready without waiting for a server that is down.
pub async fn serve<R: JobRunner>(
    spec: ConnectionSpec,
    gate: Gate,
    drain: CancellationToken,
    runner: Arc<R>,
    first_attempt: mpsc::Sender<()>,
) {
    let mut first_attempt = Some(first_attempt);
    let mut backoff = BACKOFF_MIN;
    // Attempts in a row that gave no stable session (a failed connect, or a
    // session lost within STABLE_AFTER): only the first is logged at WARN.
    let mut failures: u32 = 0;
    // The last failure was a failed connect (not a lost session).
    let mut unreachable = false;
    loop {
        if gate.is_closed() {
            return;
        }
        let attempt = tokio::select! {
            _ = drain.cancelled() => return,
            r = connect(&spec) => r,
        };
        if let Some(tx) = first_attempt.take() {
            let _ = tx.send(()).await;
            // Let the runner say `ready` before this task takes a job (it
            // may then keep the thread while jobs stream).
            tokio::task::yield_now().await;
        }
        match &attempt {
            Ok(_) => runner.link(&spec.server, None),
            Err(why) => runner.link(&spec.server, Some(why)),
        }
        match attempt {
            Ok(conn) => {
                if std::mem::take(&mut unreachable) {
                    tracing::info!(server = %spec.server, "job server reachable again after {failures} failed attempts");
                } else {
                    tracing::debug!(server = %spec.server, "connected");
                }
                let started = Instant::now();
                match session(&spec, conn, &gate, &drain, runner.as_ref()).await {
                    SessionEnd::Closed => return,
                    SessionEnd::Broken(why) => {
                        runner.link(&spec.server, Some(&why));
                        if started.elapsed() >= STABLE_AFTER {
                            // It worked for a while: a new incident.
                            backoff = BACKOFF_MIN;
                            failures = 0;
                        }
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(server = %spec.server, "job server connection lost: {why}; reconnecting");
                        } else {
                            tracing::debug!(server = %spec.server, failures, "job server connection lost again: {why}");
                        }
                    }
                }
            }
            Err(why) => {
                failures += 1;
                unreachable = true;
                if failures == 1 {
                    tracing::warn!(server = %spec.server, "cannot reach job server: {why}; retrying with back-off");
                } else {
                    tracing::debug!(server = %spec.server, failures, "still cannot reach job server: {why}");
                }
            }
        }
        let jittered = jitter(backoff);
        tokio::select! {
            _ = drain.cancelled() => return,
            _ = tokio::time::sleep(jittered) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(spec: &ConnectionSpec) -> Result<Conn, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&spec.server))
        .await
        .map_err(|_| {
            format!(
                "timed out: no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| io_words(&e))?;
    let _ = stream.set_nodelay(true);
    let stream = stream.into_std().map_err(|e| e.to_string())?;
    let mut conn = Conn {
        wire: Wire::socket(stream).map_err(|e| e.to_string())?,
        codec: PacketCodec::new(spec.max_packet),
        out: BytesMut::new(),
    };
    let mut hello = vec![Packet::req(
        PacketType::SetClientId,
        vec![Bytes::from(spec.client_id.clone())],
    )];
    for f in &spec.functions {
        hello.push(Packet::req(
            PacketType::CanDo,
            vec![Bytes::from(format!("{}{}", spec.prefix, f))],
        ));
    }
    // The ECHO proves the server reads what it is sent: only then may this
    // connection take the slot's permit (a server that accepts and never
    // answers would otherwise hold the slot in an endless grab). gearmand
    // handles packets of a connection in order, so its ECHO_RES also says
    // the registrations are in.
    hello.push(Packet::req(
        PacketType::EchoReq,
        vec![Bytes::from_static(b"slotman")],
    ));
    for p in hello {
        conn.feed(p)?;
    }
    conn.flush().await?;
    let echoed = async {
        loop {
            let p = conn.next_packet(Expect::Whenever).await?;
            match p.kind {
                PacketType::EchoRes => return Ok(()),
                PacketType::Error => return Err(server_error(&p)),
                // A NOOP for a job already waiting: the session starts awake.
                _ => {}
            }
        }
    };
    match tokio::time::timeout(REPLY_TIMEOUT, echoed).await {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(no_reply("ECHO_REQ")),
    }
}

/// `backoff` ± 20 %, so that slots that lost a server together do not
/// retry together.
pub(super) fn jitter(backoff: Duration) -> Duration {
    backoff.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// An I/O error as the system says it, without Rust's " (os error N)".
pub(super) fn io_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Why a session ends when the server did not answer `request` in time.
pub(super) fn no_reply(request: &str) -> String {
    format!(
        "timed out: no reply to {request} within {}s",
        REPLY_TIMEOUT.as_secs()
    )
}

fn server_error(p: &Packet) -> String {
    format!(
        "job server error {}: {}",
        String::from_utf8_lossy(p.arg(0)),
        String::from_utf8_lossy(p.arg(1))
    )
}

async fn session<R: JobRunner>(
    spec: &ConnectionSpec,
    mut conn: Conn,
    gate: &Gate,
    drain: &CancellationToken,
    runner: &R,
) -> SessionEnd {
    // One progress channel for the session's jobs, not one per job.
    let mut events = mpsc::channel(16);
    // A fresh connection may have jobs waiting: start awake.
    let mut awake = true;
    // The permit, when GRAB_JOB_UNIQ already went out with the last answer.
    let mut grabbed: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // A job assigned in answer to a prefetching grab: ours already, so it
    // runs next even if the gate closed meanwhile (drain, workleft).
    let mut prefetched: Option<Packet> = None;
    // Whether jobs are queued beyond the one in hand, as far as the last
    // grabs tell: a prefetching grab that finds nothing costs gearmand a
    // NO_JOB / PRE_SLEEP / NOOP round, so after one the slot stops
    // prefetching until a grab sent with an answer finds a job waiting.
    let mut backlog = true;
    // When the server was last heard from, and when an ECHO went out that
    // is not answered yet (sleeping connections only).
    let mut heard = Instant::now();
    let mut echo_sent: Option<Instant> = None;
    loop {
        let (assign, permit) = match prefetched.take() {
            Some(assign) => (assign, gate.clone().try_acquire_owned().ok()),
            None => {
                if !awake {
                    // Asleep: wait for NOOP, and check now and then that the
                    // server is still there.
                    let check_at = match echo_sent {
                        Some(at) => at + REPLY_TIMEOUT,
                        None => heard + KEEPALIVE_EVERY,
                    };
                    tokio::select! {
                        _ = drain.cancelled() => return SessionEnd::Closed,
                        p = conn.next_packet(Expect::Whenever) => match p {
                            Ok(p) => {
                                heard = Instant::now();
                                match p.kind {
                                    PacketType::Noop => awake = true,
                                    PacketType::EchoRes => echo_sent = None,
                                    _ => tracing::debug!(server = %spec.server, "ignoring {} while asleep", p.kind.name()),
                                }
                            }
                            Err(why) => return SessionEnd::Broken(why),
                        },
                        _ = tokio::time::sleep_until(check_at) => {
                            if echo_sent.is_some() {
                                return SessionEnd::Broken(no_reply("ECHO_REQ"));
                            }
                            let echo = Packet::req(PacketType::EchoReq, vec![Bytes::from_static(b"slotman")]);
                            if let Err(e) = conn.send(echo).await {
                                return SessionEnd::Broken(e);
                            }
                            echo_sent = Some(Instant::now());
                        }
                    }
                    continue;
                }
                echo_sent = None;
                let with_answer = grabbed.is_some();
                let permit = match grabbed.take() {
                    Some(permit) => permit,
                    None => {
                        // Awake: wait for the slot's permit while still watching the socket.
                        let permit = loop {
                            tokio::select! {
                                permit = gate.clone().acquire_owned() => match permit {
                                    // Queued before the pause was: let it
                                    // have the permit.
                                    Ok(p) if runner.paused() => {
                                        drop(p);
                                        tokio::task::yield_now().await;
                                    }
                                    Ok(p) => break p,
                                    Err(_) => return SessionEnd::Closed,
                                },
                                p = conn.next_packet(Expect::Whenever) => match p {
                                    Ok(_) => {} // NOOPs while awake mean nothing new.
                                    Err(why) => return SessionEnd::Broken(why),
                                },
                            }
                        };
                        if let Err(e) = conn
                            .send(Packet::req(PacketType::GrabJobUniq, vec![]))
                            .await
                        {
                            return SessionEnd::Broken(e);
                        }
                        permit
                    }
                };
                // gearmand answers a grab at once: a wait that may block.
                let reply = match await_grab(spec, &mut conn, drain).await {
                    Ok(reply) => reply,
                    Err(end) => return end,
                };
                heard = Instant::now();
                match reply {
                    Some(assign) => {
                        // A job found right after an answer was waiting.
                        backlog |= with_answer;
                        (assign, Some(permit))
                    }
                    None => {
                        backlog = false;
                        runner.idle();
                        drop(permit);
                        if let Err(e) = conn.send(Packet::req(PacketType::PreSleep, vec![])).await {
                            return SessionEnd::Broken(e);
                        }
                        awake = false;
                        continue;
                    }
                }
            }
        };
        // Prefetch: ask for the next job before this one runs, in the same
        // write as the answer to the one before (held back for it), so that
        // gearmand's reply is usually waiting when this job ends.
        let prefetching = spec.prefetch && backlog && runner.may_prefetch();
        if prefetching {
            if let Err(e) = conn.feed(Packet::req(PacketType::GrabJobUniq, vec![])) {
                return SessionEnd::Broken(e);
            }
        }
        if let Err(e) = conn.flush().await {
            return SessionEnd::Broken(e);
        }
        // The answer is queued, not yet sent.
        let result = run_job(spec, &mut conn, assign, runner, &mut events).await;
        // The permit is released only after the runner has had the chance to
        // close the gate on workleft.
        drop(permit);
        if let Err(why) = result {
            return SessionEnd::Broken(why);
        }
        if prefetching {
            // The reply to the prefetching grab, if it is here already.
            let mut reply = None;
            while reply.is_none() {
                match conn.try_packet() {
                    Ok(Some(p)) => reply = as_grab_reply(spec, p),
                    Ok(None) => break,
                    Err(e) => reply = Some(Err(e)),
                }
            }
            let reply = match reply {
                Some(reply) => reply,
                None => {
                    // Not here yet: the answer must not wait for it.
                    if let Err(e) = conn.flush().await {
                        return SessionEnd::Broken(e);
                    }
                    match await_grab(spec, &mut conn, drain).await {
                        Ok(reply) => Ok(reply),
                        // The answer went out above; gearmand re-queues
                        // what it assigned in reply once the socket closes.
                        Err(end) => return end,
                    }
                }
            };
            heard = Instant::now();
            match reply {
                // Its answer goes out with the next grab.
                Ok(Some(assign)) => prefetched = Some(assign),
                Ok(None) => {
                    backlog = false;
                    runner.idle();
                    if let Err(e) = conn.send(Packet::req(PacketType::PreSleep, vec![])).await {
                        return SessionEnd::Broken(e);
                    }
                    awake = false;
                }
                Err(why) => {
                    // The job's answer first, if the socket still takes it:
                    // unanswered, gearmand would give the job to another worker.
                    let _ = conn.flush().await;
                    return SessionEnd::Broken(why);
                }
            }
            continue;
        }
        // Ask for the next job in the same write as the answer when the permit
        // is free at once (the semaphore is fair: a connection to another job
        // server that is waiting for it gets it first).
        if let Ok(p) = gate.clone().try_acquire_owned() {
            if let Err(e) = conn.feed(Packet::req(PacketType::GrabJobUniq, vec![])) {
                return SessionEnd::Broken(e);
            }
            grabbed = Some(p);
        }
        if let Err(e) = conn.flush().await {
            return SessionEnd::Broken(e);
        }
    }
}

/// [`grab_reply`] within [`REPLY_TIMEOUT`], or how the session ends: a
/// drain does not wait for a server that does not answer.
async fn await_grab(
    spec: &ConnectionSpec,
    conn: &mut Conn,
    drain: &CancellationToken,
) -> Result<Option<Packet>, SessionEnd> {
    tokio::select! {
        _ = drain.cancelled() => Err(SessionEnd::Closed),
        r = tokio::time::timeout(REPLY_TIMEOUT, grab_reply(spec, conn)) => match r {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(why)) => Err(SessionEnd::Broken(why)),
            Err(_) => Err(SessionEnd::Broken(no_reply("GRAB_JOB_UNIQ"))),
        },
    }
}

/// gearmand's reply to a grab: a JOB_ASSIGN* (`Some`) or NO_JOB (`None`).
async fn grab_reply(spec: &ConnectionSpec, conn: &mut Conn) -> Result<Option<Packet>, String> {
    loop {
        let p = conn.next_packet(Expect::Due).await?;
        if let Some(reply) = as_grab_reply(spec, p) {
            return reply;
        }
    }
}

/// What `p` says in reply to a grab; `None` for a packet that is not the
/// reply (NOOP, or something unexpected, which is logged).
fn as_grab_reply(spec: &ConnectionSpec, p: Packet) -> Option<Result<Option<Packet>, String>> {
    match p.kind {
        PacketType::Noop => None,
        PacketType::NoJob => Some(Ok(None)),
        PacketType::JobAssignUniq | PacketType::JobAssign | PacketType::JobAssignAll => {
            Some(Ok(Some(p)))
        }
        PacketType::Error => Some(Err(server_error(&p))),
        other => {
            tracing::debug!(server = %spec.server, "unexpected {} while grabbing", other.name());
            None
        }
    }
}

/// Turns a JOB_ASSIGN* into a [`Job`], runs it, forwards progress, answers.
async fn run_job<R: JobRunner>(
    spec: &ConnectionSpec,
    conn: &mut Conn,
    assign: Packet,
    runner: &R,
    (tx, rx): &mut (mpsc::Sender<JobEvent>, mpsc::Receiver<JobEvent>),
) -> Result<(), String> {
    let handle = Bytes::copy_from_slice(assign.arg(0));
    let gearman_function = String::from_utf8_lossy(assign.arg(1)).into_owned();
    let (unique, payload) = match assign.kind {
        PacketType::JobAssign => (None, Bytes::copy_from_slice(assign.arg(2))),
        PacketType::JobAssignAll => (Some(assign.arg(2)), Bytes::copy_from_slice(assign.arg(4))),
        _ => (Some(assign.arg(2)), Bytes::copy_from_slice(assign.arg(3))),
    };
    let unique = unique.filter(|u| !u.is_empty()).map(Bytes::copy_from_slice);
    let function = match gearman_function
        .strip_prefix(spec.prefix.as_str())
        .filter(|f| spec.functions.iter().any(|known| known == f))
    {
        Some(f) => f.to_string(),
        None => {
            // Not a function this slot registered (a server that mixed up
            // its workers): the handler would not know it.
            tracing::warn!(server = %spec.server, function = %gearman_function, "job for a function this slot did not register: failed");
            return conn.feed(Packet::req(PacketType::WorkFail, vec![handle]));
        }
    };
    let job = Job {
        function,
        gearman_function,
        handle: String::from_utf8_lossy(&handle).into_owned(),
        unique,
        payload,
    };

    let outcome = {
        let run = runner.run(job, tx.clone());
        tokio::pin!(run);
        loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                Some(ev) = rx.recv() => {
                    conn.send(event_packet(&handle, ev)).await?;
                }
            }
        }
    };
    // Progress sent just before the end must still precede the result.
    while let Ok(ev) = rx.try_recv() {
        conn.feed(event_packet(&handle, ev))?;
    }
    let end = match outcome {
        Outcome::Complete(data) => Packet::req(PacketType::WorkComplete, vec![handle, data]),
        Outcome::Exception(data) => Packet::req(PacketType::WorkException, vec![handle, data]),
        Outcome::Fail(_) => Packet::req(PacketType::WorkFail, vec![handle]),
    };
    conn.feed(end)
}

fn event_packet(handle: &Bytes, ev: JobEvent) -> Packet {
    match ev {
        JobEvent::Status(n, d) => Packet::req(
            PacketType::WorkStatus,
            vec![
                handle.clone(),
                Bytes::from(n.to_string()),
                Bytes::from(d.to_string()),
            ],
        ),
        JobEvent::Data(data) => Packet::req(PacketType::WorkData, vec![handle.clone(), data]),
        JobEvent::Warning(data) => Packet::req(PacketType::WorkWarning, vec![handle.clone(), data]),
    }
}
