//! journald's stdout streams: a socket a handler can take as its stderr,
//! each line an entry of the connecting process's unit.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

/// journald's socket for stdout streams.
const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";

/// Opens a journald stdout stream whose lines are logged with
/// `SYSLOG_IDENTIFIER=identifier` at priority info; a line may start with a
/// `<N>` syslog level prefix to choose another. The unit is that of the
/// calling process at connect time, so call this from inside the slot's scope.
///
/// Fails (`NotFound`) when journald is not running; the caller should then
/// let the handler inherit its own stderr.
pub fn journal_stream(identifier: &str) -> io::Result<OwnedFd> {
    journal_stream_at(STDOUT_SOCKET.as_ref(), identifier)
}

fn journal_stream_at(socket: &std::path::Path, identifier: &str) -> io::Result<OwnedFd> {
    let mut stream = UnixStream::connect(socket)?;
    // journald never writes to the stream; systemd's own clients shut the
    // read side too.
    stream.shutdown(std::net::Shutdown::Read)?;
    stream.write_all(&stream_header(identifier))?;
    Ok(OwnedFd::from(stream))
}

/// The header journald expects on a new stdout stream, one value per line:
/// identifier, unit id (empty: only PID 1 may claim one), priority (6, info),
/// level prefix (1: honour `<N>`), forward to syslog, kmsg, console (0, 0, 0).
fn stream_header(identifier: &str) -> Vec<u8> {
    let identifier = identifier.replace(['\n', '\r'], "_");
    format!("{identifier}\n\n6\n1\n0\n0\n0\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn header() {
        assert_eq!(stream_header("billing/w"), b"billing/w\n\n6\n1\n0\n0\n0\n");
        assert_eq!(stream_header("a\nb"), b"a_b\n\n6\n1\n0\n0\n0\n");
    }

    #[test]
    fn stream_writes_header_then_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = journal_stream_at(&path, "t").unwrap();
        let mut w = std::fs::File::from(fd);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        let (mut peer, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"t\n\n6\n1\n0\n0\n0\nhello\n");
    }

    #[test]
    fn missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = journal_stream_at(&dir.path().join("nope"), "t").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
