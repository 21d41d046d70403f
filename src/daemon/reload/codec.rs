//! Frames on the reload link between the supervisor and the engine (a Unix stream
//! socket pair). Each is a 4-byte big-endian length, then a body:
//!
//! ```text
//! body     = kind:u8 id:u32 payload
//! Fetch    (1, engine → supervisor)  no payload: read the files and send them
//! Material (2, supervisor → engine)  keys:opt cert_count:u16 (chain_path:str chain:bytes
//!                                    key_path:str key:bytes)* fleet:opt leap
//! opt = 0 | 1 bytes;  leap = 0 | 1 bytes | 2 reason:str
//! Refused  (3, supervisor → engine)  reason:str
//! bytes/str = len:u32 then that many bytes (str: UTF-8)
//! ```
//!
//! `id` pairs a `Material` or `Refused` with the `Fetch` it answers; 0 means the
//! supervisor sent it unasked (on SIGHUP). The engine treats frames as untrusted
//! input: everything is bounded and checked, and errors name the field.

use zeroize::Zeroizing;

use super::material::Material;
use crate::daemon::nts::{CertificateFiles, MAX_PEM_LEN};
use crate::wire::reader::Reader;

/// The largest body: a key file and a chain and key per KE server, each at most
/// 1 MiB, for a handful of servers.
pub const MAX_FRAME: usize = 16 << 20;
/// More KE servers than anyone configures.
const MAX_CERTIFICATES: usize = 64;

const FETCH: u8 = 1;
const MATERIAL: u8 = 2;
const REFUSED: u8 = 3;

pub enum Frame {
    Fetch { id: u32 },
    Material { id: u32, material: Material },
    Refused { id: u32, reason: String },
}

/// Why a frame was refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reload frame: body of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("reload frame: {0} is truncated")]
    Truncated(&'static str),
    #[error("reload frame: {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("reload frame: unknown kind {0}")]
    UnknownKind(u8),
    #[error("reload frame: {0} is too large")]
    FieldTooLarge(&'static str),
    #[error("reload frame: {0} bytes after the end")]
    Trailing(usize),
}

impl Frame {
    /// The whole frame, length prefix included. Secrets in it are wiped when dropped.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        // Sized once: a Vec that grew would leave unwiped copies of the secrets behind.
        let mut body = Zeroizing::new(Vec::with_capacity(self.encoded_bound()));
        let (kind, id) = match self {
            Frame::Fetch { id } => (FETCH, *id),
            Frame::Material { id, .. } => (MATERIAL, *id),
            Frame::Refused { id, .. } => (REFUSED, *id),
        };
        body.push(kind);
        body.extend_from_slice(&id.to_be_bytes());
        match self {
            Frame::Fetch { .. } => {}
            Frame::Material { material, .. } => {
                put_optional(&mut body, material.keys.as_deref().map(|v| &v[..]));
                let count = u16::try_from(material.certificates.len()).unwrap_or(u16::MAX);
                body.extend_from_slice(&count.to_be_bytes());
                for files in material.certificates.iter().take(usize::from(count)) {
                    put_bytes(&mut body, files.chain_path.as_bytes());
                    put_bytes(&mut body, &files.chain);
                    put_bytes(&mut body, files.key_path.as_bytes());
                    put_bytes(&mut body, &files.key);
                }
                put_optional(&mut body, material.fleet_secret.as_deref().map(|v| &v[..]));
                // Why it could not be read travels as text: the engine warns with it.
                match &material.leap_file {
                    None => body.push(0),
                    Some(Ok(bytes)) => {
                        body.push(1);
                        put_bytes(&mut body, bytes);
                    }
                    Some(Err(why)) => {
                        body.push(2);
                        put_bytes(&mut body, why.as_bytes());
                    }
                }
            }
            Frame::Refused { reason, .. } => put_bytes(&mut body, reason.as_bytes()),
        }
        let mut frame = Zeroizing::new(Vec::with_capacity(body.len() + 4));
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    /// At least the body's length.
    fn encoded_bound(&self) -> usize {
        let fields = match self {
            Frame::Fetch { .. } => 0,
            Frame::Refused { reason, .. } => reason.len(),
            Frame::Material { material, .. } => {
                let files: usize = material
                    .certificates
                    .iter()
                    .map(|f| {
                        f.chain_path.len() + f.chain.len() + f.key_path.len() + f.key.len() + 16
                    })
                    .sum();
                let leap = match &material.leap_file {
                    Some(Ok(bytes)) => bytes.len(),
                    Some(Err(why)) => why.len(),
                    None => 0,
                };
                files
                    + material.keys.as_ref().map_or(0, |k| k.len())
                    + material.fleet_secret.as_ref().map_or(0, |s| s.len())
                    + leap
                    + 32
            }
        };
        fields + 16
    }

    /// The body's length from a frame's first four bytes, refused beyond [`MAX_FRAME`].
    pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
        let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        Ok(len)
    }

    /// Parses one body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        if body.len() > MAX_FRAME {
            return Err(FrameError::TooLong(body.len()));
        }
        let mut r = Reader::new(body);
        let kind = r.u8().ok_or(FrameError::Truncated("kind"))?;
        let id = r.u32().ok_or(FrameError::Truncated("id"))?;
        let frame = match kind {
            FETCH => Frame::Fetch { id },
            MATERIAL => {
                let keys = optional(&mut r, "keys")?.map(|k| Zeroizing::new(k.to_vec()));
                let count = r.u16().ok_or(FrameError::Truncated("certificate count"))?;
                let count = usize::from(count);
                if count > MAX_CERTIFICATES {
                    return Err(FrameError::FieldTooLarge("certificate count"));
                }
                let mut certificates = Vec::with_capacity(count);
                for _ in 0..count {
                    certificates.push(CertificateFiles {
                        chain_path: text(&mut r, "chain path")?,
                        chain: pem(&mut r, "chain")?.to_vec(),
                        key_path: text(&mut r, "key path")?,
                        key: Zeroizing::new(pem(&mut r, "private key")?.to_vec()),
                    });
                }
                let fleet_secret =
                    optional(&mut r, "fleet secret")?.map(|s| Zeroizing::new(s.to_vec()));
                let leap_file = match r.u8().ok_or(FrameError::Truncated("leap file"))? {
                    0 => None,
                    1 => Some(Ok(bytes(&mut r, "leap file")?.to_vec())),
                    2 => Some(Err(text(&mut r, "leap file error")?)),
                    _ => return Err(FrameError::Truncated("leap file")),
                };
                Frame::Material {
                    id,
                    material: Material {
                        keys,
                        certificates,
                        fleet_secret,
                        leap_file,
                    },
                }
            }
            REFUSED => Frame::Refused {
                id,
                reason: text(&mut r, "reason")?,
            },
            other => return Err(FrameError::UnknownKind(other)),
        };
        if !r.is_empty() {
            return Err(FrameError::Trailing(r.remaining()));
        }
        Ok(frame)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
}

fn bytes<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a [u8], FrameError> {
    let len = r.u32().ok_or(FrameError::Truncated(field))?;
    let len = usize::try_from(len).map_err(|_| FrameError::FieldTooLarge(field))?;
    r.take(len).ok_or(FrameError::Truncated(field))
}

/// A PEM file's bytes, no larger than the start would read.
fn pem<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a [u8], FrameError> {
    let value = bytes(r, field)?;
    if value.len() as u64 > MAX_PEM_LEN {
        return Err(FrameError::FieldTooLarge(field));
    }
    Ok(value)
}

fn text(r: &mut Reader<'_>, field: &'static str) -> Result<String, FrameError> {
    let value = bytes(r, field)?;
    if value.len() > 4096 {
        return Err(FrameError::FieldTooLarge(field));
    }
    std::str::from_utf8(value)
        .map(str::to_owned)
        .map_err(|_| FrameError::NotUtf8(field))
}

fn optional<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<Option<&'a [u8]>, FrameError> {
    match r.u8().ok_or(FrameError::Truncated(field))? {
        0 => Ok(None),
        1 => bytes(r, field).map(Some),
        _ => Err(FrameError::Truncated(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> Material {
        Material {
            keys: Some(Zeroizing::new(b"1 AES128 HEX:00\n".to_vec())),
            certificates: vec![CertificateFiles {
                chain_path: "/etc/c.pem".into(),
                chain: b"chain".to_vec(),
                key_path: "/etc/k.pem".into(),
                key: Zeroizing::new(b"key".to_vec()),
            }],
            fleet_secret: None,
            leap_file: Some(Err("cannot open".into())),
        }
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Fetch { id: 7 },
            Frame::Material {
                id: 0,
                material: material(),
            },
            Frame::Refused {
                id: 9,
                reason: "bad".into(),
            },
        ];
        for frame in frames {
            let encoded = frame.encode();
            let prefix = [encoded[0], encoded[1], encoded[2], encoded[3]];
            assert_eq!(Frame::body_len(prefix).unwrap(), encoded.len() - 4);
            let decoded = Frame::decode(&encoded[4..]).unwrap();
            assert_eq!(decoded.encode(), encoded);
        }
    }

    #[test]
    fn bad_frames_name_the_field() {
        let good = Frame::Material {
            id: 1,
            material: material(),
        }
        .encode();
        let body = &good[4..];
        // Every truncation is an error, never a panic.
        for cut in 0..body.len() {
            assert!(Frame::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert_eq!(
            Frame::decode(&trailing).err(),
            Some(FrameError::Trailing(1))
        );
        assert_eq!(
            Frame::decode(&[9, 0, 0, 0, 0]).err(),
            Some(FrameError::UnknownKind(9))
        );
        assert_eq!(
            Frame::body_len((MAX_FRAME as u32 + 1).to_be_bytes()).err(),
            Some(FrameError::TooLong(MAX_FRAME + 1))
        );
        let mut many = vec![MATERIAL, 0, 0, 0, 1, 0];
        many.extend_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            Frame::decode(&many).err(),
            Some(FrameError::FieldTooLarge("certificate count"))
        );
        let refused = [REFUSED, 0, 0, 0, 1, 0, 0, 0, 1, 0xff];
        assert_eq!(
            Frame::decode(&refused).err(),
            Some(FrameError::NotUtf8("reason"))
        );
    }
}
