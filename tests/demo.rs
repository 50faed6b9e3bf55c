//! `slotman demo` and its embedded job server (`slotman::demo::jobserver`,
//! used when no gearmand is installed), against real parts: slot runners
//! under `slotman run`, the project's client, Perl's Gearman::Client and
//! Gearman::Worker, and libgearman's `gearman` / `gearadmin` (what users'
//! own tools will talk to it with). Faults: a runner SIGKILLed mid-job,
//! malformed packets, a client that never reads.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use common::service::{handler, rt, sigkill, total_done, Service};
use common::{gearmand_path, skip, slotman_bin, wait_until, Gearmand};
use slotman::demo::jobserver::JobServer;
use slotman::gearman::admin::{self, FunctionStatus, WorkerInfo};
use slotman::gearman::client::{Client, JobResult};
use slotman::gearman::codec::PacketCodec;
use slotman::gearman::packet::{Packet, PacketType};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded job server on a runtime of its own: its tasks run on the
/// runtime's threads while the test blocks.
struct Embedded {
    rt: tokio::runtime::Runtime,
    server: Option<JobServer>,
    addr: String,
}

impl Embedded {
    fn start() -> Embedded {
        let rt = rt();
        let server = rt
            .block_on(JobServer::start(SocketAddr::from(([127, 0, 0, 1], 0))))
            .expect("start the embedded job server");
        let addr = server.addr().to_string();
        Embedded {
            rt,
            server: Some(server),
            addr,
        }
    }

    fn port(&self) -> String {
        self.addr.rsplit(':').next().expect("port").to_string()
    }

    fn status(&self) -> Vec<FunctionStatus> {
        self.rt
            .block_on(admin::status(&self.addr, ADMIN_TIMEOUT))
            .expect("admin status")
    }

    fn workers(&self) -> Vec<WorkerInfo> {
        self.rt
            .block_on(admin::workers(&self.addr, ADMIN_TIMEOUT))
            .expect("admin workers")
    }

    /// (total, running, workers) of `function`, zeros when it is not listed.
    fn function(&self, function: &str) -> (u64, u64, u64) {
        self.status()
            .into_iter()
            .find(|f| f.name == function)
            .map_or((0, 0, 0), |f| (f.queued, f.running, f.workers))
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Stop serving before the runtime goes.
        self.server.take();
    }
}

/// A `slotman run` service with one stdio worker `w` (the test handler) on
/// the embedded server.
fn service(server: &Embedded, functions: &str, min: u32, max: u32) -> Service {
    let mut svc = Service::new(&format!(
        "[workers.w]\nkind = \"stdio\"\ncommand = {}\nfunctions = {functions}\njob_servers = [\"{}\"]\nmin = {min}\nmax = {max}\n",
        handler(),
        server.addr
    ));
    svc.start();
    svc
}

#[test]
fn slot_runners_serve_foreground_and_background_jobs_with_progress() {
    let server = Embedded::start();
    let svc = service(&server, r#"["echo", "progress"]"#, 2, 2);
    wait_until("both slots registered", Duration::from_secs(20), || {
        server.function("w::echo").2 == 2 && server.function("w::progress").2 == 2
    });
    // `workers` shows each slot's connection with its client id.
    let slots: Vec<WorkerInfo> = server
        .workers()
        .into_iter()
        .filter(|w| w.client_id.starts_with("slotman:svc:w:"))
        .collect();
    assert_eq!(slots.len(), 2, "{slots:?}");
    for s in &slots {
        assert_eq!(s.functions, ["w::echo", "w::progress"]);
        assert_eq!(s.address, "127.0.0.1");
    }

    let (progress, echoed) = server.rt.block_on(async {
        let mut c = Client::connect(&server.addr).await.expect("connect");
        let progress = c.submit("w::progress", "", "").await.expect("progress");
        let mut echoed = Vec::new();
        let payloads = [
            Bytes::from_static(b"plain"),
            Bytes::from_static(b"nul\0inside\0"),
            Bytes::from("ütf-8 ✓"),
            Bytes::new(),
            Bytes::from(vec![7u8; 1 << 20]),
        ];
        for (i, p) in payloads.into_iter().enumerate() {
            // Unique ids with spaces, a tab and UTF-8 pass through too.
            let unique = format!("ü {i}\t✓");
            let reply = c.submit("w::echo", unique, p.clone()).await.expect("echo");
            echoed.push((p, reply.result));
        }
        (progress, echoed)
    });
    assert_eq!(progress.result, JobResult::Complete(Bytes::from("done")));
    assert_eq!(progress.statuses, [(1, 2), (2, 2)]);
    assert_eq!(progress.data, [Bytes::from("part")]);
    assert_eq!(progress.warnings, [Bytes::from("warn")]);
    for (sent, got) in echoed {
        assert_eq!(got, JobResult::Complete(sent));
    }

    server.rt.block_on(async {
        let mut c = Client::connect(&server.addr).await.expect("connect");
        for i in 0..30 {
            c.submit_background("w::echo", format!("bg-{i}"), "x")
                .await
                .expect("submit");
        }
    });
    wait_until("every background job done", Duration::from_secs(30), || {
        total_done(&svc.worker("w")) >= 36
    });
    let w = svc.worker("w");
    assert_eq!(w.jobs_complete, 36);
    // The manager reads the queue depth from the server's admin `status`.
    assert_eq!(w.queued, Some(0));
    assert_eq!(server.function("w::echo"), (0, 0, 2), "nothing left queued");
}

#[test]
fn a_runner_killed_mid_job_has_its_job_run_again_and_the_client_answered() {
    let server = Embedded::start();
    let svc = service(&server, r#"["sleep"]"#, 2, 2);
    wait_until("both slots registered", Duration::from_secs(20), || {
        server.function("w::sleep").2 == 2
    });
    let addr = server.addr.clone();
    let job = server.rt.spawn(async move {
        let mut c = Client::connect(&addr).await.expect("connect");
        c.submit("w::sleep", "killed-once", "1.5").await
    });
    let mut victim = None;
    wait_until("a slot runs the job", Duration::from_secs(10), || {
        victim = svc.worker("w").slots.iter().find_map(|s| {
            let running = s.job.as_ref()?;
            (running.running_secs >= 0.2).then_some((s.pid?, running.handle.clone()))
        });
        victim.is_some()
    });
    let (pid, handle) = victim.expect("a busy slot");
    sigkill(pid);
    let reply = server
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), job).await })
        .expect("the client is answered within 30 s")
        .expect("client task")
        .expect("the job completes");
    assert_eq!(reply.handle, handle, "the same job, run again");
    assert_eq!(reply.result, JobResult::Complete(Bytes::from("slept")));
    wait_until("the killed slot replaced", Duration::from_secs(20), || {
        let w = svc.worker("w");
        w.restarts >= 1 && server.function("w::sleep") == (0, 0, 2)
    });
}

#[test]
fn unique_ids_coalesce_foreground_jobs_and_are_free_again_once_a_job_ends() {
    let server = Embedded::start();
    let svc = service(&server, r#"["record", "fail"]"#, 2, 2);
    wait_until("both slots registered", Duration::from_secs(20), || {
        server.function("w::record").2 == 2
    });
    let submit = |unique: &'static str, function: &'static str, payload: &'static str| {
        let addr = server.addr.clone();
        server.rt.spawn(async move {
            let mut c = Client::connect(&addr).await.expect("connect");
            let reply =
                tokio::time::timeout(Duration::from_secs(20), c.submit(function, unique, payload))
                    .await;
            reply.expect("answered within 20 s").expect("submitted")
        })
    };
    let first = submit("same", "w::record", "a 0.8");
    // The second submission joins the first while it is queued or running.
    wait_until("the first is queued", Duration::from_secs(10), || {
        server.function("w::record").0 == 1
    });
    let second = submit("same", "w::record", "b 0.8");
    let (a, b) = server
        .rt
        .block_on(async { (first.await.expect("first"), second.await.expect("second")) });
    assert_eq!(a.handle, b.handle, "one job");
    assert_eq!(a.result, JobResult::Complete(Bytes::from("a")));
    assert_eq!(b.result, a.result, "both clients get its result");
    // Once it has ended, the same unique id is a new job.
    let c = server
        .rt
        .block_on(submit("same", "w::record", "c 0.1"))
        .expect("third");
    assert_ne!(c.handle, a.handle);
    assert_eq!(c.result, JobResult::Complete(Bytes::from("c")));
    let starts: Vec<String> = svc
        .record()
        .lines()
        .filter_map(|l| l.strip_prefix("start "))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(starts, ["a", "c"], "b ran as a, not by itself");
    // A failed job frees its unique id too: the next submission runs (and
    // is answered) instead of waiting on a dead job.
    let f1 = server
        .rt
        .block_on(submit("u", "w::fail", ""))
        .expect("fail 1");
    let f2 = server
        .rt
        .block_on(submit("u", "w::fail", ""))
        .expect("fail 2");
    assert_eq!(
        (f1.result, f2.result.clone()),
        (JobResult::Fail, JobResult::Fail)
    );
    assert_ne!(f1.handle, f2.handle);
}

/// Whether a tool is installed; skips (or fails, when required) if not.
fn installed(program: &str, tier: &str, why: &str) -> bool {
    if Path::new(program).exists() {
        return true;
    }
    skip(tier, why);
    false
}

const PERL_SCRIPT: &str = r#"
use strict; use warnings;
use Gearman::Client; use Gearman::Worker;
$| = 1;
my $addr = shift;
my $pid = fork() // die "fork: $!";
if (!$pid) {
    my $w = Gearman::Worker->new(job_servers => [$addr]);
    $w->register_function(rev => sub {
        my $job = shift;
        $job->set_status(1, 2);
        return scalar reverse $job->arg;
    });
    $w->register_function(slow => sub { select(undef, undef, undef, 0.5); return "slow " . $_[0]->arg });
    $w->work while 1;
    exit 0;
}
my $c = Gearman::Client->new(job_servers => [$addr]);
my @status;
my $r = $c->do_task(rev => "hello", { on_status => sub { push @status, join("/", @_) } });
print "rev: ", ($r ? $$r : "undef"), "\n";
print "status: @status\n";
my $h = $c->dispatch_background(slow => "bg");
my $st = $c->get_status($h);
print "bg known: ", ($st && $st->known ? 1 : 0), "\n";
for (1 .. 200) {
    $st = $c->get_status($h);
    last unless $st && $st->known;
    select(undef, undef, undef, 0.05);
}
print "bg done: ", ($st && !$st->known ? 1 : 0), "\n";
my $ts = $c->new_task_set;
my @got;
$ts->add_task(slow => "same", { uniq => "shared", on_complete => sub { push @got, ${$_[0]} } }) for 1 .. 2;
$ts->wait(timeout => 20);
print "coalesced: ", scalar(@got), " [@got]\n";
kill 'KILL', $pid;
waitpid $pid, 0;
"#;

#[test]
fn perl_gearman_client_and_worker_speak_to_it() {
    let perl_ok = Command::new("perl")
        .args(["-MGearman::Client", "-MGearman::Worker", "-e", "1"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !perl_ok {
        skip(
            "perl-gearman",
            "Perl's Gearman::Client is not installed (apt install libgearman-client-perl)",
        );
        return;
    }
    let run = |addr: &str| {
        let out = Command::new("timeout")
            .args(["60", "perl", "-e", PERL_SCRIPT, addr])
            .output()
            .expect("run perl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "perl against {addr} failed: {stdout}\n{stderr}"
        );
        stdout
    };
    let server = Embedded::start();
    let stdout = run(&server.addr);
    for line in [
        "rev: olleh",
        "status: 1/2",
        "bg known: 1",
        "bg done: 1",
        "coalesced: 2 [slow same slow same]",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    // The same script says the same against gearmand.
    if let Some(g) = Gearmand::start() {
        assert_eq!(run(&g.addr), stdout, "gearmand and the demo server agree");
    }
}

#[test]
fn libgearman_tools_speak_to_it() {
    let (gearman, gearadmin) = ("/usr/bin/gearman", "/usr/bin/gearadmin");
    let why = "gearman-tools (`gearman`, `gearadmin`) is not installed";
    if !installed(gearman, "gearmand", why) || !installed(gearadmin, "gearmand", why) {
        return;
    }
    let server = Embedded::start();
    let port = server.port();
    // A libgearman worker: `rev` is answered by `rev`, three jobs, then it exits.
    let mut worker = Command::new(gearman)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-w",
            "-c",
            "3",
            "-f",
            "cli::rev",
            "--",
            "rev",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("gearman -w");
    wait_until(
        "the gearman worker registered",
        Duration::from_secs(10),
        || server.function("cli::rev").2 == 1,
    );
    let admin = |flag: &str| {
        let out = Command::new(gearadmin)
            .args(["-h", "127.0.0.1", "-p", &port, flag])
            .output()
            .expect("gearadmin");
        assert!(out.status.success(), "gearadmin {flag}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = admin::parse_status(&admin("--status")).expect("gearadmin --status parses");
    assert!(
        status
            .iter()
            .any(|f| f.name == "cli::rev" && f.workers == 1),
        "{status:?}"
    );
    let workers = admin::parse_workers(&admin("--workers")).expect("gearadmin --workers parses");
    assert!(
        workers.iter().any(|w| w.functions == ["cli::rev"]),
        "{workers:?}"
    );
    assert!(admin("--server-version").contains("slotman demo job server"));

    let client = |extra: &[&str], payload: &str| {
        let out = Command::new("timeout")
            .args(["30", gearman, "-h", "127.0.0.1", "-p", &port])
            .args(extra)
            .args(["-f", "cli::rev", "--", payload])
            .output()
            .expect("gearman client");
        assert!(out.status.success(), "gearman {extra:?} {payload}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(client(&[], "hello").trim(), "olleh");
    client(&["-b"], "background");
    assert_eq!(client(&["-u", "my-unique"], "abc").trim(), "cba");
    let exited = worker.wait().expect("worker exits after 3 jobs");
    assert!(exited.success());
    assert_eq!(server.function("cli::rev"), (0, 0, 0));
}

/// A connection speaking the binary protocol directly.
async fn raw(addr: &str) -> Framed<TcpStream, PacketCodec> {
    Framed::new(
        TcpStream::connect(addr).await.expect("connect"),
        PacketCodec::default(),
    )
}

fn req(kind: PacketType, args: &[&[u8]]) -> Packet {
    Packet::req(
        kind,
        args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
    )
}

/// A raw worker for `function`, registered once the server has echoed.
async fn raw_worker(addr: &str, client_id: &str, function: &str) -> Framed<TcpStream, PacketCodec> {
    let mut worker = raw(addr).await;
    for p in [
        req(PacketType::SetClientId, &[client_id.as_bytes()]),
        req(PacketType::CanDo, &[function.as_bytes()]),
        req(PacketType::EchoReq, &[b"ready"]),
    ] {
        worker.feed(p).await.expect("send");
    }
    worker.flush().await.expect("flush");
    let echo = worker.next().await.expect("open").expect("packet");
    assert_eq!(echo.kind, PacketType::EchoRes);
    worker
}

/// Grabs until a job is assigned (it may not be queued yet).
async fn grab(worker: &mut Framed<TcpStream, PacketCodec>) -> Packet {
    loop {
        worker
            .send(req(PacketType::GrabJobUniq, &[]))
            .await
            .expect("grab");
        let p = worker.next().await.expect("open").expect("packet");
        match p.kind {
            PacketType::JobAssignUniq => return p,
            PacketType::NoJob => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("unexpected {other}"),
        }
    }
}

/// Reads until the server closes the connection; false if it stays open
/// for 10 s.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[test]
fn a_bad_packet_drops_its_connection_only_and_the_server_serves_on() {
    let server = Embedded::start();
    let addr = server.addr.clone();
    server.rt.block_on(async {
        // A worker that must survive everything below.
        let mut worker = raw_worker(&addr, "keeper", "f").await;

        let oversized = {
            let mut h = b"\0REQ\0\0\0\x10".to_vec();
            h.extend_from_slice(&u32::MAX.to_be_bytes());
            h
        };
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("bad magic", b"\0REX\0\0\0\x10\0\0\0\0".to_vec()),
            ("unknown type", b"\0REQ\0\0\0\x63\0\0\0\0".to_vec()),
            ("oversized", oversized),
            (
                "missing arguments",
                b"\0REQ\0\0\0\x07\0\0\0\x03abc".to_vec(),
            ),
            ("body on NOOP", b"\0REQ\0\0\0\x06\0\0\0\x01x".to_vec()),
            ("endless admin line", vec![b'x'; 10_000]),
        ];
        for (what, bytes) in bad {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            s.write_all(&bytes).await.expect("write");
            assert!(closed_by_server(&mut s).await, "{what}: connection dropped");
        }
        // Half a packet, then the peer leaves: nothing to answer.
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"\0REQ\0\0").await.expect("write");
        drop(s);

        // The worker is still registered and still gets jobs.
        let workers = admin::workers(&addr, ADMIN_TIMEOUT).await.expect("workers");
        assert!(workers
            .iter()
            .any(|w| w.client_id == "keeper" && w.functions == ["f"]));
        let client = tokio::spawn({
            let addr = addr.clone();
            async move {
                let mut c = Client::connect(&addr).await.expect("connect");
                c.submit("f", "", "ping").await.expect("submit")
            }
        });
        let assign = grab(&mut worker).await;
        assert_eq!(assign.arg(3), b"ping");
        let handle = assign.arg_bytes(0);
        worker
            .send(Packet::req(
                PacketType::WorkComplete,
                vec![handle, Bytes::from("pong")],
            ))
            .await
            .expect("complete");
        let reply = client.await.expect("client");
        assert_eq!(reply.result, JobResult::Complete(Bytes::from("pong")));
    });
}

#[test]
fn a_client_that_never_reads_is_dropped_and_the_server_serves_on() {
    let server = Embedded::start();
    let addr = server.addr.clone();
    server.rt.block_on(async {
        let mut worker = raw_worker(&addr, "flooder", "flood").await;
        // A client submits a job and never reads again.
        let mut deaf = TcpStream::connect(&addr).await.expect("connect");
        deaf.write_all(&req(PacketType::SubmitJob, &[b"flood", b"", b""]).to_bytes())
            .await
            .expect("submit");
        let assign = grab(&mut worker).await;
        let handle = assign.arg_bytes(0);
        // 256 MiB of WORK_DATA for it: far more than the socket buffers and
        // the server's per-connection budget hold.
        let chunk = Bytes::from(vec![b'd'; 1 << 20]);
        let before = admin::workers(&addr, ADMIN_TIMEOUT)
            .await
            .expect("workers")
            .len();
        let started = Instant::now();
        let mut dropped = false;
        for _ in 0..256 {
            worker
                .feed(Packet::req(
                    PacketType::WorkData,
                    vec![handle.clone(), chunk.clone()],
                ))
                .await
                .expect("data");
            worker.flush().await.expect("flush");
            let now = admin::workers(&addr, ADMIN_TIMEOUT)
                .await
                .expect("workers")
                .len();
            if now < before {
                dropped = true;
                break;
            }
        }
        assert!(dropped, "the deaf client's connection was dropped");
        assert!(started.elapsed() < Duration::from_secs(30));
        // The worker's own connection is fine: its late result is taken
        // (and goes nowhere), and a new client is served.
        worker
            .send(Packet::req(
                PacketType::WorkComplete,
                vec![handle, Bytes::new()],
            ))
            .await
            .expect("complete");
        let mut c = Client::connect(&addr).await.expect("connect");
        assert_eq!(
            c.echo("still here").await.expect("echo"),
            Bytes::from("still here")
        );
        // The server reads the worker's packets in order, so the answer
        // is taken after whatever WORK_DATA it still had buffered: wait.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = admin::status(&addr, ADMIN_TIMEOUT).await.expect("status");
            let flood = status
                .iter()
                .find(|f| f.name == "flood")
                .expect("flood listed");
            let counts = (flood.queued, flood.running, flood.workers);
            if counts == (0, 0, 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the job is still listed: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Runs `slotman demo --jobs 24` with `path` as PATH; its stdout.
fn run_demo(path: &str) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(slotman_bin())
        .args(["demo", "--jobs", "24"])
        .env("PATH", path)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The burst, then the foreground jobs with a slot killed under one.
    for expected in [
        "24 jobs",
        "24 complete",
        "SIGKILLed slot",
        "foreground: 4 of 4 answered complete; the killed slot's job ran again on another slot.",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    stdout
}

#[test]
fn the_demo_runs_on_its_embedded_job_server_without_gearmand() {
    // /usr/bin:/bin holds no gearmand on Debian (it is in /usr/sbin).
    let stdout = run_demo("/usr/bin:/bin");
    assert!(stdout.contains("embedded demo job server"), "{stdout}");
}

#[test]
fn the_demo_runs_on_gearmand_when_it_is_on_path() {
    let Some(gearmand) = gearmand_path() else {
        skip(
            "gearmand",
            "gearmand is not installed (apt install gearman-job-server)",
        );
        return;
    };
    let dir = gearmand.parent().expect("gearmand's directory");
    let stdout = run_demo(&format!("{}:/usr/bin:/bin", dir.display()));
    assert!(stdout.contains("gearmand from PATH"), "{stdout}");
}
