//! The live controls an operator uses on a running service — `slotman
//! reload`, `restart`, `drain`, `pause`, `resume` — against a real gearmand
//! and real handlers.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::service::{handler, submit_bg, Service};
use common::{slotman_bin, wait_until, Gearmand};

fn config(server: &str, min: u32, max: u32) -> String {
    format!(
        "[workers.w]\nkind = \"stdio\"\ncommand = {}\nfunctions = [\"echo\", \"sleep\", \"record\"]\njob_servers = [\"{server}\"]\nmin = {min}\nmax = {max}\nidle_timeout = \"1h\"\n",
        handler()
    )
}

fn slotman(svc: &Service, args: &[&str]) -> Output {
    Command::new(slotman_bin())
        .args(args)
        .arg("--runtime-dir")
        .arg(svc.dir.path())
        .output()
        .expect("run slotman")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A service of worker `w` with `min` ready slots (`max` at most).
fn ready_service(g: &Gearmand, min: u32, max: u32) -> Service {
    let mut svc = Service::new(&config(&g.addr, min, max));
    svc.start();
    wait_until("min slots ready", Duration::from_secs(20), || {
        svc.worker("w").idle == min
    });
    svc
}

fn slot_ids(svc: &Service) -> BTreeSet<u32> {
    svc.worker("w").slots.iter().map(|s| s.id).collect()
}

#[test]
fn reload_waits_for_the_verdict_and_names_the_broken_line() {
    let Some(g) = Gearmand::start() else { return };
    let mut svc = Service::new(&config(&g.addr, 1, 4));
    svc.start();
    svc.one_slot_ready("w");

    svc.write_config(&config(&g.addr, 2, 4).replace("max = 4", "max = \"lots\""));
    let out = slotman(&svc, &["reload", "svc"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("svc.toml:") && stderr.contains("max"),
        "the refusal names FILE:LINE and the key: {}",
        text(&out)
    );
    assert_eq!(svc.worker("w").min, 1, "a refused config was applied");

    svc.write_config(&config(&g.addr, 2, 4));
    let out = slotman(&svc, &["reload", "svc"]);
    assert!(out.status.success(), "{}", text(&out));
    // Applied by the time the command returns.
    assert_eq!(svc.worker("w").min, 2);
    assert!(svc.stop(), "manager exit status");
}

#[test]
fn restart_replaces_every_slot_under_load_without_losing_a_job_or_capacity() {
    let Some(g) = Gearmand::start() else { return };
    let mut svc = ready_service(&g, 3, 4);
    let before = slot_ids(&svc);

    // A stream of jobs with unique ids while the restart runs, and a watch
    // on the slots that can take jobs.
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU32::new(0));
    let feeder = {
        let (stop, submitted, addr) = (stop.clone(), submitted.clone(), g.addr.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<(String, String)> = (i..i + 20)
                    .map(|n| (format!("job-{n}"), format!("job-{n} 0")))
                    .collect();
                submit_bg(&addr, "w::record", batch);
                i += 20;
                submitted.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let low = Arc::new(AtomicU32::new(u32::MAX));
    let watching = Arc::new(AtomicBool::new(true));
    let dir = svc.dir.path().to_path_buf();
    let watcher = {
        let (low, watching) = (low.clone(), watching.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let out = Command::new(slotman_bin())
                    .args(["status", "svc", "--json", "--runtime-dir"])
                    .arg(&dir)
                    .output()
                    .expect("status");
                if let Ok(st) =
                    serde_json::from_slice::<slotman::control::proto::ServiceStatus>(&out.stdout)
                {
                    let w = &st.workers[0];
                    low.fetch_min(w.idle + w.busy, Ordering::Relaxed);
                }
            }
        })
    };
    let out = slotman(&svc, &["restart", "svc"]);
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();
    assert!(out.status.success(), "{}", text(&out));
    stop.store(true, Ordering::Relaxed);
    let _ = feeder.join();

    let after = slot_ids(&svc);
    assert!(
        before.is_disjoint(&after),
        "old slots left after the restart returned: before {before:?}, after {after:?}"
    );
    assert!(
        low.load(Ordering::Relaxed) >= 3,
        "ready slots fell to {} during the restart",
        low.load(Ordering::Relaxed)
    );
    let n = submitted.load(Ordering::Relaxed);
    wait_until("every job ran", Duration::from_secs(30), || {
        let record = svc.record();
        let seen: BTreeSet<&str> = record
            .lines()
            .filter_map(|l| l.strip_prefix("done "))
            .collect();
        (0..n).all(|i| seen.contains(format!("job-{i}").as_str()))
    });
    assert!(svc.stop(), "manager exit status");
}

#[test]
fn pause_holds_jobs_resume_releases_them_and_drain_replaces_one_slot() {
    let Some(g) = Gearmand::start() else { return };
    let mut svc = ready_service(&g, 2, 2);

    let out = slotman(&svc, &["pause", "svc", "w"]);
    assert!(out.status.success(), "{}", text(&out));
    let w = svc.worker("w");
    assert!(w.paused, "status does not show the pause");
    assert!(w.slots.iter().all(|s| s.state == "paused"), "{:?}", w.slots);
    submit_bg(
        &g.addr,
        "w::record",
        [("held".to_string(), "held 0".to_string())],
    );
    // The job waits at the job server while the worker is paused.
    wait_until("the job queued", Duration::from_secs(10), || {
        g.function_status("w::record").0 == 1
    });
    assert!(svc.record().is_empty(), "a paused slot ran a job");

    let out = slotman(&svc, &["resume", "svc", "w"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the held job ran", Duration::from_secs(10), || {
        svc.record().contains("held")
    });

    let before = slot_ids(&svc);
    let target = *before.iter().next().expect("a slot");
    let out = slotman(&svc, &["drain", "svc", "w", &target.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the drained slot replaced", Duration::from_secs(20), || {
        let now = slot_ids(&svc);
        !now.contains(&target) && now.len() == 2 && svc.worker("w").idle == 2
    });
    let after = slot_ids(&svc);
    assert_eq!(
        before.intersection(&after).count(),
        1,
        "exactly one slot replaced: before {before:?}, after {after:?}"
    );

    let out = slotman(&svc, &["drain", "svc", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        svc.log().contains("drain requested by uid"),
        "commands are logged with the caller"
    );
    assert!(svc.stop(), "manager exit status");
}

#[test]
fn a_stale_socket_and_a_refused_one_are_called_what_they_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A socket file nobody listens on: what a killed manager leaves.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("gone.sock")).expect("bind"));
    let out = Command::new(slotman_bin())
        .args(["status", "gone", "--runtime-dir"])
        .arg(dir.path())
        .output()
        .expect("slotman status");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is stale"),
        "{}",
        text(&out)
    );

    // A live socket of mode 0600 asked by an unprivileged user.
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let Some(g) = Gearmand::start() else { return };
    let mut svc = Service::new(&config(&g.addr, 1, 1));
    svc.start();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(svc.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(slotman_bin())
        .args(["status", "svc", "--runtime-dir"])
        .arg(svc.dir.path())
        .output()
        .expect("runuser");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied")
            && String::from_utf8_lossy(&out.stderr).contains("control_group"),
        "{}",
        text(&out)
    );
    assert!(svc.stop(), "manager exit status");
}

/// Per handler process: jobs noted as started, and how many of them are
/// not yet done.
fn per_handler(record: &str) -> std::collections::BTreeMap<String, (usize, usize)> {
    let mut pid_of = std::collections::BTreeMap::new();
    let mut per = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for line in record.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["start", job, pid] => {
                pid_of.insert(job.to_string(), pid.to_string());
                let e = per.entry(pid.to_string()).or_default();
                e.0 += 1;
                e.1 += 1;
            }
            ["done", job] => {
                if let Some(e) = pid_of.get(job).and_then(|p| per.get_mut(p)) {
                    e.1 -= 1;
                }
            }
            _ => {}
        }
    }
    per
}

/// `pause` returns only once it holds: from then on each slot finishes at
/// most the job in hand, even while jobs stream in (a slot that answers a
/// job asks for the next one in the same write, so a pause its runner has
/// not yet heard of would let one more job start). Ten rounds, to meet
/// the moment a job ends.
#[test]
fn once_pause_returns_no_slot_starts_another_job() {
    let Some(g) = Gearmand::start() else { return };
    let svc = ready_service(&g, 2, 2);
    submit_bg(
        &g.addr,
        "w::record",
        (0..400).map(|i| (format!("j{i}"), format!("j{i} 0.02"))),
    );
    let done = || {
        svc.record()
            .lines()
            .filter(|l| l.starts_with("done"))
            .count()
    };
    for round in 0..10 {
        let flowing = done();
        wait_until("jobs flowing", Duration::from_secs(20), || {
            done() >= flowing + 4
        });
        let out = slotman(&svc, &["pause", "svc", "w"]);
        assert!(out.status.success(), "{}", text(&out));
        let at_pause = per_handler(&svc.record());
        wait_until("both slots paused", Duration::from_secs(20), || {
            let w = svc.worker("w");
            w.slots.len() == 2 && w.slots.iter().all(|s| s.state == "paused")
        });
        let after = per_handler(&svc.record());
        for (pid, (started, open)) in &after {
            assert_eq!(
                *open, 0,
                "round {round}: handler {pid} runs a job while paused"
            );
            let (started_before, open_before) = at_pause.get(pid).copied().unwrap_or_default();
            // At most the job in hand: noted already (open then), or handed
            // over just before `pause` returned and noted after.
            assert!(
                open_before + (started - started_before) <= 1,
                "round {round}: handler {pid} had {open_before} job in hand when pause \
                 returned and started {} more",
                started - started_before
            );
        }
        let out = slotman(&svc, &["resume", "svc", "w"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}
