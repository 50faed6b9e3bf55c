//! The scaling policy: a pure function from a pool's state to decisions.
//!
//! No async, no clock (`now` is a parameter), no I/O, cannot fail. The
//! manager calls [`decide`] after every event and carries out the actions.
//!
//! The rule, in one line: a pool wants `target = clamp(busy + max(queued, 1),
//! min, max)` slots while anything is busy or queued, and `min` otherwise.
//! With other hosts serving the same queue ([`Fleet`]), `queued` is replaced
//! by this host's share of it ([`fleet_growth`]), so that a fleet grows to
//! about `busy + queued` slots in all, not that many per host.
//! It grows at once (no tick) while it has fewer than `target` slots, and
//! retires an idle slot only when it has more *ready* slots than `target` and
//! that slot has been idle for `idle_timeout`. Because one spare slot is part
//! of the target while work is running, a steady load of N busy slots keeps
//! N + 1 and never flaps between N and N + 1 (the seed module's fault). A busy
//! slot is never retired; a slot with outdated configuration is replaced with
//! a surge of one (its replacement is ready before it is drained).

use std::time::{Duration, Instant};

/// What the policy needs to know of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotView {
    pub id: u32,
    pub state: SlotPhase,
    /// Started under a configuration that has since changed (reload).
    pub outdated: bool,
    /// Past this instant the slot is recycled (`max_lifetime` + splay).
    pub recycle_at: Option<Instant>,
}

/// The phases the policy distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPhase {
    /// Process placed, not yet registered with the job servers.
    Starting,
    Idle {
        since: Instant,
    },
    Busy,
    /// Told to leave; finishing its job. Not counted as capacity.
    Draining,
}

/// A pool as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub min: u32,
    pub max: u32,
    pub idle_timeout: Duration,
    pub slots: Vec<SlotView>,
    /// Jobs waiting at the job servers for this pool's functions (0 if unknown).
    pub queued: u64,
    /// The other hosts serving the same queue, as the job servers showed
    /// them when `queued` was read; `None` when unknown (growth as alone).
    pub fleet: Option<Fleet>,
    /// No new slot before this instant (crash back-off / failed worker).
    pub hold_until: Option<Instant>,
    /// The worker was removed from the config: drain everything.
    pub removed: bool,
    /// The manager is stopping: start nothing.
    pub stopping: bool,
}

/// What the job servers tell one host of the fleet it is part of: every
/// host that runs this service's worker against the same job servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fleet {
    /// Hosts with a slot of this worker registered, this one included.
    pub hosts: u32,
    /// The other hosts' slots of this worker (registered, busy or idle).
    pub peer_slots: u32,
    /// Jobs running for the pool's functions, over every job server.
    pub running: u64,
    /// Since when every queue read has found jobs waiting.
    pub waiting_since: Instant,
}

/// How long jobs may wait before a host also takes a share of the jobs
/// that another host's fair share left waiting (that host at its `max`,
/// failing, or slow to start): longer than slots take to start, so that a
/// peer's slots still on their way are not doubled.
pub const STRANDED_AFTER: Duration = Duration::from_secs(2);

/// How many slots to add for the queue, this host's part of the fleet's.
///
/// With `H` hosts (this one included), `P` slots on the others, `R` jobs
/// running and `W` waiting over every job server, and `b` slots busy here:
///
/// ```text
/// need  N = b + min(R - b, P) + W      jobs the fleet's slots hold or should take
/// fair  F = ceil(N / H)                this host's even share of them
/// grow  g = min(W, F - b)              catch up to F, never past the queue
/// after STRANDED_AFTER of waiting:  g = max(g, ceil(W / H))
/// ```
///
/// `N` is the same whichever host's slots took the jobs already running, so
/// hosts that read the queue at different moments (one before, one after
/// the other's new slots took their jobs) still add up to about `N`, and no
/// host waits for another: each grows on its own read. Alone (`H = 1`) this
/// is `W`, the single-host rule. The stranded term makes progress when a
/// host cannot take its share (at `max`, failing, or several hosts behind
/// one address): every host then takes `1/H` of what still waits per read.
///
/// A host with no slot registered (`ready` = 0: `min = 0`, or all its slots
/// starting) is not in the other hosts' count, so they share the queue
/// without it: it starts one slot (to be counted) and takes a share of its
/// own only once jobs are stranded.
pub fn fleet_growth(busy: u32, ready: u32, queued: u64, fleet: &Fleet, now: Instant) -> u64 {
    let hosts = u64::from(fleet.hosts.max(1));
    let stranded = now.saturating_duration_since(fleet.waiting_since) >= STRANDED_AFTER;
    if ready == 0 && hosts > 1 && !stranded {
        return 0;
    }
    let busy = u64::from(busy);
    let peers_running = fleet
        .running
        .saturating_sub(busy)
        .min(u64::from(fleet.peer_slots));
    let need = busy.saturating_add(peers_running).saturating_add(queued);
    let fair = need.div_ceil(hosts);
    let mut grow = queued.min(fair.saturating_sub(busy));
    if stranded {
        grow = grow.max(queued.div_ceil(hosts));
    }
    grow
}

/// Why the pool changes; the manager logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    BelowMin,
    AllBusy {
        busy: u32,
    },
    /// Jobs waiting; `hosts` > 1: this host grows for its share of them.
    Queued {
        queued: u64,
        hosts: u32,
    },
    Idle(Duration),
    Lifetime,
    ConfigChanged,
    Removed,
    AboveMax {
        max: u32,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::BelowMin => write!(f, "below min"),
            Reason::AllBusy { busy } => write!(f, "all {busy} slots busy"),
            Reason::Queued {
                queued,
                hosts: 0 | 1,
            } => write!(f, "{queued} jobs queued"),
            Reason::Queued { queued, hosts } => {
                write!(
                    f,
                    "{queued} jobs queued, this host's share of {hosts} hosts"
                )
            }
            Reason::Idle(d) => write!(f, "idle {}", crate::config::values::human_duration(*d)),
            Reason::Lifetime => write!(f, "max_lifetime reached"),
            Reason::ConfigChanged => write!(f, "configuration changed"),
            Reason::Removed => write!(f, "worker removed from config"),
            Reason::AboveMax { max } => write!(f, "above max {max}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start `count` new slots.
    Start { count: u32, reason: Reason },
    /// Drain this slot (it finishes any job in hand, then exits).
    Drain { slot: u32, reason: Reason },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Call `decide` again at this instant even if nothing happens.
    pub wake_at: Option<Instant>,
}

/// The number of slots a pool alone should have right now.
pub fn target(min: u32, max: u32, busy: u32, queued: u64) -> u32 {
    let want = if busy > 0 || queued > 0 {
        let extra = queued.max(1).min(u32::MAX as u64) as u32;
        busy.saturating_add(extra)
    } else {
        min
    };
    want.clamp(min, max.max(min))
}

/// The number of slots the pool should have right now, given what the job
/// servers said of the fleet (if anything): [`target`] with the queue
/// replaced by this host's share of it while jobs wait.
pub fn fleet_target(
    (min, max): (u32, u32),
    (busy, ready): (u32, u32),
    queued: u64,
    fleet: Option<&Fleet>,
    now: Instant,
) -> u32 {
    match fleet {
        Some(fleet) if queued > 0 => {
            let grow = fleet_growth(busy, ready, queued, fleet, now).max(1);
            let want = u64::from(busy).saturating_add(grow);
            (want.min(u64::from(u32::MAX)) as u32).clamp(min, max.max(min))
        }
        _ => target(min, max, busy, queued),
    }
}

pub fn decide(pool: &PoolView, now: Instant) -> Decision {
    let mut d = Decision::default();
    let wake = |t: Instant, d: &mut Decision| {
        d.wake_at = Some(d.wake_at.map_or(t, |w| w.min(t)));
    };

    if pool.removed {
        for s in pool.slots.iter().filter(|s| s.state != SlotPhase::Draining) {
            d.actions.push(Action::Drain {
                slot: s.id,
                reason: Reason::Removed,
            });
        }
        return d;
    }

    // Lifetime recycling first: those slots stop counting as capacity, so the
    // growth rule below starts their replacements in the same decision.
    let mut recycled: Vec<u32> = Vec::new();
    for s in &pool.slots {
        if s.state == SlotPhase::Draining || s.state == SlotPhase::Starting {
            continue;
        }
        if let Some(at) = s.recycle_at {
            if at <= now {
                recycled.push(s.id);
                d.actions.push(Action::Drain {
                    slot: s.id,
                    reason: Reason::Lifetime,
                });
            } else {
                wake(at, &mut d);
            }
        }
    }
    let active: Vec<&SlotView> = pool
        .slots
        .iter()
        .filter(|s| s.state != SlotPhase::Draining && !recycled.contains(&s.id))
        .collect();
    let busy = active.iter().filter(|s| s.state == SlotPhase::Busy).count() as u32;
    let starting = active
        .iter()
        .filter(|s| s.state == SlotPhase::Starting)
        .count() as u32;
    let total = active.len() as u32;
    let ready = total - starting;
    let target = fleet_target(
        (pool.min, pool.max),
        (busy, ready),
        pool.queued,
        pool.fleet.as_ref(),
        now,
    );
    let held = pool.stopping || pool.hold_until.is_some_and(|t| t > now);
    if let Some(t) = pool.hold_until.filter(|t| *t > now) {
        wake(t, &mut d);
    }
    // Jobs still waiting when the stranded term starts: look again then.
    if let Some(f) = pool.fleet.filter(|f| pool.queued > 0 && f.hosts > 1) {
        if let Some(t) = crate::config::values::after(f.waiting_since, STRANDED_AFTER) {
            if t > now {
                wake(t, &mut d);
            }
        }
    }

    // Grow.
    if !held {
        let outdated = active.iter().filter(|s| s.outdated).count() as u32;
        if total < target {
            let reason = if total < pool.min {
                Reason::BelowMin
            } else if pool.queued > 0 {
                Reason::Queued {
                    queued: pool.queued,
                    hosts: pool.fleet.map_or(1, |f| f.hosts),
                }
            } else {
                Reason::AllBusy { busy }
            };
            d.actions.push(Action::Start {
                count: target - total,
                reason,
            });
        } else if outdated > 0 && starting == 0 && total - outdated < target {
            // Replace outdated slots one at a time, the new one first.
            d.actions.push(Action::Start {
                count: 1,
                reason: Reason::ConfigChanged,
            });
        }
    }

    // Shrink: only ready capacity above target counts, so a replacement that
    // is still starting never lets its predecessor go early.
    let mut excess = ready.saturating_sub(target);
    let drain = |s: &SlotView, reason: Reason, d: &mut Decision, excess: &mut u32| {
        d.actions.push(Action::Drain { slot: s.id, reason });
        *excess -= 1;
    };
    // Outdated slots go first and at once; idle ones before busy ones (a busy
    // one finishes its job before it leaves).
    for want_busy in [false, true] {
        for s in active.iter().filter(|s| s.outdated) {
            if excess == 0 {
                break;
            }
            let is_busy = s.state == SlotPhase::Busy;
            if is_busy == want_busy && s.state != SlotPhase::Starting {
                drain(s, Reason::ConfigChanged, &mut d, &mut excess);
            }
        }
    }
    // Above a (lowered) max: leave at once, idle first, then busy ones drain.
    let drained_so_far = |d: &Decision| {
        d.actions
            .iter()
            .filter(|a| matches!(a, Action::Drain { .. }))
            .count() as u32
    };
    let mut over_max = ready
        .saturating_sub(drained_so_far(&d))
        .saturating_sub(pool.max);
    for want_busy in [false, true] {
        for s in active.iter().filter(|s| !s.outdated) {
            if over_max == 0 || excess == 0 {
                break;
            }
            let is_busy = s.state == SlotPhase::Busy;
            if is_busy == want_busy && s.state != SlotPhase::Starting {
                drain(s, Reason::AboveMax { max: pool.max }, &mut d, &mut excess);
                over_max -= 1;
            }
        }
    }
    // Then current idle slots, longest idle first, once idle long enough.
    // Nothing to retire (the common case under load): skip the scan and sort.
    if excess == 0 {
        return d;
    }
    let mut idle: Vec<(&SlotView, Instant)> = active
        .iter()
        .filter(|s| !s.outdated)
        .filter_map(|s| match s.state {
            SlotPhase::Idle { since } => Some((*s, since)),
            _ => None,
        })
        .collect();
    idle.sort_by_key(|(s, since)| (*since, std::cmp::Reverse(s.id)));
    for (s, since) in idle {
        if excess == 0 {
            break;
        }
        if d.actions
            .iter()
            .any(|a| matches!(a, Action::Drain { slot, .. } if *slot == s.id))
        {
            continue;
        }
        // An idle_timeout the clock cannot hold is never reached, by this
        // slot nor by the ones idle since later.
        let Some(eligible) = crate::config::values::after(since, pool.idle_timeout) else {
            break;
        };
        if eligible <= now {
            drain(
                s,
                Reason::Idle(now.saturating_duration_since(since)),
                &mut d,
                &mut excess,
            );
        } else {
            wake(eligible, &mut d);
            break; // Sorted: the others became idle later.
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    const T: Duration = Duration::from_secs(10);

    fn slot(id: u32, state: SlotPhase) -> SlotView {
        SlotView {
            id,
            state,
            outdated: false,
            recycle_at: None,
        }
    }

    fn pool(min: u32, max: u32, slots: Vec<SlotView>) -> PoolView {
        PoolView {
            min,
            max,
            idle_timeout: T,
            slots,
            queued: 0,
            fleet: None,
            hold_until: None,
            removed: false,
            stopping: false,
        }
    }

    fn starts(d: &Decision) -> u32 {
        d.actions
            .iter()
            .map(|a| match a {
                Action::Start { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }

    fn drained(d: &Decision) -> Vec<u32> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Drain { slot, .. } => Some(*slot),
                _ => None,
            })
            .collect()
    }

    /// One row: pool description → (slots started, slots drained).
    fn check(p: PoolView, now: Instant, want_starts: u32, want_drained: &[u32]) {
        let d = decide(&p, now);
        assert_eq!(starts(&d), want_starts, "starts for {p:?}: {d:?}");
        assert_eq!(drained(&d), want_drained, "drains for {p:?}: {d:?}");
    }

    #[test]
    fn table() {
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(60);
        let just_now = now - Duration::from_secs(1);
        let idle_old = SlotPhase::Idle { since: long_ago };
        let idle_new = SlotPhase::Idle { since: just_now };
        use SlotPhase::*;
        // Empty pool starts min.
        check(pool(2, 5, vec![]), now, 2, &[]);
        // min = max = 0 does nothing.
        check(pool(0, 0, vec![]), now, 0, &[]);
        // All busy, below max: grow by one.
        check(pool(1, 4, vec![slot(1, Busy)]), now, 1, &[]);
        // All busy but one already starting: wait for it.
        check(
            pool(1, 4, vec![slot(1, Busy), slot(2, Starting)]),
            now,
            0,
            &[],
        );
        // Max reached: never more.
        check(pool(1, 2, vec![slot(1, Busy), slot(2, Busy)]), now, 0, &[]);
        // min = max, all busy: nothing to do.
        check(
            pool(3, 3, vec![slot(1, Busy), slot(2, Busy), slot(3, Busy)]),
            now,
            0,
            &[],
        );
        // Steady load: N busy + 1 spare idle for ages is kept (no flapping).
        check(
            pool(1, 8, vec![slot(1, Busy), slot(2, Busy), slot(3, idle_old)]),
            now,
            0,
            &[],
        );
        // Load gone: idle slots above min retire once idle long enough.
        // (the newest go first: equal idle time, higher id).
        check(
            pool(
                1,
                4,
                vec![slot(1, idle_old), slot(2, idle_old), slot(3, idle_old)],
            ),
            now,
            0,
            &[3, 2],
        );
        // ... but not before idle_timeout.
        check(
            pool(1, 4, vec![slot(1, idle_new), slot(2, idle_new)]),
            now,
            0,
            &[],
        );
        // Busy slots are never retired, however many.
        check(
            pool(
                0,
                4,
                vec![slot(1, Busy), slot(2, Busy), slot(3, Busy), slot(4, Busy)],
            ),
            now,
            0,
            &[],
        );
        // Never below min, even all idle for ages.
        check(
            pool(2, 4, vec![slot(1, idle_old), slot(2, idle_old)]),
            now,
            0,
            &[],
        );
        // Queued jobs: grow to busy + queued in one step, capped at max.
        let mut q = pool(1, 16, vec![slot(1, Busy)]);
        q.queued = 100;
        check(q, now, 15, &[]);
        // A held pool (back-off or failed) starts nothing.
        let mut h = pool(2, 4, vec![]);
        h.hold_until = Some(now + T);
        check(h.clone(), now, 0, &[]);
        assert_eq!(decide(&h, now).wake_at, Some(now + T));
        // Stopping starts nothing.
        let mut s = pool(2, 4, vec![]);
        s.stopping = true;
        check(s, now, 0, &[]);
        // max lowered by a reload: the surplus leaves at once, idle first.
        check(
            pool(
                1,
                1,
                vec![slot(1, Busy), slot(2, idle_new), slot(3, idle_new)],
            ),
            now,
            0,
            &[2, 3],
        );
        // Removed: everything drains, busy included (it finishes its job).
        let mut r = pool(1, 4, vec![slot(1, Busy), slot(2, idle_new)]);
        r.removed = true;
        check(r, now, 0, &[1, 2]);
    }

    #[test]
    fn outdated_slots_are_replaced_one_at_a_time_new_first() {
        let now = Instant::now();
        let idle = SlotPhase::Idle { since: now };
        let old = |id, st| SlotView {
            outdated: true,
            ..slot(id, st)
        };
        // Two outdated idle slots at min 2: start one replacement, drain none.
        check(pool(2, 2, vec![old(1, idle), old(2, idle)]), now, 1, &[]);
        // Replacement still starting: nothing leaves yet.
        check(
            pool(
                2,
                2,
                vec![old(1, idle), old(2, idle), slot(3, SlotPhase::Starting)],
            ),
            now,
            0,
            &[],
        );
        // Replacement ready: one outdated leaves, the next replacement starts.
        check(
            pool(2, 2, vec![old(1, idle), old(2, idle), slot(3, idle)]),
            now,
            1,
            &[1],
        );
        // Busy outdated slots are drained (finish their job) only when idle ones are gone.
        check(
            pool(
                1,
                2,
                vec![old(1, SlotPhase::Busy), slot(2, idle), slot(3, idle)],
            ),
            now,
            0,
            &[1],
        );
    }

    #[test]
    fn lifetime_recycles_and_replaces_in_one_decision() {
        let now = Instant::now();
        let mut s = slot(1, SlotPhase::Idle { since: now });
        s.recycle_at = Some(now - Duration::from_secs(1));
        check(pool(1, 1, vec![s.clone()]), now, 1, &[1]);
        s.recycle_at = Some(now + T);
        let d = decide(&pool(1, 1, vec![s]), now);
        assert_eq!(d.wake_at, Some(now + T));
    }

    #[test]
    fn idle_retirement_wakes_at_the_right_time() {
        let now = Instant::now();
        let since = now - Duration::from_secs(3);
        let d = decide(
            &pool(
                1,
                4,
                vec![
                    slot(1, SlotPhase::Idle { since }),
                    slot(2, SlotPhase::Idle { since }),
                ],
            ),
            now,
        );
        assert!(d.actions.is_empty());
        assert_eq!(d.wake_at, Some(since + T));
    }

    proptest::proptest! {
        /// Whatever the state: never more than max non-draining slots after
        /// starting (bar the surge of one for replacements), never a busy
        /// slot drained unless outdated or removed, never below min by draining.
        #[test]
        fn invariants(min in 0u32..5, extra in 0u32..6, states in proptest::collection::vec(0u8..4, 0..12), queued in 0u64..40, age in 0u64..30) {
            let max = min + extra;
            let now = Instant::now() + Duration::from_secs(100);
            let slots: Vec<SlotView> = states.iter().enumerate().map(|(i, s)| slot(i as u32 + 1, match s {
                0 => SlotPhase::Starting,
                1 => SlotPhase::Idle { since: now - Duration::from_secs(age) },
                2 => SlotPhase::Busy,
                _ => SlotPhase::Draining,
            })).collect();
            let mut p = pool(min, max, slots.clone());
            p.queued = queued;
            let d = decide(&p, now);
            let active = slots.iter().filter(|s| s.state != SlotPhase::Draining).count() as u32;
            let drains = drained(&d);
            let after = active + starts(&d) - drains.len() as u32;
            if starts(&d) > 0 {
                proptest::prop_assert!(after <= max, "{after} > {max}");
            }
            if !drains.is_empty() {
                proptest::prop_assert!(after >= min);
            }
            for id in drains {
                let s = slots.iter().find(|s| s.id == id).unwrap();
                let ready = slots.iter().filter(|s| matches!(s.state, SlotPhase::Idle { .. } | SlotPhase::Busy)).count() as u32;
                proptest::prop_assert!(matches!(s.state, SlotPhase::Idle { .. }) || ready > max, "drained {s:?}");
            }
        }

        /// Extreme configuration (any idle_timeout or max_lifetime, however
        /// far past the clock; any min, max and queue depth) never panics,
        /// and a wake-up is in the future and leaves the timer room.
        #[test]
        fn extreme_durations_and_counts_never_panic(
            min in extreme_count(),
            max in extreme_count(),
            queued in extreme_count().prop_map(u64::from),
            idle_timeout in extreme_duration(),
            lifetime in proptest::option::of(extreme_duration()),
            hold in proptest::option::of(extreme_duration()),
            states in proptest::collection::vec((0u8..4, extreme_duration()), 0..12),
            removed in proptest::bool::weighted(0.1),
            stopping in proptest::bool::weighted(0.1),
        ) {
            use crate::config::values::{after, MAX_DURATION};
            let now = Instant::now();
            let slots = states.iter().enumerate().map(|(i, (s, age))| SlotView {
                id: i as u32 + 1,
                state: match s {
                    0 => SlotPhase::Starting,
                    // Idle since as long ago as the clock goes back.
                    1 => SlotPhase::Idle { since: now.checked_sub(*age).unwrap_or(now) },
                    2 => SlotPhase::Busy,
                    _ => SlotPhase::Draining,
                },
                outdated: i % 4 == 3,
                // As the manager computes it: checked, `None` past the clock.
                recycle_at: lifetime.and_then(|l| after(now, l)),
            }).collect();
            let p = PoolView {
                min,
                max,
                idle_timeout,
                slots,
                queued,
                fleet: None,
                hold_until: hold.and_then(|h| after(now, h)),
                removed,
                stopping,
            };
            let d = decide(&p, now);
            if let Some(t) = d.wake_at {
                proptest::prop_assert!(t > now);
                proptest::prop_assert!(t.checked_add(MAX_DURATION).is_some());
            }
        }
    }

    /// A fleet of hosts in 10-ms steps: every host runs [`decide`] on what
    /// the job servers would tell it, when it would read the queue (every
    /// 100 ms while it has no idle slot, at its own phase); its new slots
    /// register after their own start delay, and registered idle slots take
    /// waiting jobs (longer than the run: the need stays `jobs`).
    mod fleet_sim {
        use super::*;

        pub const STEP: Duration = Duration::from_millis(10);
        const POLL_STEPS: u64 = 10;

        pub struct Host {
            pub min: u32,
            pub max: u32,
            /// Step at which it first reads the queue (its phase).
            pub phase: u64,
            slots: Vec<Slot>,
            next_id: u32,
            waiting_since: Option<Instant>,
        }

        struct Slot {
            id: u32,
            ready_at: u64,
            busy: bool,
            idle_since: u64,
        }

        impl Host {
            pub fn new(min: u32, max: u32, phase: u64) -> Host {
                let slots = (1..=min)
                    .map(|id| Slot {
                        id,
                        ready_at: 0,
                        busy: false,
                        idle_since: 0,
                    })
                    .collect();
                Host {
                    min,
                    max,
                    phase,
                    slots,
                    next_id: min + 1,
                    waiting_since: None,
                }
            }
            fn registered(&self, t: u64) -> u32 {
                self.slots.iter().filter(|s| s.ready_at <= t).count() as u32
            }
        }

        pub struct Outcome {
            /// Most slots the fleet had at once (starting ones included).
            pub peak: u32,
            /// Step at which no job was left waiting, if it came.
            pub served_at: Option<u64>,
            /// Most slots any host had, by host.
            pub host_peaks: Vec<u32>,
        }

        /// `fleet`: the fleet-aware rule; otherwise each host as if alone.
        pub fn run(
            mut hosts: Vec<Host>,
            jobs: u64,
            delays: &[u64],
            fleet: bool,
            steps: u64,
        ) -> Outcome {
            let t0 = Instant::now();
            let at = |t: u64| t0 + STEP * t as u32;
            let mut waiting = jobs;
            let mut delay_at = 0usize;
            let mut out = Outcome {
                peak: 0,
                served_at: None,
                host_peaks: vec![0; hosts.len()],
            };
            for t in 0..steps {
                // Registered idle slots take jobs, hosts in turn.
                let n = hosts.len();
                for k in 0..n {
                    let h = &mut hosts[(k + t as usize) % n];
                    for s in h.slots.iter_mut() {
                        if waiting > 0 && s.ready_at <= t && !s.busy {
                            s.busy = true;
                            waiting -= 1;
                        }
                    }
                }
                if waiting == 0 && out.served_at.is_none() {
                    out.served_at = Some(t);
                }
                // The job servers' view, before anyone acts on it this step.
                let running: u64 = hosts
                    .iter()
                    .map(|h| h.slots.iter().filter(|s| s.busy).count() as u64)
                    .sum();
                let registered: Vec<u32> = hosts.iter().map(|h| h.registered(t)).collect();
                for (i, h) in hosts.iter_mut().enumerate() {
                    let idle = h.slots.iter().any(|s| s.ready_at <= t && !s.busy);
                    let due = t >= h.phase && (t - h.phase) % POLL_STEPS == 0;
                    if idle || !due {
                        continue;
                    }
                    let others = (0..n).filter(|&j| j != i && registered[j] > 0);
                    let view = Fleet {
                        hosts: 1 + others.clone().count() as u32,
                        peer_slots: others.map(|j| registered[j]).sum(),
                        running,
                        waiting_since: match (waiting, h.waiting_since) {
                            (0, _) => at(t),
                            (_, Some(since)) => since,
                            (_, None) => at(t),
                        },
                    };
                    h.waiting_since = (waiting > 0).then_some(view.waiting_since);
                    let p = PoolView {
                        min: h.min,
                        max: h.max,
                        idle_timeout: Duration::from_secs(10),
                        slots: h
                            .slots
                            .iter()
                            .map(|s| SlotView {
                                id: s.id,
                                state: match (s.ready_at <= t, s.busy) {
                                    (false, _) => SlotPhase::Starting,
                                    (true, true) => SlotPhase::Busy,
                                    (true, false) => SlotPhase::Idle {
                                        since: at(s.idle_since),
                                    },
                                },
                                outdated: false,
                                recycle_at: None,
                            })
                            .collect(),
                        queued: waiting,
                        fleet: fleet.then_some(view),
                        hold_until: None,
                        removed: false,
                        stopping: false,
                    };
                    for a in decide(&p, at(t)).actions {
                        match a {
                            Action::Start { count, .. } => {
                                for _ in 0..count {
                                    let delay = delays[delay_at % delays.len()];
                                    delay_at += 1;
                                    h.slots.push(Slot {
                                        id: h.next_id,
                                        ready_at: t + delay,
                                        busy: false,
                                        idle_since: t + delay,
                                    });
                                    h.next_id += 1;
                                }
                            }
                            Action::Drain { slot, .. } => h.slots.retain(|s| s.id != slot),
                        }
                    }
                }
                let mut total = 0;
                for (i, h) in hosts.iter().enumerate() {
                    let n = h.slots.len() as u32;
                    out.host_peaks[i] = out.host_peaks[i].max(n);
                    total += n;
                }
                out.peak = out.peak.max(total);
            }
            out
        }
    }

    #[test]
    fn fleet_of_two_and_five_hosts_grows_to_the_need_not_a_multiple() {
        // The burst of the issue: 40 jobs, hosts at min 1, max 40, slots
        // registering 50 ms after they are started, hosts reading the queue
        // 30 ms apart.
        for (n, apart) in [(2u64, 0), (5, 0), (2, 3), (5, 3)] {
            let hosts = || {
                (0..n)
                    .map(|i| fleet_sim::Host::new(1, 40, i * apart))
                    .collect()
            };
            let fleet = fleet_sim::run(hosts(), 40, &[5], true, 500);
            let alone = fleet_sim::run(hosts(), 40, &[5], false, 500);
            assert!(
                fleet.peak as u64 <= 40 + n,
                "{n} hosts {apart} apart: fleet peak {}",
                fleet.peak
            );
            if apart == 0 {
                // Each host grows for all the jobs but the hosts' first ones.
                assert!(alone.peak as u64 >= n * (40 - n), "{n} hosts alone");
            }
            // Later hosts' shares wait for their read (and start).
            let served = fleet.served_at.expect("every job taken");
            let alone_served = alone.served_at.expect("every job taken");
            let later = (n - 1) * apart;
            assert!(served <= alone_served + later, "{served} vs {alone_served}");
        }
    }

    #[test]
    fn min_zero_hosts_are_invisible_until_their_first_slot() {
        // Hosts with no slot registered are seen by no other host: each
        // then grows as if alone. With one host at min 1 the others start
        // one slot each first, and the fleet stays within twice the need;
        // with every host at 0 it is the per-host rule (the docs say: keep
        // min >= 1 on a fleet's hosts).
        let mixed = vec![
            fleet_sim::Host::new(1, 40, 0),
            fleet_sim::Host::new(0, 40, 0),
            fleet_sim::Host::new(0, 40, 0),
        ];
        let out = fleet_sim::run(mixed, 40, &[5], true, 500);
        assert!(out.peak <= 2 * 40, "peak {}", out.peak);
        assert!(out.served_at.is_some());
        let zero = (0..3).map(|_| fleet_sim::Host::new(0, 40, 0)).collect();
        let out = fleet_sim::run(zero, 40, &[5], true, 500);
        assert!(out.peak >= 3 * 39, "peak {}", out.peak);
    }

    #[test]
    fn a_peer_at_max_leaves_its_share_to_the_others_after_a_wait() {
        // Host 0 can hold 5 of the 60 jobs; host 1 takes the rest, first
        // its fair share at once, then what was left once jobs have waited
        // STRANDED_AFTER.
        let hosts = vec![
            fleet_sim::Host::new(1, 5, 0),
            fleet_sim::Host::new(1, 80, 0),
        ];
        let out = fleet_sim::run(hosts, 60, &[5], true, 1000);
        let served = out.served_at.expect("every job taken") as u32;
        let steps = STRANDED_AFTER.as_millis() as u32 / 10;
        assert!(served <= steps + 100, "served at step {served}");
        assert!(out.peak <= 60 + 2, "peak {}", out.peak);
        assert_eq!(out.host_peaks[0], 5);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any fleet (1 to 8 hosts, any phases, slots taking 10 ms to 1.5 s
        /// to start, some hosts with a small `max`): no host above its `max`
        /// or below its `min`; the fleet never holds more than the need
        /// plus one slot per host (two while capped hosts' shares move);
        /// every job is taken when the fleet can hold them; never more
        /// slots than each host growing alone would start.
        #[test]
        fn fleet_converges_to_the_need(
            spec in proptest::collection::vec((0u32..3, 1u32..70, 0u64..10), 1..9),
            jobs in 1u64..120,
            delays in proptest::collection::vec(1u64..150, 1..8),
        ) {
            let hosts = || spec.iter().map(|&(min, room, phase)| {
                fleet_sim::Host::new(min, min + room, phase)
            }).collect::<Vec<_>>();
            let n = spec.len() as u64;
            let room: u64 = spec.iter().map(|&(min, room, _)| u64::from(min + room)).sum();
            let capped = spec.iter().any(|&(min, room, _)| u64::from(min + room) < jobs);
            let steps = 3000; // 30 s
            let out = fleet_sim::run(hosts(), jobs, &delays, true, steps);
            for (h, &(min, room, _)) in out.host_peaks.iter().zip(&spec) {
                proptest::prop_assert!(*h <= min + room);
            }
            let mins: u64 = spec.iter().map(|&(min, _, _)| u64::from(min)).sum();
            let visible = spec.iter().all(|&(min, _, _)| min > 0);
            let bound = jobs.max(mins) + 2 * n - 1 + if capped { n } else { 0 };
            // A host at zero slots is invisible to the others (see
            // `min_zero_hosts_are_invisible_until_their_first_slot`).
            if visible {
                proptest::prop_assert!(u64::from(out.peak) <= bound, "peak {} > {bound}", out.peak);
            }
            if room >= jobs {
                proptest::prop_assert!(out.served_at.is_some(), "jobs left waiting");
            }

        }

        /// One host alone, or a fleet view that shows no other host: the
        /// single-host rule, exactly.
        #[test]
        fn alone_is_the_single_host_rule(
            min in 0u32..50, room in 0u32..100, busy in 0u32..200,
            queued in 0u64..500, running in 0u64..500, waited in 0u64..10_000,
            idle in 0u32..5,
        ) {
            let ready = busy + idle;
            let now = Instant::now() + Duration::from_secs(100);
            let f = Fleet {
                hosts: 1,
                peer_slots: 0,
                running,
                waiting_since: now - Duration::from_millis(waited),
            };
            let max = min + room;
            proptest::prop_assert_eq!(
                fleet_target((min, max), (busy, ready), queued, Some(&f), now),
                target(min, max, busy, queued)
            );
            proptest::prop_assert_eq!(
                fleet_target((min, max), (busy, ready), queued, None, now),
                target(min, max, busy, queued)
            );
        }

        /// Whatever the fleet says (any counts, up to the extremes): within
        /// `min` and `max`, never below the busy slots plus one while jobs
        /// wait, never above what the host would want alone.
        #[test]
        fn fleet_target_bounds(
            min in extreme_count(), max in extreme_count(), busy in extreme_count(),
            queued in extreme_count().prop_map(u64::from),
            hosts in extreme_count(), peer_slots in extreme_count(),
            running in extreme_count().prop_map(u64::from), waited in 0u64..10_000,
            idle in extreme_count(),
        ) {
            let now = Instant::now() + Duration::from_secs(100);
            let f = Fleet { hosts, peer_slots, running, waiting_since: now - Duration::from_millis(waited) };
            let ready = busy.saturating_add(idle);
            let t = fleet_target((min, max), (busy, ready), queued, Some(&f), now);
            let alone = target(min, max, busy, queued);
            proptest::prop_assert!(t >= min && t <= max.max(min));
            proptest::prop_assert!(t <= alone, "{t} > alone {alone}");
            if queued > 0 {
                proptest::prop_assert!(t >= busy.saturating_add(1).clamp(min, max.max(min)));
            }
        }
    }

    /// Counts, mostly small (so that pools shrink and retire idle slots)
    /// with the extremes.
    fn extreme_count() -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        prop_oneof![4 => 0u32..5, 1 => Just(u32::MAX), 1 => any::<u32>()]
    }

    /// Durations from zero to `Duration::MAX`, weighted to the edges.
    fn extreme_duration() -> impl proptest::strategy::Strategy<Value = Duration> {
        use crate::config::values::MAX_DURATION;
        use proptest::prelude::*;
        prop_oneof![
            Just(Duration::ZERO),
            Just(MAX_DURATION),
            Just(MAX_DURATION + Duration::from_nanos(1)),
            Just(Duration::MAX),
            (0u64..1_000_000).prop_map(Duration::from_millis),
            any::<u64>().prop_map(Duration::from_secs),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }
}
