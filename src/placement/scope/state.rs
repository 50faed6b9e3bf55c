//! What systemd says about units and jobs, typed: [`ActiveState`],
//! [`UnitResult`], [`JobResult`], [`UnitInfo`], [`UnitStats`], and
//! [`PlacementError`] for what can go wrong.

use std::fmt;
use std::time::Duration;

/// A unit's `ActiveState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    Active,
    Reloading,
    Inactive,
    Failed,
    Activating,
    Deactivating,
    /// A state this version of slotman does not know (systemd adds some).
    Other(String),
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Other(s) => s,
        })
    }
}

impl ActiveState {
    pub(super) fn parse(s: &str) -> ActiveState {
        match s {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            other => ActiveState::Other(other.to_owned()),
        }
    }
}

/// One unit as [`Systemd::list_units`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    pub name: String,
    pub active_state: ActiveState,
    /// The type-specific state (`running`, `abandoned`, `stop-sigterm`, …),
    /// for display only.
    pub sub_state: String,
}

/// Accounting of a unit. `None` where systemd (and the cgroup itself) has no
/// number, e.g. with accounting off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitStats {
    pub memory_current: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub tasks_current: Option<u64>,
    /// Processes the kernel OOM-killed in this unit's cgroup so far.
    pub oom_kills: Option<u64>,
}

/// Why a unit ended (its `Result` property), see systemd.scope(5) and
/// systemd.service(5). While a unit runs this is `Success` unless something
/// already went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitResult {
    Success,
    /// The kernel OOM killer killed a process of the unit.
    OomKill,
    Signal,
    CoreDump,
    ExitCode,
    Timeout,
    Watchdog,
    /// systemd could not set the unit up (e.g. every PID had gone).
    Resources,
    Other(String),
}

impl UnitResult {
    pub(super) fn parse(s: &str) -> UnitResult {
        match s {
            "success" => UnitResult::Success,
            "oom-kill" => UnitResult::OomKill,
            "signal" => UnitResult::Signal,
            "core-dump" => UnitResult::CoreDump,
            "exit-code" => UnitResult::ExitCode,
            "timeout" => UnitResult::Timeout,
            "watchdog" => UnitResult::Watchdog,
            "resources" => UnitResult::Resources,
            other => UnitResult::Other(other.to_owned()),
        }
    }
}

/// How a systemd job ended (`JobRemoved`'s result), when it was not `done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Canceled,
    Timeout,
    Failed,
    Dependency,
    Skipped,
    Other(String),
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobResult::Canceled => "canceled",
            JobResult::Timeout => "timeout",
            JobResult::Failed => "failed",
            JobResult::Dependency => "dependency",
            JobResult::Skipped => "skipped",
            JobResult::Other(s) => s,
        })
    }
}

/// `Ok` for `done`, the reason otherwise.
pub(super) fn job_outcome(result: &str) -> Result<(), JobResult> {
    Err(match result {
        "done" => return Ok(()),
        "canceled" => JobResult::Canceled,
        "timeout" => JobResult::Timeout,
        "failed" => JobResult::Failed,
        "dependency" => JobResult::Dependency,
        "skipped" => JobResult::Skipped,
        other => JobResult::Other(other.to_owned()),
    })
}

/// What can go wrong placing slots. Variants exist where a caller decides
/// differently; everything else is `Bus` (cannot talk) or `Refused` (systemd
/// said no).
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "cannot use the D-Bus system bus to reach systemd: {0}; slot scopes need a running \
         dbus (check `systemctl status dbus.socket dbus.service`, socket \
         /run/dbus/system_bus_socket) and slotman running as root"
    )]
    Bus(#[source] zbus::Error),
    #[error("unit {0} already exists (a slot of an earlier run still stopping?)")]
    UnitExists(String),
    #[error("unit {0} is not loaded")]
    NoSuchUnit(String),
    #[error("process {0} exited before systemd could put it into its scope")]
    ProcessGone(u32),
    #[error("systemd job for {unit} ended with result '{result}' (see `journalctl -u {unit}`)")]
    JobFailed { unit: String, result: JobResult },
    #[error("systemd job for {unit} did not finish within {after:?}")]
    JobTimeout { unit: String, after: Duration },
    #[error("systemd refused the request for {unit}: {message} ({name})")]
    Refused {
        unit: String,
        /// The D-Bus error name, e.g. `org.freedesktop.DBus.Error.AccessDenied`.
        name: String,
        message: String,
    },
    #[error("{0} is not a scope, slice or service unit")]
    UnsupportedUnit(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_results() {
        assert_eq!(job_outcome("done"), Ok(()));
        assert_eq!(job_outcome("canceled"), Err(JobResult::Canceled));
        assert_eq!(
            job_outcome("new-thing"),
            Err(JobResult::Other("new-thing".into()))
        );
    }
}
