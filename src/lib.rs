//! slotman keeps pools of Gearman worker processes ("slots") alive, sized to
//! the load, natively on systemd. See ARCHITECTURE.md for how the pieces fit.
//!
//! # Layout
//!
//! - [`config`]: the TOML contract; `load` is the only file read, the rest is pure.
//! - [`gearman`]: the Gearman binary protocol (codec), the text admin protocol
//!   and a small client; knows nothing of slots or pools.
//! - [`slot`]: the slot runner process: job-server connections + one handler,
//!   reporting busy/idle/done to its manager.
//! - [`manager`]: the event loop that owns the pools, with a pure scaling policy.
//! - [`placement`]: where a slot process lives: a plain child, or a systemd scope.
//! - [`control`]: the control socket, `slotman status`, Prometheus metrics.
//! - [`systemd`]: sd_notify and journald.
//! - [`procfs`]: the one /proc/PID/stat parser.
//! - [`seed`]: the Perl, Python and PHP worker libraries, built in, and how
//!   an interpreter runs or checks a worker's module with them.
//! - [`demo`]: `slotman demo`.
//! - [`generate`]: man pages (from the CLI and docs/configuration.md) and
//!   shell completions, for packages.

pub mod config;
pub mod control;
pub mod demo;
pub mod gearman;
pub mod generate;
pub mod manager;
pub mod placement;
pub mod procfs;
pub mod run;
pub mod seed;
pub mod slot;
pub mod systemd;
pub mod view;
