//! Sans-IO protocol state machines. Time is passed in, never read from the OS;
//! bytes go in through `handle_*` and come out as return values.
//!
//! * [`server`]: the stateless responder for client requests.
//! * [`client`]: one client exchange with its on-wire checks, used by `ntimed query`
//!   and by every source.
//! * [`source`]: an upstream source's association: polling, reachability, kisses,
//!   NTS re-keying.
//! * [`peer`]: a symmetric association (modes 1/2) with a configured peer.
//! * [`interleave`]: the server's per-client timestamps for interleaved mode.
//! * [`ratelimit`]: per-client request rate limits for the server.
//! * [`access`]: the server's `allow`/`deny` lists and the decision for an address.
//! * [`smear`]: served time around a leap second, when it is smeared.

pub mod access;
pub mod client;
pub mod interleave;
pub mod peer;
pub mod polling;
pub mod ratelimit;
pub mod server;
pub mod smear;
pub mod source;

/// The keys the protocol tests share (fake secrets): SHA256, AES128, MD5 and SHA1 as
/// ids 1 to 4.
#[cfg(test)]
pub(crate) fn test_keys() -> crate::auth::KeyStore {
    crate::auth::KeyStore::parse(
        "t",
        "1 SHA256 HEX:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
         2 AES128 HEX:000102030405060708090a0b0c0d0e0f\n\
         3 MD5 HEX:000102030405060708090a0b0c0d0e0f\n\
         4 SHA1 HEX:000102030405060708090a0b0c0d0e0f10111213\n",
        crate::auth::KeyFileFormat::Chrony,
    )
    .expect("test keys parse")
}
