//! Where a slot process lives: a plain child process group, or a systemd scope.

pub mod child;
pub mod scope;
