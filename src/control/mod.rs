//! Seeing inside a running service: the control socket (`server`), the
//! `slotman status` client (`client`), the serialised view (`proto`) and
//! per-slot resource usage (`stats`).

pub mod client;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod stats;
