//! `recycle_rss`: a slot whose handler has grown past the limit is replaced
//! after the job in hand, as uWSGI's reload-on-rss and Celery's
//! max-memory-per-child do for leaky workers.

use std::time::{Duration, Instant};

/// Short jobs check at most this often (reading /proc costs ~3 µs; a stream
/// of 20 µs jobs must not pay it each time).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// When to look at the handler's memory, and what the limit is.
#[derive(Debug)]
pub struct RssCheck {
    limit: u64,
    last: Option<Instant>,
}

impl RssCheck {
    pub fn new(limit: Option<u64>) -> Option<RssCheck> {
        limit.map(|limit| RssCheck { limit, last: None })
    }

    /// After a job (or when the slot goes idle, `long_job` = true): the
    /// handler's RSS if it is over the limit. Long jobs are checked each
    /// time, short ones at most every [`CHECK_EVERY`].
    pub fn over(&mut self, pid: Option<u32>, long_job: bool, now: Instant) -> Option<u64> {
        let due = long_job
            || match self.last {
                None => true,
                Some(t) => now.duration_since(t) >= CHECK_EVERY,
            };
        if !due {
            return None;
        }
        self.last = Some(now);
        rss(pid?).filter(|&rss| rss > self.limit)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Resident memory of one process in bytes (/proc/PID/statm: pages).
pub fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u64);
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_rss_is_read() {
        let mine = rss(std::process::id()).expect("own statm");
        assert!(mine > 100 * 1024, "{mine}");
    }

    #[test]
    fn short_jobs_are_checked_once_a_second_long_ones_always() {
        let me = Some(std::process::id());
        let mut c = RssCheck::new(Some(1)).expect("limit set");
        let t0 = Instant::now();
        assert!(c.over(me, false, t0).is_some(), "first check happens");
        assert!(c.over(me, false, t0 + Duration::from_millis(10)).is_none());
        assert!(c.over(me, true, t0 + Duration::from_millis(20)).is_some());
        assert!(c.over(me, false, t0 + Duration::from_secs(2)).is_some());
        let mut high = RssCheck::new(Some(u64::MAX)).expect("limit set");
        assert!(high.over(me, true, t0).is_none());
        assert!(RssCheck::new(None).is_none());
        assert!(
            c.over(None, true, t0).is_none(),
            "no process, nothing to measure"
        );
    }
}
