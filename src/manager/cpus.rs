//! Which CPU each stdio slot's runner and handler share (`pin_cpu`), and
//! when pinning is on. The slot does the pinning (`slot/cpu.rs`); the
//! manager sees every slot of the service, so it spreads them.

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs the manager may use (its affinity at start: systemd's
/// `CPUAffinity=`, `taskset`, the cpuset), in the order slots fill them,
/// and how many live slots each has.
pub struct Cpus {
    order: Vec<u32>,
    taken: Vec<usize>,
}

impl Cpus {
    /// This process's CPUs, the order rotated by `service` so that several
    /// managers on one host do not all start on the first CPU.
    pub fn of_this_process(service: &str) -> Cpus {
        let cpus: Vec<u32> = match sched_getaffinity(Pid::from_raw(0)) {
            Ok(set) => (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .map(|c| c as u32)
                .collect(),
            Err(_) => Vec::new(),
        };
        Cpus::new(cpus, service)
    }

    pub fn new(mut cpus: Vec<u32>, service: &str) -> Cpus {
        if !cpus.is_empty() {
            // FNV-1a: stable across runs, unlike std's hasher.
            let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let n = cpus.len();
            cpus.rotate_left((hash % n as u64) as usize);
        }
        let taken = vec![0; cpus.len()];
        Cpus { order: cpus, taken }
    }

    /// The CPU for a new slot: the one with the fewest live slots, the
    /// earliest in order on a tie; `None` with fewer than two CPUs.
    pub fn take(&mut self) -> Option<u32> {
        if self.order.len() < 2 {
            return None;
        }
        let (i, _) = self
            .taken
            .iter()
            .enumerate()
            .min_by_key(|&(i, n)| (*n, i))?;
        self.taken[i] += 1;
        Some(self.order[i])
    }

    /// A slot that had `cpu` has left.
    pub fn give_back(&mut self, cpu: u32) {
        if let Some(i) = self.order.iter().position(|&c| c == cpu) {
            self.taken[i] = self.taken[i].saturating_sub(1);
        }
    }

    /// Pinning pays only when the pairs must share CPUs anyway: with as
    /// many CPUs as slots, a runner and its handler gain more from running
    /// on two CPUs at once (bench/floor/measure.py, N = 1 with prefetch).
    pub fn pinning(&self, slots: usize) -> bool {
        self.order.len() >= 2 && slots > self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_over_the_cpus_least_taken_first() {
        let mut cpus = Cpus::new(vec![0, 1, 2], "");
        let taken: Vec<u32> = (0..6).filter_map(|_| cpus.take()).collect();
        for cpu in [0, 1, 2] {
            assert_eq!(taken.iter().filter(|&&c| c == cpu).count(), 2, "{taken:?}");
        }
        // The CPU whose slots left is filled first.
        cpus.give_back(1);
        cpus.give_back(1);
        cpus.give_back(0);
        assert_eq!(cpus.take(), Some(1));
        assert_eq!(cpus.take(), Some(0));
        assert_eq!(cpus.take(), Some(1));
    }

    #[test]
    fn services_start_on_different_cpus_and_one_cpu_never_pins() {
        let firsts: std::collections::BTreeSet<u32> = ["a", "b", "c", "d", "mail", "thumbs"]
            .iter()
            .filter_map(|s| Cpus::new(vec![0, 1, 2, 3], s).take())
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
        let mut one = Cpus::new(vec![3], "x");
        assert_eq!(one.take(), None);
        assert!(!one.pinning(10));
    }

    #[test]
    fn pinning_is_on_only_with_more_slots_than_cpus() {
        let cpus = Cpus::new(vec![0, 1], "");
        assert!(!cpus.pinning(0));
        assert!(!cpus.pinning(2));
        assert!(cpus.pinning(3));
    }
}
