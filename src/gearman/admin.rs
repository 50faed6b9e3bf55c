//! The job server's text admin protocol: `status`, `workers` and `version`.
//! Parsing is pure (`parse_status`, `parse_workers`) so it can be tested on
//! literal text; the async functions open one short-lived connection per
//! command, bound the whole exchange by a timeout and the answer by
//! `MAX_RESPONSE`, so a stalled or babbling job server cannot hang or bloat
//! the caller.
//!
//! Formats, as gearmand 1.1.20 writes them:
//!
//! ```text
//! status   -> "FUNCTION\tQUEUED\tRUNNING\tWORKERS\n" ... ".\n"
//! workers  -> "FD IP-ADDRESS CLIENT-ID : FUNCTION ...\n" ... ".\n"
//!             (CLIENT-ID is "-" when unset; a client has no functions: "39 127.0.0.1 - :")
//! version  -> "OK 1.1.20+ds\n"
//! unknown  -> "ERR UNKNOWN_COMMAND Unknown+server+command...\r\n"
//! ```

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest admin answer accepted: a `workers` list of tens of thousands of
/// connections fits; a server streaming without end does not.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// One line of `status`: a registered function and its load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStatus {
    pub name: String,
    /// Jobs in the queue, running ones included (gearmand's "TOTAL").
    pub queued: u64,
    /// Jobs a worker is running now.
    pub running: u64,
    /// Connected workers that registered the function.
    pub workers: u64,
}

/// Jobs of one function, waiting and running, over the job servers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Queued and not yet handed to a worker.
    pub waiting: u64,
    /// Handed to a worker, not yet answered.
    pub running: u64,
}

/// Adds each function's waiting and running jobs in `rows` into `into`,
/// over job servers: what "queue depth" means everywhere in slotman.
pub fn add_load(
    into: &mut std::collections::HashMap<String, Load>,
    rows: impl IntoIterator<Item = FunctionStatus>,
) {
    for r in rows {
        let l = into.entry(r.name).or_default();
        l.waiting = l.waiting.saturating_add(r.queued.saturating_sub(r.running));
        l.running = l.running.saturating_add(r.running);
    }
}

/// One line of `workers`: a connection (worker or client) to the job server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub fd: String,
    pub address: String,
    /// As set with SET_CLIENT_ID; `"-"` when the connection never set one.
    pub client_id: String,
    /// Registered functions; empty for plain clients.
    pub functions: Vec<String>,
}

/// Failures of the admin protocol, from connecting to parsing.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin connection to job server {addr} failed: {error}")]
    Io {
        addr: String,
        // The cause is part of the message, not a `source`: an error chain
        // printed with `{:#}` would say it twice.
        error: std::io::Error,
    },
    #[error("job server {addr} did not answer `{command}` within {timeout:?}")]
    Timeout {
        addr: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("job server answer exceeds {MAX_RESPONSE} bytes")]
    TooLong,
    /// The answer ended before its terminating "." line.
    #[error("job server answer ended before its terminating \".\" line")]
    Unterminated,
    /// The job server refused the command (an `ERR ...` line).
    #[error("job server refused the command: {0}")]
    Server(String),
    #[error("line {line} of the job server answer is malformed ({why}): {text:?}")]
    Malformed {
        line: usize,
        text: String,
        why: &'static str,
    },
}

/// Lines of an admin answer without their "\n" or "\r\n", numbered from 1,
/// up to (not including) the terminating "." line. `Unterminated` if there
/// is none; `Server` if the answer is an `ERR` line.
fn list_lines(text: &str) -> Result<Vec<(usize, &str)>, AdminError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line == "." {
            return Ok(out);
        }
        if out.is_empty() && is_err_line(line) {
            return Err(AdminError::Server(line.to_string()));
        }
        if line.trim().is_empty() {
            continue;
        }
        out.push((i + 1, line));
    }
    Err(AdminError::Unterminated)
}

fn is_err_line(line: &str) -> bool {
    line == "ERR" || line.starts_with("ERR ")
}

/// Parses each line of a list answer with `row`, which says why a line it
/// cannot read is malformed (the error names the line).
fn parse_list<T>(
    text: &str,
    row: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<Vec<T>, AdminError> {
    list_lines(text)?
        .into_iter()
        .map(|(line, l)| {
            row(l).map_err(|why| AdminError::Malformed {
                line,
                text: l.to_string(),
                why,
            })
        })
        .collect()
}

/// Parses the answer to `status`. Function names may contain anything but a
/// newline: the three counts are taken from the right.
pub fn parse_status(text: &str) -> Result<Vec<FunctionStatus>, AdminError> {
    parse_list(text, |l| {
        let mut cols = l.rsplitn(4, '\t');
        let (Some(workers), Some(running), Some(queued), Some(name)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            return Err("expected 4 tab-separated columns");
        };
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| "count is not a number");
        Ok(FunctionStatus {
            name: name.to_string(),
            queued: num(queued)?,
            running: num(running)?,
            workers: num(workers)?,
        })
    })
}

/// Parses the answer to `workers`. Each line is "FD ADDRESS CLIENT-ID :"
/// followed by the functions, space-separated; the first free-standing " :"
/// ends the head.
pub fn parse_workers(text: &str) -> Result<Vec<WorkerInfo>, AdminError> {
    parse_list(text, |l| {
        // The first " :" that stands alone; an IPv6 address may hold " ::1".
        let sep = l.match_indices(" :").map(|(at, _)| at).find(|&at| {
            let after = &l[at + 2..];
            after.is_empty() || after.starts_with(' ')
        });
        let Some(at) = sep else {
            return Err("no \" :\" separator");
        };
        let (head, functions) = (&l[..at], &l[at + 2..]);
        let mut parts = head.splitn(3, ' ');
        let (Some(fd), Some(address)) = (parts.next(), parts.next()) else {
            return Err("expected FD ADDRESS CLIENT-ID");
        };
        if fd.is_empty() || address.is_empty() {
            return Err("expected FD ADDRESS CLIENT-ID");
        }
        Ok(WorkerInfo {
            fd: fd.to_string(),
            address: address.to_string(),
            client_id: parts.next().unwrap_or("").to_string(),
            functions: functions.split_whitespace().map(str::to_string).collect(),
        })
    })
}

/// Parses the answer to `version`: "OK VERSION" gives "VERSION"; a server
/// that answers without "OK " gets its line returned as is.
pub fn parse_version(text: &str) -> Result<String, AdminError> {
    let line = text.lines().next().unwrap_or("").trim();
    if is_err_line(line) {
        return Err(AdminError::Server(line.to_string()));
    }
    Ok(line.strip_prefix("OK ").unwrap_or(line).trim().to_string())
}

/// How to tell that an answer is complete without waiting for the server to
/// close (gearmand keeps admin connections open).
#[derive(Clone, Copy)]
enum Shape {
    /// Lines up to a "." line (or a single `ERR` line).
    List,
    /// One line.
    Line,
}

/// Whether `buf` holds a complete answer. `scanned` is how far complete
/// lines have already been checked, so each byte is looked at once.
fn complete(buf: &[u8], scanned: &mut usize, shape: Shape) -> bool {
    while let Some(nl) = buf[*scanned..].iter().position(|&b| b == b'\n') {
        let line = &buf[*scanned..*scanned + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let first = *scanned == 0;
        *scanned += nl + 1;
        match shape {
            Shape::Line => return true,
            Shape::List if line == b"." => return true,
            Shape::List if first && (line == b"ERR" || line.starts_with(b"ERR ")) => return true,
            Shape::List => {}
        }
    }
    false
}

/// Sends one admin command and reads its whole answer, within `timeout`.
async fn exchange(
    addr: &str,
    command: &'static str,
    shape: Shape,
    timeout: Duration,
) -> Result<String, AdminError> {
    let io_err = |error| AdminError::Io {
        addr: addr.to_string(),
        error,
    };
    let work = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io_err)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io_err)?;
        let mut buf = Vec::with_capacity(4096);
        let mut scanned = 0;
        loop {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.map_err(io_err)?;
            if n == 0 {
                // Closed early: hand over what came; the parser decides
                // whether it is complete (a list without "." is not).
                break;
            }
            if buf.len() + n > MAX_RESPONSE {
                return Err(AdminError::TooLong);
            }
            buf.extend_from_slice(&chunk[..n]);
            if complete(&buf, &mut scanned, shape) {
                break;
            }
        }
        // Function names and client ids are bytes to the job server; show
        // what is not UTF-8 rather than refuse the whole answer.
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AdminError::Timeout {
            addr: addr.to_string(),
            command,
            timeout,
        })?
}

/// `status` of the job server at `addr` ("host:port").
pub async fn status(addr: &str, timeout: Duration) -> Result<Vec<FunctionStatus>, AdminError> {
    parse_status(&exchange(addr, "status", Shape::List, timeout).await?)
}

/// `workers` of the job server at `addr`: every connection, clients included.
pub async fn workers(addr: &str, timeout: Duration) -> Result<Vec<WorkerInfo>, AdminError> {
    parse_workers(&exchange(addr, "workers", Shape::List, timeout).await?)
}

/// `version` of the job server at `addr`, e.g. "1.1.20+ds".
pub async fn version(addr: &str, timeout: Duration) -> Result<String, AdminError> {
    parse_version(&exchange(addr, "version", Shape::Line, timeout).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(name: &str, queued: u64, running: u64, workers: u64) -> FunctionStatus {
        FunctionStatus {
            name: name.to_string(),
            queued,
            running,
            workers,
        }
    }

    #[test]
    fn status_as_gearmand_writes_it() {
        let text = "reverse\t3\t1\t2\nTestWorker::wait\t0\t0\t5\n.\n";
        assert_eq!(
            parse_status(text).unwrap(),
            vec![fs("reverse", 3, 1, 2), fs("TestWorker::wait", 0, 0, 5)]
        );
        assert_eq!(parse_status(".\n").unwrap(), vec![]);
    }

    #[test]
    fn status_odd_lines() {
        // CRLF, blank lines, a name with spaces and one with a tab, padding
        // around numbers, and a trailing line after ".".
        let text = "a b\t1\t0\t0\r\n\r\n\nx\ty\t 7\t2 \t1\r\n.\r\nignored\n";
        assert_eq!(
            parse_status(text).unwrap(),
            vec![fs("a b", 1, 0, 0), fs("x\ty", 7, 2, 1)]
        );
        // A name may even be empty.
        assert_eq!(
            parse_status("\t1\t2\t3\n.\n").unwrap(),
            vec![fs("", 1, 2, 3)]
        );
    }

    #[test]
    fn status_errors() {
        assert!(matches!(
            parse_status("f\t1\t2\t3\n"),
            Err(AdminError::Unterminated)
        ));
        assert!(matches!(parse_status(""), Err(AdminError::Unterminated)));
        assert!(matches!(
            parse_status("f\t1\t2\n.\n"),
            Err(AdminError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_status("ok\t1\t2\t3\nf\t1\tx\t3\n.\n"),
            Err(AdminError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse_status("f\t-1\t2\t3\n.\n"),
            Err(AdminError::Malformed { .. })
        ));
        match parse_status("ERR UNKNOWN_COMMAND Unknown+server+commandstatus\r\n") {
            Err(AdminError::Server(msg)) => assert!(msg.starts_with("ERR UNKNOWN_COMMAND")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn load_adds_up_over_servers() {
        let mut l = std::collections::HashMap::new();
        add_load(&mut l, vec![fs("a", 5, 2, 1), fs("b", 1, 1, 1)]);
        add_load(&mut l, vec![fs("a", 3, 0, 1), fs("a", u64::MAX, 0, 0)]);
        // A server that reports more running than queued: none waiting.
        add_load(&mut l, vec![fs("b", 1, 4, 1)]);
        assert_eq!(
            l["a"],
            Load {
                waiting: u64::MAX,
                running: 2
            }
        );
        assert_eq!(
            l["b"],
            Load {
                waiting: 0,
                running: 5
            }
        );
    }

    #[test]
    fn workers_as_gearmand_writes_them() {
        let text = "38 127.0.0.1 slotman:billing:TestWorker:0:4242 : TestWorker::reverse TestWorker::wait\n\
                    39 127.0.0.1 - :\n\
                    40 ::1 - : f\n\
                    .\n";
        let w = parse_workers(text).unwrap();
        assert_eq!(w.len(), 3);
        assert_eq!(
            w[0],
            WorkerInfo {
                fd: "38".into(),
                address: "127.0.0.1".into(),
                client_id: "slotman:billing:TestWorker:0:4242".into(),
                functions: vec!["TestWorker::reverse".into(), "TestWorker::wait".into()],
            }
        );
        assert_eq!(w[1].client_id, "-");
        assert!(w[1].functions.is_empty());
        assert_eq!(w[2].address, "::1");
        assert_eq!(w[2].functions, vec!["f".to_string()]);
    }

    #[test]
    fn workers_odd_lines() {
        // A client id with spaces, an empty client id, a trailing space,
        // several spaces between functions, CRLF.
        let text = "1 10.0.0.1 my worker : a  b \r\n2 10.0.0.2  :\r\n3 h x : \r\n.\r\n";
        let w = parse_workers(text).unwrap();
        assert_eq!(w[0].client_id, "my worker");
        assert_eq!(w[0].functions, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(w[1].client_id, "");
        assert!(w[1].functions.is_empty());
        assert_eq!(w[2].client_id, "x");
        assert!(w[2].functions.is_empty());

        assert!(matches!(
            parse_workers("38 127.0.0.1 - f\n.\n"),
            Err(AdminError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_workers("38 :\n.\n"),
            Err(AdminError::Malformed { .. })
        ));
        assert!(matches!(
            parse_workers("38 127.0.0.1 - :\n"),
            Err(AdminError::Unterminated)
        ));
        assert!(matches!(
            parse_workers("ERR x y\n"),
            Err(AdminError::Server(_))
        ));
    }

    #[test]
    fn version_lines() {
        assert_eq!(parse_version("OK 1.1.20+ds\n").unwrap(), "1.1.20+ds");
        assert_eq!(parse_version("1.2\r\n").unwrap(), "1.2");
        assert!(matches!(
            parse_version("ERR nope x\r\n"),
            Err(AdminError::Server(_))
        ));
    }

    #[test]
    fn completeness_detection() {
        let mut s = 0;
        assert!(!complete(b"f\t1\t2\t3\n", &mut s, Shape::List));
        assert!(!complete(b"f\t1\t2\t3\n.", &mut s, Shape::List));
        assert!(complete(b"f\t1\t2\t3\n.\n", &mut s, Shape::List));
        let mut s = 0;
        assert!(complete(b".\r\n", &mut s, Shape::List));
        let mut s = 0;
        assert!(complete(b"ERR UNKNOWN_COMMAND x\r\n", &mut s, Shape::List));
        let mut s = 0;
        // "ERR" is only an error as the first line.
        assert!(!complete(b"f\t1\t2\t3\nERR \n", &mut s, Shape::List));
        let mut s = 0;
        assert!(!complete(b"OK 1.1", &mut s, Shape::Line));
        assert!(complete(b"OK 1.1\n", &mut s, Shape::Line));
    }

    #[tokio::test]
    async fn stalled_server_times_out_and_endless_one_is_cut_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            // First connection: accept and say nothing.
            let (_silent, _) = listener.accept().await.unwrap();
            // Second: stream status lines forever.
            let (mut babbler, _) = listener.accept().await.unwrap();
            let line = b"f\t1\t1\t1\n".repeat(4096);
            while babbler.write_all(&line).await.is_ok() {}
        });
        let err = status(&addr, Duration::from_millis(200)).await.unwrap_err();
        assert!(
            matches!(
                err,
                AdminError::Timeout {
                    command: "status",
                    ..
                }
            ),
            "{err}"
        );
        let err = status(&addr, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(err, AdminError::TooLong), "{err}");
        server.abort();
    }
}
