//! A real systemd for tests: boots `tests/harness/sdbox`, a throwaway systemd
//! as PID 1 of its own PID, mount and cgroup namespaces over an overlay of
//! the host's root, and runs commands inside it (`systemctl`, `journalctl`,
//! `busctl`, `slotman status` …). The network is shared, so a gearmand the
//! test starts on 127.0.0.1 serves the box too.
//!
//! Never boot systemd any other way on a test machine: outside a namespace it
//! takes over /tmp and the host's cgroups.
//!
//! Lifetime: the box's `unshare` is spawned with `PR_SET_PDEATHSIG`
//! ([`super::spawn_tied_to_process`]), and takes systemd down with it, so a
//! box cannot outlive the test process however that ends. [`SdBox::stop`]
//! (also run on drop) kills it and removes its cgroups; a box kept in a
//! `static` calls it from an `atexit` hook ([`SdBox::stop_at_exit`]). Only
//! a test process killed outright leaves empty `slotman-sdbox-*` cgroup
//! directories behind.
//!
//! ```ignore
//! let Some(sd) = SdBox::start(&[]) else { return };   // skipped: says why
//! sd.sh("systemctl start foo").assert_ok("start foo");
//! sd.wait_for("foo is active", Duration::from_secs(10), "systemctl is-active -q foo");
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a box may take to boot before the test fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one command inside the box may run (`exec`, `sh`).
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// The harness script, in this crate.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/sdbox")
}

/// A booted systemd in a namespace box; stopped on drop.
pub struct SdBox {
    dir: tempfile::TempDir,
    /// The `sdbox boot` process: the box's `unshare`. `None` once stopped.
    boot: Mutex<Option<Child>>,
    /// From spawning the box to `systemctl is-system-running` saying running.
    pub boot_time: Duration,
}

/// What to mount inside: `src` on the host at `dst` inside (file or directory).
#[derive(Debug, Clone)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
}

impl Bind {
    /// Each of `paths` at the same path inside.
    pub fn same_paths(paths: &[&Path]) -> Vec<Bind> {
        paths
            .iter()
            .map(|p| Bind {
                src: p.to_path_buf(),
                dst: p.to_path_buf(),
            })
            .collect()
    }
}

impl SdBox {
    /// Whether this host can run a box; `Err` says what is missing.
    pub fn probe() -> Result<(), String> {
        if !cfg!(target_os = "linux") {
            return Err("a systemd box needs Linux".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("a systemd box needs root (namespaces, cgroups, mounts)".into());
        }
        let systemd = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];
        if !systemd.iter().any(|p| Path::new(p).exists()) {
            return Err("systemd is not installed (apt install systemd)".into());
        }
        let dbus = [
            "/usr/bin/dbus-daemon",
            "/usr/bin/dbus-broker",
            "/usr/bin/dbus-broker-launch",
        ];
        let dbus_unit = [
            "/lib/systemd/system/dbus.service",
            "/usr/lib/systemd/system/dbus.service",
        ];
        if !dbus.iter().any(|p| Path::new(p).exists())
            || !dbus_unit.iter().any(|p| Path::new(p).exists())
        {
            return Err("the D-Bus system bus is not installed (apt install dbus)".into());
        }
        for tool in ["unshare", "nsenter", "findmnt", "pgrep", "bash", "timeout"] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !found {
                return Err(format!("`{tool}` is not on PATH (util-linux, procps)"));
            }
        }
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if cgroups.trim().is_empty() {
            return Err("no cgroups in /proc/self/cgroup".into());
        }
        // A container without CAP_SYS_ADMIN is root but cannot unshare.
        let ns = Command::new("unshare")
            .args(["--pid", "--mount", "--cgroup", "--fork", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match ns {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "cannot create PID/mount/cgroup namespaces here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run unshare: {e}")),
        }
    }

    /// Boots a box with each of `binds` bind-mounted at the same path
    /// inside. `None` (after [`super::skip`]) if the host cannot run one;
    /// panics with the box's logs if it can but the box does not come up.
    pub fn start(binds: &[&Path]) -> Option<SdBox> {
        SdBox::start_with(&Bind::same_paths(binds))
    }

    /// [`SdBox::start`] with mounts at other places inside than outside.
    pub fn start_with(binds: &[Bind]) -> Option<SdBox> {
        SdBox::start_full(binds, false)
    }

    /// [`SdBox::start_with`], and with `private_net` a network namespace
    /// of the box's own (only a loopback): for services on fixed ports,
    /// such as Debian's gearmand on 4730. Commands run by [`SdBox::exec`]
    /// are in it too; the host's loopback is out of reach.
    pub fn start_full(binds: &[Bind], private_net: bool) -> Option<SdBox> {
        if let Err(why) = SdBox::probe() {
            super::skip("systemd", &why);
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("slotman-sdbox-")
            .tempdir()
            .expect("creating a temp dir for the systemd box");
        let log = std::fs::File::create(dir.path().join("boot.log")).expect("creating boot.log");
        let log2 = log.try_clone().expect("cloning boot.log");
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("boot").arg(dir.path());
        for b in binds {
            assert!(
                b.src.is_absolute() && b.dst.is_absolute(),
                "bind paths must be absolute: {b:?}"
            );
            cmd.arg(format!("{}:{}", b.src.display(), b.dst.display()));
        }
        if private_net {
            cmd.env("SDBOX_NET", "private");
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let started = Instant::now();
        let boot = super::spawn_tied_to_process(cmd).expect("spawning tests/harness/sdbox boot");
        let mut sd = SdBox {
            dir,
            boot: Mutex::new(Some(boot)),
            boot_time: Duration::ZERO,
        };
        let wait = Command::new("bash")
            .arg(script())
            .arg("wait")
            .arg(sd.dir.path())
            .arg(BOOT_TIMEOUT.as_secs().to_string())
            .output()
            .expect("running tests/harness/sdbox wait");
        if !wait.status.success() {
            let logs = sd.logs();
            sd.stop();
            panic!(
                "the systemd box did not boot: {}\n{}\n{logs}",
                String::from_utf8_lossy(&wait.stderr).trim(),
                String::from_utf8_lossy(&wait.stdout).trim(),
            );
        }
        sd.boot_time = started.elapsed();
        Some(sd)
    }

    /// The box's state directory on the host (boot.log, console.log, pid).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `args` inside the box, bounded by [`EXEC_TIMEOUT`].
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.exec_full(args, None, EXEC_TIMEOUT)
    }

    /// Runs `args` inside with `input` on stdin, killed after `timeout`
    /// (exit status 124 then, as from timeout(1)).
    pub fn exec_full<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Output {
        let secs = format!("{:.3}", timeout.as_secs_f64().max(0.001));
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("exec")
            .arg(self.dir.path())
            .args(["timeout", "--kill-after=5", &secs])
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running tests/harness/sdbox exec");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin of sdbox exec");
            let input = input.to_vec();
            // A thread: the command may not read all of it before answering.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        child.wait_with_output().expect("waiting for sdbox exec")
    }

    /// Runs a `sh -c` script inside the box.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// [`SdBox::sh`] bounded by `timeout`.
    pub fn sh_timeout(&self, script: &str, timeout: Duration) -> Output {
        self.exec_full(&["sh", "-c", script], None, timeout)
    }

    /// Runs `script` inside until it exits 0, at most until `timeout`
    /// passes; returns the successful run's output. Panics naming `what`,
    /// with the last run's output, if it never succeeds.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Output {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let out = self.sh_timeout(script, left.max(Duration::from_secs(1)));
            if out.status.success() {
                return out;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting until {what}\nlast try of `{script}`: {}",
                    describe(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `contents` to `path` inside the box (parents created).
    pub fn write_file(&self, path: &str, contents: &str) {
        let out = self.exec_full(
            &[
                "sh",
                "-c",
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\"",
                "sh",
                path,
            ],
            Some(contents.as_bytes()),
            EXEC_TIMEOUT,
        );
        out.assert_ok(&format!("writing {path} in the box"));
    }

    /// Copies a host file to `dst` inside with `mode` (e.g. "755"). The host
    /// file is read through the box's overlay, so it must exist on the root
    /// file system (not under /tmp or /run, which are the box's own).
    pub fn install(&self, src: &Path, dst: &str, mode: &str) {
        let out = self.exec(&[
            "install".as_ref(),
            "-D".as_ref(),
            "-m".as_ref(),
            mode.as_ref(),
            src.as_os_str(),
            dst.as_ref(),
        ]);
        out.assert_ok(&format!("installing {} as {dst} in the box", src.display()));
    }

    /// `systemctl show -p PROPS UNIT` as (property, value) pairs in the
    /// order systemd gives them; panics if systemctl fails.
    pub fn show(&self, unit: &str, props: &[&str]) -> Vec<(String, String)> {
        let out = self.exec(&["systemctl", "show", "-p", &props.join(","), "--", unit]);
        out.assert_ok(&format!("systemctl show {unit}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        let out = self.exec(&["systemctl", "show", "-P", prop, "--", unit]);
        out.assert_ok(&format!("systemctl show -P {prop} {unit}"));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Names of loaded units matching a glob, with their active state.
    pub fn units(&self, pattern: &str, all: bool) -> Vec<(String, String)> {
        let mut args = vec![
            "systemctl",
            "list-units",
            "--plain",
            "--no-legend",
            "--no-pager",
        ];
        if all {
            args.push("--all");
        }
        args.extend(["--", pattern]);
        let out = self.exec(&args);
        out.assert_ok(&format!("systemctl list-units {pattern}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let name = f.next()?.to_string();
                let _load = f.next()?;
                let active = f.next()?.to_string();
                Some((name, active))
            })
            .collect()
    }

    /// `journalctl --no-pager -o cat -u UNIT` (plus `extra` arguments).
    pub fn journal(&self, unit: &str, extra: &[&str]) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-q", "-u", unit];
        args.extend(extra);
        let out = self.exec(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Box logs and systemd's view, for failure messages.
    pub fn logs(&self) -> String {
        super::log_files(
            self.dir.path(),
            &[
                ("sdbox boot.log", "boot.log"),
                ("sdbox console.log", "console.log"),
            ],
        )
    }

    /// Kills the box and removes its cgroups. Idempotent; also run on drop.
    pub fn stop(&self) {
        let mut boot = match self.boot.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(mut child) = boot.take() else { return };
        let out = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
        let _ = child.kill();
        let _ = child.wait();
        match out {
            // The state directory goes too: a box kept in a static is never
            // dropped, so its TempDir would stay behind.
            Ok(o) if o.status.success() => {
                let _ = std::fs::remove_dir_all(self.dir.path());
            }
            Ok(o) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "sdbox stop {}: {}",
                    self.dir.path().display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "sdbox stop: {e}");
            }
        }
    }

    /// Registers an `atexit` hook that stops `sd`: for a box kept in a
    /// `static` (a `OnceLock`), which is never dropped.
    pub fn stop_at_exit(sd: &'static SdBox) {
        static BOXES: Mutex<Vec<&'static SdBox>> = Mutex::new(Vec::new());
        extern "C" fn stop_all() {
            let boxes = match BOXES.lock() {
                Ok(b) => b.clone(),
                Err(p) => p.into_inner().clone(),
            };
            for b in boxes {
                b.stop();
            }
        }
        let mut boxes = match BOXES.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if boxes.is_empty() {
            // SAFETY: registering a plain extern "C" fn with no arguments.
            unsafe {
                libc::atexit(stop_all);
            }
        }
        boxes.push(sd);
    }
}

impl Drop for SdBox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Exit status, stdout and stderr of a command, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Convenience on command output.
pub trait OutputExt {
    /// Panics with the output if the command failed.
    fn assert_ok(&self, what: &str) -> &Self;
    /// stdout as text, trailing whitespace trimmed.
    fn text(&self) -> String;
}

impl OutputExt for Output {
    fn assert_ok(&self, what: &str) -> &Self {
        assert!(self.status.success(), "{what} failed: {}", describe(self));
        self
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }
}
