//! `slotman demo`: the whole product in one command, with no set-up.
//!
//! Starts a job server (the system's gearmand when one is installed, else
//! the small embedded one in `jobserver`, unless `--job-server` is given),
//! runs a manager in this process with a pool of demo handlers (slotman's
//! own `demo-handler`, a stdio handler, so nothing else needs installing),
//! submits a burst of background jobs, shows the pool growing to `max` and
//! shrinking back, then has a few clients wait for foreground jobs while
//! one busy slot is killed (its job runs again on another slot), prints a
//! summary and leaves nothing behind.

pub mod jobserver;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use crate::control::proto::{ServiceStatus, WorkerStatus};
use crate::gearman::client::{Client, JobResult};
use crate::manager::{Event, Manager};
use crate::placement::Placement;

pub struct Options {
    pub job_server: Option<String>,
    pub jobs: u32,
}

const WORKER: &str = "demo";
const MIN: u32 = 1;
const MAX: u32 = 8;
const IDLE_TIMEOUT: &str = "2s";
/// Milliseconds each demo job works.
const JOB_MS: u32 = 150;
/// Jobs per slot before it is recycled, low so the demo shows recycling.
const WORKLEFT: u32 = 5;

/// A job server the demo started, stopped on drop.
enum JobServer {
    External,
    Gearmand(std::process::Child),
    /// The embedded one; it stops when dropped.
    Embedded {
        _server: jobserver::JobServer,
    },
}

impl Drop for JobServer {
    fn drop(&mut self) {
        if let JobServer::Gearmand(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn find_gearmand() -> Option<PathBuf> {
    crate::config::find_program("gearmand", &std::env::var("PATH").ok()?)
}

async fn start_job_server(opts: &Options) -> anyhow::Result<(String, JobServer, &'static str)> {
    if let Some(addr) = &opts.job_server {
        return Ok((addr.clone(), JobServer::External, "given with --job-server"));
    }
    let Some(gearmand) = find_gearmand() else {
        let server = jobserver::JobServer::start(([127, 0, 0, 1], 0).into())
            .await
            .context("starting the embedded job server")?;
        return Ok((
            server.addr().to_string(),
            JobServer::Embedded { _server: server },
            "embedded demo job server: no gearmand on PATH",
        ));
    };
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(gearmand)
        .args([
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--log-file=none",
            "--threads=1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting gearmand")?;
    let server = JobServer::Gearmand(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the job server did not come up on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((addr, server, "gearmand from PATH"))
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let (addr, _server, what) = start_job_server(&opts).await?;
    println!("slotman demo: job server {addr} ({what})");

    let dir = tempfile_dir()?;
    let path = dir.join("demo.toml");
    let exe = std::env::current_exe()?;
    let toml = format!(
        "[workers.{WORKER}]\nkind = \"stdio\"\ncommand = [{exe:?}, \"demo-handler\"]\nfunctions = [\"work\"]\njob_servers = [{addr:?}]\nmin = {MIN}\nmax = {MAX}\nidle_timeout = \"{IDLE_TIMEOUT}\"\nworkleft = {WORKLEFT}\n"
    );
    std::fs::write(&path, toml)?;
    let config = crate::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("pool `{WORKER}`: min {MIN}, max {MAX}, idle_timeout {IDLE_TIMEOUT}, workleft {WORKLEFT} (slots recycle)");

    let (tx, rx) = mpsc::unbounded_channel();
    let manager = tokio::spawn(Manager::new(config, Placement::Child, tx.clone()).run(rx));
    let result = async {
        let burst = drive(&opts, &addr, &tx).await?;
        let waited = foreground(&addr, &tx).await?;
        anyhow::Ok(format!("{burst}\n{waited}"))
    }
    .await;
    let _ = tx.send(Event::Stop);
    manager.await??;
    let _ = std::fs::remove_dir_all(&dir);
    let summary = result?;
    println!("{summary}");
    println!("stopped: every slot drained and exited.");
    Ok(())
}

async fn snapshot(tx: &mpsc::UnboundedSender<Event>) -> anyhow::Result<ServiceStatus> {
    let (reply, rx) = oneshot::channel();
    tx.send(Event::Status(reply))
        .map_err(|_| anyhow::anyhow!("manager stopped"))?;
    Ok(rx.await?)
}

fn worker(s: &ServiceStatus) -> Option<&WorkerStatus> {
    s.workers.iter().find(|w| w.name == WORKER)
}

async fn drive(
    opts: &Options,
    addr: &str,
    tx: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<String> {
    let tty = std::io::stdout().is_terminal();
    let t0 = Instant::now();
    // Wait for the pool's min slots before the burst.
    loop {
        let s = snapshot(tx).await?;
        if worker(&s).is_some_and(|w| w.idle + w.busy >= MIN) {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "the pool did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Background jobs: the manager's own counters tell when each has run.
    let mut client = Client::connect(addr).await?;
    for i in 0..opts.jobs {
        client
            .submit_background(
                "demo::work",
                &format!("demo-{i}-{}", std::process::id()),
                JOB_MS.to_string(),
            )
            .await?;
    }
    println!("submitted {} jobs of {JOB_MS}ms\n", opts.jobs);
    let burst = Instant::now();
    let mut peak = 0;
    let mut peak_at = Duration::ZERO;
    let mut done_at = None;
    let mut last_line = String::new();
    loop {
        let s = snapshot(tx).await?;
        let Some(w) = worker(&s) else {
            anyhow::bail!("pool vanished")
        };
        let slots = w.idle + w.busy + w.starting;
        if slots > peak {
            peak = slots;
            peak_at = burst.elapsed();
        }
        let done = w.jobs_complete + w.jobs_failed + w.jobs_exception;
        let bar: String = (0..MAX)
            .map(|i| {
                if i < w.busy {
                    '█'
                } else if i < slots {
                    '▒'
                } else {
                    '·'
                }
            })
            .collect();
        let line = format!(
            "[{:5.1}s] slots {slots}/{MAX} {bar}  busy {:2} idle {:2} starting {} draining {} | done {done}/{} | restarts {}",
            burst.elapsed().as_secs_f64(), w.busy, w.idle, w.starting, w.draining, opts.jobs, w.restarts
        );
        if tty {
            print!("\r{line}");
            let _ = std::io::stdout().flush();
        } else if line.get(9..) != last_line.get(9..) {
            println!("{line}");
        }
        last_line = line;
        if done >= opts.jobs as u64 && done_at.is_none() {
            done_at = Some(burst.elapsed());
        }
        if done_at.is_some() && slots <= MIN && w.busy == 0 {
            if tty {
                println!();
            }
            let total = done_at.unwrap_or_default();
            return Ok(format!(
                "\nsummary: {} jobs in {:.1}s ({} complete, {} failed); pool grew {MIN}→{peak} in {:.2}s and shrank back to {MIN} after {IDLE_TIMEOUT} idle; {} slots recycled after workleft {WORKLEFT}.",
                done,
                total.as_secs_f64(),
                w.jobs_complete,
                w.jobs_failed,
                peak_at.as_secs_f64(),
                w.recycles,
            ));
        }
        anyhow::ensure!(
            burst.elapsed() < Duration::from_secs(120),
            "the demo did not finish in 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Foreground clients: each submits one job and waits for its answer.
const FG_CLIENTS: u32 = 4;
/// Milliseconds each foreground job works: long enough to kill its slot
/// in the middle.
const FG_JOB_MS: u32 = 1200;

/// Foreground jobs, one per client, while one busy slot is killed: its job
/// server hands the job to another slot and its client still gets the
/// answer. Returns the summary line.
async fn foreground(addr: &str, tx: &mpsc::UnboundedSender<Event>) -> anyhow::Result<String> {
    println!(
        "\n{FG_CLIENTS} clients each submit a {FG_JOB_MS}ms job and wait for the answer; a busy slot will be killed"
    );
    let mut clients = Vec::new();
    for i in 0..FG_CLIENTS {
        let mut client = Client::connect(addr).await?;
        let unique = format!("fg-{i}-{}", std::process::id());
        clients.push(tokio::spawn(async move {
            let reply = client
                .submit("demo::work", &unique, FG_JOB_MS.to_string())
                .await;
            (unique, reply)
        }));
    }
    let killed = kill_a_busy_slot(tx).await?;
    match &killed {
        Some((slot, pid, handle)) => {
            println!("  SIGKILLed slot {slot} (runner pid {pid}) in the middle of job {handle}")
        }
        None => println!("  no slot was busy long enough to be killed"),
    }
    let mut complete = 0;
    let mut rerun = false;
    for client in clients {
        let (unique, reply) = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .context("a foreground job got no answer within 60s")??;
        let reply = reply.with_context(|| format!("foreground job {unique}"))?;
        let again = killed.as_ref().is_some_and(|k| k.2 == reply.handle);
        rerun |= again;
        let progress: Vec<String> = reply
            .statuses
            .iter()
            .map(|(n, d)| format!("{n}/{d}"))
            .collect();
        let result = match &reply.result {
            JobResult::Complete(data) => {
                complete += 1;
                String::from_utf8_lossy(data).into_owned()
            }
            JobResult::Fail => "failed".to_string(),
            JobResult::Exception(data) => format!("exception {}", String::from_utf8_lossy(data)),
        };
        println!(
            "  {} {unique}: {result} (progress {}){}",
            reply.handle,
            progress.join(", "),
            if again {
                ", run again after its slot was killed"
            } else {
                ""
            }
        );
    }
    Ok(format!(
        "foreground: {complete} of {FG_CLIENTS} answered complete{}.",
        match (&killed, rerun) {
            (Some(_), true) => "; the killed slot's job ran again on another slot",
            _ => "",
        }
    ))
}

/// Waits until a slot is in the middle of a job and SIGKILLs its runner, as
/// a crash would: its slot id, pid and job handle. `None` if no slot got
/// that far within 10 s.
async fn kill_a_busy_slot(
    tx: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<Option<(u32, u32, String)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mid_job = f64::from(FG_JOB_MS) / 1000.0 / 4.0;
    while Instant::now() < deadline {
        let s = snapshot(tx).await?;
        let busy = worker(&s).and_then(|w| {
            w.slots.iter().find_map(|slot| {
                let job = slot.job.as_ref().filter(|j| j.running_secs >= mid_job)?;
                Some((slot.id, slot.pid?, job.handle.clone()))
            })
        });
        if let Some((slot, pid, handle)) = busy {
            // Only our own live child: the runner's pid cannot have been
            // reused while it is our unreaped child.
            let me = std::process::id();
            let ours =
                |p: u32| crate::procfs::stat(p).is_some_and(|st| st.ppid == me && !st.is_zombie());
            if crate::placement::child::kill_checked(pid, ours) {
                return Ok(Some((slot, pid, handle)));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("slotman-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `slotman demo-handler`: a stdio handler that works payload-milliseconds,
/// reporting progress halfway. Blocking I/O: it is its own process.
pub fn handler_main() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::new(stdin.lock());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(b"READY\n")?;
    out.flush()?;
    loop {
        let mut header = String::new();
        if std::io::BufRead::read_line(&mut input, &mut header)? == 0 {
            return Ok(());
        }
        // `JOB FUNCTION HANDLE UNIQUE SIZE`, or `JOBX` with the sizes of
        // the function, handle and unique id (`-`: none), whose bytes lead
        // the payload. This handler needs none of them.
        let fields: Vec<&str> = header.trim_end_matches('\n').split(' ').collect();
        let size = |s: &str| s.parse::<usize>().ok();
        let (skip, size) = match fields[..] {
            ["JOB", _, _, _, n] => (Some(0), size(n)),
            ["JOBX", f, h, u, n] => {
                let u = if u == "-" { Some(0) } else { size(u) };
                let skip = [size(f), size(h), u]
                    .into_iter()
                    .try_fold(0usize, |sum, n| sum.checked_add(n?));
                (skip, size(n))
            }
            _ => (None, None),
        };
        let (Some(skip), Some(size)) = (skip, size) else {
            anyhow::bail!("bad job header {header:?}");
        };
        std::io::copy(&mut (&mut input).take(skip as u64), &mut std::io::sink())?;
        let mut payload = vec![0; size];
        input.read_exact(&mut payload)?;
        let ms: u64 = String::from_utf8_lossy(&payload)
            .trim()
            .parse()
            .unwrap_or(100);
        std::thread::sleep(Duration::from_millis(ms / 2));
        out.write_all(b"STATUS 1 2\n")?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(ms - ms / 2));
        let result = format!("worked {ms}ms in pid {}", std::process::id());
        write!(out, "COMPLETE {}\n{result}", result.len())?;
        out.flush()?;
    }
}
