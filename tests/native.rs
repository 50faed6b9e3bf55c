//! Native workers through the slot's relay: unmodified PHP `GearmanWorker`
//! (php-gearman) and Perl `Gearman::Worker` programs — the examples in
//! examples/native/ — run as first-class slots against a real gearmand,
//! driven by PHP's `GearmanClient`, Perl's `Gearman::Client` and the
//! project's own client: busy in status, `workleft`, `timeout`, a reload
//! and a scale-down that interrupt no job, SIGKILLed runners and workers,
//! a worker that breaks the protocol, one that never connects.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::service::{rt, sigkill, submit_bg, total_done, Service};
use common::{first_child, skip, wait_until, written, Gearmand};
use slotman::gearman::client::{Client, JobResult};

fn repo_file(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Whether PHP with the gearman extension is here (else the test skips).
fn php_gearman() -> bool {
    let ok = Command::new("php")
        .args(["-r", "exit(extension_loaded('gearman') ? 0 : 1);"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(
            "php-gearman",
            "php with the gearman extension is not installed (apt install php-cli php-gearman)",
        );
    }
    ok
}

/// Whether Perl's Gearman::Worker and Gearman::Client are here.
fn perl_gearman() -> bool {
    let ok = Command::new("perl")
        .args(["-MGearman::Worker", "-MGearman::Client", "-e1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(
            "perl-gearman",
            "Perl's Gearman::Worker is not installed (apt install libgearman-client-perl)",
        );
    }
    ok
}

const PHP_WORKER: &str = "examples/native/worker.php";
const PERL_WORKER: &str = "examples/native/worker.pl";

/// `command` for an example worker.
fn command(interpreter: &str, example: &str) -> String {
    format!("[\"{interpreter}\", \"{}\"]", repo_file(example))
}

/// A native worker `w` (functions `reverse` and `sleep`) plus `extra` keys.
fn config(server: &str, command: &str, extra: &str) -> String {
    format!(
        "[workers.w]\nkind = \"native\"\ncommand = {command}\nfunctions = [\"reverse\", \"sleep\"]\njob_servers = [\"{server}\"]\n{extra}"
    )
}

/// gearmand and a pool of the PHP (`php`) or Perl example worker `w` with
/// `extra` keys, its first slot ready (that runner's pid); `None` (after a
/// skip) when gearmand or the worker's Gearman library is missing.
fn example_pool(php: bool, extra: &str) -> Option<(Gearmand, Service, u32)> {
    let g = Gearmand::start()?;
    let command = if php {
        php_gearman().then(|| command("php", PHP_WORKER))?
    } else {
        perl_gearman().then(|| command("perl", PERL_WORKER))?
    };
    let mut svc = Service::new(&config(&g.addr, &command, extra));
    svc.start();
    let runner = svc.one_slot_ready("w");
    Some((g, svc, runner))
}

/// One foreground job through PHP's GearmanClient: `OK result` or `FAIL`.
fn php_submit(server: &str, function: &str, payload: &str) -> String {
    let script = r#"$c = new GearmanClient(); $c->addServers($argv[1]);
        $r = $c->doNormal($argv[2], $argv[3]);
        echo $c->returnCode() == GEARMAN_SUCCESS ? "OK $r" : "FAIL";"#;
    output(Command::new("php").args(["-r", script, server, function, payload]))
}

/// One foreground job through Perl's Gearman::Client: `OK result` or `FAIL`.
fn perl_submit(server: &str, function: &str, payload: &str) -> String {
    let script = r#"use Gearman::Client;
        my $c = Gearman::Client->new(job_servers => [$ARGV[0]]);
        my $r = $c->do_task($ARGV[1], $ARGV[2]);
        print defined $r ? "OK $$r" : "FAIL";"#;
    output(Command::new("perl").args(["-e", script, server, function, payload]))
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("client runs");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One foreground job through the project's client.
fn submit(server: &str, function: &str, payload: &str) -> JobResult {
    rt().block_on(async {
        let mut c = Client::connect(server).await.expect("connect");
        c.submit(function, "", payload.to_owned())
            .await
            .expect("submit")
            .result
    })
}

/// The slots whose worker logged a line, by the `[w#SLOT]` prefix the
/// runner puts on its worker's output outside the journal.
fn slots_that_logged(log: &str, what: &str) -> BTreeMap<u32, usize> {
    let mut seen = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains(what)) {
        if let Some(slot) = line
            .strip_prefix("[w#")
            .and_then(|rest| rest.split(']').next())
            .and_then(|n| n.parse().ok())
        {
            *seen.entry(slot).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn a_php_worker_shows_its_job_in_status_and_the_slots_client_id() {
    let Some((g, mut svc, runner)) = example_pool(true, "min = 1\nmax = 1\n") else {
        return;
    };
    let addr = g.addr.clone();
    let job = std::thread::spawn(move || php_submit(&addr, "w::sleep", "1.5"));
    wait_until(
        "the slot busy with w::sleep",
        Duration::from_secs(10),
        || {
            let w = svc.worker("w");
            w.busy == 1
                && w.slots[0]
                    .job
                    .as_ref()
                    .is_some_and(|j| j.function == "w::sleep")
        },
    );
    // gearadmin --workers shows which slot the worker is.
    let id = format!("slotman:svc:w:1:{runner}");
    let workers = g.workers();
    assert!(
        workers
            .iter()
            .any(|w| w.client_id == id && w.functions.contains(&"w::sleep".to_string())),
        "{id} in {workers:?}"
    );
    assert_eq!(job.join().expect("client thread"), "OK slept 1.5");
    assert_eq!(php_submit(&g.addr, "w::reverse", "abc"), "OK cba");
    wait_until(
        "both jobs counted, slot idle",
        Duration::from_secs(10),
        || {
            let w = svc.worker("w");
            w.jobs_complete == 2 && w.idle == 1
        },
    );
    assert!(svc.log().contains("[w#1] sleep: 1.5 s"), "{}", svc.log());
    assert!(svc.stop());
}

#[test]
fn workleft_recycles_a_perl_worker_between_jobs() {
    let Some((g, mut svc, _)) = example_pool(false, "min = 1\nmax = 1\nworkleft = 3\n") else {
        return;
    };
    for i in 0..9 {
        let payload = format!("job{i}");
        let reversed: String = payload.chars().rev().collect();
        assert_eq!(
            perl_submit(&g.addr, "w::reverse", &payload),
            format!("OK {reversed}")
        );
    }
    wait_until("9 jobs counted", Duration::from_secs(10), || {
        total_done(&svc.worker("w")) == 9
    });
    let by_slot = slots_that_logged(&svc.log(), "reverse: 4 bytes");
    assert!(
        by_slot.len() >= 3 && by_slot.values().all(|&n| n <= 3),
        "3 jobs per worker process at most: {by_slot:?}"
    );
    assert_eq!(svc.worker("w").jobs_failed, 0);
    assert!(svc.stop());
}

#[test]
fn a_job_past_timeout_fails_promptly_and_the_pool_serves_again() {
    let Some((g, mut svc, runner)) = example_pool(true, "min = 1\nmax = 1\ntimeout = \"1s\"\n")
    else {
        return;
    };
    let worker = first_child(runner);
    let start = Instant::now();
    assert_eq!(submit(&g.addr, "w::sleep", "30"), JobResult::Fail);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "failed after {took:?}"
    );
    // Same slot, a new worker process, serving.
    assert_eq!(
        submit(&g.addr, "w::reverse", "ok"),
        JobResult::Complete("ko".into())
    );
    let w = svc.worker("w");
    assert_eq!(w.slots.len(), 1);
    assert_eq!(w.slots[0].pid, Some(runner));
    assert_ne!(first_child(runner), worker, "the worker was replaced");
    wait_until("the failure counted", Duration::from_secs(5), || {
        svc.worker("w").jobs_failed == 1
    });
    assert!(svc.log().contains("timed out after 1s"), "{}", svc.log());
    assert!(svc.stop());
}

#[test]
fn a_reload_that_replaces_the_slot_lets_the_running_job_finish() {
    let Some(g) = Gearmand::start() else { return };
    if !perl_gearman() {
        return;
    }
    let base = config(&g.addr, &command("perl", PERL_WORKER), "min = 1\nmax = 1\n");
    let mut svc = Service::new(&base);
    svc.start();
    let old = svc.one_slot_ready("w");
    let addr = g.addr.clone();
    let job = std::thread::spawn(move || perl_submit(&addr, "w::sleep", "2"));
    wait_until("the job running", Duration::from_secs(10), || {
        svc.worker("w").busy == 1
    });
    // A new environment: the slot must be replaced.
    svc.write_config(&format!("{base}env = {{ GENERATION = \"2\" }}\n"));
    let reload = Command::new(common::slotman_bin())
        .args(["reload", "svc", "--runtime-dir"])
        .arg(svc.dir.path())
        .output()
        .expect("slotman reload");
    assert!(reload.status.success(), "{reload:?}");
    assert_eq!(job.join().expect("client thread"), "OK slept 2");
    wait_until("the old slot replaced", Duration::from_secs(15), || {
        let w = svc.worker("w");
        w.slots.len() == 1 && w.slots[0].pid != Some(old) && w.idle == 1
    });
    let w = svc.worker("w");
    assert_eq!((w.jobs_complete, w.jobs_failed), (1, 0));
    assert!(svc.stop());
}

#[test]
fn scaling_down_after_a_burst_fails_no_job() {
    let Some((g, mut svc, _)) = example_pool(true, "min = 1\nmax = 4\nidle_timeout = \"500ms\"\n")
    else {
        return;
    };
    // Four clients, ten 0.1-s jobs each, one at a time.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = g.addr.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| submit(&addr, "w::sleep", "0.1"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut peak = 0;
    let mut results = Vec::new();
    for c in clients {
        while !c.is_finished() {
            peak = peak.max(svc.worker("w").slots.len());
            std::thread::sleep(Duration::from_millis(20));
        }
        results.extend(c.join().expect("client thread"));
    }
    assert!(peak > 1, "the pool grew (peak {peak})");
    assert!(
        results
            .iter()
            .all(|r| *r == JobResult::Complete("slept 0.1".into())),
        "{results:?}"
    );
    wait_until("back to min", Duration::from_secs(15), || {
        svc.worker("w").slots.len() == 1
    });
    let w = svc.worker("w");
    assert_eq!((w.jobs_complete, w.jobs_failed), (40, 0));
    assert!(svc.stop());
}

#[test]
fn background_jobs_run_at_least_once_through_sigkilled_runners_and_workers() {
    let Some(g) = Gearmand::start() else { return };
    if !perl_gearman() {
        return;
    }
    let mut svc = Service::new(&format!(
        "[workers.w]\nkind = \"native\"\ncommand = {}\nfunctions = [\"record\"]\njob_servers = [\"{}\"]\nmin = 2\nmax = 2\n",
        command("perl", "tests/fixtures/native/record.pl"),
        g.addr
    ));
    svc.start();
    wait_until("2 slots ready", Duration::from_secs(10), || {
        svc.worker("w").idle == 2
    });
    const JOBS: usize = 300;
    submit_bg(
        &g.addr,
        "w::record",
        (0..JOBS).map(|i| (format!("u{i}"), format!("job{i}"))),
    );
    // Kill a runner, then a worker, then both of a slot, while jobs flow.
    let mut kills = 0;
    for round in 0..3 {
        wait_until("jobs flowing", Duration::from_secs(10), || {
            svc.worker("w").busy > 0
        });
        let runner = svc.worker("w").slots.iter().find_map(|s| s.pid);
        let Some(runner) = runner else { continue };
        let worker = first_child(runner);
        if round != 1 {
            sigkill(runner);
            kills += 1;
        }
        if round != 0 && worker != 0 {
            sigkill(worker);
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(kills >= 3);
    wait_until("queue drained", Duration::from_secs(60), || {
        g.function_status("w::record").0 == 0 && g.function_status("w::record").1 == 0
    });
    let record = svc.record();
    let ran: std::collections::BTreeSet<&str> = record.lines().collect();
    let missing: Vec<usize> = (0..JOBS)
        .filter(|i| !ran.contains(format!("job{i}").as_str()))
        .collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
    assert!(svc.stop());
}

#[test]
fn a_malformed_packet_from_the_worker_fails_its_job_only() {
    let Some(g) = Gearmand::start() else { return };
    let mut svc = Service::new(&format!(
        "[workers.w]\nkind = \"native\"\ncommand = [\"python3\", \"{}\"]\nfunctions = [\"echo\"]\njob_servers = [\"{}\"]\nmin = 1\nmax = 1\n",
        repo_file("tests/fixtures/native/raw_worker.py"),
        g.addr
    ));
    svc.start();
    svc.one_slot_ready("w");
    assert_eq!(submit(&g.addr, "w::echo", "garbage"), JobResult::Fail);
    assert_eq!(
        submit(&g.addr, "w::echo", "fine"),
        JobResult::Complete("fine".into())
    );
    assert!(
        svc.log().contains("malformed packet from the worker"),
        "{}",
        svc.log()
    );
    assert!(svc.stop());
}

#[test]
fn the_worker_is_told_its_servers_by_environment_and_argument() {
    let Some(g) = Gearmand::start() else { return };
    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("servers");
    // `$0` is the first argument after the script: `{job_servers}`.
    let command = |file: &std::path::Path| {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo $0 $SLOTMAN_JOB_SERVERS > {0}.tmp; mv {0}.tmp {0}; exec sleep 600\", \"--servers={{job_servers}}\"]",
            file.display()
        )
    };
    // A service with one slot of that worker (and `extra` keys), and what
    // the worker wrote.
    let start = |extra: &str| {
        let _ = std::fs::remove_file(&file);
        let svc = Service::running(&config(&g.addr, &command(&file), extra));
        let seen = written("the worker wrote its servers", &file);
        (svc, seen)
    };
    // Through the relay: the slot's own loopback addresses.
    let (mut svc, seen) = start("min = 1\nmax = 1\nready_timeout = \"1s\"\n");
    let (arg, env) = seen.trim().split_once(' ').expect("two words");
    assert_eq!(arg, format!("--servers={env}"));
    assert!(env.starts_with("127.0.0.1:") && env != g.addr, "{env}");
    // It never connects: the slot fails to start, and status says why.
    wait_until(
        "the start failure in status",
        Duration::from_secs(10),
        || {
            svc.worker("w")
                .problems
                .iter()
                .any(|p| p.contains("did not connect to its job servers"))
        },
    );
    assert!(svc.stop());

    // proxy = false: the real ones.
    let (mut svc, seen) = start("min = 1\nmax = 1\nproxy = false\n");
    assert_eq!(seen.trim(), format!("--servers={0} {0}", g.addr));
    assert!(svc.stop());
}

#[test]
fn a_job_server_restart_drops_the_workers_connection_and_it_serves_again() {
    let Some((mut g, mut svc, _)) = example_pool(false, "min = 1\nmax = 1\n") else {
        return;
    };
    assert_eq!(perl_submit(&g.addr, "w::reverse", "ab"), "OK ba");
    g.restart();
    // Gearman::Worker reconnects on its own (through the relay) once its
    // connection drops; jobs submitted meanwhile wait at gearmand.
    wait_until(
        "the worker registered again",
        Duration::from_secs(30),
        || g.function_status("w::reverse").2 >= 1,
    );
    assert_eq!(perl_submit(&g.addr, "w::reverse", "cd"), "OK dc");
    assert!(svc.stop());
}

#[test]
fn a_worker_with_two_job_servers_gets_a_relay_for_each() {
    let Some(a) = Gearmand::start() else { return };
    let Some(b) = Gearmand::start() else { return };
    if !perl_gearman() {
        return;
    }
    let mut svc = Service::new(&format!(
        "[workers.w]\nkind = \"native\"\ncommand = {}\nfunctions = [\"reverse\", \"sleep\"]\njob_servers = [\"{}\", \"{}\"]\nmin = 1\nmax = 1\n",
        command("perl", PERL_WORKER),
        a.addr,
        b.addr
    ));
    svc.start();
    let runner = svc.one_slot_ready("w");
    wait_until("registered at both", Duration::from_secs(10), || {
        a.function_status("w::reverse").2 == 1 && b.function_status("w::reverse").2 == 1
    });
    for (i, g) in [&a, &b, &a, &b].into_iter().enumerate() {
        let payload = format!("from{i}");
        let reversed: String = payload.chars().rev().collect();
        assert_eq!(
            perl_submit(&g.addr, "w::reverse", &payload),
            format!("OK {reversed}")
        );
    }
    // Each server sees the slot's identity.
    let id = format!("slotman:svc:w:1:{runner}");
    for g in [&a, &b] {
        assert!(g.workers().iter().any(|w| w.client_id == id));
    }
    wait_until("4 jobs counted", Duration::from_secs(10), || {
        svc.worker("w").jobs_complete == 4
    });
    assert!(svc.stop());
}

#[test]
fn a_big_binary_payload_crosses_the_relay_intact() {
    let Some((g, mut svc, _)) = example_pool(true, "min = 1\nmax = 1\n") else {
        return;
    };
    // 8 MiB of every byte value, NULs included: many reads, one packet.
    let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let reply = rt().block_on(async {
        let mut c = Client::connect(&g.addr).await.expect("connect");
        c.submit("w::reverse", "big", payload.clone())
            .await
            .expect("submit")
            .result
    });
    let reversed: Vec<u8> = payload.iter().rev().copied().collect();
    assert!(
        reply == JobResult::Complete(reversed.into()),
        "the reversed payload came back"
    );
    assert!(svc.stop());
}

/// `slotman pause|resume svc w`, which must succeed.
fn control(svc: &Service, what: &str) {
    let out = Command::new(common::slotman_bin())
        .args([what, "svc", "w", "--runtime-dir"])
        .arg(svc.dir.path())
        .output()
        .expect("slotman");
    assert!(out.status.success(), "{what}: {out:?}");
}

/// `pause` returns once it holds, also through the relay: while jobs
/// stream, a slot finishes at most the job in hand after it returns.
#[test]
fn once_pause_returns_a_native_slot_finishes_at_most_its_job_in_hand() {
    let Some((g, svc, _)) = example_pool(false, "min = 1\nmax = 1\n") else {
        return;
    };
    submit_bg(
        &g.addr,
        "w::reverse",
        (0..3000).map(|i| (format!("s{i}"), format!("payload {i}"))),
    );
    let queued = || g.function_status("w::reverse").0;
    for round in 0..5 {
        let before = queued();
        wait_until("jobs flowing", Duration::from_secs(20), || {
            queued() + 20 <= before
        });
        control(&svc, "pause");
        // Queued counts the job in hand, if any.
        let at_pause = queued();
        wait_until("the slot paused", Duration::from_secs(10), || {
            svc.worker("w").slots.iter().all(|s| s.state == "paused")
        });
        let after = queued();
        assert!(
            at_pause - after <= 1,
            "round {round}: {} jobs done after pause returned",
            at_pause - after
        );
        control(&svc, "resume");
    }
}

#[test]
fn a_paused_native_slot_takes_no_job_until_resumed() {
    let Some((g, mut svc, _)) = example_pool(false, "min = 1\nmax = 1\n") else {
        return;
    };
    control(&svc, "pause");
    wait_until("paused", Duration::from_secs(5), || svc.worker("w").paused);
    submit_bg(&g.addr, "w::reverse", [("p1".to_string(), "x".to_string())]);
    // The worker stays registered; its grabs get NO_JOB from the relay.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(g.function_status("w::reverse"), (1, 0, 1));
    control(&svc, "resume");
    wait_until("the job done after resume", Duration::from_secs(10), || {
        svc.worker("w").jobs_complete == 1
    });
    assert!(svc.stop());
}
