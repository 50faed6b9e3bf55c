//! Starting a slot runner process (`slotman-slot`, or `slotman slot`) with
//! its end of the manager socketpair as fd 3, in a process group of its own
//! (so a terminal's Ctrl-C reaches the manager only, which then drains the
//! slots in order).

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

/// Spawns a runner. It waits for its `Start` message before it does
/// anything, so the caller can place it (e.g. into a scope) first.
pub fn spawn_runner(runner: &RunnerCommand) -> std::io::Result<Runner> {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut cmd = std::process::Command::new(&runner.program);
    cmd.args(runner.args);
    // systemd's notify/watchdog variables are the manager's alone.
    for k in crate::slot::handler::SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env(CONTROL_FD_ENV, SLOT_FD.to_string())
        .stdin(Stdio::null())
        .process_group(0);
    let fd = theirs.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
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
