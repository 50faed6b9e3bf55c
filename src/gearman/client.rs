//! A small Gearman client: one TCP connection, one request at a time. Used by
//! `slotman demo`, the tests and benchmarks to submit jobs; not by the slot
//! runner (which is a worker).
//!
//! The job server answers requests in order, so the client keeps a queue of
//! the replies it is owed (JOB_CREATED, ECHO_RES, OPTION_RES, or ERROR in
//! place of any of them). That keeps the connection usable after a call was
//! cancelled (say by a timeout) half-way: the late reply to the abandoned
//! request is recognised and dropped instead of being taken for the next
//! one's, and WORK_* packets of abandoned jobs are dropped by handle.
//!
//! On connect the client asks for OPTION_REQ "exceptions", without which
//! gearmand does not forward WORK_EXCEPTION to clients. It does not wait for
//! the answer: some servers (rustygeard) never send one. An unanswered option
//! is forgotten when a later reply shows the server skipped it. The one
//! ambiguity left: an ERROR from such a server while the option is still owed
//! is taken as the option's answer.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::codec::{PacketCodec, ProtocolError};
use super::packet::{Packet, PacketType};

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// WORK_COMPLETE with the result data.
    Complete(Bytes),
    /// WORK_FAIL.
    Fail,
    /// WORK_EXCEPTION with the exception data.
    Exception(Bytes),
}

/// Everything the job server forwarded about one foreground job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReply {
    pub handle: String,
    pub result: JobResult,
    /// WORK_DATA chunks, in order.
    pub data: Vec<Bytes>,
    /// WORK_WARNING chunks, in order.
    pub warnings: Vec<Bytes>,
    /// WORK_STATUS (numerator, denominator) pairs, in order.
    pub statuses: Vec<(u64, u64)>,
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to job server {addr}: {error}")]
    Connect {
        addr: String,
        // The cause is part of the message, not a `source`: an error chain
        // printed with `{:#}` would say it twice.
        error: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The job server answered with an ERROR packet.
    #[error("job server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("job server closed the connection")]
    Closed,
    /// A packet a client never receives (NOOP, JOB_ASSIGN, ...): the peer is
    /// confused or not a job server.
    #[error("unexpected {0} packet from the job server")]
    Unexpected(PacketType),
}

/// A reply the server owes for a request already sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    JobCreated,
    Echo,
    /// Optional: a server may never answer an OPTION_REQ.
    Option,
}

/// One Gearman client connection.
pub struct Client {
    conn: Framed<TcpStream, PacketCodec>,
    /// Replies owed, oldest first, each with the sequence number of its
    /// request so a call can tell its own reply from an abandoned call's.
    owed: VecDeque<(u64, Owed)>,
    next_seq: u64,
}

/// What one incoming packet turned out to be.
enum Incoming {
    /// The reply (or ERROR) to request `seq`.
    Reply(u64, Result<Packet, ClientError>),
    /// WORK_* about some job.
    Work(Packet),
    /// Nothing anyone waits for (an option's answer, a stale reply).
    Nothing,
}

impl Client {
    /// Connects to `addr` ("host:port") and asks for exceptions to be
    /// forwarded (without waiting for the answer).
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|error| ClientError::Connect {
                addr: addr.to_string(),
                error,
            })?;
        // Requests are small and we wait for each answer: don't let Nagle
        // hold them back.
        stream.set_nodelay(true).ok();
        let mut client = Client {
            conn: Framed::new(stream, PacketCodec::default()),
            owed: VecDeque::new(),
            next_seq: 0,
        };
        let option = Packet::req(
            PacketType::OptionReq,
            vec![Bytes::from_static(b"exceptions")],
        );
        client.send_owing(option, Owed::Option).await?;
        Ok(client)
    }

    /// Submits a foreground job (SUBMIT_JOB) and waits until it completes,
    /// fails or throws, collecting the status, data and warnings the worker
    /// sent on the way. `unique` may be empty (no coalescing key) and is
    /// sent as the exact bytes given.
    pub async fn submit(
        &mut self,
        function: &str,
        unique: impl AsRef<[u8]>,
        payload: impl Into<Bytes>,
    ) -> Result<JobReply, ClientError> {
        let handle = self
            .create(
                PacketType::SubmitJob,
                function,
                unique.as_ref(),
                payload.into(),
            )
            .await?;
        let mut reply = JobReply {
            handle,
            result: JobResult::Fail,
            data: Vec::new(),
            warnings: Vec::new(),
            statuses: Vec::new(),
        };
        loop {
            let work = match self.next_incoming().await? {
                Incoming::Work(p) => p,
                // Our own request is answered; any other reply (even an
                // ERROR) belongs to an abandoned call or an option.
                Incoming::Reply(..) | Incoming::Nothing => continue,
            };
            if work.arg(0) != reply.handle.as_bytes() {
                tracing::debug!(kind = %work.kind, "dropping packet of an abandoned job");
                continue;
            }
            match work.kind {
                PacketType::WorkComplete => {
                    reply.result = JobResult::Complete(work.arg_bytes(1));
                    return Ok(reply);
                }
                PacketType::WorkFail => {
                    reply.result = JobResult::Fail;
                    return Ok(reply);
                }
                PacketType::WorkException => {
                    reply.result = JobResult::Exception(work.arg_bytes(1));
                    return Ok(reply);
                }
                PacketType::WorkData => reply.data.push(work.arg_bytes(1)),
                PacketType::WorkWarning => reply.warnings.push(work.arg_bytes(1)),
                PacketType::WorkStatus => match (number(work.arg(1)), number(work.arg(2))) {
                    (Some(n), Some(d)) => reply.statuses.push((n, d)),
                    // The server forwards whatever the worker wrote; a bad
                    // progress report is no reason to lose the job's result.
                    _ => tracing::warn!(
                        handle = %reply.handle,
                        "ignoring WORK_STATUS with non-numeric progress"
                    ),
                },
                other => return Err(ClientError::Unexpected(other)),
            }
        }
    }

    /// Submits a background job (SUBMIT_JOB_BG) and returns its handle once
    /// the job server has queued it.
    pub async fn submit_background(
        &mut self,
        function: &str,
        unique: impl AsRef<[u8]>,
        payload: impl Into<Bytes>,
    ) -> Result<String, ClientError> {
        self.create(
            PacketType::SubmitJobBg,
            function,
            unique.as_ref(),
            payload.into(),
        )
        .await
    }

    /// ECHO_REQ round trip: the job server sends `data` back.
    pub async fn echo(&mut self, data: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let packet = Packet::req(PacketType::EchoReq, vec![data.into()]);
        let reply = self.request(packet, Owed::Echo).await?;
        Ok(reply.arg_bytes(0))
    }

    /// Sends a SUBMIT_JOB* and returns the handle from JOB_CREATED.
    async fn create(
        &mut self,
        kind: PacketType,
        function: &str,
        unique: &[u8],
        payload: Bytes,
    ) -> Result<String, ClientError> {
        let packet = Packet::req(
            kind,
            vec![
                Bytes::copy_from_slice(function.as_bytes()),
                Bytes::copy_from_slice(unique),
                payload,
            ],
        );
        let created = self.request(packet, Owed::JobCreated).await?;
        Ok(created.arg_str(0)?.to_string())
    }

    /// Sends `packet` and waits for its reply.
    async fn request(&mut self, packet: Packet, owed: Owed) -> Result<Packet, ClientError> {
        let seq = self.send_owing(packet, owed).await?;
        loop {
            match self.next_incoming().await? {
                Incoming::Reply(s, result) if s == seq => return result,
                // Packets of earlier, abandoned jobs or requests.
                Incoming::Reply(..) | Incoming::Work(_) | Incoming::Nothing => {}
            }
        }
    }

    /// Queues `packet`, records the reply it is owed, and flushes. The record
    /// is made right after the packet enters the write buffer, with no await
    /// in between, so a cancelled call cannot leave the two out of step.
    async fn send_owing(&mut self, packet: Packet, owed: Owed) -> Result<u64, ClientError> {
        self.conn.feed(packet).await?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.owed.push_back((seq, owed));
        self.conn.flush().await?;
        Ok(seq)
    }

    /// Reads one packet and files it against what is owed.
    async fn next_incoming(&mut self) -> Result<Incoming, ClientError> {
        let packet = match self.conn.next().await {
            Some(p) => p?,
            None => return Err(ClientError::Closed),
        };
        let kind = packet.kind;
        let owed = match kind {
            PacketType::WorkComplete
            | PacketType::WorkFail
            | PacketType::WorkException
            | PacketType::WorkData
            | PacketType::WorkWarning
            | PacketType::WorkStatus => return Ok(Incoming::Work(packet)),
            PacketType::OptionRes => {
                if let Some(at) = self.owed.iter().position(|&(_, o)| o == Owed::Option) {
                    self.owed.remove(at);
                }
                return Ok(Incoming::Nothing);
            }
            PacketType::Error => {
                let error = ClientError::Server {
                    code: String::from_utf8_lossy(packet.arg(0)).into_owned(),
                    message: String::from_utf8_lossy(packet.arg(1)).into_owned(),
                };
                return Ok(match self.owed.pop_front() {
                    Some((_, Owed::Option)) => {
                        tracing::debug!(%error, "job server refused an option");
                        Incoming::Nothing
                    }
                    Some((seq, _)) => Incoming::Reply(seq, Err(error)),
                    // Unsolicited: fail whatever the caller is doing.
                    None => return Err(error),
                });
            }
            PacketType::JobCreated => Owed::JobCreated,
            PacketType::EchoRes => Owed::Echo,
            other => return Err(ClientError::Unexpected(other)),
        };
        // A server that skipped our options answers the next request instead.
        while let Some(&(_, Owed::Option)) = self.owed.front() {
            self.owed.pop_front();
        }
        match self.owed.pop_front() {
            Some((seq, o)) if o == owed => Ok(Incoming::Reply(seq, Ok(packet))),
            _ => Err(ClientError::Unexpected(kind)),
        }
    }
}

/// A decimal count from a WORK_STATUS argument.
fn number(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A scripted job server: reads requests with the real codec and lets the
    /// test answer them.
    async fn fake_server() -> (
        String,
        tokio::task::JoinHandle<Framed<TcpStream, PacketCodec>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            Framed::new(s, PacketCodec::default())
        });
        (addr, accept)
    }

    fn res(kind: PacketType, args: &[&'static [u8]]) -> Packet {
        Packet::res(kind, args.iter().map(|a| Bytes::from_static(a)).collect())
    }

    async fn expect(server: &mut Framed<TcpStream, PacketCodec>, kind: PacketType) -> Packet {
        let p = server.next().await.unwrap().unwrap();
        assert_eq!(p.kind, kind, "{p:?}");
        p
    }

    #[tokio::test]
    async fn server_that_never_answers_options() {
        let (addr, accept) = fake_server().await;
        let mut client = Client::connect(&addr).await.unwrap();
        let mut server = accept.await.unwrap();
        let opt = expect(&mut server, PacketType::OptionReq).await;
        assert_eq!(opt.arg(0), b"exceptions");

        let echo = tokio::spawn(async move {
            let r = client.echo(Bytes::from_static(b"hi\0there")).await;
            (client, r)
        });
        let req = expect(&mut server, PacketType::EchoReq).await;
        server
            .send(Packet::res(PacketType::EchoRes, req.args.clone()))
            .await
            .unwrap();
        let (mut client, r) = echo.await.unwrap();
        assert_eq!(&r.unwrap()[..], b"hi\0there");

        // A foreground job with progress, data, warnings and a stray packet
        // of another job.
        let job = tokio::spawn(async move { client.submit("rev", "u1", "abc").await });
        let sub = expect(&mut server, PacketType::SubmitJob).await;
        assert_eq!(
            sub.args,
            vec![Bytes::from("rev"), Bytes::from("u1"), Bytes::from("abc")]
        );
        for p in [
            res(PacketType::JobCreated, &[b"H:1"]),
            res(PacketType::WorkStatus, &[b"H:1", b"1", b"2"]),
            res(PacketType::WorkData, &[b"H:0", b"not ours"]),
            res(PacketType::WorkStatus, &[b"H:1", b"x", b"2"]),
            res(PacketType::WorkData, &[b"H:1", b"d1"]),
            res(PacketType::WorkWarning, &[b"H:1", b"w1"]),
            res(PacketType::WorkComplete, &[b"H:1", b"cba"]),
        ] {
            server.feed(p).await.unwrap();
        }
        server.flush().await.unwrap();
        let reply = job.await.unwrap().unwrap();
        assert_eq!(
            reply,
            JobReply {
                handle: "H:1".into(),
                result: JobResult::Complete(Bytes::from("cba")),
                data: vec![Bytes::from("d1")],
                warnings: vec![Bytes::from("w1")],
                statuses: vec![(1, 2)],
            }
        );
    }

    #[tokio::test]
    async fn abandoned_request_does_not_confuse_the_next() {
        let (addr, accept) = fake_server().await;
        let mut client = Client::connect(&addr).await.unwrap();
        let mut server = accept.await.unwrap();
        expect(&mut server, PacketType::OptionReq).await;
        server
            .send(res(PacketType::OptionRes, &[b"exceptions"]))
            .await
            .unwrap();

        // Abandon a submission before its JOB_CREATED arrives.
        let abandoned = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            client.submit_background("f", "", "x"),
        )
        .await;
        assert!(abandoned.is_err());
        expect(&mut server, PacketType::SubmitJobBg).await;

        let next = tokio::spawn(async move {
            let r = client.submit_background("f", "", "y").await;
            (client, r)
        });
        expect(&mut server, PacketType::SubmitJobBg).await;
        server
            .send(res(PacketType::JobCreated, &[b"H:old"]))
            .await
            .unwrap();
        server
            .send(res(PacketType::JobCreated, &[b"H:new"]))
            .await
            .unwrap();
        let (mut client, r) = next.await.unwrap();
        assert_eq!(r.unwrap(), "H:new");

        // ERROR answers the request it is owed to.
        let failing = tokio::spawn(async move { client.submit("f", "", "z").await });
        expect(&mut server, PacketType::SubmitJob).await;
        server
            .send(res(PacketType::Error, &[b"ERR_CODE", b"no way"]))
            .await
            .unwrap();
        match failing.await.unwrap() {
            Err(ClientError::Server { code, message }) => {
                assert_eq!((code.as_str(), message.as_str()), ("ERR_CODE", "no way"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn closed_and_confused_servers() {
        let (addr, accept) = fake_server().await;
        let mut client = Client::connect(&addr).await.unwrap();
        let mut server = accept.await.unwrap();
        expect(&mut server, PacketType::OptionReq).await;
        server.send(res(PacketType::Noop, &[])).await.unwrap();
        assert!(matches!(
            client.echo("x").await,
            Err(ClientError::Unexpected(PacketType::Noop))
        ));
        drop(server);
        assert!(matches!(
            client.echo("x").await,
            Err(ClientError::Closed) | Err(ClientError::Protocol(_))
        ));
    }
}
