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
//!
//! # Files
//!
//! `dbus` holds the proxies and maps systemd's errors, `limits` turns
//! [`Limits`] into unit properties, `state` holds the typed unit and job
//! states and [`PlacementError`]; this file is the [`Systemd`] client that
//! uses them.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::unit_name::UnitKind;
pub use super::unit_name::*;
use dbus::{call_error, set, type_proxy, CgroupProps, ManagerProxy, Property, UnitProxy};
use dbus::{ERR_NO_SUCH_PROCESS, ERR_PID_UNKNOWN};
pub use limits::Limits;
pub use state::{ActiveState, JobResult, PlacementError, UnitInfo, UnitResult, UnitStats};

mod cgroupfs;
mod dbus;
mod limits;
mod state;

/// How long any job may take before we stop waiting for its `JobRemoved`.
/// Starting a scope takes milliseconds and stopping one is bounded by its
/// `TimeoutStopUSec` (`SCOPE_STOP_TIMEOUT`); this only guards against a
/// signal that never comes.
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
        let props = CgroupProps::read(&self.conn, unit, path).await?;
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
        let props = match CgroupProps::read(&self.conn, unit, path).await {
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
        let service = type_proxy(&self.conn, path, UnitKind::Service).await?;
        let usec: u64 = service
            .get_property("TimeoutStopUSec")
            .await
            .map_err(|e| call_error(unit, e))?;
        Ok((usec != u64::MAX).then(|| Duration::from_micros(usec)))
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
        state::job_outcome(&result).map_err(|result| PlacementError::JobFailed {
            unit: unit.to_owned(),
            result,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
