//! The `stdio` handler framing of DESIGN.md as two `tokio_util` codecs; pure,
//! no I/O. [`SlotmanCodec`] is slotman's end (decodes what a handler writes,
//! encodes jobs), [`HandlerCodec`] the handler's end (tests, Rust handlers).
//!
//! Every frame is one header line, then exactly `SIZE` raw bytes if the
//! header has a `SIZE`:
//!
//! ```text
//! handler → slotman   READY
//!                     STATUS NUMERATOR DENOMINATOR
//!                     DATA SIZE       + SIZE bytes
//!                     WARNING SIZE    + SIZE bytes
//!                     COMPLETE SIZE   + SIZE bytes
//!                     FAIL
//!                     EXCEPTION SIZE  + SIZE bytes
//! slotman → handler   JOB FUNCTION HANDLE UNIQUE SIZE + SIZE bytes   (UNIQUE `-` when none)
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
//! A job's `FUNCTION`, `HANDLE` and `UNIQUE` must be printable ASCII without
//! spaces to fit in a header; a job that does not fit is refused by the
//! encoder ([`FramingError::Unframeable`]). An empty unique id is sent as `-`,
//! and so is the unique id `"-"` itself: a handler sees both as "none".

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Longest header line accepted or produced, including its `"\n"`.
pub const MAX_HEADER: usize = 1024;

/// A frame a handler writes to slotman.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromHandler {
    /// Ready for jobs; sent once, before the first job.
    Ready,
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
            FromHandler::Ready | FromHandler::Status { .. } | FromHandler::Fail => None,
        }
    }
}

/// Shows the header line (without the newline), e.g. `COMPLETE 5`; for logs.
impl fmt::Display for FromHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FromHandler::Ready => f.write_str("READY"),
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

/// The one frame slotman writes to a handler: a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFrame {
    /// Function name without the worker's prefix.
    pub function: String,
    pub handle: String,
    /// `None` when the job has no unique id (sent as `-`).
    pub unique: Option<String>,
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
    /// A job field that cannot be written into a header.
    #[error("{field} {value:?} cannot be framed: {why}")]
    Unframeable {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    /// Reading or writing the underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// slotman's end of a handler's pipes: decodes [`FromHandler`] frames,
/// encodes [`JobFrame`]s.
#[derive(Debug)]
pub struct SlotmanCodec {
    reader: Reader<FromHandlerHead>,
}

impl SlotmanCodec {
    /// A codec accepting bodies of at most `max` bytes (`worker.max_packet_size`).
    pub fn new(max: usize) -> Self {
        SlotmanCodec {
            reader: Reader::new(max),
        }
    }
}

/// A handler's end of its pipes: decodes [`JobFrame`]s, encodes
/// [`FromHandler`] frames. slotman itself only uses it in tests.
#[derive(Debug)]
pub struct HandlerCodec {
    reader: Reader<JobHead>,
}

impl HandlerCodec {
    /// A codec accepting bodies of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        HandlerCodec {
            reader: Reader::new(max),
        }
    }
}

/// The header line of a job frame, `"\n"` included, after checking that
/// every field fits and `size` is at most `max`. slotman writes this and then
/// the payload itself, so that a large payload is never copied.
pub fn job_header(
    function: &str,
    handle: &str,
    unique: Option<&str>,
    size: usize,
    max: usize,
) -> Result<Vec<u8>, FramingError> {
    check_word("function", function)?;
    check_word("handle", handle)?;
    let unique = match unique {
        None | Some("") => "-",
        Some(u) => u,
    };
    check_word("unique id", unique)?;
    check_size(size as u64, max)?;
    let line = format!("JOB {function} {handle} {unique} {size}\n");
    if line.len() > MAX_HEADER {
        return Err(FramingError::Unframeable {
            field: "job header",
            value: truncated(line.trim_end()),
            why: "longer than the header limit",
        });
    }
    Ok(line.into_bytes())
}

impl Decoder for SlotmanCodec {
    type Item = FromHandler;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<FromHandler>, FramingError> {
        let Some((head, body)) = self.reader.decode(src)? else {
            return Ok(None);
        };
        Ok(Some(match head {
            FromHandlerHead::Ready => FromHandler::Ready,
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

impl Encoder<JobFrame> for SlotmanCodec {
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

impl Decoder for HandlerCodec {
    type Item = JobFrame;
    type Error = FramingError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<JobFrame>, FramingError> {
        let Some((head, payload)) = self.reader.decode(src)? else {
            return Ok(None);
        };
        Ok(Some(JobFrame {
            function: head.function,
            handle: head.handle,
            unique: head.unique,
            payload,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<JobFrame>, FramingError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => self.reader.at_eof(src).map(|()| None),
        }
    }
}

impl Encoder<FromHandler> for HandlerCodec {
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
    Ready,
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
            b"READY" => bare(FromHandlerHead::Ready),
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
struct JobHead {
    function: String,
    handle: String,
    unique: Option<String>,
}

impl Head for JobHead {
    fn parse(word: &[u8], fields: &[&[u8]], max: usize) -> Result<(Self, usize), HeadError> {
        if word != b"JOB" {
            return Err(HeadError::Unknown);
        }
        let [function, handle, unique, size] = fields else {
            return Err(HeadError::Bad(
                "expected four fields, FUNCTION HANDLE UNIQUE SIZE",
            ));
        };
        let size = parse_size(size, max)?;
        // The line was checked to be printable ASCII, so this is lossless.
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let unique = match *unique {
            b"-" => None,
            u => Some(text(u)),
        };
        Ok((
            JobHead {
                function: text(function),
                handle: text(handle),
                unique,
            },
            size,
        ))
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

fn check_word(field: &'static str, value: &str) -> Result<(), FramingError> {
    let why = if value.is_empty() {
        "it is empty"
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces fits in a header"
    } else {
        return Ok(());
    };
    Err(FramingError::Unframeable {
        field,
        value: truncated(value),
        why,
    })
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
        codec: &mut SlotmanCodec,
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
        decode_all(&mut SlotmanCodec::new(MAX), bytes)
    }

    fn encode_replies(frames: &[FromHandler]) -> BytesMut {
        let mut codec = HandlerCodec::new(MAX);
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
                FromHandler::Ready,
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
    fn waits_for_whole_frames() {
        let mut codec = SlotmanCodec::new(MAX);
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
            b"READY now\n",
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
        let mut codec = SlotmanCodec::new(MAX);
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
        let mut codec = SlotmanCodec::new(16);
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

    #[test]
    fn job_header_is_exact() {
        assert_eq!(
            job_header("reverse", "H:host:1", None, 5, MAX).expect("fits"),
            b"JOB reverse H:host:1 - 5\n"
        );
        assert_eq!(
            job_header("f", "h", Some("u-1"), 0, MAX).expect("fits"),
            b"JOB f h u-1 0\n"
        );
        assert_eq!(
            job_header("f", "h", Some(""), 0, MAX).expect("fits"),
            b"JOB f h - 0\n"
        );
        for (function, handle, unique) in [
            ("", "h", None),
            ("f g", "h", None),
            ("f", "h\n", None),
            ("f", "h", Some("a b")),
            ("f", "h", Some("é")),
        ] {
            assert!(matches!(
                job_header(function, handle, unique, 0, MAX),
                Err(FramingError::Unframeable { .. })
            ));
        }
        assert!(matches!(
            job_header("f", "h", None, MAX + 1, MAX),
            Err(FramingError::TooBig { .. })
        ));
        let long = "x".repeat(MAX_HEADER);
        assert!(job_header(&long, "h", None, 0, MAX).is_err());
    }

    #[test]
    fn handler_codec_reads_jobs() {
        let mut codec = HandlerCodec::new(MAX);
        let mut buf = BytesMut::from(&b"JOB f H:1 - 2\nhiJOB g H:2 u 0\n"[..]);
        let first = codec.decode(&mut buf).expect("valid");
        let second = codec.decode(&mut buf).expect("valid");
        assert_eq!(
            first,
            Some(JobFrame {
                function: "f".into(),
                handle: "H:1".into(),
                unique: None,
                payload: Bytes::from_static(b"hi"),
            })
        );
        assert_eq!(second.and_then(|j| j.unique), Some("u".to_owned()));
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&b"READY\n"[..])),
            Err(FramingError::UnknownWord { .. })
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
            Just(FromHandler::Ready),
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

    fn job() -> impl Strategy<Value = JobFrame> {
        (
            word(),
            word(),
            proptest::option::of(word().prop_filter("`-` means none", |u| u != "-")),
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
                let got = decode_split(&mut SlotmanCodec::new(MAX), &bytes, at).ok();
                prop_assert_eq!(got.as_ref(), Some(&frames), "split at {}", at);
            }
        }

        #[test]
        fn jobs_round_trip_split_anywhere(jobs in proptest::collection::vec(job(), 0..4)) {
            let mut bytes = BytesMut::new();
            let mut enc = SlotmanCodec::new(MAX);
            for j in &jobs {
                prop_assert!(enc.encode(j.clone(), &mut bytes).is_ok());
            }
            for at in 0..=bytes.len() {
                let got = decode_split(&mut HandlerCodec::new(MAX), &bytes, at).ok();
                prop_assert_eq!(got.as_ref(), Some(&jobs), "split at {}", at);
            }
        }

        #[test]
        fn byte_at_a_time(frames in proptest::collection::vec(reply(), 0..5)) {
            let bytes = encode_replies(&frames);
            let mut codec = SlotmanCodec::new(MAX);
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
            let mut replies = SlotmanCodec::new(max);
            let mut jobs = HandlerCodec::new(max);
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
