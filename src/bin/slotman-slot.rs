//! `slotman-slot`: the slot runner as a binary of its own, started only by
//! `slotman run` (which finds it next to its own executable). It is
//! `slotman slot` without the rest of slotman: a runner touches fewer pages
//! of a small binary, and every slot's resident memory counts.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The manager passes no arguments; RUST_LOG sets the log level.
    let code = slotman::slot::main_entry(false);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
