//! floor-relay: the cheapest process hop between gearmand and a slotman
//! `stdio` handler we can write, to measure the floor of a slot runner.
//!
//! One gearmand connection (TCP_NODELAY), SET_CLIENT_ID + CAN_DO, then a
//! synchronous loop on one thread:
//!
//!   GRAB_JOB_UNIQ → JOB_ASSIGN_UNIQ (NO_JOB → PRE_SLEEP → NOOP → grab again)
//!   → `JOB FUNCTION HANDLE UNIQUE SIZE\n` + payload to the handler (one write)
//!   → read its answer (`COMPLETE SIZE\n` + body; DATA/WARNING/STATUS are
//!     forwarded as WORK_*; FAIL, EXCEPTION end the job)
//!   → WORK_COMPLETE + GRAB_JOB_UNIQ in one write.
//!
//! How it waits for bytes (`--mode`):
//!   block  plain blocking read()
//!   poll   poll([fd, ctl], timeout) before every read(); `ctl` is a pipe that
//!          never becomes readable, standing for the manager socket / drain
//!          signal a real runner also watches; the timeout (--timeout-ms)
//!          stands for the job timeout and applies to the handler's answer
//!          only (waiting for gearmand is unbounded, as in a runner)
//!   polltick  poll() with --timeout-ms on every wait (bench/floor/measure.py
//!          passes 5, slotman's MAX_BLOCK), retried on timeout
//!   epoll  non-blocking fds, read() first, on EAGAIN epoll_wait on an epoll
//!          set holding socket, handler stdout and ctl, then read() again:
//!          the shape of tokio's I/O driver, without the runtime
//!   spin   non-blocking read() retried for up to --spin-us µs, then poll()
//!   prefetch  blocking reads, and GRAB_JOB_UNIQ for the next job goes out
//!          right after the job is written to the handler (with the previous
//!          job's WORK_COMPLETE), so the next JOB_ASSIGN is usually waiting
//!          when the answer comes: one sleep per job instead of two. NOT a
//!          valid runner design as is: the slot holds a second job while the
//!          first runs (another idle worker could have run it). Measured only
//!          to show what the second sleep costs.
//!
//! usage: floor-relay --server HOST:PORT --prefix P:: --function F [--function G]
//!        [--id ID] [--mode block|sockblock|epollblock|poll|polltick|epoll|spin|prefetch] [--timeout-ms 30000]
//!        [--spin-us 50] -- HANDLER [ARGS...]
//!
//! std + libc only.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

const CAN_DO: u32 = 1;
const PRE_SLEEP: u32 = 4;
const NOOP: u32 = 6;
const NO_JOB: u32 = 10;
const WORK_STATUS: u32 = 12;
const WORK_COMPLETE: u32 = 13;
const WORK_FAIL: u32 = 14;
const SET_CLIENT_ID: u32 = 22;
const WORK_EXCEPTION: u32 = 25;
const WORK_DATA: u32 = 28;
const WORK_WARNING: u32 = 29;
const GRAB_JOB_UNIQ: u32 = 30;
const JOB_ASSIGN_UNIQ: u32 = 31;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Block,
    /// Blocking reads, with the fds also in an (unused) epoll set, as a
    /// tokio runner that blocks keeps them registered.
    EpollBlock,
    Poll,
    /// poll() with --timeout-ms on every wait, retried on timeout: slotman's
    /// bounded blocking wait (wire.rs MAX_BLOCK), whose timer the kernel may
    /// have to program when it is a CPU's earliest event.
    PollTick,
    Epoll,
    Spin,
    Prefetch,
}

struct Opts {
    server: String,
    prefix: String,
    functions: Vec<String>,
    id: String,
    mode: Mode,
    timeout_ms: i32,
    spin_us: u64,
    /// The handler's stdout is a Unix socketpair, not a pipe (as slotman's).
    socket: bool,
    handler: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: floor-relay --server HOST:PORT --prefix P:: --function F... [--id ID] \
         [--mode block|sockblock|epollblock|poll|polltick|epoll|spin|prefetch] [--timeout-ms 30000] [--spin-us 50] -- HANDLER [ARGS...]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        server: String::new(),
        prefix: String::new(),
        functions: vec![],
        id: format!("floor:{}", std::process::id()),
        mode: Mode::Block,
        timeout_ms: 30_000,
        spin_us: 50,
        socket: false,
        handler: vec![],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            o.handler = args.collect();
            break;
        }
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--server" => o.server = v,
            "--prefix" => o.prefix = v,
            "--function" => o.functions.push(v),
            "--id" => o.id = v,
            "--timeout-ms" => o.timeout_ms = v.parse().unwrap_or_else(|_| usage()),
            "--spin-us" => o.spin_us = v.parse().unwrap_or_else(|_| usage()),
            "--mode" => {
                o.mode = match v.as_str() {
                    "block" => Mode::Block,
                    "sockblock" => {
                        o.socket = true;
                        Mode::Block
                    }
                    "epollblock" => Mode::EpollBlock,
                    "poll" => Mode::Poll,
                    "polltick" => Mode::PollTick,
                    "epoll" => Mode::Epoll,
                    "spin" => Mode::Spin,
                    "prefetch" => Mode::Prefetch,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    if o.server.is_empty() || o.functions.is_empty() || o.handler.is_empty() {
        usage()
    }
    o
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("floor-relay: {what}: {e}");
    std::process::exit(1)
}

/// Waits for bytes on one fd the way `--mode` says.
struct Waiter {
    mode: Mode,
    ctl: RawFd,
    epfd: RawFd,
    timeout_ms: i32,
    spin_us: u64,
}

impl Waiter {
    /// `watch`: the fds read from (epoll set); `nonblock`: every fd of the hop.
    fn new(
        mode: Mode,
        timeout_ms: i32,
        spin_us: u64,
        watch: &[RawFd],
        nonblock: &[RawFd],
    ) -> Waiter {
        let mut p = [0 as RawFd; 2];
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            die("pipe", io::Error::last_os_error());
        }
        // p[1] stays open (never written): ctl never becomes readable.
        let mut epfd = -1;
        if mode == Mode::Epoll || mode == Mode::EpollBlock {
            epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if epfd < 0 {
                die("epoll_create1", io::Error::last_os_error());
            }
            for &fd in watch.iter().chain(std::iter::once(&p[0])) {
                let edge = if mode == Mode::EpollBlock {
                    (libc::EPOLLET | libc::EPOLLRDHUP) as u32
                } else {
                    0
                };
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32 | edge,
                    u64: fd as u64,
                };
                if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                    die("epoll_ctl", io::Error::last_os_error());
                }
            }
        }
        if mode == Mode::Epoll || mode == Mode::Spin {
            for &fd in nonblock {
                unsafe {
                    let fl = libc::fcntl(fd, libc::F_GETFL);
                    libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
            }
        }
        Waiter {
            mode,
            ctl: p[0],
            epfd,
            timeout_ms,
            spin_us,
        }
    }

    /// `timeout`: waiting for the handler's answer is bounded (a runner
    /// fails the job on its timeout); waiting for gearmand is not.
    fn poll(&self, fd: RawFd, timeout: bool) {
        let mut pfd = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.ctl,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            let tick = self.mode == Mode::PollTick;
            let t = if timeout || tick { self.timeout_ms } else { -1 };
            let r = unsafe { libc::poll(pfd.as_mut_ptr(), 2, t) };
            if r > 0 {
                return;
            }
            if r == 0 && tick {
                continue;
            }
            if r == 0 {
                die("poll", "timeout (a runner would fail the job here)");
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                die("poll", e);
            }
        }
    }

    /// Reads at least one byte (0 = EOF) from fd into buf.
    fn read(&self, fd: RawFd, buf: &mut [u8], timeout: bool) -> usize {
        let raw = |buf: &mut [u8]| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match self.mode {
            Mode::Block | Mode::EpollBlock | Mode::Prefetch | Mode::Poll | Mode::PollTick => {
                if matches!(self.mode, Mode::Poll | Mode::PollTick) {
                    self.poll(fd, timeout);
                }
                loop {
                    let n = raw(buf);
                    if n >= 0 {
                        return n as usize;
                    }
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        die("read", e);
                    }
                }
            }
            Mode::Epoll | Mode::Spin => {
                let mut spin_until: Option<Instant> = None;
                loop {
                    let n = raw(buf);
                    if n >= 0 {
                        return n as usize;
                    }
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => {}
                        _ => die("read", e),
                    }
                    if self.mode == Mode::Spin {
                        let until = *spin_until.get_or_insert_with(|| {
                            Instant::now() + std::time::Duration::from_micros(self.spin_us)
                        });
                        if Instant::now() < until {
                            std::hint::spin_loop();
                            continue;
                        }
                        self.poll(fd, timeout);
                        spin_until = None;
                    } else {
                        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
                        let t = if timeout { self.timeout_ms } else { -1 };
                        let r = unsafe { libc::epoll_wait(self.epfd, evs.as_mut_ptr(), 4, t) };
                        if r == 0 {
                            die("epoll_wait", "timeout (a runner would fail the job here)");
                        }
                    }
                }
            }
        }
    }
}

/// Writes all of buf (retrying EAGAIN with poll for the non-blocking modes).
fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, -1) };
            }
            _ => die("write", e),
        }
    }
}

/// A byte stream with a read buffer.
struct Stream {
    fd: RawFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Stream {
    fn new(fd: RawFd) -> Stream {
        Stream {
            fd,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes; exits on EOF.
    fn fill(&mut self, w: &Waiter, what: &str, timeout: bool) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let l = self.buf.len();
                self.buf.resize(l * 2, 0);
            }
        }
        let n = w.read(self.fd, &mut self.buf[self.end..], timeout);
        if n == 0 {
            eprintln!("floor-relay: {what} closed");
            std::process::exit(0);
        }
        self.end += n;
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }
}

fn packet(out: &mut Vec<u8>, kind: u32, args: &[&[u8]]) {
    let size: usize = args.iter().map(|a| a.len()).sum::<usize>() + args.len().saturating_sub(1);
    out.extend_from_slice(b"\0REQ");
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(a);
    }
}

/// Next Gearman packet (kind, body) from s; body copied out.
fn read_packet(s: &mut Stream, w: &Waiter) -> (u32, Vec<u8>) {
    loop {
        let a = s.avail();
        if a.len() >= 12 {
            let kind = u32::from_be_bytes(a[4..8].try_into().unwrap());
            let size = u32::from_be_bytes(a[8..12].try_into().unwrap()) as usize;
            if a.len() >= 12 + size {
                let body = a[12..12 + size].to_vec();
                s.consume(12 + size);
                return (kind, body);
            }
        }
        s.fill(w, "gearmand connection", false);
    }
}

/// Next handler frame: (header words, body).
fn read_frame(s: &mut Stream, w: &Waiter) -> (Vec<u8>, Vec<u8>) {
    loop {
        let a = s.avail();
        if let Some(nl) = a.iter().position(|&b| b == b'\n') {
            let header = a[..nl].to_vec();
            let word_end = header
                .iter()
                .position(|&b| b == b' ')
                .unwrap_or(header.len());
            let sized = matches!(
                &header[..word_end],
                b"COMPLETE" | b"DATA" | b"WARNING" | b"EXCEPTION"
            );
            let size = if sized {
                std::str::from_utf8(&header[word_end + 1..])
                    .ok()
                    .and_then(|x| x.parse::<usize>().ok())
                    .unwrap_or_else(|| die("handler", "bad header"))
            } else {
                0
            };
            if a.len() >= nl + 1 + size {
                let body = a[nl + 1..nl + 1 + size].to_vec();
                s.consume(nl + 1 + size);
                return (header, body);
            }
        }
        s.fill(w, "handler stdout", true);
    }
}

// The handler dies with the relay (PDEATHSIG); nothing is left to reap.
#[allow(clippy::zombie_processes)]
fn main() {
    let o = parse();
    let mut cmd = Command::new(&o.handler[0]);
    cmd.args(&o.handler[1..]).stdin(Stdio::piped());
    let ours = if o.socket {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| die("socketpair", e));
        cmd.stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
        Some(ours)
    } else {
        cmd.stdout(Stdio::piped());
        None
    };
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| die("spawn handler", e));
    let hin = child.stdin.take().unwrap();
    drop(cmd);
    let hout: std::os::fd::OwnedFd = match ours {
        Some(sock) => sock.into(),
        None => child.stdout.take().unwrap().into(),
    };
    let sock = TcpStream::connect(&o.server).unwrap_or_else(|e| die("connect", e));
    sock.set_nodelay(true)
        .unwrap_or_else(|e| die("TCP_NODELAY", e));
    let (sfd, hin_fd, hout_fd) = (sock.as_raw_fd(), hin.as_raw_fd(), hout.as_raw_fd());
    let w = Waiter::new(
        o.mode,
        o.timeout_ms,
        o.spin_us,
        &[sfd, hout_fd],
        &[sfd, hout_fd, hin_fd],
    );
    let mut hs = Stream::new(hout_fd);
    let (h, _) = read_frame(&mut hs, &w);
    if h != b"READY" {
        die("handler", "did not say READY");
    }
    let mut gs = Stream::new(sfd);
    let mut out = Vec::with_capacity(4096);
    packet(&mut out, SET_CLIENT_ID, &[o.id.as_bytes()]);
    for f in &o.functions {
        packet(&mut out, CAN_DO, &[format!("{}{}", o.prefix, f).as_bytes()]);
    }
    packet(&mut out, GRAB_JOB_UNIQ, &[]);
    write_all(sfd, &out);
    let mut job = Vec::with_capacity(4096);
    let prefetch = o.mode == Mode::Prefetch;
    // prefetch: the last job's answer, sent with the next GRAB / PRE_SLEEP
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let (kind, body) = read_packet(&mut gs, &w);
        match kind {
            NOOP => continue, // stray wake-up while a GRAB is outstanding
            NO_JOB => {
                out.clear();
                out.append(&mut pending);
                packet(&mut out, PRE_SLEEP, &[]);
                write_all(sfd, &out);
                loop {
                    let (k, _) = read_packet(&mut gs, &w);
                    if k == NOOP {
                        break;
                    }
                }
                out.clear();
                packet(&mut out, GRAB_JOB_UNIQ, &[]);
                write_all(sfd, &out);
                continue;
            }
            JOB_ASSIGN_UNIQ => {}
            _ => {
                eprintln!("floor-relay: unexpected packet {kind}");
                continue;
            }
        }
        let mut parts = body.splitn(4, |&b| b == 0);
        let handle = parts.next().unwrap_or_default();
        let function = parts.next().unwrap_or_default();
        let unique = parts.next().unwrap_or_default();
        let payload = parts.next().unwrap_or_default();
        let function = function
            .strip_prefix(o.prefix.as_bytes())
            .unwrap_or(function);
        let unique: &[u8] = if unique.is_empty() { b"-" } else { unique };
        job.clear();
        job.extend_from_slice(b"JOB ");
        job.extend_from_slice(function);
        job.push(b' ');
        job.extend_from_slice(handle);
        job.push(b' ');
        job.extend_from_slice(unique);
        writeln!(job, " {}", payload.len()).unwrap();
        job.extend_from_slice(payload);
        write_all(hin_fd, &job);
        if prefetch {
            packet(&mut pending, GRAB_JOB_UNIQ, &[]);
            write_all(sfd, &pending);
            pending.clear();
        }
        out.clear();
        loop {
            let (header, fbody) = read_frame(&mut hs, &w);
            let word = header.split(|&b| b == b' ').next().unwrap_or_default();
            match word {
                b"COMPLETE" => {
                    packet(&mut out, WORK_COMPLETE, &[handle, &fbody]);
                    break;
                }
                b"FAIL" => {
                    packet(&mut out, WORK_FAIL, &[handle]);
                    break;
                }
                b"EXCEPTION" => {
                    packet(&mut out, WORK_EXCEPTION, &[handle, &fbody]);
                    break;
                }
                b"DATA" => packet(&mut out, WORK_DATA, &[handle, &fbody]),
                b"WARNING" => packet(&mut out, WORK_WARNING, &[handle, &fbody]),
                b"STATUS" => {
                    let mut f = header.split(|&b| b == b' ').skip(1);
                    let (a, b) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
                    packet(&mut out, WORK_STATUS, &[handle, a, b]);
                }
                _ => die("handler", String::from_utf8_lossy(&header)),
            }
            // progress packets go out at once; the final one waits for the GRAB
            if !out.is_empty() {
                write_all(sfd, &out);
                out.clear();
            }
        }
        if prefetch {
            std::mem::swap(&mut pending, &mut out);
            continue;
        }
        packet(&mut out, GRAB_JOB_UNIQ, &[]);
        write_all(sfd, &out);
    }
}
