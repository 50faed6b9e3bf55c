//! systemd integration that is not placement: sd_notify and journald logging.

pub mod journal;
pub mod notify;
