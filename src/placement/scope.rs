//! Everything slotman says to systemd over D-Bus: transient scopes for
//! slots, the per-service slice, stopping and listing units, and reading a
//! unit's cgroup accounting. The only module that knows D-Bus names and
//! property spellings; callers get typed values.
//!
//! References: org.freedesktop.systemd1(5) (StartTransientUnit, JobRemoved,
//! ListUnitsByPatterns), systemd.scope(5), systemd.resource-control(5).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};

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
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
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
        )>,
    >;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Scope",
    default_service = "org.freedesktop.systemd1"
)]
trait Scope {
    #[zbus(property(emits_changed_signal = "false"))]
    fn memory_current(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"), name = "CPUUsageNSec")]
    fn cpu_usage_nsec(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn tasks_current(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn result(&self) -> zbus::Result<String>;
}

/// Resource limits of a scope or slice (systemd.resource-control(5)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub cpu_quota_percent: Option<u32>,
    pub cpu_weight: Option<u64>,
    pub tasks_max: Option<u64>,
}

impl Limits {
    fn properties(&self) -> Vec<(&'static str, Value<'static>)> {
        let mut p: Vec<(&'static str, Value<'static>)> = vec![
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
        ];
        // "infinity" is u64::MAX on the bus: an unset limit is lifted, so a
        // reload that removes a limit really removes it.
        p.push((
            "MemoryMax",
            Value::from(self.memory_max.unwrap_or(u64::MAX)),
        ));
        p.push((
            "MemoryHigh",
            Value::from(self.memory_high.unwrap_or(u64::MAX)),
        ));
        p.push((
            "CPUQuotaPerSecUSec",
            Value::from(
                self.cpu_quota_percent
                    .map_or(u64::MAX, |pc| pc as u64 * 10_000),
            ),
        ));
        if let Some(w) = self.cpu_weight {
            p.push(("CPUWeight", Value::from(w)));
        }
        p.push(("TasksMax", Value::from(self.tasks_max.unwrap_or(u64::MAX))));
        p
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot reach systemd on the system bus ({0}); run under systemd as root, or use --placement child")]
    Bus(String),
    #[error("unit {0} already exists")]
    UnitExists(String),
    #[error("process {0} exited before its scope existed")]
    ProcessGone(u32),
    #[error("systemd job for {unit} ended with result {result:?}")]
    JobFailed { unit: String, result: String },
    #[error("systemd: {0}")]
    Call(String),
    #[error("no answer from systemd about {0} within {JOB_TIMEOUT:?}")]
    Timeout(String),
}

/// How a unit ended, from its `Result` property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitResult {
    Success,
    OomKill,
    Signal,
    Other(String),
}

/// A unit's accounting; `None` where systemd does not know ("[not set]").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitStats {
    pub memory_current: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub tasks_current: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    pub name: String,
    pub active_state: String,
    pub sub_state: String,
}

/// Longest wait for a systemd job (start/stop of a scope).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// JobRemoved signals kept for jobs nobody waits for (yet).
const EARLY_CAP: usize = 4096;

/// Routes JobRemoved signals to whoever waits for that job. A signal can
/// arrive before the method reply that names its job, so results that beat
/// their waiter are kept (bounded) until it asks.
#[derive(Default)]
struct Jobs {
    waiting: HashMap<String, oneshot::Sender<String>>,
    early: HashMap<String, String>,
}

/// A handle on systemd; cheap to clone.
#[derive(Clone)]
pub struct Systemd {
    manager: ManagerProxy<'static>,
    conn: zbus::Connection,
    jobs: Arc<Mutex<Jobs>>,
}

fn call_error(unit: &str, e: zbus::Error) -> PlacementError {
    if let zbus::Error::MethodError(name, desc, _) = &e {
        let desc = desc.clone().unwrap_or_default();
        match name.as_str() {
            "org.freedesktop.systemd1.UnitExists" => {
                return PlacementError::UnitExists(unit.to_string())
            }
            "org.freedesktop.DBus.Error.UnixProcessIdUnknown" => {
                return PlacementError::ProcessGone(0)
            }
            _ if desc.contains("No such process") || desc.contains("ESRCH") => {
                return PlacementError::ProcessGone(0)
            }
            _ => return PlacementError::Call(format!("{name}: {desc}")),
        }
    }
    PlacementError::Call(e.to_string())
}

impl Systemd {
    /// Connects to the system bus and subscribes to job signals.
    pub async fn connect() -> Result<Systemd, PlacementError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(|e| PlacementError::Bus(e.to_string()))?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|e| PlacementError::Bus(e.to_string()))?;
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| PlacementError::Bus(e.to_string()))?;
        manager
            .subscribe()
            .await
            .map_err(|e| PlacementError::Bus(e.to_string()))?;
        let jobs: Arc<Mutex<Jobs>> = Arc::default();
        let routed = jobs.clone();
        tokio::spawn(async move {
            while let Some(sig) = removed.next().await {
                let Ok(args) = sig.args() else { continue };
                let job = args.job.to_string();
                let result = args.result.clone();
                let Ok(mut jobs) = routed.lock() else { return };
                match jobs.waiting.remove(&job) {
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    None => {
                        if jobs.early.len() >= EARLY_CAP {
                            jobs.early.clear();
                        }
                        jobs.early.insert(job, result);
                    }
                }
            }
        });
        Ok(Systemd {
            manager,
            conn,
            jobs,
        })
    }

    /// Waits for the job at `path` to finish; returns systemd's result word.
    async fn wait_job(&self, unit: &str, path: &OwnedObjectPath) -> Result<String, PlacementError> {
        let rx = {
            let mut jobs = self
                .jobs
                .lock()
                .map_err(|_| PlacementError::Call("job table poisoned".into()))?;
            if let Some(r) = jobs.early.remove(path.as_str()) {
                return Ok(r);
            }
            let (tx, rx) = oneshot::channel();
            jobs.waiting.insert(path.to_string(), tx);
            rx
        };
        match tokio::time::timeout(JOB_TIMEOUT, rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => {
                if let Ok(mut jobs) = self.jobs.lock() {
                    jobs.waiting.remove(path.as_str());
                }
                Err(PlacementError::Timeout(unit.to_string()))
            }
        }
    }

    /// Creates `slotman-SERVICE.slice` with `limits` (or updates it).
    pub async fn ensure_slice(
        &self,
        service: &str,
        limits: &Limits,
    ) -> Result<String, PlacementError> {
        let name = slice_name(service);
        let mut props = limits.properties();
        props.push((
            "Description",
            Value::from(format!("slotman slots of {service}")),
        ));
        match self
            .manager
            .start_transient_unit(&name, "fail", &props, &[])
            .await
        {
            Ok(path) => {
                let r = self.wait_job(&name, &path).await?;
                if r != "done" {
                    return Err(PlacementError::JobFailed {
                        unit: name,
                        result: r,
                    });
                }
            }
            Err(e) => match call_error(&name, e) {
                PlacementError::UnitExists(_) => {
                    let props = limits.properties();
                    self.manager
                        .set_unit_properties(&name, true, &props)
                        .await
                        .map_err(|e| call_error(&name, e))?;
                }
                other => return Err(other),
            },
        }
        Ok(name)
    }

    /// Moves `pid` into a new transient scope `unit` in `slice` and waits
    /// until systemd has done it.
    pub async fn start_scope(
        &self,
        unit: &str,
        slice: &str,
        pid: u32,
        limits: &Limits,
        part_of: Option<&str>,
        description: &str,
    ) -> Result<(), PlacementError> {
        let mut props = limits.properties();
        props.push(("PIDs", Value::from(vec![pid])));
        props.push(("Slice", Value::from(slice.to_string())));
        props.push(("Description", Value::from(description.to_string())));
        props.push(("CollectMode", Value::from("inactive-or-failed")));
        // Only the process the kernel picked dies on OOM: the runner fails
        // that job and is replaced, instead of systemd stopping the scope.
        props.push(("OOMPolicy", Value::from("continue")));
        if let Some(owner) = part_of {
            // PartOf: stopping or restarting the manager stops its scopes.
            // Before: and only after the manager has stopped, i.e. after it
            // drained them (stop order is the reverse of start order).
            props.push(("PartOf", Value::from(vec![owner.to_string()])));
            props.push(("Before", Value::from(vec![owner.to_string()])));
        }
        let path = self
            .manager
            .start_transient_unit(unit, "fail", &props, &[])
            .await
            .map_err(|e| match call_error(unit, e) {
                PlacementError::ProcessGone(_) => PlacementError::ProcessGone(pid),
                other => other,
            })?;
        let result = self.wait_job(unit, &path).await?;
        if result != "done" {
            // A PID that died between fork and the call leaves an empty scope
            // that fails to start.
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(PlacementError::ProcessGone(pid));
            }
            return Err(PlacementError::JobFailed {
                unit: unit.to_string(),
                result,
            });
        }
        Ok(())
    }

    /// Stops a unit and waits; a unit that does not exist is already stopped.
    pub async fn stop_unit(&self, unit: &str) -> Result<(), PlacementError> {
        match self.manager.stop_unit(unit, "replace").await {
            Ok(path) => {
                self.wait_job(unit, &path).await?;
                Ok(())
            }
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            Err(e) => Err(call_error(unit, e)),
        }
    }

    pub async fn kill_unit(&self, unit: &str, signal: i32) -> Result<(), PlacementError> {
        self.manager
            .kill_unit(unit, "all", signal)
            .await
            .map_err(|e| call_error(unit, e))
    }

    /// Loaded units matching `patterns` (shell globs).
    pub async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitInfo>, PlacementError> {
        let units = self
            .manager
            .list_units_by_patterns(&[], patterns)
            .await
            .map_err(|e| call_error("ListUnitsByPatterns", e))?;
        Ok(units
            .into_iter()
            .map(|u| UnitInfo {
                name: u.0,
                active_state: u.3,
                sub_state: u.4,
            })
            .collect())
    }

    async fn scope_proxy(&self, unit: &str) -> Result<ScopeProxy<'static>, PlacementError> {
        let path = self
            .manager
            .get_unit(unit)
            .await
            .map_err(|e| call_error(unit, e))?;
        ScopeProxy::builder(&self.conn)
            .path(path)
            .map_err(|e| PlacementError::Call(e.to_string()))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| PlacementError::Call(e.to_string()))
    }

    /// The cgroup accounting of a scope.
    pub async fn unit_stats(&self, unit: &str) -> Result<UnitStats, PlacementError> {
        let p = self.scope_proxy(unit).await?;
        let known = |v: zbus::Result<u64>| v.ok().filter(|v| *v != u64::MAX);
        Ok(UnitStats {
            memory_current: known(p.memory_current().await),
            cpu_usage_nsec: known(p.cpu_usage_nsec().await),
            tasks_current: known(p.tasks_current().await),
        })
    }

    pub async fn unit_result(&self, unit: &str) -> Result<UnitResult, PlacementError> {
        let p = self.scope_proxy(unit).await?;
        let r = p.result().await.map_err(|e| call_error(unit, e))?;
        Ok(match r.as_str() {
            "success" => UnitResult::Success,
            "oom-kill" => UnitResult::OomKill,
            "signal" => UnitResult::Signal,
            _ => UnitResult::Other(r),
        })
    }

    /// The unit this process runs in (e.g. `slotman@demo.service`), from
    /// /proc/self/cgroup; `None` outside a service or scope.
    pub fn own_unit() -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        unit_from_cgroup(&text)
    }
}

/// The last `.service` or `.scope` component of our cgroup path, preferring
/// the unified hierarchy, then systemd's named one.
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let path_of = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    };
    for path in [path_of("0::"), path_of("1:name=systemd:")]
        .into_iter()
        .flatten()
        .chain(
            text.lines()
                .filter(|l| l.contains(":name=systemd:"))
                .filter_map(|l| l.rsplit(':').next().map(str::to_string)),
        )
    {
        if let Some(unit) = path
            .rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        {
            return Some(unit.to_string());
        }
    }
    None
}

/// Escapes a string for use inside a unit name as `systemd-escape` does:
/// `/` becomes `-`, and anything outside `[A-Za-z0-9:_.]` (and a leading
/// `.`) becomes `\xNN`.
pub fn escape_unit_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// `slotman-SERVICE.slice`: systemd's dash rule makes it a child of
/// `slotman.slice`. A dash inside SERVICE would add a level, so it is escaped.
pub fn slice_name(service: &str) -> String {
    format!("slotman-{}.slice", escape_unit_component(service))
}

/// `slotman-SERVICE-WORKER-SLOT.scope`. Slot ids are unique within a run
/// of the manager; leftovers of an earlier run are stopped at start.
pub fn scope_name(service: &str, worker: &str, slot: u32) -> String {
    format!(
        "slotman-{}-{}-{slot}.scope",
        escape_unit_component(service),
        escape_unit_component(worker)
    )
}

/// The pattern matching every slot scope of `service`.
pub fn scope_pattern(service: &str) -> String {
    format!("slotman-{}-*.scope", escape_unit_component(service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_systemd_escape() {
        let cases = [
            "billing",
            "a-b",
            "x y",
            "Test.Worker",
            ".hidden",
            "ü",
            "a/b",
            "50%",
            "ok_1:2",
        ];
        let have_tool = std::process::Command::new("systemd-escape")
            .arg("x")
            .output()
            .is_ok();
        for c in cases {
            let ours = escape_unit_component(c);
            if have_tool {
                let out = std::process::Command::new("systemd-escape")
                    .arg("--")
                    .arg(c)
                    .output()
                    .expect("systemd-escape");
                assert_eq!(
                    ours,
                    String::from_utf8_lossy(&out.stdout).trim_end(),
                    "escaping {c:?}"
                );
            }
        }
        assert_eq!(escape_unit_component("a-b"), "a\\x2db");
        assert_eq!(
            scope_name("billing", "resize", 3),
            "slotman-billing-resize-3.scope"
        );
        assert_eq!(slice_name("bill-ing"), "slotman-bill\\x2ding.slice");
    }

    #[test]
    fn own_unit_from_cgroup_text() {
        let hybrid = "9:name=systemd:/system.slice/slotman@demo.service\n4:memory:/system.slice/slotman@demo.service\n0::/system.slice/slotman@demo.service\n";
        assert_eq!(
            unit_from_cgroup(hybrid).as_deref(),
            Some("slotman@demo.service")
        );
        let scope = "0::/slotman.slice/slotman-demo.slice/slotman-demo-w-1.scope\n";
        assert_eq!(
            unit_from_cgroup(scope).as_deref(),
            Some("slotman-demo-w-1.scope")
        );
        assert_eq!(unit_from_cgroup("0::/\n"), None);
    }
}
