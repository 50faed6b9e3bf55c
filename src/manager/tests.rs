//! The manager's event handling in-process, on paused time: the test plays
//! every slot's part (placed, ready, busy, exited) through a fake
//! [`Launch`], and reads what the manager decides from the commands it
//! sends its slots and the status it reports.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::pool::SlotCmd;
use super::{Command, Event, Launch, Launched, Manager, SlotEvent};
use crate::placement::Placement;
use crate::slot::report::{JobCounts, Report};
use crate::view::ServiceStatus;

/// Hands every launched slot to the test.
struct Fake(mpsc::UnboundedSender<Launched>);

impl Launch for Fake {
    fn launch(&self, slot: Launched, _events: &mpsc::UnboundedSender<Event>) {
        let _ = self.0.send(slot);
    }
}

struct Harness {
    events: mpsc::UnboundedSender<Event>,
    launched: mpsc::UnboundedReceiver<Launched>,
    manager: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

/// A worker `w` with `extra` keys; queue polling off (no job server here).
fn toml(extra: &str) -> String {
    format!(
        "[workers.w]\nkind = \"stdio\"\ncommand = [\"/bin/cat\"]\nfunctions = [\"f\"]\njob_servers = [\"127.0.0.1:9\"]\nscale_on_queue = false\n{extra}"
    )
}

fn start(text: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("svc.toml");
    std::fs::write(&config, text).expect("write config");
    let parsed = crate::config::load(&config).expect("config");
    let (tx, rx) = mpsc::unbounded_channel();
    let (ltx, lrx) = mpsc::unbounded_channel();
    let manager = Manager::with_launch(
        parsed,
        Arc::new(Placement::Child),
        Arc::new(Fake(ltx)),
        tx.clone(),
    );
    Harness {
        events: tx,
        launched: lrx,
        manager: tokio::spawn(manager.run(rx)),
        _dir: dir,
        config,
    }
}

impl Harness {
    /// The next slot the manager starts (fails after a minute of test time).
    async fn launch(&mut self) -> Launched {
        tokio::time::timeout(Duration::from_secs(60), self.launched.recv())
            .await
            .expect("a slot launched within 60s")
            .expect("manager alive")
    }

    /// No slot launched in the next `wait`.
    async fn no_launch(&mut self, wait: Duration) {
        if let Ok(Some(l)) = tokio::time::timeout(wait, self.launched.recv()).await {
            panic!("unexpected launch of slot {}", l.spec.slot);
        }
    }

    fn slot(&self, slot: &Launched, ev: SlotEvent) {
        let _ = self.events.send(Event::Slot {
            worker: slot.spec.worker.name.clone(),
            id: slot.spec.slot,
            ev,
        });
    }

    fn report(&self, slot: &Launched, r: Report) {
        self.slot(slot, SlotEvent::Report(r));
    }

    fn ready(&self, slot: &Launched) {
        let pid = 10_000 + slot.spec.slot;
        self.slot(slot, SlotEvent::Placed { pid, unit: None });
        self.report(slot, Report::Ready { pid });
    }

    fn busy(&self, slot: &Launched) {
        self.report(
            slot,
            Report::Busy {
                function: "w::f".into(),
                handle: format!("H:{}", slot.spec.slot),
            },
        );
    }

    fn idle(&self, slot: &Launched) {
        self.report(
            slot,
            Report::Done {
                jobs: JobCounts::default(),
                idle: true,
            },
        );
    }

    fn exited(&self, slot: &Launched, status: &str) {
        self.slot(
            slot,
            SlotEvent::Exited {
                status: status.into(),
            },
        );
    }

    async fn status(&self) -> ServiceStatus {
        let (tx, rx) = oneshot::channel();
        let _ = self.events.send(Event::Status(tx));
        rx.await.expect("status")
    }

    async fn command(&self, c: Command) -> oneshot::Receiver<Result<String, String>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.events.send(Event::Command(c, tx));
        rx
    }
}

/// The next command the manager sends `slot` (within a minute).
async fn cmd(slot: &mut Launched) -> SlotCmd {
    tokio::time::timeout(Duration::from_secs(60), slot.cmds.recv())
        .await
        .expect("a command within 60s")
        .expect("command channel open")
}

/// The next command other than pinning.
async fn order(slot: &mut Launched) -> SlotCmd {
    loop {
        match cmd(slot).await {
            SlotCmd::Pin(_) => {}
            c => return c,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn grows_while_all_busy_and_retires_idle_slots_after_idle_timeout() {
    let mut h = start(&toml("min = 1\nmax = 3\nidle_timeout = \"10s\"\n"));
    let mut a = h.launch().await;
    h.ready(&a);
    h.busy(&a);
    let mut b = h.launch().await;
    h.ready(&b);
    h.busy(&b);
    let c = h.launch().await;
    h.ready(&c);
    h.busy(&c);
    h.no_launch(Duration::from_secs(5)).await;

    // All idle now: after idle_timeout, down to min, the oldest kept.
    let idle_at = Instant::now();
    for s in [&a, &b, &c] {
        h.idle(s);
    }
    let mut retired = Vec::new();
    for s in [&mut b] {
        assert!(matches!(order(s).await, SlotCmd::Drain));
        retired.push(Instant::now());
    }
    assert!(
        retired[0] - idle_at >= Duration::from_secs(10),
        "retired after {:?}, before idle_timeout",
        retired[0] - idle_at
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(30), order(&mut a))
            .await
            .is_err(),
        "the min slot was retired"
    );
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn failed_starts_back_off_then_mark_the_worker_failed() {
    let mut h = start(&toml("min = 1\nmax = 1\n"));
    let mut starts = Vec::new();
    for _ in 0..5 {
        let s = h.launch().await;
        starts.push(Instant::now());
        h.report(
            &s,
            Report::StartFailed {
                why: "handler \"x\" exited before it said READY (exit status 2): x: no such file"
                    .into(),
            },
        );
        h.exited(&s, "exit status: 3");
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "back-off does not grow: {gaps:?}"
    );
    let st = h.status().await;
    let w = &st.workers[0];
    assert!(w.failed, "{w:?}");
    assert_eq!(w.health, "failed");
    assert!(
        w.problems.iter().any(|p| p.contains("x: no such file")),
        "{:?}",
        w.problems
    );
    assert_eq!(st.health, "failed");
    // Held off for FAILED_RETRY, then tried again.
    let held = Instant::now();
    let _again = h.launch().await;
    assert!(Instant::now() - held >= Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn a_stop_drains_and_kills_only_after_stop_timeout() {
    let mut h = start(&format!(
        "stop_timeout = \"5s\"\n{}",
        toml("min = 1\nmax = 1\n")
    ));
    let mut s = h.launch().await;
    h.ready(&s);
    h.busy(&s);
    let _ = h.events.send(Event::Stop);
    assert!(matches!(order(&mut s).await, SlotCmd::Drain));
    let drained = Instant::now();
    assert!(matches!(order(&mut s).await, SlotCmd::Kill));
    let waited = Instant::now() - drained;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "killed after {waited:?}"
    );
    h.exited(&s, "signal: 9 (SIGKILL)");
    let done = tokio::time::timeout(Duration::from_secs(10), h.manager)
        .await
        .expect("the manager leaves once its slot is gone");
    assert!(done.expect("join").is_ok());
}

#[tokio::test(start_paused = true)]
async fn restart_replaces_one_slot_at_a_time_the_new_one_first() {
    let mut h = start(&toml("min = 2\nmax = 2\n"));
    let mut old = vec![h.launch().await, h.launch().await];
    for s in &old {
        h.ready(s);
    }
    let mut reply = h.command(Command::Restart(vec![])).await;
    for _ in 0..2 {
        let new = h.launch().await;
        // Nothing drains before the new slot is ready.
        for s in old.iter_mut() {
            assert!(
                s.cmds.try_recv().is_err(),
                "drained before its successor was ready"
            );
        }
        h.no_launch(Duration::from_secs(2)).await;
        h.ready(&new);
        // Exactly one old slot drains.
        let mut drained = None;
        for (i, s) in old.iter_mut().enumerate() {
            if let Ok(Ok(SlotCmd::Drain)) =
                tokio::time::timeout(Duration::from_secs(1), s.cmds.recv())
                    .await
                    .map(|c| c.ok_or(()))
            {
                drained = Some(i);
                break;
            }
        }
        let i = drained.expect("an old slot drained");
        let gone = old.remove(i);
        h.exited(&gone, "exit status: 0");
        assert!(reply.try_recv().is_err() || old.is_empty());
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), reply)
        .await
        .expect("restart answered")
        .expect("reply");
    assert!(answer.is_ok(), "{answer:?}");
}

#[tokio::test(start_paused = true)]
async fn reload_applies_a_good_config_and_refuses_a_broken_one_with_its_line() {
    let mut h = start(&toml("min = 1\nmax = 4\n"));
    let s = h.launch().await;
    h.ready(&s);

    std::fs::write(&h.config, toml("min = 1\nmax = \"lots\"\n")).expect("write");
    let refused = h.command(Command::Reload).await.await.expect("reply");
    let why = refused.expect_err("a broken config is refused");
    assert!(why.contains("svc.toml:"), "{why}");
    h.no_launch(Duration::from_secs(5)).await;
    assert!(h.status().await.reload_error.is_some());

    std::fs::write(&h.config, toml("min = 2\nmax = 4\n")).expect("write");
    let applied = h.command(Command::Reload).await.await.expect("reply");
    assert!(applied.is_ok(), "{applied:?}");
    let _second = h.launch().await;
    assert!(h.status().await.reload_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn health_follows_the_slots_link_reports() {
    let mut h = start(&toml("min = 2\nmax = 2\n"));
    let a = h.launch().await;
    let b = h.launch().await;
    for s in [&a, &b] {
        h.ready(s);
        h.report(
            s,
            Report::Link {
                server: "127.0.0.1:9".into(),
                error: None,
            },
        );
    }
    assert_eq!(h.status().await.health, "ok");
    let down = |s: &Launched| {
        h.report(
            s,
            Report::Link {
                server: "127.0.0.1:9".into(),
                error: Some("Connection refused".into()),
            },
        )
    };
    down(&a);
    let st = h.status().await;
    assert_eq!(st.health, "degraded");
    assert_eq!(
        st.workers[0].problems,
        ["job server 127.0.0.1:9 unreachable from 1 of 2 slots: Connection refused (since 0s)"]
    );
    down(&b);
    tokio::time::advance(Duration::from_secs(12)).await;
    let st = h.status().await;
    assert_eq!(st.health, "failed");
    assert!(st.workers[0].problems[0].ends_with("(since 12s)"), "{st:?}");
    for s in [&a, &b] {
        h.report(
            s,
            Report::Link {
                server: "127.0.0.1:9".into(),
                error: None,
            },
        );
    }
    assert_eq!(h.status().await.health, "ok");
}

#[tokio::test(start_paused = true)]
async fn pause_is_answered_once_every_running_slot_confirmed_it() {
    let mut h = start(&toml("min = 3\nmax = 3\n"));
    let mut slots = [h.launch().await, h.launch().await, h.launch().await];
    h.ready(&slots[0]);
    h.ready(&slots[1]);
    h.busy(&slots[1]);
    // slots[2] is still starting: it honours the pause once up.
    let mut reply = h.command(Command::Pause("w".into(), true)).await;
    for s in slots.iter_mut() {
        assert!(matches!(order(s).await, SlotCmd::Pause(true)));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        reply.try_recv().is_err(),
        "answered before any slot confirmed"
    );
    h.report(&slots[0], Report::Paused { on: true });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        reply.try_recv().is_err(),
        "answered before the busy slot confirmed"
    );
    // The busy slot confirms while its job runs on: no new job will start.
    h.report(&slots[1], Report::Paused { on: true });
    let answer = tokio::time::timeout(Duration::from_secs(1), reply)
        .await
        .expect("pause answered")
        .expect("reply");
    assert!(answer.is_ok_and(|a| a.contains("paused")));

    // A pause that a resume overtakes is answered with an error.
    let resume = h.command(Command::Pause("w".into(), false)).await;
    assert!(resume.await.expect("reply").is_ok());
    let reply = h.command(Command::Pause("w".into(), true)).await;
    let resume = h.command(Command::Pause("w".into(), false)).await;
    assert!(resume.await.expect("reply").is_ok());
    let answer = reply.await.expect("reply");
    assert!(answer.is_err_and(|e| e.contains("resumed before")));
}

#[tokio::test(start_paused = true)]
async fn a_native_worker_without_proxy_cannot_be_paused() {
    let h = start(
        "[workers.w]\nkind = \"native\"\ncommand = [\"/bin/cat\"]\nproxy = false\njob_servers = [\"127.0.0.1:9\"]\nscale_on_queue = false\n",
    );
    let answer = h.command(Command::Pause("w".into(), true)).await;
    let answer = answer.await.expect("reply");
    assert!(answer.is_err_and(|e| e.contains("proxy = false")));
    assert!(!h.status().await.workers[0].paused);
}
