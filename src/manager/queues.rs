//! Queue reads: which pools want their queue depth (only saturated ones),
//! when the job servers are asked, what they said, and the admin reads
//! themselves (`status`, and `workers` for the fleet), each bounded.

use std::collections::HashSet;
use std::time::Duration;

use super::pool::{self, SlotState};
use super::{count, fleet, Event, Manager};

/// How long a job server has to answer an admin command of a queue read …
const QUEUE_POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// … or this long after another job server answered: a hung one must not
/// hold up every read (and growth) by the whole timeout.
const QUEUE_POLL_LAG: Duration = Duration::from_millis(200);

/// One pool's queue as the job servers showed it (admin `status`, and
/// `workers` when the fleet was to be read again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRead {
    pub worker: String,
    /// Jobs waiting, over every job server that answered.
    pub waiting: u64,
    /// Jobs running, likewise.
    pub running: u64,
    /// Other hosts and their slots, with the largest answer's size in
    /// bytes; `None` when `workers` was not read (or no server answered).
    pub peers: Option<(u32, u32, usize)>,
}

/// A saturated pool whose queue depth is wanted: its job servers and
/// functions (as registered).
struct QueueQuery {
    worker: String,
    servers: Vec<String>,
    functions: Vec<String>,
    /// Read `workers` too if jobs wait: the pool's own client ids and the
    /// prefix of its fleet's (`slotman:SERVICE:WORKER:`).
    fleet: Option<(std::collections::HashSet<String>, String)>,
}

impl Manager {
    /// Queue depth matters only while a pool is saturated (no idle slot):
    /// below max it says whether to grow, at max whether the pool is held
    /// there with jobs waiting (health); an idle slot would take a waiting
    /// job itself. So the job
    /// servers are asked only then, and an idle service polls nothing.
    fn saturated(&self) -> Vec<QueueQuery> {
        if self.stopping.is_some() {
            return Vec::new();
        }
        self.pools
            .iter()
            .filter(|(_, p)| {
                !p.removed
                    && !p.faults.failed
                    // A native worker without the relay is blind: only the
                    // queue tells.
                    && ((p.worker.kind == crate::config::HandlerKind::Native && !p.worker.proxy)
                        || (p.worker.scale_on_queue
                            && p.count(|s| matches!(s, SlotState::Idle { .. })) == 0))
            })
            .map(|(n, p)| {
                let functions = p
                    .functions()
                    .iter()
                    .map(|f| p.worker.registered_name(f))
                    .collect();
                let now = pool::now();
                let stale = p
                    .peers
                    .as_ref()
                    .is_none_or(|f| now >= f.at + fleet::workers_interval(f));
                let service = &self.config.service;
                QueueQuery {
                    worker: n.clone(),
                    servers: p.worker.job_servers.clone(),
                    functions,
                    fleet: (self.fleet_share && stale)
                        .then(|| (p.client_ids(service), format!("slotman:{service}:{n}:"))),
                }
            })
            .collect()
    }

    /// How often to read `status`: every 100 ms, less often in a large
    /// fleet (the largest a saturated pool has seen).
    fn queue_interval(&self) -> Duration {
        let hosts = self
            .pools
            .values()
            .filter_map(|p| p.peers.as_ref())
            .map(|f| f.hosts.saturating_add(1))
            .max()
            .unwrap_or(1);
        fleet::status_interval(hosts)
    }

    pub(super) fn schedule_queue_poll(&mut self) {
        let saturated = self.saturated();
        if saturated.is_empty() {
            // A poll already due stays due (poll_queues looks again): while
            // a pool grows, each new slot is idle only until it grabs its
            // first job, and cancelling here pushed the poll back with every
            // new slot, so a burst was absorbed one slot at a time.
            for p in self.pools.values_mut() {
                p.queued = 0;
                p.running = 0;
                p.waiting_since = None;
            }
        } else if self.queue_poll.is_none() && !self.queue_inflight {
            // The first look is at once (a burst has just landed); then at
            // most one every queue_interval.
            let now = pool::now();
            let next = self.queue_polled.map_or(now, |t| t + self.queue_interval());
            self.queue_poll = Some(next.max(now));
        }
    }

    pub(super) fn poll_queues(&mut self) {
        self.queue_poll = None;
        let saturated = self.saturated();
        if saturated.is_empty() {
            return;
        }
        self.queue_inflight = true;
        self.queue_polled = Some(pool::now());
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Event::QueueDepth(read_queues(saturated).await));
        });
    }

    /// What the job servers said of the saturated pools' queues.
    pub(super) fn queue_depth(&mut self, reads: Vec<QueueRead>) {
        self.queue_inflight = false;
        let now = pool::now();
        for r in reads {
            let Some(p) = self.pools.get_mut(&r.worker) else {
                continue;
            };
            p.queued = r.waiting;
            p.running = r.running;
            p.waiting_since = (r.waiting > 0).then(|| p.waiting_since.unwrap_or(now));
            if let Some((hosts, slots, answer_bytes)) = r.peers {
                if p.peers.as_ref().map(|f| f.hosts) != Some(hosts) {
                    tracing::info!(
                        worker = %r.worker,
                        hosts = hosts + 1,
                        "{}: {} serving its queue",
                        r.worker,
                        count(hosts as usize + 1, "host")
                    );
                }
                p.peers = Some(fleet::Peers {
                    hosts,
                    slots,
                    at: now,
                    answer_bytes,
                });
            }
        }
    }
}

/// Reads the saturated pools' queues: `status` of every job server at
/// once, then, for pools that find jobs waiting and want their fleet read
/// again, `workers` of their servers at once. A server that fails costs its
/// answer only; one that is slow, at most [`QUEUE_POLL_LAG`] after the
/// others answered (or [`QUEUE_POLL_TIMEOUT`] if none did).
async fn read_queues(saturated: Vec<QueueQuery>) -> Vec<QueueRead> {
    use crate::gearman::admin;
    use futures::StreamExt;
    use std::collections::HashMap;
    async fn each<'a, T, F: std::future::Future<Output = Result<T, admin::AdminError>>>(
        servers: Vec<&'a String>,
        read: impl Fn(String) -> F,
        failed: &mut HashSet<String>,
    ) -> Vec<(&'a String, T)> {
        let mut pending: futures::stream::FuturesUnordered<_> = servers
            .iter()
            .map(|&s| {
                let answer = read(s.clone());
                async move { (s, answer.await) }
            })
            .collect();
        let mut out = Vec::new();
        let mut cutoff: Option<tokio::time::Instant> = None;
        loop {
            let next = match cutoff {
                Some(t) => match tokio::time::timeout_at(t, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            match next {
                None => break,
                Some((server, Ok(v))) => {
                    out.push((server, v));
                    cutoff.get_or_insert_with(|| tokio::time::Instant::now() + QUEUE_POLL_LAG);
                }
                Some((server, Err(e))) => {
                    tracing::debug!(server, "admin read failed: {e}");
                    failed.insert(server.clone());
                }
            }
        }
        for s in servers {
            if !out.iter().any(|(a, _)| *a == s) && failed.insert(s.clone()) {
                tracing::debug!(
                    server = s,
                    "admin read skipped: no answer {QUEUE_POLL_LAG:?} after the other job servers'"
                );
            }
        }
        out
    }
    let mut failed = HashSet::new();
    let mut servers: Vec<&String> = saturated.iter().flat_map(|q| &q.servers).collect();
    servers.sort();
    servers.dedup();
    let mut load: HashMap<String, admin::Load> = HashMap::new();
    let status = |s: String| async move { admin::status(&s, QUEUE_POLL_TIMEOUT).await };
    for (_, rows) in each(servers, status, &mut failed).await {
        admin::add_load(&mut load, rows);
    }
    let mut reads: Vec<QueueRead> = saturated
        .iter()
        .map(|q| {
            let of = |f: &String| load.get(f).copied().unwrap_or_default();
            QueueRead {
                worker: q.worker.clone(),
                waiting: q.functions.iter().map(|f| of(f).waiting).sum(),
                running: q.functions.iter().map(|f| of(f).running).sum(),
                peers: None,
            }
        })
        .collect();
    let wanted = |q: &QueueQuery, r: &QueueRead| q.fleet.is_some() && r.waiting > 0;
    let mut servers: Vec<&String> = saturated
        .iter()
        .zip(&reads)
        .filter(|(q, r)| wanted(q, r))
        .flat_map(|(q, _)| &q.servers)
        .filter(|s| !failed.contains(*s))
        .collect();
    if servers.is_empty() {
        return reads;
    }
    servers.sort();
    servers.dedup();
    let workers = |s: String| async move { admin::workers(&s, QUEUE_POLL_TIMEOUT).await };
    let lists: HashMap<&String, Vec<admin::WorkerInfo>> = each(servers, workers, &mut failed)
        .await
        .into_iter()
        .collect();
    for (q, r) in saturated.iter().zip(reads.iter_mut()) {
        let Some((own, prefix)) = q.fleet.as_ref().filter(|_| r.waiting > 0) else {
            continue;
        };
        let mine: Vec<Vec<admin::WorkerInfo>> = q
            .servers
            .iter()
            .filter_map(|s| lists.get(s).cloned())
            .collect();
        if mine.is_empty() {
            continue;
        }
        let bytes = mine
            .iter()
            .map(|l| fleet::answer_bytes(l))
            .max()
            .unwrap_or(0);
        let (hosts, slots) = fleet::observe(&mine, prefix, own, &q.functions);
        r.peers = Some((hosts, slots, bytes));
    }
    reads
}
