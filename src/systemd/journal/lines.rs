//! A handler's stderr cut into lines, each job held to a budget: pure,
//! bytes in, lines and counts out.

/// Longest handler line forwarded as one entry; longer lines are split.
pub(super) const MAX_LINE: usize = 16 * 1024;

/// Lines of a handler's stderr, each job held to a budget: pure, bytes in,
/// lines and counts out. Linear: each byte is scanned once and moved once.
pub(super) struct Lines {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline (an unterminated line, so far).
    scanned: usize,
    limit: u64,
    /// Bytes the current job logged.
    used: u64,
    dropped: Dropped,
}

/// What was dropped of one job's output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dropped {
    pub(super) lines: u64,
    pub(super) bytes: u64,
}

impl Lines {
    pub(super) fn new(limit: u64) -> Lines {
        Lines {
            buf: Vec::new(),
            scanned: 0,
            limit,
            used: 0,
            dropped: Dropped::default(),
        }
    }

    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// An unterminated line is waiting for its end.
    pub(super) fn partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The current job is over its budget.
    pub(super) fn dropping(&self) -> bool {
        self.dropped.lines > 0
    }

    /// Calls `emit` with each complete line, without its newline, that the
    /// job's budget allows (and, with `all`, with the unterminated rest);
    /// a line longer than [`MAX_LINE`] goes out in pieces. Once a job is
    /// over its budget, the rest of its lines are counted, not emitted.
    pub(super) fn take(&mut self, all: bool, mut emit: impl FnMut(&[u8])) {
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            // A newline right after MAX_LINE bytes still ends a whole line.
            let window = &rest[..rest.len().min(MAX_LINE + 1)];
            let from = self.scanned.saturating_sub(start).min(window.len());
            let (line, used) = match window[from..].iter().position(|&b| b == b'\n') {
                Some(i) => (from + i, from + i + 1),
                None if rest.len() > MAX_LINE => {
                    let cut = piece_end(rest);
                    (cut, cut)
                }
                None if all && !rest.is_empty() => (rest.len(), rest.len()),
                None => break,
            };
            let cost = used as u64;
            if !self.dropping() && self.used.saturating_add(cost) <= self.limit {
                self.used += cost;
                emit(&rest[..line]);
            } else {
                self.dropped.lines += 1;
                self.dropped.bytes += cost;
            }
            start += used;
        }
        self.buf.drain(..start);
        // What is left was scanned whole: shorter than a piece, no newline.
        self.scanned = self.buf.len();
    }

    /// The job is over: what was dropped of it, if anything. The next job
    /// starts with the whole budget.
    pub(super) fn end_job(&mut self) -> Option<Dropped> {
        self.used = 0;
        let dropped = std::mem::take(&mut self.dropped);
        (dropped.lines > 0).then_some(dropped)
    }
}

/// Where to cut a line longer than [`MAX_LINE`]: at `MAX_LINE`, or up to
/// three bytes before, so as not to split a UTF-8 character (bytes that are
/// not UTF-8 are cut anywhere).
fn piece_end(line: &[u8]) -> usize {
    let continuation = |i: usize| line.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    (MAX_LINE - 3..=MAX_LINE)
        .rev()
        .find(|&i| !continuation(i))
        .unwrap_or(MAX_LINE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_line_goes_out_in_pieces_that_keep_characters_whole() {
        // Misaligned two-byte characters: a cut at MAX_LINE would split one.
        let line = "a".to_owned() + &"é".repeat(3 * MAX_LINE / 2 + 7);
        let mut lines = Lines::new(u64::MAX);
        let mut pieces = Vec::new();
        for chunk in line.as_bytes().chunks(1000) {
            lines.push(chunk);
            lines.take(false, |p| pieces.push(p.to_vec()));
        }
        assert_eq!(pieces.len(), 3, "whole pieces before the line ends");
        lines.push(b"\n");
        lines.take(false, |p| pieces.push(p.to_vec()));
        assert!(!lines.partial());
        let text: Vec<&str> = pieces
            .iter()
            .map(|p| std::str::from_utf8(p).expect("whole characters"))
            .collect();
        // The first cut moved back a byte, off the middle of an `é`.
        assert_eq!(text[0].len(), MAX_LINE - 1);
        assert!(text.iter().all(|p| p.len() <= MAX_LINE));
        assert_eq!(text.concat(), line);
        // Exactly MAX_LINE bytes and a newline: one line, not a piece and an
        // empty line.
        let mut lines = Lines::new(u64::MAX);
        let mut got = Vec::new();
        lines.push(&[b'x'; MAX_LINE]);
        lines.take(false, |p| got.push(p.len()));
        lines.push(b"\n");
        lines.take(false, |p| got.push(p.len()));
        assert_eq!(got, [MAX_LINE]);
    }
}
