//! Shared fixture for integration tests: test tiers that skip loudly (or fail,
//! when `SLOTMAN_TEST_REQUIRE` asks for them), a real gearmand on a free
//! loopback port that cannot outlive the test process, and bounded polling.
//!
//! Use it with `mod common;` from a test file. Not every test uses every item,
//! hence the `dead_code` allowance.
//!
//! Tiers: a test that needs something the host may lack (gearmand, systemd)
//! calls `skip(tier, why)` and returns. `SLOTMAN_TEST_REQUIRE=all` or a comma
//! list such as `gearmand,systemd` turns those skips into failures, so CI can
//! insist that the real thing was exercised.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use slotman::gearman::admin::{self, FunctionStatus, WorkerInfo};

/// How long gearmand may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an admin command from the sync helpers may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding a free port before giving up.
const PORT_ATTEMPTS: usize = 10;

/// Whether `tier` must run rather than be skipped (`SLOTMAN_TEST_REQUIRE`).
pub fn required(tier: &str) -> bool {
    std::env::var("SLOTMAN_TEST_REQUIRE")
        .map(|v| v.split(',').map(str::trim).any(|t| t == "all" || t == tier))
        .unwrap_or(false)
}

/// Reports a skipped test on one stderr line, or panics if the tier is
/// required. The test name is the harness's name for the current thread.
pub fn skip(tier: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if required(tier) {
        panic!("[{tier} tier] {test}: {why}; this tier is required by SLOTMAN_TEST_REQUIRE");
    }
    // Straight to the stderr handle: the test harness captures `eprintln!`
    // of passing tests, and a skip must be visible in a normal run.
    let _ = writeln!(std::io::stderr(), "SKIPPED [{tier} tier] {test}: {why}");
}

/// Whether `tool` is a command on PATH.
pub fn tool_on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The slotman binary built for this test run.
pub fn slotman_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slotman"))
}

/// Waits up to 10 s for a process to write `file` (whole: writers rename
/// it into place), then reads it.
pub fn written(what: &str, file: &Path) -> String {
    wait_until(what, Duration::from_secs(10), || file.exists());
    std::fs::read_to_string(file).expect("read the written file")
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` if
/// `timeout` passes first.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago on 127.0.0.1. Someone may take it
/// before it is used; callers retry.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// The gearmand binary: on PATH, else in the sbin directories that a
/// non-root PATH often lacks.
pub fn gearmand_path() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("gearmand"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A gearmand owned by a test: on 127.0.0.1 at `port`, killed on drop.
pub struct Gearmand {
    pub port: u16,
    /// "127.0.0.1:PORT", as `job_servers` and `Client::connect` take it.
    pub addr: String,
    binary: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Gearmand {
    /// Starts gearmand on a free port and waits until it accepts
    /// connections. `None` (after `skip`) if gearmand is not installed;
    /// panics, showing its log, if it is installed but will not start.
    pub fn start() -> Option<Gearmand> {
        let Some(binary) = gearmand_path() else {
            skip(
                "gearmand",
                "gearmand is not installed (apt install gearman-job-server)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("slotman-gearmand-")
            .tempdir()
            .expect("creating a temp dir for gearmand");
        let mut g = Gearmand {
            port: 0,
            addr: String::new(),
            binary,
            dir,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match g.spawn_on(port) {
                Ok(()) => return Some(g),
                // Most likely someone took the port between our probe and
                // gearmand's bind: try another.
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!(
            "gearmand would not start:\n{}\n{}",
            failures.join("\n"),
            g.logs()
        );
    }

    /// SIGKILLs gearmand and reaps it; jobs queued in memory are lost, as
    /// in a crash. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills gearmand and starts a fresh one on the same port, waiting until
    /// it accepts connections. The port may linger for a moment after the
    /// old process dies, so failed starts are retried for a while.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.spawn_on(self.port) {
                Ok(()) => return,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "gearmand would not restart on port {}: {last}\n{}",
            self.port,
            self.logs()
        );
    }

    /// Whether the gearmand process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The gearmand process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Admin `status`, synchronously (fine from sync and async tests alike).
    /// Panics if gearmand does not answer.
    pub fn status(&self) -> Vec<FunctionStatus> {
        let text = self.admin("status").expect("gearmand admin `status`");
        admin::parse_status(&text).expect("parsing gearmand `status`")
    }

    /// Admin `workers`, synchronously. Panics if gearmand does not answer.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let text = self.admin("workers").expect("gearmand admin `workers`");
        admin::parse_workers(&text).expect("parsing gearmand `workers`")
    }

    /// `status` of one function: (queued, running, workers), zeros if absent.
    pub fn function_status(&self, name: &str) -> (u64, u64, u64) {
        self.status()
            .into_iter()
            .find(|f| f.name == name)
            .map_or((0, 0, 0), |f| (f.queued, f.running, f.workers))
    }

    /// gearmand's log and console output, for failure messages.
    pub fn logs(&self) -> String {
        log_files(
            self.dir.path(),
            &[
                ("gearmand.log", "gearmand.log"),
                ("gearmand console", "console.log"),
            ],
        )
    }

    /// Starts gearmand on `port` and waits until it answers as itself.
    fn spawn_on(&mut self, port: u16) -> Result<(), String> {
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("console.log"))
            .map_err(|e| format!("opening console log: {e}"))?;
        let console2 = console
            .try_clone()
            .map_err(|e| format!("opening console log: {e}"))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-file={}",
                self.dir.path().join("gearmand.log").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("gearmand.pid").display()
            ))
            .arg("--verbose=WARNING")
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console2);
        let mut child =
            spawn_tied_to_process(cmd).map_err(|e| format!("spawning gearmand: {e}"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("gearmand exited with {status}"));
            }
            // Something answers on the port; make sure it is our gearmand
            // and not a neighbour that grabbed the port first.
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match admin_exchange(&addr.to_string(), "getpid") {
                    Ok(answer) if answer.trim() == format!("OK {}", child.id()) => break,
                    Ok(answer) if answer.starts_with("OK ") => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "port taken by another gearmand ({})",
                            answer.trim()
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not accepting connections after {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.port = port;
        self.addr = addr.to_string();
        self.child = Some(child);
        Ok(())
    }

    fn admin(&self, command: &str) -> std::io::Result<String> {
        admin_exchange(&self.addr, command)
    }
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one admin command over a blocking socket and reads the answer up to
/// its end ("." line for lists, one line otherwise), bounded in time and size.
fn admin_exchange(addr: &str, command: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let mut s = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)?;
    s.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    s.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let list = matches!(command, "status" | "workers" | "prioritystatus");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let done = if list {
            text == ".\n"
                || text.ends_with("\n.\n")
                || text.ends_with("\n.\r\n")
                || (text.starts_with("ERR") && text.ends_with('\n'))
        } else {
            text.ends_with('\n')
        };
        if done {
            break;
        }
        if buf.len() > admin::MAX_RESPONSE || Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("incomplete answer to `{command}`"),
            ));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The files `(title, name)` of `dir`, each under a `--- title ---` line,
/// for failure messages; a file that cannot be read says why.
pub fn log_files(dir: &Path, files: &[(&str, &str)]) -> String {
    files
        .iter()
        .map(|(title, name)| {
            let text = std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| format!("(cannot read {name}: {e})"));
            format!("--- {title} ---\n{text}")
        })
        .collect()
}

/// Spawns `cmd` so that the child is SIGKILLed when this test process dies,
/// however it dies (a panic that skips Drop, an abort, a SIGKILL).
///
/// That is `PR_SET_PDEATHSIG`, which fires when the *thread* that forked the
/// child exits, not the process. Test threads come and go (and a fixture may
/// outlive the test that started it), so every child is forked from one
/// spawner thread that lives as long as the process.
pub fn spawn_tied_to_process(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fixture-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
            })
            .expect("starting the fixture spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("fixture spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("fixture spawner thread is gone"))?
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}
pub mod netns;
pub mod quiet;
pub mod sdbox;
pub mod service;

/// The first child of `pid`, e.g. a stdio runner's handler (0 if none, or
/// once it has exited).
pub fn first_child(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The CPUs a process (its main thread) may run on, from
/// `Cpus_allowed_list` in /proc/PID/status ("0-3,6"); none once it has
/// exited.
pub fn cpus_allowed(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
        cpus.extend(a..=b);
    }
    cpus
}
