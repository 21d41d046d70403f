//! Pure codecs for what crosses the network. No I/O, no clocks, no secrets.
//!
//! Every parser takes `&[u8]`, returns a typed value or an error naming the field at
//! fault, and never panics on any input (fuzzed under `fuzz/`).

pub mod ke;
pub mod packet;
pub mod reader;
pub mod timestamp;

pub use packet::{
    ExtensionField, ExtensionType, Header, KissCode, Leap, Mode, Packet, PacketError, ReferenceId,
    Trailer,
};
pub use reader::Reader;
pub use timestamp::{NtpShort, NtpTimestamp};
