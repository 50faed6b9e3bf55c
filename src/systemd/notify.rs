//! sd_notify(3) for the manager: READY, RELOADING (with MONOTONIC_USEC),
//! STOPPING, STATUS and WATCHDOG. Without `NOTIFY_SOCKET` every call is a
//! no-op, so the same code runs under systemd and in a terminal.
//!
//! The manager's environment keeps `NOTIFY_SOCKET` (it notifies for its whole
//! life); slots never see it: `placement::child` removes it from theirs.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0;
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec))
            .then(|| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        Notifier { enabled, watchdog }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                tracing::debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// RELOADING=1 with the MONOTONIC_USEC that systemd 253's
    /// Type=notify-reload expects (ignored by older systemd).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to send WATCHDOG=1 (half of `WatchdogSec=`), if enabled.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }
}
