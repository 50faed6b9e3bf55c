//! sd_notify(3): telling systemd READY, RELOADING, STOPPING, STATUS and
//! WATCHDOG. Without `NOTIFY_SOCKET` (not started by systemd, or not
//! `Type=notify`) every call does nothing.
//!
//! The environment is read once, in [`Notifier::from_env`], and never
//! changed: the manager keeps notifying for its whole life, while each slot
//! is spawned with [`MANAGER_ONLY_ENV`] taken out of its environment, so
//! that no slot can speak for the manager (the unit also says
//! `NotifyAccess=main`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use sd_notify::NotifyState;

/// Variables that are for the manager alone and must be removed from the
/// environment of every slot: the notify and watchdog channel (a slot that
/// inherited them could report READY or keep the watchdog happy for a hung
/// manager), and socket activation, which would hand a slot the manager's
/// fds' meaning.
pub const MANAGER_ONLY_ENV: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Whether this process runs as a systemd unit (systemd sets
/// `INVOCATION_ID`) on a host booted with systemd.
pub fn running_under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
        && std::path::Path::new("/run/systemd/system").is_dir()
}

/// The manager's channel to systemd. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// `NOTIFY_SOCKET`, kept: a path, or an abstract name after `@`.
    socket: Option<OsString>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is meant for us.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    fn from_vars(
        socket: Option<OsString>,
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Notifier {
        let socket = socket.filter(|s| !s.is_empty());
        // sd_watchdog_enabled(3): the watchdog is ours if WATCHDOG_PID is
        // unset or names us. Pinging at half the timeout is its advice.
        let for_us = pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(own_pid));
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Notifier { socket, watchdog }
    }

    /// True when systemd listens (started as `Type=notify`).
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Startup finished, or a reload finished (after [`Notifier::reloading`]).
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A reload begins; follow with [`Notifier::ready`] when it is done (or
    /// has failed and the old configuration stays). MONOTONIC_USEC lets
    /// systemd ≥ 253 (`Type=notify-reload`) match the READY to this reload.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::warn!("cannot read CLOCK_MONOTONIC for MONOTONIC_USEC: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// Shutdown begins (draining).
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// One line for `systemctl status`. Line breaks would end the
    /// assignment, so they become spaces.
    pub fn status(&self, text: &str) {
        let line = text.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&line)]);
    }

    /// Keep-alive for `WatchdogSec=`; send every [`Notifier::watchdog_interval`].
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to call [`Notifier::watchdog`]: half of `WATCHDOG_USEC`, or
    /// `None` when there is no watchdog for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one datagram. Failure is logged, not returned: no caller could
    /// do better, and a lost READY shows up as a start timeout anyway.
    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(socket) = &self.socket else { return };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        if let Err(e) = send_to(socket, message.as_bytes()) {
            tracing::warn!(
                "sd_notify to {}: {e} (message {message:?})",
                socket.to_string_lossy()
            );
        }
    }
}

/// Sends `message` to the notify socket, which may be abstract (`@name`).
/// The sd-notify crate reads the variable on every call; we keep our copy.
fn send_to(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(message, &addr)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, OsString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        (dir, sock, path.into_os_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages() {
        let (_dir, sock, path) = listener();
        let n = Notifier::from_vars(Some(path), None, None, 1);
        assert!(n.is_enabled());
        n.ready();
        assert_eq!(recv(&sock), "READY=1\n");
        n.status("2 slots\nbusy");
        assert_eq!(recv(&sock), "STATUS=2 slots busy\n");
        n.reloading();
        let reload = recv(&sock);
        assert!(
            reload.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reload}"
        );
        let usec: u64 = reload
            .trim_end()
            .rsplit('=')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1\n");
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1\n");
    }

    #[test]
    fn abstract_socket() {
        let name = format!("slotman-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_vars(Some(format!("@{name}").into()), None, None, 1);
        n.ready();
        assert_eq!(recv(&sock), "READY=1\n");
    }

    #[test]
    fn disabled_without_socket() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 1);
        assert!(!n.is_enabled());
        n.ready(); // does nothing, does not fail
    }

    #[test]
    fn watchdog_interval() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(
            Notifier::from_vars(None, Some("30000000"), None, 7).watchdog_interval(),
            half
        );
        assert_eq!(
            Notifier::from_vars(None, Some("30000000"), Some("7"), 7).watchdog_interval(),
            half
        );
        assert_eq!(
            Notifier::from_vars(None, Some("30000000"), Some("8"), 7).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::from_vars(None, Some("0"), None, 7).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::from_vars(None, Some("x"), None, 7).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::from_vars(None, None, None, 7).watchdog_interval(),
            None
        );
    }
}
