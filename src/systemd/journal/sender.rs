//! journald's native protocol: one datagram an entry, with fields.

use std::io;
use std::os::unix::net::UnixDatagram;

/// journald's socket for native-protocol datagrams.
const NATIVE_SOCKET: &str = "/run/systemd/journal/socket";

/// Bytes of one field value sent to journald, at most. A datagram must fit
/// the socket's send buffer (about 200 KiB by default); journald's own stream
/// line limit is 48 KiB.
const MAX_VALUE: usize = 48 * 1024;

/// syslog priorities, as journald's `PRIORITY=` field takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

/// A connection for journald's native protocol. Entries are attributed to
/// the unit of the sending process (journald reads the sender's PID from
/// the socket), so a slot runner in its scope logs to its scope.
#[derive(Debug)]
pub struct JournalSender {
    pub(super) socket: UnixDatagram,
}

impl JournalSender {
    /// Fails (`NotFound`) when journald is not running.
    pub fn connect() -> io::Result<JournalSender> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(NATIVE_SOCKET)?;
        Ok(JournalSender { socket })
    }

    /// Logs one entry: `message` and `fields`, plus `PRIORITY` and
    /// `SYSLOG_IDENTIFIER`. Field names must be journal field names
    /// (`A-Z`, `0-9`, `_`, not starting with `_` or a digit, at most 64
    /// bytes); values are bytes, cut at 48 KiB.
    pub fn send(
        &self,
        priority: Priority,
        identifier: &str,
        message: &[u8],
        fields: &[(&str, &[u8])],
    ) -> io::Result<()> {
        let mut entry = Vec::with_capacity(message.len() + 128);
        let prio = [b'0' + priority as u8];
        let own: [(&str, &[u8]); 3] = [
            ("PRIORITY", &prio),
            ("SYSLOG_IDENTIFIER", identifier.as_bytes()),
            ("MESSAGE", message),
        ];
        for (name, value) in own.iter().chain(fields) {
            if !valid_field_name(name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a journal field name"),
                ));
            }
            encode_field(&mut entry, name, value);
        }
        self.socket.send(&entry)?;
        Ok(())
    }
}

fn valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// One field in the native protocol: `NAME=value\n`, or, for a value with a
/// newline, `NAME\n` + its length as 64-bit little endian + value + `\n`.
fn encode_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let value = &value[..value.len().min(MAX_VALUE)];
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_encoding() {
        let mut out = Vec::new();
        encode_field(&mut out, "A", b"x");
        encode_field(&mut out, "B", b"1\n2");
        let mut want = b"A=x\nB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"1\n2\n");
        assert_eq!(out, want);
    }

    #[test]
    fn field_names() {
        assert!(valid_field_name("SLOTMAN_WORKER"));
        assert!(valid_field_name("GEARMAN_HANDLE2"));
        for bad in ["", "_PID", "1A", "lower", "A-B", &"A".repeat(65)] {
            assert!(!valid_field_name(bad), "{bad}");
        }
    }
}
