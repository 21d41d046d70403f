//! NTS-KE records (RFC 8915 §4): `C(1) | type(15) | body length(16) | body`.
//!
//! The codec checks the shape of each record body (list lengths, fixed sizes); what a
//! message must contain is the negotiation's business (`auth::nts::ke`). Unknown record
//! types keep their critical bit and body so the negotiation can apply RFC 8915's
//! rules to them.

use super::reader::Reader;

/// Neither side needs more: a request is a few records, a response 8 cookies of about
/// 100 bytes. Larger messages are refused rather than buffered (ADVERSARIAL 5, 9).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// chrony's private record announcing RFC-compliant AES-128-GCM-SIV key export
/// (chrony ≥ 4.6.1).
pub const CHRONY_COMPLIANT_GCM_SIV: u16 = 1024;

/// Record types of RFC 8915 §7.6, plus what ntimed must recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    EndOfMessage,
    NextProtocol,
    Error,
    Warning,
    AeadAlgorithm,
    NewCookie,
    Server,
    Port,
    ChronyCompliantGcmSiv,
    Unknown(u16),
}

impl RecordType {
    pub fn from_u16(value: u16) -> Self {
        match value {
            0 => Self::EndOfMessage,
            1 => Self::NextProtocol,
            2 => Self::Error,
            3 => Self::Warning,
            4 => Self::AeadAlgorithm,
            5 => Self::NewCookie,
            6 => Self::Server,
            7 => Self::Port,
            CHRONY_COMPLIANT_GCM_SIV => Self::ChronyCompliantGcmSiv,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Self::EndOfMessage => 0,
            Self::NextProtocol => 1,
            Self::Error => 2,
            Self::Warning => 3,
            Self::AeadAlgorithm => 4,
            Self::NewCookie => 5,
            Self::Server => 6,
            Self::Port => 7,
            Self::ChronyCompliantGcmSiv => CHRONY_COMPLIANT_GCM_SIV,
            Self::Unknown(other) => other,
        }
    }
}

/// A record body, decoded by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody<'a> {
    EndOfMessage,
    /// Protocol ids; 0 is NTPv4.
    NextProtocol(Vec<u16>),
    Error(u16),
    Warning(u16),
    AeadAlgorithm(Vec<u16>),
    NewCookie(&'a [u8]),
    /// An ASCII host name or address.
    Server(&'a str),
    Port(u16),
    ChronyCompliantGcmSiv(&'a [u8]),
    Unknown {
        record_type: u16,
        body: &'a [u8],
    },
}

/// One record with its critical bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub critical: bool,
    pub body: RecordBody<'a>,
}

/// Why bytes are not NTS-KE records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeCodecError {
    #[error("message longer than {MAX_MESSAGE_LEN} bytes")]
    TooLong,
    #[error("{0:?} record: body of {1} bytes has the wrong length")]
    BodyLength(RecordType, usize),
    #[error("Server record: not ASCII")]
    ServerNotAscii,
}

impl<'a> Record<'a> {
    pub fn new(critical: bool, body: RecordBody<'a>) -> Self {
        Self { critical, body }
    }

    pub fn record_type(&self) -> RecordType {
        match &self.body {
            RecordBody::EndOfMessage => RecordType::EndOfMessage,
            RecordBody::NextProtocol(_) => RecordType::NextProtocol,
            RecordBody::Error(_) => RecordType::Error,
            RecordBody::Warning(_) => RecordType::Warning,
            RecordBody::AeadAlgorithm(_) => RecordType::AeadAlgorithm,
            RecordBody::NewCookie(_) => RecordType::NewCookie,
            RecordBody::Server(_) => RecordType::Server,
            RecordBody::Port(_) => RecordType::Port,
            RecordBody::ChronyCompliantGcmSiv(_) => RecordType::ChronyCompliantGcmSiv,
            RecordBody::Unknown { record_type, .. } => RecordType::Unknown(*record_type),
        }
    }

    /// Reads one record; `Ok(None)` if `r` does not yet hold a whole one.
    fn read(r: &mut Reader<'a>) -> Result<Option<Self>, KeCodecError> {
        let start = r.clone();
        let (Some(head), Some(len)) = (r.u16(), r.u16()) else {
            *r = start;
            return Ok(None);
        };
        let Some(body) = r.take(usize::from(len)) else {
            *r = start;
            return Ok(None);
        };
        let critical = head & 0x8000 != 0;
        let record_type = RecordType::from_u16(head & 0x7fff);
        let bad = || KeCodecError::BodyLength(record_type, body.len());
        let u16_list = || -> Result<Vec<u16>, KeCodecError> {
            if !body.len().is_multiple_of(2) {
                return Err(bad());
            }
            Ok(body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect())
        };
        let single_u16 = || -> Result<u16, KeCodecError> {
            let bytes: [u8; 2] = body.try_into().map_err(|_| bad())?;
            Ok(u16::from_be_bytes(bytes))
        };
        let body = match record_type {
            RecordType::EndOfMessage if body.is_empty() => RecordBody::EndOfMessage,
            RecordType::EndOfMessage => return Err(bad()),
            RecordType::NextProtocol => RecordBody::NextProtocol(u16_list()?),
            RecordType::Error => RecordBody::Error(single_u16()?),
            RecordType::Warning => RecordBody::Warning(single_u16()?),
            RecordType::AeadAlgorithm => RecordBody::AeadAlgorithm(u16_list()?),
            RecordType::NewCookie => RecordBody::NewCookie(body),
            RecordType::Server => RecordBody::Server(
                std::str::from_utf8(body)
                    .ok()
                    .filter(|s| s.is_ascii())
                    .ok_or(KeCodecError::ServerNotAscii)?,
            ),
            RecordType::Port => RecordBody::Port(single_u16()?),
            RecordType::ChronyCompliantGcmSiv => RecordBody::ChronyCompliantGcmSiv(body),
            RecordType::Unknown(record_type) => RecordBody::Unknown { record_type, body },
        };
        Ok(Some(Self { critical, body }))
    }

    /// Appends the record. Bodies longer than 65535 bytes cannot be built by
    /// negotiation (cookies and names are far shorter) and are cut to fit.
    pub fn write(&self, out: &mut Vec<u8>) {
        let head = self.record_type().to_u16() & 0x7fff | if self.critical { 0x8000 } else { 0 };
        out.extend_from_slice(&head.to_be_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        match &self.body {
            RecordBody::EndOfMessage => {}
            RecordBody::NextProtocol(list) | RecordBody::AeadAlgorithm(list) => {
                for v in list.iter().take(u16::MAX as usize / 2) {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            RecordBody::Error(v) | RecordBody::Warning(v) | RecordBody::Port(v) => {
                out.extend_from_slice(&v.to_be_bytes());
            }
            RecordBody::NewCookie(b)
            | RecordBody::ChronyCompliantGcmSiv(b)
            | RecordBody::Unknown { body: b, .. } => {
                out.extend_from_slice(b.get(..usize::from(u16::MAX)).unwrap_or(b));
            }
            RecordBody::Server(s) => {
                let b = s.as_bytes();
                out.extend_from_slice(b.get(..usize::from(u16::MAX)).unwrap_or(b));
            }
        }
        let len = (out.len() - len_at - 2) as u16;
        out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }
}

/// A whole message (up to and including End of Message) at the start of `buf`, with
/// the number of bytes it took; `Ok(None)` if more bytes are needed. Records after an
/// End of Message that is not critical are still read to the end of the message so
/// the negotiation can refuse it.
pub fn parse_message(buf: &[u8]) -> Result<Option<(Vec<Record<'_>>, usize)>, KeCodecError> {
    let mut r = Reader::new(buf);
    let mut records = Vec::new();
    loop {
        if r.position() > MAX_MESSAGE_LEN {
            return Err(KeCodecError::TooLong);
        }
        match Record::read(&mut r)? {
            None if buf.len() > MAX_MESSAGE_LEN => return Err(KeCodecError::TooLong),
            None => return Ok(None),
            Some(record) => {
                let end = record.body == RecordBody::EndOfMessage;
                records.push(record);
                if end {
                    return Ok(Some((records, r.position())));
                }
            }
        }
    }
}

/// Serializes records in order.
pub fn write_message(records: &[Record<'_>], out: &mut Vec<u8>) {
    for record in records {
        record.write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(records: &[Record<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        write_message(records, &mut out);
        out
    }

    #[test]
    fn a_request_round_trips() {
        let request = [
            Record::new(true, RecordBody::NextProtocol(vec![0])),
            Record::new(false, RecordBody::AeadAlgorithm(vec![30, 15])),
            Record::new(
                false,
                RecordBody::Unknown {
                    record_type: 0x4000,
                    body: b"xy",
                },
            ),
            Record::new(true, RecordBody::EndOfMessage),
        ];
        let b = bytes(&request);
        assert_eq!(&b[..6], &[0x80, 0x01, 0x00, 0x02, 0x00, 0x00]);
        let (parsed, used) = parse_message(&b).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(parsed, request);
    }

    #[test]
    fn partial_messages_ask_for_more() {
        let b = bytes(&[
            Record::new(true, RecordBody::NextProtocol(vec![0])),
            Record::new(true, RecordBody::EndOfMessage),
        ]);
        for cut in 0..b.len() {
            assert_eq!(parse_message(&b[..cut]), Ok(None), "{cut}");
        }
        let mut extra = b.clone();
        extra.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse_message(&extra).unwrap().unwrap().1, b.len());
    }

    #[test]
    fn bodies_of_the_wrong_shape_are_named() {
        let cases: [(&[u8], RecordType); 5] = [
            (&[0x80, 0x01, 0x00, 0x01, 0x00], RecordType::NextProtocol),
            (
                &[0x80, 0x04, 0x00, 0x03, 0, 15, 0],
                RecordType::AeadAlgorithm,
            ),
            (&[0x80, 0x02, 0x00, 0x00], RecordType::Error),
            (&[0x00, 0x07, 0x00, 0x03, 0, 1, 2], RecordType::Port),
            (&[0x80, 0x00, 0x00, 0x01, 0], RecordType::EndOfMessage),
        ];
        for (b, t) in cases {
            assert!(
                matches!(parse_message(b), Err(KeCodecError::BodyLength(rt, _)) if rt == t),
                "{t:?}"
            );
        }
        assert_eq!(
            parse_message(&[0x00, 0x06, 0x00, 0x01, 0xff]),
            Err(KeCodecError::ServerNotAscii)
        );
    }

    #[test]
    fn endless_messages_are_capped() {
        let junk = Record::new(
            false,
            RecordBody::Unknown {
                record_type: 99,
                body: &[0; 1000],
            },
        );
        let b = bytes(&vec![junk; 20]);
        assert_eq!(parse_message(&b), Err(KeCodecError::TooLong));
    }
}
