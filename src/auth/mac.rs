//! Legacy NTP MACs: digest of key ‖ packet (RFC 5905 §7.3; MD5, SHA-1, SHA-2) and
//! AES-CMAC of the packet (RFC 8573). NTPv4 carries at most 20 digest bytes, so longer
//! digests are truncated, as chrony and NTPsec do; NTPv3 packets carry them whole
//! (chrony sends SHA-256 and longer keys as NTPv3).

use cmac::{Cmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use super::keys::{KeyType, SymmetricKey};
use crate::wire::packet::{MAX_DIGEST_LEN, NTPV4_MAX_DIGEST_LEN, Packet, Trailer};

/// A computed digest, at most 64 bytes.
#[derive(Clone, Copy)]
pub struct MacDigest {
    bytes: [u8; MAX_DIGEST_LEN],
    len: usize,
}

impl MacDigest {
    fn from_slice(full: &[u8]) -> Self {
        let len = full.len().min(MAX_DIGEST_LEN);
        let mut bytes = [0; MAX_DIGEST_LEN];
        bytes[..len].copy_from_slice(&full[..len]);
        Self { bytes, len }
    }

    fn truncated(mut self, max: usize) -> Self {
        self.len = self.len.min(max);
        self
    }
}

/// How many digest bytes a packet of `version` carries.
pub fn digest_limit(version: u8) -> usize {
    if version >= 4 {
        NTPV4_MAX_DIGEST_LEN
    } else {
        MAX_DIGEST_LEN
    }
}

/// The NTP version of a packet, from its first byte.
fn version_of(packet: &[u8]) -> u8 {
    packet.first().map_or(0, |b| b >> 3 & 7)
}

impl AsRef<[u8]> for MacDigest {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn hash<D: digest::Digest>(secret: &[u8], data: &[u8]) -> MacDigest {
    MacDigest::from_slice(&D::new().chain_update(secret).chain_update(data).finalize())
}

fn cmac<C: cmac::block_api::CmacCipher + KeyInit>(secret: &[u8], data: &[u8]) -> MacDigest {
    // The key length was checked when the key was built.
    match <Cmac<C> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => MacDigest::from_slice(&mac.chain_update(data).finalize().into_bytes()),
        Err(_) => MacDigest::from_slice(&[]),
    }
}

/// The digest of the packet `data` under `key`, truncated as its version requires.
pub fn compute(key: &SymmetricKey, data: &[u8]) -> MacDigest {
    full_digest(key, data).truncated(digest_limit(version_of(data)))
}

fn full_digest(key: &SymmetricKey, data: &[u8]) -> MacDigest {
    let secret = key.secret();
    match key.key_type() {
        KeyType::Md5 => hash::<md5::Md5>(secret, data),
        KeyType::Sha1 => hash::<sha1::Sha1>(secret, data),
        KeyType::Sha256 => hash::<sha2::Sha256>(secret, data),
        KeyType::Sha384 => hash::<sha2::Sha384>(secret, data),
        KeyType::Sha512 => hash::<sha2::Sha512>(secret, data),
        KeyType::Aes128Cmac => cmac::<aes::Aes128>(secret, data),
        KeyType::Aes256Cmac => cmac::<aes::Aes256>(secret, data),
    }
}

/// Constant-time check of `digest` against the MAC of `data` under `key`. A digest of
/// any other length (truncated, padded) fails.
pub fn verify(key: &SymmetricKey, data: &[u8], digest: &[u8]) -> bool {
    compute(key, data).as_ref().ct_eq(digest).into()
}

/// Appends key id and digest of everything already in `packet`.
pub fn append_mac(key: &SymmetricKey, packet: &mut Vec<u8>) {
    let digest = compute(key, packet);
    packet.extend_from_slice(&key.id().to_be_bytes());
    packet.extend_from_slice(digest.as_ref());
}

/// Why a packet did not authenticate under the expected key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("no MAC")]
    Missing,
    #[error("crypto-NAK")]
    CryptoNak,
    #[error("MAC under key {got}, expected key {expected}")]
    WrongKeyId { got: u32, expected: u32 },
    #[error("MAC digest does not verify")]
    BadDigest,
}

/// Checks that `packet` (parsed from `bytes`) carries a valid MAC under exactly `key`.
pub fn check_packet(key: &SymmetricKey, packet: &Packet<'_>, bytes: &[u8]) -> Result<(), MacError> {
    match packet.trailer {
        None => Err(MacError::Missing),
        Some(Trailer::CryptoNak) => Err(MacError::CryptoNak),
        Some(Trailer::Mac { key_id, .. }) if key_id != key.id() => Err(MacError::WrongKeyId {
            got: key_id,
            expected: key.id(),
        }),
        Some(Trailer::Mac { digest, .. }) => {
            let covered = bytes
                .get(..packet.authenticated_len())
                .ok_or(MacError::BadDigest)?;
            if verify(key, covered, digest) {
                Ok(())
            } else {
                Err(MacError::BadDigest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{KeyFileFormat, KeyStore};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key(line: &str) -> SymmetricKey {
        let store = KeyStore::parse("t", line, KeyFileFormat::Chrony).unwrap();
        store.iter().next().unwrap().clone()
    }

    #[test]
    fn digests_are_hash_of_key_then_packet() {
        // md5("key" ‖ "data") == md5("keydata"), and so on: not HMAC. Expected values
        // from Python's hashlib.
        let data = b"data";
        let md5 = key("1 MD5 ASCII:key");
        assert_eq!(
            hex(compute(&md5, data).as_ref()),
            "3f13977a2262dae86874aee1610c7e6d"
        );
        let sha1 = key("3 SHA1 ASCII:key");
        assert_eq!(
            hex(compute(&sha1, data).as_ref()),
            "18cd09d4f5389bbebf50df12209de3ae63de3eaf"
        );
        let sha256 = key("2 SHA256 ASCII:key");
        assert_eq!(
            hex(compute(&sha256, data).as_ref()),
            "6b450ccb176c1a99a8f7bf460e92e0e4a4432237",
            "truncated to 20 bytes"
        );
    }

    #[test]
    fn aes_cmac_matches_rfc4493() {
        // RFC 4493 §4, example 2: 16-byte message.
        let k = key("1 AES128 HEX:2b7e151628aed2a6abf7158809cf4f3c");
        let msg = [
            0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93,
            0x17, 0x2a,
        ];
        assert_eq!(
            hex(compute(&k, &msg).as_ref()),
            "070a16b46b4d4144f79bdd9dd04a287c"
        );
    }

    #[test]
    fn verify_is_exact() {
        let k = key("1 SHA256 ASCII:key");
        let good = compute(&k, b"packet");
        assert!(verify(&k, b"packet", good.as_ref()));
        assert!(!verify(&k, b"packet", &good.as_ref()[..19]), "truncated");
        let mut longer = good.as_ref().to_vec();
        longer.push(0);
        assert!(!verify(&k, b"packet", &longer), "padded");
        let mut flipped = good.as_ref().to_vec();
        flipped[0] ^= 1;
        assert!(!verify(&k, b"packet", &flipped));
        assert!(!verify(&k, b"packeT", good.as_ref()));
    }
}
