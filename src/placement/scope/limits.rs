//! [`Limits`], a worker's resource limits, as the unit properties of
//! systemd.resource-control(5).

use zbus::zvariant::Value;

use super::dbus::Property;

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
    pub(super) fn properties(&self, reset_unset: bool) -> Vec<Property> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
