//! Closed-loop Gearman load generator for `bench/run`.
//!
//! `--conns` client connections, each keeping `--window` foreground jobs
//! (SUBMIT_JOB) in flight: every WORK_COMPLETE / WORK_FAIL / WORK_EXCEPTION
//! is answered by one more SUBMIT_JOB, batched into one write per read.
//! Completions during `--warmup` are not counted; those in the following
//! `--duration` are. Prints one JSON line: jobs, rate, latency percentiles
//! (submit → completion, as the client sees it) and the generator's own CPU
//! time, so the report can show it is not the bottleneck.
//!
//! Standard library only, blocking I/O, one thread per connection: nothing
//! here depends on slotman, so it measures slotman and a plain worker pool
//! through exactly the same path.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUBMIT_JOB: u32 = 7;
const JOB_CREATED: u32 = 8;
const WORK_STATUS: u32 = 12;
const WORK_COMPLETE: u32 = 13;
const WORK_FAIL: u32 = 14;
const ERROR: u32 = 19;
const WORK_EXCEPTION: u32 = 25;
const WORK_DATA: u32 = 28;
const WORK_WARNING: u32 = 29;

struct Opts {
    server: String,
    function: String,
    conns: usize,
    window: usize,
    warmup: f64,
    duration: f64,
    payload: usize,
    data: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --server HOST:PORT --function NAME [--conns 4] [--window 32] \
         [--warmup 1] [--duration 5] [--payload 8 | --data STRING]"
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        server: String::new(),
        function: String::new(),
        conns: 4,
        window: 32,
        warmup: 1.0,
        duration: 5.0,
        payload: 8,
        data: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--server" => o.server = v(),
            "--function" => o.function = v(),
            "--conns" => o.conns = v().parse().unwrap_or_else(|_| usage()),
            "--window" => o.window = v().parse().unwrap_or_else(|_| usage()),
            "--warmup" => o.warmup = v().parse().unwrap_or_else(|_| usage()),
            "--duration" => o.duration = v().parse().unwrap_or_else(|_| usage()),
            "--payload" => o.payload = v().parse().unwrap_or_else(|_| usage()),
            "--data" => o.data = Some(v()),
            _ => usage(),
        }
    }
    if o.server.is_empty() || o.function.is_empty() || o.conns == 0 || o.window == 0 {
        usage()
    }
    o
}

fn packet(out: &mut Vec<u8>, kind: u32, args: &[&[u8]]) {
    let len: usize = args.iter().map(|a| a.len()).sum::<usize>() + args.len().saturating_sub(1);
    out.extend_from_slice(b"\0REQ");
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(a);
    }
}

#[derive(Default)]
struct Tally {
    jobs: u64,
    fails: u64,
    lat_us: Vec<u32>,
    error: Option<String>,
}

/// Process CPU time (user + system, all threads) in seconds, from /proc.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is [0]; utime is field 14 of stat → [11].
    let tick = 100.0; // CLK_TCK on Linux
    let u: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    (u + st) / tick
}

fn conn_loop(
    o: Arc<Opts>,
    id: usize,
    t_count: Instant,
    t_end: Instant,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut s = match TcpStream::connect(&o.server) {
        Ok(s) => s,
        Err(e) => {
            tally.error = Some(format!("connect {}: {e}", o.server));
            return tally;
        }
    };
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let payload = match &o.data {
        Some(d) => d.as_bytes().to_vec(),
        None => vec![b'x'; o.payload],
    };
    let mut seq: u64 = 0;
    let mut out = Vec::with_capacity(64 * 1024);
    // Submit times of requests whose JOB_CREATED has not come yet (the job
    // server answers a connection's requests in order), then by handle.
    let mut pending: VecDeque<Instant> = VecDeque::new();
    let mut by_handle: HashMap<Vec<u8>, Instant> = HashMap::new();
    let submit = |out: &mut Vec<u8>, pending: &mut VecDeque<Instant>, seq: &mut u64| {
        *seq += 1;
        let unique = format!("{id}-{seq}");
        packet(out, SUBMIT_JOB, &[o.function.as_bytes(), unique.as_bytes(), &payload]);
        pending.push_back(Instant::now());
    };
    for _ in 0..o.window {
        submit(&mut out, &mut pending, &mut seq);
    }
    if let Err(e) = s.write_all(&out) {
        tally.error = Some(format!("write: {e}"));
        return tally;
    }
    out.clear();
    let mut buf: Vec<u8> = vec![0; 256 * 1024];
    let mut have = 0usize;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let in_flight = pending.len() + by_handle.len();
        let now = Instant::now();
        if now >= t_end || stop.load(Ordering::Relaxed) {
            let d = *drain_deadline.get_or_insert(now + Duration::from_secs(5));
            if in_flight == 0 || now >= d {
                break;
            }
        }
        let n = match s.read(&mut buf[have..]) {
            Ok(0) => {
                tally.error = Some("job server closed the connection".into());
                break;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => {
                tally.error = Some(format!("read: {e}"));
                break;
            }
        };
        have += n;
        let mut at = 0usize;
        let submitting = Instant::now() < t_end && !stop.load(Ordering::Relaxed);
        while have - at >= 12 {
            let h = &buf[at..at + 12];
            let kind = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
            if have - at < 12 + len {
                break;
            }
            let body = &buf[at + 12..at + 12 + len];
            let handle = body.split(|&b| b == 0).next().unwrap_or(&[]);
            match kind {
                JOB_CREATED => {
                    if let Some(t) = pending.pop_front() {
                        by_handle.insert(handle.to_vec(), t);
                    }
                }
                WORK_COMPLETE | WORK_FAIL | WORK_EXCEPTION => {
                    if let Some(t) = by_handle.remove(handle) {
                        let now = Instant::now();
                        if now >= t_count && now < t_end {
                            tally.jobs += 1;
                            if kind != WORK_COMPLETE {
                                tally.fails += 1;
                            }
                            tally
                                .lat_us
                                .push(now.duration_since(t).as_micros().min(u32::MAX as u128) as u32);
                        }
                        if submitting {
                            submit(&mut out, &mut pending, &mut seq);
                        }
                    }
                }
                WORK_STATUS | WORK_DATA | WORK_WARNING => {}
                ERROR => {
                    tally.error = Some(format!(
                        "job server error: {}",
                        String::from_utf8_lossy(body)
                    ));
                    stop.store(true, Ordering::Relaxed);
                }
                other => {
                    tally.error = Some(format!("unexpected packet type {other}"));
                }
            }
            at += 12 + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        if !out.is_empty() {
            if let Err(e) = s.write_all(&out) {
                tally.error = Some(format!("write: {e}"));
                break;
            }
            out.clear();
        }
    }
    tally
}

fn main() {
    let o = Arc::new(parse());
    let start = Instant::now();
    let t_count = start + Duration::from_secs_f64(o.warmup);
    let t_end = t_count + Duration::from_secs_f64(o.duration);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..o.conns)
        .map(|i| {
            let (o, stop) = (o.clone(), stop.clone());
            std::thread::spawn(move || conn_loop(o, i, t_count, t_end, stop))
        })
        .collect();
    std::thread::sleep(t_count.saturating_duration_since(Instant::now()));
    let cpu0 = cpu_secs();
    let wall0 = Instant::now();
    std::thread::sleep(t_end.saturating_duration_since(Instant::now()));
    let cpu1 = cpu_secs();
    let wall = wall0.elapsed().as_secs_f64();
    let mut all = Tally::default();
    let mut errors = Vec::new();
    for t in threads {
        let t = t.join().unwrap_or_default();
        all.jobs += t.jobs;
        all.fails += t.fails;
        all.lat_us.extend(t.lat_us);
        if let Some(e) = t.error {
            errors.push(e);
        }
    }
    all.lat_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.lat_us.is_empty() {
            return 0;
        }
        let i = ((all.lat_us.len() as f64 - 1.0) * p).round() as usize;
        all.lat_us[i]
    };
    let rate = all.jobs as f64 / o.duration;
    let cpu = cpu1 - cpu0;
    let err = errors
        .first()
        .map(|e| format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "'")))
        .unwrap_or_else(|| "null".into());
    println!(
        "{{\"jobs\":{},\"fails\":{},\"secs\":{:.3},\"rate\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\
         \"loadgen_cpu_secs\":{:.2},\"loadgen_cpu_share\":{:.3},\"conns\":{},\"window\":{},\"error\":{}}}",
        all.jobs,
        all.fails,
        o.duration,
        rate,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        cpu,
        cpu / wall,
        o.conns,
        o.window,
        err
    );
    if all.jobs == 0 {
        std::process::exit(1);
    }
}
