//! Tracing for the manager and the slot runners: to journald with
//! `SLOTMAN_*` fields when stderr is the journal, else text on stderr.

use std::io::{self, IsTerminal};

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Sets up tracing for the process: `info` by default, `debug` with
/// `verbose`, and `RUST_LOG` (tracing-subscriber's EnvFilter syntax) overrides
/// both. When stderr is connected to the journal (`JOURNAL_STREAM` names it),
/// events go to journald with their fields, prefixed: a field `worker`
/// becomes `SLOTMAN_WORKER` (the prefix keeps event fields apart from
/// journald's own, such as `UNIT=`). Otherwise they are written to stderr as
/// text, coloured only when stderr is a terminal. Calling it again does
/// nothing.
pub fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    init_with(filter);
}

/// [`init_logging`] for slot runners: `RUST_LOG` holds levels per target
/// only (`debug`, `slotman=debug,tokio=warn`); one with span or field
/// filters, which EnvFilter would take, means the default level. Without
/// EnvFilter the runner's binary has no regex engine, a sixth of its code
/// and so of the pages each slot maps.
pub fn init_runner_logging(verbose: bool) {
    init_with(runner_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        verbose,
    ));
}

fn runner_filter(rust_log: Option<&str>, verbose: bool) -> Targets {
    let default = if verbose { Level::DEBUG } else { Level::INFO };
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(default))
}

fn init_with<F: Layer<Registry> + Send + Sync + 'static>(filter: F) {
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(Some("SLOTMAN".into()))
                    .with_syslog_identifier("slotman".into());
                let _ = registry.with(layer).try_init();
                return;
            }
            // Fall through to text on stderr, which still ends up in the
            // journal, only without fields.
            Err(e) => eprintln!("slotman: journald socket unusable ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(colour(
            io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let _ = registry.with(fmt).try_init();
}

/// Colour codes only for a terminal: in a file or a pipe they are noise.
/// A non-empty `NO_COLOR` turns them off there too (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// True when fd 2 is the stream systemd set up for this service: its device
/// and inode equal `JOURNAL_STREAM` (systemd.exec(5)). Comparing, rather
/// than trusting the variable, ignores a value inherited by a process whose
/// stderr was redirected elsewhere.
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&var.to_string_lossy()) else {
        return false;
    };
    match nix::sys::stat::fstat(io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_log_levels_come_from_rust_log_targets() {
        let on = |f: &Targets, target: &str, level| f.would_enable(target, &level);
        let f = runner_filter(None, false);
        assert!(on(&f, "slotman::slot", Level::INFO) && !on(&f, "slotman::slot", Level::DEBUG));
        assert!(on(&runner_filter(None, true), "x", Level::DEBUG));
        let f = runner_filter(Some("warn,slotman::slot=trace"), false);
        assert!(on(&f, "slotman::slot::runner", Level::TRACE));
        assert!(!on(&f, "slotman::manager", Level::INFO));
        // EnvFilter-only syntax, or nothing: the default.
        for odd in ["[job{id=1}]=debug", "", "  "] {
            let f = runner_filter(Some(odd), false);
            assert!(
                on(&f, "slotman", Level::INFO) && !on(&f, "slotman", Level::DEBUG),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn colour_only_on_a_terminal() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".as_ref())));
        assert!(!colour(true, Some("1".as_ref())));
        assert!(!colour(false, None));
    }

    #[test]
    fn journal_stream_var() {
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }
}
