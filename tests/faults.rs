//! Partial failures a production host brings, against real gearmand and real
//! handlers: a job server that hangs, a connection that goes silent without
//! closing, a server that assigns a job the slot never asked for; and how
//! late a drain or a job's `timeout` acts while jobs stream through a slot
//! with one job server (the slot whose waits may block its thread,
//! `slot::wire::BlockingWaits`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::service::{handler, pid_alive, submit_bg, Service};
use common::{wait_until, Gearmand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal");
}

fn jobs(n: usize, tag: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{tag}-{i}"), format!("payload {i}")))
        .collect()
}

/// A stdio worker `w` (function `w::echo`) of `slots` slots.
fn config(servers: &[&str], slots: u32) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "stop_timeout = \"60s\"\n[workers.w]\nkind = \"stdio\"\ncommand = {}\nfunctions = [\"echo\"]\njob_servers = [{}]\nmin = {slots}\nmax = {slots}\n",
        handler(),
        list.join(", ")
    )
}

#[test]
fn a_sigstopped_job_server_does_not_stall_the_others() {
    let Some(good) = Gearmand::start() else {
        return;
    };
    let Some(mut hung) = Gearmand::start() else {
        return;
    };
    let hung_pid = hung.pid().expect("gearmand pid");
    signal(hung_pid, Signal::SIGSTOP);
    let mut svc = Service::new(&config(&[&hung.addr, &good.addr], 2));
    svc.start();
    wait_until("two slots up", Duration::from_secs(20), || {
        svc.worker("w").idle == 2
    });
    submit_bg(&good.addr, "w::echo", jobs(10, "good"));
    wait_until(
        "every job of the healthy server done",
        Duration::from_secs(20),
        || svc.worker("w").jobs_complete == 10,
    );

    // The hung server comes back: its jobs run too.
    signal(hung_pid, Signal::SIGCONT);
    submit_bg(&hung.addr, "w::echo", jobs(5, "back"));
    wait_until(
        "the returned server's jobs done",
        Duration::from_secs(30),
        || svc.worker("w").jobs_complete == 15,
    );

    // Hung again, with slots asleep on it: a stop does not wait for it.
    signal(hung_pid, Signal::SIGSTOP);
    let t = Instant::now();
    assert!(svc.stop(), "manager exit status");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "a stop waited {:?} (stop_timeout is 60s) for a hung job server",
        t.elapsed()
    );
    signal(hung_pid, Signal::SIGCONT);
    hung.kill();
}

/// A job server that accepts connections and reads them, and never answers.
fn mute_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let t = std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (addr, t)
}

#[test]
fn a_server_that_never_answers_holds_no_job_and_no_stop() {
    let Some(good) = Gearmand::start() else {
        return;
    };
    let (mute, _t) = mute_server();
    let mut svc = Service::new(&config(&[&mute, &good.addr], 2));
    svc.start();
    wait_until("two slots up", Duration::from_secs(20), || {
        svc.worker("w").idle == 2
    });
    submit_bg(&good.addr, "w::echo", jobs(10, "j"));
    wait_until("every job done", Duration::from_secs(20), || {
        svc.worker("w").jobs_complete == 10
    });
    let runners: Vec<u32> = svc.worker("w").slots.iter().filter_map(|s| s.pid).collect();
    assert_eq!(runners.len(), 2);
    // The manager killed outright: runners notice and leave at once
    // rather than waiting on the server that never answers.
    signal(svc.pid() as u32, Signal::SIGKILL);
    wait_until("runners gone", Duration::from_secs(10), || {
        runners.iter().all(|&pid| !pid_alive(pid))
    });
}

/// A loopback proxy to `upstream` whose connections can be frozen: they
/// stay open and forward nothing, as after a partition or a NAT that forgot
/// the flow. Connections made after a freeze forward normally.
struct Proxy {
    addr: String,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let (f, n, st) = (frozen_below.clone(), next.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let id = n.fetch_add(1, Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (f, st) = (f.clone(), st.clone());
                    std::thread::spawn(move || pump(id, from, to, &f, &st));
                }
            }
        });
        Proxy {
            addr,
            frozen_below,
            next,
            stop,
        }
    }

    /// Every connection open now stops forwarding, and stays open.
    fn freeze(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, frozen: &AtomicU64, stop: &AtomicBool) {
    let is_frozen = || id < frozen.load(Ordering::SeqCst);
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A frozen connection holds what it read, and its sockets.
        while is_frozen() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_connection_gone_silent_is_noticed_and_replaced() {
    let Some(g) = Gearmand::start() else { return };
    let proxy = Proxy::start(&g.addr);
    let mut svc = Service::new(&config(&[&proxy.addr], 2));
    svc.start();
    wait_until("two slots up", Duration::from_secs(20), || {
        svc.worker("w").idle == 2
    });
    submit_bg(&g.addr, "w::echo", jobs(2, "before"));
    wait_until("first jobs done", Duration::from_secs(20), || {
        svc.worker("w").jobs_complete == 2
    });
    proxy.freeze();
    submit_bg(&g.addr, "w::echo", jobs(10, "after"));
    // Keepalive (10s) plus its reply timeout (5s), then a reconnect.
    wait_until(
        "jobs submitted behind the silent connection done",
        Duration::from_secs(45),
        || svc.worker("w").jobs_complete == 12,
    );
    let log = svc.log();
    assert!(
        log.contains("no reply to ECHO_REQ"),
        "the slots did not say why they reconnected:\n{log}"
    );
    assert!(svc.stop(), "manager exit status");
}

/// Reads one request packet: (type, args).
fn read_packet(s: &mut TcpStream) -> Option<(u32, Vec<Vec<u8>>)> {
    let mut header = [0u8; 12];
    s.read_exact(&mut header).ok()?;
    let kind = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let len = u32::from_be_bytes(header[8..12].try_into().ok()?) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    let args = if body.is_empty() {
        vec![]
    } else {
        body.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
    };
    Some((kind, args))
}

/// Writes one response packet, as a job server does.
fn write_packet(s: &mut TcpStream, kind: u32, args: &[&[u8]]) {
    write_with_magic(s, b"\0RES", kind, args);
}

/// Writes one request packet, as a client does.
fn write_request(s: &mut TcpStream, kind: u32, args: &[&[u8]]) {
    write_with_magic(s, b"\0REQ", kind, args);
}

fn write_with_magic(s: &mut TcpStream, magic: &[u8; 4], kind: u32, args: &[&[u8]]) {
    let body = args.join(&0u8);
    let mut p = magic.to_vec();
    p.extend_from_slice(&kind.to_be_bytes());
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(&body);
    s.write_all(&p).expect("write packet");
}

const JOB_CREATED: u32 = 8;
const ECHO_REQ: u32 = 16;
const ECHO_RES: u32 = 17;
const GRAB_JOB_UNIQ: u32 = 30;
const JOB_ASSIGN_UNIQ: u32 = 31;
const NO_JOB: u32 = 10;
const WORK_COMPLETE: u32 = 13;
const WORK_FAIL: u32 = 14;
const SUBMIT_JOB_HIGH: u32 = 21;

#[test]
fn a_job_for_a_function_the_slot_never_registered_is_failed_unrun() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut svc = Service::new(&config(&[&addr], 1));
    svc.start();
    // The slot's connection; the manager's admin queries get an empty
    // `status`.
    let mut s = loop {
        let (mut s, _) = listener.accept().expect("the slot connects");
        let mut first = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        if s.peek(&mut first).is_ok_and(|n| n == 1) && first[0] == 0 {
            break s;
        }
        let mut line = [0u8; 64];
        let _ = s.read(&mut line);
        let _ = s.write_all(b".\n");
    };
    let mut assigned = false;
    let answer = loop {
        let Some((kind, args)) = read_packet(&mut s) else {
            panic!("the slot closed before answering the job");
        };
        match kind {
            ECHO_REQ => write_packet(&mut s, ECHO_RES, &[&args[0]]),
            GRAB_JOB_UNIQ if !assigned => {
                assigned = true;
                write_packet(
                    &mut s,
                    JOB_ASSIGN_UNIQ,
                    &[b"H:fake:1", b"other::thing", b"", b"payload"],
                );
            }
            GRAB_JOB_UNIQ => write_packet(&mut s, NO_JOB, &[]),
            WORK_COMPLETE | WORK_FAIL => break (kind, args),
            _ => {}
        }
    };
    assert_eq!(answer.0, WORK_FAIL, "answer to the stray job: {answer:?}");
    assert_eq!(answer.1[0], b"H:fake:1");
    assert!(
        svc.record().is_empty(),
        "the handler ran the stray job: {}",
        svc.record()
    );
    drop(s);
    assert!(svc.stop(), "manager exit status");
}

/// Jobs of about 1 ms (the test handler's `sleep`) queued by the latency
/// tests below: seconds of work, so that a drain or a timeout is tested while
/// they still stream.
const STREAM: u64 = 4000;
/// How much later than its due a drain or a timeout may act: a hang guard
/// (the tests print what they measured; see them with `--nocapture`).
const MARGIN: Duration = Duration::from_secs(1);

/// A stdio worker `w` (functions `echo`, `sleep`) of `slots` slots on the one
/// job server `addr` (so its waits may block: `slot::wire::BlockingWaits`), with
/// `extra` worker keys.
fn one_server_config(addr: &str, slots: u32, extra: &str) -> String {
    format!(
        "stop_timeout = \"60s\"\n[workers.w]\nkind = \"stdio\"\ncommand = {}\nfunctions = [\"echo\", \"sleep\"]\njob_servers = [\"{addr}\"]\nmin = {slots}\nmax = {slots}\n{extra}\n",
        handler()
    )
}

/// Queues [`STREAM`] background jobs of 1 ms each.
fn queue_stream(addr: &str) {
    let jobs = (0..STREAM).map(|i| (format!("stream-{i}"), "0.001".to_string()));
    submit_bg(addr, "w::sleep", jobs);
}

/// Jobs of the stream not yet done.
fn stream_left(g: &Gearmand) -> u64 {
    g.function_status("w::sleep").0
}

/// Waits until another `n` jobs of the stream are done.
fn streams_on(g: &Gearmand, n: u64) {
    let start = stream_left(g);
    wait_until("jobs stream", Duration::from_secs(20), || {
        stream_left(g) + n <= start
    });
}

/// A process's exit, watched through a pidfd: it stays that process's even
/// once the number is reused.
struct Exit(std::os::fd::OwnedFd);

impl Exit {
    fn watch(pid: u32) -> Exit {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags, and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor just opened, which nothing else owns.
        Exit(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Waits at most `limit` for the process to exit (to be a zombie, before
    /// anyone reaps it): whether it did.
    fn wait(&self, limit: Duration) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.0.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
        matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0)
    }
}

/// How long runner `pid` takes to exit after `drain` asks it to.
fn drain_latency(pid: u32, drain: impl FnOnce()) -> Duration {
    let exit = Exit::watch(pid);
    let asked = Instant::now();
    drain();
    assert!(
        exit.wait(Duration::from_secs(30)),
        "runner {pid} still running 30 s after its drain"
    );
    asked.elapsed()
}

/// A drain while 1-ms jobs stream through a one-server slot ends the runner
/// after the job in hand: its blocking waits leave the runtime the turns it
/// needs to see a SIGTERM or the manager's `drain`, and to act on them.
#[test]
fn a_drain_while_jobs_stream_waits_only_for_the_job_in_hand() {
    let Some(g) = Gearmand::start() else { return };
    let mut svc = Service::new(&one_server_config(&g.addr, 1, ""));
    svc.start();
    let first = svc.one_slot_ready("w");
    queue_stream(&g.addr);
    streams_on(&g, 100);
    let by_signal = drain_latency(first, || signal(first, Signal::SIGTERM));
    let left = stream_left(&g);
    assert!(
        by_signal < MARGIN,
        "the runner exited {by_signal:?} after a SIGTERM, with 1-ms jobs streaming"
    );
    assert!(left > 0, "the stream ran dry: this drain proved nothing");

    // Its replacement, drained by the manager's stop: a `drain` message on
    // its socket, which interrupts no system call.
    let mut second = None;
    wait_until("a new slot", Duration::from_secs(20), || {
        second = svc
            .worker("w")
            .slots
            .iter()
            .find_map(|s| s.pid.filter(|&p| p != first));
        second.is_some()
    });
    let second = second.expect("a new runner");
    streams_on(&g, 100);
    let by_stop = drain_latency(second, || svc.signal(Signal::SIGTERM));
    let left = stream_left(&g);
    eprintln!(
        "drain → runner exit, 1-ms jobs streaming: SIGTERM to the runner {by_signal:?}, the manager's stop {by_stop:?}"
    );
    assert!(
        by_stop < MARGIN,
        "the runner exited {by_stop:?} after the manager's stop, with 1-ms jobs streaming"
    );
    assert!(left > 0, "the stream ran dry: this drain proved nothing");
    let mut manager = svc.child.take().expect("running");
    wait_until("the manager exits", Duration::from_secs(30), || {
        manager.try_wait().expect("wait").is_some()
    });
}

/// Submits a job ahead of every queued one (SUBMIT_JOB_HIGH) and waits for
/// its end: the packet that ended it, and how long after JOB_CREATED.
fn submit_high(addr: &str, function: &str, unique: &str, payload: &[u8]) -> (u32, Duration) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write_request(
        &mut s,
        SUBMIT_JOB_HIGH,
        &[function.as_bytes(), unique.as_bytes(), payload],
    );
    let mut created = None;
    loop {
        let (kind, _) = read_packet(&mut s).expect("the job's end within 30 s");
        match kind {
            JOB_CREATED => created = Some(Instant::now()),
            WORK_COMPLETE | WORK_FAIL => {
                return (kind, created.expect("JOB_CREATED first").elapsed())
            }
            _ => {}
        }
    }
}

/// A job that runs past its `timeout` amid a stream of 1-ms jobs is failed on
/// time: a blocking wait for its answer gives way to the runtime, whose
/// timer ends the job.
#[test]
fn a_job_past_its_timeout_is_failed_on_time_while_jobs_stream() {
    let Some(g) = Gearmand::start() else { return };
    let timeout = Duration::from_millis(300);
    let mut svc = Service::new(&one_server_config(&g.addr, 2, "timeout = \"300ms\""));
    svc.start();
    wait_until("two slots up", Duration::from_secs(20), || {
        svc.worker("w").idle == 2
    });
    queue_stream(&g.addr);
    let mut took = Vec::new();
    for i in 0..3 {
        // Jobs stream on both slots; the slow job goes next on one of them,
        // and the other slot streams on meanwhile.
        streams_on(&g, 100);
        let (end, after) = submit_high(&g.addr, "w::sleep", &format!("slow-{i}"), b"5");
        assert_eq!(end, WORK_FAIL, "the job that ran past its timeout");
        assert!(
            after < timeout + MARGIN,
            "failed {after:?} after it was queued ahead of 1-ms jobs (timeout {timeout:?})"
        );
        took.push(after);
    }
    // The slots went on with the stream after each timed-out job.
    streams_on(&g, 100);
    assert!(stream_left(&g) > 0, "the stream ran dry during the test");
    eprintln!("job queued → failed for its timeout of {timeout:?}, 1-ms jobs streaming: {took:?}");
    assert!(svc.stop(), "manager exit status");
}

/// Waits until the stream stops moving: no job done in 100 ms.
fn stream_stalls(g: &Gearmand) {
    let mut last = stream_left(g);
    let mut since = Instant::now();
    wait_until("the stream stalls", Duration::from_secs(20), || {
        let now = stream_left(g);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        since.elapsed() >= Duration::from_millis(100)
    });
}

/// The one job server of a slot hangs while 1-ms jobs stream: the runner's
/// blocking wait for the reply to its grab gives up after `REPLY_TIMEOUT`
/// and reconnects, and a drain meanwhile ends the runner at once rather
/// than after the reply timeout.
#[test]
fn a_job_server_that_hangs_mid_stream_holds_neither_the_stream_nor_a_drain() {
    let Some(g) = Gearmand::start() else { return };
    let proxy = Proxy::start(&g.addr);
    let mut svc = Service::new(&one_server_config(&proxy.addr, 1, ""));
    svc.start();
    let first = svc.one_slot_ready("w");
    queue_stream(&g.addr);
    streams_on(&g, 100);
    // The grab in flight when it froze is never answered: the connection is
    // given up and a new one (not frozen) takes the stream on.
    proxy.freeze();
    stream_stalls(&g);
    streams_on(&g, 100);
    assert!(
        svc.log().contains("no reply to GRAB_JOB_UNIQ"),
        "the runner did not say why it reconnected:\n{}",
        svc.log()
    );
    // Frozen again, and drained while the runner waits for the reply.
    proxy.freeze();
    stream_stalls(&g);
    let latency = drain_latency(first, || signal(first, Signal::SIGTERM));
    assert!(
        latency < MARGIN,
        "the runner exited {latency:?} after a SIGTERM, waiting on a hung job server"
    );
    assert!(
        stream_left(&g) > 0,
        "the stream ran dry: this test proved nothing"
    );
    assert!(svc.stop(), "manager exit status");
}
