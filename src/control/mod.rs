//! Seeing inside a running service: the control socket (`server`), the
//! `slotman status` client (`client`), the serialised view (`proto`),
//! per-slot resource usage (`stats`), the view shared by concurrent requests
//! (`snapshot`), the Prometheus exposition (`exposition`) and its HTTP
//! endpoint (`metrics`); `accept` bounds both listeners.

mod accept;
pub mod client;
pub mod exposition;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod snapshot;
pub mod stats;
