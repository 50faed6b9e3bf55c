//! The D-Bus side of systemd (org.freedesktop.systemd1(5)): the proxies of
//! the members slotman uses, the cgroup properties of a unit read through the
//! interface of its type, and systemd's error replies mapped to
//! [`PlacementError`]. Property caching is switched off on every proxy of
//! these (here and in the client): each read is a fresh `Get`, and no
//! `PropertiesChanged` matches are installed.

use zbus::proxy::CacheProperties;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, Value};
use zbus::DBusError;

use super::PlacementError;
use crate::placement::unit_name::UnitKind;

/// systemd's name on the bus.
const SYSTEMD: &str = "org.freedesktop.systemd1";

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
pub(super) type Property = (&'static str, Value<'static>);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub(super) trait Manager {
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
pub(super) trait Unit {
    #[zbus(property(emits_changed_signal = "false"))]
    fn active_state(&self) -> zbus::Result<String>;
}

pub(super) const ERR_UNIT_EXISTS: &str = "org.freedesktop.systemd1.UnitExists";
pub(super) const ERR_NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
pub(super) const ERR_NO_SUCH_PROCESS: &str = "org.freedesktop.systemd1.NoSuchProcess";
/// What systemd 252 answers to StartTransientUnit with a PID that is gone.
pub(super) const ERR_PID_UNKNOWN: &str = "org.freedesktop.DBus.Error.UnixProcessIdUnknown";
pub(super) const ERR_UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";

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
pub(super) fn call_error(unit: &str, err: zbus::Error) -> PlacementError {
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
pub(super) fn set(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

/// The interface of a unit's own type. Scope, Slice and Service each carry
/// their own copy of the cgroup properties, under the same names, so one
/// proxy built on the right interface reads any of them.
fn type_interface(kind: UnitKind) -> &'static str {
    match kind {
        UnitKind::Scope => "org.freedesktop.systemd1.Scope",
        UnitKind::Slice => "org.freedesktop.systemd1.Slice",
        UnitKind::Service => "org.freedesktop.systemd1.Service",
    }
}

/// A proxy on the interface of the type of the unit at `path`.
pub(super) async fn type_proxy(
    conn: &zbus::Connection,
    path: OwnedObjectPath,
    kind: UnitKind,
) -> Result<zbus::Proxy<'static>, PlacementError> {
    zbus::proxy::Builder::<zbus::Proxy<'static>>::new(conn)
        .destination(SYSTEMD)
        .map_err(PlacementError::Bus)?
        .path(path)
        .map_err(PlacementError::Bus)?
        .interface(type_interface(kind))
        .map_err(PlacementError::Bus)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(PlacementError::Bus)
}

/// The cgroup properties of a unit, raw (`u64::MAX` where systemd has no
/// number).
pub(super) struct CgroupProps {
    pub result: Option<String>,
    pub control_group: String,
    pub memory_current: u64,
    pub cpu_usage_nsec: u64,
    pub tasks_current: u64,
}

impl CgroupProps {
    /// Reads them from the unit at `path` through the interface of its type,
    /// one `Get` each.
    pub(super) async fn read(
        conn: &zbus::Connection,
        unit: &str,
        path: OwnedObjectPath,
    ) -> Result<CgroupProps, PlacementError> {
        let kind =
            UnitKind::of(unit).ok_or_else(|| PlacementError::UnsupportedUnit(unit.to_owned()))?;
        let p = type_proxy(conn, path, kind).await?;
        let err = |e| call_error(unit, e);
        let result = match kind {
            // A slice has no result of its own.
            UnitKind::Slice => None,
            UnitKind::Scope | UnitKind::Service => {
                Some(p.get_property("Result").await.map_err(err)?)
            }
        };
        Ok(CgroupProps {
            result,
            control_group: p.get_property("ControlGroup").await.map_err(err)?,
            memory_current: p.get_property("MemoryCurrent").await.map_err(err)?,
            cpu_usage_nsec: p.get_property("CPUUsageNSec").await.map_err(err)?,
            tasks_current: p.get_property("TasksCurrent").await.map_err(err)?,
        })
    }
}
