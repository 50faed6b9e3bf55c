//! A worker's health, judged from what its slots report (job-server links,
//! start failures) and from the pool's own state. Pure: no clock of its
//! own, no I/O, so the rules are table-tested below.
//!
//! `ok`: nothing wrong. `degraded`: serving, but something is wrong (a job
//! server unreachable from some slots or one of several servers down, slots
//! failing to start, the pool held at `max` with jobs queued). `failed`: it
//! cannot serve (every job server unreachable, or the worker marked failed
//! after its start limit).

use std::collections::BTreeMap;
use std::time::Duration;

use std::time::Instant;

/// How well a worker (or the service: its worst worker) serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Health {
    #[default]
    Ok,
    Degraded,
    Failed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Failed => "failed",
        }
    }
}

/// One thing wrong, as a sentence naming the cause in the words of what
/// failed; `since` is shown with it where there is room (status), not in
/// the journal or STATUS= (which must not change every second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Stable while the problem lasts (the journal logs a start and a
    /// clear per key); the text may change (counts).
    pub key: String,
    pub text: String,
    pub since: Option<Instant>,
}

impl Problem {
    /// The sentence with how long it has lasted.
    pub fn render(&self, now: Instant) -> String {
        match self.since {
            Some(since) => format!(
                "{} (since {})",
                self.text,
                short_duration(now.saturating_duration_since(since))
            ),
            None => self.text.clone(),
        }
    }
}

/// A slot's view of one job server: up, or down with the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub error: Option<String>,
    /// When this state (up, or down at all) began.
    pub since: Instant,
}

/// What the judgement is made from.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    /// The worker's job servers (empty for a `native` worker: its program
    /// talks to them itself).
    pub servers: &'a [String],
    /// Each live slot's links, by server; a server a slot has not reported
    /// on yet is absent.
    pub slots: Vec<&'a BTreeMap<String, Link>>,
    /// Marked failed after its start limit.
    pub marked_failed: bool,
    /// Why the last slot that failed (to start, or later) did, while
    /// failures are in a row.
    pub failing: Option<(&'a str, Instant)>,
    /// Slots at `max`, every one busy, and jobs queued: (slots, queued).
    pub held_at_max: Option<(usize, u64)>,
}

/// The worker's health and what is wrong.
pub fn assess(f: &Facts) -> (Health, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut health = Health::Ok;
    let mut servers_down = 0;
    for server in f.servers {
        let reports: Vec<&Link> = f.slots.iter().filter_map(|s| s.get(server)).collect();
        let mut down: Vec<&Link> = reports
            .iter()
            .copied()
            .filter(|l| l.error.is_some())
            .collect();
        if down.is_empty() {
            continue;
        }
        if down.len() == reports.len() {
            servers_down += 1;
        }
        down.sort_by_key(|l| l.since);
        let first = down[0];
        problems.push(Problem {
            key: format!("job server {server}"),
            text: format!(
                "job server {server} unreachable from {} of {} slots: {}",
                down.len(),
                reports.len(),
                first.error.as_deref().unwrap_or_default()
            ),
            since: Some(first.since),
        });
        health = health.max(Health::Degraded);
    }
    if !f.servers.is_empty() && servers_down == f.servers.len() {
        health = Health::Failed;
    }
    if let Some((why, since)) = f.failing {
        problems.push(Problem {
            key: "slots failing".into(),
            text: format!("slots failing: {why}"),
            since: Some(since),
        });
        health = health.max(Health::Degraded);
    }
    if f.marked_failed {
        problems.push(Problem {
            key: "marked failed".into(),
            text: "marked failed after repeated slot failures; retrying later".into(),
            since: None,
        });
        health = Health::Failed;
    }
    if let Some((slots, queued)) = f.held_at_max {
        problems.push(Problem {
            key: "held at max".into(),
            text: format!("pool held at max ({slots} busy of {slots}) with {queued} jobs queued"),
            since: None,
        });
        health = health.max(Health::Degraded);
    }
    (health, problems)
}

/// `12s`, `3m`, `2h`, `4d`: the largest unit, whole.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(error: Option<&str>, since: Instant) -> Link {
        Link {
            error: error.map(str::to_string),
            since,
        }
    }

    fn links(pairs: &[(&str, Option<&str>)], since: Instant) -> BTreeMap<String, Link> {
        pairs
            .iter()
            .map(|(s, e)| (s.to_string(), link(*e, since)))
            .collect()
    }

    #[test]
    fn judgements() {
        let t0 = Instant::now();
        let servers = vec!["a:1".to_string(), "b:1".to_string()];
        let all_up = links(&[("a:1", None), ("b:1", None)], t0);
        let a_down = links(&[("a:1", Some("Connection refused")), ("b:1", None)], t0);
        let both_down = links(
            &[
                ("a:1", Some("Connection refused")),
                ("b:1", Some("timed out")),
            ],
            t0,
        );
        let unknown = BTreeMap::new();
        let cases: Vec<(&str, Facts, Health, Vec<&str>)> = vec![
            (
                "all up",
                Facts {
                    servers: &servers,
                    slots: vec![&all_up, &all_up],
                    ..Default::default()
                },
                Health::Ok,
                vec![],
            ),
            (
                "no reports yet",
                Facts {
                    servers: &servers,
                    slots: vec![&unknown],
                    ..Default::default()
                },
                Health::Ok,
                vec![],
            ),
            (
                "one server down from one slot",
                Facts {
                    servers: &servers,
                    slots: vec![&a_down, &all_up],
                    ..Default::default()
                },
                Health::Degraded,
                vec!["job server a:1 unreachable from 1 of 2 slots: Connection refused"],
            ),
            (
                "one of two servers down everywhere",
                Facts {
                    servers: &servers,
                    slots: vec![&a_down, &a_down],
                    ..Default::default()
                },
                Health::Degraded,
                vec!["job server a:1 unreachable from 2 of 2 slots: Connection refused"],
            ),
            (
                "every server down",
                Facts {
                    servers: &servers,
                    slots: vec![&both_down, &both_down],
                    ..Default::default()
                },
                Health::Failed,
                vec![
                    "job server a:1 unreachable from 2 of 2 slots: Connection refused",
                    "job server b:1 unreachable from 2 of 2 slots: timed out",
                ],
            ),
            (
                "slots failing to start",
                Facts {
                    servers: &servers,
                    failing: Some(("handler exited before READY", t0)),
                    ..Default::default()
                },
                Health::Degraded,
                vec!["slots failing: handler exited before READY"],
            ),
            (
                "marked failed",
                Facts {
                    servers: &servers,
                    marked_failed: true,
                    failing: Some(("it crashed", t0)),
                    ..Default::default()
                },
                Health::Failed,
                vec![
                    "slots failing: it crashed",
                    "marked failed after repeated slot failures; retrying later",
                ],
            ),
            (
                "held at max",
                Facts {
                    servers: &servers,
                    slots: vec![&all_up],
                    held_at_max: Some((1, 7)),
                    ..Default::default()
                },
                Health::Degraded,
                vec!["pool held at max (1 busy of 1) with 7 jobs queued"],
            ),
            (
                "native worker: no servers of its own",
                Facts {
                    servers: &[],
                    slots: vec![&unknown],
                    ..Default::default()
                },
                Health::Ok,
                vec![],
            ),
        ];
        for (name, facts, health, texts) in cases {
            let (h, problems) = assess(&facts);
            assert_eq!(h, health, "{name}");
            let got: Vec<&str> = problems.iter().map(|p| p.text.as_str()).collect();
            assert_eq!(got, texts, "{name}");
        }
    }

    #[test]
    fn the_oldest_failure_names_the_error_and_the_time() {
        let t0 = Instant::now();
        let servers = vec!["a:1".to_string()];
        let early = links(&[("a:1", Some("Connection refused"))], t0);
        let late = links(&[("a:1", Some("timed out"))], t0 + Duration::from_secs(5));
        let facts = Facts {
            servers: &servers,
            slots: vec![&late, &early],
            ..Default::default()
        };
        let (_, problems) = assess(&facts);
        assert_eq!(
            problems[0].render(t0 + Duration::from_secs(12)),
            "job server a:1 unreachable from 2 of 2 slots: Connection refused (since 12s)"
        );
    }

    #[test]
    fn short_durations() {
        for (secs, text) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (7199, "119m"),
            (7200, "2h"),
            (200_000, "2d"),
        ] {
            assert_eq!(short_duration(Duration::from_secs(secs)), text);
        }
    }
}
