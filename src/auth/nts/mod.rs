//! Network Time Security (RFC 8915): AEADs, NTS-KE negotiation, cookies, and the NTS
//! extension fields of NTP packets.

pub mod aead;
pub mod cookie;
pub mod ke;
pub mod ntp;
