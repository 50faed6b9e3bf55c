//! Reads what systemd 252 reads only on the unified hierarchy straight from
//! a unit's cgroup (the `ControlGroup` property, relative to the cgroup
//! mount), in every place a v2 or v1 hierarchy may be mounted.

use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

fn read(hierarchy: &str, cgroup: &str, file: &str) -> Option<String> {
    if cgroup.is_empty() {
        return None;
    }
    let mut path = PathBuf::from(ROOT);
    if !hierarchy.is_empty() {
        path.push(hierarchy);
    }
    path.push(cgroup.trim_start_matches('/'));
    path.push(file);
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat-keyed cgroup file ("key value" lines).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU time used, from `cpu.stat` of the unified hierarchy, which the
/// kernel keeps for every cgroup even without the cpu controller; on a
/// hybrid host that hierarchy is mounted at `unified`.
pub(super) fn cpu_usage_nsec(cgroup: &str) -> Option<u64> {
    ["", "unified"]
        .iter()
        .find_map(|h| keyed(&read(h, cgroup, "cpu.stat")?, "usage_usec"))
        .map(|usec| usec.saturating_mul(1000))
}

/// The kernel's OOM-kill counter: `memory.events` on cgroup v2,
/// `memory.oom_control` on a v1 memory controller.
pub(super) fn oom_kills(cgroup: &str) -> Option<u64> {
    read("", cgroup, "memory.events")
        .and_then(|t| keyed(&t, "oom_kill"))
        .or_else(|| keyed(&read("memory", cgroup, "memory.oom_control")?, "oom_kill"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keyed_values() {
        let text = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(super::keyed(text, "usage_usec"), Some(1234));
        assert_eq!(super::keyed(text, "user"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(super::keyed(oom, "oom_kill"), Some(3));
    }
}
