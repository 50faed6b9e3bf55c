//! Health as an operator sees it (`slotman status --json`, the manager's
//! log): judged from facts, reported once when a problem starts and once
//! when it clears, against a real gearmand and real handlers.

mod common;

use std::time::Duration;

use common::service::{handler, Service};
use common::{wait_until, Gearmand};

fn config(server: &str, command: &str, slots: u32) -> String {
    format!(
        "[workers.w]\nkind = \"stdio\"\ncommand = {command}\nfunctions = [\"echo\"]\njob_servers = [\"{server}\"]\nmin = {slots}\nmax = {slots}\n"
    )
}

#[test]
fn a_job_server_that_dies_and_returns_is_reported_once_each_way() {
    let Some(mut g) = Gearmand::start() else {
        return;
    };
    let mut svc = Service::new(&config(&g.addr, &handler(), 2));
    svc.start();
    wait_until("two slots up", Duration::from_secs(20), || {
        svc.worker("w").idle == 2
    });
    let st = svc.status();
    assert_eq!((st.health.as_str(), st.problems.len()), ("ok", 0), "{st:?}");

    g.kill();
    wait_until("health failed", Duration::from_secs(20), || {
        svc.status().health == "failed"
    });
    let w = svc.worker("w");
    assert_eq!(w.health, "failed");
    let expected = format!("job server {} unreachable from 2 of 2 slots: ", g.addr);
    assert!(
        w.problems.iter().any(|p| p.starts_with(&expected)),
        "problems: {:?}",
        w.problems
    );
    assert!(
        svc.status()
            .problems
            .iter()
            .any(|p| p.starts_with("w: job server")),
        "top-level problems name the worker"
    );

    g.restart();
    wait_until("health ok again", Duration::from_secs(30), || {
        svc.status().health == "ok"
    });
    let log = svc.log();
    let started = format!("worker w: job server {} unreachable", g.addr);
    let cleared = format!("worker w: cleared: job server {} unreachable", g.addr);
    assert_eq!(
        log.matches(&started).count(),
        1,
        "one line when the problem started:\n{log}"
    );
    assert_eq!(
        log.matches(&cleared).count(),
        1,
        "one line when it cleared:\n{log}"
    );
    // The slots notice one after the other: through degraded, both ways.
    assert_eq!(log.matches("worker w is failed (was").count(), 1, "{log}");
    assert_eq!(log.matches("worker w is ok (was").count(), 1, "{log}");
    assert!(svc.stop(), "manager exit status");
}

#[test]
fn a_handler_that_cannot_start_marks_the_worker_with_its_words() {
    let Some(g) = Gearmand::start() else { return };
    let command = r#"["python3", "/nonexistent/slotman-test-worker.py"]"#;
    let mut svc = Service::new(&config(&g.addr, command, 1));
    svc.start();
    wait_until("worker marked failed", Duration::from_secs(60), || {
        svc.worker("w").health == "failed"
    });
    let w = svc.worker("w");
    assert!(
        w.problems
            .iter()
            .any(|p| p.contains("slots failing") && p.contains("can't open file")),
        "problems: {:?}",
        w.problems
    );
    let log = svc.log();
    assert!(
        !log.contains("every worker has its min slots up"),
        "the log claimed health it does not have:\n{log}"
    );
    assert!(svc.stop(), "manager exit status");
}
