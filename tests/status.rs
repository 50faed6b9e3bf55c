//! `slotman status` against what is really running, a control socket that
//! survives bad peers, and one that a burst of requests or a stopped job
//! server cannot swell or hang.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::quiet::show;
use common::service::{rt, Service};
use common::{wait_until, Gearmand};
use slotman::control::proto::{ServiceStatus, SlotStatus};
use slotman::control::server::{Response, MAX_CONNECTIONS};
use slotman::control::snapshot::SAMPLE_MAX_AGE;
use slotman::gearman::client::{Client, JobResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(g: &Gearmand, min: u32, max: u32) -> String {
    format!(
        "[workers.w]\nkind = \"stdio\"\ncommand = [\"python3\", \"{}/tests/fixtures/handler.py\"]\nfunctions = [\"hold\", \"echo\", \"sleep\"]\njob_servers = [\"{}\"]\nmin = {min}\nmax = {max}\n",
        env!("CARGO_MANIFEST_DIR"),
        g.addr
    )
}

/// A service whose worker `w` has `n` slots, once every one is idle.
fn idle_service(g: &Gearmand, n: u32) -> Service {
    let svc = Service::running(&config(g, n, n));
    wait_until(&format!("{n} idle slots"), Duration::from_secs(15), || {
        svc.status().workers[0].idle == n
    });
    svc
}

#[test]
fn status_matches_what_is_running() {
    let Some(g) = Gearmand::start() else { return };
    let svc = idle_service(&g, 3);
    let rt = rt();
    rt.block_on(async {
        let mut c = Client::connect(&g.addr).await.expect("connect");
        for i in 0..7 {
            let r = c
                .submit("w::echo", &format!("e{i}"), "x")
                .await
                .expect("submit");
            assert_eq!(r.result, JobResult::Complete("x".into()));
        }
        // Two jobs in flight, each holding 50 MB for 3 s.
        c.submit_background("w::hold", "h1", "50")
            .await
            .expect("bg");
        c.submit_background("w::hold", "h2", "50")
            .await
            .expect("bg");
    });
    wait_until("two busy slots", Duration::from_secs(10), || {
        svc.status().workers[0].busy == 2
    });
    // The handlers touch their 50 MB after they take the job.
    wait_until(
        "both busy slots show their 50 MB",
        Duration::from_secs(10),
        || {
            let st = svc.status();
            let held = |s: &&SlotStatus| s.memory_bytes.is_some_and(|m| m > 50 * 1024 * 1024);
            st.workers[0]
                .slots
                .iter()
                .filter(|s| s.state == "busy")
                .filter(held)
                .count()
                == 2
        },
    );
    let st = svc.status();
    let w = &st.workers[0];
    assert_eq!(w.slots.len(), 3);
    assert_eq!(w.jobs_complete, 7, "jobs done match jobs sent");
    assert_eq!(w.busy, 2, "busy matches jobs in flight");
    for s in &w.slots {
        let pid = s.pid.expect("slot pid");
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "slot pid {pid} exists"
        );
        assert!(s.uptime_secs > 0.0);
        if s.state == "busy" {
            let job = s.job.as_ref().expect("busy slot shows its job");
            assert_eq!(job.function, "w::hold");
            let mem = s.memory_bytes.expect("memory known for a plain process");
            assert!(
                mem > 50 * 1024 * 1024,
                "slot holding 50 MB shows {mem} bytes"
            );
        }
    }
    let table = svc.status_table();
    assert!(
        table.contains("busy") && table.contains("w::hold"),
        "{table}"
    );
}

#[test]
fn garbage_and_stalled_peers_do_not_stop_the_manager() {
    let Some(g) = Gearmand::start() else { return };
    let svc = Service::running(&config(&g, 1, 3));
    let sock = svc.dir.path().join("svc.sock");
    // A peer that connects and never sends anything.
    let _stalled = UnixStream::connect(&sock).expect("connect");
    // A peer that sends garbage, and one that sends a huge line.
    let mut garbage = UnixStream::connect(&sock).expect("connect");
    garbage
        .write_all(b"\x00\xffnot json at all\n")
        .expect("write");
    let mut huge = UnixStream::connect(&sock).expect("connect");
    let _ = huge.write_all(&vec![b'x'; 1 << 20]);
    // Meanwhile the pool still scales and serves: 3 parallel sleeps need 3 slots.
    let rt = rt();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..3 {
            let addr = g.addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&addr).await.expect("connect");
                c.submit("w::sleep", &format!("s{i}"), "1")
                    .await
                    .expect("submit")
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.expect("join").result,
                JobResult::Complete("slept".into())
            );
        }
    });
    // A slot counts its jobs to the manager when it next turns idle, which
    // may be after the client has its answer.
    wait_until("3 jobs counted", Duration::from_secs(10), || {
        svc.status().workers[0].jobs_complete == 3
    });
    let st = svc.status();
    assert!(
        st.workers[0].slots.len() >= 2,
        "the pool grew: {:?}",
        st.workers[0]
    );
}

/// What a process holds: open file descriptors, threads, resident memory.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

impl Footprint {
    fn of(pid: u32) -> Footprint {
        let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Footprint {
            fds: count(format!("/proc/{pid}/fd")),
            threads: count(format!("/proc/{pid}/task")),
            rss_kib,
        }
    }

    fn max(self, o: Footprint) -> Footprint {
        Footprint {
            fds: self.fds.max(o.fds),
            threads: self.threads.max(o.threads),
            rss_kib: self.rss_kib.max(o.rss_kib),
        }
    }

    /// Back to `base`: no more descriptors or threads, and resident memory
    /// within 4 MiB (the allocator keeps some of what it was given).
    fn settled_to(self, base: Footprint) -> bool {
        self.fds <= base.fds && self.threads <= base.threads && self.rss_kib <= base.rss_kib + 4096
    }
}

/// Samples `pid`'s footprint every 5 ms until dropped; `peak` is the most
/// of each seen.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Footprint>>,
}

impl Watch {
    fn start(pid: u32) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Footprint::of(pid);
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(Footprint::of(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> Footprint {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// How one raw request over the control socket ended.
#[derive(Debug)]
enum Reply {
    Status(Box<ServiceStatus>),
    Busy,
}

/// One status request as the protocol has it; panics on anything but a
/// status or a full listen backlog (the manager's "busy").
async fn ask(sock: PathBuf) -> Reply {
    let mut s = match tokio::net::UnixStream::connect(&sock).await {
        Ok(s) => s,
        // The listen backlog is full: the kernel's own "busy".
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Reply::Busy,
        Err(e) => panic!("connect: {e}"),
    };
    s.write_all(b"{\"version\":1,\"request\":\"status\"}\n")
        .await
        .expect("write the request");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("an answer within 15 s");
    let line = out.split(|&b| b == b'\n').next().unwrap_or_default();
    let resp: Response = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "not a response ({e}; read: {read:?}): {:?}",
            String::from_utf8_lossy(&out)
        )
    });
    match resp {
        Response {
            ok: true,
            status: Some(st),
            ..
        } => Reply::Status(Box::new(st)),
        other => panic!("not a status: {other:?}"),
    }
}

/// `clients` tasks, each asking `each` times in a row; (statuses, busy).
fn burst(sock: &Path, clients: usize, each: usize) -> (Vec<ServiceStatus>, usize) {
    let rt = rt();
    rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let sock = sock.to_path_buf();
                tokio::spawn(async move {
                    let mut replies = Vec::new();
                    for _ in 0..each {
                        replies.push(ask(sock.clone()).await);
                    }
                    replies
                })
            })
            .collect();
        let (mut statuses, mut busy) = (Vec::new(), 0);
        for t in tasks {
            for r in t.await.expect("client task") {
                match r {
                    Reply::Status(st) => statuses.push(*st),
                    Reply::Busy => busy += 1,
                }
            }
        }
        (statuses, busy)
    })
}

#[test]
fn a_burst_of_status_requests_is_answered_and_leaves_nothing_behind() {
    let Some(g) = Gearmand::start() else { return };
    let svc = Service::running(&config(&g, 2, 2));
    let pid = svc.pid() as u32;
    let sock = svc.dir.path().join("svc.sock");
    wait_until("2 idle slots", Duration::from_secs(15), || {
        svc.status().workers[0].idle == 2
    });
    // The manager runs on one thread; the blocking one of the /proc scan
    // ends 10 s after its last use. The baseline is the quiet manager.
    wait_until("the manager on one thread", Duration::from_secs(30), || {
        Footprint::of(pid).threads == 1
    });
    let base = Footprint::of(pid);

    let watch = Watch::start(pid);
    let started = Instant::now();
    let (statuses, busy) = burst(&sock, 500, 4);
    let took = started.elapsed();
    let peak = watch.peak();
    assert_eq!(statuses.len() + busy, 2000, "every request answered");
    assert!(!statuses.is_empty(), "{busy} busy, none answered");
    for st in &statuses {
        let w = &st.workers[0];
        assert_eq!(w.slots.len(), 2, "{w:?}");
        assert_eq!(w.queued, Some(0), "gearmand answers: {w:?}");
    }
    // Bounded while it lasts: the connections being served, one admin
    // connection and the files of one /proc scan; one blocking thread.
    assert!(
        peak.fds <= base.fds + MAX_CONNECTIONS + 8,
        "fds: base {base:?}, peak {peak:?}"
    );
    assert!(
        peak.threads <= base.threads + 2,
        "threads: base {base:?}, peak {peak:?}"
    );
    // And everything is given back (the blocking thread after its 10 s).
    let mut after = Footprint::default();
    wait_until(
        "the footprint back at its baseline",
        Duration::from_secs(30),
        || {
            after = Footprint::of(pid);
            after.settled_to(base)
        },
    );
    show(&format!(
        "burst of 2000 in {took:?}: {} answered, {busy} busy; before {base:?}, peak {peak:?}, after {after:?}",
        statuses.len()
    ));
}

#[test]
fn status_answers_quickly_while_the_job_server_is_stopped() {
    use nix::sys::signal::{kill, Signal};
    let Some(g) = Gearmand::start() else { return };
    let svc = idle_service(&g, 1);
    let gearmand = nix::unistd::Pid::from_raw(g.pid().expect("gearmand runs") as i32);
    kill(gearmand, Signal::SIGSTOP).expect("SIGSTOP gearmand");
    // Resumed however the test ends, so that the fixture can stop it.
    struct Resume(nix::unistd::Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let _resume = Resume(gearmand);

    // A sample taken before the stop may be reused for 250 ms; after that
    // the queue is unknown, and every answer comes within a few seconds.
    let mut slowest = Duration::ZERO;
    wait_until(
        "the queue shown as unknown",
        Duration::from_secs(10),
        || {
            let started = Instant::now();
            let st = svc.status();
            slowest = slowest.max(started.elapsed());
            assert!(
                slowest < Duration::from_secs(4),
                "slotman status took {slowest:?}"
            );
            st.workers[0].queued.is_none()
        },
    );
    assert!(svc.status_table().contains("w"), "the table is shown too");

    // Many at once wait for the same admin query, not one each. Past the
    // reuse of the last sample (a span of time, nothing to poll for), the
    // burst finds none to reuse and shares one under way.
    std::thread::sleep(SAMPLE_MAX_AGE);
    let pid = svc.pid() as u32;
    let base = Footprint::of(pid);
    let watch = Watch::start(pid);
    let started = Instant::now();
    let (statuses, busy) = burst(&svc.dir.path().join("svc.sock"), 100, 2);
    let took = started.elapsed();
    let peak = watch.peak();
    assert_eq!(statuses.len() + busy, 200);
    // One admin timeout (1 s) and a little: not one per request.
    assert!(took < Duration::from_secs(4), "200 requests took {took:?}");
    assert!(statuses.iter().all(|st| st.workers[0].queued.is_none()));
    assert!(
        peak.fds <= base.fds + MAX_CONNECTIONS + 8,
        "fds: base {base:?}, peak {peak:?}"
    );
    show(&format!(
        "gearmand stopped: slotman status in at most {slowest:?}; 200 requests in {took:?}: {} answered, {busy} busy; before {base:?}, peak {peak:?}",
        statuses.len()
    ));
}
