//! `slotman demo`.
