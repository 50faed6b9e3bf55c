//! The scaling policy: a pure function from a pool's state to decisions.
//!
//! No async, no clock (`now` is a parameter), no I/O, cannot fail. The
//! manager calls [`decide`] after every event and carries out the actions.
//!
//! The rule, in one line: a pool wants `target = clamp(busy + max(queued, 1),
//! min, max)` slots while anything is busy or queued, and `min` otherwise.
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
    /// No new slot before this instant (crash back-off / failed worker).
    pub hold_until: Option<Instant>,
    /// The worker was removed from the config: drain everything.
    pub removed: bool,
    /// The manager is stopping: start nothing.
    pub stopping: bool,
}

/// Why the pool changes; the manager logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    BelowMin,
    AllBusy { busy: u32 },
    Queued { queued: u64 },
    Idle(Duration),
    Lifetime,
    ConfigChanged,
    Removed,
    AboveMax { max: u32 },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::BelowMin => write!(f, "below min"),
            Reason::AllBusy { busy } => write!(f, "all {busy} slots busy"),
            Reason::Queued { queued } => write!(f, "{queued} jobs queued"),
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

/// The number of slots the pool should have right now.
pub fn target(min: u32, max: u32, busy: u32, queued: u64) -> u32 {
    let want = if busy > 0 || queued > 0 {
        let extra = queued.max(1).min(u32::MAX as u64) as u32;
        busy.saturating_add(extra)
    } else {
        min
    };
    want.clamp(min, max.max(min))
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
    let target = target(pool.min, pool.max, busy, pool.queued);
    let held = pool.stopping || pool.hold_until.is_some_and(|t| t > now);
    if let Some(t) = pool.hold_until.filter(|t| *t > now) {
        wake(t, &mut d);
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
