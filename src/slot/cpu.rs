//! `pin_cpu`: a slot's runner and its stdio handler share one CPU while
//! they stream short jobs.
//!
//! Every short job is a ping-pong between the two processes (job in, answer
//! out). On a host with more busy processes than CPUs, the scheduler puts
//! the one it wakes wherever a CPU looks free, so each hand-over is a
//! cross-CPU wake-up (an inter-processor interrupt, on a VM an exit to the
//! hypervisor) and a cold cache. On one CPU the hand-over is a plain switch.
//! At 4 slots on 2 CPUs that saves about a seventh of the runner's CPU per
//! job and a fifth of the handler's (bench/floor/measure.py; BENCHMARKS.md).
//!
//! The manager picks the CPU (spreading its slots, `manager/cpus.rs`) and
//! says when pinning is on: only while the service has more slots than
//! CPUs. With fewer, the pair gains more from running on two CPUs at once.
//! A job that runs for [`SHORT_JOB`](super::report::SHORT_JOB) unpins the
//! pair, with every thread and descendant of the handler (a child forked
//! at the job's start inherited the pinned mask), so long jobs are
//! balanced by the kernel as usual; the next short job pins it again.
//! sched_setaffinity(2) runs on those transitions only; a job in a stream
//! costs two atomic loads.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// One slot's pinning state.
pub struct CpuPair {
    /// The runner's affinity at start, restored when unpinned; `None`
    /// when this slot never pins (no CPU assigned, not in the mask, not a
    /// stdio slot).
    allowed: Option<(CpuSet, CpuSet)>,
    /// The manager says pin (more slots than CPUs, `pin_cpu` on).
    wanted: AtomicBool,
    /// The pair is pinned now.
    pinned: AtomicBool,
    /// The stdio handler's pid (0: none yet).
    handler: AtomicU32,
    /// Serialises changes (the manager's message arrives on another task).
    change: Mutex<()>,
}

impl CpuPair {
    /// `cpu`: the manager's pick; `wanted`: whether pinning is on now.
    pub fn new(cpu: Option<u32>, wanted: bool) -> CpuPair {
        let allowed = cpu.and_then(|cpu| {
            let original = sched_getaffinity(Pid::from_raw(0)).ok()?;
            let cpu = cpu as usize;
            if !original.is_set(cpu).ok()? {
                // The slot's cgroup or unit allows other CPUs than the
                // manager's: leave the kernel to it.
                return None;
            }
            let mut one = CpuSet::new();
            one.set(cpu).ok()?;
            Some((one, original))
        });
        CpuPair {
            allowed,
            wanted: AtomicBool::new(wanted),
            pinned: AtomicBool::new(false),
            handler: AtomicU32::new(0),
            change: Mutex::new(()),
        }
    }

    /// The manager's word: off applies at once, on at the next short
    /// job's end (only jobs tell whether they are short).
    pub fn set_wanted(&self, on: bool) {
        self.wanted.store(on, Ordering::Relaxed);
        if !on {
            self.long_job();
        }
    }

    /// A handler process started. It inherited the runner's mask when it
    /// was forked, which may have changed since (a handler is replaced
    /// inside a job, and the job may have turned long meanwhile): it gets
    /// the pair's current one.
    pub fn set_handler(&self, pid: u32) {
        let Some((one, original)) = &self.allowed else {
            return;
        };
        let _serial = self.change.lock().unwrap_or_else(|e| e.into_inner());
        self.handler.store(pid, Ordering::Relaxed);
        let set = if self.is_pinned() { one } else { original };
        set_affinity(pid, set);
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    /// After a short job: pin the pair if the manager wants it and it is
    /// not yet, unpin if the manager no longer wants it. Two loads when
    /// nothing changes.
    pub fn after_short_job(&self) {
        let want = self.wanted.load(Ordering::Relaxed);
        if want != self.is_pinned() {
            self.apply(want);
        }
    }

    /// A job has run long: the pair goes back to every CPU it may use.
    pub fn long_job(&self) {
        if self.is_pinned() {
            self.apply(false);
        }
    }

    fn apply(&self, pin: bool) {
        let Some((one, original)) = &self.allowed else {
            return;
        };
        let _serial = self.change.lock().unwrap_or_else(|e| e.into_inner());
        let handler = self.handler.load(Ordering::Relaxed);
        // A pid is touched only while it is our child: a handler that died
        // and was reaped may have left its pid to an unrelated process.
        let handler = (handler != 0 && is_child(handler)).then_some(handler);
        if pin {
            // The main thread only: that is the one a job hands over to.
            if let Some(pid) = handler {
                set_affinity(pid, one);
            }
            if let Err(e) = sched_setaffinity(Pid::from_raw(0), one) {
                tracing::debug!("cpu affinity of the runner: {e}");
                // Both or neither.
                if let Some(pid) = handler {
                    set_affinity(pid, original);
                }
                return;
            }
        } else {
            // Every thread of the handler and everything it started while
            // pinned (a child forked at a long job's start inherited the
            // pinned mask): a long job runs on every CPU.
            if let Some(pid) = handler {
                unpin_tree(pid, original);
            }
            if let Err(e) = sched_setaffinity(Pid::from_raw(0), original) {
                tracing::debug!("cpu affinity of the runner: {e}");
            }
        }
        self.pinned.store(pin, Ordering::Relaxed);
    }
}

fn set_affinity(tid: u32, set: &CpuSet) {
    if let Err(e) = sched_setaffinity(Pid::from_raw(tid as i32), set) {
        // It may have just exited.
        tracing::debug!("cpu affinity of {tid}: {e}");
    }
}

/// Whether `pid` is a child of this process (/proc/PID/stat's ppid).
fn is_child(pid: u32) -> bool {
    crate::procfs::stat(pid).is_some_and(|s| s.ppid == std::process::id())
}

/// Sets `set` on every thread of `pid` and of its descendants
/// (`/proc/PID/task/TID/children`); bounded, as a fork bomb must not hold
/// the runner.
fn unpin_tree(pid: u32, set: &CpuSet) {
    let mut todo = vec![pid];
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            set_affinity(tid, set);
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).expect("affinity")
    }

    fn first_allowed() -> usize {
        let m = mask();
        (0..CpuSet::count())
            .find(|&c| m.is_set(c).unwrap_or(false))
            .expect("some CPU")
    }

    // One test touches this thread's affinity (tests run on threads of one
    // process, and sched_setaffinity(0) is per thread): pin, unpin, restore.
    #[test]
    fn pins_to_its_cpu_while_wanted_and_restores_the_mask_after_a_long_job() {
        let before = mask();
        let cpu = first_allowed();
        let pair = CpuPair::new(Some(cpu as u32), true);
        pair.after_short_job();
        assert!(pair.is_pinned());
        let now = mask();
        assert!(now.is_set(cpu).unwrap());
        assert_eq!(
            (0..CpuSet::count())
                .filter(|&c| now.is_set(c).unwrap_or(false))
                .count(),
            1
        );
        pair.long_job();
        assert!(!pair.is_pinned());
        assert_eq!(mask(), before);
        pair.set_wanted(false);
        pair.after_short_job();
        assert!(!pair.is_pinned());
        assert_eq!(mask(), before);
    }

    #[test]
    fn a_cpu_outside_the_mask_or_none_never_pins() {
        let pair = CpuPair::new(Some(CpuSet::count() as u32 + 1), true);
        pair.after_short_job();
        assert!(!pair.is_pinned());
        let none = CpuPair::new(None, false);
        none.set_wanted(true);
        none.after_short_job();
        assert!(!none.is_pinned());
    }
}
