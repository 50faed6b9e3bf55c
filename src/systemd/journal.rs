//! Logging: to journald with structured fields when our stderr is the
//! journal (systemd sets `JOURNAL_STREAM` to its device:inode), plain text
//! to stderr otherwise. Fields given to `tracing` events (`worker`, `slot`,
//! `reason`, …) become `SLOTMAN_WORKER`, `SLOTMAN_SLOT`, `SLOTMAN_REASON`.
//!
//! Also the slot's forwarding of its handler's stderr: journald attributes a
//! native-protocol message to the cgroup of the process that sent it, so a
//! runner inside its scope makes `journalctl -u SCOPE` show its handler's
//! lines, with `SLOTMAN_*` and per-job `GEARMAN_FUNCTION` / `GEARMAN_HANDLE`.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Longest handler line forwarded as one entry; longer lines are split.
const MAX_LINE: usize = 16 * 1024;

/// Whether our stderr is a journal stream (the `JOURNAL_STREAM` check of
/// systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd().as_raw_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Sets up `tracing` for this process. `RUST_LOG` overrides the level.
pub fn init_logging(verbose: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if verbose { "debug" } else { "info" }));
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_field_prefix(Some("SLOTMAN".into()));
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The job a slot is running, for the fields of its handler's log lines.
pub type CurrentJob = Arc<Mutex<Option<(String, String)>>>;

/// Creates the pipe handlers write their stderr to and starts forwarding
/// it: to journald with the slot's fields when we log to the journal, else
/// to our stderr prefixed with `WORKER#SLOT`. Returns the pipe's write end.
pub fn forward_handler_output(
    service: &str,
    worker: &str,
    slot: u32,
    job: CurrentJob,
) -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe().map_err(std::io::Error::from)?;
    let journal = if stderr_is_journal() {
        UnixDatagram::unbound()
            .and_then(|s| s.connect(JOURNAL_SOCKET).map(|_| s))
            .ok()
    } else {
        None
    };
    let ident = format!("slotman-{worker}");
    let fields = [
        ("SLOTMAN_SERVICE", service.to_string()),
        ("SLOTMAN_WORKER", worker.to_string()),
        ("SLOTMAN_SLOT", slot.to_string()),
    ];
    let prefix = format!("{worker}#{slot}");
    // A plain thread: blocking reads of one pipe, off the slot's runtime.
    std::thread::Builder::new()
        .name("handler-stderr".into())
        .spawn(move || {
            use std::io::{BufRead, Read};
            let mut reader = std::io::BufReader::new(std::fs::File::from(read));
            let mut line = Vec::new();
            loop {
                line.clear();
                match Read::take(&mut reader, MAX_LINE as u64).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                let text = String::from_utf8_lossy(&line);
                let current = job.lock().ok().and_then(|j| j.clone());
                match &journal {
                    Some(sock) => {
                        let mut msg = Vec::with_capacity(line.len() + 256);
                        field(&mut msg, "MESSAGE", text.as_bytes());
                        field(&mut msg, "PRIORITY", b"6");
                        field(&mut msg, "SYSLOG_IDENTIFIER", ident.as_bytes());
                        for (k, v) in &fields {
                            field(&mut msg, k, v.as_bytes());
                        }
                        if let Some((function, handle)) = &current {
                            field(&mut msg, "GEARMAN_FUNCTION", function.as_bytes());
                            field(&mut msg, "GEARMAN_HANDLE", handle.as_bytes());
                        }
                        let _ = sock.send(&msg);
                    }
                    None => {
                        let _ = writeln!(std::io::stderr(), "[{prefix}] {text}");
                    }
                }
            }
        })?;
    Ok(write)
}

/// Appends one field in journald's native protocol; values with a newline
/// use the length-prefixed form.
fn field(msg: &mut Vec<u8>, key: &str, value: &[u8]) {
    msg.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        msg.push(b'\n');
        msg.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        msg.push(b'=');
    }
    msg.extend_from_slice(value);
    msg.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_protocol_fields() {
        let mut m = Vec::new();
        field(&mut m, "MESSAGE", b"hello");
        field(&mut m, "X", b"a\nb");
        assert_eq!(&m[..14], b"MESSAGE=hello\n");
        assert_eq!(&m[14..16], b"X\n");
        assert_eq!(&m[16..24], &3u64.to_le_bytes());
        assert_eq!(&m[24..], b"a\nb\n");
    }
}
