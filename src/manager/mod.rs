//! The manager event loop.
