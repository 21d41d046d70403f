//! The AEAD algorithms NTS negotiates (RFC 8915 §5.1, IANA AEAD registry).
//!
//! AES-SIV takes the associated data and the nonce as two header components (RFC 5297
//! §3, as chrony and NTPsec do) and puts the 16-byte tag before the ciphertext;
//! AES-GCM-SIV (RFC 8452) takes a 12-byte nonce and appends the tag.

use aes_gcm_siv::aead::AeadInOut as _;
use aes_gcm_siv::aead::inout::InOutBuf;
use aes_siv::KeyInit;
use zeroize::{Zeroize, Zeroizing};

/// Length of every tag here.
pub const TAG_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    /// 15, mandatory to implement; 32-byte key.
    AesSivCmac256,
    /// 17; 64-byte key.
    AesSivCmac512,
    /// 30; 16-byte key, 12-byte nonce.
    AesGcmSiv128,
}

impl AeadAlgorithm {
    /// ntimed's preference order when a client offers several.
    pub const PREFERENCE: [Self; 3] =
        [Self::AesSivCmac256, Self::AesGcmSiv128, Self::AesSivCmac512];

    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            15 => Some(Self::AesSivCmac256),
            17 => Some(Self::AesSivCmac512),
            30 => Some(Self::AesGcmSiv128),
            _ => None,
        }
    }

    pub fn id(self) -> u16 {
        match self {
            Self::AesSivCmac256 => 15,
            Self::AesSivCmac512 => 17,
            Self::AesGcmSiv128 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::AesSivCmac256 => "AES-SIV-CMAC-256",
            Self::AesSivCmac512 => "AES-SIV-CMAC-512",
            Self::AesGcmSiv128 => "AES-128-GCM-SIV",
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Self::AesSivCmac256 => 32,
            Self::AesSivCmac512 => 64,
            Self::AesGcmSiv128 => 16,
        }
    }

    /// The nonce length ntimed sends; also the only one GCM-SIV accepts.
    pub fn nonce_len(self) -> usize {
        match self {
            Self::AesGcmSiv128 => 12,
            _ => 16,
        }
    }
}

/// The longest key of any algorithm here (AES-SIV-CMAC-512's).
const MAX_KEY_LEN: usize = 64;

/// A key for one algorithm. The bytes live in one heap block from creation to wipe:
/// moving an `AeadKey` (into a map, through a channel, out of a growing vector) moves
/// only the pointer, so no stale copy of a master or session key is left behind.
/// Zeroized on drop; no `Debug` of the secret.
#[derive(Clone)]
pub struct AeadKey {
    algorithm: AeadAlgorithm,
    key: Box<[u8; MAX_KEY_LEN]>,
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({}, redacted)", self.algorithm.name())
    }
}

impl AeadKey {
    /// `None` unless `key` has the algorithm's length.
    pub fn new(algorithm: AeadAlgorithm, key: &[u8]) -> Option<Self> {
        if key.len() != algorithm.key_len() {
            return None;
        }
        let mut new = Self {
            algorithm,
            key: Box::new([0; MAX_KEY_LEN]),
        };
        new.key.get_mut(..key.len())?.copy_from_slice(key);
        Some(new)
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.algorithm
    }

    /// The secret, for sealing into cookies, persisting master keys, and
    /// `ntimed ke --export`.
    pub fn bytes(&self) -> &[u8] {
        self.key.get(..self.algorithm.key_len()).unwrap_or_default()
    }

    /// Encrypts `plaintext` into `sealed`, which must be `plaintext.len() + 16` bytes:
    /// ciphertext and tag in the algorithm's layout. Writing into the caller's buffer
    /// lets a reply be sealed where it is sent from. `None` for a nonce the algorithm
    /// cannot take or a `sealed` of the wrong length.
    pub fn seal_into(
        &self,
        nonce: &[u8],
        plaintext: &[u8],
        associated: &[u8],
        sealed: &mut [u8],
    ) -> Option<()> {
        if sealed.len() != plaintext.len().checked_add(TAG_LEN)? {
            return None;
        }
        match self.algorithm {
            AeadAlgorithm::AesSivCmac256 => {
                let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(self.bytes()).ok()?;
                let (tag, body) = sealed.split_at_mut(TAG_LEN);
                let buffer = InOutBuf::new(plaintext, body).ok()?;
                tag.copy_from_slice(
                    &siv.encrypt_inout_detached([associated, nonce], buffer)
                        .ok()?,
                );
            }
            AeadAlgorithm::AesSivCmac512 => {
                let mut siv = aes_siv::siv::Aes256Siv::new_from_slice(self.bytes()).ok()?;
                let (tag, body) = sealed.split_at_mut(TAG_LEN);
                let buffer = InOutBuf::new(plaintext, body).ok()?;
                tag.copy_from_slice(
                    &siv.encrypt_inout_detached([associated, nonce], buffer)
                        .ok()?,
                );
            }
            AeadAlgorithm::AesGcmSiv128 => {
                let cipher = aes_gcm_siv::Aes128GcmSiv::new_from_slice(self.bytes()).ok()?;
                let nonce = nonce.try_into().ok()?;
                let (body, tag) = sealed.split_at_mut(plaintext.len());
                let buffer = InOutBuf::new(plaintext, body).ok()?;
                tag.copy_from_slice(
                    &cipher
                        .encrypt_inout_detached(nonce, associated, buffer)
                        .ok()?,
                );
            }
        }
        Some(())
    }

    /// Encrypts `plaintext`; the result is ciphertext and tag (`plaintext.len() + 16`).
    /// `None` only for a nonce the algorithm cannot take.
    pub fn seal(&self, nonce: &[u8], plaintext: &[u8], associated: &[u8]) -> Option<Vec<u8>> {
        let mut sealed = vec![0; plaintext.len().checked_add(TAG_LEN)?];
        self.seal_into(nonce, plaintext, associated, &mut sealed)?;
        Some(sealed)
    }

    /// Decrypts and authenticates `ciphertext` into `plain`, which must be 16 bytes
    /// shorter. `None` if anything is wrong; `plain` then holds nothing of the secret.
    pub fn open_into(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        associated: &[u8],
        plain: &mut [u8],
    ) -> Option<()> {
        if ciphertext.len() != plain.len().checked_add(TAG_LEN)? {
            return None;
        }
        let opened = match self.algorithm {
            AeadAlgorithm::AesSivCmac256 => {
                let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(self.bytes()).ok()?;
                let (tag, body) = ciphertext.split_first_chunk::<TAG_LEN>()?;
                let buffer = InOutBuf::new(body, plain).ok()?;
                siv.decrypt_inout_detached([associated, nonce], buffer, &(*tag).into())
                    .is_ok()
            }
            AeadAlgorithm::AesSivCmac512 => {
                let mut siv = aes_siv::siv::Aes256Siv::new_from_slice(self.bytes()).ok()?;
                let (tag, body) = ciphertext.split_first_chunk::<TAG_LEN>()?;
                let buffer = InOutBuf::new(body, plain).ok()?;
                siv.decrypt_inout_detached([associated, nonce], buffer, &(*tag).into())
                    .is_ok()
            }
            AeadAlgorithm::AesGcmSiv128 => {
                let cipher = aes_gcm_siv::Aes128GcmSiv::new_from_slice(self.bytes()).ok()?;
                let nonce = nonce.try_into().ok()?;
                let (body, tag) = ciphertext.split_last_chunk::<TAG_LEN>()?;
                let buffer = InOutBuf::new(body, plain).ok()?;
                cipher
                    .decrypt_inout_detached(nonce, associated, buffer, &(*tag).into())
                    .is_ok()
            }
        };
        if !opened {
            // What failed to authenticate is not handed on, even partly decrypted.
            plain.zeroize();
            return None;
        }
        Some(())
    }

    /// Decrypts and authenticates; `None` if anything is wrong. An empty plaintext (a
    /// request's authenticator) allocates nothing.
    pub fn open(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        associated: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let mut plain = Zeroizing::new(vec![0; ciphertext.len().checked_sub(TAG_LEN)?]);
        self.open_into(nonce, ciphertext, associated, &mut plain)?;
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5297 §A.1: AES-SIV-CMAC-256, deterministic (one header, no nonce).
    #[test]
    fn aes_siv_matches_rfc5297() {
        let key = hex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(&key).unwrap();
        let ad = hex("101112131415161718191a1b1c1d1e1f2021222324252627");
        let pt = hex("112233445566778899aabbccddee");
        let out = siv.encrypt([&ad[..]], &pt).unwrap();
        assert_eq!(
            out,
            hex("85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c")
        );
    }

    /// Sealing in place lays out tag and ciphertext as each crate's own `encrypt`
    /// does (tag first for SIV, last for GCM-SIV), which is what peers expect.
    #[test]
    fn sealing_in_place_matches_each_crates_layout() {
        use aes_gcm_siv::aead::Aead as _;
        let (nonce, ad, pt) = ([3u8; 16], b"associated", b"plaintext of 19 b");
        let siv_key = AeadKey::new(AeadAlgorithm::AesSivCmac256, &[5; 32]).unwrap();
        let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(&[5; 32]).unwrap();
        assert_eq!(
            siv_key.seal(&nonce, pt, ad).unwrap(),
            siv.encrypt([&ad[..], &nonce], pt).unwrap()
        );
        let gcm_key = AeadKey::new(AeadAlgorithm::AesGcmSiv128, &[5; 16]).unwrap();
        let gcm = aes_gcm_siv::Aes128GcmSiv::new_from_slice(&[5; 16]).unwrap();
        let payload = aes_gcm_siv::aead::Payload { msg: pt, aad: ad };
        assert_eq!(
            gcm_key.seal(&nonce[..12], pt, ad).unwrap(),
            gcm.encrypt(nonce[..12].try_into().unwrap(), payload)
                .unwrap()
        );
    }

    #[test]
    fn buffers_of_the_wrong_length_are_refused_and_failed_opens_leave_nothing() {
        for alg in AeadAlgorithm::PREFERENCE {
            let key = AeadKey::new(alg, &vec![7; alg.key_len()]).unwrap();
            let nonce = vec![1; alg.nonce_len()];
            assert!(key.seal_into(&nonce, b"abc", b"", &mut [0; 18]).is_none());
            let sealed = key.seal(&nonce, b"abc", b"").unwrap();
            assert!(key.open_into(&nonce, &sealed, b"", &mut [0; 4]).is_none());
            let mut plain = [9; 3];
            assert!(key.open_into(&nonce, &sealed, b"x", &mut plain).is_none());
            assert_eq!(plain, [0; 3], "{alg:?}: no partial plaintext");
            assert_eq!(&key.open(&nonce, &sealed, b"").unwrap()[..], b"abc");
        }
    }

    #[test]
    fn every_algorithm_seals_and_opens() {
        for alg in AeadAlgorithm::PREFERENCE {
            let key = AeadKey::new(alg, &vec![7; alg.key_len()]).unwrap();
            let nonce = vec![1; alg.nonce_len()];
            let sealed = key.seal(&nonce, b"cookie plaintext", b"header").unwrap();
            assert_eq!(sealed.len(), 16 + TAG_LEN);
            assert_eq!(
                &key.open(&nonce, &sealed, b"header").unwrap()[..],
                b"cookie plaintext"
            );
            assert!(key.open(&nonce, &sealed, b"Header").is_none(), "{alg:?} ad");
            let mut flipped = sealed.clone();
            flipped[3] ^= 1;
            assert!(
                key.open(&nonce, &flipped, b"header").is_none(),
                "{alg:?} tag"
            );
            assert!(key.open(&nonce, &sealed[..15], b"header").is_none());
            assert!(AeadKey::new(alg, &[0; 5]).is_none());
        }
        let gcm = AeadKey::new(AeadAlgorithm::AesGcmSiv128, &[7; 16]).unwrap();
        assert!(
            gcm.seal(&[0; 16], b"x", b"").is_none(),
            "GCM-SIV needs a 12-byte nonce"
        );
    }
}
