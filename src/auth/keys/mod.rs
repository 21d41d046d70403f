//! The symmetric key store and its keys, read from the key files ntpd/NTPsec and chrony
//! users already have: `parse` turns key-file text into a [`KeyStore`] (no I/O), `file`
//! reads the file. Secrets are zeroized on drop and never printed (`Debug` shows id and
//! type only).

mod file;
mod parse;

pub use file::{read_private_file, read_private_file_no_link};
pub(crate) use parse::decode_hex;

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// Longest secret accepted (NTPsec's limit is 32 bytes).
const MAX_SECRET_LEN: usize = 64;

/// The MAC algorithms of RFC 5905 (digest of key ‖ packet) and RFC 8573 (AES-CMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Aes128Cmac,
    Aes256Cmac,
}

impl KeyType {
    /// The name chrony uses, which ntimed also prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
            Self::Aes128Cmac => "AES128",
            Self::Aes256Cmac => "AES256",
        }
    }

    /// The exact secret length a cipher-based MAC needs.
    fn required_secret_len(self) -> Option<usize> {
        match self {
            Self::Aes128Cmac => Some(16),
            Self::Aes256Cmac => Some(32),
            _ => None,
        }
    }
}

/// One key. The secret is zeroized on drop and never shown.
#[derive(Clone)]
pub struct SymmetricKey {
    id: u32,
    key_type: KeyType,
    secret: Zeroizing<Vec<u8>>,
}

impl SymmetricKey {
    /// Builds a key; the secret must be non-empty and, for AES, of the cipher's length.
    pub fn new(id: u32, key_type: KeyType, secret: Vec<u8>) -> Result<Self, String> {
        let secret = Zeroizing::new(secret);
        if id == 0 {
            return Err("key id 0 is reserved (it marks a crypto-NAK)".into());
        }
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(format!(
                "key must be 1 to {MAX_SECRET_LEN} bytes, not {}",
                secret.len()
            ));
        }
        if let Some(need) = key_type.required_secret_len()
            && secret.len() != need
        {
            return Err(format!(
                "{} needs a {need}-byte key ({} hex digits), not {} bytes",
                key_type.name(),
                need * 2,
                secret.len()
            ));
        }
        Ok(Self {
            id,
            key_type,
            secret,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SymmetricKey({} {}, secret redacted)",
            self.id,
            self.key_type.name()
        )
    }
}

/// Which key-file dialect to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFileFormat {
    #[default]
    Auto,
    /// ntpd / NTPsec `ntp.keys`.
    Ntp,
    /// chrony `keyfile`.
    Chrony,
}

/// A key file that could not be used, naming the file, the line and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct KeyFileError {
    pub file: String,
    pub line: Option<usize>,
    pub problem: String,
}

/// Keys by id.
#[derive(Clone, Default)]
pub struct KeyStore {
    keys: BTreeMap<u32, SymmetricKey>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.values()).finish()
    }
}

impl KeyStore {
    pub fn get(&self, id: u32) -> Option<&SymmetricKey> {
        self.keys.get(&id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SymmetricKey> {
        self.keys.values()
    }
}
