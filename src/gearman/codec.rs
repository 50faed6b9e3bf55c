//! Framing Gearman packets over a byte stream (`tokio_util::codec`), and the
//! protocol's error type. Owns buffering and the maximum packet size: a
//! header announcing a body above the limit is refused before any of the body
//! is buffered, and the read buffer is never grown past one whole packet.
//! What a packet means is `packet`'s business; what to do with it, the
//! caller's.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::packet::{Header, Packet};
pub use super::packet::{ProtocolError, HEADER_LEN};

/// Default limit on a packet's body: 64 MiB, far above any sane job payload
/// yet small enough that a corrupt or hostile size cannot exhaust memory.
pub const DEFAULT_MAX_PACKET: u32 = 64 * 1024 * 1024;

/// Frames `Packet`s for `tokio_util::codec::Framed`. The limit applies to
/// both directions: a packet we could not read ourselves is not sent either,
/// so `send` fails with `TooLarge` and the connection stays usable.
#[derive(Debug, Clone)]
pub struct PacketCodec {
    max_body: u32,
}

impl PacketCodec {
    /// A codec accepting bodies of at most `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        PacketCodec { max_body }
    }

    /// The body size limit this codec enforces.
    pub fn max_body(&self) -> u32 {
        self.max_body
    }
}

impl Default for PacketCodec {
    fn default() -> Self {
        PacketCodec::new(DEFAULT_MAX_PACKET)
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = ProtocolError;

    /// `Ok(None)` until a whole packet is buffered; then that packet, with
    /// its arguments sliced out of the buffer without copying. At end of
    /// stream the default `decode_eof` turns leftover bytes into an `Io`
    /// error, so a connection cut mid-packet is not mistaken for a clean close.
    ///
    /// The header is checked as soon as it is here ([`PacketCodec::peek`]).
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtocolError> {
        let (header, total) = match self.peek(src)? {
            Peek::Whole(header, total) => (header, total),
            Peek::Partial(total) => {
                reserve_packet(src, total);
                return Ok(None);
            }
        };
        let mut frame = src.split_to(total);
        frame.advance(HEADER_LEN);
        Packet::from_body(header.magic, header.kind, frame.freeze()).map(Some)
    }
}

/// What the start of a buffer holds, as far as framing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// A whole packet of this many bytes, header included.
    Whole(Header, usize),
    /// The start of a packet of this many bytes (0: the header is not
    /// complete yet).
    Partial(usize),
}

impl PacketCodec {
    /// Frames the packet at the start of `src` without consuming it: the
    /// relay passes packets on as bytes and decodes only their header (and
    /// what it acts on, with [`super::packet::split_body`]). Errors as
    /// `decode`: a wrong magic as soon as it is visible (a text reply such
    /// as "ERR ...\r\n" is shorter than a header and would otherwise leave
    /// us waiting for bytes that never come), an unknown type, a body above
    /// the limit before any of it is buffered.
    pub fn peek(&self, src: &[u8]) -> Result<Peek, ProtocolError> {
        if let Some(prefix) = src.get(..4) {
            let mut magic = [0u8; 4];
            magic.copy_from_slice(prefix);
            if super::packet::Magic::from_bytes(magic).is_none() {
                return Err(ProtocolError::BadMagic(magic));
            }
        }
        let Some(raw) = src.get(..HEADER_LEN) else {
            return Ok(Peek::Partial(0));
        };
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(raw);
        let header = Header::parse(&header_bytes)?;
        if header.size > self.max_body {
            return Err(ProtocolError::TooLarge {
                size: header.size,
                max: self.max_body,
            });
        }
        // Cannot overflow: size <= max_body <= u32::MAX, and usize is at least
        // 32 bits on every target tokio supports.
        let total = HEADER_LEN + header.size as usize;
        if src.len() < total {
            return Ok(Peek::Partial(total));
        }
        Ok(Peek::Whole(header, total))
    }
}

/// Makes room in `src` for a packet of `total` bytes that starts at its
/// beginning. `BytesMut::reserve` may double the allocation, which for a
/// near-limit body would overshoot the limit by up to 2x: this grows to
/// exactly one packet.
pub fn reserve_packet(src: &mut BytesMut, total: usize) {
    if src.capacity() < total {
        let mut grown = BytesMut::with_capacity(total);
        grown.extend_from_slice(src);
        *src = grown;
    }
}

// Only `Encoder<Packet>`, deliberately: a second impl for `&Packet` would make
// `SinkExt::flush()` on a `Framed<_, PacketCodec>` ambiguous (the sink item
// type could no longer be inferred) and break every caller that flushes.
impl Encoder<Packet> for PacketCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let body = item.body_len();
        if body > self.max_body as usize {
            return Err(ProtocolError::TooLarge {
                size: u32::try_from(body).unwrap_or(u32::MAX),
                max: self.max_body,
            });
        }
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gearman::packet::{Magic, PacketType};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn encode(p: &Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        PacketCodec::default().encode(p.clone(), &mut buf).unwrap();
        buf
    }

    /// Decodes everything in `buf`, stopping at the first `Ok(None)`.
    fn decode_all(
        codec: &mut PacketCodec,
        buf: &mut BytesMut,
    ) -> Result<Vec<Packet>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(p) = codec.decode(buf)? {
            out.push(p);
        }
        Ok(out)
    }

    /// Arguments for `kind`: text-like arguments without NUL, then a last
    /// argument that may contain anything, NULs included.
    fn args_for(kind: PacketType) -> impl Strategy<Value = Vec<Bytes>> {
        let n = kind.arg_count();
        let head = proptest::collection::vec(
            proptest::collection::vec(1u8..=255, 0..12).prop_map(Bytes::from),
            n.saturating_sub(1),
        );
        let last = proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        (head, last).prop_map(move |(mut head, last)| {
            if n > 0 {
                head.push(last);
            }
            head
        })
    }

    fn any_packet() -> impl Strategy<Value = Packet> {
        (
            proptest::sample::select(PacketType::ALL),
            prop_oneof![Just(Magic::Req), Just(Magic::Res)],
        )
            .prop_flat_map(|(kind, magic)| {
                args_for(kind).prop_map(move |args| Packet { magic, kind, args })
            })
    }

    #[test]
    fn every_type_round_trips_both_ways() {
        for &kind in PacketType::ALL {
            for magic in [Magic::Req, Magic::Res] {
                let n = kind.arg_count();
                let mut args: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("a{i}"))).collect();
                if let Some(last) = args.last_mut() {
                    *last = Bytes::from_static(b"da\0ta\0");
                }
                let p = Packet { magic, kind, args };
                let mut buf = encode(&p);
                assert_eq!(buf.len(), p.encoded_len());
                let got = PacketCodec::default().decode(&mut buf).unwrap();
                assert_eq!(got.as_ref(), Some(&p), "{kind} {magic:?}");
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn truncated_packets_wait_for_more() {
        let p = Packet::req(
            PacketType::SubmitJob,
            vec![
                Bytes::from_static(b"f"),
                Bytes::new(),
                Bytes::from_static(b"xyz"),
            ],
        );
        let full = encode(&p);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                PacketCodec::default().decode(&mut buf).unwrap().is_none(),
                "cut at {cut}"
            );
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
        }
    }

    #[test]
    fn several_packets_in_one_buffer() {
        let a = Packet::req(PacketType::GrabJobUniq, vec![]);
        let b = Packet::res(PacketType::Noop, vec![]);
        let c = Packet::req(
            PacketType::WorkComplete,
            vec![Bytes::from_static(b"H:x:1"), Bytes::from_static(b"\0\0")],
        );
        let mut buf = encode(&a);
        buf.extend_from_slice(&encode(&b));
        buf.extend_from_slice(&encode(&c));
        buf.extend_from_slice(&encode(&a)[..5]);
        let got = decode_all(&mut PacketCodec::default(), &mut buf).unwrap();
        assert_eq!(got, vec![a, b, c]);
        assert_eq!(buf.len(), 5);
    }

    #[test]
    fn bad_magic_is_an_error_as_soon_as_seen() {
        let mut buf = BytesMut::from(&b"ERR UNKNOWN_COMMAND\r\n"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::BadMagic(m)) if &m == b"ERR "
        ));
        let mut buf = BytesMut::from(&b"\0REX"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::BadMagic(_))
        ));
        // Shorter than a magic: could still become one.
        let mut buf = BytesMut::from(&b"\0RE"[..]);
        assert!(PacketCodec::default().decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn unknown_type_is_an_error() {
        let mut buf = BytesMut::from(&b"\0RES\0\0\0\x2b\0\0\0\0"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::UnknownType(43))
        ));
        let mut buf = BytesMut::from(&b"\0RES\0\0\0\0\0\0\0\0"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::UnknownType(0))
        ));
    }

    #[test]
    fn oversized_is_refused_before_buffering_the_body() {
        let mut codec = PacketCodec::new(16);
        let mut buf = BytesMut::with_capacity(HEADER_LEN);
        buf.extend_from_slice(b"\0RES\0\0\0\x11\0\0\0\x11");
        let cap = buf.capacity();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::TooLarge { size: 17, max: 16 })
        ));
        assert_eq!(buf.capacity(), cap);

        let mut buf = BytesMut::from(&b"\0RES\0\0\0\x11\xff\xff\xff\xff"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::TooLarge {
                size: u32::MAX,
                max: DEFAULT_MAX_PACKET
            })
        ));

        // Exactly at the limit is fine, and the buffer grows to one packet.
        let mut buf = BytesMut::from(&b"\0RES\0\0\0\x11\0\0\0\x10"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= HEADER_LEN + 16);
        buf.extend_from_slice(&[7u8; 16]);
        let p = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(p.arg(0), &[7u8; 16]);
    }

    #[test]
    fn encoder_refuses_oversized() {
        let mut codec = PacketCodec::new(4);
        let mut buf = BytesMut::new();
        let p = Packet::req(PacketType::EchoReq, vec![Bytes::from_static(b"12345")]);
        assert!(matches!(
            codec.encode(p, &mut buf),
            Err(ProtocolError::TooLarge { size: 5, max: 4 })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn wrong_arg_count_and_nonempty_body() {
        // WORK_STATUS with only one separator.
        let mut buf = BytesMut::from(&b"\0REQ\0\0\0\x0c\0\0\0\x05H\x001/2"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::WrongArgs {
                kind: PacketType::WorkStatus,
                expected: 3,
                got: 2
            })
        ));
        // The bad packet was consumed: framing is intact for what follows.
        assert!(buf.is_empty());

        let mut buf = BytesMut::from(&b"\0RES\0\0\0\x0a\0\0\0\x01x"[..]);
        assert!(matches!(
            PacketCodec::default().decode(&mut buf),
            Err(ProtocolError::NonEmptyBody {
                kind: PacketType::NoJob
            })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(p in any_packet()) {
            let mut buf = encode(&p);
            prop_assert_eq!(buf.len(), p.encoded_len());
            let got = PacketCodec::default().decode(&mut buf).unwrap();
            prop_assert_eq!(got, Some(p));
            prop_assert!(buf.is_empty());
        }

        /// A stream of packets cut into two reads at every offset decodes to
        /// the same packets.
        #[test]
        fn split_at_every_offset(packets in proptest::collection::vec(any_packet(), 1..4)) {
            let mut wire = BytesMut::new();
            for p in &packets {
                wire.extend_from_slice(&encode(p));
            }
            for cut in 0..=wire.len() {
                let mut codec = PacketCodec::default();
                let mut buf = BytesMut::from(&wire[..cut]);
                let mut got = decode_all(&mut codec, &mut buf).unwrap();
                buf.extend_from_slice(&wire[cut..]);
                got.extend(decode_all(&mut codec, &mut buf).unwrap());
                prop_assert_eq!(&got, &packets);
                prop_assert!(buf.is_empty());
            }
        }

        /// Arbitrary bytes, fed in arbitrary chunks, never panic and never
        /// make the codec hold more than one maximal packet.
        #[test]
        fn garbage_never_panics_nor_overallocates(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            chunk in 1usize..64,
            valid_prefix in any::<bool>(),
        ) {
            const MAX: u32 = 100;
            let mut codec = PacketCodec::new(MAX);
            let mut buf = BytesMut::new();
            let mut input = Vec::new();
            if valid_prefix {
                // Bias towards inputs that get past the magic check.
                input.extend_from_slice(b"\0RES");
            }
            input.extend_from_slice(&data);
            'feed: for piece in input.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    let before = buf.capacity();
                    let result = codec.decode(&mut buf);
                    // The codec grows the buffer to one whole packet at most.
                    prop_assert!(buf.capacity() <= before.max(HEADER_LEN + MAX as usize));
                    match result {
                        Ok(Some(p)) => prop_assert!(p.body_len() <= MAX as usize),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }

        /// Headers with any type and size: bogus sizes are refused up front.
        #[test]
        fn random_headers(kind in any::<u32>(), size in any::<u32>(), req in any::<bool>()) {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(if req { b"\0REQ" } else { b"\0RES" });
            buf.extend_from_slice(&kind.to_be_bytes());
            buf.extend_from_slice(&size.to_be_bytes());
            let mut codec = PacketCodec::new(1024);
            match codec.decode(&mut buf) {
                Ok(None) => {
                    prop_assert!(PacketType::from_u32(kind).is_some());
                    prop_assert!(size > 0 && size <= 1024);
                    prop_assert!(buf.capacity() >= HEADER_LEN + size as usize);
                    prop_assert!(buf.capacity() <= HEADER_LEN + 1024);
                }
                Ok(Some(p)) => prop_assert_eq!(size, 0, "{:?}", p),
                Err(ProtocolError::UnknownType(k)) => prop_assert_eq!(k, kind),
                Err(ProtocolError::TooLarge { size: s, max }) => {
                    prop_assert_eq!(s, size);
                    prop_assert!(size > max);
                }
                Err(ProtocolError::NonEmptyBody { kind: k }) => prop_assert_eq!(k.arg_count(), 0),
                Err(ProtocolError::WrongArgs { kind: k, .. }) => prop_assert!(size == 0 && k.arg_count() > 1),
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
    }
}
