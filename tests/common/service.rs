//! A `slotman run --config FILE` process as tests drive it, with the
//! helpers around it (jobs in, status out, signals).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slotman::control::proto::{ServiceStatus, WorkerStatus};
use slotman::gearman::client::Client;

use super::{slotman_bin, spawn_tied_to_process, wait_until};

/// The test handler `tests/fixtures/handler.py` as a `command` value.
pub fn handler() -> String {
    format!(
        r#"["python3", "{}/tests/fixtures/handler.py"]"#,
        env!("CARGO_MANIFEST_DIR")
    )
}

/// How much of the manager's log a failed test shows.
const LOG_TAIL: usize = 64 * 1024;

/// A `slotman run --config DIR/svc.toml` process with its own runtime dir.
pub struct Service {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// Run the manager on these CPUs only (`taskset -c`).
    pub cpus: Option<Vec<u32>>,
    /// More arguments of `slotman run` (`--placement child`, say).
    pub args: Vec<String>,
    /// Environment of the manager: set (`Some`) or removed (`None`).
    pub env: Vec<(String, Option<String>)>,
}

impl Service {
    pub fn new(config: &str) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("svc.toml"), config).expect("write config");
        Service {
            dir,
            child: None,
            cpus: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// [`Service::new`] and [`Service::start`].
    pub fn running(config: &str) -> Service {
        let mut svc = Service::new(config);
        svc.start();
        svc
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("svc.toml")
    }

    pub fn write_config(&self, config: &str) {
        std::fs::write(self.config_path(), config).expect("write config");
    }

    pub fn start(&mut self) {
        self.start_bin(&slotman_bin());
    }

    /// Starts `bin run` (a copy of slotman, say).
    pub fn start_bin(&mut self, bin: &Path) {
        let mut cmd = match &self.cpus {
            Some(cpus) => {
                let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(list.join(",")).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        for (name, value) in &self.env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        cmd.arg("run")
            .args(&self.args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--runtime-dir")
            .arg(self.dir.path())
            .env("RECORD_FILE", self.dir.path().join("record.log"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).expect("manager log"));
        // Tied to the test process: a test that dies leaves no manager.
        let mut child = spawn_tied_to_process(cmd).expect("start slotman run");
        let socket = self.dir.path().join("svc.sock");
        wait_until("control socket", Duration::from_secs(10), || {
            // A manager that refused to start fails the test at once (its
            // log is shown on drop).
            if let Ok(Some(status)) = child.try_wait() {
                panic!("slotman run exited early: {status}");
            }
            socket.exists()
        });
        self.child = Some(child);
    }

    /// `slotman status` as its table, as an operator sees it.
    pub fn status_table(&self) -> String {
        String::from_utf8_lossy(&self.control("status", &[])).into_owned()
    }

    /// What `slotman COMMAND svc ARGS` printed; fails the test if it failed.
    pub fn control(&self, command: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new(slotman_bin())
            .args([command, "svc"])
            .args(args)
            .arg("--runtime-dir")
            .arg(self.dir.path())
            .output()
            .expect("slotman status");
        assert!(
            out.status.success(),
            "slotman {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Fails the test if the manager has exited.
    pub fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("slotman run exited early: {status}");
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal manager");
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st.success();
            }
            assert!(Instant::now() < deadline, "manager did not stop in 30s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn status(&self) -> ServiceStatus {
        serde_json::from_slice(&self.control("status", &["--json"])).expect("status JSON")
    }

    pub fn worker(&self, name: &str) -> WorkerStatus {
        self.status()
            .workers
            .into_iter()
            .find(|w| w.name == name)
            .expect("worker in status")
    }

    /// Waits until `worker`'s one slot is idle; its runner's pid.
    pub fn one_slot_ready(&self, worker: &str) -> u32 {
        wait_until("slot ready", Duration::from_secs(10), || {
            self.worker(worker).idle == 1
        });
        self.worker(worker).slots[0].pid.expect("runner pid")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("manager.log")
    }

    /// What the manager logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn record(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("record.log")).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Its end: a debug log of a flood runs to megabytes.
            let log = self.log();
            let mut from = log.len().saturating_sub(LOG_TAIL);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            eprintln!(
                "--- the manager's log (its last {LOG_TAIL} bytes at most) ---\n{}",
                &log[from..]
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
}

pub fn pid_alive(pid: u32) -> bool {
    slotman::procfs::stat(pid).is_some_and(|s| !s.is_zombie())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn submit_bg(addr: &str, function: &str, jobs: impl IntoIterator<Item = (String, String)>) {
    rt().block_on(async {
        let mut c = Client::connect(addr).await.expect("connect");
        for (unique, payload) in jobs {
            c.submit_background(function, &unique, payload)
                .await
                .expect("submit");
        }
    })
}

pub fn total_done(w: &WorkerStatus) -> u64 {
    w.jobs_complete + w.jobs_failed + w.jobs_exception
}
