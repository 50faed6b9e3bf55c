//! What the relayed connections of one slot share: the slot's one job (a
//! slot runs one job at a time, however many connections its worker opens),
//! the reports to the manager, `workleft`, and whether the slot still takes
//! jobs (not while stopping or paused).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::slot::report::{BusyReport, ExitReason, JobResult, Links, ManagerView, Reports};
use crate::systemd::journal::{JobTag, JobTags};

/// Identifies one relayed connection within its slot.
pub type ConnId = u64;

/// Everything the slot's connections share; one per slot.
pub struct Shared {
    reports: Reports,
    /// SET_CLIENT_ID's argument: the slot's identity.
    pub client_id: Bytes,
    /// Largest packet body accepted either way (`max_packet_size`).
    pub max_packet: u32,
    /// A job running longer is failed and the worker killed (`timeout`).
    pub timeout: Option<Duration>,
    workleft: u64,
    log_tags: Option<JobTags>,
    state: Mutex<State>,
    /// Bumped whenever the slot may take a job again (the job in hand
    /// ended, a grab found nothing, a pause ended) or stops taking them:
    /// connections holding back a NOOP look again; the supervisor waiting
    /// for the slot to be idle looks again.
    epoch: watch::Sender<u64>,
    /// A job ran past `timeout`: the worker must be killed and replaced.
    kill: Notify,
    /// Cancelled when the worker process of the current generation is
    /// gone: its connections fail their job in hand and close.
    generation: Mutex<CancellationToken>,
    /// The worker has connected to a relay at least once.
    connected: Notify,
}

#[derive(Debug, Default)]
struct State {
    manager_view: ManagerView,
    links: Links,
    /// Jobs finished, for `workleft`.
    done: u64,
    /// The connection that holds the slot's one job: its grab is out, or
    /// its job is in hand.
    gate: Option<ConnId>,
    /// The slot takes no more jobs (drain, workleft, memory).
    stopping: bool,
    /// Why the slot leaves on its own (workleft, recycle_rss), if it does.
    leaving: Option<ExitReason>,
    /// The manager paused the worker: no new job until resumed.
    paused: bool,
    /// The manager was told that the pause holds.
    pause_confirmed: bool,
    /// A job is in hand (assigned, not yet ended).
    in_job: bool,
    /// Connections accepted so far (each one's id).
    next_conn: ConnId,
}

impl Shared {
    pub fn new(
        reports: Reports,
        client_id: String,
        max_packet: u32,
        timeout: Option<Duration>,
        workleft: u64,
        log_tags: Option<JobTags>,
    ) -> Shared {
        Shared {
            reports,
            client_id: Bytes::from(client_id),
            max_packet,
            timeout,
            workleft,
            log_tags,
            state: Mutex::new(State::default()),
            epoch: watch::Sender::new(0),
            kill: Notify::new(),
            generation: Mutex::new(CancellationToken::new()),
            connected: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    /// A new connection from the worker: its id, and the token that ends it
    /// with the worker process it came from.
    pub fn accepted(&self) -> (ConnId, CancellationToken) {
        let id = {
            let mut s = self.state();
            s.next_conn += 1;
            s.next_conn
        };
        self.connected.notify_one();
        (id, self.generation().child_token())
    }

    /// Waits until the worker has connected to a relay once.
    pub async fn first_connection(&self) {
        loop {
            let wait = self.connected.notified();
            if self.state().next_conn > 0 {
                return;
            }
            wait.await;
        }
    }

    fn generation(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The worker process is gone: its connections end (failing a job in
    /// hand), and connections accepted from now on belong to the next one.
    pub fn end_generation(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Watches the slot's openings (see `epoch`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// A connection's grab may go to the job server: the slot takes jobs
    /// and no other connection holds its job. Then `conn` holds it.
    pub fn grab(&self, conn: ConnId) -> bool {
        let mut s = self.state();
        if s.stopping || s.paused || s.gate.is_some_and(|g| g != conn) {
            return false;
        }
        s.gate = Some(conn);
        true
    }

    /// Whether a NOOP may wake `conn`'s worker: the slot would let its grab
    /// through.
    pub fn open(&self, conn: ConnId) -> bool {
        let s = self.state();
        !s.stopping && !s.paused && s.gate.is_none_or(|g| g == conn)
    }

    /// `conn`'s grab found no job (or the connection closed): the slot's job
    /// is free again.
    pub fn release(&self, conn: ConnId, idle: bool) {
        let mut s = self.state();
        if s.gate == Some(conn) {
            s.gate = None;
            if idle {
                s.manager_view.idle(&self.reports);
            }
            drop(s);
            self.bump();
        }
    }

    /// A job was assigned on `conn`. Returns whether its start was reported
    /// (see [`ManagerView::busy`]); if not, [`Shared::still_busy`] reports it once
    /// it turns out long.
    pub fn started(&self, conn: ConnId, function: &str, handle: &str, now: Instant) -> bool {
        if let Some(tags) = &self.log_tags {
            tags.switch(Some(JobTag {
                function: function.to_owned(),
                handle: handle.to_owned(),
            }));
        }
        let mut s = self.state();
        s.gate = Some(conn);
        s.in_job = true;
        let reported = s.manager_view.busy(
            &self.reports,
            function,
            handle,
            now.into_std(),
            BusyReport::IfStale,
        );
        let waiting = s.paused && !s.pause_confirmed;
        drop(s);
        if waiting {
            // The grab out before the pause brought a job: the pause holds.
            self.bump();
        }
        reported
    }

    /// The job in hand, not reported when it started, is still running.
    pub fn still_busy(&self, function: &str, handle: &str) {
        self.state().manager_view.busy(
            &self.reports,
            function,
            handle,
            std::time::Instant::now(),
            BusyReport::Always,
        );
    }

    /// The job on `conn` ended: counted; `workleft` may stop the slot.
    pub fn ended(&self, conn: ConnId, function: &str, result: JobResult, took: Duration) {
        if let Some(tags) = &self.log_tags {
            tags.switch(None);
        }
        let mut s = self.state();
        s.manager_view.finished(function, result, took);
        s.done += 1;
        if self.workleft > 0 && s.done >= self.workleft && !s.stopping {
            s.stopping = true;
            s.leaving.get_or_insert(ExitReason::Workleft);
        }
        if s.gate == Some(conn) {
            s.gate = None;
        }
        s.in_job = false;
        if s.stopping || s.paused {
            // Leaving or paused next: the manager hears of this job now.
            s.manager_view.idle(&self.reports);
        }
        drop(s);
        self.bump();
    }

    /// The slot takes no more jobs; `reason` says why, when it leaves on
    /// its own (the first reason counts).
    pub fn stop(&self, reason: Option<ExitReason>) {
        let mut s = self.state();
        s.stopping = true;
        if let Some(r) = reason {
            s.leaving.get_or_insert(r);
        }
        drop(s);
        self.bump();
    }

    pub fn set_paused(&self, on: bool) {
        let mut s = self.state();
        s.paused = on;
        s.pause_confirmed = false;
        drop(s);
        self.bump();
    }

    /// True once per pause, when it holds: no grab is out that could still
    /// bring a job (a job in hand finishes; none starts after it).
    pub fn pause_took_hold(&self) -> bool {
        let mut s = self.state();
        if !s.paused || s.pause_confirmed || (s.gate.is_some() && !s.in_job) {
            return false;
        }
        s.pause_confirmed = true;
        if s.gate.is_none() {
            // Between jobs: the one before may not have been reported yet.
            s.manager_view.idle(&self.reports);
        }
        true
    }

    /// The slot takes no more jobs.
    pub fn stopping(&self) -> bool {
        self.state().stopping
    }

    /// No job in hand and no grab out.
    pub fn idle(&self) -> bool {
        self.state().gate.is_none()
    }

    /// Why the slot leaves on its own, if it does.
    pub fn leaving(&self) -> Option<ExitReason> {
        self.state().leaving
    }

    /// Sends the counts not yet reported, saying the slot is idle.
    pub fn report_idle(&self) {
        self.state().manager_view.idle(&self.reports);
    }

    /// The connection to `server` is up (`None`) or failed (why); whether
    /// that is news.
    pub fn link(&self, server: &str, error: Option<&str>) -> bool {
        self.state().links.report(&self.reports, server, error)
    }

    /// Asks the supervisor to kill the worker (a job past `timeout`).
    pub fn kill_worker(&self) {
        self.kill.notify_one();
    }

    /// Waits for a [`Shared::kill_worker`].
    pub async fn kill_requested(&self) {
        self.kill.notified().await;
    }
}
