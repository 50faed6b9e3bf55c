//! TEMPORARY shim (owned by the systemd work; replace freely).
use std::time::Duration;
pub struct Notifier;
impl Notifier {
    pub fn from_env() -> Notifier { Notifier }
    pub fn ready(&self) {}
    pub fn reloading(&self) {}
    pub fn stopping(&self) {}
    pub fn status(&self, _s: &str) {}
    pub fn watchdog(&self) {}
    pub fn watchdog_interval(&self) -> Option<Duration> { None }
}
