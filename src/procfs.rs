//! `/proc/PID/stat`, read in one place: process tree and usage for
//! `slotman status`, identities for cleanup after a killed runner, parents
//! for CPU pinning.

/// The fields of `/proc/PID/stat` that slotman uses (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie: dead, not yet reaped), ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
    pub session: i32,
    /// CPU time in clock ticks (`sysconf(_SC_CLK_TCK)`).
    pub utime: u64,
    pub stime: u64,
    pub threads: u64,
    /// Field 22: when the process started, in clock ticks since boot. With
    /// the pid, it names one process for good: a pid is reused, the pair is
    /// not (a reuse within one tick would need the whole pid space to wrap).
    pub start_time: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl Stat {
    /// Dead (a zombie) or alive.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Parses one `/proc/PID/stat` line: `PID (COMM) STATE PPID PGRP SESSION
/// ...`. COMM may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Indexes after "PID (COMM)": field N of proc(5) is f[N - 3].
    let state = f.first()?.chars().next()?;
    Some(Stat {
        state,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        threads: f.get(17)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
        rss_pages: f.get(21)?.parse().ok()?,
    })
}

/// `/proc/PID/stat` of `pid`; `None` if there is no such process (or no /proc).
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every pid in /proc now (processes come and go while it is read).
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_last_parenthesis() {
        let line = "123 (a b) c)) S 45 120 110 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 2 0 9876 1000 250 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 45,
                pgrp: 120,
                session: 110,
                utime: 7,
                stime: 3,
                threads: 2,
                start_time: 9876,
                rss_pages: 250,
            }
        );
    }

    #[test]
    fn short_or_garbled_lines_are_none() {
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (x)"), None);
        assert_eq!(parse_stat("12 (x) Z 1 12"), None);
        assert_eq!(parse_stat("12 (x) S 1 12 12 0 -1 4 x"), None);
    }

    #[test]
    fn our_own_stat_is_read() {
        let me = stat(std::process::id()).expect("our stat");
        assert!(!me.is_zombie());
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.start_time > 0);
        assert!(pids().contains(&std::process::id()));
    }
}
