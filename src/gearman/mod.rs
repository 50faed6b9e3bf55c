//! The Gearman protocol: binary packets (`packet`, `codec`), the text admin
//! protocol (`admin`) and a small client (`client`, for the demo, tests and
//! benchmarks). Knows nothing of slots, pools or handlers.

pub mod admin;
pub mod client;
pub mod codec;
pub mod packet;
