//! Where forwarded handler lines go: journal entries with the slot's and
//! the job's fields, or `[WORKER#SLOT] line` text; and the handler's last
//! words, for a handler that fails at start.

use std::io::Write;

use super::forward::JobTag;
use super::lines::Lines;
use super::sender::{JournalSender, Priority};

/// Where forwarded lines go.
pub(super) enum Out<W> {
    /// One native-protocol entry a line, with the slot's and job's fields.
    Journal(JournalSender),
    /// `[WORKER#SLOT] line`, as text (our stderr); one write per batch.
    Text(W),
}

/// The last line the handler wrote to stderr that was not blank, cut to
/// [`LAST_WORDS_MAX`] bytes: why a handler that exits at start failed, in
/// its own words. One forwarder per runner process, so one per process.
static LAST_WORDS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const LAST_WORDS_MAX: usize = 300;

/// The handler's last non-blank stderr line the sink has seen.
pub(super) fn last_words() -> Option<String> {
    let words = LAST_WORDS.lock().unwrap_or_else(|e| e.into_inner());
    (!words.is_empty()).then(|| String::from_utf8_lossy(&words).trim().to_string())
}

/// The last non-blank line of one batch, kept as [`LAST_WORDS`].
#[derive(Default)]
struct LastWords {
    line: Option<Vec<u8>>,
}

impl LastWords {
    fn see(&mut self, line: &[u8]) {
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            let keep = self.line.get_or_insert_with(Vec::new);
            keep.clear();
            keep.extend_from_slice(&line[..line.len().min(LAST_WORDS_MAX)]);
        }
    }

    fn keep(self) {
        if let Some(line) = self.line {
            *LAST_WORDS.lock().unwrap_or_else(|e| e.into_inner()) = line;
        }
    }
}

/// A handler's stderr on its way out: cut into lines, each job held to its
/// budget, and sent to `out`.
pub(super) struct LineSink<W> {
    pub(super) out: Out<W>,
    pub(super) lines: Lines,
    identifier: String,
    slot_fields: [(&'static str, String); 3],
    prefix: String,
}

impl<W: Write> LineSink<W> {
    pub(super) fn new(
        out: Out<W>,
        service: &str,
        worker: &str,
        slot: u32,
        limit: u64,
    ) -> LineSink<W> {
        LineSink {
            out,
            lines: Lines::new(limit),
            identifier: format!("slotman-{worker}"),
            slot_fields: [
                ("SLOTMAN_SERVICE", service.to_owned()),
                ("SLOTMAN_WORKER", worker.to_owned()),
                ("SLOTMAN_SLOT", slot.to_string()),
            ],
            prefix: format!("{worker}#{slot}"),
        }
    }

    /// Bytes read from the handler; lines go out at the next [`Self::flush`].
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    /// [`Self::push`] and [`Self::flush`].
    pub(super) fn feed(&mut self, bytes: &[u8], job: &Option<JobTag>, all: bool) {
        self.push(bytes);
        self.flush(job, all);
    }

    /// Sends every complete line (and, with `all`, the unterminated rest)
    /// that the job's budget allows. A lost line must not stop the handler,
    /// and there is nowhere better to report a failed send: errors are
    /// ignored.
    pub(super) fn flush(&mut self, job: &Option<JobTag>, all: bool) {
        let LineSink {
            out,
            lines,
            identifier,
            slot_fields,
            prefix,
        } = self;
        match out {
            Out::Journal(sender) => {
                let fields = entry_fields(slot_fields, job);
                let mut last = LastWords::default();
                lines.take(all, |line| {
                    last.see(line);
                    let _ = sender.send(Priority::Info, identifier, line, &fields);
                });
                last.keep();
            }
            Out::Text(w) => {
                let mut text = Vec::new();
                let mut last = LastWords::default();
                lines.take(all, |line| {
                    last.see(line);
                    push_text_line(&mut text, prefix, line);
                });
                last.keep();
                if !text.is_empty() {
                    let _ = w.write_all(&text);
                }
            }
        }
    }

    /// The job `job` has ended: says what was dropped of it, if anything,
    /// and gives the next job a fresh budget.
    pub(super) fn end_job(&mut self, job: &Option<JobTag>) {
        let Some(dropped) = self.lines.end_job() else {
            return;
        };
        let whose = if job.is_some() {
            "this job's"
        } else {
            "the handler's"
        };
        let limit = match self.lines.limit() {
            l if l % (1 << 20) == 0 => format!("{} MiB", l >> 20),
            l => format!("{l} bytes"),
        };
        let marker = format!(
            "slotman: {} lines ({} bytes) of {whose} stderr dropped: over the per-job limit of {limit}",
            dropped.lines, dropped.bytes
        );
        match &mut self.out {
            Out::Journal(sender) => {
                let fields = entry_fields(&self.slot_fields, job);
                let _ = sender.send(
                    Priority::Warning,
                    &self.identifier,
                    marker.as_bytes(),
                    &fields,
                );
            }
            Out::Text(w) => {
                let mut text = Vec::new();
                push_text_line(&mut text, &self.prefix, marker.as_bytes());
                let _ = w.write_all(&text);
            }
        }
    }
}

/// The fields of a forwarded entry besides its message.
fn entry_fields<'a>(
    slot_fields: &'a [(&'static str, String); 3],
    job: &'a Option<JobTag>,
) -> Vec<(&'static str, &'a [u8])> {
    let mut fields: Vec<(&str, &[u8])> = slot_fields
        .iter()
        .map(|(k, v)| (*k, v.as_bytes()))
        .collect();
    if let Some(JobTag { function, handle }) = job {
        fields.push(("GEARMAN_FUNCTION", function.as_bytes()));
        fields.push(("GEARMAN_HANDLE", handle.as_bytes()));
    }
    fields
}

/// `[PREFIX] line\n`; bytes that are not UTF-8 become U+FFFD.
fn push_text_line(out: &mut Vec<u8>, prefix: &str, line: &[u8]) {
    out.push(b'[');
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"] ");
    out.extend_from_slice(String::from_utf8_lossy(line).as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::os::unix::net::UnixDatagram;

    use crate::systemd::journal::forward::{JOB_LOG_MAX, READ_MAX};
    use crate::systemd::journal::lines::MAX_LINE;

    /// A writer that keeps each write apart.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn text(&self) -> String {
            String::from_utf8(self.0.concat()).expect("text output is UTF-8")
        }
    }

    fn text_sink(limit: u64) -> LineSink<Writes> {
        LineSink::new(Out::Text(Writes::default()), "svc", "w", 1, limit)
    }

    fn written(sink: &LineSink<Writes>) -> &Writes {
        match &sink.out {
            Out::Text(w) => w,
            Out::Journal(_) => unreachable!("a text sink"),
        }
    }

    /// A sink sending journal entries to the returned socket.
    fn journal_sink(limit: u64) -> (LineSink<io::Sink>, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
        theirs.set_nonblocking(true).expect("non-blocking");
        let sink = LineSink::new(
            Out::Journal(JournalSender { socket: ours }),
            "svc",
            "w",
            1,
            limit,
        );
        (sink, theirs)
    }

    /// The entries waiting on `socket`, as their fields (values without
    /// newlines only).
    fn entries(socket: &UnixDatagram) -> Vec<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut datagram = vec![0u8; 256 * 1024];
        while let Ok(n) = socket.recv(&mut datagram) {
            let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
            out.push(
                text.lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            );
        }
        out
    }

    fn field<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn job(handle: &str) -> Option<JobTag> {
        Some(JobTag {
            function: "f".into(),
            handle: handle.into(),
        })
    }

    #[test]
    fn many_short_lines_go_out_in_one_write() {
        let mut sink = text_sink(u64::MAX);
        let input = b"ab\n".repeat(100_000);
        sink.feed(&input, &None, false);
        let w = written(&sink);
        assert_eq!(w.0.len(), 1, "one write for the batch");
        assert_eq!(w.text(), "[w#1] ab\n".repeat(100_000));
        // The journal: one entry a line, with the slot's and job's fields.
        let (mut sink, socket) = journal_sink(u64::MAX);
        sink.feed(b"one\ntwo\n\nthree", &job("H:1"), false);
        let got = entries(&socket);
        let messages: Vec<_> = got.iter().map(|e| field(e, "MESSAGE")).collect();
        assert_eq!(messages, [Some("one"), Some("two"), Some("")]);
        assert_eq!(field(&got[0], "GEARMAN_HANDLE"), Some("H:1"));
        assert_eq!(field(&got[0], "SLOTMAN_WORKER"), Some("w"));
        assert_eq!(field(&got[0], "PRIORITY"), Some("6"));
        sink.flush(&None, true);
        let got = entries(&socket);
        assert_eq!(field(&got[0], "MESSAGE"), Some("three"));
        assert_eq!(field(&got[0], "GEARMAN_HANDLE"), None);
    }

    #[test]
    fn lines_split_across_reads_at_every_offset() {
        let input = "alpha\nbeta\n\nγάμμα €\n".repeat(3) + "rest";
        let want = "[w#1] alpha\n[w#1] beta\n[w#1] \n[w#1] γάμμα €\n".repeat(3) + "[w#1] rest\n";
        let input = input.as_bytes();
        for cut in 0..=input.len() {
            let mut sink = text_sink(u64::MAX);
            sink.feed(&input[..cut], &None, false);
            sink.feed(&input[cut..], &None, false);
            sink.flush(&None, true);
            assert_eq!(written(&sink).text(), want, "cut at {cut}");
        }
        // A byte at a time.
        let mut sink = text_sink(u64::MAX);
        for b in input {
            sink.feed(&[*b], &None, false);
        }
        sink.flush(&None, true);
        assert_eq!(written(&sink).text(), want);
    }

    #[test]
    fn binary_and_invalid_utf8_do_not_panic() {
        let mut input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        // A long run of continuation bytes, and a lone lead byte at the end.
        input.extend_from_slice(&[0x80; 3 * MAX_LINE]);
        input.push(0xE2);
        for chunk in [1, 7, 4096, input.len()] {
            let mut sink = text_sink(u64::MAX);
            for part in input.chunks(chunk) {
                sink.feed(part, &None, false);
            }
            sink.flush(&None, true);
            let text = written(&sink).text();
            assert!(text.contains('\u{FFFD}'));
            let newlines = input.iter().filter(|&&b| b == b'\n').count();
            // Every newline ends a line; the run of 0x80 goes out in pieces.
            assert!(text.lines().count() > newlines, "chunk {chunk}");
            assert!(text.lines().all(|l| l.starts_with("[w#1] ")));
        }
        let (mut sink, socket) = journal_sink(u64::MAX);
        sink.feed(b"\xff\xfe\x00bin\n", &None, false);
        assert_eq!(entries(&socket).len(), 1);
    }

    #[test]
    fn past_a_jobs_limit_lines_are_dropped_and_counted() {
        let mut sink = text_sink(100);
        // 30 lines of 5 bytes: 20 fit, 10 (50 bytes) do not.
        sink.feed(&b"abcd\n".repeat(30), &job("H:1"), false);
        // Once over, a line that would fit is dropped too.
        sink.feed(b"\n", &job("H:1"), false);
        sink.end_job(&job("H:1"));
        // The next job has its whole budget; a job that stays under it
        // reports nothing.
        sink.feed(b"next\n", &job("H:2"), false);
        sink.end_job(&job("H:2"));
        sink.end_job(&None);
        let want = "[w#1] abcd\n".repeat(20)
            + "[w#1] slotman: 11 lines (51 bytes) of this job's stderr dropped: over the per-job limit of 100 bytes\n"
            + "[w#1] next\n";
        assert_eq!(written(&sink).text(), want);
        // In the journal, a warning with the job's fields.
        let (mut sink, socket) = journal_sink(2 << 20);
        let line = vec![b'y'; 1023];
        for _ in 0..2049 {
            sink.feed(&line, &job("H:3"), false);
            sink.feed(b"\n", &job("H:3"), false);
            // Keep the socket's buffer from filling.
            let _ = entries(&socket);
        }
        sink.end_job(&job("H:3"));
        let got = entries(&socket);
        let marker = got.last().expect("a marker entry");
        assert_eq!(
            field(marker, "MESSAGE"),
            Some("slotman: 1 lines (1024 bytes) of this job's stderr dropped: over the per-job limit of 2 MiB")
        );
        assert_eq!(field(marker, "PRIORITY"), Some("4"));
        assert_eq!(field(marker, "GEARMAN_HANDLE"), Some("H:3"));
    }

    /// Time for 4 MB of 4-byte lines through the sink, in reads of 64 KiB
    /// and in one piece, to text and to journal datagrams (a thread reads
    /// them). `cargo test --release --lib forwarding_4mb -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; prints timings"]
    fn forwarding_4mb_of_4_byte_lines() {
        let input = b"xxx\n".repeat(1_000_000);
        for limit in [u64::MAX, JOB_LOG_MAX] {
            for read in [READ_MAX, input.len()] {
                let mut sink = LineSink::new(Out::Text(io::sink()), "svc", "w", 1, limit);
                let start = std::time::Instant::now();
                for chunk in input.chunks(read) {
                    sink.feed(chunk, &None, false);
                }
                sink.end_job(&None);
                eprintln!(
                    "text, limit {limit}, reads of {read}: {:?}",
                    start.elapsed()
                );
                let (ours, theirs) = UnixDatagram::pair().expect("socketpair");
                let reader = std::thread::spawn(move || {
                    let mut datagram = vec![0u8; 64 * 1024];
                    let mut n = 0u64;
                    while let Ok(len) = theirs.recv(&mut datagram) {
                        if datagram[..len].windows(11).any(|w| w == b"PRIORITY=4\n") {
                            return n;
                        }
                        n += 1;
                    }
                    n
                });
                let mut sink = LineSink::<io::Sink>::new(
                    Out::Journal(JournalSender { socket: ours }),
                    "svc",
                    "w",
                    1,
                    limit,
                );
                let start = std::time::Instant::now();
                for chunk in input.chunks(read) {
                    sink.feed(chunk, &None, false);
                }
                let took = start.elapsed();
                // The end marker (a warning) stops the reader.
                let marker = b"PRIORITY=4\nMESSAGE=end\n";
                if let Out::Journal(j) = &sink.out {
                    j.socket.send(marker).expect("send end");
                }
                let entries = reader.join().expect("reader");
                eprintln!("journal, limit {limit}, reads of {read}: {took:?}, {entries} entries");
            }
        }
    }
}
