//! ntimed: a secure NTP daemon.
//!
//! A tour of the crate, from the bytes on the wire up to the command line. This list
//! is the crate's one statement of its layering: each module uses only modules listed
//! before it (`tests/layering.rs` fails on any `crate::` path that goes up the order).
//!
//! 1. [`util`] — small helpers with no protocol in them: atomic state files, a limit
//!    on log lines.
//! 2. [`wire`] — pure codecs: NTP timestamps (era-aware), the 48-byte header, extension
//!    fields, the MAC trailer and NTS-KE records. Parsers take `&[u8]`, never panic, and
//!    name the field at fault.
//! 3. [`auth`] — the symmetric key store (ntp.keys and chrony formats), MACs, and NTS:
//!    AEADs, NTS-KE negotiation, cookies and the NTS extension fields.
//! 4. [`proto`] — sans-IO state machines: the stateless server responder, the client
//!    exchange with its on-wire checks, sources, and symmetric peers. Time and
//!    randomness come in as arguments.
//! 5. [`sys`] — every syscall that needs `unsafe`, each with its safety argument.
//! 6. [`refclock`] — reference clocks (SHM, SOCK, PHC, PPS): device readings in,
//!    samples out, every bad reading a counted drop.
//! 7. [`clock`] — the clock being disciplined: the commands it takes, the software and
//!    kernel clocks, and the clock model the simulations use.
//! 8. [`sync`] — from samples to clock commands: filter, selection, discipline.
//! 9. [`coordinator`] — the client role's sans-IO core: sources, peers and the sync
//!    engine in one object with a stated driver contract, and the in-memory test pair.
//! 10. [`config`] — the TOML configuration, checked completely before anything starts.
//! 11. [`daemon`] — the tokio shell: it moves bytes and time between sockets, TLS
//!     (NTS-KE), the clock and the sans-IO core, deciding nothing itself.
//! 12. [`privsep`] — the split of `ntimed run` as root into an engine that cannot set
//!     the clock and a clock process that obeys policy.
//! 13. [`ops`] — for operators: `ntimed check` (every problem `run` would stop at, at
//!     once, through `run`'s own checks) and `ntimed keygen` (key files for ntimed,
//!     chrony and NTPsec).
//! 14. `sim` — `ntimed sim`: scenarios run through the coordinator's test pair.
//! 15. `demo` — `ntimed demo`: the whole path, offline, on loopback.
//! 16. [`cli`] — `ntimed run | query | ke | check | keygen | ctl | demo | sim`, kept thin.
//!
//! Every packet is parsed and authenticated before it can change any state; that
//! ordering is the lesson of most NTP CVEs.
//!
//! A comment citing "ADVERSARIAL n" means item n of `docs/ADVERSARIAL.md`, the hostile
//! inputs and the behaviour each gets; protocol facts the code relies on, with their
//! RFC sections, are in `docs/PROTOCOL.md`.
//!
//! The core needs no sockets: a keyed exchange, start to finish, in memory.
//!
//! ```
//! use ntimed::auth::{KeyFileFormat, KeyStore};
//! use ntimed::proto::client::{Authenticated, ClientAuth, ClientExchange, Response};
//! use ntimed::proto::server::{Server, ServerOptions, SyncState};
//! use ntimed::wire::NtpTimestamp;
//!
//! let keys = KeyStore::parse("keys", "2 AES128 HEX:fa4efa4efa4efa4efa4efa4efa4efa4e", KeyFileFormat::Auto)?;
//! let server = Server::new(keys.clone(), ServerOptions::default());
//! let key = keys.get(2).cloned().expect("key 2");
//! let mut client = ClientExchange::new(ClientAuth::Key(key), 6);
//!
//! let t1 = NtpTimestamp::from_unix(1_800_000_000, 0);
//! let mut request = Vec::new();
//! client.poll_request(t1, &mut rand::rng(), &mut request)?;
//!
//! // The server's clock reads 0.5 s ahead; the packet spends 1 ms in flight each way.
//! let t2 = t1.add_seconds(0.501);
//! let state = SyncState::local_reference(1, t2, -20);
//! let mut reply = Vec::new();
//! server.handle_request(&request, t2, &state, || t2, &mut rand::rng(), &mut reply).expect("answered");
//!
//! let Ok(Response::Sample(sample)) = client.handle_response(&reply, t1.add_seconds(0.002)) else {
//!     panic!("reply rejected");
//! };
//! assert!((sample.offset - 0.5).abs() < 1e-6);
//! assert_eq!(sample.authenticated, Authenticated::Key(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod daemon;
pub(crate) mod demo;
pub mod ops;
pub mod privsep;
pub mod proto;
pub mod refclock;
pub(crate) mod sim;
pub mod sync;
pub mod sys;
pub mod util;
pub mod wire;
