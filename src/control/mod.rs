//! The control socket, `slotman status` and metrics.

pub mod client;
pub mod proto;
