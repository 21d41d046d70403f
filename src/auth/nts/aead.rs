//! The AEAD algorithms NTS negotiates (RFC 8915 §5.1, IANA AEAD registry).
//!
//! AES-SIV takes the associated data and the nonce as two header components (RFC 5297
//! §3, as chrony and NTPsec do) and puts the 16-byte tag before the ciphertext;
//! AES-GCM-SIV (RFC 8452) takes a 12-byte nonce and appends the tag.

use aes_gcm_siv::aead::{Aead as _, Payload};
use aes_siv::KeyInit;
use zeroize::Zeroizing;

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

/// A key for one algorithm. Zeroized on drop; no `Debug` of the secret.
#[derive(Clone)]
pub struct AeadKey {
    algorithm: AeadAlgorithm,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({}, redacted)", self.algorithm.name())
    }
}

impl AeadKey {
    /// `None` unless `key` has the algorithm's length.
    pub fn new(algorithm: AeadAlgorithm, key: &[u8]) -> Option<Self> {
        (key.len() == algorithm.key_len()).then(|| Self {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.algorithm
    }

    /// The secret, for sealing into cookies, persisting master keys, and
    /// `ntimed ke --export`.
    pub fn bytes(&self) -> &[u8] {
        &self.key
    }

    /// Encrypts `plaintext`; the result is ciphertext and tag (`plaintext.len() + 16`).
    /// `None` only for a nonce the algorithm cannot take.
    pub fn seal(&self, nonce: &[u8], plaintext: &[u8], associated: &[u8]) -> Option<Vec<u8>> {
        match self.algorithm {
            AeadAlgorithm::AesSivCmac256 => {
                let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(&self.key).ok()?;
                siv.encrypt([associated, nonce], plaintext).ok()
            }
            AeadAlgorithm::AesSivCmac512 => {
                let mut siv = aes_siv::siv::Aes256Siv::new_from_slice(&self.key).ok()?;
                siv.encrypt([associated, nonce], plaintext).ok()
            }
            AeadAlgorithm::AesGcmSiv128 => {
                let cipher = aes_gcm_siv::Aes128GcmSiv::new_from_slice(&self.key).ok()?;
                let nonce = nonce.try_into().ok()?;
                let payload = Payload {
                    msg: plaintext,
                    aad: associated,
                };
                cipher.encrypt(nonce, payload).ok()
            }
        }
    }

    /// Decrypts and authenticates; `None` if anything is wrong.
    pub fn open(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        associated: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        if ciphertext.len() < TAG_LEN {
            return None;
        }
        let plain = match self.algorithm {
            AeadAlgorithm::AesSivCmac256 => {
                let mut siv = aes_siv::siv::Aes128Siv::new_from_slice(&self.key).ok()?;
                siv.decrypt([associated, nonce], ciphertext).ok()?
            }
            AeadAlgorithm::AesSivCmac512 => {
                let mut siv = aes_siv::siv::Aes256Siv::new_from_slice(&self.key).ok()?;
                siv.decrypt([associated, nonce], ciphertext).ok()?
            }
            AeadAlgorithm::AesGcmSiv128 => {
                let cipher = aes_gcm_siv::Aes128GcmSiv::new_from_slice(&self.key).ok()?;
                let nonce = nonce.try_into().ok()?;
                let payload = Payload {
                    msg: ciphertext,
                    aad: associated,
                };
                cipher.decrypt(nonce, payload).ok()?
            }
        };
        Some(Zeroizing::new(plain))
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
