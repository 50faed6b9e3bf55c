//! The manager's picture of one worker's pool: plain data, no I/O. Only the
//! manager loop mutates it; slot tasks report through events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::policy::{Fleet, PoolView, SlotPhase, SlotView};
use crate::config::WorkerConfig;

/// Commands from the manager to one slot's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCmd {
    /// Finish the job in hand, then exit.
    Drain,
    /// SIGKILL (stop timeout passed).
    Kill,
    /// CPU pinning (`pin_cpu`) on or off.
    Pin(bool),
    /// Take no new job (`slotman pause`), or take jobs again.
    Pause(bool),
}

/// What a slot is doing, as the manager knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Starting,
    Idle {
        since: Instant,
    },
    Busy {
        function: String,
        handle: String,
        since: Instant,
    },
    /// Sent `drain` (the log line at that moment says why).
    Draining,
}

impl SlotState {
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Idle { .. } => "idle",
            SlotState::Busy { .. } => "busy",
            SlotState::Draining => "draining",
        }
    }
}

#[derive(Debug)]
pub struct Slot {
    pub id: u32,
    pub pid: Option<u32>,
    pub unit: Option<String>,
    pub state: SlotState,
    pub started: Instant,
    pub generation: u64,
    pub jobs_done: u64,
    /// The job in hand (function, handle, since), also while draining.
    pub job: Option<JobInHand>,
    pub recycle_at: Option<Instant>,
    /// It said `exiting`, or we told it to drain: its exit is not a crash.
    pub exit_expected: bool,
    /// It registered at least once (an exit before that is a start failure).
    pub was_ready: bool,
    /// It said it leaves because it was told to drain: an exit before it
    /// was ready is no start failure then.
    pub drained: bool,
    /// The CPU it shares with its handler while pinned (`manager/cpus.rs`).
    pub cpu: Option<u32>,
    /// What it was last told about pinning.
    pub pinned: bool,
    /// `slotman drain`: replace it as if outdated.
    pub retire: bool,
    /// Its runner confirmed the worker's pause: it takes no new job.
    pub pause_taken: bool,
    /// Its job-server connections as it last reported them.
    pub links: BTreeMap<String, super::health::Link>,
    /// The runner's pid as it reported it (`ready`): the one in its Gearman
    /// client id, should it differ from `pid` (another pid namespace).
    pub reported_pid: Option<u32>,
    pub cmd: mpsc::UnboundedSender<SlotCmd>,
}

/// The manager's clock: tokio's, so that tests can run the manager on
/// paused time; as a std `Instant` for the pure policy.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The job a slot has in hand, as its last `busy` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInHand {
    /// As registered (with prefix).
    pub function: String,
    pub handle: String,
    pub since: Instant,
}

/// Restart accounting, like systemd's StartLimitBurst / RestartSec growth.
#[derive(Debug, Default)]
pub struct Faults {
    /// Consecutive failures since the last success; drives the back-off.
    pub consecutive: u32,
    /// Failure instants inside the burst window.
    pub recent: VecDeque<Instant>,
    /// No start before this instant.
    pub hold_until: Option<Instant>,
    /// Marked failed (start limit hit); retried at `hold_until`.
    pub failed: bool,
    /// Slots in a row that failed to start, however far apart.
    pub failed_starts: usize,
}

/// Failures within this window …
pub const BURST_WINDOW: Duration = Duration::from_secs(10);
/// … this many times mark the worker failed …
pub const BURST_LIMIT: usize = 5;
/// … until this much later.
pub const FAILED_RETRY: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Faults {
    /// Records a failure; returns true when it just crossed the start limit.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.consecutive += 1;
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > BURST_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= BURST_LIMIT {
            self.mark_failed(now);
            return true;
        }
        let exp = self.consecutive.saturating_sub(1).min(16);
        let delay = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
        // Never shorten a hold already in place (a failed worker's retry time).
        let until = now + delay;
        self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
        false
    }

    /// Records a slot that failed to start (it exited before it was
    /// ready), as [`failure`](Self::failure) does, and also counts it on its
    /// own: [`BURST_LIMIT`] failed starts in a row, however far apart, mark
    /// the worker failed too. A handler that fails by never saying READY
    /// takes its whole `ready_timeout` (30 s by default) to fail, so it
    /// would never fail [`BURST_LIMIT`] times within [`BURST_WINDOW`].
    pub fn start_failure(&mut self, now: Instant) -> bool {
        self.failed_starts += 1;
        if self.failure(now) {
            return true;
        }
        if self.failed_starts >= BURST_LIMIT {
            self.mark_failed(now);
            return true;
        }
        false
    }

    /// A slot of the worker became ready: failed starts are no longer in a row.
    pub fn started(&mut self) {
        self.failed_starts = 0;
    }

    pub fn success(&mut self) {
        self.consecutive = 0;
        self.failed_starts = 0;
        self.failed = false;
    }

    fn mark_failed(&mut self, now: Instant) {
        self.failed = true;
        self.recent.clear();
        self.failed_starts = 0;
        self.hold_until = Some(now + FAILED_RETRY);
    }
}

/// How long the ids of a slot that left still count as this host's.
pub const GONE_FOR: Duration = Duration::from_secs(10);
/// At most this many of them.
const GONE_MAX: usize = 256;

/// Counters per worker, for STATUS, `slotman status` and metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub jobs_complete: u64,
    pub jobs_failed: u64,
    pub jobs_exception: u64,
    pub restarts: u64,
    /// Slots replaced after workleft or max_lifetime.
    pub recycles: u64,
}

/// Jobs finished per second over the last minute: 60 one-second buckets,
/// advanced lazily (no timer).
#[derive(Debug)]
pub struct Rate {
    origin: Instant,
    buckets: [u64; 60],
    /// Second (since `origin`) of the newest bucket.
    head: u64,
    /// Second (since `origin`) of the last job counted.
    last: Option<u64>,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            origin: now(),
            buckets: [0; 60],
            head: 0,
            last: None,
        }
    }
}

impl Rate {
    fn advance(&mut self, now: Instant) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        if sec > self.head {
            let gap = (sec - self.head).min(60);
            for i in 1..=gap {
                self.buckets[((self.head + i) % 60) as usize] = 0;
            }
            self.head = sec;
        }
    }

    pub fn add_n(&mut self, now: Instant, n: u64) {
        if n == 0 {
            return;
        }
        self.advance(now);
        self.buckets[(self.head % 60) as usize] += n;
        self.last = Some(self.head);
    }

    /// When the last job counted leaves the window and the rate drops to 0
    /// (`None` if it is 0 already or never counted).
    pub fn quiet_at(&self) -> Option<Instant> {
        let last = self.last?;
        let at = self.origin + Duration::from_secs(last + 60);
        (last + 60 > self.head).then_some(at)
    }

    /// Average per second over the last minute (or since start, if shorter).
    pub fn per_sec(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let span = now
            .saturating_duration_since(self.origin)
            .as_secs_f64()
            .clamp(1.0, 60.0);
        self.buckets.iter().sum::<u64>() as f64 / span
    }
}

/// PHP-FPM's `pm.max_spawn_rate`: slots started per second to absorb load,
/// as a token bucket that holds at most one second's worth.
#[derive(Debug)]
pub struct SpawnBucket {
    tokens: f64,
    last: Instant,
}

impl SpawnBucket {
    /// A full bucket: `rate` slots may start at once.
    pub fn new(rate: u32) -> Self {
        SpawnBucket {
            tokens: rate.max(1) as f64,
            last: now(),
        }
    }

    /// Takes up to `want` tokens; returns how many it got, and when the next
    /// one is due if it gave fewer.
    pub fn take(&mut self, want: u32, rate: u32, now: Instant) -> (u32, Option<Instant>) {
        let rate = rate.max(1) as f64;
        self.tokens =
            (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        let got = (self.tokens.floor() as u32).min(want);
        self.tokens -= got as f64;
        let next =
            (got < want).then(|| now + Duration::from_secs_f64((1.0 - self.tokens.fract()) / rate));
        (got, next)
    }
}

#[derive(Debug)]
pub struct Pool {
    pub worker: Arc<WorkerConfig>,
    /// Bumped by a reload that changed how slots run; older slots are outdated.
    pub generation: u64,
    pub slots: BTreeMap<u32, Slot>,
    pub next_id: u32,
    pub removed: bool,
    pub faults: Faults,
    pub counters: Counters,
    pub functions: BTreeMap<String, crate::view::FunctionStats>,
    pub durations: crate::view::Histogram,
    pub rate: Rate,
    /// Jobs waiting at the job servers, as last read (0 while not read).
    pub queued: u64,
    /// Jobs running at the job servers, as last read.
    pub running: u64,
    /// Since when every queue read found jobs waiting.
    pub waiting_since: Option<Instant>,
    /// The other hosts serving this worker, as `workers` last showed them.
    pub peers: Option<super::fleet::Peers>,
    /// Slots that left lately, by when: a job server may still list them
    /// for a moment, and they must not pass for another host's.
    pub gone: VecDeque<(Instant, u32, [Option<u32>; 2])>,
    pub spawn: SpawnBucket,
    /// Why slots fail, while they do: (the last failure, since when they
    /// fail, whether it was a start). Cleared by a slot that starts after
    /// failed starts, or by a job done.
    pub failing: Option<Failing>,
    /// `slotman pause`: its slots take no new job; the policy leaves it be.
    pub paused: bool,
    /// What its slots registered when the config lists no functions (a
    /// seed-style worker's methods), as the last slot reported them.
    pub announced: Vec<String>,
}

/// Slots of a worker failing in a row (see [`Pool::failing`]).
#[derive(Debug, Clone)]
pub struct Failing {
    pub why: String,
    pub since: Instant,
    pub at_start: bool,
}

impl Pool {
    /// A slot failed for `why`.
    pub fn failed(&mut self, why: String, at_start: bool, now: Instant) {
        let since = self.failing.as_ref().map_or(now, |f| f.since);
        self.failing = Some(Failing {
            why,
            since,
            at_start,
        });
    }
}

impl Pool {
    pub fn new(worker: WorkerConfig) -> Pool {
        let spawn = SpawnBucket::new(worker.max_spawn_rate);
        Pool {
            worker: Arc::new(worker),
            generation: 0,
            slots: BTreeMap::new(),
            next_id: 1,
            removed: false,
            faults: Faults::default(),
            counters: Counters::default(),
            functions: BTreeMap::new(),
            durations: Default::default(),
            rate: Rate::default(),
            queued: 0,
            running: 0,
            waiting_since: None,
            peers: None,
            gone: VecDeque::new(),
            spawn,
            failing: None,
            paused: false,
            announced: Vec::new(),
        }
    }

    /// The functions its slots register (without prefix): the config's,
    /// else what they reported.
    pub fn functions(&self) -> &[String] {
        if self.worker.functions.is_empty() {
            &self.announced
        } else {
            &self.worker.functions
        }
    }

    pub fn view(&self, stopping: bool) -> PoolView {
        PoolView {
            min: self.worker.min,
            max: self.worker.max,
            idle_timeout: self.worker.idle_timeout,
            slots: self
                .slots
                .values()
                .map(|s| SlotView {
                    id: s.id,
                    state: match &s.state {
                        SlotState::Starting => SlotPhase::Starting,
                        SlotState::Idle { since } => SlotPhase::Idle { since: *since },
                        SlotState::Busy { .. } => SlotPhase::Busy,
                        SlotState::Draining => SlotPhase::Draining,
                    },
                    outdated: s.generation != self.generation || s.retire,
                    recycle_at: s.recycle_at,
                })
                .collect(),
            queued: self.queued,
            fleet: self.fleet(),
            hold_until: self.faults.hold_until,
            removed: self.removed,
            stopping,
        }
    }

    /// The fleet as the policy sees it, while jobs wait and other hosts
    /// are known.
    fn fleet(&self) -> Option<Fleet> {
        let peers = self.peers.as_ref()?;
        Some(Fleet {
            hosts: peers.hosts.saturating_add(1),
            peer_slots: peers.slots,
            running: self.running,
            waiting_since: self.waiting_since?,
        })
    }

    /// The Gearman client ids its slots use, as far as their pids are known
    /// (`slotman:SERVICE:WORKER:SLOT:PID`), those of slots that left within
    /// [`GONE_FOR`] included.
    pub fn client_ids(&self, service: &str) -> std::collections::HashSet<String> {
        let name = &self.worker.name;
        let live = self.slots.values().map(|s| (s.id, [s.pid, s.reported_pid]));
        let gone = self.gone.iter().map(|(_, id, pids)| (*id, *pids));
        live.chain(gone)
            .flat_map(|(id, pids)| {
                pids.into_iter()
                    .flatten()
                    .map(move |pid| format!("slotman:{service}:{name}:{id}:{pid}"))
            })
            .collect()
    }

    /// Slot `id` (with these pids) left: its ids stay ours for [`GONE_FOR`].
    pub fn left(&mut self, id: u32, pids: [Option<u32>; 2], now: Instant) {
        // Bounded: a pool recycling slots per job leaves thousands a minute.
        while self.gone.len() >= GONE_MAX
            || self
                .gone
                .front()
                .is_some_and(|(at, ..)| now.saturating_duration_since(*at) > GONE_FOR)
        {
            self.gone.pop_front();
        }
        self.gone.push_back((now, id, pids));
    }

    pub fn count(&self, f: impl Fn(&SlotState) -> bool) -> usize {
        self.slots.values().filter(|s| f(&s.state)).count()
    }

    /// Slots that count as capacity (not draining).
    pub fn active(&self) -> usize {
        self.count(|s| !matches!(s, SlotState::Draining))
    }

    pub fn busy(&self) -> usize {
        // Jobs in hand: a draining slot finishing its job is busy too.
        self.slots.values().filter(|s| s.job.is_some()).count()
    }

    pub fn ready(&self) -> usize {
        self.count(|s| matches!(s, SlotState::Idle { .. } | SlotState::Busy { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_start_limit_marks_failed() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        assert!(!f.failure(t0));
        let first = f.hold_until.unwrap() - t0;
        assert!(!f.failure(t0));
        let second = f.hold_until.unwrap() - t0;
        assert!(second > first, "back-off grows: {first:?} then {second:?}");
        assert!(!f.failure(t0));
        assert!(!f.failure(t0));
        assert!(f.failure(t0), "fifth failure in the window hits the limit");
        assert!(f.failed);
        assert_eq!(f.hold_until, Some(t0 + FAILED_RETRY));
        f.success();
        assert!(!f.failed);
    }

    #[test]
    fn rate_counts_the_last_minute_only() {
        let mut r = Rate::default();
        let t0 = r.origin;
        for i in 0..120 {
            r.add_n(t0 + Duration::from_secs(i), 1);
        }
        let now = t0 + Duration::from_secs(119);
        assert!((r.per_sec(now) - 1.0).abs() < 0.05, "{}", r.per_sec(now));
        assert_eq!(r.quiet_at(), Some(t0 + Duration::from_secs(119 + 60)));
        assert_eq!(r.per_sec(t0 + Duration::from_secs(178)), 1.0 / 60.0);
        assert_eq!(r.per_sec(t0 + Duration::from_secs(179)), 0.0);
        assert_eq!(r.quiet_at(), None, "nothing left to decay");
    }

    #[test]
    fn spawn_bucket_limits_the_rate() {
        let mut b = SpawnBucket::new(32);
        let t0 = b.last;
        let (got, next) = b.take(100, 32, t0);
        assert_eq!(got, 32);
        let next = next.expect("more are due later");
        assert!(next > t0 && next <= t0 + Duration::from_millis(40));
        assert_eq!(b.take(100, 32, t0).0, 0);
        assert_eq!(b.take(100, 32, t0 + Duration::from_millis(500)).0, 16);
        assert_eq!(b.take(5, 32, t0 + Duration::from_secs(10)), (5, None));
    }

    #[test]
    fn failed_starts_in_a_row_hit_the_limit_however_far_apart() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        let apart = BURST_WINDOW * 3;
        for i in 0..4 {
            assert!(!f.start_failure(t0 + apart * i), "failed start {i}");
        }
        f.started();
        for i in 4..8 {
            assert!(!f.start_failure(t0 + apart * i), "failed start {i}");
        }
        assert!(f.start_failure(t0 + apart * 8), "fifth in a row");
        assert!(f.failed);
        assert_eq!(f.hold_until, Some(t0 + apart * 8 + FAILED_RETRY));
        // Retried: it takes five more in a row.
        f.failed = false;
        assert!(!f.start_failure(t0 + apart * 9));
    }

    #[test]
    fn slots_that_left_stay_ours_for_a_while_and_a_bounded_few() {
        let config = crate::config::parse(
            "[workers.w]\nkind = \"exec\"\ncommand = [\"/bin/cat\"]\nfunctions = [\"f\"]\n",
            std::path::Path::new("svc.toml"),
        )
        .expect("config");
        let mut pool = Pool::new(config.workers[0].clone());
        let t0 = Instant::now();
        pool.left(1, [Some(100), Some(101)], t0);
        let ids = pool.client_ids("svc");
        assert!(ids.contains("slotman:svc:w:1:100") && ids.contains("slotman:svc:w:1:101"));
        pool.left(2, [Some(200), None], t0 + GONE_FOR + Duration::from_secs(1));
        let ids = pool.client_ids("svc");
        assert!(!ids.contains("slotman:svc:w:1:100"), "expired");
        assert!(ids.contains("slotman:svc:w:2:200"));
        for i in 0..10_000 {
            pool.left(i, [Some(i), None], t0 + GONE_FOR);
        }
        assert!(pool.gone.len() <= GONE_MAX);
    }

    #[test]
    fn failures_spread_out_do_not_hit_the_limit() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(!f.failure(t0 + BURST_WINDOW * i), "failure {i}");
        }
    }
}
