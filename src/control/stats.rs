//! Memory, CPU and task counts of slots, for `slotman status` and metrics.
//! Plain processes: summed over the runner's process tree from /proc. A
//! value the host does not provide stays `None` (shown as "-"), never 0.

use std::collections::HashMap;

use super::proto::ServiceStatus;

/// Fills each worker's `queued` from its job servers' admin `status`.
pub async fn fill_queues(status: &mut ServiceStatus) {
    let mut servers: Vec<String> = status
        .workers
        .iter()
        .flat_map(|w| w.job_servers.clone())
        .collect();
    servers.sort();
    servers.dedup();
    let mut waiting: HashMap<String, u64> = HashMap::new();
    let mut answered = false;
    for s in servers {
        if let Ok(rows) = crate::gearman::admin::status(&s, std::time::Duration::from_secs(1)).await
        {
            answered = true;
            for r in rows {
                *waiting.entry(r.name).or_default() += r.queued.saturating_sub(r.running);
            }
        }
    }
    if answered {
        for w in &mut status.workers {
            w.queued = Some(
                w.registered
                    .iter()
                    .map(|f| waiting.get(f).copied().unwrap_or(0))
                    .sum(),
            );
        }
    }
}

/// Fills `memory_bytes`, `cpu_usage_nsec` and `tasks` of every slot, and
/// each worker's queue depth.
pub async fn fill(status: &mut ServiceStatus) {
    fill_with(status, None).await
}

/// [`fill`], reading scopes' cgroup accounting from systemd where `bus` is given.
pub async fn fill_with(status: &mut ServiceStatus, bus: Option<&crate::placement::scope::Systemd>) {
    fill_queues(status).await;
    // Under systemd the scope's cgroup is the truth (it counts everything
    // the slot started); /proc is the fallback.
    if let Some(bus) = bus {
        for w in &mut status.workers {
            for s in &mut w.slots {
                let Some(unit) = s.unit.clone() else { continue };
                if let Ok(st) = bus.unit_stats(&unit).await {
                    s.memory_bytes = st.memory_current;
                    s.cpu_usage_nsec = st.cpu_usage_nsec;
                    s.tasks = st.tasks_current;
                }
            }
        }
    }
    let tree = tokio::task::spawn_blocking(proc_tree)
        .await
        .unwrap_or_default();
    for w in &mut status.workers {
        for s in &mut w.slots {
            let Some(pid) = s.pid else { continue };
            if s.unit.is_some() && bus.is_some() {
                continue;
            }
            if let Some(t) = tree_usage(&tree, pid) {
                s.memory_bytes = Some(t.rss);
                s.cpu_usage_nsec = t.cpu_nsec;
                s.tasks = Some(t.tasks);
            }
        }
    }
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
pub fn tree_usage(tree: &HashMap<u32, ProcInfo>, root: u32) -> Option<Usage> {
    let mut u = Usage::default();
    let mut cpu = Some(0u64);
    let mut stack = vec![root];
    let mut found = false;
    while let Some(pid) = stack.pop() {
        if let Some(p) = tree.get(&pid) {
            found = true;
            u.rss += p.rss;
            u.tasks += p.threads;
            cpu = match (cpu, p.cpu_nsec) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        stack.extend(tree.iter().filter(|(_, p)| p.ppid == pid).map(|(c, _)| *c));
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
        let tree = proc_tree();
        let u = tree_usage(&tree, std::process::id()).expect("we exist");
        assert!(u.rss > 0);
        assert!(u.tasks >= 1);
    }
}
