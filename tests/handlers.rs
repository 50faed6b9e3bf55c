//! The `exec` and `stdio` handlers driven through the library API, with real
//! processes and no job server: payloads, the exec environment, progress
//! events, every way a handler can break (each failing only its own job),
//! and one job through every example in `examples/`.
//!
//! Test handlers live in `tests/handlers/`. Examples needing an interpreter
//! that is not installed are skipped with a message, unless
//! `SLOTMAN_TEST_REQUIRE=all`. Nothing here sleeps to wait: where a test must
//! know that a handler's whole process group is gone, the handler holds a
//! FIFO open and the test waits for its end of file ([`GroupWatch`]).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::quiet::ChildLog;
use slotman::config::{HandlerKind, WorkerConfig};
use slotman::slot::handler::{
    FailReason, Handler, HandlerError, Job, JobEvent, Outcome, SlotIdentity,
};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

// ---- helpers ---------------------------------------------------------------

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .into_owned()
}

/// A worker as `config` would produce it, running `command`.
fn worker(kind: HandlerKind, command: &[&str]) -> WorkerConfig {
    WorkerConfig {
        job_servers: vec![],
        kind,
        command: command.iter().map(|s| s.to_string()).collect(),
        max: 1,
        max_spawn_rate: 32,
        pin_cpu: true,
        ..WorkerConfig::builtin("Test")
    }
}

/// An example's worker, its stderr (the example's own log lines) kept in
/// `log`, shown only if the test fails.
fn example(kind: HandlerKind, command: &[&str], log: &ChildLog) -> WorkerConfig {
    let command = log.wrap(command);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    worker(kind, &command)
}

fn stdio_test(mode: &[&str]) -> WorkerConfig {
    let script = repo_file("tests/handlers/stdio-test.sh");
    let mut command = vec!["bash", script.as_str()];
    command.extend_from_slice(mode);
    worker(HandlerKind::Stdio, &command)
}

fn identity() -> SlotIdentity {
    SlotIdentity {
        service: "svc".into(),
        worker: "Test".into(),
        slot: 3,
    }
}

fn job(function: &str, payload: impl Into<Bytes>) -> Job {
    Job {
        function: function.into(),
        gearman_function: format!("Test::{function}"),
        handle: "H:test:1".into(),
        unique: None,
        payload: payload.into(),
    }
}

/// A drain that never comes.
fn never() -> CancellationToken {
    CancellationToken::new()
}

async fn start(worker: &WorkerConfig) -> Handler {
    match Handler::start(worker, &identity(), &never()).await {
        Ok(handler) => handler,
        Err(e) => panic!("handler {:?} did not start: {e}", worker.command),
    }
}

/// Runs one job; the outcome and every event it sent, in order.
async fn run(
    handler: &mut Handler,
    job: &Job,
    timeout: Option<Duration>,
) -> (Outcome, Vec<JobEvent>) {
    let (tx, mut rx) = mpsc::channel(64);
    let outcome = handler.run(job, &tx, timeout).await;
    drop(tx);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    (outcome, events)
}

async fn complete(handler: &mut Handler, job: &Job) -> Bytes {
    match run(handler, job, None).await {
        (Outcome::Complete(result), _) => result,
        (other, _) => panic!("job {} gave {other:?}", job.function),
    }
}

/// 64 KiB holding every byte value, NUL and newline included.
fn binary_payload() -> Bytes {
    (0..64 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 8) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Bigger than any pipe buffer: only goes through if payload and result flow at once.
fn big_payload() -> Bytes {
    (0..1024 * 1024u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn reversed(payload: &[u8]) -> Bytes {
    payload.iter().rev().copied().collect::<Vec<u8>>().into()
}

/// A FIFO that a handler opens (path in `$SLOTMAN_TEST_FIFO`), writes
/// `started` to, and passes on to a child: its reader sees end of file only
/// when every process holding it has exited.
struct GroupWatch {
    _dir: tempfile::TempDir,
    path: PathBuf,
    reader: pipe::Receiver,
    /// Our own writer, so that reads before the handler opens the FIFO wait
    /// instead of seeing end of file.
    writer: Option<pipe::Sender>,
    /// What the handler wrote to it so far.
    seen: Vec<u8>,
}

impl GroupWatch {
    fn new() -> GroupWatch {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("group.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let reader = pipe::OpenOptions::new()
            .open_receiver(&path)
            .expect("FIFO reader");
        let writer = pipe::OpenOptions::new()
            .open_sender(&path)
            .expect("FIFO writer");
        GroupWatch {
            _dir: dir,
            path,
            reader,
            writer: Some(writer),
            seen: Vec::new(),
        }
    }

    fn env(&self, worker: &mut WorkerConfig) {
        worker.env.insert(
            "SLOTMAN_TEST_FIFO".into(),
            self.path.to_string_lossy().into_owned(),
        );
    }

    /// Resolves once the handler said `started`; fails after 30 s.
    async fn started(&mut self) -> Result<(), String> {
        let wait = async {
            while !self.seen.ends_with(b"started\n") {
                let mut buf = [0u8; 64];
                match self.reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return Err("FIFO closed before `started`".to_owned()),
                    Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                }
            }
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .map_err(|_| "the handler never said `started`".to_owned())?
    }

    /// Resolves once the handler said `started` and then all its processes
    /// holding the FIFO are gone; fails after 30 s.
    async fn gone(mut self) -> Result<(), String> {
        self.started().await?;
        let wait = async {
            self.writer = None;
            let mut rest = Vec::new();
            self.reader
                .read_to_end(&mut rest)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .map_err(|_| "a process of the handler's group outlived it".to_owned())?
    }
}

/// Where `program` is on PATH, if it is.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The interpreter, or `None` after saying why the test is skipped (a panic
/// instead when `SLOTMAN_TEST_REQUIRE=all`).
fn interpreter(program: &str, test: &str) -> Option<String> {
    if let Some(path) = find_program(program) {
        return Some(path.to_string_lossy().into_owned());
    }
    if std::env::var("SLOTMAN_TEST_REQUIRE").as_deref() == Ok("all") {
        panic!("{test}: {program} not found on PATH, and SLOTMAN_TEST_REQUIRE=all");
    }
    eprintln!("skipping {test}: {program} not found on PATH (SLOTMAN_TEST_REQUIRE=all makes this a failure)");
    None
}

fn process_exists(pid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    nix::sys::signal::kill(pid, None).is_ok()
}

// ---- exec ------------------------------------------------------------------

#[tokio::test]
async fn exec_passes_payloads_through() {
    let mut cat = start(&worker(HandlerKind::Exec, &["cat"])).await;
    for payload in [
        Bytes::from_static(b"hello\nworld"),
        Bytes::new(),
        binary_payload(),
        big_payload(),
    ] {
        assert_eq!(
            complete(&mut cat, &job("cat", payload.clone())).await,
            payload
        );
    }
}

#[tokio::test]
async fn exec_exit_status_decides() {
    let mut h = start(&worker(
        HandlerKind::Exec,
        &["sh", "-c", "echo partial; exit 3"],
    ))
    .await;
    let (outcome, events) = run(&mut h, &job("f", "x"), None).await;
    assert_eq!(
        outcome,
        Outcome::Fail(FailReason::Declined("exit status 3".into()))
    );
    assert!(events.is_empty());

    let mut h = start(&worker(HandlerKind::Exec, &["sh", "-c", "kill -KILL $$"])).await;
    let (outcome, _) = run(&mut h, &job("f", "x"), None).await;
    assert_eq!(outcome, Outcome::Fail(FailReason::Died("signal 9".into())));
}

#[tokio::test]
async fn exec_that_cannot_start_fails_the_job() {
    let mut h = start(&worker(
        HandlerKind::Exec,
        &["/nonexistent/slotman-handler"],
    ))
    .await;
    let (outcome, _) = run(&mut h, &job("f", "x"), None).await;
    assert!(
        matches!(outcome, Outcome::Fail(FailReason::Spawn(ref why)) if why.contains("nonexistent")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn exec_need_not_read_its_input() {
    let mut h = start(&worker(HandlerKind::Exec, &["sh", "-c", "echo ok"])).await;
    assert_eq!(complete(&mut h, &job("f", big_payload())).await, "ok\n");
    let mut h = start(&worker(HandlerKind::Exec, &["true"])).await;
    assert_eq!(complete(&mut h, &job("f", big_payload())).await, "");
}

#[tokio::test]
async fn exec_result_is_bounded() {
    let mut w = worker(HandlerKind::Exec, &["head", "-c", "1025", "/dev/zero"]);
    w.max_packet_size = 1024;
    let mut h = start(&w).await;
    let (outcome, _) = run(&mut h, &job("f", ""), None).await;
    assert!(
        matches!(outcome, Outcome::Fail(FailReason::Framing(_))),
        "{outcome:?}"
    );

    // Endless output is cut off, not buffered.
    let mut w = worker(HandlerKind::Exec, &["cat", "/dev/zero"]);
    w.max_packet_size = 1024;
    let mut h = start(&w).await;
    let (outcome, _) = run(&mut h, &job("f", ""), None).await;
    assert!(
        matches!(outcome, Outcome::Fail(FailReason::Framing(_))),
        "{outcome:?}"
    );

    let mut w = worker(HandlerKind::Exec, &["head", "-c", "1024", "/dev/zero"]);
    w.max_packet_size = 1024;
    let mut h = start(&w).await;
    assert_eq!(complete(&mut h, &job("f", "")).await.len(), 1024);
}

#[tokio::test]
async fn exec_leftover_processes_do_not_hold_the_job() {
    // The background sleep inherits stdout; the job still ends when sh exits.
    let mut h = start(&worker(
        HandlerKind::Exec,
        &["sh", "-c", "sleep 1000 & echo done"],
    ))
    .await;
    let (outcome, _) = run(&mut h, &job("f", ""), Some(Duration::from_secs(20))).await;
    assert_eq!(outcome, Outcome::Complete(Bytes::from_static(b"done\n")));
}

#[tokio::test]
async fn exec_timeout_kills_the_process_group() {
    let watch = GroupWatch::new();
    let script = r#"exec 3>"$SLOTMAN_TEST_FIFO"; sleep 1000 & echo started >&3; wait"#;
    let mut w = worker(HandlerKind::Exec, &["bash", "-c", script]);
    watch.env(&mut w);
    let mut h = start(&w).await;
    let limit = Duration::from_secs(1);
    let hang = job("hang", "");
    let ((outcome, _), gone) = tokio::join!(run(&mut h, &hang, Some(limit)), watch.gone());
    assert_eq!(outcome, Outcome::Fail(FailReason::Timeout(limit)));
    assert_eq!(gone, Ok(()));
}

#[tokio::test]
async fn exec_user_group_and_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .expect("our own user has a name");
    let my_group = nix::unistd::Group::from_gid(nix::unistd::Gid::effective())
        .ok()
        .flatten()
        .expect("our own group has a name");
    let mut w = worker(HandlerKind::Exec, &["pwd"]);
    w.working_directory = Some(dir.path().to_owned());
    w.user = Some(me.name.clone());
    w.group = Some(my_group.name.clone());
    let mut h = start(&w).await;
    let pwd = complete(&mut h, &job("f", "")).await;
    let expected = dir.path().canonicalize().expect("canonical tempdir");
    assert_eq!(pwd, format!("{}\n", expected.display()));

    for (user, group) in [
        (Some("no-such-user-slotman"), None),
        (None, Some("no-such-group-slotman")),
    ] {
        let mut w = worker(HandlerKind::Exec, &["true"]);
        w.user = user.map(String::from);
        w.group = group.map(String::from);
        let mut h = start(&w).await;
        let (outcome, _) = run(&mut h, &job("f", ""), None).await;
        assert!(
            matches!(outcome, Outcome::Fail(FailReason::Spawn(_))),
            "{outcome:?}"
        );
    }
}

/// Runs [`exec_environment_child`] in a fresh test process whose own
/// environment holds what must be scrubbed: a process cannot safely change
/// its own environment while other test threads spawn processes.
#[test]
fn exec_environment_is_per_contract() {
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(exe)
        .args([
            "exec_environment_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLOTMAN_TEST_ENV_CHILD", "1")
        .env("SLOTMAN_TEST_INHERITED", "yes")
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .env("WATCHDOG_PID", "1")
        .env("WATCHDOG_USEC", "1000000")
        .env("LISTEN_FDS", "1")
        .env("SLOTMAN_CONTROL_FD", "3")
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn exec_environment_child() {
    if std::env::var_os("SLOTMAN_TEST_ENV_CHILD").is_none() {
        return; // Only meaningful when run by exec_environment_is_per_contract.
    }
    let mut w = worker(HandlerKind::Exec, &["env", "-0"]);
    w.env
        .insert("FROM_CONFIG".into(), "a value with spaces".into());
    w.env.insert("SLOTMAN_SLOT".into(), "not the slot".into());
    let mut h = start(&w).await;
    let env_of = |output: &Bytes| -> BTreeMap<String, String> {
        output
            .split(|&b| b == 0)
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (k, v) = entry.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    };

    let env = env_of(&complete(&mut h, &job("env", "ignored")).await);
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("SLOTMAN_FUNCTION"), Some("env"));
    assert_eq!(get("GEARMAN_FUNCTION"), Some("Test::env"));
    assert_eq!(get("GEARMAN_HANDLE"), Some("H:test:1"));
    assert_eq!(get("GEARMAN_UNIQUE"), Some(""));
    assert_eq!(get("SLOTMAN_SERVICE"), Some("svc"));
    assert_eq!(get("SLOTMAN_WORKER"), Some("Test"));
    assert_eq!(get("SLOTMAN_SLOT"), Some("3"));
    assert_eq!(get("FROM_CONFIG"), Some("a value with spaces"));
    assert_eq!(get("SLOTMAN_TEST_INHERITED"), Some("yes"));
    for scrubbed in slotman::slot::handler::scrubbed_env() {
        assert_eq!(get(scrubbed), None, "{scrubbed} reached the handler");
    }

    let mut with_unique = job("env", "");
    with_unique.unique = Some("order-42".into());
    let env = env_of(&complete(&mut h, &with_unique).await);
    assert_eq!(
        env.get("GEARMAN_UNIQUE").map(String::as_str),
        Some("order-42")
    );

    // A stdio handler gets the same environment without the per-job variables.
    let mut s = start(&stdio_test(&[])).await;
    let answer = complete(&mut s, &job("whoami", "")).await;
    assert_eq!(answer, "H:test:1 - svc Test 3 unset unset");
}

// ---- stdio -----------------------------------------------------------------

#[tokio::test]
async fn stdio_passes_payloads_through_one_process() {
    let mut h = start(&stdio_test(&[])).await;
    let pid = h.pid();
    assert!(pid.is_some());
    for payload in [
        Bytes::from_static(b"hello\nworld"),
        Bytes::new(),
        binary_payload(),
        big_payload(),
    ] {
        assert_eq!(
            complete(&mut h, &job("echo", payload.clone())).await,
            payload
        );
    }
    assert_eq!(h.pid(), pid);
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_job_fields_reach_the_handler() {
    let mut h = start(&stdio_test(&[])).await;
    let mut j = job("whoami", "x");
    j.unique = Some("u-1".into());
    assert_eq!(
        complete(&mut h, &j).await,
        "H:test:1 u-1 svc Test 3 unset unset"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_events_arrive_in_order() {
    let mut h = start(&stdio_test(&[])).await;
    let (outcome, events) = run(&mut h, &job("events", "x"), None).await;
    assert_eq!(outcome, Outcome::Complete(Bytes::from_static(b"done")));
    assert_eq!(
        events,
        vec![
            JobEvent::Status(1, 3),
            JobEvent::Data(Bytes::from_static(b"part\n")),
            JobEvent::Warning(Bytes::from_static(b"warn")),
            JobEvent::Status(3, 3),
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_fail_and_exception_keep_the_handler() {
    let mut h = start(&stdio_test(&[])).await;
    let pid = h.pid();
    let (outcome, _) = run(&mut h, &job("fail", "x"), None).await;
    assert_eq!(
        outcome,
        Outcome::Fail(FailReason::Declined("handler sent FAIL".into()))
    );
    let (outcome, _) = run(&mut h, &job("exception", "x"), None).await;
    assert_eq!(outcome, Outcome::Exception(Bytes::from_static(b"oops")));
    assert_eq!(complete(&mut h, &job("echo", "next")).await, "next");
    assert_eq!(h.pid(), pid);
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_broken_handlers_fail_one_job_and_are_replaced() {
    let mut h = start(&stdio_test(&[])).await;
    for function in ["crash", "kill", "garbage"] {
        let before = h.pid();
        let (outcome, _) = run(&mut h, &job(function, "x"), None).await;
        let expected = match (function, &outcome) {
            ("crash", Outcome::Fail(FailReason::Died(why))) => why == "exit status 3",
            ("kill", Outcome::Fail(FailReason::Died(why))) => why == "signal 9",
            ("garbage", Outcome::Fail(FailReason::Framing(why))) => why.contains("unknown frame"),
            _ => false,
        };
        assert!(expected, "{function} gave {outcome:?}");
        assert_eq!(complete(&mut h, &job("echo", "next")).await, "next");
        assert_ne!(
            h.pid(),
            before,
            "{function}: the next job ran on the broken handler"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_handler_that_exits_between_jobs_is_replaced_before_the_next() {
    let mut h = start(&stdio_test(&[])).await;
    for _ in 0..3 {
        let before = h.pid();
        assert_eq!(complete(&mut h, &job("quit", "x")).await, "bye");
        // The next job comes once it has exited and the runtime has seen its
        // SIGCHLD: a handler that dies right before a job may get it and
        // fail it (stdio.rs `unusable`). One park after the exit lets the
        // signal driver run.
        let pid = before.expect("a stdio handler has a pid");
        let exited = || slotman::procfs::stat(pid).is_none_or(|s| s.is_zombie());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !exited() {
            assert!(
                std::time::Instant::now() < deadline,
                "the handler did not exit after quit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(complete(&mut h, &job("echo", "next")).await, "next");
        assert_ne!(h.pid(), before, "the next job went to the exited handler");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_timeout_kills_the_process_group() {
    let watch = GroupWatch::new();
    let mut w = stdio_test(&[]);
    watch.env(&mut w);
    let mut h = start(&w).await;
    let before = h.pid();
    let limit = Duration::from_secs(1);
    let hang = job("hang", "x");
    let ((outcome, _), gone) = tokio::join!(run(&mut h, &hang, Some(limit)), watch.gone());
    assert_eq!(outcome, Outcome::Fail(FailReason::Timeout(limit)));
    assert_eq!(gone, Ok(()));
    assert_eq!(complete(&mut h, &job("echo", "next")).await, "next");
    assert_ne!(h.pid(), before);
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_answer_may_come_before_the_payload_is_read() {
    let mut h = start(&stdio_test(&[])).await;
    let pid = h.pid();
    assert_eq!(
        complete(&mut h, &job("early", big_payload())).await,
        "early"
    );
    assert_eq!(complete(&mut h, &job("echo", "next")).await, "next");
    assert_eq!(h.pid(), pid);
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_fields_beyond_plain_tokens_reach_the_handler() {
    let mut h = start(&stdio_test(&[])).await;
    let pid = h.pid();
    for unique in ["has a space", "-", "r\u{e9}sum\u{e9}"] {
        let mut j = job("whoami", "x");
        j.unique = Some(Bytes::from(unique));
        assert_eq!(
            complete(&mut h, &j).await,
            format!("H:test:1 {unique} svc Test 3 unset unset")
        );
    }
    assert_eq!(h.pid(), pid);
    h.shutdown().await;
}

#[tokio::test]
async fn stdio_start_failures_are_errors() {
    let not_ready = Handler::start(&stdio_test(&["notready"]), &identity(), &never()).await;
    assert!(
        matches!(not_ready, Err(HandlerError::NotReady { ref line, .. }) if line.contains("HELLO")),
        "{:?}",
        not_ready.err()
    );
    let exited = Handler::start(&stdio_test(&["exit"]), &identity(), &never()).await;
    assert!(
        matches!(exited, Err(HandlerError::ExitedBeforeReady { ref status, .. }) if status == "exit status 7"),
        "{:?}",
        exited.err()
    );
    let missing = Handler::start(
        &worker(HandlerKind::Stdio, &["/nonexistent/slotman-handler"]),
        &identity(),
        &never(),
    )
    .await;
    assert!(
        matches!(missing, Err(HandlerError::Spawn { .. })),
        "{:?}",
        missing.err()
    );
}

#[tokio::test]
async fn stdio_handler_that_never_says_ready_is_killed_at_its_ready_timeout() {
    let watch = GroupWatch::new();
    let mut w = stdio_test(&["mute"]);
    w.ready_timeout = Duration::from_millis(300);
    watch.env(&mut w);
    let (id, drain) = (identity(), never());
    let started = std::time::Instant::now();
    let (result, gone) = tokio::join!(Handler::start(&w, &id, &drain), watch.gone());
    let error = result.err().map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some("handler \"bash\" did not say READY within 300ms")
    );
    assert_eq!(gone, Ok(()), "the handler's process group is gone");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn stdio_drain_ends_the_wait_for_ready_at_once() {
    let mut watch = GroupWatch::new();
    let mut w = stdio_test(&["mute"]);
    w.ready_timeout = Duration::from_secs(300);
    watch.env(&mut w);
    let (id, drain) = (identity(), CancellationToken::new());
    let (result, asked) = tokio::join!(Handler::start(&w, &id, &drain), async {
        watch.started().await.expect("handler started");
        drain.cancel();
        std::time::Instant::now()
    });
    assert!(
        matches!(result, Err(HandlerError::Cancelled { .. })),
        "{:?}",
        result.err()
    );
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        watch.gone().await,
        Ok(()),
        "the handler's process group is gone"
    );
}

#[tokio::test]
async fn stdio_shutdown_ends_the_process() {
    for mode in [&[][..], &["stubborn"][..]] {
        let h = start(&stdio_test(mode)).await;
        let pid = h.pid().expect("a running handler has a pid");
        h.shutdown().await;
        assert!(!process_exists(pid), "{mode:?}: handler {pid} still exists");
    }
}

// ---- examples ----------------------------------------------------------------

/// Runs `reverse` with text and binary payloads through an example, as a
/// `JOB` and as a `JOBX` (a unique id that is not a plain word).
async fn check_reverse(h: &mut Handler) {
    for payload in [Bytes::from_static(b"hello\nworld"), binary_payload()] {
        assert_eq!(
            complete(h, &job("reverse", payload.clone())).await,
            reversed(&payload)
        );
        let mut jobx = job("reverse", payload.clone());
        jobx.unique = Some(Bytes::from_static(b"order 7\n\xff"));
        assert_eq!(complete(h, &jobx).await, reversed(&payload));
    }
}

/// Runs `wait` for 0.2 s and checks its ten progress reports.
async fn check_wait(h: &mut Handler) {
    let (outcome, events) = run(h, &job("wait", "0.2"), Some(Duration::from_secs(20))).await;
    assert_eq!(outcome, Outcome::Complete(Bytes::new()));
    let expected: Vec<JobEvent> = (1..=10).map(|i| JobEvent::Status(i, 10)).collect();
    assert_eq!(events, expected);
}

/// Starts the stdio example `file` under `program`, its stderr kept in the
/// returned log, and checks its `reverse` ([`check_reverse`]); `None` (the
/// test skips) without the interpreter.
async fn stdio_example(program: &str, file: &str) -> Option<(Handler, ChildLog)> {
    let interpreter = interpreter(program, &format!("the example {file}"))?;
    let log = ChildLog::new("the example's stderr");
    let mut h = start(&example(
        HandlerKind::Stdio,
        &[&interpreter, &repo_file(file)],
        &log,
    ))
    .await;
    check_reverse(&mut h).await;
    Some((h, log))
}

#[tokio::test]
async fn example_python() {
    let Some((mut h, _log)) = stdio_example("python3", "examples/python/worker.py").await else {
        return;
    };
    check_wait(&mut h).await;
    let (outcome, _) = run(&mut h, &job("fail", ""), None).await;
    assert_eq!(
        outcome,
        Outcome::Fail(FailReason::Declined("handler sent FAIL".into()))
    );
    let (outcome, _) = run(&mut h, &job("nope", ""), None).await;
    assert!(matches!(outcome, Outcome::Exception(_)), "{outcome:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn example_perl() {
    let Some((mut h, _log)) = stdio_example("perl", "examples/perl/worker.pl").await else {
        return;
    };
    check_wait(&mut h).await;
    h.shutdown().await;
}

#[tokio::test]
async fn example_php() {
    let Some((h, _log)) = stdio_example("php", "examples/php/worker.php").await else {
        return;
    };
    h.shutdown().await;
}

#[tokio::test]
async fn example_shell_exec() {
    let log = ChildLog::new("the example's stderr");
    let mut h = start(&example(
        HandlerKind::Exec,
        &["sh", &repo_file("examples/shell/reverse.sh")],
        &log,
    ))
    .await;
    check_reverse(&mut h).await;
    assert_eq!(complete(&mut h, &job("reverse", "")).await, "");
}

#[tokio::test]
async fn example_shell_stdio() {
    let Some((mut h, _log)) = stdio_example("bash", "examples/shell/stdio-worker.sh").await else {
        return;
    };
    assert_eq!(
        complete(&mut h, &job("upper", "Hello, World\n")).await,
        "HELLO, WORLD\n"
    );
    h.shutdown().await;
}
