//! Seeing inside a running service: the control socket (`server`), the
//! `slotman status` client (`client`), the serialised view (`proto`),
//! per-slot resource usage (`stats`), the view shared by concurrent requests
//! (`snapshot`) and the Prometheus endpoint (`metrics`).

mod accept;
pub mod client;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod snapshot;
pub mod stats;
