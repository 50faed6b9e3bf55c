//! Slots as systemd units: transient slices and scopes over D-Bus.
//!
//! This is the only module that speaks D-Bus, and every systemd string
//! (interface, property, error and job-result names, unit-name escaping)
//! lives here. Callers get typed values: [`Limits`] in, [`UnitStats`],
//! [`UnitResult`], [`ActiveState`] and [`PlacementError`] out.
//!
//! # Names
//!
//! Each service gets a slice `slotman-SERVICE.slice`; systemd derives a
//! slice's parent from the dashes in its name, so that slice sits under
//! `slotman.slice` without being told. Each slot is a scope
//! `slotman-SERVICE-WORKER-SLOT.scope` in that slice. SERVICE and WORKER are
//! escaped so that they contain no `-` (see [`escape_name_component`]), so the
//! dashes in a name are always separators and a glob such as
//! `slotman-billing-*` never matches another service's units. Slot numbers
//! are unique within one run of a manager, and a manager stops the scopes an
//! earlier run left behind before it places slots (`placement::Placement`),
//! so names do not collide.
//!
//! # Waiting for jobs
//!
//! StartTransientUnit and StopUnit only enqueue a job; the outcome arrives as
//! a `JobRemoved` signal, which can overtake the method's reply. So every job
//! is awaited by subscribing to the signal before the call is made (see
//! `Systemd::run_job`).
//!
//! # Legacy and hybrid cgroup hierarchies
//!
//! systemd reads the kernel's OOM-kill counter and the CPU usage from the
//! unified (v2) hierarchy only. On a host whose memory or cpuacct controller
//! is still on cgroup v1 (a "hybrid" host), an OOM-killed scope ends with
//! Result `success` and `CPUUsageNSec` is unset. [`Systemd::unit_stats`] and
//! [`Systemd::unit_result`] fill both gaps from the unit's cgroup directly
//! (see the `cgroupfs` submodule); on a unified host the same code reads the same numbers
//! systemd itself would.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, Value};
use zbus::DBusError;

use super::unit_name::UnitKind;
/// How long any job may take before we stop waiting for its `JobRemoved`.
/// Starting a scope takes milliseconds and stopping one is bounded by its
/// `TimeoutStopUSec` (`SCOPE_STOP_TIMEOUT`); this only guards against a
/// signal that never comes.
pub use super::unit_name::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// How long systemd lets a scope's processes react to SIGTERM before it sends
/// SIGKILL, when systemd itself stops the scope. A scope is only stopped that
/// way after the manager has drained it (or failed to), so what is left is a
/// straggler: a short grace period is enough.
const SCOPE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages queued per D-Bus match before zbus drops the oldest. Every
/// concurrent job waiter sees every `JobRemoved`, so the default (64) could
/// overflow while many slots start at once.
const BUS_QUEUE: usize = 1024;

// ---------------------------------------------------------------------------
// D-Bus interfaces (org.freedesktop.systemd1(5)). Only the members slotman
// uses. Property caching is switched off on every proxy built here: each read
// is a fresh `Get`, and no `PropertiesChanged` matches are installed.
// ---------------------------------------------------------------------------

/// One row of `ListUnitsByPatterns`: name, description, load state, active
/// state, sub state, following, unit path, job id, job type, job path.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// A property assignment as StartTransientUnit and SetUnitProperties take it.
type Property = (&'static str, Value<'static>);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[Property],
        aux: &[(&str, &[Property])],
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[Property],
    ) -> zbus::Result<()>;

    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;

    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property(emits_changed_signal = "false"))]
    fn active_state(&self) -> zbus::Result<String>;
}

// Scope, Slice and Service each carry their own copy of the cgroup
// properties, so each gets a proxy.

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Scope",
    default_service = "org.freedesktop.systemd1"
)]
trait Scope {
    #[zbus(property(emits_changed_signal = "false"))]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn control_group(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_current(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"), name = "CPUUsageNSec")]
    fn cpu_usage_nsec(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn tasks_current(&self) -> zbus::Result<u64>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Slice",
    default_service = "org.freedesktop.systemd1"
)]
trait Slice {
    #[zbus(property(emits_changed_signal = "false"))]
    fn control_group(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_current(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"), name = "CPUUsageNSec")]
    fn cpu_usage_nsec(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn tasks_current(&self) -> zbus::Result<u64>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property(emits_changed_signal = "false"))]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn control_group(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_current(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"), name = "CPUUsageNSec")]
    fn cpu_usage_nsec(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn tasks_current(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"), name = "TimeoutStopUSec")]
    fn timeout_stop_usec(&self) -> zbus::Result<u64>;
}

// ---------------------------------------------------------------------------
// Typed values
// ---------------------------------------------------------------------------

/// Resource limits of a slice or scope (systemd.resource-control(5)).
/// `None` means "no limit" (and, when updating a slice, removes one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `MemoryMax=` in bytes: the kernel OOM-kills inside the unit above it.
    pub memory_max: Option<u64>,
    /// `MemoryHigh=` in bytes: reclaim pressure above it. Ignored by the
    /// kernel where the memory controller is on cgroup v1.
    pub memory_high: Option<u64>,
    /// `CPUQuota=` in percent of one CPU (200 = two CPUs); must be > 0.
    pub cpu_quota_percent: Option<u32>,
    /// `CPUWeight=`, 1..=10000 (default 100).
    pub cpu_weight: Option<u64>,
    /// `TasksMax=`: processes plus threads.
    pub tasks_max: Option<u64>,
}

impl Limits {
    /// The limits as systemd properties. With `reset_unset`, an unset limit
    /// is sent as "infinity"/"default" so that an update removes a limit
    /// that an older configuration had set.
    fn properties(&self, reset_unset: bool) -> Vec<Property> {
        // u64::MAX is "infinity" for the byte and task limits and for the
        // quota, and "unset, use the default" for CPUWeight.
        let pick = |v: Option<u64>| v.or(reset_unset.then_some(u64::MAX));
        let quota = self
            .cpu_quota_percent
            // 100% is one second of CPU time per second.
            .map(|pct| u64::from(pct) * 10_000);
        let mut props = Vec::new();
        for (name, value) in [
            ("MemoryMax", pick(self.memory_max)),
            ("MemoryHigh", pick(self.memory_high)),
            ("CPUQuotaPerSecUSec", pick(quota)),
            ("CPUWeight", pick(self.cpu_weight)),
            ("TasksMax", pick(self.tasks_max)),
        ] {
            if let Some(v) = value {
                props.push((name, Value::U64(v)));
            }
        }
        props
    }
}

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
    fn parse(s: &str) -> ActiveState {
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
    fn parse(s: &str) -> UnitResult {
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
fn job_outcome(result: &str) -> Result<(), JobResult> {
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

const ERR_UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
const ERR_NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
const ERR_NO_SUCH_PROCESS: &str = "org.freedesktop.systemd1.NoSuchProcess";
/// What systemd 252 answers to StartTransientUnit with a PID that is gone.
const ERR_PID_UNKNOWN: &str = "org.freedesktop.DBus.Error.UnixProcessIdUnknown";
const ERR_UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";

/// The D-Bus error name and message of a failed call, if systemd answered
/// with an error (as opposed to the bus failing).
fn error_reply(err: &zbus::Error) -> Option<(String, String)> {
    match err {
        zbus::Error::MethodError(name, message, _) => {
            Some((name.to_string(), message.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(e) => Some((
            e.name().to_string(),
            e.description().unwrap_or_default().to_owned(),
        )),
        _ => None,
    }
}

/// Maps a failed call about `unit` to a [`PlacementError`].
fn call_error(unit: &str, err: zbus::Error) -> PlacementError {
    match error_reply(&err) {
        None => PlacementError::Bus(err),
        Some((name, message)) => match name.as_str() {
            ERR_UNIT_EXISTS => PlacementError::UnitExists(unit.to_owned()),
            // UnknownObject: the unit was unloaded between GetUnit and a
            // property read.
            ERR_NO_SUCH_UNIT | ERR_UNKNOWN_OBJECT => PlacementError::NoSuchUnit(unit.to_owned()),
            _ => PlacementError::Refused {
                unit: unit.to_owned(),
                name,
                message,
            },
        },
    }
}

/// `u64::MAX` is how systemd says "[not set]".
fn set(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

// ---------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------

/// A connection to systemd on the system bus. Cheap to clone: clones share
/// one connection.
#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl fmt::Debug for Systemd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Systemd").finish_non_exhaustive()
    }
}

impl Systemd {
    /// Connects to the system bus and subscribes to systemd's signals.
    pub async fn connect() -> Result<Systemd, PlacementError> {
        let conn = zbus::connection::Builder::system()
            .map_err(PlacementError::Bus)?
            .max_queued(BUS_QUEUE)
            .build()
            .await
            .map_err(PlacementError::Bus)?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(PlacementError::Bus)?;
        // systemd sends JobRemoved to the client that queued the job anyway;
        // Subscribe makes sure of it on every version, and costs one call.
        manager
            .subscribe()
            .await
            .map_err(|e| call_error("(Subscribe)", e))?;
        Ok(Systemd { conn, manager })
    }

    /// Makes sure the slice of `service` exists, with `limits`, and returns
    /// its name. A new slice is started as a transient unit; an existing one
    /// (from an earlier run, or a unit file) gets `limits` as runtime
    /// properties, limits that are `None` being removed.
    pub async fn ensure_slice(
        &self,
        service: &str,
        limits: &Limits,
    ) -> Result<String, PlacementError> {
        let slice = slice_name(service);
        let mut props: Vec<Property> = vec![
            (
                "Description",
                Value::from(format!("slotman slots of {service}")),
            ),
            ("MemoryAccounting", Value::Bool(true)),
            ("CPUAccounting", Value::Bool(true)),
            ("TasksAccounting", Value::Bool(true)),
        ];
        props.extend(limits.properties(false));
        let started = self
            .run_job(&slice, || {
                self.manager
                    .start_transient_unit(&slice, "fail", &props, &[])
            })
            .await;
        match started {
            Err(PlacementError::UnitExists(_)) => {
                self.set_limits(&slice, limits).await?;
                Ok(slice)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(slice),
        }
    }

    /// Sets `limits` on the running `unit` at runtime (a reload), removing
    /// the limits that are `None`: the processes keep running.
    pub async fn set_limits(&self, unit: &str, limits: &Limits) -> Result<(), PlacementError> {
        let props = limits.properties(true);
        self.manager
            .set_unit_properties(unit, true, &props)
            .await
            .map_err(|e| call_error(unit, e))
    }

    /// Creates scope `unit` in `slice` around the running process `pid` and
    /// waits until it has started.
    ///
    /// With `part_of` (the manager's own unit, see [`Systemd::own_unit`]),
    /// stopping that unit also stops the scope, but only after the manager
    /// itself has stopped (`Before=`), so the manager drains its slots first
    /// and systemd only sweeps up what is left. Restarting the manager leaves
    /// the scope alone (as observed with systemd 252: the restart is not
    /// propagated to scopes), so a new manager must adopt or stop the old
    /// slots; [`scope_pattern`] and [`parse_scope_name`] find them.
    ///
    /// The scope has `OOMPolicy=continue`: when the kernel OOM-kills a
    /// handler, the slot runner in the same scope survives to fail the job
    /// (DESIGN.md: such a job is failed, not retried) and start a new
    /// handler. It is garbage-collected as soon as it is inactive or failed,
    /// so read [`Systemd::unit_result`] while it still runs.
    ///
    /// Errors: [`PlacementError::UnitExists`] if the name is taken,
    /// [`PlacementError::ProcessGone`] if `pid` no longer exists.
    pub async fn start_scope(
        &self,
        unit: &str,
        slice: &str,
        pid: u32,
        limits: &Limits,
        part_of: Option<&str>,
        description: &str,
    ) -> Result<(), PlacementError> {
        let mut props: Vec<Property> = vec![
            ("PIDs", Value::from(vec![pid])),
            ("Slice", Value::from(slice.to_owned())),
            ("Description", Value::from(description.to_owned())),
            ("MemoryAccounting", Value::Bool(true)),
            ("CPUAccounting", Value::Bool(true)),
            ("TasksAccounting", Value::Bool(true)),
            ("OOMPolicy", Value::from("continue")),
            // Unload the scope as soon as it ends, failed or not: a kept
            // failed scope would hold its name (reused by the next run's
            // slot with that number), and scopes are not restartable anyway.
            ("CollectMode", Value::from("inactive-or-failed")),
            ("SendSIGKILL", Value::Bool(true)),
            (
                "TimeoutStopUSec",
                Value::U64(SCOPE_STOP_TIMEOUT.as_micros() as u64),
            ),
        ];
        if let Some(owner) = part_of {
            props.push(("PartOf", Value::from(vec![owner.to_owned()])));
            // Ordering is reversed on stop: Before= the manager means the
            // scope is stopped after the manager has finished stopping.
            props.push(("Before", Value::from(vec![owner.to_owned()])));
        }
        props.extend(limits.properties(false));

        let result = self
            .run_job(unit, || {
                self.manager.start_transient_unit(unit, "fail", &props, &[])
            })
            .await;
        match result {
            Err(PlacementError::Refused { name, .. })
                if name == ERR_PID_UNKNOWN || name == ERR_NO_SUCH_PROCESS =>
            {
                Err(PlacementError::ProcessGone(pid))
            }
            // The process can also vanish after systemd accepted the PID but
            // before it moved it into the scope's cgroup.
            Err(PlacementError::JobFailed { .. }) if !process_exists(pid) => {
                Err(PlacementError::ProcessGone(pid))
            }
            other => other,
        }
    }

    /// Stops `unit` (SIGTERM, then SIGKILL after its stop timeout) and waits
    /// until it is stopped. A unit that is not loaded counts as stopped.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), PlacementError> {
        match self
            .run_job(unit, || self.manager.stop_unit(unit, "replace"))
            .await
        {
            Err(PlacementError::NoSuchUnit(_)) => Ok(()),
            other => other,
        }
    }

    /// Sends `signal` to every process of `unit`. A unit that is not loaded
    /// has no processes, so that is not an error.
    pub async fn kill_unit(&self, unit: &str, signal: i32) -> Result<(), PlacementError> {
        match self
            .manager
            .kill_unit(unit, "all", signal)
            .await
            .map_err(|e| call_error(unit, e))
        {
            Err(PlacementError::NoSuchUnit(_)) => Ok(()),
            Err(PlacementError::Refused { name, .. }) if name == ERR_NO_SUCH_PROCESS => Ok(()),
            other => other,
        }
    }

    /// The loaded units whose names match any of the glob `patterns` (see
    /// [`scope_pattern`]).
    pub async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, PlacementError> {
        let rows = self
            .manager
            .list_units_by_patterns(&[], patterns)
            .await
            .map_err(|e| call_error(&patterns.join(" "), e))?;
        Ok(rows
            .into_iter()
            .map(|row| UnitInfo {
                name: row.0,
                active_state: ActiveState::parse(&row.3),
                sub_state: row.4,
            })
            .collect())
    }

    /// The unit's `ActiveState`, or `None` if it is not loaded.
    pub async fn active_state(&self, unit: &str) -> Result<Option<ActiveState>, PlacementError> {
        let Some(path) = self.unit_path(unit).await? else {
            return Ok(None);
        };
        let proxy = UnitProxy::builder(&self.conn)
            .path(path)
            .map_err(PlacementError::Bus)?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(PlacementError::Bus)?;
        let state = proxy
            .active_state()
            .await
            .map_err(|e| call_error(unit, e))?;
        Ok(Some(ActiveState::parse(&state)))
    }

    /// Memory, CPU, task and OOM-kill counts of a scope, slice or service.
    pub async fn unit_stats(&self, unit: &str) -> Result<UnitStats, PlacementError> {
        let path = self
            .unit_path(unit)
            .await?
            .ok_or_else(|| PlacementError::NoSuchUnit(unit.to_owned()))?;
        let props = self.cgroup_props(unit, path).await?;
        Ok(UnitStats {
            memory_current: set(props.memory_current),
            cpu_usage_nsec: set(props.cpu_usage_nsec)
                .or_else(|| cgroupfs::cpu_usage_nsec(&props.control_group)),
            tasks_current: set(props.tasks_current),
            oom_kills: cgroupfs::oom_kills(&props.control_group),
        })
    }

    /// Why the unit ended, or what already went wrong while it runs; `None`
    /// if the unit is no longer loaded (scopes are collected as soon as they
    /// end). Reports [`UnitResult::OomKill`] whenever the kernel has
    /// OOM-killed a process in the unit's cgroup, also where systemd itself
    /// does not notice (cgroup v1 memory controller, or `OOMPolicy=continue`).
    pub async fn unit_result(&self, unit: &str) -> Result<Option<UnitResult>, PlacementError> {
        let Some(path) = self.unit_path(unit).await? else {
            return Ok(None);
        };
        let props = match self.cgroup_props(unit, path).await {
            Err(PlacementError::NoSuchUnit(_)) => return Ok(None),
            other => other?,
        };
        let result = props
            .result
            .as_deref()
            .map_or(UnitResult::Success, UnitResult::parse);
        if result == UnitResult::Success
            && cgroupfs::oom_kills(&props.control_group).unwrap_or(0) > 0
        {
            return Ok(Some(UnitResult::OomKill));
        }
        Ok(Some(result))
    }

    /// The unit this process runs in (e.g. `slotman@demo.service`), from
    /// `/proc/self/cgroup`; `None` outside any service or scope.
    pub fn own_unit() -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        unit_from_proc_cgroup(&text)
    }

    /// The object path of a loaded unit, `None` if it is not loaded.
    async fn unit_path(&self, unit: &str) -> Result<Option<OwnedObjectPath>, PlacementError> {
        match self
            .manager
            .get_unit(unit)
            .await
            .map_err(|e| call_error(unit, e))
        {
            Ok(path) => Ok(Some(path)),
            Err(PlacementError::NoSuchUnit(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How long systemd waits for service `unit` to stop before it kills
    /// it (`TimeoutStopSec=`); `None` for infinity or a unit not loaded.
    pub async fn service_stop_timeout(
        &self,
        unit: &str,
    ) -> Result<Option<Duration>, PlacementError> {
        let Some(path) = self.unit_path(unit).await? else {
            return Ok(None);
        };
        let service = ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(PlacementError::Bus)?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(PlacementError::Bus)?;
        let usec = service
            .timeout_stop_usec()
            .await
            .map_err(|e| call_error(unit, e))?;
        Ok((usec != u64::MAX).then(|| Duration::from_micros(usec)))
    }

    /// Reads the cgroup properties of the unit at `path` through the
    /// interface of its type.
    async fn cgroup_props(
        &self,
        unit: &str,
        path: OwnedObjectPath,
    ) -> Result<CgroupProps, PlacementError> {
        let conn = &self.conn;
        let err = |e| call_error(unit, e);
        // Each interface has its own proxy type, so the same reads are
        // spelled out once per type.
        macro_rules! read {
            ($proxy:ident, |$p:ident| $result:expr) => {{
                let $p = $proxy::builder(conn)
                    .path(path)
                    .map_err(PlacementError::Bus)?
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await
                    .map_err(PlacementError::Bus)?;
                CgroupProps {
                    result: $result,
                    control_group: $p.control_group().await.map_err(err)?,
                    memory_current: $p.memory_current().await.map_err(err)?,
                    cpu_usage_nsec: $p.cpu_usage_nsec().await.map_err(err)?,
                    tasks_current: $p.tasks_current().await.map_err(err)?,
                }
            }};
        }
        let kind =
            UnitKind::of(unit).ok_or_else(|| PlacementError::UnsupportedUnit(unit.to_owned()))?;
        Ok(match kind {
            UnitKind::Scope => read!(ScopeProxy, |p| Some(p.result().await.map_err(err)?)),
            UnitKind::Service => read!(ServiceProxy, |p| Some(p.result().await.map_err(err)?)),
            // A slice has no result of its own.
            UnitKind::Slice => read!(SliceProxy, |p| None),
        })
    }

    /// Runs one systemd job to its end: subscribes to `JobRemoved` first (the
    /// signal may arrive before the reply to `call`), makes the call, then
    /// waits for the signal naming the returned job.
    async fn run_job<F, Fut>(&self, unit: &str, call: F) -> Result<(), PlacementError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(PlacementError::Bus)?;
        let job = call().await.map_err(|e| call_error(unit, e))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if *args.job() == *job {
                    return Ok(args.result().to_string());
                }
            }
            // The stream only ends when the connection does.
            Err(PlacementError::Bus(zbus::Error::InputOutput(
                std::sync::Arc::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "system bus connection closed",
                )),
            )))
        };
        let result = tokio::time::timeout(JOB_TIMEOUT, wait)
            .await
            .map_err(|_| PlacementError::JobTimeout {
                unit: unit.to_owned(),
                after: JOB_TIMEOUT,
            })??;
        job_outcome(&result).map_err(|result| PlacementError::JobFailed {
            unit: unit.to_owned(),
            result,
        })
    }
}

/// The properties [`Systemd::cgroup_props`] reads, raw.
struct CgroupProps {
    result: Option<String>,
    control_group: String,
    memory_current: u64,
    cpu_usage_nsec: u64,
    tasks_current: u64,
}

/// True while `pid` names a process that has not been reaped (zombies
/// count: systemd accepts them, and their scope ends once they are reaped).
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The innermost service or scope named in the text of a `/proc/PID/cgroup`
/// file. The unified (`0::`) line wins; on a legacy host the `name=systemd`
/// line says the same.
fn unit_from_proc_cgroup(text: &str) -> Option<String> {
    let path_of = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix));
    let candidates = [
        path_of("0::"),
        path_of("1:name=systemd:"),
        text.lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p)),
    ];
    candidates.into_iter().flatten().find_map(|path| {
        path.rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(str::to_owned)
    })
}

mod cgroupfs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_by_hand() {
        assert_eq!(escape_unit_component("billing"), "billing");
        assert_eq!(escape_unit_component("a-b"), "a\\x2db");
        assert_eq!(escape_unit_component("a/b"), "a-b");
        assert_eq!(escape_unit_component(".x.y"), "\\x2ex.y");
        assert_eq!(escape_unit_component("ü"), "\\xc3\\xbc");
        assert_eq!(escape_name_component("a/b-c"), "a\\x2fb\\x2dc");
    }

    #[test]
    fn names() {
        assert_eq!(slice_name("billing"), "slotman-billing.slice");
        assert_eq!(slice_name("my-svc"), "slotman-my\\x2dsvc.slice");
        assert_eq!(
            scope_name("billing", "TestWorker", 3),
            "slotman-billing-TestWorker-3.scope"
        );
        assert_eq!(scope_pattern("my-svc"), "slotman-my\\x2dsvc-*.scope");
    }

    #[test]
    fn scope_names_round_trip() {
        for (service, worker) in [
            ("billing", "TestWorker"),
            ("a-b", "c/d"),
            ("ü.x", ".hidden"),
            ("", "w"),
        ] {
            let name = scope_name(service, worker, 7);
            let id = parse_scope_name(&name).expect(&name);
            assert_eq!(
                id,
                ScopeId {
                    service: service.into(),
                    worker: worker.into(),
                    slot: 7,
                }
            );
        }
        for bad in [
            "slotman-a-1.scope",
            "slotman-a-b-1-2.scope",
            "slotman-a-b-01.scope",
            "slotman-a-b-x.scope",
            "slotman-a-b-.scope",
            "slotman-a\\x2-b-1.scope",
            "slotman-a\\xzz-b-1.scope",
            "slotman-a-b-1.service",
            "other-a-b-1.scope",
        ] {
            assert_eq!(parse_scope_name(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_names_round_trip(service in "\\PC{0,12}", worker in "\\PC{0,12}", slot: u32) {
            let name = scope_name(&service, &worker, slot);
            let id = parse_scope_name(&name);
            proptest::prop_assert_eq!(id, Some(ScopeId { service, worker, slot }));
        }
    }

    #[test]
    fn limits_as_properties() {
        let limits = Limits {
            memory_max: Some(1 << 20),
            cpu_quota_percent: Some(50),
            ..Limits::default()
        };
        let names = |p: &[Property]| {
            p.iter()
                .map(|(n, v)| match v {
                    Value::U64(x) => format!("{n}={x}"),
                    other => format!("{n}={other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&limits.properties(false)),
            ["MemoryMax=1048576", "CPUQuotaPerSecUSec=500000"]
        );
        let reset = names(&limits.properties(true));
        assert_eq!(reset.len(), 5);
        assert!(reset.contains(&format!("TasksMax={}", u64::MAX)));
    }

    #[test]
    fn own_unit_from_cgroup_text() {
        let v2 = "0::/system.slice/slotman@demo.service\n";
        assert_eq!(
            unit_from_proc_cgroup(v2).as_deref(),
            Some("slotman@demo.service")
        );
        let hybrid = "9:name=systemd:/slotman.slice/slotman-t.slice/slotman-t-w-1-9.scope\n4:memory:/x\n0::/slotman.slice/slotman-t.slice/slotman-t-w-1-9.scope\n";
        assert_eq!(
            unit_from_proc_cgroup(hybrid).as_deref(),
            Some("slotman-t-w-1-9.scope")
        );
        let legacy =
            "12:pids:/system.slice/a.service\n1:name=systemd:/system.slice/a.service/sub\n";
        assert_eq!(unit_from_proc_cgroup(legacy).as_deref(), Some("a.service"));
        assert_eq!(unit_from_proc_cgroup("0::/\n"), None);
        assert_eq!(unit_from_proc_cgroup("0::/..\n"), None);
    }

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
