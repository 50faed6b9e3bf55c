//! Starting a slot runner process (`slotman-slot`, or `slotman slot`) with
//! its end of the manager socketpair as fd 3, as the leader of a process
//! group of its own: a terminal's Ctrl-C reaches the manager only, which
//! then drains the slots in order, and [`kill_group`] reaches what is left.
//!
//! Only a runner of exec handlers outside systemd leads a session too:
//! each exec handler runs in a process group of its own (so a timeout kills
//! its whole tree), and the session is how they are found if the runner
//! dies first (see [`kill_session`]). Other runners stay out of new
//! sessions because on Linux each session is also a scheduler autogroup:
//! the kernel then shares CPU between slots as if each were a logged-in
//! user, against gearmand and everything else on the host (BENCHMARKS.md,
//! F22: ~12 % of stdio throughput at N = 4).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use super::RunnerCommand;
use crate::slot::report::CONTROL_FD_ENV;

/// The fd number a slot finds its control socket on.
const SLOT_FD: i32 = 3;

/// A started runner and the manager's end of its socket.
pub struct Runner {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub control: tokio::net::UnixStream,
}

/// Spawns a runner, with `own_session` as the leader of a new session (see
/// the module doc). It waits for its `Start` message before it does
/// anything, so the caller can place it (e.g. into a scope) first.
pub fn spawn_runner(runner: &RunnerCommand, own_session: bool) -> std::io::Result<Runner> {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut cmd = std::process::Command::new(&runner.program);
    if let Some(arg0) = &runner.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(runner.args);
    // systemd's notify/watchdog variables are the manager's alone.
    for k in crate::slot::handler::SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env(CONTROL_FD_ENV, SLOT_FD.to_string())
        .stdin(Stdio::null());
    let fd = theirs.as_raw_fd();
    // Outside a session of its own a runner is a background group of the
    // manager's terminal, if it has one (`slotman run` or `demo` in a shell):
    // its log lines must not stop it under `stty tostop`. SIGTTOU is blocked
    // in it for that (the kernel then lets the write through), and only
    // then: under systemd there is no terminal, and nothing changes. Its
    // handlers inherit the mask; they write to pipes, not the terminal.
    // SAFETY: isatty only reads the fd's state.
    let block_ttou = !own_session && unsafe { libc::isatty(2) } == 1;
    // SAFETY: only async-signal-safe calls (setsid, setpgid, sigprocmask,
    // dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Either way the runner leads its process group (pgid = pid,
            // for kill_group).
            let led = if own_session {
                libc::setsid()
            } else {
                libc::setpgid(0, 0)
            };
            if led < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if block_ttou {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTTOU);
                if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if fd == SLOT_FD {
                // dup2 onto itself would keep FD_CLOEXEC set; clear it instead.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, SLOT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    let child = cmd.spawn()?;
    drop(theirs);
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("runner exited at once"))?;
    mine.set_nonblocking(true)?;
    let control = tokio::net::UnixStream::from_std(mine)?;
    Ok(Runner {
        child,
        pid,
        control,
    })
}

/// SIGKILLs what is left of a runner's process group (after the runner itself
/// has exited, or when a stop times out).
pub fn kill_group(pid: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGKILLs every process left in the session of the runner `sid` (its pid:
/// runners lead their own session), e.g. exec handlers in process groups of
/// their own that outlived a SIGKILLed runner. Call it after the runner has
/// been reaped. Reads every /proc/PID/stat, so it is meant for a runner's
/// exit, not for every job.
pub fn kill_session(sid: u32) {
    let Ok(sid) = i32::try_from(sid) else { return };
    // The kernel keeps a pid allocated while a process uses it as its
    // session id, so no new process can get it while anyone is left in the
    // session. A process with that pid now therefore means the session is
    // empty and the number was reused: leave it (and its own session) alone.
    if std::path::Path::new(&format!("/proc/{sid}")).exists() {
        return;
    }
    // A member may fork while we scan; its child is in the session too. One
    // pass that killed nobody means nobody is left who could still fork.
    for _ in 0..4 {
        let members = session_members(sid);
        if members.is_empty() {
            return;
        }
        for pid in members {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Live processes whose session id is `sid` (zombies are already dead).
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            stat.ok().is_some_and(|s| {
                parse_session(&s).is_some_and(|(state, session)| session == sid && state != "Z")
            })
        })
        .collect()
}

/// State and session id from a /proc/PID/stat line: `PID (COMM) STATE PPID
/// PGRP SESSION ...`. COMM may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_session(stat: &str) -> Option<(&str, i32)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_read_after_the_last_parenthesis() {
        let stat = "4242 (a) b) (c) S 1 4242 4100 0 -1 4194560 107 0 0 0";
        assert_eq!(parse_session(stat), Some(("S", 4100)));
        assert_eq!(parse_session("12 (x) Z 1 12"), None);
        assert_eq!(parse_session("garbage"), None);
    }

    /// `sh -c SCRIPT` as a session leader, reaped; returns its pid and stdout.
    fn leader_that_exited(script: &str) -> (u32, String) {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| match libc::setsid() {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        let child = cmd.spawn().expect("spawn sh");
        let pid = child.id();
        let out = child.wait_with_output().expect("sh exits");
        (pid, String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_session(&s).map(|(state, _)| state != "Z"))
            .unwrap_or(false)
    }

    #[test]
    fn what_an_exited_leader_left_in_its_session_is_killed() {
        let (sid, out) = leader_that_exited("sleep 60 >/dev/null 2>&1 & echo $!");
        let left: i32 = out.parse().expect("pid of the sleep");
        assert!(alive(left), "the sleep outlived its leader");
        kill_session(sid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(left) {
            assert!(std::time::Instant::now() < deadline, "{left} survived");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_live_process_with_the_session_id_is_left_alone() {
        // Stands for a pid reused after the session emptied.
        let mut leader = std::process::Command::new("/bin/sh");
        leader.args(["-c", "sleep 60"]);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            leader.pre_exec(|| match libc::setsid() {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        let mut leader = leader.spawn().expect("spawn");
        kill_session(leader.id());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(alive(leader.id() as i32));
        let _ = leader.kill();
        let _ = leader.wait();
    }
}
