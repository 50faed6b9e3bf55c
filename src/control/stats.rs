//! Memory, CPU and task counts of slots, for `slotman status` and metrics.
//! Plain processes: summed over the runner's process tree from /proc. A
//! value the host does not provide stays `None` (shown as "-"), never 0.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::proto::ServiceStatus;
use crate::gearman::admin::{self, Load};
use crate::placement::scope::{Systemd, UnitStats};

/// How long a job server may take to answer admin `status`.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What a status adds to the manager's view from outside it, read once for
/// any number of requests (`control::snapshot`).
#[derive(Debug)]
pub struct Sample {
    /// When it was finished.
    taken: Instant,
    /// Job servers, scopes and runners asked, whether they answered or not.
    servers: HashSet<String>,
    units: HashSet<String>,
    pids: HashSet<u32>,
    /// Jobs waiting per function, by job server; servers that answered only.
    queues: HashMap<String, HashMap<String, Load>>,
    /// Accounting of the scopes systemd answered for.
    unit_stats: HashMap<String, UnitStats>,
    /// Process-tree usage of plain runners, by runner pid.
    usage: HashMap<u32, Usage>,
}

impl Sample {
    /// Reads what `status` needs: every job server's admin `status`, each
    /// scope's accounting (with `bus`), else each runner's process tree
    /// from /proc. All at once; what has not answered within `limit` is
    /// left unknown.
    pub async fn take(status: &ServiceStatus, bus: Option<&Systemd>, limit: Duration) -> Sample {
        let servers: HashSet<String> = status
            .workers
            .iter()
            .flat_map(|w| w.job_servers.iter().cloned())
            .collect();
        let slots = status.workers.iter().flat_map(|w| &w.slots);
        // Under systemd the scope's cgroup is the truth (it counts everything
        // the slot started); /proc is for plain processes.
        let units: HashSet<String> = match bus {
            Some(_) => slots.clone().filter_map(|s| s.unit.clone()).collect(),
            None => HashSet::new(),
        };
        let pids: HashSet<u32> = slots
            .filter(|s| s.unit.is_none() || bus.is_none())
            .filter_map(|s| s.pid)
            .collect();
        let mut sample = Sample {
            taken: Instant::now(),
            servers,
            units,
            pids,
            queues: HashMap::new(),
            unit_stats: HashMap::new(),
            usage: HashMap::new(),
        };
        let queues = futures::future::join_all(sample.servers.iter().map(|s| async move {
            let rows = admin::status(s, ADMIN_TIMEOUT.min(limit)).await;
            (s.clone(), rows)
        }));
        let unit_stats = futures::future::join_all(sample.units.iter().map(|u| async move {
            match bus {
                Some(bus) => (u.clone(), bus.unit_stats(u).await.ok()),
                None => (u.clone(), None),
            }
        }));
        let roots: Vec<u32> = sample.pids.iter().copied().collect();
        let usage = async {
            if roots.is_empty() {
                return HashMap::new();
            }
            tokio::task::spawn_blocking(move || usage_of(&roots))
                .await
                .unwrap_or_default()
        };
        // Each part on its own clock: a hung job server must not cost the
        // memory figures, nor a hung systemd the queue depths.
        let (queues, unit_stats, usage) = tokio::join!(
            tokio::time::timeout(limit, queues),
            tokio::time::timeout(limit, unit_stats),
            tokio::time::timeout(limit, usage),
        );
        for (server, rows) in queues.unwrap_or_default() {
            match rows {
                Ok(rows) => {
                    let waiting = sample.queues.entry(server).or_default();
                    admin::add_load(waiting, rows);
                }
                Err(e) => tracing::debug!(server, "admin status for slotman status failed: {e}"),
            }
        }
        sample.unit_stats = unit_stats
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(u, st)| Some((u, st?)))
            .collect();
        sample.usage = usage.unwrap_or_default();
        // Its age counts from here: a sample that waited a second for a
        // stopped job server is still reused for a while, rather than one
        // slow sample after another being taken while requests keep coming.
        sample.taken = Instant::now();
        sample
    }

    /// How long ago the sample was finished.
    pub fn age(&self) -> Duration {
        self.taken.elapsed()
    }

    /// Whether the sample asked every job server, scope and runner that
    /// `status` shows (a slot started since was not).
    pub fn covers(&self, status: &ServiceStatus) -> bool {
        status.workers.iter().all(|w| {
            w.job_servers.iter().all(|s| self.servers.contains(s))
                && w.slots.iter().all(|s| match (&s.unit, s.pid) {
                    (Some(u), _) if self.units.contains(u) => true,
                    (_, Some(pid)) => self.pids.contains(&pid),
                    (_, None) => true,
                })
        })
    }

    /// Fills each worker's `queued` and each slot's memory, CPU and tasks
    /// where the sample knows them; leaves the rest as it is (unknown).
    pub fn apply(&self, status: &mut ServiceStatus) {
        for w in &mut status.workers {
            let answered: Vec<&HashMap<String, Load>> = w
                .job_servers
                .iter()
                .filter_map(|s| self.queues.get(s))
                .collect();
            // Known if at least one of its job servers answered: the jobs
            // waiting there (a server that did not answer adds nothing).
            if !answered.is_empty() {
                let waiting = w
                    .registered
                    .iter()
                    .flat_map(|f| answered.iter().filter_map(move |q| q.get(f)))
                    .fold(0u64, |a, b| a.saturating_add(b.waiting));
                w.queued = Some(waiting);
            }
            for s in &mut w.slots {
                if let Some(st) = s.unit.as_ref().and_then(|u| self.unit_stats.get(u)) {
                    s.memory_bytes = st.memory_current;
                    s.cpu_usage_nsec = st.cpu_usage_nsec;
                    s.tasks = st.tasks_current;
                } else if let Some(t) = s.pid.and_then(|p| self.usage.get(&p)) {
                    s.memory_bytes = Some(t.rss);
                    s.cpu_usage_nsec = t.cpu_nsec;
                    s.tasks = Some(t.tasks);
                }
            }
        }
    }
}

/// The usage of each process tree rooted at `roots`, from one scan of
/// /proc. Blocking: reads a file per process on the host.
pub fn usage_of(roots: &[u32]) -> HashMap<u32, Usage> {
    let tree = proc_tree();
    let children = children_of(&tree);
    roots
        .iter()
        .filter_map(|&r| Some((r, tree_usage(&tree, &children, r)?)))
        .collect()
}

/// Each process's children, from [`proc_tree`].
pub fn children_of(tree: &HashMap<u32, ProcInfo>) -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, p) in tree {
        children.entry(p.ppid).or_default().push(*pid);
    }
    children
}

#[derive(Debug, Default, Clone)]
pub struct ProcInfo {
    pub ppid: u32,
    pub rss: u64,
    pub cpu_nsec: Option<u64>,
    pub threads: u64,
}

#[derive(Debug, Default)]
pub struct Usage {
    pub rss: u64,
    pub cpu_nsec: Option<u64>,
    pub tasks: u64,
}

/// Every process on the host with its parent, RSS and CPU time.
pub fn proc_tree() -> HashMap<u32, ProcInfo> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let page = page_size();
    let ticks = clock_ticks();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(info) = parse_stat(&stat, page, ticks) {
            out.insert(pid, info);
        }
    }
    out
}

/// The usage fields of a /proc/PID/stat line ([`crate::procfs::parse_stat`]).
pub fn parse_stat(stat: &str, page: u64, ticks: u64) -> Option<ProcInfo> {
    let s = crate::procfs::parse_stat(stat)?;
    let cpu_nsec = (ticks > 0).then(|| (s.utime + s.stime) * (1_000_000_000 / ticks));
    Some(ProcInfo {
        ppid: s.ppid,
        rss: s.rss_pages * page,
        cpu_nsec,
        threads: s.threads,
    })
}

/// Sums a process and all its descendants.
pub fn tree_usage(
    tree: &HashMap<u32, ProcInfo>,
    children: &HashMap<u32, Vec<u32>>,
    root: u32,
) -> Option<Usage> {
    let mut u = Usage::default();
    let mut cpu = Some(0u64);
    let mut stack = vec![root];
    let mut found = false;
    while let Some(pid) = stack.pop() {
        if let Some(p) = tree.get(&pid) {
            found = true;
            u.rss = u.rss.saturating_add(p.rss);
            u.tasks = u.tasks.saturating_add(p.threads);
            cpu = match (cpu, p.cpu_nsec) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                _ => None,
            };
        }
        stack.extend(children.get(&pid).into_iter().flatten().copied());
    }
    u.cpu_nsec = cpu;
    found.then_some(u)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u64)
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let stat = "123 (a b) c)) S 45 123 123 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 2 0 100 1000 250 18446744073709551615";
        let p = parse_stat(stat, 4096, 100).expect("parses");
        assert_eq!(p.ppid, 45);
        assert_eq!(p.rss, 250 * 4096);
        assert_eq!(p.cpu_nsec, Some(100_000_000));
        assert_eq!(p.threads, 2);
        assert!(parse_stat("garbage", 4096, 100).is_none());
    }

    #[test]
    fn our_own_tree_has_memory() {
        let me = std::process::id();
        let u = usage_of(&[me, u32::MAX]);
        assert_eq!(u.len(), 1, "only pids that exist");
        assert!(u[&me].rss > 0);
        assert!(u[&me].tasks >= 1);
    }
}
