//! `slotman status [SERVICE] [--json]`: asks a running manager over its
//! control socket and prints a table (or the JSON for scripts); and the
//! commands (`reload`, `restart`, `drain`, `pause`, `resume`), which wait
//! for the manager's answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::proto::{ServiceStatus, PROTOCOL_VERSION};
use super::server::{runtime_dir, socket_path, Request, RequestKind, Response};

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Fetches one service's status. A manager too busy to take the connection
/// (its listen backlog full) is asked again, after a pause that grows,
/// until [`TIMEOUT`] has passed.
pub async fn fetch(dir: &Path, service: &str) -> anyhow::Result<ServiceStatus> {
    let path = socket_path(dir, service);
    let mut busy = None;
    let work = async {
        let mut pause = Duration::from_millis(20);
        loop {
            match ask(&path, service).await? {
                Asked::Status(st) => return Ok(st),
                Asked::Busy(why) => {
                    tracing::debug!("{why}; asking again in {pause:?}");
                    busy = Some(why);
                    // Jitter, so that clients refused together come apart.
                    let jitter = 0.75 + 0.5 * fastrand::f64();
                    tokio::time::sleep(pause.mul_f64(jitter)).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    };
    let answer = tokio::time::timeout(TIMEOUT, work).await;
    answer.map_err(|_| match busy {
        Some(why) => anyhow::anyhow!("still busy after {TIMEOUT:?}: {why}"),
        None => anyhow::anyhow!("{} did not answer in {TIMEOUT:?}", path.display()),
    })?
}

enum Asked {
    Status(ServiceStatus),
    /// The manager has as many connections waiting as it takes; why.
    Busy(String),
}

async fn ask(path: &Path, service: &str) -> anyhow::Result<Asked> {
    let s = match UnixStream::connect(path).await {
        Ok(s) => s,
        // EAGAIN: the listen backlog is full.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Ok(Asked::Busy(format!(
                "{} is busy: too many status requests waiting",
                path.display()
            )))
        }
        Err(e) => return Err(unreachable(&e, path, service)),
    };
    let request = Request {
        version: PROTOCOL_VERSION,
        request: RequestKind::Status,
        workers: Vec::new(),
        slot: None,
    };
    let resp = exchange(s, &request).await?;
    match (resp.ok, resp.status) {
        (true, Some(st)) => Ok(Asked::Status(st)),
        _ => Err(anyhow::anyhow!(
            "{}",
            resp.error.unwrap_or_else(|| "no status in reply".into())
        )),
    }
}

/// One request line out, one response line back.
async fn exchange(mut s: UnixStream, request: &Request) -> anyhow::Result<Response> {
    let mut req = serde_json::to_vec(request)?;
    req.push(b'\n');
    s.write_all(&req).await?;
    let mut line = Vec::new();
    BufReader::new(s)
        .take(MAX_RESPONSE)
        .read_until(b'\n', &mut line)
        .await?;
    if line.is_empty() {
        anyhow::bail!("the manager closed the connection without an answer");
    }
    Ok(serde_json::from_slice(&line)?)
}

/// Why the control socket cannot be reached, and what to do about it.
fn unreachable(e: &std::io::Error, path: &Path, service: &str) -> anyhow::Error {
    use std::io::ErrorKind;
    let path = path.display();
    match e.kind() {
        ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {path}: run it as root (sudo slotman ...) or as a member of the service's control_group"
        ),
        ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "{path} is stale: no manager listens on it (slotman@{service} is not running; a manager that was killed left it)"
        ),
        ErrorKind::NotFound => anyhow::anyhow!(
            "no {path}: is slotman@{service} running? (a manager run by hand with --runtime-dir DIR needs the same --runtime-dir here)"
        ),
        _ => anyhow::anyhow!("cannot reach {path}: {e}"),
    }
}

/// Sends a command and waits for its answer, as long as it takes (a
/// restart replaces slots one at a time); prints what was done. An error
/// is the manager's refusal (a reload's carries `FILE:LINE`).
pub async fn command(
    service: &str,
    kind: RequestKind,
    workers: Vec<String>,
    slot: Option<u32>,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let path = socket_path(&runtime_dir(dir.as_deref()), service);
    let s = UnixStream::connect(&path)
        .await
        .map_err(|e| unreachable(&e, &path, service))?;
    let request = Request {
        version: PROTOCOL_VERSION,
        request: kind,
        workers,
        slot,
    };
    let resp = exchange(s, &request).await?;
    match (resp.ok, resp.message, resp.error) {
        (true, message, _) => {
            println!("{}", message.unwrap_or_else(|| "done".into()));
            Ok(())
        }
        (false, _, error) => Err(anyhow::anyhow!(
            "{}",
            error.unwrap_or_else(|| "refused".into())
        )),
    }
}

pub async fn status(
    service: Option<String>,
    json: bool,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = runtime_dir(dir.as_deref());
    match service {
        Some(service) => {
            let st = fetch(&dir, &service).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", render(&st));
            }
        }
        None => {
            let mut services: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".sock"))
                        .map(String::from)
                })
                .collect();
            services.sort();
            let mut all = Vec::new();
            for s in services {
                match fetch(&dir, &s).await {
                    Ok(st) => all.push(st),
                    Err(e) => eprintln!("{s}: {e}"),
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no running slotman service in {}", dir.display());
            } else {
                println!(
                    "{:<20} {:>7} {:>6} {:>5} {:>5} {:>10}",
                    "SERVICE", "WORKERS", "SLOTS", "BUSY", "IDLE", "JOBS/S"
                );
                for st in all {
                    let slots: usize = st.workers.iter().map(|w| w.slots.len()).sum();
                    let busy: u32 = st.workers.iter().map(|w| w.busy).sum();
                    let idle: u32 = st.workers.iter().map(|w| w.idle).sum();
                    let rate: f64 = st.workers.iter().map(|w| w.jobs_per_sec).sum();
                    println!(
                        "{:<20} {:>7} {:>6} {:>5} {:>5} {:>10.1}",
                        st.service,
                        st.workers.len(),
                        slots,
                        busy,
                        idle,
                        rate
                    );
                }
            }
        }
    }
    Ok(())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{}K", b / 1024),
    }
}

fn secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The human table: a header per worker, then one line per slot.
pub fn render(st: &ServiceStatus) -> String {
    let mut out = format!(
        "{} (pid {}, up {}, {})\n",
        st.service,
        st.pid,
        secs(st.uptime_secs),
        st.config
    );
    out.push_str(&format!("  health: {}\n", st.health));
    if st.stopping {
        out.push_str("  STOPPING: draining slots\n");
    }
    if let Some(e) = &st.reload_error {
        out.push_str(&format!(
            "  RELOAD FAILED (running the previous config): {e}\n"
        ));
    }
    for w in &st.workers {
        out.push_str(&format!(
            "\n{} [{}] {}{} slots {}..{}: {} busy, {} idle, {} starting, {} draining | {:.1} jobs/s | done {} failed {} exceptions {} | restarts {} | queued {}\n",
            w.name,
            w.kind,
            if w.failed {
                "FAILED "
            } else if w.paused {
                "PAUSED "
            } else {
                ""
            },
            w.slots.len(),
            w.min,
            w.max,
            w.busy,
            w.idle,
            w.starting,
            w.draining,
            w.jobs_per_sec,
            w.jobs_complete,
            w.jobs_failed,
            w.jobs_exception,
            w.restarts,
            opt(w.queued),
        ));
        out.push_str(&format!("  health: {}\n", w.health));
        for p in &w.problems {
            out.push_str(&format!("  problem: {p}\n"));
        }
        out.push_str(&format!(
            "  {:>4} {:<9} {:>8} {:>7} {:>6} {:>5} {:>8} {:>8} {:>3} {:<40} UNIT\n",
            "SLOT", "STATE", "PID", "UPTIME", "JOBS", "LEFT", "MEMORY", "CPU", "PIN", "JOB"
        ));
        for s in &w.slots {
            let job = s.job.as_ref().map_or("-".into(), |j| {
                format!("{} {} ({})", j.function, j.handle, secs(j.running_secs))
            });
            let state = if s.outdated {
                format!("{}*", s.state)
            } else {
                s.state.clone()
            };
            out.push_str(&format!(
                "  {:>4} {:<9} {:>8} {:>7} {:>6} {:>5} {:>8} {:>8} {:>3} {:<40} {}\n",
                s.id,
                state,
                opt(s.pid),
                secs(s.uptime_secs),
                s.jobs_done,
                opt(s.jobs_left),
                bytes(s.memory_bytes),
                s.cpu_usage_nsec
                    .map_or("-".into(), |n| format!("{:.2}s", n as f64 / 1e9)),
                opt(s.pinned_cpu),
                job,
                opt(s.unit.as_deref()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

    #[tokio::test]
    async fn a_full_listen_backlog_is_busy_not_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = socket_path(dir.path(), "svc");
        // A listener that takes one connection in its backlog and never
        // accepts: the second connect gets EAGAIN.
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new(&path).expect("addr"),
        )
        .expect("bind");
        socket::listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
        let _waiting = std::os::unix::net::UnixStream::connect(&path).expect("first");
        match ask(&path, "svc").await {
            Ok(Asked::Busy(why)) => assert!(why.contains("busy"), "{why}"),
            Ok(Asked::Status(_)) => panic!("a status from nowhere"),
            Err(e) => panic!("not taken as busy: {e}"),
        }
        drop(fd);
        // No one listening at all: a stale socket, and it says so.
        let err = ask(&path, "svc").await.err().expect("refused");
        assert!(
            err.to_string().contains("slotman@svc is not running"),
            "{err}"
        );
    }
}
