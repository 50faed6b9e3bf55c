//! The other hosts that serve the same worker, as the job servers' admin
//! `workers` lists show them: pure, so the counting rules are tested on
//! literal lists.
//!
//! Every slot's connections carry the client id
//! `slotman:SERVICE:WORKER:SLOT:PID`. A host's own slots are the ids with
//! its slots' numbers and pids; the others with the same SERVICE:WORKER
//! belong to other hosts. The client id names no host, so a host is an
//! address as a job server sees it; a slot connected to several job servers
//! is listed by each, and its one id joins the addresses it has there into
//! one host (a host reaching two job servers from two addresses counts
//! once, as long as one of its slots reaches both). Hosts behind one address
//! (NAT) count as one: each then grows as if the others were not there.
//!
//! Admin load: `workers` lists every connection of the job server (about
//! 50 bytes each), so it is read only while a pool grows for a queue, at
//! most every [`WORKERS_EVERY`], and less often the larger the fleet and the
//! list ([`workers_interval`]). `status` (a line per function) is read every
//! [`status_interval`] while a pool is saturated, as before.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::gearman::admin::WorkerInfo;

/// The other hosts of a worker's fleet, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// Hosts other than this one with a slot of the worker registered.
    pub hosts: u32,
    /// Their slots (each counted once, however many job servers list it).
    pub slots: u32,
    /// When the lists were read.
    pub at: Instant,
    /// Bytes of the largest `workers` answer, which sets the next read.
    pub answer_bytes: usize,
}

/// Least time between two `workers` reads for one pool.
pub const WORKERS_EVERY: Duration = Duration::from_secs(1);
/// The `workers` bytes per second that a whole fleet's managers together
/// may ask of one job server: each manager reads every
/// `hosts × answer / WORKERS_BUDGET` seconds, so the total stays near this
/// however many hosts there are.
pub const WORKERS_BUDGET: u64 = 4 << 20;
/// Least time between two `status` reads while a pool is saturated.
pub const STATUS_EVERY: Duration = Duration::from_millis(100);
/// `status` reads per second that a whole fleet may ask of one job server.
pub const STATUS_BUDGET: u32 = 1000;

/// How long after `peers` were read they are read again (while growing).
pub fn workers_interval(peers: &Peers) -> Duration {
    let fleet = u64::from(peers.hosts) + 1;
    let bytes = fleet.saturating_mul(peers.answer_bytes as u64);
    let secs = bytes as f64 / WORKERS_BUDGET as f64;
    WORKERS_EVERY.max(Duration::from_secs_f64(secs.min(3600.0)))
}

/// How often a saturated pool reads `status`, in a fleet of `hosts` hosts
/// (this one included): every 100 ms, less often past
/// [`STATUS_BUDGET`] reads a second over the fleet.
pub fn status_interval(hosts: u32) -> Duration {
    let per_host = Duration::from_secs(1) / STATUS_BUDGET;
    STATUS_EVERY.max(per_host.saturating_mul(hosts))
}

/// Counts the other hosts and their slots in the `workers` lists of the
/// job servers (one list per server that answered). `prefix` is
/// `slotman:SERVICE:WORKER:`, `own` the ids of this host's slots,
/// `functions` the worker's registered names: a connection counts when it
/// registered one of them.
pub fn observe(
    lists: &[Vec<WorkerInfo>],
    prefix: &str,
    own: &HashSet<String>,
    functions: &[String],
) -> (u32, u32) {
    // Hosts: (server, address) keys, joined when one id shows under two.
    let mut keys: HashMap<(usize, &str), usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut is_own: Vec<bool> = Vec::new();
    let mut id_key: HashMap<&str, usize> = HashMap::new();
    let mut foreign: HashSet<&str> = HashSet::new();
    fn root(parent: &mut [usize], mut k: usize) -> usize {
        while parent[k] != k {
            parent[k] = parent[parent[k]];
            k = parent[k];
        }
        k
    }
    for (server, list) in lists.iter().enumerate() {
        for w in list {
            if !w.client_id.starts_with(prefix)
                || !w.functions.iter().any(|f| functions.contains(f))
            {
                continue;
            }
            let next = parent.len();
            let key = *keys.entry((server, w.address.as_str())).or_insert(next);
            if key == next {
                parent.push(next);
                is_own.push(false);
            }
            let id = w.client_id.as_str();
            if own.contains(id) {
                is_own[key] = true;
            } else {
                foreign.insert(id);
            }
            match id_key.get(id) {
                Some(&other) => {
                    let (a, b) = (root(&mut parent, key), root(&mut parent, other));
                    parent[a] = b;
                }
                None => {
                    id_key.insert(id, key);
                }
            }
        }
    }
    let mut own_roots = HashSet::new();
    for (k, own) in is_own.iter().enumerate() {
        if *own {
            own_roots.insert(root(&mut parent, k));
        }
    }
    // A host is a group with another host's slot in it; a group with one
    // of ours is this host, whatever else shares its address.
    let mut hosts = HashSet::new();
    for id in &foreign {
        let r = root(&mut parent, id_key[id]);
        if !own_roots.contains(&r) {
            hosts.insert(r);
        }
    }
    (hosts.len() as u32, foreign.len() as u32)
}

/// Bytes of a parsed `workers` answer, about as the server wrote it.
pub fn answer_bytes(list: &[WorkerInfo]) -> usize {
    list.iter()
        .map(|w| {
            let functions: usize = w.functions.iter().map(|f| f.len() + 1).sum();
            w.fd.len() + w.address.len() + w.client_id.len() + functions + 5
        })
        .sum::<usize>()
        + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "slotman:svc:w:";

    fn list(text: &str) -> Vec<WorkerInfo> {
        crate::gearman::admin::parse_workers(text).expect("test list")
    }

    fn own(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn f() -> Vec<String> {
        vec!["w::sleep".to_string()]
    }

    #[test]
    fn counts_other_hosts_and_their_slots_once_per_id() {
        // Two job servers; this host (10.0.0.1) has slots 1 and 2; host
        // 10.0.0.2 has three slots, one connected to server 1 only; a
        // client, a plain worker and another service's slot do not count.
        let one = list(
            "30 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n\
             31 10.0.0.1 slotman:svc:w:2:101 : w::sleep\n\
             32 10.0.0.2 slotman:svc:w:1:500 : w::sleep\n\
             33 10.0.0.2 slotman:svc:w:2:501 : w::sleep\n\
             34 10.0.0.2 slotman:svc:w:3:502 : w::sleep\n\
             35 10.0.0.9 - :\n\
             36 10.0.0.7 - : w::sleep\n\
             37 10.0.0.8 slotman:other:w:1:9 : w::sleep\n.\n",
        );
        let two = list(
            "40 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n\
             41 10.0.0.1 slotman:svc:w:2:101 : w::sleep\n\
             42 10.0.0.2 slotman:svc:w:1:500 : w::sleep\n\
             43 10.0.0.2 slotman:svc:w:2:501 : w::sleep\n.\n",
        );
        let mine = own(&["slotman:svc:w:1:100", "slotman:svc:w:2:101"]);
        assert_eq!(observe(&[one.clone(), two], P, &mine, &f()), (1, 3));
        assert_eq!(observe(&[one], P, &mine, &f()), (1, 3));
        // Alone: nothing else registered.
        let alone = list("30 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n.\n");
        assert_eq!(observe(&[alone], P, &mine, &f()), (0, 0));
        assert_eq!(observe(&[], P, &mine, &f()), (0, 0));
    }

    #[test]
    fn slot_numbers_repeat_across_hosts_and_pids_may_too() {
        // Every host numbers its slots from 1: the pid tells them apart.
        let l = list(
            "1 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n\
             2 10.0.0.3 slotman:svc:w:1:200 : w::sleep\n.\n",
        );
        let mine = own(&["slotman:svc:w:1:100"]);
        assert_eq!(observe(std::slice::from_ref(&l), P, &mine, &f()), (1, 1));
        // Another host whose slot 1 has this host's slot 1's pid: its
        // address holds one of "our" ids, so it is taken for this host (a
        // rare clash; this host then grows as if that one were not there).
        let clash = list(
            "1 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n\
             2 10.0.0.2 slotman:svc:w:1:100 : w::sleep\n\
             3 10.0.0.3 slotman:svc:w:1:200 : w::sleep\n.\n",
        );
        assert_eq!(observe(&[clash], P, &mine, &f()), (1, 1));
    }

    #[test]
    fn a_host_with_two_addresses_counts_once_through_a_shared_slot() {
        // Host B reaches server 1 as 10.1.0.2 and server 2 as 10.2.0.2.
        let one = list(
            "1 10.1.0.1 slotman:svc:w:1:100 : w::sleep\n\
             2 10.1.0.2 slotman:svc:w:4:700 : w::sleep\n\
             3 10.1.0.2 slotman:svc:w:5:701 : w::sleep\n.\n",
        );
        let two = list(
            "1 10.2.0.1 slotman:svc:w:1:100 : w::sleep\n\
             2 10.2.0.2 slotman:svc:w:4:700 : w::sleep\n\
             3 10.2.0.2 slotman:svc:w:6:702 : w::sleep\n.\n",
        );
        let mine = own(&["slotman:svc:w:1:100"]);
        assert_eq!(observe(&[one, two], P, &mine, &f()), (1, 3));
    }

    #[test]
    fn neighbours_at_this_hosts_address_add_slots_not_hosts() {
        // Behind one address (NAT), or this host's own slot that has just
        // exited: its slots count, as no other host.
        let l = list(
            "1 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n\
             2 10.0.0.1 slotman:svc:w:9:900 : w::sleep\n.\n",
        );
        let mine = own(&["slotman:svc:w:1:100"]);
        assert_eq!(observe(&[l], P, &mine, &f()), (0, 1));
    }

    #[test]
    fn only_connections_that_registered_a_function_of_the_pool_count() {
        let l = list(
            "1 10.0.0.2 slotman:svc:w:1:5 : w::other\n\
             2 10.0.0.3 slotman:svc:w:1:6 :\n\
             3 10.0.0.4 slotman:svc:w:1:7 : w::other w::sleep\n.\n",
        );
        assert_eq!(observe(&[l], P, &own(&[]), &f()), (1, 1));
    }

    #[test]
    fn odd_ids_and_addresses() {
        // UTF-8, spaces inside an id, IPv6, a prefix of the prefix.
        let l = list(
            "1 ::1 slotman:svc:w:1:5 : w::sleep\n\
             2 fe80::2 slotman:svc:w:x y : w::sleep\n\
             3 10.0.0.5 slotman:svc:wx:1:5 : w::sleep\n\
             4 10.0.0.6 slotman:svc:w:é:1 : w::sleep\n\
             5 10.0.0.7 slotman:svc : w::sleep\n.\n",
        );
        assert_eq!(observe(&[l], P, &own(&[]), &f()), (3, 3));
    }

    #[test]
    fn intervals_grow_with_the_fleet_and_the_list() {
        let at = Instant::now();
        let p = |hosts, answer_bytes| Peers {
            hosts,
            slots: 0,
            at,
            answer_bytes,
        };
        assert_eq!(workers_interval(&p(1, 1000)), WORKERS_EVERY);
        // 300 hosts × 40 slots at ~50 bytes: a ~600 kB list.
        let big = workers_interval(&p(299, 720_000));
        assert!(big > Duration::from_secs(40) && big < Duration::from_secs(60));
        assert_eq!(
            workers_interval(&p(u32::MAX, usize::MAX)),
            Duration::from_secs(3600)
        );
        assert_eq!(status_interval(1), STATUS_EVERY);
        assert_eq!(status_interval(100), STATUS_EVERY);
        assert_eq!(status_interval(300), Duration::from_millis(300));
        assert_eq!(
            status_interval(u32::MAX),
            Duration::from_secs(1) / 1000 * u32::MAX
        );
    }

    #[test]
    fn answer_bytes_is_about_the_text() {
        let text = "30 10.0.0.1 slotman:svc:w:1:100 : w::sleep\n.\n";
        let n = answer_bytes(&list(text));
        assert!(n.abs_diff(text.len()) <= 4, "{n} vs {}", text.len());
    }
}
