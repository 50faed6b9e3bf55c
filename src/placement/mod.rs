//! Where a slot process lives: a plain child process group, or a transient
//! systemd scope in `slotman-SERVICE.slice`. The manager sees only
//! [`Placement`]: place a runner, kill it, clean up after it.
//!
//! Under systemd the runner is forked first and waits for its `Start`
//! message; the scope is created with the runner's PID (so the runner and
//! every handler it starts live in the scope) and only then does the manager
//! send `Start`.

pub mod child;
pub mod scope;
pub mod unit_name;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;

use crate::config::WorkerConfig;
use crate::slot::report::SlotSpec;
use scope::{Limits, PlacementError, Systemd};

/// A placed runner: the process, and the manager's end of its socket.
pub struct Placed {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub control: tokio::net::UnixStream,
    /// The scope unit, under systemd.
    pub unit: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("cannot start the slot runner: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("cannot create the slot's scope: {0}")]
    Scope(#[from] PlacementError),
}

/// How slots are placed.
pub enum Placement {
    /// Plain child processes, each in its own process group.
    Child,
    /// Transient scopes over D-Bus.
    Systemd(SystemdPlacement),
}

pub struct SystemdPlacement {
    pub bus: Systemd,
    pub service: String,
    pub slice: String,
    /// The manager's own unit: scopes are `PartOf=` it.
    pub owner: Option<String>,
    /// Per worker, the first slot id free of leftover scopes.
    pub next_ids: std::collections::HashMap<String, u32>,
}

/// The runner's file name: next to `slotman` (a build tree, `install.sh`
/// before 0.2), or in [`RUNNER_LIBEXEC`] below the prefix.
pub const RUNNER_BIN: &str = "slotman-slot";

/// Where a package puts the runner, relative to the prefix of `slotman`'s
/// `bin/` (`/usr/bin/slotman` → `/usr/libexec/slotman/slotman-slot`): a
/// helper binary nobody runs by hand stays off `PATH` (FHS 3.0, `libexec`).
pub const RUNNER_LIBEXEC: &str = "libexec/slotman";

/// How to start a slot runner: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerCommand {
    pub program: PathBuf,
    pub args: &'static [&'static str],
    /// `argv[0]`, when `program` is not the name to show (a pinned binary).
    pub arg0: Option<PathBuf>,
}

/// The runner for a manager whose executable is `exe`: [`RUNNER_BIN`] in the
/// same directory, else in `../`[`RUNNER_LIBEXEC`] (small, so each slot maps
/// less), else `exe slot` (a `cargo run` that built one binary, an install
/// that copied only `slotman`).
pub fn runner_for(exe: &Path) -> RunnerCommand {
    let beside = exe.with_file_name(RUNNER_BIN);
    let libexec = exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join(RUNNER_LIBEXEC).join(RUNNER_BIN));
    match [Some(beside), libexec]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
    {
        Some(small) => RunnerCommand {
            program: small,
            args: &[],
            arg0: None,
        },
        None => RunnerCommand {
            program: exe.to_path_buf(),
            args: &["slot"],
            arg0: None,
        },
    }
}

/// [`runner_for`] this process, decided once and pinned: every slot of a
/// manager runs the same runner binary, even after a package upgrade has
/// replaced the files under the running manager (the new version starts
/// with the next restart). Call it when the manager starts.
pub fn runner() -> std::io::Result<&'static RunnerCommand> {
    static RUNNER: OnceLock<RunnerCommand> = OnceLock::new();
    if let Some(r) = RUNNER.get() {
        return Ok(r);
    }
    let exe = std::env::current_exe()?;
    Ok(RUNNER.get_or_init(|| pin(runner_for(&exe))))
}

/// The runner executed through a descriptor held open for the manager's
/// lifetime (`/proc/self/fd/N`, resolved in the child before exec closes
/// it), so a replaced file is not what runs. As it was if the file cannot
/// be opened.
fn pin(runner: RunnerCommand) -> RunnerCommand {
    if !Path::new("/proc/self/fd").is_dir() {
        return runner;
    }
    // `slotman slot`: the running binary itself, even if already replaced.
    let source = match runner.args {
        [] => runner.program.clone(),
        _ => PathBuf::from("/proc/self/exe"),
    };
    let file = match std::fs::File::open(&source) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("runner {} not pinned: {e}", runner.program.display());
            return runner;
        }
    };
    // Kept open for good: the OnceLock holding the command lives as long.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    RunnerCommand {
        program: PathBuf::from(format!("/proc/self/fd/{fd}")),
        args: runner.args,
        arg0: Some(runner.program),
    }
}

/// The worker's resource keys as scope properties.
pub fn limits(w: &WorkerConfig) -> Limits {
    Limits {
        memory_max: w.memory_max,
        memory_high: w.memory_high,
        cpu_quota_percent: w.cpu_quota,
        cpu_weight: w.cpu_weight,
        tasks_max: w.tasks_max,
    }
}

/// Whether `auto` means systemd: run by systemd (it sets `INVOCATION_ID`)
/// as root on a host booted with systemd.
pub fn systemd_available() -> bool {
    crate::systemd::notify::running_under_systemd() && nix::unistd::geteuid().is_root()
}

impl Placement {
    /// Connects to systemd, creates the service's slice and stops scopes an
    /// earlier run of this service left behind (a killed manager's slots).
    pub async fn systemd(
        service: &str,
        stop_timeout: std::time::Duration,
    ) -> Result<Placement, PlacementError> {
        let bus = Systemd::connect().await?;
        let slice = bus.ensure_slice(service, &Limits::default()).await?;
        // Scopes an earlier run left (a killed or restarted manager): their
        // runners lost their manager, so they are draining on their own
        // (for at most their stop_timeout). Let them finish the job in hand
        // (up to ours), then stop whatever is left; new slots take ids
        // above theirs.
        let pattern = scope::scope_pattern(service);
        let mut next_ids = std::collections::HashMap::new();
        for unit in bus.list_units(&[&pattern]).await? {
            let Some(id) = scope::parse_scope_name(&unit.name) else {
                continue;
            };
            let next = next_ids.entry(id.worker.clone()).or_insert(1u32);
            *next = (*next).max(id.slot.saturating_add(1));
            tracing::warn!(unit = %unit.name, "{} was left by an earlier run ({}): letting it finish its job, then stopping it", unit.name, unit.active_state);
            let bus = bus.clone();
            tokio::spawn(async move {
                // Checked: a stop_timeout the clock cannot hold waits forever.
                let deadline =
                    crate::config::values::after(std::time::Instant::now(), stop_timeout);
                while deadline.is_none_or(|d| std::time::Instant::now() < d) {
                    match bus.active_state(&unit.name).await {
                        Ok(Some(
                            scope::ActiveState::Active
                            | scope::ActiveState::Activating
                            | scope::ActiveState::Deactivating
                            | scope::ActiveState::Reloading,
                        )) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                        _ => return,
                    }
                }
                if let Err(e) = bus.stop_unit(&unit.name).await {
                    tracing::warn!("cannot stop {}: {e}", unit.name);
                }
            });
        }
        Ok(Placement::Systemd(SystemdPlacement {
            bus,
            service: service.to_string(),
            slice,
            owner: Systemd::own_unit().filter(|u| u.ends_with(".service")),
            next_ids,
        }))
    }

    /// The first slot id for `worker`: above any left by an earlier run, so
    /// scope names never collide with a predecessor that is still draining.
    pub fn first_slot_id(&self, worker: &str) -> u32 {
        match self {
            Placement::Systemd(sd) => sd.next_ids.get(worker).copied().unwrap_or(1),
            Placement::Child => 1,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Placement::Child => "child processes",
            Placement::Systemd(_) => "systemd scopes",
        }
    }

    pub async fn place(&self, spec: &SlotSpec) -> Result<Placed, PlaceError> {
        // In a scope, the scope is what holds everything the runner starts.
        let own_session = matches!(self, Placement::Child)
            && spec.worker.kind == crate::config::HandlerKind::Exec;
        let mut r = child::spawn_runner(runner()?, own_session)?;
        match self {
            Placement::Child => Ok(Placed {
                child: r.child,
                pid: r.pid,
                control: r.control,
                unit: None,
            }),
            Placement::Systemd(sd) => {
                let unit = scope::scope_name(&sd.service, &spec.worker.name, spec.slot);
                let description = format!(
                    "slotman slot {}#{} of {}",
                    spec.worker.name, spec.slot, sd.service
                );
                let started = sd
                    .bus
                    .start_scope(
                        &unit,
                        &sd.slice,
                        r.pid,
                        &limits(&spec.worker),
                        sd.owner.as_deref(),
                        &description,
                    )
                    .await;
                if let Err(e) = started {
                    child::kill_group(r.pid);
                    let _ = r.child.wait().await;
                    return Err(e.into());
                }
                Ok(Placed {
                    child: r.child,
                    pid: r.pid,
                    control: r.control,
                    unit: Some(unit),
                })
            }
        }
    }

    /// Kills a slot at once (stop timeout passed).
    pub async fn kill(&self, pid: u32, unit: Option<&str>) {
        match (self, unit) {
            (Placement::Systemd(sd), Some(unit)) => {
                if sd.bus.kill_unit(unit, libc::SIGKILL).await.is_err() {
                    child::kill_group(pid);
                }
            }
            _ => child::kill_group(pid),
        }
    }

    /// After the runner exited, before it is reaped (`exit`: its status,
    /// `None` if it could not be had without reaping; `handler`: its
    /// long-running handler's group, if it reported one): make sure nothing
    /// of it is left.
    pub async fn cleanup(
        &self,
        pid: u32,
        unit: Option<&str>,
        exit: Option<&ExitStatus>,
        handler: Option<child::HandlerGroup>,
    ) {
        // A runner that returned has killed its handlers' groups; one killed
        // by a signal has not.
        let killed = exit.is_some_and(|s| s.code().is_none());
        match (self, unit) {
            (Placement::Systemd(sd), Some(unit)) => {
                // The scope's cgroup holds everything the runner started, by
                // any pid: no numbers needed. After a signal, SIGKILL it all
                // at once, as outside systemd; a stop would send SIGTERM and
                // wait.
                if killed {
                    if let Err(e) = sd.bus.kill_unit(unit, libc::SIGKILL).await {
                        tracing::debug!("killing {unit}: {e}");
                    }
                }
                if let Err(e) = sd.bus.stop_unit(unit).await {
                    tracing::debug!("stopping {unit}: {e}");
                }
            }
            // Unreaped, the runner holds its pid, and so its group and
            // session ids: nothing else can have them. Without its status
            // it may have been reaped: leave the numbers alone.
            _ if exit.is_none() => {}
            _ => {
                child::kill_group(pid);
                // Its stdio handler dies with it (PR_SET_PDEATHSIG), but not
                // what that started: kill the handler's group, if the
                // handler is who the runner said (child::kill_handler_group).
                // Exec handlers have no PR_SET_PDEATHSIG: find them by the
                // runner's session (exec runners lead one; for others this
                // finds nobody). Not on every exit: it scans /proc.
                if killed {
                    if let Some(group) = handler {
                        child::kill_handler_group(&group);
                    }
                    child::kill_session(pid);
                }
            }
        }
    }

    /// Applies a worker's new resource limits to a running slot (reload).
    /// Plain child processes have none to change.
    pub async fn set_limits(&self, unit: &str, worker: &WorkerConfig) -> Result<(), String> {
        match self {
            Placement::Systemd(sd) => sd
                .bus
                .set_limits(unit, &limits(worker))
                .await
                .map_err(|e| e.to_string()),
            Placement::Child => Ok(()),
        }
    }

    /// The bus, for cgroup accounting in `slotman status`.
    /// The manager's own service's `TimeoutStopSec=`, when it runs as a
    /// systemd service (`None`: not known, or infinite).
    pub async fn own_stop_timeout(&self) -> Option<(String, std::time::Duration)> {
        let Placement::Systemd(sd) = self else {
            return None;
        };
        let unit = sd.owner.as_deref()?;
        match sd.bus.service_stop_timeout(unit).await {
            Ok(t) => t.map(|t| (unit.to_string(), t)),
            Err(e) => {
                tracing::debug!("cannot read TimeoutStopSec of {unit}: {e}");
                None
            }
        }
    }

    pub fn systemd_bus(&self) -> Option<Systemd> {
        match self {
            Placement::Systemd(sd) => Some(sd.bus.clone()),
            Placement::Child => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_is_the_small_binary_next_to_slotman_if_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("slotman");
        std::fs::write(&exe, "").expect("write");
        assert_eq!(
            runner_for(&exe),
            RunnerCommand {
                program: exe.clone(),
                args: &["slot"],
                arg0: None,
            }
        );
        // A directory of that name is no runner.
        std::fs::create_dir(dir.path().join(RUNNER_BIN)).expect("mkdir");
        assert_eq!(runner_for(&exe).args, &["slot"]);
        std::fs::remove_dir(dir.path().join(RUNNER_BIN)).expect("rmdir");
        std::fs::write(dir.path().join(RUNNER_BIN), "").expect("write");
        assert_eq!(
            runner_for(&exe),
            RunnerCommand {
                program: dir.path().join(RUNNER_BIN),
                args: &[],
                arg0: None,
            }
        );
    }

    #[test]
    fn a_packaged_runner_is_found_in_libexec_below_the_prefix() {
        let prefix = tempfile::tempdir().expect("tempdir");
        let bin = prefix.path().join("bin");
        let libexec = prefix.path().join(RUNNER_LIBEXEC);
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        std::fs::create_dir_all(&libexec).expect("mkdir libexec");
        let exe = bin.join("slotman");
        std::fs::write(&exe, "").expect("write");
        assert_eq!(runner_for(&exe).args, &["slot"], "no runner anywhere yet");
        std::fs::write(libexec.join(RUNNER_BIN), "").expect("write");
        assert_eq!(runner_for(&exe).program, libexec.join(RUNNER_BIN));
        // One next to slotman wins: a build tree, or an older install.sh.
        std::fs::write(bin.join(RUNNER_BIN), "").expect("write");
        assert_eq!(runner_for(&exe).program, bin.join(RUNNER_BIN));
        // A slotman at the root of the file system has no prefix above it.
        assert_eq!(runner_for(Path::new("/slotman")).args, &["slot"]);
    }

    #[test]
    fn a_pinned_runner_runs_the_file_it_was_pinned_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("runner");
        std::fs::write(&program, "#!/bin/sh\necho old\n").expect("write");
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let pinned = pin(RunnerCommand {
            program: program.clone(),
            args: &[],
            arg0: None,
        });
        assert_eq!(pinned.arg0.as_deref(), Some(program.as_path()));
        // Replaced by rename, as an upgrade does.
        let new = dir.path().join("runner.new");
        std::fs::write(&new, "#!/bin/sh\necho new\n").expect("write");
        std::fs::rename(&new, &program).expect("rename");
        // A script through /proc/self/fd needs the fd open in the child
        // after exec (the interpreter opens it), so read it instead: the
        // pinned descriptor still holds the old file.
        let text = std::fs::read_to_string(&pinned.program).expect("read pinned");
        assert!(text.contains("old"), "{text}");
    }
}
