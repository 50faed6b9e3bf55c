//! One relayed connection's rules, without I/O: what becomes of each packet
//! from the worker and from the job server, and what is due when.
//!
//! Nearly everything passes unchanged; the relay only watches. It acts on:
//! - GRAB_JOB / GRAB_JOB_UNIQ / GRAB_JOB_ALL from the worker: passed on only
//!   while the slot takes jobs and holds none on another connection;
//!   otherwise answered NO_JOB by the relay itself, and NOOPs from the job
//!   server are held back until the slot takes jobs again.
//! - JOB_ASSIGN* from the job server and WORK_COMPLETE / FAIL / EXCEPTION
//!   from the worker: the slot's job starts and ends (reports, `workleft`,
//!   `timeout`, the journal's job fields).
//! - SET_CLIENT_ID from the worker: replaced by the slot's identity.
//! - ECHO_RES to the relay's own keepalive ECHO_REQ: kept from the worker.
//!
//! A packet that does not parse, or travels the wrong way (a `\0RES` from
//! the worker), ends the connection.

use bytes::Bytes;
use tokio::time::Instant;

use super::shared::{ConnId, Shared};
use crate::gearman::packet::{split_body, Args, Header, Magic, Packet, PacketType};
use crate::slot::connection::{no_reply, KEEPALIVE_EVERY, REPLY_TIMEOUT};
use crate::slot::report::{JobResult, SHORT_JOB};

/// The relay's own ECHO_REQ payload, told apart from the worker's echoes.
pub const RELAY_ECHO: &[u8] = b"slotman-relay";

/// What becomes of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on unchanged.
    Pass,
    /// Kept back (the relay's ECHO_RES, a NOOP while the slot takes no job).
    Drop,
    /// Passed on as this packet instead (SET_CLIENT_ID).
    Replace(Packet),
    /// Not passed on; this goes back to the sender (NO_JOB to a grab).
    Answer(Packet),
}

/// Why a connection ends, and what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub why: String,
    /// The job server still listens: the worker's job in hand is failed
    /// there (WORK_FAIL). Otherwise the job server re-queues it when the
    /// connection closes, as it would for the worker's own connection.
    pub fail_job: bool,
    /// The worker must be killed and replaced (a job past `timeout`).
    pub kill: bool,
    /// The job server's side failed (closed, silent, malformed).
    pub by_server: bool,
}

impl Ended {
    /// The worker went away (closed, died, unreadable): its job in hand goes
    /// back to the job server's queue, as it would without the relay, so a
    /// background job is not lost with a killed worker.
    pub fn worker(why: impl Into<String>) -> Ended {
        Ended {
            why: why.into(),
            fail_job: false,
            kill: false,
            by_server: false,
        }
    }

    /// The worker spoke what is not Gearman: its job in hand is failed, not
    /// handed to the next worker of the same code.
    pub fn worker_malformed(why: impl Into<String>) -> Ended {
        Ended {
            fail_job: true,
            ..Ended::worker(why)
        }
    }

    pub fn server(why: impl Into<String>) -> Ended {
        Ended {
            why: why.into(),
            fail_job: false,
            kill: false,
            by_server: true,
        }
    }
}

/// The job in hand; its buffers are kept from job to job.
#[derive(Debug, Default)]
struct InHand {
    active: bool,
    handle: Vec<u8>,
    function: String,
    started: Option<Instant>,
    /// Its start was reported to the manager.
    reported: bool,
}

/// The job a connection held when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostJob {
    pub function: String,
    pub handle: String,
    /// The WORK_FAIL to send to the job server, if it still listens.
    pub fail: Option<Packet>,
}

/// One relayed connection's state.
#[derive(Debug)]
pub struct Session {
    pub id: ConnId,
    job: InHand,
    /// Grabs passed on and not answered yet (a worker may pipeline them),
    /// and since when the oldest has waited.
    grabs_out: u32,
    grab_since: Option<Instant>,
    /// The relay's keepalive ECHO_REQ, when one is unanswered.
    echo_since: Option<Instant>,
    /// When the job server was last heard from.
    heard: Instant,
    /// A NOOP was held back: the worker gets it when the slot takes jobs again.
    pub noop_owed: bool,
}

impl Session {
    pub fn new(id: ConnId, now: Instant) -> Session {
        Session {
            id,
            job: InHand::default(),
            grabs_out: 0,
            grab_since: None,
            echo_since: None,
            heard: now,
            noop_owed: false,
        }
    }

    /// A packet from the worker (`body` without the header).
    pub fn on_worker(
        &mut self,
        shared: &Shared,
        header: &Header,
        body: &[u8],
        now: Instant,
    ) -> Result<Verdict, Ended> {
        let args = parse(header, body, Magic::Req, |why| {
            Ended::worker_malformed(format!("malformed packet from the worker: {why}"))
        })?;
        Ok(match header.kind {
            PacketType::GrabJob | PacketType::GrabJobUniq | PacketType::GrabJobAll => {
                // A grab behind one still out keeps its place in the order
                // of replies; otherwise it needs the slot's one job.
                let pass = self.grabs_out > 0 || (!self.job.active && shared.grab(self.id));
                if pass {
                    self.grabs_out += 1;
                    self.grab_since.get_or_insert(now);
                    Verdict::Pass
                } else {
                    Verdict::Answer(Packet::res(PacketType::NoJob, vec![]))
                }
            }
            PacketType::WorkComplete | PacketType::WorkFail | PacketType::WorkException => {
                if self.job.active && self.job.handle == args.get(0) {
                    let result = match header.kind {
                        PacketType::WorkComplete => JobResult::Complete,
                        PacketType::WorkFail => JobResult::Fail,
                        _ => JobResult::Exception,
                    };
                    self.end_job(shared, result, now);
                }
                Verdict::Pass
            }
            PacketType::SetClientId => Verdict::Replace(Packet::req(
                PacketType::SetClientId,
                vec![shared.client_id.clone()],
            )),
            _ => Verdict::Pass,
        })
    }

    /// A packet from the job server (`body` without the header).
    pub fn on_server(
        &mut self,
        shared: &Shared,
        header: &Header,
        body: &[u8],
        now: Instant,
    ) -> Result<Verdict, Ended> {
        let args = parse(header, body, Magic::Res, |why| {
            Ended::server(format!("malformed packet from the job server: {why}"))
        })?;
        self.heard = now;
        Ok(match header.kind {
            PacketType::Noop => {
                if shared.open(self.id) {
                    Verdict::Pass
                } else {
                    self.noop_owed = true;
                    Verdict::Drop
                }
            }
            PacketType::NoJob | PacketType::Error => {
                if self.answered(now) && !self.job.active && self.grabs_out == 0 {
                    shared.release(self.id, header.kind == PacketType::NoJob);
                }
                Verdict::Pass
            }
            PacketType::JobAssign | PacketType::JobAssignUniq | PacketType::JobAssignAll => {
                self.answered(now);
                let handle = args.get(0);
                let job = &mut self.job;
                job.active = true;
                job.handle.clear();
                job.handle.extend_from_slice(handle);
                job.function.clear();
                job.function.push_str(&String::from_utf8_lossy(args.get(1)));
                job.started = Some(now);
                job.reported = shared.started(
                    self.id,
                    &job.function,
                    &String::from_utf8_lossy(handle),
                    now,
                );
                Verdict::Pass
            }
            PacketType::EchoRes if self.echo_since.is_some() && args.get(0) == RELAY_ECHO => {
                self.echo_since = None;
                Verdict::Drop
            }
            _ => Verdict::Pass,
        })
    }

    /// A reply to the oldest grab came; whether one was out.
    fn answered(&mut self, now: Instant) -> bool {
        if self.grabs_out == 0 {
            return false;
        }
        self.grabs_out -= 1;
        self.grab_since = (self.grabs_out > 0).then_some(now);
        true
    }

    /// When [`Session::tick`] has something to do next.
    pub fn due(&self, shared: &Shared) -> Instant {
        let mut due = match self.echo_since {
            Some(t) => t + REPLY_TIMEOUT,
            None => self.heard + KEEPALIVE_EVERY,
        };
        if let Some(t) = self.grab_since {
            due = due.min(t + REPLY_TIMEOUT);
        }
        if let (true, Some(started)) = (self.job.active, self.job.started) {
            if let Some(limit) = shared.timeout {
                due = due.min(started + limit);
            }
            if !self.job.reported {
                due = due.min(started + SHORT_JOB);
            }
        }
        due
    }

    /// What is due at `now`: a job past `timeout` or a job server that does
    /// not answer ends the connection; a job that turned out long is
    /// reported; a quiet job server gets an ECHO_REQ (returned, to send).
    pub fn tick(&mut self, shared: &Shared, now: Instant) -> Result<Option<Packet>, Ended> {
        if let (true, Some(started)) = (self.job.active, self.job.started) {
            if let Some(limit) = shared.timeout.filter(|l| now >= started + *l) {
                return Err(Ended {
                    why: format!(
                        "timed out after {}",
                        crate::config::values::human_duration(limit)
                    ),
                    fail_job: true,
                    kill: true,
                    by_server: false,
                });
            }
            if !self.job.reported && now >= started + SHORT_JOB {
                self.job.reported = true;
                shared.still_busy(
                    &self.job.function,
                    &String::from_utf8_lossy(&self.job.handle),
                );
            }
        }
        if self.grab_since.is_some_and(|t| now >= t + REPLY_TIMEOUT) {
            return Err(Ended::server(no_reply("GRAB_JOB")));
        }
        match self.echo_since {
            Some(t) if now >= t + REPLY_TIMEOUT => Err(Ended::server(no_reply("ECHO_REQ"))),
            None if now >= self.heard + KEEPALIVE_EVERY => {
                self.echo_since = Some(now);
                Ok(Some(Packet::req(
                    PacketType::EchoReq,
                    vec![Bytes::from_static(RELAY_ECHO)],
                )))
            }
            _ => Ok(None),
        }
    }

    /// The slot's state changed: the NOOP held back, if the worker may have
    /// it now.
    pub fn wake(&mut self, shared: &Shared) -> Option<Packet> {
        if self.noop_owed && shared.open(self.id) {
            self.noop_owed = false;
            return Some(Packet::res(PacketType::Noop, vec![]));
        }
        None
    }

    /// The job in hand ended with `result`: the slot hears of it.
    fn end_job(&mut self, shared: &Shared, result: JobResult, now: Instant) {
        self.job.active = false;
        let took = self.job.started.map_or(std::time::Duration::ZERO, |t| {
            now.saturating_duration_since(t)
        });
        shared.ended(self.id, &self.job.function, result, took);
    }

    /// The connection ends: the job in hand, if any, is counted as failed
    /// (and failed at the job server when `fail_job`), and the slot's job
    /// is free again.
    pub fn close(&mut self, shared: &Shared, fail_job: bool, now: Instant) -> Option<LostJob> {
        let lost = self.job.active.then(|| {
            self.end_job(shared, JobResult::Fail, now);
            LostJob {
                function: self.job.function.clone(),
                handle: String::from_utf8_lossy(&self.job.handle).into_owned(),
                fail: fail_job.then(|| {
                    Packet::req(
                        PacketType::WorkFail,
                        vec![Bytes::copy_from_slice(&self.job.handle)],
                    )
                }),
            }
        });
        self.grabs_out = 0;
        self.grab_since = None;
        shared.release(self.id, false);
        lost
    }
}

/// The arguments of a packet that must travel with `magic`; otherwise why
/// not, as `malformed` ends the connection.
fn parse<'a>(
    header: &Header,
    body: &'a [u8],
    magic: Magic,
    malformed: impl FnOnce(String) -> Ended,
) -> Result<Args<'a>, Ended> {
    if header.magic != magic {
        let sent = match header.magic {
            Magic::Req => "a request (\\0REQ)",
            Magic::Res => "a response (\\0RES)",
        };
        return Err(malformed(format!("{} sent as {sent}", header.kind)));
    }
    split_body(header.kind, body).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::report::Report;
    use std::time::Duration;

    fn shared(timeout: Option<Duration>, workleft: u64) -> (Shared, Reports) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Shared::new(
                tx,
                "slotman:s:w:1:42".into(),
                1 << 20,
                timeout,
                workleft,
                None,
            ),
            Reports(rx),
        )
    }

    struct Reports(tokio::sync::mpsc::UnboundedReceiver<Report>);

    impl Reports {
        fn all(&mut self) -> Vec<Report> {
            let mut out = Vec::new();
            while let Ok(r) = self.0.try_recv() {
                out.push(r);
            }
            out
        }
    }

    fn header(magic: Magic, kind: PacketType, body: &[u8]) -> Header {
        Header {
            magic,
            kind,
            size: body.len() as u32,
        }
    }

    fn worker(s: &mut Session, sh: &Shared, kind: PacketType, body: &[u8]) -> Verdict {
        let now = Instant::now();
        s.on_worker(sh, &header(Magic::Req, kind, body), body, now)
            .expect("worker packet accepted")
    }

    fn server(s: &mut Session, sh: &Shared, kind: PacketType, body: &[u8]) -> Verdict {
        let now = Instant::now();
        s.on_server(sh, &header(Magic::Res, kind, body), body, now)
            .expect("server packet accepted")
    }

    const ASSIGN: &[u8] = b"H:x:1\0w::echo\0uniq\0payload";

    fn no_job() -> Verdict {
        Verdict::Answer(Packet::res(PacketType::NoJob, vec![]))
    }

    #[tokio::test]
    async fn a_job_passes_and_is_reported_busy_then_counted() {
        let (sh, mut rx) = shared(None, 0);
        let mut s = Session::new(1, Instant::now());
        assert_eq!(
            worker(&mut s, &sh, PacketType::CanDo, b"w::echo"),
            Verdict::Pass
        );
        assert_eq!(
            worker(&mut s, &sh, PacketType::GrabJobAll, b""),
            Verdict::Pass
        );
        assert!(!sh.idle(), "the grab holds the slot's job");
        assert_eq!(
            server(&mut s, &sh, PacketType::JobAssignUniq, ASSIGN),
            Verdict::Pass
        );
        let reports = rx.all();
        assert!(
            matches!(&reports[..], [Report::Busy { function, handle }] if function == "w::echo" && handle == "H:x:1"),
            "{reports:?}"
        );
        // Another handle's answer is passed on, not counted.
        assert_eq!(
            worker(&mut s, &sh, PacketType::WorkComplete, b"H:x:9\0r"),
            Verdict::Pass
        );
        assert!(!sh.idle());
        assert_eq!(
            worker(&mut s, &sh, PacketType::WorkComplete, b"H:x:1\0r"),
            Verdict::Pass
        );
        assert!(sh.idle());
        assert_eq!(
            worker(&mut s, &sh, PacketType::GrabJobAll, b""),
            Verdict::Pass
        );
        assert_eq!(server(&mut s, &sh, PacketType::NoJob, b""), Verdict::Pass);
        let reports = rx.all();
        assert!(
            matches!(&reports[..], [Report::Done { jobs, idle: true }] if jobs.total() == 1 && jobs.functions[0].complete == 1),
            "{reports:?}"
        );
    }

    #[tokio::test]
    async fn the_client_id_becomes_the_slots() {
        let (sh, _rx) = shared(None, 0);
        let mut s = Session::new(1, Instant::now());
        assert_eq!(
            worker(&mut s, &sh, PacketType::SetClientId, b"random-perl-id"),
            Verdict::Replace(Packet::req(
                PacketType::SetClientId,
                vec![Bytes::from_static(b"slotman:s:w:1:42")]
            ))
        );
    }

    #[tokio::test]
    async fn a_stopping_slot_answers_grabs_itself_and_holds_noops_back() {
        let (sh, _rx) = shared(None, 0);
        let mut s = Session::new(1, Instant::now());
        sh.stop(None);
        assert_eq!(worker(&mut s, &sh, PacketType::GrabJobUniq, b""), no_job());
        assert_eq!(
            worker(&mut s, &sh, PacketType::PreSleep, b""),
            Verdict::Pass
        );
        assert_eq!(server(&mut s, &sh, PacketType::Noop, b""), Verdict::Drop);
        assert!(s.noop_owed);
        assert_eq!(s.wake(&sh), None, "still stopping");
    }

    #[tokio::test]
    async fn a_paused_slot_wakes_its_worker_when_resumed() {
        let (sh, _rx) = shared(None, 0);
        let mut s = Session::new(1, Instant::now());
        sh.set_paused(true);
        assert_eq!(worker(&mut s, &sh, PacketType::GrabJob, b""), no_job());
        assert_eq!(server(&mut s, &sh, PacketType::Noop, b""), Verdict::Drop);
        sh.set_paused(false);
        assert_eq!(s.wake(&sh), Some(Packet::res(PacketType::Noop, vec![])));
        assert_eq!(s.wake(&sh), None, "one NOOP owed, one given");
        assert_eq!(worker(&mut s, &sh, PacketType::GrabJob, b""), Verdict::Pass);
    }

    #[tokio::test]
    async fn one_job_at_a_time_across_connections() {
        let (sh, _rx) = shared(None, 0);
        let mut a = Session::new(1, Instant::now());
        let mut b = Session::new(2, Instant::now());
        assert_eq!(worker(&mut a, &sh, PacketType::GrabJob, b""), Verdict::Pass);
        assert_eq!(
            server(&mut a, &sh, PacketType::JobAssign, b"H:1\0w::f\0x"),
            Verdict::Pass
        );
        assert_eq!(worker(&mut b, &sh, PacketType::GrabJob, b""), no_job());
        assert_eq!(server(&mut b, &sh, PacketType::Noop, b""), Verdict::Drop);
        assert_eq!(b.wake(&sh), None);
        assert_eq!(
            worker(&mut a, &sh, PacketType::WorkFail, b"H:1"),
            Verdict::Pass
        );
        assert!(
            b.wake(&sh).is_some(),
            "b's worker is woken once a's job is done"
        );
        assert_eq!(worker(&mut b, &sh, PacketType::GrabJob, b""), Verdict::Pass);
    }

    #[tokio::test]
    async fn workleft_stops_the_slot_after_the_last_job() {
        let (sh, mut rx) = shared(None, 2);
        let mut s = Session::new(1, Instant::now());
        for i in 0..2 {
            assert_eq!(worker(&mut s, &sh, PacketType::GrabJob, b""), Verdict::Pass);
            let assign = format!("H:{i}\0w::f\0x");
            server(&mut s, &sh, PacketType::JobAssign, assign.as_bytes());
            worker(
                &mut s,
                &sh,
                PacketType::WorkComplete,
                format!("H:{i}\0r").as_bytes(),
            );
        }
        assert_eq!(worker(&mut s, &sh, PacketType::GrabJob, b""), no_job());
        assert_eq!(
            sh.leaving(),
            Some(crate::slot::report::ExitReason::Workleft)
        );
        let reports = rx.all();
        assert!(
            matches!(reports.last(), Some(Report::Done { jobs, idle: true }) if jobs.total() == 2),
            "the last jobs are reported before the slot leaves: {reports:?}"
        );
    }

    #[tokio::test]
    async fn malformed_or_misdirected_packets_end_the_connection() {
        let (sh, _rx) = shared(None, 0);
        let mut s = Session::new(1, Instant::now());
        let now = Instant::now();
        let short = b"H:1";
        let e = s
            .on_worker(
                &sh,
                &header(Magic::Req, PacketType::WorkStatus, short),
                short,
                now,
            )
            .unwrap_err();
        assert!(e.why.contains("malformed packet from the worker"), "{e:?}");
        assert!(e.fail_job && !e.by_server);
        let e = s
            .on_worker(&sh, &header(Magic::Res, PacketType::Noop, b""), b"", now)
            .unwrap_err();
        assert!(e.why.contains("NOOP sent as a response"), "{e:?}");
        let e = s
            .on_server(&sh, &header(Magic::Req, PacketType::GrabJob, b""), b"", now)
            .unwrap_err();
        assert!(e.by_server && !e.fail_job, "{e:?}");
    }

    #[tokio::test]
    async fn closing_mid_job_fails_it_at_the_server_and_frees_the_slot() {
        let (sh, mut rx) = shared(None, 0);
        let mut s = Session::new(1, Instant::now());
        worker(&mut s, &sh, PacketType::GrabJob, b"");
        server(&mut s, &sh, PacketType::JobAssign, b"H:7\0w::f\0x");
        let lost = s
            .close(&sh, true, Instant::now())
            .expect("a job was in hand");
        assert_eq!(lost.handle, "H:7");
        assert_eq!(
            lost.fail,
            Some(Packet::req(
                PacketType::WorkFail,
                vec![Bytes::from_static(b"H:7")]
            ))
        );
        assert!(sh.idle());
        assert!(s.close(&sh, true, Instant::now()).is_none(), "once");
        sh.report_idle();
        let reports = rx.all();
        assert!(
            matches!(reports.last(), Some(Report::Done { jobs, .. }) if jobs.functions[0].fail == 1),
            "{reports:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_timeout_long_job_report_keepalive_and_silence() {
        let (sh, mut rx) = shared(Some(Duration::from_secs(3)), 0);
        let t0 = Instant::now();
        let mut s = Session::new(1, t0);
        assert_eq!(s.due(&sh), t0 + KEEPALIVE_EVERY);
        // A quiet server gets an echo, whose answer the worker never sees.
        let echo = s.tick(&sh, t0 + KEEPALIVE_EVERY).expect("no end");
        assert!(matches!(echo, Some(p) if p.kind == PacketType::EchoReq));
        assert_eq!(
            server(&mut s, &sh, PacketType::EchoRes, RELAY_ECHO),
            Verdict::Drop
        );
        assert_eq!(
            server(&mut s, &sh, PacketType::EchoRes, b"the worker's"),
            Verdict::Pass
        );
        // A grab unanswered for REPLY_TIMEOUT ends the connection.
        let t1 = Instant::now();
        worker(&mut s, &sh, PacketType::GrabJob, b"");
        assert_eq!(s.due(&sh), t1 + REPLY_TIMEOUT);
        let e = s.tick(&sh, t1 + REPLY_TIMEOUT).unwrap_err();
        assert!(e.by_server && e.why.contains("GRAB_JOB"), "{e:?}");

        // A job: reported once it runs past SHORT_JOB, failed at its timeout.
        let mut s = Session::new(2, t1);
        sh.release(1, false);
        rx.all();
        // A stream of short jobs: the second start is not reported.
        for handle in ["H:a", "H:b"] {
            worker(&mut s, &sh, PacketType::GrabJob, b"");
            server(
                &mut s,
                &sh,
                PacketType::JobAssign,
                format!("{handle}\0w::f\0x").as_bytes(),
            );
            if handle == "H:a" {
                worker(&mut s, &sh, PacketType::WorkComplete, b"H:a\0");
            }
        }
        let started = Instant::now();
        assert_eq!(rx.all().len(), 1, "only the first start is reported");
        assert_eq!(s.due(&sh), started + SHORT_JOB);
        assert_eq!(s.tick(&sh, started + SHORT_JOB), Ok(None));
        assert!(
            rx.all()
                .iter()
                .any(|r| matches!(r, Report::Busy { handle, .. } if handle == "H:b")),
            "the long job's start is reported"
        );
        assert_eq!(s.due(&sh), started + Duration::from_secs(3));
        let e = s.tick(&sh, started + Duration::from_secs(3)).unwrap_err();
        assert!(
            e.kill && e.fail_job && e.why == "timed out after 3s",
            "{e:?}"
        );
    }
}
