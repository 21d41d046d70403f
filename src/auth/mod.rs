//! Keys and the cryptography that proves who sent a packet.
//!
//! * [`keys`]: the symmetric key store (ntp.keys and chrony keyfile formats).
//! * [`mac`]: RFC 5905 / RFC 8573 MACs, computed and checked in constant time.
//!
//! Secrets are zeroized on drop and have no `Debug` output.

pub mod keys;
pub mod mac;
pub mod nts;

pub use keys::{KeyFileError, KeyFileFormat, KeyStore, KeyType, SymmetricKey};
pub use mac::MacError;
