//! What a slot makes of its handler's stderr, and of its own log, outside
//! systemd (`slotman run --placement child`, stderr to a file): a job that
//! floods stderr with short lines completes promptly, every line is either
//! forwarded or counted as dropped, and no log line carries colour codes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::service::Service;
use common::{wait_until, Gearmand};
use slotman::gearman::client::{Client, JobResult};

/// Lines the `flood` job writes to stderr, 4 bytes each (`xxx\n`): 4 MB.
const FLOOD_LINES: u64 = 1_000_000;

/// An exec handler: `flood` writes [`FLOOD_LINES`] to stderr, `echo` answers
/// its payload.
const HANDLER: &str = r#"
case "$SLOTMAN_FUNCTION" in
  flood) yes xxx | head -n 1000000 >&2; printf done ;;
  echo) exec cat ;;
esac
"#;

/// `slotman run` with plain child slots, its stderr (and so its runners')
/// a file, not a terminal.
fn service(g: &Gearmand) -> Service {
    let mut svc = Service::new("");
    let handler = svc.dir.path().join("handler.sh");
    std::fs::write(&handler, HANDLER).expect("write handler");
    svc.write_config(&format!(
        "[workers.t]\nkind = \"exec\"\ncommand = [\"/bin/sh\", {:?}]\nfunctions = [\"flood\", \"echo\"]\njob_servers = [{:?}]\nmin = 1\nmax = 1\n",
        handler.display().to_string(),
        g.addr
    ));
    svc.args = vec!["--placement".into(), "child".into()];
    // Debug, so that the runners log too; no NO_COLOR, which would hide
    // colour codes written regardless of the terminal.
    svc.env = vec![
        ("RUST_LOG".into(), Some("debug".into())),
        ("NO_COLOR".into(), None),
        ("JOURNAL_STREAM".into(), None),
    ];
    svc.start();
    svc
}

fn submit(addr: &str, function: &str, payload: &'static str) -> JobResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = Client::connect(addr).await.expect("connect client");
        tokio::time::timeout(Duration::from_secs(60), c.submit(function, "", payload))
            .await
            .expect("job answered within 60s")
            .expect("submit")
            .result
    })
}

/// Forwarded flood lines, and lines the markers say were dropped.
fn count_flood(log: &str) -> (u64, u64) {
    let forwarded = log.lines().filter(|l| *l == "[t#1] xxx").count() as u64;
    let dropped = log
        .lines()
        .filter_map(|l| l.strip_prefix("[t#1] slotman: "))
        .filter_map(|l| l.split_once(" lines ("))
        .filter_map(|(n, _)| n.parse::<u64>().ok())
        .sum();
    (forwarded, dropped)
}

#[test]
fn a_job_flooding_stderr_with_short_lines_completes_and_its_excess_is_counted() {
    let Some(g) = Gearmand::start() else { return };
    let svc = service(&g);
    let start = Instant::now();
    let result = submit(&g.addr, "t::flood", "");
    let took = start.elapsed();
    assert_eq!(result, JobResult::Complete(Bytes::from_static(b"done")));
    // A hang guard only: forwarding is linear and the job's lines past its
    // limit are dropped (a plain pipe takes milliseconds).
    assert!(took < Duration::from_secs(20), "the job took {took:?}");
    // Nothing is lost silently: each line went out or is in a marker's count.
    wait_until(
        "every flood line forwarded or counted as dropped",
        Duration::from_secs(20),
        || {
            let (forwarded, dropped) = count_flood(&svc.log());
            forwarded + dropped == FLOOD_LINES
        },
    );
    let log = svc.log();
    let (forwarded, dropped) = count_flood(&log);
    assert!(dropped > 0, "{forwarded} lines forwarded, none dropped");
    // Without the journal lines carry no job, and neither does the marker.
    assert!(
        log.contains("of the handler's stderr dropped: over the per-job limit of 2 MiB"),
        "a marker line says why"
    );
    // The next job logs again.
    assert_eq!(
        submit(&g.addr, "t::echo", "after"),
        JobResult::Complete(Bytes::from_static(b"after"))
    );
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let Some(g) = Gearmand::start() else { return };
    let svc = service(&g);
    assert_eq!(
        submit(&g.addr, "t::echo", "x"),
        JobResult::Complete(Bytes::from_static(b"x"))
    );
    // A runner's debug line (its connection) and the manager's own.
    wait_until(
        "a runner's and the manager's log lines",
        Duration::from_secs(10),
        || {
            let log = svc.log();
            log.contains("slotman::slot") && log.contains("slotman::run")
        },
    );
    let log = svc.log();
    assert!(!log.contains("\x1b["), "colour codes in a log file:\n{log}");
}
