//! The slot runner as a real process (`slotman-slot`), against a real
//! gearmand and real handler processes: payloads through both handler kinds,
//! progress forwarding, failures that stay local to their job, workleft,
//! job-server restarts and SIGTERM mid-job.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::quiet::ChildLog;
use common::{cpus_allowed, first_child, skip, slotman_bin, Gearmand};
use slotman::gearman::client::{Client, JobResult};
use slotman::placement::child::spawn_runner;
use slotman::placement::{runner_for, RunnerCommand};
use slotman::slot::report::{self, ExitReason, Report, SlotSpec, ToSlot};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// An exec handler: one process per job, behaviour by function name.
const SH_HANDLER: &str = r#"
case "$SLOTMAN_FUNCTION" in
  echo) exec cat ;;
  fail) cat >/dev/null; exit 3 ;;
  env) printf '%s|%s|%s|%s|%s' "$SLOTMAN_FUNCTION" "$GEARMAN_FUNCTION" "$GEARMAN_UNIQUE" "${NOTIFY_SOCKET:-unset}" "${GEARMAN_HANDLE:+handle}" ;;
  crash) kill -9 $$ ;;
esac
"#;

const FUNCTIONS: &str = r#"["echo", "progress", "fail", "exception", "crash", "garbage", "sleep", "pid", "env", "spawn"]"#;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("handler.sh"), SH_HANDLER).expect("write handler");
    Fixture {
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

fn spec(fx: &Fixture, kind: &str, servers: &[&str], extra: &str) -> SlotSpec {
    let command = match kind {
        "stdio" => format!(
            r#"["python3", "{}/tests/fixtures/handler.py"]"#,
            env!("CARGO_MANIFEST_DIR")
        ),
        _ => format!(r#"["/bin/sh", "{}"]"#, fx.dir.join("handler.sh").display()),
    };
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    let toml = format!(
        "[workers.t]\nkind = {kind:?}\ncommand = {command}\nfunctions = {FUNCTIONS}\njob_servers = [{}]\n{extra}\n",
        servers.join(", ")
    );
    spec_of(fx, &toml)
}

/// A running runner process and the reports it sends.
struct Slot {
    pid: u32,
    child: tokio::process::Child,
    reports: mpsc::UnboundedReceiver<Report>,
    control: tokio::net::unix::OwnedWriteHalf,
    /// Handler process groups the runner reported (`Report::Handler`).
    handlers: Vec<u32>,
    /// `link` reports so far: (server, error).
    links: Vec<(String, Option<String>)>,
    /// `start_failed` reports so far.
    start_failures: Vec<String>,
    /// The runner's stderr and its handlers': shown if the test fails.
    _log: ChildLog,
}

/// `runner` with its stderr (its log, and its handlers' stderr) appended to
/// `log`. The strings are leaked: a `RunnerCommand`'s arguments are static.
fn logged(runner: &RunnerCommand, log: &ChildLog) -> RunnerCommand {
    assert!(runner.arg0.is_none(), "{runner:?}: an arg0 cannot be kept");
    let program = runner.program.to_str().expect("a UTF-8 runner path");
    let command: Vec<&str> = std::iter::once(program)
        .chain(runner.args.iter().copied())
        .collect();
    let mut wrapped = log
        .wrap(&command)
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()));
    let program = wrapped.next().expect("a program").into();
    RunnerCommand {
        program,
        args: Box::leak(wrapped.collect::<Vec<&'static str>>().into_boxed_slice()),
        arg0: None,
    }
}

impl Slot {
    /// The runner a manager would start: `slotman-slot`, which cargo
    /// builds next to `slotman` for the tests.
    async fn start(spec: &SlotSpec) -> Slot {
        let runner = runner_for(&slotman_bin());
        assert!(runner.args.is_empty(), "{runner:?} is not slotman-slot");
        Slot::start_with(spec, &runner).await
    }

    async fn start_with(spec: &SlotSpec, runner: &RunnerCommand) -> Slot {
        let mut slot = Slot::spawn(spec, runner).await;
        match slot.next().await {
            Report::Ready { pid } => assert_eq!(pid, slot.pid),
            other => panic!("expected ready, got {other:?}"),
        }
        // A long-running handler is reported before ready: the manager's
        // cleanup needs its group should the runner be killed.
        if spec.worker.kind == slotman::config::HandlerKind::Stdio {
            assert_eq!(slot.handlers.len(), 1, "no handler report before ready");
        }
        slot
    }

    /// The runner, sent its `Start`, not waited for.
    async fn spawn(spec: &SlotSpec, runner: &RunnerCommand) -> Slot {
        // As the manager starts it outside systemd.
        let own_session = spec.worker.kind == slotman::config::HandlerKind::Exec;
        let log = ChildLog::new("the slot runner's log");
        let runner = spawn_runner(&logged(runner, &log), own_session).expect("spawn slot");
        let (read, mut write) = runner.control.into_split();
        write
            .write_all(&report::encode(&ToSlot::Start(Box::new(spec.clone()))))
            .await
            .expect("send spec");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let r: Report = report::decode(line.as_bytes()).expect("valid report");
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
        Slot {
            pid: runner.pid,
            child: runner.child,
            reports: rx,
            control: write,
            handlers: Vec::new(),
            links: Vec::new(),
            start_failures: Vec::new(),
            _log: log,
        }
    }

    /// The next report, after any `Report::Handler`s (kept in `handlers`).
    async fn next(&mut self) -> Report {
        loop {
            let r = tokio::time::timeout(Duration::from_secs(20), self.reports.recv())
                .await
                .expect("a report within 20s")
                .expect("slot report channel open");
            match r {
                Report::Handler {
                    pid,
                    start,
                    session,
                } => {
                    // Without them the manager cannot tell its group from a
                    // reused number, and leaves it alone.
                    assert!(start.is_some() && session.is_some(), "{pid}: no identity");
                    self.handlers.push(pid)
                }
                // Job-server links and start failures: kept for the tests
                // that look at them.
                Report::Link { server, error } => self.links.push((server, error)),
                Report::StartFailed { why } => self.start_failures.push(why),
                r => return r,
            }
        }
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("slot exits within 20s")
            .expect("wait")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn submit(
    addr: &str,
    function: &str,
    payload: impl Into<Bytes>,
) -> slotman::gearman::client::JobReply {
    let mut c = Client::connect(addr).await.expect("connect client");
    tokio::time::timeout(
        Duration::from_secs(30),
        c.submit(&format!("t::{function}"), "", payload),
    )
    .await
    .expect("job answered within 30s")
    .expect("submit")
}

fn gearmand() -> Option<Gearmand> {
    if !Path::new("/usr/bin/python3").exists() && which("python3").is_none() {
        skip(
            "gearmand",
            "python3 is not installed (the test handler is Python)",
        );
        return None;
    }
    Gearmand::start()
}

fn which(p: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_round_trip_through_both_handler_kinds() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    let binary: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    // Both runners: `slotman-slot`, and the `slotman slot` fallback.
    let fallback = RunnerCommand {
        program: slotman_bin(),
        args: &["slot"],
        arg0: None,
    };
    for (kind, runner) in [
        ("stdio", runner_for(&slotman_bin())),
        ("exec", runner_for(&slotman_bin())),
        ("stdio", fallback.clone()),
        ("exec", fallback),
    ] {
        let _slot = Slot::start_with(&spec(&fx, kind, &[&g.addr], ""), &runner).await;
        for payload in [
            Bytes::from_static(b"hello, world"),
            Bytes::new(),
            Bytes::from(binary.clone()),
        ] {
            let reply = submit(&g.addr, "echo", payload.clone()).await;
            assert_eq!(
                reply.result,
                JobResult::Complete(payload.clone()),
                "{kind} in {runner:?}: {} bytes",
                payload.len()
            );
        }
    }
}

/// Function names that are not plain words, and unique ids that Gearman
/// allows but the `JOB` line cannot carry, reach both kinds of handler
/// exactly (tests/handlers/seen.sh answers with what it was told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_unique_id_and_function_name_reach_the_handler_exactly() {
    let Some(g) = Gearmand::start() else { return };
    let fx = fixture();
    let script = format!("{}/tests/handlers/seen.sh", env!("CARGO_MANIFEST_DIR"));
    let functions = ["seen", "r\u{e9}sum\u{e9}", "r\u{e9} sum\u{e9}"];
    let uniques: [&[u8]; 10] = [
        b"",
        b"plain-1",
        b"a b",
        b"tab\there",
        b"new\nline",
        b"ends in a newline\n",
        b"-",
        "r\u{e9}sum\u{e9}".as_bytes(),
        b"\xff\xfe",
        b"\r\x01\x7f",
    ];
    for kind in ["stdio", "exec"] {
        let toml = format!(
            "[workers.t]\nkind = {kind:?}\ncommand = [\"/bin/bash\", {script:?}, {kind:?}]\nfunctions = {functions:?}\njob_servers = [{:?}]\n",
            g.addr
        );
        let spec = spec_of(&fx, &toml);
        let _slot = Slot::start(&spec).await;
        let mut c = Client::connect(&g.addr).await.expect("connect client");
        for function in functions {
            for unique in uniques {
                let reply = tokio::time::timeout(
                    Duration::from_secs(30),
                    c.submit(&format!("t::{function}"), unique, "payload"),
                )
                .await
                .expect("job answered within 30s")
                .expect("submit");
                let mut seen = function.as_bytes().to_vec();
                // exec: GEARMAN_UNIQUE is empty when there is none.
                if !unique.is_empty() || kind == "exec" {
                    seen.push(0);
                    seen.extend_from_slice(unique);
                }
                assert_eq!(
                    reply.result,
                    JobResult::Complete(seen.into()),
                    "{kind}: function {function:?}, unique {:?}",
                    unique.escape_ascii().to_string()
                );
            }
        }
        // The admin `status` that queue depths are read from still parses.
        assert_eq!(g.function_status("t::r\u{e9} sum\u{e9}").2, 1, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_data_and_warnings_reach_the_client() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    let _slot = Slot::start(&spec(&fx, "stdio", &[&g.addr], "")).await;
    let reply = submit(&g.addr, "progress", "x").await;
    assert_eq!(
        reply.result,
        JobResult::Complete(Bytes::from_static(b"done"))
    );
    assert_eq!(reply.statuses, vec![(1, 2), (2, 2)]);
    assert_eq!(reply.data, vec![Bytes::from_static(b"part")]);
    assert_eq!(reply.warnings, vec![Bytes::from_static(b"warn")]);
    let reply = submit(&g.addr, "exception", "x").await;
    assert_eq!(
        reply.result,
        JobResult::Exception(Bytes::from_static(b"oops"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_environment_follows_the_contract() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    let _slot = Slot::start(&spec(&fx, "exec", &[&g.addr], "")).await;
    let mut c = Client::connect(&g.addr).await.expect("connect");
    let reply = c.submit("t::env", "u-42", "").await.expect("submit");
    assert_eq!(
        reply.result,
        JobResult::Complete(Bytes::from_static(b"env|t::env|u-42|unset|handle"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_crashing_or_garbling_handler_fails_only_its_job() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    for kind in ["stdio", "exec"] {
        let mut slot = Slot::start(&spec(&fx, kind, &[&g.addr], "")).await;
        let bad: &[&str] = if kind == "stdio" {
            &["fail", "crash", "garbage"]
        } else {
            &["fail", "crash"]
        };
        for f in bad {
            let reply = submit(&g.addr, f, "x").await;
            assert_eq!(reply.result, JobResult::Fail, "{kind} {f}");
            let ok = submit(&g.addr, "echo", "still here").await;
            assert_eq!(
                ok.result,
                JobResult::Complete(Bytes::from_static(b"still here")),
                "{kind} after {f}"
            );
        }
        assert!(
            slot.child.try_wait().expect("try_wait").is_none(),
            "the slot survives its handler"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workleft_5_exits_after_exactly_5_jobs() {
    let Some(g) = gearmand() else { return };
    workleft_5_of_8_jobs(&g, &fixture(), "").await;
}

/// A slot with `workleft = 5` (and `extra`) given 8 queued jobs runs exactly
/// 5, exits for workleft, and leaves 3 in the queue for the next slot.
async fn workleft_5_of_8_jobs(g: &Gearmand, fx: &Fixture, extra: &str) {
    let config = format!("workleft = 5\n{extra}");
    let mut slot = Slot::start(&spec(fx, "stdio", &[&g.addr], &config)).await;
    let mut c = Client::connect(&g.addr).await.expect("connect");
    for i in 0..8 {
        c.submit_background("t::echo", &format!("wl-{i}"), "x")
            .await
            .expect("submit");
    }
    let mut done = 0;
    loop {
        match slot.next().await {
            Report::Done { jobs, .. } => done += jobs.total(),
            Report::Exiting { reason } => {
                assert_eq!(reason, ExitReason::Workleft);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(done, 5);
    assert!(slot.wait().await.success());
    // The other three are still queued for the next slot.
    common::wait_until("3 jobs left in the queue", Duration::from_secs(5), || {
        g.function_status("t::echo").0 == 3
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_short_jobs_is_reported_in_batches_with_exact_counts() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    // Queued before the slot exists, so it works through them without going
    // idle in between.
    let mut c = Client::connect(&g.addr).await.expect("connect");
    for i in 0..200 {
        c.submit_background("t::echo", &format!("batch-{i}"), "x")
            .await
            .expect("submit");
    }
    c.submit_background("t::fail", "batch-fail", "x")
        .await
        .expect("submit");
    let mut slot = Slot::start(&spec(&fx, "stdio", &[&g.addr], "")).await;
    let (mut busy, mut done, mut failed, mut reports) = (0, 0, 0, 0);
    loop {
        reports += 1;
        match slot.next().await {
            Report::Busy { .. } => busy += 1,
            Report::Done { jobs, idle } => {
                done += jobs.total();
                failed += jobs.functions.iter().map(|f| f.fail).sum::<u64>();
                assert_eq!(jobs.durations.counts.iter().sum::<u64>(), jobs.total());
                if idle {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((done, failed), (201, 1), "every job counted once");
    // One `busy` when it left idle, plus one a second at most while busy
    // (generous: a slow CI host may take a few seconds for 201 jobs).
    assert!(busy < 20, "{busy} busy reports for 201 short jobs");
    assert!(reports < 40, "{reports} reports for 201 short jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_after_a_stream_of_short_ones_is_reported_while_it_runs() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    let mut c = Client::connect(&g.addr).await.expect("connect");
    for i in 0..50 {
        c.submit_background("t::sleep", &format!("short-{i}"), "0")
            .await
            .expect("submit");
    }
    let long = c
        .submit_background("t::sleep", "long", "1.5")
        .await
        .expect("submit");
    let mut slot = Slot::start(&spec(&fx, "stdio", &[&g.addr], "")).await;
    let mut done = 0;
    let mut seen_running = None;
    while done < 51 {
        match slot.next().await {
            Report::Busy { handle, .. } if handle == long => seen_running = Some(done),
            Report::Done { jobs, .. } => done += jobs.total(),
            _ => {}
        }
    }
    // The manager must learn of the long job (and of the 50 before it) while
    // it runs, not when it ends.
    assert_eq!(
        seen_running,
        Some(50),
        "busy for the long job came too late or not at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_lets_the_job_complete() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    let mut slot = Slot::start(&spec(&fx, "stdio", &[&g.addr], "")).await;
    let addr = g.addr.clone();
    let job = tokio::spawn(async move { submit(&addr, "sleep", "1.0").await });
    loop {
        if let Report::Busy { .. } = slot.next().await {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(slot.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let reply = job.await.expect("join");
    assert_eq!(
        reply.result,
        JobResult::Complete(Bytes::from_static(b"slept"))
    );
    assert!(slot.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_job_server_is_reconnected_while_another_keeps_serving() {
    let Some(mut a) = gearmand() else { return };
    let Some(b) = Gearmand::start() else { return };
    let fx = fixture();
    let _slot = Slot::start(&spec(&fx, "stdio", &[&a.addr, &b.addr], "")).await;
    let id_prefix = "slotman:svc:t:1:";
    // `ready` needs no round trip to gearmand, so it may not have processed
    // SET_CLIENT_ID yet: poll (bounded) rather than check once.
    common::wait_until("client id on gearmand", Duration::from_secs(10), || {
        a.workers()
            .iter()
            .any(|w| w.client_id.starts_with(id_prefix))
    });
    assert_eq!(
        submit(&a.addr, "echo", "a1").await.result,
        JobResult::Complete(Bytes::from_static(b"a1"))
    );
    a.kill();
    // The other server keeps serving while the first is down.
    assert_eq!(
        submit(&b.addr, "echo", "b1").await.result,
        JobResult::Complete(Bytes::from_static(b"b1"))
    );
    a.restart();
    common::wait_until(
        "slot re-registered on the restarted gearmand",
        Duration::from_secs(15),
        || {
            a.workers()
                .iter()
                .any(|w| w.client_id.starts_with(id_prefix))
        },
    );
    assert_eq!(
        submit(&a.addr, "echo", "a2").await.result,
        JobResult::Complete(Bytes::from_static(b"a2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prefetch_jobs_stream_workleft_stays_exact_and_a_drain_runs_the_prefetched_job() {
    let Some(g) = gearmand() else { return };
    let fx = fixture();
    // A stream: every job answered, with its own payload.
    let mut slot = Slot::start(&spec(&fx, "stdio", &[&g.addr], "prefetch = true")).await;
    let mut jobs = Vec::new();
    for i in 0..40 {
        let addr = g.addr.clone();
        jobs.push(tokio::spawn(async move {
            (i, submit(&addr, "echo", format!("p{i}")).await)
        }));
    }
    for j in jobs {
        let (i, reply) = j.await.expect("join");
        assert_eq!(
            reply.result,
            JobResult::Complete(Bytes::from(format!("p{i}"))),
            "job {i}"
        );
    }
    // Exactly those 40 ran: the NO_JOB that ends the stream (the reply to
    // the last prefetching grab) is no job.
    let mut counted = 0;
    while counted < 40 {
        if let Report::Done { jobs, .. } = slot.next().await {
            counted += jobs.total();
        }
    }
    // The `done` that brought the count to 40 was sent on that NO_JOB, so
    // the slot is asleep: the next job must wake it.
    assert_eq!(
        submit(&g.addr, "echo", "after").await.result,
        JobResult::Complete(Bytes::from_static(b"after"))
    );
    loop {
        if let Report::Done { jobs, .. } = slot.next().await {
            counted += jobs.total();
            break;
        }
    }
    assert_eq!(counted, 41);
    drop(slot);

    // workleft: the last job is not prefetched past.
    let Some(g) = gearmand() else { return };
    workleft_5_of_8_jobs(&g, &fx, "prefetch = true").await;

    // A drain while a prefetched job waits: both jobs are answered. Both
    // are queued before the slot starts, so the grab that goes out with the
    // first job gets the second.
    let Some(g) = gearmand() else { return };
    let addr = g.addr.clone();
    let first = tokio::spawn(async move { submit(&addr, "sleep", "1.0").await });
    common::wait_until("the first job queued", Duration::from_secs(5), || {
        g.function_status("t::sleep").0 == 1
    });
    let addr = g.addr.clone();
    let second = tokio::spawn(async move { submit(&addr, "echo", "second").await });
    common::wait_until("the second job queued", Duration::from_secs(5), || {
        g.function_status("t::echo").0 == 1
    });
    let mut slot = Slot::start(&spec(&fx, "stdio", &[&g.addr], "prefetch = true")).await;
    loop {
        if let Report::Busy { .. } = slot.next().await {
            break;
        }
    }
    common::wait_until(
        "the second job assigned to the busy slot",
        Duration::from_secs(5),
        || g.function_status("t::echo").1 == 1,
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(slot.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    assert_eq!(
        first.await.expect("join").result,
        JobResult::Complete(Bytes::from_static(b"slept"))
    );
    assert_eq!(
        second.await.expect("join").result,
        JobResult::Complete(Bytes::from_static(b"second"))
    );
    assert!(slot.wait().await.success());
}

/// Short jobs until the slot's runner and its current handler are both on
/// `cpu` alone (one job may take over 10 ms on a loaded host).
async fn pin_by_short_jobs(addr: &str, runner: u32, cpu: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = submit(addr, "echo", "x").await;
        assert!(matches!(reply.result, JobResult::Complete(_)));
        let (r, h) = (cpus_allowed(runner), cpus_allowed(first_child(runner)));
        if r == vec![cpu] && h == vec![cpu] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not pinned: runner {r:?}, handler {h:?}"
        );
    }
}

/// Waits until `check` holds, for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_slot_shares_its_cpu_with_its_handler_except_during_a_long_job() {
    let Some(g) = gearmand() else { return };
    let allowed = cpus_allowed(std::process::id());
    if allowed.len() < 2 {
        skip("cpu", "pinning needs two CPUs; this process may use one");
        return;
    }
    let fx = fixture();
    let mut spec = spec(&fx, "stdio", &[&g.addr], "");
    let cpu = allowed[1];
    (spec.cpu, spec.pin) = (Some(cpu), true);
    let slot = Slot::start(&spec).await;
    let runner = slot.pid;
    let all = || (allowed.clone(), allowed.clone());
    let pair = || (cpus_allowed(runner), cpus_allowed(first_child(runner)));
    // Nothing is pinned before a job has shown that jobs are short.
    assert_eq!(pair(), all());
    pin_by_short_jobs(&g.addr, runner, cpu).await;
    // A long job runs on every CPU, and so does what its handler starts at
    // its beginning (forked while the pair was still pinned).
    let addr = g.addr.clone();
    let long = tokio::spawn(async move { submit(&addr, "spawn", "1").await });
    eventually("unpinned during a long job, its child too", || {
        let child = first_child(first_child(runner));
        child != 0 && pair() == all() && cpus_allowed(child) == allowed
    })
    .await;
    assert!(matches!(
        long.await.expect("join").result,
        JobResult::Complete(_)
    ));
    pin_by_short_jobs(&g.addr, runner, cpu).await;
    // A handler replaced inside a job that turns long: the new one was
    // forked from the pinned runner, and gets the unpinned mask.
    assert!(matches!(
        submit(&g.addr, "crash", "").await.result,
        JobResult::Fail
    ));
    let addr = g.addr.clone();
    let long = tokio::spawn(async move { submit(&addr, "sleep", "1").await });
    eventually("a replaced handler unpinned during a long job", || {
        let h = first_child(runner);
        h != 0 && h != slot.handlers[0] && pair() == all()
    })
    .await;
    assert!(matches!(
        long.await.expect("join").result,
        JobResult::Complete(_)
    ));
    pin_by_short_jobs(&g.addr, runner, cpu).await;
    // The manager turns pinning off (fewer slots than CPUs now): at once.
    let mut slot = slot;
    slot.control
        .write_all(&report::encode(&ToSlot::Pin { on: false }))
        .await
        .expect("send");
    eventually("unpinned by the manager", || pair() == all()).await;
    assert!(matches!(
        submit(&g.addr, "echo", "c").await.result,
        JobResult::Complete(_)
    ));
    assert_eq!(pair(), all(), "stays unpinned");
}

/// A slot whose stdio handler never says READY (it sleeps), with this
/// `ready_timeout`; its job server is never reached.
fn mute_spec(fx: &Fixture, ready_timeout: &str) -> SlotSpec {
    let toml = format!(
        "[workers.t]\nkind = \"stdio\"\ncommand = [\"/bin/sleep\", \"1000\"]\nfunctions = [\"x\"]\njob_servers = [\"127.0.0.1:1\"]\nready_timeout = {ready_timeout:?}\n"
    );
    spec_of(fx, &toml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_says_ready_fails_the_start_at_its_deadline() {
    let fx = fixture();
    let started = std::time::Instant::now();
    let mut slot = Slot::spawn(&mute_spec(&fx, "300ms"), &runner_for(&slotman_bin())).await;
    assert_eq!(
        slot.next().await,
        Report::Exiting {
            reason: ExitReason::HandlerFailed
        }
    );
    // The manager hears why, before the exit.
    assert!(
        slot.start_failures
            .iter()
            .any(|why| why.contains("did not say READY within 300ms")),
        "{:?}",
        slot.start_failures
    );
    assert_eq!(
        slot.wait().await.code(),
        Some(slotman::slot::EXIT_HANDLER_FAILED)
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_or_sigterm_ends_the_wait_for_ready_at_once() {
    let fx = fixture();
    for by_signal in [false, true] {
        let spec = mute_spec(&fx, "5m");
        let mut slot = Slot::spawn(&spec, &runner_for(&slotman_bin())).await;
        eventually("the handler started", || first_child(slot.pid) != 0).await;
        let asked = std::time::Instant::now();
        if by_signal {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(slot.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .expect("SIGTERM the runner");
        } else {
            slot.control
                .write_all(&report::encode(&ToSlot::Drain))
                .await
                .expect("send drain");
        }
        assert_eq!(
            slot.next().await,
            Report::Exiting {
                reason: ExitReason::Drained
            }
        );
        assert_eq!(slot.wait().await.code(), Some(0));
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_handler_that_never_says_ready_fails_its_job_and_the_slot() {
    let Some(g) = Gearmand::start() else { return };
    let fx = fixture();
    let script = format!(
        "{}/tests/handlers/stdio-test.sh",
        env!("CARGO_MANIFEST_DIR")
    );
    let mark = fx.dir.join("started-once");
    let toml = format!(
        "[workers.t]\nkind = \"stdio\"\ncommand = [\"/bin/bash\", {script:?}, \"once\"]\nfunctions = [\"echo\", \"crash\"]\njob_servers = [{:?}]\nready_timeout = \"300ms\"\nenv = {{ SLOTMAN_TEST_MARK = {:?} }}\n",
        g.addr,
        mark.display().to_string()
    );
    let spec = spec_of(&fx, &toml);
    let mut slot = Slot::start(&spec).await;
    assert_eq!(submit(&g.addr, "crash", "x").await.result, JobResult::Fail);
    // Its replacement never says READY: the next job fails at the deadline,
    // and the slot leaves as a failed start instead of making every later
    // job wait for a handler that will not come.
    assert_eq!(submit(&g.addr, "echo", "x").await.result, JobResult::Fail);
    loop {
        match slot.next().await {
            Report::Exiting { reason } => {
                assert_eq!(reason, ExitReason::HandlerFailed);
                break;
            }
            Report::Busy { .. } | Report::Done { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        slot.wait().await.code(),
        Some(slotman::slot::EXIT_HANDLER_FAILED)
    );
}

/// Slot 1 of service `svc` running the one worker of `toml`.
fn spec_of(fx: &Fixture, toml: &str) -> SlotSpec {
    let config = slotman::config::parse(toml, &fx.dir.join("svc.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    SlotSpec {
        service: "svc".into(),
        slot: 1,
        worker: config.workers[0].clone(),
        cpu: None,
        pin: false,
        stop_timeout: None,
    }
}
