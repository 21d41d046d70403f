//! Keys and the cryptography that proves who sent a packet.
//!
//! * [`keys`]: the symmetric key store: `keys/parse.rs` reads ntp.keys and chrony
//!   keyfile text (no I/O), `keys/file.rs` reads key files and checks their permissions.
//! * [`mac`]: RFC 5905 / RFC 8573 MACs, computed and checked in constant time.
//! * [`nts`]: Network Time Security (RFC 8915): AEADs, NTS-KE, cookies, NTS fields.
//!
//! Secrets are zeroized on drop and have no `Debug` output.

pub mod keys;
pub mod mac;
pub mod nts;

pub use keys::{KeyFileError, KeyFileFormat, KeyStore, KeyType, SymmetricKey};
pub use mac::MacError;
