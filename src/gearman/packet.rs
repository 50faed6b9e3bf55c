//! Gearman binary packets as values: the packet types with their argument
//! counts, the 12-byte header, and the pure conversions between a packet and
//! its bytes. No I/O and no buffering here; `codec` frames these over a
//! socket and enforces size limits.
//!
//! A packet is `MAGIC TYPE SIZE BODY`: a 4-byte magic (`"\0REQ"` towards the
//! job server, `"\0RES"` from it), a big-endian `u32` type, a big-endian `u32`
//! body size, then the body. The body holds exactly `arg_count` arguments
//! separated by NUL bytes; the last one is delimited by the body size alone, so
//! it may itself contain NULs (it is usually opaque data), while every other
//! argument must not. Zero-argument packets have an empty body.
//!
//! Argument counts follow what gearmand actually puts on the wire, which in one
//! case differs from its `PROTOCOL` text: `SUBMIT_REDUCE_JOB*` carry a fifth,
//! unused "aggregator" argument before the data (function, unique, reducer,
//! aggregator, data), as libgearman sends and gearmand parses them.

use bytes::{BufMut, Bytes, BytesMut};

/// Magic (4) + type (4) + body size (4).
pub const HEADER_LEN: usize = 12;

/// Everything that can go wrong reading or writing Gearman packets.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The connection failed, or closed in the middle of a packet.
    #[error("i/o error on Gearman connection: {0}")]
    Io(#[from] std::io::Error),
    /// The stream is not Gearman binary protocol (or lost its framing). A
    /// job server answering a text admin command shows up here as `b"ERR "`.
    #[error("bad packet magic \"{}\" (expected \\0REQ or \\0RES)", .0.escape_ascii())]
    BadMagic([u8; 4]),
    /// A type number this implementation does not know (5 is unused).
    #[error("unknown packet type {0}")]
    UnknownType(u32),
    /// A body larger than the codec's limit, refused before buffering it.
    #[error("packet body of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: u32, max: u32 },
    /// The body holds fewer NUL-separated arguments than the type requires.
    #[error("{kind} packet has {got} argument(s), expected {expected}")]
    WrongArgs {
        kind: PacketType,
        expected: usize,
        got: usize,
    },
    /// An argument that must be text (a handle, a function name) is not UTF-8.
    #[error("argument of {kind} packet is not valid UTF-8")]
    NotUtf8 { kind: PacketType },
    /// A zero-argument type (NOOP, GRAB_JOB, ...) arrived with a body.
    #[error("{kind} packet must have an empty body")]
    NonEmptyBody { kind: PacketType },
}

/// Which way a packet travels: `Req` to the job server, `Res` from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Magic {
    /// `"\0REQ"`: sent by clients and workers.
    Req,
    /// `"\0RES"`: sent by the job server.
    Res,
}

impl Magic {
    /// The four bytes that open a packet with this magic.
    pub const fn bytes(self) -> [u8; 4] {
        match self {
            Magic::Req => *b"\0REQ",
            Magic::Res => *b"\0RES",
        }
    }

    /// The magic these four bytes spell, if any.
    pub fn from_bytes(bytes: [u8; 4]) -> Option<Magic> {
        match &bytes {
            b"\0REQ" => Some(Magic::Req),
            b"\0RES" => Some(Magic::Res),
            _ => None,
        }
    }
}

/// Declares `PacketType` from one table so that the number, the name and the
/// argument count of a type cannot drift apart.
macro_rules! packet_types {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $args:literal; )*) => {
        /// A Gearman packet type, numbered as on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum PacketType {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl PacketType {
            /// Every packet type, in wire-number order.
            pub const ALL: &'static [PacketType] = &[ $( PacketType::$variant, )* ];

            /// The type with wire number `n`; `None` for 5 (unused), 0 and
            /// anything above 42.
            pub fn from_u32(n: u32) -> Option<PacketType> {
                match n {
                    $( $num => Some(PacketType::$variant), )*
                    _ => None,
                }
            }

            /// How many NUL-separated arguments the body of this type holds.
            pub fn arg_count(self) -> usize {
                match self {
                    $( PacketType::$variant => $args, )*
                }
            }

            /// The protocol's name of this type, e.g. `"CAN_DO"`.
            pub fn name(self) -> &'static str {
                match self {
                    $( PacketType::$variant => $name, )*
                }
            }
        }
    };
}

packet_types! {
    /// Worker: function name.
    CanDo = 1, "CAN_DO", 1;
    /// Worker: function name.
    CantDo = 2, "CANT_DO", 1;
    /// Worker: no arguments.
    ResetAbilities = 3, "RESET_ABILITIES", 0;
    /// Worker: about to sleep, wake me with NOOP; no arguments.
    PreSleep = 4, "PRE_SLEEP", 0;
    /// Server to worker: wake up; no arguments.
    Noop = 6, "NOOP", 0;
    /// Client: function, unique, data.
    SubmitJob = 7, "SUBMIT_JOB", 3;
    /// Server to client: job handle.
    JobCreated = 8, "JOB_CREATED", 1;
    /// Worker: no arguments.
    GrabJob = 9, "GRAB_JOB", 0;
    /// Server to worker: nothing queued; no arguments.
    NoJob = 10, "NO_JOB", 0;
    /// Server to worker: handle, function, data.
    JobAssign = 11, "JOB_ASSIGN", 3;
    /// Worker (and server to client): handle, numerator, denominator.
    WorkStatus = 12, "WORK_STATUS", 3;
    /// Worker (and server to client): handle, data.
    WorkComplete = 13, "WORK_COMPLETE", 2;
    /// Worker (and server to client): handle.
    WorkFail = 14, "WORK_FAIL", 1;
    /// Client: job handle.
    GetStatus = 15, "GET_STATUS", 1;
    /// Client or worker: opaque data.
    EchoReq = 16, "ECHO_REQ", 1;
    /// Server: the echoed data.
    EchoRes = 17, "ECHO_RES", 1;
    /// Client: function, unique, data.
    SubmitJobBg = 18, "SUBMIT_JOB_BG", 3;
    /// Server: error code, error text.
    Error = 19, "ERROR", 2;
    /// Server to client: handle, known, running, numerator, denominator.
    StatusRes = 20, "STATUS_RES", 5;
    /// Client: function, unique, data.
    SubmitJobHigh = 21, "SUBMIT_JOB_HIGH", 3;
    /// Worker: client id shown by the admin `workers` command.
    SetClientId = 22, "SET_CLIENT_ID", 1;
    /// Worker: function, timeout (milliseconds since gearmand 1.1.19).
    CanDoTimeout = 23, "CAN_DO_TIMEOUT", 2;
    /// Worker: no arguments.
    AllYours = 24, "ALL_YOURS", 0;
    /// Worker (and server to client): handle, exception data.
    WorkException = 25, "WORK_EXCEPTION", 2;
    /// Client or worker: option name.
    OptionReq = 26, "OPTION_REQ", 1;
    /// Server: option name.
    OptionRes = 27, "OPTION_RES", 1;
    /// Worker (and server to client): handle, data.
    WorkData = 28, "WORK_DATA", 2;
    /// Worker (and server to client): handle, data.
    WorkWarning = 29, "WORK_WARNING", 2;
    /// Worker: no arguments.
    GrabJobUniq = 30, "GRAB_JOB_UNIQ", 0;
    /// Server to worker: handle, function, unique, data.
    JobAssignUniq = 31, "JOB_ASSIGN_UNIQ", 4;
    /// Client: function, unique, data.
    SubmitJobHighBg = 32, "SUBMIT_JOB_HIGH_BG", 3;
    /// Client: function, unique, data.
    SubmitJobLow = 33, "SUBMIT_JOB_LOW", 3;
    /// Client: function, unique, data.
    SubmitJobLowBg = 34, "SUBMIT_JOB_LOW_BG", 3;
    /// Client: function, unique, minute, hour, day of month, month, day of
    /// week, data.
    SubmitJobSched = 35, "SUBMIT_JOB_SCHED", 8;
    /// Client: function, unique, epoch time, data.
    SubmitJobEpoch = 36, "SUBMIT_JOB_EPOCH", 4;
    /// Client: function, unique, reducer, aggregator (unused), data.
    SubmitReduceJob = 37, "SUBMIT_REDUCE_JOB", 5;
    /// Client: function, unique, reducer, aggregator (unused), data.
    SubmitReduceJobBackground = 38, "SUBMIT_REDUCE_JOB_BACKGROUND", 5;
    /// Worker: no arguments.
    GrabJobAll = 39, "GRAB_JOB_ALL", 0;
    /// Server to worker: handle, function, unique, reducer, data.
    JobAssignAll = 40, "JOB_ASSIGN_ALL", 5;
    /// Client: unique.
    GetStatusUnique = 41, "GET_STATUS_UNIQUE", 1;
    /// Server to client: unique, known, running, numerator, denominator,
    /// waiting clients.
    StatusResUnique = 42, "STATUS_RES_UNIQUE", 6;
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded packet header: what follows and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: Magic,
    pub kind: PacketType,
    /// Body size in bytes, as declared by the sender.
    pub size: u32,
}

impl Header {
    /// Reads a header. Checks only what the header alone can tell: the magic,
    /// the type and, for zero-argument types, that the body is empty (so a
    /// bogus size on such a packet is refused before anything is buffered).
    /// Size limits are the codec's business.
    pub fn parse(raw: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let [m0, m1, m2, m3, t0, t1, t2, t3, s0, s1, s2, s3] = *raw;
        let magic_bytes = [m0, m1, m2, m3];
        let magic = Magic::from_bytes(magic_bytes).ok_or(ProtocolError::BadMagic(magic_bytes))?;
        let number = u32::from_be_bytes([t0, t1, t2, t3]);
        let kind = PacketType::from_u32(number).ok_or(ProtocolError::UnknownType(number))?;
        let size = u32::from_be_bytes([s0, s1, s2, s3]);
        if kind.arg_count() == 0 && size != 0 {
            return Err(ProtocolError::NonEmptyBody { kind });
        }
        Ok(Header { magic, kind, size })
    }
}

/// One Gearman packet. `args` holds the body split at its NUL separators; the
/// separators themselves are not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub magic: Magic,
    pub kind: PacketType,
    pub args: Vec<Bytes>,
}

impl Packet {
    /// A request (`"\0REQ"`), as clients and workers send.
    pub fn req(kind: PacketType, args: Vec<Bytes>) -> Packet {
        Packet {
            magic: Magic::Req,
            kind,
            args,
        }
    }

    /// A response (`"\0RES"`), as the job server sends.
    pub fn res(kind: PacketType, args: Vec<Bytes>) -> Packet {
        Packet {
            magic: Magic::Res,
            kind,
            args,
        }
    }

    /// Splits a body into the arguments its type prescribes. The body is
    /// sliced, not copied. Errors as [`split_body`]. Never panics.
    pub fn from_body(magic: Magic, kind: PacketType, body: Bytes) -> Result<Packet, ProtocolError> {
        let args = split_body(kind, &body)?
            .iter()
            .map(|a| body.slice_ref(a))
            .collect();
        Ok(Packet { magic, kind, args })
    }

    /// Argument `i`, or an empty slice if the packet has no such argument.
    pub fn arg(&self, i: usize) -> &[u8] {
        self.args.get(i).map_or(&[][..], |a| &a[..])
    }

    /// Argument `i` as a cheap shared `Bytes` (empty if absent), for handing
    /// a payload on without copying it.
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        self.args.get(i).cloned().unwrap_or_default()
    }

    /// Argument `i` as UTF-8 text (empty if absent); `NotUtf8` otherwise.
    pub fn arg_str(&self, i: usize) -> Result<&str, ProtocolError> {
        std::str::from_utf8(self.arg(i)).map_err(|_| ProtocolError::NotUtf8 { kind: self.kind })
    }

    /// Size of the body: the arguments plus one NUL between each two.
    pub fn body_len(&self) -> usize {
        let data: usize = self.args.iter().map(Bytes::len).sum();
        data + self.args.len().saturating_sub(1)
    }

    /// Size of the whole packet on the wire, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the packet's wire form to `dst`.
    ///
    /// The header's size always matches the bytes written, so the stream stays
    /// framed whatever the arguments hold. What the peer will make of a
    /// malformed packet is another matter: the caller must pass exactly
    /// `kind.arg_count()` arguments, none but the last containing a NUL (the
    /// peer would split it there). Both are checked in debug builds only.
    ///
    /// # Panics
    ///
    /// If the body exceeds `u32::MAX` bytes, which the header cannot express.
    /// `PacketCodec` refuses such packets (and any above its limit) first.
    pub fn encode(&self, dst: &mut BytesMut) {
        debug_assert_eq!(
            self.args.len(),
            self.kind.arg_count(),
            "{} takes {} argument(s)",
            self.kind,
            self.kind.arg_count()
        );
        debug_assert!(
            self.args.iter().rev().skip(1).all(|a| !a.contains(&0)),
            "only the last argument of {} may contain NUL",
            self.kind
        );
        let body = self.body_len();
        let size = u32::try_from(body).expect("Gearman packet body larger than 4 GiB");
        dst.reserve(HEADER_LEN + body);
        dst.put_slice(&self.magic.bytes());
        dst.put_u32(self.kind as u32);
        dst.put_u32(size);
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                dst.put_u8(0);
            }
            dst.put_slice(arg);
        }
    }

    /// The wire form as a new buffer; handy for tests and one-off writes.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }
}

/// Most arguments any packet type has (SUBMIT_JOB_SCHED).
pub const MAX_ARGS: usize = 8;

/// A body's arguments, borrowed from it: what [`split_body`] returns, with
/// no allocation (the relay looks into every packet it passes on).
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    args: [&'a [u8]; MAX_ARGS],
    len: usize,
}

impl<'a> Args<'a> {
    /// Argument `i`, or an empty slice if there is no such argument.
    pub fn get(&self, i: usize) -> &'a [u8] {
        if i < self.len {
            self.args[i]
        } else {
            &[]
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.args[..self.len].iter().copied()
    }
}

/// Splits `body` into the arguments `kind` prescribes. Errors:
/// `NonEmptyBody` for a zero-argument type with a body, `WrongArgs` when
/// there are fewer separators than the type needs (more are part of the
/// last argument). Never panics.
pub fn split_body(kind: PacketType, body: &[u8]) -> Result<Args<'_>, ProtocolError> {
    let expected = kind.arg_count();
    let mut out = Args {
        args: [&[]; MAX_ARGS],
        len: 0,
    };
    if expected == 0 {
        if !body.is_empty() {
            return Err(ProtocolError::NonEmptyBody { kind });
        }
        return Ok(out);
    }
    let mut rest = body;
    // `expected` comes from our own table (at most MAX_ARGS), never from the peer.
    while out.len + 1 < expected {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::WrongArgs {
                kind,
                expected,
                got: out.len + 1,
            });
        };
        out.args[out.len] = &rest[..nul];
        out.len += 1;
        rest = &rest[nul + 1..];
    }
    out.args[out.len] = rest;
    out.len += 1;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn table_is_consistent() {
        assert_eq!(PacketType::ALL.len(), 41);
        for &t in PacketType::ALL {
            assert_eq!(PacketType::from_u32(t as u32), Some(t));
            assert!(!t.name().is_empty());
            assert!(t.arg_count() <= MAX_ARGS);
        }
        for n in [0u32, 5, 43, 1000, u32::MAX] {
            assert_eq!(PacketType::from_u32(n), None, "{n}");
        }
        assert_eq!(PacketType::CanDo.name(), "CAN_DO");
        assert_eq!(PacketType::StatusResUnique.name(), "STATUS_RES_UNIQUE");
        assert_eq!(PacketType::SubmitReduceJobBackground as u32, 38);
    }

    #[test]
    fn arg_counts_match_the_protocol() {
        use PacketType::*;
        let cases: &[(PacketType, usize)] = &[
            (CanDo, 1),
            (CantDo, 1),
            (ResetAbilities, 0),
            (PreSleep, 0),
            (Noop, 0),
            (SubmitJob, 3),
            (JobCreated, 1),
            (GrabJob, 0),
            (NoJob, 0),
            (JobAssign, 3),
            (WorkStatus, 3),
            (WorkComplete, 2),
            (WorkFail, 1),
            (GetStatus, 1),
            (EchoReq, 1),
            (EchoRes, 1),
            (SubmitJobBg, 3),
            (Error, 2),
            (StatusRes, 5),
            (SubmitJobHigh, 3),
            (SetClientId, 1),
            (CanDoTimeout, 2),
            (AllYours, 0),
            (WorkException, 2),
            (OptionReq, 1),
            (OptionRes, 1),
            (WorkData, 2),
            (WorkWarning, 2),
            (GrabJobUniq, 0),
            (JobAssignUniq, 4),
            (SubmitJobHighBg, 3),
            (SubmitJobLow, 3),
            (SubmitJobLowBg, 3),
            (SubmitJobSched, 8),
            (SubmitJobEpoch, 4),
            (SubmitReduceJob, 5),
            (SubmitReduceJobBackground, 5),
            (GrabJobAll, 0),
            (JobAssignAll, 5),
            (GetStatusUnique, 1),
            (StatusResUnique, 6),
        ];
        assert_eq!(cases.len(), PacketType::ALL.len());
        for &(t, n) in cases {
            assert_eq!(t.arg_count(), n, "{t}");
        }
    }

    /// The byte-for-byte examples of the PROTOCOL document.
    #[test]
    fn protocol_document_examples() {
        let can_do = Packet::req(PacketType::CanDo, vec![b(b"reverse")]);
        assert_eq!(&can_do.to_bytes()[..], b"\0REQ\0\0\0\x01\0\0\0\x07reverse");

        let grab = Packet::req(PacketType::GrabJob, vec![]);
        assert_eq!(&grab.to_bytes()[..], b"\0REQ\0\0\0\x09\0\0\0\0");

        let submit = Packet::req(
            PacketType::SubmitJob,
            vec![b(b"reverse"), b(b""), b(b"test")],
        );
        assert_eq!(
            &submit.to_bytes()[..],
            b"\0REQ\0\0\0\x07\0\0\0\x0dreverse\0\0test"
        );
        assert_eq!(submit.encoded_len(), 12 + 13);

        let assign = Packet::res(
            PacketType::JobAssign,
            vec![b(b"H:lap:1"), b(b"reverse"), b(b"test")],
        );
        assert_eq!(
            &assign.to_bytes()[..],
            b"\0RES\0\0\0\x0b\0\0\0\x14H:lap:1\0reverse\0test"
        );
    }

    #[test]
    fn body_split_keeps_nuls_in_last_arg() {
        let p = Packet::from_body(
            Magic::Res,
            PacketType::JobAssignUniq,
            b(b"H:1\0fn\0\0pay\0load\0"),
        )
        .unwrap();
        assert_eq!(p.args, vec![b(b"H:1"), b(b"fn"), b(b""), b(b"pay\0load\0")]);
        assert_eq!(p.arg(3), b"pay\0load\0");
        assert_eq!(p.arg(9), b"");
        assert_eq!(p.arg_str(0).unwrap(), "H:1");
    }

    #[test]
    fn body_errors() {
        let err =
            Packet::from_body(Magic::Req, PacketType::WorkStatus, b(b"H:1\x0050")).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::WrongArgs {
                kind: PacketType::WorkStatus,
                expected: 3,
                got: 2
            }
        ));
        let err = Packet::from_body(Magic::Res, PacketType::Noop, b(b"x")).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::NonEmptyBody {
                kind: PacketType::Noop
            }
        ));
        // An empty body is one empty argument.
        let p = Packet::from_body(Magic::Req, PacketType::WorkFail, Bytes::new()).unwrap();
        assert_eq!(p.args, vec![Bytes::new()]);
        let err =
            Packet::from_body(Magic::Req, PacketType::WorkComplete, Bytes::new()).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::WrongArgs {
                expected: 2,
                got: 1,
                ..
            }
        ));
    }

    #[test]
    fn arg_str_rejects_bad_utf8() {
        let p = Packet::res(PacketType::JobCreated, vec![b(b"\xff\xfe")]);
        assert!(matches!(
            p.arg_str(0),
            Err(ProtocolError::NotUtf8 {
                kind: PacketType::JobCreated
            })
        ));
    }

    #[test]
    fn header_checks() {
        let ok = Header::parse(b"\0RES\0\0\0\x08\0\0\0\x07").unwrap();
        assert_eq!(
            ok,
            Header {
                magic: Magic::Res,
                kind: PacketType::JobCreated,
                size: 7
            }
        );
        assert!(matches!(
            Header::parse(b"ERR UNKNOWN_"),
            Err(ProtocolError::BadMagic(m)) if &m == b"ERR "
        ));
        assert!(matches!(
            Header::parse(b"\0REQ\0\0\0\x05\0\0\0\0"),
            Err(ProtocolError::UnknownType(5))
        ));
        assert!(matches!(
            Header::parse(b"\0REQ\0\0\0\x04\xff\xff\xff\xff"),
            Err(ProtocolError::NonEmptyBody {
                kind: PacketType::PreSleep
            })
        ));
    }
}
