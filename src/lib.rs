//! ntimed: a secure NTP daemon.
//!
//! A tour of the crate, from the bytes on the wire up to the command line. Each layer
//! uses only the ones above it in this list:
//!
//! 1. [`wire`] — pure codecs: NTP timestamps (era-aware), the 48-byte header, extension
//!    fields and the MAC trailer. Parsers take `&[u8]`, never panic, and name the field
//!    at fault.
//! 2. [`auth`] — the symmetric key store (ntp.keys and chrony formats) and MACs.
//! 3. [`proto`] — sans-IO state machines: the stateless server responder and the client
//!    exchange with its on-wire checks. Time comes in as arguments.
//! 4. [`config`] — the TOML configuration, checked completely before anything starts.
//! 5. [`daemon`] — the tokio shell: sockets and clocks around the sans-IO core.
//! 6. [`cli`] — `ntimed run | query | demo`, kept thin; [`demo`] shows the whole path
//!    offline.
//!
//! Every packet is parsed and authenticated before it can change any state; that
//! ordering is the lesson of most NTP CVEs.

#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod proto;
pub mod wire;
