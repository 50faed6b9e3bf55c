//! The control socket, `slotman status` and metrics.
