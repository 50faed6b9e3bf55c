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
//! user, against gearmand and everything else on the host (it cost about a
//! tenth of stdio throughput at 4 slots; BENCHMARKS.md).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};

use super::RunnerCommand;
use crate::procfs;
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
    for k in crate::systemd::notify::MANAGER_ONLY_ENV {
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

/// SIGKILLs what is left of a runner's process group. Only while the
/// runner is not reaped (alive, or exited and waited for with [`exited`]):
/// it then holds its pid, and with it the group id, so no one else can
/// have that group.
pub fn kill_group(pid: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Waits until `pid`, a child of this process, has exited and returns how,
/// without reaping it (waitid `WNOWAIT`): until it is reaped its pid stays
/// allocated, and so do the ids of the process group and session it leads,
/// so [`kill_group`] and [`kill_session`] by those numbers reach no one
/// else. Reap it (tokio's `Child::wait`) after the cleanup.
pub async fn exited(pid: u32) -> std::io::Result<ExitStatus> {
    // Registered before the first look, so an exit after it wakes us.
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        if let Some(status) = peek_exit(pid)? {
            return Ok(status);
        }
        let woken = match sigchld.as_mut() {
            Some(s) => s.recv().await.is_some(),
            None => false,
        };
        if !woken {
            // Without a SIGCHLD stream, look now and then.
            sigchld = None;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The exit status of the child `pid` if it has exited, leaving it unreaped.
fn peek_exit(pid: u32) -> std::io::Result<Option<ExitStatus>> {
    loop {
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT | libc::WNOHANG;
        // SAFETY: waitid writes only into `info`, which outlives the call.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        // SAFETY: waitid filled `info` for a child (si_pid 0: none exited).
        let (who, status) = unsafe { (info.si_pid(), info.si_status()) };
        if who == 0 {
            return Ok(None);
        }
        // The wait(2) encoding std's ExitStatus wraps.
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        return Ok(Some(ExitStatus::from_raw(raw)));
    }
}

/// A long-running handler's process group as its runner reported it: the
/// leader's pid and start time, and the session it started in. The number
/// alone is not enough: once the handler and everything in its group are
/// gone, the kernel may give it to an unrelated process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerGroup {
    pub pgid: u32,
    /// /proc/PID/stat field 22 of the leader.
    pub start_time: u64,
    pub session: i32,
}

/// SIGKILLs what is left of a handler's process group after its runner
/// died, and nothing else; returns how many processes were signalled.
///
/// A process group id is the pid of the process that created the group,
/// and the kernel does not hand that pid out again while the process or
/// any member of its group lives. So a live or zombie process with the
/// number and another start time means the handler and its whole group
/// are gone and the number was reused: nothing to do. Otherwise the group
/// is either the handler's, or empty and reused by a process that has
/// exited since (a daemon's first fork does that): members must also be in
/// the handler's session and have started after it, and a daemon has a
/// session of its own. Each is signalled through a pidfd, so a process
/// that exits between the check and the kill cannot pass its pid on to a
/// victim. What remains: a reused group in the same session whose leader
/// left, which takes a pid wrap and a manager run from a terminal (its
/// session holds the terminal's jobs); under systemd the scope is used.
pub fn kill_handler_group(group: &HandlerGroup) -> usize {
    // 0 and 1 lead no handler's group (kernel threads, init).
    if group.pgid <= 1
        || procfs::stat(group.pgid).is_some_and(|leader| leader.start_time != group.start_time)
    {
        return 0;
    }
    kill_members(|s| {
        i64::from(s.pgrp) == i64::from(group.pgid)
            && s.session == group.session
            && s.start_time >= group.start_time
    })
}

/// SIGKILLs every process left in the session of the runner `sid` (its pid:
/// exec runners lead their own session), e.g. exec handlers in process
/// groups of their own that outlived a SIGKILLed runner. Only while the
/// runner is an unreaped zombie (see [`exited`]): it then holds the session
/// id, and everyone in the session descends from it. Otherwise (reaped, or
/// the number taken by someone else) it does nothing. Reads every
/// /proc/PID/stat, so it is meant for a runner's exit, not for every job.
pub fn kill_session(sid: u32) -> usize {
    let Ok(id) = i32::try_from(sid) else { return 0 };
    if !procfs::stat(sid).is_some_and(|leader| leader.is_zombie() && leader.session == id) {
        return 0;
    }
    kill_members(|s| s.session == id)
}

/// SIGKILLs every live process `is_member` accepts; how many were
/// signalled. A member may fork while we scan; its child is a member too. A
/// signalled one cannot fork any more (a pending SIGKILL fails the fork), so
/// a pass that finds no one new means no one is left who could.
fn kill_members(is_member: impl Fn(&procfs::Stat) -> bool) -> usize {
    let live_member = |pid: u32| procfs::stat(pid).is_some_and(|s| !s.is_zombie() && is_member(&s));
    let mut signalled = std::collections::HashSet::new();
    for _ in 0..4 {
        let new: Vec<u32> = procfs::pids()
            .into_iter()
            .filter(|p| !signalled.contains(p) && live_member(*p))
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            if kill_checked(pid, live_member) {
                signalled.insert(pid);
            }
        }
    }
    signalled.len()
}

/// SIGKILLs `pid` if `check` still accepts it, checked after a pidfd for
/// it is open: if the check read the process the pidfd holds, that one is
/// signalled; if that one exited in between, the signal finds no one,
/// whoever has its pid now. Without pidfds (Linux before 5.3), by number.
pub fn kill_checked(pid: u32, check: impl Fn(u32) -> bool) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: pidfd_open takes a pid and flags, and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return e.raw_os_error() == Some(libc::ENOSYS)
            && check(pid)
            && nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok();
    }
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !check(pid) {
        return false;
    }
    // SAFETY: pidfd_send_signal reads the fd and signal; info may be null.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    /// Runs `sh -c SCRIPT`, in a session of its own if `own_session` (else
    /// in a process group of its own); returns it and its first stdout line.
    fn sh(script: &str, own_session: bool) -> (std::process::Child, String) {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        // SAFETY: setsid and setpgid are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let r = match own_session {
                    true => libc::setsid(),
                    false => libc::setpgid(0, 0),
                };
                match r {
                    -1 => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                }
            });
        }
        let mut child = cmd.spawn().expect("spawn sh");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("read");
        (child, line.trim().to_string())
    }

    fn alive(pid: u32) -> bool {
        procfs::stat(pid).is_some_and(|s| !s.is_zombie())
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exited_unreaped(pid: u32) -> ExitStatus {
        let mut status = None;
        wait_for("exit", || {
            status = peek_exit(pid).expect("waitid");
            status.is_some()
        });
        status.expect("exited")
    }

    fn sigkill(pid: u32) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    fn our_session() -> i32 {
        procfs::stat(std::process::id()).expect("our stat").session
    }

    #[test]
    fn an_exit_is_seen_without_reaping() {
        let (mut child, _) = sh("echo; exit 3", false);
        let status = exited_unreaped(child.id());
        assert_eq!(status.code(), Some(3));
        // Still a zombie: its pid (and group) are still ours.
        assert!(procfs::stat(child.id()).is_some_and(|s| s.is_zombie()));
        assert_eq!(child.wait().expect("reap").code(), Some(3));
        let (mut child, _) = sh("echo; kill -9 $$", false);
        assert_eq!(exited_unreaped(child.id()).signal(), Some(9));
        let _ = child.wait();
    }

    #[test]
    fn what_an_unreaped_leader_left_in_its_session_is_killed() {
        let (mut leader, out) = sh("sleep 60 >/dev/null 2>&1 & echo $!", true);
        let left: u32 = out.parse().expect("pid of the sleep");
        exited_unreaped(leader.id());
        assert!(alive(left), "the sleep outlived its leader");
        assert!(kill_session(leader.id()) >= 1);
        wait_for("the sleep killed", || !alive(left));
        let _ = leader.wait();
    }

    #[test]
    fn a_session_whose_leader_was_reaped_or_lives_is_left_alone() {
        // Reaped: the number may be anyone's by now.
        let (mut leader, out) = sh("sleep 60 >/dev/null 2>&1 & echo $!", true);
        let left: u32 = out.parse().expect("pid of the sleep");
        let _ = leader.wait();
        assert_eq!(kill_session(leader.id()), 0);
        assert!(alive(left));
        sigkill(left);
        // Alive: stands for a pid reused by a new session leader.
        let (mut live, _) = sh("echo; exec sleep 60", true);
        assert_eq!(kill_session(live.id()), 0);
        assert!(alive(live.id()));
        let _ = live.kill();
        let _ = live.wait();
    }

    #[test]
    fn a_handler_group_is_killed_only_if_it_is_the_reported_one() {
        // Our handler: leads its group, in our session.
        let (mut handler, out) = sh("sleep 60 >/dev/null 2>&1 & echo $!; wait", false);
        let child: u32 = out.parse().expect("pid");
        let start_time = procfs::stat(handler.id()).expect("stat").start_time;
        let reported = HandlerGroup {
            pgid: handler.id(),
            start_time,
            session: our_session(),
        };
        // The number now names another process (a different start time).
        let reused = HandlerGroup {
            start_time: start_time - 1,
            ..reported
        };
        assert_eq!(kill_handler_group(&reused), 0);
        assert!(alive(handler.id()) && alive(child));
        assert_eq!(kill_handler_group(&reported), 2);
        wait_for("the group killed", || !alive(child));
        let _ = handler.wait();
    }

    #[test]
    fn a_reused_group_whose_leader_left_is_not_the_handlers() {
        // A daemon's first fork: a session and group of its own, leader gone.
        let (mut first, out) = sh("sleep 60 >/dev/null 2>&1 & echo $!", true);
        let daemon: u32 = out.parse().expect("pid");
        let _ = first.wait();
        let reported = HandlerGroup {
            pgid: first.id(),
            start_time: 0,
            session: our_session(),
        };
        assert_eq!(kill_handler_group(&reported), 0);
        assert!(alive(daemon));
        // Had the handler been in that session, the group would be its.
        let same_session = HandlerGroup {
            session: first.id() as i32,
            ..reported
        };
        assert_eq!(kill_handler_group(&same_session), 1);
        wait_for("the sleep killed", || !alive(daemon));
    }
}
