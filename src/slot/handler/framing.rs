//! The `stdio` handler framing of DESIGN.md as two `tokio_util` codecs; pure,
//! no I/O, each named by what it decodes: [`HandlerOutputCodec`] is slotman's
//! end (decodes what a handler writes, encodes jobs), [`HandlerInputCodec`]
//! the handler's end (decodes jobs; tests, Rust handlers).
//!
//! Every frame is one header line, then exactly `SIZE` raw bytes if the
//! header has a `SIZE`:
//!
//! ```text
//! handler → slotman   READY [FUNCTION...]
//!                     STATUS NUMERATOR DENOMINATOR
//!                     DATA SIZE       + SIZE bytes
//!                     WARNING SIZE    + SIZE bytes
//!                     COMPLETE SIZE   + SIZE bytes
//!                     FAIL
//!                     EXCEPTION SIZE  + SIZE bytes
//! slotman → handler   JOB FUNCTION HANDLE UNIQUE SIZE + SIZE bytes   (UNIQUE `-` when none)
//!                     JOBX FUNCTION_SIZE HANDLE_SIZE UNIQUE_SIZE SIZE
//!                          + function, handle, unique and payload bytes
//!                                                          (UNIQUE_SIZE `-` when none)
//! ```
//!
//! # How exact
//!
//! A header is words of printable ASCII (`!`..=`~`) separated by exactly one
//! space, ending in `"\n"`, at most [`MAX_HEADER`] bytes including the
//! newline. Nothing else is accepted: no `"\r\n"` (`"READY\r"` is an unknown
//! word), no leading, trailing or doubled spaces, no tabs. Numbers are plain
//! decimal digits (leading zeros allowed, no sign) that fit a `u64`. A `SIZE`
//! above the codec's maximum is refused as soon as the header is read, before
//! any of the body is buffered, so a decoder never holds more than one header
//! plus `max` bytes of body. Any violation is a [`FramingError`]; the stream
//! is then out of step and must be abandoned.
//!
//! # Two forms of a job
//!
//! A job goes as `JOB` when its function, handle and unique id are *plain
//! tokens* (non-empty printable ASCII without spaces, `!`..=`~`), the unique
//! id is not `-` (which means "none" there) and the line fits in
//! [`MAX_HEADER`]: the form handlers have always read. Any other job goes as
//! `JOBX`, whose header only has sizes: the function, handle, unique id and
//! payload follow it as raw bytes, in that order, so every byte Gearman can
//! carry reaches the handler exactly. `UNIQUE_SIZE` is `-` when the job has
//! no unique id (then no unique bytes follow), so "none" and a unique id of
//! `-` differ. An empty unique id is "none" in both forms, as in Gearman.
//! The four parts together are bounded by the codec's maximum, as a Gearman
//! packet is.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Longest header line accepted or produced, including its `"\n"`.
pub const MAX_HEADER: usize = 1024;

/// A frame a handler writes to slotman.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromHandler {
    /// Ready for jobs; sent once, before the first job. The functions it
    /// names (none for a plain `READY`) are what it serves, registered when
    /// the config lists none (the seed-style libraries send them).
    Ready(Vec<String>),
    /// Progress: WORK_STATUS.
    Status { numerator: u64, denominator: u64 },
    /// Partial result: WORK_DATA.
    Data(Bytes),
    /// WORK_WARNING.
    Warning(Bytes),
    /// The job's result: WORK_COMPLETE.
    Complete(Bytes),
    /// The job failed: WORK_FAIL.
    Fail,
    /// The job threw: WORK_EXCEPTION.
    Exception(Bytes),
}

impl FromHandler {
    /// The frame's body, if its kind has one.
    fn body(&self) -> Option<&Bytes> {
        match self {
            FromHandler::Data(b)
            | FromHandler::Warning(b)
            | FromHandler::Complete(b)
            | FromHandler::Exception(b) => Some(b),
            FromHandler::Ready(_) | FromHandler::Status { .. } | FromHandler::Fail => None,
        }
    }
}

/// Shows the header line (without the newline), e.g. `COMPLETE 5`; for logs.
impl fmt::Display for FromHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FromHandler::Ready(functions) => {
                f.write_str("READY")?;
                for function in functions {
                    write!(f, " {function}")?;
                }
                Ok(())
            }
            FromHandler::Status {
                numerator,
                denominator,
            } => write!(f, "STATUS {numerator} {denominator}"),
            FromHandler::Data(b) => write!(f, "DATA {}", b.len()),
            FromHandler::Warning(b) => write!(f, "WARNING {}", b.len()),
            FromHandler::Complete(b) => write!(f, "COMPLETE {}", b.len()),
            FromHandler::Fail => f.write_str("FAIL"),
            FromHandler::Exception(b) => write!(f, "EXCEPTION {}", b.len()),
        }
    }
}

/// The one frame slotman writes to a handler: a job, as exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFrame {
    /// Function name without the worker's prefix.
    pub function: Bytes,
    pub handle: Bytes,
    /// `None` when the job has no unique id; an empty one is sent as none.
    pub unique: Option<Bytes>,
    pub payload: Bytes,
}

/// Why a byte stream is not (or cannot be put into) the framing.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// No `"\n"` within the first [`MAX_HEADER`] bytes of a header.
    #[error("header line longer than {MAX_HEADER} bytes")]
    HeaderTooLong,
    /// The first word of a header is not a frame this side accepts.
    #[error("unknown frame {word:?}")]
    UnknownWord { word: String },
    /// A known frame with the wrong fields.
    #[error("bad header {line:?}: {why}")]
    BadHeader { line: String, why: &'static str },
    /// A `SIZE` above the limit, refused before buffering any of it.
    #[error("frame body of {size} bytes exceeds the limit of {max} bytes")]
    TooBig { size: u64, max: usize },
    /// The stream ended inside a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// slotman's end of a handler's pipes: decodes [`FromHandler`] frames,
/// encodes [`JobFrame`]s.
#[derive(Debug)]
pub struct HandlerOutputCodec {
    reader: Reader<FromHandlerHead>,
}

impl HandlerOutputCodec {
    /// A codec accepting bodies of at most `max` bytes (`worker.max_packet_size`).
    pub fn new(max: usize) -> Self {
        HandlerOutputCodec {
            reader: Reader::new(max),
        }
    }
}

/// A handler's end of its pipes: decodes [`JobFrame`]s, encodes
/// [`FromHandler`] frames. slotman itself only uses it in tests.
#[derive(Debug)]
pub struct HandlerInputCodec {
    reader: Reader<JobHead>,
}

impl HandlerInputCodec {
    /// A codec accepting bodies of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        HandlerInputCodec {
            reader: Reader::new(max),
        }
    }
}

/// What goes to the handler before a job's payload: the header line, and
/// for a `JOBX` the function, handle and unique id after it; checked
/// against `max` (the payload alone for `JOB`, all four parts for `JOBX`).
/// slotman writes this and then the payload itself, so that a large payload
/// is never copied.
pub fn job_header(
    function: &[u8],
    handle: &[u8],
    unique: Option<&[u8]>,
    size: usize,
    max: usize,
) -> Result<Vec<u8>, FramingError> {
    let unique = unique.filter(|u| !u.is_empty());
    let plain =
        is_token(function) && is_token(handle) && unique.is_none_or(|u| is_token(u) && u != b"-");
    if plain {
        let unique = unique.unwrap_or(b"-");
        let mut line = Vec::with_capacity(function.len() + handle.len() + unique.len() + 28);
        line.extend_from_slice(b"JOB ");
        for field in [function, handle, unique] {
            line.extend_from_slice(field);
            line.push(b' ');
        }
        line.extend_from_slice(format!("{size}\n").as_bytes());
        // A line too long for a handler's reader goes as JOBX instead.
        if line.len() <= MAX_HEADER {
            check_size(size as u64, max)?;
            return Ok(line);
        }
    }
    let names = function.len() + handle.len() + unique.map_or(0, <[u8]>::len);
    check_size(names as u64 + size as u64, max)?;
    let unique_size = unique.map_or_else(|| "-".to_owned(), |u| u.len().to_string());
    let line = format!(
        "JOBX {} {} {unique_size} {size}\n",
        function.len(),
        handle.len()
    );
    let mut head = Vec::with_capacity(line.len() + names);
    head.extend_from_slice(line.as_bytes());
    head.extend_from_slice(function);
    head.extend_from_slice(handle);
    head.extend_from_slice(unique.unwrap_or_default());
    Ok(head)
}

/// Non-empty printable ASCII without spaces: fits in a `JOB` line as is.
fn is_token(field: &[u8]) -> bool {
    !field.is_empty() && field.iter().all(u8::is_ascii_graphic)
}

impl Decoder for HandlerOutputCodec {
    type Item = FromHandler;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<FromHandler>, FramingError> {
        let Some((head, body)) = self.reader.decode(src)? else {
            return Ok(None);
        };
        Ok(Some(match head {
            FromHandlerHead::Ready(functions) => FromHandler::Ready(functions),
            FromHandlerHead::Status(numerator, denominator) => FromHandler::Status {
                numerator,
                denominator,
            },
            FromHandlerHead::Data => FromHandler::Data(body),
            FromHandlerHead::Warning => FromHandler::Warning(body),
            FromHandlerHead::Complete => FromHandler::Complete(body),
            FromHandlerHead::Fail => FromHandler::Fail,
            FromHandlerHead::Exception => FromHandler::Exception(body),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<FromHandler>, FramingError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => self.reader.at_eof(src).map(|()| None),
        }
    }
}

impl Encoder<JobFrame> for HandlerOutputCodec {
    type Error = FramingError;

    fn encode(&mut self, job: JobFrame, dst: &mut BytesMut) -> Result<(), FramingError> {
        let header = job_header(
            &job.function,
            &job.handle,
            job.unique.as_deref(),
            job.payload.len(),
            self.reader.max,
        )?;
        dst.reserve(header.len() + job.payload.len());
        dst.put_slice(&header);
        dst.put_slice(&job.payload);
        Ok(())
    }
}

impl Decoder for HandlerInputCodec {
    type Item = JobFrame;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<JobFrame>, FramingError> {
        let Some((head, mut body)) = self.reader.decode(src)? else {
            return Ok(None);
        };
        Ok(Some(match head {
            JobHead::Plain {
                function,
                handle,
                unique,
            } => JobFrame {
                function,
                handle,
                unique,
                payload: body,
            },
            // The body is the sum of these sizes (`JobHead::parse`).
            JobHead::Sized {
                function,
                handle,
                unique,
            } => JobFrame {
                function: body.split_to(function),
                handle: body.split_to(handle),
                unique: unique.map(|n| body.split_to(n)),
                payload: body,
            },
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<JobFrame>, FramingError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => self.reader.at_eof(src).map(|()| None),
        }
    }
}

impl Encoder<FromHandler> for HandlerInputCodec {
    type Error = FramingError;

    fn encode(&mut self, frame: FromHandler, dst: &mut BytesMut) -> Result<(), FramingError> {
        let body = frame.body();
        if let Some(body) = body {
            check_size(body.len() as u64, self.reader.max)?;
        }
        let header = frame.to_string();
        dst.reserve(header.len() + 1 + body.map_or(0, Bytes::len));
        dst.put_slice(header.as_bytes());
        dst.put_u8(b'\n');
        if let Some(body) = body {
            dst.put_slice(body);
        }
        Ok(())
    }
}

/// A parsed header: what it is, and how many body bytes follow it.
trait Head: Sized {
    fn parse(word: &[u8], fields: &[&[u8]], max: usize) -> Result<(Self, usize), HeadError>;
}

/// A header problem before the line is attached for the message.
enum HeadError {
    Unknown,
    Bad(&'static str),
    TooBig(u64),
}

/// Header of a handler → slotman frame.
#[derive(Debug)]
enum FromHandlerHead {
    Ready(Vec<String>),
    Status(u64, u64),
    Data,
    Warning,
    Complete,
    Fail,
    Exception,
}

impl Head for FromHandlerHead {
    fn parse(word: &[u8], fields: &[&[u8]], max: usize) -> Result<(Self, usize), HeadError> {
        let sized = |head: FromHandlerHead| match fields {
            [size] => Ok((head, parse_size(size, max)?)),
            _ => Err(HeadError::Bad("expected one field, SIZE")),
        };
        let bare = |head: FromHandlerHead| match fields {
            [] => Ok((head, 0)),
            _ => Err(HeadError::Bad("expected no fields")),
        };
        match word {
            b"READY" => {
                // Fields are printable ASCII words already (`parse_line`).
                let mut functions: Vec<String> = Vec::with_capacity(fields.len());
                for field in fields {
                    let name = String::from_utf8_lossy(field).into_owned();
                    if functions.contains(&name) {
                        return Err(HeadError::Bad("a function is announced twice"));
                    }
                    functions.push(name);
                }
                Ok((FromHandlerHead::Ready(functions), 0))
            }
            b"FAIL" => bare(FromHandlerHead::Fail),
            b"DATA" => sized(FromHandlerHead::Data),
            b"WARNING" => sized(FromHandlerHead::Warning),
            b"COMPLETE" => sized(FromHandlerHead::Complete),
            b"EXCEPTION" => sized(FromHandlerHead::Exception),
            b"STATUS" => match fields {
                [num, den] => match (parse_number(num), parse_number(den)) {
                    (Some(num), Some(den)) => Ok((FromHandlerHead::Status(num, den), 0)),
                    _ => Err(HeadError::Bad(
                        "NUMERATOR and DENOMINATOR must be decimal numbers",
                    )),
                },
                _ => Err(HeadError::Bad("expected two fields, NUMERATOR DENOMINATOR")),
            },
            _ => Err(HeadError::Unknown),
        }
    }
}

/// Header of a job frame.
#[derive(Debug)]
enum JobHead {
    /// `JOB`: the fields were in the line; the body is the payload.
    Plain {
        function: Bytes,
        handle: Bytes,
        unique: Option<Bytes>,
    },
    /// `JOBX`: the body starts with the fields, of these sizes.
    Sized {
        function: usize,
        handle: usize,
        unique: Option<usize>,
    },
}

impl Head for JobHead {
    fn parse(word: &[u8], fields: &[&[u8]], max: usize) -> Result<(Self, usize), HeadError> {
        match word {
            b"JOB" => {
                let [function, handle, unique, size] = fields else {
                    return Err(HeadError::Bad(
                        "expected four fields, FUNCTION HANDLE UNIQUE SIZE",
                    ));
                };
                let size = parse_size(size, max)?;
                let unique = match *unique {
                    b"-" => None,
                    u => Some(Bytes::copy_from_slice(u)),
                };
                let head = JobHead::Plain {
                    function: Bytes::copy_from_slice(function),
                    handle: Bytes::copy_from_slice(handle),
                    unique,
                };
                Ok((head, size))
            }
            b"JOBX" => {
                let [function, handle, unique, size] = fields else {
                    return Err(HeadError::Bad(
                        "expected four fields, FUNCTION_SIZE HANDLE_SIZE UNIQUE_SIZE SIZE",
                    ));
                };
                let number = |f: &[u8]| {
                    parse_number(f).ok_or(HeadError::Bad("sizes must be decimal numbers"))
                };
                let unique = match *unique {
                    b"-" => None,
                    u => Some(number(u)?),
                };
                let sizes = [
                    number(function)?,
                    number(handle)?,
                    unique.unwrap_or(0),
                    number(size)?,
                ];
                let total = sizes
                    .iter()
                    .try_fold(0u64, |sum, &n| sum.checked_add(n))
                    .unwrap_or(u64::MAX);
                // Each part is at most the total, so each fits a usize too.
                let body = match usize::try_from(total) {
                    Ok(n) if n <= max => n,
                    _ => return Err(HeadError::TooBig(total)),
                };
                let head = JobHead::Sized {
                    function: sizes[0] as usize,
                    handle: sizes[1] as usize,
                    unique: unique.map(|n| n as usize),
                };
                Ok((head, body))
            }
            _ => Err(HeadError::Unknown),
        }
    }
}

/// The decoding state machine shared by both codecs: a header, then its body.
#[derive(Debug)]
struct Reader<H> {
    max: usize,
    /// A header already taken off the buffer, waiting for its body.
    pending: Option<(H, usize)>,
}

impl<H: Head> Reader<H> {
    fn new(max: usize) -> Self {
        Reader { max, pending: None }
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<(H, Bytes)>, FramingError> {
        if self.pending.is_none() {
            let Some(line) = take_line(src)? else {
                return Ok(None);
            };
            self.pending = Some(parse_line::<H>(&line, self.max)?);
        }
        let size = self.pending.as_ref().map_or(0, |(_, size)| *size);
        if src.len() < size {
            // Bounded: `size` was checked against `max` when the header was parsed.
            src.reserve(size - src.len());
            return Ok(None);
        }
        match self.pending.take() {
            Some((head, size)) => Ok(Some((head, src.split_to(size).freeze()))),
            None => Ok(None),
        }
    }

    /// At end of stream, after `decode` returned `None`: a clean end only
    /// between frames.
    fn at_eof(&mut self, src: &BytesMut) -> Result<(), FramingError> {
        if src.is_empty() && self.pending.is_none() {
            Ok(())
        } else {
            Err(FramingError::Truncated)
        }
    }
}

/// Takes one whole header line (without its `"\n"`) off the buffer.
fn take_line(src: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
    let window = &src[..src.len().min(MAX_HEADER)];
    match window.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let mut line = src.split_to(end + 1);
            line.truncate(end);
            Ok(Some(line))
        }
        None if src.len() >= MAX_HEADER => Err(FramingError::HeaderTooLong),
        None => Ok(None),
    }
}

fn parse_line<H: Head>(line: &[u8], max: usize) -> Result<(H, usize), FramingError> {
    let mut words = line.split(|&b| b == b' ');
    let word = words.next().unwrap_or_default();
    let fields: Vec<&[u8]> = words.collect();
    let bad = |why| FramingError::BadHeader {
        line: truncated(&line.escape_ascii().to_string()),
        why,
    };
    let printable = |w: &[u8]| !w.is_empty() && w.iter().all(u8::is_ascii_graphic);
    if !printable(word) {
        return Err(match word.is_empty() {
            true => bad("empty or starting with a space"),
            false => FramingError::UnknownWord {
                word: truncated(&word.escape_ascii().to_string()),
            },
        });
    }
    if !fields.iter().all(|f| printable(f)) {
        return Err(bad(
            "fields must be printable ASCII separated by single spaces",
        ));
    }
    H::parse(word, &fields, max).map_err(|e| match e {
        HeadError::Unknown => FramingError::UnknownWord {
            word: truncated(&word.escape_ascii().to_string()),
        },
        HeadError::Bad(why) => bad(why),
        HeadError::TooBig(size) => FramingError::TooBig { size, max },
    })
}

/// A plain decimal number that fits a `u64`.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    field.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn parse_size(field: &[u8], max: usize) -> Result<usize, HeadError> {
    let size = parse_number(field).ok_or(HeadError::Bad("SIZE must be a decimal number"))?;
    match usize::try_from(size) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(HeadError::TooBig(size)),
    }
}

fn check_size(size: u64, max: usize) -> Result<(), FramingError> {
    match usize::try_from(size) {
        Ok(n) if n <= max => Ok(()),
        _ => Err(FramingError::TooBig { size, max }),
    }
}

/// At most 80 characters of `s`, for error messages about untrusted bytes.
fn truncated(s: &str) -> String {
    const LIMIT: usize = 80;
    match s.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 4096;

    fn decode_all(
        codec: &mut HandlerOutputCodec,
        bytes: &[u8],
    ) -> Result<Vec<FromHandler>, FramingError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    fn one(bytes: &[u8]) -> Result<Vec<FromHandler>, FramingError> {
        decode_all(&mut HandlerOutputCodec::new(MAX), bytes)
    }

    fn encode_replies(frames: &[FromHandler]) -> BytesMut {
        let mut codec = HandlerInputCodec::new(MAX);
        let mut buf = BytesMut::new();
        for f in frames {
            codec
                .encode(f.clone(), &mut buf)
                .expect("frames in tests fit");
        }
        buf
    }

    #[test]
    fn decodes_every_handler_frame() {
        let input = b"READY\nSTATUS 1 10\nDATA 3\na\nbWARNING 0\nCOMPLETE 2\nokFAIL\nEXCEPTION 4\n\0\xff\r\n";
        let frames = one(input).expect("valid input");
        assert_eq!(
            frames,
            vec![
                FromHandler::Ready(vec![]),
                FromHandler::Status {
                    numerator: 1,
                    denominator: 10
                },
                FromHandler::Data(Bytes::from_static(b"a\nb")),
                FromHandler::Warning(Bytes::new()),
                FromHandler::Complete(Bytes::from_static(b"ok")),
                FromHandler::Fail,
                FromHandler::Exception(Bytes::from_static(b"\0\xff\r\n")),
            ]
        );
    }

    #[test]
    fn ready_may_name_functions() {
        assert_eq!(
            one(b"READY reverse wait\nREADY\n").expect("valid"),
            vec![
                FromHandler::Ready(vec!["reverse".into(), "wait".into()]),
                FromHandler::Ready(vec![]),
            ]
        );
        assert_eq!(
            FromHandler::Ready(vec!["a".into(), "b".into()]).to_string(),
            "READY a b"
        );
    }

    #[test]
    fn waits_for_whole_frames() {
        let mut codec = HandlerOutputCodec::new(MAX);
        let mut buf = BytesMut::from(&b"COMPL"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"ETE 5\nab");
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"cde");
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(FromHandler::Complete(b))) if b == "abcde"
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_what_is_not_exactly_the_framing() {
        let cases: &[&[u8]] = &[
            b"READY\r\n",
            b"ready\n",
            b"HELLO\n",
            b"\n",
            b" READY\n",
            b"READY \n",
            b"READY now now\n",
            b"READY  now\n",
            b"FAIL 0\n",
            b"STATUS 1\n",
            b"STATUS 1 2 3\n",
            b"STATUS 1  2\n",
            b"STATUS -1 2\n",
            b"STATUS 1 +2\n",
            b"STATUS 1 18446744073709551616\n",
            b"COMPLETE\n",
            b"COMPLETE 0x10\n",
            b"COMPLETE 1 2\n",
            b"COMPLETE\t1\n",
            b"DATA 4097\n",
            b"DATA 99999999999999999999999999\n",
            b"JOB f h - 0\n",
            b"READY\xff\n",
        ];
        for case in cases {
            let got = one(case);
            assert!(
                got.is_err(),
                "{:?} gave {got:?}",
                case.escape_ascii().to_string()
            );
        }
        assert!(matches!(
            one(b"DATA 4097\n"),
            Err(FramingError::TooBig { size: 4097, .. })
        ));
        assert!(matches!(
            one(b"READY\r\n"),
            Err(FramingError::UnknownWord { .. })
        ));
    }

    #[test]
    fn big_numbers_fit() {
        assert_eq!(
            one(b"STATUS 18446744073709551615 007\n").expect("valid"),
            vec![FromHandler::Status {
                numerator: u64::MAX,
                denominator: 7
            }]
        );
    }

    #[test]
    fn header_is_bounded() {
        let mut codec = HandlerOutputCodec::new(MAX);
        let mut buf = BytesMut::from(&[b'A'; MAX_HEADER - 1][..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.put_u8(b'A');
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::HeaderTooLong)
        ));
    }

    #[test]
    fn oversized_body_is_refused_before_buffering() {
        let mut codec = HandlerOutputCodec::new(16);
        let mut buf = BytesMut::from(&b"DATA 17\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FramingError::TooBig { size: 17, max: 16 })
        ));
        let mut buf = BytesMut::from(&b"DATA 16\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert!(buf.capacity() < 1024, "reserved {}", buf.capacity());
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        assert!(matches!(
            one(b"COMPLETE 5\nabc"),
            Err(FramingError::Truncated)
        ));
        assert!(matches!(one(b"READY"), Err(FramingError::Truncated)));
        assert!(matches!(one(b""), Ok(v) if v.is_empty()));
    }

    fn header(function: &str, handle: &str, unique: Option<&[u8]>) -> Vec<u8> {
        job_header(function.as_bytes(), handle.as_bytes(), unique, 5, MAX).expect("fits")
    }

    #[test]
    fn plain_jobs_keep_the_job_line() {
        assert_eq!(
            header("reverse", "H:host:1", None),
            b"JOB reverse H:host:1 - 5\n"
        );
        assert_eq!(header("f", "h", Some(b"u-1")), b"JOB f h u-1 5\n");
        assert_eq!(header("f", "h", Some(b"")), b"JOB f h - 5\n");
        assert!(matches!(
            job_header(b"f", b"h", None, MAX + 1, MAX),
            Err(FramingError::TooBig { .. })
        ));
    }

    /// Function, handle, unique id, and what goes before the payload.
    type Case<'a> = (&'a str, &'a str, Option<&'a [u8]>, &'a [u8]);

    #[test]
    fn other_jobs_go_as_jobx_with_exact_bytes() {
        let cases: &[Case] = &[
            ("f", "h", Some(b"a b"), b"JOBX 1 1 3 5\nfha b"),
            ("f", "h", Some(b"tab\there"), b"JOBX 1 1 8 5\nfhtab\there"),
            ("f", "h", Some(b"new\nline"), b"JOBX 1 1 8 5\nfhnew\nline"),
            ("f", "h", Some(b"-"), b"JOBX 1 1 1 5\nfh-"),
            ("f", "h", Some(b"\xff\xfe"), b"JOBX 1 1 2 5\nfh\xff\xfe"),
            (
                "r\u{e9}sum\u{e9}",
                "h",
                None,
                b"JOBX 8 1 - 5\nr\xc3\xa9sum\xc3\xa9h",
            ),
            ("a b", "h", Some(b"u"), b"JOBX 3 1 1 5\na bhu"),
            ("", "h", None, b"JOBX 0 1 - 5\nh"),
            ("f", "h\n", None, b"JOBX 1 2 - 5\nfh\n"),
        ];
        for (function, handle, unique, want) in cases {
            let got = header(function, handle, *unique);
            assert_eq!(
                got.escape_ascii().to_string(),
                want.escape_ascii().to_string()
            );
        }
        // A plain job whose line would pass the header limit.
        let long = "x".repeat(MAX_HEADER);
        let got = header(&long, "h", None);
        assert!(got.starts_with(format!("JOBX {MAX_HEADER} 1 - 5\n").as_bytes()));
        // JOBX counts every part against the limit.
        assert!(matches!(
            job_header(b"f", b"h", Some(b"a b"), MAX - 4, MAX),
            Err(FramingError::TooBig { size, .. }) if size == MAX as u64 + 1
        ));
        assert!(job_header(b"f", b"h", Some(b"a b"), MAX - 5, MAX).is_ok());
    }

    fn jobs(bytes: &[u8]) -> Result<Vec<JobFrame>, FramingError> {
        let mut codec = HandlerInputCodec::new(MAX);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    fn frame(function: &[u8], handle: &[u8], unique: Option<&[u8]>, payload: &[u8]) -> JobFrame {
        JobFrame {
            function: Bytes::copy_from_slice(function),
            handle: Bytes::copy_from_slice(handle),
            unique: unique.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn handler_codec_reads_both_forms() {
        let got = jobs(b"JOB f H:1 - 2\nhiJOB g H:2 u 0\nJOBX 1 2 - 1\nfH:xJOBX 0 0 1 0\n-")
            .expect("valid");
        assert_eq!(
            got,
            vec![
                frame(b"f", b"H:1", None, b"hi"),
                frame(b"g", b"H:2", Some(b"u"), b""),
                frame(b"f", b"H:", None, b"x"),
                frame(b"", b"", Some(b"-"), b""),
            ]
        );
        for bad in [
            &b"READY\n"[..],
            b"JOBX 1 1 1\n",
            b"JOBX 1 1 - 1 1\n",
            b"JOBX a 1 - 0\n",
            b"JOBX 1 1 -1 0\n",
            b"JOBX 1 1 - -\n",
            b"JOBX 18446744073709551615 1 - 0\n",
            b"JOBX 4000 97 - 0\n",
            b"JOBX 1 1 - 0\nf",
        ] {
            assert!(jobs(bad).is_err(), "{}", bad.escape_ascii());
        }
        assert!(matches!(
            jobs(b"JOBX 4000 96 1 0\n"),
            Err(FramingError::TooBig { size: 4097, .. })
        ));
    }

    fn word() -> impl Strategy<Value = String> {
        "[!-~]{1,20}"
    }

    fn body() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
    }

    fn reply() -> impl Strategy<Value = FromHandler> {
        prop_oneof![
            proptest::collection::vec(word(), 0..4).prop_map(|mut names| {
                names.dedup();
                names.sort();
                names.dedup();
                FromHandler::Ready(names)
            }),
            Just(FromHandler::Fail),
            (any::<u64>(), any::<u64>()).prop_map(|(numerator, denominator)| FromHandler::Status {
                numerator,
                denominator
            }),
            body().prop_map(FromHandler::Data),
            body().prop_map(FromHandler::Warning),
            body().prop_map(FromHandler::Complete),
            body().prop_map(FromHandler::Exception),
        ]
    }

    fn any_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), len).prop_map(Bytes::from)
    }

    /// Any bytes at all, with plain tokens, `-` and spaces made likely.
    fn field() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            word().prop_map(Bytes::from),
            Just(Bytes::from_static(b"-")),
            "[ -~]{0,12}".prop_map(Bytes::from),
            any_bytes(0..12),
        ]
    }

    fn job() -> impl Strategy<Value = JobFrame> {
        (
            field(),
            field(),
            proptest::option::of(field().prop_filter("empty means none", |u| !u.is_empty())),
            body(),
        )
            .prop_map(|(function, handle, unique, payload)| JobFrame {
                function,
                handle,
                unique,
                payload,
            })
    }

    /// Feeds `bytes` in two pieces split at `at`, decoding after each piece.
    fn decode_split<D: Decoder<Error = FramingError>>(
        codec: &mut D,
        bytes: &[u8],
        at: usize,
    ) -> Result<Vec<D::Item>, FramingError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        buf.extend_from_slice(&bytes[..at]);
        while let Some(f) = codec.decode(&mut buf)? {
            out.push(f);
        }
        buf.extend_from_slice(&bytes[at..]);
        while let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn replies_round_trip_split_anywhere(frames in proptest::collection::vec(reply(), 0..5)) {
            let bytes = encode_replies(&frames);
            for at in 0..=bytes.len() {
                let got = decode_split(&mut HandlerOutputCodec::new(MAX), &bytes, at).ok();
                prop_assert_eq!(got.as_ref(), Some(&frames), "split at {}", at);
            }
        }

        #[test]
        fn jobs_round_trip_split_anywhere(jobs in proptest::collection::vec(job(), 0..4)) {
            let mut bytes = BytesMut::new();
            let mut enc = HandlerOutputCodec::new(MAX);
            for j in &jobs {
                prop_assert!(enc.encode(j.clone(), &mut bytes).is_ok());
            }
            for at in 0..=bytes.len() {
                let got = decode_split(&mut HandlerInputCodec::new(MAX), &bytes, at).ok();
                prop_assert_eq!(got.as_ref(), Some(&jobs), "split at {}", at);
            }
        }

        #[test]
        fn plain_tokens_still_go_as_job(
            function in word(),
            handle in word(),
            unique in proptest::option::of(word().prop_filter("`-` means none", |u| u != "-")),
            size in 0..=MAX,
        ) {
            let got = job_header(
                function.as_bytes(),
                handle.as_bytes(),
                unique.as_deref().map(str::as_bytes),
                size,
                MAX,
            );
            let want = format!("JOB {function} {handle} {} {size}\n", unique.as_deref().unwrap_or("-"));
            prop_assert_eq!(got.ok(), Some(want.into_bytes()));
        }

        #[test]
        fn byte_at_a_time(frames in proptest::collection::vec(reply(), 0..5)) {
            let bytes = encode_replies(&frames);
            let mut codec = HandlerOutputCodec::new(MAX);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in bytes.iter() {
                buf.put_u8(*b);
                while let Some(f) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn garbage_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            max in 0usize..64,
        ) {
            let mut replies = HandlerOutputCodec::new(max);
            let mut jobs = HandlerInputCodec::new(max);
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            let (mut a_ok, mut b_ok) = (true, true);
            for chunk in &chunks {
                a.extend_from_slice(chunk);
                b.extend_from_slice(chunk);
                while a_ok {
                    match replies.decode(&mut a) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => a_ok = false,
                    }
                }
                while b_ok {
                    match jobs.decode(&mut b) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => b_ok = false,
                    }
                }
                prop_assert!(a.capacity() <= 4 * (MAX_HEADER + max) + 64);
            }
            if a_ok {
                let _ = replies.decode_eof(&mut a);
            }
            if b_ok {
                let _ = jobs.decode_eof(&mut b);
            }
        }

        #[test]
        fn mutated_frames_never_panic(
            frames in proptest::collection::vec(reply(), 1..4),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode_replies(&frames).to_vec();
            for (i, v) in flips {
                let at = i.index(bytes.len());
                bytes[at] = v;
            }
            let _ = one(&bytes);
        }
    }
}
