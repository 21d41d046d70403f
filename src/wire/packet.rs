//! The NTPv4 packet (RFC 5905 §7.3) with extension fields and the MAC trailer
//! (RFC 7822).
//!
//! Parsing borrows from the input and never allocates more than one entry per 16 bytes
//! of input. Serializing a parsed packet gives back exactly the bytes it came from.

use super::reader::Reader;
use super::timestamp::{NtpShort, NtpTimestamp};

pub const HEADER_LEN: usize = 48;
/// An extension field is at least 16 bytes long (RFC 7822 §3).
pub const MIN_EXTENSION_LEN: usize = 16;
/// In NTPv4 a MAC trailer is a 32-bit key id and a 16 to 20 byte digest.
pub const MAC_TRAILER_LEN: std::ops::RangeInclusive<usize> = 20..=24;
/// Before NTPv4 there are no extension fields, so everything after the header is the
/// MAC, and digests are not truncated: up to 64 bytes (SHA-512). chrony sends keys with
/// long digests as NTPv3 for this reason.
pub const LEGACY_MAC_TRAILER_LEN: std::ops::RangeInclusive<usize> = 20..=68;
/// Longest digest carried in NTPv4; longer ones are truncated to this.
pub const NTPV4_MAX_DIGEST_LEN: usize = 20;
/// Longest digest of any version.
pub const MAX_DIGEST_LEN: usize = 64;

/// Leap indicator: the 2-bit field covers all four values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Leap {
    #[default]
    NoWarning,
    /// The last minute of the day has 61 seconds.
    AddSecond,
    /// The last minute of the day has 59 seconds.
    DeleteSecond,
    /// The sender's clock is not synchronized.
    Unsynchronized,
}

impl Leap {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::NoWarning,
            1 => Self::AddSecond,
            2 => Self::DeleteSecond,
            _ => Self::Unsynchronized,
        }
    }

    pub fn to_bits(self) -> u8 {
        match self {
            Self::NoWarning => 0,
            Self::AddSecond => 1,
            Self::DeleteSecond => 2,
            Self::Unsynchronized => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::NoWarning => "none",
            Self::AddSecond => "insert",
            Self::DeleteSecond => "delete",
            Self::Unsynchronized => "unsynchronized",
        }
    }
}

/// Association mode: the 3-bit field covers all eight values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Reserved,
    SymmetricActive,
    SymmetricPassive,
    Client,
    Server,
    Broadcast,
    Control,
    Private,
}

impl Mode {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Reserved,
            1 => Self::SymmetricActive,
            2 => Self::SymmetricPassive,
            3 => Self::Client,
            4 => Self::Server,
            5 => Self::Broadcast,
            6 => Self::Control,
            _ => Self::Private,
        }
    }

    pub fn to_bits(self) -> u8 {
        match self {
            Self::Reserved => 0,
            Self::SymmetricActive => 1,
            Self::SymmetricPassive => 2,
            Self::Client => 3,
            Self::Server => 4,
            Self::Broadcast => 5,
            Self::Control => 6,
            Self::Private => 7,
        }
    }
}

/// The reference id: a 4-character code at stratum 0 (kiss code) and 1 (clock source),
/// otherwise an IPv4 address or the first bytes of a hash of an IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct ReferenceId(pub [u8; 4]);

impl ReferenceId {
    pub const fn from_ascii(code: &[u8; 4]) -> Self {
        Self(*code)
    }

    /// How a person should read this id at the given stratum: a code where it is one
    /// of printable ASCII, else the address form (chrony's local reference, for one,
    /// is 127.127.1.1 at stratum 1).
    pub fn describe(self, stratum: u8) -> String {
        let code: Vec<u8> = self.0.iter().copied().take_while(|&b| b != 0).collect();
        if stratum <= 1 && !code.is_empty() && code.iter().all(u8::is_ascii_graphic) {
            String::from_utf8_lossy(&code).into_owned()
        } else {
            std::net::Ipv4Addr::from(self.0).to_string()
        }
    }
}

/// Kiss codes a client acts on (RFC 5905 §7.4, RFC 8915 §5.7); others are kept as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KissCode {
    Deny,
    Restrict,
    Rate,
    NtsNak,
    Other([u8; 4]),
}

impl KissCode {
    pub fn from_reference_id(id: ReferenceId) -> Self {
        match &id.0 {
            b"DENY" => Self::Deny,
            b"RSTR" => Self::Restrict,
            b"RATE" => Self::Rate,
            b"NTSN" => Self::NtsNak,
            other => Self::Other(*other),
        }
    }
}

/// The code as it appears on the wire (`DENY`, `RATE`, ...); other bytes as the
/// reference id shows them.
impl std::fmt::Display for KissCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = match self {
            Self::Deny => "DENY",
            Self::Restrict => "RSTR",
            Self::Rate => "RATE",
            Self::NtsNak => "NTSN",
            Self::Other(bytes) => return f.write_str(&ReferenceId(*bytes).describe(0)),
        };
        f.write_str(code)
    }
}

/// The fixed 48-byte header, every field typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub leap: Leap,
    /// 3 bits; any value is kept so that a server can echo or refuse it.
    pub version: u8,
    pub mode: Mode,
    pub stratum: u8,
    /// log2 seconds.
    pub poll: i8,
    /// log2 seconds.
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    pub reference_id: ReferenceId,
    pub reference_time: NtpTimestamp,
    pub origin_time: NtpTimestamp,
    pub receive_time: NtpTimestamp,
    pub transmit_time: NtpTimestamp,
}

impl Header {
    /// An NTPv4 client request: all zero but the poll exponent and transmit field.
    pub fn client_request(poll: i8, transmit_time: NtpTimestamp) -> Self {
        Self {
            leap: Leap::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll,
            precision: 0,
            root_delay: NtpShort::default(),
            root_dispersion: NtpShort::default(),
            reference_id: ReferenceId::default(),
            reference_time: NtpTimestamp::ZERO,
            origin_time: NtpTimestamp::ZERO,
            receive_time: NtpTimestamp::ZERO,
            transmit_time,
        }
    }

    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let first = r.u8()?;
        Some(Self {
            leap: Leap::from_bits(first >> 6),
            version: (first >> 3) & 7,
            mode: Mode::from_bits(first),
            stratum: r.u8()?,
            poll: r.u8()? as i8,
            precision: r.u8()? as i8,
            root_delay: NtpShort::from_bits(r.u32()?),
            root_dispersion: NtpShort::from_bits(r.u32()?),
            reference_id: ReferenceId(r.array()?),
            reference_time: NtpTimestamp::from_bits(r.u64()?),
            origin_time: NtpTimestamp::from_bits(r.u64()?),
            receive_time: NtpTimestamp::from_bits(r.u64()?),
            transmit_time: NtpTimestamp::from_bits(r.u64()?),
        })
    }

    /// Parses exactly the first 48 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        Self::read(&mut Reader::new(bytes)).ok_or(PacketError::TooShort(bytes.len()))
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.leap.to_bits() << 6 | (self.version & 7) << 3 | self.mode.to_bits());
        out.push(self.stratum);
        out.push(self.poll as u8);
        out.push(self.precision as u8);
        out.extend_from_slice(&self.root_delay.to_bits().to_be_bytes());
        out.extend_from_slice(&self.root_dispersion.to_bits().to_be_bytes());
        out.extend_from_slice(&self.reference_id.0);
        for t in [
            self.reference_time,
            self.origin_time,
            self.receive_time,
            self.transmit_time,
        ] {
            out.extend_from_slice(&t.to_bits().to_be_bytes());
        }
    }
}

/// Extension field types ntimed knows; any other value is kept as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtensionType {
    /// NTS Unique Identifier (RFC 8915 §5.3).
    UniqueIdentifier,
    /// NTS Cookie (RFC 8915 §5.4).
    NtsCookie,
    /// NTS Cookie Placeholder (RFC 8915 §5.5).
    NtsCookiePlaceholder,
    /// NTS Authenticator and Encrypted Extension Fields (RFC 8915 §5.6).
    NtsAuthenticator,
    Unknown(u16),
}

impl ExtensionType {
    pub fn from_u16(value: u16) -> Self {
        match value {
            0x0104 => Self::UniqueIdentifier,
            0x0204 => Self::NtsCookie,
            0x0304 => Self::NtsCookiePlaceholder,
            0x0404 => Self::NtsAuthenticator,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Self::UniqueIdentifier => 0x0104,
            Self::NtsCookie => 0x0204,
            Self::NtsCookiePlaceholder => 0x0304,
            Self::NtsAuthenticator => 0x0404,
            Self::Unknown(other) => other,
        }
    }
}

/// One extension field. `body` is everything after the 4-byte field header, padding
/// included, so that serializing reproduces the input exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionField<'a> {
    pub field_type: ExtensionType,
    pub body: &'a [u8],
}

impl<'a> ExtensionField<'a> {
    /// Reads one field; `offset` is its position in the packet, for error messages.
    pub fn read(r: &mut Reader<'a>, offset: usize) -> Result<Self, PacketError> {
        let available = r.remaining();
        let (Some(field_type), Some(length)) = (r.u16(), r.u16()) else {
            return Err(PacketError::ExtensionTruncated { offset, available });
        };
        let length = usize::from(length);
        if length < MIN_EXTENSION_LEN || !length.is_multiple_of(4) {
            return Err(PacketError::ExtensionLength { offset, length });
        }
        let body = r
            .take(length - 4)
            .ok_or(PacketError::ExtensionTruncated { offset, available })?;
        Ok(Self {
            field_type: ExtensionType::from_u16(field_type),
            body,
        })
    }

    /// Length on the wire, header included. Callers build bodies of valid length
    /// (a multiple of 4, at least 12 bytes, at most 65531).
    pub fn encoded_len(&self) -> usize {
        4 + self.body.len()
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.field_type.to_u16().to_be_bytes());
        out.extend_from_slice(&(self.encoded_len() as u16).to_be_bytes());
        out.extend_from_slice(self.body);
    }
}

/// What follows the header and extension fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailer<'a> {
    /// A key id and a 16..=20 byte digest (RFC 5905 §7.3, RFC 8573).
    Mac { key_id: u32, digest: &'a [u8] },
    /// Four zero bytes: "I could not authenticate your packet" (RFC 5905 §7.4).
    CryptoNak,
}

impl<'a> Trailer<'a> {
    /// Parses a trailer that makes up all of `bytes`, in a packet of `version`.
    pub fn parse(bytes: &'a [u8], offset: usize, version: u8) -> Result<Self, PacketError> {
        let mut r = Reader::new(bytes);
        let mac_len = if version >= 4 {
            MAC_TRAILER_LEN
        } else {
            LEGACY_MAC_TRAILER_LEN
        };
        match bytes.len() {
            4 if bytes == [0; 4] => Ok(Self::CryptoNak),
            len if mac_len.contains(&len) => {
                let key_id = r.u32().ok_or(PacketError::Trailing { offset, len })?;
                Ok(Self::Mac {
                    key_id,
                    digest: r.rest(),
                })
            }
            len => Err(PacketError::Trailing { offset, len }),
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Mac { key_id, digest } => {
                out.extend_from_slice(&key_id.to_be_bytes());
                out.extend_from_slice(digest);
            }
            Self::CryptoNak => out.extend_from_slice(&[0; 4]),
        }
    }
}

/// A whole NTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    pub extensions: Vec<ExtensionField<'a>>,
    pub trailer: Option<Trailer<'a>>,
}

/// Why bytes are not an NTP packet. Each variant names the part at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet is {0} bytes, shorter than the 48-byte header")]
    TooShort(usize),
    #[error(
        "extension field at byte {offset}: length {length} is not a multiple of 4 of at least 16"
    )]
    ExtensionLength { offset: usize, length: usize },
    #[error("extension field at byte {offset}: runs past the end ({available} bytes left)")]
    ExtensionTruncated { offset: usize, available: usize },
    #[error("{len} bytes at byte {offset} are neither an extension field, a MAC nor a crypto-NAK")]
    Trailing { offset: usize, len: usize },
}

impl<'a> Packet<'a> {
    /// Parses a packet, applying RFC 7822's rules to tell extension fields from a MAC:
    /// after the header, 4 zero bytes are a crypto-NAK, 20 to 24 bytes a MAC, and
    /// anything else must be an extension field. Before NTPv4, all that follows the
    /// header is the trailer.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let mut r = Reader::new(bytes);
        let header = Header::read(&mut r).ok_or(PacketError::TooShort(bytes.len()))?;
        let mut extensions = Vec::new();
        let mut trailer = None;
        if header.version < 4 && !r.is_empty() {
            trailer = Some(Trailer::parse(r.rest(), HEADER_LEN, header.version)?);
        }
        while header.version >= 4 && !r.is_empty() {
            let offset = r.position();
            let remaining = r.remaining();
            if remaining == 4 || MAC_TRAILER_LEN.contains(&remaining) {
                trailer = Some(Trailer::parse(r.rest(), offset, header.version)?);
                break;
            }
            if remaining < MIN_EXTENSION_LEN {
                return Err(PacketError::Trailing {
                    offset,
                    len: remaining,
                });
            }
            extensions.push(ExtensionField::read(&mut r, offset)?);
        }
        Ok(Self {
            header,
            extensions,
            trailer,
        })
    }

    pub fn encoded_len(&self) -> usize {
        let trailer = match self.trailer {
            Some(Trailer::Mac { digest, .. }) => 4 + digest.len(),
            Some(Trailer::CryptoNak) => 4,
            None => 0,
        };
        HEADER_LEN
            + self
                .extensions
                .iter()
                .map(ExtensionField::encoded_len)
                .sum::<usize>()
            + trailer
    }

    /// Appends the packet to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.header.write(out);
        for ef in &self.extensions {
            ef.write(out);
        }
        if let Some(trailer) = &self.trailer {
            trailer.write(out);
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// The bytes a MAC covers: everything before the trailer.
    pub fn authenticated_len(&self) -> usize {
        HEADER_LEN
            + self
                .extensions
                .iter()
                .map(ExtensionField::encoded_len)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_header() -> Header {
        Header {
            leap: Leap::AddSecond,
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            poll: 6,
            precision: -20,
            root_delay: NtpShort::from_bits(0x0000_1234),
            root_dispersion: NtpShort::from_bits(0x0001_0000),
            reference_id: ReferenceId([192, 0, 2, 1]),
            reference_time: NtpTimestamp::from_bits(1),
            origin_time: NtpTimestamp::from_bits(2),
            receive_time: NtpTimestamp::from_bits(3),
            transmit_time: NtpTimestamp::from_bits(0xdead_beef_0000_0001),
        }
    }

    #[test]
    fn header_fields_land_where_rfc5905_puts_them() {
        let bytes = Packet {
            header: sample_header(),
            extensions: vec![],
            trailer: None,
        }
        .to_vec();
        assert_eq!(bytes.len(), 48);
        assert_eq!(bytes[0], 0b01_100_100);
        assert_eq!(&bytes[1..4], &[2, 6, 0xec]);
        assert_eq!(&bytes[4..8], &[0, 0, 0x12, 0x34]);
        assert_eq!(&bytes[12..16], &[192, 0, 2, 1]);
        assert_eq!(&bytes[40..48], &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
        assert_eq!(Packet::parse(&bytes).unwrap().header, sample_header());
    }

    #[test]
    fn extension_fields_and_mac_round_trip() {
        let body = [7u8; 28];
        let digest = [9u8; 20];
        let packet = Packet {
            header: sample_header(),
            extensions: vec![
                ExtensionField {
                    field_type: ExtensionType::UniqueIdentifier,
                    body: &body,
                },
                ExtensionField {
                    field_type: ExtensionType::Unknown(0x2005),
                    body: &body[..12],
                },
            ],
            trailer: Some(Trailer::Mac {
                key_id: 42,
                digest: &digest,
            }),
        };
        let bytes = packet.to_vec();
        assert_eq!(bytes.len(), packet.encoded_len());
        assert_eq!(bytes.len(), 48 + 32 + 16 + 24);
        let parsed = Packet::parse(&bytes).unwrap();
        assert_eq!(parsed, packet);
        assert_eq!(parsed.authenticated_len(), 48 + 32 + 16);
    }

    #[test]
    fn trailer_lengths_follow_rfc7822() {
        let mut bytes = Packet {
            header: sample_header(),
            extensions: vec![],
            trailer: None,
        }
        .to_vec();
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            Packet::parse(&bytes).unwrap().trailer,
            Some(Trailer::CryptoNak)
        );
        bytes[48] = 1; // a key id with no digest
        assert_eq!(
            Packet::parse(&bytes),
            Err(PacketError::Trailing { offset: 48, len: 4 })
        );
        for len in [1usize, 8, 12, 19, 25] {
            let mut b = bytes[..48].to_vec();
            b.resize(48 + len, 0xff);
            assert!(Packet::parse(&b).is_err(), "{len} trailing bytes");
        }
        for len in 20..=24 {
            let mut b = bytes[..48].to_vec();
            b.resize(48 + len, 0xff);
            assert!(matches!(
                Packet::parse(&b).unwrap().trailer,
                Some(Trailer::Mac { key_id: u32::MAX, digest }) if digest.len() == len - 4
            ));
        }
    }

    #[test]
    fn before_ntpv4_everything_after_the_header_is_the_mac() {
        let mut v3 = sample_header();
        v3.version = 3;
        let mut bytes = Vec::new();
        v3.write(&mut bytes);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&[0xab; 32]); // a full SHA-256 digest, as chrony sends
        let p = Packet::parse(&bytes).unwrap();
        assert!(p.extensions.is_empty());
        assert!(
            matches!(p.trailer, Some(Trailer::Mac { key_id: 1, digest }) if digest.len() == 32)
        );
        assert_eq!(p.to_vec(), bytes);
        // The same bytes as NTPv4 are an extension field that does not fit.
        bytes[0] = bytes[0] & !0x38 | 4 << 3;
        assert!(Packet::parse(&bytes).is_err());
        // Too long for any digest, or too short for a MAC: malformed in NTPv3.
        for len in [8, 69, 100] {
            let mut b = bytes[..48].to_vec();
            b[0] = b[0] & !0x38 | 3 << 3;
            b.resize(48 + len, 0xff);
            assert!(Packet::parse(&b).is_err(), "{len}");
        }
    }

    #[test]
    fn malformed_extension_fields_are_named() {
        let mut base = vec![0x23u8]; // NTPv4, client
        base.resize(48, 0);
        base.extend_from_slice(&[0x01, 0x04, 0x00, 0x12]); // length 18: not a multiple of 4
        base.resize(48 + 28, 0);
        assert_eq!(
            Packet::parse(&base),
            Err(PacketError::ExtensionLength {
                offset: 48,
                length: 18
            })
        );
        base[50..52].copy_from_slice(&[0x00, 0x40]); // 64 bytes, only 28 present
        assert_eq!(
            Packet::parse(&base),
            Err(PacketError::ExtensionTruncated {
                offset: 48,
                available: 28
            })
        );
        base[50..52].copy_from_slice(&[0x00, 0x08]); // shorter than 16
        assert!(matches!(
            Packet::parse(&base),
            Err(PacketError::ExtensionLength { length: 8, .. })
        ));
    }

    #[test]
    fn reference_ids_read_as_codes_or_addresses() {
        assert_eq!(ReferenceId(*b"GPS\0").describe(1), "GPS");
        assert_eq!(ReferenceId(*b"RATE").describe(0), "RATE");
        assert_eq!(ReferenceId([127, 127, 1, 1]).describe(1), "127.127.1.1");
        assert_eq!(ReferenceId([192, 0, 2, 1]).describe(2), "192.0.2.1");
    }

    #[test]
    fn every_mode_and_leap_value_survives() {
        for b in 0..=255u8 {
            let mut bytes = [0u8; 48];
            bytes[0] = b;
            let p = Packet::parse(&bytes).unwrap();
            assert_eq!(p.to_vec(), bytes);
        }
    }
}
